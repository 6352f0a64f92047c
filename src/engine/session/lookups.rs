//! Contract lookups asked on the control socket (`lookup`, and `subscribe` by
//! description): one `reqContractDetails` each, answered to the client when IB's list ends,
//! fails, or times out.

use serde_json::{Value, json};

use crate::tws::{ClientMsg, Contract, ContractDetails};

use super::super::control::{self, ContractQuery, RequestError};
use super::super::subs::{SubKey, SubKind};
use super::{Action, ClientId, FIRST_LOOKUP_REQ_ID, Session};

/// How long IB has to answer a lookup.
pub const LOOKUP_TIMEOUT_NS: u64 = 15_000_000_000;
/// Lookups waiting for IB at once.
const MAX_LOOKUPS: usize = 64;

#[derive(Debug)]
pub(super) enum LookupFor {
    /// Answer the control client with the details.
    Reply,
    /// Subscribe `client` to `kind` of the contract found.
    Subscribe { client: String, kind: SubKind },
}

#[derive(Debug)]
pub(super) struct Lookup {
    client: ClientId,
    id: Option<Value>,
    results: Vec<ContractDetails>,
    pub(super) deadline: u64,
    purpose: LookupFor,
}

fn details_json(d: &ContractDetails) -> Value {
    let c = &d.contract;
    json!({
        "con_id": c.con_id,
        "symbol": c.symbol,
        "sec_type": c.sec_type,
        "exchange": c.exchange,
        "primary_exchange": c.primary_exchange,
        "currency": c.currency,
        "local_symbol": c.local_symbol,
        "trading_class": c.trading_class,
        "last_trade_date_or_contract_month": c.last_trade_date_or_contract_month,
        "multiplier": c.multiplier,
        "long_name": d.long_name,
        "min_tick": crate::tws::decimal::fixed_to_string(d.min_tick, crate::tws::decimal::PRICE_DIGITS),
        "time_zone_id": d.time_zone_id,
        "valid_exchanges": d.valid_exchanges,
    })
}

impl Session {
    pub(super) fn start_lookup(
        &mut self,
        client: ClientId,
        id: Option<Value>,
        q: &ContractQuery,
        purpose: LookupFor,
    ) -> Result<(), RequestError> {
        if !self.is_ready() {
            return Err(RequestError {
                id,
                code: "not_connected",
                message: "the engine is not connected to IB; try again later".into(),
            });
        }
        if self.lookups.len() >= MAX_LOOKUPS {
            return Err(RequestError {
                id,
                code: "busy",
                message: "64 contract lookups are already waiting for IB".into(),
            });
        }
        let req_id = self.next_lookup_id;
        self.next_lookup_id = self.next_lookup_id.wrapping_add(1).max(FIRST_LOOKUP_REQ_ID);
        let contract = Contract {
            con_id: q.con_id.map_or(0, |c| c as i32),
            symbol: q.symbol.clone().unwrap_or_default(),
            sec_type: q.sec_type.clone().unwrap_or_default(),
            exchange: q.exchange.clone().unwrap_or_default(),
            currency: q.currency.clone().unwrap_or_default(),
            ..Contract::default()
        };
        self.extra
            .push_back(ClientMsg::ReqContractDetails { req_id, contract });
        self.lookups.insert(
            req_id,
            Lookup {
                client,
                id,
                results: Vec::new(),
                deadline: self.clock.mono + LOOKUP_TIMEOUT_NS,
                purpose,
            },
        );
        Ok(())
    }

    pub(super) fn on_lookup_details(&mut self, req_id: i32, details: ContractDetails) {
        if let Some(l) = self.lookups.get_mut(&req_id) {
            l.results.push(details);
        }
    }

    fn fail_lookup(&mut self, req_id: i32, code: &'static str, message: &str) {
        let Some(l) = self.lookups.remove(&req_id) else {
            return;
        };
        self.scratch.clear();
        control::error_reply(
            &RequestError {
                id: l.id,
                code,
                message: message.to_string(),
            },
            &mut self.scratch,
        );
        self.send_to_client(l.client);
    }

    /// IB refused the lookup: its code goes to the client as a number.
    pub(super) fn fail_lookup_ib(&mut self, req_id: i32, code: i32, message: &str) {
        let Some(l) = self.lookups.remove(&req_id) else {
            return;
        };
        self.scratch.clear();
        control::ib_error_reply(&l.id, code, message, &mut self.scratch);
        self.send_to_client(l.client);
    }

    /// The connection closed: every lookup waiting fails.
    pub(super) fn fail_all_lookups(&mut self) {
        let pending: Vec<i32> = self.lookups.keys().copied().collect();
        for id in pending {
            self.fail_lookup(
                id,
                "disconnected",
                "the IB connection closed during the lookup",
            );
        }
    }

    /// Lookups IB did not answer in time fail.
    pub(super) fn expire_lookups(&mut self, now: u64) {
        let expired: Vec<i32> = self
            .lookups
            .iter()
            .filter(|(_, l)| now >= l.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.fail_lookup(
                id,
                "timeout",
                "IB did not answer the contract lookup in 15 s",
            );
        }
    }

    pub(super) fn finish_lookup(&mut self, req_id: i32, now: u64) {
        let Some(l) = self.lookups.remove(&req_id) else {
            return;
        };
        for d in &l.results {
            self.book.insert_resolved(&d.contract, self.clock.unix);
        }
        self.scratch.clear();
        match l.purpose {
            LookupFor::Reply => {
                let list: Vec<Value> = l.results.iter().map(details_json).collect();
                control::ok_reply(&l.id, json!({ "contracts": list }), &mut self.scratch);
            }
            LookupFor::Subscribe { client, kind } => match l.results.as_slice() {
                [d] => {
                    let key = SubKey {
                        con_id: d.contract.con_id.max(0) as u32,
                        kind,
                    };
                    let mut out = Vec::new();
                    self.subscribe_reply(&client, key, l.id.clone(), now, &mut out);
                    if let Some(c) = self.clients.get_mut(&l.client) {
                        c.names.insert(client);
                    }
                    self.scratch = out;
                }
                [] => control::error_reply(
                    &RequestError {
                        id: l.id,
                        code: "not_found",
                        message: "IB knows no contract matching that description".into(),
                    },
                    &mut self.scratch,
                ),
                many => {
                    let list: Vec<String> = many
                        .iter()
                        .map(|d| {
                            format!(
                                "{} {} {} {}",
                                d.contract.con_id,
                                d.contract.local_symbol,
                                d.contract.exchange,
                                d.contract.currency
                            )
                        })
                        .collect();
                    control::error_reply(
                        &RequestError {
                            id: l.id,
                            code: "ambiguous",
                            message: format!(
                                "{} contracts match; name one by con_id: {}",
                                many.len(),
                                list.join("; ")
                            ),
                        },
                        &mut self.scratch,
                    );
                }
            },
        }
        self.send_to_client(l.client);
        self.drain_sub_events();
        self.pump(now);
    }

    /// Queues `self.scratch` for a client (asynchronous replies).
    fn send_to_client(&mut self, client: ClientId) {
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        if c.conn.push_line(&self.scratch) == control::Verdict::Keep {
            self.actions.push_back(Action::ControlOut(client));
        } else {
            self.close_control(client);
        }
    }
}
