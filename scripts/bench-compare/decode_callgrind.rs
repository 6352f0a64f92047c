//! Instruction count of the decode hot path, for `scripts/bench-compare.sh`.
//!
//! Not part of the build: the script copies this file into each revision's worktree as
//! `examples/bench_compare_decode.rs` and builds it with the `bench` profile, so that both
//! revisions run the same harness source. It uses only API that `benches/decode.rs` uses
//! (unchanged since before issue 12). It is the decode bench's mixed stream (tickPrice,
//! tickSize, tick-by-tick BidAsk and Last interleaved, 2 000 frames, 64 KiB reads into a
//! `FrameReader`, `decode_tick` into a `Record`) at one server version; one warm-up pass,
//! then `<rounds>` passes inside `measure_decode`, the only function callgrind counts:
//!
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measure_decode*'
//!  bench_compare_decode <version> <rounds>` prints `frames=<n>` (frames counted).

use ib_stream::ipc::Record;
use ib_stream::tws::msg::server::{TbtQuote, TbtTrade, TickByTickData};
use ib_stream::tws::tick::{Interner, VecInterner, decode_tick};
use ib_stream::tws::{FrameReader, ServerMsg};
use std::hint::black_box;

const P: i64 = 1_000_000_000;
const S: i64 = 100_000_000;
const FRAMES: usize = 2_000;
const READ: usize = 64 * 1024;

/// Frame `i` of the decode bench's mixed stream (benches/decode.rs, `Mix::All`).
fn msg(i: usize) -> ServerMsg {
    let k = i as i64;
    let px = 18_900 * P / 100 + (k % 97) * P / 100;
    match i % 4 {
        0 => ServerMsg::TickPrice {
            req_id: 1_500_000_000 + (i % 8) as i32,
            tick_type: [1, 2, 4][i % 3],
            price: px,
            size: (100 + k % 900) * S,
            attr_mask: 1,
        },
        1 => ServerMsg::TickSize {
            req_id: 1_500_000_000 + (i % 8) as i32,
            tick_type: [0, 3, 5, 8][i % 4],
            size: (100 + k % 900) * S,
        },
        2 => ServerMsg::TickByTick {
            req_id: 1_500_000_100,
            time: 1_767_277_800 + k / 100,
            data: TickByTickData::BidAsk(TbtQuote {
                bid_price: px,
                ask_price: px + P / 100,
                bid_size: (1 + k % 50) * S,
                ask_size: (1 + k % 70) * S,
                bid_past_low: false,
                ask_past_high: false,
            }),
        },
        _ => ServerMsg::TickByTick {
            req_id: 1_500_000_101,
            time: 1_767_277_800 + k / 100,
            data: TickByTickData::Last(TbtTrade {
                price: px,
                size: (1 + k % 500) * S,
                past_limit: false,
                unreported: false,
                exchange: ["NASDAQ", "ARCA", "IEX", "EDGX"][i % 4].into(),
                special_conditions: ["", " T", "   I"][i % 3].into(),
            }),
        },
    }
}

/// One pass over the stream, as the decode bench's `pass`: frames decoded.
fn pass(wire: &[u8], version: u32, reader: &mut FrameReader, strings: &mut VecInterner) -> usize {
    let mut rec = Record::ZERO;
    let mut n = 0;
    let mut sum = 0i64;
    for chunk in wire.chunks(READ) {
        reader.feed(chunk);
        while let Some(frame) = reader.next_frame(version).expect("valid stream") {
            let id = decode_tick(&frame, strings, &mut rec).expect("tick");
            sum = sum
                .wrapping_add(rec.body[0])
                .wrapping_add(i64::from(id.unwrap_or(0)));
            n += 1;
        }
    }
    black_box(sum);
    n
}

#[inline(never)]
fn measure_decode(
    wire: &[u8],
    version: u32,
    rounds: usize,
    reader: &mut FrameReader,
    strings: &mut VecInterner,
) -> usize {
    let mut n = 0;
    for _ in 0..rounds {
        n += pass(black_box(wire), version, reader, strings);
    }
    n
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let version: u32 = args.get(1).map_or(226, |v| v.parse().expect("version"));
    let rounds: usize = args.get(2).map_or(20, |v| v.parse().expect("rounds"));
    let mut wire = Vec::with_capacity(FRAMES * 64);
    for i in 0..FRAMES {
        msg(i).encode(version, &mut wire);
    }
    let mut strings = VecInterner::default();
    for s in ["NASDAQ", "ARCA", "IEX", "EDGX", " T", "   I"] {
        strings.intern(s.as_bytes());
    }
    let mut reader = FrameReader::with_capacity(2 * READ);
    assert_eq!(pass(&wire, version, &mut reader, &mut strings), FRAMES);
    let n = measure_decode(&wire, version, rounds, &mut reader, &mut strings);
    assert_eq!(n, FRAMES * rounds);
    println!("frames={n} bytes={}", wire.len());
}
