//! Engine restarts: a new ring epoch while the recorder runs is followed with nothing lost or
//! repeated; one while the recorder is down leaves an honest `writer_restart` gap for the
//! part of the old epoch it never saw.

mod recorder_support;

use std::time::Duration;

use ib_stream::storage::Format;
use ib_stream::storage::binary::BinarySegment;
use ib_stream::storage::layout::all_segments;
use ib_stream::storage::validate::validate;
use ib_stream_ipc::{GapReason, RecordKind, UNDEF_I64};
use recorder_support::{SyntheticEngine, TestDir, spawn_recorder, terminate, wait_status};

fn caught_up(dir: &TestDir, engine: &SyntheticEngine, last: u64) {
    let epoch = format!("{:016x}", engine.epoch);
    wait_status(
        &dir.storage(),
        "the recorder to catch up",
        Duration::from_secs(30),
        |s| s.epoch == epoch && s.last_seq >= last,
    );
}

#[test]
fn new_epochs_are_followed_and_missed_ones_are_gaps() {
    let dir = TestDir::new("restart");
    let pause = Duration::from_millis(1);
    let mut a = SyntheticEngine::start(&dir.shm(), 1 << 15, 20, pause);
    // This run syncs every batch (the others never do).
    let child = spawn_recorder(&dir, &["--set", "IB_STREAM_FSYNC=batch"]);
    std::thread::sleep(Duration::from_millis(300));
    // A second recorder on the same storage is refused (and says why).
    let mut second = spawn_recorder(&dir, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let st = loop {
        if let Some(st) = second.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "second recorder still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!st.success());
    let log = std::fs::read_to_string(dir.root.join("recorder.log")).unwrap();
    assert!(log.contains("writer"), "{log}");
    let a_last = a.stop();
    caught_up(&dir, &a, a_last);

    // Restart while the recorder runs: it follows the new ring from its first record.
    let mut b = SyntheticEngine::start(&dir.shm(), 1 << 15, 20, pause);
    std::thread::sleep(Duration::from_millis(300));
    let b_seen = b.published();
    caught_up(&dir, &b, b_seen);
    // The recorder dies, the engine keeps going and then restarts while it is down.
    let mut child = child;
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let b_last = b.stop();
    let mut c = SyntheticEngine::start(&dir.shm(), 1 << 15, 20, pause);
    let child = spawn_recorder(&dir, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let c_last = c.stop();
    caught_up(&dir, &c, c_last);
    terminate(child);

    let report = validate(&dir.storage()).unwrap();
    for (format, r) in &report.formats {
        assert!(
            r.problems.is_empty(),
            "{format:?}: {:?}",
            &r.problems[..r.problems.len().min(5)]
        );
        assert_eq!(r.epochs.len(), 3, "{format:?}: three epochs");
        for (epoch, e) in &r.epochs {
            assert_eq!(e.duplicates, 0, "{format:?} {epoch:x}");
            assert!(
                e.uncovered.is_empty(),
                "{format:?} {epoch:x}: {:?}",
                e.uncovered
            );
        }
        assert_eq!(r.epochs[&a.epoch].last_seq, a_last, "{format:?}: all of A");
        assert_eq!(
            r.epochs[&a.epoch].gap_records, 0,
            "{format:?}: A was followed without loss"
        );
        assert_eq!(r.epochs[&c.epoch].last_seq, c_last, "{format:?}: all of C");
        assert!(r.epochs[&b.epoch].last_seq >= b_seen);
    }
    // B's tail after the recorder's last checkpoint is a writer_restart gap to the end of B.
    let restart_gaps: Vec<_> = all_segments(&dir.storage(), Format::Binary)
        .unwrap()
        .into_iter()
        .filter(|s| s.key.epoch == b.epoch)
        .flat_map(|s| BinarySegment::read(&s.path).unwrap().records)
        .filter(|r| {
            r.kind() == Some(RecordKind::Gap) && r.tick_type == GapReason::WriterRestart as u8
        })
        .collect();
    assert_eq!(restart_gaps.len(), 1, "{restart_gaps:?}");
    assert_eq!(restart_gaps[0].body[1], UNDEF_I64);
    assert!(restart_gaps[0].body[0] as u64 <= b_last);
}
