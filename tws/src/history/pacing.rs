//! IB's historical pacing rules as one state machine, on the caller's clock.
//!
//! The rules (IB's "Historical Data Limitations"; docs/OPERATIONS.md):
//! * no identical request within 15 s;
//! * six or more requests for the same contract, exchange and tick type within 2 s are a
//!   violation, so at most five in any 2 s;
//! * at most 60 requests in any 10 minutes, a BID_ASK request counting twice;
//! * at most 50 requests open at once.
//!
//! A request made at `t` counts against a window of length `w` while `now - t < w`: at
//! exactly `t + w` it no longer does. The clock is a [`Duration`] since any origin the caller
//! picks (the simulator's `Instant`s, a test's virtual seconds); the state never reads a clock.

use std::collections::VecDeque;
use std::time::Duration;

/// The limits, IB's by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacingRules {
    /// No identical request within this.
    pub identical_window: Duration,
    /// Window of the same contract/exchange/tick type rule.
    pub same_kind_window: Duration,
    /// Requests for one contract/exchange/tick type allowed in that window.
    pub same_kind_max: u32,
    /// Window of the overall budget.
    pub budget_window: Duration,
    /// Weight allowed in that window (BID_ASK weighs 2, everything else 1).
    pub budget_max: u32,
    /// Requests open at once.
    pub max_open: u32,
}

impl Default for PacingRules {
    fn default() -> Self {
        Self {
            identical_window: Duration::from_secs(15),
            same_kind_window: Duration::from_secs(2),
            same_kind_max: 5,
            budget_window: Duration::from_secs(600),
            budget_max: 60,
            max_open: 50,
        }
    }
}

/// Which rule holds a request back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// An identical request within 15 s.
    Identical,
    /// Too many for the same contract/exchange/tick type within 2 s.
    SameKind,
    /// The 60-per-10-minutes budget.
    Budget,
    /// 50 requests open.
    Open,
}

impl Rule {
    /// A short name for status output.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Identical => "identical_15s",
            Rule::SameKind => "same_kind_2s",
            Rule::Budget => "budget_10min",
            Rule::Open => "open_50",
        }
    }
}

/// What a historical request is, as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HistKey {
    /// The contract (conId, or a description when there is none).
    pub contract: String,
    /// Exchange.
    pub exchange: String,
    /// whatToShow, upper case ("TRADES", "BID_ASK", "MIDPOINT", ...).
    pub what_to_show: String,
    /// Everything else that makes two requests identical (times, count, RTH, ...).
    pub detail: String,
}

impl HistKey {
    /// A key; `what_to_show` is upper-cased so "bid_ask" and "BID_ASK" are one type.
    pub fn new(
        contract: impl Into<String>,
        exchange: impl Into<String>,
        what_to_show: &str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            contract: contract.into(),
            exchange: exchange.into(),
            what_to_show: what_to_show.to_ascii_uppercase(),
            detail: detail.into(),
        }
    }

    /// What the request costs against the 10-minute budget: BID_ASK counts twice.
    pub fn weight(&self) -> u32 {
        if self.what_to_show == "BID_ASK" { 2 } else { 1 }
    }

    fn same_kind(&self, other: &HistKey) -> bool {
        self.contract == other.contract
            && self.exchange == other.exchange
            && self.what_to_show == other.what_to_show
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It may go now.
    Allowed,
    /// It must wait for `rule`: until `until` on the caller's clock, or (`None`) until an open
    /// request completes.
    Wait {
        /// Earliest time every time-based rule allows it.
        until: Option<Duration>,
        /// The rule that holds it longest.
        rule: Rule,
    },
}

/// Budgets in use, for status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacingStats {
    /// Weight used in the current 10-minute window.
    pub budget_used: u32,
    /// The window's limit.
    pub budget_max: u32,
    /// Requests open.
    pub open: u32,
    /// Requests recorded since start.
    pub sent: u64,
}

#[derive(Debug, Clone)]
struct Sent {
    at: Duration,
    key: HistKey,
}

/// The rules' state: the requests of the last 10 minutes and the open count.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    rules: PacingRules,
    recent: VecDeque<Sent>,
    open: u32,
    sent: u64,
}

impl Pacer {
    /// A pacer with these rules.
    pub fn new(rules: PacingRules) -> Self {
        Self {
            rules,
            ..Self::default()
        }
    }

    /// The rules.
    pub fn rules(&self) -> &PacingRules {
        &self.rules
    }

    fn forget_before(&mut self, now: Duration) {
        let keep = self
            .rules
            .budget_window
            .max(self.rules.identical_window)
            .max(self.rules.same_kind_window);
        while self
            .recent
            .front()
            .is_some_and(|s| now.saturating_sub(s.at) >= keep)
        {
            self.recent.pop_front();
        }
    }

    /// Whether `key` may go at `now`, without recording it.
    pub fn check(&self, now: Duration, key: &HistKey) -> Verdict {
        let r = &self.rules;
        let live = |s: &&Sent, w: Duration| now.saturating_sub(s.at) < w && s.at <= now;
        let mut worst: Option<(Duration, Rule)> = None;
        let mut hold = |until: Duration, rule: Rule| {
            if worst.is_none_or(|(u, _)| until > u) {
                worst = Some((until, rule));
            }
        };
        // Identical: the latest identical one must be 15 s old.
        if let Some(s) = self
            .recent
            .iter()
            .rev()
            .find(|s| s.key == *key && live(s, r.identical_window))
        {
            hold(s.at + r.identical_window, Rule::Identical);
        }
        // Same kind: with `max` in the window, wait for the oldest of the newest `max` to age.
        let kind: Vec<Duration> = self
            .recent
            .iter()
            .filter(|s| s.key.same_kind(key) && live(s, r.same_kind_window))
            .map(|s| s.at)
            .collect();
        if kind.len() >= r.same_kind_max as usize {
            let oldest_to_go = kind[kind.len() - r.same_kind_max as usize];
            hold(oldest_to_go + r.same_kind_window, Rule::SameKind);
        }
        // Budget: drop the oldest until this one's weight fits.
        let in_window: Vec<&Sent> = self
            .recent
            .iter()
            .filter(|s| live(s, r.budget_window))
            .collect();
        let mut used: u32 = in_window.iter().map(|s| s.key.weight()).sum();
        if used + key.weight() > r.budget_max {
            for s in &in_window {
                used -= s.key.weight();
                if used + key.weight() <= r.budget_max {
                    hold(s.at + r.budget_window, Rule::Budget);
                    break;
                }
            }
        }
        if self.open >= r.max_open {
            return Verdict::Wait {
                until: None,
                rule: Rule::Open,
            };
        }
        match worst {
            None => Verdict::Allowed,
            Some((until, rule)) => Verdict::Wait {
                until: Some(until),
                rule,
            },
        }
    }

    /// Records `key` as sent at `now` (and open) if the rules allow it; the verdict either way.
    pub fn try_send(&mut self, now: Duration, key: &HistKey) -> Verdict {
        self.forget_before(now);
        let v = self.check(now, key);
        if v == Verdict::Allowed {
            self.record(now, key.clone());
        }
        v
    }

    /// Records `key` as sent at `now` and open, whatever the rules say (a request that was
    /// sent anyway still counts at IB).
    pub fn record(&mut self, now: Duration, key: HistKey) {
        self.forget_before(now);
        self.recent.push_back(Sent { at: now, key });
        self.open += 1;
        self.sent += 1;
    }

    /// A request completed (its answer, an error, or a cancel).
    pub fn release(&mut self) {
        self.open = self.open.saturating_sub(1);
    }

    /// Requests open.
    pub fn open(&self) -> u32 {
        self.open
    }

    /// Budgets in use at `now`.
    pub fn stats(&self, now: Duration) -> PacingStats {
        let w = self.rules.budget_window;
        PacingStats {
            budget_used: self
                .recent
                .iter()
                .filter(|s| s.at <= now && now.saturating_sub(s.at) < w)
                .map(|s| s.key.weight())
                .sum(),
            budget_max: self.rules.budget_max,
            open: self.open,
            sent: self.sent,
        }
    }
}

/// Whether a schedule of sends (time, key) keeps every time-based rule: an independent,
/// brute-force reading of the rules for tests of planners and queues.
pub fn schedule_breaks(
    rules: &PacingRules,
    sends: &[(Duration, HistKey)],
) -> Option<(usize, Rule)> {
    for (i, (t, k)) in sends.iter().enumerate() {
        let before = &sends[..i];
        let within = |w: Duration| before.iter().filter(move |(u, _)| *u <= *t && *t - *u < w);
        if within(rules.identical_window).any(|(_, x)| x == k) {
            return Some((i, Rule::Identical));
        }
        let kind = within(rules.same_kind_window)
            .filter(|(_, x)| x.same_kind(k))
            .count();
        if kind + 1 > rules.same_kind_max as usize {
            return Some((i, Rule::SameKind));
        }
        let used: u32 = within(rules.budget_window).map(|(_, x)| x.weight()).sum();
        if used + k.weight() > rules.budget_max {
            return Some((i, Rule::Budget));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }
    const NS: Duration = Duration::from_nanos(1);

    fn key(con: i32, what: &str, detail: &str) -> HistKey {
        HistKey::new(con.to_string(), "SMART", what, detail)
    }

    #[test]
    fn identical_request_waits_exactly_15_s() {
        let mut p = Pacer::new(PacingRules::default());
        let k = key(1, "TRADES", "a");
        assert_eq!(p.try_send(s(100.0), &k), Verdict::Allowed);
        p.release();
        let v = p.try_send(s(115.0) - NS, &k);
        assert_eq!(
            v,
            Verdict::Wait {
                until: Some(s(115.0)),
                rule: Rule::Identical
            }
        );
        // A different detail is not identical.
        assert_eq!(
            p.try_send(s(101.0), &key(1, "TRADES", "b")),
            Verdict::Allowed
        );
        assert_eq!(p.try_send(s(115.0), &k), Verdict::Allowed);
    }

    #[test]
    fn sixth_of_a_kind_within_2_s_waits_for_the_first_to_age() {
        let mut p = Pacer::new(PacingRules::default());
        for i in 0..5 {
            let at = s(10.0) + Duration::from_millis(100 * i);
            assert_eq!(
                p.try_send(at, &key(1, "TRADES", &i.to_string())),
                Verdict::Allowed
            );
        }
        let sixth = key(1, "TRADES", "5");
        assert_eq!(
            p.try_send(s(12.0) - NS, &sixth),
            Verdict::Wait {
                until: Some(s(12.0)),
                rule: Rule::SameKind
            }
        );
        // Another tick type, exchange or contract is another kind.
        assert_eq!(
            p.try_send(s(10.5), &key(1, "MIDPOINT", "5")),
            Verdict::Allowed
        );
        assert_eq!(
            p.try_send(s(10.5), &key(2, "TRADES", "5")),
            Verdict::Allowed
        );
        assert_eq!(
            p.try_send(s(10.5), &HistKey::new("1", "ISLAND", "TRADES", "5")),
            Verdict::Allowed
        );
        assert_eq!(p.try_send(s(12.0), &sixth), Verdict::Allowed);
        // The next waits for the second one (10.1 s) to age.
        assert_eq!(
            p.check(s(12.0), &key(1, "TRADES", "6")),
            Verdict::Wait {
                until: Some(s(12.1)),
                rule: Rule::SameKind
            }
        );
    }

    #[test]
    fn sixty_in_ten_minutes_and_bid_ask_counts_twice() {
        let rules = PacingRules::default();
        let mut p = Pacer::new(rules);
        // 30 BID_ASK (weight 60), each on its own contract so only the budget binds.
        for i in 0..30 {
            assert_eq!(
                p.try_send(s(i as f64), &key(i, "BID_ASK", "x")),
                Verdict::Allowed
            );
            p.release();
        }
        assert_eq!(p.stats(s(30.0)).budget_used, 60);
        let v = p.check(s(30.0), &key(99, "TRADES", "x"));
        assert_eq!(
            v,
            Verdict::Wait {
                until: Some(s(600.0)),
                rule: Rule::Budget
            }
        );
        assert_eq!(p.try_send(s(600.0) - NS, &key(99, "TRADES", "x")), v);
        // At 600 s the first BID_ASK (weight 2) ages out: a BID_ASK fits exactly.
        assert_eq!(
            p.try_send(s(600.0), &key(99, "BID_ASK", "x")),
            Verdict::Allowed
        );
        // Now full again; a TRADES (weight 1) waits for the one sent at 1 s.
        assert_eq!(
            p.check(s(600.0), &key(98, "TRADES", "x")),
            Verdict::Wait {
                until: Some(s(601.0)),
                rule: Rule::Budget
            }
        );
    }

    #[test]
    fn a_bid_ask_needs_two_free_units() {
        let mut p = Pacer::new(PacingRules::default());
        for i in 0..59 {
            assert_eq!(
                p.try_send(s(i as f64), &key(i, "TRADES", "x")),
                Verdict::Allowed
            );
            p.release();
        }
        assert_eq!(
            p.try_send(s(59.0), &key(100, "MIDPOINT", "x")),
            Verdict::Allowed
        );
        p.release();
        assert_eq!(p.stats(s(59.0)).budget_used, 60);
        // One unit frees at 600 s (the request at 0 s), a second at 601 s.
        assert_eq!(
            p.check(s(600.0), &key(101, "BID_ASK", "x")),
            Verdict::Wait {
                until: Some(s(601.0)),
                rule: Rule::Budget
            }
        );
        assert_eq!(
            p.check(s(600.0), &key(101, "TRADES", "x")),
            Verdict::Allowed
        );
    }

    #[test]
    fn at_most_50_open_until_one_completes() {
        let mut p = Pacer::new(PacingRules::default());
        for i in 0..50 {
            assert_eq!(
                p.try_send(s(i as f64 * 3.0), &key(i, "TRADES", "x")),
                Verdict::Allowed
            );
        }
        assert_eq!(
            p.try_send(s(200.0), &key(77, "TRADES", "x")),
            Verdict::Wait {
                until: None,
                rule: Rule::Open
            }
        );
        p.release();
        assert_eq!(
            p.try_send(s(200.0), &key(77, "TRADES", "x")),
            Verdict::Allowed
        );
        assert_eq!(p.open(), 50);
    }

    #[test]
    fn the_longest_hold_wins_when_rules_overlap() {
        let mut p = Pacer::new(PacingRules::default());
        let k = key(1, "TRADES", "a");
        p.try_send(s(0.0), &k);
        for i in 1..5 {
            p.try_send(s(0.1 * i as f64), &key(1, "TRADES", &i.to_string()));
        }
        // Same-kind frees at 2 s, identical at 15 s: 15 s it is.
        assert_eq!(
            p.check(s(1.0), &k),
            Verdict::Wait {
                until: Some(s(15.0)),
                rule: Rule::Identical
            }
        );
    }

    #[test]
    fn the_checker_finds_each_broken_rule() {
        let r = PacingRules::default();
        let a = key(1, "TRADES", "a");
        assert_eq!(
            schedule_breaks(&r, &[(s(0.0), a.clone()), (s(14.9), a.clone())]),
            Some((1, Rule::Identical))
        );
        assert_eq!(
            schedule_breaks(&r, &[(s(0.0), a.clone()), (s(15.0), a.clone())]),
            None
        );
        let six: Vec<_> = (0..6)
            .map(|i| (s(0.3 * i as f64), key(1, "TRADES", &i.to_string())))
            .collect();
        assert_eq!(schedule_breaks(&r, &six), Some((5, Rule::SameKind)));
        let many: Vec<_> = (0..31)
            .map(|i| (s(3.0 * i as f64), key(i, "BID_ASK", "x")))
            .collect();
        assert_eq!(schedule_breaks(&r, &many), Some((30, Rule::Budget)));
    }
}
