//! The exchange's clock: which session and which time bar a receive time falls in.
//!
//! Bars are aligned to the wall clock of a named IANA time zone (jiff's bundled tz database,
//! already the storage query's), counted from the session start: a session runs from
//! `session_start` (a local time of day) to the same local time the next day, so a daily bar
//! follows the exchange's session rather than UTC midnight, and a session on a DST change day
//! lasts 23 or 25 hours. Time bars run from the session start in steps of their size and
//! never cross a session boundary (the last bar of a session may be shorter).

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// The exchange time zone bars use unless told otherwise (CME's and the US equity markets').
pub const DEFAULT_TZ: &str = "America/New_York";
/// Local time the exchange's session starts unless told otherwise (CME Globex, 18:00 New York).
pub const DEFAULT_SESSION_START: &str = "18:00";

/// One day in µs: the longest time bar.
pub const DAY_US: i64 = 86_400_000_000;

/// Why a clock could not be built or a time not placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// An unknown time zone.
    #[error(transparent)]
    Zone(#[from] crate::storage::query::time::TimeError),
    /// A session start that is not `HH:MM[:SS]`.
    #[error("session start {0:?} is not a time of day (HH:MM or HH:MM:SS)")]
    SessionStart(String),
}

/// An exchange clock: time zone and session start.
#[derive(Clone, Debug)]
pub struct Clock {
    tz: TimeZone,
    tz_name: String,
    session_start: Time,
}

impl Clock {
    /// The clock of zone `tz` (IANA name or `UTC`) with sessions starting at `session_start`
    /// (`HH:MM[:SS]`, local).
    pub fn new(tz: &str, session_start: &str) -> Result<Clock, ClockError> {
        let zone = crate::storage::query::time::zone(tz)?;
        let start: Time = session_start
            .parse()
            .map_err(|_| ClockError::SessionStart(session_start.to_string()))?;
        Ok(Clock {
            tz: zone,
            tz_name: tz.to_string(),
            session_start: start,
        })
    }

    /// UTC, sessions at midnight.
    pub fn utc() -> Clock {
        Clock {
            tz: TimeZone::UTC,
            tz_name: "UTC".into(),
            session_start: Time::midnight(),
        }
    }

    /// The zone's name as given.
    pub fn zone_name(&self) -> &str {
        &self.tz_name
    }

    /// The session `[start, end)` (µs) that holds `t_us`.
    pub fn session(&self, t_us: i64) -> (i64, i64) {
        let Ok(ts) = Timestamp::from_microsecond(t_us) else {
            return (t_us, t_us + DAY_US);
        };
        let date = ts.to_zoned(self.tz.clone()).date();
        let at = |d: jiff::civil::Date| -> Option<i64> {
            let z = d
                .to_datetime(self.session_start)
                .to_zoned(self.tz.clone())
                .ok()?;
            Some(z.timestamp().as_microsecond())
        };
        let day = |n: i64| date.checked_add(n.days()).ok().and_then(at);
        match (day(-1), day(0), day(1)) {
            (_, Some(s0), Some(s1)) if s0 <= t_us && t_us < s1 => (s0, s1),
            (Some(sm), Some(s0), _) if sm <= t_us && t_us < s0 => (sm, s0),
            // Out of jiff's range: plain UTC days.
            _ => {
                let s = t_us.div_euclid(DAY_US) * DAY_US;
                (s, s + DAY_US)
            }
        }
    }

    /// The time bar `[start, end)` of `size_us` that holds `t_us`.
    pub fn bucket(&self, t_us: i64, size_us: i64) -> (i64, i64) {
        let (s0, s1) = self.session(t_us);
        if size_us >= s1 - s0 {
            return (s0, s1);
        }
        let start = s0 + (t_us - s0).div_euclid(size_us) * size_us;
        (start, (start + size_us).min(s1))
    }

    /// `t_us` as RFC 3339 in the clock's zone (`2026-03-08T03:00:00-04:00`, with the fraction
    /// only when there is one).
    pub fn format(&self, t_us: i64, out: &mut String) {
        use std::fmt::Write as _;
        let Ok(ts) = Timestamp::from_microsecond(t_us) else {
            let _ = write!(out, "{t_us}");
            return;
        };
        let z = ts.to_zoned(self.tz.clone());
        let _ = write!(out, "{}", z.datetime());
        let off = z.offset().seconds();
        if off == 0 && self.tz_name.eq_ignore_ascii_case("utc") {
            out.push('Z');
        } else {
            let sign = if off < 0 { '-' } else { '+' };
            let a = off.unsigned_abs();
            let _ = write!(out, "{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60);
        }
    }
}

/// Parses a bar size: a duration of 1 s to 1 day (`1s`, `5m`, `1h`, `1d`), whole seconds.
pub fn parse_time_size(s: &str) -> Result<i64, String> {
    let ns = crate::storage::query::time::parse_duration(s).map_err(|e| e.to_string())?;
    if ns % 1_000_000_000 != 0 || !(1_000_000_000..=DAY_US * 1000).contains(&ns) {
        return Err(format!(
            "bar size {s:?} must be whole seconds from 1s to 1d"
        ));
    }
    Ok(ns / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(rfc: &str) -> i64 {
        rfc.parse::<Timestamp>().unwrap().as_microsecond()
    }

    fn fmt(c: &Clock, t: i64) -> String {
        let mut s = String::new();
        c.format(t, &mut s);
        s
    }

    #[test]
    fn utc_minute_bars_align_to_the_minute() {
        let c = Clock::utc();
        let t = us("2026-01-05T14:30:59.999999Z");
        assert_eq!(
            c.bucket(t, 60_000_000),
            (us("2026-01-05T14:30:00Z"), us("2026-01-05T14:31:00Z"))
        );
        assert_eq!(fmt(&c, us("2026-01-05T14:31:00Z")), "2026-01-05T14:31:00Z");
    }

    #[test]
    fn a_daily_bar_follows_the_session_not_utc_midnight() {
        // CME-like: sessions start 18:00 New York time.
        let c = Clock::new("America/New_York", "18:00").unwrap();
        // 23:30 UTC on 5 Jan is 18:30 EST: the session that started at 18:00 EST that day.
        let (s, e) = c.bucket(us("2026-01-05T23:30:00Z"), DAY_US);
        assert_eq!(s, us("2026-01-05T23:00:00Z"));
        assert_eq!(e, us("2026-01-06T23:00:00Z"));
        // 22:59 UTC (17:59 EST) still belongs to the previous session.
        let (s, _) = c.bucket(us("2026-01-05T22:59:00Z"), DAY_US);
        assert_eq!(s, us("2026-01-04T23:00:00Z"));
        assert_eq!(fmt(&c, s), "2026-01-04T18:00:00-05:00");
    }

    #[test]
    fn hourly_bars_across_midnight_and_the_spring_dst_change() {
        let c = Clock::new("America/New_York", "00:00").unwrap();
        // 8 March 2026: 02:00 EST jumps to 03:00 EDT; the session is 23 hours long.
        let (s0, s1) = c.session(us("2026-03-08T12:00:00Z"));
        assert_eq!(s0, us("2026-03-08T05:00:00Z"));
        assert_eq!(s1, us("2026-03-09T04:00:00Z"));
        assert_eq!((s1 - s0) / 3_600_000_000, 23);
        // The third hour after local midnight starts at 03:00 EDT (07:00 UTC).
        let (b, e) = c.bucket(us("2026-03-08T07:10:00Z"), 3_600_000_000);
        assert_eq!(b, us("2026-03-08T07:00:00Z"));
        assert_eq!(e, us("2026-03-08T08:00:00Z"));
        assert_eq!(fmt(&c, b), "2026-03-08T03:00:00-04:00");
        // Across local midnight the 1-hour bars restart at the new session.
        let (b, e) = c.bucket(us("2026-03-09T04:00:00Z"), 3_600_000_000);
        assert_eq!(
            (b, e),
            (us("2026-03-09T04:00:00Z"), us("2026-03-09T05:00:00Z"))
        );
        // 7-hour bars: the last bar of the 23-hour session is cut at its end.
        let (b, e) = c.bucket(us("2026-03-09T03:59:00Z"), 7 * 3_600_000_000);
        assert_eq!(b, us("2026-03-09T02:00:00Z"));
        assert_eq!(e, us("2026-03-09T04:00:00Z"));
    }

    #[test]
    fn the_autumn_change_gives_a_25_hour_daily_bar() {
        let c = Clock::new("America/New_York", "00:00").unwrap();
        let (s0, s1) = c.session(us("2026-11-01T12:00:00Z"));
        assert_eq!((s1 - s0) / 3_600_000_000, 25);
    }

    #[test]
    fn sizes_parse_from_one_second_to_one_day() {
        assert_eq!(parse_time_size("1s"), Ok(1_000_000));
        assert_eq!(parse_time_size("5m"), Ok(300_000_000));
        assert_eq!(parse_time_size("1d"), Ok(DAY_US));
        assert!(parse_time_size("500ms").is_err());
        assert!(parse_time_size("2d").is_err());
        assert!(Clock::new("Mars/Base", "00:00").is_err());
        assert!(Clock::new("UTC", "25:00").is_err());
    }
}
