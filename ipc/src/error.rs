//! The one error type of the `ipc` crate.
//!
//! Every variant names the file it is about and its message says what to do next, because
//! the person reading it is usually an operator looking at a strategy that will not start.

use std::io;
use std::path::{Path, PathBuf};

/// Why a shared-memory file could not be created, opened or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpcError {
    /// The file does not exist (yet).
    #[error(
        "{}: no such shared-memory file; start the writer (the ib-stream engine) first, \
         or point the reader at the right directory/environment (it may simply not have started yet: retry)",
        path.display()
    )]
    Missing {
        /// The file that was looked for.
        path: PathBuf,
    },

    /// The file exists but this process may not open it as asked.
    #[error(
        "{}: permission denied; run as the writer's user, or configure a shared group on the \
         writer (files are mode 0600 unless a group is set) and add this user to it",
        path.display()
    )]
    PermissionDenied {
        /// The file that could not be opened.
        path: PathBuf,
    },

    /// The file does not start with the expected magic number: it is not this kind of file.
    #[error(
        "{}: bad magic {found:#018x}; this is not an ib-stream shared-memory file of the expected kind \
         (wrong path, or a file left by something else): check the path, or remove the file and restart the writer",
        path.display()
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first 8 bytes of the file, little-endian.
        found: u64,
    },

    /// The file was written by a different layout version.
    #[error(
        "{}: layout version {found}, this program understands {expected}; rebuild this program \
         against the same ib-stream version as the writer (or restart the writer with this version)",
        path.display()
    )]
    VersionMismatch {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },

    /// The file's record size is not the size of [`crate::Record`] in this build.
    #[error(
        "{}: record size {found} bytes, this program uses {expected}; writer and reader were built \
         from incompatible ib-stream versions: rebuild one of them",
        path.display()
    )]
    RecordSizeMismatch {
        /// The file.
        path: PathBuf,
        /// The record size in the file.
        found: u32,
        /// The record size of this build.
        expected: u32,
    },

    /// The file is shorter than its header says it must be (or than any valid file).
    #[error(
        "{}: file is {len} bytes, at least {needed} are needed; the file is truncated or still being \
         created by something that is not the ib-stream writer: restart the writer",
        path.display()
    )]
    TooSmall {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The length its header (or the format) requires.
        needed: u64,
    },

    /// The header holds a value no valid writer produces (for example a capacity that is not
    /// a power of two).
    #[error(
        "{}: corrupt header: {what}; remove the file and restart the writer",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        what: String,
    },

    /// Another live process already writes this file.
    #[error(
        "{}: another writer ({}) already owns it; stop that process first, or give this one a \
         different environment/directory",
        path.display(),
        describe_pid(*pid)
    )]
    WriterPresent {
        /// The file (the ring or region the writer owns).
        path: PathBuf,
        /// The other writer's pid, when it could be read.
        pid: Option<u32>,
    },

    /// The arguments do not describe a valid file (for example a capacity that is not a power
    /// of two): a programming or configuration error of the caller.
    #[error("{}: invalid configuration: {what}; fix the configuration", path.display())]
    InvalidConfig {
        /// The file that was to be created.
        path: PathBuf,
        /// What is wrong, in words.
        what: String,
    },

    /// Any other I/O failure.
    #[error(
        "{}: {op} failed: {source}; check free space in the shared-memory filesystem (df /dev/shm) \
         and the directory's permissions",
        path.display()
    )]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done ("open", "mmap", "rename", ...).
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

fn describe_pid(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("pid {p}"),
        None => "pid unknown".to_owned(),
    }
}

impl IpcError {
    /// Maps an I/O error from `op` on `path` to the typed variant: `NotFound` becomes
    /// [`IpcError::Missing`], `PermissionDenied` becomes [`IpcError::PermissionDenied`], the rest
    /// [`IpcError::Io`].
    pub fn from_io(path: &Path, op: &'static str, source: io::Error) -> IpcError {
        let path = path.to_path_buf();
        match source.kind() {
            io::ErrorKind::NotFound => IpcError::Missing { path },
            io::ErrorKind::PermissionDenied => IpcError::PermissionDenied { path },
            _ => IpcError::Io { path, op, source },
        }
    }

    /// True for [`IpcError::Missing`]: the writer has not created the file yet, retrying may help.
    pub fn is_missing(&self) -> bool {
        matches!(self, IpcError::Missing { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_typed_variants() {
        let p = Path::new("/x/ring");
        let e = IpcError::from_io(p, "open", io::Error::from(io::ErrorKind::NotFound));
        assert!(e.is_missing());
        let e = IpcError::from_io(p, "open", io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(matches!(e, IpcError::PermissionDenied { .. }));
        let e = IpcError::from_io(p, "mmap", io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(matches!(e, IpcError::Io { op: "mmap", .. }));
    }

    #[test]
    fn messages_name_the_file_and_the_remedy() {
        let e = IpcError::WriterPresent {
            path: "/x/ring".into(),
            pid: Some(42),
        };
        let s = e.to_string();
        assert!(s.contains("/x/ring") && s.contains("pid 42") && s.contains("stop that process"));
        let e = IpcError::BadMagic {
            path: "/x/ring".into(),
            found: 0x1234,
        };
        assert!(e.to_string().contains("0x0000000000001234"));
    }
}
