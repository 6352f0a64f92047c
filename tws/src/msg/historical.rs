//! Historical ticks and the head timestamp, both directions, in both framings.
//!
//! Requests: reqHeadTimeStamp (87, from 118), cancelHeadTimestamp (90, from 123),
//! reqHistoricalTicks (96, from 130); text below 208 (PROTOBUF_HISTORICAL_DATA), protobuf from
//! it, as IB's clients choose. Answers: headTimestamp (88) and historicalTicks (96, MIDPOINT),
//! historicalTicksBidAsk (97), historicalTicksLast (98, TRADES); text below 201, protobuf from
//! it, like every server message of this codec. Decoding accepts either form.
//!
//! These live apart from [`ClientMsg`](super::ClientMsg)/[`ServerMsg`](super::ServerMsg) so the
//! streaming paths (which never see them) keep their exhaustive matches; a caller that serves
//! or asks for history tries [`HistRequest::decode`]/[`HistReply::decode`] on the ids they own.

use super::ids::{incoming as in_id, outgoing as out_id};
use super::server::{TbtQuote, TbtTrade};
use crate::tws::contract::{
    Contract, Get, ProtoProblem, put_price, put_size, read_contract_fields, read_contract_proto,
    write_contract_fields, write_contract_proto,
};
use crate::tws::error::{DecodeError, EncodeError, FieldProblem};
use crate::tws::frame::{Body, Frame, write_proto_frame, write_text_frame};
use crate::tws::proto::{Reader, Writer};
use crate::tws::text::{FieldWriter, Fields};
use crate::tws::version as v;

/// IB's documented ceiling on `numberOfTicks` (it may send more to finish the last second).
pub const MAX_TICKS_PER_REQUEST: i32 = 1000;

/// reqHistoricalTicks. Exactly one of `start`/`end` is set ("yyyymmdd hh:mm:ss[ TZ]" or
/// "yyyymmdd-hh:mm:ss" UTC); the other is "".
#[derive(Debug, Clone, PartialEq)]
pub struct HistoricalTicksRequest {
    /// Request id.
    pub req_id: i32,
    /// Contract (`include_expired` travels too).
    pub contract: Contract,
    /// startDateTime.
    pub start: String,
    /// endDateTime.
    pub end: String,
    /// numberOfTicks (at most 1000).
    pub number_of_ticks: i32,
    /// "TRADES", "BID_ASK" or "MIDPOINT".
    pub what_to_show: String,
    /// Regular trading hours only.
    pub use_rth: bool,
    /// ignoreSize.
    pub ignore_size: bool,
}

/// reqHeadTimeStamp.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadTimestampRequest {
    /// Request id.
    pub req_id: i32,
    /// Contract.
    pub contract: Contract,
    /// Regular trading hours only.
    pub use_rth: bool,
    /// "TRADES", "BID_ASK", "MIDPOINT", ...
    pub what_to_show: String,
    /// 1 = "yyyymmdd-hh:mm:ss", 2 = epoch seconds.
    pub format_date: i32,
}

/// A historical request from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum HistRequest {
    /// reqHistoricalTicks (96).
    Ticks(HistoricalTicksRequest),
    /// reqHeadTimeStamp (87).
    HeadTimestamp(HeadTimestampRequest),
    /// cancelHeadTimestamp (90).
    CancelHeadTimestamp {
        /// Request id.
        req_id: i32,
    },
}

/// One historical tick with its time (epoch seconds: IB stamps history to the second).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timed<T> {
    /// Epoch seconds.
    pub time: i64,
    /// The tick.
    pub tick: T,
}

/// A MIDPOINT historical tick (IB sends a size, always 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistMid {
    /// Price (1e-9 fixed point).
    pub price: i64,
    /// Size (1e-8 fixed point).
    pub size: i64,
}

/// The ticks of one historical answer, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistTicks {
    /// historicalTicks (96).
    MidPoint(Vec<Timed<HistMid>>),
    /// historicalTicksBidAsk (97).
    BidAsk(Vec<Timed<TbtQuote>>),
    /// historicalTicksLast (98).
    Last(Vec<Timed<TbtTrade>>),
}

impl HistTicks {
    /// Number of ticks.
    pub fn len(&self) -> usize {
        match self {
            HistTicks::MidPoint(t) => t.len(),
            HistTicks::BidAsk(t) => t.len(),
            HistTicks::Last(t) => t.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The time of tick `i`.
    pub fn time(&self, i: usize) -> Option<i64> {
        match self {
            HistTicks::MidPoint(t) => t.get(i).map(|x| x.time),
            HistTicks::BidAsk(t) => t.get(i).map(|x| x.time),
            HistTicks::Last(t) => t.get(i).map(|x| x.time),
        }
    }
}

/// A historical answer from the gateway.
#[derive(Debug, Clone, PartialEq)]
pub enum HistReply {
    /// historicalTicks / historicalTicksBidAsk / historicalTicksLast.
    Ticks {
        /// Request id.
        req_id: i32,
        /// The ticks.
        ticks: HistTicks,
        /// The last message of the request.
        done: bool,
    },
    /// headTimestamp (88).
    HeadTimestamp {
        /// Request id.
        req_id: i32,
        /// As `formatDate` asked.
        timestamp: String,
    },
}

fn out_of_range(msg_id: u32, index: u16) -> DecodeError {
    DecodeError::Field {
        msg_id,
        index,
        problem: FieldProblem::OutOfRange,
    }
}

impl HistRequest {
    /// The message id.
    pub fn msg_id(&self) -> u32 {
        match self {
            HistRequest::Ticks(_) => out_id::REQ_HISTORICAL_TICKS,
            HistRequest::HeadTimestamp(_) => out_id::REQ_HEAD_TIMESTAMP,
            HistRequest::CancelHeadTimestamp { .. } => out_id::CANCEL_HEAD_TIMESTAMP,
        }
    }

    /// The oldest server version that has this request.
    pub fn since(&self) -> u32 {
        match self {
            HistRequest::Ticks(_) => v::HISTORICAL_TICKS,
            HistRequest::HeadTimestamp(_) => v::REQ_HEAD_TIMESTAMP,
            HistRequest::CancelHeadTimestamp { .. } => v::CANCEL_HEADTIMESTAMP,
        }
    }

    /// Append this request as one whole frame at `version`.
    pub fn encode(&self, version: u32, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if version < self.since() {
            let msg = match self {
                HistRequest::Ticks(_) => "reqHistoricalTicks",
                HistRequest::HeadTimestamp(_) => "reqHeadTimeStamp",
                HistRequest::CancelHeadTimestamp { .. } => "cancelHeadTimestamp",
            };
            return Err(EncodeError::NotSupported {
                msg,
                min: self.since(),
                version,
            });
        }
        if version >= v::PROTOBUF_HISTORICAL_DATA {
            write_proto_frame(out, self.msg_id(), |w| self.write_proto(w));
        } else {
            write_text_frame(out, version, self.msg_id(), |w| self.write_text(w));
        }
        Ok(())
    }

    fn write_text(&self, w: &mut FieldWriter<'_>) {
        match self {
            HistRequest::Ticks(r) => {
                w.int(i64::from(r.req_id));
                write_contract_fields(w, &r.contract);
                w.bool(r.contract.include_expired)
                    .str(&r.start)
                    .str(&r.end)
                    .int(i64::from(r.number_of_ticks))
                    .str(&r.what_to_show)
                    .bool(r.use_rth)
                    .bool(r.ignore_size)
                    .str(""); // miscOptions
            }
            HistRequest::HeadTimestamp(r) => {
                w.int(i64::from(r.req_id));
                write_contract_fields(w, &r.contract);
                w.bool(r.contract.include_expired)
                    .bool(r.use_rth)
                    .str(&r.what_to_show)
                    .int(i64::from(r.format_date));
            }
            HistRequest::CancelHeadTimestamp { req_id } => {
                w.int(i64::from(*req_id));
            }
        }
    }

    fn write_proto(&self, w: &mut Writer<'_>) {
        match self {
            HistRequest::Ticks(r) => {
                w.i32(1, r.req_id);
                w.message(2, |w| write_contract_proto(w, &r.contract));
                w.str(3, &r.start)
                    .str(4, &r.end)
                    .i32(5, r.number_of_ticks)
                    .str(6, &r.what_to_show)
                    .bool_if(7, r.use_rth)
                    .bool_if(8, r.ignore_size);
            }
            HistRequest::HeadTimestamp(r) => {
                w.i32(1, r.req_id);
                w.message(2, |w| write_contract_proto(w, &r.contract));
                w.bool_if(3, r.use_rth)
                    .str(4, &r.what_to_show)
                    .i32(5, r.format_date);
            }
            HistRequest::CancelHeadTimestamp { req_id } => {
                w.i32(1, *req_id);
            }
        }
    }

    /// Decode a client frame if it is one of the historical requests (`Ok(None)` for any
    /// other id, which the caller hands to [`ClientMsg`](super::ClientMsg)).
    pub fn decode(frame: &Frame<'_>, version: u32) -> Result<Option<HistRequest>, DecodeError> {
        let id = frame.msg_id;
        if !matches!(
            id,
            out_id::REQ_HISTORICAL_TICKS
                | out_id::REQ_HEAD_TIMESTAMP
                | out_id::CANCEL_HEAD_TIMESTAMP
        ) {
            return Ok(None);
        }
        match frame.body {
            Body::Text(b) => Self::decode_text(id, &mut Fields::new(id, b), version).map(Some),
            Body::Proto(b) => Self::decode_proto(id, b).map(Some).map_err(|p| p.at(id)),
        }
    }

    fn decode_text(id: u32, f: &mut Fields<'_>, _version: u32) -> Result<HistRequest, DecodeError> {
        Ok(match id {
            out_id::REQ_HISTORICAL_TICKS => {
                let req_id = f.i32()?;
                let mut contract = read_contract_fields(f)?;
                contract.include_expired = f.bool()?;
                let r = HistoricalTicksRequest {
                    req_id,
                    contract,
                    start: f.string()?,
                    end: f.string()?,
                    number_of_ticks: f.i32()?,
                    what_to_show: f.string()?,
                    use_rth: f.bool()?,
                    ignore_size: f.bool()?,
                };
                // miscOptions: IB's clients send it; tolerate its absence.
                if !f.is_empty() {
                    f.skip_field()?;
                }
                HistRequest::Ticks(r)
            }
            out_id::REQ_HEAD_TIMESTAMP => {
                let req_id = f.i32()?;
                let mut contract = read_contract_fields(f)?;
                contract.include_expired = f.bool()?;
                HistRequest::HeadTimestamp(HeadTimestampRequest {
                    req_id,
                    contract,
                    use_rth: f.bool()?,
                    what_to_show: f.string()?,
                    format_date: f.i32()?,
                })
            }
            _ => HistRequest::CancelHeadTimestamp { req_id: f.i32()? },
        })
    }

    fn decode_proto(id: u32, b: &[u8]) -> Result<HistRequest, ProtoProblem> {
        let mut r = Reader::new(b);
        Ok(match id {
            out_id::REQ_HISTORICAL_TICKS => {
                let mut q = HistoricalTicksRequest {
                    req_id: 0,
                    contract: Contract::default(),
                    start: String::new(),
                    end: String::new(),
                    number_of_ticks: 0,
                    what_to_show: String::new(),
                    use_rth: false,
                    ignore_size: false,
                };
                while let Some((f, x)) = r.next_field()? {
                    match f {
                        1 => q.req_id = x.gi32(f)?,
                        2 => q.contract = read_contract_proto(x.gbytes(f)?)?,
                        3 => q.start = x.gstr(f)?.to_owned(),
                        4 => q.end = x.gstr(f)?.to_owned(),
                        5 => q.number_of_ticks = x.gi32(f)?,
                        6 => q.what_to_show = x.gstr(f)?.to_owned(),
                        7 => q.use_rth = x.gbool(f)?,
                        8 => q.ignore_size = x.gbool(f)?,
                        _ => {} // 9 miscOptions: nothing IB documents for ticks
                    }
                }
                HistRequest::Ticks(q)
            }
            out_id::REQ_HEAD_TIMESTAMP => {
                let mut q = HeadTimestampRequest {
                    req_id: 0,
                    contract: Contract::default(),
                    use_rth: false,
                    what_to_show: String::new(),
                    format_date: 0,
                };
                while let Some((f, x)) = r.next_field()? {
                    match f {
                        1 => q.req_id = x.gi32(f)?,
                        2 => q.contract = read_contract_proto(x.gbytes(f)?)?,
                        3 => q.use_rth = x.gbool(f)?,
                        4 => q.what_to_show = x.gstr(f)?.to_owned(),
                        5 => q.format_date = x.gi32(f)?,
                        _ => {}
                    }
                }
                HistRequest::HeadTimestamp(q)
            }
            _ => {
                let mut req_id = 0;
                while let Some((f, x)) = r.next_field()? {
                    if f == 1 {
                        req_id = x.gi32(f)?;
                    }
                }
                HistRequest::CancelHeadTimestamp { req_id }
            }
        })
    }
}

impl HistReply {
    /// The message id.
    pub fn msg_id(&self) -> u32 {
        match self {
            HistReply::Ticks { ticks, .. } => match ticks {
                HistTicks::MidPoint(_) => in_id::HISTORICAL_TICKS,
                HistTicks::BidAsk(_) => in_id::HISTORICAL_TICKS_BID_ASK,
                HistTicks::Last(_) => in_id::HISTORICAL_TICKS_LAST,
            },
            HistReply::HeadTimestamp { .. } => in_id::HEAD_TIMESTAMP,
        }
    }

    /// Append this answer as one whole frame at `version` (protobuf from 201, as every
    /// server message of this codec).
    pub fn encode(&self, version: u32, out: &mut Vec<u8>) {
        if version >= v::MIN_SERVER_VER_PROTOBUF {
            write_proto_frame(out, self.msg_id(), |w| self.write_proto(w));
        } else {
            write_text_frame(out, version, self.msg_id(), |w| self.write_text(w));
        }
    }

    fn write_text(&self, w: &mut FieldWriter<'_>) {
        match self {
            HistReply::HeadTimestamp { req_id, timestamp } => {
                w.int(i64::from(*req_id)).str(timestamp);
            }
            HistReply::Ticks {
                req_id,
                ticks,
                done,
            } => {
                w.int(i64::from(*req_id)).int(ticks.len() as i64);
                match ticks {
                    HistTicks::MidPoint(t) => {
                        for x in t {
                            // The second field is unused ("for consistency" in IB's decoder).
                            w.int(x.time).int(0).price(x.tick.price).size(x.tick.size);
                        }
                    }
                    HistTicks::BidAsk(t) => {
                        for x in t {
                            // Not tickByTick's order: bit 0 is askPastHigh here.
                            let q = &x.tick;
                            let mask =
                                i64::from(q.ask_past_high) | (i64::from(q.bid_past_low) << 1);
                            w.int(x.time)
                                .int(mask)
                                .price(q.bid_price)
                                .price(q.ask_price)
                                .size(q.bid_size)
                                .size(q.ask_size);
                        }
                    }
                    HistTicks::Last(t) => {
                        for x in t {
                            let q = &x.tick;
                            let mask = i64::from(q.past_limit) | (i64::from(q.unreported) << 1);
                            w.int(x.time)
                                .int(mask)
                                .price(q.price)
                                .size(q.size)
                                .str(&q.exchange)
                                .str(&q.special_conditions);
                        }
                    }
                }
                w.bool(*done);
            }
        }
    }

    fn write_proto(&self, w: &mut Writer<'_>) {
        match self {
            HistReply::HeadTimestamp { req_id, timestamp } => {
                w.i32(1, *req_id).str(2, timestamp);
            }
            HistReply::Ticks {
                req_id,
                ticks,
                done,
            } => {
                w.i32(1, *req_id);
                match ticks {
                    HistTicks::MidPoint(t) => {
                        for x in t {
                            w.message(2, |w| {
                                w.i64(1, x.time);
                                put_price(w, 2, x.tick.price);
                                put_size(w, 3, x.tick.size);
                            });
                        }
                    }
                    HistTicks::BidAsk(t) => {
                        for x in t {
                            let q = &x.tick;
                            w.message(2, |w| {
                                w.i64(1, x.time);
                                w.message(2, |w| {
                                    w.bool_if(1, q.bid_past_low).bool_if(2, q.ask_past_high);
                                });
                                put_price(w, 3, q.bid_price);
                                put_price(w, 4, q.ask_price);
                                put_size(w, 5, q.bid_size);
                                put_size(w, 6, q.ask_size);
                            });
                        }
                    }
                    HistTicks::Last(t) => {
                        for x in t {
                            let q = &x.tick;
                            w.message(2, |w| {
                                w.i64(1, x.time);
                                w.message(2, |w| {
                                    w.bool_if(1, q.past_limit).bool_if(2, q.unreported);
                                });
                                put_price(w, 3, q.price);
                                put_size(w, 4, q.size);
                                w.str(5, &q.exchange).str(6, &q.special_conditions);
                            });
                        }
                    }
                }
                w.bool_if(3, *done);
            }
        }
    }

    /// Decode a server frame if it is one of the historical answers (`Ok(None)` for any other
    /// id).
    pub fn decode(frame: &Frame<'_>, version: u32) -> Result<Option<HistReply>, DecodeError> {
        let id = frame.msg_id;
        if !matches!(
            id,
            in_id::HEAD_TIMESTAMP
                | in_id::HISTORICAL_TICKS
                | in_id::HISTORICAL_TICKS_BID_ASK
                | in_id::HISTORICAL_TICKS_LAST
        ) {
            return Ok(None);
        }
        let _ = version; // no layout branches between 130 and 200
        match frame.body {
            Body::Text(b) => Self::decode_text(id, &mut Fields::new(id, b)).map(Some),
            Body::Proto(b) => Self::decode_proto(id, b).map(Some).map_err(|p| p.at(id)),
        }
    }

    fn decode_text(id: u32, f: &mut Fields<'_>) -> Result<HistReply, DecodeError> {
        let req_id = f.i32()?;
        if id == in_id::HEAD_TIMESTAMP {
            return Ok(HistReply::HeadTimestamp {
                req_id,
                timestamp: f.string()?,
            });
        }
        let n = f.i32()?;
        // Each tick takes at least 4 fields: a count beyond what is left is a lie.
        if n < 0 || n as usize > f.remaining() {
            return Err(out_of_range(id, f.index() - 1));
        }
        let n = n as usize;
        let ticks = match id {
            in_id::HISTORICAL_TICKS => {
                let mut t = Vec::with_capacity(n);
                for _ in 0..n {
                    let time = f.i64()?;
                    f.skip_field()?;
                    let (price, size) = (f.price()?, f.size()?);
                    t.push(Timed {
                        time,
                        tick: HistMid { price, size },
                    });
                }
                HistTicks::MidPoint(t)
            }
            in_id::HISTORICAL_TICKS_BID_ASK => {
                let mut t = Vec::with_capacity(n);
                for _ in 0..n {
                    let time = f.i64()?;
                    let mask = f.i32()?;
                    let (bid_price, ask_price, bid_size, ask_size) =
                        (f.price()?, f.price()?, f.size()?, f.size()?);
                    t.push(Timed {
                        time,
                        tick: TbtQuote {
                            bid_price,
                            ask_price,
                            bid_size,
                            ask_size,
                            ask_past_high: mask & 1 != 0,
                            bid_past_low: mask & 2 != 0,
                        },
                    });
                }
                HistTicks::BidAsk(t)
            }
            _ => {
                let mut t = Vec::with_capacity(n);
                for _ in 0..n {
                    let time = f.i64()?;
                    let mask = f.i32()?;
                    let (price, size) = (f.price()?, f.size()?);
                    t.push(Timed {
                        time,
                        tick: TbtTrade {
                            price,
                            size,
                            past_limit: mask & 1 != 0,
                            unreported: mask & 2 != 0,
                            exchange: f.string()?,
                            special_conditions: f.string()?,
                        },
                    });
                }
                HistTicks::Last(t)
            }
        };
        Ok(HistReply::Ticks {
            req_id,
            ticks,
            done: f.bool()?,
        })
    }

    fn decode_proto(id: u32, b: &[u8]) -> Result<HistReply, ProtoProblem> {
        let mut r = Reader::new(b);
        let (mut req_id, mut done, mut stamp) = (0, false, String::new());
        let mut ticks = match id {
            in_id::HISTORICAL_TICKS => HistTicks::MidPoint(Vec::new()),
            in_id::HISTORICAL_TICKS_BID_ASK => HistTicks::BidAsk(Vec::new()),
            _ => HistTicks::Last(Vec::new()),
        };
        while let Some((f, x)) = r.next_field()? {
            match f {
                1 => req_id = x.gi32(f)?,
                2 if id == in_id::HEAD_TIMESTAMP => stamp = x.gstr(f)?.to_owned(),
                2 => push_proto_tick(&mut ticks, x.gbytes(f)?)?,
                3 => done = x.gbool(f)?,
                _ => {}
            }
        }
        Ok(if id == in_id::HEAD_TIMESTAMP {
            HistReply::HeadTimestamp {
                req_id,
                timestamp: stamp,
            }
        } else {
            HistReply::Ticks {
                req_id,
                ticks,
                done,
            }
        })
    }
}

/// Two bools of a TickAttribBidAsk / TickAttribLast.
fn attribs(b: &[u8]) -> Result<(bool, bool), ProtoProblem> {
    let mut r = Reader::new(b);
    let (mut a, mut c) = (false, false);
    while let Some((g, x)) = r.next_field()? {
        match g {
            1 => a = x.gbool(g)?,
            2 => c = x.gbool(g)?,
            _ => {}
        }
    }
    Ok((a, c))
}

fn push_proto_tick(ticks: &mut HistTicks, b: &[u8]) -> Result<(), ProtoProblem> {
    let mut r = Reader::new(b);
    let mut time = 0;
    let (mut a, mut c) = (false, false);
    let (mut p1, mut p2) = (crate::ipc::UNDEF_I64, crate::ipc::UNDEF_I64);
    // Protobuf omits a zero size ("0" decimal strings are written, but be lenient).
    let (mut s1, mut s2) = (0i64, 0i64);
    let (mut ex, mut cond) = (String::new(), String::new());
    let mid = matches!(ticks, HistTicks::MidPoint(_));
    let quote = matches!(ticks, HistTicks::BidAsk(_));
    while let Some((f, x)) = r.next_field()? {
        match f {
            1 => time = x.gi64(f)?,
            2 if mid => p1 = x.gprice(f)?,
            2 => (a, c) = attribs(x.gbytes(f)?)?,
            3 if mid => s1 = x.gsize(f)?,
            3 => p1 = x.gprice(f)?,
            4 if quote => p2 = x.gprice(f)?,
            4 => s1 = x.gsize(f)?,
            5 if quote => s1 = x.gsize(f)?,
            5 => ex = x.gstr(f)?.to_owned(),
            6 if quote => s2 = x.gsize(f)?,
            6 => cond = x.gstr(f)?.to_owned(),
            _ => {}
        }
    }
    match ticks {
        HistTicks::MidPoint(t) => t.push(Timed {
            time,
            tick: HistMid {
                price: p1,
                size: s1,
            },
        }),
        HistTicks::BidAsk(t) => t.push(Timed {
            time,
            tick: TbtQuote {
                bid_price: p1,
                ask_price: p2,
                bid_size: s1,
                ask_size: s2,
                bid_past_low: a,
                ask_past_high: c,
            },
        }),
        HistTicks::Last(t) => t.push(Timed {
            time,
            tick: TbtTrade {
                price: p1,
                size: s1,
                past_limit: a,
                unreported: c,
                exchange: ex,
                special_conditions: cond,
            },
        }),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tws::frame::FrameReader;

    fn contract() -> Contract {
        Contract {
            con_id: 265598,
            symbol: "AAPL".into(),
            sec_type: "STK".into(),
            exchange: "SMART".into(),
            primary_exchange: "NASDAQ".into(),
            currency: "USD".into(),
            include_expired: true,
            ..Contract::default()
        }
    }

    fn one_frame<T>(bytes: &[u8], version: u32, f: impl FnOnce(&Frame<'_>) -> T) -> T {
        let mut r = FrameReader::new();
        r.feed(bytes);
        let frame = r.next_frame(version).unwrap().unwrap();
        f(&frame)
    }

    fn requests() -> Vec<HistRequest> {
        vec![
            HistRequest::Ticks(HistoricalTicksRequest {
                req_id: 7,
                contract: contract(),
                start: "20260102-14:30:00".into(),
                end: String::new(),
                number_of_ticks: 1000,
                what_to_show: "BID_ASK".into(),
                use_rth: true,
                ignore_size: true,
            }),
            HistRequest::Ticks(HistoricalTicksRequest {
                req_id: -3,
                contract: contract(),
                start: String::new(),
                end: "20260102 09:30:01 US/Eastern".into(),
                number_of_ticks: 1,
                what_to_show: "TRADES".into(),
                use_rth: false,
                ignore_size: false,
            }),
            HistRequest::HeadTimestamp(HeadTimestampRequest {
                req_id: 9,
                contract: contract(),
                use_rth: false,
                what_to_show: "MIDPOINT".into(),
                format_date: 2,
            }),
            HistRequest::CancelHeadTimestamp { req_id: 9 },
        ]
    }

    #[test]
    fn requests_round_trip_in_text_and_protobuf() {
        for version in [130, 176, 200, 207, 208, 226] {
            for req in requests() {
                let mut out = Vec::new();
                req.encode(version, &mut out).unwrap();
                let back = one_frame(&out, version, |f| {
                    assert_eq!(f.is_proto(), version >= 208, "form at {version}");
                    HistRequest::decode(f, version).unwrap().unwrap()
                });
                assert_eq!(back, req, "at {version}");
            }
        }
    }

    /// Frames IB's Python client 10.x (`EClient.reqHistoricalTicks`, `reqHeadTimeStamp`,
    /// `cancelHeadTimeStamp`) wrote with a capturing connection at 176 (text) and 226
    /// (protobuf), for `requests()`: each decodes to the request and re-encodes to the bytes.
    const PY_CLIENT: &[(u32, [&str; 4])] = &[
        (
            176,
            [
                "000000533936003700323635353938004141504c0053544b0000000000534d415254004e415344415100555344000000310032303236303130322d31343a33303a3030000031303030004249445f41534b003100310000",
                "000000533936003800323635353938004141504c0053544b0000000000534d415254004e41534441510055534400000031000032303236303130322030393a33303a303120555443003100545241444553003000300000",
                "0000003b3837003900323635353938004141504c0053544b0000000000534d415254004e415344415100555344000000310030004d4944504f494e54003200",
                "000000053930003900",
            ],
        ),
        (
            226,
            [
                "00000051000001280807122608fe9a1012044141504c1a0353544b4205534d4152544a064e415344415152035553449001011a1132303236303130322d31343a33303a303028e80732074249445f41534b38014001",
                "0000004f000001280808122608fe9a1012044141504c1a0353544b4205534d4152544a064e41534441515203555344900101221532303236303130322030393a33303a30312055544328013206545241444553",
                "0000003a0000011f0809122608fe9a1012044141504c1a0353544b4205534d4152544a064e4153444151520355534490010122084d4944504f494e542802",
                "00000006000001220809",
            ],
        ),
    ];

    #[test]
    fn requests_match_ibs_python_client_byte_for_byte() {
        let unhex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let mut want = requests();
        // The captured requests: ids 7, 8 (end "... UTC", n 1), 9, cancel 9.
        if let HistRequest::Ticks(r) = &mut want[1] {
            r.req_id = 8;
            r.end = "20260102 09:30:01 UTC".into();
        }
        for (version, frames) in PY_CLIENT {
            for (hex, req) in frames.iter().zip(&want) {
                let bytes = unhex(hex);
                let back = one_frame(&bytes, *version, |f| {
                    HistRequest::decode(f, *version).unwrap().unwrap()
                });
                assert_eq!(&back, req, "at {version}");
                let mut out = Vec::new();
                req.encode(*version, &mut out).unwrap();
                assert_eq!(out, bytes, "at {version}: {req:?}");
            }
        }
    }

    #[test]
    fn requests_older_than_their_version_are_refused() {
        let mut out = Vec::new();
        for (req, below) in requests().into_iter().zip([129, 129, 117, 122]) {
            let e = req.encode(below, &mut out).unwrap_err();
            assert!(matches!(e, EncodeError::NotSupported { min, .. } if min == below + 1));
        }
        assert!(out.is_empty());
    }

    #[test]
    fn text_request_has_ib_field_order() {
        // As IB's Python client writes it: contract, includeExpired, start, end, n, what, rth,
        // ignoreSize, miscOptions.
        let mut out = Vec::new();
        requests()[0].encode(176, &mut out).unwrap();
        let body = &out[4..];
        let fields: Vec<&[u8]> = body.split(|b| *b == 0).collect();
        assert_eq!(fields[0], b"96");
        assert_eq!(fields[1], b"7");
        assert_eq!(fields[14], b"1"); // includeExpired
        assert_eq!(fields[15], b"20260102-14:30:00");
        assert_eq!(fields[16], b"");
        assert_eq!(fields[17], b"1000");
        assert_eq!(fields[18], b"BID_ASK");
        assert_eq!(fields[19], b"1");
        assert_eq!(fields[20], b"1");
        assert_eq!(fields[21], b""); // miscOptions
    }

    fn replies() -> Vec<HistReply> {
        let trade = |price, size, pl, un| TbtTrade {
            price,
            size,
            past_limit: pl,
            unreported: un,
            exchange: "NASDAQ".into(),
            special_conditions: " T".into(),
        };
        let quote = |b, a, low, high| TbtQuote {
            bid_price: b,
            ask_price: a,
            bid_size: 300 * 100_000_000,
            ask_size: 12_345_678,
            bid_past_low: low,
            ask_past_high: high,
        };
        vec![
            HistReply::HeadTimestamp {
                req_id: 4,
                timestamp: "1767277800".into(),
            },
            HistReply::Ticks {
                req_id: 5,
                ticks: HistTicks::MidPoint(vec![
                    Timed {
                        time: 1_767_277_800,
                        tick: HistMid {
                            price: 189_255_000_000,
                            size: 0,
                        },
                    },
                    Timed {
                        time: 1_767_277_801,
                        tick: HistMid {
                            price: 189_250_000_000,
                            size: 0,
                        },
                    },
                ]),
                done: true,
            },
            HistReply::Ticks {
                req_id: 6,
                ticks: HistTicks::BidAsk(vec![
                    Timed {
                        time: 1_767_277_800,
                        tick: quote(189_250_000_000, 189_260_000_000, true, false),
                    },
                    Timed {
                        time: 1_767_277_800,
                        tick: quote(189_240_000_000, 189_270_000_000, false, true),
                    },
                ]),
                done: false,
            },
            HistReply::Ticks {
                req_id: 8,
                ticks: HistTicks::Last(vec![
                    Timed {
                        time: 1_767_277_802,
                        tick: trade(189_250_000_000, 100 * 100_000_000, true, false),
                    },
                    Timed {
                        time: 1_767_277_802,
                        tick: trade(189_260_000_000, 50_000_000, false, true),
                    },
                ]),
                done: true,
            },
            HistReply::Ticks {
                req_id: 8,
                ticks: HistTicks::Last(Vec::new()),
                done: true,
            },
        ]
    }

    #[test]
    fn answers_round_trip_in_text_and_protobuf() {
        for version in [130, 176, 200, 201, 226] {
            for rep in replies() {
                let mut out = Vec::new();
                rep.encode(version, &mut out);
                let back = one_frame(&out, version, |f| {
                    assert_eq!(f.is_proto(), version >= 201, "form at {version}");
                    HistReply::decode(f, version).unwrap().unwrap()
                });
                assert_eq!(back, rep, "at {version}");
            }
        }
    }

    #[test]
    fn bid_ask_text_mask_is_ask_past_high_first() {
        // IB's decoder: mask & 1 = askPastHigh, mask & 2 = bidPastLow (the reverse of tickByTick).
        let rep = &replies()[2];
        let mut out = Vec::new();
        rep.encode(176, &mut out);
        let fields: Vec<&[u8]> = out[4..].split(|b| *b == 0).collect();
        assert_eq!(fields[0], b"97");
        assert_eq!(fields[2], b"2"); // count
        assert_eq!(fields[4], b"2"); // first tick: bidPastLow only
        assert_eq!(fields[10], b"1"); // second tick: askPastHigh only
    }

    #[test]
    fn a_tick_count_beyond_the_message_is_an_error() {
        let mut out = Vec::new();
        write_text_frame(&mut out, 176, in_id::HISTORICAL_TICKS_LAST, |w| {
            w.int(1).int(1_000_000).int(5);
        });
        let e = one_frame(&out, 176, |f| HistReply::decode(f, 176).unwrap_err());
        assert!(matches!(e, DecodeError::Field { .. }), "{e:?}");
    }

    #[test]
    fn other_ids_are_left_to_the_streaming_codec() {
        let mut out = Vec::new();
        crate::tws::ClientMsg::ReqCurrentTime
            .encode(176, &mut out)
            .unwrap();
        assert_eq!(
            one_frame(&out, 176, |f| HistRequest::decode(f, 176).unwrap()),
            None
        );
    }
}
