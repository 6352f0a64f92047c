//! Wire-to-ring latency, two ways (issue 17, section 2).
//!
//! **Two parties** (the goal's figure): tws-sim pinned to core 1, `ib-stream engine`
//! (busy-poll) pinned to core 0, nothing else running. The engine measures itself: per
//! socket read that commits records, from the kernel's software receive stamp of the read's
//! last bytes (`SO_TIMESTAMPING`) to the ring commit of its last record (`kernel_*`), and
//! from the read's return to that commit (`read_commit_*`), kept as histograms in its status
//! region. This bench only reads the status region before and after the window (two copies,
//! no polling) and takes the difference. `read_commit_p50_ns` is taken at a rate where a
//! read carries one tick (1 000 ticks/s), `kernel_*` at the headline rate.
//!
//! **Three processes** (kept as `p99_ns_3proc`, labelled as what it is): as above plus a
//! ring reader in this process on core 1 with the simulator, from the moment tws-sim writes
//! a tick to its socket (its send log, Unix ns) to the moment the reader sees the record
//! (Unix ns, same clock), for tick-by-tick streams at several aggregate rates. Three busy
//! processes share two cores, so that figure is largely the scheduler's. Percentiles are
//! coordinated-omission corrected: each tick's latency is counted from when the simulator's
//! steady schedule said it was due (`raw_*` from when it was actually written). `recv_*` is
//! the engine's own part: from the simulator's write to the engine's `ts_recv` stamp. A rate
//! is lossless when every tick sent before the end reached the reader, no reader lap
//! happened, and at least 90 % of the rate was achieved.
//!
//! `cargo bench --bench wire_to_ring` (env: `W2R_SECONDS` per rate, default 3;
//! `W2R_RATES` comma list of the three-process rates, default
//! 10000,100000,250000,500000,1000000,2000000). Last line: `bench=wire_to_ring rate=100000
//! kernel_p50_ns= kernel_p99_ns= read_commit_p50_ns= p99_ns_3proc= max_lossless_tps=
//! engine_rss_mb=` and further keys.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ib_stream::ipc::{
    Histogram as StatusHistogram, ReadOutcome, RecordKind, RingReader, StartAt, StatusReader,
    StatusSnapshot,
};

const SIM: &str = env!("CARGO_BIN_EXE_tws-sim");
const ENGINE: &str = env!("CARGO_BIN_EXE_ib-stream");
const AAPL: u32 = 265_598;
const CLIENT_ID: i32 = 77;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn unix_ns() -> i64 {
    ib_stream::ipc::shm::unix_time_ns() as i64
}

fn pinned(core: usize, exe: &str) -> Command {
    if Path::new("/usr/bin/taskset").exists() {
        let mut c = Command::new("/usr/bin/taskset");
        c.args(["-c", &core.to_string(), exe]);
        c
    } else {
        Command::new(exe)
    }
}

fn rss_of(pid: u32) -> HashMap<String, f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            if !matches!(k, "VmRSS" | "RssAnon" | "RssFile" | "RssShmem" | "VmHWM") {
                return None;
            }
            let kb: f64 = v.trim().trim_end_matches(" kB").trim().parse().ok()?;
            Some((k.to_string(), kb / 1024.0))
        })
        .collect()
}

struct RunResult {
    rate: u64,
    achieved: f64,
    hist: Histogram<u64>,
    raw: Histogram<u64>,
    recv: Histogram<u64>,
    missing: u64,
    lapped: u64,
    rss: HashMap<String, f64>,
}

impl RunResult {
    fn lossless(&self) -> bool {
        self.missing == 0 && self.lapped == 0 && self.achieved >= 0.9 * self.rate as f64
    }
}

/// tws-sim (core 1, steady `rate` over four tick-by-tick streams, its send log in `dir`)
/// and the engine (core 0, busy-poll) connected to it; returns them and the shm directory.
fn start_pair(rate: u64, dir: &Path) -> (Kill, Kill, PathBuf) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let send_log = dir.join("send.log");
    let per_sub = rate as f64 / 4.0;
    let mut sim = Kill(
        pinned(1, SIM)
            .args([
                "--port",
                "0",
                "--tbt-same-instrument-secs",
                "0",
                "--mode",
                "steady",
            ])
            .args(["--rate", &per_sub.to_string()])
            .arg("--send-log")
            .arg(&send_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tws-sim"),
    );
    let mut line = String::new();
    BufReader::new(sim.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    let shm = dir.join("shm");
    let engine = Kill(
        Command::new(ENGINE)
            .arg("--set")
            .arg(format!("IB_STREAM_SHM_DIR={}", shm.display()))
            // The engine's contract store (under the storage root) stays in the bench's dir.
            .arg("--set")
            .arg(format!(
                "IB_STREAM_STORAGE_PATH={}",
                dir.join("storage").display()
            ))
            .args(["--set", &format!("IB_STREAM_PORTS={port}")])
            .args(["--set", "IB_STREAM_RING_CAPACITY=262144"])
            .args(["--set", "IB_STREAM_ENGINE_CORE=0"])
            .args(["--set", "IB_STREAM_BUSY_POLL=true"])
            .args(["--set", &format!("IB_STREAM_CLIENT_ID={CLIENT_ID}")])
            .args(["--set", "IB_STREAM_LOG_LEVEL=warn"])
            .args([
                "--set",
                "IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:bid_ask;last;all_last;mid_point",
            ])
            .args(["engine", "--tbt-same-instrument-ms", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ib-stream engine"),
    );
    (sim, engine, shm)
}

/// Two parties: the engine's own histograms over a window of `seconds` after a warm-up.
struct PairResult {
    rate: u64,
    kernel: StatusHistogram,
    read_commit: StatusHistogram,
    /// Ticks committed per second in the window.
    committed_tps: f64,
    rss: HashMap<String, f64>,
}

fn status_now(r: &StatusReader) -> Box<StatusSnapshot> {
    let mut s = StatusSnapshot::new_boxed();
    let until = Instant::now() + Duration::from_secs(5);
    while r.read(&mut s).is_err() {
        assert!(Instant::now() < until, "no status snapshot");
        std::thread::sleep(Duration::from_millis(10));
    }
    s
}

/// `after` minus `before`: the values recorded in between (min and max stay those of
/// `after`, so a percentile is clamped no tighter than the whole run's range).
fn window(before: &StatusHistogram, after: &StatusHistogram) -> StatusHistogram {
    let mut h = *after;
    h.count = after.count.saturating_sub(before.count);
    h.sum = after.sum.wrapping_sub(before.sum);
    for (a, b) in h.buckets.iter_mut().zip(before.buckets.iter()) {
        *a = a.saturating_sub(*b);
    }
    h
}

fn run_pair(rate: u64, seconds: f64, dir: &Path) -> PairResult {
    let (sim, engine, shm) = start_pair(rate, dir);
    // This process takes no core: it sleeps, and copies the status region twice.
    let status_path = shm.join(ib_stream::ipc::STATUS_FILE_NAME);
    let until = Instant::now() + Duration::from_secs(20);
    let reader = loop {
        if let Ok(r) = StatusReader::open(&status_path) {
            break r;
        }
        assert!(Instant::now() < until, "no status region");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Warm-up: until ticks flow, then 700 ms more.
    while status_now(&reader).counters.records_published < 100 {
        assert!(Instant::now() < until, "no tick in 20 s at rate {rate}");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(700));
    let before = status_now(&reader);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let after = status_now(&reader);
    let span = t0.elapsed().as_secs_f64();
    let rss = rss_of(engine.0.id());
    drop(sim);
    drop(engine);
    PairResult {
        rate,
        kernel: window(
            &before.latencies.kernel_to_commit,
            &after.latencies.kernel_to_commit,
        ),
        read_commit: window(
            &before.latencies.read_to_commit,
            &after.latencies.read_to_commit,
        ),
        committed_tps: (after.counters.records_published - before.counters.records_published)
            as f64
            / span,
        rss,
    }
}

fn run_rate(rate: u64, seconds: f64, dir: &Path) -> RunResult {
    let per_sub = rate as f64 / 4.0;
    let send_log = dir.join("send.log");
    let (sim, engine, shm) = start_pair(rate, dir);
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: 1 });
    let mut ring = RingReader::open_wait(
        &shm.join("ticks.ring"),
        StartAt::Oldest,
        Duration::from_secs(20),
        Duration::from_millis(5),
    )
    .expect("ring");
    // seen[kind][k] = (when the reader saw tick k of that kind, the engine's ts_recv of it).
    let cap = (per_sub * (seconds + 3.0)) as usize + 1024;
    let mut seen: Vec<Vec<(i64, i64)>> = (0..4).map(|_| Vec::with_capacity(cap)).collect();
    let mut req_kind: HashMap<i64, usize> = HashMap::new();
    let mut lapped = 0u64;
    let warmup = Duration::from_millis(700);
    let mut first_tick: Option<Instant> = None;
    let mut measure_from_ns = i64::MAX;
    let spin = std::env::var("W2R_SPIN").is_ok_and(|v| v == "1");
    let give_up = Instant::now() + Duration::from_secs(30);
    let (measure_to_ns, rss) = loop {
        match ring.try_read() {
            ReadOutcome::Record(r) => {
                let now = unix_ns();
                match r.kind() {
                    Some(
                        k @ (RecordKind::TbtLast
                        | RecordKind::TbtAllLast
                        | RecordKind::TbtBidAsk
                        | RecordKind::TbtMidPoint),
                    ) if r.instrument_id == AAPL => {
                        seen[k as usize - 1].push((now, r.ts_recv));
                        if first_tick.is_none() {
                            first_tick = Some(Instant::now());
                        }
                    }
                    Some(RecordKind::Subscription)
                        if r.tick_type == ib_stream::ipc::SubState::Requested as u8 =>
                    {
                        req_kind.insert(r.body[2], (r.body[0] - 1) as usize);
                    }
                    _ => {}
                }
            }
            ReadOutcome::Lost { count, .. } => lapped += count,
            // The reader shares core 1 with the simulator: yield so it keeps producing
            // (W2R_SPIN=1 spins instead, for a machine with a core to spare).
            ReadOutcome::Empty if spin => std::hint::spin_loop(),
            ReadOutcome::Empty => std::thread::yield_now(),
        }
        if let Some(t0) = first_tick {
            let el = t0.elapsed();
            if measure_from_ns == i64::MAX && el >= warmup {
                measure_from_ns = unix_ns();
            }
            if el >= warmup + Duration::from_secs_f64(seconds) {
                break (unix_ns(), rss_of(engine.0.id()));
            }
        } else if Instant::now() > give_up {
            panic!("no tick in 30 s at rate {rate}");
        }
    };
    drop(sim);
    drop(engine);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut raw = hist.clone();
    let mut recv = hist.clone();
    let mut missing = 0u64;
    let mut in_window = 0u64;
    let mut text = String::new();
    std::fs::File::open(&send_log)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    // (kind, k, send time) of every tick the simulator wrote to our connection.
    let mut sent: Vec<(usize, usize, i64)> = Vec::new();
    for l in text.lines() {
        let f: Vec<i64> = l
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() != 5 || f[0] != i64::from(CLIENT_ID) {
            continue;
        }
        let Some(&kind) = req_kind.get(&f[1]) else {
            continue;
        };
        let (first_k, count, at) = (f[2] as usize, f[3] as usize, f[4]);
        sent.extend((first_k..first_k + count).map(|k| (kind, k, at)));
    }
    // Coordinated omission: tick k of a stream is due at start + k * interval (the
    // simulator's steady schedule). The start is estimated as the earliest `at - k * interval`
    // (the moment the simulator was exactly on schedule); a tick written late because the
    // simulator or the socket was held up is then charged from when it was due.
    let interval_sub = 1e9 / per_sub;
    let mut start = [f64::MAX; 4];
    for &(kind, k, at) in &sent {
        start[kind] = start[kind].min(at as f64 - k as f64 * interval_sub);
    }
    for &(kind, k, at) in &sent {
        match seen[kind].get(k) {
            Some(&(t, ts_recv)) if at >= measure_from_ns && t <= measure_to_ns => {
                in_window += 1;
                raw.record((t - at).max(1) as u64).unwrap();
                recv.record((ts_recv - at).max(1) as u64).unwrap();
                let due = start[kind] + k as f64 * interval_sub;
                hist.record((t as f64 - due).max(1.0) as u64).unwrap();
            }
            Some(_) => {}
            // Sent well before the reader stopped and never seen: lost.
            None if at < measure_to_ns - 200_000_000 => missing += 1,
            None => {}
        }
    }
    let span = (measure_to_ns - measure_from_ns) as f64 / 1e9;
    RunResult {
        rate,
        achieved: in_window as f64 / span,
        hist,
        raw,
        recv,
        missing,
        lapped,
        rss,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; no other arguments are taken.
    let seconds: f64 = std::env::var("W2R_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let rates: Vec<u64> = std::env::var("W2R_RATES")
        .unwrap_or_else(|_| "10000,100000,250000,500000,1000000,2000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let dir: PathBuf = std::env::temp_dir().join(format!("ib-stream-w2r-{}", std::process::id()));
    let mut results = Vec::new();
    for &rate in &rates {
        let r = run_rate(rate, seconds, &dir);
        let h = &r.hist;
        println!(
            "rate={} achieved_tps={:.0} p50_ns={} p99_ns={} p999_ns={} max_ns={} raw_p50_ns={} raw_p99_ns={} raw_p999_ns={} recv_p50_ns={} recv_p99_ns={} recv_p999_ns={} ticks={} missing={} lapped={} lossless={} engine_rss_mb={:.1} (anon {:.1}, shm {:.1}, file {:.1})",
            r.rate,
            r.achieved,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            r.raw.value_at_quantile(0.5),
            r.raw.value_at_quantile(0.99),
            r.raw.value_at_quantile(0.999),
            r.recv.value_at_quantile(0.5),
            r.recv.value_at_quantile(0.99),
            r.recv.value_at_quantile(0.999),
            r.raw.len(),
            r.missing,
            r.lapped,
            r.lossless(),
            r.rss.get("VmRSS").copied().unwrap_or(0.0),
            r.rss.get("RssAnon").copied().unwrap_or(0.0),
            r.rss.get("RssShmem").copied().unwrap_or(0.0),
            r.rss.get("RssFile").copied().unwrap_or(0.0),
        );
        results.push(r);
    }
    let max_lossless = results
        .iter()
        .filter(|r| r.lossless())
        .map(|r| r.achieved.round() as u64)
        .max()
        .unwrap_or(0);
    let at_100k = results
        .iter()
        .find(|r| r.rate == 100_000)
        .unwrap_or(&results[0]);
    // Two parties: the headline rate, then one tick per read.
    let pair = run_pair(100_000, seconds, &dir);
    let single = run_pair(1_000, seconds, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    for p in [&pair, &single] {
        println!(
            "two_party rate={} committed_tps={:.0} reads={} kernel_p50_ns={} kernel_p99_ns={} kernel_p999_ns={} read_commit_p50_ns={} read_commit_p99_ns={} engine_rss_mb={:.1}",
            p.rate,
            p.committed_tps,
            p.read_commit.count,
            p.kernel.percentile(0.5).unwrap_or(0),
            p.kernel.percentile(0.99).unwrap_or(0),
            p.kernel.percentile(0.999).unwrap_or(0),
            p.read_commit.percentile(0.5).unwrap_or(0),
            p.read_commit.percentile(0.99).unwrap_or(0),
            p.rss.get("VmRSS").copied().unwrap_or(0.0),
        );
    }
    let h = &at_100k.hist;
    println!(
        "bench=wire_to_ring rate={} kernel_p50_ns={} kernel_p99_ns={} read_commit_p50_ns={} p99_ns_3proc={} max_lossless_tps={} engine_rss_mb={:.1} read_commit_p50_ns_100k={} p50_ns_3proc={} recv_p50_ns_3proc={} recv_p99_ns_3proc={}",
        pair.rate,
        pair.kernel.percentile(0.5).unwrap_or(0),
        pair.kernel.percentile(0.99).unwrap_or(0),
        single.read_commit.percentile(0.5).unwrap_or(0),
        h.value_at_quantile(0.99),
        max_lossless,
        pair.rss.get("VmRSS").copied().unwrap_or(0.0),
        pair.read_commit.percentile(0.5).unwrap_or(0),
        h.value_at_quantile(0.5),
        at_100k.recv.value_at_quantile(0.5),
        at_100k.recv.value_at_quantile(0.99),
    );
}
