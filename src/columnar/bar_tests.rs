use arrow_array::cast::AsArray;

use super::*;
use crate::columnar::ParquetSink;
use crate::columnar::csv_check::{assert_matches_csv, read};
use crate::studies::bars::{BarAggregator, BarSize, BarSource};
use crate::studies::clock::Clock;
use crate::studies::output::{Format, RowWriter};
use crate::studies::test_util::{quote, run, trade};
use crate::studies::{Event, Gap};

const M: i64 = 60_000_000; // one minute in µs
const T0: i64 = 1_767_623_400_000_000; // 2026-01-05T14:30:00Z

/// Filled minute bars over trades with a gap (lost sequences 3..=9) and a quiet minute.
fn bars() -> Vec<Bar> {
    let evs = [
        Event::Tick(trade(1, T0 + 1, 2_100_025, 2)),
        Event::Tick(quote(2, T0 + 2, 2_100_000, 2_100_050)),
        Event::Tick(trade(3, T0 + 20_000_000, 2_100_050, 3)),
        Event::Gap(Gap {
            from_us: T0 + 30_000_000,
            to_us: None,
            first_seq: Some(3),
            last_seq: Some(9),
        }),
        Event::Tick(trade(10, T0 + M + 7, 2_099_975, 1)),
        // The third minute has no trade: a filled bar without prices.
        Event::Tick(trade(11, T0 + 3 * M + 1, 2_100_100, 5)),
    ];
    let mut a = BarAggregator::new(BarSize::Time(M), BarSource::Trades, true, Clock::utc());
    run(&mut a, &evs)
}

#[test]
fn bars_read_back_equal_their_csv() {
    let bars = bars();
    // The file must exercise what the schema has to carry: gaps, nulls, an open bar.
    assert!(
        bars.iter()
            .any(|b| b.gap.is_some_and(|g| g.to_us.is_some()))
    );
    assert!(bars.iter().any(|b| b.open.is_none()));
    assert!(bars.iter().any(|b| !b.is_final));

    let mut csv = RowWriter::new(Format::Csv, Clock::utc());
    let mut sink = ParquetSink::new(Vec::new(), bar_schema(), BarColumns::default()).unwrap();
    for b in &bars {
        csv.row(b);
        sink.columns().push(b);
    }
    let mut text = Vec::new();
    csv.flush(&mut text).unwrap();
    let batches = read(sink.close().unwrap());
    assert_matches_csv(&batches, &String::from_utf8(text).unwrap());

    // Typed as the schema says (what pandas turns into datetime64[ns, UTC] and float64).
    let b = &batches[0];
    assert_eq!(b.schema(), bar_schema());
    let start = b
        .column(0)
        .as_primitive::<arrow_array::types::TimestampNanosecondType>();
    assert_eq!(start.value(0), T0 * 1000);
    let open = b
        .column(2)
        .as_primitive::<arrow_array::types::Float64Type>();
    assert_eq!(open.value(0), 21_000.25);
}

#[test]
fn many_bars_span_several_batches() {
    let bar = bars()[0];
    let n = crate::columnar::BATCH_ROWS + 10;
    let mut sink = ParquetSink::new(Vec::new(), bar_schema(), BarColumns::default()).unwrap();
    for i in 0..n {
        let mut b = bar;
        b.count = i as u64;
        sink.columns().push(&b);
        sink.flush_full().unwrap();
    }
    let batches = read(sink.close().unwrap());
    let counts: Vec<u64> = batches
        .iter()
        .flat_map(|b| {
            b.column(7)
                .as_primitive::<arrow_array::types::UInt64Type>()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(counts, (0..n as u64).collect::<Vec<_>>());
}
