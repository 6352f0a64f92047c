//! The tokio side: one task owns the connection (a WebSocket, or for SSE one HTTP stream per
//! subscription, each read by a small task of its own), feeds the [`Session`] frames and time,
//! and carries out its actions. The consumer holds a [`Client`] (requests, state, metrics,
//! health) and an [`Events`] (the ordered stream of [`Event`]s).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::error::{ClientError, ConnectError, FrameError};
use crate::metrics::{Health, Metrics, MetricsSnapshot};
use crate::overflow::{Overflow, SlowConsumerPolicy};
use crate::session::{Action, Event, Session, SessionConfig, StreamRequest};
use crate::sse::{SseItem, SseParser};
use crate::state::ConnState;
use crate::subscription::{SubId, Subscription, percent_encode};

type Ws = WebSocketStream<TcpStream>;

/// Which transport the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// WebSocket, and SSE when the WebSocket upgrade is answered in a way that says there is
    /// no WebSocket there (HTTP 404, 405, 426 or 501, or a 2xx answer without the upgrade, as
    /// from a proxy that does not pass upgrades). Once fallen back the client stays on SSE.
    #[default]
    Auto,
    /// WebSocket only (`GET /v3/ws`).
    WebSocket,
    /// SSE only: one `GET /v3/stream/{conId}` per subscription.
    Sse,
}

/// The longest SSE line or event the client reads; a longer one is dropped as
/// [`FrameError::TooLarge`] (the server's largest messages are a few KiB).
const SSE_MAX_EVENT: usize = 1 << 20;
/// Batches of SSE events waiting for the client task, per connection: when they are full
/// the stream tasks stop reading their sockets, so backpressure reaches the server.
const SSE_QUEUE: usize = 16;

/// Everything a [`Client`] is built from.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server: `http://host:port`, `ws://host:port` or the full `ws://host:port/v3/ws`.
    pub url: String,
    /// Bearer token, when the server needs one (sent as `?token=`).
    pub token: Option<String>,
    /// Protocol settings (backoff, heartbeat grace, malformed frames).
    pub session: SessionConfig,
    /// Longest connection attempt (TCP and WebSocket handshake).
    pub connect_timeout: Duration,
    /// Events held for the consumer at most.
    pub queue_capacity: usize,
    /// What happens when that queue is full.
    pub slow_consumer: SlowConsumerPolicy,
    /// The socket's receive buffer (`SO_RCVBUF`), when it must be small: the kernel's
    /// default lets a paused consumer hide megabytes from the server's slow-client policy.
    /// Keep it above two of the path's TCP segments (loopback's are 64 KiB): below one, the
    /// connection falls back to zero-window probes with a growing backoff after a stall and
    /// crawls at a few KB/s.
    pub recv_buffer: Option<u32>,
    /// WebSocket, SSE, or WebSocket falling back to SSE (the default).
    pub transport: Transport,
}

impl ClientConfig {
    /// Defaults for `url`: 4096 queued events with backpressure, 5 s connect timeout.
    pub fn new(url: impl Into<String>) -> ClientConfig {
        ClientConfig {
            url: url.into(),
            token: None,
            session: SessionConfig::default(),
            connect_timeout: Duration::from_secs(5),
            queue_capacity: 4096,
            slow_consumer: SlowConsumerPolicy::Backpressure,
            recv_buffer: None,
            transport: Transport::Auto,
        }
    }
}

/// Where to connect: the host:port for TCP, the `ws://` URL of the handshake, and for SSE
/// the path prefix and the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`.
    pub authority: String,
    /// `ws://host:port/v3/ws[?token=...]`.
    pub url: String,
    /// The path before `/v3/...` (empty unless the server is behind a path prefix).
    pub prefix: String,
    /// `token=<percent-encoded token>`, when there is one.
    pub token_query: Option<String>,
}

impl Endpoint {
    /// The request target of an HTTP request to `path` (which may have a query), with the
    /// token.
    fn target(&self, path: &str) -> String {
        let mut t = format!("{}{path}", self.prefix);
        if let Some(q) = &self.token_query {
            t.push(if path.contains('?') { '&' } else { '?' });
            t.push_str(q);
        }
        t
    }
}

/// Reads `http://`, `ws://` (path empty or `/v3/ws`) and adds the token.
pub fn endpoint(url: &str, token: Option<&str>) -> Result<Endpoint, ConnectError> {
    let bad = |why: &str| ConnectError::BadUrl {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| {
            bad("only ws:// and http:// are supported (put TLS in front with a proxy)")
        })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    let path = match path.trim_end_matches('/') {
        "" => "/v3/ws",
        p if p.ends_with("/v3/ws") => p,
        _ => return Err(bad("the path must be empty or end in /v3/ws")),
    };
    let prefix = path.trim_end_matches("/v3/ws").to_owned();
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut url = format!("ws://{authority}{path}");
    let token_query = token.map(|t| {
        let mut q = String::from("token=");
        percent_encode(t, &mut q);
        q
    });
    if let Some(q) = &token_query {
        url.push('?');
        url.push_str(q);
    }
    Ok(Endpoint {
        authority,
        url,
        prefix,
        token_query,
    })
}

async fn tcp_connect(authority: &str, recv_buffer: Option<u32>) -> std::io::Result<TcpStream> {
    let Some(size) = recv_buffer else {
        return TcpStream::connect(authority).await;
    };
    let mut last = None;
    for addr in tokio::net::lookup_host(authority).await? {
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // Before connecting, so the window offered in the handshake is already small.
        sock.set_recv_buffer_size(size)?;
        match sock.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the host has no address")))
}

/// An open connection.
enum Conn {
    // Boxed: the enum is moved through the connect future; the WebSocket is large.
    Ws(Box<Ws>),
    /// The server answers HTTP; streams are opened per subscription.
    Sse,
}

async fn connect(
    ep: Endpoint,
    transport: Transport,
    timeout: Duration,
    recv_buffer: Option<u32>,
) -> Result<Conn, ConnectError> {
    let attempt = async {
        match transport {
            Transport::WebSocket => connect_ws(&ep, recv_buffer)
                .await
                .map(|w| Conn::Ws(Box::new(w))),
            Transport::Sse => probe_sse(&ep, recv_buffer).await.map(|()| Conn::Sse),
            Transport::Auto => match connect_ws(&ep, recv_buffer).await {
                Ok(ws) => Ok(Conn::Ws(Box::new(ws))),
                Err(e) if e.means_no_websocket() => {
                    tracing::info!(error = %e, "no WebSocket at the server: falling back to SSE");
                    probe_sse(&ep, recv_buffer).await.map(|()| Conn::Sse)
                }
                Err(e) => Err(e),
            },
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(ConnectError::Timeout(timeout)))
}

/// An HTTP/1.1 connection for one request; the connection's task ends with this guard.
struct Http {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    _conn: AbortOnDrop,
}

/// Aborts a task when dropped: a dropped SSE stream closes its socket at once.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn http_connect(ep: &Endpoint, recv_buffer: Option<u32>) -> Result<Http, ConnectError> {
    let tcp = tcp_connect(&ep.authority, recv_buffer).await?;
    let _ = tcp.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "SSE connection ended");
        }
    });
    Ok(Http {
        send,
        _conn: AbortOnDrop(task),
    })
}

async fn http_get(
    http: &mut Http,
    ep: &Endpoint,
    path: &str,
    last_event_id: Option<&str>,
) -> Result<hyper::Response<Incoming>, ConnectError> {
    let target = ep.target(path);
    let mut req = hyper::Request::get(target.as_str())
        .header(hyper::header::HOST, ep.authority.as_str())
        .header(hyper::header::ACCEPT, "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let req = req.body(Empty::new()).map_err(|e| ConnectError::BadUrl {
        url: target.clone(),
        why: e.to_string(),
    })?;
    Ok(http.send.send_request(req).await?)
}

/// SSE "connects" by asking the server's `/ready`: any HTTP answer shows the server is there
/// (an engine that is not ready yet is the streams' business, as over WebSocket).
async fn probe_sse(ep: &Endpoint, recv_buffer: Option<u32>) -> Result<(), ConnectError> {
    let mut http = http_connect(ep, recv_buffer).await?;
    let resp = http_get(&mut http, ep, "/ready", None).await?;
    let status = resp.status().as_u16();
    if matches!(status, 401 | 429) {
        let body = read_body(resp.into_body(), 512).await;
        return Err(ConnectError::Http {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(())
}

/// At most `max` bytes of a (short, error) body.
async fn read_body(mut body: Incoming, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < max {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d[..d.len().min(max - out.len())]);
                }
            }
            _ => break,
        }
    }
    out
}

/// What an SSE stream's task reports, tagged with its request id.
#[derive(Debug)]
enum StreamMsg {
    /// 200: `X-Stream-Id`.
    Open(Option<String>),
    /// An HTTP error and its body.
    Refused { status: u16, body: Vec<u8> },
    /// Events (a read's worth).
    Items(Vec<SseItem>),
    /// The stream ended.
    End(String),
}

/// The SSE streams of one connection; dropping it drops them all.
struct SseConn {
    tx: mpsc::Sender<(u64, StreamMsg)>,
    rx: mpsc::Receiver<(u64, StreamMsg)>,
    tasks: HashMap<u64, AbortOnDrop>,
}

impl SseConn {
    fn new() -> SseConn {
        let (tx, rx) = mpsc::channel(SSE_QUEUE);
        SseConn {
            tx,
            rx,
            tasks: HashMap::new(),
        }
    }

    fn open(&mut self, ep: &Endpoint, req: StreamRequest, cfg: &ClientConfig) {
        let id = req.id;
        let task = tokio::spawn(sse_stream(
            ep.clone(),
            req,
            cfg.connect_timeout,
            cfg.recv_buffer,
            self.tx.clone(),
        ));
        self.tasks.insert(id, AbortOnDrop(task));
    }
}

/// One subscription's SSE stream: the request, then its events until it ends.
async fn sse_stream(
    ep: Endpoint,
    req: StreamRequest,
    timeout: Duration,
    recv_buffer: Option<u32>,
    tx: mpsc::Sender<(u64, StreamMsg)>,
) {
    let id = req.id;
    let end = |why: String| (id, StreamMsg::End(why));
    let mut http = match tokio::time::timeout(timeout, http_connect(&ep, recv_buffer)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            let _ = tx.send(end(e.to_string())).await;
            return;
        }
        Err(_) => {
            let _ = tx
                .send(end(ConnectError::Timeout(timeout).to_string()))
                .await;
            return;
        }
    };
    // No timeout on the answer: the server answers once the engine has the subscription
    // (seconds for an untracked contract); the session's silence check bounds the wait.
    let resp = match http_get(&mut http, &ep, &req.path, req.last_event_id.as_deref()).await {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(end(e.to_string())).await;
            return;
        }
    };
    let status = resp.status().as_u16();
    let is_sse = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if status != 200 || !is_sse {
        let body = read_body(resp.into_body(), 4096).await;
        let _ = tx.send((id, StreamMsg::Refused { status, body })).await;
        return;
    }
    let stream_id = resp
        .headers()
        .get("x-stream-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if tx.send((id, StreamMsg::Open(stream_id))).await.is_err() {
        return;
    }
    let mut body = resp.into_body();
    let mut parser = SseParser::new(SSE_MAX_EVENT);
    let why = loop {
        match body.frame().await {
            Some(Ok(f)) => {
                let Ok(data) = f.into_data() else { continue };
                let mut items = Vec::new();
                parser.feed(&data, &mut items);
                if !items.is_empty() && tx.send((id, StreamMsg::Items(items))).await.is_err() {
                    return;
                }
            }
            Some(Err(e)) => break e.to_string(),
            None => break "end of stream".to_owned(),
        }
    };
    let _ = tx.send(end(why)).await;
}

async fn connect_ws(ep: &Endpoint, recv_buffer: Option<u32>) -> Result<Ws, ConnectError> {
    let tcp = tcp_connect(&ep.authority, recv_buffer)
        .await
        .map_err(|e| ConnectError::WebSocket(Box::new(tungstenite::Error::Io(e))))?;
    // One small frame per tick: no Nagle delay on our requests either.
    let _ = tcp.set_nodelay(true);
    match tokio_tungstenite::client_async(ep.url.as_str(), tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(&b[..b.len().min(512)]).into_owned())
                .unwrap_or_default();
            Err(ConnectError::Http {
                status: resp.status().as_u16(),
                body,
            })
        }
        Err(e) => Err(ConnectError::WebSocket(Box::new(e))),
    }
}

#[derive(Debug)]
enum Command {
    Subscribe(SubId, Subscription),
    Unsubscribe(SubId),
    Close(oneshot::Sender<()>),
}

/// What the task publishes for [`Client::health`], and the close signal.
#[derive(Debug, Default)]
struct Shared {
    /// Set by [`Client::close`]: a delivery blocked on a full queue gives up, so closing
    /// never waits for a consumer that stopped reading.
    stop: std::sync::atomic::AtomicBool,
    stop_notify: tokio::sync::Notify,
    state: AtomicU8,
    active: AtomicUsize,
    pending: AtomicUsize,
    ended: AtomicUsize,
    silence_limit_us: AtomicU64,
    /// 0: not connected yet, 1: WebSocket, 2: SSE.
    transport: AtomicU8,
}

fn state_code(s: ConnState) -> u8 {
    match s {
        ConnState::Disconnected => 0,
        ConnState::Connecting => 1,
        ConnState::Connected => 2,
        ConnState::Reconnecting => 3,
        ConnState::Closed => 4,
        ConnState::Failed => 5,
    }
}

fn state_of(c: u8) -> ConnState {
    match c {
        0 => ConnState::Disconnected,
        1 => ConnState::Connecting,
        2 => ConnState::Connected,
        3 => ConnState::Reconnecting,
        4 => ConnState::Closed,
        _ => ConnState::Failed,
    }
}

/// The handle of a running client.
#[derive(Debug)]
pub struct Client {
    cmds: mpsc::UnboundedSender<Command>,
    next_sub: AtomicU64,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    events: mpsc::WeakSender<Event>,
    capacity: usize,
    task: tokio::task::JoinHandle<()>,
}

/// The consumer's side: every [`Event`] in order.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client is closed or failed and every event was taken.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Up to `limit` waiting events into `out` (at least one, waiting for it); 0 at the end.
    pub async fn next_many(&mut self, out: &mut Vec<Event>, limit: usize) -> usize {
        self.rx.recv_many(out, limit).await
    }
}

fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Client {
    /// Starts a client on the current tokio runtime: it connects at once and reconnects by
    /// itself. Subscribe with [`Client::subscribe`], read [`Events`].
    pub fn start(cfg: ClientConfig) -> Result<(Client, Events), ClientError> {
        let ep = endpoint(&cfg.url, cfg.token.as_deref())?;
        if cfg.queue_capacity == 0 {
            return Err(ClientError::Config(
                "queue_capacity must be at least 1".into(),
            ));
        }
        let (tx, rx) = mpsc::channel(cfg.queue_capacity);
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::default());
        let shared = Arc::new(Shared::default());
        let weak = tx.downgrade();
        let task = tokio::spawn(run(
            ep,
            cfg.clone(),
            cmd_rx,
            tx,
            Arc::clone(&metrics),
            Arc::clone(&shared),
        ));
        Ok((
            Client {
                cmds,
                next_sub: AtomicU64::new(1),
                metrics,
                shared,
                events: weak,
                capacity: cfg.queue_capacity,
                task,
            },
            Events { rx },
        ))
    }

    /// Adds a subscription (sent when connected, resent after each reconnect).
    pub fn subscribe(&self, spec: Subscription) -> Result<SubId, ClientError> {
        let id = self.next_sub.fetch_add(1, Ordering::Relaxed);
        self.cmds
            .send(Command::Subscribe(id, spec))
            .map_err(|_| ClientError::Stopped(self.state()))?;
        Ok(id)
    }

    /// Ends a subscription (`complete{unsubscribed}` follows).
    pub fn unsubscribe(&self, sub: SubId) -> Result<(), ClientError> {
        self.cmds
            .send(Command::Unsubscribe(sub))
            .map_err(|_| ClientError::Stopped(self.state()))
    }

    /// Closes the connection and ends the client (state `Closed`); waits for the task.
    pub async fn close(self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.stop_notify.notify_one();
        let (ack, done) = oneshot::channel();
        if self.cmds.send(Command::Close(ack)).is_ok() {
            let _ = done.await;
        }
        let _ = self.task.await;
    }

    /// The connection state.
    pub fn state(&self) -> ConnState {
        state_of(self.shared.state.load(Ordering::Relaxed))
    }

    /// The transport of the current (or last) connection: `WebSocket` or `Sse`; `None`
    /// before the first connection.
    pub fn transport(&self) -> Option<Transport> {
        match self.shared.transport.load(Ordering::Relaxed) {
            1 => Some(Transport::WebSocket),
            2 => Some(Transport::Sse),
            _ => None,
        }
    }

    /// The counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// A health snapshot.
    pub fn health(&self) -> Health {
        let metrics = self.metrics.snapshot();
        let state = self.state();
        let since = (metrics.last_message_us != 0).then(|| wall_us() - metrics.last_message_us);
        let limit = self.shared.silence_limit_us.load(Ordering::Relaxed) as i64;
        let queued = self
            .events
            .upgrade()
            .map_or(0, |tx| self.capacity - tx.capacity());
        Health {
            state,
            healthy: state == ConnState::Connected && since.is_some_and(|s| s <= limit),
            since_last_message_us: since,
            active_subscriptions: self.shared.active.load(Ordering::Relaxed),
            pending_subscriptions: self.shared.pending.load(Ordering::Relaxed),
            ended_subscriptions: self.shared.ended.load(Ordering::Relaxed),
            queued_events: queued,
            metrics,
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<Conn, ConnectError>> + Send>>;

/// Waits for room in the queue, unless the client is closing; `Err` when the consumer is
/// gone or the client closes.
async fn send_waiting(tx: &mpsc::Sender<Event>, ev: Event, shared: &Shared) -> Result<(), ()> {
    match tx.try_send(ev) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        Err(mpsc::error::TrySendError::Full(ev)) => {
            if shared.stop.load(Ordering::SeqCst) {
                return Err(());
            }
            tokio::select! {
                r = tx.send(ev) => r.map_err(|_| ()),
                () = shared.stop_notify.notified() => Err(()),
            }
        }
    }
}

/// Hands `ev` to the consumer under the slow-consumer policy; `Err` when the consumer is gone.
async fn deliver(
    tx: &mpsc::Sender<Event>,
    ev: Event,
    policy: SlowConsumerPolicy,
    overflow: &mut Overflow,
    metrics: &Metrics,
    shared: &Shared,
) -> Result<(), ()> {
    use mpsc::error::TrySendError;
    if let (Event::Tick { sub, .. }, SlowConsumerPolicy::DropTicks) = (&ev, policy) {
        let sub = *sub;
        if let Some(g) = overflow.take(sub) {
            match tx.try_send(Event::Gap {
                sub: Some(sub),
                gap: g,
            }) {
                Ok(()) => Metrics::add(&metrics.gaps, 1),
                Err(TrySendError::Full(Event::Gap { gap, .. })) => {
                    overflow.restore(sub, &gap);
                    if let Event::Tick { tick, .. } = &ev {
                        overflow.drop_tick(sub, tick);
                    }
                    Metrics::add(&metrics.overflow_dropped, 1);
                    return Ok(());
                }
                Err(_) => return Err(()),
            }
        }
        return match tx.try_send(ev) {
            Ok(()) => {
                Metrics::add(&metrics.ticks, 1);
                Ok(())
            }
            Err(TrySendError::Full(Event::Tick { sub, tick })) => {
                overflow.drop_tick(sub, &tick);
                Metrics::add(&metrics.overflow_dropped, 1);
                Ok(())
            }
            Err(_) => Err(()),
        };
    }
    let sub = match &ev {
        Event::Tick { sub, .. }
        | Event::Subscribed { sub, .. }
        | Event::SubscribeFailed { sub, .. }
        | Event::Complete { sub, .. } => Some(*sub),
        Event::Gap { sub, .. } | Event::Info { sub, .. } | Event::ServerError { sub, .. } => *sub,
        Event::State(_) | Event::Malformed(_) => None,
    };
    if let Some(s) = sub
        && let Some(g) = overflow.take(s)
    {
        Metrics::add(&metrics.gaps, 1);
        send_waiting(
            tx,
            Event::Gap {
                sub: Some(s),
                gap: g,
            },
            shared,
        )
        .await?;
    }
    if matches!(ev, Event::Tick { .. }) {
        Metrics::add(&metrics.ticks, 1);
    }
    send_waiting(tx, ev, shared).await
}

/// Reports drops waiting for a subscription that has had no event since.
fn flush_overflow(tx: &mpsc::Sender<Event>, overflow: &mut Overflow, metrics: &Metrics) {
    for sub in overflow.subs() {
        let Some(g) = overflow.take(sub) else {
            continue;
        };
        match tx.try_send(Event::Gap {
            sub: Some(sub),
            gap: g,
        }) {
            Ok(()) => Metrics::add(&metrics.gaps, 1),
            Err(mpsc::error::TrySendError::Full(Event::Gap { gap, .. })) => {
                overflow.restore(sub, &gap);
                return;
            }
            Err(_) => return,
        }
    }
}

async fn run(
    ep: Endpoint,
    cfg: ClientConfig,
    mut cmds: mpsc::UnboundedReceiver<Command>,
    tx: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
) {
    let mut sess = Session::new(cfg.session.clone(), Arc::clone(&metrics), Instant::now());
    let mut ws: Option<Ws> = None;
    let mut sse: Option<SseConn> = None;
    // Auto becomes Sse after a fallback: the server will not grow a WebSocket.
    let mut transport = cfg.transport;
    let mut connecting: Option<Connecting> = None;
    let mut overflow = Overflow::default();
    let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let sleep = tokio::time::sleep_until(far);
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    sess.start(Instant::now());
    loop {
        // Published before the events go out: a health snapshot is never older than an
        // event the consumer has seen.
        if sess.take_changed() {
            let state = sess.state();
            shared.state.store(state_code(state), Ordering::Relaxed);
            let (a, p, e) = sess.counts();
            shared.active.store(a, Ordering::Relaxed);
            shared.pending.store(p, Ordering::Relaxed);
            shared.ended.store(e, Ordering::Relaxed);
            shared
                .silence_limit_us
                .store(sess.silence_limit().as_micros() as u64, Ordering::Relaxed);
        }
        while let Some(a) = sess.poll_action() {
            match a {
                Action::Connect => {
                    connecting = Some(Box::pin(connect(
                        ep.clone(),
                        transport,
                        cfg.connect_timeout,
                        cfg.recv_buffer,
                    )));
                }
                Action::Send(text) => {
                    if let Some(w) = ws.as_mut()
                        && let Err(e) = w.send(Message::text(text)).await
                    {
                        ws = None;
                        sess.on_closed(&format!("send failed: {e}"), Instant::now());
                    }
                }
                Action::Disconnect => {
                    if let Some(mut w) = ws.take() {
                        // A polite close, but never waiting on a dead peer.
                        let _ =
                            tokio::time::timeout(Duration::from_millis(100), w.close(None)).await;
                    }
                    sse = None;
                    connecting = None;
                }
                Action::OpenStream(r) => {
                    if let Some(c) = sse.as_mut() {
                        c.open(&ep, r, &cfg);
                    }
                }
                Action::CloseStream(id) => {
                    if let Some(c) = sse.as_mut() {
                        c.tasks.remove(&id);
                    }
                }
                Action::Deliver(ev) => {
                    if deliver(&tx, ev, cfg.slow_consumer, &mut overflow, &metrics, &shared)
                        .await
                        .is_err()
                    {
                        // The consumer dropped its Events, or closes: nobody listens.
                        sess.close(Instant::now());
                    }
                }
            }
        }
        if sess.state().is_terminal() {
            // Every action, the last transition included, was carried out above.
            shared
                .state
                .store(state_code(sess.state()), Ordering::Relaxed);
            break;
        }
        if !overflow.is_empty() {
            flush_overflow(&tx, &mut overflow, &metrics);
        }
        let deadline = sess.next_deadline();
        if deadline != armed {
            armed = deadline;
            sleep
                .as_mut()
                .reset(deadline.map_or(far, tokio::time::Instant::from_std));
        }
        tokio::select! {
            // Frames first: after the consumer held us up, what is in the socket proves the
            // server alive before the silence deadline is looked at.
            biased;
            m = async { ws.as_mut().expect("guarded").next().await }, if ws.is_some() => {
                let now = Instant::now();
                match m {
                    Some(Ok(Message::Text(t))) => sess.on_frame(t.as_bytes(), now, wall_us()),
                    Some(Ok(Message::Binary(b))) => sess.on_binary(b.len(), now, wall_us()),
                    Some(Ok(Message::Close(f))) => {
                        ws = None;
                        let why = f.map_or_else(
                            || "closed by the server".to_owned(),
                            |f| format!("closed by the server: {} {}", u16::from(f.code), f.reason),
                        );
                        sess.on_closed(&why, now);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        ws = None;
                        sess.on_closed(&e.to_string(), now);
                    }
                    None => {
                        ws = None;
                        sess.on_closed("end of stream", now);
                    }
                }
            }
            m = async { sse.as_mut().expect("guarded").rx.recv().await }, if sse.is_some() => {
                let now = Instant::now();
                // The connection holds a sender: `None` cannot happen while it is open.
                let Some((id, m)) = m else { continue };
                match m {
                    StreamMsg::Open(stream_id) => sess.on_stream_open(id, stream_id, now),
                    StreamMsg::Refused { status, body } => {
                        if let Some(c) = sse.as_mut() {
                            c.tasks.remove(&id);
                        }
                        sess.on_stream_refused(id, status, &body, now);
                    }
                    StreamMsg::Items(items) => {
                        let wall = wall_us();
                        for it in items {
                            match it {
                                SseItem::Event(e) => {
                                    sess.on_stream_frame(id, &e.data, e.id.as_deref(), now, wall);
                                }
                                SseItem::Comment => sess.on_stream_alive(id, now),
                                SseItem::Oversized { len } => {
                                    sess.on_stream_malformed(id, FrameError::TooLarge(len), now, wall);
                                }
                            }
                        }
                    }
                    StreamMsg::End(why) => {
                        if let Some(c) = sse.as_mut() {
                            c.tasks.remove(&id);
                        }
                        sess.on_stream_end(id, &why, now);
                    }
                }
            }
            r = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                let now = Instant::now();
                match r {
                    Ok(Conn::Ws(w)) => {
                        ws = Some(*w);
                        shared.transport.store(1, Ordering::Relaxed);
                        sess.on_open(now);
                    }
                    Ok(Conn::Sse) => {
                        sse = Some(SseConn::new());
                        transport = Transport::Sse;
                        shared.transport.store(2, Ordering::Relaxed);
                        sess.on_open_sse(now);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "connect failed");
                        sess.on_connect_failed(&e, now);
                    }
                }
            }
            c = cmds.recv() => {
                let now = Instant::now();
                match c {
                    Some(Command::Subscribe(id, s)) => sess.subscribe(id, s, now),
                    Some(Command::Unsubscribe(id)) => sess.unsubscribe(id, now),
                    Some(Command::Close(ack)) => {
                        acks.push(ack);
                        sess.close(now);
                    }
                    // Every Client handle is gone.
                    None => sess.close(now),
                }
            }
            () = &mut sleep, if armed.is_some() => {
                armed = None;
                sess.on_timer(Instant::now());
            }
        }
    }
    if let Some(mut w) = ws.take() {
        let _ = tokio::time::timeout(Duration::from_millis(100), w.close(None)).await;
    }
    for a in acks {
        let _ = a.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_into_an_endpoint() {
        let e = endpoint("http://127.0.0.1:8101", None).unwrap();
        assert_eq!(e.authority, "127.0.0.1:8101");
        assert_eq!(e.url, "ws://127.0.0.1:8101/v3/ws");
        assert_eq!(e.prefix, "");
        assert_eq!(e.target("/ready"), "/ready");
        let e = endpoint("ws://h:9/v3/ws", Some("a b&c")).unwrap();
        assert_eq!(e.url, "ws://h:9/v3/ws?token=a%20b%26c");
        assert_eq!(
            e.target("/v3/stream/5?tick_types=last"),
            "/v3/stream/5?tick_types=last&token=a%20b%26c"
        );
        let e = endpoint("http://h:9/ibs/v3/ws", None).unwrap();
        assert_eq!(e.prefix, "/ibs");
        assert_eq!(e.target("/ready"), "/ibs/ready");
        assert_eq!(endpoint("ws://h", None).unwrap().authority, "h:80");
        for bad in ["https://h:1", "ftp://x", "ws://", "ws://h:1/other"] {
            let e = endpoint(bad, None).unwrap_err();
            assert!(e.is_permanent(), "{bad}");
        }
    }
}
