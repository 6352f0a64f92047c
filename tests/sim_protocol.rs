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
        Client::handshake(&sim.addr, 100, 226, "", 0)
            .unwrap()
            .version,
        226
    );
    assert_eq!(
        Client::handshake(&sim.addr, 157, 178, "", 0)
            .unwrap()
            .version,
        178
    );
    assert_eq!(
        Client::handshake(&sim.addr, 100, 157, "", 0)
            .unwrap()
            .version,
        157
    );
    let old = Sim::start(&["--max-version", "176"]);
    let c = Client::handshake(&old.addr, 100, 226, "", 0).unwrap();
    assert_eq!(c.version, 176);
    assert!(
        c.time.ends_with(" UTC") && c.time.len() == 21,
        "time {:?}",
        c.time
    );
    // A client that needs protobuf (213+) gets no answer from an older gateway: it is closed.
    assert!(matches!(
        Client::handshake(&old.addr, 213, 226, "", 0),
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
        let mut c = Client::handshake(&sim.addr, min, max, "", 20 + n as i32).unwrap();
        let mut bytes = std::mem::take(&mut c.start);
        ClientMsg::ReqPositions
            .encode(c.version, &mut bytes)
            .unwrap();
        std::io::Write::write_all(&mut c.stream, &bytes).unwrap();
        assert_eq!(
            c.recv_matching(|m| matches!(m, ServerMsg::PositionEnd)),
            ServerMsg::PositionEnd
        );
    }
}

#[test]
fn a_universe_file_replaces_the_built_in_one() {
    let dump = std::process::Command::new(SIM)
        .arg("--dump-universe")
        .output()
        .unwrap();
    assert!(dump.status.success());
    let mut specs: Vec<serde_json::Value> = serde_json::from_slice(&dump.stdout).unwrap();
    assert!(specs.iter().any(|s| s["con_id"] == 711280073));
    // Keep one instrument under a new conId and symbol.
    let mut one = specs.swap_remove(0);
    one["con_id"] = 424242.into();
    one["symbol"] = "ZZZ".into();
    one["local_symbol"] = "ZZZZ6".into();
    let dir = std::env::temp_dir().join(format!("tws-sim-universe-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("u.json");
    std::fs::write(&path, serde_json::to_string(&vec![one]).unwrap()).unwrap();
    let sim = Sim::start(&["--universe", path.to_str().unwrap()]);
    let mut c = Client::ready(&sim.addr, 100, 226, 1);
    c.send(&ClientMsg::ReqContractDetails {
        req_id: 1,
        contract: by_con_id(424242),
    });
    match c.recv().unwrap() {
        ServerMsg::ContractData { details, .. } => assert_eq!(details.contract.symbol, "ZZZ"),
        other => panic!("expected contractData, got {other:?}"),
    }
    assert_eq!(c.recv().unwrap(), ServerMsg::ContractDataEnd { req_id: 1 });
    c.send(&ClientMsg::ReqContractDetails {
        req_id: 2,
        contract: by_con_id(711280073),
    });
    assert_eq!(c.next_error().1, 200);
    // A broken file is refused at start with a clear message.
    std::fs::write(&path, "[{\"con_id\": 1}]").unwrap();
    let out = std::process::Command::new(SIM)
        .args(["--port", "0", "--universe", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("universe file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn garbage_instead_of_a_handshake_is_closed_and_the_sim_goes_on() {
    use std::io::{Read, Write};
    let sim = Sim::start(&[]);
    let mut s = std::net::TcpStream::connect(&sim.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    // Closed without a byte of answer.
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    // A length beyond the protocol's maximum in the hello is refused too.
    let mut s = std::net::TcpStream::connect(&sim.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"API\0\xff\xff\xff\xffv100..226").unwrap();
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    // Others are still served.
    assert_eq!(
        Client::handshake(&sim.addr, 100, 226, "", 0)
            .unwrap()
            .version,
        226
    );
}

/// A real gateway refuses a data request whose contract is a conId alone (321 "Please enter
/// exchange") and one it cannot resolve (200), in both wire forms; the same request with
/// the exchange streams.
#[test]
fn data_requests_need_the_exchange_and_a_contract_ib_knows() {
    let sim = Sim::start(&[]);
    for (n, (min, max)) in RANGES.into_iter().enumerate() {
        let mut c = Client::ready(&sim.addr, min, max, 40 + n as i32);
        c.send(&ClientMsg::ReqMktData {
            req_id: 1,
            contract: by_con_id(265598),
            generic_tick_list: String::new(),
            snapshot: false,
            regulatory_snapshot: false,
        });
        let (req_id, code, msg) = c.next_error();
        assert_eq!((req_id, code), (1, 321), "{msg}");
        assert!(msg.contains("Please enter exchange"), "{msg}");
        c.send(&ClientMsg::ReqTickByTick {
            req_id: 2,
            contract: by_con_id(711280073),
            tick_type: "BidAsk".into(),
            number_of_ticks: 0,
            ignore_size: false,
        });
        let (req_id, code, msg) = c.next_error();
        assert_eq!((req_id, code), (2, 321), "{msg}");
        // Unknown conId, and a future asked on SMART: no security definition.
        let mut unknown = for_data(999_999);
        unknown.exchange = "SMART".into();
        let mut mnq_smart = for_data(711280073);
        mnq_smart.exchange = "SMART".into();
        for (req_id, contract) in [(3, unknown), (4, mnq_smart)] {
            c.send(&ClientMsg::ReqTickByTick {
                req_id,
                contract,
                tick_type: "Last".into(),
                number_of_ticks: 0,
                ignore_size: false,
            });
            let (id, code, msg) = c.next_error();
            assert_eq!((id, code), (req_id, 200), "{msg}");
        }
        // With its exchange the same conId streams (a kind per pass: the 15-second rule).
        c.send(&req_tbt(5, 711280073, ["BidAsk", "MidPoint"][n]));
        c.recv_matching(|m| matches!(m, ServerMsg::TickByTick { req_id: 5, .. }));
    }
}
