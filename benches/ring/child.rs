//! The partner processes: this same binary re-executed with a role in the environment.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Environment variable that turns the bench binary into a partner process.
pub(crate) const ROLE_ENV: &str = "IB_RING_BENCH_ROLE";
/// Prefix of the other variables passed to a partner.
const ARG_PREFIX: &str = "IB_RING_BENCH_ARG_";

/// Core of the measuring (parent) process.
pub(crate) const PARENT_CORE: usize = 0;
/// Core of every partner process.
pub(crate) const CHILD_CORE: usize = 1;

/// Pins the calling thread to `core`, or fails (an unpinned run would be meaningless). The core
/// is named directly: a partner inherits the parent's one-core mask, so listing the cores it
/// may use would only show the parent's.
pub(crate) fn pin(core: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        core_affinity::set_for_current(core_affinity::CoreId { id: core }),
        "cannot pin to core {core} (the bench needs cores 0 and 1)"
    );
    Ok(())
}

/// A running partner. Killed on drop if it has not exited (a failed run leaves no spinner).
#[derive(Debug)]
pub(crate) struct Partner {
    role: String,
    child: Child,
    out: BufReader<ChildStdout>,
    input: ChildStdin,
}

impl Partner {
    /// Starts this binary as `role` with `args` (read back with [`Args`]), pinned to the
    /// partner core, and waits for its `ready` line.
    pub(crate) fn spawn(role: &str, args: &[(&str, String)]) -> anyhow::Result<Partner> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let mut cmd = Command::new(exe);
        cmd.env(ROLE_ENV, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in args {
            cmd.env(format!("{ARG_PREFIX}{}", k.to_ascii_uppercase()), v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning partner {role}"))?;
        let out = BufReader::new(child.stdout.take().context("partner stdout")?);
        let input = child.stdin.take().context("partner stdin")?;
        let mut p = Partner {
            role: role.to_string(),
            child,
            out,
            input,
        };
        let line = p.line()?;
        if line != "ready" {
            bail!("partner {role} said {line:?} instead of ready");
        }
        Ok(p)
    }

    /// Sends the partner one line (it waits for it with [`wait_for`]).
    pub(crate) fn send(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.input, "{line}")
            .with_context(|| format!("writing to partner {}", self.role))?;
        self.input.flush()?;
        Ok(())
    }

    /// The partner's next stdout line (an error at end of output: the partner died).
    pub(crate) fn line(&mut self) -> anyhow::Result<String> {
        let mut s = String::new();
        let n = self
            .out
            .read_line(&mut s)
            .with_context(|| format!("reading partner {}", self.role))?;
        if n == 0 {
            bail!("partner {} exited early (see its stderr above)", self.role);
        }
        Ok(s.trim_end().to_string())
    }

    /// Reads the partner's `key=value ...` result line, then waits for a clean exit.
    pub(crate) fn finish(mut self) -> anyhow::Result<HashMap<String, f64>> {
        let line = self.line()?;
        let mut kv = HashMap::new();
        for item in line.split_whitespace() {
            let (k, v) = item
                .split_once('=')
                .with_context(|| format!("bad partner output {line:?}"))?;
            kv.insert(
                k.to_string(),
                v.parse::<f64>()
                    .with_context(|| format!("bad number in {line:?}"))?,
            );
        }
        self.wait()?;
        Ok(kv)
    }

    /// Waits (bounded) for a successful exit.
    pub(crate) fn wait(mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::ensure!(status.success(), "partner {} failed: {status}", self.role);
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("partner {} did not exit", self.role);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Partner {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Arguments of a partner process, from its environment.
#[derive(Debug)]
pub(crate) struct Args;

impl Args {
    pub(crate) fn get(key: &str) -> anyhow::Result<String> {
        let name = format!("{ARG_PREFIX}{}", key.to_ascii_uppercase());
        std::env::var(&name).with_context(|| format!("partner argument {name} missing"))
    }

    pub(crate) fn num<T: std::str::FromStr>(key: &str) -> anyhow::Result<T>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        Ok(Self::get(key)?.parse::<T>()?)
    }
}

/// Tells the parent that this partner is set up (its first stdout line).
pub(crate) fn say_ready() {
    say("ready");
}

/// Blocks until the parent sends `line` (see [`Partner::send`]).
pub(crate) fn wait_for(line: &str) -> anyhow::Result<()> {
    let mut s = String::new();
    std::io::stdin().lock().read_line(&mut s)?;
    anyhow::ensure!(
        s.trim_end() == line,
        "expected {line:?} from the parent, got {s:?}"
    );
    Ok(())
}

/// One stdout line to the parent, flushed at once.
pub(crate) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
