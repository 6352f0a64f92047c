//! tws-sim market data equals what `tws-sim expected` computes, in the text and the protobuf
//! form: the four tick-by-tick kinds, the reqMktData (L1) sequence, delayed data.

mod sim_support;

use ib_stream::tws::{ClientMsg, ServerMsg};
use sim_support::*;

const RANGES: [(u32, u32); 2] = [(157, 178), (100, 226)];

#[test]
fn tick_by_tick_equals_expected_for_every_kind() {
    let sim = Sim::start(&["--seed", "42", "--rate", "2000", "--max-tick-by-tick", "8"]);
    for (n, (min, max)) in RANGES.into_iter().enumerate() {
        let mut c = Client::ready(&sim.addr, min, max, n as i32);
        let cases = [
            (265598, "Last"),
            (265598, "AllLast"),
            (711280073, "BidAsk"),
            (12087792, "MidPoint"),
        ];
        for (i, (con, kind)) in cases.into_iter().enumerate() {
            let req_id = 100 * (n as i32 + 1) + i as i32;
            // Other conIds per round so the 15-second rule does not apply between rounds.
            let con = if n == 0 {
                con
            } else {
                [272093, 272093, 495512563, 15016059][i]
            };
            c.send(&req_tbt(req_id, con, kind));
            let got = collect_tbt(&mut c, req_id, 300);
            let want = expected(&[
                "--seed",
                "42",
                "--con-id",
                &con.to_string(),
                "--tick-type",
                kind,
                "--count",
                "300",
            ]);
            assert_eq!(got, want, "{kind} of {con} at version {}", c.version);
            c.send(&ClientMsg::CancelTickByTick { req_id });
        }
    }
}

#[test]
fn a_new_subscription_starts_again_at_tick_zero() {
    let sim = Sim::start(&["--rate", "1000", "--tbt-same-instrument-secs", "0"]);
    let mut c = Client::ready(&sim.addr, 100, 226, 1);
    c.send(&req_tbt(1, 265598, "BidAsk"));
    let first = collect_tbt(&mut c, 1, 50);
    c.send(&ClientMsg::CancelTickByTick { req_id: 1 });
    c.send(&req_tbt(2, 265598, "BidAsk"));
    let second = collect_tbt(&mut c, 2, 50);
    assert_eq!(first, second);
}

/// Reads a reqMktData subscription: tickReqParams, marketDataType, then `n` ticks as JSON.
fn collect_l1(c: &mut Client, req_id: i32, n: usize, data_type: i32) -> Vec<serde_json::Value> {
    match c.recv().unwrap() {
        ServerMsg::TickReqParams {
            req_id: r,
            min_tick,
            ..
        } => {
            assert_eq!(r, req_id);
            assert!(min_tick > 0);
        }
        other => panic!("expected tickReqParams first, got {other:?}"),
    }
    assert_eq!(
        c.recv().unwrap(),
        ServerMsg::MarketDataType {
            req_id,
            market_data_type: data_type
        }
    );
    (0..n)
        .map(|_| {
            let m = c.recv().unwrap();
            let (r, v) = l1_json(&m).unwrap_or_else(|| panic!("expected an L1 tick, got {m:?}"));
            assert_eq!(r, req_id);
            v
        })
        .collect()
}

#[test]
fn mkt_data_sequence_equals_expected() {
    let sim = Sim::start(&["--seed", "7", "--rate", "2000"]);
    for (n, (min, max)) in RANGES.into_iter().enumerate() {
        let mut c = Client::ready(&sim.addr, min, max, n as i32);
        c.send(&req_mkt(5, 265598));
        let got = collect_l1(&mut c, 5, 200, 1);
        let want = expected(&[
            "--seed",
            "7",
            "--con-id",
            "265598",
            "--tick-type",
            "mktdata",
            "--count",
            "200",
        ]);
        assert_eq!(got, want, "version {}", c.version);
    }
}

#[test]
fn not_entitled_is_354_live_and_delayed_after_type_3() {
    let sim = Sim::start(&[
        "--rate",
        "2000",
        "--entitlement",
        "265598=delayed",
        "--entitlement",
        "756733=api_delayed",
    ]);
    for (n, (min, max)) in RANGES.into_iter().enumerate() {
        let mut c = Client::ready(&sim.addr, min, max, n as i32);
        c.send(&req_mkt(1, 265598));
        assert_eq!(c.next_error().1, 354);
        c.send(&req_mkt(2, 756733));
        assert_eq!(c.next_error().1, 10089);
        c.send(&ClientMsg::ReqMarketDataType {
            market_data_type: 3,
        });
        c.send(&req_mkt(3, 265598));
        let (req_id, code, _) = c.next_error();
        assert_eq!((req_id, code), (3, 10167));
        let got = collect_l1(&mut c, 3, 100, 3);
        let want = expected(&[
            "--con-id",
            "265598",
            "--tick-type",
            "mktdata",
            "--delayed",
            "--count",
            "100",
        ]);
        assert_eq!(got, want);
        assert!(
            got.iter().any(|v| v["tick_type"] == 66),
            "delayed bid id 66 appears"
        );
        // Tick-by-tick has no delayed form: 10189.
        c.send(&req_tbt(4, 265598, "Last"));
        assert_eq!(
            c.next_error(),
            (
                4,
                10189,
                "Failed to request tick-by-tick data. No market data permissions for NASDAQ STK"
                    .into()
            )
        );
    }
}

#[test]
fn snapshot_sends_the_opening_then_its_end() {
    let sim = Sim::start(&[]);
    let mut c = Client::ready(&sim.addr, 100, 226, 1);
    c.send(&ClientMsg::ReqMktData {
        req_id: 9,
        contract: for_data(711280073),
        generic_tick_list: String::new(),
        snapshot: true,
        regulatory_snapshot: false,
    });
    let got = collect_l1(&mut c, 9, 10, 1);
    let want = expected(&[
        "--con-id",
        "711280073",
        "--tick-type",
        "mktdata",
        "--count",
        "10",
    ]);
    assert_eq!(got, want);
    assert_eq!(c.recv().unwrap(), ServerMsg::TickSnapshotEnd { req_id: 9 });
}
