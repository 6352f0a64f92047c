//! Real `ib-stream serve` (and engine) processes for the hostile-client tests: start them,
//! find the server's port, talk plain HTTP/1.x over blocking sockets, read its RSS.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ENGINE: &str = env!("CARGO_BIN_EXE_ib-stream");

/// A child process with its log; killed on drop (the log is printed if the test failed).
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn");
        Proc { child, log }
    }

    pub fn log(&self) -> String {
        plain(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- {} (last lines) ---", self.log.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Strips ANSI escapes (in case the log is colored).
pub fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ib-stream` with the shm and storage directories and `sets` as `--set` flags.
pub fn ib_stream(shm: &Path, storage: &Path, sets: &[String]) -> Command {
    let mut c = Command::new(ENGINE);
    c.env_clear();
    for s in [
        format!("IB_STREAM_SHM_DIR={}", shm.display()),
        format!("IB_STREAM_STORAGE_PATH={}", storage.display()),
        "IB_STREAM_ENABLE_STORAGE=false".into(),
        "IB_STREAM_LOG_LEVEL=info".into(),
    ]
    .iter()
    .chain(sets)
    {
        c.arg("--set").arg(s);
    }
    c
}

/// `ib-stream serve` on a free loopback port; `nofile` runs it under that file-descriptor
/// limit (through `prlimit`).
pub fn serve(
    shm: &Path,
    storage: &Path,
    logs: &Path,
    sets: &[String],
    nofile: Option<u64>,
) -> (Proc, u16) {
    let inner = ib_stream(shm, storage, sets);
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.env_clear()
                .arg(format!("--nofile={n}:{n}"))
                .arg("--")
                .arg(inner.get_program())
                .args(inner.get_args());
            c
        }
        None => inner,
    };
    cmd.args(["serve", "--host", "127.0.0.1", "--port", "0"]);
    let p = Proc::spawn(cmd, logs.join("serve.log"));
    let mut port = 0u16;
    wait_until("the server's address", 30, || {
        if let Some(x) = p
            .log()
            .lines()
            .filter(|l| l.contains("serving"))
            .find_map(|l| l.split("addr=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|x| x.parse().ok())
        {
            port = x;
        }
        port != 0
    });
    (p, port)
}

/// A `GET` over a fresh connection: the status and body, or `None` if no answer came
/// within `within`.
pub fn get(port: u16, path: &str, within: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(within)).unwrap();
    s.set_write_timeout(Some(within)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let deadline = Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if Instant::now() > deadline {
            return None;
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Some((status, body))
}

/// One SSE event.
#[derive(Debug, Clone)]
pub struct Ev {
    pub event: String,
    pub data: serde_json::Value,
}

/// A blocking SSE client over HTTP/1.0 (the body is the rest of the connection).
pub struct Sse {
    pub r: BufReader<TcpStream>,
    pub status: u16,
    pub headers_after: Duration,
}

impl Sse {
    pub fn open(port: u16, path: &str) -> Sse {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut r = BufReader::new(s);
        let mut status = 0;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).expect("response headers");
            let l = line.trim_end();
            if status == 0 {
                status = l.split(' ').nth(1).expect("a status line").parse().unwrap();
                continue;
            }
            if l.is_empty() {
                break;
            }
        }
        Sse {
            r,
            status,
            headers_after: t0.elapsed(),
        }
    }

    /// The next event (heartbeats skipped); `None` at the end of the stream.
    pub fn next(&mut self) -> Option<Ev> {
        loop {
            let mut ev = Ev {
                event: String::new(),
                data: serde_json::Value::Null,
            };
            loop {
                let mut line = String::new();
                let n = self.r.read_line(&mut line).expect("an SSE line");
                if n == 0 {
                    return None;
                }
                let l = line.trim_end_matches('\n');
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("event: ") {
                    ev.event = v.into();
                } else if let Some(v) = l.strip_prefix("data: ") {
                    ev.data = serde_json::from_str(v).unwrap();
                }
            }
            if !ev.event.is_empty() && ev.event != "heartbeat" {
                return Some(ev);
            }
        }
    }

    /// Reads until `n` ticks arrived; returns every event.
    pub fn ticks(&mut self, n: usize) -> Vec<Ev> {
        let mut out = Vec::new();
        let mut ticks = 0;
        while ticks < n {
            let e = self.next().expect("the stream ended early");
            if e.event == "tick" {
                ticks += 1;
            }
            out.push(e);
        }
        out
    }
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// One counter from `/metrics`.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, body) = get(port, "/metrics", Duration::from_secs(10))?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
