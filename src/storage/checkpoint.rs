//! The recorder's checkpoint: `<root>/recorder.checkpoint.json`, replaced atomically
//! (written to a temporary file, then renamed over the old one) after every flush.
//!
//! It says how far history is complete: every sequence `<= last_seq` of ring epoch `epoch`
//! is on disk in every format, or covered by a gap record on disk, or covered by a gap that
//! a format still owes (`failed`: it could not write, and will write the gap when it can).
//! Anything in the files beyond that is cut off on restart (see [`super::repair`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StorageError;
use super::layout::Format;

/// The checkpoint file name under the storage root.
pub const CHECKPOINT_FILE: &str = "recorder.checkpoint.json";
/// The checkpoint version this build writes and reads.
pub const CHECKPOINT_VERSION: u32 = 1;

/// A gap a format owes: it could not write records `from_seq..=to_seq` (ring epoch `epoch`)
/// and will write a `write_error` gap record for them once writing works again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwedGap {
    /// `jsonl` or `binary`.
    pub format: String,
    /// Ring epoch, 16 hex digits.
    pub epoch: String,
    /// First sequence not written.
    pub from_seq: u64,
    /// Last sequence not written.
    pub to_seq: u64,
    /// `ts_recv` of the first record not written, ns.
    pub t0_ns: i64,
    /// `ts_recv` of the last record not written, ns.
    pub t1_ns: i64,
    /// The error that started it.
    pub error: String,
}

impl OwedGap {
    /// The format it belongs to.
    pub fn format(&self) -> Option<Format> {
        Format::from_dir_name(&self.format)
    }

    /// The epoch as a number.
    pub fn epoch(&self) -> Option<u64> {
        u64::from_str_radix(&self.epoch, 16).ok()
    }
}

/// The checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// [`CHECKPOINT_VERSION`].
    pub version: u32,
    /// Ring writer epoch, 16 hex digits (as in file names).
    pub epoch: String,
    /// Every sequence up to this one is accounted for (see the module documentation).
    pub last_seq: u64,
    /// `ts_recv` of the last record read, ns (0 when none).
    pub last_ts_ns: i64,
    /// Repair looks at hour directories from this hour on (the oldest hour with a segment
    /// open at checkpoint time).
    pub scan_from_hour_ns: i64,
    /// The ring writer stopped cleanly and everything it wrote was read.
    pub epoch_complete: bool,
    /// Gaps formats still owe.
    pub owed_gaps: Vec<OwedGap>,
    /// Which process wrote it.
    pub writer_pid: u32,
    /// When, ns since the Unix epoch.
    pub written_ns: i64,
}

impl Checkpoint {
    /// The epoch as a number.
    pub fn epoch(&self) -> Option<u64> {
        u64::from_str_radix(&self.epoch, 16).ok()
    }

    /// The checkpoint path under `root`.
    pub fn path(root: &Path) -> PathBuf {
        root.join(CHECKPOINT_FILE)
    }

    /// Loads the checkpoint under `root`; `None` when there is none yet.
    pub fn load(root: &Path) -> Result<Option<Checkpoint>, StorageError> {
        let path = Self::path(root);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io(path, e)),
        };
        let ck: Checkpoint = serde_json::from_slice(&bytes)
            .map_err(|e| StorageError::corrupt(&path, format!("checkpoint: {e}")))?;
        if ck.version != CHECKPOINT_VERSION {
            return Err(StorageError::Version {
                path,
                found: ck.version,
                expected: CHECKPOINT_VERSION,
            });
        }
        if ck.epoch().is_none()
            || ck
                .owed_gaps
                .iter()
                .any(|g| g.epoch().is_none() || g.format().is_none())
        {
            return Err(StorageError::corrupt(
                &path,
                "checkpoint: bad epoch or format",
            ));
        }
        Ok(Some(ck))
    }

    /// Replaces the checkpoint under `root` atomically; with `durable`, fsyncs the file
    /// before and the directory after the rename.
    pub fn store(&self, root: &Path, durable: bool) -> Result<(), StorageError> {
        let path = Self::path(root);
        let tmp = root.join(format!("{CHECKPOINT_FILE}.tmp"));
        let json = serde_json::to_vec(self)
            .map_err(|e| StorageError::corrupt(&path, format!("checkpoint: {e}")))?;
        write_atomic(&tmp, &path, &json, durable)
    }
}

/// Writes `bytes` to `tmp`, then renames it to `path` (fsyncs with `durable`).
pub fn write_atomic(
    tmp: &Path,
    path: &Path,
    bytes: &[u8],
    durable: bool,
) -> Result<(), StorageError> {
    // Private (0600) whatever the umask: see private_fs.
    let res = super::private_fs::replace_via(tmp, path, bytes, durable);
    res.map_err(|e: std::io::Error| StorageError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_load_round_trip() {
        let dir = std::env::temp_dir().join(format!("ibs-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(Checkpoint::load(&dir).unwrap(), None);
        let ck = Checkpoint {
            version: CHECKPOINT_VERSION,
            epoch: format!("{:016x}", 0xabcu64),
            last_seq: 99,
            last_ts_ns: 5,
            scan_from_hour_ns: 0,
            epoch_complete: false,
            owed_gaps: vec![OwedGap {
                format: "binary".into(),
                epoch: format!("{:016x}", 0xabcu64),
                from_seq: 10,
                to_seq: 20,
                t0_ns: 1,
                t1_ns: 2,
                error: "File too large".into(),
            }],
            writer_pid: 1,
            written_ns: 2,
        };
        ck.store(&dir, true).unwrap();
        let back = Checkpoint::load(&dir).unwrap().unwrap();
        assert_eq!(back, ck);
        assert_eq!(back.epoch(), Some(0xabc));
        std::fs::write(Checkpoint::path(&dir), b"{\"version\":1").unwrap();
        assert!(Checkpoint::load(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
