//! The TWS API protocol, sans-IO: bytes in, typed messages and records out; messages in,
//! bytes out. No sockets and no clock: the caller owns both.
//!
//! * [`version`]: server versions and negotiation.
//! * [`handshake`]: `API\0` + version range, and the server's answer.
//! * [`frame`]: length-prefixed frames, text (<= 200) or binary id + protobuf (>= 201).
//! * [`msg`]: [`ClientMsg`] and [`ServerMsg`] with encode/decode in both forms.
//! * [`tick`]: the hot path, tick frames straight into [`ipc::Record`]s.
//! * [`codes`]: IB error codes and texts.
//!
//! A client's side of a connection, with the socket replaced by two buffers:
//!
//! ```
//! use ib_stream_ipc::Record;
//! use ib_stream_tws::{
//!     ClientHello, ClientMsg, Decoded, Decoder, FrameReader, ServerAck, ServerMsg, VecInterner,
//! };
//!
//! // Client: offer 100..=226.
//! let mut to_server = Vec::new();
//! ClientHello::new(100, 226).encode(&mut to_server);
//!
//! // Server: parse the hello, answer the negotiated version, stream a tick.
//! let (hello, used) = ClientHello::parse(&to_server).unwrap().unwrap();
//! assert_eq!(used, to_server.len());
//! let version = ib_stream_tws::negotiate(hello.min, hello.max, 226).unwrap();
//! let mut to_client = Vec::new();
//! ServerAck { version, time: "20260101 09:30:00 EST".into() }.encode(&mut to_client);
//! ServerMsg::TickSize { req_id: 7, tick_type: 8, size: 300 * 100_000_000 }.encode(version, &mut to_client);
//!
//! // Client: read the answer, then start the API and decode frames into records.
//! let (ack, used) = ServerAck::parse(&to_client).unwrap().unwrap();
//! let mut start = Vec::new();
//! ClientMsg::StartApi { client_id: 1, optional_capabilities: String::new() }
//!     .encode(ack.version, &mut start)
//!     .unwrap();
//! let mut reader = FrameReader::new();
//! reader.feed(&to_client[used..]);
//! let (mut decoder, mut strings, mut rec) = (Decoder::new(ack.version), VecInterner::default(), Record::ZERO);
//! while let Some(frame) = reader.next_frame(ack.version).unwrap() {
//!     match decoder.decode(&frame, &mut strings, &mut rec).unwrap() {
//!         Decoded::Tick { req_id } => assert_eq!((req_id, rec.body[0]), (7, 300 * 100_000_000)),
//!         other => panic!("{other:?}"),
//!     }
//! }
//! ```

// The codec's modules name each other `crate::tws::...` and the ring `crate::ipc::...`, as they
// did inside the main crate (which re-exports this crate as `ib_stream::tws`).
use crate as tws;
pub use ib_stream_ipc as ipc;

pub mod civil;
pub mod codes;
pub mod contract;
pub mod decimal;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod history;
pub mod msg;
pub mod proto;
pub mod text;
pub mod tick;
pub mod version;

pub use contract::{ComboLeg, Contract, ContractDetails, DeltaNeutral, ExecutionFilter};
pub use error::{DecodeError, EncodeError, FieldProblem, FrameError, HandshakeError, ProtoError};
pub use frame::{
    Body, Frame, FrameReader, write_frame, write_proto_frame, write_raw_frame, write_text_frame,
};
pub use handshake::{ClientHandshake, ClientHandshakeError, ClientHello, ServerAck};
pub use msg::{
    ClientMsg, HeadTimestampRequest, HistMid, HistReply, HistRequest, HistTicks,
    HistoricalTicksRequest, ServerMsg, TbtQuote, TbtTrade, TickByTickData, Timed,
};
pub use tick::{
    DecodeStats, Decoded, Decoder, ErrorRef, Interner, VecInterner, decode_error, decode_tick,
};
pub use version::{MAX_SUPPORTED, MIN_SUPPORTED, negotiate};
