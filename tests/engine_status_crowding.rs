//! End-to-end: a flood of subscriptions to contracts IB does not know (each rejected with
//! 200) used to fill all 256 entries of the engine's status region with `Rejected`, so a real
//! subscription after them streamed but was missing from `status`, `top` and the web
//! server's `/background/status`. Live subscriptions must be listed, first.

mod engine_support;

use std::time::{Duration, Instant};

use engine_support::*;
use ib_stream::ipc::{RecordKind, StatusReader, StatusSnapshot, SubState};

const AAPL: u32 = 265_598;
const UNKNOWN: u32 = 900_000;

#[test]
fn a_real_subscription_is_listed_after_300_rejected_ones() {
    let dir = TempDir::new("crowding");
    let sim = Sim::start(&["--rate", "20"]);
    let engine = Engine::start(dir.path(), sim.port, &[], &[]);
    let mut ctl = engine.control();

    // 300 unknown contracts, 50 at a time (within the engine's 100 market-data lines and
    // the control socket's request rate); each batch is rejected before the next.
    let mut id = 0;
    for batch in 0..6u32 {
        for i in 0..50u32 {
            id += 1;
            let con = UNKNOWN + batch * 50 + i;
            let r = ctl.call(&format!(
                r#"{{"id":{id},"op":"subscribe","client":"flood","con_id":{con},"kind":"mktdata"}}"#
            ));
            assert_eq!(r["ok"], true, "{r}");
        }
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            id += 1;
            let list = ctl.call(&format!(r#"{{"id":{id},"op":"list"}}"#));
            let left = list["subscriptions"].as_array().map_or(0, Vec::len);
            if left == 0 {
                break;
            }
            assert!(Instant::now() < until, "batch {batch} not rejected: {list}");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    // Then one real subscription: it streams, and the status region lists it, first.
    id += 1;
    let r = ctl.call(&format!(
        r#"{{"id":{id},"op":"subscribe","client":"real","con_id":{AAPL},"kind":"mktdata"}}"#
    ));
    assert_eq!(r["ok"], true, "{r}");
    let status = StatusReader::open(&dir.path().join("status")).unwrap();
    let mut snap = StatusSnapshot::new_boxed();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if status.read(&mut snap).is_ok()
            && let Some(e) = snap.find_subscription(AAPL, RecordKind::L1Price)
            && e.state() == Some(SubState::Active)
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "the real subscription is not listed as active; {} entries, {} rejected",
            snap.subscriptions().len(),
            snap.subscriptions()
                .iter()
                .filter(|s| s.state() == Some(SubState::Rejected))
                .count()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let subs = snap.subscriptions();
    assert_eq!(subs[0].con_id, AAPL, "live subscriptions are listed first");
    let rejected = subs
        .iter()
        .filter(|s| s.state() == Some(SubState::Rejected))
        .count();
    assert!(
        rejected >= 200,
        "precondition: the flood's rejections are listed too ({rejected})"
    );
    assert!(subs.len() <= ib_stream::ipc::MAX_SUBSCRIPTIONS);
}
