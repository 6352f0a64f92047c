//! The three inputs of `ib-stream studies`, each reduced to the same [`Input`] sequence:
//! - the ring ([`ring`]): this machine's shared memory, through the project's one
//!   [`RingFollower`] (laps and writer restarts become gaps);
//! - a remote server ([`remote`]): the web API through the streaming client crate
//!   (`ib-stream-client`), history then live from `from`;
//! - storage ([`storage`]): history through [`crate::storage::query`].
//!
//! Each keeps the ticks of one contract whose receive time (µs) lies in `[from, to)`, in
//! receive order, and stops at the first record at or after `to`. Storage and the web API
//! carry microseconds; the ring's nanoseconds are floored to them ([`super::ns_to_us`]), so the
//! same records give the same ticks. A remote tick's decimal prices are turned back into fixed
//! point by rounding (exact for any price with at most 9 decimals below about 9e6).

use std::path::Path;
use std::time::Duration;

use ib_stream_client::{Client, ClientConfig, ConnState, Event as ClientEvent, Subscription};

use super::{Event, Gap, Tick, TickKind, TradeKind, event_of, ns_to_us};
use crate::ipc::{
    Follow, FollowConfig, FollowEvent, PRICE_SCALE, RingFollower, RingReader, SIZE_SCALE, StartAt,
    UNDEF_I64,
};
use crate::storage::query::{Query, QueryError, QueryIter};

/// What an input hands the study.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// A tick or a gap.
    Event(Event),
    /// No tick before this time (µs) is still to come.
    Clock(i64),
}

/// The contract and interval to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    /// conId.
    pub con_id: u32,
    /// Which trades.
    pub trades: TradeKind,
    /// First receive time, µs (inclusive); `None`: from now (the ring, a server) or from the
    /// beginning (storage).
    pub from_us: Option<i64>,
    /// End, µs (exclusive); `None`: until stopped.
    pub to_us: Option<i64>,
}

impl Selection {
    /// The ticks of `con_id` received in `[from_ns, to_ns)`, at the microseconds every input
    /// shares: by the storage query's rule a record is in range when its microsecond overlaps
    /// the range, so `from` floors and `to` rounds up.
    pub fn of_ns(
        con_id: u32,
        trades: TradeKind,
        from_ns: Option<i64>,
        to_ns: Option<i64>,
    ) -> Selection {
        Selection {
            con_id,
            trades,
            from_us: from_ns.map(|n| n.div_euclid(1000)),
            to_us: to_ns.map(|n| n.div_euclid(1000) + i64::from(n.rem_euclid(1000) != 0)),
        }
    }

    fn before(&self, t_us: i64) -> bool {
        self.from_us.is_some_and(|f| t_us < f)
    }
    fn after(&self, t_us: i64) -> bool {
        self.to_us.is_some_and(|e| t_us >= e)
    }
}

/// Why an input stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The ring could not be opened.
    #[error("ring {path}")]
    Ring {
        /// The ring file.
        path: String,
        /// Why.
        #[source]
        source: crate::ipc::IpcError,
    },
    /// Reading storage failed.
    #[error("storage")]
    Storage(#[from] QueryError),
    /// The client could not start or gave up.
    #[error("server {url}: {reason}")]
    Remote {
        /// The server.
        url: String,
        /// Why.
        reason: String,
    },
    /// The sink stopped the input with an error (e.g. a write failed).
    #[error("output")]
    Output(#[source] std::io::Error),
    /// No runtime for the client.
    #[error("starting the runtime")]
    Runtime(#[source] std::io::Error),
}

/// Where an input sends what it reads; `Err` stops it.
pub type Sink<'a> = dyn FnMut(Input) -> Result<(), std::io::Error> + 'a;

fn wall_us() -> i64 {
    ns_to_us(crate::ipc::shm::unix_time_ns() as i64)
}

/// A quiet ring or server says nothing: the clock moves bars on. Ticks are published a
/// moment after they are stamped, so the clock given trails the wall clock by this much.
pub const CLOCK_LAG_US: i64 = 200_000;

/// How long past `to` an input waits for the record that proves nothing before `to` is
/// still to come, when the stream is quiet.
const END_GRACE_US: i64 = 5_000_000;

/// Reads the ring in `dir` (waiting up to `wait` for it to appear) until `to`, or for
/// `seconds`, or forever.
pub fn ring(
    dir: &Path,
    sel: &Selection,
    wait: Duration,
    seconds: Option<f64>,
    sink: &mut Sink<'_>,
) -> Result<(), InputError> {
    let path = dir.join(crate::ipc::RING_FILE_NAME);
    let start = if sel.from_us.is_some() {
        StartAt::Oldest
    } else {
        StartAt::Newest
    };
    let reader =
        RingReader::open_wait(&path, start, wait, Duration::from_millis(20)).map_err(|source| {
            InputError::Ring {
                path: path.display().to_string(),
                source,
            }
        })?;
    let mut f = RingFollower::new(reader, FollowConfig::default());
    let deadline = seconds.map(|s| wall_us() + (s.max(0.0) * 1e6) as i64);
    let out = |r: Result<(), std::io::Error>| r.map_err(InputError::Output);
    let mut last_t = sel.from_us.unwrap_or_else(wall_us);
    let mut first = true;
    loop {
        match f.poll() {
            Follow::Record(rec) => {
                let t = ns_to_us(rec.ts_recv);
                if first && let Some(from) = sel.from_us {
                    // The ring no longer holds the start of the interval: say so.
                    if rec.seq > 1 && t > from {
                        out(sink(Input::Event(Event::Gap(Gap {
                            from_us: from,
                            to_us: Some(t),
                            first_seq: Some(1),
                            last_seq: Some(rec.seq - 1),
                        }))))?;
                    }
                }
                first = false;
                if sel.after(t) {
                    break;
                }
                last_t = t;
                if sel.before(t) {
                    continue;
                }
                if let Some(ev) = event_of(&rec, sel.con_id, sel.trades) {
                    out(sink(Input::Event(ev)))?;
                }
            }
            Follow::Event(FollowEvent::Lost {
                first_seq,
                last_seq,
                ..
            }) => {
                out(sink(Input::Event(Event::Gap(Gap {
                    from_us: last_t,
                    to_us: None,
                    first_seq: Some(first_seq),
                    last_seq: Some(last_seq),
                }))))?;
            }
            Follow::Event(FollowEvent::WriterRestart(r)) => {
                let now = crate::ipc::shm::unix_time_ns() as i64;
                let rec = r.gap_record(last_t.saturating_mul(1000), now);
                if let Some(ev) = event_of(&rec, sel.con_id, sel.trades) {
                    out(sink(Input::Event(ev)))?;
                }
            }
            Follow::Event(FollowEvent::WriterState(st)) => {
                tracing::info!(?st, "ring writer state changed");
            }
            Follow::Empty => {
                let now = wall_us();
                if deadline.is_some_and(|d| now >= d)
                    || sel.to_us.is_some_and(|e| now >= e + END_GRACE_US)
                {
                    break;
                }
                let clock = now - CLOCK_LAG_US;
                if !sel.before(clock) && !sel.after(clock) {
                    out(sink(Input::Clock(clock)))?;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    if let Some(e) = sel.to_us {
        out(sink(Input::Clock(e)))?;
    }
    Ok(())
}

/// Reads storage under `root`: `[from, to)` (both needed), in receive order. Damaged data is
/// skipped and reported as a gap.
pub fn storage(root: &Path, sel: &Selection, sink: &mut Sink<'_>) -> Result<(), InputError> {
    let from = sel.from_us.unwrap_or(i64::MIN / 1000);
    let to = sel.to_us.unwrap_or(i64::MAX / 1000);
    let mut q = Query::new(
        sel.con_id,
        from.saturating_mul(1000),
        to.saturating_mul(1000),
    );
    q.kinds = super::kinds(sel.trades).to_vec();
    let mut it = QueryIter::new(root, &q)?;
    let out = |r: Result<(), std::io::Error>| r.map_err(InputError::Output);
    let mut last_t = from;
    loop {
        match it.next_record() {
            Ok(Some(rec)) => {
                last_t = ns_to_us(rec.ts_recv);
                if let Some(ev) = event_of(&rec, sel.con_id, sel.trades) {
                    out(sink(Input::Event(ev)))?;
                }
            }
            Ok(None) => break,
            Err(QueryError::Damaged(d)) => {
                tracing::warn!("storage: {d}");
                out(sink(Input::Event(Event::Gap(Gap {
                    from_us: last_t,
                    to_us: None,
                    first_seq: None,
                    last_seq: None,
                }))))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(e) = sel.to_us {
        out(sink(Input::Clock(e)))?;
    }
    Ok(())
}

/// A fixed-point value from a decimal the web API sent as a JSON number.
fn fixed(v: Option<f64>, scale: i64) -> i64 {
    v.filter(|x| x.is_finite())
        .map_or(UNDEF_I64, |x| (x * scale as f64).round() as i64)
}

/// The study tick of a remote tick, if it is one the studies read.
pub fn remote_tick(t: &ib_stream_client::Tick, trades: TradeKind) -> Option<Tick> {
    use ib_stream_client::TickKind as K;
    let kind = match (t.tt, trades) {
        (K::Last, TradeKind::Last) | (K::AllLast, TradeKind::AllLast) => {
            let (price, size) = (fixed(t.p, PRICE_SCALE), fixed(t.s, SIZE_SCALE));
            if price == UNDEF_I64 || size == UNDEF_I64 {
                return None;
            }
            TickKind::Trade { price, size }
        }
        (K::BidAsk, _) => TickKind::Quote {
            bid: fixed(t.bp, PRICE_SCALE),
            ask: fixed(t.ap, PRICE_SCALE),
            bid_size: fixed(t.bs, SIZE_SCALE),
            ask_size: fixed(t.r#as, SIZE_SCALE),
        },
        _ => return None,
    };
    Some(Tick {
        seq: t.seq,
        t_us: t.st,
        kind,
    })
}

/// The study gap of a server's `gap` message; `last_t_us`, the receive time of the last tick
/// before it, stands in for an unknown start. `None` when nothing was lost (`count: 0`: a
/// clean engine restart, the run change a replay across runs says): storage read directly
/// has no gap there either.
pub fn remote_gap(g: &ib_stream_client::Gap, last_t_us: i64) -> Option<Gap> {
    (g.count != Some(0)).then(|| Gap {
        from_us: g.t0.unwrap_or(last_t_us),
        to_us: g.t1,
        first_seq: g.first_seq,
        last_seq: g.last_seq,
    })
}

/// Reads a remote server at `url` (history then live from `from`) until `to`, or for
/// `seconds`, or forever.
pub fn remote(
    url: &str,
    token: Option<&str>,
    sel: &Selection,
    seconds: Option<f64>,
    sink: &mut Sink<'_>,
) -> Result<(), InputError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(InputError::Runtime)?;
    rt.block_on(remote_async(url, token, sel, seconds, sink))
}

async fn remote_async(
    url: &str,
    token: Option<&str>,
    sel: &Selection,
    seconds: Option<f64>,
    sink: &mut Sink<'_>,
) -> Result<(), InputError> {
    let fail = |reason: String| InputError::Remote {
        url: url.to_owned(),
        reason,
    };
    let mut cfg = ClientConfig::new(url.to_owned());
    cfg.token = token.map(str::to_owned);
    let (client, mut events) = Client::start(cfg).map_err(|e| fail(e.to_string()))?;
    let trade_name = match sel.trades {
        TradeKind::Last => "last",
        TradeKind::AllLast => "all_last",
    };
    let mut sub = Subscription::new(sel.con_id, &["bid_ask", trade_name]);
    if let Some(f) = sel.from_us {
        // A second early (the server reads `since` at its own resolution); ticks before
        // `from` are dropped here.
        let s = f.div_euclid(1_000_000) - 1;
        sub = sub.since(s.to_string());
    }
    client.subscribe(sub).map_err(|e| fail(e.to_string()))?;
    let out = |r: Result<(), std::io::Error>| r.map_err(InputError::Output);
    let deadline = seconds.map(|s| wall_us() + (s.max(0.0) * 1e6) as i64);
    let mut last_t = sel.from_us.unwrap_or_else(wall_us);
    let mut last_event = wall_us();
    let result = loop {
        let ev = tokio::time::timeout(Duration::from_millis(100), events.next()).await;
        let now = wall_us();
        if ev.is_ok() {
            last_event = now;
        }
        // Past the end and quiet for a while: nothing more is coming for the interval.
        let quiet_after_end = sel
            .to_us
            .is_some_and(|e| now >= e + END_GRACE_US && now >= last_event + END_GRACE_US);
        if deadline.is_some_and(|d| now >= d) || quiet_after_end {
            break Ok(());
        }
        let ev = match ev {
            Err(_) => {
                let clock = now - CLOCK_LAG_US;
                if !sel.before(clock) && !sel.after(clock) && clock > last_t {
                    out(sink(Input::Clock(clock)))?;
                }
                continue;
            }
            Ok(None) => break Ok(()),
            Ok(Some(ev)) => ev,
        };
        match ev {
            ClientEvent::Tick { tick, .. } => {
                if sel.after(tick.st) {
                    break Ok(());
                }
                last_t = last_t.max(tick.st);
                if sel.before(tick.st) {
                    continue;
                }
                if let Some(t) = remote_tick(&tick, sel.trades) {
                    out(sink(Input::Event(Event::Tick(t))))?;
                }
            }
            ClientEvent::Gap { gap, .. } => {
                if sel.after(gap.t0.unwrap_or(last_t)) {
                    break Ok(());
                }
                if let Some(g) = remote_gap(&gap, last_t) {
                    out(sink(Input::Event(Event::Gap(g))))?;
                }
            }
            ClientEvent::State(t) if t.to == ConnState::Failed => break Err(fail(t.reason)),
            ClientEvent::SubscribeFailed { error, .. } => {
                break Err(fail(format!("{}: {}", error.code, error.message)));
            }
            ClientEvent::Complete {
                resuming: false, ..
            } => break Ok(()),
            _ => {}
        }
    };
    client.close().await;
    result?;
    if let Some(e) = sel.to_us {
        out(sink(Input::Clock(e)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_decimals_become_the_records_fixed_point() {
        let line = br#"{"seq":5,"st":1700000000123456,"cid":7,"tt":"last","p":21000.25,"s":3}"#;
        let ib_stream_client::ServerMessage::Tick(t) =
            ib_stream_client::message::parse(line).unwrap()
        else {
            panic!("not a tick")
        };
        assert_eq!(
            remote_tick(&t, TradeKind::Last),
            Some(Tick {
                seq: 5,
                t_us: 1_700_000_000_123_456,
                kind: TickKind::Trade {
                    price: 21_000_250_000_000,
                    size: 3 * SIZE_SCALE
                }
            })
        );
        assert_eq!(remote_tick(&t, TradeKind::AllLast), None);
        // Prices with cents that have no exact binary form still round to the exact value.
        for (p, fx) in [
            (123.45, 123_450_000_000),
            (0.07, 70_000_000),
            (99_999.99, 99_999_990_000_000),
        ] {
            assert_eq!(fixed(Some(p), PRICE_SCALE), fx);
        }
    }
}
