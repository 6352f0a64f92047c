//! Faults on command through the control channel (and the schedule file), seen by a client
//! written with the codec; capture, replay and the send-time log.

mod sim_support;

use std::time::Duration;

use ib_stream::tws::{ClientMsg, ServerMsg};
use sim_support::*;

fn sim_with_control(extra: &[&str]) -> Sim {
    let mut args = vec!["--control-port", "0", "--rate", "2000"];
    args.extend_from_slice(extra);
    Sim::start(&args)
}

#[test]
fn drop_closes_the_addressed_client_only() {
    let sim = sim_with_control(&[]);
    let mut a = Client::ready(&sim.addr, 100, 226, 1);
    a.send(&req_tbt(1, 265598, "BidAsk"));
    collect_tbt(&mut a, 1, 3);
    let mut b = Client::ready(&sim.addr, 157, 178, 2);
    assert_eq!(
        sim.control(r#"{"cmd":"drop","client":1}"#),
        serde_json::json!({"ok": true, "clients": 1})
    );
    loop {
        match a.recv() {
            Ok(_) => continue,
            Err(ReadEnd::Closed) => break,
            Err(e) => panic!("expected close, got {e:?}"),
        }
    }
    b.send(&ClientMsg::ReqCurrentTime);
    assert!(matches!(b.recv().unwrap(), ServerMsg::CurrentTime { .. }));
    // The id is free again, and the dropped subscription may be requested again at once
    // (the 15-second rule does not apply to what the gateway side cut).
    let deadline = std::time::Instant::now() + WAIT;
    let mut again = loop {
        let mut c = Client::connect(&sim.addr, 100, 226, 1);
        match c.recv().unwrap() {
            ServerMsg::ManagedAccounts { .. } => break c,
            // The old session may still hold the id for a moment: 326, try again.
            ServerMsg::Error { code: 326, .. } => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "client id 1 never freed"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    again.send(&req_tbt(1, 265598, "BidAsk"));
    collect_tbt(&mut again, 1, 3);
}

#[test]
fn split_frames_still_decode_to_the_expected_ticks() {
    let sim = sim_with_control(&["--seed", "3"]);
    for (n, (min, max)) in [(157, 178), (100, 226)].into_iter().enumerate() {
        let id = n as i32;
        let mut c = Client::ready(&sim.addr, min, max, id);
        let answer = sim.control(&format!(
            r#"{{"cmd":"split","client":{id},"max_chunk":3,"bytes":8000}}"#
        ));
        assert_eq!(answer["clients"], 1);
        let con = [265598, 272093][n];
        c.send(&req_tbt(1, con, "AllLast"));
        let got = collect_tbt(&mut c, 1, 400);
        let want = expected(&[
            "--seed",
            "3",
            "--con-id",
            &con.to_string(),
            "--tick-type",
            "AllLast",
            "--count",
            "400",
        ]);
        assert_eq!(got, want);
    }
}

#[test]
fn connectivity_lost_then_restored_with_data_lost_drops_subscriptions() {
    // The 15-second rule stays on: a resubscription after 1101 is not refused.
    let sim = sim_with_control(&[]);
    for (n, (min, max)) in [(157, 178), (100, 226)].into_iter().enumerate() {
        let id = n as i32;
        let mut c = Client::ready(&sim.addr, min, max, id);
        let con = [711280073, 495512563][n];
        c.send(&req_tbt(1, con, "BidAsk"));
        collect_tbt(&mut c, 1, 5);
        sim.control(&format!(r#"{{"cmd":"lost","client":{id}}}"#));
        assert_eq!(
            c.next_error(),
            (
                -1,
                1100,
                "Connectivity between IB and Trader Workstation has been lost.".into()
            )
        );
        sim.control(&format!(
            r#"{{"cmd":"restored","client":{id},"kept":false}}"#
        ));
        let (req_id, code, _) = c.next_error();
        assert_eq!((req_id, code), (-1, 1101));
        // Nothing follows 1101: the subscription is gone, as stats confirm.
        assert!(matches!(
            c.recv_within(Duration::from_millis(300)),
            Err(ReadEnd::TimedOut)
        ));
        let stats = sim.control(&format!(r#"{{"cmd":"stats","client":{id}}}"#));
        assert_eq!(stats["clients"][0]["subscriptions"], serde_json::json!([]));
        // Resubscribing works and starts again at tick 0.
        c.send(&req_tbt(2, con, "BidAsk"));
        let again = collect_tbt(&mut c, 2, 5);
        let want = expected(&[
            "--con-id",
            &con.to_string(),
            "--tick-type",
            "BidAsk",
            "--count",
            "5",
        ]);
        assert_eq!(again, want);
    }
}

#[test]
fn restored_with_data_kept_resumes_where_it_stopped() {
    let sim = sim_with_control(&["--seed", "9"]);
    let mut c = Client::ready(&sim.addr, 100, 226, 4);
    c.send(&req_tbt(1, 265598, "MidPoint"));
    let mut got = Vec::new();
    sim.control(r#"{"cmd":"lost"}"#);
    loop {
        let m = c.recv().unwrap();
        if let Some((1, v)) = tbt_json(&m) {
            got.push(v);
        } else if let ServerMsg::Error { code: 1100, .. } = m {
            break;
        }
    }
    sim.control(r#"{"cmd":"restored","kept":true}"#);
    assert_eq!(c.next_error().1, 1102);
    got.extend(collect_tbt(&mut c, 1, 50));
    let want = expected(&[
        "--seed",
        "9",
        "--con-id",
        "265598",
        "--tick-type",
        "MidPoint",
        "--count",
        &got.len().to_string(),
    ]);
    assert_eq!(got, want, "no tick lost or repeated across 1100/1102");
}

#[test]
fn farm_notices_and_bad_commands() {
    let sim = sim_with_control(&[]);
    let mut c = Client::ready(&sim.addr, 157, 178, 1);
    for code in [2103, 2104, 2105, 2106, 2157, 2158] {
        sim.control(&format!(r#"{{"cmd":"farm","code":{code}}}"#));
        let (req_id, got, _) = c.next_error();
        assert_eq!((req_id, got), (-1, code));
    }
    assert_eq!(sim.control(r#"{"cmd":"farm","code":200}"#)["ok"], false);
    assert_eq!(sim.control(r#"{"cmd":"nonsense"}"#)["ok"], false);
    assert_eq!(sim.control("not json")["ok"], false);
}

#[test]
fn malformed_frame_breaks_the_clients_framing() {
    let sim = sim_with_control(&[]);
    let mut c = Client::ready(&sim.addr, 100, 226, 1);
    sim.control(r#"{"cmd":"malformed"}"#);
    match c.recv() {
        Err(ReadEnd::Broken(why)) => assert!(!why.is_empty()),
        other => panic!("expected a framing error, got {other:?}"),
    }
}

#[test]
fn restart_closes_everyone_and_listens_again() {
    let sim = sim_with_control(&[]);
    let mut c = Client::ready(&sim.addr, 100, 226, 1);
    c.send(&req_tbt(1, 265598, "Last"));
    collect_tbt(&mut c, 1, 3);
    assert_eq!(
        sim.control(r#"{"cmd":"restart","down_ms":200}"#)["ok"],
        true
    );
    loop {
        match c.recv() {
            Ok(_) => continue,
            Err(ReadEnd::Closed) => break,
            Err(e) => panic!("expected close, got {e:?}"),
        }
    }
    // Reconnect attempts until the listener is back (bounded).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Ok(mut c) =
            std::net::TcpStream::connect(&sim.addr).map(|_| Client::connect(&sim.addr, 100, 226, 1))
        {
            assert!(matches!(
                c.recv().unwrap(),
                ServerMsg::ManagedAccounts { .. }
            ));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "listener did not come back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn stall_holds_data_back() {
    let sim = sim_with_control(&[]);
    let mut c = Client::ready(&sim.addr, 100, 226, 1);
    sim.control(r#"{"cmd":"stall","ms":600}"#);
    c.send(&ClientMsg::ReqCurrentTime);
    // The answer waits for the stall to end.
    assert!(matches!(
        c.recv_within(Duration::from_millis(200)),
        Err(ReadEnd::TimedOut)
    ));
    assert!(matches!(c.recv().unwrap(), ServerMsg::CurrentTime { .. }));
}

#[test]
fn schedule_file_runs_commands_at_their_time() {
    let dir = std::env::temp_dir().join(format!("tws-sim-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("faults.txt");
    std::fs::write(
        &path,
        "# a farm outage\n2000 {\"cmd\":\"farm\",\"code\":2103}\n",
    )
    .unwrap();
    let sim = Sim::start(&[
        "--faults",
        path.to_str().unwrap(),
        "--fault",
        r#"2300 {"cmd":"farm","code":2105}"#,
    ]);
    let mut c = Client::ready(&sim.addr, 100, 226, 1);
    assert_eq!(c.next_error().1, 2103);
    assert_eq!(c.next_error().1, 2105);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn capture_replays_byte_for_byte_and_send_log_covers_every_tick() {
    let dir = std::env::temp_dir().join(format!("tws-sim-capture-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cap = dir.join("cap.bin");
    let log = dir.join("send.log");
    let sim = Sim::start(&[
        "--rate",
        "1000",
        "--capture",
        cap.to_str().unwrap(),
        "--send-log",
        log.to_str().unwrap(),
    ]);
    let mut c = Client::ready(&sim.addr, 100, 226, 1);
    c.send(&req_tbt(3, 711280073, "BidAsk"));
    let live = collect_tbt(&mut c, 3, 100);
    drop(c);
    drop(sim);

    // The send log accounts for ticks 0..n of the subscription without gaps.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut next_k = 0u64;
    for line in text.lines() {
        let f: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
        assert_eq!((f[0], f[1]), (1, 3));
        assert_eq!(f[2], next_k);
        next_k += f[3];
        assert!(f[4] > 1_700_000_000_000_000_000);
    }
    assert!(next_k >= 100);

    // Replay the capture as fast as possible to a new client: the same ticks.
    let replay = Sim::replay(cap.to_str().unwrap());
    let mut r = Client::handshake(&replay.addr, 100, 226, "", 0).unwrap();
    assert_eq!(r.version, 226);
    let replayed = collect_tbt(&mut r, 3, 100);
    assert_eq!(replayed, live);
    std::fs::remove_dir_all(&dir).unwrap();
}
