//! Instruction count of the engine's receive path through the sans-IO `Session` (issue 12),
//! for `scripts/bench-compare.sh`: only for revisions that have `ib_stream::engine::Session`.
//!
//! The same stream as `engine_callgrind.rs` (four tick-by-tick subscriptions of one
//! instrument, `<rounds>` ticks of each at `<version>`), but through the path the engine runs
//! since the split: a session connected through its handshake, 64 KiB reads copied into
//! `Session::recv_buf`, then `Session::on_received` (frames, decode, routing, batch, commit to
//! a heap ring, the recv -> publish histogram). Before the split the engine ran the same
//! `Ingest::process` + `flush` from its own read loop, which `engine_callgrind.rs` counts on
//! both revisions; so (this figure on the new revision) / (that one on the old) bounds the
//! cost of the split from above: the old loop's own glue (a clock read and the histogram per
//! read) is not in the old figure. Only `measure_session` is counted:
//!
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measure_session*'
//!  bench_compare_session <version> <rounds>` prints `ticks=<n>`.

use ib_stream::config::{Environment, Settings, TrackedContract};
use ib_stream::engine::contract_store::StoredContract;
use ib_stream::engine::{Action, Clock, EngineOptions, Publisher, Session};
use ib_stream::ipc::RecordKind;
use ib_stream::tws::msg::server::{TbtQuote, TbtTrade, TickByTickData};
use ib_stream::tws::{ClientMsg, Contract, FrameReader, ServerAck, ServerMsg};

const P: i64 = 1_000_000_000;
const S: i64 = 100_000_000;
const CON: u32 = 265_598;
const CHUNK: usize = 65_536;
const KINDS: [&str; 4] = ["BidAsk", "Last", "AllLast", "MidPoint"];

fn wire(req: &[i32; 4], rounds: i64, version: u32) -> Vec<u8> {
    let trade = |k: i64| TbtTrade {
        price: (18_900 + k % 50) * P / 100,
        size: (1 + k % 7) * S,
        past_limit: k % 11 == 0,
        unreported: false,
        exchange: ["NASDAQ", "ARCA", "IEX"][(k % 3) as usize].into(),
        special_conditions: ["", " T", "   F"][(k % 3) as usize].into(),
    };
    let mut out = Vec::new();
    for i in 0..rounds {
        let t = 1_767_000_000 + i;
        let msgs = [
            ServerMsg::TickByTick {
                req_id: req[0],
                time: t,
                data: TickByTickData::BidAsk(TbtQuote {
                    bid_price: (18_900 + i % 40) * P / 100,
                    ask_price: (18_902 + i % 40) * P / 100,
                    bid_size: (100 + i % 9) * S,
                    ask_size: (200 + i % 5) * S,
                    bid_past_low: false,
                    ask_past_high: i % 13 == 0,
                }),
            },
            ServerMsg::TickByTick {
                req_id: req[1],
                time: t,
                data: TickByTickData::Last(trade(i)),
            },
            ServerMsg::TickByTick {
                req_id: req[2],
                time: t,
                data: TickByTickData::AllLast(trade(i + 1)),
            },
            ServerMsg::TickByTick {
                req_id: req[3],
                time: t,
                data: TickByTickData::MidPoint((18_901 + i % 40) * P / 100),
            },
        ];
        for m in &msgs {
            m.encode(version, &mut out);
        }
    }
    out
}

#[inline(never)]
fn measure_session(s: &mut Session, clock: Clock, wire: &[u8]) -> usize {
    let mut n = 0;
    for chunk in wire.chunks(CHUNK) {
        s.recv_buf()[..chunk.len()].copy_from_slice(chunk);
        let ts = ib_stream::engine::publish::unix_ns();
        assert!(s.on_received(clock, ts, chunk.len()));
        n += s.take_published();
        while s.poll_action().is_some() {}
    }
    n
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let version: u32 = args.get(1).map_or(226, |v| v.parse().expect("version"));
    let rounds: i64 = args.get(2).map_or(20_000, |v| v.parse().expect("rounds"));
    let mut st = Settings::defaults(Environment::Development);
    st.allow_delayed = false;
    st.tracked_contracts = vec![TrackedContract {
        con_id: CON,
        symbol: "AAPL".into(),
        kinds: vec![
            RecordKind::TbtBidAsk,
            RecordKind::TbtLast,
            RecordKind::TbtAllLast,
            RecordKind::TbtMidPoint,
        ],
        buffer_hours: 0,
    }];
    let c = Contract {
        con_id: CON as i32,
        symbol: "AAPL".into(),
        sec_type: "STK".into(),
        exchange: "SMART".into(),
        currency: "USD".into(),
        ..Contract::default()
    };
    let unix = ib_stream::engine::publish::unix_ns();
    let clock = Clock { mono: 1, unix };
    let opts = EngineOptions {
        tbt_same_instrument_ms: 0,
        ..EngineOptions::default()
    };
    let mut s = Session::new(
        st,
        opts,
        Publisher::heap(1 << 20).expect("heap ring"),
        vec![StoredContract::from_contract(&c, unix)],
        "/nonexistent".into(),
        1,
        clock,
    );
    s.on_timeout(clock);
    while let Some(a) = s.poll_action() {
        assert!(matches!(a, Action::Connect { .. }), "{a:?}");
    }
    s.on_connecting(clock);
    s.on_connected(clock);
    let n = s.ib_out().len();
    s.ib_written(n);
    let mut b = Vec::new();
    ServerAck {
        version,
        time: "20260101 09:30:00 EST".into(),
    }
    .encode(&mut b);
    ServerMsg::NextValidId { order_id: 1 }.encode(version, &mut b);
    assert!(s.on_bytes(clock, unix, &b));
    let out = s.ib_out().to_vec();
    s.ib_written(out.len());
    let mut r = FrameReader::new();
    r.feed(&out);
    let mut req = [0i32; 4];
    while let Some(f) = r.next_frame(version).expect("the session's frames") {
        if let Ok(ClientMsg::ReqTickByTick {
            req_id, tick_type, ..
        }) = ClientMsg::decode(&f, version)
        {
            let k = KINDS.iter().position(|k| *k == tick_type).expect("kind");
            req[k] = req_id;
        }
    }
    assert!(req.iter().all(|r| *r != 0), "{req:?}");
    while s.poll_action().is_some() {}
    let w = wire(&req, rounds, version);
    let n = measure_session(&mut s, clock, &w);
    let published = s.publisher().snap.counters.records_published;
    println!(
        "ticks={} published={published} bytes={}",
        4 * rounds,
        w.len()
    );
    std::hint::black_box(n);
}
