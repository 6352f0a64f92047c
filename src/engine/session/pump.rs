//! The outbound queue: probes and lookups, the contract book's lookups, then the
//! subscription manager's requests, as far as the pacer's budget allows.

use tracing::warn;

use crate::tws::{ClientMsg, Contract, codes};

use super::super::subs::Request;
use super::Session;

impl Session {
    /// Sends what is queued as far as the outbound budget allows.
    pub(super) fn pump(&mut self, now: u64) {
        self.resolve_needs();
        if !self.is_ready() {
            return;
        }
        loop {
            let has_work = !self.extra.is_empty()
                || self.book.has_due_lookup(now)
                || self
                    .ingest
                    .subs
                    .next_deadline(now)
                    .is_some_and(|t| t <= now);
            if !has_work {
                self.pacing_blocked = false;
                break;
            }
            if !self.pacer.can_send(now) {
                if !self.pacing_blocked {
                    self.pacing_blocked = true;
                    self.ingest.publisher.snap.counters.pacing_delays += 1;
                }
                break;
            }
            let msg = if let Some(m) = self.extra.pop_front() {
                m
            } else if let Some((req_id, contract)) = self.book.next_lookup(now) {
                ClientMsg::ReqContractDetails { req_id, contract }
            } else {
                // The send time: the 15-second rule is kept from it.
                match self.ingest.subs.next_request(now) {
                    Some(r) => match self.request_msg(r) {
                        Some(m) => m,
                        None => continue,
                    },
                    None => break,
                }
            };
            let Some(c) = self.conn.as_mut() else { return };
            if let Err(e) = msg.encode(c.version, &mut c.out) {
                warn!("cannot encode {msg:?}: {e}");
                continue;
            }
            self.pacer.try_send(now);
            self.ingest.publisher.snap.counters.messages_sent += 1;
        }
        self.drain_sub_events();
    }

    /// The message for a request; `None` (and the subscription rejected) in the one case
    /// that cannot be sent: no resolved contract, which the manager's gate rules out.
    fn request_msg(&mut self, r: Request) -> Option<ClientMsg> {
        Some(match r {
            Request::MktData { req_id, con_id } => ClientMsg::ReqMktData {
                req_id,
                contract: self.resolved_or_reject(req_id, con_id)?,
                generic_tick_list: String::new(),
                snapshot: false,
                regulatory_snapshot: false,
            },
            Request::CancelMktData { req_id } => ClientMsg::CancelMktData { req_id },
            Request::TickByTick {
                req_id,
                con_id,
                kind,
            } => ClientMsg::ReqTickByTick {
                req_id,
                contract: self.resolved_or_reject(req_id, con_id)?,
                tick_type: kind.ib_name().into(),
                number_of_ticks: 0,
                ignore_size: false,
            },
            Request::CancelTickByTick { req_id } => ClientMsg::CancelTickByTick { req_id },
            Request::MarketDataType(t) => ClientMsg::ReqMarketDataType {
                market_data_type: t,
            },
        })
    }

    /// Never a conId-only request: without a resolved contract the subscription is rejected
    /// as IB would reject it (321).
    fn resolved_or_reject(&mut self, req_id: i32, con_id: u32) -> Option<Contract> {
        let c = self.book.contract(con_id);
        if c.is_none() {
            warn!(
                req_id,
                con_id,
                "no resolved contract for a data request; rejecting it instead of sending a conId alone"
            );
            self.ingest.subs.on_error(req_id, codes::INVALID_REQUEST);
        }
        c
    }
}
