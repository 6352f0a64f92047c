//! Server → client messages.
//!
//! Form policy: below 201 every message is text, with the layout branches of the
//! negotiated version; from 201 the server sends every message here as protobuf (the
//! Python clients decode both forms for all of them; Rust ibapi >= 3 requires protobuf).
//! Decoding accepts whichever form arrives.

use super::ids::incoming as id;
use crate::ipc::UNDEF_I64;
use crate::tws::contract::{
    self, ContractDetails, Get, ProtoProblem, put_price, put_size, read_contract_proto,
    read_details_proto, write_contract_proto, write_details_proto,
};
use crate::tws::error::{DecodeError, FieldProblem};
use crate::tws::frame::{Body, Frame, write_proto_frame, write_text_frame};
use crate::tws::proto::{Reader, Writer};
use crate::tws::text::Fields;
use crate::tws::version as v;

/// A trade tick (tick-by-tick Last/AllLast).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TbtTrade {
    /// Price (1e-9 fixed point).
    pub price: i64,
    /// Size (1e-8 fixed point).
    pub size: i64,
    /// `pastLimit` attribute.
    pub past_limit: bool,
    /// `unreported` attribute.
    pub unreported: bool,
    /// Exchange.
    pub exchange: String,
    /// Special conditions.
    pub special_conditions: String,
}

/// A quote tick (tick-by-tick BidAsk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TbtQuote {
    /// Bid price.
    pub bid_price: i64,
    /// Ask price.
    pub ask_price: i64,
    /// Bid size.
    pub bid_size: i64,
    /// Ask size.
    pub ask_size: i64,
    /// `bidPastLow` attribute.
    pub bid_past_low: bool,
    /// `askPastHigh` attribute.
    pub ask_past_high: bool,
}

/// What one tick-by-tick message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickByTickData {
    /// Type 1.
    Last(TbtTrade),
    /// Type 2.
    AllLast(TbtTrade),
    /// Type 3.
    BidAsk(TbtQuote),
    /// Type 4: the midpoint price.
    MidPoint(i64),
}

impl TickByTickData {
    /// IB's tick-by-tick type number.
    pub fn type_id(&self) -> i32 {
        match self {
            TickByTickData::Last(_) => 1,
            TickByTickData::AllLast(_) => 2,
            TickByTickData::BidAsk(_) => 3,
            TickByTickData::MidPoint(_) => 4,
        }
    }
}

/// A message from the gateway. Prices 1e-9 and sizes 1e-8 fixed point, `UNDEF_I64` = unset.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMsg {
    /// tickPrice (1): `attr_mask` bit 0 canAutoExecute, 1 pastLimit, 2 preOpen.
    TickPrice {
        /// Request id.
        req_id: i32,
        /// IB tick type.
        tick_type: i32,
        /// Price.
        price: i64,
        /// Size (unset for tick types without one).
        size: i64,
        /// Attribute bits.
        attr_mask: i32,
    },
    /// tickSize (2).
    TickSize {
        /// Request id.
        req_id: i32,
        /// IB tick type.
        tick_type: i32,
        /// Size.
        size: i64,
    },
    /// tickString (46).
    TickString {
        /// Request id.
        req_id: i32,
        /// IB tick type.
        tick_type: i32,
        /// Value.
        value: String,
    },
    /// tickGeneric (45).
    TickGeneric {
        /// Request id.
        req_id: i32,
        /// IB tick type.
        tick_type: i32,
        /// Value.
        value: f64,
    },
    /// tickReqParams (81).
    TickReqParams {
        /// Request id.
        req_id: i32,
        /// Minimum tick (price fixed point).
        min_tick: i64,
        /// BBO exchange.
        bbo_exchange: String,
        /// Snapshot permissions.
        snapshot_permissions: i32,
    },
    /// tickSnapshotEnd (57).
    TickSnapshotEnd {
        /// Request id.
        req_id: i32,
    },
    /// marketDataType (58).
    MarketDataType {
        /// Request id.
        req_id: i32,
        /// 1 live, 2 frozen, 3 delayed, 4 delayed-frozen.
        market_data_type: i32,
    },
    /// tickByTick (99).
    TickByTick {
        /// Request id.
        req_id: i32,
        /// Epoch seconds.
        time: i64,
        /// The tick.
        data: TickByTickData,
    },
    /// error (4). `error_time_ms` exists from 194 (0 before); `advanced_order_reject_json`
    /// from 166 ("" before).
    Error {
        /// Request id (-1 = none).
        req_id: i32,
        /// IB error code.
        code: i32,
        /// Text.
        message: String,
        /// Advanced order reject JSON.
        advanced_order_reject_json: String,
        /// Error time, epoch ms.
        error_time_ms: i64,
    },
    /// nextValidId (9).
    NextValidId {
        /// Next order id.
        order_id: i32,
    },
    /// managedAccounts (15): comma-separated list.
    ManagedAccounts {
        /// Accounts list.
        accounts: String,
    },
    /// contractData (10).
    ContractData {
        /// Request id.
        req_id: i32,
        /// Details (with the contract).
        details: Box<ContractDetails>,
    },
    /// contractDataEnd (52).
    ContractDataEnd {
        /// Request id.
        req_id: i32,
    },
    /// currentTime (49).
    CurrentTime {
        /// Epoch seconds.
        time: i64,
    },
    /// positionEnd (62).
    PositionEnd,
    /// openOrderEnd (53).
    OpenOrderEnd,
    /// completedOrdersEnd (102).
    CompletedOrdersEnd,
    /// accountDownloadEnd (54).
    AccountDownloadEnd {
        /// Account.
        account: String,
    },
    /// accountUpdateMultiEnd (74).
    AccountUpdateMultiEnd {
        /// Request id.
        req_id: i32,
    },
    /// execDetailsEnd (55).
    ExecDetailsEnd {
        /// Request id.
        req_id: i32,
    },
}

/// Version field written in old-style text messages that have one.
const TICK_VERSION: i64 = 6;

impl ServerMsg {
    /// The message id.
    pub fn msg_id(&self) -> u32 {
        match self {
            ServerMsg::TickPrice { .. } => id::TICK_PRICE,
            ServerMsg::TickSize { .. } => id::TICK_SIZE,
            ServerMsg::TickString { .. } => id::TICK_STRING,
            ServerMsg::TickGeneric { .. } => id::TICK_GENERIC,
            ServerMsg::TickReqParams { .. } => id::TICK_REQ_PARAMS,
            ServerMsg::TickSnapshotEnd { .. } => id::TICK_SNAPSHOT_END,
            ServerMsg::MarketDataType { .. } => id::MARKET_DATA_TYPE,
            ServerMsg::TickByTick { .. } => id::TICK_BY_TICK,
            ServerMsg::Error { .. } => id::ERR_MSG,
            ServerMsg::NextValidId { .. } => id::NEXT_VALID_ID,
            ServerMsg::ManagedAccounts { .. } => id::MANAGED_ACCTS,
            ServerMsg::ContractData { .. } => id::CONTRACT_DATA,
            ServerMsg::ContractDataEnd { .. } => id::CONTRACT_DATA_END,
            ServerMsg::CurrentTime { .. } => id::CURRENT_TIME,
            ServerMsg::PositionEnd => id::POSITION_END,
            ServerMsg::OpenOrderEnd => id::OPEN_ORDER_END,
            ServerMsg::CompletedOrdersEnd => id::COMPLETED_ORDERS_END,
            ServerMsg::AccountDownloadEnd { .. } => id::ACCT_DOWNLOAD_END,
            ServerMsg::AccountUpdateMultiEnd { .. } => id::ACCOUNT_UPDATE_MULTI_END,
            ServerMsg::ExecDetailsEnd { .. } => id::EXECUTION_DATA_END,
        }
    }

    /// True when this message goes out as protobuf at `version`.
    pub fn uses_proto(&self, version: u32) -> bool {
        version >= v::MIN_SERVER_VER_PROTOBUF
    }

    /// Append this message as one whole frame (length prefix included) at `version`.
    pub fn encode(&self, version: u32, out: &mut Vec<u8>) {
        if self.uses_proto(version) {
            write_proto_frame(out, self.msg_id(), |w| self.write_proto(w));
        } else {
            write_text_frame(out, version, self.msg_id(), |w| self.write_text(w, version));
        }
    }

    fn write_text(&self, w: &mut crate::tws::text::FieldWriter<'_>, version: u32) {
        match self {
            ServerMsg::TickPrice {
                req_id,
                tick_type,
                price,
                size,
                attr_mask,
            } => {
                // Version 6 and exactly 7 fields: ib_async unpacks a 7-tuple.
                w.int(TICK_VERSION)
                    .int(i64::from(*req_id))
                    .int(i64::from(*tick_type))
                    .price(*price)
                    .size(*size)
                    .int(i64::from(*attr_mask));
            }
            ServerMsg::TickSize {
                req_id,
                tick_type,
                size,
            } => {
                w.int(TICK_VERSION)
                    .int(i64::from(*req_id))
                    .int(i64::from(*tick_type))
                    .size(*size);
            }
            ServerMsg::TickString {
                req_id,
                tick_type,
                value,
            } => {
                w.int(TICK_VERSION)
                    .int(i64::from(*req_id))
                    .int(i64::from(*tick_type))
                    .str(value);
            }
            ServerMsg::TickGeneric {
                req_id,
                tick_type,
                value,
            } => {
                w.int(TICK_VERSION)
                    .int(i64::from(*req_id))
                    .int(i64::from(*tick_type))
                    .f64(*value);
            }
            ServerMsg::TickReqParams {
                req_id,
                min_tick,
                bbo_exchange,
                snapshot_permissions,
            } => {
                w.int(i64::from(*req_id))
                    .price(*min_tick)
                    .str(bbo_exchange)
                    .int(i64::from(*snapshot_permissions));
            }
            ServerMsg::TickSnapshotEnd { req_id } => {
                w.int(1).int(i64::from(*req_id));
            }
            ServerMsg::MarketDataType {
                req_id,
                market_data_type,
            } => {
                w.int(1)
                    .int(i64::from(*req_id))
                    .int(i64::from(*market_data_type));
            }
            ServerMsg::TickByTick { req_id, time, data } => {
                w.int(i64::from(*req_id))
                    .int(i64::from(data.type_id()))
                    .int(*time);
                match data {
                    TickByTickData::Last(t) | TickByTickData::AllLast(t) => {
                        let mask = i64::from(t.past_limit) | (i64::from(t.unreported) << 1);
                        w.price(t.price)
                            .size(t.size)
                            .int(mask)
                            .str(&t.exchange)
                            .str(&t.special_conditions);
                    }
                    TickByTickData::BidAsk(q) => {
                        let mask = i64::from(q.bid_past_low) | (i64::from(q.ask_past_high) << 1);
                        w.price(q.bid_price)
                            .price(q.ask_price)
                            .size(q.bid_size)
                            .size(q.ask_size)
                            .int(mask);
                    }
                    TickByTickData::MidPoint(p) => {
                        w.price(*p);
                    }
                }
            }
            ServerMsg::Error {
                req_id,
                code,
                message,
                advanced_order_reject_json,
                error_time_ms,
            } => {
                if version >= v::ERROR_TIME {
                    w.int(i64::from(*req_id))
                        .int(i64::from(*code))
                        .str(message)
                        .str(advanced_order_reject_json)
                        .int(*error_time_ms);
                } else {
                    // Version 2: the Java decoder takes another path below 2.
                    w.int(2)
                        .int(i64::from(*req_id))
                        .int(i64::from(*code))
                        .str(message);
                    if version >= v::ADVANCED_ORDER_REJECT {
                        w.str(advanced_order_reject_json);
                    }
                }
            }
            ServerMsg::NextValidId { order_id } => {
                w.int(1).int(i64::from(*order_id));
            }
            ServerMsg::ManagedAccounts { accounts } => {
                w.int(1).str(accounts);
            }
            ServerMsg::ContractData { req_id, details } => {
                contract::write_contract_data(w, version, *req_id, details);
            }
            ServerMsg::ContractDataEnd { req_id } => {
                w.int(1).int(i64::from(*req_id));
            }
            ServerMsg::CurrentTime { time } => {
                w.int(1).int(*time);
            }
            ServerMsg::PositionEnd | ServerMsg::OpenOrderEnd => {
                w.int(1);
            }
            ServerMsg::CompletedOrdersEnd => {}
            ServerMsg::AccountDownloadEnd { account } => {
                w.int(1).str(account);
            }
            ServerMsg::AccountUpdateMultiEnd { req_id } | ServerMsg::ExecDetailsEnd { req_id } => {
                w.int(1).int(i64::from(*req_id));
            }
        }
    }

    fn write_proto(&self, w: &mut Writer<'_>) {
        match self {
            ServerMsg::TickPrice {
                req_id,
                tick_type,
                price,
                size,
                attr_mask,
            } => {
                w.i32(1, *req_id).i32(2, *tick_type);
                put_price(w, 3, *price);
                put_size(w, 4, *size);
                w.i32(5, *attr_mask);
            }
            ServerMsg::TickSize {
                req_id,
                tick_type,
                size,
            } => {
                w.i32(1, *req_id).i32(2, *tick_type);
                put_size(w, 3, *size);
            }
            ServerMsg::TickString {
                req_id,
                tick_type,
                value,
            } => {
                w.i32(1, *req_id).i32(2, *tick_type).str(3, value);
            }
            ServerMsg::TickGeneric {
                req_id,
                tick_type,
                value,
            } => {
                w.i32(1, *req_id).i32(2, *tick_type).f64(3, *value);
            }
            ServerMsg::TickReqParams {
                req_id,
                min_tick,
                bbo_exchange,
                snapshot_permissions,
            } => {
                w.i32(1, *req_id);
                w.decimal(2, *min_tick, crate::tws::decimal::PRICE_DIGITS);
                w.str(3, bbo_exchange).i32(4, *snapshot_permissions);
            }
            ServerMsg::TickSnapshotEnd { req_id }
            | ServerMsg::ContractDataEnd { req_id }
            | ServerMsg::AccountUpdateMultiEnd { req_id }
            | ServerMsg::ExecDetailsEnd { req_id } => {
                w.i32(1, *req_id);
            }
            ServerMsg::MarketDataType {
                req_id,
                market_data_type,
            } => {
                w.i32(1, *req_id).i32(2, *market_data_type);
            }
            ServerMsg::TickByTick { req_id, time, data } => {
                w.i32(1, *req_id).i32(2, data.type_id());
                match data {
                    TickByTickData::Last(t) | TickByTickData::AllLast(t) => {
                        w.message(3, |w| {
                            w.i64(1, *time);
                            w.message(2, |w| {
                                w.bool(1, t.past_limit).bool(2, t.unreported);
                            });
                            put_price(w, 3, t.price);
                            put_size(w, 4, t.size);
                            w.str(5, &t.exchange).str(6, &t.special_conditions);
                        });
                    }
                    TickByTickData::BidAsk(q) => {
                        w.message(4, |w| {
                            w.i64(1, *time);
                            w.message(2, |w| {
                                w.bool(1, q.bid_past_low).bool(2, q.ask_past_high);
                            });
                            put_price(w, 3, q.bid_price);
                            put_price(w, 4, q.ask_price);
                            put_size(w, 5, q.bid_size);
                            put_size(w, 6, q.ask_size);
                        });
                    }
                    TickByTickData::MidPoint(p) => {
                        w.message(5, |w| {
                            w.i64(1, *time);
                            put_price(w, 2, *p);
                        });
                    }
                }
            }
            ServerMsg::Error {
                req_id,
                code,
                message,
                advanced_order_reject_json,
                error_time_ms,
            } => {
                w.i32(1, *req_id)
                    .i64(2, *error_time_ms)
                    .i32(3, *code)
                    .str(4, message)
                    .str(5, advanced_order_reject_json);
            }
            ServerMsg::NextValidId { order_id } => {
                w.i32(1, *order_id);
            }
            ServerMsg::ManagedAccounts { accounts } => {
                w.str(1, accounts);
            }
            ServerMsg::ContractData { req_id, details } => {
                w.i32(1, *req_id);
                w.message(2, |w| write_contract_proto(w, &details.contract));
                w.message(3, |w| write_details_proto(w, details));
            }
            ServerMsg::CurrentTime { time } => {
                w.i64(1, *time);
            }
            ServerMsg::PositionEnd | ServerMsg::OpenOrderEnd | ServerMsg::CompletedOrdersEnd => {}
            ServerMsg::AccountDownloadEnd { account } => {
                w.str(1, account);
            }
        }
    }

    /// Decode one frame received at `version`. Unknown ids give
    /// [`DecodeError::UnknownMsgId`] (callers count and skip them).
    pub fn decode(frame: &Frame<'_>, version: u32) -> Result<ServerMsg, DecodeError> {
        match frame.body {
            Body::Text(b) => decode_text(frame.msg_id, Fields::new(frame.msg_id, b), version),
            Body::Proto(b) => decode_proto(frame.msg_id, b).map_err(|e| match e {
                Unknown::Id => DecodeError::UnknownMsgId {
                    msg_id: frame.msg_id,
                    form: "protobuf",
                },
                Unknown::Bad(p) => p.at(frame.msg_id),
            }),
        }
    }
}

fn decode_text(msg_id: u32, mut f: Fields<'_>, version: u32) -> Result<ServerMsg, DecodeError> {
    let f = &mut f;
    Ok(match msg_id {
        id::TICK_PRICE => {
            let ver = f.i32()?;
            let req_id = f.i32()?;
            let tick_type = f.i32()?;
            let price = f.price()?;
            let size = if ver >= 2 && !f.is_empty() {
                f.size()?
            } else {
                UNDEF_I64
            };
            let attr_mask = if ver >= 3 && !f.is_empty() {
                f.i32()?
            } else {
                0
            };
            ServerMsg::TickPrice {
                req_id,
                tick_type,
                price,
                size,
                attr_mask,
            }
        }
        id::TICK_SIZE => {
            f.skip_field()?;
            ServerMsg::TickSize {
                req_id: f.i32()?,
                tick_type: f.i32()?,
                size: f.size()?,
            }
        }
        id::TICK_STRING => {
            f.skip_field()?;
            ServerMsg::TickString {
                req_id: f.i32()?,
                tick_type: f.i32()?,
                value: f.string()?,
            }
        }
        id::TICK_GENERIC => {
            f.skip_field()?;
            ServerMsg::TickGeneric {
                req_id: f.i32()?,
                tick_type: f.i32()?,
                value: f.f64()?,
            }
        }
        id::TICK_REQ_PARAMS => ServerMsg::TickReqParams {
            req_id: f.i32()?,
            min_tick: f.price()?,
            bbo_exchange: f.string()?,
            snapshot_permissions: f.i32()?,
        },
        id::TICK_SNAPSHOT_END => {
            f.skip_field()?;
            ServerMsg::TickSnapshotEnd { req_id: f.i32()? }
        }
        id::MARKET_DATA_TYPE => {
            f.skip_field()?;
            ServerMsg::MarketDataType {
                req_id: f.i32()?,
                market_data_type: f.i32()?,
            }
        }
        id::TICK_BY_TICK => {
            let req_id = f.i32()?;
            let tt = f.i32()?;
            let time = f.i64()?;
            let data = match tt {
                1 | 2 => {
                    let price = f.price()?;
                    let size = f.size()?;
                    let mask = f.i32()?;
                    let t = TbtTrade {
                        price,
                        size,
                        past_limit: mask & 1 != 0,
                        unreported: mask & 2 != 0,
                        exchange: f.string()?,
                        special_conditions: f.string()?,
                    };
                    if tt == 1 {
                        TickByTickData::Last(t)
                    } else {
                        TickByTickData::AllLast(t)
                    }
                }
                3 => {
                    let (bid_price, ask_price, bid_size, ask_size) =
                        (f.price()?, f.price()?, f.size()?, f.size()?);
                    let mask = f.i32()?;
                    TickByTickData::BidAsk(TbtQuote {
                        bid_price,
                        ask_price,
                        bid_size,
                        ask_size,
                        bid_past_low: mask & 1 != 0,
                        ask_past_high: mask & 2 != 0,
                    })
                }
                4 => TickByTickData::MidPoint(f.price()?),
                _ => {
                    return Err(DecodeError::Field {
                        msg_id,
                        index: 1,
                        problem: FieldProblem::OutOfRange,
                    });
                }
            };
            ServerMsg::TickByTick { req_id, time, data }
        }
        id::ERR_MSG => {
            if version >= v::ERROR_TIME {
                ServerMsg::Error {
                    req_id: f.i32()?,
                    code: f.i32()?,
                    message: f.string()?,
                    advanced_order_reject_json: f.string()?,
                    error_time_ms: f.i64()?,
                }
            } else {
                f.skip_field()?;
                let (req_id, code, message) = (f.i32()?, f.i32()?, f.string()?);
                let json = if version >= v::ADVANCED_ORDER_REJECT {
                    f.string()?
                } else {
                    String::new()
                };
                ServerMsg::Error {
                    req_id,
                    code,
                    message,
                    advanced_order_reject_json: json,
                    error_time_ms: 0,
                }
            }
        }
        id::NEXT_VALID_ID => {
            f.skip_field()?;
            ServerMsg::NextValidId { order_id: f.i32()? }
        }
        id::MANAGED_ACCTS => {
            f.skip_field()?;
            ServerMsg::ManagedAccounts {
                accounts: f.string()?,
            }
        }
        id::CONTRACT_DATA => {
            let (req_id, d) = contract::read_contract_data(f, version)?;
            ServerMsg::ContractData {
                req_id,
                details: Box::new(d),
            }
        }
        id::CONTRACT_DATA_END => {
            f.skip_field()?;
            ServerMsg::ContractDataEnd { req_id: f.i32()? }
        }
        id::CURRENT_TIME => {
            f.skip_field()?;
            ServerMsg::CurrentTime { time: f.i64()? }
        }
        id::POSITION_END => ServerMsg::PositionEnd,
        id::OPEN_ORDER_END => ServerMsg::OpenOrderEnd,
        id::COMPLETED_ORDERS_END => ServerMsg::CompletedOrdersEnd,
        id::ACCT_DOWNLOAD_END => {
            f.skip_field()?;
            ServerMsg::AccountDownloadEnd {
                account: f.string()?,
            }
        }
        id::ACCOUNT_UPDATE_MULTI_END => {
            f.skip_field()?;
            ServerMsg::AccountUpdateMultiEnd { req_id: f.i32()? }
        }
        id::EXECUTION_DATA_END => {
            f.skip_field()?;
            ServerMsg::ExecDetailsEnd { req_id: f.i32()? }
        }
        _ => {
            return Err(DecodeError::UnknownMsgId {
                msg_id,
                form: "text",
            });
        }
    })
}

enum Unknown {
    Id,
    Bad(ProtoProblem),
}

impl From<ProtoProblem> for Unknown {
    fn from(p: ProtoProblem) -> Self {
        Unknown::Bad(p)
    }
}

impl From<crate::tws::error::ProtoError> for Unknown {
    fn from(p: crate::tws::error::ProtoError) -> Self {
        Unknown::Bad(ProtoProblem::Wire(p))
    }
}

/// Decode a tick-by-tick oneof body into `(time, data)`.
fn tbt_proto(kind: u32, b: &[u8]) -> Result<(i64, TickByTickData), ProtoProblem> {
    let mut r = Reader::new(b);
    let mut time = 0;
    let (mut a, mut bb) = (false, false);
    let (mut p1, mut p2, mut s1, mut s2) = (UNDEF_I64, UNDEF_I64, UNDEF_I64, UNDEF_I64);
    let (mut ex, mut cond) = (String::new(), String::new());
    while let Some((f, val)) = r.next_field()? {
        match (kind, f) {
            (_, 1) => time = val.gi64(f)?,
            (3 | 4, 2) => {
                let mut r2 = Reader::new(val.gbytes(f)?);
                while let Some((g, x)) = r2.next_field()? {
                    match g {
                        1 => a = x.gbool(g)?,
                        2 => bb = x.gbool(g)?,
                        _ => {}
                    }
                }
            }
            (5, 2) | (3 | 4, 3) => p1 = val.gprice(f)?,
            (4, 4) => p2 = val.gprice(f)?,
            (3, 4) => s1 = val.gsize(f)?,
            (4, 5) => s1 = val.gsize(f)?,
            (4, 6) => s2 = val.gsize(f)?,
            (3, 5) => ex = val.gstr(f)?.to_owned(),
            (3, 6) => cond = val.gstr(f)?.to_owned(),
            _ => {}
        }
    }
    Ok((
        time,
        match kind {
            3 => TickByTickData::Last(TbtTrade {
                price: p1,
                size: s1,
                past_limit: a,
                unreported: bb,
                exchange: ex,
                special_conditions: cond,
            }),
            4 => TickByTickData::BidAsk(TbtQuote {
                bid_price: p1,
                ask_price: p2,
                bid_size: s1,
                ask_size: s2,
                bid_past_low: a,
                ask_past_high: bb,
            }),
            _ => TickByTickData::MidPoint(p1),
        },
    ))
}

fn decode_proto(msg_id: u32, b: &[u8]) -> Result<ServerMsg, Unknown> {
    let mut r = Reader::new(b);
    // Scalars shared by most messages: field 1..5 as the message defines them.
    macro_rules! fields {
        ($fi:ident, $val:ident; $($f:pat => $e:expr),* $(,)?) => {
            while let Some(($fi, $val)) = r.next_field()? {
                let _ = (&$fi, &$val);
                #[allow(clippy::match_single_binding)]
                match $fi {
                    $($f => $e,)*
                    _ => {}
                }
            }
        };
    }
    Ok(match msg_id {
        id::TICK_PRICE => {
            let (mut req_id, mut tick_type, mut price, mut size, mut attr_mask) =
                (0, 0, UNDEF_I64, UNDEF_I64, 0);
            fields! { f, val;
                1 => req_id = val.gi32(f)?,
                2 => tick_type = val.gi32(f)?,
                3 => price = val.gprice(f)?,
                4 => size = val.gsize(f)?,
                5 => attr_mask = val.gi32(f)?,
            }
            ServerMsg::TickPrice {
                req_id,
                tick_type,
                price,
                size,
                attr_mask,
            }
        }
        id::TICK_SIZE => {
            let (mut req_id, mut tick_type, mut size) = (0, 0, UNDEF_I64);
            fields! { f, val;
                1 => req_id = val.gi32(f)?,
                2 => tick_type = val.gi32(f)?,
                3 => size = val.gsize(f)?,
            }
            ServerMsg::TickSize {
                req_id,
                tick_type,
                size,
            }
        }
        id::TICK_STRING => {
            let (mut req_id, mut tick_type, mut value) = (0, 0, String::new());
            fields! { f, val;
                1 => req_id = val.gi32(f)?,
                2 => tick_type = val.gi32(f)?,
                3 => value = val.gstr(f)?.to_owned(),
            }
            ServerMsg::TickString {
                req_id,
                tick_type,
                value,
            }
        }
        id::TICK_GENERIC => {
            let (mut req_id, mut tick_type, mut value) = (0, 0, f64::NAN);
            fields! { f, val;
                1 => req_id = val.gi32(f)?,
                2 => tick_type = val.gi32(f)?,
                3 => value = val.gf64(f)?,
            }
            ServerMsg::TickGeneric {
                req_id,
                tick_type,
                value,
            }
        }
        id::TICK_REQ_PARAMS => {
            let (mut req_id, mut min_tick, mut bbo, mut perm) = (0, UNDEF_I64, String::new(), 0);
            fields! { f, val;
                1 => req_id = val.gi32(f)?,
                2 => min_tick = val.gprice_str(f)?,
                3 => bbo = val.gstr(f)?.to_owned(),
                4 => perm = val.gi32(f)?,
            }
            ServerMsg::TickReqParams {
                req_id,
                min_tick,
                bbo_exchange: bbo,
                snapshot_permissions: perm,
            }
        }
        id::TICK_SNAPSHOT_END
        | id::CONTRACT_DATA_END
        | id::ACCOUNT_UPDATE_MULTI_END
        | id::EXECUTION_DATA_END
        | id::NEXT_VALID_ID => {
            let mut x = 0;
            fields! { f, val; 1 => x = val.gi32(f)? }
            match msg_id {
                id::TICK_SNAPSHOT_END => ServerMsg::TickSnapshotEnd { req_id: x },
                id::CONTRACT_DATA_END => ServerMsg::ContractDataEnd { req_id: x },
                id::ACCOUNT_UPDATE_MULTI_END => ServerMsg::AccountUpdateMultiEnd { req_id: x },
                id::EXECUTION_DATA_END => ServerMsg::ExecDetailsEnd { req_id: x },
                _ => ServerMsg::NextValidId { order_id: x },
            }
        }
        id::MARKET_DATA_TYPE => {
            let (mut req_id, mut t) = (0, 0);
            fields! { f, val;
                1 => req_id = val.gi32(f)?,
                2 => t = val.gi32(f)?,
            }
            ServerMsg::MarketDataType {
                req_id,
                market_data_type: t,
            }
        }
        id::TICK_BY_TICK => {
            let (mut req_id, mut tt, mut body) = (0, 0, None);
            fields! { f, val;
                1 => req_id = val.gi32(f)?,
                2 => tt = val.gi32(f)?,
                3..=5 => body = Some(tbt_proto(f, val.gbytes(f)?)?),
            }
            let (time, mut data) =
                body.ok_or(Unknown::Bad(ProtoProblem::Field(3, FieldProblem::Missing)))?;
            match (tt, &mut data) {
                (2, TickByTickData::Last(t)) => data = TickByTickData::AllLast(t.clone()),
                (1, TickByTickData::Last(_))
                | (3, TickByTickData::BidAsk(_))
                | (4, TickByTickData::MidPoint(_)) => {}
                _ => {
                    return Err(Unknown::Bad(ProtoProblem::Field(
                        2,
                        FieldProblem::OutOfRange,
                    )));
                }
            }
            ServerMsg::TickByTick { req_id, time, data }
        }
        id::ERR_MSG => {
            let (mut req_id, mut t, mut code, mut msg, mut json) =
                (0, 0, 0, String::new(), String::new());
            fields! { f, val;
                1 => req_id = val.gi32(f)?,
                2 => t = val.gi64(f)?,
                3 => code = val.gi32(f)?,
                4 => msg = val.gstr(f)?.to_owned(),
                5 => json = val.gstr(f)?.to_owned(),
            }
            ServerMsg::Error {
                req_id,
                code,
                message: msg,
                advanced_order_reject_json: json,
                error_time_ms: t,
            }
        }
        id::MANAGED_ACCTS | id::ACCT_DOWNLOAD_END => {
            let mut s = String::new();
            fields! { f, val; 1 => s = val.gstr(f)?.to_owned() }
            if msg_id == id::MANAGED_ACCTS {
                ServerMsg::ManagedAccounts { accounts: s }
            } else {
                ServerMsg::AccountDownloadEnd { account: s }
            }
        }
        id::CONTRACT_DATA => {
            let mut req_id = 0;
            let mut d = ContractDetails::default();
            fields! { f, val;
                1 => req_id = val.gi32(f)?,
                2 => d.contract = read_contract_proto(val.gbytes(f)?)?,
                3 => read_details_proto(val.gbytes(f)?, &mut d)?,
            }
            ServerMsg::ContractData {
                req_id,
                details: Box::new(d),
            }
        }
        id::CURRENT_TIME => {
            let mut t = 0;
            fields! { f, val; 1 => t = val.gi64(f)? }
            ServerMsg::CurrentTime { time: t }
        }
        id::POSITION_END | id::OPEN_ORDER_END | id::COMPLETED_ORDERS_END => {
            // Empty messages: still validate the bytes.
            fields! { f, val; }
            match msg_id {
                id::POSITION_END => ServerMsg::PositionEnd,
                id::OPEN_ORDER_END => ServerMsg::OpenOrderEnd,
                _ => ServerMsg::CompletedOrdersEnd,
            }
        }
        _ => return Err(Unknown::Id),
    })
}
