//! The recorder's storage as the web server's history source (`/v3/history/{conId}`).

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::history::{HistoryError, HistoryPage, HistoryQuery, HistorySource};
use crate::storage::query::{Cursor, Query, QueryError, QueryIter};

/// Reads history from a storage root written by `ib-stream record`.
#[derive(Debug, Clone)]
pub struct StorageHistory {
    root: PathBuf,
}

impl StorageHistory {
    /// History under `root` (the recorder's `IB_STREAM_STORAGE_PATH`).
    pub fn new(root: &Path) -> StorageHistory {
        StorageHistory {
            root: root.to_path_buf(),
        }
    }
}

fn storage_err(e: QueryError) -> HistoryError {
    match e {
        QueryError::BadCursor(c) => HistoryError::BadCursor(c),
        other => HistoryError::Storage(other.to_string()),
    }
}

impl HistorySource for StorageHistory {
    fn query(&self, q: &HistoryQuery) -> Result<HistoryPage, HistoryError> {
        let mut query = Query::new(
            q.con_id,
            q.start_us.map_or(0, |us| us.saturating_mul(1000)),
            q.end_us.map_or(i64::MAX, |us| us.saturating_mul(1000)),
        );
        query.kinds = q
            .tick_types
            .iter()
            .flat_map(|t| t.kinds())
            .copied()
            .collect();
        query.limit = Some(q.limit as u64);
        query.after = match &q.cursor {
            Some(c) => Some(c.parse::<Cursor>().map_err(storage_err)?),
            None => None,
        };
        if !self.root.exists() {
            // Nothing recorded yet is an empty history, not an error.
            return Ok(HistoryPage::default());
        }
        let mut it = QueryIter::new(&self.root, &query).map_err(storage_err)?;
        let mut ticks = Vec::new();
        let mut line = Vec::with_capacity(160);
        while it.next_json(&mut line).map_err(storage_err)?.is_some() {
            ticks.push(Bytes::from(std::mem::take(&mut line)));
        }
        // A full page may have more behind it; a short one is the end of the range.
        let next_cursor = (ticks.len() >= q.limit)
            .then(|| it.cursor().map(|c| c.to_string()))
            .flatten();
        Ok(HistoryPage { ticks, next_cursor })
    }
}
