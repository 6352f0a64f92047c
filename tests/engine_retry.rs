//! End-to-end: an engine killed and restarted within IB's same-instrument window asks for
//! its tick-by-tick stream again, is refused with 10190 (the simulator keeps the rule like
//! IB), and gets its ticks again after the window, with every step in the ring: requested,
//! refused and retrying (next attempt in `ts_event`), requested again, active.
//!
//! The window is 3 s here instead of IB's 15 (the simulator's `--tbt-same-instrument-secs`
//! and the engine's `--tbt-same-instrument-ms`), so the test stays short.
//!
//! This is the wiring (real processes, the ring, the control socket, the status region).
//! The rules themselves run on the virtual clock: the retry's timing and backoff in
//! `src/engine/subs/tests.rs` and `src/engine/session/tests.rs` (the 15-second rule, a
//! refusal at IB's slot cap retried a second apart until a slot is free), and every seed of
//! `tests/dst.rs` (10190 at the account's caps, injected refusals).

mod engine_support;

use std::time::{Duration, Instant};

use engine_support::*;
use ib_stream::ipc::{
    Record, RecordKind, RingReader, StatusReader, StatusSnapshot, SubState, UNDEF_I64,
};

const AAPL: u32 = 265_598;
const WINDOW_NS: i64 = 3_000_000_000;
/// Slack for converting the engine's monotonic clock to Unix time twice.
const CLOCK_SLACK_NS: i64 = 5_000_000;
/// The engine keeps IB's window plus a margin for arrival jitter.
const MARGIN_NS: i64 = ib_stream::engine::session::TBT_WINDOW_MARGIN_NS as i64;

fn sub_records(recs: &[Record]) -> Vec<Record> {
    recs.iter()
        .filter(|r| {
            is_kind(r, RecordKind::Subscription)
                && r.instrument_id == AAPL
                && r.body[0] == RecordKind::TbtBidAsk as i64
        })
        .copied()
        .collect()
}

fn engine(dir: &TempDir, port: u16) -> Engine {
    Engine::start(
        dir.path(),
        port,
        &["IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:bid_ask"],
        &["--tbt-same-instrument-ms", "3000"],
    )
}

/// The ring of the engine answering on the control socket (not a killed predecessor's).
fn ring_of(eng: &Engine, not_epoch: u64) -> RingReader {
    let _ctl = eng.control();
    let ring = eng.ring();
    assert_ne!(ring.info().epoch, not_epoch, "the new engine's ring");
    ring
}

#[test]
fn an_engine_restarted_within_the_window_is_refused_then_retries_and_gets_its_ticks() {
    let dir = TempDir::new("retry");
    let sim = Sim::start(&["--rate", "100", "--tbt-same-instrument-secs", "3"]);

    // The first engine: requested, active, ticks. Killed at its first tick.
    let mut first = engine(&dir, sim.port);
    let mut ring = ring_of(&first, 0);
    let first_epoch = ring.info().epoch;
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| {
        count_kind(s, RecordKind::TbtBidAsk, AAPL) >= 1
    });
    let first_request = sub_records(&seen)
        .into_iter()
        .find(|r| r.tick_type == SubState::Requested as u8)
        .expect("the first engine's request")
        .ts_recv;
    first.kill();

    // The second engine asks within the window: 10190, and a retry one window after its
    // own request.
    let second = engine(&dir, sim.port);
    let mut ring = ring_of(&second, first_epoch);
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| {
        sub_records(s).iter().any(|r| r.body[1] == 10190)
    });
    let refused = *sub_records(&seen).last().unwrap();
    let requested = sub_records(&seen)
        .into_iter()
        .find(|r| r.tick_type == SubState::Requested as u8)
        .unwrap();
    assert!(
        requested.ts_recv < first_request + WINDOW_NS,
        "precondition: the restarted engine asked within the window ({} ms after the first)",
        (requested.ts_recv - first_request) / 1_000_000
    );
    assert_eq!(refused.tick_type, SubState::Queued as u8, "{refused:?}");
    assert_eq!(refused.body[2], 0, "no request out while retrying");
    let next_attempt = refused.ts_event;
    assert_ne!(
        next_attempt, UNDEF_I64,
        "the record says when it is tried again"
    );
    // The record of the request is written just after the send.
    let wait = next_attempt - requested.ts_recv;
    assert!(
        (WINDOW_NS - 200_000_000..=WINDOW_NS + MARGIN_NS + CLOCK_SLACK_NS).contains(&wait),
        "next attempt {} ms after the request",
        wait / 1_000_000
    );

    // Meanwhile the control socket and the status region say so too.
    let mut ctl = second.control();
    let list = ctl.call(r#"{"id":1,"op":"list"}"#);
    let s = &list["subscriptions"][0];
    assert_eq!(s["state"], "retrying", "{list}");
    assert_eq!(s["ib_code"], 10190, "{list}");
    assert_eq!(s["refusals"], 1, "{list}");
    let listed = s["next_attempt_ns"].as_i64().unwrap();
    assert!((listed - next_attempt).abs() <= CLOCK_SLACK_NS, "{list}");
    let status = StatusReader::open(&dir.path().join("status")).unwrap();
    let mut snap = StatusSnapshot::new_boxed();
    let until = Instant::now() + Duration::from_secs(5);
    let entry = loop {
        if status.read(&mut snap).is_ok()
            && let Some(e) = snap.subscriptions().iter().find(|e| e.con_id == AAPL)
            && e.ib_error_code == 10190
        {
            break *e;
        }
        assert!(Instant::now() < until, "status never showed the refusal");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(entry.state(), Some(SubState::Queued));
    assert_eq!(entry.req_id, 0);

    // After the window: asked again, active, ticks.
    let before = seen.len();
    read_until(&mut ring, 30, &mut seen, |s| {
        count_kind(&s[before..], RecordKind::TbtBidAsk, AAPL) >= 20
    });
    let subs = sub_records(&seen);
    let states: Vec<(u8, i64)> = subs.iter().map(|r| (r.tick_type, r.body[1])).collect();
    assert_eq!(
        states,
        vec![
            (SubState::Queued as u8, 0),
            (SubState::Requested as u8, 0),
            (SubState::Queued as u8, 10190),
            (SubState::Requested as u8, 10190),
            (SubState::Active as u8, 0),
        ],
        "{subs:#?}"
    );
    let retried = subs[3];
    assert_ne!(retried.body[2], requested.body[2], "a fresh request id");
    assert!(
        retried.ts_recv >= next_attempt - CLOCK_SLACK_NS,
        "retried {} ms before its time",
        (next_attempt - retried.ts_recv) / 1_000_000
    );
    // Every tick of the new engine came after the retried request (the first one is
    // published just before the state record it causes).
    let retried_at = seen
        .iter()
        .position(|r| r.seq == retried.seq)
        .expect("the retried request's record");
    assert_eq!(
        count_kind(&seen[..retried_at], RecordKind::TbtBidAsk, AAPL),
        0,
        "no ticks while refused"
    );
    let log = second.log();
    assert!(log.contains("retrying"), "{log}");
}
