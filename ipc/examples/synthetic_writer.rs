//! A stand-in for the engine: publishes realistic tick-by-tick records into a ring at a given
//! rate, so that readers (see `strategy.rs`) can be tried without IB or the engine.
//!
//! ```text
//! cargo run -p ib-stream-ipc --release --example synthetic_writer -- \
//!     --ring /dev/shm/ib-stream-demo/ticks.ring --rate 200000 --seconds 10
//! ```
//!
//! Options: `--ring <path>` (required), `--rate <records/s>` (default 100000), `--seconds <n>`
//! (default 10), `--capacity <slots, power of two>` (default 1048576), `--batch-us <µs>`
//! (how often a batch is published, default 100).
//!
//! Records: a price random walk per instrument (AAPL, MSFT, TSLA, MNQ conIds), about one trade
//! (tick-by-tick Last) for every three quotes (BidAsk), `ts_recv` = now, `ts_event` = now
//! rounded down to the second (what IB sends for tick-by-tick), one Heartbeat record a second.

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ib_stream_ipc::record::{Quote, RecordKind, Trade};
use ib_stream_ipc::shm::unix_time_ns;
use ib_stream_ipc::{PRICE_SCALE, Record, RingWriter, SIZE_SCALE, ShmOptions};

struct Opts {
    ring: PathBuf,
    rate: u64,
    seconds: u64,
    capacity: u64,
    batch_us: u64,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        ring: PathBuf::new(),
        rate: 100_000,
        seconds: 10,
        capacity: 1 << 20,
        batch_us: 100,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--ring" => o.ring = PathBuf::from(val()?),
            "--rate" => o.rate = num(val()?)?,
            "--seconds" => o.seconds = num(val()?)?,
            "--capacity" => o.capacity = num(val()?)?,
            "--batch-us" => o.batch_us = num(val()?)?.max(1),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if o.ring.as_os_str().is_empty() {
        return Err("--ring <path> is required".into());
    }
    Ok(o)
}

/// xorshift64*: enough randomness for a demo, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Instrument {
    con_id: u32,
    /// Mid price, PRICE_SCALE fixed point.
    mid: i64,
    /// Price increment, PRICE_SCALE fixed point.
    tick: i64,
}

fn main() -> Result<(), Box<dyn Error>> {
    let o = match parse() {
        Ok(o) => o,
        Err(msg) => {
            eprintln!(
                "{msg}\nusage: synthetic_writer --ring <path> [--rate N] [--seconds N] [--capacity N] [--batch-us N]"
            );
            std::process::exit(2);
        }
    };
    let mut w = RingWriter::create(&o.ring, o.capacity, &ShmOptions::default())?;
    println!(
        "writing {} records/s for {} s into {} (capacity {}, epoch {:#x})",
        o.rate,
        o.seconds,
        o.ring.display(),
        o.capacity,
        w.info().epoch
    );
    let cent = PRICE_SCALE / 100;
    let mut instruments = [
        Instrument {
            con_id: 265_598,
            mid: 190 * PRICE_SCALE,
            tick: cent,
        }, // AAPL
        Instrument {
            con_id: 272_093,
            mid: 415 * PRICE_SCALE,
            tick: cent,
        }, // MSFT
        Instrument {
            con_id: 76_792_991,
            mid: 250 * PRICE_SCALE,
            tick: cent,
        }, // TSLA
        Instrument {
            con_id: 711_280_073,
            mid: 21_000 * PRICE_SCALE,
            tick: PRICE_SCALE / 4,
        }, // MNQ
    ];
    let mut rng = Rng(unix_time_ns() | 1);
    let start = Instant::now();
    let end = start + Duration::from_secs(o.seconds);
    let mut batch: Vec<Record> = Vec::with_capacity(1 << 16);
    let mut made = 0u64;
    let mut next_heartbeat = start;
    while Instant::now() < end {
        let due = (start.elapsed().as_nanos() as u64).saturating_mul(o.rate) / 1_000_000_000;
        let now = unix_time_ns() as i64;
        let ts_event = now - now % 1_000_000_000;
        batch.clear();
        while made < due && batch.len() < batch.capacity() {
            let ins = &mut instruments[rng.below(4) as usize];
            // Random walk of the mid by at most one tick.
            ins.mid += (rng.below(3) as i64 - 1) * ins.tick;
            ins.mid = ins.mid.max(ins.tick * 10);
            let rec = if rng.below(4) == 0 {
                let buy = rng.below(2) == 0;
                let price = ins.mid + if buy { ins.tick / 2 } else { -ins.tick / 2 };
                Record::trade(
                    false,
                    ins.con_id,
                    ts_event,
                    Trade {
                        price,
                        size: (1 + rng.below(500) as i64) * SIZE_SCALE,
                        exchange_id: 1,
                        conditions_id: 0,
                    },
                )
            } else {
                Record::quote(
                    ins.con_id,
                    ts_event,
                    Quote {
                        bid_price: ins.mid - ins.tick / 2,
                        ask_price: ins.mid + ins.tick / 2,
                        bid_size: (1 + rng.below(1000) as i64) * SIZE_SCALE,
                        ask_size: (1 + rng.below(1000) as i64) * SIZE_SCALE,
                    },
                )
            };
            batch.push(Record {
                ts_recv: now,
                ..rec
            });
            made += 1;
        }
        if Instant::now() >= next_heartbeat {
            let mut hb = Record::new(RecordKind::Heartbeat);
            hb.ts_recv = now;
            hb.body[0] = w.last_seq() as i64 + batch.len() as i64;
            batch.push(hb);
            next_heartbeat += Duration::from_secs(1);
        }
        w.publish_batch(&batch);
        w.heartbeat(unix_time_ns());
        std::thread::sleep(Duration::from_micros(o.batch_us));
    }
    println!(
        "published {} records (last seq {}) in {:.2?}",
        made,
        w.last_seq(),
        start.elapsed()
    );
    Ok(())
}
