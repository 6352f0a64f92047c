//! Damaged history is never served as if it were good: a binary block whose checksum fails
//! is reported (query library, by-sequence reader, `/v3/history`, `storage export`) and
//! none of its records is returned; `validate` says whether the other format still holds
//! them; a JSON line that does not decode stops an export unless `--skip-bad` is given.

mod serve_support;
mod storage_query_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use ib_stream::serve::HistorySource;
use ib_stream::serve::history::{SeqItem, SeqQuery};
use ib_stream::serve::params::TickType;
use ib_stream::serve::storage_history::StorageHistory;
use ib_stream::storage::binary::BinarySegmentWriter;
use ib_stream::storage::jsonl::JsonlSegmentWriter;
use ib_stream::storage::query::seq::{SeqIter, SeqRange};
use ib_stream::storage::query::{DamageKind, Query, QueryError, QueryIter};
use ib_stream::storage::{Format, SegmentKey};
use ib_stream::tickjson::{LocalStrings, StringIntern};
use ib_stream_ipc::{Record, Trade};
use serve_support::{Env, EnvOpts, body_json};
use storage_query_support::{CID, T0, TempRoot};

const EPOCH: u64 = 0x99;
/// Prices are on a 0.25 grid.
const TICK: i64 = 250_000_000;

/// 600 trades (blocks 0 and 1 full, block 2 partial), both formats, closed. Returns the
/// binary and JSON Lines files.
fn store(root: &Path) -> (PathBuf, PathBuf) {
    let mut strings = LocalStrings::default();
    let ex = strings.intern(b"CME");
    let key = SegmentKey::for_record(&trade(1, ex), EPOCH).unwrap();
    let mut b = BinarySegmentWriter::open(root, key, T0).unwrap();
    let mut j = JsonlSegmentWriter::open(root, key).unwrap();
    for seq in 1..=600 {
        let r = trade(seq, ex);
        b.push(&r, &strings).unwrap();
        j.push(&r, &strings);
    }
    b.close(false).unwrap();
    j.close(false).unwrap();
    (
        key.path(root, Format::Binary),
        key.path(root, Format::Jsonl),
    )
}

fn trade(seq: u64, ex: u32) -> Record {
    let mut r = Record::trade(
        false,
        CID,
        T0,
        Trade {
            price: 5000 * TICK + seq as i64 * TICK,
            size: 100_000_000,
            exchange_id: ex,
            conditions_id: 0,
        },
    );
    r.seq = seq;
    r.ts_recv = T0 + seq as i64 * 1_000_000;
    r
}

/// Flips 4 bytes of record `i`'s price (body at byte 32 of the record).
fn flip_price(bin: &Path, i: usize) {
    let mut b = std::fs::read(bin).unwrap();
    for k in 0..4 {
        b[64 + i * 64 + 32 + k] ^= 0x5a;
    }
    std::fs::write(bin, &b).unwrap();
}

fn storage(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ib-stream"))
        .arg("storage")
        .arg("--storage")
        .arg(root)
        .args(args)
        .env_remove("IB_STREAM_STORAGE_PATH")
        .output()
        .expect("run ib-stream")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Records and damage of a read, in order.
#[derive(Debug)]
enum Item {
    Rec(u64, i64),
    Damage(Box<ib_stream::storage::query::Damage>),
}

fn drain(mut next: impl FnMut() -> Result<Option<Record>, QueryError>) -> Vec<Item> {
    let mut out = Vec::new();
    loop {
        match next() {
            Ok(Some(r)) => out.push(Item::Rec(r.seq, r.body[0])),
            Ok(None) => return out,
            Err(QueryError::Damaged(d)) => out.push(Item::Damage(d)),
            Err(e) => panic!("{e}"),
        }
    }
}

/// Records 1..=256 and 513..=600, with the damage of block 1 (257..=512) between them.
fn check_block_1(items: &[Item], bin: &Path) {
    let seqs: Vec<u64> = items
        .iter()
        .filter_map(|i| match i {
            Item::Rec(s, p) => {
                assert_eq!(p % TICK, 0, "seq {s}: an off-grid price was served");
                Some(*s)
            }
            Item::Damage(_) => None,
        })
        .collect();
    let want: Vec<u64> = (1..=256).chain(513..=600).collect();
    assert_eq!(seqs, want);
    let Item::Damage(d) = &items[256] else {
        panic!("no damage after seq 256: {:?}", &items[255..258]);
    };
    assert_eq!(d.path, bin);
    assert_eq!(
        d.kind,
        DamageKind::Block {
            index: 1,
            offset: 64 + 256 * 64,
            records: 256
        }
    );
    assert_eq!(d.after, Some((256, T0 + 256_000_000)));
    assert_eq!(d.until, Some((513, T0 + 513_000_000)));
    assert!(d.to_string().contains("corrupt block 1"), "{d}");
}

#[tokio::test]
async fn a_damaged_block_is_reported_and_its_records_never_served() {
    let root = TempRoot::new("damage-block");
    let (bin, jsonl) = store(&root.0);
    // Record 300 is in block 1 (records 256..512, seq 257..=512).
    flip_price(&bin, 299);

    // The query library and the by-sequence reader.
    let mut q = Query::new(CID, 0, i64::MAX);
    q.format = Some(Format::Binary);
    let mut it = QueryIter::new(&root.0, &q).unwrap();
    check_block_1(&drain(|| it.next_record()), &bin);
    let mut r = SeqRange::new(CID, EPOCH, 1, u64::MAX);
    r.format = Some(Format::Binary);
    let mut it = SeqIter::new(&root.0, &r).unwrap();
    check_block_1(&drain(|| it.next_record()), &bin);
    // A read that starts after the block does not report it; one inside it does.
    let mut q = Query::new(CID, T0 + 520_000_000, i64::MAX);
    q.format = Some(Format::Binary);
    let mut it = QueryIter::new(&root.0, &q).unwrap();
    assert!(
        drain(|| it.next_record())
            .iter()
            .all(|i| matches!(i, Item::Rec(..)))
    );
    let mut r = SeqRange::new(CID, EPOCH, 300, 310);
    r.format = Some(Format::Binary);
    let mut it = SeqIter::new(&root.0, &r).unwrap();
    let items = drain(|| it.next_record());
    assert!(matches!(items.as_slice(), [Item::Damage(_)]), "{items:?}");

    // Replay by sequence (resume, since=): a gap with reason corrupt_block in its place.
    let h = StorageHistory::new(&root.0);
    let page = h
        .by_seq(&SeqQuery {
            epoch: EPOCH,
            con_id: CID,
            tick_types: vec![TickType::Last],
            first_seq: 250,
            last_seq: 520,
            start_ns: None,
            live_epoch: false,
            limit: 1000,
        })
        .unwrap()
        .unwrap();
    let gaps: Vec<_> = page
        .items
        .iter()
        .filter_map(|i| match i {
            SeqItem::Gap { info, .. } => Some(info),
            SeqItem::Tick { .. } => None,
        })
        .collect();
    assert_eq!(gaps.len(), 1);
    assert_eq!(
        (gaps[0].reason, gaps[0].first_seq, gaps[0].last_seq),
        ("corrupt_block", 257, 512)
    );
    assert_eq!(page.items.len(), 7 + 1 + 8);

    // /v3/history: a gap item with reason corrupt_block where the block was; no tick of it.
    let env = Env::new(EnvOpts {
        history: Some(Arc::new(StorageHistory::new(&root.0))),
        ..EnvOpts::default()
    })
    .await;
    let resp = env
        .get(&format!("/v3/history/{CID}?tick_types=last&limit=1000"))
        .await;
    assert_eq!(resp.status(), 200);
    let v = body_json(resp).await;
    let ticks = v["ticks"].as_array().unwrap();
    assert_eq!(ticks.len(), 256 + 1 + 88);
    let marker = &ticks[256];
    assert_eq!(marker["tt"], "gap");
    assert_eq!(marker["r"], "corrupt_block");
    assert_eq!(
        (marker["from"].as_u64(), marker["to"].as_u64()),
        (Some(257), Some(512))
    );
    assert_eq!(marker["block"], 1);
    assert_eq!(marker["offset"], 64 + 256 * 64);
    assert!(marker["file"].as_str().unwrap().ends_with(".bin"));
    for t in ticks.iter().filter(|t| t["tt"] == "last") {
        let s = t["seq"].as_u64().unwrap();
        assert!(
            !(257..=512).contains(&s),
            "seq {s} of the damaged block was served"
        );
    }

    // export: stops at it (non-zero, on stderr) after writing what came before; with
    // --skip-bad it reports it and goes on. Never the off-grid price.
    let off_grid = |csv: &str| {
        csv.lines().skip(1).any(|l| {
            let price: f64 = l.split(',').nth(5).unwrap().parse().unwrap();
            (price * 4.0).fract() != 0.0
        })
    };
    let cid = CID.to_string();
    let args = [
        "export", "--con-id", &cid, "--kinds", "last", "--format", "csv",
    ];
    let o = storage(&root.0, &args);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("corrupt block 1") && err.contains("--skip-bad"),
        "{err}"
    );
    assert_eq!(out.lines().count(), 1 + 256, "{out}");
    assert!(!off_grid(&out));
    let mut skip = args.to_vec();
    skip.push("--skip-bad");
    let o = storage(&root.0, &skip);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("skipped") && err.contains("corrupt block 1"),
        "{err}"
    );
    assert!(err.contains("1 damaged parts skipped"), "{err}");
    assert_eq!(out.lines().count(), 1 + 256 + 88);
    assert!(!off_grid(&out));

    // validate: names the block and says the JSONL file still holds its 256 records.
    let o = storage(&root.0, &["validate"]);
    let out = text(&o.stdout);
    assert!(!o.status.success());
    assert!(
        out.contains("block 1")
            && out.contains("the jsonl copy")
            && out.contains("holds these 256 records (seq 257..=512) intact: a repair source"),
        "{out}"
    );
    // And the other way: a damaged line of the JSONL file, whose binary copy is intact.
    flip_price(&bin, 299);
    let mut j = std::fs::read(&jsonl).unwrap();
    let at = text(&j).find("{\"seq\":300,").unwrap();
    j[at + 3] = b'#';
    std::fs::write(&jsonl, &j).unwrap();
    let out = text(&storage(&root.0, &["validate"]).stdout);
    assert!(
        out.contains("line 300")
            && out.contains("the binary copy")
            && out.contains("holds 1 records of seq 300..=300 intact: a repair source"),
        "{out}"
    );
}

#[test]
fn a_bad_jsonl_line_stops_an_export_unless_skip_bad_is_given() {
    let root = TempRoot::new("damage-line");
    let (_, jsonl) = store(&root.0);
    let mut j = std::fs::read(&jsonl).unwrap();
    let at = text(&j).find("{\"seq\":123,").unwrap();
    j[at + 1] = b'!';
    std::fs::write(&jsonl, &j).unwrap();
    let cid = CID.to_string();
    let args = [
        "export", "--con-id", &cid, "--kinds", "last", "--from", "jsonl",
    ];
    let o = storage(&root.0, &args);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    let place = format!("{}:123:", jsonl.display());
    assert!(err.contains(&place), "{err}");
    assert_eq!(text(&o.stdout).lines().count(), 122);
    let mut skip = args.to_vec();
    skip.push("--skip-bad");
    let o = storage(&root.0, &skip);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&place) && err.contains("1 damaged parts skipped"),
        "{err}"
    );
    assert_eq!(out.lines().count(), 599);
    assert!(!out.contains("\"seq\":123,"));
}
