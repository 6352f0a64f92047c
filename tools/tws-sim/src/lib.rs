//! tws-sim: a simulated IB Gateway that speaks the real TWS API protocol.
//!
//! It serves many clients at once, negotiates the protocol version like a gateway, answers
//! contract details from a built-in universe, streams deterministic market data at a chosen
//! rate, applies IB's limits and errors, injects faults on command, and records or replays
//! what it sends. The `tws-sim` binary runs [`cli::run`]; `tws-sim --help` lists every knob.
//!
//! The gateway's logic is sans-IO: a [`gateway::Gateway`] (what every connection shares) and
//! one [`connection::Connection`] per client (bytes and `now` in, bytes out, timers, faults),
//! so a simulation can run it in-process on a virtual clock. [`server`] is the socket driver
//! around it (a thread pair per connection), [`hub`] what its threads share, [`control`] the
//! control channel and fault schedule.

pub mod calendar;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod connection;
pub mod control;
pub mod decimal;
pub mod expected;
pub mod gateway;
pub mod generator;
pub mod historical;
pub mod hub;
pub mod limits;
pub mod load;
pub mod market;
pub mod schedule;
pub mod server;
pub mod session;
pub mod universe;
pub mod wire;
