//! Recorded history on disk: the two formats the recorder writes and the small reader and
//! writer API every other tool builds on. The formats are specified in `docs/STORAGE.md`.
//!
//! - [`layout`]: where a segment lives (`<root>/<format>/YYYY/MM/DD/HH/<conId>_<tt>_<epoch>.<ext>`).
//! - [`binary`]: 64-byte records behind a versioned header, with block checksums and a strings
//!   sidecar.
//! - [`jsonl`]: compact JSON Lines, one [`crate::tickjson`] line per record.
//! - [`backfill`]: backfilled ticks (their own fill epochs) and each gap's fill state.
//! - [`append`]: append-only files with all-or-nothing flush windows (rollback on error).
//! - [`checkpoint`]: the recorder's atomic checkpoint.
//! - [`compare`]: whether two roots hold the same market data, hour by hour.
//! - [`private_fs`]: the owner-only permissions (0600 files, 0700 directories) of everything
//!   written under the storage path.
//! - [`repair`]: torn-tail repair and truncation to a checkpoint.
//! - [`retention`]: deleting expired hours.
//! - [`validate`]: integrity and completeness checks (what `storage validate` runs).

pub mod append;
pub mod backfill;
pub mod binary;
pub mod checkpoint;
pub mod cli;
pub mod compare;
pub mod import;
pub mod jsonl;
pub mod layout;
pub mod private_fs;
pub mod query;
pub mod repair;
pub mod retention;
pub mod sealed;
pub mod strings_file;
pub mod validate;

use std::path::PathBuf;

pub use layout::{Format, SegmentKey, Stream};

/// Why a storage operation failed. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O error on a file or directory.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not what its name or header says, or is damaged.
    #[error("{path}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A file of a format version this build does not read.
    #[error("{path}: format version {found}, this build reads {expected}")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The version this build reads and writes.
        expected: u32,
    },
}

impl StorageError {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> StorageError {
        StorageError::Io {
            path: path.into(),
            source,
        }
    }

    /// A corruption report.
    pub fn corrupt(path: impl Into<PathBuf>, what: impl Into<String>) -> StorageError {
        StorageError::Corrupt {
            path: path.into(),
            what: what.into(),
        }
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}
