//! A quick figure for the writer's cost: publishes records into a ring with no reader, one by
//! one and in batches, and prints ns per record and records per second. Not a benchmark suite
//! (no percentiles, no readers): a sanity check that the publish path stays lean.
//!
//! ```text
//! cargo run -p ib-stream-ipc --release --example publish_rate -- [--ring <path>] [--records N]
//! ```
//!
//! Without `--ring` the ring is on the heap; with it, a file (use a path under /dev/shm).

use std::error::Error;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use ib_stream_ipc::record::{RecordKind, Trade};
use ib_stream_ipc::{Record, RingWriter, ShmOptions};

fn main() -> Result<(), Box<dyn Error>> {
    let mut ring: Option<PathBuf> = None;
    let mut records = 50_000_000u64;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let val = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--ring" => ring = Some(PathBuf::from(val)),
            "--records" => records = val.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let capacity = 1 << 20;
    let mut w = match &ring {
        Some(p) => RingWriter::create(p, capacity, &ShmOptions::default())?,
        None => RingWriter::heap(capacity)?,
    };
    let base = Record::trade(
        false,
        265_598,
        1,
        Trade {
            price: 190_000_000_000,
            size: 100_000_000,
            exchange_id: 1,
            conditions_id: 0,
        },
    );
    assert_eq!(base.kind(), Some(RecordKind::TbtLast));
    // Warm up: every slot written once.
    for i in 0..capacity {
        w.publish(&Record {
            ts_recv: i as i64,
            ..base
        });
    }
    for batch in [1usize, 8, 64] {
        let recs: Vec<Record> = (0..batch)
            .map(|i| Record {
                ts_recv: i as i64,
                ..base
            })
            .collect();
        let rounds = records / batch as u64;
        let t0 = Instant::now();
        for _ in 0..rounds {
            w.publish_batch(black_box(&recs));
        }
        let dt = t0.elapsed();
        let n = rounds * batch as u64;
        println!(
            "batch {batch:>3}: {n} records in {dt:.2?}: {:.2} ns/record, {:.1} M records/s",
            dt.as_nanos() as f64 / n as f64,
            n as f64 / dt.as_secs_f64() / 1e6
        );
    }
    println!("last seq {}", w.last_seq());
    Ok(())
}
