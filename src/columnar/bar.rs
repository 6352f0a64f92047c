//! The Arrow schema of a bar ([`bar_schema`]) and its builders ([`BarColumns`]): the columns
//! of the CSV of `studies bars`, typed. A bar that touches a gap has `gap` set and the gap's
//! range and lost sequences; times are the bars' µs as `TIMESTAMP(ns, UTC)`.

use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Float64Builder, TimestampNanosecondBuilder, UInt64Builder,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use super::{Columns, fixed_f64, timestamp_type};
use crate::ipc::{PRICE_SCALE, SIZE_SCALE};
use crate::studies::bars::Bar;

/// The Arrow schema of a bar.
pub fn bar_schema() -> SchemaRef {
    let ts = |name: &str, nullable| Field::new(name, timestamp_type(), nullable);
    let price = |name: &str| Field::new(name, DataType::Float64, true);
    Arc::new(Schema::new(vec![
        ts("start", false),
        ts("end", false),
        price("open"),
        price("high"),
        price("low"),
        price("close"),
        Field::new("volume", DataType::Float64, false),
        Field::new("count", DataType::UInt64, false),
        price("vwap"),
        Field::new("final", DataType::Boolean, false),
        Field::new("gap", DataType::Boolean, false),
        ts("gap_from", true),
        ts("gap_to", true),
        Field::new("gap_first_seq", DataType::UInt64, true),
        Field::new("gap_last_seq", DataType::UInt64, true),
    ]))
}

/// Builders of [`bar_schema`]'s columns.
#[derive(Debug)]
pub struct BarColumns {
    start: TimestampNanosecondBuilder,
    end: TimestampNanosecondBuilder,
    /// open, high, low, close.
    ohlc: [Float64Builder; 4],
    volume: Float64Builder,
    count: UInt64Builder,
    vwap: Float64Builder,
    is_final: BooleanBuilder,
    gap: BooleanBuilder,
    gap_from: TimestampNanosecondBuilder,
    gap_to: TimestampNanosecondBuilder,
    gap_first_seq: UInt64Builder,
    gap_last_seq: UInt64Builder,
}

impl Default for BarColumns {
    fn default() -> Self {
        let ts = || TimestampNanosecondBuilder::new().with_data_type(timestamp_type());
        BarColumns {
            start: ts(),
            end: ts(),
            ohlc: Default::default(),
            volume: Float64Builder::new(),
            count: UInt64Builder::new(),
            vwap: Float64Builder::new(),
            is_final: BooleanBuilder::new(),
            gap: BooleanBuilder::new(),
            gap_from: ts(),
            gap_to: ts(),
            gap_first_seq: UInt64Builder::new(),
            gap_last_seq: UInt64Builder::new(),
        }
    }
}

/// µs to ns; a time past year 2262 (not a market time) saturates rather than wraps.
fn ns(us: i64) -> i64 {
    us.saturating_mul(1000)
}

impl BarColumns {
    /// Appends one bar.
    pub fn push(&mut self, b: &Bar) {
        let price = |p: Option<i64>| p.map(|p| fixed_f64(p, PRICE_SCALE));
        self.start.append_value(ns(b.start_us));
        self.end.append_value(ns(b.end_us));
        for (col, v) in self.ohlc.iter_mut().zip([b.open, b.high, b.low, b.close]) {
            col.append_option(price(v));
        }
        self.volume.append_value(fixed_f64(b.volume, SIZE_SCALE));
        self.count.append_value(b.count);
        self.vwap.append_option(price(b.vwap()));
        self.is_final.append_value(b.is_final);
        let g = b.gap;
        self.gap.append_value(g.is_some());
        self.gap_from.append_option(g.map(|g| ns(g.from_us)));
        self.gap_to.append_option(g.and_then(|g| g.to_us).map(ns));
        self.gap_first_seq
            .append_option(g.and_then(|g| g.first_seq));
        self.gap_last_seq.append_option(g.and_then(|g| g.last_seq));
    }
}

impl Columns for BarColumns {
    fn len(&self) -> usize {
        self.count.len()
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        let [o, h, l, c] = &mut self.ohlc;
        vec![
            Arc::new(self.start.finish()),
            Arc::new(self.end.finish()),
            Arc::new(o.finish()),
            Arc::new(h.finish()),
            Arc::new(l.finish()),
            Arc::new(c.finish()),
            Arc::new(self.volume.finish()),
            Arc::new(self.count.finish()),
            Arc::new(self.vwap.finish()),
            Arc::new(self.is_final.finish()),
            Arc::new(self.gap.finish()),
            Arc::new(self.gap_from.finish()),
            Arc::new(self.gap_to.finish()),
            Arc::new(self.gap_first_seq.finish()),
            Arc::new(self.gap_last_seq.finish()),
        ]
    }
}

#[cfg(test)]
#[path = "bar_tests.rs"]
mod tests;
