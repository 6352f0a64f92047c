//! Historical data, sans-IO, shared by the client that asks for it (the backfill) and the
//! simulated gateway that answers it (tws-sim):
//!
//! * [`time`]: IB's historical date-time strings, to and from Unix seconds.
//! * [`pacing`]: IB's historical pacing rules as one state machine on a caller's clock.
//! * [`queue`]: a request queue that releases only what the rules allow, and its ETA.
//! * [`errors`]: error 162 (and 10187, 366) classified, with whether a retry can help.
//! * [`pager`]: paging `[from, to)` through 1000-tick answers stamped to the second.

pub mod errors;
pub mod pacing;
pub mod pager;
pub mod queue;
pub mod time;

pub use errors::{HistErrorKind, Retry, classify};
pub use pacing::{HistKey, Pacer, PacingRules, PacingStats, Rule, Verdict};
pub use pager::{PageRequest, Pager};
pub use queue::{PacedQueue, Wake};
