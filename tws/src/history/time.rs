//! IB's historical date-time strings. Requests name a second as `yyyymmdd-hh:mm:ss` (UTC),
//! `yyyymmdd hh:mm:ss UTC`/`GMT`, or `yyyymmdd hh:mm:ss` in the gateway's own zone; answers
//! carry Unix seconds. Only UTC is understood here (the simulator runs in UTC; the backfill
//! always writes the dash form, which IB reads as UTC).

use crate::civil::{civil_from_days, days_from_civil};

/// `yyyymmdd-hh:mm:ss`, the UTC form IB accepts for startDateTime/endDateTime.
pub fn format_utc(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}-{:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Why a date-time string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Not `yyyymmdd[- ]hh:mm:ss[ zone]`.
    #[error("malformed date-time {0:?}")]
    Malformed(String),
    /// A zone other than UTC/GMT.
    #[error("unsupported time zone {0:?}")]
    Zone(String),
}

/// Unix seconds of `yyyymmdd-hh:mm:ss`, `yyyymmdd hh:mm:ss`, `yyyymmdd hh:mm:ss UTC|GMT`
/// (all UTC).
pub fn parse_utc(s: &str) -> Result<i64, TimeError> {
    let bad = || TimeError::Malformed(s.to_owned());
    let s = s.trim();
    let (date, rest) = (s.get(..8).ok_or_else(bad)?, s.get(8..).ok_or_else(bad)?);
    let rest = rest.strip_prefix(['-', ' ']).ok_or_else(bad)?;
    let (clock, zone) = match rest.split_once(' ') {
        Some((c, z)) => (c, z.trim()),
        None => (rest, ""),
    };
    if !(zone.is_empty() || zone.eq_ignore_ascii_case("UTC") || zone.eq_ignore_ascii_case("GMT")) {
        return Err(TimeError::Zone(zone.to_owned()));
    }
    let num = |t: &str| -> Result<u32, TimeError> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        t.parse().map_err(|_| bad())
    };
    let (y, m, d) = (num(&date[..4])?, num(&date[4..6])?, num(&date[6..8])?);
    let mut parts = clock.split(':');
    let (hh, mm, ss) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(m), Some(s), None) if h.len() == 2 && m.len() == 2 && s.len() == 2 => {
            (num(h)?, num(m)?, num(s)?)
        }
        _ => return Err(bad()),
    };
    if !(1..=12).contains(&m) || d == 0 || d > 31 || hh > 23 || mm > 59 || ss > 59 {
        return Err(bad());
    }
    let days = days_from_civil(i64::from(y), m, d);
    // Reject 20260231 and the like: the date must survive the round trip.
    if civil_from_days(days) != (i64::from(y), m, d) {
        return Err(bad());
    }
    Ok(days * 86_400 + i64::from(hh * 3600 + mm * 60 + ss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_every_accepted_form() {
        assert_eq!(format_utc(0), "19700101-00:00:00");
        assert_eq!(format_utc(1_767_277_800), "20260101-14:30:00");
        for s in [
            "20260101-14:30:00",
            "20260101 14:30:00",
            "20260101 14:30:00 UTC",
            "20260101 14:30:00 GMT",
        ] {
            assert_eq!(parse_utc(s), Ok(1_767_277_800), "{s}");
        }
        for secs in [0, 951_782_400, 1_709_164_799, 4_102_444_800] {
            assert_eq!(parse_utc(&format_utc(secs)), Ok(secs));
        }
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(matches!(
            parse_utc("20260101 09:30:00 US/Eastern"),
            Err(TimeError::Zone(_))
        ));
        for s in [
            "",
            "2026010114:30:00",
            "20260231-00:00:00",
            "20261301-00:00:00",
            "20260101-24:00:00",
            "20260101-1:30:00",
            "2026O101-14:30:00",
        ] {
            assert!(matches!(parse_utc(s), Err(TimeError::Malformed(_))), "{s}");
        }
    }
}
