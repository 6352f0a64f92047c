//! Shared helpers of the engine's end-to-end tests: real `tws-sim` and `ib-stream engine`
//! processes, a fresh shared-memory directory each, everything bounded in time.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ib_stream::ipc::{ReadOutcome, Record, RecordKind, RingReader, StartAt};

pub const SIM: &str = env!("CARGO_BIN_EXE_tws-sim");
pub const ENGINE: &str = env!("CARGO_BIN_EXE_ib-stream");

/// A fresh directory under /dev/shm, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let p = base.join(format!(
            "ib-stream-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running tws-sim.
pub struct Sim {
    pub child: Child,
    pub port: u16,
    pub control_port: u16,
}

fn port_of(line: &str, prefix: &str) -> u16 {
    let rest = line
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected `{prefix}...`, got `{line}`"));
    rest.rsplit(':').next().unwrap().trim().parse().unwrap()
}

impl Sim {
    pub fn start(args: &[&str]) -> Sim {
        let mut child = Command::new(SIM)
            .args(["--port", "0", "--control-port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tws-sim");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut l1 = String::new();
        let mut l2 = String::new();
        out.read_line(&mut l1).unwrap();
        out.read_line(&mut l2).unwrap();
        // Keep draining stdout so the simulator never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        Sim {
            child,
            port: port_of(l1.trim(), "listening "),
            control_port: port_of(l2.trim(), "control "),
        }
    }

    /// Sends one control command and returns the answer.
    pub fn control(&self, cmd: &str) -> serde_json::Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.control_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(cmd.as_bytes()).unwrap();
        s.write_all(b"\n").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], true, "sim control {cmd}: {v}");
        v
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tws-sim expected` output.
pub fn expected(
    con_id: u32,
    tick_type: &str,
    count: usize,
    extra: &[&str],
) -> Vec<serde_json::Value> {
    let out = Command::new(SIM)
        .args([
            "expected",
            "--con-id",
            &con_id.to_string(),
            "--tick-type",
            tick_type,
        ])
        .args(["--count", &count.to_string()])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A running engine.
pub struct Engine {
    pub child: Child,
    pub dir: PathBuf,
    pub stderr_path: PathBuf,
}

pub fn engine_cmd(dir: &Path, port: u16, sets: &[&str], args: &[&str]) -> Command {
    let mut c = Command::new(ENGINE);
    c.arg("--set")
        .arg(format!("IB_STREAM_SHM_DIR={}", dir.display()))
        .arg("--set")
        .arg(format!("IB_STREAM_PORTS={port}"))
        .arg("--set")
        .arg("IB_STREAM_RING_CAPACITY=65536")
        .arg("--set")
        .arg("IB_STREAM_LOG_LEVEL=debug")
        // The contract store lives under the storage root: keep it in the test's directory.
        .arg("--set")
        .arg(format!(
            "IB_STREAM_STORAGE_PATH={}",
            dir.join("storage").display()
        ));
    for s in sets {
        c.arg("--set").arg(s);
    }
    c.arg("engine").args(args);
    c
}

impl Engine {
    pub fn start(dir: &Path, port: u16, sets: &[&str], args: &[&str]) -> Engine {
        static N: AtomicU32 = AtomicU32::new(0);
        let stderr_path = dir.with_extension(format!(
            "engine-{}-{}.log",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let log = std::fs::File::create(&stderr_path).unwrap();
        let child = engine_cmd(dir, port, sets, args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ib-stream engine");
        Engine {
            child,
            dir: dir.to_path_buf(),
            stderr_path,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn ring(&self) -> RingReader {
        RingReader::open_wait(
            &self.dir.join("ticks.ring"),
            StartAt::Oldest,
            Duration::from_secs(20),
            Duration::from_millis(10),
        )
        .expect("the engine's ring")
    }

    pub fn control(&self) -> Ctl {
        let path = self.dir.join("control.sock");
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            match UnixStream::connect(&path) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    return Ctl {
                        r: BufReader::new(s.try_clone().unwrap()),
                        w: s,
                    };
                }
                Err(e) if Instant::now() > until => panic!("control socket: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// A control-socket client.
pub struct Ctl {
    pub r: BufReader<UnixStream>,
    pub w: UnixStream,
}

impl Ctl {
    pub fn send(&mut self, line: &str) {
        self.w.write_all(line.as_bytes()).unwrap();
        self.w.write_all(b"\n").unwrap();
    }
    pub fn recv(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "control socket closed");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply `{line}`: {e}"))
    }
    pub fn call(&mut self, line: &str) -> serde_json::Value {
        self.send(line);
        self.recv()
    }
}

/// Reads records until `done` says so or `secs` pass (then panics with what was seen).
pub fn read_until(
    ring: &mut RingReader,
    secs: u64,
    seen: &mut Vec<Record>,
    mut done: impl FnMut(&[Record]) -> bool,
) {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if done(seen) {
            return;
        }
        match ring.try_read() {
            ReadOutcome::Record(r) => seen.push(r),
            ReadOutcome::Empty => {
                if Instant::now() > until {
                    let tail: Vec<String> = seen
                        .iter()
                        .rev()
                        .take(30)
                        .map(|r| format!("{r:?}"))
                        .collect();
                    panic!("timed out after {} records; last: {tail:#?}", seen.len());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            ReadOutcome::Lost { count, .. } => panic!("reader lost {count} records"),
        }
    }
}

pub fn is_kind(r: &Record, k: RecordKind) -> bool {
    r.kind == k as u8
}

pub fn count_kind(recs: &[Record], k: RecordKind, con_id: u32) -> usize {
    recs.iter()
        .filter(|r| r.kind == k as u8 && r.instrument_id == con_id)
        .count()
}

pub fn price(s: &str) -> i64 {
    ib_stream::tickjson::parse_fixed(s, ib_stream::ipc::PRICE_SCALE).unwrap()
}

pub fn size(s: &str) -> i64 {
    ib_stream::tickjson::parse_fixed(s, ib_stream::ipc::SIZE_SCALE).unwrap()
}
