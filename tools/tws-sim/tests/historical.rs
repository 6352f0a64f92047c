//! reqHistoricalTicks and reqHeadTimeStamp against the simulated gateway: answers equal the
//! generator's ticks at IB's one-second resolution, refusals carry IB's codes, and the
//! historical pacing rules are enforced with 162 and counted. Pacing runs on a virtual clock
//! (the connection driven in-process); one test goes through a real socket to the control
//! channel's stats.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ib_stream_tws::history::time::format_utc;
use ib_stream_tws::{
    ClientHandshake, Contract, FrameReader, HeadTimestampRequest, HistMid, HistReply, HistRequest,
    HistTicks, HistoricalTicksRequest, ServerMsg, TbtQuote, TbtTrade, Timed,
};
use tws_sim::connection::Connection;
use tws_sim::gateway::{Gateway, GatewayConfig, WallClock};
use tws_sim::generator::{TbtGen, TbtKind, TbtTick};
use tws_sim::limits::LimitConfig;
use tws_sim::schedule::Mode;
use tws_sim::session::SessionConfig;
use tws_sim::universe::Universe;

const AAPL: i32 = 265598;
/// 2026-01-01 14:30:00 UTC: the wall clock's anchor, hence tick 0 of every stream.
const EPOCH: i64 = 1_767_277_800;
const SEED: u64 = 7;
const RATE: f64 = 10.0;

fn config() -> GatewayConfig {
    GatewayConfig {
        max_version: 226,
        mode: Mode::Steady,
        rate: RATE,
        rate_for: HashMap::new(),
        burst_size: 1,
        session: SessionConfig {
            seed: SEED,
            account: "DU1234567".into(),
            next_valid_id: 1,
            limits: LimitConfig {
                max_mkt_lines: 100,
                max_tbt: 5,
                tbt_same_instrument: Duration::from_secs(15),
                max_msgs_per_sec: 50,
            },
        },
        competing: false,
    }
}

fn gateway(t0: Instant) -> Arc<Gateway> {
    let wall = WallClock::new(t0, EPOCH as u128 * 1_000_000_000);
    Arc::new(Gateway::new(config(), Universe::builtin(), wall))
}

fn aapl() -> Contract {
    Contract {
        con_id: AAPL,
        exchange: "SMART".into(),
        ..Contract::default()
    }
}

fn ticks_req(req_id: i32, what: &str, start: &str, end: &str, n: i32) -> HistRequest {
    HistRequest::Ticks(HistoricalTicksRequest {
        req_id,
        contract: aapl(),
        start: start.into(),
        end: end.into(),
        number_of_ticks: n,
        what_to_show: what.into(),
        use_rth: false,
        ignore_size: false,
    })
}

fn at(secs: i64) -> String {
    format_utc(EPOCH + secs)
}

/// What the gateway said to one request.
#[derive(Debug, PartialEq)]
enum Heard {
    Hist(HistReply),
    Error(i32, String),
}

/// A historical answer or a (non-farm) error; other messages are none of these tests' business.
fn heard(f: &ib_stream_tws::Frame<'_>, version: u32) -> Option<Heard> {
    if let Some(h) = HistReply::decode(f, version).unwrap() {
        return Some(Heard::Hist(h));
    }
    match ServerMsg::decode(f, version).unwrap() {
        ServerMsg::Error { code, message, .. } if !(2100..2200).contains(&code) => {
            Some(Heard::Error(code, message))
        }
        _ => None,
    }
}

/// One client connection driven in-process at a chosen version.
struct Client {
    conn: Connection,
    version: u32,
    frames: FrameReader,
}

impl Client {
    fn connect(gw: &Arc<Gateway>, conn_no: u64, max_version: u32, now: Instant) -> Client {
        let mut conn = Connection::new(Arc::clone(gw), conn_no, now);
        let mut hs = ClientHandshake::offering(conn_no as i32, 100, max_version, "");
        let mut hello = Vec::new();
        hs.start(&mut hello);
        conn.on_bytes(&hello, now);
        let mut c = Client {
            conn,
            version: 0,
            frames: FrameReader::new(),
        };
        let got = c.drain(now);
        c.frames.feed(&got);
        let mut start = Vec::new();
        let ack = hs.poll_ack(&mut c.frames, &mut start).unwrap().unwrap();
        c.version = ack.version;
        c.conn.on_bytes(&start, now);
        c.hear(now); // welcome
        c
    }

    fn drain(&mut self, now: Instant) -> Vec<u8> {
        let mut got = Vec::new();
        while let Some(piece) = self.conn.poll_output(now) {
            got.extend_from_slice(piece);
            let n = piece.len();
            self.conn.advance(n, now);
        }
        got
    }

    fn hear(&mut self, now: Instant) -> Vec<Heard> {
        let got = self.drain(now);
        self.frames.feed(&got);
        let mut out = Vec::new();
        while let Some(f) = self.frames.next_frame(self.version).unwrap() {
            out.extend(heard(&f, self.version));
        }
        out
    }

    fn ask(&mut self, req: &HistRequest, now: Instant) -> Vec<Heard> {
        let mut b = Vec::new();
        req.encode(self.version, &mut b).unwrap();
        self.conn.on_bytes(&b, now);
        self.hear(now)
    }
}

/// The generator's ticks `k0..k1` of AAPL as IB's history shows them (tick k at
/// EPOCH + k / RATE, floored to the second): computed here independently of the simulator.
fn expected(kind: TbtKind, k0: u64, k1: u64) -> HistTicks {
    let u = Universe::builtin();
    let inst = u.get(u.by_con_id(AAPL).unwrap());
    let time = |k: u64| EPOCH + (k / RATE as u64) as i64;
    let ticks = TbtGen::new(SEED, inst, kind)
        .enumerate()
        .skip(k0 as usize)
        .take((k1 - k0) as usize);
    match kind {
        TbtKind::MidPoint => HistTicks::MidPoint(
            ticks
                .map(|(k, t)| match t {
                    TbtTick::MidPoint { mid } => Timed {
                        time: time(k as u64),
                        tick: HistMid {
                            price: mid,
                            size: 0,
                        },
                    },
                    other => panic!("{other:?}"),
                })
                .collect(),
        ),
        TbtKind::BidAsk => HistTicks::BidAsk(
            ticks
                .map(|(k, t)| match t {
                    TbtTick::BidAsk {
                        bid,
                        ask,
                        bid_size,
                        ask_size,
                        bid_past_low,
                        ask_past_high,
                    } => Timed {
                        time: time(k as u64),
                        tick: TbtQuote {
                            bid_price: bid,
                            ask_price: ask,
                            bid_size,
                            ask_size,
                            bid_past_low,
                            ask_past_high,
                        },
                    },
                    other => panic!("{other:?}"),
                })
                .collect(),
        ),
        _ => HistTicks::Last(
            ticks
                .map(|(k, t)| match t {
                    TbtTick::Trade {
                        price,
                        size,
                        past_limit,
                        unreported,
                        exchange,
                        conditions,
                    } => {
                        let (ex, cond) =
                            tws_sim::expected::trade_strings(inst, exchange, conditions);
                        Timed {
                            time: time(k as u64),
                            tick: TbtTrade {
                                price,
                                size,
                                past_limit,
                                unreported,
                                exchange: ex.into(),
                                special_conditions: cond.into(),
                            },
                        }
                    }
                    other => panic!("{other:?}"),
                })
                .collect(),
        ),
    }
}

fn answer(req_id: i32, ticks: HistTicks) -> Vec<Heard> {
    vec![Heard::Hist(HistReply::Ticks {
        req_id,
        ticks,
        done: true,
    })]
}

#[test]
fn answers_are_the_generators_ticks_at_one_second_resolution_in_both_framings() {
    for version in [176, 226] {
        let t0 = Instant::now();
        let gw = gateway(t0);
        // 300 s after tick 0: ticks 0..=3000 have happened.
        let now = t0 + Duration::from_secs(300);
        let mut c = Client::connect(&gw, 1, version, now);
        assert_eq!(c.version, version);
        // From second 10, 25 asked: ticks 100..125, then to the end of second 12 (129).
        assert_eq!(
            c.ask(&ticks_req(1, "TRADES", &at(10), "", 25), now),
            answer(1, expected(TbtKind::AllLast, 100, 130))
        );
        // Up to second 20 inclusive, 15 asked: ticks 195..210, then back to the start of
        // second 19 (190).
        assert_eq!(
            c.ask(&ticks_req(2, "BID_ASK", "", &at(20), 15), now),
            answer(2, expected(TbtKind::BidAsk, 190, 210))
        );
        // Before tick 0: from tick 0; whole seconds of 10 ticks need no extension.
        assert_eq!(
            c.ask(&ticks_req(3, "MIDPOINT", &at(-100), "", 20), now),
            answer(3, expected(TbtKind::MidPoint, 0, 20))
        );
        // Only what has happened: tick 3000 is due exactly now, 3001 not yet.
        assert_eq!(
            c.ask(&ticks_req(4, "midpoint", &at(299), "", 1000), now),
            answer(4, expected(TbtKind::MidPoint, 2990, 3001))
        );
        // After the last tick: an empty answer, done.
        assert_eq!(
            c.ask(&ticks_req(5, "TRADES", &at(400), "", 10), now),
            answer(5, HistTicks::Last(Vec::new()))
        );
        let s = gw.historical_stats(now);
        assert_eq!(
            (s.tick_requests, s.answered, s.refused, s.pacing_violations),
            (5, 5, 0, 0)
        );
        assert_eq!(s.ticks_sent, 30 + 20 + 20 + 11);
    }
}

#[test]
fn head_timestamp_is_tick_zero_in_both_formats_and_follows_the_epoch_option() {
    let t0 = Instant::now();
    let gw = gateway(t0);
    let mut c = Client::connect(&gw, 1, 226, t0);
    let head = |req_id, format_date| {
        HistRequest::HeadTimestamp(HeadTimestampRequest {
            req_id,
            contract: aapl(),
            use_rth: false,
            what_to_show: "TRADES".into(),
            format_date,
        })
    };
    let stamp = |req_id, s: &str| {
        vec![Heard::Hist(HistReply::HeadTimestamp {
            req_id,
            timestamp: s.into(),
        })]
    };
    assert_eq!(c.ask(&head(1, 1), t0), stamp(1, "20260101-14:30:00"));
    assert_eq!(c.ask(&head(2, 2), t0), stamp(2, "1767277800"));
    gw.set_historical_epoch(EPOCH - 3600);
    assert_eq!(c.ask(&head(3, 2), t0), stamp(3, "1767274200"));
    // With tick 0 an hour earlier, second 10 after the old epoch is tick 36100.
    let now = t0 + Duration::from_secs(20);
    assert_eq!(
        c.ask(&ticks_req(4, "MIDPOINT", &at(10), "", 10), now),
        answer(4, {
            let HistTicks::MidPoint(v) = expected(TbtKind::MidPoint, 36_100, 36_110) else {
                unreachable!()
            };
            HistTicks::MidPoint(
                v.into_iter()
                    .map(|t| Timed {
                        time: t.time - 3600,
                        ..t
                    })
                    .collect(),
            )
        })
    );
}

fn codes(h: &[Heard]) -> Vec<i32> {
    h.iter()
        .map(|x| match x {
            Heard::Error(c, _) => *c,
            Heard::Hist(_) => 0,
        })
        .collect()
}

#[test]
fn what_ib_refuses_is_refused_with_its_codes_and_costs_no_pacing() {
    let t0 = Instant::now();
    let gw = gateway(t0);
    let now = t0 + Duration::from_secs(60);
    let mut c = Client::connect(&gw, 1, 226, now);
    let refused = [
        (
            ticks_req(1, "TRADES", &at(1), &at(2), 10),
            10187,
            "Exactly one of start time and end time",
        ),
        (
            ticks_req(2, "TRADES", "", "", 10),
            10187,
            "Exactly one of start time and end time",
        ),
        (
            ticks_req(3, "TRADES", &at(1), "", 0),
            10187,
            "numberOfTicks 0",
        ),
        (
            ticks_req(4, "TRADES", &at(1), "", 1001),
            10187,
            "numberOfTicks 1001",
        ),
        (
            ticks_req(5, "BID", &at(1), "", 10),
            10187,
            "Invalid whatToShow 'BID'",
        ),
        (
            ticks_req(6, "TRADES", "20260231-00:00:00", "", 10),
            10187,
            "Invalid date-time",
        ),
        (
            ticks_req(7, "TRADES", "20260101 09:30:00 US/Eastern", "", 10),
            10187,
            "time zone",
        ),
        (
            HistRequest::Ticks(HistoricalTicksRequest {
                contract: Contract {
                    exchange: String::new(),
                    ..aapl()
                },
                ..match ticks_req(8, "TRADES", &at(1), "", 10) {
                    HistRequest::Ticks(r) => r,
                    _ => unreachable!(),
                }
            }),
            321,
            "Please enter exchange",
        ),
        (
            HistRequest::Ticks(HistoricalTicksRequest {
                contract: Contract {
                    con_id: 999_999_999,
                    ..aapl()
                },
                ..match ticks_req(9, "TRADES", &at(1), "", 10) {
                    HistRequest::Ticks(r) => r,
                    _ => unreachable!(),
                }
            }),
            200,
            "No security definition",
        ),
        (
            HistRequest::CancelHeadTimestamp { req_id: 10 },
            366,
            "No historical data query found for ticker id:10",
        ),
    ];
    for (req, code, text) in &refused {
        let heard = c.ask(req, now);
        match heard.as_slice() {
            [Heard::Error(c, m)] => {
                assert_eq!(*c, *code, "{req:?}: {m}");
                assert!(m.contains(text), "{m:?} lacks {text:?}");
                if *c == 10187 {
                    assert!(m.starts_with("Failed to request historical ticks:"), "{m}");
                }
            }
            other => panic!("{req:?}: {other:?}"),
        }
    }
    let s = gw.historical_stats(now);
    assert_eq!((s.refused, s.pacing_violations, s.budget_used), (9, 0, 0));
    // Nothing refused was recorded: a well-formed request goes through.
    assert_eq!(
        codes(&c.ask(&ticks_req(11, "TRADES", &at(1), "", 10), now)),
        [0]
    );
}

#[test]
fn pacing_rules_are_enforced_with_162_at_their_exact_boundaries() {
    let t0 = Instant::now();
    let gw = gateway(t0);
    let base = t0 + Duration::from_secs(3600);
    let mut c = Client::connect(&gw, 1, 226, base);
    let ns = Duration::from_nanos(1);
    let pacing =
        "Historical Market Data Service error message:Historical data request pacing violation";
    let req = |id, what: &str, start: i64| ticks_req(id, what, &at(start), "", 5);

    // Identical within 15 s.
    assert_eq!(codes(&c.ask(&req(1, "TRADES", 100), base)), [0]);
    let t = base + Duration::from_secs(15) - ns;
    assert_eq!(
        c.ask(&req(2, "TRADES", 100), t),
        [Heard::Error(162, pacing.into())]
    );
    assert_eq!(
        codes(&c.ask(&req(3, "TRADES", 100), base + Duration::from_secs(15))),
        [0]
    );

    // The sixth of a kind within 2 s (MIDPOINT: the TRADES above are another kind).
    let b2 = base + Duration::from_secs(30);
    for i in 0..5 {
        let at_ = b2 + Duration::from_millis(300 * i);
        assert_eq!(
            codes(&c.ask(&req(10 + i as i32, "MIDPOINT", 200 + i as i64), at_)),
            [0]
        );
    }
    assert_eq!(
        codes(&c.ask(&req(20, "MIDPOINT", 300), b2 + Duration::from_secs(2) - ns)),
        [162]
    );
    assert_eq!(
        codes(&c.ask(&req(21, "MIDPOINT", 300), b2 + Duration::from_secs(2))),
        [0]
    );
    assert_eq!(gw.historical_stats(b2).pacing_violations, 2);

    // 60 units in 10 minutes, BID_ASK counting twice: 2 TRADES and 6 MIDPOINT used so far
    // (refused requests cost nothing); fill up with BID_ASK spaced to keep the 2 s rule.
    let used = gw.historical_stats(b2 + Duration::from_secs(2)).budget_used;
    assert_eq!(used, 2 + 6);
    let b3 = b2 + Duration::from_secs(10);
    let mut t = b3;
    for i in 0..26 {
        t = b3 + Duration::from_millis(400 * i);
        assert_eq!(
            codes(&c.ask(&req(100 + i as i32, "BID_ASK", 1000 + i as i64), t)),
            [0],
            "{i}"
        );
    }
    assert_eq!(gw.historical_stats(t).budget_used, 60);
    // Full: a TRADES (1 unit) waits until the first request (at `base`) is 10 minutes old.
    assert_eq!(codes(&c.ask(&req(200, "TRADES", 5000), t)), [162]);
    let ten_min = Duration::from_secs(600);
    assert_eq!(
        codes(&c.ask(&req(201, "TRADES", 5001), base + ten_min - ns)),
        [162]
    );
    assert_eq!(
        codes(&c.ask(&req(202, "TRADES", 5002), base + ten_min)),
        [0]
    );
    // A BID_ASK needs two free units: one frees at base + 15 s + 10 min (request 3), not
    // enough; the second at b2 + 10 min.
    assert_eq!(
        codes(&c.ask(
            &req(203, "BID_ASK", 5003),
            base + ten_min + Duration::from_secs(15) - ns
        )),
        [162]
    );
    assert_eq!(codes(&c.ask(&req(204, "BID_ASK", 5004), b2 + ten_min)), [0]);
    assert_eq!(gw.historical_stats(b2 + ten_min).pacing_violations, 5);
}

/// The real socket: the simulator's accept loop on 127.0.0.1, a plain blocking client, and
/// the control channel's `stats` showing the violation count.
#[test]
fn over_a_socket_answers_match_and_stats_count_violations() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t0 = Instant::now();
    // The wall clock anchored so tick 0 is 100 s before now: ticks 0..1000 have happened.
    let wall = WallClock::new(t0, (EPOCH + 100) as u128 * 1_000_000_000);
    let gw = Gateway::new(config(), Universe::builtin(), wall);
    gw.set_historical_epoch(EPOCH);
    let hub = Arc::new(tws_sim::hub::Hub::new(gw, tws_sim::hub::Recording::default()).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let exec = tws_sim::control::Executor {
        hub: Arc::clone(&hub),
        server: tx,
    };
    std::thread::spawn(move || tws_sim::server::run(listener, hub, rx));

    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hs = ClientHandshake::offering(3, 100, 176, "");
    let mut out = Vec::new();
    hs.start(&mut out);
    s.write_all(&out).unwrap();
    let mut frames = FrameReader::new();
    let mut buf = [0u8; 65536];
    let mut start = Vec::new();
    let ack = loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed during the handshake");
        frames.feed(&buf[..n]);
        if let Some(ack) = hs.poll_ack(&mut frames, &mut start).unwrap() {
            break ack;
        }
    };
    assert_eq!(ack.version, 176);
    s.write_all(&start).unwrap();
    let req = ticks_req(9, "TRADES", &at(50), "", 30);
    let mut b = Vec::new();
    req.encode(176, &mut b).unwrap();
    // The same request twice: the second breaks the 15-second rule.
    s.write_all(&b).unwrap();
    s.write_all(&b).unwrap();
    let mut got = Vec::new();
    for _ in 0..1000 {
        while let Some(f) = frames.next_frame(176).unwrap() {
            got.extend(heard(&f, 176));
        }
        if got.len() >= 2 {
            break;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed");
        frames.feed(&buf[..n]);
    }
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got[0],
        answer(9, expected(TbtKind::AllLast, 500, 530)).remove(0)
    );
    assert!(matches!(&got[1], Heard::Error(162, m) if m.ends_with("pacing violation")));
    let stats = exec.run_line(r#"{"cmd":"stats"}"#);
    let h = &stats["historical"];
    assert_eq!(h["pacing_violations"], 1, "{stats}");
    assert_eq!(h["answered"], 1);
    assert_eq!(h["ticks_sent"], 30);
}
