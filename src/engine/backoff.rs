//! Reconnect backoff: exponential with full jitter, capped, reset after a stable connection.
//!
//! Jitter keeps several ib-stream instances (or several environments) from hammering a
//! restarted gateway in lockstep. The generator is a seeded xorshift so tests are exact.

/// Exponential backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base_ns: u64,
    cap_ns: u64,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// Backoff starting near `base_ns`, doubling up to `cap_ns`, jittered by `seed`.
    pub fn new(base_ns: u64, cap_ns: u64, seed: u64) -> Backoff {
        Backoff {
            base_ns: base_ns.max(1),
            cap_ns: cap_ns.max(base_ns.max(1)),
            attempt: 0,
            // xorshift must not start at zero.
            rng: seed | 1,
        }
    }

    /// Attempts made since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next attempt: uniformly in `[d/2, d]` where `d` doubles per
    /// attempt up to the cap, so the wait is never zero and never above the cap.
    pub fn next_delay(&mut self) -> u64 {
        let exp = self
            .base_ns
            .saturating_mul(1u64 << self.attempt.min(32))
            .min(self.cap_ns);
        self.attempt = self.attempt.saturating_add(1);
        let half = exp / 2;
        half + self.next_rand() % (exp - half + 1)
    }

    /// Back to the first delay (after a connection proved stable).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    fn next_rand(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_and_stays_under_the_cap() {
        let mut b = Backoff::new(100, 10_000, 42);
        let mut prev_ceiling = 0;
        for i in 0..40 {
            let d = b.next_delay();
            let ceiling = (100u64 << i.min(32)).min(10_000);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "attempt {i}: {d} vs {ceiling}"
            );
            assert!(ceiling >= prev_ceiling);
            prev_ceiling = ceiling;
        }
        b.reset();
        assert!(b.next_delay() <= 100);
    }

    #[test]
    fn different_seeds_spread_out() {
        let a: Vec<u64> = {
            let mut b = Backoff::new(1_000_000, 1_000_000_000, 1);
            (0..8).map(|_| b.next_delay()).collect()
        };
        let c: Vec<u64> = {
            let mut b = Backoff::new(1_000_000, 1_000_000_000, 2);
            (0..8).map(|_| b.next_delay()).collect()
        };
        assert_ne!(a, c);
    }
}
