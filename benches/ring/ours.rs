//! Our ring (`ib_stream::ipc` `RingWriter` / `RingReader`) in every mode of the benchmark:
//! ping-pong round trip, paced one-way latency, writer cost with readers attached, and
//! writer-to-reader throughput.
//!
//! Every ring is created, then filled with one lap of filler records that each reader drains
//! before timing starts: the writer's pages are pre-faulted by `create`, the readers' by that
//! first lap, so no measured read takes a page fault.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Acquire, Release};
use std::time::Instant;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use ib_stream::ipc::{
    ReadOutcome, Record, RecordKind, RingReader, RingWriter, ShmOptions, StartAt,
};

use crate::child::{Args, Partner, say, say_ready, wait_for};
use crate::clock::{TickClock, mono_ns, spin_until, ticks};
use crate::shm::{RunDir, SharedLines};
use crate::stats::new_hist;
use crate::{RttPlan, STALL_LIMIT, time_round_trips};

/// `body[3]` of a benchmark record says what it is.
const DATA: i64 = 0;
const FILL: i64 = 1;
const STOP: i64 = 2;

/// A record carrying `mark` in `body[3]`.
fn marked(mark: i64) -> Record {
    let mut r = Record::new(RecordKind::TbtBidAsk);
    r.body[3] = mark;
    r
}

/// A fresh directory for one measurement's ring (and its writer lock file).
fn ring_dir(dir: &RunDir, name: &str) -> anyhow::Result<PathBuf> {
    let d = dir.path().join(name);
    std::fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

/// Creates the ring and publishes one lap of filler records.
fn create_filled(path: &Path, capacity: u64) -> anyhow::Result<RingWriter> {
    let mut w = RingWriter::create(path, capacity, &ShmOptions::default())?;
    let fill = marked(FILL);
    for _ in 0..capacity {
        w.publish(&fill);
    }
    Ok(w)
}

/// Opens the ring at its oldest record and drains what is there (the fill lap), touching every
/// page of the mapping.
fn open_warm(path: &Path) -> anyhow::Result<RingReader> {
    let mut r = RingReader::open(path, StartAt::Oldest)?;
    while !matches!(r.try_read(), ReadOutcome::Empty) {}
    Ok(r)
}

/// Spins until the next record; a lap is an error here (ping-pong never laps).
#[inline(always)]
fn next_record(r: &mut RingReader, what: &str) -> anyhow::Result<Record> {
    let mut got = None;
    let mut lost = None;
    spin_until(what, STALL_LIMIT, || match r.try_read() {
        ReadOutcome::Record(x) => {
            got = Some(x);
            true
        }
        ReadOutcome::Empty => false,
        ReadOutcome::Lost { count, .. } => {
            lost = Some(count);
            true
        }
    })?;
    if let Some(count) = lost {
        bail!("{what}: lapped, {count} records lost");
    }
    got.with_context(|| format!("{what}: no record"))
}

/// Fails when `progress` has not moved for [`STALL_LIMIT`]; cheap enough for a poll loop
/// (looks at the clock every 64k calls).
#[derive(Debug)]
struct Watchdog {
    calls: u32,
    last: u64,
    since: Instant,
}

impl Watchdog {
    fn new() -> Watchdog {
        Watchdog {
            calls: 0,
            last: 0,
            since: Instant::now(),
        }
    }

    #[inline(always)]
    fn check(&mut self, progress: u64, what: &str) -> anyhow::Result<()> {
        self.calls = self.calls.wrapping_add(1);
        if !self.calls.is_multiple_of(65_536) {
            return Ok(());
        }
        if progress != self.last {
            self.last = progress;
            self.since = Instant::now();
        } else if self.since.elapsed() > STALL_LIMIT {
            bail!("{what}: no progress for {STALL_LIMIT:?}");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Ping-pong round trip: the parent writes ping, the partner echoes each record into pong.
// ---------------------------------------------------------------------------------------------

pub(crate) fn rtt(
    dir: &RunDir,
    clock: &TickClock,
    plan: &RttPlan,
    capacity: u64,
    tag: &str,
) -> anyhow::Result<Histogram<u64>> {
    let d = ring_dir(dir, &format!("ring-rtt-{tag}"))?;
    let (ping_path, pong_path) = (d.join("ping.ring"), d.join("pong.ring"));
    let mut ping = create_filled(&ping_path, capacity)?;
    let partner = Partner::spawn(
        "ring-echo",
        &[
            ("ping", ping_path.display().to_string()),
            ("pong", pong_path.display().to_string()),
            ("n", plan.total().to_string()),
            ("capacity", capacity.to_string()),
        ],
    )?;
    let mut pong = open_warm(&pong_path)?;
    let mut rec = marked(DATA);
    let hist = time_round_trips(plan, clock, |i| {
        rec.body[0] = i as i64;
        ping.publish(&rec);
        let back = next_record(&mut pong, "ring pong")?;
        anyhow::ensure!(back.body[0] == i as i64, "ring echo out of order");
        Ok(())
    })?;
    partner.wait()?;
    drop((ping, pong));
    std::fs::remove_dir_all(&d)?;
    Ok(hist)
}

pub(crate) fn echo() -> anyhow::Result<()> {
    let n: u64 = Args::num("n")?;
    let capacity: u64 = Args::num("capacity")?;
    let mut ping = open_warm(Path::new(&Args::get("ping")?))?;
    let mut pong = create_filled(Path::new(&Args::get("pong")?), capacity)?;
    say_ready();
    for _ in 0..n {
        let rec = next_record(&mut ping, "ring ping")?;
        pong.publish(&rec);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Paced one-way latency: the partner publishes at a fixed rate, each record carrying its
// scheduled send time (`ts_event`) and actual send time (`ts_recv`), CLOCK_MONOTONIC; the
// parent reads and subtracts. Counting from the scheduled time corrects for coordinated
// omission: a writer that stalls sends late, and every late record carries the stall.
// ---------------------------------------------------------------------------------------------

/// One paced one-way measurement.
#[derive(Debug)]
pub(crate) struct OneWay {
    /// Scheduled send time to receive time, ns (coordinated-omission corrected).
    pub(crate) corrected: Histogram<u64>,
    /// Actual send time to receive time, ns.
    pub(crate) raw: Histogram<u64>,
    /// Records the reader was lapped out of.
    pub(crate) lost: u64,
    /// Worst lateness of the writer against its schedule, ns.
    pub(crate) writer_late_max_ns: u64,
}

pub(crate) fn one_way(
    dir: &RunDir,
    rate: u64,
    secs: f64,
    capacity: u64,
    tag: &str,
) -> anyhow::Result<OneWay> {
    let d = ring_dir(dir, &format!("ring-oneway-{rate}-{tag}"))?;
    let path = d.join("ticks.ring");
    let count = (rate as f64 * secs) as u64;
    // The first tenth of a second is warm-up and not recorded.
    let warmup = rate / 10;
    let mut partner = Partner::spawn(
        "ring-paced-writer",
        &[
            ("path", path.display().to_string()),
            ("rate", rate.to_string()),
            ("count", (warmup + count).to_string()),
            ("capacity", capacity.to_string()),
        ],
    )?;
    let mut r = open_warm(&path)?;
    let (mut corrected, mut raw) = (new_hist(), new_hist());
    let mut lost = 0u64;
    let mut seen = 0u64;
    let mut dog = Watchdog::new();
    partner.send("go")?;
    loop {
        match r.try_read() {
            ReadOutcome::Record(x) => {
                let now = mono_ns();
                match x.body[3] {
                    STOP => break,
                    DATA if x.body[0] as u64 >= warmup => {
                        corrected.saturating_record(now.saturating_sub(x.ts_event as u64));
                        raw.saturating_record(now.saturating_sub(x.ts_recv as u64));
                    }
                    _ => {}
                }
                seen += 1;
            }
            ReadOutcome::Empty => dog.check(seen, "ring one-way reader")?,
            ReadOutcome::Lost { count, .. } => lost += count,
        }
    }
    let kv = partner.finish()?;
    drop(r);
    std::fs::remove_dir_all(&d)?;
    Ok(OneWay {
        corrected,
        raw,
        lost,
        writer_late_max_ns: kv
            .get("late_max_ns")
            .copied()
            .context("paced writer report lacks late_max_ns")? as u64,
    })
}

pub(crate) fn paced_writer() -> anyhow::Result<()> {
    let rate: u64 = Args::num("rate")?;
    let count: u64 = Args::num("count")?;
    let capacity: u64 = Args::num("capacity")?;
    anyhow::ensure!(rate > 0, "rate must be positive");
    let mut w = create_filled(Path::new(&Args::get("path")?), capacity)?;
    say_ready();
    wait_for("go")?;
    let mut rec = marked(DATA);
    let start = mono_ns() + 1_000_000;
    let mut late_max = 0u64;
    for k in 0..count {
        // Integer schedule: no drift from accumulating a rounded period.
        let due = start + (u128::from(k) * 1_000_000_000 / u128::from(rate)) as u64;
        let mut now = mono_ns();
        while now < due {
            std::hint::spin_loop();
            now = mono_ns();
        }
        late_max = late_max.max(now - due);
        rec.body[0] = k as i64;
        rec.ts_event = due as i64;
        rec.ts_recv = now as i64;
        w.publish(&rec);
    }
    w.publish(&marked(STOP));
    say(&format!("late_max_ns={late_max}"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Writer cost with readers attached, and writer-to-reader throughput. The parent writes; the
// partners read until the stop record and report what they got.
// ---------------------------------------------------------------------------------------------

/// Records per timed chunk of the writer-cost loop.
const CHUNK: u64 = 1024;

/// What a reader partner saw.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReaderReport {
    pub(crate) received: u64,
    pub(crate) lost: u64,
    /// First data record to the stop record, ns.
    pub(crate) elapsed_ns: u64,
}

fn reader_report(kv: &std::collections::HashMap<String, f64>) -> anyhow::Result<ReaderReport> {
    let get = |k: &str| {
        kv.get(k)
            .copied()
            .with_context(|| format!("reader report lacks {k}"))
    };
    Ok(ReaderReport {
        received: get("received")? as u64,
        lost: get("lost")? as u64,
        elapsed_ns: get("elapsed_ns")? as u64,
    })
}

/// One writer-cost measurement.
#[derive(Debug)]
pub(crate) struct WriterCost {
    /// Back-to-back publishing: ns per record of each timed chunk of [`CHUNK`] records.
    pub(crate) sustained: Vec<f64>,
    /// Paced publishing (one record per `PACED_GAP_NS`): ns of each single `publish` call.
    pub(crate) paced: Histogram<u64>,
    /// What each reader saw.
    pub(crate) readers: Vec<ReaderReport>,
}

/// Gap between records of the paced writer-cost phase (1M records/s).
const PACED_GAP_NS: u64 = 1_000;

/// Writer cost while `readers` partners tail the ring: first `paced` single publishes at 1M/s,
/// each timed alone (what the engine thread pays per tick at a realistic rate: the store
/// buffer absorbs the cache misses), then `records` back to back timed per chunk (the
/// sustained cost, which includes taking every slot's line back from readers that keep up).
pub(crate) fn writer_cost(
    dir: &RunDir,
    clock: &TickClock,
    readers: usize,
    (paced, records): (u64, u64),
    capacity: u64,
    tag: &str,
) -> anyhow::Result<WriterCost> {
    let d = ring_dir(dir, &format!("ring-writer-{readers}r-{tag}"))?;
    let path = d.join("ticks.ring");
    let mut w = create_filled(&path, capacity)?;
    let partners = (0..readers)
        .map(|_| {
            Partner::spawn(
                "ring-reader",
                &[
                    ("path", path.display().to_string()),
                    ("batch", "0".into()),
                    ("progress", String::new()),
                ],
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut rec = marked(DATA);
    // Warm-up: one lap, untimed.
    for k in 0..capacity {
        rec.body[0] = k as i64;
        w.publish(&rec);
    }
    let mut single = vec![0u64; paced as usize];
    let gap = clock.ticks_for_ns(PACED_GAP_NS);
    let mut due = ticks();
    for (k, slot) in single.iter_mut().enumerate() {
        due += gap;
        while ticks() < due {
            std::hint::spin_loop();
        }
        rec.body[0] = k as i64;
        let t0 = ticks();
        w.publish(&rec);
        *slot = ticks() - t0;
    }
    let mut paced_hist = new_hist();
    for t in single {
        paced_hist.saturating_record(clock.to_ns(t));
    }
    let chunks = (records / CHUNK).max(1);
    let mut per_record = vec![0.0f64; chunks as usize];
    for slot in per_record.iter_mut() {
        let t0 = ticks();
        for j in 0..CHUNK {
            rec.body[0] = j as i64;
            w.publish(&rec);
        }
        *slot = clock.to_ns(ticks() - t0) as f64 / CHUNK as f64;
    }
    w.publish(&marked(STOP));
    let reports = partners
        .into_iter()
        .map(|p| reader_report(&p.finish()?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    drop(w);
    std::fs::remove_dir_all(&d)?;
    Ok(WriterCost {
        sustained: per_record,
        paced: paced_hist,
        readers: reports,
    })
}

/// How the throughput writer treats a reader that falls behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    /// The bench (not the ring) holds the writer back to at most half a ring ahead of the
    /// reader, which reports its position through a side line every [`PROGRESS_EVERY`]
    /// records: the transfer rate a reader sustains with no loss.
    Gated,
    /// The writer runs flat out and the reader is lapped: what an overloaded reader gets.
    Overdriven,
}

/// How often a gated reader reports its position.
const PROGRESS_EVERY: u64 = 256;

/// Throughput: the parent publishes as fast as it may for `secs` (one record per `publish`,
/// or `batch` records per `publish_batch` when `batch > 0`), one partner reads (`try_read`,
/// or `read_batch` of `batch`). Returns the records the writer published and the reader's
/// report.
pub(crate) fn throughput(
    dir: &RunDir,
    secs: f64,
    batch: usize,
    flow: Flow,
    capacity: u64,
    tag: &str,
) -> anyhow::Result<(u64, ReaderReport)> {
    let d = ring_dir(dir, &format!("ring-tput-{batch}-{flow:?}-{tag}"))?;
    let path = d.join("ticks.ring");
    let progress_path = d.join("progress.lines");
    let progress = SharedLines::create(&progress_path)?;
    let mut w = create_filled(&path, capacity)?;
    let gated = flow == Flow::Gated;
    let partner = Partner::spawn(
        "ring-reader",
        &[
            ("path", path.display().to_string()),
            ("batch", batch.to_string()),
            (
                "progress",
                if gated {
                    progress_path.display().to_string()
                } else {
                    String::new()
                },
            ),
        ],
    )?;
    let reader_next = progress.line(0);
    let max_lead = capacity / 2;
    let mut buf = vec![marked(DATA); batch.max(1)];
    let end = mono_ns() + (secs * 1e9) as u64;
    let mut sent = 0u64;
    loop {
        if gated {
            // `last_seq() + 1` is the next sequence; the reader has read everything before
            // `reader_next`.
            spin_until("gated reader", STALL_LIMIT, || {
                w.last_seq() + 1 - reader_next.load(Acquire).min(w.last_seq() + 1) <= max_lead
            })?;
        }
        if batch == 0 {
            for j in 0..CHUNK {
                buf[0].body[0] = j as i64;
                w.publish(&buf[0]);
            }
            sent += CHUNK;
        } else {
            for _ in 0..(CHUNK as usize).div_ceil(batch) {
                buf[0].body[0] = sent as i64;
                w.publish_batch(&buf);
                sent += batch as u64;
            }
        }
        if mono_ns() >= end {
            break;
        }
    }
    w.publish(&marked(STOP));
    let report = reader_report(&partner.finish()?)?;
    drop(w);
    drop(progress);
    std::fs::remove_dir_all(&d)?;
    Ok((sent, report))
}

/// Reader partner: counts data records and laps until the stop record.
pub(crate) fn reader() -> anyhow::Result<()> {
    let batch: usize = Args::num("batch")?;
    let progress_path = Args::get("progress")?;
    let progress = if progress_path.is_empty() {
        None
    } else {
        Some(SharedLines::open(Path::new(&progress_path))?)
    };
    let report_to = progress.as_ref().map(|p| p.line(0));
    let mut r = open_warm(Path::new(&Args::get("path")?))?;
    let report = |r: &RingReader| {
        if let Some(line) = report_to {
            line.store(r.next_seq(), Release);
        }
    };
    report(&r);
    say_ready();
    let (mut received, mut lost) = (0u64, 0u64);
    let mut first_ns = None;
    let mut dog = Watchdog::new();
    let stop_ns;
    if batch == 0 {
        loop {
            match r.try_read() {
                ReadOutcome::Record(x) => match x.body[3] {
                    DATA => {
                        first_ns.get_or_insert_with(mono_ns);
                        received += 1;
                        if received.is_multiple_of(PROGRESS_EVERY) {
                            report(&r);
                        }
                    }
                    STOP => {
                        stop_ns = mono_ns();
                        break;
                    }
                    _ => {}
                },
                ReadOutcome::Empty => dog.check(received + lost, "ring reader")?,
                ReadOutcome::Lost { count, .. } => lost += count,
            }
        }
    } else {
        let mut buf = vec![Record::ZERO; batch];
        'outer: loop {
            let got = r.read_batch(&mut buf);
            report(&r);
            for x in &buf[..got.records] {
                match x.body[3] {
                    DATA => {
                        first_ns.get_or_insert_with(mono_ns);
                        received += 1;
                    }
                    STOP => {
                        stop_ns = mono_ns();
                        break 'outer;
                    }
                    _ => {}
                }
            }
            if let Some((_, _, count)) = got.lost {
                lost += count;
            }
            if got.records == 0 && got.lost.is_none() {
                dog.check(received + lost, "ring batch reader")?;
            }
        }
    }
    let elapsed = first_ns.map_or(0, |f| stop_ns.saturating_sub(f));
    say(&format!(
        "received={received} lost={lost} elapsed_ns={elapsed}"
    ));
    Ok(())
}
