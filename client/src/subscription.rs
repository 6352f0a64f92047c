//! What a consumer asks for, and the resume point the client keeps for it.

use serde_json::{Value, json};

/// A subscription's handle, unique per client.
pub type SubId = u64;

/// The server-side policy when this stream's queue on the server is full (`slow=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerSlowPolicy {
    /// The server keeps the latest tick per kind and sends `gap{slow_client}`.
    Conflate,
    /// The server ends the stream with `error{slow_consumer}`; the client resubscribes from
    /// its resume point, so nothing is lost.
    Disconnect,
}

/// A subscription: a contract, its tick types and options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// conId.
    pub contract_id: u32,
    /// `bid_ask`, `last`, `all_last`, `mid_point`, `mktdata`.
    pub tick_types: Vec<String>,
    /// History then live from this time (`5m`, RFC 3339, unix seconds or ms).
    pub since: Option<String>,
    /// The server's slow-client policy (`None`: the server's default, conflate).
    pub slow: Option<ServerSlowPolicy>,
    /// End after this many ticks.
    pub limit: Option<u64>,
    /// End after this many seconds.
    pub timeout_secs: Option<u64>,
}

impl Subscription {
    /// `contract_id` with `tick_types`.
    pub fn new(contract_id: u32, tick_types: &[&str]) -> Subscription {
        Subscription {
            contract_id,
            tick_types: tick_types.iter().map(|s| (*s).to_owned()).collect(),
            since: None,
            slow: None,
            limit: None,
            timeout_secs: None,
        }
    }

    /// History then live from `since`.
    pub fn since(mut self, since: impl Into<String>) -> Self {
        self.since = Some(since.into());
        self
    }

    /// The server's slow-client policy.
    pub fn slow(mut self, p: ServerSlowPolicy) -> Self {
        self.slow = Some(p);
        self
    }

    /// At most `n` ticks.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// The `subscribe` request: `after` (a resume token) wins over `since`, as on the server;
    /// `delivered` ticks already count against `limit`.
    pub(crate) fn request(&self, id: u64, after: Option<&str>, delivered: u64) -> String {
        let mut v = json!({
            "type": "subscribe",
            "id": id,
            "contract_id": self.contract_id,
            "tick_types": self.tick_types,
        });
        let m = v.as_object_mut().expect("an object");
        if let Some(p) = self.slow {
            m.insert(
                "slow".into(),
                Value::from(match p {
                    ServerSlowPolicy::Conflate => "conflate",
                    ServerSlowPolicy::Disconnect => "disconnect",
                }),
            );
        }
        if let Some(l) = self.limit {
            m.insert("limit".into(), json!(l.saturating_sub(delivered).max(1)));
        }
        if let Some(t) = self.timeout_secs {
            m.insert("timeout".into(), json!(t));
        }
        match (after, &self.since) {
            (Some(tok), _) => {
                m.insert("after_seq".into(), json!(tok));
            }
            (None, Some(s)) => {
                m.insert("since".into(), json!(s));
            }
            (None, None) => {}
        }
        v.to_string()
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay as they are).
pub(crate) fn percent_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

impl Subscription {
    /// The SSE request's path and query, the same options as [`Subscription::request`]: the
    /// resume token goes in `Last-Event-ID` (by the caller) and wins over `since`, which is
    /// then left out; `delivered` ticks count against `limit`.
    pub(crate) fn sse_path(&self, after: Option<&str>, delivered: u64) -> String {
        let mut p = format!("/v3/stream/{}?tick_types=", self.contract_id);
        for (i, t) in self.tick_types.iter().enumerate() {
            if i > 0 {
                p.push(',');
            }
            percent_encode(t, &mut p);
        }
        if let Some(s) = self.slow {
            p.push_str(match s {
                ServerSlowPolicy::Conflate => "&slow=conflate",
                ServerSlowPolicy::Disconnect => "&slow=disconnect",
            });
        }
        if let Some(l) = self.limit {
            p.push_str(&format!("&limit={}", l.saturating_sub(delivered).max(1)));
        }
        if let Some(t) = self.timeout_secs {
            p.push_str(&format!("&timeout={t}"));
        }
        if let (None, Some(s)) = (after, &self.since) {
            p.push_str("&since=");
            percent_encode(s, &mut p);
        }
        p
    }
}

/// Index of a requested tick type, for routing ticks: a tick's `cid` and kind name its
/// stream on a connection (the server refuses overlapping streams).
pub(crate) fn type_index(requested: &str) -> Option<u8> {
    Some(match requested {
        "bid_ask" => 0,
        "last" => 1,
        "all_last" => 2,
        "mid_point" => 3,
        "mktdata" => 4,
        _ => return None,
    })
}

/// Where a subscription's stream stands: the run its ticks currently belong to and the last
/// position delivered (or known lost), from which a reconnect resumes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ResumePoint {
    /// The run the ticks now arriving belong to (set by the `info`/`gap` messages that
    /// announce runs).
    pub(crate) cur_epoch: Option<String>,
    /// The last position delivered or accounted for: `(epoch, seq)`.
    pub(crate) last: Option<(String, u64)>,
    /// `info{stream_start}`'s `(epoch, ring_head)`: the resume point of a stream that has
    /// not delivered a tick yet.
    pub(crate) start: Option<(String, u64)>,
}

impl ResumePoint {
    /// Whether a tick of `seq` in the current run was already delivered.
    pub(crate) fn is_duplicate(&self, seq: u64) -> bool {
        match (&self.cur_epoch, &self.last) {
            (Some(e), Some((le, ls))) => e == le && seq <= *ls,
            _ => false,
        }
    }

    /// Records a delivered tick.
    pub(crate) fn delivered(&mut self, seq: u64) {
        if let Some(e) = &self.cur_epoch {
            match &mut self.last {
                Some((le, ls)) if le == e => *ls = seq,
                _ => self.last = Some((e.clone(), seq)),
            }
        }
    }

    /// Sequences through `seq` of the current run are accounted for (lost, and said so).
    pub(crate) fn lost_through(&mut self, seq: u64) {
        if let Some(e) = &self.cur_epoch {
            match &mut self.last {
                Some((le, ls)) if le == e => *ls = (*ls).max(seq),
                _ => self.last = Some((e.clone(), seq)),
            }
        }
    }

    /// The engine restarted: the new run, from its start.
    pub(crate) fn new_run(&mut self, epoch: &str) {
        self.cur_epoch = Some(epoch.to_owned());
        self.last = Some((epoch.to_owned(), 0));
    }

    /// The token to resume after, if any position is known.
    pub(crate) fn token(&self) -> Option<String> {
        self.last
            .as_ref()
            .or(self.start.as_ref())
            .map(|(e, s)| format!("{e}-{s}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_resumes_after_the_token_and_counts_the_limit() {
        let s = Subscription::new(5, &["bid_ask", "last"])
            .since("5m")
            .limit(10)
            .slow(ServerSlowPolicy::Disconnect);
        let v: Value = serde_json::from_str(&s.request(3, None, 0)).unwrap();
        assert_eq!(v["since"], "5m");
        assert_eq!(v["limit"], 10);
        assert_eq!(v["slow"], "disconnect");
        assert!(v.get("after_seq").is_none());
        let v: Value = serde_json::from_str(&s.request(4, Some("ab-7"), 4)).unwrap();
        assert_eq!(v["after_seq"], "ab-7");
        assert!(v.get("since").is_none(), "the token wins over since");
        assert_eq!(v["limit"], 6);
        assert_eq!(v["tick_types"], json!(["bid_ask", "last"]));
    }

    #[test]
    fn the_sse_path_carries_the_same_options_and_the_token_wins_over_since() {
        let s = Subscription::new(5, &["bid_ask", "last"])
            .since("2025-11-22T14:30:00+01:00")
            .limit(10)
            .slow(ServerSlowPolicy::Disconnect);
        assert_eq!(
            s.sse_path(None, 0),
            "/v3/stream/5?tick_types=bid_ask,last&slow=disconnect&limit=10&since=2025-11-22T14%3A30%3A00%2B01%3A00"
        );
        assert_eq!(
            s.sse_path(Some("ab-7"), 4),
            "/v3/stream/5?tick_types=bid_ask,last&slow=disconnect&limit=6"
        );
        assert_eq!(
            Subscription::new(7, &["last"]).sse_path(None, 0),
            "/v3/stream/7?tick_types=last"
        );
    }

    #[test]
    fn resume_point_follows_runs_and_drops_duplicates() {
        let mut r = ResumePoint::default();
        assert_eq!(r.token(), None);
        r.cur_epoch = Some("aa".into());
        r.start = Some(("aa".into(), 40));
        assert_eq!(r.token().as_deref(), Some("aa-40"));
        r.delivered(41);
        assert!(r.is_duplicate(41) && r.is_duplicate(3) && !r.is_duplicate(42));
        r.lost_through(50);
        assert_eq!(r.token().as_deref(), Some("aa-50"));
        r.new_run("bb");
        assert_eq!(r.token().as_deref(), Some("bb-0"));
        assert!(!r.is_duplicate(1));
        r.delivered(1);
        assert!(r.is_duplicate(1));
        // A replay of an earlier run (history) is not compared with this run's sequences.
        r.cur_epoch = Some("aa".into());
        assert!(!r.is_duplicate(1));
    }
}
