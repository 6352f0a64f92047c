//! The socket server: a thin driver around the sans-IO [`Connection`]. The accept loop gives
//! each client a thread that owns its [`Connection`] and writes its output, and a reader
//! thread that passes the bytes read on; server-wide faults (restart) are done here.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::capture::CaptureWriter;
use crate::clock;
use crate::connection::{Connection, End};
use crate::hub::{ClientHandle, Event, Hub, Target};

/// The longest wait when no timer is set (a fault or bytes end it sooner).
const IDLE_WAIT: Duration = Duration::from_millis(250);
/// The shortest sleep between two batches of a steady or bursty stream: at high rates the next
/// tick is microseconds away, so a few go out in one write instead of one write each (the send
/// log records the real send time).
const MIN_TURN: Duration = Duration::from_micros(100);

/// How long a connection the gateway closes after an error (100, 326) keeps reading what the
/// client still sends.
const LINGER: Duration = Duration::from_secs(1);

/// Server-wide commands for the accept loop.
#[derive(Debug)]
pub enum ServerCommand {
    /// Close the listener and every connection, stay down this long, then listen again on
    /// the same port.
    Restart { down: Duration },
}

/// The accept loop. Returns only on a listener error.
pub fn run(
    listener: TcpListener,
    hub: Arc<Hub>,
    commands: Receiver<ServerCommand>,
) -> anyhow::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let mut listener = Some(listener);
    let conn_seq = AtomicU64::new(0);
    loop {
        match commands.try_recv() {
            Ok(ServerCommand::Restart { down }) => {
                info!(?down, "restart: closing the listener and every connection");
                drop(listener.take());
                hub.drop_clients(Target::All);
                // A restarted gateway knows no old client: wait (bounded) until every closed
                // session has given up its client id, so a reconnect never meets a stale 326.
                let until = Instant::now() + Duration::from_secs(2);
                while hub.gateway.client_count() > 0 && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
                hub.gateway.restarted();
                std::thread::sleep(down);
                let l = TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                listener = Some(l);
                info!("restart: listening again on {addr}");
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
        }
        let Some(l) = &listener else { continue };
        match l.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                let conn_no = conn_seq.fetch_add(1, Ordering::Relaxed);
                let hub = Arc::clone(&hub);
                std::thread::Builder::new()
                    .name(format!("tws-sim-conn-{conn_no}"))
                    .spawn(move || serve(stream, &hub, conn_no))?;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                // Polling keeps restart simple; 2 ms is far below any client's connect timeout.
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => warn!("accept failed: {e}"),
        }
    }
}

/// Serves one accepted connection until it ends.
fn serve(stream: TcpStream, hub: &Arc<Hub>, conn_no: u64) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    match drive(stream, hub, conn_no) {
        Ok(()) => debug!(conn_no, %peer, "connection closed"),
        Err(e) => info!(conn_no, %peer, "connection ended: {e}"),
    }
}

/// Drives one [`Connection`] over its socket: events in, output written (blocking, so a
/// client that does not read holds the ticks back), timers from `next_deadline`.
fn drive(mut stream: TcpStream, hub: &Arc<Hub>, conn_no: u64) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let start = Instant::now();
    let mut capture = hub.open_capture(conn_no, start);
    let mut conn = Connection::new(Arc::clone(&hub.gateway), conn_no, start);
    conn.record_sent_ticks(hub.send_log_enabled());
    let (tx, rx) = channel();
    let reader_stream = stream.try_clone()?;
    let reader_tx = tx.clone();
    let reader = std::thread::Builder::new()
        .name(format!("tws-sim-rd-{conn_no}"))
        .spawn(move || read_loop(reader_stream, &reader_tx))?;
    let dropped = Arc::new(AtomicBool::new(false));
    let mut registered = false;
    let mut write_error = None;
    let result = loop {
        conn.on_timeout(Instant::now());
        // Reachable by the control channel before the client sees its welcome, so a command
        // sent as soon as the client is ready finds it.
        if !registered && let Some(client_id) = conn.client_id() {
            let stream = match stream.try_clone() {
                Ok(s) => s,
                Err(e) => break Err(e),
            };
            hub.add(
                conn_no,
                ClientHandle {
                    client_id,
                    tx: tx.clone(),
                    stream,
                    dropped: Arc::clone(&dropped),
                },
            );
            registered = true;
        }
        if write_error.is_none()
            && let Err(e) = write_out(&mut stream, &mut conn, capture.as_mut(), hub)
        {
            // The client is gone, but what it sent before (its cancels) is still read and
            // served until the reader reports the end.
            conn.on_write_closed();
            write_error = Some(e);
        }
        if conn.end().is_some() {
            break Ok(());
        }
        let wait = conn.next_deadline().map_or(IDLE_WAIT, |at| {
            let wait = at.saturating_duration_since(Instant::now());
            // Zero: work left over from a full turn, go on at once.
            if wait.is_zero() {
                wait
            } else {
                wait.clamp(MIN_TURN, IDLE_WAIT)
            }
        });
        let mut next = match rx.recv_timeout(wait) {
            Ok(ev) => Some(ev),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break Ok(()),
        };
        while let Some(ev) = next {
            on_event(&mut conn, ev, &dropped);
            next = rx.try_recv().ok();
        }
    };
    if matches!(conn.end(), Some(End::Pacing | End::DuplicateClientId(_))) {
        // The client may still be sending (a burst past the pacing limit): closing now would
        // answer its bytes with a reset, which can discard the error before the client reads
        // it. Half-close, drain until it closes too (bounded), then close.
        let _ = stream.shutdown(Shutdown::Write);
        let until = Instant::now() + LINGER;
        while let Ok(ev) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            if matches!(ev, Event::ReaderDone(_)) {
                break;
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    if dropped.load(Ordering::Relaxed) {
        conn.drop_by_gateway();
    }
    hub.remove(conn_no);
    let client_id = conn.client_id();
    drop(conn);
    let _ = reader.join();
    if let Some(client_id) = client_id {
        info!(client_id, "client disconnected");
    }
    match write_error {
        Some(e) => Err(e),
        None => result,
    }
}

fn on_event(conn: &mut Connection, ev: Event, dropped: &AtomicBool) {
    let now = Instant::now();
    match ev {
        Event::Bytes(b) => conn.on_bytes(&b, now),
        Event::ReaderDone(why) => {
            if let Some(why) = why {
                info!(client_id = ?conn.client_id(), "reader stopped: {why}");
            }
            if dropped.load(Ordering::Relaxed) {
                conn.drop_by_gateway();
            } else {
                conn.on_eof();
            }
        }
        Event::Fault(f) => {
            info!(client_id = ?conn.client_id(), ?f, "fault");
            conn.inject(f, now);
        }
        Event::Stats(reply) => {
            if let Some(stats) = conn.stats() {
                let _ = reply.send(stats);
            }
        }
    }
}

/// Writes what the connection has to send, piece by piece; each piece is one write, recorded
/// in the capture, its ticks in the send log just before it goes.
fn write_out(
    stream: &mut TcpStream,
    conn: &mut Connection,
    mut capture: Option<&mut CaptureWriter>,
    hub: &Hub,
) -> std::io::Result<()> {
    loop {
        if hub.send_log_enabled()
            && let Some(client_id) = conn.client_id()
        {
            // Taken just before the bytes go to the kernel, so a receiver's latency measured
            // against it is never negative.
            let now = clock::unix_nanos();
            hub.log_sends(client_id, conn.drain_sent_ticks(), now);
        }
        let Some(piece) = conn.poll_output(Instant::now()) else {
            return Ok(());
        };
        if let Some(c) = capture.as_deref_mut() {
            c.record(piece);
        }
        stream.write_all(piece)?;
        let n = piece.len();
        conn.advance(n, Instant::now());
    }
}

/// The reader thread: bytes in, passed on to the connection's thread.
fn read_loop(mut stream: TcpStream, tx: &Sender<Event>) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                if tx.send(Event::Bytes(chunk[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Event::ReaderDone(Some(e.to_string())));
                return;
            }
        }
    }
    let _ = tx.send(Event::ReaderDone(None));
}
