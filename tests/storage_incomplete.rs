//! History read while it is written: a file that ends inside its header, a block, a record
//! or a line is read up to that incomplete tail, which is the end of what is stored, never
//! an error; through the query library, the by-sequence reader and the web server's history
//! source. Checked at every byte offset of the last block (and line), and against a real
//! writer thread appending while a reader reads again and again.

mod storage_query_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ib_stream::serve::HistorySource;
use ib_stream::serve::history::{HistoryQuery, SeqItem, SeqQuery};
use ib_stream::serve::params::TickType;
use ib_stream::serve::storage_history::StorageHistory;
use ib_stream::storage::binary::{BinarySegmentWriter, sidecar_path};
use ib_stream::storage::jsonl::JsonlSegmentWriter;
use ib_stream::storage::layout::HOUR_NS;
use ib_stream::storage::query::seq::{SeqIter, SeqRange};
use ib_stream::storage::query::{Query, QueryIter};
use ib_stream::storage::{Format, SegmentKey};
use ib_stream::tickjson::{self, LocalStrings, StringIntern};
use ib_stream_ipc::{Record, Trade};
use storage_query_support::{CID, T0, TempRoot};

const EPOCH: u64 = 0x77;
const B: u64 = 256;

/// Trades 1..=n, 1 ms apart from `start`, each with an exchange string (new ones appear
/// along the way, so the strings sidecar grows while records are written).
fn trades(n: u64, start: i64, strings: &mut LocalStrings) -> Vec<Record> {
    (1..=n)
        .map(|seq| {
            let ex = strings.intern(format!("EX{}", seq / 50).as_bytes());
            let mut r = Record::trade(
                false,
                CID,
                start,
                Trade {
                    price: 100_000_000_000 + seq as i64 * 250_000_000,
                    size: 100_000_000,
                    exchange_id: ex,
                    conditions_id: 0,
                },
            );
            r.seq = seq;
            r.ts_recv = start + seq as i64 * 1_000_000;
            r
        })
        .collect()
}

/// Writes `recs` (one hour) in both formats; `close` writes the partial block's checksum.
fn write(root: &Path, recs: &[Record], strings: &LocalStrings, close: bool) -> (PathBuf, PathBuf) {
    let key = SegmentKey::for_record(&recs[0], EPOCH).unwrap();
    let mut b = BinarySegmentWriter::open(root, key, T0).unwrap();
    let mut j = JsonlSegmentWriter::open(root, key).unwrap();
    for r in recs {
        b.push(r, strings).unwrap();
        j.push(r, strings);
    }
    b.flush().unwrap();
    j.flush().unwrap();
    if close {
        b.close(false).unwrap();
    }
    j.close(false).unwrap();
    (
        key.path(root, Format::Binary),
        key.path(root, Format::Jsonl),
    )
}

fn json_of(r: &Record, s: &dyn tickjson::StringLookup) -> String {
    let mut out = Vec::new();
    tickjson::encode(r, s, &mut out);
    String::from_utf8(out).unwrap()
}

/// Everything of CID by time, as `(seq, price)`; panics on any error.
fn keys_by_time(root: &Path, format: Format) -> Vec<(u64, i64)> {
    let mut q = Query::new(CID, 0, i64::MAX);
    q.format = Some(format);
    let mut it = QueryIter::new(root, &q).unwrap();
    let mut out = Vec::new();
    while let Some(r) = it
        .next_record()
        .unwrap_or_else(|e| panic!("{format:?}: {e}"))
    {
        out.push((r.seq, r.body[0]));
    }
    out
}

/// Everything of CID by sequence, as `(seq, price)`; panics on any error.
fn keys_by_seq(root: &Path, format: Format) -> Vec<(u64, i64)> {
    let mut r = SeqRange::new(CID, EPOCH, 1, u64::MAX);
    r.format = Some(format);
    let mut it = SeqIter::new(root, &r).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = it
        .next_record()
        .unwrap_or_else(|e| panic!("{format:?}: {e}"))
    {
        out.push((rec.seq, rec.body[0]));
    }
    out
}

fn keys(recs: &[Record]) -> Vec<(u64, i64)> {
    recs.iter().map(|r| (r.seq, r.body[0])).collect()
}

/// Everything of CID by time, as JSON lines; panics on any error.
fn by_time(root: &Path, format: Format) -> Vec<String> {
    let mut q = Query::new(CID, 0, i64::MAX);
    q.format = Some(format);
    let mut it = QueryIter::new(root, &q).unwrap();
    let mut out = Vec::new();
    while let Some(r) = it
        .next_record()
        .unwrap_or_else(|e| panic!("{format:?}: {e}"))
    {
        out.push(json_of(&r, it.strings()));
    }
    out
}

/// Everything of CID by sequence, as JSON lines; panics on any error.
fn by_seq(root: &Path, format: Format) -> Vec<String> {
    let mut r = SeqRange::new(CID, EPOCH, 1, u64::MAX);
    r.format = Some(format);
    let mut it = SeqIter::new(root, &r).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = it
        .next_record()
        .unwrap_or_else(|e| panic!("{format:?}: {e}"))
    {
        out.push(json_of(&rec, it.strings()));
    }
    out
}

/// The web server's history source, by time and by sequence (binary is what it reads).
fn served(root: &Path) -> (Vec<String>, Vec<String>) {
    let h = StorageHistory::new(root);
    let page = h
        .query(&HistoryQuery {
            con_id: CID,
            tick_types: vec![TickType::Last],
            start_us: None,
            end_us: None,
            limit: 100_000,
            cursor: None,
        })
        .expect("history query");
    let seq = h
        .by_seq(&SeqQuery {
            epoch: EPOCH,
            con_id: CID,
            tick_types: vec![TickType::Last],
            first_seq: 1,
            last_seq: u64::MAX,
            start_ns: None,
            live_epoch: false,
            limit: 100_000,
        })
        .expect("by sequence")
        .expect("answers by sequence");
    (
        page.ticks
            .iter()
            .map(|t| String::from_utf8(t.to_vec()).unwrap())
            .collect(),
        seq.items
            .iter()
            .map(|i| match i {
                SeqItem::Tick { json, .. } => String::from_utf8(json.to_vec()).unwrap(),
                SeqItem::Gap { info, .. } => panic!("unexpected gap {info:?}"),
            })
            .collect(),
    )
}

/// Cuts the binary file of a store of `n` records at the byte offsets `sample` keeps of
/// its header and its last block (from the end down: each cut shortens the file a little
/// more); each read returns exactly `expect(cut)` records.
fn cut_binary(n: u64, close: bool, sample: impl Fn(u64) -> bool, expect: impl Fn(u64) -> u64) {
    let root = TempRoot::new("cut-bin");
    let mut strings = LocalStrings::default();
    let recs = trades(n, T0, &mut strings);
    let (bin, _) = write(&root.0, &recs, &strings, close);
    let want: Vec<String> = recs.iter().map(|r| json_of(r, &strings)).collect();
    let want_keys = keys(&recs);
    let len = std::fs::metadata(&bin).unwrap().len();
    let last_block = 64 + (n - 1) / B * B * 64;
    let file = std::fs::OpenOptions::new().write(true).open(&bin).unwrap();
    let offsets = (last_block..=len).rev().chain((0..=64u64).rev());
    let mut checked = 0;
    for cut in offsets.filter(|c| *c <= 64 || sample(*c)) {
        file.set_len(cut).unwrap();
        let k = expect(cut) as usize;
        assert_eq!(
            keys_by_time(&root.0, Format::Binary),
            want_keys[..k],
            "cut at {cut}"
        );
        assert_eq!(
            keys_by_seq(&root.0, Format::Binary),
            want_keys[..k],
            "cut at {cut}"
        );
        if cut % 509 == 0 || cut == len {
            let (t, s) = served(&root.0);
            assert_eq!(
                (t.as_slice(), s.as_slice()),
                (&want[..k], &want[..k]),
                "cut at {cut}"
            );
        }
        checked += 1;
    }
    assert!(checked > 64);
}

fn every(_: u64) -> bool {
    true
}

fn whole(cut: u64) -> u64 {
    cut.saturating_sub(64) / 64
}

#[test]
fn a_closed_file_cut_inside_its_last_block_ends_before_that_block() {
    // 600 records: blocks 0 and 1 full, block 2 holds 88 and has its checksum (closed).
    // Cut inside it, the block no longer matches its checksum: it is the incomplete tail.
    cut_binary(600, true, every, |cut| {
        if cut >= 64 + 600 * 64 {
            600
        } else if cut < 64 {
            0
        } else {
            512.min(whole(cut))
        }
    });
}

#[test]
fn a_full_last_block_cut_short_ends_before_that_block() {
    // Every offset of its first and last records and around each record boundary, and
    // every 7th byte between (a full block is 16 KiB).
    let near = |c: u64| {
        let r = (c - 64) % 64;
        !(64 + 257 * 64..=64 + 511 * 64).contains(&c) || r <= 1 || r == 63 || c.is_multiple_of(7)
    };
    cut_binary(512, true, near, |cut| {
        if cut >= 64 + 512 * 64 {
            512
        } else {
            256.min(whole(cut))
        }
    });
}

#[test]
fn an_open_file_is_read_up_to_its_last_whole_record() {
    // Not closed: the last 88 records have no checksum yet (the recorder's open tail).
    let near = |c: u64| {
        let r = (c - 64) % 64;
        r <= 1 || r == 63 || c.is_multiple_of(5)
    };
    cut_binary(600, false, near, whole);
}

#[test]
fn a_jsonl_file_ending_inside_a_line_is_read_up_to_its_last_whole_line() {
    let root = TempRoot::new("cut-jsonl");
    let mut strings = LocalStrings::default();
    let recs = trades(300, T0, &mut strings);
    let (_, jsonl) = write(&root.0, &recs, &strings, true);
    let want = keys(&recs);
    let full = std::fs::read(&jsonl).unwrap();
    // Every offset of the last two lines.
    let start = full[..full.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .and_then(|p| full[..p].iter().rposition(|&b| b == b'\n'))
        .unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&jsonl)
        .unwrap();
    for cut in (start..=full.len()).rev().chain((0..64).rev()) {
        file.set_len(cut as u64).unwrap();
        let k = full[..cut].iter().filter(|&&b| b == b'\n').count();
        assert_eq!(
            keys_by_time(&root.0, Format::Jsonl),
            want[..k],
            "cut at {cut}"
        );
        assert_eq!(
            keys_by_seq(&root.0, Format::Jsonl),
            want[..k],
            "cut at {cut}"
        );
    }
}

#[test]
fn a_strings_sidecar_without_its_header_yet_is_no_error() {
    let root = TempRoot::new("cut-strings");
    let mut strings = LocalStrings::default();
    let recs = trades(10, T0, &mut strings);
    let (bin, _) = write(&root.0, &recs, &strings, true);
    // The recorder creates the data file and the sidecar, then writes them: seen before
    // the write, both are short.
    let side = sidecar_path(&bin, "strings");
    for cut in 0..16 {
        std::fs::write(&bin, &std::fs::read(&bin).unwrap()[..64]).unwrap();
        std::fs::write(&side, vec![0u8; cut]).unwrap();
        assert!(by_time(&root.0, Format::Binary).is_empty());
        assert!(by_seq(&root.0, Format::Binary).is_empty());
    }
}

/// A writer thread appends (flush windows, reopens, hour rollovers) while this thread reads
/// the store again and again: every read succeeds and returns a prefix of what was written,
/// record for record; the last one, after the writer is done, all of it.
#[test]
fn reads_while_a_writer_appends_see_a_prefix_and_never_fail() {
    let root = TempRoot::new("concurrent");
    let mut strings = LocalStrings::default();
    let n = 6000u64;
    // Three hours: 2000 records in each.
    let mut recs = trades(n, T0, &mut strings);
    for r in &mut recs {
        r.ts_recv = T0 + (r.seq as i64 - 1) / 2000 * HOUR_NS + r.seq as i64 * 1_000_000;
    }
    let want: Vec<String> = recs.iter().map(|r| json_of(r, &strings)).collect();
    let done = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    // Full read passes done by the reader: the writer waits for two after creating files,
    // so that a read meets files created and not written yet (no timing involved).
    let passes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (root, recs, strings, done, written, passes) = (
            root.0.clone(),
            recs.clone(),
            strings.clone(),
            done.clone(),
            written.clone(),
            passes.clone(),
        );
        std::thread::spawn(move || {
            let mut cur: Option<(SegmentKey, BinarySegmentWriter, JsonlSegmentWriter)> = None;
            for (i, r) in recs.iter().enumerate() {
                let key = SegmentKey::for_record(r, EPOCH).unwrap();
                // A new hour closes the old files; every 700 records the files are closed
                // and reopened (a restarted recorder: the partial block's checksum is
                // written, then dropped when it reopens and appends).
                if cur.as_ref().is_some_and(|(k, _, _)| *k != key) || i % 700 == 699 {
                    let (_, b, j) = cur.take().unwrap();
                    b.close(false).unwrap();
                    j.close(false).unwrap();
                }
                if cur.is_none() {
                    cur = Some((
                        key,
                        BinarySegmentWriter::open(&root, key, T0).unwrap(),
                        JsonlSegmentWriter::open(&root, key).unwrap(),
                    ));
                    let seen = passes.load(Ordering::Acquire);
                    while passes.load(Ordering::Acquire) < seen + 2 {
                        std::thread::yield_now();
                    }
                }
                let (_, b, j) = cur.as_mut().unwrap();
                b.push(r, &strings).unwrap();
                j.push(r, &strings);
                if i % 37 == 36 {
                    b.flush().unwrap();
                    b.commit_window();
                    j.flush().unwrap();
                    j.commit_window();
                    written.store(i as u64 + 1, Ordering::Release);
                    // Let the reader in between windows on this small machine.
                    std::thread::yield_now();
                }
            }
            let (_, b, j) = cur.take().unwrap();
            b.close(false).unwrap();
            j.close(false).unwrap();
            written.store(recs.len() as u64, Ordering::Release);
            done.store(true, Ordering::Release);
        })
    };
    let mut reads = 0u64;
    let mut longest = 0usize;
    loop {
        let finished = done.load(Ordering::Acquire);
        let floor = written.load(Ordering::Acquire) as usize;
        for format in [Format::Binary, Format::Jsonl] {
            for got in [by_time(&root.0, format), by_seq(&root.0, format)] {
                assert!(got.len() <= want.len());
                assert_eq!(got, want[..got.len()], "{format:?}: not a prefix");
                assert!(got.len() >= floor, "{format:?}: {} < {floor}", got.len());
                longest = longest.max(got.len());
            }
        }
        reads += 1;
        passes.fetch_add(1, Ordering::Release);
        if finished {
            break;
        }
        assert!(reads < 1_000_000, "the writer never finishes");
    }
    writer.join().unwrap();
    assert_eq!(longest, want.len());
    assert!(reads > 1, "the reader read while the writer wrote");
}
