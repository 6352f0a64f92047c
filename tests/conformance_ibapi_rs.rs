//! Conformance of `tws-sim` against the Rust `ibapi` 5.5.0 client (blocking API, feature `sync`).
//!
//! That crate speaks only the protobuf form and refuses servers below 213, so these tests check
//! the simulator's binary-id/protobuf side end to end with an independent implementation:
//! handshake at 226, contract details (stable conIds), tick-by-tick ticks of every kind and L1
//! market data compared value for value with `tws-sim expected`, and the error codes 200
//! (unknown contract), 10190 (tick-by-tick cap) and 326 (duplicate client id) on the right
//! request ids. 322 (duplicate ticker id) and 300 (cancel of an unknown id) cannot be produced
//! through this crate: it mints every request id itself and cancels only its own live
//! subscriptions; the Python conformance run (scripts/conformance.sh) covers those two.
//!
//! Prices and sizes arrive as `f64`; each must be identical to the `f64` nearest to the exact
//! decimal the generator produced (`str::parse::<f64>` rounds correctly), which holds only if
//! the simulator sent the correctly rounded double (prices) or the exact decimal string (sizes).
//!
//! Every test starts its own simulator on a free port and every wait is bounded.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ibapi::Error;
use ibapi::client::blocking::Client;
use ibapi::contracts::{Contract, Currency, Exchange, SecurityType, Symbol};
use ibapi::market_data::IgnoreSize;
use ibapi::market_data::realtime::{BidAsk, MidPoint, TickTypes, Trade};
use ibapi::subscriptions::SubscriptionItem;
use serde_json::Value;

const SIM: &str = env!("CARGO_BIN_EXE_tws-sim");
const SEED: u64 = 20_261_122;
/// Ticks compared per subscription.
const COUNT: usize = 30;
/// The simulator's tick-by-tick cap in these tests (`--max-tick-by-tick`).
const TBT_CAP: usize = 3;
/// Longest wait for any single answer.
const WAIT: Duration = Duration::from_secs(10);
const AAPL: i32 = 265_598;
const MNQ: i32 = 711_280_073;

/// A running simulator, killed when dropped.
struct Sim {
    child: Child,
    port: u16,
}

impl Sim {
    fn start(extra: &[&str]) -> Sim {
        let seed = SEED.to_string();
        let cap = TBT_CAP.to_string();
        let mut child = Command::new(SIM)
            .args(["--port", "0", "--seed", &seed, "--rate", "100"])
            .args(["--max-tick-by-tick", &cap])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tws-sim");
        let stdout = child.stdout.take().expect("tws-sim stdout");
        let (tx, rx) = mpsc::channel();
        // Reads the first line, then keeps draining so the simulator never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            for _ in lines {}
        });
        let first = match rx.recv_timeout(WAIT) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                panic!("tws-sim printed no first line within {WAIT:?}: {other:?}");
            }
        };
        let port = first
            .strip_prefix("listening 127.0.0.1:")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("tws-sim's first line is {first:?}, not `listening 127.0.0.1:<port>`")
            });
        Sim { child, port }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn connect(&self, client_id: i32) -> Result<Client, Error> {
        Client::builder()
            .address(self.addr())
            .client_id(client_id)
            .max_reconnect_attempts(0)
            .one_shot_timeout(WAIT)
            .connect()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tws-sim expected` rows for the first `count` ticks.
fn expected(con_id: i32, kind: &str, count: usize) -> Vec<Value> {
    let out = Command::new(SIM)
        .args([
            "expected",
            "--seed",
            &SEED.to_string(),
            "--con-id",
            &con_id.to_string(),
        ])
        .args(["--tick-type", kind, "--count", &count.to_string()])
        .output()
        .expect("run tws-sim expected");
    assert!(
        out.status.success(),
        "tws-sim expected failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect();
    assert_eq!(
        rows.len(),
        count,
        "tws-sim expected printed {} rows",
        rows.len()
    );
    rows
}

fn s<'a>(row: &'a Value, key: &str) -> &'a str {
    row[key]
        .as_str()
        .unwrap_or_else(|| panic!("expected row {row} has no string {key}"))
}

fn b(row: &Value, key: &str) -> bool {
    row[key]
        .as_bool()
        .unwrap_or_else(|| panic!("expected row {row} has no bool {key}"))
}

fn i(row: &Value, key: &str) -> i64 {
    row[key]
        .as_i64()
        .unwrap_or_else(|| panic!("expected row {row} has no integer {key}"))
}

/// The double nearest to an exact decimal string.
fn num(text: &str) -> f64 {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} is not a decimal: {e}"))
}

/// Records mismatches; one assertion at the end shows them all.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn num(&mut self, what: String, want: &str, got: f64) {
        if got.to_bits() != num(want).to_bits() {
            self.0.push(format!("{what}: expected {want}, got {got:?}"));
        }
    }
    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: String, want: T, got: T) {
        if want != got {
            self.0
                .push(format!("{what}: expected {want:?}, got {got:?}"));
        }
    }
    fn assert_none(self, context: &str) {
        assert!(
            self.0.is_empty(),
            "{context}: {} mismatches:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// A contract by conId as a client that knows the instrument sends it. rust-ibapi's default
/// security type is STK, which contradicts a future's or a pair's conId (200 at the gateway,
/// as at IB), so the type is set to the instrument's.
fn by_con_id(con_id: i32, exchange: &str) -> Contract {
    let security_type = match con_id {
        711_280_073 | 495_512_563 | 563_947_738 | 212_921_504 => SecurityType::Future,
        12_087_792 | 12_087_797 | 15_016_059 => SecurityType::ForexPair,
        _ => SecurityType::Stock,
    };
    Contract {
        contract_id: con_id,
        security_type,
        exchange: Exchange::from(exchange),
        ..Default::default()
    }
}

fn by_symbol(symbol: &str, sec_type: SecurityType, exchange: &str) -> Contract {
    Contract {
        symbol: Symbol::from(symbol),
        security_type: sec_type,
        exchange: Exchange::from(exchange),
        currency: Currency::from("USD"),
        ..Default::default()
    }
}

// The crate's subscription item bound (`StreamDecoder`) is private, so the two helpers over
// subscriptions of any item type are macros.

/// The next `n` data items of a subscription, failing on an error or after `WAIT` per item.
macro_rules! take {
    ($sub:expr, $n:expr, $what:expr) => {{
        let (sub, n, what) = (&$sub, $n, $what);
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match sub.next_timeout(WAIT) {
                Some(Ok(SubscriptionItem::Data(t))) => out.push(t),
                Some(Ok(SubscriptionItem::Notice(x))) => {
                    panic!("{what}: notice {x:?} after {} items", out.len())
                }
                Some(Err(e)) => panic!("{what}: error {e:?} after {} items", out.len()),
                None => panic!(
                    "{what}: stream ended or {WAIT:?} passed after {} of {n} items",
                    out.len()
                ),
            }
        }
        out
    }};
}

/// The IB error (code, request id) that ends a subscription, within `WAIT`.
macro_rules! rejection {
    ($sub:expr, $what:expr) => {{
        let (sub, what) = (&$sub, $what);
        let deadline = Instant::now() + WAIT;
        let mut found = None;
        while found.is_none() && Instant::now() < deadline {
            match sub.next_timeout(deadline.saturating_duration_since(Instant::now())) {
                Some(Err(Error::Notice(n))) => found = Some((n.code, n.request_id)),
                Some(Ok(SubscriptionItem::Notice(n))) => found = Some((n.code, n.request_id)),
                Some(Ok(SubscriptionItem::Data(d))) => {
                    panic!("{what}: expected an error, got data {d:?}")
                }
                Some(Err(e)) => panic!("{what}: expected an IB error, got {e:?}"),
                None => break,
            }
        }
        found.unwrap_or_else(|| panic!("{what}: no error within {WAIT:?}"))
    }};
}

#[test]
fn connects_at_226_with_accounts_and_order_id() {
    let sim = Sim::start(&[]);
    let client = sim.connect(21).expect("connect");
    assert_eq!(client.server_version(), 226, "negotiated server version");
    assert!(
        !client.handshake_managed_accounts().is_empty(),
        "managedAccounts is empty"
    );
    assert!(
        client.next_order_id() > 0,
        "nextValidId {}",
        client.next_order_id()
    );
    assert!(
        client.connection_time().is_some(),
        "connection time not parsed"
    );
}

#[test]
fn a_gateway_capped_below_the_clients_minimum_closes_the_connection() {
    // The client offers v213..226; a simulator capped at 212 has no version in common with
    // it and closes the socket instead of answering (as documented in its --max-version).
    let sim = Sim::start(&["--max-version", "212"]);
    match sim.connect(28) {
        Err(Error::ConnectionRejected(_)) => {}
        Err(e) => panic!("expected the handshake to be closed (ConnectionRejected), got {e:?}"),
        Ok(c) => panic!("connected at server version {}", c.server_version()),
    }
}

#[test]
fn contract_details_give_the_stable_con_ids() {
    let sim = Sim::start(&[]);
    let client = sim.connect(22).expect("connect");
    let cases = [
        (
            "AAPL by symbol",
            by_symbol("AAPL", SecurityType::Stock, "SMART"),
            AAPL,
            "AAPL",
        ),
        (
            "MNQ by symbol",
            by_symbol("MNQ", SecurityType::Future, "CME"),
            MNQ,
            "MNQ",
        ),
        ("AAPL by conId", by_con_id(AAPL, ""), AAPL, "AAPL"),
        ("MNQ by conId", by_con_id(MNQ, ""), MNQ, "MNQ"),
    ];
    for (what, contract, con_id, symbol) in cases {
        let details = client
            .contract_details(&contract)
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        assert_eq!(details.len(), 1, "{what}: {} rows", details.len());
        let c = &details[0].contract;
        assert_eq!(c.contract_id, con_id, "{what}: conId");
        assert_eq!(c.symbol.to_string(), symbol, "{what}: symbol");
        assert_eq!(c.currency.to_string(), "USD", "{what}: currency");
    }
    let mnq = client.contract_details(&by_con_id(MNQ, "")).expect("MNQ");
    assert_eq!(mnq[0].contract.security_type, SecurityType::Future);
    assert_eq!(mnq[0].contract.multiplier, "2", "MNQ multiplier");
    let aapl = client.contract_details(&by_con_id(AAPL, "")).expect("AAPL");
    assert_eq!(
        aapl[0].contract.primary_exchange.to_string(),
        "NASDAQ",
        "AAPL primary exchange"
    );
}

fn trades_match(kind: &str, con_id: i32, got: &[Trade]) {
    let want = expected(con_id, kind, COUNT);
    let mut p = Problems::default();
    for (k, (w, g)) in want.iter().zip(got).enumerate() {
        p.num(format!("{kind}[{k}].price"), s(w, "price"), g.price);
        p.num(format!("{kind}[{k}].size"), s(w, "size"), g.size);
        p.eq(
            format!("{kind}[{k}].exchange"),
            s(w, "exchange"),
            &g.exchange,
        );
        p.eq(
            format!("{kind}[{k}].special_conditions"),
            s(w, "conditions"),
            &g.special_conditions,
        );
        p.eq(
            format!("{kind}[{k}].past_limit"),
            b(w, "past_limit"),
            g.trade_attribute.past_limit,
        );
        p.eq(
            format!("{kind}[{k}].unreported"),
            b(w, "unreported"),
            g.trade_attribute.unreported,
        );
    }
    p.assert_none(&format!("{kind} conId {con_id}"));
}

#[test]
fn tick_by_tick_of_every_kind_equals_expected() {
    let sim = Sim::start(&[]);
    let client = sim.connect(23).expect("connect");
    for (con_id, exchange) in [(AAPL, "SMART"), (MNQ, "CME")] {
        let contract = by_con_id(con_id, exchange);

        let sub = client.tick_by_tick(&contract, 0).last().expect("Last");
        let got = take!(sub, COUNT, "Last");
        sub.cancel();
        trades_match("Last", con_id, &got);
        let times: Vec<_> = got.iter().map(|t| t.time).collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "Last times go backwards: {times:?}"
        );

        let sub = client
            .tick_by_tick(&contract, 0)
            .all_last()
            .expect("AllLast");
        let got = take!(sub, COUNT, "AllLast");
        sub.cancel();
        trades_match("AllLast", con_id, &got);

        let sub = client
            .tick_by_tick(&contract, 0)
            .bid_ask(IgnoreSize::No)
            .expect("BidAsk");
        let got: Vec<BidAsk> = take!(sub, COUNT, "BidAsk");
        sub.cancel();
        let mut p = Problems::default();
        for (k, (w, g)) in expected(con_id, "BidAsk", COUNT)
            .iter()
            .zip(&got)
            .enumerate()
        {
            p.num(
                format!("BidAsk[{k}].bid_price"),
                s(w, "bid_price"),
                g.bid_price,
            );
            p.num(
                format!("BidAsk[{k}].ask_price"),
                s(w, "ask_price"),
                g.ask_price,
            );
            p.num(
                format!("BidAsk[{k}].bid_size"),
                s(w, "bid_size"),
                g.bid_size,
            );
            p.num(
                format!("BidAsk[{k}].ask_size"),
                s(w, "ask_size"),
                g.ask_size,
            );
            p.eq(
                format!("BidAsk[{k}].bid_past_low"),
                b(w, "bid_past_low"),
                g.bid_ask_attribute.bid_past_low,
            );
            p.eq(
                format!("BidAsk[{k}].ask_past_high"),
                b(w, "ask_past_high"),
                g.bid_ask_attribute.ask_past_high,
            );
        }
        p.assert_none(&format!("BidAsk conId {con_id}"));

        let sub = client
            .tick_by_tick(&contract, 0)
            .mid_point()
            .expect("MidPoint");
        let got: Vec<MidPoint> = take!(sub, COUNT, "MidPoint");
        sub.cancel();
        let mut p = Problems::default();
        for (k, (w, g)) in expected(con_id, "MidPoint", COUNT)
            .iter()
            .zip(&got)
            .enumerate()
        {
            p.num(format!("MidPoint[{k}]"), s(w, "mid_point"), g.mid_point);
        }
        p.assert_none(&format!("MidPoint conId {con_id}"));
    }
}

/// One L1 callback in the shape of an `expected --tick-type mktdata` row.
#[derive(Debug)]
struct L1 {
    msg: &'static str,
    tick_type: i64,
    /// tickPrice price or tickGeneric value.
    price: Option<f64>,
    size: Option<f64>,
    value: Option<String>,
}

/// None for items `expected` does not list (tickReqParams, marketDataType, snapshot end).
fn l1(t: &TickTypes) -> Option<L1> {
    let (msg, tick_type, price, size, value) = match t {
        TickTypes::PriceSize(p) => (
            "tickPrice",
            p.price_tick_type as i64,
            Some(p.price),
            Some(p.size),
            None,
        ),
        TickTypes::Price(p) => ("tickPrice", p.tick_type as i64, Some(p.price), None, None),
        TickTypes::Size(z) => ("tickSize", z.tick_type as i64, None, Some(z.size), None),
        TickTypes::String(x) => (
            "tickString",
            x.tick_type as i64,
            None,
            None,
            Some(x.value.clone()),
        ),
        TickTypes::Generic(g) => ("tickGeneric", g.tick_type as i64, Some(g.value), None, None),
        _ => return None,
    };
    Some(L1 {
        msg,
        tick_type,
        price,
        size,
        value,
    })
}

#[test]
fn market_data_equals_expected() {
    let sim = Sim::start(&[]);
    let client = sim.connect(24).expect("connect");
    for (con_id, exchange) in [(AAPL, "SMART"), (MNQ, "CME")] {
        let contract = by_con_id(con_id, exchange);
        let sub = client
            .market_data(&contract)
            .subscribe()
            .expect("reqMktData");
        let mut got = Vec::new();
        let deadline = Instant::now() + WAIT * 3;
        while got.len() < COUNT {
            assert!(
                Instant::now() < deadline,
                "conId {con_id}: {} of {COUNT} L1 items",
                got.len()
            );
            match sub.next_timeout(WAIT) {
                Some(Ok(SubscriptionItem::Data(t))) => got.extend(l1(&t)),
                Some(Ok(SubscriptionItem::Notice(_))) => {}
                Some(Err(e)) => panic!("conId {con_id}: L1 error {e:?} after {} items", got.len()),
                None => panic!("conId {con_id}: L1 stream ended after {} items", got.len()),
            }
        }
        sub.cancel();
        let mut p = Problems::default();
        for (
            k,
            (
                w,
                L1 {
                    msg,
                    tick_type,
                    price,
                    size,
                    value,
                },
            ),
        ) in expected(con_id, "mktdata", COUNT)
            .iter()
            .zip(&got)
            .enumerate()
        {
            if s(w, "msg") != *msg {
                p.0.push(format!("mktdata[{k}]: expected {w}, got {msg} {tick_type}"));
                continue;
            }
            p.eq(
                format!("mktdata[{k}].tick_type"),
                i(w, "tick_type"),
                *tick_type,
            );
            match *msg {
                "tickPrice" => {
                    p.num(
                        format!("mktdata[{k}].price"),
                        s(w, "price"),
                        price.unwrap_or(f64::NAN),
                    );
                    if let Some(size) = size {
                        p.num(format!("mktdata[{k}].size"), s(w, "size"), *size);
                    }
                }
                "tickSize" => p.num(
                    format!("mktdata[{k}].size"),
                    s(w, "size"),
                    size.unwrap_or(f64::NAN),
                ),
                "tickGeneric" => {
                    let want = w["value"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| w["value"].to_string());
                    p.num(
                        format!("mktdata[{k}].value"),
                        &want,
                        price.unwrap_or(f64::NAN),
                    );
                }
                "tickString" => p.eq(
                    format!("mktdata[{k}].value"),
                    Some(s(w, "value").to_owned()),
                    value.clone(),
                ),
                _ => {}
            }
        }
        p.assert_none(&format!("mktdata conId {con_id}"));
    }
}

#[test]
fn unknown_contract_is_error_200_on_its_request() {
    let sim = Sim::start(&[]);
    let client = sim.connect(25).expect("connect");
    let unknown = by_symbol("NOSUCHSYM", SecurityType::Stock, "SMART");

    let request = client.contract_details_stream(&unknown);
    let req_id = request.request_id();
    match request
        .subscribe()
        .expect("send")
        .collect_to_end_within(WAIT)
    {
        Err(Error::Notice(n)) => {
            assert_eq!(n.code, 200, "contract details: {n:?}");
            assert_eq!(n.request_id, Some(req_id), "contract details: {n:?}");
        }
        other => panic!("contract details of an unknown symbol: expected error 200, got {other:?}"),
    }

    let sub = client.tick_by_tick(&unknown, 0).last().expect("send");
    let (code, id) = rejection!(sub, "tick-by-tick of an unknown contract");
    assert_eq!(
        (code, id),
        (200, sub.request_id()),
        "tick-by-tick of an unknown contract"
    );

    let sub = client.market_data(&unknown).subscribe().expect("send");
    let (code, id) = rejection!(sub, "reqMktData of an unknown contract");
    assert_eq!(
        (code, id),
        (200, sub.request_id()),
        "reqMktData of an unknown contract"
    );
}

#[test]
fn tick_by_tick_beyond_the_cap_is_error_10190() {
    // The 15-second same-instrument rule is off so only the cap can refuse a request.
    let sim = Sim::start(&["--tbt-same-instrument-secs", "0"]);
    let client = sim.connect(26).expect("connect");
    let instruments = [
        (272_093, "SMART"),
        (756_733, "SMART"),
        (495_512_563, "CME"),
        (563_947_738, "CME"),
    ];
    let live: Vec<_> = instruments[..TBT_CAP]
        .iter()
        .map(|&(c, e)| {
            let sub = client
                .tick_by_tick(&by_con_id(c, e), 0)
                .mid_point()
                .expect("send");
            take!(sub, 1, &format!("tick-by-tick {c} within the cap"));
            sub
        })
        .collect();
    let (c, e) = instruments[TBT_CAP];
    let over_contract = by_con_id(c, e);
    let over = client
        .tick_by_tick(&over_contract, 0)
        .mid_point()
        .expect("send");
    let (code, id) = rejection!(over, "tick-by-tick beyond the cap");
    assert_eq!(
        (code, id),
        (10190, over.request_id()),
        "tick-by-tick beyond the cap"
    );
    drop(over);
    for sub in &live {
        sub.cancel();
    }
    // A cancelled subscription frees its slot.
    let again = client
        .tick_by_tick(&over_contract, 0)
        .mid_point()
        .expect("send");
    take!(again, 1, "tick-by-tick after cancelling");
}

#[test]
fn duplicate_client_id_is_error_326() {
    let sim = Sim::start(&[]);
    let first = sim.connect(27).expect("connect");
    match sim.connect(27) {
        Err(Error::ClientIdInUse { client_id }) => assert_eq!(client_id, 27),
        Err(e) => {
            panic!("second connection with client id 27: expected ClientIdInUse (326), got {e:?}")
        }
        Ok(_) => panic!("second connection with client id 27 was accepted"),
    }
    // The first session is unaffected.
    let details = first
        .contract_details(&by_con_id(AAPL, ""))
        .expect("first session still works");
    assert_eq!(details[0].contract.contract_id, AAPL);
}
