//! The protocol logic, sans IO: a [`Session`] is fed connection events, frames and time, and
//! answers with [`Action`]s (connect, send this text, drop the connection, deliver this event).
//! The tokio task in [`crate::client`] owns the socket and the clock; the tests drive a
//! session directly with made-up frames and instants.
//!
//! What it guarantees the consumer: each subscription's ticks once and in order, across
//! reconnects (it resubscribes after the last position it delivered, naming the engine run,
//! and drops anything at or before it), or a `gap` with the range; an engine restart as
//! `gap{writer_restart}` (or `info{resume_unavailable}` when the client was away).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::backoff::{Backoff, BackoffConfig};
use crate::error::{ConnectError, FrameError};
use crate::message::{
    self, Complete, Gap, GapReason, Info, Limits, ServerError, ServerMessage, Tick,
};
use crate::metrics::Metrics;
use crate::state::{ConnState, StateMachine, Transition};
use crate::subscription::{ResumePoint, SubId, Subscription, type_index};

/// What to do with a frame that cannot be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedPolicy {
    /// Deliver the error, then reconnect and resume every stream from its last position: a
    /// corrupted frame may have been a tick, and the resume gets it again. The default.
    Resync,
    /// Deliver the error and go on with the next frame (a corrupted tick is then lost
    /// without a gap).
    Skip,
}

/// The session's settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Seed of the backoff's jitter.
    pub seed: u64,
    /// The connection is declared dead when no frame arrives within this many heartbeat
    /// periods (the server sends one every `heartbeat_seconds`).
    pub heartbeat_grace: f64,
    /// The heartbeat period assumed until the server says (`info{connected}`).
    pub default_heartbeat: Duration,
    /// Malformed frames.
    pub malformed: MalformedPolicy,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            backoff: BackoffConfig::default(),
            seed: 0x9e37_79b9_7f4a_7c15,
            heartbeat_grace: 2.5,
            default_heartbeat: Duration::from_secs(15),
            malformed: MalformedPolicy::Resync,
        }
    }
}

/// What the consumer receives, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The connection state changed.
    State(Transition),
    /// A tick of a subscription.
    Tick {
        /// The subscription.
        sub: SubId,
        /// The tick.
        tick: Tick,
    },
    /// Ticks lost, with the range (`sub` is `None` for a gap the client cannot attribute).
    Gap {
        /// The subscription.
        sub: Option<SubId>,
        /// The gap.
        gap: Gap,
    },
    /// An `info` message.
    Info {
        /// The subscription, if about one.
        sub: Option<SubId>,
        /// The message.
        info: Info,
    },
    /// The server accepted a subscription (again, after a reconnect: `resumed_after` is the
    /// token it resumed after).
    Subscribed {
        /// The subscription.
        sub: SubId,
        /// The server's stream id.
        stream_id: String,
        /// The resume token sent, if any.
        resumed_after: Option<String>,
    },
    /// A subscription was refused (by the server, or by the client when the server's
    /// advertised `max_streams` is reached: `local`). It is over.
    SubscribeFailed {
        /// The subscription.
        sub: SubId,
        /// Why.
        error: ServerError,
        /// Refused by the client without asking the server.
        local: bool,
    },
    /// An `error` message about a stream or the connection.
    ServerError {
        /// The subscription, if about one.
        sub: Option<SubId>,
        /// The error.
        error: ServerError,
    },
    /// A stream ended. `resuming`: the client resubscribes it (slow-consumer disconnect,
    /// server shutdown); otherwise the subscription is over.
    Complete {
        /// The subscription.
        sub: SubId,
        /// The message.
        complete: Complete,
        /// Whether the client resumes it.
        resuming: bool,
    },
    /// A frame that could not be used (counted in the metrics).
    Malformed(FrameError),
}

/// What the session asks its driver to do.
// `Deliver` is the common case (one per tick): boxing it would allocate per tick.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Action {
    /// Open a connection now.
    Connect,
    /// Send this text frame.
    Send(String),
    /// Drop the current connection (the session already counts it as gone).
    Disconnect,
    /// Hand this event to the consumer.
    Deliver(Event),
    /// SSE: open this subscription's stream (one HTTP request each).
    OpenStream(StreamRequest),
    /// SSE: drop the stream opened for request `id` (an unsubscribe).
    CloseStream(u64),
}

/// An SSE stream to open: `GET <prefix><path>` with `Last-Event-ID` when resuming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    /// The request id; the driver reports the stream's answer, events and end with it.
    pub id: u64,
    /// `/v3/stream/{conId}?tick_types=...` (percent-encoded; without the token).
    pub path: String,
    /// The resume token (`<epoch>-<seq>`), sent as the `Last-Event-ID` header.
    pub last_event_id: Option<String>,
}

/// SSE has no `info{connected}`: the limits the session keeps to. The server caps SSE
/// streams per address (512 by default) and has no request rate limit for them.
const SSE_LIMITS: Limits = Limits {
    max_streams: 512,
    max_messages_per_second: 1000,
    max_message_bytes: 16 * 1024,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Waiting to be sent (no connection, pacing, or a retry time).
    Queued { not_before: Option<Instant> },
    /// Sent; waiting for the answer to request `id`.
    Pending {
        id: u64,
        unsubscribe_on_answer: bool,
    },
    /// Streaming as the server's `stream_id`.
    Active { stream_id: String },
    /// Unsubscribe sent.
    Unsubscribing { stream_id: String },
    /// Over.
    Ended,
}

#[derive(Debug)]
struct Sub {
    spec: Subscription,
    phase: Phase,
    resume: ResumePoint,
    delivered: u64,
    /// The server ended the stream as a slow consumer: resubscribe at its `complete`.
    resume_on_complete: bool,
    /// The token the last subscribe carried.
    sent_after: Option<String>,
    /// SSE: the request id of its open stream.
    stream_req: Option<u64>,
}

impl Sub {
    fn live(&self) -> bool {
        matches!(
            self.phase,
            Phase::Pending { .. } | Phase::Active { .. } | Phase::Unsubscribing { .. }
        )
    }
}

/// Wall-clock microseconds since the Unix epoch, read by the driver and passed in.
pub type WallUs = i64;

/// The sans-IO session.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    machine: StateMachine,
    backoff: Backoff,
    metrics: Arc<Metrics>,
    actions: VecDeque<Action>,
    subs: BTreeMap<SubId, Sub>,
    by_stream: HashMap<String, SubId>,
    by_request: HashMap<u64, SubId>,
    /// `(cid, type index)` of active streams.
    routes: HashMap<(u32, u8), SubId>,
    next_request: u64,
    /// Until when the backoff waits (`Reconnecting`).
    retry_at: Option<Instant>,
    /// Last frame (or connection open).
    last_frame: Option<Instant>,
    heartbeat: Duration,
    limits: Option<Limits>,
    /// Requests sent in the current pacing window, and its start.
    window: (Instant, u32),
    /// Whether the consumer asked to close.
    closing: bool,
    /// Connections established (after `info{connected}`).
    connections: u64,
    /// Something other than a tick happened since [`Session::take_changed`].
    changed: bool,
    /// The current connection is SSE: one HTTP stream per subscription.
    sse: bool,
    /// SSE: the open streams by request id, with their subscription and last frame. Each
    /// stream has its own heartbeats, so each is watched for silence on its own.
    streams: HashMap<u64, (SubId, Instant)>,
    /// SSE: when the streams are next checked for silence.
    sweep_at: Option<Instant>,
}

impl Session {
    /// A session in `Disconnected`, counting into `metrics`.
    pub fn new(cfg: SessionConfig, metrics: Arc<Metrics>, now: Instant) -> Session {
        Session {
            backoff: Backoff::new(cfg.backoff, cfg.seed),
            heartbeat: cfg.default_heartbeat,
            cfg,
            machine: StateMachine::new(now),
            metrics,
            actions: VecDeque::new(),
            subs: BTreeMap::new(),
            by_stream: HashMap::new(),
            by_request: HashMap::new(),
            routes: HashMap::new(),
            next_request: 1,
            retry_at: None,
            last_frame: None,
            limits: None,
            window: (now, 0),
            closing: false,
            connections: 0,
            changed: true,
            sse: false,
            streams: HashMap::new(),
            sweep_at: None,
        }
    }

    /// The connection state.
    pub fn state(&self) -> ConnState {
        self.machine.state()
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether the state or a subscription may have changed since the last call (anything
    /// but a tick was handled): the driver then republishes [`Session::counts`] before the
    /// events go out, so a health snapshot is never older than the events a consumer saw.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Subscriptions `(active, pending, ended)`.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for s in self.subs.values() {
            match s.phase {
                Phase::Active { .. } | Phase::Unsubscribing { .. } => c.0 += 1,
                Phase::Queued { .. } | Phase::Pending { .. } => c.1 += 1,
                Phase::Ended => c.2 += 1,
            }
        }
        c
    }

    /// How long silence is tolerated before the connection is declared dead.
    pub fn silence_limit(&self) -> Duration {
        self.heartbeat.mul_f64(self.cfg.heartbeat_grace)
    }

    fn go(&mut self, to: ConnState, reason: impl Into<String>, now: Instant) {
        self.changed = true;
        match self.machine.go(to, reason, self.backoff.attempt(), now) {
            Ok(t) => self.actions.push_back(Action::Deliver(Event::State(t))),
            // Callers only ask for transitions of the table; a refusal is a bug, reported
            // rather than acted on.
            Err(e) => tracing::error!(error = %e, "session bug: refused transition"),
        }
    }

    /// Starts connecting (from `Disconnected`).
    pub fn start(&mut self, now: Instant) {
        if self.state() == ConnState::Disconnected {
            self.go(ConnState::Connecting, "start", now);
            self.actions.push_back(Action::Connect);
        }
    }

    /// Adds a subscription; it is sent when connected.
    pub fn subscribe(&mut self, id: SubId, spec: Subscription, now: Instant) {
        self.subs.insert(
            id,
            Sub {
                spec,
                phase: Phase::Queued { not_before: None },
                resume: ResumePoint::default(),
                delivered: 0,
                resume_on_complete: false,
                sent_after: None,
                stream_req: None,
            },
        );
        self.pump(now);
    }

    /// Ends a subscription.
    pub fn unsubscribe(&mut self, id: SubId, now: Instant) {
        let Some(s) = self.subs.get_mut(&id) else {
            return;
        };
        match std::mem::replace(&mut s.phase, Phase::Ended) {
            Phase::Active { stream_id } if self.sse => {
                // No request to send: dropping the HTTP stream ends it; the server's
                // `complete{unsubscribed}` is made here.
                if let Some(rid) = s.stream_req.take() {
                    self.streams.remove(&rid);
                    self.actions.push_back(Action::CloseStream(rid));
                }
                self.by_stream.remove(&stream_id);
                let complete = Complete {
                    reason: "unsubscribed".into(),
                    count: s.delivered,
                    last_seq: s.resume.last.as_ref().map_or(0, |l| l.1),
                };
                let spec = (s.spec.contract_id, s.spec.tick_types.clone());
                self.drop_routes(spec.0, &spec.1, id);
                self.deliver(Event::Complete {
                    sub: id,
                    complete,
                    resuming: false,
                });
            }
            Phase::Active { stream_id } => {
                let rid = self.next_request;
                self.next_request += 1;
                let req =
                    serde_json::json!({"type": "unsubscribe", "id": rid, "stream_id": stream_id});
                s.phase = Phase::Unsubscribing { stream_id };
                self.actions.push_back(Action::Send(req.to_string()));
                self.window.1 += 1;
            }
            Phase::Pending { id: rid, .. } => {
                s.phase = Phase::Pending {
                    id: rid,
                    unsubscribe_on_answer: true,
                };
            }
            Phase::Queued { .. } => {
                self.changed = true;
                self.actions.push_back(Action::Deliver(Event::Complete {
                    sub: id,
                    complete: Complete {
                        reason: "unsubscribed".into(),
                        count: 0,
                        last_seq: 0,
                    },
                    resuming: false,
                }));
            }
            p @ (Phase::Unsubscribing { .. } | Phase::Ended) => s.phase = p,
        }
        self.pump(now);
    }

    /// The consumer closes the client.
    pub fn close(&mut self, now: Instant) {
        if self.state().is_terminal() {
            return;
        }
        self.closing = true;
        if matches!(self.state(), ConnState::Connected | ConnState::Connecting) {
            self.actions.push_back(Action::Disconnect);
        }
        self.go(ConnState::Closed, "closed by the user", now);
    }

    /// The WebSocket is open; the server's `info{connected}` comes next.
    pub fn on_open(&mut self, now: Instant) {
        self.sse = false;
        self.last_frame = Some(now);
    }

    /// A connection attempt failed.
    pub fn on_connect_failed(&mut self, err: &ConnectError, now: Instant) {
        if self.state() != ConnState::Connecting {
            return;
        }
        if err.is_permanent() {
            self.go(ConnState::Failed, err.to_string(), now);
            return;
        }
        self.retry(format!("connect failed: {err}"), ConnState::Connecting, now);
    }

    /// The connection ended (closed by the server, an I/O error, end of stream).
    pub fn on_closed(&mut self, why: &str, now: Instant) {
        match self.state() {
            ConnState::Connected | ConnState::Connecting => {
                self.lose_connection();
                self.retry(format!("connection lost: {why}"), self.state(), now);
            }
            _ => {}
        }
    }

    /// Every stream on the connection is gone: back to the queue with its resume point.
    fn lose_connection(&mut self) {
        self.streams.clear();
        self.sweep_at = None;
        self.by_stream.clear();
        self.by_request.clear();
        self.routes.clear();
        self.last_frame = None;
        for s in self.subs.values_mut() {
            s.phase = match std::mem::replace(&mut s.phase, Phase::Ended) {
                Phase::Pending {
                    unsubscribe_on_answer: true,
                    ..
                }
                | Phase::Unsubscribing { .. }
                | Phase::Ended => Phase::Ended,
                _ => Phase::Queued { not_before: None },
            };
            s.stream_req = None;
        }
    }

    /// Into `Reconnecting` with the next backoff delay; on to `Failed` at once when the
    /// attempts are used up.
    fn retry(&mut self, reason: String, from: ConnState, now: Instant) {
        debug_assert!(matches!(from, ConnState::Connected | ConnState::Connecting));
        match self.backoff.next_delay() {
            Some(d) => {
                self.retry_at = Some(now + d);
                self.go(
                    ConnState::Reconnecting,
                    format!("{reason}; retry in {} ms", d.as_millis()),
                    now,
                );
            }
            None => {
                self.retry_at = None;
                self.go(ConnState::Reconnecting, reason.clone(), now);
                let n = self.backoff.attempt() - 1;
                self.go(
                    ConnState::Failed,
                    format!("{reason}; gave up after {n} attempts"),
                    now,
                );
            }
        }
    }

    /// When [`Session::on_timer`] must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut d = None::<Instant>;
        let mut min = |t: Instant| d = Some(d.map_or(t, |x| x.min(t)));
        match self.state() {
            ConnState::Reconnecting => {
                if let Some(t) = self.retry_at {
                    min(t);
                }
            }
            // SSE: an idle connection with no stream sends nothing; the streams are watched.
            ConnState::Connected if self.sse => {
                if let Some(t) = self.sweep_at {
                    min(t);
                }
            }
            ConnState::Connecting | ConnState::Connected => {
                if let Some(t) = self.last_frame {
                    min(t + self.silence_limit());
                }
            }
            _ => {}
        }
        if self.state() == ConnState::Connected {
            for s in self.subs.values() {
                if let Phase::Queued { not_before } = s.phase {
                    match not_before {
                        Some(t) => min(t),
                        // Waiting for the pacing window.
                        None => min(self.window.0 + Duration::from_secs(1)),
                    }
                }
            }
        }
        d
    }

    /// Time passed: backoff over, silent death, pacing.
    pub fn on_timer(&mut self, now: Instant) {
        match self.state() {
            ConnState::Reconnecting if self.retry_at.is_some_and(|t| now >= t) => {
                self.retry_at = None;
                self.go(ConnState::Connecting, "backoff elapsed", now);
                self.actions.push_back(Action::Connect);
            }
            ConnState::Connected if self.sse => {
                if self.sweep_at.is_some_and(|t| now >= t) {
                    let limit = self.silence_limit();
                    if self.streams.values().any(|(_, seen)| now >= *seen + limit) {
                        Metrics::add(&self.metrics.silent_deaths, 1);
                        self.actions.push_back(Action::Disconnect);
                        self.lose_connection();
                        self.retry(
                            format!(
                                "no frame on a stream for {} ms: heartbeat missed",
                                limit.as_millis()
                            ),
                            ConnState::Connected,
                            now,
                        );
                        return;
                    }
                    self.sweep_at = Some(now + self.sweep_period());
                }
                self.pump(now);
            }
            ConnState::Connecting | ConnState::Connected => {
                if let Some(t) = self.last_frame
                    && now >= t + self.silence_limit()
                {
                    Metrics::add(&self.metrics.silent_deaths, 1);
                    let limit = self.silence_limit();
                    self.actions.push_back(Action::Disconnect);
                    let from = self.state();
                    self.lose_connection();
                    self.retry(
                        format!("no frame for {} ms: heartbeat missed", limit.as_millis()),
                        from,
                        now,
                    );
                    return;
                }
                self.pump(now);
            }
            _ => {}
        }
    }

    /// Sends queued subscriptions within the server's rate limit and stream cap.
    fn pump(&mut self, now: Instant) {
        if self.state() != ConnState::Connected {
            return;
        }
        if now >= self.window.0 + Duration::from_secs(1) {
            self.window = (now, 0);
        }
        let limits = self.limits.unwrap_or(Limits {
            max_streams: 20,
            max_messages_per_second: 100,
            max_message_bytes: 16 * 1024,
        });
        // Our 1 s windows and the server's need not line up: two of ours can fall in one of
        // its, so each gets under half its budget.
        let budget = (limits.max_messages_per_second * 4 / 10).max(1);
        let mut live = self.subs.values().filter(|s| s.live()).count();
        let ids: Vec<SubId> = self
            .subs
            .iter()
            .filter(|(_, s)| matches!(s.phase, Phase::Queued { not_before } if not_before.is_none_or(|t| now >= t)))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if live >= limits.max_streams {
                let s = self.subs.get_mut(&id).expect("listed");
                s.phase = Phase::Ended;
                self.changed = true;
                self.actions.push_back(Action::Deliver(Event::SubscribeFailed {
                    sub: id,
                    error: ServerError {
                        code: "too_many_streams".into(),
                        message: format!(
                            "the server allows {} streams per connection (info{{connected}}.limits.max_streams)",
                            limits.max_streams
                        ),
                        recoverable: false,
                        ib_code: None,
                        id: None,
                    },
                    local: true,
                }));
                continue;
            }
            if self.window.1 >= budget {
                break;
            }
            let rid = self.next_request;
            self.next_request += 1;
            let s = self.subs.get_mut(&id).expect("listed");
            let after = s.resume.token();
            let action = if self.sse {
                self.streams.insert(rid, (id, now));
                Action::OpenStream(StreamRequest {
                    id: rid,
                    path: s.spec.sse_path(after.as_deref(), s.delivered),
                    last_event_id: after.clone(),
                })
            } else {
                Action::Send(s.spec.request(rid, after.as_deref(), s.delivered))
            };
            s.sent_after = after;
            s.phase = Phase::Pending {
                id: rid,
                unsubscribe_on_answer: false,
            };
            self.by_request.insert(rid, id);
            self.changed = true;
            self.actions.push_back(action);
            self.window.1 += 1;
            live += 1;
        }
    }

    /// A binary frame (not part of the protocol).
    pub fn on_binary(&mut self, len: usize, now: Instant, wall: WallUs) {
        self.count_frame(len, now, wall);
        self.malformed(FrameError::Binary(len), now);
    }

    fn count_frame(&mut self, len: usize, now: Instant, wall: WallUs) {
        self.last_frame = Some(now);
        Metrics::add(&self.metrics.messages, 1);
        Metrics::add(&self.metrics.bytes, len as u64);
        Metrics::set(&self.metrics.last_message_us, wall);
    }

    fn malformed(&mut self, e: FrameError, now: Instant) {
        Metrics::add(&self.metrics.malformed, 1);
        tracing::debug!(error = %e, "malformed frame");
        let resync = self.cfg.malformed == MalformedPolicy::Resync
            && !matches!(e, FrameError::UnknownStream(_));
        self.changed = true;
        self.actions.push_back(Action::Deliver(Event::Malformed(e)));
        if resync && self.state() == ConnState::Connected {
            self.actions.push_back(Action::Disconnect);
            self.lose_connection();
            self.retry(
                "malformed frame: resuming on a new connection".into(),
                ConnState::Connected,
                now,
            );
        }
    }

    /// One text frame from the server.
    pub fn on_frame(&mut self, frame: &[u8], now: Instant, wall: WallUs) {
        if !matches!(self.state(), ConnState::Connecting | ConnState::Connected) {
            return;
        }
        self.count_frame(frame.len(), now, wall);
        match message::parse(frame) {
            Ok(m) => self.on_message(m, None, now, wall),
            Err(e) => self.malformed(e, now),
        }
    }

    fn connected(
        &mut self,
        limits: Option<Limits>,
        heartbeat: Option<u64>,
        reason: &str,
        now: Instant,
    ) {
        self.limits = limits.or(self.limits);
        if let Some(h) = heartbeat {
            self.heartbeat = Duration::from_secs(h.max(1));
        }
        if self.state() == ConnState::Connecting {
            self.connections += 1;
            if self.connections > 1 {
                Metrics::add(&self.metrics.reconnects, 1);
            }
            self.backoff.reset();
            self.go(ConnState::Connected, reason, now);
            self.window = (now, 0);
            self.pump(now);
        }
    }

    fn sub_of_stream(&self, stream_id: Option<&String>) -> Option<SubId> {
        stream_id.and_then(|s| self.by_stream.get(s).copied())
    }

    fn deliver(&mut self, e: Event) {
        self.changed |= !matches!(e, Event::Tick { .. });
        self.actions.push_back(Action::Deliver(e));
    }
}

mod inbound;
mod sse;

#[cfg(test)]
mod tests;
