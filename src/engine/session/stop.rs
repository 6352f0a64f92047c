//! The clean stop: every subscription is cancelled at IB through the outbound pacer; the
//! caller half-closes once all are written and reads on (publishing what still arrives)
//! until IB closes its side, within its own time limit. IB drops a closed client's
//! subscriptions anyway; the cancels spare its limits and the next session's.

use crate::ipc::ConnState;

use super::{Clock, Session};

impl Session {
    /// Starts the stop: no more connects; with a session up, every subscription's cancel
    /// is queued. Returns how many cancels were queued (0: nothing to flush, finish now).
    pub fn begin_stop(&mut self, clock: Clock) -> usize {
        self.clock = clock;
        self.ingest.publisher.set_clock(clock.unix);
        self.stopping = true;
        self.next_connect = None;
        if !self.is_ready() {
            return 0;
        }
        let queued = self.ingest.subs.cancel_all();
        self.extra.clear();
        self.drain_sub_events();
        self.pump(clock.mono);
        queued
    }

    /// Requests still waiting for the pacer during the stop.
    pub fn queued(&self) -> usize {
        self.ingest.subs.queued()
    }

    /// The monotonic time the stop's next cancel may go out.
    pub fn next_send_slot(&self, now: u64) -> u64 {
        self.pacer.next_slot(now)
    }

    /// Every cancel is queued for the socket: the caller may half-close once
    /// [`Session::ib_out`] is written.
    pub fn stop_flushed(&self) -> bool {
        self.queued() == 0
    }

    /// The end: the connection is given up and the last status published.
    pub fn finish_stop(&mut self, clock: Clock) {
        self.clock = clock;
        self.ingest.publisher.set_clock(clock.unix);
        self.stopping = true;
        self.conn = None;
        let id = self.client_id();
        self.ingest
            .publisher
            .connection(ConnState::Disconnected, 0, id, 0);
        self.ingest.publisher.publish_status();
    }
}
