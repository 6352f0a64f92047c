//! The listener, the registry of connected clients (client ids are unique: a duplicate gets
//! 326), the shared settings, and server-wide faults (restart).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::capture::CaptureWriter;
use crate::conn::{self, ClientStats, Event, Fault};
use crate::limits::SharedAccount;
use crate::schedule::Mode;
use crate::schedule::Schedule;
use crate::session::SessionConfig;
use crate::universe::Universe;

/// Settings of a running simulator.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub max_version: u32,
    pub mode: Mode,
    pub rate: f64,
    pub rate_for: HashMap<i32, f64>,
    pub burst_size: u64,
    pub session: SessionConfig,
    pub competing: bool,
    pub capture: Option<PathBuf>,
    pub send_log: Option<PathBuf>,
}

/// How the server reaches a connected client.
#[derive(Debug)]
pub struct ClientHandle {
    pub tx: Sender<Event>,
    /// A clone of the socket: shutting it down ends the connection even when its writer is
    /// blocked on a client that does not read.
    pub stream: TcpStream,
    /// Set when the simulator itself closes the connection (drop fault, restart).
    pub dropped: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct Registry {
    clients: HashMap<i32, (u64, ClientHandle)>,
}

/// Which clients a command addresses.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    All,
    Client(i32),
}

/// Everything the connection threads share.
#[derive(Debug)]
pub struct Shared {
    pub cfg: ServerConfig,
    pub universe: Universe,
    pub account: SharedAccount,
    registry: Mutex<Registry>,
    competing: AtomicBool,
    send_log: Option<Mutex<BufWriter<File>>>,
    schedules: HashMap<i32, Schedule>,
    default_schedule: Schedule,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn new(cfg: ServerConfig, universe: Universe) -> anyhow::Result<Self> {
        let send_log = match &cfg.send_log {
            Some(p) => Some(Mutex::new(BufWriter::new(File::create(p)?))),
            None => None,
        };
        let schedules = cfg
            .rate_for
            .iter()
            .map(|(c, r)| (*c, Schedule::new(cfg.mode, *r, cfg.burst_size)))
            .collect();
        Ok(Self {
            default_schedule: Schedule::new(cfg.mode, cfg.rate, cfg.burst_size),
            schedules,
            competing: AtomicBool::new(cfg.competing),
            universe,
            account: SharedAccount::default(),
            registry: Mutex::default(),
            send_log,
            cfg,
        })
    }

    pub fn schedule_for(&self, con_id: i32) -> Schedule {
        self.schedules
            .get(&con_id)
            .copied()
            .unwrap_or(self.default_schedule)
    }

    pub fn competing(&self) -> bool {
        self.competing.load(Ordering::Relaxed)
    }

    /// Registers a client id; false when it is taken.
    pub fn register(&self, client_id: i32, conn_no: u64, handle: ClientHandle) -> bool {
        let mut reg = lock(&self.registry);
        if reg.clients.contains_key(&client_id) {
            return false;
        }
        reg.clients.insert(client_id, (conn_no, handle));
        true
    }

    pub fn deregister(&self, client_id: i32, conn_no: u64) {
        let mut reg = lock(&self.registry);
        if reg
            .clients
            .get(&client_id)
            .is_some_and(|(n, _)| *n == conn_no)
        {
            reg.clients.remove(&client_id);
        }
    }

    pub fn open_capture(&self, conn_no: u64, start: Instant) -> Option<CaptureWriter> {
        let base = self.cfg.capture.as_ref()?;
        let path = if conn_no == 0 {
            base.clone()
        } else {
            let mut p = base.clone().into_os_string();
            p.push(format!(".{conn_no}"));
            PathBuf::from(p)
        };
        match CaptureWriter::create(&path, start) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!("capture {} not written: {e}", path.display());
                None
            }
        }
    }

    pub fn send_log_enabled(&self) -> bool {
        self.send_log.is_some()
    }

    pub fn log_sends(&self, client_id: i32, entries: &[conn::LogEntry], unix_ns: u128) {
        let Some(log) = &self.send_log else { return };
        let mut w = lock(log);
        let mut result = Ok(());
        for e in entries {
            result = result.and_then(|()| {
                writeln!(
                    w,
                    "{client_id} {} {} {} {unix_ns}",
                    e.req_id, e.first_k, e.count
                )
            });
        }
        if let Err(e) = result.and_then(|()| w.flush()) {
            warn!("send log write failed: {e}");
        }
    }

    pub fn client_count(&self) -> usize {
        lock(&self.registry).clients.len()
    }

    /// Sends a fault to the addressed clients; returns how many got it.
    pub fn fault(&self, target: Target, fault: &Fault) -> usize {
        if let (Fault::Competing(on), Target::All) = (fault, target) {
            self.competing.store(*on, Ordering::Relaxed);
        }
        self.each(target, |h| h.tx.send(Event::Fault(fault.clone())).is_ok())
    }

    /// Drops the addressed connections; returns how many.
    pub fn drop_clients(&self, target: Target) -> usize {
        self.each(target, |h| {
            h.dropped.store(true, Ordering::Relaxed);
            h.stream.shutdown(Shutdown::Both).is_ok()
        })
    }

    /// Cancels the account received since start, by kind (see [`crate::session::CancelCounts`]).
    pub fn cancels(&self) -> serde_json::Value {
        crate::session::CANCELS.to_json()
    }

    /// Collects the stats of the addressed clients.
    pub fn stats(&self, target: Target) -> Vec<ClientStats> {
        let waiting: Vec<Receiver<ClientStats>> = {
            let reg = lock(&self.registry);
            reg.clients
                .iter()
                .filter(|(id, _)| {
                    matches!(target, Target::All)
                        || matches!(target, Target::Client(c) if c == **id)
                })
                .filter_map(|(_, (_, h))| {
                    let (tx, rx) = std::sync::mpsc::channel();
                    h.tx.send(Event::Stats(tx)).ok().map(|()| rx)
                })
                .collect()
        };
        let mut out: Vec<ClientStats> = waiting
            .into_iter()
            .filter_map(|rx| rx.recv_timeout(Duration::from_secs(2)).ok())
            .collect();
        out.sort_by_key(|s| s.client_id);
        out
    }

    fn each(&self, target: Target, mut f: impl FnMut(&ClientHandle) -> bool) -> usize {
        let reg = lock(&self.registry);
        reg.clients
            .iter()
            .filter(|(id, _)| match target {
                Target::All => true,
                Target::Client(c) => c == **id,
            })
            .filter(|(_, (_, h))| f(h))
            .count()
    }
}

/// Server-wide commands for the accept loop.
#[derive(Debug)]
pub enum ServerCommand {
    /// Close the listener and every connection, stay down this long, then listen again on
    /// the same port.
    Restart { down: Duration },
}

/// The accept loop. Returns only on a listener error.
pub fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    commands: Receiver<ServerCommand>,
) -> anyhow::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let mut listener = Some(listener);
    let conn_seq = AtomicU64::new(0);
    loop {
        match commands.try_recv() {
            Ok(ServerCommand::Restart { down }) => {
                info!(?down, "restart: closing the listener and every connection");
                drop(listener.take());
                shared.drop_clients(Target::All);
                // A restarted gateway knows no old client: wait (bounded) until every closed
                // session has left the registry, so a reconnect never meets a stale 326.
                let until = Instant::now() + Duration::from_secs(2);
                while shared.client_count() > 0 && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
                shared.account.lock().forget_all_tbt_requests();
                std::thread::sleep(down);
                let l = TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                listener = Some(l);
                info!("restart: listening again on {addr}");
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
        }
        let Some(l) = &listener else { continue };
        match l.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                let conn_no = conn_seq.fetch_add(1, Ordering::Relaxed);
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("tws-sim-conn-{conn_no}"))
                    .spawn(move || conn::serve(stream, shared, conn_no))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Polling keeps restart simple; 2 ms is far below any client's connect timeout.
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => warn!("accept failed: {e}"),
        }
    }
}
