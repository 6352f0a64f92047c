//! Integrity and completeness of recorded history (what `ib-stream storage validate` runs).
//!
//! Per file: header and name agree, no torn tail, block checksums match, every line decodes,
//! sequences strictly increase, every record belongs in the file (kind, instrument, hour) and
//! every string a binary record refers to is in its sidecar. Per format and epoch: no
//! sequence is stored twice, and every sequence from 1 to the highest one stored is either
//! stored or inside the range of a gap record. Heartbeats are thinned by the recorder (one a
//! minute is kept), so the sequences of dropped heartbeats show up in `uncovered`: history
//! of a ring that carries heartbeat records can have uncovered sequences that are not losses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ib_stream_ipc::{Record, RecordKind, UNDEF_I64};

use super::StorageError;
use super::binary::{self, BinarySegment};
use super::jsonl::JsonlSegment;
use super::layout::{Format, SegmentFile, Stream, all_segments, hour_start};
use crate::tickjson::{LocalStrings, StringLookup};

/// Something wrong with one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub what: String,
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

/// Validates every format under `root` that has data.
pub fn validate(root: &Path) -> Result<ValidationReport, StorageError> {
    let mut out = ValidationReport::default();
    for format in Format::ALL {
        if root.join(format.dir_name()).is_dir() {
            out.formats.insert(format, validate_format(root, format)?);
        }
    }
    Ok(out)
}

/// The records of one segment, read and checked; file problems go to `problems`.
fn read_segment(seg: &SegmentFile, problems: &mut Vec<Problem>) -> Option<(Vec<Record>, u64)> {
    let mut problem = |what: String| {
        problems.push(Problem {
            path: seg.path.clone(),
            what,
        })
    };
    let bytes = std::fs::metadata(&seg.path).map_or(0, |m| m.len());
    match seg.format {
        Format::Binary => {
            let s = match BinarySegment::read(&seg.path) {
                Ok(s) => s,
                Err(e) => {
                    problem(e.to_string());
                    return None;
                }
            };
            if !s.header.matches(&seg.key) {
                problem(format!(
                    "header {:?} does not match the file name",
                    s.header
                ));
            }
            if s.trailing_bytes > 0 {
                problem(format!("torn tail of {} bytes", s.trailing_bytes));
            }
            if s.crc_trailing_bytes > 0 {
                problem(format!(
                    "torn checksum sidecar ({} bytes)",
                    s.crc_trailing_bytes
                ));
            }
            let check = s.verify();
            if !check.bad_blocks.is_empty() {
                problem(format!(
                    "checksum mismatch in blocks {:?}",
                    check.bad_blocks
                ));
            }
            if check.extra_entries > 0 {
                problem(format!(
                    "{} checksum entries for missing blocks",
                    check.extra_entries
                ));
            }
            match binary::read_strings(&seg.path) {
                Ok(fs) => {
                    if fs.trailing_garbage > 0 {
                        problem(format!(
                            "strings sidecar has {} bad bytes at its end",
                            fs.trailing_garbage
                        ));
                    }
                    if fs.epoch != seg.key.epoch && !fs.strings.is_empty() {
                        problem("strings sidecar of another epoch".into());
                    }
                    for r in &s.records {
                        for id in binary::string_ids(r) {
                            if fs.lookup(id).is_none() {
                                problem(format!(
                                    "seq {}: string id {id} not in the sidecar",
                                    r.seq
                                ));
                            }
                        }
                    }
                }
                Err(e) => problem(e.to_string()),
            }
            Some((s.records, bytes))
        }
        Format::Jsonl => {
            let s = match JsonlSegment::read(&seg.path) {
                Ok(s) => s,
                Err(e) => {
                    problem(e.to_string());
                    return None;
                }
            };
            if s.trailing_bytes > 0 {
                problem(format!("torn last line of {} bytes", s.trailing_bytes));
            }
            match s.decode(&seg.path, &mut LocalStrings::default()) {
                Ok(r) => Some((r, bytes)),
                Err(e) => {
                    problem(e.to_string());
                    None
                }
            }
        }
    }
}

fn validate_format(root: &Path, format: Format) -> Result<FormatReport, StorageError> {
    let mut rep = FormatReport::default();
    let mut seqs: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut gaps: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for seg in all_segments(root, format)? {
        rep.files += 1;
        let Some((records, bytes)) = read_segment(&seg, &mut rep.problems) else {
            continue;
        };
        rep.bytes += bytes;
        rep.records += records.len() as u64;
        let mut prev = 0u64;
        let mut bad = Vec::new();
        for r in &records {
            if r.seq <= prev {
                bad.push(format!("seq {} after {prev}: not increasing", r.seq));
            }
            prev = r.seq;
            if !seg.key.stream.accepts(r) {
                bad.push(format!(
                    "seq {}: kind {} does not belong here",
                    r.seq, r.kind
                ));
            } else if seg.key.stream != Stream::System && r.instrument_id != seg.key.instrument_id {
                bad.push(format!(
                    "seq {}: conId {} in the wrong file",
                    r.seq, r.instrument_id
                ));
            }
            if hour_start(r.ts_recv) != seg.key.hour_start_ns {
                bad.push(format!(
                    "seq {}: ts_recv {} outside the hour",
                    r.seq, r.ts_recv
                ));
            }
            if r.kind() == Some(RecordKind::Gap) && r.body[0] > 0 {
                let to = if r.body[1] == UNDEF_I64 {
                    u64::MAX
                } else {
                    r.body[1] as u64
                };
                gaps.entry(seg.key.epoch)
                    .or_default()
                    .push((r.body[0] as u64, to));
            }
        }
        // One line per kind of problem is enough to find the file.
        bad.truncate(5);
        rep.problems.extend(bad.into_iter().map(|what| Problem {
            path: seg.path.clone(),
            what,
        }));
        seqs.entry(seg.key.epoch)
            .or_default()
            .extend(records.iter().map(|r| r.seq));
    }
    for (epoch, mut s) in seqs {
        s.sort_unstable();
        let mut e = EpochReport {
            records: s.len() as u64,
            first_seq: s.first().copied().unwrap_or(0),
            last_seq: s.last().copied().unwrap_or(0),
            ..EpochReport::default()
        };
        let mut g = gaps.remove(&epoch).unwrap_or_default();
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
        s.dedup_by(|a, b| {
            let dup = a == b;
            if dup {
                e.duplicates += 1;
            }
            dup
        });
        // Walk 1..=last_seq: holes between stored sequences, minus gap ranges.
        let mut expect = 1u64;
        let mut holes = Vec::new();
        for &q in &s {
            if q > expect {
                holes.push((expect, q - 1));
            }
            expect = q + 1;
        }
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
