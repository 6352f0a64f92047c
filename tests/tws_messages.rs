//! Encode/decode of every message at every layout branch, the real clients' text wire
//! examples (reference §3) and the observed protobuf bytes (reference §7).

mod tws_support;

use ib_stream::ipc::UNDEF_I64;
use ib_stream::tws::frame::{MIN_FRAME_LEN, split_frame};
use ib_stream::tws::msg::server::{TbtTrade, TickByTickData};
use ib_stream::tws::{ClientMsg, Contract, EncodeError, ServerMsg};
use tws_support::*;

#[test]
fn every_server_message_round_trips_at_every_version() {
    for &ver in VERSIONS {
        for m in sample_server() {
            let mut wire = Vec::new();
            m.encode(ver, &mut wire);
            let got = one_frame(&wire, ver, |f| {
                assert_eq!(f.is_proto(), ver >= 201, "{m:?} at {ver}");
                ServerMsg::decode(f, ver)
            });
            assert_eq!(got, Ok(normalize_server(&m, ver)), "{m:?} at {ver}");
        }
    }
}

#[test]
fn every_client_message_round_trips_at_every_version() {
    for &ver in VERSIONS {
        for m in sample_client() {
            let mut wire = Vec::new();
            let res = m.encode(ver, &mut wire);
            if !client_exists(&m, ver) {
                assert!(
                    matches!(res, Err(EncodeError::NotSupported { .. })),
                    "{m:?} at {ver}"
                );
                assert!(wire.is_empty());
                continue;
            }
            res.unwrap();
            let got = one_frame(&wire, ver, |f| {
                assert_eq!(f.is_proto(), ver >= m.proto_since(), "{m:?} at {ver}");
                ClientMsg::decode(f, ver)
            });
            assert_eq!(got, Ok(normalize_client(&m, ver)), "{m:?} at {ver}");
        }
    }
}

// ---- text wire examples captured from the real clients (reference §3) ----

fn ibapi_aapl() -> Contract {
    Contract {
        symbol: "AAPL".into(),
        sec_type: "STK".into(),
        exchange: "SMART".into(),
        primary_exchange: "NASDAQ".into(),
        currency: "USD".into(),
        ..Contract::default()
    }
}

#[test]
fn ibapi_req_mkt_data_bytes() {
    let want = framed(&nul("1,11,1,0,AAPL,STK,,,,,SMART,NASDAQ,USD,,,0,,0,0,,"));
    let m = ClientMsg::ReqMktData {
        req_id: 1,
        contract: ibapi_aapl(),
        generic_tick_list: String::new(),
        snapshot: false,
        regulatory_snapshot: false,
    };
    let mut out = Vec::new();
    m.encode(176, &mut out).unwrap();
    assert_eq!(out, want);
    assert_eq!(one_frame(&want, 176, |f| ClientMsg::decode(f, 176)), Ok(m));
}

#[test]
fn ib_async_req_mkt_data_with_strike_0_0() {
    let wire = framed(&nul(
        "1,11,5,265598,AAPL,STK,,0.0,,,SMART,NASDAQ,USD,AAPL,AAPL,0,,0,0,,",
    ));
    let m = one_frame(&wire, 178, |f| ClientMsg::decode(f, 178)).unwrap();
    let ClientMsg::ReqMktData {
        req_id, contract, ..
    } = m
    else {
        panic!("{m:?}")
    };
    assert_eq!((req_id, contract.con_id, contract.strike), (5, 265_598, 0));
    assert_eq!(contract.local_symbol, "AAPL");
    // ibapi's "" strike is unset, not zero.
    let wire = framed(&nul("1,11,1,0,AAPL,STK,,,,,SMART,NASDAQ,USD,,,0,,0,0,,"));
    let ClientMsg::ReqMktData { contract, .. } =
        one_frame(&wire, 178, |f| ClientMsg::decode(f, 178)).unwrap()
    else {
        panic!()
    };
    assert_eq!(contract.strike, UNDEF_I64);
}

#[test]
fn ibapi_tick_by_tick_and_contract_details_bytes() {
    let m = ClientMsg::ReqTickByTick {
        req_id: 2,
        contract: ibapi_aapl(),
        tick_type: "BidAsk".into(),
        number_of_ticks: 0,
        ignore_size: false,
    };
    let mut out = Vec::new();
    m.encode(176, &mut out).unwrap();
    assert_eq!(
        out,
        framed(&nul("97,2,0,AAPL,STK,,,,,SMART,NASDAQ,USD,,,BidAsk,0,0,"))
    );

    let m = ClientMsg::ReqContractDetails {
        req_id: 10,
        contract: ibapi_aapl(),
    };
    let mut out = Vec::new();
    m.encode(176, &mut out).unwrap();
    assert_eq!(
        out,
        framed(&nul("9,8,10,0,AAPL,STK,,,,,SMART,NASDAQ,USD,,,0,,,,"))
    );

    let wire = framed(&nul("9,8,3,0,AAPL,STK,,0.0,,,SMART,,USD,,,0,,,,"));
    let got = one_frame(&wire, 178, |f| ClientMsg::decode(f, 178)).unwrap();
    let ClientMsg::ReqContractDetails { req_id, contract } = got else {
        panic!()
    };
    assert_eq!(
        (req_id, contract.strike, contract.primary_exchange.as_str()),
        (3, 0, "")
    );
}

#[test]
fn start_api_and_startup_sync_requests_text() {
    let mut out = Vec::new();
    ClientMsg::StartApi {
        client_id: 7,
        optional_capabilities: String::new(),
    }
    .encode(176, &mut out)
    .unwrap();
    assert_eq!(out, framed(&nul("71,2,7,,")));
    for (text, want) in [
        ("61,1,", ClientMsg::ReqPositions),
        ("5,1,", ClientMsg::ReqOpenOrders),
        ("99,0,", ClientMsg::ReqCompletedOrders { api_only: false }),
        (
            "6,2,1,DU1,",
            ClientMsg::ReqAccountUpdates {
                subscribe: true,
                account: "DU1".into(),
            },
        ),
        (
            "76,1,9,DU1,,0,",
            ClientMsg::ReqAccountUpdatesMulti {
                req_id: 9,
                account: "DU1".into(),
                model_code: String::new(),
                ledger_and_nlv: false,
            },
        ),
        ("15,1,1,", ClientMsg::ReqAutoOpenOrders { auto_bind: true }),
        ("49,1,", ClientMsg::ReqCurrentTime),
        ("17,1,", ClientMsg::ReqManagedAccts),
        ("8,1,1,", ClientMsg::ReqIds { num_ids: 1 }),
        (
            "59,1,3,",
            ClientMsg::ReqMarketDataType {
                market_data_type: 3,
            },
        ),
        ("2,2,5,", ClientMsg::CancelMktData { req_id: 5 }),
        ("98,5,", ClientMsg::CancelTickByTick { req_id: 5 }),
        ("12345,1,", ClientMsg::Unknown { msg_id: 12345 }),
    ] {
        let wire = framed(&nul(text));
        assert_eq!(
            one_frame(&wire, 178, |f| ClientMsg::decode(f, 178)),
            Ok(want),
            "{text}"
        );
    }
    // ib_async's reqExecutions at 178.
    let wire = framed(&nul("7,3,4,0,,,,,,,"));
    let got = one_frame(&wire, 178, |f| ClientMsg::decode(f, 178)).unwrap();
    assert!(
        matches!(got, ClientMsg::ReqExecutions { req_id: 4, .. }),
        "{got:?}"
    );
}

#[test]
fn server_text_matches_recorded_gateway_frames() {
    let check = |m: ServerMsg, ver: u32, text: &str| {
        let mut out = Vec::new();
        m.encode(ver, &mut out);
        assert_eq!(out, framed(&nul(text)), "{m:?}");
    };
    check(
        ServerMsg::ManagedAccounts {
            accounts: "DU1234567".into(),
        },
        176,
        "15,1,DU1234567,",
    );
    check(ServerMsg::NextValidId { order_id: 117 }, 176, "9,1,117,");
    check(
        ServerMsg::Error {
            req_id: -1,
            code: 2104,
            message: "Market data farm connection is OK:usfarm".into(),
            advanced_order_reject_json: String::new(),
            error_time_ms: 0,
        },
        157,
        "4,2,-1,2104,Market data farm connection is OK:usfarm,",
    );
    check(
        ServerMsg::Error {
            req_id: 3,
            code: 200,
            message: "x".into(),
            advanced_order_reject_json: String::new(),
            error_time_ms: 0,
        },
        178,
        "4,2,3,200,x,,",
    );
    check(
        ServerMsg::Error {
            req_id: 3,
            code: 200,
            message: "x".into(),
            advanced_order_reject_json: String::new(),
            error_time_ms: 5,
        },
        194,
        "4,3,200,x,,5,",
    );
    // tickPrice: version 6 and exactly 7 fields (ib_async unpacks a 7-tuple).
    check(
        ServerMsg::TickPrice {
            req_id: 1,
            tick_type: 1,
            price: 189_240_000_000,
            size: 300 * S,
            attr_mask: 1,
        },
        178,
        "1,6,1,1,189.24,300,1,",
    );
    check(
        ServerMsg::TickString {
            req_id: 1,
            tick_type: 45,
            value: "1767277800".into(),
        },
        178,
        "46,6,1,45,1767277800,",
    );
    check(
        ServerMsg::TickGeneric {
            req_id: 1,
            tick_type: 49,
            value: 0.0,
        },
        178,
        "45,6,1,49,0,",
    );
    check(
        ServerMsg::MarketDataType {
            req_id: 1,
            market_data_type: 1,
        },
        178,
        "58,1,1,1,",
    );
    check(ServerMsg::PositionEnd, 178, "62,1,");
    check(ServerMsg::CompletedOrdersEnd, 178, "102,");
    check(
        ServerMsg::TickByTick {
            req_id: 2,
            time: 1_767_277_800,
            data: TickByTickData::Last(TbtTrade {
                price: 189_250_000_000,
                size: 100 * S,
                past_limit: false,
                unreported: false,
                exchange: "NASDAQ".into(),
                special_conditions: " T".into(),
            }),
        },
        178,
        "99,2,1,1767277800,189.25,100,0,NASDAQ, T,",
    );
    // At 163 contractData carries version 8, mdSizeMultiplier and sizeMinTick.
    let mut out = Vec::new();
    ServerMsg::ContractData {
        req_id: 1,
        details: Box::new(details(mnq())),
    }
    .encode(163, &mut out);
    let text = String::from_utf8(out[4..].to_vec())
        .unwrap()
        .replace('\0', ",");
    assert!(
        text.starts_with("10,8,1,MNQ,FUT,20261218,0,,CME,USD,MNQZ6,MNQ,MNQ,711280073,0.25,1,2,"),
        "{text}"
    );
}

// ---- observed protobuf bytes (reference §7, probe_full.log) ----

const REQ: i32 = 1_500_000_000;
const REQ_VARINT: [u8; 5] = [0x80, 0xde, 0xa0, 0xcb, 0x05];

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

fn body(m: &ClientMsg) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode(226, &mut out).unwrap();
    let (payload, used) = split_frame(&out, MIN_FRAME_LEN)
        .unwrap()
        .expect("a whole frame");
    assert_eq!(used, out.len());
    payload.to_vec()
}

fn server_frame(m: &ServerMsg) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode(226, &mut out);
    out
}

fn probe_contract() -> Contract {
    Contract {
        symbol: "AAPL".into(),
        sec_type: "STK".into(),
        exchange: "SMART".into(),
        currency: "USD".into(),
        ..Contract::default()
    }
}

fn contract_bytes() -> Vec<u8> {
    let mut v = hex("12 17 12 04");
    v.extend_from_slice(b"AAPL");
    v.extend_from_slice(&hex("1a 03"));
    v.extend_from_slice(b"STK");
    v.extend_from_slice(&hex("42 05"));
    v.extend_from_slice(b"SMART");
    v.extend_from_slice(&hex("52 03"));
    v.extend_from_slice(b"USD");
    v
}

fn with_req(id_hex: &str, req_last: u8) -> Vec<u8> {
    let mut v = hex(id_hex);
    v.push(0x08);
    let mut r = REQ_VARINT;
    r[0] = req_last;
    v.extend_from_slice(&r);
    v
}

#[test]
fn observed_client_protobuf_bodies() {
    assert_eq!(
        body(&ClientMsg::ReqMarketDataType {
            market_data_type: 3
        }),
        hex("00 00 01 03 08 03")
    );

    let mut want = with_req("00 00 00 c9", 0x80);
    want.extend_from_slice(&contract_bytes());
    want.extend_from_slice(&hex("1a 07"));
    want.extend_from_slice(b"233,236");
    let m = ClientMsg::ReqMktData {
        req_id: REQ,
        contract: probe_contract(),
        generic_tick_list: "233,236".into(),
        snapshot: false,
        regulatory_snapshot: false,
    };
    assert_eq!(body(&m), want);
    assert_eq!(
        one_frame(&framed(&want), 226, |f| ClientMsg::decode(f, 226)),
        Ok(m)
    );

    assert_eq!(
        body(&ClientMsg::CancelMktData { req_id: REQ }),
        with_req("00 00 00 ca", 0x80)
    );

    let mut want = with_req("00 00 01 29", 0x81);
    want.extend_from_slice(&contract_bytes());
    want.extend_from_slice(&hex("1a 04"));
    want.extend_from_slice(b"Last");
    want.extend_from_slice(&hex("20 00"));
    let m = ClientMsg::ReqTickByTick {
        req_id: REQ + 1,
        contract: probe_contract(),
        tick_type: "Last".into(),
        number_of_ticks: 0,
        ignore_size: false,
    };
    assert_eq!(body(&m), want);
    assert_eq!(
        body(&ClientMsg::CancelTickByTick { req_id: REQ + 1 }),
        with_req("00 00 01 2a", 0x81)
    );

    let mut want = with_req("00 00 00 d1", 0x82);
    want.extend_from_slice(&contract_bytes());
    assert_eq!(
        body(&ClientMsg::ReqContractDetails {
            req_id: REQ + 2,
            contract: probe_contract()
        }),
        want
    );

    let mut out = Vec::new();
    ClientMsg::StartApi {
        client_id: 7,
        optional_capabilities: String::new(),
    }
    .encode(222, &mut out)
    .unwrap();
    assert_eq!(out, hex("00 00 00 06 00 00 01 0f 08 07"));
}

#[test]
fn observed_server_protobuf_frames() {
    let tick_price = hex(
        "00 00 00 1c 00 00 00 c9 08 80 de a0 cb 05 10 01 19 00 00 00 00 00 a8 67 40 22 03 33 30 30 28 01",
    );
    let m = ServerMsg::TickPrice {
        req_id: REQ,
        tick_type: 1,
        price: 189_250_000_000,
        size: 300 * S,
        attr_mask: 1,
    };
    assert_eq!(server_frame(&m), tick_price);
    assert_eq!(
        one_frame(&tick_price, 226, |f| ServerMsg::decode(f, 226)),
        Ok(m)
    );

    let tick_size = hex("00 00 00 11 00 00 00 ca 08 80 de a0 cb 05 10 00 1a 03 33 30 30");
    let m = ServerMsg::TickSize {
        req_id: REQ,
        tick_type: 0,
        size: 300 * S,
    };
    assert_eq!(server_frame(&m), tick_size);

    let mut tick_string = hex("00 00 00 18 00 00 00 f6 08 80 de a0 cb 05 10 2d 1a 0a");
    tick_string.extend_from_slice(b"1767277800");
    assert_eq!(
        server_frame(&ServerMsg::TickString {
            req_id: REQ,
            tick_type: 45,
            value: "1767277800".into()
        }),
        tick_string
    );

    let tick_generic =
        hex("00 00 00 15 00 00 00 f5 08 80 de a0 cb 05 10 31 19 00 00 00 00 00 00 00 00");
    assert_eq!(
        server_frame(&ServerMsg::TickGeneric {
            req_id: REQ,
            tick_type: 49,
            value: 0.0
        }),
        tick_generic
    );

    let mdt = hex("00 00 00 0c 00 00 01 02 08 80 de a0 cb 05 10 01");
    assert_eq!(
        server_frame(&ServerMsg::MarketDataType {
            req_id: REQ,
            market_data_type: 1
        }),
        mdt
    );

    let mut tbt = hex(
        "00 00 00 34 00 00 01 2b 08 81 de a0 cb 05 10 01 1a 26 08 e8 89 da ca 06 12 04 08 00 10 01 19 b8 1e 85 eb 51 a8 67 40 22 03",
    );
    tbt.extend_from_slice(b"100");
    tbt.extend_from_slice(&hex("2a 06"));
    tbt.extend_from_slice(b"NASDAQ");
    tbt.extend_from_slice(&hex("32 02"));
    tbt.extend_from_slice(b" T");
    let m = one_frame(&tbt, 226, |f| ServerMsg::decode(f, 226)).unwrap();
    let want = ServerMsg::TickByTick {
        req_id: REQ + 1,
        time: 1_767_277_800,
        data: TickByTickData::Last(TbtTrade {
            price: 189_260_000_000,
            size: 100 * S,
            past_limit: false,
            unreported: true,
            exchange: "NASDAQ".into(),
            special_conditions: " T".into(),
        }),
    };
    assert_eq!(m, want);
    assert_eq!(server_frame(&want), tbt);

    let cde = hex("00 00 00 0a 00 00 00 fc 08 82 de a0 cb 05");
    assert_eq!(
        server_frame(&ServerMsg::ContractDataEnd { req_id: REQ + 2 }),
        cde
    );

    // error 2104, id -1 (10-byte varint); the observed frame is 0x43 long with a 6-byte time.
    let msg = "Market data farm connection is OK:usfarm";
    let m = ServerMsg::Error {
        req_id: -1,
        code: 2104,
        message: msg.into(),
        advanced_order_reject_json: String::new(),
        error_time_ms: 1_767_277_800_000,
    };
    let out = server_frame(&m);
    let mut head = hex("00 00 00 43 00 00 00 cc 08 ff ff ff ff ff ff ff ff ff 01 10");
    assert_eq!(out[..head.len()], head[..]);
    let mut tail = hex("18 b8 10 22 28");
    tail.extend_from_slice(msg.as_bytes());
    assert_eq!(out[out.len() - tail.len()..], tail[..]);
    assert_eq!(out.len(), head.len() + 6 + tail.len());
    head.clear();
    assert_eq!(one_frame(&out, 226, |f| ServerMsg::decode(f, 226)), Ok(m));
}
