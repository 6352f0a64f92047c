//! Trading sessions: when an instrument's market is open, in the exchange's own time zone.
//!
//! Pure: an epoch second in, a [`Phase`] (or a trading day and its bounds) out; nothing reads a
//! clock. Three session shapes cover the universe, chosen by security type:
//! * stocks (`STK`): pre-market 04:00-09:30, regular 09:30-16:00, after-hours 16:00-20:00,
//!   closed (quiet) overnight and at weekends;
//! * futures (`FUT`, CME Globex): the trading day opens at 17:00 the evening before, regular
//!   hours 08:30-15:15, extended the rest, a daily halt 16:00-17:00, closed Friday 16:00 to
//!   Sunday 17:00;
//! * FX (`CASH`, IDEALPRO): one regular session from 17:15 the evening before to 17:00,
//!   Sunday evening to Friday.
//!
//! Every other security type trades like a stock. The zone comes from the instrument's
//! `time_zone_id` (IB's names: US/Eastern, US/Central, or their America/ forms, UTC/GMT; any
//! other falls back to UTC), with the US daylight-saving rule in force since 2007. Holidays and
//! early closes are not modelled.
//!
//! What it drives today: nothing in the generated ticks. Tick content is a function of the
//! market step (see `market`), never of wall time, so a replay is the same whenever it runs.
//! It is here for what needs sessions: bars aligned to the exchange's day, a session VWAP, and
//! a historical answer or a pacing that keeps stocks quiet overnight
//! ([`Phase::activity`] is the relative trade rate such a caller would apply).

use crate::universe::Instrument;

const DAY: i64 = 86_400;
const MIN: i64 = 60;

/// Where in its trading day a market is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Closed,
    /// Extended hours before the regular session (stocks' pre-market, futures' overnight).
    PreMarket,
    Regular,
    /// Extended hours after the regular session.
    PostMarket,
}

impl Phase {
    /// The trade rate relative to regular hours, in per cent: extended hours are thin,
    /// a closed market is silent.
    pub fn activity(self) -> u32 {
        match self {
            Phase::Regular => 100,
            Phase::PreMarket | Phase::PostMarket => 10,
            Phase::Closed => 0,
        }
    }
}

/// The exchange time zones the universe uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    UsEastern,
    UsCentral,
    Utc,
}

impl Zone {
    /// IB's `timeZoneId` (or its IANA form).
    pub fn parse(id: &str) -> Option<Self> {
        match id {
            "US/Eastern" | "America/New_York" | "EST5EDT" => Some(Self::UsEastern),
            "US/Central" | "America/Chicago" | "CST6CDT" => Some(Self::UsCentral),
            "UTC" | "GMT" | "Etc/UTC" => Some(Self::Utc),
            _ => None,
        }
    }

    /// The IANA name, for labelling times.
    pub fn name(self) -> &'static str {
        match self {
            Self::UsEastern => "America/New_York",
            Self::UsCentral => "America/Chicago",
            Self::Utc => "UTC",
        }
    }

    fn standard_offset(self) -> i64 {
        match self {
            Self::UsEastern => -5 * 3600,
            Self::UsCentral => -6 * 3600,
            Self::Utc => 0,
        }
    }

    /// Seconds to add to UTC for local time at `epoch`.
    pub fn utc_offset(self, epoch: i64) -> i64 {
        let std = self.standard_offset();
        if self == Self::Utc {
            return 0;
        }
        // US rule: from the second Sunday of March 02:00 standard time to the first Sunday
        // of November 02:00 daylight time (= 01:00 standard).
        let (year, _, _) = civil_from_days((epoch + std).div_euclid(DAY));
        let start = (nth_sunday(year, 3, 2) * DAY + 2 * 3600) - std;
        let end = (nth_sunday(year, 11, 1) * DAY + 3600) - std;
        if (start..end).contains(&epoch) {
            std + 3600
        } else {
            std
        }
    }
}

pub use ib_stream_tws::civil::{civil_from_days, days_from_civil};

/// 0 = Monday .. 6 = Sunday.
fn weekday(day: i64) -> i64 {
    (day + 3).rem_euclid(7)
}

/// The day number of the n-th Sunday of a month.
fn nth_sunday(year: i64, month: u32, n: i64) -> i64 {
    let first = days_from_civil(year, month, 1);
    first + (6 - weekday(first)).rem_euclid(7) + 7 * (n - 1)
}

/// One stretch of a trading day, in minutes from the local midnight of the trading day's date
/// (negative: the evening before).
type Segment = (i64, i64, Phase);

const STOCK: &[Segment] = &[
    (4 * 60, 9 * 60 + 30, Phase::PreMarket),
    (9 * 60 + 30, 16 * 60, Phase::Regular),
    (16 * 60, 20 * 60, Phase::PostMarket),
];
const GLOBEX: &[Segment] = &[
    (-7 * 60, 8 * 60 + 30, Phase::PreMarket),
    (8 * 60 + 30, 15 * 60 + 15, Phase::Regular),
    (15 * 60 + 15, 16 * 60, Phase::PostMarket),
];
const IDEALPRO: &[Segment] = &[(-(6 * 60 + 45), 17 * 60, Phase::Regular)];

/// An instrument's trading sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calendar {
    zone: Zone,
    segments: &'static [Segment],
}

impl Calendar {
    /// The calendar of an instrument, from its security type and time zone.
    pub fn of(inst: &Instrument) -> Self {
        let zone = Zone::parse(&inst.spec.time_zone_id).unwrap_or(Zone::Utc);
        let segments = match inst.spec.sec_type.as_str() {
            "FUT" => GLOBEX,
            "CASH" => IDEALPRO,
            _ => STOCK,
        };
        Self { zone, segments }
    }

    pub fn zone(&self) -> Zone {
        self.zone
    }

    fn local(&self, epoch: i64) -> (i64, i64) {
        let local = epoch + self.zone.utc_offset(epoch);
        (local.div_euclid(DAY), local.rem_euclid(DAY) / MIN)
    }

    /// The trading day (its date's day number, Monday to Friday) and segment `epoch` is in.
    fn locate(&self, epoch: i64) -> Option<(i64, Phase)> {
        let (day, minute) = self.local(epoch);
        // A segment can start the evening before its trading day, so look at today and
        // tomorrow's trading day.
        [(day, minute), (day + 1, minute - 24 * 60)]
            .into_iter()
            .filter(|&(d, _)| weekday(d) < 5)
            .find_map(|(d, m)| {
                self.segments
                    .iter()
                    .find(|&&(from, to, _)| (from..to).contains(&m))
                    .map(|&(_, _, phase)| (d, phase))
            })
    }

    /// The phase of the market at `epoch` (seconds since 1970 UTC).
    pub fn phase_at(&self, epoch: i64) -> Phase {
        self.locate(epoch).map_or(Phase::Closed, |(_, p)| p)
    }

    /// The trading day `epoch` belongs to, as a civil date, or `None` while closed between
    /// trading days.
    pub fn trading_day(&self, epoch: i64) -> Option<(i64, u32, u32)> {
        self.locate(epoch).map(|(d, _)| civil_from_days(d))
    }

    /// When a trading day opens and closes (epoch seconds), extended hours included; `None`
    /// for a weekend date.
    pub fn day_bounds(&self, year: i64, month: u32, day: u32) -> Option<(i64, i64)> {
        let d = days_from_civil(year, month, day);
        if weekday(d) >= 5 {
            return None;
        }
        let first = self.segments.first()?.0;
        let last = self.segments.last()?.1;
        Some((self.epoch_of(d, first), self.epoch_of(d, last)))
    }

    /// The regular session of a trading day (epoch seconds); `None` for a weekend date.
    pub fn regular_bounds(&self, year: i64, month: u32, day: u32) -> Option<(i64, i64)> {
        let d = days_from_civil(year, month, day);
        if weekday(d) >= 5 {
            return None;
        }
        let &(from, to, _) = self.segments.iter().find(|s| s.2 == Phase::Regular)?;
        Some((self.epoch_of(d, from), self.epoch_of(d, to)))
    }

    /// The epoch second of a local minute of a day. The offset is taken at the standard-time
    /// guess, then corrected once (sessions never start inside a DST switch hour).
    fn epoch_of(&self, day: i64, minute: i64) -> i64 {
        let local = day * DAY + minute * MIN;
        let guess = local - self.zone.standard_offset();
        local - self.zone.utc_offset(guess)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::universe::Universe;

    fn cal(con_id: i32) -> Calendar {
        let u = Universe::builtin();
        Calendar::of(u.get(u.by_con_id(con_id).unwrap()))
    }

    /// Epoch second of a UTC wall time.
    fn utc(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> i64 {
        days_from_civil(y, mo, d) * DAY + h * 3600 + mi * MIN
    }

    #[test]
    fn civil_dates_round_trip_and_known_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(
            days_from_civil(2026, 1, 1) * DAY + 14 * 3600 + 30 * 60,
            1_767_277_800
        );
        for d in [-800_000, -1, 0, 59, 60, 20_000, 20_513, 400_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        // 2026-11-23 is a Monday.
        assert_eq!(weekday(days_from_civil(2026, 11, 23)), 0);
    }

    #[test]
    fn us_daylight_saving_switches_on_the_right_sundays() {
        let e = Zone::UsEastern;
        // 2026: 8 March and 1 November.
        assert_eq!(e.utc_offset(utc(2026, 3, 8, 6, 59)), -5 * 3600);
        assert_eq!(e.utc_offset(utc(2026, 3, 8, 7, 0)), -4 * 3600);
        assert_eq!(e.utc_offset(utc(2026, 11, 1, 5, 59)), -4 * 3600);
        assert_eq!(e.utc_offset(utc(2026, 11, 1, 6, 0)), -5 * 3600);
        let c = Zone::UsCentral;
        assert_eq!(c.utc_offset(utc(2026, 7, 1, 12, 0)), -5 * 3600);
        assert_eq!(c.utc_offset(utc(2026, 12, 1, 12, 0)), -6 * 3600);
        assert_eq!(Zone::Utc.utc_offset(utc(2026, 7, 1, 12, 0)), 0);
        assert_eq!(Zone::parse("US/Eastern"), Some(e));
        assert_eq!(Zone::parse("Mars/Olympus"), None);
    }

    #[test]
    fn stocks_are_quiet_overnight_and_at_weekends() {
        let aapl = cal(265598);
        assert_eq!(aapl.zone(), Zone::UsEastern);
        // Monday 23 Nov 2026 (EST, UTC-5).
        let at = |h, m| aapl.phase_at(utc(2026, 11, 23, h, m));
        assert_eq!(at(8, 59), Phase::Closed); // 03:59 ET
        assert_eq!(at(9, 0), Phase::PreMarket); // 04:00
        assert_eq!(at(14, 30), Phase::Regular); // 09:30
        assert_eq!(at(20, 59), Phase::Regular); // 15:59
        assert_eq!(at(21, 0), Phase::PostMarket); // 16:00
        assert_eq!(at(1, 0), Phase::Closed); // Sunday 20:00 ET
        assert_eq!(aapl.phase_at(utc(2026, 11, 28, 15, 0)), Phase::Closed); // Saturday
        // Summer: regular hours move with daylight saving (09:30 EDT = 13:30 UTC).
        assert_eq!(aapl.phase_at(utc(2026, 7, 1, 13, 30)), Phase::Regular);
        assert_eq!(aapl.phase_at(utc(2026, 7, 1, 13, 29)), Phase::PreMarket);
        assert_eq!(Phase::Closed.activity(), 0);
        assert!(Phase::PreMarket.activity() < Phase::Regular.activity());
        assert_eq!(
            aapl.regular_bounds(2026, 11, 23),
            Some((utc(2026, 11, 23, 14, 30), utc(2026, 11, 23, 21, 0)))
        );
        assert_eq!(aapl.trading_day(utc(2026, 11, 23, 1, 0)), None);
    }

    #[test]
    fn futures_trade_from_the_evening_before_with_a_daily_halt() {
        let mnq = cal(711280073);
        assert_eq!(mnq.zone(), Zone::UsCentral);
        // Sunday 22 Nov 2026 17:00 CT (23:00 UTC) opens Monday's trading day.
        let sun_open = utc(2026, 11, 22, 23, 0);
        assert_eq!(mnq.phase_at(sun_open - 60), Phase::Closed);
        assert_eq!(mnq.phase_at(sun_open), Phase::PreMarket);
        assert_eq!(mnq.trading_day(sun_open), Some((2026, 11, 23)));
        assert_eq!(mnq.phase_at(utc(2026, 11, 23, 14, 30)), Phase::Regular); // 08:30 CT
        assert_eq!(mnq.phase_at(utc(2026, 11, 23, 21, 30)), Phase::PostMarket); // 15:30
        assert_eq!(mnq.phase_at(utc(2026, 11, 23, 22, 30)), Phase::Closed); // halt
        assert_eq!(
            mnq.trading_day(utc(2026, 11, 23, 23, 0)),
            Some((2026, 11, 24))
        );
        // Friday 16:00 CT closes the week; Saturday stays closed.
        assert_eq!(mnq.phase_at(utc(2026, 11, 27, 21, 59)), Phase::PostMarket);
        assert_eq!(mnq.phase_at(utc(2026, 11, 27, 23, 0)), Phase::Closed);
        assert_eq!(mnq.phase_at(utc(2026, 11, 28, 12, 0)), Phase::Closed);
        assert_eq!(
            mnq.day_bounds(2026, 11, 23),
            Some((sun_open, utc(2026, 11, 23, 22, 0)))
        );
        assert_eq!(mnq.day_bounds(2026, 11, 28), None);
    }

    #[test]
    fn fx_trades_round_the_clock_on_weekdays() {
        let eur = cal(12087792);
        assert_eq!(eur.phase_at(utc(2026, 11, 24, 3, 0)), Phase::Regular);
        assert_eq!(eur.phase_at(utc(2026, 11, 23, 22, 5)), Phase::Closed); // 17:05 ET
        assert_eq!(eur.phase_at(utc(2026, 11, 23, 22, 15)), Phase::Regular); // 17:15 ET
        assert_eq!(eur.phase_at(utc(2026, 11, 28, 3, 0)), Phase::Closed);
    }
}
