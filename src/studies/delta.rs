//! Delta: each trade judged against the quote in force (the latest quote received before it,
//! by receive order, which sequence numbers make exact): at or above the ask `+size`
//! (buyer-initiated), at or below the bid `-size` (seller-initiated), strictly inside the
//! spread 0. Without a quote yet a trade counts 0 (`no_quote`).
//!
//! [`Delta`] reports per trade with the session's cumulative delta, or per time bar (buy,
//! sell and inside volume, the bar's delta and the session's cumulative delta).
//! [`MultiDelta`] reports per bar for several bar sizes at once.

use super::clock::Clock;
use super::output::{Cell, Row};
use super::{Gap, Study, Tick, TickKind};
use crate::ipc::UNDEF_I64;

/// How a trade was classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// At or above the ask.
    Buy,
    /// At or below the bid.
    Sell,
    /// Strictly inside the spread.
    Inside,
    /// No quote yet.
    NoQuote,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
            Side::Inside => "inside",
            Side::NoQuote => "no_quote",
        }
    }
}

/// The side of a trade at `price` against `bid`/`ask` (either may be undefined).
pub fn classify(price: i64, bid: i64, ask: i64) -> Side {
    if ask != UNDEF_I64 && price >= ask {
        Side::Buy
    } else if bid != UNDEF_I64 && price <= bid {
        Side::Sell
    } else if bid == UNDEF_I64 && ask == UNDEF_I64 {
        Side::NoQuote
    } else {
        Side::Inside
    }
}

/// One classified trade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaTrade {
    /// Receive time, µs.
    pub t_us: i64,
    /// Price.
    pub price: i64,
    /// Size.
    pub size: i64,
    /// The bid in force.
    pub bid: i64,
    /// The ask in force.
    pub ask: i64,
    /// The side.
    pub side: Side,
    /// This trade's delta.
    pub delta: i64,
    /// The session's cumulative delta, this trade included.
    pub cum_delta: i64,
    /// A gap was reported in this session before this trade.
    pub gap: bool,
}

/// Delta over one bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaBar {
    /// Bar size, seconds.
    pub size_s: i64,
    /// Start, µs.
    pub start_us: i64,
    /// End (exclusive), µs.
    pub end_us: i64,
    /// Volume at or above the ask.
    pub buy: i64,
    /// Volume at or below the bid.
    pub sell: i64,
    /// Volume inside the spread or without a quote.
    pub inside: i64,
    /// `buy - sell`.
    pub delta: i64,
    /// The session's cumulative delta at the bar's end.
    pub cum_delta: i64,
    /// Trades.
    pub trades: u64,
    /// The bar is over.
    pub is_final: bool,
    /// A gap was reported during the bar.
    pub gap: bool,
}

/// A delta row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaRow {
    /// Per trade.
    Trade(DeltaTrade),
    /// Per bar.
    Bar(DeltaBar),
}

/// The delta study (see the module documentation).
#[derive(Debug)]
pub struct Delta {
    clock: Clock,
    bar_us: Option<i64>,
    bid: i64,
    ask: i64,
    session_end: i64,
    cum: i64,
    gap_in_session: bool,
    cur: Option<DeltaBar>,
    gap_pending: bool,
}

impl Delta {
    /// Per trade (`bar_us` `None`) or per time bar of `bar_us`.
    pub fn new(clock: Clock, bar_us: Option<i64>) -> Delta {
        Delta {
            clock,
            bar_us,
            bid: UNDEF_I64,
            ask: UNDEF_I64,
            session_end: i64::MIN,
            cum: 0,
            gap_in_session: false,
            cur: None,
            gap_pending: false,
        }
    }

    /// The delta bar in progress (per-bar mode), not final.
    pub fn current(&self) -> Option<&DeltaBar> {
        self.cur.as_ref()
    }

    fn close_bar_before(&mut self, t_us: i64, out: &mut Vec<DeltaRow>) {
        if let Some(b) = self.cur
            && t_us >= b.end_us
        {
            out.push(DeltaRow::Bar(DeltaBar {
                is_final: true,
                ..b
            }));
            self.cur = None;
        }
    }
}

impl Study for Delta {
    type Out = DeltaRow;

    fn on_tick(&mut self, t: &Tick, out: &mut Vec<DeltaRow>) {
        self.close_bar_before(t.t_us, out);
        if t.t_us >= self.session_end {
            self.session_end = self.clock.session(t.t_us).1;
            self.cum = 0;
            self.gap_in_session = self.gap_pending;
        }
        match t.kind {
            TickKind::Quote { bid, ask, .. } => {
                self.bid = bid;
                self.ask = ask;
            }
            TickKind::Trade { price, size } => {
                let side = classify(price, self.bid, self.ask);
                let delta = match side {
                    Side::Buy => size,
                    Side::Sell => -size,
                    Side::Inside | Side::NoQuote => 0,
                };
                self.cum += delta;
                match self.bar_us {
                    None => out.push(DeltaRow::Trade(DeltaTrade {
                        t_us: t.t_us,
                        price,
                        size,
                        bid: self.bid,
                        ask: self.ask,
                        side,
                        delta,
                        cum_delta: self.cum,
                        gap: self.gap_in_session,
                    })),
                    Some(size_us) => {
                        let b = self.cur.get_or_insert_with(|| {
                            let (a, e) = self.clock.bucket(t.t_us, size_us);
                            DeltaBar {
                                size_s: size_us / 1_000_000,
                                start_us: a,
                                end_us: e,
                                buy: 0,
                                sell: 0,
                                inside: 0,
                                delta: 0,
                                cum_delta: 0,
                                trades: 0,
                                is_final: false,
                                gap: std::mem::take(&mut self.gap_pending),
                            }
                        });
                        match side {
                            Side::Buy => b.buy += size,
                            Side::Sell => b.sell += size,
                            Side::Inside | Side::NoQuote => b.inside += size,
                        }
                        b.delta += delta;
                        b.cum_delta = self.cum;
                        b.trades += 1;
                    }
                }
            }
        }
        self.gap_pending = false;
    }

    fn on_gap(&mut self, _g: &Gap, _out: &mut Vec<DeltaRow>) {
        self.gap_in_session = true;
        // The quote in force may be stale after a gap: judge no trade against it.
        self.bid = UNDEF_I64;
        self.ask = UNDEF_I64;
        match &mut self.cur {
            Some(b) => b.gap = true,
            None => self.gap_pending = true,
        }
    }

    fn on_clock(&mut self, now_us: i64, out: &mut Vec<DeltaRow>) {
        self.close_bar_before(now_us, out);
    }

    fn finish(&mut self, out: &mut Vec<DeltaRow>) {
        if let Some(b) = self.cur.take() {
            out.push(DeltaRow::Bar(b));
        }
    }
}

/// Delta bars of several sizes at once, each reported as it closes.
#[derive(Debug)]
pub struct MultiDelta {
    studies: Vec<Delta>,
}

impl MultiDelta {
    /// One delta-bar study per size (µs).
    pub fn new(clock: &Clock, sizes_us: &[i64]) -> MultiDelta {
        MultiDelta {
            studies: sizes_us
                .iter()
                .map(|s| Delta::new(clock.clone(), Some(*s)))
                .collect(),
        }
    }
}

impl Study for MultiDelta {
    type Out = DeltaRow;
    fn on_tick(&mut self, t: &Tick, out: &mut Vec<DeltaRow>) {
        for s in &mut self.studies {
            s.on_tick(t, out);
        }
    }
    fn on_gap(&mut self, g: &Gap, out: &mut Vec<DeltaRow>) {
        for s in &mut self.studies {
            s.on_gap(g, out);
        }
    }
    fn on_clock(&mut self, now_us: i64, out: &mut Vec<DeltaRow>) {
        for s in &mut self.studies {
            s.on_clock(now_us, out);
        }
    }
    fn finish(&mut self, out: &mut Vec<DeltaRow>) {
        for s in &mut self.studies {
            s.finish(out);
        }
    }
}

const TRADE_COLUMNS: &[&str] = &[
    "time",
    "price",
    "size",
    "bid",
    "ask",
    "side",
    "delta",
    "cum_delta",
    "gap",
];
const BAR_COLUMNS: &[&str] = &[
    "size_s",
    "start",
    "end",
    "buy",
    "sell",
    "inside",
    "delta",
    "cum_delta",
    "trades",
    "final",
    "gap",
];

impl Row for DeltaRow {
    fn columns(&self) -> &'static [&'static str] {
        match self {
            DeltaRow::Trade(_) => TRADE_COLUMNS,
            DeltaRow::Bar(_) => BAR_COLUMNS,
        }
    }

    fn cells(&self, out: &mut Vec<Cell>) {
        let price = |p: i64| {
            if p == UNDEF_I64 {
                Cell::Empty
            } else {
                Cell::Price(p)
            }
        };
        match self {
            DeltaRow::Trade(d) => out.extend([
                Cell::Time(d.t_us),
                Cell::Price(d.price),
                Cell::Size(d.size),
                price(d.bid),
                price(d.ask),
                Cell::Text(d.side.name()),
                Cell::Size(d.delta),
                Cell::Size(d.cum_delta),
                Cell::Bool(d.gap),
            ]),
            DeltaRow::Bar(b) => out.extend([
                Cell::Int(b.size_s),
                Cell::Time(b.start_us),
                Cell::Time(b.end_us),
                Cell::Size(b.buy),
                Cell::Size(b.sell),
                Cell::Size(b.inside),
                Cell::Size(b.delta),
                Cell::Size(b.cum_delta),
                Cell::Int(b.trades as i64),
                Cell::Bool(b.is_final),
                Cell::Bool(b.gap),
            ]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{Event, Gap};
    use super::*;

    const T0: i64 = 1_767_623_400_000_000; // 2026-01-05T14:30:00Z
    const M: i64 = 60_000_000;

    #[test]
    fn each_trade_against_the_quote_in_force() {
        let mut d = Delta::new(Clock::utc(), None);
        let evs = [
            Event::Tick(trade(1, T0, 10_000, 1)), // no quote yet: 0
            Event::Tick(quote(2, T0 + 1, 10_000, 10_002)),
            Event::Tick(trade(3, T0 + 2, 10_002, 3)), // at the ask: +3
            Event::Tick(trade(4, T0 + 3, 10_005, 1)), // above the ask: +1
            Event::Tick(trade(5, T0 + 4, 10_001, 7)), // inside: 0
            Event::Tick(trade(6, T0 + 5, 10_000, 2)), // at the bid: -2
            Event::Tick(quote(7, T0 + 6, 9_990, 9_995)),
            Event::Tick(trade(8, T0 + 7, 10_000, 4)), // above the new ask: +4
            Event::Tick(trade(9, T0 + 8, 9_980, 5)),  // below the bid: -5
        ];
        let rows = run(&mut d, &evs);
        let got: Vec<(&str, i64, i64)> = rows
            .iter()
            .map(|r| match r {
                DeltaRow::Trade(t) => (t.side.name(), t.delta / S, t.cum_delta / S),
                DeltaRow::Bar(_) => unreachable!(),
            })
            .collect();
        assert_eq!(
            got,
            [
                ("no_quote", 0, 0),
                ("buy", 3, 3),
                ("buy", 1, 4),
                ("inside", 0, 4),
                ("sell", -2, 2),
                ("buy", 4, 6),
                ("sell", -5, 1),
            ]
        );
    }

    #[test]
    fn per_bar_with_the_session_cumulative_delta_reset_at_the_session() {
        let mut d = Delta::new(Clock::utc(), Some(M));
        let day = 86_400_000_000;
        // 2026-01-05T23:59:00Z, the last minute of the UTC session.
        let late = T0 - 14 * 60 * M - 30 * M + 23 * 60 * M + 59 * M;
        let evs = [
            Event::Tick(quote(1, late, 10_000, 10_002)),
            Event::Tick(trade(2, late + 1, 10_002, 3)),
            Event::Tick(trade(3, late + 2, 10_000, 1)),
            Event::Tick(trade(4, late + 3, 10_001, 2)),
            Event::Tick(trade(5, late + M + 1, 10_002, 5)),
        ];
        let rows = run(&mut d, &evs);
        let bars: Vec<DeltaBar> = rows
            .iter()
            .map(|r| match r {
                DeltaRow::Bar(b) => *b,
                DeltaRow::Trade(_) => unreachable!(),
            })
            .collect();
        assert_eq!(bars.len(), 2);
        assert_eq!(
            (
                bars[0].buy / S,
                bars[0].sell / S,
                bars[0].inside / S,
                bars[0].delta / S
            ),
            (3, 1, 2, 2)
        );
        assert_eq!(bars[0].cum_delta / S, 2);
        assert!(bars[0].is_final);
        // Past midnight UTC: a new session, the cumulative delta starts again.
        assert_eq!(bars[1].start_us.rem_euclid(day), 0);
        assert_eq!((bars[1].delta / S, bars[1].cum_delta / S), (5, 5));
        assert!(!bars[1].is_final);
    }

    #[test]
    fn a_gap_flags_the_bar_and_forgets_the_quote() {
        let mut d = Delta::new(Clock::utc(), Some(M));
        let evs = [
            Event::Tick(quote(1, T0, 10_000, 10_002)),
            Event::Tick(trade(2, T0 + 1, 10_002, 1)),
            Event::Gap(Gap {
                from_us: T0 + 2,
                to_us: None,
                first_seq: Some(3),
                last_seq: Some(4),
            }),
            Event::Tick(trade(5, T0 + 5, 10_002, 1)),
            Event::Tick(trade(6, T0 + M, 10_002, 1)),
        ];
        let rows = run(&mut d, &evs);
        let DeltaRow::Bar(b) = rows[0] else { panic!() };
        assert!(b.gap);
        assert_eq!((b.buy / S, b.inside / S), (1, 1));
        let DeltaRow::Bar(b) = rows[1] else { panic!() };
        assert!(!b.gap);
    }

    #[test]
    fn multi_delta_reports_each_size() {
        let mut d = MultiDelta::new(&Clock::utc(), &[M, 5 * M]);
        let mut evs = vec![Event::Tick(quote(1, T0, 10_000, 10_002))];
        for i in 0..6 {
            evs.push(Event::Tick(trade(2 + i, T0 + i as i64 * M + 1, 10_002, 1)));
        }
        let rows = run(&mut d, &evs);
        let sizes: Vec<(i64, i64)> = rows
            .iter()
            .map(|r| match r {
                DeltaRow::Bar(b) => (b.size_s, b.delta / S),
                DeltaRow::Trade(_) => unreachable!(),
            })
            .collect();
        // Five 1-minute bars close, then the 5-minute bar; the last of each is open.
        assert_eq!(
            sizes,
            [
                (60, 1),
                (60, 1),
                (60, 1),
                (60, 1),
                (60, 1),
                (300, 5),
                (60, 1),
                (300, 1)
            ]
        );
    }
}
