//! Time: the next deadline, and what is due at it (connects, handshake timeouts, the
//! backoff's reset, heartbeats, the contract book's refreshes, the silence watchdog,
//! lookup timeouts, status publishing).

use tracing::{info, warn};

use crate::ipc::data_flags;
use crate::tws::ClientMsg;

use super::super::subs::Escalation;
use super::{Clock, Phase, SECOND, STABLE_NS, Session};

impl Session {
    /// Time passed: does what is due, then sends what the budget allows. Call it when
    /// [`Session::next_deadline`] is reached (earlier is harmless).
    pub fn on_timeout(&mut self, clock: Clock) {
        self.clock = clock;
        self.ingest.publisher.set_clock(clock.unix);
        self.timers(clock.mono);
        self.pump(clock.mono);
    }

    /// The monotonic time by which [`Session::on_timeout`] must be called (never before
    /// `now`).
    pub fn next_deadline(&self, now: u64) -> u64 {
        let mut d = self.next_status.min(self.next_heartbeat);
        if self.opts.silence_secs > 0 {
            d = d.min(self.next_watchdog);
        }
        if let Some(t) = self.next_connect {
            d = d.min(t);
        }
        if let Some(c) = &self.conn {
            if c.phase != Phase::Ready {
                d = d.min(c.deadline);
            } else {
                if let Some(t) = self.ingest.subs.next_deadline(now) {
                    d = d.min(if self.pacer.can_send(now) {
                        t
                    } else {
                        self.pacer.next_slot(now)
                    });
                }
                if !self.extra.is_empty() {
                    d = d.min(self.pacer.next_slot(now));
                }
            }
        }
        if let Some(l) = self.lookups.values().map(|l| l.deadline).min() {
            d = d.min(l);
        }
        let ready = self.is_ready();
        if let Some(t) = self.book.next_deadline(ready) {
            d = d.min(if ready && t <= now {
                self.pacer.next_slot(now)
            } else {
                t
            });
        }
        d.max(now)
    }

    fn timers(&mut self, now: u64) {
        if self.next_connect.is_some_and(|t| now >= t) && !self.stopping {
            self.next_connect = None;
            self.connect(now);
        }
        if let Some(c) = &self.conn {
            if c.phase != Phase::Ready && now >= c.deadline {
                let what = match c.phase {
                    Phase::Tcp => "TCP connect timed out",
                    _ => "handshake timed out",
                };
                self.disconnect(what, now, false);
            } else if c.phase == Phase::Ready
                && self.backoff.attempts() > 0
                && now.saturating_sub(c.ready_at) >= STABLE_NS
            {
                self.backoff.reset();
            }
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + SECOND;
            self.ingest.publisher.heartbeat_record();
            self.book.expire(now);
            self.book.refresh_due(now, self.clock.unix);
        }
        if self.opts.silence_secs > 0 && now >= self.next_watchdog {
            self.next_watchdog = now + SECOND;
            self.watchdog(now);
        }
        if !self.lookups.is_empty() {
            self.expire_lookups(now);
        }
        if now >= self.next_status || self.status_dirty {
            self.next_status = now + self.opts.status_ms.max(1) * 1_000_000;
            self.status_dirty = false;
            self.refresh_status();
            self.ingest.publisher.publish_status();
        }
    }

    fn refresh_status(&mut self) {
        let offset = self.clock.unix - self.clock.mono as i64;
        let client_id = self.client_id();
        let p = &mut self.ingest.publisher;
        for (key, ticks, last_mono) in self.ingest.subs.tick_stats() {
            if let Some(s) = p
                .snap
                .find_subscription_mut(key.con_id, key.kind.record_kind())
            {
                s.ticks = ticks;
                s.last_tick_ns = if ticks > 0 {
                    last_mono as i64 + offset
                } else {
                    0
                };
            }
        }
        p.snap.engine.client_id = client_id;
        p.snap.set_farms(self.farms.farms());
        // IB does not say which contracts a farm serves: while any market data farm is
        // broken, every subscription's data may be stale.
        let flag = if self.farms.market_data_broken() {
            data_flags::FARM_BROKEN
        } else {
            0
        };
        p.snap.engine.data_flags = flag;
        for s in p.snap.subscriptions_mut() {
            s.flags = (s.flags & !data_flags::FARM_BROKEN) | flag;
        }
    }

    fn watchdog(&mut self, now: u64) {
        let silence = self.opts.silence_secs.saturating_mul(SECOND);
        match self.ingest.subs.check_silence(now, silence) {
            None => {}
            Some(Escalation::Probe) => {
                info!("watchdog: a subscription went silent; probing IB with reqCurrentTime");
                self.extra.push_back(ClientMsg::ReqCurrentTime);
            }
            Some(Escalation::Resubscribe) => {
                warn!("watchdog: still silent after the probe; resubscribing");
            }
            Some(Escalation::Reconnect) => {
                warn!("watchdog: still silent after resubscribing; reconnecting");
                self.disconnect("watchdog: subscriptions silent", now, false);
            }
        }
        self.drain_sub_events();
    }
}
