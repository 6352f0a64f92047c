//! Shared-memory files: creation, mapping, replacement detection and the writer lock.
//!
//! A writer builds every file the same way, so that a reader can never map a half-made one
//! and nothing is ever truncated under a live mapping (that would send SIGBUS to readers):
//!
//! 1. create `.<name>.tmp-<pid>-<n>` in the target directory (`O_EXCL`, mode from
//!    [`ShmOptions`], group changed when configured),
//! 2. size it (`set_len`) and reserve its blocks (`posix_fallocate`, so that a full
//!    `/dev/shm` is an error now and not a SIGBUS later),
//! 3. map it and touch every page (pre-fault), run the caller's `init` (writes the header),
//! 4. `rename` it over the final name. Readers that still map the old file keep it alive
//!    until they unmap; they notice the swap with [`ShmRegion::replaced`].
//!
//! A [`ShmRegion`] can also live on the heap (page aligned), so that the same ring and region
//! code runs in one process for tests and models.

use std::alloc::Layout;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use memmap2::{MmapOptions, MmapRaw};

use crate::error::IpcError;

/// The page size every layout in this crate is aligned to.
pub const PAGE_SIZE: usize = 4096;

/// How a writer creates its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShmOptions {
    /// Permission bits of the file (default `0o600`: only the writer's user).
    pub mode: u32,
    /// When set, the file (and the directories this call creates) get this group id and the
    /// group may read and write (`g+rw`), so other users in the group can run readers.
    pub group: Option<u32>,
    /// Touch every page at creation so that the first publish never takes a page fault
    /// (default `true`).
    pub prefault: bool,
}

impl Default for ShmOptions {
    fn default() -> Self {
        ShmOptions {
            mode: 0o600,
            group: None,
            prefault: true,
        }
    }
}

/// The default directory of one environment's files: `/dev/shm/ib-stream/<environment>/`.
/// Every program takes an override; tests always use their own directory.
pub fn default_dir(environment: &str) -> PathBuf {
    Path::new("/dev/shm/ib-stream").join(environment)
}

enum Backing {
    File {
        // Kept only to unmap on drop; all access goes through `ShmRegion::ptr`.
        _map: MmapRaw,
        path: PathBuf,
        dev: u64,
        ino: u64,
        writable: bool,
    },
    Heap {
        layout: Layout,
    },
}

/// One mapped shared-memory file, or a page-aligned heap block standing in for one.
///
/// The region hands out a raw pointer only: every layout built on it (ring, status region,
/// string table) reads and writes the bytes through atomics, because other processes change
/// them concurrently and a Rust reference to the bytes would be a lie.
pub struct ShmRegion {
    ptr: NonNull<u8>,
    len: usize,
    backing: Backing,
}

impl std::fmt::Debug for ShmRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("ShmRegion");
        d.field("len", &self.len);
        match &self.backing {
            Backing::File {
                path,
                dev,
                ino,
                writable,
                ..
            } => d
                .field("path", path)
                .field("dev", dev)
                .field("ino", ino)
                .field("writable", writable),
            Backing::Heap { .. } => d.field("heap", &true),
        };
        d.finish()
    }
}

// SAFETY: the region owns its mapping/allocation; the pointer stays valid until drop and the
// region itself never dereferences it. Users access the bytes only through atomics (the
// memory is shared with other processes anyway), so moving or sharing the handle between
// threads adds nothing a second process could not already do.
unsafe impl Send for ShmRegion {}
// SAFETY: as for `Send`: `&ShmRegion` exposes only the pointer, length and path.
unsafe impl Sync for ShmRegion {}

impl ShmRegion {
    /// Creates the file at `path` with `len` bytes: under a temporary name in the same
    /// directory (created as needed), with `opts`' mode and group, sized, blocks reserved,
    /// mapped, pre-faulted, initialised by `init`, then renamed into place.
    ///
    /// An existing file at `path` is replaced atomically (readers that map it keep their
    /// copy and can see the swap with [`ShmRegion::replaced`]); it is never truncated.
    /// Callers that must be the only writer take a [`WriterLock`] first.
    pub fn create(
        path: &Path,
        len: usize,
        opts: &ShmOptions,
        init: impl FnOnce(&mut [u8]),
    ) -> Result<ShmRegion, IpcError> {
        if len == 0 {
            return Err(IpcError::InvalidConfig {
                path: path.to_path_buf(),
                what: "a shared-memory file needs at least one byte".into(),
            });
        }
        let (dir, name) = split_path(path)?;
        create_dirs(dir, opts)?;
        remove_orphan_tmp_files(dir, name);
        let tmp = dir.join(format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            unique_counter()
        ));
        let result = Self::build_tmp(&tmp, len, opts, init).and_then(|region| {
            std::fs::rename(&tmp, path)
                .map_err(|e| IpcError::from_io(path, "rename into place", e))?;
            Ok(region.with_path(path.to_path_buf()))
        });
        if result.is_err() {
            // Leave nothing half-made behind; the file may not exist, so the result is moot.
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn build_tmp(
        tmp: &Path,
        len: usize,
        opts: &ShmOptions,
        init: impl FnOnce(&mut [u8]),
    ) -> Result<ShmRegion, IpcError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(opts.mode)
            .open(tmp)
            .map_err(|e| IpcError::from_io(tmp, "create", e))?;
        set_owner_and_mode(&file, tmp, opts)?;
        file.set_len(len as u64)
            .map_err(|e| IpcError::from_io(tmp, "set_len", e))?;
        reserve_blocks(&file, tmp, len)?;
        let map = MmapOptions::new()
            .len(len)
            .map_raw(&file)
            .map_err(|e| IpcError::from_io(tmp, "mmap", e))?;
        let meta = file
            .metadata()
            .map_err(|e| IpcError::from_io(tmp, "fstat", e))?;
        let ptr = NonNull::new(map.as_mut_ptr()).ok_or_else(|| IpcError::Io {
            path: tmp.to_path_buf(),
            op: "mmap",
            source: io::Error::other("null mapping"),
        })?;
        let region = ShmRegion {
            ptr,
            len,
            backing: Backing::File {
                _map: map,
                path: tmp.to_path_buf(),
                dev: meta.dev(),
                ino: meta.ino(),
                writable: true,
            },
        };
        if opts.prefault {
            region.prefault();
        }
        // SAFETY: the file was created by this call under a fresh O_EXCL name and is not yet
        // visible under its final name, so no other process maps it; `region` is the only
        // mapping in this process, and the slice lives only for the duration of `init`.
        let bytes = unsafe { std::slice::from_raw_parts_mut(region.ptr.as_ptr(), len) };
        init(bytes);
        Ok(region)
    }

    /// Opens and maps the whole existing file at `path`, read-only unless `writable`.
    pub fn open(path: &Path, writable: bool) -> Result<ShmRegion, IpcError> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| IpcError::from_io(path, "open", e))?;
        let meta = file
            .metadata()
            .map_err(|e| IpcError::from_io(path, "fstat", e))?;
        let len = usize::try_from(meta.len()).map_err(|_| IpcError::Corrupt {
            path: path.to_path_buf(),
            what: format!("file length {} does not fit in memory", meta.len()),
        })?;
        if len == 0 {
            return Err(IpcError::TooSmall {
                path: path.to_path_buf(),
                len: 0,
                needed: 1,
            });
        }
        let mut mo = MmapOptions::new();
        mo.len(len);
        let map = if writable {
            mo.map_raw(&file)
        } else {
            mo.map_raw_read_only(&file)
        }
        .map_err(|e| IpcError::from_io(path, "mmap", e))?;
        let ptr = NonNull::new(map.as_mut_ptr()).ok_or_else(|| IpcError::Io {
            path: path.to_path_buf(),
            op: "mmap",
            source: io::Error::other("null mapping"),
        })?;
        Ok(ShmRegion {
            ptr,
            len,
            backing: Backing::File {
                _map: map,
                path: path.to_path_buf(),
                dev: meta.dev(),
                ino: meta.ino(),
                writable,
            },
        })
    }

    /// A zeroed, page-aligned heap block of `len` bytes that stands in for a file (in-process
    /// tests, models, a writer and readers in one program). Aborts like `Vec` when memory runs
    /// out; [`ShmRegion::try_heap`] returns an error instead.
    pub fn heap(len: usize) -> ShmRegion {
        match Self::try_heap(len) {
            Ok(r) => r,
            Err(_) => std::alloc::handle_alloc_error(
                Layout::from_size_align(len.max(1), PAGE_SIZE).unwrap_or(Layout::new::<u8>()),
            ),
        }
    }

    /// Like [`ShmRegion::heap`], but an allocation that fails (or a length that cannot be
    /// allocated at all) is an [`IpcError::Io`] with `op = "allocate"`.
    pub fn try_heap(len: usize) -> Result<ShmRegion, IpcError> {
        let failed = |what: &str| IpcError::Io {
            path: PathBuf::from("(heap region)"),
            op: "allocate",
            source: io::Error::new(io::ErrorKind::OutOfMemory, format!("{len} bytes: {what}")),
        };
        let size = len
            .max(1)
            .checked_next_multiple_of(PAGE_SIZE)
            .ok_or_else(|| failed("too large"))?;
        let layout = Layout::from_size_align(size, PAGE_SIZE).map_err(|_| failed("too large"))?;
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| failed("out of memory"))?;
        Ok(ShmRegion {
            ptr,
            len,
            backing: Backing::Heap { layout },
        })
    }

    fn with_path(mut self, final_path: PathBuf) -> ShmRegion {
        if let Backing::File { path, .. } = &mut self.backing {
            *path = final_path;
        }
        self
    }

    /// Writes one byte per page so every page is resident before the first real write.
    fn prefault(&self) {
        for off in (0..self.len).step_by(PAGE_SIZE) {
            let p = self.ptr.as_ptr().wrapping_add(off);
            // SAFETY: `off < len`, so `p` is inside the mapping; the region was just created
            // and is not shared yet; the page is zero (new file) and stays zero.
            unsafe { p.write_volatile(0) };
        }
    }

    /// The first byte. Writing through it is allowed only for a region created or opened
    /// writable (a read-only mapping faults), and only with atomics when others map it too.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty region (never: creation refuses zero lengths).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file's path, `None` for a heap region.
    pub fn path(&self) -> Option<&Path> {
        match &self.backing {
            Backing::File { path, .. } => Some(path),
            Backing::Heap { .. } => None,
        }
    }

    /// True when the mapping may be written.
    pub fn is_writable(&self) -> bool {
        match &self.backing {
            Backing::File { writable, .. } => *writable,
            Backing::Heap { .. } => true,
        }
    }

    /// True when the file at [`ShmRegion::path`] is no longer the one mapped: a restarted
    /// writer renamed a new file over it, or it was removed. One `stat` call; a heap region is
    /// never replaced. An error other than "not found" (say, a directory made unreadable)
    /// answers `false`: nothing shows the file changed.
    pub fn replaced(&self) -> bool {
        match &self.backing {
            Backing::Heap { .. } => false,
            Backing::File { path, dev, ino, .. } => match std::fs::metadata(path) {
                Ok(m) => m.dev() != *dev || m.ino() != *ino,
                Err(e) => e.kind() == io::ErrorKind::NotFound,
            },
        }
    }
}

impl Drop for ShmRegion {
    fn drop(&mut self) {
        if let Backing::Heap { layout } = &self.backing {
            // SAFETY: allocated in `heap` with exactly this layout, freed once here.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), *layout) };
        }
        // A file mapping is unmapped by `MmapRaw`'s own drop.
    }
}

/// Proof that this process is the only writer of one file, held until dropped.
///
/// An exclusive `flock` on `<file>.lock` beside the file. The lock file is never replaced or
/// removed, so every writer of a name contends for the same lock even across restarts; the
/// kernel releases the lock when the holder exits for any reason, so a crashed writer never
/// blocks its successor. The holder's pid is written into the lock file for error messages.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
    path: PathBuf,
}

impl WriterLock {
    /// The lock file guarding `target`: `target` with `.lock` appended.
    pub fn lock_path(target: &Path) -> PathBuf {
        let mut s = target.as_os_str().to_os_string();
        s.push(".lock");
        PathBuf::from(s)
    }

    /// Takes the writer lock of `target` (creating the directory and lock file as needed), or
    /// fails with [`IpcError::WriterPresent`] naming the holder's pid.
    pub fn acquire(target: &Path, opts: &ShmOptions) -> Result<WriterLock, IpcError> {
        let (dir, _) = split_path(target)?;
        create_dirs(dir, opts)?;
        let path = Self::lock_path(target);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(opts.mode)
            .open(&path)
            .map_err(|e| IpcError::from_io(&path, "open lock file", e))?;
        // SAFETY: plain syscall on a file descriptor we own for the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(IpcError::WriterPresent {
                    path: target.to_path_buf(),
                    pid: read_holder_pid(&file),
                });
            }
            return Err(IpcError::from_io(&path, "flock", err));
        }
        set_owner_and_mode(&file, &path, opts)?;
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .map_err(|e| IpcError::from_io(&path, "truncate lock file", e))?;
        file.write_all_at(pid.as_bytes(), 0)
            .map_err(|e| IpcError::from_io(&path, "write lock file", e))?;
        Ok(WriterLock { _file: file, path })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid written by the lock's holder. It writes the pid just after locking, so an empty
/// file is retried a few times (this runs only on the refusal path).
fn read_holder_pid(file: &File) -> Option<u32> {
    for _ in 0..20 {
        let mut buf = [0u8; 16];
        if let Ok(n) = file.read_at(&mut buf, 0)
            && let Some(pid) = std::str::from_utf8(&buf[..n])
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
        {
            return Some(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    None
}

/// Whether process `pid` exists: `Some(true)` alive, `Some(false)` gone, `None` when this
/// process cannot tell. `kill(pid, 0)` sends nothing; only meaningful when reader and writer
/// share a pid namespace (they share `/dev/shm`, so they usually do).
pub fn process_alive(pid: u32) -> Option<bool> {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return None;
    };
    if pid <= 0 {
        return None;
    }
    // SAFETY: signal 0 performs only the existence and permission checks.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc == 0 {
        return Some(true);
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::ESRCH) => Some(false),
        Some(libc::EPERM) => Some(true),
        _ => None,
    }
}

/// Nanoseconds since the Unix epoch (wall clock), the time base of heartbeats and records.
pub fn unix_time_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A random non-zero `u64` (writer epochs): the kernel's `getrandom`, or when that fails a hash
/// of time, pid and a counter, which is unique enough to tell writer starts apart.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: `buf` is valid for writes of its length for the duration of the call.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    let v = if n == 8 {
        u64::from_ne_bytes(buf)
    } else {
        splitmix64(unix_time_ns() ^ (u64::from(std::process::id()) << 32) ^ unique_counter())
    };
    if v == 0 { 1 } else { v }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn unique_counter() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Removes temporary files of `name` left by creators that died before renaming them (their
/// pid no longer exists). Best effort: a file that cannot be removed is left for next time.
fn remove_orphan_tmp_files(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && process_alive(pid) == Some(false)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn split_path(path: &Path) -> Result<(&Path, &str), IpcError> {
    let name = path.file_name().and_then(|n| n.to_str());
    match (path.parent(), name) {
        (Some(dir), Some(name)) => Ok((
            if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            },
            name,
        )),
        _ => Err(IpcError::InvalidConfig {
            path: path.to_path_buf(),
            what: "the path must name a file (UTF-8) inside a directory".into(),
        }),
    }
}

/// Creates `dir` and its missing parents: mode 0755 (names only; the files carry their own
/// mode), owned by the configured group when there is one.
fn create_dirs(dir: &Path, opts: &ShmOptions) -> Result<(), IpcError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d {
        if p.as_os_str().is_empty() || p.is_dir() {
            break;
        }
        missing.push(p);
        d = p.parent();
    }
    for p in missing.into_iter().rev() {
        match DirBuilder::new().mode(0o755).create(p) {
            Ok(()) => {
                if let Some(gid) = opts.group {
                    chown_group(p, gid)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(IpcError::from_io(p, "create directory", e)),
        }
    }
    Ok(())
}

fn chown_group(path: &Path, gid: u32) -> Result<(), IpcError> {
    std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| IpcError::from_io(path, "chown", e))
}

/// Applies the exact mode (the umask may have cleared bits at `open`) and the group.
fn set_owner_and_mode(file: &File, path: &Path, opts: &ShmOptions) -> Result<(), IpcError> {
    use std::os::unix::fs::PermissionsExt;
    let mut mode = opts.mode & 0o7777;
    if let Some(gid) = opts.group {
        std::os::unix::fs::fchown(file, None, Some(gid))
            .map_err(|e| IpcError::from_io(path, "chown", e))?;
        mode |= 0o060;
    }
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| IpcError::from_io(path, "chmod", e))
}

/// Reserves the file's blocks so that running out of space is an error here, not a SIGBUS
/// on first touch. Filesystems without `fallocate` support fall back to the touch in prefault.
fn reserve_blocks(file: &File, path: &Path, len: usize) -> Result<(), IpcError> {
    let Ok(len) = libc::off_t::try_from(len) else {
        return Err(IpcError::InvalidConfig {
            path: path.to_path_buf(),
            what: format!("length {len} is too large"),
        });
    };
    // SAFETY: plain syscall on a file descriptor we own for the duration of the call.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 | libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        e => Err(IpcError::from_io(
            path,
            "posix_fallocate",
            io::Error::from_raw_os_error(e),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ipc-shm-{tag}-{}-{}",
            std::process::id(),
            unique_counter()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn create_initialises_sets_mode_and_renames_into_place() {
        let dir = tmpdir("create");
        let path = dir.join("sub/dir/file");
        let r = ShmRegion::create(&path, 10_000, &ShmOptions::default(), |b| {
            assert_eq!(b.len(), 10_000);
            assert!(b.iter().all(|&x| x == 0));
            b[0..4].copy_from_slice(b"ABCD");
        })
        .unwrap();
        assert_eq!(r.len(), 10_000);
        assert_eq!(r.path(), Some(path.as_path()));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 10_000);
        assert_eq!(meta.mode() & 0o777, 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file")]);
        let o = ShmRegion::open(&path, false).unwrap();
        assert_eq!(o.len(), 10_000);
        // SAFETY: 4 bytes inside the mapping; nothing writes them concurrently.
        let head = unsafe { std::slice::from_raw_parts(o.as_ptr(), 4) };
        assert_eq!(head, b"ABCD");
        assert!(!o.replaced());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn replaced_sees_a_new_file_and_a_removed_one() {
        let dir = tmpdir("replaced");
        let path = dir.join("f");
        let _a = ShmRegion::create(&path, 4096, &ShmOptions::default(), |_| {}).unwrap();
        let o = ShmRegion::open(&path, false).unwrap();
        assert!(!o.replaced());
        let _b = ShmRegion::create(&path, 4096, &ShmOptions::default(), |_| {}).unwrap();
        assert!(o.replaced());
        let o2 = ShmRegion::open(&path, false).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(o2.replaced());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn orphan_tmp_files_of_dead_creators_are_removed() {
        let dir = tmpdir("orphan");
        let path = dir.join("ring");
        // A pid that cannot exist (above the kernel's pid_max limit of 2^22) and our own pid.
        let dead = dir.join(".ring.tmp-4294967-0");
        let alive = dir.join(format!(".ring.tmp-{}-999", std::process::id()));
        let other = dir.join(".other.tmp-4294967-0");
        for f in [&dead, &alive, &other] {
            std::fs::write(f, b"x").unwrap();
        }
        let _r = ShmRegion::create(&path, 4096, &ShmOptions::default(), |_| {}).unwrap();
        assert!(!dead.exists());
        assert!(alive.exists() && other.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn open_errors_are_typed() {
        let dir = tmpdir("errors");
        let e = ShmRegion::open(&dir.join("nope"), false).unwrap_err();
        assert!(e.is_missing(), "{e}");
        std::fs::write(dir.join("empty"), b"").unwrap();
        let e = ShmRegion::open(&dir.join("empty"), false).unwrap_err();
        assert!(matches!(e, IpcError::TooSmall { len: 0, .. }), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn writer_lock_is_exclusive_and_released_on_drop() {
        let dir = tmpdir("lock");
        let path = dir.join("ring");
        let l = WriterLock::acquire(&path, &ShmOptions::default()).unwrap();
        match WriterLock::acquire(&path, &ShmOptions::default()) {
            Err(IpcError::WriterPresent { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected WriterPresent, got {other:?}"),
        }
        drop(l);
        let _l2 = WriterLock::acquire(&path, &ShmOptions::default()).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn heap_region_is_zeroed_and_page_aligned() {
        let r = ShmRegion::heap(5000);
        assert_eq!(r.len(), 5000);
        assert_eq!(r.as_ptr() as usize % PAGE_SIZE, 0);
        assert!(r.path().is_none() && !r.replaced());
        // SAFETY: the heap block is at least `len` bytes and owned by this test alone.
        let b = unsafe { std::slice::from_raw_parts(r.as_ptr(), r.len()) };
        assert!(b.iter().all(|&x| x == 0));
        let e = ShmRegion::try_heap(usize::MAX).unwrap_err();
        assert!(matches!(e, IpcError::Io { op: "allocate", .. }), "{e}");
    }

    #[test]
    fn process_alive_and_random() {
        assert_eq!(process_alive(std::process::id()), Some(true));
        assert_ne!(random_u64(), random_u64());
        assert_ne!(random_u64(), 0);
    }
}
