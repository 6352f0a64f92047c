//! The TWS API protocol, sans-IO: bytes in, typed messages and records out; messages in,
//! bytes out. No sockets and no clock: the caller owns both.
//!
//! * [`version`]: server versions and negotiation.
//! * [`handshake`]: `API\0` + version range, and the server's answer.
//! * [`frame`]: length-prefixed frames, text (<= 200) or binary id + protobuf (>= 201).
//! * [`msg`]: [`ClientMsg`] and [`ServerMsg`] with encode/decode in both forms.
//! * [`tick`]: the hot path, tick frames straight into [`crate::ipc::Record`]s.
//! * [`codes`]: IB error codes and texts.

pub mod codes;
pub mod contract;
pub mod decimal;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod msg;
pub mod proto;
pub mod text;
pub mod tick;
pub mod version;

pub use contract::{ComboLeg, Contract, ContractDetails, DeltaNeutral, ExecutionFilter};
pub use error::{DecodeError, EncodeError, FieldProblem, FrameError, HandshakeError, ProtoError};
pub use frame::{Body, Frame, FrameReader, write_proto_frame, write_raw_frame, write_text_frame};
pub use handshake::{ClientHello, ServerAck};
pub use msg::{ClientMsg, ServerMsg, TbtQuote, TbtTrade, TickByTickData};
pub use tick::{DecodeStats, Decoded, Decoder, Interner};
pub use version::{MAX_SUPPORTED, MIN_SUPPORTED, negotiate};
