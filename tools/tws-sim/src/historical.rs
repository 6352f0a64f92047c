//! Historical ticks and head timestamps, answered from the deterministic generator, with IB's
//! historical pacing enforced.
//!
//! The market's time index: tick `k` of (seed, conId, kind) happened at `epoch + k / rate`
//! (nanoseconds, floored to the second as IB stamps history), where `epoch` is `--hist-epoch`
//! (default: when the simulator started) and `rate` the instrument's `--rate-for` or `--rate`.
//! Only ticks that have happened by the gateway's clock exist. TRADES is the AllLast stream,
//! BID_ASK the BidAsk stream, MIDPOINT the MidPoint stream; the head timestamp is the epoch.
//!
//! Answers follow IB: at most `numberOfTicks` (1..=1000) ticks, more to finish the last second
//! (or, for an `endDateTime` request, the first second), in one message with `done` set.
//! Refusals: 10187 "Failed to request historical ticks:..." for a malformed request (not
//! exactly one of start and end, a count outside 1..=1000, an unknown whatToShow, a date-time
//! it cannot read, no permissions); 321/200 for the contract as for live data; 162
//! "Historical Market Data Service error message:Historical data request pacing violation"
//! for a request that breaks a rule of [`ib_stream_tws::history::pacing`] (counted in
//! [`HistStats::pacing_violations`], not recorded against the budgets); 366 for a
//! cancelHeadTimestamp of no open query (every query is answered at once).
//!
//! The state lives in the [`Gateway`] (one account, as IB paces per account) behind a mutex:
//! historical requests are rare next to ticks.

use std::time::{Duration, Instant};

use ib_stream_tws::history::pacing::{HistKey, Pacer, PacingRules, Verdict};
use ib_stream_tws::history::time::{TimeError, format_utc, parse_utc};
use ib_stream_tws::msg::historical::MAX_TICKS_PER_REQUEST;
use ib_stream_tws::{
    HeadTimestampRequest, HistMid, HistReply, HistRequest, HistTicks, HistoricalTicksRequest,
    TbtQuote, TbtTrade, Timed,
};

use crate::expected::trade_strings;
use crate::gateway::Gateway;
use crate::generator::{TbtGen, TbtKind, TbtTick};
use crate::session::Reply;
use crate::universe::{ContractQuery, Entitlement, Instrument, Resolve};

/// IB's codes for historical requests.
pub mod code {
    /// Historical Market Data Service error (pacing violation, no data, ...).
    pub const HMDS: i32 = 162;
    /// No historical data query found for ticker id.
    pub const NO_QUERY: i32 = 366;
    /// Failed to request historical ticks.
    pub const TICKS_FAILED: i32 = 10187;
    /// 162's text for a pacing violation.
    pub const PACING_TEXT: &str =
        "Historical Market Data Service error message:Historical data request pacing violation";
}

/// Counters for the control channel's `stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HistStats {
    /// reqHistoricalTicks received.
    pub tick_requests: u64,
    /// Answered with ticks (possibly none).
    pub answered: u64,
    /// Refused for what they asked (10187, 321, 200).
    pub refused: u64,
    /// Refused with 162 for breaking a pacing rule.
    pub pacing_violations: u64,
    /// Ticks sent in answers.
    pub ticks_sent: u64,
    /// reqHeadTimeStamp answered.
    pub head_timestamps: u64,
    /// Weight used in the current 10-minute window.
    pub budget_used: u32,
}

/// The historical service's state (see the module docs).
#[derive(Debug)]
pub struct HistoricalDesk {
    epoch_ns: u128,
    origin: Instant,
    pacer: Pacer,
    stats: HistStats,
}

fn refuse(out: &mut Vec<Reply>, req_id: i32, code: i32, msg: String) {
    out.push(Reply::Error { req_id, code, msg });
}

fn ticks_failed(req_id: i32, why: &str) -> Reply {
    Reply::Error {
        req_id,
        code: code::TICKS_FAILED,
        msg: format!("Failed to request historical ticks:{why}"),
    }
}

/// The generator stream a whatToShow reads.
pub fn kind_for(what_to_show: &str) -> Option<TbtKind> {
    match what_to_show.to_ascii_uppercase().as_str() {
        "TRADES" => Some(TbtKind::AllLast),
        "BID_ASK" => Some(TbtKind::BidAsk),
        "MIDPOINT" => Some(TbtKind::MidPoint),
        _ => None,
    }
}

/// The market's time index for one instrument.
#[derive(Debug, Clone, Copy)]
pub struct TimeIndex {
    /// Unix nanoseconds of tick 0.
    pub epoch_ns: u128,
    /// Ticks a second.
    pub rate: f64,
}

impl TimeIndex {
    /// Unix nanoseconds of tick `k`.
    pub fn nanos(&self, k: u64) -> u128 {
        self.epoch_ns + (k as f64 * 1e9 / self.rate) as u128
    }

    /// The second IB stamps tick `k` with.
    pub fn second(&self, k: u64) -> i64 {
        (self.nanos(k) / 1_000_000_000) as i64
    }

    /// The first tick whose time is at or after Unix nanosecond `t` (the float estimate,
    /// corrected against [`TimeIndex::nanos`] so the answer is exact for it).
    pub fn first_at_or_after(&self, t: u128) -> u64 {
        if t <= self.epoch_ns {
            return 0;
        }
        let mut k = ((t - self.epoch_ns) as f64 * self.rate / 1e9) as u64;
        while k > 0 && self.nanos(k - 1) >= t {
            k -= 1;
        }
        while self.nanos(k) < t {
            k += 1;
        }
        k
    }

    /// The number of ticks that happened by Unix nanosecond `now` (ticks `0..n`).
    pub fn happened_by(&self, now: u128) -> u64 {
        if now < self.epoch_ns {
            return 0;
        }
        let mut k = self.first_at_or_after(now);
        while self.nanos(k) <= now {
            k += 1;
        }
        k
    }
}

/// Ticks `range` of a stream, stamped.
fn produce(
    seed: u64,
    inst: &Instrument,
    kind: TbtKind,
    idx: TimeIndex,
    range: std::ops::Range<u64>,
) -> HistTicks {
    let stream = TbtGen::new(seed, inst, kind)
        .enumerate()
        .skip(range.start as usize)
        .take((range.end - range.start) as usize);
    match kind {
        TbtKind::BidAsk => HistTicks::BidAsk(
            stream
                .filter_map(|(k, t)| match t {
                    TbtTick::BidAsk {
                        bid,
                        ask,
                        bid_size,
                        ask_size,
                        bid_past_low,
                        ask_past_high,
                    } => Some(Timed {
                        time: idx.second(k as u64),
                        tick: TbtQuote {
                            bid_price: bid,
                            ask_price: ask,
                            bid_size,
                            ask_size,
                            bid_past_low,
                            ask_past_high,
                        },
                    }),
                    _ => None,
                })
                .collect(),
        ),
        TbtKind::MidPoint => HistTicks::MidPoint(
            stream
                .filter_map(|(k, t)| match t {
                    TbtTick::MidPoint { mid } => Some(Timed {
                        time: idx.second(k as u64),
                        tick: HistMid {
                            price: mid,
                            size: 0,
                        },
                    }),
                    _ => None,
                })
                .collect(),
        ),
        TbtKind::Last | TbtKind::AllLast => HistTicks::Last(
            stream
                .filter_map(|(k, t)| match t {
                    TbtTick::Trade {
                        price,
                        size,
                        past_limit,
                        unreported,
                        exchange,
                        conditions,
                    } => {
                        let (ex, cond) = trade_strings(inst, exchange, conditions);
                        Some(Timed {
                            time: idx.second(k as u64),
                            tick: TbtTrade {
                                price,
                                size,
                                past_limit,
                                unreported,
                                exchange: ex.to_owned(),
                                special_conditions: cond.to_owned(),
                            },
                        })
                    }
                    _ => None,
                })
                .collect(),
        ),
    }
}

/// Which ticks answer a request, given the ticks `0..happened` that exist.
fn select(
    idx: TimeIndex,
    happened: u64,
    start: Option<i64>,
    end: Option<i64>,
    n: u64,
) -> std::ops::Range<u64> {
    let ns = |s: i64| u128::try_from(s.max(0)).unwrap_or(0) * 1_000_000_000;
    if let Some(start) = start {
        let first = idx.first_at_or_after(ns(start)).min(happened);
        let mut last = (first + n).min(happened);
        // More than asked, to finish the last second.
        if last > first {
            let sec = idx.second(last - 1);
            while last < happened && idx.second(last) == sec {
                last += 1;
            }
        }
        first..last
    } else {
        // endDateTime: the last n ticks stamped at or before it, extended back to finish the
        // first second.
        let end = end.unwrap_or(0);
        let last = idx
            .first_at_or_after(ns(end.saturating_add(1)))
            .min(happened);
        let mut first = last.saturating_sub(n);
        if first < last {
            let sec = idx.second(first);
            while first > 0 && idx.second(first - 1) == sec {
                first -= 1;
            }
        }
        first..last
    }
}

impl HistoricalDesk {
    /// A desk whose tick 0 is at Unix nanosecond `epoch_ns`; `origin` is the instant its
    /// pacing clock starts.
    pub fn new(epoch_ns: u128, origin: Instant) -> Self {
        Self {
            epoch_ns,
            origin,
            pacer: Pacer::new(PacingRules::default()),
            stats: HistStats::default(),
        }
    }

    /// Moves tick 0 to Unix nanosecond `epoch_ns` (`--hist-epoch`).
    pub fn set_epoch(&mut self, epoch_ns: u128) {
        self.epoch_ns = epoch_ns;
    }

    /// Unix nanoseconds of tick 0.
    pub fn epoch_ns(&self) -> u128 {
        self.epoch_ns
    }

    /// The counters, with the budget used at `now`.
    pub fn stats(&self, now: Instant) -> HistStats {
        HistStats {
            budget_used: self.pacer.stats(self.clock(now)).budget_used,
            ..self.stats
        }
    }

    fn clock(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.origin)
    }
}

impl Gateway {
    /// Serves one historical request at `now`.
    pub fn serve_historical(&self, req: HistRequest, now: Instant, out: &mut Vec<Reply>) {
        match req {
            HistRequest::Ticks(r) => self.historical_ticks(r, now, out),
            HistRequest::HeadTimestamp(r) => self.head_timestamp(r, out),
            // Every query is answered at once, so none is ever open to cancel.
            HistRequest::CancelHeadTimestamp { req_id } => refuse(
                out,
                req_id,
                code::NO_QUERY,
                format!("No historical data query found for ticker id:{req_id}"),
            ),
        }
    }

    /// The counters of the historical service.
    pub fn historical_stats(&self, now: Instant) -> HistStats {
        self.historical_desk().stats(now)
    }

    /// Moves the historical time index's tick 0 to Unix second `secs`.
    pub fn set_historical_epoch(&self, secs: i64) {
        let ns = u128::try_from(secs.max(0)).unwrap_or(0) * 1_000_000_000;
        self.historical_desk().set_epoch(ns);
    }

    /// The time index of an instrument.
    pub fn time_index(&self, con_id: i32) -> TimeIndex {
        let cfg = self.config();
        TimeIndex {
            epoch_ns: self.historical_desk().epoch_ns(),
            rate: cfg.rate_for.get(&con_id).copied().unwrap_or(cfg.rate),
        }
    }

    fn resolve_hist(
        &self,
        req_id: i32,
        c: &ib_stream_tws::Contract,
        out: &mut Vec<Reply>,
    ) -> Option<usize> {
        let q = ContractQuery::from(c);
        if let Some(cause) = crate::session::contract_problem(&q) {
            out.push(crate::session::invalid(req_id, "bX", cause));
            return None;
        }
        match self.universe().resolve(&q) {
            Resolve::Found(i) => Some(i),
            Resolve::NotFound => {
                out.push(Reply::Error {
                    req_id,
                    code: crate::session::code::NO_SECURITY,
                    msg: crate::session::code::text(crate::session::code::NO_SECURITY).into(),
                });
                None
            }
            Resolve::Ambiguous => {
                out.push(Reply::Error {
                    req_id,
                    code: crate::session::code::NO_SECURITY,
                    msg: format!(
                        "The contract description specified for {} is ambiguous.",
                        q.describe()
                    ),
                });
                None
            }
        }
    }

    fn historical_ticks(&self, r: HistoricalTicksRequest, now: Instant, out: &mut Vec<Reply>) {
        let req_id = r.req_id;
        self.historical_desk().stats.tick_requests += 1;
        let refused_before = out.len();
        let answer = self.check_ticks(&r, out).map(|(inst, kind, start, end)| {
            let key = HistKey::new(
                self.universe().get(inst).con_id().to_string(),
                r.contract.exchange.to_ascii_uppercase(),
                &r.what_to_show,
                format!(
                    "{}|{}|{}|{}|{}",
                    r.start, r.end, r.number_of_ticks, r.use_rth, r.ignore_size
                ),
            );
            (inst, kind, start, end, key)
        });
        let Some((inst, kind, start, end, key)) = answer else {
            if out.len() > refused_before {
                self.historical_desk().stats.refused += 1;
            }
            return;
        };
        {
            let mut desk = self.historical_desk();
            let clock = desk.clock(now);
            if let Verdict::Wait { rule, .. } = desk.pacer.try_send(clock, &key) {
                desk.stats.pacing_violations += 1;
                tracing::warn!(
                    req_id,
                    rule = rule.name(),
                    "historical pacing violation: 162"
                );
                refuse(out, req_id, code::HMDS, code::PACING_TEXT.into());
                return;
            }
            // Answered at once: the request is open only while this runs.
            desk.pacer.release();
        }
        let instrument = self.universe().get(inst);
        let idx = self.time_index(instrument.con_id());
        let happened = idx.happened_by(self.unix_nanos(now));
        let range = select(idx, happened, start, end, r.number_of_ticks as u64);
        let ticks = produce(self.config().session.seed, instrument, kind, idx, range);
        {
            let mut desk = self.historical_desk();
            desk.stats.answered += 1;
            desk.stats.ticks_sent += ticks.len() as u64;
        }
        out.push(Reply::Historical(Box::new(HistReply::Ticks {
            req_id,
            ticks,
            done: true,
        })));
    }

    /// What IB refuses in a reqHistoricalTicks; the instrument, stream and times otherwise.
    #[allow(clippy::type_complexity)]
    fn check_ticks(
        &self,
        r: &HistoricalTicksRequest,
        out: &mut Vec<Reply>,
    ) -> Option<(usize, TbtKind, Option<i64>, Option<i64>)> {
        let req_id = r.req_id;
        let inst = self.resolve_hist(req_id, &r.contract, out)?;
        let Some(kind) = kind_for(&r.what_to_show) else {
            out.push(ticks_failed(
                req_id,
                &format!(
                    "Invalid whatToShow '{}': TRADES, BID_ASK or MIDPOINT",
                    r.what_to_show
                ),
            ));
            return None;
        };
        if !(1..=MAX_TICKS_PER_REQUEST).contains(&r.number_of_ticks) {
            out.push(ticks_failed(
                req_id,
                &format!(
                    "numberOfTicks {} is outside 1..{MAX_TICKS_PER_REQUEST}",
                    r.number_of_ticks
                ),
            ));
            return None;
        }
        let (start, end) = (r.start.trim(), r.end.trim());
        if start.is_empty() == end.is_empty() {
            out.push(ticks_failed(
                req_id,
                "Exactly one of start time and end time has to be defined",
            ));
            return None;
        }
        let parse = |s: &str| -> Result<Option<i64>, TimeError> {
            if s.is_empty() {
                Ok(None)
            } else {
                parse_utc(s).map(Some)
            }
        };
        let (start, end) = match (parse(start), parse(end)) {
            (Ok(s), Ok(e)) => (s, e),
            (Err(e), _) | (_, Err(e)) => {
                out.push(ticks_failed(req_id, &format!("Invalid date-time: {e}")));
                return None;
            }
        };
        let instrument = self.universe().get(inst);
        if instrument.spec.entitlement != Entitlement::Live {
            out.push(ticks_failed(
                req_id,
                &format!(
                    "No market data permissions for {} {}",
                    instrument.spec.primary_exchange, instrument.spec.sec_type
                ),
            ));
            return None;
        }
        Some((inst, kind, start, end))
    }

    fn head_timestamp(&self, r: HeadTimestampRequest, out: &mut Vec<Reply>) {
        let req_id = r.req_id;
        if self.resolve_hist(req_id, &r.contract, out).is_none() {
            return;
        }
        if kind_for(&r.what_to_show).is_none() {
            refuse(
                out,
                req_id,
                code::HMDS,
                format!(
                    "Historical Market Data Service error message:No head time stamp for whatToShow {}",
                    r.what_to_show
                ),
            );
            return;
        }
        let secs = {
            let mut desk = self.historical_desk();
            desk.stats.head_timestamps += 1;
            (desk.epoch_ns / 1_000_000_000) as i64
        };
        let timestamp = if r.format_date == 2 {
            secs.to_string()
        } else {
            format_utc(secs)
        };
        out.push(Reply::Historical(Box::new(HistReply::HeadTimestamp {
            req_id,
            timestamp,
        })));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_index_is_exact_at_its_own_boundaries() {
        for rate in [0.7, 1.0, 3.0, 7.5, 1000.0] {
            let idx = TimeIndex {
                epoch_ns: 1_767_277_800_250_000_000,
                rate,
            };
            for k in 0..200 {
                let t = idx.nanos(k);
                assert_eq!(idx.first_at_or_after(t), k);
                assert_eq!(idx.first_at_or_after(t + 1), k + 1);
                assert_eq!(idx.happened_by(t), k + 1);
                assert_eq!(idx.happened_by(t - 1), k);
            }
        }
    }

    #[test]
    fn selection_finishes_the_second_both_ways() {
        // 4 ticks a second from second 100: ticks 4s..4s+3 are stamped 100+s.
        let idx = TimeIndex {
            epoch_ns: 100_000_000_000,
            rate: 4.0,
        };
        // From 101, 5 ticks: 4 of second 101, 1 of 102, finished to 4 of 102.
        assert_eq!(select(idx, 1000, Some(101), None, 5), 4..12);
        // Only what happened.
        assert_eq!(select(idx, 10, Some(101), None, 5), 4..10);
        // Before tick 0: from tick 0.
        assert_eq!(select(idx, 1000, Some(50), None, 2), 0..4);
        // Up to 102 inclusive, last 5: ticks 7..12 then back to finish second 101: 4..12.
        assert_eq!(select(idx, 1000, None, Some(102), 5), 4..12);
        // Nothing before the epoch.
        assert_eq!(select(idx, 1000, None, Some(99), 5), 0..0);
    }
}
