//! Decoding a tick frame allocates nothing: every hot message, both forms, counted with
//! a global allocator that counts the measuring thread only (the harness's own thread may
//! allocate meanwhile).

mod alloc_support;
mod tws_support;

use alloc_support::{Counting, Region};
use ib_stream::ipc::Record;
use ib_stream::tws::msg::server::{TbtQuote, TbtTrade, TickByTickData};
use ib_stream::tws::tick::{Interner, VecInterner, decode_error, decode_tick};
use ib_stream::tws::{FrameReader, ServerMsg};
use tws_support::{P, S};

#[global_allocator]
static GLOBAL: Counting = Counting;

fn hot_messages() -> Vec<ServerMsg> {
    let trade = TbtTrade {
        price: 18_925 * P / 100,
        size: 100 * S,
        past_limit: true,
        unreported: false,
        exchange: "NASDAQ".into(),
        special_conditions: " T".into(),
    };
    vec![
        ServerMsg::TickPrice {
            req_id: 1,
            tick_type: 1,
            price: 18_924 * P / 100,
            size: 300 * S,
            attr_mask: 1,
        },
        ServerMsg::TickPrice {
            req_id: 1,
            tick_type: 66,
            price: 18_924 * P / 100,
            size: 300 * S,
            attr_mask: 0,
        },
        ServerMsg::TickSize {
            req_id: 1,
            tick_type: 8,
            size: 12_345 * S,
        },
        ServerMsg::TickString {
            req_id: 1,
            tick_type: 45,
            value: "1767277800".into(),
        },
        ServerMsg::TickGeneric {
            req_id: 1,
            tick_type: 49,
            value: 0.0,
        },
        ServerMsg::TickByTick {
            req_id: 2,
            time: 1_767_277_800,
            data: TickByTickData::Last(trade.clone()),
        },
        ServerMsg::TickByTick {
            req_id: 2,
            time: 1_767_277_800,
            data: TickByTickData::AllLast(trade),
        },
        ServerMsg::TickByTick {
            req_id: 3,
            time: 1_767_277_800,
            data: TickByTickData::BidAsk(TbtQuote {
                bid_price: 189 * P,
                ask_price: 190 * P,
                bid_size: 3 * S,
                ask_size: 2 * S,
                bid_past_low: true,
                ask_past_high: true,
            }),
        },
        ServerMsg::TickByTick {
            req_id: 4,
            time: 1_767_277_800,
            data: TickByTickData::MidPoint(189 * P),
        },
    ]
}

#[test]
fn decoding_ticks_and_errors_allocates_nothing() {
    for ver in [157, 178, 200, 226] {
        let msgs = hot_messages();
        let mut wire = Vec::new();
        for _ in 0..100 {
            for m in &msgs {
                m.encode(ver, &mut wire);
            }
        }
        let mut reader = FrameReader::with_capacity(wire.len());
        reader.feed(&wire);
        // The strings are known already, as in a running engine after the first ticks.
        let mut strings = VecInterner::default();
        for s in ["NASDAQ", " T", "1767277800"] {
            strings.intern(s.as_bytes());
        }
        let mut rec = Record::ZERO;
        let mut n = 0u64;
        let mut checksum = 0i64;

        assert!(alloc_support::counter_counts(), "the counter counts");
        let mut region = Region::new();
        let errors: Vec<u8> = {
            let mut w = Vec::new();
            for _ in 0..100 {
                ServerMsg::Error {
                    req_id: -1,
                    code: 2104,
                    message: "Market data farm connection is OK:usfarm".into(),
                    advanced_order_reject_json: String::new(),
                    error_time_ms: 1_767_277_800_000,
                }
                .encode(ver, &mut w);
            }
            w
        };
        let mut err_reader = FrameReader::with_capacity(errors.len());
        err_reader.feed(&errors);
        let mut codes = 0i64;
        region.reset();
        while let Some(frame) = reader.next_frame(ver).expect("frame") {
            let id = decode_tick(&frame, &mut strings, &mut rec).expect("tick");
            assert!(id.is_some());
            checksum = checksum.wrapping_add(rec.body[0]);
            n += 1;
        }
        while let Some(frame) = err_reader.next_frame(ver).expect("frame") {
            let e = decode_error(&frame, ver)
                .expect("error")
                .expect("an error message");
            codes += i64::from(e.code) + e.message.len() as i64;
        }
        let stats = region.change();
        assert_eq!(codes, 100 * (2104 + 40));

        assert_eq!(n, 100 * msgs.len() as u64);
        assert_ne!(checksum, 0);
        assert_eq!(
            (
                stats.allocations,
                stats.reallocations,
                stats.bytes_allocated
            ),
            (0, 0, 0),
            "decoding {n} tick frames at version {ver} allocated"
        );
    }
}
