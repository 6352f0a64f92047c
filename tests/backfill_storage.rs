//! Backfilled ticks in every reader of storage: the query and export, `/v3/history`, the
//! sequence replay behind `since=` and resume, and the studies' storage input. Each returns
//! them in their place by time, marked `backfill`, and the gap says its fill state.

mod serve_support;
mod storage_query_support;

use std::sync::Arc;

use ib_stream::serve::HistorySource;
use ib_stream::serve::history::{SeqItem, SeqQuery};
use ib_stream::serve::params::TickType;
use ib_stream::serve::storage_history::StorageHistory;
use ib_stream::storage::Format;
use ib_stream::storage::backfill::{FillKey, FillRecord, FillState, StoreOutcome, store_fill};
use ib_stream::storage::query::{Query, query_json};
use ib_stream::tickjson::{LocalStrings, StringIntern};
use ib_stream_ipc::{PRICE_SCALE, Record, RecordKind, SIZE_SCALE, Trade};
use serde_json::Value;
use serve_support::*;
use storage_query_support::{CID, EPOCH_A, T0, TempRoot, epoch_records, write_store};

const SEC: i64 = 1_000_000_000;

struct Fixture {
    /// The gap record (epoch A).
    gap: Record,
    /// The interval filled, whole seconds inside the gap.
    t0: i64,
    t1: i64,
    /// The backfilled ticks, in IB's order.
    mids: Vec<Record>,
    trades: Vec<Record>,
}

/// Epoch A with a gap of about 12 s (sequences 1502..=1504 lost), then its fill: mid points
/// (filled) and trades (partial: the last second missing).
fn store(root: &std::path::Path) -> Fixture {
    let mut strings = LocalStrings::default();
    let mut a = epoch_records(3000, T0 + 123_456_789, 3_100_000_000, &mut strings, true);
    let gi = a
        .iter()
        .position(|r| r.kind == RecordKind::Gap as u8)
        .unwrap();
    let before = a[gi - 1].ts_recv;
    let after = a[gi + 1].ts_recv;
    a[gi].body[2] = before;
    a[gi].body[3] = after;
    write_store(root, EPOCH_A, &a, &strings);
    let gap = a[gi];
    let t0 = (before / SEC + 1) * SEC;
    let t1 = after / SEC * SEC;
    assert!(t1 - t0 >= 8 * SEC, "a gap of several whole seconds");

    let mut bf = LocalStrings::default();
    let nyse = bf.intern(b"ISLAND");
    let (mut mids, mut trades) = (Vec::new(), Vec::new());
    let mut s = t0;
    let mut i = 0i64;
    while s < t1 {
        for k in 0..3 {
            // IB's order within a second is not the price order: kept as sent.
            mids.push(Record::mid_point(
                CID,
                s,
                (21_000 + 10 * i + (2 - k)) * PRICE_SCALE,
            ));
        }
        for k in 0..2 {
            let mut r = Record::trade(
                false,
                CID,
                s,
                Trade {
                    price: (21_000 + 10 * i + k) * PRICE_SCALE,
                    size: (k + 1) * SIZE_SCALE,
                    exchange_id: nyse,
                    conditions_id: 0,
                },
            );
            r.ts_recv = s;
            trades.push(r);
        }
        s += SEC;
        i += 1;
    }
    for r in &mut mids {
        r.ts_recv = r.ts_event;
    }
    let key = |kind| FillKey {
        gap_epoch: EPOCH_A,
        gap_seq: gap.seq,
        con_id: CID,
        kind,
    };
    let fill = FillRecord::new(key(RecordKind::TbtMidPoint), t0, t1, FillState::Filled);
    let out = store_fill(root, &Format::ALL, fill, &mids, &bf, 1).unwrap();
    assert_eq!(out, StoreOutcome::Stored(mids.len() as u64));
    let partial = FillState::Partial {
        missing: vec![[t1 - SEC, t1]],
        why: "no data".into(),
    };
    trades.retain(|r| r.ts_recv < t1 - SEC);
    let fill = FillRecord::new(key(RecordKind::TbtLast), t0, t1, partial);
    store_fill(root, &Format::ALL, fill, &trades, &bf, 1).unwrap();
    Fixture {
        gap,
        t0,
        t1,
        mids,
        trades,
    }
}

fn rfc3339(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        .unwrap()
        .to_string()
}

fn is_backfill(v: &Value) -> bool {
    v["backfill"] == Value::Bool(true)
}

#[test]
fn the_query_and_export_return_backfilled_ticks_in_place_and_the_gap_its_fill_state() {
    let root = TempRoot::new("backfill-query");
    let fx = store(&root.0);
    for format in Format::ALL {
        let mut q = Query::new(CID, fx.t0 - 20 * SEC, fx.t1 + 20 * SEC);
        q.kinds = vec![
            RecordKind::TbtMidPoint,
            RecordKind::TbtLast,
            RecordKind::Gap,
        ];
        q.format = Some(format);
        let lines: Vec<Value> = query_json(&root.0, &q)
            .unwrap()
            .map(|r| serde_json::from_slice(&r.unwrap().1).unwrap())
            .collect();
        // In order by time, live and backfilled together.
        let st: Vec<i64> = lines.iter().map(|v| v["st"].as_i64().unwrap()).collect();
        assert!(
            st.windows(2).all(|w| w[0] <= w[1]),
            "{format:?}: time order"
        );
        let filled: Vec<&Value> = lines.iter().filter(|v| is_backfill(v)).collect();
        assert_eq!(filled.len(), fx.mids.len() + fx.trades.len(), "{format:?}");
        // Every one inside the filled interval; live ticks never inside it.
        for v in &lines {
            let us = v["st"].as_i64().unwrap();
            let inside = us >= fx.t0 / 1000 && us < fx.t1 / 1000;
            if v["tt"] != "gap" {
                assert_eq!(inside, is_backfill(v), "{format:?}: {v}");
            }
        }
        // IB's order within a second is kept (mid points: 2, 1, 0 of each second).
        let mids: Vec<i64> = filled
            .iter()
            .filter(|v| v["tt"] == "mid_point")
            .map(|v| v["mp"].as_f64().unwrap() as i64)
            .collect();
        let want: Vec<i64> = fx.mids.iter().map(|r| r.body[0] / PRICE_SCALE).collect();
        assert_eq!(mids, want, "{format:?}");
        let trade = filled.iter().find(|v| v["tt"] == "last").unwrap();
        assert_eq!(trade["x"], "ISLAND", "{format:?}: strings kept");
        // The gap says how it was filled, per kind of the query.
        let gap = lines.iter().find(|v| v["tt"] == "gap").unwrap();
        let fill = gap["fill"].as_array().expect("fill states");
        let by_tt = |tt: &str| fill.iter().find(|f| f["tt"] == tt).unwrap().clone();
        assert_eq!(by_tt("mid_point")["state"], "filled");
        assert_eq!(by_tt("mid_point")["n"], fx.mids.len() as u64);
        assert_eq!(by_tt("last")["state"], "partial");
        assert_eq!(by_tt("last")["missing"][0][0], fx.t1 - SEC);
    }
    // A query without mid points does not report their fill.
    let mut q = Query::new(CID, fx.t0 - 20 * SEC, fx.t1 + 20 * SEC);
    q.kinds = vec![RecordKind::TbtLast, RecordKind::Gap];
    let gap: Value = query_json(&root.0, &q)
        .unwrap()
        .map(|r| serde_json::from_slice::<Value>(&r.unwrap().1).unwrap())
        .find(|v| v["tt"] == "gap")
        .unwrap();
    assert_eq!(gap["fill"].as_array().unwrap().len(), 1);
}

#[test]
fn export_marks_backfilled_rows() {
    let root = TempRoot::new("backfill-export");
    let fx = store(&root.0);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ib-stream"))
        .args(["storage", "--storage"])
        .arg(&root.0)
        .args([
            "export",
            "--con-id",
            &CID.to_string(),
            "--kinds",
            "last",
            "--start",
            &rfc3339(fx.t0),
            "--end",
            &rfc3339(fx.t1),
            "--format",
            "csv",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), fx.trades.len(), "{csv}");
    assert!(rows.iter().all(|r| r.ends_with(",backfill")), "{csv}");
}

fn seq_query(first_seq: u64) -> SeqQuery {
    SeqQuery {
        epoch: EPOCH_A,
        con_id: CID,
        tick_types: vec![TickType::MidPoint, TickType::Last],
        first_seq,
        last_seq: u64::MAX,
        start_ns: None,
        live_epoch: false,
        limit: 100_000,
    }
}

#[test]
fn the_sequence_replay_sends_the_fill_right_after_its_gap() {
    let root = TempRoot::new("backfill-replay");
    let fx = store(&root.0);
    let h = StorageHistory::new(&root.0);
    assert_eq!(
        h.epochs_since(CID, &[TickType::MidPoint, TickType::Last], T0)
            .unwrap(),
        vec![EPOCH_A],
        "a fill is no run of its own"
    );
    let items = h.by_seq(&seq_query(1)).unwrap().unwrap().items;
    let gi = items
        .iter()
        .position(|i| matches!(i, SeqItem::Gap { .. }))
        .expect("the gap");
    let SeqItem::Gap { seq, fill, .. } = &items[gi] else {
        unreachable!()
    };
    assert_eq!(*seq, fx.gap.seq);
    let fill: Value = serde_json::from_slice(fill.as_ref().expect("fill states")).unwrap();
    assert_eq!(fill.as_array().unwrap().len(), 2);
    let n = fx.mids.len() + fx.trades.len();
    let after: Vec<Value> = items[gi + 1..gi + 1 + n]
        .iter()
        .map(|i| match i {
            SeqItem::Tick { seq, json } => {
                assert_eq!(*seq, fx.gap.seq, "under the gap's sequence");
                serde_json::from_slice(json).unwrap()
            }
            SeqItem::Gap { .. } => panic!("a second gap"),
        })
        .collect();
    assert!(after.iter().all(is_backfill));
    let st: Vec<i64> = after.iter().map(|v| v["st"].as_i64().unwrap()).collect();
    assert!(st.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(st[0], fx.t0 / 1000);
    // The next item is live again, after the gap's sequences.
    match &items[gi + 1 + n] {
        SeqItem::Tick { seq, json } => {
            let v: Value = serde_json::from_slice(json).unwrap();
            assert!(!is_backfill(&v));
            assert!(*seq > fx.gap.body[1] as u64);
        }
        SeqItem::Gap { .. } => panic!("a gap after the fill"),
    }
    // A resume after the gap's sequence sends neither the gap nor its fill again.
    let later = h.by_seq(&seq_query(fx.gap.seq + 1)).unwrap().unwrap().items;
    assert!(later.iter().all(|i| match i {
        SeqItem::Tick { json, .. } => !is_backfill(&serde_json::from_slice(json).unwrap()),
        SeqItem::Gap { .. } => false,
    }));
}

#[tokio::test]
async fn rest_history_includes_backfilled_ticks_marked() {
    let root = TempRoot::new("backfill-rest");
    let fx = store(&root.0);
    let env = Env::new(EnvOpts {
        history: Some(Arc::new(StorageHistory::new(&root.0))),
        ..EnvOpts::default()
    })
    .await;
    let uri = format!(
        "/v3/history/{CID}?tick_types=mid_point&start={}&end={}&limit=1000",
        fx.t0 / 1000 - 20_000_000,
        fx.t1 / 1000 + 20_000_000
    );
    let v = body_json(env.get(&uri).await).await;
    let ticks = v["ticks"].as_array().unwrap();
    let filled: Vec<&Value> = ticks.iter().filter(|t| is_backfill(t)).collect();
    assert_eq!(filled.len(), fx.mids.len());
    assert!(ticks.len() > filled.len(), "live ticks around them");
    let st: Vec<i64> = ticks.iter().map(|t| t["st"].as_i64().unwrap()).collect();
    assert!(st.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn studies_read_backfilled_trades_in_place() {
    use ib_stream::studies::input::{Input, Selection, storage};
    use ib_stream::studies::{Event, TickKind, TradeKind};
    let root = TempRoot::new("backfill-studies");
    let fx = store(&root.0);
    let sel = Selection {
        con_id: CID,
        trades: TradeKind::Last,
        from_us: Some(fx.t0 / 1000 - 20_000_000),
        to_us: Some(fx.t1 / 1000 + 20_000_000),
    };
    let mut ticks = Vec::new();
    storage(&root.0, &sel, &mut |i| {
        if let Input::Event(Event::Tick(t)) = i
            && let TickKind::Trade { price, .. } = t.kind
        {
            ticks.push((t.t_us, price));
        }
        Ok(())
    })
    .unwrap();
    assert!(ticks.windows(2).all(|w| w[0].0 <= w[1].0));
    let inside: Vec<i64> = ticks
        .iter()
        .filter(|(t, _)| *t >= fx.t0 / 1000 && *t < fx.t1 / 1000)
        .map(|(_, p)| *p)
        .collect();
    let want: Vec<i64> = fx.trades.iter().map(|r| r.body[0]).collect();
    assert_eq!(inside, want);
}

#[tokio::test]
async fn the_backfill_endpoint_shows_its_status_file() {
    use ib_stream::backfill::status::{BackfillStatus, store as store_status};
    let root = TempRoot::new("backfill-endpoint");
    let env = Env::new(EnvOpts {
        history: Some(Arc::new(StorageHistory::new(&root.0))),
        ..EnvOpts::default()
    })
    .await;
    let v = body_json(env.get("/v3/backfill").await).await;
    assert_eq!(v["present"], false);
    let s = BackfillStatus {
        pid: 42,
        state: "filling".into(),
        client_id: 13,
        queue_depth: 7,
        budget_used: 58,
        budget_max: 60,
        pacing_violations: 0,
        eta_s: 540,
        ..BackfillStatus::default()
    };
    store_status(&root.0, &s).unwrap();
    let v = body_json(env.get("/v3/backfill").await).await;
    assert_eq!(v["present"], true);
    assert_eq!(v["status"]["queue_depth"], 7);
    assert_eq!(v["status"]["budget_used"], 58);
    assert_eq!(v["status"]["eta_s"], 540);
    assert_eq!(v["status"]["client_id"], 13);
}
