//! `ib-stream top`: a live terminal view of the engine's status region (connection,
//! subscriptions and their state, rates, latency percentiles) and the ring's head.
//! Plain ANSI redraw; `--once` prints one frame without escape codes (for scripts and tests).

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::ipc::{
    Histogram, RingReader, SnapshotError, StartAt, StatusReader, StatusSnapshot, SubState,
};
use crate::tickjson::{conn_state_name, sub_state_name};

/// Options of `ib-stream top`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// Print one frame and exit (no screen control codes).
    #[arg(long)]
    pub once: bool,
    /// Seconds between frames (rates are measured over this interval).
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Wait this long for the status region to appear, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub wait: f64,
}

/// Why top could not run.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// No status region (no engine ran in this directory).
    #[error("open {path}: {source}")]
    Open {
        /// The status file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: crate::ipc::IpcError,
    },
    /// The engine has not published a consistent snapshot in time.
    #[error("status: {0}")]
    Snapshot(#[from] SnapshotError),
    /// Writing the frame failed.
    #[error("write: {0}")]
    Write(#[from] std::io::Error),
}

fn open_status(path: &Path, wait: Duration) -> Result<StatusReader, TopError> {
    let until = std::time::Instant::now() + wait;
    loop {
        match StatusReader::open(path) {
            Ok(r) => return Ok(r),
            Err(e) if std::time::Instant::now() >= until => {
                return Err(TopError::Open {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn read_snapshot(r: &StatusReader, out: &mut StatusSnapshot) -> Result<(), TopError> {
    let mut last = SnapshotError::NotPublished;
    for _ in 0..100 {
        match r.read(out) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(last.into())
}

fn ns_human(v: Option<u64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 10_000 => format!("{v}ns"),
        Some(v) if v < 10_000_000 => format!("{:.1}us", v as f64 / 1e3),
        Some(v) => format!("{:.1}ms", v as f64 / 1e6),
    }
}

fn hist_line(name: &str, h: &Histogram) -> String {
    format!(
        "  {name:<16} n={:<10} p50={:<8} p99={:<8} p99.9={:<8} max={}",
        h.count,
        ns_human(h.percentile(0.5)),
        ns_human(h.percentile(0.99)),
        ns_human(h.percentile(0.999)),
        ns_human((h.count > 0).then_some(h.max)),
    )
}

fn ago(now: i64, t: i64) -> String {
    if t <= 0 {
        return "never".into();
    }
    let s = (now - t).max(0) as f64 / 1e9;
    format!("{s:.1}s ago")
}

/// Renders one frame. `prev` (the snapshot one interval earlier) gives rates.
pub fn render(
    snap: &StatusSnapshot,
    prev: Option<(&StatusSnapshot, f64)>,
    epoch: u64,
    ring_head: Option<u64>,
    now: i64,
) -> String {
    let mut s = String::new();
    let e = &snap.engine;
    let c = &snap.counters;
    let _ = writeln!(
        s,
        "ib-stream engine  epoch {epoch:016x}  state {}  server v{}  client id {}",
        conn_state_name(e.conn_state),
        e.server_version,
        e.client_id
    );
    let _ = writeln!(
        s,
        "connected {}  started {}  last IB error {} ({})  updated {}",
        ago(now, e.connected_since_ns),
        ago(now, e.started_ns),
        e.last_error_code,
        ago(now, e.last_error_ns),
        ago(now, e.updated_ns)
    );
    let rate = |f: fn(&StatusSnapshot) -> u64| -> String {
        match prev {
            Some((p, secs)) if secs > 0.0 => {
                format!("{:.0}/s", f(snap).saturating_sub(f(p)) as f64 / secs)
            }
            _ => "-".into(),
        }
    };
    let _ = writeln!(
        s,
        "records {} ({})  ring head {}  bytes {} ({})  frames {}  decode errors {}",
        c.records_published,
        rate(|x| x.counters.records_published),
        ring_head.map_or("-".into(), |h| h.to_string()),
        c.bytes_read,
        rate(|x| x.counters.bytes_read),
        c.frames_decoded,
        c.decode_errors
    );
    let _ = writeln!(
        s,
        "sent {}  pacing delays {}  reconnects {}  gaps {}  IB errors {}  rejected {}  control requests {}",
        c.messages_sent,
        c.pacing_delays,
        c.reconnects,
        c.gaps,
        c.ib_errors,
        c.subscriptions_rejected,
        c.control_requests
    );
    let _ = writeln!(s, "latency");
    let _ = writeln!(
        s,
        "{}",
        hist_line("recv->publish", &snap.latencies.recv_to_publish)
    );
    let _ = writeln!(
        s,
        "{}",
        hist_line("loop iteration", &snap.latencies.loop_iteration)
    );
    let _ = writeln!(
        s,
        "readers: the ring keeps no reader registry; each reader knows its own lag (RingReader::lag)"
    );
    let subs = snap.subscriptions();
    let _ = writeln!(s, "subscriptions ({})", subs.len());
    let _ = writeln!(
        s,
        "  {:>10} {:<10} {:<10} {:>8} {:>6} {:>10} {:>9} {:>12}",
        "conId", "kind", "state", "req", "code", "ticks", "rate", "last tick"
    );
    for sub in subs {
        let kind = sub.kind().map_or("?", |k| k.name());
        let state = sub_state_name(sub.state);
        let delayed =
            if matches!(sub.market_data_type, 3 | 4) || sub.state() == Some(SubState::Delayed) {
                " (delayed)"
            } else {
                ""
            };
        let r = match prev {
            Some((p, secs)) if secs > 0.0 => p
                .find_subscription(
                    sub.con_id,
                    sub.kind().unwrap_or(crate::ipc::RecordKind::Gap),
                )
                .map_or("-".into(), |o| {
                    format!("{:.0}/s", sub.ticks.saturating_sub(o.ticks) as f64 / secs)
                }),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "  {:>10} {:<10} {:<10} {:>8} {:>6} {:>10} {:>9} {:>12}{delayed}",
            sub.con_id,
            kind,
            state,
            sub.req_id,
            sub.ib_error_code,
            sub.ticks,
            r,
            ago(now, sub.last_tick_ns)
        );
    }
    s
}

/// Runs top on the status region in `dir`.
pub fn run(dir: &Path, args: &TopArgs, w: &mut dyn Write) -> Result<(), TopError> {
    let reader = open_status(
        &dir.join("status"),
        Duration::from_secs_f64(args.wait.max(0.0)),
    )?;
    let ring = RingReader::open(&dir.join("ticks.ring"), StartAt::Newest).ok();
    let mut snap = StatusSnapshot::new_boxed();
    let mut prev = StatusSnapshot::new_boxed();
    read_snapshot(&reader, &mut snap)?;
    if args.once {
        let now = crate::ipc::shm::unix_time_ns() as i64;
        let frame = render(
            &snap,
            None,
            reader.epoch(),
            ring.as_ref().map(|r| r.head()),
            now,
        );
        w.write_all(frame.as_bytes())?;
        return Ok(());
    }
    let interval = Duration::from_secs_f64(args.interval.max(0.05));
    loop {
        std::mem::swap(&mut snap, &mut prev);
        std::thread::sleep(interval);
        read_snapshot(&reader, &mut snap)?;
        let now = crate::ipc::shm::unix_time_ns() as i64;
        let frame = render(
            &snap,
            Some((&prev, interval.as_secs_f64())),
            reader.epoch(),
            ring.as_ref().map(|r| r.head()),
            now,
        );
        // Home, clear, frame.
        let res = w
            .write_all(b"\x1b[H\x1b[2J")
            .and_then(|()| w.write_all(frame.as_bytes()))
            .and_then(|()| w.flush());
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}
