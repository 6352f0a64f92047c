//! The whole-system fault soak (issue 7): `ib-stream up --simulate` runs tws-sim, the engine,
//! the recorder and the web server as real processes at a steady rate on five tick-by-tick
//! streams (MNQ bid_ask + last, AAPL bid_ask + last, EUR.USD mid_point) while a seeded random
//! schedule kills the engine, the recorder and the web server with SIGKILL (`up` restarts
//! them), drops and restarts the gateway, sends 1100/1101 and 1100/1102, and fills the
//! recorder's disk (RLIMIT_FSIZE: EFBIG). SSE and WebSocket clients disconnect and resume all
//! along; one slow client stops reading. Afterwards every tick the simulator sent is found in
//! storage with its exact values or inside a recorded gap, nothing is duplicated, every
//! resuming client got every tick it was owed, and no process's memory grew without bound.
//!
//! Bounded run (about 3 minutes, `scripts/test.sh` runs it):
//!   `cargo test --test soak -- --ignored --nocapture`
//! Longer: `IB_STREAM_SOAK_SECS=900` (and `IB_STREAM_SOAK_SEED`, `IB_STREAM_SOAK_RATE`).
//! The rules are in docs/RELIABILITY.md and `soak_support/account.rs`.

mod soak_support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ib_stream::storage::Format;
use ib_stream_ipc::RecordKind;
use soak_support::account::{self, Vals};
use soak_support::clients::{self, ClientLog};
use soak_support::system::{self, Layout, MemSample, Rng, Up};

const MNQ: u32 = 711_280_073;
const AAPL: u32 = 265_598;
const EURUSD: u32 = 12_087_792;
const TRACKED: &str =
    "711280073:MNQ:bid_ask;last,265598:AAPL:bid_ask;last,12087792:EUR.USD:mid_point";
const STREAMS: [(u32, RecordKind); 5] = [
    (MNQ, RecordKind::TbtBidAsk),
    (MNQ, RecordKind::TbtLast),
    (AAPL, RecordKind::TbtBidAsk),
    (AAPL, RecordKind::TbtLast),
    (EURUSD, RecordKind::TbtMidPoint),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    EngineKill,
    RecorderKill,
    ServeKill,
    GatewayDrop,
    GatewayRestart,
    Lost1101,
    Lost1102,
    DiskFull,
}

impl Fault {
    const ALL: [Fault; 8] = [
        Fault::EngineKill,
        Fault::RecorderKill,
        Fault::ServeKill,
        Fault::GatewayDrop,
        Fault::GatewayRestart,
        Fault::Lost1101,
        Fault::Lost1102,
        Fault::DiskFull,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::EngineKill => "engine_kill",
            Fault::RecorderKill => "recorder_kill",
            Fault::ServeKill => "serve_kill",
            Fault::GatewayDrop => "gateway_drop",
            Fault::GatewayRestart => "gateway_restart",
            Fault::Lost1101 => "lost_1101",
            Fault::Lost1102 => "lost_1102",
            Fault::DiskFull => "disk_full",
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Rounds of every fault in a seeded order, at seeded moments, between a warm-up and a
/// quiet end so the last fault's recovery is inside the run.
fn schedule(secs: u64, rng: &mut Rng) -> Vec<(Duration, Fault)> {
    let start_ms = 15_000;
    let end_ms = secs.saturating_sub(25) * 1000;
    let n = ((end_ms.saturating_sub(start_ms)) / 12_000).max(Fault::ALL.len() as u64);
    let spacing = (end_ms.saturating_sub(start_ms) / n).max(1);
    let mut order = Vec::new();
    while (order.len() as u64) < n {
        let mut round = Fault::ALL.to_vec();
        for i in (1..round.len()).rev() {
            round.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        order.extend(round);
    }
    order.truncate(n as usize);
    order
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let at = start_ms + i as u64 * spacing + rng.range(0, spacing / 3);
            (Duration::from_millis(at), f)
        })
        .collect()
}

/// Carries out one fault; false when there was nothing to do it to (e.g. no pid yet).
fn inject(f: Fault, up: &Up, layout: &Layout, rng: &mut Rng) -> bool {
    let ctl = |cmd: &str| system::sim_control(layout.control_port, cmd).is_ok();
    let kill = |role: &str| {
        up.pid_of(role).is_some_and(|pid| {
            system::signal(pid, rustix::process::Signal::KILL);
            true
        })
    };
    let pause = |rng: &mut Rng, lo: u64, hi: u64| {
        std::thread::sleep(Duration::from_millis(rng.range(lo, hi)));
    };
    match f {
        Fault::EngineKill => kill("engine"),
        Fault::RecorderKill => kill("recorder"),
        Fault::ServeKill => kill("serve"),
        Fault::GatewayDrop => ctl(r#"{"cmd":"drop"}"#),
        Fault::GatewayRestart => ctl(r#"{"cmd":"restart","down_ms":1000}"#),
        Fault::Lost1101 | Fault::Lost1102 => {
            if !ctl(r#"{"cmd":"lost"}"#) {
                return false;
            }
            pause(rng, 800, 2500);
            let kept = f == Fault::Lost1102;
            ctl(&format!(r#"{{"cmd":"restored","kept":{kept}}}"#))
        }
        Fault::DiskFull => {
            let Some(pid) = up.pid_of("recorder") else {
                return false;
            };
            if !system::prlimit_fsize(pid, "4096") {
                return false;
            }
            pause(rng, 2500, 5000);
            // The recorder may have been restarted meanwhile; the new one has no limit.
            system::prlimit_fsize(pid, "unlimited");
            true
        }
    }
}

/// Largest anonymous RSS per role in the first and the last `win` seconds of the run, and the
/// largest RSS overall (MiB).
fn memory(samples: &[MemSample], secs: f64) -> BTreeMap<&'static str, (f64, f64, f64)> {
    let win = (secs / 5.0).max(20.0);
    let mut out = BTreeMap::new();
    for role in system::ROLES {
        let of: Vec<&MemSample> = samples.iter().filter(|s| s.role == role).collect();
        let max_in = |lo: f64, hi: f64| {
            of.iter()
                .filter(|s| s.t_s >= lo && s.t_s < hi)
                .map(|s| s.anon_kb)
                .max()
                .unwrap_or(0) as f64
                / 1024.0
        };
        let early = max_in(5.0, 5.0 + win);
        let late = max_in(secs - win, f64::MAX);
        let max_rss = of.iter().map(|s| s.rss_kb).max().unwrap_or(0) as f64 / 1024.0;
        out.insert(role, (early, late, max_rss));
    }
    out
}

#[test]
#[ignore = "the fault soak runs as its own step of scripts/test.sh (about 3 minutes)"]
fn whole_system_fault_soak() {
    let secs = env_u64("IB_STREAM_SOAK_SECS", 150).max(60);
    let rate = env_u64("IB_STREAM_SOAK_RATE", 200);
    let seed = env_u64("IB_STREAM_SOAK_SEED", 7);
    let mut rng = Rng(seed);
    let layout = Layout::new("run");
    println!(
        "soak: secs={secs} rate={rate}/s per stream seed={seed} dir={}",
        layout.dir.display()
    );
    let mut sim_args = vec![
        format!("--control-port={}", layout.control_port),
        "--mode=steady".to_string(),
        format!("--rate={rate}"),
        format!("--send-log={}", layout.send_log.display()),
    ];
    if env_u64("IB_STREAM_SOAK_TBT_RULE", 1) == 0 {
        // IB's 15-second rule stays on by default, as at IB: the engine `up` restarts after a
        // kill asks again within 15 s of its predecessor, gets 10190 and must retry (it did
        // not before the soak found it). IB_STREAM_SOAK_TBT_RULE=0 turns the rule off.
        sim_args.push("--tbt-same-instrument-secs=0".to_string());
    }
    let mut up = Up::start(&layout, TRACKED, &sim_args);
    up.wait_for("up: development ready in", Duration::from_secs(180));
    let t0 = Instant::now();

    let stop_clients = Arc::new(AtomicBool::new(false));
    let stop_probes = Arc::new(AtomicBool::new(false));
    let poller = system::spawn_stats_poller(layout.control_port, Arc::clone(&stop_probes));
    let sampler = system::spawn_mem_sampler(Arc::clone(&up.lines), t0, Arc::clone(&stop_probes));
    let port = layout.serve_port;
    let resumers = vec![
        clients::spawn_sse_resumer(
            "sse-mnq",
            port,
            MNQ,
            &["bid_ask", "last"],
            seed ^ 1,
            Arc::clone(&stop_clients),
        ),
        clients::spawn_sse_resumer(
            "sse-eurusd",
            port,
            EURUSD,
            &["mid_point"],
            seed ^ 2,
            Arc::clone(&stop_clients),
        ),
        clients::spawn_ws_resumer(
            "ws-aapl",
            port,
            AAPL,
            &["bid_ask", "last"],
            seed ^ 3,
            Arc::clone(&stop_clients),
        ),
    ];
    let slow = clients::spawn_slow_client(
        port,
        MNQ,
        &["bid_ask", "last"],
        Arc::clone(&up.lines),
        Arc::clone(&stop_clients),
    );

    let plan = schedule(secs, &mut rng);
    let mut faults: BTreeMap<Fault, u64> = BTreeMap::new();
    for (at, f) in &plan {
        if let Some(wait) = at.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        let done = inject(*f, &up, &layout, &mut rng);
        println!(
            "soak: t={:.1}s {} {}",
            t0.elapsed().as_secs_f64(),
            f.name(),
            if done { "done" } else { "skipped" }
        );
        if done {
            *faults.entry(*f).or_default() += 1;
        }
    }
    if let Some(wait) = Duration::from_secs(secs).checked_sub(t0.elapsed()) {
        std::thread::sleep(wait);
    }
    // End: stop the clients, then the feed (1100: ticks stop), so every tick in the send log
    // was sent to a live engine before the clean shutdown; then let the recorder catch up.
    stop_clients.store(true, Ordering::Relaxed);
    let logs: Vec<ClientLog> = resumers.into_iter().map(|h| h.join().unwrap()).collect();
    let slow = slow.join().unwrap();
    let feed_stop_ns = system::now_ns();
    assert!(
        system::sim_control(layout.control_port, r#"{"cmd":"lost"}"#).is_ok(),
        "simulator control port"
    );
    std::thread::sleep(Duration::from_secs(3));
    stop_probes.store(true, Ordering::Relaxed);
    let seen = poller.join().unwrap();
    let samples = sampler.join().unwrap();
    let run_secs = t0.elapsed().as_secs_f64();
    let st = up.stop(Duration::from_secs(120));
    let up_out = up.output();
    assert!(st.success(), "up exit {st:?}\n{up_out}");
    for (f, role) in [
        (Fault::EngineKill, "engine"),
        (Fault::RecorderKill, "recorder"),
        (Fault::ServeKill, "serve"),
    ] {
        let kills = faults.get(&f).copied().unwrap_or(0) as usize;
        let restarts = up.count(&format!("up: restarted {role} after signal 9"));
        assert!(
            restarts >= kills,
            "{role}: {kills} kills but {restarts} restarts by up:\n{up_out}"
        );
    }

    // Storage is consistent on its own terms: every sequence of every epoch stored or in a
    // gap record, no duplicate, every checksum right.
    let v = layout
        .command("storage", TRACKED)
        .arg("validate")
        .output()
        .unwrap();
    let validate_out = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );

    // The accounting.
    let lines = account::read_send_log(&layout.send_log);
    let mut anomalies = 0;
    let mut insts = account::instances(&lines, &mut anomalies);
    let bin = account::read_storage(&layout.storage, Format::Binary, &STREAMS);
    let jsonl = account::read_storage(&layout.storage, Format::Jsonl, &STREAMS);
    let unnamed = account::attribute(&mut insts, &seen, &bin.subs);
    let mut longest: HashMap<(u32, RecordKind), usize> = HashMap::new();
    for i in &insts {
        if let Some(s) = i.stream {
            let l = longest.entry(s).or_default();
            *l = (*l).max(i.send_ns.len());
        }
    }
    let expected: HashMap<(u32, RecordKind), Vec<Vals>> = STREAMS
        .iter()
        .map(|s| {
            (
                *s,
                account::expected(s.0, s.1, longest.get(s).copied().unwrap_or(0)),
            )
        })
        .collect();
    let mut accounts = Vec::new();
    for (name, storage) in [("binary", &bin), ("jsonl", &jsonl)] {
        let mut a = account::account(name, &insts, storage, &expected);
        a.unnamed_instances = unnamed;
        a.send_log_anomalies = anomalies;
        accounts.push(a);
    }
    // Liveness: every stream recovered from every fault: it flowed in the last 10 s before
    // the feed stopped, and carried at least half of what the whole run would at full rate.
    let mut liveness = Vec::new();
    for s in STREAMS {
        let of: Vec<&account::Instance> = insts.iter().filter(|i| i.stream == Some(s)).collect();
        let sent: usize = of.iter().map(|i| i.send_ns.len()).sum();
        let last = of
            .iter()
            .filter_map(|i| i.send_ns.last().copied())
            .max()
            .unwrap_or(0);
        let recent = feed_stop_ns - last < 10_000_000_000;
        let enough = sent as f64 >= 0.5 * rate as f64 * secs as f64;
        println!(
            "soak: stream {}:{} instances={} ticks_sent={sent} flowing_at_end={recent}",
            s.0,
            s.1.name(),
            of.len()
        );
        liveness.push((s, sent, recent, enough));
    }
    let client_accounts: Vec<_> = logs
        .iter()
        .map(|l| account::check_client(l, &bin))
        .collect();
    let mem = memory(&samples, run_secs);

    // The report.
    for a in &accounts {
        println!(
            "soak: format={} instances={} ticks_sent={} stored={} in_gaps={} lost={} duplicates={} seq_duplicates={} unexplained={} unnamed={} gap_records={} covered_by={:?} slack_ms={:.1} latency_p50_ms={:.2}",
            a.format,
            a.instances,
            a.ticks_sent,
            a.stored,
            a.in_gaps,
            a.lost,
            a.duplicates,
            a.seq_duplicates,
            a.unexplained,
            a.unnamed_instances,
            a.gaps,
            a.covered_by,
            a.slack_ns as f64 / 1e6,
            a.latency_p50_ns as f64 / 1e6
        );
        for e in &a.examples {
            println!("soak:   {}: {e}", a.format);
        }
    }
    for c in &client_accounts {
        println!(
            "soak: client={} ticks={} connects={} resumed={} segments={} owed={} missing={} duplicates={} unannounced_epoch_changes={}",
            c.name,
            c.ticks,
            c.connects,
            c.resumed,
            c.segments,
            c.owed,
            c.missing,
            c.duplicates,
            c.unannounced_epoch_changes
        );
        for e in &c.examples {
            println!("soak:   {}: {e}", c.name);
        }
    }
    println!(
        "soak: slow_client connections={} slow_client_gaps={} ticks_dropped_by_server={} ticks_read_at_end={}",
        slow.connections, slow.slow_gaps, slow.ticks_dropped, slow.ticks_read
    );
    for (role, (early, late, max)) in &mem {
        println!(
            "soak: memory {role}: anon early max {early:.1} MiB, late max {late:.1} MiB, rss max {max:.1} MiB"
        );
    }
    let b = &accounts[0];
    println!(
        "soak: secs={:.0} ticks_sent={} stored={} in_gaps={} lost={} duplicates={} faults={} clients_resumed={} max_rss_mb={} validate={}",
        run_secs,
        b.ticks_sent,
        b.stored,
        b.in_gaps,
        accounts.iter().map(|a| a.lost).sum::<u64>(),
        accounts
            .iter()
            .map(|a| a.duplicates + a.seq_duplicates)
            .sum::<u64>()
            + client_accounts.iter().map(|c| c.duplicates).sum::<u64>(),
        faults
            .iter()
            .map(|(f, n)| format!("{}:{n}", f.name()))
            .collect::<Vec<_>>()
            .join(","),
        client_accounts.iter().map(|c| c.resumed).sum::<u64>(),
        mem.iter()
            .map(|(r, (_, _, m))| format!("{r}:{m:.0}"))
            .collect::<Vec<_>>()
            .join(","),
        if v.status.success() { "OK" } else { "INVALID" }
    );

    // The verdict.
    assert!(v.status.success(), "storage validate:\n{validate_out}");
    for f in Fault::ALL {
        assert!(
            faults.get(&f).copied().unwrap_or(0) > 0,
            "fault {} never ran",
            f.name()
        );
    }
    assert!(b.ticks_sent > 0 && b.stored > 0, "nothing flowed");
    for (s, sent, recent, enough) in &liveness {
        assert!(
            *recent && *enough,
            "stream {s:?} did not recover: {sent} ticks sent, flowing at the end: {recent}"
        );
    }
    for a in &accounts {
        assert!(a.is_ok(), "{} accounting failed: {a:?}", a.format);
        assert!(
            a.slack_ns <= account::MATCH_WINDOW_NS,
            "{}: send-to-receive latency {} ns",
            a.format,
            a.slack_ns
        );
    }
    for c in &client_accounts {
        assert!(c.is_ok(), "client {} failed: {c:?}", c.name);
        assert!(c.resumed > 0, "client {} never resumed", c.name);
    }
    assert!(
        slow.slow_gaps > 0,
        "the slow client never saw the server's conflation policy: {slow:?}"
    );
    for (role, (early, late, _)) in &mem {
        // Bounded: the late window may hold at most half as much again as the early one,
        // plus 16 MiB for allocator and buffer warm-up.
        assert!(
            *late <= early * 1.5 + 16.0,
            "{role}: anonymous memory grew from {early:.1} MiB to {late:.1} MiB"
        );
    }
    let _ = std::fs::remove_dir_all(&layout.dir);
}

/// The recorder bug the soak found, on its own: an engine killed (SIGKILL, so its ring never
/// says it stopped) while the recorder runs must leave a `writer_restart` gap at the end of
/// its epoch, from its last record to when the recorder saw the new ring.
#[test]
fn an_engine_killed_under_a_running_recorder_leaves_a_writer_restart_gap() {
    engine_kill_under_recorder("killgap", &["--tbt-same-instrument-secs=0".to_string()]);
}

/// Found by the soak, fixed in the engine (retrying 10190): the engine `up` restarts after a
/// SIGKILL asks for the same tick-by-tick stream within IB's 15 seconds and gets 10190; it
/// used to mark the tracked subscription `rejected` and never ask again, so the environment
/// recorded nothing for it until the engine restarted once more. Now it must get its ticks.
#[test]
fn an_engine_restarted_within_15_seconds_gets_its_ticks_again() {
    engine_kill_under_recorder("rule15", &[]);
}

/// `tag` names the run directory: the tests of this file run in parallel in one process.
fn engine_kill_under_recorder(tag: &str, sim_args: &[String]) {
    use ib_stream::recorder::status::RecorderStatus;
    use ib_stream::storage::binary::BinarySegment;
    use ib_stream::storage::layout::all_segments;
    use ib_stream_ipc::{GapReason, UNDEF_I64};

    let layout = Layout::new(tag);
    let tracked = "711280073:MNQ:bid_ask";
    let mut args = vec!["--rate=200".to_string()];
    args.extend_from_slice(sim_args);
    let mut up = Up::start(&layout, tracked, &args);
    up.wait_for("up: development ready in", Duration::from_secs(180));
    let status = || RecorderStatus::load(&layout.storage).ok().flatten();
    let wait = |what: &str, cond: &dyn Fn(&RecorderStatus) -> bool| {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = status()
                && cond(&s)
            {
                return s;
            }
            assert!(Instant::now() < until, "recorder: no {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let first = wait("records", &|s| s.records_read > 300);
    let engine = up.pid_of("engine").unwrap();
    system::signal(engine, rustix::process::Signal::KILL);
    up.wait_for(
        "up: restarted engine after signal 9",
        Duration::from_secs(60),
    );
    // The new engine's ticks (200/s) reach the recorder: more than its heartbeats.
    let second = wait("ticks of the new epoch", &|s| {
        s.epoch != first.epoch && s.last_seq > 300
    });
    let st = up.stop(Duration::from_secs(120));
    assert!(st.success(), "{}", up.output());

    let old = u64::from_str_radix(&first.epoch, 16).unwrap();
    assert_ne!(second.epoch, first.epoch);
    let records: Vec<_> = all_segments(&layout.storage, Format::Binary)
        .unwrap()
        .into_iter()
        .filter(|s| s.key.epoch == old)
        .flat_map(|s| BinarySegment::read(&s.path).unwrap().records)
        .collect();
    let gaps: Vec<_> = records
        .iter()
        .filter(|r| {
            r.kind() == Some(RecordKind::Gap) && r.tick_type == GapReason::WriterRestart as u8
        })
        .collect();
    assert_eq!(
        gaps.len(),
        1,
        "one writer_restart gap in the old epoch: {gaps:?}"
    );
    let g = gaps[0];
    let last_stored = records
        .iter()
        .filter(|r| r.kind() != Some(RecordKind::Gap))
        .map(|r| r.seq)
        .max()
        .unwrap();
    assert_eq!(g.body[0] as u64, last_stored + 1, "{g:?}");
    assert_eq!(g.body[1], UNDEF_I64);
    let last_ts = records
        .iter()
        .filter(|r| r.seq == last_stored)
        .map(|r| r.ts_recv)
        .max()
        .unwrap();
    assert_eq!(g.body[2], last_ts, "t0 is the last record's receive time");
    assert!(g.body[3] > g.body[2], "t1 after t0: {g:?}");
    let v = layout
        .command("storage", tracked)
        .arg("validate")
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let _ = std::fs::remove_dir_all(&layout.dir);
}
