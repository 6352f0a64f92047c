//! Paging a time range through reqHistoricalTicks, exactly.
//!
//! IB answers `startDateTime = S, numberOfTicks = N` with the first N ticks at or after S in
//! time order, each stamped to the second, and may add more to finish the last second; it
//! takes no sub-second start. The method:
//!
//! 1. ask from the cursor (first `from`) for N ticks;
//! 2. a short answer (fewer than N) holds everything from the cursor on: keep the ticks before
//!    `to`, done;
//! 3. a full answer that spans several seconds holds every second before its last one
//!    completely (the ticks come in time order and the answer went past them): keep the ticks
//!    before the last second and move the cursor to that second, which the next page asks
//!    for again from its start; the boundary second is thus kept exactly once, from the page
//!    that starts at it, whether or not IB finished it in this one;
//! 4. a full answer within one second (a second with N ticks or more) cannot be split, since a
//!    start has no finer grain: keep it whole and move past it. It is complete when IB
//!    finishes the second, as documented; such seconds are listed in
//!    [`Pager::crowded_seconds`] so a caller can mark them if a gateway ever truncates;
//! 5. a page whose last second is at or past `to` ends the range.
//!
//! Each step either ends the range or moves the cursor forward by at least a second, so a
//! range of `s` seconds with `k` ticks takes at most `min(s, k / N + s)` pages.

/// The next request to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// startDateTime, Unix seconds (send as [`super::time::format_utc`]).
    pub start: i64,
    /// numberOfTicks.
    pub number_of_ticks: i32,
}

/// Why a page was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PagerError {
    /// The page's times go backwards at this index.
    #[error("page times go backwards at tick {0}")]
    OutOfOrder(usize),
    /// A page arrived after the range was done.
    #[error("page after the range was done")]
    Done,
}

/// The paging state of one range `[from, to)` (Unix seconds).
#[derive(Debug, Clone)]
pub struct Pager {
    to: i64,
    cursor: i64,
    per_page: i32,
    done: bool,
    pages: u32,
    crowded: Vec<i64>,
}

impl Pager {
    /// Pages of IB's maximum, 1000 ticks.
    pub fn new(from: i64, to: i64) -> Self {
        Self::with_page_size(from, to, crate::tws::msg::historical::MAX_TICKS_PER_REQUEST)
    }

    /// Pages of `per_page` ticks (at least 1).
    pub fn with_page_size(from: i64, to: i64, per_page: i32) -> Self {
        Self {
            to,
            cursor: from,
            per_page: per_page.max(1),
            done: from >= to,
            pages: 0,
            crowded: Vec::new(),
        }
    }

    /// The request to send now, `None` when the range is done.
    pub fn next_request(&self) -> Option<PageRequest> {
        (!self.done).then_some(PageRequest {
            start: self.cursor,
            number_of_ticks: self.per_page,
        })
    }

    /// Takes the answer to [`Pager::next_request`] (the ticks' times, in the order IB sent
    /// them) and returns which of its ticks to keep, as an index range.
    pub fn on_page(&mut self, times: &[i64]) -> Result<std::ops::Range<usize>, PagerError> {
        if self.done {
            return Err(PagerError::Done);
        }
        if let Some(i) = times.windows(2).position(|w| w[1] < w[0]) {
            return Err(PagerError::OutOfOrder(i + 1));
        }
        self.pages += 1;
        // IB never sends ticks before the start; skip any rather than double them.
        let lo = times.partition_point(|t| *t < self.cursor);
        let below = |limit: i64| lo.max(times.partition_point(|t| *t < limit));
        let full = times.len() >= self.per_page as usize;
        let Some(&last) = times.last() else {
            self.done = true;
            return Ok(lo..lo);
        };
        if !full || last >= self.to {
            self.done = true;
            return Ok(lo..below(self.to));
        }
        if times[lo..].first().is_some_and(|first| *first == last) {
            // One second filled the page: keep it whole, move past it.
            self.crowded.push(last);
            self.cursor = last + 1;
        } else {
            // Keep the complete seconds; ask for the last one again from its start.
            self.cursor = last.max(self.cursor + 1);
        }
        let keep = lo..below(self.cursor);
        self.done = self.cursor >= self.to;
        Ok(keep)
    }

    /// True when the range is done.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The first second not yet received completely.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// Pages taken so far.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Seconds that filled a page by themselves (complete only if the gateway finished them).
    pub fn crowded_seconds(&self) -> &[i64] {
        &self.crowded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A market: ticks `(time, id)` in time order, ids unique.
    fn market(seed: u64, seconds: i64, busy: &[(i64, usize)]) -> Vec<(i64, u64)> {
        let mut x = seed | 1;
        let mut out = Vec::new();
        let mut id = 0;
        for s in 0..seconds {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = busy
                .iter()
                .find(|(b, _)| *b == s)
                .map_or((x % 4) as usize, |(_, n)| *n); // quiet seconds: 0..3 ticks
            for _ in 0..n {
                out.push((1_000 + s, id));
                id += 1;
            }
        }
        out
    }

    /// IB's answer: the first `n` ticks at or after `start`, then the rest of the last second
    /// when `finish` (as IB documents), or exactly `n` when not.
    fn answer(m: &[(i64, u64)], start: i64, n: usize, finish: bool) -> Vec<(i64, u64)> {
        let i = m.partition_point(|t| t.0 < start);
        let mut end = (i + n).min(m.len());
        if finish && end > i {
            let last = m[end - 1].0;
            end = m.partition_point(|t| t.0 <= last);
        }
        m[i..end].to_vec()
    }

    fn fill(m: &[(i64, u64)], from: i64, to: i64, n: i32, finish: bool) -> (Vec<u64>, Pager) {
        let mut p = Pager::with_page_size(from, to, n);
        let mut got = Vec::new();
        for _ in 0..100_000 {
            let Some(req) = p.next_request() else { break };
            let page = answer(m, req.start, req.number_of_ticks as usize, finish);
            let times: Vec<i64> = page.iter().map(|t| t.0).collect();
            let keep = p.on_page(&times).unwrap();
            got.extend(page[keep].iter().map(|t| t.1));
        }
        assert!(p.is_done());
        (got, p)
    }

    fn expected(m: &[(i64, u64)], from: i64, to: i64) -> Vec<u64> {
        m.iter()
            .filter(|t| t.0 >= from && t.0 < to)
            .map(|t| t.1)
            .collect()
    }

    #[test]
    fn page_boundaries_inside_busy_seconds_lose_and_double_nothing() {
        // Busy seconds of 7, 10, 11, 25 and 40 ticks against pages of 10: boundaries fall
        // inside them in every way (just before, at, just after a page end; a second that fills
        // a page alone; one that fills several).
        let m = market(
            7,
            120,
            &[
                (3, 7),
                (4, 10),
                (5, 11),
                (9, 25),
                (10, 40),
                (50, 9),
                (51, 10),
            ],
        );
        for finish in [true, false] {
            for (from, to) in [
                (1_000, 1_120),
                (1_004, 1_011),
                (1_005, 1_006),
                (1_009, 1_052),
                (1_100, 1_100),
            ] {
                for n in [1, 3, 9, 10, 11, 1000] {
                    let (got, p) = fill(&m, from, to, n, finish);
                    let want = expected(&m, from, to);
                    if finish {
                        assert_eq!(got, want, "from {from} to {to} n {n}");
                    } else {
                        // A gateway that truncates loses only inside crowded seconds.
                        let lost: Vec<u64> =
                            want.iter().copied().filter(|i| !got.contains(i)).collect();
                        let crowded = p.crowded_seconds();
                        assert!(lost.iter().all(|id| crowded.contains(&m[*id as usize].0)));
                        let mut dedup = got.clone();
                        dedup.dedup();
                        assert_eq!(dedup, got, "doubled");
                        assert!(got.windows(2).all(|w| w[0] < w[1]));
                    }
                }
            }
        }
    }

    #[test]
    fn many_random_markets_fill_exactly() {
        for seed in 1..200u64 {
            let busy = [
                ((seed % 17) as i64, (seed % 23) as usize + 5),
                ((seed % 13) as i64 + 20, 12),
            ];
            let m = market(seed, 40, &busy);
            let n = (seed % 12) as i32 + 1;
            let (from, to) = (1_000 + (seed % 5) as i64, 1_030 + (seed % 9) as i64);
            let (got, p) = fill(&m, from, to, n, true);
            assert_eq!(got, expected(&m, from, to), "seed {seed}");
            assert!(
                p.pages() as usize
                    <= expected(&m, from, to).len() / n as usize + (to - from) as usize + 1
            );
        }
    }

    #[test]
    fn the_method_step_by_step() {
        // Seconds 10: 2 ticks, 11: 3 ticks, 12: 4 ticks; pages of 4, IB finishing seconds.
        let mut p = Pager::with_page_size(10, 13, 4);
        assert_eq!(
            p.next_request(),
            Some(PageRequest {
                start: 10,
                number_of_ticks: 4
            })
        );
        // 10,10,11,11 + 11 to finish second 11: keep second 10 only, ask again from 11.
        assert_eq!(p.on_page(&[10, 10, 11, 11, 11]), Ok(0..2));
        assert_eq!(p.cursor(), 11);
        // 11,11,11,12 + rest of 12: keep second 11, ask from 12.
        assert_eq!(p.on_page(&[11, 11, 11, 12, 12, 12, 12]), Ok(0..3));
        // Second 12 alone fills the page: keep it whole; done (13 = to).
        assert_eq!(p.on_page(&[12, 12, 12, 12]), Ok(0..4));
        assert!(p.is_done());
        assert_eq!(p.crowded_seconds(), &[12]);
        assert_eq!(p.on_page(&[]), Err(PagerError::Done));
    }

    #[test]
    fn a_page_that_goes_backwards_is_refused() {
        let mut p = Pager::with_page_size(0, 10, 3);
        assert_eq!(p.on_page(&[1, 2, 1]), Err(PagerError::OutOfOrder(2)));
    }
}
