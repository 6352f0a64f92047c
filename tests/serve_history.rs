//! `/v3/history/{conId}` over real recorder files: the web server's answer, paged through its
//! cursor, is exactly what the storage query library reads, in the same order.

mod serve_support;
mod storage_query_support;

use std::sync::Arc;

use ib_stream::serve::HistorySource;
use ib_stream::serve::history::{SeqItem, SeqQuery};
use ib_stream::serve::params::TickType;
use ib_stream::serve::storage_history::StorageHistory;
use ib_stream::storage::checkpoint::{Checkpoint, OwedGap};
use ib_stream::storage::query::{Query, query_json};
use ib_stream_ipc::RecordKind;
use serde_json::Value;
use serve_support::*;
use storage_query_support::{CID, EPOCH_A, EPOCH_B, T0, TempRoot, standard_store};

#[tokio::test]
async fn history_pages_equal_the_stored_ticks() {
    let root = TempRoot::new("serve-history");
    let (all, _) = standard_store(&root.0);
    let env = Env::new(EnvOpts {
        history: Some(Arc::new(StorageHistory::new(&root.0))),
        ..EnvOpts::default()
    })
    .await;

    // What the library reads for the same question, encoded once.
    let mut q = Query::new(CID, 0, i64::MAX);
    q.kinds = vec![RecordKind::TbtBidAsk, RecordKind::TbtLast];
    let want: Vec<Value> = query_json(&root.0, &q)
        .unwrap()
        .map(|r| serde_json::from_slice(&r.unwrap().1).unwrap())
        .collect();
    let stored = all
        .iter()
        .filter(|(_, r)| {
            r.instrument_id == CID
                && matches!(r.kind(), Some(RecordKind::TbtBidAsk | RecordKind::TbtLast))
        })
        .count();
    assert_eq!(want.len(), stored, "the library returns every stored tick");

    let mut got: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let uri = match &cursor {
            None => format!("/v3/history/{CID}?tick_types=bid_ask,last&limit=250"),
            Some(c) => format!("/v3/history/{CID}?tick_types=bid_ask,last&limit=250&cursor={c}"),
        };
        let r = env.get(&uri).await;
        assert_eq!(r.status(), 200, "{uri}");
        let v = body_json(r).await;
        let ticks = v["ticks"].as_array().unwrap();
        assert_eq!(v["count"].as_u64().unwrap() as usize, ticks.len());
        got.extend(ticks.iter().cloned());
        pages += 1;
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 100, "paging does not end");
    }
    assert!(pages > 1, "the range spans several pages");
    assert_eq!(got, want);

    // A time range narrows it; a bad cursor is a 400, not a 500.
    let first_st = want[10]["st"].as_i64().unwrap();
    let r = env
        .get(&format!(
            "/v3/history/{CID}?tick_types=bid_ask,last&start={first_st}&limit=5"
        ))
        .await;
    let v = body_json(r).await;
    assert_eq!(v["ticks"][0], want[10]);
    assert_eq!(
        env.get(&format!("/v3/history/{CID}?cursor=12-zz-1"))
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn an_empty_store_is_an_empty_history() {
    let root = TempRoot::new("serve-history-empty");
    let env = Env::new(EnvOpts {
        history: Some(Arc::new(StorageHistory::new(&root.0.join("nothing-yet")))),
        ..EnvOpts::default()
    })
    .await;
    let r = env.get(&format!("/v3/history/{CID}?tick_types=last")).await;
    assert_eq!(r.status(), 200);
    let v = body_json(r).await;
    assert_eq!(v["count"], 0);
    assert_eq!(v["next_cursor"], Value::Null);
}

/// The stored items of `epoch` a by-sequence read must return: CID's bid_ask and last
/// ticks (their JSON) and the gap records, in sequence order.
fn stored_items(
    all: &[(u64, ib_stream_ipc::Record)],
    strings: &ib_stream::tickjson::LocalStrings,
    epoch: u64,
) -> Vec<(u64, Option<Value>)> {
    all.iter()
        .filter(|(e, _)| *e == epoch)
        .filter_map(|(_, r)| match r.kind() {
            Some(RecordKind::Gap) => Some((r.seq, None)),
            Some(RecordKind::TbtBidAsk | RecordKind::TbtLast) if r.instrument_id == CID => {
                let mut out = Vec::new();
                ib_stream::tickjson::encode(r, strings, &mut out);
                Some((r.seq, Some(serde_json::from_slice(&out).unwrap())))
            }
            _ => None,
        })
        .collect()
}

fn seq_query(epoch: u64, first_seq: u64, live_epoch: bool, limit: usize) -> SeqQuery {
    SeqQuery {
        epoch,
        con_id: CID,
        tick_types: vec![TickType::BidAsk, TickType::Last],
        first_seq,
        last_seq: u64::MAX,
        start_ns: None,
        live_epoch,
        limit,
    }
}

fn as_items(items: &[SeqItem]) -> Vec<(u64, Option<Value>)> {
    items
        .iter()
        .map(|i| match i {
            SeqItem::Tick { seq, json } => (*seq, Some(serde_json::from_slice(json).unwrap())),
            SeqItem::Gap { seq, .. } => (*seq, None),
        })
        .collect()
}

#[test]
fn by_sequence_pages_are_the_stored_items_and_stop_at_the_checkpoint() {
    let root = TempRoot::new("serve-history-seq");
    let (all, strings) = standard_store(&root.0);
    let h = StorageHistory::new(&root.0);
    assert_eq!(
        h.epochs_since(CID, &[TickType::BidAsk, TickType::Last], T0)
            .unwrap(),
        vec![EPOCH_A, EPOCH_B],
        "oldest first"
    );
    // A finished epoch, in pages of 100, each starting after the previous one's `through`.
    let want = stored_items(&all, &strings, EPOCH_A);
    let mut got = Vec::new();
    let mut next = 1;
    let mut pages = 0;
    loop {
        let p = h
            .by_seq(&seq_query(EPOCH_A, next, false, 100))
            .unwrap()
            .unwrap();
        got.extend(as_items(&p.items));
        pages += 1;
        if p.items.len() < 100 {
            assert_eq!(p.through, u64::MAX, "a short page covers the rest");
            break;
        }
        assert_eq!(p.through, p.items.last().unwrap().seq());
        next = p.through + 1;
    }
    assert!(pages > 5);
    assert_eq!(got, want);
    let gap = h
        .by_seq(&seq_query(EPOCH_A, 1, false, 100_000))
        .unwrap()
        .unwrap()
        .items
        .into_iter()
        .find_map(|i| match i {
            SeqItem::Gap { info, .. } => Some(info),
            SeqItem::Tick { .. } => None,
        })
        .expect("the stored gap");
    assert_eq!(
        (gap.reason, gap.first_seq, gap.last_seq),
        ("disconnected", 1502, 1504)
    );

    // The epoch being recorded: only up to the checkpoint, less what a format still owes.
    let live = |first| {
        h.by_seq(&seq_query(EPOCH_B, first, true, 100_000))
            .unwrap()
            .unwrap()
    };
    let p = live(1);
    assert_eq!(
        (p.items.len(), p.through),
        (0, 0),
        "no checkpoint: nothing is final"
    );
    let mut cp = Checkpoint {
        version: 1,
        epoch: format!("{EPOCH_B:016x}"),
        last_seq: 200,
        last_ts_ns: 0,
        scan_from_hour_ns: 0,
        epoch_complete: false,
        owed_gaps: Vec::new(),
        writer_pid: 1,
        written_ns: 0,
    };
    cp.store(&root.0, false).unwrap();
    let p = live(1);
    assert_eq!(p.through, 200);
    let want_b: Vec<_> = stored_items(&all, &strings, EPOCH_B)
        .into_iter()
        .filter(|(s, _)| *s <= 200)
        .collect();
    assert_eq!(as_items(&p.items), want_b);
    assert_eq!(live(201).through, 200, "nothing after the checkpoint yet");
    cp.owed_gaps.push(OwedGap {
        format: "binary".into(),
        epoch: cp.epoch.clone(),
        from_seq: 150,
        to_seq: 180,
        t0_ns: 0,
        t1_ns: 0,
        error: "disk full".into(),
    });
    cp.store(&root.0, false).unwrap();
    assert_eq!(live(1).through, 149);
    // A's sequences are not B's: the checkpoint of B says nothing about A when A is "live".
    let p = h
        .by_seq(&seq_query(EPOCH_A, 1, true, 100))
        .unwrap()
        .unwrap();
    assert_eq!((p.items.len(), p.through), (0, 0));
}

#[tokio::test]
async fn since_replays_older_epochs_from_the_recorders_files_then_goes_live() {
    let root = TempRoot::new("serve-history-since");
    let (all, strings) = standard_store(&root.0);
    let mut env = Env::new(EnvOpts {
        history: Some(Arc::new(StorageHistory::new(&root.0))),
        ..EnvOpts::default()
    })
    .await;
    let req = axum::http::Request::get(format!(
        "/v3/stream/{CID}?tick_types=bid_ask,last&since={}",
        T0 / 1_000_000
    ))
    .body(axum::body::Body::empty())
    .unwrap();
    let mut sse = SseReader::new(env.request(req).await);
    assert_eq!(sse.expect("info").await.json()["status"], "stream_start");
    assert_eq!(sse.expect("info").await.json()["status"], "history_start");
    let mut got: Vec<(u64, Option<Value>)> = Vec::new();
    let mut epochs = Vec::new();
    let mut changes = Vec::new();
    let live = loop {
        let e = sse.next_non_heartbeat().await.expect("stream open");
        match e.event.as_str() {
            "info" if e.json()["status"] == "history_epoch" => {
                epochs.push(e.json()["epoch"].as_str().unwrap().to_owned());
            }
            "info" if e.json()["status"] == "live" => break e.json(),
            "gap" if e.json()["reason"] == "writer_restart" => {
                // The run change, as a connected client saw it, from the run being replayed.
                let g = e.json();
                assert_eq!(g["epoch"].as_str(), epochs.last().map(String::as_str));
                changes.push(g["new_epoch"].as_str().unwrap().to_owned());
            }
            "tick" => {
                let v = e.json();
                // An older run's tick is a resume point too: its id names the run.
                let run = epochs.last().expect("a run is announced before its ticks");
                assert_eq!(e.id, Some(format!("{run}-{}", v["seq"])));
                got.push((v["seq"].as_u64().unwrap(), Some(v)));
            }
            "gap" => got.push((e.json()["first_seq"].as_u64().unwrap() - 1, None)),
            other => panic!("unexpected {other}: {e:?}"),
        }
    };
    assert_eq!(
        epochs,
        [format!("{EPOCH_A:016x}"), format!("{EPOCH_B:016x}")]
    );
    let current = format!("{:016x}", env.writer.info().epoch);
    assert_eq!(changes, [format!("{EPOCH_B:016x}"), current]);
    let mut want = stored_items(&all, &strings, EPOCH_A);
    want.extend(stored_items(&all, &strings, EPOCH_B));
    assert_eq!(got, want);
    assert_eq!(
        live["history_ticks"].as_u64().unwrap() as usize,
        want.iter().filter(|w| w.1.is_some()).count()
    );
    // Then the ring, with ids.
    let q = env.publish(quote(CID, 7));
    let e = sse.expect("tick").await;
    assert_eq!(e.id, Some(env.id(q.seq)));
    // Replayed ticks are a year old: they are not ring-to-client latencies.
    let m = body_text(env.get("/metrics").await).await;
    assert!(
        m.contains("ib_stream_serve_delivery_latency_us_count 1\n"),
        "{m}"
    );
}
