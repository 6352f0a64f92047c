//! The serve side of the engine's control socket (`engine::control`): one line of JSON per
//! request, replies matched by `id`.
//!
//! One connection, opened on first use and reopened after any failure; requests are sent
//! one at a time (they are rare: stream setup, lookups), each bounded by a timeout. Lines
//! the engine pushes unasked are skipped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;

/// Longest reply line accepted (a contract-details answer can be long).
pub const MAX_REPLY_LINE: usize = 4 << 20;

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket is missing or refuses connections: the engine is not running.
    #[error("engine control socket {path} unavailable: {source}")]
    Unavailable {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        source: std::io::Error,
    },
    /// No reply in time.
    #[error("the engine did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection broke.
    #[error("control connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// A reply that is not the protocol.
    #[error("bad reply from the engine: {0}")]
    BadReply(String),
    /// The engine refused the request.
    #[error("engine refused: {code}: {message}")]
    Refused {
        /// The engine's error code.
        code: String,
        /// Its message.
        message: String,
        /// IB's error code, when IB caused the refusal.
        ib_code: Option<i64>,
    },
}

struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// A client of the engine's control socket.
#[derive(Debug)]
pub struct ControlClient {
    path: PathBuf,
    timeout: Duration,
    conn: Mutex<Option<Conn>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conn")
    }
}

impl ControlClient {
    /// A client of the socket at `path`; each request waits at most `timeout`.
    pub fn new(path: PathBuf, timeout: Duration) -> ControlClient {
        ControlClient {
            path,
            timeout,
            conn: Mutex::new(None),
            next_id: AtomicU64::new(1),
        }
    }

    /// The socket path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Sends `{"id":..,"op":op, fields...}` and returns the reply object of an `ok` answer.
    pub async fn request(&self, op: &str, fields: Value) -> Result<Value, ControlError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut req = json!({"id": id, "op": op});
        if let (Value::Object(m), Value::Object(extra)) = (&mut req, fields) {
            m.extend(extra);
        }
        let mut line =
            serde_json::to_vec(&req).map_err(|e| ControlError::BadReply(e.to_string()))?;
        line.push(b'\n');
        let mut guard = self.conn.lock().await;
        let result = tokio::time::timeout(self.timeout, async {
            if guard.is_none() {
                let stream = UnixStream::connect(&self.path).await.map_err(|source| {
                    ControlError::Unavailable {
                        path: self.path.clone(),
                        source,
                    }
                })?;
                let (r, w) = stream.into_split();
                *guard = Some(Conn {
                    reader: BufReader::new(r),
                    writer: w,
                });
            }
            let conn = guard
                .as_mut()
                .ok_or_else(|| ControlError::BadReply("no connection".into()))?;
            conn.writer.write_all(&line).await?;
            loop {
                let reply = read_line(&mut conn.reader).await?;
                if reply.get("id").and_then(Value::as_u64) == Some(id) {
                    return Ok(reply);
                }
                // A pushed event or a reply to an abandoned request: not ours.
            }
        })
        .await;
        let reply = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                *guard = None;
                return Err(e);
            }
            Err(_) => {
                // The reply may still come later: a fresh connection keeps ids unambiguous.
                *guard = None;
                return Err(ControlError::Timeout(self.timeout));
            }
        };
        drop(guard);
        if reply.get("ok").and_then(Value::as_bool) == Some(true) {
            return Ok(reply);
        }
        let err = reply.get("error").cloned().unwrap_or(Value::Null);
        Err(ControlError::Refused {
            code: err
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned(),
            message: err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            ib_code: err.get("ib_code").and_then(Value::as_i64),
        })
    }

    /// `subscribe` for `client` (the serve process's identity).
    pub async fn subscribe(
        &self,
        client: &str,
        con_id: u32,
        kind: &str,
    ) -> Result<Value, ControlError> {
        self.request(
            "subscribe",
            json!({"client": client, "con_id": con_id, "kind": kind}),
        )
        .await
    }

    /// `unsubscribe` for `client`.
    pub async fn unsubscribe(
        &self,
        client: &str,
        con_id: u32,
        kind: &str,
    ) -> Result<Value, ControlError> {
        self.request(
            "unsubscribe",
            json!({"client": client, "con_id": con_id, "kind": kind}),
        )
        .await
    }
}

async fn read_line(reader: &mut BufReader<OwnedReadHalf>) -> Result<Value, ControlError> {
    let mut buf = Vec::new();
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Err(ControlError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the engine closed the control connection",
            )));
        }
        if let Some(nl) = chunk.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&chunk[..nl]);
            reader.consume(nl + 1);
            break;
        }
        let n = chunk.len();
        buf.extend_from_slice(chunk);
        reader.consume(n);
        if buf.len() > MAX_REPLY_LINE {
            return Err(ControlError::BadReply(format!(
                "reply line longer than {MAX_REPLY_LINE} bytes"
            )));
        }
    }
    serde_json::from_slice(&buf).map_err(|e| ControlError::BadReply(e.to_string()))
}
