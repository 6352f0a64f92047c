//! Restart repair: cut every segment of one epoch back to what a checkpoint accounts for.
//!
//! After a crash a segment may end in a torn record or line, or hold records written after
//! the last checkpoint (the recorder will read those again from the ring). Both are cut off,
//! so resuming after the checkpoint duplicates nothing. Only the tail of each file is read:
//! binary segments by binary search on `seq`, JSON Lines by scanning back from the end.

use std::os::unix::fs::FileExt;
use std::path::Path;

use ib_stream_ipc::{RECORD_SIZE, Record};

use super::StorageError;
use super::binary::{CRC_BLOCK_RECORDS, HEADER_LEN, sidecar_path, truncate_or_remove};
use super::jsonl::line_seq;
use super::layout::{Format, HOUR_NS, list_segments};
use super::sealed;
use super::strings_file;

/// What a repair changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Segments looked at.
    pub files_checked: u64,
    /// Segments shortened.
    pub files_truncated: u64,
    /// Segments removed (nothing left in them).
    pub files_removed: u64,
    /// Data bytes cut off (records, lines and torn tails).
    pub bytes_removed: u64,
}

/// Cuts every `format` segment of `epoch` in the hours from `from_hour_ns` on back to the
/// records with `seq <= keep_through_seq`, dropping torn tails too.
pub fn truncate_after(
    root: &Path,
    format: Format,
    epoch: u64,
    keep_through_seq: u64,
    from_hour_ns: i64,
) -> Result<RepairReport, StorageError> {
    let mut report = RepairReport::default();
    let from = from_hour_ns.saturating_sub(HOUR_NS);
    for seg in list_segments(root, format, from, i64::MAX)? {
        if seg.key.epoch != epoch {
            continue;
        }
        report.files_checked += 1;
        let (old, new) = match format {
            Format::Binary => repair_binary(&seg.path, keep_through_seq)?,
            Format::Jsonl => repair_jsonl(&seg.path, keep_through_seq)?,
        };
        if new < old {
            report.bytes_removed += old - new;
            if new == 0 {
                report.files_removed += 1;
            } else {
                report.files_truncated += 1;
            }
        }
    }
    Ok(report)
}

/// The highest sequence of `epoch` stored in `format` (whole records and complete lines
/// only), or `None` when nothing of that epoch is stored. Used to resume without a checkpoint.
pub fn stored_through(
    root: &Path,
    format: Format,
    epoch: u64,
) -> Result<Option<u64>, StorageError> {
    let mut best: Option<u64> = None;
    for seg in list_segments(root, format, i64::MIN, i64::MAX)? {
        if seg.key.epoch != epoch {
            continue;
        }
        let path = &seg.path;
        if format == Format::Binary
            && let Some(last) = sealed_last_seq(path)?
        {
            best = Some(best.map_or(last, |b| b.max(last)));
            continue;
        }
        let f = std::fs::File::open(path).map_err(io(path))?;
        let len = f.metadata().map_err(io(path))?.len();
        let last = match format {
            Format::Binary => {
                let n = len.saturating_sub(HEADER_LEN as u64) / RECORD_SIZE as u64;
                if n == 0 {
                    None
                } else {
                    let mut b = [0u8; RECORD_SIZE];
                    f.read_exact_at(&mut b, HEADER_LEN as u64 + (n - 1) * RECORD_SIZE as u64)
                        .map_err(io(path))?;
                    Some(Record::from_bytes_array(&b).seq)
                }
            }
            Format::Jsonl => {
                let start = len.saturating_sub(64 * 1024);
                let mut buf = vec![0u8; (len - start) as usize];
                f.read_exact_at(&mut buf, start).map_err(io(path))?;
                let end = buf.iter().rposition(|&b| b == b'\n');
                end.and_then(|e| {
                    let ls = buf[..e]
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(0, |p| p + 1);
                    line_seq(&buf[ls..e])
                })
            }
        };
        if let Some(l) = last {
            best = Some(best.map_or(l, |b| b.max(l)));
        }
    }
    Ok(best)
}

/// The last sequence of a sealed segment (from its verified index); `None` for a raw one.
fn sealed_last_seq(path: &Path) -> Result<Option<u64>, StorageError> {
    if !sealed::is_sealed(path).map_err(io(path))? {
        return Ok(None);
    }
    let f = std::fs::File::open(path).map_err(io(path))?;
    let ix = sealed::SealedIndex::read(&f, path)?;
    Ok(Some(ix.blocks.last().map_or(0, |b| b.last_seq)))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |e| StorageError::io(path, e)
}

fn remove_binary(path: &Path) -> Result<(), StorageError> {
    for p in [
        path.to_path_buf(),
        sidecar_path(path, "crc"),
        sidecar_path(path, "strings"),
    ] {
        truncate_or_remove(&p, 0).map_err(io(&p))?;
    }
    Ok(())
}

/// Returns (old length, new length) of the data file.
fn repair_binary(path: &Path, keep: u64) -> Result<(u64, u64), StorageError> {
    if let Some(last) = sealed_last_seq(path)? {
        let len = std::fs::metadata(path).map_err(io(path))?.len();
        if last <= keep {
            // Nothing to cut: a sealed segment stays sealed.
            return Ok((len, len));
        }
        // Records past `keep` in a sealed hour: back to the raw form, then cut as usual.
        sealed::unseal_file(path).map_err(|e| match e {
            sealed::SealError::Storage(e) => e,
            sealed::SealError::NotIntact { path, why } => StorageError::corrupt(path, why),
        })?;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    if len < HEADER_LEN as u64 {
        drop(f);
        remove_binary(path)?;
        return Ok((len, 0));
    }
    let n = (len - HEADER_LEN as u64) / RECORD_SIZE as u64;
    let seq_at = |i: u64| -> Result<u64, StorageError> {
        let mut b = [0u8; RECORD_SIZE];
        f.read_exact_at(&mut b, HEADER_LEN as u64 + i * RECORD_SIZE as u64)
            .map_err(io(path))?;
        Ok(Record::from_bytes_array(&b).seq)
    };
    // Records are in seq order: find how many have seq <= keep.
    let (mut lo, mut hi) = (0u64, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if seq_at(mid)? <= keep {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let k = lo;
    if k == 0 {
        drop(f);
        remove_binary(path)?;
        return Ok((len, 0));
    }
    let new_len = HEADER_LEN as u64 + k * RECORD_SIZE as u64;
    if new_len != len {
        f.set_len(new_len).map_err(io(path))?;
    }
    drop(f);
    // Checksums: keep entries of full blocks that are still whole.
    let crc = sidecar_path(path, "crc");
    if let Ok(m) = std::fs::metadata(&crc) {
        let keep_entries = (m.len() / 4).min(k / u64::from(CRC_BLOCK_RECORDS));
        if keep_entries * 4 != m.len() {
            truncate_or_remove(&crc, keep_entries * 4).map_err(io(&crc))?;
        }
    }
    let strings = sidecar_path(path, "strings");
    match std::fs::read(&strings) {
        Ok(b) if b.len() < strings_file::STRINGS_FILE_HEADER_LEN => {
            truncate_or_remove(&strings, 0).map_err(io(&strings))?;
        }
        Ok(b) => {
            let fs = strings_file::parse(&b, &strings)?;
            if fs.trailing_garbage > 0 {
                truncate_or_remove(&strings, fs.valid_len).map_err(io(&strings))?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StorageError::io(strings, e)),
    }
    Ok((len, new_len))
}

/// Returns (old length, new length).
fn repair_jsonl(path: &Path, keep: u64) -> Result<(u64, u64), StorageError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    let mut chunk = 64 * 1024u64;
    let new_len = loop {
        let start = len.saturating_sub(chunk);
        let mut buf = vec![0u8; (len - start) as usize];
        f.read_exact_at(&mut buf, start).map_err(io(path))?;
        // Walk complete lines backwards; the first (possibly partial) line of a chunk that
        // does not start the file is not trusted.
        let mut end = buf.iter().rposition(|&b| b == b'\n').map(|p| p + 1);
        let mut found = None;
        while let Some(e) = end {
            let line_end = e - 1;
            let line_start = buf[..line_end]
                .iter()
                .rposition(|&b| b == b'\n')
                .map(|p| p + 1);
            let Some(ls) = line_start.or((start == 0).then_some(0)) else {
                break;
            };
            if line_seq(&buf[ls..line_end]).is_some_and(|s| s <= keep) {
                found = Some(start + e as u64);
                break;
            }
            end = (ls > 0).then_some(ls);
            if ls == 0 && start == 0 {
                found = Some(0);
                break;
            }
        }
        match found {
            Some(n) => break n,
            None if start == 0 => break 0,
            None => chunk = chunk.saturating_mul(4),
        }
    };
    if new_len != len {
        if new_len == 0 {
            drop(f);
            truncate_or_remove(path, 0).map_err(io(path))?;
        } else {
            f.set_len(new_len).map_err(io(path))?;
        }
    }
    Ok((len, new_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::binary::BinarySegmentWriter;
    use crate::storage::jsonl::JsonlSegmentWriter;
    use crate::storage::layout::{SegmentKey, Stream};
    use crate::tickjson::NoStrings;
    use ib_stream_ipc::RecordKind;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ibs-repair-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn rec(seq: u64) -> Record {
        Record {
            seq,
            ts_recv: 1_000 + seq as i64,
            instrument_id: 3,
            body: [seq as i64, 0, 0, 0],
            ..Record::new(RecordKind::TbtMidPoint)
        }
    }

    #[test]
    fn cuts_records_after_the_checkpoint_and_torn_tails() {
        let root = tmp("cut");
        let key = SegmentKey {
            hour_start_ns: 0,
            instrument_id: 3,
            stream: Stream::Kind(RecordKind::TbtMidPoint),
            epoch: 7,
        };
        let mut b = BinarySegmentWriter::open(&root, key, 0).unwrap();
        let mut j = JsonlSegmentWriter::open(&root, key).unwrap();
        for s in 1..=600 {
            b.push(&rec(s), &NoStrings).unwrap();
            j.push(&rec(s), &NoStrings);
        }
        b.flush().unwrap();
        j.flush().unwrap();
        drop((b, j));
        let bp = key.path(&root, Format::Binary);
        let jp = key.path(&root, Format::Jsonl);
        // A torn tail on each.
        let append = |p: &Path, bytes: &[u8]| {
            let f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
            f.write_all_at(bytes, f.metadata().unwrap().len()).unwrap();
        };
        append(&bp, &[1, 2, 3]);
        append(&jp, b"{\"seq\":601,\"st");
        let r = truncate_after(&root, Format::Binary, 7, 300, 0).unwrap();
        assert_eq!(r.files_truncated, 1);
        let r = truncate_after(&root, Format::Jsonl, 7, 300, 0).unwrap();
        assert_eq!(r.files_truncated, 1);
        let seg = crate::storage::binary::BinarySegment::read(&bp).unwrap();
        assert_eq!(seg.records.len(), 300);
        assert_eq!(seg.trailing_bytes, 0);
        assert_eq!(
            seg.crc_entries.len(),
            1,
            "only the one whole block keeps its entry"
        );
        assert!(seg.verify().bad_blocks.is_empty());
        let js = crate::storage::jsonl::JsonlSegment::read(&jp).unwrap();
        assert_eq!(js.lines().count(), 300);
        assert_eq!(js.trailing_bytes, 0);
        assert_eq!(line_seq(js.lines().last().unwrap()), Some(300));
        assert_eq!(stored_through(&root, Format::Binary, 7).unwrap(), Some(300));
        assert_eq!(stored_through(&root, Format::Jsonl, 7).unwrap(), Some(300));
        assert_eq!(stored_through(&root, Format::Jsonl, 8).unwrap(), None);
        // Another epoch is untouched; cutting to 0 removes the files.
        assert_eq!(
            truncate_after(&root, Format::Binary, 8, 0, 0)
                .unwrap()
                .files_checked,
            0
        );
        let r = truncate_after(&root, Format::Binary, 7, 0, 0).unwrap();
        assert_eq!(r.files_removed, 1);
        assert!(!bp.exists() && !sidecar_path(&bp, "crc").exists());
        // Reopening a cut segment appends cleanly after it.
        let mut j = JsonlSegmentWriter::open(&root, key).unwrap();
        j.push(&rec(301), &NoStrings);
        j.flush().unwrap();
        let js = crate::storage::jsonl::JsonlSegment::read(&jp).unwrap();
        assert_eq!(line_seq(js.lines().last().unwrap()), Some(301));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
