//! Deterministic market data.
//!
//! Tick k of a subscription is a function of (seed, conId, kind, k) only: each tick draws its
//! randomness from a hash of those four numbers and the price walks from the instrument's start
//! price, so a fresh subscription always replays the same sequence, whatever the timing, the
//! rate or the other subscriptions. Values are fixed point (prices 1e-9, sizes 1e-8), on the
//! instrument's tick grid, with sizes in lots, exchanges and trade conditions from the
//! instrument's lists.

use crate::decimal::SIZE_SCALE;
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

    fn tag(self) -> u64 {
        self.wire_type() as u64
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

/// SplitMix64 finaliser: a fast, well-mixed hash step.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The random bits of tick k.
fn draw(stream_key: u64, k: u64) -> u64 {
    splitmix(stream_key ^ splitmix(k))
}

fn stream_key(seed: u64, con_id: i32, tag: u64) -> u64 {
    splitmix(splitmix(splitmix(seed) ^ con_id as u32 as u64) ^ tag)
}

/// The part of an instrument the walk needs, copied so a generator owns no borrow.
#[derive(Debug, Clone, Copy)]
struct Params {
    min_tick: i64,
    lot: i64,
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

/// A mid price (in ticks) that moves by -2..=+2 ticks per step and never gets near zero.
#[derive(Debug, Clone, Copy)]
struct Walk {
    mid_ticks: i64,
    floor: i64,
}

impl Walk {
    fn new(p: &Params, start: i64) -> Self {
        let floor = p.max_spread as i64 + 2;
        Self {
            mid_ticks: (start / p.min_tick).max(floor),
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
        self.mid_ticks += step;
        if self.mid_ticks < self.floor {
            // Reflect off the floor so prices stay positive and the walk stays symmetric.
            self.mid_ticks = 2 * self.floor - self.mid_ticks;
        }
    }
}

/// The tick-by-tick stream of one subscription.
#[derive(Debug, Clone)]
pub struct TbtGen {
    kind: TbtKind,
    key: u64,
    p: Params,
    lot_units: i64,
    walk: Walk,
    k: u64,
}

impl TbtGen {
    pub fn new(seed: u64, inst: &Instrument, kind: TbtKind) -> Self {
        let p = Params::of(inst);
        Self {
            kind,
            key: stream_key(seed, inst.con_id(), kind.tag()),
            p,
            lot_units: inst.lot / SIZE_SCALE,
            walk: Walk::new(&p, inst.start_price),
            k: 0,
        }
    }

    pub fn kind(&self) -> TbtKind {
        self.kind
    }
}

impl Iterator for TbtGen {
    type Item = TbtTick;

    fn next(&mut self) -> Option<TbtTick> {
        let r = draw(self.key, self.k);
        self.k += 1;
        let p = &self.p;
        self.walk.step(r);
        let spread = 1 + ((r >> 8) % p.max_spread) as i64;
        let bid = self.walk.mid_ticks * p.min_tick;
        let ask = (self.walk.mid_ticks + spread) * p.min_tick;
        Some(match self.kind {
            TbtKind::BidAsk => TbtTick::BidAsk {
                bid,
                ask,
                bid_size: p.size(r >> 16),
                ask_size: p.size(r >> 24),
                bid_past_low: (r >> 32).is_multiple_of(4096),
                ask_past_high: (r >> 44).is_multiple_of(4096),
            },
            TbtKind::MidPoint => TbtTick::MidPoint {
                mid: bid + spread * p.min_tick / 2,
            },
            TbtKind::Last | TbtKind::AllLast => {
                let price = if (r >> 12) & 1 == 1 { ask } else { bid };
                // Stocks trade odd lots now and then (fewer shares than one lot).
                let size = if self.lot_units > 1 && (r >> 40).is_multiple_of(8) {
                    SIZE_SCALE * (1 + ((r >> 48) % (self.lot_units as u64 - 1)) as i64)
                } else {
                    p.size(r >> 16)
                };
                // The first condition string is the common one.
                let conditions = if p.n_conditions > 1 && (r >> 24) % 16 >= 10 {
                    1 + ((r >> 28) % (p.n_conditions - 1)) as usize
                } else {
                    0
                };
                TbtTick::Trade {
                    price,
                    size,
                    past_limit: (r >> 52).is_multiple_of(8192),
                    // Unreported trades appear only in AllLast, as at IB.
                    unreported: self.kind == TbtKind::AllLast && (r >> 57).is_multiple_of(32),
                    exchange: ((r >> 32) % p.n_exchanges) as usize,
                    conditions,
                }
            }
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

/// The reqMktData (L1) stream of one subscription: a fixed opening (close, open, high, low,
/// volume, halted) and then quote, size, trade, volume and timestamp updates.
#[derive(Debug, Clone)]
pub struct L1Gen {
    key: u64,
    p: Params,
    start: i64,
    delayed: bool,
    walk: Walk,
    spread: i64,
    volume: i64,
    k: u64,
}

const L1_TAG: u64 = 5;
const L1_OPENING: u64 = 6;

impl L1Gen {
    pub fn new(seed: u64, inst: &Instrument, delayed: bool) -> Self {
        let p = Params::of(inst);
        Self {
            key: stream_key(seed, inst.con_id(), L1_TAG),
            p,
            start: inst.start_price,
            delayed,
            walk: Walk::new(&p, inst.start_price),
            spread: 1,
            volume: inst.lot * 1000,
            k: 0,
        }
    }

    fn tick_id(&self, tick_type: i32) -> i32 {
        if self.delayed {
            delayed_tick_type(tick_type)
        } else {
            tick_type
        }
    }

    fn live_next(&mut self) -> L1Tick {
        let k = self.k;
        self.k += 1;
        let tick = self.p.min_tick;
        // Round the opening levels to the tick grid around the start price.
        let level = |pct: i64| (self.start + self.start / 1000 * pct) / tick * tick;
        if k < L1_OPENING {
            return match k {
                0 => L1Tick::Price {
                    tick_type: l1::CLOSE,
                    price: level(-3),
                    size: 0,
                    attr: 0,
                },
                1 => L1Tick::Price {
                    tick_type: l1::OPEN,
                    price: level(-1),
                    size: 0,
                    attr: 0,
                },
                2 => L1Tick::Price {
                    tick_type: l1::HIGH,
                    price: level(4),
                    size: 0,
                    attr: 0,
                },
                3 => L1Tick::Price {
                    tick_type: l1::LOW,
                    price: level(-5),
                    size: 0,
                    attr: 0,
                },
                4 => L1Tick::Size {
                    tick_type: l1::VOLUME,
                    size: self.volume,
                },
                _ => L1Tick::Generic {
                    tick_type: l1::HALTED,
                    value: 0,
                },
            };
        }
        let r = draw(self.key, k);
        let bid = |s: &Self| s.walk.mid_ticks * tick;
        let ask = |s: &Self| (s.walk.mid_ticks + s.spread) * tick;
        match (r >> 56) % 100 {
            0..30 => {
                self.walk.step(r);
                self.spread = 1 + ((r >> 8) % self.p.max_spread) as i64;
                L1Tick::Price {
                    tick_type: l1::BID,
                    price: bid(self),
                    size: self.p.size(r >> 16),
                    attr: ATTR_CAN_AUTO_EXECUTE,
                }
            }
            30..60 => {
                self.walk.step(r);
                self.spread = 1 + ((r >> 8) % self.p.max_spread) as i64;
                L1Tick::Price {
                    tick_type: l1::ASK,
                    price: ask(self),
                    size: self.p.size(r >> 16),
                    attr: ATTR_CAN_AUTO_EXECUTE,
                }
            }
            60..70 => L1Tick::Size {
                tick_type: l1::BID_SIZE,
                size: self.p.size(r >> 16),
            },
            70..80 => L1Tick::Size {
                tick_type: l1::ASK_SIZE,
                size: self.p.size(r >> 16),
            },
            80..90 => {
                let price = if (r >> 12) & 1 == 1 {
                    ask(self)
                } else {
                    bid(self)
                };
                let size = self.p.size(r >> 16);
                self.volume += size;
                L1Tick::Price {
                    tick_type: l1::LAST,
                    price,
                    size,
                    attr: 0,
                }
            }
            90..95 => L1Tick::Size {
                tick_type: l1::VOLUME,
                size: self.volume,
            },
            _ => L1Tick::Timestamp {
                tick_type: l1::LAST_TIMESTAMP,
                epoch: L1_BASE_EPOCH + (k / 4) as i64,
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
}
