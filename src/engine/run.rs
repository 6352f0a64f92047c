//! `ib-stream engine`: the loop. One thread (pinned when configured), one `mio` poll over
//! the IB socket, the control listener and its clients; timers come from the loop's own
//! deadlines. Busy-poll mode polls with a zero timeout; blocking mode sleeps until the next
//! deadline or event.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::config::Settings;
use crate::ipc::{ConnState, GapReason, IpcError, RecordKind, ShmOptions, SubState};
use crate::tws::{
    ClientHello, ClientMsg, Contract, ContractDetails, FrameReader, MAX_SUPPORTED, MIN_SUPPORTED,
    ServerAck, ServerMsg, codes,
};

use super::backoff::Backoff;
use super::contract_store;
use super::contracts::{self, BookEvent, ContractBook};
use super::control::{self, ControlConn, ControlRequest, RequestError, Verdict};
use super::farms::{self, FarmTable};
use super::ingest::{Ingest, READ_CHUNK};
use super::pacing::Pacer;
use super::publish::{Publisher, unix_ns};
use super::sub_gaps::SubGaps;
use super::subs::{Escalation, Limits, Request, SubKey, SubKind, SubscriptionManager};

const IB: Token = Token(0);
const LISTENER: Token = Token(1);
const FIRST_CLIENT: usize = 2;
/// Control clients served at once; more are refused at accept.
pub const MAX_CONTROL_CLIENTS: usize = 64;
/// First request id of subscriptions (clear of order ids).
pub const FIRST_SUB_REQ_ID: i32 = 1000;
/// First request id of contract lookups (clear of subscriptions).
pub const FIRST_LOOKUP_REQ_ID: i32 = 1 << 30;
/// First request id of the contract book's lookups (clear of subscriptions and of the
/// control socket's lookups).
pub const FIRST_RESOLVE_REQ_ID: i32 = 1 << 29;
const LOOKUP_TIMEOUT_NS: u64 = 15_000_000_000;
/// Socket reads in one turn of the loop before timers and control clients get theirs
/// (16 x 64 KiB: about 20 000 ticks).
pub const MAX_READS_PER_TURN: usize = 16;
const SECOND: u64 = 1_000_000_000;
/// The outbound budget's window: IB's one second plus a margin for arrival jitter.
pub const PACING_WINDOW_NS: u64 = SECOND + 50_000_000;
/// A connection that stayed up this long resets the reconnect backoff.
const STABLE_NS: u64 = 10 * SECOND;
/// On a clean stop: how long the engine spends cancelling at IB (paced) and waiting for IB
/// to close its side, before it closes anyway.
pub const STOP_FLUSH_NS: u64 = 200_000_000;

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
        }
    }
}

/// Why the engine could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Shared memory (ring, strings, status) could not be set up.
    #[error("shared memory: {0}")]
    Ipc(#[from] IpcError),
    /// A socket or the poller failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A setting the engine cannot run with.
    #[error("configuration: {0}")]
    Config(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
    let what = what.into();
    move |source| EngineError::Io { what, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
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
struct IbConn {
    stream: TcpStream,
    phase: Phase,
    deadline: u64,
    hs: Vec<u8>,
    out: Vec<u8>,
    port: u16,
    client_id: i32,
    version: u32,
    ready_at: u64,
    accounts: String,
}

#[derive(Debug)]
struct CtlClient {
    stream: UnixStream,
    conn: ControlConn,
    names: BTreeSet<String>,
}

#[derive(Debug)]
enum LookupFor {
    /// Answer the control client with the details.
    Reply,
    /// Subscribe `client` to `kind` of the contract found.
    Subscribe { client: String, kind: SubKind },
}

#[derive(Debug)]
struct Lookup {
    token: Token,
    id: Option<Value>,
    results: Vec<ContractDetails>,
    deadline: u64,
    purpose: LookupFor,
}

/// The engine: session, subscriptions, publishing, control socket.
#[derive(Debug)]
pub struct Engine {
    settings: Settings,
    opts: EngineOptions,
    poll: Poll,
    ingest: Ingest,
    other: VecDeque<ServerMsg>,
    conn: Option<IbConn>,
    port_idx: usize,
    client_id_offset: u32,
    backoff: Backoff,
    next_connect: Option<u64>,
    pacer: Pacer,
    pacing_blocked: bool,
    /// The IB socket may hold more bytes (the last read turn stopped at its limit).
    ib_pending: bool,
    extra: VecDeque<ClientMsg>,
    /// Unix ns since which data may be missing (a Ready connection dropped).
    down_since: Option<i64>,
    /// Unix ns of the last bytes from IB.
    last_rx: i64,
    /// Unix ns of IB's 1100.
    lost_since: Option<i64>,
    ever_ready: bool,
    lookups: BTreeMap<i32, Lookup>,
    next_lookup_id: i32,
    /// Every contract data requests need, resolved with IB before the first request.
    book: ContractBook,
    /// The on-disk store of the book.
    store_path: PathBuf,
    /// Unix ns of the store's last successful write by this engine (None: not yet).
    store_written_ns: Option<i64>,
    /// Subscriptions whose data stopped with the session (or 1101) and are not live again.
    sub_gaps: SubGaps,
    listener: UnixListener,
    socket_path: PathBuf,
    clients: BTreeMap<Token, CtlClient>,
    next_token: usize,
    start: Instant,
    stop: Arc<AtomicBool>,
    next_status: u64,
    next_heartbeat: u64,
    next_watchdog: u64,
    status_dirty: bool,
    /// The loop has ended: a closing IB socket is expected, not a fault.
    stopping: bool,
    /// IB's data farms as its notices describe them (this session).
    farms: FarmTable,
    scratch: Vec<u8>,
}

/// A state's name in control replies: `Queued` with a retry scheduled is `retrying`.
fn state_name_of(s: SubState, retrying: bool) -> &'static str {
    if retrying && s == SubState::Queued {
        "retrying"
    } else {
        state_name(s)
    }
}

fn state_name(s: SubState) -> &'static str {
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

fn conn_name(s: Option<ConnState>) -> &'static str {
    match s {
        Some(ConnState::Disconnected) => "disconnected",
        Some(ConnState::Connecting) => "connecting",
        Some(ConnState::Connected) => "connected",
        Some(ConnState::IbLost) => "ib_lost",
        Some(ConnState::Backoff) => "backoff",
        None => "unknown",
    }
}

fn details_json(d: &ContractDetails) -> Value {
    let c = &d.contract;
    json!({
        "con_id": c.con_id,
        "symbol": c.symbol,
        "sec_type": c.sec_type,
        "exchange": c.exchange,
        "primary_exchange": c.primary_exchange,
        "currency": c.currency,
        "local_symbol": c.local_symbol,
        "trading_class": c.trading_class,
        "last_trade_date_or_contract_month": c.last_trade_date_or_contract_month,
        "multiplier": c.multiplier,
        "long_name": d.long_name,
        "min_tick": crate::tws::decimal::fixed_to_string(d.min_tick, crate::tws::decimal::PRICE_DIGITS),
        "time_zone_id": d.time_zone_id,
        "valid_exchanges": d.valid_exchanges,
    })
}

impl Engine {
    /// Sets up shared memory, the control socket and the poller. Connects on [`Engine::run`].
    pub fn new(settings: Settings, opts: EngineOptions) -> Result<Engine, EngineError> {
        if settings.ib_ports.is_empty() {
            return Err(EngineError::Config("no IB port configured".into()));
        }
        let capacity = settings.ring_capacity as u64;
        let publisher = Publisher::create(&settings.shm_dir, capacity, &ShmOptions::default())?;
        let limits = Limits {
            tbt_slots: opts.tbt_slots,
            mkt_lines: opts.mkt_lines,
            tbt_same_instrument_ns: opts.tbt_same_instrument_ms.saturating_mul(1_000_000),
            allow_delayed: settings.allow_delayed,
            tbt_retry_cap_ns: opts.tbt_retry_cap_ms.saturating_mul(1_000_000),
        };
        let mut subs = SubscriptionManager::new(limits, FIRST_SUB_REQ_ID);
        subs.set_jitter_seed(crate::ipc::shm::random_u64());
        // IB refuses a data request whose contract is a conId alone (321): every contract is
        // resolved first, from the store at once when it holds it.
        subs.require_contracts();
        let store_path = contract_store::store_path(&settings.storage_path);
        let stored = contract_store::load(&store_path);
        info!(path = %store_path.display(), contracts = stored.len(), "contract store loaded");
        let book = ContractBook::new(
            stored,
            FIRST_RESOLVE_REQ_ID,
            FIRST_LOOKUP_REQ_ID - 1,
            contracts::MAX_AGE_NS,
        );
        let poll = Poll::new().map_err(io_err("create the poller"))?;
        // The ring's writer lock is ours, so a socket file left here belongs to a dead engine.
        let socket_path = settings.control_socket();
        match std::fs::remove_file(&socket_path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io_err(format!("remove {}", socket_path.display()))(e));
            }
        }
        let mut listener = UnixListener::bind(&socket_path)
            .map_err(io_err(format!("bind {}", socket_path.display())))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))
                .map_err(io_err(format!("chmod {}", socket_path.display())))?;
        }
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(io_err("register the control socket"))?;
        let seed = crate::ipc::shm::random_u64();
        let mut engine = Engine {
            backoff: Backoff::new(
                opts.backoff_base_ms.saturating_mul(1_000_000),
                opts.backoff_cap_ms.saturating_mul(1_000_000),
                seed,
            ),
            // A window a little over a second: IB counts arrivals, and bytes written together
            // can arrive closer together than they were sent.
            pacer: Pacer::with_window(settings.max_msgs_per_sec.max(1), PACING_WINDOW_NS),
            settings,
            opts,
            poll,
            ingest: Ingest::new(publisher, subs),
            other: VecDeque::with_capacity(64),
            conn: None,
            port_idx: 0,
            client_id_offset: 0,
            next_connect: Some(0),
            pacing_blocked: false,
            ib_pending: false,
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
            listener,
            socket_path,
            clients: BTreeMap::new(),
            next_token: FIRST_CLIENT,
            start: Instant::now(),
            stop: Arc::new(AtomicBool::new(false)),
            next_status: 0,
            next_heartbeat: SECOND,
            next_watchdog: SECOND,
            status_dirty: true,
            stopping: false,
            farms: FarmTable::default(),
            scratch: Vec::with_capacity(4096),
        };
        let tracked: Vec<(u32, Vec<RecordKind>)> = engine
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
                if let Err(e) = engine.ingest.subs.subscribe("config", key, 0) {
                    warn!(con_id, kind = kind.name(), "tracked contract refused: {e}");
                    engine.ingest.publisher.snap.counters.subscriptions_rejected += 1;
                }
            }
        }
        engine.resolve_needs(0);
        engine.drain_sub_events();
        engine
            .ingest
            .publisher
            .connection(ConnState::Disconnected, 0, engine.client_id(), 0);
        Ok(engine)
    }

    /// A flag that stops the loop when set (signal handlers set it).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The ring epoch of this run.
    pub fn epoch(&self) -> u64 {
        self.ingest.publisher.epoch()
    }

    fn client_id(&self) -> i32 {
        self.settings
            .client_id
            .saturating_add(self.client_id_offset as i32)
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Runs until the stop flag is set.
    pub fn run(&mut self) -> Result<(), EngineError> {
        let mut events = Events::with_capacity(256);
        let status_every = self.opts.status_ms.max(1) * 1_000_000;
        info!(
            epoch = format_args!("{:016x}", self.epoch()),
            dir = %self.settings.shm_dir.display(),
            busy_poll = self.settings.busy_poll,
            "engine started"
        );
        while !self.stop.load(Ordering::Relaxed) {
            let iter_start = self.now();
            self.timers(iter_start, status_every);
            self.pump(iter_start);
            let timeout = if self.settings.busy_poll || self.ib_pending {
                Duration::ZERO
            } else {
                let deadline = self.next_deadline(iter_start);
                Duration::from_nanos(deadline.saturating_sub(iter_start).min(100_000_000))
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("poll")(e)),
            }
            let had_events = !events.is_empty() || self.ib_pending;
            let work_start = self.now();
            let mut ib_seen = false;
            for ev in events.iter() {
                match ev.token() {
                    IB => {
                        ib_seen = true;
                        self.on_ib_event(ev.is_readable(), ev.is_writable());
                    }
                    LISTENER => self.accept_clients(),
                    t => self.on_client_event(t, ev.is_readable()),
                }
            }
            // Edge-triggered: bytes left unread last turn raise no new event.
            if self.ib_pending && !ib_seen {
                let now = self.now();
                self.read_ib(now);
            }
            let snap = &mut self.ingest.publisher.snap;
            snap.counters.loop_iterations += 1;
            if had_events {
                let spent = self.now().saturating_sub(work_start);
                self.ingest
                    .publisher
                    .snap
                    .latencies
                    .loop_iteration
                    .record(spent);
            }
        }
        info!("engine stopping");
        self.shutdown();
        Ok(())
    }

    fn shutdown(&mut self) {
        self.stopping = true;
        self.cancel_at_ib();
        if let Some(mut c) = self.conn.take() {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
        let id = self.client_id();
        self.ingest
            .publisher
            .connection(ConnState::Disconnected, 0, id, 0);
        self.ingest.publisher.publish_status();
        let _ = std::fs::remove_file(&self.socket_path);
    }

    /// A clean stop: cancels every subscription at IB through the outbound pacer, closes our
    /// sending side once all are written, and reads on (publishing what still arrives) until
    /// IB closes its side, which it does after it has read every cancel. All of it within
    /// [`STOP_FLUSH_NS`]; what is left then is given up (IB drops a closed client's
    /// subscriptions anyway; the cancels spare its limits and the next session's).
    fn cancel_at_ib(&mut self) {
        if !self.conn.as_ref().is_some_and(|c| c.phase == Phase::Ready) {
            return;
        }
        let queued = self.ingest.subs.cancel_all();
        self.extra.clear();
        self.drain_sub_events();
        let start = self.now();
        let deadline = start + STOP_FLUSH_NS;
        let mut events = Events::with_capacity(16);
        let mut half_closed = false;
        loop {
            let now = self.now();
            if self.conn.is_none() {
                break;
            }
            if !half_closed {
                self.pump(now);
                let written = self.conn.as_ref().is_some_and(|c| c.out.is_empty());
                if self.ingest.subs.queued() == 0
                    && written
                    && let Some(c) = &self.conn
                {
                    let _ = c.stream.shutdown(Shutdown::Write);
                    half_closed = true;
                }
            }
            if now >= deadline {
                break;
            }
            if self.ib_pending {
                self.read_ib(now);
                continue;
            }
            let mut wait = deadline - now;
            if !half_closed && self.ingest.subs.queued() > 0 {
                wait = wait.min(self.pacer.next_slot(now).saturating_sub(now).max(1));
            }
            match self
                .poll
                .poll(&mut events, Some(Duration::from_nanos(wait)))
            {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("poll during the stop: {e}");
                    break;
                }
            }
            let now = self.now();
            for ev in events.iter() {
                if ev.token() == IB {
                    if ev.is_writable() {
                        self.flush_ib(now);
                    }
                    if ev.is_readable() || ev.is_read_closed() {
                        self.read_ib(now);
                    }
                }
            }
        }
        let left = self.ingest.subs.queued();
        let closed_by_ib = self.conn.is_none();
        info!(
            sent = queued - left.min(queued),
            left,
            closed_by_ib,
            ms = (self.now() - start) / 1_000_000,
            "cancelled the subscriptions at IB"
        );
    }

    fn next_deadline(&self, now: u64) -> u64 {
        let mut d = self.next_status.min(self.next_heartbeat);
        if self.opts.silence_secs > 0 {
            d = d.min(self.next_watchdog);
        }
        if let Some(t) = self.next_connect {
            d = d.min(t);
        }
        if let Some(c) = &self.conn {
            if c.phase != Phase::Ready {
                d = d.min(c.deadline);
            } else {
                if let Some(t) = self.ingest.subs.next_deadline(now) {
                    d = d.min(if self.pacer.can_send(now) {
                        t
                    } else {
                        self.pacer.next_slot(now)
                    });
                }
                if !self.extra.is_empty() {
                    d = d.min(self.pacer.next_slot(now));
                }
            }
        }
        if let Some(l) = self.lookups.values().map(|l| l.deadline).min() {
            d = d.min(l);
        }
        let ready = self.conn.as_ref().is_some_and(|c| c.phase == Phase::Ready);
        if let Some(t) = self.book.next_deadline(ready) {
            d = d.min(if ready && t <= now {
                self.pacer.next_slot(now)
            } else {
                t
            });
        }
        d.max(now)
    }

    fn timers(&mut self, now: u64, status_every: u64) {
        if self.next_connect.is_some_and(|t| now >= t) {
            self.next_connect = None;
            self.connect(now);
        }
        if let Some(c) = &self.conn {
            if c.phase != Phase::Ready && now >= c.deadline {
                let what = match c.phase {
                    Phase::Tcp => "TCP connect timed out",
                    _ => "handshake timed out",
                };
                self.disconnect(what, now, false);
            } else if c.phase == Phase::Ready
                && self.backoff.attempts() > 0
                && now.saturating_sub(c.ready_at) >= STABLE_NS
            {
                self.backoff.reset();
            }
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + SECOND;
            self.ingest.publisher.heartbeat_record();
            self.book.expire(now);
            self.book.refresh_due(now, unix_ns());
        }
        if self.opts.silence_secs > 0 && now >= self.next_watchdog {
            self.next_watchdog = now + SECOND;
            self.watchdog(now);
        }
        if !self.lookups.is_empty() {
            let expired: Vec<i32> = self
                .lookups
                .iter()
                .filter(|(_, l)| now >= l.deadline)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                self.fail_lookup(
                    id,
                    "timeout",
                    "IB did not answer the contract lookup in 15 s",
                );
            }
        }
        if now >= self.next_status || self.status_dirty {
            self.next_status = now + status_every;
            self.status_dirty = false;
            self.refresh_status();
            self.ingest.publisher.publish_status();
        }
    }

    fn refresh_status(&mut self) {
        let offset = unix_ns() - self.now() as i64;
        let p = &mut self.ingest.publisher;
        for (key, ticks, last_mono) in self.ingest.subs.tick_stats() {
            if let Some(s) = p
                .snap
                .find_subscription_mut(key.con_id, key.kind.record_kind())
            {
                s.ticks = ticks;
                s.last_tick_ns = if ticks > 0 {
                    last_mono as i64 + offset
                } else {
                    0
                };
            }
        }
        p.snap.engine.client_id = self.settings.client_id + self.client_id_offset as i32;
        p.snap.set_farms(self.farms.farms());
        // IB does not say which contracts a farm serves: while any market data farm is
        // broken, every subscription's data may be stale.
        let flag = if self.farms.market_data_broken() {
            crate::ipc::data_flags::FARM_BROKEN
        } else {
            0
        };
        p.snap.engine.data_flags = flag;
        for s in p.snap.subscriptions_mut() {
            s.flags = (s.flags & !crate::ipc::data_flags::FARM_BROKEN) | flag;
        }
    }

    fn watchdog(&mut self, now: u64) {
        let silence = self.opts.silence_secs.saturating_mul(SECOND);
        match self.ingest.subs.check_silence(now, silence) {
            None => {}
            Some(Escalation::Probe) => {
                info!("watchdog: a subscription went silent; probing IB with reqCurrentTime");
                self.extra.push_back(ClientMsg::ReqCurrentTime);
            }
            Some(Escalation::Resubscribe) => {
                warn!("watchdog: still silent after the probe; resubscribing");
            }
            Some(Escalation::Reconnect) => {
                warn!("watchdog: still silent after resubscribing; reconnecting");
                self.disconnect("watchdog: subscriptions silent", now, false);
            }
        }
        self.drain_sub_events();
    }

    // ---- IB session -------------------------------------------------------------------

    fn connect(&mut self, now: u64) {
        let port = self.settings.ib_ports[self.port_idx % self.settings.ib_ports.len()];
        let client_id = self.client_id();
        let addr: Option<SocketAddr> = (self.settings.ib_host.as_str(), port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next());
        let Some(addr) = addr else {
            warn!(host = %self.settings.ib_host, port, "cannot resolve the IB host");
            self.connect_failed(now);
            return;
        };
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                debug!(%addr, "connect failed: {e}");
                self.connect_failed(now);
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut stream, IB, Interest::READABLE | Interest::WRITABLE)
        {
            warn!("register the IB socket: {e}");
            self.connect_failed(now);
            return;
        }
        debug!(%addr, client_id, "connecting");
        self.ingest
            .publisher
            .connection(ConnState::Connecting, 0, client_id, 0);
        self.conn = Some(IbConn {
            stream,
            phase: Phase::Tcp,
            deadline: now + self.settings.connect_timeout.as_nanos() as u64,
            hs: Vec::new(),
            out: Vec::new(),
            port,
            client_id,
            version: 0,
            ready_at: 0,
            accounts: String::new(),
        });
    }

    /// A connect attempt failed before the session was up: try the next port, and back
    /// off once every port has been tried.
    fn connect_failed(&mut self, now: u64) {
        self.port_idx += 1;
        let delay = if self.port_idx.is_multiple_of(self.settings.ib_ports.len()) {
            self.backoff.next_delay()
        } else {
            0
        };
        self.schedule_connect(now, delay);
    }

    fn schedule_connect(&mut self, now: u64, delay: u64) {
        self.next_connect = Some(now + delay);
        if delay > 0 {
            let id = self.client_id();
            self.ingest
                .publisher
                .connection(ConnState::Backoff, 0, id, 0);
        }
        self.status_dirty = true;
    }

    fn disconnect(&mut self, why: &str, now: u64, immediate: bool) {
        let Some(mut c) = self.conn.take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.stream);
        self.ib_pending = false;
        let was_ready = c.phase == Phase::Ready;
        if self.stopping {
            info!(port = c.port, "IB connection closed during the stop: {why}");
        } else {
            warn!(
                port = c.port,
                client_id = c.client_id,
                "IB connection closed: {why}"
            );
        }
        self.ingest.publisher.flush();
        if was_ready {
            if self.down_since.is_none() {
                self.down_since = Some(if self.last_rx > 0 {
                    self.last_rx
                } else {
                    unix_ns()
                });
            }
            self.open_sub_gaps(GapReason::Disconnected, self.down_since.unwrap_or(0));
            self.ingest.subs.on_subscriptions_lost(false);
            self.ingest.subs.set_stale(false);
            self.lost_since = None;
            self.drain_sub_events();
        }
        self.ingest.reader = FrameReader::with_capacity(4 * READ_CHUNK);
        self.extra.clear();
        // Farm states belong to the session; the next one reports them afresh.
        self.farms.clear();
        self.status_dirty = true;
        self.book.on_disconnect(now);
        let pending: Vec<i32> = self.lookups.keys().copied().collect();
        for id in pending {
            self.fail_lookup(
                id,
                "disconnected",
                "the IB connection closed during the lookup",
            );
        }
        self.ingest
            .publisher
            .connection(ConnState::Disconnected, c.version, c.client_id, 0);
        if immediate {
            self.schedule_connect(now, 0);
        } else if was_ready {
            let d = self.backoff.next_delay();
            self.schedule_connect(now, d);
        } else {
            self.connect_failed(now);
        }
    }

    fn on_ib_event(&mut self, readable: bool, writable: bool) {
        let now = self.now();
        let Some(c) = self.conn.as_mut() else { return };
        if c.phase == Phase::Tcp {
            match c.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    let why = format!("connect: {e}");
                    self.disconnect(&why, now, false);
                    return;
                }
            }
            match c.stream.peer_addr() {
                Ok(_) => {
                    let mut hello = ClientHello::new(MIN_SUPPORTED, MAX_SUPPORTED);
                    if self.settings.pace_api {
                        hello.options = "+PACEAPI".into();
                    }
                    hello.encode(&mut c.out);
                    c.phase = Phase::Ack;
                }
                Err(e) if e.kind() == ErrorKind::NotConnected => return,
                Err(e) => {
                    let why = format!("connect: {e}");
                    self.disconnect(&why, now, false);
                    return;
                }
            }
        }
        if writable || !self.conn.as_ref().is_some_and(|c| c.out.is_empty()) {
            self.flush_ib(now);
        }
        if readable {
            self.read_ib(now);
        }
    }

    fn flush_ib(&mut self, now: u64) {
        let Some(c) = self.conn.as_mut() else { return };
        let mut written = 0;
        let mut failed = None;
        while written < c.out.len() {
            match c.stream.write(&c.out[written..]) {
                Ok(0) => {
                    failed = Some("write returned 0".to_string());
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(format!("write: {e}"));
                    break;
                }
            }
        }
        c.out.drain(..written);
        if let Some(why) = failed {
            self.disconnect(&why, now, false);
        }
    }

    /// Reads until the socket is drained or [`MAX_READS_PER_TURN`] reads were made; in the
    /// latter case the loop comes back at once (`ib_pending`), after its timers and the
    /// control clients had their turn: a stream faster than we read must not starve them.
    fn read_ib(&mut self, now: u64) {
        self.ib_pending = false;
        let mut reads = 0;
        loop {
            if reads == MAX_READS_PER_TURN {
                self.ib_pending = true;
                return;
            }
            reads += 1;
            let Some(c) = self.conn.as_mut() else { return };
            let res = if c.phase == Phase::Ack {
                let mut buf = [0u8; 512];
                match c.stream.read(&mut buf) {
                    Ok(n) => {
                        c.hs.extend_from_slice(&buf[..n]);
                        Ok(n)
                    }
                    Err(e) => Err(e),
                }
            } else {
                let spare = self.ingest.reader.spare(READ_CHUNK);
                c.stream.read(spare)
            };
            match res {
                Ok(0) => {
                    self.disconnect("closed by the gateway", now, false);
                    return;
                }
                Ok(n) => {
                    let ts_recv = unix_ns();
                    self.last_rx = ts_recv;
                    let counters = &mut self.ingest.publisher.snap.counters;
                    counters.bytes_read += n as u64;
                    counters.socket_reads += 1;
                    let phase = c.phase;
                    if phase == Phase::Ack {
                        if !self.on_handshake_bytes(now) {
                            return;
                        }
                        continue;
                    }
                    self.ingest.reader.commit(n);
                    if !self.process_frames(ts_recv, now) {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = format!("read: {e}");
                    self.disconnect(&why, now, false);
                    return;
                }
            }
        }
    }

    /// Returns false when the connection was closed.
    fn on_handshake_bytes(&mut self, now: u64) -> bool {
        let Some(c) = self.conn.as_mut() else {
            return false;
        };
        match ServerAck::parse(&c.hs) {
            Ok(None) => true,
            Ok(Some((ack, used))) => {
                c.version = ack.version;
                self.ingest.version = ack.version;
                self.ingest.reader = FrameReader::with_capacity(4 * READ_CHUNK);
                self.ingest.reader.feed(&c.hs[used..]);
                c.hs = Vec::new();
                info!(
                    version = ack.version,
                    time = %ack.time,
                    port = c.port,
                    "handshake done; starting the API"
                );
                let start = ClientMsg::StartApi {
                    client_id: c.client_id,
                    optional_capabilities: String::new(),
                };
                if let Err(e) = start.encode(ack.version, &mut c.out) {
                    let why = format!("startApi: {e}");
                    self.disconnect(&why, now, false);
                    return false;
                }
                c.phase = Phase::Start;
                self.ingest.publisher.snap.engine.server_version = ack.version;
                self.flush_ib(now);
                let ts = unix_ns();
                self.process_frames(ts, now)
            }
            Err(e) => {
                let why = format!("handshake: {e}");
                self.disconnect(&why, now, false);
                false
            }
        }
    }

    /// Decodes what is buffered; returns false when the connection was closed.
    fn process_frames(&mut self, ts_recv: i64, now: u64) -> bool {
        let res = self.ingest.process(ts_recv, now, &mut self.other);
        let n = self.ingest.publisher.flush();
        if n > 0 {
            let spent = (unix_ns() - ts_recv).max(0) as u64;
            self.ingest
                .publisher
                .snap
                .latencies
                .recv_to_publish
                .record_n(spent, n as u64);
        }
        if let Err(e) = res {
            let why = format!("bad frame: {e}");
            self.disconnect(&why, now, false);
            return false;
        }
        if let Some(e) = self.ingest.last_decode_error.take() {
            warn!("undecodable frame skipped: {e}");
        }
        while let Some(m) = self.other.pop_front() {
            self.on_message(m, now);
            if self.conn.is_none() {
                self.other.clear();
                return false;
            }
        }
        if self.ingest.subs_events_pending() {
            self.drain_sub_events();
        }
        true
    }

    fn on_message(&mut self, m: ServerMsg, now: u64) {
        match m {
            ServerMsg::NextValidId { .. }
                if self.conn.as_ref().is_some_and(|c| c.phase == Phase::Start) =>
            {
                self.on_ready(now);
            }
            ServerMsg::ManagedAccounts { accounts } => {
                if let Some(c) = self.conn.as_mut() {
                    c.accounts = accounts;
                }
            }
            ServerMsg::Error {
                req_id,
                code,
                message,
                ..
            } => self.on_ib_error(req_id, code, &message, now),
            ServerMsg::MarketDataType {
                req_id,
                market_data_type,
            } => {
                self.ingest
                    .subs
                    .on_market_data_type(req_id, market_data_type);
            }
            ServerMsg::ContractData { req_id, details } => {
                if self.book.on_details(req_id, &details.contract) {
                } else if let Some(l) = self.lookups.get_mut(&req_id) {
                    l.results.push(*details);
                }
            }
            ServerMsg::ContractDataEnd { req_id } => {
                if self.book.on_end(req_id, unix_ns()) {
                    self.apply_book_events();
                } else {
                    self.finish_lookup(req_id, now);
                }
            }
            ServerMsg::CurrentTime { time } => {
                info!(time, "IB answered the watchdog's probe");
            }
            _ => {}
        }
    }

    fn on_ready(&mut self, now: u64) {
        let Some(c) = self.conn.as_mut() else { return };
        c.phase = Phase::Ready;
        c.ready_at = now;
        let (version, client_id, port) = (c.version, c.client_id, c.port);
        let ts = unix_ns();
        info!(version, client_id, port, accounts = %c.accounts, "IB session up");
        let p = &mut self.ingest.publisher;
        p.snap.engine.connected_since_ns = ts;
        p.snap.engine.server_version = version;
        p.snap.engine.client_id = client_id;
        if self.ever_ready {
            p.snap.counters.reconnects += 1;
        }
        self.ever_ready = true;
        p.connection(ConnState::Connected, version, client_id, 0);
        if let Some(from) = self.down_since.take() {
            info!(
                from,
                to = ts,
                "writing a gap record for the time the session was down"
            );
            p.gap(GapReason::Disconnected, from, ts);
        }
        // Remember the working port: the next reconnect tries it first.
        self.port_idx %= self.settings.ib_ports.len();
        self.ingest.subs.on_connected();
        self.status_dirty = true;
        self.pump(now);
    }

    fn on_ib_error(&mut self, req_id: i32, code: i32, message: &str, now: u64) {
        let ts = unix_ns();
        {
            // Notices (farm status 2104/2106/2158, ...) are counted, not shown as errors.
            let snap = &mut self.ingest.publisher.snap;
            snap.counters.ib_errors += 1;
            if !codes::is_warning(code) {
                snap.engine.last_error_code = code;
                snap.engine.last_error_ns = ts;
            }
        }
        self.status_dirty = true;
        let (version, client_id) = self
            .conn
            .as_ref()
            .map_or((0, self.client_id()), |c| (c.version, c.client_id));
        match code {
            codes::CLIENT_ID_IN_USE => {
                let range = self.settings.client_id_range;
                self.client_id_offset = (self.client_id_offset + 1) % (range + 1);
                warn!(
                    client_id,
                    next = self.client_id(),
                    "IB says client id {client_id} is in use (326); trying the next one"
                );
                self.disconnect("client id in use (326)", now, true);
            }
            codes::CONNECTIVITY_LOST => {
                warn!("IB lost connectivity to its servers (1100): data is stale");
                self.lost_since = Some(self.last_rx.min(ts));
                self.ingest.subs.set_stale(true);
                self.ingest
                    .publisher
                    .connection(ConnState::IbLost, version, client_id, code);
            }
            codes::CONNECTIVITY_RESTORED_DATA_LOST => {
                warn!("IB connectivity restored, data lost (1101): resubscribing everything");
                let from = self.lost_since.take().unwrap_or(ts);
                self.open_sub_gaps(GapReason::IbConnectivity, from);
                self.ingest.subs.set_stale(false);
                self.ingest.subs.on_subscriptions_lost(true);
                self.ingest
                    .publisher
                    .connection(ConnState::Connected, version, client_id, code);
                self.ingest
                    .publisher
                    .gap(GapReason::IbConnectivity, from, ts);
                self.drain_sub_events();
                self.pump(now);
            }
            codes::CONNECTIVITY_RESTORED_DATA_MAINTAINED => {
                info!("IB connectivity restored, data maintained (1102)");
                self.ingest.subs.set_stale(false);
                self.lost_since = None;
                self.ingest
                    .publisher
                    .connection(ConnState::Connected, version, client_id, code);
            }
            codes::PACING => {
                warn!(req_id, "IB says we sent too fast (100): {message}");
            }
            _ if req_id < 0 && farms::classify(code).is_some() => {
                self.on_farm_notice(code, message, ts);
            }
            _ if self.book.owns(req_id) => {
                warn!(req_id, code, "IB refused a contract lookup: {message}");
                self.book.on_error(req_id, code, message, now);
                self.apply_book_events();
            }
            _ if req_id >= FIRST_LOOKUP_REQ_ID && self.lookups.contains_key(&req_id) => {
                if let Some(l) = self.lookups.remove(&req_id) {
                    self.scratch.clear();
                    control::ib_error_reply(&l.id, code, message, &mut self.scratch);
                    self.send_to_client(l.token);
                }
            }
            _ if req_id >= 0 => match self.ingest.subs.on_error(req_id, code) {
                super::subs::ErrorRoute::Subscription(key, state) => {
                    info!(
                        req_id,
                        code,
                        con_id = key.con_id,
                        kind = key.kind.name(),
                        state = state_name(state),
                        "IB: {message}"
                    );
                    if state == SubState::Rejected {
                        self.ingest.publisher.snap.counters.subscriptions_rejected += 1;
                    }
                    self.drain_sub_events();
                    self.pump(now);
                }
                super::subs::ErrorRoute::Unrouted => {
                    if codes::is_warning(code) {
                        info!(req_id, code, "IB notice: {message}");
                    } else {
                        warn!(req_id, code, "IB error for no subscription: {message}");
                    }
                }
            },
            // Session-wide notices and errors.
            _ => {
                if codes::is_warning(code) {
                    info!(code, "IB notice: {message}");
                } else {
                    warn!(code, "IB error: {message}");
                }
            }
        }
    }

    /// A farm notice: the farm table changes; a broken farm is also the last error. A
    /// broken market data farm marks the data possibly stale in status until it is OK.
    fn on_farm_notice(&mut self, code: i32, message: &str, ts: i64) {
        let Some(n) = farms::parse(code, message) else {
            return;
        };
        let was_broken = self.farms.market_data_broken();
        if self.farms.apply(&n, ts) {
            self.status_dirty = true;
        }
        if n.state == crate::ipc::FarmState::Broken {
            let snap = &mut self.ingest.publisher.snap;
            snap.engine.last_error_code = code;
            snap.engine.last_error_ns = ts;
            warn!(code, farm = %n.name, kind = n.kind.name(), "IB farm down: {message}");
        } else {
            info!(code, farm = %n.name, kind = n.kind.name(), state = n.state.name(), "IB farm: {message}");
        }
        match (was_broken, self.farms.market_data_broken()) {
            (false, true) => warn!("a market data farm is broken: data may be stale"),
            (true, false) => info!("no market data farm is broken any more"),
            _ => {}
        }
    }

    /// A time of the loop's monotonic clock as ns since the Unix epoch.
    fn mono_to_unix(&self, mono: u64) -> i64 {
        let offset = unix_ns() - self.now() as i64;
        (mono as i64).saturating_add(offset)
    }

    /// Every subscription with a request out at IB loses it now: its data stopped at `from`.
    fn open_sub_gaps(&mut self, reason: GapReason, from: i64) {
        let out: Vec<SubKey> = self
            .ingest
            .subs
            .list()
            .filter(|s| s.req_id != 0)
            .map(|s| s.key)
            .collect();
        self.sub_gaps.lost(out, reason, from);
    }

    fn drain_sub_events(&mut self) {
        while let Some(ev) = self.ingest.subs.poll_event() {
            if let Some((con_id, reason, from, to)) =
                self.sub_gaps.on_state(ev.key, ev.state, unix_ns())
            {
                debug!(
                    con_id,
                    kind = ev.key.kind.name(),
                    from,
                    to,
                    "the subscription is live again: writing its gap"
                );
                self.ingest.publisher.gap_for(con_id, reason, from, to);
            }
            let next_attempt = ev.retry.map(|r| self.mono_to_unix(r.next_ns));
            debug!(
                con_id = ev.key.con_id,
                kind = ev.key.kind.name(),
                state = state_name_of(ev.state, ev.retry.is_some()),
                code = ev.code,
                req_id = ev.req_id,
                "subscription"
            );
            if let (Some(r), Some(at)) = (ev.retry, next_attempt) {
                warn!(
                    con_id = ev.key.con_id,
                    kind = ev.key.kind.name(),
                    code = ev.code,
                    refusals = r.refusals,
                    in_ms = (at - unix_ns()).max(0) / 1_000_000,
                    "IB refused the request; retrying"
                );
            }
            self.ingest.publisher.subscription(
                ev.key.con_id,
                ev.key.kind.record_kind(),
                ev.state,
                ev.code,
                ev.req_id,
                ev.market_data_type,
                next_attempt,
            );
            self.status_dirty = true;
        }
    }

    /// Hands the conIds new subscriptions need to the contract book, and acts on what the
    /// book says.
    fn resolve_needs(&mut self, now: u64) {
        let mut asked = false;
        while let Some(con_id) = self.ingest.subs.take_contract_need() {
            self.book.want(con_id, now, unix_ns());
            asked = true;
        }
        if asked {
            self.apply_book_events();
        }
    }

    /// Ready contracts release their subscriptions' requests; a changed one is logged and
    /// kept in the store; an unresolvable one rejects its subscriptions (records with IB's
    /// code). The store is rewritten when it changed.
    fn apply_book_events(&mut self) {
        while let Some(ev) = self.book.poll_event() {
            match ev {
                BookEvent::Ready(con_id) => self.ingest.subs.contract_ready(con_id),
                BookEvent::Changed { con_id, fields } => {
                    warn!(
                        con_id,
                        changes = %fields.join("; "),
                        "IB's contract changed since it was stored; requests use the new one"
                    );
                }
                BookEvent::Unresolvable {
                    con_id,
                    code,
                    message,
                } => {
                    let n = self.ingest.subs.contract_unresolvable(con_id, code);
                    warn!(
                        con_id,
                        code,
                        rejected = n,
                        "IB cannot resolve the contract; its subscriptions are rejected: {message}"
                    );
                    self.ingest.publisher.snap.counters.subscriptions_rejected += n as u64;
                }
            }
        }
        self.drain_sub_events();
        if let Some(all) = self.book.take_dirty() {
            match contract_store::save(&self.store_path, &all) {
                Ok(()) => self.store_written_ns = Some(unix_ns()),
                Err(e) => {
                    warn!("cannot write the contract store (contracts stay in memory): {e}")
                }
            }
        }
    }

    /// Sends what is queued as far as the outbound budget allows.
    fn pump(&mut self, now: u64) {
        self.resolve_needs(now);
        if !self.conn.as_ref().is_some_and(|c| c.phase == Phase::Ready) {
            return;
        }
        let mut sent = false;
        loop {
            let has_work = !self.extra.is_empty()
                || self.book.has_due_lookup(now)
                || self
                    .ingest
                    .subs
                    .next_deadline(now)
                    .is_some_and(|t| t <= now);
            if !has_work {
                self.pacing_blocked = false;
                break;
            }
            // The clock now, not the loop's: a stale time would let the window slide early.
            let t = self.now();
            if !self.pacer.can_send(t) {
                if !self.pacing_blocked {
                    self.pacing_blocked = true;
                    self.ingest.publisher.snap.counters.pacing_delays += 1;
                }
                break;
            }
            let msg = if let Some(m) = self.extra.pop_front() {
                m
            } else if let Some((req_id, contract)) = self.book.next_lookup(t) {
                ClientMsg::ReqContractDetails { req_id, contract }
            } else {
                // The send time, not the loop's: the 15-second rule is kept from it.
                match self.ingest.subs.next_request(t) {
                    Some(r) => match self.request_msg(r) {
                        Some(m) => m,
                        None => continue,
                    },
                    None => break,
                }
            };
            let Some(c) = self.conn.as_mut() else { return };
            if let Err(e) = msg.encode(c.version, &mut c.out) {
                warn!("cannot encode {msg:?}: {e}");
                continue;
            }
            self.pacer.try_send(t);
            self.ingest.publisher.snap.counters.messages_sent += 1;
            sent = true;
        }
        self.drain_sub_events();
        if sent {
            self.flush_ib(now);
        }
    }

    /// The message for a request; `None` (and the subscription rejected) in the one case
    /// that cannot be sent: no resolved contract, which the manager's gate rules out.
    fn request_msg(&mut self, r: Request) -> Option<ClientMsg> {
        Some(match r {
            Request::MktData { req_id, con_id } => ClientMsg::ReqMktData {
                req_id,
                contract: self.resolved_or_reject(req_id, con_id)?,
                generic_tick_list: String::new(),
                snapshot: false,
                regulatory_snapshot: false,
            },
            Request::CancelMktData { req_id } => ClientMsg::CancelMktData { req_id },
            Request::TickByTick {
                req_id,
                con_id,
                kind,
            } => ClientMsg::ReqTickByTick {
                req_id,
                contract: self.resolved_or_reject(req_id, con_id)?,
                tick_type: kind.ib_name().into(),
                number_of_ticks: 0,
                ignore_size: false,
            },
            Request::CancelTickByTick { req_id } => ClientMsg::CancelTickByTick { req_id },
            Request::MarketDataType(t) => ClientMsg::ReqMarketDataType {
                market_data_type: t,
            },
        })
    }

    /// Never a conId-only request: without a resolved contract the subscription is rejected
    /// as IB would reject it (321).
    fn resolved_or_reject(&mut self, req_id: i32, con_id: u32) -> Option<Contract> {
        let c = self.book.contract(con_id);
        if c.is_none() {
            warn!(
                req_id,
                con_id,
                "no resolved contract for a data request; rejecting it instead of sending a conId alone"
            );
            self.ingest.subs.on_error(req_id, codes::INVALID_REQUEST);
        }
        c
    }

    // ---- contract lookups ---------------------------------------------------------------

    fn start_lookup(
        &mut self,
        token: Token,
        id: Option<Value>,
        q: &control::ContractQuery,
        purpose: LookupFor,
    ) -> Result<(), RequestError> {
        if !self.conn.as_ref().is_some_and(|c| c.phase == Phase::Ready) {
            return Err(RequestError {
                id,
                code: "not_connected",
                message: "the engine is not connected to IB; try again later".into(),
            });
        }
        if self.lookups.len() >= 64 {
            return Err(RequestError {
                id,
                code: "busy",
                message: "64 contract lookups are already waiting for IB".into(),
            });
        }
        let req_id = self.next_lookup_id;
        self.next_lookup_id = self.next_lookup_id.wrapping_add(1).max(FIRST_LOOKUP_REQ_ID);
        let contract = Contract {
            con_id: q.con_id.map_or(0, |c| c as i32),
            symbol: q.symbol.clone().unwrap_or_default(),
            sec_type: q.sec_type.clone().unwrap_or_default(),
            exchange: q.exchange.clone().unwrap_or_default(),
            currency: q.currency.clone().unwrap_or_default(),
            ..Contract::default()
        };
        self.extra
            .push_back(ClientMsg::ReqContractDetails { req_id, contract });
        self.lookups.insert(
            req_id,
            Lookup {
                token,
                id,
                results: Vec::new(),
                deadline: self.now() + LOOKUP_TIMEOUT_NS,
                purpose,
            },
        );
        Ok(())
    }

    fn fail_lookup(&mut self, req_id: i32, code: &'static str, message: &str) {
        let Some(l) = self.lookups.remove(&req_id) else {
            return;
        };
        self.scratch.clear();
        control::error_reply(
            &RequestError {
                id: l.id,
                code,
                message: message.to_string(),
            },
            &mut self.scratch,
        );
        self.send_to_client(l.token);
    }

    fn finish_lookup(&mut self, req_id: i32, now: u64) {
        let Some(l) = self.lookups.remove(&req_id) else {
            return;
        };
        for d in &l.results {
            self.book.insert_resolved(&d.contract, unix_ns());
        }
        self.scratch.clear();
        match l.purpose {
            LookupFor::Reply => {
                let list: Vec<Value> = l.results.iter().map(details_json).collect();
                control::ok_reply(&l.id, json!({ "contracts": list }), &mut self.scratch);
            }
            LookupFor::Subscribe { client, kind } => match l.results.as_slice() {
                [d] => {
                    let key = SubKey {
                        con_id: d.contract.con_id.max(0) as u32,
                        kind,
                    };
                    let mut out = Vec::new();
                    self.subscribe_reply(&client, key, l.id.clone(), now, &mut out);
                    if let Some(c) = self.clients.get_mut(&l.token) {
                        c.names.insert(client);
                    }
                    self.scratch = out;
                }
                [] => control::error_reply(
                    &RequestError {
                        id: l.id,
                        code: "not_found",
                        message: "IB knows no contract matching that description".into(),
                    },
                    &mut self.scratch,
                ),
                many => {
                    let list: Vec<String> = many
                        .iter()
                        .map(|d| {
                            format!(
                                "{} {} {} {}",
                                d.contract.con_id,
                                d.contract.local_symbol,
                                d.contract.exchange,
                                d.contract.currency
                            )
                        })
                        .collect();
                    control::error_reply(
                        &RequestError {
                            id: l.id,
                            code: "ambiguous",
                            message: format!(
                                "{} contracts match; name one by con_id: {}",
                                many.len(),
                                list.join("; ")
                            ),
                        },
                        &mut self.scratch,
                    );
                }
            },
        }
        self.send_to_client(l.token);
        self.drain_sub_events();
        self.pump(now);
    }

    // ---- control socket -----------------------------------------------------------------

    fn accept_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if self.clients.len() >= MAX_CONTROL_CLIENTS {
                        let _ = stream.write(
                            b"{\"id\":null,\"ok\":false,\"error\":{\"code\":\"too_many_clients\",\"message\":\"the engine serves 64 control clients at most; closing\"}}\n",
                        );
                        continue;
                    }
                    let token = Token(self.next_token);
                    self.next_token += 1;
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        continue;
                    }
                    self.clients.insert(
                        token,
                        CtlClient {
                            stream,
                            conn: ControlConn::default(),
                            names: BTreeSet::new(),
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("control accept: {e}");
                    return;
                }
            }
        }
    }

    fn on_client_event(&mut self, token: Token, readable: bool) {
        let Some(mut c) = self.clients.remove(&token) else {
            return;
        };
        let now = self.now();
        let mut close = false;
        if readable {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        close = true;
                        break;
                    }
                    Ok(n) => {
                        let CtlClient { conn, names, .. } = &mut c;
                        let verdict = conn.feed(&buf[..n], now, &mut |id, req, out| {
                            self.ingest.publisher.snap.counters.control_requests += 1;
                            self.handle_request(token, names, id, req, now, out);
                        });
                        if let Verdict::Close(why) = verdict {
                            info!(token = token.0, "closing a control client: {why}");
                            close = true;
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        close = true;
                        break;
                    }
                }
            }
        }
        let flushed = flush_client(&mut c);
        if close || !flushed {
            self.close_client(token, c);
        } else {
            self.clients.insert(token, c);
        }
        self.drain_sub_events();
        self.pump(now);
    }

    fn close_client(&mut self, _token: Token, mut c: CtlClient) {
        let _ = self.poll.registry().deregister(&mut c.stream);
        for name in &c.names {
            let released = self.ingest.subs.release_holder(name);
            if released > 0 {
                info!(client = %name, released, "control client gone; released its subscriptions");
            }
        }
        self.drain_sub_events();
    }

    /// Sends `self.scratch` to a client (asynchronous replies).
    fn send_to_client(&mut self, token: Token) {
        let Some(mut c) = self.clients.remove(&token) else {
            return;
        };
        let verdict = c.conn.push_line(&self.scratch);
        if verdict != Verdict::Keep || !flush_client(&mut c) {
            self.close_client(token, c);
        } else {
            self.clients.insert(token, c);
        }
    }

    fn subscribe_reply(
        &mut self,
        client: &str,
        key: SubKey,
        id: Option<Value>,
        now: u64,
        out: &mut Vec<u8>,
    ) {
        match self.ingest.subs.subscribe(client, key, now) {
            Ok(ack) => {
                let mut v = json!({
                    "con_id": key.con_id,
                    "kind": key.kind.name(),
                    "state": state_name_of(ack.state, ack.retry.is_some()),
                    "shared": ack.shared,
                    "holders": ack.holders,
                });
                // Joining a subscription IB refused: say so now, not only in the ring.
                if let Some(r) = ack.retry {
                    v["ib_code"] = ack.code.into();
                    v["refusals"] = r.refusals.into();
                    v["next_attempt_ns"] = self.mono_to_unix(r.next_ns).into();
                }
                control::ok_reply(&id, v, out)
            }
            Err(e) => {
                self.ingest.publisher.snap.counters.subscriptions_rejected += 1;
                control::error_reply(
                    &RequestError {
                        id,
                        code: "rejected",
                        message: e.to_string(),
                    },
                    out,
                );
            }
        }
    }

    fn handle_request(
        &mut self,
        token: Token,
        names: &mut BTreeSet<String>,
        id: Option<Value>,
        req: ControlRequest,
        now: u64,
        out: &mut Vec<u8>,
    ) {
        match req {
            ControlRequest::Ping => control::ok_reply(
                &id,
                json!({"pong": true, "epoch": format!("{:016x}", self.epoch()), "now_ns": unix_ns()}),
                out,
            ),
            ControlRequest::Subscribe { client, key } => {
                names.insert(client.clone());
                self.subscribe_reply(&client, key, id, now, out);
            }
            ControlRequest::SubscribeContract {
                client,
                query,
                kind,
            } => {
                if let Err(e) =
                    self.start_lookup(token, id, &query, LookupFor::Subscribe { client, kind })
                {
                    control::error_reply(&e, out);
                }
            }
            ControlRequest::Unsubscribe { client, key } => {
                match self.ingest.subs.unsubscribe(&client, key) {
                    Some(left) => control::ok_reply(
                        &id,
                        json!({"con_id": key.con_id, "kind": key.kind.name(), "holders": left}),
                        out,
                    ),
                    None => control::error_reply(
                        &RequestError {
                            id,
                            code: "not_held",
                            message: format!(
                                "`{client}` holds no {} subscription to {}",
                                key.kind.name(),
                                key.con_id
                            ),
                        },
                        out,
                    ),
                }
            }
            ControlRequest::List => {
                let subs: Vec<Value> = self
                    .ingest
                    .subs
                    .list()
                    .map(|s| {
                        let mut v = json!({
                            "con_id": s.key.con_id,
                            "kind": s.key.kind.name(),
                            "state": state_name_of(s.state, s.retry.is_some()),
                            "holders": s.holders,
                            "req_id": s.req_id,
                            "ib_code": s.code,
                        });
                        if let Some(r) = s.retry {
                            v["refusals"] = r.refusals.into();
                            v["next_attempt_ns"] = self.mono_to_unix(r.next_ns).into();
                        }
                        v
                    })
                    .collect();
                control::ok_reply(&id, json!({ "subscriptions": subs }), out);
            }
            ControlRequest::Status => {
                let snap = &self.ingest.publisher.snap;
                let c = &snap.counters;
                let port = self.conn.as_ref().map(|c| c.port);
                control::ok_reply(
                    &id,
                    json!({
                        "epoch": format!("{:016x}", self.epoch()),
                        "conn_state": conn_name(snap.conn_state()),
                        "server_version": snap.engine.server_version,
                        "client_id": snap.engine.client_id,
                        "port": port,
                        "connected_since_ns": snap.engine.connected_since_ns,
                        "last_error_code": snap.engine.last_error_code,
                        "records_published": c.records_published,
                        "reconnects": c.reconnects,
                        "gaps": c.gaps,
                        "messages_sent": c.messages_sent,
                        "pacing_delays": c.pacing_delays,
                        "ib_errors": c.ib_errors,
                        "subscriptions": snap.engine.sub_count,
                        "last_seq": self.ingest.publisher.last_seq(),
                        "data_possibly_stale": self.farms.market_data_broken(),
                        "farms": self.farms.farms().iter().map(|f| json!({
                            "name": f.name(),
                            "kind": f.kind().map_or("?", |k| k.name()),
                            "state": f.state().map_or("?", |s| s.name()),
                            "code": f.code,
                            "since_ns": f.since_ns,
                            "notice_ns": f.notice_ns,
                        })).collect::<Vec<Value>>(),
                        "farm_notices_dropped": self.farms.dropped(),
                        "contract_store": {
                            "path": self.store_path.display().to_string(),
                            "entries": self.book.entries().count(),
                            "last_written_ns": self.store_written_ns,
                        },
                    }),
                    out,
                );
            }
            ControlRequest::Lookup(q) => {
                if let Err(e) = self.start_lookup(token, id, &q, LookupFor::Reply) {
                    control::error_reply(&e, out);
                }
            }
            ControlRequest::Shutdown => {
                info!(token = token.0, "stop asked on the control socket");
                self.stop.store(true, Ordering::Relaxed);
                control::ok_reply(&id, json!({"stopping": true}), out);
            }
        }
    }
}

/// Writes what the client has pending; false when the client is gone or must be closed.
fn flush_client(c: &mut CtlClient) -> bool {
    loop {
        let pending = c.conn.pending_out();
        if pending.is_empty() {
            return c.conn.closing().is_none();
        }
        match c.stream.write(pending) {
            Ok(0) => return false,
            Ok(n) => c.conn.consume_out(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// `ib-stream engine`: logging off the core, pinning, signals, then the loop.
pub fn run(settings: Settings, opts: EngineOptions) -> Result<(), EngineError> {
    super::logging::init(&settings.log_level);
    if let Some(core) = settings.engine_core {
        let ids = core_affinity::get_core_ids().unwrap_or_default();
        match ids.into_iter().find(|c| c.id == core) {
            Some(id) if core_affinity::set_for_current(id) => info!(core, "engine pinned"),
            _ => warn!(
                core,
                "cannot pin the engine to core {core}; running unpinned"
            ),
        }
    }
    let mut engine = Engine::new(settings, opts)?;
    let stop = engine.stop_flag();
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(io_err("install the signal handler"))?;
    }
    engine.run()
}
