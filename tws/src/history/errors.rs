//! Historical errors classified: what an error 162 (or 10187, 366, 322) means and whether
//! asking again can help.
//!
//! IB sends 162 with `Historical Market Data Service error message:` and a reason; the reasons
//! seen from real gateways are matched here. "No data" has several causes IB does not tell
//! apart in its text (nothing traded, before the instrument's first data, outside regular
//! hours with `useRTH`); [`refine`] uses what the caller knows (the head timestamp, whether the
//! range lies in trading hours) to say which.

use std::time::Duration;

/// What a historical error means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HistErrorKind {
    /// "Historical data request pacing violation".
    PacingViolation,
    /// "HMDS query returned no data", "No historical market data for ...".
    NoData,
    /// No data because the range ends before the head timestamp (from [`refine`]).
    BeforeHeadTimestamp,
    /// No data because the range lies outside trading hours with useRTH (from [`refine`]).
    OutsideMarketHours,
    /// "API historical data query cancelled: <id>" (by us, or by the gateway).
    Cancelled,
    /// "No market data permissions for ...", 10187 without permissions.
    NoPermissions,
    /// A request IB refuses as malformed (10187 and 321 texts, 322 duplicate id).
    Invalid,
    /// 366: no such query (a cancel that came too late).
    NoSuchQuery,
    /// Any other text.
    Other,
}

/// Whether to ask again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// No: the answer will not change.
    Never,
    /// Yes, after this long.
    After(Duration),
}

impl HistErrorKind {
    /// A short name for logs and gap records.
    pub fn name(self) -> &'static str {
        match self {
            Self::PacingViolation => "pacing_violation",
            Self::NoData => "no_data",
            Self::BeforeHeadTimestamp => "before_head_timestamp",
            Self::OutsideMarketHours => "outside_market_hours",
            Self::Cancelled => "cancelled",
            Self::NoPermissions => "no_permissions",
            Self::Invalid => "invalid_request",
            Self::NoSuchQuery => "no_such_query",
            Self::Other => "other",
        }
    }

    /// Whether to ask again after the `attempt`-th failure (1 = the first): pacing violations
    /// and gateway-side cancels back off (15 s doubling, capped at 10 minutes, the longest
    /// pacing window); "other" 162s get three tries; the rest never change by asking again.
    pub fn retry(self, attempt: u32) -> Retry {
        let backoff = |base: u64| {
            let secs = base.saturating_mul(1u64 << attempt.saturating_sub(1).min(16));
            Retry::After(Duration::from_secs(secs.min(600)))
        };
        match self {
            Self::PacingViolation | Self::Cancelled => backoff(15),
            Self::Other if attempt <= 3 => backoff(5),
            _ => Retry::Never,
        }
    }
}

/// Classifies an error by code and text.
pub fn classify(code: i32, text: &str) -> HistErrorKind {
    let t = text.to_ascii_lowercase();
    match code {
        162 if t.contains("pacing violation") => HistErrorKind::PacingViolation,
        162 if t.contains("query returned no data") || t.contains("no historical market data") => {
            HistErrorKind::NoData
        }
        162 if t.contains("query cancelled") || t.contains("query canceled") => {
            HistErrorKind::Cancelled
        }
        162 | 10187 if t.contains("no market data permissions") => HistErrorKind::NoPermissions,
        10187 | 321 | 322 => HistErrorKind::Invalid,
        366 => HistErrorKind::NoSuchQuery,
        _ => HistErrorKind::Other,
    }
}

/// What the caller knows about a request that came back with no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NoDataContext {
    /// The request's range `[from, to)` in Unix seconds.
    pub from: i64,
    /// End (exclusive).
    pub to: i64,
    /// The instrument's head timestamp for this whatToShow, when known.
    pub head_timestamp: Option<i64>,
    /// The range lies wholly outside the instrument's trading hours and useRTH was set.
    pub outside_rth: bool,
}

/// Narrows [`HistErrorKind::NoData`] with what the caller knows; other kinds pass unchanged.
pub fn refine(kind: HistErrorKind, ctx: &NoDataContext) -> HistErrorKind {
    if kind != HistErrorKind::NoData {
        return kind;
    }
    if ctx.head_timestamp.is_some_and(|h| ctx.to <= h) {
        HistErrorKind::BeforeHeadTimestamp
    } else if ctx.outside_rth {
        HistErrorKind::OutsideMarketHours
    } else {
        HistErrorKind::NoData
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HMDS: &str = "Historical Market Data Service error message:";

    #[test]
    fn real_gateway_texts_are_classified() {
        let cases = [
            (
                162,
                "Historical data request pacing violation",
                HistErrorKind::PacingViolation,
            ),
            (
                162,
                "HMDS query returned no data: ESM3@CME Trades",
                HistErrorKind::NoData,
            ),
            (
                162,
                "No historical market data for EUR/CASH@IDEALPRO Last 60",
                HistErrorKind::NoData,
            ),
            (
                162,
                "API historical data query cancelled: 28",
                HistErrorKind::Cancelled,
            ),
            (
                162,
                "No market data permissions for NYSE STK",
                HistErrorKind::NoPermissions,
            ),
            (162, "Some new reason", HistErrorKind::Other),
        ];
        for (code, reason, want) in cases {
            assert_eq!(classify(code, &format!("{HMDS}{reason}")), want, "{reason}");
        }
        assert_eq!(
            classify(
                10187,
                "Failed to request historical ticks:No market data permissions for ISLAND STK"
            ),
            HistErrorKind::NoPermissions
        );
        assert_eq!(
            classify(
                10187,
                "Failed to request historical ticks:Only one of start and end may be given"
            ),
            HistErrorKind::Invalid
        );
        assert_eq!(
            classify(366, "No historical data query found for ticker id:4"),
            HistErrorKind::NoSuchQuery
        );
    }

    #[test]
    fn only_retries_that_can_help_are_made_with_backoff() {
        use HistErrorKind::*;
        assert_eq!(
            PacingViolation.retry(1),
            Retry::After(Duration::from_secs(15))
        );
        assert_eq!(
            PacingViolation.retry(3),
            Retry::After(Duration::from_secs(60))
        );
        assert_eq!(
            PacingViolation.retry(40),
            Retry::After(Duration::from_secs(600))
        );
        assert_eq!(Cancelled.retry(2), Retry::After(Duration::from_secs(30)));
        assert_eq!(Other.retry(3), Retry::After(Duration::from_secs(20)));
        assert_eq!(Other.retry(4), Retry::Never);
        for k in [
            NoData,
            BeforeHeadTimestamp,
            OutsideMarketHours,
            NoPermissions,
            Invalid,
            NoSuchQuery,
        ] {
            assert_eq!(k.retry(1), Retry::Never, "{k:?}");
        }
    }

    #[test]
    fn no_data_is_narrowed_by_what_the_caller_knows() {
        let ctx = |head, outside_rth| NoDataContext {
            from: 1000,
            to: 2000,
            head_timestamp: head,
            outside_rth,
        };
        let nd = HistErrorKind::NoData;
        assert_eq!(
            refine(nd, &ctx(Some(2000), false)),
            HistErrorKind::BeforeHeadTimestamp
        );
        assert_eq!(refine(nd, &ctx(Some(1999), false)), HistErrorKind::NoData);
        assert_eq!(
            refine(nd, &ctx(None, true)),
            HistErrorKind::OutsideMarketHours
        );
        assert_eq!(refine(nd, &ctx(Some(500), false)), HistErrorKind::NoData);
        assert_eq!(
            refine(HistErrorKind::PacingViolation, &ctx(Some(5000), true)),
            HistErrorKind::PacingViolation
        );
    }
}
