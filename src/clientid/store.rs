//! The registry's file: one per environment, read and rewritten under an exclusive lock so
//! processes starting together never take the same id; written atomically (temp file,
//! fsync, rename, fsync of the directory) so a crash leaves the old or the new registry,
//! never half of one. A file that does not parse is reported and replaced by a fresh
//! registry: the leases it held are rebuilt as processes start again.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::registry::{Lease, Process, Registry};

/// Why the registry's file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading, writing or locking failed.
    #[error("client-id registry {path}: {what}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file holds something that is not a registry.
    #[error("client-id registry {path} is corrupt ({reason})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
}

/// The file of an environment's registry in `dir`.
pub fn file_path(dir: &Path, env: &str) -> PathBuf {
    dir.join(format!("client-ids.{env}.json"))
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { path, what, source }
}

/// Reads the registry at `path` (a missing file is an empty registry).
pub fn load(path: &Path) -> Result<Registry, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Registry::default()),
        Err(e) => return Err(io(path, "read")(e)),
    };
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes the registry at `path` atomically.
pub fn save(path: &Path, reg: &Registry) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(reg).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    {
        let mut f = File::create(&tmp).map_err(io(&tmp, "create"))?;
        f.write_all(&body).map_err(io(&tmp, "write"))?;
        f.sync_all().map_err(io(&tmp, "fsync"))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path, "rename"))?;
    // The rename is durable only once the directory is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "fsync the directory"))
}

/// Runs `f` on the registry at `path` under an exclusive lock and saves what it leaves. A
/// corrupt file is logged with its reason and `f` gets a fresh registry.
pub fn update<T>(path: &Path, f: impl FnOnce(&mut Registry) -> T) -> Result<T, StoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir, "create the directory"))?;
    }
    let lock_path = path.with_extension("lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path, "open the lock"))?;
    // Held for a read and a small write; released when `lock` is dropped.
    lock.lock().map_err(io(&lock_path, "lock"))?;
    let mut reg = match load(path) {
        Ok(r) => r,
        Err(e @ StoreError::Corrupt { .. }) => {
            warn!("{e}: starting a fresh registry (its leases are taken again as processes start)");
            Registry::default()
        }
        Err(e) => return Err(e),
    };
    let out = f(&mut reg);
    save(path, &reg)?;
    Ok(out)
}

/// This process, as the registry records it.
pub fn this_process() -> Process {
    let pid = std::process::id();
    Process {
        pid,
        start: start_time(pid).unwrap_or(0),
    }
}

/// Whether a recorded holder still runs: its pid exists and, when its start time was
/// recorded, started at that time (else the pid was reused by another process).
pub fn is_alive(p: &Process) -> bool {
    match start_time(p.pid) {
        Some(start) => p.start == 0 || start == p.start,
        None => false,
    }
}

/// Field 22 of `/proc/<pid>/stat`, the start time in clock ticks since boot. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted after its last ')'.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Logs the leases [`Registry::reclaim`] dropped.
pub fn log_reclaimed(gone: &[Lease]) {
    for l in gone {
        info!(
            id = l.id,
            holder = %l.holder,
            pid = l.process.pid,
            "client id reclaimed from a process that is gone"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clientid::registry::Refused;

    fn sample() -> Registry {
        Registry {
            leases: vec![Lease {
                id: 10,
                purpose: "streaming".into(),
                holder: "engine".into(),
                process: Process { pid: 42, start: 99 },
                since_ns: 5,
            }],
            refused: vec![Refused { id: 11, at_ns: 6 }],
        }
    }

    #[test]
    fn the_registry_round_trips_through_its_file_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_path(dir.path(), "staging");
        assert_eq!(
            load(&path).unwrap(),
            Registry::default(),
            "missing is empty"
        );
        save(&path, &sample()).unwrap();
        assert_eq!(load(&path).unwrap(), sample());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["client-ids.staging.json".to_string()]);
        // An update reads, changes and saves under the lock.
        let n = update(&path, |r| {
            r.refused.clear();
            r.leases.len()
        })
        .unwrap();
        assert_eq!(n, 1);
        assert!(load(&path).unwrap().refused.is_empty());
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error_and_an_update_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_path(dir.path(), "production");
        std::fs::write(&path, b"{\"leases\": [ {\"id\": ").unwrap();
        let e = load(&path).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{msg}");
        assert!(
            msg.contains("client-ids.production.json is corrupt"),
            "{msg}"
        );
        let seen = update(&path, |r| {
            let before = r.clone();
            *r = sample();
            before
        })
        .unwrap();
        assert_eq!(seen, Registry::default());
        assert_eq!(load(&path).unwrap(), sample());
    }

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not_its_holder() {
        let me = this_process();
        assert!(me.start > 0, "start time read from /proc");
        assert!(is_alive(&me));
        assert!(!is_alive(&Process {
            pid: me.pid,
            start: me.start + 1
        }));
        // Pids are below 2^22 on Linux: this one never runs.
        assert!(!is_alive(&Process {
            pid: u32::MAX - 1,
            start: 0
        }));
    }
}
