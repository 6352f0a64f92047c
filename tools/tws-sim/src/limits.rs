//! IB's account-wide limits (market data lines, tick-by-tick cap and its 15-second rule) and
//! the per-connection message pacing (50 messages a second).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::generator::TbtKind;

/// Limit settings, from the command line.
#[derive(Debug, Clone)]
pub struct LimitConfig {
    /// Concurrent reqMktData lines of the account (error 101 beyond).
    pub max_mkt_lines: usize,
    /// Concurrent tick-by-tick subscriptions of the account (error 10190 beyond).
    pub max_tbt: usize,
    /// A tick-by-tick request for the same instrument and kind within this window is refused
    /// with 10190; zero turns the rule off.
    pub tbt_same_instrument: Duration,
    /// Messages a second a client may send (error 100, then disconnect, unless +PACEAPI).
    pub max_msgs_per_sec: usize,
}

/// What every session of the simulated account shares: IB counts lines per account, across
/// client ids.
#[derive(Debug, Default)]
pub struct Account {
    pub mkt_lines: usize,
    pub tbt_active: usize,
    /// The cancels the account received, kept after the clients that sent them are gone.
    pub cancels: CancelCounts,
    tbt_last_request: HashMap<(i32, TbtKind), Instant>,
}

impl Account {
    /// Whether a tick-by-tick request for (conId, kind) falls inside the window of an earlier
    /// one; records `now` when it does not.
    pub fn tbt_request_allowed(
        &mut self,
        con_id: i32,
        kind: TbtKind,
        window: Duration,
        now: Instant,
    ) -> bool {
        if !window.is_zero()
            && let Some(prev) = self.tbt_last_request.get(&(con_id, kind))
            && now.saturating_duration_since(*prev) < window
        {
            return false;
        }
        self.tbt_last_request.insert((con_id, kind), now);
        true
    }

    /// Forgets the 15-second window of a subscription that the gateway side dropped (1101):
    /// the client is expected to resubscribe at once.
    pub fn forget_tbt_request(&mut self, con_id: i32, kind: TbtKind) {
        self.tbt_last_request.remove(&(con_id, kind));
    }

    /// Forgets every window: a restarted gateway remembers nothing.
    pub fn forget_all_tbt_requests(&mut self) {
        self.tbt_last_request.clear();
    }
}

/// Cancels received from every client since the simulator started, kept after a client
/// disconnects: a test can check that a client cancelled its subscriptions at IB before it
/// closed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CancelCounts {
    /// cancelMktData messages.
    pub mkt_data: u64,
    /// cancelTickByTickData messages.
    pub tick_by_tick: u64,
    /// Cancels of either kind for a request id the session did not know (answered with 300).
    pub unknown: u64,
}

impl CancelCounts {
    /// The counts as JSON (`mkt_data`, `tick_by_tick`, `unknown`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "mkt_data": self.mkt_data,
            "tick_by_tick": self.tick_by_tick,
            "unknown": self.unknown,
        })
    }
}

/// Shared handle on the account.
#[derive(Debug, Clone, Default)]
pub struct SharedAccount(Arc<Mutex<Account>>);

impl SharedAccount {
    pub fn lock(&self) -> MutexGuard<'_, Account> {
        // A poisoned lock only means another session panicked mid-update of plain counters;
        // the counters are still usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the pacer says about one incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    Ok,
    /// +PACEAPI: hold the message until this instant, then process it.
    DelayUntil(Instant),
    /// Over the limit without +PACEAPI: error 100, then disconnect.
    Violation,
}

/// A sliding one-second window of message arrival times.
#[derive(Debug)]
pub struct Pacer {
    max: usize,
    pace_api: bool,
    window: VecDeque<Instant>,
}

impl Pacer {
    pub fn new(max_per_sec: usize, pace_api: bool) -> Self {
        Self {
            max: max_per_sec,
            pace_api,
            window: VecDeque::with_capacity(max_per_sec + 1),
        }
    }

    /// Accounts one message arriving at `now`.
    pub fn on_message(&mut self, now: Instant) -> Pace {
        if self.max == 0 {
            return Pace::Ok;
        }
        let second = Duration::from_secs(1);
        while self
            .window
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= second)
        {
            self.window.pop_front();
        }
        if self.window.len() < self.max {
            self.window.push_back(now);
            return Pace::Ok;
        }
        if !self.pace_api {
            return Pace::Violation;
        }
        // The message may go when the oldest in the window is one second old.
        let at = self.window.pop_front().map_or(now, |t| t + second).max(now);
        self.window.push_back(at);
        Pace::DelayUntil(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifty_a_second_then_violation() {
        let t0 = Instant::now();
        let mut p = Pacer::new(50, false);
        for n in 0..50 {
            assert_eq!(p.on_message(t0 + Duration::from_millis(n)), Pace::Ok);
        }
        assert_eq!(
            p.on_message(t0 + Duration::from_millis(60)),
            Pace::Violation
        );
        // A second after the first message, room again.
        let mut p = Pacer::new(50, false);
        for n in 0..50 {
            assert_eq!(p.on_message(t0 + Duration::from_millis(n)), Pace::Ok);
        }
        assert_eq!(p.on_message(t0 + Duration::from_millis(1000)), Pace::Ok);
    }

    #[test]
    fn pace_api_delays_instead() {
        let t0 = Instant::now();
        let mut p = Pacer::new(2, true);
        assert_eq!(p.on_message(t0), Pace::Ok);
        assert_eq!(p.on_message(t0), Pace::Ok);
        assert_eq!(
            p.on_message(t0),
            Pace::DelayUntil(t0 + Duration::from_secs(1))
        );
    }

    #[test]
    fn tbt_window() {
        let t0 = Instant::now();
        let mut a = Account::default();
        let w = Duration::from_secs(15);
        assert!(a.tbt_request_allowed(1, TbtKind::Last, w, t0));
        assert!(a.tbt_request_allowed(1, TbtKind::BidAsk, w, t0));
        assert!(!a.tbt_request_allowed(1, TbtKind::Last, w, t0 + Duration::from_secs(14)));
        assert!(a.tbt_request_allowed(1, TbtKind::Last, w, t0 + Duration::from_secs(16)));
        assert!(a.tbt_request_allowed(1, TbtKind::Last, Duration::ZERO, t0));
    }
}
