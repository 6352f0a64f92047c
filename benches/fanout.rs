//! Fan-out benchmark of `ib-stream serve`: ticks published into a real shared-memory ring and
//! delivered to many SSE and WebSocket clients over loopback TCP, compared with a Python peer
//! built like the original IB-Stream's fan-out (`benches/fanout_py_peer.py`).
//!
//! `cargo bench --bench fanout [-- --clients 100 --ticks 10000 --rate 1000 --paced-secs 2
//! --no-py --no-burst]`
//!
//! Layout, as a deployment has it: the server (`app()` behind [`nodelay_listener`], as
//! `ib-stream serve` runs it) on its own multi-threaded runtime with the ring tailer thread;
//! the clients on a second runtime (standing in for other processes: their tasks never share
//! a run queue with the server's); the publisher on its own OS thread (the engine is another
//! process). All of it shares the machine's cores, so client CPU is counted against the
//! server's latency: the figures are pessimistic for a server whose clients are remote.
//!
//! Phases: (1) SSE burst: every client must receive every tick; messages per second =
//! clients x ticks / time from the first publish to the last delivery. (2) WebSocket burst,
//! the same. (3) SSE paced at `--rate` ticks/s for `--paced-secs`: publish-to-client latency
//! (the tick's `st`, stamped when the record is built just before it is published, against
//! the client's clock when it has read the event), with the CPU the server's threads and the
//! clients' threads spent per delivered message; then the same at two lighter loads (100
//! clients x 100 ticks/s, 10 clients x 1000 ticks/s). (4) The Python peer, burst, read by the
//! same SSE clients. Queues are sized so that no tick is conflated: this measures delivery,
//! not the slow-client policy.
//!
//! The last line is the summary: the issue's keys first (`p99_us` is the `--clients` x
//! `--rate` point), then `p99_us_100x100`, `p99_us_10x1k`, `cpu_ms_per_100k` (server CPU per
//! 100k deliveries, paced) and `cpu_ms_per_100k_burst`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ib_stream::config::TrackedContract;
use ib_stream::serve::{AppState, ServeConfig, WsLimits, app, hub::SlowPolicy, nodelay_listener};
use ib_stream_ipc::ring::RING_FILE_NAME;
use ib_stream_ipc::{PRICE_SCALE, Quote, Record, RecordKind, RingWriter, SIZE_SCALE, ShmOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

const CON: u32 = 711_280_073;

/// Thread names (as `/proc` shows them, 15 bytes at most) that make up the server.
const SERVER_THREADS: [&str; 2] = ["serve-worker", "ib-stream-taile"];
/// The ring tailer alone (it polls the ring: part of its CPU is spent whether ticks come or not).
const TAILER_THREAD: [&str; 1] = ["ib-stream-taile"];
const CLIENT_THREADS: [&str; 1] = ["bench-client"];

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn quote(i: i64) -> Record {
    let mut r = Record::quote(
        CON,
        now_us() * 1000,
        Quote {
            bid_price: (21_000 + i % 50) * PRICE_SCALE,
            ask_price: (21_001 + i % 50) * PRICE_SCALE,
            bid_size: 3 * SIZE_SCALE,
            ask_size: 4 * SIZE_SCALE,
        },
    );
    r.ts_recv = now_us() * 1000;
    r
}

/// CPU time (ns, from `/proc/self/task/*/schedstat`) of this process's threads whose names
/// start with one of `names`.
fn cpu_ns(names: &[&str]) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut total = 0;
    for t in dir.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !names.iter().any(|n| comm.starts_with(n)) {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

struct Args {
    clients: usize,
    ticks: usize,
    rate: u64,
    paced_secs: u64,
    py: bool,
    burst: bool,
}

fn args() -> Args {
    let mut a = Args {
        clients: 100,
        ticks: 10_000,
        rate: 1000,
        paced_secs: 2,
        py: true,
        burst: true,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        let val = |what: &str| -> u64 {
            v.get(i + 1)
                .and_then(|x| x.parse().ok())
                .unwrap_or_else(|| panic!("{what} N"))
        };
        match v[i].as_str() {
            "--clients" => {
                a.clients = val("--clients") as usize;
                i += 1;
            }
            "--ticks" => {
                a.ticks = val("--ticks") as usize;
                i += 1;
            }
            "--rate" => {
                a.rate = val("--rate").max(1);
                i += 1;
            }
            "--paced-secs" => {
                a.paced_secs = val("--paced-secs").max(1);
                i += 1;
            }
            "--no-py" => a.py = false,
            "--no-burst" => a.burst = false,
            _ => {} // cargo bench passes `--bench`
        }
        i += 1;
    }
    a
}

/// Reads an SSE response until `ticks` tick events (or a `complete`); returns the latencies
/// (µs) of the ticks.
async fn sse_client(addr: SocketAddr, path: String, ticks: usize) -> Vec<u32> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::with_capacity(1 << 16);
    let mut chunk = vec![0u8; 1 << 16];
    let mut lat = Vec::with_capacity(ticks);
    let mut start = 0;
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        if n == 0 {
            return lat;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(p) = buf[start..].windows(2).position(|w| w == b"\n\n") {
            let ev = &buf[start..start + p];
            start += p + 2;
            if ev.windows(11).any(|w| w == b"event: tick") {
                if let Some(q) = ev.windows(5).position(|w| w == b"\"st\":") {
                    let st = ev[q + 5..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .fold(0i64, |a, b| a * 10 + i64::from(b - b'0'));
                    lat.push((now_us() - st).clamp(0, u32::MAX as i64) as u32);
                }
                if lat.len() == ticks {
                    return lat;
                }
            } else if ev.windows(15).any(|w| w == b"event: complete") {
                return lat;
            }
        }
        if start > 1 << 15 {
            buf.drain(..start);
            start = 0;
        }
    }
}

async fn ws_client(addr: SocketAddr, ticks: usize) -> usize {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v3/ws"))
        .await
        .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
        r#"{{"type":"subscribe","id":1,"contract_id":{CON},"tick_types":["bid_ask"]}}"#
    )))
    .await
    .unwrap();
    let mut n = 0;
    while let Some(Ok(m)) = ws.next().await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m
            && t.as_str().contains("\"tt\":\"bid_ask\"")
        {
            n += 1;
            if n == ticks {
                break;
            }
        }
    }
    n
}

fn publish_burst(writer: &mut RingWriter, ticks: usize) {
    let batch: Vec<Record> = (0..64).map(quote).collect();
    let mut left = ticks;
    while left > 0 {
        let n = left.min(batch.len());
        let mut b = batch[..n].to_vec();
        let now = now_us() * 1000;
        for r in &mut b {
            r.ts_recv = now;
        }
        writer.publish_batch(&b);
        left -= n;
    }
}

async fn wait_sinks(st: &AppState, n: u64) {
    while st
        .hub
        .stats()
        .sinks
        .load(std::sync::atomic::Ordering::Relaxed)
        != n
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn quantile(v: &[u32], q: f64) -> u32 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

/// What a paced phase measured.
struct Paced {
    /// Publish-to-client latencies, µs, sorted.
    lat: Vec<u32>,
    /// CPU of the server's threads per delivered message, µs.
    server_cpu_us: f64,
    /// CPU of the clients' threads per delivered message, µs.
    client_cpu_us: f64,
    /// CPU of the ring tailer thread (included in `server_cpu_us`), ms per second.
    tailer_ms_per_s: f64,
}

impl Paced {
    fn line(&self, clients: usize, rate: u64) -> String {
        format!(
            "paced {clients} clients x {rate} ticks/s over {} deliveries: p50_us={} p90_us={} \
             p99_us={} max_us={} server_cpu_us_per_msg={:.2} client_cpu_us_per_msg={:.2} \
             tailer_cpu_ms_per_s={:.1}",
            self.lat.len(),
            quantile(&self.lat, 0.5),
            quantile(&self.lat, 0.9),
            quantile(&self.lat, 0.99),
            self.lat.last().copied().unwrap_or(0),
            self.server_cpu_us,
            self.client_cpu_us,
            self.tailer_ms_per_s,
        )
    }
}

/// SSE clients at `rate` ticks/s for `secs`, the publisher on its own thread (it sleeps to
/// each tick's due time; a late wake-up delays the publish, not the measured latency, as
/// `st` is stamped when the record is built).
async fn paced(
    addr: SocketAddr,
    state: &AppState,
    mut writer: RingWriter,
    clients: usize,
    rate: u64,
    secs: u64,
) -> (RingWriter, Paced) {
    let path = format!("/v3/stream/{CON}?tick_types=bid_ask");
    let n = (rate * secs) as usize;
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(sse_client(addr, path.clone(), n)))
        .collect();
    wait_sinks(state, clients as u64).await;
    let (srv0, cli0, tl0) = (
        cpu_ns(&SERVER_THREADS),
        cpu_ns(&CLIENT_THREADS),
        cpu_ns(&TAILER_THREAD),
    );
    let t0 = Instant::now();
    let publisher = std::thread::Builder::new()
        .name("bench-publish".into())
        .spawn(move || {
            let period = Duration::from_nanos(1_000_000_000 / rate);
            let t0 = Instant::now();
            for i in 0..n {
                let due = t0 + period * i as u32;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                writer.publish(&quote(i as i64));
            }
            writer
        })
        .expect("publisher thread");
    let mut lat = Vec::with_capacity(clients * n);
    for c in tasks {
        lat.extend(c.await.unwrap());
    }
    let (srv1, cli1, tl1) = (
        cpu_ns(&SERVER_THREADS),
        cpu_ns(&CLIENT_THREADS),
        cpu_ns(&TAILER_THREAD),
    );
    let secs = t0.elapsed().as_secs_f64();
    let writer = publisher.join().expect("publisher");
    lat.sort_unstable();
    let per_msg = |ns: u64| ns as f64 / 1000.0 / lat.len().max(1) as f64;
    let p = Paced {
        server_cpu_us: per_msg(srv1 - srv0),
        client_cpu_us: per_msg(cli1 - cli0),
        tailer_ms_per_s: (tl1 - tl0) as f64 / 1e6 / secs,
        lat,
    };
    wait_sinks(state, 0).await;
    (writer, p)
}

/// Starts the server on `rt` as `ib-stream serve` does; returns its state and address.
fn start_server(a: &Args, rt: &Runtime, dir: &std::path::Path) -> (AppState, SocketAddr) {
    let cfg = ServeConfig {
        shm_dir: dir.to_path_buf(),
        control_socket: dir.join("control.sock"),
        token: None,
        // Room for the lighter paced points (100 clients) whatever `--clients` is.
        max_streams: a.clients.max(100) * 2,
        tracked: vec![TrackedContract {
            con_id: CON,
            symbol: "MNQ".into(),
            kinds: vec![RecordKind::TbtBidAsk],
            buffer_hours: 1,
        }],
        queue_capacity: a.ticks.max((a.rate * a.paced_secs) as usize) + 16,
        heartbeat: Duration::from_secs(60),
        default_slow: SlowPolicy::Conflate,
        ws: WsLimits::default(),
        // Every bench client comes from 127.0.0.1: no cap per address.
        per_ip: ib_stream::serve::limits::PerIpLimits {
            sse_streams: 0,
            ws_connections: 0,
        },
        contract_cache_dir: dir.join("cache"),
        contract_cache_ttl: Duration::from_secs(60),
        control_timeout: Duration::from_secs(1),
        stale_after: Duration::from_secs(5),
        identity: "bench".into(),
    };
    rt.block_on(async {
        let state = AppState::new(cfg, None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(axum::serve(nodelay_listener(listener), app(state.clone())).into_future());
        while !state
            .hub
            .stats()
            .ring_open
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (state, addr)
    })
}

async fn run(a: &Args, state: AppState, addr: SocketAddr, mut writer: RingWriter) -> String {
    let path = format!("/v3/stream/{CON}?tick_types=bid_ask");
    let (mut sse_mps, mut ws_mps, mut burst_cpu) = (f64::NAN, f64::NAN, f64::NAN);
    if a.burst {
        // (1) SSE burst.
        let clients: Vec<_> = (0..a.clients)
            .map(|_| tokio::spawn(sse_client(addr, path.clone(), a.ticks)))
            .collect();
        wait_sinks(&state, a.clients as u64).await;
        let srv0 = cpu_ns(&SERVER_THREADS);
        let t0 = Instant::now();
        publish_burst(&mut writer, a.ticks);
        for c in clients {
            assert_eq!(
                c.await.unwrap().len(),
                a.ticks,
                "an SSE client missed ticks"
            );
        }
        sse_mps = (a.clients * a.ticks) as f64 / t0.elapsed().as_secs_f64();
        burst_cpu = (cpu_ns(&SERVER_THREADS) - srv0) as f64 / 1e6 / (a.clients * a.ticks) as f64
            * 100_000.0;
        wait_sinks(&state, 0).await;

        // (2) WebSocket burst.
        let clients: Vec<_> = (0..a.clients)
            .map(|_| tokio::spawn(ws_client(addr, a.ticks)))
            .collect();
        wait_sinks(&state, a.clients as u64).await;
        let t0 = Instant::now();
        publish_burst(&mut writer, a.ticks);
        for c in clients {
            assert_eq!(c.await.unwrap(), a.ticks, "a WebSocket client missed ticks");
        }
        ws_mps = (a.clients * a.ticks) as f64 / t0.elapsed().as_secs_f64();
        wait_sinks(&state, 0).await;
    }

    // (3) Latency, paced: the goal's point, then two lighter ones.
    let (writer, main) = paced(addr, &state, writer, a.clients, a.rate, a.paced_secs).await;
    println!("{}", main.line(a.clients, a.rate));
    let (writer, light_rate) = paced(addr, &state, writer, 100, 100, a.paced_secs).await;
    println!("{}", light_rate.line(100, 100));
    let (_writer, few) = paced(addr, &state, writer, 10, 1000, a.paced_secs).await;
    println!("{}", few.line(10, 1000));

    // (4) The Python peer.
    let py_mps = if a.py && a.burst {
        py_peer(a).await
    } else {
        None
    };
    let (py, vs) = match py_mps {
        Some(p) => (format!("{p:.0}"), format!("{:.2}", sse_mps / p)),
        None => ("n/a".into(), "n/a".into()),
    };
    format!(
        "bench=fanout clients={} sse_mps={sse_mps:.0} ws_mps={ws_mps:.0} py_peer_mps={py} vs_py={vs} p99_us={} \
         p99_us_100x100={} p99_us_10x1k={} cpu_ms_per_100k={:.0} cpu_ms_per_100k_burst={burst_cpu:.0}",
        a.clients,
        quantile(&main.lat, 0.99),
        quantile(&light_rate.lat, 0.99),
        quantile(&few.lat, 0.99),
        main.server_cpu_us * 100_000.0 / 1000.0,
    )
}

async fn py_peer(a: &Args) -> Option<f64> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
        l.local_addr().ok()?.port()
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/fanout_py_peer.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--port", &port.to_string()])
        .args(["--clients", &a.clients.to_string()])
        .args(["--ticks", &a.ticks.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let mut out = child.stdout.take()?;
    let mut ready = [0u8; 6];
    out.read_exact(&mut ready).await.ok()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let t0 = Instant::now();
    let clients: Vec<_> = (0..a.clients)
        .map(|_| tokio::spawn(sse_client(addr, "/".into(), a.ticks)))
        .collect();
    for c in clients {
        if c.await.ok()?.len() != a.ticks {
            return None;
        }
    }
    let mps = (a.clients * a.ticks) as f64 / t0.elapsed().as_secs_f64();
    let _ = child.wait().await;
    Some(mps)
}

fn main() {
    let a = args();
    // The server's runtime is the one `ib-stream serve` builds (one worker per core).
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("serve-worker")
        .build()
        .expect("server runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-client")
        .build()
        .expect("client runtime");
    let dir = tempfile::tempdir().unwrap();
    let opts = ShmOptions {
        prefault: false,
        ..ShmOptions::default()
    };
    let writer = RingWriter::create(&dir.path().join(RING_FILE_NAME), 1 << 20, &opts).unwrap();
    writer.heartbeat(now_us() as u64 * 1000);
    let (state, addr) = start_server(&a, &server_rt, dir.path());
    let line = client_rt.block_on(run(&a, state, addr, writer));
    // The result must be the last line.
    println!("{line}");
}
