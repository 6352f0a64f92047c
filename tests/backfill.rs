//! `ib-stream backfill` end to end: real tws-sim, engine and recorder processes, an outage
//! (the gateway restarts and stays down 3 s), then the backfill: the stored ticks of the
//! outage's whole seconds equal what the simulator's generator produced then (at IB's
//! one-second resolution), paged so that every page ends inside a second, the simulator
//! counted no pacing violation, and a second run asks and stores nothing.

mod engine_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use engine_support::*;
use ib_stream::ipc::{Record, RecordKind, flags};
use ib_stream::storage::backfill::{FillKey, FillState, FillStates};
use ib_stream::storage::query::{Query, QueryIter};
use tws_sim::generator::{TbtGen, TbtKind, TbtTick};
use tws_sim::universe::Universe;

const AAPL: u32 = 265_598;
const SEED: u64 = 7;
const RATE: i64 = 10;
const SEC: i64 = 1_000_000_000;

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The generator's ticks of `kind` whose historical second is in `[from_s, to_s)`: tick `k`
/// is at `epoch + k / RATE`, floored to the second (tws-sim's historical time index).
fn generated(kind: TbtKind, epoch: i64, from_s: i64, to_s: i64) -> Vec<(i64, TbtTick)> {
    let u = Universe::builtin();
    let inst = u.get(u.by_con_id(AAPL as i32).unwrap());
    let k0 = ((from_s - epoch) * RATE).max(0) as usize;
    let k1 = ((to_s - epoch) * RATE).max(0) as usize;
    TbtGen::new(SEED, inst, kind)
        .enumerate()
        .skip(k0)
        .take(k1 - k0)
        .map(|(k, t)| (epoch + k as i64 / RATE, t))
        .collect()
}

/// The backfilled records of `kind` stored in `[from_s, to_s)`.
fn stored(root: &Path, kind: RecordKind, from_s: i64, to_s: i64) -> Vec<Record> {
    let mut q = Query::new(AAPL, from_s * SEC, to_s * SEC);
    q.kinds = vec![kind];
    let mut it = QueryIter::new(root, &q).unwrap();
    let mut out = Vec::new();
    while let Some(r) = it.next_record().unwrap() {
        out.push(r);
    }
    out
}

/// Runs `ib-stream backfill --once` to its end, with pages of `page` ticks.
fn run_backfill(root: &Path, port: u16, log: &Path, page: u32) {
    let log = std::fs::File::create(log).unwrap();
    let mut child = Command::new(ENGINE)
        .env_clear()
        .args(["--set", &format!("IB_STREAM_PORTS={port}")])
        .args([
            "--set",
            &format!("IB_STREAM_STORAGE_PATH={}", root.display()),
        ])
        .args(["--set", "IB_STREAM_LOG_LEVEL=info"])
        .args([
            "backfill",
            "--once",
            "--scan-secs",
            "1",
            "--client-id",
            "77",
        ])
        .args(["--page", &page.to_string()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "backfill exited with {st}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("backfill did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_outage_is_filled_with_what_the_simulator_produced_without_a_pacing_violation() {
    let dir = TempDir::new("backfill");
    let storage = dir.path().join("storage");
    // Historical tick 0 a little before now: the outage lies well inside generated history.
    let epoch = now_s() - 2;
    let sim = Sim::start(&[
        "--rate",
        &RATE.to_string(),
        "--seed",
        &SEED.to_string(),
        "--hist-epoch",
        &epoch.to_string(),
        "--tbt-same-instrument-secs",
        "0",
    ]);
    let eng = Engine::start(
        dir.path(),
        sim.port,
        &["IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:mid_point;bid_ask;last"],
        &["--tbt-same-instrument-ms", "0", "--backoff-base-ms", "100"],
    );
    let rec_log = std::fs::File::create(dir.path().join("recorder.log")).unwrap();
    let mut recorder = Command::new(ENGINE)
        .env_clear()
        .args([
            "--set",
            &format!("IB_STREAM_SHM_DIR={}", dir.path().display()),
        ])
        .args([
            "--set",
            &format!("IB_STREAM_STORAGE_PATH={}", storage.display()),
        ])
        .args([
            "--set",
            "IB_STREAM_FLUSH_MS=20",
            "--set",
            "IB_STREAM_FSYNC=never",
        ])
        .args(["record", "--ring-wait-secs", "20"])
        .stdout(Stdio::null())
        .stderr(rec_log)
        .spawn()
        .unwrap();

    let mut ring = eng.ring();
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| {
        count_kind(s, RecordKind::TbtMidPoint, AAPL) >= 20
    });
    sim.control(r#"{"cmd":"restart","down_ms":3000}"#);
    let before = seen.len();
    read_until(&mut ring, 40, &mut seen, |s| {
        let after = &s[before..];
        after.iter().any(|r| is_kind(r, RecordKind::Gap))
            && count_kind(after, RecordKind::TbtMidPoint, AAPL) >= 10
    });
    let gap = seen[before..]
        .iter()
        .find(|r| is_kind(r, RecordKind::Gap))
        .copied()
        .unwrap();
    let (from_s, to_s) = (gap.body[2] / SEC + 1, gap.body[3] / SEC);
    assert!(
        to_s - from_s >= 2,
        "an outage of whole seconds: {from_s}..{to_s}"
    );

    // The recorder has the gap and the ticks after it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut q = Query::new(AAPL, 0, i64::MAX);
        q.kinds = vec![RecordKind::Gap];
        let gaps = ib_stream::storage::query::query_all(&storage, &q)
            .map(|(r, _)| r.len())
            .unwrap_or(0);
        if gaps > 0
            && !stored(&storage, RecordKind::TbtMidPoint, to_s + 1, i64::MAX / SEC).is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the recorder never stored the gap"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let t = Instant::now();
    // Pages of 15 at 10 ticks a second: every page ends inside a second (the pager asks
    // that second again from its start), and the requests come fast enough for the pacing
    // rules (5 of a kind in 2 s) to matter; tws-sim enforces them.
    run_backfill(&storage, sim.port, &dir.path().join("backfill.log"), 15);
    let took = t.elapsed();
    eprintln!(
        "{}",
        std::fs::read_to_string(dir.path().join("backfill.log")).unwrap()
    );

    // Every stream of every gap record (the session's, and each subscription's over the same
    // time) is filled; each second is stored once, by the first fill that holds it.
    let states = FillStates::load(&storage).unwrap();
    assert!(states.damaged.is_empty());
    let fills: Vec<(&FillKey, _)> = states.iter().collect();
    assert!(fills.len() >= 3 && fills.len() % 3 == 0, "{fills:?}");
    for (key, f) in &fills {
        assert_eq!(f.state, FillState::Filled, "{key:?}: {f:?}");
        assert!(f.t0 >= from_s * SEC && f.t1 <= to_s * SEC, "{f:?}");
    }
    for kind in [
        RecordKind::TbtMidPoint,
        RecordKind::TbtBidAsk,
        RecordKind::TbtLast,
    ] {
        let n: u64 = fills
            .iter()
            .filter(|(k, _)| k.kind == kind)
            .map(|(_, f)| f.n)
            .sum();
        assert_eq!(n as i64, (to_s - from_s) * RATE, "{kind:?}");
    }
    let mids: Vec<(i64, i64)> = stored(&storage, RecordKind::TbtMidPoint, from_s, to_s)
        .iter()
        .map(|r| {
            assert!(
                r.has_flag(flags::BACKFILL),
                "only backfilled ticks inside: {r:?}"
            );
            (r.ts_event / SEC, r.body[0])
        })
        .collect();
    let want: Vec<(i64, i64)> = generated(TbtKind::MidPoint, epoch, from_s, to_s)
        .into_iter()
        .map(|(t, k)| match k {
            TbtTick::MidPoint { mid } => (t, mid),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(mids.len() as i64, (to_s - from_s) * RATE);
    assert_eq!(mids, want);
    let quotes: Vec<(i64, [i64; 4])> = stored(&storage, RecordKind::TbtBidAsk, from_s, to_s)
        .iter()
        .map(|r| (r.ts_event / SEC, r.body))
        .collect();
    let want: Vec<(i64, [i64; 4])> = generated(TbtKind::BidAsk, epoch, from_s, to_s)
        .into_iter()
        .map(|(t, k)| match k {
            TbtTick::BidAsk {
                bid,
                ask,
                bid_size,
                ask_size,
                ..
            } => (t, [bid, ask, bid_size, ask_size]),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(quotes, want);
    // TRADES is the AllLast stream at IB (and in the simulator).
    let trades: Vec<(i64, i64, i64)> = stored(&storage, RecordKind::TbtLast, from_s, to_s)
        .iter()
        .map(|r| (r.ts_event / SEC, r.body[0], r.body[1]))
        .collect();
    let want: Vec<(i64, i64, i64)> = generated(TbtKind::AllLast, epoch, from_s, to_s)
        .into_iter()
        .map(|(t, k)| match k {
            TbtTick::Trade { price, size, .. } => (t, price, size),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(trades, want);

    let stats = sim.control(r#"{"cmd":"stats"}"#);
    assert_eq!(stats["historical"]["pacing_violations"], 0, "{stats}");
    eprintln!(
        "backfill: outage seconds {from_s}..{to_s} ({} s), {} gap records x 3 kinds, {} requests, {} ticks stored, run took {took:?}",
        to_s - from_s,
        fills.len() / 3,
        stats["historical"]["tick_requests"],
        (to_s - from_s) * RATE * 3
    );
    // At least a page per kind per two seconds of outage.
    let requests = stats["historical"]["tick_requests"].as_u64().unwrap() as i64;
    assert!(requests >= 3 * (to_s - from_s) / 2, "{requests} requests");
    let status = ib_stream::backfill::status::load(&storage).expect("the status file");
    assert_eq!(status.pacing_violations, 0);
    assert!(status.jobs_done >= 3);

    // Again: everything is filled, nothing is asked or stored twice.
    let fills_before = std::fs::read(ib_stream::storage::backfill::fills_path(&storage)).unwrap();
    run_backfill(&storage, sim.port, &dir.path().join("backfill2.log"), 15);
    let fills_after = std::fs::read(ib_stream::storage::backfill::fills_path(&storage)).unwrap();
    assert_eq!(fills_before, fills_after);
    assert_eq!(
        stored(&storage, RecordKind::TbtMidPoint, from_s, to_s).len(),
        mids.len()
    );
    let again = sim.control(r#"{"cmd":"stats"}"#);
    assert_eq!(
        again["historical"]["tick_requests"],
        stats["historical"]["tick_requests"]
    );

    let _ = recorder.kill();
    let _ = recorder.wait();
}
