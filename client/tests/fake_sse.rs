//! The client's SSE transport against a scripted HTTP server in the test: SSE configured
//! explicitly, and `Auto` falling back to SSE when the WebSocket upgrade gets a 404; a stream
//! cut in the middle of an event resumes with `Last-Event-ID`. The server writes chunked
//! bodies, as the real one does, split at awkward places. Every wait is bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ib_stream_client::{
    BackoffConfig, Client, ClientConfig, ConnState, Event, Events, Subscription, Transport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const BOUND: Duration = Duration::from_secs(20);
const EPOCH: &str = "00000000000000aa";

/// A request the server got.
#[derive(Debug)]
struct Req {
    path: String,
    last_event_id: Option<String>,
}

/// Reads a request head (bounded); `None` if the peer closed first.
async fn read_head(s: &mut TcpStream) -> Option<Req> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).await.ok()?;
        if n == 0 || buf.len() > 16 * 1024 {
            return None;
        }
        buf.extend_from_slice(&b[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_owned();
    let last_event_id = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("last-event-id"))
        .map(|(_, v)| v.trim().to_owned());
    Some(Req {
        path,
        last_event_id,
    })
}

/// The server: `/v3/ws` gets a 404 (counted), `/ready` a 200, and each `/v3/stream/...`
/// goes to the test with its socket, the response head already written.
struct Server {
    port: u16,
    ws_attempts: Arc<AtomicUsize>,
    streams: mpsc::UnboundedReceiver<(Req, TcpStream)>,
}

impl Server {
    async fn start() -> Server {
        Server::answering_upgrade_with(404).await
    }

    /// `status` to every WebSocket upgrade (404: no such route; 200: a proxy that answers
    /// without upgrading).
    async fn answering_upgrade_with(status: u16) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let ws_attempts = Arc::new(AtomicUsize::new(0));
        let (tx, streams) = mpsc::unbounded_channel();
        let ws = Arc::clone(&ws_attempts);
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut s, _)) = l.accept().await {
                let Some(req) = read_head(&mut s).await else {
                    continue;
                };
                if req.path.starts_with("/v3/ws") {
                    ws.fetch_add(1, Ordering::SeqCst);
                    let body = r#"{"error":{"code":"not_found","message":"no such route"}}"#;
                    let _ = s
                        .write_all(
                            format!(
                                "HTTP/1.1 {status} Whatever\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                } else if req.path.starts_with("/ready") {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                } else if req.path.starts_with("/v3/stream/") {
                    n += 1;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-stream-id: sse-{n}\r\ntransfer-encoding: chunked\r\n\r\n"
                    );
                    if s.write_all(head.as_bytes()).await.is_ok() {
                        let _ = tx.send((req, s));
                    }
                }
            }
        });
        Server {
            port,
            ws_attempts,
            streams,
        }
    }

    async fn next_stream(&mut self) -> (Req, TcpStream) {
        tokio::time::timeout(BOUND, self.streams.recv())
            .await
            .expect("a stream request in time")
            .expect("the server runs")
    }
}

/// Writes `data` as one HTTP chunk.
async fn chunk(s: &mut TcpStream, data: &str) {
    s.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
        .await
        .unwrap();
}

fn tick_event(seq: u64) -> String {
    format!(
        "event: tick\r\nid: {EPOCH}-{seq}\r\ndata: {{\"seq\":{seq},\"st\":1,\"cid\":5,\"tt\":\"last\",\"p\":1.5,\"s\":1}}\r\n\r\n"
    )
}

fn stream_start(stream_id: &str) -> String {
    format!(
        "event: info\ndata: {{\"type\":\"info\",\"status\":\"stream_start\",\"epoch\":\"{EPOCH}\",\"ring_head\":0,\"stream_id\":\"{stream_id}\"}}\n\n"
    )
}

fn config(port: u16, transport: Transport) -> ClientConfig {
    let mut c = ClientConfig::new(format!("http://127.0.0.1:{port}"));
    c.transport = transport;
    c.session.backoff = BackoffConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        factor: 2.0,
        max_attempts: None,
    };
    c
}

/// Reads events until `n` ticks came; returns every event.
async fn until_ticks(events: &mut Events, n: usize) -> Vec<Event> {
    let mut seen = Vec::new();
    let until = tokio::time::Instant::now() + BOUND;
    while seen
        .iter()
        .filter(|e| matches!(e, Event::Tick { .. }))
        .count()
        < n
    {
        match tokio::time::timeout_at(until, events.next()).await {
            Ok(Some(e)) => seen.push(e),
            other => panic!("no tick in time ({other:?}); seen {seen:#?}"),
        }
    }
    seen
}

fn seqs(seen: &[Event]) -> Vec<u64> {
    seen.iter()
        .filter_map(|e| match e {
            Event::Tick { tick, .. } => Some(tick.seq),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn sse_configured_streams_ticks_in_order_without_trying_websocket() {
    let mut server = Server::start().await;
    let (client, mut events) = Client::start(config(server.port, Transport::Sse)).unwrap();
    client
        .subscribe(Subscription::new(5, &["last"]).limit(100))
        .unwrap();
    let (req, mut s) = server.next_stream().await;
    assert_eq!(req.path, "/v3/stream/5?tick_types=last&limit=100");
    assert_eq!(req.last_event_id, None);
    chunk(&mut s, &stream_start("sse-1")).await;
    // Events split across chunks mid-line and mid-CRLF, a comment and a heartbeat between.
    let mut all = String::new();
    for seq in 1..=5 {
        all.push_str(&tick_event(seq));
        if seq == 2 {
            all.push_str(": keep-alive\r\n\r\nevent: heartbeat\r\ndata: {\"type\":\"heartbeat\",\"ts\":1,\"ring_head\":9}\r\n\r\n");
        }
    }
    for piece in all.as_bytes().chunks(37) {
        chunk(&mut s, std::str::from_utf8(piece).unwrap()).await;
    }
    let seen = until_ticks(&mut events, 5).await;
    assert_eq!(seqs(&seen), [1, 2, 3, 4, 5]);
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Subscribed { stream_id, .. } if stream_id == "sse-1"))
    );
    assert_eq!(client.transport(), Some(Transport::Sse));
    assert_eq!(server.ws_attempts.load(Ordering::SeqCst), 0);
    let m = client.metrics();
    assert_eq!((m.ticks, m.heartbeats, m.malformed), (5, 1, 0));
    assert_eq!(client.state(), ConnState::Connected);
    client.close().await;
}

#[tokio::test]
async fn auto_falls_back_to_sse_on_a_refused_upgrade_and_a_cut_stream_resumes_exactly() {
    let mut server = Server::start().await;
    let (client, mut events) = Client::start(config(server.port, Transport::Auto)).unwrap();
    client.subscribe(Subscription::new(5, &["last"])).unwrap();
    let (req, mut s) = server.next_stream().await;
    assert_eq!(req.last_event_id, None);
    chunk(&mut s, &stream_start("sse-1")).await;
    for seq in 1..=3 {
        chunk(&mut s, &tick_event(seq)).await;
    }
    let mut seen = until_ticks(&mut events, 3).await;
    assert_eq!(client.transport(), Some(Transport::Sse));
    // Cut inside the fourth event: the client has seen a part of it, never a whole one.
    let t4 = tick_event(4);
    chunk(&mut s, &t4[..t4.len() / 2]).await;
    drop(s);
    let (req, mut s) = server.next_stream().await;
    assert_eq!(
        req.last_event_id.as_deref(),
        Some(&*format!("{EPOCH}-3")),
        "resumes after the last tick delivered"
    );
    // The server resends from the token on (a tick at the token would be dropped).
    chunk(&mut s, &stream_start("sse-2")).await;
    for seq in 3..=6 {
        chunk(&mut s, &tick_event(seq)).await;
    }
    seen.extend(until_ticks(&mut events, 3).await);
    assert_eq!(seqs(&seen), [1, 2, 3, 4, 5, 6], "once each, in order");
    assert!(seen.iter().any(|e| matches!(
        e,
        Event::State(t) if t.to == ConnState::Reconnecting && t.reason.contains("stream ended")
    )));
    assert_eq!(
        server.ws_attempts.load(Ordering::SeqCst),
        1,
        "after the fallback the client stays on SSE"
    );
    let m = client.metrics();
    assert_eq!((m.reconnects, m.duplicates_dropped, m.gaps), (1, 1, 0));
    client.close().await;
}

#[tokio::test]
async fn auto_falls_back_when_a_proxy_answers_the_upgrade_without_upgrading() {
    let mut server = Server::answering_upgrade_with(200).await;
    let (client, mut events) = Client::start(config(server.port, Transport::Auto)).unwrap();
    client.subscribe(Subscription::new(5, &["last"])).unwrap();
    let (_, mut s) = server.next_stream().await;
    chunk(&mut s, &stream_start("sse-1")).await;
    chunk(&mut s, &tick_event(1)).await;
    let seen = until_ticks(&mut events, 1).await;
    assert_eq!(seqs(&seen), [1]);
    assert_eq!(client.transport(), Some(Transport::Sse));
    client.close().await;
}

#[tokio::test]
async fn websocket_only_does_not_fall_back_and_a_404_is_final() {
    let server = Server::start().await;
    let (client, mut events) = Client::start(config(server.port, Transport::WebSocket)).unwrap();
    let until = tokio::time::Instant::now() + BOUND;
    loop {
        match tokio::time::timeout_at(until, events.next()).await {
            Ok(Some(Event::State(t))) if t.to == ConnState::Failed => {
                assert!(t.reason.contains("404"), "{}", t.reason);
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("no failure in time: {other:?}"),
        }
    }
    assert_eq!(client.transport(), None);
    assert_eq!(server.ws_attempts.load(Ordering::SeqCst), 1);
    client.close().await;
}

#[tokio::test]
async fn a_silent_sse_stream_is_declared_dead_and_resumed() {
    let mut server = Server::start().await;
    let mut cfg = config(server.port, Transport::Sse);
    cfg.session.default_heartbeat = Duration::from_millis(200);
    let (client, mut events) = Client::start(cfg).unwrap();
    client.subscribe(Subscription::new(5, &["last"])).unwrap();
    let (_, mut s) = server.next_stream().await;
    chunk(&mut s, &stream_start("sse-1")).await;
    chunk(&mut s, &tick_event(1)).await;
    until_ticks(&mut events, 1).await;
    // Then nothing, the socket open: the client gives up on it after 2.5 periods.
    let (req, _s2) = server.next_stream().await;
    assert_eq!(req.last_event_id.as_deref(), Some(&*format!("{EPOCH}-1")));
    drop(s);
    assert_eq!(client.metrics().silent_deaths, 1);
    client.close().await;
}
