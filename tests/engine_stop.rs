//! A clean stop cancels every subscription at IB; a killed engine cannot. Real processes:
//! tws-sim counts the cancels its account received (`stats`), which outlive the connection.

mod engine_support;

use std::time::{Duration, Instant};

use engine_support::*;
use ib_stream::ipc::{Record, RecordKind, SubState};

/// Tick-by-tick from the configuration: AAPL bid_ask and last, MSFT bid_ask.
const TRACKED: &str = "IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:bid_ask;last,272093:MSFT:bid_ask";
const TBT: u64 = 3;
/// L1 lines over the control socket, held by a client that stays connected.
const MKT: [u32; 2] = [265_598, 272_093];

fn active(s: &[Record]) -> usize {
    s.iter()
        .filter(|r| is_kind(r, RecordKind::Subscription) && r.tick_type == SubState::Active as u8)
        .count()
}

/// Starts an engine and waits until all its subscriptions are active at the simulator.
fn engine_with_subscriptions(dir: &TempDir, sim: &Sim) -> (Engine, Ctl) {
    let eng = Engine::start(
        dir.path(),
        sim.port,
        &[TRACKED],
        &["--tbt-same-instrument-ms", "0"],
    );
    let mut ctl = eng.control();
    for (i, con) in MKT.iter().enumerate() {
        let r = ctl.call(&format!(
            r#"{{"id":{i},"op":"subscribe","client":"stop-test","con_id":{con},"kind":"mktdata"}}"#
        ));
        assert_eq!(r["ok"], true, "{r}");
    }
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    let want = TBT as usize + MKT.len();
    read_until(&mut ring, 30, &mut seen, |s| active(s) >= want);
    (eng, ctl)
}

/// Waits until the simulator has no client (its session ended and every request it read was
/// handled), then returns the account's cancel counts.
fn cancels_after_disconnect(sim: &Sim) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let a = sim.control(r#"{"cmd":"stats"}"#);
        if a["clients"].as_array().is_some_and(Vec::is_empty) {
            return a["cancels"].clone();
        }
        assert!(
            Instant::now() < until,
            "the engine's session did not end: {a}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(eng: &mut Engine) -> std::process::ExitStatus {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = eng.child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < until, "the engine did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn counts(tbt: u64, mkt: u64) -> serde_json::Value {
    serde_json::json!({"tick_by_tick": tbt, "mkt_data": mkt, "unknown": 0})
}

#[test]
fn sigterm_and_control_shutdown_cancel_every_subscription_and_sigkill_cannot() {
    let sim = Sim::start(&["--rate", "50", "--tbt-same-instrument-secs", "0"]);
    let mkt = MKT.len() as u64;

    // SIGKILL: the engine gets no chance; IB sees the socket close and no cancel.
    let dir = TempDir::new("stop-kill");
    let (mut eng, _ctl) = engine_with_subscriptions(&dir, &sim);
    eng.kill();
    assert_eq!(cancels_after_disconnect(&sim), counts(0, 0));
    drop(eng);

    // SIGTERM: one cancel per subscription, of the right kind, none for an unknown id.
    let dir = TempDir::new("stop-term");
    let (mut eng, _ctl) = engine_with_subscriptions(&dir, &sim);
    let pid = rustix::process::Pid::from_raw(eng.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let st = wait_exit(&mut eng);
    assert!(st.success(), "engine exit after SIGTERM: {st:?}");
    assert_eq!(cancels_after_disconnect(&sim), counts(TBT, mkt));
    let log = eng.log();
    assert!(
        log.contains("cancelled the subscriptions at IB"),
        "engine log: {log}"
    );
    drop(eng);

    // The control socket's `shutdown` does the same.
    let dir = TempDir::new("stop-ctl");
    let (mut eng, mut ctl) = engine_with_subscriptions(&dir, &sim);
    let r = ctl.call(r#"{"id":"bye","op":"shutdown"}"#);
    assert_eq!(
        (r["ok"].clone(), r["id"].clone()),
        (true.into(), "bye".into()),
        "{r}"
    );
    let st = wait_exit(&mut eng);
    assert!(st.success(), "engine exit after shutdown: {st:?}");
    assert_eq!(cancels_after_disconnect(&sim), counts(2 * TBT, 2 * mkt));
}
