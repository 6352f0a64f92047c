//! `ib-stream record`: the sidecar that tails the ring and writes history.
//!
//! One thread: read a batch from the ring, stage each record in its segment of every
//! format, and every flush interval write the staged bytes, sync as the fsync policy says,
//! and replace the checkpoint. It never touches the ring except to read it, so it cannot slow
//! the engine; if it falls more than a ring behind it writes a `reader_overrun` gap record with
//! the exact lost range and goes on. A format that cannot write (disk full, I/O error) keeps
//! the reading going, owes a `write_error` gap, and pays it when writing works again (see
//! [`sink`]). On start it repairs the files to the checkpoint and resumes the ring right after
//! it (see `docs/STORAGE.md`).

pub mod sink;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ib_stream_ipc::{
    FollowConfig, FollowEvent, GapReason, IpcError, Record, RecordKind, RingFollower, RingReader,
    ShmOptions, StartAt, StringTableReader, UNDEF_I64, WriterLock, WriterRestart, WriterStatus,
};

use crate::config::{FsyncPolicy, Settings};
use crate::storage::checkpoint::{CHECKPOINT_VERSION, Checkpoint};
use crate::storage::layout::{Format, hour_start};
use crate::storage::{StorageError, now_ns, repair, retention};
use crate::tickjson::StringLookup;

use sink::{Owed, Sink, Window};
use status::{FormatStatus, RecorderStatus};

/// The string table's file name in the shm directory (beside `ticks.ring`).
pub const STRINGS_FILE_NAME: &str = ib_stream_ipc::STRINGS_FILE_NAME;
/// Heartbeat records kept by default: at most one per this interval.
pub const HEARTBEAT_KEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Flags of `ib-stream record` (everything else comes from the configuration).
#[derive(Debug, Clone, clap::Args)]
pub struct RecordArgs {
    /// Directory of the ring and string table (default: IB_STREAM_SHM_DIR).
    #[arg(long)]
    pub ring_dir: Option<PathBuf>,
    /// Storage root (default: IB_STREAM_STORAGE_PATH).
    #[arg(long)]
    pub storage: Option<PathBuf>,
    /// Stop waiting for the ring to appear after this many seconds (default: wait forever).
    #[arg(long)]
    pub ring_wait_secs: Option<u64>,
    /// Store one heartbeat record a minute instead of every one (the engine publishes one a
    /// second). Smaller history, but `storage validate` then reports the skipped heartbeat
    /// sequences as uncovered; by default every sequence is accounted for.
    #[arg(long)]
    pub thin_heartbeats: bool,
}

/// Everything the recorder needs.
#[derive(Clone, Debug)]
pub struct RecorderConfig {
    /// The ring file.
    pub ring_path: PathBuf,
    /// The string table file.
    pub strings_path: PathBuf,
    /// Storage root.
    pub storage_root: PathBuf,
    /// Formats written.
    pub formats: Vec<Format>,
    /// Flush interval.
    pub flush_interval: Duration,
    /// fsync policy.
    pub fsync: FsyncPolicy,
    /// Days of JSON Lines history kept (0: forever).
    pub jsonl_retention_days: u32,
    /// Days of binary history kept (0: forever).
    pub binary_retention_days: u32,
    /// How long to wait for the ring file (None: forever).
    pub ring_wait: Option<Duration>,
    /// Pause between attempts to write again after a write error.
    pub retry_interval: Duration,
    /// Flush early when this many bytes are staged.
    pub max_staged_bytes: u64,
    /// Heartbeat records are stored at most once per this interval (zero: all of them).
    pub heartbeat_keep_interval: Duration,
    /// Register in the ring's reader registry (off when the ring is another environment's,
    /// in migration: registering writes into its shm directory).
    pub register_reader: bool,
}

impl RecorderConfig {
    /// From the settings and the command's flags.
    pub fn from_settings(s: &Settings, args: &RecordArgs) -> RecorderConfig {
        // Migration records the upstream environment's ring.
        let shm = args
            .ring_dir
            .clone()
            .unwrap_or_else(|| s.ring_dir().to_path_buf());
        let mut formats = Vec::new();
        if s.storage_formats.jsonl {
            formats.push(Format::Jsonl);
        }
        if s.storage_formats.binary {
            formats.push(Format::Binary);
        }
        RecorderConfig {
            ring_path: shm.join(ib_stream_ipc::ring::RING_FILE_NAME),
            strings_path: shm.join(STRINGS_FILE_NAME),
            storage_root: args
                .storage
                .clone()
                .unwrap_or_else(|| s.storage_path.clone()),
            formats,
            flush_interval: s.flush_interval,
            fsync: s.fsync,
            jsonl_retention_days: s.jsonl_retention_days,
            binary_retention_days: s.binary_retention_days,
            ring_wait: args.ring_wait_secs.map(Duration::from_secs),
            retry_interval: Duration::from_millis(500),
            max_staged_bytes: 8 << 20,
            heartbeat_keep_interval: if args.thin_heartbeats {
                HEARTBEAT_KEEP_INTERVAL
            } else {
                Duration::ZERO
            },
            register_reader: !s.ring_read_only(),
        }
    }

    fn retention_days(&self, f: Format) -> u32 {
        match f {
            Format::Jsonl => self.jsonl_retention_days,
            Format::Binary => self.binary_retention_days,
        }
    }
}

/// Why the recorder stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// The ring (or string table) could not be opened.
    #[error("ring: {0}")]
    Ipc(#[from] IpcError),
    /// Storage could not be prepared (repair, checkpoint).
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// Asked to stop before the ring appeared.
    #[error("stopped while waiting for the ring")]
    Stopped,
    /// The ring did not appear in time.
    #[error("no ring at {path} after {waited:?}")]
    NoRing {
        /// The ring file.
        path: PathBuf,
        /// How long the recorder waited.
        waited: Duration,
    },
}

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Records read from the ring.
    pub records_read: u64,
    /// Records lost to overruns.
    pub records_lost: u64,
    /// The last sequence accounted for.
    pub last_seq: u64,
}

/// A recorder-made gap record: `seq` = first sequence lost (a number no stored record has),
/// `body = [first, last (UNDEF = to the end of the epoch), t0, t1]`, `ts_recv` = `now`.
pub fn gap_record(reason: GapReason, first: u64, last: i64, t0: i64, t1: i64, now: i64) -> Record {
    Record {
        seq: first,
        ts_recv: now,
        tick_type: reason as u8,
        body: [first as i64, last, t0, t1],
        ..Record::new(RecordKind::Gap)
    }
}

/// Without a checkpoint (a new storage root, or one whose checkpoint was deleted): if the
/// formats already hold records of the ring's epoch, resume after the lowest of their highest
/// sequences, cutting the others back to it, so nothing is written twice.
fn derive_checkpoint(cfg: &RecorderConfig, epoch: u64) -> Result<Option<Checkpoint>, StorageError> {
    let mut through: Option<u64> = None;
    for f in &cfg.formats {
        if let Some(s) = repair::stored_through(&cfg.storage_root, *f, epoch)? {
            through = Some(through.map_or(s, |t| t.min(s)));
        }
    }
    Ok(through.map(|last_seq| {
        tracing::warn!(
            epoch = format!("{epoch:016x}"),
            last_seq,
            "no checkpoint but recorded data of this epoch: resuming after it"
        );
        Checkpoint {
            version: CHECKPOINT_VERSION,
            epoch: format!("{epoch:016x}"),
            last_seq,
            last_ts_ns: 0,
            scan_from_hour_ns: i64::MIN,
            epoch_complete: false,
            owed_gaps: Vec::new(),
            writer_pid: std::process::id(),
            written_ns: now_ns(),
        }
    }))
}

/// The ring's string table as a [`StringLookup`].
struct RingStrings<'a>(Option<&'a StringTableReader>);

impl StringLookup for RingStrings<'_> {
    fn lookup(&self, id: u32) -> Option<&[u8]> {
        if id == 0 {
            return Some(&[]);
        }
        self.0?.get(id)
    }
}

/// The recorder's state.
#[derive(Debug)]
pub struct Recorder {
    /// Only one recorder writes a storage root (`<root>/recorder.lock`).
    _lock: WriterLock,
    cfg: RecorderConfig,
    /// Follows the ring across laps and writer restarts (the one follower of `ipc`).
    reader: RingFollower,
    strings: Option<StringTableReader>,
    epoch: u64,
    sinks: Vec<Sink>,
    window: Option<Window>,
    last_seq: u64,
    last_ts: i64,
    last_hb_kept_ns: i64,
    epoch_complete: bool,
    last_flush: Instant,
    last_sync: Instant,
    /// The last checkpoint stored (an unchanged one is not rewritten).
    last_ckpt: Option<(Checkpoint, bool)>,
    status: RecorderStatus,
}

fn open_strings(path: &Path, epoch: u64) -> Option<StringTableReader> {
    match StringTableReader::open(path) {
        Ok(r) if r.belongs_to(epoch) => Some(r),
        Ok(_) => None,
        Err(_) => None,
    }
}

impl Recorder {
    /// Opens the ring (waiting for it), repairs storage to the checkpoint and positions the
    /// reader right after it. `stop` ends the wait early.
    pub fn start(cfg: RecorderConfig, stop: &AtomicBool) -> Result<Recorder, RecorderError> {
        // 0700 (tightened when older): history is readable by this user only.
        crate::storage::private_fs::create_private_dir_all(&cfg.storage_root)
            .map_err(|e| StorageError::io(&cfg.storage_root, e))?;
        let lock = WriterLock::acquire(&cfg.storage_root.join("recorder"), &ShmOptions::default())?;
        let ckpt = Checkpoint::load(&cfg.storage_root)?;
        let waited = Instant::now();
        let mut reader = loop {
            match RingReader::open(&cfg.ring_path, StartAt::Newest) {
                Ok(r) => break r,
                Err(IpcError::Missing { .. }) | Err(IpcError::TooSmall { .. })
                    if !stop.load(Ordering::Relaxed)
                        && cfg.ring_wait.is_none_or(|w| waited.elapsed() < w) =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(IpcError::Missing { .. } | IpcError::TooSmall { .. })
                    if stop.load(Ordering::Relaxed) =>
                {
                    return Err(RecorderError::Stopped);
                }
                Err(IpcError::Missing { .. }) => {
                    return Err(RecorderError::NoRing {
                        path: cfg.ring_path.clone(),
                        waited: waited.elapsed(),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        };
        if cfg.register_reader {
            let registered = reader.register("recorder");
            tracing::debug!("ring reader: {registered}");
        }
        let epoch = reader.info().epoch;
        let ckpt = match ckpt {
            Some(c) => Some(c),
            None => derive_checkpoint(&cfg, epoch)?,
        };

        // Repair: cut every format back to what the checkpoint accounts for.
        let mut owed_by_format: Vec<(Format, Vec<Owed>)> =
            cfg.formats.iter().map(|f| (*f, Vec::new())).collect();
        if let Some(ck) = &ckpt {
            let ck_epoch = ck.epoch().unwrap_or(0);
            for (format, owed) in &mut owed_by_format {
                owed.extend(
                    ck.owed_gaps
                        .iter()
                        .filter(|g| g.format() == Some(*format))
                        .filter_map(Owed::from_checkpoint),
                );
                let mut cuts = vec![(ck_epoch, ck.last_seq, ck.scan_from_hour_ns)];
                for o in owed.iter() {
                    match cuts.iter_mut().find(|c| c.0 == o.epoch) {
                        Some(c) => c.1 = c.1.min(o.from_seq.saturating_sub(1)),
                        None => {
                            cuts.push((o.epoch, o.from_seq.saturating_sub(1), hour_start(o.t0_ns)))
                        }
                    }
                }
                for (e, keep, from_hour) in cuts {
                    let r = repair::truncate_after(&cfg.storage_root, *format, e, keep, from_hour)?;
                    if r.bytes_removed > 0 {
                        tracing::info!(
                            format = format.dir_name(),
                            epoch = format!("{e:016x}"),
                            keep_through_seq = keep,
                            files_truncated = r.files_truncated,
                            files_removed = r.files_removed,
                            bytes_removed = r.bytes_removed,
                            "repaired storage to the checkpoint"
                        );
                    }
                }
            }
        }
        // Formats that are no longer configured keep what they owe in the checkpoint only
        // while they are configured; their owed gaps are reported and dropped here.
        if let Some(ck) = &ckpt {
            for g in &ck.owed_gaps {
                if !cfg.formats.iter().any(|f| g.format() == Some(*f)) {
                    tracing::warn!(format = %g.format, from_seq = g.from_seq, to_seq = g.to_seq,
                        "format no longer configured: its owed gap is not written");
                }
            }
        }
        let sinks = owed_by_format
            .into_iter()
            .map(|(f, owed)| Sink::new(f, &cfg.storage_root, owed, cfg.retry_interval))
            .collect();

        let now = Instant::now();
        let mut rec = Recorder {
            _lock: lock,
            strings: open_strings(&cfg.strings_path, epoch),
            status: RecorderStatus {
                pid: std::process::id(),
                started_ns: now_ns(),
                ring: cfg.ring_path.clone(),
                ..RecorderStatus::default()
            },
            cfg,
            reader: {
                let start = match &ckpt {
                    Some(ck) if ck.epoch() == Some(epoch) => ck.last_seq + 1,
                    _ => 1,
                };
                reader.reopen(StartAt::Seq(start))?;
                RingFollower::new(
                    reader,
                    FollowConfig {
                        check_every: Duration::from_millis(50),
                        stale_after: Duration::from_secs(5),
                    },
                )
            },
            epoch,
            sinks,
            window: None,
            last_seq: 0,
            last_ts: 0,
            last_hb_kept_ns: i64::MIN,
            epoch_complete: false,
            last_flush: now,
            last_sync: now,
            last_ckpt: None,
        };
        if rec.reader.info().epoch != epoch {
            // The writer restarted between the two opens: start over on the new ring.
            let cfg = rec.cfg.clone();
            drop(rec);
            return Recorder::start(cfg, stop);
        }
        match &ckpt {
            Some(ck) if ck.epoch() == Some(epoch) => {
                rec.last_seq = ck.last_seq;
                rec.last_ts = ck.last_ts_ns;
            }
            Some(ck) if !ck.epoch_complete => {
                // The writer restarted while we were away: what it wrote after our
                // checkpoint is gone with its ring.
                let old = ck.epoch().unwrap_or(0);
                let t = now_ns();
                let gap = gap_record(
                    GapReason::WriterRestart,
                    ck.last_seq + 1,
                    UNDEF_I64,
                    ck.last_ts_ns,
                    t,
                    t,
                );
                tracing::warn!(old_epoch = %ck.epoch, from_seq = ck.last_seq + 1,
                    "ring writer restarted while the recorder was down: recording a gap");
                // The checkpoint this flush writes says "old epoch done through the gap", so
                // a crash right after it neither cuts the old history nor repeats the gap.
                rec.epoch = old;
                rec.last_seq = ck.last_seq + 1;
                rec.last_ts = ck.last_ts_ns;
                rec.epoch_complete = true;
                rec.push_all(&gap);
                Window::extend(&mut rec.window, old, ck.last_seq + 1, ck.last_seq + 1, t);
                rec.flush(Instant::now(), true);
                rec.epoch = epoch;
                rec.last_seq = 0;
                rec.epoch_complete = false;
                for s in &mut rec.sinks {
                    s.close_other_epochs(epoch, rec.cfg.fsync != FsyncPolicy::Never);
                }
            }
            _ => {}
        }
        rec.status.epoch = format!("{epoch:016x}");
        rec.checkpoint();
        tracing::info!(
            ring = %rec.cfg.ring_path.display(),
            storage = %rec.cfg.storage_root.display(),
            epoch = %rec.status.epoch,
            resume_at = rec.reader.next_seq(),
            formats = ?rec.cfg.formats.iter().map(|f| f.dir_name()).collect::<Vec<_>>(),
            "recorder started"
        );
        Ok(rec)
    }

    fn push_all(&mut self, rec: &Record) {
        let lookup = RingStrings(self.strings.as_ref());
        for s in &mut self.sinks {
            s.push(rec, self.epoch, &lookup);
        }
    }

    fn on_record(&mut self, rec: &Record) {
        self.status.records_read += 1;
        Window::extend(&mut self.window, self.epoch, rec.seq, rec.seq, rec.ts_recv);
        self.last_seq = rec.seq;
        self.last_ts = rec.ts_recv;
        match rec.kind() {
            None => {
                self.status.unknown_records += 1;
                tracing::warn!(
                    seq = rec.seq,
                    kind = rec.kind,
                    "record of unknown kind not stored"
                );
                return;
            }
            Some(RecordKind::Heartbeat) => {
                let keep_ns = self.cfg.heartbeat_keep_interval.as_nanos() as i64;
                if rec.ts_recv.saturating_sub(self.last_hb_kept_ns) < keep_ns {
                    self.status.heartbeats_skipped += 1;
                    return;
                }
                self.last_hb_kept_ns = rec.ts_recv;
            }
            Some(_) => {}
        }
        if rec.kind == RecordKind::L1String as u8 || rec.kind <= RecordKind::TbtAllLast as u8 {
            // A string interned after we opened a missing table: try the table again.
            if self.strings.is_none() {
                self.strings = open_strings(&self.cfg.strings_path, self.epoch);
            }
        }
        self.push_all(rec);
    }

    fn on_lost(&mut self, first: u64, last: u64) {
        let t = now_ns();
        self.status.overruns += 1;
        self.status.records_lost += last - first + 1;
        tracing::warn!(
            first_seq = first,
            last_seq = last,
            count = last - first + 1,
            "recorder fell more than a ring behind: recording a gap"
        );
        let gap = gap_record(
            GapReason::ReaderOverrun,
            first,
            last as i64,
            self.last_ts,
            t,
            t,
        );
        Window::extend(&mut self.window, self.epoch, first, last, t);
        for s in &mut self.sinks {
            s.note_lost(self.epoch, first, last, t);
        }
        self.push_all(&gap);
        self.last_seq = last;
    }

    fn staged_bytes(&self) -> u64 {
        self.sinks.iter().map(Sink::staged_bytes).sum()
    }

    /// Ends the window in every format, then writes the checkpoint.
    fn flush(&mut self, now: Instant, force_sync: bool) {
        let sync = force_sync
            || match self.cfg.fsync {
                FsyncPolicy::EachBatch => true,
                FsyncPolicy::Every(d) => now.duration_since(self.last_sync) >= d,
                FsyncPolicy::Never => false,
            };
        let window = self.window.take();
        for s in &mut self.sinks {
            s.flush(window, sync, now);
            if s.healthy() {
                s.close_older(hour_start(self.last_ts), sync);
            }
        }
        if sync {
            self.last_sync = now;
        }
        self.last_flush = now;
        self.checkpoint_with(sync);
    }

    fn checkpoint(&mut self) {
        self.checkpoint_with(self.cfg.fsync != FsyncPolicy::Never);
    }

    fn checkpoint_with(&mut self, durable: bool) {
        let mut scan_from = hour_start(self.last_ts);
        for s in &self.sinks {
            for h in s.open_hours() {
                scan_from = scan_from.min(h);
            }
        }
        let owed_gaps = self
            .sinks
            .iter()
            .flat_map(|s| s.owed().iter().map(|o| o.to_checkpoint(s.format())))
            .collect();
        let ck = Checkpoint {
            version: CHECKPOINT_VERSION,
            epoch: format!("{:016x}", self.epoch),
            last_seq: self.last_seq,
            last_ts_ns: self.last_ts,
            scan_from_hour_ns: scan_from,
            epoch_complete: self.epoch_complete,
            owed_gaps,
            writer_pid: std::process::id(),
            written_ns: now_ns(),
        };
        // Unchanged and already as durable as asked: nothing to write (an idle recorder).
        let same = self.last_ckpt.as_ref().is_some_and(|(old, old_durable)| {
            (*old_durable || !durable)
                && Checkpoint {
                    written_ns: ck.written_ns,
                    ..old.clone()
                } == ck
        });
        if same {
            return;
        }
        match ck.store(&self.cfg.storage_root, durable) {
            Ok(()) => {
                self.status.checkpoints += 1;
                self.last_ckpt = Some((ck, durable));
            }
            Err(e) => {
                if self.status.checkpoint_errors == 0 || self.status.checkpoints > 0 {
                    tracing::error!(error = %e, "checkpoint not written");
                }
                self.status.checkpoint_errors += 1;
                self.status.checkpoints = 0;
            }
        }
    }

    fn publish_status(&mut self) {
        let s = &mut self.status;
        s.updated_ns = now_ns();
        s.epoch = format!("{:016x}", self.epoch);
        s.last_seq = self.last_seq;
        s.ring_head = self.reader.head();
        s.formats = self
            .sinks
            .iter()
            .map(|k| FormatStatus {
                format: k.format().dir_name().into(),
                healthy: k.healthy(),
                stats: k.stats.clone(),
                owed_gaps: k
                    .owed()
                    .iter()
                    .map(|o| o.to_checkpoint(k.format()))
                    .collect(),
            })
            .collect();
        s.healthy = s.formats.iter().all(|f| f.healthy) && s.checkpoints > 0;
        if let Err(e) = s.store(&self.cfg.storage_root) {
            tracing::debug!(error = %e, "status not written");
        }
    }

    /// The follower moved to a restarted writer's ring (everything of the old one is read):
    /// record the restart's loss in the old epoch, close its segments and go on in the new
    /// one from its first record.
    fn on_restart(&mut self, r: WriterRestart) {
        let now = Instant::now();
        if let Some(first) = r.lost_from() {
            // The old writer never said it stopped (killed, crashed): whatever it received
            // after its last record and never published is unknown. Say so, exactly as when
            // the restart happens while the recorder is down: `[last_seq + 1, MAX]`, from the
            // last record's receive time to now.
            let t = now_ns();
            let gap = r.gap_record(self.last_ts, t);
            tracing::warn!(
                epoch = format!("{:016x}", self.epoch),
                from_seq = first,
                "ring writer replaced without a clean stop: recording a gap"
            );
            Window::extend(&mut self.window, self.epoch, first, first, t);
            self.push_all(&gap);
            self.last_seq = first;
        }
        // Everything of the old ring is read (a replaced ring has no writer any more), so
        // this checkpoint marks it complete: a crash before the next one adds no gap.
        self.epoch_complete = true;
        self.flush(now, false);
        let new_epoch = r.new_epoch;
        tracing::info!(
            old = format!("{:016x}", self.epoch),
            new = format!("{new_epoch:016x}"),
            "ring writer restarted: following the new epoch"
        );
        for s in &mut self.sinks {
            s.close_other_epochs(new_epoch, self.cfg.fsync != FsyncPolicy::Never);
        }
        self.epoch = new_epoch;
        self.strings = open_strings(&self.cfg.strings_path, new_epoch);
        self.last_seq = 0;
        self.epoch_complete = false;
        self.checkpoint();
    }

    /// One event of the follower.
    fn on_event(&mut self, ev: FollowEvent) {
        match ev {
            FollowEvent::Lost {
                first_seq,
                last_seq,
                ..
            } => self.on_lost(first_seq, last_seq),
            FollowEvent::WriterRestart(r) => self.on_restart(r),
            FollowEvent::WriterState(WriterStatus::Stopped) if !self.epoch_complete => {
                tracing::info!("ring writer stopped cleanly; everything recorded");
                self.epoch_complete = true;
                self.checkpoint();
            }
            FollowEvent::WriterState(st) => tracing::debug!(?st, "ring writer state"),
        }
    }

    /// Deletes whole hours older than each format's retention, except hours in use.
    fn apply_retention(&mut self) {
        let now = now_ns();
        for s in &self.sinks {
            let days = self.cfg.retention_days(s.format());
            let in_use: Vec<i64> = s.open_hours().collect();
            match retention::expire(&self.cfg.storage_root, s.format(), days, now, &in_use) {
                Ok((removed, errors)) => {
                    for dir in removed {
                        tracing::info!(dir = %dir.display(), "retention: removed an expired hour");
                    }
                    for e in errors {
                        tracing::warn!(error = %e, "retention failed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "retention failed"),
            }
        }
    }

    /// Runs until `stop` is set, then flushes, closes every segment and checkpoints.
    pub fn run(mut self, stop: &AtomicBool) -> Result<RunSummary, RecorderError> {
        let mut buf = vec![Record::ZERO; 4096];
        let mut last_status = Instant::now() - Duration::from_secs(10);
        let mut last_strings_check = Instant::now();
        let mut last_retention = Instant::now() - Duration::from_secs(3600);
        self.apply_retention();
        last_retention = last_retention.max(Instant::now());
        while !stop.load(Ordering::Relaxed) {
            let b = self.reader.read_batch(&mut buf);
            for r in &buf[..b.records] {
                self.on_record(r);
            }
            let idle = b.records == 0 && b.event.is_none();
            if let Some(ev) = b.event {
                self.on_event(ev);
            }
            let now = Instant::now();
            if now.duration_since(self.last_flush) >= self.cfg.flush_interval
                || self.staged_bytes() >= self.cfg.max_staged_bytes
            {
                self.flush(now, false);
            }
            if idle && now.duration_since(last_strings_check) >= Duration::from_millis(50) {
                last_strings_check = now;
                if let Some(e) = self.reader.last_error() {
                    tracing::debug!(error = %e, "restarted ring not readable yet");
                }
                if self.strings.is_none() {
                    self.strings = open_strings(&self.cfg.strings_path, self.epoch);
                }
            }
            if now.duration_since(last_status) >= Duration::from_millis(250) {
                last_status = now;
                self.publish_status();
            }
            if now.duration_since(last_retention) >= Duration::from_secs(600) {
                last_retention = now;
                self.apply_retention();
            }
            if idle {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Final flush: try once more to pay what is owed, then close everything.
        let now = Instant::now();
        self.flush(now, true);
        let sync = self.cfg.fsync != FsyncPolicy::Never;
        for s in &mut self.sinks {
            if s.healthy() {
                s.close_older(i64::MAX, sync);
            }
        }
        self.checkpoint();
        self.publish_status();
        tracing::info!(
            records_read = self.status.records_read,
            records_lost = self.status.records_lost,
            last_seq = self.last_seq,
            "recorder stopped"
        );
        Ok(RunSummary {
            records_read: self.status.records_read,
            records_lost: self.status.records_lost,
            last_seq: self.last_seq,
        })
    }

    /// Reads and stages whatever the ring holds now, following a stopped or restarted
    /// writer (checked when the ring has nothing more, whatever the time since the last
    /// check), then flushes (for benchmarks and tests that drive the recorder step by step).
    /// Returns the records read.
    pub fn drain_once(&mut self) -> u64 {
        let mut buf = vec![Record::ZERO; 4096];
        let mut n = 0;
        loop {
            self.reader.check_writer_now();
            let b = self.reader.read_batch(&mut buf);
            for r in &buf[..b.records] {
                self.on_record(r);
            }
            n += b.records as u64;
            let idle = b.records == 0 && b.event.is_none();
            if let Some(ev) = b.event {
                self.on_event(ev);
            }
            if idle {
                break;
            }
            if self.staged_bytes() >= self.cfg.max_staged_bytes {
                self.flush(Instant::now(), false);
            }
        }
        self.flush(Instant::now(), false);
        n
    }
}

/// `ib-stream record`: runs the recorder until SIGINT or SIGTERM.
pub fn run_cli(settings: &Settings, args: &RecordArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&settings.log_level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    // Every open segment holds one to three files (hundreds of instruments and kinds): lift
    // the soft limit on open files to the hard one.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(open_files_limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    // A file size limit must surface as EFBIG (a write error we record and recover from),
    // not kill the process.
    let xfsz = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGXFSZ, Arc::clone(&xfsz))?;
    let cfg = RecorderConfig::from_settings(settings, args);
    if cfg.formats.is_empty() {
        anyhow::bail!("no storage format configured (IB_STREAM_STORAGE_FORMATS)");
    }
    let rec = match Recorder::start(cfg, &stop) {
        Ok(r) => r,
        Err(RecorderError::Stopped) => {
            tracing::info!("stopped before the ring appeared");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    rec.run(&stop)?;
    Ok(())
}
