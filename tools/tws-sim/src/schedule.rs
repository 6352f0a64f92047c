//! When each tick of a subscription is due: steady, bursty or as fast as the client reads.

use std::time::Duration;

/// How ticks are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Evenly spaced, --rate ticks a second per subscription.
    Steady,
    /// --burst-size ticks at once, as often as needed to average --rate.
    Burst,
    /// As fast as the client reads (the socket's backpressure is the only limit).
    Asap,
}

/// The pacing of one subscription.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    mode: Mode,
    /// Ticks a second.
    rate: f64,
    burst: u64,
}

impl Schedule {
    pub fn new(mode: Mode, rate: f64, burst: u64) -> Self {
        Self {
            mode,
            rate: rate.max(1e-6),
            burst: burst.max(1),
        }
    }

    pub fn is_asap(&self) -> bool {
        self.mode == Mode::Asap
    }

    /// Ticks a period holds: one when steady, a burst when bursty.
    fn period(&self) -> u64 {
        match self.mode {
            Mode::Burst => self.burst,
            Mode::Steady | Mode::Asap => 1,
        }
    }

    /// When period `p` starts, as an offset from the subscription's start.
    fn period_start(&self, p: u64) -> Duration {
        Duration::from_secs_f64((p * self.period()) as f64 / self.rate)
    }

    /// How many ticks in total may have been sent `elapsed` after the subscription started
    /// (the first one goes at once). Exactly consistent with [`Schedule::next_at`]: at the
    /// instant it names, that tick is due (a caller on a virtual clock that jumps to it is never
    /// left with a deadline that produces nothing).
    pub fn due(&self, elapsed: Duration) -> u64 {
        if self.mode == Mode::Asap {
            return u64::MAX;
        }
        let period = self.period();
        // The floating-point estimate, corrected against the period starts.
        let mut p = (elapsed.as_secs_f64() * self.rate / period as f64) as u64;
        while self.period_start(p + 1) <= elapsed {
            p += 1;
        }
        while p > 0 && self.period_start(p) > elapsed {
            p -= 1;
        }
        (p + 1).saturating_mul(period)
    }

    /// When tick number `sent` becomes due, as an offset from the start (None in asap mode,
    /// where it is due now).
    pub fn next_at(&self, sent: u64) -> Option<Duration> {
        if self.mode == Mode::Asap {
            return None;
        }
        Some(self.period_start(sent / self.period()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_spacing() {
        let s = Schedule::new(Mode::Steady, 10.0, 1);
        assert_eq!(s.due(Duration::ZERO), 1);
        assert_eq!(s.due(Duration::from_millis(99)), 1);
        assert_eq!(s.due(Duration::from_millis(100)), 2);
        assert_eq!(s.due(Duration::from_secs(1)), 11);
        assert_eq!(s.next_at(1), Some(Duration::from_millis(100)));
    }

    #[test]
    fn bursts_average_the_rate() {
        let s = Schedule::new(Mode::Burst, 100.0, 50);
        assert_eq!(s.due(Duration::ZERO), 50);
        assert_eq!(s.due(Duration::from_millis(499)), 50);
        assert_eq!(s.due(Duration::from_millis(500)), 100);
        assert_eq!(s.next_at(50), Some(Duration::from_millis(500)));
        assert_eq!(s.next_at(60), Some(Duration::from_millis(500)));
    }

    /// A tick is due at the very instant `next_at` names for it, whatever the rate's rounding.
    #[test]
    fn due_agrees_with_next_at() {
        for (mode, rate, burst) in [
            (Mode::Steady, 3.0, 1),
            (Mode::Steady, 7.0, 1),
            (Mode::Steady, 0.3, 1),
            (Mode::Steady, 1000.0 / 3.0, 1),
            (Mode::Burst, 7.0, 3),
        ] {
            let s = Schedule::new(mode, rate, burst);
            for k in 0..20_000 {
                let at = s.next_at(k).unwrap();
                assert!(s.due(at) > k, "{mode:?} {rate}: tick {k} at {at:?}");
                if let Some(before) = at.checked_sub(Duration::from_nanos(1))
                    && k % burst == 0
                    && k > 0
                {
                    assert!(s.due(before) <= k, "{mode:?} {rate}: tick {k} early");
                }
            }
        }
    }
}
