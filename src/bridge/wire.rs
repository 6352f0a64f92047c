//! What the bridge puts on JetStream and the mirror takes off: subjects, message ids and
//! payloads. Sans-IO: bytes in, typed messages out (and back), no NATS types here.
//!
//! Every payload starts with the same 24 bytes:
//!
//! | offset | size | field   | meaning                                                        |
//! |-------:|-----:|---------|----------------------------------------------------------------|
//! | 0      | 1    | `tag`   | 1 record, 2 hole, 3 strings, 4 status, 5 run                    |
//! | 1      | 7    | pad     | zero                                                           |
//! | 8      | 8    | `epoch` | the engine ring's epoch (run) the message belongs to (LE u64)  |
//! | 16     | 8    | `pos`   | the last ring sequence of that run the stream holds once this message is stored |
//!
//! then the body: a record's 64 bytes exactly as in the ring; a hole's `first, last, t0, t1`
//! (the ring sequences the bridge never read, from its lap); new strings as
//! `first_id u32, count u32, (len u32, bytes)*`; a status snapshot's 18 592 bytes; a run's
//! end as `old_epoch u64, old_last_seq u64, clean u8` (the header's epoch is the new run).

use ib_stream_ipc::{Record, RecordKind};

/// Bytes before every body.
pub const HEADER_LEN: usize = 24;

const TAG_RECORD: u8 = 1;
const TAG_HOLE: u8 = 2;
const TAG_STRINGS: u8 = 3;
const TAG_STATUS: u8 = 4;
const TAG_RUN: u8 = 5;
const TAG_RECORDS: u8 = 6;

/// Records a batch message carries at most (`--batch`): 1 MiB, NATS's default payload limit,
/// holds 16 000; 1 024 keeps a message at 64 KiB.
pub const MAX_BATCH: usize = 1024;

/// One message of the ring's stream, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// One ring record, its `seq` the engine's.
    Record(Record),
    /// Consecutive ring records (`seq` ascending by one), `--batch` > 1: one message for
    /// many ticks, on [`batch_subject`].
    Records(Vec<Record>),
    /// The bridge was lapped: ring sequences `first..=last` were overwritten unread.
    Hole {
        /// First sequence never read.
        first: u64,
        /// Last sequence never read.
        last: u64,
        /// Receive time of the last record read before the lap (ns), or 0.
        t0_ns: i64,
        /// When the lap was seen (ns).
        t1_ns: i64,
    },
    /// Strings interned by the engine, ids `first_id, first_id + 1, ...` in order.
    Strings {
        /// Id of the first string.
        first_id: u32,
        /// The strings' bytes.
        strings: Vec<Vec<u8>>,
    },
    /// The engine's status snapshot (the status region's bytes).
    Status(Vec<u8>),
    /// The previous run ended; the message's epoch is the new run.
    Run {
        /// The run that ended.
        old_epoch: u64,
        /// Its last sequence the bridge read (or knew of).
        old_last_seq: u64,
        /// It stopped cleanly: nothing after `old_last_seq` existed.
        clean: bool,
    },
}

/// A decoded message: the run, the ring position after it, and what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// The engine run (ring epoch).
    pub epoch: u64,
    /// The last ring sequence of `epoch` covered once this message is stored.
    pub pos: u64,
    /// The content.
    pub body: Body,
}

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than its header or its body needs.
    #[error("message of {len} bytes is too short for its {what}")]
    Short {
        /// Payload length.
        len: usize,
        /// What did not fit.
        what: &'static str,
    },
    /// A tag this version does not know.
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
}

/// The JetStream stream holding environment `env`'s ring: `IB_<ENV>`.
pub fn stream_name(env: &str) -> String {
    format!("IB_{}", env.to_ascii_uppercase())
}

/// Every subject of environment `env` (the stream's subject filter).
pub fn all_subjects(env: &str) -> String {
    format!("ib.{env}.>")
}

/// True when `env` can be a subject token and part of a stream name.
pub fn valid_env(env: &str) -> bool {
    !env.is_empty()
        && env
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The subject of a record: `ib.<env>.<conId>.<kind>` (conId 0 for system records).
pub fn record_subject(env: &str, rec: &Record) -> String {
    let kind = RecordKind::from_u8(rec.kind).map_or("unknown", RecordKind::name);
    format!("ib.{env}.{}.{kind}", rec.instrument_id)
}

/// The subject of a batch of records (mixed instruments: per-instrument subjects would
/// split the ring's order): `ib.<env>.batch`.
pub fn batch_subject(env: &str) -> String {
    format!("ib.{env}.batch")
}

/// The message id of a batch: run, first and last sequence.
pub fn batch_id(epoch: u64, first: u64, last: u64) -> String {
    format!("{epoch:016x}.{first}-{last}")
}

/// The subject of a hole (a gap the bridge saw): `ib.<env>.0.gap`.
pub fn hole_subject(env: &str) -> String {
    format!("ib.{env}.0.gap")
}

/// The subject of strings: `ib.<env>.strings`.
pub fn strings_subject(env: &str) -> String {
    format!("ib.{env}.strings")
}

/// The subject of status snapshots: `ib.<env>.status`.
pub fn status_subject(env: &str) -> String {
    format!("ib.{env}.status")
}

/// The subject of run changes: `ib.<env>.run`.
pub fn run_subject(env: &str) -> String {
    format!("ib.{env}.run")
}

/// The JetStream message id (`Nats-Msg-Id`) of a record or hole starting at `seq` of run
/// `epoch`: the same record always gets the same id, so a republished one is dropped.
pub fn msg_id(epoch: u64, seq: u64) -> String {
    format!("{epoch:016x}.{seq}")
}

fn header(out: &mut Vec<u8>, tag: u8, epoch: u64, pos: u64) {
    out.push(tag);
    out.extend_from_slice(&[0; 7]);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&pos.to_le_bytes());
}

/// Encodes a batch of records (a [`Body::Records`] message) straight from a slice.
pub fn encode_records(epoch: u64, pos: u64, rs: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + rs.len() * 64);
    header(&mut out, TAG_RECORDS, epoch, pos);
    for r in rs {
        out.extend_from_slice(r.as_bytes_ref());
    }
    out
}

/// Splits `rs` into batches of at most `max` records with consecutive sequences.
pub fn batches(rs: &[Record], max: usize) -> impl Iterator<Item = &[Record]> {
    let max = max.max(1);
    let mut rest = rs;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut n = 1;
        while n < rest.len().min(max) && rest[n].seq == rest[n - 1].seq + 1 {
            n += 1;
        }
        let (b, r) = rest.split_at(n);
        rest = r;
        Some(b)
    })
}

/// Encodes `msg`.
pub fn encode(msg: &Msg) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 64);
    match &msg.body {
        Body::Record(r) => {
            header(&mut out, TAG_RECORD, msg.epoch, msg.pos);
            out.extend_from_slice(r.as_bytes_ref());
        }
        Body::Records(rs) => return encode_records(msg.epoch, msg.pos, rs),
        Body::Hole {
            first,
            last,
            t0_ns,
            t1_ns,
        } => {
            header(&mut out, TAG_HOLE, msg.epoch, msg.pos);
            for w in [*first, *last, *t0_ns as u64, *t1_ns as u64] {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        Body::Strings { first_id, strings } => {
            header(&mut out, TAG_STRINGS, msg.epoch, msg.pos);
            out.extend_from_slice(&first_id.to_le_bytes());
            out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
            for s in strings {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s);
            }
        }
        Body::Status(bytes) => {
            header(&mut out, TAG_STATUS, msg.epoch, msg.pos);
            out.extend_from_slice(bytes);
        }
        Body::Run {
            old_epoch,
            old_last_seq,
            clean,
        } => {
            header(&mut out, TAG_RUN, msg.epoch, msg.pos);
            out.extend_from_slice(&old_epoch.to_le_bytes());
            out.extend_from_slice(&old_last_seq.to_le_bytes());
            out.push(u8::from(*clean));
        }
    }
    out
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

/// Decodes a payload.
pub fn decode(b: &[u8]) -> Result<Msg, WireError> {
    let short = |what| WireError::Short { len: b.len(), what };
    if b.len() < HEADER_LEN {
        return Err(short("header"));
    }
    let (epoch, pos) = (u64_at(b, 8), u64_at(b, 16));
    let body = &b[HEADER_LEN..];
    let body = match b[0] {
        TAG_RECORD => {
            let arr: &[u8; 64] = body.try_into().map_err(|_| short("record"))?;
            Body::Record(Record::from_bytes_array(arr))
        }
        TAG_RECORDS => {
            if body.is_empty() || !body.len().is_multiple_of(64) {
                return Err(short("records"));
            }
            Body::Records(
                body.chunks_exact(64)
                    .map(|c| Record::from_bytes_array(c.try_into().expect("64 bytes")))
                    .collect(),
            )
        }
        TAG_HOLE => {
            if body.len() != 32 {
                return Err(short("hole"));
            }
            Body::Hole {
                first: u64_at(body, 0),
                last: u64_at(body, 8),
                t0_ns: u64_at(body, 16) as i64,
                t1_ns: u64_at(body, 24) as i64,
            }
        }
        TAG_STRINGS => {
            if body.len() < 8 {
                return Err(short("strings"));
            }
            let first_id = u32_at(body, 0);
            let n = u32_at(body, 4) as usize;
            let mut strings = Vec::with_capacity(n.min(body.len() / 4));
            let mut off = 8;
            for _ in 0..n {
                if body.len() < off + 4 {
                    return Err(short("strings"));
                }
                let len = u32_at(body, off) as usize;
                off += 4;
                let s = body.get(off..off + len).ok_or_else(|| short("strings"))?;
                strings.push(s.to_vec());
                off += len;
            }
            Body::Strings { first_id, strings }
        }
        TAG_STATUS => Body::Status(body.to_vec()),
        TAG_RUN => {
            if body.len() != 17 {
                return Err(short("run"));
            }
            Body::Run {
                old_epoch: u64_at(body, 0),
                old_last_seq: u64_at(body, 8),
                clean: body[16] != 0,
            }
        }
        t => return Err(WireError::UnknownTag(t)),
    };
    Ok(Msg { epoch, pos, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<Msg> {
        let mut r = Record::mid_point(265_598, 7, 123_000_000_000);
        r.seq = 42;
        vec![
            Msg {
                epoch: 9,
                pos: 42,
                body: Body::Record(r),
            },
            Msg {
                epoch: 9,
                pos: 44,
                body: Body::Records(vec![
                    r,
                    {
                        let mut b = r;
                        b.seq = 43;
                        b
                    },
                    {
                        let mut b = r;
                        b.seq = 44;
                        b
                    },
                ]),
            },
            Msg {
                epoch: 9,
                pos: 80,
                body: Body::Hole {
                    first: 43,
                    last: 80,
                    t0_ns: 1,
                    t1_ns: 2,
                },
            },
            Msg {
                epoch: 9,
                pos: 80,
                body: Body::Strings {
                    first_id: 3,
                    strings: vec![b"ISLAND".to_vec(), Vec::new(), b"ARCA".to_vec()],
                },
            },
            Msg {
                epoch: 9,
                pos: 80,
                body: Body::Status(vec![1, 2, 3]),
            },
            Msg {
                epoch: 10,
                pos: 0,
                body: Body::Run {
                    old_epoch: 9,
                    old_last_seq: 80,
                    clean: true,
                },
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in all_kinds() {
            assert_eq!(decode(&encode(&m)).unwrap(), m);
        }
    }

    #[test]
    fn truncated_and_unknown_payloads_are_errors_not_panics() {
        for m in all_kinds() {
            let b = encode(&m);
            for cut in 0..b.len() {
                if let Ok(d) = decode(&b[..cut]) {
                    // Only a status body (opaque bytes) or a batch cut at a record's end
                    // can parse; a cut batch is shorter, never different.
                    match (&d.body, &m.body) {
                        (Body::Status(_), _) => {}
                        (Body::Records(got), Body::Records(all)) => {
                            assert!(got.len() < all.len() && all.starts_with(got), "{cut}")
                        }
                        _ => panic!("{cut}: {d:?}"),
                    }
                }
            }
        }
        let mut b = encode(&all_kinds()[0]);
        b[0] = 99;
        assert_eq!(decode(&b), Err(WireError::UnknownTag(99)));
    }

    #[test]
    fn batches_are_bounded_and_consecutive() {
        let rec = |seq| {
            let mut r = Record::mid_point(1, 1, 1);
            r.seq = seq;
            r
        };
        let rs: Vec<Record> = [1, 2, 3, 4, 5, 9, 10, 12].map(rec).to_vec();
        let seqs: Vec<Vec<u64>> = batches(&rs, 3)
            .map(|b| b.iter().map(|r| r.seq).collect())
            .collect();
        assert_eq!(seqs, vec![vec![1, 2, 3], vec![4, 5], vec![9, 10], vec![12]]);
        assert_eq!(batches(&[], 8).count(), 0);
        assert_eq!(batches(&rs, 0).count(), rs.len(), "0 is taken as 1");
    }

    #[test]
    fn subjects_and_ids() {
        let mut r = Record::mid_point(265_598, 7, 1);
        r.seq = 5;
        assert_eq!(record_subject("paper", &r), "ib.paper.265598.mid_point");
        assert_eq!(stream_name("paper"), "IB_PAPER");
        assert_eq!(msg_id(0xab, 5), "00000000000000ab.5");
        assert_eq!(batch_id(0xab, 5, 9), "00000000000000ab.5-9");
        assert_eq!(batch_subject("paper"), "ib.paper.batch");
        assert!(valid_env("development") && !valid_env("a.b") && !valid_env("a b"));
    }
}
