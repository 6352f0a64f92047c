//! Logging off the pinned core: the engine thread formats a line and hands it to a bounded
//! channel; a plain thread (spawned before the engine pins itself, so not on its core)
//! writes it to stderr. A full channel drops the line and counts it rather than block.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

/// Lines waiting for the log thread before new ones are dropped.
pub const LOG_QUEUE: usize = 4096;

static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Lines handed to the log thread, and lines it has written: `flush` waits for them to meet.
static QUEUED: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);
static SENDER: OnceLock<SyncSender<Vec<u8>>> = OnceLock::new();

/// Log lines dropped because the log thread fell behind.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// One line being formatted; sent to the log thread when dropped.
#[derive(Debug)]
pub struct LineWriter {
    buf: Vec<u8>,
    tx: Option<SyncSender<Vec<u8>>>,
}

impl Write for LineWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buf);
        match &self.tx {
            Some(tx) => match tx.try_send(line) {
                Ok(()) => {
                    QUEUED.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            },
            None => {
                let _ = std::io::stderr().write_all(&line);
            }
        }
    }
}

/// The `tracing` writer factory.
#[derive(Debug, Clone)]
pub struct OffCore;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for OffCore {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            buf: Vec::with_capacity(256),
            tx: SENDER.get().cloned(),
        }
    }
}

fn drain(rx: Receiver<Vec<u8>>) {
    let stderr = std::io::stderr();
    while let Ok(line) = rx.recv() {
        let mut e = stderr.lock();
        let _ = e.write_all(&line);
        WRITTEN.fetch_add(1, Ordering::Release);
    }
}

/// Waits up to `limit` for the log thread to write every line queued so far. The process
/// calls it before it exits: otherwise the last lines (the clean stop's report) can die in
/// the channel with the process.
pub fn flush(limit: std::time::Duration) {
    let target = QUEUED.load(Ordering::Relaxed);
    let until = std::time::Instant::now() + limit;
    while WRITTEN.load(Ordering::Acquire) < target && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Starts the log thread and installs the subscriber (once per process; later calls only
/// return). Call before pinning the engine thread.
pub fn init(filter: &str) {
    if SENDER.get().is_some() {
        return;
    }
    let (tx, rx) = sync_channel::<Vec<u8>>(LOG_QUEUE);
    if SENDER.set(tx).is_err() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("ib-stream-log".into())
        .spawn(move || drain(rx));
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(OffCore)
        .with_ansi(false)
        .try_init();
}
