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
//! hashing, no allocation.
//!
//! Size: about 1 060 lines of code and 530 of tests, over the engine's 600-line guide: one
//! state machine whose quotas, queue, retries and routing all work on the one subscription
//! table.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use ib_stream_ipc::{RecordKind, SubState};

use super::backoff::Backoff;

/// What is subscribed: one of the four tick-by-tick kinds, or reqMktData L1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubKind {
    /// Tick-by-tick "Last".
    Last,
    /// Tick-by-tick "AllLast".
    AllLast,
    /// Tick-by-tick "BidAsk".
    BidAsk,
    /// Tick-by-tick "MidPoint".
    MidPoint,
    /// reqMktData top of book (L1 price, size, string and generic ticks).
    MktData,
}

impl SubKind {
    /// Every kind.
    pub const ALL: [SubKind; 5] = [
        SubKind::Last,
        SubKind::AllLast,
        SubKind::BidAsk,
        SubKind::MidPoint,
        SubKind::MktData,
    ];

    /// True for the four tick-by-tick kinds.
    pub fn is_tick_by_tick(self) -> bool {
        self != SubKind::MktData
    }

    /// The record kind a subscription of this kind is filed under in subscription records
    /// (L1 data itself arrives as several L1 kinds).
    pub fn record_kind(self) -> RecordKind {
        match self {
            SubKind::Last => RecordKind::TbtLast,
            SubKind::AllLast => RecordKind::TbtAllLast,
            SubKind::BidAsk => RecordKind::TbtBidAsk,
            SubKind::MidPoint => RecordKind::TbtMidPoint,
            SubKind::MktData => RecordKind::L1Price,
        }
    }

    /// IB's name for a tick-by-tick kind (`reqTickByTickData`'s tickType).
    pub fn ib_name(self) -> &'static str {
        match self {
            SubKind::Last => "Last",
            SubKind::AllLast => "AllLast",
            SubKind::BidAsk => "BidAsk",
            SubKind::MidPoint => "MidPoint",
            SubKind::MktData => "MktData",
        }
    }

    /// Our short name (web API, control socket, config).
    pub fn name(self) -> &'static str {
        match self {
            SubKind::MktData => "mktdata",
            k => k.record_kind().name(),
        }
    }

    /// Parses our short name or IB's name.
    pub fn from_name(s: &str) -> Option<SubKind> {
        SubKind::ALL
            .into_iter()
            .find(|k| k.name() == s || k.ib_name() == s)
            .or(match s {
                "l1" | "market_data" => Some(SubKind::MktData),
                _ => None,
            })
    }
}

/// One subscription's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubKey {
    /// IB conId.
    pub con_id: u32,
    /// What is subscribed.
    pub kind: SubKind,
}

/// IB's quotas as the manager enforces them.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Concurrent tick-by-tick subscriptions IB allows this account.
    pub tbt_slots: u32,
    /// Concurrent market-data lines IB allows this account.
    pub mkt_lines: u32,
    /// Minimum time between two tick-by-tick requests for one instrument (IB: 15 s).
    pub tbt_same_instrument_ns: u64,
    /// Fall back to delayed data when live data is refused.
    pub allow_delayed: bool,
    /// Longest wait between two attempts of a tick-by-tick request IB refused with 10190
    /// (the first waits one same-instrument window, later ones double up to this).
    pub tbt_retry_cap_ns: u64,
}

/// The shortest wait before a refused tick-by-tick request is tried again, when the
/// same-instrument window is shorter (or off): a refusal at IB's slot cap is not retried
/// more often than this.
pub const MIN_TBT_RETRY_NS: u64 = 1_000_000_000;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            tbt_slots: 5,
            mkt_lines: 100,
            tbt_same_instrument_ns: 15_000_000_000,
            allow_delayed: true,
            tbt_retry_cap_ns: 120_000_000_000,
        }
    }
}

/// A request the engine must send to IB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// reqMktData for a conId.
    MktData {
        /// Request id.
        req_id: i32,
        /// IB conId.
        con_id: u32,
    },
    /// cancelMktData.
    CancelMktData {
        /// Request id.
        req_id: i32,
    },
    /// reqTickByTickData.
    TickByTick {
        /// Request id.
        req_id: i32,
        /// IB conId.
        con_id: u32,
        /// One of the four tick-by-tick kinds.
        kind: SubKind,
    },
    /// cancelTickByTickData.
    CancelTickByTick {
        /// Request id.
        req_id: i32,
    },
    /// reqMarketDataType (3: delayed where live is not permitted).
    MarketDataType(i32),
}

/// Something that changed, for subscription records and the status region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubEvent {
    /// Which subscription.
    pub key: SubKey,
    /// Its new state.
    pub state: SubState,
    /// IB's error code that caused it, or 0.
    pub code: i32,
    /// The request id at IB (0 when none).
    pub req_id: i32,
    /// The market data type IB reported (1 live, 2 frozen, 3 delayed, 4 delayed frozen).
    pub market_data_type: i32,
    /// Set while a refusal is being retried (state `Queued`, `code` IB's refusal).
    pub retry: Option<RetryInfo>,
}

/// A refused request waiting for its next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryInfo {
    /// Refusals since the subscription last received data.
    pub refusals: u32,
    /// When the next attempt may go (the manager's clock, ns).
    pub next_ns: u64,
}

/// One subscription as [`SubscriptionManager::list`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubInfo {
    /// Which subscription.
    pub key: SubKey,
    /// Its state.
    pub state: SubState,
    /// How many holders it has.
    pub holders: usize,
    /// The request id at IB (0 when none is out).
    pub req_id: i32,
    /// IB's code for the last problem, or 0.
    pub code: i32,
    /// Set while a refusal is being retried.
    pub retry: Option<RetryInfo>,
}

/// Why a subscribe was refused up front.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The tick-by-tick budget is used up.
    #[error(
        "10190: max number of tick-by-tick requests reached ({in_use} of {limit} in use); unsubscribe one first"
    )]
    TickByTickFull {
        /// Subscriptions holding a slot.
        in_use: u32,
        /// The budget.
        limit: u32,
    },
    /// The market-data line budget is used up.
    #[error("101: max number of tickers reached ({in_use} of {limit} lines in use)")]
    LinesFull {
        /// Lines in use.
        in_use: u32,
        /// The budget.
        limit: u32,
    },
    /// conId 0 is not a contract.
    #[error("conId 0 is not a contract")]
    BadConId,
}

impl SubscribeError {
    /// IB's code for the same condition.
    pub fn ib_code(&self) -> i32 {
        match self {
            SubscribeError::TickByTickFull { .. } => 10190,
            SubscribeError::LinesFull { .. } => 101,
            SubscribeError::BadConId => 200,
        }
    }
}

/// What a subscribe did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeAck {
    /// The subscription's state now.
    pub state: SubState,
    /// True when it already existed (another holder asked first).
    pub shared: bool,
    /// How many holders it has now.
    pub holders: usize,
    /// IB's code for the last problem, or 0 (10190 while retrying).
    pub code: i32,
    /// Set while a refusal is being retried.
    pub retry: Option<RetryInfo>,
}

/// Where an IB error went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorRoute {
    /// It changed this subscription.
    Subscription(SubKey, SubState),
    /// It belongs to no subscription (unknown id, or a cancel IB did not know: 300).
    Unrouted,
}

/// Where the watchdog stands with a silent subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escalation {
    /// Ask IB for the time: if it answers, the connection is alive.
    Probe,
    /// Cancel and request the subscription again.
    Resubscribe,
    /// Drop the connection and reconnect.
    Reconnect,
}

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

    /// From now on a data request waits until [`SubscriptionManager::contract_ready`] names
    /// its conId: IB wants the full contract (exchange and all) in a data request, so the
    /// engine resolves each conId first. New conIds are announced through
    /// [`SubscriptionManager::take_contract_need`]. (Off by default for callers that have
    /// no contracts to resolve.)
    pub fn require_contracts(&mut self) {
        self.require_contracts = true;
    }

    /// A conId a new subscription needs resolved, oldest first.
    pub fn take_contract_need(&mut self) -> Option<u32> {
        self.contract_needs.pop_front()
    }

    /// The full contract of `con_id` is known: its queued requests may go.
    pub fn contract_ready(&mut self, con_id: u32) {
        self.contracts_ready.insert(con_id);
    }

    /// IB cannot resolve `con_id`: every subscription to it is rejected with `code` (a
    /// subscription record says so). Returns how many were rejected.
    pub fn contract_unresolvable(&mut self, con_id: u32, code: i32) -> usize {
        self.contracts_ready.remove(&con_id);
        self.contract_needs.retain(|c| *c != con_id);
        let keys: Vec<SubKey> = self
            .subs
            .keys()
            .filter(|k| k.con_id == con_id)
            .copied()
            .collect();
        for k in &keys {
            self.reject(*k, code);
        }
        keys.len()
    }

    fn waits_for_contract(&self, con_id: u32) -> bool {
        self.require_contracts && !self.contracts_ready.contains(&con_id)
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

    /// `holder` wants `key`. The first holder creates the IB request; later ones share it.
    pub fn subscribe(
        &mut self,
        holder: &str,
        key: SubKey,
        now: u64,
    ) -> Result<SubscribeAck, SubscribeError> {
        if key.con_id == 0 {
            return Err(SubscribeError::BadConId);
        }
        if let Some(s) = self.subs.get_mut(&key) {
            s.holders.insert(holder.to_string());
            return Ok(SubscribeAck {
                state: s.state,
                shared: true,
                holders: s.holders.len(),
                code: s.code,
                retry: s.waiting_retry(),
            });
        }
        let tbt = key.kind.is_tick_by_tick();
        let in_use = self.in_use(tbt);
        if tbt && in_use >= self.limits.tbt_slots {
            return Err(SubscribeError::TickByTickFull {
                in_use,
                limit: self.limits.tbt_slots,
            });
        }
        if !tbt && in_use >= self.limits.mkt_lines {
            return Err(SubscribeError::LinesFull {
                in_use,
                limit: self.limits.mkt_lines,
            });
        }
        self.subs.insert(
            key,
            Sub {
                holders: BTreeSet::from([holder.to_string()]),
                state: SubState::Queued,
                req_id: None,
                code: 0,
                market_data_type: 1,
                since_ns: now,
                requested_ns: now,
                watchdog: 0,
                retry: None,
            },
        );
        self.pending.push_back(Pending::Subscribe(key));
        if self.waits_for_contract(key.con_id) && !self.contract_needs.contains(&key.con_id) {
            self.contract_needs.push_back(key.con_id);
        }
        self.emit(key);
        Ok(SubscribeAck {
            state: SubState::Queued,
            shared: false,
            holders: 1,
            code: 0,
            retry: None,
        })
    }

    /// `holder` no longer wants `key`; the last holder out cancels it at IB. Returns the
    /// holders left, or `None` when `holder` did not hold it.
    pub fn unsubscribe(&mut self, holder: &str, key: SubKey) -> Option<usize> {
        let s = self.subs.get_mut(&key)?;
        if !s.holders.remove(holder) {
            return None;
        }
        let left = s.holders.len();
        if left == 0 {
            self.drop_sub(key, SubState::Cancelled, 0);
        }
        Some(left)
    }

    /// Releases everything `holder` held (its connection closed).
    pub fn release_holder(&mut self, holder: &str) -> usize {
        let keys: Vec<SubKey> = self
            .subs
            .iter()
            .filter(|(_, s)| s.holders.contains(holder))
            .map(|(k, _)| *k)
            .collect();
        for k in &keys {
            self.unsubscribe(holder, *k);
        }
        keys.len()
    }

    /// Removes a subscription: cancels it at IB when a request is out, emits its final state.
    fn drop_sub(&mut self, key: SubKey, state: SubState, code: i32) {
        let Some(mut s) = self.subs.remove(&key) else {
            return;
        };
        self.pending.retain(|p| *p != Pending::Subscribe(key));
        if let Some(req_id) = s.req_id.take() {
            self.clear_route(req_id);
            if state == SubState::Cancelled && self.connected {
                self.pending.push_back(Pending::Cancel {
                    req_id,
                    tbt: key.kind.is_tick_by_tick(),
                });
            }
        }
        self.events.push_back(SubEvent {
            key,
            state,
            code,
            req_id: 0,
            market_data_type: s.market_data_type,
            retry: None,
        });
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

    /// The next request to send, if one is due. The engine calls this only when its
    /// outbound pacer allows one more message, and sends what it gets.
    pub fn next_request(&mut self, now: u64) -> Option<Request> {
        if !self.connected {
            return None;
        }
        let pos = self
            .pending
            .iter()
            .position(|p| self.due_at(p, now) <= now)?;
        let p = self.pending.remove(pos)?;
        Some(match p {
            Pending::Cancel { req_id, tbt: true } => Request::CancelTickByTick { req_id },
            Pending::Cancel { req_id, tbt: false } => Request::CancelMktData { req_id },
            Pending::MarketDataType(t) => Request::MarketDataType(t),
            Pending::Subscribe(key) => {
                let req_id = self.first_req_id + self.routes.len() as i32;
                self.routes.push(Some(Route {
                    key,
                    last_tick_ns: now,
                    ticks: 0,
                    delayed: false,
                    live: false,
                }));
                if let Some(s) = self.subs.get_mut(&key) {
                    s.req_id = Some(req_id);
                    s.state = SubState::Requested;
                    s.since_ns = now;
                    s.requested_ns = now;
                    s.watchdog = 0;
                }
                self.emit(key);
                if key.kind.is_tick_by_tick() {
                    // Forget instruments whose window has passed: unknown contracts asked
                    // for once each would otherwise stay in this map for good.
                    let window = self.limits.tbt_same_instrument_ns;
                    self.tbt_last_request
                        .retain(|_, t| now.saturating_sub(*t) < window);
                    self.tbt_last_request.insert(key.con_id, now);
                    Request::TickByTick {
                        req_id,
                        con_id: key.con_id,
                        kind: key.kind,
                    }
                } else {
                    Request::MktData {
                        req_id,
                        con_id: key.con_id,
                    }
                }
            }
        })
    }

    /// When a queued subscription's request will go out, if it waits on time (the
    /// same-instrument window, or a refusal's retry): `None` once it is out or due now.
    pub fn queued_until(&self, key: SubKey, now: u64) -> Option<u64> {
        let p = Pending::Subscribe(key);
        if !self.pending.contains(&p) {
            return None;
        }
        Some(self.due_at(&p, now)).filter(|at| *at > now)
    }

    /// When the next queued request becomes due (for the loop's timer); `None` when
    /// nothing waits on time.
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        if !self.connected {
            return None;
        }
        self.pending
            .iter()
            .map(|p| self.due_at(p, now))
            .filter(|&t| t != u64::MAX)
            .min()
    }

    /// When a queued request may go: at once, or after the same-instrument window of the
    /// last tick-by-tick request for its conId, and not before a refusal's retry time;
    /// never (`u64::MAX`) while its contract is not resolved.
    fn due_at(&self, p: &Pending, now: u64) -> u64 {
        let Pending::Subscribe(k) = p else {
            return now;
        };
        if self.waits_for_contract(k.con_id) {
            return u64::MAX;
        }
        let mut at = now;
        if k.kind.is_tick_by_tick()
            && let Some(&t) = self.tbt_last_request.get(&k.con_id)
        {
            at = at.max(t.saturating_add(self.limits.tbt_same_instrument_ns));
        }
        if let Some(r) = self.subs.get(k).and_then(|s| s.retry.as_ref()) {
            at = at.max(r.at);
        }
        at
    }

    /// A tick arrived for `req_id`: returns the conId and whether the data is delayed.
    /// Allocation-free; called once per tick.
    #[inline]
    pub fn on_tick(&mut self, req_id: i32, now: u64) -> Option<(u32, bool)> {
        let i = self.route_index(req_id)?;
        let route = self.routes.get_mut(i)?.as_mut()?;
        route.last_tick_ns = now;
        route.ticks += 1;
        let out = (route.key.con_id, route.delayed);
        if route.live {
            return Some(out);
        }
        // First tick since the request (or since the watchdog called it silent).
        route.live = true;
        let key = route.key;
        let delayed = route.delayed;
        if let Some(s) = self.subs.get_mut(&key) {
            s.state = if delayed {
                SubState::Delayed
            } else {
                SubState::Active
            };
            s.watchdog = 0;
            // Data: a refusal being retried is over.
            if s.retry.take().is_some() {
                s.code = 0;
            }
            self.emit(key);
        }
        Some(out)
    }

    /// IB reported the market data type of a request (message 58).
    pub fn on_market_data_type(&mut self, req_id: i32, market_data_type: i32) {
        let Some(key) = self.key_of(req_id) else {
            return;
        };
        let delayed = matches!(market_data_type, 3 | 4);
        if let Some(r) = self
            .route_index(req_id)
            .and_then(|i| self.routes.get_mut(i))
            .and_then(Option::as_mut)
        {
            r.delayed = delayed;
        }
        let mut changed = false;
        if let Some(s) = self.subs.get_mut(&key) {
            changed = s.market_data_type != market_data_type;
            s.market_data_type = market_data_type;
            if delayed && s.state != SubState::Delayed {
                s.state = SubState::Delayed;
                changed = true;
            }
        }
        // A notice that repeats what we know (live data, as asked) is no state change.
        if changed {
            self.emit(key);
        }
    }

    /// Routes an IB error with a request id to its subscription and acts on it.
    pub fn on_error(&mut self, req_id: i32, code: i32) -> ErrorRoute {
        let Some(key) = self.key_of(req_id) else {
            return ErrorRoute::Unrouted;
        };
        match code {
            // Live data refused but delayed is available: switch the session to "delayed
            // where not permitted live" once, then ask again. Tick-by-tick has no delayed form.
            354 | 10089 | 10090 if self.limits.allow_delayed && key.kind == SubKind::MktData => {
                if let Some(s) = self.subs.get_mut(&key)
                    && let Some(id) = s.req_id.take()
                {
                    s.state = SubState::Queued;
                    s.code = code;
                    self.clear_route(id);
                    if !self.delayed_requested {
                        self.delayed_requested = true;
                        self.pending.push_front(Pending::MarketDataType(3));
                    }
                    self.pending.push_back(Pending::Subscribe(key));
                }
                self.emit(key);
                self.state_of(key)
            }
            // "Displaying delayed market data": data flows, marked delayed.
            10167 => {
                if let Some(r) = self
                    .route_index(req_id)
                    .and_then(|i| self.routes.get_mut(i))
                    .and_then(Option::as_mut)
                {
                    r.delayed = true;
                }
                if let Some(s) = self.subs.get_mut(&key) {
                    s.state = SubState::Delayed;
                    s.code = code;
                    s.market_data_type = 3;
                }
                self.emit(key);
                self.state_of(key)
            }
            // Our id collided with one IB still knows: ask again under a fresh id.
            322 => {
                if let Some(s) = self.subs.get_mut(&key)
                    && let Some(id) = s.req_id.take()
                {
                    s.state = SubState::Queued;
                    s.code = code;
                    s.retry = None;
                    self.clear_route(id);
                    self.pending.push_back(Pending::Subscribe(key));
                }
                self.emit(key);
                self.state_of(key)
            }
            // IB's tick-by-tick cap, or its 15-second rule broken by someone else (a killed
            // predecessor, another client of the account): IB cannot say which, and neither
            // is final. The subscription keeps its slot in our budget and is asked for again.
            10190 => self.retry_later(key, code),
            101 => {
                let in_use = self.in_use(false).saturating_sub(1).max(1);
                self.limits.mkt_lines = self.limits.mkt_lines.min(in_use);
                self.reject(key, code)
            }
            // A competing live session stops data without ending the subscription.
            10197 => {
                if let Some(s) = self.subs.get_mut(&key) {
                    s.state = SubState::Silent;
                    s.code = code;
                }
                self.emit(key);
                self.state_of(key)
            }
            // Warnings and notices (2100..=2199, 10167 handled above) leave data flowing.
            2100..=2199 => self.state_of(key),
            // Everything else with a request id ends the request: no security definition
            // (200), no permissions (354/10089 without fallback, 10189, 10168, 10186), ...
            _ => self.reject(key, code),
        }
    }

    /// Schedules the next attempt of a refused request: one same-instrument window after
    /// the refused request was sent, then doubling (with jitter) up to the cap.
    fn retry_later(&mut self, key: SubKey, code: i32) -> ErrorRoute {
        let base = self.limits.tbt_same_instrument_ns.max(MIN_TBT_RETRY_NS);
        let cap = self.limits.tbt_retry_cap_ns.max(base);
        let seed = self.next_seed();
        let Some(s) = self.subs.get_mut(&key) else {
            return ErrorRoute::Unrouted;
        };
        let Some(id) = s.req_id.take() else {
            return self.state_of(key);
        };
        let retry = s.retry.get_or_insert_with(|| Retry {
            backoff: Backoff::new(base, cap, seed),
            at: 0,
        });
        // Backoff's first delay lies in [base/2, base]: never before the window is over.
        retry.at = s
            .requested_ns
            .saturating_add(retry.backoff.next_delay().max(base));
        s.state = SubState::Queued;
        s.code = code;
        self.clear_route(id);
        self.pending.push_back(Pending::Subscribe(key));
        self.emit(key);
        self.state_of(key)
    }

    /// The retry of a subscription refused by IB, if one is scheduled.
    pub fn retry_of(&self, key: SubKey) -> Option<RetryInfo> {
        self.subs.get(&key)?.waiting_retry()
    }

    fn reject(&mut self, key: SubKey, code: i32) -> ErrorRoute {
        if let Some(s) = self.subs.get_mut(&key)
            && let Some(id) = s.req_id.take()
        {
            self.clear_route(id);
        }
        self.drop_sub(key, SubState::Rejected, code);
        ErrorRoute::Subscription(key, SubState::Rejected)
    }

    fn state_of(&self, key: SubKey) -> ErrorRoute {
        match self.subs.get(&key) {
            Some(s) => ErrorRoute::Subscription(key, s.state),
            None => ErrorRoute::Unrouted,
        }
    }

    /// The session to IB is up (API started): queued requests may go.
    pub fn on_connected(&mut self) {
        self.connected = true;
    }

    /// The session is gone (socket closed) or IB dropped every subscription (1101): every
    /// subscription goes back to the queue and is requested again under a new id.
    pub fn on_subscriptions_lost(&mut self, still_connected: bool) {
        self.connected = still_connected;
        self.delayed_requested = false;
        self.pending.retain(|p| matches!(p, Pending::Subscribe(_)));
        let keys: Vec<SubKey> = self.subs.keys().copied().collect();
        for key in keys {
            let Some(s) = self.subs.get_mut(&key) else {
                continue;
            };
            if let Some(id) = s.req_id.take() {
                s.state = SubState::Queued;
                s.code = 0;
                s.watchdog = 0;
                // A retried request that was out is simply lost with the rest; a retry still
                // waiting keeps its time (IB's window does not care about our connection).
                s.retry = None;
                let idx = i64::from(id) - i64::from(self.first_req_id);
                if let Some(slot) = self.routes.get_mut(idx as usize) {
                    *slot = None;
                }
                self.pending.push_back(Pending::Subscribe(key));
                self.emit(key);
            }
        }
        // A reconnect starts a fresh 15-second clock at IB only after the rule's time has
        // passed; keep our record of past requests so we never break it.
    }

    /// The engine is stopping cleanly: every subscription is dropped (final state
    /// Cancelled), each request out at IB gets its cancel queued, and nothing else that was
    /// queued will be sent. Returns how many cancels wait in the queue.
    pub fn cancel_all(&mut self) -> usize {
        let keys: Vec<SubKey> = self.subs.keys().copied().collect();
        for key in keys {
            self.drop_sub(key, SubState::Cancelled, 0);
        }
        self.pending.retain(|p| matches!(p, Pending::Cancel { .. }));
        self.pending.len()
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

    /// The watchdog: subscriptions with no tick for `silence_ns` escalate one step per
    /// silent period: probe the connection, then resubscribe, then reconnect. Returns the
    /// strongest step due now (the engine acts on it); resubscribes are queued here.
    pub fn check_silence(&mut self, now: u64, silence_ns: u64) -> Option<Escalation> {
        if !self.connected || self.stale {
            return None;
        }
        let mut worst: Option<Escalation> = None;
        let mut changed = Vec::new();
        for (key, s) in self.subs.iter_mut() {
            let Some(id) = s.req_id else { continue };
            let idx = i64::from(id) - i64::from(self.first_req_id);
            let Some(Some(route)) = self.routes.get_mut(idx as usize) else {
                continue;
            };
            let quiet_since = route.last_tick_ns.max(s.since_ns);
            let periods = now.saturating_sub(quiet_since) / silence_ns.max(1);
            if periods <= u64::from(s.watchdog) {
                continue;
            }
            s.watchdog += 1;
            s.since_ns = s.since_ns.max(quiet_since);
            route.live = false;
            let step = match s.watchdog {
                1 => Escalation::Probe,
                2 => Escalation::Resubscribe,
                _ => Escalation::Reconnect,
            };
            if s.state != SubState::Silent {
                s.state = SubState::Silent;
                changed.push(*key);
            }
            if step == Escalation::Resubscribe {
                changed.push(*key);
            }
            worst = worst.max(Some(step));
        }
        for key in changed {
            let resubscribe = self
                .subs
                .get(&key)
                .is_some_and(|s| s.watchdog == 2 && s.req_id.is_some());
            if resubscribe {
                self.resubscribe(key);
            } else {
                self.emit(key);
            }
        }
        worst
    }

    fn resubscribe(&mut self, key: SubKey) {
        let Some(s) = self.subs.get_mut(&key) else {
            return;
        };
        let Some(id) = s.req_id.take() else { return };
        s.state = SubState::Queued;
        s.retry = None;
        self.clear_route(id);
        self.pending.push_back(Pending::Cancel {
            req_id: id,
            tbt: key.kind.is_tick_by_tick(),
        });
        self.pending.push_back(Pending::Subscribe(key));
        self.emit(key);
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

/// `Escalation` orders from mildest to strongest.
impl PartialOrd for Escalation {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Escalation {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let rank = |e: &Escalation| match e {
            Escalation::Probe => 0,
            Escalation::Resubscribe => 1,
            Escalation::Reconnect => 2,
        };
        rank(self).cmp(&rank(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn key(con_id: u32, kind: SubKind) -> SubKey {
        SubKey { con_id, kind }
    }

    fn connected() -> SubscriptionManager {
        let mut m = SubscriptionManager::new(Limits::default(), 1000);
        m.on_connected();
        m
    }

    fn drain(m: &mut SubscriptionManager, now: u64) -> Vec<Request> {
        std::iter::from_fn(|| m.next_request(now)).collect()
    }

    #[test]
    fn one_request_per_key_shared_and_reference_counted() {
        let mut m = connected();
        let k = key(711_280_073, SubKind::BidAsk);
        assert!(!m.subscribe("web", k, 0).unwrap().shared);
        assert!(m.subscribe("strategy", k, 0).unwrap().shared);
        let reqs = drain(&mut m, 0);
        assert_eq!(
            reqs,
            vec![Request::TickByTick {
                req_id: 1000,
                con_id: 711_280_073,
                kind: SubKind::BidAsk
            }]
        );
        assert_eq!(m.unsubscribe("web", k), Some(1));
        assert!(drain(&mut m, 0).is_empty(), "still held by strategy");
        assert_eq!(m.unsubscribe("web", k), None, "web no longer holds it");
        assert_eq!(m.unsubscribe("strategy", k), Some(0));
        assert_eq!(
            drain(&mut m, 0),
            vec![Request::CancelTickByTick { req_id: 1000 }]
        );
        assert_eq!(
            m.on_tick(1000, 1),
            None,
            "late ticks of a cancelled id are not routed"
        );
    }

    /// A request held back by the 15-second rule says when it will be sent.
    #[test]
    fn a_request_held_by_the_same_instrument_window_says_when_it_goes() {
        let mut m = connected();
        let k = key(265_598, SubKind::BidAsk);
        m.subscribe("web", k, 0).unwrap();
        assert_eq!(drain(&mut m, 0).len(), 1);
        assert_eq!(m.queued_until(k, S), None, "out at IB");
        m.unsubscribe("web", k);
        drain(&mut m, S);
        m.subscribe("web", k, 2 * S).unwrap();
        assert_eq!(m.queued_until(k, 2 * S), Some(15 * S));
        assert!(drain(&mut m, 2 * S).is_empty());
        assert_eq!(m.queued_until(k, 15 * S), None, "due now");
        assert_eq!(drain(&mut m, 15 * S).len(), 1);
    }

    /// Rejected subscriptions (unknown contracts) leave nothing behind in the manager: not
    /// the subscription, and not their same-instrument times once the window has passed.
    #[test]
    fn rejected_subscriptions_are_forgotten() {
        let mut m = connected();
        for c in 0..300u32 {
            let now = u64::from(c) * S;
            m.subscribe("web", key(10_000 + c, SubKind::BidAsk), now)
                .unwrap();
            let reqs = drain(&mut m, now);
            let [Request::TickByTick { req_id, .. }] = reqs[..] else {
                panic!("{reqs:?}")
            };
            m.on_error(req_id, 200);
        }
        assert_eq!(m.list().count(), 0);
        assert!(
            m.tbt_last_request.len() <= 16,
            "{} same-instrument times kept",
            m.tbt_last_request.len()
        );
    }

    #[test]
    fn cancel_all_cancels_what_is_out_at_ib_and_nothing_else() {
        let mut m = connected();
        m.subscribe("a", key(1, SubKind::BidAsk), 0).unwrap();
        m.subscribe("b", key(2, SubKind::MktData), 0).unwrap();
        m.subscribe("a", key(1, SubKind::Last), 0).unwrap();
        // BidAsk and MktData go out; Last waits for the 15-second rule.
        assert_eq!(drain(&mut m, 0).len(), 2);
        assert_eq!(m.queued(), 1);
        while m.poll_event().is_some() {}
        assert_eq!(m.cancel_all(), 2);
        let mut reqs = drain(&mut m, 100 * S);
        reqs.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(
            reqs,
            vec![
                Request::CancelMktData { req_id: 1001 },
                Request::CancelTickByTick { req_id: 1000 },
            ]
        );
        let finals: Vec<SubState> = std::iter::from_fn(|| m.poll_event())
            .map(|e| e.state)
            .collect();
        assert_eq!(finals, vec![SubState::Cancelled; 3]);
        assert_eq!(m.list().count(), 0);

        // Not connected: nothing is out at IB, so nothing to cancel.
        let mut m = SubscriptionManager::new(Limits::default(), 1000);
        m.subscribe("a", key(1, SubKind::BidAsk), 0).unwrap();
        assert_eq!(m.cancel_all(), 0);
    }

    #[test]
    fn fifteen_second_rule_queues_the_second_kind_of_an_instrument() {
        let mut m = connected();
        m.subscribe("a", key(1, SubKind::BidAsk), 0).unwrap();
        m.subscribe("a", key(1, SubKind::Last), 0).unwrap();
        m.subscribe("a", key(2, SubKind::Last), 0).unwrap();
        m.subscribe("a", key(1, SubKind::MktData), 0).unwrap();
        let first = drain(&mut m, 0);
        assert_eq!(first.len(), 3, "{first:?}");
        assert!(first.iter().all(|r| !matches!(
            r,
            Request::TickByTick {
                con_id: 1,
                kind: SubKind::Last,
                ..
            }
        )));
        assert_eq!(m.next_deadline(S), Some(15 * S));
        assert!(drain(&mut m, 15 * S - 1).is_empty());
        assert_eq!(
            drain(&mut m, 15 * S),
            vec![Request::TickByTick {
                req_id: 1003,
                con_id: 1,
                kind: SubKind::Last
            }]
        );
    }

    #[test]
    fn full_budgets_are_refused_with_ib_codes() {
        let mut m = SubscriptionManager::new(
            Limits {
                tbt_slots: 2,
                mkt_lines: 1,
                ..Limits::default()
            },
            1,
        );
        m.subscribe("a", key(1, SubKind::Last), 0).unwrap();
        m.subscribe("a", key(2, SubKind::Last), 0).unwrap();
        let e = m.subscribe("a", key(3, SubKind::Last), 0).unwrap_err();
        assert_eq!(e.ib_code(), 10190);
        assert!(e.to_string().contains("2 of 2"), "{e}");
        m.subscribe("a", key(1, SubKind::MktData), 0).unwrap();
        assert_eq!(
            m.subscribe("a", key(2, SubKind::MktData), 0)
                .unwrap_err()
                .ib_code(),
            101
        );
        // Joining an existing subscription needs no new slot.
        assert!(m.subscribe("b", key(1, SubKind::Last), 0).unwrap().shared);
    }

    #[test]
    fn errors_route_to_their_subscription() {
        let mut m = connected();
        m.subscribe("a", key(9, SubKind::MktData), 0).unwrap();
        m.subscribe("a", key(8, SubKind::Last), 0).unwrap();
        drain(&mut m, 0);
        while m.poll_event().is_some() {}
        assert_eq!(
            m.on_error(1001, 200),
            ErrorRoute::Subscription(key(8, SubKind::Last), SubState::Rejected)
        );
        let ev = m.poll_event().unwrap();
        assert_eq!((ev.state, ev.code), (SubState::Rejected, 200));
        assert_eq!(m.on_error(4242, 300), ErrorRoute::Unrouted);
        // 354 on market data falls back to delayed: type 3 first, then a fresh request.
        m.on_error(1000, 354);
        assert_eq!(
            drain(&mut m, 0),
            vec![
                Request::MarketDataType(3),
                Request::MktData {
                    req_id: 1002,
                    con_id: 9
                }
            ]
        );
        m.on_market_data_type(1002, 3);
        assert_eq!(
            m.on_tick(1002, 5),
            Some((9, true)),
            "delayed ticks are marked"
        );
        let states: Vec<SubState> = std::iter::from_fn(|| m.poll_event())
            .map(|e| e.state)
            .collect();
        assert_eq!(states.last(), Some(&SubState::Delayed));
    }

    #[test]
    fn delayed_fallback_can_be_refused() {
        let mut m = SubscriptionManager::new(
            Limits {
                allow_delayed: false,
                ..Limits::default()
            },
            1,
        );
        m.on_connected();
        m.subscribe("a", key(9, SubKind::MktData), 0).unwrap();
        drain(&mut m, 0);
        assert_eq!(
            m.on_error(1, 354),
            ErrorRoute::Subscription(key(9, SubKind::MktData), SubState::Rejected)
        );
        assert!(drain(&mut m, 0).is_empty());
    }

    fn events(m: &mut SubscriptionManager) -> Vec<SubEvent> {
        std::iter::from_fn(|| m.poll_event()).collect()
    }

    fn tbt(req_id: i32, con_id: u32, kind: SubKind) -> Request {
        Request::TickByTick {
            req_id,
            con_id,
            kind,
        }
    }

    /// The restart case: our first request for an instrument falls inside the 15 seconds of
    /// a predecessor's; IB says 10190. It is asked again one window after our request, and
    /// data makes it active again with no code.
    #[test]
    fn a_10190_is_retried_one_window_after_the_request() {
        let mut m = connected();
        let k = key(711_280_073, SubKind::BidAsk);
        m.subscribe("config", k, 0).unwrap();
        assert_eq!(drain(&mut m, 2 * S), vec![tbt(1000, k.con_id, k.kind)]);
        events(&mut m);
        assert_eq!(
            m.on_error(1000, 10190),
            ErrorRoute::Subscription(k, SubState::Queued)
        );
        let ev = events(&mut m);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(
            (ev[0].state, ev[0].code, ev[0].req_id),
            (SubState::Queued, 10190, 0)
        );
        let retry = ev[0].retry.expect("the state says when it is tried again");
        assert_eq!(
            retry,
            RetryInfo {
                refusals: 1,
                next_ns: 17 * S
            }
        );
        assert_eq!(m.retry_of(k), Some(retry));
        assert_eq!(m.on_tick(1000, 3 * S), None, "the refused id is dead");
        assert_eq!(m.next_deadline(3 * S), Some(17 * S));
        assert!(drain(&mut m, 17 * S - 1).is_empty());
        assert_eq!(drain(&mut m, 17 * S), vec![tbt(1001, k.con_id, k.kind)]);
        assert_eq!(m.on_tick(1001, 18 * S), Some((k.con_id, false)));
        let states: Vec<(SubState, i32, i32, bool)> = events(&mut m)
            .iter()
            .map(|e| (e.state, e.code, e.req_id, e.retry.is_some()))
            .collect();
        assert_eq!(
            states,
            vec![
                (SubState::Requested, 10190, 1001, false),
                (SubState::Active, 0, 1001, false)
            ]
        );
        assert_eq!(m.retry_of(k), None);
        let info = m.list().next().unwrap();
        assert_eq!(
            (info.state, info.code, info.retry),
            (SubState::Active, 0, None)
        );
    }

    /// Refused again and again: each wait doubles (jittered) from one window to the cap and
    /// stays there; the attempts never stop while someone holds the subscription.
    #[test]
    fn repeated_refusals_back_off_to_the_cap_without_giving_up() {
        let window = 15 * S;
        let cap = 120 * S;
        let mut m = connected();
        m.set_jitter_seed(7);
        let k = key(1, SubKind::Last);
        m.subscribe("config", k, 0).unwrap();
        let mut now = 0;
        let mut waits = Vec::new();
        for attempt in 0..40u32 {
            let sent = drain(&mut m, now);
            assert_eq!(sent.len(), 1, "attempt {attempt}: {sent:?}");
            let Request::TickByTick { req_id, .. } = sent[0] else {
                panic!("{sent:?}")
            };
            m.on_error(req_id, 10190);
            let r = m.retry_of(k).unwrap();
            assert_eq!(r.refusals, attempt + 1);
            let wait = r.next_ns - now;
            let ceiling = (window << attempt.min(8)).min(cap);
            assert!(
                wait >= window.max(ceiling / 2) && wait <= ceiling,
                "attempt {attempt}: waited {wait} (ceiling {ceiling})"
            );
            assert!(
                drain(&mut m, r.next_ns - 1).is_empty(),
                "not before its time"
            );
            waits.push(wait);
            now = r.next_ns;
        }
        assert_eq!(waits[0], window, "the first retry: exactly one window");
        assert!(
            waits[1..].iter().any(|&w| w != waits[1]),
            "jittered: {waits:?}"
        );
        assert!(waits.iter().all(|&w| w <= cap));
        // The same seed gives the same waits: the schedule is the seed's, not the clock's.
        let mut again = connected();
        again.set_jitter_seed(7);
        again.subscribe("config", k, 0).unwrap();
        let mut now = 0;
        for (i, &w) in waits.iter().enumerate().take(6) {
            let Some(Request::TickByTick { req_id, .. }) = again.next_request(now) else {
                panic!("attempt {i}")
            };
            again.on_error(req_id, 10190);
            assert_eq!(again.retry_of(k).unwrap().next_ns - now, w, "attempt {i}");
            now += w;
        }
    }

    /// The last holder leaving ends the retrying: nothing more is sent, not even a cancel
    /// (no request is out at IB), and the final state is Cancelled.
    #[test]
    fn retrying_stops_when_the_last_holder_leaves() {
        let mut m = connected();
        let k = key(5, SubKind::MidPoint);
        m.subscribe("ws-1", k, 0).unwrap();
        drain(&mut m, 0);
        m.on_error(1000, 10190);
        // A second holder joining hears about the refusal in its reply.
        let ack = m.subscribe("ws-2", k, S).unwrap();
        assert!(ack.shared);
        assert_eq!((ack.state, ack.code), (SubState::Queued, 10190));
        assert_eq!(ack.retry.unwrap().next_ns, 15 * S);
        assert_eq!(m.unsubscribe("ws-1", k), Some(1));
        assert_eq!(m.queued(), 1, "still held by ws-2: still retried");
        events(&mut m);
        assert_eq!(m.unsubscribe("ws-2", k), Some(0));
        assert!(drain(&mut m, 100 * S).is_empty());
        assert_eq!(m.next_deadline(100 * S), None);
        let ev = events(&mut m);
        assert_eq!(ev.last().map(|e| e.state), Some(SubState::Cancelled));
        assert_eq!(m.list().count(), 0);
    }

    /// 10190 at IB's slot cap (another client of the account holds slots): the refused
    /// subscription keeps its place in our budget and gets the slot when one frees.
    #[test]
    fn a_refusal_at_the_slot_cap_keeps_its_budget_and_gets_a_freed_slot() {
        let mut m = SubscriptionManager::new(
            Limits {
                tbt_slots: 2,
                tbt_same_instrument_ns: 0,
                ..Limits::default()
            },
            1000,
        );
        m.on_connected();
        m.subscribe("a", key(1, SubKind::BidAsk), 0).unwrap();
        m.subscribe("a", key(2, SubKind::BidAsk), 0).unwrap();
        assert_eq!(drain(&mut m, 0).len(), 2);
        m.on_error(1001, 10190);
        assert_eq!(
            m.limits().tbt_slots,
            2,
            "a refusal is not taken for IB's cap"
        );
        assert_eq!(
            m.subscribe("b", key(3, SubKind::BidAsk), 0)
                .unwrap_err()
                .ib_code(),
            10190,
            "the refused one still counts against our budget"
        );
        // With the window off, retries wait at least MIN_TBT_RETRY_NS.
        let r = m.retry_of(key(2, SubKind::BidAsk)).unwrap();
        assert_eq!(r.next_ns, MIN_TBT_RETRY_NS);
        // Still full at IB on the next attempt; a slot frees later (IB's other client left)
        // and the attempt after that gets it.
        assert_eq!(
            drain(&mut m, r.next_ns),
            vec![tbt(1002, 2, SubKind::BidAsk)]
        );
        m.on_error(1002, 10190);
        let r = m.retry_of(key(2, SubKind::BidAsk)).unwrap();
        assert_eq!(r.refusals, 2);
        assert_eq!(
            drain(&mut m, r.next_ns),
            vec![tbt(1003, 2, SubKind::BidAsk)]
        );
        m.on_tick(1003, r.next_ns + 1);
        assert_eq!(
            m.list().map(|i| i.state).collect::<Vec<_>>(),
            vec![SubState::Requested, SubState::Active]
        );
    }

    /// A reconnect while a retry waits keeps the retry's time (IB's window does not care
    /// about our connection); a disconnected manager sends nothing.
    #[test]
    fn a_reconnect_keeps_the_retry_time() {
        let mut m = connected();
        let k = key(9, SubKind::AllLast);
        m.subscribe("config", k, 0).unwrap();
        drain(&mut m, 0);
        m.on_error(1000, 10190);
        m.on_subscriptions_lost(false);
        assert!(drain(&mut m, 20 * S).is_empty(), "disconnected");
        m.on_connected();
        m.on_subscriptions_lost(true);
        assert_eq!(m.next_deadline(S), Some(15 * S));
        assert!(drain(&mut m, 15 * S - 1).is_empty());
        assert_eq!(drain(&mut m, 15 * S), vec![tbt(1001, 9, SubKind::AllLast)]);
        // The retried request was out when the session dropped: requeued as any other, with
        // no retry pending (only IB's answer on the new session says whether it is needed).
        m.on_subscriptions_lost(true);
        assert_eq!(m.retry_of(k), None);
        assert_eq!(drain(&mut m, 30 * S), vec![tbt(1002, 9, SubKind::AllLast)]);
    }

    /// Other refusals stay final.
    #[test]
    fn other_refusals_are_not_retried() {
        let mut m = connected();
        let k = key(4, SubKind::Last);
        m.subscribe("a", k, 0).unwrap();
        drain(&mut m, 0);
        assert_eq!(
            m.on_error(1000, 10189),
            ErrorRoute::Subscription(k, SubState::Rejected)
        );
        assert!(drain(&mut m, 100 * S).is_empty());
        assert_eq!(m.list().count(), 0);
    }

    #[test]
    fn lost_subscriptions_are_requested_again_under_new_ids() {
        let mut m = connected();
        m.subscribe("a", key(1, SubKind::MktData), 0).unwrap();
        m.subscribe("a", key(2, SubKind::MidPoint), 0).unwrap();
        drain(&mut m, 0);
        assert_eq!(m.on_tick(1000, 1), Some((1, false)));
        // IB: 1101, connectivity restored, data lost.
        m.on_subscriptions_lost(true);
        assert_eq!(m.on_tick(1000, 2), None, "old ids are dead");
        let again = drain(&mut m, 20 * S);
        assert_eq!(again.len(), 2, "{again:?}");
        assert!(again.contains(&Request::MktData {
            req_id: 1002,
            con_id: 1
        }));
        // Disconnected: nothing goes out until connected again.
        m.on_subscriptions_lost(false);
        assert!(drain(&mut m, 40 * S).is_empty());
        m.on_connected();
        assert_eq!(drain(&mut m, 40 * S).len(), 2);
    }

    #[test]
    fn watchdog_escalates_one_step_per_silent_period() {
        let mut m = connected();
        let k = key(1, SubKind::BidAsk);
        m.subscribe("a", k, 0).unwrap();
        drain(&mut m, 0);
        m.on_tick(1000, S);
        assert_eq!(m.check_silence(10 * S, 30 * S), None);
        assert_eq!(m.check_silence(31 * S, 30 * S), Some(Escalation::Probe));
        assert_eq!(m.check_silence(32 * S, 30 * S), None, "one step per period");
        assert_eq!(
            m.check_silence(61 * S, 30 * S),
            Some(Escalation::Resubscribe)
        );
        let reqs = drain(&mut m, 61 * S);
        assert_eq!(reqs[0], Request::CancelTickByTick { req_id: 1000 });
        assert!(matches!(reqs[1], Request::TickByTick { req_id: 1001, .. }));
        // The new request stays silent as well.
        assert_eq!(m.check_silence(92 * S, 30 * S), Some(Escalation::Probe));
        // A tick clears it.
        m.on_tick(1001, 93 * S);
        assert_eq!(m.list().next().unwrap().state, SubState::Active);
    }

    #[test]
    fn release_holder_drops_everything_it_held() {
        let mut m = connected();
        m.subscribe("ws-1", key(1, SubKind::Last), 0).unwrap();
        m.subscribe("ws-1", key(2, SubKind::MktData), 0).unwrap();
        m.subscribe("cfg", key(2, SubKind::MktData), 0).unwrap();
        drain(&mut m, 0);
        assert_eq!(m.release_holder("ws-1"), 2);
        assert_eq!(
            drain(&mut m, 0),
            vec![Request::CancelTickByTick { req_id: 1000 }]
        );
        assert_eq!(m.list().count(), 1);
    }

    #[test]
    fn data_requests_wait_for_their_contract_and_an_unresolvable_one_is_rejected() {
        let mut m = connected();
        m.require_contracts();
        let a = key(265_598, SubKind::BidAsk);
        let b = key(265_598, SubKind::MktData);
        let c = key(42, SubKind::Last);
        for k in [a, b, c] {
            m.subscribe("web", k, 0).unwrap();
        }
        assert_eq!(
            std::iter::from_fn(|| m.take_contract_need()).collect::<Vec<_>>(),
            [265_598, 42],
            "each conId is announced once"
        );
        assert!(
            drain(&mut m, 0).is_empty(),
            "nothing goes before the contract"
        );
        assert_eq!(
            m.next_deadline(0),
            None,
            "and the loop has no reason to wake"
        );
        m.contract_ready(265_598);
        let reqs = drain(&mut m, 0);
        assert_eq!(reqs.len(), 2, "{reqs:?}");
        events(&mut m);
        assert_eq!(m.contract_unresolvable(42, 200), 1);
        let ev = events(&mut m);
        assert_eq!(
            (ev[0].key, ev[0].state, ev[0].code),
            (c, SubState::Rejected, 200)
        );
        assert!(m.list().all(|s| s.key.con_id == 265_598));
        assert!(drain(&mut m, 0).is_empty());
    }
}
