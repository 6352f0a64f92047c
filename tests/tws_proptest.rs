//! Property tests: encode → decode identity for every message at every version (text
//! 100..=200 with its layout branches, protobuf from 201), and robustness: arbitrary bytes
//! and split points never panic, never read past a frame, and end in messages or typed
//! errors. Case counts are bounded so the suite stays within a few seconds.

mod tws_support;

use ib_stream::ipc::{Record, UNDEF_I64};
use ib_stream::tws::msg::server::{TbtQuote, TbtTrade, TickByTickData};
use ib_stream::tws::tick::VecInterner;
use ib_stream::tws::{
    ClientMsg, ComboLeg, Contract, ContractDetails, Decoder, DeltaNeutral, ExecutionFilter, Frame,
    FrameReader, ServerMsg,
};
use proptest::prelude::*;
use tws_support::*;

/// `cases` per property, or `TWS_PROPTEST_CASES` for a deeper run.
fn cfg(cases: u32) -> ProptestConfig {
    let cases = std::env::var("TWS_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn text() -> impl Strategy<Value = String> {
    "[ -~]{0,10}"
}

/// Prices: any value in text (exact decimal); within ±2^50 units in protobuf, where a
/// double carries 1e-9 steps exactly enough to round back.
fn price(proto: bool) -> BoxedStrategy<i64> {
    if proto {
        prop_oneof![Just(UNDEF_I64), -(1i64 << 50)..(1i64 << 50)].boxed()
    } else {
        prop_oneof![
            Just(UNDEF_I64),
            any::<i64>(),
            -1_000_000_000_000i64..1_000_000_000_000
        ]
        .boxed()
    }
}

fn size() -> impl Strategy<Value = i64> {
    prop_oneof![Just(UNDEF_I64), any::<i64>(), 0i64..1_000_000_000_000]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |x| x.is_finite()),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
    ]
}

fn multiplier() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("2".to_owned()),
        Just("0.1".to_owned()),
        (1u32..100_000).prop_map(|m| m.to_string())
    ]
}

fn sec_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("STK"),
        Just("FUT"),
        Just("FUND"),
        Just("CASH"),
        Just("OPT")
    ]
    .prop_map(str::to_owned)
}

/// The twelve contract fields every request carries.
fn contract12(proto: bool) -> impl Strategy<Value = Contract> {
    (
        any::<i32>(),
        text(),
        sec_type(),
        text(),
        price(proto),
        text(),
        multiplier(),
        text(),
        text(),
        text(),
        text(),
        text(),
    )
        .prop_map(
            |(
                con_id,
                symbol,
                sec_type,
                ltd,
                strike,
                right,
                multiplier,
                exchange,
                primary_exchange,
                currency,
                local_symbol,
                trading_class,
            )| {
                Contract {
                    con_id,
                    symbol,
                    sec_type,
                    last_trade_date_or_contract_month: ltd,
                    strike,
                    right,
                    multiplier,
                    exchange,
                    primary_exchange,
                    currency,
                    local_symbol,
                    trading_class,
                    ..Contract::default()
                }
            },
        )
}

fn details(proto: bool) -> impl Strategy<Value = ContractDetails> {
    let a = (
        contract12(proto),
        text(),
        price(proto),
        any::<i32>(),
        text(),
        text(),
        any::<i32>(),
        any::<i32>(),
        text(),
        text(),
    );
    let b = (
        text(),
        text(),
        text(),
        text(),
        text(),
        text(),
        text(),
        float().prop_filter("finite", |x| x.is_finite()),
    );
    let c = (
        prop::collection::vec((text(), text()), 0..3),
        any::<i32>(),
        text(),
        text(),
        text(),
        text(),
        text(),
        size(),
        (size(), size(), size()),
        prop::collection::vec(text(), 17),
        prop::collection::vec((text(), text()), 0..3),
    );
    (a, b, c).prop_map(|(a, b, c)| {
        let (
            mut contract,
            market_name,
            min_tick,
            md_size_multiplier,
            order_types,
            valid_exchanges,
            price_magnifier,
            under_con_id,
            long_name,
            contract_month,
        ) = a;
        let (
            industry,
            category,
            subcategory,
            time_zone_id,
            trading_hours,
            liquid_hours,
            ev_rule,
            ev_multiplier,
        ) = b;
        let (
            sec_id_list,
            agg_group,
            under_symbol,
            under_sec_type,
            market_rule_ids,
            real_expiration_date,
            stock_type,
            size_min_tick,
            sizes,
            fund,
            inel,
        ) = c;
        contract.last_trade_date = contract.local_symbol.clone();
        let fund_fields = if contract.sec_type == "FUND" {
            fund
        } else {
            Vec::new()
        };
        ContractDetails {
            contract,
            market_name,
            min_tick,
            md_size_multiplier,
            order_types,
            valid_exchanges,
            price_magnifier,
            under_con_id,
            long_name,
            contract_month,
            industry,
            category,
            subcategory,
            time_zone_id,
            trading_hours,
            liquid_hours,
            ev_rule,
            ev_multiplier,
            sec_id_list,
            agg_group,
            under_symbol,
            under_sec_type,
            market_rule_ids,
            real_expiration_date,
            stock_type,
            size_min_tick,
            min_size: sizes.0,
            size_increment: sizes.1,
            suggested_size_increment: sizes.2,
            fund_fields,
            ineligibility_reasons: inel,
        }
    })
}

fn tbt(proto: bool) -> impl Strategy<Value = TickByTickData> {
    let trade = (
        price(proto),
        size(),
        any::<bool>(),
        any::<bool>(),
        text(),
        text(),
    )
        .prop_map(
            |(price, size, past_limit, unreported, exchange, special_conditions)| TbtTrade {
                price,
                size,
                past_limit,
                unreported,
                exchange,
                special_conditions,
            },
        )
        .boxed();
    let quote = (
        price(proto),
        price(proto),
        size(),
        size(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(bid_price, ask_price, bid_size, ask_size, bid_past_low, ask_past_high)| TbtQuote {
                bid_price,
                ask_price,
                bid_size,
                ask_size,
                bid_past_low,
                ask_past_high,
            },
        );
    prop_oneof![
        trade.clone().prop_map(TickByTickData::Last),
        trade.prop_map(TickByTickData::AllLast),
        quote.prop_map(TickByTickData::BidAsk),
        price(proto).prop_map(TickByTickData::MidPoint),
    ]
}

fn server_msg(proto: bool) -> BoxedStrategy<ServerMsg> {
    let i = any::<i32>;
    prop_oneof![
        (i(), i(), price(proto), size(), i()).prop_map(
            |(req_id, tick_type, price, size, attr_mask)| ServerMsg::TickPrice {
                req_id,
                tick_type,
                price,
                size,
                attr_mask
            }
        ),
        (i(), i(), size()).prop_map(|(req_id, tick_type, size)| ServerMsg::TickSize {
            req_id,
            tick_type,
            size
        }),
        (i(), i(), text()).prop_map(|(req_id, tick_type, value)| ServerMsg::TickString {
            req_id,
            tick_type,
            value
        }),
        (i(), i(), float()).prop_map(|(req_id, tick_type, value)| ServerMsg::TickGeneric {
            req_id,
            tick_type,
            value
        }),
        (i(), price(proto), text(), i()).prop_map(
            |(req_id, min_tick, bbo_exchange, snapshot_permissions)| ServerMsg::TickReqParams {
                req_id,
                min_tick,
                bbo_exchange,
                snapshot_permissions
            }
        ),
        i().prop_map(|req_id| ServerMsg::TickSnapshotEnd { req_id }),
        (i(), i()).prop_map(|(req_id, market_data_type)| ServerMsg::MarketDataType {
            req_id,
            market_data_type
        }),
        (i(), any::<i64>(), tbt(proto)).prop_map(|(req_id, time, data)| ServerMsg::TickByTick {
            req_id,
            time,
            data
        }),
        (i(), i(), text(), text(), any::<i64>()).prop_map(
            |(req_id, code, message, advanced_order_reject_json, error_time_ms)| ServerMsg::Error {
                req_id,
                code,
                message,
                advanced_order_reject_json,
                error_time_ms
            }
        ),
        i().prop_map(|order_id| ServerMsg::NextValidId { order_id }),
        text().prop_map(|accounts| ServerMsg::ManagedAccounts { accounts }),
        (i(), details(proto)).prop_map(|(req_id, d)| ServerMsg::ContractData {
            req_id,
            details: Box::new(d)
        }),
        i().prop_map(|req_id| ServerMsg::ContractDataEnd { req_id }),
        any::<i64>().prop_map(|time| ServerMsg::CurrentTime { time }),
        Just(ServerMsg::PositionEnd),
        Just(ServerMsg::OpenOrderEnd),
        Just(ServerMsg::CompletedOrdersEnd),
        text().prop_map(|account| ServerMsg::AccountDownloadEnd { account }),
        i().prop_map(|req_id| ServerMsg::AccountUpdateMultiEnd { req_id }),
        i().prop_map(|req_id| ServerMsg::ExecDetailsEnd { req_id }),
    ]
    .boxed()
}

fn version_and_server() -> impl Strategy<Value = (u32, ServerMsg)> {
    (100u32..=226).prop_flat_map(|v| (Just(v), server_msg(v >= 201)))
}

/// Client messages valid at `version` (the form of each is decided by its family).
fn client_msg(version: u32) -> BoxedStrategy<ClientMsg> {
    let i = any::<i32>;
    // Contracts go out as protobuf from 205 (contract data) or 206/208 (market data).
    let p = |since: u32| version >= since;
    let legs = prop::collection::vec(
        (i(), i(), text(), text()).prop_map(|(con_id, ratio, action, exchange)| ComboLeg {
            con_id,
            ratio,
            action,
            exchange,
        }),
        0..3,
    );
    let dn = prop::option::of(
        (i(), float(), float())
            .prop_filter("finite", |(_, d, p)| d.is_finite() && p.is_finite())
            .prop_map(|(con_id, delta, price)| DeltaNeutral {
                con_id,
                delta,
                price,
            }),
    );
    let mkt = (
        i(),
        contract12(p(206)),
        legs,
        dn,
        text(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            move |(
                req_id,
                mut contract,
                legs,
                dn,
                generic_tick_list,
                snapshot,
                regulatory_snapshot,
            )| {
                if contract.sec_type == "OPT" {
                    // Stand-in for a combo: BAG carries legs in the text form.
                    contract.sec_type = "BAG".into();
                }
                if contract.sec_type == "BAG" || version >= 206 {
                    contract.combo_legs = legs;
                }
                contract.delta_neutral = dn;
                ClientMsg::ReqMktData {
                    req_id,
                    contract,
                    generic_tick_list,
                    snapshot,
                    regulatory_snapshot,
                }
            },
        );
    let cd = (
        i(),
        contract12(p(205)),
        any::<bool>(),
        text(),
        text(),
        text(),
    )
        .prop_map(|(req_id, mut contract, inc, t, id, iss)| {
            contract.include_expired = inc;
            contract.sec_id_type = t;
            contract.sec_id = id;
            contract.issuer_id = iss;
            ClientMsg::ReqContractDetails { req_id, contract }
        });
    let filter = (
        i(),
        text(),
        text(),
        text(),
        text(),
        text(),
        text(),
        i(),
        prop::collection::vec(i(), 0..3),
    )
        .prop_map(
            |(
                client_id,
                acct_code,
                time,
                symbol,
                sec_type,
                exchange,
                side,
                last_n_days,
                specific_dates,
            )| ExecutionFilter {
                client_id,
                acct_code,
                time,
                symbol,
                sec_type,
                exchange,
                side,
                last_n_days,
                specific_dates,
            },
        );
    let mut arms: Vec<BoxedStrategy<ClientMsg>> = vec![
        (i(), text())
            .prop_map(|(client_id, optional_capabilities)| ClientMsg::StartApi {
                client_id,
                optional_capabilities,
            })
            .boxed(),
        mkt.boxed(),
        i().prop_map(|req_id| ClientMsg::CancelMktData { req_id })
            .boxed(),
        i().prop_map(|market_data_type| ClientMsg::ReqMarketDataType { market_data_type })
            .boxed(),
        cd.boxed(),
        Just(ClientMsg::ReqCurrentTime).boxed(),
        i().prop_map(|num_ids| ClientMsg::ReqIds { num_ids })
            .boxed(),
        Just(ClientMsg::ReqManagedAccts).boxed(),
        Just(ClientMsg::ReqPositions).boxed(),
        Just(ClientMsg::ReqOpenOrders).boxed(),
        any::<bool>()
            .prop_map(|api_only| ClientMsg::ReqCompletedOrders { api_only })
            .boxed(),
        (any::<bool>(), text())
            .prop_map(|(subscribe, account)| ClientMsg::ReqAccountUpdates { subscribe, account })
            .boxed(),
        (i(), text(), text(), any::<bool>())
            .prop_map(|(req_id, account, model_code, ledger_and_nlv)| {
                ClientMsg::ReqAccountUpdatesMulti {
                    req_id,
                    account,
                    model_code,
                    ledger_and_nlv,
                }
            })
            .boxed(),
        (i(), filter)
            .prop_map(|(req_id, filter)| ClientMsg::ReqExecutions { req_id, filter })
            .boxed(),
        any::<bool>()
            .prop_map(|auto_bind| ClientMsg::ReqAutoOpenOrders { auto_bind })
            .boxed(),
    ];
    if version >= 137 {
        arms.push(
            (
                i(),
                contract12(p(208)),
                prop_oneof![
                    Just("Last"),
                    Just("AllLast"),
                    Just("BidAsk"),
                    Just("MidPoint")
                ],
                i(),
                any::<bool>(),
            )
                .prop_map(|(req_id, contract, t, number_of_ticks, ignore_size)| {
                    ClientMsg::ReqTickByTick {
                        req_id,
                        contract,
                        tick_type: t.into(),
                        number_of_ticks,
                        ignore_size,
                    }
                })
                .boxed(),
        );
        arms.push(
            i().prop_map(|req_id| ClientMsg::CancelTickByTick { req_id })
                .boxed(),
        );
    }
    if version >= 215 {
        arms.push(
            i().prop_map(|req_id| ClientMsg::CancelContractData { req_id })
                .boxed(),
        );
    }
    proptest::strategy::Union::new(arms).boxed()
}

fn version_and_client() -> impl Strategy<Value = (u32, ClientMsg)> {
    (100u32..=226).prop_flat_map(|v| (Just(v), client_msg(v)))
}

/// Floats compare by bits so that -0.0 and NaN cannot hide a difference.
fn same(a: &ServerMsg, b: &ServerMsg) -> bool {
    match (a, b) {
        (
            ServerMsg::TickGeneric {
                req_id: r1,
                tick_type: t1,
                value: v1,
            },
            ServerMsg::TickGeneric {
                req_id: r2,
                tick_type: t2,
                value: v2,
            },
        ) => r1 == r2 && t1 == t2 && v1.to_bits() == v2.to_bits(),
        _ => a == b,
    }
}

proptest! {
    #![proptest_config(cfg(400))]

    #[test]
    fn server_messages_round_trip((ver, m) in version_and_server()) {
        let mut wire = Vec::new();
        m.encode(ver, &mut wire);
        let got = one_frame(&wire, ver, |f| ServerMsg::decode(f, ver));
        let want = normalize_server(&m, ver);
        let got = got.map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert!(same(&got, &want), "at {}: got {:?}, want {:?}", ver, got, want);
    }

    #[test]
    fn client_messages_round_trip((ver, m) in version_and_client()) {
        let mut wire = Vec::new();
        m.encode(ver, &mut wire).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        let got = one_frame(&wire, ver, |f| ClientMsg::decode(f, ver));
        prop_assert_eq!(got, Ok(normalize_client(&m, ver)), "at {}", ver);
    }

    #[test]
    fn split_points_do_not_change_the_frames(
        ver in prop_oneof![Just(157u32), Just(178), Just(200), Just(226)],
        cuts in prop::collection::vec(0usize..4096, 0..12),
    ) {
        let mut wire = Vec::new();
        for m in sample_server() {
            m.encode(ver, &mut wire);
        }
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.push(0);
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut r = FrameReader::with_capacity(16);
        let mut got = Vec::new();
        for w in cuts.windows(2) {
            r.feed(&wire[w[0]..w[1]]);
            while let Some(f) = r.next_frame(ver).unwrap() {
                got.push(ServerMsg::decode(&f, ver).unwrap());
            }
        }
        let want: Vec<_> = sample_server().iter().map(|m| normalize_server(m, ver)).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(r.buffered(), 0);
    }
}

/// Feed `chunks` to a reader at `ver` and decode everything both ways; returns how many
/// frames were cut. Checks that every frame lies inside its payload and that the bytes
/// consumed add up.
fn chew(ver: u32, chunks: &[&[u8]]) -> Result<u64, TestCaseError> {
    let mut r = FrameReader::with_capacity(64);
    let mut d = Decoder::new(ver);
    let mut strings = VecInterner::default();
    let mut rec = Record::ZERO;
    let mut fed = 0usize;
    let mut consumed = 0usize;
    let mut frames = 0u64;
    for c in chunks {
        r.feed(c);
        fed += c.len();
        loop {
            let payload = match r.next_payload(ver) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    prop_assert!(e.is_fatal());
                    return Ok(frames); // framing lost: the connection would be dropped
                }
            };
            consumed += 4 + payload.len();
            let range = payload.as_ptr_range();
            let frame = match Frame::parse(payload, ver) {
                Ok(f) => f,
                Err(e) => {
                    prop_assert!(!e.is_fatal());
                    continue;
                }
            };
            let body = match frame.body {
                ib_stream::tws::Body::Text(b) | ib_stream::tws::Body::Proto(b) => b,
            };
            let br = body.as_ptr_range();
            prop_assert!(
                range.start <= br.start && br.end <= range.end,
                "frame body outside its payload"
            );
            frames += 1;
            // Typed results only: Ok or Err, never a panic.
            let _ = d.decode(&frame, &mut strings, &mut rec);
            let _ = ClientMsg::decode(&frame, ver);
        }
    }
    prop_assert_eq!(consumed + r.buffered(), fed);
    let s = d.stats;
    prop_assert_eq!(s.ticks + s.messages + s.unknown_skipped + s.errors, frames);
    Ok(frames)
}

fn split<'a>(wire: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    cuts.push(0);
    cuts.push(wire.len());
    cuts.sort_unstable();
    cuts.windows(2).map(|w| &wire[w[0]..w[1]]).collect()
}

/// Message ids worth aiming garbage at: every id the codec knows, both directions.
const IDS: &[u32] = &[
    1, 2, 4, 5, 6, 7, 8, 9, 10, 15, 17, 45, 46, 49, 52, 53, 54, 55, 57, 58, 59, 61, 62, 71, 74, 76,
    81, 97, 98, 99, 102, 106, 150,
];

proptest! {
    #![proptest_config(cfg(300))]

    #[test]
    fn arbitrary_bytes_never_panic(
        ver in 100u32..=226,
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        chew(ver, &split(&bytes, &cuts))?;
    }

    #[test]
    fn garbage_payloads_in_valid_frames_are_typed_errors(
        ver in 100u32..=226,
        msgs in prop::collection::vec((prop::sample::select(IDS), any::<bool>(), prop::collection::vec(any::<u8>(), 0..80)), 1..8),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut wire = Vec::new();
        for (id, as_fields, junk) in &msgs {
            let mut payload = Vec::new();
            if ver >= 201 {
                let wire_id = if *as_fields { *id } else { id + 200 };
                payload.extend_from_slice(&wire_id.to_be_bytes());
            } else {
                payload.extend_from_slice(id.to_string().as_bytes());
                payload.push(0);
            }
            if *as_fields {
                // Text-like junk: short fields of digits, signs, dots and letters.
                for b in junk {
                    payload.push(b"0123456789-.eE,xI\0"[*b as usize % 18]);
                }
            } else {
                payload.extend_from_slice(junk);
            }
            wire.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            wire.extend_from_slice(&payload);
        }
        let n = chew(ver, &split(&wire, &cuts))?;
        prop_assert_eq!(n, msgs.len() as u64);
    }

    #[test]
    fn mutated_valid_streams_never_panic(
        ver in prop_oneof![Just(157u32), Just(178), Just(194), Just(200), Just(201), Just(213), Just(226)],
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        truncate in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        // Mutate payload bytes only, so the stream stays framed and every frame is decoded.
        let mut wire = Vec::new();
        let mut payload_spans = Vec::new();
        for m in sample_server() {
            let start = wire.len();
            m.encode(ver, &mut wire);
            payload_spans.push((start + 4, wire.len()));
        }
        for m in sample_client() {
            let start = wire.len();
            if m.encode(ver, &mut wire).is_ok() {
                payload_spans.push((start + 4, wire.len()));
            }
        }
        for (at, val) in &flips {
            let (s, e) = payload_spans[at % payload_spans.len()];
            if e > s {
                wire[s + (at / 7) % (e - s)] ^= val | 1;
            }
        }
        if truncate {
            wire.truncate(wire.len() - 3);
        }
        chew(ver, &split(&wire, &cuts))?;
    }
}

proptest! {
    #![proptest_config(cfg(300))]

    #[test]
    fn handshakes_round_trip(min in 0u32..1000, max in 0u32..1000, options in "[ -~]{0,20}", time in "[ -~]{0,30}") {
        let hello = ib_stream::tws::ClientHello { min, max, options: options.trim_start().to_owned() };
        let mut wire = Vec::new();
        hello.encode(&mut wire);
        let got = ib_stream::tws::ClientHello::parse(&wire).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        let (h, used) = got.expect("complete");
        prop_assert_eq!(used, wire.len());
        prop_assert_eq!((h.min, h.max), (min, max));
        prop_assert_eq!(h.options.as_str(), hello.options.as_str());

        let ack = ib_stream::tws::ServerAck { version: max, time };
        let mut wire = Vec::new();
        ack.encode(&mut wire);
        prop_assert_eq!(ib_stream::tws::ServerAck::parse(&wire), Ok(Some((ack, wire.len()))));
    }

    #[test]
    fn handshake_parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), api_prefix in any::<bool>()) {
        let mut wire = if api_prefix { b"API\0".to_vec() } else { Vec::new() };
        wire.extend_from_slice(&bytes);
        if let Ok(Some((_, used))) = ib_stream::tws::ClientHello::parse(&wire) {
            prop_assert!(used <= wire.len());
        }
        if let Ok(Some((_, used))) = ib_stream::tws::ServerAck::parse(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }

    #[test]
    fn hot_path_matches_the_typed_decoder((ver, m) in version_and_server()) {
        use ib_stream::tws::tick::{decode_tick, live_tick_type};
        let mut wire = Vec::new();
        m.encode(ver, &mut wire);
        let mut strings = VecInterner::default();
        let mut rec = Record::ZERO;
        let (hot, typed) = one_frame(&wire, ver, |f| (decode_tick(f, &mut strings, &mut rec), ServerMsg::decode(f, ver)));
        let typed = typed.map_err(|e| TestCaseError::fail(format!("{e}")))?;
        let tt_ok = |t: i32| (0..=255).contains(&live_tick_type(t).0);
        match (&typed, hot) {
            (ServerMsg::TickPrice { req_id, tick_type, price, size, attr_mask }, r) if tt_ok(*tick_type) => {
                prop_assert_eq!(r, Ok(Some(*req_id)));
                prop_assert_eq!((rec.tick_type as i32, rec.body), (live_tick_type(*tick_type).0, [*price, *size, 0, 0]));
                prop_assert_eq!(rec.flags >> 8, (*attr_mask & 7) as u16);
            }
            (ServerMsg::TickSize { req_id, tick_type, size }, r) if tt_ok(*tick_type) => {
                prop_assert_eq!(r, Ok(Some(*req_id)));
                prop_assert_eq!(rec.body[0], *size);
            }
            (ServerMsg::TickString { req_id, tick_type, value }, r) if tt_ok(*tick_type) => {
                prop_assert_eq!(r, Ok(Some(*req_id)));
                prop_assert_eq!(strings.get(rec.body[0] as u32), Some(value.as_bytes()));
            }
            (ServerMsg::TickGeneric { req_id, tick_type, value }, r) if tt_ok(*tick_type) => {
                prop_assert_eq!(r, Ok(Some(*req_id)));
                let want = ib_stream::tws::decimal::f64_to_fixed(*value, 9).unwrap_or(UNDEF_I64);
                // Text is exact decimal, protobuf a rounded double: equal within one unit.
                prop_assert!(rec.body[0] == want || (rec.body[0] != UNDEF_I64 && want != UNDEF_I64 && (rec.body[0] - want).abs() <= 1),
                    "{} vs {}", rec.body[0], want);
            }
            (ServerMsg::TickByTick { req_id, time, .. }, r) => {
                match time.checked_mul(1_000_000_000) {
                    Some(ns) => {
                        prop_assert_eq!(r, Ok(Some(*req_id)));
                        prop_assert_eq!(rec.ts_event, ns);
                    }
                    None => prop_assert!(r.is_err()),
                }
            }
            (ServerMsg::TickPrice { .. } | ServerMsg::TickSize { .. } | ServerMsg::TickString { .. } | ServerMsg::TickGeneric { .. }, r) => {
                // Tick types beyond a byte are typed errors, never truncated.
                prop_assert!(r.is_err());
            }
            (_, r) => prop_assert_eq!(r, Ok(None)),
        }
    }
}
