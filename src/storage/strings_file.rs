//! The `.strings` sidecar of a binary segment: the interned strings its records refer to, so
//! that a binary segment is readable without the ring's string table.
//!
//! Layout (little-endian): a 16-byte header, `magic` = `"IBSSTRF1"` then the ring `epoch`
//! (`u64`), followed by entries `id: u32, len: u32, crc: u32, bytes[len]` where `crc` is the
//! CRC-32 (IEEE) of the id, len and bytes. An entry is appended (and flushed before the
//! records that use it) the first time a record of the segment refers to the id. A torn or
//! damaged entry ends the valid part of the file; repair truncates there.

use std::collections::HashMap;
use std::path::Path;

use crate::tickjson::StringLookup;

use super::StorageError;

/// First 8 bytes of a strings sidecar.
pub const STRINGS_FILE_MAGIC: [u8; 8] = *b"IBSSTRF1";
/// Header length.
pub const STRINGS_FILE_HEADER_LEN: usize = 16;
/// Longest string an entry may hold (the ring's table limit is far below this).
pub const MAX_STRING_LEN: u32 = 1 << 20;

/// The header of a new sidecar for `epoch`.
pub fn header(epoch: u64) -> [u8; STRINGS_FILE_HEADER_LEN] {
    let mut h = [0u8; STRINGS_FILE_HEADER_LEN];
    h[..8].copy_from_slice(&STRINGS_FILE_MAGIC);
    h[8..].copy_from_slice(&epoch.to_le_bytes());
    h
}

fn entry_crc(id: u32, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&id.to_le_bytes());
    h.update(&(bytes.len() as u32).to_le_bytes());
    h.update(bytes);
    h.finalize()
}

/// Appends one entry to `out`.
pub fn append_entry(out: &mut Vec<u8>, id: u32, bytes: &[u8]) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&entry_crc(id, bytes).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The strings of one sidecar.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileStrings {
    /// The epoch in the header.
    pub epoch: u64,
    /// Id to bytes.
    pub strings: HashMap<u32, Vec<u8>>,
    /// Length of the valid part (header plus whole, intact entries).
    pub valid_len: u64,
    /// Bytes after the valid part (a torn or damaged tail).
    pub trailing_garbage: u64,
}

impl StringLookup for FileStrings {
    fn lookup(&self, id: u32) -> Option<&[u8]> {
        if id == 0 {
            return Some(&[]);
        }
        self.strings.get(&id).map(Vec::as_slice)
    }
}

/// Parses a sidecar's bytes. A bad header is an error; a bad entry ends the valid part.
pub fn parse(bytes: &[u8], path: &Path) -> Result<FileStrings, StorageError> {
    if bytes.len() < STRINGS_FILE_HEADER_LEN {
        return Err(StorageError::corrupt(
            path,
            format!("strings sidecar of {} bytes has no header", bytes.len()),
        ));
    }
    if bytes[..8] != STRINGS_FILE_MAGIC {
        return Err(StorageError::corrupt(
            path,
            "not a strings sidecar (bad magic)",
        ));
    }
    let mut out = FileStrings {
        epoch: u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default()),
        ..FileStrings::default()
    };
    let mut at = STRINGS_FILE_HEADER_LEN;
    while bytes.len() - at >= 12 {
        let word =
            |i: usize| u32::from_le_bytes(bytes[at + i..at + i + 4].try_into().unwrap_or_default());
        let (id, len, crc) = (word(0), word(4), word(8));
        let end = at + 12 + len as usize;
        if len > MAX_STRING_LEN || end > bytes.len() {
            break;
        }
        let s = &bytes[at + 12..end];
        if entry_crc(id, s) != crc {
            break;
        }
        out.strings.insert(id, s.to_vec());
        at = end;
    }
    out.valid_len = at as u64;
    out.trailing_garbage = (bytes.len() - at) as u64;
    Ok(out)
}

/// Reads the sidecar at `path`; a missing file is an empty table (no strings were needed).
pub fn read(path: &Path) -> Result<Option<FileStrings>, StorageError> {
    match std::fs::read(path) {
        Ok(b) => parse(&b, path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn entries_round_trip_and_any_truncation_keeps_a_prefix(
            entries in proptest::collection::vec((1u32..1000, proptest::collection::vec(any::<u8>(), 0..40)), 0..20),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut b = header(77).to_vec();
            let mut ends = vec![b.len()];
            for (id, s) in &entries {
                append_entry(&mut b, *id, s);
                ends.push(b.len());
            }
            let p = Path::new("x.strings");
            let full = parse(&b, p).unwrap();
            prop_assert_eq!(full.epoch, 77);
            prop_assert_eq!(full.valid_len as usize, b.len());
            for (id, s) in &entries {
                // Later entries of the same id win, like a reader replaying the file.
                let last = entries.iter().rev().find(|(i, _)| i == id).map(|(_, s)| s).unwrap();
                prop_assert_eq!(full.lookup(*id), Some(&last[..]));
                let _ = s;
            }
            let at = STRINGS_FILE_HEADER_LEN + cut.index(b.len() - STRINGS_FILE_HEADER_LEN + 1);
            let part = parse(&b[..at], p).unwrap();
            let expect = *ends.iter().rev().find(|&&e| e <= at).unwrap();
            prop_assert_eq!(part.valid_len as usize, expect);
            prop_assert_eq!(part.trailing_garbage as usize, at - expect);
        }
    }

    #[test]
    fn damaged_entry_ends_the_valid_part() {
        let mut b = header(1).to_vec();
        append_entry(&mut b, 1, b"NASDAQ");
        let good = b.len();
        append_entry(&mut b, 2, b"NYSE");
        let last = b.len() - 1;
        b[last] ^= 0x20;
        let f = parse(&b, Path::new("x")).unwrap();
        assert_eq!(f.valid_len as usize, good);
        assert_eq!(f.lookup(1), Some(&b"NASDAQ"[..]));
        assert_eq!(f.lookup(2), None);
        assert!(parse(b"IBSSTRF", Path::new("x")).is_err());
    }
}
