//! Sleep detection: `CLOCK_BOOTTIME` counts the time the host was suspended and
//! `CLOCK_MONOTONIC` does not, so their difference grows by exactly the time slept. The
//! driver reads both once per loop turn and feeds them here; a growth beyond the threshold
//! between two turns is a sleep (the session's [`on_wake`](super::Session::on_wake)).

/// Watches the boot clock run ahead of the monotonic one.
#[derive(Debug, Clone)]
pub struct WakeDetector {
    threshold_ns: u64,
    /// `boot - mono` at the last observation.
    last_offset: Option<i128>,
}

impl WakeDetector {
    /// Reports sleeps longer than `threshold_ns` (0: never).
    pub fn new(threshold_ns: u64) -> WakeDetector {
        WakeDetector {
            threshold_ns,
            last_offset: None,
        }
    }

    /// Both clocks read together (ns): the time slept since the last call, when more than
    /// the threshold.
    pub fn observe(&mut self, boot_ns: u64, mono_ns: u64) -> Option<u64> {
        let offset = boot_ns as i128 - mono_ns as i128;
        let last = self.last_offset.replace(offset)?;
        let slept = u64::try_from(offset - last).ok()?;
        (self.threshold_ns > 0 && slept > self.threshold_ns).then_some(slept)
    }
}

/// Reads `(CLOCK_BOOTTIME, CLOCK_MONOTONIC)` in ns, back to back (None where the clocks
/// cannot be read: no detection then).
pub fn read_clocks() -> Option<(u64, u64)> {
    use nix::time::{ClockId, clock_gettime};
    let ns = |t: nix::sys::time::TimeSpec| {
        (t.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(t.tv_nsec() as u64)
    };
    let boot = clock_gettime(ClockId::CLOCK_BOOTTIME).ok()?;
    let mono = clock_gettime(ClockId::CLOCK_MONOTONIC).ok()?;
    Some((ns(boot), ns(mono)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn only_the_boot_clock_running_ahead_by_more_than_the_threshold_is_a_sleep() {
        let mut w = WakeDetector::new(2 * S);
        assert_eq!(
            w.observe(100 * S, 50 * S),
            None,
            "the first reading is the base"
        );
        // Both clocks advance together: awake, however long the turn took.
        assert_eq!(w.observe(160 * S, 110 * S), None);
        // Suspended 1.5 s: under the threshold.
        assert_eq!(w.observe(161 * S + S / 2, 110 * S), None);
        // Suspended an hour: the boot clock ran 3600 s ahead.
        assert_eq!(w.observe(3761 * S + S / 2, 110 * S), Some(3600 * S));
        // The next turn compares with the new offset.
        assert_eq!(w.observe(3762 * S + S / 2, 111 * S), None);
    }

    #[test]
    fn a_threshold_of_zero_turns_detection_off_and_the_clocks_read() {
        let mut w = WakeDetector::new(0);
        w.observe(0, 0);
        assert_eq!(w.observe(3600 * S, 0), None);
        // The two clocks' origins may differ (a sandbox's kernel may start them apart): only
        // their difference's growth means anything, so only that they run is checked here.
        let (b1, m1) = read_clocks().expect("Linux has both clocks");
        let (b2, m2) = read_clocks().expect("Linux has both clocks");
        assert!(b2 >= b1 && m2 >= m1, "both clocks run forward");
    }
}
