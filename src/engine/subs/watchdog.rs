//! The watchdog: a subscription without ticks escalates one step per silent period (probe,
//! resubscribe, reconnect).

use ib_stream_ipc::SubState;

use super::{Escalation, Pending, SubKey, SubscriptionManager};

impl SubscriptionManager {
    /// The watchdog: subscriptions with no tick for `silence_ns` escalate one step per
    /// silent period: probe the connection, then resubscribe, then reconnect. Returns the
    /// strongest step due now (the engine acts on it); resubscribes are queued here.
    pub fn check_silence(&mut self, now: u64, silence_ns: u64) -> Option<Escalation> {
        if !self.connected || self.stale {
            return None;
        }
        let mut worst: Option<Escalation> = None;
        let mut changed = Vec::new();
        for (key, s) in self.subs.iter_mut() {
            let Some(id) = s.req_id else { continue };
            let idx = i64::from(id) - i64::from(self.first_req_id);
            let Some(Some(route)) = self.routes.get_mut(idx as usize) else {
                continue;
            };
            let quiet_since = route.last_tick_ns.max(s.since_ns);
            let periods = now.saturating_sub(quiet_since) / silence_ns.max(1);
            if periods <= u64::from(s.watchdog) {
                continue;
            }
            s.watchdog += 1;
            s.since_ns = s.since_ns.max(quiet_since);
            route.live = false;
            let step = match s.watchdog {
                1 => Escalation::Probe,
                2 => Escalation::Resubscribe,
                _ => Escalation::Reconnect,
            };
            if s.state != SubState::Silent {
                s.state = SubState::Silent;
                changed.push(*key);
            }
            if step == Escalation::Resubscribe {
                changed.push(*key);
            }
            worst = worst.max(Some(step));
        }
        for key in changed {
            let resubscribe = self
                .subs
                .get(&key)
                .is_some_and(|s| s.watchdog == 2 && s.req_id.is_some());
            if resubscribe {
                self.resubscribe(key);
            } else {
                self.emit(key);
            }
        }
        worst
    }

    fn resubscribe(&mut self, key: SubKey) {
        let Some(s) = self.subs.get_mut(&key) else {
            return;
        };
        let Some(id) = s.req_id.take() else { return };
        s.state = SubState::Queued;
        s.retry = None;
        self.clear_route(id);
        self.pending.push_back(Pending::Cancel {
            req_id: id,
            tbt: key.kind.is_tick_by_tick(),
        });
        self.pending.push_back(Pending::Subscribe(key));
        self.emit(key);
    }
}
