//! Times and durations as people type them, for queries and the tools.
//!
//! A time is `now`, an RFC 3339 timestamp with an offset (`2025-11-22T14:30:00Z`,
//! `2025-11-22T09:30:00-05:00`), or a civil date-time without one (`2025-11-22T09:30`,
//! `2025-11-22 09:30:00.5`, `2025-11-22`) read in a named time zone (IANA name, e.g.
//! `America/New_York`; `UTC` by default). A duration is one or more `<number><unit>` parts,
//! units `ns`, `us`, `ms`, `s`, `m`, `h`, `d` (`90s`, `5m`, `1h30m`, `2d`).

use std::str::FromStr;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;

/// Why a time, duration or time zone was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Not a time this module reads.
    #[error("{input:?} is not a time (RFC 3339, `YYYY-MM-DD[ HH:MM[:SS[.f]]]` or `now`): {reason}")]
    Time {
        /// What was given.
        input: String,
        /// The parser's reason.
        reason: String,
    },
    /// Not a duration.
    #[error("{0:?} is not a duration (e.g. 90s, 5m, 1h30m, 2d)")]
    Duration(String),
    /// An unknown time zone name.
    #[error("unknown time zone {name:?}: {reason}")]
    Zone {
        /// The name given.
        name: String,
        /// The lookup's reason.
        reason: String,
    },
    /// The range is empty or reversed, or over- or underflows.
    #[error("bad time range: {0}")]
    Range(String),
}

/// The time zone named `name` (`UTC`, `America/New_York`, ...).
pub fn zone(name: &str) -> Result<TimeZone, TimeError> {
    if name.eq_ignore_ascii_case("utc") || name == "Z" {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|e| TimeError::Zone {
        name: name.to_string(),
        reason: e.to_string(),
    })
}

/// Parses a duration into nanoseconds.
pub fn parse_duration(s: &str) -> Result<i64, TimeError> {
    let bad = || TimeError::Duration(s.to_string());
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    let mut rest = t;
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

/// Parses a time into nanoseconds since the Unix epoch; civil times are read in `tz`.
pub fn parse_time(s: &str, tz: &TimeZone, now_ns: i64) -> Result<i64, TimeError> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("now") {
        return Ok(now_ns);
    }
    let fail = |reason: String| TimeError::Time {
        input: s.to_string(),
        reason,
    };
    let ts = if let Ok(ts) = Timestamp::from_str(t) {
        ts
    } else if let Ok(dt) = DateTime::from_str(t) {
        dt.to_zoned(tz.clone())
            .map_err(|e| fail(e.to_string()))?
            .timestamp()
    } else {
        match Date::from_str(t) {
            Ok(d) => d
                .to_zoned(tz.clone())
                .map_err(|e| fail(e.to_string()))?
                .timestamp(),
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    i64::try_from(ts.as_nanosecond()).map_err(|e| fail(e.to_string()))
}

/// A half-open interval `[start_ns, end_ns)` from what a user gave: any two of start, end and
/// duration (end defaults to `now`; with only a duration, the last `duration` up to now;
/// with nothing, all of history up to now).
pub fn resolve_range(
    start: Option<&str>,
    end: Option<&str>,
    duration: Option<&str>,
    tz: &TimeZone,
    now_ns: i64,
) -> Result<(i64, i64), TimeError> {
    let dur = duration.map(parse_duration).transpose()?;
    let start = start.map(|s| parse_time(s, tz, now_ns)).transpose()?;
    let end = end.map(|s| parse_time(s, tz, now_ns)).transpose()?;
    let overflow = || TimeError::Range("time out of range".into());
    let (a, b) = match (start, end, dur) {
        (Some(a), Some(b), None) => (a, b),
        (Some(_), Some(_), Some(_)) => {
            return Err(TimeError::Range(
                "give at most two of start, end and duration".into(),
            ));
        }
        (Some(a), None, Some(d)) => (a, a.checked_add(d).ok_or_else(overflow)?),
        (None, b, Some(d)) => {
            let b = b.unwrap_or(now_ns);
            (b.checked_sub(d).ok_or_else(overflow)?, b)
        }
        (Some(a), None, None) => (a, now_ns.max(a).saturating_add(1)),
        (None, Some(b), None) => (i64::MIN, b),
        (None, None, None) => (i64::MIN, now_ns.saturating_add(1)),
    };
    if a >= b {
        return Err(TimeError::Range(format!(
            "start {a} ns is not before end {b} ns"
        )));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000_000_000;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), 90_000_000_000);
        assert_eq!(parse_duration("1h30m").unwrap(), H + H / 2);
        assert_eq!(parse_duration("2d").unwrap(), 48 * H);
        assert_eq!(parse_duration("250ms").unwrap(), 250_000_000);
        for bad in ["", "5", "h", "5x", "-5m", "1h 2m", "99999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_and_zones() {
        let utc = zone("UTC").unwrap();
        // 2025-11-22T00:00:00Z
        let day = 1_763_769_600_000_000_000;
        assert_eq!(parse_time("2025-11-22T00:00:00Z", &utc, 0).unwrap(), day);
        assert_eq!(parse_time("2025-11-22", &utc, 0).unwrap(), day);
        assert_eq!(parse_time("2025-11-22 01:00", &utc, 0).unwrap(), day + H);
        assert_eq!(
            parse_time("2025-11-21T19:00:00-05:00", &utc, 0).unwrap(),
            day
        );
        let ny = zone("America/New_York").unwrap();
        // November: EST, UTC-5.
        assert_eq!(parse_time("2025-11-21T19:00", &ny, 0).unwrap(), day);
        // An offset in the text wins over the zone.
        assert_eq!(parse_time("2025-11-22T00:00:00Z", &ny, 0).unwrap(), day);
        assert_eq!(parse_time("now", &ny, 42).unwrap(), 42);
        assert!(parse_time("yesterday", &utc, 0).is_err());
        assert!(zone("Mars/Olympus").is_err());
    }

    #[test]
    fn ranges() {
        let utc = TimeZone::UTC;
        let now = 100 * H;
        assert_eq!(
            resolve_range(None, None, Some("1h"), &utc, now).unwrap(),
            (99 * H, now)
        );
        let (a, b) = resolve_range(Some("2025-11-22"), None, Some("2h"), &utc, now).unwrap();
        assert_eq!(b - a, 2 * H);
        assert!(resolve_range(Some("2025-11-22"), Some("2025-11-21"), None, &utc, now).is_err());
        assert!(resolve_range(Some("now"), Some("now"), Some("1h"), &utc, now).is_err());
    }
}
