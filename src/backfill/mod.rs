//! `ib-stream backfill`: fills the recorded gaps from IB's history, in its own process with
//! its own IB session, so bulk history never runs in the engine's hot loop.
//!
//! - [`convert`]: historical ticks as records; which `whatToShow` fills which kind.
//! - [`core`]: the sans-IO core (jobs in; paced, paged requests and finished fills out).
//! - [`jobs`]: the gaps in storage and the streams they interrupted: what to fill.
//! - [`run`]: the process (socket, clock, client id, scans, storing).
//! - [`status`]: its status file (pacing budgets, queue, violations, ETA).
//!
//! Storage of the fills (their own epochs, flagged `backfill`, and each gap's fill state) is
//! `crate::storage::backfill`.

pub mod convert;
pub mod core;
pub mod jobs;
pub mod run;
pub mod status;

#[cfg(test)]
mod tests;
