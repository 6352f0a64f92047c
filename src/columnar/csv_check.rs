//! Test support: a Parquet file read back with the parquet crate's reader, compared cell by
//! cell with the CSV the same rows give (an empty CSV cell is a null; numbers and times are
//! compared as values, not text).

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float64Type, Int8Type, Int16Type, TimestampNanosecondType, UInt32Type, UInt64Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Every batch of the file `bytes`.
pub(crate) fn read(bytes: Vec<u8>) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// RFC 4180 fields of each line (quotes doubled inside quoted fields).
pub(crate) fn parse_csv(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|line| {
            let mut fields = vec![String::new()];
            let mut quoted = false;
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                match (c, quoted) {
                    ('"', true) if chars.peek() == Some(&'"') => {
                        chars.next();
                        fields.last_mut().unwrap().push('"');
                    }
                    ('"', _) => quoted = !quoted,
                    (',', false) => fields.push(String::new()),
                    (c, _) => fields.last_mut().unwrap().push(c),
                }
            }
            fields
        })
        .collect()
}

fn time_ns(s: &str) -> i64 {
    s.parse::<i64>().unwrap_or_else(|_| {
        let t: jiff::Timestamp = s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"));
        t.as_nanosecond() as i64
    })
}

/// The cell as the CSV would write it, for comparison; `None`: null.
fn cell(a: &dyn Array, i: usize) -> Option<String> {
    if a.is_null(i) {
        return None;
    }
    Some(match a.data_type() {
        DataType::Timestamp(..) => a
            .as_primitive::<TimestampNanosecondType>()
            .value(i)
            .to_string(),
        DataType::Float64 => format!("{:?}", a.as_primitive::<Float64Type>().value(i)),
        DataType::UInt64 => a.as_primitive::<UInt64Type>().value(i).to_string(),
        DataType::UInt32 => a.as_primitive::<UInt32Type>().value(i).to_string(),
        DataType::Int16 => a.as_primitive::<Int16Type>().value(i).to_string(),
        DataType::Boolean => a.as_boolean().value(i).to_string(),
        DataType::Utf8 => a.as_string::<i32>().value(i).to_string(),
        DataType::Dictionary(..) => {
            let d = a.as_dictionary::<Int8Type>();
            let k = d.keys().value(i) as usize;
            d.values().as_string::<i32>().value(k).to_string()
        }
        other => panic!("no comparison for {other}"),
    })
}

/// The CSV cell in the same form as [`cell`] for a column of type `t`.
fn csv_cell(t: &DataType, s: &str) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    Some(match t {
        DataType::Timestamp(..) => time_ns(s).to_string(),
        DataType::Float64 => format!("{:?}", s.parse::<f64>().unwrap()),
        _ => s.to_string(),
    })
}

/// Asserts that `batches` hold exactly the rows of `csv`: same columns (a CSV `*_ns` column
/// is the Parquet time column without the suffix), same values.
pub(crate) fn assert_matches_csv(batches: &[RecordBatch], csv: &str) {
    let rows = parse_csv(csv);
    let header = &rows[0];
    let schema = batches[0].schema();
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let csv_names: Vec<String> = header
        .iter()
        .map(|h| h.strip_suffix("_ns").unwrap_or(h).to_string())
        .collect();
    assert_eq!(names, csv_names);
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(total, rows.len() - 1, "rows");
    let mut r = 1;
    for b in batches {
        for i in 0..b.num_rows() {
            for (c, f) in schema.fields().iter().enumerate() {
                assert_eq!(
                    cell(b.column(c).as_ref(), i),
                    csv_cell(f.data_type(), &rows[r][c]),
                    "row {r} column {}: {:?}",
                    f.name(),
                    rows[r]
                );
            }
            r += 1;
        }
    }
}
