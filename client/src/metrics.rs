//! Counters the client keeps (shared, lock-free) and the health snapshot built from them.
//!
//! Counters are cumulative over the client's life: a reconnect does not reset them
//! (`reconnects` counts the reconnects themselves). Times are µs since the Unix epoch.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::state::ConnState;

/// The client's counters. Read them with [`Metrics::snapshot`].
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) messages: AtomicU64,
    pub(crate) ticks: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) duplicates_dropped: AtomicU64,
    pub(crate) overflow_dropped: AtomicU64,
    pub(crate) heartbeats: AtomicU64,
    pub(crate) silent_deaths: AtomicU64,
    pub(crate) last_message_us: AtomicI64,
    pub(crate) server_lag_us: AtomicI64,
    pub(crate) tick_lag_us: AtomicI64,
    pub(crate) ring_head: AtomicU64,
    pub(crate) last_seq: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsSnapshot {
    /// Frames received (every kind, malformed included).
    pub messages: u64,
    /// Ticks delivered to the consumer.
    pub ticks: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Reconnects (connections after the first).
    pub reconnects: u64,
    /// Gap messages delivered (the server's and [`crate::GapReason::ClientOverflow`]).
    pub gaps: u64,
    /// Frames that could not be used ([`crate::FrameError`]).
    pub malformed: u64,
    /// Ticks received again after a resume and not delivered twice.
    pub duplicates_dropped: u64,
    /// Ticks dropped by the client-side queue bound (policy `DropTicks`).
    pub overflow_dropped: u64,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// Connections given up because nothing arrived within the heartbeat deadline.
    pub silent_deaths: u64,
    /// When the last frame arrived (µs since the epoch; 0 before any).
    pub last_message_us: i64,
    /// Local time minus the server's time at the last heartbeat, µs (transit plus clock
    /// offset).
    pub server_lag_us: i64,
    /// Local time minus the engine receive time (`st`) of the last tick, µs.
    pub tick_lag_us: i64,
    /// The server's newest ring sequence at the last heartbeat.
    pub ring_head: u64,
    /// The sequence of the last tick delivered.
    pub last_seq: u64,
}

impl Metrics {
    /// All counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let ri = |a: &AtomicI64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            messages: r(&self.messages),
            ticks: r(&self.ticks),
            bytes: r(&self.bytes),
            reconnects: r(&self.reconnects),
            gaps: r(&self.gaps),
            malformed: r(&self.malformed),
            duplicates_dropped: r(&self.duplicates_dropped),
            overflow_dropped: r(&self.overflow_dropped),
            heartbeats: r(&self.heartbeats),
            silent_deaths: r(&self.silent_deaths),
            last_message_us: ri(&self.last_message_us),
            server_lag_us: ri(&self.server_lag_us),
            tick_lag_us: ri(&self.tick_lag_us),
            ring_head: r(&self.ring_head),
            last_seq: r(&self.last_seq),
        }
    }

    pub(crate) fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(a: &AtomicI64, v: i64) {
        a.store(v, Ordering::Relaxed);
    }
}

/// A health snapshot: the state and what the consumer needs to judge the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The connection state.
    pub state: ConnState,
    /// Whether the connection is up and a frame arrived within the heartbeat deadline.
    pub healthy: bool,
    /// Microseconds since the last frame (`None` before any).
    pub since_last_message_us: Option<i64>,
    /// Subscriptions streaming now.
    pub active_subscriptions: usize,
    /// Subscriptions waiting for the server's answer or for a reconnect.
    pub pending_subscriptions: usize,
    /// Subscriptions ended (completed, refused, unsubscribed).
    pub ended_subscriptions: usize,
    /// Events waiting in the client's queue for the consumer.
    pub queued_events: usize,
    /// The counters.
    pub metrics: MetricsSnapshot,
}
