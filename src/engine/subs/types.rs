//! What the subscription manager's callers see: kinds, keys, limits, the requests it asks
//! for, its events and errors.

use ib_stream_ipc::{RecordKind, SubState};

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
