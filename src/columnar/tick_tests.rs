use super::*;
use crate::columnar::ParquetSink;
use crate::columnar::csv_check::{assert_matches_csv, read};
use crate::ipc::{Quote, Trade};
use crate::storage::cli::{CSV_HEADER, csv_row};
use crate::tickjson::{LocalStrings, StringIntern};

const T0: i64 = 1_767_623_400_123_456_789; // ns

/// One record of every shape the export meets: a trade with exchange and conditions, a
/// one-sided quote, a midpoint, L1 price/size/generic/string ticks with flags, a gap.
fn records(strings: &mut LocalStrings) -> Vec<Record> {
    let mut v = Vec::new();
    let mut t = Record::trade(
        false,
        7,
        T0 - 900,
        Trade {
            price: 21_000_250_000_000,
            size: 3 * SIZE_SCALE,
            exchange_id: strings.intern(b"CME"),
            conditions_id: strings.intern(b"a,\"b\""),
        },
    );
    t.flags = flags::UNREPORTED;
    v.push(t);
    v.push(Record::quote(
        7,
        UNDEF_I64,
        Quote {
            bid_price: 21_000_000_000_000,
            ask_price: UNDEF_I64,
            bid_size: 12_345_678,
            ask_size: UNDEF_I64,
        },
    ));
    v.push(Record::mid_point(7, T0, 21_000_125_000_000));
    let mut l1 = Record::new(RecordKind::L1Price);
    l1.tick_type = 4;
    l1.body = [21_000_500_000_000, 2 * SIZE_SCALE, 0, 0];
    l1.flags = flags::DELAYED | flags::CAN_AUTO_EXECUTE | flags::PRE_OPEN;
    v.push(l1);
    let mut size = Record::new(RecordKind::L1Size);
    size.tick_type = 8;
    size.body[0] = 1_234 * SIZE_SCALE;
    v.push(size);
    let mut generic = Record::new(RecordKind::L1Generic);
    generic.tick_type = 49;
    generic.body[0] = -1_500_000_000;
    v.push(generic);
    let mut text = Record::new(RecordKind::L1String);
    text.tick_type = 45;
    text.body[0] = i64::from(strings.intern(b"1767623400"));
    v.push(text);
    let mut gap = Record::new(RecordKind::Gap);
    gap.body = [10, 12, T0 - 5_000_000, T0 - 1_000];
    v.push(gap);
    for (i, r) in v.iter_mut().enumerate() {
        r.seq = 100 + i as u64;
        r.ts_recv = T0 + i as i64 * 1_000;
        if r.kind() != Some(RecordKind::Gap) {
            r.instrument_id = 7;
        }
    }
    v
}

#[test]
fn ticks_read_back_equal_the_csv_export() {
    let mut strings = LocalStrings::default();
    let recs = records(&mut strings);
    let mut csv = format!("{CSV_HEADER}\n").into_bytes();
    let mut sink = ParquetSink::new(Vec::new(), tick_schema(), TickColumns::default()).unwrap();
    for r in &recs {
        csv_row(r, &strings, &mut csv);
        csv.push(b'\n');
        sink.columns().push(r, &strings);
    }
    let batches = read(sink.close().unwrap());
    let csv = String::from_utf8(csv).unwrap();
    assert_matches_csv(&batches, &csv);
    // The cases above are all there (a quoted CSV field, flags, a gap's JSON).
    assert!(
        csv.contains("\"a,\"\"b\"\"\"") && csv.contains("dl|cae|po"),
        "{csv}"
    );
    assert!(csv.contains("\"{\"\"") && csv.contains(",upt\n"), "{csv}");
    assert_eq!(batches[0].schema(), tick_schema());
}

#[test]
fn fields_say_which_column_each_kind_fills() {
    let mut strings = LocalStrings::default();
    let recs = records(&mut strings);
    let f = TickFields::of(&recs[0], &strings);
    assert_eq!(
        (f.kind, f.price, f.size, f.exchange),
        (
            "last",
            Some(21_000_250_000_000),
            Some(3 * SIZE_SCALE),
            Some(&b"CME"[..])
        )
    );
    assert_eq!(f.flags.as_slice(), ["upt"]);
    let q = TickFields::of(&recs[1], &strings);
    assert_eq!(
        (q.ts_event, q.bid_price, q.ask_price, q.price),
        (None, Some(21_000_000_000_000), None, None)
    );
    let g = TickFields::of(&recs[5], &strings);
    assert_eq!(
        (g.field, g.value),
        (Some(49), Some(TickValue::Fixed(-1_500_000_000)))
    );
    assert!(matches!(
        TickFields::of(&recs[7], &strings).value,
        Some(TickValue::Json(_))
    ));
}
