//! The simulated gateway's state that every connection shares, sans-IO: the settings, the
//! universe, the account (market data lines, tick-by-tick windows, cancels), the client ids in
//! use (a duplicate gets 326), the competing-session flag, and the wall clock's anchor. The
//! socket server (`server`) and an in-process simulation both build their connections
//! ([`crate::connection::Connection`]) on one of these.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::historical::HistoricalDesk;
use crate::limits::SharedAccount;
use crate::schedule::{Mode, Schedule};
use crate::session::SessionConfig;
use crate::universe::Universe;

/// Settings of a simulated gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The highest server version it negotiates.
    pub max_version: u32,
    pub mode: Mode,
    /// Ticks a second per subscription.
    pub rate: f64,
    /// Per-instrument rates (conId to ticks a second), overriding `rate`.
    pub rate_for: HashMap<i32, f64>,
    pub burst_size: u64,
    pub session: SessionConfig,
    /// Start with a competing live session (10197).
    pub competing: bool,
}

/// Maps the monotonic instants the caller passes to Unix time: the gateway's clock shows in
/// the handshake, reqCurrentTime, tick times and error times. A simulation anchors it where it
/// likes, so the bytes it sees do not depend on when it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    at: Instant,
    unix_nanos: u128,
}

impl WallClock {
    /// `at` is `unix_nanos` nanoseconds after 1970-01-01 UTC.
    pub fn new(at: Instant, unix_nanos: u128) -> Self {
        Self { at, unix_nanos }
    }

    /// The system clock, anchored now.
    pub fn system() -> Self {
        let unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self::new(Instant::now(), unix_nanos)
    }

    /// Unix time in nanoseconds at `now` (the anchor's time for instants before it).
    pub fn unix_nanos(&self, now: Instant) -> u128 {
        self.unix_nanos + now.saturating_duration_since(self.at).as_nanos()
    }
}

/// What every connection of one simulated gateway shares.
#[derive(Debug)]
pub struct Gateway {
    cfg: GatewayConfig,
    universe: Universe,
    account: SharedAccount,
    /// Client ids in use, with the connection that holds each.
    clients: Mutex<HashMap<i32, u64>>,
    competing: AtomicBool,
    schedules: HashMap<i32, Schedule>,
    default_schedule: Schedule,
    wall: WallClock,
    /// Nanoseconds the wall clock was moved by [`Gateway::jump_wall_clock`].
    wall_jump: AtomicI64,
    /// Historical ticks: the time index's epoch and the pacing state (crate::historical).
    historical: Mutex<HistoricalDesk>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data: a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Gateway {
    pub fn new(cfg: GatewayConfig, universe: Universe, wall: WallClock) -> Self {
        let schedules = cfg
            .rate_for
            .iter()
            .map(|(c, r)| (*c, Schedule::new(cfg.mode, *r, cfg.burst_size)))
            .collect();
        Self {
            default_schedule: Schedule::new(cfg.mode, cfg.rate, cfg.burst_size),
            schedules,
            competing: AtomicBool::new(cfg.competing),
            universe,
            account: SharedAccount::default(),
            clients: Mutex::default(),
            historical: Mutex::new(HistoricalDesk::new(wall.unix_nanos, wall.at)),
            wall,
            wall_jump: AtomicI64::new(0),
            cfg,
        }
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    pub fn universe(&self) -> &Universe {
        &self.universe
    }

    pub(crate) fn historical_desk(&self) -> MutexGuard<'_, HistoricalDesk> {
        lock(&self.historical)
    }

    pub fn account(&self) -> &SharedAccount {
        &self.account
    }

    /// Unix time in nanoseconds at `now`, as this gateway's clock shows it.
    pub fn unix_nanos(&self, now: Instant) -> u128 {
        let jump = self.wall_jump.load(Ordering::Relaxed);
        let base = self.wall.unix_nanos(now);
        if jump >= 0 {
            base.saturating_add(jump.unsigned_abs().into())
        } else {
            base.saturating_sub(jump.unsigned_abs().into())
        }
    }

    /// Unix seconds at `now`, as this gateway's clock shows it.
    pub fn unix_secs(&self, now: Instant) -> i64 {
        (self.unix_nanos(now) / 1_000_000_000) as i64
    }

    /// Moves the gateway's wall clock by `by_nanos` (back when negative), as when its host's
    /// clock is stepped: times it sends from then on (current time, tick and error times, a
    /// new connection's handshake) follow; the pacing of ticks, on the monotonic `now`, does not.
    pub fn jump_wall_clock(&self, by_nanos: i64) {
        self.wall_jump.fetch_add(by_nanos, Ordering::Relaxed);
    }

    /// The pacing of a subscription to this instrument.
    pub fn schedule_for(&self, con_id: i32) -> Schedule {
        self.schedules
            .get(&con_id)
            .copied()
            .unwrap_or(self.default_schedule)
    }

    /// Whether a competing live session holds the market data (new connections start so).
    pub fn competing(&self) -> bool {
        self.competing.load(Ordering::Relaxed)
    }

    pub fn set_competing(&self, on: bool) {
        self.competing.store(on, Ordering::Relaxed);
    }

    /// Claims a client id for a connection; false when another connection holds it.
    pub(crate) fn register(&self, client_id: i32, conn_no: u64) -> bool {
        let mut clients = lock(&self.clients);
        if clients.contains_key(&client_id) {
            return false;
        }
        clients.insert(client_id, conn_no);
        true
    }

    /// Frees a client id, if this connection holds it.
    pub(crate) fn deregister(&self, client_id: i32, conn_no: u64) {
        let mut clients = lock(&self.clients);
        if clients.get(&client_id) == Some(&conn_no) {
            clients.remove(&client_id);
        }
    }

    /// Connections that completed START_API and are not gone.
    pub fn client_count(&self) -> usize {
        lock(&self.clients).len()
    }

    /// The gateway came back after a restart (every connection closed first): it remembers no
    /// tick-by-tick request, so clients may resubscribe at once.
    pub fn restarted(&self) {
        self.account.lock().forget_all_tbt_requests();
    }

    /// Another client of the account takes (`take`) or gives back (`!take`) `tbt`
    /// tick-by-tick slots and `lines` market data lines: requests beyond the account's caps
    /// are refused with 10190 and 101 meanwhile.
    pub fn slots_elsewhere(&self, tbt: usize, lines: usize, take: bool) {
        let mut acct = self.account.lock();
        if take {
            acct.tbt_active += tbt;
            acct.mkt_lines += lines;
        } else {
            acct.tbt_active = acct.tbt_active.saturating_sub(tbt);
            acct.mkt_lines = acct.mkt_lines.saturating_sub(lines);
        }
    }

    /// Cancels the account received since start, by kind (see [`crate::limits::CancelCounts`]).
    pub fn cancels(&self) -> serde_json::Value {
        self.account.lock().cancels.to_json()
    }
}
