//! The state every handler shares: the configuration, the counters, the ring tailer, the
//! engine's control client and the stream slots. Its own module so the handler modules
//! import it from here and `serve` (which builds the router from them) only points down.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ib_stream_ipc::ring::RING_FILE_NAME;

use crate::config::{Settings, TrackedContract};

use super::error::ApiError;
use super::history::HistorySource;
use super::hub::{Hub, HubConfig, SlowPolicy};
use super::params::TickType;
use super::{contracts, control_client, limits, listen, replay, subs};

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
    /// Where the client ids in use are read from (`GET /v3/client-ids`).
    pub client_ids: crate::clientid::IdSettings,
}

impl ServeConfig {
    /// The server configuration of `s`.
    pub fn from_settings(s: &Settings) -> ServeConfig {
        ServeConfig {
            // The ring read: the upstream environment's in passthrough and migration.
            shm_dir: s.ring_dir().to_path_buf(),
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
            client_ids: crate::clientid::IdSettings::of(s),
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

/// How the server may touch the engine whose ring it reads: everything for its own engine;
/// in passthrough (another environment's engine) nothing is written there: no reader
/// registration, and subscriptions only when the settings allow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineAccess {
    /// Claim a slot in the ring's reader registry (a write into the engine's shm directory).
    pub register_reader: bool,
    /// Ask the engine for subscriptions of keys it does not stream already.
    pub may_subscribe: bool,
}

impl Default for EngineAccess {
    fn default() -> Self {
        EngineAccess {
            register_reader: true,
            may_subscribe: true,
        }
    }
}

impl EngineAccess {
    /// The access `s` allows ([`Settings::ring_read_only`], [`Settings::may_subscribe`]).
    pub fn of(s: &Settings) -> EngineAccess {
        EngineAccess {
            register_reader: !s.ring_read_only(),
            may_subscribe: s.may_subscribe(),
        }
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
        AppState::with_access(cfg, history, EngineAccess::default())
    }

    /// [`AppState::new`] with the engine access of `access` (read-only in passthrough).
    pub fn with_access(
        cfg: ServeConfig,
        history: Option<Arc<dyn HistorySource>>,
        access: EngineAccess,
    ) -> AppState {
        let mut hub_cfg = HubConfig::new(cfg.ring_path(), cfg.strings_path());
        hub_cfg.stale_after = cfg.stale_after;
        hub_cfg.register_reader = access.register_reader;
        let hub = Hub::start(hub_cfg);
        let control = Arc::new(control_client::ControlClient::new(
            cfg.control_socket.clone(),
            cfg.control_timeout,
        ));
        let mut subs = subs::SharedSubs::new(
            Arc::clone(&control),
            cfg.identity.clone(),
            cfg.tracked_keys(),
        );
        if !access.may_subscribe {
            subs = subs.read_only(cfg.status_path());
        }
        let subs = Arc::new(subs);
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

    /// One of `ip`'s SSE stream slots (tick and bar streams share the per-address cap),
    /// or the refusal, counted.
    pub fn reserve_sse_slot(
        &self,
        ip: Option<std::net::IpAddr>,
    ) -> Result<Option<super::limits::IpSlot>, ApiError> {
        self.per_ip
            .reserve(ip, super::limits::Counted::Sse, self.cfg.per_ip.sse_streams)
            .inspect_err(|_| {
                self.metrics
                    .sse_refused_per_ip
                    .fetch_add(1, Ordering::Relaxed);
            })
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

#[cfg(test)]
mod tests {
    use super::*;

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
