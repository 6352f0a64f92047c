//! `/v3/history/{conId}` over real recorder files: the web server's answer, paged through its
//! cursor, is exactly what the storage query library reads, in the same order.

mod serve_support;
mod storage_query_support;

use std::sync::Arc;

use ib_stream::serve::storage_history::StorageHistory;
use ib_stream::storage::query::{Query, query_json};
use ib_stream_ipc::RecordKind;
use serde_json::Value;
use serve_support::*;
use storage_query_support::{CID, TempRoot, standard_store};

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
