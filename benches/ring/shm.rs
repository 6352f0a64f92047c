//! The run's scratch directory under /dev/shm and the raw shared cache lines of the floor.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use anyhow::Context;
use memmap2::MmapMut;

/// A directory private to this run, removed (with everything in it) on drop, together with
/// any /dev/shm entry whose name starts with `shm_prefix` (iceoryx2's segments).
#[derive(Debug)]
pub(crate) struct RunDir {
    path: PathBuf,
    shm_prefix: String,
}

impl RunDir {
    /// Creates `/dev/shm/ib-stream-bench-ring-<pid>-<ns>`; fails if it already exists.
    pub(crate) fn create() -> anyhow::Result<RunDir> {
        let tag = format!("{}-{}", std::process::id(), crate::clock::mono_ns());
        let path = PathBuf::from(format!("/dev/shm/ib-stream-bench-ring-{tag}"));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        // iceoryx2 file names must be short: pid and low digits of the clock keep it unique.
        let shm_prefix = format!(
            "iox2ibrb{}x{}_",
            std::process::id(),
            crate::clock::mono_ns() % 1_000_000
        );
        Ok(RunDir { path, shm_prefix })
    }

    /// Removes what an interrupted earlier run left in /dev/shm: run directories and iceoryx2
    /// segments named after a process id that no longer exists. Returns how many were removed.
    pub(crate) fn remove_stale() -> usize {
        let Ok(entries) = std::fs::read_dir("/dev/shm") else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = if let Some(rest) = name.strip_prefix("ib-stream-bench-ring-") {
                rest.split('-').next()
            } else if let Some(rest) = name.strip_prefix("iox2ibrb") {
                rest.split('x').next()
            } else {
                None
            };
            let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let p = entry.path();
            let res = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if res.is_ok() {
                removed += 1;
            }
        }
        removed
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// File-name prefix for iceoryx2's /dev/shm segments of this run.
    pub(crate) fn shm_prefix(&self) -> &str {
        &self.shm_prefix
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: could not remove {}: {e}", self.path.display());
        }
        let Ok(entries) = std::fs::read_dir("/dev/shm") else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&self.shm_prefix)
            {
                let p = entry.path();
                let res = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                if let Err(e) = res {
                    eprintln!("warning: could not remove {}: {e}", p.display());
                }
            }
        }
    }
}

/// Distance between two lines used by different writers: two cache lines, so the adjacent-line
/// prefetcher never couples them.
const STRIDE: usize = 4096;
/// Lines available in one mapping.
pub(crate) const LINES: usize = 32;

/// A few 8-byte counters, each alone on its cache line, in a file both processes map.
#[derive(Debug)]
pub(crate) struct SharedLines {
    _map: MmapMut,
    base: *mut u8,
}

impl SharedLines {
    /// Creates the file (zeroed) and maps it.
    pub(crate) fn create(path: &Path) -> anyhow::Result<SharedLines> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.set_len((STRIDE * LINES) as u64)?;
        Self::map(&file)
    }

    /// Maps a file made by [`SharedLines::create`] in another process.
    pub(crate) fn open(path: &Path) -> anyhow::Result<SharedLines> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        anyhow::ensure!(
            file.metadata()?.len() == (STRIDE * LINES) as u64,
            "{} has the wrong size",
            path.display()
        );
        Self::map(&file)
    }

    fn map(file: &std::fs::File) -> anyhow::Result<SharedLines> {
        // SAFETY: the file lives in this run's private directory and nobody truncates it while
        // it is mapped; its bytes are only ever accessed through atomics (see `line`).
        let mut map = unsafe { MmapMut::map_mut(file)? };
        let base = map.as_mut_ptr();
        let lines = SharedLines { _map: map, base };
        // Pre-fault for writing before any timing starts (an atomic no-op, as the peer may
        // already be using the lines).
        (0..LINES).for_each(|i| {
            lines
                .line(i)
                .fetch_add(0, std::sync::atomic::Ordering::Relaxed);
        });
        Ok(lines)
    }

    /// Counter `i` (0..LINES).
    pub(crate) fn line(&self, i: usize) -> &AtomicU64 {
        assert!(i < LINES, "line {i} out of range");
        let p = self.base.wrapping_add(i * STRIDE).cast::<u64>();
        // SAFETY: `p` is inside the mapping (checked above), 8-byte aligned (page-aligned base,
        // offset a multiple of 128), valid for as long as `self` holds the map, and every access
        // to it from any process is atomic, so no data race.
        unsafe { AtomicU64::from_ptr(p) }
    }
}
