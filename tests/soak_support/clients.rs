//! Web clients of the soak: SSE and WebSocket clients that disconnect and come back with a
//! resume point (`Last-Event-ID`, `after_seq`), and one slow SSE client that stops reading.
//! Each keeps what it saw, for the accounting.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::system::{Rng, latest_pid};

/// What a client saw, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    Tick {
        seq: u64,
        st_us: i64,
        cid: u32,
        tt: String,
    },
    /// A gap message with a sequence range (`slow_client`, `reader_overrun`,
    /// `resume_unavailable`, or the engine's own gaps).
    Gap {
        reason: String,
        first: u64,
        last: u64,
    },
    /// The server said the sequence numbering changed: `gap{writer_restart}` or
    /// `info{resume_unavailable}`.
    EpochMark(String),
    /// A new connection; `resumed_after` is the resume point it asked for.
    Connect { resumed_after: Option<String> },
}

/// Turns one message (tick or control, the same JSON on SSE and WebSocket) into what the
/// accounting needs; `None` for messages it does not care about.
pub fn classify(v: &Value) -> Option<Seen> {
    match v.get("type").and_then(Value::as_str) {
        None => Some(Seen::Tick {
            seq: v["seq"].as_u64()?,
            st_us: v["st"].as_i64()?,
            cid: v["cid"].as_u64()? as u32,
            tt: v["tt"].as_str()?.to_string(),
        }),
        Some("gap") => {
            let reason = v["reason"].as_str().unwrap_or("").to_string();
            if reason == "writer_restart" {
                return Some(Seen::EpochMark(reason));
            }
            Some(Seen::Gap {
                reason,
                first: v["first_seq"].as_u64().unwrap_or(0),
                last: v["last_seq"].as_u64().unwrap_or(0),
            })
        }
        Some("info") if v["status"] == "resume_unavailable" => {
            Some(Seen::EpochMark("resume_unavailable".into()))
        }
        _ => None,
    }
}

/// One client's story.
#[derive(Clone, Debug)]
pub struct ClientLog {
    pub name: String,
    pub con_id: u32,
    pub kinds: Vec<String>,
    pub seen: Vec<Seen>,
    /// Connections that asked for a resume point and got a stream.
    pub resumed: u64,
    pub connect_failures: u64,
}

/// The incremental HTTP/1.1 + chunked + SSE parser of one connection.
#[derive(Default)]
struct SseParser {
    raw: Vec<u8>,
    headers_done: bool,
    chunked: bool,
    status: u16,
    body: Vec<u8>,
    event: String,
    data: String,
    id: Option<String>,
}

/// A complete SSE event: (`event`, `data`, `id`).
type SseEvent = (String, String, Option<String>);

impl SseParser {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) {
        self.raw.extend_from_slice(bytes);
        if !self.headers_done {
            let Some(end) = find(&self.raw, b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&self.raw[..end]).to_ascii_lowercase();
            self.status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            self.chunked = head.contains("transfer-encoding: chunked");
            self.raw.drain(..end + 4);
            self.headers_done = true;
        }
        if self.chunked {
            while let Some(eol) = find(&self.raw, b"\r\n") {
                let size_text = String::from_utf8_lossy(&self.raw[..eol]).to_string();
                let Ok(size) = usize::from_str_radix(size_text.trim(), 16) else {
                    self.raw.clear();
                    break;
                };
                if self.raw.len() < eol + 2 + size + 2 {
                    break;
                }
                self.body
                    .extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
                self.raw.drain(..eol + 2 + size + 2);
            }
        } else {
            self.body.append(&mut self.raw);
        }
        while let Some(nl) = self.body.iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&self.body[..nl])
                .trim_end_matches('\r')
                .to_string();
            self.body.drain(..=nl);
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push((
                        std::mem::take(&mut self.event),
                        std::mem::take(&mut self.data),
                        self.id.take(),
                    ));
                }
                self.event.clear();
                self.id = None;
            } else if let Some(v) = line.strip_prefix("event:") {
                self.event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                self.data.push_str(v.trim_start());
            } else if let Some(v) = line.strip_prefix("id:") {
                self.id = Some(v.trim().to_string());
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn sse_request(port: u16, con_id: u32, kinds: &[String], last_id: Option<&str>) -> String {
    let mut req = format!(
        "GET /v3/stream/{con_id}?tick_types={} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n",
        kinds.join(",")
    );
    if let Some(id) = last_id {
        req.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// An SSE client that reads for a few seconds, drops the connection, and comes back with
/// `Last-Event-ID`; it retries while the server is down.
pub fn spawn_sse_resumer(
    name: &str,
    port: u16,
    con_id: u32,
    kinds: &[&str],
    seed: u64,
    stop: Arc<AtomicBool>,
) -> JoinHandle<ClientLog> {
    let kinds: Vec<String> = kinds.iter().map(|s| s.to_string()).collect();
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut rng = Rng(seed);
        let mut log = ClientLog {
            name,
            con_id,
            kinds: kinds.clone(),
            seen: Vec::new(),
            resumed: 0,
            connect_failures: 0,
        };
        let mut last_id: Option<String> = None;
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                log.connect_failures += 1;
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            if s.write_all(sse_request(port, con_id, &kinds, last_id.as_deref()).as_bytes())
                .is_err()
            {
                continue;
            }
            let until = Instant::now() + Duration::from_millis(rng.range(2000, 7000));
            let mut p = SseParser::default();
            let mut events = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut announced = false;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => p.feed(&buf[..n], &mut events),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
                if p.headers_done && p.status != 200 {
                    break;
                }
                if p.headers_done && !announced {
                    announced = true;
                    if last_id.is_some() {
                        log.resumed += 1;
                    }
                    log.seen.push(Seen::Connect {
                        resumed_after: last_id.clone(),
                    });
                }
                for (_event, data, id) in events.drain(..) {
                    if let Ok(v) = serde_json::from_str::<Value>(&data)
                        && let Some(seen) = classify(&v)
                    {
                        log.seen.push(seen);
                    }
                    if id.is_some() {
                        last_id = id;
                    }
                }
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(rng.range(50, 400)));
        }
        log
    })
}

/// A WebSocket client doing the same with `subscribe{after_seq}`.
pub fn spawn_ws_resumer(
    name: &str,
    port: u16,
    con_id: u32,
    kinds: &[&str],
    seed: u64,
    stop: Arc<AtomicBool>,
) -> JoinHandle<ClientLog> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let kinds: Vec<String> = kinds.iter().map(|s| s.to_string()).collect();
    let name = name.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut rng = Rng(seed);
            let mut log = ClientLog {
                name,
                con_id,
                kinds: kinds.clone(),
                seen: Vec::new(),
                resumed: 0,
                connect_failures: 0,
            };
            let mut after: Option<u64> = None;
            let mut run: Option<String> = None;
            let url = format!("ws://127.0.0.1:{port}/v3/ws");
            while !stop.load(Ordering::Relaxed) {
                let Ok(Ok((mut ws, _))) = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio_tungstenite::connect_async(url.as_str()),
                )
                .await
                else {
                    log.connect_failures += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let mut sub = serde_json::json!({
                    "type": "subscribe", "id": 1, "contract_id": con_id, "tick_types": kinds,
                });
                // The resume token names the engine run (`<epoch>-<seq>`): the run comes from
                // `stream_start`, `history_epoch`, `live` and `gap{writer_restart}.new_epoch`.
                if let Some(a) = after {
                    sub["after_seq"] = match &run {
                        Some(e) => format!("{e}-{a}").into(),
                        None => a.into(),
                    };
                }
                if ws.send(Message::text(sub.to_string())).await.is_err() {
                    continue;
                }
                let until =
                    tokio::time::Instant::now() + Duration::from_millis(rng.range(2000, 7000));
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let msg = match tokio::time::timeout_at(until, ws.next()).await {
                        Err(_) | Ok(None) | Ok(Some(Err(_))) => break,
                        Ok(Some(Ok(m))) => m,
                    };
                    let Message::Text(text) = msg else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    if v["type"] == "subscribed" {
                        if after.is_some() {
                            log.resumed += 1;
                        }
                        log.seen.push(Seen::Connect {
                            resumed_after: after.map(|a| a.to_string()),
                        });
                        continue;
                    }
                    match (v["type"].as_str(), v["status"].as_str()) {
                        // A fresh stream starts in the current run; a resumed one stays in its
                        // resume point's run until the server says otherwise.
                        (Some("info"), Some("stream_start")) if after.is_none() => {
                            run = v["epoch"].as_str().map(str::to_string);
                        }
                        (Some("info"), Some("history_epoch" | "live")) => {
                            if let Some(e) = v["epoch"].as_str() {
                                run = Some(e.to_string());
                            }
                        }
                        (Some("info"), Some("resume_unavailable")) => {
                            // Live in the current run from here: nothing of it seen yet.
                            after = None;
                            run = v["epoch"].as_str().map(str::to_string);
                        }
                        (Some("gap"), _) if v["reason"] == "writer_restart" => {
                            if let Some(e) = v["new_epoch"].as_str() {
                                run = Some(e.to_string());
                                after = Some(0);
                            }
                        }
                        _ => {}
                    }
                    match classify(&v) {
                        Some(Seen::Tick { seq, .. }) => after = Some(seq),
                        Some(Seen::Gap {
                            ref reason, last, ..
                        }) if reason == "reader_overrun" || reason == "resume_unavailable" => {
                            after = Some(last)
                        }
                        _ => {}
                    }
                    if let Some(seen) = classify(&v) {
                        log.seen.push(seen);
                    }
                }
                let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
                tokio::time::sleep(Duration::from_millis(rng.range(50, 400))).await;
            }
            log
        })
    })
}

/// What the slow client got once it read again.
#[derive(Clone, Debug, Default)]
pub struct SlowReport {
    pub connections: u64,
    pub slow_gaps: u64,
    pub ticks_dropped: u64,
    pub ticks_read: u64,
}

/// An SSE client with a 4 KiB receive buffer that never reads while the run lasts (it
/// reconnects only when the web server was restarted); at the end it reads what is there.
pub fn spawn_slow_client(
    port: u16,
    con_id: u32,
    kinds: &[&str],
    up_lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<SlowReport> {
    let kinds: Vec<String> = kinds.iter().map(|s| s.to_string()).collect();
    std::thread::spawn(move || {
        let mut report = SlowReport::default();
        let mut conn: Option<(TcpStream, Option<u32>)> = None;
        while !stop.load(Ordering::Relaxed) {
            let serve = latest_pid(&up_lines.lock().unwrap(), "serve");
            if conn.as_ref().is_none_or(|(_, pid)| *pid != serve) {
                conn = slow_connect(port, con_id, &kinds).map(|s| (s, serve));
                if conn.is_some() {
                    report.connections += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(if conn.is_some() {
                1000
            } else {
                200
            }));
        }
        let Some((mut s, _)) = conn else {
            return report;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(2000)));
        let mut p = SseParser::default();
        let mut events = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => p.feed(&buf[..n], &mut events),
            }
        }
        for (event, data, _) in events {
            let Ok(v) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            if event == "tick" {
                report.ticks_read += 1;
            } else if v["type"] == "gap" && v["reason"] == "slow_client" {
                report.slow_gaps += 1;
                report.ticks_dropped += v["count"].as_u64().unwrap_or(0);
            }
        }
        report
    })
}

fn slow_connect(port: u16, con_id: u32, kinds: &[String]) -> Option<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    // Small before connect, so the advertised window stays small.
    sock.set_recv_buffer_size(4096).ok()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    sock.connect_timeout(&addr.into(), Duration::from_secs(2))
        .ok()?;
    let mut s: TcpStream = sock.into();
    s.write_all(sse_request(port, con_id, kinds, None).as_bytes())
        .ok()?;
    Some(s)
}
