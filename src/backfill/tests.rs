//! The core against a model gateway on a virtual clock: IB's answer rule (the first N ticks
//! at or after the start, the last second finished), its pacing rules checked independently
//! ([`schedule_breaks`]), and its 162s.

use std::time::Duration;

use ib_stream_ipc::{PRICE_SCALE, RecordKind};
use ib_stream_tws::history::pacing::schedule_breaks;
use ib_stream_tws::history::time::parse_utc;
use ib_stream_tws::history::{HistKey, PacingRules};
use ib_stream_tws::{Contract, HistMid, HistReply, HistRequest, HistTicks, Timed};

use super::core::{Action, Backfill, Finished, Job, Progress};
use crate::storage::backfill::{FillKey, FillState};

const T: i64 = 1_767_277_800;

/// Tick `i` of the model market: its second and price. Busy seconds (10 and 11 ticks) next
/// to quiet ones, so that pages of 7 end inside seconds again and again.
fn market() -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    for s in 0..40 {
        let n = match s % 5 {
            0 => 10,
            1 => 0,
            2 => 11,
            3 => 1,
            _ => 3,
        };
        for k in 0..n {
            out.push((T + s, (s * 100 + k) * PRICE_SCALE));
        }
    }
    out
}

fn job(kind: RecordKind, from_s: i64, to_s: i64) -> Job {
    Job {
        key: FillKey {
            gap_epoch: 9,
            gap_seq: 4,
            con_id: 265_598,
            kind,
        },
        from_s,
        to_s,
        contract: Contract {
            con_id: 265_598,
            exchange: "SMART".into(),
            ..Contract::default()
        },
    }
}

/// IB's answer to a MIDPOINT request over `market`: the first `n` ticks at or after the
/// start, then the rest of the last second.
fn answer(market: &[(i64, i64)], start: i64, n: usize) -> Vec<Timed<HistMid>> {
    let from = market.partition_point(|(t, _)| *t < start);
    let mut end = (from + n).min(market.len());
    if end > from {
        let last = market[end - 1].0;
        while end < market.len() && market[end].0 == last {
            end += 1;
        }
    }
    market[from..end]
        .iter()
        .map(|&(time, price)| Timed {
            time,
            tick: HistMid { price, size: 0 },
        })
        .collect()
}

/// Runs the core to the end against the model gateway; `fail(i)` may turn the i-th request
/// into an error (code, text). Returns the finished fills and every send with its time.
fn drive(
    bf: &mut Backfill,
    jobs: Vec<Job>,
    market: &[(i64, i64)],
    mut fail: impl FnMut(usize) -> Option<(i32, &'static str)>,
) -> (Vec<Finished>, Vec<(Duration, HistKey)>) {
    let (done, sends, _) = drive_sampled(bf, jobs, market, &mut fail);
    (done, sends)
}

/// What a drive gives: the finished fills, every send with its time, the progress at every
/// step.
type Drive = (
    Vec<Finished>,
    Vec<(Duration, HistKey)>,
    Vec<(Duration, Progress)>,
);

/// [`drive`], with the progress at every step.
fn drive_sampled(
    bf: &mut Backfill,
    jobs: Vec<Job>,
    market: &[(i64, i64)],
    mut fail: impl FnMut(usize) -> Option<(i32, &'static str)>,
) -> Drive {
    let mut samples = Vec::new();
    let mut now = Duration::ZERO;
    let mut out = Vec::new();
    for j in jobs {
        bf.add(j, &mut out);
    }
    let mut done = Vec::new();
    let mut sends = Vec::new();
    for _ in 0..100_000 {
        bf.poll(now, &mut out);
        samples.push((now, bf.progress(now)));
        let mut replies = Vec::new();
        for a in out.drain(..) {
            match a {
                Action::Store(f) => done.push(*f),
                Action::Send(req) => {
                    let HistRequest::Ticks(r) = *req else {
                        panic!("not a ticks request")
                    };
                    let start = parse_utc(&r.start).unwrap();
                    sends.push((
                        now,
                        HistKey::new(
                            r.contract.con_id.to_string(),
                            r.contract.exchange.clone(),
                            &r.what_to_show,
                            format!("{start} {}", r.number_of_ticks),
                        ),
                    ));
                    replies.push((sends.len() - 1, r.req_id, start, r.number_of_ticks));
                }
            }
        }
        for (i, req_id, start, n) in replies {
            match fail(i) {
                Some((code, text)) => {
                    bf.on_error(now, req_id, code, text, &mut out);
                }
                None => {
                    let ticks = HistTicks::MidPoint(answer(market, start, n as usize));
                    let reply = HistReply::Ticks {
                        req_id,
                        ticks,
                        done: true,
                    };
                    assert!(bf.on_reply(now, reply, &mut out));
                }
            }
        }
        if bf.is_idle() && out.is_empty() {
            break;
        }
        if out.is_empty() {
            match bf.next_wake(now) {
                Some(t) if t > now => now = t,
                Some(_) => {}
                None => panic!("stuck with nothing to wake for"),
            }
        }
    }
    assert!(bf.is_idle(), "the backfill ends");
    (done, sends, samples)
}

fn prices(f: &Finished) -> Vec<(i64, i64)> {
    f.records
        .iter()
        .map(|r| (r.ts_recv / 1_000_000_000, r.body[0]))
        .collect()
}

#[test]
fn pages_ending_inside_busy_seconds_lose_and_double_nothing() {
    let m = market();
    for per_page in [1, 2, 3, 7, 10, 11, 12, 1000] {
        for (from, to) in [(T, T + 40), (T + 2, T + 13), (T + 1, T + 2), (T + 5, T + 6)] {
            let mut bf = Backfill::new(PacingRules::default(), 1, per_page);
            let (done, sends) = drive(
                &mut bf,
                vec![job(RecordKind::TbtMidPoint, from, to)],
                &m,
                |_| None,
            );
            assert_eq!(done.len(), 1);
            let want: Vec<(i64, i64)> = m
                .iter()
                .filter(|(t, _)| *t >= from && *t < to)
                .copied()
                .collect();
            assert_eq!(
                prices(&done[0]),
                want,
                "pages of {per_page}, [{from}, {to})"
            );
            assert_eq!(done[0].fill.state, FillState::Filled);
            assert_eq!(schedule_breaks(&PacingRules::default(), &sends), None);
        }
    }
}

#[test]
fn a_long_gap_keeps_every_pacing_rule_and_says_its_eta() {
    // Five fills of 40 s in pages of 2: about 160 requests, far past the budget of 60 per
    // 10 minutes, so most of them wait.
    let m = market();
    let rules = PacingRules::default();
    let mut bf = Backfill::new(rules, 1, 2);
    let jobs: Vec<Job> = (0..5)
        .map(|i| {
            let mut j = job(RecordKind::TbtMidPoint, T, T + 40);
            j.key.gap_seq = i;
            j
        })
        .collect();
    let (done, sends, samples) = drive_sampled(&mut bf, jobs, &m, |_| None);
    assert_eq!(done.len(), 5);
    assert!(done.iter().all(|f| f.fill.state == FillState::Filled));
    let n = sends.len();
    assert!(n > 150, "{n} requests");
    assert_eq!(schedule_breaks(&rules, &sends), None);
    // The budget is the limit: request k goes at the earliest in window k / 60.
    let last = sends.last().unwrap().0;
    assert!(
        last >= Duration::from_secs(600 * ((n as u64 - 1) / 60)),
        "{last:?}"
    );
    assert!(
        last < Duration::from_secs(600 * ((n as u64 - 1) / 60 + 1)),
        "{last:?}"
    );
    assert_eq!(bf.progress(last).violations, 0);
    // Halfway, the estimate is within a quarter of what it really took.
    let (t, p) = samples
        .iter()
        .find(|(_, p)| p.requests as usize >= n / 2)
        .unwrap();
    let real = (last - *t).as_secs_f64();
    assert!(p.eta_s > 0);
    assert!(
        (p.eta_s as f64 - real).abs() <= real / 4.0,
        "eta {} s, took {real} s",
        p.eta_s
    );
}

#[test]
fn pacing_violations_are_retried_and_no_data_is_not() {
    let m = market();
    // The 2nd request is refused for pacing: asked again after a backoff, the fill completes.
    let mut bf = Backfill::new(PacingRules::default(), 1, 7);
    let (done, sends) = drive(
        &mut bf,
        vec![job(RecordKind::TbtMidPoint, T, T + 20)],
        &m,
        |i| {
            (i == 1).then_some((162, "Historical Market Data Service error message:Historical data request pacing violation"))
        },
    );
    assert_eq!(done[0].fill.state, FillState::Filled);
    assert_eq!(sends[1].1, sends[2].1, "the same page asked again");
    assert!(
        sends[2].0 >= sends[1].0 + Duration::from_secs(15),
        "after the backoff"
    );
    assert_eq!(bf.progress(sends[2].0).violations, 1);
    let want: Vec<(i64, i64)> = m.iter().filter(|(t, _)| *t < T + 20).copied().collect();
    assert_eq!(prices(&done[0]), want);

    // "No data" on the 3rd page: the rest is missing, with the reason; not asked again.
    let mut bf = Backfill::new(PacingRules::default(), 1, 7);
    let (done, sends) = drive(
        &mut bf,
        vec![job(RecordKind::TbtMidPoint, T, T + 20)],
        &m,
        |i| {
            (i == 2).then_some((162, "Historical Market Data Service error message:HMDS query returned no data: AAPL@SMART Midpoint"))
        },
    );
    assert_eq!(sends.len(), 3);
    let FillState::Partial { missing, why } = &done[0].fill.state else {
        panic!("{:?}", done[0].fill.state)
    };
    let cursor = parse_utc(&ib_stream_tws::history::time::format_utc(T)).unwrap();
    assert_eq!(missing.len(), 1);
    assert!(missing[0][0] > cursor * 1_000_000_000 && missing[0][1] == (T + 20) * 1_000_000_000);
    assert!(why.starts_with("no_data"), "{why}");
    // What was kept ends exactly where the missing range starts.
    let kept_to = missing[0][0] / 1_000_000_000;
    let want: Vec<(i64, i64)> = m.iter().filter(|(t, _)| *t < kept_to).copied().collect();
    assert_eq!(prices(&done[0]), want);

    // Refused from the first page (no permissions): unavailable, with IB's words.
    let mut bf = Backfill::new(PacingRules::default(), 1, 7);
    let (done, _) = drive(
        &mut bf,
        vec![job(RecordKind::TbtMidPoint, T, T + 20)],
        &m,
        |_| {
            Some((
                162,
                "Historical Market Data Service error message:No market data permissions for NYSE STK",
            ))
        },
    );
    let FillState::Unavailable { why } = &done[0].fill.state else {
        panic!("{:?}", done[0].fill.state)
    };
    assert!(
        why.contains("no_permissions") && why.contains("NYSE STK"),
        "{why}"
    );
    assert!(done[0].records.is_empty());
}

#[test]
fn a_job_is_asked_once_per_run_and_kinds_without_history_are_unavailable() {
    let mut bf = Backfill::new(PacingRules::default(), 1, 1000);
    let mut out = Vec::new();
    assert!(bf.add(job(RecordKind::TbtMidPoint, T, T + 5), &mut out));
    assert!(!bf.add(job(RecordKind::TbtMidPoint, T, T + 5), &mut out));
    assert!(out.is_empty());
    assert!(bf.add(job(RecordKind::L1Price, T, T + 5), &mut out));
    match out.pop() {
        Some(Action::Store(f)) => assert!(matches!(f.fill.state, FillState::Unavailable { .. })),
        other => panic!("{other:?}"),
    }
    // An answer nobody asked for is not taken.
    let stray = HistReply::Ticks {
        req_id: 999,
        ticks: HistTicks::MidPoint(Vec::new()),
        done: true,
    };
    assert!(!bf.on_reply(Duration::ZERO, stray, &mut out));
}

#[test]
fn a_lost_connection_asks_the_open_page_again() {
    let m = market();
    let mut bf = Backfill::new(PacingRules::default(), 1, 7);
    let mut out = Vec::new();
    bf.add(job(RecordKind::TbtMidPoint, T, T + 3), &mut out);
    bf.poll(Duration::ZERO, &mut out);
    let first = match out.pop() {
        Some(Action::Send(req)) => match *req {
            HistRequest::Ticks(r) => r,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    bf.on_disconnect(&mut out);
    // After the identical-request window the same page goes again, under a new id.
    bf.poll(Duration::from_secs(16), &mut out);
    let again = match out.pop() {
        Some(Action::Send(req)) => match *req {
            HistRequest::Ticks(r) => r,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (again.start.as_str(), again.number_of_ticks),
        (first.start.as_str(), 7)
    );
    assert_ne!(again.req_id, first.req_id);
    // The old id's late answer is not taken.
    let late = HistReply::Ticks {
        req_id: first.req_id,
        ticks: HistTicks::MidPoint(answer(&m, T, 7)),
        done: true,
    };
    assert!(!bf.on_reply(Duration::from_secs(16), late, &mut out));
}
