//! Signed HTTP bodies: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//! The same scheme Stripe uses for webhooks, so one verifier serves outbound
//! signatures (what receivers check) and inbound Stripe webhooks. Several `v1`
//! entries may appear (secret rotation); comparison is constant-time.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

pub fn hmac_hex(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The header value for `body` signed now with `secret`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hmac_hex(secret.as_bytes(), timestamp, body))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing signature header")]
    Missing,
    #[error("malformed signature header")]
    Malformed,
    #[error("timestamp outside the tolerance window")]
    Expired,
    #[error("no signature matches")]
    Mismatch,
}

/// Checks `header` against `body` for any of `secrets`, with `tolerance_secs` of
/// clock skew allowed around `now`.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[&str],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or(SignatureError::Malformed)?;
        match k {
            "t" => timestamp = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            "v1" => signatures.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            _ => {} // other schemes (v0, …) are ignored, as Stripe documents
        }
    }
    let t = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now - t).abs() > tolerance_secs {
        return Err(SignatureError::Expired);
    }
    let mut ok = false;
    for secret in secrets {
        let expected = hex::decode(hmac_hex(secret.as_bytes(), t, body)).expect("own hex");
        for sig in &signatures {
            ok |= bool::from(expected.ct_eq(sig));
        }
    }
    if ok {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify() {
        let header = sign("whsec_a", 1_700_000_000, b"{\"x\":1}");
        assert_eq!(verify(Some(&header), b"{\"x\":1}", &["whsec_a"], 1_700_000_010, 300), Ok(()));
        // Rotation: old and new secret both accepted.
        assert_eq!(verify(Some(&header), b"{\"x\":1}", &["whsec_new", "whsec_a"], 1_700_000_010, 300), Ok(()));
        assert_eq!(
            verify(Some(&header), b"{\"x\":2}", &["whsec_a"], 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&header), b"{\"x\":1}", &["whsec_b"], 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify(Some(&header), b"{\"x\":1}", &["whsec_a"], 1_700_000_400, 300), Err(SignatureError::Expired));
        assert_eq!(verify(None, b"", &["whsec_a"], 0, 300), Err(SignatureError::Missing));
        assert_eq!(verify(Some("t=1"), b"", &["whsec_a"], 1, 300), Err(SignatureError::Malformed));
        assert_eq!(verify(Some("garbage"), b"", &["whsec_a"], 1, 300), Err(SignatureError::Malformed));
    }

    #[test]
    fn several_v1_entries() {
        let good = hmac_hex(b"s", 5, b"b");
        let header = format!("t=5,v1={},v1={good},v0=abc", "00".repeat(32));
        assert_eq!(verify(Some(&header), b"b", &["s"], 5, 300), Ok(()));
    }
}
