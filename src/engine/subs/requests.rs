//! Holders and the queue: subscribe and unsubscribe (one IB request per key, shared by its
//! holders), the next request to send, and when each queued request may go (the
//! same-instrument window, a refusal's retry, its contract).

use std::collections::BTreeSet;

use ib_stream_ipc::SubState;

use super::{
    Pending, Request, Route, Sub, SubEvent, SubKey, SubscribeAck, SubscribeError,
    SubscriptionManager,
};

impl SubscriptionManager {
    /// `holder` wants `key`. The first holder creates the IB request; later ones share it.
    pub fn subscribe(
        &mut self,
        holder: &str,
        key: SubKey,
        now: u64,
    ) -> Result<SubscribeAck, SubscribeError> {
        if key.con_id == 0 {
            return Err(SubscribeError::BadConId);
        }
        if let Some(s) = self.subs.get_mut(&key) {
            s.holders.insert(holder.to_string());
            return Ok(SubscribeAck {
                state: s.state,
                shared: true,
                holders: s.holders.len(),
                code: s.code,
                retry: s.waiting_retry(),
            });
        }
        let tbt = key.kind.is_tick_by_tick();
        let in_use = self.in_use(tbt);
        if tbt && in_use >= self.limits.tbt_slots {
            return Err(SubscribeError::TickByTickFull {
                in_use,
                limit: self.limits.tbt_slots,
            });
        }
        if !tbt && in_use >= self.limits.mkt_lines {
            return Err(SubscribeError::LinesFull {
                in_use,
                limit: self.limits.mkt_lines,
            });
        }
        self.subs.insert(
            key,
            Sub {
                holders: BTreeSet::from([holder.to_string()]),
                state: SubState::Queued,
                req_id: None,
                code: 0,
                market_data_type: 1,
                since_ns: now,
                requested_ns: now,
                watchdog: 0,
                retry: None,
            },
        );
        self.pending.push_back(Pending::Subscribe(key));
        if self.waits_for_contract(key.con_id) && !self.contract_needs.contains(&key.con_id) {
            self.contract_needs.push_back(key.con_id);
        }
        self.emit(key);
        Ok(SubscribeAck {
            state: SubState::Queued,
            shared: false,
            holders: 1,
            code: 0,
            retry: None,
        })
    }

    /// `holder` no longer wants `key`; the last holder out cancels it at IB. Returns the
    /// holders left, or `None` when `holder` did not hold it.
    pub fn unsubscribe(&mut self, holder: &str, key: SubKey) -> Option<usize> {
        let s = self.subs.get_mut(&key)?;
        if !s.holders.remove(holder) {
            return None;
        }
        let left = s.holders.len();
        if left == 0 {
            self.drop_sub(key, SubState::Cancelled, 0);
        }
        Some(left)
    }

    /// Releases everything `holder` held (its connection closed).
    pub fn release_holder(&mut self, holder: &str) -> usize {
        let keys: Vec<SubKey> = self
            .subs
            .iter()
            .filter(|(_, s)| s.holders.contains(holder))
            .map(|(k, _)| *k)
            .collect();
        for k in &keys {
            self.unsubscribe(holder, *k);
        }
        keys.len()
    }

    /// Removes a subscription: cancels it at IB when a request is out, emits its final state.
    pub(super) fn drop_sub(&mut self, key: SubKey, state: SubState, code: i32) {
        let Some(mut s) = self.subs.remove(&key) else {
            return;
        };
        self.pending.retain(|p| *p != Pending::Subscribe(key));
        if let Some(req_id) = s.req_id.take() {
            self.clear_route(req_id);
            if state == SubState::Cancelled && self.connected {
                self.pending.push_back(Pending::Cancel {
                    req_id,
                    tbt: key.kind.is_tick_by_tick(),
                });
            }
        }
        self.events.push_back(SubEvent {
            key,
            state,
            code,
            req_id: 0,
            market_data_type: s.market_data_type,
            retry: None,
        });
    }

    /// The next request to send, if one is due. The engine calls this only when its
    /// outbound pacer allows one more message, and sends what it gets.
    pub fn next_request(&mut self, now: u64) -> Option<Request> {
        if !self.connected {
            return None;
        }
        let pos = self
            .pending
            .iter()
            .position(|p| self.due_at(p, now) <= now)?;
        let p = self.pending.remove(pos)?;
        Some(match p {
            Pending::Cancel { req_id, tbt: true } => Request::CancelTickByTick { req_id },
            Pending::Cancel { req_id, tbt: false } => Request::CancelMktData { req_id },
            Pending::MarketDataType(t) => Request::MarketDataType(t),
            Pending::Subscribe(key) => {
                let req_id = self.first_req_id + self.routes.len() as i32;
                self.routes.push(Some(Route {
                    key,
                    last_tick_ns: now,
                    ticks: 0,
                    delayed: false,
                    live: false,
                }));
                if let Some(s) = self.subs.get_mut(&key) {
                    s.req_id = Some(req_id);
                    s.state = SubState::Requested;
                    s.since_ns = now;
                    s.requested_ns = now;
                    s.watchdog = 0;
                }
                self.emit(key);
                if key.kind.is_tick_by_tick() {
                    // Forget instruments whose window has passed: unknown contracts asked
                    // for once each would otherwise stay in this map for good.
                    let window = self.limits.tbt_same_instrument_ns;
                    self.tbt_last_request
                        .retain(|_, t| now.saturating_sub(*t) < window);
                    self.tbt_last_request.insert(key.con_id, now);
                    Request::TickByTick {
                        req_id,
                        con_id: key.con_id,
                        kind: key.kind,
                    }
                } else {
                    Request::MktData {
                        req_id,
                        con_id: key.con_id,
                    }
                }
            }
        })
    }

    /// Request ids whose cancel waits in the queue (the request is still out at IB).
    pub fn cancels_queued(&self) -> impl Iterator<Item = i32> + '_ {
        self.pending.iter().filter_map(|p| match p {
            Pending::Cancel { req_id, .. } => Some(*req_id),
            _ => None,
        })
    }

    /// When a queued subscription's request will go out, if it waits on time (the
    /// same-instrument window, or a refusal's retry): `None` once it is out or due now.
    pub fn queued_until(&self, key: SubKey, now: u64) -> Option<u64> {
        let p = Pending::Subscribe(key);
        if !self.pending.contains(&p) {
            return None;
        }
        Some(self.due_at(&p, now)).filter(|at| *at > now)
    }

    /// When the next queued request becomes due (for the loop's timer); `None` when
    /// nothing waits on time.
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        if !self.connected {
            return None;
        }
        self.pending
            .iter()
            .map(|p| self.due_at(p, now))
            .filter(|&t| t != u64::MAX)
            .min()
    }

    /// When a queued request may go: at once, or after the same-instrument window of the
    /// last tick-by-tick request for its conId, and not before a refusal's retry time;
    /// never (`u64::MAX`) while its contract is not resolved.
    fn due_at(&self, p: &Pending, now: u64) -> u64 {
        let Pending::Subscribe(k) = p else {
            return now;
        };
        if self.waits_for_contract(k.con_id) {
            return u64::MAX;
        }
        let mut at = now;
        if k.kind.is_tick_by_tick()
            && let Some(&t) = self.tbt_last_request.get(&k.con_id)
        {
            at = at.max(t.saturating_add(self.limits.tbt_same_instrument_ns));
        }
        if let Some(r) = self.subs.get(k).and_then(|s| s.retry.as_ref()) {
            at = at.max(r.at);
        }
        at
    }
}
