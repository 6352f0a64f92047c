//! Clocks: a calibrated TSC for round trips (cheap, in one process) and CLOCK_MONOTONIC for
//! timestamps that cross processes (one-way latency).

use std::time::{Duration, Instant};

/// CLOCK_MONOTONIC in ns. The same clock in every process on the machine, so a timestamp
/// embedded by the writer can be subtracted from the reader's.
pub(crate) fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec owned by this frame; CLOCK_MONOTONIC exists on
    // every Linux kernel, so the call only writes `ts` (the vDSO path, no syscall).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Raw time-stamp counter, fenced so the read is neither hoisted above earlier loads nor sunk
/// below later ones (the measured operation stays between two stamps).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn ticks() -> u64 {
    use core::arch::x86_64::{_mm_lfence, _rdtsc};
    // SAFETY: lfence is SSE2, part of the x86_64 baseline; it has no memory effects.
    unsafe { _mm_lfence() };
    // SAFETY: rdtsc exists on every x86_64 CPU and only reads the counter.
    let t = unsafe { _rdtsc() };
    // SAFETY: as above.
    unsafe { _mm_lfence() };
    t
}

/// Without a TSC the "ticks" are monotonic nanoseconds.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(crate) fn ticks() -> u64 {
    mono_ns()
}

/// Converts TSC ticks to ns, calibrated against CLOCK_MONOTONIC in this run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TickClock {
    ns_per_tick: f64,
}

impl TickClock {
    /// Measures the tick rate over `span` (busy, so the core does not change frequency state).
    pub(crate) fn calibrate(span: Duration) -> TickClock {
        if cfg!(not(target_arch = "x86_64")) {
            return TickClock { ns_per_tick: 1.0 };
        }
        let (m0, t0) = (mono_ns(), ticks());
        let start = Instant::now();
        while start.elapsed() < span {
            std::hint::spin_loop();
        }
        let (m1, t1) = (mono_ns(), ticks());
        TickClock {
            ns_per_tick: (m1 - m0) as f64 / (t1 - t0) as f64,
        }
    }

    /// Ticks per second (for the report).
    pub(crate) fn hz(self) -> f64 {
        1e9 / self.ns_per_tick
    }

    /// The number of ticks in `ns` nanoseconds, rounded.
    pub(crate) fn ticks_for_ns(self, ns: u64) -> u64 {
        (ns as f64 / self.ns_per_tick).round() as u64
    }

    /// A tick difference in ns, rounded.
    pub(crate) fn to_ns(self, ticks: u64) -> u64 {
        (ticks as f64 * self.ns_per_tick).round() as u64
    }
}

/// The cost of the timing itself: p50 ns of two back-to-back fenced tick reads, which every
/// timed sample includes.
pub(crate) fn timer_overhead_ns(clock: TickClock) -> u64 {
    let mut d: Vec<u64> = (0..100_000)
        .map(|_| {
            let t0 = ticks();
            ticks() - t0
        })
        .collect();
    d.sort_unstable();
    clock.to_ns(d[d.len() / 2])
}

/// CLOCK_MONOTONIC read cost, p50 ns (the one-way mode reads it on both sides).
pub(crate) fn mono_overhead_ns() -> u64 {
    let mut d: Vec<u64> = (0..100_000)
        .map(|_| {
            let t0 = mono_ns();
            mono_ns() - t0
        })
        .collect();
    d.sort_unstable();
    d[d.len() / 2]
}

/// Busy-waits for `cond`, giving up with an error after `limit` (a dead peer must not hang the
/// run). The clock is read only every few thousand spins so the hot loop stays a plain load.
#[inline(always)]
pub(crate) fn spin_until(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let mut spins = 0u32;
    let mut start: Option<Instant> = None;
    while !cond() {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(4096) {
            let s = *start.get_or_insert_with(Instant::now);
            if s.elapsed() > limit {
                anyhow::bail!("timed out after {limit:?} waiting for {what}");
            }
        }
    }
    Ok(())
}
