//! One coherent market per instrument: the price path every stream of that instrument reports.
//!
//! The market is a sequence of steps k = 0, 1, 2, ... keyed by (seed, conId) only. Step k
//! moves the bid by -2..=+2 ticks (reflecting off a floor so prices stay positive), draws a
//! spread of 1..=max_spread_ticks ticks and the two displayed sizes: that is the step's
//! [`Quote`]. Each step also prints one [`Trade`] against that quote, from its own draw: a buy
//! at the ask or a sell at the bid with equal odds, or, one time in sixteen when the spread is
//! at least two ticks wide, a print strictly inside the spread (midpoint and hidden-order
//! fills, as IB's AllLast shows them). A lot-sized trade at the bid or the ask is never larger
//! than the size displayed there; stocks also print odd lots (fewer shares than one lot).
//! About one trade in 32 is unreported: IB shows those in AllLast only, and they do not count
//! in the volume.
//!
//! Step k is a pure function of (seed, conId, k), computed by walking from step 0, so every
//! subscription that walks the same market sees the same quotes and trades at the same step,
//! whenever it started and whatever its rate. Nothing here reads a clock.

use crate::decimal::SIZE_SCALE;
use crate::universe::Instrument;

/// SplitMix64 finaliser: a fast, well-mixed hash step.
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The random bits of step k of one draw stream.
pub(crate) fn draw(stream_key: u64, k: u64) -> u64 {
    splitmix(stream_key ^ splitmix(k))
}

/// The key of one draw stream of an instrument (`tag` tells the streams apart).
pub(crate) fn stream_key(seed: u64, con_id: i32, tag: u64) -> u64 {
    splitmix(splitmix(splitmix(seed) ^ con_id as u32 as u64) ^ tag)
}

/// Draw-stream tags. 1..=5 were the old per-kind streams; new tags avoid them so no stream
/// accidentally replays an old sequence.
const QUOTE_TAG: u64 = 16;
const TRADE_TAG: u64 = 17;

/// The quote of one step (prices 1e-9, sizes 1e-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote {
    pub bid: i64,
    pub ask: i64,
    pub bid_size: i64,
    pub ask_size: i64,
    pub bid_past_low: bool,
    pub ask_past_high: bool,
}

impl Quote {
    /// (bid + ask) / 2, exact whenever the instrument's tick is an even number of 1e-9 units
    /// (every built-in one; a one-unit tick would need a finer scale than the record has).
    pub fn mid(&self) -> i64 {
        self.bid + (self.ask - self.bid) / 2
    }
}

/// The trade of one step. Exchange and conditions index the instrument's lists so that
/// producing a trade never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trade {
    pub price: i64,
    pub size: i64,
    pub past_limit: bool,
    /// Shown in AllLast only, and not counted in the volume.
    pub unreported: bool,
    pub exchange: usize,
    pub conditions: usize,
}

/// The part of an instrument the market needs, copied so a market owns no borrow.
#[derive(Debug, Clone, Copy)]
struct Params {
    min_tick: i64,
    lot: i64,
    lot_units: i64,
    max_lots: u64,
    max_spread: u64,
    n_exchanges: u64,
    n_conditions: u64,
}

impl Params {
    fn of(inst: &Instrument) -> Self {
        Self {
            min_tick: inst.min_tick,
            lot: inst.lot,
            lot_units: inst.lot / SIZE_SCALE,
            max_lots: u64::from(inst.spec.max_lots),
            max_spread: u64::from(inst.spec.max_spread_ticks),
            n_exchanges: inst.spec.trade_exchanges.len() as u64,
            n_conditions: inst.spec.trade_conditions.len().max(1) as u64,
        }
    }

    fn size(&self, bits: u64) -> i64 {
        self.lot * (1 + (bits % self.max_lots) as i64)
    }
}

/// The bid (in ticks) that moves by -2..=+2 ticks per step and never gets near zero.
#[derive(Debug, Clone, Copy)]
struct Walk {
    bid_ticks: i64,
    floor: i64,
}

impl Walk {
    fn new(p: &Params, start: i64) -> Self {
        let floor = p.max_spread as i64 + 2;
        Self {
            bid_ticks: (start / p.min_tick).max(floor),
            floor,
        }
    }

    fn step(&mut self, r: u64) {
        let step = match r % 16 {
            0 => -2,
            1..=4 => -1,
            5..=10 => 0,
            11..=14 => 1,
            _ => 2,
        };
        self.bid_ticks += step;
        if self.bid_ticks < self.floor {
            // Reflect off the floor so prices stay positive and the walk stays symmetric.
            self.bid_ticks = 2 * self.floor - self.bid_ticks;
        }
    }
}

/// A walker over one instrument's market. Each subscription owns one (they are cheap and
/// walking is deterministic), so no state is shared between subscriptions.
#[derive(Debug, Clone)]
pub struct Market {
    quote_key: u64,
    trade_key: u64,
    p: Params,
    walk: Walk,
    /// Steps taken; the current step is `taken - 1`.
    taken: u64,
    quote: Quote,
}

impl Market {
    pub fn new(seed: u64, inst: &Instrument) -> Self {
        let p = Params::of(inst);
        let walk = Walk::new(&p, inst.start_price);
        let bid = walk.bid_ticks * p.min_tick;
        Self {
            quote_key: stream_key(seed, inst.con_id(), QUOTE_TAG),
            trade_key: stream_key(seed, inst.con_id(), TRADE_TAG),
            p,
            walk,
            taken: 0,
            quote: Quote {
                bid,
                ask: bid + p.min_tick,
                bid_size: p.lot,
                ask_size: p.lot,
                bid_past_low: false,
                ask_past_high: false,
            },
        }
    }

    /// The price the walk starts from (the instrument's start price on the tick grid, at
    /// least the floor): the session's opening level.
    pub fn opening_price(seed: u64, inst: &Instrument) -> i64 {
        Self::new(seed, inst).quote.bid
    }

    /// Moves to the next step and returns its quote.
    pub fn advance(&mut self) -> Quote {
        let r = draw(self.quote_key, self.taken);
        self.taken += 1;
        let p = &self.p;
        self.walk.step(r);
        let spread = 1 + ((r >> 8) % p.max_spread) as i64;
        let bid = self.walk.bid_ticks * p.min_tick;
        self.quote = Quote {
            bid,
            ask: bid + spread * p.min_tick,
            bid_size: p.size(r >> 16),
            ask_size: p.size(r >> 24),
            bid_past_low: (r >> 32).is_multiple_of(4096),
            ask_past_high: (r >> 44).is_multiple_of(4096),
        };
        self.quote
    }

    /// The current step's number (`None` before the first [`advance`](Self::advance)).
    pub fn step(&self) -> Option<u64> {
        self.taken.checked_sub(1)
    }

    /// The current step's quote.
    pub fn quote(&self) -> Quote {
        self.quote
    }

    /// The trade printed at the current step against its quote. Computed on demand so the
    /// quote-only streams never pay for it; the same step always gives the same trade.
    pub fn trade(&self) -> Trade {
        let t = draw(self.trade_key, self.step().unwrap_or(0));
        let p = &self.p;
        let q = &self.quote;
        let spread_ticks = (q.ask - q.bid) / p.min_tick;
        let buy = t & 1 == 1;
        let inside = spread_ticks >= 2 && (t >> 1).is_multiple_of(16);
        let price = if inside {
            q.bid + p.min_tick * (1 + ((t >> 5) % (spread_ticks as u64 - 1)) as i64)
        } else if buy {
            q.ask
        } else {
            q.bid
        };
        let odd_lot = p.lot_units > 1 && (t >> 8).is_multiple_of(8);
        let size = if odd_lot {
            SIZE_SCALE * (1 + ((t >> 12) % (p.lot_units as u64 - 1)) as i64)
        } else {
            let displayed = if inside {
                i64::MAX
            } else if buy {
                q.ask_size
            } else {
                q.bid_size
            };
            p.size(t >> 16).min(displayed)
        };
        // The first condition string is the common one.
        let conditions = if p.n_conditions > 1 && (t >> 24) % 16 >= 10 {
            1 + ((t >> 28) % (p.n_conditions - 1)) as usize
        } else {
            0
        };
        Trade {
            price,
            size,
            past_limit: (t >> 52).is_multiple_of(8192),
            unreported: (t >> 57).is_multiple_of(32),
            exchange: ((t >> 32) % p.n_exchanges) as usize,
            conditions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::universe::Universe;

    fn inst(con_id: i32) -> Instrument {
        let u = Universe::builtin();
        u.get(u.by_con_id(con_id).unwrap()).clone()
    }

    const CONS: [i32; 5] = [265598, 711280073, 212921504, 12087792, 15016059];

    /// Every trade is at the same step's bid or ask, or strictly inside the spread, and the
    /// inside prints are a small minority that does occur.
    #[test]
    fn trades_print_at_the_same_steps_quote() {
        for con in CONS {
            let i = inst(con);
            let mut m = Market::new(11, &i);
            let (mut inside, mut at_quote) = (0, 0);
            for _ in 0..20_000 {
                let q = m.advance();
                let t = m.trade();
                assert!(q.bid > 0 && q.ask > q.bid, "{con}: {q:?}");
                assert!(
                    t.price >= q.bid && t.price <= q.ask,
                    "{con} step {:?}: {t:?} outside {q:?}",
                    m.step()
                );
                assert_eq!(t.price % i.min_tick, 0, "{con}: off the grid");
                if t.price == q.bid || t.price == q.ask {
                    at_quote += 1;
                } else {
                    inside += 1;
                }
            }
            assert!(at_quote > 18_000, "{con}: {at_quote} at the quote");
            if i.spec.max_spread_ticks >= 2 {
                assert!(inside > 100, "{con}: only {inside} inside prints");
            } else {
                assert_eq!(inside, 0, "{con}: a one-tick spread has no inside");
            }
        }
    }

    #[test]
    fn mid_is_exactly_half_way_on_the_half_tick_grid() {
        for con in CONS {
            let i = inst(con);
            let mut m = Market::new(5, &i);
            for _ in 0..5_000 {
                let q = m.advance();
                assert_eq!(2 * q.mid(), q.bid + q.ask, "{con}: {q:?}");
                assert_eq!((2 * q.mid()) % i.min_tick, 0);
            }
        }
    }

    #[test]
    fn lot_sized_trades_never_exceed_the_displayed_size() {
        let i = inst(711280073);
        let mut m = Market::new(3, &i);
        for _ in 0..20_000 {
            let q = m.advance();
            let t = m.trade();
            assert!(t.size > 0);
            if t.price == q.ask && q.ask != q.bid {
                assert!(t.size <= q.ask_size, "{t:?} {q:?}");
            } else if t.price == q.bid {
                assert!(t.size <= q.bid_size, "{t:?} {q:?}");
            }
        }
    }

    /// A simple delta (at or above the ask +size, at or below the bid -size, inside 0) sees
    /// both buyers and sellers, in roughly equal measure.
    #[test]
    fn delta_sees_both_sides() {
        for con in CONS {
            let i = inst(con);
            let mut m = Market::new(42, &i);
            let (mut buys, mut sells, mut delta) = (0u32, 0u32, 0i128);
            for _ in 0..10_000 {
                let q = m.advance();
                let t = m.trade();
                if t.price >= q.ask {
                    buys += 1;
                    delta += i128::from(t.size);
                } else if t.price <= q.bid {
                    sells += 1;
                    delta -= i128::from(t.size);
                }
            }
            assert!(
                buys > 4_000 && sells > 4_000,
                "{con}: {buys} buys {sells} sells"
            );
            let total = i128::from(i.lot) * 10_000 * i128::from(i.spec.max_lots);
            assert!(delta.abs() < total / 10, "{con}: delta {delta} of {total}");
        }
    }

    #[test]
    fn same_seed_same_market_other_seed_or_instrument_differs() {
        let aapl = inst(265598);
        let run = |seed: u64, i: &Instrument| {
            let mut m = Market::new(seed, i);
            (0..2_000)
                .map(|_| (m.advance(), m.trade()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1, &aapl), run(1, &aapl));
        assert_ne!(run(1, &aapl), run(2, &aapl));
        assert_ne!(run(1, &aapl), run(1, &inst(272093)));
    }

    #[test]
    fn some_trades_are_unreported_and_most_are_not() {
        let mut m = Market::new(9, &inst(265598));
        let unreported = (0..32_000)
            .filter(|_| {
                m.advance();
                m.trade().unreported
            })
            .count();
        assert!((500..2_000).contains(&unreported), "{unreported}");
    }
}
