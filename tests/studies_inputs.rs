//! `ib-stream studies`: the same recorded interval read from the three inputs — this machine's
//! ring, the web server (through the client crate) and storage — gives byte-identical output,
//! for bars, delta, multi-delta, VWAP and Bollinger (and passthrough, which shows the ticks
//! themselves); `health` and `info` ask the same server. The system is real: `ib-stream up
//! --simulate` (tws-sim, engine, recorder, web server).
//!
//! The test compares the inputs with each other, never with a particular market shape; the
//! study arithmetic is checked against hand-computed values in the unit tests of
//! `src/studies/`. One cross-check ties the outputs to the ticks: the bars' trade counts and
//! volumes add up to the trades passthrough lists.

mod modes_support;

use std::process::Output;
use std::time::{Duration, Instant};

use ib_stream::ipc::RecordKind;
use ib_stream::storage::query::{Query, QueryIter};
use modes_support::*;

fn rfc3339(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us).unwrap().to_string()
}

fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// Whether storage holds a record of `kind` at or after `to_us` (the recorder has written
/// that stream past the interval).
fn stored_past(env: &Env, kind: RecordKind, to_us: i64) -> bool {
    let mut q = Query::new(MNQ, to_us * 1000, i64::MAX);
    q.kinds = vec![kind];
    QueryIter::new(&env.storage, &q)
        .ok()
        .and_then(|mut it| it.next_record().ok().flatten())
        .is_some()
}

fn studies(env: &Env, args: &[&str]) -> String {
    let o: Output = env.command(args, &[]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{args:?} failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn field(line: &str, key: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v[key].to_string()
}

#[test]
fn ring_server_and_storage_give_byte_identical_studies() {
    let d = TestDir::new("studies");
    let env = Env::new(&d.0, "production", &d.0.join("storage").join("production"));
    let up = Up::recording(&env);
    up.wait_for("up: production ready in", READY_WITHIN);
    // Trades start after quotes (the engine paces its subscriptions): wait for both.
    wait_until(
        "production to record trades",
        Duration::from_secs(120),
        || stored_past(&env, RecordKind::TbtLast, 0) && stored_past(&env, RecordKind::TbtBidAsk, 0),
    );

    // Eight seconds of market, then wait until storage holds both streams past its end.
    let from = wall_us();
    std::thread::sleep(Duration::from_secs(8));
    let to = wall_us();
    wait_until(
        "the recorder to store past the interval",
        Duration::from_secs(120),
        || {
            stored_past(&env, RecordKind::TbtLast, to)
                && stored_past(&env, RecordKind::TbtBidAsk, to)
        },
    );

    let (from_s, to_s) = (rfc3339(from), rfc3339(to));
    let url = format!("http://127.0.0.1:{}", env.serve_port);
    let con = MNQ.to_string();
    let studies_of = |study: &[&str]| -> [String; 3] {
        let run = |input: &[&str]| {
            let mut a = vec!["studies"];
            a.extend_from_slice(study);
            a.extend_from_slice(&["--con-id", &con, "--from", &from_s, "--to", &to_s]);
            a.extend_from_slice(&["--format", "jsonl"]);
            a.extend_from_slice(input);
            let started = Instant::now();
            let out = studies(&env, &a);
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{a:?} took too long"
            );
            out
        };
        [run(&["--ring"]), run(&["--url", &url]), run(&["--storage"])]
    };

    let mut outputs = Vec::new();
    for study in [
        &["passthrough"][..],
        &["bars", "--size", "1s"],
        &["bars", "--ticks", "5"],
        &["bars", "--size", "1s", "--source", "mid"],
        &["delta"],
        &["delta", "--bar", "1s"],
        &["vwap"],
        &["vwap", "--window", "2s"],
        &["multi-delta", "--sizes", "1s,2s"],
        &["bollinger", "--period", "3s", "--min-trades", "2"],
    ] {
        let [ring, server, storage] = studies_of(study);
        let head: String = outputs.first().map_or(String::new(), |p: &String| {
            p.lines().take(20).collect::<Vec<_>>().join("\n")
        });
        assert!(
            !ring.is_empty(),
            "{study:?}: no rows from the ring; passthrough:\n{head}"
        );
        assert_eq!(ring, server, "{study:?}: ring vs server");
        assert_eq!(ring, storage, "{study:?}: ring vs storage");
        outputs.push(ring);
    }

    // The interval held ticks of both kinds and nothing was lost.
    let pass = &outputs[0];
    let trades: Vec<&str> = pass
        .lines()
        .filter(|l| l.contains("\"type\":\"trade\""))
        .collect();
    assert!(!trades.is_empty(), "no trade in the interval:\n{pass}");
    assert!(pass.contains("\"type\":\"quote\""), "{pass}");
    assert!(!pass.contains("\"type\":\"gap\""), "{pass}");

    // The 1-second bars account for every trade and its size.
    let bars = &outputs[1];
    let count: i64 = bars
        .lines()
        .map(|l| field(l, "count").parse::<i64>().unwrap())
        .sum();
    assert_eq!(count as usize, trades.len(), "{bars}");
    let size_sum: f64 = trades
        .iter()
        .map(|l| field(l, "size").parse::<f64>().unwrap())
        .sum();
    let volume: f64 = bars
        .lines()
        .map(|l| field(l, "volume").parse::<f64>().unwrap())
        .sum();
    assert!((size_sum - volume).abs() < 1e-6, "{size_sum} vs {volume}");
    // Bars that ended by --to are final, and only the last may not be.
    let finals: Vec<bool> = bars.lines().map(|l| field(l, "final") == "true").collect();
    assert!(finals[..finals.len() - 1].iter().all(|f| *f), "{bars}");
    // One delta row per trade.
    assert_eq!(outputs[4].lines().count(), trades.len());

    // `health` and `info` ask the server (they have no tick input): the running system is
    // healthy and connected, and streams the contract recorded above.
    let health: serde_json::Value =
        serde_json::from_str(&studies(&env, &["studies", "health", "--url", &url])).unwrap();
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["engine"]["connection"], "connected", "{health}");
    assert_eq!(health["ring"]["writer"], "alive", "{health}");
    // `info` lists the server's client streams: one study reading the server live.
    let mut live = env
        .command(
            &[
                "studies",
                "passthrough",
                "--con-id",
                &con,
                "--url",
                &url,
                "--seconds",
                "60",
            ],
            &[],
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let info_now = || -> serde_json::Value {
        serde_json::from_str(&studies(&env, &["studies", "info", "--url", &url])).unwrap()
    };
    wait_until(
        "info to list the live study",
        Duration::from_secs(30),
        || info_now()["count"] == 1,
    );
    let info = info_now();
    let _ = live.kill();
    let _ = live.wait();
    let stream = &info["streams"][0];
    assert_eq!(stream["con_id"], MNQ, "{info}");
    let subs = info["subscriptions"].as_array().unwrap();
    assert!(
        subs.iter()
            .any(|s| s["con_id"] == MNQ && s["tick_type"] == "last"),
        "{info}"
    );
    drop(up);
}
