//! Typed errors of the codec. Every malformed input ends here, never in a panic.

use thiserror::Error;

/// Why a single field of a text message or a protobuf value could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldProblem {
    /// The message ended before this field.
    Missing,
    /// Not a valid integer (or out of the integer's range).
    BadInt,
    /// Not a valid decimal for the fixed-point scale (or out of range).
    BadDecimal,
    /// Not a valid floating-point number.
    BadFloat,
    /// Not a valid boolean (`0`/`1`/`true`/`false`).
    BadBool,
    /// Not valid UTF-8.
    BadUtf8,
    /// A value outside what the field allows (e.g. an unknown tick-by-tick type).
    OutOfRange,
}

/// A malformed protobuf payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ProtoError {
    /// The payload ended inside a tag, varint or length-delimited value.
    #[error("protobuf payload truncated at byte {0}")]
    Truncated(usize),
    /// A varint longer than 10 bytes.
    #[error("protobuf varint too long at byte {0}")]
    VarintTooLong(usize),
    /// A wire type this codec does not accept (groups, or 6/7).
    #[error("protobuf wire type {wire_type} not supported (field {field})")]
    BadWireType {
        /// Field number.
        field: u32,
        /// Wire type found.
        wire_type: u8,
    },
    /// Field number 0 is reserved.
    #[error("protobuf field number 0")]
    ZeroField,
    /// A field number above protobuf's maximum (2^29 - 1).
    #[error("protobuf field number {0} too large")]
    FieldTooLarge(u64),
}

/// Errors while cutting the byte stream into frames. A bad length means the stream is
/// out of sync: the connection must be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// A length prefix outside the accepted range.
    #[error("frame length {len} out of range {min}..={max}")]
    BadLength {
        /// The length read.
        len: u32,
        /// Smallest accepted.
        min: u32,
        /// Largest accepted.
        max: u32,
    },
    /// The message id could not be read (text id not a number, or a negative binary id).
    /// The frame was consumed, so the stream stays in sync.
    #[error("bad message id in frame")]
    BadMsgId,
}

impl FrameError {
    /// True when the stream cannot continue after this error (framing lost).
    pub fn is_fatal(&self) -> bool {
        matches!(self, FrameError::BadLength { .. })
    }
}

/// Errors while decoding one message from a frame. The frame has been consumed; the
/// connection may continue with the next frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// A text field was missing or malformed.
    #[error("message {msg_id}: field {index}: {problem:?}")]
    Field {
        /// Message id.
        msg_id: u32,
        /// 0-based index of the field after the message id.
        index: u16,
        /// What was wrong.
        problem: FieldProblem,
    },
    /// A protobuf payload was malformed.
    #[error("message {msg_id}: {source}")]
    Proto {
        /// Message id.
        msg_id: u32,
        /// The protobuf problem.
        source: ProtoError,
    },
    /// A protobuf field had a value the message does not allow.
    #[error("message {msg_id}: protobuf field {field}: {problem:?}")]
    ProtoField {
        /// Message id.
        msg_id: u32,
        /// Protobuf field number.
        field: u32,
        /// What was wrong.
        problem: FieldProblem,
    },
    /// A message id this codec does not know (a counted skip for callers).
    #[error("unknown message id {msg_id} ({form})")]
    UnknownMsgId {
        /// Message id (protobuf ids without the +200).
        msg_id: u32,
        /// "text" or "protobuf".
        form: &'static str,
    },
    /// The message exists but not in the form it arrived in (e.g. a text frame for a
    /// message that only exists as protobuf).
    #[error("message {msg_id} not expected in {form} form")]
    WrongForm {
        /// Message id.
        msg_id: u32,
        /// "text" or "protobuf".
        form: &'static str,
    },
}

impl DecodeError {
    /// True for an unknown message id (to be counted and skipped).
    pub fn is_unknown(&self) -> bool {
        matches!(self, DecodeError::UnknownMsgId { .. })
    }
}

/// Errors of the connection handshake.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// The client did not start with `API\0`.
    #[error("handshake does not start with API\\0")]
    BadPrefix,
    /// The length prefix is out of range.
    #[error("handshake frame: {0}")]
    Frame(#[from] FrameError),
    /// The version range text is not `v<min>..<max>[ options]`.
    #[error("bad version range {0:?}")]
    BadVersionRange(String),
    /// The server answer is not `<version>\0<time>\0`.
    #[error("bad server handshake answer")]
    BadServerAck,
}

/// A message that cannot be encoded at the negotiated version.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The message does not exist at this server version.
    #[error("{msg} needs server version >= {min}, negotiated {version}")]
    NotSupported {
        /// Message name.
        msg: &'static str,
        /// Smallest version that has it.
        min: u32,
        /// Negotiated version.
        version: u32,
    },
}
