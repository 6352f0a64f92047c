//! The query library against stores written by the storage writers: time ranges, kinds
//! merged in order, limits and cursor pages, both formats giving the same results, and
//! reading no more than a query needs.

mod storage_query_support;

use ib_stream::storage::Format;
use ib_stream::storage::query::{CHUNK_RECORDS, Cursor, Query, QueryIter, query_all, query_json};
use ib_stream::tickjson::{self, LocalStrings};
use ib_stream_ipc::{Record, RecordKind};
use storage_query_support::*;

const H: i64 = 3_600_000_000_000;

/// What a query must return, computed from the records written: filter, then order by
/// (µs receive time, epoch, seq); as JSON lines.
fn expected(all: &[(u64, Record)], strings: &LocalStrings, q: &Query) -> Vec<Vec<u8>> {
    let kinds: Vec<RecordKind> = if q.kinds.is_empty() {
        RecordKind::ALL
            .into_iter()
            .filter(|k| k.is_market_data())
            .collect()
    } else {
        q.kinds.clone()
    };
    // The record's microsecond overlaps [start, end).
    let (s, e) = (
        q.start_ns.div_euclid(1000),
        q.end_ns.div_euclid(1000) + i64::from(q.end_ns.rem_euclid(1000) != 0),
    );
    let mut v: Vec<(Cursor, &Record)> = all
        .iter()
        .filter(|(_, r)| {
            let us = r.ts_recv.div_euclid(1000);
            let k = r.kind().unwrap();
            us >= s
                && us < e
                && kinds.contains(&k)
                && if k.is_market_data() {
                    r.instrument_id == q.con_id
                } else {
                    r.instrument_id == q.con_id || r.instrument_id == 0
                }
        })
        .map(|(ep, r)| (Cursor::after_record(r, *ep), r))
        .filter(|(c, _)| q.after.is_none_or(|a| *c > a))
        .collect();
    v.sort_by_key(|(c, _)| *c);
    if let Some(l) = q.limit {
        v.truncate(l as usize);
    }
    v.into_iter()
        .map(|(_, r)| {
            let mut o = Vec::new();
            tickjson::encode(r, strings, &mut o);
            o
        })
        .collect()
}

fn run(root: &std::path::Path, q: &Query) -> Vec<Vec<u8>> {
    query_json(root, q).unwrap().map(|r| r.unwrap().1).collect()
}

fn both(root: &std::path::Path, q: &Query) -> Vec<Vec<u8>> {
    let b = run(
        root,
        &Query {
            format: Some(Format::Binary),
            ..q.clone()
        },
    );
    let j = run(
        root,
        &Query {
            format: Some(Format::Jsonl),
            ..q.clone()
        },
    );
    assert_eq!(
        b.len(),
        j.len(),
        "both formats return as many records for {q:?}"
    );
    for (x, y) in b.iter().zip(&j) {
        assert_eq!(
            String::from_utf8_lossy(x),
            String::from_utf8_lossy(y),
            "both formats return the same records"
        );
    }
    b
}

#[test]
fn full_and_time_range_queries_match_what_was_written_in_both_formats() {
    let root = TempRoot::new("range");
    let (all, strings) = standard_store(&root.0);
    let first = all[0].1.ts_recv;
    let last = all.last().unwrap().1.ts_recv;
    let ranges = [
        (i64::MIN, i64::MAX),
        (first, last + 1),
        // Bounds inside a microsecond and inside hours, across the hour boundaries.
        (first + 3_100_000_000 * 100 + 1, first + 2 * H + 17_001),
        (T0 + H, T0 + 2 * H),
        // Across the two epochs.
        (last - 300_000_000_000, last - 100_000_000_000),
        // Empty.
        (last + 1_000, last + 2_000),
    ];
    let mut nonempty = 0;
    for (s, e) in ranges {
        let q = Query::new(CID, s, e);
        let got = both(&root.0, &q);
        let want = expected(&all, &strings, &q);
        assert_eq!(got, want, "range {s}..{e}");
        if !got.is_empty() {
            nonempty += 1;
        }
    }
    assert_eq!(
        nonempty, 5,
        "the ranges select records (the test exercises something)"
    );
}

#[test]
fn kinds_are_merged_in_time_order_and_only_the_asked_kinds_come_back() {
    let root = TempRoot::new("kinds");
    let (all, strings) = standard_store(&root.0);
    for kinds in [
        vec![RecordKind::TbtBidAsk],
        vec![RecordKind::TbtLast, RecordKind::TbtMidPoint],
        vec![
            RecordKind::TbtAllLast,
            RecordKind::TbtBidAsk,
            RecordKind::Gap,
        ],
        vec![RecordKind::Gap],
    ] {
        let q = Query {
            kinds: kinds.clone(),
            ..Query::new(CID, i64::MIN, i64::MAX)
        };
        let got = both(&root.0, &q);
        assert_eq!(got, expected(&all, &strings, &q), "{kinds:?}");
        assert!(!got.is_empty(), "{kinds:?}");
        let (recs, _) = query_all(&root.0, &q).unwrap();
        assert!(recs.iter().all(|r| kinds.contains(&r.kind().unwrap())));
        assert!(
            recs.windows(2).all(|w| w[0].ts_recv <= w[1].ts_recv),
            "merged in receive-time order"
        );
    }
    // The other instrument's records are its own.
    let q = Query::new(OTHER_CID, i64::MIN, i64::MAX);
    let got = both(&root.0, &q);
    assert_eq!(got, expected(&all, &strings, &q));
    assert!(!got.is_empty());
}

#[test]
fn pages_of_a_limited_query_resumed_by_cursor_equal_the_full_query() {
    let root = TempRoot::new("pages");
    let (all, strings) = standard_store(&root.0);
    for format in Format::ALL {
        let base = Query {
            format: Some(format),
            kinds: vec![RecordKind::TbtBidAsk, RecordKind::TbtLast, RecordKind::Gap],
            ..Query::new(CID, T0 + H / 2, i64::MAX)
        };
        let full = run(&root.0, &base);
        assert_eq!(full, expected(&all, &strings, &base));
        let mut pages = Vec::new();
        let mut after: Option<Cursor> = None;
        let mut n_pages = 0;
        loop {
            let q = Query {
                limit: Some(97),
                // Through its text form, as a web client would send it back.
                after: after.map(|c| c.to_string().parse().unwrap()),
                ..base.clone()
            };
            let mut it = QueryIter::new(&root.0, &q).unwrap();
            let mut page = Vec::new();
            let mut line = Vec::new();
            while it.next_json(&mut line).unwrap().is_some() {
                page.push(std::mem::take(&mut line));
            }
            assert!(page.len() <= 97);
            if page.is_empty() {
                break;
            }
            n_pages += 1;
            after = it.cursor();
            pages.extend(page);
        }
        assert!(n_pages > 10, "{format:?}: several pages");
        assert_eq!(
            pages, full,
            "{format:?}: pages concatenated equal the full query"
        );
    }
}

#[test]
fn a_small_query_in_a_large_store_reads_only_what_it_needs() {
    let root = TempRoot::new("bounded");
    let mut strings = LocalStrings::default();
    // 240,000 records of one epoch over 40 minutes (10 ms apart): about 144,000 quotes in
    // the bid_ask file.
    let recs = epoch_records(240_000, T0, 10_000_000, &mut strings, false);
    write_store(&root.0, EPOCH_A, &recs, &strings);
    let mid = recs[150_000].ts_recv;
    for format in Format::ALL {
        let q = Query {
            format: Some(format),
            kinds: vec![RecordKind::TbtBidAsk],
            limit: Some(10),
            ..Query::new(CID, mid, i64::MAX)
        };
        let mut it = QueryIter::new(&root.0, &q).unwrap();
        let mut got = Vec::new();
        while let Some(r) = it.next_record().unwrap() {
            got.push(r);
        }
        assert_eq!(got.len(), 10);
        assert!(got[0].ts_recv.div_euclid(1000) >= mid.div_euclid(1000));
        let st = it.stats();
        assert_eq!(st.files_opened, 1);
        assert_eq!(st.records_returned, 10);
        match format {
            // Binary search, then one chunk.
            Format::Binary => assert!(st.records_decoded <= CHUNK_RECORDS as u64, "{st:?}"),
            // Lines before the start are skipped by their `st` prefix, not decoded.
            Format::Jsonl => assert!(st.records_decoded <= 10, "{st:?}"),
        }
    }
    // A time range near the end reads near the end only.
    let q = Query {
        format: Some(Format::Binary),
        ..Query::new(CID, recs[239_000].ts_recv, recs[239_500].ts_recv)
    };
    let mut it = QueryIter::new(&root.0, &q).unwrap();
    let n = it.by_ref().count();
    assert!(n > 300, "{n}");
    assert!(
        it.stats().records_decoded < 3 * CHUNK_RECORDS as u64,
        "{:?}",
        it.stats()
    );
}

#[test]
fn bad_cursors_and_empty_roots_are_clear() {
    assert!("12-xyz-3".parse::<Cursor>().is_err());
    let root = TempRoot::new("empty");
    let q = Query::new(CID, i64::MIN, i64::MAX);
    assert_eq!(run(&root.0, &q), Vec::<Vec<u8>>::new());
}

#[test]
fn system_records_written_out_of_time_order_still_page_exactly() {
    let root = TempRoot::new("system");
    let strings = LocalStrings::default();
    // A recorder gap record carries the time it was written: later than records after it.
    let mut recs = Vec::new();
    let mut gap = Record::new(RecordKind::Gap);
    gap.seq = 50;
    gap.ts_recv = T0 + 100_000_000_000;
    gap.tick_type = ib_stream_ipc::GapReason::ReaderOverrun as u8;
    gap.body = [50, 59, T0, T0 + 1];
    recs.push(gap);
    for (seq, s) in [(60u64, 10i64), (70, 20), (80, 200)] {
        let mut c = Record::new(RecordKind::Connection);
        c.seq = seq;
        c.ts_recv = T0 + s * 1_000_000_000 + 17;
        c.tick_type = ib_stream_ipc::ConnState::Connected as u8;
        c.body = [200, 7, 0, 0];
        recs.push(c);
    }
    write_store(&root.0, EPOCH_A, &recs, &strings);
    let all: Vec<(u64, Record)> = recs.iter().map(|r| (EPOCH_A, *r)).collect();
    let base = Query {
        kinds: vec![RecordKind::Gap, RecordKind::Connection],
        ..Query::new(CID, i64::MIN, i64::MAX)
    };
    let full = both(&root.0, &base);
    assert_eq!(full, expected(&all, &strings, &base));
    let seqs: Vec<u64> = query_all(&root.0, &base)
        .unwrap()
        .0
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, vec![60, 70, 50, 80], "by receive time");
    for format in Format::ALL {
        let mut after = None;
        let mut pages = Vec::new();
        loop {
            let q = Query {
                limit: Some(1),
                after,
                format: Some(format),
                ..base.clone()
            };
            let mut it = QueryIter::new(&root.0, &q).unwrap();
            let mut line = Vec::new();
            if it.next_json(&mut line).unwrap().is_none() {
                break;
            }
            pages.push(line);
            after = it.cursor();
        }
        assert_eq!(pages, full, "{format:?}");
    }
}
