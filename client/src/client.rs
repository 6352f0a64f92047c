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

mod connect;
mod sse_streams;

use connect::{Conn, connect};
pub use connect::{Endpoint, endpoint};
use sse_streams::{SseConn, StreamMsg};

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
