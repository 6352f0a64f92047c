//! The gateway's connection driven in-process, without sockets, threads or the real clock:
//! bytes in with a virtual `now`, bytes out polled, time advanced to `next_deadline`, faults
//! injected through the API. The same scenario twice gives the same bytes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ib_stream_tws::{
    ClientHandshake, ClientMsg, Contract, FrameReader, ServerMsg, TbtQuote, TickByTickData,
};
use tws_sim::connection::{Connection, End, Fault};
use tws_sim::gateway::{Gateway, GatewayConfig, WallClock};
use tws_sim::generator::{TbtGen, TbtKind, TbtTick};
use tws_sim::limits::LimitConfig;
use tws_sim::schedule::Mode;
use tws_sim::session::SessionConfig;
use tws_sim::universe::Universe;

const AAPL: i32 = 265598;
/// 2026-01-01 14:30:00 UTC.
const EPOCH: u64 = 1_767_277_800;

fn gateway(t0: Instant) -> Arc<Gateway> {
    let cfg = GatewayConfig {
        max_version: 226,
        mode: Mode::Steady,
        rate: 10.0,
        rate_for: HashMap::new(),
        burst_size: 1,
        session: SessionConfig {
            seed: 7,
            account: "DU1234567".into(),
            next_valid_id: 1,
            limits: LimitConfig {
                max_mkt_lines: 100,
                max_tbt: 5,
                tbt_same_instrument: Duration::from_secs(15),
                max_msgs_per_sec: 50,
            },
        },
        competing: false,
    };
    let wall = WallClock::new(t0, u128::from(EPOCH) * 1_000_000_000);
    Arc::new(Gateway::new(cfg, Universe::builtin(), wall))
}

/// A client at the other end of one connection: what it sends goes straight in, what the
/// connection writes is read back as messages.
struct Client {
    conn: Connection,
    version: u32,
    frames: FrameReader,
    /// Every byte the connection wrote, for comparing runs.
    wire: Vec<u8>,
}

impl Client {
    fn connect(gw: &Arc<Gateway>, conn_no: u64, client_id: i32, now: Instant) -> Client {
        Client::connect_with(gw, conn_no, client_id, "", now)
    }

    fn connect_with(
        gw: &Arc<Gateway>,
        conn_no: u64,
        client_id: i32,
        options: &str,
        now: Instant,
    ) -> Client {
        let mut conn = Connection::new(Arc::clone(gw), conn_no, now);
        let mut hs = ClientHandshake::offering(client_id, 100, 226, options);
        let mut hello = Vec::new();
        hs.start(&mut hello);
        conn.on_bytes(&hello, now);
        let mut c = Client {
            conn,
            version: 0,
            frames: FrameReader::new(),
            wire: Vec::new(),
        };
        let got = c.drain(now);
        c.frames.feed(&got);
        let mut start = Vec::new();
        let ack = hs
            .poll_ack(&mut c.frames, &mut start)
            .unwrap()
            .expect("the whole answer");
        assert_eq!(ack.version, 226);
        assert_eq!(ack.time, "20260101 14:30:00 UTC", "the virtual wall clock");
        c.version = ack.version;
        c.send_bytes(&start, now);
        c
    }

    fn send(&mut self, msg: &ClientMsg, now: Instant) {
        let mut bytes = Vec::new();
        msg.encode(self.version, &mut bytes).unwrap();
        self.send_bytes(&bytes, now);
    }

    fn send_bytes(&mut self, bytes: &[u8], now: Instant) {
        // Byte by byte: a frame cut anywhere is put together again.
        for b in bytes {
            self.conn.on_bytes(&[*b], now);
        }
    }

    /// Takes everything the connection has to write at `now`.
    fn drain(&mut self, now: Instant) -> Vec<u8> {
        let mut got = Vec::new();
        while let Some(piece) = self.conn.poll_output(now) {
            got.extend_from_slice(piece);
            let n = piece.len();
            self.conn.advance(n, now);
        }
        self.wire.extend_from_slice(&got);
        got
    }

    /// The messages written by `now`.
    fn recv(&mut self, now: Instant) -> Vec<ServerMsg> {
        let got = self.drain(now);
        self.frames.feed(&got);
        let mut out = Vec::new();
        while let Some(frame) = self.frames.next_frame(self.version).unwrap() {
            out.push(ServerMsg::decode(&frame, self.version).unwrap());
        }
        out
    }

    /// Lets virtual time run to `until`, stopping at each deadline; the messages on the way.
    fn run_until(&mut self, now: &mut Instant, until: Instant) -> Vec<ServerMsg> {
        let mut out = self.recv(*now);
        while let Some(at) = self.conn.next_deadline().filter(|at| *at <= until) {
            *now = at.max(*now);
            self.conn.on_timeout(*now);
            out.extend(self.recv(*now));
        }
        *now = until;
        self.conn.on_timeout(until);
        out.extend(self.recv(until));
        out
    }
}

fn error_codes(msgs: &[ServerMsg]) -> Vec<i32> {
    msgs.iter()
        .filter_map(|m| match m {
            ServerMsg::Error { code, .. } => Some(*code),
            _ => None,
        })
        .collect()
}

fn quotes(msgs: &[ServerMsg], want_req: i32) -> Vec<(i64, TbtQuote)> {
    msgs.iter()
        .filter_map(|m| match m {
            ServerMsg::TickByTick {
                req_id,
                time,
                data: TickByTickData::BidAsk(q),
            } if *req_id == want_req => Some((*time, *q)),
            _ => None,
        })
        .collect()
}

fn expected_quotes(n: usize) -> Vec<TbtQuote> {
    let u = Universe::builtin();
    let inst = u.get(u.by_con_id(AAPL).unwrap());
    TbtGen::new(7, inst, TbtKind::BidAsk)
        .take(n)
        .map(|t| match t {
            TbtTick::BidAsk {
                bid,
                ask,
                bid_size,
                ask_size,
                bid_past_low,
                ask_past_high,
            } => TbtQuote {
                bid_price: bid,
                ask_price: ask,
                bid_size,
                ask_size,
                bid_past_low,
                ask_past_high,
            },
            other => panic!("{other:?}"),
        })
        .collect()
}

fn aapl() -> Contract {
    Contract {
        con_id: AAPL,
        exchange: "SMART".into(),
        ..Contract::default()
    }
}

/// Handshake, contract details, a tick-by-tick stream on the virtual clock, 1100 and 1102,
/// a stall; returns every byte written.
fn scenario() -> Vec<u8> {
    let t0 = Instant::now();
    let gw = gateway(t0);
    let mut now = t0;
    let mut c = Client::connect(&gw, 0, 1, now);
    let welcome = c.recv(now);
    assert!(
        matches!(&welcome[0], ServerMsg::ManagedAccounts { accounts } if accounts == "DU1234567")
    );
    assert!(matches!(welcome[1], ServerMsg::NextValidId { order_id: 1 }));
    assert_eq!(error_codes(&welcome), [2104, 2106, 2158]);
    assert_eq!(c.conn.client_id(), Some(1));
    assert_eq!(gw.client_count(), 1);

    c.send(
        &ClientMsg::ReqContractDetails {
            req_id: 3,
            contract: aapl(),
        },
        now,
    );
    let details = c.recv(now);
    assert!(
        matches!(&details[..], [ServerMsg::ContractData { req_id: 3, details }, ServerMsg::ContractDataEnd { req_id: 3 }] if details.contract.con_id == AAPL),
        "{details:?}"
    );

    c.send(
        &ClientMsg::ReqTickByTick {
            req_id: 9,
            contract: aapl(),
            tick_type: "BidAsk".into(),
            number_of_ticks: 0,
            ignore_size: false,
        },
        now,
    );
    // 10 a second: tick k is due k * 100 ms after the request; the first at once.
    c.conn.on_timeout(now);
    assert_eq!(quotes(&c.recv(now), 9).len(), 1);
    assert_eq!(
        c.conn.next_deadline(),
        Some(t0 + Duration::from_millis(100))
    );
    let second = c.run_until(&mut now, t0 + Duration::from_millis(1050));
    let ticks = quotes(&second, 9);
    assert_eq!(ticks.len(), 10, "ticks 1..=10 in the first second");
    assert_eq!(
        ticks.iter().map(|(_, q)| *q).collect::<Vec<_>>(),
        expected_quotes(11)[1..],
        "the generator's ticks, in order"
    );
    // Tick times are the virtual wall clock's.
    assert_eq!(ticks[0].0, EPOCH as i64);
    assert_eq!(ticks[9].0, EPOCH as i64 + 1);

    // 1100: no ticks while connectivity is lost, however long.
    assert!(c.conn.inject(Fault::Lost, now));
    assert_eq!(error_codes(&c.recv(now)), [1100]);
    assert_eq!(c.conn.next_deadline(), None, "no timer while no data flows");
    let lost = c.run_until(&mut now, t0 + Duration::from_secs(5));
    assert!(lost.is_empty(), "{lost:?}");
    // 1102: ticks resume where they stopped, on schedule, no catch-up burst.
    assert!(c.conn.inject(Fault::Restored { kept: true }, now));
    let resumed = c.run_until(&mut now, t0 + Duration::from_millis(5350));
    assert_eq!(error_codes(&resumed), [1102]);
    let ticks = quotes(&resumed, 9);
    assert_eq!(ticks.len(), 4, "one at once, then every 100 ms");
    assert_eq!(ticks[0].1, expected_quotes(12)[11]);

    // A stall: nothing is written until it ends, then what was held goes out.
    assert!(c.conn.inject(Fault::Stall(Duration::from_millis(500)), now));
    c.send(&ClientMsg::ReqCurrentTime, now);
    assert!(c.recv(now).is_empty());
    assert_eq!(
        c.conn.next_deadline(),
        Some(now + Duration::from_millis(500))
    );
    let stall_end = now + Duration::from_millis(500);
    let after = c.run_until(&mut now, stall_end);
    assert!(
        matches!(after.first(), Some(ServerMsg::CurrentTime { time }) if *time == EPOCH as i64 + 5)
    );
    assert!(!quotes(&after, 9).is_empty());
    c.wire
}

#[test]
fn a_connection_runs_on_a_virtual_clock_and_repeats_byte_for_byte() {
    let first = scenario();
    let second = scenario();
    assert!(first.len() > 1000);
    assert!(
        first == second,
        "two runs of one scenario wrote different bytes"
    );
}

/// The gateway's host clock is stepped: the times it sends follow, the tick pacing does not.
#[test]
fn a_wall_clock_jump_shows_in_the_times_the_gateway_sends() {
    let t0 = Instant::now();
    let gw = gateway(t0);
    let mut c = Client::connect(&gw, 0, 1, t0);
    c.recv(t0);
    gw.jump_wall_clock(3_600_000_000_000);
    c.send(&ClientMsg::ReqCurrentTime, t0);
    assert!(
        matches!(c.recv(t0)[..], [ServerMsg::CurrentTime { time }] if time == EPOCH as i64 + 3600)
    );
    gw.jump_wall_clock(-7_200_000_000_000);
    c.send(&ClientMsg::ReqCurrentTime, t0);
    assert!(
        matches!(c.recv(t0)[..], [ServerMsg::CurrentTime { time }] if time == EPOCH as i64 - 3600)
    );
}

#[test]
fn pacing_violation_is_100_then_the_close_and_frees_the_client_id() {
    let t0 = Instant::now();
    let gw = gateway(t0);
    let mut c = Client::connect(&gw, 0, 1, t0);
    c.recv(t0);
    for _ in 0..50 {
        c.send(&ClientMsg::ReqCurrentTime, t0);
    }
    assert_eq!(c.recv(t0).len(), 50);
    assert_eq!(c.conn.end(), None);
    c.send(&ClientMsg::ReqCurrentTime, t0);
    assert_eq!(error_codes(&c.recv(t0)), [100]);
    assert_eq!(c.conn.end(), Some(&End::Pacing));
    assert_eq!(gw.client_count(), 0);
}

/// A +PACEAPI client that sends a burst and closes: the gateway still serves every request it
/// read, at the paced times (its cancels count), and only then ends the connection.
#[test]
fn requests_held_by_pacing_are_served_after_the_client_closes() {
    let t0 = Instant::now();
    let gw = gateway(t0);
    let mut c = Client::connect_with(&gw, 0, 1, "+PACEAPI", t0);
    c.recv(t0);
    for req_id in 0..60 {
        c.send(&ClientMsg::CancelTickByTick { req_id }, t0);
    }
    c.conn.on_eof();
    assert_eq!(gw.account().lock().cancels.tick_by_tick, 50, "50 a second");
    assert_eq!(c.conn.end(), None, "10 requests are still held");
    let at = c.conn.next_deadline().expect("the paced requests' time");
    assert_eq!(at, t0 + Duration::from_secs(1));
    c.conn.on_timeout(at);
    assert_eq!(gw.account().lock().cancels.tick_by_tick, 60);
    assert_eq!(gw.account().lock().cancels.unknown, 60);
    assert_eq!(c.conn.end(), Some(&End::ClientClosed));
    assert!(
        c.recv(at).is_empty(),
        "nothing is sent to a client that closed"
    );
    assert_eq!(gw.client_count(), 0);
}

/// Writes fail (the client is gone) while its last requests are still unread: they are served
/// (the cancels count), nothing more is encoded, and the end comes with the reader's.
#[test]
fn what_the_client_sent_before_writes_failed_is_still_served() {
    let t0 = Instant::now();
    let gw = gateway(t0);
    let mut c = Client::connect(&gw, 0, 1, t0);
    c.recv(t0);
    c.send(
        &ClientMsg::ReqTickByTick {
            req_id: 9,
            contract: aapl(),
            tick_type: "BidAsk".into(),
            number_of_ticks: 0,
            ignore_size: false,
        },
        t0,
    );
    c.conn.on_timeout(t0);
    assert!(c.conn.pending() > 0);
    c.conn.on_write_closed();
    assert_eq!(c.conn.pending(), 0);
    c.send(&ClientMsg::CancelTickByTick { req_id: 9 }, t0);
    assert_eq!(gw.account().lock().cancels.tick_by_tick, 1);
    assert_eq!(gw.account().lock().tbt_active, 0);
    c.conn.on_timeout(t0 + Duration::from_secs(1));
    assert_eq!(
        c.conn.pending(),
        0,
        "nothing is encoded for a client that is gone"
    );
    assert_eq!(c.conn.end(), None);
    c.conn.on_eof();
    assert_eq!(c.conn.end(), Some(&End::ClientClosed));
}

#[test]
fn a_second_connection_with_the_same_client_id_gets_326_until_the_first_is_dropped() {
    let t0 = Instant::now();
    let gw = gateway(t0);
    let mut first = Client::connect(&gw, 0, 1, t0);
    first.recv(t0);
    let mut second = Client::connect(&gw, 1, 1, t0);
    assert_eq!(error_codes(&second.recv(t0)), [326]);
    assert_eq!(second.conn.end(), Some(&End::DuplicateClientId(1)));

    // The gateway cuts the first (a restart): the id is free again.
    first.conn.drop_by_gateway();
    assert_eq!(first.conn.end(), Some(&End::Dropped));
    assert!(first.recv(t0).is_empty(), "nothing is sent after the drop");
    let mut third = Client::connect(&gw, 2, 1, t0);
    assert_eq!(error_codes(&third.recv(t0)), [2104, 2106, 2158]);
}

#[test]
fn split_cuts_the_output_into_small_writes_a_gap_apart() {
    let t0 = Instant::now();
    let gw = gateway(t0);
    let mut c = Client::connect(&gw, 0, 1, t0);
    c.recv(t0);
    assert!(c.conn.inject(
        Fault::Split {
            max_chunk: 3,
            bytes: 40
        },
        t0
    ));
    c.send(&ClientMsg::ReqCurrentTime, t0);
    let piece = c.conn.poll_output(t0).expect("a piece").to_vec();
    assert!((1..=3).contains(&piece.len()));
    c.conn.advance(piece.len(), t0);
    c.frames.feed(&piece);
    assert!(c.conn.poll_output(t0).is_none(), "the next piece waits");
    let gap = c.conn.next_deadline().expect("the gap's end");
    assert!(gap > t0);
    let mut now = t0;
    let msgs = c.run_until(&mut now, t0 + Duration::from_secs(1));
    assert!(
        matches!(msgs[..], [ServerMsg::CurrentTime { .. }]),
        "{msgs:?}"
    );
}

#[test]
fn a_client_that_does_not_finish_the_handshake_times_out() {
    let t0 = Instant::now();
    let gw = gateway(t0);
    let mut conn = Connection::new(gw, 0, t0);
    conn.on_bytes(b"API\0", t0);
    let deadline = conn.next_deadline().unwrap();
    assert_eq!(deadline, t0 + Duration::from_secs(10));
    conn.on_timeout(deadline - Duration::from_millis(1));
    assert_eq!(conn.end(), None);
    conn.on_timeout(deadline);
    assert_eq!(conn.end(), Some(&End::HandshakeTimeout));
}
