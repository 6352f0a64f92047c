//! IB's historical ticks as our records, and which historical data fills which record kind.

use ib_stream_ipc::{Quote, Record, RecordKind, Trade, flags};
use ib_stream_tws::HistTicks;

use crate::tickjson::{LocalStrings, StringIntern};

/// Nanoseconds per second.
pub const SEC_NS: i64 = 1_000_000_000;

/// The `whatToShow` that fills `kind`: TRADES for last and all_last, BID_ASK for bid_ask,
/// MIDPOINT for mid_point; `None` for kinds IB has no tick history of.
pub fn what_to_show(kind: RecordKind) -> Option<&'static str> {
    match kind {
        RecordKind::TbtLast | RecordKind::TbtAllLast => Some("TRADES"),
        RecordKind::TbtBidAsk => Some("BID_ASK"),
        RecordKind::TbtMidPoint => Some("MIDPOINT"),
        _ => None,
    }
}

/// Appends ticks `range` of a historical answer as records of `kind` for `con_id`. Both
/// times are IB's second (the only time history has); sequence and flags other than the
/// tick's own attributes are set when stored. Ticks of another kind than asked are skipped.
pub fn append_records(
    ticks: &HistTicks,
    range: std::ops::Range<usize>,
    con_id: u32,
    kind: RecordKind,
    strings: &mut LocalStrings,
    out: &mut Vec<Record>,
) {
    let ts = |secs: i64| secs.saturating_mul(SEC_NS);
    match ticks {
        HistTicks::MidPoint(t) if kind == RecordKind::TbtMidPoint => {
            for x in &t[range] {
                let mut r = Record::mid_point(con_id, ts(x.time), x.tick.price);
                r.ts_recv = r.ts_event;
                out.push(r);
            }
        }
        HistTicks::BidAsk(t) if kind == RecordKind::TbtBidAsk => {
            for x in &t[range] {
                let q = &x.tick;
                let mut r = Record::quote(
                    con_id,
                    ts(x.time),
                    Quote {
                        bid_price: q.bid_price,
                        ask_price: q.ask_price,
                        bid_size: q.bid_size,
                        ask_size: q.ask_size,
                    },
                );
                r.ts_recv = r.ts_event;
                if q.bid_past_low {
                    r.flags |= flags::BID_PAST_LOW;
                }
                if q.ask_past_high {
                    r.flags |= flags::ASK_PAST_HIGH;
                }
                out.push(r);
            }
        }
        HistTicks::Last(t) if matches!(kind, RecordKind::TbtLast | RecordKind::TbtAllLast) => {
            for x in &t[range] {
                let tr = &x.tick;
                let mut r = Record::trade(
                    kind == RecordKind::TbtAllLast,
                    con_id,
                    ts(x.time),
                    Trade {
                        price: tr.price,
                        size: tr.size,
                        exchange_id: intern_nonempty(strings, &tr.exchange),
                        conditions_id: intern_nonempty(strings, &tr.special_conditions),
                    },
                );
                r.ts_recv = r.ts_event;
                if tr.past_limit {
                    r.flags |= flags::PAST_LIMIT;
                }
                if tr.unreported {
                    r.flags |= flags::UNREPORTED;
                }
                out.push(r);
            }
        }
        _ => {}
    }
}

fn intern_nonempty(strings: &mut LocalStrings, s: &str) -> u32 {
    if s.is_empty() {
        0
    } else {
        strings.intern(s.as_bytes())
    }
}
