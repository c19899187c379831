//! Hub ids: `<prefix>_<26 chars>`, a millisecond timestamp and 80 random bits in
//! lowercase Crockford base32. Time-ordered, so they double as a stable list cursor,
//! and never shaped like an external system's id. Within one process ids are
//! strictly increasing (same millisecond → random part + 1), so list order is
//! creation order.

use std::sync::Mutex;

use rand::RngCore;

static LAST: Mutex<(u128, u128)> = Mutex::new((0, 0));
const RANDOM_MASK: u128 = (1 << 80) - 1;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

pub fn new_id(prefix: &str) -> String {
    let now = chrono::Utc::now().timestamp_millis().max(0) as u128;
    let value = {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        let (millis, random) = if now <= last.0 && last.1 < RANDOM_MASK {
            (last.0, last.1 + 1)
        } else {
            let mut bytes = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut bytes[6..]);
            // Leave headroom so increments within one millisecond never overflow.
            (now.max(last.0), (u128::from_be_bytes(bytes) & RANDOM_MASK) >> 1)
        };
        *last = (millis, random);
        (millis << 80) | random
    };
    let mut out = String::with_capacity(prefix.len() + 27);
    out.push_str(prefix);
    out.push('_');
    for i in (0..26).rev() {
        out.push(ALPHABET[((value >> (5 * i)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_prefix_and_sort_by_time() {
        let ids: Vec<_> = (0..1000).map(|_| new_id("cust")).collect();
        assert!(ids[0].starts_with("cust_") && ids[0].len() == 31, "{}", ids[0]);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids must increase");
    }
}
