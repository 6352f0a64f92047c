//! The compact tick JSON: one encoder for stored JSON Lines and for the web API, so a stored
//! line and a streamed tick are the same bytes.
//!
//! It keeps the original IB-Stream v3 short keys (`ts`, `st`, `cid`, `tt`, `bp`, `bs`, `ap`,
//! `as`, `p`, `s`, `mp`, flags only when true) and adds what the original lost: `seq`, the
//! exchange (`x`) and trade conditions (`c`) of trades, `pl` (past limit), `all_last` kept apart
//! from `last`, delayed/frozen marks and the L1 and system kinds. The full key table is in
//! `docs/STORAGE.md`.
//!
//! Times are integers in microseconds since the Unix epoch, as the original wrote them and as
//! JavaScript reads them exactly (nanoseconds would not fit a double). The engine's receive
//! time is kept to the nanosecond in the ring and in the binary format; JSON carries it to
//! the microsecond, which keeps a line no larger than the original's. Prices and sizes are
//! exact decimals written from the fixed-point values.
//!
//! Encoding appends to a caller's buffer and allocates nothing once the buffer has grown.

use crate::tws::decimal;
use ib_stream_ipc::{
    ConnState, GapReason, PRICE_SCALE, Record, RecordKind, SIZE_SCALE, SubState, UNDEF_I64, flags,
};

/// Resolves interned string ids (the ring's string table, or a file's).
pub trait StringLookup {
    /// The bytes of `id`, or `None` when the id is unknown.
    fn lookup(&self, id: u32) -> Option<&[u8]>;
}

/// Interns strings while decoding (the reverse of [`StringLookup`]).
pub trait StringIntern {
    /// The id of `s`, adding it when new.
    fn intern(&mut self, s: &[u8]) -> u32;
}

/// A lookup that knows no strings (id 0 is the empty string; others print as `#<id>`).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoStrings;

impl StringLookup for NoStrings {
    fn lookup(&self, id: u32) -> Option<&[u8]> {
        (id == 0).then_some(&[][..])
    }
}

/// A simple growable string table for tools, tests and decoding (not shared memory).
#[derive(Debug, Clone)]
pub struct LocalStrings {
    strings: Vec<Vec<u8>>,
    index: std::collections::HashMap<Vec<u8>, u32>,
}

impl Default for LocalStrings {
    fn default() -> Self {
        LocalStrings {
            strings: vec![Vec::new()],
            index: std::collections::HashMap::from([(Vec::new(), 0)]),
        }
    }
}

impl StringLookup for LocalStrings {
    fn lookup(&self, id: u32) -> Option<&[u8]> {
        self.strings.get(id as usize).map(Vec::as_slice)
    }
}

impl StringIntern for LocalStrings {
    fn intern(&mut self, s: &[u8]) -> u32 {
        if let Some(&id) = self.index.get(s) {
            return id;
        }
        let id = self.strings.len() as u32;
        self.strings.push(s.to_vec());
        self.index.insert(s.to_vec(), id);
        id
    }
}

/// Writes `v` (fixed point at `scale`, a power of ten) as the shortest exact decimal
/// (`189.25`, `-0.5`, `3`); the same formatter the TWS text encoder uses.
pub fn write_fixed(out: &mut Vec<u8>, v: i64, scale: i64) {
    decimal::write_fixed(out, v, scale.ilog10());
}

/// Parses an exact decimal into fixed point; `None` when it has more fractional digits than
/// the scale holds (not exact), is malformed, or overflows.
pub fn parse_fixed(s: &str, scale: i64) -> Option<i64> {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut width = 0usize;
    let mut sc = scale;
    while sc > 1 {
        sc /= 10;
        width += 1;
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > width {
        return None;
    }
    // i128 so that i64::MIN, whose magnitude i64 cannot hold, parses too.
    let int_v: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut frac_v: i128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    for _ in frac.len()..width {
        frac_v *= 10;
    }
    let v = int_v.checked_mul(i128::from(scale))?.checked_add(frac_v)?;
    i64::try_from(if neg { -v } else { v }).ok()
}

fn key(out: &mut Vec<u8>, k: &str) {
    out.push(b',');
    out.push(b'"');
    out.extend_from_slice(k.as_bytes());
    out.extend_from_slice(b"\":");
}

fn int_field(out: &mut Vec<u8>, k: &str, v: i64) {
    key(out, k);
    decimal::write_i64(out, v);
}

fn fixed_field(out: &mut Vec<u8>, k: &str, v: i64, scale: i64) {
    if v != UNDEF_I64 {
        key(out, k);
        write_fixed(out, v, scale);
    }
}

fn flag_field(out: &mut Vec<u8>, k: &str, on: bool) {
    if on {
        key(out, k);
        out.extend_from_slice(b"true");
    }
}

fn str_field(out: &mut Vec<u8>, k: &str, bytes: &[u8]) {
    key(out, k);
    write_json_str(out, bytes);
}

/// Writes bytes as a JSON string (escaped; invalid UTF-8 becomes U+FFFD).
pub fn write_json_str(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                c if (c as u32) < 0x20 => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    let v = c as usize;
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[v >> 4]);
                    out.push(HEX[v & 15]);
                }
                c => {
                    let mut b = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{FFFD}".as_bytes());
        }
    }
    out.push(b'"');
}

fn string_id_field(out: &mut Vec<u8>, k: &str, id: u32, strings: &dyn StringLookup) {
    if id == 0 {
        return;
    }
    match strings.lookup(id) {
        Some(b) => str_field(out, k, b),
        None => {
            // An id the table does not hold (table lost or from another epoch): say so
            // rather than inventing a value.
            key(out, k);
            out.extend_from_slice(b"\"#");
            decimal::write_u64(out, u64::from(id));
            out.push(b'"');
        }
    }
}

fn ns_to_us(ns: i64) -> (i64, i64) {
    (ns.div_euclid(1000), ns.rem_euclid(1000))
}

/// The name of a gap reason in JSON.
pub fn gap_reason_name(r: u8) -> &'static str {
    match GapReason::from_u8(r) {
        Some(GapReason::Disconnected) => "disconnected",
        Some(GapReason::IbConnectivity) => "ib_connectivity",
        Some(GapReason::ReaderOverrun) => "reader_overrun",
        Some(GapReason::WriteError) => "write_error",
        Some(GapReason::WriterRestart) => "writer_restart",
        None => "unknown",
    }
}

/// The name of a connection state in JSON.
pub fn conn_state_name(s: u8) -> &'static str {
    match ConnState::from_u8(s) {
        Some(ConnState::Disconnected) => "disconnected",
        Some(ConnState::Connecting) => "connecting",
        Some(ConnState::Connected) => "connected",
        Some(ConnState::IbLost) => "ib_lost",
        Some(ConnState::Backoff) => "backoff",
        None => "unknown",
    }
}

/// The name of a subscription state in JSON.
pub fn sub_state_name(s: u8) -> &'static str {
    match SubState::from_u8(s) {
        Some(SubState::Queued) => "queued",
        Some(SubState::Requested) => "requested",
        Some(SubState::Active) => "active",
        Some(SubState::Rejected) => "rejected",
        Some(SubState::Cancelled) => "cancelled",
        Some(SubState::Silent) => "silent",
        Some(SubState::Delayed) => "delayed",
        None => "unknown",
    }
}

/// Appends one record as a JSON object (no newline). Unknown kinds are written with their
/// raw body so nothing is lost.
pub fn encode(rec: &Record, strings: &dyn StringLookup, out: &mut Vec<u8>) {
    let (st_us, _) = ns_to_us(rec.ts_recv);
    out.extend_from_slice(b"{\"seq\":");
    decimal::write_u64(out, rec.seq);
    int_field(out, "st", st_us);
    if rec.ts_event != UNDEF_I64 {
        let (ts_us, ts_rest) = ns_to_us(rec.ts_event);
        int_field(out, "ts", ts_us);
        if ts_rest != 0 {
            int_field(out, "tn", ts_rest);
        }
    }
    int_field(out, "cid", i64::from(rec.instrument_id));
    key(out, "tt");
    out.push(b'"');
    match rec.kind() {
        Some(k) => out.extend_from_slice(k.name().as_bytes()),
        None => {
            out.extend_from_slice(b"kind_");
            decimal::write_u64(out, u64::from(rec.kind));
        }
    }
    out.push(b'"');
    flag_field(out, "dl", rec.has_flag(flags::DELAYED));
    flag_field(out, "fz", rec.has_flag(flags::FROZEN));
    flag_field(out, "snap", rec.has_flag(flags::SNAPSHOT));
    flag_field(out, "stale", rec.has_flag(flags::STALE));
    flag_field(out, "backfill", rec.has_flag(flags::BACKFILL));
    let b = rec.body;
    match rec.kind() {
        Some(RecordKind::TbtLast | RecordKind::TbtAllLast) => {
            fixed_field(out, "p", b[0], PRICE_SCALE);
            fixed_field(out, "s", b[1], SIZE_SCALE);
            string_id_field(out, "x", b[2] as u32, strings);
            string_id_field(out, "c", (b[2] >> 32) as u32, strings);
            flag_field(out, "pl", rec.has_flag(flags::PAST_LIMIT));
            flag_field(out, "upt", rec.has_flag(flags::UNREPORTED));
        }
        Some(RecordKind::TbtBidAsk) => {
            fixed_field(out, "bp", b[0], PRICE_SCALE);
            fixed_field(out, "bs", b[2], SIZE_SCALE);
            fixed_field(out, "ap", b[1], PRICE_SCALE);
            fixed_field(out, "as", b[3], SIZE_SCALE);
            flag_field(out, "bpl", rec.has_flag(flags::BID_PAST_LOW));
            flag_field(out, "aph", rec.has_flag(flags::ASK_PAST_HIGH));
        }
        Some(RecordKind::TbtMidPoint) => fixed_field(out, "mp", b[0], PRICE_SCALE),
        Some(RecordKind::L1Price) => {
            int_field(out, "f", i64::from(rec.tick_type));
            fixed_field(out, "p", b[0], PRICE_SCALE);
            fixed_field(out, "s", b[1], SIZE_SCALE);
            flag_field(out, "cae", rec.has_flag(flags::CAN_AUTO_EXECUTE));
            flag_field(out, "pl", rec.has_flag(flags::L1_PAST_LIMIT));
            flag_field(out, "po", rec.has_flag(flags::PRE_OPEN));
        }
        Some(RecordKind::L1Size) => {
            int_field(out, "f", i64::from(rec.tick_type));
            fixed_field(out, "s", b[0], SIZE_SCALE);
        }
        Some(RecordKind::L1Generic) => {
            int_field(out, "f", i64::from(rec.tick_type));
            fixed_field(out, "v", b[0], PRICE_SCALE);
        }
        Some(RecordKind::L1String) => {
            int_field(out, "f", i64::from(rec.tick_type));
            match strings.lookup(b[0] as u32) {
                Some(s) => str_field(out, "v", s),
                None => string_id_field(out, "v", b[0] as u32, strings),
            }
        }
        Some(RecordKind::Gap) => {
            key(out, "r");
            write_json_str(out, gap_reason_name(rec.tick_type).as_bytes());
            int_field(out, "from", b[0]);
            int_field(out, "to", b[1]);
            int_field(out, "t0", b[2]);
            int_field(out, "t1", b[3]);
        }
        Some(RecordKind::Connection) => {
            key(out, "state");
            write_json_str(out, conn_state_name(rec.tick_type).as_bytes());
            int_field(out, "sv", b[0]);
            int_field(out, "clid", b[1]);
            if b[2] != 0 {
                int_field(out, "code", b[2]);
            }
        }
        Some(RecordKind::Subscription) => {
            key(out, "state");
            write_json_str(out, sub_state_name(rec.tick_type).as_bytes());
            key(out, "kind");
            let kind_name = u8::try_from(b[0])
                .ok()
                .and_then(RecordKind::from_u8)
                .map_or("unknown", RecordKind::name);
            write_json_str(out, kind_name.as_bytes());
            if b[1] != 0 {
                int_field(out, "code", b[1]);
            }
            int_field(out, "rid", b[2]);
            int_field(out, "mdt", b[3]);
        }
        Some(RecordKind::Heartbeat) => int_field(out, "n", b[0]),
        None => {
            int_field(out, "raw_tick_type", i64::from(rec.tick_type));
            int_field(out, "raw_flags", i64::from(rec.flags));
            key(out, "raw_body");
            out.push(b'[');
            for (i, v) in b.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                decimal::write_i64(out, *v);
            }
            out.push(b']');
        }
    }
    out.push(b'}');
}

/// Why a JSON line could not be turned back into a record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a flat JSON object of the shape [`encode`] writes.
    #[error("not a tick JSON object: {reason} at byte {at}")]
    Syntax {
        /// What is wrong.
        reason: &'static str,
        /// Byte offset in the line.
        at: usize,
    },
    /// A required key is missing or has the wrong type.
    #[error("key `{0}` is missing or not of the right type")]
    Field(&'static str),
    /// `tt` names no kind this version knows.
    #[error("unknown tick type `{0}`")]
    Kind(String),
    /// A decimal is not exact at the record's fixed-point scale.
    #[error("key `{0}`: not an exact decimal at the record's scale")]
    Decimal(&'static str),
}

/// A value of the flat objects [`encode`] writes. Numbers stay text so decimals stay exact.
#[derive(Debug, Clone, PartialEq)]
enum Val<'a> {
    Num(&'a str),
    Str(String),
    Bool(bool),
    Null,
    Arr(Vec<&'a str>),
}

/// A parser for exactly the JSON [`encode`] produces (and any reordering or whitespace of it):
/// one object of string keys to numbers, strings, booleans, null or arrays of numbers.
struct Flat<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Flat<'a> {
    fn err<T>(&self, reason: &'static str) -> Result<T, DecodeError> {
        Err(DecodeError::Syntax { reason, at: self.i })
    }

    fn ws(&mut self) {
        while self
            .s
            .as_bytes()
            .get(self.i)
            .is_some_and(u8::is_ascii_whitespace)
        {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), DecodeError> {
        self.ws();
        if self.s.as_bytes().get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            self.err("unexpected character")
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.as_bytes().get(self.i).copied()
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        self.eat(b'"')?;
        let mut out = String::new();
        loop {
            let rest = &self.s[self.i..];
            let Some(pos) = rest.find(['"', '\\']) else {
                return self.err("unterminated string");
            };
            out.push_str(&rest[..pos]);
            self.i += pos;
            if self.s.as_bytes()[self.i] == b'"' {
                self.i += 1;
                return Ok(out);
            }
            let esc = self.s.as_bytes().get(self.i + 1).copied();
            self.i += 2;
            match esc {
                Some(b'"') => out.push('"'),
                Some(b'\\') => out.push('\\'),
                Some(b'/') => out.push('/'),
                Some(b'n') => out.push('\n'),
                Some(b'r') => out.push('\r'),
                Some(b't') => out.push('\t'),
                Some(b'b') => out.push('\u{8}'),
                Some(b'f') => out.push('\u{c}'),
                Some(b'u') => {
                    let hex = self.s.get(self.i..self.i + 4);
                    let Some(cp) = hex.and_then(|h| u32::from_str_radix(h, 16).ok()) else {
                        return self.err("bad \\u escape");
                    };
                    self.i += 4;
                    // Surrogates never come from our encoder; map them to U+FFFD.
                    out.push(char::from_u32(cp).unwrap_or('\u{FFFD}'));
                }
                _ => return self.err("bad escape"),
            }
        }
    }

    fn number(&mut self) -> Result<&'a str, DecodeError> {
        self.ws();
        let start = self.i;
        let b = self.s.as_bytes();
        while self.i < b.len()
            && matches!(b[self.i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
        {
            self.i += 1;
        }
        if start == self.i {
            return self.err("expected a value");
        }
        Ok(&self.s[start..self.i])
    }

    fn value(&mut self) -> Result<Val<'a>, DecodeError> {
        match self.peek() {
            Some(b'"') => Ok(Val::Str(self.string()?)),
            Some(b't') if self.s[self.i..].starts_with("true") => {
                self.i += 4;
                Ok(Val::Bool(true))
            }
            Some(b'f') if self.s[self.i..].starts_with("false") => {
                self.i += 5;
                Ok(Val::Bool(false))
            }
            Some(b'n') if self.s[self.i..].starts_with("null") => {
                self.i += 4;
                Ok(Val::Null)
            }
            Some(b'[') => {
                self.i += 1;
                let mut v = Vec::new();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Val::Arr(v));
                }
                loop {
                    v.push(self.number()?);
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Val::Arr(v));
                        }
                        _ => return self.err("expected , or ] in array"),
                    }
                }
            }
            _ => Ok(Val::Num(self.number()?)),
        }
    }

    fn object(line: &'a str) -> Result<Vec<(String, Val<'a>)>, DecodeError> {
        let mut p = Flat { s: line, i: 0 };
        p.eat(b'{')?;
        let mut out = Vec::with_capacity(16);
        if p.peek() == Some(b'}') {
            p.i += 1;
        } else {
            loop {
                let k = p.string()?;
                p.eat(b':')?;
                let v = p.value()?;
                out.push((k, v));
                match p.peek() {
                    Some(b',') => p.i += 1,
                    Some(b'}') => {
                        p.i += 1;
                        break;
                    }
                    _ => return p.err("expected , or } in object"),
                }
            }
        }
        if p.peek().is_some() {
            return p.err("trailing characters");
        }
        Ok(out)
    }
}

/// Parses one line written by [`encode`] back into the record it came from.
pub fn decode(line: &[u8], strings: &mut dyn StringIntern) -> Result<Record, DecodeError> {
    let text = std::str::from_utf8(line).map_err(|e| DecodeError::Syntax {
        reason: "not UTF-8",
        at: e.valid_up_to(),
    })?;
    let obj = Flat::object(text)?;
    let get = |k: &str| obj.iter().find(|(name, _)| name == k).map(|(_, v)| v);
    let opt_int = |k: &'static str| -> Result<Option<i64>, DecodeError> {
        match get(k) {
            None => Ok(None),
            Some(Val::Num(n)) => n.parse().map(Some).map_err(|_| DecodeError::Field(k)),
            Some(_) => Err(DecodeError::Field(k)),
        }
    };
    let int = |k: &'static str| opt_int(k)?.ok_or(DecodeError::Field(k));
    let flag = |k: &str| matches!(get(k), Some(Val::Bool(true)));
    let fixed = |k: &'static str, scale: i64| -> Result<i64, DecodeError> {
        match get(k) {
            None | Some(Val::Null) => Ok(UNDEF_I64),
            Some(Val::Num(n)) => parse_fixed(n, scale).ok_or(DecodeError::Decimal(k)),
            Some(_) => Err(DecodeError::Field(k)),
        }
    };
    let text_of = |k: &'static str| match get(k) {
        Some(Val::Str(s)) => Some(s.as_str()),
        _ => None,
    };
    let tt = text_of("tt").ok_or(DecodeError::Field("tt"))?;
    let kind = RecordKind::from_name(tt).ok_or_else(|| DecodeError::Kind(tt.to_string()))?;
    let seq = match get("seq") {
        Some(Val::Num(n)) => n.parse::<u64>().map_err(|_| DecodeError::Field("seq"))?,
        _ => return Err(DecodeError::Field("seq")),
    };
    let mut rec = Record::new(kind);
    rec.seq = seq;
    rec.ts_recv = int("st")?
        .checked_mul(1000)
        // Lines written before `sn` was dropped may still carry the ns rest.
        .and_then(|v| v.checked_add(opt_int("sn").ok().flatten().unwrap_or(0)))
        .ok_or(DecodeError::Field("st"))?;
    if let Some(ts) = opt_int("ts")? {
        rec.ts_event = ts
            .checked_mul(1000)
            .and_then(|v| v.checked_add(opt_int("tn").ok().flatten().unwrap_or(0)))
            .ok_or(DecodeError::Field("ts"))?;
    }
    rec.instrument_id = u32::try_from(int("cid")?).map_err(|_| DecodeError::Field("cid"))?;
    let mut f = 0u16;
    for (k, bit) in [
        ("dl", flags::DELAYED),
        ("fz", flags::FROZEN),
        ("snap", flags::SNAPSHOT),
        ("stale", flags::STALE),
        ("backfill", flags::BACKFILL),
    ] {
        if flag(k) {
            f |= bit;
        }
    }
    let mut intern_str = |k: &'static str| -> Result<u32, DecodeError> {
        match get(k) {
            None => Ok(0),
            Some(Val::Str(s)) => Ok(strings.intern(s.as_bytes())),
            Some(_) => Err(DecodeError::Field(k)),
        }
    };
    let tick_type = |k: &'static str| -> Result<u8, DecodeError> {
        u8::try_from(int(k)?).map_err(|_| DecodeError::Field(k))
    };
    match kind {
        RecordKind::TbtLast | RecordKind::TbtAllLast => {
            let x = intern_str("x")?;
            let c = intern_str("c")?;
            rec.body = [
                fixed("p", PRICE_SCALE)?,
                fixed("s", SIZE_SCALE)?,
                i64::from(x) | (i64::from(c) << 32),
                0,
            ];
            if flag("pl") {
                f |= flags::PAST_LIMIT;
            }
            if flag("upt") {
                f |= flags::UNREPORTED;
            }
        }
        RecordKind::TbtBidAsk => {
            rec.body = [
                fixed("bp", PRICE_SCALE)?,
                fixed("ap", PRICE_SCALE)?,
                fixed("bs", SIZE_SCALE)?,
                fixed("as", SIZE_SCALE)?,
            ];
            if flag("bpl") {
                f |= flags::BID_PAST_LOW;
            }
            if flag("aph") {
                f |= flags::ASK_PAST_HIGH;
            }
        }
        RecordKind::TbtMidPoint => rec.body = [fixed("mp", PRICE_SCALE)?, 0, 0, 0],
        RecordKind::L1Price => {
            rec.tick_type = tick_type("f")?;
            rec.body = [fixed("p", PRICE_SCALE)?, fixed("s", SIZE_SCALE)?, 0, 0];
            for (k, bit) in [
                ("cae", flags::CAN_AUTO_EXECUTE),
                ("pl", flags::L1_PAST_LIMIT),
                ("po", flags::PRE_OPEN),
            ] {
                if flag(k) {
                    f |= bit;
                }
            }
        }
        RecordKind::L1Size => {
            rec.tick_type = tick_type("f")?;
            rec.body = [fixed("s", SIZE_SCALE)?, 0, 0, 0];
        }
        RecordKind::L1Generic => {
            rec.tick_type = tick_type("f")?;
            rec.body = [fixed("v", PRICE_SCALE)?, 0, 0, 0];
        }
        RecordKind::L1String => {
            rec.tick_type = tick_type("f")?;
            rec.body = [i64::from(intern_str("v")?), 0, 0, 0];
        }
        RecordKind::Gap => {
            let r = text_of("r").unwrap_or("unknown");
            rec.tick_type = (1..=255u8).find(|&v| gap_reason_name(v) == r).unwrap_or(0);
            rec.body = [int("from")?, int("to")?, int("t0")?, int("t1")?];
        }
        RecordKind::Connection => {
            let s = text_of("state").unwrap_or("unknown");
            rec.tick_type = (0..=254u8)
                .find(|&v| conn_state_name(v) == s)
                .unwrap_or(255);
            rec.body = [int("sv")?, int("clid")?, opt_int("code")?.unwrap_or(0), 0];
        }
        RecordKind::Subscription => {
            let s = text_of("state").unwrap_or("unknown");
            rec.tick_type = (0..=254u8).find(|&v| sub_state_name(v) == s).unwrap_or(255);
            let k = text_of("kind").unwrap_or("");
            rec.body = [
                RecordKind::from_name(k).map_or(0, |k| i64::from(k as u8)),
                opt_int("code")?.unwrap_or(0),
                int("rid")?,
                int("mdt")?,
            ];
        }
        RecordKind::Heartbeat => rec.body = [int("n")?, 0, 0, 0],
    }
    rec.flags = f;
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ib_stream_ipc::{Quote, Trade};
    use proptest::prelude::*;

    fn enc(rec: &Record, s: &dyn StringLookup) -> String {
        let mut out = Vec::new();
        encode(rec, s, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fixed_point_prints_shortest_exact_decimals() {
        let cases = [
            (189_250_000_000, "189.25"),
            (-500_000_000, "-0.5"),
            (3_000_000_000, "3"),
            (1, "0.000000001"),
            (0, "0"),
            (i64::MIN + 1, "-9223372036.854775807"),
            (i64::MIN, "-9223372036.854775808"),
        ];
        for (v, want) in cases {
            let mut out = Vec::new();
            write_fixed(&mut out, v, PRICE_SCALE);
            assert_eq!(std::str::from_utf8(&out).unwrap(), want);
            assert_eq!(parse_fixed(want, PRICE_SCALE), Some(v));
        }
        assert_eq!(parse_fixed("1.0000000001", PRICE_SCALE), None, "not exact");
        assert_eq!(parse_fixed("1e5", PRICE_SCALE), None);
        assert_eq!(parse_fixed(".5", SIZE_SCALE), Some(50_000_000));
    }

    #[test]
    fn trade_line_matches_the_documented_shape() {
        let mut strings = LocalStrings::default();
        let x = strings.intern(b"NASDAQ");
        let c = strings.intern(b" T");
        let mut r = Record::trade(
            false,
            265_598,
            1_767_277_800_000_000_000,
            Trade {
                price: 189_250_000_000,
                size: 100 * SIZE_SCALE,
                exchange_id: x,
                conditions_id: c,
            },
        );
        r.seq = 42;
        r.ts_recv = 1_767_277_800_123_456_789;
        r.flags = flags::PAST_LIMIT;
        assert_eq!(
            enc(&r, &strings),
            r#"{"seq":42,"st":1767277800123456,"ts":1767277800000000,"cid":265598,"tt":"last","p":189.25,"s":100,"x":"NASDAQ","c":" T","pl":true}"#
        );
    }

    #[test]
    fn bid_ask_line_keeps_original_keys() {
        let mut r = Record::quote(
            711_280_073,
            UNDEF_I64,
            Quote {
                bid_price: 21_000_250_000_000,
                ask_price: 21_000_500_000_000,
                bid_size: 3 * SIZE_SCALE,
                ask_size: SIZE_SCALE / 2,
            },
        );
        r.seq = 1;
        r.ts_recv = 5_000;
        r.flags = flags::DELAYED | flags::ASK_PAST_HIGH;
        assert_eq!(
            enc(&r, &NoStrings),
            r#"{"seq":1,"st":5,"cid":711280073,"tt":"bid_ask","dl":true,"bp":21000.25,"bs":3,"ap":21000.5,"as":0.5,"aph":true}"#
        );
    }

    #[test]
    fn hostile_strings_are_escaped() {
        let mut strings = LocalStrings::default();
        let id = strings.intern(b"a\"b\\c\n\x01\xff");
        let mut r = Record::new(RecordKind::L1String);
        r.tick_type = 32;
        r.body[0] = i64::from(id);
        let line = enc(&r, &strings);
        let back = decode(line.as_bytes(), &mut strings).unwrap();
        // Valid text survives exactly; the invalid byte is replaced, as JSON requires.
        assert_eq!(
            strings.lookup(back.body[0] as u32).unwrap(),
            "a\"b\\c\n\u{1}\u{FFFD}".as_bytes(),
            "{line}"
        );
    }

    #[test]
    fn missing_string_ids_are_not_invented() {
        let mut r = Record::trade(
            true,
            1,
            UNDEF_I64,
            Trade {
                price: 1,
                size: 1,
                exchange_id: 7,
                conditions_id: 0,
            },
        );
        r.seq = 1;
        assert!(enc(&r, &NoStrings).contains(r##""x":"#7""##));
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        let kinds = proptest::sample::select(RecordKind::ALL.to_vec());
        (
            kinds,
            1u64..(1 << 53),
            0i64..4_000_000_000_000_000_000,
            proptest::option::of(0i64..4_000_000_000_000_000_000),
            any::<u32>(),
            any::<u16>(),
            any::<[i64; 4]>(),
            any::<u8>(),
            0u32..4,
            0u32..4,
        )
            .prop_map(|(kind, seq, st, ts, cid, fl, body, tt, x, c)| {
                let mut r = Record::new(kind);
                r.seq = seq;
                r.ts_recv = st;
                r.ts_event = ts.unwrap_or(UNDEF_I64);
                r.instrument_id = cid;
                let common = fl & 0x1f;
                let mut b = body;
                match kind {
                    RecordKind::TbtLast | RecordKind::TbtAllLast => {
                        r.flags = common | (fl & (flags::PAST_LIMIT | flags::UNREPORTED));
                        b[2] = i64::from(x) | (i64::from(c) << 32);
                        b[3] = 0;
                    }
                    RecordKind::TbtBidAsk => {
                        r.flags = common | (fl & (flags::BID_PAST_LOW | flags::ASK_PAST_HIGH));
                    }
                    RecordKind::TbtMidPoint | RecordKind::L1Size | RecordKind::L1Generic => {
                        r.flags = common;
                        b = [b[0], 0, 0, 0];
                        if kind != RecordKind::TbtMidPoint {
                            r.tick_type = tt;
                        }
                    }
                    RecordKind::L1Price => {
                        r.flags = common
                            | (fl
                                & (flags::CAN_AUTO_EXECUTE
                                    | flags::L1_PAST_LIMIT
                                    | flags::PRE_OPEN));
                        r.tick_type = tt;
                        b = [b[0], b[1], 0, 0];
                    }
                    RecordKind::L1String => {
                        r.flags = common;
                        r.tick_type = tt;
                        b = [i64::from(x), 0, 0, 0];
                    }
                    RecordKind::Gap => {
                        r.flags = common;
                        r.tick_type = (tt % 5) + 1;
                    }
                    RecordKind::Connection => {
                        r.flags = common;
                        r.tick_type = tt % 5;
                        b[3] = 0;
                    }
                    RecordKind::Subscription => {
                        r.flags = common;
                        r.tick_type = tt % 7;
                        b[0] = i64::from(RecordKind::ALL[(x as usize) % 12] as u8);
                    }
                    RecordKind::Heartbeat => {
                        r.flags = common;
                        b = [b[0], 0, 0, 0];
                    }
                }
                r.body = b;
                r
            })
    }

    proptest! {
        /// Every record of every kind survives encode then decode exactly.
        #[test]
        fn encode_decode_is_identity(rec in arb_record()) {
            let mut strings = LocalStrings::default();
            for s in [&b"NASDAQ"[..], b"ARCA", b" T I"] {
                strings.intern(s);
            }
            let mut line = Vec::new();
            encode(&rec, &strings, &mut line);
            let mut back_strings = LocalStrings::default();
            for s in [&b"NASDAQ"[..], b"ARCA", b" T I"] {
                back_strings.intern(s);
            }
            let back = decode(&line, &mut back_strings).unwrap();
            // Everything survives exactly but the receive time's sub-microsecond rest.
            let mut want = rec;
            want.ts_recv -= want.ts_recv.rem_euclid(1000);
            prop_assert_eq!(back, want, "{}", String::from_utf8_lossy(&line));
        }

        #[test]
        fn decode_never_panics(line in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&line, &mut LocalStrings::default());
        }
    }
}
