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

pub mod damage;
pub mod seq;
pub mod time;

pub use damage::{Damage, DamageKind};

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ib_stream_ipc::{RECORD_SIZE, Record, RecordKind};

use super::StorageError;
use super::binary::{BinaryHeader, HEADER_LEN, sidecar_path};
use super::layout::{Format, HOUR_NS, Stream, list_segments};
use super::sealed::SegmentData;
use super::strings_file;
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
    /// A damaged block, header or line (see [`damage`]): its records are not returned. The
    /// iterator that returned it can go on: its next call continues after the damage.
    #[error("{0}")]
    Damaged(Box<Damage>),
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

/// Reads one binary segment from a block on, a chunk at a time, verifying every block that
/// has a checksum entry before serving its records.
///
/// What a reader of a file the recorder may be appending to sees, and does:
/// - fewer than 64 bytes: the header is not written yet, the file holds nothing;
/// - bytes after the last whole record: a record being written, not read;
/// - a complete block (B records) with a checksum entry: verified; a mismatch is a
///   [`DamageKind::Block`] and none of its records is served;
/// - the last block with an entry but fewer records than B (a closed file's last block, or
///   a reopened one being appended to): served when a prefix of it matches the entry (the
///   records after that prefix are new ones), otherwise the file was cut short there: the
///   end of what is stored, nothing of that block is served;
/// - records after the last entry (the open tail the recorder checksums when the block fills
///   or the file closes): served unchecked, as no checksum exists for them yet.
///
/// The `.crc` sidecar is read before the data length and the strings after it: the recorder
/// writes strings, then records, then checksums, so every entry read covers records present
/// and every string a record read refers to is present.
#[derive(Debug)]
struct BinaryReader {
    path: PathBuf,
    /// Raw or sealed (`storage::sealed`), read as the raw layout.
    file: SegmentData,
    /// Records in the file (whole ones, as of opening; less if it shrank meanwhile).
    n: u64,
    /// Records per checksum block.
    block: u64,
    /// The `.crc` entries as of opening.
    crcs: Vec<u32>,
    /// Next record index to load (a block start).
    next: u64,
    buf: Vec<Record>,
    pos: usize,
    /// Damaged blocks of the loaded chunk, with the position in `buf` where their records
    /// would have been.
    damage: std::collections::VecDeque<(usize, Damage)>,
    /// The last record loaded: `(seq, ts_recv)`.
    last_loaded: Option<(u64, i64)>,
    /// Sidecar id to query string id.
    remap: Vec<(u32, u32)>,
    bytes: Vec<u8>,
}

fn record_of(b: &[u8]) -> Record {
    let mut a = [0u8; RECORD_SIZE];
    a.copy_from_slice(&b[..RECORD_SIZE]);
    Record::from_bytes_array(&a)
}

impl BinaryReader {
    /// Opens the segment at `path`; `Ok(None)` when it holds nothing yet (or is gone).
    fn open(path: &Path, strings: &mut LocalStrings) -> Result<Option<BinaryReader>, QueryError> {
        let io = |e| QueryError::Storage(StorageError::io(path, e));
        let mut file = match SegmentData::open(path) {
            Ok(f) => f,
            // Deleted by retention since it was listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            // A sealed segment whose header or index does not verify: nothing of it is served.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(QueryError::Damaged(Box::new(Damage {
                    path: path.to_path_buf(),
                    kind: DamageKind::Header {
                        reason: e.to_string(),
                    },
                    after: None,
                    until: None,
                })));
            }
            Err(e) => return Err(io(e)),
        };
        let crcs: Vec<u32> = match file.sealed() {
            Some(s) => s.index.crcs.clone(),
            None => {
                let crc_path = sidecar_path(path, "crc");
                match std::fs::read(&crc_path) {
                    Ok(b) => b
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(QueryError::Storage(StorageError::io(crc_path, e))),
                }
            }
        };
        let len = file.len().map_err(io)?;
        let mut h = [0u8; HEADER_LEN];
        if len < HEADER_LEN as u64 || file.read_up_to(&mut h, 0).map_err(io)? < HEADER_LEN {
            // Created, header not written yet: nothing stored in it so far.
            return Ok(None);
        }
        let header = match BinaryHeader::parse(&h, path) {
            Ok(h) => h,
            Err(StorageError::Corrupt { what, .. }) => {
                return Err(QueryError::Damaged(Box::new(Damage {
                    path: path.to_path_buf(),
                    kind: DamageKind::Header { reason: what },
                    after: None,
                    until: None,
                })));
            }
            Err(e) => return Err(e.into()),
        };
        let fs = match strings_file::read(&sidecar_path(path, "strings")) {
            Ok(fs) => fs.unwrap_or_default(),
            // Created, its header not written yet: no record read refers to it.
            Err(_)
                if std::fs::metadata(sidecar_path(path, "strings"))
                    .is_ok_and(|m| m.len() < strings_file::STRINGS_FILE_HEADER_LEN as u64) =>
            {
                Default::default()
            }
            Err(e) => return Err(e.into()),
        };
        let mut ids: Vec<_> = fs.strings.iter().collect();
        ids.sort_by_key(|(id, _)| **id);
        Ok(Some(BinaryReader {
            path: path.to_path_buf(),
            file,
            n: (len - HEADER_LEN as u64) / RECORD_SIZE as u64,
            block: u64::from(header.crc_block_records),
            crcs,
            next: 0,
            buf: Vec::with_capacity(CHUNK_RECORDS),
            pos: 0,
            damage: Default::default(),
            last_loaded: None,
            remap: ids
                .into_iter()
                .map(|(id, s)| (*id, strings.intern(s)))
                .collect(),
            bytes: Vec::new(),
        }))
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> QueryError + '_ {
        move |e| QueryError::Storage(StorageError::io(&self.path, e))
    }

    /// The last record of block `b` when it can be used to decide a search: verified when
    /// it is complete and has a checksum entry; `None` when it fails (or cannot be read).
    fn probe_block(&mut self, b: u64) -> Result<Option<Record>, QueryError> {
        let start = b * self.block;
        let end = (start + self.block).min(self.n);
        if end <= start {
            return Ok(None);
        }
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.resize((end - start) as usize * RECORD_SIZE, 0);
        let got = self
            .file
            .read_up_to(&mut bytes, HEADER_LEN as u64 + start * RECORD_SIZE as u64)
            .map_err(self.io())?;
        let ok = got == bytes.len()
            && !self.file.crc_block_damaged(b)
            && !(end - start == self.block
                && (b as usize) < self.crcs.len()
                && crc32fast::hash(&bytes) != self.crcs[b as usize]);
        let last = ok.then(|| record_of(&bytes[bytes.len() - RECORD_SIZE..]));
        self.bytes = bytes;
        Ok(last)
    }

    /// The start of the first block that may hold a record with `!before(record)` (records
    /// in file order, `before` true for a prefix of them), by binary search over blocks,
    /// each probe verified: a damaged probe narrows the search downwards (reading from
    /// earlier is always correct; a damaged value must not send the search past records).
    fn lower_bound(&mut self, before: impl Fn(&Record) -> bool) -> Result<u64, QueryError> {
        // Reading from the start is always correct, so an unverified first record may say
        // that there is nothing to skip (a whole-file read saves the search).
        let mut first = [0u8; RECORD_SIZE];
        if self.n == 0 {
            return Ok(0);
        }
        let got = self
            .file
            .read_up_to(&mut first, HEADER_LEN as u64)
            .map_err(self.io())?;
        if got == RECORD_SIZE && !self.file.crc_block_damaged(0) && !before(&record_of(&first)) {
            return Ok(0);
        }
        let (mut lo, mut hi) = (0u64, self.n.div_ceil(self.block));
        if let Some(s) = self.file.sealed() {
            // The verified index narrows the search to one compressed block: the first whose
            // last record is not `before` (its first and last sequence and time are kept).
            let k = s.index.blocks.partition_point(|e| {
                let mut r = Record::ZERO;
                r.seq = e.last_seq;
                r.ts_recv = e.last_ts;
                before(&r)
            }) as u64;
            let per = u64::from(s.index.block_records) / self.block;
            lo = (k * per).min(hi);
            hi = ((k + 1) * per).min(hi);
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.probe_block(mid)? {
                Some(last) if before(&last) => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok(lo * self.block)
    }

    /// Loads the next chunk; `false` at the end of what is stored.
    fn load_chunk(&mut self, stats: &mut QueryStats) -> Result<bool, QueryError> {
        self.buf.clear();
        self.pos = 0;
        if self.next >= self.n {
            return Ok(false);
        }
        let per_chunk = match self.file.sealed() {
            // One compressed block per chunk: each is decompressed once.
            Some(s) => u64::from(s.index.block_records),
            None => (CHUNK_RECORDS as u64 / self.block).max(1) * self.block,
        };
        // A sealed segment's chunks end where its compressed blocks do (a search may start
        // one anywhere).
        let room = match self.file.sealed() {
            Some(_) => per_chunk - self.next % per_chunk,
            None => per_chunk,
        };
        let count = (self.n - self.next).min(room);
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.resize(count as usize * RECORD_SIZE, 0);
        let got = self
            .file
            .read_up_to(
                &mut bytes,
                HEADER_LEN as u64 + self.next * RECORD_SIZE as u64,
            )
            .map_err(self.io())?;
        let got_recs = (got / RECORD_SIZE) as u64;
        if got_recs < count {
            // Cut short meanwhile (a rollback or repair): what is there is all there is.
            self.n = self.next + got_recs;
        }
        let mut i = 0u64;
        while i < got_recs {
            let idx = self.next + i;
            let blk = idx / self.block;
            let avail = ((blk + 1) * self.block).min(self.next + got_recs) - idx;
            let range = i as usize * RECORD_SIZE..(i + avail) as usize * RECORD_SIZE;
            let recs = &bytes[range.clone()];
            let serve = match self.crcs.get(blk as usize) {
                // The open tail: no checksum yet.
                None => true,
                Some(&want) if avail == self.block || self.file.sealed().is_some() => {
                    // A sealed segment's entries cover every record, its last block too.
                    let ok = !self.file.crc_block_damaged(blk) && crc32fast::hash(recs) == want;
                    if !ok {
                        let after_idx = idx + avail;
                        let until = if after_idx < self.next + got_recs {
                            Some(record_of(&bytes[range.end..]))
                        } else if after_idx < self.n {
                            let mut b = [0u8; RECORD_SIZE];
                            (self
                                .file
                                .read_up_to(
                                    &mut b,
                                    HEADER_LEN as u64 + after_idx * RECORD_SIZE as u64,
                                )
                                .map_err(self.io())?
                                == RECORD_SIZE)
                                .then(|| record_of(&b))
                        } else {
                            None
                        };
                        // A record of a damaged compressed block is no hint (it reads as zeros).
                        let until = until
                            .filter(|_| !self.file.crc_block_damaged(after_idx / self.block))
                            .map(|r| (r.seq, r.ts_recv));
                        let offset = HEADER_LEN as u64 + idx * RECORD_SIZE as u64;
                        let served = self.buf.len();
                        // A sealed segment loses a whole compressed block at once: its checksum
                        // blocks make one report, not sixteen.
                        let merged = match self.damage.back_mut() {
                            Some((
                                pos,
                                Damage {
                                    kind:
                                        DamageKind::Block {
                                            offset: o,
                                            records: n,
                                            ..
                                        },
                                    until: u,
                                    ..
                                },
                            )) if self.file.sealed().is_some()
                                && *pos == served
                                && *o + *n * RECORD_SIZE as u64 == offset =>
                            {
                                *n += avail;
                                *u = until;
                                true
                            }
                            _ => false,
                        };
                        if !merged {
                            self.damage.push_back((
                                served,
                                Damage {
                                    path: self.path.clone(),
                                    kind: DamageKind::Block {
                                        index: blk,
                                        offset,
                                        records: avail,
                                    },
                                    after: self.last_loaded,
                                    until,
                                },
                            ));
                        }
                    }
                    ok
                }
                Some(&want) => {
                    // Shorter than its checksum's block: a prefix matching the entry is
                    // what was checksummed (later records are new); no prefix matching
                    // means the file was cut inside the block: the end of what is stored.
                    let mut h = crc32fast::Hasher::new();
                    let matched = recs.chunks_exact(RECORD_SIZE).any(|r| {
                        h.update(r);
                        h.clone().finalize() == want
                    });
                    if !matched {
                        self.n = idx;
                        break;
                    }
                    true
                }
            };
            if serve {
                self.buf
                    .extend(recs.chunks_exact(RECORD_SIZE).map(record_of));
                stats.records_decoded += avail;
                if let Some(r) = self.buf.last() {
                    self.last_loaded = Some((r.seq, r.ts_recv));
                }
            }
            i += avail;
        }
        self.next += i;
        self.bytes = bytes;
        Ok(!self.buf.is_empty() || !self.damage.is_empty())
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

    /// The next record; a damaged block is an `Err(QueryError::Damaged)` at its place, after
    /// which reading goes on.
    fn next(
        &mut self,
        strings: &mut LocalStrings,
        stats: &mut QueryStats,
    ) -> Result<Option<Record>, QueryError> {
        loop {
            if self.damage.front().is_some_and(|(p, _)| *p == self.pos)
                && let Some((_, d)) = self.damage.pop_front()
            {
                return Err(QueryError::Damaged(Box::new(d)));
            }
            if self.pos < self.buf.len() {
                break;
            }
            if !self.load_chunk(stats)? {
                return Ok(None);
            }
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
    /// `(seq, ts_recv)` of the last line decoded.
    last_good: Option<(u64, i64)>,
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
            last_good: None,
        })
    }

    /// The next record; a complete line that does not decode is an
    /// `Err(QueryError::Damaged)`, after which reading goes on with the next line. A last
    /// line without its `\n` is one being written: the end of what is stored.
    fn next(
        &mut self,
        strings: &mut LocalStrings,
        stats: &mut QueryStats,
    ) -> Result<Option<Record>, QueryError> {
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
            match tickjson::decode(line, strings) {
                Ok(rec) => {
                    self.last_good = Some((rec.seq, rec.ts_recv));
                    return Ok(Some(rec));
                }
                Err(e) => {
                    let until = super::jsonl::line_seq(line)
                        .zip(line_st_us(line).map(|us| us.saturating_mul(1000)));
                    return Err(QueryError::Damaged(Box::new(Damage {
                        path: self.path.clone(),
                        kind: DamageKind::Line {
                            line: line_number(self.reader.get_ref(), at)
                                .map_err(|e| StorageError::io(&self.path, e))?,
                            offset: at,
                            reason: e.to_string(),
                        },
                        after: self.last_good,
                        until,
                    })));
                }
            }
        }
    }
}

/// The number (from 1) of the line starting at byte `at`: newlines before it, plus one.
fn line_number(file: &File, at: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut off, mut lines) = (0u64, 1u64);
    while off < at {
        let want = (at - off).min(buf.len() as u64) as usize;
        let n = file.read_at(&mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        off += n as u64;
    }
    Ok(lines)
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
    /// Its head was taken (or never read, or reading it failed): read the next one.
    needs_advance: bool,
    /// Damage met while reading a system file whole, reported before its records.
    deferred: std::collections::VecDeque<Damage>,
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
    root: PathBuf,
    /// The backfill fill states, read at the first gap returned as JSON.
    fills: Option<super::backfill::FillStates>,
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
                        needs_advance: true,
                        deferred: Default::default(),
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
            root: root.to_path_buf(),
            fills: None,
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
        // Only the source whose head was returned last is read again, so that a query
        // stopping at its limit reads nothing more. A source whose read failed (damage) is
        // read again on the next call and goes on after the damage.
        for i in 0..self.sources.len() {
            if self.sources[i].needs_advance {
                self.advance(i)?;
                self.sources[i].needs_advance = false;
            }
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
        self.sources[i].needs_advance = true;
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
            let start = out.len();
            tickjson::encode(r, &self.strings, out);
            if r.kind == RecordKind::Gap as u8 {
                self.annotate_gap(r, out, start)?;
            }
        }
        Ok(rec)
    }

    /// Adds the fill states of the query's conId and kinds to a gap's JSON (`fill`).
    fn annotate_gap(
        &mut self,
        gap: &Record,
        out: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), QueryError> {
        let Some(epoch) = self.last.map(|c| c.epoch) else {
            return Ok(());
        };
        if self.fills.is_none() {
            self.fills = Some(super::backfill::FillStates::load(&self.root)?);
        }
        let Some(fills) = &self.fills else {
            return Ok(());
        };
        let mask = self.filter.kinds;
        let mut line = out.split_off(start);
        super::backfill::annotate_gap(
            &mut line,
            fills
                .of_gap(epoch, gap.seq, self.filter.con_id)
                .filter(|f| {
                    RecordKind::from_name(&f.tt).is_some_and(|k| mask & (1u128 << (k as u8)) != 0)
                }),
        );
        out.extend_from_slice(&line);
        Ok(())
    }

    /// Whether damage met in source `i` may hide records this query wants (damage entirely
    /// before the start, or after the end, is stepped over silently).
    fn damage_matters(&self, d: &Damage, system: bool) -> bool {
        let us = |ts: i64| ts.div_euclid(1000);
        !(d.until.is_some_and(|(_, ts)| us(ts) < self.filter.start_us)
            || (!system && d.after.is_some_and(|(_, ts)| us(ts) >= self.filter.end_us)))
    }

    /// Moves source `i` to its next wanted record (or marks it done).
    fn advance(&mut self, i: usize) -> Result<(), QueryError> {
        loop {
            let s = &mut self.sources[i];
            if let Some(d) = s.deferred.pop_front() {
                if self.damage_matters(&d, true) {
                    return Err(QueryError::Damaged(Box::new(d)));
                }
                continue;
            }
            if s.done {
                break;
            }
            if s.current.is_none() {
                let Some(path) = s.files.pop_front() else {
                    s.done = true;
                    break;
                };
                self.stats.files_opened += 1;
                let system = s.system;
                let reader = match self.format {
                    Format::Binary => match BinaryReader::open(&path, &mut self.strings)? {
                        Some(mut r) => {
                            // System files may hold recorder gap records written later
                            // than the records around them: read them whole instead of
                            // seeking by time.
                            if !system {
                                let start = self.filter.start_us.saturating_mul(1000);
                                r.next = r.lower_bound(|rec| rec.ts_recv < start)?;
                            }
                            SegmentReader::Binary(r)
                        }
                        None => continue,
                    },
                    Format::Jsonl => SegmentReader::Jsonl(JsonlReader::open(
                        &path,
                        self.filter.start_us,
                        !system,
                    )?),
                };
                self.sources[i].current = Some(reader);
                if system {
                    // A recorder gap record has the receive time of when it was written,
                    // which can be later than records after it in the file. System files
                    // are small (events, not ticks): sort the wanted records by key so the
                    // merge order, and with it cursor paging, stays exact.
                    let mut keep = Vec::new();
                    let mut deferred = std::collections::VecDeque::new();
                    loop {
                        let next = match self.sources[i].current.as_mut() {
                            Some(SegmentReader::Binary(r)) => {
                                r.next(&mut self.strings, &mut self.stats)
                            }
                            Some(SegmentReader::Jsonl(r)) => {
                                r.next(&mut self.strings, &mut self.stats)
                            }
                            _ => Ok(None),
                        };
                        match next {
                            Ok(Some(rec)) => {
                                if self.filter.accepts(&rec, true) {
                                    keep.push(rec);
                                }
                            }
                            Ok(None) => break,
                            Err(QueryError::Damaged(d)) => deferred.push_back(*d),
                            Err(e) => return Err(e),
                        }
                    }
                    keep.sort_by_key(|r| (r.ts_recv.div_euclid(1000), r.seq));
                    let s = &mut self.sources[i];
                    s.current = Some(SegmentReader::Sorted(keep.into_iter()));
                    s.deferred = deferred;
                    continue;
                }
            }
            let system = self.sources[i].system;
            let next = match self.sources[i].current.as_mut() {
                Some(SegmentReader::Binary(r)) => r.next(&mut self.strings, &mut self.stats),
                Some(SegmentReader::Jsonl(r)) => r.next(&mut self.strings, &mut self.stats),
                Some(SegmentReader::Sorted(v)) => Ok(v.next()),
                None => Ok(None),
            };
            let rec = match next {
                Ok(Some(rec)) => rec,
                Ok(None) => {
                    self.sources[i].current = None;
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
            let s = &mut self.sources[i];
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
