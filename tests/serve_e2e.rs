//! End to end with real processes: `tws-sim`, `ib-stream engine` (a ring of 1024 records),
//! `ib-stream record` and `ib-stream serve`, talked to over HTTP and WebSocket on 127.0.0.1.
//!
//! Checked by sequence number and against `tws-sim expected`: live SSE ticks in order with
//! the simulator's values; `since=` from before the engine started replays storage and
//! joins the ring with no gap and no duplicate; a `Last-Event-ID` reconnect gets exactly
//! the missed ticks, from the ring and, once the ring has moved on, from storage; WebSocket
//! subscribe, unsubscribe and ping.

mod engine_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engine_support::{ENGINE, Sim, TempDir, expected};
use futures_util::{SinkExt, StreamExt};
use ib_stream::ipc::{RingReader, StartAt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const MNQ: u32 = 711_280_073;
/// Whole test bound.
const BUDGET: Duration = Duration::from_secs(55);

struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn ib-stream");
        Proc { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log());
        }
    }
}

fn ib_stream(shm: &Path, storage: &Path, sets: &[String]) -> Command {
    let mut c = Command::new(ENGINE);
    c.env_clear();
    for s in [
        format!("IB_STREAM_SHM_DIR={}", shm.display()),
        format!("IB_STREAM_STORAGE_PATH={}", storage.display()),
        format!("IB_STREAM_TRACKED_CONTRACTS={MNQ}:MNQ:bid_ask"),
        "IB_STREAM_LOG_LEVEL=info".into(),
    ]
    .iter()
    .chain(sets)
    {
        c.arg("--set").arg(s);
    }
    c
}

/// Strips ANSI escapes (in case the log is colored).
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The recorder's checkpoint `last_seq` (0 before the first).
fn stored_seq(storage: &Path) -> u64 {
    ib_stream::storage::checkpoint::Checkpoint::load(storage)
        .ok()
        .flatten()
        .map_or(0, |c| c.last_seq)
}

/// One SSE event.
#[derive(Debug, Clone)]
struct Ev {
    event: String,
    id: Option<u64>,
    data: Value,
}

/// A minimal SSE client: HTTP/1.0 (the body is the rest of the connection, no chunking).
struct Sse {
    r: BufReader<TcpStream>,
    pub status: u16,
}

impl Sse {
    async fn open(port: u16, path: &str, last_event_id: Option<u64>) -> Sse {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut req =
            format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut r = BufReader::new(s);
        let mut status = 0;
        loop {
            let mut line = String::new();
            tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line))
                .await
                .expect("response headers in 10 s")
                .unwrap();
            let l = line.trim_end();
            if status == 0 {
                status = l.split(' ').nth(1).unwrap().parse().unwrap();
                continue;
            }
            assert!(
                !l.to_ascii_lowercase().starts_with("transfer-encoding"),
                "HTTP/1.0 bodies are not chunked: {l}"
            );
            if l.is_empty() {
                break;
            }
        }
        Sse { r, status }
    }

    /// The next event (heartbeats skipped); `None` at the end of the stream.
    async fn next(&mut self) -> Option<Ev> {
        loop {
            let mut ev = Ev {
                event: String::new(),
                id: None,
                data: Value::Null,
            };
            loop {
                let mut line = String::new();
                let n = tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut line))
                    .await
                    .expect("an SSE line within 10 s")
                    .unwrap();
                if n == 0 {
                    return None;
                }
                let l = line.trim_end_matches('\n');
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("event: ") {
                    ev.event = v.into();
                } else if let Some(v) = l.strip_prefix("id: ") {
                    // `<epoch>-<seq>`: the resume token names the engine run.
                    let (epoch, seq) = v.split_once('-').expect("an id names its run");
                    assert_eq!(epoch.len(), 16, "{v}");
                    ev.id = Some(seq.parse().unwrap());
                } else if let Some(v) = l.strip_prefix("data: ") {
                    ev.data = serde_json::from_str(v).unwrap();
                }
            }
            if !ev.event.is_empty() && ev.event != "heartbeat" {
                return Some(ev);
            }
        }
    }

    /// Reads until `n` ticks arrived; returns every event (ticks and control messages).
    async fn ticks(&mut self, n: usize) -> Vec<Ev> {
        let mut out = Vec::new();
        let mut ticks = 0;
        while ticks < n {
            let e = self.next().await.expect("the stream ended early");
            if e.event == "tick" {
                ticks += 1;
            }
            out.push(e);
        }
        out
    }
}

fn tick_seqs(evs: &[Ev]) -> Vec<u64> {
    evs.iter()
        .filter(|e| e.event == "tick")
        .map(|e| {
            let s = e.data["seq"].as_u64().unwrap();
            assert_eq!(e.id, Some(s), "the SSE id is the tick's seq");
            s
        })
        .collect()
}

fn fixed(v: &Value, scale: i64) -> i64 {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    ib_stream::tickjson::parse_fixed(&text, scale).unwrap_or_else(|| panic!("not a decimal: {v}"))
}

/// True when the tick has the simulator's values of `want`.
fn same_quote(tick: &Value, want: &Value) -> bool {
    use ib_stream::ipc::{PRICE_SCALE, SIZE_SCALE};
    fixed(&tick["bp"], PRICE_SCALE) == fixed(&want["bid_price"], PRICE_SCALE)
        && fixed(&tick["ap"], PRICE_SCALE) == fixed(&want["ask_price"], PRICE_SCALE)
        && fixed(&tick["bs"], SIZE_SCALE) == fixed(&want["bid_size"], SIZE_SCALE)
        && fixed(&tick["as"], SIZE_SCALE) == fixed(&want["ask_size"], SIZE_SCALE)
}

/// Checks that `got` is exactly the reference ticks after `after`, in order.
fn exactly_after(reference: &BTreeMap<u64, Value>, after: u64, got: &[Ev], what: &str) {
    let ticks: Vec<&Ev> = got.iter().filter(|e| e.event == "tick").collect();
    let want: Vec<(&u64, &Value)> = reference.range(after + 1..).take(ticks.len()).collect();
    assert_eq!(want.len(), ticks.len(), "{what}: reference too short");
    for (t, (seq, json)) in ticks.iter().zip(want) {
        assert_eq!(t.id, Some(*seq), "{what}: a tick missed or repeated");
        assert_eq!(&t.data, json, "{what}: seq {seq}");
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// The next JSON message that is not a heartbeat.
async fn ws_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a WebSocket message in 10 s")
            .expect("the socket is open")
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] != "heartbeat" {
                return v;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_processes_serve_live_resume_and_history_then_live_exactly() {
    let started = Instant::now();
    let shm = TempDir::new("serve-e2e-shm");
    let storage = TempDir::new("serve-e2e-storage");
    let logs = TempDir::new("serve-e2e-logs");
    let t0_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 1000;
    let sim = Sim::start(&["--rate", "300", "--tbt-same-instrument-secs", "0"]);
    let mut engine_cmd = ib_stream(
        shm.path(),
        storage.path(),
        &[
            format!("IB_STREAM_PORTS={}", sim.port),
            "IB_STREAM_RING_CAPACITY=1024".into(),
        ],
    );
    engine_cmd.arg("engine");
    let _engine = Proc::spawn(engine_cmd, logs.path().join("engine.log"));
    let mut rec_cmd = ib_stream(
        shm.path(),
        storage.path(),
        &[
            "IB_STREAM_FLUSH_MS=20".into(),
            "IB_STREAM_FSYNC=never".into(),
        ],
    );
    rec_cmd.args(["record", "--ring-wait-secs", "20"]);
    let _recorder = Proc::spawn(rec_cmd, logs.path().join("record.log"));
    let mut serve_cmd = ib_stream(
        shm.path(),
        storage.path(),
        &["IB_STREAM_ENABLE_STORAGE=true".into()],
    );
    serve_cmd.args([
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--heartbeat-secs",
        "1",
    ]);
    let serve = Proc::spawn(serve_cmd, logs.path().join("serve.log"));
    let mut port = 0u16;
    wait_until("the server's address", 20, || {
        let log = plain(&serve.log());
        if let Some(p) = log
            .lines()
            .filter(|l| l.contains("serving"))
            .find_map(|l| l.split("addr=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
        {
            port = p;
        }
        port != 0
    });
    let ring_path = shm.path().join("ticks.ring");
    wait_until("the recorder to store ticks", 30, || {
        stored_seq(storage.path()) > 100
    });

    // 1. Live: in order, values as the simulator sent them (checked against the reference
    //    built from the since= stream below).
    let mut live = Sse::open(
        port,
        &format!("/v3/stream/{MNQ}?tick_types=bid_ask&limit=100"),
        None,
    )
    .await;
    assert_eq!(live.status, 200);
    let live_evs = live.ticks(100).await;
    assert_eq!(live_evs[0].event, "info");
    assert_eq!(live_evs[0].data["status"], "stream_start");
    let live_seqs = tick_seqs(&live_evs);
    assert!(
        live_seqs.windows(2).all(|w| w[0] < w[1]),
        "live ticks in order"
    );
    let done = live.next().await.unwrap();
    assert_eq!(done.event, "complete");
    assert_eq!(done.data["reason"], "limit_reached");

    // 2. History then live from before the engine started: every tick from the first,
    //    equal to the simulator's, across the join with no gap and no duplicate.
    let head_now = RingReader::open(&ring_path, StartAt::Newest)
        .unwrap()
        .head();
    let mut since = Sse::open(
        port,
        &format!("/v3/stream/{MNQ}?tick_types=bid_ask&since={t0_ms}"),
        None,
    )
    .await;
    assert_eq!(since.status, 200);
    let mut since_evs = Vec::new();
    // Read until well past the join: 200 ticks newer than what the ring had at the start.
    loop {
        let e = since.next().await.expect("since stream ended");
        let past = e.event == "tick" && e.id.unwrap() > head_now + 600;
        since_evs.push(e);
        if past {
            break;
        }
    }
    drop(since);
    let statuses: Vec<&str> = since_evs
        .iter()
        .filter(|e| e.event == "info")
        .filter_map(|e| e.data["status"].as_str())
        .collect();
    assert_eq!(
        statuses,
        ["stream_start", "history_start", "live"],
        "{statuses:?}"
    );
    assert!(
        since_evs.iter().all(|e| e.event != "gap"),
        "no gap: {:?}",
        since_evs.iter().find(|e| e.event == "gap")
    );
    let join = since_evs
        .iter()
        .position(|e| e.data["status"] == "live")
        .unwrap();
    let join_after = since_evs[join].data["after_seq"].as_u64().unwrap();
    let seqs = tick_seqs(&since_evs);
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "no duplicate, in order"
    );
    let (hist, ring): (Vec<u64>, Vec<u64>) = seqs.iter().partition(|s| **s <= join_after);
    assert!(
        !hist.is_empty() && !ring.is_empty(),
        "the stream crossed the join"
    );
    assert_eq!(
        since_evs[join].data["history_ticks"].as_u64().unwrap(),
        hist.len() as u64
    );
    let want = expected(MNQ, "BidAsk", seqs.len(), &[]);
    for (i, (e, w)) in since_evs
        .iter()
        .filter(|e| e.event == "tick")
        .zip(&want)
        .enumerate()
    {
        assert!(
            same_quote(&e.data, w),
            "tick {i} (seq {:?}): {} vs {w}",
            e.id,
            e.data
        );
    }
    let mut reference: BTreeMap<u64, Value> = since_evs
        .iter()
        .filter(|e| e.event == "tick")
        .map(|e| (e.id.unwrap(), e.data.clone()))
        .collect();
    // The live client saw a contiguous part of the same ticks.
    exactly_after(&reference, live_seqs[0] - 1, &live_evs, "live");

    // 3. A reconnect with Last-Event-ID while the ring holds the ticks: exactly the missed.
    let path = format!("/v3/stream/{MNQ}?tick_types=bid_ask");
    let mut a = Sse::open(port, &path, None).await;
    let first = a.ticks(20).await;
    let last_a = *tick_seqs(&first).last().unwrap();
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut a2 = Sse::open(port, &path, Some(last_a)).await;
    let resumed = a2.ticks(60).await;
    assert_eq!(resumed[0].data["resume_after"], last_a);
    assert!(resumed.iter().all(|e| e.event != "gap"));

    // 4. The same once the ring (1024 records) has moved past the resume point: storage.
    let mut b = Sse::open(port, &path, None).await;
    let first = b.ticks(10).await;
    let last_b = *tick_seqs(&first).last().unwrap();
    drop(b);
    wait_until("the ring to overwrite the resume point", 30, || {
        RingReader::open(&ring_path, StartAt::Newest)
            .unwrap()
            .head()
            > last_b + 1024 + 200
    });
    let mut b2 = Sse::open(port, &path, Some(last_b)).await;
    let mut resumed_b = Vec::new();
    loop {
        let e = b2.next().await.expect("resume stream ended");
        let joined = e.event == "info" && e.data["status"] == "live";
        resumed_b.push(e);
        if joined {
            break;
        }
    }
    resumed_b.extend(b2.ticks(50).await);
    drop(b2);
    assert!(
        resumed_b
            .iter()
            .any(|e| e.data["status"] == "history_start"),
        "the resume came from storage"
    );
    assert!(resumed_b.iter().all(|e| e.event != "gap"), "nothing lost");
    let b_seqs = tick_seqs(&resumed_b);
    let max_seen = *b_seqs.iter().chain(&tick_seqs(&resumed)).max().unwrap();

    // The reference up to everything seen: since= again, from storage and the ring.
    let mut r = Sse::open(port, &format!("{path}&since={t0_ms}"), None).await;
    loop {
        let e = r.next().await.expect("reference stream ended");
        assert_ne!(e.event, "gap", "{e:?}");
        if e.event == "tick" {
            let s = e.id.unwrap();
            if let Some(prev) = reference.insert(s, e.data.clone()) {
                assert_eq!(prev, e.data, "the same tick twice with different bytes");
            }
            if s >= max_seen {
                break;
            }
        }
    }
    drop(r);
    let all_want = expected(MNQ, "BidAsk", reference.len(), &[]);
    for (i, ((seq, t), w)) in reference.iter().zip(&all_want).enumerate() {
        assert!(
            same_quote(t, w),
            "reference tick {i} (seq {seq}): {t} vs {w}"
        );
    }
    exactly_after(&reference, last_a, &resumed, "resume from the ring");
    exactly_after(&reference, last_b, &resumed_b, "resume from storage");

    // 5. WebSocket: subscribe, ticks in order, ping, unsubscribe.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/v3/ws"))
        .await
        .unwrap();
    let hello = ws_json(&mut ws).await;
    assert_eq!(hello["status"], "connected", "{hello}");
    ws.send(Message::text(
        json!({"type": "subscribe", "id": 1, "contract_id": MNQ, "tick_types": ["bid_ask"]})
            .to_string(),
    ))
    .await
    .unwrap();
    let mut ws_ticks = Vec::new();
    let mut stream_id = String::new();
    while ws_ticks.len() < 30 {
        let v = ws_json(&mut ws).await;
        match v["type"].as_str() {
            Some("subscribed") => {
                assert_eq!(v["id"], 1);
                stream_id = v["stream_id"].as_str().unwrap().to_owned();
            }
            Some("info" | "heartbeat") => {}
            Some(other) => panic!("unexpected {other}: {v}"),
            None => {
                assert!(!stream_id.is_empty(), "ticks only after the answer");
                ws_ticks.push(v["seq"].as_u64().unwrap());
            }
        }
    }
    assert!(ws_ticks.windows(2).all(|w| w[1] > w[0]));
    ws.send(Message::text(
        json!({"type": "ping", "id": "p"}).to_string(),
    ))
    .await
    .unwrap();
    ws.send(Message::text(
        json!({"type": "unsubscribe", "id": 2, "stream_id": stream_id}).to_string(),
    ))
    .await
    .unwrap();
    let (mut pong, mut unsubscribed, mut complete) = (false, false, false);
    while !(pong && unsubscribed && complete) {
        let v = ws_json(&mut ws).await;
        match v["type"].as_str() {
            Some("pong") => pong = v["id"] == "p",
            Some("unsubscribed") => unsubscribed = v["stream_id"] == stream_id.as_str(),
            Some("complete") => {
                assert_eq!(v["reason"], "unsubscribed");
                assert!(unsubscribed, "complete after the answer");
                complete = true;
            }
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    assert!(started.elapsed() < BUDGET, "took {:?}", started.elapsed());
}
