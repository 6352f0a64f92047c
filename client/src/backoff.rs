//! Exponential backoff with jitter between reconnect attempts.
//!
//! Attempt `n` (1-based) waits a random time in `[d/2, d]` where
//! `d = min(max, initial * factor^(n-1))` ("equal jitter"): never less than half the
//! exponential delay, so a flapping server is not hammered, and spread so that many clients
//! cut off together do not come back together. The random source is a seeded xorshift: a
//! test that fixes the seed gets the same delays every run.

use std::time::Duration;

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Growth per attempt.
    pub factor: f64,
    /// Attempts in a row after which the client fails; `None`: retry forever.
    pub max_attempts: Option<u32>,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            factor: 2.0,
            max_attempts: None,
        }
    }
}

/// The retry counter and its random source.
#[derive(Debug, Clone)]
pub struct Backoff {
    cfg: BackoffConfig,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// A backoff with no failed attempt yet; `seed` picks the jitter sequence.
    pub fn new(cfg: BackoffConfig, seed: u64) -> Backoff {
        Backoff {
            cfg,
            attempt: 0,
            // xorshift needs a non-zero state.
            rng: seed | 1,
        }
    }

    /// Failed attempts in a row so far.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// A connection succeeded: the next failure starts from the initial delay again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Counts one more failed attempt and returns the delay before the next, or `None` when
    /// `max_attempts` is used up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.attempt = self.attempt.saturating_add(1);
        if let Some(max) = self.cfg.max_attempts
            && self.attempt > max
        {
            return None;
        }
        let exp = self
            .cfg
            .factor
            .powi(self.attempt.saturating_sub(1).min(64) as i32);
        let d = self
            .cfg
            .max
            .as_secs_f64()
            .min(self.cfg.initial.as_secs_f64() * exp);
        let half = d / 2.0;
        Some(Duration::from_secs_f64(half + half * self.unit()))
    }

    /// A uniform number in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_jitter_bounds_and_cap() {
        let cfg = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            factor: 2.0,
            max_attempts: None,
        };
        let mut b = Backoff::new(cfg, 42);
        let mut seen = Vec::new();
        for n in 1..=10u32 {
            let d = b.next_delay().unwrap();
            let full = (0.1 * 2f64.powi(n as i32 - 1)).min(2.0);
            assert!(
                d.as_secs_f64() >= full / 2.0 - 1e-9 && d.as_secs_f64() <= full + 1e-9,
                "attempt {n}: {d:?} not in [{}, {full}]",
                full / 2.0
            );
            seen.push(d);
        }
        // Jitter: not every delay sits on the same point of its interval.
        let fractions: Vec<u64> = seen
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let full = (0.1 * 2f64.powi(i as i32)).min(2.0);
                (d.as_secs_f64() / full * 1000.0) as u64
            })
            .collect();
        assert!(fractions.windows(2).any(|w| w[0] != w[1]), "{fractions:?}");
        // Same seed, same delays; another seed, others.
        let mut again = Backoff::new(cfg, 42);
        assert_eq!(again.next_delay(), Some(seen[0]));
        let mut other = Backoff::new(cfg, 7);
        let o: Vec<_> = (0..5).map(|_| other.next_delay().unwrap()).collect();
        assert_ne!(o, seen[..5]);
    }

    #[test]
    fn reset_starts_over_and_attempts_run_out() {
        let cfg = BackoffConfig {
            max_attempts: Some(2),
            ..BackoffConfig::default()
        };
        let mut b = Backoff::new(cfg, 1);
        assert!(b.next_delay().is_some());
        assert!(b.next_delay().is_some());
        assert_eq!(b.next_delay(), None);
        b.reset();
        assert_eq!(b.attempt(), 0);
        let d = b.next_delay().unwrap();
        assert!(d <= Duration::from_millis(100), "{d:?}");
    }
}
