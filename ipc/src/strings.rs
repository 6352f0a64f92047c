//! The string table: interned byte strings published beside the ring.
//!
//! Records carry `u32` ids for exchange names, trade conditions and L1 string ticks; this
//! table maps an id to its bytes. One writer (the engine) interns, any number of readers
//! (other processes) look ids up. The table is append-only: the writer copies a new
//! string's bytes into free space, stores its entry, then publishes the new entry count
//! with a release store. A reader loads the count with acquire and only ever touches
//! entries below it, whose bytes are never written again, so a lookup is safe while the
//! writer keeps appending.
//!
//! Id 0 is always the empty string. Capacity is fixed at creation (entries, bytes and the
//! longest string); a full table is a typed [`InternError`], never a reallocation. The
//! writer finds existing strings through an open-addressing hash index it keeps in its own
//! memory, sized once at creation, so interning a string that is already in the table
//! allocates nothing and writes no shared memory.
//!
//! The header carries the epoch of the ring writer the table belongs to: record ids only
//! mean something in the table of the same epoch. The byte layout is documented in
//! `ipc/README.md` ("String table").

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::error::IpcError;
use crate::shm::{ShmOptions, ShmRegion, WriterLock};

/// `"IBSSTRS1"` read as a little-endian `u64`: the first 8 bytes of every string table.
pub const STRINGS_MAGIC: u64 = u64::from_le_bytes(*b"IBSSTRS1");
/// The string table's file name in an environment's shared-memory directory.
pub const STRINGS_FILE_NAME: &str = "strings";

/// Layout version of the string table; bumped on any incompatible change.
pub const STRINGS_VERSION: u32 = 1;
/// Bytes before the entry array: two cache lines (static fields, then the published count).
pub const STRINGS_HEADER_LEN: usize = 128;

/// Largest accepted `max_entries`: 64 Mi entries already need 512 MiB of entry array and
/// a 1 GiB writer index, orders of magnitude beyond any session's distinct strings.
pub const MAX_ENTRIES_LIMIT: u32 = 1 << 26;

/// Offset of the published entry count (`u64`, release-stored by the writer).
const COUNT_OFFSET: usize = 64;
/// Offset of the number of string bytes used (`u64`, informational).
const BYTES_USED_OFFSET: usize = 72;
const ENTRY_SIZE: usize = 8;
const LINE: usize = 64;

/// The static first cache line of the table. Written once before the file is published
/// (renamed into place), never changed afterwards.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct StringsHeader {
    /// [`STRINGS_MAGIC`].
    pub magic: u64,
    /// [`STRINGS_VERSION`].
    pub version: u32,
    /// Process id of the writer that created the table.
    pub writer_pid: u32,
    /// Epoch of the ring writer these ids belong to.
    pub epoch: u64,
    /// Creation time, ns since the Unix epoch.
    pub created_ns: i64,
    /// Capacity in entries, counting id 0.
    pub max_entries: u32,
    /// Longest string accepted, in bytes.
    pub max_len: u32,
    /// Capacity of the byte area.
    pub bytes_capacity: u64,
    /// Offset of the entry array from the start of the table (128).
    pub entries_offset: u64,
    /// Offset of the byte area from the start of the table.
    pub bytes_offset: u64,
}

const _: () = assert!(std::mem::size_of::<StringsHeader>() == 64);

/// Capacity of a string table, fixed when it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringTableConfig {
    /// Entries, counting id 0 (the empty string). At least 1.
    pub max_entries: u32,
    /// Bytes for all strings together (at most `u32::MAX`).
    pub max_bytes: u32,
    /// Longest single string in bytes. At least 1, at most `max_bytes`.
    pub max_len: u32,
}

impl Default for StringTableConfig {
    /// 256 Ki entries, 16 MiB of string bytes, strings up to 4 KiB: about 18 MiB of shared
    /// memory, far more distinct exchanges and conditions than a session produces.
    fn default() -> Self {
        StringTableConfig {
            max_entries: 256 * 1024,
            max_bytes: 16 << 20,
            max_len: 4096,
        }
    }
}

impl StringTableConfig {
    /// Bytes of shared memory a table with this configuration needs.
    pub fn region_len(&self) -> usize {
        self.bytes_offset() + self.max_bytes as usize
    }

    fn bytes_offset(&self) -> usize {
        let entries_end = STRINGS_HEADER_LEN + self.max_entries as usize * ENTRY_SIZE;
        entries_end.div_ceil(LINE) * LINE
    }

    fn check(&self, path: &Path) -> Result<(), IpcError> {
        let problem = if self.max_entries == 0 {
            Some("max_entries must be at least 1 (id 0 is the empty string)")
        } else if self.max_entries > MAX_ENTRIES_LIMIT {
            Some("max_entries must not exceed 2^26 (the writer's index would need gigabytes)")
        } else if self.max_len == 0 {
            Some("max_len must be at least 1")
        } else if self.max_len > self.max_bytes {
            Some("max_len must not exceed max_bytes")
        } else {
            None
        };
        match problem {
            Some(what) => Err(IpcError::InvalidConfig {
                path: path.to_path_buf(),
                what: what.to_owned(),
            }),
            None => Ok(()),
        }
    }
}

/// Why [`StringTableWriter::intern`] could not add a string. The table is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InternError {
    /// The string is longer than the table's `max_len`.
    #[error("string of {len} bytes exceeds the string table's limit of {max_len}")]
    TooLong {
        /// Length of the rejected string.
        len: usize,
        /// The table's limit.
        max_len: u32,
    },
    /// Every entry is in use.
    #[error("string table full: all {max_entries} entries are in use")]
    EntriesFull {
        /// The table's entry capacity.
        max_entries: u32,
    },
    /// The byte area cannot hold the string.
    #[error("string table full: {needed} more bytes needed, {free} of {capacity} free")]
    BytesFull {
        /// Length of the rejected string.
        needed: usize,
        /// Bytes still free.
        free: u64,
        /// The table's byte capacity.
        capacity: u64,
    },
}

/// A validated view of a table's layout inside its region.
#[derive(Clone, Copy, Debug)]
struct Layout {
    header: StringsHeader,
}

impl Layout {
    fn new(cfg: &StringTableConfig, epoch: u64, created_ns: i64) -> Layout {
        Layout {
            header: StringsHeader {
                magic: STRINGS_MAGIC,
                version: STRINGS_VERSION,
                writer_pid: std::process::id(),
                epoch,
                created_ns,
                max_entries: cfg.max_entries,
                max_len: cfg.max_len,
                bytes_capacity: u64::from(cfg.max_bytes),
                entries_offset: STRINGS_HEADER_LEN as u64,
                bytes_offset: cfg.bytes_offset() as u64,
            },
        }
    }

    /// Reads and checks the header of an existing table: every offset and capacity must
    /// fit in the region, so later lookups only need bounds checks against these values.
    fn read(region: &ShmRegion) -> Result<Layout, IpcError> {
        let path = region_path(region);
        if region.len() < STRINGS_HEADER_LEN {
            return Err(IpcError::TooSmall {
                path,
                len: region.len() as u64,
                needed: STRINGS_HEADER_LEN as u64,
            });
        }
        // SAFETY: the region is at least STRINGS_HEADER_LEN bytes long (checked above) and
        // its first 64 bytes are written only before the file is renamed into place, so no
        // process writes them while this shared slice lives.
        let line0 = unsafe { std::slice::from_raw_parts(region.as_ptr().cast_const(), LINE) };
        let header = StringsHeader::read_from_bytes(line0).map_err(|_| IpcError::TooSmall {
            path: path.clone(),
            len: region.len() as u64,
            needed: LINE as u64,
        })?;
        if header.magic != STRINGS_MAGIC {
            return Err(IpcError::BadMagic {
                path,
                found: header.magic,
            });
        }
        if header.version != STRINGS_VERSION {
            return Err(IpcError::VersionMismatch {
                path,
                found: header.version,
                expected: STRINGS_VERSION,
            });
        }
        let cfg = StringTableConfig {
            max_entries: header.max_entries,
            max_bytes: u32::try_from(header.bytes_capacity).unwrap_or(u32::MAX),
            max_len: header.max_len,
        };
        let consistent = u64::from(cfg.max_bytes) == header.bytes_capacity
            && cfg.check(&path).is_ok()
            && header.entries_offset == STRINGS_HEADER_LEN as u64
            && header.bytes_offset == cfg.bytes_offset() as u64;
        if !consistent {
            return Err(IpcError::Corrupt {
                path,
                what: format!("string table capacities or offsets are inconsistent: {header:?}"),
            });
        }
        if region.len() < cfg.region_len() {
            return Err(IpcError::TooSmall {
                path,
                len: region.len() as u64,
                needed: cfg.region_len() as u64,
            });
        }
        Ok(Layout { header })
    }

    fn max_entries(&self) -> u32 {
        self.header.max_entries
    }
}

fn region_path(region: &ShmRegion) -> std::path::PathBuf {
    region.path().map(Path::to_path_buf).unwrap_or_default()
}

fn now_ns() -> i64 {
    crate::shm::unix_time_ns() as i64
}

fn init_region(buf: &mut [u8], layout: &Layout) {
    // A fresh file or heap block is zeroed already; clearing again keeps `init` correct
    // for any caller and costs nothing next to prefaulting.
    buf.fill(0);
    buf[..LINE].copy_from_slice(layout.header.as_bytes());
    // Id 0 (the empty string, entry 0 = offset 0, length 0) exists from the start.
    buf[COUNT_OFFSET..COUNT_OFFSET + 8].copy_from_slice(&1u64.to_le_bytes());
}

/// Shared access to one table's region: the header fields and atomics every lookup uses.
#[derive(Debug)]
struct Table {
    region: Arc<ShmRegion>,
    layout: Layout,
}

impl Table {
    fn atomic_at(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= self.region.len());
        // SAFETY: every caller passes an 8-aligned offset inside the region (the count and
        // bytes-used fields, or an entry below max_entries, all checked against the region
        // length by `Layout`); the region base is 64-byte aligned, so the pointer is aligned
        // for AtomicU64 and valid while `self.region` lives. All processes access these
        // words only through atomics.
        unsafe {
            &*self
                .region
                .as_ptr()
                .wrapping_add(offset)
                .cast::<AtomicU64>()
        }
    }

    fn count(&self) -> &AtomicU64 {
        self.atomic_at(COUNT_OFFSET)
    }

    fn bytes_used(&self) -> &AtomicU64 {
        self.atomic_at(BYTES_USED_OFFSET)
    }

    fn entry(&self, id: u32) -> &AtomicU64 {
        assert!(id < self.layout.max_entries(), "entry {id} out of range");
        self.atomic_at(STRINGS_HEADER_LEN + id as usize * ENTRY_SIZE)
    }

    /// The bytes of a published entry, or `None` if the entry's bounds are not within the
    /// byte area (only a corrupt file can do that).
    fn bytes_of(&self, entry: u64) -> Option<&[u8]> {
        let (offset, len) = unpack_entry(entry);
        let end = offset.checked_add(len)?;
        if len > self.layout.header.max_len as usize
            || end as u64 > self.layout.header.bytes_capacity
        {
            return None;
        }
        // SAFETY: `offset..end` lies within the byte area (checked above against the
        // capacity, which `Layout` checked against the region length). The entry was
        // loaded below a count loaded with acquire, so the writer's copy of these bytes
        // happens-before this read, and the writer never writes a published string's
        // bytes again; the slice therefore never overlaps a concurrent write.
        Some(unsafe {
            std::slice::from_raw_parts(
                self.region
                    .as_ptr()
                    .cast_const()
                    .wrapping_add(self.layout.header.bytes_offset as usize + offset),
                len,
            )
        })
    }

    fn get(&self, id: u32) -> Option<&[u8]> {
        if id == 0 {
            return Some(&[]);
        }
        let count = self.count().load(Ordering::Acquire);
        if u64::from(id) >= count || id >= self.layout.max_entries() {
            return None;
        }
        self.bytes_of(self.entry(id).load(Ordering::Relaxed))
    }
}

fn pack_entry(offset: u32, len: u32) -> u64 {
    u64::from(offset) | (u64::from(len) << 32)
}

fn unpack_entry(e: u64) -> (usize, usize) {
    ((e & 0xffff_ffff) as usize, (e >> 32) as usize)
}

/// 1 to 8 bytes as one `u64`, without a copy: two overlapping 4-byte reads (4..=8 bytes)
/// or the first, middle and last byte (1..=3). Injective among strings of one length.
#[inline(always)]
fn small_word(s: &[u8]) -> u64 {
    let n = s.len();
    debug_assert!((1..=8).contains(&n));
    if n >= 4 {
        let a = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        let b = u32::from_le_bytes([s[n - 4], s[n - 3], s[n - 2], s[n - 1]]);
        u64::from(a) | (u64::from(b) << 32)
    } else {
        (u64::from(s[0]) << 16) | (u64::from(s[n / 2]) << 8) | u64::from(s[n - 1])
    }
}

/// Multiply to 128 bits and fold: the mixing step of wyhash.
#[inline(always)]
fn mum(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

/// A 64-bit hash of a byte string in the style of wyhash (one 128-bit multiply per 8
/// bytes, the tail read without a copy). Not DoS-resistant; the table only holds what IB
/// sends.
#[inline]
fn hash_bytes(s: &[u8]) -> u64 {
    const P0: u64 = 0xa076_1d64_78bd_642f;
    const P1: u64 = 0xe703_7ed1_a0b4_28db;
    const P2: u64 = 0x8ebc_6af0_9c88_c6e3;
    let n = s.len() as u64;
    let mut h = P0 ^ n;
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = mum(h ^ w, P1);
    }
    let rest = chunks.remainder();
    let t = if rest.is_empty() { 0 } else { small_word(rest) };
    mum(h ^ t ^ P2, P1 ^ n)
}

/// Byte-string equality with no library call for the short strings IB sends.
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    match a.len() {
        0 => true,
        1..=8 => small_word(a) == small_word(b),
        _ => a == b,
    }
}

/// The writer's empty lookup index for `cfg`: a power of two of at least twice
/// `max_entries` slots, allocated once (an error, not an abort, when memory is short).
fn new_index(cfg: &StringTableConfig, path: &Path) -> Result<Box<[u64]>, IpcError> {
    let slots = (cfg.max_entries as usize * 2).next_power_of_two();
    let mut index = Vec::new();
    index
        .try_reserve_exact(slots)
        .map_err(|e| IpcError::InvalidConfig {
            path: path.to_path_buf(),
            what: format!(
                "the writer's index for {} entries ({slots} slots) cannot be allocated: {e}",
                cfg.max_entries
            ),
        })?;
    index.resize(slots, 0);
    Ok(index.into_boxed_slice())
}

/// The single writer of a string table (the engine).
///
/// Interning a string already present allocates nothing and writes no shared memory.
#[derive(Debug)]
pub struct StringTableWriter {
    table: Table,
    /// Held for the writer's life: a second writer of the same path is refused.
    _lock: Option<WriterLock>,
    /// Open-addressing index: `hash_hi32 << 32 | id`, 0 = empty slot (id 0 is never
    /// stored). Power-of-two size at least twice `max_entries`, so probes always end.
    index: Box<[u64]>,
    mask: usize,
    /// Entries in use, counting id 0 (the writer's copy of the published count).
    count: u32,
    bytes_used: u64,
}

impl StringTableWriter {
    /// Creates the table file at `path` (built under a temporary name, then renamed into
    /// place, so a reader never maps a half-initialised table) for the ring writer of
    /// `epoch`. Holds the path's [`WriterLock`] while it lives: a second writer gets
    /// [`IpcError::WriterPresent`].
    pub fn create(
        path: &Path,
        epoch: u64,
        cfg: &StringTableConfig,
        opts: &ShmOptions,
    ) -> Result<StringTableWriter, IpcError> {
        cfg.check(path)?;
        let index = new_index(cfg, path)?;
        let lock = WriterLock::acquire(path, opts)?;
        let layout = Layout::new(cfg, epoch, now_ns());
        let region = ShmRegion::create(path, cfg.region_len(), opts, |buf| {
            init_region(buf, &layout)
        })?;
        Ok(Self::with_region(region, layout, index, Some(lock)))
    }

    /// Becomes the writer of the existing table at `path` again (same file, same epoch,
    /// same ids): for a mirror that restarts while readers keep the table mapped. Takes the
    /// path's [`WriterLock`] ([`IpcError::WriterPresent`] while another writer lives),
    /// checks the header as a reader does and rebuilds the private lookup index from the
    /// published entries, so interning a string already there returns its old id.
    pub fn adopt(path: &Path, opts: &ShmOptions) -> Result<StringTableWriter, IpcError> {
        let lock = WriterLock::acquire(path, opts)?;
        let region = ShmRegion::open(path, true)?;
        let layout = Layout::read(&region)?;
        let cfg = StringTableConfig {
            max_entries: layout.header.max_entries,
            max_bytes: layout.header.bytes_capacity as u32,
            max_len: layout.header.max_len,
        };
        let index = new_index(&cfg, path)?;
        let mut w = Self::with_region(region, layout, index, Some(lock));
        let count = w.table.count().load(Ordering::Acquire);
        let corrupt = |what: String| IpcError::Corrupt {
            path: path.to_path_buf(),
            what,
        };
        if count == 0 || count > u64::from(cfg.max_entries) {
            return Err(corrupt(format!("published count {count} out of range")));
        }
        let mut used = 0u64;
        for id in 1..count as u32 {
            let entry = w.table.entry(id).load(Ordering::Relaxed);
            let Some(bytes) = w.table.bytes_of(entry) else {
                return Err(corrupt(format!("entry {id} lies outside the byte area")));
            };
            used = used.max(unpack_entry(entry).0 as u64 + bytes.len() as u64);
            let tag = hash_bytes(bytes) >> 32;
            let mut slot = hash_bytes(bytes) as usize & w.mask;
            while w.index[slot] != 0 {
                slot = (slot + 1) & w.mask;
            }
            w.index[slot] = (tag << 32) | u64::from(id);
        }
        w.count = count as u32;
        w.bytes_used = used;
        w.table.bytes_used().store(used, Ordering::Relaxed);
        Ok(w)
    }

    /// A table in process memory, for tests and single-process use; readers come from
    /// [`StringTableWriter::reader`].
    pub fn heap(epoch: u64, cfg: &StringTableConfig) -> Result<StringTableWriter, IpcError> {
        let path = Path::new("(heap)");
        cfg.check(path)?;
        let index = new_index(cfg, path)?;
        let layout = Layout::new(cfg, epoch, now_ns());
        let region = ShmRegion::try_heap(cfg.region_len())?;
        // SAFETY: the heap region was just allocated with `region_len` bytes and is not
        // shared with anyone yet, so this exclusive slice is the only access to it.
        let buf = unsafe { std::slice::from_raw_parts_mut(region.as_ptr(), region.len()) };
        init_region(buf, &layout);
        Ok(Self::with_region(region, layout, index, None))
    }

    fn with_region(
        region: ShmRegion,
        layout: Layout,
        index: Box<[u64]>,
        lock: Option<WriterLock>,
    ) -> StringTableWriter {
        StringTableWriter {
            table: Table {
                region: Arc::new(region),
                layout,
            },
            _lock: lock,
            mask: index.len() - 1,
            index,
            count: 1,
            bytes_used: 0,
        }
    }

    /// The id of `s`, adding it to the table if it is new.
    ///
    /// The empty string is always id 0. A new string becomes visible to readers before
    /// this returns; a failed call changes nothing.
    pub fn intern(&mut self, s: &[u8]) -> Result<u32, InternError> {
        if s.is_empty() {
            return Ok(0);
        }
        let header = &self.table.layout.header;
        if s.len() > header.max_len as usize {
            return Err(InternError::TooLong {
                len: s.len(),
                max_len: header.max_len,
            });
        }
        let hash = hash_bytes(s);
        let tag = hash >> 32;
        let mut slot = hash as usize & self.mask;
        loop {
            let v = self.index[slot];
            if v == 0 {
                break;
            }
            if v >> 32 == tag {
                let id = v as u32;
                let entry = self.table.entry(id).load(Ordering::Relaxed);
                if self.table.bytes_of(entry).is_some_and(|b| same_bytes(b, s)) {
                    return Ok(id);
                }
            }
            slot = (slot + 1) & self.mask;
        }
        if self.count >= header.max_entries {
            return Err(InternError::EntriesFull {
                max_entries: header.max_entries,
            });
        }
        let free = header.bytes_capacity - self.bytes_used;
        if s.len() as u64 > free {
            return Err(InternError::BytesFull {
                needed: s.len(),
                free,
                capacity: header.bytes_capacity,
            });
        }
        let id = self.count;
        let offset = self.bytes_used as usize;
        let dst_offset = header.bytes_offset as usize + offset;
        // SAFETY: `dst_offset..dst_offset + s.len()` is inside the byte area (free space
        // checked above, area bounds checked by `Layout`). These bytes are beyond every
        // published entry, so no reader holds or forms a reference to them, and this
        // writer is the only one (`&mut self`); `s` cannot overlap shared memory that is
        // being written.
        unsafe {
            std::ptr::copy_nonoverlapping(
                s.as_ptr(),
                self.table.region.as_ptr().wrapping_add(dst_offset),
                s.len(),
            );
        }
        self.table
            .entry(id)
            .store(pack_entry(offset as u32, s.len() as u32), Ordering::Relaxed);
        self.bytes_used += s.len() as u64;
        self.table
            .bytes_used()
            .store(self.bytes_used, Ordering::Relaxed);
        self.count += 1;
        // Release: the bytes and the entry above are visible to any reader that sees the
        // new count.
        self.table
            .count()
            .store(u64::from(self.count), Ordering::Release);
        self.index[slot] = (tag << 32) | u64::from(id);
        Ok(id)
    }

    /// The bytes of `id`, if it has been interned.
    pub fn get(&self, id: u32) -> Option<&[u8]> {
        self.table.get(id)
    }

    /// Entries in use, counting id 0.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// True when only the empty string (id 0) is in the table.
    pub fn is_empty(&self) -> bool {
        self.count == 1
    }

    /// String bytes in use.
    pub fn bytes_used(&self) -> u64 {
        self.bytes_used
    }

    /// The static header (capacities, epoch, creator).
    pub fn header(&self) -> &StringsHeader {
        &self.table.layout.header
    }

    /// The ring-writer epoch this table belongs to.
    pub fn epoch(&self) -> u64 {
        self.table.layout.header.epoch
    }

    /// A reader of this same table (shares the mapping; for in-process consumers).
    pub fn reader(&self) -> StringTableReader {
        StringTableReader {
            table: Table {
                region: Arc::clone(&self.table.region),
                layout: self.table.layout,
            },
        }
    }
}

/// A reader of a string table. Cheap lookups, safe while the writer appends.
#[derive(Debug)]
pub struct StringTableReader {
    table: Table,
}

impl StringTableReader {
    /// Maps the table at `path` read-only and checks its header.
    pub fn open(path: &Path) -> Result<StringTableReader, IpcError> {
        let region = ShmRegion::open(path, false)?;
        let layout = Layout::read(&region)?;
        Ok(StringTableReader {
            table: Table {
                region: Arc::new(region),
                layout,
            },
        })
    }

    /// The bytes of `id`: `Some(b"")` for id 0, `None` for an id not (yet) published or
    /// beyond capacity. The bytes of a published id never change.
    pub fn get(&self, id: u32) -> Option<&[u8]> {
        self.table.get(id)
    }

    /// Copies the bytes of `id` into `out` (cleared first); false if `id` is unknown.
    pub fn copy_into(&self, id: u32, out: &mut Vec<u8>) -> bool {
        out.clear();
        match self.get(id) {
            Some(b) => {
                out.extend_from_slice(b);
                true
            }
            None => false,
        }
    }

    /// Published entries, counting id 0: every id below this resolves.
    pub fn len(&self) -> u32 {
        // The writer never publishes more than max_entries; clamp a corrupt value.
        let n = self.table.count().load(Ordering::Acquire);
        n.min(u64::from(self.table.layout.max_entries())) as u32
    }

    /// True when only the empty string (id 0) is published.
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }

    /// String bytes the writer has used so far.
    pub fn bytes_used(&self) -> u64 {
        self.table.bytes_used().load(Ordering::Relaxed)
    }

    /// The static header (capacities, epoch, creator).
    pub fn header(&self) -> &StringsHeader {
        &self.table.layout.header
    }

    /// The ring-writer epoch this table belongs to.
    pub fn epoch(&self) -> u64 {
        self.table.layout.header.epoch
    }

    /// True when the ids in this table belong to the ring whose writer epoch is `epoch`.
    pub fn belongs_to(&self, epoch: u64) -> bool {
        self.epoch() == epoch
    }

    /// True when the file at the table's path is no longer the one mapped (the writer
    /// restarted and published a new table): reopen to follow it.
    pub fn replaced(&self) -> bool {
        self.table.region.replaced()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn small(max_entries: u32, max_bytes: u32, max_len: u32) -> StringTableConfig {
        StringTableConfig {
            max_entries,
            max_bytes,
            max_len,
        }
    }

    fn tmpdir(tag: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "ipc-strings-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn adopt_keeps_ids_and_continues_after_them() {
        let d = tmpdir("adopt");
        let path = d.join(STRINGS_FILE_NAME);
        let cfg = small(16, 256, 32);
        let mut w = StringTableWriter::create(&path, 42, &cfg, &ShmOptions::default()).unwrap();
        assert_eq!(w.intern(b"ISLAND").unwrap(), 1);
        assert_eq!(w.intern(b"ARCA").unwrap(), 2);
        let r = StringTableReader::open(&path).unwrap();
        assert!(matches!(
            StringTableWriter::adopt(&path, &ShmOptions::default()),
            Err(IpcError::WriterPresent { .. })
        ));
        drop(w);
        let mut w2 = StringTableWriter::adopt(&path, &ShmOptions::default()).unwrap();
        assert_eq!(w2.epoch(), 42);
        assert_eq!(
            w2.intern(b"ARCA").unwrap(),
            2,
            "a known string keeps its id"
        );
        assert_eq!(w2.intern(b"ISLAND").unwrap(), 1);
        assert_eq!(
            w2.intern(b"NYSE").unwrap(),
            3,
            "new ids follow the old ones"
        );
        assert_eq!(w2.bytes_used(), 14);
        // The reader of the same file sees the new string: nothing was replaced.
        assert_eq!(r.get(3), Some(&b"NYSE"[..]));
        assert!(!r.replaced());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn header_is_one_line_and_layout_is_pinned() {
        assert_eq!(std::mem::size_of::<StringsHeader>(), 64);
        assert_eq!(std::mem::offset_of!(StringsHeader, epoch), 16);
        assert_eq!(std::mem::offset_of!(StringsHeader, max_entries), 32);
        assert_eq!(std::mem::offset_of!(StringsHeader, bytes_capacity), 40);
        assert_eq!(std::mem::offset_of!(StringsHeader, bytes_offset), 56);
        assert_eq!(STRINGS_MAGIC.to_le_bytes(), *b"IBSSTRS1");
        assert_eq!(
            STRINGS_MAGIC, 0x3153_5254_5353_4249,
            "as documented in the README"
        );
        let cfg = small(10, 100, 50);
        // 128 header + 80 entry bytes = 208, rounded up to 256; then 100 string bytes.
        assert_eq!(cfg.bytes_offset(), 256);
        assert_eq!(cfg.region_len(), 356);
    }

    #[test]
    fn interns_and_resolves() {
        let mut w = StringTableWriter::heap(7, &small(16, 256, 32)).unwrap();
        let r = w.reader();
        assert_eq!(w.intern(b"").unwrap(), 0);
        assert_eq!(r.get(0), Some(&b""[..]));
        assert_eq!(r.len(), 1);
        assert!(r.is_empty() && w.is_empty());
        let a = w.intern(b"ISLAND").unwrap();
        let b = w.intern(b"ARCA").unwrap();
        assert_eq!((a, b), (1, 2));
        assert_eq!(w.intern(b"ISLAND").unwrap(), a);
        assert_eq!(r.get(a), Some(&b"ISLAND"[..]));
        assert_eq!(r.get(b), Some(&b"ARCA"[..]));
        assert_eq!(w.get(b), Some(&b"ARCA"[..]));
        assert_eq!(r.get(3), None, "not yet published");
        assert_eq!(r.get(u32::MAX), None);
        assert_eq!(r.len(), 3);
        assert_eq!(r.bytes_used(), 10);
        assert_eq!(w.bytes_used(), 10);
        let mut out = b"junk".to_vec();
        assert!(r.copy_into(a, &mut out));
        assert_eq!(out, b"ISLAND");
        assert!(!r.copy_into(9, &mut out));
        assert!(out.is_empty());
        assert_eq!(r.epoch(), 7);
        assert!(r.belongs_to(7) && !r.belongs_to(8));
        assert_eq!(r.header().writer_pid, std::process::id());
        assert!(!r.replaced());
    }

    #[test]
    fn limits_are_typed_errors_and_change_nothing() {
        let mut w = StringTableWriter::heap(1, &small(3, 8, 5)).unwrap();
        assert_eq!(
            w.intern(b"abcdef"),
            Err(InternError::TooLong { len: 6, max_len: 5 })
        );
        assert_eq!(w.intern(b"abcde").unwrap(), 1);
        assert_eq!(
            w.intern(b"wxyz"),
            Err(InternError::BytesFull {
                needed: 4,
                free: 3,
                capacity: 8
            })
        );
        assert_eq!(w.intern(b"xyz").unwrap(), 2);
        assert_eq!(
            w.intern(b"q"),
            Err(InternError::EntriesFull { max_entries: 3 })
        );
        // Known strings still resolve in a full table.
        assert_eq!(w.intern(b"abcde").unwrap(), 1);
        assert_eq!(w.intern(b"xyz").unwrap(), 2);
        assert_eq!(w.intern(b"").unwrap(), 0);
        assert_eq!(w.len(), 3);
        assert_eq!(w.bytes_used(), 8);
        let r = w.reader();
        assert_eq!(r.get(1), Some(&b"abcde"[..]));
        assert_eq!(r.get(2), Some(&b"xyz"[..]));
        assert!(
            InternError::EntriesFull { max_entries: 3 }
                .to_string()
                .contains("full")
        );
    }

    #[test]
    fn invalid_configs_are_refused() {
        let huge = small(MAX_ENTRIES_LIMIT + 1, u32::MAX, 4096);
        for cfg in [small(0, 10, 5), small(10, 10, 0), small(10, 4, 5), huge] {
            let e = StringTableWriter::heap(1, &cfg).unwrap_err();
            assert!(matches!(e, IpcError::InvalidConfig { .. }), "{cfg:?}: {e}");
        }
    }

    #[test]
    fn many_strings_with_long_probe_chains() {
        // A full index of 4096 slots for 2000 strings: collisions and wrap-around happen.
        let mut w = StringTableWriter::heap(1, &small(2048, 1 << 20, 64)).unwrap();
        let ids: Vec<u32> = (0..2047)
            .map(|i| w.intern(format!("s{i}").as_bytes()).unwrap())
            .collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(*id as usize, i + 1);
            assert_eq!(w.intern(format!("s{i}").as_bytes()).unwrap(), *id);
            assert_eq!(w.get(*id), Some(format!("s{i}").as_bytes()));
        }
        assert_eq!(
            w.intern(b"one more"),
            Err(InternError::EntriesFull { max_entries: 2048 })
        );
    }

    #[test]
    fn readers_in_other_threads_see_only_complete_strings() {
        let mut w = StringTableWriter::heap(1, &small(20_001, 1 << 20, 64)).unwrap();
        let readers: Vec<_> = (0..2).map(|_| w.reader()).collect();
        let content = |i: u32| format!("{i}:{}", "x".repeat(i as usize % 40));
        std::thread::scope(|s| {
            for r in &readers {
                s.spawn(move || {
                    let mut checked = 0u64;
                    loop {
                        let n = r.len();
                        for id in 1..n {
                            assert_eq!(r.get(id), Some(content(id).as_bytes()));
                            checked += 1;
                        }
                        if n == 20_001 {
                            break;
                        }
                    }
                    assert!(checked >= 20_000);
                });
            }
            for i in 1..=20_000 {
                assert_eq!(w.intern(content(i).as_bytes()).unwrap(), i);
            }
        });
    }

    #[test]
    fn file_round_trip_and_replacement() {
        let dir = tmpdir("file");
        let path = dir.join("strings");
        let opts = ShmOptions::default();
        let mut w = StringTableWriter::create(&path, 42, &small(100, 1000, 100), &opts).unwrap();
        let id = w.intern(b"NASDAQ").unwrap();
        let r = StringTableReader::open(&path).unwrap();
        assert_eq!(r.epoch(), 42);
        assert_eq!(r.get(id), Some(&b"NASDAQ"[..]));
        assert_eq!(w.intern(b"NYSE").unwrap(), 2);
        assert_eq!(
            r.get(2),
            Some(&b"NYSE"[..]),
            "appends after open are visible"
        );
        assert!(!r.replaced());
        match StringTableWriter::create(&path, 43, &small(100, 1000, 100), &opts) {
            Err(IpcError::WriterPresent { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("a second writer was not refused: {other:?}"),
        }
        assert!(!r.replaced(), "a refused writer leaves the file alone");
        drop(w);
        let _w2 = StringTableWriter::create(&path, 43, &small(100, 1000, 100), &opts).unwrap();
        assert!(r.replaced());
        assert_eq!(r.get(2), Some(&b"NYSE"[..]), "the old mapping stays valid");
        let r2 = StringTableReader::open(&path).unwrap();
        assert_eq!((r2.epoch(), r2.len()), (43, 1));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_files_are_typed_errors() {
        let dir = tmpdir("bad");
        let opts = ShmOptions::default();
        let good = Layout::new(&small(4, 64, 16), 1, 0);
        type Init = Box<dyn Fn(&mut [u8])>;
        let cases: Vec<(&str, Init, usize)> = vec![
            (
                "magic",
                Box::new(|b: &mut [u8]| b[..8].copy_from_slice(b"NOTATABL")),
                4096,
            ),
            (
                "version",
                Box::new(move |b: &mut [u8]| {
                    init_region(b, &good);
                    b[8] = 9;
                }),
                4096,
            ),
            (
                "offsets",
                Box::new(move |b: &mut [u8]| {
                    init_region(b, &good);
                    b[56] = 1;
                }),
                4096,
            ),
            (
                "capacity",
                Box::new(move |b: &mut [u8]| {
                    init_region(b, &good);
                    b[32..36].copy_from_slice(&1000u32.to_le_bytes());
                    let bo = small(1000, 64, 16).bytes_offset() as u64;
                    b[56..64].copy_from_slice(&bo.to_le_bytes());
                }),
                4096,
            ),
            ("short", Box::new(|_: &mut [u8]| {}), 100),
        ];
        for (name, init, len) in cases {
            let path = dir.join(name);
            let _region = ShmRegion::create(&path, len, &opts, |b| init(b)).unwrap();
            let e = StringTableReader::open(&path).unwrap_err();
            let ok = match name {
                "magic" => matches!(e, IpcError::BadMagic { .. }),
                "version" => matches!(e, IpcError::VersionMismatch { found: 9, .. }),
                "offsets" => matches!(e, IpcError::Corrupt { .. }),
                "capacity" | "short" => matches!(e, IpcError::TooSmall { .. }),
                _ => false,
            };
            assert!(ok, "{name}: {e}");
        }
        let e = StringTableReader::open(&dir.join("missing")).unwrap_err();
        assert!(e.is_missing());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn corrupt_entries_resolve_to_none() {
        let w = StringTableWriter::heap(1, &small(4, 64, 16)).unwrap();
        let r = w.reader();
        // Publish an entry pointing past the byte area, as a corrupt writer could.
        r.table
            .entry(1)
            .store(pack_entry(60, 10), Ordering::Relaxed);
        r.table.count().store(2, Ordering::Release);
        assert_eq!(r.get(1), None);
        r.table.entry(1).store(pack_entry(0, 17), Ordering::Relaxed);
        assert_eq!(r.get(1), None, "longer than max_len");
        r.table.count().store(u64::MAX, Ordering::Release);
        assert_eq!(r.len(), 4, "count clamped to capacity");
        assert_eq!(r.get(4), None);
    }

    #[test]
    fn handles_are_thread_safe() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<StringTableReader>();
        send_sync::<StringTableWriter>();
    }

    #[test]
    fn small_words_tell_strings_of_one_length_apart() {
        let alphabet = [0u8, 1, b'a', 0xff];
        for n in 1..=8usize {
            let mut seen = std::collections::HashSet::new();
            // Every string of length n over the alphabet (4^8 = 65 536 at most).
            for code in 0..4usize.pow(n as u32) {
                let s: Vec<u8> = (0..n).map(|i| alphabet[(code >> (2 * i)) & 3]).collect();
                assert!(
                    seen.insert(small_word(&s)),
                    "collision at length {n}: {s:?}"
                );
                assert!(same_bytes(&s, &s.clone()));
            }
        }
        assert!(!same_bytes(b"abc", b"abd"));
        assert!(!same_bytes(b"abc", b"abcd"));
        assert!(!same_bytes(b"0123456789", b"0123456788"));
        assert!(same_bytes(b"", b""));
    }

    #[test]
    fn probe_chains_stay_short_for_similar_strings() {
        // Linear probing as the writer does it, 100k look-alike names in 2^18 slots (load
        // 0.38): a hash with weak low bits would build long chains here.
        let mask = (1usize << 18) - 1;
        let mut used = vec![false; mask + 1];
        let (mut total, mut worst) = (0usize, 0usize);
        for i in 0..100_000 {
            let mut slot = hash_bytes(format!("EXCH{i}").as_bytes()) as usize & mask;
            let mut probes = 1;
            while used[slot] {
                slot = (slot + 1) & mask;
                probes += 1;
            }
            used[slot] = true;
            total += probes;
            worst = worst.max(probes);
        }
        let mean = total as f64 / 100_000.0;
        assert!(mean < 1.6 && worst < 40, "mean {mean:.2}, worst {worst}");
    }

    #[test]
    fn hash_spreads_similar_strings() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000u32 {
            assert!(seen.insert(hash_bytes(format!("c{i}").as_bytes())));
        }
        assert_ne!(hash_bytes(b"a"), hash_bytes(b"a\0"));
    }
}
