//! Bollinger bands: the moving average of trade prices over a time window (default 1,200 s)
//! with bands at `k` (default 1.0) population standard deviations; no value until at least
//! `min_trades` (default 10) trades are in the window. One row per trade. Sums are exact
//! (integers); only the square root is floating point.

use std::collections::VecDeque;

use super::output::{Cell, Row};
use super::{Gap, Study, Tick, TickKind};

/// One update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BollingerRow {
    /// The trade's receive time, µs.
    pub t_us: i64,
    /// Its price.
    pub price: i64,
    /// Trades in the window.
    pub trades: u64,
    /// Mean, upper and lower band (`None` below the minimum of trades).
    pub bands: Option<(i64, i64, i64)>,
    /// A gap was reported within the window.
    pub gap: bool,
}

/// The Bollinger study.
#[derive(Debug)]
pub struct Bollinger {
    period_us: i64,
    k: f64,
    min_trades: u64,
    window: VecDeque<(i64, i64)>,
    sum: i128,
    sum2: i128,
    last_gap_end: Option<i64>,
}

impl Bollinger {
    /// Bands over `period_us` at `k` deviations, from `min_trades` trades.
    pub fn new(period_us: i64, k: f64, min_trades: u64) -> Bollinger {
        Bollinger {
            period_us,
            k,
            min_trades,
            window: VecDeque::new(),
            sum: 0,
            sum2: 0,
            last_gap_end: None,
        }
    }
}

impl Study for Bollinger {
    type Out = BollingerRow;

    fn on_tick(&mut self, t: &Tick, out: &mut Vec<BollingerRow>) {
        let TickKind::Trade { price, .. } = t.kind else {
            return;
        };
        let start = t.t_us - self.period_us;
        while let Some(&(ts, p)) = self.window.front() {
            if ts > start {
                break;
            }
            self.window.pop_front();
            self.sum -= i128::from(p);
            self.sum2 -= i128::from(p) * i128::from(p);
        }
        self.window.push_back((t.t_us, price));
        self.sum += i128::from(price);
        self.sum2 += i128::from(price) * i128::from(price);
        let n = self.window.len() as u64;
        let bands = (n >= self.min_trades.max(1)).then(|| {
            let n = i128::from(n);
            let mean = super::bars::div_round(self.sum, n).unwrap_or(0) as i64;
            // Population variance n^2 x var = n x sum2 - sum^2, exact.
            let v = n * self.sum2 - self.sum * self.sum;
            let sd = ((v.max(0) as f64).sqrt() / n as f64).round();
            let band = (self.k * sd).round() as i64;
            (mean, mean + band, mean - band)
        });
        out.push(BollingerRow {
            t_us: t.t_us,
            price,
            trades: n,
            bands,
            gap: self.last_gap_end.is_some_and(|g| g > start),
        });
    }

    fn on_gap(&mut self, g: &Gap, _out: &mut Vec<BollingerRow>) {
        self.last_gap_end = Some(g.to_us.unwrap_or(i64::MAX));
    }
}

const COLUMNS: &[&str] = &["time", "price", "trades", "mean", "upper", "lower", "gap"];

impl Row for BollingerRow {
    fn columns(&self) -> &'static [&'static str] {
        COLUMNS
    }

    fn cells(&self, out: &mut Vec<Cell>) {
        let b =
            |f: fn((i64, i64, i64)) -> i64| self.bands.map_or(Cell::Empty, |x| Cell::Price(f(x)));
        out.extend([
            Cell::Time(self.t_us),
            Cell::Price(self.price),
            Cell::Int(self.trades as i64),
            b(|x| x.0),
            b(|x| x.1),
            b(|x| x.2),
            Cell::Bool(self.gap),
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::Event;
    use super::super::test_util::*;
    use super::*;

    const T0: i64 = 1_767_623_400_000_000;
    const SEC: i64 = 1_000_000;

    #[test]
    fn no_value_below_the_minimum_then_mean_and_one_sigma() {
        let mut b = Bollinger::new(1200 * SEC, 1.0, 3);
        // Prices 100, 102, 104 then 106 (the first leaves the 20-minute window).
        let evs = [
            Event::Tick(trade(1, T0, 10_000, 1)),
            Event::Tick(trade(2, T0 + 60 * SEC, 10_200, 5)),
            Event::Tick(trade(3, T0 + 120 * SEC, 10_400, 1)),
            Event::Tick(trade(4, T0 + 1200 * SEC, 10_600, 1)),
        ];
        let rows = run(&mut b, &evs);
        assert_eq!(rows[0].bands, None);
        assert_eq!(rows[1].bands, None);
        // Mean 102, population sd sqrt(8/3) = 1.632993161855...
        assert_eq!(
            rows[2].bands,
            Some((102 * P, 102 * P + 1_632_993_162, 102 * P - 1_632_993_162))
        );
        // 102, 104, 106: mean 104, same sd.
        assert_eq!(rows[3].trades, 3);
        assert_eq!(rows[3].bands.unwrap().0, 104 * P);
    }

    #[test]
    fn defaults_need_ten_trades() {
        let mut b = Bollinger::new(1200 * SEC, 1.0, 10);
        let evs: Vec<Event> = (0..10)
            .map(|i| Event::Tick(trade(i + 1, T0 + i as i64 * SEC, 10_000, 1)))
            .collect();
        let rows = run(&mut b, &evs);
        assert!(rows[..9].iter().all(|r| r.bands.is_none()));
        assert_eq!(rows[9].bands, Some((100 * P, 100 * P, 100 * P)));
    }
}
