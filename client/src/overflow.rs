//! The client-side bound on events waiting for the consumer, and its policy.
//!
//! With [`SlowConsumerPolicy::DropTicks`] a tick that finds the queue full is dropped and
//! remembered here per subscription as one range; before that subscription's next event gets
//! through, the range goes out as `gap{client_overflow}` with the exact sequences and count,
//! so a drop is never silent. Control events are never dropped.

use std::collections::BTreeMap;

use crate::message::{Gap, GapReason, Tick};
use crate::subscription::SubId;

/// What the client does when the consumer does not keep up and its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Stop reading the socket until the consumer takes an event: the server's own policy
    /// applies then (`conflate`: a `gap{slow_client}`; `disconnect`: the stream ends and the
    /// client resubscribes from its resume point). Nothing is dropped by the client. The
    /// default.
    Backpressure,
    /// Keep reading; drop ticks that do not fit and report each run of them as a
    /// `gap{client_overflow}` for that subscription.
    DropTicks,
}

#[derive(Debug, Clone, Copy)]
struct Dropped {
    first_seq: u64,
    last_seq: u64,
    count: u64,
    t0: i64,
    t1: i64,
}

/// Ticks dropped and not yet reported, per subscription.
#[derive(Debug, Default)]
pub struct Overflow {
    dropped: BTreeMap<SubId, Dropped>,
}

impl Overflow {
    /// `tick` of `sub` did not fit.
    pub fn drop_tick(&mut self, sub: SubId, tick: &Tick) {
        self.dropped
            .entry(sub)
            .and_modify(|d| {
                d.last_seq = tick.seq;
                d.count += 1;
                d.t1 = tick.st;
            })
            .or_insert(Dropped {
                first_seq: tick.seq,
                last_seq: tick.seq,
                count: 1,
                t0: tick.st,
                t1: tick.st,
            });
    }

    /// Whether `sub` has drops to report.
    pub fn has(&self, sub: SubId) -> bool {
        self.dropped.contains_key(&sub)
    }

    /// Whether anything waits to be reported.
    pub fn is_empty(&self) -> bool {
        self.dropped.is_empty()
    }

    /// Subscriptions with drops to report.
    pub fn subs(&self) -> Vec<SubId> {
        self.dropped.keys().copied().collect()
    }

    /// The report for `sub`, removing it.
    pub fn take(&mut self, sub: SubId) -> Option<Gap> {
        let d = self.dropped.remove(&sub)?;
        Some(Gap {
            reason: GapReason::ClientOverflow,
            first_seq: Some(d.first_seq),
            last_seq: Some(d.last_seq),
            count: Some(d.count),
            t0: Some(d.t0),
            t1: Some(d.t1),
            epoch: None,
            new_epoch: None,
            clean: None,
            stream_id: None,
        })
    }

    /// Puts a report back (it did not fit either).
    pub fn restore(&mut self, sub: SubId, g: &Gap) {
        let d = Dropped {
            first_seq: g.first_seq.unwrap_or(0),
            last_seq: g.last_seq.unwrap_or(0),
            count: g.count.unwrap_or(0),
            t0: g.t0.unwrap_or(0),
            t1: g.t1.unwrap_or(0),
        };
        self.dropped
            .entry(sub)
            .and_modify(|later| {
                later.first_seq = d.first_seq;
                later.count += d.count;
                later.t0 = d.t0;
            })
            .or_insert(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(seq: u64) -> Tick {
        crate::message::parse(
            format!(
                r#"{{"seq":{seq},"st":{},"cid":1,"tt":"last","p":1,"s":1}}"#,
                seq * 10
            )
            .as_bytes(),
        )
        .map(|m| match m {
            crate::message::ServerMessage::Tick(t) => t,
            _ => unreachable!(),
        })
        .unwrap()
    }

    #[test]
    fn dropped_ticks_become_one_exact_gap_per_subscription() {
        let mut o = Overflow::default();
        assert!(o.take(1).is_none());
        for s in [5, 9, 12] {
            o.drop_tick(1, &tick(s));
        }
        o.drop_tick(2, &tick(7));
        assert!(o.has(1) && o.has(2) && !o.has(3));
        let g = o.take(1).unwrap();
        assert_eq!(g.reason, GapReason::ClientOverflow);
        assert_eq!(
            (g.first_seq, g.last_seq, g.count, g.t0, g.t1),
            (Some(5), Some(12), Some(3), Some(50), Some(120))
        );
        assert!(!o.has(1));
        // A report that did not fit merges with drops after it.
        let g2 = o.take(2).unwrap();
        o.drop_tick(2, &tick(8));
        o.restore(2, &g2);
        let g = o.take(2).unwrap();
        assert_eq!(
            (g.first_seq, g.last_seq, g.count),
            (Some(7), Some(8), Some(2))
        );
        assert!(o.is_empty());
    }
}
