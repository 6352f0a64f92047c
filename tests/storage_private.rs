//! Everything written under the storage path (segments, sidecars, checkpoint, status, the
//! contract cache) and `up`'s child logs is owner-only (0600 files, 0700 directories)
//! whatever the umask, and an older store's root is tightened when the recorder opens it.
//!
//! One test function: the umask is per process, so the cases run one after the other.

mod storage_query_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ib_stream::recorder::status::RecorderStatus;
use ib_stream::storage::checkpoint::Checkpoint;
use ib_stream::storage::private_fs::create_private_dir_all;
use ib_stream::up::child::spawn;
use ib_stream::up::plan::{ChildKind, ChildSpec};
use storage_query_support::{T0, epoch_records, write_store};

fn set_umask(m: u32) {
    // SAFETY: umask only swaps the process's file-creation mask; no memory is involved.
    unsafe {
        libc::umask(m as libc::mode_t);
    }
}

/// Every file and directory under `root` with a mode other than 0600/0700.
fn loose(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let m = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        if m != 0o700 {
            out.push(format!("{} {m:o}", d.display()));
        }
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                if m != 0o600 {
                    out.push(format!("{} {m:o}", p.display()));
                }
            }
        }
    }
    out
}

#[test]
fn storage_files_are_owner_only_whatever_the_umask() {
    for umask in [0o022, 0o000] {
        set_umask(umask);
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("storage");
        // The recorder's start: the root, then its files.
        create_private_dir_all(&root).unwrap();
        let mut strings = ib_stream::tickjson::LocalStrings::default();
        let recs = epoch_records(600, T0, 10_000_000_000, &mut strings, true);
        write_store(&root, 7, &recs, &strings);
        let cp = Checkpoint {
            version: 1,
            epoch: format!("{:016x}", 7),
            last_seq: 600,
            last_ts_ns: 0,
            scan_from_hour_ns: 0,
            epoch_complete: false,
            owed_gaps: Vec::new(),
            writer_pid: 1,
            written_ns: 0,
        };
        cp.store(&root, true).unwrap();
        RecorderStatus::default().store(&root).unwrap();
        ib_stream::storage::private_fs::write_private_atomic(
            &root.join("cache/contracts/AAPL.json"),
            b"{}",
            false,
        )
        .unwrap();
        // up's child log under the storage path.
        let logs = root.join("logs/test");
        let spec = ChildSpec {
            kind: ChildKind::Recorder,
            program: "/bin/true".into(),
            args: Vec::new(),
        };
        let mut r = spawn(&spec, &logs, false).unwrap();
        r.child.wait().unwrap();
        assert!(logs.join("recorder.log").is_file());
        assert!(root.join("binary").is_dir() && root.join("jsonl").is_dir());
        assert_eq!(loose(&root), Vec::<String>::new(), "umask {umask:o}");
    }
    set_umask(0o022);

    // A store written before the rule (0755/0644): the recorder's start tightens its root,
    // which closes everything below it; files it appends to again become 0600.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("old");
    let seg_dir = root.join("jsonl/2025/11/22/08");
    std::fs::create_dir_all(&seg_dir).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let f = seg_dir.join("1_last_0000000000000007.jsonl");
    std::fs::write(&f, b"").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    create_private_dir_all(&root).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root), 0o700);
    ib_stream::storage::append::AppendFile::open(&f).unwrap();
    assert_eq!(mode(&f), 0o600);
}
