//! A stored record as typed columns: [`TickFields`] says which column each kind fills (the
//! CSV of `storage export` and the Parquet file below both write from it), [`tick_schema`]
//! is the Arrow schema of a tick, [`TickColumns`] builds its arrays.

use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_array::builder::{
    ArrayBuilder, Float64Builder, Int16Builder, StringBuilder, StringDictionaryBuilder,
    TimestampNanosecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::types::Int8Type;
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use super::{Columns, fixed_f64, timestamp_type};
use crate::ipc::{PRICE_SCALE, Record, RecordKind, SIZE_SCALE, UNDEF_I64, flags};
use crate::tickjson::{self, StringLookup};

/// The `value` column: what a kind without a price/size column says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickValue<'a> {
    /// A generic tick's number ([`PRICE_SCALE`] fixed point).
    Fixed(i64),
    /// A string tick's text.
    Text(&'a [u8]),
    /// A system record (gap, status, ...) as its JSON object.
    Json(Vec<u8>),
}

/// The flag names set on a record, in the CSV's order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlagNames {
    names: [&'static str; 8],
    n: usize,
}

impl FlagNames {
    /// The names.
    pub fn as_slice(&self) -> &[&'static str] {
        &self.names[..self.n]
    }

    fn of(r: &Record, kind: Option<RecordKind>) -> FlagNames {
        let by_kind: &[(u16, &str)] = match kind {
            Some(RecordKind::TbtLast | RecordKind::TbtAllLast) => {
                &[(flags::PAST_LIMIT, "pl"), (flags::UNREPORTED, "upt")]
            }
            Some(RecordKind::TbtBidAsk) => {
                &[(flags::BID_PAST_LOW, "bpl"), (flags::ASK_PAST_HIGH, "aph")]
            }
            Some(RecordKind::L1Price) => &[
                (flags::CAN_AUTO_EXECUTE, "cae"),
                (flags::L1_PAST_LIMIT, "pl"),
                (flags::PRE_OPEN, "po"),
            ],
            _ => &[],
        };
        let common = [
            (flags::DELAYED, "dl"),
            (flags::FROZEN, "fz"),
            (flags::SNAPSHOT, "snap"),
            (flags::STALE, "stale"),
            (flags::BACKFILL, "backfill"),
        ];
        let mut f = FlagNames::default();
        for (bit, name) in common.iter().chain(by_kind) {
            if r.has_flag(*bit) {
                f.names[f.n] = name;
                f.n += 1;
            }
        }
        f
    }
}

/// The columns one record fills; `None` is an empty cell (also for a value IB did not send).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickFields<'a> {
    /// Kind name (`unknown` for a kind this build does not know).
    pub kind: &'static str,
    /// Receive time, ns.
    pub ts_recv: i64,
    /// Exchange time, ns.
    pub ts_event: Option<i64>,
    /// Trade, midpoint or L1 price.
    pub price: Option<i64>,
    /// Trade or L1 size.
    pub size: Option<i64>,
    /// Bid price.
    pub bid_price: Option<i64>,
    /// Bid size.
    pub bid_size: Option<i64>,
    /// Ask price.
    pub ask_price: Option<i64>,
    /// Ask size.
    pub ask_size: Option<i64>,
    /// A trade's exchange.
    pub exchange: Option<&'a [u8]>,
    /// A trade's conditions.
    pub conditions: Option<&'a [u8]>,
    /// An L1 tick's IB tick type.
    pub field: Option<u8>,
    /// Generic, string and system records' value.
    pub value: Option<TickValue<'a>>,
    /// Flags set.
    pub flags: FlagNames,
}

/// The string `id` names; an empty one is no value (the CSV cannot tell them apart).
fn text(strings: &dyn StringLookup, id: u32) -> Option<&[u8]> {
    strings.lookup(id).filter(|s| !s.is_empty())
}

impl<'a> TickFields<'a> {
    /// The columns of `r`, its strings from `strings`.
    pub fn of(r: &Record, strings: &'a dyn StringLookup) -> TickFields<'a> {
        let def = |v: i64| (v != UNDEF_I64).then_some(v);
        let kind = r.kind();
        let b = r.body;
        let mut f = TickFields {
            kind: kind.map_or("unknown", RecordKind::name),
            ts_recv: r.ts_recv,
            ts_event: def(r.ts_event),
            flags: FlagNames::of(r, kind),
            ..TickFields::default()
        };
        match kind {
            Some(RecordKind::TbtLast | RecordKind::TbtAllLast) => {
                f.price = def(b[0]);
                f.size = def(b[1]);
                f.exchange = text(strings, b[2] as u32);
                f.conditions = text(strings, (b[2] >> 32) as u32);
            }
            Some(RecordKind::TbtBidAsk) => {
                // Body order: bid price, ask price, bid size, ask size.
                f.bid_price = def(b[0]);
                f.bid_size = def(b[2]);
                f.ask_price = def(b[1]);
                f.ask_size = def(b[3]);
            }
            Some(RecordKind::TbtMidPoint) => f.price = def(b[0]),
            Some(RecordKind::L1Price) => {
                f.price = def(b[0]);
                f.size = def(b[1]);
                f.field = Some(r.tick_type);
            }
            Some(RecordKind::L1Size) => {
                f.size = def(b[0]);
                f.field = Some(r.tick_type);
            }
            Some(RecordKind::L1Generic) => {
                f.value = def(b[0]).map(TickValue::Fixed);
                f.field = Some(r.tick_type);
            }
            Some(RecordKind::L1String) => {
                f.value = text(strings, b[0] as u32).map(TickValue::Text);
                f.field = Some(r.tick_type);
            }
            _ => {
                let mut j = Vec::new();
                tickjson::encode(r, strings, &mut j);
                f.value = Some(TickValue::Json(j));
            }
        }
        f
    }
}

/// The Arrow schema of a tick: the CSV's columns, typed. Times are `TIMESTAMP(ns, UTC)`,
/// prices and sizes `f64` (the fixed point divided by its scale), the kind a dictionary.
pub fn tick_schema() -> SchemaRef {
    let f64_col = |name: &str| Field::new(name, DataType::Float64, true);
    let text = |name: &str| Field::new(name, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        Field::new("ts_recv", timestamp_type(), false),
        Field::new("ts_event", timestamp_type(), true),
        Field::new("seq", DataType::UInt64, false),
        Field::new("con_id", DataType::UInt32, false),
        Field::new(
            "kind",
            DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8)),
            false,
        ),
        f64_col("price"),
        f64_col("size"),
        f64_col("bid_price"),
        f64_col("bid_size"),
        f64_col("ask_price"),
        f64_col("ask_size"),
        text("exchange"),
        text("conditions"),
        Field::new("field", DataType::Int16, true),
        text("value"),
        text("flags"),
    ]))
}

/// Builders of [`tick_schema`]'s columns.
pub struct TickColumns {
    ts_recv: TimestampNanosecondBuilder,
    ts_event: TimestampNanosecondBuilder,
    seq: UInt64Builder,
    con_id: UInt32Builder,
    kind: StringDictionaryBuilder<Int8Type>,
    /// price, size, bid_price, bid_size, ask_price, ask_size.
    numbers: [Float64Builder; 6],
    exchange: StringBuilder,
    conditions: StringBuilder,
    field: Int16Builder,
    value: StringBuilder,
    flags: StringBuilder,
    text: Vec<u8>,
}

impl std::fmt::Debug for TickColumns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TickColumns")
            .field("pending", &self.seq.len())
            .finish()
    }
}

impl Default for TickColumns {
    fn default() -> Self {
        let ts = || TimestampNanosecondBuilder::new().with_data_type(timestamp_type());
        TickColumns {
            ts_recv: ts(),
            ts_event: ts(),
            seq: UInt64Builder::new(),
            con_id: UInt32Builder::new(),
            kind: StringDictionaryBuilder::new(),
            numbers: Default::default(),
            exchange: StringBuilder::new(),
            conditions: StringBuilder::new(),
            field: Int16Builder::new(),
            value: StringBuilder::new(),
            flags: StringBuilder::new(),
            text: Vec::new(),
        }
    }
}

fn utf8(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

impl TickColumns {
    /// Appends one record.
    pub fn push(&mut self, r: &Record, strings: &dyn StringLookup) {
        let f = TickFields::of(r, strings);
        self.ts_recv.append_value(f.ts_recv);
        self.ts_event.append_option(f.ts_event);
        self.seq.append_value(r.seq);
        self.con_id.append_value(r.instrument_id);
        self.kind.append_value(f.kind);
        let vals = [
            (f.price, PRICE_SCALE),
            (f.size, SIZE_SCALE),
            (f.bid_price, PRICE_SCALE),
            (f.bid_size, SIZE_SCALE),
            (f.ask_price, PRICE_SCALE),
            (f.ask_size, SIZE_SCALE),
        ];
        for (b, (v, scale)) in self.numbers.iter_mut().zip(vals) {
            b.append_option(v.map(|v| fixed_f64(v, scale)));
        }
        self.exchange.append_option(f.exchange.map(utf8));
        self.conditions.append_option(f.conditions.map(utf8));
        self.field.append_option(f.field.map(i16::from));
        match &f.value {
            None => self.value.append_null(),
            Some(TickValue::Fixed(v)) => {
                // The same decimal text the CSV writes.
                self.text.clear();
                tickjson::write_fixed(&mut self.text, *v, PRICE_SCALE);
                self.value.append_value(utf8(&self.text));
            }
            Some(TickValue::Text(t)) => self.value.append_value(utf8(t)),
            Some(TickValue::Json(j)) => self.value.append_value(utf8(j)),
        }
        let names = f.flags.as_slice();
        if names.is_empty() {
            self.flags.append_null();
        } else {
            self.flags.append_value(names.join("|"));
        }
    }
}

impl Columns for TickColumns {
    fn len(&self) -> usize {
        self.seq.len()
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        let [p, s, bp, bs, ap, asz] = &mut self.numbers;
        vec![
            Arc::new(self.ts_recv.finish()),
            Arc::new(self.ts_event.finish()),
            Arc::new(self.seq.finish()),
            Arc::new(self.con_id.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(p.finish()),
            Arc::new(s.finish()),
            Arc::new(bp.finish()),
            Arc::new(bs.finish()),
            Arc::new(ap.finish()),
            Arc::new(asz.finish()),
            Arc::new(self.exchange.finish()),
            Arc::new(self.conditions.finish()),
            Arc::new(self.field.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.flags.finish()),
        ]
    }
}

#[cfg(test)]
#[path = "tick_tests.rs"]
mod tests;
