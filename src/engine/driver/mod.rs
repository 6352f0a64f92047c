//! `ib-stream engine`: the loop around the sans-IO [`Session`]. One thread (pinned when
//! configured), one `mio` poll over the IB socket, the control listener and its clients;
//! this file is the only engine code that touches a socket, a file or the clock. Busy-poll
//! mode polls with a zero timeout; blocking mode sleeps until the session's next deadline
//! or an event. Reads and writes go on until `WouldBlock` (edge-triggered readiness); the
//! IB socket is read straight into the session's frame buffer, by `recvmsg` with the
//! kernel's receive stamp ([`rx_stamp`]): per read that commits records, the status region
//! gets kernel receive -> commit and read return -> commit of its last record.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use tracing::{error, info, warn};

use crate::clientid::{ClientIds, Purpose};
use crate::config::Settings;
use crate::ipc::{IpcError, ShmOptions};

mod control_io;
pub mod rx_stamp;

use super::contract_store;
use super::publish::{Publisher, unix_ns};
use super::session::{Action, Clock, EngineOptions, Session};
use super::wake::{self, WakeDetector};

/// The engine's name in the client-id registry.
pub const REGISTRY_HOLDER: &str = "engine";

const IB: Token = Token(0);
const LISTENER: Token = Token(1);
const FIRST_CLIENT: usize = 2;
/// Socket reads in one turn of the loop before timers and control clients get theirs
/// (16 x 64 KiB: about 20 000 ticks).
pub const MAX_READS_PER_TURN: usize = 16;
/// On a clean stop: how long the engine spends cancelling at IB (paced) and waiting for IB
/// to close its side, before it closes anyway.
pub const STOP_FLUSH_NS: u64 = 200_000_000;

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

/// The engine: the session and the sockets, files and clock it is driven with.
#[derive(Debug)]
pub struct Engine {
    settings: Settings,
    session: Session,
    poll: Poll,
    ib: Option<TcpStream>,
    /// The TCP connect of `ib` completed.
    ib_established: bool,
    /// The IB socket may hold more bytes (the last read turn stopped at its limit).
    ib_pending: bool,
    /// Reads the IB socket with the kernel's receive stamps.
    rx: rx_stamp::StampedReader,
    listener: UnixListener,
    socket_path: PathBuf,
    store_path: PathBuf,
    clients: BTreeMap<usize, UnixStream>,
    next_token: usize,
    start: Instant,
    stop: Arc<AtomicBool>,
    /// The client-id registry, when the engine's id comes from it.
    ids: Option<ClientIds>,
    /// Sees the host sleep between two loop turns.
    wake: WakeDetector,
}

impl Engine {
    /// Sets up shared memory, the control socket and the poller. Connects on [`Engine::run`].
    pub fn new(settings: Settings, opts: EngineOptions) -> Result<Engine, EngineError> {
        if settings.ib_ports.is_empty() {
            return Err(EngineError::Config("no IB port configured".into()));
        }
        let capacity = settings.ring_capacity as u64;
        let publisher = Publisher::create(&settings.shm_dir, capacity, &ShmOptions::default())?;
        let store_path = contract_store::store_path(&settings.storage_path);
        let stored = contract_store::load(&store_path);
        info!(path = %store_path.display(), contracts = stored.len(), "contract store loaded");
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
        let start = Instant::now();
        let clock = Clock {
            mono: 0,
            unix: unix_ns(),
        };
        let wake = WakeDetector::new(opts.wake_threshold_ms.saturating_mul(1_000_000));
        let mut session = Session::new(
            settings.clone(),
            opts,
            publisher,
            stored,
            store_path.clone(),
            crate::ipc::shm::random_u64(),
            clock,
        );
        let ids = ClientIds::from_settings(&settings);
        if let Some(ids) = &ids {
            let id = ids
                .acquire(Purpose::Streaming, REGISTRY_HOLDER)
                .map_err(|e| EngineError::Config(format!("client id: {e}")))?;
            info!(
                client_id = id,
                registry = %ids.path().display(),
                "client id from the registry"
            );
            session.set_client_id(clock, id);
        }
        let mut engine = Engine {
            settings,
            session,
            poll,
            ib: None,
            ib_established: false,
            ib_pending: false,
            rx: rx_stamp::StampedReader::new(),
            listener,
            socket_path,
            store_path,
            clients: BTreeMap::new(),
            next_token: FIRST_CLIENT,
            start,
            stop: Arc::new(AtomicBool::new(false)),
            ids,
            wake,
        };
        engine.after_input();
        Ok(engine)
    }

    /// A flag that stops the loop when set (signal handlers set it).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The ring epoch of this run.
    pub fn epoch(&self) -> u64 {
        self.session.epoch()
    }

    fn clock(&self) -> Clock {
        Clock {
            mono: self.start.elapsed().as_nanos() as u64,
            unix: unix_ns(),
        }
    }

    /// Runs until the stop flag is set.
    pub fn run(&mut self) -> Result<(), EngineError> {
        let mut events = Events::with_capacity(256);
        info!(
            epoch = format_args!("{:016x}", self.epoch()),
            dir = %self.settings.shm_dir.display(),
            busy_poll = self.settings.busy_poll,
            "engine started"
        );
        while !self.stop.load(Ordering::Relaxed) {
            self.watch_for_sleep();
            let clock = self.clock();
            self.session.on_timeout(clock);
            self.after_input();
            let timeout = if self.settings.busy_poll || self.ib_pending {
                Duration::ZERO
            } else {
                let deadline = self.session.next_deadline(clock.mono);
                Duration::from_nanos(deadline.saturating_sub(clock.mono).min(100_000_000))
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("poll")(e)),
            }
            let had_events = !events.is_empty() || self.ib_pending;
            let work_start = self.clock().mono;
            let mut ib_seen = false;
            for ev in events.iter() {
                match ev.token() {
                    IB => {
                        ib_seen = true;
                        self.on_ib_event(ev.is_readable());
                    }
                    LISTENER => self.accept_clients(),
                    t => self.on_client_event(t.0, ev.is_readable()),
                }
            }
            // Edge-triggered: bytes left unread last turn raise no new event.
            if self.ib_pending && !ib_seen {
                self.read_ib();
            }
            let p = self.session.publisher_mut();
            p.snap.counters.loop_iterations += 1;
            if had_events {
                let spent = self.clock().mono.saturating_sub(work_start);
                let p = self.session.publisher_mut();
                p.snap.latencies.loop_iteration.record(spent);
            }
        }
        info!("engine stopping");
        self.shutdown();
        Ok(())
    }

    /// Carries out what the session asked for and writes what it queued for IB.
    fn after_input(&mut self) {
        loop {
            while let Some(a) = self.session.poll_action() {
                self.act(a);
            }
            if self.ib.is_none() || self.session.ib_out().is_empty() || !self.ib_established {
                return;
            }
            self.flush_ib();
        }
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::Connect { port } => self.connect(port),
            Action::CloseIb => {
                if let Some(mut s) = self.ib.take() {
                    let _ = self.poll.registry().deregister(&mut s);
                }
                self.ib_pending = false;
            }
            Action::ShutdownIbWrite => {
                if let Some(s) = &self.ib {
                    let _ = s.shutdown(Shutdown::Write);
                }
            }
            Action::ControlOut(id) => {
                if !self.flush_client(id) {
                    self.close_client(id);
                }
            }
            Action::CloseControl(id) => {
                if let Some(mut s) = self.clients.remove(&id) {
                    let _ = self.poll.registry().deregister(&mut s);
                }
            }
            Action::SaveContracts(all) => match contract_store::save(&self.store_path, &all) {
                Ok(()) => {
                    let clock = self.clock();
                    self.session.on_store_saved(clock);
                }
                Err(e) => warn!("cannot write the contract store (contracts stay in memory): {e}"),
            },
            Action::Stop => self.stop.store(true, Ordering::Relaxed),
            Action::ClientIdRefused { id } => self.on_client_id_refused(id),
        }
    }

    /// IB said 326 for the registry's id: the registry's next id, or a clear error (the
    /// session then tries the same id again after a backoff).
    fn on_client_id_refused(&mut self, id: i32) {
        let Some(ids) = &self.ids else { return };
        match ids.refused(Purpose::Streaming, REGISTRY_HOLDER, id) {
            Ok(next) => {
                info!(
                    refused = id,
                    next, "client id in use at IB; the registry gave the next"
                );
                let clock = self.clock();
                self.session.set_client_id(clock, next);
            }
            Err(e) => {
                error!("client id {id} refused by IB (326) and {e}; trying again after a backoff")
            }
        }
    }

    /// Tells the session when the host slept since the last turn.
    fn watch_for_sleep(&mut self) {
        let Some((boot, mono)) = wake::read_clocks() else {
            return;
        };
        if let Some(slept) = self.wake.observe(boot, mono) {
            let clock = self.clock();
            self.session.on_wake(clock, slept);
            self.after_input();
        }
    }

    fn connect(&mut self, port: u16) {
        let addr: Option<SocketAddr> = (self.settings.ib_host.as_str(), port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next());
        let Some(addr) = addr else {
            warn!(host = %self.settings.ib_host, port, "cannot resolve the IB host");
            let clock = self.clock();
            self.session
                .on_connect_failed(clock, "cannot resolve the IB host");
            return;
        };
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                let clock = self.clock();
                self.session.on_connect_failed(clock, &e.to_string());
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Err(e) = rx_stamp::enable(&stream) {
            warn!("no kernel receive stamps on the IB socket (SO_TIMESTAMPING): {e}");
        }
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut stream, IB, Interest::READABLE | Interest::WRITABLE)
        {
            warn!("register the IB socket: {e}");
            let clock = self.clock();
            self.session.on_connect_failed(clock, &e.to_string());
            return;
        }
        self.ib = Some(stream);
        self.ib_established = false;
        let clock = self.clock();
        self.session.on_connecting(clock);
    }

    fn on_ib_event(&mut self, readable: bool) {
        let Some(s) = self.ib.as_ref() else { return };
        if !self.ib_established {
            let failed = match s.take_error() {
                Ok(None) => match s.peer_addr() {
                    Ok(_) => None,
                    Err(e) if e.kind() == ErrorKind::NotConnected => return,
                    Err(e) => Some(e),
                },
                Ok(Some(e)) | Err(e) => Some(e),
            };
            let clock = self.clock();
            match failed {
                Some(e) => self.session.on_closed(clock, &format!("connect: {e}")),
                None => {
                    self.ib_established = true;
                    self.session.on_connected(clock);
                }
            }
        }
        self.after_input();
        if readable {
            self.read_ib();
        }
    }

    fn flush_ib(&mut self) {
        let Some(s) = self.ib.as_mut() else { return };
        let mut failed = None;
        loop {
            let out = self.session.ib_out();
            if out.is_empty() {
                break;
            }
            match s.write(out) {
                Ok(0) => {
                    failed = Some("write returned 0".to_string());
                    break;
                }
                Ok(n) => self.session.ib_written(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(format!("write: {e}"));
                    break;
                }
            }
        }
        if let Some(why) = failed {
            let clock = self.clock();
            self.session.on_closed(clock, &why);
            while let Some(a) = self.session.poll_action() {
                self.act(a);
            }
        }
    }

    /// Reads until the socket is drained or [`MAX_READS_PER_TURN`] reads were made; in the
    /// latter case the loop comes back at once (`ib_pending`), after its timers and the
    /// control clients had their turn: a stream faster than we read must not starve them.
    fn read_ib(&mut self) {
        self.ib_pending = false;
        for reads in 0..=MAX_READS_PER_TURN {
            if reads == MAX_READS_PER_TURN {
                self.ib_pending = true;
                return;
            }
            let Some(s) = self.ib.as_ref() else { return };
            match self.rx.read(s, self.session.recv_buf()) {
                Ok(rx_stamp::Read { bytes: 0, .. }) => {
                    let clock = self.clock();
                    self.session.on_closed(clock, "closed by the gateway");
                    self.after_input();
                    return;
                }
                Ok(rx_stamp::Read {
                    bytes: n,
                    kernel_ns,
                }) => {
                    // The clocks of this read (two vDSO reads per read, not per tick): the
                    // pacer must not see a time older than the send it records.
                    let clock = self.clock();
                    let ts_recv = clock.unix;
                    let open = self.session.on_received(clock, ts_recv, n);
                    let published = self.session.take_published();
                    if published > 0 {
                        // The read's last record is committed: one more vDSO read.
                        let committed = unix_ns();
                        let spent = (committed - ts_recv).max(0) as u64;
                        let l = &mut self.session.publisher_mut().snap.latencies;
                        l.recv_to_publish.record_n(spent, published as u64);
                        l.read_to_commit.record(spent);
                        if let Some(k) = kernel_ns {
                            l.kernel_to_commit.record((committed - k).max(0) as u64);
                        }
                    }
                    self.after_input();
                    if !open {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    let clock = self.clock();
                    self.session.on_closed(clock, &format!("read: {e}"));
                    self.after_input();
                    return;
                }
            }
        }
    }

    /// A clean stop: the session cancels every subscription at IB (paced); we write the
    /// cancels, close our sending side once all are written, and read on (publishing what
    /// still arrives) until IB closes its side, which it does after it has read every
    /// cancel. All of it within [`STOP_FLUSH_NS`]; what is left then is given up.
    fn shutdown(&mut self) {
        let clock = self.clock();
        let queued = self.session.begin_stop(clock);
        self.after_input();
        if queued > 0 {
            self.flush_stop(queued, clock.mono);
        }
        if let Some(mut s) = self.ib.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        let clock = self.clock();
        self.session.finish_stop(clock);
        let _ = std::fs::remove_file(&self.socket_path);
        if let Some(ids) = &self.ids
            && let Err(e) = ids.release(self.session.client_id())
        {
            warn!("cannot give the client id back to the registry (reclaimed once we exit): {e}");
        }
    }

    fn flush_stop(&mut self, queued: usize, start: u64) {
        let deadline = start + STOP_FLUSH_NS;
        let mut events = Events::with_capacity(16);
        let mut half_closed = false;
        loop {
            let clock = self.clock();
            let now = clock.mono;
            if self.ib.is_none() {
                break;
            }
            if !half_closed {
                self.session.on_timeout(clock);
                self.after_input();
                if self.session.stop_flushed()
                    && self.session.ib_out().is_empty()
                    && let Some(s) = &self.ib
                {
                    let _ = s.shutdown(Shutdown::Write);
                    half_closed = true;
                }
            }
            if now >= deadline {
                break;
            }
            if self.ib_pending {
                self.read_ib();
                continue;
            }
            let mut wait = deadline - now;
            if !half_closed && self.session.queued() > 0 {
                wait = wait.min(self.session.next_send_slot(now).saturating_sub(now).max(1));
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
            for ev in events.iter() {
                if ev.token() == IB {
                    if ev.is_writable() {
                        self.after_input();
                    }
                    if ev.is_readable() || ev.is_read_closed() {
                        self.read_ib();
                    }
                }
            }
        }
        let left = self.session.queued();
        info!(
            sent = queued - left.min(queued),
            left,
            closed_by_ib = self.ib.is_none(),
            ms = (self.clock().mono - start) / 1_000_000,
            "cancelled the subscriptions at IB"
        );
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
