//! Strict parsing of query strings and path parameters: every bad value is a typed 400 with
//! the error schema, never axum's plain-text rejection.

use std::collections::HashMap;

use ib_stream_ipc::RecordKind;

use super::error::ApiError;

/// Longest query string accepted.
pub const MAX_QUERY_LEN: usize = 4096;

/// A parsed query string: each key at most once, only the keys the endpoint knows.
#[derive(Debug, Default, Clone)]
pub struct Params {
    map: HashMap<String, String>,
}

impl Params {
    /// Parses `raw` (without `?`), accepting only `allowed` keys plus `token` (auth, checked
    /// elsewhere).
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Params, ApiError> {
        let raw = raw.unwrap_or("");
        if raw.len() > MAX_QUERY_LEN {
            return Err(ApiError::bad_parameter(format!(
                "query string longer than {MAX_QUERY_LEN} bytes"
            )));
        }
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            if k.is_empty() {
                continue;
            }
            if k != "token" && !allowed.contains(&k.as_ref()) {
                return Err(ApiError::bad_parameter(format!(
                    "unknown parameter `{}` (known: {})",
                    truncate(&k),
                    allowed.join(", ")
                )));
            }
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(ApiError::bad_parameter(format!(
                    "parameter `{}` given twice",
                    truncate(&k)
                )));
            }
        }
        Ok(Params { map })
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// An integer in `min..=max`, or `None` when absent.
    pub fn int(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::bad_parameter(format!(
                "`{key}` must be an integer from {min} to {max}, got `{}`",
                truncate(v)
            ))),
        }
    }

    /// A non-empty string of at most `max_len` characters, or `None` when absent.
    pub fn text(&self, key: &str, max_len: usize) -> Result<Option<&str>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) if !v.is_empty() && v.len() <= max_len && !v.chars().any(char::is_control) => {
                Ok(Some(v))
            }
            Some(v) => Err(ApiError::bad_parameter(format!(
                "`{key}` must be 1 to {max_len} printable characters, got `{}`",
                truncate(v)
            ))),
        }
    }
}

/// At most 64 characters of client input, for error messages.
pub fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// A `since=` value as ns since the Unix epoch: an RFC 3339 time (`2025-11-22T14:30:00Z`; a
/// time without offset is UTC), unix seconds (`1763800000`, fraction allowed) or
/// milliseconds (13 digits and more), or a duration back from `now_ns` (`30s`, `5m`,
/// `1h30m`).
pub fn since(raw: &str, now_ns: i64) -> Result<i64, ApiError> {
    use crate::storage::query::time;
    let t = raw.trim();
    let bad = |why: String| {
        ApiError::bad_parameter(format!(
            "`since` must be an RFC 3339 time, unix seconds or milliseconds, or a duration \
             like 30s, 5m, 2h; `{}`: {why}",
            truncate(raw)
        ))
    };
    let ns = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        let whole: i64 = int.parse().map_err(|_| bad("not a number".into()))?;
        if frac.is_empty() && int.len() >= 13 {
            whole
                .checked_mul(1_000_000)
                .ok_or_else(|| bad("out of range".into()))?
        } else {
            let mut frac_ns: i64 = 0;
            for (i, b) in frac.bytes().take(9).enumerate() {
                if b == b'.' {
                    return Err(bad("not a number".into()));
                }
                frac_ns += i64::from(b - b'0') * 10i64.pow(8 - i as u32);
            }
            whole
                .checked_mul(1_000_000_000)
                .and_then(|n| n.checked_add(frac_ns))
                .ok_or_else(|| bad("out of range".into()))?
        }
    } else if t.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && t.bytes().last().is_some_and(|b| b.is_ascii_alphabetic())
        && let Ok(d) = time::parse_duration(t)
    {
        now_ns.saturating_sub(d)
    } else {
        time::parse_time(t, &jiff::tz::TimeZone::UTC, now_ns).map_err(|e| bad(e.to_string()))?
    };
    if ns <= 0 {
        return Err(bad("before 1970".into()));
    }
    if ns > now_ns.saturating_add(60_000_000_000) {
        return Err(bad("in the future".into()));
    }
    Ok(ns)
}

/// A conId from a path segment: a positive 32-bit integer.
pub fn con_id(raw: &str) -> Result<u32, ApiError> {
    match raw.parse::<u32>() {
        Ok(c) if c > 0 => Ok(c),
        _ => Err(ApiError::bad_parameter(format!(
            "contract id must be a positive integer below 2^32, got `{}`",
            truncate(raw)
        ))),
    }
}

/// A set of record kinds as one bit per kind value (market-data kinds are all below 64).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KindSet(pub u64);

impl KindSet {
    /// Whether `kind` (a record's kind byte) is in the set.
    #[inline]
    pub fn contains(self, kind: u8) -> bool {
        kind < 64 && self.0 & (1u64 << kind) != 0
    }

    /// Adds a kind.
    pub fn insert(&mut self, kind: RecordKind) {
        if (kind as u8) < 64 {
            self.0 |= 1u64 << (kind as u8);
        }
    }

    /// Removes a kind.
    pub fn remove(&mut self, kind: u8) {
        if kind < 64 {
            self.0 &= !(1u64 << kind);
        }
    }

    /// True when no kind is left.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True when the two sets share a kind.
    pub fn overlaps(self, other: KindSet) -> bool {
        self.0 & other.0 != 0
    }
}

/// One subscribable tick type of the web API, and what it means in the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TickType {
    /// Tick-by-tick BidAsk.
    BidAsk,
    /// Tick-by-tick Last.
    Last,
    /// Tick-by-tick AllLast.
    AllLast,
    /// Tick-by-tick MidPoint.
    MidPoint,
    /// reqMktData (the four L1 kinds).
    MktData,
}

impl TickType {
    /// Every tick type.
    pub const ALL: [TickType; 5] = [
        TickType::BidAsk,
        TickType::Last,
        TickType::AllLast,
        TickType::MidPoint,
        TickType::MktData,
    ];

    /// The name in the API and in the engine's control protocol.
    pub fn name(self) -> &'static str {
        match self {
            TickType::BidAsk => "bid_ask",
            TickType::Last => "last",
            TickType::AllLast => "all_last",
            TickType::MidPoint => "mid_point",
            TickType::MktData => "mktdata",
        }
    }

    /// The tick type for a name.
    pub fn from_name(s: &str) -> Option<TickType> {
        TickType::ALL.into_iter().find(|t| t.name() == s)
    }

    /// The record kinds it delivers.
    pub fn kinds(self) -> &'static [RecordKind] {
        match self {
            TickType::BidAsk => &[RecordKind::TbtBidAsk],
            TickType::Last => &[RecordKind::TbtLast],
            TickType::AllLast => &[RecordKind::TbtAllLast],
            TickType::MidPoint => &[RecordKind::TbtMidPoint],
            TickType::MktData => &[
                RecordKind::L1Price,
                RecordKind::L1Size,
                RecordKind::L1Generic,
                RecordKind::L1String,
            ],
        }
    }

    /// The tick type that delivers records of `kind`.
    pub fn of_kind(kind: u8) -> Option<TickType> {
        TickType::ALL
            .into_iter()
            .find(|t| t.kinds().iter().any(|k| *k as u8 == kind))
    }
}

/// The default tick types of a stream (the original's tracked default).
pub const DEFAULT_TICK_TYPES: [TickType; 2] = [TickType::BidAsk, TickType::Last];

/// Parses a comma-separated list of tick types (`bid_ask,last`): known names, no duplicates,
/// at least one.
pub fn tick_types(raw: &str) -> Result<Vec<TickType>, ApiError> {
    let mut out = Vec::new();
    for part in raw.split(',').map(str::trim) {
        let t = TickType::from_name(part).ok_or_else(|| {
            ApiError::bad_parameter(format!(
                "unknown tick type `{}` (bid_ask, last, all_last, mid_point, mktdata)",
                truncate(part)
            ))
        })?;
        if out.contains(&t) {
            return Err(ApiError::bad_parameter(format!(
                "tick type `{}` listed twice",
                t.name()
            )));
        }
        out.push(t);
    }
    Ok(out)
}

/// The record kinds of a list of tick types.
pub fn kind_set(types: &[TickType]) -> KindSet {
    let mut set = KindSet::default();
    for t in types {
        for k in t.kinds() {
            set.insert(*k);
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_times_unix_numbers_and_durations() {
        let now = 1_763_800_000_000_000_000;
        assert_eq!(since("2025-11-22T08:26:40Z", now).unwrap(), now);
        assert_eq!(since("2025-11-22T08:26:40", now).unwrap(), now);
        assert_eq!(since("1763800000", now).unwrap(), now);
        assert_eq!(since("1763799999.5", now).unwrap(), now - 500_000_000);
        assert_eq!(since("1763799999000", now).unwrap(), now - 1_000_000_000);
        assert_eq!(since("30s", now).unwrap(), now - 30_000_000_000);
        assert_eq!(since("1h30m", now).unwrap(), now - 5_400_000_000_000);
        assert_eq!(since("now", now).unwrap(), now);
        for bad in [
            "",
            "x",
            "5 minutes",
            "1.2.3",
            "-5",
            "0",
            "2099-01-01T00:00:00Z",
            "30q",
        ] {
            let e = since(bad, now).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn params_reject_unknown_duplicate_and_out_of_range() {
        let p = Params::parse(
            Some("limit=5&tick_types=last&token=x"),
            &["limit", "tick_types"],
        )
        .unwrap();
        assert_eq!(p.int("limit", 1, 10).unwrap(), Some(5));
        assert!(Params::parse(Some("limt=5"), &["limit"]).is_err());
        assert!(Params::parse(Some("limit=5&limit=6"), &["limit"]).is_err());
        let p = Params::parse(Some("limit=0"), &["limit"]).unwrap();
        let e = p.int("limit", 1, 10).unwrap_err();
        assert_eq!(e.code, "bad_parameter");
        assert!(e.message.contains("from 1 to 10"), "{}", e.message);
        let p = Params::parse(Some("limit=%ZZ%00"), &["limit"]).unwrap();
        assert!(p.int("limit", 1, 10).is_err());
        assert!(Params::parse(Some(&"a=b&".repeat(2000)), &["a"]).is_err());
    }

    #[test]
    fn tick_types_parse_and_map_to_kinds() {
        let t = tick_types("bid_ask,last").unwrap();
        assert_eq!(t, vec![TickType::BidAsk, TickType::Last]);
        let set = kind_set(&t);
        assert!(set.contains(RecordKind::TbtBidAsk as u8));
        assert!(set.contains(RecordKind::TbtLast as u8));
        assert!(!set.contains(RecordKind::TbtAllLast as u8));
        assert!(!set.contains(RecordKind::Gap as u8));
        assert!(tick_types("last,last").is_err());
        assert!(tick_types("trades").is_err());
        assert!(tick_types("").is_err());
        assert_eq!(
            TickType::of_kind(RecordKind::L1Size as u8),
            Some(TickType::MktData)
        );
    }

    proptest::proptest! {
        #[test]
        fn any_query_string_parses_or_is_a_400_never_a_panic(raw in ".{0,300}", bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let lossy = String::from_utf8_lossy(&bytes).into_owned();
            for q in [raw.as_str(), lossy.as_str()] {
                match Params::parse(Some(q), &["limit", "tick_types", "slow"]) {
                    Ok(p) => {
                        let _ = p.int("limit", 1, 10);
                        let _ = p.text("slow", 16);
                        if let Some(t) = p.get("tick_types") {
                            let _ = tick_types(t);
                        }
                    }
                    Err(e) => proptest::prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST),
                }
                let _ = con_id(q);
            }
        }
    }

    #[test]
    fn con_ids_are_positive_u32() {
        assert_eq!(con_id("711280073").unwrap(), 711_280_073);
        for bad in ["0", "-1", "abc", "4294967296", ""] {
            assert!(con_id(bad).is_err(), "{bad}");
        }
    }
}
