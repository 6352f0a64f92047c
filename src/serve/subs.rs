//! Shared subscriptions: a contract's tick type that the engine does not track is subscribed
//! through the control socket once, shared by every client, released when the last leaves.
//!
//! The serve process holds each engine subscription under one identity and counts its own
//! clients; the engine only ever sees one subscribe and one unsubscribe per key. Per-key
//! async locks order a subscribe and an unsubscribe of the same key; nothing here is on the
//! tick path.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::StatusCode;

use super::control_client::{ControlClient, ControlError};
use super::error::ApiError;
use super::messages::now_ns;
use super::params::TickType;

/// A subscription key: contract and tick type.
pub type Key = (u32, TickType);

#[derive(Debug, Clone, Copy)]
struct Entry {
    holders: usize,
    since_ns: i64,
    /// The engine queued the subscription when this process asked for it.
    queued: Option<Queued>,
}

/// The engine holds a subscription back (IB's 15-second rule for tick-by-tick requests on
/// one instrument, or a refusal being retried): what its `subscribe` reply said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    /// `queued` or `retrying`.
    pub state: &'static str,
    /// When the request will be sent, ns since the Unix epoch, when the engine knows.
    pub next_attempt_ns: Option<i64>,
    /// IB's code of the refusal being retried (10190), if any.
    pub ib_code: Option<i64>,
}

impl Queued {
    /// The note of a `subscribe` reply, if it says the request waits.
    pub fn of_reply(reply: &serde_json::Value) -> Option<Queued> {
        let state = match reply.get("state").and_then(serde_json::Value::as_str)? {
            "queued" => "queued",
            "retrying" => "retrying",
            _ => return None,
        };
        Some(Queued {
            state,
            next_attempt_ns: reply
                .get("next_attempt_ns")
                .and_then(serde_json::Value::as_i64),
            ib_code: reply.get("ib_code").and_then(serde_json::Value::as_i64),
        })
    }

    /// Still worth telling a client at `now_ns`: a known attempt time not yet passed.
    fn pending_at(self, now_ns: i64) -> Option<Queued> {
        self.next_attempt_ns
            .is_some_and(|t| t > now_ns)
            .then_some(self)
    }
}

/// One shared subscription as listed by `/v3/streams`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SubInfo {
    /// conId.
    pub con_id: u32,
    /// Tick type name.
    pub tick_type: &'static str,
    /// Client streams holding it.
    pub holders: usize,
    /// Tracked by the engine from its configuration (no control-socket subscription).
    pub tracked: bool,
    /// When the first holder arrived, µs since the epoch.
    pub since: i64,
}

/// The shared-subscription manager.
#[derive(Debug)]
pub struct SharedSubs {
    control: Arc<ControlClient>,
    identity: String,
    tracked: HashSet<Key>,
    /// Set when this server reads another environment's engine and may not subscribe there
    /// (passthrough): the status region of that engine, which says what it streams anyway.
    read_only: Option<std::path::PathBuf>,
    entries: Mutex<BTreeMap<Key, Entry>>,
    locks: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one client's share of a subscription; released (asynchronously) on drop.
#[derive(Debug)]
pub struct Lease {
    subs: Arc<SharedSubs>,
    key: Key,
    /// Set when the engine holds the subscription back: the client is told at once.
    pub queued: Option<Queued>,
}

impl Lease {
    /// The contract and tick type held.
    pub fn key(&self) -> Key {
        self.key
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let subs = Arc::clone(&self.subs);
        let key = self.key;
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move { subs.release(key).await });
            }
            Err(_) => subs.release_counts_only(key),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these maps half-updated (single inserts/removes).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The HTTP error for a failed control request.
pub fn control_error(e: &ControlError) -> ApiError {
    match e {
        ControlError::Refused {
            code,
            message,
            ib_code,
        } => {
            let mut err = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "subscription_refused",
                format!("the engine refused: {code}: {message}"),
            );
            err.ib_code = *ib_code;
            err
        }
        other => ApiError::unavailable("engine_unavailable", engine_unreachable(other)),
    }
}

/// What a client is told when the control socket fails (details stay in the log).
pub fn engine_unreachable(e: &ControlError) -> &'static str {
    match e {
        ControlError::Unavailable { .. } => {
            "the engine is not running (its control socket is absent)"
        }
        ControlError::Timeout(_) => "the engine did not answer in time",
        ControlError::Refused { .. } => "the engine refused the request",
        ControlError::Io(_) | ControlError::BadReply(_) => "the connection to the engine failed",
    }
}

impl SharedSubs {
    /// A manager that subscribes as `identity`; `tracked` keys are the engine's own.
    pub fn new(control: Arc<ControlClient>, identity: String, tracked: HashSet<Key>) -> SharedSubs {
        SharedSubs {
            control,
            identity,
            tracked,
            read_only: None,
            entries: Mutex::new(BTreeMap::new()),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Never subscribes or unsubscribes at the engine: a stream of a key the engine whose
    /// status region is `status_path` does not already stream is refused (passthrough
    /// without `IB_STREAM_UPSTREAM_SUBSCRIBE`).
    pub fn read_only(mut self, status_path: std::path::PathBuf) -> SharedSubs {
        self.read_only = Some(status_path);
        self
    }

    /// Whether the engine in `status_path` holds a live subscription of `key` (queued,
    /// requested or active: someone there already asked for it).
    fn upstream_streams(status_path: &std::path::Path, key: Key) -> bool {
        use ib_stream_ipc::{StatusReader, StatusSnapshot, SubState};
        let Ok(reader) = StatusReader::open(status_path) else {
            return false;
        };
        let mut snap = StatusSnapshot::new_boxed();
        if reader.read(&mut snap).is_err() {
            return false;
        }
        snap.subscriptions().iter().any(|x| {
            x.con_id == key.0
                && TickType::of_kind(x.kind) == Some(key.1)
                && matches!(
                    SubState::from_u8(x.state),
                    Some(
                        SubState::Queued
                            | SubState::Requested
                            | SubState::Active
                            | SubState::Silent
                    )
                )
        })
    }

    /// The refusal of a stream the upstream engine does not carry.
    fn refuse(key: Key) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "upstream_read_only",
            format!(
                "this server reads another engine's ring read-only (IB_STREAM_ROLE \
                 passthrough/migration, or mirror: the engine is on the bridge's host) and \
                 that engine does not stream {} {}; subscribe there (passthrough/migration: \
                 or set IB_STREAM_UPSTREAM_SUBSCRIBE=true to let this server ask it)",
                key.0,
                key.1.name()
            ),
        )
    }

    /// True when the engine tracks this key by configuration.
    pub fn is_tracked(&self, key: Key) -> bool {
        self.tracked.contains(&key)
    }

    fn key_lock(&self, key: Key) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.locks).entry(key).or_default())
    }

    /// Takes a share of `key`, subscribing at the engine if this is the first one.
    pub async fn acquire(self: &Arc<Self>, key: Key) -> Result<Lease, ApiError> {
        let key_lock = self.key_lock(key);
        let _g = key_lock.lock().await;
        let (holders, known) = lock(&self.entries)
            .get(&key)
            .map_or((0, None), |e| (e.holders, e.queued));
        // A later holder learns of a wait the first one was told about, while it lasts.
        let mut queued = known.and_then(|q| q.pending_at(now_ns()));
        if let Some(status) = &self.read_only {
            if holders == 0 && !self.is_tracked(key) && !Self::upstream_streams(status, key) {
                return Err(Self::refuse(key));
            }
        } else if holders == 0 && !self.is_tracked(key) {
            let reply = self
                .control
                .subscribe(&self.identity, key.0, key.1.name())
                .await
                .map_err(|e| {
                    tracing::warn!(con_id = key.0, kind = key.1.name(), error = %e, "subscribe failed");
                    control_error(&e)
                })?;
            queued = Queued::of_reply(&reply);
            tracing::info!(
                con_id = key.0,
                kind = key.1.name(),
                queued = queued.map(|q| q.state),
                "subscribed at the engine"
            );
        }
        lock(&self.entries)
            .entry(key)
            .or_insert(Entry {
                holders: 0,
                since_ns: now_ns(),
                queued,
            })
            .holders += 1;
        Ok(Lease {
            subs: Arc::clone(self),
            key,
            queued,
        })
    }

    /// Takes shares of every tick type of a stream; all or nothing.
    pub async fn acquire_all(
        self: &Arc<Self>,
        con_id: u32,
        types: &[TickType],
    ) -> Result<Vec<Lease>, ApiError> {
        let mut leases = Vec::with_capacity(types.len());
        for t in types {
            // On error the leases taken so far drop and release.
            leases.push(self.acquire((con_id, *t)).await?);
        }
        Ok(leases)
    }

    fn decrement(&self, key: Key) -> bool {
        let mut entries = lock(&self.entries);
        let Some(e) = entries.get_mut(&key) else {
            return false;
        };
        e.holders = e.holders.saturating_sub(1);
        if e.holders == 0 {
            entries.remove(&key);
            return true;
        }
        false
    }

    fn release_counts_only(&self, key: Key) {
        self.decrement(key);
    }

    async fn release(&self, key: Key) {
        let key_lock = self.key_lock(key);
        let _g = key_lock.lock().await;
        if self.decrement(key) && !self.is_tracked(key) && self.read_only.is_none() {
            match self
                .control
                .unsubscribe(&self.identity, key.0, key.1.name())
                .await
            {
                Ok(_) => tracing::info!(
                    con_id = key.0,
                    kind = key.1.name(),
                    "released at the engine"
                ),
                Err(e) => {
                    tracing::warn!(con_id = key.0, kind = key.1.name(), error = %e, "unsubscribe failed")
                }
            }
        }
    }

    /// Every held subscription.
    pub fn list(&self) -> Vec<SubInfo> {
        lock(&self.entries)
            .iter()
            .map(|(k, e)| SubInfo {
                con_id: k.0,
                tick_type: k.1.name(),
                holders: e.holders,
                tracked: self.is_tracked(*k),
                since: e.since_ns / 1000,
            })
            .collect()
    }

    /// Holders of `key` (0 when not held).
    pub fn holders(&self, key: Key) -> usize {
        lock(&self.entries).get(&key).map_or(0, |e| e.holders)
    }
}

/// One client stream, as listed by `/v3/streams`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientInfo {
    /// The stream's id.
    pub stream_id: String,
    /// `sse` or `ws`.
    pub transport: &'static str,
    /// conId.
    pub con_id: u32,
    /// Tick type names.
    pub tick_types: Vec<&'static str>,
    /// Slow-client policy.
    pub slow: &'static str,
    /// Start time, µs since the epoch.
    pub since: i64,
}

/// The client streams now open.
#[derive(Debug, Default)]
pub struct Registry {
    streams: Mutex<BTreeMap<String, ClientInfo>>,
}

/// Removes its stream from the registry on drop.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<Registry>,
    stream_id: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.registry.streams).remove(&self.stream_id);
    }
}

impl Registry {
    /// Adds a stream.
    pub fn register(self: &Arc<Self>, info: ClientInfo) -> Registered {
        let stream_id = info.stream_id.clone();
        lock(&self.streams).insert(stream_id.clone(), info);
        Registered {
            registry: Arc::clone(self),
            stream_id,
        }
    }

    /// Every stream.
    pub fn list(&self) -> Vec<ClientInfo> {
        lock(&self.streams).values().cloned().collect()
    }

    /// Streams open now.
    pub fn len(&self) -> usize {
        lock(&self.streams).len()
    }

    /// True when none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
