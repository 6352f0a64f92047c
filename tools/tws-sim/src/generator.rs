//! Deterministic market data: the streams a subscription sees of an instrument's [`Market`].
//!
//! Every stream of an instrument walks the same market (keyed by seed and conId, not by kind),
//! so they agree: BidAsk tick k is the quote of market step k, MidPoint tick k its mid, AllLast
//! tick k the trade printed against that quote, Last the same trades less the unreported ones,
//! and L1 (reqMktData) message j >= 6 reports step j - 6 with a volume that is the sum of the
//! reported trade sizes so far. Tick k of a subscription is still a function of (seed, conId,
//! kind, k) only, computed by walking from k = 0, so a fresh subscription always replays the
//! same sequence, whatever the timing, the rate or the other subscriptions, and nothing here
//! reads a clock. Values are fixed point (prices 1e-9, sizes 1e-8), on the instrument's tick
//! grid, with sizes in lots, exchanges and trade conditions from the instrument's lists.

use crate::market::{Market, Trade, draw, stream_key};
use crate::universe::Instrument;

/// The four tick-by-tick kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TbtKind {
    Last,
    AllLast,
    BidAsk,
    MidPoint,
}

impl TbtKind {
    pub const ALL: [TbtKind; 4] = [Self::Last, Self::AllLast, Self::BidAsk, Self::MidPoint];

    /// The request's tickType string ("Last", "AllLast", "BidAsk", "MidPoint").
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Last => "Last",
            Self::AllLast => "AllLast",
            Self::BidAsk => "BidAsk",
            Self::MidPoint => "MidPoint",
        }
    }

    /// The tickType number in a tickByTick message.
    pub fn wire_type(self) -> i32 {
        match self {
            Self::Last => 1,
            Self::AllLast => 2,
            Self::BidAsk => 3,
            Self::MidPoint => 4,
        }
    }
}

/// One tick-by-tick tick. Exchange and conditions are indexes into the instrument's lists so
/// that producing a tick never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TbtTick {
    Trade {
        price: i64,
        size: i64,
        past_limit: bool,
        unreported: bool,
        exchange: usize,
        conditions: usize,
    },
    BidAsk {
        bid: i64,
        ask: i64,
        bid_size: i64,
        ask_size: i64,
        bid_past_low: bool,
        ask_past_high: bool,
    },
    MidPoint {
        mid: i64,
    },
}

/// The tick-by-tick stream of one subscription: its own walker over the instrument's
/// [`Market`].
///
/// BidAsk tick k is the quote of market step k and MidPoint tick k its mid; AllLast tick k is
/// the trade of step k; Last tick j is the j-th reported trade (Last skips the unreported
/// steps, about one in 32, so its tick j is at step j or a little after:
/// [`market_step`](Self::market_step) tells which).
#[derive(Debug, Clone)]
pub struct TbtGen {
    kind: TbtKind,
    market: Market,
}

impl TbtGen {
    pub fn new(seed: u64, inst: &Instrument, kind: TbtKind) -> Self {
        Self {
            kind,
            market: Market::new(seed, inst),
        }
    }

    pub fn kind(&self) -> TbtKind {
        self.kind
    }

    /// The market step of the tick last returned (`None` before the first), for indexing a
    /// tick to its time.
    pub fn market_step(&self) -> Option<u64> {
        self.market.step()
    }
}

fn trade_tick(t: Trade) -> TbtTick {
    TbtTick::Trade {
        price: t.price,
        size: t.size,
        past_limit: t.past_limit,
        unreported: t.unreported,
        exchange: t.exchange,
        conditions: t.conditions,
    }
}

impl Iterator for TbtGen {
    type Item = TbtTick;

    fn next(&mut self) -> Option<TbtTick> {
        let m = &mut self.market;
        Some(match self.kind {
            TbtKind::BidAsk => {
                let q = m.advance();
                TbtTick::BidAsk {
                    bid: q.bid,
                    ask: q.ask,
                    bid_size: q.bid_size,
                    ask_size: q.ask_size,
                    bid_past_low: q.bid_past_low,
                    ask_past_high: q.ask_past_high,
                }
            }
            TbtKind::MidPoint => TbtTick::MidPoint {
                mid: m.advance().mid(),
            },
            TbtKind::AllLast => {
                m.advance();
                trade_tick(m.trade())
            }
            TbtKind::Last => loop {
                // Unreported trades appear only in AllLast, as at IB. One in 32 steps is
                // unreported, so this loop ends within a step or two.
                m.advance();
                let t = m.trade();
                if !t.unreported {
                    break trade_tick(t);
                }
            },
        })
    }
}

/// reqMktData tick types (live ids; [`delayed_tick_type`] maps them).
pub mod l1 {
    pub const BID_SIZE: i32 = 0;
    pub const BID: i32 = 1;
    pub const ASK: i32 = 2;
    pub const ASK_SIZE: i32 = 3;
    pub const LAST: i32 = 4;
    pub const HIGH: i32 = 6;
    pub const LOW: i32 = 7;
    pub const VOLUME: i32 = 8;
    pub const CLOSE: i32 = 9;
    pub const OPEN: i32 = 14;
    pub const LAST_TIMESTAMP: i32 = 45;
    pub const HALTED: i32 = 49;
}

/// The delayed id of a live tick type (IB's 66..76 and 88), or the same id when none exists.
pub fn delayed_tick_type(live: i32) -> i32 {
    match live {
        l1::BID => 66,
        l1::ASK => 67,
        l1::LAST => 68,
        l1::BID_SIZE => 69,
        l1::ASK_SIZE => 70,
        5 => 71,
        l1::HIGH => 72,
        l1::LOW => 73,
        l1::VOLUME => 74,
        l1::CLOSE => 75,
        l1::OPEN => 76,
        l1::LAST_TIMESTAMP => 88,
        other => other,
    }
}

/// canAutoExecute in a tickPrice attribute mask.
pub const ATTR_CAN_AUTO_EXECUTE: i32 = 1;

/// The epoch second the synthetic lastTimestamp strings count from (2026-01-01 14:30 UTC).
pub const L1_BASE_EPOCH: i64 = 1_767_277_800;

/// One reqMktData message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L1Tick {
    Price {
        tick_type: i32,
        price: i64,
        size: i64,
        attr: i32,
    },
    Size {
        tick_type: i32,
        size: i64,
    },
    /// tickString carrying an epoch-seconds timestamp (lastTimestamp).
    Timestamp {
        tick_type: i32,
        epoch: i64,
    },
    /// tickGeneric with a fixed-point (1e-9) value.
    Generic {
        tick_type: i32,
        value: i64,
    },
}

/// The reqMktData (L1) stream of one subscription: its own walker over the instrument's
/// [`Market`], reported as IB's L1 ticks.
///
/// Messages 0..6 are the opening: close (the prior session's, 0.3 % under the opening level),
/// open, high and low (all the opening level: the session starts with the stream), volume 0,
/// halted 0. Message j >= 6 reports market step s = j - 6, exactly one message a step: when
/// step s's reported trade makes a new session high (or low), the new HIGH (or LOW); otherwise
/// one of the step's BID or ASK (price and displayed size), BID_SIZE, ASK_SIZE, LAST (the step's
/// trade; VOLUME instead when it is unreported), VOLUME or LAST_TIMESTAMP, drawn from the L1
/// stream's own key. VOLUME at step s is the sum of the sizes of every reported trade at steps
/// 0..=s, whether or not L1 showed it as a LAST (L1 is a sample of the market, as at IB).
#[derive(Debug, Clone)]
pub struct L1Gen {
    key: u64,
    market: Market,
    min_tick: i64,
    open: i64,
    delayed: bool,
    high: i64,
    low: i64,
    volume: i64,
    k: u64,
}

const L1_TAG: u64 = 5;
/// Messages before the first market step.
pub const L1_OPENING: u64 = 6;

impl L1Gen {
    pub fn new(seed: u64, inst: &Instrument, delayed: bool) -> Self {
        let open = Market::opening_price(seed, inst);
        Self {
            key: stream_key(seed, inst.con_id(), L1_TAG),
            market: Market::new(seed, inst),
            min_tick: inst.min_tick,
            open,
            delayed,
            high: open,
            low: open,
            volume: 0,
            k: 0,
        }
    }

    /// The market step message k - 1 reported (`None` for the opening), for indexing a
    /// message to its time.
    pub fn market_step(&self) -> Option<u64> {
        self.market.step()
    }

    fn tick_id(&self, tick_type: i32) -> i32 {
        if self.delayed {
            delayed_tick_type(tick_type)
        } else {
            tick_type
        }
    }

    fn opening(&self, k: u64) -> L1Tick {
        let level = |tick_type: i32, price: i64| L1Tick::Price {
            tick_type,
            price,
            size: 0,
            attr: 0,
        };
        match k {
            0 => level(
                l1::CLOSE,
                (self.open - self.open / 1000 * 3) / self.min_tick * self.min_tick,
            ),
            1 => level(l1::OPEN, self.open),
            2 => level(l1::HIGH, self.high),
            3 => level(l1::LOW, self.low),
            4 => L1Tick::Size {
                tick_type: l1::VOLUME,
                size: self.volume,
            },
            _ => L1Tick::Generic {
                tick_type: l1::HALTED,
                value: 0,
            },
        }
    }

    fn live_next(&mut self) -> L1Tick {
        let k = self.k;
        self.k += 1;
        if k < L1_OPENING {
            return self.opening(k);
        }
        let q = self.market.advance();
        let step = k - L1_OPENING;
        let t = self.market.trade();
        let reported = !t.unreported;
        if reported {
            self.volume += t.size;
            if t.price > self.high {
                self.high = t.price;
                return L1Tick::Price {
                    tick_type: l1::HIGH,
                    price: t.price,
                    size: 0,
                    attr: 0,
                };
            }
            if t.price < self.low {
                self.low = t.price;
                return L1Tick::Price {
                    tick_type: l1::LOW,
                    price: t.price,
                    size: 0,
                    attr: 0,
                };
            }
        }
        let volume = L1Tick::Size {
            tick_type: l1::VOLUME,
            size: self.volume,
        };
        match (draw(self.key, step) >> 56) % 100 {
            0..30 => L1Tick::Price {
                tick_type: l1::BID,
                price: q.bid,
                size: q.bid_size,
                attr: ATTR_CAN_AUTO_EXECUTE,
            },
            30..60 => L1Tick::Price {
                tick_type: l1::ASK,
                price: q.ask,
                size: q.ask_size,
                attr: ATTR_CAN_AUTO_EXECUTE,
            },
            60..70 => L1Tick::Size {
                tick_type: l1::BID_SIZE,
                size: q.bid_size,
            },
            70..80 => L1Tick::Size {
                tick_type: l1::ASK_SIZE,
                size: q.ask_size,
            },
            80..90 if reported => L1Tick::Price {
                tick_type: l1::LAST,
                price: t.price,
                size: t.size,
                attr: 0,
            },
            80..95 => volume,
            _ => L1Tick::Timestamp {
                tick_type: l1::LAST_TIMESTAMP,
                epoch: L1_BASE_EPOCH + (step / 4) as i64,
            },
        }
    }
}

impl Iterator for L1Gen {
    type Item = L1Tick;

    fn next(&mut self) -> Option<L1Tick> {
        Some(match self.live_next() {
            L1Tick::Price {
                tick_type,
                price,
                size,
                attr,
            } => L1Tick::Price {
                tick_type: self.tick_id(tick_type),
                price,
                size,
                attr,
            },
            L1Tick::Size { tick_type, size } => L1Tick::Size {
                tick_type: self.tick_id(tick_type),
                size,
            },
            L1Tick::Timestamp { tick_type, epoch } => L1Tick::Timestamp {
                tick_type: self.tick_id(tick_type),
                epoch,
            },
            L1Tick::Generic { tick_type, value } => L1Tick::Generic {
                tick_type: self.tick_id(tick_type),
                value,
            },
        })
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

    #[test]
    fn same_inputs_same_ticks_and_each_input_matters() {
        let aapl = inst(265598);
        let a: Vec<_> = TbtGen::new(1, &aapl, TbtKind::BidAsk).take(500).collect();
        let b: Vec<_> = TbtGen::new(1, &aapl, TbtKind::BidAsk).take(500).collect();
        assert_eq!(a, b);
        let other_seed: Vec<_> = TbtGen::new(2, &aapl, TbtKind::BidAsk).take(500).collect();
        assert_ne!(a, other_seed);
        let other_con: Vec<_> = TbtGen::new(1, &inst(272093), TbtKind::BidAsk)
            .take(500)
            .collect();
        assert_ne!(a, other_con);
    }

    #[test]
    fn quotes_are_on_the_grid_and_sane() {
        for con in [265598, 711280073, 12087792, 15016059] {
            let i = inst(con);
            for t in TbtGen::new(7, &i, TbtKind::BidAsk).take(20_000) {
                let TbtTick::BidAsk {
                    bid,
                    ask,
                    bid_size,
                    ask_size,
                    ..
                } = t
                else {
                    panic!("kind")
                };
                assert!(bid > 0 && ask > bid, "{con}: {bid} {ask}");
                assert_eq!(bid % i.min_tick, 0);
                assert_eq!(ask % i.min_tick, 0);
                assert!(bid_size > 0 && ask_size > 0 && bid_size % i.lot == 0);
            }
            for t in TbtGen::new(7, &i, TbtKind::AllLast).take(20_000) {
                let TbtTick::Trade {
                    price,
                    size,
                    exchange,
                    conditions,
                    ..
                } = t
                else {
                    panic!("kind")
                };
                assert!(price > 0 && size > 0 && price % i.min_tick == 0);
                assert!(exchange < i.spec.trade_exchanges.len());
                assert!(conditions < i.spec.trade_conditions.len().max(1));
            }
        }
    }

    #[test]
    fn last_never_carries_unreported_trades() {
        let i = inst(265598);
        assert!(
            TbtGen::new(3, &i, TbtKind::Last)
                .take(50_000)
                .all(|t| matches!(
                    t,
                    TbtTick::Trade {
                        unreported: false,
                        ..
                    }
                ))
        );
        assert!(
            TbtGen::new(3, &i, TbtKind::AllLast)
                .take(50_000)
                .any(|t| matches!(
                    t,
                    TbtTick::Trade {
                        unreported: true,
                        ..
                    }
                ))
        );
    }

    #[test]
    fn l1_opens_with_the_session_levels_and_delayed_maps_ids() {
        let i = inst(265598);
        let live: Vec<_> = L1Gen::new(1, &i, false).take(200).collect();
        let delayed: Vec<_> = L1Gen::new(1, &i, true).take(200).collect();
        assert!(matches!(
            live[0],
            L1Tick::Price {
                tick_type: l1::CLOSE,
                ..
            }
        ));
        assert!(matches!(delayed[0], L1Tick::Price { tick_type: 75, .. }));
        assert!(live.iter().any(|t| matches!(
            t,
            L1Tick::Price {
                tick_type: l1::BID,
                ..
            }
        )));
        assert!(
            delayed
                .iter()
                .any(|t| matches!(t, L1Tick::Price { tick_type: 66, .. }))
        );
        assert!(delayed.iter().all(|t| !matches!(
            t,
            L1Tick::Price {
                tick_type: l1::BID | l1::ASK | l1::LAST,
                ..
            }
        )));
    }

    /// BidAsk, MidPoint and AllLast subscriptions opened separately agree step by step: each
    /// trade prints at the bid or the ask of the same step's quote (or inside it), each mid is
    /// that quote's exact middle.
    #[test]
    fn every_kind_reports_the_same_market() {
        for con in [265598, 711280073, 212921504, 12087792] {
            let i = inst(con);
            let quotes = TbtGen::new(4, &i, TbtKind::BidAsk);
            let mids = TbtGen::new(4, &i, TbtKind::MidPoint);
            let trades = TbtGen::new(4, &i, TbtKind::AllLast);
            let mut inside = 0;
            for (k, ((q, m), t)) in quotes.zip(mids).zip(trades).take(20_000).enumerate() {
                let (TbtTick::BidAsk { bid, ask, .. }, TbtTick::MidPoint { mid }) = (q, m) else {
                    panic!("kind")
                };
                let TbtTick::Trade { price, .. } = t else {
                    panic!("kind")
                };
                assert_eq!(2 * mid, bid + ask, "{con} step {k}");
                assert!(
                    bid <= price && price <= ask,
                    "{con} step {k}: {price} vs {bid}/{ask}"
                );
                if price != bid && price != ask {
                    inside += 1;
                }
            }
            assert!(
                inside < 2_000,
                "{con}: inside prints are occasional ({inside})"
            );
        }
    }

    /// Last is AllLast less its unreported trades, at the same market steps.
    #[test]
    fn last_is_all_last_less_the_unreported() {
        let i = inst(265598);
        let mut all = TbtGen::new(8, &i, TbtKind::AllLast);
        let mut last = TbtGen::new(8, &i, TbtKind::Last);
        let mut skipped = 0;
        for _ in 0..10_000 {
            let l = last.next().unwrap();
            let step = last.market_step().unwrap();
            loop {
                let a = all.next().unwrap();
                if all.market_step() == Some(step) {
                    assert_eq!(a, l, "step {step}");
                    break;
                }
                assert!(
                    matches!(
                        a,
                        TbtTick::Trade {
                            unreported: true,
                            ..
                        }
                    ),
                    "{a:?}"
                );
                skipped += 1;
            }
        }
        assert!(skipped > 0, "AllLast carries trades Last does not");
    }

    /// L1's volume is the sum of the reported trade sizes through the step it reports, and its
    /// bid, ask, last, high and low are those of the same market steps.
    #[test]
    fn l1_agrees_with_the_market_and_its_volume_adds_up() {
        for con in [265598, 711280073, 12087792] {
            let i = inst(con);
            let mut l1 = L1Gen::new(6, &i, false);
            let opening: Vec<_> = l1.by_ref().take(L1_OPENING as usize).collect();
            let open = match opening[1] {
                L1Tick::Price { price, .. } => price,
                other => panic!("{other:?}"),
            };
            assert_eq!(
                opening[4],
                L1Tick::Size {
                    tick_type: l1::VOLUME,
                    size: 0
                }
            );
            let quotes = TbtGen::new(6, &i, TbtKind::BidAsk);
            let trades = TbtGen::new(6, &i, TbtKind::AllLast);
            let (mut volume, mut high, mut low) = (0i64, open, open);
            let mut seen = [0u32; 4];
            for (s, (q, t)) in quotes.zip(trades).take(30_000).enumerate() {
                let msg = l1.next().unwrap();
                assert_eq!(l1.market_step(), Some(s as u64));
                let TbtTick::BidAsk {
                    bid,
                    ask,
                    bid_size,
                    ask_size,
                    ..
                } = q
                else {
                    panic!()
                };
                let TbtTick::Trade {
                    price,
                    size,
                    unreported,
                    ..
                } = t
                else {
                    panic!()
                };
                if !unreported {
                    volume += size;
                    high = high.max(price);
                    low = low.min(price);
                }
                match msg {
                    L1Tick::Size {
                        tick_type: l1::VOLUME,
                        size,
                    } => {
                        assert_eq!(size, volume, "{con} step {s}");
                        seen[0] += 1;
                    }
                    L1Tick::Price {
                        tick_type: l1::LAST,
                        price: p,
                        size: z,
                        ..
                    } => {
                        assert_eq!((p, z, unreported), (price, size, false), "{con} step {s}");
                        seen[1] += 1;
                    }
                    L1Tick::Price {
                        tick_type: l1::BID,
                        price: p,
                        size: z,
                        ..
                    } => {
                        assert_eq!((p, z), (bid, bid_size), "{con} step {s}");
                        seen[2] += 1;
                    }
                    L1Tick::Price {
                        tick_type: l1::ASK,
                        price: p,
                        size: z,
                        ..
                    } => {
                        assert_eq!((p, z), (ask, ask_size), "{con} step {s}");
                    }
                    L1Tick::Size {
                        tick_type: l1::BID_SIZE,
                        size: z,
                    } => assert_eq!(z, bid_size),
                    L1Tick::Size {
                        tick_type: l1::ASK_SIZE,
                        size: z,
                    } => assert_eq!(z, ask_size),
                    L1Tick::Price {
                        tick_type: l1::HIGH,
                        price: p,
                        ..
                    } => {
                        assert_eq!((p, p), (high, price), "{con} step {s}: a new high");
                        seen[3] += 1;
                    }
                    L1Tick::Price {
                        tick_type: l1::LOW,
                        price: p,
                        ..
                    } => {
                        assert_eq!((p, p), (low, price), "{con} step {s}: a new low");
                    }
                    L1Tick::Timestamp { .. } => {}
                    other => panic!("{con} step {s}: unexpected {other:?}"),
                }
            }
            assert!(seen.iter().all(|&n| n > 0), "{con}: {seen:?}");
        }
    }

    #[test]
    fn every_kind_depends_on_the_seed() {
        let i = inst(711280073);
        for kind in TbtKind::ALL {
            let a: Vec<_> = TbtGen::new(1, &i, kind).take(200).collect();
            assert_eq!(a, TbtGen::new(1, &i, kind).take(200).collect::<Vec<_>>());
            assert_ne!(
                a,
                TbtGen::new(2, &i, kind).take(200).collect::<Vec<_>>(),
                "{kind:?}"
            );
        }
        let a: Vec<_> = L1Gen::new(1, &i, false).take(200).collect();
        assert_eq!(a, L1Gen::new(1, &i, false).take(200).collect::<Vec<_>>());
        assert_ne!(a, L1Gen::new(2, &i, false).take(200).collect::<Vec<_>>());
    }

    /// The property: over 10k trades of the Last stream, a simple delta against the
    /// same step's quote (at or above the ask +size, at or below the bid -size) finds both
    /// buyers and sellers.
    #[test]
    fn delta_over_last_is_neither_all_buys_nor_all_sells() {
        for con in [711280073, 265598] {
            let i = inst(con);
            let mut quotes = TbtGen::new(21, &i, TbtKind::BidAsk);
            let mut last = TbtGen::new(21, &i, TbtKind::Last);
            let (mut buys, mut sells) = (0u32, 0u32);
            let mut quote = None;
            for _ in 0..10_000 {
                let TbtTick::Trade { price, .. } = last.next().unwrap() else {
                    panic!()
                };
                while quotes.market_step() != last.market_step() {
                    quote = quotes.next();
                }
                let Some(TbtTick::BidAsk { bid, ask, .. }) = quote else {
                    panic!()
                };
                if price >= ask {
                    buys += 1;
                } else if price <= bid {
                    sells += 1;
                }
            }
            assert!(
                buys > 4_000 && sells > 4_000,
                "{con}: {buys} buys, {sells} sells"
            );
        }
    }
}
