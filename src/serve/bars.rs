//! `GET /v3/bars/{conId}`: time bars of a contract, the bars `ib-stream studies bars` writes.
//!
//! - `?size=1m&since=...` (or no `since`: from now) streams them over SSE, or over a
//!   WebSocket when the request is an upgrade: history then live through the tick streams'
//!   join ([`super::bar_feed`]); `bar` is a closed bar (final), `update` the bar in progress.
//! - `?size=1m&from=..&to=..` answers the range at once, as JSON, from storage (what
//!   `ib-stream studies bars --storage --from --to` reads).
//!
//! Same token, per-address caps, stream slots and engine subscriptions as the tick streams.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::header;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{Notify, mpsc};

use super::bar_feed::{BarFeed, BarSpec};
use super::error::ApiError;
use super::hub::{CloseReason, Out, SinkFlag, SlowPolicy};
use super::limits::{ClientIp, Counted, IpSlot};
use super::messages::{self, CompleteReason, now_ns};
use super::params::{self, Params, TickType};
use super::replay::StartFrom;
use super::sse::{self, Consumer, StreamHold, StreamOptions};
use super::state::AppState;
use super::ws::{self, WsSlot};
use crate::storage::query::time;
use crate::studies::clock::{Clock, DEFAULT_SESSION_START, DEFAULT_TZ, parse_time_size};
use crate::studies::input::{self, CLOCK_LAG_US, Input, InputError, Selection};
use crate::studies::{Event, TradeKind};

/// Most bars one range query answers; a longer range is refused (a larger `size` or a
/// shorter range answers it).
pub const MAX_RANGE_BARS: usize = 100_000;

/// How often a live stream's clock closes bars no tick closed.
const CLOCK_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// Bar messages queued per stream before the feed waits for its client.
const OUT_QUEUE: usize = 256;

/// A bars request, validated.
#[derive(Debug, Clone)]
pub struct BarsRequest {
    /// What to compute.
    pub spec: BarSpec,
    /// History then live from this receive time, ns.
    pub since_ns: Option<i64>,
    /// A range query `[from, to)`, ns.
    pub range: Option<(i64, i64)>,
    /// Slow-client policy of the underlying tick stream.
    pub slow: SlowPolicy,
}

const KNOWN: [&str; 8] = [
    "size",
    "since",
    "from",
    "to",
    "tz",
    "session_start",
    "trades",
    "slow",
];

/// Parses the query of `/v3/bars/{conId}`.
pub fn parse_request(
    con_id: u32,
    raw: Option<&str>,
    default_slow: SlowPolicy,
    now_ns: i64,
) -> Result<BarsRequest, ApiError> {
    let p = Params::parse(raw, &KNOWN)?;
    let size_name = p.text("size", 16)?.unwrap_or("1m").to_string();
    let size_us =
        parse_time_size(&size_name).map_err(|e| ApiError::bad_parameter(format!("`size`: {e}")))?;
    let tz = p.text("tz", 64)?.unwrap_or(DEFAULT_TZ);
    let session = p
        .text("session_start", 16)?
        .unwrap_or(DEFAULT_SESSION_START);
    let clock = Clock::new(tz, session).map_err(|e| ApiError::bad_parameter(e.to_string()))?;
    let trades = match p.get("trades") {
        None | Some("last") => TradeKind::Last,
        Some("all_last") => TradeKind::AllLast,
        Some(other) => {
            return Err(ApiError::bad_parameter(format!(
                "`trades` must be last or all_last, got `{}`",
                params::truncate(other)
            )));
        }
    };
    let slow = match p.get("slow") {
        None => default_slow,
        Some(s) => SlowPolicy::from_name(s).ok_or_else(|| {
            ApiError::bad_parameter(format!(
                "`slow` must be conflate or disconnect, got `{}`",
                params::truncate(s)
            ))
        })?,
    };
    let zone = time::zone(tz).map_err(|e| ApiError::bad_parameter(e.to_string()))?;
    let at = |key: &str| -> Result<Option<i64>, ApiError> {
        p.get(key)
            .map(|v| {
                time::parse_time(v, &zone, now_ns).map_err(|e| {
                    ApiError::bad_parameter(format!("`{key}` `{}`: {e}", params::truncate(v)))
                })
            })
            .transpose()
    };
    let range = match (at("from")?, at("to")?) {
        (Some(a), Some(b)) if a < b => Some((a, b)),
        (Some(_), Some(_)) => return Err(ApiError::bad_parameter("`from` must be before `to`")),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_parameter(
                "a range query needs both `from` and `to`",
            ));
        }
    };
    let since_ns = p
        .get("since")
        .map(|v| params::since(v, now_ns))
        .transpose()?;
    if range.is_some() && since_ns.is_some() {
        return Err(ApiError::bad_parameter(
            "`since` streams; `from`/`to` is a range query: give one or the other",
        ));
    }
    Ok(BarsRequest {
        spec: BarSpec {
            con_id,
            size_us,
            size_name,
            clock,
            trades,
        },
        since_ns,
        range,
        slow,
    })
}

/// `GET /v3/bars/{conId}`.
pub async fn bars(
    State(st): State<AppState>,
    Path(raw_con): Path<String>,
    RawQuery(query): RawQuery,
    ClientIp(ip): ClientIp,
    req: Request,
) -> Result<Response, ApiError> {
    let con_id = params::con_id(&raw_con)?;
    let r = parse_request(con_id, query.as_deref(), st.cfg.default_slow, now_ns())?;
    if let Some(range) = r.range {
        return range_query(&st, &r, range).await;
    }
    let opts = StreamOptions {
        types: vec![
            TickType::BidAsk,
            match r.spec.trades {
                TradeKind::Last => TickType::Last,
                TradeKind::AllLast => TickType::AllLast,
            },
        ],
        limit: None,
        timeout_s: None,
        slow: r.slow,
        after: None,
        since_ns: r.since_ns,
    };
    sse::check_history(&st, &opts)?;
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if upgrade {
        let (mut parts, _) = req.into_parts();
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &st)
            .await
            .map_err(|e| ApiError::bad_parameter(e.body_text()))?;
        return websocket(st, r, opts, ip, ws).await;
    }
    let ip_slot = st.reserve_sse_slot(ip)?;
    let stream_id: Arc<str> = st.new_stream_id("bars").into();
    let rx = start(&st, r, opts, Arc::clone(&stream_id), "sse", ip_slot).await?;
    st.metrics.sse_opened.fetch_add(1, Ordering::Relaxed);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let (name, json) = rx.recv().await?;
        let mut out = BytesMut::with_capacity(json.len() + 32);
        sse_event(&mut out, name, &json);
        // Whatever else is queued goes in the same frame.
        while let Ok((name, json)) = rx.try_recv() {
            sse_event(&mut out, name, &json);
        }
        Some((Ok::<_, Infallible>(out.freeze()), rx))
    });
    Ok(super::sse::event_stream(
        Body::from_stream(body),
        &stream_id,
    ))
}

fn sse_event(out: &mut BytesMut, name: &str, json: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
}

async fn websocket(
    st: AppState,
    r: BarsRequest,
    opts: StreamOptions,
    ip: Option<std::net::IpAddr>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let ip_slot = st
        .per_ip
        .reserve(ip, Counted::Ws, st.cfg.per_ip.ws_connections)
        .inspect_err(|_| {
            st.metrics.ws_refused_per_ip.fetch_add(1, Ordering::Relaxed);
        })?;
    let slot = WsSlot::reserve(&st)?;
    let stream_id: Arc<str> = st.new_stream_id("bars").into();
    let rx = start(&st, r, opts, stream_id, "ws", ip_slot).await?;
    let limits = st.cfg.ws;
    st.metrics.ws_connections.fetch_add(1, Ordering::Relaxed);
    Ok(ws
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        .on_upgrade(move |socket| async move {
            ws_loop(socket, rx).await;
            drop(slot);
        }))
}

/// Sends the feed's messages as text frames until it ends or the client goes; the client
/// has nothing to say on this socket but pings and the close.
async fn ws_loop(socket: WebSocket, mut rx: mpsc::Receiver<(&'static str, Bytes)>) {
    let (mut tx, mut incoming) = socket.split();
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some((_, json)) => {
                    if tx.send(ws::text(&json)).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = tx
                        .send(Message::Close(Some(CloseFrame {
                            code: ws::CLOSE_NORMAL,
                            reason: Utf8Bytes::from("stream complete"),
                        })))
                        .await;
                    return;
                }
            },
            m = incoming.next() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Opens the tick stream under the bars and starts the task turning it into bar messages;
/// returns their queue.
async fn start(
    st: &AppState,
    r: BarsRequest,
    opts: StreamOptions,
    stream_id: Arc<str>,
    transport: &'static str,
    ip_slot: Option<IpSlot>,
) -> Result<mpsc::Receiver<(&'static str, Bytes)>, ApiError> {
    let (tx, rx_ticks) = mpsc::channel(st.cfg.queue_capacity);
    let notify = Arc::new(Notify::new());
    let consumer = Consumer {
        transport,
        tag: 0,
        tx,
        notify: Arc::clone(&notify),
    };
    let (hold, flag) =
        sse::open_stream(st, Arc::clone(&stream_id), r.spec.con_id, &opts, consumer).await?;
    let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
    let start = json!({
        "contract_id": r.spec.con_id,
        "size": r.spec.size_name,
        "size_us": r.spec.size_us,
        "tz": r.spec.clock.zone_name(),
        "trades": match r.spec.trades { TradeKind::Last => "last", TradeKind::AllLast => "all_last" },
        "since": r.since_ns.map(|ns| ns.div_euclid(1000)),
        "epoch": format!("{:016x}", st.hub.stats().epoch.load(Ordering::Relaxed)),
    });
    let first = messages::info(Some(&stream_id), "bars_start", start);
    let mut feed = BarFeed::new(r.spec, &stream_id);
    if matches!(opts.from(), StartFrom::Live) {
        feed.set_live();
    }
    let run = FeedTask {
        st: st.clone(),
        feed,
        rx: rx_ticks,
        flag,
        notify,
        out: out_tx,
        stream_id,
        _hold: hold,
        _ip: ip_slot,
    };
    // A queue of OUT_QUEUE always takes the first message.
    let _ = run.out.try_send(("info", first));
    tokio::spawn(run.run());
    Ok(out_rx)
}

struct FeedTask {
    st: AppState,
    feed: BarFeed,
    rx: mpsc::Receiver<Out>,
    flag: Arc<SinkFlag>,
    notify: Arc<Notify>,
    out: mpsc::Sender<(&'static str, Bytes)>,
    stream_id: Arc<str>,
    _hold: StreamHold,
    _ip: Option<IpSlot>,
}

impl FeedTask {
    async fn run(mut self) {
        let started = std::time::Instant::now();
        let period = self.st.cfg.heartbeat;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut clock =
            tokio::time::interval_at(tokio::time::Instant::now() + CLOCK_PERIOD, CLOCK_PERIOD);
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut msgs: Vec<(&'static str, Bytes)> = Vec::with_capacity(64);
        let mut end: Option<CloseReason> = None;
        loop {
            if let Some(why) = self.flag.get() {
                end = Some(why);
            }
            if let Some(why) = end {
                self.feed.finish(&mut msgs);
                let reason = match why {
                    CloseReason::SlowConsumer => {
                        msgs.push((
                            "error",
                            messages::error(
                                Some(&self.stream_id),
                                "slow_consumer",
                                "the client did not keep up and its stream's policy is disconnect",
                                true,
                                None,
                            ),
                        ));
                        CompleteReason::Error
                    }
                    CloseReason::Stopped => CompleteReason::Stopped,
                    CloseReason::ServerShutdown => CompleteReason::ServerShutdown,
                };
                self.complete(reason, started, &mut msgs).await;
                return;
            }
            let notify = Arc::clone(&self.notify);
            tokio::select! {
                biased;
                _ = notify.notified() => {}
                m = self.rx.recv() => match m {
                    Some(out) => {
                        let mut failed = self.on(&out, &mut msgs);
                        for _ in 1..256 {
                            if failed {
                                break;
                            }
                            match self.rx.try_recv() {
                                Ok(out) => failed = self.on(&out, &mut msgs),
                                Err(_) => break,
                            }
                        }
                        if failed {
                            // The tick stream ended with an error (sent): so do the bars.
                            self.feed.finish(&mut msgs);
                            self.complete(CompleteReason::Error, started, &mut msgs).await;
                            return;
                        }
                        if let Some(u) = self.feed.take_update() {
                            msgs.push(("update", u));
                        }
                    }
                    None => end = Some(self.flag.get().unwrap_or(CloseReason::ServerShutdown)),
                },
                _ = clock.tick() => {
                    // Only once live, and only with nothing queued: a queued tick may be
                    // older than the clock (history always is).
                    if self.feed.is_live() && self.rx.is_empty() {
                        self.feed.on_clock(now_ns() / 1000 - CLOCK_LAG_US, &mut msgs);
                    }
                }
                _ = heartbeat.tick() => {
                    let head = self.st.hub.stats().ring_head.load(Ordering::Relaxed);
                    msgs.push(("heartbeat", messages::heartbeat(now_ns(), head)));
                }
                _ = self.out.closed() => return,
            }
            for m in msgs.drain(..) {
                if self.out.send(m).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Ends the stream: `complete` after whatever `msgs` holds, all sent while the client
    /// is there.
    async fn complete(
        &mut self,
        reason: CompleteReason,
        started: std::time::Instant,
        msgs: &mut Vec<(&'static str, Bytes)>,
    ) {
        msgs.push((
            "complete",
            messages::complete(
                Some(&self.stream_id),
                reason,
                self.feed.closed(),
                started.elapsed().as_millis() as u64,
                0,
            ),
        ));
        for m in msgs.drain(..) {
            if self.out.send(m).await.is_err() {
                break;
            }
        }
    }

    /// Feeds one message; true when it ended the tick stream.
    fn on(&mut self, out: &Out, msgs: &mut Vec<(&'static str, Bytes)>) -> bool {
        self.feed.on_out(out, msgs);
        matches!(out, Out::Control { end: true, .. })
    }
}

/// `?from=..&to=..`: the bars of the range from storage, computed as the command computes
/// them (`--storage --from --to`).
async fn range_query(
    st: &AppState,
    r: &BarsRequest,
    (from_ns, to_ns): (i64, i64),
) -> Result<Response, ApiError> {
    let Some(root) = st
        .history
        .as_ref()
        .and_then(|h| h.storage_root())
        .map(std::path::Path::to_path_buf)
    else {
        return Err(ApiError::unavailable(
            "storage_unavailable",
            "a range query reads stored history and no storage is configured on this server",
        ));
    };
    let sel = Selection::of_ns(r.spec.con_id, r.spec.trades, Some(from_ns), Some(to_ns));
    let spec = r.spec.clone();
    let task = tokio::task::spawn_blocking(move || range_bars(&root, &sel, spec));
    let bars = task
        .await
        .map_err(|e| {
            ApiError::unavailable("storage_unavailable", format!("bars task failed: {e}"))
        })?
        .map_err(|e| match e {
            InputError::Output(_) => ApiError::bad_parameter(format!(
                "the range holds more than {MAX_RANGE_BARS} bars: narrow it or use a larger `size`"
            )),
            other => ApiError::unavailable("storage_unavailable", format!("{other:#}")),
        })?;
    let head = json!({
        "contract_id": r.spec.con_id,
        "size": r.spec.size_name,
        "tz": r.spec.clock.zone_name(),
        "from": from_ns.div_euclid(1000),
        "to": to_ns.div_euclid(1000),
        "count": bars.len(),
    });
    let mut body = serde_json::to_vec(&head).unwrap_or_default();
    body.pop();
    Ok(super::history::json_with_ticks(body, "bars", &bars))
}

/// Reads the range through the command's storage input into one feed.
fn range_bars(
    root: &std::path::Path,
    sel: &Selection,
    spec: BarSpec,
) -> Result<Vec<Bytes>, InputError> {
    let mut feed = BarFeed::new(spec, "range");
    let mut msgs = Vec::new();
    let mut bars: Vec<Bytes> = Vec::new();
    let mut keep = |msgs: &mut Vec<(&'static str, Bytes)>| -> Result<(), std::io::Error> {
        for (name, json) in msgs.drain(..) {
            if matches!(name, "bar" | "update") {
                bars.push(json);
            }
        }
        if bars.len() > MAX_RANGE_BARS {
            return Err(std::io::Error::other("too many bars"));
        }
        Ok(())
    };
    input::storage(root, sel, &mut |i| {
        match i {
            Input::Event(Event::Tick(t)) => feed.on_tick(&t, &mut msgs),
            Input::Event(Event::Gap(g)) => feed.on_gap(&g, &mut msgs),
            Input::Clock(now) => feed.on_clock(now, &mut msgs),
        }
        keep(&mut msgs)
    })?;
    feed.finish(&mut msgs);
    keep(&mut msgs).map_err(InputError::Output)?;
    Ok(bars)
}
