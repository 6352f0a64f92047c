//! The status region: the engine's state, published for tools without any RPC.
//!
//! The engine keeps a [`StatusSnapshot`] in its own memory, updates it as things happen,
//! and now and then (for example every 100 ms) calls [`StatusWriter::publish`], which
//! copies the whole snapshot into shared memory. Tools (`ib-stream top`, `/health`) map
//! the region and call [`StatusReader::read`], which returns a consistent copy: never a
//! mix of two snapshots.
//!
//! Consistency comes from two buffers, each guarded by its own sequence lock. Snapshot
//! `g` (the generation, counted from 1) goes into buffer `g % 2`: the writer stores
//! `seq = 2g - 1` (odd: being written), the snapshot words, then `seq = 2g`, then
//! `latest = g`. A reader loads `latest`, copies that buffer and accepts the copy only if
//! the buffer's `seq` was `2g` before and after (so successive reads never go back in
//! generation). The writer is then always
//! writing the other buffer, so a reader only has to retry when the writer publishes
//! twice while it copies; after a bounded number of attempts it reports
//! [`SnapshotError::Busy`]. Every shared word is read and written with atomics, so
//! concurrent access is never a data race.
//!
//! A reader tells a restarted writer by the epoch in the header (a new writer creates a
//! new file and renames it over the old path: [`StatusReader::liveness`] reports
//! [`Liveness::Replaced`]) and a dead or hung one by the heartbeat going stale. The byte
//! layout is documented in `ipc/README.md` ("Status region").

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::error::IpcError;
use crate::record::{ConnState, RecordKind, SubState};
use crate::shm::{ShmOptions, ShmRegion, WriterLock};

/// `"IBSSTAT1"` read as a little-endian `u64`: the first 8 bytes of every status region.
pub const STATUS_MAGIC: u64 = u64::from_le_bytes(*b"IBSSTAT1");
/// The status region's file name in an environment's shared-memory directory.
pub const STATUS_FILE_NAME: &str = "status";

/// Layout version of the status region; bumped on any incompatible change (2: the farm
/// table, `EngineStatus::farm_count`/`data_flags` and `SubStatus::flags`; 3: the
/// `kernel_to_commit` and `read_to_commit` histograms).
pub const STATUS_VERSION: u32 = 3;
/// Subscriptions a snapshot can describe.
pub const MAX_SUBSCRIPTIONS: usize = 256;
/// IB data farms a snapshot can describe.
pub const MAX_FARMS: usize = 16;
/// Bytes of a farm name kept (longer names are cut).
pub const FARM_NAME_LEN: usize = 24;
/// Buckets in a [`Histogram`].
pub const HIST_BUCKETS: usize = 304;
/// Bytes before the first buffer: the static header line, then the `latest`/heartbeat line.
pub const STATUS_HEADER_LEN: usize = 128;
/// Attempts [`StatusReader::read`] makes before reporting [`SnapshotError::Busy`].
pub const DEFAULT_READ_ATTEMPTS: u32 = 64;

const LINE: usize = 64;
const LATEST_OFFSET: usize = 64;
const HEARTBEAT_OFFSET: usize = 72;
/// Sub-bucket bits of the histogram: 8 buckets per power of two (12.5 % resolution).
const SUB_BITS: u32 = 3;
/// Values at or above `2^(MAX_EXP + 1)` ns (about 18 minutes) share the last bucket.
const MAX_EXP: u32 = 39;

/// The static first cache line of the region. Written once before the file is published
/// (renamed into place), never changed afterwards.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct StatusHeader {
    /// [`STATUS_MAGIC`].
    pub magic: u64,
    /// [`STATUS_VERSION`].
    pub version: u32,
    /// Process id of the writer.
    pub writer_pid: u32,
    /// The writer's epoch (the ring writer's epoch: one engine run).
    pub epoch: u64,
    /// Creation time, ns since the Unix epoch.
    pub created_ns: i64,
    /// Size of one [`StatusSnapshot`] in bytes.
    pub snapshot_size: u32,
    /// [`MAX_SUBSCRIPTIONS`].
    pub max_subscriptions: u32,
    /// [`HIST_BUCKETS`].
    pub hist_buckets: u32,
    /// Distance between the two buffers in bytes (64-byte seq line + snapshot, rounded up).
    pub buffer_stride: u32,
    /// Offset of buffer 0 from the start of the region ([`STATUS_HEADER_LEN`]).
    pub buffers_offset: u32,
    /// [`MAX_FARMS`].
    pub max_farms: u32,
    /// Zero.
    pub reserved: [u32; 2],
}

const _: () = assert!(std::mem::size_of::<StatusHeader>() == LINE);

/// Engine-wide state: 64 bytes at the start of every snapshot.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct EngineStatus {
    /// Generation of this snapshot (1, 2, ...), stamped by [`StatusWriter::publish`].
    pub generation: u64,
    /// Publish time, ns since the Unix epoch, stamped by [`StatusWriter::publish`].
    pub updated_ns: i64,
    /// When the engine started, ns since the Unix epoch.
    pub started_ns: i64,
    /// When the current connection reached `Connected`, or 0.
    pub connected_since_ns: i64,
    /// When the last IB error arrived, or 0.
    pub last_error_ns: i64,
    /// The server version negotiated with IB (0 when never connected).
    pub server_version: u32,
    /// The API client id in use.
    pub client_id: i32,
    /// The last IB error code, or 0.
    pub last_error_code: i32,
    /// Valid entries at the start of [`StatusSnapshot::subs`].
    pub sub_count: u32,
    /// A [`ConnState`] value.
    pub conn_state: u8,
    /// Valid entries at the start of [`StatusSnapshot::farms`].
    pub farm_count: u8,
    /// [`data_flags`] bits: why data may be stale.
    pub data_flags: u8,
    /// Zero.
    pub pad: [u8; 5],
}

/// Bits of [`EngineStatus::data_flags`] and [`SubStatus::flags`].
pub mod data_flags {
    /// A market data farm is broken (IB 2103): market data may be stale until IB says it is
    /// OK again (2104). IB does not say which contracts a farm serves, so every market data
    /// subscription carries the flag meanwhile.
    pub const FARM_BROKEN: u8 = 1;
}

/// What kind of IB data farm a [`FarmStatus`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FarmKind {
    /// Market data (2103/2104/2108/2119).
    MarketData = 1,
    /// Historical data, HMDS (2105/2106/2107).
    Hmds = 2,
    /// Security definitions (2157/2158).
    SecDef = 3,
}

impl FarmKind {
    /// The kind stored as `b`, if this version knows it.
    pub fn from_u8(b: u8) -> Option<FarmKind> {
        Some(match b {
            1 => FarmKind::MarketData,
            2 => FarmKind::Hmds,
            3 => FarmKind::SecDef,
            _ => return None,
        })
    }

    /// Short name: `market_data`, `hmds`, `sec_def`.
    pub fn name(self) -> &'static str {
        match self {
            FarmKind::MarketData => "market_data",
            FarmKind::Hmds => "hmds",
            FarmKind::SecDef => "sec_def",
        }
    }
}

/// The state of an IB data farm, as its last notice said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FarmState {
    /// Connected (2104, 2106, 2158).
    Ok = 1,
    /// Connection broken (2103, 2105, 2157).
    Broken = 2,
    /// Inactive, available on demand (2107, 2108).
    Inactive = 3,
    /// Connecting (2119).
    Connecting = 4,
}

impl FarmState {
    /// The state stored as `b`, if this version knows it.
    pub fn from_u8(b: u8) -> Option<FarmState> {
        Some(match b {
            1 => FarmState::Ok,
            2 => FarmState::Broken,
            3 => FarmState::Inactive,
            4 => FarmState::Connecting,
            _ => return None,
        })
    }

    /// Short name: `ok`, `broken`, `inactive`, `connecting`.
    pub fn name(self) -> &'static str {
        match self {
            FarmState::Ok => "ok",
            FarmState::Broken => "broken",
            FarmState::Inactive => "inactive",
            FarmState::Connecting => "connecting",
        }
    }
}

/// One IB data farm: 48 bytes.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct FarmStatus {
    /// The farm's name as IB sends it (`usfarm`, `ushmds`, `secdefnj`, ...), UTF-8,
    /// NUL-padded.
    pub name: [u8; FARM_NAME_LEN],
    /// A [`FarmKind`] value.
    pub kind: u8,
    /// A [`FarmState`] value.
    pub state: u8,
    /// Zero.
    pub pad: [u8; 2],
    /// The IB code of the last notice.
    pub code: i32,
    /// When `state` last changed, ns since the Unix epoch.
    pub since_ns: i64,
    /// When the last notice arrived, ns since the Unix epoch.
    pub notice_ns: i64,
}

impl FarmStatus {
    /// A farm named `name` (cut to [`FARM_NAME_LEN`] bytes at a character boundary).
    pub fn new(
        name: &str,
        kind: FarmKind,
        state: FarmState,
        code: i32,
        since_ns: i64,
    ) -> FarmStatus {
        let mut end = name.len().min(FARM_NAME_LEN);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let mut n = [0u8; FARM_NAME_LEN];
        n[..end].copy_from_slice(&name.as_bytes()[..end]);
        FarmStatus {
            name: n,
            kind: kind as u8,
            state: state as u8,
            pad: [0; 2],
            code,
            since_ns,
            notice_ns: since_ns,
        }
    }

    /// The name (up to the first NUL; invalid UTF-8 is replaced).
    pub fn name(&self) -> std::borrow::Cow<'_, str> {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(FARM_NAME_LEN);
        String::from_utf8_lossy(&self.name[..end])
    }

    /// The kind, if this version knows the stored byte.
    pub fn kind(&self) -> Option<FarmKind> {
        FarmKind::from_u8(self.kind)
    }

    /// The state, if this version knows the stored byte.
    pub fn state(&self) -> Option<FarmState> {
        FarmState::from_u8(self.state)
    }
}

/// Monotonic engine counters since the engine started.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct Counters {
    /// Records written to the ring.
    pub records_published: u64,
    /// Bytes read from the IB socket.
    pub bytes_read: u64,
    /// Socket reads that returned data.
    pub socket_reads: u64,
    /// Frames (messages) decoded.
    pub frames_decoded: u64,
    /// Frames that could not be decoded.
    pub decode_errors: u64,
    /// Messages sent to IB.
    pub messages_sent: u64,
    /// Connection attempts after the first.
    pub reconnects: u64,
    /// Gap records written.
    pub gaps: u64,
    /// Heartbeat records written.
    pub heartbeats: u64,
    /// IB error messages received.
    pub ib_errors: u64,
    /// Subscriptions IB rejected.
    pub subscriptions_rejected: u64,
    /// Requests delayed to respect IB's pacing limits.
    pub pacing_delays: u64,
    /// New strings added to the string table.
    pub strings_interned: u64,
    /// Strings dropped because the string table was full.
    pub strings_dropped: u64,
    /// Event-loop iterations.
    pub loop_iterations: u64,
    /// Control-socket requests served.
    pub control_requests: u64,
}

/// A latency histogram with log-linear buckets: exact below 16, then 8 buckets per power
/// of two (each at most 12.5 % wide), up to `2^40` ns; larger values share the last one.
///
/// Allocation-free and fixed size so that it can live in a snapshot; record with
/// [`Histogram::record`], query with [`Histogram::percentile`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct Histogram {
    /// Values recorded.
    pub count: u64,
    /// Sum of the values (wrapping; for the mean).
    pub sum: u64,
    /// Smallest value recorded (`u64::MAX` when empty after [`Histogram::new`], 0 when zeroed).
    pub min: u64,
    /// Largest value recorded.
    pub max: u64,
    /// Count per bucket; see [`Histogram::bucket_index`].
    pub buckets: [u64; HIST_BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub const fn new() -> Histogram {
        Histogram {
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
            buckets: [0; HIST_BUCKETS],
        }
    }

    /// The bucket that counts `v`.
    pub fn bucket_index(v: u64) -> usize {
        let sub = 1u64 << SUB_BITS;
        if v < sub {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros();
        if exp > MAX_EXP {
            return HIST_BUCKETS - 1;
        }
        let shift = exp - SUB_BITS;
        ((exp - SUB_BITS + 1) as usize) * sub as usize + ((v >> shift) & (sub - 1)) as usize
    }

    /// The smallest and largest value bucket `i` counts (the last bucket also counts
    /// everything larger: its upper bound is `u64::MAX`).
    pub fn bucket_bounds(i: usize) -> (u64, u64) {
        let sub = 1usize << SUB_BITS;
        if i < sub {
            return (i as u64, i as u64);
        }
        if i >= HIST_BUCKETS - 1 {
            let lo = ((sub + sub - 1) as u64) << (MAX_EXP - SUB_BITS);
            return (lo, u64::MAX);
        }
        let exp = (i / sub) as u32 + SUB_BITS - 1;
        let shift = exp - SUB_BITS;
        let lo = ((sub + i % sub) as u64) << shift;
        (lo, lo + (1u64 << shift) - 1)
    }

    /// Counts one value.
    pub fn record(&mut self, v: u64) {
        self.record_n(v, 1);
    }

    /// Counts `n` occurrences of a value.
    pub fn record_n(&mut self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        if self.count == 0 {
            // A zeroed histogram (fresh from shared memory) has min 0: reset it.
            self.min = u64::MAX;
        }
        self.count = self.count.saturating_add(n);
        self.sum = self.sum.wrapping_add(v.wrapping_mul(n));
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        let b = &mut self.buckets[Self::bucket_index(v)];
        *b = b.saturating_add(n);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            self.min = u64::MAX;
        }
        // Saturating: `other` may come from a corrupt region; a tool must not panic on it.
        self.count = self.count.saturating_add(other.count);
        self.sum = self.sum.wrapping_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    /// Forgets every value.
    pub fn clear(&mut self) {
        *self = Histogram::new();
    }

    /// The mean, or `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The value at quantile `q` (0.0 ..= 1.0; 0.99 is p99): the upper bound of the bucket
    /// holding the `ceil(q * count)`-th smallest value, clamped to the recorded min and max.
    /// It is never below the true value and at most 12.5 % above it. `None` when empty or
    /// when the bucket counts do not add up to `count` (a snapshot from a corrupt region).
    pub fn percentile(&self, q: f64) -> Option<u64> {
        if self.count == 0 || q.is_nan() {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen = seen.saturating_add(n);
            if seen >= rank {
                let (_, hi) = Self::bucket_bounds(i);
                return Some(hi.clamp(self.min, self.max.max(self.min)));
            }
        }
        None
    }
}

/// One subscription: 40 bytes.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct SubStatus {
    /// IB conId.
    pub con_id: u32,
    /// IB request id of the subscription.
    pub req_id: i32,
    /// IB's error code for the last problem, or 0.
    pub ib_error_code: i32,
    /// The subscribed [`RecordKind`] (a tick-by-tick kind, or an L1 kind for reqMktData).
    pub kind: u8,
    /// A [`SubState`] value.
    pub state: u8,
    /// IB market data type (1 live, 2 frozen, 3 delayed, 4 delayed frozen; 0 unknown).
    pub market_data_type: u8,
    /// [`data_flags`] bits that apply to this subscription.
    pub flags: u8,
    /// Ticks received.
    pub ticks: u64,
    /// Receive time of the last tick, ns since the Unix epoch, or 0.
    pub last_tick_ns: i64,
    /// When `state` last changed, ns since the Unix epoch.
    pub state_since_ns: i64,
}

impl SubStatus {
    /// A subscription of `kind` to `con_id` in `state`, with no ticks yet.
    pub fn new(con_id: u32, kind: RecordKind, state: SubState, req_id: i32) -> SubStatus {
        SubStatus {
            con_id,
            req_id,
            kind: kind as u8,
            state: state as u8,
            ..SubStatus::default()
        }
    }

    /// The kind, if this version knows the stored byte.
    pub fn kind(&self) -> Option<RecordKind> {
        RecordKind::from_u8(self.kind)
    }

    /// The state, if this version knows the stored byte.
    pub fn state(&self) -> Option<SubState> {
        SubState::from_u8(self.state)
    }
}

/// The latency histograms of a snapshot, all in ns.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct Latencies {
    /// From the socket becoming readable to the record being published in the ring.
    pub recv_to_publish: Histogram,
    /// Decoding one frame.
    pub decode: Histogram,
    /// One event-loop iteration.
    pub loop_iteration: Histogram,
    /// Per socket read that committed records: from the kernel's software receive stamp of
    /// the read's last bytes (`SO_TIMESTAMPING`) to the commit of its last record.
    pub kernel_to_commit: Histogram,
    /// Per socket read that committed records: from the read's return to the commit of its
    /// last record.
    pub read_to_commit: Histogram,
}

/// Everything the engine publishes, copied whole on every publish (23 520 bytes).
#[repr(C)]
#[derive(Clone, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct StatusSnapshot {
    /// Engine-wide state.
    pub engine: EngineStatus,
    /// Counters.
    pub counters: Counters,
    /// Latency histograms.
    pub latencies: Latencies,
    /// Subscriptions; the first `engine.sub_count` are valid.
    pub subs: [SubStatus; MAX_SUBSCRIPTIONS],
    /// IB data farms; the first `engine.farm_count` are valid.
    pub farms: [FarmStatus; MAX_FARMS],
}

/// Size of one [`StatusSnapshot`] in bytes.
pub const SNAPSHOT_SIZE: usize = std::mem::size_of::<StatusSnapshot>();
const SNAPSHOT_WORDS: usize = SNAPSHOT_SIZE / 8;
const _: () = assert!(SNAPSHOT_SIZE.is_multiple_of(8));
/// Bytes from one buffer to the next: a seq line, then the snapshot rounded up to lines.
const BUFFER_STRIDE: usize = LINE + SNAPSHOT_SIZE.div_ceil(LINE) * LINE;
/// Bytes of shared memory a status region needs.
pub const STATUS_REGION_LEN: usize = STATUS_HEADER_LEN + 2 * BUFFER_STRIDE;

impl StatusSnapshot {
    /// A zeroed snapshot on the heap (18 KB: too big to move around on the stack). Its
    /// histograms are empty, state `Disconnected`, no subscriptions.
    pub fn new_boxed() -> Box<StatusSnapshot> {
        Box::new(StatusSnapshot::new_zeroed())
    }

    /// The connection state, if this version knows the stored byte.
    pub fn conn_state(&self) -> Option<ConnState> {
        ConnState::from_u8(self.engine.conn_state)
    }

    /// Sets the connection state.
    pub fn set_conn_state(&mut self, s: ConnState) {
        self.engine.conn_state = s as u8;
    }

    /// The valid subscriptions (`sub_count` clamped to [`MAX_SUBSCRIPTIONS`]).
    pub fn subscriptions(&self) -> &[SubStatus] {
        &self.subs[..(self.engine.sub_count as usize).min(MAX_SUBSCRIPTIONS)]
    }

    /// The valid subscriptions, for updating in place.
    pub fn subscriptions_mut(&mut self) -> &mut [SubStatus] {
        let n = (self.engine.sub_count as usize).min(MAX_SUBSCRIPTIONS);
        &mut self.subs[..n]
    }

    /// Appends a subscription; gives it back if all [`MAX_SUBSCRIPTIONS`] are in use.
    pub fn push_subscription(&mut self, s: SubStatus) -> Result<(), SubStatus> {
        let n = (self.engine.sub_count as usize).min(MAX_SUBSCRIPTIONS);
        if n == MAX_SUBSCRIPTIONS {
            return Err(s);
        }
        self.subs[n] = s;
        self.engine.sub_count = n as u32 + 1;
        Ok(())
    }

    /// The subscription of `kind` to `con_id`, if listed.
    pub fn find_subscription(&self, con_id: u32, kind: RecordKind) -> Option<&SubStatus> {
        self.subscriptions()
            .iter()
            .find(|s| s.con_id == con_id && s.kind == kind as u8)
    }

    /// The subscription of `kind` to `con_id`, for updating in place.
    pub fn find_subscription_mut(
        &mut self,
        con_id: u32,
        kind: RecordKind,
    ) -> Option<&mut SubStatus> {
        self.subscriptions_mut()
            .iter_mut()
            .find(|s| s.con_id == con_id && s.kind == kind as u8)
    }

    /// The valid farms (`farm_count` clamped to [`MAX_FARMS`]).
    pub fn farms(&self) -> &[FarmStatus] {
        &self.farms[..(self.engine.farm_count as usize).min(MAX_FARMS)]
    }

    /// Replaces the farm table with `farms` (the first [`MAX_FARMS`]); returns how many
    /// were kept.
    pub fn set_farms<'a>(&mut self, farms: impl IntoIterator<Item = &'a FarmStatus>) -> usize {
        let mut n = 0;
        for f in farms.into_iter().take(MAX_FARMS) {
            self.farms[n] = *f;
            n += 1;
        }
        for f in &mut self.farms[n..] {
            *f = FarmStatus::default();
        }
        self.engine.farm_count = n as u8;
        n
    }

    /// Removes the subscription at `index` (the last one takes its place); `None` if
    /// `index` is not a valid subscription.
    pub fn swap_remove_subscription(&mut self, index: usize) -> Option<SubStatus> {
        let n = (self.engine.sub_count as usize).min(MAX_SUBSCRIPTIONS);
        if index >= n {
            return None;
        }
        let removed = self.subs[index];
        self.subs[index] = self.subs[n - 1];
        self.subs[n - 1] = SubStatus::default();
        self.engine.sub_count = n as u32 - 1;
        Some(removed)
    }
}

/// Why [`StatusReader::read`] returned no snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The writer has not published its first snapshot yet.
    #[error("the engine has not published a status snapshot yet")]
    NotPublished,
    /// The writer kept publishing while the reader copied; try again later.
    #[error("status region busy: no consistent snapshot after {attempts} attempts")]
    Busy {
        /// Attempts made.
        attempts: u32,
    },
}

/// Whether the writer behind a status region is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// The heartbeat is recent.
    Alive,
    /// No heartbeat for `age_ns` (more than the allowed age): the writer is dead or hung.
    Stale {
        /// Time since the last heartbeat (or since creation if there was none).
        age_ns: i64,
    },
    /// Another region was published at the path (the writer restarted): reopen.
    Replaced,
}

fn region_path(region: &ShmRegion) -> std::path::PathBuf {
    region.path().map(Path::to_path_buf).unwrap_or_default()
}

fn now_ns() -> i64 {
    crate::shm::unix_time_ns() as i64
}

fn new_header(epoch: u64, created_ns: i64) -> StatusHeader {
    StatusHeader {
        magic: STATUS_MAGIC,
        version: STATUS_VERSION,
        writer_pid: std::process::id(),
        epoch,
        created_ns,
        snapshot_size: SNAPSHOT_SIZE as u32,
        max_subscriptions: MAX_SUBSCRIPTIONS as u32,
        hist_buckets: HIST_BUCKETS as u32,
        buffer_stride: BUFFER_STRIDE as u32,
        buffers_offset: STATUS_HEADER_LEN as u32,
        max_farms: MAX_FARMS as u32,
        reserved: [0; 2],
    }
}

fn init_region(buf: &mut [u8], header: &StatusHeader) {
    buf.fill(0);
    buf[..LINE].copy_from_slice(header.as_bytes());
}

/// The publish/read protocol of the status region over any atomic word type.
///
/// [`StatusWriter`] and [`StatusReader`] run it over the region's `AtomicU64`s; a model
/// checker (the `loom` test) runs the same code over its own atomics. Word 0 of every
/// buffer is the generation of the snapshot in it.
pub mod protocol {
    use std::sync::atomic::Ordering;

    use crate::ring::SlotWord;

    /// The result of one read attempt.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Attempt {
        /// The words handed to the sink form the complete snapshot of this generation.
        Consistent(u64),
        /// Nothing was published yet (the sink was not called).
        NotPublished,
        /// The buffer changed during the copy (or was being written): discard and retry.
        Retry,
    }

    /// Publishes generation `g` (`g >= 1`, one more than the last) into buffer `g % 2`,
    /// whose sequence word is `seq` and words `buf`: word 0 gets `g`, words 1.. the values
    /// of `words` (missing values are stored as 0). Then makes `g` the latest.
    pub fn publish<W: SlotWord>(
        latest: &W,
        seq: &W,
        buf: &[W],
        g: u64,
        words: impl IntoIterator<Item = u64>,
    ) {
        seq.store(2 * g - 1, Ordering::Relaxed);
        // Orders the odd seq before the data stores: a reader that sees any new word and
        // then fences (acquire) sees the seq changed on its re-check.
        W::fence(Ordering::Release);
        let mut words = words.into_iter();
        for (i, w) in buf.iter().enumerate() {
            let v = if i == 0 { g } else { words.next().unwrap_or(0) };
            w.store(v, Ordering::Relaxed);
        }
        seq.store(2 * g, Ordering::Release);
        latest.store(g, Ordering::Release);
    }

    /// One attempt to copy the latest snapshot: hands every word `(index, value)` to
    /// `sink`, then says whether the copy is consistent.
    pub fn try_read<W: SlotWord>(
        latest: &W,
        seqs: [&W; 2],
        bufs: [&[W]; 2],
        mut sink: impl FnMut(usize, u64),
    ) -> Attempt {
        let g = latest.load(Ordering::Acquire);
        if g == 0 {
            return Attempt::NotPublished;
        }
        let b = (g % 2) as usize;
        let s1 = seqs[b].load(Ordering::Acquire);
        // Only the generation `latest` names is accepted. The buffer may already hold a
        // later one (g + 2, while `latest` still says g): taking it would let the next read
        // return g + 1 from the other buffer, so generations would go back (the loom
        // model found this).
        if s1 != 2 * g {
            return Attempt::Retry;
        }
        let mut generation = 0;
        for (i, w) in bufs[b].iter().enumerate() {
            let v = w.load(Ordering::Relaxed);
            if i == 0 {
                generation = v;
            }
            sink(i, v);
        }
        // Orders the copy before the re-check: if the seq is unchanged, no word of the
        // copy came from a later publish.
        W::fence(Ordering::Acquire);
        let s2 = seqs[b].load(Ordering::Relaxed);
        if s1 == s2 && generation == s1 / 2 {
            Attempt::Consistent(generation)
        } else {
            Attempt::Retry
        }
    }
}

/// Shared access to a mapped status region.
#[derive(Debug)]
struct Region {
    region: Arc<ShmRegion>,
    header: StatusHeader,
}

impl Region {
    /// Reads and checks the header: the layout must be exactly this build's.
    fn open(region: ShmRegion) -> Result<Region, IpcError> {
        let path = region_path(&region);
        if region.len() < STATUS_HEADER_LEN {
            return Err(IpcError::TooSmall {
                path,
                len: region.len() as u64,
                needed: STATUS_HEADER_LEN as u64,
            });
        }
        // SAFETY: the region is at least STATUS_HEADER_LEN bytes (checked above) and its
        // first line is written only before the file is renamed into place, so nothing
        // writes it while this shared slice lives.
        let line0 = unsafe { std::slice::from_raw_parts(region.as_ptr().cast_const(), LINE) };
        let header = StatusHeader::read_from_bytes(line0).map_err(|_| IpcError::TooSmall {
            path: path.clone(),
            len: region.len() as u64,
            needed: LINE as u64,
        })?;
        if header.magic != STATUS_MAGIC {
            return Err(IpcError::BadMagic {
                path,
                found: header.magic,
            });
        }
        if header.version != STATUS_VERSION {
            return Err(IpcError::VersionMismatch {
                path,
                found: header.version,
                expected: STATUS_VERSION,
            });
        }
        let expected = new_header(header.epoch, header.created_ns);
        if (
            header.snapshot_size,
            header.max_subscriptions,
            header.hist_buckets,
            header.max_farms,
        ) != (
            expected.snapshot_size,
            expected.max_subscriptions,
            expected.hist_buckets,
            expected.max_farms,
        ) || (header.buffer_stride, header.buffers_offset)
            != (expected.buffer_stride, expected.buffers_offset)
        {
            return Err(IpcError::Corrupt {
                path,
                what: format!(
                    "status layout (snapshot {} bytes, {} subscriptions, {} buckets, {} farms, \
                     stride {}, offset {}) differs from this build's ({SNAPSHOT_SIZE}, \
                     {MAX_SUBSCRIPTIONS}, {HIST_BUCKETS}, {MAX_FARMS}, {BUFFER_STRIDE}, \
                     {STATUS_HEADER_LEN})",
                    header.snapshot_size,
                    header.max_subscriptions,
                    header.hist_buckets,
                    header.max_farms,
                    header.buffer_stride,
                    header.buffers_offset
                ),
            });
        }
        if region.len() < STATUS_REGION_LEN {
            return Err(IpcError::TooSmall {
                path,
                len: region.len() as u64,
                needed: STATUS_REGION_LEN as u64,
            });
        }
        Ok(Region {
            region: Arc::new(region),
            header,
        })
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        &self.words(offset, 1)[0]
    }

    fn words(&self, offset: usize, n: usize) -> &[AtomicU64] {
        assert!(offset.is_multiple_of(8) && offset + n * 8 <= STATUS_REGION_LEN);
        // SAFETY: `offset..offset + 8n` is inside the region (asserted above; every
        // constructor checked the region is at least STATUS_REGION_LEN long) and 8-aligned
        // from a 64-aligned base, so the words are valid, aligned AtomicU64s while
        // `self.region` lives. Every process accesses these words only through atomics.
        unsafe { std::slice::from_raw_parts(self.region.as_ptr().wrapping_add(offset).cast(), n) }
    }

    fn buffer_seq(&self, b: usize) -> &AtomicU64 {
        self.word(STATUS_HEADER_LEN + b * BUFFER_STRIDE)
    }

    fn buffer_words(&self, b: usize) -> &[AtomicU64] {
        self.words(STATUS_HEADER_LEN + b * BUFFER_STRIDE + LINE, SNAPSHOT_WORDS)
    }

    fn latest(&self) -> &AtomicU64 {
        self.word(LATEST_OFFSET)
    }

    fn heartbeat(&self) -> &AtomicU64 {
        self.word(HEARTBEAT_OFFSET)
    }
}

/// The single writer of a status region (the engine).
#[derive(Debug)]
pub struct StatusWriter {
    region: Region,
    /// Held for the writer's life: a second writer of the same path is refused.
    _lock: Option<WriterLock>,
    generation: u64,
}

impl StatusWriter {
    /// Creates the region file at `path` (built under a temporary name, then renamed into
    /// place) for the engine run of `epoch`. Holds the path's [`WriterLock`] while it
    /// lives: a second writer gets [`IpcError::WriterPresent`].
    pub fn create(path: &Path, epoch: u64, opts: &ShmOptions) -> Result<StatusWriter, IpcError> {
        let lock = WriterLock::acquire(path, opts)?;
        let header = new_header(epoch, now_ns());
        let region = ShmRegion::create(path, STATUS_REGION_LEN, opts, |buf| {
            init_region(buf, &header);
        })?;
        Ok(StatusWriter {
            region: Region {
                region: Arc::new(region),
                header,
            },
            _lock: Some(lock),
            generation: 0,
        })
    }

    /// A region in process memory, for tests; readers come from [`StatusWriter::reader`].
    pub fn heap(epoch: u64) -> StatusWriter {
        let header = new_header(epoch, now_ns());
        let region = ShmRegion::heap(STATUS_REGION_LEN);
        // SAFETY: the heap region was just allocated with STATUS_REGION_LEN bytes and is
        // not shared yet, so this exclusive slice is the only access to it.
        let buf = unsafe { std::slice::from_raw_parts_mut(region.as_ptr(), region.len()) };
        init_region(buf, &header);
        StatusWriter {
            region: Region {
                region: Arc::new(region),
                header,
            },
            _lock: None,
            generation: 0,
        }
    }

    /// Publishes a copy of `snap` as the next generation, stamped with that generation and
    /// `now_ns` (in the shared copy; `snap` itself is not changed), and beats the
    /// heartbeat. Returns the generation. Allocation-free.
    pub fn publish(&mut self, snap: &StatusSnapshot, now_ns: i64) -> u64 {
        let g = self.generation + 1;
        let b = (g % 2) as usize;
        // Word 0 (the generation) is the protocol's; word 1 is the publish time.
        let words = snap
            .as_bytes()
            .chunks_exact(8)
            .skip(1)
            .enumerate()
            .map(|(i, c)| match i {
                0 => now_ns as u64,
                _ => u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
            });
        protocol::publish(
            self.region.latest(),
            self.region.buffer_seq(b),
            self.region.buffer_words(b),
            g,
            words,
        );
        self.region
            .heartbeat()
            .store(now_ns as u64, Ordering::Release);
        self.generation = g;
        g
    }

    /// Marks the writer alive at `now_ns` without publishing a snapshot.
    pub fn heartbeat(&self, now_ns: i64) {
        self.region
            .heartbeat()
            .store(now_ns as u64, Ordering::Release);
    }

    /// The generation of the last published snapshot (0 before the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The static header.
    pub fn header(&self) -> &StatusHeader {
        &self.region.header
    }

    /// The writer's epoch.
    pub fn epoch(&self) -> u64 {
        self.region.header.epoch
    }

    /// A reader of this same region (shares the mapping; for in-process consumers).
    pub fn reader(&self) -> StatusReader {
        StatusReader {
            region: Region {
                region: Arc::clone(&self.region.region),
                header: self.region.header,
            },
        }
    }
}

/// A reader of a status region: consistent snapshots, liveness, restart detection.
#[derive(Debug)]
pub struct StatusReader {
    region: Region,
}

impl StatusReader {
    /// Maps the region at `path` read-only and checks its header.
    pub fn open(path: &Path) -> Result<StatusReader, IpcError> {
        let region = ShmRegion::open(path, false)?;
        Ok(StatusReader {
            region: Region::open(region)?,
        })
    }

    /// Copies the latest snapshot into `out`, retrying up to [`DEFAULT_READ_ATTEMPTS`]
    /// times while the writer overwrites it. Returns the snapshot's generation.
    pub fn read(&self, out: &mut StatusSnapshot) -> Result<u64, SnapshotError> {
        self.read_with_attempts(out, DEFAULT_READ_ATTEMPTS)
    }

    /// [`StatusReader::read`] with an explicit attempt budget (at least one attempt).
    /// On error `out` holds garbage from the failed copy and must not be used.
    pub fn read_with_attempts(
        &self,
        out: &mut StatusSnapshot,
        attempts: u32,
    ) -> Result<u64, SnapshotError> {
        let attempts = attempts.max(1);
        let seqs = [self.region.buffer_seq(0), self.region.buffer_seq(1)];
        let bufs = [self.region.buffer_words(0), self.region.buffer_words(1)];
        let out = out.as_mut_bytes();
        for _ in 0..attempts {
            let attempt = protocol::try_read(self.region.latest(), seqs, bufs, |i, v| {
                out[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
            });
            match attempt {
                protocol::Attempt::Consistent(g) => return Ok(g),
                protocol::Attempt::NotPublished => return Err(SnapshotError::NotPublished),
                protocol::Attempt::Retry => std::hint::spin_loop(),
            }
        }
        Err(SnapshotError::Busy { attempts })
    }

    /// The generation of the newest complete snapshot (0 before the first).
    pub fn latest_generation(&self) -> u64 {
        self.region.latest().load(Ordering::Acquire)
    }

    /// The writer's last heartbeat, ns since the Unix epoch (0 before the first).
    pub fn heartbeat_ns(&self) -> i64 {
        self.region.heartbeat().load(Ordering::Acquire) as i64
    }

    /// Whether the writer is alive at `now_ns`: [`Liveness::Replaced`] if a new region was
    /// published at the path, else [`Liveness::Stale`] if the heartbeat (or creation, when
    /// there was no heartbeat yet) is older than `max_age_ns`, else [`Liveness::Alive`].
    pub fn liveness(&self, now_ns: i64, max_age_ns: i64) -> Liveness {
        if self.region.region.replaced() {
            return Liveness::Replaced;
        }
        let beat = self.heartbeat_ns();
        let last = if beat == 0 {
            self.region.header.created_ns
        } else {
            beat
        };
        let age_ns = now_ns.saturating_sub(last);
        if age_ns > max_age_ns {
            Liveness::Stale { age_ns }
        } else {
            Liveness::Alive
        }
    }

    /// True when the file at the region's path is no longer the one mapped (the writer
    /// restarted and published a new region, or the file was removed): reopen to follow.
    pub fn replaced(&self) -> bool {
        self.region.region.replaced()
    }

    /// The static header.
    pub fn header(&self) -> &StatusHeader {
        &self.region.header
    }

    /// The writer's epoch: differs after a restart.
    pub fn epoch(&self) -> u64 {
        self.region.header.epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};
    use std::path::PathBuf;

    fn tmpdir(tag: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "ipc-status-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn layout_is_pinned() {
        // Tools in other languages read these offsets: change only with a version bump.
        assert_eq!(size_of::<StatusHeader>(), 64);
        assert_eq!(offset_of!(StatusHeader, epoch), 16);
        assert_eq!(offset_of!(StatusHeader, snapshot_size), 32);
        assert_eq!(offset_of!(StatusHeader, buffers_offset), 48);
        assert_eq!(offset_of!(StatusHeader, max_farms), 52);
        assert_eq!(size_of::<EngineStatus>(), 64);
        assert_eq!(offset_of!(EngineStatus, farm_count), 57);
        assert_eq!(offset_of!(EngineStatus, data_flags), 58);
        assert_eq!(offset_of!(SubStatus, flags), 15);
        assert_eq!(size_of::<FarmStatus>(), 48);
        assert_eq!(offset_of!(FarmStatus, kind), 24);
        assert_eq!(offset_of!(FarmStatus, code), 28);
        assert_eq!(offset_of!(FarmStatus, since_ns), 32);
        assert_eq!(offset_of!(FarmStatus, notice_ns), 40);
        assert_eq!(offset_of!(StatusSnapshot, farms), 192 + 5 * 2464 + 256 * 40);
        assert_eq!(offset_of!(EngineStatus, updated_ns), 8);
        assert_eq!(offset_of!(EngineStatus, server_version), 40);
        assert_eq!(offset_of!(EngineStatus, sub_count), 52);
        assert_eq!(offset_of!(EngineStatus, conn_state), 56);
        assert_eq!(size_of::<Counters>(), 128);
        assert_eq!(offset_of!(Counters, control_requests), 120);
        assert_eq!(size_of::<Histogram>(), 2464);
        assert_eq!(offset_of!(Histogram, buckets), 32);
        assert_eq!(size_of::<SubStatus>(), 40);
        assert_eq!(offset_of!(SubStatus, kind), 12);
        assert_eq!(offset_of!(SubStatus, ticks), 16);
        assert_eq!(offset_of!(SubStatus, state_since_ns), 32);
        assert_eq!(size_of::<Latencies>(), 5 * 2464);
        assert_eq!(offset_of!(Latencies, kernel_to_commit), 3 * 2464);
        assert_eq!(offset_of!(Latencies, read_to_commit), 4 * 2464);
        assert_eq!(offset_of!(StatusSnapshot, counters), 64);
        assert_eq!(offset_of!(StatusSnapshot, latencies), 192);
        assert_eq!(offset_of!(StatusSnapshot, subs), 192 + 5 * 2464);
        assert_eq!(SNAPSHOT_SIZE, 23_520);
        assert_eq!(BUFFER_STRIDE, 64 + 23_552);
        assert_eq!(STATUS_REGION_LEN, 128 + 2 * 23_616);
        assert_eq!(STATUS_MAGIC.to_le_bytes(), *b"IBSSTAT1");
    }

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut prev_hi = None;
        for i in 0..HIST_BUCKETS {
            let (lo, hi) = Histogram::bucket_bounds(i);
            assert!(lo <= hi);
            if let Some(p) = prev_hi {
                assert_eq!(lo, p + 1, "bucket {i} does not follow on");
            }
            assert_eq!(Histogram::bucket_index(lo), i);
            assert_eq!(Histogram::bucket_index(hi), i);
            if lo >= 16 && i < HIST_BUCKETS - 1 {
                // At most 12.5 % wide.
                assert!((hi - lo + 1) * 8 <= lo, "bucket {i}: {lo}..={hi}");
            }
            prev_hi = Some(hi);
        }
        assert_eq!(prev_hi, Some(u64::MAX));
        for v in [0, 7, 8, 15, 16, 17, 1000, 123_456_789, 1 << 40, u64::MAX] {
            let (lo, hi) = Histogram::bucket_bounds(Histogram::bucket_index(v));
            assert!(lo <= v && v <= hi, "{v}");
        }
    }

    #[test]
    fn percentiles_bound_the_true_values() {
        let mut h = Histogram::new();
        assert_eq!(h.percentile(0.5), None);
        assert_eq!(h.mean(), None);
        // A skewed set: 1..=10_000 plus a few large outliers.
        let mut values: Vec<u64> = (1..=10_000).map(|i| i * 37 % 10_007).collect();
        values.extend([5_000_000, 9_000_000, 80_000_000]);
        for &v in &values {
            h.record(v);
        }
        values.sort_unstable();
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            let truth = values[rank - 1];
            let got = h.percentile(q).unwrap();
            assert!(
                got >= truth && got <= truth + truth / 8,
                "q={q}: {got} vs {truth}"
            );
        }
        assert_eq!(h.percentile(1.0), Some(80_000_000));
        assert_eq!(h.percentile(0.0), Some(*values.first().unwrap()));
        assert_eq!(h.count, values.len() as u64);
        let mean = values.iter().sum::<u64>() as f64 / values.len() as f64;
        assert!((h.mean().unwrap() - mean).abs() < 1e-6);

        let mut m = Histogram::new_zeroed();
        m.merge(&h);
        m.record_n(3, 2);
        assert_eq!(m.count, h.count + 2);
        assert_eq!(m.min, h.min.min(3));
        assert_eq!(m.max, 80_000_000);
        m.clear();
        assert_eq!(m, Histogram::new());
    }

    #[test]
    fn handles_are_thread_safe() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<StatusReader>();
        send_sync::<StatusWriter>();
    }

    #[test]
    fn merging_corrupt_counts_saturates() {
        let mut a = Histogram::new();
        a.record(5);
        let mut b = Histogram::new();
        b.record(5);
        b.count = u64::MAX;
        b.buckets[5] = u64::MAX;
        a.merge(&b);
        assert_eq!((a.count, a.buckets[5]), (u64::MAX, u64::MAX));
    }

    #[test]
    fn percentile_of_corrupt_counts_is_none() {
        let mut h = Histogram::new();
        h.record(10);
        h.count = 5; // buckets add up to 1
        assert_eq!(h.percentile(0.99), None);
        assert_eq!(h.percentile(f64::NAN), None);
    }

    #[test]
    fn subscriptions_are_bounded() {
        let mut s = StatusSnapshot::new_boxed();
        assert_eq!(s.conn_state(), Some(ConnState::Disconnected));
        s.set_conn_state(ConnState::Connected);
        assert_eq!(s.conn_state(), Some(ConnState::Connected));
        for i in 0..MAX_SUBSCRIPTIONS as u32 {
            let sub = SubStatus::new(i, RecordKind::TbtLast, SubState::Active, i as i32);
            s.push_subscription(sub).unwrap();
        }
        let extra = SubStatus::new(9999, RecordKind::TbtBidAsk, SubState::Queued, 1);
        assert_eq!(s.push_subscription(extra), Err(extra));
        assert_eq!(s.subscriptions().len(), MAX_SUBSCRIPTIONS);
        let removed = s.swap_remove_subscription(0).unwrap();
        assert_eq!(removed.con_id, 0);
        assert_eq!(s.subscriptions()[0].con_id, 255);
        assert_eq!(s.subscriptions().len(), 255);
        assert_eq!(s.swap_remove_subscription(255), None);
        s.subscriptions_mut()[0].ticks = 5;
        assert_eq!(
            s.find_subscription(255, RecordKind::TbtLast)
                .map(|x| x.ticks),
            Some(5)
        );
        assert!(s.find_subscription(255, RecordKind::TbtBidAsk).is_none());
        assert!(
            s.find_subscription(0, RecordKind::TbtLast).is_none(),
            "removed"
        );
        s.find_subscription_mut(7, RecordKind::TbtLast)
            .unwrap()
            .state = SubState::Silent as u8;
        assert_eq!(
            s.find_subscription(7, RecordKind::TbtLast).unwrap().state(),
            Some(SubState::Silent)
        );
        assert_eq!(s.subs[0].ticks, 5);
        assert_eq!(s.subs[0].kind(), Some(RecordKind::TbtLast));
        assert_eq!(s.subs[0].state(), Some(SubState::Active));
        s.engine.sub_count = 10_000; // as a corrupt region could say
        assert_eq!(s.subscriptions().len(), MAX_SUBSCRIPTIONS);
    }

    #[test]
    fn the_farm_table_is_bounded_and_names_are_cut() {
        let mut s = StatusSnapshot::new_boxed();
        let many: Vec<FarmStatus> = (0..MAX_FARMS + 3)
            .map(|i| {
                FarmStatus::new(
                    &format!("farm{i}"),
                    FarmKind::MarketData,
                    FarmState::Ok,
                    2104,
                    i as i64,
                )
            })
            .collect();
        assert_eq!(s.set_farms(&many), MAX_FARMS);
        assert_eq!(s.farms().len(), MAX_FARMS);
        assert_eq!(
            s.farms()[MAX_FARMS - 1].name(),
            format!("farm{}", MAX_FARMS - 1)
        );
        assert_eq!(s.set_farms(&many[..1]), 1);
        assert_eq!(s.farms().len(), 1);
        assert_eq!(s.farms[1], FarmStatus::default(), "the rest is cleared");
        let long = FarmStatus::new(
            &format!("{}é", "f".repeat(23)),
            FarmKind::SecDef,
            FarmState::Inactive,
            2108,
            0,
        );
        assert_eq!(long.name(), "f".repeat(23));
        // A corrupt count is clamped.
        s.engine.farm_count = 200;
        assert_eq!(s.farms().len(), MAX_FARMS);
        assert_eq!(FarmState::from_u8(9), None);
        assert_eq!(FarmKind::from_u8(0), None);
    }

    #[test]
    fn publish_then_read_round_trips() {
        let mut w = StatusWriter::heap(5);
        let r = w.reader();
        let mut out = StatusSnapshot::new_boxed();
        assert_eq!(r.read(&mut out), Err(SnapshotError::NotPublished));
        assert_eq!(r.latest_generation(), 0);

        let mut s = StatusSnapshot::new_boxed();
        s.set_conn_state(ConnState::Connected);
        s.engine.server_version = 178;
        s.engine.client_id = 3;
        s.counters.records_published = 1234;
        s.latencies.decode.record(250);
        s.push_subscription(SubStatus::new(
            265_598,
            RecordKind::TbtAllLast,
            SubState::Active,
            9,
        ))
        .unwrap();
        let farms = [
            FarmStatus::new("usfarm", FarmKind::MarketData, FarmState::Broken, 2103, 77),
            FarmStatus::new("ushmds", FarmKind::Hmds, FarmState::Ok, 2106, 78),
        ];
        assert_eq!(s.set_farms(&farms), 2);
        s.engine.data_flags = data_flags::FARM_BROKEN;
        for g in 1..=3u64 {
            s.counters.frames_decoded = g;
            assert_eq!(w.publish(&s, 1_000 * g as i64), g);
            assert_eq!(r.read(&mut out), Ok(g));
            assert_eq!(out.engine.generation, g);
            assert_eq!(out.engine.updated_ns, 1_000 * g as i64);
            assert_eq!(out.counters.frames_decoded, g);
            assert_eq!(out.counters, s.counters);
            assert_eq!(out.latencies, s.latencies);
            assert_eq!(out.subscriptions(), s.subscriptions());
            assert_eq!(out.engine.server_version, 178);
            assert_eq!(out.conn_state(), Some(ConnState::Connected));
            assert_eq!(out.farms(), &farms);
            assert_eq!(out.engine.data_flags, data_flags::FARM_BROKEN);
        }
        assert_eq!(out.farms()[0].name(), "usfarm");
        assert_eq!(out.farms()[0].state(), Some(FarmState::Broken));
        assert_eq!(out.farms()[1].kind(), Some(FarmKind::Hmds));
        assert_eq!(
            s.engine.generation, 0,
            "publish leaves the caller's copy alone"
        );
        assert_eq!(w.generation(), 3);
        assert_eq!(r.latest_generation(), 3);
        assert_eq!(r.heartbeat_ns(), 3_000);
        assert_eq!(r.epoch(), 5);
        assert_eq!(w.epoch(), 5);
        assert_eq!(r.header(), w.header());
    }

    #[test]
    fn a_buffer_being_written_reads_busy() {
        let mut w = StatusWriter::heap(1);
        let r = w.reader();
        let s = StatusSnapshot::new_boxed();
        w.publish(&s, 1);
        // Simulate a writer stuck half-way through the latest buffer.
        r.region.buffer_seq(1).store(3, Ordering::Relaxed);
        let mut out = StatusSnapshot::new_boxed();
        assert_eq!(
            r.read_with_attempts(&mut out, 5),
            Err(SnapshotError::Busy { attempts: 5 })
        );
        assert_eq!(
            r.read_with_attempts(&mut out, 0),
            Err(SnapshotError::Busy { attempts: 1 })
        );
        // A snapshot whose generation word disagrees with its seq is not accepted either.
        r.region.buffer_seq(1).store(2, Ordering::Relaxed);
        r.region.buffer_words(1)[0].store(7, Ordering::Relaxed);
        assert_eq!(
            r.read(&mut out),
            Err(SnapshotError::Busy {
                attempts: DEFAULT_READ_ATTEMPTS
            })
        );
        w.publish(&s, 2);
        assert_eq!(r.read(&mut out), Ok(2));
    }

    #[test]
    fn liveness_follows_heartbeat_and_replacement() {
        let dir = tmpdir("live");
        let path = dir.join("status");
        let opts = ShmOptions::default();
        let mut w = StatusWriter::create(&path, 11, &opts).unwrap();
        let r = StatusReader::open(&path).unwrap();
        let created = r.header().created_ns;
        assert_eq!(r.liveness(created + 10, 100), Liveness::Alive);
        assert_eq!(
            r.liveness(created + 500, 100),
            Liveness::Stale { age_ns: 500 }
        );
        w.heartbeat(created + 1_000);
        assert_eq!(r.liveness(created + 1_050, 100), Liveness::Alive);
        let s = StatusSnapshot::new_boxed();
        w.publish(&s, created + 2_000);
        assert_eq!(
            r.liveness(created + 2_500, 100),
            Liveness::Stale { age_ns: 500 }
        );
        let mut out = StatusSnapshot::new_boxed();
        assert_eq!(r.read(&mut out), Ok(1));

        assert!(matches!(
            StatusWriter::create(&path, 12, &opts),
            Err(IpcError::WriterPresent { .. })
        ));
        assert_eq!(r.liveness(created + 2_050, 100), Liveness::Alive);
        drop(w);
        assert!(!r.replaced());
        let _w2 = StatusWriter::create(&path, 12, &opts).unwrap();
        assert!(r.replaced());
        assert_eq!(r.liveness(created + 2_050, 100), Liveness::Replaced);
        let r2 = StatusReader::open(&path).unwrap();
        assert_eq!(r2.epoch(), 12);
        assert_eq!(r2.read(&mut out), Err(SnapshotError::NotPublished));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_files_are_typed_errors() {
        let dir = tmpdir("bad");
        let opts = ShmOptions::default();
        let good = new_header(1, 0);
        let mut other = good;
        other.max_subscriptions = 128;
        let mut fewer_farms = good;
        fewer_farms.max_farms = 8;
        let cases: Vec<(&str, StatusHeader, usize)> = vec![
            (
                "magic",
                StatusHeader { magic: 1, ..good },
                STATUS_REGION_LEN,
            ),
            (
                "version",
                StatusHeader { version: 1, ..good },
                STATUS_REGION_LEN,
            ),
            ("layout", other, STATUS_REGION_LEN),
            ("farms", fewer_farms, STATUS_REGION_LEN),
            ("short", good, STATUS_REGION_LEN - 8),
            ("tiny", good, 64),
        ];
        for (name, header, len) in cases {
            let path = dir.join(name);
            let _region = ShmRegion::create(&path, len, &opts, |b| {
                let n = b.len().min(LINE);
                b[..n].copy_from_slice(&header.as_bytes()[..n]);
            })
            .unwrap();
            let e = StatusReader::open(&path).unwrap_err();
            let ok = match name {
                "magic" => matches!(e, IpcError::BadMagic { found: 1, .. }),
                "version" => matches!(e, IpcError::VersionMismatch { found: 1, .. }),
                "layout" | "farms" => matches!(e, IpcError::Corrupt { .. }),
                _ => matches!(e, IpcError::TooSmall { .. }),
            };
            assert!(ok, "{name}: {e}");
        }
        assert!(
            StatusReader::open(&dir.join("none"))
                .unwrap_err()
                .is_missing()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn readers_in_threads_never_see_a_torn_snapshot() {
        let mut w = StatusWriter::heap(1);
        let readers: Vec<_> = (0..2).map(|_| w.reader()).collect();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            for r in &readers {
                let done = &done;
                scope.spawn(move || {
                    let mut out = StatusSnapshot::new_boxed();
                    let (mut accepted, mut last) = (0u64, 0u64);
                    while !done.load(Ordering::Acquire) || accepted == 0 {
                        match r.read(&mut out) {
                            Ok(g) => {
                                assert!(g >= last, "generations go forward");
                                last = g;
                                accepted += 1;
                                let k = out.counters.records_published;
                                assert_eq!(out.counters.bytes_read, k * 64);
                                assert_eq!(out.counters.frames_decoded, k * 3 + 1);
                                assert_eq!(out.engine.sub_count as u64, k % 200);
                                for s in out.subscriptions() {
                                    assert_eq!(s.ticks, k + u64::from(s.con_id));
                                }
                                assert_eq!(out.subs[255].last_tick_ns, k as i64);
                            }
                            Err(SnapshotError::NotPublished | SnapshotError::Busy { .. }) => {}
                        }
                    }
                });
            }
            let mut s = StatusSnapshot::new_boxed();
            for k in 0..4_000u64 {
                s.counters.records_published = k;
                s.counters.bytes_read = k * 64;
                s.counters.frames_decoded = k * 3 + 1;
                s.engine.sub_count = (k % 200) as u32;
                for (i, sub) in s.subs.iter_mut().enumerate() {
                    sub.con_id = i as u32;
                    sub.ticks = k + i as u64;
                }
                s.subs[255].last_tick_ns = k as i64;
                w.publish(&s, k as i64);
            }
            done.store(true, Ordering::Release);
        });
    }
}
