//! Typed messages in both directions, each with `encode(version, out)` and
//! `decode(&Frame, version)`. The form (text or protobuf) follows the version as the
//! real gateway and clients choose it (see docs/PROTOCOL-TWS.md).

pub mod client;
pub mod historical;
pub mod ids;
pub mod server;

pub use client::ClientMsg;
pub use historical::{
    HeadTimestampRequest, HistMid, HistReply, HistRequest, HistTicks, HistoricalTicksRequest, Timed,
};
pub use server::{ServerMsg, TbtQuote, TbtTrade, TickByTickData};
