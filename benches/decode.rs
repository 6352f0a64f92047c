//! Decode throughput of the hot tick messages, both framings, one core.
//!
//! A stream of frames is encoded up front (like a captured socket stream: tickPrice,
//! tickSize, tick-by-tick BidAsk and Last with moving prices), then fed to a FrameReader
//! in 64 KiB reads and decoded into a Record per frame through the hot path. Batch timing:
//! warm-up rounds, then 300 short timed rounds; per stream the median, 10th-percentile and
//! best round are shown. The last line is machine-readable:
//! `bench=decode text_ns=<n> proto_ns=<n> text_fps=<n> proto_fps=<n>` (ns per frame, one
//! decimal; frames per second, integer) for the mixed stream's 10th-percentile round.

use ib_stream::ipc::Record;
use ib_stream::tws::msg::server::{TbtQuote, TbtTrade, TickByTickData};
use ib_stream::tws::tick::{Interner, VecInterner, decode_tick};
use ib_stream::tws::{FrameReader, ServerMsg};
use std::hint::black_box;
use std::time::Instant;

const P: i64 = 1_000_000_000;
const S: i64 = 100_000_000;
const FRAMES: usize = 2_000;
const READ: usize = 64 * 1024;
const WARMUP: usize = 50;
const ROUNDS: usize = 2_000;

#[derive(Clone, Copy, PartialEq)]
enum Mix {
    TickPrice,
    TickSize,
    BidAsk,
    Last,
    All,
}

fn msg(kind: Mix, i: usize) -> ServerMsg {
    let k = i as i64;
    let px = 18_900 * P / 100 + (k % 97) * P / 100;
    let kind = if kind == Mix::All {
        [Mix::TickPrice, Mix::TickSize, Mix::BidAsk, Mix::Last][i % 4]
    } else {
        kind
    };
    match kind {
        Mix::TickPrice => ServerMsg::TickPrice {
            req_id: 1_500_000_000 + (i % 8) as i32,
            tick_type: [1, 2, 4][i % 3],
            price: px,
            size: (100 + k % 900) * S,
            attr_mask: 1,
        },
        Mix::TickSize => ServerMsg::TickSize {
            req_id: 1_500_000_000 + (i % 8) as i32,
            tick_type: [0, 3, 5, 8][i % 4],
            size: (100 + k % 900) * S,
        },
        Mix::BidAsk => ServerMsg::TickByTick {
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
        Mix::Last | Mix::All => ServerMsg::TickByTick {
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

fn stream(kind: Mix, version: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAMES * 64);
    for i in 0..FRAMES {
        msg(kind, i).encode(version, &mut out);
    }
    out
}

/// One pass over the stream: returns (frames, checksum).
fn pass(
    wire: &[u8],
    version: u32,
    reader: &mut FrameReader,
    strings: &mut VecInterner,
) -> (usize, i64) {
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
    (n, black_box(sum))
}

/// One stream ready to decode, with its reader, interner and round timings.
struct Case {
    name: &'static str,
    kind: Mix,
    version: u32,
    wire: Vec<u8>,
    reader: FrameReader,
    strings: VecInterner,
    ns: Vec<f64>,
}

impl Case {
    fn new(name: &'static str, kind: Mix, version: u32) -> Case {
        let mut strings = VecInterner::default();
        for s in ["NASDAQ", "ARCA", "IEX", "EDGX", " T", "   I"] {
            strings.intern(s.as_bytes());
        }
        Case {
            name,
            kind,
            version,
            wire: stream(kind, version),
            reader: FrameReader::with_capacity(2 * READ),
            strings,
            ns: Vec::with_capacity(ROUNDS),
        }
    }

    fn round(&mut self, timed: bool) {
        let t = Instant::now();
        let (n, _) = pass(
            black_box(&self.wire),
            self.version,
            &mut self.reader,
            &mut self.strings,
        );
        let dt = t.elapsed();
        assert_eq!(n, FRAMES);
        if timed {
            self.ns.push(dt.as_nanos() as f64 / n as f64);
        }
    }

    /// ns per frame: (median, 10th percentile, best).
    fn stats(&mut self) -> (f64, f64, f64) {
        self.ns.sort_by(f64::total_cmp);
        (
            self.ns[self.ns.len() / 2],
            self.ns[self.ns.len() / 10],
            self.ns[0],
        )
    }
}

fn main() {
    // `cargo bench --bench decode -- <name>` runs only the streams whose name contains it.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let (text_v, proto_v) = (178, 226);
    let mut cases = Vec::new();
    for (name, kind) in [
        ("tickPrice", Mix::TickPrice),
        ("tickSize", Mix::TickSize),
        ("tbt_bidask", Mix::BidAsk),
        ("tbt_last", Mix::Last),
        ("mixed", Mix::All),
    ] {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        cases.push(Case::new(name, kind, text_v));
        cases.push(Case::new(name, kind, proto_v));
    }
    println!(
        "decode bench: {FRAMES}-frame streams, {READ}-byte reads, {WARMUP} warm-up + {ROUNDS} timed rounds each, \
         rounds of all streams interleaved; ns/frame median / p10 / best"
    );
    for _ in 0..WARMUP {
        cases.iter_mut().for_each(|c| c.round(false));
    }
    // Interleaved so that every stream sees the same share of the machine's other load.
    for _ in 0..ROUNDS {
        cases.iter_mut().for_each(|c| c.round(true));
    }
    let mut summary = None;
    for pair in cases.chunks_mut(2) {
        let (t, t10, tb) = pair[0].stats();
        let (p, p10, pb) = pair[1].stats();
        println!(
            "{:<11} text(v{text_v}) {t:>6.1} / {t10:>5.1} / {tb:>5.1} ns | protobuf(v{proto_v}) {p:>6.1} / {p10:>5.1} / {pb:>5.1} ns",
            pair[0].name
        );
        if pair[0].kind == Mix::All {
            summary = Some((t10, p10));
        }
    }
    if let Some((t10, p10)) = summary {
        // The machine-readable summary: the mixed stream's 10th-percentile round, which on
        // a shared machine is a round not slowed by other processes' time slices.
        println!(
            "bench=decode text_ns={t10:.1} proto_ns={p10:.1} text_fps={:.0} proto_fps={:.0}",
            1e9 / t10,
            1e9 / p10
        );
    }
}
