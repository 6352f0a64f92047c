//! `ib-stream storage compare --old DIR --new DIR` as a process: an intact copy is equal (exit
//! 0); a dropped hour, a changed tick and a missing contract are each found, listed and make
//! the exit status 1.

use std::path::Path;
use std::process::{Command, Output};

use ib_stream::storage::Format;
use ib_stream::storage::import::write_records;
use ib_stream::storage::layout::{HOUR_NS, hour_dir};
use ib_stream_ipc::{PRICE_SCALE, Record, RecordKind, SIZE_SCALE};

const EXE: &str = env!("CARGO_BIN_EXE_ib-stream");
const EPOCH: u64 = 0x1234_5678_9abc_def0;
/// A whole UTC hour (2025-12-06T06:00Z).
const H0: i64 = 1_765_000_800 / 3600 * 3600 * 1_000_000_000;

/// Bid/ask of two contracts every 2 minutes for three hours, and trades of the first.
fn history() -> Vec<Record> {
    let mut out = Vec::new();
    let mut seq = 0;
    for i in 0..90i64 {
        let ts = H0 + i * 120_000_000_000;
        for con in [711_280_073u32, 265_598] {
            seq += 1;
            let mut r = Record::new(RecordKind::TbtBidAsk);
            r.seq = seq;
            r.ts_recv = ts + i64::from(con % 1000);
            r.ts_event = ts / 1_000_000_000 * 1_000_000_000;
            r.instrument_id = con;
            r.body = [
                (20_000 + i) * PRICE_SCALE / 4,
                (20_001 + i) * PRICE_SCALE / 4,
                3 * SIZE_SCALE,
                5 * SIZE_SCALE,
            ];
            out.push(r);
        }
        seq += 1;
        let mut t = Record::new(RecordKind::TbtLast);
        t.seq = seq;
        t.ts_recv = ts + 7_000;
        t.instrument_id = 711_280_073;
        t.body = [(20_000 + i) * PRICE_SCALE / 4, SIZE_SCALE, 0, 0];
        out.push(t);
    }
    out
}

fn write(root: &Path, recs: &[Record]) {
    write_records(root, EPOCH, recs, &[Format::Binary, Format::Jsonl]).unwrap();
}

fn compare(old: &Path, new: &Path) -> Output {
    Command::new(EXE)
        .args(["storage", "compare", "--quiet", "--old"])
        .arg(old)
        .arg("--new")
        .arg(new)
        .env_clear()
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn an_intact_copy_is_equal_and_each_kind_of_damage_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old");
    let recs = history();
    write(&old, &recs);

    // An intact copy (cp -a, as the blue-green switch makes one).
    let copy = dir.path().join("copy");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&old)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    let o = compare(&old, &copy);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("0 differ") && t.contains("EQUAL"), "{t}");
    assert!(t.contains("old 270 records, new 270"), "{t}");
    // Not a terminal: no progress bar in the output.
    assert!(!t.contains('\r') && !t.contains("[#"), "{t}");
    // Without --quiet every hour is listed with its counts, sequences, times and hash.
    let full = Command::new(EXE)
        .args(["storage", "compare", "--old"])
        .arg(&old)
        .arg("--new")
        .arg(&copy)
        .env_clear()
        .output()
        .unwrap();
    let f = String::from_utf8_lossy(&full.stdout);
    let hours: Vec<&str> = f.lines().filter(|l| l.starts_with("same ")).collect();
    assert_eq!(hours.len(), 9, "3 hours x (2 bid_ask + 1 last): {f}");
    let first = hours
        .iter()
        .find(|l| {
            l.starts_with(
                "same 265598 bid_ask 2025-12-06T06Z: 30 records, epoch 123456789abcdef0 seq 2..89",
            )
        })
        .unwrap_or_else(|| panic!("{f}"));
    assert!(
        first.contains("(2025-12-06T06:00:00.000000Z .. 2025-12-06T06:58:00.000000Z), hash "),
        "{first}"
    );

    // On a terminal (util-linux `script` gives the command one), a progress bar on stderr.
    let cmd = format!(
        "{EXE} storage compare --quiet --old '{}' --new '{}'",
        old.display(),
        copy.display()
    );
    let tty = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_clear()
        .output()
        .expect("script (util-linux) runs the command on a terminal");
    let t = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{t}");
    assert!(
        t.contains("\rcompare: hours [") && t.contains("] 18/18"),
        "9 hours in each root: {t:?}"
    );

    // A dropped hour: the second hour of every stream deleted from the copy.
    let dropped = dir.path().join("dropped");
    write(&dropped, &recs);
    for f in Format::ALL {
        std::fs::remove_dir_all(hour_dir(&dropped, f, H0 + HOUR_NS)).unwrap();
    }
    let o = compare(&old, &dropped);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert_eq!(t.matches("hour missing in new").count(), 3, "{t}");
    assert!(t.contains("DIFFERENT") && t.contains("3 differ"), "{t}");

    // A changed tick: one trade's price, everything else the same.
    let changed = dir.path().join("changed");
    let mut c = recs.clone();
    let at = c
        .iter()
        .position(|r| r.kind == RecordKind::TbtLast as u8 && r.seq > 150)
        .unwrap();
    c[at].body[0] += PRICE_SCALE / 4;
    write(&changed, &c);
    let o = compare(&old, &changed);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("1 differ"), "{t}");
    assert!(
        t.contains(&format!("seq {} ", c[at].seq)) && t.contains("711280073 last"),
        "the differing record is named: {t}"
    );

    // A missing contract.
    let missing = dir.path().join("missing");
    let m: Vec<Record> = recs
        .iter()
        .filter(|r| r.instrument_id != 265_598)
        .copied()
        .collect();
    write(&missing, &m);
    let o = compare(&old, &missing);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("DIFF contract 265598: in old only (missing in new)"),
        "{t}"
    );

    // A root that is not there is an error, not "equal".
    let o = compare(&old, &dir.path().join("nothing"));
    assert!(!o.status.success());
    assert!(text(&o).contains("not a storage root"), "{}", text(&o));
}
