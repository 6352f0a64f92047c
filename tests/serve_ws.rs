//! The WebSocket endpoint on a real port (127.0.0.1, ephemeral): requests, many streams per
//! connection, limits and close codes, hostile frames.

mod serve_support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ib_stream::serve::WsLimits;
use serde_json::{Value, json};
use serve_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn serve(env: &Env) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = env.app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn connect(addr: SocketAddr) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v3/ws"))
        .await
        .unwrap();
    let hello = recv(&mut ws).await;
    assert_eq!(
        (hello["type"].as_str(), hello["status"].as_str()),
        (Some("info"), Some("connected"))
    );
    ws
}

enum Got {
    Text(String),
    Closed(Option<u16>),
}

async fn next(ws: &mut Ws) -> Got {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("nothing from the server within 10 s");
        match m {
            None | Some(Err(_)) => return Got::Closed(None),
            Some(Ok(Message::Close(f))) => return Got::Closed(f.map(|f| u16::from(f.code))),
            Some(Ok(Message::Text(t))) => {
                let s = t.to_string();
                if s.contains("\"type\":\"heartbeat\"") {
                    continue;
                }
                return Got::Text(s);
            }
            Some(Ok(_)) => continue,
        }
    }
}

async fn recv_text(ws: &mut Ws) -> String {
    match next(ws).await {
        Got::Text(s) => s,
        Got::Closed(c) => panic!("closed ({c:?}) while a message was expected"),
    }
}

async fn recv(ws: &mut Ws) -> Value {
    serde_json::from_str(&recv_text(ws).await).unwrap()
}

async fn closed_with(ws: &mut Ws) -> Option<u16> {
    loop {
        match next(ws).await {
            Got::Closed(c) => return c,
            Got::Text(_) => continue,
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

#[tokio::test]
async fn subscribe_ticks_ping_and_unsubscribe() {
    let mut env = Env::new(EnvOpts::default()).await;
    let addr = serve(&env).await;
    let mut ws = connect(addr).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "a", "contract_id": 31, "tick_types": ["bid_ask"]}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(
        (ack["type"].as_str(), ack["id"].as_str()),
        (Some("subscribed"), Some("a"))
    );
    let sid = ack["stream_id"].as_str().unwrap().to_owned();
    let start = recv(&mut ws).await;
    assert_eq!(
        (start["status"].as_str(), start["stream_id"].as_str()),
        (Some("stream_start"), Some(sid.as_str()))
    );
    env.wait_sinks(1).await;
    let q = env.publish(quote(31, 5));
    env.publish(trade(31, 5, 0));
    let q2 = env.publish(quote(31, 6));
    assert_eq!(
        recv_text(&mut ws).await,
        env.json_of(&q),
        "same bytes as SSE and storage"
    );
    assert_eq!(recv_text(&mut ws).await, env.json_of(&q2));
    send(&mut ws, json!({"type": "ping", "id": 7, "ts": 123})).await;
    let pong = recv(&mut ws).await;
    assert_eq!(
        (
            pong["type"].as_str(),
            pong["id"].as_i64(),
            pong["ts"].as_i64()
        ),
        (Some("pong"), Some(7), Some(123))
    );
    send(
        &mut ws,
        json!({"type": "unsubscribe", "id": 8, "stream_id": sid}),
    )
    .await;
    let u = recv(&mut ws).await;
    assert_eq!(
        (u["type"].as_str(), u["id"].as_i64()),
        (Some("unsubscribed"), Some(8))
    );
    let c = recv(&mut ws).await;
    assert_eq!(
        (
            c["type"].as_str(),
            c["reason"].as_str(),
            c["count"].as_u64()
        ),
        (Some("complete"), Some("unsubscribed"), Some(2))
    );
    env.wait_sinks(0).await;
    env.wait(|| env.log.count("unsubscribe:31:bid_ask") == 1)
        .await;
    send(
        &mut ws,
        json!({"type": "unsubscribe", "id": 9, "stream_id": sid}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["code"], "unknown_stream");
}

#[tokio::test]
async fn many_streams_per_connection_with_limits() {
    let mut env = Env::new(EnvOpts {
        ws: WsLimits {
            max_streams: 2,
            ..WsLimits::default()
        },
        ..EnvOpts::default()
    })
    .await;
    let addr = serve(&env).await;
    let mut ws = connect(addr).await;
    for (id, con) in [(1, 41), (2, 42)] {
        send(&mut ws, json!({"type": "subscribe", "id": id, "contract_id": con, "tick_types": ["last"], "limit": 2})).await;
        assert_eq!(recv(&mut ws).await["type"], "subscribed");
        assert_eq!(recv(&mut ws).await["status"], "stream_start");
    }
    send(
        &mut ws,
        json!({"type": "subscribe", "id": 3, "contract_id": 41, "tick_types": ["last"]}),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("too_many_streams"), Some(3))
    );
    env.wait_sinks(2).await;
    let a = env.publish(trade(41, 1, 0));
    let b = env.publish(trade(42, 2, 0));
    let mut got = vec![recv_text(&mut ws).await, recv_text(&mut ws).await];
    got.sort();
    let mut want = vec![env.json_of(&a), env.json_of(&b)];
    want.sort();
    assert_eq!(got, want);
    env.publish(trade(41, 3, 0));
    assert_eq!(recv(&mut ws).await["tt"], "last");
    let c = recv(&mut ws).await;
    assert_eq!(
        (c["type"].as_str(), c["reason"].as_str()),
        (Some("complete"), Some("limit_reached"))
    );
    // A slot is free again, but a second stream of the same ticks on one connection is refused.
    send(
        &mut ws,
        json!({"type": "subscribe", "id": 4, "contract_id": 42, "tick_types": ["last", "bid_ask"]}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["code"], "duplicate_subscription");
    send(
        &mut ws,
        json!({"type": "subscribe", "id": 5, "contract_id": 42, "tick_types": ["bid_ask"]}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
}

#[tokio::test]
async fn bad_requests_get_errors_then_close_4000() {
    let env = Env::new(EnvOpts::default()).await;
    let addr = serve(&env).await;
    let mut ws = connect(addr).await;
    // Parameter errors answer the request and keep the connection.
    for bad in [
        json!({"type": "subscribe", "id": 1, "contract_id": 0}),
        json!({"type": "subscribe", "id": 1, "contract_id": "x"}),
        json!({"type": "subscribe", "id": 1, "contract_id": 5, "tick_types": ["trades"]}),
        json!({"type": "subscribe", "id": 1, "contract_id": 5, "tick_types": []}),
        json!({"type": "subscribe", "id": 1, "contract_id": 5, "limit": 0}),
        json!({"type": "subscribe", "id": 1, "contract_id": 5, "slow": "maybe"}),
        json!({"type": "subscribe", "id": 1, "contract_id": 5, "extra": true}),
    ] {
        send(&mut ws, bad.clone()).await;
        let e = recv(&mut ws).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str(), e["id"].as_i64()),
            (Some("error"), Some("bad_parameter"), Some(1)),
            "{bad}"
        );
    }
    send(
        &mut ws,
        json!({"type": "subscribe", "id": 2, "contract_id": REFUSED_CON}),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), e["ib_code"].as_i64()),
        (Some("subscription_refused"), Some(200))
    );
    // Malformed messages count; the 8th closes with 4000.
    let junk: [Message; 8] = [
        Message::text("not json"),
        Message::text("[1,2]"),
        Message::text("{\"type\":\"fly\"}"),
        Message::text("{}"),
        Message::text("{\"type\":\"ping\",\"id\":{\"a\":1}}"),
        Message::binary(vec![0u8, 1, 2]),
        Message::text("\u{0}\u{1}"),
        Message::text("{\"type\":\"unsubscribe\"}"),
    ];
    for (i, m) in junk.into_iter().enumerate() {
        ws.send(m).await.unwrap();
        if i < 7 {
            assert_eq!(recv(&mut ws).await["code"], "invalid_message");
        }
    }
    assert_eq!(recv(&mut ws).await["code"], "invalid_message");
    assert_eq!(closed_with(&mut ws).await, Some(4000));
    // The server still serves.
    let _ = connect(addr).await;
}

#[tokio::test]
async fn a_flood_closes_with_4004_and_a_huge_message_with_1009() {
    let env = Env::new(EnvOpts {
        ws: WsLimits {
            max_msgs_per_sec: 10,
            max_message_bytes: 1024,
            ..WsLimits::default()
        },
        ..EnvOpts::default()
    })
    .await;
    let addr = serve(&env).await;
    let mut ws = connect(addr).await;
    for i in 0..40 {
        if ws
            .send(Message::text(json!({"type": "ping", "id": i}).to_string()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(closed_with(&mut ws).await, Some(4004));

    let mut ws = connect(addr).await;
    let big = format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(100_000));
    let _ = ws.send(Message::text(big)).await;
    assert_eq!(closed_with(&mut ws).await, Some(1009));
    let _ = connect(addr).await;
}

#[tokio::test]
async fn garbage_frames_close_the_connection_not_the_server() {
    let env = Env::new(EnvOpts::default()).await;
    let addr = serve(&env).await;
    for junk in [
        vec![0xFFu8; 64],                               // reserved bits, bad opcode
        vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o'], // an unmasked client frame
        vec![
            0x81, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4,
        ], // absurd length
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!(
                "GET /v3/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"));
        s.write_all(&junk).await.unwrap();
        // The server drops the connection (after its hello and maybe a close frame).
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok(),
            "the server kept a broken connection open: {junk:?}"
        );
    }
    // Still serving WebSocket and HTTP.
    let _ = connect(addr).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET /ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[tokio::test]
async fn unknown_query_parameters_on_the_upgrade_are_400() {
    let env = Env::new(EnvOpts::default()).await;
    let addr = serve(&env).await;
    let err = tokio_tungstenite::connect_async(format!("ws://{addr}/v3/ws?x=1"))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 400),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn websocket_connections_are_capped() {
    let env = Env::new(EnvOpts {
        ws: WsLimits {
            max_connections: 1,
            ..WsLimits::default()
        },
        ..EnvOpts::default()
    })
    .await;
    let addr = serve(&env).await;
    let ws = connect(addr).await;
    match tokio_tungstenite::connect_async(format!("ws://{addr}/v3/ws")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("a second connection was accepted: {:?}", other.map(|_| ())),
    }
    drop(ws);
    // The slot comes back once the server has seen the first connection go.
    wait_for(|| {
        env.state
            .metrics
            .ws_open
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
    })
    .await;
    let _ = connect(addr).await;
}

#[tokio::test]
async fn shutdown_completes_streams_and_closes_with_1001() {
    let env = Env::new(EnvOpts::default()).await;
    let addr = serve(&env).await;
    let mut ws = connect(addr).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "id": 1, "contract_id": TRACKED_CON}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    recv(&mut ws).await;
    let mut sse = SseReader::new(env.get(&format!("/v3/stream/{TRACKED_CON}")).await);
    sse.expect("info").await;
    env.wait_sinks(2).await;
    env.state.hub.shutdown();
    let c = sse.expect("complete").await.json();
    assert_eq!(c["reason"], "server_shutdown");
    assert!(sse.next().await.is_none());
    let c = recv(&mut ws).await;
    assert_eq!(
        (c["type"].as_str(), c["reason"].as_str()),
        (Some("complete"), Some("server_shutdown"))
    );
    assert_eq!(closed_with(&mut ws).await, Some(1001));
    wait_for(|| !env.state.hub.is_running()).await;
}

#[tokio::test]
async fn a_pending_subscribe_does_not_block_the_connection() {
    let env = Env::new(EnvOpts::default()).await;
    let addr = serve(&env).await;
    let mut ws = connect(addr).await;
    // The engine holds this subscription until released.
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "slow", "contract_id": SLOW_CON, "tick_types": ["last"]}),
    )
    .await;
    env.wait(|| env.log.count("held") == 1).await;
    // Meanwhile the connection answers pings and other subscribes.
    send(&mut ws, json!({"type": "ping", "id": 1})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "fast", "contract_id": TRACKED_CON, "tick_types": ["bid_ask"]}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(
        (ack["type"].as_str(), ack["id"].as_str()),
        (Some("subscribed"), Some("fast"))
    );
    assert_eq!(recv(&mut ws).await["status"], "stream_start");
    // The pending one still counts against duplicates.
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "dup", "contract_id": SLOW_CON, "tick_types": ["last"]}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["code"], "duplicate_subscription");
    // `since` needs a history source (none here): an error answer, at once.
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "h", "contract_id": 31, "since": "5m"}),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(
        (e["id"].as_str(), e["code"].as_str()),
        (Some("h"), Some("storage_unavailable"))
    );
    // Released: its answer comes now.
    env.log
        .release
        .store(true, std::sync::atomic::Ordering::Release);
    let ack = recv(&mut ws).await;
    assert_eq!(
        (ack["type"].as_str(), ack["id"].as_str()),
        (Some("subscribed"), Some("slow"))
    );
    assert_eq!(recv(&mut ws).await["status"], "stream_start");
    env.wait_sinks(2).await;
}

#[tokio::test]
async fn subscribe_with_since_replays_history_then_goes_live() {
    let recorded = std::sync::Arc::new(Recorded::default());
    let mut env = Env::new(EnvOpts {
        ring_capacity: 64,
        history: Some(recorded.clone()),
        ..EnvOpts::default()
    })
    .await;
    let mut all = Vec::new();
    for i in 0..100 {
        let q = env.publish(quote(31, i));
        recorded.record(&env, &q);
        all.push(q);
    }
    recorded
        .through
        .store(90, std::sync::atomic::Ordering::Relaxed);
    env.wait(|| {
        env.state
            .hub
            .stats()
            .next_seq
            .load(std::sync::atomic::Ordering::Relaxed)
            == 101
    })
    .await;
    let addr = serve(&env).await;
    let mut ws = connect(addr).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "id": 1, "contract_id": 31, "tick_types": ["bid_ask"], "since": "10m", "limit": 105}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    assert_eq!(recv(&mut ws).await["status"], "stream_start");
    assert_eq!(recv(&mut ws).await["status"], "history_start");
    for q in &all[..90] {
        assert_eq!(recv_text(&mut ws).await, env.json_of(q));
    }
    let live = recv(&mut ws).await;
    assert_eq!(
        (live["status"].as_str(), live["after_seq"].as_u64()),
        (Some("live"), Some(90))
    );
    for q in &all[90..] {
        assert_eq!(recv_text(&mut ws).await, env.json_of(q));
    }
    let mut more = Vec::new();
    for i in 0..5 {
        more.push(env.publish(quote(31, 500 + i)));
    }
    for q in &more {
        assert_eq!(recv_text(&mut ws).await, env.json_of(q));
    }
    let c = recv(&mut ws).await;
    assert_eq!(
        (
            c["type"].as_str(),
            c["reason"].as_str(),
            c["count"].as_u64()
        ),
        (Some("complete"), Some("limit_reached"), Some(105))
    );
    // since without a source, or a bad since, is an error answer (the connection stays).
    send(
        &mut ws,
        json!({"type": "subscribe", "id": 2, "contract_id": 31, "since": "soon"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["code"], "bad_parameter");
}

#[tokio::test]
async fn websocket_connections_are_capped_per_remote_address() {
    let env = Env::new(EnvOpts {
        per_ip: ib_stream::serve::limits::PerIpLimits {
            sse_streams: 10,
            ws_connections: 2,
        },
        ..EnvOpts::default()
    })
    .await;
    // Served with the peer address, as `ib-stream serve` does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = env
        .app
        .clone()
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let a = connect(addr).await;
    let _b = connect(addr).await;
    let (mut c, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v3/ws"))
        .await
        .unwrap();
    let e = recv(&mut c).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("too_many_from_address"))
    );
    assert_eq!(closed_with(&mut c).await, Some(4029));
    // A closed connection gives its slot back.
    drop(a);
    let ip: std::net::IpAddr = [127, 0, 0, 1].into();
    env.wait(|| {
        env.state
            .per_ip
            .count(ip, ib_stream::serve::limits::Counted::Ws)
            == 1
    })
    .await;
    let _d = connect(addr).await;
}

#[tokio::test]
async fn after_seq_older_than_the_ring_comes_from_history() {
    let recorded = std::sync::Arc::new(Recorded::default());
    let mut env = Env::new(EnvOpts {
        ring_capacity: 64,
        history: Some(recorded.clone()),
        ..EnvOpts::default()
    })
    .await;
    let mut all = Vec::new();
    for i in 0..100 {
        let q = env.publish(quote(31, i));
        recorded.record(&env, &q);
        all.push(q);
    }
    env.wait(|| {
        env.state
            .hub
            .stats()
            .next_seq
            .load(std::sync::atomic::Ordering::Relaxed)
            == 101
    })
    .await;
    let addr = serve(&env).await;
    let mut ws = connect(addr).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "id": 1, "contract_id": 31, "tick_types": ["bid_ask"], "after_seq": 5}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    assert_eq!(recv(&mut ws).await["resume_after"], 5);
    assert_eq!(recv(&mut ws).await["status"], "history_start");
    for q in &all[5..] {
        assert_eq!(recv_text(&mut ws).await, env.json_of(q));
    }
    let live = recv(&mut ws).await;
    assert_eq!(
        (live["status"].as_str(), live["after_seq"].as_u64()),
        (Some("live"), Some(100))
    );
    let q = env.publish(quote(31, 1000));
    assert_eq!(recv_text(&mut ws).await, env.json_of(&q));
}

#[tokio::test]
async fn after_seq_tokens_name_the_run_and_another_runs_is_never_resumed_silently() {
    let mut env = Env::new(EnvOpts::default()).await;
    let mut all = Vec::new();
    for i in 0..5 {
        all.push(env.publish(quote(31, i)));
    }
    env.wait(|| {
        env.state
            .hub
            .stats()
            .next_seq
            .load(std::sync::atomic::Ordering::Relaxed)
            == 6
    })
    .await;
    let addr = serve(&env).await;
    let mut ws = connect(addr).await;
    // This run's token: exactly what follows it.
    send(
        &mut ws,
        json!({"type": "subscribe", "id": 1, "contract_id": 31, "tick_types": ["bid_ask"], "after_seq": env.id(2)}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    let start = recv(&mut ws).await;
    assert_eq!(start["resume_after"], env.id(2));
    assert_eq!(start["epoch"], format!("{:016x}", env.writer.info().epoch));
    for q in &all[2..] {
        assert_eq!(recv_text(&mut ws).await, env.json_of(q));
    }
    // Another run's token, at a sequence this run also has: said, not resumed inside it.
    let mut ws2 = connect(addr).await;
    let other = format!("{:016x}-2", env.writer.info().epoch ^ 1);
    send(
        &mut ws2,
        json!({"type": "subscribe", "id": 1, "contract_id": 31, "tick_types": ["bid_ask"], "after_seq": other}),
    )
    .await;
    assert_eq!(recv(&mut ws2).await["type"], "subscribed");
    assert_eq!(recv(&mut ws2).await["status"], "stream_start");
    let i = recv(&mut ws2).await;
    assert_eq!(
        (i["status"].as_str(), i["requested_after"].as_str()),
        (Some("resume_unavailable"), Some(other.as_str()))
    );
    let q = env.publish(quote(31, 99));
    assert_eq!(recv_text(&mut ws2).await, env.json_of(&q));
    // Neither a token nor a number.
    send(
        &mut ws2,
        json!({"type": "subscribe", "id": 2, "contract_id": 32, "after_seq": "x-1"}),
    )
    .await;
    let e = recv(&mut ws2).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_parameter"))
    );
}
