//! One client connection of the simulated gateway, sans-IO: bytes in with the time they
//! arrived, bytes out polled, timers through [`Connection::next_deadline`] and
//! [`Connection::on_timeout`], faults through [`Connection::inject`]. The caller owns the socket
//! (or a simulated network) and the clock; nothing here sleeps, spawns or reads the time.
//!
//! The connection does what a gateway does: the handshake (version negotiation, then
//! START_API names the client id; a duplicate gets 326 and the close), message pacing (100 and
//! the close, or +PACEAPI delays), the [`Session`]'s requests and replies, and ticks on each
//! subscription's schedule. Ticks are encoded back to back into one reused buffer that leaves
//! in one write, so the hot path neither allocates nor asks for a write per tick.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::clock;
use crate::gateway::Gateway;
use crate::generator::TbtKind;
use crate::limits::{Pace, Pacer};
use crate::session::{Feed, Reply, Request, Session, code};
use crate::wire::{self, Hello, Inbound, Incoming, TickEncoder};

/// A fault injected into one connection (by the control channel, a fault schedule or a
/// simulation).
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Send nothing for this long.
    Stall(Duration),
    /// Cut the next `bytes` bytes into writes of 1..=max_chunk bytes.
    Split { max_chunk: usize, bytes: u64 },
    /// Send a frame whose length prefix no client accepts.
    Malformed,
    /// 1100: connectivity lost, ticks stop.
    Lost,
    /// 1101 (subscriptions dropped) or 1102 (kept).
    Restored { kept: bool },
    /// A farm notice.
    Farm(i32),
    /// 10197 competing live session on or off.
    Competing(bool),
    /// 100 (the client sent too fast, as IB measures it) and the close.
    Pacing,
    /// The next data request is refused with this code (200, 321, 354, 10089, ...).
    Refuse(i32),
    /// Live market data lines switch to delayed (10167, market data type 3).
    Delayed,
}

/// Subscription counters for `stats`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SubStats {
    pub req_id: i32,
    pub con_id: i32,
    pub kind: &'static str,
    pub ticks: u64,
}

/// One client for `stats`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClientStats {
    pub client_id: i32,
    pub server_version: u32,
    pub ticks: u64,
    pub subscriptions: Vec<SubStats>,
}

/// Ticks `first_k..first_k+count` of subscription `req_id` were encoded into the output (the
/// send log's line, written when the write that carries them starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentTicks {
    pub req_id: i32,
    pub first_k: u64,
    pub count: u64,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum End {
    #[error("client closed")]
    ClientClosed,
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("client versions {min}..{max} do not meet ours (max {ours})")]
    NoCommonVersion { min: u32, max: u32, ours: u32 },
    #[error("client id {0} is in use (326)")]
    DuplicateClientId(i32),
    #[error("pacing violation (100)")]
    Pacing,
    #[error("closed by the gateway")]
    Dropped,
}

/// How long a client has from connecting to START_API.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Encode at most this much ahead of the writes, so replies never wait long behind ticks and a
/// client that does not read holds the ticks back (backpressure).
pub const BATCH_BYTES: usize = 256 * 1024;
/// Ticks one subscription adds to a batch before the next one gets a turn.
const TICKS_PER_TURN: u64 = 2048;
/// The pause between two pieces of the split fault, so the peer reads each on its own.
const SPLIT_GAP: Duration = Duration::from_micros(200);

#[derive(Debug)]
enum Phase {
    /// Waiting for `API\0` and the version range.
    Hello { buf: Vec<u8> },
    /// The version is agreed; waiting for START_API.
    StartApi { inbound: Inbound, hello: Hello },
    /// Serving requests.
    Live(Box<Live>),
    /// Over; what is left in the output is still sent when `flush` is set.
    Closed,
}

#[derive(Debug)]
struct Live {
    client_id: i32,
    inbound: Inbound,
    pacer: Pacer,
    /// Requests held back by +PACEAPI pacing, in arrival order, with the instant each may go.
    paced: VecDeque<(Instant, Box<Request>)>,
    session: Session,
}

/// The state of the split-frames fault.
#[derive(Debug)]
struct Split {
    max_chunk: usize,
    bytes_left: u64,
    rng: u64,
    /// The next piece may not go before this.
    next: Option<Instant>,
}

/// One client connection (see the module docs).
#[derive(Debug)]
pub struct Connection {
    gw: Arc<Gateway>,
    conn_no: u64,
    phase: Phase,
    /// When the handshake must be done.
    handshake_deadline: Instant,
    version: u32,
    /// Encoded bytes; `out[written..]` is still to be sent.
    out: Vec<u8>,
    written: usize,
    replies: Vec<Reply>,
    ticks: TickEncoder,
    split: Option<Split>,
    stall_until: Option<Instant>,
    record_sent: bool,
    sent: Vec<SentTicks>,
    end: Option<End>,
    /// Send what is encoded before the close (326, 100).
    flush_before_close: bool,
    /// The client closed its side: paced requests are still served.
    input_closed: bool,
    /// Nothing more is sent (the client closed, or writes fail).
    output_closed: bool,
    /// The latest time the caller passed in.
    now: Instant,
}

impl Connection {
    /// A connection accepted at `now`; `conn_no` tells connections apart (client ids are
    /// only known after START_API).
    pub fn new(gw: Arc<Gateway>, conn_no: u64, now: Instant) -> Self {
        Self {
            gw,
            conn_no,
            phase: Phase::Hello {
                buf: Vec::with_capacity(64),
            },
            handshake_deadline: now + HANDSHAKE_TIMEOUT,
            version: 0,
            out: Vec::with_capacity(BATCH_BYTES + 64 * 1024),
            written: 0,
            replies: Vec::new(),
            ticks: TickEncoder::new(0),
            split: None,
            stall_until: None,
            record_sent: false,
            sent: Vec::new(),
            end: None,
            flush_before_close: false,
            input_closed: false,
            output_closed: false,
            now,
        }
    }

    /// Keep a [`SentTicks`] entry for every batch of ticks (for a send log), taken with
    /// [`Connection::drain_sent_ticks`].
    pub fn record_sent_ticks(&mut self, on: bool) {
        self.record_sent = on;
    }

    /// The client id, once START_API has been accepted.
    pub fn client_id(&self) -> Option<i32> {
        match &self.phase {
            Phase::Live(l) => Some(l.client_id),
            _ => None,
        }
    }

    /// The negotiated server version (0 before the handshake).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The session, once START_API has been accepted.
    pub fn session(&self) -> Option<&Session> {
        match &self.phase {
            Phase::Live(l) => Some(&l.session),
            _ => None,
        }
    }

    /// Why the connection is over, once it is and its last bytes are out: the caller then
    /// closes the socket.
    pub fn end(&self) -> Option<&End> {
        if self.flush_before_close && self.pending() > 0 {
            return None;
        }
        self.end.as_ref()
    }

    /// Bytes encoded and not yet written.
    pub fn pending(&self) -> usize {
        self.out.len() - self.written
    }

    /// Bytes from the client, arrived at `now`.
    pub fn on_bytes(&mut self, bytes: &[u8], now: Instant) {
        self.now = now;
        if self.input_closed {
            return;
        }
        match &mut self.phase {
            Phase::Closed => {}
            Phase::Hello { buf } => {
                buf.extend_from_slice(bytes);
                self.after_hello_bytes(now);
            }
            Phase::StartApi { inbound, .. } => {
                inbound.feed(bytes);
                self.after_start_api_bytes(now);
            }
            Phase::Live(live) => {
                live.inbound.feed(bytes);
                self.serve_inbound(now);
            }
        }
    }

    /// The client closed its side (or the socket failed). Requests it sent that pacing holds
    /// back are still served at their times, as a gateway reads everything a client sent (its
    /// cancels count); nothing more is sent. The connection ends when they are done.
    pub fn on_eof(&mut self) {
        self.input_closed = true;
        self.on_write_closed();
        self.end_if_drained();
    }

    /// Writes to the client fail (it is gone): nothing more is encoded or sent, but what it
    /// sent before is still read and served until [`Connection::on_eof`].
    pub fn on_write_closed(&mut self) {
        self.output_closed = true;
        self.out.clear();
        self.written = 0;
    }

    fn end_if_drained(&mut self) {
        if !self.input_closed {
            return;
        }
        if let Phase::Live(live) = &self.phase
            && !live.paced.is_empty()
        {
            return;
        }
        self.close(End::ClientClosed, false);
    }

    /// The gateway cuts the connection (the drop fault, a restart): nothing more is sent, and
    /// its tick-by-tick requests leave the 15-second rule, since the client will resubscribe.
    pub fn drop_by_gateway(&mut self) {
        if let Phase::Live(live) = &self.phase {
            live.session.forget_tbt_windows();
        }
        self.close(End::Dropped, false);
    }

    fn close(&mut self, why: End, flush: bool) {
        if self.end.is_some() {
            return;
        }
        if let Phase::Live(live) = &self.phase {
            info!(client_id = live.client_id, "connection ends: {why}");
        } else {
            debug!(conn_no = self.conn_no, "connection ends: {why}");
        }
        self.end = Some(why);
        self.flush_before_close = flush;
        if !flush {
            self.out.clear();
            self.written = 0;
        }
        if let Phase::Live(live) = std::mem::replace(&mut self.phase, Phase::Closed) {
            self.gw.deregister(live.client_id, self.conn_no);
            // The session's drop frees its market data lines.
        }
    }

    fn after_hello_bytes(&mut self, now: Instant) {
        let Phase::Hello { buf } = &mut self.phase else {
            return;
        };
        let (hello, used) = match wire::parse_hello(buf) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => return self.close(End::Protocol(e.to_string()), false),
        };
        let rest = buf.split_off(used);
        let ours = self.gw.config().max_version;
        let Some(version) = wire::negotiate(hello.min, hello.max, ours) else {
            return self.close(
                End::NoCommonVersion {
                    min: hello.min,
                    max: hello.max,
                    ours,
                },
                false,
            );
        };
        self.version = version;
        self.ticks = TickEncoder::new(version);
        let time = clock::connection_time(self.gw.unix_secs(now));
        wire::encode_ack(version, &time, &mut self.out);
        let mut inbound = Inbound::new(version);
        inbound.feed(&rest);
        self.phase = Phase::StartApi { inbound, hello };
        self.after_start_api_bytes(now);
    }

    fn after_start_api_bytes(&mut self, now: Instant) {
        let Phase::StartApi { inbound, hello } = &mut self.phase else {
            return;
        };
        let client_id = loop {
            match inbound.next_message() {
                Ok(Some(Incoming::StartApi { client_id })) => break client_id,
                // Requests before START_API are not served by TWS either.
                Ok(Some(other)) => debug!(?other, "ignored before START_API"),
                Ok(None) => return,
                Err(e) => return self.close(End::Protocol(e.to_string()), false),
            }
        };
        if !self.gw.register(client_id, self.conn_no) {
            info!(client_id, "duplicate client id: 326 and close");
            self.replies.push(Reply::Error {
                req_id: -1,
                code: code::CLIENT_ID_IN_USE,
                msg: code::text(code::CLIENT_ID_IN_USE).into(),
            });
            self.encode_replies(now);
            return self.close(End::DuplicateClientId(client_id), true);
        }
        let pace_api = hello.pace_api;
        info!(
            client_id,
            version = self.version,
            pace_api,
            "client connected"
        );
        let Phase::StartApi { inbound, .. } = std::mem::replace(&mut self.phase, Phase::Closed)
        else {
            return;
        };
        let cfg = &self.gw.config().session;
        let session = Session::new(cfg.clone(), self.gw.account().clone(), self.gw.competing());
        session.welcome(&mut self.replies);
        self.phase = Phase::Live(Box::new(Live {
            client_id,
            inbound,
            pacer: Pacer::new(cfg.limits.max_msgs_per_sec, pace_api),
            paced: VecDeque::new(),
            session,
        }));
        self.encode_replies(now);
        // Requests that came with START_API are served at once.
        self.serve_inbound(now);
    }

    /// Decodes the buffered requests and serves them (or holds them back for pacing).
    fn serve_inbound(&mut self, now: Instant) {
        loop {
            let Phase::Live(live) = &mut self.phase else {
                return;
            };
            let req = match live.inbound.next_message() {
                Ok(Some(Incoming::Request(req))) => req,
                Ok(Some(Incoming::StartApi { client_id })) => {
                    warn!(client_id, "second START_API ignored");
                    continue;
                }
                Ok(None) => break,
                Err(e) => return self.close(End::Protocol(e.to_string()), false),
            };
            match live.pacer.on_message(now) {
                Pace::Ok if live.paced.is_empty() => self.serve(*req, now),
                // Behind a held-back request: keep the order.
                Pace::Ok => live.paced.push_back((now, req)),
                Pace::DelayUntil(at) => live.paced.push_back((at, req)),
                Pace::Violation => {
                    warn!(
                        client_id = live.client_id,
                        "pacing violation: 100 and disconnect"
                    );
                    self.replies.push(Reply::Error {
                        req_id: -1,
                        code: code::PACING,
                        msg: code::text(code::PACING).into(),
                    });
                    self.encode_replies(now);
                    return self.close(End::Pacing, true);
                }
            }
        }
        self.release_paced(now);
    }

    fn release_paced(&mut self, now: Instant) {
        loop {
            let Phase::Live(live) = &mut self.phase else {
                return;
            };
            match live.paced.front() {
                Some((at, _)) if *at <= now => {}
                _ => return,
            }
            if let Some((_, req)) = live.paced.pop_front() {
                self.serve(*req, now);
            }
            self.end_if_drained();
        }
    }

    fn serve(&mut self, req: Request, now: Instant) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        debug!(client_id = live.client_id, ?req, "request");
        if let Request::Historical(h) = req {
            self.gw.serve_historical(*h, now, &mut self.replies);
            return self.encode_replies(now);
        }
        let epoch = self.gw.unix_secs(now);
        live.session
            .handle(req, self.gw.universe(), now, epoch, &mut self.replies);
        self.encode_replies(now);
    }

    fn encode_replies(&mut self, now: Instant) {
        let unix_ms = (self.gw.unix_nanos(now) / 1_000_000) as i64;
        for r in self.replies.drain(..) {
            if !self.output_closed {
                wire::encode_reply(&mut self.out, self.version, &r, self.gw.universe(), unix_ms);
            }
        }
    }

    /// A fault, at `now`. Session faults (1100, 1101/1102, farm notices, 10197, 100,
    /// refusals, the delayed switch) reach only a
    /// connection past START_API; false when the connection is not one (or is over).
    pub fn inject(&mut self, fault: Fault, now: Instant) -> bool {
        self.now = now;
        if self.end.is_some() {
            return false;
        }
        match fault {
            Fault::Stall(d) => {
                // Whatever is encoded waits too: the client sees silence.
                self.stall_until = Some(now + d);
                return true;
            }
            Fault::Split { max_chunk, bytes } => {
                self.split = Some(Split {
                    max_chunk: max_chunk.max(1),
                    bytes_left: bytes,
                    rng: 0x2545_F491_4F6C_DD1D,
                    next: None,
                });
                return true;
            }
            Fault::Malformed => {
                if !self.output_closed {
                    wire::malformed_frame(&mut self.out);
                }
                return true;
            }
            Fault::Pacing if matches!(self.phase, Phase::Live(_)) => {
                self.replies.push(Reply::Error {
                    req_id: -1,
                    code: code::PACING,
                    msg: code::text(code::PACING).into(),
                });
                self.encode_replies(now);
                self.close(End::Pacing, true);
                return true;
            }
            _ => {}
        }
        let gw = Arc::clone(&self.gw);
        let Phase::Live(live) = &mut self.phase else {
            return false;
        };
        let session = &mut live.session;
        match fault {
            Fault::Lost => session.connectivity_lost(&mut self.replies),
            Fault::Restored { kept } => {
                session.connectivity_restored(kept, &mut self.replies);
                // Ticks resume on schedule from now, not in a catch-up burst.
                for sub in session.subs_mut() {
                    if let Some(offset) = gw.schedule_for(sub.con_id).next_at(sub.sent) {
                        sub.started = now.checked_sub(offset).unwrap_or(now);
                    }
                }
            }
            Fault::Farm(c) => session.farm_notice(c, &mut self.replies),
            Fault::Competing(on) => session.set_competing(on, &mut self.replies),
            Fault::Refuse(c) => session.refuse_next(c),
            Fault::Delayed => session.switch_to_delayed(&mut self.replies),
            Fault::Stall(_) | Fault::Split { .. } | Fault::Malformed | Fault::Pacing => {}
        }
        self.encode_replies(now);
        true
    }

    /// The earliest instant at which [`Connection::on_timeout`] has work (the handshake's
    /// deadline, a paced request, the next tick, the end of a stall or of a split gap); `None`
    /// when only the client's bytes or a drained output can bring work. A deadline at or
    /// before the last `now` means at once.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.end.is_some() {
            return None;
        }
        let live = match &self.phase {
            Phase::Closed => return None,
            Phase::Hello { .. } | Phase::StartApi { .. } => {
                return Some(self.handshake_deadline);
            }
            Phase::Live(live) => live,
        };
        let mut next = live.paced.front().map(|(at, _)| *at);
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(until) = self.stall_until {
            at(until);
        }
        if let Some(t) = self.split.as_ref().and_then(|s| s.next)
            && self.pending() > 0
        {
            at(t);
        }
        if self.stall_until.is_none()
            && !self.output_closed
            && self.pending() < BATCH_BYTES
            && live.session.streaming()
        {
            for sub in live.session.subs() {
                match self.gw.schedule_for(sub.con_id).next_at(sub.sent) {
                    None => at(self.now),
                    Some(offset) => at(sub.started + offset),
                }
            }
        }
        next
    }

    /// Time has come to `now`: the handshake may time out, paced requests go, a stall ends,
    /// due ticks are encoded.
    pub fn on_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.end.is_some() {
            return;
        }
        if matches!(self.phase, Phase::Hello { .. } | Phase::StartApi { .. }) {
            if now >= self.handshake_deadline {
                self.close(End::HandshakeTimeout, false);
            }
            return;
        }
        self.release_paced(now);
        if self.stall_until.is_some_and(|t| now >= t) {
            self.stall_until = None;
        }
        if self.stall_until.is_none() {
            self.produce_ticks(now);
        }
    }

    /// Encodes the ticks due at `now` (up to [`BATCH_BYTES`] pending).
    fn produce_ticks(&mut self, now: Instant) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        if !live.session.streaming() || self.output_closed {
            return;
        }
        let time = self.gw.unix_secs(now);
        let gw = &self.gw;
        let universe = gw.universe();
        let all_asap = live
            .session
            .subs()
            .iter()
            .all(|s| gw.schedule_for(s.con_id).is_asap());
        let out = &mut self.out;
        let written = self.written;
        let enc = &mut self.ticks;
        'fill: loop {
            let mut any = false;
            for sub in live.session.subs_mut() {
                if out.len() - written >= BATCH_BYTES {
                    break 'fill;
                }
                let sched = gw.schedule_for(sub.con_id);
                let due = sched.due(now.saturating_duration_since(sub.started));
                let n = due.saturating_sub(sub.sent).min(TICKS_PER_TURN);
                if n == 0 {
                    continue;
                }
                any = true;
                let first_k = sub.sent;
                let inst = universe.get(sub.instrument);
                match &mut sub.feed {
                    Feed::Tbt(g) => {
                        let all_last = g.kind() == TbtKind::AllLast;
                        for tick in g.by_ref().take(n as usize) {
                            enc.encode_tbt(out, sub.req_id, time, inst, all_last, &tick);
                        }
                    }
                    Feed::L1(g) => {
                        for tick in g.by_ref().take(n as usize) {
                            enc.encode_l1(out, sub.req_id, &tick);
                        }
                    }
                }
                sub.sent += n;
                if self.record_sent {
                    self.sent.push(SentTicks {
                        req_id: sub.req_id,
                        first_k,
                        count: n,
                    });
                }
            }
            // Asap streams fill the batch; paced ones stop at what is due.
            if !any || !all_asap {
                break;
            }
        }
    }

    /// The tick batches encoded since the last call (with [`Connection::record_sent_ticks`]).
    pub fn drain_sent_ticks(&mut self) -> std::vec::Drain<'_, SentTicks> {
        self.sent.drain(..)
    }

    /// The bytes to write next, as one write: everything pending, or one piece while the split
    /// fault lasts. `None` while nothing is pending, a stall holds the output or a split piece
    /// waits for its gap. Report what was written with [`Connection::advance`].
    pub fn poll_output(&mut self, now: Instant) -> Option<&[u8]> {
        self.now = now;
        if self.pending() == 0 || self.stall_until.is_some_and(|t| now < t) {
            return None;
        }
        let pending = &self.out[self.written..];
        let Some(s) = &mut self.split else {
            return Some(pending);
        };
        if s.next.is_some_and(|t| now < t) {
            return None;
        }
        // xorshift64: cut points vary but repeat run to run.
        s.rng ^= s.rng << 13;
        s.rng ^= s.rng >> 7;
        s.rng ^= s.rng << 17;
        let n = (1 + (s.rng % s.max_chunk as u64) as usize)
            .min(pending.len())
            .min(s.bytes_left as usize);
        Some(&pending[..n])
    }

    /// `n` bytes of what [`Connection::poll_output`] returned were written at `now` (fewer
    /// than offered is a partial write: the rest is offered again).
    pub fn advance(&mut self, n: usize, now: Instant) {
        self.now = now;
        let n = n.min(self.pending());
        self.written += n;
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        }
        if let Some(s) = &mut self.split {
            s.bytes_left = s.bytes_left.saturating_sub(n as u64);
            s.next = Some(now + SPLIT_GAP);
            if s.bytes_left == 0 {
                self.split = None;
            }
        }
    }

    /// The stats of a connection past START_API.
    pub fn stats(&self) -> Option<ClientStats> {
        let Phase::Live(live) = &self.phase else {
            return None;
        };
        let subscriptions: Vec<SubStats> = live
            .session
            .subs()
            .iter()
            .map(|s| SubStats {
                req_id: s.req_id,
                con_id: s.con_id,
                kind: s.kind_name(),
                ticks: s.sent,
            })
            .collect();
        Some(ClientStats {
            client_id: live.client_id,
            server_version: self.version,
            ticks: subscriptions.iter().map(|s| s.ticks).sum(),
            subscriptions,
        })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Phase::Live(live) = &self.phase {
            self.gw.deregister(live.client_id, self.conn_no);
        }
    }
}
