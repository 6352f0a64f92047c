//! Reading history back by ring sequence: the records of one instrument and epoch with
//! sequences in `first..=last`, in sequence order (the web server's resume and
//! history-then-live join).
//!
//! Within an epoch every segment is in sequence order (and, the engine's receive clock being
//! monotonic, in `ts_recv` order), so each (stream, epoch) chain of hourly files is read
//! from a binary search on the sequence (and on the start time, when one is given) and the
//! chains are merged by sequence. A chain stops at the first record past `last`: nothing
//! after the range is read. Memory is bounded like [`super::QueryIter`]: one segment open
//! per chain and a chunk of records.
//!
//! Gap records of the instrument (or of none: recorder gaps) come from the epoch's system
//! files when [`SeqRange::gaps`] is set, so that a reader learns which sequences storage
//! lost.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, Seek};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ib_stream_ipc::{Record, RecordKind};

use super::{
    BinaryReader, Damage, JsonlReader, QueryError, QueryStats, default_format, line_after,
    line_st_us,
};
use crate::storage::StorageError;
use crate::storage::checkpoint::Checkpoint;
use crate::storage::jsonl::line_seq;
use crate::storage::layout::{Format, HOUR_NS, Stream, list_segments};
use crate::tickjson::{self, LocalStrings};

/// What to read by sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqRange {
    /// IB conId.
    pub con_id: u32,
    /// Market-data kinds; empty means every market-data kind.
    pub kinds: Vec<RecordKind>,
    /// Also return the gap records of this conId or of none (from the system files).
    pub gaps: bool,
    /// The ring epoch.
    pub epoch: u64,
    /// First sequence (inclusive).
    pub first_seq: u64,
    /// Last sequence (inclusive).
    pub last_seq: u64,
    /// Records received before this time (ns since the Unix epoch) are skipped;
    /// `i64::MIN` for none.
    pub start_ns: i64,
    /// At most this many records.
    pub limit: Option<u64>,
    /// Which format to read; `None`: binary when the root has it, else JSON Lines.
    pub format: Option<Format>,
}

impl SeqRange {
    /// Every market-data record of `con_id` in `first..=last` of `epoch`, with gaps.
    pub fn new(con_id: u32, epoch: u64, first_seq: u64, last_seq: u64) -> SeqRange {
        SeqRange {
            con_id,
            kinds: Vec::new(),
            gaps: true,
            epoch,
            first_seq,
            last_seq,
            start_ns: i64::MIN,
            limit: None,
            format: None,
        }
    }
}

#[derive(Debug)]
enum Reader {
    Binary(BinaryReader),
    Jsonl(JsonlReader),
}

/// One (stream, epoch) chain of hourly files.
#[derive(Debug)]
struct Chain {
    system: bool,
    files: VecDeque<PathBuf>,
    current: Option<Reader>,
    head: Option<Record>,
    /// Its head was taken (or never read, or reading it failed): read the next one.
    needs_advance: bool,
    done: bool,
}

/// A streaming read by sequence; see the module documentation.
#[derive(Debug)]
pub struct SeqIter {
    format: Format,
    range: SeqRange,
    kinds: u128,
    chains: Vec<Chain>,
    strings: LocalStrings,
    stats: QueryStats,
    remaining: Option<u64>,
    last: Option<u64>,
}

/// A line start at or before the first line with `seq >= first` (bisecting byte offsets, as
/// [`super::seek_start`] does by time).
fn jsonl_seek_seq(file: &File, len: u64, first: u64) -> std::io::Result<u64> {
    let (mut lo, mut hi) = (0u64, len);
    let mut buf = [0u8; 64];
    while hi - lo > super::JSONL_SEEK_WINDOW {
        let mid = lo + (hi - lo) / 2;
        let below = match line_after(file, mid, hi)? {
            Some((pos, _)) => {
                let n = file.read_at(&mut buf, pos)?;
                line_seq(&buf[..n])
                    .is_some_and(|s| s < first)
                    .then_some(pos)
            }
            None => None,
        };
        match below {
            Some(pos) => lo = pos,
            None => hi = mid + 1,
        }
    }
    Ok(lo)
}

fn open_jsonl(path: &Path, r: &SeqRange, system: bool) -> Result<JsonlReader, StorageError> {
    let io = |e| StorageError::io(path, e);
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let by_seq = jsonl_seek_seq(&file, len, r.first_seq).map_err(io)?;
    let start_us = r.start_ns.div_euclid(1000);
    // Both bisections land at or before the first wanted line: the later one is closer.
    let offset = if system || r.start_ns == i64::MIN {
        by_seq
    } else {
        by_seq.max(super::seek_start(&file, len, start_us).map_err(io)?)
    };
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    reader.seek(std::io::SeekFrom::Start(offset)).map_err(io)?;
    Ok(JsonlReader {
        path: path.to_path_buf(),
        reader,
        line: Vec::with_capacity(256),
        offset,
        skip_below_us: (!system && r.start_ns != i64::MIN).then_some(start_us),
        last_good: None,
    })
}

impl SeqIter {
    /// Plans the read: lists the epoch's segments (no file is opened yet).
    pub fn new(root: &Path, r: &SeqRange) -> Result<SeqIter, QueryError> {
        let format = r.format.unwrap_or_else(|| default_format(root));
        let kinds: Vec<RecordKind> = if r.kinds.is_empty() {
            RecordKind::ALL
                .into_iter()
                .filter(|k| k.is_market_data())
                .collect()
        } else {
            r.kinds.clone()
        };
        let mut mask = 0u128;
        for k in &kinds {
            mask |= 1u128 << (*k as u8);
        }
        let from_hour = if r.start_ns == i64::MIN {
            i64::MIN
        } else {
            r.start_ns.div_euclid(HOUR_NS).saturating_mul(HOUR_NS)
        };
        let mut chains: Vec<(Stream, Chain)> = Vec::new();
        if r.first_seq <= r.last_seq {
            for seg in list_segments(root, format, from_hour, i64::MAX)? {
                if seg.key.epoch != r.epoch {
                    continue;
                }
                let wanted = match seg.key.stream {
                    Stream::Kind(k) => seg.key.instrument_id == r.con_id && kinds.contains(&k),
                    Stream::System => r.gaps,
                };
                if !wanted {
                    continue;
                }
                // Sorted by (hour, conId, stream, epoch): appending keeps hour order.
                match chains.iter_mut().find(|(s, _)| *s == seg.key.stream) {
                    Some((_, c)) => c.files.push_back(seg.path),
                    None => chains.push((
                        seg.key.stream,
                        Chain {
                            system: seg.key.stream == Stream::System,
                            files: [seg.path].into(),
                            current: None,
                            head: None,
                            needs_advance: true,
                            done: false,
                        },
                    )),
                }
            }
        }
        Ok(SeqIter {
            format,
            range: r.clone(),
            kinds: mask,
            chains: chains.into_iter().map(|(_, c)| c).collect(),
            strings: LocalStrings::default(),
            stats: QueryStats::default(),
            remaining: r.limit,
            last: None,
        })
    }

    /// The format being read.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The strings the returned records' ids refer to.
    pub fn strings(&self) -> &LocalStrings {
        &self.strings
    }

    /// Work done so far.
    pub fn stats(&self) -> QueryStats {
        self.stats
    }

    /// The sequence of the last record returned.
    pub fn last_seq(&self) -> Option<u64> {
        self.last
    }

    /// The next record in sequence order, `Ok(None)` at the end of the range or the limit.
    pub fn next_record(&mut self) -> Result<Option<Record>, QueryError> {
        if self.remaining == Some(0) {
            return Ok(None);
        }
        // Only the chain whose head was returned last is read again; one whose read failed
        // (damage) is read again on the next call and goes on after the damage.
        for i in 0..self.chains.len() {
            if self.chains[i].needs_advance {
                self.advance(i)?;
                self.chains[i].needs_advance = false;
            }
        }
        let best = self
            .chains
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.head.as_ref().map(|r| (r.seq, i)))
            .min();
        let Some((_, i)) = best else {
            return Ok(None);
        };
        let Some(rec) = self.chains[i].head.take() else {
            return Ok(None);
        };
        self.chains[i].needs_advance = true;
        self.last = Some(rec.seq);
        self.stats.records_returned += 1;
        if let Some(r) = self.remaining.as_mut() {
            *r -= 1;
        }
        Ok(Some(rec))
    }

    /// The next record, its JSON line (without `\n`) appended to `out`.
    pub fn next_json(&mut self, out: &mut Vec<u8>) -> Result<Option<Record>, QueryError> {
        let rec = self.next_record()?;
        if let Some(r) = &rec {
            tickjson::encode(r, &self.strings, out);
        }
        Ok(rec)
    }

    fn wanted(&self, rec: &Record, system: bool) -> bool {
        // Times compare to the microsecond, as in [`super::QueryIter`] (JSON Lines keep µs).
        if rec.seq < self.range.first_seq
            || rec.ts_recv.div_euclid(1000) < self.range.start_ns.div_euclid(1000)
        {
            return false;
        }
        if system {
            rec.kind == RecordKind::Gap as u8
                && (rec.instrument_id == self.range.con_id || rec.instrument_id == 0)
        } else {
            rec.kind < 128 && self.kinds & (1u128 << rec.kind) != 0
        }
    }

    /// Whether damage met in a chain may hide records of the range (damage entirely
    /// before `first_seq` or the start time, or after `last_seq`, is stepped over).
    fn damage_matters(&self, d: &Damage, system: bool) -> bool {
        let before_start = d.until.is_some_and(|(seq, ts)| {
            seq < self.range.first_seq
                || (!system && ts.div_euclid(1000) < self.range.start_ns.div_euclid(1000))
        });
        let after_end = d.after.is_some_and(|(seq, _)| seq >= self.range.last_seq);
        !(before_start || after_end)
    }

    fn advance(&mut self, i: usize) -> Result<(), QueryError> {
        loop {
            let c = &mut self.chains[i];
            if c.done {
                return Ok(());
            }
            let system = c.system;
            if c.current.is_none() {
                let Some(path) = c.files.pop_front() else {
                    c.done = true;
                    return Ok(());
                };
                self.stats.files_opened += 1;
                let reader = match self.format {
                    Format::Binary => match BinaryReader::open(&path, &mut self.strings)? {
                        Some(mut b) => {
                            // Every file of an epoch is sequence-sorted; time-sorted
                            // market-data files also start at the start time.
                            let (first, start) = (self.range.first_seq, self.range.start_ns);
                            b.next = if system || start == i64::MIN {
                                b.lower_bound(|r| r.seq < first)?
                            } else {
                                b.lower_bound(|r| r.seq < first || r.ts_recv < start)?
                            };
                            Reader::Binary(b)
                        }
                        None => continue,
                    },
                    Format::Jsonl => Reader::Jsonl(open_jsonl(&path, &self.range, system)?),
                };
                self.chains[i].current = Some(reader);
            }
            let c = &mut self.chains[i];
            let next = match c.current.as_mut() {
                Some(Reader::Binary(r)) => r.next(&mut self.strings, &mut self.stats),
                Some(Reader::Jsonl(r)) => r.next(&mut self.strings, &mut self.stats),
                None => Ok(None),
            };
            let rec = match next {
                Ok(Some(rec)) => rec,
                Ok(None) => {
                    self.chains[i].current = None;
                    continue;
                }
                Err(QueryError::Damaged(d)) => {
                    if self.damage_matters(&d, system) {
                        return Err(QueryError::Damaged(d));
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let c = &mut self.chains[i];
            if rec.seq > self.range.last_seq {
                // Sequence-sorted: nothing later in this chain is in range.
                c.current = None;
                c.files.clear();
                c.done = true;
                return Ok(());
            }
            if self.wanted(&rec, system) {
                self.chains[i].head = Some(rec);
                return Ok(());
            }
        }
    }
}

impl Iterator for SeqIter {
    type Item = Result<Record, QueryError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

/// The last sequence of `epoch` that storage (in `format`) accounts for: every sequence up
/// to it is on disk or inside a gap record on disk, per the recorder's checkpoint (and less
/// what the format still owes as a gap). `None` when the checkpoint is not of this epoch (the
/// recorder has not written it, or has moved on; then everything on disk is final).
pub fn stored_through(root: &Path, epoch: u64, format: Format) -> Result<Option<u64>, QueryError> {
    let Some(cp) = Checkpoint::load(root)? else {
        return Ok(None);
    };
    if cp.epoch() != Some(epoch) {
        return Ok(None);
    }
    let owed = cp
        .owed_gaps
        .iter()
        .filter(|g| g.epoch() == Some(epoch) && g.format() == Some(format))
        .map(|g| g.from_seq.saturating_sub(1))
        .min();
    Ok(Some(owed.map_or(cp.last_seq, |o| o.min(cp.last_seq))))
}

/// An epoch with records of an instrument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochSpan {
    /// The ring epoch.
    pub epoch: u64,
    /// `ts_recv` of its first record at or after the start asked for (ns; approximate to
    /// the segment: the first record of its first segment in range).
    pub first_ts_ns: i64,
}

/// The epochs with records of `con_id` (any of `kinds`; empty: every market-data kind) in
/// hours from `start_ns` on, oldest first (by their first record's receive time).
pub fn epochs_from(
    root: &Path,
    format: Option<Format>,
    con_id: u32,
    kinds: &[RecordKind],
    start_ns: i64,
) -> Result<Vec<EpochSpan>, QueryError> {
    let format = format.unwrap_or_else(|| default_format(root));
    let from_hour = start_ns.div_euclid(HOUR_NS).saturating_mul(HOUR_NS);
    let mut firsts: Vec<(u64, PathBuf, i64)> = Vec::new();
    for seg in list_segments(root, format, from_hour, i64::MAX)? {
        let Stream::Kind(k) = seg.key.stream else {
            continue;
        };
        if seg.key.instrument_id != con_id || !(kinds.is_empty() || kinds.contains(&k)) {
            continue;
        }
        // Backfilled ticks are no run of their own: they belong inside a run's gap.
        if crate::storage::backfill::is_backfill_epoch(seg.key.epoch) {
            continue;
        }
        if !firsts.iter().any(|(e, _, _)| *e == seg.key.epoch) {
            firsts.push((seg.key.epoch, seg.path, seg.key.hour_start_ns));
        }
    }
    let mut out = Vec::with_capacity(firsts.len());
    for (epoch, path, hour) in firsts {
        let first_ts_ns = first_ts(&path, format)?.unwrap_or(hour);
        out.push(EpochSpan { epoch, first_ts_ns });
    }
    out.sort_by_key(|e| (e.first_ts_ns, e.epoch));
    Ok(out)
}

/// The receive time of a segment's first record.
fn first_ts(path: &Path, format: Format) -> Result<Option<i64>, QueryError> {
    let io = |e| StorageError::io(path, e);
    match format {
        Format::Binary => {
            // Raw or sealed; a sealed one's first time is in its verified index.
            let mut data = crate::storage::sealed::SegmentData::open(path).map_err(io)?;
            if let Some(s) = data.sealed() {
                return Ok(s.index.blocks.first().map(|b| b.first_ts));
            }
            let mut b = [0u8; ib_stream_ipc::RECORD_SIZE];
            let n = data
                .read_up_to(&mut b, crate::storage::binary::HEADER_LEN as u64)
                .map_err(io)?;
            Ok((n == b.len()).then(|| Record::from_bytes_array(&b).ts_recv))
        }
        Format::Jsonl => {
            let file = File::open(path).map_err(io)?;
            let mut b = [0u8; 64];
            let n = file.read_at(&mut b, 0).map_err(io)?;
            Ok(line_st_us(&b[..n]).map(|us| us.saturating_mul(1000)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::binary::BinarySegmentWriter;
    use crate::storage::jsonl::JsonlSegmentWriter;
    use crate::storage::layout::SegmentKey;
    use ib_stream_ipc::{PRICE_SCALE, Quote, SIZE_SCALE, Trade};

    const CON: u32 = 42;
    const EPOCH: u64 = 0xabc;
    const HOUR: i64 = 1_763_800_000 / 3600 * 3600 * 1_000_000_000;

    fn quote(seq: u64, ts: i64) -> Record {
        let mut r = Record::quote(
            CON,
            ts,
            Quote {
                bid_price: seq as i64 * PRICE_SCALE,
                ask_price: (seq as i64 + 1) * PRICE_SCALE,
                bid_size: SIZE_SCALE,
                ask_size: SIZE_SCALE,
            },
        );
        r.seq = seq;
        r.ts_recv = ts;
        r
    }

    fn trade(seq: u64, ts: i64) -> Record {
        let mut r = Record::trade(
            false,
            CON,
            ts,
            Trade {
                price: seq as i64 * PRICE_SCALE,
                size: SIZE_SCALE,
                exchange_id: 0,
                conditions_id: 0,
            },
        );
        r.seq = seq;
        r.ts_recv = ts;
        r
    }

    fn gap(seq: u64, ts: i64, first: u64, last: u64) -> Record {
        let mut r = Record::new(RecordKind::Gap);
        r.seq = seq;
        r.ts_recv = ts;
        r.tick_type = ib_stream_ipc::GapReason::ReaderOverrun as u8;
        r.body = [first as i64, last as i64, 0, 0];
        r
    }

    /// Two hours of quotes and trades (and a recorder gap, and another contract), in both
    /// formats; returns the records of CON in sequence order.
    fn write(root: &Path) -> Vec<Record> {
        let strings = LocalStrings::default();
        let mut recs = Vec::new();
        let mut seq = 0u64;
        for i in 0..6000i64 {
            seq += 1;
            if seq == 3001 {
                // seqs 3001..=3010 lost by the recorder: a gap record with seq 3001.
                recs.push(gap(3001, HOUR + 2 * HOUR_NS / 3, 3001, 3010));
                seq = 3011;
            }
            // Half in the first hour, half in the second.
            let ts = HOUR + i * (2 * HOUR_NS / 6000);
            let mut r = if i % 3 == 0 {
                trade(seq, ts)
            } else {
                quote(seq, ts)
            };
            if i % 7 == 0 {
                r.instrument_id = CON + 1;
            }
            recs.push(r);
        }
        let mut open: Vec<(SegmentKey, BinarySegmentWriter, JsonlSegmentWriter)> = Vec::new();
        for r in &recs {
            let key = SegmentKey::for_record(r, EPOCH).unwrap();
            let i = match open.iter().position(|(k, _, _)| *k == key) {
                Some(i) => i,
                None => {
                    open.push((
                        key,
                        BinarySegmentWriter::open(root, key, HOUR).unwrap(),
                        JsonlSegmentWriter::open(root, key).unwrap(),
                    ));
                    open.len() - 1
                }
            };
            open[i].1.push(r, &strings).unwrap();
            open[i].2.push(r, &strings);
        }
        for (_, mut b, mut j) in open {
            b.flush().unwrap();
            b.commit_window();
            b.close(false).unwrap();
            j.flush().unwrap();
            j.commit_window();
            j.close(false).unwrap();
        }
        recs.into_iter()
            .filter(|r| r.instrument_id == CON || r.kind == RecordKind::Gap as u8)
            .collect()
    }

    #[test]
    fn by_sequence_reads_exactly_the_range_in_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        let all = write(dir.path());
        for format in [Format::Binary, Format::Jsonl] {
            for (first, last) in [(1, 10), (2990, 3020), (2500, 4500), (5990, 9999), (1, 0)] {
                let mut r = SeqRange::new(CON, EPOCH, first, last);
                r.format = Some(format);
                let mut it = SeqIter::new(dir.path(), &r).unwrap();
                let got: Vec<u64> = it.by_ref().map(|r| r.unwrap().seq).collect();
                let want: Vec<u64> = all
                    .iter()
                    .map(|r| r.seq)
                    .filter(|s| (first..=last).contains(s))
                    .collect();
                assert_eq!(got, want, "{format:?} {first}..={last}");
                // Positioned by binary search: a short range decodes a small part.
                if last >= first && last - first < 100 {
                    assert!(
                        it.stats().records_decoded < 3000,
                        "{format:?}: {:?}",
                        it.stats()
                    );
                }
            }
            // The gap record comes in its place with its range; kinds filter; a limit.
            let mut r = SeqRange::new(CON, EPOCH, 2999, 3012);
            r.format = Some(format);
            r.kinds = vec![RecordKind::TbtBidAsk];
            r.limit = Some(3);
            let got: Vec<Record> = SeqIter::new(dir.path(), &r)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(got.len(), 3);
            assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));
            let g = got
                .iter()
                .find(|r| r.kind == RecordKind::Gap as u8)
                .unwrap();
            assert_eq!((g.body[0], g.body[1]), (3001, 3010));
            assert!(
                got.iter()
                    .all(|r| r.kind != RecordKind::TbtLast as u8 && r.seq >= 2999)
            );
            // Another epoch has nothing.
            let mut r = SeqRange::new(CON, EPOCH + 1, 1, u64::MAX);
            r.format = Some(format);
            assert_eq!(SeqIter::new(dir.path(), &r).unwrap().count(), 0);
        }
    }

    #[test]
    fn a_start_time_skips_the_earlier_records() {
        let dir = tempfile::tempdir().unwrap();
        let all = write(dir.path());
        let start = HOUR + HOUR_NS + 12_345;
        for format in [Format::Binary, Format::Jsonl] {
            let mut r = SeqRange::new(CON, EPOCH, 1, u64::MAX);
            r.format = Some(format);
            r.start_ns = start;
            let got: Vec<u64> = SeqIter::new(dir.path(), &r)
                .unwrap()
                .map(|r| r.unwrap().seq)
                .collect();
            let want: Vec<u64> = all
                .iter()
                .filter(|r| r.ts_recv.div_euclid(1000) >= start.div_euclid(1000))
                .map(|r| r.seq)
                .collect();
            assert_eq!(got, want, "{format:?}");
            let e = epochs_from(dir.path(), Some(format), CON, &[], start).unwrap();
            assert_eq!(e.len(), 1);
            assert_eq!(e[0].epoch, EPOCH);
            assert!(e[0].first_ts_ns >= HOUR + HOUR_NS);
        }
    }
}
