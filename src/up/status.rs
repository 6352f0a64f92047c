//! `ib-stream status`: a short summary of a running environment from shared memory (the `up`
//! lock, the ring writer, the engine's status region), the recorder's status file and the web
//! server's `/health`. Healthy only when the engine is connected with a live ring and `/health`
//! answers 200.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::config::Settings;
use crate::ipc::{
    ConnState, Liveness, RingReader, StartAt, StatusReader, StatusSnapshot, SubState, WriterStatus,
    ring::RING_FILE_NAME,
};
use crate::recorder::status::RecorderStatus;

use super::ready::STATUS_REGION;
use super::{GlobalFlags, UpError, http, load};

/// Options of `ib-stream status`.
#[derive(Clone, Debug, clap::Args)]
pub struct StatusArgs {
    /// How long to wait for `/health`, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

/// Why `status` failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The configuration does not load.
    #[error(transparent)]
    Config(#[from] UpError),
    /// The environment is not healthy (the summary was printed).
    #[error("{env} is not healthy: {reasons}")]
    Unhealthy {
        /// The environment.
        env: String,
        /// Why, `; `-separated.
        reasons: String,
    },
}

/// The summary and whether it is healthy (`Err` holds the reasons).
pub fn summarise(settings: &Settings, timeout: Duration) -> (String, Result<(), Vec<String>>) {
    let mut out = String::new();
    let mut bad = Vec::new();
    let now = crate::ipc::shm::unix_time_ns();
    let env = settings.environment.name();
    let _ = writeln!(
        out,
        "environment {env} (shm {})",
        settings.shm_dir.display()
    );

    match super::running_up(&settings.shm_dir) {
        Some(p) => {
            let _ = writeln!(out, "up:       running (pid {p})");
        }
        None => {
            let _ = writeln!(out, "up:       not running");
        }
    }

    // Passthrough and migration read the upstream's ring: its engine is theirs to report.
    let ring_dir = settings.ring_dir();
    if settings.ring_read_only() {
        let _ = writeln!(
            out,
            "role:     {} (ring {} and history {}, read-only)",
            settings.role,
            ring_dir.display(),
            settings.history_root().display()
        );
    }
    match RingReader::open(&ring_dir.join(RING_FILE_NAME), StartAt::Newest) {
        Ok(r) => {
            let info = r.info();
            let st = r.writer_status(now, 5_000_000_000);
            let _ = writeln!(
                out,
                "ring:     epoch {:016x}, writer pid {}, {}",
                info.epoch,
                info.pid,
                describe_writer(&st)
            );
            if !matches!(st, WriterStatus::Alive { .. }) {
                bad.push(format!("ring writer {}", describe_writer(&st)));
            }
        }
        Err(e) => {
            let _ = writeln!(out, "ring:     none ({e})");
            bad.push("no ring: the engine is not running".into());
        }
    }

    let engine_client_id = engine_section(ring_dir, now as i64, &mut out, &mut bad);
    for line in
        crate::clientid::status_lines(&crate::clientid::IdSettings::of(settings), engine_client_id)
    {
        let _ = writeln!(out, "{line}");
    }
    readers_section(ring_dir, &mut out);
    if let Some(line) = crate::backfill::run::status_line(&settings.storage_path) {
        let _ = writeln!(out, "{line}");
    }

    let records = settings
        .role
        .children(settings.enable_storage)
        .contains(&super::plan::ChildKind::Recorder);
    if records {
        match RecorderStatus::load(&settings.storage_path) {
            Ok(Some(s)) => {
                let health = s.health(now as i64, 5_000_000_000);
                let _ = writeln!(
                    out,
                    "recorder: pid {}, {} records read, {} lost, last seq {}, {}",
                    s.pid,
                    s.records_read,
                    s.records_lost,
                    s.last_seq,
                    match &health {
                        Ok(()) => "healthy".to_string(),
                        Err(why) => why.clone(),
                    }
                );
                if let Err(why) = health {
                    bad.push(format!("recorder: {why}"));
                }
            }
            Ok(None) => {
                let _ = writeln!(out, "recorder: no status file yet");
                bad.push("recorder has not written a status".into());
            }
            Err(e) => {
                let _ = writeln!(out, "recorder: {e}");
                bad.push(format!("recorder: {e}"));
            }
        }
    }

    let base = format!("http://{}:{}", settings.serve_host, settings.serve_port);
    match http::get(
        &settings.serve_host,
        settings.serve_port,
        "/health",
        settings.token.as_deref(),
        timeout,
    ) {
        Ok(a) => match whose_server(&a.body, ring_dir) {
            Owner::Other(theirs) => {
                let _ = writeln!(
                    out,
                    "web:      {base}/ answers for ANOTHER environment (shm {theirs}; this one's is {})",
                    absolute(ring_dir).display()
                );
                bad.push(format!(
                    "port {} is another environment's web server (shm {theirs}); this environment's web server is not running",
                    settings.serve_port
                ));
            }
            owner => {
                let brief = health_brief(&a.body);
                let unknown = if owner == Owner::Unknown {
                    " (cannot tell whether it is this environment's: /health names no shm_dir)"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "web:      {base}/ /health {} {brief}{unknown}",
                    a.status
                );
                if a.status != 200 {
                    bad.push(format!("/health answered {}: {brief}", a.status));
                }
            }
        },
        Err(e) => {
            let _ = writeln!(out, "web:      {base}/ not answering ({e})");
            bad.push("the web server does not answer".into());
        }
    }
    let _ = writeln!(
        out,
        "health:   {}",
        if bad.is_empty() { "ok" } else { "NOT HEALTHY" }
    );
    (out, if bad.is_empty() { Ok(()) } else { Err(bad) })
}

fn describe_writer(st: &WriterStatus) -> String {
    match st {
        WriterStatus::Alive { heartbeat_age_ns } => {
            format!("alive (heartbeat {} ms ago)", heartbeat_age_ns / 1_000_000)
        }
        WriterStatus::Stopped => "stopped".into(),
        WriterStatus::Gone { pid } => format!("gone (pid {pid} no longer exists)"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// One line: each registered ring reader and how far behind the ring head it is (records).
/// Informational: a lagging reader does not make the environment unhealthy.
fn readers_section(shm: &Path, out: &mut String) {
    let Ok(reg) = crate::ipc::ReaderRegistry::open(&shm.join(crate::ipc::READERS_FILE_NAME)) else {
        return;
    };
    let ring = RingReader::open(&shm.join(RING_FILE_NAME), StartAt::Newest).ok();
    let list: Vec<String> = reg
        .entries()
        .iter()
        .map(|e| {
            let lag = match &ring {
                Some(r) => e
                    .lag(r.head(), r.info().epoch)
                    .map_or_else(|| "old epoch".to_string(), |l| format!("lag {l}")),
                None => "no ring".to_string(),
            };
            let dead = if e.alive == Some(false) { ", dead" } else { "" };
            format!("{} (pid {}, {lag}{dead})", e.name, e.pid)
        })
        .collect();
    let _ = writeln!(
        out,
        "readers:  {}",
        if list.is_empty() {
            "none registered".to_string()
        } else {
            list.join(", ")
        }
    );
}

/// The engine's lines; returns the client id it reports.
fn engine_section(shm: &Path, now: i64, out: &mut String, bad: &mut Vec<String>) -> Option<i32> {
    let reader = match StatusReader::open(&shm.join(STATUS_REGION)) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(out, "engine:   no status region ({e})");
            bad.push("no engine status region".into());
            return None;
        }
    };
    let mut snap = StatusSnapshot::new_boxed();
    if let Err(e) = reader.read(&mut snap) {
        let _ = writeln!(out, "engine:   {e}");
        bad.push(format!("engine: {e}"));
        return None;
    }
    let e = &snap.engine;
    let state = ConnState::from_u8(e.conn_state);
    let _ = writeln!(
        out,
        "engine:   pid {}, {}, server version {}, client id {}{}",
        reader.header().writer_pid,
        state.map_or_else(|| "unknown state".into(), |s| format!("{s:?}")),
        e.server_version,
        e.client_id,
        if e.last_error_code != 0 {
            format!(", last IB error {}", e.last_error_code)
        } else {
            String::new()
        }
    );
    if state != Some(ConnState::Connected) {
        bad.push(format!(
            "engine is {}",
            state.map_or_else(|| "in an unknown state".into(), |s| format!("{s:?}"))
        ));
    }
    match reader.liveness(now, 5_000_000_000) {
        Liveness::Alive => {}
        Liveness::Stale { age_ns } => bad.push(format!(
            "engine status heartbeat is {} ms old",
            age_ns / 1_000_000
        )),
        Liveness::Replaced => bad.push("engine restarted while reading".into()),
    }
    let c = &snap.counters;
    let _ = writeln!(
        out,
        "counters: {} records, {} reconnects, {} gaps, {} IB errors, {} rejected subscriptions",
        c.records_published, c.reconnects, c.gaps, c.ib_errors, c.subscriptions_rejected
    );
    for s in snap.subscriptions() {
        let kind = s.kind().map_or("?", |k| k.name());
        let state = s
            .state()
            .map_or_else(|| "?".to_string(), |st| format!("{st:?}"));
        let err = if s.ib_error_code != 0 && s.state() != Some(SubState::Active) {
            format!(" (IB error {})", s.ib_error_code)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {:>10} {:<9} {:<9} {} ticks{err}",
            s.con_id, kind, state, s.ticks
        );
    }
    Some(snap.engine.client_id)
}

/// Whose web server answered `/health`.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    /// This environment's (same shared-memory directory).
    Ours,
    /// Another environment's, serving this shm directory.
    Other(String),
    /// The answer does not say (not JSON, or a server without `shm_dir`).
    Unknown,
}

/// Compares the `shm_dir` a `/health` answer reports with ours: environments share nothing
/// but may be configured onto the same port, and only one of them can have it.
fn whose_server(body: &str, ours: &Path) -> Owner {
    let Some(theirs) = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("shm_dir")?.as_str().map(str::to_string))
    else {
        return Owner::Unknown;
    };
    let same = |a: &Path, b: &Path| {
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| absolute(p));
        canon(a) == canon(b)
    };
    if same(Path::new(&theirs), ours) {
        Owner::Ours
    } else {
        Owner::Other(theirs)
    }
}

fn absolute(p: &Path) -> std::path::PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The `reasons` of a `/health` JSON answer, or its status field.
fn health_brief(body: &str) -> String {
    let v: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(_) => return String::new(),
    };
    let status = v
        .get("status")
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_string();
    match v.get("reasons").and_then(|r| r.as_array()) {
        Some(r) if !r.is_empty() => {
            let rs: Vec<&str> = r.iter().filter_map(|x| x.as_str()).collect();
            format!("{status} ({})", rs.join("; "))
        }
        _ => status,
    }
}

/// `ib-stream status`: prints the summary; an error (non-zero exit) when not healthy.
pub fn run(flags: &GlobalFlags, args: &StatusArgs) -> Result<(), StatusError> {
    let loaded = load(flags)?;
    for w in loaded.warnings() {
        eprintln!("ib-stream: warning: {w}");
    }
    let (text, health) = summarise(&loaded.settings, Duration::from_millis(args.timeout_ms));
    say!("{}", text.trim_end_matches('\n'));
    health.map_err(|reasons| StatusError::Unhealthy {
        env: loaded.settings.environment.name().to_string(),
        reasons: reasons.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ipc::{ReaderRegistry, Record, RecordKind, RingWriter, ShmOptions};

    #[test]
    fn a_health_answer_is_ours_only_for_our_shm_dir() {
        let ours = Path::new("/dev/shm/ib-stream/development");
        let body = |dir: &str| format!(r#"{{"status":"healthy","shm_dir":"{dir}"}}"#);
        assert_eq!(
            whose_server(&body("/dev/shm/ib-stream/development"), ours),
            Owner::Ours
        );
        assert_eq!(
            whose_server(&body("/dev/shm/ib-stream/staging"), ours),
            Owner::Other("/dev/shm/ib-stream/staging".into())
        );
        assert_eq!(
            whose_server(r#"{"status":"healthy"}"#, ours),
            Owner::Unknown
        );
        assert_eq!(whose_server("not json", ours), Owner::Unknown);
    }

    #[test]
    fn the_readers_line_names_each_reader_with_its_lag() {
        let dir = std::env::temp_dir().join(format!(
            "up-status-readers-{}-{:x}",
            std::process::id(),
            crate::ipc::shm::random_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut out = String::new();
        readers_section(&dir, &mut out);
        assert_eq!(out, "", "no registry: no line");
        let mut w =
            RingWriter::create(&dir.join(RING_FILE_NAME), 64, &ShmOptions::default()).unwrap();
        for _ in 0..10 {
            w.publish(&Record::new(RecordKind::Heartbeat));
        }
        let reg = Arc::new(
            ReaderRegistry::open_or_create(
                &dir.join(crate::ipc::READERS_FILE_NAME),
                &ShmOptions::default(),
            )
            .unwrap(),
        );
        readers_section(&dir, &mut out);
        assert_eq!(out, "readers:  none registered\n");
        let _rec = reg.claim("recorder", w.info().epoch, 8).unwrap();
        out.clear();
        readers_section(&dir, &mut out);
        assert_eq!(
            out,
            format!("readers:  recorder (pid {}, lag 3)\n", std::process::id())
        );
        drop(w);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
