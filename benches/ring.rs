//! Ring benchmark (issue 2): our shared-memory ring against the physical floor and its peers,
//! all in one run, between two processes pinned to cores 0 and 1.
//!
//! `cargo bench --bench ring` (35-40 s on two free cores; `-- --long` or
//! `IB_RING_BENCH_LONG=1` for a longer, steadier run). Every round measures, interleaved:
//! - the floor: a raw cache-line ping-pong between two processes;
//! - our ring: ping-pong round trip over two rings, and paced one-way latency with embedded
//!   CLOCK_MONOTONIC timestamps at 100k and 1M records/s, corrected for coordinated omission
//!   (latency counts from the intended send time);
//! - peers: iceoryx2 publish-subscribe and a Unix domain socket, same 64-byte payload;
//! - writer cost per record with 0, 1 and 4 readers attached, and writer-to-reader throughput.
//!
//! Figures are medians over rounds; ratios are medians of the per-round ratios (each round's
//! candidate against the floor measured next to it). The last stdout line is the machine-
//! readable `bench=ring ...` summary. The bench binary re-executes itself (see `child`) for
//! every partner process.

#[path = "ring/child.rs"]
mod child;
#[path = "ring/clock.rs"]
mod clock;
#[path = "ring/floor.rs"]
mod floor;
#[path = "ring/iox.rs"]
mod iox;
#[path = "ring/ours.rs"]
mod ours;
#[path = "ring/shm.rs"]
mod shm;
#[path = "ring/stats.rs"]
mod stats;
#[path = "ring/uds.rs"]
mod uds;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;

use crate::child::{CHILD_CORE, PARENT_CORE, ROLE_ENV, pin};
use crate::clock::{TickClock, ticks};
use crate::ours::Flow;
use crate::stats::{Pcts, median, new_hist, range};

/// A peer that makes no progress for this long is treated as dead.
pub(crate) const STALL_LIMIT: Duration = Duration::from_secs(5);

/// How many round trips one RTT measurement makes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RttPlan {
    /// Round trips done first and not recorded (caches, branch predictors, page tables).
    pub(crate) warmup: u64,
    /// Round trips recorded.
    pub(crate) samples: u64,
}

impl RttPlan {
    pub(crate) fn total(&self) -> u64 {
        self.warmup + self.samples
    }
}

/// Runs round trips `1..=plan.total()` through `one` (send `i`, wait for its echo) and
/// histograms the recorded ones in ns.
pub(crate) fn time_round_trips(
    plan: &RttPlan,
    clock: &TickClock,
    mut one: impl FnMut(u64) -> anyhow::Result<()>,
) -> anyhow::Result<Histogram<u64>> {
    // Filled with a non-zero value so every page is faulted in before timing starts.
    let mut samples = vec![u64::MAX; plan.samples as usize];
    for i in 1..=plan.warmup {
        one(i)?;
    }
    for (k, slot) in samples.iter_mut().enumerate() {
        let t0 = ticks();
        one(plan.warmup + 1 + k as u64)?;
        *slot = ticks() - t0;
    }
    let mut h = new_hist();
    for t in samples {
        h.saturating_record(clock.to_ns(t));
    }
    Ok(h)
}

/// Sizes of one run.
#[derive(Clone, Copy, Debug)]
struct Plan {
    rounds: usize,
    rtt: RttPlan,
    uds: RttPlan,
    /// Seconds of paced one-way traffic per rate and round (after 0.1 s of warm-up).
    oneway_secs: f64,
    /// Records timed per writer-cost measurement: paced, then back to back.
    writer_records: (u64, u64),
    /// Seconds per throughput measurement.
    tput_secs: f64,
    /// Slots of the two rings of the ping-pong.
    rtt_capacity: u64,
    /// Slots of the rings of the other modes.
    capacity: u64,
}

impl Plan {
    fn from_args() -> anyhow::Result<Plan> {
        let mut long = std::env::var("IB_RING_BENCH_LONG").is_ok_and(|v| v == "1");
        let mut rounds = None;
        let mut rtt_capacity = None;
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                // cargo bench passes --bench to every harness = false target.
                "--bench" => {}
                "--long" => long = true,
                "--rounds" => {
                    let v = args.next().context("--rounds needs a number")?;
                    rounds = Some(v.parse::<usize>().context("--rounds needs a number")?);
                }
                "--rtt-capacity" => {
                    let v = args.next().context("--rtt-capacity needs a number")?;
                    rtt_capacity = Some(v.parse::<u64>().context("--rtt-capacity needs a number")?);
                }
                other => bail!(
                    "unknown argument {other:?} (known: --long, --rounds N, --rtt-capacity N)"
                ),
            }
        }
        let mut plan = if long {
            Plan {
                rounds: 11,
                rtt: RttPlan {
                    warmup: 100_000,
                    samples: 1_000_000,
                },
                uds: RttPlan {
                    warmup: 10_000,
                    samples: 100_000,
                },
                oneway_secs: 2.0,
                writer_records: (1_000_000, 10_000_000),
                tput_secs: 2.0,
                rtt_capacity: RTT_CAPACITY,
                capacity: CAPACITY,
            }
        } else {
            Plan {
                rounds: 7,
                rtt: RttPlan {
                    warmup: 20_000,
                    samples: 200_000,
                },
                uds: RttPlan {
                    warmup: 2_000,
                    samples: 20_000,
                },
                oneway_secs: 0.5,
                writer_records: (200_000, 2_000_000),
                tput_secs: 0.5,
                rtt_capacity: RTT_CAPACITY,
                capacity: CAPACITY,
            }
        };
        if let Some(r) = rounds {
            anyhow::ensure!(r > 0, "--rounds must be at least 1");
            plan.rounds = r;
        }
        if let Some(c) = rtt_capacity {
            plan.rtt_capacity = c;
        }
        Ok(plan)
    }
}

/// Slots of each ping-pong ring: 256 KiB, the recent end of a busy ring that stays in cache.
const RTT_CAPACITY: u64 = 1 << 12;
/// Slots of the rings of the other modes: 4 MiB, 65 ms of slack at 1M records/s.
const CAPACITY: u64 = 1 << 16;
/// Paced one-way rates, records per second.
const RATES: [u64; 2] = [100_000, 1_000_000];
/// Readers attached in the writer-cost measurements.
const READERS: [usize; 3] = [0, 1, 4];
/// Batch size of the batched throughput variant.
const TPUT_BATCH: usize = 64;

/// The RTT candidates, measured in mirrored order in alternate rounds so that each one's
/// neighbours in time change, and the floor always sits next to our ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rtt {
    Floor,
    Ring,
    Iceoryx2,
    Uds,
}

impl Rtt {
    fn name(self) -> &'static str {
        match self {
            Rtt::Floor => "floor",
            Rtt::Ring => "ring",
            Rtt::Iceoryx2 => "iceoryx2",
            Rtt::Uds => "uds",
        }
    }
}

/// Everything measured in one round.
#[derive(Debug, Default)]
struct Round {
    floor: Pcts,
    ring: Pcts,
    iox: Pcts,
    uds: Pcts,
    /// Per rate of [`RATES`]: corrected and raw one-way percentiles, records lost.
    oneway: Vec<(Pcts, Pcts, u64)>,
    /// Per reader count of [`READERS`]: median ns per publish, back to back.
    writer_ns: Vec<f64>,
    /// Per reader count of [`READERS`]: one paced publish, ns.
    writer_paced: Vec<Pcts>,
    /// Delivered records per second, millions: single-record API, batched, overdriven.
    tput_mps: f64,
    tput_batch_mps: f64,
    tput_over_mps: f64,
}

fn machine_line() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    // The scheduler's mask (what `nproc` prints); std's available_parallelism can differ here.
    let ncpu = core_affinity::get_core_ids().map_or(0, |c| c.len());
    format!("cpu={model:?} nproc={ncpu} loadavg={:?}", loadavg())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn parent() -> anyhow::Result<()> {
    let plan = Plan::from_args()?;
    // Before pinning: afterwards this process sees a single core.
    println!(
        "ring bench: {} (cores {PARENT_CORE} and {CHILD_CORE})",
        machine_line()
    );
    pin(PARENT_CORE)?;
    let clock = TickClock::calibrate(Duration::from_millis(200));
    println!(
        "ring bench: rounds={} rtt samples={}+{} warmup, uds {}+{}, one-way {} s per rate, \
         writer {:?} records (paced, back to back), throughput {} s, ring capacity {} (ping-pong {}), tsc {:.1} MHz",
        plan.rounds,
        plan.rtt.samples,
        plan.rtt.warmup,
        plan.uds.samples,
        plan.uds.warmup,
        plan.oneway_secs,
        plan.writer_records,
        plan.tput_secs,
        plan.capacity,
        plan.rtt_capacity,
        clock.hz() / 1e6
    );
    println!(
        "ring bench: timer overhead p50 {} ns (fenced rdtsc pair), clock_gettime(CLOCK_MONOTONIC) \
         p50 {} ns; every RTT and publish sample includes the first",
        clock::timer_overhead_ns(clock),
        clock::mono_overhead_ns()
    );
    let started = std::time::Instant::now();
    let stale = shm::RunDir::remove_stale();
    if stale > 0 {
        println!("ring bench: removed {stale} files left in /dev/shm by interrupted runs");
    }
    let dir = shm::RunDir::create()?;
    let mut rounds = Vec::with_capacity(plan.rounds);
    for r in 0..plan.rounds {
        rounds.push(one_round(&plan, &clock, &dir, r)?);
    }
    drop(dir);
    println!(
        "ring bench: {:.0} s, loadavg at end {:?}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    report(&rounds)
}

fn one_round(plan: &Plan, clock: &TickClock, dir: &shm::RunDir, r: usize) -> anyhow::Result<Round> {
    let n = plan.rounds;
    let tag = format!("r{r}");
    let mut round = Round::default();
    let mut order = [Rtt::Floor, Rtt::Ring, Rtt::Iceoryx2, Rtt::Uds];
    if r % 2 == 1 {
        order.reverse();
    }
    for c in order {
        let h = match c {
            Rtt::Floor => floor::rtt(dir, clock, &plan.rtt, &tag)?,
            Rtt::Ring => ours::rtt(dir, clock, &plan.rtt, plan.rtt_capacity, &tag)?,
            Rtt::Iceoryx2 => iox::rtt(dir, clock, &plan.rtt, &tag)?,
            Rtt::Uds => uds::rtt(dir, clock, &plan.uds, &tag)?,
        };
        let p = Pcts::of(&h);
        println!("round {}/{n} rtt {:<9} {p}", r + 1, c.name());
        *match c {
            Rtt::Floor => &mut round.floor,
            Rtt::Ring => &mut round.ring,
            Rtt::Iceoryx2 => &mut round.iox,
            Rtt::Uds => &mut round.uds,
        } = p;
    }
    for rate in RATES {
        let ow = ours::one_way(dir, rate, plan.oneway_secs, plan.capacity, &tag)?;
        let (c, raw) = (Pcts::of(&ow.corrected), Pcts::of(&ow.raw));
        println!(
            "round {}/{n} one-way {rate}/s corrected {c}; raw p50={} p99={}; lost={} writer late max={} ns",
            r + 1,
            raw.p50,
            raw.p99,
            ow.lost,
            ow.writer_late_max_ns
        );
        round.oneway.push((c, raw, ow.lost));
    }
    let mut readers = READERS;
    if r % 2 == 1 {
        readers.reverse();
    }
    let mut writer_ns = [0.0; READERS.len()];
    let mut writer_paced = [Pcts::default(); READERS.len()];
    for k in readers {
        let cost = ours::writer_cost(dir, clock, k, plan.writer_records, plan.capacity, &tag)?;
        let med = median(&cost.sustained);
        let (lo, hi) = range(&cost.sustained);
        let paced = Pcts::of(&cost.paced);
        let got: Vec<String> = cost
            .readers
            .iter()
            .map(|x| format!("{}/{}", x.received, x.lost))
            .collect();
        println!(
            "round {}/{n} writer {k} readers: {med:.2} ns/record back to back (chunk range \
             {lo:.2}..{hi:.2}); paced publish {paced}; readers received/lost [{}]",
            r + 1,
            got.join(" ")
        );
        let i = READERS
            .iter()
            .position(|&x| x == k)
            .context("reader count")?;
        writer_ns[i] = med;
        writer_paced[i] = paced;
    }
    round.writer_ns = writer_ns.to_vec();
    round.writer_paced = writer_paced.to_vec();
    for (batch, flow) in [
        (0, Flow::Gated),
        (TPUT_BATCH, Flow::Gated),
        (0, Flow::Overdriven),
    ] {
        let (sent, rep) = ours::throughput(dir, plan.tput_secs, batch, flow, plan.capacity, &tag)?;
        let mps = rep.received as f64 / rep.elapsed_ns.max(1) as f64 * 1e3;
        let api = if batch == 0 {
            "publish/try_read".to_string()
        } else {
            format!("batch {batch}")
        };
        println!(
            "round {}/{n} throughput {api} {flow:?}: delivered {mps:.2} M/s ({} received, {} lost, \
             writer sent {sent} in {:.2} s)",
            r + 1,
            rep.received,
            rep.lost,
            plan.tput_secs
        );
        match (batch, flow) {
            (0, Flow::Gated) => round.tput_mps = mps,
            (_, Flow::Gated) => round.tput_batch_mps = mps,
            (_, Flow::Overdriven) => round.tput_over_mps = mps,
        }
    }
    Ok(round)
}

/// Medians over rounds, the goals, and the final machine-readable line.
fn report(rounds: &[Round]) -> anyhow::Result<()> {
    let med = |f: &dyn Fn(&Round) -> f64| -> (f64, f64, f64) {
        let v: Vec<f64> = rounds.iter().map(f).collect();
        let (lo, hi) = range(&v);
        (median(&v), lo, hi)
    };
    let line = |name: &str, (m, lo, hi): (f64, f64, f64), prec: usize| {
        println!("summary {name:<26} median={m:.prec$} range={lo:.prec$}..{hi:.prec$}");
        m
    };
    let floor_p50 = line("floor rtt p50 ns", med(&|r| r.floor.p50 as f64), 0);
    let floor_p99 = line("floor rtt p99 ns", med(&|r| r.floor.p99 as f64), 0);
    let rtt_p50 = line("ring rtt p50 ns", med(&|r| r.ring.p50 as f64), 0);
    let rtt_p99 = line("ring rtt p99 ns", med(&|r| r.ring.p99 as f64), 0);
    let p50_vs_floor = line(
        "ring/floor p50",
        med(&|r| r.ring.p50 as f64 / r.floor.p50 as f64),
        3,
    );
    let p99_vs_floor = line(
        "ring/floor p99",
        med(&|r| r.ring.p99 as f64 / r.floor.p99 as f64),
        3,
    );
    let iox_p50 = line("iceoryx2 rtt p50 ns", med(&|r| r.iox.p50 as f64), 0);
    line("iceoryx2 rtt p99 ns", med(&|r| r.iox.p99 as f64), 0);
    let vs_iox = line(
        "ring/iceoryx2 p50",
        med(&|r| r.ring.p50 as f64 / r.iox.p50 as f64),
        3,
    );
    let uds_p50 = line("uds rtt p50 ns", med(&|r| r.uds.p50 as f64), 0);
    line("uds rtt p99 ns", med(&|r| r.uds.p99 as f64), 0);
    for (i, rate) in RATES.iter().enumerate() {
        line(
            &format!("one-way {rate}/s p50 ns"),
            med(&|r| r.oneway[i].0.p50 as f64),
            0,
        );
        line(
            &format!("one-way {rate}/s p99 ns"),
            med(&|r| r.oneway[i].0.p99 as f64),
            0,
        );
        line(
            &format!("one-way {rate}/s p99.9 ns"),
            med(&|r| r.oneway[i].0.p999 as f64),
            0,
        );
        line(
            &format!("one-way {rate}/s raw p50 ns"),
            med(&|r| r.oneway[i].1.p50 as f64),
            0,
        );
        line(
            &format!("one-way {rate}/s raw p99 ns"),
            med(&|r| r.oneway[i].1.p99 as f64),
            0,
        );
        line(
            &format!("one-way {rate}/s lost"),
            med(&|r| r.oneway[i].2 as f64),
            0,
        );
    }
    let mut writer = Vec::new();
    for (i, k) in READERS.iter().enumerate() {
        writer.push(line(
            &format!("writer ns/record {k} readers"),
            med(&|r| r.writer_ns[i]),
            2,
        ));
    }
    let spread = line(
        "writer max/min over readers",
        med(&|r| {
            let (lo, hi) = range(&r.writer_ns);
            hi / lo
        }),
        3,
    );
    for (i, k) in READERS.iter().enumerate() {
        line(
            &format!("paced publish p50 ns {k} readers"),
            med(&|r| r.writer_paced[i].p50 as f64),
            0,
        );
        line(
            &format!("paced publish p99 ns {k} readers"),
            med(&|r| r.writer_paced[i].p99 as f64),
            0,
        );
    }
    let tput = line("throughput M/s", med(&|r| r.tput_mps), 2);
    line("throughput batch M/s", med(&|r| r.tput_batch_mps), 2);
    line("throughput overdriven M/s", med(&|r| r.tput_over_mps), 2);
    let goal =
        |name: &str, ok: bool| println!("goal {name:<40} {}", if ok { "met" } else { "MISSED" });
    goal("ring rtt p50 <= 1.3x floor", p50_vs_floor <= 1.3);
    goal("ring rtt p99 <= 1.5x floor", p99_vs_floor <= 1.5);
    goal("ring rtt p50 <= 0.5x iceoryx2", vs_iox <= 0.5);
    goal("writer cost 0/1/4 readers within 10%", spread <= 1.10);
    goal("throughput >= 20M records/s", tput >= 20.0);
    let _ = floor_p99;
    println!(
        "bench=ring floor_p50_ns={floor_p50:.0} rtt_p50_ns={rtt_p50:.0} rtt_p99_ns={rtt_p99:.0} \
         p50_vs_floor={p50_vs_floor:.3} p99_vs_floor={p99_vs_floor:.3} iceoryx2_p50_ns={iox_p50:.0} \
         vs_iceoryx2={vs_iox:.3} uds_p50_ns={uds_p50:.0} writer_ns_0r={:.2} writer_ns_1r={:.2} \
         writer_ns_4r={:.2} throughput_mps={tput:.2}",
        writer[0], writer[1], writer[2]
    );
    Ok(())
}

fn partner(role: &str) -> anyhow::Result<()> {
    pin(CHILD_CORE)?;
    match role {
        "floor-echo" => floor::echo(),
        "uds-echo" => uds::echo(),
        "iox-echo" => iox::echo(),
        "ring-echo" => ours::echo(),
        "ring-paced-writer" => ours::paced_writer(),
        "ring-reader" => ours::reader(),
        other => bail!("unknown partner role {other:?}"),
    }
}

fn main() -> ExitCode {
    let result = match std::env::var(ROLE_ENV) {
        Ok(role) => partner(&role).with_context(|| format!("partner {role}")),
        Err(_) => parent(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ring bench error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
