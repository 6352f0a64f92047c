//! `ib-stream top`: a live terminal view of the engine's status region (connection,
//! subscriptions and their state, rates, latency percentiles), the ring's head and each
//! registered reader's position and lag (the reader registry, `ipc::readers`).
//! Plain ANSI redraw; `--once` prints one frame without escape codes (for scripts and tests).

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::ipc::{
    Histogram, ReaderEntry, ReaderRegistry, RingReader, SnapshotError, StartAt, StatusReader,
    StatusSnapshot, SubState,
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

/// The ring as top sees it: its last published sequence and its epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingView {
    /// Last published sequence.
    pub head: u64,
    /// The ring's epoch (reader positions of another epoch have no lag to show).
    pub epoch: u64,
}

/// The IB data farms table; says when market data may be stale (a broken market data farm).
pub fn render_farms(snap: &StatusSnapshot, now: i64) -> String {
    let mut s = String::new();
    let farms = snap.farms();
    let stale = snap.engine.data_flags & crate::ipc::data_flags::FARM_BROKEN != 0;
    let _ = writeln!(
        s,
        "farms ({}){}",
        farms.len(),
        if stale {
            "  MARKET DATA MAY BE STALE: a market data farm is broken"
        } else {
            ""
        }
    );
    if farms.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "  {:<24} {:<12} {:<10} {:>6} {:>12}",
        "name", "kind", "state", "code", "since"
    );
    for f in farms {
        let _ = writeln!(
            s,
            "  {:<24} {:<12} {:<10} {:>6} {:>12}",
            f.name(),
            f.kind().map_or("?", |k| k.name()),
            f.state().map_or("?", |st| st.name()),
            f.code,
            ago(now, f.since_ns)
        );
    }
    s
}

/// The readers table: one line per registered reader with its lag behind `ring`.
pub fn render_readers(readers: &[ReaderEntry], ring: Option<RingView>, now: i64) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "readers ({})", readers.len());
    if readers.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "  {:<24} {:>8} {:<5} {:>12} {:>12} {:>6} {:>10} {:>12}",
        "name", "pid", "alive", "position", "lag", "laps", "lost", "updated"
    );
    for r in readers {
        let alive = match r.alive {
            Some(true) => "yes",
            Some(false) => "dead",
            None => "?",
        };
        let lag = match ring {
            None => "-".to_string(),
            Some(v) => r
                .lag(v.head, v.epoch)
                .map_or_else(|| "old epoch".to_string(), |l| l.to_string()),
        };
        let _ = writeln!(
            s,
            "  {:<24} {:>8} {:<5} {:>12} {:>12} {:>6} {:>10} {:>12}",
            r.name,
            r.pid,
            alive,
            r.position,
            lag,
            r.laps,
            r.lost,
            ago(now, r.updated_ns as i64)
        );
    }
    s
}

/// Renders one frame. `prev` (the snapshot one interval earlier) gives rates.
pub fn render(
    snap: &StatusSnapshot,
    prev: Option<(&StatusSnapshot, f64)>,
    epoch: u64,
    ring: Option<RingView>,
    readers: &[ReaderEntry],
    now: i64,
) -> String {
    let ring_head = ring.map(|r| r.head);
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
        hist_line("kernel->commit", &snap.latencies.kernel_to_commit)
    );
    let _ = writeln!(
        s,
        "{}",
        hist_line("read->commit", &snap.latencies.read_to_commit)
    );
    let _ = writeln!(
        s,
        "{}",
        hist_line("loop iteration", &snap.latencies.loop_iteration)
    );
    s.push_str(&render_farms(snap, now));
    s.push_str(&render_readers(readers, ring, now));
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
        let mut delayed =
            if matches!(sub.market_data_type, 3 | 4) || sub.state() == Some(SubState::Delayed) {
                " (delayed)".to_string()
            } else {
                String::new()
            };
        if sub.flags & crate::ipc::data_flags::FARM_BROKEN != 0 {
            delayed.push_str(" (farm broken: may be stale)");
        }
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
        &dir.join(ib_stream_ipc::STATUS_FILE_NAME),
        Duration::from_secs_f64(args.wait.max(0.0)),
    )?;
    let ring = RingReader::open(&dir.join(ib_stream_ipc::RING_FILE_NAME), StartAt::Newest).ok();
    let view = |r: &RingReader| RingView {
        head: r.head(),
        epoch: r.info().epoch,
    };
    // Read-only: top never takes a slot. Absent until the engine or a reader creates it.
    let registry_path = dir.join(ib_stream_ipc::READERS_FILE_NAME);
    let mut registry = ReaderRegistry::open(&registry_path).ok();
    let readers = |registry: &mut Option<ReaderRegistry>| -> Vec<ReaderEntry> {
        if registry.is_none() {
            *registry = ReaderRegistry::open(&registry_path).ok();
        }
        registry
            .as_ref()
            .map(ReaderRegistry::entries)
            .unwrap_or_default()
    };
    let mut snap = StatusSnapshot::new_boxed();
    let mut prev = StatusSnapshot::new_boxed();
    read_snapshot(&reader, &mut snap)?;
    if args.once {
        let now = crate::ipc::shm::unix_time_ns() as i64;
        let frame = render(
            &snap,
            None,
            reader.epoch(),
            ring.as_ref().map(view),
            &readers(&mut registry),
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
            ring.as_ref().map(view),
            &readers(&mut registry),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::{ConnState, RecordKind, SubStatus};

    #[test]
    fn a_frame_shows_connection_rates_latency_and_subscriptions() {
        let mut prev = StatusSnapshot::new_boxed();
        let mut snap = StatusSnapshot::new_boxed();
        snap.set_conn_state(ConnState::Connected);
        snap.engine.server_version = 226;
        snap.engine.client_id = 20;
        snap.counters.records_published = 2_000;
        prev.counters.records_published = 1_000;
        for v in [1_000u64, 2_000, 3_000] {
            snap.latencies.recv_to_publish.record(v);
        }
        snap.latencies.kernel_to_commit.record(4_100);
        snap.latencies.read_to_commit.record(180);
        let mut s = SubStatus::new(265_598, RecordKind::TbtBidAsk, SubState::Active, 1000);
        s.ticks = 500;
        snap.push_subscription(s).unwrap();
        let mut p = s;
        p.ticks = 300;
        prev.push_subscription(p).unwrap();
        let ring = RingView {
            head: 2_000,
            epoch: 0xabc,
        };
        let frame = render(&snap, Some((&prev, 2.0)), 0xabc, Some(ring), &[], 1);
        assert!(frame.contains("state connected"), "{frame}");
        assert!(frame.contains("server v226"), "{frame}");
        assert!(frame.contains("records 2000 (500/s)"), "{frame}");
        assert!(
            frame.contains("265598") && frame.contains("bid_ask") && frame.contains("100/s"),
            "{frame}"
        );
        assert!(frame.contains("p50="), "{frame}");
        let line = |name: &str| {
            frame
                .lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap_or_else(|| panic!("no {name} line in\n{frame}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert!(line("kernel->commit").contains("n=1 "), "{frame}");
        assert!(line("read->commit").contains("n=1 "), "{frame}");
        assert!(line("read->commit").contains("max=180ns"), "{frame}");
        assert!(frame.contains("readers (0)"), "{frame}");
    }

    #[test]
    fn the_farms_table_shows_each_farm_and_flags_stale_data() {
        use crate::ipc::{FarmKind, FarmState, FarmStatus, data_flags};
        let mut snap = StatusSnapshot::new_boxed();
        assert!(render_farms(&snap, 1).starts_with("farms (0)\n"));
        snap.set_farms(&[
            FarmStatus::new("usfarm", FarmKind::MarketData, FarmState::Broken, 2103, 1),
            FarmStatus::new("ushmds", FarmKind::Hmds, FarmState::Ok, 2106, 1),
        ]);
        snap.engine.data_flags = data_flags::FARM_BROKEN;
        let mut sub = SubStatus::new(265_598, RecordKind::TbtLast, SubState::Active, 1000);
        sub.flags = data_flags::FARM_BROKEN;
        snap.push_subscription(sub).unwrap();
        let now = 3_000_000_001;
        let farms = render_farms(&snap, now);
        assert!(farms.contains("MARKET DATA MAY BE STALE"), "{farms}");
        let line = |name: &str| {
            farms
                .lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in\n{farms}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(line("usfarm"), "usfarm market_data broken 2103 3.0s ago");
        assert_eq!(line("ushmds"), "ushmds hmds ok 2106 3.0s ago");
        let frame = render(&snap, None, 1, None, &[], now);
        assert!(frame.contains("(farm broken: may be stale)"), "{frame}");
        snap.engine.data_flags = 0;
        assert!(!render_farms(&snap, now).contains("STALE"));
    }

    #[test]
    fn the_readers_table_shows_each_readers_lag() {
        use std::sync::Arc;
        let registry = Arc::new(ReaderRegistry::heap());
        let mut recorder = registry.claim("recorder", 0xabc, 1).unwrap();
        recorder.store_position(1_501);
        let _web = registry.claim("serve", 0xabc, 2_001).unwrap();
        let _old = registry.claim("strategy", 0x999, 40).unwrap();
        let readers = registry.entries();
        let ring = Some(RingView {
            head: 2_000,
            epoch: 0xabc,
        });
        let now = crate::ipc::shm::unix_time_ns() as i64;
        let table = render_readers(&readers, ring, now);
        let line = |name: &str| {
            table
                .lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap_or_else(|| panic!("no {name} line in\n{table}"))
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert!(table.starts_with("readers (3)"), "{table}");
        let pid = std::process::id().to_string();
        // name pid alive position lag laps lost updated...
        assert_eq!(
            line("recorder")[..7],
            ["recorder", &pid, "yes", "1501", "500", "0", "0"]
        );
        assert_eq!(line("serve")[3..5], ["2001", "0"]);
        assert_eq!(line("strategy")[4..6], ["old", "epoch"]);
        // Without the ring, no lag can be computed.
        let no_ring = render_readers(&readers, None, now);
        assert!(no_ring.contains(" - "), "{no_ring}");
    }
}
