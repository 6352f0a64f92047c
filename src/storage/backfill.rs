//! Backfilled ticks and the fill state of each recorded gap (written by `ib-stream backfill`).
//!
//! Backfilled ticks have no live sequence number, so each fill gets its own **fill epoch**:
//! `0x4246` ("BF") in the top 16 bits and the low 48 bits of FNV-1a-64 over the fill's key
//! (the gap record's epoch and sequence, the conId and the kind). Its ticks are sequenced
//! `1..=N` in time order (IB's order within a second kept) and written through the ordinary
//! segment writers (`<conId>_<kind>_<fill epoch>`, both formats, block checksums, strings
//! sidecar), flagged [`flags::BACKFILL`]. Their receive time is IB's one-second time, so the
//! query by time, which merges every epoch by `(µs, epoch, seq)`, puts them in their place
//! beside the live ticks; within a second the key `(epoch, seq)` keeps IB's order.
//!
//! The fill state of each (gap, conId, kind) is a line of `<root>/backfill/fills.jsonl`:
//! the JSON of a [`FillRecord`], a tab, and the CRC-32 of the JSON in 8 hex digits. The last
//! line of a key wins; a line whose checksum does not match is reported and ignored (the gap
//! is then filled again). Storing a fill that is already `filled` stores nothing; any other
//! earlier fill of the same key is replaced whole (its segments removed first), so a re-run,
//! or a run after a crash between the ticks and the state line, never doubles a tick.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ib_stream_ipc::{Record, RecordKind, flags};
use serde::{Deserialize, Serialize};

use super::StorageError;
use super::import::{ImportError, write_records_with};
use super::layout::{Format, HOUR_NS, list_segments};
use crate::tickjson::{StringLookup, write_json_str};

/// Top 16 bits of every fill epoch ("BF").
pub const BACKFILL_EPOCH_TAG: u64 = 0x4246 << 48;

/// True for the epoch of backfilled ticks (not a ring's).
pub fn is_backfill_epoch(epoch: u64) -> bool {
    epoch >> 48 == BACKFILL_EPOCH_TAG >> 48
}

/// What one fill is of: a gap (its record's epoch and sequence) for one conId and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FillKey {
    /// Epoch of the gap record.
    pub gap_epoch: u64,
    /// Sequence of the gap record in that epoch.
    pub gap_seq: u64,
    /// IB conId.
    pub con_id: u32,
    /// The market-data kind filled.
    pub kind: RecordKind,
}

impl Ord for FillKey {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.gap_epoch, self.gap_seq, self.con_id, self.kind as u8).cmp(&(
            o.gap_epoch,
            o.gap_seq,
            o.con_id,
            o.kind as u8,
        ))
    }
}

impl PartialOrd for FillKey {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl FillKey {
    /// The fill epoch of this key (see the module documentation).
    pub fn epoch(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        feed(&self.gap_epoch.to_le_bytes());
        feed(&self.gap_seq.to_le_bytes());
        feed(&self.con_id.to_le_bytes());
        feed(&[self.kind as u8]);
        BACKFILL_EPOCH_TAG | (h & 0xffff_ffff_ffff)
    }
}

/// How far a gap was filled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FillState {
    /// Every second of the gap was asked and answered.
    Filled,
    /// Some sub-ranges (`[t0, t1)` ns) could not be filled.
    Partial {
        /// The sub-ranges still missing.
        missing: Vec<[i64; 2]>,
        /// Why (IB's answer for the first of them).
        why: String,
    },
    /// Nothing could be filled.
    Unavailable {
        /// Why (IB's error, or the kind has no historical equivalent).
        why: String,
    },
}

impl FillState {
    /// Its name in JSON (`filled`, `partial`, `unavailable`).
    pub fn name(&self) -> &'static str {
        match self {
            FillState::Filled => "filled",
            FillState::Partial { .. } => "partial",
            FillState::Unavailable { .. } => "unavailable",
        }
    }
}

/// The persisted outcome of one fill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FillRecord {
    /// Epoch of the gap record, 16 hex digits.
    pub gap_epoch: String,
    /// Sequence of the gap record.
    pub gap_seq: u64,
    /// IB conId.
    pub cid: u32,
    /// Kind name (`last`, `all_last`, `bid_ask`, `mid_point`).
    pub tt: String,
    /// The interval filled, ns `[t0, t1)`.
    pub t0: i64,
    /// End of the interval, ns.
    pub t1: i64,
    /// Ticks stored.
    pub n: u64,
    /// The fill epoch they are stored under, 16 hex digits.
    pub epoch: String,
    /// The state.
    #[serde(flatten)]
    pub state: FillState,
    /// When it was written, ns.
    pub written: i64,
}

impl FillRecord {
    /// A record of `key` over `[t0, t1)` (its counts and epoch are set when stored).
    pub fn new(key: FillKey, t0: i64, t1: i64, state: FillState) -> FillRecord {
        FillRecord {
            gap_epoch: format!("{:016x}", key.gap_epoch),
            gap_seq: key.gap_seq,
            cid: key.con_id,
            tt: key.kind.name().to_string(),
            t0,
            t1,
            n: 0,
            epoch: format!("{:016x}", key.epoch()),
            state,
            written: 0,
        }
    }

    /// Its key, `None` when a field does not parse.
    pub fn key(&self) -> Option<FillKey> {
        Some(FillKey {
            gap_epoch: u64::from_str_radix(&self.gap_epoch, 16).ok()?,
            gap_seq: self.gap_seq,
            con_id: self.cid,
            kind: RecordKind::from_name(&self.tt)?,
        })
    }

    /// Appends its summary as a JSON object (the `fill` items of a gap message:
    /// `{"tt":"last","state":"partial","n":12,"missing":[[t0,t1]],"why":"..."}`).
    pub fn write_summary(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"tt\":");
        write_json_str(out, self.tt.as_bytes());
        out.extend_from_slice(b",\"state\":");
        write_json_str(out, self.state.name().as_bytes());
        out.extend_from_slice(format!(",\"n\":{}", self.n).as_bytes());
        match &self.state {
            FillState::Filled => {}
            FillState::Partial { missing, why } => {
                out.extend_from_slice(b",\"missing\":[");
                for (i, [a, b]) in missing.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(format!("[{a},{b}]").as_bytes());
                }
                out.extend_from_slice(b"],\"why\":");
                write_json_str(out, why.as_bytes());
            }
            FillState::Unavailable { why } => {
                out.extend_from_slice(b",\"why\":");
                write_json_str(out, why.as_bytes());
            }
        }
        out.push(b'}');
    }
}

/// Why storing or reading fills failed.
#[derive(Debug, thiserror::Error)]
pub enum BackfillStoreError {
    /// A storage error (names the file).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Writing the ticks failed.
    #[error(transparent)]
    Write(#[from] ImportError),
    /// A fill record that cannot be keyed (bad epoch or kind).
    #[error("fill record of {0:?} has a bad gap epoch or kind")]
    BadRecord(String),
}

/// The fill-state file under `root`.
pub fn fills_path(root: &Path) -> PathBuf {
    root.join("backfill").join("fills.jsonl")
}

/// Every fill state of a store, the last line of each key.
#[derive(Clone, Debug, Default)]
pub struct FillStates {
    by_key: BTreeMap<FillKey, FillRecord>,
    /// Lines that did not verify: `line N: why`.
    pub damaged: Vec<String>,
}

impl FillStates {
    /// Reads `<root>/backfill/fills.jsonl` (empty when missing).
    pub fn load(root: &Path) -> Result<FillStates, StorageError> {
        let path = fills_path(root);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FillStates::default()),
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        let mut out = FillStates::default();
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for (n, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            match parse_line(line) {
                Ok(rec) => match rec.key() {
                    Some(k) => {
                        out.by_key.insert(k, rec);
                    }
                    None => out.damaged.push(format!("line {}: bad key", n + 1)),
                },
                Err(why) => out.damaged.push(format!("line {}: {why}", n + 1)),
            }
        }
        if complete < bytes.len() {
            out.damaged.push(format!(
                "byte {complete}: torn last line ({} bytes)",
                bytes.len() - complete
            ));
        }
        Ok(out)
    }

    /// The state of one fill.
    pub fn get(&self, key: &FillKey) -> Option<&FillRecord> {
        self.by_key.get(key)
    }

    /// The fills of the gap record `(gap_epoch, gap_seq)` for `con_id` (kinds in order).
    pub fn of_gap(
        &self,
        gap_epoch: u64,
        gap_seq: u64,
        con_id: u32,
    ) -> impl Iterator<Item = &FillRecord> {
        self.by_key
            .iter()
            .filter(move |(k, _)| {
                k.gap_epoch == gap_epoch && k.gap_seq == gap_seq && k.con_id == con_id
            })
            .map(|(_, r)| r)
    }

    /// What other fills of `con_id` and `kind` (all but `except`) hold: their intervals less
    /// their missing sub-ranges, ns `[t0, t1)`. Fills that stored no tick hold nothing (so
    /// nothing can be doubled with them).
    pub fn covered(&self, con_id: u32, kind: RecordKind, except: &FillKey) -> Vec<[i64; 2]> {
        let mut out = Vec::new();
        for (k, r) in &self.by_key {
            if k == except || k.con_id != con_id || k.kind != kind || r.n == 0 {
                continue;
            }
            match &r.state {
                FillState::Filled => out.push([r.t0, r.t1]),
                FillState::Partial { missing, .. } => {
                    out.extend(subtract([r.t0, r.t1], missing));
                }
                FillState::Unavailable { .. } => {}
            }
        }
        out
    }

    /// Every fill, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&FillKey, &FillRecord)> {
        self.by_key.iter()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// `range` less every interval of `holes` (all `[t0, t1)`), in order.
pub fn subtract(range: [i64; 2], holes: &[[i64; 2]]) -> Vec<[i64; 2]> {
    let mut holes: Vec<[i64; 2]> = holes.iter().copied().filter(|h| h[0] < h[1]).collect();
    holes.sort_unstable();
    let mut out = Vec::new();
    let mut at = range[0];
    for [a, b] in holes {
        if b <= at {
            continue;
        }
        if a >= range[1] {
            break;
        }
        if a > at {
            out.push([at, a]);
        }
        at = at.max(b);
    }
    if at < range[1] {
        out.push([at, range[1]]);
    }
    out
}

fn parse_line(line: &[u8]) -> Result<FillRecord, String> {
    let tab = line
        .iter()
        .rposition(|&b| b == b'\t')
        .ok_or("no checksum")?;
    let (json, crc) = (&line[..tab], &line[tab + 1..]);
    let want = std::str::from_utf8(crc)
        .ok()
        .and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or("bad checksum field")?;
    if crc32fast::hash(json) != want {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(json).map_err(|e| e.to_string())
}

/// The outcome of [`store_fill`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Ticks and state written (the count of ticks).
    Stored(u64),
    /// The gap was already filled: nothing written.
    AlreadyFilled,
}

/// Stores one fill: its ticks (only those of its conId and kind inside `[t0, t1)`, in the
/// order given within a second) under the fill epoch in each of `formats`, then its state.
/// `strings` resolves the records' string ids. See the module documentation for why this is
/// idempotent.
pub fn store_fill(
    root: &Path,
    formats: &[Format],
    mut fill: FillRecord,
    records: &[Record],
    strings: &dyn StringLookup,
    now_ns: i64,
) -> Result<StoreOutcome, BackfillStoreError> {
    let key = fill
        .key()
        .ok_or_else(|| BackfillStoreError::BadRecord(fill.gap_epoch.clone()))?;
    let states = FillStates::load(root)?;
    if states
        .get(&key)
        .is_some_and(|r| r.state == FillState::Filled)
    {
        return Ok(StoreOutcome::AlreadyFilled);
    }
    let epoch = key.epoch();
    remove_fill_segments(root, formats, epoch, fill.t0, fill.t1)?;
    // Gaps overlap (the session's and each subscription's): a second another fill of this
    // conId and kind already holds is not stored again.
    let held = states.covered(key.con_id, key.kind, &key);
    let mut recs: Vec<Record> = records
        .iter()
        .filter(|r| {
            r.instrument_id == key.con_id
                && r.kind == key.kind as u8
                && r.ts_recv >= fill.t0
                && r.ts_recv < fill.t1
                && !held.iter().any(|[a, b]| r.ts_recv >= *a && r.ts_recv < *b)
        })
        .copied()
        .collect();
    // Stable: ticks of one second keep IB's order.
    recs.sort_by_key(|r| r.ts_recv);
    for (i, r) in recs.iter_mut().enumerate() {
        r.seq = i as u64 + 1;
        r.flags |= flags::BACKFILL;
    }
    write_records_with(root, epoch, &recs, strings, formats)?;
    fill.n = recs.len() as u64;
    fill.epoch = format!("{epoch:016x}");
    fill.written = now_ns;
    append_state(root, &fill)?;
    Ok(StoreOutcome::Stored(fill.n))
}

/// Removes the segments of a fill epoch (an earlier partial fill, or one cut by a crash).
fn remove_fill_segments(
    root: &Path,
    formats: &[Format],
    epoch: u64,
    t0: i64,
    t1: i64,
) -> Result<(), StorageError> {
    let hour = |ns: i64| ns.div_euclid(HOUR_NS).saturating_mul(HOUR_NS);
    for &format in formats {
        for seg in list_segments(root, format, hour(t0), hour(t1))? {
            if seg.key.epoch != epoch {
                continue;
            }
            for ext in ["crc", "strings"] {
                let side = super::binary::sidecar_path(&seg.path, ext);
                if format == Format::Binary {
                    super::binary::truncate_or_remove(&side, 0)
                        .map_err(|e| StorageError::io(&side, e))?;
                }
            }
            super::binary::truncate_or_remove(&seg.path, 0)
                .map_err(|e| StorageError::io(&seg.path, e))?;
        }
    }
    Ok(())
}

fn append_state(root: &Path, fill: &FillRecord) -> Result<(), StorageError> {
    let path = fills_path(root);
    let json = serde_json::to_vec(fill).map_err(|e| StorageError::corrupt(&path, e.to_string()))?;
    let mut line = json.clone();
    line.extend_from_slice(format!("\t{:08x}\n", crc32fast::hash(&json)).as_bytes());
    let mut f =
        super::private_fs::open_private_append(&path).map_err(|e| StorageError::io(&path, e))?;
    // One write: a crash leaves at most a torn last line, which load reports and ignores.
    f.write_all(&line)
        .and_then(|()| f.sync_data())
        .map_err(|e| StorageError::io(&path, e))
}

/// The fills of the gap record `(gap_epoch, gap_seq)` for `con_id` and `kinds` (empty: every
/// kind).
pub fn fills_of_gap<'a>(
    states: &'a FillStates,
    gap_epoch: u64,
    gap_seq: u64,
    con_id: u32,
    kinds: &[RecordKind],
) -> Vec<&'a FillRecord> {
    states
        .of_gap(gap_epoch, gap_seq, con_id)
        .filter(|f| {
            kinds.is_empty() || RecordKind::from_name(&f.tt).is_some_and(|k| kinds.contains(&k))
        })
        .collect()
}

/// The ticks stored by `fills` (of one gap and conId), in their order by time, each with its
/// tick JSON line: what a sequence replay sends in the gap's place.
pub fn fill_ticks(
    root: &Path,
    fills: &[&FillRecord],
) -> Result<Vec<(Record, Vec<u8>)>, super::query::QueryError> {
    let (Some(first), false) = (fills.first(), fills.iter().all(|f| f.n == 0)) else {
        return Ok(Vec::new());
    };
    let epochs: Vec<u64> = fills
        .iter()
        .filter_map(|f| u64::from_str_radix(&f.epoch, 16).ok())
        .collect();
    let mut q = super::query::Query::new(
        first.cid,
        fills.iter().map(|f| f.t0).min().unwrap_or(0),
        fills.iter().map(|f| f.t1).max().unwrap_or(0),
    );
    q.kinds = fills
        .iter()
        .filter_map(|f| RecordKind::from_name(&f.tt))
        .collect();
    let mut it = super::query::QueryIter::new(root, &q)?;
    let mut out = Vec::new();
    loop {
        let mut line = Vec::new();
        let Some(rec) = it.next_json(&mut line)? else {
            break;
        };
        if it.cursor().is_some_and(|c| epochs.contains(&c.epoch)) {
            out.push((rec, line));
        }
    }
    Ok(out)
}

/// The summaries of `fills` as a JSON array (the `fill` of a gap), `None` when empty.
pub fn fill_array<'a>(fills: impl IntoIterator<Item = &'a FillRecord>) -> Option<Vec<u8>> {
    let mut out = vec![b'['];
    for f in fills {
        if out.len() > 1 {
            out.push(b',');
        }
        f.write_summary(&mut out);
    }
    (out.len() > 1).then(|| {
        out.push(b']');
        out
    })
}

/// Appends `"fill":` and `array` (from [`fill_array`]) before the closing brace of the JSON
/// object `line` (a gap's tick JSON or message).
pub fn add_fill_field(line: &mut Vec<u8>, array: &[u8]) {
    if line.last() != Some(&b'}') {
        return;
    }
    line.pop();
    if line.last() != Some(&b'{') {
        line.push(b',');
    }
    line.extend_from_slice(b"\"fill\":");
    line.extend_from_slice(array);
    line.push(b'}');
}

/// Adds the `fill` of a gap record's JSON `line`; nothing when there are no fills.
pub fn annotate_gap<'a>(line: &mut Vec<u8>, fills: impl IntoIterator<Item = &'a FillRecord>) {
    if let Some(a) = fill_array(fills) {
        add_fill_field(line, &a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::query::{Query, query_all};
    use crate::tickjson::LocalStrings;
    use ib_stream_ipc::{PRICE_SCALE, SIZE_SCALE};

    const T0: i64 = 1_765_000_800_000_000_000; // an hour start
    const CID: u32 = 42;

    fn key() -> FillKey {
        FillKey {
            gap_epoch: 0x1234,
            gap_seq: 77,
            con_id: CID,
            kind: RecordKind::TbtMidPoint,
        }
    }

    fn mid(ts: i64, p: i64) -> Record {
        let mut r = Record::new(RecordKind::TbtMidPoint);
        r.instrument_id = CID;
        r.ts_recv = ts;
        r.ts_event = ts;
        r.body[0] = p * PRICE_SCALE;
        r
    }

    #[test]
    fn fill_epochs_are_tagged_and_differ_by_key() {
        let a = key().epoch();
        assert!(is_backfill_epoch(a));
        assert!(!is_backfill_epoch(0x494d << 48));
        let mut k = key();
        k.kind = RecordKind::TbtLast;
        assert_ne!(k.epoch(), a);
        k = key();
        k.gap_seq += 1;
        assert_ne!(k.epoch(), a);
    }

    #[test]
    fn stored_ticks_are_flagged_ordered_and_a_rerun_stores_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Three ticks in one second (IB's order: 3, 1, 2), one outside the interval.
        let recs = [
            mid(T0 + 2_000_000_000, 3),
            mid(T0 + 1_000_000_000, 1),
            mid(T0 + 1_000_000_000, 2),
            mid(T0 + 10_000_000_000, 9),
        ];
        let fill = FillRecord::new(key(), T0, T0 + 5_000_000_000, FillState::Filled);
        let out = store_fill(
            root,
            &Format::ALL,
            fill.clone(),
            &recs,
            &LocalStrings::default(),
            1,
        )
        .unwrap();
        assert_eq!(out, StoreOutcome::Stored(3));
        let again =
            store_fill(root, &Format::ALL, fill, &recs, &LocalStrings::default(), 2).unwrap();
        assert_eq!(again, StoreOutcome::AlreadyFilled);
        for format in Format::ALL {
            let mut q = Query::new(CID, T0, T0 + HOUR_NS);
            q.format = Some(format);
            let (got, _) = query_all(root, &q).unwrap();
            let prices: Vec<i64> = got.iter().map(|r| r.body[0] / PRICE_SCALE).collect();
            assert_eq!(prices, [1, 2, 3], "{format:?}");
            assert!(got.iter().all(|r| r.has_flag(flags::BACKFILL)));
        }
        let states = FillStates::load(root).unwrap();
        assert!(states.damaged.is_empty());
        let st = states.get(&key()).unwrap();
        assert_eq!((st.n, &st.state), (3, &FillState::Filled));
        assert_eq!(st.written, 1, "the second run wrote no state");
        let _ = SIZE_SCALE;
    }

    #[test]
    fn a_partial_fill_is_replaced_whole_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let t1 = T0 + 5_000_000_000;
        let partial = FillState::Partial {
            missing: vec![[T0 + 3_000_000_000, t1]],
            why: "pacing".into(),
        };
        let first = [mid(T0, 1), mid(T0 + 1_000_000_000, 2)];
        let all = [
            mid(T0, 1),
            mid(T0 + 1_000_000_000, 2),
            mid(T0 + 4_000_000_000, 3),
        ];
        let s = LocalStrings::default();
        store_fill(
            root,
            &Format::ALL,
            FillRecord::new(key(), T0, t1, partial),
            &first,
            &s,
            1,
        )
        .unwrap();
        let f = FillRecord::new(key(), T0, t1, FillState::Filled);
        assert_eq!(
            store_fill(root, &Format::ALL, f, &all, &s, 2).unwrap(),
            StoreOutcome::Stored(3)
        );
        for format in Format::ALL {
            let mut q = Query::new(CID, T0, t1);
            q.format = Some(format);
            assert_eq!(query_all(root, &q).unwrap().0.len(), 3, "{format:?}");
        }
        assert_eq!(FillStates::load(root).unwrap().get(&key()).unwrap().n, 3);
        let report = crate::storage::validate::validate(root).unwrap();
        assert!(report.is_ok(), "{report:?}");
    }

    #[test]
    fn overlapping_fills_store_each_second_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let s = LocalStrings::default();
        let sec = 1_000_000_000;
        let recs: Vec<Record> = (0..6).map(|i| mid(T0 + i * sec, i)).collect();
        let first = FillRecord::new(key(), T0, T0 + 4 * sec, FillState::Filled);
        assert_eq!(
            store_fill(root, &Format::ALL, first, &recs, &s, 1).unwrap(),
            StoreOutcome::Stored(4)
        );
        // A second gap over [2 s, 6 s): only its seconds 4 and 5 are new.
        let mut other = key();
        other.gap_seq += 1;
        let second = FillRecord::new(other, T0 + 2 * sec, T0 + 6 * sec, FillState::Filled);
        assert_eq!(
            store_fill(root, &Format::ALL, second, &recs, &s, 2).unwrap(),
            StoreOutcome::Stored(2)
        );
        let (got, _) = query_all(root, &Query::new(CID, T0, T0 + HOUR_NS)).unwrap();
        let p: Vec<i64> = got.iter().map(|r| r.body[0] / PRICE_SCALE).collect();
        assert_eq!(p, [0, 1, 2, 3, 4, 5]);
        assert_eq!(
            subtract([0, 10], &[[2, 3], [5, 12], [-1, 1]]),
            [[1, 2], [3, 5]]
        );
    }

    #[test]
    fn a_damaged_state_line_is_reported_and_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let f = FillRecord::new(key(), T0, T0 + 1, FillState::Filled);
        store_fill(root, &[Format::Binary], f, &[], &LocalStrings::default(), 1).unwrap();
        let path = fills_path(root);
        let mut bytes = std::fs::read(&path).unwrap();
        let i = bytes.iter().position(|&b| b == b'1').unwrap();
        bytes[i] = b'2';
        bytes.extend_from_slice(b"{\"torn");
        std::fs::write(&path, bytes).unwrap();
        let st = FillStates::load(root).unwrap();
        assert!(st.is_empty());
        assert_eq!(st.damaged.len(), 2, "{:?}", st.damaged);
        assert!(st.damaged[0].contains("checksum mismatch"));
    }

    #[test]
    fn gap_lines_carry_their_fill_states() {
        let mut f = FillRecord::new(
            key(),
            T0,
            T0 + 9,
            FillState::Partial {
                missing: vec![[T0 + 2, T0 + 9]],
                why: "no data \"x\"".into(),
            },
        );
        f.n = 4;
        let mut line = b"{\"seq\":1,\"tt\":\"gap\"}".to_vec();
        annotate_gap(&mut line, [&f]);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["fill"][0]["state"], "partial");
        assert_eq!(v["fill"][0]["tt"], "mid_point");
        assert_eq!(v["fill"][0]["n"], 4);
        assert_eq!(v["fill"][0]["missing"][0][0], T0 + 2);
        assert_eq!(v["fill"][0]["why"], "no data \"x\"");
        let mut plain = b"{\"seq\":1}".to_vec();
        annotate_gap(&mut plain, []);
        assert_eq!(plain, b"{\"seq\":1}");
    }
}
