//! The connection state machine: which state the client is in and which transitions exist.
//!
//! ```text
//! Disconnected ─start→ Connecting ─open→ Connected ─lost→ Reconnecting ─backoff→ Connecting
//!                          │  └─attempt failed→ Reconnecting          │
//!                          └─permanent error→ Failed ←─ attempts exhausted
//! any state but Closed/Failed ─close()→ Closed
//! ```
//!
//! Every change goes through [`StateMachine::go`], which refuses a transition not in the
//! table; each accepted one becomes a [`Transition`] the consumer receives in order with the
//! messages ([`crate::Event::State`]).

use std::time::Instant;

use crate::error::InvalidTransition;

/// A state of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// Not started yet.
    Disconnected,
    /// A connection attempt is under way.
    Connecting,
    /// Connected: the server's `info{connected}` arrived; requests flow.
    Connected,
    /// The connection was lost (or an attempt failed); waiting out the backoff.
    Reconnecting,
    /// Closed by the user. Terminal.
    Closed,
    /// Gave up: a permanent error or too many failed attempts. Terminal.
    Failed,
}

impl ConnState {
    /// Whether no transition leaves this state.
    pub fn is_terminal(self) -> bool {
        matches!(self, ConnState::Closed | ConnState::Failed)
    }

    /// Whether `self -> to` is a transition of the machine.
    pub fn can_go(self, to: ConnState) -> bool {
        use ConnState::{Closed, Connected, Connecting, Disconnected, Failed, Reconnecting};
        matches!(
            (self, to),
            (Disconnected, Connecting)
                | (Connecting, Connected)
                | (Connecting, Reconnecting)
                | (Connecting, Failed)
                | (Connected, Reconnecting)
                | (Reconnecting, Connecting)
                | (Reconnecting, Failed)
                | (Disconnected | Connecting | Connected | Reconnecting, Closed)
        )
    }
}

/// One accepted state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state left.
    pub from: ConnState,
    /// The state entered.
    pub to: ConnState,
    /// Why (the error, the close code, "user close", ...).
    pub reason: String,
    /// The reconnect attempt this belongs to (0 for the first connection).
    pub attempt: u32,
    /// When.
    pub at: Instant,
}

/// The current state and the rule for changing it.
#[derive(Debug, Clone)]
pub struct StateMachine {
    state: ConnState,
    since: Instant,
}

impl StateMachine {
    /// A machine in `Disconnected` since `now`.
    pub fn new(now: Instant) -> StateMachine {
        StateMachine {
            state: ConnState::Disconnected,
            since: now,
        }
    }

    /// The current state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// When the current state was entered.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Moves to `to`, or refuses when the table has no such transition.
    pub fn go(
        &mut self,
        to: ConnState,
        reason: impl Into<String>,
        attempt: u32,
        now: Instant,
    ) -> Result<Transition, InvalidTransition> {
        if !self.state.can_go(to) {
            return Err(InvalidTransition {
                from: self.state,
                to,
            });
        }
        let t = Transition {
            from: self.state,
            to,
            reason: reason.into(),
            attempt,
            at: now,
        };
        self.state = to;
        self.since = now;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConnState::*;

    const ALL: [ConnState; 6] = [
        Disconnected,
        Connecting,
        Connected,
        Reconnecting,
        Closed,
        Failed,
    ];

    #[test]
    fn exactly_the_documented_transitions_are_accepted() {
        let allowed = [
            (Disconnected, Connecting),
            (Connecting, Connected),
            (Connecting, Reconnecting),
            (Connecting, Failed),
            (Connected, Reconnecting),
            (Reconnecting, Connecting),
            (Reconnecting, Failed),
            (Disconnected, Closed),
            (Connecting, Closed),
            (Connected, Closed),
            (Reconnecting, Closed),
        ];
        let now = Instant::now();
        for from in ALL {
            for to in ALL {
                let mut m = StateMachine {
                    state: from,
                    since: now,
                };
                let ok = allowed.contains(&(from, to));
                assert_eq!(from.can_go(to), ok, "{from:?} -> {to:?}");
                match m.go(to, "test", 0, now) {
                    Ok(t) => {
                        assert!(ok, "{from:?} -> {to:?} accepted");
                        assert_eq!((t.from, t.to, m.state()), (from, to, to));
                    }
                    Err(e) => {
                        assert!(!ok, "{from:?} -> {to:?} refused");
                        assert_eq!(e, InvalidTransition { from, to });
                        assert_eq!(m.state(), from, "a refused transition changes nothing");
                    }
                }
            }
        }
        assert!(Closed.is_terminal() && Failed.is_terminal());
        assert!(ALL.iter().filter(|s| s.is_terminal()).count() == 2);
    }
}
