//! `ib-stream serve`: the web server. It tails the ring once and streams ticks to browsers
//! and programs over SSE and WebSocket, asks the engine for subscriptions over the control
//! socket, and reports health and metrics.
//!
//! [`app`] builds the whole router from an [`AppState`], so tests call it without a port;
//! [`run`] binds and serves it. The message schema is in `docs/PROTOCOL.md`.

pub mod auth;
pub mod bar_feed;
pub mod bars;
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
pub mod state;
pub mod storage_history;
pub mod subs;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{delete, get};

use crate::config::Settings;
pub use error::ApiError;
pub use history::{HistoryError, HistoryPage, HistoryQuery, HistorySource};
pub use listen::{ServeError, bind_addr};
pub use state::{
    AppState, EngineAccess, Inner, LATENCY_BOUNDS_US, LatencyBatch, LatencyBuckets,
    STATUS_FILE_NAME, STRINGS_FILE_NAME, ServeConfig, ServeMetrics, StreamSlot, WsLimits,
};

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
        .route("/chart", get(page::chart))
        .route("/page/chart.js", get(page::chart_script))
        .route("/page/chart.css", get(page::chart_style))
        .route("/page/lightweight-charts.js", get(page::chart_lib))
        .route("/openapi.json", get(page::openapi))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/background/status", get(ops::background_status))
        .route("/v3/streams", get(ops::streams))
        .route("/v3/client-ids", get(ops::client_ids))
        .route("/v3/backfill", get(ops::backfill))
        .route("/v3/streams/{con_id}", delete(ops::stop_streams))
        .route("/v3/stream/{con_id}", get(sse::stream))
        .route("/v3/ws", get(ws::upgrade))
        .route("/v3/contracts/lookup", get(contracts::lookup))
        .route("/v3/contracts/{con_id}", get(contracts::by_id))
        .route("/v3/history/{con_id}", get(history::query))
        .route("/v3/bars/{con_id}", get(bars::bars))
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
    // History: the own recorder's files, or the upstream's (read-only) when this
    // environment records nothing of its own or reads another's ring.
    let history_root = settings.history_root();
    if settings.history_read_only() {
        tracing::info!(root = %history_root.display(), "history from the upstream storage, read-only");
    }
    let history: Option<Arc<dyn HistorySource>> =
        Some(Arc::new(storage_history::StorageHistory::new(history_root)));
    if settings.ring_read_only() {
        tracing::info!(
            ring = %settings.ring_dir().display(),
            subscribe = settings.may_subscribe(),
            "reading the upstream engine's ring, read-only"
        );
    }
    let state = AppState::with_access(cfg, history, state::EngineAccess::of(settings));
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
