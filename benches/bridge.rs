//! Bridge and mirror benchmark (issue 16): ticks through `ib-stream bridge` → NATS
//! JetStream → `ib-stream mirror`, from ring A to ring C on this machine, beside the raw
//! floor of the same nats-server in the same run.
//!
//! `cargo bench --bench bridge` (about a minute; env `BRIDGE_TICKS` for the throughput
//! phases, default 300 000; `BRIDGE_SECS` per paced rate, default 3). Needs `nats-server`
//! (`scripts/install-nats.sh`). One nats-server node with file storage on a temporary
//! directory; the bridge and mirror are the real binaries, started as for `up --role mirror`.
//!
//! - floor: 64-byte messages published with async-nats (JetStream publishes pipelined 4 096
//!   deep, the bridge's default window) and consumed by a pull consumer (batches of 2 000,
//!   the mirror's), no logic of ours; ticks/s from the first publish to the last delivery.
//! - ours, throughput: the bench writes ticks into ring A as fast as the ring takes them and
//!   reads ring C until the last one arrives; every record on C must equal the one written
//!   on A (same sequence and content), or the bench fails.
//! - ours, latency: ticks paced at 10k and 100k/s, each stamped with its intended send time;
//!   latency is C's read time minus that (coordinated omission corrected: a late write counts
//!   its lateness). The bench thread sleeps 20 µs when it has nothing to do, so figures
//!   include up to that much of its own polling.
//!
//! - ours runs with `--batch 64` (env `BRIDGE_BATCH`): the records the bridge finds in the
//!   ring at once go as one message of up to 64; one throughput round with `--batch 1` (one
//!   message per record on its instrument's subject, the default) runs in between.
//!
//! - a second floor carries the same 64 ticks a message as ours (4 096-byte messages),
//!   ticks/s: the fair floor for a batching bridge (`floor_batched_tps`, `vs_floor_batched`).
//!
//! The last line is `bench=bridge tps= floor_tps= vs_floor= p50_us= p99_us= ...`, p50/p99
//! at 10k ticks/s (the goal's rate) and `p50_100k_us`/`p99_100k_us` at 100k, `batch=`,
//! `tps_batch1=`, `floor_batched_tps=` and `vs_floor_batched=`.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use ib_stream_ipc::{Record, RecordKind, RingReader, RingWriter, ShmOptions, StartAt};

const IB: &str = env!("CARGO_BIN_EXE_ib-stream");
/// The bridge's default publish window (`--inflight`).
const WINDOW: usize = 4096;
/// The mirror's pull batch.
const PULL_BATCH: usize = 2000;
const CON_ID: u32 = 711_280_073;
/// Ring A's and C's capacity: the throughput phase must not lap the bridge.
const CAPACITY: u64 = 1 << 21;
/// How long a phase may go without progress before the bench gives up.
const STALL: Duration = Duration::from_secs(30);

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A child process killed when dropped.
struct Proc(Child, &'static str);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(st) = self.0.try_wait()? {
            bail!("{} exited early: {st}", self.1);
        }
        Ok(())
    }
}

fn spawn(name: &'static str, log: &Path, cmd: &mut Command) -> anyhow::Result<Proc> {
    let out = std::fs::File::create(log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Proc(child, name))
}

fn start_nats(dir: &Path) -> anyhow::Result<(Proc, String)> {
    let port = free_port()?;
    let store = dir.join("js");
    let mut cmd = Command::new("nats-server");
    cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&store);
    let mut p = spawn("nats-server", &dir.join("nats.log"), &mut cmd).context(
        "nats-server is needed: scripts/install-nats.sh installs it (the test command runs it)",
    )?;
    let since = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        p.check_alive()?;
        ensure!(
            since.elapsed() < STALL,
            "nats-server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((p, format!("nats://127.0.0.1:{port}")))
}

/// The raw floor: `n` 64-byte ticks through JetStream with async-nats alone, `per` to a
/// message (1: the floor, one message per tick; 64: the same batching as ours);
/// ticks/s.
async fn floor(url: &str, n: u64, per: u64) -> anyhow::Result<f64> {
    let per = per.max(1);
    let n_msgs = n.div_ceil(per);
    let client = async_nats::connect(url).await?;
    let js = jetstream::context::ContextBuilder::new()
        .max_ack_inflight(WINDOW + 64)
        .build(client);
    let s = js
        .create_stream(stream::Config {
            name: "FLOOR".into(),
            subjects: vec!["floor.>".into()],
            ..Default::default()
        })
        .await?;
    let c: consumer::PullConsumer = s
        .create_consumer(consumer::pull::Config {
            durable_name: Some("floor".into()),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let mut msgs = c
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .messages()
        .await?;
    let reader = tokio::spawn(async move {
        let mut got = 0u64;
        while got < n_msgs {
            match tokio::time::timeout(STALL, msgs.next()).await {
                Ok(Some(Ok(m))) => {
                    ensure!(
                        m.payload.len() == 64 * per as usize,
                        "floor: a {}-byte message",
                        m.payload.len()
                    );
                    got += 1;
                }
                Ok(Some(Err(e))) => bail!("floor consumer: {e}"),
                Ok(None) => bail!("floor consumer ended after {got}"),
                Err(_) => bail!("floor consumer: nothing for {STALL:?} after {got}"),
            }
        }
        Ok(Instant::now())
    });
    let payload = bytes::Bytes::from(vec![7u8; 64 * per as usize]);
    let start = Instant::now();
    let mut acks = VecDeque::with_capacity(WINDOW);
    for _ in 0..n_msgs {
        if acks.len() >= WINDOW
            && let Some(a) = acks.pop_front()
        {
            a.await?;
        }
        acks.push_back(js.publish("floor.x", payload.clone()).await?);
    }
    for a in acks {
        a.await?;
    }
    let end = reader.await??;
    let tps = (n_msgs * per) as f64 / (end - start).as_secs_f64();
    js.delete_stream("FLOOR").await?;
    Ok(tps)
}

/// Ring A (written here), the bridge and the mirror, and a reader of ring C.
struct Pipeline {
    a: RingWriter,
    c: RingReader,
    next_hb: Instant,
    _bridge: Proc,
    _mirror: Proc,
    bridge_log: PathBuf,
    mirror_log: PathBuf,
}

/// Tick `seq`'s content: a function of its sequence, so C's copy can be checked.
fn tick(seq: u64, stamp: i64) -> Record {
    let mut r = Record::ZERO;
    r.ts_recv = stamp;
    r.ts_event = stamp;
    r.instrument_id = CON_ID;
    r.kind = RecordKind::TbtBidAsk as u8;
    let p = 21_000_000_000_000 + (seq % 997) as i64 * 250_000_000;
    r.body = [
        p,
        p + 250_000_000,
        (seq % 13) as i64 * 100_000_000,
        100_000_000,
    ];
    r
}

/// Tick `seq` as the ring stores it.
fn stored(seq: u64, stamp: i64) -> Record {
    Record {
        seq,
        ..tick(seq, stamp)
    }
}

impl Pipeline {
    /// Starts the bridge and the mirror, writes the first tick and waits until ring C has it.
    fn start(dir: &Path, url: &str, batch: u64) -> anyhow::Result<Pipeline> {
        let dir = dir.join(format!("batch{batch}"));
        let dir = dir.as_path();
        let env = format!("bench{batch}");
        let (shm_a, shm_c) = (dir.join("a"), dir.join("c"));
        std::fs::create_dir_all(&shm_a)?;
        std::fs::create_dir_all(&shm_c)?;
        let mut a = RingWriter::create(
            &shm_a.join(ib_stream_ipc::RING_FILE_NAME),
            CAPACITY,
            &ShmOptions::default(),
        )?;
        a.heartbeat(unix_ns());
        let ib = |shm: &Path| {
            let mut c = Command::new(IB);
            c.args(["--env", "development", "--set"])
                .arg(format!("IB_STREAM_SHM_DIR={}", shm.display()))
                .arg("--set")
                .arg(format!("IB_STREAM_RING_CAPACITY={CAPACITY}"));
            c
        };
        let bridge_log = dir.join("bridge.log");
        let mirror_log = dir.join("mirror.log");
        let mut bridge = spawn(
            "bridge",
            &bridge_log,
            ib(&shm_a)
                .args(["bridge", "--stream-env", &env, "--nats-url", url])
                .args(["--batch", &batch.to_string()]),
        )?;
        let mut mirror = spawn(
            "mirror",
            &mirror_log,
            ib(&shm_c).args([
                "mirror",
                "--stream-env",
                &env,
                "--name",
                "bench",
                "--nats-url",
                url,
            ]),
        )?;
        a.publish(&tick(1, 0));
        // The mirror creates ring C when the run's first record arrives.
        let c_path = shm_c.join(ib_stream_ipc::RING_FILE_NAME);
        let since = Instant::now();
        let mut c = loop {
            if let Ok(r) = RingReader::open(&c_path, StartAt::Oldest) {
                break r;
            }
            bridge.check_alive()?;
            mirror.check_alive()?;
            ensure!(
                since.elapsed() < STALL,
                "ring C never appeared (logs: {}, {})",
                bridge_log.display(),
                mirror_log.display()
            );
            a.heartbeat(unix_ns());
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut buf = [Record::ZERO; 1];
        while c.read_batch(&mut buf).records == 0 {
            ensure!(
                since.elapsed() < STALL,
                "the first tick never reached ring C"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        ensure!(
            buf[0] == stored(1, 0),
            "C's first record differs from A's: {:?}",
            buf[0]
        );
        Ok(Pipeline {
            a,
            c,
            next_hb: Instant::now(),
            _bridge: bridge,
            _mirror: mirror,
            bridge_log,
            mirror_log,
        })
    }

    /// The ring writer's liveness word, which followers check (the bridge's gives up on a
    /// writer silent for 5 s).
    fn heartbeat(&mut self) {
        let now = Instant::now();
        if now >= self.next_hb {
            self.a.heartbeat(unix_ns());
            self.next_hb = now + Duration::from_millis(100);
        }
    }

    fn stalled(&self, what: &str, since: Instant, done: u64, of: u64) -> anyhow::Result<()> {
        ensure!(
            since.elapsed() < STALL,
            "{what}: no progress for {STALL:?} at {done} of {of} (logs: {}, {})",
            self.bridge_log.display(),
            self.mirror_log.display()
        );
        Ok(())
    }

    /// `n` ticks written as fast as ring A takes them (the ring holds them all: nobody
    /// is lapped) and read from ring C, each checked; ticks/s from first write to last read.
    fn throughput(&mut self, n: u64) -> anyhow::Result<f64> {
        let first = self.a.last_seq() + 1;
        let last = first + n - 1;
        let mut batch = Vec::with_capacity(1024);
        let mut buf = vec![Record::ZERO; 4096];
        let mut next_write = first;
        let mut next_read = first;
        let mut progress = Instant::now();
        let start = Instant::now();
        while next_read <= last {
            if next_write <= last {
                batch.clear();
                let end = (next_write + 1023).min(last);
                batch.extend((next_write..=end).map(|s| tick(s, 0)));
                self.a.publish_batch(&batch);
                next_write = end + 1;
            }
            self.heartbeat();
            let got = self.c.read_batch(&mut buf);
            for r in &buf[..got.records] {
                ensure!(
                    *r == stored(next_read, 0),
                    "ring C's record {} differs from A's: {r:?}",
                    next_read
                );
                next_read += 1;
            }
            if got.records > 0 {
                progress = Instant::now();
            } else {
                self.stalled("throughput", progress, next_read - first, n)?;
                if next_write > last {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    }

    /// Ticks paced at `rate`/s for `secs`, each stamped with its intended write time (ns
    /// since `base`); the histogram of C's read time minus that, in ns.
    fn paced(&mut self, rate: u64, secs: u64) -> anyhow::Result<Histogram<u64>> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
        let n = rate * secs;
        let first = self.a.last_seq() + 1;
        let last = first + n - 1;
        let base = Instant::now();
        let period_ns = 1e9 / rate as f64;
        let mut buf = vec![Record::ZERO; 4096];
        let (mut next_write, mut next_read) = (first, first);
        let mut progress = Instant::now();
        while next_read <= last {
            let now_ns = base.elapsed().as_nanos() as i64;
            let mut wrote = false;
            while next_write <= last {
                let due = ((next_write - first) as f64 * period_ns) as i64;
                if due > now_ns {
                    break;
                }
                self.a.publish(&tick(next_write, due));
                next_write += 1;
                wrote = true;
            }
            self.heartbeat();
            let got = self.c.read_batch(&mut buf);
            let read_ns = base.elapsed().as_nanos() as i64;
            for r in &buf[..got.records] {
                ensure!(
                    r.seq == next_read,
                    "ring C: {} where {next_read} was due",
                    r.seq
                );
                h.record((read_ns - r.ts_event).max(1) as u64)?;
                next_read += 1;
            }
            if got.records > 0 {
                progress = Instant::now();
            } else {
                self.stalled("paced", progress, next_read - first, n)?;
                if !wrote {
                    std::thread::sleep(Duration::from_micros(20));
                }
            }
        }
        Ok(h)
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench bridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn run() -> anyhow::Result<()> {
    let n = env_num("BRIDGE_TICKS", 300_000).max(1000);
    let secs = env_num("BRIDGE_SECS", 3).max(1);
    let batch = env_num("BRIDGE_BATCH", 64).clamp(1, 1024);
    ensure!(
        n < CAPACITY / 2,
        "BRIDGE_TICKS must stay below {}",
        CAPACITY / 2
    );
    let dir = tempfile::tempdir()?;
    let (_nats, url) = start_nats(dir.path())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Interleaved, floor first: the same server's disk and the machine's load for both.
    let floor_a = rt.block_on(floor(&url, n, 1))?;
    eprintln!("floor: {floor_a:.0} msgs/s");
    let floor_batched_a = rt.block_on(floor(&url, n, batch))?;
    eprintln!("floor, {batch} ticks a message: {floor_batched_a:.0} ticks/s");
    let mut p = Pipeline::start(dir.path(), &url, batch)?;
    let ours_a = p.throughput(n)?;
    eprintln!("ours, --batch {batch}: {ours_a:.0} ticks/s");
    let mut single = Pipeline::start(dir.path(), &url, 1)?;
    let single_tps = single.throughput(n / 4)?;
    eprintln!("ours, --batch 1: {single_tps:.0} ticks/s");
    drop(single);
    let floor_b = rt.block_on(floor(&url, n, 1))?;
    eprintln!("floor: {floor_b:.0} msgs/s");
    let floor_batched_b = rt.block_on(floor(&url, n, batch))?;
    eprintln!("floor, {batch} ticks a message: {floor_batched_b:.0} ticks/s");
    let ours_b = p.throughput(n)?;
    eprintln!("ours, --batch {batch}: {ours_b:.0} ticks/s");
    let (tps, floor_tps) = ((ours_a + ours_b) / 2.0, (floor_a + floor_b) / 2.0);
    let floor_batched_tps = (floor_batched_a + floor_batched_b) / 2.0;
    let h10 = p.paced(10_000, secs)?;
    let h100 = p.paced(100_000, secs)?;
    for (rate, h) in [("10k", &h10), ("100k", &h100)] {
        eprintln!(
            "paced {rate}/s: p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  max {:.1} us  ({} ticks)",
            us(h, 0.5),
            us(h, 0.99),
            us(h, 0.999),
            h.max() as f64 / 1000.0,
            h.len()
        );
    }
    println!(
        "bench=bridge tps={tps:.0} floor_tps={floor_tps:.0} vs_floor={:.2} p50_us={:.1} p99_us={:.1} p50_100k_us={:.1} p99_100k_us={:.1} batch={batch} tps_batch1={single_tps:.0} floor_batched_tps={floor_batched_tps:.0} vs_floor_batched={:.2}",
        tps / floor_tps,
        us(&h10, 0.5),
        us(&h10, 0.99),
        us(&h100, 0.5),
        us(&h100, 0.99),
        tps / floor_batched_tps,
    );
    Ok(())
}
