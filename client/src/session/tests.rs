//! The session driven by hand: made-up frames and instants, no socket, no clock.

use super::*;
use crate::state::ConnState::*;

const E1: &str = "00000000000000e1";
const E2: &str = "00000000000000e2";

struct Harness {
    s: Session,
    now: Instant,
    metrics: Arc<Metrics>,
    sent: Vec<Value>,
    events: Vec<Event>,
    connects: usize,
    disconnects: usize,
    opened: Vec<StreamRequest>,
    closed: Vec<u64>,
}

impl Harness {
    fn new(cfg: SessionConfig) -> Harness {
        let now = Instant::now();
        let metrics = Arc::new(Metrics::default());
        Harness {
            s: Session::new(cfg, Arc::clone(&metrics), now),
            now,
            metrics,
            sent: Vec::new(),
            events: Vec::new(),
            connects: 0,
            disconnects: 0,
            opened: Vec::new(),
            closed: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(a) = self.s.poll_action() {
            match a {
                Action::Connect => self.connects += 1,
                Action::Disconnect => self.disconnects += 1,
                Action::Send(t) => self.sent.push(serde_json::from_str(&t).unwrap()),
                Action::Deliver(e) => self.events.push(e),
                Action::OpenStream(r) => self.opened.push(r),
                Action::CloseStream(id) => self.closed.push(id),
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.s.on_timer(self.now);
        self.drain();
    }

    fn frame(&mut self, text: &str) {
        self.s.on_frame(text.as_bytes(), self.now, 1_000_000);
        self.drain();
    }

    /// Start (or reconnect) and get the server's hello.
    fn open(&mut self) {
        self.open_with(r#"{"type":"info","status":"connected","protocol":"v3","limits":{"max_streams":3,"max_messages_per_second":100,"max_message_bytes":16384},"heartbeat_seconds":1}"#);
    }

    fn open_with(&mut self, hello: &str) {
        if self.s.state() == Disconnected {
            self.s.start(self.now);
        }
        self.s.on_open(self.now);
        self.frame(hello);
    }

    fn transitions(&self) -> Vec<(ConnState, ConnState)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::State(t) => Some((t.from, t.to)),
                _ => None,
            })
            .collect()
    }

    fn ticks(&self) -> Vec<(SubId, u64)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Tick { sub, tick } => Some((*sub, tick.seq)),
                _ => None,
            })
            .collect()
    }

    /// Answers the last subscribe with `stream_id` and a stream_start in `epoch`.
    fn accept(&mut self, stream_id: &str, epoch: &str, ring_head: u64) {
        let id = self.sent.last().unwrap()["id"].clone();
        self.frame(&format!(
            r#"{{"type":"subscribed","id":{id},"stream_id":"{stream_id}"}}"#
        ));
        self.frame(&format!(r#"{{"type":"info","status":"stream_start","epoch":"{epoch}","ring_head":{ring_head},"resume_after":null,"stream_id":"{stream_id}"}}"#));
    }
}

fn tick(seq: u64) -> String {
    format!(r#"{{"seq":{seq},"st":900000,"cid":5,"tt":"bid_ask","bp":1,"bs":1,"ap":2,"as":1}}"#)
}

fn quick() -> SessionConfig {
    SessionConfig {
        backoff: BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            factor: 2.0,
            max_attempts: Some(3),
        },
        ..SessionConfig::default()
    }
}

#[test]
fn every_transition_happens_through_the_session() {
    // Disconnected -> Connecting -> Connected -> Reconnecting -> Connecting -> Reconnecting
    // (attempt failed) -> Connecting -> Connected -> Closed.
    let mut h = Harness::new(quick());
    h.open();
    assert_eq!(h.connects, 1);
    h.s.on_closed("reset", h.now);
    h.drain();
    assert_eq!(h.s.state(), Reconnecting);
    h.advance(Duration::from_secs(2));
    assert_eq!((h.s.state(), h.connects), (Connecting, 2));
    h.s.on_connect_failed(
        &ConnectError::Http {
            status: 503,
            body: String::new(),
        },
        h.now,
    );
    h.drain();
    h.advance(Duration::from_secs(2));
    h.open();
    h.s.close(h.now);
    h.drain();
    assert_eq!(
        h.transitions(),
        [
            (Disconnected, Connecting),
            (Connecting, Connected),
            (Connected, Reconnecting),
            (Reconnecting, Connecting),
            (Connecting, Reconnecting),
            (Reconnecting, Connecting),
            (Connecting, Connected),
            (Connected, Closed),
        ]
    );
    assert_eq!(h.disconnects, 1, "close drops the connection");
    assert_eq!(h.metrics.snapshot().reconnects, 1);
    // Closed is terminal: nothing moves it.
    h.s.start(h.now);
    h.s.on_closed("x", h.now);
    h.advance(Duration::from_secs(5));
    assert_eq!(h.s.state(), Closed);

    // Connecting -> Failed: a permanent refusal (401).
    let mut h = Harness::new(quick());
    h.s.start(h.now);
    h.s.on_connect_failed(
        &ConnectError::Http {
            status: 401,
            body: "unauthorized".into(),
        },
        h.now,
    );
    h.drain();
    assert_eq!(
        h.transitions(),
        [(Disconnected, Connecting), (Connecting, Failed)]
    );

    // Reconnecting -> Failed: the attempts are used up (3).
    let mut h = Harness::new(quick());
    h.s.start(h.now);
    for _ in 0..4 {
        h.s.on_connect_failed(&ConnectError::Timeout(Duration::from_secs(1)), h.now);
        h.drain();
        h.advance(Duration::from_secs(2));
    }
    let t = h.transitions();
    assert_eq!(t.last(), Some(&(Reconnecting, Failed)), "{t:?}");
    assert_eq!(h.connects, 4, "the first attempt and 3 retries");
    assert!(
        matches!(h.events.last(), Some(Event::State(t)) if t.reason.contains("gave up after 3"))
    );

    // Closed from Disconnected, Connecting and Reconnecting.
    let mut h = Harness::new(quick());
    h.s.close(h.now);
    h.drain();
    assert_eq!(h.transitions(), [(Disconnected, Closed)]);
    let mut h = Harness::new(quick());
    h.s.start(h.now);
    h.s.close(h.now);
    h.drain();
    assert_eq!(
        h.transitions(),
        [(Disconnected, Connecting), (Connecting, Closed)]
    );
    let mut h = Harness::new(quick());
    h.open();
    h.s.on_closed("x", h.now);
    h.s.close(h.now);
    h.drain();
    assert_eq!(h.transitions().last(), Some(&(Reconnecting, Closed)));
}

#[test]
fn backoff_waits_before_each_retry() {
    let mut h = Harness::new(quick());
    h.open();
    h.s.on_closed("reset", h.now);
    h.drain();
    let d = h.s.next_deadline().unwrap() - h.now;
    assert!(
        d >= Duration::from_millis(50) && d <= Duration::from_millis(100),
        "{d:?}"
    );
    h.advance(d - Duration::from_millis(1));
    assert_eq!(h.s.state(), Reconnecting, "not before the delay");
    h.advance(Duration::from_millis(1));
    assert_eq!(h.s.state(), Connecting);
    h.s.on_connect_failed(&ConnectError::Timeout(Duration::from_secs(1)), h.now);
    h.drain();
    let d2 = h.s.next_deadline().unwrap() - h.now;
    assert!(
        d2 >= Duration::from_millis(100) && d2 <= Duration::from_millis(200),
        "{d2:?}"
    );
}

#[test]
fn silence_past_the_heartbeat_deadline_reconnects() {
    let mut h = Harness::new(quick());
    h.open();
    // heartbeat_seconds 1, grace 2.5: 2.5 s.
    assert_eq!(h.s.silence_limit(), Duration::from_millis(2500));
    h.advance(Duration::from_millis(2000));
    h.frame(r#"{"type":"heartbeat","ts":900000,"ring_head":5}"#);
    h.advance(Duration::from_millis(2000));
    assert_eq!(h.s.state(), Connected, "a heartbeat 2 s ago is fresh");
    assert_eq!(h.metrics.snapshot().server_lag_us, 100_000);
    assert_eq!(h.metrics.snapshot().ring_head, 5);
    h.advance(Duration::from_millis(500));
    assert_eq!(h.s.state(), Reconnecting);
    assert_eq!(h.disconnects, 1);
    assert_eq!(h.metrics.snapshot().silent_deaths, 1);
    assert!(
        matches!(h.events.last(), Some(Event::State(t)) if t.reason.contains("heartbeat missed"))
    );
}

#[test]
fn a_reconnect_resumes_after_the_last_tick_and_drops_duplicates() {
    let mut h = Harness::new(quick());
    h.s.subscribe(1, Subscription::new(5, &["bid_ask"]), h.now);
    h.open();
    assert_eq!(h.sent.len(), 1);
    assert!(h.sent[0].get("after_seq").is_none());
    h.accept("ws-1-1", E1, 10);
    for s in [11, 14, 15] {
        h.frame(&tick(s));
    }
    h.s.on_closed("reset", h.now);
    h.drain();
    h.advance(Duration::from_secs(1));
    h.open();
    assert_eq!(h.sent[1]["after_seq"], format!("{E1}-15"));
    h.accept("ws-2-1", E1, 30);
    // The server resumes exactly; a tick at or before the resume point would be dropped.
    for s in [15, 16, 20] {
        h.frame(&tick(s));
    }
    assert_eq!(h.ticks(), [(1, 11), (1, 14), (1, 15), (1, 16), (1, 20)]);
    assert_eq!(h.metrics.snapshot().duplicates_dropped, 1);
    assert!(h.events.iter().any(|e| matches!(e, Event::Subscribed { resumed_after: Some(t), .. } if t == &format!("{E1}-15"))));
}

#[test]
fn a_stream_with_no_tick_yet_resumes_from_its_start_and_since_is_sent_only_first() {
    let mut h = Harness::new(quick());
    h.s.subscribe(1, Subscription::new(5, &["bid_ask"]).since("5m"), h.now);
    h.open();
    assert_eq!(h.sent[0]["since"], "5m");
    h.accept("ws-1-1", E1, 40);
    h.s.on_closed("reset", h.now);
    h.drain();
    h.advance(Duration::from_secs(1));
    h.open();
    assert_eq!(h.sent[1]["after_seq"], format!("{E1}-40"));
    assert!(h.sent[1].get("since").is_none());
}

#[test]
fn an_engine_restart_is_a_visible_gap_and_the_next_resume_names_the_new_run() {
    let mut h = Harness::new(quick());
    h.s.subscribe(1, Subscription::new(5, &["bid_ask"]), h.now);
    h.open();
    h.accept("ws-1-1", E1, 0);
    h.frame(&tick(7));
    h.frame(&format!(r#"{{"type":"gap","reason":"writer_restart","first_seq":8,"last_seq":null,"count":null,"t0":1,"t1":2,"epoch":"{E1}","new_epoch":"{E2}","clean":false,"stream_id":"ws-1-1"}}"#));
    // The new run starts again at 1: not a duplicate of the old run's 7.
    h.frame(&tick(1));
    h.frame(&tick(3));
    assert_eq!(h.ticks(), [(1, 7), (1, 1), (1, 3)]);
    let gap = h
        .events
        .iter()
        .find_map(|e| match e {
            Event::Gap { sub: Some(1), gap } => Some(gap.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(gap.reason, GapReason::WriterRestart);
    assert_eq!(gap.new_epoch.as_deref(), Some(E2));
    h.s.on_closed("reset", h.now);
    h.drain();
    h.advance(Duration::from_secs(1));
    h.open();
    assert_eq!(h.sent[1]["after_seq"], format!("{E2}-3"));
    assert_eq!(h.metrics.snapshot().gaps, 1);
}

#[test]
fn a_replay_across_runs_follows_the_announced_runs() {
    let mut h = Harness::new(quick());
    h.s.subscribe(1, Subscription::new(5, &["bid_ask"]).since("1h"), h.now);
    h.open();
    h.accept("ws-1-1", E2, 100);
    for f in [
        format!(
            r#"{{"type":"info","status":"history_start","epoch":"{E2}","stream_id":"ws-1-1"}}"#
        ),
        format!(
            r#"{{"type":"info","status":"history_epoch","epoch":"{E1}","stream_id":"ws-1-1"}}"#
        ),
        tick(50),
        tick(51),
        format!(
            r#"{{"type":"gap","reason":"writer_restart","first_seq":52,"last_seq":51,"count":0,"t0":1,"t1":2,"epoch":"{E1}","new_epoch":"{E2}","clean":true,"stream_id":"ws-1-1"}}"#
        ),
        tick(1),
        tick(2),
        format!(
            r#"{{"type":"info","status":"live","after_seq":2,"epoch":"{E2}","history_ticks":4,"history_error":null,"stream_id":"ws-1-1"}}"#
        ),
        tick(3),
    ] {
        h.frame(&f);
    }
    assert_eq!(h.ticks(), [(1, 50), (1, 51), (1, 1), (1, 2), (1, 3)]);
    h.s.on_closed("reset", h.now);
    h.drain();
    h.advance(Duration::from_secs(1));
    h.open();
    assert_eq!(h.sent[1]["after_seq"], format!("{E2}-3"));
}

#[test]
fn gaps_that_lose_records_move_the_resume_point() {
    let mut h = Harness::new(quick());
    h.s.subscribe(1, Subscription::new(5, &["bid_ask"]), h.now);
    h.open();
    h.accept("ws-1-1", E1, 0);
    h.frame(&tick(7));
    h.frame(r#"{"type":"gap","reason":"reader_overrun","first_seq":8,"last_seq":2000,"count":1993,"t0":1,"t1":2,"stream_id":"ws-1-1"}"#);
    h.s.on_closed("reset", h.now);
    h.drain();
    h.advance(Duration::from_secs(1));
    h.open();
    assert_eq!(h.sent[1]["after_seq"], format!("{E1}-2000"));
}

#[test]
fn malformed_frames_are_counted_and_resync_or_skip() {
    let mut h = Harness::new(quick());
    h.s.subscribe(1, Subscription::new(5, &["bid_ask"]), h.now);
    h.open();
    h.accept("ws-1-1", E1, 0);
    h.frame(&tick(7));
    h.frame(r#"{"seq":8,"st":1,"ci"#);
    assert!(matches!(
        h.events.iter().rev().nth(1),
        Some(Event::Malformed(FrameError::Truncated { .. }))
    ));
    assert_eq!(
        h.s.state(),
        Reconnecting,
        "resync: a new connection resumes after 7"
    );
    assert_eq!(h.disconnects, 1);
    h.advance(Duration::from_secs(1));
    h.open();
    assert_eq!(h.sent[1]["after_seq"], format!("{E1}-7"));
    assert_eq!(h.metrics.snapshot().malformed, 1);

    let mut h = Harness::new(SessionConfig {
        malformed: MalformedPolicy::Skip,
        ..quick()
    });
    h.s.subscribe(1, Subscription::new(5, &["bid_ask"]), h.now);
    h.open();
    h.accept("ws-1-1", E1, 0);
    for f in [
        "",
        "#garbage",
        r#"{"type":"surprise"}"#,
        "[]",
        r#"{"seq":"x"}"#,
    ] {
        h.frame(f);
    }
    h.s.on_binary(3, h.now, 0);
    h.drain();
    h.frame(&tick(9));
    assert_eq!(h.s.state(), Connected);
    assert_eq!(h.metrics.snapshot().malformed, 6);
    assert_eq!(h.ticks(), [(1, 9)], "the stream goes on");
    let kinds: Vec<String> = h
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Malformed(m) => Some(
                format!("{m:?}")
                    .split([' ', '(', '{'])
                    .next()
                    .unwrap()
                    .to_owned(),
            ),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        ["Empty", "Json", "UnknownType", "Shape", "Shape", "Binary"]
    );
}

#[test]
fn requests_respect_the_advertised_stream_cap_and_rate() {
    let mut h = Harness::new(quick());
    for i in 0..1000 {
        h.s.subscribe(i + 1, Subscription::new(i as u32 + 1, &["last"]), h.now);
    }
    h.open();
    // max_streams 3: three sent, the rest refused locally with the server's code.
    assert_eq!(h.sent.len(), 3);
    let refused = h
        .events
        .iter()
        .filter(|e| matches!(e, Event::SubscribeFailed { local: true, error, .. } if error.code == "too_many_streams"))
        .count();
    assert_eq!(refused, 997);
    assert_eq!(h.s.counts(), (0, 3, 997));

    // Pacing: 40 requests per second at 100 messages/s allowed.
    let mut h = Harness::new(quick());
    h.open_with(r#"{"type":"info","status":"connected","limits":{"max_streams":100,"max_messages_per_second":100,"max_message_bytes":1},"heartbeat_seconds":100}"#);
    for i in 0..100 {
        h.s.subscribe(i + 1, Subscription::new(i as u32 + 1, &["last"]), h.now);
    }
    h.drain();
    assert_eq!(h.sent.len(), 40);
    assert_eq!(h.s.next_deadline(), Some(h.now + Duration::from_secs(1)));
    h.advance(Duration::from_secs(1));
    assert_eq!(h.sent.len(), 80);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.sent.len(), 100);
}

#[test]
fn server_refusals_and_slow_consumer_disconnects() {
    let mut h = Harness::new(quick());
    h.s.subscribe(1, Subscription::new(5, &["bid_ask"]), h.now);
    h.s.subscribe(2, Subscription::new(6, &["last"]), h.now);
    h.open();
    let (id1, id2) = (h.sent[0]["id"].clone(), h.sent[1]["id"].clone());
    h.frame(&format!(r#"{{"type":"error","id":{id2},"code":"subscription_refused","message":"no","recoverable":false,"ib_code":200}}"#));
    assert!(
        matches!(h.events.last(), Some(Event::SubscribeFailed { sub: 2, local: false, error }) if error.ib_code == Some(200))
    );
    h.frame(&format!(
        r#"{{"type":"subscribed","id":{id1},"stream_id":"ws-1-1"}}"#
    ));
    h.frame(&format!(r#"{{"type":"info","status":"stream_start","epoch":"{E1}","ring_head":3,"stream_id":"ws-1-1"}}"#));
    h.frame(&tick(4));
    h.frame(r#"{"type":"error","code":"slow_consumer","message":"slow","recoverable":true,"stream_id":"ws-1-1"}"#);
    h.frame(r#"{"type":"complete","reason":"error","count":1,"duration_ms":5,"last_seq":4,"stream_id":"ws-1-1"}"#);
    assert!(matches!(
        h.events.last(),
        Some(Event::Complete {
            sub: 1,
            resuming: true,
            ..
        })
    ));
    // Resubscribed on the same connection after tick 4.
    assert_eq!(h.sent.last().unwrap()["after_seq"], format!("{E1}-4"));
    h.accept("ws-1-2", E1, 9);
    h.frame(&tick(5));
    // A limit reached is final.
    h.frame(r#"{"type":"complete","reason":"limit_reached","count":1,"duration_ms":5,"last_seq":5,"stream_id":"ws-1-2"}"#);
    assert!(matches!(
        h.events.last(),
        Some(Event::Complete {
            sub: 1,
            resuming: false,
            ..
        })
    ));
    assert_eq!(h.s.counts(), (0, 0, 2));
    assert_eq!(h.ticks(), [(1, 4), (1, 5)]);
}

#[test]
fn unsubscribe_in_every_phase() {
    let mut h = Harness::new(quick());
    h.s.subscribe(1, Subscription::new(5, &["bid_ask"]), h.now);
    h.s.subscribe(2, Subscription::new(6, &["bid_ask"]), h.now);
    h.s.subscribe(3, Subscription::new(7, &["bid_ask"]), h.now);
    // Queued (not connected yet): ends at once.
    h.s.unsubscribe(3, h.now);
    h.drain();
    assert!(matches!(
        h.events.last(),
        Some(Event::Complete {
            sub: 3,
            resuming: false,
            ..
        })
    ));
    h.open();
    assert_eq!(h.sent.len(), 2);
    // Pending: unsubscribed when the answer comes.
    h.s.unsubscribe(2, h.now);
    let id2 = h.sent[1]["id"].clone();
    h.frame(&format!(
        r#"{{"type":"subscribed","id":{id2},"stream_id":"ws-1-2"}}"#
    ));
    assert_eq!(h.sent.last().unwrap()["type"], "unsubscribe");
    assert_eq!(h.sent.last().unwrap()["stream_id"], "ws-1-2");
    // Active.
    let id1 = h.sent[0]["id"].clone();
    h.frame(&format!(
        r#"{{"type":"subscribed","id":{id1},"stream_id":"ws-1-1"}}"#
    ));
    h.s.unsubscribe(1, h.now);
    h.drain();
    assert_eq!(h.sent.last().unwrap()["stream_id"], "ws-1-1");
    h.frame(&tick(3)); // in flight: not delivered
    h.frame(r#"{"type":"complete","reason":"unsubscribed","count":0,"duration_ms":5,"last_seq":0,"stream_id":"ws-1-1"}"#);
    assert!(h.ticks().is_empty());
    assert!(matches!(
        h.events.last(),
        Some(Event::Complete {
            sub: 1,
            resuming: false,
            ..
        })
    ));
    // After a reconnect nothing ended is sent again.
    h.s.on_closed("x", h.now);
    h.drain();
    h.advance(Duration::from_secs(1));
    let before = h.sent.len();
    h.open();
    assert_eq!(h.sent.len(), before);
}

// SSE: the same session, one HTTP stream per subscription.

impl Harness {
    fn open_sse(&mut self) {
        if self.s.state() == Disconnected {
            self.s.start(self.now);
        }
        self.s.on_open_sse(self.now);
        self.drain();
    }

    /// Answers the last opened stream with 200 and its stream_start in `epoch`.
    fn accept_sse(&mut self, stream_id: &str, epoch: &str, ring_head: u64) -> u64 {
        let id = self.opened.last().unwrap().id;
        self.s
            .on_stream_open(id, Some(stream_id.to_owned()), self.now);
        self.drain();
        self.sse(id, &format!(r#"{{"type":"info","status":"stream_start","epoch":"{epoch}","ring_head":{ring_head},"resume_after":null,"stream_id":"{stream_id}"}}"#), None);
        id
    }

    fn sse(&mut self, id: u64, data: &str, event_id: Option<&str>) {
        self.s
            .on_stream_frame(id, data.as_bytes(), event_id, self.now, 1_000_000);
        self.drain();
    }
}

#[test]
fn sse_opens_a_stream_per_subscription_and_delivers_its_ticks() {
    let mut h = Harness::new(quick());
    h.open_sse();
    assert_eq!(h.s.state(), Connected, "no info{{connected}} over SSE");
    assert!(h.s.is_sse());
    h.s.subscribe(1, Subscription::new(5, &["bid_ask"]).limit(10), h.now);
    h.drain();
    assert!(h.sent.is_empty(), "no WebSocket request");
    assert_eq!(h.opened.len(), 1);
    assert_eq!(h.opened[0].path, "/v3/stream/5?tick_types=bid_ask&limit=10");
    assert_eq!(h.opened[0].last_event_id, None);
    let id = h.accept_sse("sse-1", E1, 40);
    for seq in [41, 42, 43] {
        h.sse(id, &tick(seq), Some(&format!("{E1}-{seq}")));
    }
    assert_eq!(h.ticks(), [(1, 41), (1, 42), (1, 43)]);
    assert!(h.events.iter().any(
        |e| matches!(e, Event::Subscribed { sub: 1, stream_id, resumed_after: None } if stream_id == "sse-1")
    ));
    assert_eq!(
        h.metrics.snapshot().ticks,
        0,
        "the driver counts delivered ticks"
    );
    assert_eq!(h.metrics.snapshot().messages, 4);
}

#[test]
fn sse_learns_the_heartbeat_period_from_stream_start() {
    let mut h = Harness::new(quick());
    h.open_sse();
    let assumed = h.s.silence_limit();
    h.s.subscribe(1, Subscription::new(5, &["bid_ask"]), h.now);
    h.drain();
    let id = h.opened.last().unwrap().id;
    h.s.on_stream_open(id, Some("sse-1".to_owned()), h.now);
    h.drain();
    h.sse(
        id,
        &format!(
            r#"{{"type":"info","status":"stream_start","epoch":"{E1}","ring_head":1,"resume_after":null,"heartbeat_seconds":4,"stream_id":"sse-1"}}"#
        ),
        None,
    );
    // 4 s and the grace of 2.5 periods: 10 s, whatever was assumed before.
    assert_eq!(h.s.silence_limit(), Duration::from_secs(10));
    assert_ne!(assumed, h.s.silence_limit());
    h.advance(Duration::from_secs(9));
    assert_eq!(h.s.state(), Connected, "inside the server's period");
    h.advance(Duration::from_millis(1001));
    assert_eq!(h.s.state(), Reconnecting);
}

#[test]
fn sse_routes_by_stream_so_overlapping_streams_each_get_their_ticks() {
    let mut h = Harness::new(quick());
    h.open_sse();
    h.s.subscribe(1, Subscription::new(5, &["bid_ask"]), h.now);
    h.drain();
    let a = h.accept_sse("sse-1", E1, 0);
    h.s.subscribe(2, Subscription::new(5, &["bid_ask"]), h.now);
    h.drain();
    let b = h.accept_sse("sse-2", E1, 0);
    h.sse(a, &tick(1), None);
    h.sse(b, &tick(1), None);
    h.sse(b, &tick(2), None);
    assert_eq!(h.ticks(), [(1, 1), (2, 1), (2, 2)]);
    assert_eq!(h.metrics.snapshot().malformed, 0);
}

#[test]
fn sse_a_stream_cut_resumes_every_stream_with_last_event_id_and_drops_duplicates() {
    let mut h = Harness::new(quick());
    h.open_sse();
    h.s.subscribe(1, Subscription::new(5, &["bid_ask"]).since("5m"), h.now);
    h.drain();
    let id = h.accept_sse("sse-1", E1, 40);
    h.sse(id, &tick(41), Some(&format!("{E1}-41")));
    h.sse(id, &tick(42), Some(&format!("{E1}-42")));
    h.s.on_stream_end(id, "end of stream", h.now);
    h.drain();
    assert_eq!(h.s.state(), Reconnecting);
    assert_eq!(h.disconnects, 1, "the other streams are dropped too");
    // Late events of the dropped stream are ignored.
    h.sse(id, &tick(43), None);
    h.advance(Duration::from_secs(2));
    assert_eq!(h.connects, 2);
    h.open_sse();
    let r = h.opened.last().unwrap().clone();
    assert_eq!(r.last_event_id.as_deref(), Some(&*format!("{E1}-42")));
    assert_eq!(
        r.path, "/v3/stream/5?tick_types=bid_ask",
        "the token wins over since"
    );
    let id2 = h.accept_sse("sse-2", E1, 50);
    // The server resends from the token; a tick at or before it would be dropped.
    h.sse(id2, &tick(42), None);
    h.sse(id2, &tick(43), None);
    assert_eq!(h.ticks(), [(1, 41), (1, 42), (1, 43)]);
    assert_eq!(h.metrics.snapshot().duplicates_dropped, 1);
    assert_eq!(h.metrics.snapshot().reconnects, 1);
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::Subscribed { resumed_after: Some(t), .. } if *t == format!("{E1}-42")
    )));
}

#[test]
fn sse_a_complete_ends_the_stream_without_a_reconnect_and_unsubscribe_closes_it() {
    let mut h = Harness::new(quick());
    h.open_sse();
    h.s.subscribe(1, Subscription::new(5, &["bid_ask"]).limit(1), h.now);
    h.drain();
    let id = h.accept_sse("sse-1", E1, 0);
    h.sse(id, &tick(1), None);
    h.sse(
        id,
        r#"{"type":"complete","reason":"limit_reached","count":1,"duration_ms":5,"last_seq":1,"stream_id":"sse-1"}"#,
        None,
    );
    h.s.on_stream_end(id, "end of stream", h.now);
    h.drain();
    assert_eq!(h.s.state(), Connected, "an expected end");
    assert!(matches!(
        h.events.last(),
        Some(Event::Complete {
            sub: 1,
            resuming: false,
            ..
        })
    ));
    h.s.subscribe(2, Subscription::new(6, &["last"]), h.now);
    h.drain();
    let id2 = h.accept_sse("sse-2", E1, 0);
    h.s.unsubscribe(2, h.now);
    h.drain();
    assert_eq!(h.closed, [id2]);
    assert!(matches!(
        h.events.last(),
        Some(Event::Complete { sub: 2, complete, resuming: false }) if complete.reason == "unsubscribed"
    ));
    h.s.on_stream_end(id2, "aborted", h.now);
    h.drain();
    assert_eq!(h.s.state(), Connected);
    assert_eq!(h.s.counts(), (0, 0, 2));
}

#[test]
fn sse_a_slow_consumer_error_reopens_the_stream_from_its_resume_point() {
    let mut h = Harness::new(quick());
    h.open_sse();
    h.s.subscribe(
        1,
        Subscription::new(5, &["bid_ask"]).slow(crate::ServerSlowPolicy::Disconnect),
        h.now,
    );
    h.drain();
    let id = h.accept_sse("sse-1", E1, 0);
    h.sse(id, &tick(1), None);
    h.sse(id, r#"{"type":"error","code":"slow_consumer","message":"x","recoverable":true,"stream_id":"sse-1"}"#, None);
    h.sse(id, r#"{"type":"complete","reason":"error","count":1,"duration_ms":5,"last_seq":1,"stream_id":"sse-1"}"#, None);
    h.s.on_stream_end(id, "end of stream", h.now);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.s.state(), Connected);
    assert_eq!(h.opened.len(), 2);
    assert_eq!(
        h.opened[1].last_event_id.as_deref(),
        Some(&*format!("{E1}-1"))
    );
}

#[test]
fn sse_http_refusals_are_typed_and_a_busy_engine_is_asked_again() {
    let mut h = Harness::new(quick());
    h.open_sse();
    h.s.subscribe(1, Subscription::new(5, &["bid_ask"]), h.now);
    h.drain();
    let id = h.opened[0].id;
    h.s.on_stream_refused(
        id,
        422,
        br#"{"error":{"code":"subscription_refused","message":"no","ib_code":200}}"#,
        h.now,
    );
    h.drain();
    assert!(matches!(
        h.events.last(),
        Some(Event::SubscribeFailed { sub: 1, error, local: false })
            if error.code == "subscription_refused" && error.ib_code == Some(200)
    ));
    h.s.subscribe(2, Subscription::new(6, &["last"]), h.now);
    h.drain();
    let id = h.opened[1].id;
    h.s.on_stream_refused(id, 503, b"<html>busy</html>", h.now);
    h.drain();
    assert!(matches!(
        h.events.last(),
        Some(Event::SubscribeFailed { sub: 2, error, .. }) if error.code == "http_503"
    ));
    h.s.subscribe(3, Subscription::new(7, &["last"]), h.now);
    h.drain();
    let id = h.opened[2].id;
    h.s.on_stream_refused(
        id,
        503,
        br#"{"error":{"code":"engine_unavailable","message":"restarting"}}"#,
        h.now,
    );
    h.advance(Duration::from_millis(1100));
    assert_eq!(h.opened.len(), 4, "asked again after a second");
}

#[test]
fn sse_a_silent_stream_is_declared_dead_even_while_another_stream_talks() {
    let mut cfg = quick();
    cfg.default_heartbeat = Duration::from_secs(1);
    let mut h = Harness::new(cfg);
    h.open_sse();
    // With no stream, silence is fine.
    h.advance(Duration::from_secs(10));
    assert_eq!(h.s.state(), Connected);
    h.s.subscribe(1, Subscription::new(5, &["bid_ask"]), h.now);
    h.s.subscribe(2, Subscription::new(6, &["last"]), h.now);
    h.drain();
    let a = h.opened[0].id;
    let b = h.opened[1].id;
    h.s.on_stream_open(a, Some("sse-1".into()), h.now);
    h.s.on_stream_open(b, Some("sse-2".into()), h.now);
    h.drain();
    for _ in 0..10 {
        if h.s.state() != Connected {
            break;
        }
        h.now += Duration::from_millis(300);
        h.sse(a, r#"{"type":"heartbeat","ts":1,"ring_head":0}"#, None);
        if let Some(d) = h.s.next_deadline()
            && d <= h.now
        {
            h.s.on_timer(h.now);
            h.drain();
        }
    }
    assert_eq!(h.s.state(), Reconnecting);
    assert_eq!(h.metrics.snapshot().silent_deaths, 1);
    assert!(h.transitions().last().is_some_and(|t| t.1 == Reconnecting));
}

#[test]
fn sse_an_oversized_event_is_malformed_and_resyncs() {
    let mut h = Harness::new(quick());
    h.open_sse();
    h.s.subscribe(1, Subscription::new(5, &["bid_ask"]), h.now);
    h.drain();
    let id = h.accept_sse("sse-1", E1, 0);
    h.s.on_stream_malformed(id, FrameError::TooLarge(2 << 20), h.now, 1);
    h.drain();
    assert!(
        h.events
            .iter()
            .any(|e| matches!(e, Event::Malformed(FrameError::TooLarge(_))))
    );
    assert_eq!(h.s.state(), Reconnecting);
    assert_eq!(h.metrics.snapshot().malformed, 1);
}
