//! The backfill's status file, `<storage>/backfill/status.json`: its session, pacing budgets,
//! queue, violations and ETA, replaced atomically about once a second; `status` and
//! `GET /v3/backfill` read it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::core::Progress;

/// What the file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillStatus {
    /// The process.
    pub pid: u32,
    /// `connecting`, `filling`, `idle` (nothing to fill), `stopped`.
    pub state: String,
    /// The client id of its IB session.
    pub client_id: i32,
    /// Gateway address.
    pub gateway: String,
    /// Fills not finished.
    pub jobs_open: usize,
    /// Fills finished by this process.
    pub jobs_done: u64,
    /// Requests waiting (paced queue and retries).
    pub queue_depth: usize,
    /// Requests sent.
    pub requests: u64,
    /// Pacing violations IB reported (162); the pacing keeps this 0.
    pub pacing_violations: u64,
    /// Weight used in the current 10-minute window (BID_ASK counts 2).
    pub budget_used: u32,
    /// Its limit.
    pub budget_max: u32,
    /// Requests open.
    pub open: u32,
    /// Requests still to send (estimated).
    pub remaining_weight: u64,
    /// Seconds until the last of them is sent (estimated).
    pub eta_s: u64,
    /// Ticks stored by this process.
    pub ticks_stored: u64,
    /// When written, ns.
    pub updated_ns: i64,
}

impl BackfillStatus {
    /// Takes the core's figures.
    pub fn set_progress(&mut self, p: &Progress) {
        self.jobs_open = p.jobs_open;
        self.jobs_done = p.jobs_done;
        self.queue_depth = p.queue_depth;
        self.requests = p.requests;
        self.pacing_violations = p.violations;
        self.budget_used = p.budget_used;
        self.budget_max = p.budget_max;
        self.open = p.open;
        self.remaining_weight = p.remaining_weight;
        self.eta_s = p.eta_s;
    }

    /// One line for `ib-stream status`.
    pub fn line(&self) -> String {
        format!(
            "backfill: {} (client id {}), fills open {} done {}, queue {}, budget {}/{} per 10 min, open {}, violations {}, ETA {} s, ticks stored {}",
            self.state,
            self.client_id,
            self.jobs_open,
            self.jobs_done,
            self.queue_depth,
            self.budget_used,
            self.budget_max,
            self.open,
            self.pacing_violations,
            self.eta_s,
            self.ticks_stored
        )
    }
}

/// The file under a storage root.
pub fn status_path(root: &Path) -> PathBuf {
    root.join("backfill").join("status.json")
}

/// Writes the file atomically.
pub fn store(root: &Path, s: &BackfillStatus) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(s).map_err(std::io::Error::other)?;
    crate::storage::private_fs::write_private_atomic(&status_path(root), &bytes, false)
}

/// Reads the file; `None` when there is none (never ran) or it does not parse.
pub fn load(root: &Path) -> Option<BackfillStatus> {
    let bytes = std::fs::read(status_path(root)).ok()?;
    serde_json::from_slice(&bytes).ok()
}
