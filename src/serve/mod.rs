//! `ib-stream serve`: the web server. It tails the ring once and streams ticks to browsers
//! and programs over SSE and WebSocket, asks the engine for subscriptions over the control
//! socket, and reports health and metrics.
//!
//! [`app`] builds the whole router from an [`AppState`], so tests call it without a port;
//! [`run`] binds and serves it. The message schema is in `docs/PROTOCOL.md`.

pub mod auth;
pub mod contract_service;
pub mod contracts;
pub mod control_client;
pub mod error;
pub mod history;
pub mod hub;
pub mod legacy;
pub mod limits;
pub mod listen;
pub mod memory;
pub mod messages;
pub mod ops;
pub mod page;
pub mod params;
pub mod replay;
pub mod sse;
pub mod storage_history;
pub mod subs;
pub mod ws;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use ib_stream_ipc::ring::RING_FILE_NAME;

use crate::config::{Settings, TrackedContract};
pub use error::ApiError;
pub use history::{HistoryError, HistoryPage, HistoryQuery, HistorySource};
use hub::{Hub, HubConfig, SlowPolicy};
use params::TickType;

/// The string table's file name in the shm directory (next to the ring; the recorder reads
/// the same file).
pub const STRINGS_FILE_NAME: &str = crate::recorder::STRINGS_FILE_NAME;
/// The status region's file name in the shm directory.
pub const STATUS_FILE_NAME: &str = ib_stream_ipc::STATUS_FILE_NAME;

/// WebSocket limits per connection.
#[derive(Clone, Copy, Debug)]
pub struct WsLimits {
    /// Streams one connection may hold.
    pub max_streams: usize,
    /// Client messages per second before the connection is closed (4004).
    pub max_msgs_per_sec: u32,
    /// Largest client message in bytes (larger: closed with 1009).
    pub max_message_bytes: usize,
    /// Malformed client messages tolerated before the connection is closed (4000).
    pub max_bad_messages: u32,
    /// WebSocket connections open at once (more: 503 `too_many_connections`).
    pub max_connections: usize,
}

impl Default for WsLimits {
    fn default() -> Self {
        WsLimits {
            max_streams: 20,
            max_msgs_per_sec: 100,
            max_message_bytes: 16 * 1024,
            max_bad_messages: 8,
            max_connections: 256,
        }
    }
}

/// Everything the server needs, derived from [`Settings`].
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The engine's shared-memory directory (ring, string table, status region).
    pub shm_dir: PathBuf,
    /// The engine's control socket.
    pub control_socket: PathBuf,
    /// Bearer token required on every API request when set.
    pub token: Option<String>,
    /// Most concurrent client streams (SSE streams and WebSocket subscriptions).
    pub max_streams: usize,
    /// Contracts the engine tracks by configuration.
    pub tracked: Vec<TrackedContract>,
    /// Messages queued per client before its slow-client policy applies.
    pub queue_capacity: usize,
    /// Interval of `heartbeat` messages.
    pub heartbeat: Duration,
    /// The default slow-client policy.
    pub default_slow: SlowPolicy,
    /// WebSocket limits.
    pub ws: WsLimits,
    /// Caps per remote address.
    pub per_ip: limits::PerIpLimits,
    /// Where contract lookups are cached.
    pub contract_cache_dir: PathBuf,
    /// How long a cached lookup stays fresh.
    pub contract_cache_ttl: Duration,
    /// Longest wait for a control-socket reply.
    pub control_timeout: Duration,
    /// A ring or status heartbeat older than this is stale.
    pub stale_after: Duration,
    /// The identity under which this process holds engine subscriptions.
    pub identity: String,
}

impl ServeConfig {
    /// The server configuration of `s`.
    pub fn from_settings(s: &Settings) -> ServeConfig {
        ServeConfig {
            shm_dir: s.shm_dir.clone(),
            control_socket: s.control_socket(),
            token: s.token.clone(),
            max_streams: s.max_streams as usize,
            tracked: s.tracked_contracts.clone(),
            queue_capacity: 1024,
            heartbeat: Duration::from_secs(15),
            default_slow: SlowPolicy::Conflate,
            ws: WsLimits::default(),
            per_ip: limits::PerIpLimits::default(),
            contract_cache_dir: s.storage_path.join("cache").join("contracts"),
            contract_cache_ttl: Duration::from_secs(24 * 3600),
            control_timeout: Duration::from_secs(5),
            stale_after: Duration::from_secs(5),
            identity: format!("serve-{}", std::process::id()),
        }
    }

    /// The ring file.
    pub fn ring_path(&self) -> PathBuf {
        self.shm_dir.join(RING_FILE_NAME)
    }

    /// The string table file.
    pub fn strings_path(&self) -> PathBuf {
        self.shm_dir.join(STRINGS_FILE_NAME)
    }

    /// The status region file.
    pub fn status_path(&self) -> PathBuf {
        self.shm_dir.join(STATUS_FILE_NAME)
    }

    fn tracked_keys(&self) -> HashSet<subs::Key> {
        let mut keys = HashSet::new();
        for c in &self.tracked {
            for k in &c.kinds {
                if let Some(t) = TickType::of_kind(*k as u8) {
                    keys.insert((c.con_id, t));
                }
            }
        }
        keys
    }
}

/// Counters of the web side (the tailer has its own in [`hub::HubStats`]).
#[derive(Debug, Default)]
pub struct ServeMetrics {
    /// SSE streams opened.
    pub sse_opened: AtomicU64,
    /// WebSocket connections accepted.
    pub ws_connections: AtomicU64,
    /// WebSocket connections open now.
    pub ws_open: AtomicU64,
    /// WebSocket subscriptions made.
    pub ws_subscriptions: AtomicU64,
    /// Ticks written to SSE clients.
    pub sse_ticks: AtomicU64,
    /// Ticks written to WebSocket clients.
    pub ws_ticks: AtomicU64,
    /// Client messages received over WebSocket.
    pub ws_messages_in: AtomicU64,
    /// WebSocket connections closed for breaking a limit (4000, 4004, 1009).
    pub ws_limit_closes: AtomicU64,
    /// Streams refused because `max_streams` were open.
    pub streams_refused: AtomicU64,
    /// Streams closed as slow consumers.
    pub slow_closes: AtomicU64,
    /// Replays from stored history started (`since=`, or a resume older than the ring).
    pub history_replays: AtomicU64,
    /// Ticks sent from stored history by those replays.
    pub history_ticks: AtomicU64,
    /// SSE streams refused by the cap per remote address.
    pub sse_refused_per_ip: AtomicU64,
    /// WebSocket connections refused by the cap per remote address.
    pub ws_refused_per_ip: AtomicU64,
    /// Tick delivery latency: ring receive time to write into the client's stream, µs.
    pub delivery_us: LatencyBuckets,
}

/// A fixed-bucket latency histogram in µs (Prometheus `le` buckets).
#[derive(Debug, Default)]
pub struct LatencyBuckets {
    counts: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

/// Upper bounds of [`LatencyBuckets`], µs.
pub const LATENCY_BOUNDS_US: [u64; 10] =
    [50, 100, 250, 500, 1000, 2500, 5000, 10_000, 50_000, 250_000];

fn latency_bucket(us: u64) -> usize {
    LATENCY_BOUNDS_US
        .iter()
        .position(|b| us <= *b)
        .unwrap_or(LATENCY_BOUNDS_US.len())
}

/// Latencies counted by one stream and added to the shared [`LatencyBuckets`] once per
/// write: the counters are shared by every connection, and an atomic add per tick per
/// client is a contended cache line at 100k deliveries per second.
#[derive(Debug, Default)]
pub struct LatencyBatch {
    counts: [u64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: u64,
    n: u64,
}

impl LatencyBatch {
    /// Counts one value.
    pub fn record(&mut self, us: u64) {
        self.counts[latency_bucket(us)] += 1;
        self.sum_us += us;
        self.n += 1;
    }
}

impl LatencyBuckets {
    /// Counts one value.
    pub fn record(&self, us: u64) {
        self.counts[latency_bucket(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Adds a stream's batch and empties it.
    pub fn merge(&self, batch: &mut LatencyBatch) {
        if batch.n == 0 {
            return;
        }
        for (c, n) in self.counts.iter().zip(batch.counts.iter_mut()) {
            if *n > 0 {
                c.fetch_add(*n, Ordering::Relaxed);
                *n = 0;
            }
        }
        self.sum_us.fetch_add(batch.sum_us, Ordering::Relaxed);
        batch.sum_us = 0;
        batch.n = 0;
    }

    /// Cumulative counts per bound (the last is `+Inf`), and the sum.
    pub fn cumulative(&self) -> (Vec<u64>, u64) {
        let mut acc = 0;
        let v = self
            .counts
            .iter()
            .map(|c| {
                acc += c.load(Ordering::Relaxed);
                acc
            })
            .collect();
        (v, self.sum_us.load(Ordering::Relaxed))
    }
}

/// Shared state of every handler.
#[derive(Debug)]
pub struct Inner {
    /// Configuration.
    pub cfg: ServeConfig,
    /// The ring tailer.
    pub hub: Hub,
    /// The engine's control socket.
    pub control: Arc<control_client::ControlClient>,
    /// Shared subscriptions.
    pub subs: Arc<subs::SharedSubs>,
    /// Open client streams.
    pub registry: Arc<subs::Registry>,
    /// Contract lookups cached on disk.
    pub contracts: contracts::ContractCache,
    /// Stored history, when a storage library is plugged in.
    pub history: Option<Arc<dyn HistorySource>>,
    /// Counters.
    pub metrics: ServeMetrics,
    /// Streams open now (for `max_streams`).
    pub active_streams: AtomicUsize,
    /// Streams and connections per remote address.
    pub per_ip: Arc<limits::IpCounts>,
    /// Streams replaying history (not yet in the tailer).
    pub replays: Arc<replay::Replays>,
    /// The accept loop's counters (connections open, evicted, refused, timed out).
    pub connections: Arc<listen::ConnStats>,
    next_stream: AtomicU64,
    /// When the server started.
    pub started: Instant,
}

/// The state handed to every handler (cheap to clone).
#[derive(Clone, Debug)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Holds one of the `max_streams` slots; frees it on drop.
#[derive(Debug)]
pub struct StreamSlot(AppState);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.active_streams.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AppState {
    /// Builds the state and starts the ring tailer (needs a tokio runtime).
    pub fn new(cfg: ServeConfig, history: Option<Arc<dyn HistorySource>>) -> AppState {
        let mut hub_cfg = HubConfig::new(cfg.ring_path(), cfg.strings_path());
        hub_cfg.stale_after = cfg.stale_after;
        let hub = Hub::start(hub_cfg);
        let control = Arc::new(control_client::ControlClient::new(
            cfg.control_socket.clone(),
            cfg.control_timeout,
        ));
        let subs = Arc::new(subs::SharedSubs::new(
            Arc::clone(&control),
            cfg.identity.clone(),
            cfg.tracked_keys(),
        ));
        let contracts =
            contracts::ContractCache::new(cfg.contract_cache_dir.clone(), cfg.contract_cache_ttl);
        AppState(Arc::new(Inner {
            cfg,
            hub,
            control,
            subs,
            registry: Arc::new(subs::Registry::default()),
            contracts,
            history,
            metrics: ServeMetrics::default(),
            active_streams: AtomicUsize::new(0),
            per_ip: Arc::default(),
            replays: Arc::default(),
            connections: Arc::default(),
            next_stream: AtomicU64::new(1),
            started: Instant::now(),
        }))
    }

    /// A new stream id (`sse-7`, `ws-3-2`).
    pub fn new_stream_id(&self, prefix: &str) -> String {
        format!(
            "{prefix}-{}",
            self.next_stream.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Takes a stream slot, or 503 `too_many_streams`.
    pub fn reserve_stream(&self) -> Result<StreamSlot, ApiError> {
        let max = self.cfg.max_streams;
        let taken = self
            .active_streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(StreamSlot(self.clone())),
            Err(_) => {
                self.metrics.streams_refused.fetch_add(1, Ordering::Relaxed);
                Err(ApiError::unavailable(
                    "too_many_streams",
                    format!("all {max} streams of this server are in use"),
                ))
            }
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint (see /openapi.json)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint (see /openapi.json)",
    )
}

/// The whole web application.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/page/app.js", get(page::script))
        .route("/page/style.css", get(page::style))
        .route("/openapi.json", get(page::openapi))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/background/status", get(ops::background_status))
        .route("/v3/streams", get(ops::streams))
        .route("/v3/streams/{con_id}", delete(ops::stop_streams))
        .route("/v3/stream/{con_id}", get(sse::stream))
        .route("/v3/ws", get(ws::upgrade))
        .route("/v3/contracts/lookup", get(contracts::lookup))
        .route("/v3/contracts/{con_id}", get(contracts::by_id))
        .route("/v3/history/{con_id}", get(history::query))
        // The original IB-Stream's and ib-contract's routes (docs/PROTOCOL.md maps them).
        .merge(legacy::routes())
        .merge(contract_service::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .with_state(state)
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

/// Command-line options of `ib-stream serve` (override the configuration).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Bind address (default: IB_STREAM_SERVE_HOST, 127.0.0.1).
    #[arg(long)]
    pub host: Option<String>,
    /// Port (default: IB_STREAM_SERVE_PORT, per environment).
    #[arg(long)]
    pub port: Option<u16>,
    /// Messages queued per client before its slow-client policy applies.
    #[arg(long, default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Seconds between heartbeat messages.
    #[arg(long, default_value_t = 15)]
    pub heartbeat_secs: u64,
    /// Concurrent SSE streams per remote address (0: no cap; behind a proxy every client
    /// shares its address).
    #[arg(long, default_value_t = limits::PerIpLimits::default().sse_streams)]
    pub max_sse_per_ip: usize,
    /// Concurrent WebSocket connections per remote address (0: no cap).
    #[arg(long, default_value_t = limits::PerIpLimits::default().ws_connections)]
    pub max_ws_per_ip: usize,
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

/// The listener `ib-stream serve` accepts on: every accepted socket gets `TCP_NODELAY`.
///
/// A stream writes one small frame per tick; with Nagle's algorithm a frame written while
/// the previous one is unacknowledged waits for the client's (delayed) ACK, which put tens of
/// milliseconds on ticks paced a millisecond apart.
pub fn nodelay_listener(
    listener: tokio::net::TcpListener,
) -> axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)> {
    use axum::serve::ListenerExt;
    fn tap(s: &mut tokio::net::TcpStream) {
        if let Err(e) = s.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted socket");
        }
    }
    listener.tap_io(tap as fn(&mut tokio::net::TcpStream))
}

/// Binds and serves until Ctrl-C / SIGTERM.
pub async fn run(settings: &Settings, args: &ServeArgs) -> Result<(), ServeError> {
    let mut cfg = ServeConfig::from_settings(settings);
    cfg.queue_capacity = args.queue_capacity.max(1);
    cfg.heartbeat = Duration::from_secs(args.heartbeat_secs.max(1));
    cfg.per_ip = limits::PerIpLimits {
        sse_streams: args.max_sse_per_ip,
        ws_connections: args.max_ws_per_ip,
    };
    let host = args
        .host
        .clone()
        .unwrap_or_else(|| settings.serve_host.clone());
    let port = args.port.unwrap_or(settings.serve_port);
    let addr = bind_addr(&host, port, cfg.token.as_deref())?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    // The recorder's files answer /v3/history when storage is enabled.
    let history: Option<Arc<dyn HistorySource>> = settings
        .enable_storage
        .then(|| Arc::new(storage_history::StorageHistory::new(&settings.storage_path)) as _);
    let state = AppState::new(cfg, history);
    let hub = state.hub.clone();
    let (contract_stop, contract_server) =
        contract_service::start(settings, &host, state.clone()).await?;
    // The bound address (port 0 picks a free one: tests and supervisors read it here).
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %bound, "serving");
    let shutdown = async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let term = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        let _ = contract_stop.send(true);
        // Streams end with `complete{server_shutdown}` before the server stops.
        hub.shutdown();
    };
    let limits = listen::ConnLimits::of(settings);
    let stats = Arc::clone(&state.connections);
    listen::serve(listener, app(state), limits, stats, shutdown).await;
    contract_service::finish(contract_server).await
}

/// Runs the server on its own multi-threaded runtime (for `main`).
pub fn run_blocking(settings: &Settings, args: &ServeArgs) -> Result<(), ServeError> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&settings.log_level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    rt.block_on(run(settings, args))
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
    fn latency_buckets_are_cumulative() {
        let b = LatencyBuckets::default();
        for us in [10, 60, 60, 2000, 1_000_000] {
            b.record(us);
        }
        let (cum, sum) = b.cumulative();
        assert_eq!(cum.len(), LATENCY_BOUNDS_US.len() + 1);
        assert_eq!(cum[0], 1); // <= 50
        assert_eq!(cum[1], 3); // <= 100
        assert_eq!(cum[5], 4); // <= 2500
        assert_eq!(*cum.last().unwrap(), 5);
        assert_eq!(sum, 10 + 60 + 60 + 2000 + 1_000_000);

        // A stream's batch adds the same counts, once.
        let merged = LatencyBuckets::default();
        let mut batch = LatencyBatch::default();
        for us in [10, 60, 60, 2000, 1_000_000] {
            batch.record(us);
        }
        merged.merge(&mut batch);
        merged.merge(&mut batch);
        assert_eq!(merged.cumulative(), b.cumulative());
    }
}
