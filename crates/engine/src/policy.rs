//! Pacing: exponential backoff with jitter between attempts, and a token bucket
//! per system so we never send faster than the other side allows.

use std::time::{Duration, Instant};

/// Delay before attempt `attempt + 1` after `attempt` failures: `initial * 2^(n-1)`
/// capped at `max`, then scaled by a random factor in [0.5, 1.0] so that many
/// deliveries failing together do not retry together.
pub fn backoff(attempt: i64, initial: Duration, max: Duration) -> Duration {
    let exp = attempt.clamp(1, 32) as u32 - 1;
    let base = initial.saturating_mul(2u32.saturating_pow(exp)).min(max);
    base.mul_f64(rand::Rng::gen_range(&mut rand::thread_rng(), 0.5..=1.0))
}

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32) -> Self {
        Self { rate, burst: f64::from(burst), tokens: f64::from(burst), last: Instant::now() }
    }

    /// Takes a token if one is available; otherwise says how long until one is.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    /// Takes up to `n` tokens at once (a claim for that many pushes); when none is
    /// available, says how long until one is.
    pub fn take_up_to(&mut self, n: usize, now: Instant) -> Result<usize, Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let taken = (self.tokens.floor().max(0.0) as usize).min(n);
        if taken == 0 {
            return Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate));
        }
        self.tokens -= taken as f64;
        Ok(taken)
    }

    /// Changes the rate and burst from `now` on (this node's share of a limit
    /// changed); tokens earned so far are kept, up to the new burst.
    pub fn set_rate(&mut self, rate: f64, burst: u32, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.rate = rate;
        self.burst = f64::from(burst);
        self.tokens = self.tokens.min(self.burst);
    }

    /// Returns tokens taken for pushes that did not happen (a claim found less work).
    pub fn give_back(&mut self, n: usize) {
        self.tokens = (self.tokens + n as f64).min(self.burst);
    }

    /// Pushes the next token out by `pause` (the other side said 429 / Retry-After).
    pub fn pause(&mut self, pause: Duration) {
        self.tokens = self.tokens.min(0.0) - pause.as_secs_f64() * self.rate;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let i = Duration::from_secs(1);
        let m = Duration::from_secs(60);
        for _ in 0..50 {
            let d1 = backoff(1, i, m);
            assert!(d1 >= Duration::from_millis(500) && d1 <= i);
            let d4 = backoff(4, i, m);
            assert!(d4 >= Duration::from_secs(4) && d4 <= Duration::from_secs(8));
            assert!(backoff(30, i, m) <= m);
        }
    }

    #[test]
    fn bucket_takes_a_new_share() {
        let start = Instant::now();
        let mut b = TokenBucket::new(30.0, 30);
        b.set_rate(10.0, 10, start);
        assert_eq!(b.take_up_to(100, start), Ok(10), "the burst shrinks with the share");
        let later = start + Duration::from_secs(1);
        assert_eq!(b.take_up_to(100, later), Ok(10), "and so does the rate");
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(10.0, 2);
        assert!(b.try_take(start).is_ok());
        assert!(b.try_take(start).is_ok());
        let wait = b.try_take(start).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100), "{wait:?}");
        assert!(b.try_take(start + Duration::from_millis(100)).is_ok());
        // In one simulated second at most burst + rate tokens are handed out.
        let mut b = TokenBucket::new(10.0, 2);
        let taken = (0..1000).filter(|i| b.try_take(start + Duration::from_millis(*i)).is_ok()).count();
        assert!((11..=12).contains(&taken), "{taken}");
    }
}
