//! Operations and REST endpoints through `app()`: health, readiness, metrics, background
//! status, streams, contracts, history, the page and OpenAPI, and their error paths.

mod serve_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::Request;
use bytes::Bytes;
use ib_stream::serve::{HistoryError, HistoryPage, HistoryQuery, HistorySource};
use ib_stream_ipc::{ConnState, RecordKind, SubState, SubStatus};
use serve_support::*;

#[tokio::test]
async fn health_is_503_with_reasons_until_ring_and_engine_are_healthy() {
    let env = Env::new(EnvOpts::default()).await;
    // Ring alive, but no status region.
    let r = env.get("/health").await;
    assert_eq!(r.status(), 503);
    let v = body_json(r).await;
    assert_eq!(v["status"], "unhealthy");
    let reasons = v["reasons"].to_string();
    assert!(reasons.contains("status region missing"), "{reasons}");

    // The engine publishes that it is still connecting.
    let mut w = env.status_writer(ConnState::Connecting, &[]);
    env.writer.heartbeat(now_ns() as u64);
    let v = body_json(env.get("/health").await).await;
    assert!(
        v["reasons"]
            .to_string()
            .contains("not connected to IB (state connecting)"),
        "{v}"
    );

    // Connected: healthy, 200.
    let mut snap = ib_stream_ipc::StatusSnapshot::new_boxed();
    snap.set_conn_state(ConnState::Connected);
    w.publish(&snap, now_ns());
    w.heartbeat(now_ns());
    env.writer.heartbeat(now_ns() as u64);
    // The tailer checks the writer every 200 ms when idle.
    env.wait(|| env.state.hub.stats().writer_state() == ib_stream::serve::hub::WriterState::Alive)
        .await;
    let r = env.get("/health").await;
    let code = r.status();
    let v = body_json(r).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["engine"]["connection"], "connected");
    assert_eq!(v["ring"]["writer"], "alive");
    assert_eq!(env.get("/health?x=1").await.status(), 400);
}

#[tokio::test]
async fn health_reports_a_stopped_ring_writer() {
    let env = Env::new(EnvOpts::default()).await;
    let _w = env.status_writer(ConnState::Connected, &[]);
    let Env {
        dir: _dir,
        writer,
        state,
        app,
        ..
    } = env;
    // A writer's drop marks the ring cleanly stopped.
    drop(writer);
    let stats = state.hub.stats();
    wait_for(|| stats.writer_state() == ib_stream::serve::hub::WriterState::Stopped).await;
    use tower::ServiceExt;
    let r = app
        .oneshot(Request::get("/health").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v = body_json(r).await;
    assert!(
        v["reasons"].to_string().contains("ring writer stopped"),
        "{v}"
    );
}

#[tokio::test]
async fn ready_follows_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    let state = ib_stream::serve::AppState::new(config(dir.path(), &EnvOpts::default()), None);
    let app = ib_stream::serve::app(state.clone());
    use tower::ServiceExt;
    let r = app
        .clone()
        .oneshot(Request::get("/ready").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        body_json(r).await["reasons"]
            .to_string()
            .contains("not open")
    );
    let _w = ib_stream_ipc::RingWriter::create(
        &state.cfg.ring_path(),
        64,
        &ib_stream_ipc::ShmOptions {
            prefault: false,
            ..Default::default()
        },
    )
    .unwrap();
    wait_for(|| state.hub.stats().ring_open.load(Ordering::Relaxed)).await;
    let r = app
        .oneshot(Request::get("/ready").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_serve_and_engine_figures() {
    let mut env = Env::new(EnvOpts::default()).await;
    let _w = env.status_writer(
        ConnState::Connected,
        &[SubStatus::new(
            TRACKED_CON,
            RecordKind::TbtBidAsk,
            SubState::Active,
            60000,
        )],
    );
    let mut sse = SseReader::new(
        env.get(&format!("/v3/stream/{TRACKED_CON}?tick_types=bid_ask"))
            .await,
    );
    sse.expect("info").await;
    env.wait_sinks(1).await;
    env.publish(quote(TRACKED_CON, 1));
    sse.expect("tick").await;
    let needles = [
        "# TYPE ib_stream_serve_streams gauge",
        "ib_stream_serve_streams{transport=\"sse\"} 1",
        "ib_stream_serve_ticks_sent_total{transport=\"sse\"} 1",
        "ib_stream_serve_ring_head 1",
        "ib_stream_serve_tailer_lag_records 0",
        "ib_stream_serve_delivery_latency_us_count 1",
        "ib_stream_engine_up 1",
        "ib_stream_engine_connected 1",
        "ib_stream_engine_records_published_total 42",
        "ib_stream_engine_subscriptions{state=\"active\"} 1",
        "ib_stream_engine_recv_to_publish_ns_count 1",
        "ib_stream_engine_recv_to_publish_ns{quantile=\"0.99\"}",
        "ib_stream_engine_kernel_to_commit_ns_count 1",
        "ib_stream_engine_read_to_commit_ns_count 1",
        "ib_stream_engine_read_to_commit_ns{quantile=\"0.5\"} 180",
    ];
    // The tailer hands the tick to the stream before it stores its position for the
    // metrics (end of the same pass), so a scrape right after the tick may see a lag of 1
    // for a moment: scrape until the figures settle (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let r = env.get("/metrics").await;
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let text = body_text(r).await;
        if needles.iter().all(|n| text.contains(n)) || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    for needle in needles {
        assert!(text.contains(needle), "missing `{needle}` in\n{text}");
    }
    // Every sample line is `name{labels} number`.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = line.rsplit_once(' ').unwrap();
        assert!(v.parse::<f64>().is_ok(), "{line}");
    }
}

#[tokio::test]
async fn background_status_lists_tracked_contracts_with_engine_states() {
    let env = Env::new(EnvOpts::default()).await;
    let v = body_json(env.get("/background/status").await).await;
    assert_eq!(v["engine"]["available"], false);
    assert_eq!(v["contracts"][0]["con_id"], TRACKED_CON);
    assert_eq!(v["contracts"][0]["tick_types"][0]["state"], "unknown");
    let mut s = SubStatus::new(TRACKED_CON, RecordKind::TbtBidAsk, SubState::Active, 60000);
    s.ticks = 12;
    let _w = env.status_writer(ConnState::Connected, &[s]);
    let v = body_json(env.get("/background/status").await).await;
    assert_eq!(v["enabled"], true);
    assert_eq!(v["engine"]["connection"], "connected");
    let c = &v["contracts"][0];
    assert_eq!(c["symbol"], "MNQ");
    assert_eq!(c["tick_types"][0]["tick_type"], "bid_ask");
    assert_eq!(c["tick_types"][0]["state"], "active");
    assert_eq!(c["tick_types"][0]["ticks"], 12);
    assert_eq!(c["tick_types"][1]["tick_type"], "last");
    assert_eq!(c["tick_types"][1]["state"], "not_subscribed");
}

#[tokio::test]
async fn streams_are_listed_and_an_operator_can_stop_them() {
    let env = Env::new(EnvOpts::default()).await;
    let mut a = SseReader::new(env.get("/v3/stream/777?tick_types=bid_ask").await);
    let mut b = SseReader::new(env.get("/v3/stream/777?tick_types=bid_ask,last").await);
    a.expect("info").await;
    b.expect("info").await;
    let v = body_json(env.get("/v3/streams").await).await;
    assert_eq!(v["count"], 2);
    let subs = v["subscriptions"].as_array().unwrap();
    let bid = subs.iter().find(|s| s["tick_type"] == "bid_ask").unwrap();
    assert_eq!(
        (bid["con_id"].as_u64(), bid["holders"].as_u64()),
        (Some(777), Some(2))
    );
    assert_eq!(bid["streams"].as_array().unwrap().len(), 2);
    assert_eq!(bid["tracked"], false);

    let del = |uri: &str| Request::delete(uri).body(Body::empty()).unwrap();
    let r = env.request(del("/v3/streams/777")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body_json(r).await["stopped"], 2);
    for s in [&mut a, &mut b] {
        assert_eq!(s.expect("complete").await.json()["reason"], "stopped");
        assert!(s.next().await.is_none());
    }
    env.wait(|| env.log.count("unsubscribe:777:") == 2).await;
    let r = env.request(del("/v3/streams/777")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(body_json(r).await["error"]["code"], "not_found");
    assert_eq!(env.request(del("/v3/streams/zero")).await.status(), 400);
}

#[tokio::test]
async fn contract_lookups_go_through_the_engine_once_then_the_disk_cache() {
    let env = Env::new(EnvOpts::default()).await;
    let r = env
        .get("/v3/contracts/lookup?symbol=aapl&sec_type=STK")
        .await;
    assert_eq!(r.status(), 200);
    let v = body_json(r).await;
    assert_eq!(v["source"], "engine");
    assert_eq!(v["result"]["contracts"][0]["con_id"], 265598);
    let v = body_json(
        env.get("/v3/contracts/lookup?symbol=AAPL&sec_type=STK")
            .await,
    )
    .await;
    assert_eq!(v["source"], "cache");
    assert_eq!(env.log.count("lookup:"), 1);
    let v = body_json(env.get("/v3/contracts/265598").await).await;
    assert_eq!(v["result"]["contracts"][0]["symbol"], "AAPL");
    let r = env.get("/v3/contracts/12345").await;
    assert_eq!(r.status(), 404);
    assert_eq!(body_json(r).await["error"]["code"], "lookup_failed");
    for bad in [
        "/v3/contracts/lookup",
        "/v3/contracts/lookup?symbol=",
        "/v3/contracts/lookup?symbol=A%0AB",
        "/v3/contracts/lookup?symbol=A;rm",
        "/v3/contracts/lookup?symbol=AAPL&sec_type=XYZ",
        "/v3/contracts/lookup?symbol=AAPL&what=1",
        "/v3/contracts/0",
        "/v3/contracts/abc",
    ] {
        let r = env.get(bad).await;
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(
            body_json(r).await["error"]["code"],
            "bad_parameter",
            "{bad}"
        );
    }
}

#[tokio::test]
async fn without_an_engine_lookups_are_503_or_the_stale_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ib_stream::serve::contracts::ContractCache::new(
        dir.path().join("cache"),
        std::time::Duration::ZERO,
    );
    cache
        .put(
            "contract_265598",
            &serde_json::json!({"contracts": [{"con_id": 265598}]}),
        )
        .await
        .unwrap();
    let mut cfg = config(dir.path(), &EnvOpts::default());
    cfg.contract_cache_dir = dir.path().join("cache");
    cfg.contract_cache_ttl = std::time::Duration::ZERO;
    let state = ib_stream::serve::AppState::new(cfg, None);
    let app = ib_stream::serve::app(state);
    use tower::ServiceExt;
    let get = |u: &str| Request::get(u).body(Body::empty()).unwrap();
    let r = app
        .clone()
        .oneshot(get("/v3/contracts/265598"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = body_json(r).await;
    assert_eq!(
        (v["source"].as_str(), v["stale"].as_bool()),
        (Some("cache"), Some(true))
    );
    let r = app.oneshot(get("/v3/contracts/1")).await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(body_json(r).await["error"]["code"], "engine_unavailable");
}

#[derive(Debug)]
struct FixedHistory;

impl HistorySource for FixedHistory {
    fn query(&self, q: &HistoryQuery) -> Result<HistoryPage, HistoryError> {
        if q.cursor.as_deref() == Some("bogus") {
            return Err(HistoryError::BadCursor("not issued here".into()));
        }
        Ok(HistoryPage {
            ticks: vec![
                Bytes::from_static(br#"{"seq":1,"st":5,"cid":1,"tt":"last","p":1.5}"#),
                Bytes::from_static(br#"{"seq":2,"st":6,"cid":1,"tt":"last","p":1.25}"#),
            ]
            .into_iter()
            .take(q.limit)
            .collect(),
            next_cursor: Some("c2".into()),
        })
    }
}

#[tokio::test]
async fn history_is_503_until_a_source_is_plugged_in() {
    let env = Env::new(EnvOpts::default()).await;
    let r = env.get("/v3/history/1?tick_types=last").await;
    assert_eq!(r.status(), 503);
    assert_eq!(body_json(r).await["error"]["code"], "storage_unavailable");
    for bad in [
        "/v3/history/0",
        "/v3/history/1?start=10&end=5",
        "/v3/history/1?limit=0",
        "/v3/history/1?tick_types=nope",
        "/v3/history/1?start=yesterday",
    ] {
        assert_eq!(env.get(bad).await.status(), 400, "{bad}");
    }
    let env = Env::new(EnvOpts {
        history: Some(Arc::new(FixedHistory)),
        ..EnvOpts::default()
    })
    .await;
    let r = env.get("/v3/history/1?tick_types=last&limit=1").await;
    assert_eq!(r.status(), 200);
    let v = body_json(r).await;
    assert_eq!(v["count"], 1);
    assert_eq!(v["next_cursor"], "c2");
    assert_eq!(v["ticks"][0]["p"], 1.5);
    assert_eq!(env.get("/v3/history/1?cursor=bogus").await.status(), 400);
}

#[tokio::test]
async fn page_assets_openapi_and_unknown_routes() {
    let env = Env::new(EnvOpts::default()).await;
    for (uri, ty) in [
        ("/", "text/html"),
        ("/page/app.js", "text/javascript"),
        ("/page/style.css", "text/css"),
        ("/openapi.json", "application/json"),
    ] {
        let r = env.get(uri).await;
        assert_eq!(r.status(), 200, "{uri}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(ty),
            "{uri}"
        );
        assert!(!body_text(r).await.is_empty());
    }
    let r = env.get("/nope").await;
    assert_eq!(r.status(), 404);
    assert_eq!(body_json(r).await["error"]["code"], "not_found");
    let r = env
        .request(Request::post("/health").body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.status(), 405);
    assert_eq!(body_json(r).await["error"]["code"], "method_not_allowed");
}
