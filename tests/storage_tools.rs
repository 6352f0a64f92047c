//! `ib-stream storage stats | validate [--repair] | export | import`, run as the real binary.

mod storage_query_support;

use std::path::Path;
use std::process::{Command, Output};

use ib_stream::storage::query::{Query, query_json};
use ib_stream::tws::proto::Writer;
use storage_query_support::*;

fn storage(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ib-stream"))
        .arg("storage")
        .arg("--storage")
        .arg(root)
        .args(args)
        .env_remove("IB_STREAM_STORAGE_PATH")
        .output()
        .expect("run ib-stream")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(root: &Path, args: &[&str]) -> String {
    let o = storage(root, args);
    assert!(
        o.status.success(),
        "storage {args:?} failed: {}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// A v3 protobuf record as the original wrote it: `TickMessage` behind a big-endian length.
#[allow(clippy::too_many_arguments)]
fn pb_record(
    out: &mut Vec<u8>,
    ts: i64,
    st: i64,
    cid: i32,
    tt: &str,
    rid: i32,
    doubles: &[(u32, f64)],
    bools: &[(u32, bool)],
) {
    let mut msg = Vec::new();
    let mut w = Writer::new(&mut msg);
    w.i64(1, ts).i64(2, st).i32(3, cid).str(4, tt).i32(5, rid);
    for (f, v) in doubles {
        w.f64(*f, *v);
    }
    for (f, v) in bools {
        w.bool(*f, *v);
    }
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
}

/// The original's layout with one v3 JSON file (bid_ask, one bad line) and one v3 protobuf
/// file (last, torn final record).
fn original_files(dir: &Path) -> (usize, usize) {
    let json_dir = dir.join("v3/json/2025/11/22/08");
    let pb_dir = dir.join("v3/protobuf/2025/11/22/08");
    std::fs::create_dir_all(&json_dir).unwrap();
    std::fs::create_dir_all(&pb_dir).unwrap();
    // Exactly as the original wrote them: compact separators, doubles for sizes, no flags
    // when false, `rid` present.
    let lines = [
        r#"{"ts":1763798400100000,"st":1763798400123456,"cid":711280073,"tt":"bid_ask","rid":1001,"bp":21000.25,"bs":3.0,"ap":21000.5,"as":1.0}"#,
        r#"{"ts":1763798401100000,"st":1763798401123457,"cid":711280073,"tt":"bid_ask","rid":1001,"bp":21000.5,"bs":2.0,"ap":21000.75,"as":12.0,"bpl":true}"#,
        r#"{"ts":1763798402100000,"st":1763798402123458,"cid":711280073,"tt":"time_and_sales","rid":1001,"p":1.0}"#,
        r#"{"ts":1763798403100000,"st":1763798403123459,"cid":711280073,"tt":"bid_ask","rid":1001,"bp":0.1,"bs":0.5,"ap":0.3,"as":7.0,"aph":true}"#,
    ];
    let mut j = lines.join("\n");
    j.push('\n');
    std::fs::write(json_dir.join("711280073_bid_ask_1763798400.jsonl"), j).unwrap();
    let mut pb = Vec::new();
    pb_record(
        &mut pb,
        1_763_798_400_200_000,
        1_763_798_400_223_456,
        711_280_073,
        "last",
        7,
        &[(10, 21000.25), (11, 2.0)],
        &[],
    );
    pb_record(
        &mut pb,
        0,
        1_763_798_460_000_001,
        711_280_073,
        "last",
        7,
        &[(10, 21001.0), (11, 1.0)],
        &[(22, true)],
    );
    pb_record(
        &mut pb,
        1_763_798_461_000_000,
        1_763_798_461_000_002,
        711_280_073,
        "mid_point",
        7,
        &[(16, 21000.125)],
        &[],
    );
    // A torn last record: the length says 40 bytes, 3 follow.
    pb.extend_from_slice(&40u32.to_be_bytes());
    pb.extend_from_slice(&[8, 1, 16]);
    std::fs::write(pb_dir.join("711280073_last_1763798400.pb"), pb).unwrap();
    (3, 3)
}

#[test]
fn import_reads_the_originals_v3_json_and_protobuf_files() {
    let orig = TempRoot::new("orig");
    let root = TempRoot::new("imported");
    original_files(&orig.0);
    let out = ok(&root.0, &["import", orig.0.to_str().unwrap()]);
    assert!(
        out.contains("import: 2 files, 6 records, 2 rejected"),
        "{out}"
    );
    assert!(
        out.contains("711280073_bid_ask_1763798400.jsonl: line 3: unknown tt \"time_and_sales\""),
        "the bad line is named: {out}"
    );
    assert!(out.contains("711280073_last_1763798400.pb: byte "), "{out}");
    assert!(out.contains("torn or not big-endian framing"), "{out}");

    let export = |from: &str| {
        ok(
            &root.0,
            &[
                "export",
                "--con-id",
                "711280073",
                "--kinds",
                "bid_ask,last,mid_point",
                "--from",
                from,
            ],
        )
    };
    let bin = export("binary");
    assert_eq!(bin, export("jsonl"), "both formats give the same export");
    let lines: Vec<&str> = bin.lines().collect();
    assert_eq!(lines.len(), 6, "{bin}");
    // Receive time (st) order across the two files; seq is per imported file.
    assert_eq!(
        lines[0],
        r#"{"seq":1,"st":1763798400123456,"ts":1763798400100000,"cid":711280073,"tt":"bid_ask","bp":21000.25,"bs":3,"ap":21000.5,"as":1}"#
    );
    assert_eq!(
        lines[1],
        r#"{"seq":1,"st":1763798400223456,"ts":1763798400200000,"cid":711280073,"tt":"last","p":21000.25,"s":2}"#
    );
    assert!(
        lines[2].contains(r#""bp":21000.5,"bs":2,"ap":21000.75,"as":12,"bpl":true"#),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].contains(r#""bp":0.1,"bs":0.5,"ap":0.3,"as":7,"aph":true"#),
        "{}",
        lines[3]
    );
    // ts 0 in the original means none.
    assert_eq!(
        lines[4],
        r#"{"seq":2,"st":1763798460000001,"cid":711280073,"tt":"last","p":21001,"s":1,"upt":true}"#
    );
    assert!(
        lines[5].contains(r#""tt":"mid_point","mp":21000.125"#),
        "{}",
        lines[5]
    );

    let v = ok(&root.0, &["validate"]);
    assert!(v.ends_with("OK\n"), "{v}");
    // Importing again adds nothing.
    let again = ok(&root.0, &["import", orig.0.to_str().unwrap()]);
    assert!(
        again.contains("import: 0 files, 0 records, 0 rejected, 2 already imported"),
        "{again}"
    );
    assert_eq!(export("binary"), bin);
}

#[test]
fn stats_and_export_of_a_recorded_store() {
    let root = TempRoot::new("tools");
    let (all, _) = standard_store(&root.0);
    let stats = ok(&root.0, &["stats"]);
    let bid_ask = all
        .iter()
        .filter(|(_, r)| r.instrument_id == CID && r.kind == 3)
        .count();
    for f in ["jsonl", "binary"] {
        let row = stats
            .lines()
            .find(|l| l.starts_with(f) && l.contains(" 711280073 bid_ask "))
            .unwrap_or_else(|| panic!("{f} bid_ask row in {stats}"));
        assert!(row.contains(&format!(" {bid_ask} ")), "{row}");
        assert!(
            row.contains("2025-11-22T08:00:00.123456789Z") || f == "jsonl",
            "{row}"
        );
        assert!(
            stats.contains(&format!("{f}: epoch {EPOCH_A:016x}: 2997 records, 1 gaps")),
            "{stats}"
        );
        assert!(stats.contains(r#"gap {"seq":1501,"#), "{stats}");
    }

    // JSONL export equals the library's query.
    let q = Query::new(CID, i64::MIN, i64::MAX);
    let want: String = query_json(&root.0, &q)
        .unwrap()
        .map(|r| text(&r.unwrap().1) + "\n")
        .collect();
    let got = ok(
        &root.0,
        &["export", "--con-id", "711280073", "--start", "2000-01-01"],
    );
    assert_eq!(got, want);

    // CSV: a header, then one row per record with the documented columns.
    let csv = ok(
        &root.0,
        &[
            "export",
            "--con-id",
            "711280073",
            "--start",
            "2000-01-01",
            "--format",
            "csv",
        ],
    );
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], ib_stream::storage::cli::CSV_HEADER);
    assert_eq!(rows.len() - 1, want.lines().count());
    let first = all.iter().find(|(_, r)| r.instrument_id == CID).unwrap().1;
    assert_eq!(
        rows[1],
        format!(
            "{},{},1,711280073,bid_ask,,,21000,1,21000.25,2,,,,,",
            first.ts_recv, first.ts_event
        )
    );
    assert!(
        rows.iter()
            .any(|r| r.contains(",last,") && r.contains(",GLOBEX, T,")),
        "trade strings in CSV"
    );

    // Pages: --limit prints the cursor to resume with on stderr.
    let o = storage(
        &root.0,
        &[
            "export",
            "--con-id",
            "711280073",
            "--start",
            "2000-01-01",
            "--limit",
            "1000",
        ],
    );
    assert!(o.status.success());
    let err = text(&o.stderr);
    let cursor = err
        .lines()
        .find_map(|l| l.strip_prefix("next page: --after "))
        .unwrap_or_else(|| panic!("cursor on stderr: {err}"));
    let rest = ok(
        &root.0,
        &[
            "export",
            "--con-id",
            "711280073",
            "--start",
            "2000-01-01",
            "--after",
            cursor,
        ],
    );
    assert_eq!(text(&o.stdout) + &rest, want);

    // A civil time in a named zone is the same instant as its UTC spelling.
    let ny = ok(
        &root.0,
        &[
            "export",
            "--con-id",
            "711280073",
            "--start",
            "2025-11-22 04:00",
            "--tz",
            "America/New_York",
            "--duration",
            "1h",
        ],
    );
    let utc = ok(
        &root.0,
        &[
            "export",
            "--con-id",
            "711280073",
            "--start",
            "2025-11-22T09:00:00Z",
            "--end",
            "2025-11-22T10:00:00Z",
        ],
    );
    assert_eq!(ny, utc);
    assert!(ny.lines().count() > 500);

    let bad = storage(
        &root.0,
        &["export", "--con-id", "1", "--start", "yesterday"],
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("\"yesterday\" is not a time"),
        "{}",
        text(&bad.stderr)
    );
}

fn bid_ask_files(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let bin = root.join(format!(
        "binary/2025/11/22/08/{CID}_bid_ask_{EPOCH_A:016x}.bin"
    ));
    let jsonl = root.join(format!(
        "jsonl/2025/11/22/09/{CID}_bid_ask_{EPOCH_A:016x}.jsonl"
    ));
    assert!(bin.exists() && jsonl.exists());
    (bin, jsonl)
}

#[test]
fn validate_pinpoints_a_changed_record_and_repair_cuts_torn_tails() {
    let root = TempRoot::new("corrupt");
    standard_store(&root.0);
    assert!(ok(&root.0, &["validate"]).ends_with("OK\n"));
    let (bin, jsonl) = bid_ask_files(&root.0);

    // One bit of record 300 of the binary file changes: block 1 is named.
    let mut b = std::fs::read(&bin).unwrap();
    b[64 + 300 * 64 + 40] ^= 0x10;
    std::fs::write(&bin, &b).unwrap();
    let o = storage(&root.0, &["validate"]);
    assert!(!o.status.success());
    let out = text(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.contains("PROBLEM"))
        .unwrap_or_else(|| panic!("{out}"));
    let (head, tail) = line.split_once("; ").unwrap();
    assert_eq!(
        head,
        format!(
            "binary: PROBLEM {}: block 1 (records 256..=511, bytes 16448..32832): checksum mismatch: the records of this block were changed on disk",
            bin.display()
        )
    );
    // The JSON Lines file of the same hour still has those records.
    assert!(
        tail.starts_with("the jsonl copy ")
            && tail.contains("holds these 256 records (seq ")
            && tail.ends_with("intact: a repair source"),
        "{tail}"
    );
    assert!(out.ends_with("INVALID\n"));
    assert!(
        out.lines()
            .any(|l| l.starts_with("jsonl: ") && l.ends_with(" 0 problems")),
        "the JSON Lines copy is intact: {out}"
    );
    b[64 + 300 * 64 + 40] ^= 0x10;
    std::fs::write(&bin, &b).unwrap();

    // Torn tails: half a record, half a line, a torn strings entry.
    let append = |p: &Path, bytes: &[u8]| {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(p)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    };
    let bin_len = std::fs::metadata(&bin).unwrap().len();
    let jsonl_len = std::fs::metadata(&jsonl).unwrap().len();
    append(&bin, &[1u8; 23]);
    append(&jsonl, br#"{"seq":99999,"st":17"#);
    let last = root.0.join(format!(
        "binary/2025/11/22/08/{CID}_last_{EPOCH_A:016x}.strings"
    ));
    let strings_len = std::fs::metadata(&last).unwrap().len();
    append(&last, &[5, 0, 0, 0, 9]);
    let o = storage(&root.0, &["validate"]);
    assert!(!o.status.success());
    let out = text(&o.stdout);
    assert!(
        out.contains(&format!(
            "{}: byte {bin_len}: torn record: 23 bytes after the last whole record",
            bin.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{}: byte {jsonl_len}: torn last line of 20 bytes",
            jsonl.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{}: byte {strings_len}: 5 bytes after the last intact string entry",
            last.display()
        )),
        "{out}"
    );

    let o = storage(&root.0, &["validate", "--repair"]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "binary: repaired: {}: byte {bin_len}: cut 23 bytes of torn record",
            bin.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "jsonl: repaired: {}: byte {jsonl_len}: cut 20 bytes of torn last line",
            jsonl.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "binary: repaired: {}: byte {strings_len}: cut 5 bytes",
            last.display()
        )),
        "{out}"
    );
    assert!(out.ends_with("OK\n"), "{out}");
    assert_eq!(std::fs::metadata(&bin).unwrap().len(), bin_len);
    let out = ok(&root.0, &["validate"]);
    assert!(!out.contains("repaired") && out.ends_with("OK\n"), "{out}");
}

#[test]
fn validate_reports_missing_sequences_exactly() {
    let root = TempRoot::new("missing");
    let (all, strings) = {
        let mut strings = ib_stream::tickjson::LocalStrings::default();
        let recs = epoch_records(1000, T0, 1_000_000, &mut strings, false);
        (recs, strings)
    };
    // Sequences 200..=209 are lost without a gap record.
    let kept: Vec<_> = all
        .iter()
        .copied()
        .filter(|r| !(200..=209).contains(&r.seq))
        .collect();
    write_store(&root.0, EPOCH_A, &kept, &strings);
    let o = storage(&root.0, &["validate"]);
    assert!(!o.status.success());
    let out = text(&o.stdout);
    for f in ["jsonl", "binary"] {
        assert!(
            out.contains(&format!(
                "{f}: epoch {EPOCH_A:016x}: UNCOVERED seq 200..=209"
            )),
            "{out}"
        );
    }
}
