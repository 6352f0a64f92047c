//! Reading history back: one instrument, some kinds, a time range, a limit and a resumable
//! cursor, from either format with the same results.
//!
//! A [`QueryIter`] is pull-based and streams: per (stream, epoch) it has one segment open at
//! a time and a small read buffer (binary: [`CHUNK_RECORDS`] records read with `pread` after a
//! binary search on `ts_recv`; JSON Lines: a buffered line reader that skips lines before the
//! start by their `st` prefix without decoding them). The streams are merged in order of
//! [`Cursor`] key: receive time in microseconds, then epoch, then sequence.
//!
//! Times are compared to the microsecond, the resolution of the JSON Lines (the binary format
//! keeps nanoseconds), so both formats select, order and page the same records. String ids
//! of records returned are ids of the query's own table ([`QueryIter::strings`]): binary
//! segments' sidecar ids are mapped into it, JSON Lines strings interned into it.

pub mod seq;
pub mod time;

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ib_stream_ipc::{RECORD_SIZE, Record, RecordKind};

use super::StorageError;
use super::binary::{BinaryHeader, HEADER_LEN, read_strings};
use super::layout::{Format, HOUR_NS, Stream, list_segments};
use crate::tickjson::{self, LocalStrings, StringIntern};

/// Records read per `pread` from a binary segment (128 KiB).
pub const CHUNK_RECORDS: usize = 2048;

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Reading a file failed or a file is damaged.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A cursor token that is not one this module wrote.
    #[error("bad cursor {0:?} (expected <µs>-<epoch hex>-<seq>)")]
    BadCursor(String),
    /// A time, duration or time zone that does not parse, or an empty range.
    #[error(transparent)]
    Time(#[from] time::TimeError),
    /// A kind name this build does not know.
    #[error("unknown kind {0:?}")]
    BadKind(String),
}

/// A position in a query's order: the record with this key and everything before it have been
/// returned. As a token: `<ts_recv µs>-<epoch, 16 hex digits>-<seq>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// `ts_recv` in microseconds since the Unix epoch (floor).
    pub ts_us: i64,
    /// Ring epoch of the record.
    pub epoch: u64,
    /// Its sequence number.
    pub seq: u64,
}

impl Cursor {
    /// The cursor just after `rec` (read from the ring or storage of `epoch`).
    pub fn after_record(rec: &Record, epoch: u64) -> Cursor {
        Cursor {
            ts_us: rec.ts_recv.div_euclid(1000),
            epoch,
            seq: rec.seq,
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:016x}-{}", self.ts_us, self.epoch, self.seq)
    }
}

impl FromStr for Cursor {
    type Err = QueryError;
    fn from_str(s: &str) -> Result<Cursor, QueryError> {
        let bad = || QueryError::BadCursor(s.to_string());
        // The time may be negative, so split from the right.
        let (rest, seq) = s.rsplit_once('-').ok_or_else(bad)?;
        let (ts, epoch) = rest.rsplit_once('-').ok_or_else(bad)?;
        if epoch.len() != 16 {
            return Err(bad());
        }
        Ok(Cursor {
            ts_us: ts.parse().map_err(|_| bad())?,
            epoch: u64::from_str_radix(epoch, 16).map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// What to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// IB conId.
    pub con_id: u32,
    /// Kinds to return. Market-data kinds come from the instrument's files; system kinds
    /// (gap, connection, subscription, heartbeat) from the system files, those of this conId
    /// or of none (conId 0: recorder gaps, connection changes). Empty means every
    /// market-data kind.
    pub kinds: Vec<RecordKind>,
    /// First receive time, ns since the Unix epoch (inclusive). Times are compared to the
    /// microsecond: a record is in range when its microsecond overlaps `[start_ns, end_ns)`.
    pub start_ns: i64,
    /// End receive time, ns (exclusive).
    pub end_ns: i64,
    /// At most this many records.
    pub limit: Option<u64>,
    /// Resume after this cursor (the `cursor()` of a previous page).
    pub after: Option<Cursor>,
    /// Which format to read; `None`: binary when the root has it, else JSON Lines.
    pub format: Option<Format>,
}

impl Query {
    /// Every market-data kind of `con_id` in `[start_ns, end_ns)`.
    pub fn new(con_id: u32, start_ns: i64, end_ns: i64) -> Query {
        Query {
            con_id,
            kinds: Vec::new(),
            start_ns,
            end_ns,
            limit: None,
            after: None,
            format: None,
        }
    }
}

/// A query as text, the way HTTP parameters and command lines give it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryText<'a> {
    /// Kind names, comma-separated (`bid_ask,last`); `None` or empty: every market-data kind.
    pub kinds: Option<&'a str>,
    /// Start time ([`time::parse_time`]).
    pub start: Option<&'a str>,
    /// End time (exclusive).
    pub end: Option<&'a str>,
    /// Duration ([`time::parse_duration`]); any two of start, end and duration.
    pub duration: Option<&'a str>,
    /// Zone of civil times (IANA name); `None`: UTC.
    pub tz: Option<&'a str>,
    /// At most this many records.
    pub limit: Option<u64>,
    /// A cursor token from a previous page.
    pub after: Option<&'a str>,
}

impl Query {
    /// Builds a query from text; `now_ns` resolves `now` and open ends.
    pub fn from_text(con_id: u32, t: &QueryText<'_>, now_ns: i64) -> Result<Query, QueryError> {
        let tz = time::zone(t.tz.unwrap_or("UTC"))?;
        let (start_ns, end_ns) = time::resolve_range(t.start, t.end, t.duration, &tz, now_ns)?;
        let kinds = t
            .kinds
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| RecordKind::from_name(k).ok_or_else(|| QueryError::BadKind(k.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Query {
            con_id,
            kinds,
            start_ns,
            end_ns,
            limit: t.limit,
            after: t.after.map(str::parse).transpose()?,
            format: None,
        })
    }
}

/// Counters of the work a query did (to check it read no more than it needed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryStats {
    /// Segments opened.
    pub files_opened: u64,
    /// Records read from disk and decoded (binary records copied, JSON lines parsed).
    pub records_decoded: u64,
    /// Records returned.
    pub records_returned: u64,
}

/// The format a query of `root` reads when it names none.
pub fn default_format(root: &Path) -> Format {
    if root.join(Format::Binary.dir_name()).is_dir() {
        Format::Binary
    } else {
        Format::Jsonl
    }
}

/// Bounds in microseconds, and what a record must be to be returned.
#[derive(Clone, Debug)]
struct Filter {
    start_us: i64,
    end_us: i64,
    con_id: u32,
    kinds: u128,
}

impl Filter {
    fn wants_kind(&self, kind: u8) -> bool {
        kind < 128 && self.kinds & (1u128 << kind) != 0
    }

    fn accepts(&self, r: &Record, system: bool) -> bool {
        let us = r.ts_recv.div_euclid(1000);
        us >= self.start_us
            && us < self.end_us
            && self.wants_kind(r.kind)
            && (!system || r.instrument_id == self.con_id || r.instrument_id == 0)
    }
}

/// Reads one binary segment from a time on, a chunk at a time.
#[derive(Debug)]
struct BinaryReader {
    path: PathBuf,
    file: File,
    /// Records in the file.
    n: u64,
    /// Next record index to read from the file.
    next: u64,
    buf: Vec<Record>,
    pos: usize,
    /// Sidecar id to query string id.
    remap: Vec<(u32, u32)>,
    bytes: Vec<u8>,
}

impl BinaryReader {
    fn open(
        path: &Path,
        start_ns: i64,
        sorted: bool,
        strings: &mut LocalStrings,
    ) -> Result<BinaryReader, StorageError> {
        let io = |e| StorageError::io(path, e);
        let file = File::open(path).map_err(io)?;
        let mut h = [0u8; HEADER_LEN];
        file.read_exact_at(&mut h, 0).map_err(io)?;
        BinaryHeader::parse(&h, path)?;
        let len = file.metadata().map_err(io)?.len();
        let n = len.saturating_sub(HEADER_LEN as u64) / RECORD_SIZE as u64;
        let mut r = BinaryReader {
            path: path.to_path_buf(),
            file,
            n,
            next: 0,
            buf: Vec::with_capacity(CHUNK_RECORDS),
            pos: 0,
            remap: Vec::new(),
            bytes: Vec::new(),
        };
        if sorted {
            r.next = r.lower_bound_ts(start_ns)?;
        }
        let fs = read_strings(path)?;
        let mut ids: Vec<_> = fs.strings.iter().collect();
        ids.sort_by_key(|(id, _)| **id);
        r.remap = ids
            .into_iter()
            .map(|(id, s)| (*id, strings.intern(s)))
            .collect();
        Ok(r)
    }

    fn record_at(&self, i: u64) -> Result<Record, StorageError> {
        let mut b = [0u8; RECORD_SIZE];
        self.file
            .read_exact_at(&mut b, HEADER_LEN as u64 + i * RECORD_SIZE as u64)
            .map_err(|e| StorageError::io(&self.path, e))?;
        Ok(Record::from_bytes_array(&b))
    }

    /// Index of the first record with `ts_recv >= ts_ns`, by binary search with one `pread`
    /// per step (the file is never read whole).
    fn lower_bound_ts(&self, ts_ns: i64) -> Result<u64, StorageError> {
        let (mut lo, mut hi) = (0u64, self.n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.record_at(mid)?.ts_recv < ts_ns {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    fn map_id(&self, id: u32, strings: &mut LocalStrings) -> u32 {
        if id == 0 {
            return 0;
        }
        match self.remap.binary_search_by_key(&id, |(k, _)| *k) {
            Ok(i) => self.remap[i].1,
            // What the encoder prints for an id it cannot resolve, so both formats agree.
            Err(_) => strings.intern(format!("#{id}").as_bytes()),
        }
    }

    fn next(
        &mut self,
        strings: &mut LocalStrings,
        stats: &mut QueryStats,
    ) -> Result<Option<Record>, StorageError> {
        if self.pos == self.buf.len() {
            if self.next >= self.n {
                return Ok(None);
            }
            let count = (self.n - self.next).min(CHUNK_RECORDS as u64) as usize;
            self.bytes.resize(count * RECORD_SIZE, 0);
            self.file
                .read_exact_at(
                    &mut self.bytes,
                    HEADER_LEN as u64 + self.next * RECORD_SIZE as u64,
                )
                .map_err(|e| StorageError::io(&self.path, e))?;
            self.buf.clear();
            self.buf
                .extend(self.bytes.chunks_exact(RECORD_SIZE).map(|c| {
                    let mut a = [0u8; RECORD_SIZE];
                    a.copy_from_slice(c);
                    Record::from_bytes_array(&a)
                }));
            self.next += count as u64;
            self.pos = 0;
            stats.records_decoded += count as u64;
        }
        let mut r = self.buf[self.pos];
        self.pos += 1;
        match r.kind() {
            Some(RecordKind::TbtLast | RecordKind::TbtAllLast) => {
                let x = self.map_id(r.body[2] as u32, strings);
                let c = self.map_id((r.body[2] >> 32) as u32, strings);
                r.body[2] = i64::from(x) | (i64::from(c) << 32);
            }
            Some(RecordKind::L1String) => {
                r.body[0] = i64::from(self.map_id(r.body[0] as u32, strings));
            }
            _ => {}
        }
        Ok(Some(r))
    }
}

/// The `st` (µs) of a line written by [`tickjson::encode`] (`{"seq":N,"st":M,...`), read
/// without decoding the line.
pub(crate) fn line_st_us(line: &[u8]) -> Option<i64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let after_seq = rest.iter().position(|b| !b.is_ascii_digit())?;
    let rest = rest[after_seq..].strip_prefix(b",\"st\":")?;
    let end = rest
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'-'))
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Reads one JSON Lines segment line by line.
#[derive(Debug)]
struct JsonlReader {
    path: PathBuf,
    reader: BufReader<File>,
    line: Vec<u8>,
    /// Byte offset of the next line.
    offset: u64,
    /// Lines with `st` below this are skipped undecoded (only for time-sorted files).
    skip_below_us: Option<i64>,
}

/// Below this many bytes left to search, [`seek_start`] stops and lines are skipped one by one.
const JSONL_SEEK_WINDOW: u64 = 64 * 1024;

/// The start of the first line (after byte `from`, strictly inside `..to`) and its `st`.
fn line_after(file: &File, from: u64, to: u64) -> std::io::Result<Option<(u64, Option<i64>)>> {
    let mut buf = vec![0u8; 4096];
    let mut at = from;
    // Find the end of the line holding `from`.
    let start = loop {
        if at >= to {
            return Ok(None);
        }
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(p) = buf[..n].iter().position(|&b| b == b'\n') {
            break at + p as u64 + 1;
        }
        at += n as u64;
    };
    if start >= to {
        return Ok(None);
    }
    let n = file.read_at(&mut buf[..64], start)?;
    Ok(Some((start, line_st_us(&buf[..n]))))
}

/// A line start in a time-sorted JSON Lines file at or before the first line with
/// `st >= start_us`, found by bisecting byte offsets (a few `pread`s instead of reading the
/// file up to the start time).
fn seek_start(file: &File, len: u64, start_us: i64) -> std::io::Result<u64> {
    // Invariant: `lo` is a line start and every line before it has `st < start_us` (the
    // reader then skips lines from `lo` on by their prefix). `hi` only narrows the search.
    let (mut lo, mut hi) = (0u64, len);
    while hi - lo > JSONL_SEEK_WINDOW {
        let mid = lo + (hi - lo) / 2;
        match line_after(file, mid, hi)? {
            Some((pos, Some(st))) if st < start_us => lo = pos,
            _ => hi = mid + 1,
        }
    }
    Ok(lo)
}

impl JsonlReader {
    fn open(path: &Path, start_us: i64, sorted: bool) -> Result<JsonlReader, StorageError> {
        let io = |e| StorageError::io(path, e);
        let file = File::open(path).map_err(io)?;
        let offset = if sorted {
            let len = file.metadata().map_err(io)?.len();
            seek_start(&file, len, start_us).map_err(io)?
        } else {
            0
        };
        let mut reader = BufReader::with_capacity(128 * 1024, file);
        reader.seek(std::io::SeekFrom::Start(offset)).map_err(io)?;
        Ok(JsonlReader {
            path: path.to_path_buf(),
            reader,
            line: Vec::with_capacity(256),
            offset,
            skip_below_us: sorted.then_some(start_us),
        })
    }

    fn next(
        &mut self,
        strings: &mut LocalStrings,
        stats: &mut QueryStats,
    ) -> Result<Option<Record>, StorageError> {
        loop {
            self.line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.line)
                .map_err(|e| StorageError::io(&self.path, e))?;
            // End of file, or a torn last line (no `\n`): not a record.
            if n == 0 || self.line.last() != Some(&b'\n') {
                return Ok(None);
            }
            let at = self.offset;
            self.offset += n as u64;
            let line = &self.line[..self.line.len() - 1];
            if let Some(min) = self.skip_below_us {
                match line_st_us(line) {
                    Some(st) if st < min => continue,
                    _ => self.skip_below_us = None,
                }
            }
            stats.records_decoded += 1;
            let rec = tickjson::decode(line, strings).map_err(|e| {
                StorageError::corrupt(&self.path, format!("line at byte {at}: {e}"))
            })?;
            return Ok(Some(rec));
        }
    }
}

#[derive(Debug)]
enum SegmentReader {
    Binary(BinaryReader),
    Jsonl(JsonlReader),
    /// A system file read whole and sorted by key (see [`QueryIter::advance`]).
    Sorted(std::vec::IntoIter<Record>),
}

/// The files of one stream of one epoch, oldest hour first, read one at a time.
#[derive(Debug)]
struct Source {
    stream: Stream,
    epoch: u64,
    system: bool,
    files: std::collections::VecDeque<PathBuf>,
    current: Option<SegmentReader>,
    /// The next record this source returns, with its key.
    head: Option<(Cursor, Record)>,
    done: bool,
}

/// A streaming query; see the module documentation.
#[derive(Debug)]
pub struct QueryIter {
    format: Format,
    filter: Filter,
    after: Option<Cursor>,
    remaining: Option<u64>,
    sources: Vec<Source>,
    strings: LocalStrings,
    stats: QueryStats,
    last: Option<Cursor>,
    started: bool,
    /// The source whose head was returned last: advanced on the next call, so that a query
    /// stopping at its limit reads nothing more.
    pending: Option<usize>,
}

impl QueryIter {
    /// Plans the query: lists the segments of the hours in range (no file is opened yet).
    pub fn new(root: &Path, q: &Query) -> Result<QueryIter, QueryError> {
        let format = q.format.unwrap_or_else(|| default_format(root));
        let kinds: Vec<RecordKind> = if q.kinds.is_empty() {
            RecordKind::ALL
                .into_iter()
                .filter(|k| k.is_market_data())
                .collect()
        } else {
            q.kinds.clone()
        };
        let mut mask = 0u128;
        for k in &kinds {
            mask |= 1u128 << (*k as u8);
        }
        let start_ns = match q.after {
            Some(c) => q.start_ns.max(c.ts_us.saturating_mul(1000)),
            None => q.start_ns,
        };
        let filter = Filter {
            start_us: start_ns.div_euclid(1000),
            // Ceiling: a record is in range when its microsecond overlaps [start, end).
            end_us: q.end_ns.div_euclid(1000) + i64::from(q.end_ns.rem_euclid(1000) != 0),
            con_id: q.con_id,
            kinds: mask,
        };
        let mut sources: Vec<Source> = Vec::new();
        if filter.start_us < filter.end_us {
            // Saturating: open-ended ranges use i64::MIN / i64::MAX.
            let hour_of = |ns: i64| ns.div_euclid(HOUR_NS).saturating_mul(HOUR_NS);
            let first_hour = hour_of(filter.start_us.saturating_mul(1000));
            let last_hour = hour_of(filter.end_us.saturating_mul(1000).saturating_sub(1));
            let want_system = kinds.iter().any(|k| !k.is_market_data());
            for seg in list_segments(root, format, first_hour, last_hour)? {
                let wanted = match seg.key.stream {
                    Stream::Kind(k) => seg.key.instrument_id == q.con_id && kinds.contains(&k),
                    Stream::System => want_system,
                };
                if !wanted {
                    continue;
                }
                let system = seg.key.stream == Stream::System;
                // list_segments sorts by (hour, conId, stream, epoch): append to the
                // source of this stream and epoch, which keeps its files in hour order.
                let key = (seg.key.stream, seg.key.epoch);
                match sources
                    .iter_mut()
                    .find(|s| s.stream == key.0 && s.epoch == key.1)
                {
                    Some(s) => s.files.push_back(seg.path),
                    None => sources.push(Source {
                        stream: key.0,
                        epoch: key.1,
                        system,
                        files: [seg.path].into(),
                        current: None,
                        head: None,
                        done: false,
                    }),
                }
            }
        }
        Ok(QueryIter {
            format,
            filter,
            after: q.after,
            remaining: q.limit,
            sources,
            strings: LocalStrings::default(),
            stats: QueryStats::default(),
            last: None,
            started: false,
            pending: None,
        })
    }

    /// The format being read.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The strings the returned records' ids refer to (for [`tickjson::encode`]).
    pub fn strings(&self) -> &LocalStrings {
        &self.strings
    }

    /// Work done so far.
    pub fn stats(&self) -> QueryStats {
        self.stats
    }

    /// The cursor after the last record returned (to ask for the next page), `None` before
    /// the first.
    pub fn cursor(&self) -> Option<Cursor> {
        self.last
    }

    /// The next record, `Ok(None)` at the end (or when the limit is reached).
    pub fn next_record(&mut self) -> Result<Option<Record>, QueryError> {
        if self.remaining == Some(0) {
            return Ok(None);
        }
        if !self.started {
            self.started = true;
            for i in 0..self.sources.len() {
                self.advance(i)?;
            }
        }
        if let Some(i) = self.pending.take() {
            self.advance(i)?;
        }
        let mut best: Option<usize> = None;
        for (i, s) in self.sources.iter().enumerate() {
            if let Some((k, _)) = &s.head
                && best.is_none_or(|b| self.sources[b].head.as_ref().is_some_and(|(bk, _)| k < bk))
            {
                best = Some(i);
            }
        }
        let Some(i) = best else {
            return Ok(None);
        };
        let Some((key, rec)) = self.sources[i].head.take() else {
            return Ok(None);
        };
        self.pending = Some(i);
        self.last = Some(key);
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

    /// Moves source `i` to its next wanted record (or marks it done).
    fn advance(&mut self, i: usize) -> Result<(), QueryError> {
        let s = &mut self.sources[i];
        while !s.done {
            if s.current.is_none() {
                let Some(path) = s.files.pop_front() else {
                    s.done = true;
                    break;
                };
                self.stats.files_opened += 1;
                // System files may hold recorder gap records written later than the
                // records around them: read them whole instead of seeking by time.
                let sorted = !s.system;
                s.current = Some(match self.format {
                    Format::Binary => SegmentReader::Binary(BinaryReader::open(
                        &path,
                        self.filter.start_us.saturating_mul(1000),
                        sorted,
                        &mut self.strings,
                    )?),
                    Format::Jsonl => SegmentReader::Jsonl(JsonlReader::open(
                        &path,
                        self.filter.start_us,
                        sorted,
                    )?),
                });
                if s.system {
                    // A recorder gap record has the receive time of when it was written,
                    // which can be later than records after it in the file. System files
                    // are small (events, not ticks): sort the wanted records by key so the
                    // merge order, and with it cursor paging, stays exact.
                    let mut keep = Vec::new();
                    loop {
                        let next = match s.current.as_mut() {
                            Some(SegmentReader::Binary(r)) => {
                                r.next(&mut self.strings, &mut self.stats)?
                            }
                            Some(SegmentReader::Jsonl(r)) => {
                                r.next(&mut self.strings, &mut self.stats)?
                            }
                            _ => None,
                        };
                        let Some(rec) = next else { break };
                        if self.filter.accepts(&rec, true) {
                            keep.push(rec);
                        }
                    }
                    keep.sort_by_key(|r| (r.ts_recv.div_euclid(1000), r.seq));
                    s.current = Some(SegmentReader::Sorted(keep.into_iter()));
                }
            }
            let next = match s.current.as_mut() {
                Some(SegmentReader::Binary(r)) => r.next(&mut self.strings, &mut self.stats)?,
                Some(SegmentReader::Jsonl(r)) => r.next(&mut self.strings, &mut self.stats)?,
                Some(SegmentReader::Sorted(v)) => v.next(),
                None => None,
            };
            let Some(rec) = next else {
                s.current = None;
                continue;
            };
            let key = Cursor::after_record(&rec, s.epoch);
            if !s.system && key.ts_us >= self.filter.end_us {
                // Sorted by time: nothing later in this stream is in range.
                s.current = None;
                s.files.clear();
                s.done = true;
                break;
            }
            if !self.filter.accepts(&rec, s.system) || self.after.is_some_and(|a| key <= a) {
                continue;
            }
            s.head = Some((key, rec));
            break;
        }
        Ok(())
    }
}

impl Iterator for QueryIter {
    type Item = Result<Record, QueryError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

/// Runs `q` and returns each record with its JSON line (no `\n`), as the web API sends it.
pub fn query_json(root: &Path, q: &Query) -> Result<JsonLines, QueryError> {
    Ok(JsonLines {
        inner: QueryIter::new(root, q)?,
    })
}

/// Records with their JSON lines; see [`query_json`].
#[derive(Debug)]
pub struct JsonLines {
    inner: QueryIter,
}

impl JsonLines {
    /// The underlying query (cursor, stats).
    pub fn query(&self) -> &QueryIter {
        &self.inner
    }
}

impl Iterator for JsonLines {
    type Item = Result<(Record, Vec<u8>), QueryError>;
    fn next(&mut self) -> Option<Self::Item> {
        let mut out = Vec::with_capacity(160);
        match self.inner.next_json(&mut out) {
            Ok(Some(r)) => Some(Ok((r, out))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// Every record of `q` (convenience for tests and small reads; prefer [`QueryIter`]).
pub fn query_all(root: &Path, q: &Query) -> Result<(Vec<Record>, LocalStrings), QueryError> {
    let mut it = QueryIter::new(root, q)?;
    let mut out = Vec::new();
    while let Some(r) = it.next_record()? {
        out.push(r);
    }
    Ok((out, it.strings.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_token_round_trips() {
        for c in [
            Cursor {
                ts_us: 1_763_800_000_123_456,
                epoch: 0xdead_beef,
                seq: 42,
            },
            Cursor {
                ts_us: -5,
                epoch: u64::MAX,
                seq: 0,
            },
        ] {
            assert_eq!(c.to_string().parse::<Cursor>().unwrap(), c);
        }
        for bad in ["", "1-2-3", "x-0000000000000001-3", "1-000000000000000g-3"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
    }

    #[test]
    fn seek_start_lands_on_a_line_start_before_the_first_wanted_line() {
        let path = std::env::temp_dir().join(format!("ibs-seek-{}.jsonl", std::process::id()));
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for i in 0..20_000i64 {
            starts.push((bytes.len() as u64, 1000 + i * 3));
            // Lines of varying length, like real ones.
            let pad = "x".repeat((i % 37) as usize);
            bytes.extend_from_slice(
                format!(
                    "{{\"seq\":{},\"st\":{},\"p\":\"{pad}\"}}\n",
                    i + 1,
                    1000 + i * 3
                )
                .as_bytes(),
            );
        }
        std::fs::write(&path, &bytes).unwrap();
        let f = File::open(&path).unwrap();
        for start in [
            0, 1000, 1001, 1003, 30_000, 45_001, 59_997, 59_998, 1_000_000,
        ] {
            let at = seek_start(&f, bytes.len() as u64, start).unwrap();
            let i = starts
                .iter()
                .position(|(o, _)| *o == at)
                .expect("a line start");
            assert!(starts[..i].iter().all(|(_, st)| *st < start), "{start}");
            // And it skipped most of the file.
            let want = starts
                .iter()
                .position(|(_, st)| *st >= start)
                .unwrap_or(starts.len());
            let want_off = starts.get(want).map_or(bytes.len() as u64, |(o, _)| *o);
            assert!(
                want_off - at <= 2 * JSONL_SEEK_WINDOW,
                "{start}: {at} vs {want_off}"
            );
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn queries_from_text() {
        let now = 1_763_800_000_000_000_000;
        let q = Query::from_text(
            5,
            &QueryText {
                kinds: Some("bid_ask, last"),
                duration: Some("1h"),
                limit: Some(10),
                after: Some("1-0000000000000002-3"),
                ..QueryText::default()
            },
            now,
        )
        .unwrap();
        assert_eq!(q.kinds, vec![RecordKind::TbtBidAsk, RecordKind::TbtLast]);
        assert_eq!((q.start_ns, q.end_ns), (now - 3_600_000_000_000, now));
        assert_eq!(q.after.map(|c| c.seq), Some(3));
        let bad = |t: QueryText<'_>| Query::from_text(5, &t, now).unwrap_err().to_string();
        assert!(
            bad(QueryText {
                kinds: Some("quotes"),
                ..QueryText::default()
            })
            .contains("quotes")
        );
        assert!(
            bad(QueryText {
                tz: Some("Nowhere/City"),
                ..QueryText::default()
            })
            .contains("Nowhere")
        );
        assert!(
            bad(QueryText {
                after: Some("x"),
                ..QueryText::default()
            })
            .contains("cursor")
        );
    }

    #[test]
    fn st_prefix() {
        assert_eq!(
            line_st_us(br#"{"seq":7,"st":1763800000123456,"cid":1}"#),
            Some(1_763_800_000_123_456)
        );
        assert_eq!(line_st_us(br#"{"st":5}"#), None);
    }
}
