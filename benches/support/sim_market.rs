//! tws-sim's MNQ market as the engine would publish it, for the benches that need realistic
//! ticks (benches/storage.rs and benches/studies.rs include this file with `#[path]`): quotes
//! at about 100/s and trades at about 25/s (exponential gaps), values from tws-sim's
//! generator (seed 7), IB times to the second, one sequence for both, the generator's flags.

use ib_stream_ipc::{Quote, Record, Trade, flags};
use tws_sim::generator::{TbtGen, TbtKind, TbtTick};

/// The contract: MNQ.
pub(crate) const CID: u32 = 711_280_073;

/// The records from `base_ns` on, endless; bound them with `take` or `take_while`.
pub(crate) fn sim_market(base_ns: i64) -> impl Iterator<Item = Record> {
    let uni = tws_sim::universe::Universe::builtin();
    let inst = uni.get(
        uni.by_con_id(CID as i32)
            .expect("MNQ in the built-in universe"),
    );
    let mut quotes = TbtGen::new(7, inst, TbtKind::BidAsk);
    let mut trades = TbtGen::new(7, inst, TbtKind::Last);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut gap = move |mean_ns: f64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        (-u.ln() * mean_ns) as i64 + 1
    };
    let (mut tq, mut tt) = (base_ns + gap(1e7), base_ns + gap(4e7));
    let mut seq = 0u64;
    std::iter::from_fn(move || {
        loop {
            let quote_next = tq <= tt;
            let ts = tq.min(tt);
            let ib_time = (ts - 2_000_000) / 1_000_000_000 * 1_000_000_000;
            let tick = if quote_next {
                tq += gap(1e7);
                quotes.next()
            } else {
                tt += gap(4e7);
                trades.next()
            };
            let mut r = match tick {
                Some(TbtTick::BidAsk {
                    bid,
                    ask,
                    bid_size,
                    ask_size,
                    bid_past_low,
                    ask_past_high,
                }) => {
                    let mut r = Record::quote(
                        CID,
                        ib_time,
                        Quote {
                            bid_price: bid,
                            ask_price: ask,
                            bid_size,
                            ask_size,
                        },
                    );
                    if bid_past_low {
                        r.flags |= flags::BID_PAST_LOW;
                    }
                    if ask_past_high {
                        r.flags |= flags::ASK_PAST_HIGH;
                    }
                    r
                }
                Some(TbtTick::Trade {
                    price,
                    size,
                    past_limit,
                    ..
                }) => {
                    let mut r = Record::trade(
                        false,
                        CID,
                        ib_time,
                        Trade {
                            price,
                            size,
                            // MNQ trades on CME only, with no special conditions.
                            exchange_id: 1,
                            conditions_id: 0,
                        },
                    );
                    if past_limit {
                        r.flags |= flags::PAST_LIMIT;
                    }
                    r
                }
                _ => continue,
            };
            seq += 1;
            r.seq = seq;
            r.ts_recv = ts;
            return Some(r);
        }
    })
}
