//! Sealed binary segments (hours that are over, compressed in blocks with an index): every
//! reader gives exactly what it gave from the raw segments; a damaged compressed block is
//! reported and none of its records is served; a crash at any step of a seal loses nothing;
//! a sealed hour the recorder must append to or cut back is unsealed first.

mod storage_query_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ib_stream::storage::binary::{BinarySegment, BinarySegmentWriter, sidecar_path};
use ib_stream::storage::layout::list_segments;
use ib_stream::storage::query::seq::{SeqIter, SeqRange};
use ib_stream::storage::query::{DamageKind, Query, QueryError, QueryIter};
use ib_stream::storage::repair::truncate_after;
use ib_stream::storage::sealed::{
    self, SealOutcome, SealedIndex, is_sealed, seal_file, seal_store, sealing_path,
};
use ib_stream::storage::validate::validate;
use ib_stream::storage::{Format, SegmentKey};
use ib_stream::tickjson::{LocalStrings, StringIntern};
use ib_stream_ipc::{Record, RecordKind, Trade};
use storage_query_support::{CID, EPOCH_A, EPOCH_B, T0, TempRoot, standard_store};

const LEVEL: i32 = 3;
const EPOCH: u64 = 0x5ea1;
const TICK: i64 = 250_000_000;

fn bin_files(root: &Path) -> Vec<PathBuf> {
    list_segments(root, Format::Binary, i64::MIN, i64::MAX)
        .unwrap()
        .into_iter()
        .map(|s| s.path)
        .collect()
}

/// Everything a client can read, as text: whole-range query, pages of a time range, and
/// reads by sequence of both epochs.
fn read_everything(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut q = Query {
        con_id: CID,
        kinds: Vec::new(),
        start_ns: i64::MIN,
        end_ns: i64::MAX,
        limit: None,
        after: None,
        format: Some(Format::Binary),
    };
    let mut it = QueryIter::new(root, &q).unwrap();
    let mut line = Vec::new();
    while it.next_json(&mut line).unwrap().is_some() {
        out.push(String::from_utf8_lossy(&line).into_owned());
        line.clear();
    }
    // Pages of 37 over a range starting inside the first hour.
    q.start_ns = T0 + 1_800_000_000_000;
    q.end_ns = T0 + 7_000_000_000_000;
    q.limit = Some(37);
    q.kinds = vec![RecordKind::TbtBidAsk, RecordKind::TbtLast];
    loop {
        let mut it = QueryIter::new(root, &q).unwrap();
        let mut n = 0;
        while let Some(r) = it.next_record().unwrap() {
            out.push(format!("page {} {} {}", r.seq, r.ts_recv, r.body[0]));
            n += 1;
        }
        match it.cursor() {
            Some(c) if n == 37 => q.after = Some(c),
            _ => break,
        }
    }
    for (epoch, first, last) in [
        (EPOCH_A, 1, 3000),
        (EPOCH_A, 1234, 2100),
        (EPOCH_B, 17, 400),
    ] {
        let r = SeqRange::new(CID, epoch, first, last);
        let mut it = SeqIter::new(root, &r).unwrap();
        while let Some(rec) = it.next_record().unwrap() {
            out.push(format!(
                "seq {epoch} {} {} {:?}",
                rec.seq, rec.ts_recv, rec.body
            ));
        }
    }
    out
}

#[test]
fn sealed_segments_read_exactly_like_raw_ones() {
    let t = TempRoot::new("sealed-same");
    let root = &t.0;
    standard_store(root);
    let before = read_everything(root);
    assert!(before.len() > 3000, "{}", before.len());
    let files = bin_files(root);
    let raw_bytes: u64 = files
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();

    let rep = seal_store(root, i64::MAX, LEVEL).unwrap();
    assert_eq!(rep.sealed as usize, files.len(), "{rep:?}");
    assert!(rep.refused.is_empty(), "{rep:?}");
    for p in &files {
        assert!(is_sealed(p).unwrap(), "{}", p.display());
        assert!(
            !sidecar_path(p, "crc").exists(),
            "the .crc went into the index"
        );
    }
    let sealed_bytes: u64 = files
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        sealed_bytes * 3 < raw_bytes,
        "{sealed_bytes} vs {raw_bytes}"
    );

    assert_eq!(read_everything(root), before);
    let v = validate(root).unwrap();
    assert!(v.is_ok(), "{v:?}");
    // Sealing again changes nothing.
    let again = seal_store(root, i64::MAX, LEVEL).unwrap();
    assert_eq!((again.sealed, again.already), (0, files.len() as u64));
}

/// 10,000 trades in one hour: compressed blocks 0 (records 1..=4096), 1 and 2 (8193..).
fn one_hour(root: &Path) -> PathBuf {
    let mut strings = LocalStrings::default();
    let ex = strings.intern(b"CME");
    let key = SegmentKey::for_record(&trade(1, ex), EPOCH).unwrap();
    let mut b = BinarySegmentWriter::open(root, key, T0).unwrap();
    for seq in 1..=10_000 {
        b.push(&trade(seq, ex), &strings).unwrap();
    }
    b.close(false).unwrap();
    key.path(root, Format::Binary)
}

fn trade(seq: u64, ex: u32) -> Record {
    let mut r = Record::trade(
        false,
        CID,
        T0,
        Trade {
            price: 5000 * TICK + (seq as i64 % 97) * TICK,
            size: 100_000_000,
            exchange_id: ex,
            conditions_id: 0,
        },
    );
    r.seq = seq;
    r.ts_recv = T0 + seq as i64 * 100_000_000;
    r
}

fn storage(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ib-stream"))
        .arg("storage")
        .arg("--storage")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

#[derive(Debug)]
enum Item {
    Rec(u64),
    Damage(Box<ib_stream::storage::query::Damage>),
}

fn drain(mut next: impl FnMut() -> Result<Option<Record>, QueryError>) -> Vec<Item> {
    let mut out = Vec::new();
    loop {
        match next() {
            Ok(Some(r)) => {
                assert_eq!(
                    r.body[0] % TICK,
                    0,
                    "seq {}: a wrong price was served",
                    r.seq
                );
                out.push(Item::Rec(r.seq));
            }
            Ok(None) => return out,
            Err(QueryError::Damaged(d)) => out.push(Item::Damage(d)),
            Err(e) => panic!("{e}"),
        }
    }
}

fn check_block_1_lost(items: &[Item], bin: &Path) {
    let seqs: Vec<u64> = items
        .iter()
        .filter_map(|i| match i {
            Item::Rec(s) => Some(*s),
            Item::Damage(_) => None,
        })
        .collect();
    let want: Vec<u64> = (1..=4096).chain(8193..=10_000).collect();
    assert_eq!(seqs, want);
    let damage: Vec<_> = items
        .iter()
        .filter_map(|i| match i {
            Item::Damage(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(
        damage.len(),
        1,
        "one report for the compressed block: {damage:?}"
    );
    let Item::Damage(d) = &items[4096] else {
        panic!("no damage after seq 4096");
    };
    assert_eq!(d.path, bin);
    assert_eq!(
        d.kind,
        DamageKind::Block {
            index: 16,
            offset: 64 + 4096 * 64,
            records: 4096
        }
    );
    assert_eq!(d.after, Some((4096, T0 + 4096 * 100_000_000)));
    assert_eq!(d.until, Some((8193, T0 + 8193 * 100_000_000)));
}

#[test]
fn a_damaged_compressed_block_is_reported_and_none_of_its_records_is_served() {
    let t = TempRoot::new("sealed-damage");
    let root = &t.0;
    let bin = one_hour(root);
    assert!(matches!(
        seal_file(&bin, LEVEL).unwrap(),
        SealOutcome::Sealed { .. }
    ));
    let ix = SealedIndex::read(&std::fs::File::open(&bin).unwrap(), &bin).unwrap();
    assert_eq!(ix.blocks.len(), 3);
    assert_eq!(
        (ix.blocks[1].first_seq, ix.blocks[1].last_seq),
        (4097, 8192)
    );
    // Flip bytes in the middle of compressed block 1.
    let mut b = std::fs::read(&bin).unwrap();
    let mid = (ix.blocks[1].offset + u64::from(ix.blocks[1].len) / 2) as usize;
    for k in 0..4 {
        b[mid + k] ^= 0x5a;
    }
    std::fs::write(&bin, &b).unwrap();

    let q = Query {
        con_id: CID,
        kinds: vec![RecordKind::TbtLast],
        start_ns: i64::MIN,
        end_ns: i64::MAX,
        limit: None,
        after: None,
        format: Some(Format::Binary),
    };
    let mut it = QueryIter::new(root, &q).unwrap();
    check_block_1_lost(&drain(|| it.next_record()), &bin);

    let mut r = SeqRange::new(CID, EPOCH, 1, 10_000);
    r.gaps = false;
    let mut it = SeqIter::new(root, &r).unwrap();
    check_block_1_lost(&drain(|| it.next_record()), &bin);

    // A read that starts inside the damaged block: the search lands on it, reports it.
    let mut r = SeqRange::new(CID, EPOCH, 5000, 9000);
    r.gaps = false;
    let mut it = SeqIter::new(root, &r).unwrap();
    let items = drain(|| it.next_record());
    assert!(matches!(items[0], Item::Damage(_)), "{:?}", &items[..2]);
    assert!(matches!(items[1], Item::Rec(8193)), "{:?}", &items[..2]);

    let v = validate(root).unwrap();
    assert!(!v.is_ok());
    let out = storage(root, &["export", "--con-id", &CID.to_string()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupt block 16"), "{err}");
    // Never unsealed (or resealed) with a damaged block.
    assert!(sealed::unseal_file(&bin).is_err());
}

#[test]
fn a_damaged_index_makes_the_whole_segment_damaged_not_wrong() {
    let t = TempRoot::new("sealed-index");
    let root = &t.0;
    let bin = one_hour(root);
    seal_file(&bin, LEVEL).unwrap();
    let mut b = std::fs::read(&bin).unwrap();
    let n = b.len();
    // The first index entry's first_seq (the index ends the file: 3 entries, 40 crcs, crc).
    let at = n - 4 - 40 * 4 - 3 * 48 + 16;
    b[at] ^= 1;
    std::fs::write(&bin, &b).unwrap();
    let q = Query {
        con_id: CID,
        kinds: vec![],
        start_ns: i64::MIN,
        end_ns: i64::MAX,
        limit: None,
        after: None,
        format: Some(Format::Binary),
    };
    let mut it = QueryIter::new(root, &q).unwrap();
    match it.next_record() {
        Err(QueryError::Damaged(d)) => {
            assert!(matches!(d.kind, DamageKind::Header { .. }), "{d:?}");
            assert!(d.to_string().contains("index checksum"), "{d}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(it.next_record(), Ok(None)));
    assert!(!validate(root).unwrap().is_ok());
}

#[test]
fn a_crash_at_any_step_of_a_seal_loses_nothing() {
    let t = TempRoot::new("sealed-crash");
    let root = &t.0;
    let bin = one_hour(root);
    let all = |root: &Path| {
        let mut r = SeqRange::new(CID, EPOCH, 1, u64::MAX);
        r.gaps = false;
        let mut it = SeqIter::new(root, &r).unwrap();
        let mut v = Vec::new();
        while let Some(rec) = it.next_record().unwrap() {
            v.push(rec);
        }
        v
    };
    let want = all(root);
    assert_eq!(want.len(), 10_000);

    // 1. Killed while writing the temporary file: a torn `X.bin.sealing` beside the raw file.
    let tmp = sealing_path(&bin);
    std::fs::write(&tmp, b"IBSBINZ\0 torn").unwrap();
    assert_eq!(all(root), want, "readers never see the temporary file");
    assert!(validate(root).unwrap().is_ok());
    assert_eq!(bin_files(root), vec![bin.clone()]);

    // 2. The next seal removes it and seals.
    assert!(matches!(
        seal_file(&bin, LEVEL).unwrap(),
        SealOutcome::Sealed { .. }
    ));
    assert!(!tmp.exists());
    assert_eq!(all(root), want);

    // 3. Killed after the rename, before the old checksums were removed: they are ignored,
    //    and the next seal removes them.
    let crc = sidecar_path(&bin, "crc");
    std::fs::write(&crc, [0u8; 40 * 4]).unwrap();
    assert_eq!(all(root), want);
    assert!(validate(root).unwrap().is_ok());
    assert_eq!(seal_file(&bin, LEVEL).unwrap(), SealOutcome::AlreadySealed);
    assert!(!crc.exists());
    assert_eq!(all(root), want);
}

#[test]
fn a_sealed_hour_is_unsealed_before_the_recorder_appends_to_it_or_cuts_it() {
    let t = TempRoot::new("sealed-reopen");
    let root = &t.0;
    let bin = one_hour(root);
    seal_file(&bin, LEVEL).unwrap();
    let mut strings = LocalStrings::default();
    let ex = strings.intern(b"CME");
    let key = SegmentKey::for_record(&trade(1, ex), EPOCH).unwrap();
    let mut w = BinarySegmentWriter::open(root, key, T0).unwrap();
    assert!(!is_sealed(&bin).unwrap());
    for seq in 10_001..=10_010 {
        w.push(&trade(seq, ex), &strings).unwrap();
    }
    w.close(false).unwrap();
    let s = BinarySegment::read(&bin).unwrap();
    assert_eq!(s.records.len(), 10_010);
    assert!(s.verify().bad_blocks.is_empty());

    // The restart cut-back of a sealed hour holding records past the checkpoint.
    seal_file(&bin, LEVEL).unwrap();
    let rep = truncate_after(root, Format::Binary, EPOCH, 9_000, T0).unwrap();
    assert_eq!(rep.files_truncated, 1, "{rep:?}");
    let s = BinarySegment::read(&bin).unwrap();
    assert_eq!(s.records.last().map(|r| r.seq), Some(9_000));
    assert!(s.verify().bad_blocks.is_empty());
    assert!(validate(root).unwrap().is_ok());
    // Nothing past the cut: a sealed segment is left as it is.
    seal_file(&bin, LEVEL).unwrap();
    let rep = truncate_after(root, Format::Binary, EPOCH, 9_000, T0).unwrap();
    assert_eq!(rep.files_truncated, 0);
    assert!(is_sealed(&bin).unwrap());
}

#[test]
fn storage_seal_leaves_the_open_hours_and_a_damaged_segment_raw() {
    let t = TempRoot::new("sealed-cli");
    let root = &t.0;
    standard_store(root);
    let files = bin_files(root);
    // Damage one raw block of the largest file: it must stay raw for validate to report.
    let bad = files
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut b = std::fs::read(bad).unwrap();
    b[64 + 10 * 64 + 40] ^= 0xff;
    std::fs::write(bad, &b).unwrap();
    let out = storage(root, &["seal", "--grace", "0s", "--level", "3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("left raw:") && text.contains("checksum mismatch"),
        "{text}"
    );
    assert!(!is_sealed(bad).unwrap());
    assert!(
        files
            .iter()
            .filter(|p| *p != bad)
            .all(|p| is_sealed(p).unwrap())
    );
    let out = storage(root, &["stats", "--format", "binary"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
