//! The original IB-Stream's v3 routes, answered from today's storage: `/v3/info`,
//! `/v3/buffer/{conId}/info`, `/v3/buffer/{conId}/query` and `/v3/storage/stats`.
//!
//! They keep the original's parameters and response shapes so that a client written for it
//! keeps working, with today's data in them: ticks are the compact v3 objects of
//! `src/tickjson.rs` (the v2 envelope and the original's "expanded" names are gone), and
//! files are the recorder's (`jsonl`, `binary`). Reads go through the server's history
//! source, the same one `/v3/history` uses; without one they answer 503 like the original.
//! The old-to-new route table is in `docs/PROTOCOL.md`.

use std::path::{Path, PathBuf};

use axum::Json;
use axum::Router;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};

use super::error::ApiError;
use super::history::{HistoryError, HistoryQuery, HistorySource, MAX_HISTORY_LIMIT};
use super::messages::now_ns;
use super::params::{self, Params, TickType};
use super::state::AppState;
use crate::storage::layout::{Format, Stream, all_segments};
use crate::storage::query::time;

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v3/info", get(info))
        .route("/v3/buffer/{con_id}/info", get(buffer_info))
        .route("/v3/buffer/{con_id}/query", get(buffer_query))
        .route("/v3/storage/stats", get(storage_stats))
}

/// An RFC 3339 UTC time of `ns` since the Unix epoch (`null` when out of range).
fn iso(ns: i64) -> Value {
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        .map_or(Value::Null, |t| Value::String(t.to_string()))
}

fn mtime_iso(meta: &std::fs::Metadata) -> Value {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(Value::Null, |d| iso(d.as_nanos() as i64))
}

fn mb(bytes: u64) -> f64 {
    (bytes as f64 / (1024.0 * 1024.0) * 100.0).round() / 100.0
}

/// The history source and its storage root, or the original's 503.
fn storage(st: &AppState) -> Result<(std::sync::Arc<dyn HistorySource>, PathBuf), ApiError> {
    let unavailable = || {
        ApiError::unavailable(
            "storage_unavailable",
            "storage is not enabled on this server (IB_STREAM_ENABLE_STORAGE)",
        )
    };
    let source = st.history.clone().ok_or_else(unavailable)?;
    let root = source.storage_root().ok_or_else(unavailable)?.to_path_buf();
    Ok((source, root))
}

/// The original's `format` (json, protobuf) or today's names (jsonl, binary).
fn format_param(raw: Option<&str>) -> Result<Format, ApiError> {
    match raw.unwrap_or("json") {
        "json" | "jsonl" => Ok(Format::Jsonl),
        "protobuf" | "binary" => Ok(Format::Binary),
        other => Err(ApiError::bad_parameter(format!(
            "`format` must be json (jsonl) or protobuf (binary), got `{}`",
            params::truncate(other)
        ))),
    }
}

fn tick_types_param(raw: Option<&str>, default: &str) -> Result<Vec<TickType>, ApiError> {
    params::tick_types(raw.unwrap_or(default))
}

fn names(types: &[TickType]) -> Vec<&'static str> {
    types.iter().map(|t| t.name()).collect()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::unavailable("storage_unavailable", format!("storage task failed: {e}"))
    })?
}

/// One data file of a contract.
struct FileInfo {
    rel: String,
    size: u64,
    modified: Value,
    con_id: u32,
    stream: &'static str,
}

/// The data files of `format` under `root` that `keep` selects (a missing format is none).
fn files_of(
    root: &Path,
    format: Format,
    keep: impl Fn(u32, Stream) -> bool,
) -> Result<Vec<FileInfo>, ApiError> {
    let base = root.join(format.dir_name());
    if !base.is_dir() {
        return Ok(Vec::new());
    }
    let segs = all_segments(root, format)
        .map_err(|e| ApiError::unavailable("storage_unavailable", e.to_string()))?;
    let mut out = Vec::new();
    for seg in segs {
        if !keep(seg.key.instrument_id, seg.key.stream) {
            continue;
        }
        // A file removed by retention between the listing and here is simply gone.
        let Ok(meta) = std::fs::metadata(&seg.path) else {
            continue;
        };
        out.push(FileInfo {
            rel: seg
                .path
                .strip_prefix(&base)
                .unwrap_or(&seg.path)
                .display()
                .to_string(),
            size: meta.len(),
            modified: mtime_iso(&meta),
            con_id: seg.key.instrument_id,
            stream: seg.key.stream.name(),
        });
    }
    Ok(out)
}

/// `GET /v3/info`: what the v3 messages hold and which routes serve them.
pub async fn info(RawQuery(q): RawQuery) -> Result<Json<Value>, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    Ok(Json(json!({
        "version": "3",
        "description": "Compact tick messages (src/tickjson.rs): short keys, flags only when \
                        true, exact decimals; the same bytes are stored, streamed and queried",
        "field_mapping": {
            "seq": "ring sequence number (per engine run)",
            "st": "engine receive time, microseconds since the Unix epoch (UTC)",
            "ts": "IB's event time, microseconds since the Unix epoch (UTC; IB sends seconds)",
            "cid": "contract id (IB conId)",
            "tt": "tick type: bid_ask, last, all_last, mid_point, l1_price, l1_size, l1_generic, l1_string",
            "bp": "bid price", "bs": "bid size", "ap": "ask price", "as": "ask size",
            "p": "trade price", "s": "trade size", "x": "trade exchange",
            "c": "trade conditions", "mp": "mid point",
            "bpl": "bid past low", "aph": "ask past high", "pl": "past limit",
            "upt": "unreported", "dl": "delayed data", "fz": "frozen data"
        },
        "formats": ["jsonl", "binary"],
        "docs": "docs/PROTOCOL.md (messages, routes, and the original's routes mapped to these)",
        "endpoints": {
            "/v3/buffer/{contract_id}/query": "stored ticks in a time range (original parameters)",
            "/v3/buffer/{contract_id}/info": "the contract's stored files per format",
            "/v3/storage/stats": "files and bytes per format and contract, and the recorder's status",
            "/v3/history/{contract_id}": "stored ticks, paged with a cursor",
            "/v3/stream/{contract_id}": "live ticks over SSE",
            "/v3/ws": "live ticks over WebSocket",
            "/v3/contracts/lookup": "contract lookup by symbol",
            "/v3/contracts/{contract_id}": "contract details by id"
        }
    })))
}

/// `GET /v3/buffer/{conId}/info?tick_types=bid_ask,last`: the contract's stored files.
pub async fn buffer_info(
    State(st): State<AppState>,
    UrlPath(raw): UrlPath<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let con_id = params::con_id(&raw)?;
    let p = Params::parse(q.as_deref(), &["tick_types"])?;
    let types = tick_types_param(p.get("tick_types"), "bid_ask,last")?;
    let (_, root) = storage(&st)?;
    let kinds: Vec<&'static str> = types
        .iter()
        .flat_map(|t| t.kinds())
        .map(|k| k.name())
        .collect();
    let tracked = st.cfg.tracked.iter().any(|c| c.con_id == con_id);
    let root2 = root.clone();
    let per_format = blocking(move || {
        let mut v = Vec::new();
        for format in Format::ALL {
            if !root2.join(format.dir_name()).is_dir() {
                continue;
            }
            let files = files_of(&root2, format, |cid, stream| {
                cid == con_id && kinds.contains(&stream.name())
            })?;
            v.push((format, files));
        }
        Ok(v)
    })
    .await?;
    let mut paths = serde_json::Map::new();
    for f in Format::ALL {
        paths.insert(
            f.dir_name().into(),
            json!(root.join(f.dir_name()).display().to_string()),
        );
    }
    let mut files = serde_json::Map::new();
    let mut stats = serde_json::Map::new();
    for (format, list) in &per_format {
        let total: u64 = list.iter().map(|f| f.size).sum();
        files.insert(
            format.dir_name().into(),
            list.iter()
                .map(|f| {
                    json!({"path": f.rel, "tick_type": f.stream, "size_bytes": f.size,
                           "modified": f.modified})
                })
                .collect(),
        );
        stats.insert(
            format.dir_name().into(),
            json!({"total_files": list.len(), "total_size_bytes": total,
                   "total_size_mb": mb(total)}),
        );
    }
    Ok(Json(json!({
        "contract_id": con_id,
        "tick_types": names(&types),
        "tracked": tracked,
        "v3_storage": {
            "paths": paths,
            "available_formats": per_format.iter().map(|(f, _)| f.dir_name()).collect::<Vec<_>>(),
        },
        "files": files,
        "statistics": stats,
        "timestamp": iso(now_ns()),
    })))
}

/// A `buffer_duration` as the original read it: `30m`, `1h`, `2d`, or a bare number of hours.
fn duration_text(raw: &str) -> String {
    let t = raw.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        format!("{t}h")
    } else {
        t.to_owned()
    }
}

/// `GET /v3/buffer/{conId}/query?tick_types=bid_ask&format=json&start_time=&end_time=
/// &buffer_duration=1h&limit=&raw=`: stored ticks of a time range, oldest first.
///
/// As in the original: `start_time` and `end_time` (ISO 8601; without an offset, UTC) both
/// given select `[start_time, end_time]`; otherwise the last `buffer_duration` up to
/// `end_time` or now (a lone `start_time` runs to now, or for `buffer_duration` when given).
/// Times are the engine's receive time `st`.
pub async fn buffer_query(
    State(st): State<AppState>,
    UrlPath(raw): UrlPath<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let con_id = params::con_id(&raw)?;
    let p = Params::parse(
        q.as_deref(),
        &[
            "tick_types",
            "format",
            "start_time",
            "end_time",
            "buffer_duration",
            "limit",
            "raw",
        ],
    )?;
    let types = tick_types_param(p.get("tick_types"), "bid_ask")?;
    let format = format_param(p.get("format"))?;
    match p.get("raw") {
        None | Some("true" | "false" | "1" | "0") => {}
        Some(other) => {
            return Err(ApiError::bad_parameter(format!(
                "`raw` must be true or false, got `{}`",
                params::truncate(other)
            )));
        }
    }
    let limit = p
        .int("limit", 1, MAX_HISTORY_LIMIT)?
        .unwrap_or(MAX_HISTORY_LIMIT) as usize;
    let start = p.text("start_time", 64)?;
    let end = p.text("end_time", 64)?;
    let given = p.text("buffer_duration", 32)?.map(duration_text);
    let dur = match (start, end) {
        (Some(_), Some(_)) => None,
        (Some(_), None) => given,
        _ => Some(given.unwrap_or_else(|| "1h".into())),
    };
    let now = now_ns();
    let (start_ns, end_ns) =
        time::resolve_range(start, end, dur.as_deref(), &jiff::tz::TimeZone::UTC, now)
            .map_err(|e| ApiError::bad_parameter(e.to_string()))?;
    let (source, root) = storage(&st)?;
    if !root.join(format.dir_name()).is_dir() {
        return Err(ApiError::not_found(format!(
            "no {} storage under {}",
            format.dir_name(),
            root.display()
        )));
    }
    // The original's range is inclusive of its end: the query's is exclusive, so one µs on.
    let hq = HistoryQuery {
        con_id,
        tick_types: types.clone(),
        start_us: Some(start_ns.div_euclid(1000).max(0)),
        end_us: Some(end_ns.div_euclid(1000).saturating_add(1)),
        limit,
        cursor: None,
    };
    let page = blocking(move || {
        source.query(&hq).map_err(|e| match e {
            HistoryError::BadCursor(m) | HistoryError::Storage(m) => {
                ApiError::unavailable("storage_unavailable", m)
            }
        })
    })
    .await?;
    let head = json!({
        "contract_id": con_id,
        "tick_types": names(&types),
        "format": format.dir_name(),
        "time_range": {"start": iso(start_ns.max(0)), "end": iso(end_ns)},
        "total_messages": page.ticks.len(),
        "raw_format": true,
        "next_cursor": page.next_cursor,
    });
    // The ticks are stored JSON objects already: splice them in rather than re-encode them.
    let mut body = serde_json::to_vec(&head).unwrap_or_default();
    body.pop(); // the closing brace
    Ok(super::history::json_with_ticks(
        body,
        "messages",
        &page.ticks,
    ))
}

/// `GET /v3/storage/stats`: files and bytes per format, contract and tick type, and the
/// recorder's own counters (`recorder.status.json`).
pub async fn storage_stats(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let (_, root) = storage(&st)?;
    let root2 = root.clone();
    let (details, formats, recorder) = blocking(move || {
        let mut details = serde_json::Map::new();
        let mut formats = Vec::new();
        for format in Format::ALL {
            if !root2.join(format.dir_name()).is_dir() {
                continue;
            }
            formats.push(format.dir_name());
            let files = files_of(&root2, format, |_, _| true)?;
            let total: u64 = files.iter().map(|f| f.size).sum();
            let mut contracts: std::collections::BTreeMap<u32, serde_json::Map<String, Value>> =
                std::collections::BTreeMap::new();
            for f in &files {
                let e = contracts
                    .entry(f.con_id)
                    .or_default()
                    .entry(f.stream)
                    .or_insert_with(|| json!({"files": 0, "size_bytes": 0}));
                e["files"] = json!(e["files"].as_u64().unwrap_or(0) + 1);
                e["size_bytes"] = json!(e["size_bytes"].as_u64().unwrap_or(0) + f.size);
            }
            details.insert(
                format.dir_name().into(),
                json!({
                    "path": root2.join(format.dir_name()).display().to_string(),
                    "total_files": files.len(),
                    "total_size_bytes": total,
                    "total_size_mb": mb(total),
                    "contracts": contracts
                        .into_iter()
                        .map(|(c, m)| (c.to_string(), Value::Object(m)))
                        .collect::<serde_json::Map<_, _>>(),
                }),
            );
        }
        let recorder = crate::recorder::status::RecorderStatus::load(&root2)
            .ok()
            .flatten()
            .and_then(|s| serde_json::to_value(s).ok());
        Ok((details, formats, recorder))
    })
    .await?;
    Ok(Json(json!({
        "v3_storage_stats": {
            "enabled_formats": formats,
            "storage_path": root.display().to_string(),
            "storage_details": details,
            "recorder": recorder,
        },
        "timestamp": iso(now_ns()),
    })))
}
