//! The subscription manager driven alone, on a virtual clock.

use super::*;

const S: u64 = 1_000_000_000;

fn key(con_id: u32, kind: SubKind) -> SubKey {
    SubKey { con_id, kind }
}

fn connected() -> SubscriptionManager {
    let mut m = SubscriptionManager::new(Limits::default(), 1000);
    m.on_connected();
    m
}

fn drain(m: &mut SubscriptionManager, now: u64) -> Vec<Request> {
    std::iter::from_fn(|| m.next_request(now)).collect()
}

#[test]
fn one_request_per_key_shared_and_reference_counted() {
    let mut m = connected();
    let k = key(711_280_073, SubKind::BidAsk);
    assert!(!m.subscribe("web", k, 0).unwrap().shared);
    assert!(m.subscribe("strategy", k, 0).unwrap().shared);
    let reqs = drain(&mut m, 0);
    assert_eq!(
        reqs,
        vec![Request::TickByTick {
            req_id: 1000,
            con_id: 711_280_073,
            kind: SubKind::BidAsk
        }]
    );
    assert_eq!(m.unsubscribe("web", k), Some(1));
    assert!(drain(&mut m, 0).is_empty(), "still held by strategy");
    assert_eq!(m.unsubscribe("web", k), None, "web no longer holds it");
    assert_eq!(m.unsubscribe("strategy", k), Some(0));
    assert_eq!(
        drain(&mut m, 0),
        vec![Request::CancelTickByTick { req_id: 1000 }]
    );
    assert_eq!(
        m.on_tick(1000, 1),
        None,
        "late ticks of a cancelled id are not routed"
    );
}

/// A request held back by the 15-second rule says when it will be sent.
#[test]
fn a_request_held_by_the_same_instrument_window_says_when_it_goes() {
    let mut m = connected();
    let k = key(265_598, SubKind::BidAsk);
    m.subscribe("web", k, 0).unwrap();
    assert_eq!(drain(&mut m, 0).len(), 1);
    assert_eq!(m.queued_until(k, S), None, "out at IB");
    m.unsubscribe("web", k);
    drain(&mut m, S);
    m.subscribe("web", k, 2 * S).unwrap();
    assert_eq!(m.queued_until(k, 2 * S), Some(15 * S));
    assert!(drain(&mut m, 2 * S).is_empty());
    assert_eq!(m.queued_until(k, 15 * S), None, "due now");
    assert_eq!(drain(&mut m, 15 * S).len(), 1);
}

/// Rejected subscriptions (unknown contracts) leave nothing behind in the manager: not
/// the subscription, and not their same-instrument times once the window has passed.
#[test]
fn rejected_subscriptions_are_forgotten() {
    let mut m = connected();
    for c in 0..300u32 {
        let now = u64::from(c) * S;
        m.subscribe("web", key(10_000 + c, SubKind::BidAsk), now)
            .unwrap();
        let reqs = drain(&mut m, now);
        let [Request::TickByTick { req_id, .. }] = reqs[..] else {
            panic!("{reqs:?}")
        };
        m.on_error(req_id, 200);
    }
    assert_eq!(m.list().count(), 0);
    assert!(
        m.tbt_last_request.len() <= 16,
        "{} same-instrument times kept",
        m.tbt_last_request.len()
    );
}

#[test]
fn cancel_all_cancels_what_is_out_at_ib_and_nothing_else() {
    let mut m = connected();
    m.subscribe("a", key(1, SubKind::BidAsk), 0).unwrap();
    m.subscribe("b", key(2, SubKind::MktData), 0).unwrap();
    m.subscribe("a", key(1, SubKind::Last), 0).unwrap();
    // BidAsk and MktData go out; Last waits for the 15-second rule.
    assert_eq!(drain(&mut m, 0).len(), 2);
    assert_eq!(m.queued(), 1);
    while m.poll_event().is_some() {}
    assert_eq!(m.cancel_all(), 2);
    let mut reqs = drain(&mut m, 100 * S);
    reqs.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(
        reqs,
        vec![
            Request::CancelMktData { req_id: 1001 },
            Request::CancelTickByTick { req_id: 1000 },
        ]
    );
    let finals: Vec<SubState> = std::iter::from_fn(|| m.poll_event())
        .map(|e| e.state)
        .collect();
    assert_eq!(finals, vec![SubState::Cancelled; 3]);
    assert_eq!(m.list().count(), 0);

    // Not connected: nothing is out at IB, so nothing to cancel.
    let mut m = SubscriptionManager::new(Limits::default(), 1000);
    m.subscribe("a", key(1, SubKind::BidAsk), 0).unwrap();
    assert_eq!(m.cancel_all(), 0);
}

#[test]
fn fifteen_second_rule_queues_the_second_kind_of_an_instrument() {
    let mut m = connected();
    m.subscribe("a", key(1, SubKind::BidAsk), 0).unwrap();
    m.subscribe("a", key(1, SubKind::Last), 0).unwrap();
    m.subscribe("a", key(2, SubKind::Last), 0).unwrap();
    m.subscribe("a", key(1, SubKind::MktData), 0).unwrap();
    let first = drain(&mut m, 0);
    assert_eq!(first.len(), 3, "{first:?}");
    assert!(first.iter().all(|r| !matches!(
        r,
        Request::TickByTick {
            con_id: 1,
            kind: SubKind::Last,
            ..
        }
    )));
    assert_eq!(m.next_deadline(S), Some(15 * S));
    assert!(drain(&mut m, 15 * S - 1).is_empty());
    assert_eq!(
        drain(&mut m, 15 * S),
        vec![Request::TickByTick {
            req_id: 1003,
            con_id: 1,
            kind: SubKind::Last
        }]
    );
}

#[test]
fn full_budgets_are_refused_with_ib_codes() {
    let mut m = SubscriptionManager::new(
        Limits {
            tbt_slots: 2,
            mkt_lines: 1,
            ..Limits::default()
        },
        1,
    );
    m.subscribe("a", key(1, SubKind::Last), 0).unwrap();
    m.subscribe("a", key(2, SubKind::Last), 0).unwrap();
    let e = m.subscribe("a", key(3, SubKind::Last), 0).unwrap_err();
    assert_eq!(e.ib_code(), 10190);
    assert!(e.to_string().contains("2 of 2"), "{e}");
    m.subscribe("a", key(1, SubKind::MktData), 0).unwrap();
    assert_eq!(
        m.subscribe("a", key(2, SubKind::MktData), 0)
            .unwrap_err()
            .ib_code(),
        101
    );
    // Joining an existing subscription needs no new slot.
    assert!(m.subscribe("b", key(1, SubKind::Last), 0).unwrap().shared);
}

#[test]
fn errors_route_to_their_subscription() {
    let mut m = connected();
    m.subscribe("a", key(9, SubKind::MktData), 0).unwrap();
    m.subscribe("a", key(8, SubKind::Last), 0).unwrap();
    drain(&mut m, 0);
    while m.poll_event().is_some() {}
    assert_eq!(
        m.on_error(1001, 200),
        ErrorRoute::Subscription(key(8, SubKind::Last), SubState::Rejected)
    );
    let ev = m.poll_event().unwrap();
    assert_eq!((ev.state, ev.code), (SubState::Rejected, 200));
    assert_eq!(m.on_error(4242, 300), ErrorRoute::Unrouted);
    // 354 on market data falls back to delayed: type 3 first, then a fresh request.
    m.on_error(1000, 354);
    assert_eq!(
        drain(&mut m, 0),
        vec![
            Request::MarketDataType(3),
            Request::MktData {
                req_id: 1002,
                con_id: 9
            }
        ]
    );
    m.on_market_data_type(1002, 3);
    assert_eq!(
        m.on_tick(1002, 5),
        Some((9, true)),
        "delayed ticks are marked"
    );
    let states: Vec<SubState> = std::iter::from_fn(|| m.poll_event())
        .map(|e| e.state)
        .collect();
    assert_eq!(states.last(), Some(&SubState::Delayed));
}

#[test]
fn delayed_fallback_can_be_refused() {
    let mut m = SubscriptionManager::new(
        Limits {
            allow_delayed: false,
            ..Limits::default()
        },
        1,
    );
    m.on_connected();
    m.subscribe("a", key(9, SubKind::MktData), 0).unwrap();
    drain(&mut m, 0);
    assert_eq!(
        m.on_error(1, 354),
        ErrorRoute::Subscription(key(9, SubKind::MktData), SubState::Rejected)
    );
    assert!(drain(&mut m, 0).is_empty());
}

fn events(m: &mut SubscriptionManager) -> Vec<SubEvent> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

fn tbt(req_id: i32, con_id: u32, kind: SubKind) -> Request {
    Request::TickByTick {
        req_id,
        con_id,
        kind,
    }
}

/// The restart case: our first request for an instrument falls inside the 15 seconds of
/// a predecessor's; IB says 10190. It is asked again one window after our request, and
/// data makes it active again with no code.
#[test]
fn a_10190_is_retried_one_window_after_the_request() {
    let mut m = connected();
    let k = key(711_280_073, SubKind::BidAsk);
    m.subscribe("config", k, 0).unwrap();
    assert_eq!(drain(&mut m, 2 * S), vec![tbt(1000, k.con_id, k.kind)]);
    events(&mut m);
    assert_eq!(
        m.on_error(1000, 10190),
        ErrorRoute::Subscription(k, SubState::Queued)
    );
    let ev = events(&mut m);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (ev[0].state, ev[0].code, ev[0].req_id),
        (SubState::Queued, 10190, 0)
    );
    let retry = ev[0].retry.expect("the state says when it is tried again");
    assert_eq!(
        retry,
        RetryInfo {
            refusals: 1,
            next_ns: 17 * S
        }
    );
    assert_eq!(m.retry_of(k), Some(retry));
    assert_eq!(m.on_tick(1000, 3 * S), None, "the refused id is dead");
    assert_eq!(m.next_deadline(3 * S), Some(17 * S));
    assert!(drain(&mut m, 17 * S - 1).is_empty());
    assert_eq!(drain(&mut m, 17 * S), vec![tbt(1001, k.con_id, k.kind)]);
    assert_eq!(m.on_tick(1001, 18 * S), Some((k.con_id, false)));
    let states: Vec<(SubState, i32, i32, bool)> = events(&mut m)
        .iter()
        .map(|e| (e.state, e.code, e.req_id, e.retry.is_some()))
        .collect();
    assert_eq!(
        states,
        vec![
            (SubState::Requested, 10190, 1001, false),
            (SubState::Active, 0, 1001, false)
        ]
    );
    assert_eq!(m.retry_of(k), None);
    let info = m.list().next().unwrap();
    assert_eq!(
        (info.state, info.code, info.retry),
        (SubState::Active, 0, None)
    );
}

/// Refused again and again: each wait doubles (jittered) from one window to the cap and
/// stays there; the attempts never stop while someone holds the subscription.
#[test]
fn repeated_refusals_back_off_to_the_cap_without_giving_up() {
    let window = 15 * S;
    let cap = 120 * S;
    let mut m = connected();
    m.set_jitter_seed(7);
    let k = key(1, SubKind::Last);
    m.subscribe("config", k, 0).unwrap();
    let mut now = 0;
    let mut waits = Vec::new();
    for attempt in 0..40u32 {
        let sent = drain(&mut m, now);
        assert_eq!(sent.len(), 1, "attempt {attempt}: {sent:?}");
        let Request::TickByTick { req_id, .. } = sent[0] else {
            panic!("{sent:?}")
        };
        m.on_error(req_id, 10190);
        let r = m.retry_of(k).unwrap();
        assert_eq!(r.refusals, attempt + 1);
        let wait = r.next_ns - now;
        let ceiling = (window << attempt.min(8)).min(cap);
        assert!(
            wait >= window.max(ceiling / 2) && wait <= ceiling,
            "attempt {attempt}: waited {wait} (ceiling {ceiling})"
        );
        assert!(
            drain(&mut m, r.next_ns - 1).is_empty(),
            "not before its time"
        );
        waits.push(wait);
        now = r.next_ns;
    }
    assert_eq!(waits[0], window, "the first retry: exactly one window");
    assert!(
        waits[1..].iter().any(|&w| w != waits[1]),
        "jittered: {waits:?}"
    );
    assert!(waits.iter().all(|&w| w <= cap));
    // The same seed gives the same waits: the schedule is the seed's, not the clock's.
    let mut again = connected();
    again.set_jitter_seed(7);
    again.subscribe("config", k, 0).unwrap();
    let mut now = 0;
    for (i, &w) in waits.iter().enumerate().take(6) {
        let Some(Request::TickByTick { req_id, .. }) = again.next_request(now) else {
            panic!("attempt {i}")
        };
        again.on_error(req_id, 10190);
        assert_eq!(again.retry_of(k).unwrap().next_ns - now, w, "attempt {i}");
        now += w;
    }
}

/// The last holder leaving ends the retrying: nothing more is sent, not even a cancel
/// (no request is out at IB), and the final state is Cancelled.
#[test]
fn retrying_stops_when_the_last_holder_leaves() {
    let mut m = connected();
    let k = key(5, SubKind::MidPoint);
    m.subscribe("ws-1", k, 0).unwrap();
    drain(&mut m, 0);
    m.on_error(1000, 10190);
    // A second holder joining hears about the refusal in its reply.
    let ack = m.subscribe("ws-2", k, S).unwrap();
    assert!(ack.shared);
    assert_eq!((ack.state, ack.code), (SubState::Queued, 10190));
    assert_eq!(ack.retry.unwrap().next_ns, 15 * S);
    assert_eq!(m.unsubscribe("ws-1", k), Some(1));
    assert_eq!(m.queued(), 1, "still held by ws-2: still retried");
    events(&mut m);
    assert_eq!(m.unsubscribe("ws-2", k), Some(0));
    assert!(drain(&mut m, 100 * S).is_empty());
    assert_eq!(m.next_deadline(100 * S), None);
    let ev = events(&mut m);
    assert_eq!(ev.last().map(|e| e.state), Some(SubState::Cancelled));
    assert_eq!(m.list().count(), 0);
}

/// 10190 at IB's slot cap (another client of the account holds slots): the refused
/// subscription keeps its place in our budget and gets the slot when one frees.
#[test]
fn a_refusal_at_the_slot_cap_keeps_its_budget_and_gets_a_freed_slot() {
    let mut m = SubscriptionManager::new(
        Limits {
            tbt_slots: 2,
            tbt_same_instrument_ns: 0,
            ..Limits::default()
        },
        1000,
    );
    m.on_connected();
    m.subscribe("a", key(1, SubKind::BidAsk), 0).unwrap();
    m.subscribe("a", key(2, SubKind::BidAsk), 0).unwrap();
    assert_eq!(drain(&mut m, 0).len(), 2);
    m.on_error(1001, 10190);
    assert_eq!(
        m.limits().tbt_slots,
        2,
        "a refusal is not taken for IB's cap"
    );
    assert_eq!(
        m.subscribe("b", key(3, SubKind::BidAsk), 0)
            .unwrap_err()
            .ib_code(),
        10190,
        "the refused one still counts against our budget"
    );
    // With the window off, retries wait at least MIN_TBT_RETRY_NS.
    let r = m.retry_of(key(2, SubKind::BidAsk)).unwrap();
    assert_eq!(r.next_ns, MIN_TBT_RETRY_NS);
    // Still full at IB on the next attempt; a slot frees later (IB's other client left)
    // and the attempt after that gets it.
    assert_eq!(
        drain(&mut m, r.next_ns),
        vec![tbt(1002, 2, SubKind::BidAsk)]
    );
    m.on_error(1002, 10190);
    let r = m.retry_of(key(2, SubKind::BidAsk)).unwrap();
    assert_eq!(r.refusals, 2);
    assert_eq!(
        drain(&mut m, r.next_ns),
        vec![tbt(1003, 2, SubKind::BidAsk)]
    );
    m.on_tick(1003, r.next_ns + 1);
    assert_eq!(
        m.list().map(|i| i.state).collect::<Vec<_>>(),
        vec![SubState::Requested, SubState::Active]
    );
}

/// A reconnect while a retry waits keeps the retry's time (IB's window does not care
/// about our connection); a disconnected manager sends nothing.
#[test]
fn a_reconnect_keeps_the_retry_time() {
    let mut m = connected();
    let k = key(9, SubKind::AllLast);
    m.subscribe("config", k, 0).unwrap();
    drain(&mut m, 0);
    m.on_error(1000, 10190);
    m.on_subscriptions_lost(false);
    assert!(drain(&mut m, 20 * S).is_empty(), "disconnected");
    m.on_connected();
    m.on_subscriptions_lost(true);
    assert_eq!(m.next_deadline(S), Some(15 * S));
    assert!(drain(&mut m, 15 * S - 1).is_empty());
    assert_eq!(drain(&mut m, 15 * S), vec![tbt(1001, 9, SubKind::AllLast)]);
    // The retried request was out when the session dropped: requeued as any other, with
    // no retry pending (only IB's answer on the new session says whether it is needed).
    m.on_subscriptions_lost(true);
    assert_eq!(m.retry_of(k), None);
    assert_eq!(drain(&mut m, 30 * S), vec![tbt(1002, 9, SubKind::AllLast)]);
}

/// Other refusals stay final.
#[test]
fn other_refusals_are_not_retried() {
    let mut m = connected();
    let k = key(4, SubKind::Last);
    m.subscribe("a", k, 0).unwrap();
    drain(&mut m, 0);
    assert_eq!(
        m.on_error(1000, 10189),
        ErrorRoute::Subscription(k, SubState::Rejected)
    );
    assert!(drain(&mut m, 100 * S).is_empty());
    assert_eq!(m.list().count(), 0);
}

#[test]
fn lost_subscriptions_are_requested_again_under_new_ids() {
    let mut m = connected();
    m.subscribe("a", key(1, SubKind::MktData), 0).unwrap();
    m.subscribe("a", key(2, SubKind::MidPoint), 0).unwrap();
    drain(&mut m, 0);
    assert_eq!(m.on_tick(1000, 1), Some((1, false)));
    // IB: 1101, connectivity restored, data lost.
    m.on_subscriptions_lost(true);
    assert_eq!(m.on_tick(1000, 2), None, "old ids are dead");
    let again = drain(&mut m, 20 * S);
    assert_eq!(again.len(), 2, "{again:?}");
    assert!(again.contains(&Request::MktData {
        req_id: 1002,
        con_id: 1
    }));
    // Disconnected: nothing goes out until connected again.
    m.on_subscriptions_lost(false);
    assert!(drain(&mut m, 40 * S).is_empty());
    m.on_connected();
    assert_eq!(drain(&mut m, 40 * S).len(), 2);
}

#[test]
fn watchdog_escalates_one_step_per_silent_period() {
    let mut m = connected();
    let k = key(1, SubKind::BidAsk);
    m.subscribe("a", k, 0).unwrap();
    drain(&mut m, 0);
    m.on_tick(1000, S);
    assert_eq!(m.check_silence(10 * S, 30 * S), None);
    assert_eq!(m.check_silence(31 * S, 30 * S), Some(Escalation::Probe));
    assert_eq!(m.check_silence(32 * S, 30 * S), None, "one step per period");
    assert_eq!(
        m.check_silence(61 * S, 30 * S),
        Some(Escalation::Resubscribe)
    );
    let reqs = drain(&mut m, 61 * S);
    assert_eq!(reqs[0], Request::CancelTickByTick { req_id: 1000 });
    assert!(matches!(reqs[1], Request::TickByTick { req_id: 1001, .. }));
    // The new request stays silent as well.
    assert_eq!(m.check_silence(92 * S, 30 * S), Some(Escalation::Probe));
    // A tick clears it.
    m.on_tick(1001, 93 * S);
    assert_eq!(m.list().next().unwrap().state, SubState::Active);
}

#[test]
fn release_holder_drops_everything_it_held() {
    let mut m = connected();
    m.subscribe("ws-1", key(1, SubKind::Last), 0).unwrap();
    m.subscribe("ws-1", key(2, SubKind::MktData), 0).unwrap();
    m.subscribe("cfg", key(2, SubKind::MktData), 0).unwrap();
    drain(&mut m, 0);
    assert_eq!(m.release_holder("ws-1"), 2);
    assert_eq!(
        drain(&mut m, 0),
        vec![Request::CancelTickByTick { req_id: 1000 }]
    );
    assert_eq!(m.list().count(), 1);
}

#[test]
fn data_requests_wait_for_their_contract_and_an_unresolvable_one_is_rejected() {
    let mut m = connected();
    m.require_contracts();
    let a = key(265_598, SubKind::BidAsk);
    let b = key(265_598, SubKind::MktData);
    let c = key(42, SubKind::Last);
    for k in [a, b, c] {
        m.subscribe("web", k, 0).unwrap();
    }
    assert_eq!(
        std::iter::from_fn(|| m.take_contract_need()).collect::<Vec<_>>(),
        [265_598, 42],
        "each conId is announced once"
    );
    assert!(
        drain(&mut m, 0).is_empty(),
        "nothing goes before the contract"
    );
    assert_eq!(
        m.next_deadline(0),
        None,
        "and the loop has no reason to wake"
    );
    m.contract_ready(265_598);
    let reqs = drain(&mut m, 0);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    events(&mut m);
    assert_eq!(m.contract_unresolvable(42, 200), 1);
    let ev = events(&mut m);
    assert_eq!(
        (ev[0].key, ev[0].state, ev[0].code),
        (c, SubState::Rejected, 200)
    );
    assert!(m.list().all(|s| s.key.con_id == 265_598));
    assert!(drain(&mut m, 0).is_empty());
}
