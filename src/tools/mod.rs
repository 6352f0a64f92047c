//! Terminal tools on the shared memory: `ib-stream tail` (records as JSON lines) and
//! `ib-stream top` (a live view of the status region).

pub mod tail;
pub mod top;
