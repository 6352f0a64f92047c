//! Fan-out benchmark of `ib-stream serve`: ticks published into a real shared-memory ring and
//! delivered to many SSE and WebSocket clients over loopback TCP, compared with a Python peer
//! built like the original IB-Stream's fan-out (`benches/fanout_py_peer.py`).
//!
//! `cargo bench --bench fanout [-- --clients 100 --ticks 10000 --no-py]`
//!
//! Phases: (1) SSE burst: every client must receive every tick; messages per second =
//! clients x ticks / time from the first publish to the last delivery. (2) WebSocket burst,
//! the same. (3) SSE paced at 1000 ticks/s for 2 s: p99 of publish-to-client latency (the
//! tick's `st`, stamped at publish, against the client's clock). (4) The Python peer, burst,
//! read by the same SSE clients. Queues are sized so that no tick is conflated: this measures
//! delivery, not the slow-client policy. The last line is the summary.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ib_stream::config::TrackedContract;
use ib_stream::serve::{AppState, ServeConfig, WsLimits, app, hub::SlowPolicy};
use ib_stream_ipc::ring::RING_FILE_NAME;
use ib_stream_ipc::{PRICE_SCALE, Quote, Record, RecordKind, RingWriter, SIZE_SCALE, ShmOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CON: u32 = 711_280_073;

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

struct Args {
    clients: usize,
    ticks: usize,
    py: bool,
}

fn args() -> Args {
    let mut a = Args {
        clients: 100,
        ticks: 10_000,
        py: true,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        match v[i].as_str() {
            "--clients" => {
                a.clients = v[i + 1].parse().expect("--clients N");
                i += 1;
            }
            "--ticks" => {
                a.ticks = v[i + 1].parse().expect("--ticks N");
                i += 1;
            }
            "--no-py" => a.py = false,
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

async fn run(a: &Args) -> String {
    let dir = tempfile::tempdir().unwrap();
    let opts = ShmOptions {
        prefault: false,
        ..ShmOptions::default()
    };
    let mut writer = RingWriter::create(&dir.path().join(RING_FILE_NAME), 1 << 20, &opts).unwrap();
    writer.heartbeat(now_us() as u64 * 1000);
    let cfg = ServeConfig {
        shm_dir: dir.path().to_path_buf(),
        control_socket: dir.path().join("control.sock"),
        token: None,
        max_streams: a.clients * 2,
        tracked: vec![TrackedContract {
            con_id: CON,
            symbol: "MNQ".into(),
            kinds: vec![RecordKind::TbtBidAsk],
            buffer_hours: 1,
        }],
        queue_capacity: a.ticks + 16,
        heartbeat: Duration::from_secs(60),
        default_slow: SlowPolicy::Conflate,
        ws: WsLimits::default(),
        // Every bench client comes from 127.0.0.1: no cap per address.
        per_ip: ib_stream::serve::limits::PerIpLimits {
            sse_streams: 0,
            ws_connections: 0,
        },
        contract_cache_dir: dir.path().join("cache"),
        contract_cache_ttl: Duration::from_secs(60),
        control_timeout: Duration::from_secs(1),
        stale_after: Duration::from_secs(5),
        identity: "bench".into(),
    };
    let state = AppState::new(cfg, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app(state.clone())).into_future());
    while !state
        .hub
        .stats()
        .ring_open
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let path = format!("/v3/stream/{CON}?tick_types=bid_ask");

    // (1) SSE burst.
    let clients: Vec<_> = (0..a.clients)
        .map(|_| tokio::spawn(sse_client(addr, path.clone(), a.ticks)))
        .collect();
    wait_sinks(&state, a.clients as u64).await;
    let t0 = Instant::now();
    publish_burst(&mut writer, a.ticks);
    for c in clients {
        assert_eq!(
            c.await.unwrap().len(),
            a.ticks,
            "an SSE client missed ticks"
        );
    }
    let sse_mps = (a.clients * a.ticks) as f64 / t0.elapsed().as_secs_f64();
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
    let ws_mps = (a.clients * a.ticks) as f64 / t0.elapsed().as_secs_f64();
    wait_sinks(&state, 0).await;

    // (3) Latency, paced.
    let paced = 2000;
    let clients: Vec<_> = (0..a.clients)
        .map(|_| tokio::spawn(sse_client(addr, path.clone(), paced)))
        .collect();
    wait_sinks(&state, a.clients as u64).await;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for i in 0..paced {
        tick.tick().await;
        writer.publish(&quote(i as i64));
    }
    let mut lat = Vec::new();
    for c in clients {
        lat.extend(c.await.unwrap());
    }
    lat.sort_unstable();
    let p99_us = quantile(&lat, 0.99);
    println!(
        "paced latency over {} deliveries: p50_us={} p90_us={} p99_us={p99_us} max_us={}",
        lat.len(),
        quantile(&lat, 0.5),
        quantile(&lat, 0.9),
        lat.last().copied().unwrap_or(0)
    );

    // (4) The Python peer.
    let py_mps = if a.py { py_peer(a).await } else { None };
    let (py, vs) = match py_mps {
        Some(p) => (format!("{p:.0}"), format!("{:.2}", sse_mps / p)),
        None => ("n/a".into(), "n/a".into()),
    };
    format!(
        "bench=fanout clients={} sse_mps={sse_mps:.0} ws_mps={ws_mps:.0} py_peer_mps={py} vs_py={vs} p99_us={p99_us}",
        a.clients
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let line = rt.block_on(run(&a));
    // The result must be the last line.
    println!("{line}");
}
