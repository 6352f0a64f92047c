//! The hot path: tick frames straight into records, both forms.

mod tws_support;

use ib_stream::ipc::{Record, RecordKind, UNDEF_I64, flags};
use ib_stream::tws::msg::server::{TbtQuote, TbtTrade, TickByTickData};
use ib_stream::tws::tick::{VecInterner, decode_tick, live_tick_type};
use ib_stream::tws::{DecodeError, Decoded, Decoder, FrameReader, ServerMsg};
use tws_support::*;

/// Decode `m` encoded at `ver` through the hot path.
fn hot(m: &ServerMsg, ver: u32, strings: &mut VecInterner) -> (Option<i32>, Record) {
    let mut wire = Vec::new();
    m.encode(ver, &mut wire);
    let mut rec = Record::ZERO;
    let id = one_frame(&wire, ver, |f| decode_tick(f, strings, &mut rec)).unwrap();
    (id, rec)
}

const FORMS: [u32; 3] = [157, 178, 226];

#[test]
fn tick_price_carries_size_and_attribute_flags() {
    for ver in FORMS {
        let mut s = VecInterner::default();
        let m = ServerMsg::TickPrice {
            req_id: 7,
            tick_type: 1,
            price: 18_924 * P / 100,
            size: 300 * S,
            attr_mask: 7,
        };
        let (id, r) = hot(&m, ver, &mut s);
        assert_eq!(id, Some(7));
        assert_eq!(r.kind(), Some(RecordKind::L1Price));
        assert_eq!(
            (r.tick_type, r.body),
            (1, [18_924 * P / 100, 300 * S, 0, 0])
        );
        assert_eq!(
            r.flags,
            flags::CAN_AUTO_EXECUTE | flags::L1_PAST_LIMIT | flags::PRE_OPEN,
            "{ver}"
        );
        assert_eq!(r.ts_event, UNDEF_I64);
        // A price tick without size (close) keeps the size unset.
        let m = ServerMsg::TickPrice {
            req_id: 7,
            tick_type: 9,
            price: -P,
            size: UNDEF_I64,
            attr_mask: 0,
        };
        let (_, r) = hot(&m, ver, &mut s);
        assert_eq!(
            (r.tick_type, r.flags, r.body),
            (9, 0, [-P, UNDEF_I64, 0, 0])
        );
    }
}

#[test]
fn delayed_ids_map_to_live_ones_with_the_delayed_flag() {
    let map = [
        (66, 1),
        (67, 2),
        (68, 4),
        (69, 0),
        (70, 3),
        (71, 5),
        (72, 6),
        (73, 7),
        (74, 8),
        (75, 9),
        (76, 14),
        (88, 45),
    ];
    for (d, live) in map {
        assert_eq!(live_tick_type(d), (live, true));
    }
    assert_eq!(live_tick_type(4), (4, false));
    for ver in FORMS {
        let mut s = VecInterner::default();
        let (_, r) = hot(
            &ServerMsg::TickPrice {
                req_id: 1,
                tick_type: 68,
                price: P,
                size: S,
                attr_mask: 0,
            },
            ver,
            &mut s,
        );
        assert_eq!((r.tick_type, r.flags), (4, flags::DELAYED));
        let (_, r) = hot(
            &ServerMsg::TickSize {
                req_id: 1,
                tick_type: 74,
                size: 5 * S,
            },
            ver,
            &mut s,
        );
        assert_eq!(
            (r.kind(), r.tick_type, r.flags, r.body[0]),
            (Some(RecordKind::L1Size), 8, flags::DELAYED, 5 * S)
        );
        let (_, r) = hot(
            &ServerMsg::TickString {
                req_id: 1,
                tick_type: 88,
                value: "1767277800".into(),
            },
            ver,
            &mut s,
        );
        assert_eq!(
            (r.kind(), r.tick_type, r.flags),
            (Some(RecordKind::L1String), 45, flags::DELAYED)
        );
        assert_eq!(s.get(r.body[0] as u32), Some(&b"1767277800"[..]));
        let (_, r) = hot(
            &ServerMsg::TickGeneric {
                req_id: 1,
                tick_type: 49,
                value: 3.5,
            },
            ver,
            &mut s,
        );
        assert_eq!(
            (r.kind(), r.tick_type, r.flags, r.body[0]),
            (Some(RecordKind::L1Generic), 49, 0, 3_500_000_000)
        );
    }
}

#[test]
fn tick_by_tick_all_four_kinds_with_attributes() {
    for ver in FORMS {
        let mut s = VecInterner::default();
        let trade = TbtTrade {
            price: 18_925 * P / 100,
            size: 100 * S,
            past_limit: true,
            unreported: true,
            exchange: "NASDAQ".into(),
            special_conditions: " T".into(),
        };
        for (data, kind) in [
            (TickByTickData::Last(trade.clone()), RecordKind::TbtLast),
            (TickByTickData::AllLast(trade), RecordKind::TbtAllLast),
        ] {
            let (id, r) = hot(
                &ServerMsg::TickByTick {
                    req_id: 3,
                    time: 1_767_277_800,
                    data,
                },
                ver,
                &mut s,
            );
            assert_eq!((id, r.kind()), (Some(3), Some(kind)));
            assert_eq!(r.ts_event, 1_767_277_800_000_000_000);
            assert_eq!(r.flags, flags::PAST_LIMIT | flags::UNREPORTED);
            let t = r.as_trade().unwrap();
            assert_eq!((t.price, t.size), (18_925 * P / 100, 100 * S));
            assert_eq!(s.get(t.exchange_id), Some(&b"NASDAQ"[..]));
            assert_eq!(s.get(t.conditions_id), Some(&b" T"[..]));
        }
        let q = TbtQuote {
            bid_price: 189 * P,
            ask_price: 190 * P,
            bid_size: 3 * S,
            ask_size: 2 * S,
            bid_past_low: false,
            ask_past_high: true,
        };
        let (_, r) = hot(
            &ServerMsg::TickByTick {
                req_id: 4,
                time: 5,
                data: TickByTickData::BidAsk(q),
            },
            ver,
            &mut s,
        );
        assert_eq!(
            (r.kind(), r.flags, r.ts_event),
            (
                Some(RecordKind::TbtBidAsk),
                flags::ASK_PAST_HIGH,
                5_000_000_000
            )
        );
        assert_eq!(r.body, [189 * P, 190 * P, 3 * S, 2 * S]);
        let (_, r) = hot(
            &ServerMsg::TickByTick {
                req_id: 5,
                time: 6,
                data: TickByTickData::MidPoint(189_245 * P / 1000),
            },
            ver,
            &mut s,
        );
        assert_eq!(
            (r.kind(), r.flags, r.body),
            (
                Some(RecordKind::TbtMidPoint),
                0,
                [189_245 * P / 1000, 0, 0, 0]
            )
        );
    }
}

#[test]
fn hot_path_agrees_with_the_typed_decoder() {
    for ver in FORMS {
        for m in sample_server() {
            let mut wire = Vec::new();
            m.encode(ver, &mut wire);
            let mut s = VecInterner::default();
            let mut rec = Record::ZERO;
            let (hot, typed) = one_frame(&wire, ver, |f| {
                (decode_tick(f, &mut s, &mut rec), ServerMsg::decode(f, ver))
            });
            let typed = typed.unwrap();
            match (&typed, hot.unwrap()) {
                (
                    ServerMsg::TickPrice {
                        req_id,
                        price,
                        size,
                        ..
                    },
                    Some(id),
                ) => {
                    assert_eq!((*req_id, rec.body[0], rec.body[1]), (id, *price, *size));
                }
                (ServerMsg::TickSize { req_id, size, .. }, Some(id)) => {
                    assert_eq!((*req_id, rec.body[0]), (id, *size))
                }
                (ServerMsg::TickString { req_id, value, .. }, Some(id)) => {
                    assert_eq!(*req_id, id);
                    assert_eq!(s.get(rec.body[0] as u32), Some(value.as_bytes()));
                }
                (ServerMsg::TickGeneric { req_id, value, .. }, Some(id)) => {
                    assert_eq!((*req_id, rec.body[0] as f64 / P as f64), (id, *value));
                }
                (ServerMsg::TickByTick { req_id, time, .. }, Some(id)) => {
                    assert_eq!((*req_id, rec.ts_event), (id, time * 1_000_000_000));
                }
                (_, None) => {}
                (m, Some(_)) => panic!("{m:?} decoded as a tick"),
            }
        }
    }
}

#[test]
fn decoder_counts_messages_skips_unknown_ids_and_types_errors() {
    for ver in [178, 226] {
        let mut wire = Vec::new();
        ServerMsg::TickSize {
            req_id: 1,
            tick_type: 8,
            size: S,
        }
        .encode(ver, &mut wire);
        ServerMsg::NextValidId { order_id: 9 }.encode(ver, &mut wire);
        // An id nobody knows, in the current framing.
        if ver >= 201 {
            ib_stream::tws::write_proto_frame(&mut wire, 150, |w| {
                w.i32(1, 1);
            });
        } else {
            ib_stream::tws::write_text_frame(&mut wire, ver, 150, |w| {
                w.int(1);
            });
        }
        // A tickSize whose size is not a number.
        ib_stream::tws::write_text_frame(&mut wire, ver, 2, |w| {
            w.int(6).int(1).int(8).str("12x");
        });
        let mut r = FrameReader::new();
        r.feed(&wire);
        let mut d = Decoder::new(ver);
        let mut s = VecInterner::default();
        let mut rec = Record::ZERO;
        let mut out = Vec::new();
        while let Some(f) = r.next_frame(ver).unwrap() {
            out.push(d.decode(&f, &mut s, &mut rec));
        }
        assert_eq!(out[0], Ok(Decoded::Tick { req_id: 1 }));
        assert_eq!(
            out[1],
            Ok(Decoded::Msg(ServerMsg::NextValidId { order_id: 9 }))
        );
        assert_eq!(out[2], Ok(Decoded::Skipped { msg_id: 150 }));
        assert!(
            matches!(
                out[3],
                Err(DecodeError::Field {
                    msg_id: 2,
                    index: 3,
                    ..
                })
            ),
            "{:?}",
            out[3]
        );
        assert_eq!(
            (
                d.stats.ticks,
                d.stats.messages,
                d.stats.unknown_skipped,
                d.stats.errors
            ),
            (1, 1, 1, 1)
        );
    }
}

#[test]
fn out_of_range_tick_types_and_times_are_errors() {
    let mut s = VecInterner::default();
    let mut rec = Record::ZERO;
    for ver in FORMS {
        let mut wire = Vec::new();
        ServerMsg::TickSize {
            req_id: 1,
            tick_type: 300,
            size: S,
        }
        .encode(ver, &mut wire);
        ServerMsg::TickByTick {
            req_id: 1,
            time: i64::MAX / 10,
            data: TickByTickData::MidPoint(P),
        }
        .encode(ver, &mut wire);
        let mut r = FrameReader::new();
        r.feed(&wire);
        while let Some(f) = r.next_frame(ver).unwrap() {
            assert!(decode_tick(&f, &mut s, &mut rec).is_err(), "{ver}");
        }
    }
}

#[test]
fn errors_decode_without_copies_in_every_layout() {
    use ib_stream::tws::tick::decode_error;
    let m = ServerMsg::Error {
        req_id: -1,
        code: 2104,
        message: "Market data farm connection is OK:usfarm".into(),
        advanced_order_reject_json: "{}".into(),
        error_time_ms: 1_767_277_800_123,
    };
    for ver in [157, 166, 178, 194, 200, 201, 226] {
        let mut wire = Vec::new();
        m.encode(ver, &mut wire);
        let (req_id, code, msg, json, time) = one_frame(&wire, ver, |f| {
            let e = decode_error(f, ver).unwrap().unwrap();
            (
                e.req_id,
                e.code,
                e.message.to_vec(),
                e.advanced_order_reject_json.to_vec(),
                e.error_time_ms,
            )
        });
        assert_eq!((req_id, code), (-1, 2104));
        assert_eq!(msg, b"Market data farm connection is OK:usfarm");
        assert_eq!(
            json,
            if ver >= 166 { &b"{}"[..] } else { &b""[..] },
            "{ver}"
        );
        assert_eq!(
            time,
            if ver >= 194 { 1_767_277_800_123 } else { 0 },
            "{ver}"
        );
        let mut other = Vec::new();
        ServerMsg::NextValidId { order_id: 1 }.encode(ver, &mut other);
        assert_eq!(
            one_frame(&other, ver, |f| decode_error(f, ver).map(|e| e.is_none())),
            Ok(true)
        );
    }
}
