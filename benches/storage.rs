//! Storage benchmark: bytes per tick of our two formats against the original IB-Stream
//! encodings (v2 JSON envelope, v3 JSON, v3 protobuf with its 4-byte length prefix, encoded
//! here from their documented schemas), recorder throughput per format (ring file to disk,
//! one core, page cache, fsync off), and a binary range query through `storage::query`.
//!
//! Sealed segments (`storage::sealed`): the simulator's MNQ market (tws-sim's tick-by-tick
//! generator, BidAsk and Last, Poisson arrivals) over `STORAGE_BENCH_SIM_HOURS` hours (default
//! 2: a day scaled down, each hour its own segments), recorded, then sealed; bytes per tick on
//! disk against Databento's DBN (MBP-1 for the quotes, trades for the trades, the `dbn` crate's
//! encoder, zstd at DBN's own level) and the original's v3 protobuf, on the same ticks; and the
//! same range query as above over the sealed segments.
//!
//! `cargo bench --bench storage` (optional: `STORAGE_BENCH_TICKS=N`,
//! `STORAGE_BENCH_SIM_HOURS=H`). The last line is the machine-readable summary.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use ib_stream::config::FsyncPolicy;
use ib_stream::recorder::{Recorder, RecorderConfig, STRINGS_FILE_NAME};
use ib_stream::storage::layout::Format;
use ib_stream::storage::query::{Query, QueryIter};
use ib_stream::tickjson::{self, StringLookup};
use ib_stream_ipc::{
    PRICE_SCALE, Quote, Record, RecordKind, RingWriter, SIZE_SCALE, ShmOptions, StringTableConfig,
    StringTableWriter, Trade,
};
use serde_json::json;

#[path = "support/sim_market.rs"]
mod sim_market;

use sim_market::CID;

/// A day-session-like mix for one futures contract: 70 % quotes, 25 % trades, 5 % mid points.
fn dataset(n: usize, base_ns: i64, exch: u32) -> Vec<Record> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(n);
    let mut px: i64 = 21_000 * PRICE_SCALE;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let ts = base_ns + i as i64 * 150_000 + (x % 50_000) as i64;
        let step = ((x >> 8) % 3) as i64 - 1;
        px += step * PRICE_SCALE / 4;
        let size = |k: u64| ((k % 20) as i64 + 1) * SIZE_SCALE;
        let ib_time = (ts / 1_000_000_000) * 1_000_000_000;
        let mut r = match x % 20 {
            0..=13 => Record::quote(
                CID,
                ib_time,
                Quote {
                    bid_price: px,
                    ask_price: px + PRICE_SCALE / 4,
                    bid_size: size(x >> 16),
                    ask_size: size(x >> 24),
                },
            ),
            14..=18 => Record::trade(
                false,
                CID,
                ib_time,
                Trade {
                    price: px,
                    size: size(x >> 32),
                    exchange_id: exch,
                    conditions_id: 0,
                },
            ),
            _ => Record::mid_point(CID, ib_time, px + PRICE_SCALE / 8),
        };
        r.seq = i as u64 + 1;
        r.ts_recv = ts;
        out.push(r);
    }
    out
}

/// The simulator's MNQ market over `hours` hours from `base_ns`.
fn sim_market_hours(hours: i64, base_ns: i64) -> Vec<Record> {
    let end = base_ns + hours * 3_600_000_000_000;
    sim_market::sim_market(base_ns)
        .take_while(|r| r.ts_recv < end)
        .collect()
}

/// DBN (Databento's format, version 3 records) of the same ticks, zstd-compressed at DBN's
/// own level as Databento ships `.dbn.zst` files: the quotes as MBP-1, the trades as trades,
/// one file each. Returns the total bytes.
fn dbn_zstd_bytes(recs: &[Record]) -> u64 {
    use dbn::encode::{DbnEncoder, EncodeRecord};
    use dbn::{BidAskPair, FlagSet, Mbp1Msg, RecordHeader, SType, Schema, TradeMsg, rtype};
    let meta = |schema| {
        dbn::Metadata::builder()
            .dataset("GLBX.MDP3".to_string())
            .schema(Some(schema))
            .start(recs.first().map_or(0, |r| r.ts_recv as u64))
            .stype_in(Some(SType::RawSymbol))
            .stype_out(SType::InstrumentId)
            .build()
    };
    let ts_in_delta = |r: &Record| (r.ts_recv - r.ts_event).clamp(0, i32::MAX as i64) as i32;
    let size = |s: i64| (s / SIZE_SCALE) as u32;
    let mut total = 0u64;
    for schema in [Schema::Mbp1, Schema::Trades] {
        let mut z = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        {
            let mut enc = DbnEncoder::new(&mut z, &meta(schema)).unwrap();
            for r in recs {
                match (schema, r.kind()) {
                    (Schema::Mbp1, Some(RecordKind::TbtBidAsk)) => {
                        let Some(q) = r.as_quote() else { continue };
                        let m = Mbp1Msg {
                            hd: RecordHeader::new::<Mbp1Msg>(
                                rtype::MBP_1,
                                1,
                                CID,
                                r.ts_event as u64,
                            ),
                            price: q.bid_price,
                            size: size(q.bid_size),
                            action: b'A' as _,
                            side: b'B' as _,
                            flags: FlagSet::default(),
                            depth: 0,
                            ts_recv: r.ts_recv as u64,
                            ts_in_delta: ts_in_delta(r),
                            sequence: r.seq as u32,
                            levels: [BidAskPair {
                                bid_px: q.bid_price,
                                ask_px: q.ask_price,
                                bid_sz: size(q.bid_size),
                                ask_sz: size(q.ask_size),
                                bid_ct: 1,
                                ask_ct: 1,
                            }],
                        };
                        enc.encode_record(&m).unwrap();
                    }
                    (Schema::Trades, Some(RecordKind::TbtLast)) => {
                        let Some(t) = r.as_trade() else { continue };
                        let m = TradeMsg {
                            hd: RecordHeader::new::<TradeMsg>(
                                rtype::MBP_0,
                                1,
                                CID,
                                r.ts_event as u64,
                            ),
                            price: t.price,
                            size: size(t.size),
                            action: b'T' as _,
                            side: b'N' as _,
                            flags: FlagSet::default(),
                            depth: 0,
                            ts_recv: r.ts_recv as u64,
                            ts_in_delta: ts_in_delta(r),
                            sequence: r.seq as u32,
                        };
                        enc.encode_record(&m).unwrap();
                    }
                    _ => {}
                }
            }
        }
        let bytes = z.finish().unwrap();
        total += bytes.len() as u64;
    }
    total
}

fn f(v: i64, scale: i64) -> f64 {
    v as f64 / scale as f64
}

fn us(ns: i64) -> i64 {
    ns / 1000
}

/// ISO-8601 with milliseconds, as the original's envelope timestamp.
fn iso_ms(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let (y, m, d) = ib_stream::storage::layout::civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ns.rem_euclid(1_000_000_000) / 1_000_000
    )
}

fn utc_seconds(ns: i64) -> String {
    let t = iso_ms(ns);
    format!("{} {} UTC", &t[..10], &t[11..19])
}

fn tt_name(r: &Record) -> &'static str {
    r.kind().map_or("?", RecordKind::name)
}

/// The original v2 stored line: the v2 envelope around the formatter's tick object.
fn orig_v2_json(r: &Record, strings: &dyn StringLookup) -> Vec<u8> {
    let tt = tt_name(r);
    let data = match r.kind() {
        Some(RecordKind::TbtBidAsk) => json!({
            "type": "bid_ask", "timestamp": utc_seconds(r.ts_event), "unix_time": r.ts_event / 1_000_000_000,
            "bid_price": f(r.body[0], PRICE_SCALE), "ask_price": f(r.body[1], PRICE_SCALE),
            "bid_size": f(r.body[2], SIZE_SCALE), "ask_size": f(r.body[3], SIZE_SCALE),
            "bid_past_low": false, "ask_past_high": false,
        }),
        Some(RecordKind::TbtMidPoint) => json!({
            "type": "midpoint", "timestamp": utc_seconds(r.ts_event), "unix_time": r.ts_event / 1_000_000_000,
            "midpoint": f(r.body[0], PRICE_SCALE),
        }),
        _ => json!({
            "type": "time_sales", "tick_type": "Last", "timestamp": utc_seconds(r.ts_event),
            "unix_time": r.ts_event / 1_000_000_000,
            "price": f(r.body[0], PRICE_SCALE), "size": f(r.body[1], SIZE_SCALE),
            "exchange": String::from_utf8_lossy(strings.lookup(r.body[2] as u32).unwrap_or_default()),
            "conditions": "", "past_limit": false, "unreported": false,
        }),
    };
    let line = json!({
        "type": "tick",
        "stream_id": format!("bg_{CID}_{tt}"),
        "timestamp": iso_ms(r.ts_recv),
        "data": data,
        "metadata": {"source": "background_stream", "request_id": "60001", "contract_id": CID.to_string(), "tick_type": tt},
    });
    let mut v = serde_json::to_vec(&line).unwrap_or_default();
    v.push(b'\n');
    v
}

/// The original v3 JSON line (docs/STORAGE_OPTIMIZATION_SPEC.md, tick_message.py).
fn orig_v3_json(r: &Record) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("ts".into(), json!(us(r.ts_event)));
    m.insert("st".into(), json!(us(r.ts_recv)));
    m.insert("cid".into(), json!(CID));
    m.insert("tt".into(), json!(tt_name(r)));
    m.insert("rid".into(), json!(60001));
    match r.kind() {
        Some(RecordKind::TbtBidAsk) => {
            m.insert("bp".into(), json!(f(r.body[0], PRICE_SCALE)));
            m.insert("bs".into(), json!(f(r.body[2], SIZE_SCALE)));
            m.insert("ap".into(), json!(f(r.body[1], PRICE_SCALE)));
            m.insert("as".into(), json!(f(r.body[3], SIZE_SCALE)));
        }
        Some(RecordKind::TbtMidPoint) => {
            m.insert("mp".into(), json!(f(r.body[0], PRICE_SCALE)));
        }
        _ => {
            m.insert("p".into(), json!(f(r.body[0], PRICE_SCALE)));
            m.insert("s".into(), json!(f(r.body[1], SIZE_SCALE)));
        }
    }
    let mut v = serde_json::to_vec(&m).unwrap_or_default();
    v.push(b'\n');
    v
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn pb_int(out: &mut Vec<u8>, field: u32, v: i64) {
    varint(out, u64::from(field << 3));
    varint(out, v as u64);
}

fn pb_double(out: &mut Vec<u8>, field: u32, v: f64) {
    varint(out, u64::from((field << 3) | 1));
    out.extend_from_slice(&v.to_le_bytes());
}

/// The original v3 protobuf record (tick_message_v3.proto) with its 4-byte length prefix.
fn orig_v3_pb(r: &Record) -> Vec<u8> {
    let mut m = Vec::with_capacity(80);
    pb_int(&mut m, 1, us(r.ts_event));
    pb_int(&mut m, 2, us(r.ts_recv));
    pb_int(&mut m, 3, i64::from(CID as i32));
    let tt = tt_name(r).as_bytes();
    varint(&mut m, (4 << 3) | 2);
    varint(&mut m, tt.len() as u64);
    m.extend_from_slice(tt);
    pb_int(&mut m, 5, 60001);
    match r.kind() {
        Some(RecordKind::TbtBidAsk) => {
            pb_double(&mut m, 12, f(r.body[0], PRICE_SCALE));
            pb_double(&mut m, 13, f(r.body[2], SIZE_SCALE));
            pb_double(&mut m, 14, f(r.body[1], PRICE_SCALE));
            pb_double(&mut m, 15, f(r.body[3], SIZE_SCALE));
        }
        Some(RecordKind::TbtMidPoint) => pb_double(&mut m, 16, f(r.body[0], PRICE_SCALE)),
        _ => {
            pb_double(&mut m, 10, f(r.body[0], PRICE_SCALE));
            pb_double(&mut m, 11, f(r.body[1], SIZE_SCALE));
        }
    }
    let mut out = (m.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&m);
    out
}

fn dir_bytes(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with("recorder."))
            {
                total += e.metadata().map_or(0, |m| m.len());
            }
        }
    }
    total
}

struct Run {
    tps: f64,
    bytes: u64,
    storage: PathBuf,
}

/// Publishes `recs` into a fresh ring file and times one recorder draining it to `format`.
fn record_run(tmp: &Path, name: &str, format: Format, recs: &[Record]) -> Run {
    let shm = tmp.join(format!("{name}-shm"));
    let storage = tmp.join(format!("{name}-storage"));
    std::fs::create_dir_all(&shm).unwrap();
    let opts = ShmOptions::default();
    let cap = (recs.len() as u64).next_power_of_two();
    let mut w = RingWriter::create(&shm.join("ticks.ring"), cap, &opts).unwrap();
    let cfg = StringTableConfig {
        max_entries: 1024,
        max_bytes: 65536,
        max_len: 256,
    };
    let mut st =
        StringTableWriter::create(&shm.join(STRINGS_FILE_NAME), w.info().epoch, &cfg, &opts)
            .unwrap();
    assert_eq!(st.intern(b"CME").unwrap(), 1);
    for c in recs.chunks(4096) {
        w.publish_batch(c);
    }
    let rc = RecorderConfig {
        ring_path: shm.join("ticks.ring"),
        strings_path: shm.join(STRINGS_FILE_NAME),
        storage_root: storage.clone(),
        formats: vec![format],
        flush_interval: Duration::from_secs(3600),
        fsync: FsyncPolicy::Never,
        jsonl_retention_days: 0,
        binary_retention_days: 0,
        ring_wait: Some(Duration::from_secs(1)),
        retry_interval: Duration::from_millis(500),
        max_staged_bytes: 8 << 20,
        heartbeat_keep_interval: ib_stream::recorder::HEARTBEAT_KEEP_INTERVAL,
        register_reader: true,
    };
    let stop = AtomicBool::new(false);
    let mut rec = Recorder::start(rc, &stop).unwrap();
    let t = Instant::now();
    let n = rec.drain_once();
    let el = t.elapsed();
    assert_eq!(n, recs.len() as u64);
    drop(rec);
    drop(st);
    drop(w);
    Run {
        tps: n as f64 / el.as_secs_f64(),
        bytes: dir_bytes(&storage),
        storage,
    }
}

fn main() {
    let n: usize = std::env::var("STORAGE_BENCH_TICKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 20);
    // One UTC hour holds n ticks at 150 µs apart only for n <= 24M; start on the hour.
    let base = 1_763_798_400_000_000_000i64; // 2025-11-22T08:00:00Z
    let recs = dataset(n, base, 1);
    let mut strings = ib_stream::tickjson::LocalStrings::default();
    use ib_stream::tickjson::StringIntern;
    strings.intern(b"CME");

    let (mut v2, mut v3, mut pb, mut ours) = (0usize, 0usize, 0usize, 0usize);
    let mut line = Vec::new();
    for r in &recs {
        v2 += orig_v2_json(r, &strings).len();
        v3 += orig_v3_json(r).len();
        pb += orig_v3_pb(r).len();
        line.clear();
        tickjson::encode(r, &strings, &mut line);
        ours += line.len() + 1;
    }
    let per = |b: usize| b as f64 / n as f64;
    println!("ticks: {n} (70% bid_ask, 25% last, 5% mid_point; one contract)");
    println!("orig v2 JSON  {:7.2} B/tick", per(v2));
    println!("orig v3 JSON  {:7.2} B/tick", per(v3));
    println!(
        "orig v3 pb    {:7.2} B/tick (incl. 4-byte length prefix)",
        per(pb)
    );
    println!(
        "ours JSONL    {:7.2} B/tick (encoder only, incl. newline)",
        per(ours)
    );

    let tmp = std::env::temp_dir().join(format!("ibs-bench-storage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let bin = record_run(&tmp, "bin", Format::Binary, &recs);
    let jsonl = record_run(&tmp, "jsonl", Format::Jsonl, &recs);
    let bin_bpt = bin.bytes as f64 / n as f64;
    let jsonl_bpt = jsonl.bytes as f64 / n as f64;
    println!("ours binary   {bin_bpt:7.2} B/tick on disk (records + header + .crc + .strings)");
    println!("ours JSONL    {jsonl_bpt:7.2} B/tick on disk");
    println!(
        "binary vs orig v3 JSON: {:.1}% smaller; JSONL vs orig v3 JSON: {:+.1}%",
        100.0 * (1.0 - bin_bpt / per(v3)),
        100.0 * (jsonl_bpt / per(v3) - 1.0)
    );
    println!("recorder binary {:>12.0} ticks/s", bin.tps);
    println!("recorder JSONL  {:>12.0} ticks/s", jsonl.tps);

    // A binary range query through the query library (three kinds merged by time, strings
    // mapped, the range found by binary search): three passes, best one (page cache warm).
    let first = recs[0].ts_recv;
    let last = recs[n - 1].ts_recv;
    let q = Query {
        format: Some(Format::Binary),
        kinds: vec![
            RecordKind::TbtBidAsk,
            RecordKind::TbtLast,
            RecordKind::TbtMidPoint,
        ],
        ..Query::new(CID, first, last + 1)
    };
    let mut best = f64::MAX;
    let mut count = 0usize;
    for _ in 0..3 {
        let t = Instant::now();
        count = 0;
        let mut check = 0i64;
        let mut it = QueryIter::new(&bin.storage, &q).unwrap();
        while let Some(r) = it.next_record().unwrap() {
            count += 1;
            check = check.wrapping_add(r.body[0]);
        }
        std::hint::black_box(check);
        best = best.min(t.elapsed().as_secs_f64());
    }
    assert_eq!(count, n);
    let query_rps = count as f64 / best;
    println!("query (binary range query, 3 kinds merged) {query_rps:>12.0} records/s");
    let _ = std::fs::remove_dir_all(&bin.storage);
    let _ = std::fs::remove_dir_all(&jsonl.storage);

    // Sealed segments on the simulator's market.
    let hours: i64 = std::env::var("STORAGE_BENCH_SIM_HOURS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let sim = sim_market_hours(hours, base);
    let sn = sim.len();
    let quotes = sim
        .iter()
        .filter(|r| r.kind() == Some(RecordKind::TbtBidAsk))
        .count();
    println!(
        "sim market: {sn} ticks over {hours} h ({quotes} bid_ask, {} last; MNQ, tws-sim generator)",
        sn - quotes
    );
    let sim_run = record_run(&tmp, "sim", Format::Binary, &sim);
    let sim_raw_bpt = sim_run.bytes as f64 / sn as f64;
    let sq = Query {
        format: Some(Format::Binary),
        kinds: vec![RecordKind::TbtBidAsk, RecordKind::TbtLast],
        ..Query::new(CID, sim[0].ts_recv, sim[sn - 1].ts_recv + 1)
    };
    let query = |root: &Path| {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let mut count = 0usize;
            let mut check = 0i64;
            let mut it = QueryIter::new(root, &sq).unwrap();
            while let Some(r) = it.next_record().unwrap() {
                count += 1;
                check = check.wrapping_add(r.body[0]);
            }
            std::hint::black_box(check);
            assert_eq!(count, sn);
            best = best.min(t.elapsed().as_secs_f64());
        }
        sn as f64 / best
    };
    let raw_query_rps = query(&sim_run.storage);
    let t = Instant::now();
    let rep = ib_stream::storage::sealed::seal_store(
        &sim_run.storage,
        i64::MAX,
        ib_stream::storage::sealed::SEAL_ZSTD_LEVEL,
    )
    .unwrap();
    let seal_s = t.elapsed().as_secs_f64();
    assert!(rep.refused.is_empty(), "{:?}", rep.refused);
    let sealed_bpt = dir_bytes(&sim_run.storage) as f64 / sn as f64;
    let sealed_query_rps = query(&sim_run.storage);
    let dbn_zstd_bpt = dbn_zstd_bytes(&sim) as f64 / sn as f64;
    let sim_pb_bpt = sim.iter().map(|r| orig_v3_pb(r).len()).sum::<usize>() as f64 / sn as f64;
    println!(
        "sim raw binary {sim_raw_bpt:7.2} B/tick; sealed {sealed_bpt:7.2} B/tick (zstd level {}, \
         {} segments, {:.0} ticks/s sealed); DBN+zstd {dbn_zstd_bpt:7.2} B/tick; orig v3 pb \
         {sim_pb_bpt:7.2} B/tick",
        ib_stream::storage::sealed::SEAL_ZSTD_LEVEL,
        rep.sealed,
        sn as f64 / seal_s
    );
    println!(
        "query over the sim market: raw {raw_query_rps:.0} records/s, sealed {sealed_query_rps:.0} records/s"
    );
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "bench=storage bin_bpt={bin_bpt:.2} jsonl_bpt={jsonl_bpt:.2} orig_v2_json_bpt={:.2} orig_v3_json_bpt={:.2} orig_v3_pb_bpt={:.2} rec_bin_tps={:.0} rec_jsonl_tps={:.0} query_rps={query_rps:.0} sealed_bpt={sealed_bpt:.2} dbn_zstd_bpt={dbn_zstd_bpt:.2} sim_orig_v3_pb_bpt={sim_pb_bpt:.2} sealed_query_rps={sealed_query_rps:.0}",
        per(v2),
        per(v3),
        per(pb),
        bin.tps,
        jsonl.tps
    );
}
