//! Control clients: their buffers (the caller owns their sockets), their requests and the
//! JSON of the replies.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use tracing::info;

use crate::ipc::ConnState;

use super::super::control::{self, ControlConn, ControlRequest, RequestError, Verdict};
use super::super::subs::SubKey;
use super::lookups::LookupFor;
use super::{Action, ClientId, Clock, CtlClient, MAX_CONTROL_CLIENTS, Session, state_name_of};

fn conn_name(s: Option<ConnState>) -> &'static str {
    match s {
        Some(ConnState::Disconnected) => "disconnected",
        Some(ConnState::Connecting) => "connecting",
        Some(ConnState::Connected) => "connected",
        Some(ConnState::IbLost) => "ib_lost",
        Some(ConnState::Backoff) => "backoff",
        None => "unknown",
    }
}

/// The line a client over [`MAX_CONTROL_CLIENTS`] gets before it is closed.
pub const TOO_MANY_CLIENTS: &[u8] = b"{\"id\":null,\"ok\":false,\"error\":{\"code\":\"too_many_clients\",\"message\":\"the engine serves 64 control clients at most; closing\"}}\n";

impl Session {
    /// A control client connected; false when too many are served (the caller writes
    /// [`TOO_MANY_CLIENTS`] and closes it).
    pub fn control_open(&mut self, client: ClientId) -> bool {
        if self.clients.len() >= MAX_CONTROL_CLIENTS {
            return false;
        }
        self.clients.insert(
            client,
            CtlClient {
                conn: ControlConn::default(),
                names: BTreeSet::new(),
            },
        );
        true
    }

    /// Bytes from a control client: its requests are answered into
    /// [`Session::control_out`]. False when the client must be closed once its output is
    /// written (a protocol fault or a budget exceeded).
    pub fn on_control_bytes(&mut self, clock: Clock, client: ClientId, bytes: &[u8]) -> bool {
        self.clock = clock;
        self.ingest.publisher.set_clock(clock.unix);
        let now = clock.mono;
        let Some(mut c) = self.clients.remove(&client) else {
            return false;
        };
        let CtlClient { conn, names } = &mut c;
        let verdict = conn.feed(bytes, now, &mut |id, req, out| {
            self.ingest.publisher.snap.counters.control_requests += 1;
            self.handle_request(client, names, id, req, now, out);
        });
        self.clients.insert(client, c);
        self.drain_sub_events();
        self.pump(now);
        match verdict {
            Verdict::Keep => true,
            Verdict::Close(why) => {
                info!(client, "closing a control client: {why}");
                false
            }
        }
    }

    /// What is waiting to be written to a control client.
    pub fn control_out(&self, client: ClientId) -> &[u8] {
        self.clients
            .get(&client)
            .map_or(&[], |c| c.conn.pending_out())
    }

    /// The caller wrote the first `n` bytes of [`Session::control_out`].
    pub fn control_written(&mut self, client: ClientId, n: usize) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.conn.consume_out(n);
        }
    }

    /// True when the client is to be closed once its output is written.
    pub fn control_closing(&self, client: ClientId) -> bool {
        self.clients
            .get(&client)
            .is_none_or(|c| c.conn.closing().is_some())
    }

    /// A control client is gone: the subscriptions it held are released.
    pub fn on_control_closed(&mut self, clock: Clock, client: ClientId) {
        self.clock = clock;
        self.ingest.publisher.set_clock(clock.unix);
        self.forget_client(client);
        self.pump(clock.mono);
    }

    /// The session closes a client ([`Action::CloseControl`]).
    pub(super) fn close_control(&mut self, client: ClientId) {
        if self.forget_client(client) {
            self.actions.push_back(Action::CloseControl(client));
        }
    }

    fn forget_client(&mut self, client: ClientId) -> bool {
        let Some(c) = self.clients.remove(&client) else {
            return false;
        };
        for name in &c.names {
            let released = self.ingest.subs.release_holder(name);
            if released > 0 {
                info!(client = %name, released, "control client gone; released its subscriptions");
            }
        }
        self.drain_sub_events();
        true
    }

    pub(super) fn subscribe_reply(
        &mut self,
        client: &str,
        key: SubKey,
        id: Option<Value>,
        now: u64,
        out: &mut Vec<u8>,
    ) {
        match self.ingest.subs.subscribe(client, key, now) {
            Ok(ack) => {
                let mut v = json!({
                    "con_id": key.con_id,
                    "kind": key.kind.name(),
                    "state": state_name_of(ack.state, ack.retry.is_some()),
                    "shared": ack.shared,
                    "holders": ack.holders,
                });
                // Joining a subscription IB refused: say so now, not only in the ring.
                if let Some(r) = ack.retry {
                    v["ib_code"] = ack.code.into();
                    v["refusals"] = r.refusals.into();
                    v["next_attempt_ns"] = self.mono_to_unix(r.next_ns).into();
                } else if let Some(at) = self.ingest.subs.queued_until(key, now) {
                    // Held back by IB's 15-second rule: when it will be sent.
                    v["next_attempt_ns"] = self.mono_to_unix(at).into();
                }
                control::ok_reply(&id, v, out)
            }
            Err(e) => {
                self.ingest.publisher.snap.counters.subscriptions_rejected += 1;
                control::error_reply(
                    &RequestError {
                        id,
                        code: "rejected",
                        message: e.to_string(),
                    },
                    out,
                );
            }
        }
    }

    fn handle_request(
        &mut self,
        client: ClientId,
        names: &mut BTreeSet<String>,
        id: Option<Value>,
        req: ControlRequest,
        now: u64,
        out: &mut Vec<u8>,
    ) {
        match req {
            ControlRequest::Ping => control::ok_reply(
                &id,
                json!({"pong": true, "epoch": format!("{:016x}", self.epoch()), "now_ns": self.clock.unix}),
                out,
            ),
            ControlRequest::Subscribe { client: name, key } => {
                names.insert(name.clone());
                self.subscribe_reply(&name, key, id, now, out);
            }
            ControlRequest::SubscribeContract {
                client: name,
                query,
                kind,
            } => {
                let purpose = LookupFor::Subscribe { client: name, kind };
                if let Err(e) = self.start_lookup(client, id, &query, purpose) {
                    control::error_reply(&e, out);
                }
            }
            ControlRequest::Unsubscribe { client: name, key } => {
                match self.ingest.subs.unsubscribe(&name, key) {
                    Some(left) => control::ok_reply(
                        &id,
                        json!({"con_id": key.con_id, "kind": key.kind.name(), "holders": left}),
                        out,
                    ),
                    None => control::error_reply(
                        &RequestError {
                            id,
                            code: "not_held",
                            message: format!(
                                "`{name}` holds no {} subscription to {}",
                                key.kind.name(),
                                key.con_id
                            ),
                        },
                        out,
                    ),
                }
            }
            ControlRequest::List => {
                let subs: Vec<Value> = self
                    .ingest
                    .subs
                    .list()
                    .map(|s| {
                        let mut v = json!({
                            "con_id": s.key.con_id,
                            "kind": s.key.kind.name(),
                            "state": state_name_of(s.state, s.retry.is_some()),
                            "holders": s.holders,
                            "req_id": s.req_id,
                            "ib_code": s.code,
                        });
                        if let Some(r) = s.retry {
                            v["refusals"] = r.refusals.into();
                            v["next_attempt_ns"] = self.mono_to_unix(r.next_ns).into();
                        }
                        v
                    })
                    .collect();
                control::ok_reply(&id, json!({ "subscriptions": subs }), out);
            }
            ControlRequest::Status => control::ok_reply(&id, self.status_json(), out),
            ControlRequest::Lookup(q) => {
                if let Err(e) = self.start_lookup(client, id, &q, LookupFor::Reply) {
                    control::error_reply(&e, out);
                }
            }
            ControlRequest::Shutdown => {
                info!(client, "stop asked on the control socket");
                self.actions.push_back(Action::Stop);
                control::ok_reply(&id, json!({"stopping": true}), out);
            }
        }
    }

    fn status_json(&self) -> Value {
        let snap = &self.ingest.publisher.snap;
        let c = &snap.counters;
        let port = self.conn.as_ref().map(|c| c.port);
        json!({
            "epoch": format!("{:016x}", self.epoch()),
            "conn_state": conn_name(snap.conn_state()),
            "server_version": snap.engine.server_version,
            "client_id": snap.engine.client_id,
            "port": port,
            "connected_since_ns": snap.engine.connected_since_ns,
            "last_error_code": snap.engine.last_error_code,
            "records_published": c.records_published,
            "reconnects": c.reconnects,
            "gaps": c.gaps,
            "messages_sent": c.messages_sent,
            "pacing_delays": c.pacing_delays,
            "ib_errors": c.ib_errors,
            "subscriptions": snap.engine.sub_count,
            "last_seq": self.ingest.publisher.last_seq(),
            "data_possibly_stale": self.farms.market_data_broken(),
            "farms": self.farms.farms().iter().map(|f| json!({
                "name": f.name(),
                "kind": f.kind().map_or("?", |k| k.name()),
                "state": f.state().map_or("?", |s| s.name()),
                "code": f.code,
                "since_ns": f.since_ns,
                "notice_ns": f.notice_ns,
            })).collect::<Vec<Value>>(),
            "farm_notices_dropped": self.farms.dropped(),
            "contract_store": {
                "path": self.store_path.display().to_string(),
                "entries": self.book.entries().count(),
                "last_written_ns": self.store_written_ns,
            },
        })
    }
}
