//! The reader registry between real processes over real shared-memory files.
//!
//! Like `ring_processes`, this binary is its own child (`harness = false`): run normally it is
//! the test runner; each case spawns copies of itself with `IPC_READERS_ROLE=reader` that read
//! the ring as registered readers and report on stdout (`registered slot=..`,
//! `caught_up position=..`). The parent is the ring's writer and watches the registry
//! read-only, as `ib-stream top` does. Files live in a fresh directory under /dev/shm.
//!
//! `cargo test -p ib-stream-ipc --test readers_processes [-- <name filter>]`

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use ib_stream_ipc::readers::READER_SLOTS;
use ib_stream_ipc::record::RecordKind;
use ib_stream_ipc::{
    READERS_FILE_NAME, ReadOutcome, ReaderEntry, ReaderRegistry, Record, Registration, RingReader,
    RingWriter, ShmOptions, StartAt,
};

const ROLE_VAR: &str = "IPC_READERS_ROLE";
const ARGS_VAR: &str = "IPC_READERS_ARGS";
const T: Duration = Duration::from_secs(20);

// ----------------------------------------------------------------------------------------------
// The child: a registered reader.
// ----------------------------------------------------------------------------------------------

fn child_args() -> HashMap<String, String> {
    std::env::var(ARGS_VAR)
        .unwrap_or_default()
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Reads the ring at `ring` as `name`. Announces `caught_up position=<next seq>` each time it
/// has read up to `target` (or beyond); with `pause=1` it stops reading once caught up the
/// first time. Exits cleanly (freeing its slot) when the file `stop` appears.
fn role_reader() -> i32 {
    let a = child_args();
    let ring = PathBuf::from(&a["ring"]);
    let stop = PathBuf::from(&a["stop"]);
    let target: u64 = a["target"].parse().unwrap_or(1);
    let pause = a.get("pause").is_some_and(|v| v == "1");
    let mut reader = match RingReader::open(&ring, StartAt::Oldest) {
        Ok(r) => r,
        Err(e) => {
            println!("error open {e}");
            return 2;
        }
    };
    match reader.register(&a["name"]) {
        Registration::Registered { slot } => println!("registered slot={slot}"),
        Registration::TableFull => println!("unregistered why=table_full"),
        Registration::Unavailable(e) => println!("unregistered why=unavailable {e}"),
    }
    let mut announced = 0;
    let mut read = 0u64;
    let mut paused = false;
    loop {
        if stop.exists() {
            drop(reader);
            println!("stopped read={read}");
            return 0;
        }
        if paused {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        match reader.try_read() {
            ReadOutcome::Record(r) => {
                assert_eq!(r.seq, read + 1, "records arrive in order");
                read += 1;
            }
            ReadOutcome::Empty => {
                let pos = reader.next_seq();
                if pos >= target && pos != announced {
                    println!("caught_up position={pos} read={read}");
                    announced = pos;
                    paused = pause;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            ReadOutcome::Lost { count, .. } => {
                println!("lost {count}");
                return 3;
            }
        }
    }
}

// ----------------------------------------------------------------------------------------------
// The parent's helpers.
// ----------------------------------------------------------------------------------------------

struct Proc {
    name: String,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn reader(dir: &TempDir, name: &str, target: u64, pause: bool) -> Proc {
        let args = format!(
            "ring={};stop={};name={name};target={target};pause={}",
            dir.ring().display(),
            dir.stop(name).display(),
            u8::from(pause)
        );
        let mut child = Command::new(std::env::current_exe().expect("current_exe"))
            .env(ROLE_VAR, "reader")
            .env(ARGS_VAR, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            name: name.to_owned(),
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    fn expect(&mut self, prefix: &str) -> String {
        let end = Instant::now() + T;
        loop {
            match self
                .lines
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{}: no '{prefix}' line; saw {:?}", self.name, self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{}: exited; saw {:?}", self.name, self.seen)
                }
            }
        }
    }

    /// SIGKILL (what `Child::kill` sends on Unix): the reader gets no chance to free its slot.
    fn kill9(&mut self) {
        self.child.kill().expect("kill");
        let _ = self.child.wait();
    }

    fn wait_ok(&mut self) {
        let end = Instant::now() + T;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                assert!(
                    st.success(),
                    "{} exited with {st}; {:?}",
                    self.name,
                    self.seen
                );
                return;
            }
            assert!(Instant::now() < end, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in '{line}'"))
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("ipc-readers-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        TempDir(d)
    }
    fn ring(&self) -> PathBuf {
        self.0.join("ticks.ring")
    }
    fn registry(&self) -> PathBuf {
        self.0.join(READERS_FILE_NAME)
    }
    fn stop(&self, name: &str) -> PathBuf {
        self.0.join(format!("stop-{name}"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn publish(w: &mut RingWriter, n: u64) {
    for i in 0..n {
        w.publish(&Record {
            instrument_id: 1,
            ts_recv: i as i64,
            ..Record::new(RecordKind::TbtLast)
        });
    }
}

/// Polls the registry until `ok` holds for the entry named `name` (panics after `T`).
fn wait_entry(
    reg: &ReaderRegistry,
    name: &str,
    what: &str,
    ok: impl Fn(&ReaderEntry) -> bool,
) -> ReaderEntry {
    let end = Instant::now() + T;
    loop {
        let entries = reg.entries();
        if let Some(e) = entries.iter().find(|e| e.name == name && ok(e)) {
            return e.clone();
        }
        assert!(
            Instant::now() < end,
            "{name}: never {what}; entries {entries:#?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ----------------------------------------------------------------------------------------------
// Cases.
// ----------------------------------------------------------------------------------------------

/// Readers in other processes register (the first creates the registry with the ring's
/// mode), keep their position current, show a lag when they stop reading, free their slot on
/// a clean exit, and a SIGKILLed reader's slot is seen dead and taken by the next reader.
fn registration_positions_lag_and_dead_reclaim() {
    let dir = TempDir::new("life");
    let mut w = RingWriter::create(&dir.ring(), 1 << 16, &ShmOptions::default()).expect("ring");
    let epoch = w.info().epoch;
    publish(&mut w, 5_000);
    assert!(!dir.registry().exists(), "nothing made the registry yet");

    let mut alpha = Proc::reader(&dir, "alpha", 5_001, false);
    let slot_alpha = field(&alpha.expect("registered"), "slot");
    alpha.expect("caught_up position=5001");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(dir.registry()).expect("registry").mode() & 0o777,
        std::fs::metadata(dir.ring()).expect("ring").mode() & 0o777,
        "the registry takes the ring's mode"
    );
    // The monitor's view (read-only, as top).
    let reg = ReaderRegistry::open(&dir.registry()).expect("registry");
    let e = wait_entry(&reg, "alpha", "at 5001", |e| e.position == 5_001);
    assert_eq!(
        (e.slot as u64, e.pid, e.alive, e.epoch),
        (slot_alpha, alpha.child.id(), Some(true), epoch)
    );
    assert_eq!(e.lag(w.last_seq(), epoch), Some(0));

    // It keeps up with new records and says so.
    publish(&mut w, 3_000);
    wait_entry(&reg, "alpha", "at 8001", |e| e.position == 8_001);

    // A reader that stops reading shows its lag.
    let mut beta = Proc::reader(&dir, "beta", 8_001, true);
    let slot_beta = field(&beta.expect("registered"), "slot");
    assert_ne!(slot_beta, slot_alpha);
    beta.expect("caught_up position=8001");
    wait_entry(&reg, "beta", "at 8001", |e| e.position == 8_001);
    publish(&mut w, 2_000);
    wait_entry(&reg, "alpha", "at 10001", |e| e.position == 10_001);
    let b = wait_entry(&reg, "beta", "listed", |_| true);
    assert_eq!(b.lag(w.last_seq(), epoch), Some(2_000));

    // SIGKILL: the slot stays, its owner is dead; the next reader takes it.
    alpha.kill9();
    let dead = wait_entry(&reg, "alpha", "dead", |e| e.alive == Some(false));
    assert_eq!(dead.slot as u64, slot_alpha);
    let mut gamma = Proc::reader(&dir, "gamma", 10_001, false);
    assert_eq!(
        field(&gamma.expect("registered"), "slot"),
        slot_alpha,
        "the dead reader's slot is reclaimed"
    );
    gamma.expect("caught_up position=10001");
    assert!(
        reg.entries().iter().all(|e| e.alive == Some(true)),
        "{:#?}",
        reg.entries()
    );

    // A clean exit frees the slot.
    std::fs::write(dir.stop("beta"), b"").expect("stop file");
    beta.expect("stopped");
    beta.wait_ok();
    let names: Vec<String> = reg.entries().into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec!["gamma".to_string()]);
    std::fs::write(dir.stop("gamma"), b"").expect("stop file");
    gamma.wait_ok();
    assert!(reg.entries().is_empty());
}

/// With every slot held by a live process, a new reader runs unregistered and still reads
/// everything.
fn full_table_reader_still_reads() {
    let dir = TempDir::new("full");
    let mut w = RingWriter::create(&dir.ring(), 1 << 12, &ShmOptions::default()).expect("ring");
    let epoch = w.info().epoch;
    let reg = Arc::new(
        ReaderRegistry::open_or_create(&dir.registry(), &ShmOptions::default()).expect("registry"),
    );
    let held: Vec<_> = (0..READER_SLOTS)
        .map(|i| {
            reg.claim(&format!("holder{i}"), epoch, 1)
                .expect("a free slot")
        })
        .collect();
    publish(&mut w, 1_000);
    let mut late = Proc::reader(&dir, "late", 1_001, false);
    late.expect("unregistered why=table_full");
    let line = late.expect("caught_up position=1001");
    assert_eq!(field(&line, "read"), 1_000);
    publish(&mut w, 500);
    late.expect("caught_up position=1501");
    assert!(reg.entries().iter().all(|e| e.name.starts_with("holder")));
    assert_eq!(held.len(), READER_SLOTS);
}

fn main() {
    if std::env::var(ROLE_VAR).is_ok() {
        std::process::exit(role_reader());
    }
    let cases: &[(&str, fn())] = &[
        (
            "registration_positions_lag_and_dead_reclaim",
            registration_positions_lag_and_dead_reclaim,
        ),
        (
            "full_table_reader_still_reads",
            full_table_reader_still_reads,
        ),
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filters: Vec<String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--format" | "--skip" | "--test-threads" | "--color" => i += 1,
            a if !a.starts_with('-') => filters.push(a.to_string()),
            _ => {}
        }
        i += 1;
    }
    let exact = args.iter().any(|a| a == "--exact");
    if args.iter().any(|a| a == "--ignored") {
        return;
    }
    let list = args.iter().any(|a| a == "--list");
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, case) in cases {
        let selected = filters.is_empty()
            || filters.iter().any(|f| {
                if exact {
                    name == f
                } else {
                    name.contains(f.as_str())
                }
            });
        if !selected {
            continue;
        }
        if list {
            println!("{name}: test");
            continue;
        }
        ran += 1;
        let started = Instant::now();
        match std::panic::catch_unwind(AssertUnwindSafe(case)) {
            Ok(()) => println!("test {name} ... ok ({:.1?})", started.elapsed()),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    if list {
        return;
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        ran - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        std::process::exit(101);
    }
}
