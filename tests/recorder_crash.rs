//! kill -9 the recorder at random moments against a live ring: afterwards history validates,
//! no sequence is duplicated, and every missing sequence is inside a gap record.

mod recorder_support;

use std::time::Duration;

use recorder_support::{
    SyntheticEngine, TestDir, check_history, spawn_recorder, terminate, wait_status,
};

#[test]
fn kill_9_in_a_loop_loses_nothing_silently_and_duplicates_nothing() {
    let dir = TestDir::new("crash");
    // About 20k records/s into a ring of 32 Ki records (about 1.6 s of history).
    let mut engine = SyntheticEngine::start(&dir.shm(), 1 << 15, 20, Duration::from_millis(1));
    // A small xorshift seeded by the clock: where the kills land varies run to run, what is
    // checked does not depend on it.
    let mut x = (ib_stream::storage::now_ns() as u64) | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut kills = 0;
    for _ in 0..24 {
        let mut child = spawn_recorder(&dir, &[]);
        std::thread::sleep(Duration::from_millis(40 + rnd() % 260));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    assert!(kills >= 20);
    let child = spawn_recorder(&dir, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let last = engine.stop();
    let epoch = format!("{:016x}", engine.epoch);
    wait_status(
        &dir.storage(),
        "the recorder to catch up",
        Duration::from_secs(30),
        |s| s.epoch == epoch && s.last_seq >= last,
    );
    terminate(child);
    let gaps = check_history(&dir.storage(), &engine, last);
    for g in &gaps {
        assert_eq!(
            g.tick_type,
            ib_stream_ipc::GapReason::ReaderOverrun as u8,
            "only overruns can lose records here: {g:?}"
        );
    }
}
