//! The streaming client (`ib-stream-client`) against real processes: `tws-sim`, `ib-stream
//! engine` and `ib-stream serve`, with faults: the web server killed and restarted, the
//! engine restarted (a new run), the connection cut in the middle of a frame and a frame
//! corrupted (by a TCP proxy in the test that parses the server's WebSocket frames), a slow
//! consumer (the server's disconnect policy and the client's own bound), and 1,000
//! subscriptions on one connection. Over SSE (the fallback transport): the web server killed
//! and restarted, and `Auto` falling back through a proxy that refuses the WebSocket upgrade,
//! across an engine restart.
//!
//! Exactness is checked against the ring itself: the engine's records of the contract between
//! the first and last tick the client delivered are exactly the ticks it delivered (or are
//! covered by a gap the client delivered). Every wait is bounded; no assertion depends on
//! how long something took.

mod engine_support;
mod serve_proc;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine_support::{Sim, TempDir};
use ib_stream::ipc::{ReadOutcome, RecordKind, RingReader, StartAt};
use ib_stream_client::{
    BackoffConfig, Client, ClientConfig, ConnState, Event, Events, FrameError, GapReason,
    ServerSlowPolicy, SlowConsumerPolicy, Subscription, Transport,
};
use serve_proc::{Proc, metric, plain, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MNQ: u32 = 711_280_073;
/// Bound of every wait for events.
const WAIT: Duration = Duration::from_secs(60);

/// tws-sim, the engine and the web server as separate processes, each restartable.
struct Stack {
    shm: TempDir,
    logs: TempDir,
    sim: Sim,
    engine: Option<Proc>,
    serve: Option<Proc>,
    port: u16,
    serve_extra: Vec<String>,
    sets: Vec<String>,
    starts: usize,
}

impl Stack {
    fn start(sim_args: &[&str], serve_extra: &[&str], sets: &[&str]) -> Stack {
        let mut args = vec!["--tbt-same-instrument-secs", "0"];
        args.extend_from_slice(sim_args);
        let sim = Sim::start(&args);
        let mut s = Stack {
            shm: TempDir::new("client-shm"),
            logs: TempDir::new("client-logs"),
            sim,
            engine: None,
            serve: None,
            port: 0,
            serve_extra: serve_extra.iter().map(|s| (*s).to_owned()).collect(),
            sets: sets.iter().map(|s| (*s).to_owned()).collect(),
            starts: 0,
        };
        s.start_engine();
        s.start_serve();
        s
    }

    fn cmd(&self) -> std::process::Command {
        let mut sets = vec![
            format!("IB_STREAM_PORTS={}", self.sim.port),
            format!("IB_STREAM_TRACKED_CONTRACTS={MNQ}:MNQ:bid_ask"),
        ];
        if !self
            .sets
            .iter()
            .any(|s| s.starts_with("IB_STREAM_RING_CAPACITY="))
        {
            // The whole test stays in the ring: its records are the reference.
            sets.push("IB_STREAM_RING_CAPACITY=65536".into());
        }
        sets.extend(self.sets.iter().cloned());
        let storage = self.shm.path().join("storage");
        serve_proc::ib_stream(self.shm.path(), &storage, &sets)
    }

    fn start_engine(&mut self) {
        self.starts += 1;
        let mut c = self.cmd();
        c.arg("engine");
        let log = self.logs.path().join(format!("engine-{}.log", self.starts));
        self.engine = Some(Proc::spawn(c, log));
        RingReader::open_wait(
            &self.shm.path().join("ticks.ring"),
            StartAt::Oldest,
            Duration::from_secs(30),
            Duration::from_millis(10),
        )
        .expect("the engine's ring");
    }

    /// Starts the server, on the port of the previous one when there was one.
    fn start_serve(&mut self) {
        self.starts += 1;
        let mut c = self.cmd();
        c.args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &self.port.to_string(),
        ])
        .args(["--heartbeat-secs", "1"])
        .args(&self.serve_extra);
        let log = self.logs.path().join(format!("serve-{}.log", self.starts));
        let p = Proc::spawn(c, log);
        let mut port = 0u16;
        wait_until("the server's address", 30, || {
            if let Some(x) = plain(&p.log())
                .lines()
                .filter(|l| l.contains("serving"))
                .find_map(|l| l.split("addr=").nth(1))
                .and_then(|a| a.split_whitespace().next())
                .and_then(|a| a.rsplit(':').next())
                .and_then(|x| x.parse().ok())
            {
                port = x;
            }
            port != 0
        });
        self.port = port;
        self.serve = Some(p);
    }

    /// SIGKILL.
    fn kill(p: &mut Option<Proc>) {
        let mut p = p.take().expect("running");
        let _ = p.child.kill();
        let _ = p.child.wait();
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The ring's run and the sequences of the contract's bid/ask records it holds.
    fn ring_ticks(&self) -> (String, Vec<u64>) {
        let mut r = RingReader::open(&self.shm.path().join("ticks.ring"), StartAt::Oldest)
            .expect("the ring");
        let epoch = format!("{:016x}", r.info().epoch);
        let mut seqs = Vec::new();
        loop {
            match r.try_read() {
                ReadOutcome::Record(rec) => {
                    if rec.instrument_id == MNQ && rec.kind == RecordKind::TbtBidAsk as u8 {
                        seqs.push(rec.seq);
                    }
                }
                ReadOutcome::Empty => break,
                ReadOutcome::Lost { count, .. } => panic!("the test's ring reader lost {count}"),
            }
        }
        (epoch, seqs)
    }
}

fn config(url: &str) -> ClientConfig {
    let mut c = ClientConfig::new(url);
    c.session.backoff = BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        factor: 2.0,
        max_attempts: None,
    };
    c
}

/// Counts kept as events arrive, so a wait condition costs O(1) per event.
#[derive(Debug, Default)]
struct Progress {
    ticks: usize,
    connected: usize,
    ticks_since_connected: usize,
    lost: bool,
    resuming_completes: usize,
    ticks_since_resuming: usize,
    restarts: usize,
    ticks_since_restart: usize,
    gaps: usize,
    ticks_since_gap: usize,
}

impl Progress {
    fn see(&mut self, e: &Event) {
        match e {
            Event::Tick { .. } => {
                self.ticks += 1;
                self.ticks_since_connected += 1;
                self.ticks_since_resuming += 1;
                self.ticks_since_restart += 1;
                self.ticks_since_gap += 1;
            }
            Event::State(t) if t.to == ConnState::Connected => {
                self.connected += 1;
                self.ticks_since_connected = 0;
            }
            Event::State(t) if t.to == ConnState::Reconnecting => self.lost = true,
            Event::Complete { resuming: true, .. } => {
                self.resuming_completes += 1;
                if self.resuming_completes == 1 {
                    self.ticks_since_resuming = 0;
                }
            }
            Event::Gap { gap, .. } => {
                self.gaps += 1;
                self.ticks_since_gap = 0;
                if gap.reason == GapReason::WriterRestart {
                    self.restarts += 1;
                    self.ticks_since_restart = 0;
                }
            }
            _ => {}
        }
    }
}

/// Reads events until `done` says so; panics (with the tail) after [`WAIT`].
async fn read_until(
    events: &mut Events,
    seen: &mut Vec<Event>,
    p: &mut Progress,
    mut done: impl FnMut(&Progress) -> bool,
) {
    let until = tokio::time::Instant::now() + WAIT;
    while !done(p) {
        match tokio::time::timeout_at(until, events.next()).await {
            Ok(Some(e)) => {
                p.see(&e);
                seen.push(e);
            }
            Ok(None) => panic!("the event stream ended; last: {:#?}", tail(seen)),
            Err(_) => panic!("timed out at {p:?}; last events: {:#?}", tail(seen)),
        }
    }
}

fn tail(seen: &[Event]) -> Vec<&Event> {
    seen.iter().rev().take(15).collect()
}

fn ticks(seen: &[Event]) -> Vec<u64> {
    seen.iter()
        .filter_map(|e| match e {
            Event::Tick { tick, .. } => Some(tick.seq),
            _ => None,
        })
        .collect()
}

/// The ring's records from the first delivered tick to the last are exactly the delivered
/// ticks: nothing lost, nothing twice, in order.
fn assert_exact(stack: &Stack, got: &[u64]) {
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, once: {got:?}"
    );
    let (_, ring) = stack.ring_ticks();
    let (first, last) = (got[0], *got.last().unwrap());
    let want: Vec<u64> = ring
        .into_iter()
        .filter(|s| (first..=last).contains(s))
        .collect();
    assert_eq!(
        want.len(),
        got.len(),
        "ring has {} ticks in {first}..={last}, the client delivered {}",
        want.len(),
        got.len()
    );
    assert_eq!(want, got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_server_killed_and_restarted_mid_stream_resumes_exactly() {
    let mut stack = Stack::start(&["--rate", "200"], &[], &[]);
    let (client, mut events) = Client::start(config(&stack.url())).unwrap();
    client
        .subscribe(Subscription::new(MNQ, &["bid_ask"]))
        .unwrap();
    let mut seen = Vec::new();
    let mut p = Progress::default();
    read_until(&mut events, &mut seen, &mut p, |p| p.ticks >= 50).await;
    Stack::kill(&mut stack.serve);
    read_until(&mut events, &mut seen, &mut p, |p| p.lost).await;
    stack.start_serve();
    read_until(&mut events, &mut seen, &mut p, |p| {
        p.connected >= 2 && p.ticks_since_connected >= 50
    })
    .await;
    assert!(
        seen.iter().any(
            |e| matches!(e, Event::Subscribed { resumed_after: Some(t), .. } if t.contains('-'))
        ),
        "the second subscribe resumed after a token"
    );
    assert!(
        seen.iter().all(|e| !matches!(e, Event::Gap { .. })),
        "nothing lost"
    );
    assert_exact(&stack, &ticks(&seen));
    let m = client.metrics();
    assert_eq!(m.reconnects, 1);
    assert_eq!(m.malformed, 0);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_restart_is_a_visible_event_and_the_new_run_is_delivered_from_its_start() {
    let mut stack = Stack::start(&["--rate", "200"], &[], &[]);
    let (old_epoch, _) = stack.ring_ticks();
    let (client, mut events) = Client::start(config(&stack.url())).unwrap();
    client
        .subscribe(Subscription::new(MNQ, &["bid_ask"]))
        .unwrap();
    let mut seen = Vec::new();
    let mut p = Progress::default();
    read_until(&mut events, &mut seen, &mut p, |p| p.ticks >= 30).await;
    Stack::kill(&mut stack.engine);
    stack.start_engine();
    let restart_at = |s: &[Event]| {
        s.iter().position(
            |e| matches!(e, Event::Gap { gap, .. } if gap.reason == GapReason::WriterRestart),
        )
    };
    read_until(&mut events, &mut seen, &mut p, |p| {
        p.restarts == 1 && p.ticks_since_restart >= 30
    })
    .await;
    let i = restart_at(&seen).unwrap();
    let Event::Gap { gap, .. } = &seen[i] else {
        unreachable!()
    };
    let (new_epoch, _) = stack.ring_ticks();
    assert_ne!(new_epoch, old_epoch);
    assert_eq!(gap.epoch.as_deref(), Some(old_epoch.as_str()));
    assert_eq!(gap.new_epoch.as_deref(), Some(new_epoch.as_str()));
    assert_eq!(
        gap.clean,
        Some(false),
        "killed: what followed its last record is unknown"
    );
    // The old run up to the restart, exactly.
    let before = ticks(&seen[..i]);
    assert!(
        gap.first_seq.unwrap() > *before.last().unwrap(),
        "the old run was delivered through first_seq - 1: {gap:?}"
    );
    // The new run from its very first tick, exactly.
    let after = ticks(&seen[i..]);
    let (_, ring) = stack.ring_ticks();
    assert_eq!(after[0], ring[0], "the new run's first tick");
    assert_exact(&stack, &after);
    assert_eq!(client.metrics().reconnects, 0, "the connection stayed up");
    client.close().await;
}

/// What the proxy does to the server's frames (once).
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Forward half of the n-th frame, then cut both sides.
    CutInFrame(usize),
    /// Replace the first payload byte of the n-th frame with `#`.
    Corrupt(usize),
}

/// A TCP proxy in front of the server that parses its WebSocket frames (server frames are
/// not masked) so a fault lands inside one.
struct Proxy {
    port: u16,
    fired: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(upstream: u16, fault: Fault) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let fired = Arc::new(AtomicUsize::new(0));
        let armed = Arc::new(Mutex::new(Some(fault)));
        let f2 = Arc::clone(&fired);
        tokio::spawn(async move {
            while let Ok((down, _)) = l.accept().await {
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                tokio::spawn(pipe(down, up, Arc::clone(&armed), Arc::clone(&f2)));
            }
        });
        Proxy { port, fired }
    }
}

async fn pipe(
    down: TcpStream,
    up: TcpStream,
    armed: Arc<Mutex<Option<Fault>>>,
    fired: Arc<AtomicUsize>,
) {
    let (mut dr, mut dw) = down.into_split();
    let (mut ur, mut uw) = up.into_split();
    let to_server = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut dr, &mut uw).await;
    });
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut in_headers = true;
    let mut frames = 0usize;
    'read: loop {
        let n = match ur.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if in_headers {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            if dw.write_all(&buf[..end + 4]).await.is_err() {
                break;
            }
            buf.drain(..end + 4);
            in_headers = false;
        }
        // Whole frames only: header (2, +2 or +8 length bytes), then the payload.
        loop {
            if buf.len() < 2 {
                break;
            }
            let (hdr, len) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
                127 if buf.len() >= 10 => (
                    10,
                    u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                ),
                126 | 127 => break,
                l => (2, l as usize),
            };
            if buf.len() < hdr + len {
                break;
            }
            frames += 1;
            let mut frame: Vec<u8> = buf.drain(..hdr + len).collect();
            let fault = {
                let mut a = armed.lock().unwrap();
                match *a {
                    Some(Fault::CutInFrame(k) | Fault::Corrupt(k)) if k == frames && len > 4 => {
                        a.take()
                    }
                    _ => None,
                }
            };
            match fault {
                Some(Fault::CutInFrame(_)) => {
                    let _ = dw.write_all(&frame[..hdr + len / 2]).await;
                    fired.fetch_add(1, Ordering::SeqCst);
                    break 'read;
                }
                Some(Fault::Corrupt(_)) => {
                    frame[hdr] = b'#';
                    fired.fetch_add(1, Ordering::SeqCst);
                }
                None => {}
            }
            if dw.write_all(&frame).await.is_err() {
                break 'read;
            }
        }
    }
    to_server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_frame_resumes_exactly() {
    let stack = Stack::start(&["--rate", "200"], &[], &[]);
    let proxy = Proxy::start(stack.port, Fault::CutInFrame(40)).await;
    let (client, mut events) =
        Client::start(config(&format!("http://127.0.0.1:{}", proxy.port))).unwrap();
    client
        .subscribe(Subscription::new(MNQ, &["bid_ask"]))
        .unwrap();
    let mut seen = Vec::new();
    let mut p = Progress::default();
    read_until(&mut events, &mut seen, &mut p, |p| {
        p.connected >= 2 && p.ticks_since_connected >= 40
    })
    .await;
    assert_eq!(proxy.fired.load(Ordering::SeqCst), 1);
    let lost = seen
        .iter()
        .find_map(|e| match e {
            Event::State(t) if t.to == ConnState::Reconnecting => Some(t.reason.clone()),
            _ => None,
        })
        .unwrap();
    assert!(lost.contains("connection lost"), "{lost}");
    assert!(
        seen.iter()
            .all(|e| !matches!(e, Event::Gap { .. } | Event::Malformed(_)))
    );
    assert_exact(&stack, &ticks(&seen));
    assert_eq!(client.metrics().reconnects, 1);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_frame_is_a_typed_error_counted_and_the_stream_resumes_exactly() {
    let stack = Stack::start(&["--rate", "200"], &[], &[]);
    let proxy = Proxy::start(stack.port, Fault::Corrupt(40)).await;
    let (client, mut events) =
        Client::start(config(&format!("http://127.0.0.1:{}", proxy.port))).unwrap();
    client
        .subscribe(Subscription::new(MNQ, &["bid_ask"]))
        .unwrap();
    let mut seen = Vec::new();
    let mut p = Progress::default();
    read_until(&mut events, &mut seen, &mut p, |p| {
        p.connected >= 2 && p.ticks_since_connected >= 40
    })
    .await;
    assert_eq!(proxy.fired.load(Ordering::SeqCst), 1);
    let errors: Vec<&FrameError> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Malformed(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(matches!(errors[0], FrameError::Json(_)), "{errors:?}");
    assert_eq!(client.metrics().malformed, 1);
    // The corrupted frame was a tick: the resume delivered it.
    assert_exact(&stack, &ticks(&seen));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_disconnected_by_the_server_loses_nothing() {
    slow_consumer_disconnected_loses_nothing(config).await;
}

/// The client's backpressure reaches the stream's socket, the server ends the stream
/// (`slow=disconnect`), and the client opens it again from its resume point: over
/// WebSocket on the same connection, over SSE as a new request for that stream.
async fn slow_consumer_disconnected_loses_nothing(make_config: impl Fn(&str) -> ClientConfig) {
    // 3000 ticks/s fill the socket buffers in seconds; each resubscription replays what the
    // consumer missed through the stream's queue (1024), so the client catches up within a
    // few of them.
    let stack = Stack::start(
        &["--rate", "3000"],
        &[],
        &["IB_STREAM_RING_CAPACITY=1048576"],
    );
    let mut cfg = make_config(&stack.url());
    cfg.queue_capacity = 1;
    // Small, but above two loopback segments (64 KiB each): below one, TCP crawls on
    // zero-window probes once the consumer reads again (see ClientConfig::recv_buffer).
    cfg.recv_buffer = Some(128 * 1024);
    let (client, mut events) = Client::start(cfg).unwrap();
    client
        .subscribe(Subscription::new(MNQ, &["bid_ask"]).slow(ServerSlowPolicy::Disconnect))
        .unwrap();
    let mut seen = Vec::new();
    let mut p = Progress::default();
    read_until(&mut events, &mut seen, &mut p, |p| p.ticks > 0).await;
    // Stop reading until the server has ended the stream for being slow.
    let port = stack.port;
    tokio::task::spawn_blocking(move || {
        wait_until("the server's slow-client close", 60, || {
            metric(port, "ib_stream_serve_slow_client_closes_total").unwrap_or(0.0) >= 1.0
        });
    })
    .await
    .unwrap();
    read_until(&mut events, &mut seen, &mut p, |p| {
        p.resuming_completes >= 1 && p.ticks_since_resuming >= 200
    })
    .await;
    assert!(
        seen.iter().any(
            |e| matches!(e, Event::ServerError { error, .. } if error.code == "slow_consumer")
        )
    );
    assert!(
        seen.iter().all(|e| !matches!(e, Event::Gap { .. })),
        "nothing lost"
    );
    assert_exact(&stack, &ticks(&seen));
    assert_eq!(
        client.metrics().reconnects,
        0,
        "only that stream was opened again, on the same connection"
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_past_the_client_bound_gets_exact_overflow_gaps() {
    let stack = Stack::start(&["--rate", "500"], &[], &[]);
    let mut cfg = config(&stack.url());
    cfg.queue_capacity = 8;
    cfg.slow_consumer = SlowConsumerPolicy::DropTicks;
    let (client, mut events) = Client::start(cfg).unwrap();
    client
        .subscribe(Subscription::new(MNQ, &["bid_ask"]))
        .unwrap();
    let mut seen = Vec::new();
    let mut p = Progress::default();
    read_until(&mut events, &mut seen, &mut p, |p| p.ticks >= 5).await;
    // Not reading: the client drops what does not fit, and counts it.
    let until = Instant::now() + WAIT;
    while client.metrics().overflow_dropped < 100 {
        assert!(Instant::now() < until, "no drops");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let health = client.health();
    assert_eq!(health.queued_events, 8, "the bound holds");
    assert_eq!(health.state, ConnState::Connected);
    read_until(&mut events, &mut seen, &mut p, |p| {
        p.gaps >= 1 && p.ticks_since_gap >= 50
    })
    .await;
    let got = ticks(&seen);
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    let mut covered: Vec<(u64, u64, u64)> = Vec::new();
    for e in &seen {
        if let Event::Gap { gap, .. } = e {
            assert_eq!(gap.reason, GapReason::ClientOverflow, "{gap:?}");
            covered.push((
                gap.first_seq.unwrap(),
                gap.last_seq.unwrap(),
                gap.count.unwrap(),
            ));
        }
    }
    // Every ring tick in the range was delivered or is in exactly one gap, and the counts add
    // up.
    let (_, ring) = stack.ring_ticks();
    let (first, last) = (got[0], *got.last().unwrap());
    let want: Vec<u64> = ring
        .into_iter()
        .filter(|s| (first..=last).contains(s))
        .collect();
    let dropped: u64 = covered.iter().map(|c| c.2).sum();
    assert_eq!(want.len() as u64, got.len() as u64 + dropped);
    for s in &want {
        let in_gap = covered
            .iter()
            .filter(|(a, b, _)| (a..=b).contains(&s))
            .count();
        assert_eq!(
            usize::from(got.binary_search(s).is_ok()) + in_gap,
            1,
            "tick {s}: delivered or in one gap"
        );
    }
    assert_eq!(client.metrics().overflow_dropped, dropped);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscriptions_on_one_connection_are_each_answered() {
    let stack = Stack::start(&["--rate", "100"], &[], &[]);
    let (client, mut events) = Client::start(config(&stack.url())).unwrap();
    let mnq = client
        .subscribe(Subscription::new(MNQ, &["bid_ask"]))
        .unwrap();
    let mut subs = vec![mnq];
    for cid in 1..1000u32 {
        subs.push(client.subscribe(Subscription::new(cid, &["last"])).unwrap());
    }
    let mut seen = Vec::new();
    let mut p = Progress::default();
    let mut answered = std::collections::HashSet::new();
    let until = tokio::time::Instant::now() + WAIT;
    while answered.len() < 1000 || p.ticks < 20 {
        let e = tokio::time::timeout_at(until, events.next())
            .await
            .unwrap_or_else(|_| panic!("timed out: {} answered, {p:?}", answered.len()))
            .expect("events");
        if let Event::Subscribed { sub, .. } | Event::SubscribeFailed { sub, .. } = &e {
            answered.insert(*sub);
        }
        p.see(&e);
        seen.push(e);
    }
    // Each subscription answered exactly once.
    let mut outcomes = std::collections::HashMap::new();
    for e in &seen {
        if let Event::Subscribed { sub, .. } | Event::SubscribeFailed { sub, .. } = e {
            *outcomes.entry(*sub).or_insert(0) += 1;
        }
    }
    assert_eq!(outcomes.len(), 1000);
    assert!(outcomes.values().all(|n| *n == 1), "answered twice");
    // Never more streams than the server allows per connection (20): past it the client
    // refuses with the server's code and limit instead of asking.
    let mut live = 0i64;
    let mut most = 0i64;
    for e in &seen {
        match e {
            Event::Subscribed { .. } => live += 1,
            Event::Complete {
                resuming: false, ..
            } => live -= 1,
            _ => {}
        }
        most = most.max(live);
    }
    assert!(most <= 20, "{most} streams at once");
    let local = seen
        .iter()
        .filter(|e| matches!(e, Event::SubscribeFailed { local: true, error, .. } if error.code == "too_many_streams" && error.message.contains("20 streams")))
        .count();
    let server: Vec<String> = seen
        .iter()
        .filter_map(|e| match e {
            Event::SubscribeFailed {
                local: false,
                error,
                ..
            } => Some(format!("{} {:?}", error.code, error.ib_code)),
            _ => None,
        })
        .collect();
    assert!(local > 0, "the cap was reached");
    // Contracts IB does not know are refused by the server (at once, or later as
    // `error{subscription_rejected}`): none of them ever has a tick.
    assert!(seen.iter().all(|e| match e {
        Event::Tick { sub, tick } => *sub == mnq && tick.cid == MNQ,
        _ => true,
    }));
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Subscribed { sub, .. } if *sub == mnq))
    );
    for e in &seen {
        if let Event::SubscribeFailed {
            local: false,
            error,
            ..
        } = e
        {
            assert!(
                !error.code.is_empty() && !error.message.is_empty(),
                "{error:?}"
            );
        }
    }
    eprintln!("refused: {local} by the client, by the server: {server:?}");
    assert!(seen.iter().all(|e| !matches!(e, Event::Malformed(_))));
    // The health counts are published before the events that change them go out, so they
    // may be ahead of what was read (a late `complete` for a refused contract still queued):
    // read on until the events catch up, bounded.
    let until = tokio::time::Instant::now() + WAIT;
    let h = loop {
        let h = client.health();
        if h.active_subscriptions as i64 == live {
            break h;
        }
        match tokio::time::timeout_at(until, events.next()).await {
            Ok(Some(e)) => {
                if let Event::Complete {
                    resuming: false, ..
                } = e
                {
                    live -= 1;
                }
                assert!(
                    !matches!(e, Event::Subscribed { .. } | Event::Malformed(_)),
                    "{e:?}"
                );
            }
            other => panic!(
                "health says {} active, the events {live}: {other:?}",
                h.active_subscriptions
            ),
        }
    };
    assert_eq!(h.state, ConnState::Connected);
    assert_eq!(h.metrics.reconnects, 0, "never cut for the rate limit");
    assert_eq!(h.pending_subscriptions, 0);
    client.close().await;
}

#[test]
fn watch_prints_ticks_as_json_lines_and_reports_a_dead_server_in_one_line() {
    let stack = Stack::start(&["--rate", "200"], &[], &[]);
    let out = stack
        .cmd()
        .args(["watch", "--url", &stack.url(), "--con-id", &MNQ.to_string()])
        .args(["--tick-types", "bid_ask", "--count", "20"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 20);
    assert!(
        lines
            .iter()
            .all(|t| t["cid"] == MNQ && t["tt"] == "bid_ask")
    );
    assert!(
        lines
            .windows(2)
            .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64())
    );
    assert!(stderr.contains("Connecting -> Connected"), "{stderr}");
    // Sizes come out as the server writes them: whole shares, not `3.0`.
    assert!(
        lines.iter().all(|t| t["bs"].is_u64() && t["as"].is_u64()),
        "{lines:?}"
    );

    // Nobody listens there: the client gives up after its attempts, said in one line.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let out = stack
        .cmd()
        .args(["watch", "--url", &format!("http://127.0.0.1:{port}")])
        .args(["--con-id", "1", "--max-attempts", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with(&format!(
            "ib-stream: error: watch http://127.0.0.1:{port}: connect failed"
        )) && last.contains("gave up after 1 attempts"),
        "{stderr}"
    );
}

/// The client on SSE: the server's heartbeat period (`--heartbeat-secs 1`) is not advertised
/// over SSE, so the client is told it.
fn sse_config(url: &str, transport: Transport) -> ClientConfig {
    let mut c = config(url);
    c.transport = transport;
    c.session.default_heartbeat = Duration::from_secs(1);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_web_server_killed_and_restarted_mid_stream_resumes_exactly() {
    let mut stack = Stack::start(&["--rate", "200"], &[], &[]);
    let (client, mut events) = Client::start(sse_config(&stack.url(), Transport::Sse)).unwrap();
    let sub = client
        .subscribe(Subscription::new(MNQ, &["bid_ask"]))
        .unwrap();
    let mut seen = Vec::new();
    let mut p = Progress::default();
    read_until(&mut events, &mut seen, &mut p, |p| p.ticks >= 50).await;
    assert_eq!(client.transport(), Some(Transport::Sse));
    Stack::kill(&mut stack.serve);
    read_until(&mut events, &mut seen, &mut p, |p| p.lost).await;
    stack.start_serve();
    read_until(&mut events, &mut seen, &mut p, |p| {
        p.connected >= 2 && p.ticks_since_connected >= 50
    })
    .await;
    assert!(
        seen.iter().any(
            |e| matches!(e, Event::Subscribed { resumed_after: Some(t), stream_id, .. } if t.contains('-') && stream_id.starts_with("sse-"))
        ),
        "the second request resumed after a token (Last-Event-ID)"
    );
    assert!(
        seen.iter().all(|e| !matches!(e, Event::Gap { .. })),
        "nothing lost"
    );
    assert_exact(&stack, &ticks(&seen));
    let m = client.metrics();
    assert_eq!(m.reconnects, 1);
    assert_eq!(m.malformed, 0);
    // The stream's heartbeats (every second here) reach the session: its silence deadline
    // is fed by them.
    read_until(&mut events, &mut seen, &mut p, |_| {
        client.metrics().heartbeats > 0
    })
    .await;
    // Unsubscribing drops the stream's HTTP request: the server lets the stream go.
    let port = stack.port;
    let open = tokio::task::spawn_blocking(move || {
        metric(port, "ib_stream_serve_streams{transport=\"sse\"}")
    })
    .await
    .unwrap();
    assert_eq!(open, Some(1.0));
    client.unsubscribe(sub).unwrap();
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(until, events.next()).await {
            Ok(Some(Event::Complete {
                complete,
                resuming: false,
                ..
            })) if complete.reason == "unsubscribed" => break,
            Ok(Some(_)) => {}
            other => panic!("no complete{{unsubscribed}} in time: {other:?}"),
        }
    }
    tokio::task::spawn_blocking(move || {
        wait_until("the server's SSE stream closed", 30, || {
            metric(port, "ib_stream_serve_streams{transport=\"sse\"}") == Some(0.0)
        });
    })
    .await
    .unwrap();
    client.close().await;

    // `watch --transport sse` on the restarted server.
    let out = stack
        .cmd()
        .args(["watch", "--url", &stack.url(), "--con-id", &MNQ.to_string()])
        .args([
            "--tick-types",
            "bid_ask",
            "--count",
            "5",
            "--transport",
            "sse",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5);
    assert!(stderr.contains("(SSE)"), "{stderr}");
}

/// A TCP proxy that answers `GET /v3/ws` with 404 (as a proxy without WebSocket support or
/// with only the SSE route configured would) and passes every other request through.
async fn no_websocket_proxy(upstream: u16) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let refused = Arc::new(AtomicUsize::new(0));
    let r2 = Arc::clone(&refused);
    tokio::spawn(async move {
        while let Ok((mut down, _)) = l.accept().await {
            let refused = Arc::clone(&r2);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match down.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                    if head.len() > 64 * 1024 {
                        return;
                    }
                }
                let line = head.split(|&c| c == b'\r').next().unwrap_or_default();
                if line.windows(6).any(|w| w == b"/v3/ws") {
                    refused.fetch_add(1, Ordering::SeqCst);
                    let _ = down
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                }
                let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                if up.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    (port, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_auto_falls_back_through_a_proxy_without_websocket_and_an_engine_restart_is_a_gap() {
    let mut stack = Stack::start(&["--rate", "200"], &[], &[]);
    let (old_epoch, _) = stack.ring_ticks();
    let (port, refused) = no_websocket_proxy(stack.port).await;
    let (client, mut events) = Client::start(sse_config(
        &format!("http://127.0.0.1:{port}"),
        Transport::Auto,
    ))
    .unwrap();
    client
        .subscribe(Subscription::new(MNQ, &["bid_ask"]))
        .unwrap();
    let mut seen = Vec::new();
    let mut p = Progress::default();
    read_until(&mut events, &mut seen, &mut p, |p| p.ticks >= 30).await;
    assert_eq!(client.transport(), Some(Transport::Sse));
    assert_eq!(refused.load(Ordering::SeqCst), 1);
    Stack::kill(&mut stack.engine);
    stack.start_engine();
    read_until(&mut events, &mut seen, &mut p, |p| {
        p.restarts == 1 && p.ticks_since_restart >= 30
    })
    .await;
    let i = seen
        .iter()
        .position(|e| matches!(e, Event::Gap { gap, .. } if gap.reason == GapReason::WriterRestart))
        .unwrap();
    let Event::Gap { gap, .. } = &seen[i] else {
        unreachable!()
    };
    let (new_epoch, _) = stack.ring_ticks();
    assert_eq!(gap.epoch.as_deref(), Some(old_epoch.as_str()));
    assert_eq!(gap.new_epoch.as_deref(), Some(new_epoch.as_str()));
    let before = ticks(&seen[..i]);
    assert!(gap.first_seq.unwrap() > *before.last().unwrap(), "{gap:?}");
    let after = ticks(&seen[i..]);
    let (_, ring) = stack.ring_ticks();
    assert_eq!(after[0], ring[0], "the new run's first tick");
    assert_exact(&stack, &after);
    assert_eq!(client.metrics().reconnects, 0, "the stream stayed up");
    assert_eq!(client.metrics().malformed, 0);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_a_slow_consumer_disconnected_by_the_server_loses_nothing() {
    slow_consumer_disconnected_loses_nothing(|url| sse_config(url, Transport::Sse)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_with_the_token_streams_and_without_it_each_subscription_is_refused_unauthorized() {
    let stack = Stack::start(
        &["--rate", "200"],
        &[],
        &["IB_STREAM_TOKEN=s3cret&+/0123456789ab"],
    );
    let mut cfg = sse_config(&stack.url(), Transport::Sse);
    cfg.token = Some("s3cret&+/0123456789ab".into());
    let (client, mut events) = Client::start(cfg).unwrap();
    client
        .subscribe(Subscription::new(MNQ, &["bid_ask"]))
        .unwrap();
    let mut seen = Vec::new();
    let mut p = Progress::default();
    read_until(&mut events, &mut seen, &mut p, |p| p.ticks >= 20).await;
    assert_eq!(client.metrics().malformed, 0);
    client.close().await;

    // No token: the connection (GET /ready, open) is made; the stream is refused, typed.
    let (client, mut events) = Client::start(sse_config(&stack.url(), Transport::Sse)).unwrap();
    client
        .subscribe(Subscription::new(MNQ, &["bid_ask"]))
        .unwrap();
    let until = tokio::time::Instant::now() + WAIT;
    let error = loop {
        match tokio::time::timeout_at(until, events.next()).await {
            Ok(Some(Event::SubscribeFailed { error, local, .. })) => {
                assert!(!local);
                break error;
            }
            Ok(Some(_)) => {}
            other => panic!("no refusal in time: {other:?}"),
        }
    };
    assert_eq!(error.code, "unauthorized", "{error:?}");
    client.close().await;
}
