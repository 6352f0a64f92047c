//! Operations endpoints: `/health`, `/ready`, `/metrics`, `/background/status`,
//! `/v3/streams`, `/v3/client-ids`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ib_stream_ipc::{ConnState, Histogram, Liveness, StatusReader, StatusSnapshot};
use serde_json::{Value, json};

use super::error::ApiError;
use super::hub::WriterState;
use super::messages::now_ns;
use super::params::{self, Params};
use super::state::AppState;
use crate::tickjson::{conn_state_name, sub_state_name};

/// What the status region says, if it can be read.
#[derive(Debug)]
pub enum EngineStatusView {
    /// A consistent snapshot and whether its writer is alive.
    Snapshot(Box<StatusSnapshot>, Liveness),
    /// Why there is none.
    Unavailable(String),
}

/// Reads the engine's status region.
pub fn read_engine_status(st: &AppState) -> EngineStatusView {
    let reader = match StatusReader::open(&st.cfg.status_path()) {
        Ok(r) => r,
        Err(e) if e.is_missing() => {
            return EngineStatusView::Unavailable(
                "engine status region missing (engine not running)".into(),
            );
        }
        Err(e) => {
            return EngineStatusView::Unavailable(format!("engine status region unreadable: {e}"));
        }
    };
    let mut snap = StatusSnapshot::new_boxed();
    match reader.read(&mut snap) {
        Ok(_) => {
            let live = reader.liveness(now_ns(), st.cfg.stale_after.as_nanos() as i64);
            EngineStatusView::Snapshot(snap, live)
        }
        Err(e) => EngineStatusView::Unavailable(format!("engine status: {e}")),
    }
}

fn tailer_stalled(st: &AppState) -> bool {
    let last = st.hub.stats().loop_ns.load(Ordering::Relaxed);
    last == 0 || now_ns() - last > st.cfg.stale_after.as_nanos() as i64
}

/// `GET /health`: 200 only when the ring writer is alive and the engine is connected to IB.
pub async fn health(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let stats = st.hub.stats();
    let mut reasons: Vec<String> = Vec::new();
    if !st.hub.is_running() {
        reasons.push("the ring tailer is not running".into());
    } else if tailer_stalled(&st) {
        reasons.push("the ring tailer is stalled".into());
    }
    let writer = stats.writer_state();
    let age_ms = stats.heartbeat_age_ns.load(Ordering::Relaxed) / 1_000_000;
    match writer {
        WriterState::Alive => {}
        WriterState::Missing => reasons.push("ring missing: the engine is not running".into()),
        WriterState::Stale => reasons.push(format!("ring writer heartbeat is {age_ms} ms old")),
        WriterState::Stopped => reasons.push("ring writer stopped".into()),
        WriterState::Gone => reasons.push("ring writer process is gone".into()),
    }
    let engine = match read_engine_status(&st) {
        EngineStatusView::Snapshot(snap, live) => {
            if let Liveness::Stale { age_ns } = live {
                reasons.push(format!(
                    "engine status heartbeat is {} ms old",
                    age_ns / 1_000_000
                ));
            }
            if live == Liveness::Replaced {
                reasons.push("engine restarted (status region replaced)".into());
            }
            if snap.conn_state() != Some(ConnState::Connected) {
                reasons.push(format!(
                    "engine not connected to IB (state {})",
                    conn_state_name(snap.engine.conn_state)
                ));
            }
            json!({
                "connection": conn_state_name(snap.engine.conn_state),
                "server_version": snap.engine.server_version,
                "client_id": snap.engine.client_id,
                "last_error_code": snap.engine.last_error_code,
                "subscriptions": snap.engine.sub_count,
            })
        }
        EngineStatusView::Unavailable(why) => {
            reasons.push(why);
            Value::Null
        }
    };
    let healthy = reasons.is_empty();
    let body = json!({
        "status": if healthy { "healthy" } else { "unhealthy" },
        "reasons": reasons,
        "timestamp": now_ns() / 1000,
        "ring": {
            "writer": writer.name(),
            "heartbeat_age_ms": age_ms,
            "head": stats.ring_head.load(Ordering::Relaxed),
            "epoch": stats.epoch.load(Ordering::Relaxed),
        },
        "engine": engine,
        "streams": st.registry.len(),
        "max_streams": st.cfg.max_streams,
        // Which environment answers: `ib-stream status` checks it is its own.
        "shm_dir": shm_dir_name(&st.cfg.shm_dir),
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((code, Json(body)).into_response())
}

/// The shared-memory directory as an absolute path (the environment's identity).
fn shm_dir_name(dir: &std::path::Path) -> String {
    std::path::absolute(dir)
        .unwrap_or_else(|_| dir.to_path_buf())
        .display()
        .to_string()
}

/// `GET /ready`: 200 when the server can stream (the ring is mapped and tailed).
pub async fn ready(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let mut reasons = Vec::new();
    if !st.hub.is_running() {
        reasons.push("the ring tailer is not running");
    }
    if !st.hub.stats().ring_open.load(Ordering::Relaxed) {
        reasons.push("the ring is not open yet");
    }
    let ready = reasons.is_empty();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((code, Json(json!({"ready": ready, "reasons": reasons}))).into_response())
}

/// `GET /background/status`: the tracked contracts and their subscription states.
pub async fn background_status(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let view = read_engine_status(&st);
    let (engine, snap) = match &view {
        EngineStatusView::Snapshot(s, live) => (
            json!({
                "available": true,
                "connection": conn_state_name(s.engine.conn_state),
                "alive": *live == Liveness::Alive,
            }),
            Some(s),
        ),
        EngineStatusView::Unavailable(why) => (json!({"available": false, "reason": why}), None),
    };
    let contracts: Vec<Value> = st
        .cfg
        .tracked
        .iter()
        .map(|c| {
            let kinds: Vec<Value> = c
                .kinds
                .iter()
                .map(|k| {
                    let sub = snap.and_then(|s| {
                        s.subscriptions()
                            .iter()
                            .find(|x| x.con_id == c.con_id && x.kind == *k as u8)
                            .copied()
                    });
                    match sub {
                        Some(x) => json!({
                            "tick_type": k.name(),
                            "state": sub_state_name(x.state),
                            "ticks": x.ticks,
                            "last_tick": (x.last_tick_ns != 0).then_some(x.last_tick_ns / 1000),
                            "ib_error_code": (x.ib_error_code != 0).then_some(x.ib_error_code),
                            "req_id": x.req_id,
                        }),
                        None => json!({
                            "tick_type": k.name(),
                            "state": if snap.is_some() { "not_subscribed" } else { "unknown" },
                        }),
                    }
                })
                .collect();
            json!({
                "con_id": c.con_id,
                "symbol": c.symbol,
                "buffer_hours": c.buffer_hours,
                "tick_types": kinds,
            })
        })
        .collect();
    Ok(Json(json!({
        "enabled": !st.cfg.tracked.is_empty(),
        "timestamp": now_ns() / 1000,
        "engine": engine,
        "contracts": contracts,
    })))
}

/// `GET /v3/client-ids`: every IB client id in use in this environment: the registry's
/// leases and refusals when it is on, the fixed range when it is off, and the id the
/// engine reports in its status region.
pub async fn client_ids(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let engine = match read_engine_status(&st) {
        EngineStatusView::Snapshot(snap, _) => Some(snap.engine.client_id),
        EngineStatusView::Unavailable(_) => None,
    };
    let ids = st.cfg.client_ids.clone();
    // The registry's file is read from disk: off the async workers.
    let body = tokio::task::spawn_blocking(move || crate::clientid::view(&ids, engine))
        .await
        .map_err(|e| ApiError::unavailable("client_ids", format!("client ids: {e}")))?;
    Ok(Json(body).into_response())
}

/// `GET /v3/backfill`: the backfill's status file in this environment's storage (its
/// session, pacing budgets, queue, violations, ETA): `{"present":true,"status":{...}}`, or
/// `{"present":false}` when it never ran here (or the server reads no storage).
pub async fn backfill(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let root = st
        .history
        .as_ref()
        .and_then(|h| h.storage_root().map(std::path::Path::to_path_buf));
    // A file read: off the async workers.
    let status =
        tokio::task::spawn_blocking(move || root.and_then(|r| crate::backfill::status::load(&r)))
            .await
            .map_err(|e| ApiError::unavailable("backfill", format!("backfill status: {e}")))?;
    let body = match status {
        Some(s) => json!({"present": true, "status": s}),
        None => json!({"present": false}),
    };
    Ok(Json(body).into_response())
}

/// `GET /v3/streams`: the shared subscriptions and the client streams on each.
pub async fn streams(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let clients = st.registry.list();
    let subs: Vec<Value> = st
        .subs
        .list()
        .into_iter()
        .map(|s| {
            let on: Vec<&str> = clients
                .iter()
                .filter(|c| c.con_id == s.con_id && c.tick_types.contains(&s.tick_type))
                .map(|c| c.stream_id.as_str())
                .collect();
            json!({
                "con_id": s.con_id,
                "tick_type": s.tick_type,
                "holders": s.holders,
                "tracked": s.tracked,
                "since": s.since,
                "streams": on,
            })
        })
        .collect();
    Ok(Json(json!({
        "subscriptions": subs,
        "streams": clients,
        "count": clients.len(),
        "max_streams": st.cfg.max_streams,
    })))
}

/// `DELETE /v3/streams/{conId}`: ends every client stream of the contract.
pub async fn stop_streams(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let con_id = params::con_id(&raw)?;
    Params::parse(q.as_deref(), &[])?;
    // Streams still replaying history, and the tailer's, in one step (see Replays::stop).
    let (replaying, in_tailer) = st.replays.stop(con_id, || st.hub.stop_contract_now(con_id));
    let n = replaying + in_tailer.await;
    if n == 0 {
        return Err(ApiError::not_found(format!(
            "no open stream on contract {con_id}"
        )));
    }
    Ok(Json(json!({"con_id": con_id, "stopped": n})))
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

fn one(v: u64) -> [(String, f64); 1] {
    [(String::new(), v as f64)]
}

fn summary(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} summary");
    for q in [0.5, 0.9, 0.99, 0.999] {
        if let Some(v) = h.percentile(q) {
            let _ = writeln!(out, "{name}{{quantile=\"{q}\"}} {v}");
        }
    }
    let _ = writeln!(out, "{name}_sum {}", h.sum);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let mut out = String::with_capacity(8192);
    let h = st.hub.stats();
    let m = &st.metrics;
    let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let head = ld(&h.ring_head);
    let next = ld(&h.next_seq);
    let clients = st.registry.list();
    let sse = clients.iter().filter(|c| c.transport == "sse").count() as f64;
    let ws = clients.len() as f64 - sse;
    metric(
        &mut out,
        "ib_stream_serve_streams",
        "gauge",
        "Client streams open.",
        &[
            ("{transport=\"sse\"}".into(), sse),
            ("{transport=\"ws\"}".into(), ws),
        ],
    );
    metric(
        &mut out,
        "ib_stream_serve_ws_connections",
        "gauge",
        "WebSocket connections open.",
        &one(ld(&m.ws_open)),
    );
    metric(
        &mut out,
        "ib_stream_serve_ws_connections_total",
        "counter",
        "WebSocket connections accepted.",
        &one(ld(&m.ws_connections)),
    );
    metric(
        &mut out,
        "ib_stream_serve_sse_streams_total",
        "counter",
        "SSE streams opened.",
        &one(ld(&m.sse_opened)),
    );
    metric(
        &mut out,
        "ib_stream_serve_ws_subscriptions_total",
        "counter",
        "WebSocket subscriptions made.",
        &one(ld(&m.ws_subscriptions)),
    );
    metric(
        &mut out,
        "ib_stream_serve_history_replays_total",
        "counter",
        "Replays from stored history (since=, or a resume older than the ring).",
        &one(ld(&m.history_replays)),
    );
    metric(
        &mut out,
        "ib_stream_serve_history_ticks_total",
        "counter",
        "Ticks sent from stored history by replays.",
        &one(ld(&m.history_ticks)),
    );
    metric(
        &mut out,
        "ib_stream_serve_refused_by_address_total",
        "counter",
        "Streams and connections refused by the cap per remote address.",
        &[
            (
                "{transport=\"sse\"}".into(),
                ld(&m.sse_refused_per_ip) as f64,
            ),
            ("{transport=\"ws\"}".into(), ld(&m.ws_refused_per_ip) as f64),
        ],
    );
    metric(
        &mut out,
        "ib_stream_serve_ticks_sent_total",
        "counter",
        "Ticks written to clients.",
        &[
            ("{transport=\"sse\"}".into(), ld(&m.sse_ticks) as f64),
            ("{transport=\"ws\"}".into(), ld(&m.ws_ticks) as f64),
        ],
    );
    metric(
        &mut out,
        "ib_stream_serve_ws_messages_in_total",
        "counter",
        "Client messages received over WebSocket.",
        &one(ld(&m.ws_messages_in)),
    );
    metric(
        &mut out,
        "ib_stream_serve_ws_limit_closes_total",
        "counter",
        "WebSocket connections closed for breaking a limit.",
        &one(ld(&m.ws_limit_closes)),
    );
    metric(
        &mut out,
        "ib_stream_serve_streams_refused_total",
        "counter",
        "Streams refused at max_streams.",
        &one(ld(&m.streams_refused)),
    );
    let c = &st.connections;
    for (name, kind, help, v) in [
        (
            "ib_stream_serve_connections_open",
            "gauge",
            "HTTP connections open now.",
            &c.open,
        ),
        (
            "ib_stream_serve_connections_cap",
            "gauge",
            "The connection cap in force (IB_STREAM_HTTP_MAX_CONNECTIONS, fitted to RLIMIT_NOFILE).",
            &c.cap,
        ),
        (
            "ib_stream_serve_connections_accepted_total",
            "counter",
            "HTTP connections accepted.",
            &c.accepted,
        ),
        (
            "ib_stream_serve_connections_evicted_total",
            "counter",
            "Connections without a complete request header closed to make room at the cap.",
            &c.evicted,
        ),
        (
            "ib_stream_serve_connections_refused_total",
            "counter",
            "Connections answered 503 at the cap (every slot held an accepted request).",
            &c.refused,
        ),
        (
            "ib_stream_serve_header_timeouts_total",
            "counter",
            "Connections closed for not sending a request header within the header timeout.",
            &c.header_timeouts,
        ),
        (
            "ib_stream_serve_accept_errors_total",
            "counter",
            "Accept errors (EMFILE and the like).",
            &c.accept_errors,
        ),
        (
            "ib_stream_serve_heap_trims_total",
            "counter",
            "Heap trims (malloc_trim) after bursts of connections.",
            &c.trims,
        ),
    ] {
        metric(&mut out, name, kind, help, &one(ld(v)));
    }
    metric(
        &mut out,
        "ib_stream_serve_slow_client_closes_total",
        "counter",
        "Streams closed as slow consumers.",
        &one(ld(&h.slow_disconnects)),
    );
    metric(
        &mut out,
        "ib_stream_serve_conflated_ticks_total",
        "counter",
        "Ticks dropped by conflation for slow clients.",
        &one(ld(&h.conflated_drops)),
    );
    metric(
        &mut out,
        "ib_stream_serve_ring_records_read_total",
        "counter",
        "Records read from the ring by the tailer.",
        &one(ld(&h.records_read)),
    );
    metric(
        &mut out,
        "ib_stream_serve_ring_records_per_second",
        "gauge",
        "Records read in the last second.",
        &one(ld(&h.records_per_sec)),
    );
    metric(
        &mut out,
        "ib_stream_serve_ring_head",
        "gauge",
        "Newest ring sequence.",
        &one(head),
    );
    metric(
        &mut out,
        "ib_stream_serve_tailer_lag_records",
        "gauge",
        "Records published but not yet read by the tailer.",
        &one(head.saturating_sub(next.saturating_sub(1))),
    );
    metric(
        &mut out,
        "ib_stream_serve_ring_overruns_total",
        "counter",
        "Times the tailer was lapped by the writer.",
        &one(ld(&h.overrun_gaps)),
    );
    metric(
        &mut out,
        "ib_stream_serve_ring_overrun_records_total",
        "counter",
        "Records lost to laps.",
        &one(ld(&h.overrun_records)),
    );
    metric(
        &mut out,
        "ib_stream_serve_ticks_queued_total",
        "counter",
        "Ticks queued to client streams.",
        &one(ld(&h.ticks_queued)),
    );
    metric(
        &mut out,
        "ib_stream_serve_ring_writer_up",
        "gauge",
        "1 when the ring writer's heartbeat is fresh.",
        &one(u64::from(h.writer_state() == WriterState::Alive)),
    );
    metric(
        &mut out,
        "ib_stream_serve_writer_restarts_total",
        "counter",
        "Ring writer restarts seen.",
        &one(ld(&h.writer_restarts)),
    );
    metric(
        &mut out,
        "ib_stream_serve_shared_subscriptions",
        "gauge",
        "Engine subscriptions held for clients.",
        &one(st.subs.list().len() as u64),
    );
    let (cum, sum) = m.delivery_us.cumulative();
    let _ = writeln!(
        out,
        "# HELP ib_stream_serve_delivery_latency_us Engine receive to client write, microseconds."
    );
    let _ = writeln!(out, "# TYPE ib_stream_serve_delivery_latency_us histogram");
    for (i, c) in cum.iter().enumerate() {
        let le = super::state::LATENCY_BOUNDS_US
            .get(i)
            .map_or("+Inf".to_string(), |b| b.to_string());
        let _ = writeln!(
            out,
            "ib_stream_serve_delivery_latency_us_bucket{{le=\"{le}\"}} {c}"
        );
    }
    let _ = writeln!(out, "ib_stream_serve_delivery_latency_us_sum {sum}");
    let _ = writeln!(
        out,
        "ib_stream_serve_delivery_latency_us_count {}",
        cum.last().copied().unwrap_or(0)
    );
    match read_engine_status(&st) {
        EngineStatusView::Snapshot(s, live) => {
            metric(
                &mut out,
                "ib_stream_engine_up",
                "gauge",
                "1 when the engine's status heartbeat is fresh.",
                &one(u64::from(live == Liveness::Alive)),
            );
            metric(
                &mut out,
                "ib_stream_engine_connected",
                "gauge",
                "1 when the engine is connected to IB.",
                &one(u64::from(s.conn_state() == Some(ConnState::Connected))),
            );
            let c = &s.counters;
            for (name, help, v) in [
                (
                    "records_published",
                    "Records written to the ring.",
                    c.records_published,
                ),
                ("bytes_read", "Bytes read from the IB socket.", c.bytes_read),
                ("frames_decoded", "Frames decoded.", c.frames_decoded),
                (
                    "decode_errors",
                    "Frames that could not be decoded.",
                    c.decode_errors,
                ),
                ("messages_sent", "Messages sent to IB.", c.messages_sent),
                (
                    "reconnects",
                    "Connection attempts after the first.",
                    c.reconnects,
                ),
                ("gaps", "Gap records written.", c.gaps),
                ("ib_errors", "IB error messages received.", c.ib_errors),
                (
                    "subscriptions_rejected",
                    "Subscriptions IB rejected.",
                    c.subscriptions_rejected,
                ),
                (
                    "pacing_delays",
                    "Requests delayed for pacing.",
                    c.pacing_delays,
                ),
                (
                    "strings_dropped",
                    "Strings dropped (string table full).",
                    c.strings_dropped,
                ),
                (
                    "control_requests",
                    "Control-socket requests served.",
                    c.control_requests,
                ),
            ] {
                metric(
                    &mut out,
                    &format!("ib_stream_engine_{name}_total"),
                    "counter",
                    help,
                    &one(v),
                );
            }
            let mut by_state: std::collections::BTreeMap<&str, u64> = Default::default();
            for sub in s.subscriptions() {
                *by_state.entry(sub_state_name(sub.state)).or_default() += 1;
            }
            let samples: Vec<(String, f64)> = by_state
                .into_iter()
                .map(|(k, v)| (format!("{{state=\"{k}\"}}"), v as f64))
                .collect();
            metric(
                &mut out,
                "ib_stream_engine_subscriptions",
                "gauge",
                "Engine subscriptions by state.",
                &samples,
            );
            summary(
                &mut out,
                "ib_stream_engine_recv_to_publish_ns",
                "Socket readable to record published, ns.",
                &s.latencies.recv_to_publish,
            );
            summary(
                &mut out,
                "ib_stream_engine_decode_ns",
                "Decoding one frame, ns.",
                &s.latencies.decode,
            );
            summary(
                &mut out,
                "ib_stream_engine_loop_iteration_ns",
                "One engine loop iteration, ns.",
                &s.latencies.loop_iteration,
            );
            summary(
                &mut out,
                "ib_stream_engine_kernel_to_commit_ns",
                "Per IB socket read: kernel receive stamp to ring commit of its last record, ns.",
                &s.latencies.kernel_to_commit,
            );
            summary(
                &mut out,
                "ib_stream_engine_read_to_commit_ns",
                "Per IB socket read: read return to ring commit of its last record, ns.",
                &s.latencies.read_to_commit,
            );
        }
        EngineStatusView::Unavailable(_) => {
            metric(
                &mut out,
                "ib_stream_engine_up",
                "gauge",
                "1 when the engine's status heartbeat is fresh.",
                &one(0),
            );
        }
    }
    let mut resp = out.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}
