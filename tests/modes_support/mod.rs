//! Two environments side by side under `ib-stream up` (a recording production on tws-sim and
//! the mode under test), in their own directories and on free ports; and the read-only
//! enforcement: the mode's processes run in a mount namespace where production's directories
//! are read-only bind mounts, so any write into them fails with EROFS ("Read-only file
//! system"), which its debug logs then name.
#![allow(unreachable_pub, dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const EXE: &str = env!("CARGO_BIN_EXE_ib-stream");
/// The machine is shared with compilers; readiness normally takes a second or two.
pub const READY_WITHIN: Duration = Duration::from_secs(120);
pub const MNQ: u32 = 711_280_073;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// A test's directory, removed at the end (even on failure).
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(tag: &str) -> TestDir {
        let d = std::env::temp_dir().join(format!("ib-stream-modes-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TestDir(d)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One environment: its name (`--env`), directories, ports and extra settings.
pub struct Env {
    pub name: &'static str,
    pub cwd: PathBuf,
    pub shm: PathBuf,
    pub storage: PathBuf,
    pub serve_port: u16,
    pub sim_port: u16,
    pub sets: Vec<String>,
}

impl Env {
    pub fn new(dir: &Path, name: &'static str, storage: &Path) -> Env {
        Env {
            name,
            cwd: dir.to_path_buf(),
            shm: dir.join(format!("shm-{name}")),
            storage: storage.to_path_buf(),
            serve_port: free_port(),
            sim_port: free_port(),
            sets: Vec::new(),
        }
    }

    /// Reads `upstream`'s ring and storage (passthrough, migration).
    pub fn upstream(mut self, role: &str, up: &Env) -> Env {
        self.sets.push(format!("IB_STREAM_ROLE={role}"));
        self.sets
            .push(format!("IB_STREAM_UPSTREAM_SHM_DIR={}", up.shm.display()));
        self.sets.push(format!(
            "IB_STREAM_UPSTREAM_STORAGE_PATH={}",
            up.storage.display()
        ));
        self
    }

    pub fn set(mut self, kv: &str) -> Env {
        self.sets.push(kv.to_string());
        self
    }

    /// `ib-stream <sub> <flags>` as an argument vector.
    pub fn argv(&self, sub: &[&str]) -> Vec<String> {
        let mut a = vec![EXE.to_string(), "--env".into(), self.name.into()];
        for s in [
            format!("IB_STREAM_SHM_DIR={}", self.shm.display()),
            format!("IB_STREAM_STORAGE_PATH={}", self.storage.display()),
            format!("IB_STREAM_SERVE_PORT={}", self.serve_port),
            format!("IB_STREAM_PORTS={}", self.sim_port),
        ]
        .iter()
        .chain(&self.sets)
        {
            a.push("--set".into());
            a.push(s.clone());
        }
        a.extend(sub.iter().map(|s| s.to_string()));
        a
    }

    /// The command, run directly or, with `read_only`, in a mount namespace where those
    /// directories are read-only.
    pub fn command(&self, sub: &[&str], read_only: &[&Path]) -> Command {
        let argv = self.argv(sub);
        let mut c = if read_only.is_empty() {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        } else {
            let mut c = Command::new("unshare");
            c.args(["--user", "--map-root-user", "--mount", "--", "sh", "-c"])
                .arg(
                    "set -e; n=$1; shift; while [ \"$n\" -gt 0 ]; do \
                     mount --bind -o ro \"$1\" \"$1\"; shift; n=$((n-1)); done; exec \"$@\"",
                )
                .arg("sh")
                .arg(read_only.len().to_string());
            for d in read_only {
                c.arg(d);
            }
            c.args(&argv);
            c
        };
        c.current_dir(&self.cwd);
        for (k, _) in std::env::vars() {
            if k.starts_with("IB_STREAM_") {
                c.env_remove(k);
            }
        }
        c
    }

    pub fn log_dir(&self) -> PathBuf {
        self.storage.parent().unwrap().join("logs").join(self.name)
    }

    pub fn get(&self, path: &str) -> ib_stream::up::http::Answer {
        ib_stream::up::http::get(
            "127.0.0.1",
            self.serve_port,
            path,
            None,
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", self.serve_port))
    }
}

/// A running `up` and its output lines; dropping it stops everything.
pub struct Up {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Up {
    pub fn start(mut cmd: Command) -> Up {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for l in BufReader::new(pipe).lines() {
                    let Ok(l) = l else { return };
                    lines.lock().unwrap().push(l);
                }
            });
        }
        Up { child, lines }
    }

    /// `up --simulate` of a recording environment.
    pub fn recording(env: &Env) -> Up {
        Up::start(env.command(&["up", "--simulate", "--stop-timeout-secs", "15"], &[]))
    }

    /// `up --simulate` with tws-sim's fault-injection port at `control`.
    pub fn recording_with_control(env: &Env, control: u16) -> Up {
        let arg = format!("--sim-arg=--control-port={control}");
        Up::start(env.command(
            &["up", "--simulate", "--stop-timeout-secs", "15", &arg],
            &[],
        ))
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn wait_for(&self, needle: &str, within: Duration) {
        let until = Instant::now() + within;
        while !self
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
        {
            assert!(
                Instant::now() < until,
                "no `{needle}` within {within:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pid of the latest start of child `name`.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.lines.lock().unwrap().iter().rev().find_map(|l| {
            l.strip_prefix(&format!("up: started {name} (pid "))
                .and_then(|r| r.trim_end_matches(')').parse().ok())
        })
    }

    /// SIGTERM, then waits for `up` to exit (its children stopped in order).
    pub fn stop(&mut self) {
        signal(self.child.id(), rustix::process::Signal::TERM);
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                assert!(st.success(), "up exited with {st}:\n{}", self.output());
                return;
            }
            assert!(
                Instant::now() < until,
                "up did not stop:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.child.id(), rustix::process::Signal::TERM);
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until && self.child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let pids: Vec<u32> = self
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("up: started ") || l.starts_with("up: restarted "))
            .filter_map(|l| l.rsplit("pid ").next()?.trim_end_matches(')').parse().ok())
            .collect();
        for pid in pids {
            if Path::new(&format!("/proc/{pid}")).exists() {
                signal(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Sends one command to tws-sim's control port (`{"cmd":"lost"}`: IB connectivity lost,
/// market data stops; the engine then publishes only system records).
pub fn sim_command(port: u16, cmd: &str) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut s) => {
                writeln!(s, "{cmd}").unwrap();
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                return;
            }
            Err(e) => {
                assert!(Instant::now() < until, "tws-sim control port {port}: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Reads an SSE stream for up to `within`, until `ticks` tick events arrived; returns the
/// HTTP status and the body read.
pub fn sse(port: u16, path: &str, ticks: usize, within: Duration) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let until = Instant::now() + within;
    let mut body = Vec::new();
    let mut buf = [0u8; 16384];
    while Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        let text = String::from_utf8_lossy(&body);
        if text.matches("event: tick").count() >= ticks {
            break;
        }
    }
    let text = String::from_utf8_lossy(&body).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Every file's text under `dir` (logs), joined.
pub fn read_logs(dir: &Path) -> String {
    let mut out = String::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    out
}

/// Whether a log names a failed write into a read-only mount.
pub fn names_a_refused_write(log: &str) -> bool {
    log.contains("Read-only file system") || log.contains("os error 30")
}

/// Waits until `cond`.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The recorder status of a storage root.
pub fn recorder_last_seq(storage: &Path) -> Option<u64> {
    ib_stream::recorder::status::RecorderStatus::load(storage)
        .ok()
        .flatten()
        .map(|s| s.last_seq)
}

/// The ring head the recorder of `storage` last saw.
pub fn ring_head(storage: &Path) -> Option<u64> {
    ib_stream::recorder::status::RecorderStatus::load(storage)
        .ok()
        .flatten()
        .map(|s| s.ring_head)
}

/// `ib-stream storage compare --quiet --old A --new B`.
pub fn compare(old: &Path, new: &Path) -> (bool, String) {
    let o = Command::new(EXE)
        .args(["storage", "compare", "--quiet", "--old"])
        .arg(old)
        .arg("--new")
        .arg(new)
        .env_clear()
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// The migration copy of docs/OPERATIONS.md: the checkpoint first (the data copied after it
/// holds at least what it says), then the data while production records.
pub fn copy_storage(from: &Path, to: &Path) {
    let ckpt = to.with_extension("checkpoint.json");
    let sh = format!(
        "cp -p '{f}/recorder.checkpoint.json' '{c}' && mkdir -p '{t}' && cp -a '{f}/.' '{t}/' && mv '{c}' '{t}/recorder.checkpoint.json'",
        f = from.display(),
        t = to.display(),
        c = ckpt.display()
    );
    let st = Command::new("sh").arg("-c").arg(&sh).status().unwrap();
    assert!(st.success(), "{sh}");
}
