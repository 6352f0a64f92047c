//! IB's farm notices end to end: tws-sim sends them, the engine keeps a per-farm table in
//! the status region (and its control `status` reply), and a broken market data farm marks
//! the data as possibly stale until the farm is OK again. This is the wiring (status region,
//! control reply, `top`); the farm rules themselves (kinds, states, which farm marks data
//! stale, a new session reporting afresh) run on the virtual clock in
//! `src/engine/session/tests.rs`, `src/engine/farms.rs` and every seed of `tests/dst.rs`.

mod engine_support;

use std::time::{Duration, Instant};

use engine_support::*;
use ib_stream::ipc::{FarmKind, FarmState, StatusReader, StatusSnapshot, SubState, data_flags};

/// `(name, kind, state)` of every farm in a snapshot, sorted.
fn farms(s: &StatusSnapshot) -> Vec<(String, FarmKind, FarmState)> {
    let mut v: Vec<_> = s
        .farms()
        .iter()
        .map(|f| (f.name().into_owned(), f.kind().unwrap(), f.state().unwrap()))
        .collect();
    v.sort();
    v
}

/// Reads snapshots until `ok` holds (panics with the last one after 20 s).
fn wait_status(
    r: &StatusReader,
    what: &str,
    ok: impl Fn(&StatusSnapshot) -> bool,
) -> Box<StatusSnapshot> {
    let until = Instant::now() + Duration::from_secs(20);
    let mut s = StatusSnapshot::new_boxed();
    loop {
        if r.read(&mut s).is_ok() && ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < until,
            "status never showed {what}: farms {:?}, flags {}",
            farms(&s),
            s.engine.data_flags
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn usfarm(s: &StatusSnapshot) -> Option<FarmState> {
    s.farms()
        .iter()
        .find(|f| f.name() == "usfarm" && f.kind() == Some(FarmKind::MarketData))
        .and_then(|f| f.state())
}

#[test]
fn farm_notices_change_the_farm_table_and_mark_data_possibly_stale() {
    let dir = TempDir::new("farms");
    let sim = Sim::start(&["--rate", "20"]);
    let eng = Engine::start(
        dir.path(),
        sim.port,
        &["IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:bid_ask"],
        &[],
    );
    let _ring = eng.ring();
    // The engine creates the status region just after the ring.
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        match StatusReader::open(&dir.path().join("status")) {
            Ok(r) => break r,
            Err(e) if Instant::now() > until => panic!("status region: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };

    // The welcome notices (2104, 2106, 2158): every farm OK, nothing stale.
    let s = wait_status(&status, "the welcome farms", |s| {
        s.farms().len() == 3
            && s.subscriptions()
                .iter()
                .any(|x| x.state() == Some(SubState::Active))
    });
    assert_eq!(
        farms(&s),
        vec![
            ("secdefnj".into(), FarmKind::SecDef, FarmState::Ok),
            ("usfarm".into(), FarmKind::MarketData, FarmState::Ok),
            ("ushmds".into(), FarmKind::Hmds, FarmState::Ok),
        ]
    );
    assert_eq!(s.engine.data_flags, 0);
    let ok_since = s
        .farms()
        .iter()
        .find(|f| f.name() == "usfarm")
        .unwrap()
        .since_ns;

    // 2103: the market data farm breaks; the data may be stale.
    sim.control(r#"{"cmd":"farm","code":2103}"#);
    let s = wait_status(&status, "usfarm broken", |s| {
        usfarm(s) == Some(FarmState::Broken)
    });
    assert_eq!(
        s.engine.data_flags & data_flags::FARM_BROKEN,
        data_flags::FARM_BROKEN
    );
    assert!(
        s.subscriptions()
            .iter()
            .all(|x| x.flags & data_flags::FARM_BROKEN != 0),
        "every subscription is flagged"
    );
    assert_eq!(s.engine.last_error_code, 2103);
    let broken = s.farms().iter().find(|f| f.name() == "usfarm").unwrap();
    assert_eq!(broken.code, 2103);
    assert!(broken.since_ns > ok_since);
    let mut ctl = eng.control();
    let r = ctl.call(r#"{"id":1,"op":"status"}"#);
    assert_eq!(r["data_possibly_stale"], true, "{r}");
    let f = r["farms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "usfarm")
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(
        (f["kind"].as_str(), f["state"].as_str(), f["code"].as_i64()),
        (Some("market_data"), Some("broken"), Some(2103))
    );

    // 2104: OK again; nothing is flagged any more.
    sim.control(r#"{"cmd":"farm","code":2104}"#);
    let s = wait_status(&status, "usfarm OK", |s| usfarm(s) == Some(FarmState::Ok));
    assert_eq!(s.engine.data_flags, 0);
    assert!(s.subscriptions().iter().all(|x| x.flags == 0));
    let r = ctl.call(r#"{"id":2,"op":"status"}"#);
    assert_eq!(r["data_possibly_stale"], false, "{r}");

    // `top` shows the table.
    let out = std::process::Command::new(ENGINE)
        .arg("--set")
        .arg(format!("IB_STREAM_SHM_DIR={}", dir.path().display()))
        .args(["top", "--once"])
        .output()
        .unwrap();
    let frame = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{frame}");
    assert!(frame.contains("farms (3)"), "{frame}");
    assert!(
        frame
            .lines()
            .any(|l| l.split_whitespace().take(3).collect::<Vec<_>>()
                == ["usfarm", "market_data", "ok"]),
        "{frame}"
    );
}
