//! Registered readers of a live engine's ring, seen by `ib-stream top`: `ib-stream tail` (a
//! reader process that keeps up) and a reader in this test that stops reading (its lag grows).

mod engine_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use engine_support::*;
use ib_stream::ipc::{ReaderRegistry, Registration};

/// `top --once` on the engine's directory.
fn top(dir: &TempDir) -> String {
    let out = Command::new(ENGINE)
        .arg("--set")
        .arg(format!("IB_STREAM_SHM_DIR={}", dir.path().display()))
        .args(["top", "--once"])
        .output()
        .unwrap();
    let frame = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "top failed: {frame}");
    frame
}

/// The words of top's readers-table line for `name`.
fn reader_line(frame: &str, name: &str) -> Option<Vec<String>> {
    let table = &frame[frame.find("readers (")?..];
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
}

#[test]
fn top_shows_each_registered_reader_and_its_lag() {
    let dir = TempDir::new("readers");
    let sim = Sim::start(&["--rate", "200"]);
    let eng = Engine::start(
        dir.path(),
        sim.port,
        &["IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:bid_ask"],
        &[],
    );
    let mut ring = eng.ring();
    let mut seen = Vec::new();
    read_until(&mut ring, 30, &mut seen, |s| s.len() >= 20);

    // A reader that registers and then stops reading.
    let mut slow = eng.ring();
    let mut slow_seen = Vec::new();
    read_until(&mut slow, 10, &mut slow_seen, |s| !s.is_empty());
    let reg = slow.register("slow-test");
    assert!(matches!(reg, Registration::Registered { .. }), "{reg}");
    let stopped_at = slow.next_seq();

    // `tail` registers itself and keeps up.
    let mut tail = Command::new(ENGINE)
        .arg("--set")
        .arg(format!("IB_STREAM_SHM_DIR={}", dir.path().display()))
        .args(["tail", "--seconds", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tail_pid = tail.id().to_string();
    let me = std::process::id().to_string();

    let until = Instant::now() + Duration::from_secs(30);
    let (tail_row, slow_row) = loop {
        let frame = top(&dir);
        let rows = (
            reader_line(&frame, "tail"),
            reader_line(&frame, "slow-test"),
        );
        // Both listed, and the slow reader is visibly behind (the ring keeps filling).
        if let (Some(t), Some(s)) = &rows
            && s[4].parse::<u64>().is_ok_and(|lag| lag >= 100)
            && t[4].parse::<u64>().is_ok()
        {
            break (t.clone(), s.clone());
        }
        assert!(
            Instant::now() < until,
            "top never showed both readers:\n{frame}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // name pid alive position lag laps lost updated...
    assert_eq!(tail_row[1..3], [tail_pid.as_str(), "yes"]);
    assert_eq!(slow_row[1..3], [me.as_str(), "yes"]);
    assert_eq!(
        slow_row[3],
        stopped_at.to_string(),
        "the position where it stopped"
    );
    let tail_lag: u64 = tail_row[4].parse().unwrap();
    let slow_lag: u64 = slow_row[4].parse().unwrap();
    assert!(
        tail_lag < slow_lag,
        "tail keeps up: {tail_lag} vs {slow_lag}"
    );

    // The engine made the registry; a killed tail leaves its slot to be reclaimed.
    let _ = tail.kill();
    let _ = tail.wait();
    let registry = ReaderRegistry::open(&dir.path().join("readers")).unwrap();
    let dead = registry
        .entries()
        .into_iter()
        .find(|e| e.name == "tail")
        .unwrap();
    assert_eq!(dead.alive, Some(false));
    let mut next = eng.ring();
    match next.register("after-tail") {
        Registration::Registered { slot } => assert_eq!(slot, dead.slot, "the dead slot is reused"),
        other => panic!("{other}"),
    }
    // A clean close frees the slot.
    drop(slow);
    assert!(registry.entries().iter().all(|e| e.name != "slow-test"));
}
