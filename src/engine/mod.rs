//! The engine: the pinned `mio` loop ([`driver`], the only code with sockets, files and the
//! clock) around the sans-IO IB [`session`], the hot path from socket bytes to ring records
//! ([`ingest`], [`publish`]), and the sans-IO parts the session is made of: subscriptions,
//! contracts, pacing, backoff, farms and the control protocol.

pub mod backoff;
pub mod contract_store;
pub mod contracts;
pub mod control;
pub mod driver;
pub mod farms;
pub mod ingest;
pub mod logging;
pub mod pacing;
pub mod publish;
pub mod session;
pub mod sub_gaps;
pub mod subs;
pub mod wake;

pub use backoff::Backoff;
pub use driver::{Engine, EngineError, run};
pub use ingest::Ingest;
pub use pacing::Pacer;
pub use publish::Publisher;
pub use session::{Action, Clock, EngineOptions, Session};
pub use subs::{
    ErrorRoute, Escalation, Limits, Request, SubEvent, SubKey, SubKind, SubscribeAck,
    SubscribeError, SubscriptionManager,
};
