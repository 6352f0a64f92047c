//! One supervised child process: spawning it in its own process group (so a terminal's Ctrl-C
//! reaches only `up`, which stops the children in order), copying its output to its log file
//! (and to the terminal with a prefix), and signalling it.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

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
    let mut child = Command::new(&spec.program)
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| SpawnError::Spawn {
            program: spec.program.clone(),
            source,
        })?;
    let pid = child.id();
    let file = Arc::new(Mutex::new(file));
    let listening = Arc::new(Mutex::new(None));
    if let Some(out) = child.stdout.take() {
        pump(
            name,
            out,
            Arc::clone(&file),
            echo,
            Some(Arc::clone(&listening)),
        );
    }
    if let Some(err) = child.stderr.take() {
        pump(name, err, file, echo, None);
    }
    Ok(Running {
        child,
        pid,
        listening,
    })
}

/// Copies lines from a child's pipe to its log (and the terminal) until the pipe closes.
fn pump(
    name: &'static str,
    from: impl Read + Send + 'static,
    log: Arc<Mutex<File>>,
    echo: bool,
    listening: Option<Arc<Mutex<Option<String>>>>,
) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            if let Some(l) = &listening {
                let mut slot = l.lock().unwrap_or_else(|p| p.into_inner());
                if slot.is_none() && text.starts_with("listening ") {
                    *slot = Some(text.to_string());
                }
            }
            {
                let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
                // A full disk must not stop the child: its pipe keeps draining.
                let _ = writeln!(f, "{text}");
            }
            if echo {
                println!("[{name}] {text}");
            }
        }
    });
}

/// How an exit reads in messages: `exit code N` or `signal N`.
pub fn describe_exit(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        (None, None) => "an unknown status".into(),
    }
}

/// Sends SIGTERM (the children's clean-shutdown signal).
pub fn terminate(pid: u32) -> std::io::Result<()> {
    let pid =
        rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| std::io::Error::other("pid 0"))?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).map_err(Into::into)
}
