//! The `tws-sim` command line: parses the flags and runs the server, `expected`, `load` or
//! `replay`. The binary (`src/bin/tws-sim.rs` of the main package) adds logging and the error
//! report.
//!
//! It serves many clients at once (one thread pair per connection), negotiates the protocol
//! version like a gateway, answers contract details from a built-in universe, streams
//! deterministic market data at a chosen rate, applies IB's limits and errors, injects faults
//! on command, and records or replays what it sends. Run `tws-sim --help` for every knob.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::control::{self, Executor};
use crate::gateway::{Gateway, GatewayConfig, WallClock};
use crate::generator::TbtKind;
use crate::hub::{Hub, Recording};
use crate::limits::LimitConfig;
use crate::schedule::Mode;
use crate::session::SessionConfig;
use crate::universe::{Entitlement, Universe};
use crate::{capture, expected, load, server};

/// A simulated IB Gateway speaking the real TWS API protocol (text up to server version 200,
/// binary message ids and protobuf from 201), for tests and benchmarks with no IB account.
///
/// The first stdout line is `listening 127.0.0.1:<port>`; with --control-port the second is
/// `control 127.0.0.1:<port>`.
#[derive(Debug, Parser)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true, after_long_help = CONTROL_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

const CONTROL_HELP: &str = "\
CONTROL CHANNEL (--control-port): one JSON object a line in, one a line out.
  \"client\": <id> addresses one client; without it a command goes to every client.
  {\"cmd\":\"drop\"}                                close the connection
  {\"cmd\":\"stall\",\"ms\":500}                     send nothing for that long
  {\"cmd\":\"split\",\"max_chunk\":3,\"bytes\":65536}  cut the next bytes into 1..=max_chunk writes
  {\"cmd\":\"malformed\"}                           send a frame with an impossible length
  {\"cmd\":\"lost\"}                                1100, ticks stop
  {\"cmd\":\"restored\",\"kept\":false}              1101, every subscription dropped
  {\"cmd\":\"restored\",\"kept\":true}               1102, ticks resume
  {\"cmd\":\"farm\",\"code\":2103}                   farm notice 2103/2104, 2105/2106, 2157/2158
  {\"cmd\":\"competing\",\"on\":true}                10197 and no data until off
  {\"cmd\":\"restart\",\"down_ms\":500}              close listener and clients, listen again
  {\"cmd\":\"stats\"}                               clients, ticks sent per subscription, cancels, historical
  Answers: {\"ok\":true,\"clients\":N}, stats as {\"ok\":true,\"clients\":[...]}, or {\"ok\":false,\"error\":...}.

FAULT SCHEDULE (--faults FILE, --fault '<ms> <json>'): lines `<ms after start> <command JSON>`;
`#` comments.

LIMITS AND ERRORS: 326 duplicate client id (then close), 200 unknown contract, 322 duplicate
ticker id, 300 cancel of an unknown id, 101 market data lines, 10190 tick-by-tick cap and the
15-second rule, 354/10089 not entitled (live), 10167 + delayed ticks after reqMarketDataType 3/4,
10189 tick-by-tick not permitted, 100 pacing (then disconnect, unless +PACEAPI), 10197.

STARTUP: after START_API: managedAccounts, nextValidId, farm notices 2104/2106/2158; positions,
open orders, completed orders, account updates (multi), executions, current time and ids are
answered with their end/values.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Print, one JSON object a line, exactly what a subscription's first N ticks carry
    /// (prices and sizes as the wire's decimal strings; no times).
    Expected(ExpectedArgs),
    /// A reading client for throughput figures: connects --clients clients to a running
    /// simulator, subscribes tick-by-tick, reads for --seconds and prints ticks/s.
    Load(LoadArgs),
    /// Serve a capture file to one client: the recorded bytes, at the original pace or as fast
    /// as the client reads.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TCP port on 127.0.0.1 (4002 is IB Gateway's paper port; 0 picks a free one).
    #[arg(long, default_value_t = 4002)]
    port: u16,
    /// Seed of the market-data generator: tick k of a subscription is a function of
    /// (seed, conId, kind, k).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Highest server version to negotiate (plays an older gateway when lower). The answer is
    /// min(client max, this); a client whose min is above it is disconnected.
    #[arg(long, default_value_t = 226, value_parser = clap::value_parser!(u32).range(100..=226))]
    max_version: u32,
    /// Ticks a second per subscription (steady and burst modes). Fractions allowed.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Per-instrument rate: CONID=TICKS_PER_SEC (repeatable); overrides --rate.
    #[arg(long = "rate-for", value_name = "CONID=RATE")]
    rate_for: Vec<String>,
    /// Historical ticks: Unix second of tick 0 of every stream (tick k is at epoch + k/rate);
    /// default: when the simulator starts.
    #[arg(long, value_name = "UNIX_SECS")]
    hist_epoch: Option<i64>,
    /// Pacing of the ticks.
    #[arg(long, value_enum, default_value_t = Mode::Steady)]
    mode: Mode,
    /// Ticks per burst in burst mode.
    #[arg(long, default_value_t = 100)]
    burst_size: u64,
    /// Replace the built-in universe with a JSON array of instruments (--dump-universe shows
    /// the format).
    #[arg(long)]
    universe: Option<PathBuf>,
    /// Print the built-in universe as a JSON file one can edit and pass to --universe, then exit.
    #[arg(long)]
    dump_universe: bool,
    /// Entitlement override: CONID=live|delayed|api_delayed (repeatable). `delayed` answers a
    /// live request with 354, `api_delayed` with 10089; both stream delayed data (10167, tick
    /// ids 66..) after reqMarketDataType 3 or 4.
    #[arg(long, value_name = "CONID=ENTITLEMENT")]
    entitlement: Vec<String>,
    /// Refuse tick-by-tick data for this conId with 10189 (repeatable).
    #[arg(long, value_name = "CONID")]
    no_tick_by_tick: Vec<i32>,
    /// Market data lines of the account (reqMktData beyond gets 101).
    #[arg(long, default_value_t = 100)]
    max_mkt_lines: usize,
    /// Concurrent tick-by-tick subscriptions of the account (beyond gets 10190).
    #[arg(long, default_value_t = 5)]
    max_tick_by_tick: usize,
    /// Seconds within which a second tick-by-tick request for the same instrument and tick type
    /// is refused with 10190 (IB's 15-second rule); 0 disables.
    #[arg(long, default_value_t = 15)]
    tbt_same_instrument_secs: u64,
    /// Messages a second a client may send; more gets error 100 and a disconnect unless the
    /// client connected with +PACEAPI (then it is paced). 0 disables.
    #[arg(long, default_value_t = 50)]
    max_msgs_per_sec: usize,
    /// Start with a competing live session: market data requests get 10197.
    #[arg(long)]
    competing_session: bool,
    /// The account id sent in managedAccounts.
    #[arg(long, default_value = "DU1234567")]
    account: String,
    /// The first order id sent in nextValidId.
    #[arg(long, default_value_t = 1)]
    next_valid_id: i32,
    /// Also listen for line-JSON fault and stats commands on this 127.0.0.1 port (0 picks one);
    /// the commands are listed at the end of --help.
    #[arg(long)]
    control_port: Option<u16>,
    /// A fault schedule: lines `<ms after start> <control command JSON>`; `#` starts a comment.
    #[arg(long, value_name = "FILE")]
    faults: Option<PathBuf>,
    /// One scheduled fault on the command line, `<ms after start> <control command JSON>`
    /// (repeatable; merged with --faults), e.g. --fault '2000 {"cmd":"drop"}'.
    #[arg(long = "fault", value_name = "MS JSON")]
    fault: Vec<String>,
    /// Record every byte sent to each connection: FILE for the first accepted connection,
    /// FILE.N for the Nth after it (N from 1). Records are (u64 ns since accept, u32 length,
    /// bytes), little endian; `tws-sim replay` serves them.
    #[arg(long, value_name = "FILE")]
    capture: Option<PathBuf>,
    /// Write the send time of every tick: one line per socket write,
    /// `<client_id> <req_id> <first_k> <count> <unix_ns>`: the ticks k in
    /// [first_k, first_k+count) of that subscription went out in a write that started at
    /// unix_ns (taken just before the write, so latency measured against it is >= 0).
    #[arg(long, value_name = "FILE")]
    send_log: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ExpectedArgs {
    /// The generator seed (as tws-sim --seed).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The instrument.
    #[arg(long)]
    con_id: i32,
    /// Last, AllLast, BidAsk, MidPoint (tick-by-tick) or mktdata (the reqMktData sequence).
    #[arg(long)]
    tick_type: String,
    /// With mktdata: the delayed stream (tick ids 66.., after reqMarketDataType 3/4).
    #[arg(long)]
    delayed: bool,
    /// How many ticks.
    #[arg(long)]
    count: u64,
    /// The universe file the simulator runs with, if not the built-in one.
    #[arg(long)]
    universe: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// The simulator's address.
    #[arg(long, default_value = "127.0.0.1:4002")]
    addr: String,
    /// Client connections.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Tick-by-tick subscriptions per connection (conIds taken in turn from the universe).
    #[arg(long, default_value_t = 2)]
    subs_per_client: usize,
    /// Last, AllLast, BidAsk or MidPoint.
    #[arg(long, default_value = "BidAsk")]
    kind: String,
    /// How long to read.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// The client's version range (100..226 gets protobuf from a current simulator; 157..178 text).
    #[arg(long, default_value_t = 100)]
    min_version: u32,
    #[arg(long, default_value_t = 226)]
    max_version: u32,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// A file written by --capture.
    #[arg(long)]
    file: PathBuf,
    /// TCP port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 4002)]
    port: u16,
    /// Keep the recorded gaps between writes (default) or send as fast as the client reads.
    #[arg(long, value_enum, default_value_t = ReplaySpeed::Original)]
    speed: ReplaySpeed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReplaySpeed {
    Original,
    Asap,
}

fn load_universe(path: Option<&PathBuf>) -> anyhow::Result<Universe> {
    Ok(match path {
        Some(p) => Universe::load(p)?,
        None => Universe::builtin(),
    })
}

fn run_expected(a: &ExpectedArgs) -> anyhow::Result<()> {
    let universe = load_universe(a.universe.as_ref())?;
    let Some(index) = universe.by_con_id(a.con_id) else {
        bail!("conId {} is not in the universe", a.con_id);
    };
    let stream = if a.tick_type.eq_ignore_ascii_case("mktdata") {
        expected::Stream::MktData { delayed: a.delayed }
    } else {
        match TbtKind::parse(&a.tick_type) {
            Some(k) => expected::Stream::Tbt(k),
            None => bail!(
                "--tick-type must be Last, AllLast, BidAsk, MidPoint or mktdata, not {:?}",
                a.tick_type
            ),
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    expected::print(&mut out, a.seed, universe.get(index), stream, a.count)
}

fn parse_pairs<T>(
    items: &[String],
    what: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> anyhow::Result<Vec<(i32, T)>> {
    items
        .iter()
        .map(|item| {
            let (con, value) = item
                .split_once('=')
                .with_context(|| format!("{what} {item:?}: expected CONID=VALUE"))?;
            let con: i32 = con
                .trim()
                .parse()
                .with_context(|| format!("{what} {item:?}: bad conId"))?;
            let value =
                parse(value.trim()).with_context(|| format!("{what} {item:?}: bad value"))?;
            Ok((con, value))
        })
        .collect()
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn run_replay(a: &ReplayArgs) -> anyhow::Result<()> {
    let records = capture::read_capture(&a.file)?;
    let listener = TcpListener::bind(localhost(a.port))
        .with_context(|| format!("bind 127.0.0.1:{}", a.port))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening {}", listener.local_addr()?)?;
    stdout.flush()?;
    capture::replay(listener, &records, a.speed == ReplaySpeed::Asap)
}

fn run_server(s: &ServeArgs) -> anyhow::Result<()> {
    let universe = load_universe(s.universe.as_ref())?;
    if s.dump_universe {
        let specs: Vec<_> = universe.iter().map(|i| i.spec.clone()).collect();
        // A closed pipe (`| head`) is an error to report, not a panic.
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string_pretty(&specs)?)?;
        out.flush()?;
        return Ok(());
    }
    let mut specs: Vec<_> = universe.iter().map(|i| i.spec.clone()).collect();
    let ents = parse_pairs(&s.entitlement, "--entitlement", |v| {
        serde_json::from_value::<Entitlement>(serde_json::Value::String(v.to_owned())).ok()
    })?;
    for (con, ent) in ents {
        let spec = specs
            .iter_mut()
            .find(|x| x.con_id == con)
            .with_context(|| format!("--entitlement: conId {con} is not in the universe"))?;
        spec.entitlement = ent;
    }
    for con in &s.no_tick_by_tick {
        let spec = specs
            .iter_mut()
            .find(|x| x.con_id == *con)
            .with_context(|| format!("--no-tick-by-tick: conId {con} is not in the universe"))?;
        spec.tick_by_tick = false;
    }
    let universe = Universe::new(specs)?;
    if !(s.rate.is_finite() && s.rate > 0.0) {
        bail!("--rate must be a positive number of ticks a second");
    }
    let rate_for: HashMap<i32, f64> = parse_pairs(&s.rate_for, "--rate-for", |v| {
        v.parse::<f64>().ok().filter(|r| r.is_finite() && *r > 0.0)
    })?
    .into_iter()
    .collect();
    let mut schedule = match &s.faults {
        Some(p) => control::load_schedule(p)?,
        None => Vec::new(),
    };
    schedule.extend(control::parse_schedule(&s.fault.join("\n")).context("--fault")?);
    schedule.sort_by_key(|(t, _)| *t);
    let cfg = GatewayConfig {
        max_version: s.max_version,
        mode: s.mode,
        rate: s.rate,
        rate_for,
        burst_size: s.burst_size.max(1),
        session: SessionConfig {
            seed: s.seed,
            account: s.account.clone(),
            next_valid_id: s.next_valid_id,
            limits: LimitConfig {
                max_mkt_lines: s.max_mkt_lines,
                max_tbt: s.max_tick_by_tick,
                tbt_same_instrument: Duration::from_secs(s.tbt_same_instrument_secs),
                max_msgs_per_sec: s.max_msgs_per_sec,
            },
        },
        competing: s.competing_session,
    };
    let recording = Recording {
        capture: s.capture.clone(),
        send_log: s.send_log.clone(),
    };
    let hub = Arc::new(Hub::new(
        Gateway::new(cfg, universe, WallClock::system()),
        recording,
    )?);
    if let Some(secs) = s.hist_epoch {
        hub.gateway.set_historical_epoch(secs);
    }
    let listener = TcpListener::bind(localhost(s.port))
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", s.port))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening {}", listener.local_addr()?)?;
    let (server_tx, server_rx) = std::sync::mpsc::channel();
    let exec = Executor {
        hub: Arc::clone(&hub),
        server: server_tx,
    };
    if let Some(port) = s.control_port {
        let control = TcpListener::bind(localhost(port))
            .with_context(|| format!("bind control 127.0.0.1:{port}"))?;
        writeln!(stdout, "control {}", control.local_addr()?)?;
        let exec = exec.clone();
        std::thread::Builder::new()
            .name("tws-sim-control".into())
            .spawn(move || control::serve(control, exec))?;
    }
    stdout.flush()?;
    if !schedule.is_empty() {
        let start = Instant::now();
        std::thread::Builder::new()
            .name("tws-sim-faults".into())
            .spawn(move || control::run_schedule(schedule, exec, start))?;
    }
    tracing::info!(max_version = s.max_version, seed = s.seed, mode = ?s.mode, rate = s.rate, "tws-sim ready");
    server::run(listener, hub, server_rx)
}

/// Parses the command line and runs what it asks for; returns only when that ends.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Expected(a)) => run_expected(a),
        Some(Command::Replay(a)) => run_replay(a),
        Some(Command::Load(a)) => load::run(
            &load::LoadPlan {
                addr: a.addr.clone(),
                clients: a.clients,
                subs_per_client: a.subs_per_client,
                kind: a.kind.clone(),
                seconds: a.seconds,
                min_version: a.min_version,
                max_version: a.max_version,
            },
            &Universe::builtin(),
        ),
        None => run_server(&cli.serve),
    }
}
