//! Ingest throughput on one stream: tws-sim in `asap` mode (as fast as the client reads)
//! serving tick-by-tick BidAsk for AAPL, read by
//! - ours: `ib-stream engine` (busy-poll, pinned to core 0) publishing to the ring, counted
//!   from the ring's head;
//! - the Rust `ibapi` crate (5.5.0, blocking client) counting subscription items;
//! - the official Python `ibapi` (EClient/EWrapper) counting `tickByTickBidAsk` callbacks;
//! - `ib_async` counting ticks delivered to the ticker (the simulator at version 178, the
//!   newest ib_async speaks).
//!
//! Each client reads for `INGEST_SECONDS` (default 5) after a 1 s warm-up, on core 0; the
//! simulator is pinned to core 1. The Python clients run from `.venv` (scripts/setup-venv.sh); when it is
//! missing their figures are reported as 0 with a note.
//!
//! `cargo bench --bench ingest`. Last line:
//! `bench=ingest ours_tps= ibapi_rs_tps= py_ibapi_tps= ib_async_tps= vs_ibapi_rs= vs_py_ibapi= vs_ib_async=`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ib_stream::ipc::{RingReader, StartAt};

const SIM: &str = env!("CARGO_BIN_EXE_tws-sim");
const ENGINE: &str = env!("CARGO_BIN_EXE_ib-stream");
const AAPL: i32 = 265_598;
const WARMUP: Duration = Duration::from_secs(1);

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sim(extra: &[&str]) -> (Kill, u16) {
    let mut c = if Path::new("/usr/bin/taskset").exists() {
        let mut c = Command::new("/usr/bin/taskset");
        c.args(["-c", "1", SIM]);
        c
    } else {
        Command::new(SIM)
    };
    let mut child = c
        .args([
            "--port",
            "0",
            "--mode",
            "asap",
            "--tbt-same-instrument-secs",
            "0",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tws-sim");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    (Kill(child), port)
}

/// utime + stime of a process in seconds (/proc/<pid>/stat, fields 14 and 15).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // rest starts at field 3 (state): utime is field 14, stime 15.
    (ticks(11) + ticks(12)) / 100.0
}

fn ours(seconds: f64, dir: &Path) -> (f64, f64, f64) {
    let (_sim, port) = sim(&[]);
    let shm = dir.join("shm");
    let _ = std::fs::remove_dir_all(&shm);
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
            .args(["--set", "IB_STREAM_LOG_LEVEL=warn"])
            .args(["--set", "IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:bid_ask"])
            .args(["engine", "--tbt-same-instrument-ms", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("engine"),
    );
    let ring = RingReader::open_wait(
        &shm.join("ticks.ring"),
        StartAt::Newest,
        Duration::from_secs(20),
        Duration::from_millis(5),
    )
    .expect("ring");
    // Wait for data, warm up, then count published records over the window.
    let until = Instant::now() + Duration::from_secs(20);
    while ring.head() < 100 {
        assert!(Instant::now() < until, "no data from the engine");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(WARMUP);
    let (h0, t0, c0) = (ring.head(), Instant::now(), cpu_secs(engine.0.id()));
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (h1, t1, c1) = (ring.head(), Instant::now(), cpu_secs(engine.0.id()));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", engine.0.id())).unwrap_or_default();
    let rss_mb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0);
    // Heartbeats are one record a second: negligible, but subtract them honestly.
    let secs = (t1 - t0).as_secs_f64();
    let records = (h1 - h0) as f64 - secs.ceil();
    (records / secs, rss_mb, records / (c1 - c0).max(0.01))
}

fn ibapi_rs(seconds: f64) -> (f64, f64) {
    use ibapi::client::blocking::Client;
    use ibapi::contracts::{Contract, Exchange};
    use ibapi::market_data::IgnoreSize;
    use ibapi::subscriptions::SubscriptionItem;
    let (_sim, port) = sim(&[]);
    let client = Client::builder()
        .address(format!("127.0.0.1:{port}"))
        .client_id(41)
        .max_reconnect_attempts(0)
        .connect()
        .expect("ibapi connect");
    let contract = Contract {
        contract_id: AAPL,
        exchange: Exchange::from("SMART"),
        ..Default::default()
    };
    let sub = client
        .tick_by_tick(&contract, 0)
        .bid_ask(IgnoreSize::No)
        .expect("BidAsk");
    let count = |d: Duration| {
        let until = Instant::now() + d;
        let mut n = 0u64;
        while Instant::now() < until {
            match sub.next_timeout(Duration::from_secs(5)) {
                Some(Ok(SubscriptionItem::Data(_))) => n += 1,
                Some(Ok(SubscriptionItem::Notice(_))) => {}
                Some(Err(e)) => panic!("ibapi: {e:?}"),
                None => break,
            }
        }
        n
    };
    count(WARMUP);
    let (t0, c0) = (Instant::now(), cpu_secs(std::process::id()));
    let n = count(Duration::from_secs_f64(seconds));
    let (secs, cpu) = (
        t0.elapsed().as_secs_f64(),
        cpu_secs(std::process::id()) - c0,
    );
    (n as f64 / secs, n as f64 / cpu.max(0.01))
}

const PY_IBAPI: &str = r#"
import sys, threading, time
from ibapi.client import EClient
from ibapi.wrapper import EWrapper
from ibapi.contract import Contract
port, secs = int(sys.argv[1]), float(sys.argv[2])
class App(EWrapper, EClient):
    def __init__(self):
        EClient.__init__(self, self)
        self.n = 0
        self.ready = threading.Event()
    def nextValidId(self, orderId):
        self.ready.set()
    def tickByTickBidAsk(self, reqId, time, bidPrice, askPrice, bidSize, askSize, attrib):
        self.n += 1
    def error(self, *args, **kwargs):
        pass
app = App()
app.connect("127.0.0.1", port, 42)
threading.Thread(target=app.run, daemon=True).start()
app.ready.wait(20)
c = Contract(); c.conId = 265598; c.exchange = "SMART"
app.reqTickByTickData(1, c, "BidAsk", 0, False)
time.sleep(1.0)
n0, t0, c0 = app.n, time.time(), time.process_time()
time.sleep(secs)
n1, t1, c1 = app.n, time.time(), time.process_time()
print(int((n1 - n0) / (t1 - t0)), int((n1 - n0) / max(c1 - c0, 0.01)))
sys.stdout.flush()
app.disconnect()
"#;

const PY_IB_ASYNC: &str = r#"
import sys, time
from ib_async import IB, Contract
port, secs = int(sys.argv[1]), float(sys.argv[2])
ib = IB()
ib.connect("127.0.0.1", port, clientId=43, timeout=20)
n = [0]
t = ib.reqTickByTickData(Contract(conId=265598, exchange="SMART"), "BidAsk")
def on_update(ticker):
    n[0] += len(ticker.tickByTicks)
t.updateEvent += on_update
ib.sleep(1.0)
n0, t0, c0 = n[0], time.time(), time.process_time()
ib.sleep(secs)
n1, t1, c1 = n[0], time.time(), time.process_time()
print(int((n1 - n0) / (t1 - t0)), int((n1 - n0) / max(c1 - c0, 0.01)))
sys.stdout.flush()
ib.disconnect()
"#;

/// (ticks/s, ticks per CPU-second) printed by a Python client.
fn python(
    script: &str,
    sim_args: &[&str],
    seconds: f64,
    dir: &Path,
    venv: &Path,
) -> Option<(f64, f64)> {
    let py = venv.join("bin/python");
    if !py.exists() {
        return None;
    }
    // A Python client that saw no tick at all (it happened once in many runs: the client
    // printed 0 with its errors silenced) gets one more try on a fresh simulator, and says so.
    for attempt in 1..=2 {
        let got = python_once(&py, script, sim_args, seconds, dir);
        match got {
            Some((tps, _)) if tps > 0.0 => return got,
            _ if attempt == 1 => eprintln!("a Python client saw no tick; trying it once more"),
            _ => return got,
        }
    }
    None
}

fn python_once(
    py: &Path,
    script: &str,
    sim_args: &[&str],
    seconds: f64,
    dir: &Path,
) -> Option<(f64, f64)> {
    let (_sim, port) = sim(sim_args);
    let file = dir.join("client.py");
    std::fs::write(&file, script).unwrap();
    let out = Command::new(py)
        .arg(&file)
        .arg(port.to_string())
        .arg(seconds.to_string())
        // Both clients print a traceback from their reader thread at disconnect; noise.
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.trim().lines().last()?.split_whitespace();
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

fn main() {
    let seconds: f64 = std::env::var("INGEST_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let dir: PathBuf =
        std::env::temp_dir().join(format!("ib-stream-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv");
    // Every client gets core 0 (ours is pinned there by its setting; the peers inherit this
    // thread's affinity: the ibapi crate's threads and the Python processes), the simulator
    // core 1.
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: 0 });

    let (ours_tps, rss, per_cpu) = ours(seconds, &dir);
    println!(
        "ours: {ours_tps:.0} ticks/s (engine RSS {rss:.1} MB; {per_cpu:.0} ticks per engine CPU-second)"
    );
    let (rs, rs_cpu) = ibapi_rs(seconds);
    println!("ibapi (Rust crate 5.5.0): {rs:.0} ticks/s ({rs_cpu:.0} per CPU-second)");
    let not_run = "not run (no .venv; scripts/setup-venv.sh)";
    let show = |x: Option<(f64, f64)>| {
        x.map_or(not_run.to_string(), |(v, c)| {
            format!("{v:.0} ticks/s ({c:.0} per CPU-second)")
        })
    };
    let py = python(PY_IBAPI, &[], seconds, &dir, &venv);
    println!("ibapi (Python): {}", show(py));
    let ia = python(PY_IB_ASYNC, &["--max-version", "178"], seconds, &dir, &venv);
    println!("ib_async: {}", show(ia));
    let per_cpu_ratio = |x: Option<f64>| {
        x.filter(|v| *v > 0.0)
            .map_or("n/a".to_string(), |v| format!("{:.1}", per_cpu / v))
    };
    // Per CPU-second: what each client costs, independent of how much of a core the
    // machine's other load left it.
    println!(
        "per_cpu ours={per_cpu:.0} ibapi_rs={rs_cpu:.0} py_ibapi={:.0} ib_async={:.0} vs_ibapi_rs={} vs_py_ibapi={} vs_ib_async={}",
        py.map_or(0.0, |p| p.1),
        ia.map_or(0.0, |p| p.1),
        per_cpu_ratio(Some(rs_cpu)),
        per_cpu_ratio(py.map(|p| p.1)),
        per_cpu_ratio(ia.map(|p| p.1)),
    );
    let py = py.map(|p| p.0);
    let ia = ia.map(|p| p.0);
    let _ = std::fs::remove_dir_all(&dir);
    let ratio = |x: Option<f64>| {
        x.filter(|v| *v > 0.0)
            .map_or("n/a".to_string(), |v| format!("{:.1}", ours_tps / v))
    };
    println!(
        "bench=ingest ours_tps={:.0} ibapi_rs_tps={:.0} py_ibapi_tps={:.0} ib_async_tps={:.0} vs_ibapi_rs={} vs_py_ibapi={} vs_ib_async={}",
        ours_tps,
        rs,
        py.unwrap_or(0.0),
        ia.unwrap_or(0.0),
        ratio(Some(rs)),
        ratio(py),
        ratio(ia),
    );
}
