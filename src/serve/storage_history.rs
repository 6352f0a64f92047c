//! The recorder's storage as the web server's history source (`/v3/history/{conId}`).

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::history::{
    HistoryError, HistoryPage, HistoryQuery, HistorySource, SeqItem, SeqPage, SeqQuery,
};
use super::messages::GapInfo;
use super::params::TickType;
use crate::storage::backfill::{self, FillStates};
use crate::storage::query::seq::{SeqIter, SeqRange, epochs_from, stored_through};
use crate::storage::query::{
    Cursor, Damage, DamageKind, Query, QueryError, QueryIter, default_format,
};
use crate::tickjson;
use ib_stream_ipc::RecordKind;

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
    fn storage_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

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
        let mut records = 0usize;
        let mut line = Vec::with_capacity(160);
        loop {
            match it.next_json(&mut line) {
                Ok(Some(_)) => {
                    ticks.push(Bytes::from(std::mem::take(&mut line)));
                    records += 1;
                }
                Ok(None) => break,
                // A damaged block or line: a `gap` item with reason `corrupt_*` in its place
                // (docs/PROTOCOL.md), never its records; the page goes on after it.
                Err(QueryError::Damaged(d)) => ticks.push(Bytes::from(d.to_json())),
                Err(e) => return Err(storage_err(e)),
            }
        }
        // A full page may have more behind it; a short one is the end of the range.
        let next_cursor = (records >= q.limit)
            .then(|| it.cursor().map(|c| c.to_string()))
            .flatten();
        Ok(HistoryPage { ticks, next_cursor })
    }

    fn by_seq(&self, q: &SeqQuery) -> Result<Option<SeqPage>, HistoryError> {
        if !self.root.exists() {
            return Ok(Some(SeqPage {
                items: Vec::new(),
                through: q.first_seq.saturating_sub(1),
            }));
        }
        let format = default_format(&self.root);
        // What storage accounts for: in the epoch the recorder is writing, only up to its
        // checkpoint (later records may not be written yet); in another epoch, all of it.
        let mut last = q.last_seq;
        if q.live_epoch {
            match stored_through(&self.root, q.epoch, format).map_err(storage_err)? {
                Some(s) => last = last.min(s),
                None => {
                    return Ok(Some(SeqPage {
                        items: Vec::new(),
                        through: q.first_seq.saturating_sub(1),
                    }));
                }
            }
        }
        let mut range = SeqRange::new(q.con_id, q.epoch, q.first_seq, last);
        range.kinds = kinds_of(&q.tick_types);
        range.start_ns = q.start_ns.unwrap_or(i64::MIN);
        range.limit = Some(q.limit as u64);
        range.format = Some(format);
        let mut it = SeqIter::new(&self.root, &range).map_err(storage_err)?;
        let mut items = Vec::new();
        let mut fills: Option<FillStates> = None;
        let mut line = Vec::with_capacity(160);
        loop {
            let rec = match it.next_record() {
                Ok(Some(rec)) => rec,
                Ok(None) => break,
                Err(QueryError::Damaged(d)) => {
                    // Said as a gap (reason `corrupt_*`): the records it held are not served.
                    items.push(damage_gap(&d, q.first_seq));
                    continue;
                }
                Err(e) => return Err(storage_err(e)),
            };
            if rec.kind == RecordKind::Gap as u8 {
                let b = rec.body;
                // `UNDEF` as the last sequence: to the end of the run (a killed engine's
                // `writer_restart`), count unknown: `u64::MAX` and 0 here.
                let open = b[1] == ib_stream_ipc::UNDEF_I64;
                let (first, last) = (
                    b[0].max(0) as u64,
                    if open { u64::MAX } else { b[1].max(0) as u64 },
                );
                let info = GapInfo {
                    reason: tickjson::gap_reason_name(rec.tick_type),
                    first_seq: first,
                    last_seq: last,
                    count: if first > 0 && last >= first && !open {
                        last - first + 1
                    } else {
                        0
                    },
                    t0_ns: b[2],
                    t1_ns: b[3],
                };
                // The backfill's ticks for the gap follow it, in their order by time, under
                // the gap's own sequence (they have none of the run's).
                if fills.is_none() {
                    fills = Some(FillStates::load(&self.root).map_err(|e| storage_err(e.into()))?);
                }
                let of_gap = fills.as_ref().map_or_else(Vec::new, |f| {
                    backfill::fills_of_gap(f, q.epoch, rec.seq, q.con_id, &range.kinds)
                });
                let filled = backfill::fill_ticks(&self.root, &of_gap).map_err(storage_err)?;
                items.push(SeqItem::Gap {
                    seq: rec.seq,
                    info,
                    fill: backfill::fill_array(of_gap.iter().copied()).map(Bytes::from),
                });
                items.extend(filled.into_iter().map(|(_, json)| SeqItem::Tick {
                    seq: rec.seq,
                    json: Bytes::from(json),
                }));
            } else {
                line.clear();
                tickjson::encode(&rec, it.strings(), &mut line);
                items.push(SeqItem::Tick {
                    seq: rec.seq,
                    json: Bytes::copy_from_slice(&line),
                });
            }
        }
        // A full page may have more behind it; a short one covers the whole range.
        let through = if items.len() >= q.limit {
            it.last_seq().unwrap_or(last)
        } else {
            last
        };
        Ok(Some(SeqPage {
            items,
            through: through.max(q.first_seq.saturating_sub(1)),
        }))
    }

    fn epochs_since(
        &self,
        con_id: u32,
        tick_types: &[TickType],
        start_ns: i64,
    ) -> Result<Vec<u64>, HistoryError> {
        if !self.root.exists() {
            return Ok(Vec::new());
        }
        let kinds = kinds_of(tick_types);
        Ok(epochs_from(&self.root, None, con_id, &kinds, start_ns)
            .map_err(storage_err)?
            .into_iter()
            .map(|e| e.epoch)
            .collect())
    }
}

/// A damaged part of storage as a gap item: the sequences it may cover (from the intact
/// records around it, 0 when unknown) and the receive times around it.
fn damage_gap(d: &Damage, first_seq: u64) -> SeqItem {
    let from = d.after.map_or(0, |(s, _)| s + 1);
    let to = d.until.map_or(0, |(s, _)| match d.kind {
        DamageKind::Line { .. } => s,
        _ => s.saturating_sub(1),
    });
    SeqItem::Gap {
        seq: if from > 0 { from } else { first_seq },
        info: GapInfo {
            reason: d.reason(),
            first_seq: from,
            last_seq: to,
            count: if from > 0 && to >= from {
                to - from + 1
            } else {
                0
            },
            t0_ns: d.after.map_or(0, |(_, t)| t),
            t1_ns: d.until.map_or(0, |(_, t)| t),
        },
        fill: None,
    }
}

fn kinds_of(types: &[TickType]) -> Vec<RecordKind> {
    types.iter().flat_map(|t| t.kinds()).copied().collect()
}
