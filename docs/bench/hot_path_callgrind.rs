//! Build as a crate of its own (not part of the workspace), e.g. in /tmp/hp:
//! ```toml
//! [package]
//! name = "hp"
//! version = "0.1.0"
//! edition = "2024"
//! [features]
//! session = []   # the Session path (absent before issue 12)
//! [dependencies]
//! ib-stream = { path = "/path/to/ib-stream" }
//! [profile.release]
//! debug = "line-tables-only"
//! codegen-units = 1
//! lto = "fat"
//! ```
//! Hot-path instruction counts (run under callgrind, collecting only in `measure_*`).
//! `hp ingest <version>`: frame buffer -> decode -> subscription -> ring (Ingest::process,
//! as the engine's read loop drives it). `hp session <version>` (feature `session`): the
//! same bytes through Session::recv_buf/on_received.
use std::collections::VecDeque;

use ib_stream::engine::{Ingest, Limits, Publisher, Request, SubKey, SubKind, SubscriptionManager};
use ib_stream::tws::msg::server::{TbtQuote, TbtTrade, TickByTickData};
use ib_stream::tws::ServerMsg;

const P: i64 = 1_000_000_000;
const S: i64 = 100_000_000;
const CON: u32 = 265_598;
const ROUNDS: i64 = 20_000;
const CHUNK: usize = 65_536;
const KINDS: [SubKind; 4] = [SubKind::BidAsk, SubKind::Last, SubKind::AllLast, SubKind::MidPoint];

fn wire(req: &[i32; 4], version: u32) -> Vec<u8> {
    let trade = |k: i64| TbtTrade {
        price: (18_900 + k % 50) * P / 100,
        size: (1 + k % 7) * S,
        past_limit: k % 11 == 0,
        unreported: false,
        exchange: ["NASDAQ", "ARCA", "IEX"][(k % 3) as usize].into(),
        special_conditions: ["", " T", "   F"][(k % 3) as usize].into(),
    };
    let mut out = Vec::new();
    for i in 0..ROUNDS {
        let t = 1_767_000_000 + i;
        let msgs = [
            ServerMsg::TickByTick { req_id: req[0], time: t, data: TickByTickData::BidAsk(TbtQuote {
                bid_price: (18_900 + i % 40) * P / 100, ask_price: (18_902 + i % 40) * P / 100,
                bid_size: (100 + i % 9) * S, ask_size: (200 + i % 5) * S,
                bid_past_low: false, ask_past_high: i % 13 == 0 }) },
            ServerMsg::TickByTick { req_id: req[1], time: t, data: TickByTickData::Last(trade(i)) },
            ServerMsg::TickByTick { req_id: req[2], time: t, data: TickByTickData::AllLast(trade(i + 1)) },
            ServerMsg::TickByTick { req_id: req[3], time: t, data: TickByTickData::MidPoint((18_901 + i % 40) * P / 100) },
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
        n += ingest.process(ts, 1, &mut other).unwrap();
        ingest.publisher.flush();
        other.clear();
        while ingest.subs.poll_event().is_some() {}
    }
    n
}

fn ingest(version: u32) {
    let publisher = Publisher::heap(1 << 20).unwrap();
    let mut subs = SubscriptionManager::new(Limits { tbt_same_instrument_ns: 0, ..Limits::default() }, 1000);
    subs.on_connected();
    for k in KINDS {
        subs.subscribe("hp", SubKey { con_id: CON, kind: k }, 0).unwrap();
    }
    let mut req = [0i32; 4];
    while let Some(r) = subs.next_request(0) {
        if let Request::TickByTick { req_id, kind, .. } = r {
            req[KINDS.iter().position(|k| *k == kind).unwrap()] = req_id;
        }
    }
    let mut ingest = Ingest::new(publisher, subs);
    ingest.version = version;
    let w = wire(&req, version);
    let n = measure_ingest(&mut ingest, &w);
    println!("ingest version={version} ticks={n} bytes={}", w.len());
}

#[cfg(feature = "session")]
mod session {
    use super::*;
    use ib_stream::config::{Environment, Settings, TrackedContract};
    use ib_stream::engine::contract_store::StoredContract;
    use ib_stream::engine::{Action, Clock, EngineOptions, Session};
    use ib_stream::ipc::RecordKind;
    use ib_stream::tws::{ClientMsg, Contract, FrameReader, ServerAck, MAX_SUPPORTED};

    #[inline(never)]
    fn measure_session(s: &mut Session, clock: Clock, wire: &[u8]) -> usize {
        let mut n = 0;
        for chunk in wire.chunks(CHUNK) {
            s.recv_buf()[..chunk.len()].copy_from_slice(chunk);
            let ts = ib_stream::engine::publish::unix_ns();
            assert!(s.on_received(Clock { mono: clock.mono, unix: ts }, ts, chunk.len()));
            n += s.take_published();
            while s.poll_action().is_some() {}
        }
        n
    }

    pub fn run(version: u32) {
        assert_eq!(version, MAX_SUPPORTED, "the session negotiates the newest");
        let mut st = Settings::defaults(Environment::Development);
        st.allow_delayed = false;
        st.tracked_contracts = vec![TrackedContract {
            con_id: CON, symbol: "AAPL".into(),
            kinds: vec![RecordKind::TbtBidAsk, RecordKind::TbtLast, RecordKind::TbtAllLast, RecordKind::TbtMidPoint],
            buffer_hours: 0,
        }];
        let c = Contract { con_id: CON as i32, symbol: "AAPL".into(), sec_type: "STK".into(),
            exchange: "SMART".into(), currency: "USD".into(), ..Contract::default() };
        let unix = ib_stream::engine::publish::unix_ns();
        let clock = Clock { mono: 1, unix };
        let opts = EngineOptions { tbt_same_instrument_ms: 0, ..EngineOptions::default() };
        let mut s = Session::new(st, opts, Publisher::heap(1 << 20).unwrap(),
            vec![StoredContract::from_contract(&c, unix)], "/nonexistent".into(), 1, clock);
        s.on_timeout(clock);
        while let Some(a) = s.poll_action() { assert!(matches!(a, Action::Connect { .. }), "{a:?}"); }
        s.on_connecting(clock);
        s.on_connected(clock);
        let n = s.ib_out().len();
        s.ib_written(n);
        let mut b = Vec::new();
        ServerAck { version, time: "t".into() }.encode(&mut b);
        ServerMsg::NextValidId { order_id: 1 }.encode(version, &mut b);
        assert!(s.on_bytes(clock, unix, &b));
        let out = s.ib_out().to_vec();
        s.ib_written(out.len());
        let mut r = FrameReader::new();
        r.feed(&out);
        let mut req = [0i32; 4];
        while let Some(f) = r.next_frame(version).unwrap() {
            if let ClientMsg::ReqTickByTick { req_id, tick_type, .. } = ClientMsg::decode(&f, version).unwrap() {
                let k = KINDS.iter().position(|k| k.ib_name() == tick_type).unwrap();
                req[k] = req_id;
            }
        }
        assert!(req.iter().all(|r| *r != 0), "{req:?}");
        let w = wire(&req, version);
        let n = measure_session(&mut s, clock, &w);
        let recs = s.publisher().snap.counters.records_published;
        println!("session version={version} tail_flushed={n} records={recs} bytes={}", w.len());
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let version: u32 = args[2].parse().unwrap();
    match args[1].as_str() {
        "ingest" => ingest(version),
        #[cfg(feature = "session")]
        "session" => session::run(version),
        m => panic!("mode {m}"),
    }
}
