//! The live page in a real headless browser (Debian's `chromium`, installed by
//! `scripts/install-chromium.sh`), driven over the DevTools protocol: load the page, and with
//! no click see the tracked contract's ticks in the table, the chart drawn with labelled
//! axes, every time with its zone, the connection state and the rates. And the chart page
//! (`/chart`): over recorded files, the bars it draws are the rows `ib-stream studies bars`
//! writes for that interval, candles and whitespace for the gaps, in the exchange's zone.
//!
//! Ignored by default because it needs chromium (and, for the chart, the library):
//! `./scripts/install-chromium.sh && ./scripts/install-web.sh &&
//! cargo test --test serve_page_browser -- --ignored`.

mod serve_support;
mod storage_query_support;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use serve_support::*;
use storage_query_support::{CID, EPOCH_A, T0, TempRoot, epoch_records, write_store};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Cdp {
    ws: Ws,
    next_id: u64,
    session: Option<String>,
}

impl Cdp {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("no DevTools answer in 20 s")
                .expect("DevTools closed")
                .unwrap();
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    async fn eval(&mut self, js: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }
}

/// Starts headless chromium (TZ=UTC) and opens `url` in a 1280x1000 window; the profile
/// directory lives as long as the returned guard.
async fn chromium(url: &str) -> (tokio::process::Child, Cdp, tempfile::TempDir) {
    let profile = tempfile::tempdir().unwrap();
    let mut chrome = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .env("TZ", "UTC")
        .arg("about:blank")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium not found: run ./scripts/install-chromium.sh");
    let mut lines = BufReader::new(chrome.stderr.take().unwrap()).lines();
    let devtools = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if let Some(url) = l.split("DevTools listening on ").nth(1) {
                return url.trim().to_owned();
            }
        }
        panic!("chromium exited without a DevTools endpoint");
    })
    .await
    .expect("chromium did not start in 30 s");
    // Keep draining chromium's stderr so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let (ws, _) = tokio_tungstenite::connect_async(&devtools).await.unwrap();
    let mut cdp = Cdp {
        ws,
        next_id: 0,
        session: None,
    };
    let target = cdp.call("Target.createTarget", json!({"url": url})).await;
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )
        .await;
    cdp.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
    // A desktop window, so that the screenshot shows the whole chart and both axes.
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    (chrome, cdp, profile)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium: ./scripts/install-chromium.sh, then run with --ignored"]
async fn the_page_streams_the_tracked_contract_on_open_with_labelled_axes_and_zoned_times() {
    let mut env = Env::new(EnvOpts::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = env.app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (mut chrome, mut cdp, _profile) = chromium(&format!("http://{addr}/")).await;
    // Wait for the page's script.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while cdp
        .eval("document.readyState === 'complete' && !!document.getElementById('start')")
        .await
        != json!(true)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page did not load"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nobody clicks Start: the page opens the tracked contract's stream by itself.
    env.wait_sinks(1).await;
    assert_eq!(
        cdp.eval("document.getElementById('conid').value").await,
        TRACKED_CON.to_string()
    );

    // Publish while the page watches.
    let running = Arc::new(AtomicBool::new(true));
    let stop = Arc::clone(&running);
    let publisher = tokio::spawn(async move {
        let mut i = 0;
        while stop.load(Ordering::Relaxed) {
            env.publish(quote(TRACKED_CON, 10_000 + i % 50));
            env.publish(trade(TRACKED_CON, 10_000 + i % 40, 0));
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        env
    });
    let probe = "(() => { const c = document.getElementById('chart'); \
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
        let painted = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) painted++; \
        return { state: document.getElementById('conn').dataset.state, \
                 total: Number(document.getElementById('total').textContent), \
                 rows: document.querySelectorAll('#ticks tbody tr').length, \
                 rate: Number(document.getElementById('rate').textContent), \
                 first: (document.querySelector('#ticks tbody tr td:nth-child(3)') || {}).textContent, \
                 time: (document.querySelector('#ticks tbody tr td:nth-child(2)') || {}).textContent, \
                 logTime: (document.querySelector('#log li') || {}).textContent, \
                 yAxis: document.getElementById('yaxis').textContent, \
                 xAxis: document.getElementById('xaxis').textContent, \
                 yTicks: c.dataset.yTicks, xTicks: c.dataset.xTicks, \
                 painted }; })()";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let v = cdp.eval(probe).await;
        if v["state"] == "open"
            && v["total"].as_u64().unwrap_or(0) >= 100
            && v["rows"].as_u64() == Some(50)
            && v["rate"].as_u64().unwrap_or(0) > 0
            && v["painted"].as_u64().unwrap_or(0) > 0
            && v["xTicks"].as_str().is_some_and(|t| !t.is_empty())
        {
            break v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never showed the stream: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        matches!(seen["first"].as_str(), Some("bid_ask" | "last")),
        "{seen}"
    );
    // Both axes are labelled, with values; every time shown carries its zone (chromium runs
    // with TZ=UTC here, so the zone is UTC).
    assert_eq!(seen["yAxis"], "price", "{seen}");
    assert_eq!(seen["xAxis"], "time (UTC)", "{seen}");
    assert!(
        seen["yTicks"]
            .as_str()
            .unwrap()
            .split(' ')
            .all(|t| t.parse::<f64>().is_ok()),
        "{seen}"
    );
    assert!(
        seen["xTicks"]
            .as_str()
            .unwrap()
            .split(' ')
            .all(|t| t.len() >= 8 && t.as_bytes()[2] == b':' && t.as_bytes()[5] == b':'),
        "{seen}"
    );
    let zoned = |t: &str| {
        let (clock, zone) = t.split_once(' ').unwrap_or((t, ""));
        clock.len() == 12 && clock.as_bytes()[8] == b'.' && zone.starts_with("UTC")
    };
    assert!(zoned(seen["time"].as_str().unwrap()), "{seen}");
    assert!(zoned(seen["logTime"].as_str().unwrap()), "{seen}");
    // Keep a picture of the page as a user saw it (target/page-screenshot.png).
    let shot = cdp
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("page-screenshot.png");
    std::fs::write(&out, &png).expect("write the screenshot");
    eprintln!("screenshot: {}", out.display());
    cdp.eval("document.getElementById('stop').click()").await;
    assert_eq!(
        cdp.eval("document.getElementById('conn').dataset.state")
            .await,
        "closed"
    );
    running.store(false, Ordering::Relaxed);
    let env = publisher.await.unwrap();
    env.wait_sinks(0).await;
    let _ = chrome.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium: ./scripts/install-chromium.sh, then run with --ignored"]
async fn the_chart_draws_the_bars_of_a_recorded_interval_as_the_command_computes_them() {
    assert!(
        ib_stream::serve::page::CHART_LIB.is_some(),
        "built without the chart library: run ./scripts/install-web.sh first"
    );
    let root = TempRoot::new("chart");
    // 15 minutes of the standard market, one record a second, with the engine's gap record
    // for 4 lost minutes in the middle (their records are not stored).
    let mut strings = ib_stream::tickjson::LocalStrings::default();
    let mut recs = epoch_records(900, T0, 1_000_000_000, &mut strings, false);
    let (a, b) = (recs[300], recs[540]);
    let mut gap = ib_stream_ipc::Record::new(ib_stream_ipc::RecordKind::Gap);
    gap.tick_type = ib_stream_ipc::GapReason::Disconnected as u8;
    gap.body = [a.seq as i64 + 1, b.seq as i64, a.ts_recv - 1000, b.ts_recv];
    gap.seq = a.seq;
    gap.ts_recv = b.ts_recv;
    recs[300] = gap;
    recs.retain(|r| r.seq <= a.seq || r.seq > b.seq);
    write_store(&root.0, EPOCH_A, &recs, &strings);
    let env = Env::new(EnvOpts {
        history: Some(Arc::new(
            ib_stream::serve::storage_history::StorageHistory::new(&root.0),
        )),
        ..EnvOpts::default()
    })
    .await;
    let ts = |ns: i64| {
        jiff::Timestamp::from_nanosecond(i128::from(ns))
            .unwrap()
            .to_string()
    };
    let (from, to) = (ts(T0), ts(T0 + 3_600_000_000_000));
    let want = storage_query_support::studies_bars_1m(&root.0, &from, &to);
    let empty = want.iter().filter(|b| b["open"].is_null()).count();
    assert!(
        want.len() > 10 && empty > 0,
        "{} bars, {empty} empty",
        want.len()
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = env.app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    // The tracked contract (MNQ, the store's CID) from the start of the recording.
    let url = format!("http://{addr}/chart?con_id={CID}&size=1m&since={from}");
    let (mut chrome, mut cdp, _profile) = chromium(&url).await;
    let probe = "(() => ({ \
        bars: window.__bars, \
        state: document.getElementById('conn').dataset.state, \
        zone: document.getElementById('zone').textContent, \
        buttons: [...document.querySelectorAll('#contracts button')].map(b => [b.textContent, b.getAttribute('aria-pressed')]), \
        candles: candles.data().filter(d => d.open !== undefined).length, \
        whitespace: window.__bars.filter(b => b.open === null).map(b => { \
          const i = chart.timeScale().timeToIndex(Date.parse(b.start) / 1000); \
          return i !== null && (candles.dataByIndex(i) || {}).open === undefined; }), \
        slots: window.__bars.length === 0 ? 0 : chart.timeScale().timeToIndex(Date.parse(window.__bars.at(-1).start) / 1000) \
          - chart.timeScale().timeToIndex(Date.parse(window.__bars[0].start) / 1000) + 1, \
        volume: volume.data().filter(d => d.value !== undefined).length, \
        delta: delta.data().filter(d => d.value !== undefined).length, \
        vwap: vwap.data().filter(d => d.value !== undefined).length, \
        tick: chart.timeScale().options().tickMarkFormatter(1767623400, 3), \
        painted: [...document.querySelectorAll('#chart canvas')].some(c => { \
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
          for (let i = 3; i < d.length; i += 4) if (d[i]) return true; return false; }) \
      }))()";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let seen = loop {
        if cdp.eval("typeof window.__bars").await == json!("object") {
            let v = cdp.eval(probe).await;
            let done = v["bars"]
                .as_array()
                .is_some_and(|b| b.len() == want.len() && b.iter().all(|r| r["final"] == true));
            if done && v["painted"] == true {
                break v;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the chart never drew the interval"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The bars the page draws are the command's, row for row.
    assert_eq!(seen["bars"].as_array().unwrap(), &want);
    // Candles for the bars with prices, whitespace (a gap drawn as a gap) for the empty ones.
    assert_eq!(
        seen["candles"].as_u64().unwrap() as usize,
        want.len() - empty
    );
    // Each empty bar has its slot on the time axis, with no candle in it: the gap shows.
    assert_eq!(seen["whitespace"], json!(vec![true; empty]), "{seen}");
    assert_eq!(
        seen["slots"].as_u64().unwrap() as usize,
        want.len(),
        "{seen}"
    );
    assert_eq!(seen["volume"], seen["candles"]);
    assert!(
        seen["delta"].as_u64().unwrap() > 0 && seen["vwap"].as_u64().unwrap() > 0,
        "{seen}"
    );
    assert_eq!(seen["state"], "open");
    // The exchange's zone is named and the time axis is in it (14:30Z is 09:30 in New York).
    assert_eq!(seen["zone"], "America/New_York");
    assert_eq!(seen["tick"], "09:30");
    assert_eq!(seen["buttons"], json!([["MNQ", "true"]]));
    let shot = cdp
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("chart-screenshot.png");
    std::fs::write(&out, &png).expect("write the screenshot");
    eprintln!("screenshot: {}", out.display());
    let _ = chrome.kill().await;
}

/// Standard base64 (the DevTools screenshot encoding), without a dependency.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
