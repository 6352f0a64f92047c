//! The web server under hostile clients, as real processes (`tws-sim`, `ib-stream engine`,
//! `ib-stream serve`): slowloris connections, floods of refused streams, and a stream asked
//! for again within IB's same-instrument window.

mod engine_support;
mod serve_proc;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use engine_support::{Sim, TempDir};
use serve_proc::*;

const MNQ: u32 = 711_280_073;

struct Stack {
    _sim: Sim,
    _engine: Proc,
    serve: Proc,
    port: u16,
    _shm: TempDir,
    _storage: TempDir,
    _logs: TempDir,
}

/// The simulator, an engine tracking MNQ bid/ask, and a server with `serve_sets` under
/// `nofile` descriptors.
fn stack(
    tag: &str,
    sim_args: &[&str],
    engine_args: &[&str],
    serve_sets: &[String],
    nofile: Option<u64>,
) -> Stack {
    let shm = TempDir::new(&format!("{tag}-shm"));
    let storage = TempDir::new(&format!("{tag}-st"));
    let logs = TempDir::new(&format!("{tag}-logs"));
    let sim = Sim::start(sim_args);
    let base = [
        format!("IB_STREAM_PORTS={}", sim.port),
        "IB_STREAM_RING_CAPACITY=65536".into(),
        format!("IB_STREAM_TRACKED_CONTRACTS={MNQ}:MNQ:bid_ask"),
    ];
    let mut ecmd = ib_stream(shm.path(), storage.path(), &base);
    ecmd.arg("engine").args(engine_args);
    let engine = Proc::spawn(ecmd, logs.path().join("engine.log"));
    let sets: Vec<String> = base
        .iter()
        .cloned()
        .chain(serve_sets.iter().cloned())
        .collect();
    let (serve, port) = serve(shm.path(), storage.path(), logs.path(), &sets, nofile);
    Stack {
        _sim: sim,
        _engine: engine,
        serve,
        port,
        _shm: shm,
        _storage: storage,
        _logs: logs,
    }
}

/// True once the peer closed `s` (EOF or reset); false while it is open.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 512];
    let r = loop {
        match s.read(&mut b) {
            Ok(0) => break true,
            // A 503 or a timeout answer may come first; read on to the close.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    s.set_nonblocking(false).unwrap();
    r
}

/// Slowloris: 300 connections that send half a request header or nothing at all, on a
/// server with 256 file descriptors (its cap fits to 192). `/health` keeps answering at
/// once, a stream keeps flowing, and every idle connection is closed by the header timeout.
#[test]
fn slowloris_connections_are_closed_while_health_and_streams_keep_working() {
    const HEADER_TIMEOUT_S: u64 = 4;
    let st = stack(
        "slowloris",
        &["--rate", "50"],
        &[],
        &[format!("IB_STREAM_HTTP_HEADER_TIMEOUT={HEADER_TIMEOUT_S}")],
        Some(256),
    );
    let port = st.port;

    // A stream that was there first.
    let mut sse = Sse::open(port, &format!("/v3/stream/{MNQ}?tick_types=bid_ask"));
    assert_eq!(sse.status, 200);
    sse.ticks(3);

    // The attack: half of them send part of a header, half send nothing.
    let opened = Instant::now();
    let mut hostile = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        if i % 2 == 0 {
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
        }
        hostile.push(s);
    }

    // While they are held: /health answers at once, every time; the stream flows.
    for _ in 0..5 {
        let t = Instant::now();
        let r = get(port, "/health", Duration::from_secs(3));
        assert!(
            r.is_some(),
            "/health did not answer within 3 s with 300 idle connections held"
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "/health took {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        opened.elapsed() < Duration::from_secs(HEADER_TIMEOUT_S),
        "precondition: the checks ran within the header timeout ({:?})",
        opened.elapsed()
    );
    sse.ticks(20);

    // After the header timeout every one of them is closed by the server.
    let until = Instant::now() + Duration::from_secs(HEADER_TIMEOUT_S + 10);
    loop {
        hostile.retain_mut(|s| !closed_by_peer(s));
        let open = hostile.len();
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "{open} of 300 idle connections still open {:?} after they connected",
            opened.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        opened.elapsed() >= Duration::from_secs(HEADER_TIMEOUT_S) - Duration::from_millis(500)
            || metric(port, "ib_stream_serve_connections_evicted_total").unwrap_or(0.0) > 0.0,
        "closed before the header timeout without an eviction"
    );
    let timeouts = metric(port, "ib_stream_serve_header_timeouts_total").unwrap();
    let evicted = metric(port, "ib_stream_serve_connections_evicted_total").unwrap();
    assert!(
        timeouts + evicted >= 300.0,
        "timeouts {timeouts} + evictions {evicted} account for every idle connection"
    );
    assert_eq!(
        metric(port, "ib_stream_serve_connections_cap").unwrap(),
        192.0,
        "the cap fits 256 descriptors minus the headroom"
    );
    // The stream that was there first never stopped.
    sse.ticks(20);
    drop(st.serve);
}
