//! The host slept. Its TCP connection to IB is as good as gone (IB dropped it or will) and
//! no data came during the sleep, so the session does not wait for the watchdog or a
//! backoff: it closes what it has and connects again at once. The gap record covers the
//! sleep because the disconnect dates it from the last bytes received before it.

use tracing::warn;

use super::{Clock, Session};

impl Session {
    /// The caller saw the host sleep for `slept_ns` (its boot clock ran ahead of its
    /// monotonic clock, which stops during a suspend).
    pub fn on_wake(&mut self, clock: Clock, slept_ns: u64) {
        self.clock = clock;
        self.ingest.publisher.set_clock(clock.unix);
        self.wakes += 1;
        if self.stopping {
            return;
        }
        warn!(
            slept_ms = slept_ns / 1_000_000,
            "the host slept: reconnecting to IB at once"
        );
        // A wait that began before the sleep is no reason to wait now.
        self.backoff.reset();
        if self.conn.is_some() {
            self.disconnect("the host slept", clock.mono, true);
        } else {
            self.schedule_connect(clock.mono, 0);
        }
    }

    /// How many sleeps [`Session::on_wake`] was told of.
    pub fn wakes(&self) -> u64 {
        self.wakes
    }
}
