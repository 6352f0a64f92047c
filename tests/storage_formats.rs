//! The two formats against each other, in process: whatever records go in, the binary segment
//! gives them back exactly, renders to its JSONL twin byte for byte, and every JSONL line
//! decodes and re-encodes to itself. Plus rollback, reopen and corruption detection.

use std::path::PathBuf;

use ib_stream::storage::binary::{
    BinarySegment, BinarySegmentWriter, segment_as_jsonl, sidecar_path,
};
use ib_stream::storage::jsonl::{JsonlSegment, JsonlSegmentWriter};
use ib_stream::storage::layout::{Format, SegmentKey, Stream};
use ib_stream::storage::validate::validate;
use ib_stream::tickjson::{self, LocalStrings, StringIntern};
use ib_stream_ipc::{Record, RecordKind, flags};
use proptest::prelude::*;

fn tmp(name: &str) -> PathBuf {
    let nanos = ib_stream::storage::now_ns();
    let d = std::env::temp_dir().join(format!("ibs-fmt-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

const HOUR: i64 = 3_600_000_000_000;
const BASE: i64 = 1_763_798_400_000_000_000; // 2025-11-22T08:00:00Z

/// A record of `kind` with only the fields its JSON form carries set.
fn record(
    kind: RecordKind,
    seq: u64,
    w: [i64; 4],
    ids: [u32; 2],
    f: u16,
    tt: u8,
    dts: i64,
) -> Record {
    let common = f & (flags::DELAYED | flags::FROZEN | flags::SNAPSHOT | flags::STALE);
    let mut r = Record::new(kind);
    r.seq = seq;
    r.ts_recv = BASE + (seq as i64) * 1_000 + dts.rem_euclid(1_000);
    r.ts_event = if dts % 3 == 0 {
        ib_stream_ipc::UNDEF_I64
    } else {
        r.ts_recv - dts.rem_euclid(1_000_000)
    };
    r.instrument_id = 265_598;
    match kind {
        RecordKind::TbtLast | RecordKind::TbtAllLast => {
            r.body = [w[0], w[1], i64::from(ids[0]) | (i64::from(ids[1]) << 32), 0];
            r.flags = common | (f & (flags::PAST_LIMIT | flags::UNREPORTED));
        }
        RecordKind::TbtBidAsk => {
            r.body = w;
            r.flags = common | (f & (flags::BID_PAST_LOW | flags::ASK_PAST_HIGH));
        }
        RecordKind::TbtMidPoint => {
            r.body = [w[0], 0, 0, 0];
            r.flags = common;
        }
        RecordKind::L1Price => {
            r.body = [w[0], w[1], 0, 0];
            r.tick_type = tt;
            r.flags =
                common | (f & (flags::CAN_AUTO_EXECUTE | flags::L1_PAST_LIMIT | flags::PRE_OPEN));
        }
        RecordKind::L1Size | RecordKind::L1Generic => {
            r.body = [w[0], 0, 0, 0];
            r.tick_type = tt;
            r.flags = common;
        }
        RecordKind::L1String => {
            r.body = [i64::from(ids[0]), 0, 0, 0];
            r.tick_type = tt;
            r.flags = common;
        }
        _ => unreachable!("market kinds only"),
    }
    r
}

fn market_kind() -> impl Strategy<Value = RecordKind> {
    prop::sample::select(
        RecordKind::ALL
            .iter()
            .copied()
            .filter(|k| k.is_market_data())
            .collect::<Vec<_>>(),
    )
}

fn value() -> impl Strategy<Value = i64> {
    prop_oneof![
        -1_000_000_000_000_000i64..1_000_000_000_000_000,
        Just(ib_stream_ipc::UNDEF_I64),
        Just(0i64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn binary_and_jsonl_hold_the_same_records(
        kind in market_kind(),
        rows in proptest::collection::vec(
            ([value(), value(), value(), value()], [0usize..4, 0usize..4], any::<u16>(), any::<u8>(), any::<i64>()),
            1..700,
        ),
        words in proptest::collection::vec("[ -~é\"\\\\]{0,12}", 3),
    ) {
        let root = tmp("prop");
        let mut strings = LocalStrings::default();
        let ids: Vec<u32> = words.iter().map(|w| strings.intern(w.as_bytes())).collect();
        let key = SegmentKey { hour_start_ns: BASE, instrument_id: 265_598, stream: Stream::Kind(kind), epoch: 0xfeed };
        let mut b = BinarySegmentWriter::open(&root, key, 1).unwrap();
        let mut j = JsonlSegmentWriter::open(&root, key).unwrap();
        let mut recs = Vec::new();
        for (i, (w, pick, f, tt, dts)) in rows.iter().enumerate() {
            let id = |p: usize| if p == 3 { 0 } else { ids[p] };
            let r = record(kind, i as u64 + 1, *w, [id(pick[0]), id(pick[1])], *f, *tt, *dts);
            prop_assert!(r.ts_recv < BASE + HOUR);
            b.push(&r, &strings).unwrap();
            j.push(&r, &strings);
            recs.push(r);
            // Flush in uneven windows, like the recorder.
            if i % 97 == 0 {
                b.flush().unwrap();
                b.commit_window();
                j.flush().unwrap();
                j.commit_window();
            }
        }
        b.close(false).unwrap();
        j.close(false).unwrap();

        let bp = key.path(&root, Format::Binary);
        let jp = key.path(&root, Format::Jsonl);
        let seg = BinarySegment::read(&bp).unwrap();
        prop_assert_eq!(&seg.records, &recs);
        let check = seg.verify();
        prop_assert!(check.bad_blocks.is_empty());
        prop_assert_eq!(check.unchecked_records, 0, "a closed segment checksums its last block too");
        let jsonl = std::fs::read(&jp).unwrap();
        prop_assert_eq!(segment_as_jsonl(&bp).unwrap(), jsonl.clone());
        let js = JsonlSegment::read(&jp).unwrap();
        let mut decoded_strings = LocalStrings::default();
        for (line, want) in js.lines().zip(&recs) {
            let back = tickjson::decode(line, &mut decoded_strings).unwrap();
            let mut again = Vec::new();
            tickjson::encode(&back, &decoded_strings, &mut again);
            prop_assert_eq!(&again[..], line);
            prop_assert_eq!(back.seq, want.seq);
        }
        let report = validate(&root).unwrap();
        prop_assert!(report.is_ok(), "{:#?}", report);
        std::fs::remove_dir_all(&root).unwrap();
    }
}

fn mid(seq: u64) -> Record {
    let mut r = Record::mid_point(7, BASE + seq as i64, 1_000_000_000 * seq as i64);
    r.seq = seq;
    r.ts_recv = BASE + seq as i64;
    r
}

#[test]
fn rollback_returns_to_the_window_start_and_reopen_continues() {
    let root = tmp("rollback");
    let key = SegmentKey {
        hour_start_ns: BASE,
        instrument_id: 7,
        stream: Stream::Kind(RecordKind::TbtMidPoint),
        epoch: 1,
    };
    let strings = LocalStrings::default();
    let mut b = BinarySegmentWriter::open(&root, key, 1).unwrap();
    for s in 1..=300 {
        b.push(&mid(s), &strings).unwrap();
    }
    b.flush().unwrap();
    b.commit_window();
    for s in 301..=400 {
        b.push(&mid(s), &strings).unwrap();
    }
    b.flush().unwrap();
    // The window is abandoned (as after a failed write elsewhere).
    assert!(b.rollback().is_empty());
    let bp = key.path(&root, Format::Binary);
    assert_eq!(BinarySegment::read(&bp).unwrap().records.len(), 300);
    // Reopened, it continues cleanly and checksums stay right.
    let mut b = BinarySegmentWriter::open(&root, key, 1).unwrap();
    assert_eq!(b.records(), 300);
    for s in 301..=700 {
        b.push(&mid(s), &strings).unwrap();
    }
    b.close(false).unwrap();
    let seg = BinarySegment::read(&bp).unwrap();
    assert_eq!(seg.records, (1..=700).map(mid).collect::<Vec<_>>());
    assert_eq!(seg.verify().good_blocks, 3);
    assert!(validate(&root).unwrap().is_ok());

    // A window that created a file removes it on rollback.
    let other = SegmentKey {
        instrument_id: 8,
        ..key
    };
    let mut b = BinarySegmentWriter::open(&root, other, 1).unwrap();
    let mut r = mid(1);
    r.instrument_id = 8;
    b.push(&r, &strings).unwrap();
    b.flush().unwrap();
    assert!(b.rollback().is_empty());
    assert!(!other.path(&root, Format::Binary).exists());
    assert!(!sidecar_path(&other.path(&root, Format::Binary), "crc").exists());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_flipped_bit_in_a_record_is_found() {
    let root = tmp("flip");
    let key = SegmentKey {
        hour_start_ns: BASE,
        instrument_id: 7,
        stream: Stream::Kind(RecordKind::TbtMidPoint),
        epoch: 1,
    };
    let mut b = BinarySegmentWriter::open(&root, key, 1).unwrap();
    for s in 1..=600 {
        b.push(&mid(s), &LocalStrings::default()).unwrap();
    }
    b.close(false).unwrap();
    let bp = key.path(&root, Format::Binary);
    let mut bytes = std::fs::read(&bp).unwrap();
    // Record 300 (block 1), a byte of its body.
    bytes[64 + 299 * 64 + 40] ^= 0x04;
    std::fs::write(&bp, &bytes).unwrap();
    let seg = BinarySegment::read(&bp).unwrap();
    assert_eq!(seg.verify().bad_blocks, vec![1]);
    let report = validate(&root).unwrap();
    assert!(!report.is_ok());
    let problems = &report.formats[&Format::Binary].problems;
    assert!(
        problems
            .iter()
            .any(|p| p.what.contains("checksum mismatch")),
        "{problems:?}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
