//! End-to-end: the engine resolves every contract before its first data request and sends
//! the full contract, as a real gateway requires (a conId alone is 321 "Please enter
//! exchange", which the simulator answers like IB). A recording proxy between the engine and
//! tws-sim keeps the bytes the engine sends, decoded here with the codec.
//!
//! Also: the contract store (private file, written after resolution), a restart that uses
//! it without any lookup, a stale entry refreshed, and a contract IB cannot resolve turned
//! into a rejection record (code 200) while the others stream.

mod engine_support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine_support::*;
use ib_stream::ipc::{Record, RecordKind, SubState};
use ib_stream::tws::{ClientHello, ClientMsg, Contract, FrameReader, ServerAck};

const AAPL: u32 = 265_598;
const MNQ: u32 = 711_280_073;

/// Per connection: the bytes the engine sent, and the bytes it received.
type Recorded = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

/// A TCP proxy to the simulator that records what the engine sends (one connection at a
/// time; each connection's bytes are kept apart).
struct Proxy {
    port: u16,
    sent: Recorded,
}

impl Proxy {
    fn start(sim_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent: Recorded = Arc::default();
        let log = sent.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", sim_port)) else {
                    return;
                };
                let n = {
                    let mut l = log.lock().unwrap();
                    l.push((Vec::new(), Vec::new()));
                    l.len() - 1
                };
                for (mut from, mut to, up) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        true,
                    ),
                    (server, client, false),
                ] {
                    let log = log.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 64 * 1024];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(k) => {
                                    {
                                        let mut l = log.lock().unwrap();
                                        let (u, d) = &mut l[n];
                                        if up { u } else { d }.extend_from_slice(&buf[..k]);
                                    }
                                    if to.write_all(&buf[..k]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Proxy { port, sent }
    }

    /// Every message the engine sent on connection `n` (after the handshake).
    fn messages(&self, n: usize) -> Vec<ClientMsg> {
        let (up, down) = self.sent.lock().unwrap()[n].clone();
        let (_, used) = ClientHello::parse(&up).unwrap().expect("a hello");
        let (ack, _) = ServerAck::parse(&down)
            .unwrap()
            .expect("the server's answer");
        let mut r = FrameReader::new();
        r.feed(&up[used..]);
        let mut out = Vec::new();
        while let Some(f) = r.next_frame(ack.version).unwrap() {
            out.push(ClientMsg::decode(&f, ack.version).expect("a message the codec knows"));
        }
        out
    }

    fn connections(&self) -> usize {
        self.sent.lock().unwrap().len()
    }
}

/// The contract of each data request, in order, with its conId.
fn data_requests(msgs: &[ClientMsg]) -> Vec<(usize, Contract)> {
    msgs.iter()
        .enumerate()
        .filter_map(|(i, m)| match m {
            ClientMsg::ReqMktData { contract, .. } | ClientMsg::ReqTickByTick { contract, .. } => {
                Some((i, contract.clone()))
            }
            _ => None,
        })
        .collect()
}

/// The conIds looked up with reqContractDetails, with their positions.
fn lookups(msgs: &[ClientMsg]) -> Vec<(usize, i32)> {
    msgs.iter()
        .enumerate()
        .filter_map(|(i, m)| match m {
            ClientMsg::ReqContractDetails { contract, .. } => Some((i, contract.con_id)),
            _ => None,
        })
        .collect()
}

fn ticks_of(recs: &[Record], con_id: u32) -> usize {
    count_kind(recs, RecordKind::TbtBidAsk, con_id)
}

fn store_file(storage: &Path) -> std::path::PathBuf {
    storage.join("contracts").join("contracts.json")
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const TRACKED: &str = "IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:bid_ask,711280073:MNQ:bid_ask";

#[test]
fn tracked_contracts_are_resolved_then_requested_with_their_exchange_and_a_restart_reuses_them() {
    // No 15-second rule: the restart's requests are answered at once (engine_retry covers it).
    let sim = Sim::start(&["--rate", "200", "--tbt-same-instrument-secs", "0"]);
    let proxy = Proxy::start(sim.port);
    let dir = TempDir::new("contracts");
    let storage = dir.path().join("storage");
    let mut eng = Engine::start(dir.path(), proxy.port, &[TRACKED], &[]);
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    // The strict simulator streams: nothing was refused for a missing exchange.
    read_until(&mut ring, 30, &mut seen, |s| {
        ticks_of(s, AAPL) >= 10 && ticks_of(s, MNQ) >= 10
    });
    let msgs = proxy.messages(0);
    let reqs = data_requests(&msgs);
    let looked_up = lookups(&msgs);
    assert_eq!(reqs.len(), 2, "{msgs:#?}");
    for (at, c) in &reqs {
        assert!(
            !c.exchange.is_empty(),
            "a data request without exchange: {c:?}"
        );
        assert!(!c.sec_type.is_empty() && !c.currency.is_empty(), "{c:?}");
        // Resolved first: its lookup went before it.
        assert!(
            looked_up.iter().any(|(i, id)| i < at && *id == c.con_id),
            "conId {} requested before it was resolved: {msgs:#?}",
            c.con_id
        );
        match c.con_id as u32 {
            AAPL => {
                assert_eq!(
                    (
                        c.exchange.as_str(),
                        c.primary_exchange.as_str(),
                        c.sec_type.as_str()
                    ),
                    ("SMART", "NASDAQ", "STK")
                );
                assert_eq!(
                    (c.local_symbol.as_str(), c.trading_class.as_str()),
                    ("AAPL", "NMS")
                );
            }
            MNQ => {
                assert_eq!((c.exchange.as_str(), c.sec_type.as_str()), ("CME", "FUT"));
                assert_eq!(c.last_trade_date_or_contract_month, "20261218");
                assert_eq!(
                    (c.multiplier.as_str(), c.local_symbol.as_str()),
                    ("2", "MNQZ6")
                );
                assert_eq!(c.trading_class, "MNQ");
            }
            other => panic!("unexpected conId {other}"),
        }
    }
    // The store holds both, privately.
    let path = store_file(&storage);
    wait_for("the contract store", 10, || path.exists());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
    }
    let store: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let list = store["contracts"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{store}");
    // The engine's status says where the store is, what it holds and when it was written.
    let st = eng.control().call(r#"{"id":1,"op":"status"}"#);
    let cs = &st["contract_store"];
    assert_eq!(cs["path"], path.display().to_string(), "{st}");
    assert_eq!(cs["entries"], 2, "{st}");
    assert!(cs["last_written_ns"].as_i64().unwrap() > 0, "{st}");
    eng.kill();
    // The next engine makes a new ring; a reader must not find the old one first.
    std::fs::remove_file(dir.path().join("ticks.ring")).unwrap();

    // Restart: the stored contracts are used at once; no lookup at all.
    let before = proxy.connections();
    let eng = Engine::start(dir.path(), proxy.port, &[TRACKED], &[]);
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| {
        ticks_of(s, AAPL) >= 10 && ticks_of(s, MNQ) >= 10
    });
    let msgs = proxy.messages(before);
    assert!(
        lookups(&msgs).is_empty(),
        "the restart looked up: {msgs:#?}"
    );
    let reqs = data_requests(&msgs);
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|(_, c)| !c.exchange.is_empty()));
}

#[test]
fn a_stale_stored_contract_is_used_at_once_and_refreshed() {
    let sim = Sim::start(&["--rate", "200"]);
    let proxy = Proxy::start(sim.port);
    let dir = TempDir::new("contracts-stale");
    let storage = dir.path().join("storage");
    // A store written two days ago, by hand as an operator could.
    let two_days_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
        - 2 * 86_400 * 1_000_000_000;
    let path = store_file(&storage);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let stale = serde_json::json!({"version": 1, "contracts": [{
        "con_id": AAPL, "symbol": "AAPL", "sec_type": "STK", "exchange": "SMART",
        "primary_exchange": "NASDAQ", "currency": "USD", "local_symbol": "AAPL",
        "trading_class": "NMS", "resolved_ns": two_days_ago
    }]});
    std::fs::write(&path, stale.to_string()).unwrap();
    let eng = Engine::start(
        dir.path(),
        proxy.port,
        &["IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:bid_ask"],
        &[],
    );
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| ticks_of(s, AAPL) >= 5);
    // Refreshed: the store's entry is now recent.
    wait_for("the refreshed store", 10, || {
        let v: serde_json::Value = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        v["contracts"][0]["resolved_ns"]
            .as_i64()
            .is_some_and(|t| t > two_days_ago + 86_400 * 1_000_000_000)
    });
    let msgs = proxy.messages(0);
    assert_eq!(lookups(&msgs).len(), 1, "one refresh: {msgs:#?}");
}

#[test]
fn a_contract_ib_cannot_resolve_is_rejected_with_a_record_and_the_rest_streams() {
    let sim = Sim::start(&["--rate", "200"]);
    let proxy = Proxy::start(sim.port);
    let dir = TempDir::new("contracts-unknown");
    // A corrupt store must not stop the engine: it is ignored with a warning.
    let storage = dir.path().join("storage");
    std::fs::create_dir_all(storage.join("contracts")).unwrap();
    std::fs::write(store_file(&storage), b"{\"version\":1,\"contracts\":[{").unwrap();
    let eng = Engine::start(
        dir.path(),
        proxy.port,
        &["IB_STREAM_TRACKED_CONTRACTS=999999:NOPE:bid_ask,265598:AAPL:bid_ask"],
        &[],
    );
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| {
        ticks_of(s, AAPL) >= 5
            && s.iter().any(|r| {
                is_kind(r, RecordKind::Subscription)
                    && r.instrument_id == 999_999
                    && r.tick_type == SubState::Rejected as u8
            })
    });
    let rejected = seen
        .iter()
        .find(|r| {
            is_kind(r, RecordKind::Subscription)
                && r.instrument_id == 999_999
                && r.tick_type == SubState::Rejected as u8
        })
        .unwrap();
    assert_eq!(rejected.body[1], 200, "{rejected:?}");
    // It was never requested for data.
    let msgs = proxy.messages(0);
    assert!(
        data_requests(&msgs)
            .iter()
            .all(|(_, c)| c.con_id as u32 == AAPL),
        "{msgs:#?}"
    );
    assert!(
        eng.log().contains("contract store is corrupt"),
        "{}",
        eng.log()
    );
}
