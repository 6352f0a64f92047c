//! The subscription manager: one IB request per (conId, kind), shared by everyone who asked.
//!
//! Sans-IO like the codec: callers pass `now` (ns, monotonic) and IB's answers; the manager
//! says what to send ([`SubscriptionManager::next_request`]) and what changed
//! ([`SubscriptionManager::poll_event`]). It enforces IB's quotas before IB has to: slot
//! budgets for tick-by-tick and market-data lines (a full budget is a clear rejection with
//! IB's own code, 10190 or 101) and the 15-second rule for tick-by-tick requests on one
//! instrument (such requests wait in a queue). IB's errors are routed to the subscription
//! they belong to; 1101 and reconnects re-request everything; a delayed-data fallback is
//! marked, never silent.
//!
//! IB answers 10190 both at its tick-by-tick cap and for a second request on one instrument
//! within 15 s, which a predecessor (an engine killed and restarted) or another client of the
//! account may have made. Neither is final, so a 10190 is retried while the subscription has
//! holders: first one window after our request, then with exponential backoff and jitter up
//! to [`Limits::tbt_retry_cap_ns`]. Meanwhile the subscription is `Queued` with code 10190
//! and a next attempt time ("retrying"), never silently dropped.
//!
//! The per-tick call, [`SubscriptionManager::on_tick`], is an index into a vector: no
//!
//! The files: [`types`] (what callers see: kinds, keys, limits, requests, events),
//! [`requests`] (holders, the queue and when each request may go), [`ib_answers`] (ticks,
//! IB's errors and refusals, reconnects), [`contracts`] (requests waiting for their
//! contract), [`watchdog`] (silent subscriptions); the state they share is here.

mod contracts;
mod ib_answers;
mod requests;
mod types;
mod watchdog;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use ib_stream_ipc::SubState;

use super::backoff::Backoff;

pub use types::{
    ErrorRoute, Escalation, Limits, MIN_TBT_RETRY_NS, Request, RetryInfo, SubEvent, SubInfo,
    SubKey, SubKind, SubscribeAck, SubscribeError,
};

/// The per-request slot the hot path reads.
#[derive(Clone, Copy, Debug)]
struct Route {
    key: SubKey,
    last_tick_ns: u64,
    ticks: u64,
    delayed: bool,
    /// The subscription is already Active/Delayed: a tick needs no state change.
    live: bool,
}

#[derive(Clone, Debug)]
struct Sub {
    holders: BTreeSet<String>,
    state: SubState,
    req_id: Option<i32>,
    code: i32,
    market_data_type: i32,
    since_ns: u64,
    /// When the current (or last) request was sent: a refusal's retry is timed from it.
    requested_ns: u64,
    watchdog: u8,
    /// Set from IB's 10190 until data arrives: the next attempt waits for `at`.
    retry: Option<Retry>,
}

#[derive(Clone, Debug)]
struct Retry {
    backoff: Backoff,
    at: u64,
}

impl Sub {
    /// The retry this subscription waits for: none once the attempt is out at IB.
    fn waiting_retry(&self) -> Option<RetryInfo> {
        let r = self.retry.as_ref().filter(|_| self.req_id.is_none())?;
        Some(RetryInfo {
            refusals: r.backoff.attempts(),
            next_ns: r.at,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Subscribe(SubKey),
    Cancel { req_id: i32, tbt: bool },
    MarketDataType(i32),
}

/// Owns every subscription and IB request id of one engine.
#[derive(Debug)]
pub struct SubscriptionManager {
    limits: Limits,
    subs: BTreeMap<SubKey, Sub>,
    /// `routes[req_id - first_req_id]`; ids are never reused within a manager's life, so a
    /// late tick for a cancelled id cannot be misfiled.
    routes: Vec<Option<Route>>,
    first_req_id: i32,
    pending: VecDeque<Pending>,
    events: VecDeque<SubEvent>,
    tbt_last_request: HashMap<u32, u64>,
    connected: bool,
    delayed_requested: bool,
    stale: bool,
    /// Seeds each retrying subscription's jitter (xorshift state).
    jitter: u64,
    /// Data requests wait until their conId's contract is resolved (see
    /// [`SubscriptionManager::require_contracts`]).
    require_contracts: bool,
    /// conIds whose full contract the engine holds.
    contracts_ready: BTreeSet<u32>,
    /// conIds a new subscription needs resolved, for the engine to look up.
    contract_needs: VecDeque<u32>,
}

impl SubscriptionManager {
    /// A manager whose request ids start at `first_req_id` (kept clear of order ids and of
    /// other components' ids, such as contract lookups).
    pub fn new(limits: Limits, first_req_id: i32) -> SubscriptionManager {
        SubscriptionManager {
            limits,
            subs: BTreeMap::new(),
            routes: Vec::with_capacity(1024),
            first_req_id,
            pending: VecDeque::with_capacity(256),
            events: VecDeque::with_capacity(256),
            tbt_last_request: HashMap::new(),
            connected: false,
            delayed_requested: false,
            stale: false,
            jitter: 0x9e37_79b9_7f4a_7c15,
            require_contracts: false,
            contracts_ready: BTreeSet::new(),
            contract_needs: VecDeque::new(),
        }
    }

    /// Seeds the jitter of retries, so that several engines refused together do not retry
    /// in lockstep (tests pass a fixed seed for exact delays).
    pub fn set_jitter_seed(&mut self, seed: u64) {
        self.jitter = seed | 1;
    }

    fn next_seed(&mut self) -> u64 {
        let mut x = self.jitter;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter = x;
        x
    }

    /// The limits in force (the line budget shrinks if IB says 101 first).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn holds_slot(state: SubState) -> bool {
        !matches!(state, SubState::Rejected | SubState::Cancelled)
    }

    fn in_use(&self, tbt: bool) -> u32 {
        self.subs
            .iter()
            .filter(|(k, s)| k.kind.is_tick_by_tick() == tbt && Self::holds_slot(s.state))
            .count() as u32
    }

    fn emit(&mut self, key: SubKey) {
        if let Some(s) = self.subs.get(&key) {
            self.events.push_back(SubEvent {
                key,
                state: s.state,
                code: s.code,
                req_id: s.req_id.unwrap_or(0),
                market_data_type: s.market_data_type,
                retry: s.waiting_retry(),
            });
        }
    }

    fn route_index(&self, req_id: i32) -> Option<usize> {
        let i = i64::from(req_id) - i64::from(self.first_req_id);
        (i >= 0).then_some(i as usize)
    }

    fn clear_route(&mut self, req_id: i32) {
        if let Some(slot) = self
            .route_index(req_id)
            .and_then(|i| self.routes.get_mut(i))
        {
            *slot = None;
        }
    }

    fn key_of(&self, req_id: i32) -> Option<SubKey> {
        let i = self.route_index(req_id)?;
        self.routes.get(i).copied().flatten().map(|r| r.key)
    }

    /// Requests still waiting to be sent (of any kind).
    pub fn queued(&self) -> usize {
        self.pending.len()
    }

    /// IB lost (1100) or regained (1102) connectivity to its servers: data is stale until then.
    pub fn set_stale(&mut self, stale: bool) {
        self.stale = stale;
    }

    /// True between 1100 and 1101/1102.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// True when state changes wait in [`SubscriptionManager::poll_event`].
    #[inline]
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Ticks received under each subscription's current request and the (monotonic) time of
    /// the last one, for the status region.
    pub fn tick_stats(&self) -> impl Iterator<Item = (SubKey, u64, u64)> + '_ {
        self.subs.iter().filter_map(|(k, s)| {
            let id = s.req_id?;
            let i = self.route_index(id)?;
            let r = self.routes.get(i).copied().flatten()?;
            Some((*k, r.ticks, r.last_tick_ns))
        })
    }

    /// The next state change, oldest first.
    pub fn poll_event(&mut self) -> Option<SubEvent> {
        self.events.pop_front()
    }

    /// Every subscription.
    pub fn list(&self) -> impl Iterator<Item = SubInfo> + '_ {
        self.subs.iter().map(|(k, s)| SubInfo {
            key: *k,
            state: s.state,
            holders: s.holders.len(),
            req_id: s.req_id.unwrap_or(0),
            code: s.code,
            retry: s.waiting_retry(),
        })
    }
}
