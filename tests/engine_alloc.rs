//! The engine's per-tick path (frame buffer -> decode -> subscription lookup -> record ->
//! ring, with the batch publish) allocates nothing in steady state: counted with an
//! instrumented global allocator over thousands of ticks of every kind, in both wire forms.
//! The allocator counts per thread: only the thread running the engine's path is measured.

mod alloc_support;

use std::collections::VecDeque;

use alloc_support::{Counting, Region};
use ib_stream::engine::{Ingest, Limits, Publisher, SubKey, SubKind, SubscriptionManager};
use ib_stream::ipc::{ReadOutcome, RecordKind, StartAt};
use ib_stream::tws::msg::server::{TbtQuote, TbtTrade, TickByTickData};
use ib_stream::tws::{ServerMsg, version};

#[global_allocator]
static GLOBAL: Counting = Counting;

const P: i64 = 1_000_000_000;
const S: i64 = 100_000_000;
const CON: u32 = 265_598;

/// Tick messages for the subscriptions' request ids, varied per `i`.
fn ticks(req: &[i32; 5], i: i64, out: &mut Vec<ServerMsg>) {
    let trade = |k: i64| TbtTrade {
        price: (18_900 + k % 50) * P / 100,
        size: (1 + k % 7) * S,
        past_limit: k % 11 == 0,
        unreported: false,
        exchange: ["NASDAQ", "ARCA", "IEX"][(k % 3) as usize].into(),
        special_conditions: ["", " T", "   F"][(k % 3) as usize].into(),
    };
    out.push(ServerMsg::TickByTick {
        req_id: req[0],
        time: 1_767_000_000 + i,
        data: TickByTickData::BidAsk(TbtQuote {
            bid_price: (18_900 + i % 40) * P / 100,
            ask_price: (18_902 + i % 40) * P / 100,
            bid_size: (100 + i % 9) * S,
            ask_size: (200 + i % 5) * S,
            bid_past_low: false,
            ask_past_high: i % 13 == 0,
        }),
    });
    out.push(ServerMsg::TickByTick {
        req_id: req[1],
        time: 1_767_000_000 + i,
        data: TickByTickData::Last(trade(i)),
    });
    out.push(ServerMsg::TickByTick {
        req_id: req[2],
        time: 1_767_000_000 + i,
        data: TickByTickData::AllLast(trade(i + 1)),
    });
    out.push(ServerMsg::TickByTick {
        req_id: req[3],
        time: 1_767_000_000 + i,
        data: TickByTickData::MidPoint((18_901 + i % 40) * P / 100),
    });
    out.push(ServerMsg::TickPrice {
        req_id: req[4],
        tick_type: if i % 2 == 0 { 1 } else { 2 },
        price: (18_900 + i % 40) * P / 100,
        size: (100 + i % 9) * S,
        attr_mask: 1,
    });
    out.push(ServerMsg::TickSize {
        req_id: req[4],
        tick_type: 8,
        size: (10_000 + i) * S,
    });
    out.push(ServerMsg::TickGeneric {
        req_id: req[4],
        tick_type: 49,
        value: 0.0,
    });
}

/// Sets up an ingest path with five active subscriptions at `version`; returns it with the
/// encoded stream of `n` rounds of ticks.
fn setup(version: u32, n: i64) -> (Ingest, Vec<u8>) {
    let publisher = Publisher::heap(1 << 16).unwrap();
    let mut subs = SubscriptionManager::new(
        Limits {
            tbt_same_instrument_ns: 0,
            ..Limits::default()
        },
        1000,
    );
    subs.on_connected();
    let kinds = [
        SubKind::BidAsk,
        SubKind::Last,
        SubKind::AllLast,
        SubKind::MidPoint,
        SubKind::MktData,
    ];
    for k in kinds {
        subs.subscribe(
            "test",
            SubKey {
                con_id: CON,
                kind: k,
            },
            0,
        )
        .unwrap();
    }
    let mut req = [0i32; 5];
    while let Some(r) = subs.next_request(0) {
        match r {
            ib_stream::engine::Request::TickByTick { req_id, kind, .. } => {
                req[kinds.iter().position(|k| *k == kind).unwrap()] = req_id;
            }
            ib_stream::engine::Request::MktData { req_id, .. } => req[4] = req_id,
            other => panic!("{other:?}"),
        }
    }
    let mut ingest = Ingest::new(publisher, subs);
    ingest.version = version;
    let mut msgs = Vec::new();
    let mut wire = Vec::new();
    for i in 0..n {
        msgs.clear();
        ticks(&req, i, &mut msgs);
        for m in &msgs {
            m.encode(version, &mut wire);
        }
    }
    (ingest, wire)
}

/// Feeds `wire` in socket-sized chunks through the ingest path, as the loop does.
fn run(ingest: &mut Ingest, wire: &[u8], other: &mut VecDeque<ServerMsg>) -> usize {
    let mut published = 0;
    for chunk in wire.chunks(4093) {
        let spare = ingest.reader.spare(chunk.len());
        spare[..chunk.len()].copy_from_slice(chunk);
        ingest.reader.commit(chunk.len());
        let ts = ib_stream::engine::publish::unix_ns();
        published += ingest.process(ts, 1, other).unwrap();
        ingest.publisher.flush();
        while ingest.subs.poll_event().is_some() {}
    }
    published
}

#[test]
fn steady_state_ticks_allocate_nothing() {
    for v in [
        version::MAX_SUPPORTED,
        176,
        version::TICK_BY_TICK_IGNORE_SIZE,
    ] {
        let (mut ingest, warm) = setup(v, 200);
        let mut other = VecDeque::with_capacity(64);
        let mut reader = ingest.publisher.reader(StartAt::Oldest);
        // Warm-up: first ticks change subscription states, strings get their ids, the
        // frame buffer reaches its working size.
        assert_eq!(run(&mut ingest, &warm, &mut other), 200 * 7);
        let (_, steady) = setup(v, 2_000);
        assert!(alloc_support::counter_counts(), "the counter counts");
        let region = Region::new();
        let n = run(&mut ingest, &steady, &mut other);
        let mut read = 0;
        loop {
            match reader.try_read() {
                ReadOutcome::Record(r) => {
                    if r.kind().is_some_and(RecordKind::is_market_data) {
                        read += 1;
                    }
                }
                ReadOutcome::Empty => break,
                ReadOutcome::Lost { .. } => panic!("the ring is large enough"),
            }
        }
        let stats = region.change();
        assert_eq!(n, 2_000 * 7, "version {v}");
        assert_eq!(
            read,
            (200 + 2_000) * 7,
            "version {v}: every tick reached the ring"
        );
        assert!(other.is_empty(), "version {v}: no non-tick message");
        assert_eq!(
            (stats.allocations, stats.reallocations),
            (0, 0),
            "version {v}: {stats:?}"
        );
        assert_eq!(ingest.orphan_ticks, 0);
    }
}

/// The engine's receive path as the driver runs it: the session's receive buffer, then
/// `Session::on_received` (frames, ticks into the ring batch, the publish), after a scripted
/// handshake. Zero allocations over thousands of ticks once warm.
#[test]
fn the_session_receive_path_allocates_nothing() {
    use ib_stream::config::{Environment, Settings, TrackedContract};
    use ib_stream::engine::contract_store::StoredContract;
    use ib_stream::engine::{Clock, EngineOptions, Session};
    use ib_stream::tws::{ClientMsg, Contract, FrameReader, ServerAck};

    let v = version::MAX_SUPPORTED;
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
            RecordKind::L1Price,
        ],
        buffer_hours: 0,
    }];
    let contract = Contract {
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
    let publisher = Publisher::heap(1 << 16).unwrap();
    let mut ring = publisher.reader(StartAt::Oldest);
    let stored = vec![StoredContract::from_contract(&contract, unix)];
    let mut s = Session::new(st, opts, publisher, stored, "/nonexistent".into(), 1, clock);
    s.on_timeout(clock);
    while s.poll_action().is_some() {}
    s.on_connecting(clock);
    s.on_connected(clock);
    let n = s.ib_out().len();
    s.ib_written(n);
    let mut hs = Vec::new();
    ServerAck {
        version: v,
        time: "t".into(),
    }
    .encode(&mut hs);
    ServerMsg::NextValidId { order_id: 1 }.encode(v, &mut hs);
    assert!(s.on_bytes(clock, unix, &hs));
    assert!(s.is_ready());
    let out = s.ib_out().to_vec();
    s.ib_written(out.len());
    let mut r = FrameReader::new();
    r.feed(&out);
    let kinds = ["BidAsk", "Last", "AllLast", "MidPoint"];
    let mut req = [0i32; 5];
    while let Some(f) = r.next_frame(v).unwrap() {
        match ClientMsg::decode(&f, v).unwrap() {
            ClientMsg::ReqTickByTick {
                req_id, tick_type, ..
            } => req[kinds.iter().position(|k| *k == tick_type).unwrap()] = req_id,
            ClientMsg::ReqMktData { req_id, .. } => req[4] = req_id,
            ClientMsg::StartApi { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(req.iter().all(|r| *r != 0), "{req:?}");
    let stream = |n: i64| {
        let mut msgs = Vec::new();
        let mut wire = Vec::new();
        for i in 0..n {
            msgs.clear();
            ticks(&req, i, &mut msgs);
            for m in &msgs {
                m.encode(v, &mut wire);
            }
        }
        wire
    };
    let feed = |s: &mut Session, wire: &[u8]| {
        for chunk in wire.chunks(4093) {
            s.recv_buf()[..chunk.len()].copy_from_slice(chunk);
            let ts = ib_stream::engine::publish::unix_ns();
            assert!(s.on_received(Clock { mono: 1, unix: ts }, ts, chunk.len()));
            s.take_published();
            while s.poll_action().is_some() {}
        }
    };
    // Warm-up: subscriptions go active, strings get their ids, buffers reach their size.
    feed(&mut s, &stream(200));
    let steady = stream(2_000);
    let region = Region::new();
    feed(&mut s, &steady);
    let stats = region.change();
    let mut read = 0;
    while let ReadOutcome::Record(r) = ring.try_read() {
        if r.kind().is_some_and(RecordKind::is_market_data) {
            read += 1;
        }
    }
    assert_eq!(read, (200 + 2_000) * 7, "every tick reached the ring");
    assert_eq!(
        (stats.allocations, stats.reallocations),
        (0, 0),
        "{stats:?}"
    );
}

/// The driver's read of the IB socket: one `recvmsg` with the kernel's receive stamp in a
/// control message (`rx_stamp`), then the two per-read histograms. Zero allocations over
/// thousands of reads, stamped ones among them (so the control-message path ran).
#[test]
fn the_stamped_socket_read_allocates_nothing() {
    use ib_stream::engine::driver::rx_stamp::{self, StampedReader};
    use ib_stream::ipc::StatusSnapshot;
    use std::io::Write;

    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut tx = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (rx, _) = l.accept().unwrap();
    rx_stamp::enable(&rx).expect("SO_TIMESTAMPING");
    let mut reader = StampedReader::new();
    let mut snap = StatusSnapshot::new_boxed();
    let mut buf = vec![0u8; 65_536];
    let frame = [7u8; 61];
    let mut round = |reader: &mut StampedReader, snap: &mut StatusSnapshot| -> (usize, usize) {
        tx.write_all(&frame).unwrap();
        let (mut bytes, mut stamped) = (0, 0);
        // Loopback delivers at once; a bounded number of tries all the same.
        for _ in 0..100_000 {
            match reader.read(&rx, &mut buf) {
                Ok(r) => {
                    bytes += r.bytes;
                    let done = ib_stream::engine::publish::unix_ns();
                    snap.latencies.read_to_commit.record(5);
                    if let Some(k) = r.kernel_ns {
                        stamped += 1;
                        snap.latencies
                            .kernel_to_commit
                            .record((done - k).max(0) as u64);
                    }
                    if bytes == frame.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        (bytes, stamped)
    };
    for _ in 0..50 {
        round(&mut reader, &mut snap);
    }
    let region = Region::new();
    let mut stamped = 0;
    for _ in 0..2_000 {
        let (b, s) = round(&mut reader, &mut snap);
        assert_eq!(b, frame.len());
        stamped += s;
    }
    let stats = region.change();
    // The kernel does not stamp every read (seen under load: 309 to 2 000 of 2 000); some
    // must have been, so that the control-message path ran inside the region.
    assert!(stamped > 0, "no read carried a stamp");
    assert_eq!(
        (stats.allocations, stats.reallocations),
        (0, 0),
        "{stats:?}"
    );
}
