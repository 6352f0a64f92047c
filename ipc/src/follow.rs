//! [`RingFollower`]: a ring reader that follows the writer across laps, restarts and stops.
//!
//! Every process that tails the ring (the web server's tailer, the recorder, `ib-stream
//! tail`, strategies) needs the same three things beyond [`RingReader::try_read`]: report a
//! lap, notice that the writer stopped or died, and move to a restarted writer's new ring
//! without losing what was left in the old one. This is the one implementation.
//!
//! A follower yields records in sequence order and, between them, explicit events:
//! - [`FollowEvent::Lost`]: lapped (`reader_overrun`); exactly the sequences never delivered.
//! - [`FollowEvent::WriterState`]: the writer's state changed (alive, stale, stopped cleanly,
//!   gone), seen when idle at most every [`FollowConfig::check_every`].
//! - [`FollowEvent::WriterRestart`]: a restarted writer replaced the ring. The follower first
//!   drains the old ring to its end (a replaced ring has no writer any more), then opens the
//!   new one at its sequence 1 (anything the new writer already overwrote comes next as a
//!   `Lost` of the new epoch). The event's meaning, the one every reader reports as its
//!   `writer_restart` gap:
//!   - every sequence of the old run up to [`WriterRestart::old_last_seq`] was delivered or
//!     reported lost;
//!   - if the old writer closed its ring cleanly ([`WriterRestart::clean`]), nothing of the
//!     old run is missing;
//!   - otherwise (killed, crashed) what it received after its last published record is
//!     unknown: the old run's sequences `old_last_seq + 1 ..` (open-ended, count unknown)
//!     are lost ([`WriterRestart::lost_from`]).
//!
//! Checking the writer costs a `stat` and a `kill(pid, 0)`; it happens only when a read
//! finds nothing and `check_every` has passed, never per record. A registered follower
//! ([`RingFollower::register`]) keeps its registry slot across restarts (the slot's epoch
//! follows).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::IpcError;
use crate::readers::Registration;
use crate::record::{GapReason, Record, RecordKind, UNDEF_I64};
use crate::ring::{LapPolicy, ReadOutcome, RingInfo, RingReader, StartAt, WriterStatus};
use crate::shm::unix_time_ns;

/// How a follower watches the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowConfig {
    /// Look at the writer (restart, stop, death, heartbeat) at most this often, and only
    /// when a read found nothing. Zero: at every empty read.
    pub check_every: Duration,
    /// A heartbeat older than this makes the writer [`WriterStatus::Stale`].
    pub stale_after: Duration,
}

impl Default for FollowConfig {
    fn default() -> FollowConfig {
        FollowConfig {
            check_every: Duration::from_millis(100),
            stale_after: Duration::from_secs(5),
        }
    }
}

/// A restarted writer replaced the ring (see the module documentation for the meaning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterRestart {
    /// The old ring's epoch.
    pub old_epoch: u64,
    /// The new ring's epoch.
    pub new_epoch: u64,
    /// Every sequence of the old run up to this one was delivered or reported lost (0: none
    /// was published).
    pub old_last_seq: u64,
    /// The old writer closed its ring cleanly: nothing of the old run is missing.
    pub clean: bool,
}

impl WriterRestart {
    /// The gap as a ring-format record (what `ib-stream tail` prints and the recorder stores
    /// when [`WriterRestart::clean`] is false): `seq` = `body[0]` = `old_last_seq + 1`,
    /// `body[1]` = [`UNDEF_I64`] (open-ended: to the end of the old run) or, after a clean
    /// stop, `old_last_seq` (an empty range: nothing lost); `body[2..4]` = `t0_ns`, `t1_ns`
    /// (receive time of the old run's last record, and when the restart was seen);
    /// `ts_recv` = `t1_ns`.
    pub fn gap_record(&self, t0_ns: i64, t1_ns: i64) -> Record {
        let first = self.old_last_seq + 1;
        let last = if self.clean {
            self.old_last_seq as i64
        } else {
            UNDEF_I64
        };
        Record {
            seq: first,
            ts_recv: t1_ns,
            tick_type: GapReason::WriterRestart as u8,
            body: [first as i64, last, t0_ns, t1_ns],
            ..Record::new(RecordKind::Gap)
        }
    }

    /// The first sequence of the old run lost to the restart, the range running to the end
    /// of that run (count unknown); `None` after a clean stop.
    pub fn lost_from(&self) -> Option<u64> {
        (!self.clean).then_some(self.old_last_seq + 1)
    }
}

/// Something other than a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowEvent {
    /// Lapped: sequences `first_seq..=last_seq` of the current epoch were overwritten (or
    /// skipped by the lap policy) and will never be delivered.
    Lost {
        /// First sequence lost.
        first_seq: u64,
        /// Last sequence lost.
        last_seq: u64,
        /// `last_seq - first_seq + 1`.
        count: u64,
    },
    /// The writer's state changed: [`WriterStatus::Alive`], [`WriterStatus::Stale`],
    /// [`WriterStatus::Stopped`] (closed cleanly) or [`WriterStatus::Gone`] (its process is
    /// gone without closing).
    WriterState(WriterStatus),
    /// A restarted writer replaced the ring; the follower now reads the new one.
    WriterRestart(WriterRestart),
}

/// One step of a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    /// The next record.
    Record(Record),
    /// Nothing new.
    Empty,
    /// An event (after every record before it).
    Event(FollowEvent),
}

/// The result of [`RingFollower::read_batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowBatch {
    /// Records written to the front of the buffer, in order.
    pub records: usize,
    /// An event that comes after those records.
    pub event: Option<FollowEvent>,
}

enum Idle {
    Quiet,
    Event(FollowEvent),
    ReadAgain,
}

/// A ring reader that follows the writer (see the module documentation).
#[derive(Debug)]
pub struct RingFollower {
    reader: RingReader,
    cfg: FollowConfig,
    last_check: Option<Instant>,
    status: WriterStatus,
    /// The ring was seen replaced: switch at the next empty read (the old one drained).
    switch_due: bool,
    last_error: Option<IpcError>,
}

impl RingFollower {
    /// Opens the ring file at `path` starting at `start`.
    pub fn open(path: &Path, start: StartAt, cfg: FollowConfig) -> Result<RingFollower, IpcError> {
        Ok(RingFollower::new(RingReader::open(path, start)?, cfg))
    }

    /// Follows with an existing reader (its position, lap policy and registration kept).
    pub fn new(reader: RingReader, cfg: FollowConfig) -> RingFollower {
        RingFollower {
            reader,
            cfg,
            last_check: None,
            status: WriterStatus::Alive {
                heartbeat_age_ns: 0,
            },
            switch_due: false,
            last_error: None,
        }
    }

    /// The next record or event. No syscall unless the read finds nothing and a writer
    /// check is due.
    #[inline]
    pub fn poll(&mut self) -> Follow {
        loop {
            match self.reader.try_read() {
                ReadOutcome::Record(r) => return Follow::Record(r),
                ReadOutcome::Lost {
                    first_seq,
                    last_seq,
                    count,
                } => {
                    return Follow::Event(FollowEvent::Lost {
                        first_seq,
                        last_seq,
                        count,
                    });
                }
                ReadOutcome::Empty => match self.on_empty() {
                    Idle::Quiet => return Follow::Empty,
                    Idle::Event(e) => return Follow::Event(e),
                    Idle::ReadAgain => {}
                },
            }
        }
    }

    /// Reads up to `out.len()` records, stopping early when nothing more is ready or at an
    /// event (returned after the records).
    pub fn read_batch(&mut self, out: &mut [Record]) -> FollowBatch {
        loop {
            let b = self.reader.read_batch(out);
            if let Some((first_seq, last_seq, count)) = b.lost {
                return FollowBatch {
                    records: b.records,
                    event: Some(FollowEvent::Lost {
                        first_seq,
                        last_seq,
                        count,
                    }),
                };
            }
            if b.records > 0 || out.is_empty() {
                return FollowBatch {
                    records: b.records,
                    event: None,
                };
            }
            match self.on_empty() {
                Idle::Quiet => {
                    return FollowBatch {
                        records: 0,
                        event: None,
                    };
                }
                Idle::Event(e) => {
                    return FollowBatch {
                        records: 0,
                        event: Some(e),
                    };
                }
                Idle::ReadAgain => {}
            }
        }
    }

    /// Nothing to read: look at the writer if due.
    #[cold]
    fn on_empty(&mut self) -> Idle {
        if self.switch_due {
            self.switch_due = false;
            return self.switch();
        }
        let now = Instant::now();
        if self
            .last_check
            .is_some_and(|t| now.duration_since(t) < self.cfg.check_every)
        {
            return Idle::Quiet;
        }
        self.last_check = Some(now);
        let stale = u64::try_from(self.cfg.stale_after.as_nanos()).unwrap_or(u64::MAX);
        let status = self.reader.writer_status(unix_time_ns(), stale);
        if status == WriterStatus::Replaced {
            // The old writer may have published after the read that found nothing: read
            // again, and switch at the next empty read.
            self.switch_due = true;
            return Idle::ReadAgain;
        }
        let changed = std::mem::discriminant(&status) != std::mem::discriminant(&self.status);
        self.status = status;
        if changed {
            Idle::Event(FollowEvent::WriterState(status))
        } else {
            Idle::Quiet
        }
    }

    /// Moves to the new ring; the old one is read to its end.
    fn switch(&mut self) -> Idle {
        let old = self.reader.info();
        let old_last_seq = self.reader.next_seq() - 1;
        let clean = self.reader.writer_stopped();
        match self.reader.reopen(StartAt::Seq(1)) {
            Ok(new_epoch) => {
                self.last_error = None;
                self.status = WriterStatus::Alive {
                    heartbeat_age_ns: 0,
                };
                Idle::Event(FollowEvent::WriterRestart(WriterRestart {
                    old_epoch: old.epoch,
                    new_epoch,
                    old_last_seq,
                    clean,
                }))
            }
            Err(e) => {
                // Removed rather than replaced, or not complete yet: keep the old mapping and
                // try again at the next check.
                self.last_error = Some(e);
                Idle::Quiet
            }
        }
    }

    /// Makes the next empty read look at the writer whatever the time since the last check
    /// (for callers that drain the ring step by step: tests, benchmarks, a final read).
    pub fn check_writer_now(&mut self) {
        self.last_check = None;
    }

    /// The writer's state at the last check (initially [`WriterStatus::Alive`]).
    pub fn writer_status(&self) -> WriterStatus {
        self.status
    }

    /// Why the last attempt to open a restarted writer's ring failed, if it did (the
    /// follower keeps reading the old one and tries again at the next check).
    pub fn last_error(&self) -> Option<&IpcError> {
        self.last_error.as_ref()
    }

    /// The reader (position, head, lag, epoch, ...).
    pub fn reader(&self) -> &RingReader {
        &self.reader
    }

    /// The mapped ring's fixed header fields (epoch, capacity, ...).
    pub fn info(&self) -> RingInfo {
        self.reader.info()
    }

    /// The sequence the next record delivered will have (in the current epoch).
    pub fn next_seq(&self) -> u64 {
        self.reader.next_seq()
    }

    /// The writer's last published sequence.
    pub fn head(&self) -> u64 {
        self.reader.head()
    }

    /// Chooses where to resume after a lap (see [`RingReader::set_lap_policy`]).
    pub fn set_lap_policy(&mut self, policy: LapPolicy) {
        self.reader.set_lap_policy(policy);
    }

    /// Registers in the reader registry beside the ring (see [`RingReader::register`]); the
    /// slot follows the reader to new epochs.
    pub fn register(&mut self, name: &str) -> Registration {
        self.reader.register(name)
    }

    /// The registry slot held, if any.
    pub fn registry_slot(&self) -> Option<usize> {
        self.reader.registry_slot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::RingWriter;
    use crate::shm::ShmOptions;
    use crate::{ReaderRegistry, readers::READERS_FILE_NAME};
    use std::path::PathBuf;

    fn rec(i: i64) -> Record {
        Record {
            instrument_id: 3,
            ts_recv: i,
            ..Record::new(RecordKind::TbtLast)
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ipc-follow-{tag}-{}-{:x}",
            std::process::id(),
            crate::shm::random_u64()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn opts() -> ShmOptions {
        ShmOptions {
            prefault: false,
            ..ShmOptions::default()
        }
    }

    const NOW: FollowConfig = FollowConfig {
        check_every: Duration::ZERO,
        stale_after: Duration::from_secs(3600),
    };

    /// Every record until the first non-record.
    fn drain(f: &mut RingFollower) -> (Vec<u64>, Follow) {
        let mut seqs = Vec::new();
        loop {
            match f.poll() {
                Follow::Record(r) => seqs.push(r.seq),
                other => return (seqs, other),
            }
        }
    }

    #[test]
    fn a_killed_writer_restart_drains_the_old_ring_then_reports_the_open_range() {
        let d = dir("kill");
        let path = d.join("ticks.ring");
        let mut w = RingWriter::create(&path, 16, &opts()).unwrap();
        let mut f = RingFollower::open(&path, StartAt::Oldest, NOW).unwrap();
        assert!(f.register("t").is_registered());
        for i in 1..=5 {
            w.publish(&rec(i));
        }
        let (seqs, end) = drain(&mut f);
        assert_eq!((seqs, end), (vec![1, 2, 3, 4, 5], Follow::Empty));
        let old_epoch = w.info().epoch;
        // Published after the last empty read, then the writer dies without closing (its
        // Drop would mark the ring stopped: forget it) and a new one replaces the file.
        w.publish(&rec(6));
        w.publish(&rec(7));
        w.abandon();
        let mut w2 = RingWriter::create(&path, 16, &opts()).unwrap();
        w2.publish(&rec(100));
        let (seqs, end) = drain(&mut f);
        assert_eq!(seqs, vec![6, 7], "the old ring is read to its end first");
        assert_eq!(
            end,
            Follow::Event(FollowEvent::WriterRestart(WriterRestart {
                old_epoch,
                new_epoch: w2.info().epoch,
                old_last_seq: 7,
                clean: false,
            }))
        );
        let Follow::Event(FollowEvent::WriterRestart(r)) = end else {
            unreachable!()
        };
        assert_eq!(r.lost_from(), Some(8));
        let (seqs, end) = drain(&mut f);
        assert_eq!((seqs, end), (vec![1], Follow::Empty));
        // The registry slot moved to the new epoch.
        let reg = ReaderRegistry::open(&d.join(READERS_FILE_NAME)).unwrap();
        let e = &reg.entries()[0];
        assert_eq!(e.epoch, w2.info().epoch);
        assert_eq!(e.position, 2);
        drop(w2);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_clean_stop_is_reported_then_a_restart_loses_nothing_of_the_old_run() {
        let d = dir("clean");
        let path = d.join("ticks.ring");
        let mut w = RingWriter::create(&path, 16, &opts()).unwrap();
        let mut f = RingFollower::open(&path, StartAt::Newest, NOW).unwrap();
        w.publish(&rec(1));
        let old_epoch = w.info().epoch;
        drop(w);
        let (seqs, end) = drain(&mut f);
        assert_eq!(seqs, vec![1]);
        assert_eq!(
            end,
            Follow::Event(FollowEvent::WriterState(WriterStatus::Stopped))
        );
        assert_eq!(f.poll(), Follow::Empty, "said once");
        let mut w2 = RingWriter::create(&path, 16, &opts()).unwrap();
        assert_eq!(
            f.poll(),
            Follow::Event(FollowEvent::WriterRestart(WriterRestart {
                old_epoch,
                new_epoch: w2.info().epoch,
                old_last_seq: 1,
                clean: true,
            }))
        );
        w2.publish(&rec(2));
        assert!(matches!(f.poll(), Follow::Record(r) if r.seq == 1));
        drop(w2);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_new_ring_already_lapped_reports_its_own_loss_after_the_restart() {
        let d = dir("newlap");
        let path = d.join("ticks.ring");
        let w = RingWriter::create(&path, 8, &opts()).unwrap();
        let mut f = RingFollower::open(&path, StartAt::Newest, NOW).unwrap();
        f.set_lap_policy(LapPolicy::Oldest { margin: 0 });
        drop(w);
        assert_eq!(
            f.poll(),
            Follow::Event(FollowEvent::WriterState(WriterStatus::Stopped))
        );
        let mut w2 = RingWriter::create(&path, 8, &opts()).unwrap();
        for i in 1..=20 {
            w2.publish(&rec(i));
        }
        let mut b = [Record::ZERO; 32];
        let got = f.read_batch(&mut b);
        assert!(matches!(
            got.event,
            Some(FollowEvent::WriterRestart(WriterRestart {
                clean: true,
                old_last_seq: 0,
                ..
            }))
        ));
        assert_eq!(
            f.read_batch(&mut b),
            FollowBatch {
                records: 0,
                event: Some(FollowEvent::Lost {
                    first_seq: 1,
                    last_seq: 12,
                    count: 12
                })
            }
        );
        let got = f.read_batch(&mut b);
        assert_eq!(got.records, 8);
        assert_eq!(b[0].seq, 13);
        drop(w2);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn laps_are_exact_and_writer_checks_wait_for_the_interval() {
        let mut w = RingWriter::heap(8).unwrap();
        let mut f = RingFollower::new(
            w.reader(StartAt::Oldest),
            FollowConfig {
                check_every: Duration::from_secs(3600),
                ..NOW
            },
        );
        f.set_lap_policy(LapPolicy::Oldest { margin: 0 });
        for i in 1..=20 {
            w.publish(&rec(i));
        }
        assert_eq!(
            f.poll(),
            Follow::Event(FollowEvent::Lost {
                first_seq: 1,
                last_seq: 12,
                count: 12
            })
        );
        let (seqs, end) = drain(&mut f);
        assert_eq!(seqs, (13..=20).collect::<Vec<_>>());
        assert_eq!(end, Follow::Empty);
        drop(w);
        // The first empty read checked; the next check is an hour away: a stop goes unseen.
        assert_eq!(f.poll(), Follow::Empty);
        assert!(matches!(f.writer_status(), WriterStatus::Alive { .. }));
    }

    #[test]
    fn a_removed_ring_keeps_the_old_mapping_and_says_why() {
        let d = dir("removed");
        let path = d.join("ticks.ring");
        let mut w = RingWriter::create(&path, 8, &opts()).unwrap();
        let mut f = RingFollower::open(&path, StartAt::Newest, NOW).unwrap();
        w.publish(&rec(1));
        drop(w);
        std::fs::remove_file(&path).unwrap();
        let (seqs, end) = drain(&mut f);
        assert_eq!((seqs, end), (vec![1], Follow::Empty));
        assert!(f.last_error().is_some_and(IpcError::is_missing));
        let mut w2 = RingWriter::create(&path, 8, &opts()).unwrap();
        w2.publish(&rec(9));
        assert!(matches!(
            f.poll(),
            Follow::Event(FollowEvent::WriterRestart(WriterRestart {
                old_last_seq: 1,
                clean: true,
                ..
            }))
        ));
        assert!(matches!(f.poll(), Follow::Record(r) if r.seq == 1));
        drop(w2);
        std::fs::remove_dir_all(d).unwrap();
    }
}
