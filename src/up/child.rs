//! One supervised child process: spawning it in its own process group (so a terminal's Ctrl-C
//! reaches only `up`, which stops the children in order) with a parent-death signal (so it
//! never outlives `up`, even one killed with SIGKILL), copying its output to its log file (and
//! to the terminal with a prefix), remembering its last error line, and signalling it.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::plan::ChildSpec;

/// A running child.
#[derive(Debug)]
pub struct Running {
    /// The process.
    pub child: Child,
    /// Its pid.
    pub pid: u32,
    /// The first stdout line starting with `listening ` (tws-sim's readiness line).
    pub listening: Arc<Mutex<Option<String>>>,
    /// What the child said last about an error (see [`Running::cause`]).
    said: Arc<Mutex<Said>>,
    /// One message per output pipe when it closes.
    pipes_closed: Receiver<()>,
}

/// The lines a child's exit is explained by.
#[derive(Debug, Default)]
struct Said {
    /// The last line that mentions an error (`ib-stream: error: ...`, a tracing `ERROR`).
    error: Option<String>,
    /// The last line on stderr.
    stderr: Option<String>,
}

impl Running {
    /// The child's own explanation of its exit: its last error line, else its last stderr
    /// line. Call after it exited: this first waits (at most `within`) until its output pipes
    /// closed, so the final line is not lost in transit.
    pub fn cause(&self, within: Duration) -> Option<String> {
        let until = Instant::now() + within;
        for _ in 0..2 {
            let left = until.saturating_duration_since(Instant::now());
            if self.pipes_closed.recv_timeout(left).is_err() {
                break;
            }
        }
        let said = self.said.lock().unwrap_or_else(|p| p.into_inner());
        said.error.clone().or_else(|| said.stderr.clone())
    }
}

/// Prints one line on `up`'s console. A closed stdout (`ib-stream up | head -3`) must not stop
/// `up` or its children: the line is dropped instead.
pub fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(line).and_then(|()| out.write_all(b"\n"));
    let _ = out.flush();
}

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The log file could not be opened.
    #[error("log file {path}: {source}")]
    Log {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The process could not be started.
    #[error("start {program}: {source}")]
    Spawn {
        /// The executable.
        program: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The log file of a child.
pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

/// Starts `spec`, appending its stdout and stderr to `<log_dir>/<name>.log`; with `echo` each
/// line is also printed as `[name] line`.
pub fn spawn(spec: &ChildSpec, log_dir: &Path, echo: bool) -> Result<Running, SpawnError> {
    let name = spec.kind.name();
    let path = log_path(log_dir, name);
    let log_err = |source| SpawnError::Log {
        path: path.clone(),
        source,
    };
    // 0600 in a 0700 directory: logs quote contracts, accounts and errors.
    crate::storage::private_fs::create_private_dir_all(log_dir).map_err(log_err)?;
    let mut file = crate::storage::private_fs::open_private_append(&path).map_err(log_err)?;
    writeln!(
        file,
        "=== ib-stream up: starting {} {} ===",
        spec.program.display(),
        spec.args.join(" ")
    )
    .map_err(log_err)?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|source| SpawnError::Spawn {
        program: spec.program.clone(),
        source,
    })?;
    let pid = child.id();
    let file = Arc::new(Mutex::new(file));
    let listening = Arc::new(Mutex::new(None));
    let said = Arc::new(Mutex::new(Said::default()));
    let (closed_tx, pipes_closed) = channel();
    if let Some(out) = child.stdout.take() {
        let to = Pump {
            name,
            log: Arc::clone(&file),
            echo,
            listening: Some(Arc::clone(&listening)),
            said: Arc::clone(&said),
            stderr: false,
            closed: closed_tx.clone(),
        };
        to.run(out);
    }
    if let Some(err) = child.stderr.take() {
        let to = Pump {
            name,
            log: file,
            echo,
            listening: None,
            said: Arc::clone(&said),
            stderr: true,
            closed: closed_tx,
        };
        to.run(err);
    }
    Ok(Running {
        child,
        pid,
        listening,
        said,
        pipes_closed,
    })
}

/// Makes the child get SIGTERM (its clean-shutdown signal) when `up` dies, however it dies.
/// The kernel sends it when the *thread* that forked the child exits; `up` spawns every child
/// from its main thread, which lives as long as `up`.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // work is allowed: it makes two raw system calls (prctl, getppid) through rustix, which
    // neither allocates nor takes locks, and builds an io::Error from a raw errno (no
    // allocation).
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
                .map_err(|e| std::io::Error::from_raw_os_error(e.raw_os_error()))?;
            // `up` may have died between fork and prctl: then no signal will ever come.
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::from_raw_os_error(
                    rustix::io::Errno::SRCH.raw_os_error(),
                ));
            }
            Ok(())
        });
    }
}

/// Where one of a child's pipes goes.
struct Pump {
    name: &'static str,
    log: Arc<Mutex<File>>,
    echo: bool,
    listening: Option<Arc<Mutex<Option<String>>>>,
    said: Arc<Mutex<Said>>,
    stderr: bool,
    closed: std::sync::mpsc::Sender<()>,
}

impl Pump {
    /// Copies lines from the pipe to the log (and the terminal) until the pipe closes.
    fn run(self, from: impl Read + Send + 'static) {
        std::thread::spawn(move || {
            let mut r = BufReader::new(from);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                self.note(text);
                {
                    let mut f = self.log.lock().unwrap_or_else(|p| p.into_inner());
                    // A full disk must not stop the child: its pipe keeps draining.
                    let _ = writeln!(f, "{text}");
                }
                if self.echo {
                    say(format_args!("[{}] {text}", self.name));
                }
            }
            let _ = self.closed.send(());
        });
    }

    fn note(&self, text: &str) {
        if let Some(l) = &self.listening {
            let mut slot = l.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() && text.starts_with("listening ") {
                *slot = Some(text.to_string());
            }
        }
        if text.trim().is_empty() {
            return;
        }
        let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = error_text(text) {
            said.error = Some(e.to_string());
        }
        if self.stderr {
            said.stderr = Some(text.to_string());
        }
    }
}

/// The error a line reports, if it reports one: `ib-stream: error: X` and `tws-sim: error: X`
/// give X (how it reads in `up`'s messages); a tracing line at level ERROR gives itself.
fn error_text(text: &str) -> Option<&str> {
    if let Some((prog, rest)) = text.split_once(": error: ")
        && !prog.contains(' ')
    {
        return Some(rest);
    }
    text.split_whitespace()
        .take(3)
        .any(|w| w == "ERROR")
        .then_some(text)
}

/// How an exit reads in messages: `exit code N` or `signal N`.
pub fn describe_exit(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        (None, None) => "an unknown status".into(),
    }
}

/// Sends `sig` to the child's process group: the child and anything it started. Only while
/// the child is not yet reaped, so its group id cannot belong to another process.
pub fn signal_group(pid: u32, sig: rustix::process::Signal) -> std::io::Result<()> {
    let pid =
        rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| std::io::Error::other("pid 0"))?;
    rustix::process::kill_process_group(pid, sig).map_err(Into::into)
}

/// Sends SIGTERM (the children's clean-shutdown signal) to the child's process group.
pub fn terminate(pid: u32) -> std::io::Result<()> {
    signal_group(pid, rustix::process::Signal::TERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_recognised_and_lose_the_program_prefix() {
        assert_eq!(
            error_text("ib-stream: error: cannot listen on 127.0.0.1:1: in use"),
            Some("cannot listen on 127.0.0.1:1: in use")
        );
        assert_eq!(error_text("tws-sim: error: x"), Some("x"));
        let traced = "2026-12-07T09:00:00Z ERROR ib_stream::recorder: write failed";
        assert_eq!(error_text(traced), Some(traced));
        assert_eq!(error_text("2026-12-07T09:00:00Z  INFO ready"), None);
        assert_eq!(error_text("a message about error: codes"), None);
    }
}
