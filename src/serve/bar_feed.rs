//! The bars of one stream (`/v3/bars/{conId}`), sans-IO: the messages of a tick stream in
//! (history then live, as [`super::replay`] joins them), bar messages out.
//!
//! A bars stream is a tick stream of the contract's `bid_ask` and trades, opened through the
//! same join as `/v3/stream` (so it has the same guarantees: no seam, no duplicate, every
//! loss said by a `gap`), whose ticks are turned back into study ticks exactly as the
//! `--url` input of `ib-stream studies` does ([`input::remote_tick`]) and fed to the one
//! [`BarAggregator`]. The `bar` object of every message is the row `ib-stream studies bars
//! --format jsonl` writes for that bar, byte for byte.
//!
//! Out: `bar` (a closed bar: final), `update` (the bar in progress, at most once per batch
//! the caller drains, [`BarFeed::take_update`]), and the tick stream's `info`, `gap` and
//! `error` messages as they are. Each bar also carries its delta (trades at or above the ask
//! minus at or below the bid, [`Delta`]) and the session's VWAP up to its end.

use bytes::Bytes;
use serde_json::json;

use super::hub::Out;
use crate::studies::bars::{Bar, BarAggregator, BarSize, BarSource, div_round};
use crate::studies::clock::Clock;
use crate::studies::delta::{Delta, DeltaBar, DeltaRow};
use crate::studies::input::{remote_gap, remote_tick};
use crate::studies::output::{Format, RowWriter};
use crate::studies::{Gap, Study, Tick, TradeKind};

/// What a bars stream computes.
#[derive(Clone, Debug)]
pub struct BarSpec {
    /// The contract.
    pub con_id: u32,
    /// Bar size, µs.
    pub size_us: i64,
    /// The size as asked (`1m`), echoed.
    pub size_name: String,
    /// The exchange clock.
    pub clock: Clock,
    /// Which trades.
    pub trades: TradeKind,
}

/// The session VWAP so far: sums of the session's closed bars.
#[derive(Clone, Copy, Debug, Default)]
struct SessionSums {
    start_us: i64,
    pv: i128,
    volume: i64,
}

/// One stream's bars (see the module documentation).
#[derive(Debug)]
pub struct BarFeed {
    spec: BarSpec,
    stream_id: String,
    bars: BarAggregator,
    delta: Delta,
    session: SessionSums,
    /// Closed delta bars not yet matched with their bar, oldest first.
    deltas: Vec<DeltaBar>,
    rows: Vec<Bar>,
    delta_rows: Vec<DeltaRow>,
    writer: RowWriter,
    /// The last `update` sent, so an unchanged bar is not sent again.
    last_update: Option<Bar>,
    /// The receive time of the last tick, µs (stands in for a gap's unknown start).
    last_t: i64,
    /// History is over: the stream reads the ring now.
    live: bool,
    /// The newest clock given, µs.
    clock_us: i64,
    closed: u64,
}

impl BarFeed {
    /// The bars of `spec` for the stream `stream_id`.
    pub fn new(spec: BarSpec, stream_id: &str) -> BarFeed {
        BarFeed {
            bars: BarAggregator::new(
                BarSize::Time(spec.size_us),
                BarSource::Trades,
                false,
                spec.clock.clone(),
            ),
            delta: Delta::new(spec.clock.clone(), Some(spec.size_us)),
            writer: RowWriter::new(Format::Jsonl, spec.clock.clone()),
            spec,
            stream_id: stream_id.to_string(),
            session: SessionSums::default(),
            deltas: Vec::new(),
            rows: Vec::new(),
            delta_rows: Vec::new(),
            last_update: None,
            last_t: 0,
            live: false,
            clock_us: i64::MIN,
            closed: 0,
        }
    }

    /// True once the stream has joined the ring (`info{live}` passed): only then may the
    /// wall clock close bars (history is older than any clock).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Bars closed so far.
    pub fn closed(&self) -> u64 {
        self.closed
    }

    /// The stream joined the ring without history (no `since`): the clock may close bars.
    pub fn set_live(&mut self) {
        self.live = true;
    }

    /// One message of the tick stream; what it yields is appended to `msgs` as
    /// (event name, JSON).
    pub fn on_out(&mut self, out: &Out, msgs: &mut Vec<(&'static str, Bytes)>) {
        match out {
            Out::Tick { json, .. } | Out::History { json, .. } => {
                let Ok(ib_stream_client::ServerMessage::Tick(t)) =
                    ib_stream_client::message::parse(json)
                else {
                    return;
                };
                self.last_t = self.last_t.max(t.st);
                if let Some(tick) = remote_tick(&t, self.spec.trades) {
                    self.on_tick(&tick, msgs);
                }
            }
            Out::Control { event, json, .. } => {
                match *event {
                    "gap" => {
                        if let Ok(ib_stream_client::ServerMessage::Gap(g)) =
                            ib_stream_client::message::parse(json)
                            && let Some(g) = remote_gap(&g, self.last_t)
                        {
                            self.on_gap(&g, msgs);
                        }
                    }
                    "info" if is_live_info(json) => self.live = true,
                    _ => {}
                }
                msgs.push((event, json.clone()));
            }
        }
    }

    /// One study tick (the REST range reads storage through the command's input).
    pub fn on_tick(&mut self, t: &Tick, msgs: &mut Vec<(&'static str, Bytes)>) {
        self.last_t = self.last_t.max(t.t_us);
        self.bars.on_tick(t, &mut self.rows);
        self.delta.on_tick(t, &mut self.delta_rows);
        self.emit_closed(msgs);
    }

    /// A gap.
    pub fn on_gap(&mut self, g: &Gap, msgs: &mut Vec<(&'static str, Bytes)>) {
        self.bars.on_gap(g, &mut self.rows);
        self.delta.on_gap(g, &mut self.delta_rows);
        self.emit_closed(msgs);
    }

    /// The time is `now_us` and no tick before it is still to come: bars that ended close.
    pub fn on_clock(&mut self, now_us: i64, msgs: &mut Vec<(&'static str, Bytes)>) {
        if now_us <= self.clock_us {
            return;
        }
        self.clock_us = now_us;
        self.bars.on_clock(now_us, &mut self.rows);
        self.delta.on_clock(now_us, &mut self.delta_rows);
        self.emit_closed(msgs);
    }

    /// The bar in progress, when it changed since the last call.
    pub fn take_update(&mut self) -> Option<Bytes> {
        let cur = *self.bars.current()?;
        if self.last_update == Some(cur) {
            return None;
        }
        self.last_update = Some(cur);
        let delta = self
            .delta
            .current()
            .filter(|d| d.start_us == cur.start_us)
            .copied();
        let vwap = self.session_vwap(&cur, false);
        Some(self.message("update", &cur, delta, vwap))
    }

    /// The input ends: the bar in progress is written (not final) as an `update`, as the
    /// command writes it at the end of its input.
    pub fn finish(&mut self, msgs: &mut Vec<(&'static str, Bytes)>) {
        if let Some(u) = self.take_update() {
            msgs.push(("update", u));
        }
    }

    fn emit_closed(&mut self, msgs: &mut Vec<(&'static str, Bytes)>) {
        for r in self.delta_rows.drain(..) {
            if let DeltaRow::Bar(d) = r {
                self.deltas.push(d);
            }
        }
        let rows = std::mem::take(&mut self.rows);
        for b in &rows {
            // Delta bars close with their bars (same clock, same ticks); one without trades
            // (a gap's empty bar) has none.
            self.deltas.retain(|d| d.start_us >= b.start_us);
            let delta = self
                .deltas
                .iter()
                .position(|d| d.start_us == b.start_us)
                .map(|i| self.deltas.remove(i));
            let vwap = self.session_vwap(b, true);
            msgs.push(("bar", self.message("bar", b, delta, vwap)));
            self.closed += 1;
            if self.last_update.is_some_and(|u| u.start_us == b.start_us) {
                self.last_update = None;
            }
        }
        self.rows = rows;
        self.rows.clear();
    }

    /// The session's VWAP through `b`; a final bar is added to the session's sums.
    fn session_vwap(&mut self, b: &Bar, commit: bool) -> Option<i64> {
        let start = self.spec.clock.session(b.start_us).0;
        let mut s = self.session;
        if s.start_us != start {
            s = SessionSums {
                start_us: start,
                pv: 0,
                volume: 0,
            };
        }
        s.pv += b.pv;
        s.volume += b.volume;
        if commit {
            self.session = s;
        }
        div_round(s.pv, i128::from(s.volume)).and_then(|v| i64::try_from(v).ok())
    }

    fn message(&mut self, kind: &str, b: &Bar, d: Option<DeltaBar>, vwap: Option<i64>) -> Bytes {
        self.writer.row(b);
        let mut row = Vec::with_capacity(512);
        // A Vec never fails to take the bytes.
        let _ = self.writer.flush(&mut row);
        let row = row.trim_ascii_end();
        let fixed = |v: i64, scale: i64| {
            let mut out = Vec::with_capacity(24);
            crate::tickjson::write_fixed(&mut out, v, scale);
            String::from_utf8_lossy(&out).into_owned()
        };
        let size = crate::ipc::SIZE_SCALE;
        let delta = d.map(|d| {
            json!({
                "buy": raw(&fixed(d.buy, size)),
                "sell": raw(&fixed(d.sell, size)),
                "inside": raw(&fixed(d.inside, size)),
                "delta": raw(&fixed(d.delta, size)),
                "cum_delta": raw(&fixed(d.cum_delta, size)),
            })
        });
        let head = json!({
            "type": kind,
            "stream_id": self.stream_id,
            "contract_id": self.spec.con_id,
            "size": self.spec.size_name,
            "t": b.start_us,
            "end_t": b.end_us,
            "session_vwap": vwap.map(|v| raw(&fixed(v, crate::ipc::PRICE_SCALE))),
            "delta": delta,
        });
        let mut out = serde_json::to_vec(&head).unwrap_or_default();
        // Splice the command's row in as `bar` (its decimals stay exactly as it writes them).
        if out.last() == Some(&b'}') {
            out.pop();
            out.extend_from_slice(b",\"bar\":");
            out.extend_from_slice(row);
            out.push(b'}');
        }
        Bytes::from(out)
    }
}

/// A decimal as a JSON number, exactly as written (serde_json's `arbitrary_precision` is
/// off, so it goes through f64 only when it is not an exact integer).
fn raw(s: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Number>(s)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

/// Whether an `info` message says the stream joined the ring.
fn is_live_info(json: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(json).is_ok_and(|v| v["status"] == "live")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::{PRICE_SCALE, Quote, Record, SIZE_SCALE, Trade};
    use crate::studies::Event;
    use serde_json::Value;

    const CON: u32 = 7;
    const M: i64 = 60_000_000;
    // 2026-01-05T14:30:00Z
    const T0: i64 = 1_767_623_400_000_000;

    fn spec() -> BarSpec {
        BarSpec {
            con_id: CON,
            size_us: M,
            size_name: "1m".into(),
            clock: Clock::new("America/New_York", "18:00").unwrap(),
            trades: TradeKind::Last,
        }
    }

    fn json(r: &Record) -> Bytes {
        let mut out = Vec::new();
        crate::tickjson::encode(r, &crate::tickjson::NoStrings, &mut out);
        Bytes::from(out)
    }

    fn trade(seq: u64, t_us: i64, cents: i64, size: i64) -> Record {
        let mut r = Record::trade(
            false,
            CON,
            t_us * 1000,
            Trade {
                price: cents * PRICE_SCALE / 100,
                size: size * SIZE_SCALE,
                exchange_id: 0,
                conditions_id: 0,
            },
        );
        r.seq = seq;
        r.ts_recv = t_us * 1000 + 999;
        r
    }

    fn quote(seq: u64, t_us: i64, bid_cents: i64) -> Record {
        let mut r = Record::quote(
            CON,
            t_us * 1000,
            Quote {
                bid_price: bid_cents * PRICE_SCALE / 100,
                ask_price: (bid_cents + 25) * PRICE_SCALE / 100,
                bid_size: SIZE_SCALE,
                ask_size: SIZE_SCALE,
            },
        );
        r.seq = seq;
        r.ts_recv = t_us * 1000;
        r
    }

    fn history(r: &Record) -> Out {
        Out::History {
            tag: 0,
            seq: r.seq,
            epoch: 1,
            json: json(r),
        }
    }

    fn parse(b: &Bytes) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    /// The rows `ib-stream studies bars --format jsonl` writes for these records.
    fn command_rows(recs: &[Record], spec: &BarSpec) -> Vec<Value> {
        let mut a = BarAggregator::new(
            BarSize::Time(spec.size_us),
            BarSource::Trades,
            false,
            spec.clock.clone(),
        );
        let mut rows = Vec::new();
        for r in recs {
            match crate::studies::event_of(r, CON, spec.trades) {
                Some(Event::Tick(t)) => a.on_tick(&t, &mut rows),
                Some(Event::Gap(g)) => a.on_gap(&g, &mut rows),
                None => {}
            }
        }
        a.finish(&mut rows);
        let mut w = RowWriter::new(Format::Jsonl, spec.clock.clone());
        for r in &rows {
            w.row(r);
        }
        let mut out = Vec::new();
        w.flush(&mut out).unwrap();
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    fn recs() -> Vec<Record> {
        vec![
            quote(1, T0 + 1, 10_000),
            // At the ask: a buy of 2.
            trade(2, T0 + 2, 10_025, 2),
            // At the bid: a sell of 1.
            trade(3, T0 + 30_000_000, 10_000, 1),
            quote(4, T0 + M + 5, 10_100),
            trade(5, T0 + M + 6, 10_125, 3),
            trade(6, T0 + 3 * M + 1, 10_110, 1),
        ]
    }

    #[test]
    fn closed_bars_are_the_commands_rows_with_their_delta_and_session_vwap() {
        let mut f = BarFeed::new(spec(), "bars-1");
        let mut msgs = Vec::new();
        let mut updates = Vec::new();
        for r in recs() {
            f.on_out(&history(&r), &mut msgs);
            if let Some(u) = f.take_update() {
                updates.push(parse(&u));
            }
        }
        f.finish(&mut msgs);
        let bars: Vec<Value> = msgs.iter().map(|(_, j)| parse(j)).collect();
        let names: Vec<&str> = msgs.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["bar", "bar"]);
        let want = command_rows(&recs(), &spec());
        assert_eq!(want.len(), 3);
        assert_eq!(bars[0]["bar"], want[0]);
        assert_eq!(bars[1]["bar"], want[1]);
        // The bar in progress is the last update, as the command's last (not final) row.
        assert_eq!(updates.last().unwrap()["bar"], want[2]);
        assert_eq!(updates.last().unwrap()["type"], "update");
        assert_eq!(bars[0]["t"], T0);
        assert_eq!(bars[0]["end_t"], T0 + M);
        assert_eq!(bars[0]["delta"]["buy"], 2);
        assert_eq!(bars[0]["delta"]["sell"], 1);
        assert_eq!(bars[0]["delta"]["delta"], 1);
        assert_eq!(bars[1]["delta"]["cum_delta"], 4);
        // Session VWAP through bar 1: (100.25*2 + 100*1 + 101.25*3) / 6 = 100.708333…
        let v = bars[1]["session_vwap"].as_f64().unwrap();
        assert!((v - 100.708_333_333).abs() < 1e-6, "{v}");
        assert_eq!(bars[0]["session_vwap"], bars[0]["bar"]["vwap"]);
        assert_eq!(f.closed(), 2);
        // Nothing changed: no second update.
        assert!(f.take_update().is_none());
    }

    #[test]
    fn a_gap_flags_the_bars_it_touches_and_a_clean_restart_does_not() {
        let gap = |count: u64| Out::Control {
            tag: 0,
            event: "gap",
            id: None,
            json: Bytes::from(
                serde_json::to_vec(&json!({
                    "type": "gap", "reason": "resume_unavailable",
                    "first_seq": 4, "last_seq": 4, "count": count,
                    "t0": T0 + 40_000_000, "t1": T0 + 2 * M + 1,
                }))
                .unwrap(),
            ),
            end: false,
        };
        for (count, flagged) in [(1, true), (0, false)] {
            let mut f = BarFeed::new(spec(), "bars-1");
            let mut msgs = Vec::new();
            let r = recs();
            for x in &r[..3] {
                f.on_out(&history(x), &mut msgs);
            }
            f.on_out(&gap(count), &mut msgs);
            for x in &r[4..] {
                f.on_out(&history(x), &mut msgs);
            }
            let bars: Vec<Value> = msgs
                .iter()
                .filter(|(n, _)| *n == "bar")
                .map(|(_, j)| parse(j))
                .collect();
            // The gap message itself is passed on.
            assert!(msgs.iter().any(|(n, _)| *n == "gap"));
            let flags: Vec<bool> = bars.iter().map(|b| b["bar"]["gap"] == true).collect();
            if flagged {
                // Minutes 0, 1 (empty, but in the gap) and 2 (the gap ends in it).
                assert_eq!(flags, [true, true, true], "{bars:?}");
                assert_eq!(bars[2]["bar"]["open"], Value::Null);
                assert_eq!(bars[1]["bar"]["gap_first_seq"], 4);
            } else {
                assert_eq!(flags, [false, false], "{bars:?}");
            }
        }
    }

    #[test]
    fn the_clock_closes_bars_only_forward() {
        let mut f = BarFeed::new(spec(), "bars-1");
        let mut msgs = Vec::new();
        f.on_out(&history(&trade(1, T0 + 5, 10_000, 1)), &mut msgs);
        assert!(!f.is_live());
        f.on_out(
            &Out::Control {
                tag: 0,
                event: "info",
                id: None,
                json: Bytes::from_static(br#"{"type":"info","status":"live","after_seq":1}"#),
                end: false,
            },
            &mut msgs,
        );
        assert!(f.is_live());
        assert_eq!(msgs.len(), 1);
        f.on_clock(T0 + M - 1, &mut msgs);
        assert_eq!(msgs.len(), 1);
        f.on_clock(T0 + M, &mut msgs);
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[1].0, "bar");
        assert_eq!(parse(&msgs[1].1)["bar"]["final"], true);
    }
}
