//! `ib-stream tail`: records from the ring as JSON lines (the compact tick JSON of
//! [`crate::tickjson`]), filtered by contract and kind, from the newest or the oldest record.
//! It reads through [`crate::ipc::RingFollower`]: a lapped reader prints a `reader_overrun` gap
//! with the lost sequence range; a restarted engine prints the `writer_restart` gap of
//! [`crate::ipc::WriterRestart::gap_record`] (`from` = the old run's last record + 1, `to`
//! open-ended unless the old engine stopped cleanly) and the tool follows the new epoch.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::ipc::{
    Follow, FollowConfig, FollowEvent, GapReason, Record, RecordKind, RingFollower, RingReader,
    StartAt, StringTableReader,
};
use crate::tickjson::{self, StringLookup};

/// Options of `ib-stream tail`.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// Only records of these conIds (repeatable; system records without a contract always pass
    /// unless --kind excludes them).
    #[arg(long = "con-id")]
    pub con_ids: Vec<u32>,
    /// Only these kinds (repeatable): last, all_last, bid_ask, mid_point, l1_price, l1_size,
    /// l1_generic, l1_string, gap, connection, subscription, heartbeat.
    #[arg(long = "kind", value_parser = parse_kind)]
    pub kinds: Vec<RecordKind>,
    /// Start from the oldest record still in the ring instead of the next one published.
    #[arg(long)]
    pub oldest: bool,
    /// Stop after printing this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Wait this long for the ring to appear, in seconds. By default tail waits 10 s only while
    /// an `ib-stream up` of the environment is starting it, and otherwise fails at once.
    #[arg(long)]
    pub wait: Option<f64>,
    /// Read without registering in the ring's reader registry (set when the ring is another
    /// environment's, which is never written to).
    #[arg(skip)]
    pub unregistered: bool,
}

fn parse_kind(s: &str) -> Result<RecordKind, String> {
    RecordKind::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = RecordKind::ALL.iter().map(|k| k.name()).collect();
        format!("`{s}` is not a record kind ({})", names.join(", "))
    })
}

/// Why tail stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The ring could not be opened (the source names the file and what to do).
    #[error("{source}")]
    Open {
        /// The ring file.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::ipc::IpcError,
    },
    /// Writing to the output failed (a closed pipe ends tail quietly instead).
    #[error("write: {0}")]
    Write(#[from] std::io::Error),
}

/// Opens the ring, waiting for it only when asked to or while an `up` of the environment is
/// starting it, and saying on stderr what it waits for: a tail of an environment that is not
/// running fails at once, with the ring error alone.
fn open_ring(
    dir: &Path,
    path: &Path,
    start: StartAt,
    wait: Option<f64>,
) -> Result<RingReader, TailError> {
    let open = |wait: Duration| {
        RingReader::open_wait(path, start, wait, Duration::from_millis(20)).map_err(|source| {
            TailError::Open {
                path: path.to_path_buf(),
                source,
            }
        })
    };
    let (secs, why) = match (wait, crate::up::running_up(dir)) {
        (Some(s), _) => (s.max(0.0), String::new()),
        (None, Some(pid)) => (
            10.0,
            format!(" (`ib-stream up`, pid {pid}, is starting it)"),
        ),
        (None, None) => (0.0, String::new()),
    };
    if secs > 0.0 && !path.exists() {
        eprintln!(
            "tail: waiting up to {secs} s for the engine's ring {}{why}",
            path.display()
        );
    }
    open(Duration::from_secs_f64(secs))
}

/// The string table as the JSON encoder's lookup (missing table: ids print as `#id`).
struct TableLookup(Option<StringTableReader>);

impl StringLookup for TableLookup {
    fn lookup(&self, id: u32) -> Option<&[u8]> {
        if id == 0 {
            return Some(&[]);
        }
        self.0.as_ref()?.get(id)
    }
}

fn open_strings(dir: &Path, epoch: u64) -> TableLookup {
    TableLookup(
        StringTableReader::open(&dir.join(ib_stream_ipc::STRINGS_FILE_NAME))
            .ok()
            .filter(|t| t.belongs_to(epoch)),
    )
}

/// The filter of a tail.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// conIds (empty: all).
    pub con_ids: Vec<u32>,
    /// Kinds (empty: all).
    pub kinds: Vec<RecordKind>,
}

impl Filter {
    /// True when `rec` passes.
    pub fn pass(&self, rec: &Record) -> bool {
        let kind_ok = self.kinds.is_empty() || rec.kind().is_some_and(|k| self.kinds.contains(&k));
        let con_ok = self.con_ids.is_empty()
            || rec.instrument_id == 0
            || self.con_ids.contains(&rec.instrument_id);
        kind_ok && con_ok
    }
}

fn gap_line(rec: &Record, out: &mut Vec<u8>) {
    tickjson::encode(rec, &crate::tickjson::NoStrings, out);
    out.push(b'\n');
}

fn overrun_record(first: u64, last: u64, t0: i64) -> Record {
    let now = crate::ipc::shm::unix_time_ns() as i64;
    Record {
        seq: first,
        ts_recv: now,
        tick_type: GapReason::ReaderOverrun as u8,
        body: [first as i64, last as i64, t0, now],
        ..Record::new(RecordKind::Gap)
    }
}

/// Runs tail on the ring in `dir`, writing JSON lines to `w`.
pub fn run(dir: &Path, args: &TailArgs, w: &mut dyn Write) -> Result<(), TailError> {
    let path = dir.join(ib_stream_ipc::RING_FILE_NAME);
    let start = if args.oldest {
        StartAt::Oldest
    } else {
        StartAt::Newest
    };
    let reader = open_ring(dir, &path, start, args.wait)?;
    let mut reader = RingFollower::new(reader, FollowConfig::default());
    if !args.unregistered {
        let registered = reader.register("tail");
        tracing::debug!("ring reader: {registered}");
    }
    let mut strings = open_strings(dir, reader.info().epoch);
    let filter = Filter {
        con_ids: args.con_ids.clone(),
        kinds: args.kinds.clone(),
    };
    let started = Instant::now();
    let deadline = args
        .seconds
        .map(|s| started + Duration::from_secs_f64(s.max(0.0)));
    let mut printed = 0u64;
    let mut out = Vec::with_capacity(64 * 1024);
    let mut last_ts = 0i64;
    loop {
        if args.count.is_some_and(|c| printed >= c) || deadline.is_some_and(|d| Instant::now() >= d)
        {
            break;
        }
        match reader.poll() {
            Follow::Record(rec) => {
                last_ts = rec.ts_recv;
                if filter.pass(&rec) {
                    // Strings interned after we opened the table are visible at once (the
                    // table is shared); reopen only when it belongs to another epoch.
                    if strings.0.is_none() {
                        strings = open_strings(dir, reader.info().epoch);
                    }
                    tickjson::encode(&rec, &strings, &mut out);
                    out.push(b'\n');
                    printed += 1;
                }
            }
            Follow::Event(FollowEvent::Lost {
                first_seq,
                last_seq,
                ..
            }) => gap_line(&overrun_record(first_seq, last_seq, last_ts), &mut out),
            Follow::Event(FollowEvent::WriterRestart(r)) => {
                let now = crate::ipc::shm::unix_time_ns() as i64;
                gap_line(&r.gap_record(last_ts, now), &mut out);
                strings = open_strings(dir, r.new_epoch);
            }
            Follow::Event(FollowEvent::WriterState(st)) => {
                tracing::info!(?st, "ring writer state changed");
            }
            Follow::Empty => {
                if !out.is_empty() && flush(w, &mut out)? {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        if out.len() > 32 * 1024 && flush(w, &mut out)? {
            return Ok(());
        }
    }
    flush(w, &mut out).map(|_| ())
}

/// Writes what is buffered; `Ok(true)` when the reader of our output went away.
fn flush(w: &mut dyn Write, out: &mut Vec<u8>) -> Result<bool, TailError> {
    let res = w.write_all(out).and_then(|()| w.flush());
    out.clear();
    match res {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(true),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: RecordKind, con: u32) -> Record {
        Record {
            instrument_id: con,
            ..Record::new(kind)
        }
    }

    #[test]
    fn filter_by_contract_and_kind() {
        let all = Filter::default();
        assert!(all.pass(&rec(RecordKind::TbtLast, 5)));
        let f = Filter {
            con_ids: vec![5],
            kinds: vec![RecordKind::TbtLast, RecordKind::Gap],
        };
        assert!(f.pass(&rec(RecordKind::TbtLast, 5)));
        assert!(!f.pass(&rec(RecordKind::TbtLast, 6)));
        assert!(!f.pass(&rec(RecordKind::TbtBidAsk, 5)));
        // Records about no instrument pass the contract filter, not the kind filter.
        assert!(f.pass(&rec(RecordKind::Gap, 0)));
        assert!(!f.pass(&rec(RecordKind::Heartbeat, 0)));
    }

    #[test]
    fn tails_a_ring_from_the_oldest_with_filters() {
        let dir = std::env::temp_dir().join(format!("ib-stream-tail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = crate::ipc::RingWriter::create(
            &dir.join(ib_stream_ipc::RING_FILE_NAME),
            64,
            &crate::ipc::ShmOptions::default(),
        )
        .unwrap();
        for i in 0..10 {
            let kind = if i % 2 == 0 {
                RecordKind::TbtMidPoint
            } else {
                RecordKind::TbtBidAsk
            };
            let mut r = rec(kind, 7);
            r.body[0] = i * crate::ipc::PRICE_SCALE;
            w.publish(&r);
        }
        let args = TailArgs {
            con_ids: vec![7],
            kinds: vec![RecordKind::TbtMidPoint],
            oldest: true,
            count: Some(5),
            seconds: Some(5.0),
            wait: Some(1.0),
            unregistered: false,
        };
        let mut out = Vec::new();
        run(&dir, &args, &mut out).unwrap();
        let lines: Vec<serde_json::Value> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5);
        let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [1, 3, 5, 7, 9]);
        assert!(lines.iter().all(|l| l["tt"] == "mid_point"));
        drop(w);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn follows_a_killed_engine_to_its_new_ring_with_the_open_ended_restart_gap() {
        let dir =
            std::env::temp_dir().join(format!("ib-stream-tail-restart-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join(ib_stream_ipc::RING_FILE_NAME);
        let opts = crate::ipc::ShmOptions::default();
        let mut w = crate::ipc::RingWriter::create(&path, 64, &opts).unwrap();
        for _ in 0..3 {
            w.publish(&rec(RecordKind::TbtLast, 7));
        }
        let reg_path = dir.join(ib_stream_ipc::READERS_FILE_NAME);
        let swapper = {
            let path = path.clone();
            std::thread::spawn(move || {
                // Once tail has read all three (its registry slot says so), the engine is
                // killed (no clean stop) and a new one starts.
                for _ in 0..5000 {
                    let read = crate::ipc::ReaderRegistry::open(&reg_path)
                        .ok()
                        .is_some_and(|r| r.entries().iter().any(|e| e.position == 4));
                    if read {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                w.abandon();
                let mut w2 = crate::ipc::RingWriter::create(&path, 64, &opts).unwrap();
                w2.publish(&rec(RecordKind::TbtLast, 7));
                w2
            })
        };
        let args = TailArgs {
            con_ids: vec![],
            kinds: vec![],
            oldest: true,
            count: Some(4),
            seconds: Some(20.0),
            wait: Some(1.0),
            unregistered: false,
        };
        let mut out = Vec::new();
        run(&dir, &args, &mut out).unwrap();
        let w2 = swapper.join().unwrap();
        let lines: Vec<serde_json::Value> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5, "{lines:?}");
        let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 1]);
        let g = &lines[3];
        assert_eq!(g["tt"], "gap");
        assert_eq!(g["r"], "writer_restart");
        assert_eq!(g["from"], 4, "the old run is lost from its last record on");
        // Open-ended: UNDEF (i64::MAX), the stored format's "to the end of the run".
        assert_eq!(g["to"].as_i64(), Some(crate::ipc::UNDEF_I64), "{g}");
        drop(w2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
