//! Requests that wait rather than break a pacing rule.
//!
//! The caller pushes requests with their [`HistKey`], asks [`PacedQueue::pop_ready`] at `now`
//! for the next one the rules allow (the oldest such, so a request held by the identical or
//! same-kind rule does not hold back others), sends it, and calls [`PacedQueue::complete`]
//! when its answer (or error) arrives. [`PacedQueue::next_wake`] says when to ask again and
//! [`PacedQueue::plan`] estimates when the last queued request will go.

use std::collections::VecDeque;
use std::time::Duration;

use super::pacing::{HistKey, Pacer, PacingRules, PacingStats, Rule, Verdict};

/// When the queue can next release a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A request may go now.
    Now,
    /// At this time; the rule that holds the soonest request.
    At(Duration, Rule),
    /// Only when an open request completes (50 open).
    OnCompletion,
}

/// A FIFO of paced requests.
#[derive(Debug, Clone)]
pub struct PacedQueue<T> {
    pacer: Pacer,
    waiting: VecDeque<(HistKey, T)>,
}

impl<T> PacedQueue<T> {
    /// An empty queue under these rules.
    pub fn new(rules: PacingRules) -> Self {
        Self {
            pacer: Pacer::new(rules),
            waiting: VecDeque::new(),
        }
    }

    /// Queues a request.
    pub fn push(&mut self, key: HistKey, item: T) {
        self.waiting.push_back((key, item));
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// True when none wait.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The oldest waiting request the rules allow at `now`, recorded as sent.
    pub fn pop_ready(&mut self, now: Duration) -> Option<(HistKey, T)> {
        let i = self
            .waiting
            .iter()
            .position(|(k, _)| self.pacer.check(now, k) == Verdict::Allowed)?;
        let (k, item) = self.waiting.remove(i)?;
        self.pacer.record(now, k.clone());
        Some((k, item))
    }

    /// A sent request completed.
    pub fn complete(&mut self) {
        self.pacer.release();
    }

    /// When to call [`PacedQueue::pop_ready`] again (`None` when nothing waits).
    pub fn next_wake(&self, now: Duration) -> Option<Wake> {
        let mut best: Option<Wake> = None;
        for (k, _) in &self.waiting {
            let w = match self.pacer.check(now, k) {
                Verdict::Allowed => return Some(Wake::Now),
                Verdict::Wait {
                    until: Some(t),
                    rule,
                } => Wake::At(t, rule),
                Verdict::Wait { until: None, .. } => Wake::OnCompletion,
            };
            best = match (best, w) {
                (Some(Wake::At(b, r)), Wake::At(t, _)) if b <= t => Some(Wake::At(b, r)),
                (Some(Wake::At(b, r)), Wake::OnCompletion) => Some(Wake::At(b, r)),
                _ => Some(w),
            };
        }
        best
    }

    /// The send time of every waiting request, in the order they would go, if each answer
    /// came back at once: an estimate of how long the queue takes (the last entry is the ETA).
    pub fn plan(&self, now: Duration) -> Vec<(Duration, &HistKey)> {
        let mut p = self.pacer.clone();
        let mut left: Vec<&HistKey> = self.waiting.iter().map(|(k, _)| k).collect();
        let mut out = Vec::with_capacity(left.len());
        let mut t = now;
        while !left.is_empty() {
            if let Some(i) = left.iter().position(|k| p.check(t, k) == Verdict::Allowed) {
                let k = left.remove(i);
                p.record(t, k.clone());
                p.release();
                out.push((t, k));
                continue;
            }
            // Nothing fits at t: jump to the earliest time one does.
            let next = left
                .iter()
                .filter_map(|k| match p.check(t, k) {
                    Verdict::Wait { until, .. } => until,
                    Verdict::Allowed => Some(t),
                })
                .min();
            match next {
                Some(n) if n > t => t = n,
                // Only completions can help and the plan assumes they come at once: cannot
                // happen after the release above, but never loop forever.
                _ => break,
            }
        }
        out
    }

    /// The pacing state at `now` with this queue's depth.
    pub fn stats(&self, now: Duration) -> (PacingStats, usize) {
        (self.pacer.stats(now), self.waiting.len())
    }
}

#[cfg(test)]
mod tests {
    use super::super::pacing::schedule_breaks;
    use super::*;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    /// Pages of a 3-hour gap, as the pager would ask for them one at a time: `n` distinct
    /// start seconds per (contract, type).
    fn gap_keys(pages: usize, what: &str) -> Vec<HistKey> {
        (0..pages)
            .map(|i| HistKey::new("265598", "SMART", what, format!("start={i}")))
            .collect()
    }

    #[test]
    fn a_queue_releases_only_what_the_rules_allow() {
        let rules = PacingRules::default();
        let mut q = PacedQueue::new(rules);
        for (i, k) in gap_keys(130, "TRADES").into_iter().enumerate() {
            q.push(k, i);
        }
        // Drive it on a virtual clock: wake when it says, answer each request at once.
        let mut now = s(0);
        let mut sent = Vec::new();
        for _ in 0..10_000 {
            while let Some((k, i)) = q.pop_ready(now) {
                assert_eq!(i, sent.len(), "FIFO among equals");
                sent.push((now, k));
                q.complete();
            }
            match q.next_wake(now) {
                Some(Wake::At(t, _)) => now = t,
                Some(w) => panic!("{w:?} with nothing open and everything popped that could go"),
                None => break,
            }
        }
        assert_eq!(sent.len(), 130);
        assert_eq!(schedule_breaks(&rules, &sent), None);
        // 5 per 2 s: the first 60 at 0..=22 s; 60 more at 600..=622 s; the last 10 at 1200 and 1202 s.
        assert_eq!(sent[59].0, s(22));
        assert_eq!(sent[60].0, s(600));
        assert_eq!(sent[129].0, s(1202));
    }

    #[test]
    fn a_long_gap_is_planned_within_the_budget_with_an_eta() {
        // Three hours of a busy instrument (20 trades/s) is 216 pages of 1000 TRADES, and as
        // many BID_ASK pages at 2 units each: 216 + 432 = 648 units, 11 windows of 60 needed.
        let rules = PacingRules::default();
        let mut q = PacedQueue::new(rules);
        for k in gap_keys(216, "TRADES")
            .into_iter()
            .chain(gap_keys(216, "BID_ASK"))
        {
            q.push(k, ());
        }
        let plan = q.plan(s(0));
        assert_eq!(plan.len(), 432);
        let sends: Vec<(Duration, HistKey)> =
            plan.iter().map(|(t, k)| (*t, (*k).clone())).collect();
        assert_eq!(schedule_breaks(&rules, &sends), None);
        // Each window of 600 s sends 5 TRADES + 5 BID_ASK (15 units) every 2 s until its 60 units
        // are used (at +0, +2, +4, +6 s), then waits for the first of them to age out: 20 pages
        // of each kind per window. 216 pages of each: 10 full windows and 16 of each in the
        // 11th, sent at 6000, 6002, 6004 and the last one at 6006 s: the ETA.
        let eta = plan.last().unwrap().0;
        assert_eq!(eta, s(6006));
        assert_eq!(plan[40].0, s(600));
        // Every window of 600 s holds at most 60 units (the budget is used, never exceeded),
        // and the first window is full.
        let units_in = |from: Duration| -> u32 {
            sends
                .iter()
                .filter(|(t, _)| *t >= from && *t < from + s(600))
                .map(|(_, k)| k.weight())
                .sum()
        };
        assert_eq!(units_in(s(0)), 60);
        for (t, _) in &sends {
            assert!(units_in(*t) <= 60);
        }
    }

    #[test]
    fn a_held_request_does_not_block_the_ones_behind_it() {
        let mut q = PacedQueue::new(PacingRules::default());
        let a = HistKey::new("1", "SMART", "TRADES", "a");
        q.push(a.clone(), 1);
        assert_eq!(q.pop_ready(s(0)).map(|x| x.1), Some(1));
        q.complete();
        q.push(a, 2); // identical: held until 15 s
        q.push(HistKey::new("2", "SMART", "TRADES", "a"), 3);
        assert_eq!(q.pop_ready(s(1)).map(|x| x.1), Some(3));
        assert_eq!(q.pop_ready(s(1)), None);
        assert_eq!(q.next_wake(s(1)), Some(Wake::At(s(15), Rule::Identical)));
        assert_eq!(q.pop_ready(s(15)).map(|x| x.1), Some(2));
    }
}
