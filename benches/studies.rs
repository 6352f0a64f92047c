//! Studies benchmark (issue 14): 1-minute bars with their VWAP from binary storage against
//! pandas in the same run, and the live cost per tick of a study reading the ring.
//!
//! - Data: tws-sim's MNQ market (its tick-by-tick generator, seed 7: quotes at about 100/s,
//!   trades at about 25/s, exponential gaps), `STUDIES_BENCH_TICKS` records (default 2M,
//!   about 4.4 hours), recorded to binary storage by the real recorder from a ring file.
//! - `bars_tps`: a storage query (`bid_ask` and `last` over the whole range) into
//!   [`BarAggregator`] (1-minute bars, OHLCV, count, VWAP); ticks read per second, best of 3.
//! - `pandas_csv_tps`: the same records exported as our CSV (`storage export --format csv`'s
//!   rows), then in Python `read_csv` + trades filter + `resample("1min").ohlc()` + volume and
//!   a numpy VWAP (`(price*size).resample.sum() / size.resample.sum()`), what a user does
//!   today; `pandas_mem_tps`: the same on the DataFrame already in memory (pandas' best case).
//!   The same number of records in the denominator; both sides' bar counts and total volume
//!   are compared before any figure is printed.
//! - `live_ns_per_tick`: a ring holding the records, read through [`RingFollower`] (the
//!   ring input of `ib-stream studies`) into the bar aggregator; wall time per record.
//!
//! Python: `STUDIES_BENCH_PYTHON`, else the project's venv (`python/.venv/bin/python`, made by
//! `scripts/setup-python.sh`, whose test extras include pandas and numpy), else `python3`;
//! without pandas the pandas figures are `n/a`.
//!
//! `cargo bench --bench studies`. The last line is the machine-readable summary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use ib_stream::config::FsyncPolicy;
use ib_stream::ipc::{
    Follow, FollowConfig, Record, RingFollower, RingWriter, ShmOptions, StartAt, StringTableConfig,
    StringTableWriter,
};
use ib_stream::recorder::{Recorder, RecorderConfig, STRINGS_FILE_NAME};
use ib_stream::storage::layout::Format;
use ib_stream::storage::query::{Query, QueryIter};
use ib_stream::studies::bars::{Bar, BarAggregator, BarSize, BarSource};
use ib_stream::studies::clock::Clock;
use ib_stream::studies::{Event, Study, TradeKind, event_of, kinds};

#[path = "support/sim_market.rs"]
mod sim_market;

use sim_market::{CID, sim_market};
const MINUTE_US: i64 = 60_000_000;

fn ring_with(shm: &Path, recs: &[Record]) -> (RingWriter, StringTableWriter) {
    std::fs::create_dir_all(shm).unwrap();
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
    (w, st)
}

/// Records `recs` to binary storage under `tmp` with the real recorder.
fn record(tmp: &Path, recs: &[Record]) -> PathBuf {
    let shm = tmp.join("shm");
    let storage = tmp.join("storage");
    let (w, st) = ring_with(&shm, recs);
    let rc = RecorderConfig {
        ring_path: shm.join("ticks.ring"),
        strings_path: shm.join(STRINGS_FILE_NAME),
        storage_root: storage.clone(),
        formats: vec![Format::Binary],
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
    assert_eq!(rec.drain_once(), recs.len() as u64);
    drop(rec);
    drop(st);
    drop(w);
    storage
}

fn query(recs: &[Record]) -> Query {
    let mut q = Query::new(CID, recs[0].ts_recv, recs[recs.len() - 1].ts_recv + 1_000);
    q.kinds = kinds(TradeKind::Last).to_vec();
    q
}

/// 1-minute bars from storage: (ticks read, the bars).
fn bars_from_storage(root: &Path, q: &Query) -> (u64, Vec<Bar>) {
    let mut it = QueryIter::new(root, q).unwrap();
    let mut a = BarAggregator::new(
        BarSize::Time(MINUTE_US),
        BarSource::Trades,
        false,
        Clock::utc(),
    );
    let mut bars = Vec::new();
    let mut n = 0u64;
    while let Some(rec) = it.next_record().unwrap() {
        n += 1;
        match event_of(&rec, CID, TradeKind::Last) {
            Some(Event::Tick(t)) => a.on_tick(&t, &mut bars),
            Some(Event::Gap(g)) => a.on_gap(&g, &mut bars),
            None => {}
        }
    }
    a.finish(&mut bars);
    (n, bars)
}

fn export_csv(root: &Path, q: &Query, path: &Path) -> u64 {
    let mut it = QueryIter::new(root, q).unwrap();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(f, "{}", ib_stream::storage::cli::CSV_HEADER).unwrap();
    let mut line = Vec::with_capacity(256);
    let mut n = 0;
    while let Some(rec) = it.next_record().unwrap() {
        line.clear();
        ib_stream::storage::cli::csv_row(&rec, it.strings(), &mut line);
        line.push(b'\n');
        f.write_all(&line).unwrap();
        n += 1;
    }
    f.flush().unwrap();
    n
}

const PANDAS: &str = r#"
import sys, time
import numpy as np
import pandas as pd

path = sys.argv[1]

def bars(df):
    t = df[df["kind"] == "last"]
    idx = pd.to_datetime(t["ts_recv_ns"].to_numpy(), unit="ns")
    price = pd.Series(t["price"].to_numpy(), index=idx)
    size = pd.Series(t["size"].to_numpy(), index=idx)
    ohlc = price.resample("1min").ohlc()
    vol = size.resample("1min").sum()
    pv = pd.Series(np.multiply(price.to_numpy(), size.to_numpy()), index=idx).resample("1min").sum()
    cnt = size.resample("1min").count()
    vwap = pv / vol
    return ohlc, vol, vwap, cnt

best_csv = None
for _ in range(3):
    t0 = time.perf_counter()
    df = pd.read_csv(path, usecols=["ts_recv_ns", "kind", "price", "size"])
    ohlc, vol, vwap, cnt = bars(df)
    el = time.perf_counter() - t0
    best_csv = el if best_csv is None else min(best_csv, el)
best_mem = None
for _ in range(5):
    t0 = time.perf_counter()
    ohlc, vol, vwap, cnt = bars(df)
    el = time.perf_counter() - t0
    best_mem = el if best_mem is None else min(best_mem, el)
nonempty = int((cnt > 0).sum())
print(f"rows={len(df)} csv_s={best_csv:.6f} mem_s={best_mem:.6f} bars={nonempty} volume={float(vol.sum()):.4f} first_vwap={float(vwap[cnt > 0].iloc[0]):.6f}")
"#;

fn python() -> String {
    if let Ok(p) = std::env::var("STUDIES_BENCH_PYTHON") {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/python/.venv/bin/python");
    if Path::new(venv).exists() {
        return venv.to_string();
    }
    "python3".into()
}

struct Pandas {
    csv_s: f64,
    mem_s: f64,
    rows: u64,
    bars: usize,
    volume: f64,
    first_vwap: f64,
}

fn run_pandas(csv: &Path) -> Option<Pandas> {
    let py = python();
    let o = Command::new(&py)
        .arg("-c")
        .arg(PANDAS)
        .arg(csv)
        .output()
        .ok()?;
    if !o.status.success() {
        eprintln!(
            "studies bench: pandas via {py} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        return None;
    }
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let get = |k: &str| -> Option<f64> {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))?
            .parse()
            .ok()
    };
    Some(Pandas {
        csv_s: get("csv_s")?,
        mem_s: get("mem_s")?,
        rows: get("rows")? as u64,
        bars: get("bars")? as usize,
        volume: get("volume")?,
        first_vwap: get("first_vwap")?,
    })
}

/// Reads the ring of `recs` through the follower into the bar aggregator: ns per record.
fn live_ns_per_tick(tmp: &Path, recs: &[Record]) -> f64 {
    let shm = tmp.join("live-shm");
    let (w, st) = ring_with(&shm, recs);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut f = RingFollower::open(
            &shm.join("ticks.ring"),
            StartAt::Oldest,
            FollowConfig::default(),
        )
        .unwrap();
        let mut a = BarAggregator::new(
            BarSize::Time(MINUTE_US),
            BarSource::Trades,
            false,
            Clock::new("America/New_York", "18:00").unwrap(),
        );
        let mut bars = Vec::new();
        let mut n = 0usize;
        let t = Instant::now();
        while n < recs.len() {
            match f.poll() {
                Follow::Record(r) => {
                    n += 1;
                    if let Some(Event::Tick(tick)) = event_of(&r, CID, TradeKind::Last) {
                        a.on_tick(&tick, &mut bars);
                    }
                }
                Follow::Event(e) => panic!("unexpected {e:?}"),
                Follow::Empty => panic!("the ring holds every record"),
            }
        }
        let el = t.elapsed().as_nanos() as f64 / n as f64;
        std::hint::black_box(&bars);
        best = best.min(el);
    }
    drop(st);
    drop(w);
    best
}

fn main() {
    let n: usize = std::env::var("STUDIES_BENCH_TICKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let tmp = std::env::temp_dir().join(format!("ib-stream-bench-studies-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    // 2026-01-05T14:30:00Z.
    let recs: Vec<Record> = sim_market(1_767_623_400_000_000_000).take(n).collect();
    let root = record(&tmp, &recs);
    let q = query(&recs);

    let mut best = f64::MAX;
    let mut result = (0, Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        result = bars_from_storage(&root, &q);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let (ticks, bars) = result;
    // The storage query alone, to see where the time goes.
    let mut best_q = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut it = QueryIter::new(&root, &q).unwrap();
        let mut n = 0u64;
        while let Some(r) = it.next_record().unwrap() {
            n += std::hint::black_box(r).seq & 1;
        }
        std::hint::black_box(n);
        best_q = best_q.min(t.elapsed().as_secs_f64());
    }
    assert_eq!(ticks as usize, recs.len());
    let bars_tps = ticks as f64 / best;
    let volume: f64 = bars.iter().map(|b| b.volume as f64 / 1e8).sum();
    println!(
        "rust: {ticks} ticks -> {} 1-minute bars in {:.1} ms ({:.1}M ticks/s); the storage query alone {:.1} ms ({:.1}M ticks/s)",
        bars.len(),
        best * 1e3,
        bars_tps / 1e6,
        best_q * 1e3,
        ticks as f64 / best_q / 1e6
    );

    let csv = tmp.join("ticks.csv");
    let exported = export_csv(&root, &q, &csv);
    let pandas = run_pandas(&csv);
    let (pcsv, pmem, vs_csv, vs_mem) = match &pandas {
        Some(p) => {
            assert_eq!(p.rows, exported, "pandas read every exported row");
            assert_eq!(p.bars, bars.len(), "the same number of 1-minute bars");
            assert!(
                (p.volume - volume).abs() < 1e-3,
                "volume {} vs {volume}",
                p.volume
            );
            let ours = bars[0].vwap().unwrap() as f64 / 1e9;
            assert!(
                (p.first_vwap - ours).abs() < 1e-5,
                "vwap {} vs {ours}",
                p.first_vwap
            );
            let (c, m) = (exported as f64 / p.csv_s, exported as f64 / p.mem_s);
            println!(
                "pandas: read_csv+resample {:.1} ms ({:.2}M ticks/s), in memory {:.1} ms ({:.1}M ticks/s); same bars, volume and VWAP",
                p.csv_s * 1e3,
                c / 1e6,
                p.mem_s * 1e3,
                m / 1e6
            );
            (
                format!("{c:.0}"),
                format!("{m:.0}"),
                format!("{:.1}", bars_tps / c),
                format!("{:.2}", bars_tps / m),
            )
        }
        None => ("n/a".into(), "n/a".into(), "n/a".into(), "n/a".into()),
    };

    let live = live_ns_per_tick(&tmp, &recs);
    println!("live: ring follower + 1-minute bars {live:.1} ns per record");
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "bench=studies bars_tps={bars_tps:.0} pandas_csv_tps={pcsv} pandas_mem_tps={pmem} vs_pandas_csv={vs_csv} vs_pandas_mem={vs_mem} live_ns_per_tick={live:.1}"
    );
}
