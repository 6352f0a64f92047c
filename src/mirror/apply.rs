//! The mirror's core, sans-IO: decoded stream messages in, the local ring, string table and
//! status region written exactly as the engine host has them (same epoch, same sequences).
//!
//! Holes: a record whose sequence is past the next one expected, or a hole message from a
//! lapped bridge, leaves sequences the mirror never got. They are not left silent (a ring
//! reader expecting one would wait forever): the first missing sequence still in reach
//! becomes a [`RecordKind::Gap`] record (`tick_type` = [`GapReason::ReaderOverrun`],
//! `body = [first, last, t0, t1]`, the whole range), and every later missing sequence a
//! filler [`RecordKind::Heartbeat`] record with `body = [0, first, last, 0]`. Of a hole
//! larger than the ring only the last `capacity` sequences are written (a reader that was
//! further behind is lapped and told so by its own `Lost`).

use std::path::{Path, PathBuf};

use ib_stream_ipc::status::SNAPSHOT_SIZE;
use ib_stream_ipc::{
    GapReason, IpcError, RING_FILE_NAME, Record, RecordKind, RingWriter, STATUS_FILE_NAME,
    STRINGS_FILE_NAME, ShmOptions, StatusSnapshot, StatusWriter, StringTableConfig,
    StringTableReader, StringTableWriter, UNDEF_I64,
};
use zerocopy::FromBytes;

use crate::bridge::wire::{Body, Msg};

/// Why a message could not be applied (the mirror stops: its ring cannot be written).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Creating or adopting a ring, string table or status region failed.
    #[error(transparent)]
    Ipc(#[from] IpcError),
}

/// What applying one message did, for the caller's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Written (or a duplicate skipped).
    Done,
    /// A new run started: a new ring file under the message's epoch.
    NewRun,
}

/// Counters of what the mirror did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Records written as received.
    pub records: u64,
    /// Records already in the ring, skipped.
    pub duplicates: u64,
    /// Holes turned into gap records.
    pub holes: u64,
    /// Sequences covered by those holes.
    pub hole_seqs: u64,
    /// Strings interned.
    pub strings: u64,
    /// Strings that could not be placed under their id (an earlier strings message missing).
    pub strings_missing: u64,
    /// Status snapshots published.
    pub statuses: u64,
    /// Runs (ring files) started.
    pub runs: u64,
}

/// The local ring, strings and status of one environment, written from the stream.
#[derive(Debug)]
pub struct Applier {
    dir: PathBuf,
    capacity: u64,
    opts: ShmOptions,
    ring: Option<RingWriter>,
    strings: Option<StringTableWriter>,
    status: Option<StatusWriter>,
    /// The current run was announced ended cleanly with every record here.
    clean_end: bool,
    last_ts: i64,
    fill: Vec<Record>,
    /// What it did so far.
    pub stats: ApplyStats,
}

const FILL_CHUNK: usize = 4096;

impl Applier {
    /// The writer of `dir`'s ring. An existing ring there (a restarted mirror) is adopted:
    /// same file, epoch and sequences, so its readers go on; its string table too when it
    /// belongs to that ring.
    pub fn open(dir: &Path, capacity: u64, opts: &ShmOptions) -> Result<Applier, ApplyError> {
        std::fs::create_dir_all(dir).map_err(|e| IpcError::Io {
            path: dir.to_path_buf(),
            op: "create directory",
            source: e,
        })?;
        let ring_path = dir.join(RING_FILE_NAME);
        let ring = match RingWriter::adopt(&ring_path, opts) {
            Ok(w) => Some(w),
            Err(e) if e.is_missing() => None,
            Err(e) => return Err(e.into()),
        };
        let mut strings = None;
        if let Some(w) = &ring {
            let sp = dir.join(STRINGS_FILE_NAME);
            let belongs = StringTableReader::open(&sp).is_ok_and(|r| r.belongs_to(w.info().epoch));
            strings = Some(if belongs {
                StringTableWriter::adopt(&sp, opts)?
            } else {
                StringTableWriter::create(&sp, w.info().epoch, &StringTableConfig::default(), opts)?
            });
        }
        let last_ts = 0;
        Ok(Applier {
            dir: dir.to_path_buf(),
            capacity,
            opts: opts.clone(),
            ring,
            strings,
            status: None,
            clean_end: false,
            last_ts,
            fill: Vec::with_capacity(FILL_CHUNK),
            stats: ApplyStats::default(),
        })
    }

    /// The run (epoch) of the local ring, if there is one.
    pub fn epoch(&self) -> Option<u64> {
        self.ring.as_ref().map(|w| w.info().epoch)
    }

    /// The last sequence in the local ring (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.ring.as_ref().map_or(0, RingWriter::last_seq)
    }

    /// Beats the ring's heartbeat (call it from the loop, not per record).
    pub fn heartbeat(&self, now_ns: u64) {
        if let Some(w) = &self.ring {
            w.heartbeat(now_ns);
        }
    }

    /// The ring sequences this message would leave out (written as a gap by [`Applier::apply`]):
    /// a record or hole of the current run that starts past the next sequence. The bridge
    /// publishes every sequence (or a hole message naming them), so such a jump means the
    /// stream the mirror reads is not the one it read so far (a cluster that re-elected a
    /// stale replica rewrote its tail, and the bridge republished the records under other
    /// stream sequences): the caller looks for them in the stream before accepting a gap.
    pub fn missing(&self, msg: &Msg) -> Option<(u64, u64)> {
        if self.epoch() != Some(msg.epoch) {
            return None;
        }
        let next = self.last_seq() + 1;
        let first = match &msg.body {
            Body::Record(r) => r.seq,
            Body::Records(rs) => rs.first()?.seq,
            Body::Hole { first, .. } => *first,
            _ => return None,
        };
        (first > next).then(|| (next, first - 1))
    }

    /// The string ids this message would leave out: a strings message of the current run
    /// that starts past the next id (the same stream rewrite as [`Applier::missing`] can put
    /// the strings batch the mirror lacks before the records it already holds).
    pub fn strings_missing(&self, msg: &Msg) -> Option<(u32, u32)> {
        if self.epoch() != Some(msg.epoch) {
            return None;
        }
        let have = self.strings_len();
        match &msg.body {
            Body::Strings { first_id, .. } if *first_id > have => Some((have, first_id - 1)),
            _ => None,
        }
    }

    /// The next string id the local table would give (ids start at 1).
    pub fn strings_len(&self) -> u32 {
        self.strings.as_ref().map_or(1, StringTableWriter::len)
    }

    /// Applies one message of the stream, in stream order.
    pub fn apply(&mut self, msg: &Msg, now_ns: i64) -> Result<Applied, ApplyError> {
        if let Body::Run {
            old_epoch,
            old_last_seq,
            clean,
        } = msg.body
        {
            self.clean_end =
                self.epoch() == Some(old_epoch) && clean && self.last_seq() == old_last_seq;
            return self.ensure_run(msg.epoch);
        }
        let applied = self.ensure_run(msg.epoch)?;
        match &msg.body {
            Body::Record(r) => self.place(r, now_ns),
            Body::Records(rs) => {
                for r in rs {
                    self.place(r, now_ns);
                }
            }
            Body::Hole {
                first,
                last,
                t0_ns,
                t1_ns,
            } => {
                let next = self.last_seq() + 1;
                if *first > next {
                    self.fill(next, first - 1, self.last_ts, now_ns);
                }
                if *last >= next.max(*first) {
                    self.fill(next.max(*first), *last, *t0_ns, *t1_ns);
                }
            }
            Body::Strings { first_id, strings } => self.intern(*first_id, strings),
            Body::Status(bytes) => self.publish_status(msg.epoch, bytes, now_ns)?,
            Body::Run { .. } => unreachable!("handled above"),
        }
        Ok(applied)
    }

    fn ensure_run(&mut self, epoch: u64) -> Result<Applied, ApplyError> {
        if self.epoch() == Some(epoch) {
            return Ok(Applied::Done);
        }
        if let Some(old) = self.ring.take() {
            // Readers see the old ring stopped only when the engine's run really ended
            // cleanly and every record of it is here; otherwise as a writer that died.
            if self.clean_end {
                drop(old);
            } else {
                old.abandon();
            }
        }
        self.strings = None;
        self.status = None;
        self.clean_end = false;
        let ring = RingWriter::create_with_epoch(
            &self.dir.join(RING_FILE_NAME),
            self.capacity,
            epoch,
            &self.opts,
        )?;
        self.strings = Some(StringTableWriter::create(
            &self.dir.join(STRINGS_FILE_NAME),
            epoch,
            &StringTableConfig::default(),
            &self.opts,
        )?);
        self.ring = Some(ring);
        self.stats.runs += 1;
        tracing::info!(epoch = %format!("{epoch:016x}"), "mirror: new run, new ring");
        Ok(Applied::NewRun)
    }

    fn place(&mut self, r: &Record, now_ns: i64) {
        let next = self.last_seq() + 1;
        if r.seq < next {
            self.stats.duplicates += 1;
            return;
        }
        if r.seq > next {
            self.fill(next, r.seq - 1, self.last_ts, now_ns);
        }
        let w = self.ring.as_mut().expect("a run is open");
        w.publish(r);
        self.last_ts = r.ts_recv;
        self.stats.records += 1;
    }

    /// Writes the hole `first..=last` (the next sequences of the ring) as one gap record
    /// and fillers; only the last `capacity` of them when it is larger than the ring.
    fn fill(&mut self, first: u64, last: u64, t0_ns: i64, t1_ns: i64) {
        let cap = self.capacity;
        let w = self.ring.as_mut().expect("a run is open");
        debug_assert_eq!(first, w.last_seq() + 1);
        let start = first.max((last + 1).saturating_sub(cap));
        w.skip_to(start);
        self.stats.holes += 1;
        self.stats.hole_seqs += last - first + 1;
        tracing::warn!(
            first,
            last,
            count = last - first + 1,
            "mirror: sequences never received, writing a gap"
        );
        let gap = Record {
            ts_recv: t1_ns,
            ts_event: UNDEF_I64,
            tick_type: GapReason::ReaderOverrun as u8,
            body: [first as i64, last as i64, t0_ns, t1_ns],
            ..Record::new(RecordKind::Gap)
        };
        let filler = Record {
            ts_recv: t1_ns,
            body: [0, first as i64, last as i64, 0],
            ..Record::new(RecordKind::Heartbeat)
        };
        let mut seq = start;
        while seq <= last {
            self.fill.clear();
            while seq <= last && self.fill.len() < FILL_CHUNK {
                self.fill.push(if seq == start { gap } else { filler });
                seq += 1;
            }
            w.publish_batch(&self.fill);
        }
    }

    fn intern(&mut self, first_id: u32, strings: &[Vec<u8>]) {
        let Some(t) = self.strings.as_mut() else {
            return;
        };
        for (i, s) in strings.iter().enumerate() {
            let id = first_id + i as u32;
            let have = t.len();
            if id < have {
                continue;
            }
            if id > have {
                self.stats.strings_missing += (strings.len() - i) as u64;
                tracing::warn!(
                    id,
                    have,
                    "mirror: strings before this one never arrived; ids would differ, not interning"
                );
                return;
            }
            match t.intern(s) {
                Ok(got) if got == id => self.stats.strings += 1,
                Ok(got) => {
                    // Only a duplicate string from the engine could do this; it never interns twice.
                    tracing::warn!(id, got, "mirror: string already interned under another id");
                    self.stats.strings_missing += 1;
                }
                Err(e) => {
                    tracing::warn!(id, error = %e, "mirror: string table full");
                    self.stats.strings_missing += 1;
                }
            }
        }
    }

    fn publish_status(&mut self, epoch: u64, bytes: &[u8], now_ns: i64) -> Result<(), ApplyError> {
        if bytes.len() != SNAPSHOT_SIZE {
            tracing::warn!(
                len = bytes.len(),
                "mirror: status snapshot of another size ignored"
            );
            return Ok(());
        }
        let Ok(snap) = StatusSnapshot::read_from_bytes(bytes) else {
            return Ok(());
        };
        if self.status.as_ref().is_none_or(|s| s.epoch() != epoch) {
            self.status = Some(StatusWriter::create(
                &self.dir.join(STATUS_FILE_NAME),
                epoch,
                &self.opts,
            )?);
        }
        if let Some(s) = self.status.as_mut() {
            s.publish(&snap, now_ns);
            self.stats.statuses += 1;
        }
        Ok(())
    }
}

/// Where the stream holds a run's records from ring sequence `need` on: the first stream
/// sequence whose message belongs to `epoch` with a position of at least `need` (the record
/// `need` itself, or what was sent after it). Positions never go down within a run along the
/// stream, so a binary search over stream sequences finds it; the caller reads each
/// [`Locate::probe`] from the stream leader and reports it with [`Locate::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locate {
    epoch: u64,
    need: u64,
    lo: u64,
    hi: u64,
}

impl Locate {
    /// Searches `lo..=hi`; the message at `hi` is known to be at or past `need`.
    pub fn new(epoch: u64, need: u64, lo: u64, hi: u64) -> Locate {
        Locate {
            epoch,
            need,
            lo: lo.min(hi),
            hi,
        }
    }

    /// The next stream sequence to read, or `None` when [`Locate::found`] is the answer.
    pub fn probe(&self) -> Option<u64> {
        (self.lo < self.hi).then(|| self.lo + (self.hi - self.lo) / 2)
    }

    /// The message at `seq` (`None`: the stream no longer holds it, or it is unreadable).
    pub fn feed(&mut self, seq: u64, msg: Option<&Msg>) {
        if msg.is_some_and(|m| m.epoch == self.epoch && m.pos >= self.need) {
            self.hi = seq;
        } else {
            self.lo = seq + 1;
        }
    }

    /// The first stream sequence to read again.
    pub fn found(&self) -> u64 {
        self.lo
    }
}

/// Where the stream holds the strings a run's table lacks from id `have` on. A strings batch
/// is read ahead of its records (a bridge catching up reads the whole table after its first
/// batch), so its position says nothing: the search is over "the next strings message at or
/// after this sequence" (a get by subject from the leader), whose ids never go down along the
/// stream. Reading again from [`LocateStrings::found`] reaches the first batch with an id of
/// `have` or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocateStrings {
    epoch: u64,
    have: u32,
    lo: u64,
    hi: u64,
}

impl LocateStrings {
    /// Searches `lo..=hi`; `hi` is known to be at or past the wanted batch.
    pub fn new(epoch: u64, have: u32, lo: u64, hi: u64) -> LocateStrings {
        LocateStrings {
            epoch,
            have,
            lo: lo.min(hi),
            hi,
        }
    }

    /// The next stream sequence to ask "the next strings message from here" about.
    pub fn probe(&self) -> Option<u64> {
        (self.lo < self.hi).then(|| self.lo + (self.hi - self.lo) / 2)
    }

    /// The first strings message at or after `seq` (`None`: there is none, or it is
    /// unreadable). An older run's batch is before this run's.
    pub fn feed(&mut self, seq: u64, next: Option<&Msg>) {
        let before = next.is_some_and(|m| match &m.body {
            Body::Strings { first_id, strings } => {
                m.epoch != self.epoch || (*first_id as usize + strings.len()) <= self.have as usize
            }
            _ => false,
        });
        if before {
            self.lo = seq + 1;
        } else {
            self.hi = seq;
        }
    }

    /// The first stream sequence to read again.
    pub fn found(&self) -> u64 {
        self.lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ib_stream_ipc::{ReadOutcome, RingReader, StartAt};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn tmpdir() -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "mirror-apply-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn rec(seq: u64) -> Msg {
        let mut r = Record::mid_point(7, seq as i64, seq as i64 * 10);
        r.seq = seq;
        r.ts_recv = seq as i64;
        Msg {
            epoch: 0xe1,
            pos: seq,
            body: Body::Record(r),
        }
    }

    /// Every record of the ring from sequence 1: `(seq, kind, body)`.
    fn ring(d: &Path) -> Vec<(u64, u8, [i64; 4])> {
        let mut r = RingReader::open(&d.join(RING_FILE_NAME), StartAt::Seq(1)).unwrap();
        let mut out = Vec::new();
        loop {
            match r.try_read() {
                ReadOutcome::Record(x) => out.push((x.seq, x.kind, x.body)),
                ReadOutcome::Empty => return out,
                ReadOutcome::Lost {
                    first_seq,
                    last_seq,
                    ..
                } => out.push((first_seq, 0, [first_seq as i64, last_seq as i64, -1, -1])),
            }
        }
    }

    #[test]
    fn records_land_under_their_own_epoch_and_sequences_and_duplicates_are_skipped() {
        let d = tmpdir();
        let mut a = Applier::open(&d, 64, &ShmOptions::default()).unwrap();
        assert_eq!(a.apply(&rec(1), 0).unwrap(), Applied::NewRun);
        for s in [2, 3, 2, 3, 4] {
            assert_eq!(a.apply(&rec(s), 0).unwrap(), Applied::Done);
        }
        assert_eq!(a.stats.duplicates, 2);
        let got = ring(&d);
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(
            RingReader::open(&d.join(RING_FILE_NAME), StartAt::Newest)
                .unwrap()
                .info()
                .epoch,
            0xe1
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn batch(seqs: std::ops::RangeInclusive<u64>) -> Msg {
        let rs: Vec<Record> = seqs
            .map(|q| match rec(q).body {
                Body::Record(r) => r,
                _ => unreachable!(),
            })
            .collect();
        Msg {
            epoch: 0xe1,
            pos: rs.last().unwrap().seq,
            body: Body::Records(rs),
        }
    }

    #[test]
    fn a_batch_is_applied_record_by_record_and_one_overlapping_a_republish_too() {
        let d = tmpdir();
        let mut a = Applier::open(&d, 64, &ShmOptions::default()).unwrap();
        a.apply(&batch(1..=4), 0).unwrap();
        // A republish cut differently: 3..=6 holds two records the ring has.
        assert_eq!(a.missing(&batch(3..=6)), None);
        a.apply(&batch(3..=6), 0).unwrap();
        a.apply(&rec(7), 0).unwrap();
        assert_eq!(a.missing(&batch(10..=11)), Some((8, 9)));
        assert_eq!(a.stats.duplicates, 2);
        let seqs: Vec<u64> = ring(&d).iter().map(|g| g.0).collect();
        assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_hole_becomes_one_gap_record_and_fillers_with_the_exact_range() {
        let d = tmpdir();
        let mut a = Applier::open(&d, 64, &ShmOptions::default()).unwrap();
        a.apply(&rec(1), 0).unwrap();
        a.apply(&rec(5), 99).unwrap(); // 2..=4 never came
        a.apply(
            &Msg {
                epoch: 0xe1,
                pos: 9,
                body: Body::Hole {
                    first: 6,
                    last: 9,
                    t0_ns: 5,
                    t1_ns: 6,
                },
            },
            0,
        )
        .unwrap();
        a.apply(&rec(10), 0).unwrap();
        let got = ring(&d);
        let gap = RecordKind::Gap as u8;
        let hb = RecordKind::Heartbeat as u8;
        let mid = RecordKind::TbtMidPoint as u8;
        let kinds: Vec<(u64, u8)> = got.iter().map(|g| (g.0, g.1)).collect();
        assert_eq!(
            kinds,
            vec![
                (1, mid),
                (2, gap),
                (3, hb),
                (4, hb),
                (5, mid),
                (6, gap),
                (7, hb),
                (8, hb),
                (9, hb),
                (10, mid)
            ]
        );
        assert_eq!(got[1].2, [2, 4, 1, 99]);
        assert_eq!(got[5].2, [6, 9, 5, 6]);
        assert_eq!(got[2].2, [0, 2, 4, 0]);
        assert_eq!((a.stats.holes, a.stats.hole_seqs), (2, 7));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_hole_larger_than_the_ring_writes_only_the_last_ring_of_it() {
        let d = tmpdir();
        let mut a = Applier::open(&d, 16, &ShmOptions::default()).unwrap();
        a.apply(&rec(1), 0).unwrap();
        let mut r = RingReader::open(&d.join(RING_FILE_NAME), StartAt::Newest).unwrap();
        a.apply(&rec(1001), 0).unwrap();
        // The reader that waited at 2 is told it lost what the ring cannot hold, then reads
        // the gap record (the range 2..=1000), the fillers and the record.
        match r.try_read() {
            ReadOutcome::Lost {
                first_seq: 2,
                last_seq,
                ..
            } => assert!(last_seq >= 985),
            other => panic!("{other:?}"),
        }
        let mut seen = Vec::new();
        while let ReadOutcome::Record(x) = r.try_read() {
            seen.push((x.seq, x.kind));
        }
        assert_eq!(seen.last(), Some(&(1001, RecordKind::TbtMidPoint as u8)));
        assert!(seen.iter().all(|s| s.0 >= 986));
        if seen[0].0 == 986 {
            assert_eq!(seen[0].1, RecordKind::Gap as u8);
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_run_starting_late_fills_from_one_and_a_new_run_is_a_new_ring() {
        let d = tmpdir();
        let mut a = Applier::open(&d, 64, &ShmOptions::default()).unwrap();
        a.apply(&rec(4), 0).unwrap();
        assert_eq!(
            ring(&d).iter().map(|g| g.1).collect::<Vec<_>>()[0],
            RecordKind::Gap as u8
        );
        let old = RingReader::open(&d.join(RING_FILE_NAME), StartAt::Newest).unwrap();
        let run = Msg {
            epoch: 0xe2,
            pos: 0,
            body: Body::Run {
                old_epoch: 0xe1,
                old_last_seq: 4,
                clean: true,
            },
        };
        assert_eq!(a.apply(&run, 0).unwrap(), Applied::NewRun);
        assert!(
            old.writer_stopped(),
            "a clean end with every record here is a clean stop"
        );
        let mut m = rec(1);
        m.epoch = 0xe2;
        a.apply(&m, 0).unwrap();
        assert_eq!(a.epoch(), Some(0xe2));
        assert_eq!(ring(&d).len(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_record_or_hole_past_the_next_sequence_of_the_run_is_reported_missing() {
        let d = tmpdir();
        let mut a = Applier::open(&d, 64, &ShmOptions::default()).unwrap();
        assert_eq!(
            a.missing(&rec(4)),
            None,
            "no run yet: a late start is no jump"
        );
        a.apply(&rec(1), 0).unwrap();
        assert_eq!(a.missing(&rec(1)), None);
        assert_eq!(a.missing(&rec(2)), None);
        assert_eq!(a.missing(&rec(5)), Some((2, 4)));
        let hole = |first, last| Msg {
            epoch: 0xe1,
            pos: last,
            body: Body::Hole {
                first,
                last,
                t0_ns: 0,
                t1_ns: 0,
            },
        };
        assert_eq!(a.missing(&hole(2, 9)), None);
        assert_eq!(a.missing(&hole(3, 9)), Some((2, 2)));
        let mut other = rec(9);
        other.epoch = 0xe2;
        assert_eq!(a.missing(&other), None, "another run starts its own ring");
        let strings = Msg {
            epoch: 0xe1,
            pos: 7,
            body: Body::Strings {
                first_id: 1,
                strings: vec![b"X".to_vec()],
            },
        };
        assert_eq!(a.missing(&strings), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A stream as the bridge writes it: an old run, then this run's records with strings
    /// and status messages between them (positions never go down).
    fn stream_of(len: u64) -> Vec<Option<Msg>> {
        let mut s = vec![None, None]; // retention dropped 1 and 2
        s.push(Some(Msg {
            epoch: 0xe0,
            pos: 500,
            ..rec(500)
        }));
        let mut pos = 0;
        while (s.len() as u64) < len {
            let n = s.len() as u64;
            if n.is_multiple_of(5) {
                s.push(Some(Msg {
                    epoch: 0xe1,
                    pos,
                    body: Body::Status(vec![]),
                }));
            } else {
                pos += 1;
                s.push(Some(rec(pos)));
            }
        }
        s
    }

    fn locate(stream: &[Option<Msg>], need: u64, hi: u64) -> (u64, usize) {
        let mut l = Locate::new(0xe1, need, 1, hi);
        let mut probes = 0;
        while let Some(seq) = l.probe() {
            probes += 1;
            l.feed(seq, stream[(seq - 1) as usize].as_ref());
        }
        (l.found(), probes)
    }

    #[test]
    fn locate_finds_the_first_message_of_the_run_at_or_past_the_position() {
        let stream = stream_of(1000);
        let hi = stream.len() as u64;
        for need in [1, 2, 3, 4, 5, 100, 357, 700] {
            let (found, probes) = locate(&stream, need, hi);
            let first = stream
                .iter()
                .position(|m| m.as_ref().is_some_and(|m| m.epoch == 0xe1 && m.pos >= need))
                .unwrap() as u64
                + 1;
            assert_eq!(found, first, "need {need}");
            assert!(probes <= 11, "a binary search: {probes} reads");
        }
        // Nothing before the known message holds it: the search ends at that message.
        let (found, _) = locate(&stream, 10_000, 40);
        assert_eq!(found, 40);
        assert_eq!(Locate::new(0xe1, 1, 9, 9).probe(), None);
        assert_eq!(Locate::new(0xe1, 1, 12, 9).found(), 9);
    }

    #[test]
    fn locate_also_finds_a_strings_batch_read_ahead_of_records_the_mirror_holds() {
        let strings = |pos, first_id, n| {
            Some(Msg {
                epoch: 0xe1,
                pos,
                body: Body::Strings {
                    first_id,
                    strings: vec![b"S".to_vec(); n],
                },
            })
        };
        // Ids 1..=3 and 4..=9 were sent at positions 2 and 5; the mirror holds records up to
        // 8 and strings up to 5 (from another history that split the batches differently).
        let mut stream = vec![Some(rec(1)), Some(rec(2)), strings(2, 1, 3)];
        stream.extend((3..=5).map(|p| Some(rec(p))));
        stream.push(strings(5, 4, 6));
        stream.extend((6..=10).map(|p| Some(rec(p))));
        let next_strings = |seq: u64| {
            stream[(seq - 1) as usize..]
                .iter()
                .flatten()
                .find(|m| matches!(m.body, Body::Strings { .. }))
        };
        let run = |have| {
            let hi = stream.len() as u64;
            let mut l = LocateStrings::new(0xe1, have, 1, hi);
            while let Some(seq) = l.probe() {
                l.feed(seq, next_strings(seq));
            }
            l.found()
        };
        // The next strings message from the answer on is the first batch the mirror needs.
        let batch_seq = |from: u64| {
            (from..=stream.len() as u64).find(|s| {
                matches!(
                    stream[(*s - 1) as usize].as_ref().unwrap().body,
                    Body::Strings { .. }
                )
            })
        };
        assert_eq!(
            batch_seq(run(6)),
            Some(7),
            "the batch holding id 6, before record 6"
        );
        assert_eq!(batch_seq(run(2)), Some(3));
        assert_eq!(batch_seq(run(10)), None, "every string is there");
        // The record search for record 8 alone would start after that batch.
        let mut l = Locate::new(0xe1, 8, 1, stream.len() as u64);
        while let Some(seq) = l.probe() {
            l.feed(seq, stream[(seq - 1) as usize].as_ref());
        }
        assert_eq!(l.found(), 10);
    }

    #[test]
    fn a_strings_batch_past_the_next_id_of_the_run_is_reported_missing() {
        let d = tmpdir();
        let mut a = Applier::open(&d, 64, &ShmOptions::default()).unwrap();
        a.apply(&rec(1), 0).unwrap();
        let s = |first_id| Msg {
            epoch: 0xe1,
            pos: 1,
            body: Body::Strings {
                first_id,
                strings: vec![b"A".to_vec(), b"B".to_vec()],
            },
        };
        assert_eq!(a.strings_len(), 1);
        assert_eq!(a.strings_missing(&s(1)), None);
        a.apply(&s(1), 0).unwrap();
        assert_eq!(a.strings_len(), 3);
        assert_eq!(
            a.strings_missing(&s(2)),
            None,
            "overlapping: the rest is new"
        );
        assert_eq!(a.strings_missing(&s(3)), None);
        assert_eq!(a.strings_missing(&s(5)), Some((3, 4)));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_restarted_mirror_adopts_its_ring_and_strings() {
        let d = tmpdir();
        let mut a = Applier::open(&d, 64, &ShmOptions::default()).unwrap();
        a.apply(&rec(1), 0).unwrap();
        let s = Msg {
            epoch: 0xe1,
            pos: 1,
            body: Body::Strings {
                first_id: 1,
                strings: vec![b"ISLAND".to_vec(), b"ARCA".to_vec()],
            },
        };
        a.apply(&s, 0).unwrap();
        drop(a);
        let mut b = Applier::open(&d, 64, &ShmOptions::default()).unwrap();
        assert_eq!((b.epoch(), b.last_seq()), (Some(0xe1), 1));
        b.apply(&s, 0).unwrap(); // replayed: nothing new
        let s3 = Msg {
            epoch: 0xe1,
            pos: 1,
            body: Body::Strings {
                first_id: 3,
                strings: vec![b"NYSE".to_vec()],
            },
        };
        assert_eq!(b.apply(&s3, 0).unwrap(), Applied::Done);
        b.apply(&rec(1), 0).unwrap();
        b.apply(&rec(2), 0).unwrap();
        assert_eq!(ring(&d).len(), 2);
        let t = StringTableReader::open(&d.join(STRINGS_FILE_NAME)).unwrap();
        assert_eq!(t.get(3), Some(&b"NYSE"[..]));
        assert_eq!(t.get(1), Some(&b"ISLAND"[..]));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
