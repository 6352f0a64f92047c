//! Capture of the bytes sent to a connection, and their replay.
//!
//! A capture file is a sequence of records `(u64 ns since the connection was accepted,
//! u32 length, bytes)`, little endian, one per socket write, so a replay can keep the
//! original pacing or ignore it.

use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// Why a capture could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("capture file: {0}")]
    Io(#[from] std::io::Error),
    #[error("capture file is cut off inside record {0}")]
    Truncated(usize),
}

/// Appends what a connection sends.
#[derive(Debug)]
pub struct CaptureWriter {
    out: BufWriter<File>,
    start: Instant,
    failed: bool,
}

impl CaptureWriter {
    pub fn create(path: &Path, start: Instant) -> std::io::Result<Self> {
        Ok(Self {
            out: BufWriter::with_capacity(1 << 20, File::create(path)?),
            start,
            failed: false,
        })
    }

    /// Records one write. A failing disk stops the capture (logged once), never the connection.
    pub fn record(&mut self, bytes: &[u8]) {
        if self.failed || bytes.is_empty() {
            return;
        }
        let ns = self.start.elapsed().as_nanos() as u64;
        let result = self
            .out
            .write_all(&ns.to_le_bytes())
            .and_then(|()| self.out.write_all(&(bytes.len() as u32).to_le_bytes()))
            .and_then(|()| self.out.write_all(bytes))
            .and_then(|()| self.out.flush());
        if let Err(e) = result {
            warn!("capture stopped: {e}");
            self.failed = true;
        }
    }
}

/// One recorded write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRecord {
    pub at: Duration,
    pub bytes: Vec<u8>,
}

/// Reads a whole capture file.
pub fn read_capture(path: &Path) -> Result<Vec<CaptureRecord>, CaptureError> {
    let mut r = BufReader::new(File::open(path)?);
    let mut records = Vec::new();
    loop {
        let mut head = [0u8; 12];
        match r.read_exact(&mut head[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(records),
            Err(e) => return Err(e.into()),
        }
        let n = records.len();
        let cut = |e: std::io::Error| {
            if e.kind() == ErrorKind::UnexpectedEof {
                CaptureError::Truncated(n)
            } else {
                e.into()
            }
        };
        r.read_exact(&mut head[1..]).map_err(cut)?;
        let ns = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(head[8..].try_into().unwrap_or_default()) as usize;
        let mut bytes = vec![0u8; len];
        r.read_exact(&mut bytes).map_err(cut)?;
        records.push(CaptureRecord {
            at: Duration::from_nanos(ns),
            bytes,
        });
    }
}

/// Serves the capture to each client that connects, one at a time: waits for the client's
/// handshake bytes, then sends the records (at their recorded offsets unless `asap`), then
/// keeps the socket open until the client closes it.
pub fn replay(listener: TcpListener, records: &[CaptureRecord], asap: bool) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = listener.accept()?;
        info!(%peer, "replaying {} writes", records.len());
        if let Err(e) = replay_one(stream, records, asap) {
            info!(%peer, "replay ended: {e}");
        }
    }
}

fn replay_one(mut stream: TcpStream, records: &[CaptureRecord], asap: bool) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    // The recorded stream starts with the handshake answer: wait for the client's hello first.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    while crate::wire::parse_hello(&buf)?.is_none() {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    // Whatever the client sends from now on is read and dropped so it never blocks.
    let mut drain = stream.try_clone()?;
    drain.set_read_timeout(None)?;
    let drainer =
        std::thread::spawn(move || while matches!(drain.read(&mut chunk), Ok(n) if n > 0) {});
    let start = Instant::now();
    for rec in records {
        if !asap {
            std::thread::sleep((start + rec.at).saturating_duration_since(Instant::now()));
        }
        stream.write_all(&rec.bytes)?;
    }
    let _ = drainer.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_truncation_is_reported() {
        let dir = std::env::temp_dir().join(format!("tws-sim-capture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.bin");
        let mut w = CaptureWriter::create(&path, Instant::now()).unwrap();
        w.record(b"hello");
        w.record(b"");
        w.record(b"world!");
        drop(w);
        let recs = read_capture(&path).unwrap();
        assert_eq!(
            recs.iter().map(|r| r.bytes.as_slice()).collect::<Vec<_>>(),
            [b"hello".as_slice(), b"world!"]
        );
        assert!(recs[0].at <= recs[1].at);
        let all = std::fs::read(&path).unwrap();
        std::fs::write(&path, &all[..all.len() - 2]).unwrap();
        assert!(matches!(
            read_capture(&path),
            Err(CaptureError::Truncated(1))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
