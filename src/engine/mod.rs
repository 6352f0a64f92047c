//! The engine's session logic that needs no socket: subscriptions, pacing, backoff.
//! The `mio` loop that owns the IB socket drives these with bytes and `now`.

pub mod backoff;
pub mod control;
pub mod pacing;
pub mod subs;

pub use backoff::Backoff;
pub use pacing::Pacer;
pub use subs::{
    ErrorRoute, Escalation, Limits, Request, SubEvent, SubKey, SubKind, SubscribeAck,
    SubscribeError, SubscriptionManager,
};
