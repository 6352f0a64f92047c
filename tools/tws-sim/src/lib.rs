//! tws-sim: a simulated IB Gateway that speaks the real TWS API protocol.
//!
//! It serves many clients at once (one thread pair per connection), negotiates the protocol
//! version like a gateway, answers contract details from a built-in universe, streams
//! deterministic market data at a chosen rate, applies IB's limits and errors, injects faults
//! on command, and records or replays what it sends. The `tws-sim` binary runs [`cli::run`];
//! `tws-sim --help` lists every knob.

pub mod capture;
pub mod cli;
pub mod clock;
pub mod conn;
pub mod control;
pub mod decimal;
pub mod expected;
pub mod generator;
pub mod limits;
pub mod load;
pub mod schedule;
pub mod server;
pub mod session;
pub mod universe;
pub mod wire;
