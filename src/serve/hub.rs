//! The ring tailer: one task per process reads the ring once and fans records out to every
//! client stream through bounded per-stream queues.
//!
//! All routing state (the streams, their filters, their overflow) is owned by the tailer
//! task, so the hot path takes no lock: a record is read, encoded once by `tickjson` if any
//! stream wants it, and offered to each matching stream's bounded `mpsc` queue with
//! `try_send`. Clients talk to the tailer through a command channel.
//!
//! When a stream's queue is full its declared [`SlowPolicy`] applies:
//! - [`SlowPolicy::Conflate`] (default): the stream keeps only the latest tick per kind (its
//!   contract is fixed) until the queue has room again, then gets a `gap` with reason
//!   `slow_client` counting the ticks it lost, followed by the retained ticks in order;
//! - [`SlowPolicy::Disconnect`]: the stream is closed with `slow_consumer`.
//!
//! Either way a stream holds at most its queue capacity, one tick per kind and a few
//! control messages: server memory stays bounded whatever a client does.
//!
//! A stream that resumes (`Last-Event-ID`) starts with a private ring reader at the sequence
//! after the last one it saw and joins the live fan-out once it has caught up with the
//! tailer; what the ring no longer holds is reported as a `gap` (`resume_unavailable`). A
//! resume point of another engine run (epoch) never resumes inside this one: it gets
//! `info{resume_unavailable}` (the replay layer serves such resumes from storage first).
//!
//! The tailer reads the ring through [`RingFollower`], which reports laps and writer restarts
//! (see `ipc/src/follow.rs` for the one meaning of a restart); each becomes a `gap` to every
//! stream.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ib_stream_ipc::{
    FollowBatch, FollowConfig, FollowEvent, LapPolicy, ReadOutcome, Record, RecordKind,
    RingFollower, RingReader, StartAt, StringTableReader, SubState, WriterRestart, WriterStatus,
};
use tokio::sync::{Notify, mpsc, oneshot};

use super::messages::{self, GapInfo, now_ns};
use super::params::{KindSet, TickType};
use crate::tickjson::{self, StringLookup};

/// What a stream does when its queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SlowPolicy {
    /// Keep the latest tick per kind, then report the loss as a `gap` (the default).
    #[default]
    Conflate,
    /// Close the stream with an `error` (`slow_consumer`).
    Disconnect,
}

impl SlowPolicy {
    /// Parses `conflate` or `disconnect`.
    pub fn from_name(s: &str) -> Option<SlowPolicy> {
        match s {
            "conflate" => Some(SlowPolicy::Conflate),
            "disconnect" => Some(SlowPolicy::Disconnect),
            _ => None,
        }
    }

    /// The name.
    pub fn name(self) -> &'static str {
        match self {
            SlowPolicy::Conflate => "conflate",
            SlowPolicy::Disconnect => "disconnect",
        }
    }
}

/// Why the tailer closed a stream (stored in its [`SinkFlag`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// The queue was full under [`SlowPolicy::Disconnect`], or control messages piled up.
    SlowConsumer = 1,
    /// An operator stopped the contract's streams.
    Stopped = 2,
    /// The server is shutting down.
    ServerShutdown = 3,
}

/// A stream's close flag, set by the tailer and read by the stream's consumer.
#[derive(Debug, Default)]
pub struct SinkFlag(AtomicU8);

impl SinkFlag {
    /// The reason the tailer closed the stream, if it did.
    pub fn get(&self) -> Option<CloseReason> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(CloseReason::SlowConsumer),
            2 => Some(CloseReason::Stopped),
            3 => Some(CloseReason::ServerShutdown),
            _ => None,
        }
    }

    /// Closes the stream for `r` (the tailer does; so does a stop of a stream still
    /// replaying history, before it joined the tailer).
    pub fn set(&self, r: CloseReason) {
        self.0.store(r as u8, Ordering::Release);
    }
}

/// A place in the tick history: a ring sequence of one engine run (ring epoch). Its text
/// form, the resume token (SSE `id:`), is `<epoch as 16 hex digits>-<seq>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// The engine run (ring epoch).
    pub epoch: u64,
    /// The ring sequence within it.
    pub seq: u64,
}

impl Pos {
    /// Appends the token (`<epoch:016x>-<seq>`) to `out` without allocating.
    pub fn write_token(self, out: &mut impl Extend<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 16];
        for (i, h) in hex.iter_mut().enumerate() {
            *h = HEX[((self.epoch >> (60 - 4 * i)) & 0xF) as usize];
        }
        out.extend(hex);
        out.extend([b'-']);
        out.extend(itoa::Buffer::new().format(self.seq).bytes());
    }

    /// The token as a string.
    pub fn token(self) -> String {
        let mut v = Vec::with_capacity(40);
        self.write_token(&mut v);
        String::from_utf8(v).unwrap_or_default()
    }
}

/// One message for a consumer.
#[derive(Clone, Debug)]
pub enum Out {
    /// A tick: the `tickjson` bytes.
    Tick {
        /// The stream within the consumer (WebSocket connections have several).
        tag: u32,
        /// Ring sequence.
        seq: u64,
        /// The engine run (ring epoch) of `seq`.
        epoch: u64,
        /// Record kind byte.
        kind: u8,
        /// The JSON object.
        json: Bytes,
    },
    /// A stored tick replayed from history (never made by the tailer): delivered like a
    /// tick, but not counted in the ring-to-client latency (its receive time is old).
    History {
        /// The stream within the consumer.
        tag: u32,
        /// Ring sequence.
        seq: u64,
        /// The engine run (ring epoch) of `seq`: any run storage keeps.
        epoch: u64,
        /// The stored line's bytes.
        json: Bytes,
    },
    /// A control message (`gap`, `error`, `info`).
    Control {
        /// The stream within the consumer.
        tag: u32,
        /// The message type (SSE event name).
        event: &'static str,
        /// The place it is about (SSE `id:`), if any: a client that resumes from it misses
        /// nothing after it.
        id: Option<Pos>,
        /// The JSON object.
        json: Bytes,
        /// The stream ends after this message.
        end: bool,
    },
}

impl Out {
    fn seq(&self) -> u64 {
        match self {
            Out::Tick { seq, .. } => *seq,
            Out::History { seq, .. } => *seq,
            Out::Control { id, .. } => id.map_or(0, |p| p.seq),
        }
    }
}

/// Where a new stream starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// With the next record published.
    Live,
    /// Right after this sequence (a resume from `Last-Event-ID`), of this engine run (ring
    /// epoch); `None`: a plain-number resume point, taken as the ring's current run.
    After {
        /// The run the sequence belongs to.
        epoch: Option<u64>,
        /// The last sequence the stream had.
        seq: u64,
    },
}

/// A stream to add to the fan-out.
#[derive(Debug)]
pub struct SinkSpec {
    /// The stream within its consumer.
    pub tag: u32,
    /// The stream's public id (put into control messages).
    pub stream_id: Arc<str>,
    /// The contract.
    pub con_id: u32,
    /// The record kinds wanted.
    pub kinds: KindSet,
    /// The slow-client policy.
    pub policy: SlowPolicy,
    /// Where to start.
    pub start: Start,
    /// Ticks received before this time (ns) are not delivered (`since=`); `i64::MIN` for
    /// none.
    pub min_ts_ns: i64,
    /// The consumer's queue.
    pub tx: mpsc::Sender<Out>,
    /// Set when the tailer closes the stream.
    pub flag: Arc<SinkFlag>,
    /// Woken when the flag is set.
    pub notify: Arc<Notify>,
}

/// Tailer settings.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// The ring file.
    pub ring_path: PathBuf,
    /// The string table file.
    pub strings_path: PathBuf,
    /// Sleep when there is nothing to read.
    pub idle_sleep: Duration,
    /// How often to check the writer (and retry opening the ring) when idle.
    pub check_every: Duration,
    /// A writer heartbeat older than this is stale.
    pub stale_after: Duration,
    /// Records a resuming stream reads per tailer iteration.
    pub catchup_budget: usize,
    /// Control messages kept for a stream whose queue is full before it is closed.
    pub max_pending_control: usize,
    /// Register in the ring's reader registry (off when the ring is another environment's:
    /// registering writes into its shm directory).
    pub register_reader: bool,
}

impl HubConfig {
    /// Defaults for the ring and string table at these paths.
    pub fn new(ring_path: PathBuf, strings_path: PathBuf) -> HubConfig {
        HubConfig {
            ring_path,
            strings_path,
            idle_sleep: Duration::from_micros(100),
            check_every: Duration::from_millis(200),
            stale_after: Duration::from_secs(5),
            catchup_budget: 8192,
            max_pending_control: 64,
            register_reader: true,
        }
    }
}

/// What the tailer knows about the ring writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum WriterState {
    /// No ring file (yet).
    Missing = 0,
    /// Heartbeat recent.
    Alive = 1,
    /// Heartbeat too old.
    Stale = 2,
    /// Closed cleanly.
    Stopped = 3,
    /// Process gone.
    Gone = 4,
}

impl WriterState {
    /// The name in `/health` and `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            WriterState::Missing => "missing",
            WriterState::Alive => "alive",
            WriterState::Stale => "stale",
            WriterState::Stopped => "stopped",
            WriterState::Gone => "gone",
        }
    }

    fn from_u8(v: u8) -> WriterState {
        match v {
            1 => WriterState::Alive,
            2 => WriterState::Stale,
            3 => WriterState::Stopped,
            4 => WriterState::Gone,
            _ => WriterState::Missing,
        }
    }
}

/// Counters and gauges the tailer publishes (read by `/health` and `/metrics`).
#[derive(Debug, Default)]
pub struct HubStats {
    /// The ring is mapped.
    pub ring_open: AtomicBool,
    writer_state: AtomicU8,
    /// Age of the writer's heartbeat at the last check, ns.
    pub heartbeat_age_ns: AtomicU64,
    /// The ring's epoch.
    pub epoch: AtomicU64,
    /// The ring's capacity.
    pub capacity: AtomicU64,
    /// The newest sequence published.
    pub ring_head: AtomicU64,
    /// The next sequence the tailer reads.
    pub next_seq: AtomicU64,
    /// Records read by the tailer.
    pub records_read: AtomicU64,
    /// Ticks queued to streams.
    pub ticks_queued: AtomicU64,
    /// Times the tailer was lapped.
    pub overrun_gaps: AtomicU64,
    /// Records the tailer lost to laps.
    pub overrun_records: AtomicU64,
    /// Ticks dropped by conflation.
    pub conflated_drops: AtomicU64,
    /// Streams closed as slow consumers.
    pub slow_disconnects: AtomicU64,
    /// Streams in the fan-out.
    pub sinks: AtomicU64,
    /// Streams catching up from a resume point.
    pub catching_up: AtomicU64,
    /// Wall time of the tailer's last iteration, ns since the epoch.
    pub loop_ns: AtomicI64,
    /// Records read in the last full second.
    pub records_per_sec: AtomicU64,
    /// Writer restarts seen.
    pub writer_restarts: AtomicU64,
}

impl HubStats {
    /// The writer state at the last check.
    pub fn writer_state(&self) -> WriterState {
        WriterState::from_u8(self.writer_state.load(Ordering::Relaxed))
    }
}

enum Cmd {
    Pause(oneshot::Sender<()>, std::sync::mpsc::Receiver<()>),
    Add(Box<SinkSpec>, u64),
    Remove(u64),
    StopContract(u32, oneshot::Sender<usize>),
    Shutdown,
}

/// The handle to the tailer task (cheap to clone).
#[derive(Clone, Debug)]
pub struct Hub {
    cmd: mpsc::UnboundedSender<Cmd>,
    stats: Arc<HubStats>,
    next_id: Arc<AtomicU64>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

/// Keeps the tailer paused while it lives (see [`Hub::pause`]).
#[derive(Debug)]
pub struct Paused {
    _resume: std::sync::mpsc::Sender<()>,
}

/// Removes its stream from the fan-out when dropped.
#[derive(Debug)]
pub struct SinkGuard {
    cmd: mpsc::UnboundedSender<Cmd>,
    id: u64,
}

impl Drop for SinkGuard {
    fn drop(&mut self) {
        // The tailer may be gone already (shutdown): nothing left to remove then.
        let _ = self.cmd.send(Cmd::Remove(self.id));
    }
}

impl Hub {
    /// Starts the tailer on its own thread.
    pub fn start(cfg: HubConfig) -> Hub {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(HubStats::default());
        let tailer = Tailer::new(cfg, rx, Arc::clone(&stats));
        // Its own thread: the ring has no wake-up, so the tailer polls, and a short OS sleep
        // (100 µs) wakes it far sooner than the async runtime's 1 ms timer would.
        let spawned = std::thread::Builder::new()
            .name("ib-stream-tailer".into())
            .spawn(move || tailer.run());
        if let Err(e) = spawned {
            // Without the thread every stream ends at once (the queue senders are gone)
            // and /health and /ready say the tailer is not running.
            tracing::error!(error = %e, "cannot start the ring tailer thread");
        }
        Hub {
            cmd: tx,
            stats,
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Adds a stream; it stays until the guard is dropped or the tailer closes it.
    pub fn add(&self, spec: SinkSpec) -> SinkGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.cmd.send(Cmd::Add(Box::new(spec), id));
        SinkGuard {
            cmd: self.cmd.clone(),
            id,
        }
    }

    /// Sends the tailer a stop of `con_id` now, ordered after every [`Hub::add`] made
    /// before; the future gives how many streams it closed.
    pub fn stop_contract_now(&self, con_id: u32) -> impl Future<Output = usize> + use<> {
        let (tx, rx) = oneshot::channel();
        let sent = self.cmd.send(Cmd::StopContract(con_id, tx)).is_ok();
        async move { if sent { rx.await.unwrap_or(0) } else { 0 } }
    }

    /// Closes every stream of `con_id` (reason `stopped`); returns how many.
    pub async fn stop_contract(&self, con_id: u32) -> usize {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::StopContract(con_id, tx)).is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Stops the tailer reading the ring until the returned guard is dropped (for tests and
    /// maintenance). Records published meanwhile are delivered afterwards, or reported as a
    /// `reader_overrun` gap if the writer laps the tailer.
    pub async fn pause(&self) -> Paused {
        let (ack_tx, ack_rx) = oneshot::channel();
        let (resume_tx, resume_rx) = std::sync::mpsc::channel();
        if self.cmd.send(Cmd::Pause(ack_tx, resume_rx)).is_ok() {
            let _ = ack_rx.await;
        }
        Paused { _resume: resume_tx }
    }

    /// Closes every stream (reason `server_shutdown`) and stops the tailer.
    pub fn shutdown(&self) {
        let _ = self.cmd.send(Cmd::Shutdown);
    }

    /// The tailer's counters.
    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    /// True when the tailer task is running.
    pub fn is_running(&self) -> bool {
        !self.cmd.is_closed()
    }
}

/// A resume token as JSON (in `info{resume_unavailable}`).
fn json_token(p: Pos) -> serde_json::Value {
    serde_json::Value::String(p.token())
}

/// The string table as a [`StringLookup`]; unknown ids print as `#id` (see `tickjson`).
struct Strings(Option<StringTableReader>);

impl StringLookup for Strings {
    fn lookup(&self, id: u32) -> Option<&[u8]> {
        if id == 0 {
            return Some(&[]);
        }
        self.0.as_ref()?.get(id)
    }
}

struct Encoder {
    strings: Strings,
    buf: Vec<u8>,
}

impl Encoder {
    fn encode(&mut self, rec: &Record) -> Bytes {
        self.buf.clear();
        tickjson::encode(rec, &self.strings, &mut self.buf);
        Bytes::copy_from_slice(&self.buf)
    }
}

#[derive(PartialEq, Eq)]
enum Verdict {
    Keep,
    Remove,
}

struct Sink {
    tag: u32,
    stream_id: Arc<str>,
    con_id: u32,
    kinds: KindSet,
    policy: SlowPolicy,
    tx: mpsc::Sender<Out>,
    flag: Arc<SinkFlag>,
    notify: Arc<Notify>,
    /// Records below this sequence are not delivered (resume point, or skipped by a lap).
    min_seq: u64,
    /// The ring epoch of what the tailer delivers now.
    epoch: u64,
    /// Ticks received before this time (ns) are not delivered.
    min_ts_ns: i64,
    /// A private reader while the stream catches up from a resume point.
    catchup: Option<RingReader>,
    last_ts_ns: i64,
    /// Latest tick per kind while the queue is full.
    conflated: Vec<Out>,
    /// Control messages while the queue is full.
    pending: Vec<Out>,
    dropped: u64,
    dropped_first: u64,
    dropped_last: u64,
}

impl Sink {
    fn overflowing(&self) -> bool {
        !self.conflated.is_empty() || !self.pending.is_empty() || self.dropped > 0
    }

    fn close(&mut self, why: CloseReason) -> Verdict {
        self.flag.set(why);
        self.notify.notify_one();
        Verdict::Remove
    }

    fn push(&mut self, out: Out, stats: &HubStats, max_pending: usize) -> Verdict {
        if self.flag.get().is_some() {
            // Closed earlier in this batch; removal happens after it.
            return Verdict::Remove;
        }
        if self.overflowing() {
            return self.overflow(out, stats, max_pending);
        }
        let is_tick = matches!(out, Out::Tick { .. });
        match self.tx.try_send(out) {
            Ok(()) => {
                if is_tick {
                    stats.ticks_queued.fetch_add(1, Ordering::Relaxed);
                }
                Verdict::Keep
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Verdict::Remove,
            Err(mpsc::error::TrySendError::Full(out)) => match self.policy {
                SlowPolicy::Conflate => self.overflow(out, stats, max_pending),
                SlowPolicy::Disconnect => {
                    stats.slow_disconnects.fetch_add(1, Ordering::Relaxed);
                    self.close(CloseReason::SlowConsumer)
                }
            },
        }
    }

    fn overflow(&mut self, out: Out, stats: &HubStats, max_pending: usize) -> Verdict {
        match &out {
            Out::Tick { kind, .. } => {
                if let Some(slot) = self
                    .conflated
                    .iter_mut()
                    .find(|o| matches!(o, Out::Tick { kind: k, .. } if k == kind))
                {
                    let old = slot.seq();
                    if self.dropped == 0 {
                        self.dropped_first = old;
                    }
                    self.dropped_first = self.dropped_first.min(old);
                    self.dropped_last = old.max(self.dropped_last);
                    self.dropped += 1;
                    stats.conflated_drops.fetch_add(1, Ordering::Relaxed);
                    *slot = out;
                } else {
                    self.conflated.push(out);
                }
                Verdict::Keep
            }
            // Replays wait on the queue instead (`send().await`): kept in order if one
            // ever came here.
            Out::Control { .. } | Out::History { .. } => {
                if self.pending.len() >= max_pending {
                    stats.slow_disconnects.fetch_add(1, Ordering::Relaxed);
                    return self.close(CloseReason::SlowConsumer);
                }
                self.pending.push(out);
                Verdict::Keep
            }
        }
    }

    /// Moves overflow into the queue while it has room: first the `slow_client` gap, then
    /// the kept messages in sequence order.
    fn flush(&mut self, stats: &HubStats) -> Verdict {
        if self.dropped > 0 {
            let g = GapInfo {
                reason: "slow_client",
                first_seq: self.dropped_first,
                last_seq: self.dropped_last,
                count: self.dropped,
                t0_ns: 0,
                t1_ns: 0,
            };
            let msg = Out::Control {
                tag: self.tag,
                event: "gap",
                id: None,
                json: messages::gap(Some(&self.stream_id), &g),
                end: false,
            };
            match self.tx.try_send(msg) {
                Ok(()) => {
                    self.dropped = 0;
                    self.dropped_first = 0;
                    self.dropped_last = 0;
                }
                Err(mpsc::error::TrySendError::Full(_)) => return Verdict::Keep,
                Err(mpsc::error::TrySendError::Closed(_)) => return Verdict::Remove,
            }
        }
        loop {
            let next_tick = self
                .conflated
                .iter()
                .enumerate()
                .min_by_key(|(_, o)| o.seq());
            let next_ctl = self.pending.first();
            let take_tick = match (next_tick, next_ctl) {
                (None, None) => return Verdict::Keep,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((_, t)), Some(c)) => t.seq() < c.seq(),
            };
            let out = if take_tick {
                let i = next_tick.map(|(i, _)| i).unwrap_or(0);
                self.conflated.remove(i)
            } else {
                self.pending.remove(0)
            };
            let is_tick = matches!(out, Out::Tick { .. });
            match self.tx.try_send(out) {
                Ok(()) => {
                    if is_tick {
                        stats.ticks_queued.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(mpsc::error::TrySendError::Full(out)) => {
                    if take_tick {
                        self.conflated.push(out);
                    } else {
                        self.pending.insert(0, out);
                    }
                    return Verdict::Keep;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Verdict::Remove,
            }
        }
    }

    /// A control message about sequence `id` of the current epoch.
    fn control(&self, event: &'static str, id: Option<u64>, json: Bytes, end: bool) -> Out {
        Out::Control {
            tag: self.tag,
            event,
            id: id.map(|seq| Pos {
                epoch: self.epoch,
                seq,
            }),
            json,
            end,
        }
    }

    /// Offers one record; `cache` holds the record's JSON once encoded (shared by every
    /// stream that wants it).
    fn offer(
        &mut self,
        rec: &Record,
        cache: &mut Option<Bytes>,
        enc: &mut Encoder,
        stats: &HubStats,
        max_pending: usize,
    ) -> Verdict {
        if rec.seq < self.min_seq {
            return Verdict::Keep;
        }
        let about_me = rec.instrument_id == self.con_id;
        let out = match rec.kind() {
            Some(k) if k.is_market_data() => {
                // Times compare to the microsecond, as history does.
                if !about_me
                    || !self.kinds.contains(rec.kind)
                    || rec.ts_recv.div_euclid(1000) < self.min_ts_ns.div_euclid(1000)
                {
                    return Verdict::Keep;
                }
                let json = cache.get_or_insert_with(|| enc.encode(rec)).clone();
                Out::Tick {
                    tag: self.tag,
                    seq: rec.seq,
                    epoch: self.epoch,
                    kind: rec.kind,
                    json,
                }
            }
            Some(RecordKind::Gap) if about_me || rec.instrument_id == 0 => {
                let b = rec.body;
                let (first, last) = (b[0].max(0) as u64, b[1].max(0) as u64);
                let g = GapInfo {
                    reason: tickjson::gap_reason_name(rec.tick_type),
                    first_seq: first,
                    last_seq: last,
                    count: if first > 0 && last >= first {
                        last - first + 1
                    } else {
                        0
                    },
                    t0_ns: b[2],
                    t1_ns: b[3],
                };
                self.control(
                    "gap",
                    Some(rec.seq),
                    messages::gap(Some(&self.stream_id), &g),
                    false,
                )
            }
            Some(RecordKind::Subscription) if about_me => {
                let kind = u8::try_from(rec.body[0]).unwrap_or(0);
                if !self.kinds.contains(kind) {
                    return Verdict::Keep;
                }
                if SubState::from_u8(rec.tick_type) == Some(SubState::Rejected) {
                    let tt = TickType::of_kind(kind);
                    for k in tt.map_or(&[][..], TickType::kinds) {
                        self.kinds.remove(*k as u8);
                    }
                    let name = tt.map_or("unknown", TickType::name);
                    let code = rec.body[1];
                    let msg = format!(
                        "IB rejected the {name} subscription of contract {} (IB error {code})",
                        self.con_id
                    );
                    let end = self.kinds.is_empty();
                    self.control(
                        "error",
                        Some(rec.seq),
                        messages::error(
                            Some(&self.stream_id),
                            "subscription_rejected",
                            &msg,
                            false,
                            Some(code),
                        ),
                        end,
                    )
                } else {
                    let json = cache.get_or_insert_with(|| enc.encode(rec)).clone();
                    self.control(
                        "info",
                        Some(rec.seq),
                        messages::info_record(Some(&self.stream_id), "subscription", &json),
                        false,
                    )
                }
            }
            Some(RecordKind::Connection) => {
                let json = cache.get_or_insert_with(|| enc.encode(rec)).clone();
                self.control(
                    "info",
                    Some(rec.seq),
                    messages::info_record(Some(&self.stream_id), "connection", &json),
                    false,
                )
            }
            _ => return Verdict::Keep,
        };
        self.push(out, stats, max_pending)
    }
}

struct Tailer {
    cfg: HubConfig,
    cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    stats: Arc<HubStats>,
    ring: Option<RingFollower>,
    enc: Encoder,
    sinks: HashMap<u64, Sink>,
    /// Live streams by contract (streams catching up are not here).
    by_con: HashMap<u32, Vec<u64>>,
    catching: Vec<u64>,
    overflowed: Vec<u64>,
    removals: Vec<u64>,
    batch: Vec<Record>,
    last_ts_ns: i64,
    pending_gap: Option<GapInfo>,
    rate_window: (Instant, u64),
}

impl Tailer {
    fn new(cfg: HubConfig, cmd_rx: mpsc::UnboundedReceiver<Cmd>, stats: Arc<HubStats>) -> Tailer {
        Tailer {
            cfg,
            cmd_rx,
            stats,
            ring: None,
            enc: Encoder {
                strings: Strings(None),
                buf: Vec::with_capacity(512),
            },
            sinks: HashMap::new(),
            by_con: HashMap::new(),
            catching: Vec::new(),
            overflowed: Vec::new(),
            removals: Vec::new(),
            batch: vec![Record::ZERO; 512],
            last_ts_ns: 0,
            pending_gap: None,
            rate_window: (Instant::now(), 0),
        }
    }

    fn run(mut self) {
        let mut last_check = Instant::now() - self.cfg.check_every;
        loop {
            loop {
                match self.cmd_rx.try_recv() {
                    Ok(cmd) => {
                        if !self.command(cmd) {
                            return;
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return self.shutdown(),
                }
            }
            let read = self.read_main();
            let catching = self.advance_catchups();
            self.flush_overflowed();
            self.apply_removals();
            self.tick_stats();
            if read == self.batch.len() {
                // More is waiting: go on at once.
                continue;
            }
            if last_check.elapsed() >= self.cfg.check_every {
                last_check = Instant::now();
                self.check_writer();
            }
            // A stream stuck with overflow is retried every idle tick, not in a busy loop:
            // a client that stopped reading must not cost a core.
            if read == 0 && !catching {
                std::thread::sleep(self.cfg.idle_sleep);
            }
        }
    }

    fn shutdown(&mut self) {
        for s in self.sinks.values_mut() {
            s.close(CloseReason::ServerShutdown);
        }
        self.sinks.clear();
        self.by_con.clear();
        self.stats.sinks.store(0, Ordering::Relaxed);
    }

    /// Returns false when the tailer must stop.
    fn command(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Add(spec, id) => self.add(*spec, id),
            Cmd::Remove(id) => self.remove(id),
            Cmd::StopContract(con_id, reply) => {
                let ids: Vec<u64> = self
                    .sinks
                    .iter()
                    .filter(|(_, s)| s.con_id == con_id)
                    .map(|(id, _)| *id)
                    .collect();
                for id in &ids {
                    if let Some(s) = self.sinks.get_mut(id) {
                        s.close(CloseReason::Stopped);
                    }
                    self.remove(*id);
                }
                let _ = reply.send(ids.len());
            }
            Cmd::Shutdown => {
                self.shutdown();
                return false;
            }
            Cmd::Pause(ack, resume) => {
                let _ = ack.send(());
                // Blocks until the `Paused` guard is dropped (its sender disconnects).
                let _ = resume.recv();
            }
        }
        true
    }

    fn add(&mut self, spec: SinkSpec, id: u64) {
        let mut sink = Sink {
            tag: spec.tag,
            stream_id: spec.stream_id,
            con_id: spec.con_id,
            kinds: spec.kinds,
            policy: spec.policy,
            tx: spec.tx,
            flag: spec.flag,
            notify: spec.notify,
            min_seq: 0,
            epoch: self.ring.as_ref().map_or(0, |r| r.info().epoch),
            min_ts_ns: spec.min_ts_ns,
            catchup: None,
            last_ts_ns: 0,
            conflated: Vec::new(),
            pending: Vec::new(),
            dropped: 0,
            dropped_first: 0,
            dropped_last: 0,
        };
        let mut live = true;
        if let Start::After { epoch, seq: last } = spec.start {
            let first = last.saturating_add(1);
            let max_pending = self.cfg.max_pending_control;
            let unavailable = |sink: &mut Sink, details: serde_json::Value, stats: &HubStats| {
                let msg = messages::info(Some(&sink.stream_id), "resume_unavailable", details);
                let out = sink.control("info", None, msg, false);
                let _ = sink.push(out, stats, max_pending);
            };
            let requested = match epoch {
                Some(e) => json_token(Pos {
                    epoch: e,
                    seq: last,
                }),
                None => serde_json::json!(last),
            };
            match &self.ring {
                None => unavailable(
                    &mut sink,
                    serde_json::json!({"requested_after": requested, "why": "the ring is not open"}),
                    &self.stats,
                ),
                Some(ring) => {
                    let main_next = ring.next_seq();
                    let head = ring.head();
                    let ring_epoch = ring.info().epoch;
                    if epoch.is_some_and(|e| e != ring_epoch) {
                        // Another engine run: its sequences mean nothing in this ring.
                        unavailable(
                            &mut sink,
                            serde_json::json!({
                                "requested_after": requested,
                                "epoch": format!("{ring_epoch:016x}"),
                                "ring_head": head,
                                "why": "the resume point is of another engine run; this stream starts live in the current one",
                            }),
                            &self.stats,
                        );
                    } else if first > head + 1 {
                        // A plain number this ring never published: another epoch (the
                        // engine restarted). Say so and go live.
                        unavailable(
                            &mut sink,
                            serde_json::json!({
                                "requested_after": requested,
                                "epoch": format!("{ring_epoch:016x}"),
                                "ring_head": head,
                                "why": "sequence not from this ring (the engine restarted?)",
                            }),
                            &self.stats,
                        );
                    } else if first >= main_next {
                        sink.min_seq = first;
                    } else {
                        let opened = RingReader::open(&self.cfg.ring_path, StartAt::Seq(first))
                            .and_then(|r| {
                                if r.info().epoch == ring_epoch {
                                    Ok(r)
                                } else {
                                    // Replaced since the tailer last looked: not this run.
                                    Err(ib_stream_ipc::IpcError::Missing {
                                        path: self.cfg.ring_path.clone(),
                                    })
                                }
                            });
                        match opened {
                            Ok(mut r) => {
                                r.set_lap_policy(LapPolicy::Oldest { margin: 0 });
                                sink.catchup = Some(r);
                                live = false;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot open the ring to resume a stream");
                                let g = GapInfo {
                                    reason: "resume_unavailable",
                                    first_seq: first,
                                    last_seq: main_next - 1,
                                    count: main_next - first,
                                    t0_ns: 0,
                                    t1_ns: 0,
                                };
                                let out = sink.control(
                                    "gap",
                                    Some(main_next - 1),
                                    messages::gap(Some(&sink.stream_id), &g),
                                    false,
                                );
                                let _ = sink.push(out, &self.stats, max_pending);
                            }
                        }
                    }
                }
            }
        }
        if live {
            self.by_con.entry(sink.con_id).or_default().push(id);
        } else {
            self.catching.push(id);
        }
        self.sinks.insert(id, sink);
        self.stats
            .sinks
            .store(self.sinks.len() as u64, Ordering::Relaxed);
    }

    fn remove(&mut self, id: u64) {
        let Some(s) = self.sinks.remove(&id) else {
            return;
        };
        if let Some(v) = self.by_con.get_mut(&s.con_id) {
            v.retain(|x| *x != id);
            if v.is_empty() {
                self.by_con.remove(&s.con_id);
            }
        }
        self.catching.retain(|x| *x != id);
        self.stats
            .sinks
            .store(self.sinks.len() as u64, Ordering::Relaxed);
    }

    fn apply_removals(&mut self) {
        while let Some(id) = self.removals.pop() {
            self.remove(id);
        }
        self.overflowed.retain(|id| self.sinks.contains_key(id));
    }

    fn open_ring(&mut self) {
        let follow = FollowConfig {
            check_every: self.cfg.check_every,
            stale_after: self.cfg.stale_after,
        };
        match RingFollower::open(&self.cfg.ring_path, StartAt::Newest, follow) {
            Ok(mut r) => {
                let cap = r.info().capacity;
                r.set_lap_policy(LapPolicy::default_for(cap));
                if self.cfg.register_reader {
                    let registered = r.register("serve");
                    tracing::debug!("ring reader: {registered}");
                }
                self.stats.epoch.store(r.info().epoch, Ordering::Relaxed);
                self.stats.capacity.store(cap, Ordering::Relaxed);
                self.stats.ring_open.store(true, Ordering::Relaxed);
                self.stats
                    .writer_state
                    .store(WriterState::Alive as u8, Ordering::Relaxed);
                tracing::info!(path = %self.cfg.ring_path.display(), epoch = r.info().epoch, "ring opened");
                let epoch = r.info().epoch;
                self.ring = Some(r);
                for s in self.sinks.values_mut() {
                    s.epoch = epoch;
                }
                self.open_strings();
            }
            Err(e) => {
                if !e.is_missing() {
                    tracing::warn!(error = %e, "cannot open the ring");
                }
                self.stats
                    .writer_state
                    .store(WriterState::Missing as u8, Ordering::Relaxed);
            }
        }
    }

    fn open_strings(&mut self) {
        let Some(ring) = &self.ring else { return };
        let epoch = ring.info().epoch;
        let current = self.enc.strings.0.as_ref();
        if current.is_some_and(|s| s.belongs_to(epoch) && !s.replaced()) {
            return;
        }
        self.enc.strings.0 = match StringTableReader::open(&self.cfg.strings_path) {
            Ok(s) if s.belongs_to(epoch) => Some(s),
            _ => None,
        };
    }

    /// When idle: opens the ring if it is not open yet, publishes the writer's state as the
    /// follower last saw it, and retries a missing string table.
    fn check_writer(&mut self) {
        let Some(ring) = &self.ring else {
            self.open_ring();
            return;
        };
        let state = match ring.writer_status() {
            WriterStatus::Alive { heartbeat_age_ns } => {
                self.stats
                    .heartbeat_age_ns
                    .store(heartbeat_age_ns, Ordering::Relaxed);
                WriterState::Alive
            }
            WriterStatus::Stale { heartbeat_age_ns } => {
                self.stats
                    .heartbeat_age_ns
                    .store(heartbeat_age_ns, Ordering::Relaxed);
                WriterState::Stale
            }
            WriterStatus::Stopped => WriterState::Stopped,
            WriterStatus::Gone { .. } => WriterState::Gone,
            // The follower moves to a replaced ring itself; until it can, the old writer is
            // gone.
            WriterStatus::Replaced => WriterState::Gone,
        };
        if let Some(e) = ring.last_error() {
            tracing::debug!(error = %e, "the restarted ring cannot be opened yet");
        }
        self.stats
            .writer_state
            .store(state as u8, Ordering::Relaxed);
        if self.enc.strings.0.is_none() {
            self.open_strings();
        }
    }

    /// The follower moved to a restarted writer's ring: every stream gets the
    /// `writer_restart` gap (see [`messages::writer_restart`] for what it says).
    fn writer_restarted(&mut self, r: WriterRestart) {
        let capacity = self.ring.as_ref().map_or(0, |f| f.info().capacity);
        tracing::info!(
            old = format!("{:016x}", r.old_epoch),
            new = format!("{:016x}", r.new_epoch),
            old_last_seq = r.old_last_seq,
            clean = r.clean,
            "ring writer restarted; following the new ring"
        );
        self.stats.epoch.store(r.new_epoch, Ordering::Relaxed);
        self.stats.capacity.store(capacity, Ordering::Relaxed);
        self.stats.writer_restarts.fetch_add(1, Ordering::Relaxed);
        self.stats
            .writer_state
            .store(WriterState::Alive as u8, Ordering::Relaxed);
        self.enc.strings.0 = None;
        self.open_strings();
        let now = now_ns();
        let max_pending = self.cfg.max_pending_control;
        // Resuming streams lose their private readers (they read the old ring): what they
        // had not read of it yet is lost to them, and said so, then they go on live.
        for id in std::mem::take(&mut self.catching) {
            if let Some(s) = self.sinks.get_mut(&id) {
                let next = s
                    .catchup
                    .take()
                    .map_or(r.old_last_seq + 1, |c| c.next_seq());
                if next <= r.old_last_seq {
                    let g = GapInfo {
                        reason: "resume_unavailable",
                        first_seq: next,
                        last_seq: r.old_last_seq,
                        count: r.old_last_seq - next + 1,
                        t0_ns: s.last_ts_ns,
                        t1_ns: 0,
                    };
                    let out = s.control(
                        "gap",
                        Some(r.old_last_seq),
                        messages::gap(Some(&s.stream_id), &g),
                        false,
                    );
                    if s.push(out, &self.stats, max_pending) == Verdict::Remove {
                        self.removals.push(id);
                    }
                }
                self.by_con.entry(s.con_id).or_default().push(id);
            }
        }
        for (id, s) in self.sinks.iter_mut() {
            s.min_seq = 0;
            s.epoch = r.new_epoch;
            // Its id is the start of the new run: a client that resumes from it gets the new
            // run from its first record.
            let out = Out::Control {
                tag: s.tag,
                event: "gap",
                id: Some(Pos {
                    epoch: r.new_epoch,
                    seq: 0,
                }),
                json: messages::writer_restart(Some(&s.stream_id), &r, self.last_ts_ns, now),
                end: false,
            };
            if s.push(out, &self.stats, max_pending) == Verdict::Remove {
                self.removals.push(*id);
            } else if s.overflowing() {
                self.overflowed.push(*id);
            }
        }
    }

    /// Reads one batch from the ring and dispatches it; returns the records read.
    fn read_main(&mut self) -> usize {
        let Some(ring) = &mut self.ring else {
            return 0;
        };
        let mut batch = std::mem::take(&mut self.batch);
        let FollowBatch { records, event } = ring.read_batch(&mut batch);
        self.stats.ring_head.store(ring.head(), Ordering::Relaxed);
        for rec in &batch[..records] {
            self.dispatch(rec);
        }
        match event {
            Some(FollowEvent::Lost {
                first_seq,
                last_seq,
                count,
            }) => {
                self.stats.overrun_gaps.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .overrun_records
                    .fetch_add(count, Ordering::Relaxed);
                tracing::warn!(first_seq, last_seq, count, "the ring tailer was lapped");
                // Sent when the next record arrives, so that the gap's interval is known.
                self.pending_gap = Some(GapInfo {
                    reason: "reader_overrun",
                    first_seq,
                    last_seq,
                    count,
                    t0_ns: self.last_ts_ns,
                    t1_ns: 0,
                });
            }
            Some(FollowEvent::WriterRestart(r)) => {
                if let Some(mut g) = self.pending_gap.take() {
                    // A lap just before the end of the old run: said before the restart.
                    g.t1_ns = now_ns();
                    self.send_pending_gap(g);
                }
                self.writer_restarted(r);
            }
            Some(FollowEvent::WriterState(st)) => {
                tracing::info!(?st, "ring writer state changed");
            }
            None => {}
        }
        self.batch = batch;
        if let Some(ring) = &self.ring {
            self.stats
                .next_seq
                .store(ring.next_seq(), Ordering::Relaxed);
            self.stats.ring_head.store(ring.head(), Ordering::Relaxed);
        }
        self.stats
            .records_read
            .fetch_add(records as u64, Ordering::Relaxed);
        records
    }

    /// Sends a lap's gap to every live stream.
    fn send_pending_gap(&mut self, g: GapInfo) {
        let max_pending = self.cfg.max_pending_control;
        for (id, s) in self.sinks.iter_mut() {
            if s.catchup.is_some() {
                continue;
            }
            let out = s.control(
                "gap",
                Some(g.last_seq),
                messages::gap(Some(&s.stream_id), &g),
                false,
            );
            if s.push(out, &self.stats, max_pending) == Verdict::Remove {
                self.removals.push(*id);
            } else if s.overflowing() {
                self.overflowed.push(*id);
            }
        }
    }

    fn dispatch(&mut self, rec: &Record) {
        let max_pending = self.cfg.max_pending_control;
        if let Some(mut g) = self.pending_gap.take() {
            g.t1_ns = rec.ts_recv;
            self.send_pending_gap(g);
        }
        self.last_ts_ns = rec.ts_recv;
        let mut cache = None;
        let market = rec.kind().is_some_and(RecordKind::is_market_data)
            || rec.kind == RecordKind::Subscription as u8;
        if market || (rec.kind == RecordKind::Gap as u8 && rec.instrument_id != 0) {
            // Only the contract's own streams can want it.
            let Some(ids) = self.by_con.get(&rec.instrument_id) else {
                return;
            };
            for id in ids {
                let Some(s) = self.sinks.get_mut(id) else {
                    continue;
                };
                let was = s.overflowing();
                if s.offer(rec, &mut cache, &mut self.enc, &self.stats, max_pending)
                    == Verdict::Remove
                {
                    self.removals.push(*id);
                } else if !was && s.overflowing() {
                    self.overflowed.push(*id);
                }
            }
        } else if matches!(rec.kind(), Some(RecordKind::Gap | RecordKind::Connection)) {
            for (id, s) in self.sinks.iter_mut() {
                if s.catchup.is_some() {
                    continue;
                }
                let was = s.overflowing();
                if s.offer(rec, &mut cache, &mut self.enc, &self.stats, max_pending)
                    == Verdict::Remove
                {
                    self.removals.push(*id);
                } else if !was && s.overflowing() {
                    self.overflowed.push(*id);
                }
            }
        }
    }

    /// Feeds resuming streams from their private readers; returns true while any is behind.
    fn advance_catchups(&mut self) -> bool {
        let Some(ring) = &self.ring else {
            return false;
        };
        let main_next = ring.next_seq();
        let max_pending = self.cfg.max_pending_control;
        let mut joined = Vec::new();
        for &id in &self.catching {
            let Some(s) = self.sinks.get_mut(&id) else {
                continue;
            };
            let mut budget = self.cfg.catchup_budget;
            let mut verdict = Verdict::Keep;
            while budget > 0 && verdict == Verdict::Keep {
                let Some(reader) = s.catchup.as_mut() else {
                    break;
                };
                if reader.next_seq() >= main_next {
                    break;
                }
                budget -= 1;
                match reader.try_read() {
                    ReadOutcome::Record(rec) => {
                        s.last_ts_ns = rec.ts_recv;
                        verdict = s.offer(&rec, &mut None, &mut self.enc, &self.stats, max_pending);
                    }
                    ReadOutcome::Lost {
                        first_seq,
                        last_seq,
                        count,
                    } => {
                        let g = GapInfo {
                            reason: "resume_unavailable",
                            first_seq,
                            last_seq,
                            count,
                            t0_ns: s.last_ts_ns,
                            t1_ns: 0,
                        };
                        let out = s.control(
                            "gap",
                            Some(last_seq),
                            messages::gap(Some(&s.stream_id), &g),
                            false,
                        );
                        verdict = s.push(out, &self.stats, max_pending);
                    }
                    ReadOutcome::Empty => break,
                }
            }
            if verdict == Verdict::Remove {
                self.removals.push(id);
                continue;
            }
            if s.overflowing() {
                self.overflowed.push(id);
            }
            let next = s.catchup.as_ref().map_or(main_next, RingReader::next_seq);
            if next >= main_next {
                // Caught up: anything the private reader skipped past `main_next` was
                // reported lost, so the live feed must not deliver it again.
                s.catchup = None;
                s.min_seq = next;
                joined.push(id);
            }
        }
        for id in joined {
            self.catching.retain(|x| *x != id);
            if let Some(s) = self.sinks.get(&id) {
                self.by_con.entry(s.con_id).or_default().push(id);
            }
        }
        self.stats
            .catching_up
            .store(self.catching.len() as u64, Ordering::Relaxed);
        !self.catching.is_empty()
    }

    fn flush_overflowed(&mut self) {
        if self.overflowed.is_empty() {
            return;
        }
        self.overflowed.sort_unstable();
        self.overflowed.dedup();
        let mut still = Vec::new();
        for id in std::mem::take(&mut self.overflowed) {
            let Some(s) = self.sinks.get_mut(&id) else {
                continue;
            };
            if s.flush(&self.stats) == Verdict::Remove {
                self.removals.push(id);
            } else if s.overflowing() {
                still.push(id);
            }
        }
        self.overflowed = still;
    }

    fn tick_stats(&mut self) {
        let now = now_ns();
        self.stats.loop_ns.store(now, Ordering::Relaxed);
        let (start, at) = self.rate_window;
        if start.elapsed() >= Duration::from_secs(1) {
            let read = self.stats.records_read.load(Ordering::Relaxed);
            self.stats
                .records_per_sec
                .store(read - at, Ordering::Relaxed);
            self.rate_window = (Instant::now(), read);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(cap: usize, policy: SlowPolicy) -> (Sink, mpsc::Receiver<Out>) {
        let (tx, rx) = mpsc::channel(cap);
        let s = Sink {
            tag: 0,
            stream_id: "s".into(),
            con_id: 1,
            kinds: KindSet(u64::MAX),
            policy,
            tx,
            flag: Arc::default(),
            notify: Arc::default(),
            min_seq: 0,
            epoch: 1,
            min_ts_ns: i64::MIN,
            catchup: None,
            last_ts_ns: 0,
            conflated: Vec::new(),
            pending: Vec::new(),
            dropped: 0,
            dropped_first: 0,
            dropped_last: 0,
        };
        (s, rx)
    }

    fn tick(seq: u64, kind: u8) -> Out {
        Out::Tick {
            tag: 0,
            seq,
            epoch: 1,
            kind,
            json: Bytes::from(format!("{{\"seq\":{seq}}}")),
        }
    }

    fn ctl(seq: u64) -> Out {
        Out::Control {
            tag: 0,
            event: "info",
            id: Some(Pos { epoch: 1, seq }),
            json: Bytes::from_static(b"{}"),
            end: false,
        }
    }

    fn drain(rx: &mut mpsc::Receiver<Out>) -> Vec<(&'static str, u64)> {
        let mut v = Vec::new();
        while let Ok(o) = rx.try_recv() {
            v.push(match o {
                Out::Tick { seq, .. } => ("tick", seq),
                Out::History { seq, .. } => ("history", seq),
                Out::Control {
                    event, id, json, ..
                } => {
                    if event == "gap" {
                        let g: serde_json::Value = serde_json::from_slice(&json).unwrap();
                        ("gap", g["count"].as_u64().unwrap())
                    } else {
                        (event, id.map_or(0, |p| p.seq))
                    }
                }
            });
        }
        v
    }

    #[test]
    fn overflow_keeps_the_latest_per_kind_and_control_messages_in_order() {
        let stats = HubStats::default();
        let (mut s, mut rx) = sink(2, SlowPolicy::Conflate);
        for (seq, kind) in [(1, 3), (2, 1), (3, 3), (4, 1), (5, 3), (7, 3)] {
            assert!(s.push(tick(seq, kind), &stats, 8) == Verdict::Keep);
        }
        assert!(s.push(ctl(6), &stats, 8) == Verdict::Keep);
        assert!(s.push(tick(8, 1), &stats, 8) == Verdict::Keep);
        // Queue: 1, 2. Kept: kind 3 → 7 (3 and 5 dropped), kind 1 → 8 (4 dropped), info 6.
        assert_eq!(stats.conflated_drops.load(Ordering::Relaxed), 3);
        assert_eq!(drain(&mut rx), [("tick", 1), ("tick", 2)]);
        assert!(s.flush(&stats) == Verdict::Keep);
        assert_eq!(drain(&mut rx), [("gap", 3), ("info", 6)]);
        assert!(s.overflowing());
        assert!(s.flush(&stats) == Verdict::Keep);
        assert_eq!(drain(&mut rx), [("tick", 7), ("tick", 8)]);
        assert!(s.flush(&stats) == Verdict::Keep);
        assert!(!s.overflowing());
        // Back to the queue directly.
        assert!(s.push(tick(9, 3), &stats, 8) == Verdict::Keep);
        assert_eq!(drain(&mut rx), [("tick", 9)]);
    }

    #[test]
    fn disconnect_policy_and_control_pile_up_close_the_stream() {
        let stats = HubStats::default();
        let (mut s, _rx) = sink(1, SlowPolicy::Disconnect);
        assert!(s.push(tick(1, 3), &stats, 8) == Verdict::Keep);
        assert!(s.push(tick(2, 3), &stats, 8) == Verdict::Remove);
        assert_eq!(s.flag.get(), Some(CloseReason::SlowConsumer));
        assert!(s.push(tick(3, 3), &stats, 8) == Verdict::Remove);
        assert_eq!(stats.slow_disconnects.load(Ordering::Relaxed), 1);

        let (mut s, _rx) = sink(1, SlowPolicy::Conflate);
        assert!(s.push(tick(1, 3), &stats, 2) == Verdict::Keep);
        assert!(s.push(ctl(2), &stats, 2) == Verdict::Keep);
        assert!(s.push(ctl(3), &stats, 2) == Verdict::Keep);
        assert!(
            s.push(ctl(4), &stats, 2) == Verdict::Remove,
            "bounded control backlog"
        );
        assert_eq!(s.flag.get(), Some(CloseReason::SlowConsumer));
    }

    #[test]
    fn pos_tokens_are_16_hex_digits_a_dash_and_the_sequence_and_parse_back() {
        use super::super::replay::Resume;
        let p = Pos {
            epoch: 0x0022_872d_15be_0476,
            seq: 1842,
        };
        assert_eq!(p.token(), "0022872d15be0476-1842");
        let max = Pos {
            epoch: u64::MAX,
            seq: u64::MAX,
        };
        assert_eq!(max.token(), format!("ffffffffffffffff-{}", u64::MAX));
        for p in [p, max, Pos { epoch: 1, seq: 0 }] {
            assert_eq!(
                Resume::parse(&p.token()),
                Some(Resume {
                    epoch: Some(p.epoch),
                    seq: p.seq
                })
            );
        }
        assert_eq!(
            Resume::parse(" 17 "),
            Some(Resume {
                epoch: None,
                seq: 17
            })
        );
        for bad in [
            "",
            "-",
            "x-1",
            "1-",
            "-1",
            "12345678901234567-1",
            "1-2-3",
            "1-x",
            "+1",
        ] {
            assert_eq!(Resume::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_closed_receiver_removes_the_stream() {
        let stats = HubStats::default();
        let (mut s, rx) = sink(4, SlowPolicy::Conflate);
        drop(rx);
        assert!(s.push(tick(1, 3), &stats, 8) == Verdict::Remove);
    }
}
