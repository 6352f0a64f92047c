//! Integrity and completeness of recorded history (what `ib-stream storage validate` runs).
//!
//! Per file: header and name agree, no torn tail, block checksums match, every line decodes,
//! sequences strictly increase, every record belongs in the file (kind, instrument, hour) and
//! every string a binary record refers to is in its sidecar. Per format and epoch: no
//! sequence is stored twice, and every sequence from 1 to the highest one stored is either
//! stored or inside the range of a gap record. Heartbeats are thinned by the recorder (one a
//! minute is kept), so the sequences of dropped heartbeats show up in `uncovered`: history
//! of a ring that carries heartbeat records can have uncovered sequences that are not losses.
//!
//! Memory is bounded per segment, not per epoch: the segments of one epoch form chains (one
//! per instrument and stream, in hour order, each in sequence order) that are merged by
//! sequence with one segment's sequence numbers in memory per chain. Every problem names the
//! file and where in it (byte offset, record index or line number).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};

use ib_stream_ipc::{RECORD_SIZE, Record, RecordKind, UNDEF_I64};

use super::StorageError;
use super::binary::{self, BinarySegment, HEADER_LEN, sidecar_path, truncate_or_remove};
use super::jsonl::{JsonlSegment, complete_len};
use super::layout::{Format, SegmentFile, Stream, all_segments, hour_start};
use super::strings_file;
use crate::tickjson::{self, LocalStrings, StringLookup};

/// Record-level problems kept per file (the count of the rest is reported).
const MAX_RECORD_PROBLEMS: usize = 5;

/// Something wrong with one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub path: PathBuf,
    /// Where in it: `byte N`, `record I (byte N)`, `line N`, `block I (records a..b)`, or
    /// empty for the whole file.
    pub at: String,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at.is_empty() {
            write!(f, "{}: {}", self.path.display(), self.what)
        } else {
            write!(f, "{}: {}: {}", self.path.display(), self.at, self.what)
        }
    }
}

/// Completeness of one epoch in one format.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochReport {
    /// Records stored.
    pub records: u64,
    /// Lowest sequence stored.
    pub first_seq: u64,
    /// Highest sequence stored.
    pub last_seq: u64,
    /// Gap records stored.
    pub gap_records: u64,
    /// Sequences covered by gap records.
    pub gap_seqs: u64,
    /// Sequences stored more than once (each extra copy counts).
    pub duplicates: u64,
    /// Ranges of sequences in `1..=last_seq` neither stored nor covered by a gap.
    pub uncovered: Vec<(u64, u64)>,
}

/// The report of one format.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FormatReport {
    /// Segments read.
    pub files: u64,
    /// Records in them.
    pub records: u64,
    /// Data bytes (sidecars not counted).
    pub bytes: u64,
    /// Per ring epoch.
    pub epochs: BTreeMap<u64, EpochReport>,
    /// File problems.
    pub problems: Vec<Problem>,
    /// What `--repair` changed.
    pub repairs: Vec<Problem>,
}

impl FormatReport {
    /// No problem, no duplicate, nothing uncovered.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
            && self
                .epochs
                .values()
                .all(|e| e.duplicates == 0 && e.uncovered.is_empty())
    }
}

/// The report of [`validate`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidationReport {
    /// Per format that has a directory under the root.
    pub formats: BTreeMap<Format, FormatReport>,
}

impl ValidationReport {
    /// Every format is ok.
    pub fn is_ok(&self) -> bool {
        self.formats.values().all(FormatReport::is_ok)
    }
}

/// Options of [`validate_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ValidateOptions {
    /// Cut torn tails (data, checksum sidecar, strings sidecar) before checking, and report
    /// each cut in [`FormatReport::repairs`]. Never run while a recorder writes the root.
    pub repair: bool,
}

/// Validates every format under `root` that has data.
pub fn validate(root: &Path) -> Result<ValidationReport, StorageError> {
    validate_with(root, ValidateOptions::default(), |_, _, _| {})
}

/// [`validate`] with options; `progress(format, files done, files total)` is called after
/// every file.
pub fn validate_with(
    root: &Path,
    opts: ValidateOptions,
    mut progress: impl FnMut(Format, u64, u64),
) -> Result<ValidationReport, StorageError> {
    let mut out = ValidationReport::default();
    for format in Format::ALL {
        if root.join(format.dir_name()).is_dir() {
            out.formats
                .insert(format, validate_format(root, format, opts, &mut progress)?);
        }
    }
    Ok(out)
}

fn problem(seg: &SegmentFile, at: impl Into<String>, what: impl Into<String>) -> Problem {
    Problem {
        path: seg.path.clone(),
        at: at.into(),
        what: what.into(),
    }
}

/// Cuts the torn tails of one segment; returns what it did.
fn repair_torn(seg: &SegmentFile) -> Result<Vec<Problem>, StorageError> {
    let mut done = Vec::new();
    let len_of = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
    let mut cut = |path: &Path, from: u64, to: u64, what: &str| -> Result<(), StorageError> {
        truncate_or_remove(path, to).map_err(|e| StorageError::io(path, e))?;
        done.push(Problem {
            path: path.to_path_buf(),
            at: format!("byte {to}"),
            what: format!("cut {} bytes of {what}", from - to),
        });
        Ok(())
    };
    match seg.format {
        Format::Jsonl => {
            let s = JsonlSegment::read(&seg.path)?;
            if s.trailing_bytes > 0 {
                let good = s.bytes.len() as u64;
                cut(&seg.path, good + s.trailing_bytes, good, "torn last line")?;
            }
        }
        Format::Binary => {
            let Some(len) = len_of(&seg.path) else {
                return Ok(done);
            };
            if len < HEADER_LEN as u64 {
                // No header: nothing in the file can be read.
                return Ok(done);
            }
            // A sealed segment was written whole and is never cut: only its strings are.
            let sealed = crate::storage::sealed::is_sealed(&seg.path)
                .map_err(|e| StorageError::io(&seg.path, e))?;
            let n = (len - HEADER_LEN as u64) / RECORD_SIZE as u64;
            let whole = HEADER_LEN as u64 + n * RECORD_SIZE as u64;
            if whole != len && !sealed {
                cut(&seg.path, len, whole, "torn record")?;
            }
            let crc = sidecar_path(&seg.path, "crc");
            if !sealed && let Some(clen) = len_of(&crc) {
                let blocks = n.div_ceil(u64::from(binary::CRC_BLOCK_RECORDS));
                let keep = (clen / 4).min(blocks) * 4;
                if keep != clen {
                    cut(&crc, clen, keep, "torn or extra checksum entries")?;
                }
            }
            let strings = sidecar_path(&seg.path, "strings");
            if let Some(slen) = len_of(&strings) {
                let bytes = std::fs::read(&strings).map_err(|e| StorageError::io(&strings, e))?;
                let valid = if slen < strings_file::STRINGS_FILE_HEADER_LEN as u64 {
                    0
                } else {
                    strings_file::parse(&bytes, &strings)?.valid_len
                };
                if valid != slen {
                    cut(&strings, slen, valid, "torn or damaged string entries")?;
                }
            }
        }
    }
    Ok(done)
}

/// Checks one segment; returns its sequence numbers and gap ranges, or `None` when it cannot
/// be read at all.
struct Checked {
    seqs: Vec<u64>,
    gaps: Vec<(u64, u64)>,
    bytes: u64,
}

fn check_segment(root: &Path, seg: &SegmentFile, problems: &mut Vec<Problem>) -> Option<Checked> {
    let bytes = std::fs::metadata(&seg.path).map_or(0, |m| m.len());
    // Each record with where it is (text made only for a problem).
    let records: Vec<(Loc, Record)> = match seg.format {
        Format::Binary => {
            let s = match BinarySegment::read(&seg.path) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(problem(seg, "", e.to_string()));
                    return None;
                }
            };
            if !s.header.matches(&seg.key) {
                problems.push(problem(
                    seg,
                    "byte 0",
                    format!("header {:?} does not match the file name", s.header),
                ));
            }
            let whole = HEADER_LEN as u64 + s.records.len() as u64 * RECORD_SIZE as u64;
            if s.trailing_bytes > 0 {
                problems.push(problem(
                    seg,
                    format!("byte {whole}"),
                    format!(
                        "torn record: {} bytes after the last whole record",
                        s.trailing_bytes
                    ),
                ));
            }
            let crc = sidecar_path(&seg.path, "crc");
            if s.crc_trailing_bytes > 0 {
                problems.push(Problem {
                    path: crc.clone(),
                    at: format!("byte {}", s.crc_entries.len() * 4),
                    what: format!("torn checksum entry ({} bytes)", s.crc_trailing_bytes),
                });
            }
            let check = s.verify();
            let b = u64::from(s.header.crc_block_records);
            // Checksum blocks of a sealed segment whose compressed block cannot be read: their
            // records are not there at all (they read as zeros), so they are left out below.
            let lost = match crate::storage::sealed::unreadable_crc_blocks(&seg.path) {
                Ok(l) => l,
                Err(e) => {
                    problems.push(problem(seg, "", e.to_string()));
                    return None;
                }
            };
            let readable = |i: usize| !lost.contains(&(i as u64 / b.max(1)));
            for blk in &check.bad_blocks {
                let (first, last) = (blk * b, ((blk + 1) * b).min(s.records.len() as u64) - 1);
                // The block's own sequences are not to be trusted: its neighbours bound them.
                let lo = (0..first as usize)
                    .rev()
                    .find(|&i| readable(i))
                    .map_or(0, |i| s.records[i].seq + 1);
                let hi = (last as usize + 1..s.records.len())
                    .find(|&i| readable(i))
                    .map_or(u64::MAX, |i| s.records[i].seq.saturating_sub(1));
                let what = if lost.contains(blk) {
                    "the compressed block holding these records is damaged (sealed segment)"
                } else {
                    "checksum mismatch: the records of this block were changed on disk"
                };
                problems.push(problem(
                    seg,
                    format!(
                        "block {blk} (records {first}..={last}, bytes {}..{})",
                        HEADER_LEN as u64 + first * RECORD_SIZE as u64,
                        HEADER_LEN as u64 + (last + 1) * RECORD_SIZE as u64
                    ),
                    format!(
                        "{what}; {}",
                        other_copy(root, seg, lo, hi, Some(last + 1 - first))
                    ),
                ));
            }
            if check.extra_entries > 0 {
                problems.push(Problem {
                    path: crc,
                    at: String::new(),
                    what: format!(
                        "{} checksum entries for blocks that do not exist",
                        check.extra_entries
                    ),
                });
            }
            match binary::read_strings(&seg.path) {
                Ok(fs) => {
                    let sp = sidecar_path(&seg.path, "strings");
                    if fs.trailing_garbage > 0 {
                        problems.push(Problem {
                            path: sp.clone(),
                            at: format!("byte {}", fs.valid_len),
                            what: format!(
                                "{} bytes after the last intact string entry",
                                fs.trailing_garbage
                            ),
                        });
                    }
                    if fs.epoch != seg.key.epoch && !fs.strings.is_empty() {
                        problems.push(Problem {
                            path: sp,
                            at: "byte 8".into(),
                            what: format!("strings sidecar of epoch {:016x}", fs.epoch),
                        });
                    }
                    let mut missing = 0usize;
                    for (i, r) in s.records.iter().enumerate() {
                        for id in binary::string_ids(r) {
                            if fs.lookup(id).is_none() {
                                missing += 1;
                                if missing <= MAX_RECORD_PROBLEMS {
                                    problems.push(problem(
                                        seg,
                                        record_at(i),
                                        format!("seq {}: string id {id} not in the sidecar", r.seq),
                                    ));
                                }
                            }
                        }
                    }
                }
                Err(e) => problems.push(problem(seg, "", e.to_string())),
            }
            s.records
                .into_iter()
                .enumerate()
                .filter(|(i, _)| readable(*i))
                .map(|(i, r)| (Loc::Record(i), r))
                .collect()
        }
        Format::Jsonl => {
            let s = match JsonlSegment::read(&seg.path) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(problem(seg, "", e.to_string()));
                    return None;
                }
            };
            if s.trailing_bytes > 0 {
                problems.push(problem(
                    seg,
                    format!("byte {}", complete_len(&s.bytes)),
                    format!("torn last line of {} bytes (no newline)", s.trailing_bytes),
                ));
            }
            let mut strings = LocalStrings::default();
            let mut out = Vec::new();
            let mut offset = 0usize;
            let mut bad = 0usize;
            // Reported bad lines waiting for the next good line's sequence: (problem index,
            // sequence of the good line before).
            let mut open: Vec<(usize, u64)> = Vec::new();
            let mut prev_seq = 0u64;
            let resolve = |open: &mut Vec<(usize, u64)>, next: u64, problems: &mut Vec<Problem>| {
                for (pi, before) in open.drain(..) {
                    let note = other_copy(root, seg, before + 1, next.saturating_sub(1), None);
                    problems[pi].what.push_str(&format!("; {note}"));
                }
            };
            for (i, line) in s.lines().enumerate() {
                match tickjson::decode(line, &mut strings) {
                    Ok(r) => {
                        resolve(&mut open, r.seq, problems);
                        prev_seq = r.seq;
                        out.push((Loc::Line(i + 1, offset), r));
                    }
                    Err(e) => {
                        bad += 1;
                        if bad <= MAX_RECORD_PROBLEMS {
                            problems.push(problem(
                                seg,
                                format!("line {} (byte {offset})", i + 1),
                                format!("does not decode: {e}"),
                            ));
                            open.push((problems.len() - 1, prev_seq));
                        }
                    }
                }
                offset += line.len() + 1;
            }
            resolve(&mut open, u64::MAX, problems);
            if bad > MAX_RECORD_PROBLEMS {
                problems.push(problem(
                    seg,
                    "",
                    format!("{} more lines do not decode", bad - MAX_RECORD_PROBLEMS),
                ));
            }
            out
        }
    };
    let mut prev = 0u64;
    let mut bad: Vec<(Loc, String)> = Vec::new();
    let mut bad_count = 0usize;
    let mut gaps = Vec::new();
    for (at, r) in &records {
        if r.seq <= prev {
            note(
                &mut bad,
                &mut bad_count,
                (*at, format!("seq {} after {prev}: not increasing", r.seq)),
            );
        }
        prev = r.seq;
        if !seg.key.stream.accepts(r) {
            note(
                &mut bad,
                &mut bad_count,
                (
                    *at,
                    format!("seq {}: kind {} does not belong here", r.seq, r.kind),
                ),
            );
        } else if seg.key.stream != Stream::System && r.instrument_id != seg.key.instrument_id {
            note(
                &mut bad,
                &mut bad_count,
                (
                    *at,
                    format!("seq {}: conId {} in the wrong file", r.seq, r.instrument_id),
                ),
            );
        }
        if hour_start(r.ts_recv) != seg.key.hour_start_ns {
            note(
                &mut bad,
                &mut bad_count,
                (
                    *at,
                    format!(
                        "seq {}: ts_recv {} outside the file's hour",
                        r.seq, r.ts_recv
                    ),
                ),
            );
        }
        if r.kind() == Some(RecordKind::Gap) && r.body[0] > 0 {
            let to = if r.body[1] == UNDEF_I64 {
                u64::MAX
            } else {
                r.body[1] as u64
            };
            gaps.push((r.body[0] as u64, to));
        }
    }
    let more = bad_count.saturating_sub(MAX_RECORD_PROBLEMS);
    for (at, what) in bad.into_iter().take(MAX_RECORD_PROBLEMS) {
        problems.push(problem(seg, at.to_string(), what));
    }
    if more > 0 {
        problems.push(problem(seg, "", format!("{more} more record problems")));
    }
    Some(Checked {
        seqs: records.iter().map(|(_, r)| r.seq).collect(),
        gaps,
        bytes,
    })
}

/// Whether the other format's file of `seg`'s hour, instrument, kind and epoch holds the
/// records with sequences in `lo..=hi` (`want` of them, when known) that are damaged in
/// `seg`: one sentence for the operator, who then knows whether a repair source exists.
fn other_copy(root: &Path, seg: &SegmentFile, lo: u64, hi: u64, want: Option<u64>) -> String {
    let other = match seg.format {
        Format::Binary => Format::Jsonl,
        Format::Jsonl => Format::Binary,
    };
    let path = seg.key.path(root, other);
    let name = other.dir_name();
    let range = if hi == u64::MAX {
        format!("seq {lo}..")
    } else {
        format!("seq {lo}..={hi}")
    };
    if !path.exists() {
        return format!(
            "no {name} copy of this file ({}): no repair source",
            path.display()
        );
    }
    // Records of the range the other file holds intact (decoded lines; binary records in
    // blocks whose checksum matches, or not checksummed yet).
    let found: Result<u64, StorageError> = match other {
        Format::Jsonl => JsonlSegment::read(&path).map(|j| {
            let mut strings = LocalStrings::default();
            j.lines()
                .filter_map(|l| tickjson::decode(l, &mut strings).ok())
                .filter(|r| (lo..=hi).contains(&r.seq))
                .count() as u64
        }),
        Format::Binary => BinarySegment::read(&path).map(|b| {
            let check = b.verify();
            let per = u64::from(b.header.crc_block_records).max(1);
            b.records
                .iter()
                .enumerate()
                .filter(|(i, r)| {
                    (lo..=hi).contains(&r.seq) && !check.bad_blocks.contains(&(*i as u64 / per))
                })
                .count() as u64
        }),
    };
    match (found, want) {
        (Err(e), _) => format!("the {name} copy cannot be read ({e}): no repair source"),
        (Ok(0), _) => format!(
            "the {name} copy {} holds none of {range}: no repair source",
            path.display()
        ),
        (Ok(n), Some(w)) if n == w => format!(
            "the {name} copy {} holds these {n} records ({range}) intact: a repair source",
            path.display()
        ),
        (Ok(n), Some(w)) => format!(
            "the {name} copy {} holds {n} of these {w} records ({range}): a partial repair source",
            path.display()
        ),
        (Ok(n), None) => format!(
            "the {name} copy {} holds {n} records of {range} intact: a repair source",
            path.display()
        ),
    }
}

/// Keeps the first few record problems of a file and counts the rest (a file that is wrong
/// throughout must not turn into one message per record).
fn note(bad: &mut Vec<(Loc, String)>, count: &mut usize, p: (Loc, String)) {
    *count += 1;
    if bad.len() < MAX_RECORD_PROBLEMS {
        bad.push(p);
    }
}

/// Where a record is in its file.
#[derive(Clone, Copy)]
enum Loc {
    /// Binary record index.
    Record(usize),
    /// JSON line number (from 1) and its byte offset.
    Line(usize, usize),
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Record(i) => f.write_str(&record_at(*i)),
            Loc::Line(n, off) => write!(f, "line {n} (byte {off})"),
        }
    }
}

fn record_at(i: usize) -> String {
    format!("record {i} (byte {})", HEADER_LEN + i * RECORD_SIZE)
}

/// The segments of one instrument and stream of one epoch, read one at a time.
struct Chain {
    files: VecDeque<SegmentFile>,
    seqs: Vec<u64>,
    pos: usize,
}

struct EpochWalk<'a> {
    root: &'a Path,
    rep: &'a mut FormatReport,
    gaps: Vec<(u64, u64)>,
    done: u64,
    total: u64,
}

impl EpochWalk<'_> {
    /// The next sequence of `chain`, loading (and checking) its next file when needed.
    fn next_seq(&mut self, chain: &mut Chain, progress: &mut dyn FnMut(u64, u64)) -> Option<u64> {
        while chain.pos == chain.seqs.len() {
            let seg = chain.files.pop_front()?;
            self.rep.files += 1;
            self.done += 1;
            let checked = check_segment(self.root, &seg, &mut self.rep.problems);
            progress(self.done, self.total);
            let Some(c) = checked else {
                continue;
            };
            self.rep.bytes += c.bytes;
            self.rep.records += c.seqs.len() as u64;
            self.gaps.extend(c.gaps);
            chain.seqs = c.seqs;
            chain.pos = 0;
        }
        let s = chain.seqs[chain.pos];
        chain.pos += 1;
        Some(s)
    }
}

fn validate_format(
    root: &Path,
    format: Format,
    opts: ValidateOptions,
    progress: &mut impl FnMut(Format, u64, u64),
) -> Result<FormatReport, StorageError> {
    let mut rep = FormatReport::default();
    let segs = all_segments(root, format)?;
    let total = segs.len() as u64;
    if opts.repair {
        for seg in &segs {
            rep.repairs.extend(repair_torn(seg)?);
        }
    }
    // epoch -> (conId, stream) -> files in hour order (all_segments sorts by hour first).
    let mut epochs: BTreeMap<u64, BTreeMap<(u32, Stream), VecDeque<SegmentFile>>> = BTreeMap::new();
    for seg in segs {
        epochs
            .entry(seg.key.epoch)
            .or_default()
            .entry((seg.key.instrument_id, seg.key.stream))
            .or_default()
            .push_back(seg);
    }
    let mut done = 0u64;
    for (epoch, chains) in epochs {
        let mut walk = EpochWalk {
            root,
            rep: &mut rep,
            gaps: Vec::new(),
            done,
            total,
        };
        let mut prog = |d: u64, t: u64| progress(format, d, t);
        let mut chains: Vec<Chain> = chains
            .into_values()
            .map(|files| Chain {
                files,
                seqs: Vec::new(),
                pos: 0,
            })
            .collect();
        let mut heap = BinaryHeap::new();
        for (i, c) in chains.iter_mut().enumerate() {
            if let Some(s) = walk.next_seq(c, &mut prog) {
                heap.push(Reverse((s, i)));
            }
        }
        let mut e = EpochReport::default();
        let mut holes = Vec::new();
        let mut prev: Option<u64> = None;
        while let Some(Reverse((s, i))) = heap.pop() {
            e.records += 1;
            match prev {
                None => {
                    e.first_seq = s;
                    if s > 1 {
                        holes.push((1, s - 1));
                    }
                }
                Some(p) if s == p => e.duplicates += 1,
                Some(p) if s > p + 1 => holes.push((p + 1, s - 1)),
                Some(_) => {}
            }
            prev = Some(prev.map_or(s, |p| p.max(s)));
            if let Some(n) = walk.next_seq(&mut chains[i], &mut prog) {
                heap.push(Reverse((n, i)));
            }
        }
        e.last_seq = prev.unwrap_or(0);
        let mut g = std::mem::take(&mut walk.gaps);
        done = walk.done;
        e.gap_records = g.len() as u64;
        g.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, b) in g {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        e.gap_seqs = merged
            .iter()
            .filter(|(a, _)| *a <= e.last_seq)
            .map(|(a, b)| (*b).min(e.last_seq) - a + 1)
            .sum();
        for (a, b) in holes {
            subtract(a, b, &merged, &mut e.uncovered);
        }
        rep.epochs.insert(epoch, e);
    }
    Ok(rep)
}

/// Appends the parts of `a..=b` not inside any of the sorted, disjoint `ranges`.
fn subtract(a: u64, b: u64, ranges: &[(u64, u64)], out: &mut Vec<(u64, u64)>) {
    let mut cur = a;
    for &(ra, rb) in ranges {
        if rb < cur {
            continue;
        }
        if ra > b {
            break;
        }
        if ra > cur {
            out.push((cur, ra - 1));
        }
        cur = rb.saturating_add(1);
        if cur > b || rb == u64::MAX {
            return;
        }
    }
    if cur <= b {
        out.push((cur, b));
    }
}

#[cfg(test)]
mod tests {
    use super::subtract;

    #[test]
    fn subtract_ranges() {
        let mut out = Vec::new();
        subtract(1, 10, &[(3, 4), (8, 20)], &mut out);
        assert_eq!(out, vec![(1, 2), (5, 7)]);
        out.clear();
        subtract(5, 6, &[(1, u64::MAX)], &mut out);
        assert!(out.is_empty());
        out.clear();
        subtract(5, 6, &[], &mut out);
        assert_eq!(out, vec![(5, 6)]);
    }
}
