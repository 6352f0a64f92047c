//! The JSON Lines format: one [`crate::tickjson::encode`] object per record, `\n` after
//! each, nothing else (no header line: the file name says what the file holds). Strings are
//! written inline, so a file needs nothing beside it. Every line starts with `{"seq":N`, which
//! repair and validation read without decoding the whole line.

use std::path::Path;

use ib_stream_ipc::Record;

use super::StorageError;
use super::append::AppendFile;
use super::layout::{Format, SegmentKey};
use crate::tickjson::{self, LocalStrings, StringLookup};

/// The sequence number at the start of a line written by [`tickjson::encode`].
pub fn line_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let end = rest
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Length of the part of `bytes` that ends with a complete line (`\n`).
pub fn complete_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1)
}

/// Appends records to one JSON Lines segment in flush windows.
#[derive(Debug)]
pub struct JsonlSegmentWriter {
    key: SegmentKey,
    file: AppendFile,
    lines: u64,
}

impl JsonlSegmentWriter {
    /// Opens the segment `key` under `root` to append (creating it), first cutting off a
    /// torn last line.
    pub fn open(root: &Path, key: SegmentKey) -> Result<Self, StorageError> {
        let path = key.path(root, Format::Jsonl);
        let (mut file, _) = AppendFile::open(&path).map_err(|e| StorageError::io(&path, e))?;
        let good = complete_prefix_len(&file).map_err(|e| StorageError::io(&path, e))?;
        if good != file.written_len() {
            file.truncate(good)
                .map_err(|e| StorageError::io(&path, e))?;
        }
        Ok(JsonlSegmentWriter {
            key,
            file,
            lines: 0,
        })
    }

    /// The segment's key.
    pub fn key(&self) -> &SegmentKey {
        &self.key
    }

    /// Lines staged or written through this writer.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Bytes staged for the next flush.
    pub fn staged_bytes(&self) -> usize {
        self.file.staged_len()
    }

    /// Stages one record as a line.
    pub fn push(&mut self, rec: &Record, strings: &dyn StringLookup) {
        let out = self.file.stage();
        tickjson::encode(rec, strings, out);
        out.push(b'\n');
        self.lines += 1;
    }

    /// Writes what is staged.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }

    /// fdatasync when written since the last sync.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync()
    }

    /// Makes everything flushed the base of the next window.
    pub fn commit_window(&mut self) {
        self.file.commit_window();
    }

    /// Truncates the file to the start of the window (removes it when the window created
    /// it) and consumes the writer. Returns the truncation that failed, if any.
    pub fn rollback(self) -> Vec<(std::path::PathBuf, u64)> {
        let (path, base) = (self.file.path().to_path_buf(), self.file.window_base());
        drop(self.file);
        match super::binary::truncate_or_remove(&path, base) {
            Ok(()) => Vec::new(),
            Err(_) => vec![(path, base)],
        }
    }

    /// Flushes and (when asked) syncs.
    pub fn close(mut self, sync: bool) -> std::io::Result<()> {
        self.flush()?;
        if sync {
            self.sync()?;
        }
        Ok(())
    }
}

/// The length of the file up to and including its last `\n`, reading backwards.
fn complete_prefix_len(f: &AppendFile) -> std::io::Result<u64> {
    let len = f.written_len();
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(64 * 1024);
        let chunk = f.read_at(start, (end - start) as usize)?;
        if let Some(p) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + p as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// A JSON Lines segment read into memory.
#[derive(Clone, Debug, Default)]
pub struct JsonlSegment {
    /// The file's bytes up to the last complete line.
    pub bytes: Vec<u8>,
    /// Bytes after the last `\n` (a torn line).
    pub trailing_bytes: u64,
}

impl JsonlSegment {
    /// Reads the file at `path`.
    pub fn read(path: &Path) -> Result<JsonlSegment, StorageError> {
        let mut bytes = std::fs::read(path).map_err(|e| StorageError::io(path, e))?;
        let good = complete_len(&bytes);
        let trailing_bytes = (bytes.len() - good) as u64;
        bytes.truncate(good);
        Ok(JsonlSegment {
            bytes,
            trailing_bytes,
        })
    }

    /// The complete lines, without their `\n`.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.bytes
            .split(|&b| b == b'\n')
            .take(self.bytes.iter().filter(|&&b| b == b'\n').count())
    }

    /// Decodes every line into records, interning strings into `strings`. The first line
    /// that does not decode is an error naming its line number.
    pub fn decode(
        &self,
        path: &Path,
        strings: &mut LocalStrings,
    ) -> Result<Vec<Record>, StorageError> {
        self.lines()
            .enumerate()
            .map(|(i, line)| {
                tickjson::decode(line, strings)
                    .map_err(|e| StorageError::corrupt(path, format!("line {}: {e}", i + 1)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_prefix_and_complete_len() {
        assert_eq!(line_seq(br#"{"seq":42,"st":1}"#), Some(42));
        assert_eq!(line_seq(br#"{"st":1}"#), None);
        assert_eq!(complete_len(b"a\nb\nc"), 4);
        assert_eq!(complete_len(b"abc"), 0);
        let s = JsonlSegment {
            bytes: b"x\ny\n".to_vec(),
            trailing_bytes: 0,
        };
        assert_eq!(s.lines().collect::<Vec<_>>(), vec![&b"x"[..], &b"y"[..]]);
    }
}
