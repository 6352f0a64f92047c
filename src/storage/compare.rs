//! `storage compare`: whether two storage roots hold the same market data, hour by hour, so a
//! migration (a copy, a new format, a new recorder) is shown to have kept every tick.
//!
//! Each root is read through the query API ([`QueryIter`]), never by file: whatever the
//! formats and segment files are, two roots compare equal when they return the same records.
//! Per conId, kind and UTC hour (of the receive time) each side is summarised: the record
//! count, the first and last (epoch, sequence) and receive time, and a content hash over each
//! record's epoch and its JSON line (the web API's encoding: strings resolved, times to the
//! microsecond, so it does not depend on the format or on string-table ids). An hour that
//! differs is read again on both sides to name its first differing record.
//!
//! Only market data is compared: gap and connection records describe the recording of one
//! root (a copy resumed elsewhere records its own) and are checked by `storage validate`.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::path::Path;

use ib_stream_ipc::Record;

use super::StorageError;
use super::layout::{Format, HOUR_NS, Stream, all_segments, hour_start};
use super::query::{Query, QueryError, QueryIter, default_format};

/// One conId, kind and UTC hour.
pub type HourKey = (u32, Stream, i64);

/// A record's place: its writer epoch, sequence and receive time (ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Ring writer epoch.
    pub epoch: u64,
    /// Sequence within the epoch.
    pub seq: u64,
    /// Receive time, ns since the Unix epoch.
    pub ts_recv: i64,
}

/// What one root holds of one [`HourKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HourSummary {
    /// Records.
    pub count: u64,
    /// The first record (in query order).
    pub first: Position,
    /// The last record.
    pub last: Position,
    /// Hash of every record's epoch and JSON line, in order.
    pub hash: u64,
}

/// How one hour compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    /// The old root holds the hour; the new one none of it.
    MissingInNew,
    /// The new root holds an hour the old one does not.
    ExtraInNew,
    /// Both hold it, with different records; the first that differs, described.
    Differs(String),
}

/// One row of a comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Which hour.
    pub key: HourKey,
    /// The old root's summary, if it has the hour.
    pub old: Option<HourSummary>,
    /// The new root's.
    pub new: Option<HourSummary>,
    /// `None` when equal.
    pub difference: Option<Difference>,
}

/// A whole comparison.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Every hour either root holds, in key order.
    pub rows: Vec<Row>,
    /// ConIds the old root holds and the new one does not hold at all.
    pub missing_contracts: Vec<u32>,
    /// ConIds only the new root holds.
    pub extra_contracts: Vec<u32>,
}

impl Comparison {
    /// True when both roots hold the same records.
    pub fn equal(&self) -> bool {
        self.rows.iter().all(|r| r.difference.is_none())
    }

    /// Records in the old and the new root.
    pub fn totals(&self) -> (u64, u64) {
        self.rows.iter().fold((0, 0), |(o, n), r| {
            (
                o + r.old.map_or(0, |s| s.count),
                n + r.new.map_or(0, |s| s.count),
            )
        })
    }
}

/// Why a comparison could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// A root is not a directory.
    #[error("{0}: not a storage root (no such directory)")]
    NoRoot(std::path::PathBuf),
    /// Listing a root failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Reading failed, or met damage: a root with damaged history cannot be vouched for
    /// (`storage validate` names it).
    #[error("{root}: {source}")]
    Query {
        /// The root.
        root: std::path::PathBuf,
        /// What failed.
        #[source]
        source: QueryError,
    },
}

/// Options of [`compare`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CompareOptions {
    /// The format to read in both roots; `None`: each root's default (binary when present).
    pub format: Option<Format>,
}

/// The (conId, kind) streams and the hours of market data a root holds, from its listing.
fn streams_of(
    root: &Path,
    format: Format,
) -> Result<BTreeMap<(u32, Stream), BTreeSet<i64>>, StorageError> {
    let mut out: BTreeMap<(u32, Stream), BTreeSet<i64>> = BTreeMap::new();
    for seg in all_segments(root, format)? {
        if let Stream::Kind(_) = seg.key.stream {
            out.entry((seg.key.instrument_id, seg.key.stream))
                .or_default()
                .insert(seg.key.hour_start_ns);
        }
    }
    Ok(out)
}

/// A query of one stream of a root over `[start_ns, end_ns)`.
fn query_of(
    root: &Path,
    format: Format,
    (con_id, stream): (u32, Stream),
    start_ns: i64,
    end_ns: i64,
) -> Result<QueryIter, CompareError> {
    let mut q = Query::new(con_id, start_ns, end_ns);
    if let Stream::Kind(k) = stream {
        q.kinds = vec![k];
    }
    q.format = Some(format);
    QueryIter::new(root, &q).map_err(|source| CompareError::Query {
        root: root.to_path_buf(),
        source,
    })
}

/// The next record of `it` with its epoch and JSON line.
fn next_line(
    root: &Path,
    it: &mut QueryIter,
    line: &mut Vec<u8>,
) -> Result<Option<(Record, u64)>, CompareError> {
    line.clear();
    match it.next_json(line) {
        Ok(Some(r)) => Ok(Some((r, it.cursor().map_or(0, |c| c.epoch)))),
        Ok(None) => Ok(None),
        Err(source) => Err(CompareError::Query {
            root: root.to_path_buf(),
            source,
        }),
    }
}

fn content_hasher() -> std::hash::DefaultHasher {
    // SipHash with fixed keys: the same in both summaries of one run, which is all a
    // comparison needs (the printed value is not meant to be kept across versions).
    std::hash::DefaultHasher::new()
}

/// Summaries of every hour of one stream of a root; `hour_done` is called as each hour ends.
fn summarise_stream(
    root: &Path,
    format: Format,
    stream: (u32, Stream),
    out: &mut BTreeMap<HourKey, HourSummary>,
    hour_done: &mut dyn FnMut(),
) -> Result<(), CompareError> {
    let mut it = query_of(root, format, stream, 0, i64::MAX)?;
    let mut line = Vec::with_capacity(256);
    let mut cur: Option<(i64, HourSummary, std::hash::DefaultHasher)> = None;
    let mut finish = |cur: Option<(i64, HourSummary, std::hash::DefaultHasher)>,
                      out: &mut BTreeMap<HourKey, HourSummary>| {
        if let Some((hour, mut s, h)) = cur {
            s.hash = h.finish();
            out.insert((stream.0, stream.1, hour), s);
            hour_done();
        }
    };
    while let Some((rec, epoch)) = next_line(root, &mut it, &mut line)? {
        let hour = hour_start(rec.ts_recv);
        let pos = Position {
            epoch,
            seq: rec.seq,
            ts_recv: rec.ts_recv,
        };
        if cur.as_ref().is_some_and(|(h, _, _)| *h != hour) {
            finish(cur.take(), out);
        }
        let (_, s, h) = cur.get_or_insert_with(|| {
            (
                hour,
                HourSummary {
                    count: 0,
                    first: pos,
                    last: pos,
                    hash: 0,
                },
                content_hasher(),
            )
        });
        s.count += 1;
        s.last = pos;
        h.write_u64(epoch);
        h.write(&line);
    }
    finish(cur.take(), out);
    Ok(())
}

/// The first record that differs between the two roots in one hour, described.
fn first_difference(
    old: (&Path, Format),
    new: (&Path, Format),
    key: HourKey,
) -> Result<String, CompareError> {
    let stream = (key.0, key.1);
    let mut a = query_of(old.0, old.1, stream, key.2, key.2 + HOUR_NS)?;
    let mut b = query_of(new.0, new.1, stream, key.2, key.2 + HOUR_NS)?;
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    let mut n = 0u64;
    loop {
        let ra = next_line(old.0, &mut a, &mut la)?;
        let rb = next_line(new.0, &mut b, &mut lb)?;
        n += 1;
        match (ra, rb) {
            (None, None) => return Ok("same records (hash collision?)".into()),
            (Some((r, e)), None) => {
                return Ok(format!(
                    "record #{n} (epoch {e:016x} seq {}) and those after it are missing in new",
                    r.seq
                ));
            }
            (None, Some((r, e))) => {
                return Ok(format!(
                    "new has more records from #{n} (epoch {e:016x} seq {})",
                    r.seq
                ));
            }
            (Some((ra, ea)), Some((rb, eb))) => {
                if ea != eb || la != lb {
                    return Ok(format!(
                        "record #{n} differs: old epoch {ea:016x} seq {} {}; new epoch {eb:016x} seq {} {}",
                        ra.seq,
                        String::from_utf8_lossy(&la),
                        rb.seq,
                        String::from_utf8_lossy(&lb)
                    ));
                }
            }
        }
    }
}

/// Compares the market data of `old` and `new`. `progress(done, total)` counts hours summarised
/// (of both roots together).
pub fn compare(
    old: &Path,
    new: &Path,
    opts: CompareOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Comparison, CompareError> {
    for root in [old, new] {
        if !root.is_dir() {
            return Err(CompareError::NoRoot(root.to_path_buf()));
        }
    }
    let fmt_old = opts.format.unwrap_or_else(|| default_format(old));
    let fmt_new = opts.format.unwrap_or_else(|| default_format(new));
    let streams_old = streams_of(old, fmt_old)?;
    let streams_new = streams_of(new, fmt_new)?;
    let total: u64 = streams_old
        .values()
        .chain(streams_new.values())
        .map(|h| h.len() as u64)
        .sum();
    let mut done = 0u64;
    progress(0, total);
    let mut tick = || {
        done += 1;
        progress(done.min(total), total);
    };
    let mut sum_old = BTreeMap::new();
    let mut sum_new = BTreeMap::new();
    for s in streams_old.keys() {
        summarise_stream(old, fmt_old, *s, &mut sum_old, &mut tick)?;
    }
    for s in streams_new.keys() {
        summarise_stream(new, fmt_new, *s, &mut sum_new, &mut tick)?;
    }

    let contracts = |m: &BTreeMap<(u32, Stream), BTreeSet<i64>>| {
        m.keys().map(|(c, _)| *c).collect::<BTreeSet<u32>>()
    };
    let (c_old, c_new) = (contracts(&streams_old), contracts(&streams_new));
    let keys: BTreeSet<HourKey> = sum_old.keys().chain(sum_new.keys()).copied().collect();
    let mut rows = Vec::with_capacity(keys.len());
    for key in keys {
        let (o, n) = (sum_old.get(&key).copied(), sum_new.get(&key).copied());
        let difference = match (o, n) {
            (Some(_), None) => Some(Difference::MissingInNew),
            (None, Some(_)) => Some(Difference::ExtraInNew),
            (Some(a), Some(b)) if a == b => None,
            (Some(_), Some(_)) => Some(Difference::Differs(first_difference(
                (old, fmt_old),
                (new, fmt_new),
                key,
            )?)),
            (None, None) => None,
        };
        rows.push(Row {
            key,
            old: o,
            new: n,
            difference,
        });
    }
    Ok(Comparison {
        rows,
        missing_contracts: c_old.difference(&c_new).copied().collect(),
        extra_contracts: c_new.difference(&c_old).copied().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::import::write_records;
    use ib_stream_ipc::RecordKind;

    fn tick(seq: u64, con: u32, ts: i64, price: i64) -> Record {
        let mut r = Record::new(RecordKind::TbtMidPoint);
        r.seq = seq;
        r.ts_recv = ts;
        r.instrument_id = con;
        r.body[0] = price;
        r
    }

    #[test]
    fn equal_roots_compare_equal_in_either_format_and_a_changed_price_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let h0 = 1_765_000_000 / 3600 * 3600 * 1_000_000_000;
        let recs: Vec<Record> = (1..=30)
            .map(|i| tick(i, 7, h0 + (i as i64) * 300_000_000_000, i as i64 * 1000))
            .collect();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write_records(&a, 0xab, &recs, &[Format::Binary, Format::Jsonl]).unwrap();
        write_records(&b, 0xab, &recs, &[Format::Jsonl]).unwrap();
        let cmp = compare(&a, &b, CompareOptions::default(), &mut |_, _| {}).unwrap();
        assert!(cmp.equal(), "{cmp:?}");
        assert_eq!(cmp.totals(), (30, 30));
        assert_eq!(cmp.rows.len(), 3, "30 ticks 5 minutes apart span 3 hours");
        let first = cmp.rows[0].old.unwrap();
        assert_eq!((first.first.seq, first.first.epoch), (1, 0xab));

        let mut changed = recs.clone();
        changed[14].body[0] += 1;
        let c = dir.path().join("c");
        write_records(&c, 0xab, &changed, &[Format::Binary]).unwrap();
        let cmp = compare(&a, &c, CompareOptions::default(), &mut |_, _| {}).unwrap();
        assert!(!cmp.equal());
        let bad: Vec<_> = cmp.rows.iter().filter(|r| r.difference.is_some()).collect();
        assert_eq!(bad.len(), 1, "{cmp:?}");
        match &bad[0].difference {
            Some(Difference::Differs(d)) => assert!(d.contains("seq 15"), "{d}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(bad[0].old.unwrap().count, bad[0].new.unwrap().count);
    }
}
