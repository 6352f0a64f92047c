//! What the socket server's threads share: the [`Gateway`], a handle on each connected
//! client's thread (to inject faults, ask for stats, cut the socket), the send log and the
//! capture settings. The control channel addresses clients through it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::capture::CaptureWriter;
use crate::connection::{ClientStats, Fault, SentTicks};
use crate::gateway::Gateway;

/// What reaches a connection's thread.
#[derive(Debug)]
pub enum Event {
    /// Bytes the reader thread read.
    Bytes(Vec<u8>),
    /// The reader stopped: the client closed (None) or the socket failed.
    ReaderDone(Option<String>),
    Fault(Fault),
    Stats(Sender<ClientStats>),
}

/// How the server reaches a connected client.
#[derive(Debug)]
pub struct ClientHandle {
    pub client_id: i32,
    pub tx: Sender<Event>,
    /// A clone of the socket: shutting it down ends the connection even when its writer is
    /// blocked on a client that does not read.
    pub stream: TcpStream,
    /// Set when the simulator itself closes the connection (drop fault, restart).
    pub dropped: Arc<AtomicBool>,
}

/// Which clients a command addresses.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    All,
    Client(i32),
}

impl Target {
    fn addresses(self, client_id: i32) -> bool {
        match self {
            Target::All => true,
            Target::Client(c) => c == client_id,
        }
    }
}

/// Where the socket server records what it sends.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// Every byte sent: this file for the first connection, FILE.N for the Nth after it.
    pub capture: Option<PathBuf>,
    /// The send time of every tick batch.
    pub send_log: Option<PathBuf>,
}

/// Everything the server's threads share.
#[derive(Debug)]
pub struct Hub {
    pub gateway: Arc<Gateway>,
    /// Connected clients (past START_API) by connection number.
    clients: Mutex<HashMap<u64, ClientHandle>>,
    capture: Option<PathBuf>,
    send_log: Option<Mutex<BufWriter<File>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    pub fn new(gateway: Gateway, recording: Recording) -> anyhow::Result<Self> {
        let send_log = match &recording.send_log {
            Some(p) => Some(Mutex::new(BufWriter::new(File::create(p)?))),
            None => None,
        };
        Ok(Self {
            gateway: Arc::new(gateway),
            clients: Mutex::default(),
            capture: recording.capture,
            send_log,
        })
    }

    pub fn add(&self, conn_no: u64, handle: ClientHandle) {
        lock(&self.clients).insert(conn_no, handle);
    }

    pub fn remove(&self, conn_no: u64) {
        lock(&self.clients).remove(&conn_no);
    }

    pub fn open_capture(&self, conn_no: u64, start: Instant) -> Option<CaptureWriter> {
        let base = self.capture.as_ref()?;
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

    /// One send-log line per batch: `<client_id> <req_id> <first_k> <count> <unix_ns>`.
    pub fn log_sends(
        &self,
        client_id: i32,
        entries: impl Iterator<Item = SentTicks>,
        unix_ns: u128,
    ) {
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

    /// Sends a fault to the addressed clients; returns how many got it.
    pub fn fault(&self, target: Target, fault: &Fault) -> usize {
        if let (Fault::Competing(on), Target::All) = (fault, target) {
            self.gateway.set_competing(*on);
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

    /// Collects the stats of the addressed clients.
    pub fn stats(&self, target: Target) -> Vec<ClientStats> {
        let waiting: Vec<Receiver<ClientStats>> = {
            let clients = lock(&self.clients);
            clients
                .values()
                .filter(|h| target.addresses(h.client_id))
                .filter_map(|h| {
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
        let clients = lock(&self.clients);
        clients
            .values()
            .filter(|h| target.addresses(h.client_id))
            .filter(|h| f(h))
            .count()
    }
}
