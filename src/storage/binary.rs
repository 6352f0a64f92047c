//! The binary format: the ring's 64-byte records, unchanged, behind a 64-byte header.
//!
//! `X.bin` = [`BinaryHeader`] (64 bytes) then records, so record `i` sits at `64 + 64 * i`
//! and a mapped file is an aligned `[Record]` after the first cache line. Records are in
//! sequence order and (the engine's clock being monotonic) in `ts_recv` order, so a time is
//! found by binary search ([`lower_bound_ts`]).
//!
//! `X.crc` holds one CRC-32 (IEEE, `u32` little-endian) per block of
//! [`CRC_BLOCK_RECORDS`] records: entry `i` covers records `i*B .. (i+1)*B`. Entries for full
//! blocks are appended as blocks fill; a segment closed cleanly also has an entry for its
//! partial last block (dropped and recomputed when the segment is reopened to append).
//!
//! `X.strings` (see [`super::strings_file`]) holds the strings the records refer to.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ib_stream_ipc::{RECORD_SIZE, Record, RecordKind};

use super::StorageError;
use super::append::AppendFile;
use super::layout::{Format, SegmentKey};
use super::strings_file::{self, FileStrings};
use crate::tickjson::StringLookup;

/// First 8 bytes of a binary segment.
pub const BINARY_MAGIC: [u8; 8] = *b"IBSBINR\0";
/// The binary format version this build writes and reads.
pub const BINARY_VERSION: u32 = 1;
/// Header length: one record, so records stay 64-byte aligned.
pub const HEADER_LEN: usize = 64;
/// Records per checksum block (16 KiB of records).
pub const CRC_BLOCK_RECORDS: u32 = 256;

/// The header of a binary segment (all integers little-endian):
///
/// | offset | size | field               |
/// |-------:|-----:|---------------------|
/// | 0      | 8    | magic `"IBSBINR\0"` |
/// | 8      | 4    | version (1)         |
/// | 12     | 4    | header_len (64)     |
/// | 16     | 4    | record_size (64)    |
/// | 20     | 4    | crc_block_records   |
/// | 24     | 8    | epoch               |
/// | 32     | 8    | hour_start_ns       |
/// | 40     | 8    | created_ns          |
/// | 48     | 4    | instrument_id       |
/// | 52     | 1    | kind (0 = system)   |
/// | 53     | 7    | reserved, zero      |
/// | 60     | 4    | CRC-32 of bytes 0..60 |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BinaryHeader {
    /// Format version.
    pub version: u32,
    /// Records per checksum block.
    pub crc_block_records: u32,
    /// Ring writer epoch.
    pub epoch: u64,
    /// Start of the UTC hour the segment covers, ns.
    pub hour_start_ns: i64,
    /// When the segment was created, ns.
    pub created_ns: i64,
    /// IB conId (0 for system segments).
    pub instrument_id: u32,
    /// [`RecordKind`] byte of the records, 0 for a system segment.
    pub kind: u8,
}

impl BinaryHeader {
    /// The header of a new segment for `key`.
    pub fn for_key(key: &SegmentKey, created_ns: i64) -> BinaryHeader {
        BinaryHeader {
            version: BINARY_VERSION,
            crc_block_records: CRC_BLOCK_RECORDS,
            epoch: key.epoch,
            hour_start_ns: key.hour_start_ns,
            created_ns,
            instrument_id: key.instrument_id,
            kind: key.stream.header_byte(),
        }
    }

    /// The 64 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&BINARY_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..20].copy_from_slice(&(RECORD_SIZE as u32).to_le_bytes());
        b[20..24].copy_from_slice(&self.crc_block_records.to_le_bytes());
        b[24..32].copy_from_slice(&self.epoch.to_le_bytes());
        b[32..40].copy_from_slice(&self.hour_start_ns.to_le_bytes());
        b[40..48].copy_from_slice(&self.created_ns.to_le_bytes());
        b[48..52].copy_from_slice(&self.instrument_id.to_le_bytes());
        b[52] = self.kind;
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks 64 header bytes.
    pub fn parse(b: &[u8], path: &Path) -> Result<BinaryHeader, StorageError> {
        if b.len() < HEADER_LEN {
            return Err(StorageError::corrupt(
                path,
                format!("{} bytes: shorter than the 64-byte header", b.len()),
            ));
        }
        if b[0..8] != BINARY_MAGIC {
            return Err(StorageError::corrupt(
                path,
                "not a binary segment (bad magic)",
            ));
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        if crc32fast::hash(&b[..60]) != u32_at(60) {
            return Err(StorageError::corrupt(path, "header checksum mismatch"));
        }
        let version = u32_at(8);
        if version != BINARY_VERSION {
            return Err(StorageError::Version {
                path: path.to_path_buf(),
                found: version,
                expected: BINARY_VERSION,
            });
        }
        if u32_at(12) as usize != HEADER_LEN || u32_at(16) as usize != RECORD_SIZE {
            return Err(StorageError::corrupt(
                path,
                "header or record size is not 64",
            ));
        }
        let crc_block_records = u32_at(20);
        if crc_block_records == 0 {
            return Err(StorageError::corrupt(path, "checksum block size is 0"));
        }
        if b[53..60].iter().any(|&x| x != 0) {
            return Err(StorageError::corrupt(
                path,
                "reserved header bytes are not zero",
            ));
        }
        Ok(BinaryHeader {
            version,
            crc_block_records,
            epoch: u64_at(24),
            hour_start_ns: u64_at(32) as i64,
            created_ns: u64_at(40) as i64,
            instrument_id: u32_at(48),
            kind: b[52],
        })
    }

    /// True when the header describes the segment `key`.
    pub fn matches(&self, key: &SegmentKey) -> bool {
        self.epoch == key.epoch
            && self.hour_start_ns == key.hour_start_ns
            && self.instrument_id == key.instrument_id
            && self.kind == key.stream.header_byte()
    }
}

/// The sidecar of a data file: same stem, extension `crc` or `strings`.
pub fn sidecar_path(data_path: &Path, ext: &str) -> PathBuf {
    data_path.with_extension(ext)
}

/// The string ids a record refers to (exchange and conditions of trades, L1 strings).
pub fn string_ids(rec: &Record) -> [u32; 2] {
    match rec.kind() {
        Some(RecordKind::TbtLast | RecordKind::TbtAllLast) => {
            [rec.body[2] as u32, (rec.body[2] >> 32) as u32]
        }
        Some(RecordKind::L1String) => [rec.body[0] as u32, 0],
        _ => [0, 0],
    }
}

/// A binary segment read into memory.
#[derive(Clone, Debug)]
pub struct BinarySegment {
    /// Its header.
    pub header: BinaryHeader,
    /// Every whole record, in file order.
    pub records: Vec<Record>,
    /// Bytes after the last whole record (a torn tail).
    pub trailing_bytes: u64,
    /// The checksum entries of the `.crc` sidecar (empty when it is missing).
    pub crc_entries: Vec<u32>,
    /// Bytes after the last whole checksum entry.
    pub crc_trailing_bytes: u64,
}

/// The outcome of [`BinarySegment::verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockCheck {
    /// Blocks whose checksum matched.
    pub good_blocks: u64,
    /// Indexes of blocks whose checksum did not match (corruption).
    pub bad_blocks: Vec<u64>,
    /// Records in no checksummed block (the open tail of a segment, or entries lost in a crash).
    pub unchecked_records: u64,
    /// Checksum entries for blocks that do not exist (a damaged sidecar).
    pub extra_entries: u64,
}

impl BinarySegment {
    /// Reads the data file at `path` and its `.crc` sidecar.
    /// A sealed segment is read through its index (see [`super::sealed::read_segment`]).
    pub fn read(path: &Path) -> Result<BinarySegment, StorageError> {
        if super::sealed::is_sealed(path).map_err(|e| StorageError::io(path, e))? {
            let f = std::fs::File::open(path).map_err(|e| StorageError::io(path, e))?;
            return super::sealed::read_segment(path, f);
        }
        let bytes = std::fs::read(path).map_err(|e| StorageError::io(path, e))?;
        let header = BinaryHeader::parse(&bytes, path)?;
        let body = &bytes[HEADER_LEN..];
        let records: Vec<Record> = body
            .chunks_exact(RECORD_SIZE)
            .map(|c| {
                let mut a = [0u8; RECORD_SIZE];
                a.copy_from_slice(c);
                Record::from_bytes_array(&a)
            })
            .collect();
        let crc_path = sidecar_path(path, "crc");
        let crc_bytes = match std::fs::read(&crc_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StorageError::io(crc_path, e)),
        };
        Ok(BinarySegment {
            header,
            trailing_bytes: (body.len() % RECORD_SIZE) as u64,
            records,
            crc_entries: crc_bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            crc_trailing_bytes: (crc_bytes.len() % 4) as u64,
        })
    }

    /// Checks every block that has a checksum entry.
    pub fn verify(&self) -> BlockCheck {
        let b = self.header.crc_block_records as usize;
        let mut out = BlockCheck::default();
        let mut covered = 0usize;
        for (i, &want) in self.crc_entries.iter().enumerate() {
            let start = i * b;
            if start >= self.records.len() {
                out.extra_entries += 1;
                continue;
            }
            let end = (start + b).min(self.records.len());
            let mut h = crc32fast::Hasher::new();
            for r in &self.records[start..end] {
                h.update(r.as_bytes_ref());
            }
            if h.finalize() == want {
                out.good_blocks += 1;
            } else {
                out.bad_blocks.push(i as u64);
            }
            covered = end;
        }
        out.unchecked_records = (self.records.len() - covered) as u64;
        out
    }
}

/// Index of the first record with `ts_recv >= ts_ns` (records sorted by `ts_recv`).
pub fn lower_bound_ts(records: &[Record], ts_ns: i64) -> usize {
    records.partition_point(|r| r.ts_recv < ts_ns)
}

/// Index of the first record with `seq >= seq` (records sorted by `seq`).
pub fn lower_bound_seq(records: &[Record], seq: u64) -> usize {
    records.partition_point(|r| r.seq < seq)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |e| StorageError::io(path, e)
}

/// Appends records to one binary segment (with its sidecars) in flush windows.
#[derive(Debug)]
pub struct BinarySegmentWriter {
    key: SegmentKey,
    data: AppendFile,
    crc: AppendFile,
    strings: Option<AppendFile>,
    /// Records in the file plus staged.
    records: u64,
    /// CRC of the records of the current (partial) block.
    block: crc32fast::Hasher,
    block_len: u32,
    known_ids: HashSet<u32>,
}

impl BinarySegmentWriter {
    /// Opens the segment `key` under `root` to append, creating it when missing. An existing
    /// segment is brought to a clean state first: a torn record or checksum entry is cut off,
    /// the checksum entry of a partial last block dropped (it will be rewritten) and missing
    /// entries of full blocks recomputed, a torn strings entry cut off.
    pub fn open(root: &Path, key: SegmentKey, now_ns: i64) -> Result<Self, StorageError> {
        let path = key.path(root, Format::Binary);
        // A sealed hour reopened (a recorder restarted behind it): back to the raw form first.
        if path.exists() && super::sealed::is_sealed(&path).map_err(io(&path))? {
            super::sealed::unseal_file(&path).map_err(|e| match e {
                super::sealed::SealError::Storage(e) => e,
                super::sealed::SealError::NotIntact { path, why } => {
                    StorageError::corrupt(path, why)
                }
            })?;
        }
        let (mut data, _) = AppendFile::open(&path).map_err(io(&path))?;
        let mut len = data.written_len();
        if len < HEADER_LEN as u64 {
            // New, or created but its header never fully written: start it afresh.
            data.truncate(0).map_err(io(&path))?;
            let header = BinaryHeader::for_key(&key, now_ns).to_bytes();
            data.stage().extend_from_slice(&header);
            len = 0;
        } else {
            let h = data.read_at(0, HEADER_LEN).map_err(io(&path))?;
            let header = BinaryHeader::parse(&h, &path)?;
            if !header.matches(&key) || header.crc_block_records != CRC_BLOCK_RECORDS {
                return Err(StorageError::corrupt(
                    &path,
                    format!("header {header:?} does not match the file name"),
                ));
            }
        }
        let n = len.saturating_sub(HEADER_LEN as u64) / RECORD_SIZE as u64;
        if len > 0 && len != HEADER_LEN as u64 + n * RECORD_SIZE as u64 {
            data.truncate(HEADER_LEN as u64 + n * RECORD_SIZE as u64)
                .map_err(io(&path))?;
        }

        let crc_path = sidecar_path(&path, "crc");
        let (mut crc, _) = AppendFile::open(&crc_path).map_err(io(&crc_path))?;
        let full_blocks = n / u64::from(CRC_BLOCK_RECORDS);
        let entries = crc.written_len() / 4;
        if entries > full_blocks || crc.written_len() % 4 != 0 {
            crc.truncate(entries.min(full_blocks) * 4)
                .map_err(io(&crc_path))?;
        }
        let block_bytes = CRC_BLOCK_RECORDS as usize * RECORD_SIZE;
        for blk in entries.min(full_blocks)..full_blocks {
            let off = HEADER_LEN as u64 + blk * block_bytes as u64;
            let bytes = data.read_at(off, block_bytes).map_err(io(&path))?;
            crc.stage()
                .extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
        }
        let mut block = crc32fast::Hasher::new();
        let tail = (n % u64::from(CRC_BLOCK_RECORDS)) as usize;
        if tail > 0 {
            let off = HEADER_LEN as u64 + full_blocks * block_bytes as u64;
            let bytes = data.read_at(off, tail * RECORD_SIZE).map_err(io(&path))?;
            block.update(&bytes);
        }

        let strings_path = sidecar_path(&path, "strings");
        if std::fs::metadata(&strings_path)
            .is_ok_and(|m| m.len() < strings_file::STRINGS_FILE_HEADER_LEN as u64)
        {
            // Created but its header never fully written: no entry can be in it.
            truncate_or_remove(&strings_path, 0).map_err(io(&strings_path))?;
        }
        let mut known_ids = HashSet::new();
        let strings = match strings_file::read(&strings_path)? {
            None => None,
            Some(fs) => {
                let (mut f, _) = AppendFile::open(&strings_path).map_err(io(&strings_path))?;
                if fs.trailing_garbage > 0 {
                    f.truncate(fs.valid_len).map_err(io(&strings_path))?;
                }
                known_ids.extend(fs.strings.keys().copied());
                Some(f)
            }
        };
        Ok(BinarySegmentWriter {
            key,
            data,
            crc,
            strings,
            records: n,
            block,
            block_len: tail as u32,
            known_ids,
        })
    }

    /// The segment's key.
    pub fn key(&self) -> &SegmentKey {
        &self.key
    }

    /// Records in the segment, staged ones included.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes staged for the next flush.
    pub fn staged_bytes(&self) -> usize {
        self.data.staged_len() + self.crc.staged_len()
    }

    /// Stages one record, and the strings it refers to that the segment does not hold yet
    /// (looked up in `strings`; an id it does not know is left unresolved).
    pub fn push(&mut self, rec: &Record, strings: &dyn StringLookup) -> Result<(), StorageError> {
        for id in string_ids(rec) {
            if id != 0
                && !self.known_ids.contains(&id)
                && let Some(bytes) = strings.lookup(id)
            {
                if self.strings.is_none() {
                    let p = sidecar_path(self.data.path(), "strings");
                    let (mut f, _) = AppendFile::open(&p).map_err(io(&p))?;
                    if f.written_len() > 0 {
                        // Left by a rolled-back window; start the sidecar over.
                        f.truncate(0).map_err(io(&p))?;
                    }
                    f.stage()
                        .extend_from_slice(&strings_file::header(self.key.epoch));
                    self.strings = Some(f);
                }
                if let Some(f) = self.strings.as_mut() {
                    strings_file::append_entry(f.stage(), id, bytes);
                }
                self.known_ids.insert(id);
            }
        }
        let bytes = rec.as_bytes_ref();
        self.data.stage().extend_from_slice(bytes);
        self.block.update(bytes);
        self.block_len += 1;
        self.records += 1;
        if self.block_len == CRC_BLOCK_RECORDS {
            let h = std::mem::take(&mut self.block);
            self.crc
                .stage()
                .extend_from_slice(&h.finalize().to_le_bytes());
            self.block_len = 0;
        }
        Ok(())
    }

    /// Writes what is staged: strings first, then records, then checksums, so that a crash
    /// never leaves a record whose strings are not on disk.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if let Some(s) = self.strings.as_mut() {
            s.flush()?;
        }
        self.data.flush()?;
        self.crc.flush()
    }

    /// fdatasync of every file written since the last sync.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if let Some(s) = self.strings.as_mut() {
            s.sync()?;
        }
        self.data.sync()?;
        self.crc.sync()
    }

    /// Makes everything flushed the base of the next window.
    pub fn commit_window(&mut self) {
        if let Some(s) = self.strings.as_mut() {
            s.commit_window();
        }
        self.data.commit_window();
        self.crc.commit_window();
    }

    /// Truncates every file of the segment to the start of the window and consumes the
    /// writer (its in-memory state no longer matches the files; reopen to continue).
    /// Returns the truncations that failed, to retry with [`truncate_or_remove`].
    pub fn rollback(self) -> Vec<(PathBuf, u64)> {
        let mut failed = Vec::new();
        for f in [Some(self.data), Some(self.crc), self.strings]
            .into_iter()
            .flatten()
        {
            let (path, base) = (f.path().to_path_buf(), f.window_base());
            drop(f);
            if truncate_or_remove(&path, base).is_err() {
                failed.push((path, base));
            }
        }
        failed
    }

    /// Stages the checksum of the partial last block (if any), flushes and syncs when asked.
    pub fn close(mut self, sync: bool) -> std::io::Result<()> {
        if self.block_len > 0 {
            let h = std::mem::take(&mut self.block);
            self.crc
                .stage()
                .extend_from_slice(&h.finalize().to_le_bytes());
            self.block_len = 0;
        }
        self.flush()?;
        if sync {
            self.sync()?;
        }
        Ok(())
    }
}

/// Truncates `path` to `len`, or removes it when `len` is 0 (a file created in a window that
/// failed). A missing file is fine.
pub fn truncate_or_remove(path: &Path, len: u64) -> std::io::Result<()> {
    let res = if len == 0 {
        std::fs::remove_file(path)
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(len))
    };
    match res {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The strings of the binary segment at `data_path` (empty when it has no sidecar).
pub fn read_strings(data_path: &Path) -> Result<FileStrings, StorageError> {
    Ok(strings_file::read(&sidecar_path(data_path, "strings"))?.unwrap_or_default())
}

/// The binary segment at `path` rendered as the JSON Lines the recorder writes for the same
/// records (strings from its sidecar): byte-identical to the JSONL segment of the same key.
pub fn segment_as_jsonl(path: &Path) -> Result<Vec<u8>, StorageError> {
    let seg = BinarySegment::read(path)?;
    let strings = read_strings(path)?;
    let mut out = Vec::with_capacity(seg.records.len() * 128);
    for r in &seg.records {
        crate::tickjson::encode(r, &strings, &mut out);
        out.push(b'\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::layout::Stream;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn header_round_trips(epoch in any::<u64>(), hour in any::<i64>(), created in any::<i64>(),
                              cid in any::<u32>(), kind in any::<u8>(), block in 1u32..100_000) {
            let h = BinaryHeader {
                version: BINARY_VERSION, crc_block_records: block, epoch, hour_start_ns: hour,
                created_ns: created, instrument_id: cid, kind,
            };
            let b = h.to_bytes();
            prop_assert_eq!(BinaryHeader::parse(&b, Path::new("x")).unwrap(), h);
        }

        #[test]
        fn any_single_bit_flip_in_the_header_is_caught(bit in 0usize..512) {
            let key = SegmentKey { hour_start_ns: 0, instrument_id: 5, stream: Stream::System, epoch: 9 };
            let mut b = BinaryHeader::for_key(&key, 1).to_bytes();
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(BinaryHeader::parse(&b, Path::new("x")).is_err());
        }
    }

    #[test]
    fn search_by_time_and_seq() {
        let recs: Vec<Record> = (1..=10)
            .map(|i| Record {
                seq: i * 2,
                ts_recv: (i as i64) * 100,
                ..Record::new(RecordKind::TbtMidPoint)
            })
            .collect();
        assert_eq!(lower_bound_ts(&recs, 0), 0);
        assert_eq!(lower_bound_ts(&recs, 100), 0);
        assert_eq!(lower_bound_ts(&recs, 101), 1);
        assert_eq!(lower_bound_ts(&recs, 10_000), 10);
        assert_eq!(lower_bound_seq(&recs, 7), 3);
    }
}
