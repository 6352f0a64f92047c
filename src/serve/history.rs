//! Stored history: the plug for the storage query library.
//!
//! The server does not read storage itself. A [`HistorySource`] answers queries; until one
//! is configured, `/v3/history/{conId}` answers 503 `storage_unavailable` (never an empty
//! success that would look like "no data").

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::AppState;
use super::error::ApiError;
use super::params::{self, DEFAULT_TICK_TYPES, Params, TickType};

/// Most ticks one history request returns.
pub const MAX_HISTORY_LIMIT: u64 = 100_000;

/// A history query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// conId.
    pub con_id: u32,
    /// Tick types.
    pub tick_types: Vec<TickType>,
    /// Inclusive start, µs since the epoch (receive time).
    pub start_us: Option<i64>,
    /// Exclusive end, µs since the epoch.
    pub end_us: Option<i64>,
    /// Most ticks to return.
    pub limit: usize,
    /// Where the previous page stopped (opaque, from [`HistoryPage::next_cursor`]).
    pub cursor: Option<String>,
}

/// One page of history.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    /// Ticks in time order, each one `tickjson` object (the stored line's bytes).
    pub ticks: Vec<Bytes>,
    /// Pass back as `cursor` for the next page; `None` when the range is exhausted.
    pub next_cursor: Option<String>,
}

/// Why a history query failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The cursor is not one this source issued.
    #[error("bad cursor: {0}")]
    BadCursor(String),
    /// Storage could not be read.
    #[error("storage error: {0}")]
    Storage(String),
}

/// A resume query: the ticks a client missed, by ring sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqQuery {
    /// The ring epoch the sequences belong to.
    pub epoch: u64,
    /// conId.
    pub con_id: u32,
    /// Tick types.
    pub tick_types: Vec<TickType>,
    /// First sequence wanted.
    pub first_seq: u64,
    /// Last sequence wanted.
    pub last_seq: u64,
    /// Most ticks to return.
    pub limit: usize,
}

/// A source of stored ticks (implemented by the storage query library).
pub trait HistorySource: Send + Sync + std::fmt::Debug + 'static {
    /// Answers one query. Called on a blocking thread: it may read files.
    fn query(&self, q: &HistoryQuery) -> Result<HistoryPage, HistoryError>;

    /// The stored ticks of `q.con_id` and `q.tick_types` with sequences in
    /// `q.first_seq..=q.last_seq` of epoch `q.epoch`, in sequence order, at most `q.limit`,
    /// each with its sequence; `Ok(None)` when this source cannot answer by sequence. Used to
    /// resume a stream whose `Last-Event-ID` the ring no longer holds.
    fn by_seq(&self, q: &SeqQuery) -> Result<Option<Vec<(u64, Bytes)>>, HistoryError> {
        let _ = q;
        Ok(None)
    }
}

/// Most ticks a resume takes from history before the ring.
pub const MAX_RESUME_FROM_HISTORY: usize = 100_000;

/// `GET /v3/history/{conId}?tick_types=&start=&end=&limit=&cursor=`.
pub async fn query(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let con_id = params::con_id(&raw)?;
    let p = Params::parse(
        q.as_deref(),
        &["tick_types", "start", "end", "limit", "cursor"],
    )?;
    let tick_types = match p.get("tick_types") {
        Some(t) => params::tick_types(t)?,
        None => DEFAULT_TICK_TYPES.to_vec(),
    };
    let start_us = p.int("start", 0, i64::MAX as u64)?.map(|v| v as i64);
    let end_us = p.int("end", 0, i64::MAX as u64)?.map(|v| v as i64);
    if let (Some(s), Some(e)) = (start_us, end_us)
        && e <= s
    {
        return Err(ApiError::bad_parameter("`end` must be after `start`"));
    }
    let limit = p.int("limit", 1, MAX_HISTORY_LIMIT)?.unwrap_or(1000) as usize;
    let cursor = p.text("cursor", 512)?.map(str::to_owned);
    let Some(source) = st.history.clone() else {
        return Err(ApiError::unavailable(
            "storage_unavailable",
            "no history source is configured on this server",
        ));
    };
    let hq = HistoryQuery {
        con_id,
        tick_types,
        start_us,
        end_us,
        limit,
        cursor,
    };
    let page = tokio::task::spawn_blocking(move || source.query(&hq))
        .await
        .map_err(|e| {
            ApiError::unavailable("storage_unavailable", format!("history task failed: {e}"))
        })?
        .map_err(|e| match e {
            HistoryError::BadCursor(m) => ApiError::bad_parameter(format!("bad `cursor`: {m}")),
            HistoryError::Storage(m) => ApiError::unavailable("storage_unavailable", m),
        })?;
    // The ticks are already JSON objects: splice them in rather than re-encode them.
    let mut body = Vec::with_capacity(64 + page.ticks.iter().map(|t| t.len() + 1).sum::<usize>());
    body.extend_from_slice(
        format!(
            "{{\"contract_id\":{con_id},\"count\":{},\"next_cursor\":",
            page.ticks.len()
        )
        .as_bytes(),
    );
    body.extend_from_slice(
        serde_json::to_string(&page.next_cursor)
            .unwrap_or_else(|_| "null".into())
            .as_bytes(),
    );
    body.extend_from_slice(b",\"ticks\":[");
    for (i, t) in page.ticks.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(t);
    }
    body.extend_from_slice(b"]}");
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
