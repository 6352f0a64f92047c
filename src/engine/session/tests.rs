//! The session driven alone: scripted gateway bytes (encoded with the crate's codec), a
//! virtual clock, no socket. Every test runs in milliseconds whatever time it simulates.
//! (Over 600 lines: one harness shared by every session rule's test, the rules moved here
//! from the slow process tests.)

use super::*;
use crate::config::{Environment, TrackedContract};
use crate::ipc::{ConnState, GapReason, ReadOutcome, Record, RingReader, StartAt, flags};
use crate::tws::{
    ClientHello, ClientMsg, Contract, FrameReader, MAX_SUPPORTED, ServerAck, ServerMsg, TbtQuote,
    TickByTickData, codes,
};

const MS: u64 = 1_000_000;
const T0_UNIX: i64 = 1_780_000_000_000_000_000;
const CON: u32 = 265_598;

struct Harness {
    s: Session,
    clock: Clock,
    ring: RingReader,
}

fn aapl() -> Contract {
    Contract {
        con_id: CON as i32,
        symbol: "AAPL".into(),
        sec_type: "STK".into(),
        exchange: "SMART".into(),
        primary_exchange: "NASDAQ".into(),
        currency: "USD".into(),
        ..Contract::default()
    }
}

impl Harness {
    /// A session on ports 4002 and 4001, client ids 7..=9; with `tracked`, a bid/ask
    /// subscription to a contract the store already holds.
    fn new(tracked: bool) -> Harness {
        Harness::with(tracked, EngineOptions::default())
    }

    fn with(tracked: bool, opts: EngineOptions) -> Harness {
        let mut settings = Settings::defaults(Environment::Development);
        settings.ib_ports = vec![4002, 4001];
        settings.client_id = 7;
        settings.client_id_range = 2;
        settings.allow_delayed = false;
        settings.tracked_contracts = if tracked {
            vec![TrackedContract {
                con_id: CON,
                symbol: "AAPL".into(),
                kinds: vec![RecordKind::TbtBidAsk],
                buffer_hours: 0,
            }]
        } else {
            Vec::new()
        };
        let publisher = Publisher::heap(1 << 12).unwrap();
        let ring = publisher.reader(StartAt::Oldest);
        let stored = vec![StoredContract::from_contract(&aapl(), T0_UNIX)];
        let clock = Clock {
            mono: 0,
            unix: T0_UNIX,
        };
        let s = Session::new(
            settings,
            opts,
            publisher,
            stored,
            "/nonexistent/contracts.json".into(),
            42,
            clock,
        );
        Harness { s, clock, ring }
    }

    fn at(&mut self, mono: u64) {
        assert!(mono >= self.clock.mono, "time runs forward");
        self.clock.unix += (mono - self.clock.mono) as i64;
        self.clock.mono = mono;
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.s.poll_action()).collect()
    }

    /// What the session wrote to IB since the last call, decoded.
    fn sent(&mut self) -> Vec<ClientMsg> {
        let out = self.s.ib_out().to_vec();
        self.s.ib_written(out.len());
        let mut r = FrameReader::new();
        r.feed(&out);
        let mut msgs = Vec::new();
        while let Some(f) = r.next_frame(MAX_SUPPORTED).unwrap() {
            msgs.push(ClientMsg::decode(&f, MAX_SUPPORTED).unwrap());
        }
        msgs
    }

    /// The gateway says `msgs`.
    fn gateway(&mut self, msgs: &[ServerMsg]) -> bool {
        let mut bytes = Vec::new();
        for m in msgs {
            m.encode(MAX_SUPPORTED, &mut bytes);
        }
        self.s.on_bytes(self.clock, self.clock.unix, &bytes)
    }

    fn error(&mut self, req_id: i32, code: i32) -> bool {
        self.error_says(req_id, code, &format!("code {code}"))
    }

    fn error_says(&mut self, req_id: i32, code: i32, message: &str) -> bool {
        self.gateway(&[ServerMsg::Error {
            req_id,
            code,
            message: message.into(),
            advanced_order_reject_json: String::new(),
            error_time_ms: 0,
        }])
    }

    fn records(&mut self) -> Vec<Record> {
        let mut v = Vec::new();
        while let ReadOutcome::Record(r) = self.ring.try_read() {
            v.push(r);
        }
        v
    }

    /// Runs the timers; returns the port of the connect they asked for, if any.
    fn tick(&mut self) -> Option<u16> {
        self.s.on_timeout(self.clock);
        self.actions().into_iter().find_map(|a| match a {
            Action::Connect { port } => Some(port),
            _ => None,
        })
    }

    /// A connect due now, through TCP and the handshake to the server's version: returns
    /// the port and the `startApi` the session sent.
    fn connect(&mut self) -> (u16, ClientMsg) {
        let port = self.tick().expect("a connect is due");
        self.s.on_connecting(self.clock);
        self.s.on_connected(self.clock);
        let hello = self.s.ib_out().to_vec();
        self.s.ib_written(hello.len());
        let (h, used) = ClientHello::parse(&hello).unwrap().unwrap();
        assert_eq!((used, h.max), (hello.len(), MAX_SUPPORTED));
        let mut ack = Vec::new();
        ServerAck {
            version: MAX_SUPPORTED,
            time: "20260601 09:30:00 UTC".into(),
        }
        .encode(&mut ack);
        // In two reads: a partial answer waits for the rest.
        assert!(self.s.on_bytes(self.clock, self.clock.unix, &ack[..3]));
        assert!(self.s.ib_out().is_empty());
        assert!(self.s.on_bytes(self.clock, self.clock.unix, &ack[3..]));
        let start = self.sent();
        assert_eq!(start.len(), 1, "{start:?}");
        (port, start.into_iter().next().unwrap())
    }

    fn ready(&mut self) -> u16 {
        let (port, _) = self.connect();
        assert!(self.gateway(&[ServerMsg::NextValidId { order_id: 1 }]));
        assert!(self.s.is_ready());
        port
    }

    /// Moves from deadline to deadline (at most to `limit`) until a connect is asked for:
    /// its time and port.
    fn until_connect(&mut self, limit: u64) -> Option<(u64, u16)> {
        while self.clock.mono < limit {
            let d = self.s.next_deadline(self.clock.mono).min(limit);
            self.at(d);
            if let Some(p) = self.tick() {
                return Some((d, p));
            }
        }
        None
    }

    /// Moves from deadline to deadline (at most to `limit`) until a tick-by-tick request
    /// goes out: its time and request id.
    fn until_tbt_request(&mut self, limit: u64) -> Option<(u64, i32)> {
        while self.clock.mono < limit {
            let d = self.s.next_deadline(self.clock.mono).min(limit);
            self.at(d);
            self.tick();
            if let Some(r) = self.tbt_request() {
                return Some((d, r));
            }
        }
        None
    }

    fn tbt_request(&mut self) -> Option<i32> {
        self.sent().into_iter().find_map(|m| match m {
            ClientMsg::ReqTickByTick {
                req_id, contract, ..
            } => {
                assert_eq!(contract.exchange, "SMART", "a resolved contract");
                Some(req_id)
            }
            _ => None,
        })
    }

    fn quote(&mut self, req_id: i32) {
        assert!(self.gateway(&[ServerMsg::TickByTick {
            req_id,
            time: 1_780_000_000,
            data: TickByTickData::BidAsk(TbtQuote {
                bid_price: 100_000_000_000,
                ask_price: 100_010_000_000,
                bid_size: 1,
                ask_size: 2,
                bid_past_low: false,
                ask_past_high: false,
            }),
        }]));
    }
}

fn conn_states(recs: &[Record]) -> Vec<(u8, i64, i64)> {
    recs.iter()
        .filter(|r| r.kind() == Some(RecordKind::Connection))
        .map(|r| (r.tick_type, r.body[1], r.body[2]))
        .collect()
}

fn c(s: ConnState) -> u8 {
    s as u8
}

#[test]
fn the_handshake_runs_to_next_valid_id() {
    let mut h = Harness::new(false);
    let (port, start) = h.connect();
    assert_eq!(port, 4002);
    assert_eq!(
        start,
        ClientMsg::StartApi {
            client_id: 7,
            optional_capabilities: String::new()
        }
    );
    assert!(!h.s.is_ready(), "up only at nextValidId");
    h.at(5 * MS);
    assert!(h.gateway(&[
        ServerMsg::ManagedAccounts {
            accounts: "DU1".into()
        },
        ServerMsg::NextValidId { order_id: 1 },
    ]));
    assert!(h.s.is_ready());
    assert_eq!(
        conn_states(&h.records()),
        vec![
            (c(ConnState::Disconnected), 7, 0),
            (c(ConnState::Connecting), 7, 0),
            (c(ConnState::Connected), 7, 0),
        ]
    );
    assert_eq!(
        h.s.publisher().snap.engine.connected_since_ns,
        T0_UNIX + 5_000_000
    );
}

#[test]
fn a_handshake_that_never_ends_times_out_and_tries_the_next_port() {
    let mut h = Harness::new(false);
    let (port, _) = h.connect();
    assert_eq!(port, 4002);
    h.at(5_000 * MS);
    assert_eq!(h.tick(), None);
    assert!(!h.s.ib_open(), "the connect timeout closed it");
    // The other port at once; the backoff only once every port failed.
    assert_eq!(h.tick(), Some(4001));
}

#[test]
fn a_dropped_session_backs_off_then_reconnects_and_writes_the_gap() {
    let mut h = Harness::new(true);
    h.at(10 * MS);
    let port = h.ready();
    let req = h
        .tbt_request()
        .expect("the tracked subscription is requested");
    h.quote(req);
    h.at(20 * MS);
    h.s.on_closed(h.clock, "closed by the gateway");
    assert!(!h.s.ib_open());
    // Backoff: base 250 ms, jittered into [125, 250] ms; nothing before it.
    let (due, again) = h.until_connect(10_000 * MS).expect("a reconnect");
    assert!(
        ((20 + 125) * MS..=(20 + 250) * MS).contains(&due),
        "backoff due at {due}"
    );
    assert_eq!(again, port, "the working port first");
    h.s.on_connecting(h.clock);
    h.s.on_connected(h.clock);
    let hello = h.s.ib_out().len();
    h.s.ib_written(hello);
    let mut ack = Vec::new();
    ServerAck {
        version: MAX_SUPPORTED,
        time: "t".into(),
    }
    .encode(&mut ack);
    h.s.on_bytes(h.clock, h.clock.unix, &ack);
    h.sent();
    h.at(due + 3 * MS);
    assert!(h.gateway(&[ServerMsg::NextValidId { order_id: 1 }]));
    // Resubscribed, 15 s after the first request (IB's rule per instrument).
    let (at, req2) = h
        .until_tbt_request(60_000 * MS)
        .expect("resubscribed after the reconnect");
    assert_eq!(at, 10 * MS + 15_000 * MS + TBT_WINDOW_MARGIN_NS);
    let recs = h.records();
    let gaps: Vec<_> = recs
        .iter()
        .filter(|r| r.kind() == Some(RecordKind::Gap) && r.instrument_id == 0)
        .map(|r| (r.tick_type, r.body[2], r.body[3]))
        .collect();
    assert_eq!(
        gaps,
        vec![(
            GapReason::Disconnected as u8,
            T0_UNIX + 10_000_000,
            T0_UNIX + (due + 3 * MS) as i64
        )],
        "from the last bytes to the session's return"
    );
    assert_eq!(h.s.publisher().snap.counters.reconnects, 1);
    // The subscription's own gap is written when its data flows again.
    h.quote(req2);
    assert!(
        h.records()
            .iter()
            .any(|r| r.kind() == Some(RecordKind::Gap) && r.instrument_id == CON)
    );
}

#[test]
fn client_id_in_use_rotates_through_the_range_at_once() {
    let mut h = Harness::new(false);
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (_, start) = h.connect();
        let ClientMsg::StartApi { client_id, .. } = start else {
            panic!("{start:?}")
        };
        ids.push(client_id);
        assert!(!h.error(-1, codes::CLIENT_ID_IN_USE), "326 closes");
        assert!(h.actions().contains(&Action::CloseIb));
        assert_eq!(h.s.next_deadline(h.clock.mono), h.clock.mono, "no backoff");
    }
    assert_eq!(ids, vec![7, 8, 9, 7], "7 and the two after it, then around");
}

#[test]
fn connectivity_lost_marks_ticks_stale_and_1101_resubscribes_with_a_gap() {
    let mut h = Harness::new(true);
    h.ready();
    let req = h.tbt_request().unwrap();
    h.quote(req);
    h.at(100 * MS);
    assert!(h.error(-1, codes::CONNECTIVITY_LOST));
    h.quote(req);
    let recs = h.records();
    assert!(conn_states(&recs).contains(&(c(ConnState::IbLost), 7, 1100)));
    let ticks: Vec<&Record> = recs
        .iter()
        .filter(|r| r.kind() == Some(RecordKind::TbtBidAsk))
        .collect();
    assert_eq!(ticks.len(), 2);
    assert_eq!(ticks[0].flags & flags::STALE, 0);
    assert_ne!(ticks[1].flags & flags::STALE, 0, "data after 1100 is stale");

    h.at(900 * MS);
    assert!(h.error(-1, codes::CONNECTIVITY_RESTORED_DATA_LOST));
    let recs = h.records();
    assert!(conn_states(&recs).contains(&(c(ConnState::Connected), 7, 1101)));
    let gap = recs
        .iter()
        .find(|r| r.kind() == Some(RecordKind::Gap) && r.instrument_id == 0)
        .expect("a session gap");
    assert_eq!(gap.tick_type, GapReason::IbConnectivity as u8);
    assert_eq!(gap.body[3], T0_UNIX + 900_000_000);
    // Resubscribed once the 15-second rule allows (it counts from the first request).
    let (at, again) = h
        .until_tbt_request(60_000 * MS)
        .expect("1101: the subscription is requested again");
    assert_eq!(at, 15_000 * MS + TBT_WINDOW_MARGIN_NS);
    assert_ne!(again, req);
    h.quote(again);
    assert_eq!(
        h.records().last().unwrap().flags & flags::STALE,
        0,
        "live again"
    );
}

#[test]
fn a_10190_is_retried_after_the_15_second_rule() {
    let mut h = Harness::new(true);
    h.at(1_000 * MS);
    h.ready();
    let req = h.tbt_request().unwrap();
    h.at(1_050 * MS);
    assert!(h.error(req, codes::MAX_TICK_BY_TICK));
    let retrying = h
        .records()
        .into_iter()
        .rfind(|r| r.kind() == Some(RecordKind::Subscription))
        .unwrap();
    assert_eq!(retrying.tick_type, SubState::Queued as u8);
    assert_eq!(retrying.body[1], i64::from(codes::MAX_TICK_BY_TICK));
    assert_eq!(
        retrying.ts_event,
        T0_UNIX + (16_000 * MS + TBT_WINDOW_MARGIN_NS) as i64,
        "the next attempt: 15 s (and the arrival margin) after the request"
    );
    let due = 16_000 * MS + TBT_WINDOW_MARGIN_NS;
    // Nothing before the window is over, whatever wakes the session.
    let mut t = 1_050 * MS;
    while t < due {
        t = h.s.next_deadline(t).max(t + MS).min(due - 1);
        h.at(t);
        h.tick();
        assert_eq!(h.tbt_request(), None, "sent early at {t}");
        if t == due - 1 {
            break;
        }
    }
    assert_eq!(h.s.next_deadline(h.clock.mono), due);
    h.at(due);
    h.tick();
    let again = h.tbt_request().expect("retried at 15 s");
    h.quote(again);
    let st = h.s.subs().list().next().unwrap().state;
    assert_eq!(st, SubState::Active);
}

#[test]
fn a_lookup_refused_by_ib_answers_with_the_code() {
    let mut h = Harness::new(false);
    h.ready();
    assert!(h.s.control_open(3));
    let line = br#"{"id":9,"op":"lookup","symbol":"NOSUCH","sec_type":"STK"}"#;
    assert!(h.s.on_control_bytes(h.clock, 3, &[&line[..], b"\n"].concat()));
    let req_id = h
        .sent()
        .into_iter()
        .find_map(|m| match m {
            ClientMsg::ReqContractDetails { req_id, .. } => Some(req_id),
            _ => None,
        })
        .unwrap();
    h.error(req_id, 200);
    assert!(h.actions().contains(&Action::ControlOut(3)));
    let reply: serde_json::Value =
        serde_json::from_slice(h.s.control_out(3).strip_suffix(b"\n").unwrap()).unwrap();
    assert_eq!(reply["error"]["code"], "ib_error", "{reply}");
    assert_eq!(reply["error"]["ib_code"], 200, "{reply}");
}

fn sub_states(recs: &[Record]) -> Vec<(u8, i64)> {
    recs.iter()
        .filter(|r| r.kind() == Some(RecordKind::Subscription))
        .map(|r| (r.tick_type, r.body[1]))
        .collect()
}

#[test]
fn ib_1102_keeps_the_subscriptions_and_ends_the_staleness() {
    let mut h = Harness::new(true);
    h.ready();
    let req = h.tbt_request().unwrap();
    h.quote(req);
    h.at(100 * MS);
    assert!(h.error(-1, codes::CONNECTIVITY_LOST));
    h.at(900 * MS);
    assert!(h.error(-1, codes::CONNECTIVITY_RESTORED_DATA_MAINTAINED));
    h.quote(req);
    let recs = h.records();
    assert!(conn_states(&recs).contains(&(c(ConnState::Connected), 7, 1102)));
    assert!(
        !recs.iter().any(|r| r.kind() == Some(RecordKind::Gap)),
        "data maintained: no gap"
    );
    assert_eq!(
        recs.last().unwrap().flags & flags::STALE,
        0,
        "live after 1102"
    );
    // Nothing is requested again, however long we wait.
    assert_eq!(h.until_tbt_request(60_000 * MS), None);
    let sub = h.s.subs().list().next().unwrap();
    assert_eq!((sub.req_id, sub.state), (req, SubState::Active));
}

#[test]
fn the_watchdog_probes_a_silent_subscription_then_asks_for_it_again() {
    let mut h = Harness::new(true);
    h.ready();
    let req = h.tbt_request().unwrap();
    h.quote(req);
    h.records();
    // 60 s of silence (the default): a probe, and the subscription says it is silent.
    let mut probed = None;
    while probed.is_none() && h.clock.mono < 70_000 * MS {
        let d = h.s.next_deadline(h.clock.mono);
        h.at(d);
        h.tick();
        if h.sent().contains(&ClientMsg::ReqCurrentTime) {
            probed = Some(d);
        }
    }
    let at = probed.expect("a probe");
    assert!((60_000 * MS..=61_000 * MS).contains(&at), "probed at {at}");
    assert_eq!(
        sub_states(&h.records()),
        vec![(SubState::Silent as u8, 0)],
        "the record says silent"
    );
    assert!(h.gateway(&[ServerMsg::CurrentTime {
        time: 1_780_000_060
    }]));
    // Another silent period: cancelled and requested again under a new id.
    let (again_at, again) = h.until_tbt_request(130_000 * MS).expect("a resubscribe");
    assert!(
        (120_000 * MS..=121_000 * MS).contains(&again_at),
        "resubscribed at {again_at}"
    );
    assert_ne!(again, req);
    h.quote(again);
    let st = h.s.subs().list().next().unwrap().state;
    assert_eq!(st, SubState::Active, "data again: active");
}

#[test]
fn farm_notices_keep_the_table_and_a_broken_market_data_farm_marks_data_stale() {
    let mut h = Harness::new(true);
    h.ready();
    let req = h.tbt_request().unwrap();
    h.quote(req);
    for (code, msg) in [
        (2104, "Market data farm connection is OK:usfarm"),
        (2106, "HMDS data farm connection is OK:ushmds"),
    ] {
        assert!(h.error_says(-1, code, msg));
    }
    let status = |h: &mut Harness| {
        let d = h.s.next_deadline(h.clock.mono);
        h.at(d.max(h.clock.mono + 100 * MS));
        h.tick();
        h.s.publisher().snap.engine.data_flags
    };
    assert_eq!(status(&mut h), 0);
    assert!(h.error_says(-1, 2103, "Market data farm connection is broken:usfarm"));
    assert_eq!(status(&mut h), crate::ipc::data_flags::FARM_BROKEN);
    assert_eq!(h.s.publisher().snap.engine.last_error_code, 2103);
    let farm = |h: &Harness, name: &str| {
        h.s.farms
            .farms()
            .iter()
            .find(|f| f.name() == name)
            .and_then(|f| f.state())
    };
    assert_eq!(farm(&h, "usfarm"), Some(crate::ipc::FarmState::Broken));
    // An HMDS farm going inactive is its own entry and makes no market data stale.
    assert!(h.error_says(
        -1,
        2107,
        "HMDS data farm connection is inactive but should be available upon demand.ushmds"
    ));
    assert_eq!(farm(&h, "ushmds"), Some(crate::ipc::FarmState::Inactive));
    assert_eq!(h.s.farms.farms().len(), 2);
    assert!(h.error_says(-1, 2104, "Market data farm connection is OK:usfarm"));
    assert_eq!(status(&mut h), 0, "OK again: nothing flagged");
    // Farm states belong to the session: a new one reports them afresh.
    h.s.on_closed(h.clock, "gone");
    assert!(h.s.farms.farms().is_empty());
}

#[test]
fn a_refusal_at_ibs_slot_cap_is_retried_a_second_apart_until_a_slot_is_free() {
    let opts = EngineOptions {
        tbt_same_instrument_ms: 0,
        ..EngineOptions::default()
    };
    let mut h = Harness::with(true, opts);
    h.ready();
    let mut req = h.tbt_request().unwrap();
    let mut sent_at = h.clock.mono;
    // IB's cap is taken by others: refused three times, each retry a second or more after
    // the refused request, the subscription kept (retrying) meanwhile.
    for n in 1..=3u32 {
        h.at(sent_at + 5 * MS);
        assert!(h.error(req, codes::MAX_TICK_BY_TICK));
        let sub = h.s.subs().list().next().unwrap();
        assert_eq!((sub.state, sub.code), (SubState::Queued, 10190));
        assert_eq!(sub.retry.map(|r| r.refusals), Some(n));
        let (at, again) = h.until_tbt_request(sent_at + 10_000 * MS).expect("a retry");
        assert!(
            at >= sent_at + 1_000 * MS,
            "retry {n} {} ms after",
            (at - sent_at) / MS
        );
        (req, sent_at) = (again, at);
    }
    // A slot is free: the attempt is served, data flows, the retry is over.
    h.quote(req);
    let sub = h.s.subs().list().next().unwrap();
    assert_eq!(
        (sub.state, sub.code, sub.retry),
        (SubState::Active, 0, None)
    );
}

/// The StartApi's client id of the next connect.
fn next_start_id(h: &mut Harness) -> i32 {
    let (_, start) = h.connect();
    let ClientMsg::StartApi { client_id, .. } = start else {
        panic!("{start:?}")
    };
    client_id
}

#[test]
fn a_registry_id_refused_with_326_is_handed_back_and_a_new_one_connects_at_once() {
    let mut h = Harness::new(false);
    h.s.set_client_id(h.clock, 40);
    assert_eq!(next_start_id(&mut h), 40);
    assert!(!h.error(-1, codes::CLIENT_ID_IN_USE));
    let acts = h.actions();
    assert!(acts.contains(&Action::CloseIb), "{acts:?}");
    assert!(
        acts.contains(&Action::ClientIdRefused { id: 40 }),
        "{acts:?}"
    );
    // Until the caller gives another id the session waits: no loop of refused connects.
    assert!(h.s.next_deadline(h.clock.mono) > h.clock.mono);
    h.s.set_client_id(h.clock, 41);
    assert_eq!(
        h.s.next_deadline(h.clock.mono),
        h.clock.mono,
        "a new id: at once"
    );
    assert_eq!(next_start_id(&mut h), 41);
    assert!(h.gateway(&[ServerMsg::NextValidId { order_id: 1 }]));
    assert!(h.s.is_ready());
    assert_eq!(h.s.client_id(), 41);
}

#[test]
fn a_registry_id_refused_with_no_successor_is_tried_again_after_a_backoff() {
    let mut h = Harness::new(false);
    h.s.set_client_id(h.clock, 40);
    assert_eq!(next_start_id(&mut h), 40);
    let refused_at = h.clock.mono;
    assert!(!h.error(-1, codes::CLIENT_ID_IN_USE));
    h.actions();
    let (at, port) = h
        .until_connect(60_000 * MS)
        .expect("a connect after the backoff");
    assert!(at > refused_at, "after a backoff, not at once");
    assert_eq!(port, 4002, "the same port: 326 is not the port's fault");
    h.s.on_connecting(h.clock);
    h.s.on_connected(h.clock);
    assert_eq!(
        h.s.client_id(),
        40,
        "the registry's id, not the fixed range"
    );
}

#[test]
fn a_wake_reconnects_at_once_and_the_gap_starts_before_the_sleep() {
    let mut h = Harness::new(true);
    h.ready();
    let req = h.tbt_request().unwrap();
    h.at(100 * MS);
    h.quote(req);
    let last_rx = h.clock.unix;
    h.records();
    // The host sleeps an hour: the wall clock moves on, the monotonic clock does not.
    let slept = 3_600_000 * MS;
    h.clock.unix += slept as i64;
    h.at(110 * MS);
    let woke = h.clock.unix;
    h.s.on_wake(h.clock, slept);
    assert_eq!(h.s.wakes(), 1);
    assert!(h.actions().contains(&Action::CloseIb));
    assert_eq!(h.s.next_deadline(h.clock.mono), h.clock.mono, "no backoff");
    h.ready();
    let gaps: Vec<Record> = h
        .records()
        .into_iter()
        .filter(|r| r.kind() == Some(RecordKind::Gap) && r.instrument_id == 0)
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(gaps[0].tick_type, GapReason::Disconnected as u8);
    assert_eq!(
        gaps[0].body[2], last_rx,
        "from the last bytes before the sleep"
    );
    assert!(gaps[0].body[3] >= woke, "to the reconnect after it");
}

#[test]
fn a_wake_during_a_backoff_connects_at_once() {
    let mut h = Harness::new(false);
    h.ready();
    h.s.on_closed(h.clock, "reset by peer");
    h.actions();
    assert!(
        h.s.next_deadline(h.clock.mono) > h.clock.mono,
        "backing off"
    );
    h.s.on_wake(h.clock, 5_000 * MS);
    assert_eq!(h.s.next_deadline(h.clock.mono), h.clock.mono);
    assert_eq!(h.tick(), Some(4002));
}
