//! What the server says, either transport: ticks, info, gaps, answers to subscribe and
//! unsubscribe, errors and completion, routed to their subscription.

use super::*;

impl Session {
    /// `via`: the subscription whose SSE stream carried the message (SSE routes by stream;
    /// WebSocket by `stream_id`, and ticks by contract and kind).
    pub(super) fn on_message(
        &mut self,
        m: ServerMessage,
        via: Option<SubId>,
        now: Instant,
        wall: WallUs,
    ) {
        // The heartbeat period: WebSocket says it in `info{connected}`, SSE (no such
        // message) in every `info{stream_start}`.
        let (limits, hb) = match &m {
            ServerMessage::Info {
                info:
                    Info::Connected {
                        limits,
                        heartbeat_seconds,
                        ..
                    },
                ..
            } => (*limits, *heartbeat_seconds),
            ServerMessage::Info {
                info:
                    Info::StreamStart {
                        heartbeat_seconds, ..
                    },
                ..
            } => (None, *heartbeat_seconds),
            _ => (None, None),
        };
        if self.state() == ConnState::Connecting {
            // The first message of a connection is `info{connected}`; anything else still
            // proves the server is there (an older server might not send it).
            self.connected(limits, hb, "server said connected", now);
        } else if let Some(h) = hb {
            self.heartbeat = Duration::from_secs(h.max(1));
        }
        match m {
            ServerMessage::Tick(t) => self.on_tick(t, via, now, wall),
            ServerMessage::Heartbeat(h) => {
                Metrics::add(&self.metrics.heartbeats, 1);
                Metrics::set(&self.metrics.server_lag_us, wall - h.ts);
                self.metrics
                    .ring_head
                    .store(h.ring_head, std::sync::atomic::Ordering::Relaxed);
            }
            ServerMessage::Info { info, stream_id } => self.on_info(info, via, stream_id),
            ServerMessage::Gap(g) => self.on_gap(g, via),
            ServerMessage::Subscribed { id, stream_id } => self.on_subscribed(&id, stream_id, now),
            ServerMessage::Unsubscribed { .. } | ServerMessage::Pong { .. } => {}
            ServerMessage::Error { error, stream_id } => match via {
                Some(sub) => self.on_stream_error(error, sub),
                None => self.on_error(error, stream_id, now),
            },
            ServerMessage::Complete {
                complete,
                stream_id,
            } => self.on_complete(complete, via, stream_id, now),
        }
    }

    pub(super) fn on_tick(&mut self, t: Tick, via: Option<SubId>, now: Instant, wall: WallUs) {
        let key = (t.cid, type_index(t.tt.requested_as()).unwrap_or(u8::MAX));
        let Some(id) = via.or_else(|| self.routes.get(&key).copied()) else {
            self.malformed(
                FrameError::UnknownStream(format!("tick of cid {} {:?}", t.cid, t.tt)),
                now,
            );
            return;
        };
        let Some(s) = self.subs.get_mut(&id) else {
            return;
        };
        if !matches!(s.phase, Phase::Active { .. }) {
            // In flight after an unsubscribe.
            return;
        }
        if s.resume.is_duplicate(t.seq) {
            Metrics::add(&self.metrics.duplicates_dropped, 1);
            return;
        }
        s.resume.delivered(t.seq);
        s.delivered += 1;
        Metrics::set(&self.metrics.tick_lag_us, wall - t.st);
        self.metrics
            .last_seq
            .store(t.seq, std::sync::atomic::Ordering::Relaxed);
        self.deliver(Event::Tick { sub: id, tick: t });
    }

    pub(super) fn on_info(&mut self, info: Info, via: Option<SubId>, stream_id: Option<String>) {
        let sub = via.or_else(|| self.sub_of_stream(stream_id.as_ref()));
        if let Some(s) = sub.and_then(|id| self.subs.get_mut(&id)) {
            let r = &mut s.resume;
            match &info {
                Info::StreamStart {
                    epoch, ring_head, ..
                } => {
                    r.cur_epoch.clone_from(epoch);
                    if let (Some(e), Some(h)) = (epoch, ring_head) {
                        r.start = Some((e.clone(), *h));
                    }
                }
                Info::HistoryStart { epoch } | Info::Live { epoch, .. } if epoch.is_some() => {
                    r.cur_epoch.clone_from(epoch);
                }
                Info::HistoryEpoch { epoch } => r.cur_epoch = Some(epoch.clone()),
                Info::ResumeUnavailable { epoch, .. } => {
                    // The stream goes on live in `epoch` from its start point: resuming from
                    // there asks for nothing this stream was not already going to get.
                    if epoch.is_some() {
                        r.cur_epoch.clone_from(epoch);
                    }
                    if let (Some(e), Some(start)) = (epoch, r.start.clone())
                        && &start.0 == e
                        && r.last.as_ref().is_none_or(|(le, _)| le != e)
                    {
                        r.last = Some(start);
                    }
                }
                _ => {}
            }
        } else if matches!(info, Info::Connected { .. }) {
            // Handled at connection.
            return;
        }
        self.deliver(Event::Info { sub, info });
    }

    pub(super) fn on_gap(&mut self, g: Gap, via: Option<SubId>) {
        let sub = via.or_else(|| self.sub_of_stream(g.stream_id.as_ref()));
        if let Some(s) = sub.and_then(|id| self.subs.get_mut(&id)) {
            match g.reason {
                GapReason::WriterRestart => {
                    if let Some(e) = &g.new_epoch {
                        s.resume.new_run(e);
                    }
                }
                GapReason::ReaderOverrun | GapReason::ResumeUnavailable => {
                    if let Some(l) = g.last_seq {
                        s.resume.lost_through(l);
                    }
                }
                _ => {}
            }
        }
        Metrics::add(&self.metrics.gaps, 1);
        self.deliver(Event::Gap { sub, gap: g });
    }

    pub(super) fn request_sub(&mut self, id: &Value) -> Option<SubId> {
        id.as_u64().and_then(|r| self.by_request.remove(&r))
    }

    pub(super) fn on_subscribed(&mut self, id: &Value, stream_id: String, now: Instant) {
        let Some(sub) = self.request_sub(id) else {
            self.malformed(
                FrameError::UnknownStream(format!("answer to unknown request {id}")),
                now,
            );
            return;
        };
        let Some(s) = self.subs.get_mut(&sub) else {
            return;
        };
        let cancel = matches!(
            s.phase,
            Phase::Pending {
                unsubscribe_on_answer: true,
                ..
            }
        );
        self.by_stream.insert(stream_id.clone(), sub);
        for t in &s.spec.tick_types {
            if let Some(i) = type_index(t) {
                self.routes.insert((s.spec.contract_id, i), sub);
            }
        }
        s.phase = Phase::Active {
            stream_id: stream_id.clone(),
        };
        let resumed_after = s.sent_after.clone();
        self.deliver(Event::Subscribed {
            sub,
            stream_id,
            resumed_after,
        });
        if cancel {
            self.unsubscribe(sub, now);
        }
    }

    pub(super) fn on_error(&mut self, error: ServerError, stream_id: Option<String>, now: Instant) {
        // An answer to a subscribe request.
        if let Some(rid) = error.id.as_ref().and_then(Value::as_u64)
            && let Some(sub) = self.by_request.remove(&rid)
        {
            let Some(s) = self.subs.get_mut(&sub) else {
                return;
            };
            // The engine is restarting, or (SSE, an HTTP answer) the server is busy: ask
            // again in a second.
            if matches!(
                error.code.as_str(),
                "engine_unavailable" | "too_many_connections" | "too_many_from_address"
            ) {
                s.phase = Phase::Queued {
                    not_before: Some(now + Duration::from_secs(1)),
                };
                self.deliver(Event::ServerError {
                    sub: Some(sub),
                    error,
                });
            } else {
                s.phase = Phase::Ended;
                self.deliver(Event::SubscribeFailed {
                    sub,
                    error,
                    local: false,
                });
            }
            return;
        }
        let sub = self.sub_of_stream(stream_id.as_ref());
        self.stream_error(error, sub);
    }

    /// An `error` on an SSE stream: about that stream.
    pub(super) fn on_stream_error(&mut self, error: ServerError, sub: SubId) {
        self.stream_error(error, Some(sub));
    }

    pub(super) fn stream_error(&mut self, error: ServerError, sub: Option<SubId>) {
        if let Some(s) = sub.and_then(|id| self.subs.get_mut(&id))
            && error.code == "slow_consumer"
            && error.recoverable
        {
            s.resume_on_complete = true;
        }
        self.deliver(Event::ServerError { sub, error });
    }

    pub(super) fn drop_routes(&mut self, cid: u32, types: &[String], sub: SubId) {
        for t in types {
            if let Some(i) = type_index(t)
                && self.routes.get(&(cid, i)) == Some(&sub)
            {
                self.routes.remove(&(cid, i));
            }
        }
    }

    pub(super) fn on_complete(
        &mut self,
        complete: Complete,
        via: Option<SubId>,
        stream_id: Option<String>,
        now: Instant,
    ) {
        let Some(sub) = via.or_else(|| self.sub_of_stream(stream_id.as_ref())) else {
            self.malformed(
                FrameError::UnknownStream(stream_id.unwrap_or_default()),
                now,
            );
            return;
        };
        if let Some(sid) = &stream_id {
            self.by_stream.remove(sid);
        }
        let Some(s) = self.subs.get_mut(&sub) else {
            return;
        };
        let was_unsubscribing = matches!(s.phase, Phase::Unsubscribing { .. });
        let resuming = !was_unsubscribing
            && ((complete.reason == "error" && s.resume_on_complete)
                || complete.reason == "server_shutdown");
        s.resume_on_complete = false;
        let spec = (s.spec.contract_id, s.spec.tick_types.clone());
        s.phase = if resuming {
            Phase::Queued { not_before: None }
        } else {
            Phase::Ended
        };
        self.drop_routes(spec.0, &spec.1, sub);
        self.deliver(Event::Complete {
            sub,
            complete,
            resuming,
        });
        self.pump(now);
    }
}
