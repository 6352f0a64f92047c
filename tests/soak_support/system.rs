//! The whole system as real processes under `ib-stream up --simulate`: its output (and so the
//! pid of every child start), the simulator's control port, a `stats` poller that learns which
//! (client id, request id) is which contract and kind, and a `/proc` memory sampler.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const EXE: &str = env!("CARGO_BIN_EXE_ib-stream");
pub const SIM: &str = env!("CARGO_BIN_EXE_tws-sim");

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

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

pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The roles `up` runs, as it names them.
pub const ROLES: [&str; 3] = ["engine", "recorder", "serve"];

/// One environment's directories and ports.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    pub shm: PathBuf,
    pub storage: PathBuf,
    pub sim_port: u16,
    pub control_port: u16,
    pub serve_port: u16,
    pub send_log: PathBuf,
}

impl Layout {
    pub fn new(tag: &str) -> Layout {
        let dir = std::env::temp_dir().join(format!("ib-stream-soak-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Layout {
            shm: dir.join("shm"),
            storage: dir.join("storage").join("development"),
            send_log: dir.join("send.log"),
            sim_port: free_port(),
            control_port: free_port(),
            serve_port: free_port(),
            dir,
        }
    }

    /// `--env development` plus this layout's directories, ports and tracked contracts.
    pub fn flags(&self, tracked: &str) -> Vec<String> {
        let mut f = vec!["--env".to_string(), "development".into()];
        for kv in [
            format!("IB_STREAM_SHM_DIR={}", self.shm.display()),
            format!("IB_STREAM_STORAGE_PATH={}", self.storage.display()),
            format!("IB_STREAM_PORTS={}", self.sim_port),
            format!("IB_STREAM_SERVE_PORT={}", self.serve_port),
            format!("IB_STREAM_TRACKED_CONTRACTS={tracked}"),
        ] {
            f.push("--set".into());
            f.push(kv);
        }
        f
    }

    pub fn command(&self, sub: &str, tracked: &str) -> Command {
        let mut c = Command::new(EXE);
        c.arg(sub).args(self.flags(tracked)).current_dir(&self.dir);
        // The test's own environment must not configure the children.
        for (k, _) in std::env::vars() {
            if k.starts_with("IB_STREAM_") {
                c.env_remove(k);
            }
        }
        c
    }
}

/// A running `ib-stream up`; dropping it stops everything.
pub struct Up {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Up {
    pub fn start(layout: &Layout, tracked: &str, sim_args: &[String]) -> Up {
        let mut c = layout.command("up", tracked);
        c.arg("--simulate").args(["--stop-timeout-secs", "20"]);
        for a in sim_args {
            c.arg(format!("--sim-arg={a}"));
        }
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
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

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn wait_for(&self, needle: &str, within: Duration) {
        let until = Instant::now() + within;
        while self.count(needle) == 0 {
            assert!(
                Instant::now() < until,
                "no `{needle}` within {within:?}; up said:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pid of the latest start of `name`.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        latest_pid(&self.lines.lock().unwrap(), name)
    }

    pub fn all_child_pids(&self) -> Vec<u32> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("up: started ") || l.starts_with("up: restarted "))
            .filter_map(|l| l.rsplit("pid ").next()?.trim_end_matches(')').parse().ok())
            .collect()
    }

    /// SIGTERM and wait (bounded) for a clean stop.
    pub fn stop(&mut self, within: Duration) -> std::process::ExitStatus {
        signal(self.child.id(), rustix::process::Signal::TERM);
        let until = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < until,
                "up did not stop within {within:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn latest_pid(lines: &[String], name: &str) -> Option<u32> {
    lines.iter().rev().find_map(|l| {
        if let Some(rest) = l.strip_prefix(&format!("up: started {name} (pid ")) {
            return rest.trim_end_matches(')').parse().ok();
        }
        if l.starts_with(&format!("up: restarted {name} after")) {
            return l.rsplit("pid ").next()?.parse().ok();
        }
        None
    })
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.child.id(), rustix::process::Signal::TERM);
            let until = Instant::now() + Duration::from_secs(40);
            while Instant::now() < until && self.child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for pid in self.all_child_pids() {
            if pid_alive(pid) {
                signal(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// One command to the simulator's control port; the answer line as JSON.
pub fn sim_control(port: u16, cmd: &str) -> Result<serde_json::Value, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("{cmd}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))
}

/// What the simulator said a (client id, request id) subscribes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubSeen {
    pub at_ns: i64,
    pub con_id: u32,
    pub kind: String,
}

pub type SubsSeen = HashMap<(i32, i32), Vec<SubSeen>>;

/// Polls `stats` every 100 ms until stopped; every observation of every subscription.
pub fn spawn_stats_poller(port: u16, stop: Arc<AtomicBool>) -> JoinHandle<SubsSeen> {
    std::thread::spawn(move || {
        let mut seen: SubsSeen = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            let at_ns = now_ns();
            if let Ok(v) = sim_control(port, r#"{"cmd":"stats"}"#) {
                for c in v["clients"].as_array().into_iter().flatten() {
                    let client = c["client_id"].as_i64().unwrap_or(-1) as i32;
                    for s in c["subscriptions"].as_array().into_iter().flatten() {
                        let key = (client, s["req_id"].as_i64().unwrap_or(-1) as i32);
                        let sub = SubSeen {
                            at_ns,
                            con_id: s["con_id"].as_u64().unwrap_or(0) as u32,
                            kind: s["kind"].as_str().unwrap_or("").to_string(),
                        };
                        // Every observation, not only changes: request ids repeat across
                        // engine runs, so an instance is named by the first poll after its
                        // start, which must be there even when the mapping did not change.
                        seen.entry(key).or_default().push(sub);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        seen
    })
}

/// One memory sample of one process.
#[derive(Clone, Debug)]
pub struct MemSample {
    pub t_s: f64,
    pub role: &'static str,
    pub rss_kb: u64,
    pub anon_kb: u64,
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Samples VmRSS and RssAnon of the current engine, recorder and web server once a second.
pub fn spawn_mem_sampler(
    lines: Arc<Mutex<Vec<String>>>,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<MemSample>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let pids: Vec<(&'static str, Option<u32>)> = {
                let l = lines.lock().unwrap();
                ROLES.iter().map(|r| (*r, latest_pid(&l, r))).collect()
            };
            for (role, pid) in pids {
                let Some(pid) = pid else { continue };
                if let (Some(rss), Some(anon)) = (
                    proc_status_kb(pid, "VmRSS:"),
                    proc_status_kb(pid, "RssAnon:"),
                ) {
                    out.push(MemSample {
                        t_s: t0.elapsed().as_secs_f64(),
                        role,
                        rss_kb: rss,
                        anon_kb: anon,
                    });
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        out
    })
}

/// `prlimit --fsize` on a running process (RLIMIT_FSIZE: writes past it fail with EFBIG).
pub fn prlimit_fsize(pid: u32, soft: &str) -> bool {
    Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={soft}:")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// SplitMix64: the fault schedule's seeded randomness.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (ms or any unit).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}
