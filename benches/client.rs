//! Streaming-client benchmark: ticks/s delivered to a consumer through the Rust client
//! (`ib-stream-client`: typed parse, resume bookkeeping, bounded queue) next to a plain
//! reader of the same stream (WebSocket frames read and JSON-parsed into `serde_json::Value`,
//! no client logic), in the same run against the same in-process server; the ipc crate's
//! ring reader in records/s; and the Python client's figures from `python/bench_client.py`
//! when the Python package's venv is there.
//!
//! `cargo bench --bench client [-- --ticks 200000 --rounds 3]`
//!
//! Each round publishes `--ticks` quotes at once into a real shared-memory ring after the
//! reader has subscribed; ticks/s = ticks / (first publish .. the reader has the last). The
//! server's per-stream queue holds the whole burst, so nothing is conflated: this measures
//! delivery, not the slow-client policy. The plain reader and the client alternate, and
//! each figure is the median of its rounds.
//!
//! Last line: `bench=client rust_tps= raw_tps= rust_vs_raw= py_tps= py_ring_rps= ipc_ring_rps=
//! py_ws_tps= py_sse_tps=` (`rust_vs_raw` = raw_tps / rust_tps: how many times slower the
//! client is; the goal is at most 1.5; `py_tps` is the faster of the Python transports).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ib_stream::config::TrackedContract;
use ib_stream::serve::{AppState, ServeConfig, WsLimits, app, hub::SlowPolicy, nodelay_listener};
use ib_stream_client::{Client, ClientConfig, Event, Subscription};
use ib_stream_ipc::ring::RING_FILE_NAME;
use ib_stream_ipc::{
    PRICE_SCALE, Quote, Record, RecordKind, RingReader, RingWriter, SIZE_SCALE, ShmOptions, StartAt,
};
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::Message;

const CON: u32 = 711_280_073;

struct Args {
    ticks: usize,
    rounds: usize,
}

fn args() -> Args {
    let mut a = Args {
        ticks: 200_000,
        rounds: 3,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let next = v.get(i + 1).and_then(|s| s.parse().ok());
        match (v[i].as_str(), next) {
            ("--ticks", Some(n)) => a.ticks = n,
            ("--rounds", Some(n)) => a.rounds = n.max(1),
            _ => {}
        }
        i += 1;
    }
    a
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn quote(i: i64) -> Record {
    Record::quote(
        CON,
        now_ns(),
        Quote {
            bid_price: (21_000 + i % 50) * PRICE_SCALE,
            ask_price: (21_001 + i % 50) * PRICE_SCALE,
            bid_size: 3 * SIZE_SCALE,
            ask_size: 4 * SIZE_SCALE,
        },
    )
}

fn publish_burst(writer: &mut RingWriter, ticks: usize) {
    let batch: Vec<Record> = (0..64).map(quote).collect();
    let mut left = ticks;
    while left > 0 {
        let n = left.min(batch.len());
        let mut b = batch[..n].to_vec();
        let now = now_ns();
        for r in &mut b {
            r.ts_recv = now;
        }
        writer.publish_batch(&b);
        left -= n;
    }
}

fn start_server(a: &Args, rt: &Runtime, dir: &Path) -> (AppState, SocketAddr) {
    let cfg = ServeConfig {
        shm_dir: dir.to_path_buf(),
        control_socket: dir.join("control.sock"),
        token: None,
        max_streams: 64,
        tracked: vec![TrackedContract {
            con_id: CON,
            symbol: "MNQ".into(),
            kinds: vec![RecordKind::TbtBidAsk],
            buffer_hours: 1,
        }],
        queue_capacity: a.ticks + 64,
        heartbeat: Duration::from_secs(5),
        default_slow: SlowPolicy::Conflate,
        ws: WsLimits::default(),
        per_ip: ib_stream::serve::limits::PerIpLimits {
            sse_streams: 0,
            ws_connections: 0,
        },
        contract_cache_dir: dir.join("cache"),
        contract_cache_ttl: Duration::from_secs(60),
        control_timeout: Duration::from_secs(1),
        stale_after: Duration::from_secs(5),
        identity: "bench".into(),
        client_ids: ib_stream::clientid::IdSettings::of(&ib_stream::config::Settings::defaults(
            ib_stream::config::Environment::Development,
        )),
    };
    // An (empty) history source, so a client's `since=` is answered (then live).
    let storage = dir.join("storage");
    std::fs::create_dir_all(&storage).unwrap();
    let history: Option<Arc<dyn ib_stream::serve::HistorySource>> = Some(Arc::new(
        ib_stream::serve::storage_history::StorageHistory::new(&storage),
    ));
    rt.block_on(async {
        let state = AppState::new(cfg, history);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(axum::serve(nodelay_listener(listener), app(state.clone())).into_future());
        while !state.hub.stats().ring_open.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (state, addr)
    })
}

async fn wait_sinks(st: &AppState, n: u64) {
    while st.hub.stats().sinks.load(Ordering::Relaxed) != n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The plain reader: frames read and parsed as JSON, ticks counted.
async fn raw_round(addr: SocketAddr, st: &AppState, writer: &mut RingWriter, ticks: usize) -> f64 {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v3/ws"))
        .await
        .unwrap();
    ws.send(Message::text(format!(
        r#"{{"type":"subscribe","id":1,"contract_id":{CON},"tick_types":["bid_ask"]}}"#
    )))
    .await
    .unwrap();
    wait_sinks(st, 1).await;
    let t0 = Instant::now();
    publish_burst(writer, ticks);
    let mut n = 0;
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            if v.get("seq").is_some() && v.get("type").is_none() {
                n += 1;
                if n == ticks {
                    break;
                }
            }
        }
    }
    let tps = ticks as f64 / t0.elapsed().as_secs_f64();
    let _ = ws.close(None).await;
    wait_sinks(st, 0).await;
    tps
}

/// The Rust client: typed events through its queue.
async fn client_round(
    addr: SocketAddr,
    st: &AppState,
    writer: &mut RingWriter,
    ticks: usize,
) -> f64 {
    let (client, mut events) = Client::start(ClientConfig::new(format!("http://{addr}"))).unwrap();
    client
        .subscribe(Subscription::new(CON, &["bid_ask"]))
        .unwrap();
    while let Some(e) = events.next().await {
        if matches!(e, Event::Subscribed { .. }) {
            break;
        }
    }
    wait_sinks(st, 1).await;
    let t0 = Instant::now();
    publish_burst(writer, ticks);
    let mut n = 0;
    let mut batch = Vec::with_capacity(256);
    'read: while events.next_many(&mut batch, 256).await > 0 {
        for e in batch.drain(..) {
            if let Event::Tick { tick, .. } = e {
                std::hint::black_box(&tick);
                n += 1;
                if n == ticks {
                    break 'read;
                }
            }
        }
    }
    let tps = ticks as f64 / t0.elapsed().as_secs_f64();
    let m = client.metrics();
    assert_eq!(m.gaps + m.malformed + m.duplicates_dropped, 0, "{m:?}");
    client.close().await;
    wait_sinks(st, 0).await;
    tps
}

/// The ipc crate's reader: records/s through `read_batch` (1024 at a time) over a full ring.
fn ipc_ring_rps(dir: &Path) -> f64 {
    let path = dir.join("ipc-bench.ring");
    let opts = ShmOptions {
        prefault: true,
        ..ShmOptions::default()
    };
    let cap = 1u64 << 20;
    let mut w = RingWriter::create(&path, cap, &opts).unwrap();
    publish_burst(&mut w, cap as usize);
    let mut best = 0f64;
    let mut buf = vec![Record::ZERO; 1024];
    for _ in 0..5 {
        let mut r = RingReader::open(&path, StartAt::Oldest).unwrap();
        let t0 = Instant::now();
        let mut n = 0u64;
        while n < cap {
            let b = r.read_batch(&mut buf);
            if b.records == 0 {
                break;
            }
            n += b.records as u64;
            std::hint::black_box(&buf[..b.records]);
        }
        best = best.max(n as f64 / t0.elapsed().as_secs_f64());
    }
    drop(w);
    let _ = std::fs::remove_file(&path);
    best
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The Python package's interpreter, if its venv is set up.
fn python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = root.join("python/.venv/bin/python");
    let script = root.join("python/bench_client.py");
    (py.exists() && script.exists()).then_some(py)
}

/// Runs `python/bench_client.py` while a publisher thread keeps quotes coming; its last line
/// is `py_tps=<n> py_ring_rps=<n>`.
fn python_figures(addr: SocketAddr, ring: &Path, writer: RingWriter) -> (String, String, String) {
    let Some(py) = python() else {
        eprintln!(
            "bench client: python/.venv/bin/python or python/bench_client.py missing: py_tps=na py_ring_rps=na"
        );
        return ("na".into(), "na".into(), String::new());
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let publisher = std::thread::spawn(move || {
        let mut w = writer;
        while !stop2.load(Ordering::Relaxed) {
            publish_burst(&mut w, 256);
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(py)
        .arg(root.join("python/bench_client.py"))
        .args(["--url", &format!("http://{addr}")])
        .args(["--con-id", &CON.to_string()])
        .arg("--ring")
        .arg(ring)
        .output();
    stop.store(true, Ordering::Relaxed);
    let _ = publisher.join();
    let parsed = out.ok().and_then(|o| {
        if !o.status.success() {
            eprintln!(
                "bench client: bench_client.py failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let last = text.lines().last()?.to_owned();
        let get = |k: &str| {
            last.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k))
                .map(str::to_owned)
        };
        let per: Vec<String> = ["py_ws_tps=", "py_sse_tps="]
            .iter()
            .filter_map(|k| get(k).map(|v| format!("{k}{v}")))
            .collect();
        Some((get("py_tps=")?, get("py_ring_rps=")?, per.join(" ")))
    });
    parsed.unwrap_or_else(|| {
        eprintln!("bench client: no `py_tps=.. py_ring_rps=..` line from bench_client.py");
        ("na".into(), "na".into(), String::new())
    })
}

fn main() {
    let a = args();
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
    let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let opts = ShmOptions {
        prefault: false,
        ..ShmOptions::default()
    };
    let ring = dir.path().join(RING_FILE_NAME);
    let mut writer = RingWriter::create(&ring, 1 << 20, &opts).unwrap();
    writer.heartbeat(now_ns() as u64);
    let (state, addr) = start_server(&a, &server_rt, dir.path());
    let (mut raw, mut rust) = (Vec::new(), Vec::new());
    client_rt.block_on(async {
        // A warm-up round each (connections, allocator, page faults of the ring).
        raw_round(addr, &state, &mut writer, a.ticks / 10).await;
        client_round(addr, &state, &mut writer, a.ticks / 10).await;
        for r in 0..a.rounds {
            raw.push(raw_round(addr, &state, &mut writer, a.ticks).await);
            rust.push(client_round(addr, &state, &mut writer, a.ticks).await);
            eprintln!(
                "round {r}: raw {:.0} ticks/s, client {:.0} ticks/s",
                raw[r], rust[r]
            );
        }
    });
    let (raw_tps, rust_tps) = (median(raw), median(rust));
    let ipc = ipc_ring_rps(dir.path());
    let (py_tps, py_ring, py_per) = python_figures(addr, &ring, writer);
    drop(state);
    println!(
        "bench=client rust_tps={rust_tps:.0} raw_tps={raw_tps:.0} rust_vs_raw={:.2} py_tps={py_tps} py_ring_rps={py_ring} ipc_ring_rps={ipc:.0} {py_per}",
        raw_tps / rust_tps
    );
}
