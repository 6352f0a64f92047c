//! The accept loop of `ib-stream serve`: HTTP/1.1 connections with a header timeout and a
//! cap on open connections that keeps room for new requests.
//!
//! `axum::serve` sets no timer on hyper, so hyper's `header_read_timeout` never runs there,
//! and it accepts without bound: idle or half-sent requests were held forever, and enough of
//! them used up the file descriptors so that `/health` could not be answered. Here:
//!
//! - A connection must complete each request's header within `header_timeout` (hyper's
//!   `header_read_timeout`; its clock starts when the connection opens and again when a
//!   keep-alive connection waits for its next request), or it is closed. A connection that
//!   sends nothing is closed the same way.
//! - At most `max_connections` are open. When a new connection arrives with the cap reached,
//!   the oldest connection that has not yet sent a complete request header is closed to make
//!   room; if every open connection has (streams, requests in progress), the new one gets a
//!   `503 too_many_connections` and is closed. Streams and requests that were accepted are
//!   never closed for a newcomer, and a client that sends its request at once (`/health`)
//!   gets in even while the cap is full of idle connections.
//! - The cap is lowered to fit the process's file-descriptor limit (`RLIMIT_NOFILE` minus
//!   [`FD_HEADROOM`]), so accept does not run out of descriptors; if it still does (EMFILE),
//!   the oldest idle connection is closed and accepting resumes within milliseconds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// File descriptors kept free beyond the connection cap: the ring, string table, status
/// region, control socket, stored history files, the runtime's own.
pub const FD_HEADROOM: u64 = 64;

/// How long shutdown waits for open connections to finish their last messages.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Connection limits of the web server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most open connections (lowered to fit `RLIMIT_NOFILE`).
    pub max_connections: usize,
    /// Time a client has to send a request's complete header.
    pub header_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
        }
    }
}

impl ConnLimits {
    /// The cap in force under a file-descriptor limit of `nofile` (`None`: unknown).
    pub fn effective_max(&self, nofile: Option<u64>) -> usize {
        let by_fds = nofile.map_or(usize::MAX, |n| {
            n.saturating_sub(FD_HEADROOM).max(1) as usize
        });
        self.max_connections.min(by_fds).max(1)
    }
}

/// Counters of the accept loop (shown by `/metrics`).
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// The cap in force (0 until the server listens).
    pub cap: AtomicU64,
    /// Idle connections (no complete request header) closed to make room.
    pub evicted: AtomicU64,
    /// Connections answered 503 because every slot held an accepted request.
    pub refused: AtomicU64,
    /// Connections closed for not sending a request header in time.
    pub header_timeouts: AtomicU64,
    /// Accept errors (EMFILE and the like).
    pub accept_errors: AtomicU64,
}

#[derive(Debug)]
struct Conn {
    /// A complete request header arrived: no longer evictable.
    started: Arc<AtomicBool>,
    close: Arc<Notify>,
}

/// Open connections by age (ids increase).
#[derive(Debug, Default)]
struct Table {
    conns: Mutex<BTreeMap<u64, Conn>>,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Conn>> {
        // Each update is one insert or remove: a panic elsewhere leaves it consistent.
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the oldest connection without a complete request header; false if none.
    fn evict_oldest_idle(&self) -> bool {
        let mut m = self.lock();
        let victim = m
            .iter()
            .find(|(_, c)| !c.started.load(Ordering::Acquire))
            .map(|(id, _)| *id);
        match victim.and_then(|id| m.remove(&id)) {
            Some(c) => {
                // `notify_one` keeps the permit if the task is not waiting yet.
                c.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// The answer to a connection over the cap: written without reading the request.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
connection: close\r\n\
retry-after: 1\r\n\
content-length: 111\r\n\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"the server has no free connection slot\",\"status\":503}}";

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    // EMFILE (24) and ENFILE (23): no descriptor for the new socket.
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// The process's soft `RLIMIT_NOFILE`.
pub fn nofile_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft)
        .filter(|n| *n != rlimit::INFINITY)
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open connections end
/// (streams send their `complete`) for up to [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    stats: Arc<ConnStats>,
    shutdown: impl Future<Output = ()>,
) {
    let cap = limits.effective_max(nofile_limit());
    stats.cap.store(cap as u64, Ordering::Relaxed);
    if cap < limits.max_connections {
        tracing::warn!(
            configured = limits.max_connections,
            cap,
            nofile = nofile_limit(),
            "connection cap lowered to fit the file-descriptor limit"
        );
    }
    let table = Arc::new(Table::default());
    let stop = Arc::new(tokio::sync::watch::Sender::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    let mut next_id = 0u64;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => r,
            // Finished connection tasks are reaped as they end (the set does not grow).
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (sock, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if is_fd_exhaustion(&e) {
                    // Free a descriptor rather than wait: the next client may be /health.
                    table.evict_oldest_idle();
                    tracing::warn!(error = %e, "accept: out of file descriptors");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                } else {
                    tracing::debug!(error = %e, "accept failed");
                }
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        if table.lock().len() >= cap {
            if table.evict_oldest_idle() {
                stats.evicted.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                // A full socket buffer is not waited for: the refusal is best effort.
                let _ = sock.try_write(REFUSAL);
                continue;
            }
        }
        if let Err(e) = sock.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted socket");
        }
        next_id += 1;
        let conn = Conn {
            started: Arc::new(AtomicBool::new(false)),
            close: Arc::new(Notify::new()),
        };
        let started = Arc::clone(&conn.started);
        let close = Arc::clone(&conn.close);
        table.lock().insert(next_id, conn);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let guard = OpenGuard {
            id: next_id,
            table: Arc::clone(&table),
            stats: Arc::clone(&stats),
        };
        tasks.spawn(serve_conn(
            sock,
            peer,
            app.clone(),
            limits.header_timeout,
            started,
            close,
            stop.subscribe(),
            guard,
        ));
    }
    drop(listener);
    stop.send_replace(true);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::info!(
            left = tasks.len(),
            "closing connections still open at shutdown"
        );
        tasks.abort_all();
    }
}

/// Removes a connection from the table and the open count when its task ends.
struct OpenGuard {
    id: u64,
    table: Arc<Table>,
    stats: Arc<ConnStats>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.table.lock().remove(&self.id);
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_conn(
    sock: TcpStream,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    started: Arc<AtomicBool>,
    close: Arc<Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    guard: OpenGuard,
) {
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        started.store(true, Ordering::Release);
        // The peer address feeds the per-address caps.
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move { tower_service::Service::call(&mut app, req).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(sock), svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        // Evicted for a newcomer: dropping the connection closes the socket.
        () = close.notified() => return,
        true = async { stop.wait_for(|s| *s).await.is_ok() } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            guard.stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
