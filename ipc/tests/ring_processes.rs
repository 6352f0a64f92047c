//! The ring between real processes over real shared-memory files.
//!
//! This binary is its own child: run normally it is the test runner (`harness = false`), and
//! every case spawns copies of itself (`std::env::current_exe()`) with `IPC_RING_ROLE` naming
//! the part to play (writer, hammering writer, reader). Children talk back in lines on
//! stdout (`ready ...`, `summary ...`), which the parent reads with deadlines; every child is
//! killed when its handle drops, so a failing case leaves no process behind. Files live in a
//! fresh directory under /dev/shm (never /dev/shm/ib-stream), removed at the end.
//!
//! `cargo test -p ib-stream-ipc --test ring_processes [-- <name filter>]`

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use ib_stream_ipc::record::RecordKind;
use ib_stream_ipc::ring::{LapPolicy, RING_MAGIC};
use ib_stream_ipc::shm::unix_time_ns;
use ib_stream_ipc::{
    Follow, FollowConfig, FollowEvent, IpcError, ReadOutcome, Record, RingFollower, RingReader,
    RingWriter, ShmOptions, StartAt, WriterStatus,
};

const ROLE_VAR: &str = "IPC_RING_ROLE";
const ARGS_VAR: &str = "IPC_RING_ARGS";

// ----------------------------------------------------------------------------------------------
// Records that prove their own integrity.
// ----------------------------------------------------------------------------------------------

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The record the writer publishes as sequence `seq`: every word depends on `seq` and the last
/// body word is a checksum of all the others, so a record mixed from two writes never passes.
fn checked_record(seq: u64) -> Record {
    let mut r = Record {
        seq,
        ts_recv: mix(seq) as i64,
        ts_event: mix(seq ^ 1) as i64,
        instrument_id: (seq % 7) as u32 + 1,
        tick_type: 0,
        flags: seq as u16,
        body: [
            mix(seq ^ 2) as i64,
            mix(seq ^ 3) as i64,
            mix(seq ^ 4) as i64,
            0,
        ],
        ..Record::new(RecordKind::TbtLast)
    };
    r.body[3] = checksum(&r) as i64;
    r
}

fn checksum(r: &Record) -> u64 {
    let w = ib_stream_ipc::ring::record_to_words(r);
    w[..7]
        .iter()
        .fold(0x1234_5678_9abc_def0, |acc, &x| mix(acc ^ x))
}

fn intact(r: &Record) -> bool {
    r.body[3] as u64 == checksum(r) && *r == checked_record(r.seq)
}

// ----------------------------------------------------------------------------------------------
// Child roles.
// ----------------------------------------------------------------------------------------------

struct Args(HashMap<String, String>);

impl Args {
    fn from_env() -> Args {
        let raw = std::env::var(ARGS_VAR).unwrap_or_default();
        Args(
            raw.split(';')
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect(),
        )
    }
    fn str(&self, k: &str) -> String {
        self.0
            .get(k)
            .cloned()
            .unwrap_or_else(|| panic!("child needs argument {k}"))
    }
    fn u64(&self, k: &str, default: u64) -> u64 {
        self.0.get(k).map_or(default, |v| {
            v.parse().unwrap_or_else(|_| panic!("bad {k}={v}"))
        })
    }
    fn flag(&self, k: &str) -> bool {
        self.0.get(k).is_some_and(|v| v == "1")
    }
}

fn run_role(role: &str) -> i32 {
    let a = Args::from_env();
    match role {
        "writer" => role_writer(&a),
        "hammer" => role_hammer(&a),
        "reader" => role_reader(&a),
        "open" => role_open(&a),
        "follower" => role_follower(&a),
        other => {
            eprintln!("unknown role {other}");
            3
        }
    }
}

/// Publishes `count` checked records in batches of `batch`, sleeping `pace_us` between
/// batches; with `hold=1` then heartbeats until killed (at most 60 s).
fn role_writer(a: &Args) -> i32 {
    let path = PathBuf::from(a.str("path"));
    let mut w = match RingWriter::create(&path, a.u64("cap", 1024), &ShmOptions::default()) {
        Ok(w) => w,
        Err(e) => {
            println!("error {e}");
            return 2;
        }
    };
    println!("ready pid={} epoch={}", std::process::id(), w.info().epoch);
    let count = a.u64("count", 0);
    let batch = a.u64("batch", 1).max(1);
    let pace = Duration::from_micros(a.u64("pace_us", 0));
    let mut buf = Vec::with_capacity(batch as usize);
    while w.last_seq() < count {
        buf.clear();
        let first = w.last_seq() + 1;
        for s in first..(first + batch).min(count + 1) {
            buf.push(checked_record(s));
        }
        w.publish_batch(&buf);
        w.heartbeat(unix_time_ns());
        if !pace.is_zero() {
            std::thread::sleep(pace);
        }
    }
    println!("done last={}", w.last_seq());
    if a.flag("hold") {
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            w.heartbeat(unix_time_ns());
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    0
}

/// Publishes checked records as fast as it can for `ms` milliseconds (alternating single
/// records and batches of 8), so that readers of a tiny ring race it in every slot.
fn role_hammer(a: &Args) -> i32 {
    let path = PathBuf::from(a.str("path"));
    let mut w = RingWriter::create(&path, a.u64("cap", 16), &ShmOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    println!("ready pid={} epoch={}", std::process::id(), w.info().epoch);
    let end = Instant::now() + Duration::from_millis(a.u64("ms", 1000));
    let mut batch = [Record::ZERO; 8];
    'outer: loop {
        for _ in 0..128 {
            let s = w.last_seq() + 1;
            w.publish(&checked_record(s));
            for (i, r) in batch.iter_mut().enumerate() {
                *r = checked_record(s + 1 + i as u64);
            }
            w.publish_batch(&batch);
        }
        w.heartbeat(unix_time_ns());
        if Instant::now() >= end {
            break 'outer;
        }
    }
    println!("done last={}", w.last_seq());
    0
}

/// Tries to open the ring once and prints the outcome (`opened` or `error <variant>`).
fn role_open(a: &Args) -> i32 {
    match RingReader::open(Path::new(&a.str("path")), StartAt::Oldest) {
        Ok(r) => println!("opened epoch={}", r.info().epoch),
        Err(e) => println!("error {} {e}", variant(&e)),
    }
    0
}

fn variant(e: &IpcError) -> &'static str {
    match e {
        IpcError::Missing { .. } => "Missing",
        IpcError::PermissionDenied { .. } => "PermissionDenied",
        IpcError::BadMagic { .. } => "BadMagic",
        IpcError::VersionMismatch { .. } => "VersionMismatch",
        IpcError::RecordSizeMismatch { .. } => "RecordSizeMismatch",
        IpcError::TooSmall { .. } => "TooSmall",
        IpcError::Corrupt { .. } => "Corrupt",
        IpcError::WriterPresent { .. } => "WriterPresent",
        IpcError::InvalidConfig { .. } => "InvalidConfig",
        IpcError::Io { .. } => "Io",
        _ => "other",
    }
}

/// Reads and verifies records. Stops when it has accounted for every sequence up to `until`
/// (in the final epoch), or after `ms` milliseconds. With `wait=1` it opens in a loop,
/// printing `missing` once while the file does not exist. With `follow=1` it watches the
/// writer while idle, prints status changes, and reopens a replaced ring. With `sleep_us` it
/// sleeps after every record (a slow reader). With `spin=1` it busy-polls instead of
/// yielding when there is nothing to read. Ends with one `summary` line.
fn role_reader(a: &Args) -> i32 {
    let path = PathBuf::from(a.str("path"));
    let start = match a.str("start").as_str() {
        "oldest" => StartAt::Oldest,
        "newest" => StartAt::Newest,
        s => StartAt::Seq(s.parse().expect("start")),
    };
    let deadline = Instant::now() + Duration::from_millis(a.u64("ms", 10_000));
    let mut r = if a.flag("wait") {
        let mut said = false;
        loop {
            match RingReader::open(&path, start) {
                Ok(r) => break r,
                Err(e) if e.is_missing() && Instant::now() < deadline => {
                    if !said {
                        println!("missing");
                        said = true;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => {
                    println!("error {} {e}", variant(&e));
                    return 2;
                }
            }
        }
    } else {
        RingReader::open(&path, start).unwrap_or_else(|e| panic!("{e}"))
    };
    if let Some(m) = a.0.get("margin") {
        r.set_lap_policy(LapPolicy::Oldest {
            margin: m.parse().expect("margin"),
        });
    }
    println!("opened epoch={} next={}", r.info().epoch, r.next_seq());
    let until = a.u64("until", u64::MAX);
    let sleep = Duration::from_micros(a.u64("sleep_us", 0));
    let follow = a.flag("follow");
    let spin = a.flag("spin");
    let restarts_wanted = a.u64("restarts", 0);
    let (mut delivered, mut lost, mut lost_events, mut torn, mut restarts) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut expected = r.next_seq();
    let mut last_status = String::new();
    let mut idle_since = Instant::now();
    while Instant::now() < deadline {
        if r.next_seq() > until && restarts >= restarts_wanted {
            break;
        }
        match r.try_read() {
            ReadOutcome::Record(rec) => {
                if rec.seq != expected {
                    println!("order expected={expected} got={}", rec.seq);
                    return 1;
                }
                if !intact(&rec) {
                    torn += 1;
                }
                if delivered == 0 {
                    println!("first seq={}", rec.seq);
                }
                delivered += 1;
                expected += 1;
                idle_since = Instant::now();
                if !sleep.is_zero() {
                    std::thread::sleep(sleep);
                }
            }
            ReadOutcome::Lost {
                first_seq,
                last_seq,
                count,
            } => {
                if first_seq != expected || count != last_seq - first_seq + 1 {
                    println!(
                        "badlost expected={expected} first={first_seq} last={last_seq} count={count}"
                    );
                    return 1;
                }
                if lost_events == 0 {
                    println!("lost first={first_seq} last={last_seq} count={count}");
                }
                lost += count;
                lost_events += 1;
                expected = last_seq + 1;
            }
            ReadOutcome::Empty => {
                if follow && idle_since.elapsed() > Duration::from_millis(5) {
                    let st = r.writer_status(unix_time_ns(), 300_000_000);
                    let name = match st {
                        WriterStatus::Alive { .. } => "alive",
                        WriterStatus::Stopped => "stopped",
                        WriterStatus::Gone { .. } => "gone",
                        WriterStatus::Stale { .. } => "stale",
                        WriterStatus::Replaced => "replaced",
                    };
                    if name != last_status {
                        println!("status {name}");
                        last_status = name.to_owned();
                    }
                    if st == WriterStatus::Replaced {
                        let old = r.info().epoch;
                        match r.reopen(StartAt::Oldest) {
                            Ok(epoch) => {
                                println!("reopened old={old} epoch={epoch} next={}", r.next_seq());
                                restarts += 1;
                                expected = r.next_seq();
                                last_status.clear();
                            }
                            Err(e) => println!("reopen error {e}"),
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                } else if spin {
                    std::hint::spin_loop();
                } else {
                    // Give the core back: the machine running the tests is shared.
                    std::thread::yield_now();
                }
            }
        }
    }
    println!(
        "summary delivered={delivered} lost={lost} lost_events={lost_events} torn={torn} next={} epoch={} restarts={restarts}",
        r.next_seq(),
        r.info().epoch
    );
    0
}

/// Follows the ring with [`RingFollower`] (checking the writer at every empty read), verifying
/// every record, and prints each event: `lost first= last= count=`, `state <name>`,
/// `restart old= new= old_last= clean=`. Stops once it has seen `restarts` restarts and read
/// through `until` in the last epoch, or after `ms`. Ends with one `summary` line.
fn role_follower(a: &Args) -> i32 {
    let path = PathBuf::from(a.str("path"));
    let start = StartAt::Seq(a.u64("start", 1));
    let cfg = FollowConfig {
        check_every: Duration::ZERO,
        stale_after: Duration::from_secs(60),
    };
    let mut f = RingFollower::open(&path, start, cfg).unwrap_or_else(|e| panic!("{e}"));
    f.set_lap_policy(LapPolicy::Oldest { margin: 0 });
    println!("opened epoch={} next={}", f.info().epoch, f.next_seq());
    let deadline = Instant::now() + Duration::from_millis(a.u64("ms", 10_000));
    let (until, restarts_wanted) = (a.u64("until", u64::MAX), a.u64("restarts", 0));
    let (mut delivered, mut restarts, mut torn) = (0u64, 0u64, 0u64);
    let mut expected = f.next_seq();
    while Instant::now() < deadline && !(restarts >= restarts_wanted && f.next_seq() > until) {
        match f.poll() {
            Follow::Record(rec) => {
                if rec.seq != expected {
                    println!("order expected={expected} got={}", rec.seq);
                    return 1;
                }
                torn += u64::from(!intact(&rec));
                delivered += 1;
                expected += 1;
            }
            Follow::Event(FollowEvent::Lost {
                first_seq,
                last_seq,
                count,
            }) => {
                println!("lost first={first_seq} last={last_seq} count={count}");
                expected = last_seq + 1;
            }
            Follow::Event(FollowEvent::WriterState(st)) => {
                let name = match st {
                    WriterStatus::Alive { .. } => "alive",
                    WriterStatus::Stopped => "stopped",
                    WriterStatus::Gone { .. } => "gone",
                    WriterStatus::Stale { .. } => "stale",
                    WriterStatus::Replaced => "replaced",
                };
                println!("state {name}");
            }
            Follow::Event(FollowEvent::WriterRestart(r)) => {
                println!(
                    "restart old={} new={} old_last={} clean={}",
                    r.old_epoch,
                    r.new_epoch,
                    r.old_last_seq,
                    u8::from(r.clean)
                );
                restarts += 1;
                expected = f.next_seq();
            }
            Follow::Empty => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    println!(
        "summary delivered={delivered} torn={torn} next={} epoch={} restarts={restarts}",
        f.next_seq(),
        f.info().epoch
    );
    0
}

// ----------------------------------------------------------------------------------------------
// Parent side: child handles and the cases.
// ----------------------------------------------------------------------------------------------

struct Proc {
    name: String,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

fn args_string(args: &[(&str, String)]) -> String {
    args.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

impl Proc {
    fn spawn(name: &str, role: &str, args: &[(&str, String)]) -> Proc {
        Proc::spawn_with(name, role, args, |_| {})
    }

    fn spawn_with(
        name: &str,
        role: &str,
        args: &[(&str, String)],
        tweak: impl FnOnce(&mut Command),
    ) -> Proc {
        let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
        cmd.env(ROLE_VAR, role)
            .env(ARGS_VAR, args_string(args))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("spawn child");
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

    /// Waits for the next line starting with `prefix` (skipping others) and returns it.
    fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: no line '{prefix}...' within {timeout:?}; saw {:?}",
                        self.name, self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "{}: exited before printing '{prefix}...'; saw {:?}",
                        self.name, self.seen
                    )
                }
            }
        }
    }

    /// Waits for a clean exit.
    fn wait_ok(&mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            match self.child.try_wait().expect("try_wait") {
                Some(st) => {
                    assert!(
                        st.success(),
                        "{} exited with {st}; saw {:?}",
                        self.name,
                        self.seen
                    );
                    return;
                }
                None if Instant::now() >= end => {
                    panic!("{} still running after {timeout:?}", self.name)
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    fn kill9(&mut self) {
        // SAFETY: sends SIGKILL to our own child, which has not been reaped (we hold `Child`).
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill {}", self.name);
        let _ = self.child.wait();
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=value` from a child's line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in '{line}'"))
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("ipc-ring-test-{}-{tag}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        TempDir(d)
    }
    fn ring(&self) -> PathBuf {
        self.0.join("ticks.ring")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const T: Duration = Duration::from_secs(20);

fn a(k: &'static str, v: impl ToString) -> (&'static str, String) {
    (k, v.to_string())
}

/// One writer, three readers on a ring large enough that nobody is lapped: every reader gets
/// every record, in order, intact.
fn one_writer_several_readers() {
    let dir = TempDir::new("fanout");
    let p = dir.ring().display().to_string();
    let count = 200_000u64;
    let mut readers: Vec<Proc> = (0..3)
        .map(|i| {
            Proc::spawn(
                &format!("reader{i}"),
                "reader",
                &[
                    a("path", &p),
                    a("start", "oldest"),
                    a("until", count),
                    a("wait", 1),
                    a("ms", 15_000),
                ],
            )
        })
        .collect();
    let mut w = Proc::spawn(
        "writer",
        "writer",
        &[
            a("path", &p),
            a("cap", 1 << 18),
            a("count", count),
            a("batch", 16),
            a("pace_us", 20),
        ],
    );
    w.expect("ready", T);
    w.expect("done", T);
    w.wait_ok(T);
    for r in &mut readers {
        let s = r.expect("summary", T);
        assert_eq!(field(&s, "delivered"), count, "{s}");
        assert_eq!(field(&s, "lost"), 0, "{s}");
        assert_eq!(field(&s, "torn"), 0, "{s}");
        r.wait_ok(T);
    }
}

/// A reader killed by SIGKILL in the middle of reading disturbs neither the writer nor the
/// other reader.
fn reader_killed_mid_read() {
    let dir = TempDir::new("killreader");
    let p = dir.ring().display().to_string();
    let count = 100_000u64;
    let mut w = Proc::spawn(
        "writer",
        "writer",
        &[
            a("path", &p),
            a("cap", 1 << 17),
            a("count", count),
            a("batch", 8),
            a("pace_us", 50),
        ],
    );
    w.expect("ready", T);
    let args = [
        a("path", &p),
        a("start", "oldest"),
        a("until", count),
        a("ms", 15_000),
    ];
    let mut victim = Proc::spawn(
        "victim",
        "reader",
        &[args.as_slice(), &[a("sleep_us", 10)]].concat(),
    );
    let mut survivor = Proc::spawn("survivor", "reader", &args);
    victim.expect("first", T);
    victim.kill9();
    w.expect("done", T);
    w.wait_ok(T);
    let s = survivor.expect("summary", T);
    assert_eq!(field(&s, "delivered"), count, "{s}");
    assert_eq!(field(&s, "torn"), 0, "{s}");
    survivor.wait_ok(T);
}

/// A reader that starts after the writer has gone a known distance round a small ring is told
/// exactly how many records it lost.
fn lapped_reader_exact_count() {
    let dir = TempDir::new("lapexact");
    let p = dir.ring().display().to_string();
    let (cap, count, margin) = (64u64, 1000u64, 4u64);
    let mut w = Proc::spawn(
        "writer",
        "writer",
        &[
            a("path", &p),
            a("cap", cap),
            a("count", count),
            a("batch", 7),
        ],
    );
    w.expect("done", T);
    w.wait_ok(T);
    let mut r = Proc::spawn(
        "reader",
        "reader",
        &[
            a("path", &p),
            a("start", 1),
            a("until", count),
            a("margin", margin),
            a("ms", 5_000),
        ],
    );
    // Oldest still in the ring: count - cap + 1 = 937; plus the margin → resume at 941.
    let resume = count - cap + 1 + margin;
    let l = r.expect("lost", T);
    assert_eq!(
        l,
        format!("lost first=1 last={} count={}", resume - 1, resume - 1)
    );
    let s = r.expect("summary", T);
    assert_eq!(field(&s, "delivered"), count - resume + 1, "{s}");
    assert_eq!(field(&s, "lost"), resume - 1, "{s}");
    assert_eq!(field(&s, "torn"), 0, "{s}");
    r.wait_ok(T);
}

/// A slow reader racing a fast writer: every sequence is either delivered (intact, in order)
/// or inside a reported loss, and the losses add up exactly.
fn slow_reader_lapped_while_running() {
    let dir = TempDir::new("lapslow");
    let p = dir.ring().display().to_string();
    let (cap, count) = (256u64, 200_000u64);
    let mut w = Proc::spawn(
        "writer",
        "writer",
        &[
            a("path", &p),
            a("cap", cap),
            a("count", count),
            a("batch", 32),
            a("hold", 1),
        ],
    );
    w.expect("ready", T);
    let mut r = Proc::spawn(
        "slow",
        "reader",
        &[
            a("path", &p),
            a("start", 1),
            a("until", count),
            a("sleep_us", 50),
            a("ms", 15_000),
        ],
    );
    w.expect("done", T);
    let s = r.expect("summary", T);
    let (delivered, lost) = (field(&s, "delivered"), field(&s, "lost"));
    assert!(
        field(&s, "lost_events") > 0,
        "the slow reader was never lapped: {s}"
    );
    assert_eq!(delivered + lost, count, "{s}");
    assert_eq!(field(&s, "next"), count + 1, "{s}");
    assert_eq!(field(&s, "torn"), 0, "{s}");
    r.wait_ok(T);
}

/// The writer is killed; the reader sees it gone; a new writer takes over the same path (the
/// dead one's lock does not block it) with a new epoch, and the reader follows to it.
fn writer_killed_and_restarted() {
    let dir = TempDir::new("restart");
    let p = dir.ring().display().to_string();
    let mut w1 = Proc::spawn(
        "writer1",
        "writer",
        &[a("path", &p), a("cap", 1024), a("count", 500), a("hold", 1)],
    );
    let e1 = field(&w1.expect("ready", T), "epoch");
    let mut r = Proc::spawn(
        "reader",
        "reader",
        &[
            a("path", &p),
            a("start", "oldest"),
            a("until", 300),
            a("follow", 1),
            a("restarts", 1),
            a("ms", 15_000),
        ],
    );
    assert_eq!(field(&r.expect("opened", T), "epoch"), e1);
    w1.expect("done", T);
    r.expect("status alive", T);
    w1.kill9();
    r.expect("status gone", T);
    let mut w2 = Proc::spawn(
        "writer2",
        "writer",
        &[a("path", &p), a("cap", 512), a("count", 300), a("hold", 1)],
    );
    let e2 = field(&w2.expect("ready", T), "epoch");
    assert_ne!(e1, e2);
    let l = r.expect("reopened", T);
    assert_eq!(field(&l, "old"), e1);
    assert_eq!(field(&l, "epoch"), e2);
    let s = r.expect("summary", T);
    assert_eq!(field(&s, "epoch"), e2, "{s}");
    assert_eq!(field(&s, "next"), 301, "{s}");
    // 500 from the first epoch, 300 from the second, nothing lost (both rings were big enough).
    assert_eq!(field(&s, "delivered"), 800, "{s}");
    assert_eq!(field(&s, "lost"), 0, "{s}");
    assert_eq!(field(&s, "torn"), 0, "{s}");
    r.wait_ok(T);
}

/// One [`RingFollower`] through a lap, a killed writer, a restart, a clean stop and another
/// restart: each reported once with its exact range, every other record delivered intact.
fn follower_through_lap_kill_stop_and_restarts() {
    let dir = TempDir::new("follower");
    let p = dir.ring().display().to_string();
    let mut w1 = Proc::spawn(
        "writer1",
        "writer",
        &[a("path", &p), a("cap", 64), a("count", 300), a("hold", 1)],
    );
    let e1 = field(&w1.expect("ready", T), "epoch");
    w1.expect("done", T);
    let mut f = Proc::spawn(
        "follower",
        "follower",
        &[
            a("path", &p),
            a("start", 1),
            a("until", 10),
            a("restarts", 2),
            a("ms", 15_000),
        ],
    );
    // Started at 1 on a 64-slot ring holding 237..=300: exactly 1..=236 lost.
    let l = f.expect("lost", T);
    assert_eq!(
        (field(&l, "first"), field(&l, "last"), field(&l, "count")),
        (1, 236, 236)
    );
    w1.kill9();
    f.expect("state gone", T);
    let mut w2 = Proc::spawn(
        "writer2",
        "writer",
        &[a("path", &p), a("cap", 1024), a("count", 100)],
    );
    let e2 = field(&w2.expect("ready", T), "epoch");
    let r = f.expect("restart", T);
    assert_eq!((field(&r, "old"), field(&r, "new")), (e1, e2));
    // Killed: the old run is delivered through 300, and what came after is unknown.
    assert_eq!((field(&r, "old_last"), field(&r, "clean")), (300, 0));
    w2.wait_ok(T);
    f.expect("state stopped", T);
    let mut w3 = Proc::spawn(
        "writer3",
        "writer",
        &[a("path", &p), a("cap", 1024), a("count", 10), a("hold", 1)],
    );
    let e3 = field(&w3.expect("ready", T), "epoch");
    let r = f.expect("restart", T);
    assert_eq!((field(&r, "old"), field(&r, "new")), (e2, e3));
    // A clean stop: all 100 delivered, nothing of that run lost.
    assert_eq!((field(&r, "old_last"), field(&r, "clean")), (100, 1));
    let s = f.expect("summary", T);
    assert_eq!(field(&s, "epoch"), e3, "{s}");
    assert_eq!(field(&s, "next"), 11, "{s}");
    assert_eq!(field(&s, "delivered"), 64 + 100 + 10, "{s}");
    assert_eq!(field(&s, "torn"), 0, "{s}");
    f.wait_ok(T);
    drop(w3);
}

/// A reader started before the writer sees `Missing`, keeps trying, and reads from the start
/// once the ring appears.
fn reader_started_before_writer() {
    let dir = TempDir::new("early");
    let p = dir.ring().display().to_string();
    let mut r = Proc::spawn(
        "early",
        "reader",
        &[
            a("path", &p),
            a("start", "oldest"),
            a("until", 1000),
            a("wait", 1),
            a("ms", 15_000),
        ],
    );
    r.expect("missing", T);
    let mut w = Proc::spawn(
        "writer",
        "writer",
        &[a("path", &p), a("cap", 1024), a("count", 1000)],
    );
    let e = field(&w.expect("ready", T), "epoch");
    assert_eq!(field(&r.expect("opened", T), "epoch"), e);
    let s = r.expect("summary", T);
    assert_eq!(field(&s, "delivered"), 1000, "{s}");
    assert_eq!(field(&s, "lost"), 0, "{s}");
    w.wait_ok(T);
    r.wait_ok(T);
}

/// A writer hammers a 16-slot ring for 2 s while two readers race it in every slot: no torn
/// record may ever be delivered, and the race must actually have happened (laps seen).
fn torn_read_hunt() {
    let dir = TempDir::new("torn");
    let p = dir.ring().display().to_string();
    let mut w = Proc::spawn(
        "hammer",
        "hammer",
        &[a("path", &p), a("cap", 16), a("ms", 2000)],
    );
    w.expect("ready", T);
    let mut readers: Vec<Proc> = (0..2)
        .map(|i| {
            Proc::spawn(
                &format!("hunter{i}"),
                "reader",
                &[
                    a("path", &p),
                    a("start", "oldest"),
                    a("ms", 2000),
                    a("spin", 1),
                ],
            )
        })
        .collect();
    let last = field(&w.expect("done", T), "last");
    w.wait_ok(T);
    for r in &mut readers {
        let s = r.expect("summary", T);
        println!("    torn hunt: writer published {last}; {}: {s}", r.name);
        assert_eq!(field(&s, "torn"), 0, "{s}");
        assert!(
            field(&s, "delivered") > 0 && field(&s, "lost_events") > 0,
            "no race exercised: {s}"
        );
        r.wait_ok(T);
    }
}

/// A second writer (here the test process itself) is refused while a live one holds the ring,
/// with the holder's pid; once it is killed, the next writer starts.
fn second_writer_refused() {
    let dir = TempDir::new("second");
    let mut w = Proc::spawn(
        "writer",
        "writer",
        &[
            a("path", dir.ring().display()),
            a("count", 10),
            a("hold", 1),
        ],
    );
    w.expect("ready", T);
    match RingWriter::create(&dir.ring(), 64, &ShmOptions::default()) {
        Err(IpcError::WriterPresent { pid, .. }) => assert_eq!(pid, Some(w.pid())),
        other => panic!("expected WriterPresent, got {other:?}"),
    }
    // Another process is refused too.
    let mut w2 = Proc::spawn(
        "writer2",
        "writer",
        &[a("path", dir.ring().display()), a("count", 10)],
    );
    let l = w2.expect("error", T);
    assert!(l.contains(&format!("pid {}", w.pid())), "{l}");
    w.kill9();
    let _new =
        RingWriter::create(&dir.ring(), 64, &ShmOptions::default()).expect("restart after kill");
}

/// Crafted files give the typed errors.
fn crafted_files_give_typed_errors() {
    let dir = TempDir::new("crafted");
    let good = dir.0.join("good.ring");
    drop(RingWriter::create(&good, 16, &ShmOptions::default()).expect("create"));
    let bytes = std::fs::read(&good).expect("read");
    let case = |name: &str, mutate: &dyn Fn(&mut Vec<u8>)| -> IpcError {
        let mut b = bytes.clone();
        mutate(&mut b);
        let path = dir.0.join(name);
        std::fs::write(&path, &b).expect("write");
        RingReader::open(&path, StartAt::Oldest).expect_err(name)
    };
    let e = case("magic", &|b| b[0..8].copy_from_slice(b"NOTARING"));
    assert!(
        matches!(e, IpcError::BadMagic { found, .. } if found == u64::from_le_bytes(*b"NOTARING")),
        "{e}"
    );
    let e = case("version", &|b| {
        b[8..12].copy_from_slice(&99u32.to_le_bytes())
    });
    assert!(
        matches!(
            e,
            IpcError::VersionMismatch {
                found: 99,
                expected: 1,
                ..
            }
        ),
        "{e}"
    );
    let e = case("recsize", &|b| {
        b[12..16].copy_from_slice(&128u32.to_le_bytes())
    });
    assert!(
        matches!(
            e,
            IpcError::RecordSizeMismatch {
                found: 128,
                expected: 64,
                ..
            }
        ),
        "{e}"
    );
    let e = case("cap", &|b| b[16..24].copy_from_slice(&12u64.to_le_bytes()));
    assert!(matches!(e, IpcError::Corrupt { .. }), "{e}");
    let e = case("short", &|b| b.truncate(4096 + 64 * 8));
    assert!(
        matches!(
            e,
            IpcError::TooSmall {
                len: 4608,
                needed: 5120,
                ..
            }
        ),
        "{e}"
    );
    let e = case("tiny", &|b| b.truncate(100));
    assert!(matches!(e, IpcError::TooSmall { needed: 4096, .. }), "{e}");
    let e = case("empty", &|b| b.clear());
    assert!(matches!(e, IpcError::TooSmall { len: 0, .. }), "{e}");
    assert_eq!(
        u64::from_le_bytes(bytes[0..8].try_into().expect("8")),
        RING_MAGIC
    );
    let e = RingReader::open(&dir.0.join("absent.ring"), StartAt::Oldest).expect_err("absent");
    assert!(e.is_missing(), "{e}");
    assert!(e.to_string().contains("start the writer"), "{e}");
}

/// A 0600 ring is refused to another user with `PermissionDenied`. As root (who bypasses file
/// modes) the check runs in a child switched to uid/gid 65534 ("nobody"); otherwise the test
/// process opens a file it made mode 0000.
fn permission_denied_is_typed() {
    let dir = TempDir::new("perm");
    let ring = dir.ring();
    let _w = RingWriter::create(&ring, 16, &ShmOptions::default()).expect("create");
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if uid == 0 {
        // The child must reach its own executable and the ring's directory.
        set_mode(&dir.0, 0o755);
        let exe = dir.0.join("child-exe");
        std::fs::copy(std::env::current_exe().expect("exe"), &exe).expect("copy exe");
        set_mode(&exe, 0o755);
        let mut cmd = Command::new(&exe);
        cmd.env(ROLE_VAR, "open")
            .env(ARGS_VAR, args_string(&[a("path", ring.display())]))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
        std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
        let out = cmd.output().expect("run child as nobody");
        let line = String::from_utf8_lossy(&out.stdout);
        assert!(line.starts_with("error PermissionDenied"), "{line}");
        assert!(line.contains("permission denied"), "{line}");
    } else {
        set_mode(&ring, 0o000);
        let e = RingReader::open(&ring, StartAt::Oldest).expect_err("mode 0000");
        assert!(matches!(e, IpcError::PermissionDenied { .. }), "{e}");
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The group option: the file gets the group and g+rw.
fn group_option_sets_group_and_mode() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new("group");
    // SAFETY: getgid has no preconditions.
    let gid = unsafe { libc::getgid() };
    let opts = ShmOptions {
        group: Some(gid),
        ..ShmOptions::default()
    };
    let _w = RingWriter::create(&dir.ring(), 16, &opts).expect("create");
    let m = std::fs::metadata(dir.ring()).expect("stat");
    assert_eq!(m.mode() & 0o777, 0o660);
    assert_eq!(m.gid(), gid);
}

/// In one process: a writer thread and reader threads on a heap ring, checksums verified.
fn threads_on_heap_ring() {
    let mut w = RingWriter::heap(32).expect("heap ring");
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let mut r = w.reader(StartAt::Oldest);
            std::thread::spawn(move || {
                let (mut got, mut lost, mut torn) = (0u64, 0u64, 0u64);
                while r.next_seq() <= 300_000 {
                    match r.try_read() {
                        ReadOutcome::Record(x) => {
                            got += 1;
                            torn += u64::from(!intact(&x));
                        }
                        ReadOutcome::Lost { count, .. } => lost += count,
                        ReadOutcome::Empty => std::thread::yield_now(),
                    }
                }
                (got, lost, torn)
            })
        })
        .collect();
    for s in 1..=300_000 {
        w.publish(&checked_record(s));
    }
    for h in readers {
        let (got, lost, torn) = h.join().expect("reader thread");
        assert_eq!(torn, 0);
        assert_eq!(got + lost, 300_000);
    }
}

fn main() {
    if let Ok(role) = std::env::var(ROLE_VAR) {
        std::process::exit(run_role(&role));
    }
    let cases: &[(&str, fn())] = &[
        ("one_writer_several_readers", one_writer_several_readers),
        ("reader_killed_mid_read", reader_killed_mid_read),
        ("lapped_reader_exact_count", lapped_reader_exact_count),
        (
            "slow_reader_lapped_while_running",
            slow_reader_lapped_while_running,
        ),
        ("writer_killed_and_restarted", writer_killed_and_restarted),
        (
            "follower_through_lap_kill_stop_and_restarts",
            follower_through_lap_kill_stop_and_restarts,
        ),
        ("reader_started_before_writer", reader_started_before_writer),
        ("torn_read_hunt", torn_read_hunt),
        ("second_writer_refused", second_writer_refused),
        (
            "crafted_files_give_typed_errors",
            crafted_files_give_typed_errors,
        ),
        ("permission_denied_is_typed", permission_denied_is_typed),
        (
            "group_option_sets_group_and_mode",
            group_option_sets_group_and_mode,
        ),
        ("threads_on_heap_ring", threads_on_heap_ring),
    ];
    // Speak enough of libtest's command line for cargo test and cargo nextest:
    // `--list --format terse`, `--ignored` (we have none), `--exact`, and name filters.
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
    let list = args.iter().any(|a| a == "--list");
    if args.iter().any(|a| a == "--ignored") {
        // No case is ignored: list and run nothing.
        return;
    }
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, case) in cases {
        let matches = |f: &String| {
            if exact {
                name == f
            } else {
                name.contains(f.as_str())
            }
        };
        if !filters.is_empty() && !filters.iter().any(matches) {
            continue;
        }
        if list {
            println!("{name}: test");
            continue;
        }
        ran += 1;
        let t0 = Instant::now();
        let ok = std::panic::catch_unwind(AssertUnwindSafe(case)).is_ok();
        println!(
            "test {name} ... {} ({:.2?})",
            if ok { "ok" } else { "FAILED" },
            t0.elapsed()
        );
        if !ok {
            failed.push(*name);
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
        println!("failed: {failed:?}");
        std::process::exit(1);
    }
}
