//! IB's limits as tws-sim applies them: 322, 300, 10190 (cap and 15-second rule), 101, 100
//! (and +PACEAPI), 10197.

mod sim_support;

use ib_stream::tws::{ClientMsg, ServerMsg};
use sim_support::*;

#[test]
fn duplicate_ticker_id_is_322_and_unknown_cancel_is_300() {
    let sim = Sim::start(&["--rate", "5"]);
    for (n, (min, max)) in [(157, 178), (100, 226)].into_iter().enumerate() {
        let mut c = Client::ready(&sim.addr, min, max, n as i32);
        c.send(&req_mkt(1, 265598));
        c.send(&req_mkt(1, 272093));
        assert_eq!(
            c.next_error(),
            (
                1,
                322,
                "Error processing request.-'bW' : cause - Duplicate ticker id".into()
            )
        );
        c.send(&req_tbt(1, 711280073, "BidAsk"));
        let (req_id, code, _) = c.next_error();
        assert_eq!((req_id, code), (1, 322));
        c.send(&ClientMsg::CancelMktData { req_id: 77 });
        assert_eq!(
            c.next_error(),
            (77, 300, "Can't find EId with tickerId:77".into())
        );
        c.send(&ClientMsg::CancelTickByTick { req_id: 78 });
        assert_eq!(c.next_error().1, 300);
        // Cancelling the real one works and frees the id.
        c.send(&ClientMsg::CancelMktData { req_id: 1 });
        c.send(&ClientMsg::CancelMktData { req_id: 1 });
        assert_eq!(
            c.next_error(),
            (1, 300, "Can't find EId with tickerId:1".into())
        );
    }
}

#[test]
fn tick_by_tick_cap_and_same_instrument_rule_are_10190() {
    let sim = Sim::start(&["--rate", "5", "--max-tick-by-tick", "2"]);
    let mut c = Client::ready(&sim.addr, 100, 226, 1);
    c.send(&req_tbt(1, 265598, "Last"));
    c.send(&req_tbt(2, 265598, "BidAsk"));
    c.send(&req_tbt(3, 711280073, "BidAsk"));
    let (req_id, code, _) = c.next_error();
    assert_eq!((req_id, code), (3, 10190));
    // The cap is per account: another client id is refused too.
    let mut other = Client::ready(&sim.addr, 100, 226, 2);
    other.send(&req_tbt(1, 711280073, "BidAsk"));
    assert_eq!(other.next_error().1, 10190);
    // After a cancel there is room, but not for the same instrument and kind within 15 s.
    c.send(&ClientMsg::CancelTickByTick { req_id: 1 });
    c.send(&req_tbt(4, 265598, "Last"));
    assert_eq!(
        c.next_error(),
        (
            4,
            10190,
            "Max number of tick-by-tick requests has been reached.".into()
        )
    );
    c.send(&req_tbt(5, 711280073, "Last"));
    c.send(&ClientMsg::CancelTickByTick { req_id: 999 });
    // Subscription 5 was accepted: no error for it (the next one is the 300), and its ticks come.
    assert_eq!(c.next_error().0, 999);
    c.recv_matching(|m| matches!(m, ServerMsg::TickByTick { req_id: 5, .. }));
}

#[test]
fn market_data_lines_are_101_beyond_the_limit() {
    let sim = Sim::start(&["--rate", "5", "--max-mkt-lines", "2"]);
    let mut c = Client::ready(&sim.addr, 157, 178, 1);
    c.send(&req_mkt(1, 265598));
    c.send(&req_mkt(2, 272093));
    c.send(&req_mkt(3, 756733));
    assert_eq!(
        c.next_error(),
        (3, 101, "Max number of tickers has been reached.".into())
    );
    c.send(&ClientMsg::CancelMktData { req_id: 2 });
    c.send(&req_mkt(4, 756733));
    // Now accepted: its tickReqParams arrives.
    c.recv_matching(|m| matches!(m, ServerMsg::TickReqParams { req_id: 4, .. }));
}

#[test]
fn more_than_50_messages_a_second_is_100_then_disconnect() {
    let sim = Sim::start(&[]);
    let mut c = Client::ready(&sim.addr, 100, 226, 1);
    for _ in 0..60 {
        c.send(&ClientMsg::ReqCurrentTime);
    }
    let mut times = 0;
    loop {
        match c.recv() {
            Ok(ServerMsg::CurrentTime { .. }) => times += 1,
            Ok(ServerMsg::Error { code: 100, .. }) => break,
            other => panic!("expected currentTime or 100, got {other:?}"),
        }
    }
    assert_eq!(times, 50);
    assert!(matches!(c.recv(), Err(ReadEnd::Closed)));
}

#[test]
fn pace_api_clients_are_paced_not_dropped() {
    let sim = Sim::start(&["--max-msgs-per-sec", "20"]);
    let mut c = Client::handshake(&sim.addr, 100, 226, "+PACEAPI", 1).unwrap();
    c.start_api();
    for _ in 0..5 {
        c.recv().unwrap();
    }
    for _ in 0..30 {
        c.send(&ClientMsg::ReqCurrentTime);
    }
    for _ in 0..30 {
        assert!(matches!(c.recv().unwrap(), ServerMsg::CurrentTime { .. }));
    }
}

#[test]
fn competing_session_is_10197() {
    let sim = Sim::start(&["--competing-session"]);
    let mut c = Client::ready(&sim.addr, 100, 226, 1);
    c.send(&req_mkt(1, 265598));
    assert_eq!(
        c.next_error(),
        (
            1,
            10197,
            "No market data during competing live session".into()
        )
    );
    c.send(&req_tbt(2, 265598, "Last"));
    assert_eq!(c.next_error().1, 10197);
}
