//! The simulator's hot path allocates nothing: generating a tick and encoding it (every
//! tick-by-tick kind and the L1 stream, text and protobuf form) into a buffer with room,
//! counted with an instrumented global allocator. Each check re-runs this test binary with
//! only itself selected, where no other thread allocates.

use std::alloc::System;
use std::process::Command;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

use tws_sim::generator::{L1Gen, TbtGen, TbtKind};
use tws_sim::universe::Universe;
use tws_sim::wire::TickEncoder;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const TICKS: usize = 20_000;
const CHILD: &str = "SIM_ZERO_ALLOC_CHILD";
/// Allocations the harness may make on its own thread during a measurement.
const NOISE: usize = 8;

/// Runs `check` in a fresh process of this test binary with only `name` selected.
fn in_isolation(name: &str, check: impl FnOnce()) {
    if std::env::var_os(CHILD).is_some() {
        check();
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            name,
            "--exact",
            "--include-ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .expect("re-run the test binary");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{name} in isolation failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Generates and encodes ticks of every kind at `version`; asserts no allocation.
fn check(version: u32) {
    let universe = Universe::builtin();
    for con_id in [265598, 711280073, 12087792] {
        let inst = universe.get(universe.by_con_id(con_id).unwrap());
        let mut enc = TickEncoder::new(version);
        let mut out = Vec::with_capacity(1 << 20);
        let mut tbt: Vec<_> = TbtKind::ALL
            .into_iter()
            .map(|k| (k, TbtGen::new(1, inst, k)))
            .collect();
        let mut l1 = L1Gen::new(1, inst, false);
        // Warm up: the encoder's string buffers reach their size on the first ticks.
        for (kind, g) in &mut tbt {
            for tick in g.by_ref().take(100) {
                enc.encode_tbt(
                    &mut out,
                    1,
                    1_767_277_800,
                    inst,
                    *kind == TbtKind::AllLast,
                    &tick,
                );
            }
        }
        for tick in l1.by_ref().take(100) {
            enc.encode_l1(&mut out, 2, &tick);
        }
        out.clear();

        let region = Region::new(GLOBAL);
        for (kind, g) in &mut tbt {
            for tick in g.by_ref().take(TICKS) {
                if out.len() > (1 << 20) - 256 {
                    out.clear();
                }
                enc.encode_tbt(
                    &mut out,
                    1,
                    1_767_277_800,
                    inst,
                    *kind == TbtKind::AllLast,
                    &tick,
                );
            }
        }
        for tick in l1.by_ref().take(TICKS) {
            if out.len() > (1 << 20) - 256 {
                out.clear();
            }
            enc.encode_l1(&mut out, 2, &tick);
        }
        let stats = region.change();
        // The count is process-wide: the test harness's own thread may allocate a few bytes
        // while we measure. One allocation per tick would show as 100 000 here.
        assert!(
            stats.allocations + stats.reallocations <= NOISE,
            "conId {con_id} at version {version}: {stats:?} for {} ticks",
            5 * TICKS
        );
    }
}

#[test]
fn text_form_allocates_nothing() {
    in_isolation("text_form_allocates_nothing", || check(178));
}

/// The protobuf form too: nested messages and decimal strings are written in place.
#[test]
fn protobuf_form_allocates_nothing() {
    in_isolation("protobuf_form_allocates_nothing", || check(226));
}
