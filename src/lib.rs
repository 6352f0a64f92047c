//! ib-stream: Interactive Brokers market data from the TWS API socket into a shared-memory
//! ring, and from there to disk, the web and strategy processes.
#![deny(unsafe_code)]

pub mod backfill;
pub mod bridge;
pub mod clientid;
pub mod columnar;
pub mod config;
pub mod engine;
pub mod mirror;
pub mod recorder;
pub mod report;
pub mod serve;
pub mod storage;
pub mod studies;
pub mod tickjson;
pub mod tools;
pub mod up;

pub use ib_stream_ipc as ipc;
/// The TWS API codec (its own crate, `tws/`, so the simulator can use it without the engine).
pub use ib_stream_tws as tws;
