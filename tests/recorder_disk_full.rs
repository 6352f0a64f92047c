//! A real write error (RLIMIT_FSIZE lowered on the running recorder, so writes fail with
//! EFBIG) is reported in status, recorded as a gap, and recovered from once the limit is
//! lifted again.

mod recorder_support;

use std::process::Command;
use std::time::Duration;

use ib_stream_ipc::{GapReason, RecordKind};
use recorder_support::{
    SyntheticEngine, TestDir, check_history, spawn_recorder, terminate, wait_status,
};

fn prlimit_fsize(pid: u32, soft: &str) {
    let st = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={soft}:")])
        .status()
        .expect("prlimit (util-linux) is needed for this test");
    assert!(st.success(), "prlimit failed");
}

#[test]
fn disk_full_is_reported_recorded_as_a_gap_and_recovered_from() {
    let dir = TestDir::new("diskfull");
    let mut engine = SyntheticEngine::start(&dir.shm(), 1 << 16, 20, Duration::from_millis(1));
    let child = spawn_recorder(&dir, &[]);
    let storage = dir.storage();
    wait_status(
        &storage,
        "some records written",
        Duration::from_secs(20),
        |s| s.formats.len() == 2 && s.formats.iter().all(|f| f.stats.records_written > 3000),
    );

    // Every data file is past 16 KiB by now: appends to them fail with EFBIG.
    prlimit_fsize(child.id(), "16384");
    let st = wait_status(
        &storage,
        "the write error in status",
        Duration::from_secs(20),
        |s| {
            !s.healthy
                && s.formats
                    .iter()
                    .all(|f| f.stats.write_errors > 0 && !f.healthy)
        },
    );
    let err = st.formats[0].stats.last_error.clone().unwrap_or_default();
    assert!(
        err.contains("too large") || err.contains("EFBIG") || err.contains("27"),
        "{err}"
    );
    assert!(st.formats.iter().all(|f| !f.owed_gaps.is_empty()));
    // Reading goes on while writing fails.
    let read_before = st.records_read;
    wait_status(&storage, "reading to go on", Duration::from_secs(20), |s| {
        s.records_read > read_before + 1000
    });

    prlimit_fsize(child.id(), "unlimited");
    wait_status(&storage, "recovery", Duration::from_secs(20), |s| {
        s.healthy
            && s.formats
                .iter()
                .all(|f| f.healthy && f.stats.gaps_written >= 1)
    });
    std::thread::sleep(Duration::from_millis(200));
    let last = engine.stop();
    let epoch = format!("{:016x}", engine.epoch);
    wait_status(
        &storage,
        "the recorder to catch up",
        Duration::from_secs(30),
        |s| s.epoch == epoch && s.last_seq >= last,
    );
    terminate(child);

    let gaps = check_history(&storage, &engine, last);
    let write_gaps: Vec<_> = gaps
        .iter()
        .filter(|g| g.kind() == Some(RecordKind::Gap) && g.tick_type == GapReason::WriteError as u8)
        .collect();
    assert!(
        !write_gaps.is_empty(),
        "a write_error gap is on disk: {gaps:?}"
    );
    for g in write_gaps {
        assert!(g.body[0] >= 1 && g.body[1] >= g.body[0], "{g:?}");
        assert!(g.body[2] <= g.body[3], "time interval in order: {g:?}");
    }
}
