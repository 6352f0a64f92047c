//! The `ib-stream backfill` process: the socket, the clock and storage around the sans-IO
//! [`Backfill`] core.
//!
//! One thread, blocking I/O with a short read timeout (the work is a few requests a minute).
//! It takes a client id from the registry's `backfill` range (326: the next one), connects to
//! the gateway like the engine (`IB_STREAM_HOST`, the ports in turn), scans storage for
//! gaps every `--scan-secs` and fills them, storing each fill as it finishes. The status file
//! is rewritten every second. `--once` exits when nothing is left to fill and a scan finds nothing new.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ib_stream_tws::history::PacingRules;
use ib_stream_tws::{ClientHandshake, Contract, FrameReader, HistReply, ServerMsg};

use super::core::{Action, Backfill};
use super::jobs::{interrupted, plan};
use super::status::{self, BackfillStatus};
use crate::clientid::{ClientIds, Purpose};
use crate::config::Settings;
use crate::engine::contract_store;
use crate::storage::Format;
use crate::storage::backfill::{FillRecord, FillStates, StoreOutcome, store_fill};

/// IB's "client id already in use".
const CLIENT_ID_IN_USE: i32 = 326;
/// How far before the last fully decided scan later scans look again (2 hours).
const SCAN_MARGIN_NS: i64 = 2 * 3_600_000_000_000;
/// Sends per second at most: under the session's 50 messages/s.
const MAX_SENDS_PER_SEC: u32 = 40;

/// Flags of `ib-stream backfill` (everything else comes from the configuration).
#[derive(Debug, Clone, clap::Args)]
pub struct BackfillArgs {
    /// Storage root (default: IB_STREAM_STORAGE_PATH).
    #[arg(long)]
    pub storage: Option<PathBuf>,
    /// How far back to look for gaps (`7d`, `12h`, ...).
    #[arg(long, default_value = "7d")]
    pub lookback: String,
    /// Seconds between scans of storage for new gaps.
    #[arg(long, default_value_t = 5)]
    pub scan_secs: u64,
    /// Fill the gaps found at the first scan, then exit.
    #[arg(long)]
    pub once: bool,
    /// Ticks per request (IB's maximum, 1000; smaller only for tests).
    #[arg(long, default_value_t = ib_stream_tws::msg::historical::MAX_TICKS_PER_REQUEST)]
    pub page: i32,
    /// Use this client id instead of one from the registry's backfill range.
    #[arg(long)]
    pub client_id: Option<i32>,
}

/// Why the backfill stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A bad flag.
    #[error("{0}")]
    Args(String),
    /// The client-id registry.
    #[error(transparent)]
    ClientId(#[from] crate::clientid::ClientIdError),
    /// Storage.
    #[error(transparent)]
    Store(#[from] crate::storage::backfill::BackfillStoreError),
    /// Reading storage.
    #[error(transparent)]
    Query(#[from] crate::storage::query::QueryError),
    /// Signals could not be set up.
    #[error("signals: {0}")]
    Signals(std::io::Error),
}

/// Where the client id comes from.
enum Ids {
    Registry(ClientIds),
    Fixed,
}

/// Runs until SIGINT/SIGTERM (or, with `--once`, until the first scan's fills are done).
pub fn run_cli(s: &Settings, args: &BackfillArgs) -> Result<(), RunError> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&s.log_level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let root = args
        .storage
        .clone()
        .unwrap_or_else(|| s.storage_path.clone());
    let lookback = crate::storage::query::time::parse_duration(&args.lookback)
        .map_err(|e| RunError::Args(format!("--lookback: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(RunError::Signals)?;
    }
    let (ids, mut client_id) = match (args.client_id, ClientIds::from_settings(s)) {
        (Some(id), _) => (Ids::Fixed, id),
        (None, Some(reg)) => {
            let id = reg.acquire(Purpose::Backfill, "backfill")?;
            (Ids::Registry(reg), id)
        }
        (None, None) => (
            Ids::Fixed,
            *s.client_id_ranges.of(Purpose::Backfill).start(),
        ),
    };
    let formats: Vec<Format> = [
        (s.storage_formats.binary, Format::Binary),
        (s.storage_formats.jsonl, Format::Jsonl),
    ]
    .into_iter()
    .filter_map(|(on, f)| on.then_some(f))
    .collect();
    let mut r = Runner {
        root: root.clone(),
        formats,
        lookback_ns: lookback,
        decided_before_ns: None,
        core: Backfill::new(PacingRules::default(), 1, args.page),
        status: BackfillStatus {
            pid: std::process::id(),
            state: "connecting".into(),
            budget_max: PacingRules::default().budget_max,
            ..BackfillStatus::default()
        },
        start: Instant::now(),
        last_scan: None,
        last_found: None,
    };
    let result = r.run(s, args, &ids, &mut client_id, &stop);
    r.status.state = "stopped".into();
    r.write_status();
    if let Ids::Registry(reg) = &ids
        && let Err(e) = reg.release(client_id)
    {
        tracing::warn!("backfill: releasing client id {client_id}: {e}");
    }
    result
}

struct Runner {
    root: PathBuf,
    formats: Vec<Format>,
    lookback_ns: i64,
    /// Gaps before this were all decided (stored or unavailable): later scans start here,
    /// less a margin, instead of reading `--lookback` of system files every few seconds.
    decided_before_ns: Option<i64>,
    core: Backfill,
    status: BackfillStatus,
    start: Instant,
    last_scan: Option<Instant>,
    /// What the last scan found (jobs and fills stored at once); `None` after a fill was
    /// stored since (it may let a waiting gap be decided).
    last_found: Option<usize>,
}

/// How a session ended.
enum SessionEnd {
    Stop,
    Done,
    Lost,
    ClientIdInUse,
}

impl Runner {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn run(
        &mut self,
        s: &Settings,
        args: &BackfillArgs,
        ids: &Ids,
        client_id: &mut i32,
        stop: &AtomicBool,
    ) -> Result<(), RunError> {
        let mut port_idx = 0usize;
        let mut backoff = Duration::from_millis(500);
        while !stop.load(Ordering::Relaxed) {
            let port = s.ib_ports[port_idx % s.ib_ports.len().max(1)];
            self.status.client_id = *client_id;
            self.status.gateway = format!("{}:{port}", s.ib_host);
            self.status.state = "connecting".into();
            self.write_status();
            let end = match connect(&s.ib_host, port, s.connect_timeout) {
                Ok(sock) => self.session(sock, *client_id, args, stop)?,
                Err(e) => {
                    tracing::debug!("backfill: connect {}:{port}: {e}", s.ib_host);
                    SessionEnd::Lost
                }
            };
            match end {
                SessionEnd::Stop | SessionEnd::Done => return Ok(()),
                SessionEnd::ClientIdInUse => {
                    *client_id = match ids {
                        Ids::Registry(reg) => {
                            reg.refused(Purpose::Backfill, "backfill", *client_id)?
                        }
                        Ids::Fixed => {
                            return Err(RunError::Args(format!(
                                "client id {client_id} is in use at the gateway (326)"
                            )));
                        }
                    };
                    tracing::info!("backfill: client id in use, trying {client_id}");
                }
                SessionEnd::Lost => {
                    port_idx += 1;
                    let mut out = Vec::new();
                    self.core.on_disconnect(&mut out);
                    self.execute(out, None)?;
                    sleep_unless(stop, backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        Ok(())
    }

    /// One IB session: handshake, then fill until stopped, done (`--once`) or lost.
    fn session(
        &mut self,
        mut sock: TcpStream,
        client_id: i32,
        args: &BackfillArgs,
        stop: &AtomicBool,
    ) -> Result<SessionEnd, RunError> {
        let mut hs = ClientHandshake::new(client_id, "");
        let mut out = Vec::new();
        hs.start(&mut out);
        if sock.write_all(&out).is_err() {
            return Ok(SessionEnd::Lost);
        }
        let mut reader = FrameReader::new();
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(10);
        // The server's version, then nextValidId: the session is up.
        let version = loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(SessionEnd::Stop);
            }
            if Instant::now() > deadline {
                return Ok(SessionEnd::Lost);
            }
            match read_some(&mut sock, &mut buf) {
                ReadOutcome::Data(n) => reader.feed(&buf[..n]),
                ReadOutcome::Idle => continue,
                ReadOutcome::Closed => return Ok(SessionEnd::Lost),
            }
            out.clear();
            match hs.poll_ack(&mut reader, &mut out) {
                Ok(Some(ack)) => {
                    if sock.write_all(&out).is_err() {
                        return Ok(SessionEnd::Lost);
                    }
                    break ack.version;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("backfill: handshake: {e}");
                    return Ok(SessionEnd::Lost);
                }
            }
        };
        let mut up = false;
        let mut sends_this_sec = (Instant::now(), 0u32);
        let mut last_status = Instant::now() - Duration::from_secs(2);
        tracing::info!(client_id, version, "backfill: connected");
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(SessionEnd::Stop);
            }
            // Frames first: answers free budget and open slots.
            let mut actions = Vec::new();
            let now = self.now();
            loop {
                let frame = match reader.next_frame(version) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("backfill: bad frame: {e}");
                        return Ok(SessionEnd::Lost);
                    }
                };
                if let Ok(Some(reply)) = HistReply::decode(&frame, version) {
                    self.core.on_reply(now, reply, &mut actions);
                    continue;
                }
                match ServerMsg::decode(&frame, version) {
                    Ok(ServerMsg::NextValidId { .. }) => up = true,
                    Ok(ServerMsg::Error {
                        req_id,
                        code,
                        message,
                        ..
                    }) => {
                        if code == CLIENT_ID_IN_USE {
                            return Ok(SessionEnd::ClientIdInUse);
                        }
                        if !self
                            .core
                            .on_error(now, req_id, code, &message, &mut actions)
                            && !(2100..2200).contains(&code)
                        {
                            tracing::info!(code, "backfill: IB says: {message}");
                        }
                    }
                    _ => {}
                }
            }
            if up {
                if self
                    .last_scan
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(args.scan_secs.max(1)))
                {
                    self.last_found = Some(self.scan(&mut actions)?);
                }
                self.core.poll(now, &mut actions);
            }
            let sent = self.execute(actions, Some((&mut sock, version, &mut sends_this_sec)))?;
            if !sent {
                return Ok(SessionEnd::Lost);
            }
            if last_status.elapsed() >= Duration::from_secs(1) {
                self.status.state = if self.core.is_idle() {
                    "idle"
                } else {
                    "filling"
                }
                .into();
                self.write_status();
                last_status = Instant::now();
            }
            if up && args.once && self.core.is_idle() && self.last_found == Some(0) {
                self.status.state = "idle".into();
                return Ok(SessionEnd::Done);
            }
            match read_some(&mut sock, &mut buf) {
                ReadOutcome::Data(n) => reader.feed(&buf[..n]),
                ReadOutcome::Idle => {}
                ReadOutcome::Closed => return Ok(SessionEnd::Lost),
            }
        }
    }

    /// Finds the gaps not filled yet and hands them to the core (or stores at once those
    /// that cannot be asked for).
    /// Returns how many it found.
    fn scan(&mut self, actions: &mut Vec<Action>) -> Result<usize, RunError> {
        self.last_scan = Some(Instant::now());
        let now_ns = crate::storage::now_ns();
        if !self.root.exists() {
            return Ok(0);
        }
        let mut since = now_ns.saturating_sub(self.lookback_ns);
        if let Some(t) = self.decided_before_ns {
            // A gap record may be written a while after its outage began: a margin.
            since = since.max(t.saturating_sub(SCAN_MARGIN_NS));
        }
        let idle_before = self.core.is_idle();
        let found = interrupted(&self.root, since, now_ns)?;
        let states = FillStates::load(&self.root)
            .map_err(crate::storage::backfill::BackfillStoreError::from)?;
        let contracts = contract_store::load(&contract_store::store_path(&self.root));
        let contract_of = |con_id: u32| {
            contracts
                .iter()
                .find(|c| c.con_id == con_id as i32)
                .map(|c| c.contract())
                .unwrap_or_else(|| Contract {
                    con_id: con_id as i32,
                    exchange: "SMART".into(),
                    ..Contract::default()
                })
        };
        let running: Vec<_> = self.core.jobs().cloned().collect();
        let (jobs, unfillable) = plan(&found, &states, &running, &contract_of);
        let found = jobs.len() + unfillable.len();
        // Nothing running and nothing new: every gap up to now is decided.
        if idle_before && found == 0 {
            self.decided_before_ns = Some(now_ns);
        }
        for (key, t0, t1, state) in unfillable {
            let fill = FillRecord::new(key, t0, t1, state);
            let none = crate::tickjson::NoStrings;
            store_fill(&self.root, &self.formats, fill, &[], &none, now_ns)?;
        }
        for job in jobs {
            self.core.add(job, actions);
        }
        Ok(found)
    }

    /// Sends and stores what the core asked for. False when the socket failed.
    fn execute(
        &mut self,
        actions: Vec<Action>,
        mut sock: Option<(&mut TcpStream, u32, &mut (Instant, u32))>,
    ) -> Result<bool, RunError> {
        let mut ok = true;
        for a in actions {
            match a {
                Action::Send(req) => {
                    let Some((sock, version, rate)) = sock.as_mut() else {
                        continue;
                    };
                    // The session's own limit, 50 messages a second: stay under it.
                    if rate.0.elapsed() >= Duration::from_secs(1) {
                        **rate = (Instant::now(), 0);
                    }
                    if rate.1 >= MAX_SENDS_PER_SEC {
                        std::thread::sleep(Duration::from_secs(1).saturating_sub(rate.0.elapsed()));
                        **rate = (Instant::now(), 0);
                    }
                    rate.1 += 1;
                    let mut b = Vec::new();
                    if let Err(e) = req.encode(*version, &mut b) {
                        tracing::warn!("backfill: cannot send {req:?}: {e}");
                        continue;
                    }
                    if sock.write_all(&b).is_err() {
                        ok = false;
                    }
                }
                Action::Store(f) => {
                    let key = f.fill.key();
                    match store_fill(
                        &self.root,
                        &self.formats,
                        f.fill,
                        &f.records,
                        &f.strings,
                        crate::storage::now_ns(),
                    )? {
                        StoreOutcome::Stored(n) => {
                            self.last_found = None;
                            self.status.ticks_stored += n;
                            tracing::info!(?key, ticks = n, "backfill: fill stored");
                        }
                        StoreOutcome::AlreadyFilled => {}
                    }
                }
            }
        }
        Ok(ok)
    }

    fn write_status(&mut self) {
        let p = self.core.progress(self.now());
        self.status.set_progress(&p);
        self.status.updated_ns = crate::storage::now_ns();
        if self.root.exists()
            && let Err(e) = status::store(&self.root, &self.status)
        {
            tracing::warn!("backfill: status file: {e}");
        }
    }
}

fn connect(host: &str, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let sock = TcpStream::connect_timeout(&addr, timeout.max(Duration::from_millis(100)))?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(sock)
}

enum ReadOutcome {
    Data(usize),
    Idle,
    Closed,
}

fn read_some(sock: &mut TcpStream, buf: &mut [u8]) -> ReadOutcome {
    match sock.read(buf) {
        Ok(0) => ReadOutcome::Closed,
        Ok(n) => ReadOutcome::Data(n),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            ) =>
        {
            ReadOutcome::Idle
        }
        Err(_) => ReadOutcome::Closed,
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The status line for `ib-stream status` (None when the backfill never ran here).
pub fn status_line(root: &Path) -> Option<String> {
    status::load(root).map(|s| s.line())
}
