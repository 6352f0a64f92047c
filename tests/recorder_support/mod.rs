//! Shared pieces of the recorder tests: a private directory, a synthetic engine publishing a
//! deterministic mix of records into a real ring file at a steady rate, and the recorder
//! as a real child process.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ib_stream::recorder::status::RecorderStatus;
use ib_stream_ipc::{
    Quote, Record, RecordKind, RingWriter, ShmOptions, StringTableConfig, StringTableWriter,
    SubState, Trade, flags,
};

/// A private directory for one test, removed at the end when the test passed.
pub struct TestDir {
    pub root: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let root =
            std::env::temp_dir().join(format!("ibs-test-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(root.join("shm")).unwrap();
        std::fs::create_dir_all(root.join("storage")).unwrap();
        TestDir { root }
    }
    pub fn shm(&self) -> PathBuf {
        self.root.join("shm")
    }
    pub fn storage(&self) -> PathBuf {
        self.root.join("storage")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        } else {
            eprintln!("test files kept in {}", self.root.display());
        }
    }
}

pub const EXCHANGES: [&str; 3] = ["NASDAQ", "ARCA", "IEX"];
pub const CONDITIONS: [&str; 3] = ["", "T", "I F"];

/// The record the synthetic engine publishes as sequence `seq` (1-based), given the ids it
/// interned for [`EXCHANGES`] and [`CONDITIONS`]. Deterministic, so stored records can be
/// checked field by field.
pub fn synth_record(base_ns: i64, seq: u64, ex_ids: &[u32; 3], cond_ids: &[u32; 3]) -> Record {
    let i = seq - 1;
    let ts = base_ns + i as i64 * 20_000;
    let price = 18_000_000_000_000 + (i as i64 % 1000) * 250_000_000;
    let mut r = match i % 10 {
        0..=4 => Record::quote(
            100 + (i % 3) as u32,
            ts - 1_000,
            Quote {
                bid_price: price,
                ask_price: price + 250_000_000,
                bid_size: (i as i64 % 7 + 1) * 100_000_000,
                ask_size: (i as i64 % 5 + 1) * 100_000_000,
            },
        ),
        5 | 6 => Record::trade(
            false,
            100,
            (ts / 1_000_000_000) * 1_000_000_000,
            Trade {
                price,
                size: 150_000_000,
                exchange_id: ex_ids[(i % 3) as usize],
                conditions_id: cond_ids[((i / 3) % 3) as usize],
            },
        ),
        7 => {
            let mut r = Record::trade(
                true,
                101,
                ts - 5_000,
                Trade {
                    price,
                    size: 1_000_000,
                    exchange_id: ex_ids[((i / 7) % 3) as usize],
                    conditions_id: 0,
                },
            );
            if i.is_multiple_of(3) {
                r.flags |= flags::PAST_LIMIT;
            }
            r
        }
        8 => Record::mid_point(102, ts, price + 125_000_000),
        _ if i % 100 == 9 => Record {
            instrument_id: 100,
            tick_type: SubState::Active as u8,
            body: [RecordKind::TbtBidAsk as i64, 0, 7, 1],
            ..Record::new(RecordKind::Subscription)
        },
        _ => Record {
            instrument_id: 100,
            tick_type: 1,
            body: [price, 300_000_000, 0, 0],
            ..Record::new(RecordKind::L1Price)
        },
    };
    r.seq = seq;
    r.ts_recv = ts;
    r
}

/// A thread playing the engine: a ring file plus string table in `shm`, `batch` records
/// about every `pause`.
pub struct SyntheticEngine {
    stop: Arc<AtomicBool>,
    published: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
    pub base_ns: i64,
    pub epoch: u64,
    pub ex_ids: [u32; 3],
    pub cond_ids: [u32; 3],
}

impl SyntheticEngine {
    pub fn start(shm: &Path, capacity: u64, batch: usize, pause: Duration) -> SyntheticEngine {
        let opts = ShmOptions {
            prefault: false,
            ..ShmOptions::default()
        };
        let mut w = RingWriter::create(&shm.join("ticks.ring"), capacity, &opts).unwrap();
        let epoch = w.info().epoch;
        let cfg = StringTableConfig {
            max_entries: 1024,
            max_bytes: 64 * 1024,
            max_len: 256,
        };
        let mut st = StringTableWriter::create(&shm.join("strings"), epoch, &cfg, &opts).unwrap();
        let ex_ids = EXCHANGES.map(|s| st.intern(s.as_bytes()).unwrap());
        let cond_ids = CONDITIONS.map(|s| st.intern(s.as_bytes()).unwrap());
        let base_ns = ib_stream::storage::now_ns();
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        let (s2, p2) = (Arc::clone(&stop), Arc::clone(&published));
        let handle = std::thread::spawn(move || {
            let _keep = st;
            let mut buf = Vec::with_capacity(batch);
            while !s2.load(Ordering::Relaxed) {
                buf.clear();
                let next = w.last_seq() + 1;
                for k in 0..batch as u64 {
                    buf.push(synth_record(base_ns, next + k, &ex_ids, &cond_ids));
                }
                let last = w.publish_batch(&buf);
                w.heartbeat(ib_stream::storage::now_ns() as u64);
                p2.store(last, Ordering::Release);
                std::thread::sleep(pause);
            }
        });
        SyntheticEngine {
            stop,
            published,
            handle: Some(handle),
            base_ns,
            epoch,
            ex_ids,
            cond_ids,
        }
    }

    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Stops publishing (the ring stays, marked stopped) and returns the last sequence.
    pub fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        self.published()
    }

    pub fn expected(&self, seq: u64) -> Record {
        synth_record(self.base_ns, seq, &self.ex_ids, &self.cond_ids)
    }
}

impl Drop for SyntheticEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `ib-stream record` on the test's ring and storage.
pub fn spawn_recorder(dir: &TestDir, extra: &[&str]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.root.join("recorder.log"))
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ib-stream"));
    cmd.env_clear()
        .arg("--set")
        .arg(format!("IB_STREAM_SHM_DIR={}", dir.shm().display()))
        .arg("--set")
        .arg(format!(
            "IB_STREAM_STORAGE_PATH={}",
            dir.storage().display()
        ))
        .args([
            "--set",
            "IB_STREAM_FLUSH_MS=20",
            "--set",
            "IB_STREAM_FSYNC=never",
        ]);
    for e in extra {
        cmd.arg(e);
    }
    cmd.args(["record", "--ring-wait-secs", "10"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    cmd.spawn().expect("spawn ib-stream record")
}

/// SIGTERM, then waits (bounded) for a clean exit.
pub fn terminate(mut child: Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM failed");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "recorder exited with {st}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("recorder did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls the recorder's status until `pred` holds (bounded).
pub fn wait_status(
    storage: &Path,
    what: &str,
    limit: Duration,
    mut pred: impl FnMut(&RecorderStatus) -> bool,
) -> RecorderStatus {
    let deadline = Instant::now() + limit;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = RecorderStatus::load(storage) {
            if pred(&st) {
                return st;
            }
            last = Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}; last status: {last:#?}");
}

/// Checks recorded history against what the engine published up to `last`:
/// validation passes in both formats (no duplicate, every missing sequence inside a gap),
/// every stored market or system record is exactly the one published, and the two formats
/// hold the same records (each binary segment renders to its JSONL twin byte for byte).
/// Returns the gap records found (binary format).
pub fn check_history(storage: &Path, engine: &SyntheticEngine, last: u64) -> Vec<Record> {
    use ib_stream::storage::binary::{BinarySegment, segment_as_jsonl};
    use ib_stream::storage::layout::all_segments;
    use ib_stream::storage::{Format, validate::validate};

    let report = validate(storage).unwrap();
    assert_eq!(report.formats.len(), 2, "both formats written");
    for (format, r) in &report.formats {
        let problems: Vec<_> = r.problems.iter().take(10).collect();
        assert!(problems.is_empty(), "{format:?}: {problems:#?}");
        let e = r
            .epochs
            .get(&engine.epoch)
            .unwrap_or_else(|| panic!("{format:?}: nothing of epoch {:x}", engine.epoch));
        assert_eq!(r.epochs.len(), 1, "{format:?}: one epoch only");
        assert_eq!(e.duplicates, 0, "{format:?}: duplicated sequences");
        assert!(
            e.uncovered.is_empty(),
            "{format:?}: sequences missing without a gap: {:?}",
            &e.uncovered[..e.uncovered.len().min(10)]
        );
        assert_eq!(
            e.last_seq, last,
            "{format:?}: history ends at the last published record"
        );
        assert!(r.is_ok());
    }

    let bin = all_segments(storage, Format::Binary).unwrap();
    let json = all_segments(storage, Format::Jsonl).unwrap();
    assert_eq!(
        bin.iter().map(|s| s.key).collect::<Vec<_>>(),
        json.iter().map(|s| s.key).collect::<Vec<_>>(),
        "same segments in both formats"
    );
    let mut gaps = Vec::new();
    let mut stored = 0u64;
    for (b, j) in bin.iter().zip(&json) {
        // Each format records its own write errors (a format that failed owes a gap the
        // other does not), so those gap lines are compared apart from the rest.
        let own = |bytes: Vec<u8>| -> Vec<u8> {
            bytes
                .split_inclusive(|&c| c == b'\n')
                .filter(|l| !l.windows(17).any(|w| w == b"\"r\":\"write_error\""))
                .flatten()
                .copied()
                .collect()
        };
        let rendered = own(segment_as_jsonl(&b.path).unwrap());
        let jsonl = own(std::fs::read(&j.path).unwrap());
        assert!(
            rendered == jsonl,
            "{} and {} differ",
            b.path.display(),
            j.path.display()
        );
        for r in BinarySegment::read(&b.path).unwrap().records {
            if r.kind() == Some(RecordKind::Gap) {
                gaps.push(r);
            } else {
                stored += 1;
                assert_eq!(
                    r,
                    engine.expected(r.seq),
                    "stored record differs from the published one"
                );
            }
        }
    }
    let gap_seqs: u64 = gaps
        .iter()
        .map(|g| (g.body[1].min(last as i64) - g.body[0] + 1) as u64)
        .sum();
    assert!(
        stored + gap_seqs >= last,
        "{stored} stored + {gap_seqs} in gaps < {last} published"
    );
    gaps
}
