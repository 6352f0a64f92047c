//! Client → server messages (what the engine sends and the simulator decodes).
//!
//! Form policy: text below each request family's protobuf version, protobuf from it
//! (IB's `getServerVersionForMessage`: executions 201, order lists 204, contract data 205,
//! market data 206, accounts/positions 207, tick-by-tick 208, startApi/ids/time 213).
//! Decoding accepts whichever form arrives.

use super::ids::outgoing as id;
use crate::tws::contract::{
    ComboLeg, Contract, DeltaNeutral, ExecutionFilter, Get, ProtoProblem, read_contract_fields,
    read_contract_proto, write_contract_fields, write_contract_proto,
};
use crate::tws::error::{DecodeError, EncodeError, FieldProblem};
use crate::tws::frame::{Body, Frame, write_proto_frame, write_text_frame};
use crate::tws::proto::{Reader, Value, Writer};
use crate::tws::text::{FieldWriter, Fields, UNSET_I32};
use crate::tws::version as v;

/// A request from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMsg {
    /// startApi (71).
    StartApi {
        /// Client id.
        client_id: i32,
        /// Optional capabilities ("" by default).
        optional_capabilities: String,
    },
    /// reqMktData (1).
    ReqMktData {
        /// Request id.
        req_id: i32,
        /// Contract (combo legs / delta neutral in the text form).
        contract: Contract,
        /// Comma-separated generic tick list.
        generic_tick_list: String,
        /// Snapshot.
        snapshot: bool,
        /// Regulatory snapshot (from 114).
        regulatory_snapshot: bool,
    },
    /// cancelMktData (2).
    CancelMktData {
        /// Request id.
        req_id: i32,
    },
    /// reqTickByTickData (97).
    ReqTickByTick {
        /// Request id.
        req_id: i32,
        /// Contract.
        contract: Contract,
        /// "Last", "AllLast", "BidAsk" or "MidPoint".
        tick_type: String,
        /// Number of historical ticks (from 140).
        number_of_ticks: i32,
        /// Ignore size (from 140).
        ignore_size: bool,
    },
    /// cancelTickByTickData (98).
    CancelTickByTick {
        /// Request id.
        req_id: i32,
    },
    /// reqMarketDataType (59).
    ReqMarketDataType {
        /// 1 live, 2 frozen, 3 delayed, 4 delayed-frozen.
        market_data_type: i32,
    },
    /// reqContractDetails (9). The contract carries includeExpired/secIdType/secId/issuerId.
    ReqContractDetails {
        /// Request id.
        req_id: i32,
        /// Contract.
        contract: Contract,
    },
    /// cancelContractData (106, protobuf only, from 215).
    CancelContractData {
        /// Request id.
        req_id: i32,
    },
    /// reqCurrentTime (49).
    ReqCurrentTime,
    /// reqIds (8).
    ReqIds {
        /// Number of ids (ignored by TWS).
        num_ids: i32,
    },
    /// reqManagedAccts (17).
    ReqManagedAccts,
    /// reqPositions (61).
    ReqPositions,
    /// reqOpenOrders (5).
    ReqOpenOrders,
    /// reqCompletedOrders (99).
    ReqCompletedOrders {
        /// API orders only.
        api_only: bool,
    },
    /// reqAccountUpdates (6).
    ReqAccountUpdates {
        /// Subscribe (true) or unsubscribe.
        subscribe: bool,
        /// Account code.
        account: String,
    },
    /// reqAccountUpdatesMulti (76).
    ReqAccountUpdatesMulti {
        /// Request id.
        req_id: i32,
        /// Account.
        account: String,
        /// Model code.
        model_code: String,
        /// Ledger and NLV only.
        ledger_and_nlv: bool,
    },
    /// reqExecutions (7).
    ReqExecutions {
        /// Request id.
        req_id: i32,
        /// Filter.
        filter: ExecutionFilter,
    },
    /// reqAutoOpenOrders (15).
    ReqAutoOpenOrders {
        /// Auto bind.
        auto_bind: bool,
    },
    /// Any other request (decoded id only).
    Unknown {
        /// Message id.
        msg_id: u32,
    },
}

impl ClientMsg {
    /// The message id.
    pub fn msg_id(&self) -> u32 {
        match self {
            ClientMsg::StartApi { .. } => id::START_API,
            ClientMsg::ReqMktData { .. } => id::REQ_MKT_DATA,
            ClientMsg::CancelMktData { .. } => id::CANCEL_MKT_DATA,
            ClientMsg::ReqTickByTick { .. } => id::REQ_TICK_BY_TICK_DATA,
            ClientMsg::CancelTickByTick { .. } => id::CANCEL_TICK_BY_TICK_DATA,
            ClientMsg::ReqMarketDataType { .. } => id::REQ_MARKET_DATA_TYPE,
            ClientMsg::ReqContractDetails { .. } => id::REQ_CONTRACT_DATA,
            ClientMsg::CancelContractData { .. } => id::CANCEL_CONTRACT_DATA,
            ClientMsg::ReqCurrentTime => id::REQ_CURRENT_TIME,
            ClientMsg::ReqIds { .. } => id::REQ_IDS,
            ClientMsg::ReqManagedAccts => id::REQ_MANAGED_ACCTS,
            ClientMsg::ReqPositions => id::REQ_POSITIONS,
            ClientMsg::ReqOpenOrders => id::REQ_OPEN_ORDERS,
            ClientMsg::ReqCompletedOrders { .. } => id::REQ_COMPLETED_ORDERS,
            ClientMsg::ReqAccountUpdates { .. } => id::REQ_ACCT_DATA,
            ClientMsg::ReqAccountUpdatesMulti { .. } => id::REQ_ACCOUNT_UPDATES_MULTI,
            ClientMsg::ReqExecutions { .. } => id::REQ_EXECUTIONS,
            ClientMsg::ReqAutoOpenOrders { .. } => id::REQ_AUTO_OPEN_ORDERS,
            ClientMsg::Unknown { msg_id } => *msg_id,
        }
    }

    /// The server version from which this request goes out as protobuf.
    pub fn proto_since(&self) -> u32 {
        match self {
            ClientMsg::ReqExecutions { .. } => v::PROTOBUF,
            ClientMsg::ReqOpenOrders
            | ClientMsg::ReqAutoOpenOrders { .. }
            | ClientMsg::ReqCompletedOrders { .. } => v::PROTOBUF_COMPLETED_ORDER,
            ClientMsg::ReqContractDetails { .. } => v::PROTOBUF_CONTRACT_DATA,
            ClientMsg::ReqMktData { .. }
            | ClientMsg::CancelMktData { .. }
            | ClientMsg::ReqMarketDataType { .. } => v::PROTOBUF_MARKET_DATA,
            ClientMsg::ReqPositions
            | ClientMsg::ReqManagedAccts
            | ClientMsg::ReqAccountUpdates { .. }
            | ClientMsg::ReqAccountUpdatesMulti { .. } => v::PROTOBUF_ACCOUNTS_POSITIONS,
            ClientMsg::ReqTickByTick { .. } | ClientMsg::CancelTickByTick { .. } => {
                v::PROTOBUF_HISTORICAL_DATA
            }
            ClientMsg::StartApi { .. } | ClientMsg::ReqIds { .. } | ClientMsg::ReqCurrentTime => {
                v::PROTOBUF_REST_MESSAGES_3
            }
            ClientMsg::CancelContractData { .. } => v::CANCEL_CONTRACT_DATA,
            ClientMsg::Unknown { .. } => u32::MAX,
        }
    }

    /// Append this request as one whole frame at `version`. Fails only for a request
    /// that does not exist at `version` (cancelContractData below 215, tick-by-tick below
    /// 137, or `Unknown`).
    pub fn encode(&self, version: u32, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let unsupported = |msg, min| Err(EncodeError::NotSupported { msg, min, version });
        match self {
            ClientMsg::CancelContractData { .. } if version < v::CANCEL_CONTRACT_DATA => {
                return unsupported("cancelContractData", v::CANCEL_CONTRACT_DATA);
            }
            ClientMsg::ReqTickByTick { .. } | ClientMsg::CancelTickByTick { .. }
                if version < v::TICK_BY_TICK =>
            {
                return unsupported("tickByTick", v::TICK_BY_TICK);
            }
            ClientMsg::Unknown { .. } => return unsupported("unknown request", u32::MAX),
            _ => {}
        }
        if version >= self.proto_since() {
            write_proto_frame(out, self.msg_id(), |w| self.write_proto(w));
        } else {
            write_text_frame(out, version, self.msg_id(), |w| self.write_text(w, version));
        }
        Ok(())
    }

    fn write_text(&self, w: &mut FieldWriter<'_>, version: u32) {
        match self {
            ClientMsg::StartApi {
                client_id,
                optional_capabilities,
            } => {
                w.int(2)
                    .int(i64::from(*client_id))
                    .str(optional_capabilities);
            }
            ClientMsg::ReqMktData {
                req_id,
                contract,
                generic_tick_list,
                snapshot,
                regulatory_snapshot,
            } => {
                w.int(11).int(i64::from(*req_id));
                write_contract_fields(w, contract);
                if contract.sec_type == "BAG" {
                    w.int(contract.combo_legs.len() as i64);
                    for l in &contract.combo_legs {
                        w.int(i64::from(l.con_id))
                            .int(i64::from(l.ratio))
                            .str(&l.action)
                            .str(&l.exchange);
                    }
                }
                match &contract.delta_neutral {
                    Some(dn) => {
                        w.bool(true)
                            .int(i64::from(dn.con_id))
                            .f64(dn.delta)
                            .f64(dn.price);
                    }
                    None => {
                        w.bool(false);
                    }
                }
                w.str(generic_tick_list).bool(*snapshot);
                if version >= v::REQ_SMART_COMPONENTS {
                    w.bool(*regulatory_snapshot);
                }
                w.str(""); // mktDataOptions: always empty
            }
            ClientMsg::CancelMktData { req_id } => {
                w.int(2).int(i64::from(*req_id));
            }
            ClientMsg::ReqTickByTick {
                req_id,
                contract,
                tick_type,
                number_of_ticks,
                ignore_size,
            } => {
                w.int(i64::from(*req_id));
                write_contract_fields(w, contract);
                w.str(tick_type);
                if version >= v::TICK_BY_TICK_IGNORE_SIZE {
                    w.int(i64::from(*number_of_ticks)).bool(*ignore_size);
                }
            }
            ClientMsg::CancelTickByTick { req_id } | ClientMsg::CancelContractData { req_id } => {
                w.int(i64::from(*req_id));
            }
            ClientMsg::ReqMarketDataType { market_data_type } => {
                w.int(1).int(i64::from(*market_data_type));
            }
            ClientMsg::ReqContractDetails { req_id, contract } => {
                w.int(8).int(i64::from(*req_id));
                write_contract_fields(w, contract);
                w.bool(contract.include_expired)
                    .str(&contract.sec_id_type)
                    .str(&contract.sec_id);
                if version >= v::BOND_ISSUERID {
                    w.str(&contract.issuer_id);
                }
            }
            ClientMsg::ReqCurrentTime
            | ClientMsg::ReqManagedAccts
            | ClientMsg::ReqPositions
            | ClientMsg::ReqOpenOrders => {
                w.int(1);
            }
            ClientMsg::ReqIds { num_ids } => {
                w.int(1).int(i64::from(*num_ids));
            }
            ClientMsg::ReqCompletedOrders { api_only } => {
                w.bool(*api_only);
            }
            ClientMsg::ReqAccountUpdates { subscribe, account } => {
                w.int(2).bool(*subscribe).str(account);
            }
            ClientMsg::ReqAccountUpdatesMulti {
                req_id,
                account,
                model_code,
                ledger_and_nlv,
            } => {
                w.int(1)
                    .int(i64::from(*req_id))
                    .str(account)
                    .str(model_code)
                    .bool(*ledger_and_nlv);
            }
            ClientMsg::ReqExecutions { req_id, filter } => {
                w.int(3)
                    .int(i64::from(*req_id))
                    .int(i64::from(filter.client_id))
                    .str(&filter.acct_code)
                    .str(&filter.time)
                    .str(&filter.symbol)
                    .str(&filter.sec_type)
                    .str(&filter.exchange)
                    .str(&filter.side);
                if version >= v::PARAMETRIZED_DAYS_OF_EXECUTIONS {
                    // As ibapi writes it: unset is 2147483647, not the empty field.
                    w.int(i64::from(filter.last_n_days))
                        .int(filter.specific_dates.len() as i64);
                    for d in &filter.specific_dates {
                        w.int(i64::from(*d));
                    }
                }
            }
            ClientMsg::ReqAutoOpenOrders { auto_bind } => {
                w.int(1).bool(*auto_bind);
            }
            ClientMsg::Unknown { .. } => {}
        }
    }

    fn write_proto(&self, w: &mut Writer<'_>) {
        match self {
            ClientMsg::StartApi {
                client_id,
                optional_capabilities,
            } => {
                w.i32(1, *client_id).str(2, optional_capabilities);
            }
            ClientMsg::ReqMktData {
                req_id,
                contract,
                generic_tick_list,
                snapshot,
                regulatory_snapshot,
            } => {
                w.i32(1, *req_id);
                w.message(2, |w| write_contract_proto(w, contract));
                w.str(3, generic_tick_list)
                    .bool_if(4, *snapshot)
                    .bool_if(5, *regulatory_snapshot);
            }
            ClientMsg::CancelMktData { req_id }
            | ClientMsg::CancelTickByTick { req_id }
            | ClientMsg::CancelContractData { req_id } => {
                w.i32(1, *req_id);
            }
            ClientMsg::ReqTickByTick {
                req_id,
                contract,
                tick_type,
                number_of_ticks,
                ignore_size,
            } => {
                w.i32(1, *req_id);
                w.message(2, |w| write_contract_proto(w, contract));
                w.str(3, tick_type)
                    .i32(4, *number_of_ticks)
                    .bool_if(5, *ignore_size);
            }
            ClientMsg::ReqMarketDataType { market_data_type } => {
                w.i32(1, *market_data_type);
            }
            ClientMsg::ReqContractDetails { req_id, contract } => {
                w.i32(1, *req_id);
                w.message(2, |w| write_contract_proto(w, contract));
            }
            ClientMsg::ReqCurrentTime
            | ClientMsg::ReqManagedAccts
            | ClientMsg::ReqPositions
            | ClientMsg::ReqOpenOrders
            | ClientMsg::Unknown { .. } => {}
            ClientMsg::ReqIds { num_ids } => {
                w.i32(1, *num_ids);
            }
            ClientMsg::ReqCompletedOrders { api_only } => {
                w.bool_if(1, *api_only);
            }
            ClientMsg::ReqAccountUpdates { subscribe, account } => {
                w.bool_if(1, *subscribe).str(2, account);
            }
            ClientMsg::ReqAccountUpdatesMulti {
                req_id,
                account,
                model_code,
                ledger_and_nlv,
            } => {
                w.i32(1, *req_id)
                    .str(2, account)
                    .str(3, model_code)
                    .bool_if(4, *ledger_and_nlv);
            }
            ClientMsg::ReqExecutions { req_id, filter } => {
                w.i32(1, *req_id);
                w.message(2, |w| {
                    w.i32(1, filter.client_id)
                        .str(2, &filter.acct_code)
                        .str(3, &filter.time)
                        .str(4, &filter.symbol)
                        .str(5, &filter.sec_type)
                        .str(6, &filter.exchange)
                        .str(7, &filter.side);
                    if filter.last_n_days != UNSET_I32 {
                        w.i32(8, filter.last_n_days);
                    }
                    for d in &filter.specific_dates {
                        w.i32(9, *d);
                    }
                });
            }
            ClientMsg::ReqAutoOpenOrders { auto_bind } => {
                w.bool_if(1, *auto_bind);
            }
        }
    }

    /// Decode one request frame received at `version`. Unknown ids give
    /// [`ClientMsg::Unknown`].
    pub fn decode(frame: &Frame<'_>, version: u32) -> Result<ClientMsg, DecodeError> {
        match frame.body {
            Body::Text(b) => decode_text(frame.msg_id, Fields::new(frame.msg_id, b), version),
            Body::Proto(b) => decode_proto(frame.msg_id, b).map_err(|p| p.at(frame.msg_id)),
        }
    }
}

fn decode_text(msg_id: u32, mut f: Fields<'_>, version: u32) -> Result<ClientMsg, DecodeError> {
    let f = &mut f;
    Ok(match msg_id {
        id::START_API => {
            f.skip_field()?;
            let client_id = f.i32()?;
            let optional_capabilities = if f.is_empty() {
                String::new()
            } else {
                f.string()?
            };
            ClientMsg::StartApi {
                client_id,
                optional_capabilities,
            }
        }
        id::REQ_MKT_DATA => {
            f.skip_field()?;
            let req_id = f.i32()?;
            let mut contract = read_contract_fields(f)?;
            if contract.sec_type == "BAG" {
                let n = f.i32()?;
                if n < 0 || n as usize > f.remaining() {
                    return Err(DecodeError::Field {
                        msg_id,
                        index: f.index() - 1,
                        problem: FieldProblem::OutOfRange,
                    });
                }
                for _ in 0..n {
                    contract.combo_legs.push(ComboLeg {
                        con_id: f.i32()?,
                        ratio: f.i32()?,
                        action: f.string()?,
                        exchange: f.string()?,
                    });
                }
            }
            if f.bool()? {
                contract.delta_neutral = Some(DeltaNeutral {
                    con_id: f.i32()?,
                    delta: f.f64()?,
                    price: f.f64()?,
                });
            }
            let generic_tick_list = f.string()?;
            let snapshot = f.bool()?;
            let regulatory_snapshot = if version >= v::REQ_SMART_COMPONENTS {
                f.bool()?
            } else {
                false
            };
            ClientMsg::ReqMktData {
                req_id,
                contract,
                generic_tick_list,
                snapshot,
                regulatory_snapshot,
            }
        }
        id::CANCEL_MKT_DATA => {
            f.skip_field()?;
            ClientMsg::CancelMktData { req_id: f.i32()? }
        }
        id::REQ_TICK_BY_TICK_DATA => {
            let req_id = f.i32()?;
            let contract = read_contract_fields(f)?;
            let tick_type = f.string()?;
            let (number_of_ticks, ignore_size) = if version >= v::TICK_BY_TICK_IGNORE_SIZE {
                (f.i32()?, f.bool()?)
            } else {
                (0, false)
            };
            ClientMsg::ReqTickByTick {
                req_id,
                contract,
                tick_type,
                number_of_ticks,
                ignore_size,
            }
        }
        id::CANCEL_TICK_BY_TICK_DATA => ClientMsg::CancelTickByTick { req_id: f.i32()? },
        id::REQ_MARKET_DATA_TYPE => {
            f.skip_field()?;
            ClientMsg::ReqMarketDataType {
                market_data_type: f.i32()?,
            }
        }
        id::REQ_CONTRACT_DATA => {
            f.skip_field()?;
            let req_id = f.i32()?;
            let mut contract = read_contract_fields(f)?;
            contract.include_expired = f.bool()?;
            contract.sec_id_type = f.string()?;
            contract.sec_id = f.string()?;
            if version >= v::BOND_ISSUERID {
                contract.issuer_id = f.string()?;
            }
            ClientMsg::ReqContractDetails { req_id, contract }
        }
        id::REQ_CURRENT_TIME => ClientMsg::ReqCurrentTime,
        id::REQ_IDS => {
            f.skip_field()?;
            ClientMsg::ReqIds { num_ids: f.i32()? }
        }
        id::REQ_MANAGED_ACCTS => ClientMsg::ReqManagedAccts,
        id::REQ_POSITIONS => ClientMsg::ReqPositions,
        id::REQ_OPEN_ORDERS => ClientMsg::ReqOpenOrders,
        id::REQ_COMPLETED_ORDERS => ClientMsg::ReqCompletedOrders {
            api_only: f.bool()?,
        },
        id::REQ_ACCT_DATA => {
            f.skip_field()?;
            ClientMsg::ReqAccountUpdates {
                subscribe: f.bool()?,
                account: f.string()?,
            }
        }
        id::REQ_ACCOUNT_UPDATES_MULTI => {
            f.skip_field()?;
            ClientMsg::ReqAccountUpdatesMulti {
                req_id: f.i32()?,
                account: f.string()?,
                model_code: f.string()?,
                ledger_and_nlv: f.bool()?,
            }
        }
        id::REQ_EXECUTIONS => {
            f.skip_field()?;
            let req_id = f.i32()?;
            let mut filter = ExecutionFilter {
                client_id: f.i32()?,
                acct_code: f.string()?,
                time: f.string()?,
                symbol: f.string()?,
                sec_type: f.string()?,
                exchange: f.string()?,
                side: f.string()?,
                ..ExecutionFilter::default()
            };
            if version >= v::PARAMETRIZED_DAYS_OF_EXECUTIONS {
                filter.last_n_days = f.opt_i32()?;
                let n = f.i32()?;
                if n < 0 || n as usize > f.remaining() {
                    return Err(DecodeError::Field {
                        msg_id,
                        index: f.index() - 1,
                        problem: FieldProblem::OutOfRange,
                    });
                }
                for _ in 0..n {
                    filter.specific_dates.push(f.i32()?);
                }
            }
            ClientMsg::ReqExecutions { req_id, filter }
        }
        id::REQ_AUTO_OPEN_ORDERS => {
            f.skip_field()?;
            ClientMsg::ReqAutoOpenOrders {
                auto_bind: f.bool()?,
            }
        }
        _ => ClientMsg::Unknown { msg_id },
    })
}

fn decode_proto(msg_id: u32, b: &[u8]) -> Result<ClientMsg, ProtoProblem> {
    let mut r = Reader::new(b);
    let mut next = || -> Result<Option<(u32, Value<'_>)>, ProtoProblem> { Ok(r.next_field()?) };
    Ok(match msg_id {
        id::START_API => {
            let (mut client_id, mut caps) = (0, String::new());
            while let Some((f, x)) = next()? {
                match f {
                    1 => client_id = x.gi32(f)?,
                    2 => caps = x.gstr(f)?.to_owned(),
                    _ => {}
                }
            }
            ClientMsg::StartApi {
                client_id,
                optional_capabilities: caps,
            }
        }
        id::REQ_MKT_DATA => {
            let (mut req_id, mut contract, mut ticks, mut snap, mut reg) =
                (0, Contract::default(), String::new(), false, false);
            while let Some((f, x)) = next()? {
                match f {
                    1 => req_id = x.gi32(f)?,
                    2 => contract = read_contract_proto(x.gbytes(f)?)?,
                    3 => ticks = x.gstr(f)?.to_owned(),
                    4 => snap = x.gbool(f)?,
                    5 => reg = x.gbool(f)?,
                    _ => {}
                }
            }
            ClientMsg::ReqMktData {
                req_id,
                contract,
                generic_tick_list: ticks,
                snapshot: snap,
                regulatory_snapshot: reg,
            }
        }
        id::CANCEL_MKT_DATA
        | id::CANCEL_TICK_BY_TICK_DATA
        | id::CANCEL_CONTRACT_DATA
        | id::REQ_IDS
        | id::REQ_MARKET_DATA_TYPE => {
            let mut n = 0;
            while let Some((f, x)) = next()? {
                if f == 1 {
                    n = x.gi32(f)?;
                }
            }
            match msg_id {
                id::CANCEL_MKT_DATA => ClientMsg::CancelMktData { req_id: n },
                id::CANCEL_TICK_BY_TICK_DATA => ClientMsg::CancelTickByTick { req_id: n },
                id::CANCEL_CONTRACT_DATA => ClientMsg::CancelContractData { req_id: n },
                id::REQ_IDS => ClientMsg::ReqIds { num_ids: n },
                _ => ClientMsg::ReqMarketDataType {
                    market_data_type: n,
                },
            }
        }
        id::REQ_TICK_BY_TICK_DATA => {
            let (mut req_id, mut contract, mut tt, mut n, mut ign) =
                (0, Contract::default(), String::new(), 0, false);
            while let Some((f, x)) = next()? {
                match f {
                    1 => req_id = x.gi32(f)?,
                    2 => contract = read_contract_proto(x.gbytes(f)?)?,
                    3 => tt = x.gstr(f)?.to_owned(),
                    4 => n = x.gi32(f)?,
                    5 => ign = x.gbool(f)?,
                    _ => {}
                }
            }
            ClientMsg::ReqTickByTick {
                req_id,
                contract,
                tick_type: tt,
                number_of_ticks: n,
                ignore_size: ign,
            }
        }
        id::REQ_CONTRACT_DATA => {
            let (mut req_id, mut contract) = (0, Contract::default());
            while let Some((f, x)) = next()? {
                match f {
                    1 => req_id = x.gi32(f)?,
                    2 => contract = read_contract_proto(x.gbytes(f)?)?,
                    _ => {}
                }
            }
            ClientMsg::ReqContractDetails { req_id, contract }
        }
        id::REQ_CURRENT_TIME | id::REQ_MANAGED_ACCTS | id::REQ_POSITIONS | id::REQ_OPEN_ORDERS => {
            while next()?.is_some() {}
            match msg_id {
                id::REQ_CURRENT_TIME => ClientMsg::ReqCurrentTime,
                id::REQ_MANAGED_ACCTS => ClientMsg::ReqManagedAccts,
                id::REQ_POSITIONS => ClientMsg::ReqPositions,
                _ => ClientMsg::ReqOpenOrders,
            }
        }
        id::REQ_COMPLETED_ORDERS | id::REQ_AUTO_OPEN_ORDERS => {
            let mut b = false;
            while let Some((f, x)) = next()? {
                if f == 1 {
                    b = x.gbool(f)?;
                }
            }
            if msg_id == id::REQ_COMPLETED_ORDERS {
                ClientMsg::ReqCompletedOrders { api_only: b }
            } else {
                ClientMsg::ReqAutoOpenOrders { auto_bind: b }
            }
        }
        id::REQ_ACCT_DATA => {
            let (mut sub, mut acct) = (false, String::new());
            while let Some((f, x)) = next()? {
                match f {
                    1 => sub = x.gbool(f)?,
                    2 => acct = x.gstr(f)?.to_owned(),
                    _ => {}
                }
            }
            ClientMsg::ReqAccountUpdates {
                subscribe: sub,
                account: acct,
            }
        }
        id::REQ_ACCOUNT_UPDATES_MULTI => {
            let (mut req_id, mut acct, mut model, mut ledger) =
                (0, String::new(), String::new(), false);
            while let Some((f, x)) = next()? {
                match f {
                    1 => req_id = x.gi32(f)?,
                    2 => acct = x.gstr(f)?.to_owned(),
                    3 => model = x.gstr(f)?.to_owned(),
                    4 => ledger = x.gbool(f)?,
                    _ => {}
                }
            }
            ClientMsg::ReqAccountUpdatesMulti {
                req_id,
                account: acct,
                model_code: model,
                ledger_and_nlv: ledger,
            }
        }
        id::REQ_EXECUTIONS => {
            let (mut req_id, mut filter) = (0, ExecutionFilter::default());
            while let Some((f, x)) = next()? {
                match f {
                    1 => req_id = x.gi32(f)?,
                    2 => filter = read_filter(x.gbytes(f)?)?,
                    _ => {}
                }
            }
            ClientMsg::ReqExecutions { req_id, filter }
        }
        _ => {
            while next()?.is_some() {}
            ClientMsg::Unknown { msg_id }
        }
    })
}

fn read_filter(b: &[u8]) -> Result<ExecutionFilter, ProtoProblem> {
    let mut e = ExecutionFilter::default();
    let mut r = Reader::new(b);
    while let Some((f, x)) = r.next_field()? {
        match f {
            1 => e.client_id = x.gi32(f)?,
            2 => e.acct_code = x.gstr(f)?.to_owned(),
            3 => e.time = x.gstr(f)?.to_owned(),
            4 => e.symbol = x.gstr(f)?.to_owned(),
            5 => e.sec_type = x.gstr(f)?.to_owned(),
            6 => e.exchange = x.gstr(f)?.to_owned(),
            7 => e.side = x.gstr(f)?.to_owned(),
            8 => e.last_n_days = x.gi32(f)?,
            9 => match x {
                // Packed or not: accept both encodings of a repeated int32.
                Value::Len(p) => {
                    let mut pos = 0;
                    while pos < p.len() {
                        let (v, n) = packed_varint(&p[pos..])
                            .ok_or(ProtoProblem::Field(9, FieldProblem::BadInt))?;
                        e.specific_dates.push(v as i64 as i32);
                        pos += n;
                    }
                }
                _ => e.specific_dates.push(x.gi32(f)?),
            },
            _ => {}
        }
    }
    Ok(e)
}

fn packed_varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &c) in b.iter().enumerate().take(10) {
        v |= u64::from(c & 0x7f) << (7 * i);
        if c & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}
