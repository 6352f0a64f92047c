//! Stored history: the plug for the storage query library.
//!
//! The server does not read storage itself. A [`HistorySource`] answers queries; until one
//! is configured, `/v3/history/{conId}` answers 503 `storage_unavailable` (never an empty
//! success that would look like "no data").

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::error::ApiError;
use super::messages::GapInfo;
use super::params::{self, DEFAULT_TICK_TYPES, Params, TickType};
use super::state::AppState;

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

/// A read of stored ticks by ring sequence: what a resuming client missed, or the current
/// epoch's part of a history-then-live stream.
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
    /// Ticks received before this time (ns since the Unix epoch) are not wanted.
    pub start_ns: Option<i64>,
    /// The epoch is the ring's current one: storage is still being written, and only what
    /// the recorder has accounted for (its checkpoint) may be answered as complete.
    pub live_epoch: bool,
    /// Most items to return.
    pub limit: usize,
}

/// One item of a [`SeqPage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeqItem {
    /// A stored tick: its sequence and `tickjson` object.
    Tick {
        /// Ring sequence.
        seq: u64,
        /// The stored line's bytes.
        json: Bytes,
    },
    /// A stored gap record (sequences storage never had).
    Gap {
        /// The record's own sequence.
        seq: u64,
        /// What it says.
        info: GapInfo,
        /// Its backfill fill states, a JSON array (`None`: not backfilled).
        fill: Option<Bytes>,
    },
}

impl SeqItem {
    /// The item's sequence.
    pub fn seq(&self) -> u64 {
        match self {
            SeqItem::Tick { seq, .. } | SeqItem::Gap { seq, .. } => *seq,
        }
    }
}

/// One page of a [`SeqQuery`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqPage {
    /// Ticks and gaps in sequence order.
    pub items: Vec<SeqItem>,
    /// Every stored item of the query with a sequence in `first_seq..=through` is in
    /// `items`: the next page starts at `through + 1`. Below `first_seq` when storage
    /// accounts for nothing of the range (yet).
    pub through: u64,
}

/// A source of stored ticks (implemented by the storage query library).
pub trait HistorySource: Send + Sync + std::fmt::Debug + 'static {
    /// The storage root this source reads, when it is one (the legacy routes list its
    /// files: `/v3/buffer/{conId}/info`, `/v3/storage/stats`).
    fn storage_root(&self) -> Option<&std::path::Path> {
        None
    }

    /// Answers one query. Called on a blocking thread: it may read files.
    fn query(&self, q: &HistoryQuery) -> Result<HistoryPage, HistoryError>;

    /// The stored ticks (and gaps) of `q.con_id` and `q.tick_types` with sequences in
    /// `q.first_seq..=q.last_seq` of epoch `q.epoch`, in sequence order, at most `q.limit`;
    /// `Ok(None)` when this source cannot answer by sequence. Used to resume a stream whose
    /// `Last-Event-ID` the ring no longer holds, and for `since=`. Called on a blocking
    /// thread.
    fn by_seq(&self, q: &SeqQuery) -> Result<Option<SeqPage>, HistoryError> {
        let _ = q;
        Ok(None)
    }

    /// The epochs with stored ticks of `con_id` and `tick_types` received from `start_ns`
    /// on, oldest first. Called on a blocking thread.
    fn epochs_since(
        &self,
        con_id: u32,
        tick_types: &[TickType],
        start_ns: i64,
    ) -> Result<Vec<u64>, HistoryError> {
        let _ = (con_id, tick_types, start_ns);
        Ok(Vec::new())
    }
}

/// Items per page of a replay from history (bounded memory per stream).
pub const REPLAY_PAGE: usize = 1024;

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
    Ok(json_with_ticks(body, "ticks", &page.ticks))
}

/// A JSON response: `body` (an object's fields so far, without its closing brace) followed by
/// `"key":[...]` of `ticks`, which are stored JSON objects already and are spliced in, not
/// re-encoded.
pub(super) fn json_with_ticks<T: AsRef<[u8]>>(
    mut body: Vec<u8>,
    key: &str,
    ticks: &[T],
) -> Response {
    body.extend_from_slice(b",\"");
    body.extend_from_slice(key.as_bytes());
    body.extend_from_slice(b"\":[");
    for (i, t) in ticks.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(t.as_ref());
    }
    body.extend_from_slice(b"]}");
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
