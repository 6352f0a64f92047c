//! Histograms and the small statistics of the report.

use hdrhistogram::Histogram;

/// A latency histogram in ns: 1 ns to 60 s at 3 significant digits (HdrHistogram's usual).
pub(crate) fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static bounds are valid")
}

/// p50 / p99 / p99.9 / max of one measurement, in ns.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Pcts {
    pub(crate) p50: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
    pub(crate) count: u64,
}

impl Pcts {
    pub(crate) fn of(h: &Histogram<u64>) -> Pcts {
        Pcts {
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            count: h.len(),
        }
    }
}

impl std::fmt::Display for Pcts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50={} p99={} p99.9={} max={} (n={})",
            self.p50, self.p99, self.p999, self.max, self.count
        )
    }
}

/// Median of a non-empty set (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> f64 {
    assert!(!values.is_empty(), "median of nothing");
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Smallest and largest value (the range printed beside a median).
pub(crate) fn range(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}
