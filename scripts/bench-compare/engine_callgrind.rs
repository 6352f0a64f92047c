//! Instruction count of the engine's receive path (socket bytes -> records in the ring), for
//! `scripts/bench-compare.sh`.
//!
//! Not part of the build: the script copies this file into each revision's worktree as
//! `examples/bench_compare_engine.rs` and builds it with the `bench` profile. It is the
//! `ingest` mode of `docs/bench/hot_path_callgrind.rs`: four tick-by-tick subscriptions of
//! one instrument (BidAsk, Last, AllLast, MidPoint), `<rounds>` ticks of each encoded at
//! `<version>`, fed in 64 KiB reads into the ingest's `FrameReader` the way the engine's read
//! loop does (copy into `spare`, `commit`), then `Ingest::process` (frames, decode, routing,
//! batch) and `Publisher::flush` (commit to a heap ring). `Ingest` is the engine's decode
//! stage before and after the session split (issue 12) and has the same API in both, so
//! this counts the same work on both revisions. Only `measure_ingest` is counted:
//!
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measure_ingest*'
//!  bench_compare_engine <version> <rounds>` prints `ticks=<n>`.

use std::collections::VecDeque;

use ib_stream::engine::{Ingest, Limits, Publisher, Request, SubKey, SubKind, SubscriptionManager};
use ib_stream::tws::ServerMsg;
use ib_stream::tws::msg::server::{TbtQuote, TbtTrade, TickByTickData};

const P: i64 = 1_000_000_000;
const S: i64 = 100_000_000;
const CON: u32 = 265_598;
const CHUNK: usize = 65_536;
const KINDS: [SubKind; 4] = [
    SubKind::BidAsk,
    SubKind::Last,
    SubKind::AllLast,
    SubKind::MidPoint,
];

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
fn measure_ingest(ingest: &mut Ingest, wire: &[u8]) -> usize {
    let mut other = VecDeque::with_capacity(64);
    let mut n = 0;
    for chunk in wire.chunks(CHUNK) {
        let spare = ingest.reader.spare(CHUNK);
        spare[..chunk.len()].copy_from_slice(chunk);
        ingest.reader.commit(chunk.len());
        let ts = ib_stream::engine::publish::unix_ns();
        n += ingest.process(ts, 1, &mut other).expect("valid frames");
        ingest.publisher.flush();
        other.clear();
        while ingest.subs.poll_event().is_some() {}
    }
    n
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let version: u32 = args.get(1).map_or(226, |v| v.parse().expect("version"));
    let rounds: i64 = args.get(2).map_or(20_000, |v| v.parse().expect("rounds"));
    let publisher = Publisher::heap(1 << 20).expect("heap ring");
    let mut subs = SubscriptionManager::new(
        Limits {
            tbt_same_instrument_ns: 0,
            ..Limits::default()
        },
        1000,
    );
    subs.on_connected();
    for k in KINDS {
        subs.subscribe(
            "bench",
            SubKey {
                con_id: CON,
                kind: k,
            },
            0,
        )
        .expect("subscribe");
    }
    let mut req = [0i32; 4];
    while let Some(r) = subs.next_request(0) {
        if let Request::TickByTick { req_id, kind, .. } = r {
            req[KINDS.iter().position(|k| *k == kind).expect("kind")] = req_id;
        }
    }
    assert!(req.iter().all(|r| *r != 0), "{req:?}");
    let mut ingest = Ingest::new(publisher, subs);
    ingest.version = version;
    let w = wire(&req, rounds, version);
    let n = measure_ingest(&mut ingest, &w);
    let published = ingest.publisher.snap.counters.records_published;
    println!(
        "ticks={} published={published} bytes={}",
        4 * rounds,
        w.len()
    );
    std::hint::black_box(n);
}
