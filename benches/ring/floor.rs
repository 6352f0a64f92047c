//! The physical floor: two processes bounce a counter between two shared cache lines. Nothing
//! a ring can do costs less than these two line transfers per round trip.

use std::path::PathBuf;
use std::sync::atomic::Ordering::{Acquire, Release};

use hdrhistogram::Histogram;

use crate::child::{Args, Partner, say_ready};
use crate::clock::{TickClock, spin_until};
use crate::shm::{RunDir, SharedLines};
use crate::{RttPlan, STALL_LIMIT, time_round_trips};

const PING: usize = 0;
const PONG: usize = 1;

/// Parent side: `plan.total()` round trips, the first `plan.warmup` discarded.
pub(crate) fn rtt(
    dir: &RunDir,
    clock: &TickClock,
    plan: &RttPlan,
    tag: &str,
) -> anyhow::Result<Histogram<u64>> {
    let path = dir.path().join(format!("floor-{tag}.lines"));
    let lines = SharedLines::create(&path)?;
    let partner = Partner::spawn(
        "floor-echo",
        &[
            ("path", path.display().to_string()),
            ("n", plan.total().to_string()),
        ],
    )?;
    let (ping, pong) = (lines.line(PING), lines.line(PONG));
    let hist = time_round_trips(plan, clock, |i| {
        ping.store(i, Release);
        spin_until("floor pong", STALL_LIMIT, || pong.load(Acquire) == i)
    })?;
    partner.wait()?;
    drop(lines);
    std::fs::remove_file(&path)?;
    Ok(hist)
}

/// Partner side: answer each ping with the same counter.
pub(crate) fn echo() -> anyhow::Result<()> {
    let path = PathBuf::from(Args::get("path")?);
    let n: u64 = Args::num("n")?;
    let lines = SharedLines::open(&path)?;
    let (ping, pong) = (lines.line(PING), lines.line(PONG));
    say_ready();
    for i in 1..=n {
        spin_until("floor ping", STALL_LIMIT, || ping.load(Acquire) == i)?;
        pong.store(i, Release);
    }
    Ok(())
}
