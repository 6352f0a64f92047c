//! SSE end to end over a real shared-memory ring, through `app()` without a port.

mod serve_support;

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::Request;
use ib_stream_ipc::{RecordKind, SubState};
use serve_support::*;

const CON: u32 = 4242;

#[tokio::test]
async fn ticks_arrive_in_order_filtered_with_their_seq_as_id_and_exact_bytes() {
    let mut env = Env::new(EnvOpts::default()).await;
    let mut sse = SseReader::new(
        env.get(&format!("/v3/stream/{CON}?tick_types=bid_ask"))
            .await,
    );
    let start = sse.expect("info").await.json();
    assert_eq!(start["status"], "stream_start");
    assert_eq!(start["contract_id"], CON);
    let epoch = start["epoch"]
        .as_str()
        .expect("stream_start names the engine run");
    assert!(epoch.len() == 16 && epoch.bytes().all(|b| b.is_ascii_hexdigit()));
    env.wait_sinks(1).await;
    let x = env.strings.intern(b"ISLAND").unwrap();
    let mut want = Vec::new();
    for i in 0..20 {
        let q = env.publish(quote(CON, 10_000 + i));
        want.push(q);
        env.publish(trade(CON, 10_000 + i, x)); // other kind: filtered out
        env.publish(quote(CON + 1, 5)); // other contract: filtered out
    }
    for q in &want {
        let e = sse.expect("tick").await;
        assert_eq!(e.id, Some(env.id(q.seq)));
        assert_eq!(
            e.data,
            env.json_of(q),
            "a streamed tick is the stored JSON line"
        );
    }
    // The engine subscription for the untracked contract was taken once.
    assert_eq!(
        env.log
            .count(&format!("subscribe:{CON}:bid_ask:serve-test")),
        1
    );
}

#[tokio::test]
async fn limit_and_timeout_end_with_complete() {
    let mut env = Env::new(EnvOpts::default()).await;
    let mut sse = SseReader::new(
        env.get(&format!("/v3/stream/{CON}?tick_types=last&limit=3"))
            .await,
    );
    sse.expect("info").await;
    env.wait_sinks(1).await;
    let seqs: Vec<u64> = (0..5)
        .map(|i| env.publish(trade(CON, 100 + i, 0)).seq)
        .collect();
    for _ in 0..3 {
        sse.expect("tick").await;
    }
    let c = sse.expect("complete").await.json();
    assert_eq!(
        (c["reason"].as_str(), c["count"].as_u64()),
        (Some("limit_reached"), Some(3))
    );
    assert_eq!(c["last_seq"].as_u64(), Some(seqs[2]));
    assert!(sse.next().await.is_none(), "the stream ends after complete");

    let mut sse = SseReader::new(env.get(&format!("/v3/stream/{CON}?timeout=1")).await);
    sse.expect("info").await;
    let c = sse.expect("complete").await.json();
    assert_eq!(
        (c["reason"].as_str(), c["count"].as_u64()),
        (Some("timeout"), Some(0))
    );
    assert!(sse.next().await.is_none());
}

#[tokio::test]
async fn heartbeats_are_sent_while_idle() {
    let env = Env::new(EnvOpts {
        heartbeat: std::time::Duration::from_millis(50),
        ..EnvOpts::default()
    })
    .await;
    let mut sse = SseReader::new(env.get(&format!("/v3/stream/{CON}")).await);
    sse.expect("info").await;
    let h = sse.next().await.unwrap();
    assert_eq!(h.event, "heartbeat");
    assert!(h.id.is_none());
    let v = h.json();
    assert_eq!(v["type"], "heartbeat");
    assert!(v["ts"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn last_event_id_resumes_exactly_after_it() {
    let mut env = Env::new(EnvOpts::default()).await;
    let mut sse = SseReader::new(
        env.get(&format!("/v3/stream/{CON}?tick_types=bid_ask"))
            .await,
    );
    sse.expect("info").await;
    env.wait_sinks(1).await;
    let first: Vec<_> = (0..3).map(|i| env.publish(quote(CON, i))).collect();
    let mut seen = 0;
    for q in &first {
        let e = sse.expect("tick").await;
        assert_eq!(e.data, env.json_of(q));
        seen = q.seq;
    }
    drop(sse);
    env.wait_sinks(0).await;
    // Missed while disconnected.
    let missed: Vec<_> = (10..15)
        .map(|i| {
            env.publish(trade(CON, i, 0));
            env.publish(quote(CON, i))
        })
        .collect();
    let req = Request::get(format!("/v3/stream/{CON}?tick_types=bid_ask"))
        .header("Last-Event-ID", seen.to_string())
        .body(Body::empty())
        .unwrap();
    let mut sse = SseReader::new(env.request(req).await);
    let start = sse.expect("info").await.json();
    assert_eq!(start["resume_after"].as_u64(), Some(seen));
    for q in &missed {
        let e = sse.expect("tick").await;
        assert_eq!(e.id, Some(env.id(q.seq)));
        assert_eq!(e.data, env.json_of(q));
    }
    // And then live, with no duplicate at the join.
    let live = env.publish(quote(CON, 99));
    let e = sse.expect("tick").await;
    assert_eq!(e.id, Some(env.id(live.seq)));

    // The same through the query parameter (EventSource's first connect cannot set headers).
    let mut sse = SseReader::new(
        env.get(&format!(
            "/v3/stream/{CON}?tick_types=bid_ask&last_event_id={}",
            missed[3].seq
        ))
        .await,
    );
    sse.expect("info").await;
    assert_eq!(sse.expect("tick").await.id, Some(env.id(missed[4].seq)));
    assert_eq!(sse.expect("tick").await.id, Some(env.id(live.seq)));
}

#[tokio::test]
async fn resume_past_what_the_ring_holds_reports_the_exact_gap() {
    let mut env = Env::new(EnvOpts {
        ring_capacity: 64,
        ..EnvOpts::default()
    })
    .await;
    for i in 0..10 {
        env.publish(quote(CON, i));
    }
    // Make sure the tailer has read everything before the resume is asked for.
    env.wait(|| env.state.hub.stats().next_seq.load(Ordering::Relaxed) == 11)
        .await;
    // Wait: the ring now holds 11..=210 minus what was overwritten (capacity 64).
    let mut last = None;
    for i in 0..200 {
        last = Some(env.publish(quote(CON, i)));
    }
    let head = last.unwrap().seq;
    assert_eq!(head, 210);
    env.wait(|| env.state.hub.stats().next_seq.load(Ordering::Relaxed) == head + 1)
        .await;
    let req = Request::get(format!("/v3/stream/{CON}?tick_types=bid_ask"))
        .header("Last-Event-ID", "5")
        .body(Body::empty())
        .unwrap();
    // Without a history source the loss of 6..=146 is reported, not hidden.
    let mut sse = SseReader::new(env.request(req).await);
    sse.expect("info").await;
    let g = sse.expect("gap").await;
    let v = g.json();
    assert_eq!(v["reason"], "resume_unavailable");
    assert_eq!(v["first_seq"].as_u64(), Some(6));
    assert_eq!(v["last_seq"].as_u64(), Some(head - 64));
    assert_eq!(v["count"].as_u64(), Some(head - 64 - 5));
    assert_eq!(g.id, Some(env.id(head - 64)));
    for seq in head - 63..=head {
        assert_eq!(sse.expect("tick").await.id, Some(env.id(seq)));
    }
}

#[tokio::test]
async fn resume_from_another_epoch_says_so_and_goes_live() {
    let mut env = Env::new(EnvOpts::default()).await;
    let req = Request::get(format!("/v3/stream/{CON}?tick_types=bid_ask"))
        .header("Last-Event-ID", "1000000")
        .body(Body::empty())
        .unwrap();
    let mut sse = SseReader::new(env.request(req).await);
    sse.expect("info").await;
    let i = sse.expect("info").await.json();
    assert_eq!(i["status"], "resume_unavailable");
    env.wait_sinks(1).await;
    let q = env.publish(quote(CON, 1));
    assert_eq!(sse.expect("tick").await.data, env.json_of(&q));
}

#[tokio::test]
async fn a_lapped_tailer_sends_a_gap_with_the_exact_lost_range() {
    let mut env = Env::new(EnvOpts {
        ring_capacity: 64,
        ..EnvOpts::default()
    })
    .await;
    let mut sse = SseReader::new(
        env.get(&format!("/v3/stream/{CON}?tick_types=bid_ask"))
            .await,
    );
    sse.expect("info").await;
    env.wait_sinks(1).await;
    // With the tailer paused the lap below happens for sure.
    let paused = env.state.hub.pause().await;
    let before = env
        .state
        .hub
        .stats()
        .next_seq
        .load(Ordering::Relaxed)
        .max(1);
    let mut last = 0;
    for i in 0..500 {
        last = env.publish(quote(CON, i)).seq;
    }
    drop(paused);
    // The reader expected `before`; newest is `last`; default margin capacity/8 = 8.
    let resume = last + 1 - 64 + 8;
    let g = sse.expect("gap").await;
    let v = g.json();
    assert_eq!(v["reason"], "reader_overrun");
    assert_eq!(v["first_seq"].as_u64(), Some(before));
    assert_eq!(v["last_seq"].as_u64(), Some(resume - 1));
    assert_eq!(v["count"].as_u64(), Some(resume - before));
    assert!(v["t1"].as_i64().unwrap() > 0, "the interval's end is known");
    for seq in resume..=last {
        assert_eq!(sse.expect("tick").await.id, Some(env.id(seq)));
    }
    assert_eq!(
        env.state.hub.stats().overrun_gaps.load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_conflated_and_memory_stays_bounded() {
    let mut env = Env::new(EnvOpts {
        queue_capacity: 4,
        ..EnvOpts::default()
    })
    .await;
    let mut sse = SseReader::new(
        env.get(&format!("/v3/stream/{CON}?tick_types=bid_ask,last"))
            .await,
    );
    sse.expect("info").await;
    env.wait_sinks(1).await;
    let mut quotes = Vec::new();
    let mut trades = Vec::new();
    for i in 0..1000 {
        quotes.push(env.publish(quote(CON, i)));
        trades.push(env.publish(trade(CON, i, 0)));
    }
    env.wait(|| env.state.hub.stats().next_seq.load(Ordering::Relaxed) == 2001)
        .await;
    let stats = env.state.hub.stats();
    // 4 queued, 1 kept per kind, the rest dropped: nothing grows with the backlog.
    assert_eq!(stats.conflated_drops.load(Ordering::Relaxed), 2000 - 4 - 2);
    let mut ticks = Vec::new();
    let mut gap = None;
    while ticks.len() < 6 {
        let e = sse.next_non_heartbeat().await.unwrap();
        match e.event.as_str() {
            "tick" => ticks.push(seq_of(&e.id.unwrap())),
            "gap" => gap = Some(e.json()),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(&ticks[..4], &[1, 2, 3, 4]);
    // The last of each kind survives, in order.
    assert_eq!(&ticks[4..], &[quotes[999].seq, trades[999].seq]);
    let g = gap.expect("a slow_client gap before the retained ticks");
    assert_eq!(g["reason"], "slow_client");
    assert_eq!(g["count"].as_u64(), Some(1994));
    assert_eq!(g["first_seq"].as_u64(), Some(5));
    assert_eq!(g["last_seq"].as_u64(), Some(trades[998].seq));
    // The stream then continues normally.
    let q = env.publish(quote(CON, 5000));
    assert_eq!(sse.expect("tick").await.id, Some(env.id(q.seq)));
}

#[tokio::test]
async fn a_slow_client_with_the_disconnect_policy_gets_an_error_and_the_end() {
    let mut env = Env::new(EnvOpts {
        queue_capacity: 4,
        ..EnvOpts::default()
    })
    .await;
    let mut sse = SseReader::new(
        env.get(&format!(
            "/v3/stream/{CON}?tick_types=bid_ask&slow=disconnect"
        ))
        .await,
    );
    sse.expect("info").await;
    env.wait_sinks(1).await;
    for i in 0..50 {
        env.publish(quote(CON, i));
    }
    env.wait_sinks(0).await;
    let e = sse.expect("error").await.json();
    assert_eq!(
        (e["code"].as_str(), e["recoverable"].as_bool()),
        (Some("slow_consumer"), Some(true))
    );
    let c = sse.expect("complete").await.json();
    assert_eq!(c["reason"], "error");
    assert!(sse.next().await.is_none());
    assert_eq!(
        env.state
            .hub
            .stats()
            .slow_disconnects
            .load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn subscriptions_are_shared_and_released_by_the_last_client() {
    let mut env = Env::new(EnvOpts::default()).await;
    let a = SseReader::new(
        env.get(&format!("/v3/stream/{CON}?tick_types=bid_ask,last"))
            .await,
    );
    let mut b = SseReader::new(
        env.get(&format!("/v3/stream/{CON}?tick_types=bid_ask"))
            .await,
    );
    assert_eq!(env.log.count(&format!("subscribe:{CON}:bid_ask")), 1);
    assert_eq!(env.log.count(&format!("subscribe:{CON}:last")), 1);
    assert_eq!(
        env.state
            .subs
            .holders((CON, ib_stream::serve::params::TickType::BidAsk)),
        2
    );
    // A tracked contract needs no control-socket subscription.
    let t = SseReader::new(env.get(&format!("/v3/stream/{TRACKED_CON}")).await);
    assert_eq!(env.log.count(&format!("subscribe:{TRACKED_CON}")), 0);
    drop(a);
    env.wait(|| env.log.count(&format!("unsubscribe:{CON}:last")) == 1)
        .await;
    assert_eq!(
        env.log.count(&format!("unsubscribe:{CON}:bid_ask")),
        0,
        "b still holds it"
    );
    b.expect("info").await;
    env.wait_sinks(2).await;
    let q = env.publish(quote(CON, 7));
    assert_eq!(b.expect("tick").await.data, env.json_of(&q));
    drop(b);
    drop(t);
    env.wait(|| env.log.count(&format!("unsubscribe:{CON}:bid_ask")) == 1)
        .await;
    assert_eq!(env.log.count(&format!("unsubscribe:{TRACKED_CON}")), 0);
    assert!(env.state.subs.list().is_empty());
}

#[tokio::test]
async fn an_engine_refusal_and_a_missing_engine_are_clear_errors() {
    let env = Env::new(EnvOpts::default()).await;
    let r = env
        .get(&format!("/v3/stream/{REFUSED_CON}?tick_types=bid_ask"))
        .await;
    assert_eq!(r.status(), 422);
    let v = body_json(r).await;
    assert_eq!(v["error"]["code"], "subscription_refused");
    assert_eq!(v["error"]["ib_code"], 200);
    assert_eq!(env.state.registry.len(), 0);

    let env = Env::new(EnvOpts {
        engine: false,
        ..EnvOpts::default()
    })
    .await;
    let r = env.get(&format!("/v3/stream/{CON}")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(body_json(r).await["error"]["code"], "engine_unavailable");
    assert_eq!(
        env.state.active_streams.load(Ordering::Relaxed),
        0,
        "the slot was freed"
    );
}

#[tokio::test]
async fn an_ib_rejection_in_the_ring_reaches_the_client_with_ib_code() {
    let mut env = Env::new(EnvOpts::default()).await;
    let mut sse = SseReader::new(
        env.get(&format!("/v3/stream/{CON}?tick_types=bid_ask,last"))
            .await,
    );
    sse.expect("info").await;
    env.wait_sinks(1).await;
    env.publish(sub_record(CON, RecordKind::TbtBidAsk, SubState::Active, 0));
    let i = sse.expect("info").await.json();
    assert_eq!(i["status"], "subscription");
    assert_eq!(i["record"]["state"], "active");
    env.publish(sub_record(
        CON,
        RecordKind::TbtLast,
        SubState::Rejected,
        10189,
    ));
    let e = sse.expect("error").await.json();
    assert_eq!(e["code"], "subscription_rejected");
    assert_eq!(e["ib_code"], 10189);
    assert_eq!(e["recoverable"], false);
    // bid_ask still flows.
    let q = env.publish(quote(CON, 3));
    assert_eq!(sse.expect("tick").await.data, env.json_of(&q));
    // When the last tick type is rejected the stream ends.
    env.publish(sub_record(
        CON,
        RecordKind::TbtBidAsk,
        SubState::Rejected,
        10189,
    ));
    sse.expect("error").await;
    assert_eq!(sse.expect("complete").await.json()["reason"], "error");
    assert!(sse.next().await.is_none());
}

#[tokio::test]
async fn bad_parameters_get_400_with_the_error_schema() {
    let env = Env::new(EnvOpts::default()).await;
    let long = format!("/v3/stream/{CON}?tick_types={}", "a".repeat(5000));
    let cases = [
        "/v3/stream/0".to_string(),
        "/v3/stream/-5".into(),
        "/v3/stream/abc".into(),
        "/v3/stream/99999999999".into(),
        format!("/v3/stream/{CON}?tick_types=trades"),
        format!("/v3/stream/{CON}?tick_types="),
        format!("/v3/stream/{CON}?tick_types=last,last"),
        format!("/v3/stream/{CON}?limit=0"),
        format!("/v3/stream/{CON}?limit=abc"),
        format!("/v3/stream/{CON}?limit=-1"),
        format!("/v3/stream/{CON}?timeout=99999999"),
        format!("/v3/stream/{CON}?slow=fast"),
        format!("/v3/stream/{CON}?bogus=1"),
        format!("/v3/stream/{CON}?limit=1&limit=2"),
        format!("/v3/stream/{CON}?last_event_id=x"),
        format!("/v3/stream/{CON}?%%%%=%ZZ&&&==="),
        format!("/v3/stream/{CON}?limit=%00%FF%FE"),
        long,
    ];
    for uri in &cases {
        let r = env.get(uri).await;
        assert_eq!(r.status(), 400, "{uri}");
        let v = body_json(r).await;
        assert_eq!(v["error"]["code"], "bad_parameter", "{uri}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let req = Request::get(format!("/v3/stream/{CON}"))
        .header("Last-Event-ID", "not-a-number")
        .body(Body::empty())
        .unwrap();
    assert_eq!(env.request(req).await.status(), 400);
    assert_eq!(env.state.registry.len(), 0);
    assert_eq!(env.state.active_streams.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn max_streams_is_enforced_and_slots_come_back() {
    let env = Env::new(EnvOpts {
        max_streams: 2,
        ..EnvOpts::default()
    })
    .await;
    let a = env.get(&format!("/v3/stream/{CON}")).await;
    let _b = env.get(&format!("/v3/stream/{CON}")).await;
    let r = env.get(&format!("/v3/stream/{CON}")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(body_json(r).await["error"]["code"], "too_many_streams");
    drop(a);
    assert_eq!(env.get(&format!("/v3/stream/{CON}")).await.status(), 200);
}

#[tokio::test]
async fn a_thousand_concurrent_clients_each_get_every_tick() {
    const CLIENTS: usize = 1000;
    let mut env = Env::new(EnvOpts::default()).await;
    let mut readers = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        readers.push(SseReader::new(
            env.get(&format!(
                "/v3/stream/{TRACKED_CON}?tick_types=bid_ask&limit=10"
            ))
            .await,
        ));
    }
    env.wait_sinks(CLIENTS as u64).await;
    let want: Vec<u64> = (0..10)
        .map(|i| env.publish(quote(TRACKED_CON, i)).seq)
        .collect();
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|mut r| {
            tokio::spawn(async move {
                r.expect("info").await;
                let mut got = Vec::new();
                for _ in 0..10 {
                    got.push(seq_of(&r.expect("tick").await.id.unwrap()));
                }
                assert_eq!(r.expect("complete").await.json()["count"], 10);
                got
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), want);
    }
    env.wait_sinks(0).await;
    assert_eq!(env.state.registry.len(), 0);
}

#[tokio::test]
async fn a_token_guards_the_api_but_not_health_or_the_page() {
    let env = Env::new(EnvOpts {
        token: Some("0123456789abcdef-secret".into()),
        ..EnvOpts::default()
    })
    .await;
    let r = env.get("/v3/streams").await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(body_json(r).await["error"]["code"], "unauthorized");
    assert_eq!(env.get("/v3/streams?token=wrong").await.status(), 401);
    assert_eq!(
        env.get("/v3/streams?token=0123456789abcdef-secret")
            .await
            .status(),
        200
    );
    let req = Request::get("/v3/streams")
        .header("Authorization", "Bearer 0123456789abcdef-secret")
        .body(Body::empty())
        .unwrap();
    assert_eq!(env.request(req).await.status(), 200);
    assert_eq!(env.get(&format!("/v3/stream/{CON}")).await.status(), 401);
    let r = env
        .get(&format!(
            "/v3/stream/{TRACKED_CON}?token=0123456789abcdef-secret"
        ))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(env.get("/").await.status(), 200);
    assert_ne!(env.get("/health").await.status(), 401);
}

#[tokio::test]
async fn engine_gap_and_connection_records_reach_every_stream() {
    let mut env = Env::new(EnvOpts::default()).await;
    let mut sse = SseReader::new(
        env.get(&format!("/v3/stream/{CON}?tick_types=bid_ask"))
            .await,
    );
    sse.expect("info").await;
    env.wait_sinks(1).await;
    let mut conn = ib_stream_ipc::Record::new(RecordKind::Connection);
    conn.tick_type = ib_stream_ipc::ConnState::IbLost as u8;
    conn.body = [187, 7, 1100, 0];
    let conn = env.publish(conn);
    let mut gap = ib_stream_ipc::Record::new(RecordKind::Gap);
    gap.tick_type = ib_stream_ipc::GapReason::Disconnected as u8;
    gap.body = [0, 0, 1_000_000_000, 3_000_000_000];
    let gap = env.publish(gap);
    // A gap about another contract is not this stream's business.
    let mut other = gap;
    other.instrument_id = CON + 1;
    env.publish(other);
    let e = sse.expect("info").await;
    assert_eq!(e.id, Some(env.id(conn.seq)));
    let v = e.json();
    assert_eq!(v["status"], "connection");
    assert_eq!(
        (v["record"]["state"].as_str(), v["record"]["code"].as_i64()),
        (Some("ib_lost"), Some(1100))
    );
    let e = sse.expect("gap").await;
    assert_eq!(e.id, Some(env.id(gap.seq)));
    let v = e.json();
    assert_eq!(
        (v["reason"].as_str(), v["count"].as_u64()),
        (Some("disconnected"), Some(0))
    );
    assert_eq!(
        (v["t0"].as_i64(), v["t1"].as_i64()),
        (Some(1_000_000), Some(3_000_000))
    );
    let q = env.publish(quote(CON, 1));
    assert_eq!(sse.expect("tick").await.data, env.json_of(&q));
}

#[tokio::test]
async fn a_restarted_engine_is_followed_with_a_writer_restart_gap() {
    let mut env = Env::new(EnvOpts::default()).await;
    let mut sse = SseReader::new(
        env.get(&format!("/v3/stream/{CON}?tick_types=bid_ask"))
            .await,
    );
    sse.expect("info").await;
    env.wait_sinks(1).await;
    let q = env.publish(quote(CON, 1));
    assert_eq!(sse.expect("tick").await.id, Some(env.id(q.seq)));
    let old_epoch = env.writer.info().epoch;
    // A new writer (new epoch) replaces the ring file; the old one is dropped first, as a
    // restarted engine process would be gone.
    let path = env.dir.path().join(ib_stream_ipc::ring::RING_FILE_NAME);
    let opts = ib_stream_ipc::ShmOptions {
        prefault: false,
        ..Default::default()
    };
    let old = std::mem::replace(&mut env.writer, ib_stream_ipc::RingWriter::heap(4).unwrap());
    drop(old);
    env.writer = ib_stream_ipc::RingWriter::create(&path, 256, &opts).unwrap();
    env.writer.heartbeat(now_ns() as u64);
    assert_ne!(env.writer.info().epoch, old_epoch);
    let q = env.publish(quote(CON, 2));
    assert_eq!(q.seq, 1, "sequences start again");
    let g = sse.expect("gap").await.json();
    assert_eq!(g["reason"], "writer_restart");
    // The one meaning (ipc's WriterRestart): the old run was delivered through 1 and, as it
    // stopped cleanly, nothing of it is missing.
    assert_eq!(g["epoch"], format!("{old_epoch:016x}"));
    assert_eq!(g["new_epoch"], format!("{:016x}", env.writer.info().epoch));
    assert_eq!(
        (
            g["first_seq"].as_u64(),
            g["last_seq"].as_u64(),
            g["count"].as_u64()
        ),
        (Some(2), Some(1), Some(0))
    );
    assert_eq!(g["clean"], true);
    let e = sse.expect("tick").await;
    assert_eq!(e.id, Some(env.id(1)));
    // Killed this time: the old run is lost from its last record on, open-ended.
    let old_epoch = env.writer.info().epoch;
    env.publish(quote(CON, 3));
    sse.expect("tick").await;
    restart_engine(&mut env, false).await;
    let g = sse.expect("gap").await.json();
    assert_eq!(g["epoch"], format!("{old_epoch:016x}"));
    assert_eq!(
        (
            g["first_seq"].as_u64(),
            g["last_seq"].is_null(),
            g["count"].is_null()
        ),
        (Some(3), true, true)
    );
    assert_eq!(g["clean"], false);
    assert_eq!(e.data, env.json_of(&q));
    assert_eq!(
        env.state.hub.stats().epoch.load(Ordering::Relaxed),
        env.writer.info().epoch
    );
}

#[tokio::test]
async fn a_resume_older_than_the_ring_is_filled_from_history_without_a_seam() {
    let recorded = std::sync::Arc::new(Recorded::default());
    let mut env = Env::new(EnvOpts {
        ring_capacity: 64,
        history: Some(recorded.clone()),
        ..EnvOpts::default()
    })
    .await;
    let mut all = Vec::new();
    for i in 0..210 {
        let q = env.publish(quote(CON, i));
        recorded.record(&env, &q);
        all.push(q);
    }
    env.wait(|| env.state.hub.stats().next_seq.load(Ordering::Relaxed) == 211)
        .await;
    let req = Request::get(format!("/v3/stream/{CON}?tick_types=bid_ask"))
        .header("Last-Event-ID", "5")
        .body(Body::empty())
        .unwrap();
    let mut sse = SseReader::new(env.request(req).await);
    assert_eq!(sse.expect("info").await.json()["resume_after"], 5);
    assert_eq!(sse.expect("info").await.json()["status"], "history_start");
    // 6..=210: from history (which has all of it), then the join, each once, in order.
    for q in &all[5..] {
        let e = sse.expect("tick").await;
        assert_eq!(e.id, Some(env.id(q.seq)));
        assert_eq!(e.data, env.json_of(q));
    }
    let live = sse.expect("info").await.json();
    assert_eq!(live["status"], "live");
    assert_eq!(live["after_seq"], 210);
    assert_eq!(live["history_ticks"], 205);
    let (first, _) = recorded.asked.lock().unwrap()[0];
    assert_eq!(first, 6);
    let live = env.publish(quote(CON, 1000));
    assert_eq!(sse.expect("tick").await.id, Some(env.id(live.seq)));
}

async fn since_env(ring: u64) -> (Env, std::sync::Arc<Recorded>, Vec<ib_stream_ipc::Record>) {
    let recorded = std::sync::Arc::new(Recorded::default());
    let mut env = Env::new(EnvOpts {
        ring_capacity: ring,
        history: Some(recorded.clone()),
        ..EnvOpts::default()
    })
    .await;
    let mut all = Vec::new();
    for i in 0..100 {
        let q = env.publish(quote(CON, i));
        recorded.record(&env, &q);
        all.push(q);
    }
    env.wait(|| env.state.hub.stats().next_seq.load(Ordering::Relaxed) == 101)
        .await;
    (env, recorded, all)
}

fn since_request(since: &str) -> Request<Body> {
    Request::get(format!("/v3/stream/{CON}?tick_types=bid_ask&since={since}"))
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn since_replays_stored_ticks_then_joins_the_ring_after_the_last_stored_seq() {
    // The ring (64) holds 37..=100; the recorder has stored up to 80.
    let (mut env, recorded, all) = since_env(64).await;
    recorded.through.store(80, Ordering::Relaxed);
    let mut sse = SseReader::new(env.request(since_request("1h")).await);
    let start = sse.expect("info").await.json();
    assert_eq!(start["status"], "stream_start");
    assert!(start["since"].as_i64().unwrap() > 0);
    assert_eq!(sse.expect("info").await.json()["status"], "history_start");
    for q in &all[..80] {
        let e = sse.expect("tick").await;
        assert_eq!(e.id, Some(env.id(q.seq)));
        assert_eq!(e.data, env.json_of(q));
    }
    let live = sse.expect("info").await.json();
    assert_eq!(
        (
            live["status"].as_str(),
            live["after_seq"].as_u64(),
            live["history_ticks"].as_u64()
        ),
        (Some("live"), Some(80), Some(80))
    );
    let m = body_text(env.get("/metrics").await).await;
    assert!(m.contains("ib_stream_serve_history_replays_total 1"), "{m}");
    assert!(m.contains("ib_stream_serve_history_ticks_total 80"), "{m}");
    // 81..=100 from the ring: each once, in order; then what is published next.
    for q in &all[80..] {
        let e = sse.expect("tick").await;
        assert_eq!(e.id, Some(env.id(q.seq)));
        assert_eq!(e.data, env.json_of(q));
    }
    let next = env.publish(quote(CON, 1000));
    assert_eq!(sse.expect("tick").await.id, Some(env.id(next.seq)));
}

#[tokio::test]
async fn since_reports_the_exact_gap_when_the_ring_no_longer_holds_what_follows_storage() {
    // The ring (64) holds 37..=100; the recorder has stored only up to 20.
    let (env, recorded, all) = since_env(64).await;
    recorded.through.store(20, Ordering::Relaxed);
    let mut sse = SseReader::new(env.request(since_request("1h")).await);
    sse.expect("info").await;
    sse.expect("info").await;
    for q in &all[..20] {
        assert_eq!(sse.expect("tick").await.id, Some(env.id(q.seq)));
    }
    assert_eq!(sse.expect("info").await.json()["after_seq"], 20);
    let g = sse.expect("gap").await.json();
    assert_eq!(
        (
            g["reason"].as_str(),
            g["first_seq"].as_u64(),
            g["last_seq"].as_u64(),
            g["count"].as_u64()
        ),
        (Some("resume_unavailable"), Some(21), Some(36), Some(16))
    );
    for q in &all[36..] {
        assert_eq!(sse.expect("tick").await.id, Some(env.id(q.seq)));
    }
}

#[tokio::test]
async fn since_selects_by_receive_time_in_history_and_in_the_ring() {
    let recorded = std::sync::Arc::new(Recorded::default());
    let mut env = Env::new(EnvOpts {
        history: Some(recorded.clone()),
        ..EnvOpts::default()
    })
    .await;
    let hour_ago = now_ns() - 3_600_000_000_000;
    let mut fresh = Vec::new();
    for i in 0..30 {
        let mut r = quote(CON, i);
        if i < 10 {
            r.ts_recv = hour_ago + i;
        }
        let q = env.publish(r);
        recorded.record(&env, &q);
        if i >= 10 {
            fresh.push(q);
        }
    }
    // Stored up to 5 (all old: storage must skip them), 6..=30 from the ring (which must skip
    // the old 6..=10).
    recorded.through.store(5, Ordering::Relaxed);
    env.wait(|| env.state.hub.stats().next_seq.load(Ordering::Relaxed) == 31)
        .await;
    let mut sse = SseReader::new(env.request(since_request("30m")).await);
    sse.expect("info").await;
    sse.expect("info").await;
    let mut got = Vec::new();
    while got.len() < fresh.len() {
        let e = sse.next_non_heartbeat().await.unwrap();
        match e.event.as_str() {
            "tick" => got.push(e.data),
            "info" => assert_eq!(e.json()["status"], "live"),
            other => panic!("unexpected {other}: {e:?}"),
        }
    }
    let want: Vec<String> = fresh.iter().map(|q| env.json_of(q)).collect();
    assert_eq!(got, want, "only the ticks received in the last 30 minutes");
}

#[tokio::test]
async fn since_needs_a_history_source_and_a_valid_time() {
    let env = Env::new(EnvOpts::default()).await;
    let r = env.request(since_request("5m")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(body_json(r).await["error"]["code"], "storage_unavailable");
    for bad in ["yesterday", "5q", "2999-01-01T00:00:00Z", "0"] {
        let r = env.request(since_request(bad)).await;
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(body_json(r).await["error"]["code"], "bad_parameter");
    }
}

fn from(ip: [u8; 4], uri: &str) -> Request<Body> {
    let mut req = Request::get(uri).body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            ip, 40_000,
        ))));
    req
}

#[tokio::test]
async fn sse_streams_are_capped_per_remote_address() {
    let env = Env::new(EnvOpts {
        per_ip: ib_stream::serve::limits::PerIpLimits {
            sse_streams: 2,
            ws_connections: 1,
        },
        ..EnvOpts::default()
    })
    .await;
    let uri = format!("/v3/stream/{CON}?tick_types=bid_ask");
    let a1 = SseReader::new(env.request(from([10, 0, 0, 1], &uri)).await);
    let _a2 = SseReader::new(env.request(from([10, 0, 0, 1], &uri)).await);
    let r = env.request(from([10, 0, 0, 1], &uri)).await;
    assert_eq!(r.status(), 429);
    let e = body_json(r).await;
    assert_eq!(e["error"]["code"], "too_many_from_address");
    assert!(e["error"]["message"].as_str().unwrap().contains("10.0.0.1"));
    // Another address is not affected; a closed stream gives its slot back.
    let _b = SseReader::new(env.request(from([10, 0, 0, 2], &uri)).await);
    drop(a1);
    let _a3 = SseReader::new(env.request(from([10, 0, 0, 1], &uri)).await);
    let m = body_text(env.get("/metrics").await).await;
    assert!(
        m.contains("ib_stream_serve_refused_by_address_total{transport=\"sse\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn a_stop_reaches_a_stream_still_replaying_history() {
    let recorded = std::sync::Arc::new(Recorded::default());
    let mut env = Env::new(EnvOpts {
        ring_capacity: 64,
        queue_capacity: 4,
        history: Some(recorded.clone()),
        ..EnvOpts::default()
    })
    .await;
    for i in 0..100 {
        let q = env.publish(quote(CON, i));
        recorded.record(&env, &q);
    }
    env.wait(|| env.state.hub.stats().next_seq.load(Ordering::Relaxed) == 101)
        .await;
    // Nobody reads the body yet: the replay waits on the stream's full queue.
    let mut sse = SseReader::new(env.request(since_request("1h")).await);
    env.wait(|| env.state.replays.len() == 1).await;
    let r = env
        .request(
            Request::delete(format!("/v3/streams/{CON}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(body_json(r).await["stopped"], 1);
    let mut ticks = 0;
    let end = loop {
        let e = sse
            .next_non_heartbeat()
            .await
            .expect("a complete before the end");
        match e.event.as_str() {
            "tick" => ticks += 1,
            "info" => assert_ne!(e.json()["status"], "live", "it never joins"),
            "complete" => break e.json(),
            other => panic!("unexpected {other}"),
        }
    };
    assert_eq!(end["reason"], "stopped");
    assert!(ticks < 100, "stopped during the replay ({ticks} ticks)");
    assert!(sse.next().await.is_none(), "the stream ends");
    env.wait(|| env.state.replays.is_empty()).await;
    assert_eq!(env.state.hub.stats().sinks.load(Ordering::Relaxed), 0);
}

/// Replaces the ring's writer by a new one (a new epoch), as a restarted engine does; the old
/// one is dropped first (`clean`) or abandoned as by a SIGKILL. Waits until the tailer
/// follows.
async fn restart_engine(env: &mut Env, clean: bool) {
    let path = env.dir.path().join(ib_stream_ipc::ring::RING_FILE_NAME);
    let opts = ib_stream_ipc::ShmOptions {
        prefault: false,
        ..Default::default()
    };
    let old = std::mem::replace(&mut env.writer, ib_stream_ipc::RingWriter::heap(4).unwrap());
    if clean {
        drop(old);
    } else {
        old.abandon();
    }
    env.writer = ib_stream_ipc::RingWriter::create(&path, 256, &opts).unwrap();
    env.writer.heartbeat(now_ns() as u64);
    let epoch = env.writer.info().epoch;
    env.wait(|| env.state.hub.stats().epoch.load(Ordering::Relaxed) == epoch)
        .await;
}

/// The hole the resume token closes: a client away across an engine restart, whose last id
/// is at or below the new run's head, must not resume inside the new run as if nothing had
/// changed. Without history it is told, then goes live.
#[tokio::test]
async fn a_resume_across_an_engine_restart_is_never_silent() {
    let mut env = Env::new(EnvOpts::default()).await;
    let mut sse = SseReader::new(
        env.get(&format!("/v3/stream/{CON}?tick_types=bid_ask"))
            .await,
    );
    sse.expect("info").await;
    env.wait_sinks(1).await;
    let mut last_id = None;
    for i in 0..3 {
        env.publish(quote(CON, i));
        last_id = sse.expect("tick").await.id;
    }
    drop(sse);
    env.wait_sinks(0).await;
    restart_engine(&mut env, true).await;
    // The new run is already past the client's last sequence (3).
    for i in 0..10 {
        env.publish(quote(CON, 100 + i));
    }
    env.wait(|| env.state.hub.stats().next_seq.load(Ordering::Relaxed) == 11)
        .await;
    let req = Request::get(format!("/v3/stream/{CON}?tick_types=bid_ask"))
        .header("Last-Event-ID", last_id.clone().expect("ticks have ids"))
        .body(Body::empty())
        .unwrap();
    let mut sse = SseReader::new(env.request(req).await);
    assert_eq!(sse.expect("info").await.json()["status"], "stream_start");
    let e = sse.next_non_heartbeat().await.expect("stream open");
    assert_eq!(
        (e.event.as_str(), e.json()["status"].as_str()),
        ("info", Some("resume_unavailable")),
        "a resume point of the old run must be said, not resumed inside the new one: {e:?}"
    );
    env.wait_sinks(1).await;
    let q = env.publish(quote(CON, 999));
    let e = sse.expect("tick").await;
    assert_eq!(e.data, env.json_of(&q));
    assert_eq!(e.id, Some(env.id(q.seq)));
}

/// With storage, a resume across an engine restart is exact: the rest of the old run from
/// storage, the run change as the `gap{writer_restart}` a connected client got, the new run
/// from its start, then live, each tick once and with an id naming its run.
#[tokio::test]
async fn a_resume_across_an_engine_restart_is_exact_from_storage() {
    let recorded = std::sync::Arc::new(Recorded::default());
    let mut env = Env::new(EnvOpts {
        history: Some(recorded.clone()),
        ..EnvOpts::default()
    })
    .await;
    let mut sse = SseReader::new(
        env.get(&format!("/v3/stream/{CON}?tick_types=bid_ask"))
            .await,
    );
    sse.expect("info").await;
    env.wait_sinks(1).await;
    let mut last_id = None;
    for i in 0..3 {
        let q = env.publish(quote(CON, i));
        recorded.record(&env, &q);
        last_id = sse.expect("tick").await.id;
    }
    assert_eq!(last_id, Some(env.id(3)));
    drop(sse);
    env.wait_sinks(0).await;
    let old_epoch = env.writer.info().epoch;
    // Missed in the old run, then the restart, then the new run.
    let mut missed_old = Vec::new();
    for i in 0..3 {
        let q = env.publish(quote(CON, 10 + i));
        recorded.record(&env, &q);
        missed_old.push((env.id(q.seq), env.json_of(&q)));
    }
    restart_engine(&mut env, true).await;
    let mut missed_new = Vec::new();
    for i in 0..5 {
        let q = env.publish(quote(CON, 20 + i));
        recorded.record(&env, &q);
        missed_new.push((env.id(q.seq), env.json_of(&q)));
    }
    env.wait(|| env.state.hub.stats().next_seq.load(Ordering::Relaxed) == 6)
        .await;
    let req = Request::get(format!("/v3/stream/{CON}?tick_types=bid_ask"))
        .header("Last-Event-ID", last_id.unwrap())
        .body(Body::empty())
        .unwrap();
    let mut sse = SseReader::new(env.request(req).await);
    let start = sse.expect("info").await.json();
    assert_eq!(start["resume_after"], format!("{old_epoch:016x}-3"));
    assert_eq!(sse.expect("info").await.json()["status"], "history_start");
    let run = sse.expect("info").await.json();
    assert_eq!(run["status"], "history_epoch");
    assert_eq!(run["epoch"], format!("{old_epoch:016x}"));
    for (id, json) in &missed_old {
        let e = sse.expect("tick").await;
        assert_eq!((e.id.as_ref(), &e.data), (Some(id), json));
    }
    let g = sse.expect("gap").await;
    let gj = g.json();
    assert_eq!(gj["reason"], "writer_restart");
    assert_eq!(gj["epoch"], format!("{old_epoch:016x}"));
    assert_eq!(gj["new_epoch"], format!("{:016x}", env.writer.info().epoch));
    assert_eq!(
        (gj["clean"].as_bool(), gj["count"].as_u64()),
        (Some(true), Some(0))
    );
    assert_eq!(
        g.id,
        Some(env.id(0)),
        "resuming from the run change starts the new run"
    );
    for (id, json) in &missed_new {
        let e = sse.expect("tick").await;
        assert_eq!((e.id.as_ref(), &e.data), (Some(id), json));
    }
    let live = sse.expect("info").await.json();
    assert_eq!(
        (live["status"].as_str(), live["after_seq"].as_u64()),
        (Some("live"), Some(5))
    );
    let q = env.publish(quote(CON, 99));
    let e = sse.expect("tick").await;
    assert_eq!((e.id, e.data), (Some(env.id(q.seq)), env.json_of(&q)));
}

/// The sequence of an SSE id (`<epoch>-<seq>`).
fn seq_of(id: &str) -> u64 {
    id.rsplit('-').next().unwrap().parse().unwrap()
}
