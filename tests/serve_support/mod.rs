//! Shared test harness of the `serve_*` tests: a real ring, string table and status region
//! in a temporary directory, a control-socket responder that speaks the engine's protocol
//! (parsed by the engine's own `parse_request`), and helpers to read SSE bodies.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use ib_stream::config::TrackedContract;
use ib_stream::engine::control::{
    ControlRequest, RequestError, error_reply, ok_reply, parse_request,
};
use ib_stream::serve::{AppState, HistorySource, ServeConfig, WsLimits, app};
use ib_stream::tickjson;
use ib_stream_ipc::ring::RING_FILE_NAME;
use ib_stream_ipc::{
    ConnState, PRICE_SCALE, Quote, Record, RecordKind, RingWriter, SIZE_SCALE, ShmOptions,
    StatusSnapshot, StatusWriter, StringTableConfig, StringTableWriter, SubState, SubStatus, Trade,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tower::ServiceExt;

/// A contract the fake engine refuses at subscribe (IB code 200).
pub const REFUSED_CON: u32 = 999;
/// A contract whose engine subscription is held until [`EngineLog::release`] is set.
pub const SLOW_CON: u32 = 998;
/// A contract whose engine subscription is queued (IB's 15-second rule): the reply says
/// when the request goes out, [`QUEUED_AFTER_NS`] from now.
pub const QUEUED_CON: u32 = 997;
pub const QUEUED_AFTER_NS: i64 = 12_000_000_000;
/// The tracked contract of the default configuration.
pub const TRACKED_CON: u32 = 711_280_073;

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

pub fn quote(con: u32, bid: i64) -> Record {
    let mut r = Record::quote(
        con,
        now_ns(),
        Quote {
            bid_price: bid * PRICE_SCALE / 100,
            ask_price: (bid + 1) * PRICE_SCALE / 100,
            bid_size: 3 * SIZE_SCALE,
            ask_size: 4 * SIZE_SCALE,
        },
    );
    r.ts_recv = now_ns();
    r
}

pub fn trade(con: u32, price: i64, exchange_id: u32) -> Record {
    let mut r = Record::trade(
        false,
        con,
        now_ns(),
        Trade {
            price: price * PRICE_SCALE / 100,
            size: SIZE_SCALE,
            exchange_id,
            conditions_id: 0,
        },
    );
    r.ts_recv = now_ns();
    r
}

pub fn sub_record(con: u32, kind: RecordKind, state: SubState, code: i64) -> Record {
    let mut r = Record::new(RecordKind::Subscription);
    r.instrument_id = con;
    r.tick_type = state as u8;
    r.body = [kind as i64, code, 60001, 1];
    r.ts_recv = now_ns();
    r
}

/// What the fake engine was asked.
#[derive(Debug, Default)]
pub struct EngineLog {
    pub lines: Mutex<Vec<String>>,
    /// Lets the held subscribe of [`SLOW_CON`] be answered.
    pub release: std::sync::atomic::AtomicBool,
}

impl EngineLog {
    pub fn get(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
    pub fn count(&self, prefix: &str) -> usize {
        self.get().iter().filter(|l| l.starts_with(prefix)).count()
    }
}

/// Answers the control protocol on a Unix socket until the test ends.
pub async fn fake_engine(listener: tokio::net::UnixListener, log: Arc<EngineLog>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let log = Arc::clone(&log);
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut out = Vec::new();
                match parse_request(line.as_bytes()) {
                    Err(e) => {
                        log.lines.lock().unwrap().push(format!("bad:{}", e.message));
                        error_reply(&e, &mut out);
                    }
                    Ok((id, req)) => {
                        if matches!(&req, ControlRequest::Subscribe { key, .. } if key.con_id == SLOW_CON)
                        {
                            log.lines.lock().unwrap().push("held".into());
                            wait_for(|| log.release.load(std::sync::atomic::Ordering::Acquire))
                                .await;
                        }
                        answer(&log, id, req, &mut out)
                    }
                }
                if w.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn answer(log: &EngineLog, id: Option<Value>, req: ControlRequest, out: &mut Vec<u8>) {
    match req {
        ControlRequest::Subscribe { client, key } => {
            log.lines.lock().unwrap().push(format!(
                "subscribe:{}:{}:{client}",
                key.con_id,
                key.kind.name()
            ));
            if key.con_id == REFUSED_CON {
                let v = json!({"id": id, "ok": false, "error": {
                    "code": "rejected", "message": "No security definition has been found", "ib_code": 200}});
                out.extend_from_slice(v.to_string().as_bytes());
                out.push(b'\n');
            } else if key.con_id == QUEUED_CON {
                ok_reply(
                    &id,
                    json!({"state": "queued", "shared": false, "holders": 1,
                        "next_attempt_ns": now_ns() + QUEUED_AFTER_NS}),
                    out,
                );
            } else {
                ok_reply(
                    &id,
                    json!({"state": "requested", "shared": false, "holders": 1}),
                    out,
                );
            }
        }
        ControlRequest::Unsubscribe { client, key } => {
            log.lines.lock().unwrap().push(format!(
                "unsubscribe:{}:{}:{client}",
                key.con_id,
                key.kind.name()
            ));
            ok_reply(&id, json!({"holders": 0}), out);
        }
        ControlRequest::Lookup(q) => {
            log.lines.lock().unwrap().push(format!("lookup:{q:?}"));
            if q.con_id == Some(265_598) || q.symbol.as_deref() == Some("AAPL") {
                ok_reply(
                    &id,
                    json!({"contracts": [{"con_id": 265598, "symbol": "AAPL", "sec_type": "STK",
                        "exchange": "SMART", "currency": "USD", "long_name": "APPLE INC"}]}),
                    out,
                );
            } else {
                error_reply(
                    &RequestError {
                        id,
                        code: "not_found",
                        message: "no contract matches".into(),
                    },
                    out,
                );
            }
        }
        ControlRequest::SubscribeContract {
            client,
            query,
            kind,
        } => {
            // Serve subscribes by conId only; record the call so a test would notice it.
            log.lines.lock().unwrap().push(format!(
                "subscribe_contract:{query:?}:{}:{client}",
                kind.name()
            ));
            error_reply(
                &RequestError {
                    id,
                    code: "not_found",
                    message: "the test engine resolves no contract descriptions".into(),
                },
                out,
            );
        }
        ControlRequest::Ping => ok_reply(&id, json!({}), out),
        // The contract store as the engine's status describes it (`/cache/status` shows it).
        ControlRequest::Status => ok_reply(
            &id,
            json!({"contract_store": {
                "path": "/fake/contracts/contracts.json", "entries": 2, "last_written_ns": 1}}),
            out,
        ),
        ControlRequest::List | ControlRequest::Shutdown => ok_reply(&id, json!({}), out),
    }
}

/// Options of a test environment.
#[derive(Clone)]
pub struct EnvOpts {
    pub ring_capacity: u64,
    pub queue_capacity: usize,
    pub heartbeat: Duration,
    pub max_streams: usize,
    pub token: Option<String>,
    pub engine: bool,
    pub ws: WsLimits,
    pub per_ip: ib_stream::serve::limits::PerIpLimits,
    pub history: Option<Arc<dyn HistorySource>>,
    pub client_ids: ib_stream::clientid::IdSettings,
}

impl Default for EnvOpts {
    fn default() -> Self {
        EnvOpts {
            ring_capacity: 4096,
            queue_capacity: 1024,
            heartbeat: Duration::from_secs(30),
            max_streams: 2000,
            token: None,
            engine: true,
            ws: WsLimits::default(),
            per_ip: ib_stream::serve::limits::PerIpLimits::default(),
            history: None,
            client_ids: ib_stream::clientid::IdSettings::of(
                &ib_stream::config::Settings::defaults(ib_stream::config::Environment::Development),
            ),
        }
    }
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub writer: RingWriter,
    pub strings: StringTableWriter,
    pub log: Arc<EngineLog>,
    pub state: AppState,
    pub app: Router,
}

pub fn config(dir: &std::path::Path, o: &EnvOpts) -> ServeConfig {
    ServeConfig {
        shm_dir: dir.to_path_buf(),
        control_socket: dir.join("control.sock"),
        token: o.token.clone(),
        max_streams: o.max_streams,
        tracked: vec![TrackedContract {
            con_id: TRACKED_CON,
            symbol: "MNQ".into(),
            kinds: vec![RecordKind::TbtBidAsk, RecordKind::TbtLast],
            buffer_hours: 24,
        }],
        queue_capacity: o.queue_capacity,
        heartbeat: o.heartbeat,
        default_slow: ib_stream::serve::hub::SlowPolicy::Conflate,
        ws: o.ws,
        per_ip: o.per_ip,
        contract_cache_dir: dir.join("contract-cache"),
        contract_cache_ttl: Duration::from_secs(3600),
        control_timeout: Duration::from_secs(5),
        stale_after: Duration::from_secs(5),
        identity: "serve-test".into(),
        client_ids: o.client_ids.clone(),
    }
}

impl Env {
    pub async fn new(o: EnvOpts) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let opts = ShmOptions {
            prefault: false,
            ..ShmOptions::default()
        };
        let writer =
            RingWriter::create(&dir.path().join(RING_FILE_NAME), o.ring_capacity, &opts).unwrap();
        writer.heartbeat(now_ns() as u64);
        let strings = StringTableWriter::create(
            &dir.path().join(ib_stream::serve::STRINGS_FILE_NAME),
            writer.info().epoch,
            &StringTableConfig {
                max_entries: 64,
                max_bytes: 4096,
                max_len: 64,
            },
            &opts,
        )
        .unwrap();
        let log = Arc::new(EngineLog::default());
        if o.engine {
            // Bound before the server starts, so that no request finds the socket missing.
            let listener = tokio::net::UnixListener::bind(dir.path().join("control.sock")).unwrap();
            tokio::spawn(fake_engine(listener, Arc::clone(&log)));
        }
        let state = AppState::new(config(dir.path(), &o), o.history.clone());
        let app = app(state.clone());
        let env = Env {
            dir,
            writer,
            strings,
            log,
            state,
            app,
        };
        env.wait(|| {
            env.state
                .hub
                .stats()
                .ring_open
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .await;
        env
    }

    /// Waits (bounded) until `cond` holds; panics after 10 s.
    pub async fn wait(&self, cond: impl Fn() -> bool) {
        wait_for(cond).await
    }

    pub async fn wait_sinks(&self, n: u64) {
        self.wait(|| {
            self.state
                .hub
                .stats()
                .sinks
                .load(std::sync::atomic::Ordering::Relaxed)
                == n
        })
        .await
    }

    /// The SSE id (resume token) of sequence `seq` of the current writer's run.
    pub fn id(&self, seq: u64) -> String {
        format!("{:016x}-{seq}", self.writer.info().epoch)
    }

    pub fn publish(&mut self, rec: Record) -> Record {
        let seq = self.writer.publish(&rec);
        Record { seq, ..rec }
    }

    /// The exact JSON the server must send for a published record.
    pub fn json_of(&self, rec: &Record) -> String {
        struct L<'a>(&'a StringTableWriter);
        impl tickjson::StringLookup for L<'_> {
            fn lookup(&self, id: u32) -> Option<&[u8]> {
                self.0.get(id)
            }
        }
        let mut out = Vec::new();
        tickjson::encode(rec, &L(&self.strings), &mut out);
        String::from_utf8(out).unwrap()
    }

    pub async fn get(&self, uri: &str) -> Response<Body> {
        self.request(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    pub async fn request(&self, req: Request<Body>) -> Response<Body> {
        self.app.clone().oneshot(req).await.unwrap()
    }

    pub fn status_writer(&self, state: ConnState, subs: &[SubStatus]) -> StatusWriter {
        let mut w = StatusWriter::create(
            &self.dir.path().join(ib_stream::serve::STATUS_FILE_NAME),
            self.writer.info().epoch,
            &ShmOptions {
                prefault: false,
                ..ShmOptions::default()
            },
        )
        .unwrap();
        let mut snap = StatusSnapshot::new_boxed();
        snap.set_conn_state(state);
        snap.engine.server_version = 187;
        snap.engine.client_id = 7;
        for s in subs {
            snap.push_subscription(*s).unwrap();
        }
        snap.latencies.recv_to_publish.record(1500);
        snap.latencies.kernel_to_commit.record(2500);
        snap.latencies.read_to_commit.record(180);
        snap.counters.records_published = 42;
        w.publish(&snap, now_ns());
        w.heartbeat(now_ns());
        w
    }
}

pub async fn wait_for(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub async fn body_json(resp: Response<Body>) -> Value {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

pub async fn body_text(resp: Response<Body>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// One SSE event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// Reads events from an SSE response body.
pub struct SseReader {
    body: Body,
    buf: Vec<u8>,
    pub ended: bool,
}

impl SseReader {
    pub fn new(resp: Response<Body>) -> SseReader {
        assert_eq!(resp.status(), 200, "stream refused");
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        SseReader {
            body: resp.into_body(),
            buf: Vec::new(),
            ended: false,
        }
    }

    /// The next event, or `None` when the stream ended. Panics after 10 s of silence.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8(raw).unwrap();
                let mut ev = SseEvent {
                    event: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut any = false;
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = v.to_owned();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        ev.data.push_str(v);
                        any = true;
                    }
                }
                if any {
                    return Some(ev);
                }
                continue;
            }
            if self.ended {
                return None;
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("no SSE event within 10 s");
            match frame {
                None => self.ended = true,
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => panic!("body error: {e}"),
            }
        }
    }

    /// The next event that is not a heartbeat.
    pub async fn next_non_heartbeat(&mut self) -> Option<SseEvent> {
        loop {
            let e = self.next().await?;
            if e.event != "heartbeat" {
                return Some(e);
            }
        }
    }

    pub async fn expect(&mut self, event: &str) -> SseEvent {
        let e = self
            .next_non_heartbeat()
            .await
            .unwrap_or_else(|| panic!("stream ended, expected {event}"));
        assert_eq!(e.event, event, "{e:?}");
        e
    }
}

pub fn bytes_of(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A history source holding ticks as the recorder would, answering by sequence (and time)
/// like the storage library: up to `through` (the recorder's checkpoint) and no further.
#[derive(Debug)]
pub struct Recorded {
    /// (seq, conId, ts_recv ns, json) in sequence order.
    pub ticks: Mutex<Vec<(u64, u32, i64, String)>>,
    /// The last sequence "stored" (the checkpoint).
    pub through: std::sync::atomic::AtomicU64,
    /// The (first, last) sequences asked for.
    pub asked: Mutex<Vec<(u64, u64)>>,
    /// The ring epoch of each of `ticks`.
    pub epochs: Mutex<Vec<u64>>,
}

impl Default for Recorded {
    fn default() -> Self {
        Recorded {
            ticks: Mutex::default(),
            through: std::sync::atomic::AtomicU64::new(u64::MAX),
            asked: Mutex::default(),
            epochs: Mutex::default(),
        }
    }
}

impl Recorded {
    pub fn record(&self, env: &Env, rec: &Record) {
        self.epochs.lock().unwrap().push(env.writer.info().epoch);
        self.ticks.lock().unwrap().push((
            rec.seq,
            rec.instrument_id,
            rec.ts_recv,
            env.json_of(rec),
        ));
    }
}

impl HistorySource for Recorded {
    fn query(
        &self,
        _q: &ib_stream::serve::HistoryQuery,
    ) -> Result<ib_stream::serve::HistoryPage, ib_stream::serve::HistoryError> {
        Err(ib_stream::serve::HistoryError::Storage(
            "not used here".into(),
        ))
    }

    fn by_seq(
        &self,
        q: &ib_stream::serve::history::SeqQuery,
    ) -> Result<Option<ib_stream::serve::history::SeqPage>, ib_stream::serve::HistoryError> {
        use ib_stream::serve::history::{SeqItem, SeqPage};
        self.asked.lock().unwrap().push((q.first_seq, q.last_seq));
        let stored = self
            .through
            .load(std::sync::atomic::Ordering::Relaxed)
            .min(q.last_seq);
        let all = self.ticks.lock().unwrap();
        let epochs = self.epochs.lock().unwrap();
        let ticks: Vec<_> = all
            .iter()
            .zip(epochs.iter())
            .filter(|(_, e)| **e == q.epoch)
            .map(|(t, _)| t.clone())
            .collect();
        let items: Vec<SeqItem> = ticks
            .iter()
            .filter(|(s, c, ts, _)| {
                *c == q.con_id
                    && (q.first_seq..=stored).contains(s)
                    && q.start_ns.is_none_or(|st| *ts / 1000 >= st / 1000)
            })
            .take(q.limit)
            .map(|(s, _, _, j)| SeqItem::Tick {
                seq: *s,
                json: Bytes::from(j.clone()),
            })
            .collect();
        let last_stored = ticks.last().map_or(0, |t| t.0).min(stored);
        let through = if items.len() >= q.limit {
            items.last().map_or(0, SeqItem::seq)
        } else {
            last_stored
        };
        Ok(Some(SeqPage {
            items,
            through: through.max(q.first_seq - 1),
        }))
    }

    fn epochs_since(
        &self,
        con_id: u32,
        _tick_types: &[ib_stream::serve::params::TickType],
        start_ns: i64,
    ) -> Result<Vec<u64>, ib_stream::serve::HistoryError> {
        let ticks = self.ticks.lock().unwrap();
        let mut out = Vec::new();
        for ((_, c, ts, _), e) in ticks.iter().zip(self.epochs.lock().unwrap().iter()) {
            if *c == con_id && *ts >= start_ns && !out.contains(e) {
                out.push(*e);
            }
        }
        Ok(out)
    }
}
