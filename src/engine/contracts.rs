//! The contract book: every contract the engine requests data for is resolved with IB
//! (reqContractDetails) before its first data request, so requests carry the full contract
//! (a conId alone is refused by a real gateway: 321 "Please enter exchange").
//!
//! Sans-IO: the caller passes the clocks (`mono`: the loop's monotonic ns, for timeouts and
//! retries; `unix`: wall-clock ns, for the ages kept in the store), sends the lookups
//! [`ContractBook::next_lookup`] gives, feeds IB's answers back and acts on the
//! [`BookEvent`]s. The book starts from the on-disk store ([`super::contract_store`]): a
//! stored contract is usable at once, so a restarted engine requests its subscriptions
//! without waiting on IB; one older than [`MAX_AGE_NS`] is used and refreshed in the
//! background; a future past its expiry is not used until IB confirms it. A refresh that
//! finds different fields is a [`BookEvent::Changed`]; IB not knowing the conId (200, or no
//! contract in its answer) is a [`BookEvent::Unresolvable`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::tws::Contract;

use super::contract_store::{ContractChange, StoredContract};

/// A stored contract older than this is refreshed (IB's contract data changes daily at most).
pub const MAX_AGE_NS: i64 = 24 * 3600 * 1_000_000_000;
/// How long IB has to answer one lookup.
pub const LOOKUP_TIMEOUT_NS: u64 = 15_000_000_000;
/// Wait before asking again after a lookup failed for a reason other than IB not knowing
/// the contract (timeout, another error).
pub const RETRY_NS: u64 = 30_000_000_000;

/// What the engine must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BookEvent {
    /// The contract of this conId may be used in data requests.
    Ready(u32),
    /// IB resolved a stored conId to different fields (`field: old -> new` each).
    Changed {
        /// The conId.
        con_id: u32,
        /// What changed.
        fields: Vec<String>,
    },
    /// IB cannot resolve this conId: its subscriptions are rejected.
    Unresolvable {
        /// The conId.
        con_id: u32,
        /// IB's code (200: no security definition).
        code: i32,
        /// What IB said.
        message: String,
    },
}

#[derive(Debug)]
struct InFlight {
    con_id: u32,
    deadline: u64,
    results: Vec<Contract>,
}

/// The engine's resolved contracts and the lookups under way.
#[derive(Debug)]
pub struct ContractBook {
    entries: BTreeMap<u32, StoredContract>,
    /// conIds subscriptions need (refreshed while wanted).
    wanted: BTreeSet<u32>,
    /// conIds to look up, with the monotonic time they may go.
    queue: VecDeque<(u32, u64)>,
    in_flight: BTreeMap<i32, InFlight>,
    first_req_id: i32,
    last_req_id: i32,
    next_req_id: i32,
    max_age_ns: i64,
    dirty: bool,
    events: VecDeque<BookEvent>,
}

/// `yyyymmdd` of a Unix ns time (UTC).
fn yyyymmdd(unix_ns: i64) -> u32 {
    let days = unix_ns.div_euclid(86_400 * 1_000_000_000);
    let (y, m, d) = crate::storage::layout::civil_from_days(days);
    (y.clamp(0, 9999) as u32) * 10_000 + m * 100 + d
}

/// Whether a dated contract (future, option) is past its last trading day. Contracts without
/// a full `yyyymmdd` expiry (stocks, FX, a month alone) never expire here.
fn expired(c: &StoredContract, unix_ns: i64) -> bool {
    let e = &c.last_trade_date_or_contract_month;
    let Some(date) = e.get(..8).filter(|_| e.len() >= 8) else {
        return false;
    };
    match date.parse::<u32>() {
        Ok(d) => d < yyyymmdd(unix_ns),
        Err(_) => false,
    }
}

impl ContractBook {
    /// A book holding `stored` (the store's contents), using request ids from
    /// `first_req_id` to `last_req_id` (wrapping) for its lookups.
    pub fn new(
        stored: Vec<StoredContract>,
        first_req_id: i32,
        last_req_id: i32,
        max_age_ns: i64,
    ) -> ContractBook {
        ContractBook {
            entries: stored
                .into_iter()
                .filter(|c| c.con_id > 0)
                .map(|c| (c.con_id as u32, c))
                .collect(),
            wanted: BTreeSet::new(),
            queue: VecDeque::new(),
            in_flight: BTreeMap::new(),
            first_req_id,
            last_req_id,
            next_req_id: first_req_id,
            max_age_ns,
            dirty: false,
            events: VecDeque::new(),
        }
    }

    fn pending(&self, con_id: u32) -> bool {
        self.queue.iter().any(|(c, _)| *c == con_id)
            || self.in_flight.values().any(|l| l.con_id == con_id)
    }

    fn enqueue(&mut self, con_id: u32, at: u64) {
        if !self.pending(con_id) {
            self.queue.push_back((con_id, at));
        }
    }

    fn stale(&self, c: &StoredContract, unix: i64) -> bool {
        unix.saturating_sub(c.resolved_ns) >= self.max_age_ns
    }

    /// A subscription needs `con_id`'s contract. A usable stored one is [`BookEvent::Ready`]
    /// now (and refreshed in the background when older than the maximum age); otherwise
    /// it is looked up first.
    pub fn want(&mut self, con_id: u32, mono: u64, unix: i64) {
        self.wanted.insert(con_id);
        match self.entries.get(&con_id) {
            Some(c) if !expired(c, unix) => {
                let stale = self.stale(c, unix);
                self.events.push_back(BookEvent::Ready(con_id));
                if stale {
                    self.enqueue(con_id, mono);
                }
            }
            _ => self.enqueue(con_id, mono),
        }
    }

    /// A contract IB resolved for someone else (a lookup by symbol): kept as if looked up.
    pub fn insert_resolved(&mut self, c: &Contract, unix: i64) {
        if c.con_id > 0 {
            self.resolved(c, unix);
        }
    }

    /// The contract to send for `con_id`, once resolved.
    pub fn contract(&self, con_id: u32) -> Option<Contract> {
        self.entries.get(&con_id).map(StoredContract::contract)
    }

    /// Whether a lookup may be sent now.
    pub fn has_due_lookup(&self, mono: u64) -> bool {
        self.queue.iter().any(|(_, at)| *at <= mono)
    }

    /// The next lookup to send (request id, the contract to ask for: a conId alone is
    /// enough for reqContractDetails), if one is due.
    pub fn next_lookup(&mut self, mono: u64) -> Option<(i32, Contract)> {
        let pos = self.queue.iter().position(|(_, at)| *at <= mono)?;
        let (con_id, _) = self.queue.remove(pos)?;
        let req_id = self.next_req_id;
        self.next_req_id = if req_id >= self.last_req_id {
            self.first_req_id
        } else {
            req_id + 1
        };
        self.in_flight.insert(
            req_id,
            InFlight {
                con_id,
                deadline: mono.saturating_add(LOOKUP_TIMEOUT_NS),
                results: Vec::new(),
            },
        );
        Some((
            req_id,
            Contract {
                con_id: con_id as i32,
                ..Contract::default()
            },
        ))
    }

    /// When the book next needs the loop: a queued lookup's time (only useful while
    /// connected) or a lookup's timeout.
    pub fn next_deadline(&self, connected: bool) -> Option<u64> {
        let queued = self
            .queue
            .iter()
            .map(|(_, at)| *at)
            .min()
            .filter(|_| connected);
        let timeouts = self.in_flight.values().map(|l| l.deadline).min();
        match (queued, timeouts) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether `req_id` is one of the book's lookups.
    pub fn owns(&self, req_id: i32) -> bool {
        self.in_flight.contains_key(&req_id)
    }

    /// contractData for one of the book's lookups (false: not ours).
    pub fn on_details(&mut self, req_id: i32, c: &Contract) -> bool {
        match self.in_flight.get_mut(&req_id) {
            Some(l) => {
                l.results.push(c.clone());
                true
            }
            None => false,
        }
    }

    /// contractDataEnd for one of the book's lookups (false: not ours).
    pub fn on_end(&mut self, req_id: i32, unix: i64) -> bool {
        let Some(l) = self.in_flight.remove(&req_id) else {
            return false;
        };
        match l.results.iter().find(|c| c.con_id as u32 == l.con_id) {
            Some(c) => self.resolved(c, unix),
            None => self.unresolvable(
                l.con_id,
                200,
                format!("IB returned no contract for conId {}", l.con_id),
            ),
        }
        true
    }

    /// An IB error for one of the book's lookups (false: not ours). 200 means IB does not
    /// know the conId; anything else is retried later (a stored contract stays in use).
    pub fn on_error(&mut self, req_id: i32, code: i32, message: &str, mono: u64) -> bool {
        let Some(l) = self.in_flight.remove(&req_id) else {
            return false;
        };
        if code == 200 {
            self.unresolvable(l.con_id, code, message.to_string());
        } else {
            self.enqueue(l.con_id, mono.saturating_add(RETRY_NS));
        }
        true
    }

    /// Lookups IB did not answer in time are asked again later.
    pub fn expire(&mut self, mono: u64) {
        let late: Vec<i32> = self
            .in_flight
            .iter()
            .filter(|(_, l)| mono >= l.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(l) = self.in_flight.remove(&id) {
                tracing::warn!(
                    con_id = l.con_id,
                    "IB did not answer the contract lookup in time; asking again later"
                );
                self.enqueue(l.con_id, mono.saturating_add(RETRY_NS));
            }
        }
    }

    /// The session closed: lookups out at IB are lost and asked again when it is back.
    pub fn on_disconnect(&mut self, mono: u64) {
        let lost: Vec<u32> = std::mem::take(&mut self.in_flight)
            .into_values()
            .map(|l| l.con_id)
            .collect();
        for c in lost {
            self.enqueue(c, mono);
        }
    }

    /// Queues a refresh of every wanted contract older than the maximum age, or past its
    /// expiry (the daily refresh; the loop calls this now and then).
    pub fn refresh_due(&mut self, mono: u64, unix: i64) {
        let due: Vec<u32> = self
            .wanted
            .iter()
            .copied()
            .filter(|c| {
                self.entries
                    .get(c)
                    .is_some_and(|e| self.stale(e, unix) || expired(e, unix))
            })
            .collect();
        for c in due {
            self.enqueue(c, mono);
        }
    }

    fn resolved(&mut self, c: &Contract, unix: i64) {
        let con_id = c.con_id as u32;
        let mut new = StoredContract::from_contract(c, unix);
        if let Some(old) = self.entries.get(&con_id) {
            let fields = old.differences(&new);
            new.changed = if fields.is_empty() {
                old.changed.clone()
            } else {
                self.events.push_back(BookEvent::Changed {
                    con_id,
                    fields: fields.clone(),
                });
                Some(ContractChange {
                    at_ns: unix,
                    fields,
                })
            };
        }
        self.entries.insert(con_id, new);
        self.dirty = true;
        if self.wanted.contains(&con_id) {
            self.events.push_back(BookEvent::Ready(con_id));
        }
    }

    fn unresolvable(&mut self, con_id: u32, code: i32, message: String) {
        if self.entries.remove(&con_id).is_some() {
            self.dirty = true;
        }
        self.wanted.remove(&con_id);
        self.queue.retain(|(c, _)| *c != con_id);
        self.events.push_back(BookEvent::Unresolvable {
            con_id,
            code,
            message,
        });
    }

    /// The next thing to act on, oldest first.
    pub fn poll_event(&mut self) -> Option<BookEvent> {
        self.events.pop_front()
    }

    /// The store's new contents when they changed since the last call.
    pub fn take_dirty(&mut self) -> Option<Vec<StoredContract>> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        Some(self.entries.values().cloned().collect())
    }

    /// Every known contract.
    pub fn entries(&self) -> impl Iterator<Item = &StoredContract> + '_ {
        self.entries.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600 * 1_000_000_000;
    /// 2026-12-07 12:00 UTC.
    const NOW: i64 = 1_796_644_800_000_000_000;

    fn aapl() -> Contract {
        Contract {
            con_id: 265598,
            symbol: "AAPL".into(),
            sec_type: "STK".into(),
            exchange: "SMART".into(),
            primary_exchange: "NASDAQ".into(),
            currency: "USD".into(),
            local_symbol: "AAPL".into(),
            trading_class: "NMS".into(),
            ..Contract::default()
        }
    }

    fn mnq(expiry: &str) -> Contract {
        Contract {
            con_id: 711280073,
            symbol: "MNQ".into(),
            sec_type: "FUT".into(),
            last_trade_date_or_contract_month: expiry.into(),
            multiplier: "2".into(),
            exchange: "CME".into(),
            currency: "USD".into(),
            local_symbol: "MNQZ6".into(),
            trading_class: "MNQ".into(),
            ..Contract::default()
        }
    }

    fn book(stored: Vec<StoredContract>) -> ContractBook {
        ContractBook::new(stored, 1 << 29, (1 << 30) - 1, MAX_AGE_NS)
    }

    fn events(b: &mut ContractBook) -> Vec<BookEvent> {
        std::iter::from_fn(|| b.poll_event()).collect()
    }

    #[test]
    fn the_date_is_utc_yyyymmdd() {
        assert_eq!(yyyymmdd(NOW), 20261207);
        assert_eq!(yyyymmdd(0), 19700101);
    }

    #[test]
    fn an_unknown_contract_is_looked_up_before_it_is_ready() {
        let mut b = book(Vec::new());
        b.want(265598, 0, NOW);
        assert!(
            events(&mut b).is_empty(),
            "nothing is ready before IB answers"
        );
        assert!(b.contract(265598).is_none());
        let (req_id, q) = b.next_lookup(0).expect("a lookup");
        assert_eq!(q.con_id, 265598);
        assert!(b.next_lookup(0).is_none(), "one lookup per conId");
        assert!(b.on_details(req_id, &aapl()));
        assert!(b.on_end(req_id, NOW));
        assert_eq!(events(&mut b), [BookEvent::Ready(265598)]);
        let c = b.contract(265598).unwrap();
        assert_eq!(
            (c.exchange.as_str(), c.primary_exchange.as_str()),
            ("SMART", "NASDAQ")
        );
        let saved = b.take_dirty().expect("the store changed");
        assert_eq!(saved[0].resolved_ns, NOW);
        assert!(b.take_dirty().is_none());
    }

    #[test]
    fn a_fresh_stored_contract_is_ready_at_once_with_no_lookup() {
        let stored = StoredContract::from_contract(&aapl(), NOW - DAY / 2);
        let mut b = book(vec![stored]);
        b.want(265598, 0, NOW);
        assert_eq!(events(&mut b), [BookEvent::Ready(265598)]);
        assert!(
            b.next_lookup(u64::MAX).is_none(),
            "no lookup for a fresh entry"
        );
        b.refresh_due(0, NOW);
        assert!(b.next_lookup(u64::MAX).is_none());
        // A day later it is refreshed.
        b.refresh_due(0, NOW + DAY);
        assert_eq!(b.next_lookup(0).map(|(_, c)| c.con_id), Some(265598));
    }

    #[test]
    fn a_stale_stored_contract_is_used_and_refreshed() {
        let stored = StoredContract::from_contract(&aapl(), NOW - DAY - 1);
        let mut b = book(vec![stored]);
        b.want(265598, 0, NOW);
        assert_eq!(events(&mut b), [BookEvent::Ready(265598)]);
        let (req_id, _) = b.next_lookup(0).expect("a refresh of the stale entry");
        b.on_details(req_id, &aapl());
        b.on_end(req_id, NOW);
        assert_eq!(events(&mut b), [BookEvent::Ready(265598)]);
        assert_eq!(
            b.take_dirty().unwrap()[0].resolved_ns,
            NOW,
            "the age restarts"
        );
    }

    #[test]
    fn a_changed_contract_is_noticed_and_recorded() {
        let stored = StoredContract::from_contract(&aapl(), NOW - 2 * DAY);
        let mut b = book(vec![stored]);
        b.want(265598, 0, NOW);
        events(&mut b);
        let (req_id, _) = b.next_lookup(0).unwrap();
        let mut moved = aapl();
        moved.primary_exchange = "NYSE".into();
        b.on_details(req_id, &moved);
        b.on_end(req_id, NOW);
        let ev = events(&mut b);
        assert!(
            matches!(&ev[0], BookEvent::Changed { con_id: 265598, fields } if fields.len() == 1 && fields[0].starts_with("primary_exchange")),
            "{ev:?}"
        );
        assert_eq!(ev[1], BookEvent::Ready(265598));
        assert_eq!(b.contract(265598).unwrap().primary_exchange, "NYSE");
        let saved = b.take_dirty().unwrap();
        let change = saved[0]
            .changed
            .as_ref()
            .expect("the change is kept in the store");
        assert_eq!(change.at_ns, NOW);
    }

    #[test]
    fn an_expired_future_is_not_used_until_ib_confirms_it() {
        let stored = StoredContract::from_contract(&mnq("20261120"), NOW - 3600);
        let mut b = book(vec![stored]);
        b.want(711280073, 0, NOW);
        assert!(events(&mut b).is_empty(), "expired: not ready");
        let (req_id, _) = b.next_lookup(0).unwrap();
        // IB no longer knows it.
        assert!(b.on_error(req_id, 200, "No security definition has been found", 0));
        let ev = events(&mut b);
        assert!(
            matches!(
                &ev[..],
                [BookEvent::Unresolvable {
                    con_id: 711280073,
                    code: 200,
                    ..
                }]
            ),
            "{ev:?}"
        );
        assert!(b.contract(711280073).is_none());
        assert!(b.take_dirty().unwrap().is_empty(), "dropped from the store");
        // A live future is used at once.
        let mut b = book(vec![StoredContract::from_contract(&mnq("20261218"), NOW)]);
        b.want(711280073, 0, NOW);
        assert_eq!(events(&mut b), [BookEvent::Ready(711280073)]);
    }

    #[test]
    fn an_answer_without_the_conid_is_unresolvable() {
        let mut b = book(Vec::new());
        b.want(42, 0, NOW);
        let (req_id, _) = b.next_lookup(0).unwrap();
        b.on_end(req_id, NOW);
        assert!(matches!(
            &events(&mut b)[..],
            [BookEvent::Unresolvable {
                con_id: 42,
                code: 200,
                ..
            }]
        ));
    }

    #[test]
    fn timeouts_errors_and_disconnects_are_retried_not_rejected() {
        let mut b = book(Vec::new());
        b.want(265598, 0, NOW);
        let (id, _) = b.next_lookup(0).unwrap();
        assert_eq!(b.next_deadline(true), Some(LOOKUP_TIMEOUT_NS));
        b.expire(LOOKUP_TIMEOUT_NS);
        assert!(!b.owns(id));
        assert!(
            b.next_lookup(LOOKUP_TIMEOUT_NS).is_none(),
            "waits before asking again"
        );
        let again = LOOKUP_TIMEOUT_NS + RETRY_NS;
        let (id, _) = b.next_lookup(again).unwrap();
        assert!(b.on_error(id, 162, "some other trouble", again));
        assert!(events(&mut b).is_empty());
        let (_, _) = b.next_lookup(again + RETRY_NS).unwrap();
        b.on_disconnect(again + RETRY_NS);
        assert!(
            b.next_lookup(again + RETRY_NS).is_some(),
            "asked again after reconnect"
        );
        assert!(!b.on_end(12345, NOW), "not one of ours");
    }

    #[test]
    fn a_lookup_by_symbol_fills_the_book() {
        let mut b = book(Vec::new());
        b.insert_resolved(&aapl(), NOW);
        b.want(265598, 0, NOW);
        assert_eq!(events(&mut b), [BookEvent::Ready(265598)]);
        assert!(b.next_lookup(u64::MAX).is_none());
    }
}
