//! A stream whose engine subscription is queued (IB's 15-second rule for tick-by-tick
//! requests on one instrument) is answered at once with `info{subscription_queued}` and the
//! time the request goes out, over SSE and WebSocket. The fake engine answers `subscribe`
//! for [`QUEUED_CON`] with `"state":"queued"` and `next_attempt_ns`. The WebSocket runs
//! through the server's own accept loop (`serve::listen`), upgrades included.

mod serve_support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ib_stream::serve::listen::{self, ConnLimits, ConnStats};
use serde_json::{Value, json};
use serve_support::*;
use tokio_tungstenite::tungstenite::Message;

fn check_notice(v: &Value, stream_id: &str, asked_ns: i64) {
    assert_eq!(v["type"], "info", "{v}");
    assert_eq!(v["status"], "subscription_queued", "{v}");
    assert_eq!(v["stream_id"], stream_id, "{v}");
    assert_eq!(v["contract_id"], QUEUED_CON, "{v}");
    assert_eq!(v["tick_type"], "bid_ask", "{v}");
    assert_eq!(v["state"], "queued", "{v}");
    let at = v["next_attempt"].as_i64().expect("next_attempt");
    let expect = (asked_ns + QUEUED_AFTER_NS) / 1000;
    assert!(
        (at - expect).abs() < 5_000_000,
        "next_attempt {at} vs about {expect}: {v}"
    );
}

#[tokio::test]
async fn sse_says_a_queued_subscription_waits_and_until_when() {
    let mut env = Env::new(EnvOpts::default()).await;
    let asked = now_ns();
    let mut sse = SseReader::new(
        env.get(&format!("/v3/stream/{QUEUED_CON}?tick_types=bid_ask"))
            .await,
    );
    let start = sse.next().await.unwrap().json();
    assert_eq!(start["status"], "stream_start");
    let sid = start["stream_id"].as_str().unwrap().to_owned();
    let notice = sse.next().await.unwrap();
    assert_eq!(notice.event, "info");
    check_notice(&notice.json(), &sid, asked);

    // A second client of the same subscription is told too (the server asks the engine once).
    let mut again = SseReader::new(
        env.get(&format!("/v3/stream/{QUEUED_CON}?tick_types=bid_ask"))
            .await,
    );
    let start2 = again.next().await.unwrap().json();
    let sid2 = start2["stream_id"].as_str().unwrap().to_owned();
    check_notice(&again.next().await.unwrap().json(), &sid2, asked);
    assert_eq!(env.log.count(&format!("subscribe:{QUEUED_CON}:")), 1);

    // A subscription that is not queued gets no notice: its next event is a tick.
    let mut plain = SseReader::new(env.get("/v3/stream/31?tick_types=bid_ask").await);
    assert_eq!(plain.next().await.unwrap().json()["status"], "stream_start");
    env.wait_sinks(3).await;
    env.publish(quote(31, 5));
    assert_eq!(plain.next().await.unwrap().event, "tick");
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("open")
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test]
async fn websocket_says_a_queued_subscription_waits() {
    let env = Env::new(EnvOpts::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = env.app.clone();
    let stats = Arc::new(ConnStats::default());
    tokio::spawn(listen::serve(
        listener,
        app,
        ConnLimits::default(),
        Arc::clone(&stats),
        std::future::pending(),
    ));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v3/ws"))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws).await["status"], "connected");
    let asked = now_ns();
    let sub =
        json!({"type": "subscribe", "id": 1, "contract_id": QUEUED_CON, "tick_types": ["bid_ask"]});
    ws.send(Message::text(sub.to_string())).await.unwrap();
    let ack = recv(&mut ws).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    let sid = ack["stream_id"].as_str().unwrap().to_owned();
    assert_eq!(recv(&mut ws).await["status"], "stream_start");
    check_notice(&recv(&mut ws).await, &sid, asked);
    // The upgraded connection keeps its slot, busy: it is never evicted for a newcomer.
    assert_eq!(
        stats.open.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the WebSocket holds its connection slot"
    );
}
