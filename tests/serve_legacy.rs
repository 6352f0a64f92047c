//! The original IB-Stream's routes on today's data, route by route: `/v3/info`,
//! `/v3/buffer/{cid}/info`, `/v3/buffer/{cid}/query` and `/v3/storage/stats` over real
//! recorder files, and ib-contract's `/lookup`, `/contracts/{cid}` and `/cache/status`
//! through the (test) engine's control socket, on the web port and on the contract port.

mod serve_support;
mod storage_query_support;

use std::sync::Arc;
use std::time::Duration;

use ib_stream::serve::storage_history::StorageHistory;
use ib_stream::storage::layout::{Format, Stream, all_segments};
use ib_stream::storage::query::{Query, query_json};
use ib_stream_ipc::RecordKind;
use serde_json::Value;
use serve_support::*;
use storage_query_support::{CID, OTHER_CID, T0, TempRoot, standard_store};

async fn storage_env(root: &std::path::Path) -> Env {
    Env::new(EnvOpts {
        history: Some(Arc::new(StorageHistory::new(root))),
        ..EnvOpts::default()
    })
    .await
}

fn iso_of_ns(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        .unwrap()
        .to_string()
}

/// What the storage library holds for `kinds` of CID with `st` in `[a_us, b_us]`.
fn stored(root: &std::path::Path, kinds: &[RecordKind], a_us: i64, b_us: i64) -> Vec<Value> {
    let mut q = Query::new(CID, a_us * 1000, (b_us + 1) * 1000);
    q.kinds = kinds.to_vec();
    query_json(root, &q)
        .unwrap()
        .map(|r| serde_json::from_slice(&r.unwrap().1).unwrap())
        .collect()
}

#[tokio::test]
async fn buffer_query_honours_time_range_limit_tick_types_and_format() {
    let root = TempRoot::new("legacy-query");
    standard_store(&root.0);
    let env = storage_env(&root.0).await;

    // A range with both ends: every stored bid_ask and last tick inside it, ends included,
    // oldest first, as compact v3 objects.
    let all = stored(
        &root.0,
        &[RecordKind::TbtBidAsk, RecordKind::TbtLast],
        0,
        i64::MAX / 2000,
    );
    let (a, b) = (
        all[20]["st"].as_i64().unwrap(),
        all[80]["st"].as_i64().unwrap(),
    );
    let uri = format!(
        "/v3/buffer/{CID}/query?tick_types=bid_ask,last&start_time={}&end_time={}",
        iso_of_ns(a * 1000),
        iso_of_ns(b * 1000)
    );
    let r = env.get(&uri).await;
    assert_eq!(r.status(), 200, "{uri}");
    let v = body_json(r).await;
    let want = stored(&root.0, &[RecordKind::TbtBidAsk, RecordKind::TbtLast], a, b);
    assert_eq!(want.len(), 61, "both ends are in");
    assert_eq!(v["messages"].as_array().unwrap(), &want);
    assert_eq!(v["total_messages"], 61);
    assert_eq!(v["contract_id"], CID);
    assert_eq!(v["tick_types"], serde_json::json!(["bid_ask", "last"]));
    assert_eq!(v["format"], "jsonl");
    assert_eq!(v["raw_format"], true);
    assert_eq!(v["time_range"]["start"], iso_of_ns(a * 1000));
    let first = &v["messages"][0];
    for k in ["seq", "st", "cid", "tt"] {
        assert!(first.get(k).is_some(), "compact key {k} in {first}");
    }
    assert!(
        first.get("type").is_none() && first.get("data").is_none(),
        "no v2 envelope"
    );

    // The default tick type is bid_ask (the original's); limit cuts; a duration (days, or a
    // bare number of hours) looks back from now, which reaches the stored day.
    for dur in ["1000d", "24000"] {
        let r = env
            .get(&format!(
                "/v3/buffer/{CID}/query?buffer_duration={dur}&limit=3&format=protobuf&raw=true"
            ))
            .await;
        assert_eq!(r.status(), 200);
        let v = body_json(r).await;
        let want = stored(&root.0, &[RecordKind::TbtBidAsk], 0, i64::MAX / 2000);
        assert_eq!(v["messages"].as_array().unwrap(), &want[..3], "{dur}");
        assert_eq!(v["format"], "binary");
        assert!(v["next_cursor"].is_string(), "more follow a full page");
    }
    // The default window, the last hour, holds nothing of 2025.
    let v = body_json(env.get(&format!("/v3/buffer/{CID}/query")).await).await;
    assert_eq!(v["total_messages"], 0);
    // A lone start runs to now.
    let v = body_json(
        env.get(&format!(
            "/v3/buffer/{CID}/query?tick_types=last&start_time={}&limit=2",
            iso_of_ns(T0)
        ))
        .await,
    )
    .await;
    assert_eq!(v["total_messages"], 2);
    assert_eq!(v["messages"][0]["tt"], "last");

    for bad in [
        "format=xml",
        "raw=maybe",
        "tick_types=trades",
        "limit=0",
        "start_time=yesterday&end_time=now",
        "buffer_duration=soon",
        "unknown=1",
    ] {
        let r = env.get(&format!("/v3/buffer/{CID}/query?{bad}")).await;
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(body_json(r).await["error"]["code"], "bad_parameter");
    }
    assert_eq!(env.get("/v3/buffer/0/query").await.status(), 400);
}

#[tokio::test]
async fn buffer_routes_need_storage_and_a_missing_format_is_404() {
    // No history source: the original's 503.
    let env = Env::new(EnvOpts::default()).await;
    for uri in [
        format!("/v3/buffer/{CID}/query"),
        format!("/v3/buffer/{CID}/info"),
        "/v3/storage/stats".to_string(),
    ] {
        let r = env.get(&uri).await;
        assert_eq!(r.status(), 503, "{uri}");
        assert_eq!(body_json(r).await["error"]["code"], "storage_unavailable");
    }
    // Only JSON Lines recorded: the binary format is not there.
    let root = TempRoot::new("legacy-jsonl-only");
    standard_store(&root.0);
    std::fs::remove_dir_all(root.0.join("binary")).unwrap();
    let env = storage_env(&root.0).await;
    let r = env
        .get(&format!("/v3/buffer/{CID}/query?format=protobuf"))
        .await;
    assert_eq!(r.status(), 404);
    let v = body_json(env.get(&format!("/v3/buffer/{CID}/info")).await).await;
    assert_eq!(
        v["v3_storage"]["available_formats"],
        serde_json::json!(["jsonl"])
    );
}

#[tokio::test]
async fn buffer_info_lists_the_contracts_files_per_format() {
    let root = TempRoot::new("legacy-info");
    standard_store(&root.0);
    let env = storage_env(&root.0).await;
    let r = env.get(&format!("/v3/buffer/{CID}/info")).await;
    assert_eq!(r.status(), 200);
    let v = body_json(r).await;
    assert_eq!(v["contract_id"], CID);
    assert_eq!(v["tick_types"], serde_json::json!(["bid_ask", "last"]));
    assert_eq!(v["tracked"], true);
    for format in Format::ALL {
        let want: Vec<_> = all_segments(&root.0, format)
            .unwrap()
            .into_iter()
            .filter(|s| {
                s.key.instrument_id == CID
                    && matches!(
                        s.key.stream,
                        Stream::Kind(RecordKind::TbtBidAsk | RecordKind::TbtLast)
                    )
            })
            .collect();
        let f = format.dir_name();
        let files = v["files"][f].as_array().unwrap();
        assert_eq!(files.len(), want.len(), "{f}");
        assert!(!want.is_empty());
        let bytes: u64 = want
            .iter()
            .map(|s| std::fs::metadata(&s.path).unwrap().len())
            .sum();
        assert_eq!(v["statistics"][f]["total_files"], want.len());
        assert_eq!(v["statistics"][f]["total_size_bytes"], bytes);
        for file in files {
            let path = root.0.join(f).join(file["path"].as_str().unwrap());
            assert!(path.is_file(), "{path:?}");
            assert!(file["modified"].as_str().unwrap().ends_with('Z'));
        }
    }
    // Another contract has other files; mid_point only when asked.
    let v = body_json(
        env.get(&format!("/v3/buffer/{OTHER_CID}/info?tick_types=mid_point"))
            .await,
    )
    .await;
    assert_eq!(v["tracked"], false);
    assert!(
        v["files"]["jsonl"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["tick_type"] == "mid_point")
    );
    assert!(!v["files"]["jsonl"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn storage_stats_count_every_file_and_show_the_recorder() {
    let root = TempRoot::new("legacy-stats");
    standard_store(&root.0);
    let env = storage_env(&root.0).await;
    let r = env.get("/v3/storage/stats").await;
    assert_eq!(r.status(), 200);
    let v = body_json(r).await;
    let s = &v["v3_storage_stats"];
    assert_eq!(s["enabled_formats"], serde_json::json!(["jsonl", "binary"]));
    for format in Format::ALL {
        let segs = all_segments(&root.0, format).unwrap();
        let bytes: u64 = segs
            .iter()
            .map(|s| std::fs::metadata(&s.path).unwrap().len())
            .sum();
        let d = &s["storage_details"][format.dir_name()];
        assert_eq!(d["total_files"], segs.len());
        assert_eq!(d["total_size_bytes"], bytes);
        for cid in [CID, OTHER_CID, 0] {
            assert!(d["contracts"][cid.to_string()].is_object(), "{cid}");
        }
        let n: u64 = d["contracts"][CID.to_string()]
            .as_object()
            .unwrap()
            .values()
            .map(|x| x["files"].as_u64().unwrap())
            .sum();
        assert_eq!(
            n as usize,
            segs.iter().filter(|s| s.key.instrument_id == CID).count()
        );
    }
    // No recorder has run here: no status, not an invented one.
    assert_eq!(s["recorder"], Value::Null);
}

#[tokio::test]
async fn v3_info_advertises_only_routes_that_exist() {
    let root = TempRoot::new("legacy-info-routes");
    standard_store(&root.0);
    let env = storage_env(&root.0).await;
    let v = body_json(env.get("/v3/info").await).await;
    assert_eq!(v["version"], "3");
    let endpoints = v["endpoints"].as_object().unwrap();
    assert!(endpoints.contains_key("/v3/buffer/{contract_id}/query"));
    for path in endpoints.keys() {
        // Streams would stay open; their routes are checked elsewhere.
        if path.starts_with("/v3/stream") || path == "/v3/ws" {
            continue;
        }
        let uri = path
            .replace("{contract_id}", "265598")
            .replace("/lookup", "/lookup?symbol=AAPL");
        let r = env.get(&uri).await;
        let status = r.status();
        let body = body_json(r).await;
        assert!(
            status == 200,
            "{path} is advertised but answers {status}: {body}"
        );
    }
}

#[tokio::test]
async fn contract_service_routes_answer_through_the_engine_and_its_cache() {
    let env = Env::new(EnvOpts::default()).await;
    let v = body_json(env.get("/cache/status").await).await;
    assert_eq!(v["total_file_entries"], 0, "nothing cached yet: {v}");
    assert_eq!(v["engine"]["available"], true);
    // The engine's contract store, passed through.
    assert_eq!(v["engine"]["contract_store"]["entries"], 2, "{v}");
    assert_eq!(
        v["engine"]["contract_store"]["path"],
        "/fake/contracts/contracts.json"
    );

    // One security type: one engine lookup, the original's grouping.
    let r = env.get("/lookup/aapl/stk").await;
    assert_eq!(r.status(), 200);
    let v = body_json(r).await;
    assert_eq!(v["ticker"], "AAPL");
    assert_eq!(v["total_contracts"], 1);
    assert_eq!(v["security_types_searched"], serde_json::json!(["STK"]));
    assert_eq!(v["contracts_by_type"]["STK"]["count"], 1);
    assert_eq!(
        v["contracts_by_type"]["STK"]["contracts"][0]["con_id"],
        265598
    );
    assert_eq!(v["summary"]["STK"], 1);
    assert_eq!(v["cached"], false);
    assert_eq!(env.log.count("lookup:"), 1);

    // Every type the original searched, one engine lookup each (STK from the cache now).
    let v = body_json(env.get("/lookup/AAPL").await).await;
    assert_eq!(v["security_types_searched"].as_array().unwrap().len(), 9);
    assert_eq!(v["total_contracts"], 1, "one contract, listed once: {v}");
    assert_eq!(env.log.count("lookup:"), 9);
    let v = body_json(env.get("/lookup/AAPL").await).await;
    assert_eq!(v["cached"], true);
    assert_eq!(
        env.log.count("lookup:"),
        9,
        "the second answer is the cache's"
    );

    // IB knows nothing: an empty answer, as the original gave.
    let v = body_json(env.get("/lookup/NOPE/FUT").await).await;
    assert_eq!(v["total_contracts"], 0);
    assert_eq!(v["contracts_by_type"], serde_json::json!({}));

    let r = env.get("/contracts/265598").await;
    assert_eq!(r.status(), 200);
    let v = body_json(r).await;
    assert_eq!(v["status"], "success");
    assert_eq!(v["contract_id"], 265598);
    assert_eq!(v["symbol"], "AAPL");
    assert_eq!(v["long_name"], "APPLE INC");
    let r = env.get("/contracts/12345").await;
    assert_eq!(r.status(), 404);

    for bad in [
        "/lookup/AAPL/XYZ",
        "/lookup/A;B",
        "/lookup/AAPL?x=1",
        "/contracts/0",
        "/contracts/abc",
    ] {
        let r = env.get(bad).await;
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(body_json(r).await["error"]["code"], "bad_parameter");
    }

    // The cache as it is on disk: every answer kept, each with its age.
    let v = body_json(env.get("/cache/status").await).await;
    let on_disk = std::fs::read_dir(env.dir.path().join("contract-cache"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".json")
        })
        .count();
    assert_eq!(v["total_file_entries"], on_disk);
    assert!(on_disk >= 2, "{on_disk}");
    let e = &v["file_cache"]["lookup_AAPL_STK_ANY_ANY.json"];
    assert_eq!(e["valid"], true, "{v}");
    assert!(e["file_size"].as_u64().unwrap() > 0);
    assert!(e["cached_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["cache_duration_seconds"], 3600);
}

#[test]
fn an_ib_200_from_the_engine_is_no_such_contract() {
    use ib_stream::serve::contracts::no_such_contract;
    assert!(no_such_contract("not_found", "", None));
    assert!(no_such_contract("ib_error", "x", Some(200)));
    // The number decides, not the text.
    assert!(!no_such_contract(
        "ib_error",
        "IB error 200: No security definition has been found for the request",
        None
    ));
    assert!(!no_such_contract(
        "ib_error",
        "IB error 321: bad",
        Some(321)
    ));
    assert!(!no_such_contract("not_connected", "", None));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A GET over a fresh connection: (status, body).
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_also_listens_on_the_contract_port_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(EngineLog::default());
    let listener = tokio::net::UnixListener::bind(dir.path().join("control.sock")).unwrap();
    tokio::spawn(fake_engine(listener, Arc::clone(&log)));
    let mut settings =
        ib_stream::config::Settings::defaults(ib_stream::config::Environment::Development);
    settings.shm_dir = dir.path().to_path_buf();
    settings.enable_storage = false;
    settings.storage_path = dir.path().join("storage");
    settings.serve_port = free_port();
    settings.contract_port = Some(free_port());
    let (web, contract) = (settings.serve_port, settings.contract_port.unwrap());
    let args = ib_stream::serve::ServeArgs {
        host: None,
        port: None,
        queue_capacity: 1024,
        heartbeat_secs: 15,
        max_sse_per_ip: 0,
        max_ws_per_ip: 0,
    };
    let server = tokio::spawn(async move { ib_stream::serve::run(&settings, &args).await });

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let lookup = "/lookup/AAPL/STK";
    let (on_web, on_contract) = loop {
        let a = http_get(web, lookup).await;
        let b = http_get(contract, lookup).await;
        if let (Some(a), Some(b)) = (&a, &b) {
            break (a.clone(), b.clone());
        }
        assert!(!server.is_finished(), "serve stopped: {:?}", server.await);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ports did not answer: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(on_web.0, 200, "{on_web:?}");
    assert_eq!(on_contract.0, 200, "{on_contract:?}");
    let v: Value = serde_json::from_str(&on_contract.1).unwrap();
    assert_eq!(v["total_contracts"], 1);
    assert_eq!(http_get(contract, "/cache/status").await.unwrap().0, 200);
    assert_eq!(
        http_get(contract, "/contracts/265598").await.unwrap().0,
        200
    );
    // The contract port serves the contract routes only.
    assert_eq!(http_get(contract, "/v3/info").await.unwrap().0, 404);
    assert_eq!(http_get(web, "/v3/info").await.unwrap().0, 200);
    server.abort();
}
