//! What IB says about subscriptions: ticks (the per-tick call), the market data type, its
//! errors routed to their subscription (10190 retried, 354/10089 falling back to delayed,
//! 101, 322, 10197, refusals), reconnects and 1101, and the clean stop's cancels.

use ib_stream_ipc::SubState;

use super::super::backoff::Backoff;
use super::{
    ErrorRoute, MIN_TBT_RETRY_NS, Pending, Retry, RetryInfo, SubKey, SubKind, SubscriptionManager,
};

impl SubscriptionManager {
    /// A tick arrived for `req_id`: returns the conId and whether the data is delayed.
    /// Allocation-free; called once per tick.
    #[inline]
    pub fn on_tick(&mut self, req_id: i32, now: u64) -> Option<(u32, bool)> {
        let i = self.route_index(req_id)?;
        let route = self.routes.get_mut(i)?.as_mut()?;
        route.last_tick_ns = now;
        route.ticks += 1;
        let out = (route.key.con_id, route.delayed);
        if route.live {
            return Some(out);
        }
        // First tick since the request (or since the watchdog called it silent).
        route.live = true;
        let key = route.key;
        let delayed = route.delayed;
        if let Some(s) = self.subs.get_mut(&key) {
            s.state = if delayed {
                SubState::Delayed
            } else {
                SubState::Active
            };
            s.watchdog = 0;
            // Data: a refusal being retried is over.
            if s.retry.take().is_some() {
                s.code = 0;
            }
            self.emit(key);
        }
        Some(out)
    }

    /// IB reported the market data type of a request (message 58).
    pub fn on_market_data_type(&mut self, req_id: i32, market_data_type: i32) {
        let Some(key) = self.key_of(req_id) else {
            return;
        };
        let delayed = matches!(market_data_type, 3 | 4);
        if let Some(r) = self
            .route_index(req_id)
            .and_then(|i| self.routes.get_mut(i))
            .and_then(Option::as_mut)
        {
            r.delayed = delayed;
        }
        let mut changed = false;
        if let Some(s) = self.subs.get_mut(&key) {
            changed = s.market_data_type != market_data_type;
            s.market_data_type = market_data_type;
            if delayed && s.state != SubState::Delayed {
                s.state = SubState::Delayed;
                changed = true;
            }
        }
        // A notice that repeats what we know (live data, as asked) is no state change.
        if changed {
            self.emit(key);
        }
    }

    /// Routes an IB error with a request id to its subscription and acts on it.
    pub fn on_error(&mut self, req_id: i32, code: i32) -> ErrorRoute {
        let Some(key) = self.key_of(req_id) else {
            return ErrorRoute::Unrouted;
        };
        match code {
            // Live data refused but delayed is available: switch the session to "delayed
            // where not permitted live" once, then ask again. Tick-by-tick has no delayed form.
            354 | 10089 | 10090 if self.limits.allow_delayed && key.kind == SubKind::MktData => {
                if let Some(s) = self.subs.get_mut(&key)
                    && let Some(id) = s.req_id.take()
                {
                    s.state = SubState::Queued;
                    s.code = code;
                    self.clear_route(id);
                    if !self.delayed_requested {
                        self.delayed_requested = true;
                        self.pending.push_front(Pending::MarketDataType(3));
                    }
                    self.pending.push_back(Pending::Subscribe(key));
                }
                self.emit(key);
                self.state_of(key)
            }
            // "Displaying delayed market data": data flows, marked delayed.
            10167 => {
                if let Some(r) = self
                    .route_index(req_id)
                    .and_then(|i| self.routes.get_mut(i))
                    .and_then(Option::as_mut)
                {
                    r.delayed = true;
                }
                if let Some(s) = self.subs.get_mut(&key) {
                    s.state = SubState::Delayed;
                    s.code = code;
                    s.market_data_type = 3;
                }
                self.emit(key);
                self.state_of(key)
            }
            // Our id collided with one IB still knows: ask again under a fresh id.
            322 => {
                if let Some(s) = self.subs.get_mut(&key)
                    && let Some(id) = s.req_id.take()
                {
                    s.state = SubState::Queued;
                    s.code = code;
                    s.retry = None;
                    self.clear_route(id);
                    self.pending.push_back(Pending::Subscribe(key));
                }
                self.emit(key);
                self.state_of(key)
            }
            // IB's tick-by-tick cap, or its 15-second rule broken by someone else (a killed
            // predecessor, another client of the account): IB cannot say which, and neither
            // is final. The subscription keeps its slot in our budget and is asked for again.
            10190 => self.retry_later(key, code),
            101 => {
                let in_use = self.in_use(false).saturating_sub(1).max(1);
                self.limits.mkt_lines = self.limits.mkt_lines.min(in_use);
                self.reject(key, code)
            }
            // A competing live session stops data without ending the subscription.
            10197 => {
                if let Some(s) = self.subs.get_mut(&key) {
                    s.state = SubState::Silent;
                    s.code = code;
                }
                self.emit(key);
                self.state_of(key)
            }
            // Warnings and notices (2100..=2199, 10167 handled above) leave data flowing.
            2100..=2199 => self.state_of(key),
            // Everything else with a request id ends the request: no security definition
            // (200), no permissions (354/10089 without fallback, 10189, 10168, 10186), ...
            _ => self.reject(key, code),
        }
    }

    /// Schedules the next attempt of a refused request: one same-instrument window after
    /// the refused request was sent, then doubling (with jitter) up to the cap.
    fn retry_later(&mut self, key: SubKey, code: i32) -> ErrorRoute {
        let base = self.limits.tbt_same_instrument_ns.max(MIN_TBT_RETRY_NS);
        let cap = self.limits.tbt_retry_cap_ns.max(base);
        let seed = self.next_seed();
        let Some(s) = self.subs.get_mut(&key) else {
            return ErrorRoute::Unrouted;
        };
        let Some(id) = s.req_id.take() else {
            return self.state_of(key);
        };
        let retry = s.retry.get_or_insert_with(|| Retry {
            backoff: Backoff::new(base, cap, seed),
            at: 0,
        });
        // Backoff's first delay lies in [base/2, base]: never before the window is over.
        retry.at = s
            .requested_ns
            .saturating_add(retry.backoff.next_delay().max(base));
        s.state = SubState::Queued;
        s.code = code;
        self.clear_route(id);
        self.pending.push_back(Pending::Subscribe(key));
        self.emit(key);
        self.state_of(key)
    }

    /// The retry of a subscription refused by IB, if one is scheduled.
    pub fn retry_of(&self, key: SubKey) -> Option<RetryInfo> {
        self.subs.get(&key)?.waiting_retry()
    }

    pub(super) fn reject(&mut self, key: SubKey, code: i32) -> ErrorRoute {
        if let Some(s) = self.subs.get_mut(&key)
            && let Some(id) = s.req_id.take()
        {
            self.clear_route(id);
        }
        self.drop_sub(key, SubState::Rejected, code);
        ErrorRoute::Subscription(key, SubState::Rejected)
    }

    fn state_of(&self, key: SubKey) -> ErrorRoute {
        match self.subs.get(&key) {
            Some(s) => ErrorRoute::Subscription(key, s.state),
            None => ErrorRoute::Unrouted,
        }
    }

    /// The session to IB is up (API started): queued requests may go.
    pub fn on_connected(&mut self) {
        self.connected = true;
    }

    /// The session is gone (socket closed) or IB dropped every subscription (1101): every
    /// subscription goes back to the queue and is requested again under a new id.
    pub fn on_subscriptions_lost(&mut self, still_connected: bool) {
        self.connected = still_connected;
        self.delayed_requested = false;
        self.pending.retain(|p| matches!(p, Pending::Subscribe(_)));
        let keys: Vec<SubKey> = self.subs.keys().copied().collect();
        for key in keys {
            let Some(s) = self.subs.get_mut(&key) else {
                continue;
            };
            if let Some(id) = s.req_id.take() {
                s.state = SubState::Queued;
                s.code = 0;
                s.watchdog = 0;
                // A retried request that was out is simply lost with the rest; a retry still
                // waiting keeps its time (IB's window does not care about our connection).
                s.retry = None;
                let idx = i64::from(id) - i64::from(self.first_req_id);
                if let Some(slot) = self.routes.get_mut(idx as usize) {
                    *slot = None;
                }
                self.pending.push_back(Pending::Subscribe(key));
                self.emit(key);
            }
        }
        // A reconnect starts a fresh 15-second clock at IB only after the rule's time has
        // passed; keep our record of past requests so we never break it.
    }

    /// The engine is stopping cleanly: every subscription is dropped (final state
    /// Cancelled), each request out at IB gets its cancel queued, and nothing else that was
    /// queued will be sent. Returns how many cancels wait in the queue.
    pub fn cancel_all(&mut self) -> usize {
        let keys: Vec<SubKey> = self.subs.keys().copied().collect();
        for key in keys {
            self.drop_sub(key, SubState::Cancelled, 0);
        }
        self.pending.retain(|p| matches!(p, Pending::Cancel { .. }));
        self.pending.len()
    }
}
