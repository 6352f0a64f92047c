//! The hot path: bytes from the IB socket to records in the ring.
//!
//! [`Ingest::process`] takes every whole frame buffered in its [`FrameReader`], decodes
//! ticks straight into records (sequence, `ts_recv`, conId from the request id, delayed and
//! stale marks) and queues them on the [`Publisher`]; anything else (errors, contract
//! details, ids) is handed to the session as a [`ServerMsg`]. A tick costs no allocation, no
//! lock and no syscall: the socket read happens before, the publish after, once per read.

use std::collections::VecDeque;

use crate::ipc::{Record, flags};
use crate::tws::{DecodeError, FrameError, FrameReader, ServerMsg, decode_tick};

use super::publish::Publisher;
use super::subs::SubscriptionManager;

/// Socket reads go straight into the frame buffer in chunks of this size.
pub const READ_CHUNK: usize = 64 * 1024;

/// Decodes and publishes; owns what the per-tick path touches.
#[derive(Debug)]
pub struct Ingest {
    /// Bytes read and not yet framed.
    pub reader: FrameReader,
    /// Negotiated server version of the current connection.
    pub version: u32,
    /// Shared-memory output.
    pub publisher: Publisher,
    /// Subscriptions (the per-tick lookup is an index).
    pub subs: SubscriptionManager,
    /// Ticks for unknown or cancelled request ids, dropped.
    pub orphan_ticks: u64,
    /// The last tick frame that failed to decode, for the log.
    pub last_decode_error: Option<DecodeError>,
}

impl Ingest {
    /// A new ingest path publishing to `publisher`.
    pub fn new(publisher: Publisher, subs: SubscriptionManager) -> Ingest {
        Ingest {
            reader: FrameReader::with_capacity(4 * READ_CHUNK),
            version: 0,
            publisher,
            subs,
            orphan_ticks: 0,
            last_decode_error: None,
        }
    }

    /// True when the subscription manager has state changes to publish.
    #[inline]
    pub fn subs_events_pending(&self) -> bool {
        self.subs.has_events()
    }

    /// Decodes every whole frame buffered. Ticks are queued on the publisher (the caller
    /// flushes); other messages go to `other`. `ts_recv` is the read's receive time (Unix
    /// ns), `now` the monotonic clock the subscription manager runs on. A frame whose length
    /// is impossible ends the connection (the error is returned); a frame that fails to
    /// decode is counted and skipped.
    #[inline]
    pub fn process(
        &mut self,
        ts_recv: i64,
        now: u64,
        other: &mut VecDeque<ServerMsg>,
    ) -> Result<usize, FrameError> {
        let stale = if self.subs.is_stale() {
            flags::STALE
        } else {
            0
        };
        let mut ticks = 0;
        let mut rec = Record::ZERO;
        loop {
            let frame = match self.reader.next_frame(self.version) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) if e.is_fatal() => return Err(e),
                Err(_) => {
                    self.publisher.snap.counters.decode_errors += 1;
                    continue;
                }
            };
            self.publisher.snap.counters.frames_decoded += 1;
            match decode_tick(&frame, &mut self.publisher.strings, &mut rec) {
                Ok(Some(req_id)) => match self.subs.on_tick(req_id, now) {
                    Some((con_id, delayed)) => {
                        rec.instrument_id = con_id;
                        rec.ts_recv = ts_recv;
                        if delayed {
                            rec.flags |= flags::DELAYED;
                        }
                        rec.flags |= stale;
                        self.publisher.push(&rec);
                        ticks += 1;
                    }
                    None => self.orphan_ticks += 1,
                },
                Ok(None) => match ServerMsg::decode(&frame, self.version) {
                    Ok(m) => other.push_back(m),
                    Err(DecodeError::UnknownMsgId { .. }) => {}
                    Err(e) => {
                        self.publisher.snap.counters.decode_errors += 1;
                        self.last_decode_error = Some(e);
                    }
                },
                Err(e) => {
                    self.publisher.snap.counters.decode_errors += 1;
                    self.last_decode_error = Some(e);
                }
            }
        }
        Ok(ticks)
    }
}
