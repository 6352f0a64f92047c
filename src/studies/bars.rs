//! Bars: OHLCV, trade count and VWAP by time, tick count or volume, of trades or of the
//! bid, ask or mid of quotes.
//!
//! [`BarAggregator`] is incremental: [`BarAggregator::current`] is the bar in progress (it
//! changes with every tick), a bar handed out by `on_tick`/`on_clock` is final. That is what a
//! live bars endpoint needs (history then live, the current bar updating), and what the
//! command prints.
//!
//! Rules:
//! - A time bar is `[start, end)` of the exchange clock ([`super::clock`]); it closes when a
//!   tick or the clock reaches its end. Intervals without a price have no bar, unless `fill`
//!   is set or the interval touches a gap: then an empty bar (no OHLC, volume 0) is written, so
//!   a gap is never silent.
//! - A tick bar closes at its `n`th price, a volume bar at the trade that brings its volume to
//!   the size or beyond (that trade is wholly in it); their `start`/`end` are the times of
//!   their first and last tick.
//! - A bar touches a gap when the gap's time range overlaps its interval (a gap open at its
//!   end is closed by the next tick's time); it carries `gap` and the merged range of the gaps
//!   it touches. A tick or volume bar carries the gaps reported while it was in progress (or
//!   before its first tick).
//! - Quote bars (`bid`, `ask`, `mid`) take the price of each quote: close is the interval's
//!   last quote; volume is 0 and `count` counts quotes.

use super::clock::Clock;
use super::output::{Cell, Row};
use super::{Gap, Study, Tick, TickKind};
use crate::ipc::UNDEF_I64;

/// How big a bar is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarSize {
    /// A time interval, µs (1 s to 1 day).
    Time(i64),
    /// A number of prices (trades or quotes).
    Ticks(u64),
    /// A volume ([`crate::ipc::SIZE_SCALE`] fixed point).
    Volume(i64),
}

/// What a bar's prices are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BarSource {
    /// Trade prices, with volume and VWAP.
    #[default]
    Trades,
    /// Bid prices of quotes.
    Bid,
    /// Ask prices of quotes.
    Ask,
    /// Mid of bid and ask.
    Mid,
}

/// The gaps a bar touches, merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GapMark {
    /// Earliest start, µs.
    pub from_us: i64,
    /// Latest end, µs (`None`: still open).
    pub to_us: Option<i64>,
    /// Lowest first lost sequence known.
    pub first_seq: Option<u64>,
    /// Highest last lost sequence known.
    pub last_seq: Option<u64>,
}

impl GapMark {
    fn of(g: &Gap) -> GapMark {
        GapMark {
            from_us: g.from_us,
            to_us: g.to_us,
            first_seq: g.first_seq,
            last_seq: g.last_seq,
        }
    }

    fn merge(a: Option<GapMark>, g: &Gap) -> GapMark {
        let b = GapMark::of(g);
        let Some(a) = a else { return b };
        let opt = |x: Option<u64>, y: Option<u64>, f: fn(u64, u64) -> u64| match (x, y) {
            (Some(x), Some(y)) => Some(f(x, y)),
            (x, y) => x.or(y),
        };
        GapMark {
            from_us: a.from_us.min(b.from_us),
            to_us: match (a.to_us, b.to_us) {
                (Some(x), Some(y)) => Some(x.max(y)),
                _ => None,
            },
            first_seq: opt(a.first_seq, b.first_seq, u64::min),
            last_seq: opt(a.last_seq, b.last_seq, u64::max),
        }
    }
}

/// One bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Start, µs (time bars: the interval's start; others: the first tick's time).
    pub start_us: i64,
    /// End, µs (time bars: exclusive end of the interval; others: the last tick's time).
    pub end_us: i64,
    /// First price (`None`: no price in the interval).
    pub open: Option<i64>,
    /// Highest price.
    pub high: Option<i64>,
    /// Lowest price.
    pub low: Option<i64>,
    /// Last price.
    pub close: Option<i64>,
    /// Sum of trade sizes (0 for quote bars).
    pub volume: i64,
    /// Trades (quote bars: quotes).
    pub count: u64,
    /// Sum of price x size, for the VWAP.
    pub pv: i128,
    /// The gaps the bar touches.
    pub gap: Option<GapMark>,
    /// The bar is over and will not change.
    pub is_final: bool,
}

impl Bar {
    fn empty(start_us: i64, end_us: i64) -> Bar {
        Bar {
            start_us,
            end_us,
            open: None,
            high: None,
            low: None,
            close: None,
            volume: 0,
            count: 0,
            pv: 0,
            gap: None,
            is_final: false,
        }
    }

    #[inline]
    fn add(&mut self, price: i64, size: i64) {
        if self.open.is_none() {
            self.open = Some(price);
            self.high = Some(price);
            self.low = Some(price);
        } else {
            self.high = self.high.map(|h| h.max(price));
            self.low = self.low.map(|l| l.min(price));
        }
        self.close = Some(price);
        self.volume += size;
        self.count += 1;
        self.pv += i128::from(price) * i128::from(size);
    }

    /// Volume-weighted average price (price fixed point, rounded to the nearest unit), or
    /// `None` without volume.
    pub fn vwap(&self) -> Option<i64> {
        div_round(self.pv, i128::from(self.volume)).and_then(|v| i64::try_from(v).ok())
    }
}

/// `a / b` rounded to the nearest integer (halves away from zero); `None` when `b` is 0.
pub fn div_round(a: i128, b: i128) -> Option<i128> {
    if b == 0 {
        return None;
    }
    let q = a / b;
    let r = a % b;
    if 2 * r.abs() >= b.abs() {
        Some(if (a < 0) != (b < 0) { q - 1 } else { q + 1 })
    } else {
        Some(q)
    }
}

/// Turns ticks into bars (see the module documentation).
#[derive(Debug)]
pub struct BarAggregator {
    size: BarSize,
    source: BarSource,
    fill: bool,
    clock: Clock,
    cur: Option<Bar>,
    /// Time bars: the end of the last bar closed (where empty bars would start).
    next_start: Option<i64>,
    /// Gaps that may still touch a bar to come.
    gaps: Vec<Gap>,
    /// Tick/volume bars: gaps reported before the next bar's first tick.
    pending: Option<GapMark>,
}

/// Most empty bars written for one step of the clock (a gap of a week in 1-second bars
/// would otherwise be 600,000 lines); past it the empty intervals are skipped.
pub const MAX_EMPTY_BARS: usize = 10_000;

impl BarAggregator {
    /// Bars of `size` from `source`; `fill` writes empty time bars for quiet intervals.
    pub fn new(size: BarSize, source: BarSource, fill: bool, clock: Clock) -> BarAggregator {
        BarAggregator {
            size,
            source,
            fill,
            clock,
            cur: None,
            next_start: None,
            gaps: Vec::new(),
            pending: None,
        }
    }

    /// The bar in progress (not final), with the gaps it touches so far.
    pub fn current(&self) -> Option<&Bar> {
        self.cur.as_ref()
    }

    #[inline]
    fn price_of(&self, t: &Tick) -> Option<(i64, i64)> {
        match (self.source, t.kind) {
            (BarSource::Trades, TickKind::Trade { price, size }) => Some((price, size)),
            (BarSource::Bid, TickKind::Quote { bid, .. }) if bid != UNDEF_I64 => Some((bid, 0)),
            (BarSource::Ask, TickKind::Quote { ask, .. }) if ask != UNDEF_I64 => Some((ask, 0)),
            (BarSource::Mid, TickKind::Quote { bid, ask, .. })
                if bid != UNDEF_I64 && ask != UNDEF_I64 =>
            {
                Some(((bid / 2) + (ask / 2) + (bid % 2 + ask % 2) / 2, 0))
            }
            _ => None,
        }
    }

    fn touches(g: &Gap, start: i64, end: i64) -> bool {
        g.from_us < end && g.to_us.is_none_or(|to| to >= start)
    }

    fn marks(&self, start: i64, end: i64) -> Option<GapMark> {
        self.gaps
            .iter()
            .filter(|g| Self::touches(g, start, end))
            .fold(None, |m, g| Some(GapMark::merge(m, g)))
    }

    /// Writes the time bars that ended by `now`; a tick at `now` (`tick`) also ends the gaps
    /// left open (the clock alone does not: data may still be missing).
    fn advance(&mut self, now: i64, tick: bool, out: &mut Vec<Bar>) {
        if tick {
            for g in &mut self.gaps {
                if g.to_us.is_none() {
                    g.to_us = Some(now.max(g.from_us));
                }
            }
            if let Some(m) = &mut self.pending
                && m.to_us.is_none()
            {
                m.to_us = Some(now.max(m.from_us));
            }
        }
        let BarSize::Time(size) = self.size else {
            return;
        };
        if let Some(b) = self.cur
            && now >= b.end_us
        {
            let mut b = b;
            b.gap = self.marks(b.start_us, b.end_us);
            b.is_final = true;
            out.push(b);
            self.cur = None;
            self.next_start = Some(b.end_us);
        }
        if self.cur.is_none()
            && let Some(mut s) = self.next_start
        {
            let mut written = 0;
            while s < now {
                let (a, e) = self.clock.bucket(s, size);
                if e > now {
                    break;
                }
                let m = self.marks(a, e);
                if (self.fill || m.is_some()) && written < MAX_EMPTY_BARS {
                    let mut b = Bar::empty(a, e);
                    b.gap = m;
                    b.is_final = true;
                    out.push(b);
                    written += 1;
                }
                s = e;
            }
            self.next_start = Some(s);
            // Gaps wholly before every bar still to come can go.
            self.gaps.retain(|g| g.to_us.is_none_or(|to| to >= s));
        }
    }
}

impl Study for BarAggregator {
    type Out = Bar;

    #[inline]
    fn on_tick(&mut self, t: &Tick, out: &mut Vec<Bar>) {
        if let (BarSize::Time(_), Some(b)) = (self.size, &self.cur)
            && t.t_us >= b.start_us
            && t.t_us < b.end_us
            && self.gaps.is_empty()
        {
            // The common case: a tick inside the bar in progress.
            if let Some((p, s)) = self.price_of(t)
                && let Some(b) = &mut self.cur
            {
                b.add(p, s);
            }
            return;
        }
        self.advance(t.t_us, true, out);
        let Some((p, s)) = self.price_of(t) else {
            return;
        };
        match self.size {
            BarSize::Time(size) => {
                if self.cur.is_none() {
                    let (a, e) = self.clock.bucket(t.t_us, size);
                    let mut b = Bar::empty(a, e);
                    b.gap = self.marks(a, e);
                    self.cur = Some(b);
                }
                if let Some(b) = &mut self.cur {
                    b.add(p, s);
                }
            }
            BarSize::Ticks(_) | BarSize::Volume(_) => {
                let b = self.cur.get_or_insert_with(|| {
                    let mut b = Bar::empty(t.t_us, t.t_us);
                    b.gap = self.pending.take();
                    b
                });
                b.add(p, s);
                b.end_us = t.t_us;
                let full = match self.size {
                    BarSize::Ticks(n) => b.count >= n,
                    BarSize::Volume(v) => b.volume >= v,
                    BarSize::Time(_) => false,
                };
                if full {
                    let mut b = *b;
                    b.is_final = true;
                    out.push(b);
                    self.cur = None;
                }
            }
        }
    }

    fn on_gap(&mut self, g: &Gap, _out: &mut Vec<Bar>) {
        match self.size {
            BarSize::Time(_) => {
                if let Some(b) = &mut self.cur
                    && Self::touches(g, b.start_us, b.end_us)
                {
                    b.gap = Some(GapMark::merge(b.gap, g));
                }
                self.gaps.push(*g);
            }
            BarSize::Ticks(_) | BarSize::Volume(_) => match &mut self.cur {
                Some(b) => b.gap = Some(GapMark::merge(b.gap, g)),
                None => self.pending = Some(GapMark::merge(self.pending, g)),
            },
        }
    }

    fn on_clock(&mut self, now_us: i64, out: &mut Vec<Bar>) {
        self.advance(now_us, false, out);
    }

    fn finish(&mut self, out: &mut Vec<Bar>) {
        if let Some(mut b) = self.cur.take() {
            if let BarSize::Time(_) = self.size {
                b.gap = self.marks(b.start_us, b.end_us);
            }
            out.push(b);
        }
    }
}

const BAR_COLUMNS: &[&str] = &[
    "start",
    "end",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "count",
    "vwap",
    "final",
    "gap",
    "gap_from",
    "gap_to",
    "gap_first_seq",
    "gap_last_seq",
];

impl Row for Bar {
    fn columns(&self) -> &'static [&'static str] {
        BAR_COLUMNS
    }

    fn cells(&self, out: &mut Vec<Cell>) {
        let price = |p: Option<i64>| p.map_or(Cell::Empty, Cell::Price);
        let g = self.gap;
        out.extend([
            Cell::Time(self.start_us),
            Cell::Time(self.end_us),
            price(self.open),
            price(self.high),
            price(self.low),
            price(self.close),
            Cell::Size(self.volume),
            Cell::Int(self.count as i64),
            price(self.vwap()),
            Cell::Bool(self.is_final),
            Cell::Bool(g.is_some()),
            g.map_or(Cell::Empty, |g| Cell::Time(g.from_us)),
            g.and_then(|g| g.to_us).map_or(Cell::Empty, Cell::Time),
            g.and_then(|g| g.first_seq)
                .map_or(Cell::Empty, |s| Cell::Int(s as i64)),
            g.and_then(|g| g.last_seq)
                .map_or(Cell::Empty, |s| Cell::Int(s as i64)),
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{Event, Gap};
    use super::*;

    const M: i64 = 60_000_000; // one minute in µs
    // 2026-01-05T14:30:00Z
    const T0: i64 = 1_767_623_400_000_000;

    fn minute_bars(fill: bool) -> BarAggregator {
        BarAggregator::new(BarSize::Time(M), BarSource::Trades, fill, Clock::utc())
    }

    fn px(cents: i64) -> Option<i64> {
        Some(cents * (P / 100))
    }

    #[test]
    fn minute_bars_ohlcv_count_and_vwap() {
        let mut a = minute_bars(false);
        let evs = [
            Event::Tick(trade(1, T0 + 1, 10_000, 2)),
            Event::Tick(quote(2, T0 + 2, 9_999, 10_001)),
            Event::Tick(trade(3, T0 + 10 * 1_000_000, 10_050, 1)),
            Event::Tick(trade(4, T0 + 20 * 1_000_000, 9_950, 1)),
            Event::Tick(trade(5, T0 + M - 1, 10_025, 4)),
            // The next minute: closes the first bar.
            Event::Tick(trade(6, T0 + M, 10_100, 1)),
        ];
        let bars = run(&mut a, &evs);
        assert_eq!(bars.len(), 2);
        let b = bars[0];
        assert_eq!((b.start_us, b.end_us), (T0, T0 + M));
        assert_eq!(
            (b.open, b.high, b.low, b.close),
            (px(10_000), px(10_050), px(9_950), px(10_025))
        );
        assert_eq!(b.volume, 8 * S);
        assert_eq!(b.count, 4);
        // (100*2 + 100.5 + 99.5 + 100.25*4) / 8 = 801 / 8 = 100.125
        assert_eq!(b.vwap(), Some(100_125_000_000));
        assert!(b.is_final && b.gap.is_none());
        // The second bar is still in progress at the end: written, not final.
        assert_eq!(bars[1].open, px(10_100));
        assert!(!bars[1].is_final);
    }

    #[test]
    fn quiet_minutes_have_no_bar_unless_filled() {
        let evs = [
            Event::Tick(trade(1, T0, 10_000, 1)),
            Event::Tick(trade(2, T0 + 3 * M + 5, 10_100, 1)),
        ];
        let bars = run(&mut minute_bars(false), &evs);
        assert_eq!(bars.len(), 2);
        assert_eq!(bars[1].start_us, T0 + 3 * M);
        let bars = run(&mut minute_bars(true), &evs);
        let starts: Vec<i64> = bars.iter().map(|b| (b.start_us - T0) / M).collect();
        assert_eq!(starts, [0, 1, 2, 3]);
        assert_eq!(bars[1].open, None);
        assert_eq!(bars[1].volume, 0);
        assert_eq!(bars[1].vwap(), None);
    }

    #[test]
    fn a_gap_flags_every_bar_it_touches_with_its_range_even_empty_ones() {
        let gap = Gap {
            from_us: T0 + 30 * 1_000_000,
            to_us: None,
            first_seq: Some(3),
            last_seq: Some(9),
        };
        let evs = [
            Event::Tick(trade(1, T0 + 1, 10_000, 1)),
            Event::Tick(trade(2, T0 + 2, 10_000, 1)),
            Event::Gap(gap),
            // The gap ends with the next tick, in the third minute.
            Event::Tick(trade(10, T0 + 2 * M + 7, 10_200, 1)),
            Event::Tick(trade(11, T0 + 3 * M + 1, 10_300, 1)),
            Event::Tick(trade(12, T0 + 4 * M + 1, 10_300, 1)),
        ];
        let bars = run(&mut minute_bars(false), &evs);
        let got: Vec<(i64, bool, Option<i64>)> = bars
            .iter()
            .map(|b| ((b.start_us - T0) / M, b.gap.is_some(), b.open))
            .collect();
        assert_eq!(
            got,
            [
                (0, true, px(10_000)),
                // No trade in minute 1, but the gap covers it: an empty, flagged bar.
                (1, true, None),
                (2, true, px(10_200)),
                (3, false, px(10_300)),
                (4, false, px(10_300)),
            ]
        );
        let m = bars[1].gap.unwrap();
        assert_eq!(m.from_us, T0 + 30 * 1_000_000);
        assert_eq!(m.to_us, Some(T0 + 2 * M + 7));
        assert_eq!((m.first_seq, m.last_seq), (Some(3), Some(9)));
    }

    #[test]
    fn the_clock_closes_a_bar_without_a_next_tick() {
        let mut a = minute_bars(false);
        let mut out = Vec::new();
        a.on_tick(&trade(1, T0 + 5, 10_000, 1), &mut out);
        a.on_clock(T0 + M - 1, &mut out);
        assert!(out.is_empty());
        assert_eq!(a.current().unwrap().close, px(10_000));
        a.on_clock(T0 + M, &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].is_final);
        assert!(a.current().is_none());
    }

    #[test]
    fn tick_and_volume_bars() {
        let evs: Vec<Event> = (0..7)
            .map(|i| {
                Event::Tick(trade(
                    i + 1,
                    T0 + i as i64,
                    10_000 + i as i64,
                    1 + i as i64 % 3,
                ))
            })
            .collect();
        let mut a = BarAggregator::new(BarSize::Ticks(3), BarSource::Trades, false, Clock::utc());
        let bars = run(&mut a, &evs);
        let counts: Vec<(u64, bool)> = bars.iter().map(|b| (b.count, b.is_final)).collect();
        assert_eq!(counts, [(3, true), (3, true), (1, false)]);
        assert_eq!((bars[1].start_us, bars[1].end_us), (T0 + 3, T0 + 5));
        assert_eq!((bars[1].open, bars[1].close), (px(10_003), px(10_005)));
        // Sizes 1,2,3,1,2,3,1; bars of volume 4: [1,2,3]=6, [1,2,3]=6, [1]=1.
        let mut a = BarAggregator::new(
            BarSize::Volume(4 * S),
            BarSource::Trades,
            false,
            Clock::utc(),
        );
        let bars = run(&mut a, &evs);
        let vols: Vec<i64> = bars.iter().map(|b| b.volume / S).collect();
        assert_eq!(vols, [6, 6, 1]);
    }

    #[test]
    fn a_gap_before_a_tick_bar_marks_that_bar() {
        let mut a = BarAggregator::new(BarSize::Ticks(2), BarSource::Trades, false, Clock::utc());
        let evs = [
            Event::Gap(Gap {
                from_us: T0,
                to_us: None,
                first_seq: None,
                last_seq: None,
            }),
            Event::Tick(trade(1, T0 + 9, 10_000, 1)),
            Event::Tick(trade(2, T0 + 10, 10_000, 1)),
            Event::Tick(trade(3, T0 + 11, 10_000, 1)),
            Event::Tick(trade(4, T0 + 12, 10_000, 1)),
        ];
        let bars = run(&mut a, &evs);
        assert_eq!(bars[0].gap.unwrap().to_us, Some(T0 + 9));
        assert!(bars[1].gap.is_none());
    }

    #[test]
    fn quote_bars_take_bid_ask_or_mid_and_close_at_the_last_quote() {
        let evs = [
            Event::Tick(quote(1, T0, 10_000, 10_004)),
            Event::Tick(trade(2, T0 + 1, 20_000, 5)),
            Event::Tick(quote(3, T0 + 2, 9_990, 10_010)),
            Event::Tick(quote(4, T0 + 3, 10_001, 10_003)),
        ];
        for (src, o, h, l, c) in [
            (BarSource::Bid, 10_000, 10_001, 9_990, 10_001),
            (BarSource::Ask, 10_004, 10_010, 10_003, 10_003),
            (BarSource::Mid, 10_002, 10_002, 10_000, 10_002),
        ] {
            let mut a = BarAggregator::new(BarSize::Time(M), src, false, Clock::utc());
            let b = run(&mut a, &evs)[0];
            assert_eq!(
                (b.open, b.high, b.low, b.close),
                (px(o), px(h), px(l), px(c)),
                "{src:?}"
            );
            assert_eq!((b.count, b.volume, b.vwap()), (3, 0, None));
        }
    }

    #[test]
    fn rounding_of_the_vwap() {
        assert_eq!(div_round(7, 2), Some(4));
        assert_eq!(div_round(-7, 2), Some(-4));
        assert_eq!(div_round(5, 3), Some(2));
        assert_eq!(div_round(4, 3), Some(1));
        assert_eq!(div_round(1, 0), None);
    }
}
