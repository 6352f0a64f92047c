//! Sealed binary segments: an hour that is over, its records compressed in blocks.
//!
//! A sealed segment keeps the name of the raw one (`X.bin`) and is told from it by its magic
//! (`IBSBINZ\0` instead of `IBSBINR\0`). It holds the raw segment's 64-byte header verbatim,
//! the records in compressed blocks of [`SEAL_BLOCK_RECORDS`] (each block: every 8-byte word
//! minus the same word of the record before, then the bytes regrouped by position, then one
//! zstd frame), and an index with each block's place, the CRC-32 of its compressed bytes, its
//! first and last sequence and receive time, and the raw format's checksum entries (one per
//! 256 records, over the records' original 64 bytes). A read by time or by sequence finds its
//! block in the index and decompresses only the blocks it reads; every record served is
//! checked against its original checksum after decompression. The `.strings` sidecar stays
//! beside it; the `.crc` sidecar is gone (its entries are in the index). Layout: docs/STORAGE.md.
//!
//! Readers see a sealed segment through [`SegmentData`], which presents both forms as the raw
//! layout (header at 0, record `i` at `64 + 64*i`), so the query, sequence, validation and
//! export code reads either without knowing which it has.
//!
//! Sealing ([`seal_file`]) writes `X.bin.sealing`, syncs it, renames it over `X.bin`, syncs
//! the directory and then removes `X.crc`: a crash at any point leaves the raw segment or the
//! sealed one, each complete (a leftover `X.bin.sealing` is removed by the next seal, a
//! leftover `X.crc` beside a sealed segment is ignored and removed too).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ib_stream_ipc::{RECORD_SIZE, Record};

use super::StorageError;
use super::binary::{BinaryHeader, BinarySegment, HEADER_LEN, sidecar_path};
use super::checkpoint::Checkpoint;
use super::layout::{Format, HOUR_NS, list_segments};
use super::private_fs;

/// First 8 bytes of a sealed segment.
pub const SEALED_MAGIC: [u8; 8] = *b"IBSBINZ\0";
/// The sealed format version this build writes and reads.
pub const SEALED_VERSION: u32 = 1;
/// Sealed header (64) plus the raw segment's header (64).
pub const SEALED_HEADER_LEN: usize = 128;
/// Records per compressed block: 16 checksum blocks, 256 KiB of records.
pub const SEAL_BLOCK_RECORDS: u32 = 4096;
/// Codec 1: word deltas, byte regrouping, zstd.
pub const CODEC_DELTA_SHUFFLE_ZSTD: u32 = 1;
/// Bytes of one index entry.
pub const INDEX_ENTRY_LEN: usize = 48;
/// zstd level used when sealing (chosen by `benches/storage.rs`: size against sealing time).
pub const SEAL_ZSTD_LEVEL: i32 = 19;
/// Suffix of the temporary file a seal writes (`X.bin.sealing`).
pub const SEALING_SUFFIX: &str = "sealing";

/// One compressed block in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockEntry {
    /// Byte offset of its zstd frame in the file.
    pub offset: u64,
    /// Length of the frame.
    pub len: u32,
    /// CRC-32 (IEEE) of the frame's bytes.
    pub crc: u32,
    /// Sequence of its first record.
    pub first_seq: u64,
    /// Sequence of its last record.
    pub last_seq: u64,
    /// `ts_recv` of its first record.
    pub first_ts: i64,
    /// `ts_recv` of its last record.
    pub last_ts: i64,
}

/// The verified header and index of a sealed segment.
#[derive(Clone, Debug)]
pub struct SealedIndex {
    /// The raw segment's header (verified).
    pub header: BinaryHeader,
    /// Its 64 bytes.
    pub raw_header: [u8; HEADER_LEN],
    /// Records in the segment.
    pub records: u64,
    /// Records per compressed block.
    pub block_records: u32,
    /// The compressed blocks.
    pub blocks: Vec<BlockEntry>,
    /// The raw format's checksum entries (one per `header.crc_block_records` records).
    pub crcs: Vec<u32>,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// True when `prefix` (the first bytes of a `.bin`) is a sealed segment's.
pub fn is_sealed_prefix(prefix: &[u8]) -> bool {
    prefix.len() >= SEALED_MAGIC.len() && prefix[..SEALED_MAGIC.len()] == SEALED_MAGIC
}

/// True when the file at `path` is a sealed segment.
pub fn is_sealed(path: &Path) -> std::io::Result<bool> {
    let f = File::open(path)?;
    let mut b = [0u8; 8];
    match f.read_exact_at(&mut b, 0) {
        Ok(()) => Ok(is_sealed_prefix(&b)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Word deltas then byte regrouping of `recs` into `out` (the block before compression).
fn transform(recs: &[u8], out: &mut Vec<u8>) {
    let n = recs.len() / RECORD_SIZE;
    out.clear();
    out.resize(n * RECORD_SIZE, 0);
    let mut prev = [0u64; RECORD_SIZE / 8];
    for i in 0..n {
        let r = &recs[i * RECORD_SIZE..(i + 1) * RECORD_SIZE];
        for (w, p) in prev.iter_mut().enumerate() {
            let v = le_u64(r, w * 8);
            let d = v.wrapping_sub(*p).to_le_bytes();
            *p = v;
            for (b, byte) in d.iter().enumerate() {
                out[(w * 8 + b) * n + i] = *byte;
            }
        }
    }
}

/// The inverse of [`transform`]: `plane` (n records' regrouped deltas) back into records.
/// Word by word: the eight byte planes of a word are read in step (sequentially) and summed.
fn untransform(plane: &[u8], out: &mut [u8]) {
    let n = plane.len() / RECORD_SIZE;
    for w in 0..RECORD_SIZE / 8 {
        let p: [&[u8]; 8] = std::array::from_fn(|b| &plane[(w * 8 + b) * n..(w * 8 + b + 1) * n]);
        let mut v = 0u64;
        for (i, rec) in out.chunks_exact_mut(RECORD_SIZE).enumerate().take(n) {
            let d = u64::from_le_bytes([
                p[0][i], p[1][i], p[2][i], p[3][i], p[4][i], p[5][i], p[6][i], p[7][i],
            ]);
            v = v.wrapping_add(d);
            rec[w * 8..w * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// The sealed form of a raw segment: `raw_header` (its 64 bytes), `records` (the records'
/// bytes, a whole number of records) and `crcs` (one entry per checksum block, covering
/// every record).
pub fn seal_bytes(
    raw_header: &[u8; HEADER_LEN],
    records: &[u8],
    crcs: &[u32],
    level: i32,
) -> std::io::Result<Vec<u8>> {
    let n = (records.len() / RECORD_SIZE) as u64;
    let per = SEAL_BLOCK_RECORDS as usize * RECORD_SIZE;
    let mut out = vec![0u8; SEALED_HEADER_LEN];
    let mut entries = Vec::new();
    let mut plane = Vec::with_capacity(per);
    let mut cctx = zstd::bulk::Compressor::new(level)?;
    for chunk in records.chunks(per) {
        transform(chunk, &mut plane);
        let frame = cctx.compress(&plane)?;
        let first = Record::from_bytes_array(chunk[..RECORD_SIZE].try_into().unwrap_or(&[0; 64]));
        let last = Record::from_bytes_array(
            chunk[chunk.len() - RECORD_SIZE..]
                .try_into()
                .unwrap_or(&[0; 64]),
        );
        entries.push(BlockEntry {
            offset: out.len() as u64,
            len: frame.len() as u32,
            crc: crc32fast::hash(&frame),
            first_seq: first.seq,
            last_seq: last.seq,
            first_ts: first.ts_recv,
            last_ts: last.ts_recv,
        });
        out.extend_from_slice(&frame);
    }
    let index_offset = out.len() as u64;
    let index_start = out.len();
    for e in &entries {
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
        out.extend_from_slice(&e.crc.to_le_bytes());
        out.extend_from_slice(&e.first_seq.to_le_bytes());
        out.extend_from_slice(&e.last_seq.to_le_bytes());
        out.extend_from_slice(&e.first_ts.to_le_bytes());
        out.extend_from_slice(&e.last_ts.to_le_bytes());
    }
    for c in crcs {
        out.extend_from_slice(&c.to_le_bytes());
    }
    let icrc = crc32fast::hash(&out[index_start..]);
    out.extend_from_slice(&icrc.to_le_bytes());
    let h = &mut out[..SEALED_HEADER_LEN];
    h[0..8].copy_from_slice(&SEALED_MAGIC);
    h[8..12].copy_from_slice(&SEALED_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(SEALED_HEADER_LEN as u32).to_le_bytes());
    h[16..20].copy_from_slice(&SEAL_BLOCK_RECORDS.to_le_bytes());
    h[20..24].copy_from_slice(&CODEC_DELTA_SHUFFLE_ZSTD.to_le_bytes());
    h[24..32].copy_from_slice(&n.to_le_bytes());
    h[32..40].copy_from_slice(&index_offset.to_le_bytes());
    h[40..44].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    h[44..48].copy_from_slice(&(crcs.len() as u32).to_le_bytes());
    let hcrc = crc32fast::hash(&h[..60]);
    h[60..64].copy_from_slice(&hcrc.to_le_bytes());
    h[64..128].copy_from_slice(raw_header);
    Ok(out)
}

impl SealedIndex {
    /// Reads and verifies the header and index of the sealed segment open as `file`.
    pub fn read(file: &File, path: &Path) -> Result<SealedIndex, StorageError> {
        let bad = |what: &str| StorageError::corrupt(path, format!("sealed segment: {what}"));
        let len = file
            .metadata()
            .map_err(|e| StorageError::io(path, e))?
            .len();
        let mut h = [0u8; SEALED_HEADER_LEN];
        if len < SEALED_HEADER_LEN as u64 {
            return Err(bad("shorter than its header"));
        }
        file.read_exact_at(&mut h, 0)
            .map_err(|e| StorageError::io(path, e))?;
        if !is_sealed_prefix(&h) {
            return Err(bad("bad magic"));
        }
        if crc32fast::hash(&h[..60]) != le_u32(&h, 60) {
            return Err(bad("header checksum mismatch"));
        }
        let version = le_u32(&h, 8);
        if version != SEALED_VERSION {
            return Err(StorageError::Version {
                path: path.to_path_buf(),
                found: version,
                expected: SEALED_VERSION,
            });
        }
        if le_u32(&h, 12) as usize != SEALED_HEADER_LEN || le_u32(&h, 20) != 1 {
            return Err(bad("unknown header length or codec"));
        }
        let block_records = le_u32(&h, 16);
        let records = le_u64(&h, 24);
        let index_offset = le_u64(&h, 32);
        let nblocks = u64::from(le_u32(&h, 40));
        let ncrcs = u64::from(le_u32(&h, 44));
        let mut raw_header = [0u8; HEADER_LEN];
        raw_header.copy_from_slice(&h[64..128]);
        let header = BinaryHeader::parse(&raw_header, path)?;
        let crc_block = u64::from(header.crc_block_records);
        if block_records == 0
            || crc_block == 0
            || u64::from(block_records) % crc_block != 0
            || nblocks != records.div_ceil(u64::from(block_records))
            || ncrcs != records.div_ceil(crc_block)
        {
            return Err(bad("block counts do not agree with the record count"));
        }
        let index_len = nblocks * INDEX_ENTRY_LEN as u64 + ncrcs * 4 + 4;
        if index_offset < SEALED_HEADER_LEN as u64 || index_offset + index_len != len {
            return Err(bad("index does not end the file"));
        }
        let mut ix = vec![0u8; index_len as usize];
        file.read_exact_at(&mut ix, index_offset)
            .map_err(|e| StorageError::io(path, e))?;
        let body = ix.len() - 4;
        if crc32fast::hash(&ix[..body]) != le_u32(&ix, body) {
            return Err(bad("index checksum mismatch"));
        }
        let mut blocks = Vec::with_capacity(nblocks as usize);
        for e in ix[..nblocks as usize * INDEX_ENTRY_LEN].chunks_exact(INDEX_ENTRY_LEN) {
            let b = BlockEntry {
                offset: le_u64(e, 0),
                len: le_u32(e, 8),
                crc: le_u32(e, 12),
                first_seq: le_u64(e, 16),
                last_seq: le_u64(e, 24),
                first_ts: le_u64(e, 32) as i64,
                last_ts: le_u64(e, 40) as i64,
            };
            if b.offset < SEALED_HEADER_LEN as u64 || b.offset + u64::from(b.len) > index_offset {
                return Err(bad("a block lies outside the data"));
            }
            blocks.push(b);
        }
        let crcs = ix[nblocks as usize * INDEX_ENTRY_LEN..body]
            .chunks_exact(4)
            .map(|c| le_u32(c, 0))
            .collect();
        Ok(SealedIndex {
            header,
            raw_header,
            records,
            block_records,
            blocks,
            crcs,
        })
    }

    /// Records in compressed block `k`.
    pub fn block_len(&self, k: usize) -> usize {
        let per = u64::from(self.block_records);
        (self.records - k as u64 * per).min(per) as usize
    }
}

/// A zstd decompression context.
struct Dctx(zstd::bulk::Decompressor<'static>);

impl std::fmt::Debug for Dctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dctx")
    }
}

/// A sealed segment open for reading, one decompressed block cached.
#[derive(Debug)]
pub struct SealedReader {
    path: PathBuf,
    file: File,
    /// Its verified index.
    pub index: SealedIndex,
    cached: Option<usize>,
    /// The cached block's records (raw bytes).
    block: Vec<u8>,
    frame: Vec<u8>,
    plane: Vec<u8>,
    /// One zstd context for every block (making one per block costs more than a block).
    dctx: Dctx,
    /// Compressed blocks found damaged so far.
    damaged: Vec<usize>,
}

impl SealedReader {
    /// Opens the sealed segment `file` (at `path`), verifying its header and index.
    pub fn open(file: File, path: &Path) -> Result<SealedReader, StorageError> {
        let index = SealedIndex::read(&file, path)?;
        let dctx = Dctx(zstd::bulk::Decompressor::new().map_err(|e| StorageError::io(path, e))?);
        Ok(SealedReader {
            path: path.to_path_buf(),
            file,
            index,
            cached: None,
            block: Vec::new(),
            frame: Vec::new(),
            plane: Vec::new(),
            dctx,
            damaged: Vec::new(),
        })
    }

    /// The records of compressed block `k` (raw 64-byte records), or `Err` with why the block
    /// is damaged (its frame's checksum, or it does not decompress to its records).
    pub fn block(&mut self, k: usize) -> Result<&[u8], String> {
        if self.cached != Some(k) {
            self.cached = None;
            let e = self.index.blocks[k];
            let want = self.index.block_len(k) * RECORD_SIZE;
            self.frame.resize(e.len as usize, 0);
            let why = match self.file.read_exact_at(&mut self.frame, e.offset) {
                Err(err) => Some(format!("cannot read the block: {err}")),
                Ok(()) if crc32fast::hash(&self.frame) != e.crc => {
                    Some("compressed block checksum mismatch".to_string())
                }
                Ok(()) => {
                    self.plane.resize(want, 0);
                    match self
                        .dctx
                        .0
                        .decompress_to_buffer(&self.frame, &mut self.plane[..])
                    {
                        Ok(n) if n == want => None,
                        Ok(n) => Some(format!("decompressed to {n} bytes, {want} expected")),
                        Err(err) => Some(format!("does not decompress: {err}")),
                    }
                }
            };
            if let Some(why) = why {
                if !self.damaged.contains(&k) {
                    self.damaged.push(k);
                }
                return Err(format!("{}: block {k}: {why}", self.path.display()));
            }
            self.block.resize(want, 0);
            untransform(&self.plane, &mut self.block);
            self.cached = Some(k);
        }
        Ok(&self.block)
    }

    /// True when checksum block `b` lies in a compressed block found damaged.
    pub fn crc_block_damaged(&self, b: u64) -> bool {
        let per = u64::from(self.index.block_records / self.index.header.crc_block_records);
        self.damaged.contains(&((b / per.max(1)) as usize))
    }

    /// Copies records `first..` into `buf` (whole records); the records of a damaged block
    /// read as zeros (and [`Self::crc_block_damaged`] says so). Returns the bytes copied.
    fn read_records(&mut self, first: u64, buf: &mut [u8]) -> usize {
        let per = u64::from(self.index.block_records);
        let mut got = 0;
        let mut idx = first;
        while got < buf.len() && idx < self.index.records {
            let k = (idx / per) as usize;
            let in_block = (idx - k as u64 * per) as usize * RECORD_SIZE;
            let want = buf.len() - got;
            match self.block(k) {
                Ok(b) => {
                    let n = (b.len() - in_block).min(want);
                    buf[got..got + n].copy_from_slice(&b[in_block..in_block + n]);
                    got += n;
                    idx += (n / RECORD_SIZE) as u64;
                    if !n.is_multiple_of(RECORD_SIZE) {
                        break;
                    }
                }
                Err(_) => {
                    let n = (self.index.block_len(k) * RECORD_SIZE - in_block).min(want);
                    buf[got..got + n].fill(0);
                    got += n;
                    idx += (n / RECORD_SIZE) as u64;
                    if !n.is_multiple_of(RECORD_SIZE) {
                        break;
                    }
                }
            }
        }
        got
    }
}

/// A binary segment's data, raw or sealed, seen as the raw layout.
#[derive(Debug)]
pub enum SegmentData {
    /// `X.bin` as the recorder writes it.
    Raw(File),
    /// A sealed `X.bin`.
    Sealed(Box<SealedReader>),
}

impl SegmentData {
    /// Opens `path`. A sealed segment whose header or index does not verify is an error
    /// ([`StorageError::Corrupt`]).
    pub fn open(path: &Path) -> Result<SegmentData, std::io::Error> {
        let file = File::open(path)?;
        let mut m = [0u8; 8];
        let sealed = match file.read_exact_at(&mut m, 0) {
            Ok(()) => is_sealed_prefix(&m),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
            Err(e) => return Err(e),
        };
        if !sealed {
            return Ok(SegmentData::Raw(file));
        }
        SealedReader::open(file, path)
            .map(|r| SegmentData::Sealed(Box::new(r)))
            .map_err(|e| match e {
                StorageError::Io { source, .. } => source,
                other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
            })
    }

    /// Length of the raw layout (a sealed segment: header plus its records).
    pub fn len(&self) -> std::io::Result<u64> {
        match self {
            SegmentData::Raw(f) => Ok(f.metadata()?.len()),
            SegmentData::Sealed(s) => Ok(HEADER_LEN as u64 + s.index.records * RECORD_SIZE as u64),
        }
    }

    /// True when the raw layout is empty.
    pub fn is_empty(&self) -> std::io::Result<bool> {
        self.len().map(|l| l == 0)
    }

    /// The sealed reader, if sealed.
    pub fn sealed(&self) -> Option<&SealedReader> {
        match self {
            SegmentData::Raw(_) => None,
            SegmentData::Sealed(s) => Some(s),
        }
    }

    /// True when checksum block `b` is in a damaged compressed block (never for raw files:
    /// their damage shows as a checksum mismatch).
    pub fn crc_block_damaged(&self, b: u64) -> bool {
        self.sealed().is_some_and(|s| s.crc_block_damaged(b))
    }

    /// Reads into `buf` at `offset` of the raw layout until it is full or the data ends;
    /// returns the bytes read.
    pub fn read_up_to(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        match self {
            SegmentData::Raw(file) => {
                let mut got = 0;
                while got < buf.len() {
                    match file.read_at(&mut buf[got..], offset + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(got)
            }
            SegmentData::Sealed(s) => {
                let mut got = 0;
                if offset < HEADER_LEN as u64 {
                    let h = &s.index.raw_header[offset as usize..];
                    let n = h.len().min(buf.len());
                    buf[..n].copy_from_slice(&h[..n]);
                    got = n;
                }
                let at = offset + got as u64;
                if got < buf.len() {
                    let rel = at - HEADER_LEN as u64;
                    let first = rel / RECORD_SIZE as u64;
                    let skip = (rel % RECORD_SIZE as u64) as usize;
                    if skip == 0 {
                        let whole = (buf.len() - got) / RECORD_SIZE * RECORD_SIZE;
                        got += s.read_records(first, &mut buf[got..got + whole]);
                    } else {
                        // An unaligned read (never made by our readers): one record at a time.
                        let mut one = [0u8; RECORD_SIZE];
                        if s.read_records(first, &mut one) == RECORD_SIZE {
                            let n = (RECORD_SIZE - skip).min(buf.len() - got);
                            buf[got..got + n].copy_from_slice(&one[skip..skip + n]);
                            got += n;
                        }
                    }
                }
                Ok(got)
            }
        }
    }
}

/// Reads a sealed segment whole as a [`BinarySegment`]. The records of a damaged block read
/// as zeros and their checksum entries are set so that they can never match: `verify()`
/// reports them as bad blocks, and nothing serves them.
pub fn read_segment(path: &Path, file: File) -> Result<BinarySegment, StorageError> {
    let mut r = SealedReader::open(file, path)?;
    let n = r.index.records as usize;
    let mut bytes = vec![0u8; n * RECORD_SIZE];
    r.read_records(0, &mut bytes);
    let mut crcs = r.index.crcs.clone();
    let per = u64::from(r.index.header.crc_block_records);
    for (b, c) in crcs.iter_mut().enumerate() {
        if r.crc_block_damaged(b as u64) {
            let start = b * per as usize * RECORD_SIZE;
            let end = ((b + 1) * per as usize * RECORD_SIZE).min(bytes.len());
            *c = !crc32fast::hash(&bytes[start..end]);
        }
    }
    Ok(BinarySegment {
        header: r.index.header,
        records: bytes
            .chunks_exact(RECORD_SIZE)
            .map(|c| Record::from_bytes_array(c.try_into().unwrap_or(&[0; RECORD_SIZE])))
            .collect(),
        trailing_bytes: 0,
        crc_entries: crcs,
        crc_trailing_bytes: 0,
    })
}

/// The checksum blocks of the segment at `path` that lie in a compressed block that cannot
/// be read (empty for a raw segment).
pub fn unreadable_crc_blocks(path: &Path) -> Result<Vec<u64>, StorageError> {
    if !is_sealed(path).map_err(|e| StorageError::io(path, e))? {
        return Ok(Vec::new());
    }
    let f = File::open(path).map_err(|e| StorageError::io(path, e))?;
    let mut r = SealedReader::open(f, path)?;
    let per = u64::from(r.index.block_records / r.index.header.crc_block_records.max(1));
    let mut out = Vec::new();
    for k in 0..r.index.blocks.len() {
        if r.block(k).is_err() {
            let crc_blocks = (r.index.block_len(k) as u64)
                .div_ceil(u64::from(r.index.header.crc_block_records.max(1)));
            out.extend((0..crc_blocks).map(|j| k as u64 * per + j));
        }
    }
    Ok(out)
}

/// What [`seal_file`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealOutcome {
    /// Sealed: bytes before (data and `.crc`) and after.
    Sealed {
        /// Raw data plus checksum sidecar.
        before: u64,
        /// The sealed file.
        after: u64,
    },
    /// It was sealed already.
    AlreadySealed,
    /// Empty (no records): left as it is.
    Empty,
}

/// Why a segment was not sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Reading or writing failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The raw segment does not verify (damage, torn tail, a block whose checksum does not
    /// match): it stays raw for `validate` and `repair`.
    #[error("{path}: not sealed: {why}")]
    NotIntact {
        /// The segment.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The temporary file a seal of `path` writes.
pub fn sealing_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(SEALING_SUFFIX);
    PathBuf::from(s)
}

/// Seals the raw binary segment at `path` (see the module documentation for the steps and
/// why a crash loses nothing). Refuses a segment that does not verify.
pub fn seal_file(path: &Path, level: i32) -> Result<SealOutcome, SealError> {
    let io = |e| StorageError::io(path, e);
    let crc_path = sidecar_path(path, "crc");
    let tmp = sealing_path(path);
    if tmp.exists() {
        std::fs::remove_file(&tmp).map_err(|e| StorageError::io(&tmp, e))?;
    }
    if is_sealed(path).map_err(io)? {
        // A crash after the rename may have left the old checksums.
        if crc_path.exists() {
            std::fs::remove_file(&crc_path).map_err(|e| StorageError::io(&crc_path, e))?;
        }
        return Ok(SealOutcome::AlreadySealed);
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let not_intact = |why: String| SealError::NotIntact {
        path: path.to_path_buf(),
        why,
    };
    if bytes.len() < HEADER_LEN {
        return Err(not_intact("no complete header".into()));
    }
    let header = BinaryHeader::parse(&bytes, path)?;
    let body = &bytes[HEADER_LEN..];
    if body.len() % RECORD_SIZE != 0 {
        return Err(not_intact(format!(
            "torn record: {} bytes after the last whole record",
            body.len() % RECORD_SIZE
        )));
    }
    if body.is_empty() {
        return Ok(SealOutcome::Empty);
    }
    let crc_bytes = match std::fs::read(&crc_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(StorageError::io(&crc_path, e).into()),
    };
    if crc_bytes.len() % 4 != 0 {
        return Err(not_intact("torn checksum entry".into()));
    }
    let per = header.crc_block_records as usize * RECORD_SIZE;
    if per == 0 || !SEAL_BLOCK_RECORDS.is_multiple_of(header.crc_block_records) {
        return Err(not_intact(
            "checksum block size does not divide the seal block".into(),
        ));
    }
    let stored: Vec<u32> = crc_bytes.chunks_exact(4).map(|c| le_u32(c, 0)).collect();
    let mut crcs = Vec::with_capacity(body.len().div_ceil(per));
    for (i, block) in body.chunks(per).enumerate() {
        let c = crc32fast::hash(block);
        match stored.get(i) {
            Some(&want) if want != c => {
                return Err(not_intact(format!(
                    "block {i}: checksum mismatch (run `storage validate`)"
                )));
            }
            // Records the recorder had not checksummed yet (a crash before the file was
            // closed): they were served unchecked until now; from here on they are covered.
            _ => crcs.push(c),
        }
    }
    if stored.len() > crcs.len() {
        return Err(not_intact(
            "checksum entries for blocks that do not exist".into(),
        ));
    }
    let strings = super::binary::read_strings(path)?;
    if strings.trailing_garbage > 0 {
        return Err(not_intact(format!(
            "strings sidecar: {} bytes after the last intact entry",
            strings.trailing_garbage
        )));
    }
    let mut raw_header = [0u8; HEADER_LEN];
    raw_header.copy_from_slice(&bytes[..HEADER_LEN]);
    let sealed = seal_bytes(&raw_header, body, &crcs, level).map_err(io)?;
    write_sealed(path, &tmp, &sealed, body)?;
    if crc_path.exists() {
        std::fs::remove_file(&crc_path).map_err(|e| StorageError::io(&crc_path, e))?;
    }
    Ok(SealOutcome::Sealed {
        before: (bytes.len() + crc_bytes.len()) as u64,
        after: sealed.len() as u64,
    })
}

/// Writes `sealed` to `tmp` and syncs it, reads it back (it must give exactly `records`),
/// renames it over `path` and syncs the directory.
fn write_sealed(path: &Path, tmp: &Path, sealed: &[u8], records: &[u8]) -> Result<(), SealError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tio = |e| StorageError::io(tmp, e);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(private_fs::FILE_MODE)
        .open(tmp)
        .map_err(tio)?;
    f.write_all(sealed).map_err(tio)?;
    f.sync_data().map_err(tio)?;
    let check = (|| {
        let mut r = SealedReader::open(f, tmp)?;
        let mut back = vec![0u8; r.index.records as usize * RECORD_SIZE];
        r.read_records(0, &mut back);
        Ok::<bool, StorageError>(r.damaged.is_empty() && back == records)
    })();
    match check {
        Ok(true) => {}
        Ok(false) | Err(_) => {
            let _ = std::fs::remove_file(tmp);
            return Err(SealError::NotIntact {
                path: path.to_path_buf(),
                why: "the sealed form did not read back identically".into(),
            });
        }
    }
    std::fs::rename(tmp, path).map_err(tio)?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StorageError::io(dir, e))?;
    }
    Ok(())
}

/// Turns the sealed segment at `path` back into a raw one (the recorder reopening an hour to
/// append, or a cut of its tail): `.crc` first, then the data, each replaced atomically.
pub fn unseal_file(path: &Path) -> Result<(), SealError> {
    let file = File::open(path).map_err(|e| StorageError::io(path, e))?;
    let mut r = SealedReader::open(file, path)?;
    let mut raw = vec![0u8; HEADER_LEN + r.index.records as usize * RECORD_SIZE];
    raw[..HEADER_LEN].copy_from_slice(&r.index.raw_header);
    r.read_records(0, &mut raw[HEADER_LEN..]);
    if let Some(&k) = r.damaged.first() {
        return Err(SealError::NotIntact {
            path: path.to_path_buf(),
            why: format!("compressed block {k} is damaged: cannot unseal"),
        });
    }
    let crc_bytes: Vec<u8> = r.index.crcs.iter().flat_map(|c| c.to_le_bytes()).collect();
    let crc_path = sidecar_path(path, "crc");
    let io = |e| StorageError::io(path, e);
    private_fs::write_private_atomic(&crc_path, &crc_bytes, true).map_err(io)?;
    private_fs::write_private_atomic(path, &raw, true).map_err(io)?;
    Ok(())
}

/// What [`seal_store`] did.
#[derive(Debug, Default)]
pub struct SealReport {
    /// Segments sealed now.
    pub sealed: u64,
    /// Segments sealed before.
    pub already: u64,
    /// Segments of hours not over yet (or open in the recorder), left raw.
    pub open: u64,
    /// Bytes before and after, of those sealed now.
    pub bytes_before: u64,
    /// Likewise.
    pub bytes_after: u64,
    /// Segments that do not verify, left raw.
    pub refused: Vec<String>,
}

/// The first hour that must stay raw: the hour of `now_ns` minus `grace_ns`, and no later than
/// the checkpoint's oldest open hour (the recorder may still append there, or cut it back on
/// restart).
pub fn seal_horizon(root: &Path, now_ns: i64, grace_ns: i64) -> Result<i64, StorageError> {
    let by_clock = (now_ns - grace_ns).div_euclid(HOUR_NS) * HOUR_NS;
    Ok(match Checkpoint::load(root)? {
        Some(c) if c.scan_from_hour_ns > 0 => by_clock.min(c.scan_from_hour_ns),
        _ => by_clock,
    })
}

/// Seals every raw binary segment of an hour before `before_hour_ns` (see [`seal_horizon`]).
pub fn seal_store(
    root: &Path,
    before_hour_ns: i64,
    level: i32,
) -> Result<SealReport, StorageError> {
    let mut rep = SealReport::default();
    for seg in list_segments(root, Format::Binary, i64::MIN, i64::MAX)? {
        if seg.key.hour_start_ns >= before_hour_ns {
            rep.open += 1;
            continue;
        }
        match seal_file(&seg.path, level) {
            Ok(SealOutcome::Sealed { before, after }) => {
                rep.sealed += 1;
                rep.bytes_before += before;
                rep.bytes_after += after;
            }
            Ok(SealOutcome::AlreadySealed) => rep.already += 1,
            Ok(SealOutcome::Empty) => {}
            Err(SealError::NotIntact { path, why }) => {
                rep.refused.push(format!("{}: {why}", path.display()));
            }
            Err(SealError::Storage(e)) => return Err(e),
        }
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transform_round_trips() {
        let mut recs = vec![0u8; 3 * RECORD_SIZE];
        for (i, b) in recs.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let mut plane = Vec::new();
        transform(&recs, &mut plane);
        let mut back = vec![0u8; recs.len()];
        untransform(&plane, &mut back);
        assert_eq!(back, recs);
    }
}

#[cfg(test)]
mod round_trip_tests {
    use super::*;

    /// Several compressed blocks, the last one partial: every byte comes back (a full
    /// block once failed to decompress into a buffer with no spare room).
    #[test]
    fn multi_block_round_trip() {
        let n = 10_000usize;
        let mut recs = vec![0u8; n * RECORD_SIZE];
        for (i, b) in recs.iter_mut().enumerate() {
            *b = ((i * 31) % 253) as u8;
        }
        let dir = tempfile::tempdir().unwrap();
        let h = crate::storage::binary::BinaryHeader {
            version: 1,
            crc_block_records: 256,
            epoch: 1,
            hour_start_ns: 0,
            created_ns: 0,
            instrument_id: 1,
            kind: 1,
        }
        .to_bytes();
        let crcs: Vec<u32> = recs.chunks(256 * 64).map(crc32fast::hash).collect();
        let sealed = seal_bytes(&h, &recs, &crcs, 3).unwrap();
        let p = dir.path().join("x.bin");
        std::fs::write(&p, &sealed).unwrap();
        let mut r = SealedReader::open(File::open(&p).unwrap(), &p).unwrap();
        let mut back = vec![0u8; recs.len()];
        let got = r.read_records(0, &mut back);
        assert_eq!(got, back.len());
        assert!(r.damaged.is_empty(), "{:?}", r.damaged);
        let first_bad = back.iter().zip(&recs).position(|(a, b)| a != b);
        assert_eq!(first_bad, None);
    }
}
