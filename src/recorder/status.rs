//! The recorder's status file: `<storage>/recorder.status.json`, replaced atomically about
//! twice a second, read by `/health`, `top` and tests.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::storage::StorageError;
use crate::storage::checkpoint::{OwedGap, write_atomic};

use super::sink::SinkStats;

/// The status file name under the storage root.
pub const STATUS_FILE: &str = "recorder.status.json";

/// One format's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatStatus {
    /// `jsonl` or `binary`.
    pub format: String,
    /// Writing works (no gap owed).
    pub healthy: bool,
    /// Counters.
    #[serde(flatten)]
    pub stats: SinkStats,
    /// Gaps owed until writing works again.
    pub owed_gaps: Vec<OwedGap>,
}

/// The whole status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecorderStatus {
    /// Recorder pid.
    pub pid: u32,
    /// Start time, ns.
    pub started_ns: i64,
    /// Time of this snapshot, ns.
    pub updated_ns: i64,
    /// The ring file.
    pub ring: PathBuf,
    /// Ring writer epoch (16 hex digits), empty before the ring is open.
    pub epoch: String,
    /// Last sequence accounted for (written or in a gap).
    pub last_seq: u64,
    /// The ring's head at the snapshot.
    pub ring_head: u64,
    /// Records read from the ring.
    pub records_read: u64,
    /// Times the recorder was lapped by the ring writer.
    pub overruns: u64,
    /// Records lost to overruns.
    pub records_lost: u64,
    /// Heartbeat records not stored (thinned).
    pub heartbeats_skipped: u64,
    /// Records of kinds this build does not know (not stored).
    pub unknown_records: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Checkpoint writes that failed.
    pub checkpoint_errors: u64,
    /// Every format healthy and the last checkpoint written.
    pub healthy: bool,
    /// Per format.
    pub formats: Vec<FormatStatus>,
}

impl RecorderStatus {
    /// The status path under `root`.
    pub fn path(root: &Path) -> PathBuf {
        root.join(STATUS_FILE)
    }

    /// Reads the status under `root`; `None` when the recorder never wrote one.
    pub fn load(root: &Path) -> Result<Option<RecorderStatus>, StorageError> {
        let path = Self::path(root);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StorageError::corrupt(path, format!("status: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io(path, e)),
        }
    }

    /// Writes it under `root` (atomically, not fsynced: it is rewritten constantly).
    pub fn store(&self, root: &Path) -> Result<(), StorageError> {
        let path = Self::path(root);
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| StorageError::corrupt(&path, format!("status: {e}")))?;
        write_atomic(
            &root.join(format!("{STATUS_FILE}.tmp")),
            &path,
            &json,
            false,
        )
    }
}
