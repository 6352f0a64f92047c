//! A tiny strategy: reads the ring read-only and keeps, per instrument, the trade count, the
//! running VWAP and the last quote. Reads are zero-copy in the sense that matters: no syscall,
//! no allocation and no parsing per record; the record is copied once out of its slot (the
//! sequence lock needs that copy) and its fields are read directly.
//!
//! ```text
//! cargo run -p ib-stream-ipc --release --example synthetic_writer -- --ring /dev/shm/ib-stream-demo/ticks.ring --seconds 10 &
//! cargo run -p ib-stream-ipc --release --example strategy -- --ring /dev/shm/ib-stream-demo/ticks.ring --seconds 8
//! ```
//!
//! Options: `--ring <path>` (required), `--seconds <n>` (default 10, the run is bounded),
//! `--start newest|oldest` (default newest), `--spin` (busy-poll a core instead of sleeping
//! 100 µs after 1000 empty polls: lower latency, one core at 100 %). Waits for the ring if it does not exist yet,
//! follows a restarted writer (new epoch) and reports a dead one.

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ib_stream_ipc::record::RecordKind;
use ib_stream_ipc::shm::unix_time_ns;
use ib_stream_ipc::{
    Follow, FollowConfig, FollowEvent, PRICE_SCALE, RingFollower, RingReader, SIZE_SCALE, StartAt,
    WriterStatus,
};

/// Per-instrument state, in a fixed table filled on first sight (no allocation per record).
#[derive(Clone, Copy, Default)]
struct Stats {
    instrument_id: u32,
    trades: u64,
    /// Σ price × size, in PRICE_SCALE × SIZE_SCALE units.
    notional: i128,
    /// Σ size, SIZE_SCALE units.
    volume: i128,
    last_price: i64,
    bid: i64,
    ask: i64,
    quotes: u64,
}

impl Stats {
    fn vwap(&self) -> Option<f64> {
        (self.volume > 0).then(|| (self.notional / self.volume) as f64 / PRICE_SCALE as f64)
    }
}

const MAX_INSTRUMENTS: usize = 256;

struct Book {
    table: [Stats; MAX_INSTRUMENTS],
    used: usize,
    overflow: u64,
}

impl Book {
    /// The slot of `id` (a linear scan of a few cache lines: strategies track few instruments).
    fn get(&mut self, id: u32) -> Option<&mut Stats> {
        let pos = self.table[..self.used]
            .iter()
            .position(|s| s.instrument_id == id);
        let i = match pos {
            Some(i) => i,
            None if self.used < MAX_INSTRUMENTS => {
                self.table[self.used] = Stats {
                    instrument_id: id,
                    ..Stats::default()
                };
                self.used += 1;
                self.used - 1
            }
            None => {
                self.overflow += 1;
                return None;
            }
        };
        Some(&mut self.table[i])
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut ring = None;
    let mut seconds = 10u64;
    let mut start = StartAt::Newest;
    let mut spin = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--spin" {
            spin = true;
            continue;
        }
        let val = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--ring" => ring = Some(PathBuf::from(val)),
            "--seconds" => seconds = val.parse()?,
            "--start" if val == "oldest" => start = StartAt::Oldest,
            "--start" if val == "newest" => start = StartAt::Newest,
            other => return Err(format!("unknown argument {other} {val}").into()),
        }
    }
    let ring =
        ring.ok_or("usage: strategy --ring <path> [--seconds N] [--start newest|oldest] [--spin]")?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let reader = RingReader::open_wait(
        &ring,
        start,
        Duration::from_secs(seconds),
        Duration::from_millis(20),
    )?;
    // Follows laps, a stopped or dead writer and a restarted one (new epoch) for us; the
    // writer is looked at only when there is nothing to read, at most every 100 ms.
    let mut reader = RingFollower::new(
        reader,
        FollowConfig {
            check_every: Duration::from_millis(100),
            stale_after: Duration::from_secs(2),
        },
    );
    // Seen by `ib-stream top` with its lag; a full registry only means it reads unseen.
    let registered = reader.register("strategy");
    println!(
        "reading {} (epoch {:#x}, capacity {}; {registered})",
        ring.display(),
        reader.info().epoch,
        reader.info().capacity
    );

    let mut book = Book {
        table: [Stats::default(); MAX_INSTRUMENTS],
        used: 0,
        overflow: 0,
    };
    let (mut records, mut lost, mut lat_sum, mut lat_max, mut lat_n) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut idle_polls = 0u64;
    let mut next_report = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match reader.poll() {
            Follow::Record(r) => {
                idle_polls = 0;
                records += 1;
                // Publish → read latency, sampled on one record in 64 (a clock read costs ~20 ns).
                if records % 64 == 0 {
                    let lat = (unix_time_ns() as i64 - r.ts_recv).max(0) as u64;
                    lat_sum += lat;
                    lat_max = lat_max.max(lat);
                    lat_n += 1;
                }
                match r.kind() {
                    Some(RecordKind::TbtLast | RecordKind::TbtAllLast) => {
                        if let Some(s) = book.get(r.instrument_id) {
                            let (price, size) = (r.body[0], r.body[1]);
                            s.trades += 1;
                            s.notional += i128::from(price) * i128::from(size);
                            s.volume += i128::from(size);
                            s.last_price = price;
                        }
                    }
                    Some(RecordKind::TbtBidAsk) => {
                        if let Some(s) = book.get(r.instrument_id) {
                            s.bid = r.body[0];
                            s.ask = r.body[1];
                            s.quotes += 1;
                        }
                    }
                    _ => {}
                }
            }
            Follow::Event(FollowEvent::Lost {
                count,
                first_seq,
                last_seq,
            }) => {
                lost += count;
                eprintln!("lapped: lost {count} records ({first_seq}..={last_seq})");
            }
            Follow::Event(FollowEvent::WriterRestart(r)) => match r.lost_from() {
                None => println!(
                    "writer restarted after a clean stop: now reading epoch {:#x}",
                    r.new_epoch
                ),
                Some(from) => println!(
                    "writer restarted without a clean stop: what it got after seq {} of epoch {:#x} is lost; now reading epoch {:#x}",
                    from - 1,
                    r.old_epoch,
                    r.new_epoch
                ),
            },
            Follow::Event(FollowEvent::WriterState(status)) => match status {
                WriterStatus::Gone { pid } => {
                    println!("writer (pid {pid}) is gone; waiting for a new one")
                }
                WriterStatus::Stale { heartbeat_age_ns } => {
                    println!("writer silent for {:.1} s", heartbeat_age_ns as f64 / 1e9)
                }
                WriterStatus::Stopped => println!("writer stopped cleanly; waiting for a new one"),
                WriterStatus::Alive { .. } => println!("writer alive"),
                WriterStatus::Replaced => {}
            },
            Follow::Empty => {
                idle_polls += 1;
                if spin || idle_polls < 1000 {
                    std::hint::spin_loop();
                } else {
                    // Quiet: stop burning the core.
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(1);
            report(
                &book,
                records,
                lost,
                lat_sum.checked_div(lat_n).unwrap_or(0),
                lat_max,
                reader.reader().lag(),
            );
        }
    }
    report(
        &book,
        records,
        lost,
        lat_sum.checked_div(lat_n).unwrap_or(0),
        lat_max,
        reader.reader().lag(),
    );
    Ok(())
}

fn report(book: &Book, records: u64, lost: u64, lat_mean: u64, lat_max: u64, lag: u64) {
    println!(
        "records {records}  lost {lost}  lag {lag}  publish->read mean {lat_mean} ns max {lat_max} ns{}",
        if book.overflow > 0 {
            format!("  (untracked: {})", book.overflow)
        } else {
            String::new()
        }
    );
    for s in &book.table[..book.used] {
        let vwap = s
            .vwap()
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
        println!(
            "  {:>10}  trades {:>8}  vwap {:>12}  volume {:>12}  last {:>10.4}  bid/ask {:.4}/{:.4}  quotes {}",
            s.instrument_id,
            s.trades,
            vwap,
            s.volume / i128::from(SIZE_SCALE),
            s.last_price as f64 / PRICE_SCALE as f64,
            s.bid as f64 / PRICE_SCALE as f64,
            s.ask as f64 / PRICE_SCALE as f64,
            s.quotes
        );
    }
}
