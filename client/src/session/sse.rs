//! The SSE side of the session: one HTTP stream per subscription, each opened, fed and
//! ended on its own (the WebSocket side is one connection for all, in the parent module).

use super::*;

impl Session {
    /// The server answered over HTTP and the connection is SSE (no WebSocket there, or
    /// configured): connected at once, each subscription becomes an [`Action::OpenStream`].
    pub fn on_open_sse(&mut self, now: Instant) {
        if self.state() != ConnState::Connecting {
            return;
        }
        self.sse = true;
        self.last_frame = Some(now);
        self.sweep_at = Some(now + self.sweep_period());
        self.connected(Some(SSE_LIMITS), None, "server answered (SSE)", now);
    }

    /// Whether the current (or last) connection is SSE.
    pub fn is_sse(&self) -> bool {
        self.sse
    }

    pub(super) fn sweep_period(&self) -> Duration {
        (self.silence_limit() / 4).max(Duration::from_millis(10))
    }

    /// SSE: the stream of request `id` answered 200 (`stream_id` from `X-Stream-Id`).
    pub fn on_stream_open(&mut self, id: u64, stream_id: Option<String>, now: Instant) {
        let Some(entry) = self.streams.get_mut(&id) else {
            return;
        };
        entry.1 = now;
        let sub = entry.0;
        if let Some(s) = self.subs.get_mut(&sub) {
            s.stream_req = Some(id);
        }
        let stream_id = stream_id.unwrap_or_else(|| format!("sse-request-{id}"));
        self.on_subscribed(&Value::from(id), stream_id, now);
    }

    /// SSE: the stream of request `id` was refused with an HTTP error; `body` is the
    /// server's `{"error":{...}}` when it sent one.
    pub fn on_stream_refused(&mut self, id: u64, status: u16, body: &[u8], now: Instant) {
        if self.streams.remove(&id).is_none() {
            return;
        }
        let parsed = serde_json::from_slice::<Value>(body).ok();
        let e = parsed.as_ref().and_then(|v| v.get("error"));
        let field = |k: &str| e.and_then(|e| e.get(k)).and_then(Value::as_str);
        let error = ServerError {
            code: field("code").map_or_else(|| format!("http_{status}"), str::to_owned),
            message: field("message").map_or_else(
                || String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
                str::to_owned,
            ),
            recoverable: matches!(status, 429 | 503),
            ib_code: e.and_then(|e| e.get("ib_code")).and_then(Value::as_i64),
            id: Some(Value::from(id)),
        };
        self.changed = true;
        self.on_error(error, None, now);
    }

    /// SSE: one event's `data` on the stream of request `id`; `event_id` is its `id:`.
    pub fn on_stream_frame(
        &mut self,
        id: u64,
        data: &[u8],
        event_id: Option<&str>,
        now: Instant,
        wall: WallUs,
    ) {
        if self.state() != ConnState::Connected {
            return;
        }
        let Some(entry) = self.streams.get_mut(&id) else {
            // A stream dropped already (unsubscribed, or of a lost connection).
            return;
        };
        entry.1 = now;
        let sub = entry.0;
        self.count_frame(data.len(), now, wall);
        match message::parse(data) {
            Ok(m) => {
                if let (ServerMessage::Tick(t), Some(eid)) = (&m, event_id) {
                    self.check_event_id(sub, t.seq, eid);
                }
                if matches!(m, ServerMessage::Complete { .. }) {
                    // The server closes the stream after it: that end is expected.
                    self.streams.remove(&id);
                    if let Some(s) = self.subs.get_mut(&sub) {
                        s.stream_req = None;
                    }
                }
                self.on_message(m, Some(sub), now, wall);
            }
            Err(e) => self.malformed(e, now),
        }
    }

    /// The SSE id of a tick names the run and the sequence; the session's own resume point
    /// must agree with it (it is what a reconnect sends). A disagreement is a server or
    /// client bug worth seeing, not a reason to drop the tick.
    pub(super) fn check_event_id(&self, sub: SubId, seq: u64, eid: &str) {
        let Some(s) = self.subs.get(&sub) else {
            return;
        };
        let ok = match (eid.rsplit_once('-'), &s.resume.cur_epoch) {
            (Some((e, q)), Some(cur)) => e == cur && q.parse::<u64>().ok() == Some(seq),
            _ => true,
        };
        if !ok {
            tracing::warn!(
                event_id = eid,
                seq,
                epoch = ?s.resume.cur_epoch,
                "an SSE tick's id does not match the run the client follows"
            );
        }
    }

    /// SSE: bytes that prove the stream alive without an event (a comment).
    pub fn on_stream_alive(&mut self, id: u64, now: Instant) {
        if let Some(entry) = self.streams.get_mut(&id) {
            entry.1 = now;
            self.last_frame = Some(now);
        }
    }

    /// SSE: the stream of request `id` carried something unusable (an oversized line).
    pub fn on_stream_malformed(&mut self, id: u64, e: FrameError, now: Instant, wall: WallUs) {
        if self.state() != ConnState::Connected || !self.streams.contains_key(&id) {
            return;
        }
        self.count_frame(0, now, wall);
        self.malformed(e, now);
    }

    /// SSE: the stream of request `id` ended (closed by the server, an I/O error). After its
    /// `complete` that is expected; otherwise the connection counts as lost: every stream is
    /// dropped and resumed on a new one, as after a lost WebSocket.
    pub fn on_stream_end(&mut self, id: u64, why: &str, now: Instant) {
        if self.streams.remove(&id).is_none() || self.state() != ConnState::Connected {
            return;
        }
        self.actions.push_back(Action::Disconnect);
        self.lose_connection();
        self.retry(
            format!("connection lost: stream ended: {why}"),
            ConnState::Connected,
            now,
        );
    }
}
