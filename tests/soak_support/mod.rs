//! The soak test's parts: the system under `ib-stream up`, the web clients, the accounting.
#![allow(unreachable_pub)]

pub mod account;
pub mod clients;
pub mod system;
