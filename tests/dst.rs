//! Deterministic simulation (issue 12): the engine's sans-IO `Session` against tws-sim's
//! gateway `Connection` in one process, over a simulated network (two byte pipes with seeded
//! chunking and latency), on a virtual clock, every random choice from one seed. Faults are
//! drawn from the seed; invariants are checked after every step. A failing seed prints the
//! one line that replays it and the fault list.
//!
//! `DST_SEEDS=N` runs N seeds (default [`DEFAULT_SEEDS`]); `DST_SEED=n` replays one.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ib_stream::config::{Environment, Settings, TrackedContract};
use ib_stream::engine::publish::Publisher;
use ib_stream::engine::{Action, Clock, EngineOptions, Session};
use ib_stream::ipc::{ReadOutcome, RecordKind, RingReader, StartAt};
use ib_stream::tws::{
    ClientHello, ClientMsg, FrameReader, MAX_SUPPORTED, ServerAck, ServerMsg, TickByTickData,
};
use tws_sim::connection::{Connection, Fault as GwFault};
use tws_sim::gateway::{Gateway, GatewayConfig, WallClock};
use tws_sim::limits::LimitConfig;
use tws_sim::schedule::Mode;
use tws_sim::session::SessionConfig;
use tws_sim::universe::Universe;

const SEC: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
/// 2026-06-01 13:30 UTC: where both wall clocks start.
const T0_UNIX: i64 = 1_780_320_600_000_000_000;
/// Seeds a plain `cargo test --test dst` runs (sized for well under a minute in debug).
const DEFAULT_SEEDS: u64 = 300;
/// Faults are drawn in `[0, FAULT_END)`; after it the run is quiet until `RUN_END`, so
/// subscriptions must converge (the retry cap is 120 s).
const FAULT_END: u64 = 120 * SEC;
const RUN_END: u64 = FAULT_END + 200 * SEC;
/// The instruments subscribed (bid/ask): AAPL, MNQ and one more of the built-in universe.
const CONS: [u32; 3] = [265_598, 711_280_073, 756_733];
const PORT: u16 = 4002;
/// Instruments control clients subscribe to and cancel (bid/ask), on top of [`CONS`]: five
/// in all, the account's tick-by-tick slots.
const EXTRA: [u32; 2] = [12_087_792, 272_093];
/// Control clients.
const CLIENTS: usize = 3;

/// SplitMix64: small, seedable, good enough to draw faults and chunk sizes.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A fault of the schedule, at a virtual time.
#[derive(Debug, Clone, PartialEq)]
enum Fault {
    /// The network cuts the connection (anywhere, often inside a frame).
    Drop,
    /// The gateway restarts: every connection closes, it refuses connects for `down_ms`, and
    /// it forgets its tick-by-tick windows.
    Restart { down_ms: u64 },
    /// 1100, then 1101/1102 after `ms`.
    Connectivity { ms: u64, kept: bool },
    /// A farm notice.
    Farm(i32),
    /// Another client takes the engine's client id at the gateway (326 for the engine's next
    /// connect) for `ms`.
    Squat { ms: u64 },
    /// The gateway's writes come in pieces of 1..=max bytes.
    Split { max_chunk: usize, bytes: u64 },
    /// A storm of control requests: (client, instrument of [`EXTRA`], subscribe or cancel).
    Control(Vec<(usize, u32, bool)>),
    /// The engine's host slept: its wall clock jumps ahead by `ms`, the monotonic one does
    /// not, and the connection is gone when it wakes.
    Sleep { ms: u64 },
}

/// One direction of the network: chunks in order, each with its delivery time.
#[derive(Debug, Default)]
struct Pipe {
    q: VecDeque<(u64, Vec<u8>)>,
    last: u64,
}

impl Pipe {
    /// `bytes` written at `now`, cut into seeded pieces that arrive in order after a latency.
    fn send(&mut self, rng: &mut Rng, now: u64, max_chunk: usize, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = (rng.range(1, max_chunk as u64) as usize).min(rest.len());
            let at = (now + rng.range(50_000, 2 * MS)).max(self.last);
            self.last = at;
            self.q.push_back((at, rest[..n].to_vec()));
            rest = &rest[n..];
        }
    }
    fn due(&mut self, now: u64) -> Option<Vec<u8>> {
        if self.q.front().is_some_and(|(at, _)| *at <= now) {
            return self.q.pop_front().map(|(_, b)| b);
        }
        None
    }
    fn next_at(&self) -> Option<u64> {
        self.q.front().map(|(at, _)| *at)
    }
    fn clear(&mut self) {
        self.q.clear();
    }
}

/// Decodes one direction of one connection as it is delivered (the invariants' view).
#[derive(Debug, Default)]
struct Tap {
    head: Vec<u8>,
    head_done: bool,
    version: u32,
    frames: FrameReader,
}

/// The world: engine, gateway, network, clock, faults and what the invariants remember.
struct World {
    rng: Rng,
    now: u64,
    /// The engine's wall clock minus its monotonic one (moves when the host sleeps).
    unix_offset: i64,
    t0: Instant,
    gw: Arc<Gateway>,
    conn: Option<Connection>,
    conn_no: u64,
    gw_down_until: u64,
    squatter: Option<(Connection, u64)>,
    s: Session,
    ring: RingReader,
    to_gw: Pipe,
    to_eng: Pipe,
    /// The gateway closed; the engine sees the close once `to_eng` is delivered.
    fin_to_eng: bool,
    /// The engine's socket takes nothing before this (after a partial write).
    write_blocked_until: u64,
    chunk_max: usize,
    tap_out: Tap,
    tap_in: Tap,
    /// The engine's output as it writes it (its cancels count from then).
    tap_sent: Tap,
    /// Request ids the engine cancelled: ticks for them may still arrive and are not owed.
    cancelled: std::collections::HashSet<i32>,
    ctl_open: [bool; CLIENTS],
    ctl_id: u64,
    /// (client, conId) the control clients hold.
    held: BTreeSet<(usize, u32)>,
    faults: Vec<(u64, Fault)>,
    next_fault: usize,
    pending_restore: Option<(u64, bool)>,
    // Invariant state.
    req_con: HashMap<i32, u32>,
    /// Ticks delivered to the engine and not yet seen in the ring: (conId, bid, ask).
    expected: VecDeque<(u32, i64, i64)>,
    /// Arrival times at the gateway of this connection's messages (last second).
    arrivals: VecDeque<u64>,
    /// Last tick-by-tick request per conId to reach the gateway (any connection: the
    /// engine keeps the rule across reconnects, and the gateway's account remembers it).
    tbt_last: HashMap<u32, u64>,
    /// A Ready connection with subscriptions dropped: a gap record is owed before the next
    /// tick.
    gap_owed: bool,
    ticks_published: u64,
    steps: u64,
    /// FNV-1a over every record the engine published (a replay writes the same bytes).
    digest: u64,
}

fn settings() -> Settings {
    let mut s = Settings::defaults(Environment::Development);
    s.ib_ports = vec![PORT];
    s.client_id = 7;
    s.client_id_range = 2;
    s.allow_delayed = false;
    s.tracked_contracts = CONS
        .iter()
        .map(|&con_id| TrackedContract {
            con_id,
            symbol: format!("C{con_id}"),
            kinds: vec![RecordKind::TbtBidAsk],
            buffer_hours: 0,
        })
        .collect();
    s
}

fn gateway(t0: Instant) -> Arc<Gateway> {
    let cfg = GatewayConfig {
        max_version: MAX_SUPPORTED,
        mode: Mode::Steady,
        rate: 5.0,
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
    let wall = WallClock::new(t0, T0_UNIX as u128);
    Arc::new(Gateway::new(cfg, Universe::builtin(), wall))
}

/// The fault schedule of a seed.
fn draw_faults(rng: &mut Rng) -> Vec<(u64, Fault)> {
    let n = rng.range(0, 12);
    let mut v: Vec<(u64, Fault)> = (0..n)
        .map(|_| {
            let at = rng.range(0, FAULT_END);
            let f = match rng.range(0, 7) {
                0 => Fault::Drop,
                1 => Fault::Restart {
                    down_ms: rng.range(0, 20_000),
                },
                2 => Fault::Connectivity {
                    ms: rng.range(100, 30_000),
                    kept: rng.chance(50),
                },
                3 => Fault::Farm(
                    *[2103, 2104, 2105, 2106, 2108, 2157, 2158]
                        .get(rng.range(0, 6) as usize)
                        .unwrap_or(&2104),
                ),
                4 => Fault::Squat {
                    ms: rng.range(100, 20_000),
                },
                5 => Fault::Split {
                    max_chunk: rng.range(1, 64) as usize,
                    bytes: rng.range(1, 20_000),
                },
                6 => Fault::Control(
                    (0..rng.range(1, 12))
                        .map(|_| {
                            (
                                rng.range(0, CLIENTS as u64 - 1) as usize,
                                EXTRA[rng.range(0, EXTRA.len() as u64 - 1) as usize],
                                rng.chance(60),
                            )
                        })
                        .collect(),
                ),
                _ => Fault::Sleep {
                    ms: rng.range(1_000, 3_600_000),
                },
            };
            (at, f)
        })
        .collect();
    v.sort_by_key(|(at, _)| *at);
    v
}

impl World {
    fn new(seed: u64, faults: Option<Vec<(u64, Fault)>>) -> World {
        // Faults from their own stream: a fault list given back (a shrunk one) meets the
        // same network and jitter as the seed's own.
        let drawn = draw_faults(&mut Rng(seed ^ 0xD1B5_4A32_D192_ED03));
        let mut rng = Rng(seed);
        let faults = faults.unwrap_or(drawn);
        let chunk_max = *[7usize, 100, 1500, 65_536]
            .get(rng.range(0, 3) as usize)
            .unwrap_or(&1500);
        let t0 = Instant::now();
        let publisher = Publisher::heap(1 << 16).expect("heap ring");
        let ring = publisher.reader(StartAt::Oldest);
        let clock = Clock {
            mono: 0,
            unix: T0_UNIX,
        };
        let s = Session::new(
            settings(),
            // Status once a second: the region is not checked here, and every 100 ms would
            // be most of the steps.
            EngineOptions {
                status_ms: 1_000,
                ..EngineOptions::default()
            },
            publisher,
            Vec::new(),
            "/nonexistent/contracts.json".into(),
            seed,
            clock,
        );
        World {
            rng,
            now: 0,
            unix_offset: T0_UNIX,
            t0,
            gw: gateway(t0),
            conn: None,
            conn_no: 0,
            gw_down_until: 0,
            squatter: None,
            s,
            ring,
            to_gw: Pipe::default(),
            to_eng: Pipe::default(),
            fin_to_eng: false,
            write_blocked_until: 0,
            chunk_max,
            tap_out: Tap::default(),
            tap_in: Tap::default(),
            tap_sent: Tap::default(),
            cancelled: Default::default(),
            ctl_open: [false; CLIENTS],
            ctl_id: 0,
            held: BTreeSet::new(),
            faults,
            next_fault: 0,
            pending_restore: None,
            req_con: HashMap::new(),
            expected: VecDeque::new(),
            arrivals: VecDeque::new(),
            tbt_last: HashMap::new(),
            gap_owed: false,
            ticks_published: 0,
            steps: 0,
            digest: 0xCBF2_9CE4_8422_2325,
        }
    }

    fn clock(&self) -> Clock {
        Clock {
            mono: self.now,
            unix: self.now as i64 + self.unix_offset,
        }
    }

    fn instant(&self, t: u64) -> Instant {
        self.t0 + Duration::from_nanos(t)
    }

    fn virt(&self, i: Instant) -> u64 {
        i.saturating_duration_since(self.t0).as_nanos() as u64
    }

    /// The connection is gone at both ends (and everything in flight with it).
    fn cut(&mut self, by_gateway: bool) {
        if let Some(mut c) = self.conn.take() {
            if by_gateway {
                c.drop_by_gateway();
            } else {
                c.on_eof();
            }
        }
        self.to_gw.clear();
        self.to_eng.clear();
        self.fin_to_eng = false;
        if self.s.ib_open() {
            if self.s.is_ready() && !self.req_con.is_empty() {
                self.gap_owed = true;
            }
            let clock = self.clock();
            self.s.on_closed(clock, "dst: connection cut");
        }
        self.reset_conn_state();
    }

    fn reset_conn_state(&mut self) {
        self.tap_out = Tap::default();
        self.tap_in = Tap::default();
        self.tap_sent = Tap::default();
        self.req_con.clear();
        self.arrivals.clear();
    }

    fn apply(&mut self, f: &Fault) {
        let now = self.instant(self.now);
        match *f {
            Fault::Drop => self.cut(true),
            Fault::Restart { down_ms } => {
                self.cut(true);
                if let Some((mut c, _)) = self.squatter.take() {
                    c.drop_by_gateway();
                }
                self.gw.restarted();
                self.gw_down_until = self.now + down_ms * MS;
            }
            Fault::Connectivity { ms, kept } => {
                if let Some(c) = &mut self.conn
                    && c.inject(GwFault::Lost, now)
                {
                    self.pending_restore = Some((self.now + ms * MS, kept));
                }
            }
            Fault::Farm(code) => {
                if let Some(c) = &mut self.conn {
                    c.inject(GwFault::Farm(code), now);
                }
            }
            Fault::Split { max_chunk, bytes } => {
                if let Some(c) = &mut self.conn {
                    c.inject(GwFault::Split { max_chunk, bytes }, now);
                }
            }
            Fault::Squat { ms } => {
                // Another client with the engine's next client id: the engine's connect in
                // the meantime gets 326.
                self.conn_no += 1;
                let mut c = Connection::new(Arc::clone(&self.gw), self.conn_no, now);
                let mut hello = Vec::new();
                ClientHello::new(100, MAX_SUPPORTED).encode(&mut hello);
                c.on_bytes(&hello, now);
                let mut b = Vec::new();
                ClientMsg::StartApi {
                    client_id: self.s.client_id(),
                    optional_capabilities: String::new(),
                }
                .encode(c.version(), &mut b)
                .expect("startApi encodes");
                c.on_bytes(&b, now);
                self.squatter = Some((c, self.now + ms * MS));
            }
            Fault::Control(ref storm) => {
                let clock = self.clock();
                for &(c, con, sub) in storm {
                    if !self.ctl_open[c] {
                        assert!(self.s.control_open(c), "control client {c} accepted");
                        self.ctl_open[c] = true;
                    }
                    self.ctl_id += 1;
                    let op = if sub { "subscribe" } else { "unsubscribe" };
                    let line = format!(
                        "{{\"id\":{},\"op\":\"{op}\",\"client\":\"c{c}\",\"con_id\":{con},\"kind\":\"bid_ask\"}}\n",
                        self.ctl_id
                    );
                    self.s.on_control_bytes(clock, c, line.as_bytes());
                    if sub {
                        self.held.insert((c, con));
                    } else {
                        self.held.remove(&(c, con));
                    }
                }
            }
            Fault::Sleep { ms } => {
                self.unix_offset += (ms * MS) as i64;
                self.cut(false);
            }
        }
    }

    /// The earliest time anything has work.
    fn next_time(&self) -> u64 {
        let mut t = self.s.next_deadline(self.now);
        let mut at = |x: u64| t = t.min(x);
        if let Some(c) = &self.conn
            && let Some(d) = c.next_deadline()
        {
            at(self.virt(d));
        }
        if !self.s.ib_out().is_empty() && self.conn.is_some() {
            at(self.write_blocked_until);
        }
        if let Some(x) = self.to_gw.next_at() {
            at(x);
        }
        if let Some(x) = self.to_eng.next_at() {
            at(x);
        }
        if let Some((f, _)) = self.faults.get(self.next_fault) {
            at(*f);
        }
        if let Some((x, _)) = self.pending_restore {
            at(x);
        }
        if let Some((_, x)) = &self.squatter {
            at(*x);
        }
        at(RUN_END);
        t.max(self.now)
    }

    fn step(&mut self) -> Result<(), String> {
        self.steps += 1;
        self.now = self.next_time();
        let now_i = self.instant(self.now);
        while let Some((at, f)) = self.faults.get(self.next_fault).cloned()
            && at <= self.now
        {
            self.next_fault += 1;
            self.apply(&f);
        }
        if let Some((at, kept)) = self.pending_restore
            && at <= self.now
        {
            self.pending_restore = None;
            if let Some(c) = &mut self.conn {
                c.inject(GwFault::Restored { kept }, now_i);
            }
        }
        if let Some((_, until)) = &self.squatter
            && *until <= self.now
            && let Some((mut c, _)) = self.squatter.take()
        {
            c.on_eof();
        }
        if let Some(c) = &mut self.conn {
            c.on_timeout(now_i);
        }
        let clock = self.clock();
        self.s.on_timeout(clock);
        self.pump()?;
        self.check()
    }

    /// Moves bytes and actions until nothing changes at this instant.
    fn pump(&mut self) -> Result<(), String> {
        loop {
            let mut progress = false;
            let clock = self.clock();
            let now_i = self.instant(self.now);
            while let Some(a) = self.s.poll_action() {
                progress = true;
                match a {
                    Action::Connect { port } => {
                        assert_eq!(port, PORT);
                        if self.now < self.gw_down_until {
                            self.s.on_connect_failed(clock, "dst: gateway down");
                        } else {
                            self.s.on_connecting(clock);
                            self.conn_no += 1;
                            self.conn =
                                Some(Connection::new(Arc::clone(&self.gw), self.conn_no, now_i));
                            self.reset_conn_state();
                            self.s.on_connected(clock);
                        }
                    }
                    Action::CloseIb => {
                        if let Some(mut c) = self.conn.take() {
                            c.on_eof();
                        }
                        self.to_gw.clear();
                        self.to_eng.clear();
                        self.fin_to_eng = false;
                        self.reset_conn_state();
                    }
                    Action::ShutdownIbWrite | Action::Stop => {}
                    Action::ControlOut(c) => {
                        let n = self.s.control_out(c).len();
                        self.s.control_written(c, n);
                    }
                    Action::CloseControl(_) => {}
                    Action::SaveContracts(_) => self.s.on_store_saved(clock),
                }
            }
            let out = self.s.ib_out();
            if !out.is_empty() && self.conn.is_some() && self.now >= self.write_blocked_until {
                // Slow socket: a quarter of the writes take only part of what is offered;
                // the rest waits a millisecond.
                let n = if self.rng.chance(25) {
                    self.write_blocked_until = self.now + MS;
                    self.rng.range(1, out.len() as u64) as usize
                } else {
                    out.len()
                };
                let out = out[..n].to_vec();
                self.s.ib_written(out.len());
                self.tap_sent_bytes(&out)?;
                self.to_gw
                    .send(&mut self.rng, self.now, self.chunk_max, &out);
                progress = true;
            }
            if let Some(c) = &mut self.conn {
                while let Some(piece) = c.poll_output(now_i) {
                    let piece = piece.to_vec();
                    c.advance(piece.len(), now_i);
                    self.to_eng
                        .send(&mut self.rng, self.now, self.chunk_max, &piece);
                    progress = true;
                }
                if c.end().is_some() {
                    self.conn = None;
                    self.fin_to_eng = true;
                    progress = true;
                }
            }
            while let Some(b) = self.to_gw.due(self.now) {
                progress = true;
                // The gateway first: the tap decodes with the version it negotiated.
                if let Some(c) = &mut self.conn {
                    c.on_bytes(&b, now_i);
                }
                self.tap_to_gw(&b)?;
            }
            while let Some(b) = self.to_eng.due(self.now) {
                progress = true;
                self.tap_to_eng(&b)?;
                if !self.s.on_bytes(clock, clock.unix, &b) {
                    self.to_eng.clear();
                }
            }
            if self.fin_to_eng && self.to_eng.q.is_empty() {
                self.fin_to_eng = false;
                if self.s.ib_open() {
                    self.s.on_closed(clock, "dst: gateway closed");
                }
                self.to_gw.clear();
                self.reset_conn_state();
                progress = true;
            }
            if !progress {
                return Ok(());
            }
        }
    }

    /// The engine's messages as it writes them: the requests it cancels.
    fn tap_sent_bytes(&mut self, b: &[u8]) -> Result<(), String> {
        let t = &mut self.tap_sent;
        if !t.head_done {
            t.head.extend_from_slice(b);
            match ClientHello::parse(&t.head) {
                Ok(Some((_, used))) => {
                    t.head_done = true;
                    let rest = t.head.split_off(used);
                    t.frames.feed(&rest);
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("engine hello: {e}")),
            }
        } else {
            t.frames.feed(b);
        }
        // The engine writes frames only once it has the gateway's version.
        let version = self.tap_in.version;
        if version == 0 {
            return Ok(());
        }
        while let Some(f) = t
            .frames
            .next_frame(version)
            .map_err(|e| format!("engine frame (sent): {e}"))?
        {
            if let ClientMsg::CancelTickByTick { req_id } =
                ClientMsg::decode(&f, version).map_err(|e| format!("engine msg (sent): {e}"))?
            {
                self.cancelled.insert(req_id);
            }
        }
        Ok(())
    }

    /// The engine's messages as the gateway receives them: IB's rules.
    fn tap_to_gw(&mut self, b: &[u8]) -> Result<(), String> {
        let t = &mut self.tap_out;
        if !t.head_done {
            t.head.extend_from_slice(b);
            match ClientHello::parse(&t.head) {
                Ok(Some((_, used))) => {
                    t.head_done = true;
                    t.version = self.conn.as_ref().map_or(0, |c| c.version());
                    let rest = t.head.split_off(used);
                    t.frames.feed(&rest);
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("engine hello: {e}")),
            }
        } else {
            t.frames.feed(b);
        }
        let mut msgs = Vec::new();
        while let Some(f) = t
            .frames
            .next_frame(t.version)
            .map_err(|e| format!("engine frame: {e}"))?
        {
            msgs.push(ClientMsg::decode(&f, t.version).map_err(|e| format!("engine msg: {e}"))?);
        }
        for m in msgs {
            self.arrivals.push_back(self.now);
            while self.arrivals.front().is_some_and(|a| *a + SEC <= self.now) {
                self.arrivals.pop_front();
            }
            if self.arrivals.len() > 50 {
                return Err(format!(
                    "{} messages reached the gateway within 1 s",
                    self.arrivals.len()
                ));
            }
            match m {
                ClientMsg::ReqTickByTick {
                    req_id, contract, ..
                } => {
                    if contract.exchange.is_empty() {
                        return Err(format!(
                            "tick-by-tick request without exchange: {contract:?}"
                        ));
                    }
                    let con = contract.con_id as u32;
                    if let Some(prev) = self.tbt_last.get(&con)
                        && self.now < prev + 15 * SEC
                    {
                        return Err(format!(
                            "tick-by-tick for {con} {} ms after the last (IB's 15-second rule)",
                            (self.now - prev) / MS
                        ));
                    }
                    self.tbt_last.insert(con, self.now);
                    self.req_con.insert(req_id, con);
                }
                ClientMsg::ReqMktData { contract, .. } if contract.exchange.is_empty() => {
                    return Err(format!(
                        "market data request without exchange: {contract:?}"
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The gateway's messages as the engine receives them: the ticks it must publish.
    fn tap_to_eng(&mut self, b: &[u8]) -> Result<(), String> {
        let t = &mut self.tap_in;
        if !t.head_done {
            t.head.extend_from_slice(b);
            match ServerAck::parse(&t.head) {
                Ok(Some((ack, used))) => {
                    t.head_done = true;
                    t.version = ack.version;
                    let rest = t.head.split_off(used);
                    t.frames.feed(&rest);
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("gateway ack: {e}")),
            }
        } else {
            t.frames.feed(b);
        }
        while let Some(f) = t
            .frames
            .next_frame(t.version)
            .map_err(|e| format!("gateway frame: {e}"))?
        {
            let m = ServerMsg::decode(&f, t.version).map_err(|e| format!("gateway msg: {e}"))?;
            if let ServerMsg::TickByTick {
                req_id,
                data: TickByTickData::BidAsk(q),
                ..
            } = m
            {
                if self.cancelled.contains(&req_id) {
                    continue;
                }
                let con = *self
                    .req_con
                    .get(&req_id)
                    .ok_or_else(|| format!("tick for unknown request {req_id}"))?;
                self.expected.push_back((con, q.bid_price, q.ask_price));
            }
        }
        Ok(())
    }

    /// Invariants after every step.
    fn check(&mut self) -> Result<(), String> {
        while let ReadOutcome::Record(r) = self.ring.try_read() {
            for b in r.as_bytes_ref() {
                self.digest = (self.digest ^ u64::from(*b)).wrapping_mul(0x100_0000_01B3);
            }
            match r.kind() {
                Some(RecordKind::Gap) => self.gap_owed = false,
                Some(RecordKind::TbtBidAsk) => {
                    if self.gap_owed {
                        return Err("a tick after a drop without a gap record".into());
                    }
                    let q = r.as_quote().ok_or("bid/ask record without a quote")?;
                    let got = (r.instrument_id, q.bid_price, q.ask_price);
                    match self.expected.pop_front() {
                        Some(want) if want == got => self.ticks_published += 1,
                        Some(want) => {
                            return Err(format!(
                                "published {got:?}, the gateway sent {want:?} next"
                            ));
                        }
                        None => return Err(format!("published {got:?} that was never delivered")),
                    }
                }
                _ => {}
            }
        }
        // Bounded queues: the subscriptions' pending requests and the bytes not yet written
        // hold at most what the wanted set and the control storms can ask for.
        if self.s.queued() > 64 || self.s.ib_out().len() > 64 * 1024 {
            return Err(format!(
                "queues grow: {} requests queued, {} bytes unwritten",
                self.s.queued(),
                self.s.ib_out().len()
            ));
        }
        // Delivered ticks are published within the input that delivered them.
        if let Some(t) = self.expected.front() {
            return Err(format!(
                "{} delivered ticks not published (first {t:?})",
                self.expected.len()
            ));
        }
        Ok(())
    }

    /// After the quiet period: the gateway streams exactly the wanted set to the engine.
    fn converged(&self) -> Result<(), String> {
        let Some(c) = &self.conn else {
            return Err("no connection at the end".into());
        };
        let Some(sess) = c.session() else {
            return Err("the connection is not past START_API at the end".into());
        };
        let have: BTreeSet<(u32, &str)> = sess
            .subs()
            .iter()
            .map(|s| (s.con_id as u32, s.kind_name()))
            .collect();
        let want: BTreeSet<u32> = CONS
            .iter()
            .copied()
            .chain(self.held.iter().map(|h| h.1))
            .collect();
        let cons: BTreeSet<u32> = have.iter().map(|h| h.0).collect();
        if have.len() != want.len() || cons != want {
            return Err(format!("gateway subscriptions {have:?}, wanted {want:?}"));
        }
        if self.ticks_published == 0 {
            return Err("no tick was published".into());
        }
        Ok(())
    }
}

/// Runs one seed (with its own or a given fault list): the error and the world's stats.
fn run(seed: u64, faults: Option<Vec<(u64, Fault)>>) -> (Result<(), String>, World) {
    let mut w = World::new(seed, faults);
    let mut res = Ok(());
    while w.now < RUN_END {
        if let Err(e) = w.step() {
            res = Err(format!("t={} ms: {e}", w.now / MS));
            break;
        }
        if w.steps > 5_000_000 {
            res = Err("no progress (step limit)".into());
            break;
        }
    }
    if res.is_ok() {
        res = w.converged();
    }
    (res, w)
}

/// The smallest fault list (dropping one fault at a time) that still fails.
fn shrink(seed: u64, mut faults: Vec<(u64, Fault)>) -> Vec<(u64, Fault)> {
    let mut i = 0;
    while i < faults.len() {
        let mut fewer = faults.clone();
        fewer.remove(i);
        if run(seed, Some(fewer.clone())).0.is_err() {
            faults = fewer;
        } else {
            i += 1;
        }
    }
    faults
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn seeds_hold_every_invariant() {
    let seeds: Vec<u64> = match env_u64("DST_SEED") {
        Some(s) => vec![s],
        None => (0..env_u64("DST_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    };
    let started = std::time::Instant::now();
    let (mut faults, mut ticks) = (0usize, 0u64);
    for &seed in &seeds {
        let (res, w) = run(seed, None);
        faults += w.faults.len();
        ticks += w.ticks_published;
        if let Err(e) = res {
            let shrunk = shrink(seed, w.faults.clone());
            panic!(
                "seed {seed} failed: {e}\nreplay: DST_SEED={seed} cargo test --test dst\nshrunk faults: {shrunk:?}",
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "dst: {} seeds in {secs:.1} s ({:.0}/min), {:.1} faults a seed, {ticks} ticks checked",
        seeds.len(),
        seeds.len() as f64 * 60.0 / secs.max(1e-9),
        faults as f64 / seeds.len() as f64,
    );
}

#[test]
fn a_seed_replays_exactly() {
    let (a, wa) = run(3, None);
    let (b, wb) = run(3, None);
    assert_eq!(a, b);
    assert_eq!(
        (wa.steps, wa.ticks_published),
        (wb.steps, wb.ticks_published)
    );
    assert!(wa.ticks_published > 0);
    // Every record, system records and their time stamps included, byte for byte: the
    // publisher stamps with the session's clock, not the machine's.
    assert_eq!(wa.digest, wb.digest);
}

/// Regression seeds: each found a real defect (docs/RELIABILITY.md).
#[test]
fn regression_seeds_pass() {
    // The engine's 15-second window counted from its send, so a request sent exactly 15 s
    // after the last reached the gateway 14.999 s after it (network jitter): seed 2, and its
    // shrunk fault list (a host sleep, then a drop), both failed before the fix.
    let (res, _) = run(2, None);
    assert_eq!(res, Ok(()), "DST_SEED=2 cargo test --test dst");
    let shrunk = vec![
        (105_881_811_196, Fault::Sleep { ms: 3_461_997 }),
        (108_573_961_669, Fault::Drop),
    ];
    let (res, _) = run(2, Some(shrunk));
    assert_eq!(res, Ok(()), "seed 2 with its shrunk faults");
}
