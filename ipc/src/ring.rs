//! The tick ring: one writer, any number of readers, overwrite, the writer never waits.
//!
//! # File layout (all integers little-endian)
//!
//! Page 0 is the header, one cache line per group so that the writer's hot stores never share
//! a line with what readers poll for other reasons:
//!
//! | offset | size | field          | meaning                                                       |
//! |-------:|-----:|----------------|---------------------------------------------------------------|
//! | 0      | 8    | `magic`        | [`RING_MAGIC`] (`"IBSRING\0"`)                                 |
//! | 8      | 4    | `version`      | [`RING_LAYOUT_VERSION`]                                        |
//! | 12     | 4    | `record_size`  | 64 ([`crate::RECORD_SIZE`])                                    |
//! | 16     | 8    | `capacity`     | number of slots, a power of two                               |
//! | 24     | 8    | `slots_offset` | byte offset of slot 0: 4096                                   |
//! | 32     | 8    | `epoch`        | random non-zero u64, new for every writer start               |
//! | 40     | 8    | `created_ns`   | creation time, ns since the Unix epoch                        |
//! | 48     | 4    | `pid`          | the writer's process id                                       |
//! | 52     | 4    | reserved       | 0                                                             |
//! | 56     | 8    | `file_len`     | `slots_offset + capacity * record_size`                        |
//! | 64     | 8    | `head`         | last published sequence, 0 = none yet (release, once per batch) |
//! | 128    | 8    | `heartbeat_ns` | writer's last heartbeat, ns since the Unix epoch              |
//! | 136    | 8    | `state`        | [`WRITER_RUNNING`] or [`WRITER_STOPPED`] (clean exit)          |
//!
//! Slot `i` is the 64 bytes at `slots_offset + i * 64` and holds the record with sequence `s`
//! where `i = (s - 1) & (capacity - 1)`. A slot is byte for byte a [`Record`]: its first word
//! `seq` doubles as the slot's sequence lock.
//!
//! # Sequence lock (per slot)
//!
//! Sequences are 1-based and strictly increasing per epoch. To publish `s` the writer stores
//! `s | WRITING_BIT` into the slot's `seq` word (relaxed), a release fence, the other seven
//! words (relaxed atomics), then `s` (release); after a batch it stores `head` (release).
//! A reader expecting `e` loads the slot's `seq` (acquire):
//! - `== e`: copy the seven words, acquire fence, reload `seq`; still `e` → deliver, otherwise
//!   the writer came round during the copy: lapped;
//! - `e | WRITING_BIT`, or a smaller sequence: nothing new yet;
//! - larger (with or without the bit): lapped.
//!
//! # Lap policy
//!
//! A lapped reader reads `head`, takes the newest sequence it knows of
//! (`newest = max(head, seen in the slot)`), and resumes according to its [`LapPolicy`]:
//! [`LapPolicy::Oldest`] (default) resumes at `newest + 1 - capacity + margin`, the oldest record
//! that is still in the ring plus a margin (default capacity / 8) so that it is not lapped
//! again at once; [`LapPolicy::Newest`] resumes at `newest`. Either way the reader is told
//! exactly which sequences it will never see ([`ReadOutcome::Lost`]); every other sequence is
//! delivered once, in order.
//!
//! # Writers, epochs, liveness
//!
//! A writer holds a [`WriterLock`] for its whole life; a second one gets
//! [`IpcError::WriterPresent`]. A (re)started writer always creates a new file with a new random
//! epoch and renames it over the old one; readers of the old file keep reading what is left of
//! it and learn about the swap from [`RingReader::writer_status`] (one `stat`, call it when
//! idle), then [`RingReader::reopen`]. A writer that died shows as a gone pid or a heartbeat
//! older than the caller's threshold.
//! [`crate::follow::RingFollower`] does all of this for a reader, with one meaning of a
//! restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use crate::error::IpcError;
use crate::readers::{READERS_FILE_NAME, ReaderRegistry, ReaderSlot, Registration};
use crate::record::{RECORD_SIZE, Record};
use crate::shm::{
    PAGE_SIZE, ShmOptions, ShmRegion, WriterLock, process_alive, random_u64, unix_time_ns,
};

/// The ring file's first 8 bytes: `"IBSRING\0"` read as a little-endian u64.
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"IBSRING\0");
/// The layout this build writes and reads.
pub const RING_LAYOUT_VERSION: u32 = 1;
/// Bit 63 of a slot's `seq` word: the writer is writing that slot.
pub const WRITING_BIT: u64 = 1 << 63;
/// Number of 8-byte words in a slot.
pub const SLOT_WORDS: usize = RECORD_SIZE / 8;
/// `state` value while the writer runs.
pub const WRITER_RUNNING: u64 = 1;
/// `state` value after the writer closed the ring cleanly.
pub const WRITER_STOPPED: u64 = 2;
/// The file name of the tick ring inside an environment's directory.
pub const RING_FILE_NAME: &str = "ticks.ring";
/// Smallest capacity accepted.
pub const MIN_CAPACITY: u64 = 2;
/// Largest capacity accepted (2^32 slots = 256 GiB).
pub const MAX_CAPACITY: u64 = 1 << 32;

/// Byte offsets of the header fields (see the module documentation).
pub mod offsets {
    /// `magic`, u64.
    pub const MAGIC: usize = 0;
    /// `version`, u32.
    pub const VERSION: usize = 8;
    /// `record_size`, u32.
    pub const RECORD_SIZE: usize = 12;
    /// `capacity`, u64.
    pub const CAPACITY: usize = 16;
    /// `slots_offset`, u64.
    pub const SLOTS_OFFSET: usize = 24;
    /// `epoch`, u64.
    pub const EPOCH: usize = 32;
    /// `created_ns`, u64.
    pub const CREATED_NS: usize = 40;
    /// `pid`, u32.
    pub const PID: usize = 48;
    /// `file_len`, u64.
    pub const FILE_LEN: usize = 56;
    /// `head`, u64: its own cache line.
    pub const HEAD: usize = 64;
    /// `heartbeat_ns`, u64: shares a line with `state` only.
    pub const HEARTBEAT_NS: usize = 128;
    /// `state`, u64.
    pub const STATE: usize = 136;
    /// Slot 0.
    pub const SLOTS: usize = super::PAGE_SIZE;
}

/// The file size of a ring with `capacity` slots.
pub fn ring_file_len(capacity: u64) -> Option<usize> {
    usize::try_from(capacity)
        .ok()?
        .checked_mul(RECORD_SIZE)?
        .checked_add(offsets::SLOTS)
}

// ---------------------------------------------------------------------------------------------
// The protocol, generic over the atomic word so that the loom model checks this very code.
// ---------------------------------------------------------------------------------------------

/// An atomic 64-bit word as the ring protocol needs it. Implemented for
/// [`std::sync::atomic::AtomicU64`]; a model checker implements it for its own atomics.
pub trait SlotWord {
    /// Atomic load.
    fn load(&self, order: Ordering) -> u64;
    /// Atomic store.
    fn store(&self, value: u64, order: Ordering);
    /// A memory fence of the same world as the word.
    fn fence(order: Ordering);
}

impl SlotWord for AtomicU64 {
    #[inline(always)]
    fn load(&self, order: Ordering) -> u64 {
        AtomicU64::load(self, order)
    }
    #[inline(always)]
    fn store(&self, value: u64, order: Ordering) {
        AtomicU64::store(self, value, order);
    }
    #[inline(always)]
    fn fence(order: Ordering) {
        fence(order);
    }
}

/// A record as the eight words it is stored as.
#[inline(always)]
pub fn record_to_words(rec: &Record) -> [u64; SLOT_WORDS] {
    zerocopy::transmute!(*rec)
}

/// The record stored as `words`.
#[inline(always)]
pub fn words_to_record(words: [u64; SLOT_WORDS]) -> Record {
    zerocopy::transmute!(words)
}

/// Writes `words` into `slot` as sequence `seq` (the slot's `seq` word gets `seq`, whatever
/// `words[0]` holds). Does not touch `head`.
#[inline(always)]
pub fn write_slot<W: SlotWord>(slot: &[W; SLOT_WORDS], seq: u64, words: &[u64; SLOT_WORDS]) {
    slot[0].store(seq | WRITING_BIT, Ordering::Relaxed);
    // Orders the WRITING mark before the payload stores: a reader that sees any new payload
    // word and then fences (acquire) is guaranteed to see the mark (or later) on its re-check.
    W::fence(Ordering::Release);
    for i in 1..SLOT_WORDS {
        slot[i].store(words[i], Ordering::Relaxed);
    }
    slot[0].store(seq, Ordering::Release);
}

/// What a reader found in one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotRead {
    /// The expected record, copied consistently (word 0 is its sequence).
    Ready([u64; SLOT_WORDS]),
    /// The slot still holds an older record (or nothing): the expected one is not published.
    NotYet,
    /// The writer is writing the expected record right now.
    InProgress,
    /// The slot holds (or is being overwritten with) this later sequence: the expected record
    /// was overwritten.
    Overwritten {
        /// The sequence seen in the slot, without [`WRITING_BIT`].
        found: u64,
    },
}

/// Reads the record with sequence `expected` from `slot` if it is there, never a torn one.
#[inline(always)]
pub fn read_slot<W: SlotWord>(slot: &[W; SLOT_WORDS], expected: u64) -> SlotRead {
    let s1 = slot[0].load(Ordering::Acquire);
    if s1 == expected {
        let mut words = [0u64; SLOT_WORDS];
        words[0] = expected;
        for i in 1..SLOT_WORDS {
            words[i] = slot[i].load(Ordering::Relaxed);
        }
        // Pairs with the writer's release fence: if any word above came from a later write,
        // the reload below sees that write's WRITING mark or something later.
        W::fence(Ordering::Acquire);
        let s2 = slot[0].load(Ordering::Relaxed);
        if s2 == expected {
            SlotRead::Ready(words)
        } else {
            SlotRead::Overwritten {
                found: s2 & !WRITING_BIT,
            }
        }
    } else {
        let s = s1 & !WRITING_BIT;
        if s < expected {
            SlotRead::NotYet
        } else if s == expected {
            SlotRead::InProgress
        } else {
            SlotRead::Overwritten { found: s }
        }
    }
}

/// Publishes `recs` as sequences `*next, *next + 1, ...` into `slots` (the whole slot array,
/// a power-of-two length) and then stores the last one into `head` (release) once.
/// Returns the last sequence published (`*next - 1` unchanged for an empty batch).
#[inline(always)]
pub fn publish_into<W: SlotWord>(
    slots: &[[W; SLOT_WORDS]],
    head: &W,
    next: &mut u64,
    recs: &[Record],
) -> u64 {
    let mask = slots.len() as u64 - 1;
    let mut seq = *next;
    for rec in recs {
        write_slot(
            &slots[((seq - 1) & mask) as usize],
            seq,
            &record_to_words(rec),
        );
        seq += 1;
    }
    *next = seq;
    if !recs.is_empty() {
        head.store(seq - 1, Ordering::Release);
    }
    seq - 1
}

/// Where a lapped reader resumes (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LapPolicy {
    /// Resume at the oldest record still in the ring plus `margin` records (clamped to
    /// `capacity - 1`): loses the least while leaving room to catch up.
    Oldest {
        /// Records skipped beyond the strict minimum.
        margin: u64,
    },
    /// Resume at the newest record: for readers that only care about the present.
    Newest,
}

impl LapPolicy {
    /// The default for a ring of `capacity` slots: [`LapPolicy::Oldest`] with a margin of
    /// `capacity / 8`.
    pub fn default_for(capacity: u64) -> LapPolicy {
        LapPolicy::Oldest {
            margin: capacity / 8,
        }
    }
}

/// The result of one read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The next record, in sequence order.
    Record(Record),
    /// Nothing new yet.
    Empty,
    /// The reader was lapped: sequences `first_seq..=last_seq` (`count` of them) were
    /// overwritten or skipped by the lap policy and will never be delivered. The next read
    /// continues at `last_seq + 1`.
    Lost {
        /// First sequence lost (the one the reader expected).
        first_seq: u64,
        /// Last sequence lost.
        last_seq: u64,
        /// `last_seq - first_seq + 1`.
        count: u64,
    },
}

/// A reader's position and lap policy, independent of where the slots live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    next: u64,
    capacity: u64,
    policy: LapPolicy,
}

impl Cursor {
    /// A cursor that will deliver sequence `next` first, on a ring of `capacity` slots.
    pub fn new(next: u64, capacity: u64, policy: LapPolicy) -> Cursor {
        Cursor {
            next: next.max(1),
            capacity,
            policy,
        }
    }

    /// The sequence the next successful read delivers.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Tries to read the next record from `slots` (length = capacity).
    #[inline(always)]
    pub fn step<W: SlotWord>(&mut self, slots: &[[W; SLOT_WORDS]], head: &W) -> ReadOutcome {
        let idx = ((self.next - 1) & (self.capacity - 1)) as usize;
        match read_slot(&slots[idx], self.next) {
            SlotRead::Ready(words) => {
                self.next += 1;
                ReadOutcome::Record(words_to_record(words))
            }
            SlotRead::NotYet | SlotRead::InProgress => ReadOutcome::Empty,
            SlotRead::Overwritten { found } => self.resync(found, head.load(Ordering::Acquire)),
        }
    }

    /// Moves past a lap. `found` is the sequence seen in the expected slot, `head` the
    /// writer's last published one.
    #[cold]
    fn resync(&mut self, found: u64, head: u64) -> ReadOutcome {
        let first = self.next;
        // `found` may be ahead of `head` (a batch in flight) or in progress; either way the
        // writer has reached it, so every slot older than `found + 1 - capacity` is gone.
        let newest = head.max(found);
        let oldest_valid = (newest + 1).saturating_sub(self.capacity).max(1);
        let target = match self.policy {
            LapPolicy::Oldest { margin } => oldest_valid + margin.min(self.capacity - 1),
            LapPolicy::Newest => newest,
        };
        // The expected record is gone for sure, so at least it is skipped; never jump past
        // the newest known record.
        let target = target.min(newest).max(first + 1);
        self.next = target;
        ReadOutcome::Lost {
            first_seq: first,
            last_seq: target - 1,
            count: target - first,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The ring over a shared-memory region.
// ---------------------------------------------------------------------------------------------

/// The header fields fixed at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingInfo {
    /// Layout version.
    pub version: u32,
    /// Number of slots.
    pub capacity: u64,
    /// The writer's random epoch.
    pub epoch: u64,
    /// Creation time, ns since the Unix epoch.
    pub created_ns: u64,
    /// The writer's pid.
    pub pid: u32,
}

/// A mapped ring: the region plus typed views of its header and slots.
#[derive(Debug, Clone)]
struct RingMem {
    region: Arc<ShmRegion>,
    info: RingInfo,
}

impl RingMem {
    /// Validates the header of `region` (whose file is `path`) and wraps it.
    fn validate(region: ShmRegion, path: &Path) -> Result<RingMem, IpcError> {
        let len = region.len();
        let p = || path.to_path_buf();
        if len < 8 {
            return Err(IpcError::TooSmall {
                path: p(),
                len: len as u64,
                needed: PAGE_SIZE as u64,
            });
        }
        let base = region.as_ptr();
        let magic = load_u64(base, offsets::MAGIC);
        if magic != RING_MAGIC {
            return Err(IpcError::BadMagic {
                path: p(),
                found: magic,
            });
        }
        if len < offsets::SLOTS {
            return Err(IpcError::TooSmall {
                path: p(),
                len: len as u64,
                needed: offsets::SLOTS as u64,
            });
        }
        let version = load_u32(base, offsets::VERSION);
        if version != RING_LAYOUT_VERSION {
            return Err(IpcError::VersionMismatch {
                path: p(),
                found: version,
                expected: RING_LAYOUT_VERSION,
            });
        }
        let record_size = load_u32(base, offsets::RECORD_SIZE);
        if record_size as usize != RECORD_SIZE {
            return Err(IpcError::RecordSizeMismatch {
                path: p(),
                found: record_size,
                expected: RECORD_SIZE as u32,
            });
        }
        let capacity = load_u64(base, offsets::CAPACITY);
        if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
            return Err(IpcError::Corrupt {
                path: p(),
                what: format!("capacity {capacity} is not a power of two in 2..=2^32"),
            });
        }
        let slots_offset = load_u64(base, offsets::SLOTS_OFFSET);
        if slots_offset != offsets::SLOTS as u64 {
            return Err(IpcError::Corrupt {
                path: p(),
                what: format!("slots offset {slots_offset}, expected {}", offsets::SLOTS),
            });
        }
        let needed = ring_file_len(capacity).ok_or_else(|| IpcError::Corrupt {
            path: p(),
            what: format!("capacity {capacity} does not fit in memory"),
        })?;
        if len < needed {
            return Err(IpcError::TooSmall {
                path: p(),
                len: len as u64,
                needed: needed as u64,
            });
        }
        let info = RingInfo {
            version,
            capacity,
            epoch: load_u64(base, offsets::EPOCH),
            created_ns: load_u64(base, offsets::CREATED_NS),
            pid: load_u32(base, offsets::PID),
        };
        Ok(RingMem {
            region: Arc::new(region),
            info,
        })
    }

    #[inline(always)]
    fn word(&self, offset: usize) -> &AtomicU64 {
        atomic_u64_at(&self.region, offset)
    }

    #[inline(always)]
    fn head(&self) -> &AtomicU64 {
        self.word(offsets::HEAD)
    }

    #[inline(always)]
    fn slots(&self) -> &[[AtomicU64; SLOT_WORDS]] {
        let ptr = self
            .region
            .as_ptr()
            .wrapping_add(offsets::SLOTS)
            .cast::<[AtomicU64; SLOT_WORDS]>();
        // SAFETY: `validate` checked that the region holds `capacity` slots of 64 bytes from
        // the page-aligned offset 4096 (so 8-byte alignment holds); the region lives as long
        // as `self`. Every process touches these bytes only through atomic operations, which
        // is what `AtomicU64` requires; atomic loads of read-only mapped memory are allowed.
        unsafe { std::slice::from_raw_parts(ptr, self.info.capacity as usize) }
    }
}

/// Options that give a file beside the ring the ring file's own mode and (shared) group.
fn ring_file_options(ring: &Path) -> ShmOptions {
    use std::os::unix::fs::MetadataExt;
    let mut opts = ShmOptions::default();
    if let Ok(m) = std::fs::metadata(ring) {
        opts.mode = m.mode() & 0o777;
        if m.mode() & 0o060 != 0 {
            opts.group = Some(m.gid());
        }
    }
    opts
}

fn atomic_u64_at(region: &ShmRegion, offset: usize) -> &AtomicU64 {
    // Offsets are header constants and `validate` checked the region holds the header.
    debug_assert!(
        offset + 8 <= region.len() && offset.is_multiple_of(8),
        "header offset out of range"
    );
    let p = region.as_ptr().wrapping_add(offset).cast::<AtomicU64>();
    // SAFETY: in bounds and 8-aligned: callers pass header constants (multiples of 8 below
    // 4096) and every ring region was validated to hold the 4096-byte header; the region is
    // page aligned. The bytes
    // are only ever accessed atomically by every process; lives as long as `region`.
    unsafe { &*p }
}

fn atomic_u32_at(region: &ShmRegion, offset: usize) -> &AtomicU32 {
    debug_assert!(
        offset + 4 <= offsets::SLOTS && offset.is_multiple_of(4),
        "header offset out of range"
    );
    let p = region.as_ptr().wrapping_add(offset).cast::<AtomicU32>();
    // SAFETY: as for `atomic_u64_at`: a 4-aligned header constant inside the validated
    // 4096-byte header of a page-aligned region, only ever accessed atomically; lives as
    // long as `region`.
    unsafe { &*p }
}

fn load_u64(base: *mut u8, offset: usize) -> u64 {
    let p = base.wrapping_add(offset).cast::<AtomicU64>();
    // SAFETY: callers pass offsets inside the checked length of a page-aligned region;
    // `offset` is a multiple of 8.
    unsafe { &*p }.load(Ordering::Acquire)
}

fn load_u32(base: *mut u8, offset: usize) -> u32 {
    let p = base.wrapping_add(offset).cast::<AtomicU32>();
    // SAFETY: as for `load_u64`, with 4-byte alignment.
    unsafe { &*p }.load(Ordering::Acquire)
}

fn write_header(bytes: &mut [u8], capacity: u64, epoch: u64, now: u64, len: usize) {
    let mut put = |off: usize, v: &[u8]| bytes[off..off + v.len()].copy_from_slice(v);
    put(offsets::MAGIC, &RING_MAGIC.to_le_bytes());
    put(offsets::VERSION, &RING_LAYOUT_VERSION.to_le_bytes());
    put(offsets::RECORD_SIZE, &(RECORD_SIZE as u32).to_le_bytes());
    put(offsets::CAPACITY, &capacity.to_le_bytes());
    put(
        offsets::SLOTS_OFFSET,
        &(offsets::SLOTS as u64).to_le_bytes(),
    );
    put(offsets::EPOCH, &epoch.to_le_bytes());
    put(offsets::CREATED_NS, &now.to_le_bytes());
    put(offsets::PID, &std::process::id().to_le_bytes());
    put(offsets::FILE_LEN, &(len as u64).to_le_bytes());
    put(offsets::HEAD, &0u64.to_le_bytes());
    put(offsets::HEARTBEAT_NS, &now.to_le_bytes());
    put(offsets::STATE, &WRITER_RUNNING.to_le_bytes());
}

fn check_capacity(path: &Path, capacity: u64) -> Result<usize, IpcError> {
    if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
        return Err(IpcError::InvalidConfig {
            path: path.to_path_buf(),
            what: format!("ring capacity {capacity} must be a power of two in 2..=2^32"),
        });
    }
    ring_file_len(capacity).ok_or_else(|| IpcError::InvalidConfig {
        path: path.to_path_buf(),
        what: format!("ring capacity {capacity} does not fit in this machine's address space"),
    })
}

/// The ring's only writer.
///
/// [`RingWriter::publish`] and [`RingWriter::publish_batch`] make no syscall and no
/// allocation, never read reader state and never wait.
#[derive(Debug)]
pub struct RingWriter {
    mem: RingMem,
    next: u64,
    _lock: Option<WriterLock>,
    /// Set by [`RingWriter::abandon`]: leave the ring as a crash would.
    abandoned: bool,
}

impl RingWriter {
    /// Becomes the writer of the ring at `path`: takes the writer lock (or fails with
    /// [`IpcError::WriterPresent`]), then creates a new ring file of `capacity` slots with a
    /// new epoch and renames it over any old one.
    pub fn create(path: &Path, capacity: u64, opts: &ShmOptions) -> Result<RingWriter, IpcError> {
        Self::create_with_epoch(path, capacity, random_u64(), opts)
    }

    /// Like [`RingWriter::create`], but the new ring carries `epoch` instead of a random
    /// one: a mirror (`ib-stream mirror`) rebuilds another host's ring under that ring's own
    /// epoch, so ids and checkpoints keyed by `(epoch, seq)` mean the same on both hosts.
    /// Epoch 0 is refused ([`IpcError::InvalidConfig`]): it means "no epoch" to readers.
    pub fn create_with_epoch(
        path: &Path,
        capacity: u64,
        epoch: u64,
        opts: &ShmOptions,
    ) -> Result<RingWriter, IpcError> {
        let len = check_capacity(path, capacity)?;
        if epoch == 0 {
            return Err(IpcError::InvalidConfig {
                path: path.to_path_buf(),
                what: "a ring epoch must not be 0".into(),
            });
        }
        let lock = WriterLock::acquire(path, opts)?;
        let now = unix_time_ns();
        let region = ShmRegion::create(path, len, opts, |b| {
            write_header(b, capacity, epoch, now, len);
        })?;
        let mem = RingMem::validate(region, path)?;
        Ok(RingWriter {
            mem,
            next: 1,
            _lock: Some(lock),
            abandoned: false,
        })
    }

    /// A writer over a fresh heap ring of `capacity` slots, for in-process use; readers come
    /// from [`RingWriter::reader`]. Fails with [`IpcError::InvalidConfig`] for a bad capacity
    /// and [`IpcError::Io`] when the memory cannot be allocated.
    pub fn heap(capacity: u64) -> Result<RingWriter, IpcError> {
        let path = Path::new("(heap ring)");
        let len = check_capacity(path, capacity)?;
        let region = ShmRegion::try_heap(len)?;
        // SAFETY: the heap block is `len` bytes, zeroed, owned by `region` and not shared yet.
        let bytes = unsafe { std::slice::from_raw_parts_mut(region.as_ptr(), len) };
        write_header(bytes, capacity, random_u64(), unix_time_ns(), len);
        let mem = RingMem::validate(region, path)?;
        Ok(RingWriter {
            mem,
            next: 1,
            _lock: None,
            abandoned: false,
        })
    }

    /// Publishes one record (its `seq` field is replaced by the assigned sequence) and returns
    /// the sequence.
    #[inline]
    pub fn publish(&mut self, rec: &Record) -> u64 {
        publish_into(
            self.mem.slots(),
            self.mem.head(),
            &mut self.next,
            std::slice::from_ref(rec),
        )
    }

    /// Publishes `recs` in order and updates `head` once. Returns the last sequence assigned
    /// (for an empty batch: the last sequence published before, 0 if none).
    #[inline]
    pub fn publish_batch(&mut self, recs: &[Record]) -> u64 {
        publish_into(self.mem.slots(), self.mem.head(), &mut self.next, recs)
    }

    /// Records that the writer is alive at `now_ns` (ns since the Unix epoch). One store;
    /// call it from the writer's loop every few milliseconds.
    #[inline]
    pub fn heartbeat(&self, now_ns: u64) {
        self.mem
            .word(offsets::HEARTBEAT_NS)
            .store(now_ns, Ordering::Release);
    }

    /// The last sequence published (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.next - 1
    }

    /// Moves the next sequence forward to `seq` without writing the ones in between: for a
    /// mirror whose source lost more than a ring's worth of records. Contract: the caller
    /// then publishes at least `capacity` records (fillers) before anything else, so that
    /// every slot holds a sequence at or after `seq` and a reader expecting a skipped one
    /// finds it overwritten (a `Lost`), never a slot that stays "not yet" forever.
    /// `seq` at or before the next sequence changes nothing.
    pub fn skip_to(&mut self, seq: u64) {
        self.next = self.next.max(seq);
    }

    /// Becomes the writer of the existing ring at `path` again, without a new file or
    /// epoch: for a mirror that restarts (its ring must keep its epoch and sequences, and
    /// readers must go on reading the same file). Takes the writer lock
    /// ([`IpcError::WriterPresent`] while another writer lives), maps the file writable,
    /// stores this process's pid (readers' [`RingReader::writer_status`] reads it live),
    /// marks the ring running and continues after the last complete record: `head`, or
    /// further when the previous writer died in the middle of a batch after completing
    /// records it had not yet counted in `head` (readers may already have read those, so
    /// they are kept, never rewritten).
    pub fn adopt(path: &Path, opts: &ShmOptions) -> Result<RingWriter, IpcError> {
        let lock = WriterLock::acquire(path, opts)?;
        let region = ShmRegion::open(path, true)?;
        let mut mem = RingMem::validate(region, path)?;
        let capacity = mem.info.capacity;
        let mut next = mem.head().load(Ordering::Acquire) + 1;
        let first = next;
        while next - first < capacity {
            let slot = &mem.slots()[((next - 1) & (capacity - 1)) as usize];
            if slot[0].load(Ordering::Acquire) != next {
                break;
            }
            next += 1;
        }
        if next != first {
            mem.head().store(next - 1, Ordering::Release);
        }
        let pid = std::process::id();
        atomic_u32_at(&mem.region, offsets::PID).store(pid, Ordering::Release);
        mem.info.pid = pid;
        mem.word(offsets::HEARTBEAT_NS)
            .store(unix_time_ns(), Ordering::Release);
        mem.word(offsets::STATE)
            .store(WRITER_RUNNING, Ordering::Release);
        Ok(RingWriter {
            mem,
            next,
            _lock: Some(lock),
            abandoned: false,
        })
    }

    /// This writer's epoch and the other fixed header fields.
    pub fn info(&self) -> RingInfo {
        self.mem.info
    }

    /// The ring file, `None` for a heap ring.
    pub fn path(&self) -> Option<&Path> {
        self.mem.region.path()
    }

    /// Releases the ring and its lock without marking the ring stopped: what a killed writer
    /// leaves behind (readers see a writer that died, not a clean stop). For tests of
    /// readers.
    pub fn abandon(mut self) {
        self.abandoned = true;
    }

    /// An in-process reader of this ring (file or heap) starting at `start`.
    pub fn reader(&self, start: StartAt) -> RingReader {
        RingReader::from_mem(self.mem.clone(), start)
    }
}

impl Drop for RingWriter {
    fn drop(&mut self) {
        if self.abandoned {
            return;
        }
        // Tells readers that the silence that follows is a clean stop, not a crash.
        self.mem
            .word(offsets::STATE)
            .store(WRITER_STOPPED, Ordering::Release);
    }
}

/// Where a new reader starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// After the newest record: the first record delivered is the next one published.
    Newest,
    /// At the oldest record still in the ring (if the writer overwrites it before the first
    /// read, that read reports it lost).
    Oldest,
    /// At this sequence (resuming from a checkpoint of the same epoch). A sequence already
    /// overwritten is reported as lost on the first read.
    Seq(u64),
}

/// What a reader can tell about the writer of the ring it maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterStatus {
    /// The writer's heartbeat is recent.
    Alive {
        /// Age of the last heartbeat, ns (0 if it is in the future).
        heartbeat_age_ns: u64,
    },
    /// The writer closed the ring cleanly and no new one replaced it yet.
    Stopped,
    /// The writer's process no longer exists.
    Gone {
        /// Its pid.
        pid: u32,
    },
    /// The process may exist, but its heartbeat is older than the threshold.
    Stale {
        /// Age of the last heartbeat, ns.
        heartbeat_age_ns: u64,
    },
    /// A (re)started writer replaced the file: what is mapped is an old epoch. Read what is
    /// left, then [`RingReader::reopen`].
    Replaced,
}

/// The result of one [`RingReader::read_batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRead {
    /// Records written to the front of the buffer, in order.
    pub records: usize,
    /// Set when the batch stopped at a lap: `(first_seq, last_seq, count)` never delivered,
    /// all after the records returned.
    pub lost: Option<(u64, u64, u64)>,
}

/// A reader of the ring. Any number may read at once; a reader never writes to the ring.
/// A reader may register itself ([`RingReader::register`]) in the reader registry so that
/// monitors see its position and lag (see [`crate::readers`]).
#[derive(Debug)]
pub struct RingReader {
    mem: RingMem,
    cursor: Cursor,
    slot: Option<ReaderSlot>,
}

impl RingReader {
    /// Opens the ring file at `path` read-only and checks its header.
    pub fn open(path: &Path, start: StartAt) -> Result<RingReader, IpcError> {
        let region = ShmRegion::open(path, false)?;
        let mem = RingMem::validate(region, path)?;
        Ok(RingReader::from_mem(mem, start))
    }

    /// Like [`RingReader::open`], but while the file is [`IpcError::Missing`] (the writer has not
    /// started yet) retries every `poll` until `timeout` has passed; other errors return at once.
    pub fn open_wait(
        path: &Path,
        start: StartAt,
        timeout: Duration,
        poll: Duration,
    ) -> Result<RingReader, IpcError> {
        let deadline = Instant::now() + timeout;
        loop {
            match RingReader::open(path, start) {
                Err(e) if e.is_missing() && Instant::now() < deadline => std::thread::sleep(poll),
                other => return other,
            }
        }
    }

    fn from_mem(mem: RingMem, start: StartAt) -> RingReader {
        let capacity = mem.info.capacity;
        let head = mem.head().load(Ordering::Acquire);
        let next = match start {
            StartAt::Newest => head + 1,
            StartAt::Oldest => (head + 1).saturating_sub(capacity).max(1),
            StartAt::Seq(s) => s.max(1),
        };
        RingReader {
            mem,
            cursor: Cursor::new(next, capacity, LapPolicy::default_for(capacity)),
            slot: None,
        }
    }

    /// Reads the next record if one is ready. No syscall, no allocation, no write to the
    /// ring; only touches the writer's `head` line after a lap. A registered reader also
    /// stores its position into its own registry slot at every multiple of
    /// [`crate::readers::PUBLISH_EVERY`], when it has caught up, and at a lap.
    #[inline]
    pub fn try_read(&mut self) -> ReadOutcome {
        let out = self.cursor.step(self.mem.slots(), self.mem.head());
        if let Some(slot) = &mut self.slot {
            match &out {
                ReadOutcome::Record(_) => slot.on_record(self.cursor.next),
                ReadOutcome::Empty => slot.on_caught_up(self.cursor.next),
                ReadOutcome::Lost { count, .. } => slot.on_lapped(*count, self.cursor.next),
            }
        }
        out
    }

    /// Registers this reader as `name` in the reader registry beside the ring file
    /// ([`READERS_FILE_NAME`]), creating the registry if needed with the ring file's own
    /// mode and group. Never fails the reader: a full table or an unusable registry is
    /// reported and the reader reads on unregistered. The slot is freed when the reader is
    /// dropped (or [`RingReader::unregister`]ed).
    pub fn register(&mut self, name: &str) -> Registration {
        let Some(ring_path) = self.path().map(Path::to_path_buf) else {
            return Registration::Unavailable(IpcError::InvalidConfig {
                path: PathBuf::from("(heap ring)"),
                what: "a heap ring has no registry beside it; use register_in".into(),
            });
        };
        let opts = ring_file_options(&ring_path);
        let path = ring_path.with_file_name(READERS_FILE_NAME);
        match ReaderRegistry::open_or_create(&path, &opts) {
            Ok(reg) => self.register_in(&Arc::new(reg), name),
            Err(e) => Registration::Unavailable(e),
        }
    }

    /// Registers this reader as `name` in `registry` (see [`RingReader::register`]).
    pub fn register_in(&mut self, registry: &Arc<ReaderRegistry>, name: &str) -> Registration {
        self.slot = None;
        if !registry.is_writable() {
            return Registration::Unavailable(IpcError::InvalidConfig {
                path: registry
                    .path()
                    .map_or_else(|| "(heap)".into(), Path::to_path_buf),
                what: "the reader registry was opened read-only".into(),
            });
        }
        match registry.claim(name, self.mem.info.epoch, self.cursor.next) {
            Some(s) => {
                let slot = s.index();
                self.slot = Some(s);
                Registration::Registered { slot }
            }
            None => Registration::TableFull,
        }
    }

    /// Frees this reader's registry slot, if it holds one.
    pub fn unregister(&mut self) {
        self.slot = None;
    }

    /// The registry slot this reader holds, if any.
    pub fn registry_slot(&self) -> Option<usize> {
        self.slot.as_ref().map(ReaderSlot::index)
    }

    /// Reads up to `out.len()` records into `out`, stopping early when nothing more is ready
    /// or at a lap (reported in [`BatchRead::lost`], after the records returned).
    pub fn read_batch(&mut self, out: &mut [Record]) -> BatchRead {
        let mut n = 0;
        while n < out.len() {
            match self.try_read() {
                ReadOutcome::Record(r) => {
                    out[n] = r;
                    n += 1;
                }
                ReadOutcome::Empty => break,
                ReadOutcome::Lost {
                    first_seq,
                    last_seq,
                    count,
                } => {
                    return BatchRead {
                        records: n,
                        lost: Some((first_seq, last_seq, count)),
                    };
                }
            }
        }
        BatchRead {
            records: n,
            lost: None,
        }
    }

    /// Chooses where to resume after a lap (default: [`LapPolicy::default_for`] the capacity).
    pub fn set_lap_policy(&mut self, policy: LapPolicy) {
        self.cursor.policy = policy;
    }

    /// The sequence the next successful read delivers.
    pub fn next_seq(&self) -> u64 {
        self.cursor.next
    }

    /// The writer's last published sequence (one acquire load of the writer's `head` line).
    pub fn head(&self) -> u64 {
        self.mem.head().load(Ordering::Acquire)
    }

    /// Records published but not yet read (may exceed the capacity when lapped).
    pub fn lag(&self) -> u64 {
        self.head().saturating_sub(self.cursor.next - 1)
    }

    /// The mapped ring's fixed header fields (epoch, capacity, pid, ...).
    pub fn info(&self) -> RingInfo {
        self.mem.info
    }

    /// The ring file, `None` for a heap ring.
    pub fn path(&self) -> Option<&Path> {
        self.mem.region.path()
    }

    /// The writer's last heartbeat, ns since the Unix epoch.
    pub fn heartbeat_ns(&self) -> u64 {
        self.mem.word(offsets::HEARTBEAT_NS).load(Ordering::Acquire)
    }

    /// True when the writer closed this ring cleanly (its `state` word says stopped): it
    /// published everything it had. One load.
    pub fn writer_stopped(&self) -> bool {
        self.mem.word(offsets::STATE).load(Ordering::Acquire) == WRITER_STOPPED
    }

    /// Checks on the writer: replaced file, clean stop, gone pid, or a heartbeat older than
    /// `stale_after_ns` at `now_ns`. Costs a `stat` and a `kill(pid, 0)`: call it when idle
    /// (say every 10-100 ms without data), not per record.
    pub fn writer_status(&self, now_ns: u64, stale_after_ns: u64) -> WriterStatus {
        if self.mem.region.replaced() {
            return WriterStatus::Replaced;
        }
        if self.mem.word(offsets::STATE).load(Ordering::Acquire) == WRITER_STOPPED {
            return WriterStatus::Stopped;
        }
        // Read live, not from `info`: an adopting writer (a restarted mirror) stores its
        // own pid into the same file.
        let pid = atomic_u32_at(&self.mem.region, offsets::PID).load(Ordering::Acquire);
        if process_alive(pid) == Some(false) {
            return WriterStatus::Gone { pid };
        }
        let age = now_ns.saturating_sub(self.heartbeat_ns());
        if age > stale_after_ns {
            WriterStatus::Stale {
                heartbeat_age_ns: age,
            }
        } else {
            WriterStatus::Alive {
                heartbeat_age_ns: age,
            }
        }
    }

    /// Maps the file now at the reader's path (a restarted writer's new ring) and starts on it
    /// at `start`, keeping its lap policy. Returns the new epoch; on error the reader keeps its
    /// old mapping. A heap
    /// reader has nothing to reopen and gets [`IpcError::InvalidConfig`].
    pub fn reopen(&mut self, start: StartAt) -> Result<u64, IpcError> {
        let Some(path) = self.path().map(Path::to_path_buf) else {
            return Err(IpcError::InvalidConfig {
                path: PathBuf::from("(heap ring)"),
                what: "a heap ring has no file to reopen".into(),
            });
        };
        let policy = self.cursor.policy;
        let mut fresh = RingReader::open(&path, start)?;
        fresh.set_lap_policy(policy);
        // The registry slot moves to the new ring (same reader, new epoch).
        let slot = self.slot.take();
        *self = fresh;
        if let Some(mut s) = slot {
            s.on_new_epoch(self.mem.info.epoch, self.cursor.next);
            self.slot = Some(s);
        }
        Ok(self.mem.info.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordKind;
    use proptest::prelude::*;

    fn rec(i: i64) -> Record {
        Record {
            instrument_id: 7,
            ts_recv: i,
            body: [i, -i, i * 3, 1],
            ..Record::new(RecordKind::TbtLast)
        }
    }

    fn expect_record(r: &mut RingReader) -> Record {
        match r.try_read() {
            ReadOutcome::Record(x) => x,
            other => panic!("expected a record, got {other:?}"),
        }
    }

    #[test]
    fn header_and_slot_bytes_are_pinned() {
        // Other languages read these offsets (ipc/README.md): change only with a version bump.
        let mut w = RingWriter::heap(16).unwrap();
        w.publish(&rec(1));
        w.heartbeat(0x1122_3344_5566_7788);
        let base = w.mem.region.as_ptr();
        // SAFETY: the heap ring is 4096 + 16 * 64 bytes; this test is its only user.
        let b = unsafe { std::slice::from_raw_parts(base, w.mem.region.len()) };
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!(&b[0..8], b"IBSRING\0");
        assert_eq!(u64_at(0), 0x0047_4e49_5253_4249);
        assert_eq!(u32_at(8), 1);
        assert_eq!(u32_at(12), 64);
        assert_eq!(u64_at(16), 16);
        assert_eq!(u64_at(24), 4096);
        assert_eq!(u64_at(32), w.info().epoch);
        assert_eq!(u32_at(48), std::process::id());
        assert_eq!(u64_at(56), 4096 + 16 * 64);
        assert_eq!(u64_at(64), 1);
        assert_eq!(u64_at(128), 0x1122_3344_5566_7788);
        assert_eq!(u64_at(136), WRITER_RUNNING);
        // Slot 0 is the record itself, seq included.
        assert_eq!(&b[4096..4160], Record { seq: 1, ..rec(1) }.as_bytes_ref());
    }

    #[test]
    fn publish_then_read_in_order() {
        let mut w = RingWriter::heap(8).unwrap();
        let mut r = w.reader(StartAt::Oldest);
        assert_eq!(r.try_read(), ReadOutcome::Empty);
        for i in 1..=5 {
            assert_eq!(w.publish(&rec(i)), i as u64);
        }
        for i in 1..=5 {
            let x = expect_record(&mut r);
            assert_eq!(x.seq, i as u64);
            assert_eq!(
                x,
                Record {
                    seq: i as u64,
                    ..rec(i)
                }
            );
        }
        assert_eq!(r.try_read(), ReadOutcome::Empty);
        assert_eq!(r.next_seq(), 6);
        assert_eq!(r.head(), 5);
        assert_eq!(r.lag(), 0);
    }

    #[test]
    fn start_newest_skips_what_exists() {
        let mut w = RingWriter::heap(8).unwrap();
        w.publish_batch(&[rec(1), rec(2), rec(3)]);
        let mut r = w.reader(StartAt::Newest);
        assert_eq!(r.try_read(), ReadOutcome::Empty);
        w.publish(&rec(4));
        assert_eq!(expect_record(&mut r).seq, 4);
    }

    #[test]
    fn start_oldest_after_wrap_is_oldest_valid() {
        let mut w = RingWriter::heap(4).unwrap();
        for i in 1..=10 {
            w.publish(&rec(i));
        }
        let mut r = w.reader(StartAt::Oldest);
        assert_eq!(r.next_seq(), 7);
        for s in 7..=10 {
            assert_eq!(expect_record(&mut r).seq, s);
        }
    }

    #[test]
    fn lap_reports_exact_loss_and_resyncs_to_oldest_plus_margin() {
        let mut w = RingWriter::heap(8).unwrap();
        let mut r = w.reader(StartAt::Oldest);
        r.set_lap_policy(LapPolicy::Oldest { margin: 1 });
        for i in 1..=20 {
            w.publish(&rec(i));
        }
        // Oldest valid is 13; margin 1 → resume at 14, lost 1..=13.
        assert_eq!(
            r.try_read(),
            ReadOutcome::Lost {
                first_seq: 1,
                last_seq: 13,
                count: 13
            }
        );
        for s in 14..=20 {
            assert_eq!(expect_record(&mut r).seq, s);
        }
        assert_eq!(r.try_read(), ReadOutcome::Empty);
    }

    #[test]
    fn lap_with_newest_policy_resumes_at_head() {
        let mut w = RingWriter::heap(8).unwrap();
        let mut r = w.reader(StartAt::Oldest);
        r.set_lap_policy(LapPolicy::Newest);
        assert_eq!(expect_record_after(&mut w, &mut r, 1), 1);
        for i in 2..=30 {
            w.publish(&rec(i));
        }
        assert_eq!(
            r.try_read(),
            ReadOutcome::Lost {
                first_seq: 2,
                last_seq: 29,
                count: 28
            }
        );
        assert_eq!(expect_record(&mut r).seq, 30);
    }

    fn expect_record_after(w: &mut RingWriter, r: &mut RingReader, i: i64) -> u64 {
        w.publish(&rec(i));
        expect_record(r).seq
    }

    #[test]
    fn default_margin_is_an_eighth() {
        let mut w = RingWriter::heap(64).unwrap();
        let mut r = w.reader(StartAt::Oldest);
        for i in 1..=200 {
            w.publish(&rec(i));
        }
        // newest 200, oldest valid 137, margin 8 → resume at 145.
        assert_eq!(
            r.try_read(),
            ReadOutcome::Lost {
                first_seq: 1,
                last_seq: 144,
                count: 144
            }
        );
        assert_eq!(expect_record(&mut r).seq, 145);
    }

    #[test]
    fn batch_publish_updates_head_once_and_reads_back() {
        let mut w = RingWriter::heap(16).unwrap();
        let mut r = w.reader(StartAt::Oldest);
        let batch: Vec<Record> = (1..=10).map(rec).collect();
        assert_eq!(w.publish_batch(&batch), 10);
        assert_eq!(w.publish_batch(&[]), 10);
        assert_eq!(r.head(), 10);
        let mut out = [Record::ZERO; 4];
        let b = r.read_batch(&mut out);
        assert_eq!(
            b,
            BatchRead {
                records: 4,
                lost: None
            }
        );
        assert_eq!(out.map(|x| x.seq), [1, 2, 3, 4]);
        let mut big = [Record::ZERO; 32];
        let b = r.read_batch(&mut big);
        assert_eq!(
            b,
            BatchRead {
                records: 6,
                lost: None
            }
        );
        assert_eq!(big[5], Record { seq: 10, ..rec(10) });
    }

    #[test]
    fn batch_read_stops_at_a_lap() {
        let mut w = RingWriter::heap(4).unwrap();
        let mut r = w.reader(StartAt::Oldest);
        r.set_lap_policy(LapPolicy::Oldest { margin: 0 });
        for i in 1..=9 {
            w.publish(&rec(i));
        }
        let mut out = [Record::ZERO; 8];
        let b = r.read_batch(&mut out);
        assert_eq!(
            b,
            BatchRead {
                records: 0,
                lost: Some((1, 5, 5))
            }
        );
        let b = r.read_batch(&mut out);
        assert_eq!(b.records, 4);
        assert_eq!(
            out[..4].iter().map(|x| x.seq).collect::<Vec<_>>(),
            [6, 7, 8, 9]
        );
    }

    #[test]
    fn writing_bit_is_in_progress_not_torn_not_lost() {
        let slot: [AtomicU64; SLOT_WORDS] = std::array::from_fn(|_| AtomicU64::new(0));
        let words = record_to_words(&rec(5));
        // The writer has marked seq 3 but not finished it.
        slot[0].store(3 | WRITING_BIT, Ordering::Relaxed);
        assert_eq!(read_slot(&slot, 3), SlotRead::InProgress);
        // A reader still expecting an older one that this write overwrites: lapped.
        assert_eq!(read_slot(&slot, 1), SlotRead::Overwritten { found: 3 });
        // A reader ahead of the writer: not yet.
        assert_eq!(read_slot(&slot, 5), SlotRead::NotYet);
        write_slot(&slot, 3, &words);
        match read_slot(&slot, 3) {
            SlotRead::Ready(got) => {
                assert_eq!(got[0], 3);
                assert_eq!(got[1..], words[1..]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cursor_in_progress_slot_is_empty_and_lap_during_write_counts() {
        let slots: Vec<[AtomicU64; SLOT_WORDS]> = (0..4)
            .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
            .collect();
        let head = AtomicU64::new(0);
        let mut next = 1;
        publish_into(&slots, &head, &mut next, &[rec(1), rec(2)]);
        let mut c = Cursor::new(1, 4, LapPolicy::Oldest { margin: 0 });
        // Writer is mid-write of seq 5 into slot 0 (which holds seq 1), head still 2.
        slots[0][0].store(5 | WRITING_BIT, Ordering::Relaxed);
        // Seq 1 is being overwritten by 5: the oldest valid is 2.
        assert_eq!(
            c.step(&slots, &head),
            ReadOutcome::Lost {
                first_seq: 1,
                last_seq: 1,
                count: 1
            }
        );
        match c.step(&slots, &head) {
            ReadOutcome::Record(r) => assert_eq!(r.seq, 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.step(&slots, &head), ReadOutcome::Empty);
    }

    #[test]
    fn epoch_changes_per_writer_and_heap_reader_cannot_reopen() {
        let a = RingWriter::heap(4).unwrap();
        let b = RingWriter::heap(4).unwrap();
        assert_ne!(a.info().epoch, b.info().epoch);
        assert_ne!(a.info().epoch, 0);
        let mut r = a.reader(StartAt::Newest);
        assert_eq!(r.info().epoch, a.info().epoch);
        assert!(matches!(
            r.reopen(StartAt::Newest),
            Err(IpcError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn writer_status_alive_stale_stopped() {
        let w = RingWriter::heap(4).unwrap();
        let r = w.reader(StartAt::Newest);
        w.heartbeat(1_000_000_000);
        assert_eq!(
            r.writer_status(1_500_000_000, 1_000_000_000),
            WriterStatus::Alive {
                heartbeat_age_ns: 500_000_000
            }
        );
        assert_eq!(
            r.writer_status(3_000_000_000, 1_000_000_000),
            WriterStatus::Stale {
                heartbeat_age_ns: 2_000_000_000
            }
        );
        drop(w);
        assert_eq!(r.writer_status(1_000_000_000, 1), WriterStatus::Stopped);
    }

    #[test]
    fn bad_capacity_is_refused() {
        assert!(matches!(
            RingWriter::heap(3),
            Err(IpcError::InvalidConfig { .. })
        ));
        assert!(matches!(
            RingWriter::heap(1),
            Err(IpcError::InvalidConfig { .. })
        ));
        assert!(RingWriter::heap(2).is_ok());
    }

    /// One step of a random schedule: publish a batch of `n` records, or read up to `n`.
    #[derive(Clone, Debug)]
    enum Op {
        Publish(usize),
        /// Read up to `n`, by `try_read` (false) or by one-record `read_batch`es (true).
        Read(usize, bool),
    }

    /// One read through either path, as a [`ReadOutcome`].
    fn read_one(r: &mut RingReader, by_batch: bool) -> ReadOutcome {
        if !by_batch {
            return r.try_read();
        }
        let mut out = [Record::ZERO; 1];
        match r.read_batch(&mut out) {
            BatchRead { records: 1, .. } => ReadOutcome::Record(out[0]),
            BatchRead {
                lost: Some((first_seq, last_seq, count)),
                ..
            } => ReadOutcome::Lost {
                first_seq,
                last_seq,
                count,
            },
            BatchRead { .. } => ReadOutcome::Empty,
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..40).prop_map(Op::Publish),
            (0usize..40, any::<bool>()).prop_map(|(n, b)| Op::Read(n, b))
        ]
    }

    proptest! {
        /// Whatever the interleaving, every sequence is either delivered once, in order, with
        /// its own content, or inside exactly one reported loss; losses happen only when the
        /// reader really fell more than a ring behind. Reads go through `try_read` or
        /// `read_batch`, mixed on one reader.
        #[test]
        fn random_interleavings_account_for_every_sequence(
            cap_log in 1u32..6,
            margin in 0u64..8,
            newest in any::<bool>(),
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            let cap = 1u64 << cap_log;
            let mut w = RingWriter::heap(cap).unwrap();
            let mut r = w.reader(StartAt::Oldest);
            r.set_lap_policy(if newest { LapPolicy::Newest } else { LapPolicy::Oldest { margin } });
            let mut expected = 1u64; // the next sequence the reader must account for
            let mut published = 0u64;
            for op in ops {
                match op {
                    Op::Publish(n) => {
                        let batch: Vec<Record> = (0..n as i64).map(|k| rec(published as i64 + 1 + k)).collect();
                        published = w.publish_batch(&batch);
                    }
                    Op::Read(n, by_batch) => for _ in 0..n {
                        match read_one(&mut r, by_batch) {
                            ReadOutcome::Record(x) => {
                                prop_assert_eq!(x.seq, expected);
                                prop_assert_eq!(x, Record { seq: expected, ..rec(expected as i64) });
                                expected += 1;
                            }
                            ReadOutcome::Empty => {
                                prop_assert_eq!(expected, published + 1, "empty while records are pending");
                                break;
                            }
                            ReadOutcome::Lost { first_seq, last_seq, count } => {
                                prop_assert_eq!(first_seq, expected);
                                prop_assert_eq!(count, last_seq - first_seq + 1);
                                // Lost only if really overwritten: the writer is more than a ring ahead.
                                prop_assert!(published >= first_seq + cap, "lost {first_seq} though it was still in the ring");
                                // Never skips past what exists, and resumes inside the ring.
                                prop_assert!(last_seq < published);
                                prop_assert!(last_seq + 1 + cap > published);
                                if !newest && margin == 0 {
                                    prop_assert_eq!(last_seq, published - cap, "with margin 0 exactly the overwritten ones are lost");
                                }
                                expected = last_seq + 1;
                            }
                        }
                    },
                }
            }
            prop_assert_eq!(r.next_seq(), expected);
        }
    }
}

/// A mirror's writer: a ring under a given epoch, and a restarted writer adopting its ring.
#[cfg(test)]
mod adopt_tests {
    use super::*;
    use crate::record::RecordKind;
    use std::sync::atomic::AtomicU64 as Counter;

    fn tmpdir(tag: &str) -> PathBuf {
        static N: Counter = Counter::new(0);
        let d = std::env::temp_dir().join(format!(
            "ipc-adopt-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn rec(i: u64) -> Record {
        Record {
            instrument_id: 9,
            ts_recv: i as i64,
            body: [i as i64, 0, 0, 0],
            ..Record::new(RecordKind::TbtMidPoint)
        }
    }

    fn read_all(r: &mut RingReader) -> Vec<u64> {
        let mut out = Vec::new();
        loop {
            match r.try_read() {
                ReadOutcome::Record(x) => out.push(x.seq),
                ReadOutcome::Empty => return out,
                ReadOutcome::Lost { .. } => panic!("unexpected lap"),
            }
        }
    }

    #[test]
    fn create_with_epoch_keeps_the_given_epoch_and_refuses_zero() {
        let d = tmpdir("epoch");
        let path = d.join(RING_FILE_NAME);
        let w = RingWriter::create_with_epoch(&path, 16, 0xfeed, &ShmOptions::default()).unwrap();
        assert_eq!(w.info().epoch, 0xfeed);
        assert_eq!(
            RingReader::open(&path, StartAt::Oldest)
                .unwrap()
                .info()
                .epoch,
            0xfeed
        );
        drop(w);
        let e = RingWriter::create_with_epoch(&path, 16, 0, &ShmOptions::default()).unwrap_err();
        assert!(matches!(e, IpcError::InvalidConfig { .. }), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn adopt_continues_the_same_file_epoch_and_sequences() {
        let d = tmpdir("continue");
        let path = d.join(RING_FILE_NAME);
        let mut w = RingWriter::create_with_epoch(&path, 16, 77, &ShmOptions::default()).unwrap();
        for i in 1..=5 {
            w.publish(&rec(i));
        }
        let mut r = RingReader::open(&path, StartAt::Oldest).unwrap();
        assert_eq!(read_all(&mut r), vec![1, 2, 3, 4, 5]);
        // A second writer is refused while the first lives.
        assert!(matches!(
            RingWriter::adopt(&path, &ShmOptions::default()),
            Err(IpcError::WriterPresent { .. })
        ));
        w.abandon();
        let mut w2 = RingWriter::adopt(&path, &ShmOptions::default()).unwrap();
        assert_eq!(w2.info().epoch, 77);
        assert_eq!(w2.last_seq(), 5);
        assert_eq!(w2.publish(&rec(6)), 6);
        // The reader of the old mapping goes on: same file, nothing replaced, nothing lost.
        assert_eq!(read_all(&mut r), vec![6]);
        assert!(!matches!(
            r.writer_status(unix_time_ns(), u64::MAX),
            WriterStatus::Replaced | WriterStatus::Stopped | WriterStatus::Gone { .. }
        ));
        drop(w2);
        assert_eq!(
            r.writer_status(unix_time_ns(), u64::MAX),
            WriterStatus::Stopped
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn adopt_keeps_records_completed_after_head() {
        let d = tmpdir("midbatch");
        let path = d.join(RING_FILE_NAME);
        let mut w = RingWriter::create_with_epoch(&path, 16, 5, &ShmOptions::default()).unwrap();
        w.publish_batch(&[rec(1), rec(2), rec(3), rec(4)]);
        // As if the writer died inside a batch: 3 and 4 complete, head still at 2, 5 half written.
        w.mem.head().store(2, Ordering::Release);
        w.mem.slots()[4][0].store(5 | WRITING_BIT, Ordering::Release);
        w.abandon();
        let mut r = RingReader::open(&path, StartAt::Oldest).unwrap();
        let mut w2 = RingWriter::adopt(&path, &ShmOptions::default()).unwrap();
        assert_eq!(w2.last_seq(), 4, "complete records past head are kept");
        assert_eq!(r.head(), 4);
        assert_eq!(w2.publish(&rec(5)), 5);
        assert_eq!(read_all(&mut r), vec![1, 2, 3, 4, 5]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn writer_status_reads_the_adopting_writers_pid() {
        let d = tmpdir("pid");
        let path = d.join(RING_FILE_NAME);
        let w = RingWriter::create_with_epoch(&path, 16, 3, &ShmOptions::default()).unwrap();
        // A pid that is certainly gone: a child that has exited and been reaped.
        let dead = {
            let mut c = std::process::Command::new("true").spawn().unwrap();
            let pid = c.id();
            c.wait().unwrap();
            pid
        };
        atomic_u32_at(&w.mem.region, offsets::PID).store(dead, Ordering::Release);
        w.abandon();
        let r = RingReader::open(&path, StartAt::Newest).unwrap();
        assert_eq!(
            r.writer_status(unix_time_ns(), u64::MAX),
            WriterStatus::Gone { pid: dead }
        );
        let _w2 = RingWriter::adopt(&path, &ShmOptions::default()).unwrap();
        // The reader opened while the old pid was in the header sees the new writer alive.
        assert!(matches!(
            r.writer_status(unix_time_ns(), u64::MAX),
            WriterStatus::Alive { .. }
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
