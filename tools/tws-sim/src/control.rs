//! The control channel: line-JSON commands over TCP on 127.0.0.1 (one JSON object a line in,
//! one a line out), and the `--faults` schedule that runs the same commands at set times.
//!
//! Commands (`client` is a client id; without it the command goes to every client):
//! - `{"cmd":"drop"}`: close the connection.
//! - `{"cmd":"stall","ms":500}`: send nothing for that long.
//! - `{"cmd":"split","max_chunk":3,"bytes":65536}`: cut the next `bytes` sent bytes into
//!   writes of 1..=max_chunk bytes (arbitrary byte boundaries, inside frames and headers).
//! - `{"cmd":"malformed"}`: send a frame whose length no client accepts.
//! - `{"cmd":"lost"}`: 1100, ticks stop. `{"cmd":"restored","kept":false}`: 1101 and every
//!   subscription dropped; `"kept":true`: 1102 and ticks resume.
//! - `{"cmd":"farm","code":2103}`: a farm notice (market data 2103 broken / 2104 OK / 2108
//!   inactive / 2119 connecting, HMDS 2105/2106/2107, sec-def 2157/2158).
//! - `{"cmd":"competing","on":true}`: 10197 for each subscription and no data until off.
//! - `{"cmd":"restart","down_ms":500}`: close the listener and every connection, listen again.
//! - `{"cmd":"stats"}`: clients with ticks sent per subscription, and the cancels the account
//!   received since the simulator started (kept after clients disconnect), and the historical
//!   service's counters (`historical`: requests, answers, refusals, pacing violations).
//!
//! Answers: `{"ok":true,"clients":<n addressed>}`,
//! `{"ok":true,"clients":[...stats...],"cancels":{"mkt_data":n,"tick_by_tick":n,"unknown":n},`
//! `"historical":{"pacing_violations":n,...}}`
//! or `{"ok":false,"error":"..."}`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use crate::connection::Fault;
use crate::hub::{Hub, Target};
use crate::server::ServerCommand;
use crate::session::code;

/// One control command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    Drop {
        client: Option<i32>,
    },
    Stall {
        client: Option<i32>,
        ms: u64,
    },
    Split {
        client: Option<i32>,
        #[serde(default = "default_chunk")]
        max_chunk: usize,
        #[serde(default = "default_split_bytes")]
        bytes: u64,
    },
    Malformed {
        client: Option<i32>,
    },
    Lost {
        client: Option<i32>,
    },
    Restored {
        client: Option<i32>,
        #[serde(default)]
        kept: bool,
    },
    Farm {
        client: Option<i32>,
        code: i32,
    },
    Competing {
        client: Option<i32>,
        on: bool,
    },
    Restart {
        #[serde(default = "default_down_ms")]
        down_ms: u64,
    },
    Stats {
        client: Option<i32>,
    },
}

fn default_chunk() -> usize {
    3
}
fn default_split_bytes() -> u64 {
    64 * 1024
}
fn default_down_ms() -> u64 {
    500
}

fn target(client: Option<i32>) -> Target {
    client.map_or(Target::All, Target::Client)
}

/// Carries out commands against the running server.
#[derive(Debug, Clone)]
pub struct Executor {
    pub hub: Arc<Hub>,
    pub server: Sender<ServerCommand>,
}

impl Executor {
    /// Runs one command; the answer is the JSON line to send back.
    pub fn run(&self, cmd: Command) -> serde_json::Value {
        info!(?cmd, "control command");
        let fault = |client: Option<i32>, f: Fault| json!({"ok": true, "clients": self.hub.fault(target(client), &f)});
        match cmd {
            Command::Drop { client } => {
                json!({"ok": true, "clients": self.hub.drop_clients(target(client))})
            }
            Command::Stall { client, ms } => fault(client, Fault::Stall(Duration::from_millis(ms))),
            Command::Split {
                client,
                max_chunk,
                bytes,
            } => {
                if max_chunk == 0 {
                    return json!({"ok": false, "error": "max_chunk must be at least 1"});
                }
                fault(client, Fault::Split { max_chunk, bytes })
            }
            Command::Malformed { client } => fault(client, Fault::Malformed),
            Command::Lost { client } => fault(client, Fault::Lost),
            Command::Restored { client, kept } => fault(client, Fault::Restored { kept }),
            Command::Farm { client, code: c } => {
                if !code::is_farm_notice(c) {
                    return json!({"ok": false, "error": format!("{c} is not a farm notice (2103..2108, 2119, 2157, 2158)")});
                }
                fault(client, Fault::Farm(c))
            }
            Command::Competing { client, on } => fault(client, Fault::Competing(on)),
            Command::Restart { down_ms } => match self.server.send(ServerCommand::Restart {
                down: Duration::from_millis(down_ms),
            }) {
                Ok(()) => json!({"ok": true}),
                Err(_) => json!({"ok": false, "error": "the server has stopped"}),
            },
            Command::Stats { client } => {
                json!({
                    "ok": true,
                    "clients": self.hub.stats(target(client)),
                    "cancels": self.hub.gateway.cancels(),
                    "historical": self.hub.gateway.historical_stats(std::time::Instant::now()),
                })
            }
        }
    }

    /// Parses and runs one line.
    pub fn run_line(&self, line: &str) -> serde_json::Value {
        match serde_json::from_str::<Command>(line) {
            Ok(cmd) => self.run(cmd),
            Err(e) => json!({"ok": false, "error": format!("bad command: {e}")}),
        }
    }
}

/// Serves the control port: a thread per connection, a line in, a line out.
pub fn serve(listener: TcpListener, exec: Executor) {
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                let exec = exec.clone();
                let spawned = std::thread::Builder::new()
                    .name("tws-sim-control".into())
                    .spawn(move || {
                        if let Err(e) = serve_one(s, &exec) {
                            info!("control connection ended: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    warn!("control thread not started: {e}");
                }
            }
            Err(e) => warn!("control accept failed: {e}"),
        }
    }
}

fn serve_one(stream: TcpStream, exec: &Executor) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        // One write per answer, so a reader never sees half a line in one read.
        let mut answer = exec.run_line(&line).to_string();
        answer.push('\n');
        out.write_all(answer.as_bytes())?;
    }
    Ok(())
}

/// Why a fault schedule was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("cannot read fault schedule: {0}")]
    Read(#[from] std::io::Error),
    #[error("fault schedule line {line}: {why}")]
    Line { line: usize, why: String },
}

/// Parses a schedule: lines `<ms after start> <command JSON>`, blank lines and `#` comments
/// ignored. Sorted by time.
pub fn parse_schedule(text: &str) -> Result<Vec<(Duration, Command)>, ScheduleError> {
    let mut items = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: String| ScheduleError::Line { line: n + 1, why };
        let (ms, cmd) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad("expected `<ms> <json>`".into()))?;
        let ms: u64 = ms
            .parse()
            .map_err(|_| bad(format!("{ms:?} is not a number of milliseconds")))?;
        let cmd: Command = serde_json::from_str(cmd.trim()).map_err(|e| bad(e.to_string()))?;
        items.push((Duration::from_millis(ms), cmd));
    }
    items.sort_by_key(|(t, _)| *t);
    Ok(items)
}

pub fn load_schedule(path: &Path) -> Result<Vec<(Duration, Command)>, ScheduleError> {
    parse_schedule(&std::fs::read_to_string(path)?)
}

/// Runs a schedule from `start` on its own thread.
pub fn run_schedule(items: Vec<(Duration, Command)>, exec: Executor, start: Instant) {
    for (at, cmd) in items {
        std::thread::sleep((start + at).saturating_duration_since(Instant::now()));
        let answer = exec.run(cmd);
        info!(%answer, "scheduled fault");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        let c: Command =
            serde_json::from_str(r#"{"cmd":"split","client":7,"max_chunk":2}"#).unwrap();
        assert_eq!(
            c,
            Command::Split {
                client: Some(7),
                max_chunk: 2,
                bytes: 65536
            }
        );
        let c: Command = serde_json::from_str(r#"{"cmd":"restored","kept":true}"#).unwrap();
        assert_eq!(
            c,
            Command::Restored {
                client: None,
                kept: true
            }
        );
        assert!(serde_json::from_str::<Command>(r#"{"cmd":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Command>(r#"{"cmd":"drop","clinet":1}"#).is_err());
    }

    #[test]
    fn schedules_parse_and_sort() {
        let s = parse_schedule(
            "# faults\n2000 {\"cmd\":\"drop\"}\n\n500 {\"cmd\":\"lost\",\"client\":3}\n",
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0],
            (
                Duration::from_millis(500),
                Command::Lost { client: Some(3) }
            )
        );
        assert!(matches!(
            parse_schedule("soon {\"cmd\":\"drop\"}"),
            Err(ScheduleError::Line { line: 1, .. })
        ));
        assert!(matches!(
            parse_schedule("10 {\"cmd\":1}"),
            Err(ScheduleError::Line { line: 1, .. })
        ));
    }
}
