//! A robust streaming client for ib-stream's web API (docs/PROTOCOL.md; guide:
//! docs/CLIENTS.md).
//!
//! ```no_run
//! # async fn f() -> Result<(), ib_stream_client::ClientError> {
//! use ib_stream_client::{Client, ClientConfig, Event, Subscription};
//! let (client, mut events) = Client::start(ClientConfig::new("http://127.0.0.1:8101"))?;
//! client.subscribe(Subscription::new(711280073, &["bid_ask", "last"]))?;
//! while let Some(ev) = events.next().await {
//!     match ev {
//!         Event::Tick { tick, .. } => println!("{} {:?} {:?}", tick.seq, tick.bp, tick.p),
//!         Event::Gap { gap, .. } => eprintln!("lost {:?}..={:?}", gap.first_seq, gap.last_seq),
//!         other => eprintln!("{other:?}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The protocol logic is [`Session`], sans IO (frames and time in, actions out); [`Client`]
//! runs it on a tokio task that owns the connection: a WebSocket, or SSE streams (one per
//! subscription) when the server has no WebSocket or SSE is configured ([`Transport`]).

mod backoff;
mod client;
mod error;
pub mod message;
mod metrics;
mod overflow;
mod session;
pub mod sse;
mod state;
mod subscription;

pub use backoff::{Backoff, BackoffConfig};
pub use client::{Client, ClientConfig, Endpoint, Events, Transport, endpoint};
pub use error::{ClientError, ConnectError, FrameError, InvalidTransition};
pub use message::{
    Complete, Gap, GapReason, Heartbeat, Info, L1Value, Limits, ServerError, ServerMessage, Tick,
    TickKind,
};
pub use metrics::{Health, Metrics, MetricsSnapshot};
pub use overflow::{Overflow, SlowConsumerPolicy};
pub use session::{Action, Event, MalformedPolicy, Session, SessionConfig, StreamRequest, WallUs};
pub use state::{ConnState, StateMachine, Transition};
pub use subscription::{ServerSlowPolicy, SubId, Subscription};
