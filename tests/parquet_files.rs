//! `storage export --format parquet` and `studies bars --format parquet`, run as the real
//! binary over the standard store (two epochs, a gap): the files read back with the parquet
//! crate's reader hold the rows of the CSV of the same command, typed. (The cell-by-cell
//! comparison of every column is in the unit tests of `src/columnar/`; pandas reads the
//! same files in `python/tests/test_parquet.py`.) The standard store spans 2025-11-22
//! 08:00 to about 10:40 UTC.

mod storage_query_support;

use std::path::Path;
use std::process::{Command, Output};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampNanosecondType, UInt64Type};
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use storage_query_support::*;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ib-stream"))
        .args(args)
        .env_remove("IB_STREAM_STORAGE_PATH")
        .output()
        .expect("run ib-stream")
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The file as one batch (these files are far smaller than the batch size asked for).
fn read(path: &Path) -> RecordBatch {
    let f = std::fs::File::open(path).unwrap();
    let mut batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .with_batch_size(1 << 20)
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(batches.len(), 1);
    batches.remove(0)
}

fn col<'a>(b: &'a RecordBatch, name: &str) -> &'a dyn Array {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_ref()
}

fn f64s(b: &RecordBatch, name: &str) -> Vec<Option<f64>> {
    col(b, name).as_primitive::<Float64Type>().iter().collect()
}

fn csv_f64s(rows: &[Vec<&str>], i: usize) -> Vec<Option<f64>> {
    rows.iter()
        .map(|r| (!r[i].is_empty()).then(|| r[i].parse().unwrap()))
        .collect()
}

#[test]
fn export_parquet_holds_the_csv_rows_typed() {
    let root = TempRoot::new("parquet-export");
    standard_store(&root.0);
    let s = root.0.to_str().unwrap();
    let base = [
        "storage",
        "--storage",
        s,
        "export",
        "--con-id",
        "711280073",
        "--start",
        "2000-01-01",
    ];
    let csv = ok(&[&base[..], &["--format", "csv"]].concat());
    let file = root.0.join("ticks.parquet");
    let out = ok(&[
        &base[..],
        &["--format", "parquet", "--out", file.to_str().unwrap()],
    ]
    .concat());
    assert_eq!(out, "", "nothing on stdout with --out");
    let b = read(&file);
    // Plain CSV here: the standard store's strings hold no comma or quote.
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(b.num_rows(), rows.len());
    assert!(rows.len() > 3000);
    let ts: Vec<i64> = col(&b, "ts_recv")
        .as_primitive::<TimestampNanosecondType>()
        .values()
        .to_vec();
    let want: Vec<i64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    assert_eq!(ts, want);
    let seq: Vec<u64> = col(&b, "seq")
        .as_primitive::<UInt64Type>()
        .values()
        .to_vec();
    let want: Vec<u64> = rows.iter().map(|r| r[2].parse().unwrap()).collect();
    assert_eq!(seq, want);
    let kinds = kind_names(&b);
    let want: Vec<String> = rows.iter().map(|r| r[4].to_string()).collect();
    assert_eq!(kinds, want);
    assert!(kinds.iter().any(|k| k == "last") && kinds.iter().any(|k| k == "bid_ask"));
    assert_eq!(f64s(&b, "price"), csv_f64s(&rows, 5));
    assert_eq!(f64s(&b, "bid_price"), csv_f64s(&rows, 7));
    assert_eq!(f64s(&b, "ask_size"), csv_f64s(&rows, 10));

    // Parquet needs a file.
    let o = run(&[&base[..], &["--format", "parquet"]].concat());
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--out"));
}

fn kind_names(b: &RecordBatch) -> Vec<String> {
    let d = col(b, "kind").as_dictionary::<arrow_array::types::Int8Type>();
    let values = d.values().as_string::<i32>();
    d.keys()
        .values()
        .iter()
        .map(|k| values.value(*k as usize).to_string())
        .collect()
}

#[test]
fn bars_parquet_holds_the_csv_bars_with_the_gap() {
    let root = TempRoot::new("parquet-bars");
    standard_store(&root.0);
    let s = root.0.to_str().unwrap();
    let base = [
        "studies",
        "bars",
        "--con-id",
        "711280073",
        "--storage",
        s,
        "--from",
        "2025-11-22T07:00:00Z",
        "--to",
        "2025-11-22T12:00:00Z",
        "--size",
        "5m",
        "--tz",
        "UTC",
    ];
    let csv = ok(&[&base[..], &["--format", "csv"]].concat());
    let file = root.0.join("bars.parquet");
    ok(&[
        &base[..],
        &["--format", "parquet", "--out", file.to_str().unwrap()],
    ]
    .concat());
    let b = read(&file);
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(b.num_rows(), rows.len());
    assert!(rows.len() > 10);
    let start: Vec<i64> = col(&b, "start")
        .as_primitive::<TimestampNanosecondType>()
        .values()
        .to_vec();
    let want: Vec<i64> = rows
        .iter()
        .map(|r| r[0].parse::<jiff::Timestamp>().unwrap().as_nanosecond() as i64)
        .collect();
    assert_eq!(start, want);
    for (name, i) in [("open", 2), ("close", 5), ("volume", 6), ("vwap", 8)] {
        assert_eq!(f64s(&b, name), csv_f64s(&rows, i), "{name}");
    }
    let count: Vec<u64> = col(&b, "count")
        .as_primitive::<UInt64Type>()
        .values()
        .to_vec();
    let want: Vec<u64> = rows.iter().map(|r| r[7].parse().unwrap()).collect();
    assert_eq!(count, want);
    // The store's gap is flagged, with its range, in both.
    let gap: Vec<bool> = col(&b, "gap").as_boolean().values().iter().collect();
    let want: Vec<bool> = rows.iter().map(|r| r[10] == "true").collect();
    assert_eq!(gap, want);
    assert!(
        gap.iter().any(|g| *g),
        "the standard store has a gap:\n{csv}"
    );
    let from = col(&b, "gap_from").as_primitive::<TimestampNanosecondType>();
    for (i, r) in rows.iter().enumerate() {
        let want = (!r[11].is_empty())
            .then(|| r[11].parse::<jiff::Timestamp>().unwrap().as_nanosecond() as i64);
        assert_eq!(from.is_valid(i).then(|| from.value(i)), want, "row {i}");
    }

    // Parquet is for bars.
    let o = run(&[
        "studies",
        "delta",
        "--con-id",
        "711280073",
        "--storage",
        s,
        "--from",
        "2025-11-22T07:00:00Z",
        "--to",
        "2025-11-22T12:00:00Z",
        "--format",
        "parquet",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bars"));
}

#[test]
fn bars_parquet_from_a_bad_input_leaves_no_file() {
    let root = TempRoot::new("parquet-bad-input");
    let file = root.0.join("bars.parquet");
    let shm = format!("IB_STREAM_SHM_DIR={}", root.0.join("no-ring").display());
    let o = run(&[
        "--set",
        &shm,
        "studies",
        "bars",
        "--con-id",
        "711280073",
        "--ring",
        "--format",
        "parquet",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no such shared-memory file"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!file.exists(), "no empty file under the name asked for");
    let partial = root.0.join("bars.parquet.partial");
    assert!(!partial.exists(), "nor a partial one beside it");
}
