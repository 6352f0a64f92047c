//! Where recorded data lives:
//! `<root>/<format>/YYYY/MM/DD/HH/<conId>_<tick_type>_<epoch>.<ext>`.
//!
//! `<format>` is `jsonl` or `binary`; the hour is the UTC hour of the records' `ts_recv`;
//! `<tick_type>` is [`RecordKind::name`] for market data and `system` (with conId 0) for the
//! gap, connection, subscription and heartbeat records; `<epoch>` is the ring writer's epoch
//! as 16 lowercase hex digits (sequence numbers are unique within one epoch).

use std::path::{Path, PathBuf};

use ib_stream_ipc::{Record, RecordKind};

use super::StorageError;

/// Nanoseconds in one hour.
pub const HOUR_NS: i64 = 3_600_000_000_000;

/// A storage format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// Compact JSON Lines (`.jsonl`).
    Jsonl,
    /// 64-byte binary records (`.bin`, with `.crc` and `.strings` sidecars).
    Binary,
}

impl Format {
    /// Both formats.
    pub const ALL: [Format; 2] = [Format::Jsonl, Format::Binary];

    /// The directory under the storage root (also the name in configuration and status).
    pub fn dir_name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Binary => "binary",
        }
    }

    /// The data file extension.
    pub fn ext(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Binary => "bin",
        }
    }

    /// The format of a directory name.
    pub fn from_dir_name(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.dir_name() == s)
    }
}

/// What a segment holds: one market-data kind of one instrument, or the system records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Market data of this kind (file name `<conId>_<kind name>_...`).
    Kind(RecordKind),
    /// Gap, connection, subscription and heartbeat records (file name `0_system_...`).
    System,
}

impl PartialOrd for Stream {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Stream {
    /// By kind byte; system (0) first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.header_byte().cmp(&other.header_byte())
    }
}

impl Stream {
    /// The stream a record belongs to; `None` for a kind this build does not know.
    pub fn of(rec: &Record) -> Option<Stream> {
        let kind = rec.kind()?;
        Some(if kind.is_market_data() {
            Stream::Kind(kind)
        } else {
            Stream::System
        })
    }

    /// The name used in file names.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Kind(k) => k.name(),
            Stream::System => "system",
        }
    }

    /// The stream of a file-name part.
    pub fn from_name(s: &str) -> Option<Stream> {
        if s == "system" {
            return Some(Stream::System);
        }
        RecordKind::from_name(s)
            .filter(|k| k.is_market_data())
            .map(Stream::Kind)
    }

    /// True when `rec` belongs in a segment of this stream.
    pub fn accepts(self, rec: &Record) -> bool {
        Stream::of(rec) == Some(self)
    }

    /// The kind byte stored in binary headers (0 for system segments).
    pub fn header_byte(self) -> u8 {
        match self {
            Stream::Kind(k) => k as u8,
            Stream::System => 0,
        }
    }
}

/// Identifies one segment file (of either format).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentKey {
    /// Start of the UTC hour, ns since the Unix epoch.
    pub hour_start_ns: i64,
    /// IB conId (0 for system segments).
    pub instrument_id: u32,
    /// What the segment holds.
    pub stream: Stream,
    /// The ring writer epoch.
    pub epoch: u64,
}

impl SegmentKey {
    /// The segment `rec` (read from the ring of `epoch`) is stored in.
    pub fn for_record(rec: &Record, epoch: u64) -> Option<SegmentKey> {
        let stream = Stream::of(rec)?;
        Some(SegmentKey {
            hour_start_ns: hour_start(rec.ts_recv),
            instrument_id: match stream {
                Stream::System => 0,
                Stream::Kind(_) => rec.instrument_id,
            },
            stream,
            epoch,
        })
    }

    /// The file name without directory: `<conId>_<tt>_<epoch>.<ext>`.
    pub fn file_name(&self, format: Format) -> String {
        format!(
            "{}_{}_{:016x}.{}",
            self.instrument_id,
            self.stream.name(),
            self.epoch,
            format.ext()
        )
    }

    /// The data file's full path under `root`.
    pub fn path(&self, root: &Path, format: Format) -> PathBuf {
        hour_dir(root, format, self.hour_start_ns).join(self.file_name(format))
    }

    /// Parses a data file path `.../<format>/YYYY/MM/DD/HH/<name>` back into its format and key.
    pub fn parse_path(path: &Path) -> Option<(Format, SegmentKey)> {
        let name = path.file_name()?.to_str()?;
        let mut dirs = path.ancestors().skip(1).map(|p| p.file_name()?.to_str());
        let hh = dirs.next()??;
        let dd = dirs.next()??;
        let mm = dirs.next()??;
        let yyyy = dirs.next()??;
        let format = Format::from_dir_name(dirs.next()??)?;
        let hour_start_ns = hour_from_parts(yyyy, mm, dd, hh)?;
        let key = Self::parse_name(name, format, hour_start_ns)?;
        Some((format, key))
    }

    /// Parses a data file name of `format` in the hour starting at `hour_start_ns`.
    pub fn parse_name(name: &str, format: Format, hour_start_ns: i64) -> Option<SegmentKey> {
        let stem = name.strip_suffix(format.ext())?.strip_suffix('.')?;
        let (cid, rest) = stem.split_once('_')?;
        let (tt, epoch) = rest.rsplit_once('_')?;
        if epoch.len() != 16 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let stream = Stream::from_name(tt)?;
        let instrument_id: u32 = cid.parse().ok()?;
        if stream == Stream::System && instrument_id != 0 {
            return None;
        }
        Some(SegmentKey {
            hour_start_ns,
            instrument_id,
            stream,
            epoch: u64::from_str_radix(epoch, 16).ok()?,
        })
    }
}

/// The start of the UTC hour holding `ts_ns`.
pub fn hour_start(ts_ns: i64) -> i64 {
    ts_ns.div_euclid(HOUR_NS) * HOUR_NS
}

pub use ib_stream_tws::civil::{civil_from_days, days_from_civil};

/// The relative directory of an hour: `YYYY/MM/DD/HH`.
pub fn hour_rel_dir(hour_start_ns: i64) -> String {
    let hours = hour_start_ns.div_euclid(HOUR_NS);
    let (y, m, d) = civil_from_days(hours.div_euclid(24));
    format!("{y:04}/{m:02}/{d:02}/{:02}", hours.rem_euclid(24))
}

/// `<root>/<format>/YYYY/MM/DD/HH`.
pub fn hour_dir(root: &Path, format: Format, hour_start_ns: i64) -> PathBuf {
    root.join(format.dir_name())
        .join(hour_rel_dir(hour_start_ns))
}

fn hour_from_parts(yyyy: &str, mm: &str, dd: &str, hh: &str) -> Option<i64> {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(yyyy, 4) && digits(mm, 2) && digits(dd, 2) && digits(hh, 2)) {
        return None;
    }
    let (y, m, d, h): (i64, u32, u32, i64) = (
        yyyy.parse().ok()?,
        mm.parse().ok()?,
        dd.parse().ok()?,
        hh.parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    if civil_from_days(days) != (y, m, d) {
        return None;
    }
    Some((days * 24 + h) * HOUR_NS)
}

fn sorted_subdirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, StorageError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StorageError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(dir, e))?;
        let is_dir = entry
            .file_type()
            .map_err(|e| StorageError::io(entry.path(), e))?
            .is_dir();
        if is_dir && let Some(name) = entry.file_name().to_str() {
            out.push((name.to_owned(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Every hour directory of `format` under `root`, oldest first, as `(hour_start_ns, path)`.
/// Directories whose names are not a valid `YYYY/MM/DD/HH` are ignored.
pub fn hour_dirs(root: &Path, format: Format) -> Result<Vec<(i64, PathBuf)>, StorageError> {
    let mut out = Vec::new();
    for (y, yp) in sorted_subdirs(&root.join(format.dir_name()))? {
        for (m, mp) in sorted_subdirs(&yp)? {
            for (d, dp) in sorted_subdirs(&mp)? {
                for (h, hp) in sorted_subdirs(&dp)? {
                    if let Some(ns) = hour_from_parts(&y, &m, &d, &h) {
                        out.push((ns, hp));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// One segment found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    /// Its format.
    pub format: Format,
    /// Its key.
    pub key: SegmentKey,
    /// The data file.
    pub path: PathBuf,
}

/// The segments of `format` in the hours `from_hour_ns..=to_hour_ns` (inclusive bounds on the
/// hour start), sorted by key. Files that are not data files of the format are skipped.
pub fn list_segments(
    root: &Path,
    format: Format,
    from_hour_ns: i64,
    to_hour_ns: i64,
) -> Result<Vec<SegmentFile>, StorageError> {
    let mut out = Vec::new();
    for (hour, dir) in hour_dirs(root, format)? {
        if hour < from_hour_ns || hour > to_hour_ns {
            continue;
        }
        let entries = std::fs::read_dir(&dir).map_err(|e| StorageError::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io(&dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if let Some(key) = SegmentKey::parse_name(&name, format, hour) {
                out.push(SegmentFile {
                    format,
                    key,
                    path: entry.path(),
                });
            }
        }
    }
    out.sort_by_key(|s| s.key);
    Ok(out)
}

/// Every segment of `format` under `root`.
pub fn all_segments(root: &Path, format: Format) -> Result<Vec<SegmentFile>, StorageError> {
    list_segments(root, format, i64::MIN, i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn path_round_trip() {
        let key = SegmentKey {
            hour_start_ns: hour_start(1_763_800_000_123_456_789),
            instrument_id: 711_280_073,
            stream: Stream::Kind(RecordKind::TbtAllLast),
            epoch: 0x00ab_cdef_0123_4567,
        };
        let p = key.path(Path::new("/s"), Format::Binary);
        assert_eq!(
            p,
            Path::new("/s/binary/2025/11/22/08/711280073_all_last_00abcdef01234567.bin")
        );
        assert_eq!(SegmentKey::parse_path(&p), Some((Format::Binary, key)));
        let sys = SegmentKey {
            instrument_id: 0,
            stream: Stream::System,
            ..key
        };
        let p = sys.path(Path::new("/s"), Format::Jsonl);
        assert!(p.ends_with("0_system_00abcdef01234567.jsonl"));
        assert_eq!(SegmentKey::parse_path(&p), Some((Format::Jsonl, sys)));
        assert_eq!(
            SegmentKey::parse_name("5_system_00abcdef01234567.bin", Format::Binary, 0),
            None
        );
        assert_eq!(
            SegmentKey::parse_name("5_heartbeat_00abcdef01234567.bin", Format::Binary, 0),
            None,
            "system kinds only live in system segments"
        );
    }

    proptest! {
        #[test]
        fn civil_days_round_trip(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }

        #[test]
        fn hour_dir_parses_back(ts in 0i64..4_102_444_800_000_000_000) {
            let h = hour_start(ts);
            let rel = hour_rel_dir(h);
            let parts: Vec<&str> = rel.split('/').collect();
            prop_assert_eq!(hour_from_parts(parts[0], parts[1], parts[2], parts[3]), Some(h));
        }
    }
}
