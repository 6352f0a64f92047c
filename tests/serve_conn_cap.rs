//! The connection cap of the server's own accept loop (`serve::listen`), on a real port with
//! the fake engine: idle connections give way to a newcomer, busy ones (streams) never do,
//! and a newcomer when every slot is busy gets `503 too_many_connections` at once.

mod serve_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ib_stream::serve::listen::{self, ConnLimits, ConnStats};
use serve_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn serve(env: &Env, max: usize) -> (SocketAddr, Arc<ConnStats>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(ConnStats::default());
    let limits = ConnLimits {
        max_connections: max,
        header_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    tokio::spawn(listen::serve(
        listener,
        env.app.clone(),
        limits,
        Arc::clone(&stats),
        std::future::pending(),
    ));
    (addr, stats)
}

/// Sends `GET path` and reads the response head (and whatever came with it).
async fn ask(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_some(s).await
}

async fn read_some(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer within 10 s")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn idle_connections_give_way_busy_ones_never_and_a_full_house_gets_503() {
    let env = Env::new(EnvOpts::default()).await;
    let (addr, stats) = serve(&env, 3).await;

    // Two streams: busy for as long as they last.
    let mut s1 = TcpStream::connect(addr).await.unwrap();
    let mut s2 = TcpStream::connect(addr).await.unwrap();
    assert!(
        ask(&mut s1, "/v3/stream/31?tick_types=bid_ask")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        ask(&mut s2, "/v3/stream/32?tick_types=bid_ask")
            .await
            .starts_with("HTTP/1.1 200")
    );

    // An idle connection takes the last slot; a newcomer with a request evicts it.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    wait_for(|| stats.open.load(Ordering::Relaxed) == 3).await;
    let mut health = TcpStream::connect(addr).await.unwrap();
    let r = ask(&mut health, "/health").await;
    assert!(r.starts_with("HTTP/1.1 "), "{r}");
    assert!(!r.contains("too_many_connections"), "/health got in: {r}");
    assert_eq!(
        read_some(&mut idle).await,
        "",
        "the idle connection was closed"
    );
    assert_eq!(stats.evicted.load(Ordering::Relaxed), 1);

    // Now three busy: two streams and a third one.
    drop(health);
    wait_for(|| stats.open.load(Ordering::Relaxed) == 2).await;
    let mut s3 = TcpStream::connect(addr).await.unwrap();
    assert!(
        ask(&mut s3, "/v3/stream/33?tick_types=bid_ask")
            .await
            .starts_with("HTTP/1.1 200")
    );
    // A newcomer gets the refusal at once, without its request being read.
    let mut late = TcpStream::connect(addr).await.unwrap();
    let r = read_some(&mut late).await;
    assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
    assert!(r.contains("too_many_connections"), "{r}");
    assert_eq!(stats.refused.load(Ordering::Relaxed), 1);

    // The streams were never touched: they still deliver.
    env.wait_sinks(3).await;
    let mut env = env;
    env.publish(quote(31, 5));
    let got = read_some(&mut s1).await;
    assert!(got.contains("event: tick"), "{got}");
}

#[tokio::test]
async fn a_header_over_16_kib_is_431_and_the_connection_closes() {
    let env = Env::new(EnvOpts::default()).await;
    let (addr, _stats) = serve(&env, 8).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let big = "a".repeat(20 * 1024);
    let req = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    // The server may close before it has read all of it.
    let _ = s.write_all(req.as_bytes()).await;
    let r = read_some(&mut s).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
}
