//! Everything the engine writes to shared memory: the tick ring, the string table beside it
//! and the status region. Ticks are batched per socket read and published with one `head`
//! store; system records go through the same batch, so every reader sees one ordered story.

use std::path::Path;

use crate::ipc::{
    ConnState, GapReason, IpcError, Record, RecordKind, ShmOptions, StatusSnapshot, StatusWriter,
    StringTableConfig, StringTableWriter, SubState,
};
use crate::ipc::{RingWriter, StartAt};
use crate::tws::Interner;

/// Records buffered before a forced publish (one socket read rarely holds more).
pub const BATCH: usize = 256;

/// The string table as the codec's [`Interner`]: a full table costs the string (id 0, the
/// empty string, and a count), never the tick.
#[derive(Debug)]
pub struct Strings {
    table: StringTableWriter,
    /// Strings interned since start (new ids).
    pub interned: u64,
    /// Strings that did not fit (the record carries id 0 instead).
    pub dropped: u64,
}

impl Interner for Strings {
    #[inline]
    fn intern(&mut self, s: &[u8]) -> u32 {
        let before = self.table.len();
        match self.table.intern(s) {
            Ok(id) => {
                if self.table.len() != before {
                    self.interned += 1;
                }
                id
            }
            Err(_) => {
                self.dropped += 1;
                0
            }
        }
    }
}

impl Strings {
    /// The bytes of `id`.
    pub fn get(&self, id: u32) -> Option<&[u8]> {
        self.table.get(id)
    }
}

/// The ring, the strings and the status region of one engine run (one epoch).
#[derive(Debug)]
pub struct Publisher {
    ring: RingWriter,
    /// The string table (the codec interns exchanges and conditions into it).
    pub strings: Strings,
    status: StatusWriter,
    /// The status the engine keeps up to date in its own memory; published from time to time.
    pub snap: Box<StatusSnapshot>,
    batch: Box<[Record; BATCH]>,
    n: usize,
    /// Unix ns of the input being handled (the session's clock, [`Publisher::set_clock`]):
    /// system records and status stamps carry it, so a simulation on a virtual clock writes
    /// the same records on every run.
    now: i64,
}

/// The string table size the engine uses: ample for exchanges and trade conditions, small
/// enough to keep the engine's resident memory low.
pub fn strings_config() -> StringTableConfig {
    StringTableConfig {
        max_entries: 64 * 1024,
        max_bytes: 4 << 20,
        max_len: 4096,
    }
}

impl Publisher {
    /// Creates `ticks.ring`, `strings` and `status` in `dir` (a new epoch).
    pub fn create(dir: &Path, capacity: u64, opts: &ShmOptions) -> Result<Publisher, IpcError> {
        std::fs::create_dir_all(dir).map_err(|e| IpcError::Io {
            op: "create the shared-memory directory",
            path: dir.to_path_buf(),
            source: e,
        })?;
        let ring = RingWriter::create(&dir.join(ib_stream_ipc::RING_FILE_NAME), capacity, opts)?;
        let epoch = ring.info().epoch;
        let table = StringTableWriter::create(
            &dir.join(ib_stream_ipc::STRINGS_FILE_NAME),
            epoch,
            &strings_config(),
            opts,
        )?;
        let status = StatusWriter::create(&dir.join(ib_stream_ipc::STATUS_FILE_NAME), epoch, opts)?;
        // The reader registry gets the engine's permissions when the engine is first; readers
        // never need it to read, so a failure here is only reported.
        let registry = dir.join(ib_stream_ipc::READERS_FILE_NAME);
        if let Err(e) = ib_stream_ipc::ReaderRegistry::open_or_create(&registry, opts) {
            tracing::warn!("reader registry: {e}; readers will run unregistered");
        }
        Ok(Publisher::from_parts(ring, table, status))
    }

    /// An in-process publisher (tests and benchmarks).
    pub fn heap(capacity: u64) -> Result<Publisher, IpcError> {
        let ring = RingWriter::heap(capacity)?;
        let epoch = ring.info().epoch;
        let table = StringTableWriter::heap(epoch, &strings_config())?;
        let status = StatusWriter::heap(epoch);
        Ok(Publisher::from_parts(ring, table, status))
    }

    fn from_parts(ring: RingWriter, table: StringTableWriter, status: StatusWriter) -> Publisher {
        let mut snap = StatusSnapshot::new_boxed();
        snap.engine.started_ns = crate::ipc::shm::unix_time_ns() as i64;
        Publisher {
            ring,
            strings: Strings {
                table,
                interned: 0,
                dropped: 0,
            },
            status,
            snap,
            batch: Box::new([Record::ZERO; BATCH]),
            n: 0,
            now: unix_ns(),
        }
    }

    /// The time of the input being handled (Unix ns): the session sets it with every input.
    #[inline]
    pub fn set_clock(&mut self, unix_ns: i64) {
        self.now = unix_ns;
    }

    /// The writer epoch.
    pub fn epoch(&self) -> u64 {
        self.ring.info().epoch
    }

    /// A reader of this ring in this process (tests and benchmarks).
    pub fn reader(&self, start: StartAt) -> crate::ipc::RingReader {
        self.ring.reader(start)
    }

    /// The last sequence published.
    pub fn last_seq(&self) -> u64 {
        self.ring.last_seq()
    }

    /// Queues a record for the next publish (publishing first if the batch is full).
    #[inline]
    pub fn push(&mut self, rec: &Record) {
        if self.n == BATCH {
            self.flush();
        }
        self.batch[self.n] = *rec;
        self.n += 1;
    }

    /// Publishes the queued records with one `head` store. Returns how many went out.
    #[inline]
    pub fn flush(&mut self) -> usize {
        let n = self.n;
        if n > 0 {
            self.ring.publish_batch(&self.batch[..n]);
            self.snap.counters.records_published += n as u64;
            self.n = 0;
        }
        n
    }

    /// A system record, published at once (after any ticks queued before it).
    pub fn system(&mut self, rec: Record) {
        self.push(&rec);
        self.flush();
    }

    /// A connection state change: record and status.
    pub fn connection(&mut self, state: ConnState, server_version: u32, client_id: i32, code: i32) {
        let now = self.now;
        self.snap.set_conn_state(state);
        self.system(Record {
            ts_recv: now,
            tick_type: state as u8,
            body: [
                i64::from(server_version),
                i64::from(client_id),
                i64::from(code),
                0,
            ],
            ..Record::new(RecordKind::Connection)
        });
    }

    /// A time interval in which data may be missing.
    pub fn gap(&mut self, reason: GapReason, from_ns: i64, to_ns: i64) {
        self.snap.counters.gaps += 1;
        self.system(Record {
            ts_recv: self.now,
            tick_type: reason as u8,
            body: [0, 0, from_ns, to_ns],
            ..Record::new(RecordKind::Gap)
        });
    }

    /// A time interval in which one instrument's data may be missing (`instrument_id` =
    /// its conId; readers of other instruments are not concerned).
    pub fn gap_for(&mut self, con_id: u32, reason: GapReason, from_ns: i64, to_ns: i64) {
        self.snap.counters.gaps += 1;
        self.system(Record {
            ts_recv: self.now,
            instrument_id: con_id,
            tick_type: reason as u8,
            body: [0, 0, from_ns, to_ns],
            ..Record::new(RecordKind::Gap)
        });
    }

    /// A subscription state change: record and status entry. `next_attempt_ns` (Unix ns)
    /// is set while IB's refusal (`code`) is retried: the record carries it in `ts_event`
    /// (a subscription record has no event time of IB's), state `Queued`.
    #[allow(clippy::too_many_arguments)]
    pub fn subscription(
        &mut self,
        con_id: u32,
        kind: RecordKind,
        state: SubState,
        code: i32,
        req_id: i32,
        market_data_type: i32,
        next_attempt_ns: Option<i64>,
    ) {
        let now = self.now;
        self.system(Record {
            ts_recv: now,
            ts_event: next_attempt_ns.unwrap_or(crate::ipc::UNDEF_I64),
            instrument_id: con_id,
            tick_type: state as u8,
            flags: if matches!(market_data_type, 3 | 4) || state == SubState::Delayed {
                crate::ipc::flags::DELAYED
            } else {
                0
            },
            body: [
                kind as i64,
                i64::from(code),
                i64::from(req_id),
                i64::from(market_data_type),
            ],
            ..Record::new(RecordKind::Subscription)
        });
        let snap = &mut self.snap;
        if state == SubState::Cancelled {
            if let Some(i) = snap
                .subscriptions()
                .iter()
                .position(|s| s.con_id == con_id && s.kind == kind as u8)
            {
                snap.swap_remove_subscription(i);
            }
            return;
        }
        if snap.find_subscription(con_id, kind).is_none() {
            let fresh = crate::ipc::SubStatus::new(con_id, kind, state, req_id);
            if let Err(fresh) = snap.push_subscription(fresh) {
                // Full: the oldest rejected entry gives way (to a live subscription, or to a
                // newer rejection); with 256 live ones, the newcomer is not listed.
                let Some(i) = oldest_rejected(snap) else {
                    return;
                };
                remove_in_order(snap, i);
                if snap.push_subscription(fresh).is_err() {
                    return;
                }
            }
        }
        let Some(entry) = snap.find_subscription_mut(con_id, kind) else {
            return;
        };
        if entry.state != state as u8 {
            entry.state_since_ns = now;
        }
        entry.state = state as u8;
        entry.req_id = req_id;
        entry.ib_error_code = code;
        entry.market_data_type = market_data_type.clamp(0, 4) as u8;
        if code != 0 {
            snap.engine.last_error_code = code;
            snap.engine.last_error_ns = now;
        }
    }

    /// A heartbeat record (records published so far) and the ring's heartbeat word.
    pub fn heartbeat_record(&mut self) {
        self.snap.counters.heartbeats += 1;
        let published = self.snap.counters.records_published;
        self.system(Record {
            ts_recv: self.now,
            body: [published as i64, 0, 0, 0],
            ..Record::new(RecordKind::Heartbeat)
        });
    }

    /// Publishes the status snapshot and beats the ring's heartbeat.
    pub fn publish_status(&mut self) {
        let now = self.now;
        tidy_subscriptions(&mut self.snap, now);
        self.snap.counters.strings_interned = self.strings.interned;
        self.snap.counters.strings_dropped = self.strings.dropped;
        self.status.publish(&self.snap, now);
        self.ring.heartbeat(now as u64);
    }
}

/// How long a rejected subscription stays listed in the status region (ns), so that
/// `status` and `top` can show why it failed. The manager forgets it at once (it has no
/// holders); here it also gives its place to any live subscription that needs one.
pub const REJECTED_LISTED_NS: i64 = 60_000_000_000;

fn is_rejected(s: &crate::ipc::SubStatus) -> bool {
    s.state == SubState::Rejected as u8
}

/// Removes entry `i`, keeping the others in order.
fn remove_in_order(snap: &mut StatusSnapshot, i: usize) {
    let subs = snap.subscriptions_mut();
    let last = subs.len() - 1;
    subs[i..].rotate_left(1);
    snap.swap_remove_subscription(last);
}

/// The index of the rejected entry rejected longest ago.
fn oldest_rejected(snap: &StatusSnapshot) -> Option<usize> {
    snap.subscriptions()
        .iter()
        .enumerate()
        .filter(|(_, s)| is_rejected(s))
        .min_by_key(|(_, s)| s.state_since_ns)
        .map(|(i, _)| i)
}

/// Drops rejected entries listed longer than [`REJECTED_LISTED_NS`] and lists live
/// subscriptions before rejected ones (keeping each group's order). In place, no
/// allocation: it runs with every status publish.
pub fn tidy_subscriptions(snap: &mut StatusSnapshot, now_ns: i64) {
    while let Some(i) = snap
        .subscriptions()
        .iter()
        .position(|s| is_rejected(s) && now_ns - s.state_since_ns > REJECTED_LISTED_NS)
    {
        remove_in_order(snap, i);
    }
    let subs = snap.subscriptions_mut();
    let mut live_end = 0;
    for i in 0..subs.len() {
        if !is_rejected(&subs[i]) {
            subs[live_end..=i].rotate_right(1);
            live_end += 1;
        }
    }
}

/// Now, in ns since the Unix epoch (a vDSO clock read, no syscall).
#[inline]
pub fn unix_ns() -> i64 {
    crate::ipc::shm::unix_time_ns() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(p: &Publisher) -> Vec<(u32, u8)> {
        p.snap
            .subscriptions()
            .iter()
            .map(|s| (s.con_id, s.state))
            .collect()
    }

    /// 300 rejected subscriptions (unknown contracts) no longer fill the table: a live one
    /// arriving after them is listed, first.
    #[test]
    fn rejected_entries_never_crowd_out_live_ones() {
        let mut p = Publisher::heap(1024).unwrap();
        let k = RecordKind::L1Price;
        p.subscription(7, k, SubState::Active, 0, 1000, 1, None);
        for c in 0..300u32 {
            p.subscription(10_000 + c, k, SubState::Queued, 0, 0, 1, None);
            p.subscription(
                10_000 + c,
                k,
                SubState::Requested,
                0,
                2000 + c as i32,
                1,
                None,
            );
            p.subscription(10_000 + c, k, SubState::Rejected, 200, 0, 1, None);
        }
        assert_eq!(p.snap.subscriptions().len(), crate::ipc::MAX_SUBSCRIPTIONS);
        // The live subscription that was there first is still listed.
        assert!(p.snap.find_subscription(7, k).is_some());
        // The newest rejections are the ones kept.
        assert!(p.snap.find_subscription(10_299, k).is_some());
        assert!(p.snap.find_subscription(10_000, k).is_none());
        // A real subscription after the flood is listed, live ones first.
        p.subscription(265_598, k, SubState::Queued, 0, 0, 1, None);
        p.subscription(265_598, k, SubState::Active, 0, 3000, 1, None);
        tidy_subscriptions(&mut p.snap, unix_ns());
        let l = listed(&p);
        assert_eq!(l.len(), crate::ipc::MAX_SUBSCRIPTIONS);
        assert_eq!(
            &l[..2],
            &[
                (7, SubState::Active as u8),
                (265_598, SubState::Active as u8)
            ]
        );
        assert!(l[2..].iter().all(|(_, s)| *s == SubState::Rejected as u8));
        // Live ones fill the table: the rejected give way one by one.
        for c in 0..300u32 {
            p.subscription(50_000 + c, k, SubState::Queued, 0, 0, 1, None);
        }
        let l = listed(&p);
        assert_eq!(l.len(), crate::ipc::MAX_SUBSCRIPTIONS);
        assert!(l.iter().all(|(_, s)| *s != SubState::Rejected as u8));
        assert!(p.snap.find_subscription(7, k).is_some());
        assert!(p.snap.find_subscription(265_598, k).is_some());
        // With 256 live ones, a rejection is not listed.
        p.subscription(99, k, SubState::Rejected, 200, 0, 1, None);
        assert!(p.snap.find_subscription(99, k).is_none());
    }

    /// Rejected entries are listed for a while, then forgotten; live ones stay.
    #[test]
    fn rejected_entries_expire() {
        let mut p = Publisher::heap(1024).unwrap();
        let k = RecordKind::L1Price;
        p.subscription(1, k, SubState::Rejected, 200, 0, 1, None);
        p.subscription(2, k, SubState::Active, 0, 1000, 1, None);
        p.subscription(3, k, SubState::Rejected, 200, 0, 1, None);
        let t0 = p.snap.find_subscription(3, k).unwrap().state_since_ns;
        tidy_subscriptions(&mut p.snap, t0 + 1);
        assert_eq!(
            listed(&p),
            vec![
                (2, SubState::Active as u8),
                (1, SubState::Rejected as u8),
                (3, SubState::Rejected as u8)
            ]
        );
        tidy_subscriptions(&mut p.snap, t0 + REJECTED_LISTED_NS + 1_000_000_000);
        assert_eq!(listed(&p), vec![(2, SubState::Active as u8)]);
    }
}
