//! What IB says: frames decoded off the hot path, IB's error policy (326 client id in use,
//! 1100/1101/1102 connectivity, 100 pacing, farm notices, refusals of requests), and the
//! events of the subscription manager and the contract book turned into records.

use tracing::{debug, info, warn};

use crate::ipc::{ConnState, FarmState, GapReason, SubState};
use crate::tws::{ServerMsg, codes};

use super::super::contracts::BookEvent;
use super::super::farms;
use super::super::subs::{ErrorRoute, SubKey};
use super::{Action, FIRST_LOOKUP_REQ_ID, Phase, Session, state_name, state_name_of};

impl Session {
    /// Decodes what is buffered; returns false when the connection was closed.
    #[inline]
    pub(super) fn process_frames(&mut self, ts_recv: i64, now: u64) -> bool {
        let res = self.ingest.process(ts_recv, now, &mut self.other);
        self.published += self.ingest.publisher.flush();
        if let Err(e) = res {
            let why = format!("bad frame: {e}");
            self.disconnect(&why, now, false);
            return false;
        }
        if let Some(e) = self.ingest.last_decode_error.take() {
            warn!("undecodable frame skipped: {e}");
        }
        while let Some(m) = self.other.pop_front() {
            self.on_message(m, now);
            if self.conn.is_none() {
                self.other.clear();
                return false;
            }
        }
        if self.ingest.subs_events_pending() {
            self.drain_sub_events();
        }
        true
    }

    fn on_message(&mut self, m: ServerMsg, now: u64) {
        match m {
            ServerMsg::NextValidId { .. }
                if self.conn.as_ref().is_some_and(|c| c.phase == Phase::Start) =>
            {
                self.on_ready(now);
            }
            ServerMsg::ManagedAccounts { accounts } => {
                if let Some(c) = self.conn.as_mut() {
                    c.accounts = accounts;
                }
            }
            ServerMsg::Error {
                req_id,
                code,
                message,
                ..
            } => self.on_ib_error(req_id, code, &message, now),
            ServerMsg::MarketDataType {
                req_id,
                market_data_type,
            } => {
                self.ingest
                    .subs
                    .on_market_data_type(req_id, market_data_type);
            }
            // The book takes the details of its own lookups; the rest are control lookups'.
            ServerMsg::ContractData { req_id, details }
                if !self.book.on_details(req_id, &details.contract) =>
            {
                self.on_lookup_details(req_id, *details);
            }
            ServerMsg::ContractDataEnd { req_id } => {
                if self.book.on_end(req_id, self.clock.unix) {
                    self.apply_book_events();
                } else {
                    self.finish_lookup(req_id, now);
                }
            }
            ServerMsg::CurrentTime { time } => {
                info!(time, "IB answered the watchdog's probe");
            }
            _ => {}
        }
    }

    fn on_ib_error(&mut self, req_id: i32, code: i32, message: &str, now: u64) {
        let ts = self.clock.unix;
        {
            // Notices (farm status 2104/2106/2158, ...) are counted, not shown as errors.
            let snap = &mut self.ingest.publisher.snap;
            snap.counters.ib_errors += 1;
            if !codes::is_warning(code) {
                snap.engine.last_error_code = code;
                snap.engine.last_error_ns = ts;
            }
        }
        self.status_dirty = true;
        let (version, client_id) = self
            .conn
            .as_ref()
            .map_or((0, self.client_id()), |c| (c.version, c.hs.client_id));
        match code {
            codes::CLIENT_ID_IN_USE if self.given_client_id.is_some() => {
                // The registry's id: the caller picks the next (Action::ClientIdRefused);
                // until it does, the next connect waits a backoff, so a registry with no
                // id to give never turns this into a loop of connects.
                warn!(
                    client_id,
                    "IB says client id {client_id} is in use (326); asking the registry for the next"
                );
                self.disconnect("client id in use (326)", now, true);
                if !self.stopping {
                    let d = self.backoff.next_delay();
                    self.schedule_connect(now, d);
                    self.actions
                        .push_back(Action::ClientIdRefused { id: client_id });
                }
            }
            codes::CLIENT_ID_IN_USE => {
                let range = self.settings.client_id_range;
                self.client_id_offset = (self.client_id_offset + 1) % (range + 1);
                warn!(
                    client_id,
                    next = self.client_id(),
                    "IB says client id {client_id} is in use (326); trying the next one"
                );
                self.disconnect("client id in use (326)", now, true);
            }
            codes::CONNECTIVITY_LOST => {
                warn!("IB lost connectivity to its servers (1100): data is stale");
                self.lost_since = Some(self.last_rx.min(ts));
                self.ingest.subs.set_stale(true);
                self.ingest
                    .publisher
                    .connection(ConnState::IbLost, version, client_id, code);
            }
            codes::CONNECTIVITY_RESTORED_DATA_LOST => {
                warn!("IB connectivity restored, data lost (1101): resubscribing everything");
                let from = self.lost_since.take().unwrap_or(ts);
                self.open_sub_gaps(GapReason::IbConnectivity, from);
                self.ingest.subs.set_stale(false);
                self.ingest.subs.on_subscriptions_lost(true);
                self.ingest
                    .publisher
                    .connection(ConnState::Connected, version, client_id, code);
                self.ingest
                    .publisher
                    .gap(GapReason::IbConnectivity, from, ts);
                self.drain_sub_events();
                self.pump(now);
            }
            codes::CONNECTIVITY_RESTORED_DATA_MAINTAINED => {
                info!("IB connectivity restored, data maintained (1102)");
                self.ingest.subs.set_stale(false);
                self.lost_since = None;
                self.ingest
                    .publisher
                    .connection(ConnState::Connected, version, client_id, code);
            }
            codes::PACING => {
                warn!(req_id, "IB says we sent too fast (100): {message}");
            }
            _ if req_id < 0 && farms::classify(code).is_some() => {
                self.on_farm_notice(code, message, ts);
            }
            _ if self.book.owns(req_id) => {
                warn!(req_id, code, "IB refused a contract lookup: {message}");
                self.book.on_error(req_id, code, message, now);
                self.apply_book_events();
            }
            _ if req_id >= FIRST_LOOKUP_REQ_ID && self.lookups.contains_key(&req_id) => {
                self.fail_lookup_ib(req_id, code, message);
            }
            _ if req_id >= 0 => match self.ingest.subs.on_error(req_id, code) {
                ErrorRoute::Subscription(key, state) => {
                    info!(
                        req_id,
                        code,
                        con_id = key.con_id,
                        kind = key.kind.name(),
                        state = state_name(state),
                        "IB: {message}"
                    );
                    if state == SubState::Rejected {
                        self.ingest.publisher.snap.counters.subscriptions_rejected += 1;
                    }
                    self.drain_sub_events();
                    self.pump(now);
                }
                ErrorRoute::Unrouted => {
                    if codes::is_warning(code) {
                        info!(req_id, code, "IB notice: {message}");
                    } else {
                        warn!(req_id, code, "IB error for no subscription: {message}");
                    }
                }
            },
            // Session-wide notices and errors.
            _ => {
                if codes::is_warning(code) {
                    info!(code, "IB notice: {message}");
                } else {
                    warn!(code, "IB error: {message}");
                }
            }
        }
    }

    /// A farm notice: the farm table changes; a broken farm is also the last error. A
    /// broken market data farm marks the data possibly stale in status until it is OK.
    fn on_farm_notice(&mut self, code: i32, message: &str, ts: i64) {
        let Some(n) = farms::parse(code, message) else {
            return;
        };
        let was_broken = self.farms.market_data_broken();
        if self.farms.apply(&n, ts) {
            self.status_dirty = true;
        }
        if n.state == FarmState::Broken {
            let snap = &mut self.ingest.publisher.snap;
            snap.engine.last_error_code = code;
            snap.engine.last_error_ns = ts;
            warn!(code, farm = %n.name, kind = n.kind.name(), "IB farm down: {message}");
        } else {
            info!(code, farm = %n.name, kind = n.kind.name(), state = n.state.name(), "IB farm: {message}");
        }
        match (was_broken, self.farms.market_data_broken()) {
            (false, true) => warn!("a market data farm is broken: data may be stale"),
            (true, false) => info!("no market data farm is broken any more"),
            _ => {}
        }
    }

    /// Every subscription with a request out at IB loses it now: its data stopped at `from`.
    pub(super) fn open_sub_gaps(&mut self, reason: GapReason, from: i64) {
        let out: Vec<SubKey> = self
            .ingest
            .subs
            .list()
            .filter(|s| s.req_id != 0)
            .map(|s| s.key)
            .collect();
        self.sub_gaps.lost(out, reason, from);
    }

    /// The subscription manager's state changes: records, status, per-subscription gaps.
    pub(super) fn drain_sub_events(&mut self) {
        while let Some(ev) = self.ingest.subs.poll_event() {
            if let Some((con_id, reason, from, to)) =
                self.sub_gaps.on_state(ev.key, ev.state, self.clock.unix)
            {
                debug!(
                    con_id,
                    kind = ev.key.kind.name(),
                    from,
                    to,
                    "the subscription is live again: writing its gap"
                );
                self.ingest.publisher.gap_for(con_id, reason, from, to);
            }
            let next_attempt = ev.retry.map(|r| self.mono_to_unix(r.next_ns));
            debug!(
                con_id = ev.key.con_id,
                kind = ev.key.kind.name(),
                state = state_name_of(ev.state, ev.retry.is_some()),
                code = ev.code,
                req_id = ev.req_id,
                "subscription"
            );
            if let (Some(r), Some(at)) = (ev.retry, next_attempt) {
                warn!(
                    con_id = ev.key.con_id,
                    kind = ev.key.kind.name(),
                    code = ev.code,
                    refusals = r.refusals,
                    in_ms = (at - self.clock.unix).max(0) / 1_000_000,
                    "IB refused the request; retrying"
                );
            }
            self.ingest.publisher.subscription(
                ev.key.con_id,
                ev.key.kind.record_kind(),
                ev.state,
                ev.code,
                ev.req_id,
                ev.market_data_type,
                next_attempt,
            );
            self.status_dirty = true;
        }
    }

    /// Hands the conIds new subscriptions need to the contract book, and acts on what the
    /// book says.
    pub(super) fn resolve_needs(&mut self) {
        let mut asked = false;
        while let Some(con_id) = self.ingest.subs.take_contract_need() {
            self.book.want(con_id, self.clock.mono, self.clock.unix);
            asked = true;
        }
        if asked {
            self.apply_book_events();
        }
    }

    /// Ready contracts release their subscriptions' requests; a changed one is logged and
    /// kept in the store; an unresolvable one rejects its subscriptions (records with IB's
    /// code). The caller writes the store when it changed.
    pub(super) fn apply_book_events(&mut self) {
        while let Some(ev) = self.book.poll_event() {
            match ev {
                BookEvent::Ready(con_id) => self.ingest.subs.contract_ready(con_id),
                BookEvent::Changed { con_id, fields } => {
                    warn!(
                        con_id,
                        changes = %fields.join("; "),
                        "IB's contract changed since it was stored; requests use the new one"
                    );
                }
                BookEvent::Unresolvable {
                    con_id,
                    code,
                    message,
                } => {
                    let n = self.ingest.subs.contract_unresolvable(con_id, code);
                    warn!(
                        con_id,
                        code,
                        rejected = n,
                        "IB cannot resolve the contract; its subscriptions are rejected: {message}"
                    );
                    self.ingest.publisher.snap.counters.subscriptions_rejected += n as u64;
                }
            }
        }
        self.drain_sub_events();
        if let Some(all) = self.book.take_dirty() {
            self.actions.push_back(Action::SaveContracts(all));
        }
    }

    /// The caller wrote the contract store ([`Action::SaveContracts`]).
    pub fn on_store_saved(&mut self, clock: super::Clock) {
        self.clock = clock;
        self.ingest.publisher.set_clock(clock.unix);
        self.store_written_ns = Some(clock.unix);
    }
}
