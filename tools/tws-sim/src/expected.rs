//! `tws-sim expected`: prints, one JSON object a line, what a subscription's first N ticks
//! carry on the wire (without times), so a test can compare exactly.

use std::io::Write;

use serde::Serialize;

use crate::decimal::{price_str, size_str};
use crate::generator::{L1Gen, L1Tick, TbtGen, TbtKind, TbtTick};
use crate::universe::Instrument;

#[derive(Serialize)]
struct TradeLine<'a> {
    price: String,
    size: String,
    exchange: &'a str,
    conditions: &'a str,
    past_limit: bool,
    unreported: bool,
}

#[derive(Serialize)]
struct BidAskLine {
    bid_price: String,
    ask_price: String,
    bid_size: String,
    ask_size: String,
    bid_past_low: bool,
    ask_past_high: bool,
}

#[derive(Serialize)]
struct MidLine {
    mid_point: String,
}

#[derive(Serialize)]
#[serde(tag = "msg")]
enum L1Line {
    #[serde(rename = "tickPrice")]
    Price {
        tick_type: i32,
        price: String,
        size: String,
        attr: i32,
    },
    #[serde(rename = "tickSize")]
    Size { tick_type: i32, size: String },
    #[serde(rename = "tickString")]
    Str { tick_type: i32, value: String },
    #[serde(rename = "tickGeneric")]
    Generic { tick_type: i32, value: String },
}

/// The text of a trade's exchange and condition indexes.
pub fn trade_strings(inst: &Instrument, exchange: usize, conditions: usize) -> (&str, &str) {
    let s = &inst.spec;
    (
        s.trade_exchanges[exchange].as_str(),
        s.trade_conditions
            .get(conditions)
            .map_or("", String::as_str),
    )
}

/// One tick-by-tick tick as its JSON line.
pub fn tbt_line(inst: &Instrument, tick: &TbtTick) -> serde_json::Result<String> {
    match *tick {
        TbtTick::Trade {
            price,
            size,
            past_limit,
            unreported,
            exchange,
            conditions,
        } => {
            let (exchange, conditions) = trade_strings(inst, exchange, conditions);
            serde_json::to_string(&TradeLine {
                price: price_str(price),
                size: size_str(size),
                exchange,
                conditions,
                past_limit,
                unreported,
            })
        }
        TbtTick::BidAsk {
            bid,
            ask,
            bid_size,
            ask_size,
            bid_past_low,
            ask_past_high,
        } => serde_json::to_string(&BidAskLine {
            bid_price: price_str(bid),
            ask_price: price_str(ask),
            bid_size: size_str(bid_size),
            ask_size: size_str(ask_size),
            bid_past_low,
            ask_past_high,
        }),
        TbtTick::MidPoint { mid } => serde_json::to_string(&MidLine {
            mid_point: price_str(mid),
        }),
    }
}

/// One L1 message as its JSON line.
pub fn l1_line(tick: &L1Tick) -> serde_json::Result<String> {
    serde_json::to_string(&match *tick {
        L1Tick::Price {
            tick_type,
            price,
            size,
            attr,
        } => L1Line::Price {
            tick_type,
            price: price_str(price),
            size: size_str(size),
            attr,
        },
        L1Tick::Size { tick_type, size } => L1Line::Size {
            tick_type,
            size: size_str(size),
        },
        L1Tick::Timestamp { tick_type, epoch } => L1Line::Str {
            tick_type,
            value: epoch.to_string(),
        },
        L1Tick::Generic { tick_type, value } => L1Line::Generic {
            tick_type,
            value: price_str(value),
        },
    })
}

/// What `--tick-type` names.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Tbt(TbtKind),
    MktData { delayed: bool },
}

/// Writes the first `count` ticks of a subscription.
pub fn print(
    out: &mut impl Write,
    seed: u64,
    inst: &Instrument,
    stream: Stream,
    count: u64,
) -> anyhow::Result<()> {
    match stream {
        Stream::Tbt(kind) => {
            for tick in TbtGen::new(seed, inst, kind).take(count as usize) {
                writeln!(out, "{}", tbt_line(inst, &tick)?)?;
            }
        }
        Stream::MktData { delayed } => {
            for tick in L1Gen::new(seed, inst, delayed).take(count as usize) {
                writeln!(out, "{}", l1_line(&tick)?)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}
