//! `ib-stream up` and `ib-stream status` as real processes: tws-sim, engine, recorder and web
//! server of one environment in unique shm/storage directories on free ports.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ib_stream::up::http;

const EXE: &str = env!("CARGO_BIN_EXE_ib-stream");
/// The machine is shared with compilers; readiness normally takes about a second.
const READY_WITHIN: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// One environment's flags: its own directories and ports.
struct Env {
    name: &'static str,
    dir: PathBuf,
    serve_port: u16,
    flags: Vec<String>,
}

impl Env {
    fn new(name: &'static str, tag: &str) -> Env {
        let dir =
            std::env::temp_dir().join(format!("ib-stream-up-{}-{tag}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let serve_port = free_port();
        let flags = vec![
            "--env".into(),
            name.into(),
            "--set".into(),
            format!("IB_STREAM_SHM_DIR={}", dir.join("shm").display()),
            "--set".into(),
            format!(
                "IB_STREAM_STORAGE_PATH={}",
                dir.join("storage").join(name).display()
            ),
            "--set".into(),
            format!("IB_STREAM_PORTS={}", free_port()),
            "--set".into(),
            format!("IB_STREAM_SERVE_PORT={serve_port}"),
        ];
        Env {
            name,
            dir,
            serve_port,
            flags,
        }
    }

    fn command(&self, sub: &str) -> Command {
        let mut c = Command::new(EXE);
        c.arg(sub).args(&self.flags).current_dir(&self.dir);
        // The test's own environment must not configure the children.
        for (k, _) in std::env::vars() {
            if k.starts_with("IB_STREAM_") {
                c.env_remove(k);
            }
        }
        c
    }

    fn status(&self) -> Output {
        self.command("status").output().unwrap()
    }
}

/// A running `up`, its output lines, and every child pid it announced; dropping it stops
/// everything (SIGTERM, then SIGKILL) so a failing test leaves no process behind.
struct Up {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Up {
    fn start(env: &Env) -> Up {
        let mut child = env
            .command("up")
            .arg("--simulate")
            .arg("--stop-timeout-secs")
            .arg("15")
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

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until `count` lines contain `needle`.
    fn wait_for(&self, needle: &str, count: usize, within: Duration) {
        let until = Instant::now() + within;
        loop {
            let n = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(needle))
                .count();
            if n >= count {
                return;
            }
            assert!(
                Instant::now() < until,
                "no `{needle}` (x{count}) within {within:?}; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pid of the latest start of `name` (`started name (pid N)` or `restarted ... pid N`).
    fn child_pid(&self, name: &str) -> u32 {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .rev()
            .find_map(|l| {
                if let Some(rest) = l.strip_prefix(&format!("up: started {name} (pid ")) {
                    return rest.trim_end_matches(')').parse().ok();
                }
                if l.starts_with(&format!("up: restarted {name} after")) {
                    return l.rsplit("pid ").next()?.parse().ok();
                }
                None
            })
            .unwrap_or_else(|| panic!("no pid for {name} in:\n{}", lines.join("\n")))
    }

    fn all_child_pids(&self) -> Vec<u32> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.starts_with("up: started ") || l.starts_with("up: restarted "))
            .filter_map(|l| l.rsplit("pid ").next()?.trim_end_matches(')').parse().ok())
            .collect()
    }

    /// SIGTERM, then waits for `up` to exit.
    fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        signal(self.child.id(), rustix::process::Signal::TERM);
        let until = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < until,
                "up did not stop within {within:?}; output:\n{}",
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
        for pid in self.all_child_pids() {
            if pid_alive(pid) {
                signal(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

#[test]
fn up_starts_the_environment_refuses_a_second_up_and_stops_everything_on_sigterm() {
    let env = Env::new("development", "life");
    let mut up = Up::start(&env);
    up.wait_for("up: development ready in", 1, READY_WITHIN);
    let out = up.output();
    for child in ["tws-sim", "engine", "recorder", "serve"] {
        assert!(out.contains(&format!("up: {child} ready (pid")), "{out}");
    }
    assert!(
        out.contains(&format!("page:   http://127.0.0.1:{}/", env.serve_port)),
        "{out}"
    );
    assert!(
        out.contains("/v3/stream/711280073?tick_types=bid_ask"),
        "{out}"
    );
    let log_dir = env.dir.join("storage/logs/development");
    assert!(
        out.contains(&format!("logs:   {}", log_dir.display())),
        "{out}"
    );
    for child in ["tws-sim", "engine", "recorder", "serve"] {
        assert!(log_dir.join(format!("{child}.log")).is_file(), "{child}");
    }

    let ready = http::get(
        "127.0.0.1",
        env.serve_port,
        "/ready",
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);

    // The simulation tracks MNQ bid_ask and last by default; ticks arrive at once.
    let until = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let st = env.status();
        let text = String::from_utf8_lossy(&st.stdout).to_string();
        let bid_ask_ticks = text
            .lines()
            .find(|l| l.contains("711280073 bid_ask") && l.contains("Active"))
            .and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok());
        if bid_ask_ticks.is_some_and(|n| n > 0) || Instant::now() >= until {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(text.contains("Connected, server version"), "{text}");
    assert!(text.contains("client id 20"), "{text}");
    assert!(
        text.contains(&format!("up:       running (pid {})", up.child.id())),
        "{text}"
    );
    assert!(text.contains("711280073 last"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("711280073 bid_ask") && l.contains("Active")),
        "{text}"
    );

    // A second `up` of the same environment is refused, naming the running one.
    let second = env.command("up").arg("--simulate").output().unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("development environment is already running")
            && err.contains(&format!("pid {}", up.child.id())),
        "{err}"
    );

    // Run long enough for the engine to publish several heartbeat records (one a second), so
    // the storage check below covers them too.
    std::thread::sleep(Duration::from_millis(2500));
    let pids = up.all_child_pids();
    assert_eq!(pids.len(), 4, "{}", up.output());
    let st = up.terminate(Duration::from_secs(90));
    assert!(st.success(), "{st:?}\n{}", up.output());
    let out = up.output();
    // Reverse order, each by SIGTERM: the recorder and engine exit by themselves.
    let pos = |s: &str| out.find(s).unwrap_or_else(|| panic!("no `{s}` in:\n{out}"));
    assert!(pos("up: serve stopped") < pos("up: recorder stopped (exit code 0)"));
    assert!(pos("up: recorder stopped (exit code 0)") < pos("up: engine stopped (exit code 0)"));
    assert!(pos("up: engine stopped (exit code 0)") < pos("up: tws-sim stopped"));
    assert!(out.contains("up: development stopped"), "{out}");
    for pid in pids {
        assert!(!pid_alive(pid), "child {pid} still running");
    }
    // Stopped: status says so and fails.
    let st = env.status();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stdout).contains("up:       not running"));
    // What the recorder wrote beside the real engine is complete: every sequence of the run is
    // stored or inside a gap record, every checksum holds.
    let v = env.command("storage").arg("validate").output().unwrap();
    assert!(
        v.status.success(),
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let _ = std::fs::remove_dir_all(&env.dir);
}

#[test]
fn a_child_killed_with_sigkill_is_restarted_and_said_so() {
    let env = Env::new("development", "restart");
    let up = Up::start(&env);
    up.wait_for("up: development ready in", 1, READY_WITHIN);
    let engine = up.child_pid("engine");
    signal(engine, rustix::process::Signal::KILL);
    up.wait_for(
        "up: restarted engine after signal 9 (attempt 1)",
        1,
        Duration::from_secs(30),
    );
    up.wait_for("up: engine ready (pid", 2, READY_WITHIN);
    let new_engine = up.child_pid("engine");
    assert_ne!(new_engine, engine);
    assert!(pid_alive(new_engine));

    let recorder = up.child_pid("recorder");
    signal(recorder, rustix::process::Signal::KILL);
    up.wait_for(
        "up: restarted recorder after signal 9 (attempt 1)",
        1,
        Duration::from_secs(30),
    );
    up.wait_for("up: recorder ready (pid", 2, READY_WITHIN);
    drop(up);
    let _ = std::fs::remove_dir_all(&env.dir);
}

#[test]
fn two_environments_run_side_by_side() {
    let dev = Env::new("development", "side");
    let stg = Env::new("staging", "side");
    let a = Up::start(&dev);
    let b = Up::start(&stg);
    a.wait_for("up: development ready in", 1, READY_WITHIN);
    b.wait_for("up: staging ready in", 1, READY_WITHIN);
    for (env, id) in [(&dev, 20), (&stg, 30)] {
        let text = String::from_utf8_lossy(&env.status().stdout).to_string();
        assert!(
            text.contains(&format!("environment {}", env.name)),
            "{text}"
        );
        assert!(text.contains(&format!("client id {id}")), "{text}");
        assert!(text.contains("Connected"), "{text}");
    }
    drop(a);
    drop(b);
    let _ = std::fs::remove_dir_all(&dev.dir);
    let _ = std::fs::remove_dir_all(&stg.dir);
}

#[test]
fn an_engine_left_running_outside_up_is_named_instead_of_fought() {
    let env = Env::new("staging", "orphan");
    let mut engine = env.command("engine").stderr(Stdio::null()).spawn().unwrap();
    // The engine creates its ring before it connects (nothing listens on its port).
    let ring = env.dir.join("shm").join("ticks.ring");
    let until = Instant::now() + READY_WITHIN;
    while !ring.exists() {
        assert!(Instant::now() < until, "engine made no ring");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = env.command("up").arg("--simulate").output().unwrap();
    let _ = engine.kill();
    let _ = engine.wait();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("an engine (pid {}) not started by", engine.id())),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&env.dir);
}

/// Whether the process exists and is not a zombie (a reparented child another process has yet
/// to reap has finished all the same).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The pids whose parent is `parent`, and their children, from /proc.
fn descendants(parent: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut frontier = vec![parent];
    while let Some(p) = frontier.pop() {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(p) {
                all.push(pid);
                frontier.push(pid);
            }
        }
    }
    all
}

fn wait_gone(pids: &[u32], within: Duration) -> Vec<u32> {
    let until = Instant::now() + within;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| running(*p)).collect();
        if alive.is_empty() || Instant::now() >= until {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ready_answers(port: u16) -> bool {
    http::get("127.0.0.1", port, "/ready", None, Duration::from_secs(2))
        .is_ok_and(|a| a.status == 200)
}

#[test]
fn up_keeps_running_when_its_stdout_reader_goes_away_and_stops_cleanly() {
    // `ib-stream up | head -3`: the reader takes three lines and closes the pipe.
    let env = Env::new("development", "headpipe");
    let mut up = env
        .command("up")
        .arg("--simulate")
        .arg("--stop-timeout-secs")
        .arg("15")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = up.stderr.take().unwrap();
    let err_text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&err_text);
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines() {
            let Ok(l) = l else { return };
            let mut s = sink.lock().unwrap();
            s.push_str(&l);
            s.push('\n');
        }
    });
    let mut out = BufReader::new(up.stdout.take().unwrap());
    for _ in 0..3 {
        let mut l = String::new();
        assert!(out.read_line(&mut l).unwrap() > 0);
    }
    drop(out);

    // Everything after the third line goes to a closed pipe; `up` still starts the rest.
    let until = Instant::now() + READY_WITHIN;
    while !ready_answers(env.serve_port) {
        assert!(
            up.try_wait().unwrap().is_none(),
            "up exited after its stdout closed; stderr:\n{}",
            err_text.lock().unwrap()
        );
        assert!(Instant::now() < until, "the web server never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let children = descendants(up.id());
    assert_eq!(
        children.len(),
        4,
        "tws-sim, engine, recorder, serve: {children:?}"
    );

    signal(up.id(), rustix::process::Signal::TERM);
    let until = Instant::now() + Duration::from_secs(90);
    let st = loop {
        if let Some(st) = up.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < until, "up did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = err_text.lock().unwrap().clone();
    assert!(st.success(), "{st:?}; stderr:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        wait_gone(&children, Duration::from_secs(5)),
        Vec::<u32>::new()
    );
    let _ = std::fs::remove_dir_all(&env.dir);
}

#[test]
fn no_child_outlives_an_up_killed_with_sigkill() {
    let env = Env::new("staging", "sigkill");
    let up = Up::start(&env);
    up.wait_for("up: staging ready in", 1, READY_WITHIN);
    let children = descendants(up.child.id());
    let mut announced = up.all_child_pids();
    announced.sort_unstable();
    let mut found = children.clone();
    found.sort_unstable();
    assert_eq!(found, announced, "{}", up.output());

    signal(up.child.id(), rustix::process::Signal::KILL);
    // Each child gets SIGTERM from the kernel and stops cleanly, as on `up`'s own SIGTERM.
    let left = wait_gone(&children, Duration::from_secs(60));
    assert!(
        left.is_empty(),
        "still running after up was killed: {left:?}"
    );
    drop(up);
    let _ = std::fs::remove_dir_all(&env.dir);
}

/// Runs `up` until it exits by itself (bounded), returning its status and output.
fn up_until_exit(env: &Env, within: Duration) -> (std::process::ExitStatus, String) {
    let mut up = Up::start(env);
    let until = Instant::now() + within;
    loop {
        if let Some(st) = up.child.try_wait().unwrap() {
            // The output threads finish when the pipes close.
            std::thread::sleep(Duration::from_millis(200));
            return (st, up.output());
        }
        assert!(
            Instant::now() < until,
            "up did not give up within {within:?}:\n{}",
            up.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_child_that_cannot_run_stops_up_with_the_childs_own_error() {
    // The web server's port is taken by another program.
    let env = Env::new("development", "portinuse");
    let _squatter = TcpListener::bind(("127.0.0.1", env.serve_port)).unwrap();
    let (st, out) = up_until_exit(&env, READY_WITHIN);
    assert_eq!(st.code(), Some(78), "{out}");
    assert!(
        out.contains(&format!(
            "cannot run: cannot listen on 127.0.0.1:{}: Address already in use",
            env.serve_port
        )),
        "{out}"
    );
    assert_eq!(
        out.matches("Address already in use").count(),
        2,
        "console and error: {out}"
    );
    assert!(!out.contains("restarted serve"), "{out}");
    assert!(out.contains("not restarting"), "{out}");
    assert!(out.contains("ib-stream: error: serve cannot run:"), "{out}");
    // The others were stopped in order.
    assert!(out.contains("up: engine stopped (exit code 0)"), "{out}");
    assert!(out.contains("up: development stopped"), "{out}");
    let _ = std::fs::remove_dir_all(&env.dir);

    // Storage the recorder cannot write.
    let mut env = Env::new("staging", "rostorage");
    std::fs::write(env.dir.join("file"), b"not a directory").unwrap();
    env.flags.push("--set".into());
    env.flags.push(format!(
        "IB_STREAM_STORAGE_PATH={}",
        env.dir.join("file").join("storage").display()
    ));
    env.flags.push("--logs".into());
    env.flags.push(env.dir.join("logs").display().to_string());
    let (st, out) = up_until_exit(&env, READY_WITHIN);
    assert_eq!(st.code(), Some(78), "{out}");
    assert!(
        out.contains("up: recorder (pid") && out.contains("cannot run: storage:"),
        "{out}"
    );
    assert!(out.contains("Not a directory"), "{out}");
    assert!(!out.contains("restarted recorder"), "{out}");
    let _ = std::fs::remove_dir_all(&env.dir);

    // The simulator's port is taken.
    let env = Env::new("staging", "simport");
    let sim_port: u16 = env
        .flags
        .iter()
        .find_map(|f| f.strip_prefix("IB_STREAM_PORTS=")?.parse().ok())
        .unwrap();
    let _squatter = TcpListener::bind(("127.0.0.1", sim_port)).unwrap();
    let (st, out) = up_until_exit(&env, READY_WITHIN);
    assert_eq!(st.code(), Some(78), "{out}");
    assert!(
        out.contains("up: tws-sim (pid")
            && out.contains(&format!(
                "cannot run: cannot listen on 127.0.0.1:{sim_port}: Address already in use"
            )),
        "{out}"
    );
    assert!(!out.contains("started engine"), "{out}");
    let _ = std::fs::remove_dir_all(&env.dir);
}

#[test]
fn a_child_that_ran_and_then_cannot_run_is_left_down_while_the_rest_keeps_running() {
    let env = Env::new("development", "stolenport");
    let mut up = Up::start(&env);
    up.wait_for("up: development ready in", 1, READY_WITHIN);
    let engine = up.child_pid("engine");
    let recorder = up.child_pid("recorder");
    // Another program takes the web server's port while the web server is down.
    let mut squatter = None;
    for attempt in 1..=5 {
        signal(up.child_pid("serve"), rustix::process::Signal::KILL);
        let until = Instant::now() + Duration::from_secs(2);
        while squatter.is_none() && Instant::now() < until {
            squatter = TcpListener::bind(("127.0.0.1", env.serve_port)).ok();
        }
        if squatter.is_some() {
            break;
        }
        // `up` restarted it first: kill the new one and try again.
        up.wait_for("up: serve ready (pid", attempt + 1, READY_WITHIN);
    }
    assert!(squatter.is_some(), "could not take the port");
    up.wait_for(
        "not restarting serve, the others keep running",
        1,
        Duration::from_secs(60),
    );
    let out = up.output();
    assert!(
        out.contains(&format!(
            "cannot run: cannot listen on 127.0.0.1:{}: Address already in use",
            env.serve_port
        )),
        "{out}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(up.child.try_wait().unwrap().is_none(), "{}", up.output());
    assert!(running(engine) && running(recorder), "{}", up.output());
    let restarts = up.output().matches("up: restarted serve").count();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        up.output().matches("up: restarted serve").count(),
        restarts,
        "{}",
        up.output()
    );
    let st = up.terminate(Duration::from_secs(90));
    assert!(st.success(), "{st:?}\n{}", up.output());
    assert!(!running(engine) && !running(recorder));
    drop(up);
    let _ = std::fs::remove_dir_all(&env.dir);
}
