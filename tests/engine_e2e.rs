//! End-to-end: the real `ib-stream engine` against the real `tws-sim`, read from the ring.

mod engine_support;

use engine_support::*;
use ib_stream::ipc::{
    ConnState, GapReason, Record, RecordKind, StringTableReader, SubState, UNDEF_I64, flags,
};

const AAPL: u32 = 265_598;
const MSFT: u32 = 272_093;

fn ticks_of(recs: &[Record], kind: RecordKind, con_id: u32) -> Vec<Record> {
    recs.iter()
        .filter(|r| r.kind == kind as u8 && r.instrument_id == con_id)
        .copied()
        .collect()
}

fn l1_ticks(recs: &[Record], con_id: u32) -> Vec<Record> {
    recs.iter()
        .filter(|r| {
            r.instrument_id == con_id
                && matches!(
                    r.kind(),
                    Some(
                        RecordKind::L1Price
                            | RecordKind::L1Size
                            | RecordKind::L1Generic
                            | RecordKind::L1String
                    )
                )
        })
        .copied()
        .collect()
}

fn check_trades(got: &[Record], want: &[serde_json::Value], strings: &StringTableReader) {
    for (i, (r, w)) in got.iter().zip(want).enumerate() {
        let t = r.as_trade().unwrap();
        assert_eq!(t.price, price(w["price"].as_str().unwrap()), "trade {i}");
        assert_eq!(t.size, size(w["size"].as_str().unwrap()), "trade {i}");
        let x = strings.get(t.exchange_id).unwrap();
        assert_eq!(
            x,
            w["exchange"].as_str().unwrap().as_bytes(),
            "trade {i} exchange"
        );
        let c = strings.get(t.conditions_id).unwrap();
        assert_eq!(
            c,
            w["conditions"].as_str().unwrap().as_bytes(),
            "trade {i} conditions"
        );
        assert_eq!(
            r.has_flag(flags::PAST_LIMIT),
            w["past_limit"] == true,
            "trade {i}"
        );
        assert_eq!(
            r.has_flag(flags::UNREPORTED),
            w["unreported"] == true,
            "trade {i}"
        );
        assert_ne!(r.ts_event, UNDEF_I64);
    }
}

fn check_l1(got: &[Record], want: &[serde_json::Value], strings: &StringTableReader) {
    for (i, (r, w)) in got.iter().zip(want).enumerate() {
        // Delayed tick ids arrive as the live id with the DELAYED flag.
        let (tt, delayed) =
            ib_stream::tws::tick::live_tick_type(w["tick_type"].as_i64().unwrap() as i32);
        assert_eq!(i32::from(r.tick_type), tt, "l1 {i}: {w}");
        if delayed {
            assert!(
                r.has_flag(flags::DELAYED),
                "l1 {i}: a delayed id must be marked"
            );
        }
        match w["msg"].as_str().unwrap() {
            "tickPrice" => {
                assert_eq!(r.kind(), Some(RecordKind::L1Price), "l1 {i}");
                assert_eq!(r.body[0], price(w["price"].as_str().unwrap()), "l1 {i}");
                assert_eq!(r.body[1], size(w["size"].as_str().unwrap()), "l1 {i}");
                let attr = w["attr"].as_i64().unwrap();
                assert_eq!(r.has_flag(flags::CAN_AUTO_EXECUTE), attr & 1 != 0, "l1 {i}");
            }
            "tickSize" => {
                assert_eq!(r.kind(), Some(RecordKind::L1Size), "l1 {i}");
                assert_eq!(r.body[0], size(w["size"].as_str().unwrap()), "l1 {i}");
            }
            "tickGeneric" => {
                assert_eq!(r.kind(), Some(RecordKind::L1Generic), "l1 {i}");
                assert_eq!(r.body[0], price(w["value"].as_str().unwrap()), "l1 {i}");
            }
            "tickString" => {
                assert_eq!(r.kind(), Some(RecordKind::L1String), "l1 {i}");
                let s = strings.get(r.body[0] as u32).unwrap();
                assert_eq!(s, w["value"].as_str().unwrap().as_bytes(), "l1 {i}");
            }
            other => panic!("unexpected {other}"),
        }
    }
}

/// The four tick-by-tick kinds (from the configuration) and L1 (from the control socket)
/// arrive with exactly the simulator's values, in order, each with the next sequence.
fn every_kind_exact(split: bool) {
    const N: usize = 40;
    let dir = TempDir::new("kinds");
    let sim = Sim::start(&["--rate", "200", "--tbt-same-instrument-secs", "0"]);
    // Without splitting, AAPL's kinds come from the configuration; with it, everything is
    // subscribed over the control socket after the split starts, so all tick bytes are split.
    let tracked = if split {
        "IB_STREAM_TRACKED_CONTRACTS="
    } else {
        "IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:bid_ask;last;all_last;mid_point"
    };
    let eng = Engine::start(
        dir.path(),
        sim.port,
        &[tracked],
        &["--tbt-same-instrument-ms", "0"],
    );
    let mut ctl = eng.control();
    if split {
        let mut ring = eng.ring();
        let mut seen = Vec::new();
        read_until(&mut ring, 30, &mut seen, |s| {
            s.iter().any(|r| {
                is_kind(r, RecordKind::Connection) && r.tick_type == ConnState::Connected as u8
            })
        });
        // Every byte in its own write: frames split at every byte boundary.
        let a = sim.control(r#"{"cmd":"split","max_chunk":1,"bytes":100000000}"#);
        assert_eq!(a["clients"], 1, "{a}");
        for (i, kind) in ["bid_ask", "last", "all_last", "mid_point"]
            .iter()
            .enumerate()
        {
            let r = ctl.call(&format!(
                r#"{{"id":{i},"op":"subscribe","client":"t","con_id":265598,"kind":"{kind}"}}"#
            ));
            assert_eq!(r["ok"], true, "{r}");
        }
    }
    let r = ctl.call(r#"{"id":1,"op":"subscribe","client":"t","con_id":272093,"kind":"mktdata"}"#);
    assert_eq!(r["ok"], true, "{r}");
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    read_until(&mut ring, 60, &mut seen, |s| {
        [
            RecordKind::TbtBidAsk,
            RecordKind::TbtLast,
            RecordKind::TbtAllLast,
            RecordKind::TbtMidPoint,
        ]
        .iter()
        .all(|k| count_kind(s, *k, AAPL) >= N)
            && l1_ticks(s, MSFT).len() >= N
    });
    // One ordered story: sequences 1, 2, 3, ... with no hole.
    for (i, r) in seen.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
    }
    let strings = StringTableReader::open(&dir.path().join("strings")).unwrap();
    assert!(strings.belongs_to(ring.info().epoch));

    let quotes = ticks_of(&seen, RecordKind::TbtBidAsk, AAPL);
    let want = expected(AAPL, "BidAsk", N, &[]);
    for (i, (r, w)) in quotes.iter().zip(&want).enumerate() {
        let q = r.as_quote().unwrap();
        assert_eq!(
            q.bid_price,
            price(w["bid_price"].as_str().unwrap()),
            "quote {i}"
        );
        assert_eq!(
            q.ask_price,
            price(w["ask_price"].as_str().unwrap()),
            "quote {i}"
        );
        assert_eq!(
            q.bid_size,
            size(w["bid_size"].as_str().unwrap()),
            "quote {i}"
        );
        assert_eq!(
            q.ask_size,
            size(w["ask_size"].as_str().unwrap()),
            "quote {i}"
        );
        assert_eq!(r.has_flag(flags::BID_PAST_LOW), w["bid_past_low"] == true);
        assert_eq!(r.has_flag(flags::ASK_PAST_HIGH), w["ask_past_high"] == true);
        assert!(r.ts_recv > 0);
    }
    check_trades(
        &ticks_of(&seen, RecordKind::TbtLast, AAPL),
        &expected(AAPL, "Last", N, &[]),
        &strings,
    );
    check_trades(
        &ticks_of(&seen, RecordKind::TbtAllLast, AAPL),
        &expected(AAPL, "AllLast", N, &[]),
        &strings,
    );
    let mids = ticks_of(&seen, RecordKind::TbtMidPoint, AAPL);
    for (i, (r, w)) in mids
        .iter()
        .zip(expected(AAPL, "MidPoint", N, &[]))
        .enumerate()
    {
        assert_eq!(
            r.body[0],
            price(w["mid_point"].as_str().unwrap()),
            "mid {i}: {w}"
        );
    }
    check_l1(
        &l1_ticks(&seen, MSFT)[..N],
        &expected(MSFT, "mktdata", N, &[]),
        &strings,
    );

    // Each subscription went Queued -> Requested -> Active, in that order.
    for kind in [
        RecordKind::TbtBidAsk,
        RecordKind::TbtLast,
        RecordKind::L1Price,
    ] {
        let con = if kind == RecordKind::L1Price {
            MSFT
        } else {
            AAPL
        };
        let mut states: Vec<u8> = seen
            .iter()
            .filter(|r| {
                r.kind == RecordKind::Subscription as u8
                    && r.instrument_id == con
                    && r.body[0] == kind as i64
            })
            .map(|r| r.tick_type)
            .collect();
        // A marketDataType notice repeats the current state with its data type.
        states.dedup();
        assert_eq!(
            &states[..3],
            &[
                SubState::Queued as u8,
                SubState::Requested as u8,
                SubState::Active as u8
            ],
            "{kind:?}"
        );
    }
    assert!(
        seen.iter().any(|r| r.kind == RecordKind::Connection as u8
            && r.tick_type == ConnState::Connected as u8
            && r.body[0] >= 100),
        "a Connected record with the server version"
    );
}

#[test]
fn every_kind_arrives_with_exact_values_in_order() {
    every_kind_exact(false);
}

#[test]
fn frames_split_at_every_byte_boundary_decode_the_same() {
    every_kind_exact(true);
}

/// A gateway restart: reconnect, resubscribe, and a gap record whose interval holds every
/// tick the simulator sent that never reached the ring.
#[test]
fn gateway_restart_reconnects_resubscribes_and_records_the_gap() {
    let dir = TempDir::new("restart");
    let send_log = dir.path().join("send.log");
    let sim = Sim::start(&[
        "--rate",
        "100",
        "--tbt-same-instrument-secs",
        "0",
        "--send-log",
        send_log.to_str().unwrap(),
    ]);
    let eng = Engine::start(
        dir.path(),
        sim.port,
        &["IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:bid_ask"],
        &["--tbt-same-instrument-ms", "0", "--backoff-base-ms", "100"],
    );
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| {
        count_kind(s, RecordKind::TbtBidAsk, AAPL) >= 20
    });
    sim.control(r#"{"cmd":"restart","down_ms":700}"#);
    let before = seen.len();
    read_until(&mut ring, 30, &mut seen, |s| {
        let after = &s[before..];
        after.iter().any(|r| is_kind(r, RecordKind::Gap))
            && count_kind(after, RecordKind::TbtBidAsk, AAPL) >= 20
    });
    let after = &seen[before..];
    let gap = after
        .iter()
        .find(|r| is_kind(r, RecordKind::Gap))
        .copied()
        .unwrap();
    assert_eq!(gap.tick_type, GapReason::Disconnected as u8);
    let (from, to) = (gap.body[2], gap.body[3]);
    assert!(from > 0 && from < to, "gap interval {from}..{to}");
    // Disconnected, then Connected again, then the subscription requested again.
    let gap_pos = after
        .iter()
        .position(|r| is_kind(r, RecordKind::Gap))
        .unwrap();
    assert!(after[..gap_pos].iter().any(
        |r| is_kind(r, RecordKind::Connection) && r.tick_type == ConnState::Disconnected as u8
    ));
    assert!(
        after[..gap_pos].iter().any(
            |r| is_kind(r, RecordKind::Connection) && r.tick_type == ConnState::Connected as u8
        )
    );
    let requested: Vec<i64> = seen
        .iter()
        .filter(|r| {
            is_kind(r, RecordKind::Subscription) && r.tick_type == SubState::Requested as u8
        })
        .map(|r| r.body[2])
        .collect();
    assert_eq!(
        requested.len(),
        2,
        "requested once per connection: {requested:?}"
    );
    assert_ne!(
        requested[0], requested[1],
        "a fresh request id after the reconnect"
    );
    // Ticks before the gap were received before `from`'s end; ticks after it after `to`.
    let last_before = seen[..before + gap_pos]
        .iter()
        .rev()
        .find(|r| is_kind(r, RecordKind::TbtBidAsk))
        .unwrap();
    assert!(last_before.ts_recv <= from);
    let first_after = after[gap_pos..]
        .iter()
        .find(|r| is_kind(r, RecordKind::TbtBidAsk))
        .unwrap();
    assert!(first_after.ts_recv >= to);
    // Every tick the simulator sent on the first connection that is not in the ring was
    // sent inside the gap's interval.
    let received_first = seen[..before + gap_pos]
        .iter()
        .filter(|r| is_kind(r, RecordKind::TbtBidAsk))
        .count() as u64;
    let log = std::fs::read_to_string(&send_log).unwrap();
    let first_req = requested[0];
    let mut lost = 0;
    for line in log.lines() {
        let f: Vec<i64> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        let (req, first_k, count, at) = (f[1], f[2] as u64, f[3] as u64, f[4]);
        if req != first_req {
            continue;
        }
        for k in first_k..first_k + count {
            if k >= received_first {
                lost += 1;
                assert!(
                    (from..=to).contains(&at),
                    "lost tick {k} sent at {at}, outside the gap {from}..{to}"
                );
            }
        }
    }
    eprintln!("ticks lost in the restart: {lost}");
}

/// 1101 (connectivity restored, data lost) resubscribes everything and records a gap;
/// 1102 (data maintained) keeps the subscriptions as they are. Ticks between 1100 and the
/// restore are marked stale.
#[test]
fn ib_1101_resubscribes_and_1102_does_not() {
    let dir = TempDir::new("1101");
    let sim = Sim::start(&["--rate", "100", "--tbt-same-instrument-secs", "0"]);
    let eng = Engine::start(
        dir.path(),
        sim.port,
        &["IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:bid_ask"],
        &["--tbt-same-instrument-ms", "0"],
    );
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    let requested = |s: &[Record]| {
        s.iter()
            .filter(|r| {
                is_kind(r, RecordKind::Subscription) && r.tick_type == SubState::Requested as u8
            })
            .count()
    };
    let conn = |s: &[Record], st: ConnState, code: i64| {
        s.iter().any(|r| {
            is_kind(r, RecordKind::Connection) && r.tick_type == st as u8 && r.body[2] == code
        })
    };
    read_until(&mut ring, 30, &mut seen, |s| {
        count_kind(s, RecordKind::TbtBidAsk, AAPL) >= 5
    });
    assert_eq!(requested(&seen), 1);

    sim.control(r#"{"cmd":"lost"}"#);
    read_until(&mut ring, 30, &mut seen, |s| {
        conn(s, ConnState::IbLost, 1100)
    });
    sim.control(r#"{"cmd":"restored","kept":true}"#);
    let mark = seen.len();
    read_until(&mut ring, 30, &mut seen, |s| {
        conn(&s[mark..], ConnState::Connected, 1102)
            && count_kind(&s[mark..], RecordKind::TbtBidAsk, AAPL) >= 10
    });
    assert_eq!(requested(&seen), 1, "1102 must not resubscribe");
    assert!(
        !seen.iter().any(|r| is_kind(r, RecordKind::Gap)),
        "1102 loses nothing"
    );

    sim.control(r#"{"cmd":"lost"}"#);
    let mark = seen.len();
    read_until(&mut ring, 30, &mut seen, |s| {
        conn(&s[mark..], ConnState::IbLost, 1100)
    });
    sim.control(r#"{"cmd":"restored","kept":false}"#);
    let mark = seen.len();
    read_until(&mut ring, 30, &mut seen, |s| {
        conn(&s[mark..], ConnState::Connected, 1101)
            && count_kind(&s[mark..], RecordKind::TbtBidAsk, AAPL) >= 10
    });
    assert_eq!(requested(&seen), 2, "1101 resubscribes");
    let gap = seen.iter().find(|r| is_kind(r, RecordKind::Gap)).unwrap();
    assert_eq!(gap.tick_type, GapReason::IbConnectivity as u8);
    assert!(gap.body[2] <= gap.body[3]);
    // Ticks after the restore are not stale.
    let last = seen
        .iter()
        .rev()
        .find(|r| is_kind(r, RecordKind::TbtBidAsk))
        .unwrap();
    assert!(!last.has_flag(flags::STALE));
}

/// A second engine with the same client id gets 326 and moves to the next id in its range.
#[test]
fn duplicate_client_id_moves_to_the_next_id() {
    let d1 = TempDir::new("cid1");
    let d2 = TempDir::new("cid2");
    let sim = Sim::start(&["--tbt-same-instrument-secs", "0"]);
    let sets = ["IB_STREAM_CLIENT_ID=50", "IB_STREAM_CLIENT_ID_RANGE=3"];
    let e1 = Engine::start(d1.path(), sim.port, &sets, &[]);
    let mut r1 = e1.ring();
    let mut s1 = Vec::new();
    let connected_as = |s: &[Record], id: i64| {
        s.iter().any(|r| {
            is_kind(r, RecordKind::Connection)
                && r.tick_type == ConnState::Connected as u8
                && r.body[1] == id
        })
    };
    read_until(&mut r1, 30, &mut s1, |s| connected_as(s, 50));
    let e2 = Engine::start(d2.path(), sim.port, &sets, &[]);
    let mut r2 = e2.ring();
    let mut s2 = Vec::new();
    read_until(&mut r2, 30, &mut s2, |s| connected_as(s, 51));
    assert!(!connected_as(&s2, 50));
    assert!(e2.log().contains("326"), "{}", e2.log());
}

/// The delayed fallback: live data refused (354), the engine asks for delayed data and
/// marks every record and the subscription as delayed.
#[test]
fn refused_live_data_falls_back_to_delayed_and_says_so() {
    let dir = TempDir::new("delayed");
    let sim = Sim::start(&["--rate", "100", "--entitlement", "272093=delayed"]);
    let eng = Engine::start(dir.path(), sim.port, &[], &[]);
    let mut ctl = eng.control();
    let r = ctl.call(r#"{"id":1,"op":"subscribe","client":"t","con_id":272093,"kind":"mktdata"}"#);
    assert_eq!(r["ok"], true, "{r}");
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| l1_ticks(s, MSFT).len() >= 20);
    let ticks = l1_ticks(&seen, MSFT);
    assert!(
        ticks.iter().all(|r| r.has_flag(flags::DELAYED)),
        "every tick marked delayed"
    );
    assert!(seen.iter().any(|r| is_kind(r, RecordKind::Subscription)
        && r.instrument_id == MSFT
        && r.tick_type == SubState::Delayed as u8));
    // Values are the simulator's delayed stream, exactly.
    let strings = StringTableReader::open(&dir.path().join("strings")).unwrap();
    check_l1(
        &ticks[..20],
        &expected(MSFT, "mktdata", 20, &["--delayed"]),
        &strings,
    );
}

/// A frame no client accepts (impossible length) ends that connection, never the engine:
/// it reconnects, resubscribes and records the gap.
#[test]
fn a_malformed_frame_ends_the_connection_not_the_engine() {
    let dir = TempDir::new("malformed");
    let sim = Sim::start(&["--rate", "100", "--tbt-same-instrument-secs", "0"]);
    let eng = Engine::start(
        dir.path(),
        sim.port,
        &["IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:bid_ask"],
        &["--tbt-same-instrument-ms", "0", "--backoff-base-ms", "50"],
    );
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| {
        count_kind(s, RecordKind::TbtBidAsk, AAPL) >= 5
    });
    sim.control(r#"{"cmd":"malformed"}"#);
    let mark = seen.len();
    read_until(&mut ring, 30, &mut seen, |s| {
        let after = &s[mark..];
        after
            .iter()
            .any(|r| is_kind(r, RecordKind::Gap) && r.tick_type == GapReason::Disconnected as u8)
            && count_kind(after, RecordKind::TbtBidAsk, AAPL) >= 5
    });
    assert!(eng.log().contains("bad frame"), "{}", eng.log());
}

/// After a reconnect the session's gap ends when the session is back, but a subscription
/// that waits for the same-instrument window before it is requested again has no data for
/// longer: its own gap (instrument = its conId) ends when its first tick arrives.
#[test]
fn a_subscription_waiting_after_a_reconnect_has_its_own_gap_until_it_is_live() {
    let dir = TempDir::new("subgap");
    let sim = Sim::start(&["--rate", "100", "--tbt-same-instrument-secs", "0"]);
    // Two kinds of one instrument: the engine spaces their requests by its 2 s window, so
    // after the reconnect `last` comes back about 2 s after `bid_ask`.
    let eng = Engine::start(
        dir.path(),
        sim.port,
        &["IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:bid_ask;last"],
        &[
            "--tbt-same-instrument-ms",
            "2000",
            "--backoff-base-ms",
            "100",
        ],
    );
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| {
        count_kind(s, RecordKind::TbtBidAsk, AAPL) >= 5
            && count_kind(s, RecordKind::TbtLast, AAPL) >= 5
    });
    sim.control(r#"{"cmd":"restart","down_ms":300}"#);
    let before = seen.len();
    read_until(&mut ring, 30, &mut seen, |s| {
        let after = &s[before..];
        let Some(at) = after
            .iter()
            .position(|r| is_kind(r, RecordKind::Gap) && r.instrument_id == 0)
        else {
            return false;
        };
        after
            .iter()
            .filter(|r| is_kind(r, RecordKind::Gap) && r.instrument_id == AAPL)
            .count()
            >= 2
            && count_kind(&after[at..], RecordKind::TbtLast, AAPL) >= 1
            && count_kind(&after[at..], RecordKind::TbtBidAsk, AAPL) >= 1
    });
    let after = &seen[before..];
    let at = after
        .iter()
        .position(|r| is_kind(r, RecordKind::Gap) && r.instrument_id == 0)
        .expect("the session's gap");
    let session = after[at];
    // Each kind's first tick of the new session (ticks of the old one may precede the gap);
    // the manager requests one kind at once and the other a window later.
    let first = |k: RecordKind| {
        after[at..]
            .iter()
            .find(|r| is_kind(r, k) && r.instrument_id == AAPL)
            .map(|r| r.ts_recv)
            .unwrap_or(i64::MAX)
    };
    let late = first(RecordKind::TbtLast).max(first(RecordKind::TbtBidAsk));
    let mine: Vec<&Record> = after
        .iter()
        .filter(|r| is_kind(r, RecordKind::Gap) && r.instrument_id == AAPL)
        .collect();
    for g in &mine {
        assert_eq!(g.tick_type, GapReason::Disconnected as u8);
        assert_eq!(
            g.body[2], session.body[2],
            "it starts where the session's gap does"
        );
    }
    // The later one belongs to the kind that waited: it ends with that kind's first tick,
    // well after the session was back.
    let end = mine.iter().map(|g| g.body[3]).max().unwrap();
    assert!(
        end >= late && end - late < 500_000_000,
        "gap end {end} vs the waiting kind's first tick {late}"
    );
    assert!(
        end - session.body[3] >= 1_500_000_000,
        "ends {} ms after the session's gap",
        (end - session.body[3]) / 1_000_000
    );
}
