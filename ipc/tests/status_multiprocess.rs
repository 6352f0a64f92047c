//! Real processes over real shared-memory files: one writer process interns strings and
//! publishes status snapshots as fast as it can while reader processes check that every
//! snapshot they accept is internally consistent and that every string id they meet
//! resolves to the right bytes.
//!
//! Then the writer is restarted: a second writer process publishes new files (new epoch)
//! over the same paths, and the readers must notice the replacement, reopen, and check the
//! second run the same way.
//!
//! The test binary re-executes itself (`std::env::current_exe()`) with a role in the
//! environment; the files live in a fresh directory under the system temp dir.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ib_stream_ipc::shm::random_u64;
use ib_stream_ipc::{
    ConnState, FarmKind, FarmState, FarmStatus, IpcError, RecordKind, ShmOptions, SnapshotError,
    StatusReader, StatusSnapshot, StatusWriter, StringTableConfig, StringTableReader,
    StringTableWriter, SubState, SubStatus,
};

const ROLE: &str = "IPC_STATUS_MP_ROLE";
const DIR: &str = "IPC_STATUS_MP_DIR";
const TEST_NAME: &str = "writer_and_reader_processes_agree";
/// Snapshots each writer run publishes before its final one.
const GENERATIONS: u64 = 4_000;
/// Writer runs (the second one is a restart over the same paths).
const RUNS: usize = 2;
/// Guards only: a healthy run takes a few seconds even in a debug build on a busy machine.
const WRITER_MAX_RUN: Duration = Duration::from_secs(60);
const READER_MAX_RUN: Duration = Duration::from_secs(75);
const READER_INDEX: &str = "IPC_STATUS_MP_READER";
const WHOLE_TEST_LIMIT: Duration = Duration::from_secs(150);
const READERS: usize = 2;
/// Distinct strings the writer interns: string `n` gets id `n`.
const STRINGS: u32 = 6_000;

/// The bytes of string number `n` (id `n`): varied lengths, unique per `n`.
fn content(n: u32) -> Vec<u8> {
    let mut s = format!("s{n}:").into_bytes();
    s.extend(std::iter::repeat_n(
        b'a' + (n % 26) as u8,
        (n % 37) as usize,
    ));
    s
}

fn strings_cfg() -> StringTableConfig {
    StringTableConfig {
        max_entries: STRINGS + 1,
        max_bytes: 4 << 20,
        max_len: 64,
    }
}

/// Fills `s` for generation-to-be `k`, with `newest` the newest string id, so that every
/// field can be predicted from `records_published` (see `check`).
fn fill(s: &mut StatusSnapshot, k: u64, newest: u32) {
    s.set_conn_state(ConnState::Connected);
    s.engine.server_version = 178;
    s.engine.client_id = (k % 1000) as i32;
    s.engine.last_error_code = (k % 7) as i32;
    s.counters.records_published = k;
    s.counters.bytes_read = k * 64;
    s.counters.frames_decoded = 3 * k + 1;
    s.counters.decode_errors = k / 7;
    s.counters.strings_interned = u64::from(newest);
    s.latencies.decode.record(k % 5000);
    s.engine.sub_count = (k % 257) as u32;
    for (i, sub) in s.subs.iter_mut().enumerate() {
        // Each subscription names a string the writer interned at or before this point:
        // the con_id carries its id and the req_id repeats it, the reader resolves it.
        let id = newest.saturating_sub(i as u32);
        *sub = SubStatus::new(id, RecordKind::TbtLast, SubState::Active, id as i32);
        sub.ticks = k + i as u64;
        sub.last_tick_ns = (k * 1000 + i as u64) as i64;
    }
    // The farm table is the snapshot's last field: a torn copy shows at the end too.
    s.engine.farm_count = (k % 17) as u8;
    for (i, f) in s.farms.iter_mut().enumerate() {
        *f = FarmStatus::new(
            "usfarm",
            FarmKind::MarketData,
            FarmState::Ok,
            2104,
            (k + i as u64) as i64,
        );
    }
}

/// Checks one accepted snapshot; returns the string ids it mentions.
fn check(s: &StatusSnapshot, strings: &StringTableReader) -> usize {
    let k = s.counters.records_published;
    assert_eq!(s.counters.bytes_read, k * 64, "torn counters");
    assert_eq!(s.counters.frames_decoded, 3 * k + 1, "torn counters");
    assert_eq!(s.counters.decode_errors, k / 7, "torn counters");
    assert_eq!(s.engine.client_id, (k % 1000) as i32, "torn engine status");
    assert_eq!(
        s.engine.last_error_code,
        (k % 7) as i32,
        "torn engine status"
    );
    assert_eq!(s.engine.sub_count, (k % 257) as u32, "torn sub count");
    // The histogram got one value per generation: count and buckets agree.
    assert_eq!(s.latencies.decode.count, k + 1, "torn histogram");
    assert_eq!(
        s.latencies.decode.buckets.iter().sum::<u64>(),
        k + 1,
        "torn buckets"
    );
    assert!(s.latencies.decode.percentile(0.5).is_some());
    let newest = s.counters.strings_interned as u32;
    for (i, sub) in s.subs.iter().enumerate() {
        assert_eq!(sub.ticks, k + i as u64, "torn subscription {i}");
        assert_eq!(
            sub.last_tick_ns,
            (k * 1000 + i as u64) as i64,
            "torn subscription {i}"
        );
        assert_eq!(
            sub.con_id,
            newest.saturating_sub(i as u32),
            "torn subscription {i}"
        );
        assert_eq!(sub.req_id, sub.con_id as i32, "torn subscription {i}");
    }
    assert_eq!(u64::from(s.engine.farm_count), k % 17, "torn farm count");
    for (i, f) in s.farms.iter().enumerate() {
        assert_eq!(f.since_ns, (k + i as u64) as i64, "torn farm {i}");
        assert_eq!(f.name(), "usfarm", "torn farm {i}");
    }
    for sub in s.subscriptions() {
        // A snapshot can only mention ids published before it.
        let expected = if sub.con_id == 0 {
            Vec::new()
        } else {
            content(sub.con_id)
        };
        assert_eq!(
            strings.get(sub.con_id),
            Some(&expected[..]),
            "id {} does not resolve to its bytes",
            sub.con_id
        );
    }
    s.subscriptions().len()
}

fn run_writer(dir: &Path) {
    let epoch = random_u64();
    let opts = ShmOptions::default();
    let mut strings =
        StringTableWriter::create(&dir.join("strings"), epoch, &strings_cfg(), &opts).unwrap();
    let mut status = StatusWriter::create(&dir.join("status"), epoch, &opts).unwrap();
    let mut snap = StatusSnapshot::new_boxed();
    let started = Instant::now();
    let mut newest = 0u32;
    let mut k = 0u64;
    while k < GENERATIONS && started.elapsed() < WRITER_MAX_RUN {
        // Two new strings per snapshot, and one already known (its id must not change).
        for _ in 0..2 {
            if newest < STRINGS {
                let n = newest + 1;
                assert_eq!(strings.intern(&content(n)), Ok(n));
                newest = n;
            }
        }
        let old = (k as u32 % newest.max(1)).max(1).min(newest);
        if old > 0 {
            assert_eq!(strings.intern(&content(old)), Ok(old));
        }
        fill(&mut snap, k, newest);
        status.publish(&snap, k as i64 + 1);
        k += 1;
    }
    // The last snapshot says "done" (disconnected) so readers know when to stop.
    fill(&mut snap, k, newest);
    snap.set_conn_state(ConnState::Disconnected);
    status.publish(&snap, k as i64 + 1);
    println!(
        "writer generations={} strings={newest} epoch={epoch}",
        status.generation()
    );
}

fn open_retrying<T>(path: &Path, open: impl Fn(&Path) -> Result<T, IpcError>) -> T {
    let deadline = Instant::now() + READER_MAX_RUN;
    loop {
        match open(path) {
            Ok(t) => return t,
            Err(e) if e.is_missing() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("cannot open {}: {e}", path.display()),
        }
    }
}

fn run_reader(dir: &Path, index: usize) {
    let mut previous: Option<StatusReader> = None;
    for run in 0..RUNS {
        if let Some(old) = &previous {
            // The writer restarted: the file at the path is a new one.
            let deadline = Instant::now() + READER_MAX_RUN;
            while !old.replaced() {
                assert!(Instant::now() < deadline, "the restart was never noticed");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        // The writer creates strings before status, so once a new status exists both do.
        let status = open_retrying(&dir.join("status"), StatusReader::open);
        let strings = open_retrying(&dir.join("strings"), StringTableReader::open);
        assert_eq!(
            strings.epoch(),
            status.epoch(),
            "the two files come from one writer"
        );
        if let Some(old) = &previous {
            assert_ne!(
                old.epoch(),
                status.epoch(),
                "a restarted writer has a new epoch"
            );
        }
        follow(run, &status, &strings);
        if run == 0 {
            // Tells the test that this reader is ready for the restart.
            std::fs::write(dir.join(format!("reader-{index}.run0")), b"done").unwrap();
        }
        previous = Some(status);
    }
}

/// Reads one writer run to its final snapshot, checking everything on the way.
fn follow(run: usize, status: &StatusReader, strings: &StringTableReader) {
    let mut out = StatusSnapshot::new_boxed();
    let started = Instant::now();
    let (mut accepted, mut busy, mut last_gen, mut subs_checked) = (0u64, 0u64, 0u64, 0usize);
    let mut strings_checked = 1u32;
    let mut finished = false;
    while started.elapsed() < READER_MAX_RUN {
        match status.read(&mut out) {
            Ok(g) => {
                assert!(g >= last_gen, "generation went back from {last_gen} to {g}");
                assert_eq!(out.engine.generation, g);
                assert_eq!(
                    out.engine.updated_ns,
                    out.counters.records_published as i64 + 1
                );
                subs_checked += check(&out, strings);
                accepted += 1;
                last_gen = g;
                if out.conn_state() == Some(ConnState::Disconnected) {
                    finished = true;
                }
            }
            Err(SnapshotError::Busy { .. }) => busy += 1,
            Err(SnapshotError::NotPublished) => std::thread::yield_now(),
        }
        // Every newly published string resolves to exactly its bytes.
        let n = strings.len();
        while strings_checked < n {
            assert_eq!(
                strings.get(strings_checked),
                Some(&content(strings_checked)[..])
            );
            strings_checked += 1;
        }
        if finished {
            break;
        }
    }
    assert!(finished, "the writer's final snapshot never arrived");
    println!(
        "reader run={run} accepted={accepted} busy={busy} last_generation={last_gen} \
         subscriptions_checked={subs_checked} strings_checked={} epoch={}",
        strings_checked - 1,
        status.epoch()
    );
}

fn spawn(role: &str, dir: &Path, index: usize) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(DIR, dir)
        .env(READER_INDEX, index.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for every child until the deadline (then kills the rest); returns each one's
/// success and output.
fn wait_all(children: Vec<(String, Child)>, deadline: Instant) -> Vec<(String, bool, String)> {
    let mut results = Vec::new();
    for (name, mut child) in children {
        let ok = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.success();
            }
            if Instant::now() > deadline {
                // Our own child, by its handle.
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        if let Some(mut s) = child.stdout.take() {
            s.read_to_string(&mut out).unwrap();
        }
        if let Some(mut s) = child.stderr.take() {
            s.read_to_string(&mut out).unwrap();
        }
        results.push((name, ok, out));
    }
    results
}

/// The line of a child's output that contains `tag`.
fn line<'a>(out: &'a str, tag: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(tag))
        .unwrap_or_else(|| panic!("no line with {tag:?} in output:\n{out}"))
}

/// Pulls `key=<u64>` out of a child's report line.
fn field(out: &str, key: &str) -> u64 {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in output:\n{out}"))
}

fn unique_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ipc-status-mp-{}-{:016x}",
        std::process::id(),
        random_u64()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn writer_and_reader_processes_agree() {
    if let Ok(role) = std::env::var(ROLE) {
        let dir = PathBuf::from(std::env::var_os(DIR).expect("role without a directory"));
        let index: usize = std::env::var(READER_INDEX).unwrap().parse().unwrap();
        match role.as_str() {
            "writer" => run_writer(&dir),
            "reader" => run_reader(&dir, index),
            other => panic!("unknown role {other}"),
        }
        return;
    }
    let dir = unique_dir();
    let deadline = Instant::now() + WHOLE_TEST_LIMIT;
    // Readers first: they wait for the files, so they see the first run from its start.
    let readers: Vec<(String, Child)> = (0..READERS)
        .map(|i| (format!("reader {i}"), spawn("reader", &dir, i)))
        .collect();
    let mut writers = Vec::new();
    for run in 0..RUNS {
        if run > 0 {
            // Restart only once every reader has finished the previous run, so that each
            // reader really sees the replacement (not a late first open of the new files).
            let marks: Vec<PathBuf> = (0..READERS)
                .map(|i| dir.join(format!("reader-{i}.run0")))
                .collect();
            while !marks.iter().all(|m| m.exists()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let w = spawn("writer", &dir, 0);
        writers.extend(wait_all(vec![(format!("writer {run}"), w)], deadline));
    }
    let results: Vec<_> = writers
        .into_iter()
        .chain(wait_all(readers, deadline))
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    for (name, ok, out) in &results {
        assert!(ok, "{name} failed:\n{out}");
        for l in out.lines().filter(|l| l.contains('=')) {
            println!("{name}: {l}");
        }
    }
    let mut epochs = Vec::new();
    for (_, _, out) in &results[..RUNS] {
        let w = line(out, "writer generations=");
        assert_eq!(
            field(w, "generations"),
            GENERATIONS + 1,
            "the writer stopped early"
        );
        assert_eq!(field(w, "strings"), u64::from(STRINGS));
        epochs.push(field(w, "epoch"));
    }
    assert_ne!(epochs[0], epochs[1], "each writer run has its own epoch");
    for (_, _, out) in &results[RUNS..] {
        for (run, epoch) in epochs.iter().enumerate() {
            let l = line(out, &format!("reader run={run} "));
            assert_eq!(field(l, "epoch"), *epoch, "reader followed the wrong run");
            assert!(field(l, "accepted") > 0);
            assert_eq!(
                field(l, "last_generation"),
                GENERATIONS + 1,
                "reader missed the final snapshot"
            );
            assert_eq!(
                field(l, "strings_checked"),
                u64::from(STRINGS),
                "reader did not check every string"
            );
            assert!(field(l, "subscriptions_checked") > 0);
        }
    }
}
