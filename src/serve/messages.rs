//! The typed control messages shared by SSE and WebSocket (see `docs/PROTOCOL.md`).
//!
//! A tick is the `tickjson` object as stored (it has `seq` and `tt`, never `type`); every
//! control message has a `type`. Builders return the JSON bytes so that the SSE `data:` line
//! and the WebSocket text frame carry the same bytes.

use bytes::Bytes;
use serde_json::{Value, json};

/// Why a stream ended (`complete.reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompleteReason {
    /// The `limit` of ticks was delivered.
    LimitReached,
    /// The `timeout` elapsed.
    Timeout,
    /// The client unsubscribed (WebSocket).
    Unsubscribed,
    /// An operator stopped the stream (`DELETE /v3/streams/{conId}`).
    Stopped,
    /// The server is shutting down.
    ServerShutdown,
    /// An error ended it (the `error` message before says which).
    Error,
}

impl CompleteReason {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            CompleteReason::LimitReached => "limit_reached",
            CompleteReason::Timeout => "timeout",
            CompleteReason::Unsubscribed => "unsubscribed",
            CompleteReason::Stopped => "stopped",
            CompleteReason::ServerShutdown => "server_shutdown",
            CompleteReason::Error => "error",
        }
    }
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

fn with_stream(mut v: Value, stream_id: Option<&str>) -> Bytes {
    if let (Some(id), Value::Object(m)) = (stream_id, &mut v) {
        m.insert("stream_id".into(), Value::String(id.to_owned()));
    }
    to_bytes(&v)
}

/// ns since the epoch → µs, or JSON null for "unknown" (0).
fn us_or_null(ns: i64) -> Value {
    if ns == 0 {
        Value::Null
    } else {
        json!(ns.div_euclid(1000))
    }
}

/// What a `gap` says: ring sequences `first_seq..=last_seq` (`count` records of the whole
/// ring, not only this stream's) will never be delivered; they fell between receive times
/// `t0` and `t1` (ns, 0 when unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GapInfo {
    /// `reader_overrun`, `slow_client`, `writer_restart`, `resume_unavailable`, or an
    /// engine reason (`disconnected`, `ib_connectivity`, ...).
    pub reason: &'static str,
    /// First sequence lost.
    pub first_seq: u64,
    /// Last sequence lost.
    pub last_seq: u64,
    /// Records lost.
    pub count: u64,
    /// Receive time of the last record before the gap, ns (0 unknown).
    pub t0_ns: i64,
    /// Receive time of the first record after the gap, ns (0 unknown).
    pub t1_ns: i64,
}

/// A `gap` message.
pub fn gap(stream_id: Option<&str>, g: &GapInfo) -> Bytes {
    with_stream(
        json!({
            "type": "gap",
            "reason": g.reason,
            "first_seq": g.first_seq,
            "last_seq": g.last_seq,
            "count": g.count,
            "t0": us_or_null(g.t0_ns),
            "t1": us_or_null(g.t1_ns),
        }),
        stream_id,
    )
}

/// A gap message with the backfill's fill states (`fill`, a JSON array; see
/// `storage::backfill`) when there are any.
pub fn with_fill(msg: Bytes, fill: Option<&[u8]>) -> Bytes {
    match fill {
        Some(a) => {
            let mut v = msg.to_vec();
            crate::storage::backfill::add_fill_field(&mut v, a);
            Bytes::from(v)
        }
        None => msg,
    }
}

/// The `gap{writer_restart}` message: the engine restarted (a new ring epoch). Its one
/// meaning (`ipc`'s `WriterRestart`): every sequence of the old run (`epoch`) up to
/// `first_seq - 1` was delivered or reported; after a clean stop (`clean: true`) nothing of
/// the old run is missing (`last_seq = first_seq - 1`, `count` 0); otherwise what the old
/// engine received after its last published record is unknown: `first_seq` on, to the end of
/// the old run (`last_seq` and `count` null). `new_epoch` is the run that follows, from its
/// sequence 1; `t0` is the receive time of the last record before, `t1` when the restart
/// was seen.
pub fn writer_restart(
    stream_id: Option<&str>,
    r: &ib_stream_ipc::WriterRestart,
    t0_ns: i64,
    t1_ns: i64,
) -> Bytes {
    let first = r.old_last_seq + 1;
    let (last, count) = if r.clean {
        (json!(r.old_last_seq), json!(0))
    } else {
        (Value::Null, Value::Null)
    };
    with_stream(
        json!({
            "type": "gap",
            "reason": "writer_restart",
            "first_seq": first,
            "last_seq": last,
            "count": count,
            "t0": us_or_null(t0_ns),
            "t1": us_or_null(t1_ns),
            "epoch": format!("{:016x}", r.old_epoch),
            "new_epoch": format!("{:016x}", r.new_epoch),
            "clean": r.clean,
        }),
        stream_id,
    )
}

/// An `error` message. `ib_code` is IB's error code when IB caused it.
pub fn error(
    stream_id: Option<&str>,
    code: &str,
    message: &str,
    recoverable: bool,
    ib_code: Option<i64>,
) -> Bytes {
    let mut v = json!({
        "type": "error",
        "code": code,
        "message": message,
        "recoverable": recoverable,
    });
    if let (Some(c), Value::Object(m)) = (ib_code, &mut v) {
        m.insert("ib_code".into(), json!(c));
    }
    with_stream(v, stream_id)
}

/// A `complete` message: the stream ended after `count` ticks and `duration_ms`.
pub fn complete(
    stream_id: Option<&str>,
    reason: CompleteReason,
    count: u64,
    duration_ms: u64,
    last_seq: u64,
) -> Bytes {
    with_stream(
        json!({
            "type": "complete",
            "reason": reason.name(),
            "count": count,
            "duration_ms": duration_ms,
            "last_seq": last_seq,
        }),
        stream_id,
    )
}

/// An `info` message with a `status` and more fields.
pub fn info(stream_id: Option<&str>, status: &str, fields: Value) -> Bytes {
    let mut v = json!({"type": "info", "status": status});
    if let (Value::Object(m), Value::Object(extra)) = (&mut v, fields) {
        m.extend(extra);
    }
    with_stream(v, stream_id)
}

/// An `info` that carries a system record (subscription or connection change) as its
/// `tickjson` object in `record`.
pub fn info_record(stream_id: Option<&str>, status: &str, record_json: &[u8]) -> Bytes {
    let record: Value = serde_json::from_slice(record_json).unwrap_or(Value::Null);
    info(stream_id, status, json!({ "record": record }))
}

/// A `heartbeat`: the server's time (µs) and the newest ring sequence it knows.
pub fn heartbeat(now_ns: i64, ring_head: u64) -> Bytes {
    to_bytes(&json!({
        "type": "heartbeat",
        "ts": now_ns.div_euclid(1000),
        "ring_head": ring_head,
    }))
}

/// ns since the Unix epoch now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &Bytes) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn every_control_message_has_a_type_and_its_fields() {
        let g = parse(&gap(
            Some("s1"),
            &GapInfo {
                reason: "reader_overrun",
                first_seq: 3,
                last_seq: 9,
                count: 7,
                t0_ns: 5_000,
                t1_ns: 0,
            },
        ));
        assert_eq!(g["type"], "gap");
        assert_eq!(g["stream_id"], "s1");
        assert_eq!(
            (g["first_seq"].as_u64(), g["count"].as_u64()),
            (Some(3), Some(7))
        );
        assert_eq!(g["t0"], 5);
        assert!(g["t1"].is_null());
        let e = parse(&error(None, "rejected", "no", false, Some(10189)));
        assert_eq!(
            (
                e["type"].as_str(),
                e["ib_code"].as_i64(),
                e["recoverable"].as_bool()
            ),
            (Some("error"), Some(10189), Some(false))
        );
        assert!(e.get("stream_id").is_none());
        let c = parse(&complete(None, CompleteReason::LimitReached, 5, 12, 40));
        assert_eq!(c["reason"], "limit_reached");
        let i = parse(&info(Some("x"), "stream_start", json!({"a": 1})));
        assert_eq!(
            (i["status"].as_str(), i["a"].as_i64()),
            (Some("stream_start"), Some(1))
        );
        let h = parse(&heartbeat(2_000_000, 7));
        assert_eq!(
            (h["ts"].as_i64(), h["ring_head"].as_u64()),
            (Some(2000), Some(7))
        );
    }
}
