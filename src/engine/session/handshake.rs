//! The connection's life: connect (ports in turn, backoff once all were tried, client-id
//! rotation), the handshake phases (hello, the server's version, `startApi`, `nextValidId`),
//! the receive path and disconnects.

use tracing::{debug, info, warn};

use crate::ipc::{ConnState, GapReason};
use crate::tws::ClientHandshake;
use crate::tws::FrameReader;

use super::super::ingest::READ_CHUNK;
use super::{Action, Clock, IbConn, Phase, Session};

impl Session {
    /// The connect that is due: asks the caller for a TCP connection.
    pub(super) fn connect(&mut self, now: u64) {
        let port = self.settings.ib_ports[self.port_idx % self.settings.ib_ports.len()];
        let options = if self.settings.pace_api {
            "+PACEAPI"
        } else {
            ""
        };
        self.conn = Some(IbConn {
            phase: Phase::Tcp,
            deadline: now + self.settings.connect_timeout.as_nanos() as u64,
            hs: ClientHandshake::new(self.client_id(), options),
            out: Vec::new(),
            port,
            version: 0,
            ready_at: 0,
            accounts: String::new(),
        });
        self.actions.push_back(Action::Connect { port });
    }

    /// The caller started the TCP connect of [`Action::Connect`].
    pub fn on_connecting(&mut self, clock: Clock) {
        self.clock = clock;
        self.ingest.publisher.set_clock(clock.unix);
        let Some(c) = &self.conn else { return };
        debug!(port = c.port, client_id = c.hs.client_id, "connecting");
        let id = c.hs.client_id;
        self.ingest
            .publisher
            .connection(ConnState::Connecting, 0, id, 0);
    }

    /// The TCP connect of [`Action::Connect`] could not even start (no such host, ...).
    pub fn on_connect_failed(&mut self, clock: Clock, why: &str) {
        self.clock = clock;
        self.ingest.publisher.set_clock(clock.unix);
        if let Some(c) = self.conn.take() {
            debug!(port = c.port, "connect failed: {why}");
        }
        self.connect_failed(clock.mono);
    }

    /// A connect attempt failed before the session was up: try the next port, and back
    /// off once every port has been tried.
    pub(super) fn connect_failed(&mut self, now: u64) {
        self.port_idx += 1;
        let delay = if self.port_idx.is_multiple_of(self.settings.ib_ports.len()) {
            self.backoff.next_delay()
        } else {
            0
        };
        self.schedule_connect(now, delay);
    }

    pub(super) fn schedule_connect(&mut self, now: u64, delay: u64) {
        self.next_connect = Some(now + delay);
        if delay > 0 {
            let id = self.client_id();
            self.ingest
                .publisher
                .connection(ConnState::Backoff, 0, id, 0);
        }
        self.status_dirty = true;
    }

    /// The TCP connection is established: the hello goes out.
    pub fn on_connected(&mut self, clock: Clock) {
        self.clock = clock;
        self.ingest.publisher.set_clock(clock.unix);
        let Some(c) = self.conn.as_mut() else { return };
        if c.phase != Phase::Tcp {
            return;
        }
        c.hs.start(&mut c.out);
        c.phase = Phase::Ack;
        // The answer and every frame after it are read through the one frame reader.
        self.ingest.reader = FrameReader::with_capacity(4 * READ_CHUNK);
    }

    /// The IB socket closed or failed (`why` for the log).
    pub fn on_closed(&mut self, clock: Clock, why: &str) {
        self.clock = clock;
        self.ingest.publisher.set_clock(clock.unix);
        if self.conn.is_some() {
            self.disconnect(why, clock.mono, false);
        }
    }

    /// Where the caller reads the IB socket into (at least 64 KiB; no copy on the way to
    /// the decoder). Follow with [`Session::on_received`].
    #[inline]
    pub fn recv_buf(&mut self) -> &mut [u8] {
        self.ingest.reader.spare(READ_CHUNK)
    }

    /// `n` bytes were read into [`Session::recv_buf`] at `ts_recv` (Unix ns): the hot path.
    /// Ticks go into the ring; everything else is handled. Returns false when the session
    /// closed the connection (stop reading).
    #[inline]
    pub fn on_received(&mut self, clock: Clock, ts_recv: i64, n: usize) -> bool {
        self.clock = clock;
        self.ingest.publisher.set_clock(clock.unix);
        let Some(c) = self.conn.as_ref() else {
            return false;
        };
        let phase = c.phase;
        self.last_rx = ts_recv;
        let counters = &mut self.ingest.publisher.snap.counters;
        counters.bytes_read += n as u64;
        counters.socket_reads += 1;
        self.ingest.reader.commit(n);
        if phase == Phase::Ack {
            if !self.on_ack(clock.mono) {
                return false;
            }
            if self.conn.as_ref().is_some_and(|c| c.phase == Phase::Ack) {
                return true;
            }
        }
        self.process_frames(ts_recv, clock.mono)
    }

    /// Bytes from IB copied in (a harness; the driver reads into [`Session::recv_buf`]).
    pub fn on_bytes(&mut self, clock: Clock, ts_recv: i64, bytes: &[u8]) -> bool {
        for chunk in bytes.chunks(READ_CHUNK) {
            self.recv_buf()[..chunk.len()].copy_from_slice(chunk);
            if !self.on_received(clock, ts_recv, chunk.len()) {
                return false;
            }
        }
        true
    }

    /// The server's answer, once whole: `startApi` goes out. False when the connection
    /// was closed.
    fn on_ack(&mut self, now: u64) -> bool {
        let Some(c) = self.conn.as_mut() else {
            return false;
        };
        // The tws crate's one client handshake reads the answer off the session's reader.
        match c.hs.poll_ack(&mut self.ingest.reader, &mut c.out) {
            Ok(None) => true,
            Ok(Some(ack)) => {
                c.version = ack.version;
                c.phase = Phase::Start;
                self.ingest.version = ack.version;
                self.ingest.publisher.snap.engine.server_version = ack.version;
                info!(
                    version = ack.version,
                    time = %ack.time,
                    port = c.port,
                    "handshake done; starting the API"
                );
                true
            }
            Err(e) => {
                let why = format!("handshake: {e}");
                self.disconnect(&why, now, false);
                false
            }
        }
    }

    /// `nextValidId` in the Start phase: the session is up.
    pub(super) fn on_ready(&mut self, now: u64) {
        let Some(c) = self.conn.as_mut() else { return };
        c.phase = Phase::Ready;
        c.ready_at = now;
        let (version, client_id, port) = (c.version, c.hs.client_id, c.port);
        let ts = self.clock.unix;
        info!(version, client_id, port, accounts = %c.accounts, "IB session up");
        let p = &mut self.ingest.publisher;
        p.snap.engine.connected_since_ns = ts;
        p.snap.engine.server_version = version;
        p.snap.engine.client_id = client_id;
        if self.ever_ready {
            p.snap.counters.reconnects += 1;
        }
        self.ever_ready = true;
        p.connection(ConnState::Connected, version, client_id, 0);
        if let Some(from) = self.down_since.take() {
            info!(
                from,
                to = ts,
                "writing a gap record for the time the session was down"
            );
            p.gap(GapReason::Disconnected, from, ts);
        }
        // Remember the working port: the next reconnect tries it first.
        self.port_idx %= self.settings.ib_ports.len();
        self.ingest.subs.on_connected();
        self.status_dirty = true;
        self.pump(now);
    }

    /// Ends the connection (the caller closes the socket on [`Action::CloseIb`]) and
    /// schedules the next: at once (`immediate`), after a backoff, or on the next port.
    pub(super) fn disconnect(&mut self, why: &str, now: u64, immediate: bool) {
        let Some(c) = self.conn.take() else {
            return;
        };
        self.actions.push_back(Action::CloseIb);
        let was_ready = c.phase == Phase::Ready;
        if self.stopping {
            info!(port = c.port, "IB connection closed during the stop: {why}");
        } else {
            warn!(
                port = c.port,
                client_id = c.hs.client_id,
                "IB connection closed: {why}"
            );
        }
        self.ingest.publisher.flush();
        if was_ready {
            if self.down_since.is_none() {
                self.down_since = Some(if self.last_rx > 0 {
                    self.last_rx
                } else {
                    self.clock.unix
                });
            }
            self.open_sub_gaps(GapReason::Disconnected, self.down_since.unwrap_or(0));
            self.ingest.subs.on_subscriptions_lost(false);
            self.ingest.subs.set_stale(false);
            self.lost_since = None;
            self.drain_sub_events();
        }
        self.ingest.reader = FrameReader::with_capacity(4 * READ_CHUNK);
        self.extra.clear();
        // Farm states belong to the session; the next one reports them afresh.
        self.farms.clear();
        self.status_dirty = true;
        self.book.on_disconnect(now);
        self.fail_all_lookups();
        self.ingest
            .publisher
            .connection(ConnState::Disconnected, c.version, c.hs.client_id, 0);
        if self.stopping {
            return;
        }
        if immediate {
            self.schedule_connect(now, 0);
        } else if was_ready {
            let d = self.backoff.next_delay();
            self.schedule_connect(now, d);
        } else {
            self.connect_failed(now);
        }
    }

    /// Bytes waiting for the IB socket.
    #[inline]
    pub fn ib_out(&self) -> &[u8] {
        self.conn.as_ref().map_or(&[], |c| &c.out)
    }

    /// The caller wrote the first `n` bytes of [`Session::ib_out`].
    #[inline]
    pub fn ib_written(&mut self, n: usize) {
        if let Some(c) = self.conn.as_mut() {
            c.out.drain(..n);
        }
    }
}
