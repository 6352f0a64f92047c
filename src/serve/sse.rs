//! `GET /v3/stream/{conId}`: live ticks over Server-Sent Events.
//!
//! Every tick is an `event: tick` with `id: <epoch>-<seq>` (the resume token: the engine run
//! as 16 hex digits, the ring sequence); a reconnect with `Last-Event-ID` (or
//! `?last_event_id=` for clients that cannot set headers) resumes right after it, in its own
//! run (see [`super::replay`]). A plain `<seq>` is still accepted, as a sequence of the
//! current run.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use serde_json::json;
use tokio::sync::{Notify, mpsc};

use super::error::ApiError;
use super::hub::{CloseReason, Out, Pos, SinkFlag, SlowPolicy};
use super::limits::{ClientIp, IpSlot};
use super::messages::{self, CompleteReason, now_ns};
use super::params::{self, DEFAULT_TICK_TYPES, Params, TickType};
use super::replay::{self, Join, Resume, SinkSlot, StartFrom, TaskGuard};
use super::state::{AppState, LatencyBatch, StreamSlot};
use super::subs::{ClientInfo, Lease, Registered};

/// Largest `limit`.
pub const MAX_LIMIT: u64 = 100_000_000;
/// Largest `timeout`, seconds.
pub const MAX_TIMEOUT_S: u64 = 7 * 86_400;

/// The options of a stream request, validated.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Tick types.
    pub types: Vec<TickType>,
    /// Ticks to deliver before `complete{limit_reached}`.
    pub limit: Option<u64>,
    /// Seconds before `complete{timeout}`.
    pub timeout_s: Option<u64>,
    /// Slow-client policy.
    pub slow: SlowPolicy,
    /// Resume after this point.
    pub after: Option<Resume>,
    /// History then live from this receive time, ns (`since=`).
    pub since_ns: Option<i64>,
}

impl StreamOptions {
    /// Where the stream starts: a resume point wins over `since` (a reconnecting
    /// EventSource sends both).
    pub fn from(&self) -> StartFrom {
        match (self.after, self.since_ns) {
            (Some(a), _) => StartFrom::After(a),
            (None, Some(ns)) => StartFrom::Since(ns),
            (None, None) => StartFrom::Live,
        }
    }
}

fn slow_policy(raw: Option<&str>, default: SlowPolicy) -> Result<SlowPolicy, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => SlowPolicy::from_name(s).ok_or_else(|| {
            ApiError::bad_parameter(format!(
                "`slow` must be conflate or disconnect, got `{}`",
                params::truncate(s)
            ))
        }),
    }
}

fn parse_seq(raw: &str, what: &str) -> Result<Resume, ApiError> {
    Resume::parse(raw).ok_or_else(|| {
        ApiError::bad_parameter(format!(
            "{what} must be an event id (`<epoch>-<seq>`) or a ring sequence number, got `{}`",
            params::truncate(raw)
        ))
    })
}

/// Parses the query string and the `Last-Event-ID` header.
pub fn parse_options(
    raw_query: Option<&str>,
    headers: &HeaderMap,
    default_slow: SlowPolicy,
) -> Result<StreamOptions, ApiError> {
    let p = Params::parse(
        raw_query,
        &[
            "tick_types",
            "limit",
            "timeout",
            "slow",
            "last_event_id",
            "since",
        ],
    )?;
    let types = match p.get("tick_types") {
        Some(t) => params::tick_types(t)?,
        None => DEFAULT_TICK_TYPES.to_vec(),
    };
    let header = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_parameter("Last-Event-ID is not text"))
                .and_then(|s| parse_seq(s, "Last-Event-ID"))?,
        ),
        None => None,
    };
    let query = p
        .get("last_event_id")
        .map(|s| parse_seq(s, "`last_event_id`"))
        .transpose()?;
    Ok(StreamOptions {
        types,
        limit: p.int("limit", 1, MAX_LIMIT)?,
        timeout_s: p.int("timeout", 1, MAX_TIMEOUT_S)?,
        slow: slow_policy(p.get("slow"), default_slow)?,
        // The header is what a reconnecting EventSource sends: it wins.
        after: header.or(query),
        since_ns: p
            .get("since")
            .map(|v| params::since(v, now_ns()))
            .transpose()?,
    })
}

/// Counts a stream's ticks and says when it is done (shared with the WebSocket side).
#[derive(Debug)]
pub struct StreamCounter {
    /// The stream id.
    pub stream_id: Arc<str>,
    /// Ticks delivered.
    pub count: u64,
    /// The limit.
    pub limit: Option<u64>,
    /// The last sequence delivered.
    pub last_seq: u64,
    /// When it started.
    pub started: Instant,
    /// When it times out.
    pub deadline: Option<tokio::time::Instant>,
}

impl StreamCounter {
    /// A counter for a stream starting now.
    pub fn new(stream_id: Arc<str>, limit: Option<u64>, timeout_s: Option<u64>) -> StreamCounter {
        StreamCounter {
            stream_id,
            count: 0,
            limit,
            last_seq: 0,
            started: Instant::now(),
            deadline: timeout_s
                .map(|s| tokio::time::Instant::now() + std::time::Duration::from_secs(s)),
        }
    }

    /// Counts a tick; true when the limit is reached with it.
    pub fn tick(&mut self, seq: u64) -> bool {
        self.count += 1;
        self.last_seq = seq;
        self.limit.is_some_and(|l| self.count >= l)
    }

    /// The `complete` message.
    pub fn complete(&self, reason: CompleteReason) -> Bytes {
        messages::complete(
            Some(&self.stream_id),
            reason,
            self.count,
            self.started.elapsed().as_millis() as u64,
            self.last_seq,
        )
    }

    /// The messages that end a stream the tailer closed.
    pub fn closed(&self, why: CloseReason) -> Vec<(&'static str, Bytes)> {
        match why {
            CloseReason::SlowConsumer => vec![
                (
                    "error",
                    messages::error(
                        Some(&self.stream_id),
                        "slow_consumer",
                        "the client did not keep up and its stream's policy is disconnect",
                        true,
                        None,
                    ),
                ),
                ("complete", self.complete(CompleteReason::Error)),
            ],
            CloseReason::Stopped => vec![("complete", self.complete(CompleteReason::Stopped))],
            CloseReason::ServerShutdown => {
                vec![("complete", self.complete(CompleteReason::ServerShutdown))]
            }
        }
    }
}

/// What keeps a stream alive: dropped together when the client goes.
#[derive(Debug)]
pub struct StreamHold {
    /// Stops the replay from history, if one runs (dropped first).
    pub replay: Option<TaskGuard>,
    /// Removes the stream from the fan-out (once it joined).
    pub sink: SinkSlot,
    /// Shares of engine subscriptions.
    pub leases: Vec<Lease>,
    /// The registry entry.
    pub registered: Registered,
    /// The `max_streams` slot.
    pub slot: StreamSlot,
}

struct SseState {
    st: AppState,
    rx: mpsc::Receiver<Out>,
    flag: Arc<SinkFlag>,
    notify: Arc<Notify>,
    counter: StreamCounter,
    heartbeat: tokio::time::Interval,
    /// This stream's count against its address's cap.
    _ip: Option<IpSlot>,
    /// Events formatted and not yet handed to the connection.
    out: BytesMut,
    /// Ticks in `out`, counted in the shared metrics when it is handed over.
    out_ticks: u64,
    /// Their latencies, likewise.
    latency: LatencyBatch,
    done: bool,
    _hold: StreamHold,
}

/// Messages taken from the queue into one body frame at most: a burst goes out in a few
/// writes instead of one per event.
const MAX_EVENTS_PER_FRAME: usize = 256;

/// Appends one SSE event. Every message is single-line JSON from our own encoders (tickjson
/// and serde_json escape newlines), so one `data:` line carries it.
fn event(out: &mut BytesMut, name: &str, id: Option<Pos>, json: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    if let Some(id) = id {
        out.extend_from_slice(b"\nid: ");
        id.write_token(out);
    }
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
}

impl SseState {
    fn finish(&mut self, msgs: Vec<(&'static str, Bytes)>) {
        for (name, json) in msgs {
            event(&mut self.out, name, None, &json);
        }
        self.done = true;
    }

    fn complete(&mut self, reason: CompleteReason) {
        let c = self.counter.complete(reason);
        self.finish(vec![("complete", c)]);
    }

    /// Formats one message; `now_us` is the time it is taken from the queue.
    fn on_out(&mut self, out: Out, now_us: i64) {
        match out {
            Out::Tick {
                seq, epoch, json, ..
            } => {
                event(&mut self.out, "tick", Some(Pos { epoch, seq }), &json);
                self.out_ticks += 1;
                if let Some(us) = latency_us(&json, now_us) {
                    self.latency.record(us);
                }
                if self.counter.tick(seq) {
                    self.complete(CompleteReason::LimitReached);
                }
            }
            Out::History {
                seq, epoch, json, ..
            } => {
                event(&mut self.out, "tick", Some(Pos { epoch, seq }), &json);
                self.out_ticks += 1;
                if self.counter.tick(seq) {
                    self.complete(CompleteReason::LimitReached);
                }
            }
            Out::Control {
                event: name,
                id,
                json,
                end,
                ..
            } => {
                event(&mut self.out, name, id, &json);
                if end {
                    self.complete(CompleteReason::Error);
                }
            }
        }
    }
}

/// Ring-receive-to-delivery latency (µs) of a tick from its `st` (µs) field.
pub fn latency_us(json: &[u8], now_us: i64) -> Option<u64> {
    // `{"seq":N,"st":US,...`: find the value after `"st":` without a full parse.
    let pos = json.windows(5).position(|w| w == b"\"st\":")?;
    let digits = json[pos + 5..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0i64, |acc, b| {
            acc.saturating_mul(10).saturating_add(i64::from(b - b'0'))
        });
    (digits > 0 && now_us >= digits).then(|| (now_us - digits) as u64)
}

async fn next_frame(mut s: SseState) -> Option<(Result<Bytes, Infallible>, SseState)> {
    loop {
        if !s.out.is_empty() {
            let m = &s.st.metrics;
            m.sse_ticks.fetch_add(s.out_ticks, Ordering::Relaxed);
            m.delivery_us.merge(&mut s.latency);
            s.out_ticks = 0;
            let frame = s.out.split().freeze();
            return Some((Ok(frame), s));
        }
        if s.done {
            return None;
        }
        if let Some(why) = s.flag.get() {
            if why == CloseReason::SlowConsumer {
                s.st.metrics.slow_closes.fetch_add(1, Ordering::Relaxed);
            }
            let msgs = s.counter.closed(why);
            s.finish(msgs);
            continue;
        }
        let notify = Arc::clone(&s.notify);
        let deadline = s.counter.deadline;
        tokio::select! {
            biased;
            _ = notify.notified() => {}
            m = s.rx.recv() => match m {
                Some(out) => {
                    // One clock read per frame: its ticks leave together.
                    let now_us = now_ns() / 1000;
                    s.on_out(out, now_us);
                    // Whatever else is already queued goes into the same frame.
                    for _ in 1..MAX_EVENTS_PER_FRAME {
                        if s.done || s.flag.get().is_some() {
                            break;
                        }
                        match s.rx.try_recv() {
                            Ok(out) => s.on_out(out, now_us),
                            Err(_) => break,
                        }
                    }
                }
                None => {
                    // The tailer dropped the stream: its flag says why (shutdown if none).
                    let why = s.flag.get().unwrap_or(CloseReason::ServerShutdown);
                    let msgs = s.counter.closed(why);
                    s.finish(msgs);
                }
            },
            _ = s.heartbeat.tick() => {
                let head = s.st.hub.stats().ring_head.load(Ordering::Relaxed);
                event(&mut s.out, "heartbeat", None, &messages::heartbeat(now_ns(), head));
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => s.complete(CompleteReason::Timeout),
        }
    }
}

/// Where a stream's messages go: a consumer's queue, the stream's tag in it, its waker.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// `sse` or `ws`.
    pub transport: &'static str,
    /// The stream within the consumer.
    pub tag: u32,
    /// The consumer's queue.
    pub tx: mpsc::Sender<Out>,
    /// Woken when the tailer closes one of its streams.
    pub notify: Arc<Notify>,
}

/// A stream with its slot, engine subscriptions and registry entry, not yet in the fan-out.
#[derive(Debug)]
pub struct Prepared {
    stream_id: Arc<str>,
    con_id: u32,
    leases: Vec<Lease>,
    registered: Registered,
    slot: StreamSlot,
}

/// Takes a stream slot, the engine subscriptions (may wait for the engine) and a registry
/// entry; shared by SSE and WS.
pub async fn prepare_stream(
    st: &AppState,
    stream_id: Arc<str>,
    con_id: u32,
    opts: &StreamOptions,
    transport: &'static str,
) -> Result<Prepared, ApiError> {
    let slot = st.reserve_stream()?;
    let leases = st.subs.acquire_all(con_id, &opts.types).await?;
    let registered = st.registry.register(ClientInfo {
        stream_id: stream_id.to_string(),
        transport,
        con_id,
        tick_types: opts.types.iter().map(|t| t.name()).collect(),
        slow: opts.slow.name(),
        since: now_ns() / 1000,
    });
    Ok(Prepared {
        stream_id,
        con_id,
        leases,
        registered,
        slot,
    })
}

impl Prepared {
    /// Joins the fan-out (or starts the replay from history that joins it).
    pub fn attach(
        self,
        st: &AppState,
        opts: &StreamOptions,
        consumer: Consumer,
    ) -> (StreamHold, Arc<SinkFlag>) {
        let flag = Arc::new(SinkFlag::default());
        let join = Join {
            tag: consumer.tag,
            stream_id: Arc::clone(&self.stream_id),
            con_id: self.con_id,
            types: opts.types.clone(),
            kinds: params::kind_set(&opts.types),
            policy: opts.slow,
            tx: consumer.tx,
            flag: Arc::clone(&flag),
            notify: consumer.notify,
        };
        let (sink, replay) = replay::attach(st, join, opts.from());
        (
            StreamHold {
                replay,
                sink,
                leases: self.leases,
                registered: self.registered,
                slot: self.slot,
            },
            flag,
        )
    }
}

/// Opens a stream: subscriptions, fan-out registration, registry; shared by SSE and WS.
pub async fn open_stream(
    st: &AppState,
    stream_id: Arc<str>,
    con_id: u32,
    opts: &StreamOptions,
    consumer: Consumer,
) -> Result<(StreamHold, Arc<SinkFlag>), ApiError> {
    let prepared = prepare_stream(st, stream_id, con_id, opts, consumer.transport).await?;
    Ok(prepared.attach(st, opts, consumer))
}

/// `since=` needs stored history: without a source it is refused rather than served from
/// whatever the ring happens to hold.
pub fn check_history(st: &AppState, opts: &StreamOptions) -> Result<(), ApiError> {
    if opts.since_ns.is_some() && opts.after.is_none() && st.history.is_none() {
        return Err(ApiError::unavailable(
            "storage_unavailable",
            "`since` replays stored history and no history source is configured on this server",
        ));
    }
    Ok(())
}

/// The `info{stream_start}` message.
pub fn stream_start(st: &AppState, stream_id: &str, con_id: u32, opts: &StreamOptions) -> Bytes {
    messages::info(
        Some(stream_id),
        "stream_start",
        json!({
            "contract_id": con_id,
            "tick_types": opts.types.iter().map(|t| t.name()).collect::<Vec<_>>(),
            "slow": opts.slow.name(),
            "limit": opts.limit,
            "timeout": opts.timeout_s,
            "resume_after": opts.after.map(Resume::to_json),
            "since": opts.since_ns.map(|ns| ns.div_euclid(1000)),
            "ring_head": st.hub.stats().ring_head.load(Ordering::Relaxed),
            // The engine run the stream starts in (ids name their run; WebSocket ticks have
            // no id: this, `info{live}` and `gap{writer_restart}.new_epoch` tell the run).
            "epoch": format!("{:016x}", st.hub.stats().epoch.load(Ordering::Relaxed)),
            "tracked": opts.types.iter().all(|t| st.subs.is_tracked((con_id, *t))),
            // SSE has no `info{connected}`: this is how its clients learn the period.
            "heartbeat_seconds": st.cfg.heartbeat.as_secs(),
        }),
    )
}

/// The `info{subscription_queued}` message of a subscription the engine holds back (IB's
/// 15-second rule for tick-by-tick requests on one instrument, or a refusal being retried),
/// sent with the response headers so the client knows why ticks have not started and when
/// they should.
pub fn queued_info(stream_id: &str, lease: &Lease) -> Option<Bytes> {
    let q = lease.queued?;
    let (con_id, tick_type) = lease.key();
    let when = q.next_attempt_ns.map(|ns| ns.div_euclid(1000));
    let message = match (q.state, when) {
        ("retrying", Some(_)) => {
            "IB refused the request; the engine asks again at next_attempt".to_string()
        }
        (_, Some(_)) => "IB allows one tick-by-tick request per instrument every 15 s; \
                         the engine sends this one at next_attempt"
            .to_string(),
        _ => "the engine has queued the request; ticks follow once IB accepts it".to_string(),
    };
    Some(messages::info(
        Some(stream_id),
        "subscription_queued",
        json!({
            "contract_id": con_id,
            "tick_type": tick_type.name(),
            "state": q.state,
            "next_attempt": when,
            "ib_code": q.ib_code,
            "message": message,
        }),
    ))
}

/// `GET /v3/stream/{conId}`.
pub async fn stream(
    State(st): State<AppState>,
    Path(raw_con): Path<String>,
    RawQuery(query): RawQuery,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let con_id = params::con_id(&raw_con)?;
    let opts = parse_options(query.as_deref(), &headers, st.cfg.default_slow)?;
    check_history(&st, &opts)?;
    let ip_slot = st.reserve_sse_slot(ip)?;
    let stream_id: Arc<str> = st.new_stream_id("sse").into();
    let (tx, rx) = mpsc::channel(st.cfg.queue_capacity);
    let notify = Arc::new(Notify::new());
    let consumer = Consumer {
        transport: "sse",
        tag: 0,
        tx,
        notify: Arc::clone(&notify),
    };
    let (hold, flag) = open_stream(&st, Arc::clone(&stream_id), con_id, &opts, consumer).await?;
    st.metrics.sse_opened.fetch_add(1, Ordering::Relaxed);
    let period = st.cfg.heartbeat;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let first = stream_start(&st, &stream_id, con_id, &opts);
    let waits: Vec<Bytes> = hold
        .leases
        .iter()
        .filter_map(|l| queued_info(&stream_id, l))
        .collect();
    let mut state = SseState {
        st: st.clone(),
        rx,
        flag,
        notify,
        counter: StreamCounter::new(Arc::clone(&stream_id), opts.limit, opts.timeout_s),
        heartbeat,
        _ip: ip_slot,
        out: BytesMut::with_capacity(4096),
        out_ticks: 0,
        latency: LatencyBatch::default(),
        done: false,
        _hold: hold,
    };
    event(&mut state.out, "info", None, &first);
    for w in &waits {
        event(&mut state.out, "info", None, w);
    }
    let body = futures_util::stream::unfold(state, next_frame);
    Ok(event_stream(Body::from_stream(body), &stream_id))
}

/// An SSE response: `body` with the event-stream headers every stream sends (no caching,
/// no proxy buffering, the protocol and the stream's id).
pub fn event_stream(body: Body, stream_id: &str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("x-stream-protocol", HeaderValue::from_static("v3"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(v) = HeaderValue::from_str(stream_id) {
        h.insert("x-stream-id", v);
    }
    resp
}
