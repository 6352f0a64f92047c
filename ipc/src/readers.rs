//! The reader registry: a small shared-memory table in which ring readers say who they are
//! and how far they have read, so that `ib-stream top` can show each reader's lag.
//!
//! Readers of the ring are otherwise invisible (the writer never looks at them). A reader
//! that wants to be seen claims a slot here; registering is optional and never fails the
//! reader: a full table, a missing permission or a bad file leave it reading unregistered.
//!
//! # File layout (`readers` beside `ticks.ring`; all integers little-endian)
//!
//! A 128-byte header, then [`READER_SLOTS`] slots of [`READER_SLOT_SIZE`] bytes; every slot
//! starts on a 128-byte boundary so that one reader's stores never share a cache line (nor an
//! adjacent-line prefetch pair) with another's.
//!
//! | offset | size | header field  | meaning                                               |
//! |-------:|-----:|---------------|-------------------------------------------------------|
//! | 0      | 8    | `magic`       | [`READERS_MAGIC`] (`"IBSREADR"`)                       |
//! | 8      | 4    | `version`     | [`READERS_LAYOUT_VERSION`]                             |
//! | 12     | 4    | `slot_size`   | 128                                                   |
//! | 16     | 4    | `slot_count`  | 64                                                    |
//! | 20     | 4    | `slots_offset`| 128                                                   |
//! | 24     | 8    | `created_ns`  | creation time, ns since the Unix epoch                |
//!
//! | slot offset | size | field        | meaning                                                        |
//! |------------:|-----:|--------------|----------------------------------------------------------------|
//! | 0           | 8    | `owner`      | 0 = free; else `pid` (low 32 bits) and the low 32 bits of the process start time in clock ticks (`/proc/<pid>/stat` field 22) (high 32 bits) |
//! | 8           | 24   | `name`       | UTF-8, NUL-padded                                              |
//! | 32          | 8    | `epoch`      | epoch of the ring the position belongs to                      |
//! | 40          | 8    | `position`   | the next sequence the reader will read                         |
//! | 48          | 8    | `laps`       | times the reader was lapped (overruns)                         |
//! | 56          | 8    | `lost`       | records lost to those laps                                     |
//! | 64          | 8    | `updated_ns` | when `position` was last stored, ns since the Unix epoch       |
//! | 72          | 8    | `claimed_ns` | when the slot was claimed                                      |
//!
//! # Protocol
//!
//! Every field is accessed with 8-byte atomic operations. A reader claims a slot with a
//! compare-and-swap of `owner` from 0 (free) to its own value, or from the value of an owner
//! that is dead (`kill(pid, 0)` says ESRCH, or the pid now belongs to a process with another
//! start time, i.e. the pid was reused); only one claimant can win a slot. The winner then
//! writes the other fields; a monitor may see the previous owner's fields for that instant.
//! The owner alone stores its position (relaxed stores into its own slot, no syscall): when
//! its position reaches a multiple of [`PUBLISH_EVERY`], when it has caught up (a read finds
//! nothing new) and the position moved since its last store, and at a lap. On a clean close it swaps `owner` back to 0 (only if still its own).
//!
//! # Creation
//!
//! Whoever needs the file first (the engine, or a reader) creates it: fully initialised under
//! a temporary name with the ring's permission conventions ([`ShmOptions`]), then
//! hard-linked to `readers`, which fails if someone else was first (their file is then used).
//! It is never replaced while it exists, so readers of every writer epoch share one table.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::IpcError;
use crate::shm::{ShmOptions, ShmRegion, process_alive, unix_time_ns};

/// The registry's file name in the shared-memory directory.
pub const READERS_FILE_NAME: &str = "readers";
/// The registry file's first 8 bytes: `"IBSREADR"` read as a little-endian u64.
pub const READERS_MAGIC: u64 = u64::from_le_bytes(*b"IBSREADR");
/// Layout version of the registry file.
pub const READERS_LAYOUT_VERSION: u32 = 1;
/// Number of slots.
pub const READER_SLOTS: usize = 64;
/// Bytes per slot (two cache lines).
pub const READER_SLOT_SIZE: usize = 128;
/// Bytes of the header, and the offset of slot 0.
pub const READERS_HEADER_SIZE: usize = 128;
/// Longest name kept, in bytes (longer names are cut at a character boundary).
pub const READER_NAME_LEN: usize = 24;
/// A registered reader stores its position when it reaches a multiple of this many
/// sequences (a power of two: the check is a mask of a value already in a register).
pub const PUBLISH_EVERY: u64 = 1024;
const _: () = assert!(PUBLISH_EVERY.is_power_of_two());
/// Length of the registry file.
pub const READERS_FILE_LEN: usize = READERS_HEADER_SIZE + READER_SLOTS * READER_SLOT_SIZE;

/// Byte offsets of the header and slot fields (see the module documentation).
pub mod offsets {
    /// Header: magic.
    pub const MAGIC: usize = 0;
    /// Header: layout version (u32).
    pub const VERSION: usize = 8;
    /// Header: slot size (u32).
    pub const SLOT_SIZE: usize = 12;
    /// Header: slot count (u32).
    pub const SLOT_COUNT: usize = 16;
    /// Header: offset of slot 0 (u32).
    pub const SLOTS_OFFSET: usize = 20;
    /// Header: creation time.
    pub const CREATED_NS: usize = 24;
    /// Slot: owner word.
    pub const OWNER: usize = 0;
    /// Slot: name (24 bytes).
    pub const NAME: usize = 8;
    /// Slot: ring epoch.
    pub const EPOCH: usize = 32;
    /// Slot: next sequence to read.
    pub const POSITION: usize = 40;
    /// Slot: laps.
    pub const LAPS: usize = 48;
    /// Slot: records lost.
    pub const LOST: usize = 56;
    /// Slot: last position store.
    pub const UPDATED_NS: usize = 64;
    /// Slot: claim time.
    pub const CLAIMED_NS: usize = 72;
}

/// The owner word of this process: its pid and the low 32 bits of its start time.
pub fn owner_word(pid: u32, start_ticks: u64) -> u64 {
    ((start_ticks & 0xFFFF_FFFF) << 32) | u64::from(pid)
}

/// The start time of process `pid` in clock ticks since boot (`/proc/<pid>/stat` field 22),
/// `None` when it cannot be read (no `/proc`, process gone).
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')': split after
    // the last ')'. Field 3 is then the first token, so field 22 is the 20th.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// Whether the owner recorded in a slot still exists: `Some(false)` when its pid is gone or
/// now belongs to a process started at another time, `None` when this process cannot tell
/// (the slot is then left alone).
pub fn owner_alive(owner: u64) -> Option<bool> {
    if owner == 0 {
        return Some(false);
    }
    let pid = (owner & 0xFFFF_FFFF) as u32;
    let start = owner >> 32;
    match process_alive(pid) {
        Some(true) => {
            if start == 0 {
                return Some(true);
            }
            match process_start_ticks(pid) {
                Some(now) => Some(now & 0xFFFF_FFFF == start),
                // Gone between the two checks, or /proc hidden: only the first is sure.
                None => match process_alive(pid) {
                    Some(false) => Some(false),
                    _ => Some(true),
                },
            }
        }
        other => other,
    }
}

fn my_owner_word() -> u64 {
    let pid = std::process::id();
    owner_word(pid, process_start_ticks(pid).unwrap_or(0))
}

/// One registered reader, as seen by a monitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReaderEntry {
    /// Slot index.
    pub slot: usize,
    /// The owner's pid.
    pub pid: u32,
    /// The owner's name.
    pub name: String,
    /// Whether the owner still runs (`None`: cannot tell).
    pub alive: Option<bool>,
    /// Ring epoch of the position.
    pub epoch: u64,
    /// The next sequence the reader will read.
    pub position: u64,
    /// Times it was lapped.
    pub laps: u64,
    /// Records it lost to laps.
    pub lost: u64,
    /// When it last stored its position, ns since the Unix epoch.
    pub updated_ns: u64,
    /// When it claimed the slot.
    pub claimed_ns: u64,
}

impl ReaderEntry {
    /// Records published but not yet read by this reader, given the ring's `head` (last
    /// published sequence) and `epoch`; `None` when the position is of another epoch.
    pub fn lag(&self, head: u64, epoch: u64) -> Option<u64> {
        (self.epoch == epoch).then(|| head.saturating_sub(self.position.saturating_sub(1)))
    }
}

/// The mapped registry file.
#[derive(Debug)]
pub struct ReaderRegistry {
    region: ShmRegion,
}

impl ReaderRegistry {
    /// Opens the registry at `path` for registering (read-write), creating it with `opts`
    /// when it does not exist yet.
    pub fn open_or_create(path: &Path, opts: &ShmOptions) -> Result<ReaderRegistry, IpcError> {
        match Self::open_rw(path) {
            Err(e) if e.is_missing() => {}
            other => return other,
        }
        let (dir, tmp) = temp_path(path)?;
        remove_orphans(&dir);
        let made = ShmRegion::create(&tmp, READERS_FILE_LEN, opts, write_header)?;
        drop(made);
        let linked = std::fs::hard_link(&tmp, path);
        // Either ours is now linked under the real name, or someone else's is there: the
        // temporary name goes in both cases.
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(IpcError::from_io(path, "link into place", e)),
        }
        Self::open_rw(path)
    }

    fn open_rw(path: &Path) -> Result<ReaderRegistry, IpcError> {
        Self::validate(ShmRegion::open(path, true)?, path)
    }

    /// Opens the registry read-only (monitors: `top`, `status`).
    pub fn open(path: &Path) -> Result<ReaderRegistry, IpcError> {
        Self::validate(ShmRegion::open(path, false)?, path)
    }

    /// A registry on the heap (one-process tests).
    pub fn heap() -> ReaderRegistry {
        let region = ShmRegion::heap(READERS_FILE_LEN);
        let mut header = vec![0u8; READERS_HEADER_SIZE];
        write_header(&mut header);
        for (i, chunk) in header.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            atomic_at(&region, i * 8).store(v, Ordering::Relaxed);
        }
        ReaderRegistry { region }
    }

    fn validate(region: ShmRegion, path: &Path) -> Result<ReaderRegistry, IpcError> {
        let p = || path.to_path_buf();
        let len = region.len();
        if len < READERS_HEADER_SIZE {
            return Err(IpcError::TooSmall {
                path: p(),
                len: len as u64,
                needed: READERS_FILE_LEN as u64,
            });
        }
        let magic = atomic_at(&region, offsets::MAGIC).load(Ordering::Acquire);
        if magic != READERS_MAGIC {
            return Err(IpcError::BadMagic {
                path: p(),
                found: magic,
            });
        }
        let version = load_u32(&region, offsets::VERSION);
        if version != READERS_LAYOUT_VERSION {
            return Err(IpcError::VersionMismatch {
                path: p(),
                found: version,
                expected: READERS_LAYOUT_VERSION,
            });
        }
        let slot_size = load_u32(&region, offsets::SLOT_SIZE) as usize;
        let count = load_u32(&region, offsets::SLOT_COUNT) as usize;
        let first = load_u32(&region, offsets::SLOTS_OFFSET) as usize;
        if (slot_size, count, first) != (READER_SLOT_SIZE, READER_SLOTS, READERS_HEADER_SIZE) {
            return Err(IpcError::Corrupt {
                path: p(),
                what: format!(
                    "slot size {slot_size}, count {count}, offset {first}; expected \
                     {READER_SLOT_SIZE}, {READER_SLOTS}, {READERS_HEADER_SIZE}"
                ),
            });
        }
        if len < READERS_FILE_LEN {
            return Err(IpcError::TooSmall {
                path: p(),
                len: len as u64,
                needed: READERS_FILE_LEN as u64,
            });
        }
        Ok(ReaderRegistry { region })
    }

    /// The file, `None` for a heap registry.
    pub fn path(&self) -> Option<&Path> {
        self.region.path()
    }

    /// True when opened for registering (read-write); monitors open it read-only.
    pub fn is_writable(&self) -> bool {
        self.region.is_writable()
    }

    #[inline(always)]
    fn word(&self, slot: usize, field: usize) -> &AtomicU64 {
        debug_assert!(slot < READER_SLOTS && field < READER_SLOT_SIZE);
        atomic_at(
            &self.region,
            READERS_HEADER_SIZE + slot * READER_SLOT_SIZE + field,
        )
    }

    /// Claims a free slot (or one whose owner died) for `name`, reading ring `epoch` from
    /// `position`. `None` when every slot is held by a live process (the caller reads
    /// unregistered). Needs a registry opened read-write.
    pub fn claim(self: &Arc<Self>, name: &str, epoch: u64, position: u64) -> Option<ReaderSlot> {
        if !self.region.is_writable() {
            return None;
        }
        let me = my_owner_word();
        for slot in 0..READER_SLOTS {
            let owner = self.word(slot, offsets::OWNER);
            let cur = owner.load(Ordering::Acquire);
            if cur != 0 && owner_alive(cur) != Some(false) {
                continue;
            }
            if owner
                .compare_exchange(cur, me, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            let now = unix_time_ns();
            for (i, w) in name_words(name).into_iter().enumerate() {
                self.word(slot, offsets::NAME + 8 * i)
                    .store(w, Ordering::Relaxed);
            }
            self.word(slot, offsets::EPOCH)
                .store(epoch, Ordering::Relaxed);
            self.word(slot, offsets::LAPS).store(0, Ordering::Relaxed);
            self.word(slot, offsets::LOST).store(0, Ordering::Relaxed);
            self.word(slot, offsets::CLAIMED_NS)
                .store(now, Ordering::Relaxed);
            self.word(slot, offsets::UPDATED_NS)
                .store(now, Ordering::Relaxed);
            self.word(slot, offsets::POSITION)
                .store(position, Ordering::Release);
            return Some(ReaderSlot {
                registry: Arc::clone(self),
                slot,
                owner: me,
                stored: position,
                laps: 0,
                lost: 0,
            });
        }
        None
    }

    /// Frees the slots of owners that died without closing (SIGKILL, crash); returns how
    /// many. [`ReaderRegistry::claim`] does the same for the slot it takes.
    pub fn reclaim_dead(&self) -> usize {
        if !self.region.is_writable() {
            return 0;
        }
        (0..READER_SLOTS)
            .filter(|&slot| {
                let owner = self.word(slot, offsets::OWNER);
                let cur = owner.load(Ordering::Acquire);
                cur != 0
                    && owner_alive(cur) == Some(false)
                    && owner
                        .compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
            })
            .count()
    }

    /// Every held slot, with its owner's liveness (a `kill(pid, 0)` and a `/proc` read per
    /// slot: for monitors, not hot paths).
    pub fn entries(&self) -> Vec<ReaderEntry> {
        (0..READER_SLOTS)
            .filter_map(|slot| {
                let owner = self.word(slot, offsets::OWNER).load(Ordering::Acquire);
                if owner == 0 {
                    return None;
                }
                let mut name = [0u8; READER_NAME_LEN];
                for (i, chunk) in name.chunks_exact_mut(8).enumerate() {
                    let w = self
                        .word(slot, offsets::NAME + 8 * i)
                        .load(Ordering::Relaxed);
                    chunk.copy_from_slice(&w.to_le_bytes());
                }
                let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                let load = |f| self.word(slot, f).load(Ordering::Acquire);
                Some(ReaderEntry {
                    slot,
                    pid: (owner & 0xFFFF_FFFF) as u32,
                    name: String::from_utf8_lossy(&name[..end]).into_owned(),
                    alive: owner_alive(owner),
                    position: load(offsets::POSITION),
                    epoch: load(offsets::EPOCH),
                    laps: load(offsets::LAPS),
                    lost: load(offsets::LOST),
                    updated_ns: load(offsets::UPDATED_NS),
                    claimed_ns: load(offsets::CLAIMED_NS),
                })
            })
            .collect()
    }
}

/// A claimed slot: the registered reader's handle on its own line of the registry. Dropping
/// it frees the slot.
#[derive(Debug)]
pub struct ReaderSlot {
    registry: Arc<ReaderRegistry>,
    slot: usize,
    owner: u64,
    /// The position last stored.
    stored: u64,
    laps: u64,
    lost: u64,
}

impl ReaderSlot {
    /// The slot index.
    pub fn index(&self) -> usize {
        self.slot
    }

    /// The registry it belongs to.
    pub fn registry(&self) -> &Arc<ReaderRegistry> {
        &self.registry
    }

    /// One record was read; the next to read is `position`. Stores the position when it is
    /// a multiple of [`PUBLISH_EVERY`] (a store and a clock read); otherwise costs one mask
    /// test and touches no memory.
    #[inline(always)]
    pub fn on_record(&mut self, position: u64) {
        if position & (PUBLISH_EVERY - 1) == 0 {
            self.store_position(position);
        }
    }

    /// The reader found nothing new: stores its position if it moved since the last store.
    #[inline(always)]
    pub fn on_caught_up(&mut self, position: u64) {
        if position != self.stored {
            self.store_position(position);
        }
    }

    /// The reader was lapped and lost `count` records; it resumes at `position`.
    #[cold]
    pub fn on_lapped(&mut self, count: u64, position: u64) {
        self.laps += 1;
        self.lost = self.lost.saturating_add(count);
        self.word(offsets::LAPS).store(self.laps, Ordering::Relaxed);
        self.word(offsets::LOST).store(self.lost, Ordering::Relaxed);
        self.store_position(position);
    }

    /// The reader moved to another ring epoch (a restarted writer) at `position`.
    pub fn on_new_epoch(&mut self, epoch: u64, position: u64) {
        self.word(offsets::EPOCH).store(epoch, Ordering::Relaxed);
        self.store_position(position);
    }

    /// Stores `position` and the time now.
    #[cold]
    #[inline(never)]
    pub fn store_position(&mut self, position: u64) {
        self.stored = position;
        self.word(offsets::UPDATED_NS)
            .store(unix_time_ns(), Ordering::Relaxed);
        self.word(offsets::POSITION)
            .store(position, Ordering::Release);
    }

    #[inline(always)]
    fn word(&self, field: usize) -> &AtomicU64 {
        self.registry.word(self.slot, field)
    }
}

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        // Only if still ours: a monitor may have judged us dead (pid namespace quirks) and
        // someone else may hold the slot now.
        let _ = self.word(offsets::OWNER).compare_exchange(
            self.owner,
            0,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

/// What [`crate::RingReader::register`] achieved. Not being registered never stops a reader.
#[derive(Debug)]
pub enum Registration {
    /// The reader holds this slot.
    Registered {
        /// Slot index.
        slot: usize,
    },
    /// Every slot is held by a live reader: this one reads unregistered.
    TableFull,
    /// The registry could not be opened or created (the reader reads unregistered).
    Unavailable(IpcError),
}

impl Registration {
    /// True when the reader holds a slot.
    pub fn is_registered(&self) -> bool {
        matches!(self, Registration::Registered { .. })
    }
}

impl std::fmt::Display for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Registration::Registered { slot } => write!(f, "registered in reader slot {slot}"),
            Registration::TableFull => write!(
                f,
                "the reader registry is full ({READER_SLOTS} live readers): reading unregistered"
            ),
            Registration::Unavailable(e) => {
                write!(f, "reader registry unavailable ({e}): reading unregistered")
            }
        }
    }
}

fn name_words(name: &str) -> [u64; READER_NAME_LEN / 8] {
    let mut end = name.len().min(READER_NAME_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let mut bytes = [0u8; READER_NAME_LEN];
    bytes[..end].copy_from_slice(&name.as_bytes()[..end]);
    let mut words = [0u64; READER_NAME_LEN / 8];
    for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        *w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
    }
    words
}

fn write_header(bytes: &mut [u8]) {
    let mut put = |off: usize, v: &[u8]| bytes[off..off + v.len()].copy_from_slice(v);
    put(offsets::MAGIC, &READERS_MAGIC.to_le_bytes());
    put(offsets::VERSION, &READERS_LAYOUT_VERSION.to_le_bytes());
    put(offsets::SLOT_SIZE, &(READER_SLOT_SIZE as u32).to_le_bytes());
    put(offsets::SLOT_COUNT, &(READER_SLOTS as u32).to_le_bytes());
    put(
        offsets::SLOTS_OFFSET,
        &(READERS_HEADER_SIZE as u32).to_le_bytes(),
    );
    put(offsets::CREATED_NS, &unix_time_ns().to_le_bytes());
}

const TMP_PREFIX: &str = ".readers.new-";

/// `(directory, unique temporary path)` for a registry at `path`.
fn temp_path(path: &Path) -> Result<(PathBuf, PathBuf), IpcError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        Some(_) => PathBuf::from("."),
        None => {
            return Err(IpcError::InvalidConfig {
                path: path.to_path_buf(),
                what: "the path must name a file inside a directory".into(),
            });
        }
    };
    let tmp = dir.join(format!(
        "{TMP_PREFIX}{}-{:016x}",
        std::process::id(),
        crate::shm::random_u64()
    ));
    Ok((dir, tmp))
}

/// Removes temporary registry files of creators that died before linking them.
fn remove_orphans(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TMP_PREFIX)) else {
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

fn atomic_at(region: &ShmRegion, offset: usize) -> &AtomicU64 {
    assert!(
        offset + 8 <= region.len() && offset.is_multiple_of(8),
        "registry offset {offset} out of range"
    );
    let p = region.as_ptr().wrapping_add(offset).cast::<AtomicU64>();
    // SAFETY: in bounds (checked above) and 8-aligned (the region is page aligned and the
    // offset a multiple of 8). Every process accesses these bytes only atomically, and atomic
    // loads of a read-only mapping are allowed (monitors only load). Lives as long as
    // `region`.
    unsafe { &*p }
}

fn load_u32(region: &ShmRegion, offset: usize) -> u32 {
    assert!(offset + 4 <= region.len() && offset.is_multiple_of(4));
    let p = region.as_ptr().wrapping_add(offset).cast::<AtomicU32>();
    // SAFETY: in bounds and 4-aligned (checked above; the region is page aligned); accessed
    // atomically; lives as long as `region`.
    unsafe { &*p }.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ipc-readers-{tag}-{}-{:x}",
            std::process::id(),
            crate::shm::random_u64()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn layout_is_pinned() {
        // Other languages implement these offsets (ipc/README.md): change only with a bump.
        assert_eq!(READERS_FILE_LEN, 128 + 64 * 128);
        assert_eq!(READERS_MAGIC.to_le_bytes(), *b"IBSREADR");
        let reg = Arc::new(ReaderRegistry::heap());
        let mut s = reg
            .claim("recorder-with-a-long-name-cut", 0xAB, 17)
            .unwrap();
        assert_eq!(s.index(), 0);
        s.on_lapped(5, 40);
        let base = READERS_HEADER_SIZE;
        let w = |off: usize| atomic_at(&reg.region, base + off).load(Ordering::Relaxed);
        assert_eq!(w(0), my_owner_word());
        assert_eq!(w(0) & 0xFFFF_FFFF, u64::from(std::process::id()));
        assert_eq!(&w(8).to_le_bytes(), b"recorder");
        assert_eq!(w(32), 0xAB);
        assert_eq!(w(40), 40);
        assert_eq!((w(48), w(56)), (1, 5));
        assert!(w(64) > 0 && w(72) > 0);
        let e = &reg.entries()[0];
        assert_eq!(e.name, "recorder-with-a-long-nam");
        assert_eq!(e.alive, Some(true));
        assert_eq!(e.lag(100, 0xAB), Some(61));
        assert_eq!(e.lag(100, 0xCD), None);
        drop(s);
        assert_eq!(w(0), 0, "a dropped slot is free");
        assert!(reg.entries().is_empty());
    }

    #[test]
    fn names_are_cut_at_a_character_boundary() {
        let reg = Arc::new(ReaderRegistry::heap());
        // 23 ASCII bytes, then a 2-byte character that does not fit.
        let _s = reg.claim(&format!("{}é", "x".repeat(23)), 1, 1).unwrap();
        assert_eq!(reg.entries()[0].name, "x".repeat(23));
    }

    #[test]
    fn positions_are_stored_per_batch_on_catch_up_and_at_laps() {
        let reg = Arc::new(ReaderRegistry::heap());
        let mut s = reg.claim("t", 1, 1).unwrap();
        for p in 2..PUBLISH_EVERY {
            s.on_record(p);
        }
        assert_eq!(reg.entries()[0].position, 1, "not yet at a batch boundary");
        s.on_caught_up(1);
        assert_eq!(reg.entries()[0].updated_ns, reg.entries()[0].claimed_ns);
        s.on_record(PUBLISH_EVERY);
        assert_eq!(reg.entries()[0].position, PUBLISH_EVERY);
        s.on_record(PUBLISH_EVERY + 1);
        s.on_caught_up(PUBLISH_EVERY + 2);
        assert_eq!(reg.entries()[0].position, PUBLISH_EVERY + 2);
        s.on_new_epoch(2, 1);
        let e = &reg.entries()[0];
        assert_eq!((e.epoch, e.position), (2, 1));
    }

    #[test]
    fn a_full_table_refuses_and_a_freed_slot_is_reused() {
        let reg = Arc::new(ReaderRegistry::heap());
        let mut held: Vec<ReaderSlot> = (0..READER_SLOTS)
            .map(|i| reg.claim(&format!("r{i}"), 1, 1).unwrap())
            .collect();
        assert!(reg.claim("one-too-many", 1, 1).is_none());
        let freed = held.remove(10).index();
        let again = reg.claim("late", 1, 1).unwrap();
        assert_eq!(again.index(), freed);
    }

    #[test]
    fn slots_of_dead_or_reused_pids_are_reclaimed() {
        let reg = Arc::new(ReaderRegistry::heap());
        let owner = |slot: usize| reg.word(slot, offsets::OWNER);
        // A pid above the kernel's limit (2^22) cannot exist; our own pid with a start time
        // that is not ours stands for a reused pid.
        owner(0).store(owner_word(4_194_304 + 7, 0), Ordering::Relaxed);
        let me = std::process::id();
        let start = process_start_ticks(me).expect("/proc/self/stat");
        owner(1).store(owner_word(me, start + 1), Ordering::Relaxed);
        owner(2).store(owner_word(me, start), Ordering::Relaxed);
        assert_eq!(owner_alive(owner(0).load(Ordering::Relaxed)), Some(false));
        assert_eq!(owner_alive(owner(1).load(Ordering::Relaxed)), Some(false));
        assert_eq!(owner_alive(owner(2).load(Ordering::Relaxed)), Some(true));
        let s = reg.claim("new", 1, 1).unwrap();
        assert_eq!(s.index(), 0, "the dead owner's slot is taken first");
        assert_eq!(reg.reclaim_dead(), 1, "the reused pid's slot");
        let live: Vec<usize> = reg.entries().iter().map(|e| e.slot).collect();
        assert_eq!(live, vec![0, 2]);
    }

    #[test]
    fn file_is_created_once_and_validated() {
        let dir = tmpdir("file");
        let path = dir.join(READERS_FILE_NAME);
        let a = Arc::new(ReaderRegistry::open_or_create(&path, &ShmOptions::default()).unwrap());
        let _s = a.claim("a", 1, 1).unwrap();
        // A second opener (creating or not) sees the same table.
        let b = ReaderRegistry::open_or_create(&path, &ShmOptions::default()).unwrap();
        assert_eq!(b.entries().len(), 1);
        let ro = Arc::new(ReaderRegistry::open(&path).unwrap());
        assert_eq!(ro.entries()[0].name, "a");
        assert!(ro.claim("x", 1, 1).is_none(), "read-only cannot claim");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![READERS_FILE_NAME.to_string()], "no temp left");

        let bad = dir.join("bad");
        std::fs::write(&bad, vec![0u8; READERS_FILE_LEN]).unwrap();
        assert!(matches!(
            ReaderRegistry::open(&bad),
            Err(IpcError::BadMagic { .. })
        ));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8] = 9;
        std::fs::write(&bad, &bytes).unwrap();
        assert!(matches!(
            ReaderRegistry::open(&bad),
            Err(IpcError::VersionMismatch { found: 9, .. })
        ));
        std::fs::write(&bad, &bytes[..64]).unwrap();
        assert!(matches!(
            ReaderRegistry::open(&bad),
            Err(IpcError::TooSmall { .. })
        ));
        let mut bytes = std::fs::read(&path).unwrap();
        std::fs::write(&bad, &bytes[..READERS_FILE_LEN - 8]).unwrap();
        assert!(matches!(
            ReaderRegistry::open(&bad),
            Err(IpcError::TooSmall { .. })
        ));
        bytes[16] = 3;
        std::fs::write(&bad, &bytes).unwrap();
        assert!(matches!(
            ReaderRegistry::open(&bad),
            Err(IpcError::Corrupt { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
