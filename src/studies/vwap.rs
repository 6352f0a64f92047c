//! VWAP: `sum(price x size) / sum(size)` over the trading session (the default) or a rolling
//! window, with bands at `k` (default 3) times the realised volatility of trade prices around
//! the VWAP: the volume-weighted standard deviation `sqrt(sum(size x (price - vwap)^2) /
//! sum(size))`. One row per trade.
//!
//! The VWAP itself is exact (integer sums, rounded to the price's last digit); the deviation
//! is computed in `f64` on prices relative to a reference price (the first of the session) so
//! that squares stay small and exact enough.

use std::collections::VecDeque;

use super::bars::div_round;
use super::clock::Clock;
use super::output::{Cell, Row};
use super::{Gap, Study, Tick, TickKind};
use crate::ipc::{PRICE_SCALE, SIZE_SCALE};

/// Over what the VWAP runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VwapWindow {
    /// The exchange session ([`Clock::session`]).
    Session,
    /// The last `n` µs of trades.
    Rolling(i64),
}

/// One VWAP update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VwapRow {
    /// The trade's receive time, µs.
    pub t_us: i64,
    /// Its price.
    pub price: i64,
    /// Its size.
    pub size: i64,
    /// VWAP (price fixed point).
    pub vwap: i64,
    /// Realised volatility around the VWAP (price fixed point, rounded).
    pub sigma: i64,
    /// `vwap + k x sigma`.
    pub upper: i64,
    /// `vwap - k x sigma`.
    pub lower: i64,
    /// Volume in the window.
    pub volume: i64,
    /// Trades in the window.
    pub trades: u64,
    /// A gap was reported within the window.
    pub gap: bool,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    t_us: i64,
    price: i64,
    size: i64,
}

/// The VWAP study.
#[derive(Debug)]
pub struct Vwap {
    clock: Clock,
    window: VwapWindow,
    k: f64,
    session_end: i64,
    reference: Option<i64>,
    sum_s: i128,
    sum_ps: i128,
    // Relative to `reference`, in price units and size units.
    sum_sd: f64,
    sum_sd2: f64,
    trades: u64,
    entries: VecDeque<Entry>,
    /// End of the latest gap (`i64::MAX` while open).
    last_gap_end: Option<i64>,
    window_start: i64,
}

impl Vwap {
    /// A VWAP over `window` with bands at `k` sigma.
    pub fn new(clock: Clock, window: VwapWindow, k: f64) -> Vwap {
        Vwap {
            clock,
            window,
            k,
            session_end: i64::MIN,
            reference: None,
            sum_s: 0,
            sum_ps: 0,
            sum_sd: 0.0,
            sum_sd2: 0.0,
            trades: 0,
            entries: VecDeque::new(),
            last_gap_end: None,
            window_start: i64::MIN,
        }
    }

    fn reset(&mut self) {
        self.reference = None;
        self.sum_s = 0;
        self.sum_ps = 0;
        self.sum_sd = 0.0;
        self.sum_sd2 = 0.0;
        self.trades = 0;
        self.entries.clear();
    }

    fn rel(&self, price: i64, size: i64) -> (f64, f64) {
        let d = (price - self.reference.unwrap_or(price)) as f64 / PRICE_SCALE as f64;
        let s = size as f64 / SIZE_SCALE as f64;
        (d, s)
    }

    fn add(&mut self, sign: i64, e: Entry) {
        let (d, s) = self.rel(e.price, e.size);
        let sf = sign as f64;
        self.sum_s += i128::from(sign * e.size);
        self.sum_ps += i128::from(sign) * i128::from(e.price) * i128::from(e.size);
        self.sum_sd += sf * s * d;
        self.sum_sd2 += sf * s * d * d;
        if sign > 0 {
            self.trades += 1;
        } else {
            self.trades -= 1;
        }
    }
}

impl Study for Vwap {
    type Out = VwapRow;

    fn on_tick(&mut self, t: &Tick, out: &mut Vec<VwapRow>) {
        let TickKind::Trade { price, size } = t.kind else {
            return;
        };
        match self.window {
            VwapWindow::Session => {
                if t.t_us >= self.session_end {
                    let (s0, s1) = self.clock.session(t.t_us);
                    self.session_end = s1;
                    self.window_start = s0;
                    self.reset();
                }
            }
            VwapWindow::Rolling(w) => {
                self.window_start = t.t_us - w;
                while let Some(e) = self.entries.front().copied() {
                    if e.t_us > self.window_start {
                        break;
                    }
                    self.entries.pop_front();
                    self.add(-1, e);
                }
                if self.entries.is_empty() {
                    self.reset();
                }
            }
        }
        if self.reference.is_none() {
            self.reference = Some(price);
        }
        let e = Entry {
            t_us: t.t_us,
            price,
            size,
        };
        self.add(1, e);
        if let VwapWindow::Rolling(_) = self.window {
            self.entries.push_back(e);
        }
        let Some(vwap) = div_round(self.sum_ps, self.sum_s).and_then(|v| i64::try_from(v).ok())
        else {
            return;
        };
        let s = self.sum_s as f64 / SIZE_SCALE as f64;
        let mean_d = self.sum_sd / s;
        let var = (self.sum_sd2 / s - mean_d * mean_d).max(0.0);
        let sigma = (var.sqrt() * PRICE_SCALE as f64).round() as i64;
        let band = (self.k * sigma as f64).round() as i64;
        out.push(VwapRow {
            t_us: t.t_us,
            price,
            size,
            vwap,
            sigma,
            upper: vwap + band,
            lower: vwap - band,
            volume: self.sum_s as i64,
            trades: self.trades,
            gap: self.last_gap_end.is_some_and(|g| g > self.window_start),
        });
    }

    fn on_gap(&mut self, g: &Gap, _out: &mut Vec<VwapRow>) {
        self.last_gap_end = Some(g.to_us.unwrap_or(i64::MAX));
    }
}

const COLUMNS: &[&str] = &[
    "time", "price", "size", "vwap", "sigma", "upper", "lower", "volume", "trades", "gap",
];

impl Row for VwapRow {
    fn columns(&self) -> &'static [&'static str] {
        COLUMNS
    }

    fn cells(&self, out: &mut Vec<Cell>) {
        out.extend([
            Cell::Time(self.t_us),
            Cell::Price(self.price),
            Cell::Size(self.size),
            Cell::Price(self.vwap),
            Cell::Price(self.sigma),
            Cell::Price(self.upper),
            Cell::Price(self.lower),
            Cell::Size(self.volume),
            Cell::Int(self.trades as i64),
            Cell::Bool(self.gap),
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{Event, Gap};
    use super::*;

    const T0: i64 = 1_767_623_400_000_000; // 2026-01-05T14:30:00Z
    const SEC: i64 = 1_000_000;

    #[test]
    fn session_vwap_with_bands_at_three_sigma() {
        let mut v = Vwap::new(Clock::utc(), VwapWindow::Session, 3.0);
        let evs = [
            Event::Tick(trade(1, T0, 10_000, 1)),
            Event::Tick(quote(2, T0 + 1, 1, 2)),
            Event::Tick(trade(3, T0 + 2, 10_200, 3)),
        ];
        let rows = run(&mut v, &evs);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].vwap, 100 * P);
        assert_eq!(rows[0].sigma, 0);
        // (100 x 1 + 102 x 3) / 4 = 101.5; deviations -1.5 (w 1) and +0.5 (w 3):
        // variance (2.25 + 0.75) / 4 = 0.75, sigma = 0.8660254037...
        let r = rows[1];
        assert_eq!(r.vwap, 101_500_000_000);
        assert_eq!(r.sigma, 866_025_404);
        assert_eq!(r.upper, 101_500_000_000 + 2_598_076_212);
        assert_eq!(r.lower, 101_500_000_000 - 2_598_076_212);
        assert_eq!((r.volume, r.trades), (4 * S, 2));
        // Next UTC day: a new session.
        let mut out = Vec::new();
        v.on_tick(&trade(4, T0 + 86_400 * SEC, 9_000, 2), &mut out);
        assert_eq!((out[0].vwap, out[0].trades), (90 * P, 1));
    }

    #[test]
    fn rolling_window_drops_old_trades_and_flags_gaps_inside_it() {
        let mut v = Vwap::new(Clock::utc(), VwapWindow::Rolling(10 * SEC), 3.0);
        let evs = [
            Event::Tick(trade(1, T0, 10_000, 1)),
            Event::Gap(Gap {
                from_us: T0 + SEC,
                to_us: Some(T0 + 2 * SEC),
                first_seq: None,
                last_seq: None,
            }),
            Event::Tick(trade(2, T0 + 5 * SEC, 11_000, 1)),
            // 10 s after the first: it has left the window; the gap is still inside.
            Event::Tick(trade(3, T0 + 10 * SEC, 12_000, 1)),
            Event::Tick(trade(4, T0 + 13 * SEC, 12_000, 2)),
        ];
        let rows = run(&mut v, &evs);
        let got: Vec<(i64, u64, bool)> = rows.iter().map(|r| (r.vwap, r.trades, r.gap)).collect();
        assert_eq!(
            got,
            [
                (100 * P, 1, false),
                (105 * P, 2, true),
                (115 * P, 2, true),
                // The gap ended at T0+2s, before the window [T0+3s, T0+13s].
                (117_500_000_000, 3, false),
            ]
        );
    }
}
