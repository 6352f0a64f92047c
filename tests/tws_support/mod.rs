//! Shared helpers for the tws tests: sample messages and the per-version normalisation
//! (what a field that does not exist at a version reads back as).
#![allow(dead_code, unreachable_pub)]

use ib_stream::ipc::UNDEF_I64;
use ib_stream::tws::msg::server::{TbtQuote, TbtTrade, TickByTickData};
use ib_stream::tws::{
    ClientMsg, Contract, ContractDetails, ExecutionFilter, Frame, FrameReader, ServerMsg,
};

/// Versions covering every layout branch: text (100..=200) and protobuf families.
pub const VERSIONS: &[u32] = &[
    100, 109, 110, 114, 121, 122, 126, 134, 137, 140, 150, 152, 157, 163, 164, 166, 176, 178, 179,
    182, 186, 194, 200, 201, 204, 205, 206, 207, 208, 213, 215, 220, 226,
];

pub const P: i64 = 1_000_000_000;
pub const S: i64 = 100_000_000;

/// `"a,b,"` → `a\0b\0` (for wire examples without commas inside fields).
pub fn nul(s: &str) -> Vec<u8> {
    s.replace(',', "\0").into_bytes()
}

/// One whole length-prefixed frame around `payload`.
pub fn framed(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// Decode exactly one frame from `wire` at `version`.
pub fn one_frame<T>(wire: &[u8], version: u32, f: impl FnOnce(&Frame<'_>) -> T) -> T {
    let mut r = FrameReader::new();
    r.feed(wire);
    let frame = r
        .next_frame(version)
        .expect("frame")
        .expect("complete frame");
    let out = f(&frame);
    assert_eq!(r.buffered(), 0, "one frame exactly");
    out
}

pub fn aapl() -> Contract {
    Contract {
        con_id: 265_598,
        symbol: "AAPL".into(),
        sec_type: "STK".into(),
        exchange: "SMART".into(),
        primary_exchange: "NASDAQ".into(),
        currency: "USD".into(),
        local_symbol: "AAPL".into(),
        trading_class: "NMS".into(),
        ..Contract::default()
    }
}

pub fn mnq() -> Contract {
    Contract {
        con_id: 711_280_073,
        symbol: "MNQ".into(),
        sec_type: "FUT".into(),
        last_trade_date_or_contract_month: "20261218".into(),
        multiplier: "2".into(),
        exchange: "CME".into(),
        currency: "USD".into(),
        local_symbol: "MNQZ6".into(),
        trading_class: "MNQ".into(),
        ..Contract::default()
    }
}

pub fn details(c: Contract) -> ContractDetails {
    ContractDetails {
        contract: Contract {
            last_trade_date: "20261218".into(),
            strike: 0,
            ..c
        },
        market_name: "MNQ".into(),
        min_tick: 250_000_000,
        md_size_multiplier: 1,
        order_types: "LMT,MKT".into(),
        valid_exchanges: "CME,QBALGO".into(),
        price_magnifier: 1,
        under_con_id: 362_687_422,
        long_name: "Micro E-Mini Nasdaq-100 Index".into(),
        contract_month: "202612".into(),
        industry: "".into(),
        category: "".into(),
        subcategory: "".into(),
        time_zone_id: "US/Central".into(),
        trading_hours: "20261122:1700-20261123:1600".into(),
        liquid_hours: "20261123:0830-20261123:1600".into(),
        ev_rule: "".into(),
        ev_multiplier: 0.0,
        sec_id_list: vec![("ISIN".into(), "US0000000000".into())],
        agg_group: 2147483647,
        under_symbol: "NQ".into(),
        under_sec_type: "IND".into(),
        market_rule_ids: "67".into(),
        real_expiration_date: "20261218".into(),
        stock_type: "".into(),
        size_min_tick: S,
        min_size: S,
        size_increment: S,
        suggested_size_increment: S,
        fund_fields: Vec::new(),
        ineligibility_reasons: vec![("1".into(), "why".into())],
    }
}

pub fn sample_server() -> Vec<ServerMsg> {
    let trade = TbtTrade {
        price: 18_925 * P / 100,
        size: 100 * S,
        past_limit: false,
        unreported: true,
        exchange: "NASDAQ".into(),
        special_conditions: " T".into(),
    };
    let mut fund = details(Contract {
        sec_type: "FUND".into(),
        ..aapl()
    });
    // Fields 7..=9 are booleans and 15/16 enum codes in the clients' decoders.
    fund.fund_fields = (0..17)
        .map(|i| match i {
            7..=9 => (i % 2).to_string(),
            15 | 16 => String::new(),
            _ => format!("f{i}"),
        })
        .collect();
    vec![
        ServerMsg::TickPrice {
            req_id: 7,
            tick_type: 1,
            price: 18_924 * P / 100,
            size: 300 * S,
            attr_mask: 1,
        },
        ServerMsg::TickPrice {
            req_id: 7,
            tick_type: 9,
            price: -P,
            size: UNDEF_I64,
            attr_mask: 0,
        },
        ServerMsg::TickSize {
            req_id: 7,
            tick_type: 8,
            size: 12_345 * S + 5,
        },
        ServerMsg::TickString {
            req_id: 7,
            tick_type: 45,
            value: "1767277800".into(),
        },
        ServerMsg::TickGeneric {
            req_id: 7,
            tick_type: 49,
            value: 0.0,
        },
        ServerMsg::TickGeneric {
            req_id: 7,
            tick_type: 46,
            value: 3.5,
        },
        ServerMsg::TickReqParams {
            req_id: 7,
            min_tick: P / 100,
            bbo_exchange: "9c0001".into(),
            snapshot_permissions: 3,
        },
        ServerMsg::TickSnapshotEnd { req_id: 7 },
        ServerMsg::MarketDataType {
            req_id: 7,
            market_data_type: 3,
        },
        ServerMsg::TickByTick {
            req_id: 8,
            time: 1_767_277_800,
            data: TickByTickData::Last(trade.clone()),
        },
        ServerMsg::TickByTick {
            req_id: 8,
            time: 1_767_277_801,
            data: TickByTickData::AllLast(trade),
        },
        ServerMsg::TickByTick {
            req_id: 9,
            time: 1_767_277_802,
            data: TickByTickData::BidAsk(TbtQuote {
                bid_price: 18_924 * P / 100,
                ask_price: 18_925 * P / 100,
                bid_size: 300 * S,
                ask_size: 200 * S,
                bid_past_low: true,
                ask_past_high: false,
            }),
        },
        ServerMsg::TickByTick {
            req_id: 10,
            time: 1_767_277_803,
            data: TickByTickData::MidPoint(189_245 * P / 1000),
        },
        ServerMsg::Error {
            req_id: -1,
            code: 2104,
            message: "Market data farm connection is OK:usfarm".into(),
            advanced_order_reject_json: "{\"a\":1}".into(),
            error_time_ms: 1_767_277_800_123,
        },
        ServerMsg::NextValidId { order_id: 117 },
        ServerMsg::ManagedAccounts {
            accounts: "DU1234567,DU7654321".into(),
        },
        ServerMsg::ContractData {
            req_id: 11,
            details: Box::new(details(mnq())),
        },
        ServerMsg::ContractData {
            req_id: 12,
            details: Box::new(fund),
        },
        ServerMsg::ContractDataEnd { req_id: 11 },
        ServerMsg::CurrentTime {
            time: 1_767_277_800,
        },
        ServerMsg::PositionEnd,
        ServerMsg::OpenOrderEnd,
        ServerMsg::CompletedOrdersEnd,
        ServerMsg::AccountDownloadEnd {
            account: "DU1234567".into(),
        },
        ServerMsg::AccountUpdateMultiEnd { req_id: 13 },
        ServerMsg::ExecDetailsEnd { req_id: 14 },
    ]
}

/// What `m` reads back as after a trip at `version` (fields absent at that version).
pub fn normalize_server(m: &ServerMsg, version: u32) -> ServerMsg {
    let proto = version >= 201;
    let mut m = m.clone();
    match &mut m {
        ServerMsg::Error {
            advanced_order_reject_json,
            error_time_ms,
            ..
        } if !proto => {
            if version < 194 {
                *error_time_ms = 0;
            }
            if version < 166 {
                advanced_order_reject_json.clear();
            }
        }
        ServerMsg::ContractData { details: d, .. } => {
            let fund = d.contract.sec_type == "FUND";
            if proto {
                d.md_size_multiplier = 0;
                d.size_min_tick = UNDEF_I64;
                if fund {
                    // Booleans travel as bool: any text other than 1/true reads back as "0".
                    for i in ib_stream::tws::contract::FUND_BOOL_FIELDS {
                        if let Some(f) = d.fund_fields.get_mut(i) {
                            *f = if matches!(f.as_str(), "1" | "true" | "True") {
                                "1"
                            } else {
                                "0"
                            }
                            .into();
                        }
                    }
                } else {
                    d.fund_fields.clear();
                }
                return m;
            }
            if version < 182 {
                d.contract.last_trade_date.clear();
            }
            if !(110..164).contains(&version) {
                d.md_size_multiplier = 0;
            }
            if version < 121 {
                d.agg_group = 0;
            }
            if version < 122 {
                d.under_symbol.clear();
                d.under_sec_type.clear();
            }
            if version < 126 {
                d.market_rule_ids.clear();
            }
            if version < 134 {
                d.real_expiration_date.clear();
            }
            if version < 152 {
                d.stock_type.clear();
            }
            if version != 163 {
                d.size_min_tick = UNDEF_I64;
            }
            if version < 164 {
                d.min_size = UNDEF_I64;
                d.size_increment = UNDEF_I64;
                d.suggested_size_increment = UNDEF_I64;
            }
            if version < 179 || !fund {
                d.fund_fields.clear();
            }
            if version < 186 {
                d.ineligibility_reasons.clear();
            }
        }
        _ => {}
    }
    m
}

pub fn sample_client() -> Vec<ClientMsg> {
    let bag = Contract {
        sec_type: "BAG".into(),
        symbol: "SPY".into(),
        combo_legs: vec![ib_stream::tws::ComboLeg {
            con_id: 1,
            ratio: 2,
            action: "BUY".into(),
            exchange: "SMART".into(),
        }],
        delta_neutral: Some(ib_stream::tws::DeltaNeutral {
            con_id: 3,
            delta: 0.5,
            price: 101.25,
        }),
        ..aapl()
    };
    let cd = Contract {
        include_expired: true,
        sec_id_type: "ISIN".into(),
        sec_id: "US0378331005".into(),
        issuer_id: "e1".into(),
        ..aapl()
    };
    vec![
        ClientMsg::StartApi {
            client_id: 7,
            optional_capabilities: String::new(),
        },
        ClientMsg::StartApi {
            client_id: 0,
            optional_capabilities: "+x".into(),
        },
        ClientMsg::ReqMktData {
            req_id: 1,
            contract: aapl(),
            generic_tick_list: "233,236".into(),
            snapshot: false,
            regulatory_snapshot: true,
        },
        ClientMsg::ReqMktData {
            req_id: 2,
            contract: Contract { strike: 0, ..mnq() },
            generic_tick_list: String::new(),
            snapshot: true,
            regulatory_snapshot: false,
        },
        ClientMsg::ReqMktData {
            req_id: 3,
            contract: bag,
            generic_tick_list: String::new(),
            snapshot: false,
            regulatory_snapshot: false,
        },
        ClientMsg::CancelMktData { req_id: 1 },
        ClientMsg::ReqTickByTick {
            req_id: 4,
            contract: aapl(),
            tick_type: "BidAsk".into(),
            number_of_ticks: 5,
            ignore_size: true,
        },
        ClientMsg::CancelTickByTick { req_id: 4 },
        ClientMsg::ReqMarketDataType {
            market_data_type: 3,
        },
        ClientMsg::ReqContractDetails {
            req_id: 5,
            contract: cd,
        },
        ClientMsg::CancelContractData { req_id: 5 },
        ClientMsg::ReqCurrentTime,
        ClientMsg::ReqIds { num_ids: 1 },
        ClientMsg::ReqManagedAccts,
        ClientMsg::ReqPositions,
        ClientMsg::ReqOpenOrders,
        ClientMsg::ReqCompletedOrders { api_only: true },
        ClientMsg::ReqAccountUpdates {
            subscribe: true,
            account: "DU1234567".into(),
        },
        ClientMsg::ReqAccountUpdatesMulti {
            req_id: 6,
            account: "DU1234567".into(),
            model_code: String::new(),
            ledger_and_nlv: true,
        },
        ClientMsg::ReqExecutions {
            req_id: 7,
            filter: ExecutionFilter {
                client_id: 3,
                acct_code: "DU1".into(),
                last_n_days: 2,
                specific_dates: vec![20260101, 20260102],
                ..ExecutionFilter::default()
            },
        },
        ClientMsg::ReqAutoOpenOrders { auto_bind: true },
    ]
}

/// True when `m` exists at `version`.
pub fn client_exists(m: &ClientMsg, version: u32) -> bool {
    match m {
        ClientMsg::CancelContractData { .. } => version >= 215,
        ClientMsg::ReqTickByTick { .. } | ClientMsg::CancelTickByTick { .. } => version >= 137,
        ClientMsg::Unknown { .. } => false,
        _ => true,
    }
}

/// What `m` reads back as after a trip at `version`.
pub fn normalize_client(m: &ClientMsg, version: u32) -> ClientMsg {
    let proto = version >= m.proto_since();
    let mut m = m.clone();
    match &mut m {
        ClientMsg::ReqMktData {
            regulatory_snapshot,
            contract,
            ..
        } => {
            if !proto && version < 114 {
                *regulatory_snapshot = false;
            }
            if !proto && contract.sec_type != "BAG" {
                contract.combo_legs.clear();
            }
        }
        ClientMsg::ReqTickByTick {
            number_of_ticks,
            ignore_size,
            ..
        } if !proto && version < 140 => {
            *number_of_ticks = 0;
            *ignore_size = false;
        }
        ClientMsg::ReqContractDetails { contract, .. } if !proto && version < 176 => {
            contract.issuer_id.clear();
        }
        ClientMsg::ReqExecutions { filter, .. } if !proto && version < 200 => {
            filter.last_n_days = i32::MAX;
            filter.specific_dates.clear();
        }
        _ => {}
    }
    m
}
