//! The engine: the pinned `mio` loop that owns the IB session ([`run`]), the hot path from
//! socket bytes to ring records ([`ingest`], [`publish`]), and the sans-IO session logic it
//! drives: subscriptions, pacing, backoff and the control protocol.

pub mod backoff;
pub mod contract_store;
pub mod contracts;
pub mod control;
pub mod farms;
pub mod ingest;
pub mod logging;
pub mod pacing;
pub mod publish;
pub mod run;
pub mod sub_gaps;
pub mod subs;

pub use backoff::Backoff;
pub use ingest::Ingest;
pub use pacing::Pacer;
pub use publish::Publisher;
pub use run::{Engine, EngineError, EngineOptions, run};
pub use subs::{
    ErrorRoute, Escalation, Limits, Request, SubEvent, SubKey, SubKind, SubscribeAck,
    SubscribeError, SubscriptionManager,
};
