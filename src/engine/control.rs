//! The engine's control protocol: line-delimited JSON over a Unix socket, sans-IO.
//!
//! The engine's loop owns the sockets; this module turns bytes into typed requests and
//! replies into bytes, with every bound a hostile or broken client could push on: a
//! maximum line length, a request-rate budget, a maximum of unsent reply bytes. A client
//! that breaks one of them is told why and disconnected; nothing it does can stall the loop.
//!
//! Requests (one JSON object per line; `id` is echoed in the reply):
//! ```text
//! {"id":1,"op":"ping"}
//! {"id":2,"op":"subscribe","client":"web","con_id":711280073,"kind":"bid_ask"}
//! {"id":8,"op":"subscribe","client":"web","symbol":"AAPL","sec_type":"STK","exchange":"SMART","currency":"USD","kind":"last"}
//! {"id":3,"op":"unsubscribe","client":"web","con_id":711280073,"kind":"bid_ask"}
//! {"id":4,"op":"list"}
//! {"id":5,"op":"status"}
//! {"id":6,"op":"lookup","symbol":"AAPL","sec_type":"STK","exchange":"SMART","currency":"USD"}
//! {"id":7,"op":"lookup","con_id":265598}
//! {"id":9,"op":"shutdown"}
//! ```
//! `shutdown` stops the engine as SIGTERM does: every subscription is cancelled at IB, then
//! the engine closes and exits.
//! A tick-by-tick subscription IB refused with 10190 (its cap, or its 15-second rule) is
//! retried while held: `list`, and a `subscribe` joining it, show it as
//! `"state":"retrying"` with `ib_code`, `refusals` and `next_attempt_ns` (Unix ns).
//! Replies: `{"id":1,"ok":true,...}` or
//! `{"id":1,"ok":false,"error":{"code":"bad_request","message":"..."}}`.

use serde::{Deserialize, Serialize};

use super::subs::{SubKey, SubKind};

/// Longest request line accepted.
pub const MAX_LINE: usize = 16 * 1024;
/// Most unsent reply bytes kept for one client before it is dropped as not reading.
pub const MAX_PENDING_OUT: usize = 1 << 20;
/// Requests per second one client may send.
pub const MAX_REQUESTS_PER_SEC: u32 = 200;
/// Malformed requests tolerated before the client is dropped.
pub const MAX_BAD_REQUESTS: u32 = 8;

/// A contract named by conId or by its description.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
pub struct ContractQuery {
    /// IB conId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub con_id: Option<u32>,
    /// Symbol, e.g. `AAPL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    /// STK, FUT, CASH, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sec_type: Option<String>,
    /// Exchange (SMART, CME, IDEALPRO, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// Currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// One parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlRequest {
    /// Liveness check.
    Ping,
    /// Hold a subscription for `client`.
    Subscribe {
        /// The holder's identity (reference counts are per identity).
        client: String,
        /// What to subscribe.
        key: SubKey,
    },
    /// Hold a subscription for `client` to a contract named by its description; the
    /// engine resolves it with reqContractDetails first (exactly one match is required).
    SubscribeContract {
        /// The holder's identity.
        client: String,
        /// The contract's description (symbol, sec_type, exchange, currency).
        query: ContractQuery,
        /// What to subscribe.
        kind: SubKind,
    },
    /// Release a subscription held by `client`.
    Unsubscribe {
        /// The holder's identity.
        client: String,
        /// What to release.
        key: SubKey,
    },
    /// Every subscription and its state.
    List,
    /// The engine's state.
    Status,
    /// Contract details, relayed to IB.
    Lookup(ContractQuery),
    /// Stop the engine cleanly (as SIGTERM does).
    Shutdown,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Wire {
    #[serde(default)]
    id: Option<serde_json::Value>,
    op: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    con_id: Option<u32>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    symbol: Option<String>,
    #[serde(default)]
    sec_type: Option<String>,
    #[serde(default)]
    exchange: Option<String>,
    #[serde(default)]
    currency: Option<String>,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// The request's `id`, when it could be read.
    pub id: Option<serde_json::Value>,
    /// Machine-readable code (`bad_request`, `unknown_op`, ...).
    pub code: &'static str,
    /// What is wrong, for a person.
    pub message: String,
}

fn bad(id: &Option<serde_json::Value>, code: &'static str, message: String) -> RequestError {
    RequestError {
        id: id.clone(),
        code,
        message,
    }
}

/// Parses one request line. The `id` (any JSON value) is returned for the reply.
pub fn parse_request(
    line: &[u8],
) -> Result<(Option<serde_json::Value>, ControlRequest), RequestError> {
    let wire: Wire = serde_json::from_slice(line).map_err(|e| RequestError {
        id: None,
        code: "bad_json",
        message: format!("not a request object: {e}"),
    })?;
    let id = wire.id.clone();
    let client = |w: &Wire| -> Result<String, RequestError> {
        match &w.client {
            Some(c) if !c.is_empty() && c.len() <= 128 => Ok(c.clone()),
            Some(_) => Err(bad(
                &id,
                "bad_request",
                "`client` must be 1..=128 characters".into(),
            )),
            None => Err(bad(&id, "bad_request", "`client` is required".into())),
        }
    };
    let key = |w: &Wire| -> Result<SubKey, RequestError> {
        let con_id = w.con_id.filter(|&c| c > 0).ok_or_else(|| {
            bad(
                &id,
                "bad_request",
                "`con_id` (a positive integer) is required".into(),
            )
        })?;
        let kind_name = w
            .kind
            .as_deref()
            .ok_or_else(|| bad(&id, "bad_request", "`kind` is required".into()))?;
        let kind = SubKind::from_name(kind_name).ok_or_else(|| {
            bad(
                &id,
                "bad_request",
                format!(
                    "`kind` `{kind_name}` is not one of bid_ask, last, all_last, mid_point, mktdata"
                ),
            )
        })?;
        Ok(SubKey { con_id, kind })
    };
    let req = match wire.op.as_str() {
        "ping" => ControlRequest::Ping,
        "list" => ControlRequest::List,
        "status" => ControlRequest::Status,
        "shutdown" => ControlRequest::Shutdown,
        "subscribe" if wire.con_id.is_none() && wire.symbol.is_some() => {
            let client = client(&wire)?;
            // Reuse the conId path's kind check with a placeholder conId.
            let kind = key(&Wire {
                con_id: Some(1),
                ..wire.clone()
            })?
            .kind;
            ControlRequest::SubscribeContract {
                client,
                query: ContractQuery {
                    con_id: None,
                    symbol: wire.symbol.clone(),
                    sec_type: wire.sec_type.clone(),
                    exchange: wire.exchange.clone(),
                    currency: wire.currency.clone(),
                },
                kind,
            }
        }
        "subscribe" => ControlRequest::Subscribe {
            client: client(&wire)?,
            key: key(&wire)?,
        },
        "unsubscribe" => ControlRequest::Unsubscribe {
            client: client(&wire)?,
            key: key(&wire)?,
        },
        "lookup" => {
            let q = ContractQuery {
                con_id: wire.con_id,
                symbol: wire.symbol.clone(),
                sec_type: wire.sec_type.clone(),
                exchange: wire.exchange.clone(),
                currency: wire.currency.clone(),
            };
            if q.con_id.is_none() && q.symbol.as_deref().is_none_or(str::is_empty) {
                return Err(bad(
                    &id,
                    "bad_request",
                    "lookup needs `con_id` or `symbol`".into(),
                ));
            }
            ControlRequest::Lookup(q)
        }
        other => {
            return Err(bad(
                &id,
                "unknown_op",
                format!(
                    "unknown op `{other}` (ping, subscribe, unsubscribe, list, status, lookup, shutdown)"
                ),
            ));
        }
    };
    Ok((id, req))
}

/// Writes a success reply line: `{"id":..,"ok":true, <fields of body>}`.
pub fn ok_reply(id: &Option<serde_json::Value>, body: serde_json::Value, out: &mut Vec<u8>) {
    let mut obj = serde_json::Map::new();
    obj.insert("id".into(), id.clone().unwrap_or(serde_json::Value::Null));
    obj.insert("ok".into(), serde_json::Value::Bool(true));
    if let serde_json::Value::Object(fields) = body {
        obj.extend(fields);
    }
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &serde_json::Value::Object(obj));
    out.push(b'\n');
}

/// Writes an error reply line.
pub fn error_reply(e: &RequestError, out: &mut Vec<u8>) {
    let v = serde_json::json!({
        "id": e.id.clone().unwrap_or(serde_json::Value::Null),
        "ok": false,
        "error": {"code": e.code, "message": e.message},
    });
    let _ = serde_json::to_writer(&mut *out, &v);
    out.push(b'\n');
}

/// Writes the error reply of a request IB refused: code `ib_error`, IB's message and its
/// numeric code (`ib_code`), so that clients decide on the number, not on the text.
pub fn ib_error_reply(
    id: &Option<serde_json::Value>,
    ib_code: i32,
    message: &str,
    out: &mut Vec<u8>,
) {
    let v = serde_json::json!({
        "id": id.clone().unwrap_or(serde_json::Value::Null),
        "ok": false,
        "error": {
            "code": "ib_error",
            "message": format!("IB error {ib_code}: {message}"),
            "ib_code": ib_code,
        },
    });
    let _ = serde_json::to_writer(&mut *out, &v);
    out.push(b'\n');
}

/// Answers one request by appending its reply line to the buffer.
pub type Handler<'a> = dyn FnMut(Option<serde_json::Value>, ControlRequest, &mut Vec<u8>) + 'a;

/// What the loop must do with a client after feeding it bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep serving it.
    Keep,
    /// Flush what is queued (it says why), then close.
    Close(&'static str),
}

/// One control client's buffers and budgets; the loop feeds it bytes and drains its output.
#[derive(Debug)]
pub struct ControlConn {
    inbuf: Vec<u8>,
    out: Vec<u8>,
    window_start_ns: u64,
    in_window: u32,
    bad: u32,
    closing: Option<&'static str>,
}

impl Default for ControlConn {
    fn default() -> Self {
        ControlConn {
            inbuf: Vec::with_capacity(1024),
            out: Vec::new(),
            window_start_ns: 0,
            in_window: 0,
            bad: 0,
            closing: None,
        }
    }
}

impl ControlConn {
    /// Feeds bytes read from the socket; `handle` answers each well-formed request by
    /// appending its reply line. Returns whether to keep the client.
    pub fn feed(&mut self, bytes: &[u8], now_ns: u64, handle: &mut Handler<'_>) -> Verdict {
        if let Some(why) = self.closing {
            return Verdict::Close(why);
        }
        self.inbuf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(nl) = self.inbuf[start..].iter().position(|&b| b == b'\n') {
            let line_end = start + nl;
            let line = &self.inbuf[start..line_end];
            start = line_end + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if now_ns.saturating_sub(self.window_start_ns) >= 1_000_000_000 {
                self.window_start_ns = now_ns;
                self.in_window = 0;
            }
            self.in_window += 1;
            if self.in_window > MAX_REQUESTS_PER_SEC {
                return self.close(
                    "rate_limited",
                    format!("more than {MAX_REQUESTS_PER_SEC} requests per second"),
                );
            }
            if line.len() > MAX_LINE {
                return self.close(
                    "line_too_long",
                    format!("a request line over {MAX_LINE} bytes"),
                );
            }
            match parse_request(line) {
                Ok((id, req)) => handle(id, req, &mut self.out),
                Err(e) => {
                    error_reply(&e, &mut self.out);
                    self.bad += 1;
                    if self.bad >= MAX_BAD_REQUESTS {
                        return self.close(
                            "too_many_errors",
                            format!("{MAX_BAD_REQUESTS} malformed requests"),
                        );
                    }
                }
            }
        }
        self.inbuf.drain(..start);
        if self.inbuf.len() > MAX_LINE {
            return self.close(
                "line_too_long",
                format!("a request line over {MAX_LINE} bytes"),
            );
        }
        if self.out.len() > MAX_PENDING_OUT {
            // It does not read its replies: drop what is queued, keep only the reason.
            self.out.clear();
            return self.close("not_reading", "replies not read".into());
        }
        Verdict::Keep
    }

    fn close(&mut self, code: &'static str, message: String) -> Verdict {
        error_reply(
            &RequestError {
                id: None,
                code,
                message: format!("{message}; closing"),
            },
            &mut self.out,
        );
        self.closing = Some(code);
        Verdict::Close(code)
    }

    /// Appends an unsolicited line (an event pushed to the client) if the client keeps up.
    pub fn push_line(&mut self, line: &[u8]) -> Verdict {
        if self.out.len() + line.len() > MAX_PENDING_OUT {
            self.out.clear();
            return self.close("not_reading", "replies not read".into());
        }
        self.out.extend_from_slice(line);
        Verdict::Keep
    }

    /// Bytes waiting to be written.
    pub fn pending_out(&self) -> &[u8] {
        &self.out
    }

    /// `n` bytes were written to the socket.
    pub fn consume_out(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// The reason the client is being closed, once it is.
    pub fn closing(&self) -> Option<&'static str> {
        self.closing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn answer_all(
        conn: &mut ControlConn,
        input: &[u8],
        now: u64,
    ) -> (Verdict, Vec<serde_json::Value>) {
        let v = conn.feed(input, now, &mut |id, req, out| {
            ok_reply(&id, serde_json::json!({"echo": format!("{req:?}")}), out);
        });
        let lines = conn
            .pending_out()
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        (v, lines)
    }

    #[test]
    fn parses_every_op() {
        let (_, r) = parse_request(
            br#"{"id":2,"op":"subscribe","client":"web","con_id":711280073,"kind":"bid_ask"}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            ControlRequest::Subscribe {
                client: "web".into(),
                key: SubKey {
                    con_id: 711_280_073,
                    kind: SubKind::BidAsk
                }
            }
        );
        let (id, r) =
            parse_request(br#"{"id":"x","op":"lookup","symbol":"AAPL","sec_type":"STK"}"#).unwrap();
        assert_eq!(id, Some(serde_json::json!("x")));
        assert!(matches!(r, ControlRequest::Lookup(q) if q.symbol.as_deref() == Some("AAPL")));
        assert_eq!(
            parse_request(br#"{"op":"ping"}"#).unwrap().1,
            ControlRequest::Ping
        );
        assert_eq!(
            parse_request(br#"{"id":9,"op":"shutdown"}"#).unwrap().1,
            ControlRequest::Shutdown
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases: [(&[u8], &str, &str); 6] = [
            (b"{not json", "bad_json", "not a request object"),
            (br#"{"op":"fly"}"#, "unknown_op", "unknown op `fly`"),
            (
                br#"{"op":"subscribe","client":"a","con_id":1,"kind":"trades"}"#,
                "bad_request",
                "`kind` `trades`",
            ),
            (
                br#"{"op":"subscribe","client":"a","kind":"last"}"#,
                "bad_request",
                "`con_id`",
            ),
            (
                br#"{"op":"subscribe","con_id":1,"kind":"last"}"#,
                "bad_request",
                "`client` is required",
            ),
            (br#"{"op":"ping","extra":1}"#, "bad_json", "unknown field"),
        ];
        for (line, code, text) in cases {
            let e = parse_request(line).unwrap_err();
            assert_eq!(e.code, code, "{}", String::from_utf8_lossy(line));
            assert!(
                e.message.contains(text),
                "{} -> {}",
                String::from_utf8_lossy(line),
                e.message
            );
        }
    }

    #[test]
    fn partial_lines_wait_for_their_newline() {
        let mut c = ControlConn::default();
        let (v, lines) = answer_all(&mut c, br#"{"id":1,"op":"pi"#, 0);
        assert_eq!((v, lines.len()), (Verdict::Keep, 0));
        let (v, lines) = answer_all(&mut c, b"ng\"}\n\n", 0);
        assert_eq!(v, Verdict::Keep);
        assert_eq!(lines[0]["id"], 1);
        assert_eq!(lines[0]["ok"], true);
    }

    #[test]
    fn garbage_and_floods_are_disconnected_with_a_reason() {
        let mut c = ControlConn::default();
        let junk = b"junk\n".repeat(MAX_BAD_REQUESTS as usize);
        let (v, lines) = answer_all(&mut c, &junk, 0);
        assert_eq!(v, Verdict::Close("too_many_errors"));
        assert_eq!(lines.last().unwrap()["error"]["code"], "too_many_errors");

        let mut c = ControlConn::default();
        let flood = b"{\"op\":\"ping\"}\n".repeat(MAX_REQUESTS_PER_SEC as usize + 1);
        assert_eq!(
            answer_all(&mut c, &flood, 5).0,
            Verdict::Close("rate_limited")
        );

        let mut c = ControlConn::default();
        let long = vec![b'x'; MAX_LINE + 2];
        assert_eq!(
            answer_all(&mut c, &long, 0).0,
            Verdict::Close("line_too_long")
        );

        // A client that never reads its replies is dropped once they pile up.
        let mut c = ControlConn::default();
        let mut verdict = Verdict::Keep;
        for i in 0..100_000u64 {
            verdict = c.feed(
                b"{\"op\":\"ping\"}\n",
                i * 1_000_000_000,
                &mut |id, _, out| ok_reply(&id, serde_json::json!({"pad": "x".repeat(100)}), out),
            );
            if verdict != Verdict::Keep {
                break;
            }
        }
        assert_eq!(verdict, Verdict::Close("not_reading"));
        assert!(c.pending_out().len() < 1024);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_output_stays_bounded(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..40)
        ) {
            let mut c = ControlConn::default();
            for (i, ch) in chunks.iter().enumerate() {
                let _ = c.feed(ch, i as u64, &mut |id, _, out| ok_reply(&id, serde_json::json!({}), out));
                prop_assert!(c.pending_out().len() <= MAX_PENDING_OUT + 1024);
            }
        }
    }
}
