//! The client-id registry against the real `tws-sim` (which refuses a client id in use with
//! 326, as IB does): processes of one environment get different ids from the registry, an
//! id another program holds is probed past, a used-up range is a clear error, and the id of
//! a killed engine is reclaimed.

mod engine_support;
mod sim_support;

use std::time::{Duration, Instant};

use engine_support::{Engine, TempDir, is_kind, read_until};
use ib_stream::clientid::{ClientIds, IdRanges, IdSettings, Purpose};
use ib_stream::config::{Environment, Settings};
use ib_stream::ipc::{ConnState, Record, RecordKind};
use ib_stream::tws::ServerMsg;
use sim_support::{Client, ReadEnd};

/// What a connection with `id` got from the simulated gateway: ready, or IB's 326.
fn try_connect(addr: &str, id: i32) -> Result<Client, i32> {
    let mut c = Client::connect(addr, 100, 226, id);
    match c.recv() {
        Ok(ServerMsg::Error { code, .. }) => {
            assert!(
                matches!(c.recv(), Err(ReadEnd::Closed)),
                "closed after {code}"
            );
            Err(code)
        }
        Ok(_) => {
            for _ in 0..4 {
                c.recv().expect("welcome message");
            }
            Ok(c)
        }
        Err(e) => panic!("connect with client id {id}: {e:?}"),
    }
}

/// Connects as `holder` with ids from the registry, probing past 326 as the engine does.
fn connect_with_registry(ids: &ClientIds, addr: &str, holder: &str) -> (i32, Client, Vec<i32>) {
    let mut id = ids.acquire(Purpose::Tools, holder).unwrap();
    let mut refused = Vec::new();
    for _ in 0..8 {
        match try_connect(addr, id) {
            Ok(c) => return (id, c, refused),
            Err(326) => {
                refused.push(id);
                id = ids.refused(Purpose::Tools, holder, id).unwrap();
            }
            Err(code) => panic!("client id {id}: IB error {code}"),
        }
    }
    panic!("no id after 8 tries");
}

#[test]
fn two_tools_of_one_environment_get_different_ids_and_probe_past_a_foreign_one() {
    let sim = sim_support::Sim::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let base = IdRanges::defaults(Environment::Staging);
    let ranges = IdRanges::parse_over(&base, "tools=60-63").unwrap();
    let ids = ClientIds::new(dir.path(), "staging", ranges.clone());
    // Another program (not in our registry) holds 60.
    let _foreign = try_connect(&sim.addr, 60).expect("60 free at first");
    let (a, _ca, refused_a) = connect_with_registry(&ids, &sim.addr, "tool-a");
    assert_eq!((a, refused_a), (61, vec![60]), "60 refused (326), 61 next");
    let (b, _cb, refused_b) = connect_with_registry(&ids, &sim.addr, "tool-b");
    assert_eq!(
        b, 62,
        "61 is tool-a's and 60 was refused lately: no second 326"
    );
    assert!(refused_b.is_empty());
    // Both sessions are up at once, and the registry shows both with the refusal.
    let mut s = Settings::defaults(Environment::Staging);
    s.client_id_registry = true;
    s.client_id_registry_dir = Some(dir.path().to_path_buf());
    s.client_id_ranges = ranges;
    let v = ib_stream::clientid::view(&IdSettings::of(&s), None);
    let held: Vec<(i64, String)> = v["in_use"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["id"].as_i64().unwrap(),
                l["holder"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(held, vec![(61, "tool-a".into()), (62, "tool-b".into())]);
    assert_eq!(v["refused"][0]["id"], 60);
    assert!(v["in_use"][0]["alive"].as_bool().unwrap());
    // Given back, 61 is the first free again.
    ids.release(61).unwrap();
    assert_eq!(ids.acquire(Purpose::Tools, "tool-c").unwrap(), 61);
}

fn connected_as(s: &[Record], id: i64) -> bool {
    s.iter().any(|r| {
        is_kind(r, RecordKind::Connection)
            && r.tick_type == ConnState::Connected as u8
            && r.body[1] == id
    })
}

/// Waits (bounded) for a process to exit; its exit status.
fn exited(e: &mut Engine) -> std::process::ExitStatus {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = e.child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < until, "still running: {}", e.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Engines of one environment share the registry (IB_STREAM_CLIENT_ID_REGISTRY_DIR), so each
/// gets its own streaming id without meeting 326; one with no id left says so and stops; a
/// killed engine's id goes to the next one.
#[test]
fn engines_take_streaming_ids_from_the_registry() {
    let shared = TempDir::new("cid-registry");
    let sim = engine_support::Sim::start(&["--tbt-same-instrument-secs", "0"]);
    let reg = format!(
        "IB_STREAM_CLIENT_ID_REGISTRY_DIR={}",
        shared.path().display()
    );
    let sets = [
        "IB_STREAM_ENV=development",
        "IB_STREAM_CLIENT_ID_REGISTRY=on",
        reg.as_str(),
        "IB_STREAM_CLIENT_ID_RANGES=streaming=70-72",
    ];
    // A program outside the registry holds 70: the first engine meets 326 and moves on.
    let addr = format!("127.0.0.1:{}", sim.port);
    let _foreign = try_connect(&addr, 70).expect("70 free at first");
    let (d1, d2, d3, d4) = (
        TempDir::new("cid-e1"),
        TempDir::new("cid-e2"),
        TempDir::new("cid-e3"),
        TempDir::new("cid-e4"),
    );
    let mut e1 = Engine::start(d1.path(), sim.port, &sets, &[]);
    let (mut r1, mut s1) = (e1.ring(), Vec::new());
    read_until(&mut r1, 30, &mut s1, |s| connected_as(s, 71));
    assert!(e1.log().contains("326"), "{}", e1.log());
    let e2 = Engine::start(d2.path(), sim.port, &sets, &[]);
    let (mut r2, mut s2) = (e2.ring(), Vec::new());
    read_until(&mut r2, 30, &mut s2, |s| connected_as(s, 72));
    assert!(
        !e2.log().contains("(326)"),
        "the registry knew: {}",
        e2.log()
    );
    // 70 refused lately, 71 and 72 held: the third has none and says why.
    let mut e3 = Engine::start(d3.path(), sim.port, &sets, &[]);
    assert!(!exited(&mut e3).success());
    let log = e3.log();
    assert!(
        log.contains("no free streaming client id in 70-72")
            && log.contains("71 held by engine")
            && log.contains("70 refused by IB (326) lately"),
        "{log}"
    );
    // The first engine dies without giving its id back: the next one reclaims it.
    e1.kill();
    let e4 = Engine::start(d4.path(), sim.port, &sets, &[]);
    let (mut r4, mut s4) = (e4.ring(), Vec::new());
    read_until(&mut r4, 30, &mut s4, |s| connected_as(s, 71));
    assert!(e4.log().contains("reclaimed"), "{}", e4.log());
}
