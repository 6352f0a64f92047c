//! The `ib-stream` command: one binary for every process of the system.

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ib_stream::config::{self, ConfigError, Environment};
use ib_stream::report;

/// ib-stream: Interactive Brokers market data into shared memory, to disk and to the web.
#[derive(Debug, Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand takes: they select and override the configuration.
#[derive(Debug, Args)]
struct GlobalArgs {
    /// Environment: production, development or staging (picks ports, client ids, paths).
    #[arg(long, global = true, value_parser = parse_env_name)]
    env: Option<Environment>,
    /// A KEY=VALUE env file read before the IB_STREAM_* variables.
    #[arg(long, global = true)]
    env_file: Option<PathBuf>,
    /// Override one setting, e.g. `--set IB_STREAM_CLIENT_ID=7` (repeatable; wins over all).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    set: Vec<String>,
}

fn parse_env_name(s: &str) -> Result<Environment, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Record the ring to storage (the recorder sidecar).
    Record(ib_stream::recorder::RecordArgs),
    /// Fill the recorded gaps from IB's history (its own IB session, paced).
    Backfill(ib_stream::backfill::run::BackfillArgs),
    /// Run the engine: IB session to the shared-memory ring, plus the control socket.
    Engine(ib_stream::engine::EngineOptions),
    /// Print records from the ring as JSON lines.
    Tail(ib_stream::tools::tail::TailArgs),
    /// A live view of the engine's status region.
    Top(ib_stream::tools::top::TopArgs),
    /// Print ticks from a web server (WebSocket, reconnecting and resuming by itself).
    Watch(ib_stream::tools::watch::WatchArgs),
    /// Serve ticks over SSE and WebSocket, with health, metrics and a live page.
    Serve(ib_stream::serve::ServeArgs),
    /// Run one environment: tws-sim (when simulating), engine, recorder and web server.
    Up(ib_stream::up::UpArgs),
    /// Summarise a running environment (exit code 1 when not healthy).
    Status(ib_stream::up::status::StatusArgs),
    /// Inspect, check, export and import recorded history.
    Storage(ib_stream::storage::cli::StorageArgs),
    /// Studies and bars (delta, VWAP, Bollinger, ...) from the ring, a server or storage.
    Studies(ib_stream::studies::cli::StudiesArgs),
    /// Republish the ring on a NATS JetStream stream (engine host).
    Bridge(ib_stream::bridge::BridgeArgs),
    /// Rebuild the engine host's ring here from its JetStream stream.
    Mirror(ib_stream::mirror::MirrorArgs),
    /// Read the environment's JetStream stream and check it holds each record once, in
    /// order, with every hole declared (one JSON line; exit code 1 when it does not).
    StreamAudit(ib_stream::bridge::audit::AuditArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration and where each value came from.
    Check,
    /// List every setting with its original IB-Stream aliases.
    Keys,
}

/// Loads the configuration every subcommand runs with; unknown `IB_STREAM_*` variables in the
/// environment are reported on stderr (they are ignored, so a typo would otherwise go unseen).
fn load(g: &GlobalArgs) -> anyhow::Result<config::Loaded> {
    let loaded = ib_stream::up::load(&up_flags(g))?;
    for w in loaded.warnings() {
        eprintln!("ib-stream: warning: {w}");
    }
    Ok(loaded)
}

fn up_flags(g: &GlobalArgs) -> ib_stream::up::GlobalFlags {
    ib_stream::up::GlobalFlags {
        env: g.env,
        env_file: g.env_file.clone(),
        sets: g.set.clone(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Only for the commands whose output is their stdout: a process that serves others and
    // meets a broken pipe on a socket must still report it.
    let prints = matches!(
        cli.command,
        Command::Config(_)
            | Command::Tail(_)
            | Command::Top(_)
            | Command::Status(_)
            | Command::Storage(_)
            | Command::Studies(_)
    );
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader of our stdout has gone (`ib-stream tail | head -3`): it has what it wanted,
        // so stop quietly, as a command killed by SIGPIPE would, but without a signal.
        Err(e) if prints && report::is_broken_pipe(e.as_ref()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error chain in one line: what failed and why, each cause once, no backtrace.
            eprintln!("ib-stream: error: {}", report::one_line(e.as_ref()));
            if is_permanent(&e) {
                std::process::ExitCode::from(report::EXIT_PERMANENT)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// Whether restarting the command cannot help (so `up` must not retry it): bad configuration,
/// or an environment problem [`report::is_permanent`] recognises.
fn is_permanent(e: &anyhow::Error) -> bool {
    let config = e.chain().any(|c| c.is::<ConfigError>())
        || matches!(
            e.downcast_ref::<ib_stream::up::UpError>(),
            Some(
                ib_stream::up::UpError::Config(_)
                    | ib_stream::up::UpError::BadSet(_)
                    | ib_stream::up::UpError::ChildCannotRun { .. }
            )
        );
    config || report::is_permanent(e.as_ref())
}

/// This environment's web server as a client reaches it: one bound to every address is
/// reached on loopback.
fn local_url(s: &config::Settings) -> String {
    let host = match s.serve_host.as_str() {
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
        h => h,
    };
    format!("http://{host}:{}", s.serve_port)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Record(args) => {
            let loaded = load(&cli.global)?;
            ib_stream::recorder::run_cli(&loaded.settings, &args)?;
        }
        Command::Backfill(args) => {
            let loaded = load(&cli.global)?;
            ib_stream::backfill::run::run_cli(&loaded.settings, &args)?;
        }
        Command::Storage(args) => {
            let loaded = load(&cli.global)?;
            ib_stream::storage::cli::run(&args, &loaded.settings.storage_path)?;
        }
        Command::Studies(args) => {
            let loaded = load(&cli.global)?;
            let s = &loaded.settings;
            let ctx = ib_stream::studies::cli::Context {
                ring_dir: s.ring_dir().to_path_buf(),
                storage_root: s.storage_path.clone(),
                default_url: local_url(s),
                token: s.token.clone(),
            };
            ib_stream::studies::cli::run(&args, &ctx, &mut std::io::stdout().lock())?;
        }
        Command::Config(ConfigCommand::Check) => {
            let loaded = load(&cli.global)?;
            // `writeln!`, not `println!`: a closed stdout is an error to return, not a panic.
            let mut out = std::io::stdout().lock();
            let rows = loaded.table();
            let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
            for (key, value, source, _) in rows {
                let value = if value.is_empty() {
                    "(none)".to_string()
                } else {
                    value
                };
                writeln!(out, "{key:<w$}  {value}  [{source}]")?;
            }
            writeln!(
                out,
                "control socket: {}",
                loaded.settings.control_socket().display()
            )?;
            let running = ib_stream::up::running_up(&loaded.settings.shm_dir);
            let mut failed = Vec::new();
            for c in ib_stream::up::preflight::run(&loaded, running) {
                use ib_stream::up::preflight::Outcome;
                match c.outcome {
                    Outcome::Ok(m) => writeln!(out, "check {}: {m}", c.what)?,
                    Outcome::Note(m) => writeln!(out, "check {}: {m}", c.what)?,
                    Outcome::Failed(m) => {
                        writeln!(out, "check {}: FAILED: {m}", c.what)?;
                        failed.push(format!("{}: {m}", c.what));
                    }
                }
            }
            if !failed.is_empty() {
                anyhow::bail!("{} check(s) failed: {}", failed.len(), failed.join("; "));
            }
        }
        Command::Engine(opts) => {
            let loaded = load(&cli.global)?;
            let ran = ib_stream::engine::run(loaded.settings, opts);
            // The last lines (the clean stop's report) are still in the log thread's queue.
            ib_stream::engine::logging::flush(std::time::Duration::from_millis(500));
            ran?;
        }
        Command::Tail(mut args) => {
            let loaded = load(&cli.global)?;
            // Passthrough and migration read the upstream's ring and write nothing there.
            args.unregistered = loaded.settings.ring_read_only();
            ib_stream::tools::tail::run(loaded.settings.ring_dir(), &args, &mut std::io::stdout())?;
        }
        Command::Top(args) => {
            let loaded = load(&cli.global)?;
            ib_stream::tools::top::run(loaded.settings.ring_dir(), &args, &mut std::io::stdout())?;
        }
        Command::Watch(args) => {
            let loaded = load(&cli.global)?;
            let s = &loaded.settings;
            let url = local_url(s);
            ib_stream::tools::watch::run(&args, &url, s.token.as_deref(), &mut std::io::stdout())?;
        }
        Command::Serve(args) => {
            let loaded = load(&cli.global)?;
            ib_stream::serve::run_blocking(&loaded.settings, &args)?;
        }
        Command::Bridge(args) => {
            let loaded = load(&cli.global)?;
            ib_stream::bridge::init_logging(&loaded.settings);
            ib_stream::bridge::run(&ib_stream::bridge::BridgeConfig::from_args(
                &loaded.settings,
                &args,
            )?)?;
        }
        Command::Mirror(args) => {
            let loaded = load(&cli.global)?;
            ib_stream::bridge::init_logging(&loaded.settings);
            ib_stream::mirror::run(&ib_stream::mirror::MirrorConfig::from_args(
                &loaded.settings,
                &args,
            )?)?;
        }
        Command::StreamAudit(args) => {
            let loaded = load(&cli.global)?;
            let env = args
                .stream_env
                .clone()
                .unwrap_or_else(|| loaded.settings.environment.name().to_owned());
            let urls = ib_stream::bridge::split_urls(&args.nats_url);
            let report = ib_stream::bridge::audit::run(&urls, &env)?;
            println!("{}", serde_json::to_string(&report)?);
            if !report.is_clean() {
                std::process::exit(1);
            }
        }
        Command::Up(args) => ib_stream::up::run(&up_flags(&cli.global), &args)?,
        Command::Status(args) => ib_stream::up::status::run(&up_flags(&cli.global), &args)?,
        Command::Config(ConfigCommand::Keys) => {
            let mut out = std::io::stdout().lock();
            for (key, aliases, help) in config::known_keys() {
                let aka = if aliases.is_empty() {
                    String::new()
                } else {
                    format!(" (also {})", aliases.join(", "))
                };
                writeln!(out, "{key}{aka}\n    {help}")?;
            }
        }
    }
    Ok(())
}
