//! History then live: a stream that starts before what the ring holds (`since=`, a
//! `Last-Event-ID` the ring has overwritten, or one of an earlier engine run) is first fed
//! from storage, then joins the ring's fan-out exactly after the last sequence storage gave.
//!
//! Resume points name their engine run ([`Resume`], the token `<epoch hex>-<seq>` of SSE
//! `id:`). One of an earlier run is replayed from storage, which keeps every run: the rest
//! of that run, then every later run, each run change said by a `gap{writer_restart}` (the
//! same message a client that stayed connected got), then the current run from its first
//! sequence. A run storage does not have is said by `info{resume_unavailable}`.
//!
//! The join, by sequence within the ring's current epoch:
//! 1. `since=` only: the stored ticks of older epochs from that time on, oldest epoch first
//!    (their sequences are of their own epochs; see `docs/PROTOCOL.md`).
//! 2. Stored ticks of the current epoch from the resume point (or from the time) up to `S`,
//!    the last sequence the recorder has accounted for (its checkpoint), a page at a time.
//!    While the ring still does not hold `S + 1` comfortably and storage has moved on, the
//!    next page is read (storage catches up with the ring).
//! 3. `info{live, after_seq: S}`, then the stream is added to the fan-out with
//!    `Start::After { epoch, seq: S }`: the tailer's private reader delivers `S + 1`, `S + 2`, ... from the
//!    ring, or a `gap{resume_unavailable}` with the exact range when the ring has already
//!    overwritten them. No tick is lost silently or delivered twice.
//!
//! Pages go through the stream's bounded queue with back-pressure (`send().await`): memory
//! per stream is one page plus the queue, whatever the length of the history.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::json;
use tokio::sync::{Notify, mpsc};

use super::history::{HistorySource, REPLAY_PAGE, SeqItem, SeqPage, SeqQuery};
use super::hub::{CloseReason, Out, Pos, SinkFlag, SinkGuard, SinkSpec, SlowPolicy, Start};
use super::messages;
use super::params::{KindSet, TickType};
use super::state::AppState;
use crate::storage::query::line_st_us;

/// A resume point as a client gives it: `<epoch>-<seq>` (the SSE `id:` the server sends: the
/// epoch as hex, the sequence in decimal), or a plain `<seq>` (the form before ids named the
/// run), taken as a sequence of the ring's current run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The engine run (ring epoch) of `seq`; `None` for the plain form.
    pub epoch: Option<u64>,
    /// The last sequence the client had.
    pub seq: u64,
}

impl Resume {
    /// Parses a token; `None` when it is neither form.
    pub fn parse(raw: &str) -> Option<Resume> {
        let raw = raw.trim();
        let all = |s: &str, f: fn(&u8) -> bool| !s.is_empty() && s.as_bytes().iter().all(f);
        match raw.split_once('-') {
            None if all(raw, u8::is_ascii_digit) => Some(Resume {
                epoch: None,
                seq: raw.parse().ok()?,
            }),
            Some((e, n))
                if e.len() <= 16 && all(e, u8::is_ascii_hexdigit) && all(n, u8::is_ascii_digit) =>
            {
                Some(Resume {
                    epoch: Some(u64::from_str_radix(e, 16).ok()?),
                    seq: n.parse().ok()?,
                })
            }
            _ => None,
        }
    }

    /// As JSON: the token string when it names a run, else the plain number.
    pub fn to_json(self) -> serde_json::Value {
        match self.epoch {
            Some(epoch) => json!(
                Pos {
                    epoch,
                    seq: self.seq
                }
                .token()
            ),
            None => json!(self.seq),
        }
    }
}

/// Where a stream starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// With the next record published.
    Live,
    /// Right after a resume point (`Last-Event-ID`, `after_seq`).
    After(Resume),
    /// From this receive time, ns since the Unix epoch (`since=`).
    Since(i64),
}

/// The streams replaying history (not yet in the tailer's fan-out), so that an operator's
/// stop (`DELETE /v3/streams/{conId}`) reaches them too.
#[derive(Debug, Default)]
pub struct Replays {
    running: Mutex<HashMap<u64, Running>>,
    next: AtomicU64,
}

/// A replaying stream: its contract, close flag and consumer's waker.
#[derive(Debug)]
struct Running {
    con_id: u32,
    flag: Arc<SinkFlag>,
    notify: Arc<Notify>,
}

impl Replays {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Running>> {
        // Single inserts and removes: consistent even after a panic elsewhere.
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn register(self: &Arc<Self>, join: &Join) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Running {
                con_id: join.con_id,
                flag: Arc::clone(&join.flag),
                notify: Arc::clone(&join.notify),
            },
        );
        Registration {
            replays: Arc::clone(self),
            id,
        }
    }

    /// Closes (reason `stopped`) every replaying stream of `con_id` and, under the same
    /// lock, runs `then` (which sends the tailer its stop: a replay joining the tailer is
    /// either closed here or added to the tailer before that stop). Returns how many were
    /// closed here, and what `then` returned.
    pub fn stop<R>(&self, con_id: u32, then: impl FnOnce() -> R) -> (usize, R) {
        let mut m = self.lock();
        let ids: Vec<u64> = m
            .iter()
            .filter(|(_, r)| r.con_id == con_id)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some(r) = m.remove(id) {
                r.flag.set(CloseReason::Stopped);
                r.notify.notify_one();
            }
        }
        (ids.len(), then())
    }

    /// Streams replaying now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A replay's entry in [`Replays`]; removed on drop (the join, the end, or an abort).
#[derive(Debug)]
struct Registration {
    replays: Arc<Replays>,
    id: u64,
}

impl Registration {
    /// Leaves the registry and, under its lock, runs `join` unless a stop closed the stream.
    fn finish<R>(self, flag: &SinkFlag, join: impl FnOnce() -> R) -> Option<R> {
        let mut m = self.replays.lock();
        m.remove(&self.id);
        let out = flag.get().is_none().then(join);
        drop(m);
        out
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.replays.lock().remove(&self.id);
    }
}

/// The stream's place in the fan-out, filled once it joins (dropping it leaves).
pub type SinkSlot = Arc<Mutex<Option<SinkGuard>>>;

/// Aborts the replay task when the stream goes.
#[derive(Debug)]
pub struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a stream needs to join the fan-out.
#[derive(Debug, Clone)]
pub struct Join {
    /// The stream within its consumer.
    pub tag: u32,
    /// The public id.
    pub stream_id: Arc<str>,
    /// The contract.
    pub con_id: u32,
    /// Its tick types.
    pub types: Vec<TickType>,
    /// Their record kinds.
    pub kinds: KindSet,
    /// Slow-client policy.
    pub policy: SlowPolicy,
    /// The consumer's queue.
    pub tx: mpsc::Sender<Out>,
    /// The close flag.
    pub flag: Arc<SinkFlag>,
    /// The consumer's waker.
    pub notify: Arc<Notify>,
}

impl Join {
    fn spec(&self, start: Start, min_ts_ns: i64) -> SinkSpec {
        SinkSpec {
            tag: self.tag,
            stream_id: Arc::clone(&self.stream_id),
            con_id: self.con_id,
            kinds: self.kinds,
            policy: self.policy,
            start,
            min_ts_ns,
            tx: self.tx.clone(),
            flag: Arc::clone(&self.flag),
            notify: Arc::clone(&self.notify),
        }
    }

    fn control(&self, event: &'static str, json: Bytes) -> Out {
        Out::Control {
            tag: self.tag,
            event,
            id: None,
            json,
            end: false,
        }
    }
}

/// The oldest sequence the ring still holds comfortably (a margin of an eighth of it, since
/// it moves on while storage is read), and its head; `None` before the ring is open.
fn ring_window(st: &AppState) -> Option<(u64, u64)> {
    let stats = st.hub.stats();
    let head = stats.ring_head.load(Ordering::Relaxed);
    let capacity = stats.capacity.load(Ordering::Relaxed);
    if capacity == 0 {
        return None;
    }
    let oldest = (head + 1).saturating_sub(capacity).max(1);
    Some((oldest.saturating_add(capacity / 8), head))
}

/// Whether a resume after `after` needs history (the ring no longer holds `after + 1`).
pub fn needs_history(st: &AppState, after: u64) -> bool {
    match ring_window(st) {
        Some((comfortable, head)) => after < head && after + 1 < comfortable,
        None => false,
    }
}

/// Adds the stream to the fan-out now, or starts its replay from history. Returns the slot
/// holding its fan-out guard and, when replaying, the task.
pub fn attach(st: &AppState, join: Join, from: StartFrom) -> (SinkSlot, Option<TaskGuard>) {
    let slot: SinkSlot = Arc::default();
    let stats = st.hub.stats();
    let ring_epoch = stats.epoch.load(Ordering::Relaxed);
    let ring_open = stats.capacity.load(Ordering::Relaxed) > 0;
    let direct = match from {
        StartFrom::Live => Some(Start::Live),
        // Another run's point: from storage when there is one (and the ring is open to say
        // which run is current); otherwise the tailer says it is unavailable.
        StartFrom::After(r) if r.epoch.is_some_and(|e| e != ring_epoch) => {
            (st.history.is_none() || !ring_open).then_some(Start::After {
                epoch: r.epoch,
                seq: r.seq,
            })
        }
        StartFrom::After(r) if st.history.is_none() || !needs_history(st, r.seq) => {
            Some(Start::After {
                epoch: r.epoch,
                seq: r.seq,
            })
        }
        _ => None,
    };
    if let Some(start) = direct {
        let guard = st.hub.add(join.spec(start, i64::MIN));
        *lock(&slot) = Some(guard);
        return (slot, None);
    }
    let task = tokio::spawn(replay(st.clone(), join, from, Arc::clone(&slot)));
    (slot, Some(TaskGuard(task)))
}

fn lock(slot: &SinkSlot) -> std::sync::MutexGuard<'_, Option<SinkGuard>> {
    // A poisoned slot still holds a valid guard (it is only ever replaced).
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One page from the source on a blocking thread; `Err` carries the reason as text.
async fn page(source: &Arc<dyn HistorySource>, q: SeqQuery) -> Result<Option<SeqPage>, String> {
    let source = Arc::clone(source);
    match tokio::task::spawn_blocking(move || source.by_seq(&q)).await {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("history task failed: {e}")),
    }
}

/// Sends a page's items; `false` when the client is gone or the server is stopping (the
/// replay then ends; its stream sees its queue close and completes with `server_shutdown`).
async fn send_items(
    st: &AppState,
    join: &Join,
    items: Vec<SeqItem>,
    epoch: u64,
    sent: &mut u64,
    end: &mut RunEnd,
) -> bool {
    if !st.hub.is_running() || join.flag.get().is_some() {
        return false;
    }
    for item in items {
        end.last_seq = end.last_seq.max(item.seq());
        let out = match item {
            SeqItem::Tick { seq, json } => Out::History {
                tag: join.tag,
                seq,
                epoch,
                json,
            },
            SeqItem::Gap { info, .. } if info.reason == "writer_restart" => {
                // The recorder's record of a run that ended without a clean stop: said as
                // the run change (`boundary`), with the run that follows.
                end.restart = Some(info);
                continue;
            }
            SeqItem::Gap { info, fill, .. } => {
                let msg = messages::gap(Some(&join.stream_id), &info);
                join.control("gap", messages::with_fill(msg, fill.as_deref()))
            }
        };
        if matches!(out, Out::History { .. }) {
            *sent += 1;
        }
        if join.tx.send(out).await.is_err() {
            return false;
        }
    }
    true
}

/// The receive time (ns, to the µs) of a page's last tick. Within an epoch receive times do
/// not go back, so the next page may start its search there instead of at the beginning
/// of storage (a resume has no start time of its own).
fn last_tick_ns(items: &[SeqItem]) -> Option<i64> {
    items.iter().rev().find_map(|i| match i {
        SeqItem::Tick { json, .. } => line_st_us(json).map(|us| us.saturating_mul(1000)),
        SeqItem::Gap { .. } => None,
    })
}

/// How a replayed run ended, as far as storage says.
#[derive(Clone, Copy, Debug, Default)]
struct RunEnd {
    /// The last sequence replayed (or skipped: the resume point).
    last_seq: u64,
    /// The recorder's `writer_restart` gap: the run ended without a clean stop.
    restart: Option<super::messages::GapInfo>,
}

/// The run change from `old` to `new` in a replay: the `gap{writer_restart}` a client that
/// stayed connected got (its id is the new run's start).
fn boundary(join: &Join, old: u64, new: u64, end: &RunEnd) -> Out {
    let r = ib_stream_ipc::WriterRestart {
        old_epoch: old,
        new_epoch: new,
        old_last_seq: end
            .restart
            .map_or(end.last_seq, |g| g.first_seq.saturating_sub(1)),
        clean: end.restart.is_none(),
    };
    let (t0, t1) = end.restart.map_or((0, 0), |g| (g.t0_ns, g.t1_ns));
    Out::Control {
        tag: join.tag,
        event: "gap",
        id: Some(Pos { epoch: new, seq: 0 }),
        json: messages::writer_restart(Some(&join.stream_id), &r, t0, t1),
        end: false,
    }
}

/// Replays an earlier run `epoch` from `first_seq` to its end (pages through the stream's
/// queue).
/// `None` when the stream is gone.
async fn replay_run(
    st: &AppState,
    join: &Join,
    source: &Arc<dyn HistorySource>,
    (epoch, first_seq): (u64, u64),
    start_ns: Option<i64>,
    sent: &mut u64,
    trouble: &mut Option<String>,
) -> Option<RunEnd> {
    let info = messages::info(
        Some(&join.stream_id),
        "history_epoch",
        json!({"epoch": format!("{epoch:016x}"), "current": false}),
    );
    if join.tx.send(join.control("info", info)).await.is_err() {
        return None;
    }
    let mut end = RunEnd {
        last_seq: first_seq.saturating_sub(1),
        restart: None,
    };
    let mut next = first_seq;
    let mut from_ns = start_ns;
    loop {
        let q = SeqQuery {
            epoch,
            con_id: join.con_id,
            tick_types: join.types.clone(),
            first_seq: next,
            last_seq: u64::MAX,
            start_ns: from_ns,
            live_epoch: false,
            limit: REPLAY_PAGE,
        };
        match page(source, q).await {
            Ok(Some(p)) => {
                let full = p.items.len() >= REPLAY_PAGE;
                from_ns = later(from_ns, last_tick_ns(&p.items));
                if !send_items(st, join, p.items, epoch, sent, &mut end).await {
                    return None;
                }
                if !full || p.through < next || p.through == u64::MAX {
                    break;
                }
                next = p.through + 1;
            }
            Ok(None) => break,
            Err(e) => {
                *trouble = Some(e);
                break;
            }
        }
    }
    Some(end)
}

/// The stored runs with ticks of the stream after `epoch`, oldest first, without `current`;
/// `None` when storage has no tick of the stream in `epoch`.
async fn runs_after(
    source: &Arc<dyn HistorySource>,
    join: &Join,
    epoch: u64,
    current: u64,
) -> Result<Option<Vec<u64>>, String> {
    let s = Arc::clone(source);
    let types = join.types.clone();
    let con = join.con_id;
    let all = tokio::task::spawn_blocking(move || s.epochs_since(con, &types, i64::MIN))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(all.iter().position(|e| *e == epoch).map(|i| {
        all[i + 1..]
            .iter()
            .copied()
            .filter(|e| *e != current)
            .collect()
    }))
}

fn later(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

async fn replay(st: AppState, join: Join, from: StartFrom, slot: SinkSlot) {
    let Some(source) = st.history.clone() else {
        return;
    };
    let registration = st.replays.register(&join);
    st.metrics.history_replays.fetch_add(1, Ordering::Relaxed);
    let epoch = st.hub.stats().epoch.load(Ordering::Relaxed);
    let start_ns = match from {
        StartFrom::Since(ns) => Some(ns),
        _ => None,
    };
    let resume = match from {
        StartFrom::After(r) => Some(r),
        _ => None,
    };
    let hello = messages::info(
        Some(&join.stream_id),
        "history_start",
        json!({
            "since": start_ns.map(|ns| ns.div_euclid(1000)),
            "after_seq": resume.map(Resume::to_json),
            "epoch": format!("{epoch:016x}"),
        }),
    );
    if join.tx.send(join.control("info", hello)).await.is_err() {
        return;
    }
    let mut sent = 0u64;
    let mut trouble: Option<String> = None;
    // The run storage replayed last, and how it ended (a run change is said before the next).
    let mut prev: Option<(u64, RunEnd)> = None;
    // 1. Older epochs, oldest first (`since=`), or the rest of the resume point's run and the
    //    runs after it.
    let mut older: Vec<(u64, u64)> = Vec::new();
    if let Some(start) = start_ns {
        let s = Arc::clone(&source);
        let types = join.types.clone();
        let con = join.con_id;
        let epochs = tokio::task::spawn_blocking(move || s.epochs_since(con, &types, start)).await;
        match epochs {
            Ok(Ok(v)) => older.extend(v.into_iter().filter(|e| *e != epoch).map(|e| (e, 1))),
            Ok(Err(e)) => trouble = Some(e.to_string()),
            Err(e) => trouble = Some(e.to_string()),
        }
    } else if let Some(Resume {
        epoch: Some(e),
        seq,
    }) = resume.filter(|r| r.epoch.is_some_and(|e| e != epoch))
    {
        match runs_after(&source, &join, e, epoch).await {
            Ok(Some(later_runs)) => {
                older.push((e, seq.saturating_add(1)));
                older.extend(later_runs.into_iter().map(|r| (r, 1)));
            }
            Ok(None) => {
                // Not in storage (never recorded, or expired): said, then the current run
                // from its start.
                let msg = messages::info(
                    Some(&join.stream_id),
                    "resume_unavailable",
                    json!({
                        "requested_after": resume.map(Resume::to_json),
                        "epoch": format!("{epoch:016x}"),
                        "why": "the resume point's engine run is not in storage; the current run follows from its start",
                    }),
                );
                if join.tx.send(join.control("info", msg)).await.is_err() {
                    return;
                }
            }
            Err(e) => trouble = Some(e),
        }
    }
    for (old, first) in older {
        if let Some((p, end)) = &prev
            && join.tx.send(boundary(&join, *p, old, end)).await.is_err()
        {
            return;
        }
        let from = if first == 1 { start_ns } else { None };
        let Some(end) = replay_run(
            &st,
            &join,
            &source,
            (old, first),
            from,
            &mut sent,
            &mut trouble,
        )
        .await
        else {
            return;
        };
        prev = Some((old, end));
    }
    if let Some((p, end)) = &prev
        && join.tx.send(boundary(&join, *p, epoch, end)).await.is_err()
    {
        return;
    }
    // 2. The current epoch, until the ring holds what comes next.
    let mut next = match resume {
        Some(r) if r.epoch.is_none_or(|e| e == epoch) => r.seq.saturating_add(1),
        _ => 1,
    };
    let mut end = RunEnd::default();
    let mut from_ns = start_ns;
    loop {
        match ring_window(&st) {
            Some((comfortable, head)) if next < comfortable && next <= head => {}
            _ => break,
        }
        let q = SeqQuery {
            epoch,
            con_id: join.con_id,
            tick_types: join.types.clone(),
            first_seq: next,
            last_seq: u64::MAX,
            start_ns: from_ns,
            live_epoch: true,
            limit: REPLAY_PAGE,
        };
        match page(&source, q).await {
            Ok(Some(p)) => {
                let through = p.through;
                from_ns = later(from_ns, last_tick_ns(&p.items));
                if !send_items(&st, &join, p.items, epoch, &mut sent, &mut end).await {
                    return;
                }
                if through < next {
                    // Storage has nothing more yet: the ring takes over (or reports the gap).
                    break;
                }
                next = through.saturating_add(1);
            }
            Ok(None) => break,
            Err(e) => {
                trouble = Some(e);
                break;
            }
        }
    }
    st.metrics.history_ticks.fetch_add(sent, Ordering::Relaxed);
    if let Some(e) = &trouble {
        tracing::warn!(error = %e, stream = %join.stream_id, "history could not be read; the ring reports what is missing");
    }
    // 3. Join the ring right after the last sequence history accounted for.
    let after = next - 1;
    let now_epoch = st.hub.stats().epoch.load(Ordering::Relaxed);
    let start = if now_epoch == epoch {
        Start::After {
            epoch: Some(epoch),
            seq: after,
        }
    } else {
        // The engine restarted meanwhile: the old epoch's sequences mean nothing in the new
        // ring; the tailer already reported the restart to live streams, say it here.
        Start::Live
    };
    let live = messages::info(
        Some(&join.stream_id),
        "live",
        json!({
            "after_seq": after,
            "epoch": format!("{now_epoch:016x}"),
            "history_ticks": sent,
            "history_error": trouble,
            "epoch_changed": now_epoch != epoch,
        }),
    );
    if join.tx.send(join.control("info", live)).await.is_err() {
        return;
    }
    // Joined under the registry's lock: a stop either closed this stream already (it does
    // not join) or finds it in the tailer.
    let spec = join.spec(start, start_ns.unwrap_or(i64::MIN));
    if let Some(guard) = registration.finish(&join.flag, || st.hub.add(spec)) {
        *lock(&slot) = Some(guard);
    }
}
