//! The client's errors. A [`FrameError`] is about one frame (the stream goes on); a
//! [`ConnectError`] about one connection attempt (the client retries it unless it is
//! permanent); a [`ClientError`] is what a caller of the API gets.

use crate::state::ConnState;

/// A frame the client could not use. Counted in [`crate::Metrics`] and delivered as
/// [`crate::Event::Malformed`]; the stream goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// An empty frame.
    #[error("empty frame")]
    Empty,
    /// The JSON ends early: a frame cut short.
    #[error("truncated frame ({len} bytes)")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// Not JSON.
    #[error("not JSON: {0}")]
    Json(String),
    /// JSON, but not the shape the protocol gives this message.
    #[error("malformed {what}: {why}")]
    Shape {
        /// The message kind.
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A control message `type` the protocol does not have.
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    /// A binary WebSocket frame (the protocol is JSON text).
    #[error("unexpected binary frame ({0} bytes)")]
    Binary(usize),
    /// An SSE line or event larger than the client's bound (dropped unread).
    #[error("SSE event too large ({0} bytes or more)")]
    TooLarge(usize),
    /// A message about a stream this client does not hold.
    #[error("message for unknown stream `{0}`")]
    UnknownStream(String),
}

/// Why a connection attempt or a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL cannot be used.
    #[error("bad URL `{url}`: {why}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// The server answered the upgrade with an HTTP error.
    #[error("server refused the connection: HTTP {status}: {body}")]
    Http {
        /// HTTP status.
        status: u16,
        /// The response body (the server's `{"error":...}`), cut to 512 bytes.
        body: String,
    },
    /// The attempt took longer than the connect timeout.
    #[error("connect timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The WebSocket layer failed (TCP, handshake, framing).
    #[error("websocket: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    /// TCP failed (connecting, or an SSE request's socket).
    #[error("tcp: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP layer of an SSE request failed.
    #[error("http: {0}")]
    HttpClient(#[from] hyper::Error),
}

impl ConnectError {
    /// Whether retrying cannot help: a bad URL, or an HTTP answer that will not change (401
    /// unauthorized, 404 no such endpoint, 400). 429 and 503 (server busy) are retried.
    pub fn is_permanent(&self) -> bool {
        match self {
            ConnectError::BadUrl { .. } => true,
            ConnectError::Http { status, .. } => matches!(status, 400 | 401 | 403 | 404 | 405),
            ConnectError::Timeout(_)
            | ConnectError::WebSocket(_)
            | ConnectError::Io(_)
            | ConnectError::HttpClient(_) => false,
        }
    }
}

impl ConnectError {
    /// Whether the answer to the WebSocket upgrade says there is no WebSocket at this
    /// address (404/405/426/501 for the route, or a proxy that answered without upgrading),
    /// so SSE is worth trying.
    pub fn means_no_websocket(&self) -> bool {
        match self {
            ConnectError::Http { status, .. } => {
                matches!(status, 200..=299 | 404 | 405 | 426 | 501)
            }
            _ => false,
        }
    }
}

/// An invalid state transition: the state machine refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid connection state transition {from:?} -> {to:?}")]
pub struct InvalidTransition {
    /// The state.
    pub from: ConnState,
    /// The refused target.
    pub to: ConnState,
}

/// What an API call of the client returns on failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client was closed or failed; it accepts no more requests.
    #[error("the client is {0:?}")]
    Stopped(ConnState),
    /// The configuration is not usable.
    #[error("bad configuration: {0}")]
    Config(String),
    /// A connection error that ended the client.
    #[error(transparent)]
    Connect(#[from] ConnectError),
}
