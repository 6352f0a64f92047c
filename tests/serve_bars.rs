//! `/v3/bars/{conId}`: bars over SSE, WebSocket and as a range query, checked against what
//! `ib-stream studies bars` computes for the same ticks.
//!
//! - The join: stored history then the ring, by sequence as the tick join tests do it (no
//!   seam, no duplicate: a tick missing or counted twice changes a bar's count and volume),
//!   and the exact gap when the ring no longer holds what follows storage.
//! - Real recorder files: the range query and the `since` stream equal the command's rows
//!   (`--storage --from --to --format jsonl`, run in-process), gap flags included.

mod serve_support;
mod storage_query_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::Request;
use futures_util::StreamExt;
use ib_stream::ipc::{PRICE_SCALE, Quote, Record, SIZE_SCALE, Trade};
use ib_stream::serve::storage_history::StorageHistory;
use ib_stream::studies::bars::{BarAggregator, BarSize, BarSource};
use ib_stream::studies::clock::Clock;
use ib_stream::studies::input::remote_gap;
use ib_stream::studies::output::{Format, RowWriter};
use ib_stream::studies::{Event, Study, TradeKind, event_of};
use serde_json::Value;
use serve_support::*;
use storage_query_support::{CID, T0, TempRoot, standard_store};

const CON: u32 = 4242;
const MINUTE_NS: i64 = 60_000_000_000;

/// Receive times an hour ahead, on a minute: the live stream's wall clock never reaches
/// them, so which bars are closed depends on the ticks alone, never on timing.
fn ahead_base() -> i64 {
    (now_ns() / MINUTE_NS + 60) * MINUTE_NS
}

/// Tick `i` of the test market: a quote every third, else a trade at the bid or the ask,
/// 4 s apart.
fn tick(base: i64, i: i64) -> Record {
    let t = base + i * 4_000_000_000;
    let bid = 2_100_000 + (i % 13) * 25;
    let mut r = if i % 3 == 0 {
        Record::quote(
            CON,
            t,
            Quote {
                bid_price: bid * PRICE_SCALE / 100,
                ask_price: (bid + 25) * PRICE_SCALE / 100,
                bid_size: SIZE_SCALE,
                ask_size: 2 * SIZE_SCALE,
            },
        )
    } else {
        Record::trade(
            false,
            CON,
            t,
            Trade {
                price: (bid + 25 * (i % 2)) * PRICE_SCALE / 100,
                size: (1 + i % 4) * SIZE_SCALE,
                exchange_id: 0,
                conditions_id: 0,
            },
        )
    };
    r.ts_recv = t;
    r
}

/// The rows the command writes (JSON lines, parsed) for these study events.
fn rows_of(events: &[Event], clock: &Clock) -> Vec<Value> {
    let mut a = BarAggregator::new(
        BarSize::Time(60_000_000),
        BarSource::Trades,
        false,
        clock.clone(),
    );
    let mut rows = Vec::new();
    for e in events {
        match e {
            Event::Tick(t) => a.on_tick(t, &mut rows),
            Event::Gap(g) => a.on_gap(g, &mut rows),
        }
    }
    a.finish(&mut rows);
    let mut w = RowWriter::new(Format::Jsonl, clock.clone());
    for r in &rows {
        w.row(r);
    }
    let mut out = Vec::new();
    w.flush(&mut out).unwrap();
    lines(&String::from_utf8(out).unwrap())
}

fn lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn events_of(recs: &[Record]) -> Vec<Event> {
    recs.iter()
        .filter_map(|r| event_of(r, CON, TradeKind::Last))
        .collect()
}

fn ny() -> Clock {
    Clock::new("America/New_York", "18:00").unwrap()
}

/// Reads bar events until the closed bars and the bar in progress are `want` (the last row
/// not final), given the closed bars already read; returns the closed bars' messages (those
/// given first) and the other events seen, in order.
async fn read_until(
    sse: &mut SseReader,
    want: &[Value],
    mut bars: Vec<Value>,
) -> (Vec<Value>, Vec<(String, Value)>) {
    let finals = want.iter().filter(|r| r["final"] == true).count();
    let mut others = Vec::new();
    let mut current: Option<Value> = None;
    loop {
        if bars.len() >= finals && current.as_ref() == want.last().filter(|r| r["final"] == false) {
            break;
        }
        if bars.len() == want.len() {
            break;
        }
        let e = sse.next_non_heartbeat().await.expect("the stream ended");
        let v = e.json();
        match e.event.as_str() {
            "bar" => {
                assert_eq!(v["type"], "bar");
                bars.push(v);
            }
            "update" => {
                assert_eq!(v["type"], "update");
                current = Some(v["bar"].clone());
            }
            _ => others.push((e.event.clone(), v)),
        }
    }
    (bars, others)
}

fn bar_rows(msgs: &[Value]) -> Vec<Value> {
    msgs.iter().map(|m| m["bar"].clone()).collect()
}

async fn join_env(through: u64) -> (Env, Vec<Record>) {
    let recorded = Arc::new(Recorded::default());
    let mut env = Env::new(EnvOpts {
        ring_capacity: 64,
        history: Some(recorded.clone()),
        ..EnvOpts::default()
    })
    .await;
    let base = ahead_base();
    let mut all = Vec::new();
    for i in 0..100 {
        let r = env.publish(tick(base, i));
        recorded.record(&env, &r);
        all.push(r);
    }
    recorded.through.store(through, Ordering::Relaxed);
    env.wait(|| env.state.hub.stats().next_seq.load(Ordering::Relaxed) == 101)
        .await;
    (env, all)
}

#[tokio::test]
async fn bars_join_history_and_the_ring_without_a_seam() {
    // The ring (64) holds 37..=100; the recorder has stored up to 80.
    let (env, all) = join_env(80).await;
    let mut sse = SseReader::new(env.get(&format!("/v3/bars/{CON}?size=1m&since=1h")).await);
    let start = sse.expect("info").await.json();
    assert_eq!(start["status"], "bars_start");
    assert_eq!(start["tz"], "America/New_York");
    let want = rows_of(&events_of(&all), &ny());
    assert!(want.len() >= 6, "{want:?}");
    let (bars, others) = read_until(&mut sse, &want, Vec::new()).await;
    // Every closed bar, once, in order, equal to the command's; then the one in progress.
    assert_eq!(bar_rows(&bars), want[..want.len() - 1]);
    let live: Vec<&Value> = others
        .iter()
        .filter(|(n, v)| n == "info" && v["status"] == "live")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["after_seq"], 80);
    assert!(others.iter().all(|(n, _)| n != "gap"), "{others:?}");
    // The bars add up to the ticks: each trade counted once across the join.
    let trades = all
        .iter()
        .filter(|r| r.kind == ib_stream::ipc::RecordKind::TbtLast as u8)
        .count() as i64;
    let counted: i64 = want.iter().map(|r| r["count"].as_i64().unwrap()).sum();
    assert_eq!(counted, trades);
    for b in &bars {
        assert_eq!(b["contract_id"], CON);
        assert_eq!(b["size"], "1m");
        assert!(b["delta"].is_object(), "{b}");
        assert!(b["session_vwap"].is_number(), "{b}");
    }
}

#[tokio::test]
async fn a_gap_between_storage_and_the_ring_flags_the_bars_it_touches() {
    // The ring (64) holds 37..=100; the recorder has stored only up to 20.
    let (env, all) = join_env(20).await;
    let mut sse = SseReader::new(env.get(&format!("/v3/bars/{CON}?size=1m&since=1h")).await);
    sse.expect("info").await;
    // The gap message is passed on; the bars expected are the ticks around it with it.
    let mut before = Vec::new();
    let gap = loop {
        let e = sse.next_non_heartbeat().await.unwrap();
        match e.event.as_str() {
            "gap" => break e,
            "bar" => before.push(e.json()),
            _ => {}
        }
    };
    let g = gap.json();
    assert_eq!(
        (
            g["reason"].as_str(),
            g["first_seq"].as_u64(),
            g["last_seq"].as_u64()
        ),
        (Some("resume_unavailable"), Some(21), Some(36))
    );
    let ib_stream_client::ServerMessage::Gap(cg) =
        ib_stream_client::message::parse(gap.data.as_bytes()).unwrap()
    else {
        panic!("not a gap: {}", gap.data)
    };
    let mut events = events_of(&all[..20]);
    let last_t = events
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::Tick(t) => Some(t.t_us),
            Event::Gap(_) => None,
        })
        .unwrap();
    events.push(Event::Gap(remote_gap(&cg, last_t).unwrap()));
    events.extend(events_of(&all[36..]));
    let want = rows_of(&events, &ny());
    let (bars, _) = read_until(&mut sse, &want, before).await;
    assert_eq!(bar_rows(&bars), want[..want.len() - 1]);
    assert!(
        want.iter()
            .any(|r| r["gap"] == true && r["gap_first_seq"] == 21),
        "the gap is on a bar: {want:?}"
    );
}

fn rfc3339(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn bars_of_recorded_files_equal_the_command_by_range_and_by_stream() {
    let root = TempRoot::new("serve-bars");
    standard_store(&root.0);
    let env = Env::new(EnvOpts {
        history: Some(Arc::new(StorageHistory::new(&root.0))),
        ..EnvOpts::default()
    })
    .await;
    let (from, to) = (rfc3339(T0), rfc3339(T0 + 3 * 3_600_000_000_000));
    let want = storage_query_support::studies_bars_1m(&root.0, &from, &to);
    assert!(want.len() > 100, "{}", want.len());
    assert!(
        want.iter().any(|r| r["gap"] == true),
        "the store's gap is on a bar"
    );

    // The range query.
    let r = env
        .get(&format!("/v3/bars/{CID}?size=1m&from={from}&to={to}"))
        .await;
    assert_eq!(r.status(), 200);
    let v = body_json(r).await;
    assert_eq!(v["count"].as_u64().unwrap() as usize, want.len());
    let got: Vec<Value> = v["bars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["bar"].clone())
        .collect();
    assert_eq!(got, want);

    // The stream from the same time: history, then live; the wall clock closes the last bar
    // as `--to` does for the command.
    let mut sse = SseReader::new(
        env.get(&format!("/v3/bars/{CID}?size=1m&since={from}"))
            .await,
    );
    let (bars, others) = read_until(&mut sse, &want, Vec::new()).await;
    assert_eq!(bar_rows(&bars), want);
    assert!(
        others
            .iter()
            .any(|(n, v)| n == "info" && v["status"] == "live")
    );
}

#[tokio::test]
async fn bars_over_a_websocket_are_the_same_messages() {
    let (env, all) = join_env(80).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = env.app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/v3/bars/{CON}?size=1m&since=1h"))
            .await
            .unwrap();
    let want = rows_of(&events_of(&all), &ny());
    let mut bars = Vec::new();
    let mut first = None;
    while bars.len() < want.len() - 1 {
        let m = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        first.get_or_insert_with(|| v.clone());
        if v["type"] == "bar" {
            bars.push(v["bar"].clone());
        }
    }
    assert_eq!(first.unwrap()["status"], "bars_start");
    assert_eq!(bars, want[..want.len() - 1]);
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_error_schema() {
    let env = Env::new(EnvOpts::default()).await;
    for (uri, status) in [
        (format!("/v3/bars/{CON}?size=2d"), 400),
        (format!("/v3/bars/{CON}?size=500ms"), 400),
        (format!("/v3/bars/{CON}?tz=Mars/Base"), 400),
        (format!("/v3/bars/{CON}?from=2026-01-05"), 400),
        (format!("/v3/bars/{CON}?from=2026-01-06&to=2026-01-05"), 400),
        (format!("/v3/bars/{CON}?trades=mid"), 400),
        (format!("/v3/bars/{CON}?colour=red"), 400),
        (
            format!("/v3/bars/{CON}?from=2026-01-05&to=2026-01-06&since=5m"),
            400,
        ),
        // No history source: neither a range nor `since` is served from whatever the ring holds.
        (format!("/v3/bars/{CON}?from=2026-01-05&to=2026-01-06"), 503),
        (format!("/v3/bars/{CON}?since=5m"), 503),
        ("/v3/bars/0".to_string(), 400),
    ] {
        let r = env
            .request(Request::get(&uri).body(Body::empty()).unwrap())
            .await;
        assert_eq!(r.status(), status, "{uri}");
        assert!(body_json(r).await["error"]["code"].is_string(), "{uri}");
    }
}

#[tokio::test]
async fn the_chart_page_is_served_without_a_token_and_says_when_its_library_is_missing() {
    let env = Env::new(EnvOpts {
        token: Some("s3cret-token-for-tests".into()),
        ..EnvOpts::default()
    })
    .await;
    let page = env.get("/chart").await;
    assert_eq!(page.status(), 200);
    let html = body_text(page).await;
    let lib = env.get("/page/lightweight-charts.js").await;
    match ib_stream::serve::page::CHART_LIB {
        Some(bytes) => {
            assert!(html.contains("/page/chart.js"), "{html}");
            assert_eq!(lib.status(), 200);
            assert_eq!(
                axum::body::to_bytes(lib.into_body(), usize::MAX)
                    .await
                    .unwrap(),
                bytes
            );
        }
        None => {
            // The live page, with the note.
            assert!(
                html.contains("chart-note") && html.contains("/page/app.js"),
                "{html}"
            );
            assert_eq!(lib.status(), 404);
        }
    }
    for asset in ["/page/chart.js", "/page/chart.css"] {
        assert_eq!(env.get(asset).await.status(), 200, "{asset}");
    }
    // The data still needs the token.
    assert_eq!(env.get(&format!("/v3/bars/{CON}")).await.status(), 401);
}
