//! End-to-end through the control socket: bad input, shared subscriptions and their
//! release, budgets, pacing, lookups; plus a restarted engine seen as a new epoch.

mod engine_support;

use std::io::{BufRead, Read, Write};
use std::process::Command;
use std::time::Duration;

use engine_support::*;
use ib_stream::ipc::{ConnState, Record, RecordKind, RingReader, StartAt, SubState, WriterStatus};

const AAPL: u32 = 265_598;
const MSFT: u32 = 272_093;

fn sub_records(s: &[Record], con: u32, kind: RecordKind, state: SubState) -> Vec<Record> {
    s.iter()
        .filter(|r| {
            is_kind(r, RecordKind::Subscription)
                && r.instrument_id == con
                && r.body[0] == kind as i64
                && r.tick_type == state as u8
        })
        .copied()
        .collect()
}

#[test]
fn bad_control_input_gets_errors_and_the_engine_keeps_streaming() {
    let dir = TempDir::new("badctl");
    let sim = Sim::start(&["--rate", "100"]);
    let eng = Engine::start(
        dir.path(),
        sim.port,
        &["IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:bid_ask"],
        &[],
    );
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| {
        count_kind(s, RecordKind::TbtBidAsk, AAPL) >= 5
    });

    let mut a = eng.control();
    let cases = [
        ("this is not json", "bad_json", "not a request"),
        (r#"{"id":1,"op":"nope"}"#, "unknown_op", "nope"),
        (
            r#"{"id":2,"op":"subscribe","con_id":1,"kind":"last"}"#,
            "bad_request",
            "client",
        ),
        (
            r#"{"id":3,"op":"subscribe","client":"x","con_id":1,"kind":"weird"}"#,
            "bad_request",
            "weird",
        ),
        (
            r#"{"id":4,"op":"subscribe","client":"x","kind":"last"}"#,
            "bad_request",
            "con_id",
        ),
        (
            r#"{"id":5,"op":"unsubscribe","client":"x","con_id":5,"kind":"last"}"#,
            "not_held",
            "holds no",
        ),
        (r#"{"id":6,"op":"lookup"}"#, "bad_request", "symbol"),
    ];
    for (line, code, needle) in cases {
        let r = a.call(line);
        assert_eq!(r["ok"], false, "{line}: {r}");
        assert_eq!(r["error"]["code"], code, "{line}: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{line}: {msg}");
    }
    // Still served after its mistakes (6 bad requests; 8 would close it).
    let r = a.call(r#"{"id":"p","op":"ping"}"#);
    assert_eq!(
        (r["ok"].clone(), r["id"].clone()),
        (true.into(), "p".into())
    );

    // A client sending garbage is disconnected with a reason.
    let mut b = eng.control();
    for _ in 0..20 {
        let _ = b.w.write_all(b"\x00\xff garbage\n");
    }
    let mut text = String::new();
    let _ = b.r.read_to_string(&mut text);
    assert!(text.contains("too_many_errors"), "{text}");

    // A line that never ends is cut off.
    let mut c = eng.control();
    let _ = c.w.write_all(&vec![b'x'; 40 * 1024]);
    let mut text = String::new();
    let _ = c.r.read_to_string(&mut text);
    assert!(text.contains("line_too_long"), "{text}");

    // A flood of valid requests is rate limited.
    let mut d = eng.control();
    let mut flood = String::new();
    for i in 0..1000 {
        flood.push_str(&format!("{{\"id\":{i},\"op\":\"ping\"}}\n"));
    }
    let _ = d.w.write_all(flood.as_bytes());
    let mut text = String::new();
    let _ = d.r.read_to_string(&mut text);
    assert!(
        text.contains("rate_limited"),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );

    // The stream went on all along and goes on now.
    let mark = seen.len();
    read_until(&mut ring, 30, &mut seen, |s| {
        count_kind(&s[mark..], RecordKind::TbtBidAsk, AAPL) >= 20
    });
    let r = a.call(r#"{"id":7,"op":"status"}"#);
    assert_eq!(r["conn_state"], "connected", "{r}");
}

#[test]
fn subscriptions_are_shared_and_the_last_holder_out_cancels() {
    let dir = TempDir::new("share");
    let sim = Sim::start(&["--rate", "50"]);
    let eng = Engine::start(dir.path(), sim.port, &[], &[]);
    let mut a = eng.control();
    let mut b = eng.control();
    let r = a.call(r#"{"id":1,"op":"subscribe","client":"a","con_id":272093,"kind":"mid_point"}"#);
    assert_eq!(
        (r["ok"].clone(), r["shared"].clone()),
        (true.into(), false.into()),
        "{r}"
    );
    let r = b.call(r#"{"id":1,"op":"subscribe","client":"b","con_id":272093,"kind":"mid_point"}"#);
    assert_eq!(
        (r["shared"].clone(), r["holders"].clone()),
        (true.into(), 2.into()),
        "{r}"
    );
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| {
        count_kind(s, RecordKind::TbtMidPoint, MSFT) >= 5
    });
    assert_eq!(
        sub_records(&seen, MSFT, RecordKind::TbtMidPoint, SubState::Requested).len(),
        1,
        "one IB request for two holders"
    );
    let r = a.call(r#"{"id":2,"op":"list"}"#);
    let list = r["subscriptions"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["holders"], 2);
    assert_eq!(list[0]["state"], "active");

    let r =
        a.call(r#"{"id":3,"op":"unsubscribe","client":"a","con_id":272093,"kind":"mid_point"}"#);
    assert_eq!(r["holders"], 1, "{r}");
    let mark = seen.len();
    read_until(&mut ring, 30, &mut seen, |s| {
        count_kind(&s[mark..], RecordKind::TbtMidPoint, MSFT) >= 5
    });
    assert!(sub_records(&seen, MSFT, RecordKind::TbtMidPoint, SubState::Cancelled).is_empty());

    // The last holder's connection closes: the subscription is released and cancelled.
    drop(b);
    read_until(&mut ring, 30, &mut seen, |s| {
        !sub_records(s, MSFT, RecordKind::TbtMidPoint, SubState::Cancelled).is_empty()
    });
    let r = a.call(r#"{"id":4,"op":"list"}"#);
    assert_eq!(r["subscriptions"].as_array().unwrap().len(), 0, "{r}");
    // And IB stops sending: the simulator has no subscription left for us.
    std::thread::sleep(Duration::from_millis(300));
    let stats = sim.control(r#"{"cmd":"stats"}"#);
    let subs = &stats["clients"][0]["subscriptions"];
    assert!(
        subs.as_array().is_none_or(|a| a.is_empty())
            || subs.as_object().is_some_and(|o| o.is_empty()),
        "{stats}"
    );
}

#[test]
fn full_tick_by_tick_budget_rejects_clearly_and_same_instrument_requests_queue() {
    let dir = TempDir::new("budget");
    let sim = Sim::start(&["--rate", "20", "--tbt-same-instrument-secs", "1"]);
    let eng = Engine::start(
        dir.path(),
        sim.port,
        &[],
        &["--tbt-slots", "2", "--tbt-same-instrument-ms", "1500"],
    );
    let mut ctl = eng.control();
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| {
        s.iter().any(|r| {
            is_kind(r, RecordKind::Connection) && r.tick_type == ConnState::Connected as u8
        })
    });
    let r = ctl.call(r#"{"id":1,"op":"subscribe","client":"t","con_id":265598,"kind":"bid_ask"}"#);
    assert_eq!(r["ok"], true, "{r}");
    let r = ctl.call(r#"{"id":2,"op":"subscribe","client":"t","con_id":265598,"kind":"last"}"#);
    assert_eq!(r["ok"], true, "{r}");
    let r = ctl.call(r#"{"id":3,"op":"subscribe","client":"t","con_id":272093,"kind":"bid_ask"}"#);
    assert_eq!(r["ok"], false, "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("10190") && msg.contains("2 of 2"), "{msg}");
    // The second request for the same instrument waited for IB's spacing.
    read_until(&mut ring, 30, &mut seen, |s| {
        count_kind(s, RecordKind::TbtLast, AAPL) >= 3
            && count_kind(s, RecordKind::TbtBidAsk, AAPL) >= 3
    });
    let t1 = sub_records(&seen, AAPL, RecordKind::TbtBidAsk, SubState::Requested)[0].ts_recv;
    let t2 = sub_records(&seen, AAPL, RecordKind::TbtLast, SubState::Requested)[0].ts_recv;
    // The records are written just after each request is sent (a loaded machine may delay
    // the first record a little after its send: 100 ms of slack).
    assert!(t2 - t1 >= 1_400_000_000, "spacing {} ns", t2 - t1);
    assert!(
        !eng.log().contains("10190"),
        "IB never had to refuse: {}",
        eng.log()
    );
}

fn universe_of(n: u32, path: &std::path::Path) -> Vec<u32> {
    let out = Command::new(SIM).arg("--dump-universe").output().unwrap();
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let aapl = all.iter().find(|i| i["con_id"] == AAPL).unwrap().clone();
    let mut list = Vec::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let mut x = aapl.clone();
        let id = 5_000_000 + i;
        x["con_id"] = id.into();
        x["symbol"] = format!("SYM{i}").into();
        x["local_symbol"] = format!("SYM{i}").into();
        list.push(x);
        ids.push(id);
    }
    std::fs::write(path, serde_json::to_vec(&list).unwrap()).unwrap();
    ids
}

#[test]
fn subscribing_200_contracts_never_exceeds_the_outbound_budget() {
    let dir = TempDir::new("pace");
    let uni = dir.path().join("universe.json");
    let ids = universe_of(200, &uni);
    let sim = Sim::start(&[
        "--universe",
        uni.to_str().unwrap(),
        "--rate",
        "1",
        "--max-mkt-lines",
        "300",
        "--max-msgs-per-sec",
        "50",
    ]);
    let eng = Engine::start(
        dir.path(),
        sim.port,
        &["IB_STREAM_MAX_MSG_RATE=45"],
        &["--mkt-lines", "300"],
    );
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| {
        s.iter().any(|r| {
            is_kind(r, RecordKind::Connection) && r.tick_type == ConnState::Connected as u8
        })
    });
    // Two clients, 100 each (a client may send 200 requests a second).
    let mut clients = [eng.control(), eng.control()];
    for (n, id) in ids.iter().enumerate() {
        let c = &mut clients[n % 2];
        c.send(&format!(
            r#"{{"id":{n},"op":"subscribe","client":"c{}","con_id":{id},"kind":"mktdata"}}"#,
            n % 2
        ));
    }
    for c in clients.iter_mut() {
        for _ in 0..100 {
            let r = c.recv();
            assert_eq!(r["ok"], true, "{r}");
        }
    }
    read_until(&mut ring, 60, &mut seen, |s| {
        let active: std::collections::BTreeSet<u32> = s
            .iter()
            .filter(|r| {
                is_kind(r, RecordKind::Subscription) && r.tick_type == SubState::Active as u8
            })
            .map(|r| r.instrument_id)
            .collect();
        active.len() == 200
    });
    let mut times: Vec<i64> = seen
        .iter()
        .filter(|r| {
            is_kind(r, RecordKind::Subscription) && r.tick_type == SubState::Requested as u8
        })
        .map(|r| r.ts_recv)
        .collect();
    times.sort_unstable();
    let log = eng.log();
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN"))
        .take(10)
        .collect();
    assert_eq!(times.len(), 200, "{warns:#?}");
    // Any one-second window holds at most the budget (45), below IB's 50.
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| **u < t + 1_000_000_000)
            .count();
        assert!(in_window <= 45, "{in_window} requests within one second");
    }
    let span = times[199] - times[0];
    assert!(span >= 3_000_000_000, "200 requests took only {span} ns");
    // No pacing violation, no disconnect.
    let connected = seen
        .iter()
        .filter(|r| is_kind(r, RecordKind::Connection) && r.tick_type == ConnState::Connected as u8)
        .count();
    assert_eq!(connected, 1);
    assert!(!eng.log().contains("sent too fast"), "{}", eng.log());
}

#[test]
fn contracts_are_looked_up_and_subscribed_by_description() {
    let dir = TempDir::new("lookup");
    let sim = Sim::start(&["--rate", "50"]);
    let eng = Engine::start(dir.path(), sim.port, &[], &[]);
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| {
        s.iter().any(|r| {
            is_kind(r, RecordKind::Connection) && r.tick_type == ConnState::Connected as u8
        })
    });
    let mut ctl = eng.control();
    let r = ctl.call(r#"{"id":1,"op":"lookup","symbol":"AAPL","sec_type":"STK","currency":"USD"}"#);
    assert_eq!(r["ok"], true, "{r}");
    let list = r["contracts"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{r}");
    assert_eq!(list[0]["con_id"], AAPL);
    assert_eq!(list[0]["symbol"], "AAPL");
    let r = ctl.call(r#"{"id":2,"op":"lookup","con_id":272093}"#);
    assert_eq!(r["contracts"][0]["symbol"], "MSFT", "{r}");
    let r = ctl.call(
        r#"{"id":3,"op":"subscribe","client":"t","symbol":"MSFT","sec_type":"STK","currency":"USD","kind":"bid_ask"}"#,
    );
    assert_eq!(
        (r["ok"].clone(), r["con_id"].clone()),
        (true.into(), MSFT.into()),
        "{r}"
    );
    read_until(&mut ring, 30, &mut seen, |s| {
        count_kind(s, RecordKind::TbtBidAsk, MSFT) >= 3
    });
    let r = ctl.call(r#"{"id":4,"op":"lookup","symbol":"NOSUCHTHING","sec_type":"STK"}"#);
    assert_eq!(
        (r["ok"].clone(), r["error"]["code"].clone()),
        (false.into(), "ib_error".into()),
        "{r}"
    );
    assert!(
        r["error"]["message"].as_str().unwrap().contains("200"),
        "{r}"
    );
    // IB's code as a number: clients decide on it, not on the text.
    assert_eq!(r["error"]["ib_code"], 200, "{r}");
}

#[test]
fn a_restarted_engine_is_a_new_epoch_to_readers_and_tools() {
    let dir = TempDir::new("epoch");
    let sim = Sim::start(&["--rate", "100", "--tbt-same-instrument-secs", "0"]);
    let sets = ["IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:bid_ask"];
    let mut e1 = Engine::start(
        dir.path(),
        sim.port,
        &sets,
        &["--tbt-same-instrument-ms", "0"],
    );
    let mut ring = e1.ring();
    let first_epoch = ring.info().epoch;
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| {
        count_kind(s, RecordKind::TbtBidAsk, AAPL) >= 5
    });

    // `tail` prints JSON lines of the kind asked for; `top --once` shows the subscription.
    let out = Command::new(ENGINE)
        .args([
            "--set",
            &format!("IB_STREAM_SHM_DIR={}", dir.path().display()),
        ])
        .args([
            "tail", "--oldest", "--kind", "bid_ask", "--con-id", "265598", "--count", "5",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for l in &lines {
        assert_eq!(
            (l["tt"].clone(), l["cid"].clone()),
            ("bid_ask".into(), AAPL.into()),
            "{l}"
        );
    }
    let out = Command::new(ENGINE)
        .args([
            "--set",
            &format!("IB_STREAM_SHM_DIR={}", dir.path().display()),
        ])
        .args(["top", "--once"])
        .output()
        .unwrap();
    let top = String::from_utf8(out.stdout).unwrap();
    assert!(
        top.contains("state connected") && top.contains("265598") && top.contains("active"),
        "{top}"
    );

    e1.kill();
    let now = ib_stream::ipc::shm::unix_time_ns();
    assert!(matches!(
        ring.writer_status(now, 5_000_000_000),
        WriterStatus::Gone { .. }
    ));
    let e2 = Engine::start(
        dir.path(),
        sim.port,
        &sets,
        &["--tbt-same-instrument-ms", "0"],
    );
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while !matches!(
        ring.writer_status(ib_stream::ipc::shm::unix_time_ns(), 5_000_000_000),
        WriterStatus::Replaced
    ) {
        assert!(
            std::time::Instant::now() < until,
            "the new engine never replaced the ring"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let epoch = ring.reopen(StartAt::Oldest).unwrap();
    assert_ne!(epoch, first_epoch);
    let mut seen2 = Vec::new();
    read_until(&mut ring, 30, &mut seen2, |s| {
        count_kind(s, RecordKind::TbtBidAsk, AAPL) >= 5
    });
    assert_eq!(seen2[0].seq, 1, "sequences start again in the new epoch");
    let fresh = RingReader::open(&dir.path().join("ticks.ring"), StartAt::Oldest).unwrap();
    assert_eq!(fresh.info().epoch, epoch);
    drop(e2);
}

#[test]
fn the_watchdog_probes_a_silent_subscription_and_says_so() {
    let dir = TempDir::new("watchdog");
    let sim = Sim::start(&["--rate", "50", "--tbt-same-instrument-secs", "0"]);
    let eng = Engine::start(
        dir.path(),
        sim.port,
        &["IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:bid_ask"],
        &["--tbt-same-instrument-ms", "0", "--silence-secs", "1"],
    );
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| {
        count_kind(s, RecordKind::TbtBidAsk, AAPL) >= 5
    });
    sim.control(r#"{"cmd":"stall","ms":2500}"#);
    read_until(&mut ring, 30, &mut seen, |s| {
        !sub_records(s, AAPL, RecordKind::TbtBidAsk, SubState::Silent).is_empty()
    });
    // Data comes back after the stall and the subscription is active again.
    let mark = seen.len();
    read_until(&mut ring, 30, &mut seen, |s| {
        count_kind(&s[mark..], RecordKind::TbtBidAsk, AAPL) >= 5
            && !sub_records(&s[mark..], AAPL, RecordKind::TbtBidAsk, SubState::Active).is_empty()
    });
    assert!(
        eng.log().contains("probing IB with reqCurrentTime"),
        "{}",
        eng.log()
    );
}

/// A stream as fast as the engine can read (the simulator's asap mode) must not starve the
/// loop: control requests are answered and the status region keeps being published.
#[test]
fn a_flood_of_ticks_does_not_starve_control_or_status() {
    let dir = TempDir::new("flood");
    let sim = Sim::start(&["--mode", "asap", "--tbt-same-instrument-secs", "0"]);
    let eng = Engine::start(
        dir.path(),
        sim.port,
        &["IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:bid_ask"],
        &["--tbt-same-instrument-ms", "0"],
    );
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| {
        count_kind(s, RecordKind::TbtBidAsk, AAPL) >= 1000
    });
    let status = ib_stream::ipc::StatusReader::open(&dir.path().join("status")).unwrap();
    let mut ctl = eng.control();
    let g0 = status.latest_generation();
    for i in 0..5 {
        let t = std::time::Instant::now();
        let r = ctl.call(&format!(r#"{{"id":{i},"op":"status"}}"#));
        assert_eq!(r["conn_state"], "connected", "{r}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a reply took {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        status.latest_generation() > g0,
        "the status region is still published"
    );
    let mut snap = ib_stream::ipc::StatusSnapshot::new_boxed();
    status.read(&mut snap).unwrap();
    assert!(snap.counters.records_published > 1000);
    assert!(
        snap.find_subscription(AAPL, RecordKind::TbtBidAsk)
            .is_some_and(|s| s.ticks > 1000)
    );
}
