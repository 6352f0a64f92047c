//! Per-subscription gaps after a lost session or IB's 1101: the session-wide gap ends when
//! the session is back, but a subscription that has to wait before it is requested again
//! (IB's 15-second rule, a 10190 retry, pacing) has no data for longer. Each subscription
//! that was out at IB gets its own gap (instrument = its conId), ending when that
//! subscription is live again (its first tick) or ends.
//!
//! Sans-IO: the engine says which subscriptions lost their request and when data stopped,
//! and passes each subscription state change; this says which gaps to write.

use std::collections::BTreeMap;

use crate::ipc::{GapReason, SubState};

use super::subs::SubKey;

/// A gap to write for one subscription: `(conId, reason, from, to)` in Unix ns.
pub type SubGap = (u32, GapReason, i64, i64);

/// Open per-subscription gaps.
#[derive(Debug, Default)]
pub struct SubGaps {
    open: BTreeMap<SubKey, (GapReason, i64)>,
}

impl SubGaps {
    /// `keys` lost their request at IB; their data stopped at `from` (Unix ns). A gap
    /// already open keeps its earlier start.
    pub fn lost(&mut self, keys: impl IntoIterator<Item = SubKey>, reason: GapReason, from: i64) {
        for k in keys {
            self.open.entry(k).or_insert((reason, from));
        }
    }

    /// A state change of `key` at `now` (Unix ns): live again (`Active`, `Delayed`) or
    /// rejected closes its gap, which is returned for writing; cancelled drops it (nobody
    /// wants the data any more).
    pub fn on_state(&mut self, key: SubKey, state: SubState, now: i64) -> Option<SubGap> {
        match state {
            SubState::Active | SubState::Delayed | SubState::Rejected => {
                let (reason, from) = self.open.remove(&key)?;
                Some((key.con_id, reason, from, now.max(from)))
            }
            SubState::Cancelled => {
                self.open.remove(&key);
                None
            }
            _ => None,
        }
    }

    /// Gaps still open.
    pub fn open(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::subs::SubKind;

    #[test]
    fn each_subscription_gap_ends_when_it_is_live_again() {
        let a = SubKey {
            con_id: 1,
            kind: SubKind::BidAsk,
        };
        let b = SubKey {
            con_id: 1,
            kind: SubKind::Last,
        };
        let c = SubKey {
            con_id: 2,
            kind: SubKind::Last,
        };
        let mut g = SubGaps::default();
        g.lost([a, b, c], GapReason::Disconnected, 100);
        // A second loss before data came back keeps the first start.
        g.lost([a], GapReason::IbConnectivity, 150);
        assert_eq!(g.on_state(a, SubState::Requested, 200), None);
        assert_eq!(
            g.on_state(a, SubState::Active, 300),
            Some((1, GapReason::Disconnected, 100, 300))
        );
        assert_eq!(g.on_state(a, SubState::Active, 301), None, "closed once");
        assert_eq!(g.on_state(c, SubState::Cancelled, 302), None);
        assert_eq!(
            g.on_state(b, SubState::Delayed, 20_000),
            Some((1, GapReason::Disconnected, 100, 20_000))
        );
        assert_eq!(g.open(), 0);
    }
}
