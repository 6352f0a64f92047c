//! `ib-stream studies <study>`: a study over one of three inputs (`--ring`, the default;
//! `--url`; `--storage`), written as a table, JSON lines or CSV, and bars also as Parquet.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::bars::{BarAggregator, BarSize, BarSource};
use super::bollinger::Bollinger;
use super::clock::{Clock, ClockError, parse_time_size};
use super::delta::{Delta, MultiDelta};
use super::input::{self, Input, InputError, Selection};
use super::output::{Format, RowWriter};
use super::passthrough::Passthrough;
use super::vwap::{Vwap, VwapWindow};
use super::{Event, Study, TradeKind};
use crate::columnar::ParquetSink;
use crate::columnar::bar::{BarColumns, bar_schema};
use crate::storage::query::time;

/// Options of `ib-stream studies`.
#[derive(Debug, Clone, clap::Args)]
pub struct StudiesArgs {
    /// The study.
    #[command(subcommand)]
    pub study: StudyCommand,
}

/// The studies.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum StudyCommand {
    /// OHLCV, trade count and VWAP bars by time, tick count or volume.
    Bars(BarsArgs),
    /// Trades classified against the quote in force, per trade or per bar.
    Delta(DeltaArgs),
    /// Delta bars of several sizes at once.
    MultiDelta(MultiDeltaArgs),
    /// VWAP over the session or a rolling window, with volatility bands.
    Vwap(VwapArgs),
    /// Moving average of trade prices with standard-deviation bands.
    Bollinger(BollingerArgs),
    /// The ticks and gaps the studies receive.
    Passthrough(CommonArgs),
    /// The server's health (`GET /health`).
    Health(ServerArgs),
    /// What the server streams (`GET /v3/streams`).
    Info(ServerArgs),
}

/// Input, interval, clock and output, shared by every study.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// The contract.
    #[arg(long = "con-id")]
    pub con_id: u32,
    /// Read this machine's ring (the default).
    #[arg(long, conflicts_with_all = ["url", "storage"])]
    pub ring: bool,
    /// Read a web server, e.g. `http://127.0.0.1:8101` (history then live from --from).
    #[arg(long, conflicts_with = "storage")]
    pub url: Option<String>,
    /// Read recorded history (the configured storage, or this directory); needs --from and
    /// --to.
    #[arg(long, num_args = 0..=1, require_equals = false, value_name = "ROOT")]
    pub storage: Option<Option<PathBuf>>,
    /// First receive time (RFC 3339, `YYYY-MM-DD[ HH:MM[:SS]]` in --tz, `now`).
    #[arg(long)]
    pub from: Option<String>,
    /// End receive time (exclusive).
    #[arg(long)]
    pub to: Option<String>,
    /// The exchange's time zone: bars align to its clock, times print in it.
    #[arg(long, default_value = super::clock::DEFAULT_TZ)]
    pub tz: String,
    /// Local time the exchange's session starts (daily bars, session VWAP, cumulative delta).
    #[arg(long, default_value = super::clock::DEFAULT_SESSION_START)]
    pub session_start: String,
    /// Which trades: last or all_last.
    #[arg(long, value_enum, default_value_t = TradeKind::Last)]
    pub trades: TradeKind,
    /// Output format (`parquet`: bars only, needs --out).
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Write to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Stop after this many seconds (ring and server).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Wait this long for the ring to appear, in seconds.
    #[arg(long, default_value_t = 0.0)]
    pub wait: f64,
    /// Bearer token for --url (default: IB_STREAM_TOKEN).
    #[arg(long)]
    pub token: Option<String>,
}

/// What `--format` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns with a header.
    Table,
    /// One JSON object per line.
    Jsonl,
    /// CSV with a header line.
    Csv,
    /// A Parquet file of typed columns (bars only).
    Parquet,
}

impl OutputFormat {
    /// The text format, `None` for Parquet.
    fn text(self) -> Option<Format> {
        match self {
            OutputFormat::Table => Some(Format::Table),
            OutputFormat::Jsonl => Some(Format::Jsonl),
            OutputFormat::Csv => Some(Format::Csv),
            OutputFormat::Parquet => None,
        }
    }
}

/// `bars`.
#[derive(Debug, Clone, clap::Args)]
pub struct BarsArgs {
    /// Common options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Time bars of this size (1s to 1d: `1s`, `5m`, `1h`, `1d`).
    #[arg(long, default_value = "1m", conflicts_with_all = ["ticks", "volume"])]
    pub size: String,
    /// Bars of this many trades (or quotes).
    #[arg(long)]
    pub ticks: Option<u64>,
    /// Bars of this much volume.
    #[arg(long)]
    pub volume: Option<String>,
    /// Prices: trades, or the bid, ask or mid of quotes.
    #[arg(long, value_enum, default_value_t = BarSource::Trades)]
    pub source: BarSource,
    /// Write empty time bars for intervals without a price.
    #[arg(long)]
    pub fill: bool,
}

/// `delta`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeltaArgs {
    /// Common options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Per time bar of this size instead of per trade.
    #[arg(long)]
    pub bar: Option<String>,
}

/// `multi-delta`.
#[derive(Debug, Clone, clap::Args)]
pub struct MultiDeltaArgs {
    /// Common options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Bar sizes, comma-separated.
    #[arg(long, default_value = "1m,5m,15m", value_delimiter = ',')]
    pub sizes: Vec<String>,
}

/// `vwap`.
#[derive(Debug, Clone, clap::Args)]
pub struct VwapArgs {
    /// Common options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// `session`, or a rolling window (`30m`).
    #[arg(long, default_value = "session")]
    pub window: String,
    /// Bands at this many times the realised volatility.
    #[arg(long, default_value_t = 3.0)]
    pub k: f64,
}

/// `bollinger`.
#[derive(Debug, Clone, clap::Args)]
pub struct BollingerArgs {
    /// Common options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Window (`1200s`, `20m`).
    #[arg(long, default_value = "1200s")]
    pub period: String,
    /// Bands at this many standard deviations.
    #[arg(long, default_value_t = 1.0)]
    pub k: f64,
    /// No value until this many trades are in the window.
    #[arg(long, default_value_t = 10)]
    pub min_trades: u64,
}

/// `health` and `info`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The web server (default: this environment's).
    #[arg(long)]
    pub url: Option<String>,
    /// Bearer token (default: IB_STREAM_TOKEN).
    #[arg(long)]
    pub token: Option<String>,
}

/// Why `studies` failed.
#[derive(Debug, thiserror::Error)]
pub enum StudiesError {
    /// A bad option.
    #[error("{0}")]
    Usage(String),
    /// A bad time zone or session start.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// A bad time.
    #[error(transparent)]
    Time(#[from] time::TimeError),
    /// The input failed.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Writing the output failed.
    #[error("write")]
    Write(#[from] std::io::Error),
    /// The server could not be asked.
    #[error("{0}")]
    Server(String),
    /// Writing the Parquet file failed.
    #[error(transparent)]
    Parquet(#[from] crate::columnar::ColumnarError),
}

/// What the configuration supplies.
#[derive(Debug, Clone)]
pub struct Context {
    /// The ring's directory.
    pub ring_dir: PathBuf,
    /// The storage root.
    pub storage_root: PathBuf,
    /// This environment's web server.
    pub default_url: String,
    /// IB_STREAM_TOKEN.
    pub token: Option<String>,
}

/// Runs a study, writing to `out`.
pub fn run(args: &StudiesArgs, ctx: &Context, out: &mut dyn Write) -> Result<(), StudiesError> {
    use StudyCommand as C;
    match &args.study {
        C::Bars(a) => {
            let clock = clock(&a.common)?;
            let size = match (a.ticks, &a.volume) {
                (Some(0), _) => {
                    return Err(StudiesError::Usage("--ticks must be at least 1".into()));
                }
                (Some(n), _) => BarSize::Ticks(n),
                (None, Some(v)) => BarSize::Volume(
                    crate::tickjson::parse_fixed(v, crate::ipc::SIZE_SCALE)
                        .filter(|v| *v > 0)
                        .ok_or_else(|| {
                            StudiesError::Usage(format!("--volume {v:?} is not a positive size"))
                        })?,
                ),
                (None, None) => {
                    BarSize::Time(parse_time_size(&a.size).map_err(StudiesError::Usage)?)
                }
            };
            let s = BarAggregator::new(size, a.source, a.fill, clock.clone());
            if a.common.format == OutputFormat::Parquet {
                return drive_parquet(s, &a.common, ctx);
            }
            drive(s, &a.common, clock, ctx, out)
        }
        C::Delta(a) => {
            let clock = clock(&a.common)?;
            let bar = a
                .bar
                .as_deref()
                .map(parse_time_size)
                .transpose()
                .map_err(StudiesError::Usage)?;
            drive(Delta::new(clock.clone(), bar), &a.common, clock, ctx, out)
        }
        C::MultiDelta(a) => {
            let clock = clock(&a.common)?;
            let sizes = a
                .sizes
                .iter()
                .map(|s| parse_time_size(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(StudiesError::Usage)?;
            drive(MultiDelta::new(&clock, &sizes), &a.common, clock, ctx, out)
        }
        C::Vwap(a) => {
            let clock = clock(&a.common)?;
            let window = if a.window == "session" {
                VwapWindow::Session
            } else {
                VwapWindow::Rolling(time::parse_duration(&a.window)?.max(1000) / 1000)
            };
            drive(
                Vwap::new(clock.clone(), window, a.k),
                &a.common,
                clock,
                ctx,
                out,
            )
        }
        C::Bollinger(a) => {
            let clock = clock(&a.common)?;
            let period = time::parse_duration(&a.period)?.max(1000) / 1000;
            drive(
                Bollinger::new(period, a.k, a.min_trades),
                &a.common,
                clock,
                ctx,
                out,
            )
        }
        C::Passthrough(c) => {
            let clock = clock(c)?;
            drive(Passthrough, c, clock, ctx, out)
        }
        C::Health(s) => server_get(s, ctx, "/health", out),
        C::Info(s) => server_get(s, ctx, "/v3/streams", out),
    }
}

fn clock(c: &CommonArgs) -> Result<Clock, StudiesError> {
    Ok(Clock::new(&c.tz, &c.session_start)?)
}

fn selection(c: &CommonArgs) -> Result<Selection, StudiesError> {
    let tz = time::zone(&c.tz)?;
    let now = crate::ipc::shm::unix_time_ns() as i64;
    let from_ns = c
        .from
        .as_deref()
        .map(|s| time::parse_time(s, &tz, now))
        .transpose()?;
    let to_ns =
        c.to.as_deref()
            .map(|s| time::parse_time(s, &tz, now))
            .transpose()?;
    if let (Some(a), Some(b)) = (from_ns, to_ns)
        && a >= b
    {
        return Err(StudiesError::Usage(format!(
            "--from {a} ns is not before --to {b} ns"
        )));
    }
    Ok(Selection::of_ns(c.con_id, c.trades, from_ns, to_ns))
}

/// Feeds one input to `study`, writing its rows as text as they come.
fn drive<S: Study>(
    study: S,
    c: &CommonArgs,
    clock: Clock,
    ctx: &Context,
    stdout: &mut dyn Write,
) -> Result<(), StudiesError> {
    let Some(format) = c.format.text() else {
        return Err(StudiesError::Usage(
            "--format parquet is for bars (and `storage export`)".into(),
        ));
    };
    let mut file = match &c.out {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| StudiesError::Usage(format!("--out {}: {e}", path.display())))?,
        )),
        None => None,
    };
    let out: &mut dyn Write = match &mut file {
        Some(f) => f,
        None => stdout,
    };
    let mut w = RowWriter::new(format, clock);
    feed(study, c, ctx, &mut |rows, now| {
        for r in rows.drain(..) {
            w.row(&r);
        }
        // Flush on the clock too, so a live study's closed bars show at once.
        if w.buffered() > 32 * 1024 || now && w.buffered() > 0 {
            w.flush(out)?;
        }
        Ok(())
    })?;
    out.flush()?;
    Ok(())
}

/// Bars into the Parquet file `--out`.
fn drive_parquet(study: BarAggregator, c: &CommonArgs, ctx: &Context) -> Result<(), StudiesError> {
    let Some(path) = &c.out else {
        return Err(StudiesError::Usage(
            "--format parquet writes a file: give --out FILE".into(),
        ));
    };
    // Written beside the target and renamed once complete: a bad input or an interrupted
    // run leaves no empty or footerless file under the name asked for.
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let f = std::fs::File::create(&partial)
        .map_err(|e| StudiesError::Usage(format!("--out {}: {e}", partial.display())))?;
    let written = (|| -> Result<(), StudiesError> {
        let mut sink = ParquetSink::new(
            std::io::BufWriter::with_capacity(256 * 1024, f),
            bar_schema(),
            BarColumns::default(),
        )?;
        feed(study, c, ctx, &mut |rows, _| {
            for r in rows.drain(..) {
                sink.columns().push(&r);
            }
            sink.flush_full().map_err(std::io::Error::other)
        })?;
        sink.close()?.flush()?;
        Ok(())
    })();
    match written {
        Ok(()) => std::fs::rename(&partial, path)
            .map_err(|e| StudiesError::Usage(format!("--out {}: {e}", path.display()))),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Where a study's rows go: `(rows, now)`, `now` when they should be written out at once
/// (the clock moved, or the input ended).
type Emit<'a, R> = dyn FnMut(&mut Vec<R>, bool) -> Result<(), std::io::Error> + 'a;

/// Feeds one input to `study`, handing its rows to `emit` as they come.
fn feed<S: Study>(
    mut study: S,
    c: &CommonArgs,
    ctx: &Context,
    emit: &mut Emit<'_, S::Out>,
) -> Result<(), StudiesError> {
    let sel = selection(c)?;
    let mut rows: Vec<S::Out> = Vec::with_capacity(64);
    let result = {
        let mut sink = |i: Input| -> Result<(), std::io::Error> {
            match i {
                Input::Event(Event::Tick(t)) => study.on_tick(&t, &mut rows),
                Input::Event(Event::Gap(g)) => study.on_gap(&g, &mut rows),
                Input::Clock(now) => study.on_clock(now, &mut rows),
            }
            emit(&mut rows, matches!(i, Input::Clock(_)))
        };
        match (&c.url, &c.storage) {
            (Some(url), _) => {
                let token = c.token.as_deref().or(ctx.token.as_deref());
                input::remote(url, token, &sel, c.seconds, &mut sink)
            }
            (None, Some(root)) => {
                if sel.from_us.is_none() || sel.to_us.is_none() {
                    return Err(StudiesError::Usage(
                        "--storage needs --from and --to".into(),
                    ));
                }
                let root = root.as_deref().unwrap_or(&ctx.storage_root);
                input::storage(root, &sel, &mut sink)
            }
            (None, None) => input::ring(
                &ctx.ring_dir,
                &sel,
                Duration::from_secs_f64(c.wait.max(0.0)),
                c.seconds,
                &mut sink,
            ),
        }
    };
    match result {
        Ok(()) => {}
        // The reader of our output went away: it has what it wanted.
        Err(InputError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        Err(InputError::Output(e)) => return Err(e.into()),
        Err(e) => return Err(e.into()),
    }
    study.finish(&mut rows);
    emit(&mut rows, true)?;
    Ok(())
}

fn server_get(
    s: &ServerArgs,
    ctx: &Context,
    path: &str,
    out: &mut dyn Write,
) -> Result<(), StudiesError> {
    let url = s.url.as_deref().unwrap_or(&ctx.default_url);
    let ep =
        ib_stream_client::endpoint(url, None).map_err(|e| StudiesError::Server(e.to_string()))?;
    let (host, port) = ep
        .authority
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| StudiesError::Server(format!("{url}: no host:port")))?;
    let token = s.token.as_deref().or(ctx.token.as_deref());
    let a = crate::up::http::get(&host, port, path, token, Duration::from_secs(5))
        .map_err(|e| StudiesError::Server(format!("GET {url}{path}: {e}")))?;
    writeln!(out, "{}", a.body.trim_end())?;
    if a.status != 200 {
        return Err(StudiesError::Server(format!(
            "GET {url}{path}: HTTP {}",
            a.status
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        study: StudyCommand,
    }

    fn common(args: &[&str]) -> CommonArgs {
        let mut v = vec!["t", "passthrough"];
        v.extend_from_slice(args);
        match T::try_parse_from(v).unwrap().study {
            StudyCommand::Passthrough(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_interval_is_the_storage_querys_microseconds() {
        let c = common(&[
            "--con-id",
            "7",
            "--from",
            "2026-01-05T14:30:00.0000015Z",
            "--to",
            "2026-01-05T14:31:00.0000001Z",
        ]);
        let s = selection(&c).unwrap();
        // From floors, to rounds up: a record is in when its microsecond overlaps the range.
        assert_eq!(s.from_us, Some(1_767_623_400_000_001));
        assert_eq!(s.to_us, Some(1_767_623_460_000_001));
        assert_eq!((s.con_id, s.trades), (7, TradeKind::Last));
        // Civil times are read in --tz.
        let c = common(&[
            "--con-id",
            "7",
            "--from",
            "2026-01-05 09:30",
            "--tz",
            "America/New_York",
        ]);
        assert_eq!(selection(&c).unwrap().from_us, Some(1_767_623_400_000_000));
    }

    #[test]
    fn bad_options_are_refused_before_any_input_is_read() {
        let c = common(&[
            "--con-id",
            "7",
            "--from",
            "2026-01-05",
            "--to",
            "2026-01-04",
        ]);
        assert!(matches!(selection(&c), Err(StudiesError::Usage(_))));
        assert!(
            T::try_parse_from([
                "t",
                "passthrough",
                "--con-id",
                "7",
                "--url",
                "x",
                "--storage"
            ])
            .is_err()
        );
        let ctx = Context {
            ring_dir: "/nonexistent".into(),
            storage_root: "/nonexistent".into(),
            default_url: "http://127.0.0.1:1".into(),
            token: None,
        };
        let run_args = |v: &[&str]| {
            let mut a = vec!["t"];
            a.extend_from_slice(v);
            let study = T::try_parse_from(a).unwrap().study;
            run(&StudiesArgs { study }, &ctx, &mut Vec::new())
        };
        let e = run_args(&[
            "passthrough",
            "--con-id",
            "7",
            "--storage",
            "--from",
            "2026-01-05",
        ]);
        assert!(matches!(e, Err(StudiesError::Usage(m)) if m.contains("--to")));
        let e = run_args(&["bars", "--con-id", "7", "--size", "2d"]);
        assert!(matches!(e, Err(StudiesError::Usage(_))));
        let e = run_args(&["bars", "--con-id", "7", "--tz", "Mars/Base"]);
        assert!(matches!(e, Err(StudiesError::Clock(_))));
        // No ring there: the input's error, naming the file.
        let e = run_args(&["bars", "--con-id", "7"]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent"), "{e}");
    }

    /// A one-connection HTTP server on 127.0.0.1 that answers `status` with `body`; the
    /// thread returns the request it read.
    fn one_answer(status: &str, body: &str) -> (String, std::thread::JoinHandle<String>) {
        use std::io::{BufRead, BufReader};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            // Headers end at the blank line; a GET has no body.
            while r.read_line(&mut req).unwrap() > 2 {}
            s.write_all(answer.as_bytes()).unwrap();
            req
        });
        (url, h)
    }

    fn ask(study: &str, url: &str, token: Option<&str>) -> (Result<(), StudiesError>, String) {
        let mut a = vec!["t", study, "--url", url];
        if let Some(t) = token {
            a.extend(["--token", t]);
        }
        let study = T::try_parse_from(a).unwrap().study;
        let ctx = Context {
            ring_dir: "/nonexistent".into(),
            storage_root: "/nonexistent".into(),
            default_url: "http://127.0.0.1:1".into(),
            token: Some("from-env".into()),
        };
        let mut out = Vec::new();
        let r = run(&StudiesArgs { study }, &ctx, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn health_asks_the_server_and_prints_its_answer() {
        let body = r#"{"status":"healthy","reasons":[],"streams":2}"#;
        let (url, h) = one_answer("200 OK", &format!("{body}\n\n"));
        let (r, out) = ask("health", &url, Some("tok"));
        r.unwrap();
        // The body as the server sent it, one trailing newline.
        assert_eq!(out, format!("{body}\n"));
        let req = h.join().unwrap();
        assert!(req.starts_with("GET /health HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Authorization: Bearer tok\r\n"), "{req}");
    }

    #[test]
    fn an_unhealthy_server_is_printed_and_fails() {
        // What `GET /health` answers while the ring writer's heartbeat is stale.
        let body = r#"{"status":"unhealthy","reasons":["ring writer heartbeat is 5012 ms old"]}"#;
        let (url, h) = one_answer("503 Service Unavailable", body);
        let (r, out) = ask("health", &url, None);
        assert_eq!(out, format!("{body}\n"));
        let e = r.unwrap_err();
        assert!(
            matches!(&e, StudiesError::Server(m) if m.contains("HTTP 503") && m.contains("/health")),
            "{e}"
        );
        // Without --token, the environment's.
        assert!(
            h.join()
                .unwrap()
                .contains("Authorization: Bearer from-env\r\n")
        );
    }

    #[test]
    fn info_lists_the_servers_streams() {
        let body = r#"{"streams":[{"con_id":711280073,"kinds":["bid_ask"]}]}"#;
        let (url, h) = one_answer("200 OK", body);
        let (r, out) = ask("info", &url, None);
        r.unwrap();
        assert_eq!(out, format!("{body}\n"));
        assert!(
            h.join()
                .unwrap()
                .starts_with("GET /v3/streams HTTP/1.1\r\n")
        );
        // No server there: the error names the URL.
        let (r, _) = ask("info", "http://127.0.0.1:1", None);
        assert!(matches!(r, Err(StudiesError::Server(m)) if m.contains("127.0.0.1:1/v3/streams")));
    }
}
