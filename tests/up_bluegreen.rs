//! The blue-green switch of docs/OPERATIONS.md, as real processes on tws-sim, while an SSE
//! client streams (and resumes across the switches with `Last-Event-ID`):
//!
//! 1. production (the old version) records into `storage-active` -> `storage-v1`;
//! 2. the storage is copied (checkpoint first) to `storage-v2` and the new version runs beside
//!    production in the migration role, recording production's ring into `storage-v2`;
//! 3. switch: production stops, the migration reads its ring to the end and stops, the symlink
//!    is replaced atomically (`ln -sfn` + `mv -T`), the new version starts on production's
//!    ports; the old version follows it into `storage-v1` (migration role) for a rollback;
//! 4. rollback: the same the other way round.
//!
//! Checked: no record is stored twice in either root; every record of the old run is in the
//! new root after the switch, and every record of the new run in the old root after the
//! rollback; `storage validate` passes on both (every sequence stored or inside a recorded
//! gap); the client never got a tick twice and was never told its resume point was lost.

mod modes_support;
#[allow(dead_code)]
mod soak_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ib_stream::storage::query::{Query, QueryIter};
use modes_support::*;
use soak_support::clients::{Seen, spawn_sse_resumer};

/// Every stored market-data record of MNQ as (epoch, seq), and how many records (to find
/// doubles).
fn stored(root: &Path) -> (BTreeSet<(u64, u64)>, usize) {
    let mut it = QueryIter::new(root, &Query::new(MNQ, 0, i64::MAX)).unwrap();
    let (mut set, mut n) = (BTreeSet::new(), 0);
    while let Some(r) = it.next_record().unwrap() {
        n += 1;
        set.insert((it.cursor().unwrap().epoch, r.seq));
    }
    (set, n)
}

fn epochs(s: &BTreeSet<(u64, u64)>) -> BTreeSet<u64> {
    s.iter().map(|(e, _)| *e).collect()
}

fn of_epoch(s: &BTreeSet<(u64, u64)>, e: u64) -> BTreeSet<(u64, u64)> {
    s.iter().filter(|(x, _)| *x == e).copied().collect()
}

/// Points `active` at `target` atomically (the commands of docs/OPERATIONS.md).
fn switch_to(dir: &Path, target: &str) {
    let sh = format!(
        "cd '{}' && ln -sfn {target} storage-active.new && mv -T storage-active.new storage-active",
        dir.display()
    );
    assert!(
        Command::new("sh")
            .arg("-c")
            .arg(&sh)
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(
        std::fs::read_link(dir.join("storage-active")).unwrap(),
        Path::new(target)
    );
}

/// Waits until the recorder of `root` has read its ring to the end (the ring's writer stopped).
fn drained(root: &Path) {
    wait_until(
        "the follower to read the ring to its end",
        Duration::from_secs(60),
        || {
            let (a, b) = (recorder_last_seq(root), ring_head(root));
            a.is_some() && a == b
        },
    );
    // Its last flush (every 100 ms).
    std::thread::sleep(Duration::from_millis(500));
}

fn validate(root: &Path) {
    let o = Command::new(EXE)
        .args(["storage", "validate", "--storage"])
        .arg(root)
        .env_clear()
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn switch_and_roll_back_while_a_client_streams_losing_and_doubling_nothing() {
    let d = TestDir::new("bluegreen");
    let dir = d.0.clone();
    let (v1, v2) = (dir.join("storage-v1"), dir.join("storage-v2"));
    std::fs::create_dir_all(&v1).unwrap();
    switch_to(&dir, "storage-v1");
    let active = dir.join("storage-active");
    let prod = Env::new(&dir, "production", &active);

    // 1. The old version in production.
    let old_prod = Up::recording(&prod);
    old_prod.wait_for("up: production ready in", READY_WITHIN);
    wait_until("production to record", Duration::from_secs(60), || {
        recorder_last_seq(&active).is_some_and(|s| s > 20)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let client = spawn_sse_resumer(
        "sse",
        prod.serve_port,
        MNQ,
        &["bid_ask", "last"],
        7,
        Arc::clone(&stop),
    );

    // 2. The new version beside it, following production into its own copy.
    copy_storage(&active, &v2);
    let next = Env::new(&dir, "development", &v2).upstream("migration", &prod);
    let mut next_up = Up::start(next.command(&["up", "--stop-timeout-secs", "15"], &[]));
    next_up.wait_for("up: development ready in", READY_WITHIN);
    std::thread::sleep(Duration::from_secs(3));

    // 3. Switch.
    let mut old_prod = old_prod;
    old_prod.stop();
    drained(&v2);
    next_up.stop();
    let (s1, n1) = stored(&v1);
    let (s2, n2) = stored(&v2);
    assert_eq!((s1.len(), s2.len()), (n1, n2), "a record stored twice");
    assert!(
        s1.is_subset(&s2),
        "lost in the switch: {:?}",
        s1.difference(&s2).take(10).collect::<Vec<_>>()
    );
    let e1: BTreeSet<u64> = epochs(&s1);
    switch_to(&dir, "storage-v2");
    let new_prod = Up::recording(&prod);
    new_prod.wait_for("up: production ready in", READY_WITHIN);
    // The old version stands by, following the new production into its own root.
    let standby = Env::new(&dir, "staging", &v1).upstream("migration", &prod);
    let mut standby_up = Up::start(standby.command(&["up", "--stop-timeout-secs", "15"], &[]));
    standby_up.wait_for("up: staging ready in", READY_WITHIN);
    std::thread::sleep(Duration::from_secs(4));

    // 4. Roll back.
    let mut new_prod = new_prod;
    new_prod.stop();
    drained(&v1);
    standby_up.stop();
    let (s1, n1) = stored(&v1);
    let (s2, n2) = stored(&v2);
    assert_eq!((s1.len(), s2.len()), (n1, n2), "a record stored twice");
    let e2: Vec<u64> = epochs(&s2).difference(&e1).copied().collect();
    assert_eq!(e2.len(), 1, "the new version's run: {e2:?}");
    let run2 = of_epoch(&s2, e2[0]);
    assert!(run2.len() > 10, "{}", run2.len());
    assert!(
        run2.is_subset(&of_epoch(&s1, e2[0])),
        "lost in the rollback: {:?}",
        run2.difference(&s1).take(10).collect::<Vec<_>>()
    );
    switch_to(&dir, "storage-v1");
    let mut back = Up::recording(&prod);
    back.wait_for("up: production ready in", READY_WITHIN);
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let log = client.join().unwrap();
    back.stop();

    // Storage: nothing doubled, every sequence stored or in a recorded gap.
    let (s1, n1) = stored(&v1);
    assert_eq!(s1.len(), n1, "a record stored twice");
    assert_eq!(epochs(&s1).len(), 3, "three runs: old, new, old again");
    validate(&v1);
    validate(&v2);

    // The client: ticks of all three runs, none twice, no resume point lost.
    let mut runs = 1;
    let mut last: Option<u64> = None;
    let mut ticks = 0;
    for s in &log.seen {
        match s {
            Seen::Tick { seq, .. } => {
                if let Some(l) = last {
                    assert!(*seq > l, "tick {seq} after {l}: doubled or out of order");
                }
                last = Some(*seq);
                ticks += 1;
            }
            Seen::EpochMark(why) => {
                assert_eq!(why, "writer_restart", "{:?}", log.seen);
                runs += 1;
                last = None;
            }
            _ => {}
        }
    }
    eprintln!(
        "bluegreen: v1 {} records in {} runs, v2 {} in {} runs; client {ticks} ticks over {runs} runs, resumed {} times",
        s1.len(),
        epochs(&s1).len(),
        stored(&v2).0.len(),
        epochs(&stored(&v2).0).len(),
        log.resumed
    );
    assert!(ticks > 50, "{ticks} ticks");
    assert!(runs >= 3, "the client followed {runs} runs: {:?}", log.seen);
    assert!(log.resumed > 0);
}
