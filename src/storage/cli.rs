//! `ib-stream storage stats | validate [--repair] | export | import`: the command-line edge
//! of the storage library (argument parsing, printing, progress on stderr).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ib_stream_ipc::{PRICE_SCALE, RECORD_SIZE, Record, RecordKind, SIZE_SCALE};

use super::StorageError;
use super::binary::{BinarySegment, HEADER_LEN, sidecar_path};
use super::compare::{self, CompareError, CompareOptions, Difference};
use super::import::{self, ImportError, ImportOptions, SourceFormat};
use super::jsonl::JsonlSegment;
use super::layout::{Format, Stream, all_segments};
use super::query::{Query, QueryError, QueryIter, QueryText, line_st_us};
use super::validate::{self, ValidateOptions};
use crate::columnar::ParquetSink;
use crate::columnar::tick::{TickColumns, TickFields, TickValue, tick_schema};
use crate::tickjson::{self, LocalStrings, StringLookup, write_fixed};

/// `ib-stream storage ...`
#[derive(Debug, clap::Args)]
pub struct StorageArgs {
    /// Storage root (default: IB_STREAM_STORAGE_PATH).
    #[arg(long, global = true)]
    pub storage: Option<PathBuf>,
    #[command(subcommand)]
    pub command: StorageCommand,
}

/// The storage tools.
#[derive(Debug, clap::Subcommand)]
pub enum StorageCommand {
    /// Files, records, bytes and time ranges per format, contract and kind; gaps per epoch.
    Stats {
        /// Only this format (`jsonl` or `binary`).
        #[arg(long, value_parser = parse_format)]
        format: Option<Format>,
    },
    /// Check every file (checksums, torn tails, decoding, order) and sequence continuity
    /// against the recorded gaps; exits non-zero when anything is wrong.
    Validate {
        /// First cut torn tails (records, lines, checksum and string entries). Do not run
        /// while a recorder writes this root.
        #[arg(long)]
        repair: bool,
    },
    /// Print a query's records to stdout.
    Export(ExportArgs),
    /// Compare the market data of two storage roots per conId, kind and hour (counts,
    /// first/last sequence and time, a content hash) and list every difference; exits 0 when
    /// they hold the same records, 1 when not.
    Compare {
        /// The root migrated from.
        #[arg(long)]
        old: PathBuf,
        /// The root migrated to.
        #[arg(long)]
        new: PathBuf,
        /// Read this format in both (default: each root's binary when present, else jsonl).
        #[arg(long, value_parser = parse_format)]
        format: Option<Format>,
        /// Print only the differences and the summary, not every hour.
        #[arg(long)]
        quiet: bool,
    },
    /// Compress the binary segments of hours that are over into sealed segments (zstd
    /// blocks with an index; every reader reads both forms). Hours at or after the
    /// checkpoint's oldest open hour, or within `--grace` of now, are left as they are.
    Seal {
        /// Leave hours that ended less than this long ago (`10m`, `1h`).
        #[arg(long, default_value = "10m")]
        grace: String,
        /// zstd level (1..=22).
        #[arg(long, default_value_t = super::sealed::SEAL_ZSTD_LEVEL)]
        level: i32,
    },
    /// Import the original IB-Stream's v3 JSON Lines (`.jsonl`) and v3 protobuf (`.pb`)
    /// files or directories of them.
    Import {
        /// Files or directories (walked for `.jsonl`, `.json` and `.pb`).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Formats to write (default: both).
        #[arg(long = "to", value_parser = parse_format)]
        to: Vec<Format>,
        /// Read every file as this format instead of going by extension (`json` or `protobuf`).
        #[arg(long, value_parser = parse_source_format)]
        source_format: Option<SourceFormat>,
    },
}

/// `storage export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// IB conId.
    #[arg(long)]
    pub con_id: u32,
    /// Kinds, comma-separated (`bid_ask,last`; default: every market-data kind).
    #[arg(long, value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Start time (RFC 3339, `YYYY-MM-DD[ HH:MM[:SS]]` in --tz, or `now`).
    #[arg(long)]
    pub start: Option<String>,
    /// End time (exclusive).
    #[arg(long)]
    pub end: Option<String>,
    /// Length of the range (`90s`, `5m`, `1h`, `2d`): with --start, after it; else up to --end or now.
    #[arg(long)]
    pub duration: Option<String>,
    /// Time zone of times given without an offset (IANA name).
    #[arg(long, default_value = "UTC")]
    pub tz: String,
    /// At most this many records.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Resume after this cursor (printed on stderr after a limited export).
    #[arg(long)]
    pub after: Option<String>,
    /// Output: `jsonl` (the stored/web JSON), `csv` or `parquet` (typed columns; needs --out).
    #[arg(long, default_value = "jsonl")]
    pub format: String,
    /// Write to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Format to read (default: binary when present).
    #[arg(long, value_parser = parse_format)]
    pub from: Option<Format>,
    /// Skip damaged parts (a binary block whose checksum fails, a binary header that is not
    /// intact, a JSON line that does not decode), report each on stderr (file and block or
    /// line) with a count at the end, and exit 0. Without it the export stops at the first
    /// one with the report and a non-zero exit (what was read before it is written).
    #[arg(long)]
    pub skip_bad: bool,
}

fn parse_format(s: &str) -> Result<Format, String> {
    Format::from_dir_name(s).ok_or_else(|| format!("{s:?}: expected jsonl or binary"))
}

fn parse_source_format(s: &str) -> Result<SourceFormat, String> {
    match s {
        "json" | "jsonl" => Ok(SourceFormat::V3Json),
        "protobuf" | "pb" => Ok(SourceFormat::V3Protobuf),
        _ => Err(format!("{s:?}: expected json or protobuf")),
    }
}

/// Why a storage command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Reading or writing storage.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A query.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// An import.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// Writing the output.
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    /// Writing a Parquet file.
    #[error(transparent)]
    Parquet(#[from] crate::columnar::ColumnarError),
    /// A bad argument.
    #[error("{0}")]
    Usage(String),
    /// Validation found problems (they were printed).
    #[error("validation found problems in {0}")]
    Invalid(PathBuf),
    /// A comparison could not be made.
    #[error(transparent)]
    Compare(#[from] CompareError),
    /// The roots compared differ (the differences were printed).
    #[error("{old} and {new} differ: {what}")]
    Differ {
        /// The old root.
        old: PathBuf,
        /// The new root.
        new: PathBuf,
        /// How many hours differ.
        what: String,
    },
}

/// Prints `what` on stderr at most once a second, from one second into a run.
struct Progress {
    start: Instant,
    last: Instant,
}

impl Progress {
    fn new() -> Progress {
        let now = Instant::now();
        Progress {
            start: now,
            last: now,
        }
    }

    fn tick(&mut self, what: impl FnOnce() -> String) {
        let now = Instant::now();
        if now.duration_since(self.start) >= Duration::from_secs(1)
            && now.duration_since(self.last) >= Duration::from_secs(1)
        {
            self.last = now;
            eprintln!("{} ({:.0?})", what(), now.duration_since(self.start));
        }
    }
}

/// Runs a storage command against `args.storage` or `default_root`.
pub fn run(args: &StorageArgs, default_root: &Path) -> Result<(), CliError> {
    let root = args.storage.as_deref().unwrap_or(default_root);
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match &args.command {
        StorageCommand::Stats { format } => stats(root, *format, &mut out)?,
        StorageCommand::Validate { repair } => {
            let ok = run_validate(root, *repair, &mut out)?;
            out.flush()?;
            if !ok {
                return Err(CliError::Invalid(root.to_path_buf()));
            }
        }
        StorageCommand::Export(e) => export(root, e, &mut out)?,
        StorageCommand::Compare {
            old,
            new,
            format,
            quiet,
        } => {
            let res = run_compare(old, new, *format, *quiet, &mut out);
            out.flush()?;
            res?;
        }
        StorageCommand::Seal { grace, level } => {
            let grace_ns = super::query::time::parse_duration(grace)
                .map_err(|e| CliError::Usage(format!("--grace: {e}")))?;
            if !(1..=22).contains(level) {
                return Err(CliError::Usage(format!("--level {level}: expected 1..=22")));
            }
            let before = super::sealed::seal_horizon(root, super::now_ns(), grace_ns)?;
            let rep = super::sealed::seal_store(root, before, *level)?;
            for r in &rep.refused {
                writeln!(out, "left raw: {r}")?;
            }
            writeln!(
                out,
                "seal: {} sealed ({} -> {} bytes), {} already sealed, {} in open hours, {} left raw",
                rep.sealed,
                rep.bytes_before,
                rep.bytes_after,
                rep.already,
                rep.open,
                rep.refused.len()
            )?;
        }
        StorageCommand::Import {
            paths,
            to,
            source_format,
        } => {
            let opts = ImportOptions {
                formats: if to.is_empty() {
                    Format::ALL.to_vec()
                } else {
                    to.clone()
                },
                source_format: *source_format,
            };
            let mut p = Progress::new();
            let rep = import::import(root, paths, &opts, |done, total, recs| {
                p.tick(|| format!("import: {done}/{total} files, {recs} records"));
            })?;
            for (path, epoch) in &rep.epochs {
                writeln!(out, "imported {} as epoch {epoch:016x}", path.display())?;
            }
            for path in &rep.already_imported {
                writeln!(out, "skipped {} (already imported)", path.display())?;
            }
            for r in &rep.rejected_examples {
                writeln!(out, "rejected {}: {}: {}", r.path.display(), r.at, r.what)?;
            }
            writeln!(
                out,
                "import: {} files, {} records, {} rejected, {} already imported",
                rep.files,
                rep.records,
                rep.rejected,
                rep.already_imported.len()
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// A progress bar on stderr, drawn only when stderr is a terminal (a log or a pipe gets none),
/// at most ten times a second.
struct Bar {
    on: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl Bar {
    fn new() -> Bar {
        use std::io::IsTerminal;
        Bar {
            on: std::io::stderr().is_terminal(),
            last: None,
            drawn: false,
        }
    }

    fn draw(&mut self, what: &str, done: u64, total: u64) {
        if !self.on {
            return;
        }
        let now = Instant::now();
        if done < total
            && self
                .last
                .is_some_and(|t| now - t < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(now);
        const W: u64 = 30;
        let filled = (done * W).checked_div(total).unwrap_or(W) as usize;
        eprint!(
            "\r{what} [{}{}] {done}/{total}",
            "#".repeat(filled),
            "-".repeat(W as usize - filled)
        );
        self.drawn = true;
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

fn time_text(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ns)).map_or_else(
        |_| ns.to_string(),
        |t| t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
    )
}

fn summary_text(s: Option<compare::HourSummary>) -> String {
    match s {
        None => "-".into(),
        Some(s) => format!(
            "{} records, epoch {:016x} seq {}..{} ({} .. {}), hash {:016x}",
            s.count,
            s.first.epoch,
            s.first.seq,
            if s.last.epoch == s.first.epoch {
                s.last.seq.to_string()
            } else {
                format!("epoch {:016x} seq {}", s.last.epoch, s.last.seq)
            },
            time_text(s.first.ts_recv),
            time_text(s.last.ts_recv),
            s.hash
        ),
    }
}

fn run_compare(
    old: &Path,
    new: &Path,
    format: Option<Format>,
    quiet: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let mut bar = Bar::new();
    let res = compare::compare(old, new, CompareOptions { format }, &mut |d, t| {
        bar.draw("compare: hours", d, t)
    });
    bar.finish();
    let cmp = res?;
    for c in &cmp.missing_contracts {
        writeln!(out, "DIFF contract {c}: in old only (missing in new)")?;
    }
    for c in &cmp.extra_contracts {
        writeln!(out, "DIFF contract {c}: in new only")?;
    }
    let mut differ = 0;
    for r in &cmp.rows {
        let (con, kind, hour) = r.key;
        let at = format!(
            "{con} {} {}",
            kind.name(),
            jiff::Timestamp::from_nanosecond(i128::from(hour)).map_or_else(
                |_| hour.to_string(),
                |t| t.strftime("%Y-%m-%dT%HZ").to_string()
            )
        );
        match &r.difference {
            None => {
                if !quiet {
                    writeln!(out, "same {at}: {}", summary_text(r.old))?;
                }
            }
            Some(d) => {
                differ += 1;
                let why = match d {
                    Difference::MissingInNew => "hour missing in new".to_string(),
                    Difference::ExtraInNew => "hour only in new".to_string(),
                    Difference::Differs(first) => first.clone(),
                };
                writeln!(out, "DIFF {at}: {why}")?;
                writeln!(out, "     old: {}", summary_text(r.old))?;
                writeln!(out, "     new: {}", summary_text(r.new))?;
            }
        }
    }
    let (n_old, n_new) = cmp.totals();
    let contracts = cmp.missing_contracts.len() + cmp.extra_contracts.len();
    writeln!(
        out,
        "compare: {} hours, {differ} differ, {contracts} contracts in one root only; old {n_old} records, new {n_new}: {}",
        cmp.rows.len(),
        if cmp.equal() { "EQUAL" } else { "DIFFERENT" }
    )?;
    if cmp.equal() {
        Ok(())
    } else {
        Err(CliError::Differ {
            old: old.to_path_buf(),
            new: new.to_path_buf(),
            what: format!("{differ} of {} hours", cmp.rows.len()),
        })
    }
}

fn run_validate(root: &Path, repair: bool, out: &mut impl Write) -> Result<bool, CliError> {
    let mut p = Progress::new();
    let rep = validate::validate_with(root, ValidateOptions { repair }, |f, done, total| {
        p.tick(|| format!("validate {}: {done}/{total} files", f.dir_name()));
    })?;
    if rep.formats.is_empty() {
        writeln!(out, "no data under {}", root.display())?;
    }
    for (format, r) in &rep.formats {
        let f = format.dir_name();
        for fix in &r.repairs {
            writeln!(out, "{f}: repaired: {fix}")?;
        }
        writeln!(
            out,
            "{f}: {} files, {} records, {} bytes, {} problems",
            r.files,
            r.records,
            r.bytes,
            r.problems.len()
        )?;
        for pr in &r.problems {
            writeln!(out, "{f}: PROBLEM {pr}")?;
        }
        for (epoch, e) in &r.epochs {
            writeln!(
                out,
                "{f}: epoch {epoch:016x}: seq {}..={}, {} records, {} gap records covering {} seqs, {} duplicates, {} uncovered ranges",
                e.first_seq,
                e.last_seq,
                e.records,
                e.gap_records,
                e.gap_seqs,
                e.duplicates,
                e.uncovered.len()
            )?;
            for (a, b) in e.uncovered.iter().take(20) {
                writeln!(out, "{f}: epoch {epoch:016x}: UNCOVERED seq {a}..={b}")?;
            }
            if e.uncovered.len() > 20 {
                writeln!(
                    out,
                    "{f}: epoch {epoch:016x}: ... {} more uncovered ranges",
                    e.uncovered.len() - 20
                )?;
            }
        }
    }
    writeln!(out, "{}", if rep.is_ok() { "OK" } else { "INVALID" })?;
    Ok(rep.is_ok())
}

#[derive(Default)]
struct StreamStats {
    files: u64,
    records: u64,
    bytes: u64,
    first_ns: Option<i64>,
    last_ns: Option<i64>,
}

fn fmt_ts(ns: Option<i64>) -> String {
    ns.and_then(|n| jiff::Timestamp::from_nanosecond(i128::from(n)).ok())
        .map_or_else(|| "-".to_string(), |t| t.to_string())
}

/// Records, first and last `ts_recv` of one data file, reading as little as it can.
fn file_summary(
    format: Format,
    path: &Path,
) -> Result<(u64, Option<i64>, Option<i64>), StorageError> {
    let io = |e| StorageError::io(path, e);
    match format {
        Format::Binary => {
            let f = std::fs::File::open(path).map_err(io)?;
            if super::sealed::is_sealed(path).map_err(io)? {
                let ix = super::sealed::SealedIndex::read(&f, path)?;
                return Ok((
                    ix.records,
                    ix.blocks.first().map(|b| b.first_ts),
                    ix.blocks.last().map(|b| b.last_ts),
                ));
            }
            let len = f.metadata().map_err(io)?.len();
            let n = len.saturating_sub(HEADER_LEN as u64) / RECORD_SIZE as u64;
            let at = |i: u64| -> Result<i64, StorageError> {
                let mut b = [0u8; RECORD_SIZE];
                f.read_exact_at(&mut b, HEADER_LEN as u64 + i * RECORD_SIZE as u64)
                    .map_err(io)?;
                Ok(Record::from_bytes_array(&b).ts_recv)
            };
            if n == 0 {
                return Ok((0, None, None));
            }
            Ok((n, Some(at(0)?), Some(at(n - 1)?)))
        }
        Format::Jsonl => {
            let mut r = BufReader::new(std::fs::File::open(path).map_err(io)?);
            let (mut n, mut first, mut last) = (0u64, None, None);
            let mut line = Vec::new();
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line).map_err(io)? == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                n += 1;
                let st = line_st_us(&line).map(|us| us.saturating_mul(1000));
                first = first.or(st);
                last = st.or(last);
            }
            Ok((n, first, last))
        }
    }
}

fn stats(root: &Path, only: Option<Format>, out: &mut impl Write) -> Result<(), CliError> {
    let mut p = Progress::new();
    let mut any = false;
    for format in Format::ALL {
        if only.is_some_and(|o| o != format) || !root.join(format.dir_name()).is_dir() {
            continue;
        }
        any = true;
        let segs = all_segments(root, format)?;
        let total = segs.len();
        let mut per: BTreeMap<(u32, &'static str), StreamStats> = BTreeMap::new();
        // epoch -> gap records
        let mut gaps: BTreeMap<u64, Vec<Record>> = BTreeMap::new();
        let mut epochs: BTreeMap<u64, u64> = BTreeMap::new();
        for (i, seg) in segs.iter().enumerate() {
            p.tick(|| format!("stats {}: {i}/{total} files", format.dir_name()));
            let (n, first, last) = file_summary(format, &seg.path)?;
            let mut bytes = std::fs::metadata(&seg.path).map_or(0, |m| m.len());
            if format == Format::Binary {
                for side in ["crc", "strings"] {
                    bytes +=
                        std::fs::metadata(sidecar_path(&seg.path, side)).map_or(0, |m| m.len());
                }
            }
            *epochs.entry(seg.key.epoch).or_default() += n;
            let s = per
                .entry((seg.key.instrument_id, seg.key.stream.name()))
                .or_default();
            s.files += 1;
            s.records += n;
            s.bytes += bytes;
            s.first_ns = match (s.first_ns, first) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            s.last_ns = match (s.last_ns, last) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            if seg.key.stream == Stream::System {
                let recs = match format {
                    // A file just created (its header not written yet) holds nothing.
                    Format::Binary if n == 0 => Vec::new(),
                    Format::Binary => BinarySegment::read(&seg.path)?.records,
                    Format::Jsonl => {
                        let j = JsonlSegment::read(&seg.path)?;
                        j.lines()
                            .filter_map(|l| tickjson::decode(l, &mut LocalStrings::default()).ok())
                            .collect()
                    }
                };
                gaps.entry(seg.key.epoch).or_default().extend(
                    recs.into_iter()
                        .filter(|r| r.kind() == Some(RecordKind::Gap)),
                );
            }
        }
        let f = format.dir_name();
        writeln!(out, "{f}: {total} files")?;
        writeln!(
            out,
            "{:<6} {:>10} {:<10} {:>6} {:>12} {:>14}  {:<30} {:<30}",
            "format", "conId", "kind", "files", "records", "bytes", "first", "last"
        )?;
        for ((cid, kind), s) in &per {
            writeln!(
                out,
                "{f:<6} {cid:>10} {kind:<10} {:>6} {:>12} {:>14}  {:<30} {:<30}",
                s.files,
                s.records,
                s.bytes,
                fmt_ts(s.first_ns),
                fmt_ts(s.last_ns)
            )?;
        }
        for (epoch, n) in &epochs {
            let g = gaps.get(epoch).map_or(&[][..], Vec::as_slice);
            writeln!(
                out,
                "{f}: epoch {epoch:016x}: {n} records, {} gaps",
                g.len()
            )?;
            let mut line = Vec::new();
            for r in g {
                line.clear();
                tickjson::encode(r, &tickjson::NoStrings, &mut line);
                writeln!(out, "{f}:   gap {}", String::from_utf8_lossy(&line))?;
            }
        }
    }
    if !any {
        writeln!(out, "no data under {}", root.display())?;
    }
    Ok(())
}

/// The CSV header of `storage export --format csv`; see docs/STORAGE.md for which columns
/// each kind fills.
pub const CSV_HEADER: &str = "ts_recv_ns,ts_event_ns,seq,con_id,kind,price,size,bid_price,bid_size,ask_price,ask_size,exchange,conditions,field,value,flags";

fn csv_text(out: &mut Vec<u8>, s: &[u8]) {
    if s.iter().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.push(b'"');
        for &b in s {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(s);
    }
}

/// One record as a CSV row (no newline).
pub fn csv_row(r: &Record, strings: &dyn StringLookup, out: &mut Vec<u8>) {
    let f = TickFields::of(r, strings);
    let num = |out: &mut Vec<u8>, v: Option<i64>, scale: i64| {
        out.push(b',');
        if let Some(v) = v {
            write_fixed(out, v, scale);
        }
    };
    let text = |out: &mut Vec<u8>, t: Option<&[u8]>| {
        out.push(b',');
        if let Some(t) = t {
            csv_text(out, t);
        }
    };
    out.extend_from_slice(f.ts_recv.to_string().as_bytes());
    out.push(b',');
    if let Some(t) = f.ts_event {
        out.extend_from_slice(t.to_string().as_bytes());
    }
    out.extend_from_slice(format!(",{},{},", r.seq, r.instrument_id).as_bytes());
    out.extend_from_slice(f.kind.as_bytes());
    num(out, f.price, PRICE_SCALE);
    num(out, f.size, SIZE_SCALE);
    num(out, f.bid_price, PRICE_SCALE);
    num(out, f.bid_size, SIZE_SCALE);
    num(out, f.ask_price, PRICE_SCALE);
    num(out, f.ask_size, SIZE_SCALE);
    text(out, f.exchange);
    text(out, f.conditions);
    out.push(b',');
    if let Some(t) = f.field {
        out.extend_from_slice(t.to_string().as_bytes());
    }
    match &f.value {
        None => out.push(b','),
        Some(TickValue::Fixed(v)) => num(out, Some(*v), PRICE_SCALE),
        Some(TickValue::Text(t)) => text(out, Some(t)),
        Some(TickValue::Json(j)) => text(out, Some(j)),
    }
    out.push(b',');
    out.extend_from_slice(f.flags.as_slice().join("|").as_bytes());
}

/// Damaged parts `export --skip-bad` names one by one (the rest are counted).
const MAX_SKIP_REPORTS: u64 = 100;

/// What `storage export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExportFormat {
    Jsonl,
    Csv,
    Parquet,
}

fn create_out(path: &Path) -> Result<BufWriter<std::fs::File>, CliError> {
    let f = std::fs::File::create(path)
        .map_err(|e| CliError::Usage(format!("--out {}: {e}", path.display())))?;
    Ok(BufWriter::with_capacity(256 * 1024, f))
}

/// `storage export` to `stdout` or `--out`.
fn export(root: &Path, a: &ExportArgs, stdout: &mut impl Write) -> Result<(), CliError> {
    let format = match a.format.as_str() {
        "jsonl" | "json" => ExportFormat::Jsonl,
        "csv" => ExportFormat::Csv,
        "parquet" if a.out.is_none() => {
            return Err(CliError::Usage(
                "--format parquet writes a file: give --out FILE".into(),
            ));
        }
        "parquet" => ExportFormat::Parquet,
        other => {
            return Err(CliError::Usage(format!(
                "--format {other}: expected jsonl, csv or parquet"
            )));
        }
    };
    let kinds = a.kinds.join(",");
    let text = QueryText {
        kinds: Some(&kinds),
        start: a.start.as_deref(),
        end: a.end.as_deref(),
        duration: a.duration.as_deref(),
        tz: Some(&a.tz),
        limit: a.limit,
        after: a.after.as_deref(),
    };
    let q = Query {
        format: a.from,
        ..Query::from_text(a.con_id, &text, super::now_ns())?
    };
    let mut it = QueryIter::new(root, &q)?;
    let mut buf = Vec::with_capacity(64 * 1024);
    // Parquet writes its own file; text goes to --out or standard output.
    let (mut parquet, mut file) = match (format, &a.out) {
        (ExportFormat::Parquet, Some(path)) => (
            Some(ParquetSink::new(
                create_out(path)?,
                tick_schema(),
                TickColumns::default(),
            )?),
            None,
        ),
        (_, Some(path)) => (None, Some(create_out(path)?)),
        (_, None) => (None, None),
    };
    let out: &mut dyn Write = match &mut file {
        Some(f) => f,
        None => stdout,
    };
    if format == ExportFormat::Csv {
        buf.extend_from_slice(CSV_HEADER.as_bytes());
        buf.push(b'\n');
    }
    let mut p = Progress::new();
    let mut n = 0u64;
    let mut skipped = 0u64;
    loop {
        let next = match (format, &mut parquet) {
            (ExportFormat::Parquet, Some(pq)) => it.next_record().inspect(|r| {
                if let Some(r) = r {
                    pq.columns().push(r, it.strings());
                }
            }),
            (ExportFormat::Csv, _) => it.next_record().inspect(|r| {
                if let Some(r) = r {
                    csv_row(r, it.strings(), &mut buf);
                }
            }),
            _ => it.next_json(&mut buf),
        };
        let rec = match next {
            Ok(r) => r,
            Err(QueryError::Damaged(d)) if a.skip_bad => {
                skipped += 1;
                if skipped <= MAX_SKIP_REPORTS {
                    eprintln!("export: skipped {d}");
                }
                continue;
            }
            Err(e @ QueryError::Damaged(_)) => {
                // What came before the damage is good: write it, then fail.
                if let Some(pq) = parquet.take() {
                    pq.close()?.flush()?;
                }
                out.write_all(&buf)?;
                out.flush()?;
                eprintln!("export: {e}");
                eprintln!(
                    "export: stopped ({n} records written); --skip-bad skips damaged parts and reports them"
                );
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        if rec.is_none() {
            break;
        }
        n += 1;
        if let Some(pq) = &mut parquet {
            pq.flush_full()?;
            if n.is_multiple_of(65_536) {
                p.tick(|| format!("export: {n} records"));
            }
            continue;
        }
        buf.push(b'\n');
        if buf.len() >= 60 * 1024 {
            out.write_all(&buf)?;
            buf.clear();
            p.tick(|| format!("export: {n} records"));
        }
    }
    if let Some(pq) = parquet.take() {
        pq.close()?.flush()?;
    }
    out.write_all(&buf)?;
    out.flush()?;
    if skipped > 0 {
        if skipped > MAX_SKIP_REPORTS {
            eprintln!(
                "export: ... {} more damaged parts",
                skipped - MAX_SKIP_REPORTS
            );
        }
        eprintln!("export: {n} records written, {skipped} damaged parts skipped");
    }
    if a.limit.is_some_and(|l| n == l)
        && let Some(c) = it.cursor()
    {
        eprintln!("next page: --after {c}");
    }
    Ok(())
}
