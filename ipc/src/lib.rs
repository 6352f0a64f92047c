//! `ib-stream-ipc`: the shared-memory side of ib-stream.
//!
//! This is the only crate a strategy links. It holds the 64-byte [`Record`] every process
//! shares; the ring, the string table and the status region build on it.
#![deny(missing_docs)]

pub mod error;
pub mod follow;
pub mod readers;
pub mod record;
pub mod ring;
pub mod shm;
pub mod status;
pub mod strings;

pub use error::IpcError;
pub use follow::{Follow, FollowBatch, FollowConfig, FollowEvent, RingFollower, WriterRestart};
pub use readers::READERS_FILE_NAME;
pub use readers::{ReaderEntry, ReaderRegistry, ReaderSlot, Registration};
pub use record::{
    ConnState, GapReason, PRICE_SCALE, Quote, RECORD_SIZE, Record, RecordKind, SIZE_SCALE,
    SubState, Trade, UNDEF_I64, flags,
};
pub use ring::RING_FILE_NAME;
pub use ring::{LapPolicy, ReadOutcome, RingReader, RingWriter, StartAt, WriterStatus};
pub use shm::{ShmOptions, ShmRegion, WriterLock, default_dir};
pub use status::STATUS_FILE_NAME;
pub use status::{
    Counters, EngineStatus, FarmKind, FarmState, FarmStatus, Histogram, Latencies, Liveness,
    MAX_FARMS, MAX_SUBSCRIPTIONS, SnapshotError, StatusReader, StatusSnapshot, StatusWriter,
    SubStatus, data_flags,
};
pub use strings::STRINGS_FILE_NAME;
pub use strings::{InternError, StringTableConfig, StringTableReader, StringTableWriter};
