//! Instructions per tick, counted by valgrind's callgrind: a figure that does not move with
//! whatever else runs on the machine (issue 17, section 1).
//!
//! `cargo bench --bench instructions [-- --check FILE] [-- --update FILE] [-- --quick]`
//!
//! The parent runs every figure in a child process (this same binary) under
//! `valgrind --tool=callgrind` and reads the child's instruction total:
//!
//! * `text178`, `text200`, `proto226`: the engine's receive path, the bytes of a captured
//!   stream (tick-by-tick BidAsk and AllLast on one instrument, encoded by the `tws` crate at
//!   that server version, as tws-sim and a gateway send them) copied into the session's
//!   receive buffer in 64 KiB reads (standing in for the kernel's copy), then
//!   `Session::on_received` (frames, decode, subscription routing, ring commit). Counted only
//!   inside `measure_engine` (`--toggle-collect`): deterministic to the instruction.
//! * `recorder_bin`, `recorder_jsonl`: `Recorder::drain_once` over a real shared-memory ring
//!   holding the engine's records of the 226 stream (read, stage, write the hour's segment),
//!   one format at a time. Counted only inside `measure_recorder`.
//! * `ibapi_proto226`: the Rust `ibapi` crate's blocking client, from its socket read to the
//!   tick value its subscription yields, on the same ticks at 226 (the bytes differ only in
//!   the request ids, which each client mints). The parent plays the gateway. The client has
//!   threads and a process start, so it is counted whole and twice, for two stream lengths:
//!   instructions per tick = difference of the totals / difference of the ticks (the start,
//!   the handshake and the exit cancel out).
//! * `serve`: the real `ib-stream serve` binary under callgrind, 100 SSE clients (in this
//!   process, not counted) on one contract, ticks published into its ring one at a time, each
//!   waited for at all 100 clients: instructions per delivered message, by the same
//!   difference of two runs. It includes what serve's threads do while they wait for the next
//!   tick (ring polling, timers), so it is an upper bound of the delivery's own cost.
//!
//! The ibapi crate speaks only the protobuf framing (it refuses servers below 213), so the
//! text figures have no ibapi counterpart in this run.
//!
//! `--check FILE` compares the deterministic figures with the baselines in `FILE` and exits
//! non-zero when one rose by more than 10 % (the test command's regression guard,
//! `benches/instructions_baseline.txt`). `--update FILE` rewrites it (commit it on purpose).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ib_stream::config::{Environment, FsyncPolicy, Settings, TrackedContract};
use ib_stream::engine::contract_store::StoredContract;
use ib_stream::engine::{Action, Clock, EngineOptions, Publisher, Session};
use ib_stream::recorder::{Recorder, RecorderConfig, STRINGS_FILE_NAME};
use ib_stream::storage::Format;
use ib_stream::tws::msg::server::{TbtQuote, TbtTrade, TickByTickData};
use ib_stream::tws::{ClientMsg, Contract, FrameReader, ServerAck, ServerMsg};
use ib_stream_ipc::{PRICE_SCALE, Quote, Record, RecordKind, RingWriter, SIZE_SCALE, ShmOptions};

const P: i64 = 1_000_000_000;
const S: i64 = 100_000_000;
const CON: u32 = 265_598;
/// Quote/trade pairs of the captured stream in the deterministic figures.
const ROUNDS: i64 = 10_000;
/// Stream lengths (pairs) of the two ibapi runs.
const IBAPI_ROUNDS: [i64; 2] = [2_000, 12_000];
/// Ticks of the two serve runs (each to [`SERVE_CLIENTS`] clients).
const SERVE_TICKS: [u64; 2] = [20, 120];
const SERVE_CLIENTS: usize = 100;
const CHUNK: usize = 65_536;
/// A figure may rise this much over its baseline before the guard fails.
const TOLERANCE: f64 = 0.10;
/// The figures the guard checks (deterministic to the instruction).
const GUARDED: [&str; 5] = [
    "text178_ipt",
    "text200_ipt",
    "proto226_ipt",
    "recorder_bin_ipt",
    "recorder_jsonl_ipt",
];

/// The captured stream: `rounds` pairs of one BidAsk and one AllLast tick, with the
/// request ids `req` (`[bid_ask, all_last]`), encoded at `version`.
fn wire(req: [i32; 2], rounds: i64, version: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..rounds {
        let t = 1_767_000_000 + i / 50;
        let quote = ServerMsg::TickByTick {
            req_id: req[0],
            time: t,
            data: TickByTickData::BidAsk(TbtQuote {
                bid_price: (18_900 + i % 40) * P / 100,
                ask_price: (18_902 + i % 40) * P / 100,
                bid_size: (100 + i % 9) * S,
                ask_size: (200 + i % 5) * S,
                bid_past_low: false,
                ask_past_high: i % 13 == 0,
            }),
        };
        let trade = ServerMsg::TickByTick {
            req_id: req[1],
            time: t,
            data: TickByTickData::AllLast(TbtTrade {
                price: (18_900 + i % 50) * P / 100,
                size: (1 + i % 7) * S,
                past_limit: i % 11 == 0,
                unreported: false,
                exchange: ["NASDAQ", "ARCA", "IEX"][(i % 3) as usize].into(),
                special_conditions: ["", " T", "   F"][(i % 3) as usize].into(),
            }),
        };
        quote.encode(version, &mut out);
        trade.encode(version, &mut out);
    }
    out
}

// ---- the engine's receive path (child) -----------------------------------------------------

/// A session connected at `version` with BidAsk and AllLast on [`CON`]; returns it, its
/// clock and the request ids it sent.
fn session(version: u32, publisher: Publisher) -> (Session, Clock, [i32; 2]) {
    let mut st = Settings::defaults(Environment::Development);
    st.allow_delayed = false;
    st.tracked_contracts = vec![TrackedContract {
        con_id: CON,
        symbol: "AAPL".into(),
        kinds: vec![RecordKind::TbtBidAsk, RecordKind::TbtAllLast],
        buffer_hours: 0,
    }];
    let c = Contract {
        con_id: CON as i32,
        symbol: "AAPL".into(),
        sec_type: "STK".into(),
        exchange: "SMART".into(),
        currency: "USD".into(),
        ..Contract::default()
    };
    let unix = ib_stream::engine::publish::unix_ns();
    let clock = Clock { mono: 1, unix };
    let opts = EngineOptions {
        tbt_same_instrument_ms: 0,
        ..EngineOptions::default()
    };
    let mut s = Session::new(
        st,
        opts,
        publisher,
        vec![StoredContract::from_contract(&c, unix)],
        "/nonexistent".into(),
        1,
        clock,
    );
    s.on_timeout(clock);
    while let Some(a) = s.poll_action() {
        assert!(matches!(a, Action::Connect { .. }), "{a:?}");
    }
    s.on_connecting(clock);
    s.on_connected(clock);
    let n = s.ib_out().len();
    s.ib_written(n);
    let mut b = Vec::new();
    ServerAck {
        version,
        time: "20260101 09:30:00 EST".into(),
    }
    .encode(&mut b);
    ServerMsg::NextValidId { order_id: 1 }.encode(version, &mut b);
    assert!(s.on_bytes(clock, unix, &b));
    let out = s.ib_out().to_vec();
    s.ib_written(out.len());
    let mut r = FrameReader::new();
    r.feed(&out);
    let mut req = [0i32; 2];
    while let Some(f) = r.next_frame(version).expect("the session's frames") {
        if let Ok(ClientMsg::ReqTickByTick {
            req_id, tick_type, ..
        }) = ClientMsg::decode(&f, version)
        {
            match tick_type.as_str() {
                "BidAsk" => req[0] = req_id,
                "AllLast" => req[1] = req_id,
                t => panic!("unexpected tick type {t}"),
            }
        }
    }
    assert!(
        req.iter().all(|r| *r != 0),
        "no tick-by-tick requests: {req:?}"
    );
    while s.poll_action().is_some() {}
    (s, clock, req)
}

/// The measured loop: socket-sized reads into the session's buffer, then the session.
#[inline(never)]
fn measure_engine(s: &mut Session, clock: Clock, wire: &[u8]) -> usize {
    let mut n = 0;
    for chunk in wire.chunks(CHUNK) {
        s.recv_buf()[..chunk.len()].copy_from_slice(chunk);
        let ts = ib_stream::engine::publish::unix_ns();
        assert!(s.on_received(clock, ts, chunk.len()));
        n += s.take_published();
        while s.poll_action().is_some() {}
    }
    n
}

fn child_engine(version: u32) {
    let (mut s, clock, req) = session(version, Publisher::heap(1 << 20).expect("ring"));
    let w = wire(req, ROUNDS, version);
    let mut ring = s.publisher().reader(ib_stream_ipc::StartAt::Oldest);
    std::hint::black_box(measure_engine(&mut s, clock, std::hint::black_box(&w)));
    // Ticks in the ring (the subscriptions' first ticks also publish a state record each).
    let mut ticks = 0u64;
    while let ib_stream_ipc::ReadOutcome::Record(r) = ring.try_read() {
        if r.kind().is_some_and(RecordKind::is_market_data) {
            ticks += 1;
        }
    }
    assert_eq!(ticks, 2 * ROUNDS as u64, "every tick reached the ring");
    println!("ticks={ticks}");
}

// ---- the recorder (child) ------------------------------------------------------------------

#[inline(never)]
fn measure_recorder(r: &mut Recorder) -> u64 {
    r.drain_once()
}

fn child_recorder(format: &str, dir: &Path) {
    let shm = dir.join("shm");
    let publisher = Publisher::create(&shm, 1 << 16, &ShmOptions::default()).expect("ring");
    let (mut s, clock, req) = session(226, publisher);
    let w = wire(req, ROUNDS, 226);
    measure_engine(&mut s, clock, &w);
    let format = match format {
        "bin" => Format::Binary,
        "jsonl" => Format::Jsonl,
        f => panic!("format {f}"),
    };
    let cfg = RecorderConfig {
        ring_path: shm.join(ib_stream_ipc::ring::RING_FILE_NAME),
        strings_path: shm.join(STRINGS_FILE_NAME),
        storage_root: dir.join("storage"),
        formats: vec![format],
        flush_interval: Duration::from_secs(3600),
        fsync: FsyncPolicy::Never,
        jsonl_retention_days: 0,
        binary_retention_days: 0,
        ring_wait: Some(Duration::from_secs(1)),
        retry_interval: Duration::from_millis(500),
        max_staged_bytes: 1 << 20,
        heartbeat_keep_interval: ib_stream::recorder::HEARTBEAT_KEEP_INTERVAL,
        register_reader: true,
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut rec = Recorder::start(cfg, &stop).expect("recorder");
    let n = measure_recorder(&mut rec);
    assert!(n >= 2 * ROUNDS as u64, "the recorder read {n} records");
    drop(rec);
    drop(s);
    println!("ticks={}", 2 * ROUNDS);
}

// ---- the ibapi client (child) --------------------------------------------------------------

fn child_ibapi(port: u16, rounds: usize) {
    use ibapi::client::blocking::Client;
    use ibapi::contracts::{Contract, Exchange, SecurityType};
    use ibapi::market_data::IgnoreSize;
    use ibapi::subscriptions::SubscriptionItem;

    let wait = Duration::from_secs(600);
    let client = Client::builder()
        .address(format!("127.0.0.1:{port}"))
        .client_id(1)
        .max_reconnect_attempts(0)
        .one_shot_timeout(wait)
        .connect()
        .expect("ibapi connects to the bench's gateway");
    let contract = Contract {
        contract_id: CON as i32,
        security_type: SecurityType::Stock,
        exchange: Exchange::from("SMART"),
        ..Default::default()
    };
    let quotes = client
        .tick_by_tick(&contract, 0)
        .bid_ask(IgnoreSize::No)
        .expect("BidAsk");
    let trades = client
        .tick_by_tick(&contract, 0)
        .all_last()
        .expect("AllLast");
    std::thread::scope(|sc| {
        let q = sc.spawn(|| {
            let mut sum = 0.0;
            for _ in 0..rounds {
                match quotes.next_timeout(wait) {
                    Some(Ok(SubscriptionItem::Data(t))) => sum += t.bid_price + t.ask_size,
                    other => panic!("BidAsk: {other:?}"),
                }
            }
            sum
        });
        let mut sum = 0.0;
        for _ in 0..rounds {
            match trades.next_timeout(wait) {
                Some(Ok(SubscriptionItem::Data(t))) => sum += t.price + t.size,
                other => panic!("AllLast: {other:?}"),
            }
        }
        std::hint::black_box(sum + q.join().expect("quotes thread"));
    });
    println!("ticks={}", 2 * rounds);
    // Leave at once: the exit costs the same in both runs, a clean disconnect might not.
    std::process::exit(0);
}

/// The gateway side for the ibapi client: the handshake at 226, `nextValidId` and
/// `managedAccounts`, then the captured stream with the client's request ids. Serves one
/// connection and returns when the client has gone.
fn ibapi_gateway(listener: TcpListener, rounds: i64) {
    let (mut s, _) = listener.accept().expect("accept the ibapi client");
    s.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    // "API\0" then the length-prefixed version range.
    while buf.len() < 8
        || buf.len() < 8 + u32::from_be_bytes(buf[4..8].try_into().unwrap()) as usize
    {
        let n = s.read(&mut chunk).expect("read the hello");
        assert!(n > 0, "the client left during the hello");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(&buf[..4], b"API\0");
    let used = 8 + u32::from_be_bytes(buf[4..8].try_into().unwrap()) as usize;
    let version = 226;
    let mut out = Vec::new();
    ServerAck {
        version,
        time: "20260101 09:30:00 EST".into(),
    }
    .encode(&mut out);
    s.write_all(&out).unwrap();
    let mut r = FrameReader::new();
    r.feed(&buf[used..]);
    let mut req = [0i32; 2];
    let mut started = false;
    while req.contains(&0) {
        while let Some(f) = r.next_frame(version).expect("the client's frames") {
            match ClientMsg::decode(&f, version) {
                Ok(ClientMsg::ReqTickByTick {
                    req_id, tick_type, ..
                }) => match tick_type.as_str() {
                    "BidAsk" => req[0] = req_id,
                    "AllLast" => req[1] = req_id,
                    t => panic!("tick type {t}"),
                },
                _ if !started => {
                    // startApi (or anything first): the session's opening messages.
                    started = true;
                    let mut o = Vec::new();
                    ServerMsg::NextValidId { order_id: 1 }.encode(version, &mut o);
                    ServerMsg::ManagedAccounts {
                        accounts: "DU1234567".into(),
                    }
                    .encode(version, &mut o);
                    s.write_all(&o).unwrap();
                }
                _ => {}
            }
        }
        if !req.contains(&0) {
            break;
        }
        let n = s.read(&mut chunk).expect("read the client");
        assert!(n > 0, "the client left before subscribing");
        r.feed(&chunk[..n]);
    }
    let w = wire(req, rounds, version);
    s.write_all(&w).expect("send the stream");
    // Until the client leaves.
    while matches!(s.read(&mut chunk), Ok(n) if n > 0) {}
}

// ---- callgrind -----------------------------------------------------------------------------

/// Runs this binary with `args` under callgrind (counting only inside functions matching
/// `toggle`, or everything); returns the instruction total and the child's `ticks=`.
fn callgrind(args: &[String], toggle: Option<&str>, out_dir: &Path) -> (u64, u64) {
    let exe = std::env::current_exe().expect("own path");
    let out = out_dir.join(format!(
        "callgrind.{}.out",
        args.join("-").replace('/', "_")
    ));
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()));
    if let Some(t) = toggle {
        cmd.arg("--collect-atstart=no")
            .arg(format!("--toggle-collect={t}"));
    }
    let o = cmd
        .arg(exe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run valgrind (is it installed?)");
    assert!(
        o.status.success(),
        "child {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let ticks = String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("ticks=").and_then(|t| t.trim().parse().ok()))
        .expect("the child's ticks= line");
    (totals(&out), ticks)
}

/// The instruction total of a callgrind output file (its `totals:` or `summary:` line).
fn totals(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).expect("callgrind output");
    let _ = std::fs::remove_file(path);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .expect("a totals line in the callgrind output")
}

fn deterministic(name: &str, args: &[&str], toggle: &str, dir: &Path) -> (String, f64) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (ir, ticks) = callgrind(&args, Some(toggle), dir);
    let ipt = ir as f64 / ticks as f64;
    eprintln!("{name}: {ir} instructions / {ticks} ticks = {ipt:.1}");
    (name.to_string(), ipt)
}

fn ibapi_ipt(dir: &Path) -> f64 {
    let mut runs = Vec::new();
    for rounds in IBAPI_ROUNDS {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let gw = std::thread::spawn(move || ibapi_gateway(listener, rounds));
        let args = vec![
            "child-ibapi".to_string(),
            port.to_string(),
            rounds.to_string(),
        ];
        let (ir, ticks) = callgrind(&args, None, dir);
        gw.join().expect("gateway thread");
        eprintln!("ibapi run: {ir} instructions, {ticks} ticks (whole process)");
        runs.push((ir, ticks));
    }
    (runs[1].0 as f64 - runs[0].0 as f64) / (runs[1].1 - runs[0].1) as f64
}

// ---- serve (the real binary under callgrind) -------------------------------------------------

fn serve_quote(i: u64) -> Record {
    let now = ib_stream::engine::publish::unix_ns();
    let mut r = Record::quote(
        711_280_073,
        now,
        Quote {
            bid_price: (21_000 + (i % 50) as i64) * PRICE_SCALE,
            ask_price: (21_001 + (i % 50) as i64) * PRICE_SCALE,
            bid_size: 3 * SIZE_SCALE,
            ask_size: 4 * SIZE_SCALE,
        },
    );
    r.ts_recv = now;
    r
}

/// One serve run: returns (instructions of the whole serve process, deliveries).
fn serve_run(ticks: u64, dir: &Path) -> (u64, u64) {
    let shm = dir.join(format!("serve-shm-{ticks}"));
    let storage = dir.join(format!("serve-storage-{ticks}"));
    std::fs::create_dir_all(&shm).unwrap();
    std::fs::create_dir_all(&storage).unwrap();
    let mut writer = RingWriter::create(
        &shm.join(ib_stream_ipc::ring::RING_FILE_NAME),
        1 << 16,
        &ShmOptions::default(),
    )
    .expect("ring");
    let out = dir.join(format!("callgrind.serve.{ticks}.out"));
    let log = dir.join(format!("serve-{ticks}.log"));
    let mut c = Command::new("valgrind");
    c.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(env!("CARGO_BIN_EXE_ib-stream"))
        .env_clear()
        .env("NO_COLOR", "1");
    for s in [
        format!("IB_STREAM_SHM_DIR={}", shm.display()),
        format!("IB_STREAM_STORAGE_PATH={}", storage.display()),
        "IB_STREAM_ENABLE_STORAGE=false".into(),
        "IB_STREAM_LOG_LEVEL=info".into(),
        "IB_STREAM_TRACKED_CONTRACTS=711280073:MNQ:bid_ask".into(),
        // Room for every client (the default cap is 50 streams).
        format!("IB_STREAM_MAX_STREAMS={}", 2 * SERVE_CLIENTS),
    ] {
        c.arg("--set").arg(s);
    }
    c.args(["serve", "--host", "127.0.0.1", "--port", "0"]);
    let f = std::fs::File::create(&log).unwrap();
    let mut child = c
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .expect("valgrind ib-stream serve");
    let guard = KillOnDrop(child.id());
    let until = Instant::now() + Duration::from_secs(120);
    let port: u16 = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(p) = text
            .lines()
            .filter(|l| l.contains("serving"))
            .find_map(|l| l.split("addr=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|x| x.parse().ok())
        {
            break p;
        }
        assert!(Instant::now() < until, "serve did not start: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let got = Arc::new(AtomicU64::new(0));
    // Clients that have had their first tick (so they are subscribed).
    let live = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..SERVE_CLIENTS {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to serve");
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write!(
            s,
            "GET /v3/stream/711280073?tick_types=bid_ask HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
        )
        .unwrap();
        let got = got.clone();
        let live = live.clone();
        readers.push(std::thread::spawn(move || {
            let mut r = BufReader::new(s);
            let mut line = String::new();
            let mut first = true;
            while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                if line.starts_with("event: tick") {
                    got.fetch_add(1, Ordering::Relaxed);
                    if first {
                        first = false;
                        live.fetch_add(1, Ordering::Relaxed);
                    }
                }
                line.clear();
            }
        }));
    }
    let wait_for = |target: u64| {
        let until = Instant::now() + Duration::from_secs(120);
        while got.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < until,
                "deliveries stalled at {got:?} of {target}"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    // Every client subscribed: keep publishing a first tick until all have one.
    let mut seq = 0;
    while live.load(Ordering::Relaxed) < SERVE_CLIENTS as u64 {
        if seq < 200 {
            writer.publish_batch(&[serve_quote(seq)]);
            seq += 1;
        }
        assert!(Instant::now() < until, "clients never all subscribed");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each client may hold more than one warm-up tick: count from what they have now.
    std::thread::sleep(Duration::from_millis(500));
    let base = got.load(Ordering::Relaxed);
    for i in 0..ticks {
        writer.publish_batch(&[serve_quote(seq + i)]);
        wait_for(base + (i + 1) * SERVE_CLIENTS as u64);
    }
    let delivered = got.load(Ordering::Relaxed) - base;
    // A clean stop, so that callgrind writes its counts.
    sigterm(child.id());
    let _ = child.wait();
    std::mem::forget(guard);
    for r in readers {
        let _ = r.join();
    }
    let ir = totals(&out);
    let _ = std::fs::remove_dir_all(&shm);
    let _ = std::fs::remove_dir_all(&storage);
    let _ = std::fs::remove_file(&log);
    (ir, delivered)
}

fn sigterm(pid: u32) {
    // SIGTERM: serve shuts down and returns from main.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(self.0.to_string())
            .status();
    }
}

fn serve_ipd(dir: &Path) -> f64 {
    let a = serve_run(SERVE_TICKS[0], dir);
    let b = serve_run(SERVE_TICKS[1], dir);
    eprintln!("serve runs: {a:?} {b:?} (instructions, deliveries)");
    (b.0 as f64 - a.0 as f64) / (b.1 - a.1) as f64
}

// ---- baselines -----------------------------------------------------------------------------

fn read_baseline(path: &Path) -> Vec<(String, f64)> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the baselines {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("key=value");
            (k.trim().to_string(), v.trim().parse().expect("a number"))
        })
        .collect()
}

/// The figures that rose more than [`TOLERANCE`] over their baseline, as messages.
fn regressions(base: &[(String, f64)], now: &[(String, f64)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (k, b) in base {
        match now.iter().find(|(n, _)| n == k) {
            Some((_, v)) if *v > b * (1.0 + TOLERANCE) => bad.push(format!(
                "{k}: {v:.0} instructions per tick against the baseline {b:.0} (+{:.1} %, limit {:.0} %)",
                (v / b - 1.0) * 100.0,
                TOLERANCE * 100.0
            )),
            Some(_) => {}
            None => bad.push(format!("{k}: in the baselines but not measured")),
        }
    }
    bad
}

fn write_baseline(path: &Path, now: &[(String, f64)]) {
    let mut text = String::from(
        "# Instructions per tick (callgrind), the regression guard's baselines:\n\
         # `cargo bench --bench instructions -- --check` fails when one rises more than 10 %.\n\
         # Rewritten by `-- --update`; commit a change on purpose, saying why.\n",
    );
    for (k, v) in now {
        if GUARDED.contains(&k.as_str()) {
            text.push_str(&format!("{k}={v:.0}\n"));
        }
    }
    std::fs::write(path, text).expect("write the baselines");
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("child-engine") => return child_engine(args[1].parse().expect("version")),
        Some("child-recorder") => return child_recorder(&args[1], Path::new(&args[2])),
        Some("child-ibapi") => {
            return child_ibapi(args[1].parse().unwrap(), args[2].parse().unwrap());
        }
        _ => {}
    }
    let flag = |name: &str| args.iter().position(|a| a == name).map(|i| args.get(i + 1));
    let check: Option<PathBuf> = flag("--check").map(|p| PathBuf::from(p.expect("--check FILE")));
    let update: Option<PathBuf> =
        flag("--update").map(|p| PathBuf::from(p.expect("--update FILE")));
    // The guard needs only the deterministic figures.
    let quick = check.is_some() || args.iter().any(|a| a == "--quick");
    // `--serve-only`: just the serve figure (it takes the longest).
    if args.iter().any(|a| a == "--serve-only") {
        let dir = std::env::temp_dir().join(format!("ibs-instructions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _cleanup = RemoveDir(dir.clone());
        println!("bench=instructions serve_ipd={:.0}", serve_ipd(&dir));
        return;
    }

    let dir = std::env::temp_dir().join(format!("ibs-instructions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cleanup = RemoveDir(dir.clone());
    let d = dir.display().to_string();
    let mut now = vec![
        deterministic(
            "text178_ipt",
            &["child-engine", "178"],
            "*measure_engine*",
            &dir,
        ),
        deterministic(
            "text200_ipt",
            &["child-engine", "200"],
            "*measure_engine*",
            &dir,
        ),
        deterministic(
            "proto226_ipt",
            &["child-engine", "226"],
            "*measure_engine*",
            &dir,
        ),
        deterministic(
            "recorder_bin_ipt",
            &["child-recorder", "bin", &format!("{d}/bin")],
            "*measure_recorder*",
            &dir,
        ),
        deterministic(
            "recorder_jsonl_ipt",
            &["child-recorder", "jsonl", &format!("{d}/jsonl")],
            "*measure_recorder*",
            &dir,
        ),
    ];
    let get =
        |now: &[(String, f64)], k: &str| now.iter().find(|(n, _)| n == k).map_or(0.0, |(_, v)| *v);
    let mut line = format!(
        "bench=instructions text178_ipt={:.0} text200_ipt={:.0} proto226_ipt={:.0}",
        get(&now, "text178_ipt"),
        get(&now, "text200_ipt"),
        get(&now, "proto226_ipt")
    );
    if !quick {
        let ib = ibapi_ipt(&dir);
        now.push(("ibapi_proto226_ipt".into(), ib));
        let serve = serve_ipd(&dir);
        now.push(("serve_ipd".into(), serve));
        line.push_str(&format!(
            " ibapi_proto226_ipt={ib:.0} vs_ibapi_proto={:.1} vs_ibapi_text178={:.1} vs_ibapi_text200={:.1} serve_ipd={serve:.0}",
            ib / get(&now, "proto226_ipt"),
            ib / get(&now, "text178_ipt"),
            ib / get(&now, "text200_ipt"),
        ));
    }
    line.push_str(&format!(
        " recorder_bin_ipt={:.0} recorder_jsonl_ipt={:.0}",
        get(&now, "recorder_bin_ipt"),
        get(&now, "recorder_jsonl_ipt")
    ));
    if let Some(p) = &update {
        write_baseline(p, &now);
        eprintln!("baselines written to {}", p.display());
    }
    let mut failed = false;
    if let Some(p) = &check {
        let bad = regressions(&read_baseline(p), &now);
        for b in &bad {
            eprintln!("instruction regression: {b}");
        }
        failed = !bad.is_empty();
        if !failed {
            eprintln!(
                "instruction counts within {:.0} % of {}",
                TOLERANCE * 100.0,
                p.display()
            );
        }
    }
    println!("{line}");
    if failed {
        // `exit` runs no destructors: remove the scratch directory first.
        drop(cleanup);
        std::process::exit(1);
    }
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
