//! `ib-stream up`: runs one environment as separate processes (tws-sim when simulating, the
//! engine, the recorder, the web server), starts them in order of readiness, restarts a
//! crashed one with backoff, and stops them in reverse order on Ctrl-C or SIGTERM.
//!
//! `ib-stream status` ([`status`]) summarises a running environment.

/// Prints a line on `up`'s console, surviving a closed stdout ([`child::say`]).
macro_rules! say {
    ($($t:tt)*) => {
        $crate::up::child::say(format_args!($($t)*))
    };
}

pub mod child;
pub mod http;
pub mod plan;
pub mod preflight;
pub mod ready;
pub mod role;
pub mod status;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::{self, ConfigError, ConfigSources, Loaded};
use crate::engine::Backoff;
use crate::ipc::{IpcError, ShmOptions, WriterLock};

use child::{Running, describe_exit, log_path};
use plan::{ChildKind, ChildSpec, Plan};
pub use plan::{GlobalFlags, PlanError};

/// Options of `ib-stream up`.
#[derive(Clone, Debug, clap::Args)]
pub struct UpArgs {
    /// What this environment runs (sets IB_STREAM_ROLE): recording, passthrough, isolated,
    /// migration (docs/OPERATIONS.md, "Development modes") or mirror (another host's ring
    /// through NATS JetStream, no IB here; `ib-stream mirror`'s IB_STREAM_NATS_* settings apply).
    #[arg(long, value_parser = role::Role::parse)]
    pub role: Option<role::Role>,
    /// Run the simulated gateway (tws-sim) and point the engine at it. The default when no
    /// gateway is configured (neither IB_STREAM_HOST nor IB_STREAM_PORTS set).
    #[arg(long)]
    pub simulate: bool,
    /// Echo every child's output to this terminal as `[child] line` (the default when stdout
    /// is a terminal); the log files get it either way.
    #[arg(long)]
    pub foreground: bool,
    /// Directory of the child logs (default: `<storage>/../logs/<env>`, e.g.
    /// `storage/logs/development`).
    #[arg(long, value_name = "DIR")]
    pub logs: Option<PathBuf>,
    /// Seconds a child may take to become ready before `up` says what to check.
    #[arg(long, default_value_t = 60)]
    pub ready_timeout_secs: u64,
    /// Seconds each child gets to stop after SIGTERM before it is killed.
    #[arg(long, default_value_t = 10)]
    pub stop_timeout_secs: u64,
    /// One more argument for tws-sim (repeatable, in order; `--sim-arg=--rate=500`,
    /// `--sim-arg=--control-port=0`, `--sim-arg=--send-log=FILE`). Only when simulating; the
    /// port stays the one `up` chose.
    #[arg(long = "sim-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub sim_args: Vec<String>,
}

/// Why `up` could not run.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// A `--set` is not `KEY=VALUE`.
    #[error("--set {0}: expected KEY=VALUE")]
    BadSet(String),
    /// The configuration does not load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No plan (e.g. tws-sim missing).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The same environment already runs.
    #[error(
        "the {env} environment is already running under `ib-stream up`{pid} (lock {lock}); stop it first or choose another --env"
    )]
    AlreadyRunning {
        /// The environment.
        env: String,
        /// ` (pid N)` when known.
        pid: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// An engine not started by this `up` writes the environment's ring (for example one left
    /// behind by an `up` that was killed with SIGKILL).
    #[error(
        "an engine (pid {pid}) not started by `ib-stream up` is writing {ring}; stop it first (kill {pid})"
    )]
    ForeignEngine {
        /// Its pid.
        pid: u32,
        /// The ring file.
        ring: PathBuf,
    },
    /// Shared memory or the lock could not be set up.
    #[error("lock: {0}")]
    Lock(#[source] IpcError),
    /// The running executable could not be found.
    #[error("cannot find the ib-stream executable: {0}")]
    Exe(#[source] std::io::Error),
    /// Signal handlers could not be installed.
    #[error("signal handler: {0}")]
    Signal(#[source] std::io::Error),
    /// A child could not be started at all.
    #[error(transparent)]
    Spawn(#[from] child::SpawnError),
    /// A child exited with a cause a restart cannot cure (exit code 78: a port in use, storage
    /// it cannot write, a bad setting); the environment was stopped.
    #[error("{name} cannot run: {cause} (log {log})")]
    ChildCannotRun {
        /// The child.
        name: &'static str,
        /// Its last error line, or how it exited.
        cause: String,
        /// Its log file.
        log: PathBuf,
    },
}

/// The configuration sources for `flags` plus the process environment.
pub fn sources(g: &GlobalFlags) -> Result<ConfigSources, UpError> {
    let mut flags = Vec::new();
    for kv in &g.sets {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| UpError::BadSet(kv.clone()))?;
        flags.push(("--set".to_string(), k.trim().to_string(), v.to_string()));
    }
    Ok(ConfigSources {
        environment: g.env,
        env_file: g.env_file.clone(),
        env_vars: std::env::vars().collect(),
        flags,
    })
}

/// The configuration of `flags` plus the process environment.
pub fn load(g: &GlobalFlags) -> Result<Loaded, UpError> {
    Ok(config::load(&sources(g)?)?)
}

/// The lock file that makes `up` exclusive per environment (in its shm namespace).
pub fn lock_target(shm_dir: &std::path::Path) -> PathBuf {
    shm_dir.join("up")
}

/// The pid of the live `ib-stream up` running the environment whose shm directory is
/// `shm_dir`, if any (the pid in its lock file).
pub fn running_up(shm_dir: &std::path::Path) -> Option<u32> {
    let lock = WriterLock::lock_path(&lock_target(shm_dir));
    std::fs::read_to_string(lock)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|p| crate::ipc::shm::process_alive(*p) == Some(true))
}

/// One supervised child and its restart state.
#[derive(Debug)]
struct Slot {
    spec: ChildSpec,
    running: Option<Running>,
    started: Instant,
    started_ns: i64,
    ready: bool,
    ever_ready: bool,
    ready_since: Option<Instant>,
    warned_slow: bool,
    backoff: Backoff,
    restart_at: Option<Instant>,
    last_exit: Option<String>,
    restarts: u32,
    /// Exited with a cause a restart cannot cure after it had run: left down.
    given_up: bool,
}

/// A stable run this long forgives earlier crashes (the next crash waits the first delay).
const STABLE_AFTER: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
/// How long an exited child's last output may take to arrive through its pipes.
const CAUSE_WAIT: Duration = Duration::from_secs(1);

/// `ib-stream up`.
pub fn run(flags: &GlobalFlags, args: &UpArgs) -> Result<(), UpError> {
    let mut flags = flags.clone();
    if let Some(r) = args.role {
        flags.sets.push(format!("IB_STREAM_ROLE={r}"));
    }
    if let Some(f) = &flags.env_file {
        let cwd = std::env::current_dir().map_err(UpError::Exe)?;
        flags.env_file = Some(config::absolutize(&cwd, f));
    }
    let loaded = load(&flags)?;
    for w in loaded.warnings() {
        say!("up: warning: {w}");
    }
    let exe = std::env::current_exe().map_err(UpError::Exe)?;
    let mut plan = plan::make_plan(
        &loaded,
        &flags,
        args.simulate,
        &exe,
        args.logs.clone(),
        |g| config::load(&sources(g).map_err(|e| ConfigError::Inconsistent(e.to_string()))?),
    )?;
    plan.add_sim_args(&args.sim_args)?;
    let env = plan.environment.name();

    let lock_at = lock_target(&plan.settings.shm_dir);
    let _lock = match WriterLock::acquire(&lock_at, &ShmOptions::default()) {
        Ok(l) => l,
        Err(IpcError::WriterPresent { pid, .. }) => {
            return Err(UpError::AlreadyRunning {
                env: env.to_string(),
                pid: pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                lock: WriterLock::lock_path(&lock_at),
            });
        }
        Err(e) => return Err(UpError::Lock(e)),
    };

    if let Some(pid) = ready::live_ring_writer(&plan) {
        return Err(UpError::ForeignEngine {
            pid,
            ring: plan.settings.shm_dir.join(crate::ipc::ring::RING_FILE_NAME),
        });
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGQUIT,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(UpError::Signal)?;
    }

    let echo = args.foreground || std::io::stdout().is_terminal();
    print_intro(&plan);
    let t0 = Instant::now();
    let mut slots: Vec<Slot> = plan
        .children
        .iter()
        .enumerate()
        .map(|(i, spec)| Slot {
            spec: spec.clone(),
            running: None,
            started: t0,
            started_ns: 0,
            ready: false,
            ever_ready: false,
            ready_since: None,
            warned_slow: false,
            backoff: Backoff::new(
                500_000_000,
                30_000_000_000,
                u64::from(std::process::id()) ^ (i as u64) << 32,
            ),
            restart_at: None,
            last_exit: None,
            restarts: 0,
            given_up: false,
        })
        .collect();
    let mut announced = false;
    let ready_timeout = Duration::from_secs(args.ready_timeout_secs);
    let mut failed = None;

    while !stop.load(Ordering::Relaxed) && failed.is_none() {
        let now = Instant::now();
        for i in 0..slots.len() {
            let predecessors_up = slots[..i]
                .iter()
                .all(|s| s.ever_ready || gate_open(s, &plan));
            let slot = &mut slots[i];
            // Exited?
            if let Some(r) = &mut slot.running
                && let Ok(Some(st)) = r.child.try_wait()
            {
                let how = describe_exit(st);
                let name = slot.spec.kind.name();
                let log = log_path(&plan.log_dir, name);
                let cause = r.cause(CAUSE_WAIT);
                let said = cause
                    .as_deref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                if st.code() == Some(i32::from(crate::report::EXIT_PERMANENT)) && slot.ever_ready {
                    // It ran before: the rest of the environment (recording above all) is
                    // worth keeping; only this child stays down.
                    say!(
                        "up: {name} (pid {}) cannot run{said}\n    ({how}: a restart cannot fix this; not restarting {name}, the others keep running; log {})",
                        r.pid,
                        log.display()
                    );
                    slot.running = None;
                    slot.ready = false;
                    slot.given_up = true;
                    continue;
                }
                if st.code() == Some(i32::from(crate::report::EXIT_PERMANENT)) {
                    // At start: the environment cannot come up as configured.
                    say!(
                        "up: {name} (pid {}) cannot run{said}\n    ({how}: a restart cannot fix this; not restarting; log {})",
                        r.pid,
                        log.display()
                    );
                    slot.running = None;
                    failed = Some(UpError::ChildCannotRun {
                        name,
                        cause: cause.unwrap_or(how),
                        log,
                    });
                    break;
                }
                let delay = Duration::from_nanos(slot.backoff.next_delay());
                say!(
                    "up: {name} (pid {}) exited with {how}{said}; restarting in {} ms (log {})",
                    r.pid,
                    delay.as_millis(),
                    log.display()
                );
                slot.running = None;
                slot.ready = false;
                slot.ready_since = None;
                slot.restart_at = Some(now + delay);
                slot.last_exit = Some(how);
            }
            // Start or restart.
            if slot.running.is_none() && !slot.given_up {
                let due = match slot.restart_at {
                    Some(at) => now >= at,
                    None => predecessors_up,
                };
                if due {
                    start(slot, &plan, echo)?;
                }
            }
            // Ready?
            if let Some(r) = &slot.running {
                if !slot.ready && ready::is_ready(slot.spec.kind, r, slot.started_ns, &plan) {
                    slot.ready = true;
                    slot.ever_ready = true;
                    slot.ready_since = Some(now);
                    say!(
                        "up: {} ready (pid {}) after {:.1} s{}",
                        slot.spec.kind.name(),
                        r.pid,
                        slot.started.elapsed().as_secs_f64(),
                        ready::detail(slot.spec.kind, r, &plan)
                    );
                } else if !slot.ready
                    && !slot.warned_slow
                    && slot.started.elapsed() >= ready_timeout
                {
                    slot.warned_slow = true;
                    say!(
                        "up: {} is not ready after {} s: {}\n    log: {}",
                        slot.spec.kind.name(),
                        ready_timeout.as_secs(),
                        ready::not_ready_hint(slot.spec.kind, &plan),
                        log_path(&plan.log_dir, slot.spec.kind.name()).display()
                    );
                }
            }
            if slot
                .ready_since
                .is_some_and(|t| now.duration_since(t) >= STABLE_AFTER)
            {
                slot.backoff.reset();
            }
        }
        if !announced && slots.iter().all(|s| s.ready) {
            announced = true;
            print_banner(&plan, &flags, t0.elapsed());
        }
        std::thread::sleep(POLL);
    }

    say!("up: stopping {env} (children in reverse order)");
    let grace = Duration::from_secs(args.stop_timeout_secs);
    for slot in slots.iter_mut().rev() {
        if let Some(r) = slot.running.take() {
            stop_child(slot.spec.kind, r, grace);
        }
    }
    say!("up: {env} stopped");
    failed.map_or(Ok(()), Err)
}

/// Whether the children after this one may start: it is ready, or (for the engine) its ring is
/// live even though IB is not connected yet, so the web server can report what is wrong.
fn gate_open(s: &Slot, plan: &Plan) -> bool {
    s.ready
        || (matches!(s.spec.kind, ChildKind::Engine | ChildKind::Mirror)
            && s.running
                .as_ref()
                .is_some_and(|r| ready::engine_ring_live(r.pid, plan)))
}

fn start(slot: &mut Slot, plan: &Plan, echo: bool) -> Result<(), UpError> {
    let name = slot.spec.kind.name();
    let r = child::spawn(&slot.spec, &plan.log_dir, echo)?;
    if let Some(how) = slot.last_exit.take() {
        slot.restarts += 1;
        say!(
            "up: restarted {name} after {how} (attempt {}), pid {}",
            slot.restarts,
            r.pid
        );
    } else {
        say!("up: started {name} (pid {})", r.pid);
    }
    slot.started = Instant::now();
    slot.started_ns = crate::ipc::shm::unix_time_ns() as i64;
    slot.warned_slow = false;
    slot.restart_at = None;
    slot.running = Some(r);
    Ok(())
}

fn stop_child(kind: ChildKind, mut r: Running, grace: Duration) {
    let name = kind.name();
    if let Ok(Some(st)) = r.child.try_wait() {
        say!("up: {name} had already exited ({})", describe_exit(st));
        return;
    }
    if let Err(e) = child::terminate(r.pid) {
        say!("up: cannot signal {name} (pid {}): {e}", r.pid);
    }
    let until = Instant::now() + grace;
    loop {
        match r.child.try_wait() {
            Ok(Some(st)) => {
                say!("up: {name} stopped ({})", describe_exit(st));
                return;
            }
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            _ => break,
        }
    }
    say!(
        "up: {name} (pid {}) did not stop within {} s; killing it",
        r.pid,
        grace.as_secs()
    );
    let _ = child::signal_group(r.pid, rustix::process::Signal::KILL);
    let _ = r.child.kill();
    let _ = r.child.wait();
}

fn print_intro(plan: &Plan) {
    let s = &plan.settings;
    let env = plan.environment.name();
    if s.role.reads_upstream_ring() {
        say!(
            "up: {env}: role {}: reading the ring in {} and the history in {} read-only (subscriptions there: {})",
            s.role,
            s.upstream_shm_dir.display(),
            s.upstream_storage_path.display(),
            if s.may_subscribe() {
                "allowed"
            } else {
                "refused"
            }
        );
    } else if !s.enable_storage {
        say!(
            "up: {env}: storage off: recording nothing, history from {} read-only",
            s.upstream_storage_path.display()
        );
    }
    match plan.sim_port {
        _ if !s.role.runs_engine() => {}
        Some(p) => say!(
            "up: {env}: simulating an IB Gateway (tws-sim on 127.0.0.1:{p}), client id {}",
            s.engine_client_id_text()
        ),
        None => say!(
            "up: {env}: IB at {}:{}, client id {}",
            s.ib_host,
            s.ib_ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
            s.engine_client_id_text()
        ),
    }
    say!(
        "up: shm {}, storage {}, logs {}",
        s.shm_dir.display(),
        s.storage_path.display(),
        abs(&plan.log_dir).display()
    );
}

fn abs(p: &std::path::Path) -> PathBuf {
    std::env::current_dir()
        .map(|c| config::absolutize(&c, p))
        .unwrap_or_else(|_| p.to_path_buf())
}

fn shell_word(a: &str) -> String {
    if a.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_=./:,@".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

fn print_banner(plan: &Plan, flags: &GlobalFlags, took: Duration) {
    let s = &plan.settings;
    let base = format!("http://{}:{}", s.serve_host, s.serve_port);
    say!(
        "up: {} ready in {:.1} s",
        plan.environment.name(),
        took.as_secs_f64()
    );
    say!("    page:   {base}/");
    if let Some(t) = s.tracked_contracts.first() {
        let kind = t.kinds.first().map(|k| k.name()).unwrap_or("bid_ask");
        say!(
            "    stream: {base}/v3/stream/{}?tick_types={kind}  ({})",
            t.con_id,
            t.symbol
        );
    }
    say!("    logs:   {}", abs(&plan.log_dir).display());
    let status_args: Vec<String> = plan::global_args(flags, plan.environment)
        .iter()
        .map(|a| shell_word(a))
        .collect();
    say!("    status: ib-stream status {}", status_args.join(" "));
    say!("    stop:   Ctrl-C");
}
