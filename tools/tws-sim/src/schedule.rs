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

    /// How many ticks in total may have been sent `elapsed` after the subscription started
    /// (the first one goes at once).
    pub fn due(&self, elapsed: Duration) -> u64 {
        let periods = elapsed.as_secs_f64() * self.rate;
        match self.mode {
            Mode::Steady => periods as u64 + 1,
            Mode::Burst => ((periods / self.burst as f64) as u64 + 1) * self.burst,
            Mode::Asap => u64::MAX,
        }
    }

    /// When tick number `sent` becomes due, as an offset from the start (None in asap mode,
    /// where it is due now).
    pub fn next_at(&self, sent: u64) -> Option<Duration> {
        let secs = match self.mode {
            Mode::Steady => sent as f64 / self.rate,
            Mode::Burst => (sent / self.burst * self.burst) as f64 / self.rate,
            Mode::Asap => return None,
        };
        Some(Duration::from_secs_f64(secs))
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
}
