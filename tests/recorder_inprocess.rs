//! The recorder driven in process, step by step, for exact expectations: an overrun becomes a
//! gap with exactly the range the ring lost, and heartbeats are thinned to one a minute.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ib_stream::config::FsyncPolicy;
use ib_stream::recorder::{Recorder, RecorderConfig, STRINGS_FILE_NAME};
use ib_stream::storage::Format;
use ib_stream::storage::binary::BinarySegment;
use ib_stream::storage::layout::all_segments;
use ib_stream::storage::validate::validate;
use ib_stream_ipc::{GapReason, Record, RecordKind, RingWriter, ShmOptions};

fn setup(name: &str) -> (PathBuf, RecorderConfig) {
    let root = std::env::temp_dir().join(format!(
        "ibs-inproc-{name}-{}-{}",
        std::process::id(),
        ib_stream::storage::now_ns()
    ));
    std::fs::create_dir_all(root.join("shm")).unwrap();
    let cfg = RecorderConfig {
        ring_path: root.join("shm/ticks.ring"),
        strings_path: root.join("shm").join(STRINGS_FILE_NAME),
        storage_root: root.join("storage"),
        formats: vec![Format::Jsonl, Format::Binary],
        flush_interval: Duration::from_secs(3600),
        fsync: FsyncPolicy::Never,
        jsonl_retention_days: 0,
        binary_retention_days: 0,
        ring_wait: Some(Duration::from_secs(1)),
        retry_interval: Duration::from_millis(500),
        max_staged_bytes: 1 << 20,
        heartbeat_keep_interval: ib_stream::recorder::HEARTBEAT_KEEP_INTERVAL,
        register_reader: true,
    };
    (root, cfg)
}

const T0: i64 = 1_763_798_400_000_000_000; // an hour start

fn mid(i: i64) -> Record {
    let mut r = Record::mid_point(9, T0 + i, i * 1_000_000_000);
    r.ts_recv = T0 + i * 1_000;
    r
}

fn binary_records(cfg: &RecorderConfig) -> Vec<Record> {
    all_segments(&cfg.storage_root, Format::Binary)
        .unwrap()
        .iter()
        .flat_map(|s| BinarySegment::read(&s.path).unwrap().records)
        .collect()
}

#[test]
fn an_overrun_is_a_gap_with_the_exact_lost_range() {
    let (root, cfg) = setup("overrun");
    let opts = ShmOptions {
        prefault: false,
        ..ShmOptions::default()
    };
    let mut w = RingWriter::create(&cfg.ring_path, 1024, &opts).unwrap();
    w.publish_batch(&(1..=100).map(mid).collect::<Vec<_>>());
    let stop = AtomicBool::new(false);
    let mut rec = Recorder::start(cfg.clone(), &stop).unwrap();
    assert_eq!(rec.drain_once(), 100);
    // The writer laps the recorder: 5000 more records into a ring of 1024.
    w.publish_batch(&(101..=5100).map(mid).collect::<Vec<_>>());
    let read = rec.drain_once();
    drop(rec);
    let recs = binary_records(&cfg);
    let gaps: Vec<&Record> = recs
        .iter()
        .filter(|r| r.kind() == Some(RecordKind::Gap))
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let g = gaps[0];
    assert_eq!(g.tick_type, GapReason::ReaderOverrun as u8);
    let (first, last) = (g.body[0] as u64, g.body[1] as u64);
    assert_eq!(first, 101, "the loss starts at the first record not read");
    // Everything after the loss is stored, so the loss is exactly what was not read.
    assert_eq!(read, 5100 - last);
    assert!(
        last >= 5100 - 1024,
        "only what the ring overwrote (plus its margin) is lost"
    );
    assert_eq!(g.seq, first);
    assert_eq!(
        g.body[2],
        mid(100).ts_recv,
        "t0 = the last record read before"
    );
    assert!(g.body[3] >= g.body[2]);
    let report = validate(&cfg.storage_root).unwrap();
    assert!(report.is_ok(), "{report:#?}");
    drop(w);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn heartbeats_are_thinned_to_one_a_minute() {
    let (root, cfg) = setup("hb");
    let opts = ShmOptions {
        prefault: false,
        ..ShmOptions::default()
    };
    let mut w = RingWriter::create(&cfg.ring_path, 4096, &opts).unwrap();
    // 300 heartbeats one second apart, a mid point after each.
    let mut batch = Vec::new();
    for s in 0..300i64 {
        let mut hb = Record::new(RecordKind::Heartbeat);
        hb.ts_recv = T0 + s * 1_000_000_000;
        hb.body[0] = 2 * s;
        batch.push(hb);
        let mut m = mid(s);
        m.ts_recv = hb.ts_recv + 1;
        batch.push(m);
    }
    w.publish_batch(&batch);
    let stop = AtomicBool::new(false);
    let mut rec = Recorder::start(cfg.clone(), &stop).unwrap();
    assert_eq!(rec.drain_once(), 600);
    drop(rec);
    let recs = binary_records(&cfg);
    let hbs: Vec<i64> = recs
        .iter()
        .filter(|r| r.kind() == Some(RecordKind::Heartbeat))
        .map(|r| (r.ts_recv - T0) / 1_000_000_000)
        .collect();
    assert_eq!(hbs, vec![0, 60, 120, 180, 240]);
    assert_eq!(
        recs.iter()
            .filter(|r| r.kind() == Some(RecordKind::TbtMidPoint))
            .count(),
        300
    );
    // The thinned heartbeats' sequences are the only ones missing.
    let report = validate(&cfg.storage_root).unwrap();
    for r in report.formats.values() {
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let e = r.epochs.values().next().unwrap();
        let uncovered: u64 = e.uncovered.iter().map(|(a, b)| b - a + 1).sum();
        assert_eq!(uncovered, 295);
    }
    drop(w);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn without_a_checkpoint_it_resumes_after_what_is_stored() {
    let (root, cfg) = setup("nockpt");
    let opts = ShmOptions {
        prefault: false,
        ..ShmOptions::default()
    };
    let mut w = RingWriter::create(&cfg.ring_path, 4096, &opts).unwrap();
    w.publish_batch(&(1..=500).map(mid).collect::<Vec<_>>());
    let stop = AtomicBool::new(false);
    let mut rec = Recorder::start(cfg.clone(), &stop).unwrap();
    assert_eq!(rec.drain_once(), 500);
    drop(rec);
    std::fs::remove_file(ib_stream::storage::checkpoint::Checkpoint::path(
        &cfg.storage_root,
    ))
    .unwrap();
    w.publish_batch(&(501..=800).map(mid).collect::<Vec<_>>());
    let mut rec = Recorder::start(cfg.clone(), &stop).unwrap();
    assert_eq!(rec.drain_once(), 300, "only what is not stored yet is read");
    drop(rec);
    let report = validate(&cfg.storage_root).unwrap();
    assert!(report.is_ok(), "{report:#?}");
    for r in report.formats.values() {
        let e = r.epochs.values().next().unwrap();
        assert_eq!((e.records, e.duplicates, e.last_seq), (800, 0, 800));
    }
    drop(w);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn with_all_heartbeats_every_sequence_is_accounted_for() {
    let (root, mut cfg) = setup("hball");
    cfg.heartbeat_keep_interval = Duration::ZERO;
    let opts = ShmOptions {
        prefault: false,
        ..ShmOptions::default()
    };
    let mut w = RingWriter::create(&cfg.ring_path, 1024, &opts).unwrap();
    let batch: Vec<Record> = (0..100i64)
        .map(|s| {
            let mut hb = Record::new(RecordKind::Heartbeat);
            hb.ts_recv = T0 + s * 1_000_000;
            hb
        })
        .collect();
    w.publish_batch(&batch);
    let stop = AtomicBool::new(false);
    let mut rec = Recorder::start(cfg.clone(), &stop).unwrap();
    assert_eq!(rec.drain_once(), 100);
    drop(rec);
    assert_eq!(binary_records(&cfg).len(), 100);
    assert!(validate(&cfg.storage_root).unwrap().is_ok());
    drop(w);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_damaged_segment_is_set_aside_and_recording_goes_on() {
    let (root, cfg) = setup("damaged");
    let opts = ShmOptions {
        prefault: false,
        ..ShmOptions::default()
    };
    let mut w = RingWriter::create(&cfg.ring_path, 4096, &opts).unwrap();
    w.publish_batch(&(1..=100).map(mid).collect::<Vec<_>>());
    let stop = AtomicBool::new(false);
    let mut rec = Recorder::start(cfg.clone(), &stop).unwrap();
    assert_eq!(rec.drain_once(), 100);
    drop(rec);
    let seg = all_segments(&cfg.storage_root, Format::Binary).unwrap();
    assert_eq!(seg.len(), 1);
    let mut bytes = std::fs::read(&seg[0].path).unwrap();
    bytes[0] ^= 0xff; // the magic
    std::fs::write(&seg[0].path, &bytes).unwrap();

    w.publish_batch(&(101..=200).map(mid).collect::<Vec<_>>());
    let mut rec = Recorder::start(cfg.clone(), &stop).unwrap();
    assert_eq!(rec.drain_once(), 100);
    drop(rec);
    let aside: Vec<_> = std::fs::read_dir(seg[0].path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".bin.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept aside");
    let report = validate(&cfg.storage_root).unwrap();
    let bin = &report.formats[&Format::Binary];
    assert!(bin.problems.is_empty(), "{:?}", bin.problems);
    let e = bin.epochs.values().next().unwrap();
    // What was in the damaged file shows as missing; what came after is all there.
    assert_eq!(e.uncovered, vec![(1, 100)]);
    assert_eq!((e.records, e.last_seq), (100, 200));
    assert!(report.formats[&Format::Jsonl].is_ok());
    drop(w);
    std::fs::remove_dir_all(&root).unwrap();
}

/// The engine is killed under a running recorder (no clean stop), a new one starts, later
/// stops cleanly and a third starts: the killed run ends in a `writer_restart` gap from its
/// last record on, open-ended (what it received and never published is unknown); the
/// cleanly stopped run ends with no gap; every record of the three runs is stored once.
#[test]
fn restarts_under_a_running_recorder_gap_only_the_killed_run() {
    let (root, cfg) = setup("restarts");
    let opts = ShmOptions {
        prefault: false,
        ..ShmOptions::default()
    };
    let mut w = RingWriter::create(&cfg.ring_path, 1024, &opts).unwrap();
    let e1 = w.info().epoch;
    w.publish_batch(&(1..=10).map(mid).collect::<Vec<_>>());
    let stop = AtomicBool::new(false);
    let mut rec = Recorder::start(cfg.clone(), &stop).unwrap();
    assert_eq!(rec.drain_once(), 10);
    // Published, then killed before the recorder read them: still read from the old ring.
    w.publish_batch(&(11..=12).map(mid).collect::<Vec<_>>());
    w.abandon();
    let mut w2 = RingWriter::create(&cfg.ring_path, 1024, &opts).unwrap();
    let e2 = w2.info().epoch;
    w2.publish_batch(&(20..=24).map(mid).collect::<Vec<_>>());
    assert_eq!(rec.drain_once(), 2 + 5);
    drop(w2); // a clean stop
    rec.drain_once();
    let mut w3 = RingWriter::create(&cfg.ring_path, 1024, &opts).unwrap();
    let e3 = w3.info().epoch;
    w3.publish(&mid(30));
    assert_eq!(rec.drain_once(), 1);
    drop(rec);
    let recs = binary_records(&cfg);
    let gaps: Vec<&Record> = recs
        .iter()
        .filter(|r| r.kind() == Some(RecordKind::Gap))
        .collect();
    assert_eq!(gaps.len(), 1, "only the killed run has a gap: {gaps:?}");
    let g = gaps[0];
    assert_eq!(g.tick_type, GapReason::WriterRestart as u8);
    assert_eq!(
        (g.seq, g.body[0], g.body[1]),
        (13, 13, ib_stream_ipc::UNDEF_I64)
    );
    assert_eq!(
        g.body[2],
        mid(12).ts_recv,
        "t0: the killed run's last record"
    );
    let ticks = recs
        .iter()
        .filter(|r| r.kind() == Some(RecordKind::TbtMidPoint))
        .count();
    assert_eq!(ticks, 12 + 5 + 1);
    let epochs: std::collections::BTreeSet<u64> = all_segments(&cfg.storage_root, Format::Binary)
        .unwrap()
        .iter()
        .map(|s| s.key.epoch)
        .collect();
    assert_eq!(epochs, [e1, e2, e3].into_iter().collect());
    drop(w3);
    let _ = std::fs::remove_dir_all(root);
}
