//! The server's messages, typed (docs/PROTOCOL.md): a tick (no `type` key) or a control
//! message (`type`: `info`, `gap`, `error`, `complete`, `heartbeat`, and the WebSocket
//! answers `subscribed`, `unsubscribed`, `pong`).
//!
//! [`parse`] turns one frame (a WebSocket text message, an SSE `data:` payload) into a
//! [`ServerMessage`] or a [`FrameError`]; it never panics on any input.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::FrameError;

/// A tick: the compact tick JSON of the server (`src/tickjson.rs`, docs/STORAGE.md), with the
/// same keys. Prices and sizes are the exact decimals of the JSON read as `f64`.
/// Serializes back to the same compact JSON (absent values and false flags left out).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Tick {
    /// Ring sequence, 1-based, per engine run.
    pub seq: u64,
    /// Engine receive time, µs since the Unix epoch.
    pub st: i64,
    /// IB's event time, µs (absent when IB gave none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    /// Nanoseconds beyond `ts`'s microsecond, when IB gave them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tn: Option<i64>,
    /// conId.
    pub cid: u32,
    /// Tick type: `bid_ask`, `last`, `all_last`, `mid_point`, `l1_price`, `l1_size`,
    /// `l1_generic`, `l1_string`.
    pub tt: TickKind,
    /// Bid price (`bid_ask`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "compact_num::option"
    )]
    pub bp: Option<f64>,
    /// Bid size (`bid_ask`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "compact_num::option"
    )]
    pub bs: Option<f64>,
    /// Ask price (`bid_ask`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "compact_num::option"
    )]
    pub ap: Option<f64>,
    /// Ask size (`bid_ask`).
    #[serde(
        default,
        rename = "as",
        skip_serializing_if = "Option::is_none",
        serialize_with = "compact_num::option"
    )]
    pub r#as: Option<f64>,
    /// Price (`last`, `all_last`, `l1_price`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "compact_num::option"
    )]
    pub p: Option<f64>,
    /// Size (`last`, `all_last`, `l1_price`, `l1_size`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "compact_num::option"
    )]
    pub s: Option<f64>,
    /// Midpoint (`mid_point`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "compact_num::option"
    )]
    pub mp: Option<f64>,
    /// Exchange of a trade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// Trade conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c: Option<String>,
    /// IB's field number of a top-of-book tick (`l1_*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f: Option<i64>,
    /// Value of `l1_generic` (a number) or `l1_string` (a string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<L1Value>,
    /// Delayed data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dl: bool,
    /// Frozen data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fz: bool,
    /// Part of a snapshot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snap: bool,
    /// Marked stale by the engine.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// Past limit (trades, `l1_price`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pl: bool,
    /// Unreported trade.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upt: bool,
    /// Bid past low.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bpl: bool,
    /// Ask past high.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub aph: bool,
    /// Can auto-execute (`l1_price`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cae: bool,
    /// Pre-open (`l1_price`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub po: bool,
}

/// Numbers written back as the server writes them: a whole value without a fraction (`1`,
/// not serde's `1.0`), so a tick serializes to the server's bytes (`ib-stream watch`).
mod compact_num {
    use serde::Serializer;

    /// Largest integer an `f64` holds exactly.
    const EXACT: f64 = 9_007_199_254_740_992.0;

    pub(super) fn plain<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.fract() == 0.0 && v.abs() < EXACT {
            // Whole and exact: the cast loses nothing.
            #[allow(clippy::cast_possible_truncation)]
            s.serialize_i64(*v as i64)
        } else {
            s.serialize_f64(*v)
        }
    }

    // serde's `serialize_with` hands over a reference to the field.
    #[allow(clippy::ref_option)]
    pub(super) fn option<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => plain(v, s),
            None => s.serialize_none(),
        }
    }
}

/// The kind of a tick (`tt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TickKind {
    /// Tick-by-tick bid and ask.
    BidAsk,
    /// Tick-by-tick last trade.
    Last,
    /// Tick-by-tick trades of every exchange.
    AllLast,
    /// Tick-by-tick midpoint.
    MidPoint,
    /// Top of book (reqMktData) price.
    L1Price,
    /// Top of book size.
    L1Size,
    /// Top of book generic value.
    L1Generic,
    /// Top of book string value.
    L1String,
    /// A kind this client version does not know.
    #[serde(other)]
    Unknown,
}

impl TickKind {
    /// The tick type a subscription names to receive this kind (`mktdata` for the `l1_*`).
    pub fn requested_as(self) -> &'static str {
        match self {
            TickKind::BidAsk => "bid_ask",
            TickKind::Last => "last",
            TickKind::AllLast => "all_last",
            TickKind::MidPoint => "mid_point",
            TickKind::L1Price | TickKind::L1Size | TickKind::L1Generic | TickKind::L1String => {
                "mktdata"
            }
            TickKind::Unknown => "unknown",
        }
    }
}

/// `v` of a top-of-book tick.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum L1Value {
    /// `l1_generic`.
    Number(#[serde(serialize_with = "compact_num::plain")] f64),
    /// `l1_string`.
    Text(String),
}

/// Why ticks are missing (`gap.reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GapReason {
    /// The server's ring reader fell more than a ring behind.
    ReaderOverrun,
    /// A resume asked for records neither the ring nor storage had.
    ResumeUnavailable,
    /// The server conflated this stream (its queue was full).
    SlowClient,
    /// The engine restarted: a new run (`new_epoch`), sequences start again at 1.
    WriterRestart,
    /// The engine lost its IB connection.
    Disconnected,
    /// IB reported a connectivity loss.
    IbConnectivity,
    /// The recorder could not write these records.
    WriteError,
    /// Stored data that failed its checksum (`corrupt_block`, `corrupt_header`,
    /// `corrupt_line`).
    CorruptStorage(String),
    /// This client dropped ticks because its consumer was slow (policy
    /// [`crate::SlowConsumerPolicy::DropTicks`]); never sent by the server.
    ClientOverflow,
    /// A reason this client version does not know.
    Other(String),
}

impl GapReason {
    fn from_name(s: &str) -> GapReason {
        match s {
            "reader_overrun" => GapReason::ReaderOverrun,
            "resume_unavailable" => GapReason::ResumeUnavailable,
            "slow_client" => GapReason::SlowClient,
            "writer_restart" => GapReason::WriterRestart,
            "disconnected" => GapReason::Disconnected,
            "ib_connectivity" => GapReason::IbConnectivity,
            "write_error" => GapReason::WriteError,
            "corrupt_block" | "corrupt_header" | "corrupt_line" => {
                GapReason::CorruptStorage(s.to_owned())
            }
            "client_overflow" => GapReason::ClientOverflow,
            other => GapReason::Other(other.to_owned()),
        }
    }
}

/// A `gap`: ring sequences `first_seq..=last_seq` will never be delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct Gap {
    /// Why.
    pub reason: GapReason,
    /// First sequence lost (for `writer_restart`: the first of the old run not delivered).
    pub first_seq: Option<u64>,
    /// Last sequence lost; `None` when unknown (an unclean engine restart).
    pub last_seq: Option<u64>,
    /// Records lost; `None` when unknown.
    pub count: Option<u64>,
    /// Receive time (µs) of the last record before, when known.
    pub t0: Option<i64>,
    /// Receive time (µs) of the first record after, when known.
    pub t1: Option<i64>,
    /// `writer_restart`: the old run.
    pub epoch: Option<String>,
    /// `writer_restart`: the new run.
    pub new_epoch: Option<String>,
    /// `writer_restart`: whether the old engine stopped cleanly.
    pub clean: Option<bool>,
    /// The server's stream id.
    pub stream_id: Option<String>,
}

/// What the server advertises in `info{connected}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Limits {
    /// Streams one connection may hold.
    pub max_streams: usize,
    /// Client messages per second before the server closes the connection.
    pub max_messages_per_second: u32,
    /// Largest client message.
    pub max_message_bytes: usize,
}

/// An `info` message, by `status`.
#[derive(Debug, Clone, PartialEq)]
pub enum Info {
    /// WebSocket only, first message: the protocol, limits and heartbeat period.
    Connected {
        /// `v3`.
        protocol: String,
        /// Per-connection limits.
        limits: Option<Limits>,
        /// Seconds between heartbeats.
        heartbeat_seconds: Option<u64>,
    },
    /// A stream started: the engine run it is in and the ring head at its start.
    StreamStart {
        /// The run (16 hex digits).
        epoch: Option<String>,
        /// The newest ring sequence when the stream started.
        ring_head: Option<u64>,
        /// The resume point as given (a token string or a number), if any.
        resume_after: Value,
        /// Seconds between heartbeats on this stream (how an SSE client learns the period:
        /// it gets no `info{connected}`).
        heartbeat_seconds: Option<u64>,
    },
    /// A replay from storage starts.
    HistoryStart {
        /// The current run.
        epoch: Option<String>,
    },
    /// The replayed ticks that follow belong to this (earlier) run.
    HistoryEpoch {
        /// The run.
        epoch: String,
    },
    /// The replay joined the live ring.
    Live {
        /// The last sequence replayed.
        after_seq: Option<u64>,
        /// The current run.
        epoch: Option<String>,
        /// Ticks replayed.
        history_ticks: Option<u64>,
        /// Why storage could not be read, if it could not.
        history_error: Option<String>,
    },
    /// The resume point could not be given; the stream goes on live in `epoch`.
    ResumeUnavailable {
        /// The resume point asked for.
        requested_after: Value,
        /// The run the stream goes on in.
        epoch: Option<String>,
        /// Why.
        why: Option<String>,
    },
    /// The engine holds this stream's subscription back (IB's pacing).
    SubscriptionQueued(Value),
    /// Any other status (`subscription`, `connection`, and those this version does not
    /// know), as the JSON object.
    Other {
        /// The status.
        status: String,
        /// The whole message.
        raw: Value,
    },
}

/// An `error` from the server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ServerError {
    /// `subscription_rejected`, `slow_consumer`, `too_many_streams`, ...
    pub code: String,
    /// Human-readable text.
    #[serde(default)]
    pub message: String,
    /// Whether reconnecting and resuming can help.
    #[serde(default)]
    pub recoverable: bool,
    /// IB's error code when IB caused it.
    #[serde(default)]
    pub ib_code: Option<i64>,
    /// The request's `id`, for an answer to a request.
    #[serde(default)]
    pub id: Option<Value>,
}

/// A `complete`: the stream ended.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Complete {
    /// `limit_reached`, `timeout`, `unsubscribed`, `stopped`, `server_shutdown`, `error`.
    pub reason: String,
    /// Ticks the server sent on this stream.
    #[serde(default)]
    pub count: u64,
    /// The stream's last sequence.
    #[serde(default)]
    pub last_seq: u64,
}

/// A `heartbeat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Heartbeat {
    /// Server time, µs since the Unix epoch.
    pub ts: i64,
    /// Newest ring sequence the server knows.
    pub ring_head: u64,
}

/// One message from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// A tick.
    Tick(Tick),
    /// An `info`, with its stream.
    Info {
        /// The message.
        info: Info,
        /// Its stream, if about one.
        stream_id: Option<String>,
    },
    /// A `gap`.
    Gap(Gap),
    /// An `error`, with its stream.
    Error {
        /// The error.
        error: ServerError,
        /// Its stream, if about one.
        stream_id: Option<String>,
    },
    /// A `complete`.
    Complete {
        /// The message.
        complete: Complete,
        /// Its stream.
        stream_id: Option<String>,
    },
    /// A `heartbeat`.
    Heartbeat(Heartbeat),
    /// The answer to a `subscribe`.
    Subscribed {
        /// The request's id.
        id: Value,
        /// The server's stream id.
        stream_id: String,
    },
    /// The answer to an `unsubscribe`.
    Unsubscribed {
        /// The request's id.
        id: Value,
        /// The stream.
        stream_id: String,
    },
    /// The answer to a `ping`.
    Pong {
        /// The request's id.
        id: Value,
    },
}

fn str_of(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

fn u64_of(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(Value::as_u64)
}

fn i64_of(v: &Value, k: &str) -> Option<i64> {
    v.get(k).and_then(Value::as_i64)
}

fn required_str(v: &Value, k: &'static str, ty: &'static str) -> Result<String, FrameError> {
    str_of(v, k).ok_or(FrameError::Shape {
        what: ty,
        why: format!("`{k}` missing or not a string"),
    })
}

/// Parses one frame. Ticks (the common case) go straight to their struct; control messages
/// through a JSON value, since they are rare.
pub fn parse(frame: &[u8]) -> Result<ServerMessage, FrameError> {
    let trimmed = frame.trim_ascii_start();
    if trimmed.is_empty() {
        return Err(FrameError::Empty);
    }
    if trimmed.starts_with(b"{\"seq\"") {
        return serde_json::from_slice::<Tick>(trimmed)
            .map(ServerMessage::Tick)
            .map_err(|e| json_error(&e, trimmed));
    }
    let v: Value = serde_json::from_slice(trimmed).map_err(|e| json_error(&e, trimmed))?;
    if !v.is_object() {
        return Err(FrameError::Shape {
            what: "message",
            why: "not a JSON object".into(),
        });
    }
    let Some(ty) = v.get("type").and_then(Value::as_str) else {
        // A tick whose keys come in another order.
        return serde_json::from_value::<Tick>(v)
            .map(ServerMessage::Tick)
            .map_err(|e| FrameError::Shape {
                what: "tick",
                why: e.to_string(),
            });
    };
    let stream_id = str_of(&v, "stream_id");
    match ty {
        "heartbeat" => serde_json::from_value(v)
            .map(ServerMessage::Heartbeat)
            .map_err(|e| FrameError::Shape {
                what: "heartbeat",
                why: e.to_string(),
            }),
        "gap" => Ok(ServerMessage::Gap(Gap {
            reason: GapReason::from_name(&required_str(&v, "reason", "gap")?),
            first_seq: u64_of(&v, "first_seq"),
            last_seq: u64_of(&v, "last_seq"),
            count: u64_of(&v, "count"),
            t0: i64_of(&v, "t0"),
            t1: i64_of(&v, "t1"),
            epoch: str_of(&v, "epoch"),
            new_epoch: str_of(&v, "new_epoch"),
            clean: v.get("clean").and_then(Value::as_bool),
            stream_id,
        })),
        "error" => {
            let error = serde_json::from_value(v).map_err(|e| FrameError::Shape {
                what: "error",
                why: e.to_string(),
            })?;
            Ok(ServerMessage::Error { error, stream_id })
        }
        "complete" => {
            let complete = serde_json::from_value(v).map_err(|e| FrameError::Shape {
                what: "complete",
                why: e.to_string(),
            })?;
            Ok(ServerMessage::Complete {
                complete,
                stream_id,
            })
        }
        "subscribed" => Ok(ServerMessage::Subscribed {
            stream_id: required_str(&v, "stream_id", "subscribed")?,
            id: v.get("id").cloned().unwrap_or(Value::Null),
        }),
        "unsubscribed" => Ok(ServerMessage::Unsubscribed {
            stream_id: required_str(&v, "stream_id", "unsubscribed")?,
            id: v.get("id").cloned().unwrap_or(Value::Null),
        }),
        "pong" => Ok(ServerMessage::Pong {
            id: v.get("id").cloned().unwrap_or(Value::Null),
        }),
        "info" => {
            let info = info(v)?;
            Ok(ServerMessage::Info { info, stream_id })
        }
        other => Err(FrameError::UnknownType(other.chars().take(64).collect())),
    }
}

fn info(v: Value) -> Result<Info, FrameError> {
    let status = required_str(&v, "status", "info")?;
    Ok(match status.as_str() {
        "connected" => Info::Connected {
            protocol: str_of(&v, "protocol").unwrap_or_default(),
            limits: v
                .get("limits")
                .and_then(|l| serde_json::from_value(l.clone()).ok()),
            heartbeat_seconds: u64_of(&v, "heartbeat_seconds"),
        },
        "stream_start" => Info::StreamStart {
            epoch: str_of(&v, "epoch"),
            ring_head: u64_of(&v, "ring_head"),
            resume_after: v.get("resume_after").cloned().unwrap_or(Value::Null),
            heartbeat_seconds: u64_of(&v, "heartbeat_seconds"),
        },
        "history_start" => Info::HistoryStart {
            epoch: str_of(&v, "epoch"),
        },
        "history_epoch" => Info::HistoryEpoch {
            epoch: required_str(&v, "epoch", "info{history_epoch}")?,
        },
        "live" => Info::Live {
            after_seq: u64_of(&v, "after_seq"),
            epoch: str_of(&v, "epoch"),
            history_ticks: u64_of(&v, "history_ticks"),
            history_error: str_of(&v, "history_error"),
        },
        "resume_unavailable" => Info::ResumeUnavailable {
            requested_after: v.get("requested_after").cloned().unwrap_or(Value::Null),
            epoch: str_of(&v, "epoch"),
            why: str_of(&v, "why"),
        },
        "subscription_queued" => Info::SubscriptionQueued(v),
        _ => Info::Other { status, raw: v },
    })
}

fn json_error(e: &serde_json::Error, frame: &[u8]) -> FrameError {
    use serde_json::error::Category;
    match e.classify() {
        // The frame ends inside a value: a frame cut short.
        Category::Eof => FrameError::Truncated { len: frame.len() },
        Category::Syntax | Category::Io => FrameError::Json(e.to_string()),
        Category::Data => FrameError::Shape {
            what: "tick",
            why: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_of_every_kind_parse_with_their_fields() {
        let m = parse(br#"{"seq":1842,"st":1732262400123456,"ts":1732262400000000,"cid":711280073,"tt":"bid_ask","bp":21012.25,"bs":3,"ap":21012.5,"as":4}"#).unwrap();
        let ServerMessage::Tick(t) = m else { panic!() };
        assert_eq!((t.seq, t.cid, t.tt), (1842, 711_280_073, TickKind::BidAsk));
        assert_eq!(
            (t.bp, t.ap, t.r#as),
            (Some(21012.25), Some(21012.5), Some(4.0))
        );
        let ServerMessage::Tick(t) =
            parse(br#"{"seq":2,"st":1,"cid":5,"tt":"last","p":1.5,"s":1,"x":"CME","pl":true}"#)
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (t.p, t.x.as_deref(), t.pl, t.ts),
            (Some(1.5), Some("CME"), true, None)
        );
        // Printed back, a tick is the server's compact JSON, byte for byte: whole sizes and
        // prices without a fraction, as the server writes them.
        for json in [
            r#"{"seq":2,"st":1,"cid":5,"tt":"last","p":1.5,"s":1,"x":"CME","pl":true}"#,
            r#"{"seq":7,"st":1,"ts":2,"cid":5,"tt":"bid_ask","bp":21012,"bs":300,"ap":21012.25,"as":0.5}"#,
            r#"{"seq":8,"st":1,"cid":5,"tt":"l1_generic","f":49,"v":3}"#,
            r#"{"seq":9,"st":1,"cid":5,"tt":"l1_generic","f":49,"v":0.25}"#,
            r#"{"seq":10,"st":1,"cid":5,"tt":"mid_point","mp":-12}"#,
        ] {
            let ServerMessage::Tick(t) = parse(json.as_bytes()).unwrap() else {
                panic!("{json}")
            };
            assert_eq!(serde_json::to_string(&t).unwrap(), json);
        }
        let ServerMessage::Tick(t) =
            parse(br#"{"seq":3,"st":1,"cid":5,"tt":"l1_string","f":45,"v":"abc"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(t.v, Some(L1Value::Text("abc".into())));
        assert_eq!(t.tt.requested_as(), "mktdata");
        // Keys in another order are still a tick.
        let ServerMessage::Tick(t) =
            parse(br#"{"cid":5,"seq":4,"st":1,"tt":"mid_point","mp":2}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(t.mp, Some(2.0));
    }

    #[test]
    fn control_messages_parse_typed() {
        let m = parse(br#"{"type":"gap","reason":"writer_restart","first_seq":11,"last_seq":null,"count":null,"t0":5,"t1":null,"epoch":"aa","new_epoch":"bb","clean":false,"stream_id":"ws-1-1"}"#).unwrap();
        let ServerMessage::Gap(g) = m else { panic!() };
        assert_eq!(g.reason, GapReason::WriterRestart);
        assert_eq!(
            (g.first_seq, g.last_seq, g.new_epoch.as_deref()),
            (Some(11), None, Some("bb"))
        );
        let m = parse(br#"{"type":"info","status":"connected","protocol":"v3","limits":{"max_streams":20,"max_messages_per_second":100,"max_message_bytes":16384},"heartbeat_seconds":15}"#).unwrap();
        assert!(matches!(
            m,
            ServerMessage::Info {
                info: Info::Connected {
                    limits: Some(Limits {
                        max_streams: 20,
                        ..
                    }),
                    heartbeat_seconds: Some(15),
                    ..
                },
                ..
            }
        ));
        let m = parse(br#"{"type":"error","code":"too_many_streams","message":"x","recoverable":false,"id":7}"#).unwrap();
        assert!(
            matches!(m, ServerMessage::Error { ref error, .. } if error.code == "too_many_streams" && error.id == Some(serde_json::json!(7)))
        );
        let m = parse(br#"{"type":"heartbeat","ts":5,"ring_head":9}"#).unwrap();
        assert_eq!(
            m,
            ServerMessage::Heartbeat(Heartbeat {
                ts: 5,
                ring_head: 9
            })
        );
        let m = parse(br#"{"type":"info","status":"subscription","record":{"tt":"subscription"},"stream_id":"s"}"#).unwrap();
        assert!(
            matches!(m, ServerMessage::Info { info: Info::Other { ref status, .. }, stream_id: Some(_) } if status == "subscription")
        );
    }

    #[test]
    fn malformed_frames_are_typed_errors() {
        assert_eq!(parse(b""), Err(FrameError::Empty));
        assert_eq!(parse(b"   "), Err(FrameError::Empty));
        assert!(matches!(
            parse(br#"{"seq":1,"st":2,"ci"#),
            Err(FrameError::Truncated { .. })
        ));
        assert!(matches!(parse(b"#not json"), Err(FrameError::Json(_))));
        assert!(matches!(parse(b"[1,2]"), Err(FrameError::Shape { .. })));
        assert!(matches!(
            parse(br#"{"seq":"x","st":2,"cid":1,"tt":"last"}"#),
            Err(FrameError::Shape { .. })
        ));
        assert!(
            matches!(parse(br#"{"type":"wat"}"#), Err(FrameError::UnknownType(t)) if t == "wat")
        );
        assert!(matches!(
            parse(br#"{"type":"gap"}"#),
            Err(FrameError::Shape { .. })
        ));
        assert!(matches!(
            parse(br#"{"type":"info","status":"history_epoch"}"#),
            Err(FrameError::Shape { .. })
        ));
        assert!(matches!(
            parse(&[0xff, 0xfe, b'{']),
            Err(FrameError::Json(_))
        ));
    }
}
