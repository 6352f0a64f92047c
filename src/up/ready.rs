//! How each child shows it is ready: tws-sim prints `listening 127.0.0.1:<port>`; the engine's
//! ring has a live heartbeat from that very process and its status region says connected; the
//! recorder (that process) has written its status file; the web server answers `/ready` 200.

use std::time::Duration;

use crate::ipc::{
    ConnState, RingReader, StartAt, StatusReader, StatusSnapshot, WriterStatus,
    ring::RING_FILE_NAME,
};
use crate::recorder::status::RecorderStatus;

use super::child::Running;
use super::http;
use super::plan::{ChildKind, Plan};

/// The engine's status region in the shm dir.
pub const STATUS_REGION: &str = ib_stream_ipc::STATUS_FILE_NAME;
/// A ring heartbeat older than this is not live.
const STALE_NS: u64 = 5_000_000_000;

/// Whether the child is ready.
pub fn is_ready(kind: ChildKind, r: &Running, started_ns: i64, plan: &Plan) -> bool {
    match kind {
        ChildKind::Sim => r
            .listening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some(),
        ChildKind::Engine => {
            engine_ring_live(r.pid, plan)
                && engine_snapshot(plan).is_some_and(|(pid, s)| {
                    pid == r.pid && s.engine.conn_state == ConnState::Connected as u8
                })
        }
        ChildKind::Recorder => RecorderStatus::load(&plan.settings.storage_path)
            .ok()
            .flatten()
            .is_some_and(|s| s.pid == r.pid && s.updated_ns >= started_ns),
        ChildKind::Serve => serve_ready(plan),
        ChildKind::Mirror => engine_ring_live(r.pid, plan),
        ChildKind::Backfill => crate::backfill::status::load(&plan.settings.storage_path)
            .is_some_and(|s| s.pid == r.pid && s.updated_ns >= started_ns),
    }
}

/// Whether the ring exists and its writer is the engine with this pid, alive.
pub fn engine_ring_live(pid: u32, plan: &Plan) -> bool {
    let Ok(reader) = RingReader::open(&plan.settings.shm_dir.join(RING_FILE_NAME), StartAt::Newest)
    else {
        return false;
    };
    reader.info().pid == pid
        && matches!(
            reader.writer_status(crate::ipc::shm::unix_time_ns(), STALE_NS),
            WriterStatus::Alive { .. }
        )
}

/// The pid of a live writer of the environment's ring, if any.
pub fn live_ring_writer(plan: &Plan) -> Option<u32> {
    let reader =
        RingReader::open(&plan.settings.shm_dir.join(RING_FILE_NAME), StartAt::Newest).ok()?;
    matches!(
        reader.writer_status(crate::ipc::shm::unix_time_ns(), STALE_NS),
        WriterStatus::Alive { .. }
    )
    .then(|| reader.info().pid)
}

/// The engine's latest status snapshot and the pid that wrote it.
pub fn engine_snapshot(plan: &Plan) -> Option<(u32, Box<StatusSnapshot>)> {
    let r = StatusReader::open(&plan.settings.shm_dir.join(STATUS_REGION)).ok()?;
    let mut snap = StatusSnapshot::new_boxed();
    r.read(&mut snap).ok()?;
    Some((r.header().writer_pid, snap))
}

fn serve_ready(plan: &Plan) -> bool {
    let s = &plan.settings;
    http::get(
        &s.serve_host,
        s.serve_port,
        "/ready",
        s.token.as_deref(),
        Duration::from_millis(500),
    )
    .is_ok_and(|a| a.status == 200)
}

/// A few words after "ready" (what the child is doing).
pub fn detail(kind: ChildKind, r: &Running, plan: &Plan) -> String {
    match kind {
        ChildKind::Sim => r
            .listening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            .map(|l| format!(": {l}"))
            .unwrap_or_default(),
        ChildKind::Engine => engine_snapshot(plan)
            .map(|(_, s)| {
                format!(
                    ": connected, server version {}, client id {}",
                    s.engine.server_version, s.engine.client_id
                )
            })
            .unwrap_or_default(),
        ChildKind::Recorder => format!(": writing {}", plan.settings.storage_path.display()),
        ChildKind::Mirror => format!(": ring {}", plan.settings.shm_dir.display()),
        ChildKind::Backfill => crate::backfill::status::load(&plan.settings.storage_path)
            .map(|s| format!(": {}", s.line()))
            .unwrap_or_default(),
        ChildKind::Serve => format!(
            ": http://{}:{}/",
            plan.settings.serve_host, plan.settings.serve_port
        ),
    }
}

/// What to check when a child is slow to become ready.
pub fn not_ready_hint(kind: ChildKind, plan: &Plan) -> String {
    let s = &plan.settings;
    match kind {
        ChildKind::Sim => format!(
            "tws-sim has not printed `listening`; is port {} taken by another program?",
            plan.sim_port.unwrap_or_default()
        ),
        ChildKind::Engine => {
            let last = engine_snapshot(plan)
                .map(|(_, snap)| {
                    let state = ConnState::from_u8(snap.engine.conn_state)
                        .map(|c| format!("{c:?}"))
                        .unwrap_or_else(|| "unknown".into());
                    let err = if snap.engine.last_error_code != 0 {
                        format!(", last IB error {}", snap.engine.last_error_code)
                    } else {
                        String::new()
                    };
                    format!("engine state {state}{err}; ")
                })
                .unwrap_or_default();
            format!(
                "{last}not connected to IB at {}:{}. Is IB Gateway/TWS running with the API enabled on that port, 127.0.0.1 a trusted IP, and client id {} free? (docs/OPERATIONS.md, troubleshooting)",
                s.ib_host,
                s.ib_ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                s.engine_client_id_text()
            )
        }
        ChildKind::Recorder => format!(
            "no fresh status in {}; is the storage path writable and the engine's ring up?",
            s.storage_path.display()
        ),
        ChildKind::Backfill => format!(
            "no fresh status in {}; is the storage path writable?",
            crate::backfill::status::status_path(&s.storage_path).display()
        ),
        ChildKind::Mirror => format!(
            "no live ring in {} yet: the mirror makes it on the stream's first message; is NATS reachable (IB_STREAM_NATS_URL) and a bridge publishing this environment? (docs/OPERATIONS.md)",
            s.shm_dir.display()
        ),
        ChildKind::Serve => format!(
            "http://{}:{}/ready does not answer 200; is the port taken?",
            s.serve_host, s.serve_port
        ),
    }
}
