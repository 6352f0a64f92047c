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
//! - At most `max_connections` are open. A connection is busy while a request of it is in
//!   progress (its response body not finished: every stream; an upgraded WebSocket for good)
//!   and idle otherwise (no complete header yet, or waiting on keep-alive). When a new
//!   connection arrives with the cap reached, the oldest idle connection is closed to make
//!   room (one older than [`EVICT_GRACE`] first); if every open connection is busy, the new
//!   one gets a `503 too_many_connections` and is closed. Streams and requests in progress
//!   are never closed for a newcomer, and a client that sends its request at once (`/health`)
//!   gets in even while the cap is full of idle connections.
//! - Bursts of connections leave freed memory in glibc's arenas: the loop trims the heap
//!   after them ([`super::memory`]).
//! - The cap is lowered to fit the process's file-descriptor limit (`RLIMIT_NOFILE` minus
//!   [`FD_HEADROOM`]), so accept does not run out of descriptors; if it still does (EMFILE),
//!   the oldest idle connection is closed and accepting resumes within milliseconds.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// File descriptors kept free beyond the connection cap: the ring, string table, status
/// region, control socket, stored history files, the runtime's own.
pub const FD_HEADROOM: u64 = 64;
/// Evicted connections whose sockets may still be open while new ones are accepted (well
/// under [`FD_HEADROOM`]).
const PENDING_CLOSES_MAX: usize = 16;
/// How long accepting waits at most for evicted sockets to close, in milliseconds.
const EVICT_CLOSE_WAIT_MS: u32 = 100;

/// A connection this young is evicted only when no older one can be: its request may be in
/// its socket, not yet read (a burst is accepted faster than it is parsed).
pub const EVICT_GRACE: Duration = Duration::from_millis(500);

/// How long shutdown waits for open connections to finish their last messages.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Connection limits of the web server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most open connections (lowered to fit `RLIMIT_NOFILE`).
    pub max_connections: usize,
    /// Time a client has to send a request's complete header.
    pub header_timeout: Duration,
    /// `SO_SNDBUF` of each accepted socket (0: the kernel's autotuning, which grows it to
    /// `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default: some 30,000 ticks a stalled client
    /// would receive late, long after the server's slow-client policy should have acted).
    pub send_buffer_bytes: usize,
}

impl ConnLimits {
    /// The limits `settings` configure (`IB_STREAM_HTTP_MAX_CONNECTIONS`,
    /// `IB_STREAM_HTTP_HEADER_TIMEOUT`, `IB_STREAM_HTTP_SEND_BUFFER_BYTES`).
    pub fn of(settings: &crate::config::Settings) -> Self {
        ConnLimits {
            max_connections: settings.http_max_connections as usize,
            header_timeout: settings.http_header_timeout,
            send_buffer_bytes: settings.http_send_buffer_bytes as usize,
        }
    }
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            send_buffer_bytes: 256 * 1024,
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
    /// Heap trims after bursts of connections ([`super::memory::trim`]).
    pub trims: AtomicU64,
}

#[derive(Debug)]
struct Conn {
    /// Requests being answered (their response bodies not yet done), plus one for good once
    /// the connection is upgraded (WebSocket): only a connection at 0 may be evicted.
    in_flight: Arc<AtomicUsize>,
    close: Arc<Notify>,
    accepted: tokio::time::Instant,
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

    /// Closes the oldest connection with no request in progress, preferring one older than
    /// [`EVICT_GRACE`]; false if every connection has a request in progress.
    fn evict_oldest_idle(&self) -> bool {
        let mut m = self.lock();
        let now = tokio::time::Instant::now();
        let idle = |c: &Conn| c.in_flight.load(Ordering::Acquire) == 0;
        let victim = m
            .iter()
            .find(|(_, c)| idle(c) && now - c.accepted >= EVICT_GRACE)
            .or_else(|| m.iter().find(|(_, c)| idle(c)))
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

/// The answer to a connection over the cap when every slot is busy: written without reading
/// the request, in the API's error shape.
/// Options of an accepted socket. `TCP_NODELAY`: a stream writes one small frame per tick,
/// and Nagle's algorithm would hold each behind the client's delayed ACK. `SO_SNDBUF`
/// (`send_buffer_bytes`, 0 leaves the kernel's autotuning): what the kernel queues for a
/// stalled client is invisible to the stream's queue, so it bounds how late the slow-client
/// policy (conflate or disconnect) notices and how stale the ticks are that the client
/// still receives after it stalled. Failures only cost that, so they are logged at debug.
fn tune_accepted(sock: &tokio::net::TcpStream, send_buffer_bytes: usize) {
    if let Err(e) = sock.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted socket");
    }
    if send_buffer_bytes > 0
        && let Err(e) = nix::sys::socket::setsockopt(
            sock,
            nix::sys::socket::sockopt::SndBuf,
            &send_buffer_bytes,
        )
    {
        tracing::debug!(error = %e, "cannot set SO_SNDBUF on an accepted socket");
    }
}

pub fn refusal() -> &'static [u8] {
    static REFUSAL: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    REFUSAL.get_or_init(|| {
        let body = serde_json::json!({"error": {
            "code": "too_many_connections",
            "message": "every connection slot of this server is busy; retry shortly",
        }})
        .to_string();
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             connection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    })
}

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
    let mut trim_check = tokio::time::interval(super::memory::TRIM_CHECK);
    trim_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut churn_at_trim = 0u64;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => r,
            // Finished connection tasks are reaped as they end (the set does not grow).
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            _ = trim_check.tick() => {
                // Many connections opened or closed since the last trim: give back the
                // memory they used (glibc keeps it otherwise). Closes count, so the trim
                // after a burst comes once its connections are gone.
                let accepted = stats.accepted.load(Ordering::Relaxed);
                let closed = accepted.saturating_sub(stats.open.load(Ordering::Relaxed));
                let churn = accepted + closed;
                if churn - churn_at_trim >= super::memory::TRIM_AFTER_CONNECTIONS {
                    churn_at_trim = churn;
                    stats.trims.fetch_add(1, Ordering::Relaxed);
                    tokio::task::spawn_blocking(super::memory::trim);
                }
                continue;
            }
        };
        let (sock, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if is_fd_exhaustion(&e) {
                    // Free a descriptor rather than wait: the next client may be /health.
                    if table.evict_oldest_idle() {
                        stats.evicted.fetch_add(1, Ordering::Relaxed);
                    }
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
                // An evicted connection leaves the table at once but its socket closes only
                // when its task next runs: in a burst, wait (bounded) for those closes, so the
                // descriptors in use never run past the cap by more than a few and accept
                // never meets EMFILE. The kernel's backlog holds the newcomers meanwhile.
                for _ in 0..EVICT_CLOSE_WAIT_MS {
                    if stats.open.load(Ordering::Relaxed) < (cap + PENDING_CLOSES_MAX) as u64 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            } else {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                // A full socket buffer is not waited for: the refusal is best effort.
                let _ = sock.try_write(refusal());
                continue;
            }
        }
        tune_accepted(&sock, limits.send_buffer_bytes);
        next_id += 1;
        let conn = Conn {
            in_flight: Arc::new(AtomicUsize::new(0)),
            close: Arc::new(Notify::new()),
            accepted: tokio::time::Instant::now(),
        };
        let in_flight = Arc::clone(&conn.in_flight);
        let close = Arc::clone(&conn.close);
        table.lock().insert(next_id, conn);
        stats.open.fetch_add(1, Ordering::Relaxed);
        // The slot lives as long as the socket: an upgraded (WebSocket) connection keeps it.
        let io = SlotIo {
            io: sock,
            _slot: Slot {
                id: next_id,
                table: Arc::clone(&table),
                stats: Arc::clone(&stats),
            },
        };
        tasks.spawn(serve_conn(
            io,
            peer,
            app.clone(),
            limits.header_timeout,
            in_flight,
            close,
            stop.subscribe(),
            Arc::clone(&stats),
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

/// Removes a connection from the table and the open count when its socket closes.
#[derive(Debug)]
struct Slot {
    id: u64,
    table: Arc<Table>,
    stats: Arc<ConnStats>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.lock().remove(&self.id);
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The accepted socket with its slot.
#[derive(Debug)]
struct SlotIo {
    io: TcpStream,
    _slot: Slot,
}

impl AsyncRead for SlotIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for SlotIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Counts a request in flight until its response body is done (dropped by hyper).
#[derive(Debug)]
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(n: &Arc<AtomicUsize>) -> InFlight {
        n.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(n))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds its request's [`InFlight`].
struct Tracked {
    inner: axum::body::Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Largest request header accepted (start line included); larger: 431. It also bounds what
/// a connection buffers before its request is complete.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

#[allow(clippy::too_many_arguments)]
async fn serve_conn(
    io: SlotIo,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    in_flight: Arc<AtomicUsize>,
    close: Arc<Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    stats: Arc<ConnStats>,
) {
    let counter = Arc::clone(&in_flight);
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let guard = InFlight::new(&counter);
        // The peer address feeds the per-address caps.
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move {
            let resp = tower_service::Service::call(&mut app, req).await?;
            Ok::<_, std::convert::Infallible>(resp.map(|b| {
                axum::body::Body::new(Tracked {
                    inner: b,
                    _in_flight: guard,
                })
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(MAX_HEADER_BYTES);
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
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
    match result {
        // Ended, or upgraded: an upgraded socket lives on in its WebSocket task and is
        // never evicted (its slot goes when the socket closes).
        Ok(()) => {
            in_flight.fetch_add(1, Ordering::AcqRel);
        }
        Err(e) => {
            if e.is_timeout() {
                stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A non-loopback bind without a token.
    #[error("binding {0} (beyond loopback) requires a token (IB_STREAM_TOKEN)")]
    TokenRequired(String),
    /// The host is not an IP address or `localhost`.
    #[error("bad bind host `{0}`: expected an IP address or localhost")]
    BadHost(String),
    /// Binding failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("server error: {0}")]
    Serve(std::io::Error),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// The address to bind: loopback unless a token is configured.
pub fn bind_addr(host: &str, port: u16, token: Option<&str>) -> Result<SocketAddr, ServeError> {
    let ip: IpAddr = if host == "localhost" {
        IpAddr::from([127, 0, 0, 1])
    } else {
        host.parse()
            .map_err(|_| ServeError::BadHost(host.to_owned()))?
    };
    if !ip.is_loopback() && token.is_none() {
        return Err(ServeError::TokenRequired(host.to_owned()));
    }
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_beyond_loopback_needs_a_token() {
        assert_eq!(
            bind_addr("127.0.0.1", 8001, None).unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 8001))
        );
        assert_eq!(
            bind_addr("localhost", 8101, None).unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 8101))
        );
        assert!(bind_addr("::1", 8201, None).is_ok());
        assert!(matches!(
            bind_addr("0.0.0.0", 8001, None),
            Err(ServeError::TokenRequired(_))
        ));
        assert!(matches!(
            bind_addr("192.168.1.5", 8001, None),
            Err(ServeError::TokenRequired(_))
        ));
        assert!(bind_addr("0.0.0.0", 8001, Some("0123456789abcdef")).is_ok());
        assert!(matches!(
            bind_addr("my-host", 8001, Some("t")),
            Err(ServeError::BadHost(_))
        ));
    }

    #[test]
    fn the_refusal_is_a_complete_503_in_the_api_error_shape() {
        let text = std::str::from_utf8(refusal()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
    }

    #[tokio::test]
    async fn accepted_sockets_get_the_configured_send_buffer() {
        use nix::sys::socket::{getsockopt, sockopt::SndBuf};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (autotuned, _) = listener.accept().await.unwrap();
        let before = getsockopt(&autotuned, SndBuf).unwrap();
        tune_accepted(&autotuned, 0);
        assert_eq!(
            getsockopt(&autotuned, SndBuf).unwrap(),
            before,
            "0 leaves the kernel's"
        );
        assert!(autotuned.nodelay().unwrap());

        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (capped, _) = listener.accept().await.unwrap();
        tune_accepted(&capped, 64 * 1024);
        // Linux doubles the value for its bookkeeping and reports the doubled figure.
        assert_eq!(getsockopt(&capped, SndBuf).unwrap(), 2 * 64 * 1024);
        assert!(capped.nodelay().unwrap());
    }

    #[test]
    fn the_cap_fits_the_descriptor_limit() {
        let l = ConnLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        assert_eq!(l.effective_max(None), 1024);
        assert_eq!(l.effective_max(Some(20_000)), 1024);
        assert_eq!(l.effective_max(Some(256)), 192);
        assert_eq!(l.effective_max(Some(10)), 1);
    }
}
