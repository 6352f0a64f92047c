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

    /// What `/health` should say about the recorder at `now_ns`: `Ok` when every format
    /// writes, the checkpoint is current and the status itself is fresher than `max_age_ns`
    /// (a recorder that died or cannot even write its status goes stale); otherwise why not.
    pub fn health(&self, now_ns: i64, max_age_ns: i64) -> Result<(), String> {
        let age = now_ns.saturating_sub(self.updated_ns);
        if age > max_age_ns {
            return Err(format!("recorder status is {} ms old", age / 1_000_000));
        }
        let failing: Vec<String> = self
            .formats
            .iter()
            .filter(|f| !f.healthy)
            .map(|f| {
                format!(
                    "{}: {}",
                    f.format,
                    f.stats.last_error.as_deref().unwrap_or("write error")
                )
            })
            .collect();
        if !failing.is_empty() {
            return Err(format!("storage not writing ({})", failing.join("; ")));
        }
        if !self.healthy {
            return Err("recorder checkpoint not written".into());
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_says_why() {
        let mut s = RecorderStatus {
            updated_ns: 1_000,
            healthy: true,
            formats: vec![FormatStatus {
                format: "binary".into(),
                healthy: true,
                ..FormatStatus::default()
            }],
            ..RecorderStatus::default()
        };
        assert_eq!(s.health(1_500, 1_000), Ok(()));
        assert!(s.health(3_000_000_000, 1_000).unwrap_err().contains("old"));
        s.healthy = false;
        s.formats[0].healthy = false;
        s.formats[0].stats.last_error = Some("File too large (os error 27)".into());
        let e = s.health(1_500, 1_000).unwrap_err();
        assert!(e.contains("binary: File too large"), "{e}");
    }
}
