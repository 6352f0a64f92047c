//! Builds small stores through the storage writers for the query and tools tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::path::Path;

use ib_stream::storage::binary::BinarySegmentWriter;
use ib_stream::storage::jsonl::JsonlSegmentWriter;
use ib_stream::storage::{Format, SegmentKey};
use ib_stream::tickjson::{LocalStrings, StringIntern};
use ib_stream_ipc::{GapReason, Quote, Record, RecordKind, Trade};

pub const CID: u32 = 711_280_073;
pub const OTHER_CID: u32 = 265_598;
/// 2025-11-22T08:00:00Z
pub const T0: i64 = 1_763_798_400_000_000_000;
pub const EPOCH_A: u64 = 0x1111_2222_3333_4444;
pub const EPOCH_B: u64 = 0x0000_0000_0000_0007;

/// One epoch of records as the engine would publish them: kinds interleaved, sequences
/// 1..=n, receive times increasing with sub-microsecond parts, two instruments, trades with
/// exchange and condition strings, and (when `gap`) one gap record.
pub fn epoch_records(
    n: u64,
    start_ns: i64,
    step_ns: i64,
    strings: &mut LocalStrings,
    gap: bool,
) -> Vec<Record> {
    let exch = [strings.intern(b"CME"), strings.intern(b"GLOBEX")];
    let cond = [0, strings.intern(b" T")];
    let mut out = Vec::new();
    for i in 0..n {
        let seq = i + 1;
        let ts = start_ns + i as i64 * step_ns + (i as i64 * 7919) % 1000;
        let px = 21_000_000_000_000 + (i as i64 % 40) * 250_000_000;
        let cid = if i % 11 == 5 { OTHER_CID } else { CID };
        let mut r = match i % 10 {
            0..=5 => Record::quote(
                cid,
                ts - 500_000,
                Quote {
                    bid_price: px,
                    ask_price: px + 250_000_000,
                    bid_size: (1 + i as i64 % 7) * 100_000_000,
                    ask_size: (2 + i as i64 % 5) * 100_000_000,
                },
            ),
            6..=8 => Record::trade(
                i % 20 == 8,
                cid,
                ts - 300_123,
                Trade {
                    price: px,
                    size: (1 + i as i64 % 3) * 100_000_000,
                    exchange_id: exch[(i % 2) as usize],
                    conditions_id: cond[((i / 3) % 2) as usize],
                },
            ),
            _ => Record::mid_point(cid, ts - 100, px + 125_000_000),
        };
        if gap && i == n / 2 {
            r = Record::new(RecordKind::Gap);
            r.tick_type = GapReason::Disconnected as u8;
            r.body = [seq as i64 + 1, seq as i64 + 3, ts - 1000, ts];
        }
        r.seq = seq;
        r.ts_recv = ts;
        out.push(r);
    }
    if gap {
        // The gap's range is not stored.
        let g = out[(n / 2) as usize];
        out.retain(|r| r.seq < g.body[0] as u64 || r.seq > g.body[1] as u64);
    }
    out
}

enum W {
    B(Box<BinarySegmentWriter>),
    J(JsonlSegmentWriter),
}

/// Writes `records` of `epoch` into both formats under `root`.
pub fn write_store(root: &Path, epoch: u64, records: &[Record], strings: &LocalStrings) {
    for format in Format::ALL {
        let mut writers: HashMap<SegmentKey, W> = HashMap::new();
        for r in records {
            let key = SegmentKey::for_record(r, epoch).unwrap();
            let w = writers.entry(key).or_insert_with(|| match format {
                Format::Binary => W::B(Box::new(BinarySegmentWriter::open(root, key, 1).unwrap())),
                Format::Jsonl => W::J(JsonlSegmentWriter::open(root, key).unwrap()),
            });
            match w {
                W::B(b) => b.push(r, strings).unwrap(),
                W::J(j) => j.push(r, strings),
            }
        }
        for (_, w) in writers {
            match w {
                W::B(b) => b.close(false).unwrap(),
                W::J(j) => j.close(false).unwrap(),
            }
        }
    }
}

/// A fresh directory, removed on drop.
pub struct TempRoot(pub std::path::PathBuf);

impl TempRoot {
    pub fn new(name: &str) -> TempRoot {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let d = std::env::temp_dir().join(format!("ibs-q-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        TempRoot(d)
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The standard store: epoch A (3000 records, 3.1 s apart: about 2.6 hours, with a gap)
/// then epoch B (500 records) after it. Returns the records per epoch and their strings.
pub fn standard_store(root: &Path) -> (Vec<(u64, Record)>, LocalStrings) {
    let mut strings = LocalStrings::default();
    let a = epoch_records(3000, T0 + 123_456_789, 3_100_000_000, &mut strings, true);
    let b_start = a.last().unwrap().ts_recv + 60_000_000_000;
    let b = epoch_records(500, b_start, 1_000_000_000, &mut strings, false);
    write_store(root, EPOCH_A, &a, &strings);
    write_store(root, EPOCH_B, &b, &strings);
    let mut all: Vec<(u64, Record)> = a.into_iter().map(|r| (EPOCH_A, r)).collect();
    all.extend(b.into_iter().map(|r| (EPOCH_B, r)));
    (all, strings)
}

/// `ib-stream studies bars --con-id CID --storage ROOT --from .. --to .. --format jsonl
/// --size 1m`, run in process: the rows the bars endpoint and the chart must match.
pub fn studies_bars_1m(root: &Path, from: &str, to: &str) -> Vec<serde_json::Value> {
    use clap::Parser;
    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(subcommand)]
        study: ib_stream::studies::cli::StudyCommand,
    }
    let root_s = root.display().to_string();
    let cid = CID.to_string();
    let args = [
        "studies",
        "bars",
        "--con-id",
        &cid,
        "--storage",
        &root_s,
        "--from",
        from,
        "--to",
        to,
        "--format",
        "jsonl",
        "--size",
        "1m",
    ];
    let study = Cmd::try_parse_from(args).unwrap().study;
    let ctx = ib_stream::studies::cli::Context {
        ring_dir: "/nonexistent".into(),
        storage_root: root.to_path_buf(),
        default_url: "http://127.0.0.1:1".into(),
        token: None,
    };
    let mut out = Vec::new();
    ib_stream::studies::cli::run(
        &ib_stream::studies::cli::StudiesArgs { study },
        &ctx,
        &mut out,
    )
    .unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
