//! Terminal tools on the shared memory: `ib-stream tail` (records as JSON lines) and
//! `ib-stream top` (a live view of the status region); `ib-stream watch` reads a web server
//! through the streaming client.

pub mod tail;
pub mod top;
pub mod watch;
