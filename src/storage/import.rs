//! Importing the original IB-Stream's history: its v3 JSON Lines (`.jsonl`) and its v3
//! protobuf files (`.pb`: `TickMessage` records each behind a 4-byte big-endian length).
//!
//! Mapping (docs/STORAGE.md, "Importing"): `tt` names are ours already (`bid_ask`, `last`,
//! `all_last`, `mid_point`); `st` (system time, µs) becomes `ts_recv`, `ts` (IB time, µs)
//! `ts_event` (absent or 0: undefined); prices and sizes, doubles in the original, become
//! fixed point through their shortest decimal text (what Python wrote); `bpl`, `aph`, `upt`
//! become flags; `rid` is dropped; exchange and conditions were never stored and stay empty.
//!
//! The original has no sequence numbers. Each source file is imported as its own epoch,
//! [`import_epoch`] of its bytes (`0x494d` "IM" in the top 16 bits, the low 48 bits of the
//! FNV-1a hash of the content), with sequences 1..=N in file order. Ring epochs are random
//! 64-bit numbers, so they do not collide in practice, and importing the same file again is
//! detected (its epoch is already stored) and skipped rather than duplicated.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ib_stream_ipc::{PRICE_SCALE, Record, RecordKind, SIZE_SCALE, UNDEF_I64, flags};

use super::StorageError;
use super::binary::BinarySegmentWriter;
use super::jsonl::JsonlSegmentWriter;
use super::layout::{Format, SegmentKey, all_segments};
use crate::tickjson::{NoStrings, parse_fixed};
use crate::tws::proto::{Reader, Value};

/// Top 16 bits of every import epoch (`"IM"`).
pub const IMPORT_EPOCH_TAG: u64 = 0x494d << 48;

/// Staged bytes per writer before a flush (keeps an import's memory bounded).
const FLUSH_BYTES: usize = 4 << 20;

/// The original's file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    /// v3 JSON Lines (`{"ts":..,"st":..,"cid":..,"tt":..,"rid":..,...}`).
    V3Json,
    /// v3 protobuf, each `TickMessage` behind a 4-byte big-endian length.
    V3Protobuf,
}

impl SourceFormat {
    /// By file extension: `.jsonl`/`.json` or `.pb`.
    pub fn of_path(path: &Path) -> Option<SourceFormat> {
        match path.extension()?.to_str()? {
            "jsonl" | "json" => Some(SourceFormat::V3Json),
            "pb" => Some(SourceFormat::V3Protobuf),
            _ => None,
        }
    }
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Reading the source or writing the store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A source file whose format is neither v3 JSON nor v3 protobuf.
    #[error("{0}: not a v3 .jsonl or .pb file")]
    UnknownFormat(PathBuf),
    /// A write to the store failed.
    #[error("{path}: write failed: {source}")]
    Write {
        /// The segment.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// One record of a source file that could not be imported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The source file.
    pub path: PathBuf,
    /// Line number (JSON, from 1) or byte offset of the length prefix (protobuf).
    pub at: String,
    /// What is wrong with it.
    pub what: String,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Source files imported.
    pub files: u64,
    /// Source files skipped because their epoch is already stored.
    pub already_imported: Vec<PathBuf>,
    /// Records written (per format).
    pub records: u64,
    /// Records that could not be imported (all of them counted, the first 100 kept).
    pub rejected: u64,
    /// The first rejected records.
    pub rejected_examples: Vec<Rejected>,
    /// Epoch given to each imported file.
    pub epochs: Vec<(PathBuf, u64)>,
}

/// Options of an import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Formats to write (both by default).
    pub formats: Vec<Format>,
    /// Force the source format instead of going by extension.
    pub source_format: Option<SourceFormat>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            formats: Format::ALL.to_vec(),
            source_format: None,
        }
    }
}

/// The epoch of a source file's content (see the module documentation).
pub fn import_epoch(content: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in content {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    IMPORT_EPOCH_TAG | (h & 0xffff_ffff_ffff)
}

/// Every source file under `paths` (files as given, directories walked, sorted), those with
/// a v3 extension when walking.
pub fn source_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, StorageError> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), StorageError> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| StorageError::io(dir, e))?
            .map(|e| e.map(|e| e.path()).map_err(|e| StorageError::io(dir, e)))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if SourceFormat::of_path(&p).is_some() {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// A double as fixed point: exact through its shortest decimal text, else rounded.
fn fixed(v: f64, scale: i64) -> i64 {
    if !v.is_finite() {
        return UNDEF_I64;
    }
    parse_fixed(&format!("{v}"), scale).unwrap_or_else(|| (v * scale as f64).round() as i64)
}

/// One original tick, whichever file it came from.
#[derive(Debug, Default)]
struct V3Tick {
    ts: Option<i64>,
    st: Option<i64>,
    cid: Option<i64>,
    tt: Option<String>,
    p: Option<f64>,
    s: Option<f64>,
    bp: Option<f64>,
    bs: Option<f64>,
    ap: Option<f64>,
    as_: Option<f64>,
    mp: Option<f64>,
    bpl: bool,
    aph: bool,
    upt: bool,
}

impl V3Tick {
    fn into_record(self) -> Result<Record, String> {
        let tt = self.tt.ok_or("no tt")?;
        let kind = RecordKind::from_name(&tt)
            .filter(|k| {
                matches!(
                    k,
                    RecordKind::TbtLast
                        | RecordKind::TbtAllLast
                        | RecordKind::TbtBidAsk
                        | RecordKind::TbtMidPoint
                )
            })
            .ok_or_else(|| format!("unknown tt {tt:?}"))?;
        let st = self.st.ok_or("no st")?;
        let cid = self.cid.ok_or("no cid")?;
        let mut rec = Record::new(kind);
        rec.ts_recv = st.checked_mul(1000).ok_or("st out of range")?;
        rec.ts_event = match self.ts {
            None | Some(0) => UNDEF_I64,
            Some(ts) => ts.checked_mul(1000).ok_or("ts out of range")?,
        };
        rec.instrument_id = u32::try_from(cid).map_err(|_| format!("bad cid {cid}"))?;
        let px = |v: Option<f64>| v.map_or(UNDEF_I64, |v| fixed(v, PRICE_SCALE));
        let sz = |v: Option<f64>| v.map_or(UNDEF_I64, |v| fixed(v, SIZE_SCALE));
        match kind {
            RecordKind::TbtLast | RecordKind::TbtAllLast => {
                rec.body = [px(self.p), sz(self.s), 0, 0];
                if self.upt {
                    rec.flags |= flags::UNREPORTED;
                }
            }
            RecordKind::TbtBidAsk => {
                rec.body = [px(self.bp), px(self.ap), sz(self.bs), sz(self.as_)];
                if self.bpl {
                    rec.flags |= flags::BID_PAST_LOW;
                }
                if self.aph {
                    rec.flags |= flags::ASK_PAST_HIGH;
                }
            }
            _ => rec.body = [px(self.mp), 0, 0, 0],
        }
        Ok(rec)
    }
}

fn parse_json_line(line: &[u8]) -> Result<V3Tick, String> {
    let v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let int = |k: &str| -> Result<Option<i64>, String> {
        match v.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(x) => x
                .as_i64()
                .or_else(|| x.as_f64().map(|f| f as i64))
                .map(Some)
                .ok_or_else(|| format!("{k} is not a number")),
        }
    };
    let num = |k: &str| -> Result<Option<f64>, String> {
        match v.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("{k} is not a number")),
        }
    };
    let flag = |k: &str| matches!(v.get(k), Some(serde_json::Value::Bool(true)));
    Ok(V3Tick {
        ts: int("ts")?,
        st: int("st")?,
        cid: int("cid")?,
        tt: v.get("tt").and_then(|t| t.as_str()).map(str::to_string),
        p: num("p")?,
        s: num("s")?,
        bp: num("bp")?,
        bs: num("bs")?,
        ap: num("ap")?,
        as_: num("as")?,
        mp: num("mp")?,
        bpl: flag("bpl"),
        aph: flag("aph"),
        upt: flag("upt"),
    })
}

fn parse_proto(msg: &[u8]) -> Result<V3Tick, String> {
    let mut t = V3Tick::default();
    let mut r = Reader::new(msg);
    while let Some((field, v)) = r.next_field().map_err(|e| e.to_string())? {
        let d = |v: Value<'_>| {
            v.f64()
                .ok_or_else(|| format!("field {field} is not a double"))
        };
        let i = |v: Value<'_>| {
            v.i64()
                .ok_or_else(|| format!("field {field} is not a varint"))
        };
        match field {
            1 => t.ts = Some(i(v)?),
            2 => t.st = Some(i(v)?),
            3 => t.cid = Some(i64::from(i(v)? as i32)),
            4 => t.tt = Some(v.str().ok_or("tt is not text")?.to_string()),
            5 => {} // rid: the original's request id, meaningless here
            10 => t.p = Some(d(v)?),
            11 => t.s = Some(d(v)?),
            12 => t.bp = Some(d(v)?),
            13 => t.bs = Some(d(v)?),
            14 => t.ap = Some(d(v)?),
            15 => t.as_ = Some(d(v)?),
            16 => t.mp = Some(d(v)?),
            20 => t.bpl = v.bool().unwrap_or(false),
            21 => t.aph = v.bool().unwrap_or(false),
            22 => t.upt = v.bool().unwrap_or(false),
            _ => {} // unknown fields of newer writers are skipped, as protobuf intends
        }
    }
    Ok(t)
}

/// The ticks of one source file with their positions, and the rejected ones.
fn parse_source(
    bytes: &[u8],
    fmt: SourceFormat,
    mut reject: impl FnMut(String, String),
) -> Vec<Record> {
    let mut out = Vec::new();
    match fmt {
        SourceFormat::V3Json => {
            for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match parse_json_line(line).and_then(V3Tick::into_record) {
                    Ok(r) => out.push(r),
                    Err(e) => reject(format!("line {}", i + 1), e),
                }
            }
        }
        SourceFormat::V3Protobuf => {
            let mut at = 0usize;
            while at < bytes.len() {
                let Some(prefix) = bytes.get(at..at + 4) else {
                    reject(
                        format!("byte {at}"),
                        format!("torn length prefix ({} bytes)", bytes.len() - at),
                    );
                    break;
                };
                let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
                let Some(msg) = bytes.get(at + 4..at + 4 + len) else {
                    reject(
                        format!("byte {at}"),
                        format!(
                            "record of {len} bytes, only {} left (torn or not big-endian framing)",
                            bytes.len() - at - 4
                        ),
                    );
                    break;
                };
                match parse_proto(msg).and_then(V3Tick::into_record) {
                    Ok(r) => out.push(r),
                    Err(e) => reject(format!("byte {at}"), e),
                }
                at += 4 + len;
            }
        }
    }
    out
}

enum Writer {
    Binary(Box<BinarySegmentWriter>),
    Jsonl(JsonlSegmentWriter),
}

impl Writer {
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Writer::Binary(w) => w.flush().map(|()| w.commit_window()),
            Writer::Jsonl(w) => w.flush().map(|()| w.commit_window()),
        }
    }
}

/// Imports the original's files under `paths` into the store at `root`. `progress` is called
/// after each file with (files done, files total, records so far).
pub fn import(
    root: &Path,
    paths: &[PathBuf],
    opts: &ImportOptions,
    mut progress: impl FnMut(u64, u64, u64),
) -> Result<ImportReport, ImportError> {
    let files = source_files(paths)?;
    let mut report = ImportReport::default();
    let mut stored_epochs = std::collections::HashSet::new();
    for f in &opts.formats {
        stored_epochs.extend(all_segments(root, *f)?.into_iter().map(|s| s.key.epoch));
    }
    for (n, path) in files.iter().enumerate() {
        let fmt = opts
            .source_format
            .or_else(|| SourceFormat::of_path(path))
            .ok_or_else(|| ImportError::UnknownFormat(path.clone()))?;
        let bytes = std::fs::read(path).map_err(|e| StorageError::io(path, e))?;
        let epoch = import_epoch(&bytes);
        if stored_epochs.contains(&epoch) {
            report.already_imported.push(path.clone());
            continue;
        }
        let mut records = parse_source(&bytes, fmt, |at, what| {
            report.rejected += 1;
            if report.rejected_examples.len() < 100 {
                report.rejected_examples.push(Rejected {
                    path: path.clone(),
                    at,
                    what,
                });
            }
        });
        drop(bytes);
        for (i, r) in records.iter_mut().enumerate() {
            r.seq = i as u64 + 1;
        }
        write_records(root, epoch, &records, &opts.formats)?;
        stored_epochs.insert(epoch);
        report.files += 1;
        report.records += records.len() as u64;
        report.epochs.push((path.clone(), epoch));
        progress(n as u64 + 1, files.len() as u64, report.records);
    }
    Ok(report)
}

/// Writes `records` (sequenced, of `epoch`) through the storage writers of each format.
pub fn write_records(
    root: &Path,
    epoch: u64,
    records: &[Record],
    formats: &[Format],
) -> Result<(), ImportError> {
    write_records_with(root, epoch, records, &NoStrings, formats)
}

/// [`write_records`] for records whose string ids resolve in `strings` (trade exchanges and
/// conditions of backfilled ticks).
pub fn write_records_with(
    root: &Path,
    epoch: u64,
    records: &[Record],
    strings: &dyn crate::tickjson::StringLookup,
    formats: &[Format],
) -> Result<(), ImportError> {
    let now = super::now_ns();
    for &format in formats {
        let mut writers: HashMap<SegmentKey, Writer> = HashMap::new();
        for r in records {
            let Some(key) = SegmentKey::for_record(r, epoch) else {
                continue;
            };
            let w = match writers.entry(key) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(match format {
                    Format::Binary => {
                        Writer::Binary(Box::new(BinarySegmentWriter::open(root, key, now)?))
                    }
                    Format::Jsonl => Writer::Jsonl(JsonlSegmentWriter::open(root, key)?),
                }),
            };
            let staged = match w {
                Writer::Binary(b) => {
                    b.push(r, strings)?;
                    b.staged_bytes()
                }
                Writer::Jsonl(j) => {
                    j.push(r, strings);
                    j.staged_bytes()
                }
            };
            if staged >= FLUSH_BYTES {
                w.flush().map_err(|source| ImportError::Write {
                    path: key.path(root, format),
                    source,
                })?;
            }
        }
        for (key, w) in writers {
            let res = match w {
                Writer::Binary(b) => b.close(true),
                Writer::Jsonl(j) => j.close(true),
            };
            res.map_err(|source| ImportError::Write {
                path: key.path(root, format),
                source,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_become_exact_fixed_point() {
        assert_eq!(fixed(189.25, PRICE_SCALE), 189_250_000_000);
        assert_eq!(fixed(0.1, PRICE_SCALE), 100_000_000);
        assert_eq!(fixed(21000.75, PRICE_SCALE), 21_000_750_000_000);
        assert_eq!(fixed(3.0, SIZE_SCALE), 300_000_000);
        assert_eq!(fixed(f64::NAN, SIZE_SCALE), UNDEF_I64);
    }

    #[test]
    fn epochs_are_tagged_and_content_derived() {
        let a = import_epoch(b"abc");
        assert_eq!(a >> 48, 0x494d);
        assert_eq!(a, import_epoch(b"abc"));
        assert_ne!(a, import_epoch(b"abd"));
    }
}
