//! One storage format's side of the recorder: its open segments, its flush windows, and
//! what it owes after a write error.
//!
//! Records are staged per segment between flushes. A flush writes every staged segment; if
//! any write (or the open of a new segment) fails, every segment is cut back to where the
//! window started, so no file keeps part of a failed window, and the format "owes" a
//! `write_error` gap for the window's sequences. While it owes one it writes nothing, only
//! widens the range; every retry interval it tries to write the gap record, and once that
//! succeeds it records normally again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ib_stream_ipc::{GapReason, Record};

use crate::storage::binary::{BinarySegmentWriter, truncate_or_remove};
use crate::storage::checkpoint::OwedGap;
use crate::storage::jsonl::JsonlSegmentWriter;
use crate::storage::layout::{Format, SegmentKey, hour_start};
use crate::storage::{StorageError, now_ns};
use crate::tickjson::StringLookup;

use super::gap_record;

/// An open segment of either format.
#[derive(Debug)]
enum Segment {
    Jsonl(JsonlSegmentWriter),
    Binary(Box<BinarySegmentWriter>),
}

impl Segment {
    fn open(format: Format, root: &Path, key: SegmentKey) -> Result<Segment, StorageError> {
        Ok(match format {
            Format::Jsonl => Segment::Jsonl(JsonlSegmentWriter::open(root, key)?),
            Format::Binary => match BinarySegmentWriter::open(root, key, now_ns()) {
                Ok(w) => Segment::Binary(Box::new(w)),
                Err(e @ (StorageError::Corrupt { .. } | StorageError::Version { .. })) => {
                    // A damaged segment must not stop every later write: set it aside
                    // (kept for inspection, invisible to readers) and start the hour afresh.
                    let data = key.path(root, Format::Binary);
                    let suffix = format!("corrupt-{}", now_ns());
                    tracing::error!(file = %data.display(), error = %e,
                        "damaged segment set aside as .{suffix}");
                    for ext in ["bin", "crc", "strings"] {
                        let p = data.with_extension(ext);
                        if p.exists() {
                            let aside = data.with_extension(format!("{ext}.{suffix}"));
                            std::fs::rename(&p, &aside).map_err(|e| StorageError::io(&p, e))?;
                        }
                    }
                    Segment::Binary(Box::new(BinarySegmentWriter::open(root, key, now_ns())?))
                }
                Err(e) => return Err(e),
            },
        })
    }

    fn push(&mut self, rec: &Record, strings: &dyn StringLookup) -> Result<usize, StorageError> {
        match self {
            Segment::Jsonl(s) => {
                let before = s.staged_bytes();
                s.push(rec, strings);
                Ok(s.staged_bytes() - before)
            }
            Segment::Binary(s) => {
                s.push(rec, strings)?;
                Ok(ib_stream_ipc::RECORD_SIZE)
            }
        }
    }

    fn staged_bytes(&self) -> usize {
        match self {
            Segment::Jsonl(s) => s.staged_bytes(),
            Segment::Binary(s) => s.staged_bytes(),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Segment::Jsonl(s) => s.flush(),
            Segment::Binary(s) => s.flush(),
        }
    }

    fn sync(&mut self) -> std::io::Result<()> {
        match self {
            Segment::Jsonl(s) => s.sync(),
            Segment::Binary(s) => s.sync(),
        }
    }

    fn commit_window(&mut self) {
        match self {
            Segment::Jsonl(s) => s.commit_window(),
            Segment::Binary(s) => s.commit_window(),
        }
    }

    fn rollback(self) -> Vec<(PathBuf, u64)> {
        match self {
            Segment::Jsonl(s) => s.rollback(),
            Segment::Binary(s) => (*s).rollback(),
        }
    }

    fn close(self, sync: bool) -> std::io::Result<()> {
        match self {
            Segment::Jsonl(s) => s.close(sync),
            Segment::Binary(s) => (*s).close(sync),
        }
    }
}

/// The sequences and times read since the last flush (records and lost ranges).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Ring epoch.
    pub epoch: u64,
    /// First sequence accounted for in the window.
    pub first_seq: u64,
    /// Last sequence accounted for.
    pub last_seq: u64,
    /// `ts_recv` of the first record (or detection time of a loss), ns.
    pub first_ts: i64,
    /// `ts_recv` of the last one, ns.
    pub last_ts: i64,
}

impl Window {
    /// Widens the window by `first..=last` at time `ts`.
    pub fn extend(w: &mut Option<Window>, epoch: u64, first: u64, last: u64, ts: i64) {
        match w {
            Some(w) => {
                w.last_seq = w.last_seq.max(last);
                w.last_ts = ts;
            }
            None => {
                *w = Some(Window {
                    epoch,
                    first_seq: first,
                    last_seq: last,
                    first_ts: ts,
                    last_ts: ts,
                })
            }
        }
    }
}

/// A gap the format owes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owed {
    /// Ring epoch of the sequences.
    pub epoch: u64,
    /// First sequence not written.
    pub from_seq: u64,
    /// Last sequence not written.
    pub to_seq: u64,
    /// `ts_recv` of the first, ns.
    pub t0_ns: i64,
    /// `ts_recv` of the last, ns.
    pub t1_ns: i64,
    /// The error that started it.
    pub error: String,
}

impl Owed {
    /// As stored in the checkpoint.
    pub fn to_checkpoint(&self, format: Format) -> OwedGap {
        OwedGap {
            format: format.dir_name().into(),
            epoch: format!("{:016x}", self.epoch),
            from_seq: self.from_seq,
            to_seq: self.to_seq,
            t0_ns: self.t0_ns,
            t1_ns: self.t1_ns,
            error: self.error.clone(),
        }
    }

    /// From the checkpoint.
    pub fn from_checkpoint(g: &OwedGap) -> Option<Owed> {
        Some(Owed {
            epoch: g.epoch()?,
            from_seq: g.from_seq,
            to_seq: g.to_seq,
            t0_ns: g.t0_ns,
            t1_ns: g.t1_ns,
            error: g.error.clone(),
        })
    }
}

/// Counters of one format, for the status file.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SinkStats {
    /// Records written (flushed successfully).
    pub records_written: u64,
    /// Data bytes written.
    pub bytes_written: u64,
    /// Flush windows that failed.
    pub write_errors: u64,
    /// `write_error` gap records written after recovering.
    pub gaps_written: u64,
    /// Segments opened.
    pub segments_opened: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// When it happened, ns.
    pub last_error_ns: i64,
}

/// One format's writer state.
#[derive(Debug)]
pub struct Sink {
    format: Format,
    root: PathBuf,
    segments: HashMap<SegmentKey, Segment>,
    /// Records and bytes staged in this window.
    staged_records: u64,
    staged_bytes: u64,
    /// An error while staging (opening a segment): the window fails at flush.
    window_error: Option<String>,
    /// Gaps owed, at most one per epoch, oldest first.
    owed: Vec<Owed>,
    /// Truncations a rollback could not do yet; retried before writing again.
    pending_truncations: Vec<(PathBuf, u64)>,
    last_retry: Option<Instant>,
    retry_interval: Duration,
    /// Counters.
    pub stats: SinkStats,
}

impl Sink {
    /// A sink for `format` under `root`, owing `owed` (from the checkpoint).
    pub fn new(format: Format, root: &Path, owed: Vec<Owed>, retry_interval: Duration) -> Sink {
        Sink {
            format,
            root: root.to_path_buf(),
            segments: HashMap::new(),
            staged_records: 0,
            staged_bytes: 0,
            window_error: None,
            owed,
            pending_truncations: Vec::new(),
            last_retry: None,
            retry_interval,
            stats: SinkStats::default(),
        }
    }

    /// The format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The gaps it owes.
    pub fn owed(&self) -> &[Owed] {
        &self.owed
    }

    /// Healthy: owes nothing.
    pub fn healthy(&self) -> bool {
        self.owed.is_empty()
    }

    /// Widens (or starts) the gap owed for `epoch` by `first..=last` at time `ts`.
    fn owe(&mut self, epoch: u64, first: u64, last: u64, ts: i64) {
        match self.owed.iter_mut().find(|o| o.epoch == epoch) {
            Some(o) => {
                o.to_seq = o.to_seq.max(last);
                o.t1_ns = ts;
            }
            None => {
                let error = self.stats.last_error.clone().unwrap_or_default();
                self.owed.push(Owed {
                    epoch,
                    from_seq: first,
                    to_seq: last,
                    t0_ns: ts,
                    t1_ns: ts,
                    error,
                });
            }
        }
    }

    /// Bytes staged.
    pub fn staged_bytes(&self) -> u64 {
        self.staged_bytes
    }

    /// Hours of the open segments.
    pub fn open_hours(&self) -> impl Iterator<Item = i64> + '_ {
        self.segments.keys().map(|k| k.hour_start_ns)
    }

    /// Stages `rec` (read from the ring of `epoch`) in its segment. While the format owes a
    /// gap, or the window already failed, nothing is staged (the window's range is owed).
    pub fn push(&mut self, rec: &Record, epoch: u64, strings: &dyn StringLookup) {
        if !self.owed.is_empty() {
            self.owe(epoch, rec.seq, rec.seq, rec.ts_recv);
            return;
        }
        if self.window_error.is_some() {
            return;
        }
        let Some(key) = SegmentKey::for_record(rec, epoch) else {
            return;
        };
        if !self.segments.contains_key(&key) {
            match Segment::open(self.format, &self.root, key) {
                Ok(s) => {
                    self.stats.segments_opened += 1;
                    self.segments.insert(key, s);
                }
                Err(e) => {
                    self.window_error = Some(e.to_string());
                    return;
                }
            }
        }
        if let Some(seg) = self.segments.get_mut(&key) {
            match seg.push(rec, strings) {
                Ok(n) => {
                    self.staged_records += 1;
                    self.staged_bytes += n as u64;
                }
                Err(e) => self.window_error = Some(e.to_string()),
            }
        }
    }

    /// While owing a gap: widens it by a lost range of the ring.
    pub fn note_lost(&mut self, epoch: u64, first: u64, last: u64, ts: i64) {
        if !self.owed.is_empty() {
            self.owe(epoch, first, last, ts);
        }
    }

    fn rollback_all(&mut self) {
        for (_, seg) in self.segments.drain() {
            self.pending_truncations.extend(seg.rollback());
        }
        self.staged_records = 0;
        self.staged_bytes = 0;
    }

    fn fail(&mut self, window: Option<Window>, error: String) {
        self.stats.write_errors += 1;
        self.stats.last_error = Some(error.clone());
        self.stats.last_error_ns = now_ns();
        self.rollback_all();
        self.window_error = None;
        if let Some(w) = window {
            tracing::error!(
                format = self.format.dir_name(),
                from_seq = w.first_seq,
                to_seq = w.last_seq,
                %error,
                "write failed; recording a gap and retrying"
            );
            self.owed.push(Owed {
                epoch: w.epoch,
                from_seq: w.first_seq,
                to_seq: w.last_seq,
                t0_ns: w.first_ts,
                t1_ns: w.last_ts,
                error,
            });
        } else {
            tracing::error!(format = self.format.dir_name(), %error, "write failed (nothing lost)");
        }
    }

    /// Ends the window: writes everything staged (and syncs when `sync`), or after an
    /// error rolls the window back and owes its range. While owing, tries to pay the gap
    /// every retry interval instead. Returns true when data was written.
    pub fn flush(&mut self, window: Option<Window>, sync: bool, now: Instant) -> bool {
        if !self.owed.is_empty() {
            self.try_recover(sync, now);
            return false;
        }
        if let Some(e) = self.window_error.take() {
            self.fail(window, e);
            return false;
        }
        let mut result = Ok(());
        for seg in self.segments.values_mut() {
            if seg.staged_bytes() > 0 {
                result = seg.flush();
                if result.is_err() {
                    break;
                }
            }
        }
        if result.is_ok() && sync {
            for seg in self.segments.values_mut() {
                result = seg.sync();
                if result.is_err() {
                    break;
                }
            }
        }
        if let Err(e) = result {
            self.fail(window, e.to_string());
            return false;
        }
        for seg in self.segments.values_mut() {
            seg.commit_window();
        }
        self.stats.records_written += self.staged_records;
        self.stats.bytes_written += self.staged_bytes;
        let wrote = self.staged_records > 0;
        self.staged_records = 0;
        self.staged_bytes = 0;
        wrote
    }

    fn try_recover(&mut self, sync: bool, now: Instant) {
        if self
            .last_retry
            .is_some_and(|t| now.duration_since(t) < self.retry_interval)
        {
            return;
        }
        self.last_retry = Some(now);
        let mut still = Vec::new();
        for (p, len) in std::mem::take(&mut self.pending_truncations) {
            if truncate_or_remove(&p, len).is_err() {
                still.push((p, len));
            }
        }
        if !still.is_empty() {
            self.pending_truncations = still;
            return;
        }
        while let Some(owed) = self.owed.first().cloned() {
            if !self.pay(&owed, sync) {
                return;
            }
            self.owed.remove(0);
        }
    }

    /// Writes the gap record for `owed`; false when writing still fails.
    fn pay(&mut self, owed: &Owed, sync: bool) -> bool {
        let t = now_ns();
        let rec = gap_record(
            GapReason::WriteError,
            owed.from_seq,
            owed.to_seq as i64,
            owed.t0_ns,
            owed.t1_ns,
            t,
        );
        let key = SegmentKey::for_record(&rec, owed.epoch);
        let res =
            key.ok_or_else(|| "no segment for a gap record".to_string())
                .and_then(|key| {
                    let mut seg = match self.segments.remove(&key) {
                        Some(s) => s,
                        None => Segment::open(self.format, &self.root, key)
                            .map_err(|e| e.to_string())?,
                    };
                    let staged = seg
                        .push(&rec, &crate::tickjson::NoStrings)
                        .map_err(|e| e.to_string());
                    let flushed = staged.and_then(|n| {
                        seg.flush()
                            .and_then(|()| if sync { seg.sync() } else { Ok(()) })
                            .map(|()| n)
                            .map_err(|e| e.to_string())
                    });
                    match flushed {
                        Ok(n) => {
                            seg.commit_window();
                            self.segments.insert(key, seg);
                            Ok(n)
                        }
                        Err(e) => {
                            self.pending_truncations.extend(seg.rollback());
                            Err(e)
                        }
                    }
                });
        match res {
            Ok(n) => {
                tracing::warn!(
                    format = self.format.dir_name(),
                    from_seq = owed.from_seq,
                    to_seq = owed.to_seq,
                    "writing works again; gap recorded"
                );
                self.stats.gaps_written += 1;
                self.stats.records_written += 1;
                self.stats.bytes_written += n as u64;
                true
            }
            Err(e) => {
                self.stats.last_error = Some(e);
                self.stats.last_error_ns = t;
                false
            }
        }
    }

    /// Closes the segments of hours before `before_hour_ns` (all of them with `i64::MAX`).
    /// Call right after a successful flush.
    pub fn close_older(&mut self, before_hour_ns: i64, sync: bool) {
        let old: Vec<SegmentKey> = self
            .segments
            .keys()
            .filter(|k| k.hour_start_ns < before_hour_ns)
            .copied()
            .collect();
        for k in old {
            if let Some(seg) = self.segments.remove(&k)
                && let Err(e) = seg.close(sync)
            {
                // The data is written; only the last checksum entry may be missing, which
                // reopening or repair recomputes.
                tracing::warn!(format = self.format.dir_name(), error = %e, "closing a segment failed");
            }
        }
    }

    /// Closes every segment whose epoch is not `epoch`.
    pub fn close_other_epochs(&mut self, epoch: u64, sync: bool) {
        let old: Vec<SegmentKey> = self
            .segments
            .keys()
            .filter(|k| k.epoch != epoch)
            .copied()
            .collect();
        for k in old {
            if let Some(seg) = self.segments.remove(&k) {
                let _ = seg.close(sync);
            }
        }
    }

    /// The hour of `ts` (for closing old segments).
    pub fn hour_of(ts: i64) -> i64 {
        hour_start(ts)
    }
}
