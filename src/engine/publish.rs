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
        }
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
        let now = unix_ns();
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
            ts_recv: unix_ns(),
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
            ts_recv: unix_ns(),
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
        let now = unix_ns();
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
        let entry = match snap.find_subscription_mut(con_id, kind) {
            Some(e) => e,
            None => {
                let fresh = crate::ipc::SubStatus::new(con_id, kind, state, req_id);
                if snap.push_subscription(fresh).is_err() {
                    return;
                }
                match snap.find_subscription_mut(con_id, kind) {
                    Some(e) => e,
                    None => return,
                }
            }
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
            ts_recv: unix_ns(),
            body: [published as i64, 0, 0, 0],
            ..Record::new(RecordKind::Heartbeat)
        });
    }

    /// Publishes the status snapshot and beats the ring's heartbeat.
    pub fn publish_status(&mut self) {
        let now = unix_ns();
        self.snap.counters.strings_interned = self.strings.interned;
        self.snap.counters.strings_dropped = self.strings.dropped;
        self.status.publish(&self.snap, now);
        self.ring.heartbeat(now as u64);
    }
}

/// Now, in ns since the Unix epoch (a vDSO clock read, no syscall).
#[inline]
pub fn unix_ns() -> i64 {
    crate::ipc::shm::unix_time_ns() as i64
}
