//! One client connection: the handshake, then a reader thread (frames in, requests out through
//! a channel, with pacing) and the writer loop on the connection's own thread (replies, ticks
//! on schedule, faults). Ticks are encoded back to back into one reused buffer and leave in
//! one write per loop turn, so the hot path neither allocates nor makes a syscall per tick.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::capture::CaptureWriter;
use crate::clock;
use crate::generator::TbtKind;
use crate::limits::{Pace, Pacer};
use crate::schedule::Schedule;
use crate::server::{ClientHandle, Shared};
use crate::session::{Feed, Reply, Request, Session, code};
use crate::wire::{self, Inbound, Incoming, TickEncoder};

/// A fault the control channel or the schedule injects into one connection.
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
}

/// Subscription counters for `stats`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SubStats {
    pub req_id: i32,
    pub con_id: i32,
    pub kind: &'static str,
    pub ticks: u64,
}

/// One client for `stats`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientStats {
    pub client_id: i32,
    pub server_version: u32,
    pub ticks: u64,
    pub subscriptions: Vec<SubStats>,
}

/// What reaches the writer loop.
#[derive(Debug)]
pub enum Event {
    Request(Box<Request>),
    /// The client went over 50 messages a second without +PACEAPI.
    PacingViolation,
    /// The reader stopped: the client closed, or sent bytes that are not a frame.
    ReaderDone(Option<String>),
    Fault(Fault),
    Stats(Sender<ClientStats>),
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Wire(#[from] wire::WireError),
    #[error("client closed before the handshake finished")]
    ClosedEarly,
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("client versions {min}..{max} do not meet ours (max {ours})")]
    NoCommonVersion { min: u32, max: u32, ours: u32 },
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Encode at most this much before writing, so replies never wait long behind ticks.
const BATCH_BYTES: usize = 256 * 1024;
/// Ticks one subscription adds to a batch before the next one gets a turn.
const TICKS_PER_TURN: u64 = 2048;
const IDLE_WAIT: Duration = Duration::from_millis(250);
/// The shortest sleep between two batches of a steady or bursty stream.
const MIN_TURN: Duration = Duration::from_micros(100);

/// Reads until `parse` yields a value, keeping leftover bytes in `buf`.
fn read_until<T>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    mut parse: impl FnMut(&mut Vec<u8>) -> Result<Option<T>, ConnError>,
) -> Result<T, ConnError> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(v) = parse(buf)? {
            return Ok(v);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnError::HandshakeTimeout);
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err(ConnError::ClosedEarly),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(ConnError::HandshakeTimeout);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Serves one accepted connection until it ends.
pub fn serve(stream: TcpStream, shared: Arc<Shared>, conn_no: u64) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    match serve_inner(stream, &shared, conn_no) {
        Ok(()) => debug!(conn_no, %peer, "connection closed"),
        Err(e) => info!(conn_no, %peer, "connection ended: {e}"),
    }
}

fn serve_inner(mut stream: TcpStream, shared: &Arc<Shared>, conn_no: u64) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    let connected = Instant::now();
    let mut capture = shared.open_capture(conn_no, connected);
    let deadline = connected + HANDSHAKE_TIMEOUT;
    let mut buf = Vec::with_capacity(4096);

    // Handshake: nothing is sent before the answer.
    let hello = read_until(&mut stream, &mut buf, deadline, |b| {
        Ok(wire::parse_hello(b)?.map(|(h, used)| {
            b.drain(..used);
            h
        }))
    })?;
    let ours = shared.cfg.max_version;
    let Some(version) = wire::negotiate(hello.min, hello.max, ours) else {
        return Err(ConnError::NoCommonVersion {
            min: hello.min,
            max: hello.max,
            ours,
        });
    };
    let mut out = Vec::with_capacity(BATCH_BYTES + 64 * 1024);
    wire::encode_ack(
        version,
        &clock::connection_time(clock::unix_secs()),
        &mut out,
    );
    send(&mut stream, &mut out, capture.as_mut(), None)?;

    // START_API names the client id.
    let mut inbound = Inbound::new(version);
    inbound.feed(&buf);
    buf.clear();
    let client_id = read_until(&mut stream, &mut buf, deadline, |b| {
        inbound.feed(b);
        b.clear();
        loop {
            match inbound.next_message()? {
                Some(Incoming::StartApi { client_id }) => return Ok(Some(client_id)),
                // Requests before START_API are not served by TWS either.
                Some(other) => debug!(?other, "ignored before START_API"),
                None => return Ok(None),
            }
        }
    })?;
    stream.set_read_timeout(None)?;

    let (tx, rx) = channel();
    let dropped = Arc::new(AtomicBool::new(false));
    let handle = ClientHandle {
        tx: tx.clone(),
        stream: stream.try_clone()?,
        dropped: Arc::clone(&dropped),
    };
    if !shared.register(client_id, conn_no, handle) {
        info!(client_id, "duplicate client id: 326 and close");
        wire::encode_reply(
            &mut out,
            version,
            &Reply::Error {
                req_id: -1,
                code: code::CLIENT_ID_IN_USE,
                msg: code::text(code::CLIENT_ID_IN_USE).into(),
            },
            &shared.universe,
        );
        send(&mut stream, &mut out, capture.as_mut(), None)?;
        let _ = stream.shutdown(Shutdown::Both);
        return Ok(());
    }
    info!(
        client_id,
        version,
        pace_api = hello.pace_api,
        "client connected"
    );

    let reader_stream = stream.try_clone()?;
    let pacer = Pacer::new(shared.cfg.session.limits.max_msgs_per_sec, hello.pace_api);
    let reader = std::thread::Builder::new()
        .name(format!("tws-sim-rd-{client_id}"))
        .spawn(move || read_loop(reader_stream, inbound, pacer, tx))?;

    let mut w = Writer {
        shared: Arc::clone(shared),
        stream,
        version,
        client_id,
        session: Session::new(
            shared.cfg.session.clone(),
            shared.account.clone(),
            shared.competing(),
        ),
        out,
        replies: Vec::new(),
        capture,
        split: None,
        log_entries: Vec::new(),
        ticks: TickEncoder::new(version),
    };
    let result = w.run(&rx);
    let _ = w.stream.shutdown(Shutdown::Both);
    if dropped.load(Ordering::Relaxed) {
        // The gateway side cut this connection: the client will reconnect and resubscribe.
        w.session.forget_tbt_windows();
    }
    shared.deregister(client_id, conn_no);
    drop(w);
    let _ = reader.join();
    info!(client_id, "client disconnected");
    result
}

/// The reader thread: frames in, requests to the writer, pacing applied.
fn read_loop(mut stream: TcpStream, mut inbound: Inbound, mut pacer: Pacer, tx: Sender<Event>) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Frames that arrived with START_API are already buffered: serve them before reading.
        loop {
            match inbound.next_message() {
                Ok(Some(Incoming::Request(req))) => {
                    match pacer.on_message(Instant::now()) {
                        Pace::Ok => {}
                        Pace::DelayUntil(at) => {
                            std::thread::sleep(at.saturating_duration_since(Instant::now()))
                        }
                        Pace::Violation => {
                            let _ = tx.send(Event::PacingViolation);
                            return;
                        }
                    }
                    if tx.send(Event::Request(req)).is_err() {
                        return;
                    }
                }
                Ok(Some(Incoming::StartApi { client_id })) => {
                    warn!(client_id, "second START_API ignored")
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Event::ReaderDone(Some(e.to_string())));
                    return;
                }
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => inbound.feed(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Event::ReaderDone(Some(e.to_string())));
                return;
            }
        }
    }
    let _ = tx.send(Event::ReaderDone(None));
}

/// The state of the split-frames fault.
#[derive(Debug)]
struct Split {
    max_chunk: usize,
    bytes_left: u64,
    rng: u64,
}

/// One send-log line waiting for its write to finish.
#[derive(Debug, Clone, Copy)]
pub struct LogEntry {
    pub req_id: i32,
    pub first_k: u64,
    pub count: u64,
}

struct Writer {
    shared: Arc<Shared>,
    stream: TcpStream,
    version: u32,
    client_id: i32,
    session: Session,
    out: Vec<u8>,
    replies: Vec<Reply>,
    capture: Option<CaptureWriter>,
    split: Option<Split>,
    log_entries: Vec<LogEntry>,
    ticks: TickEncoder,
}

/// Whether the loop goes on.
enum Flow {
    Go,
    Stop,
}

impl Writer {
    fn run(&mut self, rx: &Receiver<Event>) -> Result<(), ConnError> {
        self.session.welcome(&mut self.replies);
        self.flush_replies();
        self.write_out()?;
        loop {
            let wait = self.wait_time();
            let first = match rx.recv_timeout(wait) {
                Ok(ev) => Some(ev),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let mut next = first;
            while let Some(ev) = next {
                if let Flow::Stop = self.on_event(ev)? {
                    return Ok(());
                }
                next = rx.try_recv().ok();
            }
            self.produce_ticks();
            self.write_out()?;
        }
    }

    fn schedule_for(&self, con_id: i32) -> Schedule {
        self.shared.schedule_for(con_id)
    }

    /// How long the loop may sleep before a tick is due.
    fn wait_time(&self) -> Duration {
        if !self.session.streaming() || self.session.subs().is_empty() {
            return IDLE_WAIT;
        }
        let now = Instant::now();
        let mut wait = IDLE_WAIT;
        for sub in self.session.subs() {
            match self.schedule_for(sub.con_id).next_at(sub.sent) {
                None => return Duration::ZERO,
                Some(offset) => {
                    wait = wait.min((sub.started + offset).saturating_duration_since(now))
                }
            }
        }
        if wait.is_zero() {
            // Ticks left over from a full turn: go on at once.
            return wait;
        }
        // At high rates the next tick is microseconds away: gather a few into one write
        // instead of one syscall per tick (the send log records the real send time).
        wait.max(MIN_TURN)
    }

    fn on_event(&mut self, ev: Event) -> Result<Flow, ConnError> {
        match ev {
            Event::Request(req) => {
                debug!(client_id = self.client_id, ?req, "request");
                self.session.handle(
                    *req,
                    &self.shared.universe,
                    Instant::now(),
                    clock::unix_secs(),
                    &mut self.replies,
                );
            }
            Event::PacingViolation => {
                warn!(
                    client_id = self.client_id,
                    "pacing violation: 100 and disconnect"
                );
                self.replies.push(Reply::Error {
                    req_id: -1,
                    code: code::PACING,
                    msg: code::text(code::PACING).into(),
                });
                self.flush_replies();
                self.write_out()?;
                return Ok(Flow::Stop);
            }
            Event::ReaderDone(why) => {
                if let Some(why) = why {
                    info!(client_id = self.client_id, "reader stopped: {why}");
                }
                return Ok(Flow::Stop);
            }
            Event::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Event::Fault(f) => return self.on_fault(f),
        }
        self.flush_replies();
        Ok(Flow::Go)
    }

    fn on_fault(&mut self, f: Fault) -> Result<Flow, ConnError> {
        info!(client_id = self.client_id, ?f, "fault");
        match f {
            Fault::Stall(d) => {
                // Whatever is encoded waits too: the client sees silence.
                std::thread::sleep(d);
            }
            Fault::Split { max_chunk, bytes } => {
                self.split = Some(Split {
                    max_chunk: max_chunk.max(1),
                    bytes_left: bytes,
                    rng: 0x2545_F491_4F6C_DD1D,
                });
            }
            Fault::Malformed => {
                self.write_out()?;
                wire::malformed_frame(&mut self.out);
                self.write_out()?;
            }
            Fault::Lost => self.session.connectivity_lost(&mut self.replies),
            Fault::Restored { kept } => {
                self.session.connectivity_restored(kept, &mut self.replies);
                // Ticks resume on schedule from now, not in a catch-up burst.
                let now = Instant::now();
                let shared = Arc::clone(&self.shared);
                for sub in self.session.subs_mut() {
                    if let Some(offset) = shared.schedule_for(sub.con_id).next_at(sub.sent) {
                        sub.started = now.checked_sub(offset).unwrap_or(now);
                    }
                }
            }
            Fault::Farm(c) => self.session.farm_notice(c, &mut self.replies),
            Fault::Competing(on) => self.session.set_competing(on, &mut self.replies),
        }
        self.flush_replies();
        Ok(Flow::Go)
    }

    fn stats(&self) -> ClientStats {
        let subscriptions: Vec<SubStats> = self
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
        ClientStats {
            client_id: self.client_id,
            server_version: self.version,
            ticks: subscriptions.iter().map(|s| s.ticks).sum(),
            subscriptions,
        }
    }

    /// Encodes the pending replies.
    fn flush_replies(&mut self) {
        for r in self.replies.drain(..) {
            wire::encode_reply(&mut self.out, self.version, &r, &self.shared.universe);
        }
    }

    /// Encodes the ticks that are due into the output buffer.
    fn produce_ticks(&mut self) {
        if !self.session.streaming() {
            return;
        }
        let now = Instant::now();
        let time = clock::unix_secs();
        let shared = Arc::clone(&self.shared);
        let universe = &shared.universe;
        let logging = shared.send_log_enabled();
        let out = &mut self.out;
        let enc = &mut self.ticks;
        'fill: loop {
            let mut any = false;
            for sub in self.session.subs_mut() {
                if out.len() >= BATCH_BYTES {
                    break 'fill;
                }
                let sched = shared.schedule_for(sub.con_id);
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
                if logging {
                    self.log_entries.push(LogEntry {
                        req_id: sub.req_id,
                        first_k,
                        count: n,
                    });
                }
            }
            if !any || !sched_is_asap(&shared, &self.session) {
                break;
            }
        }
    }

    /// Writes the output buffer (whole, or cut up while the split fault lasts).
    fn write_out(&mut self) -> Result<(), ConnError> {
        if self.out.is_empty() {
            return Ok(());
        }
        // Taken just before the bytes go to the kernel, so a receiver's latency measured
        // against it is never negative; logged before the write, so the log line exists by
        // the time the client holds the ticks.
        if !self.log_entries.is_empty() {
            self.shared
                .log_sends(self.client_id, &self.log_entries, clock::unix_nanos());
            self.log_entries.clear();
        }
        let split = self.split.as_mut();
        send(
            &mut self.stream,
            &mut self.out,
            self.capture.as_mut(),
            split,
        )?;
        if self.split.as_ref().is_some_and(|s| s.bytes_left == 0) {
            self.split = None;
        }
        Ok(())
    }
}

/// Whether every subscription of the session runs in asap mode (the fill loop then keeps
/// going until the batch is full).
fn sched_is_asap(shared: &Shared, session: &Session) -> bool {
    session
        .subs()
        .iter()
        .all(|s| shared.schedule_for(s.con_id).is_asap())
}

/// Writes `out` and clears it; records it in the capture.
fn send(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    capture: Option<&mut CaptureWriter>,
    split: Option<&mut Split>,
) -> Result<(), ConnError> {
    if let Some(c) = capture {
        c.record(out);
    }
    match split {
        None => stream.write_all(out)?,
        Some(s) => {
            let mut rest: &[u8] = out;
            while !rest.is_empty() && s.bytes_left > 0 {
                // xorshift64: cut points vary but repeat run to run.
                s.rng ^= s.rng << 13;
                s.rng ^= s.rng >> 7;
                s.rng ^= s.rng << 17;
                let n = (1 + (s.rng % s.max_chunk as u64) as usize)
                    .min(rest.len())
                    .min(s.bytes_left as usize);
                stream.write_all(&rest[..n])?;
                stream.flush()?;
                s.bytes_left -= n as u64;
                rest = &rest[n..];
                // Give the peer a chance to read the piece on its own.
                std::thread::sleep(Duration::from_micros(200));
            }
            stream.write_all(rest)?;
        }
    }
    out.clear();
    Ok(())
}
