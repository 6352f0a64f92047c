//! `GET /v3/ws`: many streams per WebSocket connection, the same messages as SSE.
//!
//! Client requests (text frames, JSON objects; `id` is echoed, any string or number):
//! `{"type":"subscribe","id":1,"contract_id":711280073,"tick_types":["bid_ask"],
//!   "limit":100,"timeout":60,"slow":"conflate","after_seq":"22872d15be0476b4-1234","since":"5m"}`
//! (`after_seq`: the resume token naming the engine run, or a plain number of the current run),
//! `{"type":"unsubscribe","id":2,"stream_id":"ws-4"}`, `{"type":"ping","id":3}`.
//! Close codes are listed in `docs/PROTOCOL.md`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use super::error::ApiError;
use super::hub::{CloseReason, Out, SinkFlag, SlowPolicy};
use super::limits::{ClientIp, Counted};
use super::messages::{self, CompleteReason, now_ns};
use super::params::{self, DEFAULT_TICK_TYPES, Params, TickType};
use super::replay::Resume;
use super::sse::{self, StreamCounter, StreamHold, StreamOptions};
use super::state::{AppState, LatencyBatch};

/// Normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// The server is going away.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Queued messages written per flush at most.
const MAX_BURST: usize = 256;
/// A message larger than the limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Too many malformed messages.
pub const CLOSE_INVALID_MESSAGE: u16 = 4000;
/// More client messages per second than allowed.
pub const CLOSE_RATE_LIMIT: u16 = 4004;
/// The client's address already has the most WebSocket connections allowed per address.
pub const CLOSE_TOO_MANY_FROM_ADDRESS: u16 = 4029;

/// One of the `max_connections` WebSocket slots; freed on drop (also when the upgrade
/// fails and its callback is dropped unrun).
#[derive(Debug)]
pub struct WsSlot(AppState);

impl WsSlot {
    /// Takes one of the server's `max_connections` WebSocket slots (shared by `/v3/ws` and
    /// the bars stream), or says they are all in use.
    pub fn reserve(st: &AppState) -> Result<WsSlot, ApiError> {
        let max = st.cfg.ws.max_connections;
        if st
            .metrics
            .ws_open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max as u64).then_some(n + 1)
            })
            .is_err()
        {
            return Err(ApiError::unavailable(
                "too_many_connections",
                format!("all {max} WebSocket connections of this server are in use"),
            ));
        }
        Ok(WsSlot(st.clone()))
    }
}

impl Drop for WsSlot {
    fn drop(&mut self) {
        self.0.metrics.ws_open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `GET /v3/ws`: upgrades to a WebSocket.
pub async fn upgrade(
    State(st): State<AppState>,
    RawQuery(query): RawQuery,
    ClientIp(ip): ClientIp,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let ip_slot = match st
        .per_ip
        .reserve(ip, Counted::Ws, st.cfg.per_ip.ws_connections)
    {
        Ok(s) => s,
        Err(e) => {
            st.metrics.ws_refused_per_ip.fetch_add(1, Ordering::Relaxed);
            // Browsers cannot read an HTTP status of a refused upgrade: accept it, say why
            // in an `error` and close with 4029.
            let msg = api_error(&Value::Null, &e);
            return Ok(ws.on_upgrade(move |mut socket| async move {
                let _ = socket.send(text(&msg)).await;
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: CLOSE_TOO_MANY_FROM_ADDRESS,
                        reason: Utf8Bytes::from("too many connections from this address"),
                    })))
                    .await;
            }));
        }
    };
    let limits = st.cfg.ws;
    let slot = WsSlot::reserve(&st)?;
    Ok(ws
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        .on_upgrade(move |socket| async move {
            st.metrics.ws_connections.fetch_add(1, Ordering::Relaxed);
            Conn::new(st.clone(), socket).run().await;
            drop(slot);
            drop(ip_slot);
        }))
}

struct WsStream {
    con_id: u32,
    kinds: params::KindSet,
    flag: Arc<SinkFlag>,
    counter: StreamCounter,
    _hold: StreamHold,
}

/// A subscribe waiting for the engine (answered when it completes). Its task is not
/// aborted when the connection goes: cancelling an engine subscribe half-way could leave the
/// engine subscribed with no holder counted; finished, its shares are dropped and released.
struct PendingSub {
    con_id: u32,
    kinds: params::KindSet,
}

/// A finished subscribe preparation.
struct SubDone {
    tag: u32,
    id: Value,
    stream_id: Arc<str>,
    con_id: u32,
    opts: StreamOptions,
    result: Result<sse::Prepared, ApiError>,
}

struct Conn {
    st: AppState,
    socket: WebSocket,
    conn_no: u64,
    tx: mpsc::Sender<Out>,
    rx: mpsc::Receiver<Out>,
    notify: Arc<Notify>,
    streams: HashMap<u32, WsStream>,
    pending: HashMap<u32, PendingSub>,
    done_tx: mpsc::UnboundedSender<SubDone>,
    done_rx: mpsc::UnboundedReceiver<SubDone>,
    next_tag: u32,
    window: (Instant, u32),
    bad: u32,
    /// Ticks of the current burst, counted in the shared metrics once it is flushed.
    burst_ticks: u64,
    /// Their latencies, likewise.
    latency: LatencyBatch,
}

/// Why the connection loop stops.
enum Stop {
    /// The peer left or the socket failed: nothing more to send.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

pub(crate) fn text(json: &Bytes) -> Message {
    // Our encoders write UTF-8 only; an impossible failure sends an empty object.
    Message::Text(Utf8Bytes::try_from(json.clone()).unwrap_or_else(|_| Utf8Bytes::from("{}")))
}

fn request_id(v: &Value) -> Result<Value, String> {
    match v.get("id") {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(Value::Number(n)) => Ok(Value::Number(n.clone())),
        Some(Value::String(s)) if s.len() <= 128 => Ok(Value::String(s.clone())),
        Some(_) => Err("`id` must be a number or a string of at most 128 characters".into()),
    }
}

fn reply_error(id: &Value, code: &str, message: &str, stream_id: Option<&str>) -> Bytes {
    let mut v = json!({
        "type": "error",
        "id": id,
        "code": code,
        "message": message,
        "recoverable": true,
    });
    if let Some(s) = stream_id {
        v["stream_id"] = json!(s);
    }
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

fn field_u64(v: &Value, key: &str, min: u64, max: u64) -> Result<Option<u64>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => match x.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(format!("`{key}` must be an integer from {min} to {max}")),
        },
    }
}

/// `after_seq`: a resume token `"<epoch>-<seq>"` (the run as 16 hex digits, as in
/// `info{stream_start}.epoch`, `info{live}.epoch` and `gap{writer_restart}.new_epoch`), or a
/// plain number (a sequence of the current run).
fn resume_point(v: &Value) -> Result<Option<Resume>, String> {
    match v.get("after_seq") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|seq| Some(Resume { epoch: None, seq }))
            .ok_or_else(|| "`after_seq` must be a non-negative integer or a resume token".into()),
        Some(Value::String(t)) => Resume::parse(t).map(Some).ok_or_else(|| {
            format!(
                "`after_seq` must be a resume token `<epoch>-<seq>` or a number, got `{}`",
                params::truncate(t)
            )
        }),
        Some(_) => Err("`after_seq` must be a resume token `<epoch>-<seq>` or a number".into()),
    }
}

fn subscribe_options(v: &Value, default_slow: SlowPolicy) -> Result<(u32, StreamOptions), String> {
    const KNOWN: [&str; 9] = [
        "type",
        "id",
        "contract_id",
        "tick_types",
        "limit",
        "timeout",
        "slow",
        "after_seq",
        "since",
    ];
    if let Some(obj) = v.as_object()
        && let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str()))
    {
        return Err(format!("unknown field `{}`", params::truncate(k)));
    }
    let con_id = match v.get("contract_id").and_then(Value::as_u64) {
        Some(c) if c > 0 && c <= u64::from(u32::MAX) => c as u32,
        _ => return Err("`contract_id` must be a positive integer below 2^32".into()),
    };
    let types = match v.get("tick_types") {
        None | Some(Value::Null) => DEFAULT_TICK_TYPES.to_vec(),
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= TickType::ALL.len() => {
            let names: Option<Vec<&str>> = a.iter().map(Value::as_str).collect();
            let names = names.ok_or("`tick_types` must be strings")?;
            params::tick_types(&names.join(",")).map_err(|e| e.message)?
        }
        Some(_) => return Err("`tick_types` must be a non-empty array of tick type names".into()),
    };
    let slow = match v.get("slow") {
        None | Some(Value::Null) => default_slow,
        Some(Value::String(s)) => SlowPolicy::from_name(s)
            .ok_or_else(|| "`slow` must be conflate or disconnect".to_string())?,
        Some(_) => return Err("`slow` must be conflate or disconnect".into()),
    };
    Ok((
        con_id,
        StreamOptions {
            types,
            limit: field_u64(v, "limit", 1, sse::MAX_LIMIT)?,
            timeout_s: field_u64(v, "timeout", 1, sse::MAX_TIMEOUT_S)?,
            slow,
            after: resume_point(v)?,
            since_ns: match v.get("since") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(params::since(s, now_ns()).map_err(|e| e.message)?),
                Some(Value::Number(n)) => {
                    Some(params::since(&n.to_string(), now_ns()).map_err(|e| e.message)?)
                }
                Some(_) => return Err("`since` must be a time, a unix time or a duration".into()),
            },
        },
    ))
}

impl Conn {
    fn new(st: AppState, socket: WebSocket) -> Conn {
        let (tx, rx) = mpsc::channel(st.cfg.queue_capacity);
        let conn_no = st.metrics.ws_connections.load(Ordering::Relaxed);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Conn {
            st,
            socket,
            conn_no,
            tx,
            rx,
            notify: Arc::new(Notify::new()),
            streams: HashMap::new(),
            pending: HashMap::new(),
            done_tx,
            done_rx,
            next_tag: 1,
            window: (Instant::now(), 0),
            bad: 0,
            burst_ticks: 0,
            latency: LatencyBatch::default(),
        }
    }

    async fn send(&mut self, json: &Bytes) -> Result<(), Stop> {
        self.socket.send(text(json)).await.map_err(|_| Stop::Gone)
    }

    /// Queues a message without flushing (ticks in a burst: one flush per burst).
    async fn feed(&mut self, json: &Bytes) -> Result<(), Stop> {
        self.socket.feed(text(json)).await.map_err(|_| Stop::Gone)
    }

    /// Handles a message from the queue and whatever else is already waiting (up to a
    /// bound, so that client requests are still read), then flushes once.
    async fn on_burst(&mut self, first: Out) -> Result<(), Stop> {
        // One clock read per burst: its ticks leave together.
        let now_us = now_ns() / 1000;
        self.on_out(first, now_us).await?;
        for _ in 0..MAX_BURST {
            match self.rx.try_recv() {
                Ok(out) => self.on_out(out, now_us).await?,
                Err(_) => break,
            }
        }
        let flushed = self.socket.flush().await.map_err(|_| Stop::Gone);
        let m = &self.st.metrics;
        m.ws_ticks.fetch_add(self.burst_ticks, Ordering::Relaxed);
        m.delivery_us.merge(&mut self.latency);
        self.burst_ticks = 0;
        flushed
    }

    async fn run(mut self) {
        let limits = self.st.cfg.ws;
        let hello = messages::info(
            None,
            "connected",
            json!({
                "protocol": "v3",
                "limits": {
                    "max_streams": limits.max_streams,
                    "max_messages_per_second": limits.max_msgs_per_sec,
                    "max_message_bytes": limits.max_message_bytes,
                },
                "heartbeat_seconds": self.st.cfg.heartbeat.as_secs(),
            }),
        );
        let stop = match self.send(&hello).await {
            Ok(()) => self.serve().await,
            Err(s) => s,
        };
        // Streams end with their `complete` where the socket still works.
        let tags: Vec<u32> = self.streams.keys().copied().collect();
        if let Stop::Close(code, why) = stop {
            if code == CLOSE_GOING_AWAY {
                for tag in tags {
                    let _ = self.end_stream(tag, CompleteReason::ServerShutdown).await;
                }
            }
            if code == CLOSE_TOO_BIG || code >= 4000 {
                self.st
                    .metrics
                    .ws_limit_closes
                    .fetch_add(1, Ordering::Relaxed);
            }
            let _ = self
                .socket
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: Utf8Bytes::from(why),
                })))
                .await;
        }
    }

    async fn serve(&mut self) -> Stop {
        let period = self.st.cfg.heartbeat;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Err(s) = self.reap_closed().await {
                return s;
            }
            if self.st.hub.stats().sinks.load(Ordering::Relaxed) == 0 && !self.st.hub.is_running() {
                return Stop::Close(CLOSE_GOING_AWAY, "server shutting down");
            }
            let deadline = self
                .streams
                .values()
                .filter_map(|s| s.counter.deadline)
                .min();
            let notify = Arc::clone(&self.notify);
            let step = tokio::select! {
                biased;
                _ = notify.notified() => Ok(()),
                m = self.socket.recv() => match m {
                    None => Err(Stop::Gone),
                    Some(Err(e)) => Err(classify(&e)),
                    Some(Ok(msg)) => self.on_client(msg).await,
                },
                Some(out) = self.rx.recv() => self.on_burst(out).await,
                Some(done) = self.done_rx.recv() => self.on_subscribed(done).await,
                _ = heartbeat.tick() => {
                    let head = self.st.hub.stats().ring_head.load(Ordering::Relaxed);
                    self.send(&messages::heartbeat(now_ns(), head)).await
                }
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => self.timeouts().await,
            };
            if let Err(s) = step {
                return s;
            }
        }
    }

    async fn reap_closed(&mut self) -> Result<(), Stop> {
        let closed: Vec<(u32, CloseReason)> = self
            .streams
            .iter()
            .filter_map(|(t, s)| s.flag.get().map(|r| (*t, r)))
            .collect();
        for (tag, why) in closed {
            if why == CloseReason::ServerShutdown {
                return Err(Stop::Close(CLOSE_GOING_AWAY, "server shutting down"));
            }
            if let Some(s) = self.streams.remove(&tag) {
                if why == CloseReason::SlowConsumer {
                    self.st.metrics.slow_closes.fetch_add(1, Ordering::Relaxed);
                }
                for (_, json) in s.counter.closed(why) {
                    self.send(&json).await?;
                }
            }
        }
        Ok(())
    }

    async fn timeouts(&mut self) -> Result<(), Stop> {
        let now = tokio::time::Instant::now();
        let due: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| s.counter.deadline.is_some_and(|d| d <= now))
            .map(|(t, _)| *t)
            .collect();
        for tag in due {
            self.end_stream(tag, CompleteReason::Timeout).await?;
        }
        Ok(())
    }

    async fn end_stream(&mut self, tag: u32, reason: CompleteReason) -> Result<(), Stop> {
        if let Some(s) = self.streams.remove(&tag) {
            let c = s.counter.complete(reason);
            drop(s);
            self.send(&c).await?;
        }
        Ok(())
    }

    async fn on_out(&mut self, out: Out, now_us: i64) -> Result<(), Stop> {
        match out {
            Out::Tick { tag, seq, json, .. } => {
                // Ticks still queued for a stream that was just unsubscribed are dropped.
                let Some(s) = self.streams.get_mut(&tag) else {
                    return Ok(());
                };
                let done = s.counter.tick(seq);
                self.feed(&json).await?;
                self.burst_ticks += 1;
                if let Some(us) = sse::latency_us(&json, now_us) {
                    self.latency.record(us);
                }
                if done {
                    self.end_stream(tag, CompleteReason::LimitReached).await?;
                }
            }
            Out::History { tag, seq, json, .. } => {
                let Some(s) = self.streams.get_mut(&tag) else {
                    return Ok(());
                };
                let done = s.counter.tick(seq);
                self.feed(&json).await?;
                self.burst_ticks += 1;
                if done {
                    self.end_stream(tag, CompleteReason::LimitReached).await?;
                }
            }
            Out::Control { tag, json, end, .. } => {
                if !self.streams.contains_key(&tag) {
                    return Ok(());
                }
                self.feed(&json).await?;
                if end {
                    self.end_stream(tag, CompleteReason::Error).await?;
                }
            }
        }
        Ok(())
    }

    /// Counts a client message against the rate limit; `Err` closes with 4004.
    fn rate_check(&mut self) -> Result<(), Stop> {
        self.st
            .metrics
            .ws_messages_in
            .fetch_add(1, Ordering::Relaxed);
        let (start, n) = self.window;
        if start.elapsed() >= std::time::Duration::from_secs(1) {
            self.window = (Instant::now(), 1);
            return Ok(());
        }
        self.window.1 = n + 1;
        if self.window.1 > self.st.cfg.ws.max_msgs_per_sec {
            return Err(Stop::Close(CLOSE_RATE_LIMIT, "rate limit exceeded"));
        }
        Ok(())
    }

    async fn bad_message(&mut self, id: &Value, message: &str) -> Result<(), Stop> {
        self.bad += 1;
        self.send(&reply_error(id, "invalid_message", message, None))
            .await?;
        if self.bad >= self.st.cfg.ws.max_bad_messages {
            return Err(Stop::Close(
                CLOSE_INVALID_MESSAGE,
                "too many invalid messages",
            ));
        }
        Ok(())
    }

    async fn on_client(&mut self, msg: Message) -> Result<(), Stop> {
        match msg {
            Message::Text(t) => {
                self.rate_check()?;
                self.on_request(t.as_str()).await
            }
            Message::Binary(_) => {
                self.rate_check()?;
                self.bad_message(
                    &Value::Null,
                    "binary messages are not part of the protocol; send JSON text",
                )
                .await
            }
            // Pings are answered by the WebSocket layer; pongs need nothing.
            Message::Ping(_) | Message::Pong(_) => self.rate_check(),
            Message::Close(_) => Err(Stop::Gone),
        }
    }

    async fn on_request(&mut self, raw: &str) -> Result<(), Stop> {
        let v: Value = match serde_json::from_str(raw) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return self
                    .bad_message(&Value::Null, "a request must be a JSON object")
                    .await;
            }
            Err(e) => {
                let m = format!("not JSON: {}", params::truncate(&e.to_string()));
                return self.bad_message(&Value::Null, &m).await;
            }
        };
        let id = match request_id(&v) {
            Ok(id) => id,
            Err(m) => return self.bad_message(&Value::Null, &m).await,
        };
        match v.get("type").and_then(Value::as_str) {
            Some("subscribe") => self.subscribe(&id, &v).await,
            Some("unsubscribe") => {
                let Some(sid) = v.get("stream_id").and_then(Value::as_str) else {
                    return self
                        .bad_message(&id, "`stream_id` (a string) is required")
                        .await;
                };
                let tag = self
                    .streams
                    .iter()
                    .find(|(_, s)| &*s.counter.stream_id == sid)
                    .map(|(t, _)| *t);
                match tag {
                    None => {
                        let e = reply_error(
                            &id,
                            "unknown_stream",
                            "no such stream on this connection",
                            Some(sid),
                        );
                        self.send(&e).await
                    }
                    Some(tag) => {
                        let ack = json!({"type": "unsubscribed", "id": id, "stream_id": sid});
                        self.send(&Bytes::from(ack.to_string())).await?;
                        self.end_stream(tag, CompleteReason::Unsubscribed).await
                    }
                }
            }
            Some("ping") => {
                let pong = json!({
                    "type": "pong",
                    "id": id,
                    "ts": v.get("ts").cloned().unwrap_or(Value::Null),
                    "server_ts": now_ns() / 1000,
                });
                self.send(&Bytes::from(pong.to_string())).await
            }
            Some(other) => {
                let m = format!(
                    "unknown request type `{}` (subscribe, unsubscribe, ping)",
                    params::truncate(other)
                );
                self.bad_message(&id, &m).await
            }
            None => self.bad_message(&id, "`type` (a string) is required").await,
        }
    }

    /// Validates a subscribe and starts it; the answer (`subscribed` or `error`) is sent
    /// when the engine subscription completes, while the connection goes on serving.
    async fn subscribe(&mut self, id: &Value, v: &Value) -> Result<(), Stop> {
        let (con_id, opts) = match subscribe_options(v, self.st.cfg.default_slow) {
            Ok(x) => x,
            Err(m) => {
                let e = reply_error(id, "bad_parameter", &m, None);
                return self.send(&e).await;
            }
        };
        if let Err(e) = sse::check_history(&self.st, &opts) {
            return self.send(&api_error(id, &e)).await;
        }
        if self.streams.len() + self.pending.len() >= self.st.cfg.ws.max_streams {
            let m = format!(
                "this connection already has {} streams (the limit)",
                self.st.cfg.ws.max_streams
            );
            return self
                .send(&reply_error(id, "too_many_streams", &m, None))
                .await;
        }
        let kinds = params::kind_set(&opts.types);
        // Ticks carry no stream id: one tick must belong to one stream of the connection.
        let taken = self
            .streams
            .values()
            .map(|s| (s.con_id, s.kinds))
            .chain(self.pending.values().map(|p| (p.con_id, p.kinds)))
            .any(|(c, k)| c == con_id && k.overlaps(kinds));
        if taken {
            let m = "a stream of this connection already delivers some of these tick types of this contract";
            return self
                .send(&reply_error(id, "duplicate_subscription", m, None))
                .await;
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let stream_id: Arc<str> = format!("ws-{}-{tag}", self.conn_no).into();
        let st = self.st.clone();
        let done = self.done_tx.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let result =
                sse::prepare_stream(&st, Arc::clone(&stream_id), con_id, &opts, "ws").await;
            // The connection may be gone: the preparation (leases, slot) is then dropped.
            let _ = done.send(SubDone {
                tag,
                id,
                stream_id,
                con_id,
                opts,
                result,
            });
        });
        self.pending.insert(tag, PendingSub { con_id, kinds });
        Ok(())
    }

    /// A subscribe's preparation finished: answer it and start the stream.
    async fn on_subscribed(&mut self, done: SubDone) -> Result<(), Stop> {
        let SubDone {
            tag,
            id,
            stream_id,
            con_id,
            opts,
            result,
        } = done;
        if self.pending.remove(&tag).is_none() {
            return Ok(());
        }
        let prepared = match result {
            Ok(p) => p,
            Err(e) => return self.send(&api_error(&id, &e)).await,
        };
        let consumer = sse::Consumer {
            transport: "ws",
            tag,
            tx: self.tx.clone(),
            notify: Arc::clone(&self.notify),
        };
        let (hold, flag) = prepared.attach(&self.st, &opts, consumer);
        let waits: Vec<Bytes> = hold
            .leases
            .iter()
            .filter_map(|l| sse::queued_info(&stream_id, l))
            .collect();
        self.st
            .metrics
            .ws_subscriptions
            .fetch_add(1, Ordering::Relaxed);
        let ack = json!({
            "type": "subscribed",
            "id": id,
            "stream_id": &*stream_id,
            "contract_id": con_id,
            "tick_types": opts.types.iter().map(|t| t.name()).collect::<Vec<_>>(),
            "slow": opts.slow.name(),
        });
        self.streams.insert(
            tag,
            WsStream {
                con_id,
                kinds: params::kind_set(&opts.types),
                flag,
                counter: StreamCounter::new(Arc::clone(&stream_id), opts.limit, opts.timeout_s),
                _hold: hold,
            },
        );
        // Both go out before anything of the stream: its messages wait in the queue.
        self.feed(&Bytes::from(ack.to_string())).await?;
        let start = sse::stream_start(&self.st, &stream_id, con_id, &opts);
        self.feed(&start).await?;
        for w in &waits {
            self.feed(w).await?;
        }
        self.socket.flush().await.map_err(|_| Stop::Gone)
    }
}

/// An API error as a WebSocket `error` reply to request `id`.
pub(crate) fn api_error(id: &Value, e: &ApiError) -> Bytes {
    let mut v = json!({
        "type": "error",
        "id": id,
        "code": e.code,
        "message": e.message,
        "recoverable": e.status.is_server_error(),
    });
    if let Some(c) = e.ib_code {
        v["ib_code"] = json!(c);
    }
    Bytes::from(v.to_string())
}

fn classify(e: &axum::Error) -> Stop {
    // axum wraps tungstenite's error; its text is the only stable view of the cause.
    let s = e.to_string();
    if s.contains("Space limit exceeded") || s.contains("too long") || s.contains("Message too big")
    {
        Stop::Close(CLOSE_TOO_BIG, "message too big")
    } else {
        Stop::Gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_requests_are_validated() {
        let (con, o) = subscribe_options(
            &json!({"type": "subscribe", "contract_id": 5, "tick_types": ["last"], "limit": 3, "after_seq": 9}),
            SlowPolicy::Conflate,
        )
        .unwrap();
        assert_eq!(
            (con, o.types, o.limit, o.after),
            (
                5,
                vec![TickType::Last],
                Some(3),
                Some(Resume {
                    epoch: None,
                    seq: 9
                })
            )
        );
        let (_, o) = subscribe_options(&json!({"contract_id": 5}), SlowPolicy::Disconnect).unwrap();
        assert_eq!(
            (o.types, o.slow),
            (DEFAULT_TICK_TYPES.to_vec(), SlowPolicy::Disconnect)
        );
        for bad in [
            json!({"contract_id": 4294967296u64}),
            json!({"contract_id": -1}),
            json!({"contract_id": 5, "tick_types": "last"}),
            json!({"contract_id": 5, "tick_types": [1]}),
            json!({"contract_id": 5, "tick_types": ["last", "last"]}),
            json!({"contract_id": 5, "timeout": 0}),
            json!({"contract_id": 5, "after_seq": "x"}),
        ] {
            assert!(
                subscribe_options(&bad, SlowPolicy::Conflate).is_err(),
                "{bad}"
            );
        }
        assert!(request_id(&json!({"id": "x".repeat(129)})).is_err());
        assert!(request_id(&json!({"id": [1]})).is_err());
        assert_eq!(request_id(&json!({})).unwrap(), Value::Null);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_json_never_panics_the_request_parser(s in ".{0,200}") {
            if let Ok(v) = serde_json::from_str::<Value>(&s) {
                let _ = request_id(&v);
                let _ = subscribe_options(&v, SlowPolicy::Conflate);
            }
            let v = json!({"type": "subscribe", "contract_id": 1, "tick_types": [s.clone()], "slow": s});
            proptest::prop_assert!(subscribe_options(&v, SlowPolicy::Conflate).is_err());
        }
    }
}
