//! The hot path: tick frames decoded straight into [`Record`]s with no allocation.
//!
//! tickPrice (with its size), tickSize, tickString, tickGeneric and tick-by-tick frames in
//! either form become one record each; strings go through an [`Interner`]. Delayed tick
//! ids (66..=76, 88) map to their live ids with [`flags::DELAYED`] set. Everything else
//! falls back to [`ServerMsg::decode`] via [`Decoder`], which also counts unknown ids.

use super::contract::{Get, ProtoProblem};
use super::decimal::{self, PRICE_DIGITS};
use super::error::{DecodeError, FieldProblem};
use super::frame::{Body, Frame};
use super::msg::ServerMsg;
use super::msg::ids::incoming as id;
use super::proto::Reader;
use super::text::Fields;
use crate::ipc::{Record, RecordKind, UNDEF_I64, flags};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Turns strings (exchange, conditions, tickString values) into ids the record can hold.
/// Id 0 must be the empty string.
pub trait Interner {
    /// The id of `s`, adding it if new.
    fn intern(&mut self, s: &[u8]) -> u32;
}

/// The live tick type for `t` and whether `t` was a delayed id.
#[inline]
pub fn live_tick_type(t: i32) -> (i32, bool) {
    match t {
        66 => (1, true),  // delayed bid
        67 => (2, true),  // delayed ask
        68 => (4, true),  // delayed last
        69 => (0, true),  // delayed bid size
        70 => (3, true),  // delayed ask size
        71 => (5, true),  // delayed last size
        72 => (6, true),  // delayed high
        73 => (7, true),  // delayed low
        74 => (8, true),  // delayed volume
        75 => (9, true),  // delayed close
        76 => (14, true), // delayed open
        88 => (45, true), // delayed last timestamp
        _ => (t, false),
    }
}

/// Set `rec`'s kind, tick type and flags for an L1 tick of IB type `t`.
#[inline]
fn l1_head(rec: &mut Record, kind: RecordKind, t: i32, msg_id: u32) -> Result<(), DecodeError> {
    let (live, delayed) = live_tick_type(t);
    let tt = u8::try_from(live).map_err(|_| DecodeError::Field {
        msg_id,
        index: 2,
        problem: FieldProblem::OutOfRange,
    })?;
    rec.kind = kind as u8;
    rec.tick_type = tt;
    rec.flags = if delayed { flags::DELAYED } else { 0 };
    rec.ts_event = UNDEF_I64;
    Ok(())
}

#[inline]
fn price_flags(mask: i32) -> u16 {
    let mut f = 0;
    if mask & 1 != 0 {
        f |= flags::CAN_AUTO_EXECUTE;
    }
    if mask & 2 != 0 {
        f |= flags::L1_PAST_LIMIT;
    }
    if mask & 4 != 0 {
        f |= flags::PRE_OPEN;
    }
    f
}

#[inline]
fn secs_to_ns(t: i64, msg_id: u32) -> Result<i64, DecodeError> {
    t.checked_mul(1_000_000_000).ok_or(DecodeError::Field {
        msg_id,
        index: 2,
        problem: FieldProblem::OutOfRange,
    })
}

/// A generic tick value as 1e-9 fixed point: exact from decimal text, rounded from a
/// double; `UNDEF_I64` when it cannot be represented (infinite or beyond ±9.2e9).
#[inline]
fn generic_text(b: &[u8]) -> Option<i64> {
    if b.is_empty() {
        return Some(UNDEF_I64);
    }
    decimal::parse_fixed(b, PRICE_DIGITS).or_else(|| {
        super::text::parse_f64(b)
            .map(|x| decimal::f64_to_fixed(x, PRICE_DIGITS).unwrap_or(UNDEF_I64))
    })
}

/// Decode a tick frame into `rec` (kind, tick_type, flags, ts_event, body; the caller sets
/// seq, ts_recv and instrument_id from the request id). Returns the request id, or
/// `Ok(None)` when the frame is not a tick message. Never allocates (the interner may, for
/// strings it has not seen).
///
/// Flags set here come from the frame alone: `DELAYED` for delayed tick ids and the
/// tick's attributes. What depends on the subscription (`DELAYED`/`FROZEN` from its
/// marketDataType, `SNAPSHOT`, `STALE`) the caller ORs in.
#[inline]
pub fn decode_tick<I: Interner + ?Sized>(
    frame: &Frame<'_>,
    interner: &mut I,
    rec: &mut Record,
) -> Result<Option<i32>, DecodeError> {
    match frame.body {
        Body::Text(b) => text_tick(frame.msg_id, Fields::new(frame.msg_id, b), interner, rec),
        Body::Proto(b) => {
            proto_tick(frame.msg_id, b, interner, rec).map_err(|p| p.at(frame.msg_id))
        }
    }
}

fn text_tick<I: Interner + ?Sized>(
    msg_id: u32,
    mut f: Fields<'_>,
    interner: &mut I,
    rec: &mut Record,
) -> Result<Option<i32>, DecodeError> {
    let f = &mut f;
    let req_id;
    match msg_id {
        id::TICK_PRICE => {
            let ver = f.i32()?;
            req_id = f.i32()?;
            let t = f.i32()?;
            let price = f.price()?;
            let size = if ver >= 2 && !f.is_empty() {
                f.size()?
            } else {
                UNDEF_I64
            };
            let mask = if ver >= 3 && !f.is_empty() {
                f.i32()?
            } else {
                0
            };
            l1_head(rec, RecordKind::L1Price, t, msg_id)?;
            rec.flags |= price_flags(mask);
            rec.body = [price, size, 0, 0];
        }
        id::TICK_SIZE => {
            f.skip_field()?;
            req_id = f.i32()?;
            let t = f.i32()?;
            let size = f.size()?;
            l1_head(rec, RecordKind::L1Size, t, msg_id)?;
            rec.body = [size, 0, 0, 0];
        }
        id::TICK_STRING => {
            f.skip_field()?;
            req_id = f.i32()?;
            let t = f.i32()?;
            let s = f.bytes()?;
            l1_head(rec, RecordKind::L1String, t, msg_id)?;
            rec.body = [i64::from(interner.intern(s)), 0, 0, 0];
        }
        id::TICK_GENERIC => {
            f.skip_field()?;
            req_id = f.i32()?;
            let t = f.i32()?;
            let b = f.bytes()?;
            let v = generic_text(b).ok_or(DecodeError::Field {
                msg_id,
                index: 3,
                problem: FieldProblem::BadFloat,
            })?;
            l1_head(rec, RecordKind::L1Generic, t, msg_id)?;
            rec.body = [v, 0, 0, 0];
        }
        id::TICK_BY_TICK => {
            req_id = f.i32()?;
            let tt = f.i32()?;
            let ts = secs_to_ns(f.i64()?, msg_id)?;
            rec.ts_event = ts;
            rec.tick_type = 0;
            match tt {
                1 | 2 => {
                    let price = f.price()?;
                    let size = f.size()?;
                    let mask = f.i32()?;
                    let ex = interner.intern(f.bytes()?);
                    let cond = interner.intern(f.bytes()?);
                    rec.kind = if tt == 1 {
                        RecordKind::TbtLast
                    } else {
                        RecordKind::TbtAllLast
                    } as u8;
                    rec.flags = trade_flags(mask & 1 != 0, mask & 2 != 0);
                    rec.body = [price, size, i64::from(ex) | (i64::from(cond) << 32), 0];
                }
                3 => {
                    let (bp, ap, bs, asz) = (f.price()?, f.price()?, f.size()?, f.size()?);
                    let mask = f.i32()?;
                    rec.kind = RecordKind::TbtBidAsk as u8;
                    rec.flags = quote_flags(mask & 1 != 0, mask & 2 != 0);
                    rec.body = [bp, ap, bs, asz];
                }
                4 => {
                    let mid = f.price()?;
                    rec.kind = RecordKind::TbtMidPoint as u8;
                    rec.flags = 0;
                    rec.body = [mid, 0, 0, 0];
                }
                _ => {
                    return Err(DecodeError::Field {
                        msg_id,
                        index: 1,
                        problem: FieldProblem::OutOfRange,
                    });
                }
            }
        }
        _ => return Ok(None),
    }
    Ok(Some(req_id))
}

#[inline]
fn trade_flags(past_limit: bool, unreported: bool) -> u16 {
    (if past_limit { flags::PAST_LIMIT } else { 0 })
        | (if unreported { flags::UNREPORTED } else { 0 })
}

#[inline]
fn quote_flags(bid_past_low: bool, ask_past_high: bool) -> u16 {
    (if bid_past_low { flags::BID_PAST_LOW } else { 0 })
        | (if ask_past_high {
            flags::ASK_PAST_HIGH
        } else {
            0
        })
}

fn proto_tick<I: Interner + ?Sized>(
    msg_id: u32,
    b: &[u8],
    interner: &mut I,
    rec: &mut Record,
) -> Result<Option<i32>, ProtoProblem> {
    let mut r = Reader::new(b);
    let (mut req_id, mut t) = (0i32, 0i32);
    let bad_type = ProtoProblem::Field(2, FieldProblem::OutOfRange);
    match msg_id {
        id::TICK_PRICE => {
            let (mut price, mut size, mut mask) = (UNDEF_I64, UNDEF_I64, 0);
            while let Some((f, v)) = r.next_field()? {
                match f {
                    1 => req_id = v.gi32(f)?,
                    2 => t = v.gi32(f)?,
                    3 => price = v.gprice(f)?,
                    4 => size = v.gsize(f)?,
                    5 => mask = v.gi32(f)?,
                    _ => {}
                }
            }
            l1_head(rec, RecordKind::L1Price, t, msg_id).map_err(|_| bad_type)?;
            rec.flags |= price_flags(mask);
            rec.body = [price, size, 0, 0];
        }
        id::TICK_SIZE => {
            let mut size = UNDEF_I64;
            while let Some((f, v)) = r.next_field()? {
                match f {
                    1 => req_id = v.gi32(f)?,
                    2 => t = v.gi32(f)?,
                    3 => size = v.gsize(f)?,
                    _ => {}
                }
            }
            l1_head(rec, RecordKind::L1Size, t, msg_id).map_err(|_| bad_type)?;
            rec.body = [size, 0, 0, 0];
        }
        id::TICK_STRING => {
            let mut s: &[u8] = &[];
            while let Some((f, v)) = r.next_field()? {
                match f {
                    1 => req_id = v.gi32(f)?,
                    2 => t = v.gi32(f)?,
                    3 => s = v.gbytes(f)?,
                    _ => {}
                }
            }
            l1_head(rec, RecordKind::L1String, t, msg_id).map_err(|_| bad_type)?;
            rec.body = [i64::from(interner.intern(s)), 0, 0, 0];
        }
        id::TICK_GENERIC => {
            let mut val = UNDEF_I64;
            while let Some((f, v)) = r.next_field()? {
                match f {
                    1 => req_id = v.gi32(f)?,
                    2 => t = v.gi32(f)?,
                    3 => val = decimal::f64_to_fixed(v.gf64(f)?, PRICE_DIGITS).unwrap_or(UNDEF_I64),
                    _ => {}
                }
            }
            l1_head(rec, RecordKind::L1Generic, t, msg_id).map_err(|_| bad_type)?;
            rec.body = [val, 0, 0, 0];
        }
        id::TICK_BY_TICK => {
            let mut tt = 0;
            let mut seen = false;
            while let Some((f, v)) = r.next_field()? {
                match f {
                    1 => req_id = v.gi32(f)?,
                    2 => tt = v.gi32(f)?,
                    3..=5 => {
                        proto_tbt(f, v.gbytes(f)?, interner, rec)?;
                        seen = true;
                    }
                    _ => {}
                }
            }
            if !seen {
                return Err(ProtoProblem::Field(3, FieldProblem::Missing));
            }
            let kind = rec.kind;
            rec.kind = match (tt, kind) {
                (1, k) if k == RecordKind::TbtLast as u8 => k,
                (2, k) if k == RecordKind::TbtLast as u8 => RecordKind::TbtAllLast as u8,
                (3, k) if k == RecordKind::TbtBidAsk as u8 => k,
                (4, k) if k == RecordKind::TbtMidPoint as u8 => k,
                _ => return Err(bad_type),
            };
        }
        _ => return Ok(None),
    }
    Ok(Some(req_id))
}

fn proto_tbt<I: Interner + ?Sized>(
    which: u32,
    b: &[u8],
    interner: &mut I,
    rec: &mut Record,
) -> Result<(), ProtoProblem> {
    let mut r = Reader::new(b);
    let mut time = 0i64;
    let (mut a1, mut a2) = (false, false);
    let mut body = [UNDEF_I64, UNDEF_I64, 0, 0];
    if which == 4 {
        body = [UNDEF_I64; 4];
    }
    let (mut ex, mut cond) = (0u32, 0u32);
    while let Some((f, v)) = r.next_field()? {
        match (which, f) {
            (_, 1) => time = v.gi64(f)?,
            (3 | 4, 2) => {
                let mut r2 = Reader::new(v.gbytes(f)?);
                while let Some((g, x)) = r2.next_field()? {
                    match g {
                        1 => a1 = x.gbool(g)?,
                        2 => a2 = x.gbool(g)?,
                        _ => {}
                    }
                }
            }
            (3 | 4, 3) | (5, 2) => body[0] = v.gprice(f)?,
            (3, 4) => body[1] = v.gsize(f)?,
            (3, 5) => ex = interner.intern(v.gbytes(f)?),
            (3, 6) => cond = interner.intern(v.gbytes(f)?),
            (4, 4) => body[1] = v.gprice(f)?,
            (4, 5) => body[2] = v.gsize(f)?,
            (4, 6) => body[3] = v.gsize(f)?,
            _ => {}
        }
    }
    rec.ts_event = time
        .checked_mul(1_000_000_000)
        .ok_or(ProtoProblem::Field(1, FieldProblem::OutOfRange))?;
    rec.tick_type = 0;
    match which {
        3 => {
            rec.kind = RecordKind::TbtLast as u8;
            rec.flags = trade_flags(a1, a2);
            body[2] = i64::from(ex) | (i64::from(cond) << 32);
        }
        4 => {
            rec.kind = RecordKind::TbtBidAsk as u8;
            rec.flags = quote_flags(a1, a2);
        }
        _ => {
            rec.kind = RecordKind::TbtMidPoint as u8;
            rec.flags = 0;
            body = [body[0], 0, 0, 0];
        }
    }
    rec.body = body;
    Ok(())
}

/// An error message borrowed from its frame (no allocation): what the engine needs to
/// react to farm notices, rejections and connectivity codes on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorRef<'a> {
    /// Request id (-1 = none).
    pub req_id: i32,
    /// IB error code.
    pub code: i32,
    /// Text (raw bytes as sent; ASCII in practice).
    pub message: &'a [u8],
    /// Advanced order reject JSON (empty below 166).
    pub advanced_order_reject_json: &'a [u8],
    /// Error time in epoch ms (0 below 194).
    pub error_time_ms: i64,
}

/// Decode an error frame (either form) without allocating; `Ok(None)` for other messages.
pub fn decode_error<'a>(
    frame: &Frame<'a>,
    version: u32,
) -> Result<Option<ErrorRef<'a>>, DecodeError> {
    if frame.msg_id != id::ERR_MSG {
        return Ok(None);
    }
    match frame.body {
        Body::Text(b) => {
            let mut f = Fields::new(frame.msg_id, b);
            let e = if version >= super::version::ERROR_TIME {
                ErrorRef {
                    req_id: f.i32()?,
                    code: f.i32()?,
                    message: f.bytes()?,
                    advanced_order_reject_json: f.bytes()?,
                    error_time_ms: f.i64()?,
                }
            } else {
                f.skip_field()?;
                let (req_id, code, message) = (f.i32()?, f.i32()?, f.bytes()?);
                let json = if version >= super::version::ADVANCED_ORDER_REJECT {
                    f.bytes()?
                } else {
                    &[][..]
                };
                ErrorRef {
                    req_id,
                    code,
                    message,
                    advanced_order_reject_json: json,
                    error_time_ms: 0,
                }
            };
            Ok(Some(e))
        }
        Body::Proto(b) => {
            let mut e = ErrorRef {
                req_id: 0,
                code: 0,
                message: &[],
                advanced_order_reject_json: &[],
                error_time_ms: 0,
            };
            let mut r = Reader::new(b);
            let res: Result<(), ProtoProblem> = (|| {
                while let Some((f, v)) = r.next_field()? {
                    match f {
                        1 => e.req_id = v.gi32(f)?,
                        2 => e.error_time_ms = v.gi64(f)?,
                        3 => e.code = v.gi32(f)?,
                        4 => e.message = v.gbytes(f)?,
                        5 => e.advanced_order_reject_json = v.gbytes(f)?,
                        _ => {}
                    }
                }
                Ok(())
            })();
            res.map_err(|p| p.at(frame.msg_id))?;
            Ok(Some(e))
        }
    }
}

/// Counters of a [`Decoder`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecodeStats {
    /// Tick frames decoded into records.
    pub ticks: u64,
    /// Other messages decoded.
    pub messages: u64,
    /// Frames with an unknown message id, skipped.
    pub unknown_skipped: u64,
    /// Frames that failed to decode (typed errors returned).
    pub errors: u64,
}

/// What one frame decoded to.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A tick, written into the caller's record; the request id identifies the subscription.
    Tick {
        /// Request id.
        req_id: i32,
    },
    /// Any other known message.
    Msg(ServerMsg),
    /// An unknown message id, counted and skipped.
    Skipped {
        /// Message id.
        msg_id: u32,
    },
}

/// Decodes server frames at one negotiated version: ticks into records (hot path), the
/// rest into [`ServerMsg`], unknown ids counted and skipped.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Negotiated server version.
    pub version: u32,
    /// Counters.
    pub stats: DecodeStats,
}

impl Decoder {
    /// A decoder for a connection at `version`.
    pub fn new(version: u32) -> Self {
        Decoder {
            version,
            stats: DecodeStats::default(),
        }
    }

    /// Decode one frame. A tick fills `rec` (see [`decode_tick`]).
    pub fn decode<I: Interner + ?Sized>(
        &mut self,
        frame: &Frame<'_>,
        interner: &mut I,
        rec: &mut Record,
    ) -> Result<Decoded, DecodeError> {
        match decode_tick(frame, interner, rec) {
            Ok(Some(req_id)) => {
                self.stats.ticks += 1;
                return Ok(Decoded::Tick { req_id });
            }
            Ok(None) => {}
            Err(e) => {
                self.stats.errors += 1;
                return Err(e);
            }
        }
        match ServerMsg::decode(frame, self.version) {
            Ok(m) => {
                self.stats.messages += 1;
                Ok(Decoded::Msg(m))
            }
            Err(DecodeError::UnknownMsgId { msg_id, .. }) => {
                self.stats.unknown_skipped += 1;
                Ok(Decoded::Skipped { msg_id })
            }
            Err(e) => {
                self.stats.errors += 1;
                Err(e)
            }
        }
    }
}

/// A simple growable interner (for tools, tests and benchmarks): id 0 is the empty
/// string. Strings of up to 7 bytes (exchange codes, trade conditions) are looked up by
/// their bytes packed into one integer, longer ones by an FNV-1a hash; known strings cost
/// no allocation.
#[derive(Debug, Clone)]
pub struct VecInterner {
    strings: Vec<Box<[u8]>>,
    short: HashMap<u64, u32, BuildHasherDefault<MixHash>>,
    long: HashMap<Box<[u8]>, u32, BuildHasherDefault<Fnv1a>>,
}

/// FNV-1a for byte strings.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A multiply-rotate mix for integer keys.
#[derive(Debug, Clone, Copy, Default)]
pub struct MixHash(u64);

impl Hasher for MixHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
}

/// Up to 7 bytes packed with their length in the top byte.
#[inline]
fn short_key(s: &[u8]) -> Option<u64> {
    if s.len() > 7 {
        return None;
    }
    let mut b = [0u8; 8];
    b[..s.len()].copy_from_slice(s);
    b[7] = s.len() as u8;
    Some(u64::from_le_bytes(b))
}

impl Default for VecInterner {
    fn default() -> Self {
        let mut v = VecInterner {
            strings: Vec::new(),
            short: HashMap::default(),
            long: HashMap::default(),
        };
        v.intern(b"");
        v
    }
}

impl VecInterner {
    /// The bytes of id `id`.
    pub fn get(&self, id: u32) -> Option<&[u8]> {
        self.strings.get(id as usize).map(|b| &b[..])
    }

    /// Number of strings (including the empty string).
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    /// True when only the empty string is known.
    pub fn is_empty(&self) -> bool {
        self.strings.len() <= 1
    }
}

impl Interner for VecInterner {
    #[inline]
    fn intern(&mut self, s: &[u8]) -> u32 {
        let key = short_key(s);
        let found = match key {
            Some(k) => self.short.get(&k).copied(),
            None => self.long.get(s).copied(),
        };
        if let Some(i) = found {
            return i;
        }
        let id = self.strings.len() as u32;
        self.strings.push(s.into());
        match key {
            Some(k) => {
                self.short.insert(k, id);
            }
            None => {
                self.long.insert(s.into(), id);
            }
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interner_ids_are_stable_and_zero_is_empty() {
        let mut i = VecInterner::default();
        assert_eq!(i.intern(b""), 0);
        let a = i.intern(b"NASDAQ");
        let b = i.intern(b"a longer string than seven");
        let c = i.intern(b"NASDA");
        assert_eq!(
            (i.intern(b"NASDAQ"), i.intern(b"a longer string than seven")),
            (a, b)
        );
        assert!(a != c && b != c && a != 0);
        // Same prefix, different length: different keys.
        assert_ne!(i.intern(b"A"), i.intern(b"A\0"));
        assert_eq!(i.get(b), Some(&b"a longer string than seven"[..]));
        assert_eq!(i.len(), 6);
    }
}
