//! Shared by the tws-sim integration tests: start the real binary, talk to it as a client
//! through the codec's client side, and run control commands.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ib_stream::tws::{ClientHandshake, ClientMsg, Contract, FrameReader, ServerMsg};

pub const SIM: &str = env!("CARGO_BIN_EXE_tws-sim");
/// Every wait in these tests ends by itself.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running tws-sim, killed when dropped.
pub struct Sim {
    child: Child,
    pub addr: String,
    pub control: Option<String>,
}

impl Sim {
    /// Starts `tws-sim --port 0 <args>` and reads its address lines.
    pub fn start(args: &[&str]) -> Sim {
        Sim::spawn(&[], args)
    }

    /// Starts `tws-sim replay --port 0 --speed asap --file <file>`.
    pub fn replay(file: &str) -> Sim {
        Sim::spawn(&["replay"], &["--speed", "asap", "--file", file])
    }

    fn spawn(sub: &[&str], args: &[&str]) -> Sim {
        let mut child = Command::new(SIM)
            .args(sub)
            .args(["--port", "0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tws-sim");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("first line");
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .expect("listening line")
            .to_owned();
        let control = if args.contains(&"--control-port") {
            line.clear();
            out.read_line(&mut line).expect("second line");
            Some(
                line.trim()
                    .strip_prefix("control ")
                    .expect("control line")
                    .to_owned(),
            )
        } else {
            None
        };
        Sim {
            child,
            addr,
            control,
        }
    }

    /// Runs one control command and returns its JSON answer.
    pub fn control(&self, cmd: &str) -> serde_json::Value {
        let addr = self.control.as_ref().expect("started with --control-port");
        let mut s = TcpStream::connect(addr).expect("control connect");
        s.set_read_timeout(Some(WAIT)).unwrap();
        writeln!(s, "{cmd}").unwrap();
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .expect("control answer");
        serde_json::from_str(&line).expect("control answer is JSON")
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `tws-sim expected` prints.
pub fn expected(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(SIM)
        .arg("expected")
        .args(args)
        .output()
        .expect("run expected");
    assert!(
        out.status.success(),
        "expected failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// A test client speaking through the codec.
pub struct Client {
    pub stream: TcpStream,
    pub version: u32,
    pub time: String,
    /// `startApi`, encoded by the handshake and not yet sent ([`Client::start_api`]).
    pub start: Vec<u8>,
    reader: FrameReader,
}

/// How a read ended when it did not yield a message.
#[derive(Debug)]
pub enum ReadEnd {
    Closed,
    TimedOut,
    Broken(String),
}

impl Client {
    /// Connects and does the handshake only (`tws::ClientHandshake`); its `startApi` for
    /// `client_id` waits in [`Client::start`].
    pub fn handshake(
        addr: &str,
        min: u32,
        max: u32,
        options: &str,
        client_id: i32,
    ) -> Result<Client, ReadEnd> {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        let mut hs = ClientHandshake::offering(client_id, min, max, options);
        let mut out = Vec::new();
        hs.start(&mut out);
        stream.write_all(&out).unwrap();
        out.clear();
        let mut reader = FrameReader::new();
        let deadline = Instant::now() + WAIT;
        loop {
            match hs.poll_ack(&mut reader, &mut out) {
                Ok(Some(ack)) => {
                    return Ok(Client {
                        stream,
                        version: ack.version,
                        time: ack.time,
                        start: out,
                        reader,
                    });
                }
                Ok(None) => {}
                Err(e) => return Err(ReadEnd::Broken(e.to_string())),
            }
            stream
                .set_read_timeout(Some(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1)),
                ))
                .unwrap();
            match stream.read(reader.spare(4096)) {
                Ok(0) => return Err(ReadEnd::Closed),
                Ok(n) => reader.commit(n),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(ReadEnd::TimedOut);
                }
                Err(e) => return Err(ReadEnd::Broken(e.to_string())),
            }
        }
    }

    /// Sends the handshake's `startApi`.
    pub fn start_api(&mut self) {
        let start = std::mem::take(&mut self.start);
        self.stream.write_all(&start).expect("send startApi");
    }

    /// Handshake + START_API.
    pub fn connect(addr: &str, min: u32, max: u32, client_id: i32) -> Client {
        let mut c = Client::handshake(addr, min, max, "", client_id).expect("handshake");
        c.start_api();
        c
    }

    /// Connects and reads the welcome (managedAccounts, nextValidId, 3 farm notices).
    pub fn ready(addr: &str, min: u32, max: u32, client_id: i32) -> Client {
        let mut c = Client::connect(addr, min, max, client_id);
        for _ in 0..5 {
            c.recv().expect("welcome message");
        }
        c
    }

    pub fn send(&mut self, msg: &ClientMsg) {
        let mut out = Vec::new();
        msg.encode(self.version, &mut out).expect("encode");
        self.stream.write_all(&out).expect("send");
    }

    /// The next message, or why none came within the wait.
    pub fn recv_within(&mut self, wait: Duration) -> Result<ServerMsg, ReadEnd> {
        let deadline = Instant::now() + wait;
        loop {
            match self.reader.next_frame(self.version) {
                Ok(Some(frame)) => {
                    return ServerMsg::decode(&frame, self.version)
                        .map_err(|e| ReadEnd::Broken(e.to_string()));
                }
                Ok(None) => {}
                Err(e) => return Err(ReadEnd::Broken(e.to_string())),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadEnd::TimedOut);
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let spare = self.reader.spare(64 * 1024);
            match self.stream.read(spare) {
                Ok(0) => return Err(ReadEnd::Closed),
                Ok(n) => self.reader.commit(n),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(ReadEnd::TimedOut);
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err(ReadEnd::Closed),
                Err(e) => return Err(ReadEnd::Broken(e.to_string())),
            }
        }
    }

    pub fn recv(&mut self) -> Result<ServerMsg, ReadEnd> {
        self.recv_within(WAIT)
    }

    /// The next message that `keep` accepts, skipping others (e.g. ticks of other requests).
    pub fn recv_matching(&mut self, mut keep: impl FnMut(&ServerMsg) -> bool) -> ServerMsg {
        loop {
            let m = self.recv().expect("message");
            if keep(&m) {
                return m;
            }
        }
    }

    /// The next error message (skips everything else).
    pub fn next_error(&mut self) -> (i32, i32, String) {
        match self.recv_matching(|m| matches!(m, ServerMsg::Error { .. })) {
            ServerMsg::Error {
                req_id,
                code,
                message,
                ..
            } => (req_id, code, message),
            _ => unreachable!(),
        }
    }
}

/// A contract by conId only: enough for reqContractDetails, not for a data request (a real
/// gateway answers 321 "Please enter exchange").
pub fn by_con_id(con_id: i32) -> Contract {
    Contract {
        con_id,
        ..Contract::default()
    }
}

/// The exchange of a built-in instrument (SMART for the stocks, whatever else).
pub fn exchange_of(con_id: i32) -> &'static str {
    match con_id {
        711280073 | 495512563 | 563947738 => "CME",
        212921504 => "NYMEX",
        12087792 | 12087797 | 15016059 => "IDEALPRO",
        _ => "SMART",
    }
}

/// A contract for a data request, as a real client sends it: conId and exchange.
pub fn for_data(con_id: i32) -> Contract {
    Contract {
        con_id,
        exchange: exchange_of(con_id).into(),
        ..Contract::default()
    }
}

/// A contract by description.
pub fn by_symbol(symbol: &str, sec_type: &str, exchange: &str, currency: &str) -> Contract {
    Contract {
        symbol: symbol.into(),
        sec_type: sec_type.into(),
        exchange: exchange.into(),
        currency: currency.into(),
        ..Contract::default()
    }
}

pub fn req_tbt(req_id: i32, con_id: i32, kind: &str) -> ClientMsg {
    ClientMsg::ReqTickByTick {
        req_id,
        contract: for_data(con_id),
        tick_type: kind.into(),
        number_of_ticks: 0,
        ignore_size: false,
    }
}

pub fn req_mkt(req_id: i32, con_id: i32) -> ClientMsg {
    ClientMsg::ReqMktData {
        req_id,
        contract: for_data(con_id),
        generic_tick_list: String::new(),
        snapshot: false,
        regulatory_snapshot: false,
    }
}

/// A decoded tick-by-tick message in the shape `tws-sim expected` prints.
pub fn tbt_json(msg: &ServerMsg) -> Option<(i32, serde_json::Value)> {
    use ib_stream::tws::TickByTickData as D;
    use ib_stream::tws::decimal::fixed_to_string as s;
    let ServerMsg::TickByTick { req_id, data, .. } = msg else {
        return None;
    };
    let v = match data {
        D::Last(t) | D::AllLast(t) => serde_json::json!({
            "price": s(t.price, 9), "size": s(t.size, 8), "exchange": t.exchange,
            "conditions": t.special_conditions, "past_limit": t.past_limit, "unreported": t.unreported,
        }),
        D::BidAsk(q) => serde_json::json!({
            "bid_price": s(q.bid_price, 9), "ask_price": s(q.ask_price, 9),
            "bid_size": s(q.bid_size, 8), "ask_size": s(q.ask_size, 8),
            "bid_past_low": q.bid_past_low, "ask_past_high": q.ask_past_high,
        }),
        D::MidPoint(p) => serde_json::json!({ "mid_point": s(*p, 9) }),
    };
    Some((*req_id, v))
}

/// A decoded L1 message in the shape `tws-sim expected --tick-type mktdata` prints.
pub fn l1_json(msg: &ServerMsg) -> Option<(i32, serde_json::Value)> {
    use ib_stream::tws::decimal::fixed_to_string as s;
    Some(match msg {
        ServerMsg::TickPrice {
            req_id,
            tick_type,
            price,
            size,
            attr_mask,
        } => (
            *req_id,
            serde_json::json!({"msg": "tickPrice", "tick_type": tick_type, "price": s(*price, 9), "size": s(*size, 8), "attr": attr_mask}),
        ),
        ServerMsg::TickSize {
            req_id,
            tick_type,
            size,
        } => (
            *req_id,
            serde_json::json!({"msg": "tickSize", "tick_type": tick_type, "size": s(*size, 8)}),
        ),
        ServerMsg::TickString {
            req_id,
            tick_type,
            value,
        } => (
            *req_id,
            serde_json::json!({"msg": "tickString", "tick_type": tick_type, "value": value}),
        ),
        ServerMsg::TickGeneric {
            req_id,
            tick_type,
            value,
        } => {
            // The generic value is a double on the wire; compare it as one.
            let v = ib_stream::tws::decimal::f64_to_fixed(*value, 9)
                .map(|f| s(f, 9))
                .unwrap_or_default();
            (
                *req_id,
                serde_json::json!({"msg": "tickGeneric", "tick_type": tick_type, "value": v}),
            )
        }
        _ => return None,
    })
}

/// Collects `n` tick-by-tick ticks of `req_id` as JSON.
pub fn collect_tbt(c: &mut Client, req_id: i32, n: usize) -> Vec<serde_json::Value> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let m = c.recv().expect("tick");
        if let Some((r, v)) = tbt_json(&m) {
            if r == req_id {
                got.push(v);
            }
        } else if let ServerMsg::Error { code, message, .. } = &m
            && !(2100..2200).contains(code)
        {
            panic!("error {code} {message} while collecting ticks");
        }
    }
    got
}
