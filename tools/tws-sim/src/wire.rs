//! The bridge between the simulator's terms and the `ib_stream_tws` codec: handshake,
//! request decoding, reply and tick encoding. Every byte the simulator sends is encoded by the
//! codec, so the text or protobuf form always matches the negotiated version.

use ib_stream_tws::{
    ClientHello, ClientMsg, Contract, ContractDetails, FrameReader, HistRequest, ServerAck,
    ServerMsg, TbtQuote, TbtTrade, TickByTickData, negotiate as codec_negotiate,
};

use crate::expected::trade_strings;
use crate::generator::{L1Tick, TbtTick};
use crate::session::{Reply, Request};
use crate::universe::{ContractQuery, Instrument, Universe};

/// Why the client's bytes could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("handshake: {0}")]
    Handshake(#[from] ib_stream_tws::HandshakeError),
    #[error("framing: {0}")]
    Frame(#[from] ib_stream_tws::FrameError),
}

/// The client's first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub min: u32,
    pub max: u32,
    pub pace_api: bool,
}

/// Parses `API\0` + the version range; `Ok(None)` until complete.
pub fn parse_hello(buf: &[u8]) -> Result<Option<(Hello, usize)>, WireError> {
    Ok(ClientHello::parse(buf)?.map(|(h, used)| {
        let pace_api = h
            .options
            .split_whitespace()
            .any(|o| o.eq_ignore_ascii_case("+PACEAPI"));
        (
            Hello {
                min: h.min,
                max: h.max,
                pace_api,
            },
            used,
        )
    }))
}

pub fn negotiate(client_min: u32, client_max: u32, ours: u32) -> Option<u32> {
    codec_negotiate(client_min, client_max, ours)
}

pub fn encode_ack(version: u32, time: &str, out: &mut Vec<u8>) {
    ServerAck {
        version,
        time: time.to_owned(),
    }
    .encode(out);
}

/// What a client frame means to the simulator.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    StartApi { client_id: i32 },
    Request(Box<Request>),
}

/// Frames in, requests out.
#[derive(Debug)]
pub struct Inbound {
    reader: FrameReader,
    version: u32,
}

fn request(msg: ClientMsg) -> Incoming {
    Incoming::Request(Box::new(match msg {
        ClientMsg::StartApi { client_id, .. } => return Incoming::StartApi { client_id },
        ClientMsg::ReqMktData {
            req_id,
            contract,
            generic_tick_list,
            snapshot,
            ..
        } => Request::MktData {
            req_id,
            contract: ContractQuery::from(&contract),
            generic_tick_list,
            snapshot,
        },
        ClientMsg::CancelMktData { req_id } => Request::CancelMktData { req_id },
        ClientMsg::ReqTickByTick {
            req_id,
            contract,
            tick_type,
            ..
        } => Request::TickByTick {
            req_id,
            contract: ContractQuery::from(&contract),
            tick_type,
        },
        ClientMsg::CancelTickByTick { req_id } => Request::CancelTickByTick { req_id },
        ClientMsg::ReqMarketDataType { market_data_type } => {
            Request::MarketDataType(market_data_type)
        }
        ClientMsg::ReqContractDetails { req_id, contract } => Request::ContractDetails {
            req_id,
            contract: ContractQuery::from(&contract),
        },
        ClientMsg::ReqCurrentTime => Request::CurrentTime,
        ClientMsg::ReqIds { .. } => Request::Ids,
        ClientMsg::ReqManagedAccts => Request::ManagedAccts,
        ClientMsg::ReqPositions => Request::Positions,
        ClientMsg::ReqOpenOrders => Request::OpenOrders,
        ClientMsg::ReqAutoOpenOrders { .. } => Request::AutoOpenOrders,
        ClientMsg::ReqCompletedOrders { .. } => Request::CompletedOrders,
        ClientMsg::ReqAccountUpdates { subscribe, account } => {
            Request::AccountUpdates { subscribe, account }
        }
        ClientMsg::ReqAccountUpdatesMulti { req_id, .. } => Request::AccountUpdatesMulti { req_id },
        ClientMsg::ReqExecutions { req_id, .. } => Request::Executions { req_id },
        // Contract details are answered at once, so there is nothing to cancel.
        ClientMsg::CancelContractData { .. } | ClientMsg::Unknown { .. } => Request::Other,
    }))
}

impl Inbound {
    pub fn new(version: u32) -> Self {
        Self {
            reader: FrameReader::with_capacity(64 * 1024),
            version,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.reader.feed(bytes);
    }

    /// The next whole message. A message that does not decode is logged and skipped (TWS
    /// ignores what it cannot parse); a broken frame is an error for the connection.
    pub fn next_message(&mut self) -> Result<Option<Incoming>, WireError> {
        loop {
            let Some(frame) = self.reader.next_frame(self.version)? else {
                return Ok(None);
            };
            match HistRequest::decode(&frame, self.version) {
                Ok(Some(h)) => {
                    return Ok(Some(Incoming::Request(Box::new(Request::Historical(
                        Box::new(h),
                    )))));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("client message skipped: {e}");
                    continue;
                }
            }
            match ClientMsg::decode(&frame, self.version) {
                Ok(msg) => return Ok(Some(request(msg))),
                Err(e) => tracing::warn!("client message skipped: {e}"),
            }
        }
    }
}

/// contractData as the simulator describes an instrument.
pub fn contract_details(inst: &Instrument) -> ContractDetails {
    let s = &inst.spec;
    let contract = Contract {
        con_id: s.con_id,
        symbol: s.symbol.clone(),
        sec_type: s.sec_type.clone(),
        last_trade_date_or_contract_month: s.last_trade_date_or_contract_month.clone(),
        multiplier: s.multiplier.clone(),
        exchange: s.exchange.clone(),
        primary_exchange: s.primary_exchange.clone(),
        currency: s.currency.clone(),
        local_symbol: s.local_symbol.clone(),
        trading_class: s.trading_class.clone(),
        ..Contract::default()
    };
    ContractDetails {
        contract,
        market_name: s.trading_class.clone(),
        min_tick: inst.min_tick,
        order_types: "ACTIVETIM,AD,ADJUST,ALERT,ALGO,ALLOC,LMT,MKT,STP,STPLMT,TRAIL".into(),
        valid_exchanges: s.valid_exchanges.clone(),
        price_magnifier: 1,
        long_name: s.long_name.clone(),
        contract_month: s
            .last_trade_date_or_contract_month
            .get(..6)
            .unwrap_or_default()
            .to_owned(),
        industry: s.industry.clone(),
        time_zone_id: s.time_zone_id.clone(),
        trading_hours: s.trading_hours.clone(),
        liquid_hours: s.trading_hours.clone(),
        real_expiration_date: s.last_trade_date_or_contract_month.clone(),
        stock_type: if s.sec_type == "STK" {
            "COMMON".into()
        } else {
            String::new()
        },
        min_size: inst.lot.min(100_000_000),
        size_increment: inst.lot.min(100_000_000),
        suggested_size_increment: inst.lot,
        ..ContractDetails::default()
    }
}

/// Encodes one reply; `unix_ms` is the gateway's clock, the time an error carries.
pub fn encode_reply(
    out: &mut Vec<u8>,
    version: u32,
    reply: &Reply,
    universe: &Universe,
    unix_ms: i64,
) {
    let msg = match reply {
        Reply::Error { req_id, code, msg } => ServerMsg::Error {
            req_id: *req_id,
            code: *code,
            message: msg.clone(),
            advanced_order_reject_json: String::new(),
            error_time_ms: unix_ms,
        },
        Reply::NextValidId(id) => ServerMsg::NextValidId { order_id: *id },
        Reply::ManagedAccounts(a) => ServerMsg::ManagedAccounts {
            accounts: a.clone(),
        },
        Reply::CurrentTime(t) => ServerMsg::CurrentTime { time: *t },
        Reply::PositionEnd => ServerMsg::PositionEnd,
        Reply::OpenOrderEnd => ServerMsg::OpenOrderEnd,
        Reply::CompletedOrdersEnd => ServerMsg::CompletedOrdersEnd,
        Reply::AccountDownloadEnd(a) => ServerMsg::AccountDownloadEnd { account: a.clone() },
        Reply::AccountUpdateMultiEnd(r) => ServerMsg::AccountUpdateMultiEnd { req_id: *r },
        Reply::ExecDetailsEnd(r) => ServerMsg::ExecDetailsEnd { req_id: *r },
        Reply::ContractData { req_id, instrument } => ServerMsg::ContractData {
            req_id: *req_id,
            details: Box::new(contract_details(universe.get(*instrument))),
        },
        Reply::ContractDataEnd(r) => ServerMsg::ContractDataEnd { req_id: *r },
        Reply::TickReqParams { req_id, instrument } => {
            let inst = universe.get(*instrument);
            ServerMsg::TickReqParams {
                req_id: *req_id,
                min_tick: inst.min_tick,
                bbo_exchange: inst.spec.bbo_exchange.clone(),
                snapshot_permissions: 3,
            }
        }
        Reply::MarketDataType { req_id, data_type } => ServerMsg::MarketDataType {
            req_id: *req_id,
            market_data_type: *data_type,
        },
        Reply::TickSnapshotEnd(r) => ServerMsg::TickSnapshotEnd { req_id: *r },
        Reply::L1 { req_id, tick } => {
            TickEncoder::new(version).encode_l1(out, *req_id, tick);
            return;
        }
        Reply::Historical(h) => {
            h.encode(version, out);
            return;
        }
    };
    msg.encode(version, out);
}

/// Encodes ticks at one version, reusing its string buffers so that a tick never allocates.
#[derive(Debug)]
pub struct TickEncoder {
    version: u32,
    exchange: String,
    conditions: String,
    text: String,
}

impl TickEncoder {
    pub fn new(version: u32) -> Self {
        Self {
            version,
            exchange: String::new(),
            conditions: String::new(),
            text: String::new(),
        }
    }

    pub fn encode_tbt(
        &mut self,
        out: &mut Vec<u8>,
        req_id: i32,
        time: i64,
        inst: &Instrument,
        all_last: bool,
        tick: &TbtTick,
    ) {
        let data = match *tick {
            TbtTick::Trade {
                price,
                size,
                past_limit,
                unreported,
                exchange,
                conditions,
            } => {
                let (ex, cond) = trade_strings(inst, exchange, conditions);
                let mut exchange = std::mem::take(&mut self.exchange);
                exchange.clear();
                exchange.push_str(ex);
                let mut special_conditions = std::mem::take(&mut self.conditions);
                special_conditions.clear();
                special_conditions.push_str(cond);
                let t = TbtTrade {
                    price,
                    size,
                    past_limit,
                    unreported,
                    exchange,
                    special_conditions,
                };
                if all_last {
                    TickByTickData::AllLast(t)
                } else {
                    TickByTickData::Last(t)
                }
            }
            TbtTick::BidAsk {
                bid,
                ask,
                bid_size,
                ask_size,
                bid_past_low,
                ask_past_high,
            } => TickByTickData::BidAsk(TbtQuote {
                bid_price: bid,
                ask_price: ask,
                bid_size,
                ask_size,
                bid_past_low,
                ask_past_high,
            }),
            TbtTick::MidPoint { mid } => TickByTickData::MidPoint(mid),
        };
        let msg = ServerMsg::TickByTick { req_id, time, data };
        msg.encode(self.version, out);
        // Take the buffers back for the next tick.
        if let ServerMsg::TickByTick {
            data: TickByTickData::Last(t) | TickByTickData::AllLast(t),
            ..
        } = msg
        {
            self.exchange = t.exchange;
            self.conditions = t.special_conditions;
        }
    }

    pub fn encode_l1(&mut self, out: &mut Vec<u8>, req_id: i32, tick: &L1Tick) {
        let msg = match *tick {
            L1Tick::Price {
                tick_type,
                price,
                size,
                attr,
            } => ServerMsg::TickPrice {
                req_id,
                tick_type,
                price,
                size,
                attr_mask: attr,
            },
            L1Tick::Size { tick_type, size } => ServerMsg::TickSize {
                req_id,
                tick_type,
                size,
            },
            L1Tick::Timestamp { tick_type, epoch } => {
                use std::fmt::Write as _;
                let mut value = std::mem::take(&mut self.text);
                value.clear();
                let _ = write!(value, "{epoch}");
                ServerMsg::TickString {
                    req_id,
                    tick_type,
                    value,
                }
            }
            L1Tick::Generic { tick_type, value } => ServerMsg::TickGeneric {
                req_id,
                tick_type,
                value: value as f64 / crate::decimal::PRICE_SCALE as f64,
            },
        };
        msg.encode(self.version, out);
        if let ServerMsg::TickString { value, .. } = msg {
            self.text = value;
        }
    }
}

/// A frame no client accepts: a length prefix beyond the protocol's 0xFFFFFF maximum.
pub fn malformed_frame(out: &mut Vec<u8>) {
    out.extend_from_slice(&0x7FFF_FFFFu32.to_be_bytes());
    out.extend_from_slice(b"garbage\0");
}
