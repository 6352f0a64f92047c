//! The IB session, sans-IO: every piece of the engine's session state and no socket, no
//! clock, no file. In the shape of quinn-proto's `Connection`: the caller (the
//! [`driver`](super::driver), or a test harness on a virtual clock) feeds it inputs, each
//! with the time as a [`Clock`]:
//!
//! - the IB socket: [`Session::on_connecting`] / [`Session::on_connect_failed`] (answering
//!   [`Action::Connect`]), [`Session::on_connected`], bytes read straight into
//!   [`Session::recv_buf`] then [`Session::on_received`] (or copied in with
//!   [`Session::on_bytes`]), [`Session::on_closed`];
//! - control clients: [`Session::control_open`], [`Session::on_control_bytes`],
//!   [`Session::on_control_closed`];
//! - time: [`Session::on_timeout`] whenever [`Session::next_deadline`] is reached (calling it
//!   early is harmless).
//!
//! After each input the caller drains, in this order: [`Session::poll_action`] until `None`
//! (connect, close, half-close, control output, the store to write, stop), then the bytes
//! for IB ([`Session::ib_out`], [`Session::ib_written`]) and for control clients
//! ([`Session::control_out`], [`Session::control_written`]); then it waits until
//! [`Session::next_deadline`] or the next event.
//!
//! Ticks go straight from the receive buffer into the ring batch of the [`Publisher`] the
//! caller hands over at construction (shared memory in the engine, a heap ring in tests,
//! read back with [`Publisher::reader`]). Randomness (backoff and retry jitter) comes from
//! the seed given at construction.
//!
//! The files: [`handshake`] (connect, backoff, client-id rotation, the handshake phases,
//! disconnects), [`ib_events`] (IB's messages, error policy, farm notices, subscription and
//! contract book events), [`pump`] (the paced outbound queue), [`lookups`] (contract
//! lookups of control clients), [`requests`] (control requests and their JSON),
//! [`timers`] (deadlines, status, watchdog), [`stop`] (the clean stop), [`wake`] (the host
//! slept: reconnect at once).

mod handshake;
mod ib_events;
mod lookups;
mod pump;
mod requests;
mod stop;
mod timers;
mod wake;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;

use tracing::warn;

use crate::config::Settings;
use crate::ipc::{ConnState, RecordKind, SubState};
use crate::tws::{ClientHandshake, ClientMsg, ServerMsg};

use super::backoff::Backoff;
use super::contract_store::StoredContract;
use super::contracts::{self, ContractBook};
use super::control::ControlConn;
use super::farms::FarmTable;
use super::ingest::Ingest;
use super::pacing::Pacer;
use super::publish::Publisher;
use super::sub_gaps::SubGaps;
use super::subs::{Limits, SubKey, SubKind, SubscriptionManager};

pub use lookups::LOOKUP_TIMEOUT_NS;
pub use requests::TOO_MANY_CLIENTS;

/// Control clients served at once; more are refused at accept.
pub const MAX_CONTROL_CLIENTS: usize = 64;
/// First request id of subscriptions (clear of order ids).
pub const FIRST_SUB_REQ_ID: i32 = 1000;
/// First request id of contract lookups (clear of subscriptions).
pub const FIRST_LOOKUP_REQ_ID: i32 = 1 << 30;
/// First request id of the contract book's lookups (clear of subscriptions and of the
/// control socket's lookups).
pub const FIRST_RESOLVE_REQ_ID: i32 = 1 << 29;
const SECOND: u64 = 1_000_000_000;
/// The outbound budget's window: IB's one second plus a margin for arrival jitter.
pub const PACING_WINDOW_NS: u64 = SECOND + 50_000_000;
/// Added to IB's same-instrument window (the 15-second rule) for the same reason as the
/// pacing margin: IB measures arrivals, and two requests sent 15 s apart can arrive closer
/// (found by the deterministic simulation, tests/dst.rs, seeds 4 and 18).
pub const TBT_WINDOW_MARGIN_NS: u64 = PACING_WINDOW_NS - SECOND;
/// A connection that stayed up this long resets the reconnect backoff.
const STABLE_NS: u64 = 10 * SECOND;

/// The time of an input: the monotonic clock the session's timers run on (ns from any
/// origin) and the wall clock it stamps records and replies with (Unix ns). A harness
/// passes a virtual clock; the driver reads both clocks once per input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Clock {
    /// Monotonic ns.
    pub mono: u64,
    /// Unix ns.
    pub unix: i64,
}

/// A control client, as the caller numbers it.
pub type ClientId = usize;

/// Engine options beyond the shared settings (quotas of the IB account, timers).
#[derive(Debug, Clone, clap::Args)]
pub struct EngineOptions {
    /// Tick-by-tick subscriptions the IB account allows at once (IB says 10190 beyond).
    #[arg(long, default_value_t = 5)]
    pub tbt_slots: u32,
    /// Market data lines the IB account allows at once (IB says 101 beyond).
    #[arg(long, default_value_t = 100)]
    pub mkt_lines: u32,
    /// IB's rule: ms between two tick-by-tick requests for one instrument.
    #[arg(long, default_value_t = 15_000)]
    pub tbt_same_instrument_ms: u64,
    /// Longest wait in ms between attempts of a tick-by-tick request IB refused with 10190
    /// (the first retry comes one same-instrument window after the request, then doubling).
    #[arg(long, default_value_t = 120_000)]
    pub tbt_retry_cap_ms: u64,
    /// Seconds without a tick before the watchdog probes a subscription (0: off).
    #[arg(long, default_value_t = 60)]
    pub silence_secs: u64,
    /// How often the status region is published, in ms.
    #[arg(long, default_value_t = 100)]
    pub status_ms: u64,
    /// First reconnect delay in ms (doubles per attempt, with jitter).
    #[arg(long, default_value_t = 250)]
    pub backoff_base_ms: u64,
    /// Longest reconnect delay in ms.
    #[arg(long, default_value_t = 30_000)]
    pub backoff_cap_ms: u64,
    /// A host sleep longer than this (ms; the boot clock running ahead of the monotonic
    /// one between two loop turns) makes the engine reconnect at once (0: not watched).
    #[arg(long, default_value_t = 2_000)]
    pub wake_threshold_ms: u64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            tbt_slots: 5,
            mkt_lines: 100,
            tbt_same_instrument_ms: 15_000,
            tbt_retry_cap_ms: 120_000,
            silence_secs: 60,
            status_ms: 100,
            backoff_base_ms: 250,
            backoff_cap_ms: 30_000,
            wake_threshold_ms: 2_000,
        }
    }
}

/// What the caller must do; polled with [`Session::poll_action`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the gateway at this port (the host is the settings'); answer
    /// with [`Session::on_connecting`] or [`Session::on_connect_failed`], then
    /// [`Session::on_connected`] once it is established.
    Connect {
        /// The port.
        port: u16,
    },
    /// Close the IB socket: the session already counts it closed.
    CloseIb,
    /// Shut our sending side of the IB socket (a clean stop wrote every cancel).
    ShutdownIbWrite,
    /// A control client has output ([`Session::control_out`]).
    ControlOut(ClientId),
    /// Close a control client (after writing what is pending); the session forgot it.
    CloseControl(ClientId),
    /// Write the contract store with these entries, then [`Session::on_store_saved`].
    SaveContracts(Vec<StoredContract>),
    /// A control client asked the engine to stop.
    Stop,
    /// IB refused the client id given with [`Session::set_client_id`] (326). The next
    /// connect waits a backoff unless the caller gives another id (its registry's next).
    ClientIdRefused {
        /// The id refused.
        id: i32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// TCP connect in flight.
    Tcp,
    /// Hello sent, waiting for the server's version.
    Ack,
    /// startApi sent, waiting for nextValidId.
    Start,
    /// Session up.
    Ready,
}

#[derive(Debug)]
pub(crate) struct IbConn {
    phase: Phase,
    deadline: u64,
    hs: ClientHandshake,
    out: Vec<u8>,
    port: u16,
    version: u32,
    ready_at: u64,
    accounts: String,
}

#[derive(Debug, Default)]
pub(crate) struct CtlClient {
    conn: ControlConn,
    names: BTreeSet<String>,
}

/// The engine's IB session: subscriptions, contracts, pacing, reconnects, control requests.
#[derive(Debug)]
pub struct Session {
    settings: Settings,
    opts: EngineOptions,
    /// The clock of the input being handled.
    clock: Clock,
    ingest: Ingest,
    other: VecDeque<ServerMsg>,
    conn: Option<IbConn>,
    port_idx: usize,
    client_id_offset: u32,
    /// The id the caller's registry gave ([`Session::set_client_id`]); None: the settings'
    /// fixed id, moved through its range on 326.
    given_client_id: Option<i32>,
    /// Sleeps of the host the caller reported ([`Session::on_wake`]).
    wakes: u64,
    backoff: Backoff,
    next_connect: Option<u64>,
    pacer: Pacer,
    pacing_blocked: bool,
    extra: VecDeque<ClientMsg>,
    /// Unix ns since which data may be missing (a Ready connection dropped).
    down_since: Option<i64>,
    /// Unix ns of the last bytes from IB.
    last_rx: i64,
    /// Unix ns of IB's 1100.
    lost_since: Option<i64>,
    ever_ready: bool,
    lookups: BTreeMap<i32, lookups::Lookup>,
    next_lookup_id: i32,
    /// Every contract data requests need, resolved with IB before the first request.
    book: ContractBook,
    /// The on-disk store of the book (written by the caller).
    store_path: PathBuf,
    /// Unix ns of the store's last successful write by this engine (None: not yet).
    store_written_ns: Option<i64>,
    /// Subscriptions whose data stopped with the session (or 1101) and are not live again.
    sub_gaps: SubGaps,
    clients: BTreeMap<ClientId, CtlClient>,
    next_status: u64,
    next_heartbeat: u64,
    next_watchdog: u64,
    status_dirty: bool,
    /// The engine is stopping: a closing IB socket is expected, not a fault.
    stopping: bool,
    /// IB's data farms as its notices describe them (this session).
    farms: FarmTable,
    /// Ticks published by the inputs since the last [`Session::take_published`].
    published: usize,
    actions: VecDeque<Action>,
    scratch: Vec<u8>,
}

impl Session {
    /// A session publishing to `publisher`, with the contracts of the store at `store_path`
    /// (`stored`, read by the caller) and `seed` for every jitter. The first connect is due
    /// at once ([`Session::on_timeout`]).
    pub fn new(
        settings: Settings,
        opts: EngineOptions,
        publisher: Publisher,
        stored: Vec<StoredContract>,
        store_path: PathBuf,
        seed: u64,
        clock: Clock,
    ) -> Session {
        let limits = Limits {
            tbt_slots: opts.tbt_slots,
            mkt_lines: opts.mkt_lines,
            tbt_same_instrument_ns: match opts.tbt_same_instrument_ms {
                0 => 0,
                ms => ms
                    .saturating_mul(1_000_000)
                    .saturating_add(TBT_WINDOW_MARGIN_NS),
            },
            allow_delayed: settings.allow_delayed,
            tbt_retry_cap_ns: opts.tbt_retry_cap_ms.saturating_mul(1_000_000),
        };
        let mut subs = SubscriptionManager::new(limits, FIRST_SUB_REQ_ID);
        // Two streams from one seed: the retry jitter and the backoff's.
        subs.set_jitter_seed(seed ^ 0x9E37_79B9_7F4A_7C15);
        // IB refuses a data request whose contract is a conId alone (321): every contract is
        // resolved first, from the store at once when it holds it.
        subs.require_contracts();
        let book = ContractBook::new(
            stored,
            FIRST_RESOLVE_REQ_ID,
            FIRST_LOOKUP_REQ_ID - 1,
            contracts::MAX_AGE_NS,
        );
        let mut s = Session {
            backoff: Backoff::new(
                opts.backoff_base_ms.saturating_mul(1_000_000),
                opts.backoff_cap_ms.saturating_mul(1_000_000),
                seed,
            ),
            // A window a little over a second: IB counts arrivals, and bytes written together
            // can arrive closer together than they were sent.
            pacer: Pacer::with_window(settings.max_msgs_per_sec.max(1), PACING_WINDOW_NS),
            opts,
            clock,
            ingest: Ingest::new(
                {
                    let mut p = publisher;
                    p.set_clock(clock.unix);
                    p
                },
                subs,
            ),
            other: VecDeque::with_capacity(64),
            conn: None,
            port_idx: 0,
            client_id_offset: 0,
            given_client_id: None,
            wakes: 0,
            next_connect: Some(clock.mono),
            pacing_blocked: false,
            extra: VecDeque::new(),
            down_since: None,
            last_rx: 0,
            lost_since: None,
            ever_ready: false,
            lookups: BTreeMap::new(),
            next_lookup_id: FIRST_LOOKUP_REQ_ID,
            book,
            store_path,
            store_written_ns: None,
            sub_gaps: SubGaps::default(),
            clients: BTreeMap::new(),
            next_status: clock.mono,
            next_heartbeat: clock.mono + SECOND,
            next_watchdog: clock.mono + SECOND,
            status_dirty: true,
            stopping: false,
            farms: FarmTable::default(),
            published: 0,
            actions: VecDeque::new(),
            scratch: Vec::with_capacity(4096),
            settings,
        };
        let tracked: Vec<(u32, Vec<RecordKind>)> = s
            .settings
            .tracked_contracts
            .iter()
            .map(|t| (t.con_id, t.kinds.clone()))
            .collect();
        for (con_id, kinds) in tracked {
            for k in kinds {
                let kind = match k {
                    RecordKind::TbtLast => SubKind::Last,
                    RecordKind::TbtAllLast => SubKind::AllLast,
                    RecordKind::TbtBidAsk => SubKind::BidAsk,
                    RecordKind::TbtMidPoint => SubKind::MidPoint,
                    _ => SubKind::MktData,
                };
                let key = SubKey { con_id, kind };
                if let Err(e) = s.ingest.subs.subscribe("config", key, clock.mono) {
                    warn!(con_id, kind = kind.name(), "tracked contract refused: {e}");
                    s.ingest.publisher.snap.counters.subscriptions_rejected += 1;
                }
            }
        }
        s.resolve_needs();
        s.drain_sub_events();
        let id = s.client_id();
        s.ingest
            .publisher
            .connection(ConnState::Disconnected, 0, id, 0);
        s
    }

    /// The next thing the caller must do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The ring epoch of this run.
    pub fn epoch(&self) -> u64 {
        self.ingest.publisher.epoch()
    }

    /// The publisher (status snapshot, counters; a test reads the ring through it).
    pub fn publisher(&self) -> &Publisher {
        &self.ingest.publisher
    }

    /// The publisher, for the caller's own measurements (loop latencies) and status.
    pub fn publisher_mut(&mut self) -> &mut Publisher {
        &mut self.ingest.publisher
    }

    /// The subscriptions (read-only).
    pub fn subs(&self) -> &SubscriptionManager {
        &self.ingest.subs
    }

    /// The client id the next (or current) connection uses.
    pub fn client_id(&self) -> i32 {
        self.given_client_id.unwrap_or_else(|| {
            self.settings
                .client_id
                .saturating_add(self.client_id_offset as i32)
        })
    }

    /// Connect with `id` from now on (the caller's client-id registry chose it): at the
    /// next connect, at once when one is waiting for a backoff after
    /// [`Action::ClientIdRefused`], since a new id needs no backoff.
    pub fn set_client_id(&mut self, clock: Clock, id: i32) {
        self.clock = clock;
        let changed = self.given_client_id != Some(id);
        self.given_client_id = Some(id);
        if changed && self.conn.is_none() && !self.stopping && self.next_connect.is_some() {
            self.next_connect = Some(clock.mono);
        }
        self.status_dirty = true;
    }

    /// True once `nextValidId` arrived on the current connection.
    pub fn is_ready(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.phase == Phase::Ready)
    }

    /// True while a connection is open (from [`Action::Connect`] to its close).
    pub fn ib_open(&self) -> bool {
        self.conn.is_some()
    }

    /// Ticks published by the inputs since the last call (for the caller's latency
    /// histogram of receive to publish).
    pub fn take_published(&mut self) -> usize {
        std::mem::take(&mut self.published)
    }

    /// A time of the monotonic clock as Unix ns, at the current input's clock.
    fn mono_to_unix(&self, mono: u64) -> i64 {
        let offset = self.clock.unix - self.clock.mono as i64;
        (mono as i64).saturating_add(offset)
    }
}

/// A state's name in control replies: `Queued` with a retry scheduled is `retrying`.
pub(crate) fn state_name_of(s: SubState, retrying: bool) -> &'static str {
    if retrying && s == SubState::Queued {
        "retrying"
    } else {
        state_name(s)
    }
}

pub(crate) fn state_name(s: SubState) -> &'static str {
    match s {
        SubState::Queued => "queued",
        SubState::Requested => "requested",
        SubState::Active => "active",
        SubState::Rejected => "rejected",
        SubState::Cancelled => "cancelled",
        SubState::Silent => "silent",
        SubState::Delayed => "delayed",
    }
}
