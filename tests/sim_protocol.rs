//! tws-sim as a gateway: handshake, version negotiation, the startup sequence, duplicate
//! client ids, contract details. Real process on 127.0.0.1, bounded waits.

mod sim_support;

use ib_stream::tws::{ClientMsg, ExecutionFilter, ServerMsg};
use sim_support::*;

/// Text (ib_async's range) and protobuf (ibapi-latest's range).
const RANGES: [(u32, u32); 2] = [(157, 178), (100, 226)];

#[test]
fn negotiates_min_of_client_and_sim_max() {
    let sim = Sim::start(&[]);
    assert_eq!(
        Client::handshake(&sim.addr, 100, 226, "").unwrap().version,
        226
    );
    assert_eq!(
        Client::handshake(&sim.addr, 157, 178, "").unwrap().version,
        178
    );
    assert_eq!(
        Client::handshake(&sim.addr, 100, 157, "").unwrap().version,
        157
    );
    let old = Sim::start(&["--max-version", "176"]);
    let c = Client::handshake(&old.addr, 100, 226, "").unwrap();
    assert_eq!(c.version, 176);
    assert!(
        c.time.ends_with(" UTC") && c.time.len() == 21,
        "time {:?}",
        c.time
    );
    // A client that needs protobuf (213+) gets no answer from an older gateway: it is closed.
    assert!(matches!(
        Client::handshake(&old.addr, 213, 226, ""),
        Err(ReadEnd::Closed)
    ));
}

#[test]
fn welcome_then_startup_sync_answers() {
    let sim = Sim::start(&[]);
    for (n, (min, max)) in RANGES.into_iter().enumerate() {
        let mut c = Client::connect(&sim.addr, min, max, 10 + n as i32);
        assert_eq!(
            c.recv().unwrap(),
            ServerMsg::ManagedAccounts {
                accounts: "DU1234567".into()
            }
        );
        assert_eq!(c.recv().unwrap(), ServerMsg::NextValidId { order_id: 1 });
        for want in [2104, 2106, 2158] {
            match c.recv().unwrap() {
                ServerMsg::Error {
                    req_id: -1, code, ..
                } => assert_eq!(code, want),
                other => panic!("expected farm notice {want}, got {other:?}"),
            }
        }
        c.send(&ClientMsg::ReqPositions);
        assert_eq!(c.recv().unwrap(), ServerMsg::PositionEnd);
        c.send(&ClientMsg::ReqOpenOrders);
        assert_eq!(c.recv().unwrap(), ServerMsg::OpenOrderEnd);
        c.send(&ClientMsg::ReqCompletedOrders { api_only: false });
        assert_eq!(c.recv().unwrap(), ServerMsg::CompletedOrdersEnd);
        c.send(&ClientMsg::ReqAccountUpdates {
            subscribe: true,
            account: "DU1234567".into(),
        });
        assert_eq!(
            c.recv().unwrap(),
            ServerMsg::AccountDownloadEnd {
                account: "DU1234567".into()
            }
        );
        c.send(&ClientMsg::ReqAccountUpdatesMulti {
            req_id: 5,
            account: "DU1234567".into(),
            model_code: String::new(),
            ledger_and_nlv: false,
        });
        assert_eq!(
            c.recv().unwrap(),
            ServerMsg::AccountUpdateMultiEnd { req_id: 5 }
        );
        c.send(&ClientMsg::ReqExecutions {
            req_id: 6,
            filter: ExecutionFilter::default(),
        });
        assert_eq!(c.recv().unwrap(), ServerMsg::ExecDetailsEnd { req_id: 6 });
        c.send(&ClientMsg::ReqIds { num_ids: 1 });
        assert_eq!(c.recv().unwrap(), ServerMsg::NextValidId { order_id: 1 });
        c.send(&ClientMsg::ReqCurrentTime);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        match c.recv().unwrap() {
            ServerMsg::CurrentTime { time } => assert!((time - now).abs() <= 5, "{time} vs {now}"),
            other => panic!("expected currentTime, got {other:?}"),
        }
    }
}

#[test]
fn duplicate_client_id_gets_326_and_is_closed() {
    let sim = Sim::start(&[]);
    let _first = Client::ready(&sim.addr, 100, 226, 7);
    for (min, max) in RANGES {
        let mut second = Client::connect(&sim.addr, min, max, 7);
        match second.recv().unwrap() {
            ServerMsg::Error {
                req_id: -1,
                code: 326,
                ..
            } => {}
            other => panic!("expected 326, got {other:?}"),
        }
        assert!(matches!(second.recv(), Err(ReadEnd::Closed)));
    }
    // Another id is fine.
    let _third = Client::ready(&sim.addr, 100, 226, 8);
}

#[test]
fn contract_details_by_symbol_and_con_id_and_200_for_unknown() {
    let sim = Sim::start(&[]);
    for (n, (min, max)) in RANGES.into_iter().enumerate() {
        let mut c = Client::ready(&sim.addr, min, max, n as i32);
        c.send(&ClientMsg::ReqContractDetails {
            req_id: 11,
            contract: by_symbol("AAPL", "STK", "SMART", "USD"),
        });
        match c.recv().unwrap() {
            ServerMsg::ContractData {
                req_id: 11,
                details,
            } => {
                assert_eq!(details.contract.con_id, 265598);
                assert_eq!(details.contract.primary_exchange, "NASDAQ");
                assert_eq!(details.min_tick, 10_000_000);
            }
            other => panic!("expected contractData, got {other:?}"),
        }
        assert_eq!(c.recv().unwrap(), ServerMsg::ContractDataEnd { req_id: 11 });
        c.send(&ClientMsg::ReqContractDetails {
            req_id: 12,
            contract: by_con_id(711280073),
        });
        match c.recv().unwrap() {
            ServerMsg::ContractData {
                req_id: 12,
                details,
            } => {
                assert_eq!(details.contract.symbol, "MNQ");
                assert_eq!(details.contract.exchange, "CME");
                assert_eq!(details.contract.multiplier, "2");
                assert_eq!(details.contract.local_symbol, "MNQZ6");
            }
            other => panic!("expected contractData, got {other:?}"),
        }
        assert_eq!(c.recv().unwrap(), ServerMsg::ContractDataEnd { req_id: 12 });
        c.send(&ClientMsg::ReqContractDetails {
            req_id: 13,
            contract: by_symbol("NOSUCH", "STK", "SMART", "USD"),
        });
        let (req_id, code, _) = c.next_error();
        assert_eq!((req_id, code), (13, 200));
    }
}

#[test]
fn requests_in_the_same_write_as_start_api_are_served() {
    let sim = Sim::start(&[]);
    for (n, (min, max)) in RANGES.into_iter().enumerate() {
        let mut c = Client::handshake(&sim.addr, min, max, "").unwrap();
        let mut bytes = Vec::new();
        let v = c.version;
        ClientMsg::StartApi {
            client_id: 20 + n as i32,
            optional_capabilities: String::new(),
        }
        .encode(v, &mut bytes)
        .unwrap();
        ClientMsg::ReqPositions.encode(v, &mut bytes).unwrap();
        std::io::Write::write_all(&mut c.stream, &bytes).unwrap();
        assert_eq!(
            c.recv_matching(|m| matches!(m, ServerMsg::PositionEnd)),
            ServerMsg::PositionEnd
        );
    }
}
