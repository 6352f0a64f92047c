//! Studies and bars (`ib-stream studies <study>`): sans-IO engines that take ticks in and give
//! rows out, with the original ib-studies' definitions and defaults
//! (`/work/shared/reference/studies.md`).
//!
//! Every study implements [`Study`]: the caller feeds [`Tick`]s and [`Gap`]s in receive order,
//! may advance the clock ([`Study::on_clock`], so a bar closes when its interval is over even
//! if no tick follows), and calls [`Study::finish`] at the end. A study does no I/O and reads
//! no clock: the three inputs of the command (the ring, a remote server, storage) all reduce
//! to the same [`Tick`] sequence ([`input`]), so the same ticks give the same rows whatever
//! their source.
//!
//! Times are receive times (`ts_recv`) in microseconds, the resolution every input shares
//! (the JSON of the web API and of storage keeps microseconds). Prices and sizes stay the
//! records' fixed point ([`crate::ipc::PRICE_SCALE`], [`crate::ipc::SIZE_SCALE`]).

pub mod bars;
pub mod bollinger;
pub mod cli;
pub mod clock;
pub mod delta;
pub mod input;
pub mod output;
pub mod passthrough;
pub mod vwap;

use crate::ipc::{Record, RecordKind, UNDEF_I64};

pub use output::{Cell, Row};

/// One market-data tick of the contract studied, as every input delivers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tick {
    /// Ring sequence (per engine run).
    pub seq: u64,
    /// Receive time, µs since the Unix epoch.
    pub t_us: i64,
    /// What the tick says.
    pub kind: TickKind,
}

/// The part of a tick the studies use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TickKind {
    /// A trade: price ([`crate::ipc::PRICE_SCALE`]) and size ([`crate::ipc::SIZE_SCALE`]).
    Trade {
        /// Price.
        price: i64,
        /// Size.
        size: i64,
    },
    /// A quote; a side IB did not send is [`UNDEF_I64`].
    Quote {
        /// Bid price.
        bid: i64,
        /// Ask price.
        ask: i64,
        /// Bid size.
        bid_size: i64,
        /// Ask size.
        ask_size: i64,
    },
}

/// Data may be missing between `from_us` and `to_us` (open-ended until the next tick when
/// `to_us` is `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    /// Start of the gap, µs.
    pub from_us: i64,
    /// End of the gap, µs; `None`: until the next tick.
    pub to_us: Option<i64>,
    /// First lost sequence, when known.
    pub first_seq: Option<u64>,
    /// Last lost sequence, when known.
    pub last_seq: Option<u64>,
}

/// Which trade stream the studies read: tick-by-tick `last` (the default, what the engine
/// records for MNQ) or `all_last` (every exchange's prints). Never both: a trade would count
/// twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TradeKind {
    /// Tick-by-tick Last.
    #[default]
    Last,
    /// Tick-by-tick AllLast.
    AllLast,
}

impl TradeKind {
    /// The record kind.
    pub fn record_kind(self) -> RecordKind {
        match self {
            TradeKind::Last => RecordKind::TbtLast,
            TradeKind::AllLast => RecordKind::TbtAllLast,
        }
    }
}

/// A study: ticks and gaps in, rows out (see the module documentation).
pub trait Study {
    /// The rows it writes.
    type Out: Row;
    /// One tick, in receive order.
    fn on_tick(&mut self, t: &Tick, out: &mut Vec<Self::Out>);
    /// Data may be missing here.
    fn on_gap(&mut self, _g: &Gap, _out: &mut Vec<Self::Out>) {}
    /// The time is now `now_us` (no tick before it is still to come): bars that ended close.
    fn on_clock(&mut self, _now_us: i64, _out: &mut Vec<Self::Out>) {}
    /// The input ended: rows still open are written (not final).
    fn finish(&mut self, _out: &mut Vec<Self::Out>) {}
}

/// What a record means to the studies: a tick, a gap, or nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A tick of the contract.
    Tick(Tick),
    /// A gap.
    Gap(Gap),
}

/// Floor division of ns to µs (as the JSON of the web API and storage write `st`).
pub fn ns_to_us(ns: i64) -> i64 {
    ns.div_euclid(1000)
}

/// The study event for a ring or storage record of `con_id`, or `None` for a record the
/// studies ignore (other contracts and kinds, trades of the other trade kind, a trade without
/// a price or size).
pub fn event_of(rec: &Record, con_id: u32, trades: TradeKind) -> Option<Event> {
    // On the kind byte itself: this runs for every record of a study's input.
    let kind = rec.kind;
    if kind == RecordKind::Gap as u8 {
        if rec.instrument_id != 0 && rec.instrument_id != con_id {
            return None;
        }
        let defined = |v: i64| (v != UNDEF_I64 && v > 0).then_some(v as u64);
        let from = rec.body[2];
        let to = rec.body[3];
        let (first_seq, last_seq) = if rec.body[0] == 0 && rec.body[1] == 0 {
            (None, None)
        } else {
            (defined(rec.body[0]), defined(rec.body[1]))
        };
        return Some(Event::Gap(Gap {
            from_us: if from == UNDEF_I64 {
                ns_to_us(rec.ts_recv)
            } else {
                ns_to_us(from)
            },
            to_us: (to != UNDEF_I64).then(|| ns_to_us(to)),
            first_seq,
            last_seq,
        }));
    }
    if rec.instrument_id != con_id {
        return None;
    }
    let b = &rec.body;
    let kind = if kind == trades.record_kind() as u8 {
        if b[0] == UNDEF_I64 || b[1] == UNDEF_I64 {
            return None;
        }
        TickKind::Trade {
            price: b[0],
            size: b[1],
        }
    } else if kind == RecordKind::TbtBidAsk as u8 {
        // Body order: bid price, ask price, bid size, ask size.
        TickKind::Quote {
            bid: b[0],
            ask: b[1],
            bid_size: b[2],
            ask_size: b[3],
        }
    } else {
        return None;
    };
    Some(Event::Tick(Tick {
        seq: rec.seq,
        t_us: ns_to_us(rec.ts_recv),
        kind,
    }))
}

/// The record kinds the studies read (for storage queries and ring filters).
pub fn kinds(trades: TradeKind) -> [RecordKind; 3] {
    [trades.record_kind(), RecordKind::TbtBidAsk, RecordKind::Gap]
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    pub(crate) const P: i64 = crate::ipc::PRICE_SCALE;
    pub(crate) const S: i64 = crate::ipc::SIZE_SCALE;

    /// A trade at `t_us` of `price` (whole units / 100) and `size` (whole units).
    pub(crate) fn trade(seq: u64, t_us: i64, price_cents: i64, size: i64) -> Tick {
        Tick {
            seq,
            t_us,
            kind: TickKind::Trade {
                price: price_cents * (P / 100),
                size: size * S,
            },
        }
    }

    pub(crate) fn quote(seq: u64, t_us: i64, bid_cents: i64, ask_cents: i64) -> Tick {
        Tick {
            seq,
            t_us,
            kind: TickKind::Quote {
                bid: bid_cents * (P / 100),
                ask: ask_cents * (P / 100),
                bid_size: S,
                ask_size: S,
            },
        }
    }

    /// Runs a study over events and returns every row.
    pub(crate) fn run<S: Study>(s: &mut S, evs: &[Event]) -> Vec<S::Out> {
        let mut out = Vec::new();
        for e in evs {
            match e {
                Event::Tick(t) => s.on_tick(t, &mut out),
                Event::Gap(g) => s.on_gap(g, &mut out),
            }
        }
        s.finish(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::{Quote, Trade};

    #[test]
    fn records_become_ticks_of_the_contract_and_kind_asked_for() {
        let t = Trade {
            price: 21_000_250_000_000,
            size: 3 * crate::ipc::SIZE_SCALE,
            exchange_id: 0,
            conditions_id: 0,
        };
        let mut r = Record::trade(false, 7, 5, t);
        r.seq = 9;
        r.ts_recv = 1_234_567;
        assert_eq!(
            event_of(&r, 7, TradeKind::Last),
            Some(Event::Tick(Tick {
                seq: 9,
                t_us: 1234,
                kind: TickKind::Trade {
                    price: t.price,
                    size: t.size
                }
            }))
        );
        assert_eq!(event_of(&r, 8, TradeKind::Last), None);
        assert_eq!(event_of(&r, 7, TradeKind::AllLast), None);
        let q = Record::quote(
            7,
            5,
            Quote {
                bid_price: 1,
                ask_price: 2,
                bid_size: 3,
                ask_size: 4,
            },
        );
        assert!(matches!(
            event_of(&q, 7, TradeKind::Last),
            Some(Event::Tick(Tick {
                kind: TickKind::Quote { bid: 1, ask: 2, .. },
                ..
            }))
        ));
        let mut g = Record::new(RecordKind::Gap);
        g.body = [10, 12, 5_000, 9_000];
        assert_eq!(
            event_of(&g, 7, TradeKind::Last),
            Some(Event::Gap(Gap {
                from_us: 5,
                to_us: Some(9),
                first_seq: Some(10),
                last_seq: Some(12)
            }))
        );
        g.instrument_id = 8;
        assert_eq!(event_of(&g, 7, TradeKind::Last), None);
    }
}
