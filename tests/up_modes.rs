//! The development modes (issue 18), each beside a recording production environment on
//! tws-sim, as real processes under `ib-stream up`: passthrough, isolated and migration. The
//! modes that read production run in a mount namespace where production's shm and storage
//! directories are read-only, at debug log level: a write attempted there fails with EROFS and
//! the log names it, which fails the test (a control run shows such an attempt is caught). And
//! `IB_STREAM_ENABLE_STORAGE=false` beside production: no recorder, production's history.

mod modes_support;

use std::time::Duration;

use ib_stream::storage::Format;
use ib_stream::storage::layout::{Stream, all_segments};
use modes_support::*;

fn seqs(json: &str) -> Vec<u64> {
    json.match_indices("\"seq\":")
        .filter_map(|(i, m)| {
            json[i + m.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn production(dir: &std::path::Path) -> (Env, Up) {
    let prod = Env::new(dir, "production", &dir.join("storage").join("production"));
    let up = Up::recording(&prod);
    up.wait_for("up: production ready in", READY_WITHIN);
    wait_until("production to record", Duration::from_secs(60), || {
        recorder_last_seq(&prod.storage).is_some_and(|s| s > 20)
    });
    (prod, up)
}

#[test]
fn passthrough_serves_production_live_and_history_read_only() {
    let d = TestDir::new("pass");
    let (prod, _prod_up) = production(&d.0);
    let dev = Env::new(
        &d.0,
        "development",
        &d.0.join("storage").join("development"),
    )
    .upstream("passthrough", &prod)
    .set("IB_STREAM_LOG_LEVEL=debug");
    let ro = [prod.shm.as_path(), prod.storage.as_path()];
    let mut dev_up = Up::start(dev.command(&["up", "--stop-timeout-secs", "15"], &ro));
    dev_up.wait_for("up: development ready in", READY_WITHIN);
    let out = dev_up.output();
    assert!(
        out.contains("role passthrough") && out.contains("refused"),
        "{out}"
    );
    assert!(out.contains("up: started serve"), "{out}");
    for absent in ["started engine", "started recorder", "started tws-sim"] {
        assert!(
            !out.contains(absent),
            "no second IB session, no recorder: {out}"
        );
    }

    // Production's live ticks (MNQ is tracked there).
    let (status, body) = sse(
        dev.serve_port,
        &format!("/v3/stream/{MNQ}?tick_types=bid_ask"),
        5,
        Duration::from_secs(60),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.matches("event: tick").count() >= 5, "{body}");

    // Production's history, the same records production serves.
    let path = format!("/v3/history/{MNQ}?tick_types=bid_ask&limit=10");
    let (mine, theirs) = (dev.get(&path), prod.get(&path));
    assert_eq!(mine.status, 200, "{}", mine.body);
    let s = seqs(&mine.body);
    assert_eq!(s.len(), 10, "{}", mine.body);
    assert_eq!(s, seqs(&theirs.body));

    // A stream production's engine does not carry is refused, clearly, and never requested.
    let (status, body) = sse(
        dev.serve_port,
        "/v3/stream/265598?tick_types=bid_ask",
        1,
        Duration::from_secs(10),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("upstream_read_only") && body.contains("IB_STREAM_UPSTREAM_SUBSCRIBE=true"),
        "{body}"
    );
    let prod_status = prod.command(&["status"], &[]).output().unwrap();
    let prod_status = String::from_utf8_lossy(&prod_status.stdout).to_string();
    assert!(!prod_status.contains("265598"), "{prod_status}");
    // Not in production's reader registry either.
    let serve_pid = dev_up.pid_of("serve").unwrap();
    assert!(prod_status.contains("readers:"), "{prod_status}");
    assert!(
        !prod_status.contains(&format!("(pid {serve_pid},")),
        "{prod_status}"
    );

    // Allowed by configuration, the stream goes to production's engine.
    let sub = Env::new(&d.0, "staging", &d.0.join("storage").join("staging"))
        .upstream("passthrough", &prod)
        .set("IB_STREAM_UPSTREAM_SUBSCRIBE=true")
        .set("IB_STREAM_LOG_LEVEL=debug");
    let mut sub_up = Up::start(sub.command(&["up", "--stop-timeout-secs", "15"], &ro));
    sub_up.wait_for("up: staging ready in", READY_WITHIN);
    let (status, body) = sse(
        sub.serve_port,
        "/v3/stream/265598?tick_types=bid_ask",
        3,
        Duration::from_secs(60),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.matches("event: tick").count() >= 3, "{body}");
    let sub_log = read_logs(&sub.log_dir());
    assert!(
        sub_log.contains("subscribed at the engine") && sub_log.contains("265598"),
        "{sub_log}"
    );

    sub_up.stop();
    dev_up.stop();
    // Nothing tried to write into production's directories.
    for (env, up) in [(&dev, &dev_up), (&sub, &sub_up)] {
        let logs = format!("{}\n{}", read_logs(&env.log_dir()), up.output());
        assert!(
            logs.contains("ring reader") || logs.contains("reading the upstream"),
            "{logs}"
        );
        assert!(!names_a_refused_write(&logs), "{logs}");
    }

    // The control: the same web server as a recording environment's on production's shm (as
    // a misconfigured passthrough would be) registers as a reader, and the read-only mount
    // refuses that write, which its log names.
    let ctl = Env {
        shm: prod.shm.clone(),
        ..Env::new(&d.0, "development", &d.0.join("storage").join("control"))
    }
    .set("IB_STREAM_LOG_LEVEL=debug");
    let mut ctl_up = Up::start(ctl.command(&["serve"], &ro));
    wait_until(
        "the control's registration attempt",
        Duration::from_secs(60),
        || ctl_up.output().contains("ring reader"),
    );
    let out = ctl_up.output();
    let _ = ctl_up.child.kill();
    let _ = ctl_up.child.wait();
    assert!(names_a_refused_write(&out), "{out}");
}

#[test]
fn isolated_records_its_own_contracts_beside_production_and_shares_nothing() {
    let d = TestDir::new("iso");
    let (prod, _prod_up) = production(&d.0);
    // Sharing production's storage is refused before anything starts.
    let bad = Env::new(&d.0, "development", &prod.storage)
        .set("IB_STREAM_ROLE=isolated")
        .set(&format!(
            "IB_STREAM_UPSTREAM_STORAGE_PATH={}",
            prod.storage.display()
        ));
    let o = bad.command(&["up", "--simulate"], &[]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(78), "{text}");
    assert!(text.contains("is the upstream's storage"), "{text}");

    let iso = Env::new(&d.0, "development", &d.0.join("storage").join("feature-x"))
        .set("IB_STREAM_ROLE=isolated")
        .set(&format!(
            "IB_STREAM_UPSTREAM_STORAGE_PATH={}",
            prod.storage.display()
        ))
        .set(&format!(
            "IB_STREAM_UPSTREAM_SHM_DIR={}",
            prod.shm.display()
        ))
        .set("IB_STREAM_TRACKED_CONTRACTS=265598:AAPL:bid_ask:1");
    let iso_up = Up::recording(&iso);
    iso_up.wait_for("up: development ready in", READY_WITHIN);
    wait_until("the isolated recorder", Duration::from_secs(60), || {
        recorder_last_seq(&iso.storage).is_some_and(|s| s > 20)
    });
    let (status, body) = sse(
        iso.serve_port,
        "/v3/stream/265598?tick_types=bid_ask",
        3,
        Duration::from_secs(60),
    );
    assert_eq!(status, 200, "{body}");
    // Each root holds its own contract only.
    let contracts = |root: &std::path::Path| {
        let mut c: Vec<u32> = all_segments(root, Format::Binary)
            .unwrap()
            .into_iter()
            .filter(|s| s.key.stream != Stream::System)
            .map(|s| s.key.instrument_id)
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    assert_eq!(contracts(&prod.storage), vec![MNQ]);
    assert_eq!(contracts(&iso.storage), vec![265_598]);
    // Its history is its own: nothing of production's MNQ.
    let h = iso.get(&format!("/v3/history/{MNQ}?tick_types=bid_ask&limit=5"));
    assert!(seqs(&h.body).is_empty(), "{}", h.body);
    assert!(
        !d.0.join("storage")
            .join("feature-x")
            .join("..")
            .join("production")
            .join("binary")
            .read_dir()
            .unwrap()
            .any(|e| { e.unwrap().path().to_string_lossy().contains("265598") })
    );
}

#[test]
fn migration_records_productions_ring_into_its_own_storage_and_compares_equal() {
    let d = TestDir::new("mig");
    let control = free_port();
    let prod = Env::new(&d.0, "production", &d.0.join("storage").join("production"));
    let prod_up = Up::recording_with_control(&prod, control);
    prod_up.wait_for("up: production ready in", READY_WITHIN);
    wait_until("production to record", Duration::from_secs(60), || {
        recorder_last_seq(&prod.storage).is_some_and(|s| s > 20)
    });
    let mig_root = d.0.join("storage").join("next");
    copy_storage(&prod.storage, &mig_root);
    let mig = Env::new(&d.0, "development", &mig_root)
        .upstream("migration", &prod)
        .set("IB_STREAM_LOG_LEVEL=debug");
    let ro = [prod.shm.as_path(), prod.storage.as_path()];
    let mut mig_up = Up::start(mig.command(&["up", "--stop-timeout-secs", "15"], &ro));
    mig_up.wait_for("up: development ready in", READY_WITHIN);
    let out = mig_up.output();
    assert!(
        out.contains("up: started recorder") && out.contains("up: started serve"),
        "{out}"
    );
    assert!(
        !out.contains("started engine") && !out.contains("started tws-sim"),
        "{out}"
    );
    // It serves production's live ticks and history.
    let (status, body) = sse(
        mig.serve_port,
        &format!("/v3/stream/{MNQ}?tick_types=bid_ask"),
        3,
        Duration::from_secs(60),
    );
    assert_eq!(status, 200, "{body}");
    let path = format!("/v3/history/{MNQ}?tick_types=bid_ask&limit=10");
    assert_eq!(seqs(&mig.get(&path).body), seqs(&prod.get(&path).body));
    std::thread::sleep(Duration::from_secs(3));

    // Market data stops (IB connectivity lost at the simulator); both recorders read the
    // ring to its head, then the migration stops.
    sim_command(control, r#"{"cmd":"lost"}"#);
    let both_at_head = || {
        let (a, b) = (
            recorder_last_seq(&prod.storage),
            recorder_last_seq(&mig_root),
        );
        a.is_some() && a == b && b == ring_head(&mig_root)
    };
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while !both_at_head() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        both_at_head(),
        "production's recorder at {:?}, the migration's at {:?}",
        recorder_last_seq(&prod.storage),
        recorder_last_seq(&mig_root),
    );
    // Flushed by now (every 100 ms).
    std::thread::sleep(Duration::from_millis(500));
    mig_up.stop();
    let logs = format!("{}\n{}", read_logs(&mig.log_dir()), mig_up.output());
    assert!(!names_a_refused_write(&logs), "{logs}");

    // Its own storage holds exactly production's ticks (production still running).
    let (equal, text) = compare(&prod.storage, &mig_root);
    assert!(equal, "{text}");
    assert!(text.contains("EQUAL") && !text.contains("new 0"), "{text}");
}

#[test]
fn storage_off_records_nothing_and_serves_productions_history_read_only() {
    let d = TestDir::new("nostore");
    let (prod, _prod_up) = production(&d.0);
    // Its own engine (and simulator), no recorder; production's storage read-only.
    let dev = Env::new(
        &d.0,
        "development",
        &d.0.join("storage").join("development"),
    )
    .set("IB_STREAM_ENABLE_STORAGE=false")
    .set(&format!(
        "IB_STREAM_UPSTREAM_STORAGE_PATH={}",
        prod.storage.display()
    ))
    .set("IB_STREAM_LOG_LEVEL=debug");
    let ro = [prod.storage.as_path()];
    let mut dev_up =
        Up::start(dev.command(&["up", "--simulate", "--stop-timeout-secs", "15"], &ro));
    dev_up.wait_for("up: development ready in", READY_WITHIN);
    let out = dev_up.output();
    assert!(out.contains("storage off: recording nothing"), "{out}");
    assert!(out.contains("up: started engine"), "{out}");
    assert!(!out.contains("started recorder"), "{out}");
    let path = format!("/v3/history/{MNQ}?tick_types=bid_ask&limit=10");
    let (mine, theirs) = (dev.get(&path), prod.get(&path));
    assert_eq!(mine.status, 200, "{}", mine.body);
    assert_eq!(seqs(&mine.body).len(), 10, "{}", mine.body);
    assert_eq!(seqs(&mine.body), seqs(&theirs.body));
    dev_up.stop();
    assert!(!dev.storage.join("binary").exists(), "nothing recorded");
    let logs = format!("{}\n{}", read_logs(&dev.log_dir()), dev_up.output());
    assert!(!names_a_refused_write(&logs), "{logs}");
}
