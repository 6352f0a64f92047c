//! The client's tokio driver against a scripted WebSocket server in the test: a server that
//! goes silent (heartbeat deadline), a consumer that stops reading while the client is
//! closed, and frames the protocol does not have. Every wait is bounded.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ib_stream_client::{
    BackoffConfig, Client, ClientConfig, ConnState, Event, FrameError, MalformedPolicy,
    Subscription,
};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const HELLO: &str = r#"{"type":"info","status":"connected","protocol":"v3","limits":{"max_streams":20,"max_messages_per_second":100,"max_message_bytes":16384},"heartbeat_seconds":1}"#;
const BOUND: Duration = Duration::from_secs(20);

fn tick(seq: u64) -> String {
    format!(r#"{{"seq":{seq},"st":1,"cid":5,"tt":"last","p":1.5,"s":1}}"#)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Accepts one WebSocket, says hello, answers the first subscribe.
async fn accept_and_subscribe(l: &TcpListener) -> Ws {
    let (s, _) = l.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
    ws.send(Message::text(HELLO)).await.unwrap();
    loop {
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("no subscribe")
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        if v["type"] == "subscribe" {
            let id = &v["id"];
            ws.send(Message::text(format!(
                r#"{{"type":"subscribed","id":{id},"stream_id":"s1"}}"#
            )))
            .await
            .unwrap();
            ws.send(Message::text(
                r#"{"type":"info","status":"stream_start","epoch":"00000000000000aa","ring_head":0,"stream_id":"s1"}"#,
            ))
            .await
            .unwrap();
            return ws;
        }
    }
}

fn config(port: u16) -> ClientConfig {
    let mut c = ClientConfig::new(format!("ws://127.0.0.1:{port}"));
    c.session.backoff = BackoffConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        factor: 2.0,
        max_attempts: None,
    };
    c
}

async fn next(events: &mut ib_stream_client::Events) -> Event {
    tokio::time::timeout(BOUND, events.next())
        .await
        .expect("an event in time")
        .expect("the stream is open")
}

#[tokio::test]
async fn a_server_that_goes_silent_is_declared_dead_and_the_stream_resumes() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (client, mut events) = Client::start(config(port)).unwrap();
    client.subscribe(Subscription::new(5, &["last"])).unwrap();
    let mut ws = tokio::time::timeout(BOUND, accept_and_subscribe(&l))
        .await
        .expect("subscribed");
    ws.send(Message::text(tick(7))).await.unwrap();
    // Then nothing: no heartbeat, no close; the socket stays open.
    let mut second = None;
    let mut saw_dead = false;
    let until = tokio::time::Instant::now() + BOUND;
    while second.is_none() {
        tokio::select! {
            e = next(&mut events) => {
                if let Event::State(t) = &e
                    && t.to == ConnState::Reconnecting
                {
                    assert!(t.reason.contains("heartbeat missed"), "{}", t.reason);
                    saw_dead = true;
                }
            }
            a = l.accept() => {
                let (s, _) = a.unwrap();
                let mut ws2 = tokio_tungstenite::accept_async(s).await.unwrap();
                ws2.send(Message::text(HELLO)).await.unwrap();
                let Some(Ok(Message::Text(t))) = ws2.next().await else { panic!() };
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                second = Some(v);
            }
            () = tokio::time::sleep_until(until) => panic!("no reconnect"),
        }
    }
    drop(ws);
    assert_eq!(second.unwrap()["after_seq"], "00000000000000aa-7");
    // The transition came before the new connection's request.
    while !saw_dead {
        if let Event::State(t) = next(&mut events).await {
            saw_dead = t.to == ConnState::Reconnecting;
        }
    }
    assert_eq!(client.metrics().silent_deaths, 1);
    client.close().await;
}

#[tokio::test]
async fn close_returns_while_the_consumer_is_not_reading() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let mut cfg = config(port);
    cfg.queue_capacity = 1;
    let (client, mut events) = Client::start(cfg).unwrap();
    client.subscribe(Subscription::new(5, &["last"])).unwrap();
    let (mut ws, ()) = tokio::join!(
        async {
            tokio::time::timeout(BOUND, accept_and_subscribe(&l))
                .await
                .expect("subscribed")
        },
        async {
            // Read until subscribed (a queue of 1 holds the client up otherwise), then stop.
            while !matches!(next(&mut events).await, Event::Subscribed { .. }) {}
        }
    );
    for s in 1..=50 {
        ws.send(Message::text(tick(s))).await.unwrap();
    }
    // The client's queue (1) is full and nobody reads `events`.
    let until = tokio::time::Instant::now() + BOUND;
    while client.health().queued_events < 1 {
        assert!(tokio::time::Instant::now() < until);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::timeout(BOUND, client.close())
        .await
        .expect("close does not wait for the consumer");
    drop(events);
}

#[tokio::test]
async fn frames_the_protocol_does_not_have_are_typed_errors_and_the_stream_goes_on() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let mut cfg = config(port);
    cfg.session.malformed = MalformedPolicy::Skip;
    let (client, mut events) = Client::start(cfg).unwrap();
    client.subscribe(Subscription::new(5, &["last"])).unwrap();
    let mut ws = tokio::time::timeout(BOUND, accept_and_subscribe(&l))
        .await
        .expect("subscribed");
    ws.send(Message::text(tick(1))).await.unwrap();
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    ws.send(Message::text(r#"{"seq":2,"st":"#)).await.unwrap();
    ws.send(Message::text(r#"{"type":"surprise"}"#))
        .await
        .unwrap();
    ws.send(Message::text(
        r#"{"seq":3,"st":1,"cid":99,"tt":"last","p":1,"s":1}"#,
    ))
    .await
    .unwrap();
    ws.send(Message::text(tick(4))).await.unwrap();
    let mut errors = Vec::new();
    let mut ticks = Vec::new();
    while ticks.len() < 2 {
        match next(&mut events).await {
            Event::Tick { tick, .. } => ticks.push(tick.seq),
            Event::Malformed(e) => errors.push(e),
            _ => {}
        }
    }
    assert_eq!(ticks, [1, 4]);
    assert!(matches!(errors[0], FrameError::Binary(3)), "{errors:?}");
    assert!(
        matches!(errors[1], FrameError::Truncated { .. }),
        "{errors:?}"
    );
    assert!(
        matches!(&errors[2], FrameError::UnknownType(t) if t == "surprise"),
        "{errors:?}"
    );
    assert!(
        matches!(errors[3], FrameError::UnknownStream(_)),
        "{errors:?}"
    );
    let m = client.metrics();
    assert_eq!((m.malformed, m.ticks, m.reconnects), (4, 2, 0));
    assert_eq!(client.state(), ConnState::Connected);
    client.close().await;
}
