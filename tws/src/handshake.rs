//! The connection handshake: the client's `API\0` + framed `v<min>..<max>[ options]`, and
//! the server's framed two-field answer `<version>\0<connectionTime>\0`.

use super::error::{EncodeError, HandshakeError};
use super::frame::{FrameReader, split_frame, write_raw_frame};
use super::msg::ClientMsg;
use super::text::{FieldWriter, parse_i64};
use super::version::{MAX_SUPPORTED, MIN_SUPPORTED};

/// The 4 bytes every client sends first.
pub const API_PREFIX: &[u8; 4] = b"API\0";

/// What the client offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// Oldest server version the client speaks.
    pub min: u32,
    /// Newest server version the client speaks.
    pub max: u32,
    /// Connect options (e.g. `+PACEAPI`), empty if none.
    pub options: String,
}

impl ClientHello {
    /// The hello of a client speaking `min..=max` with no options.
    pub fn new(min: u32, max: u32) -> Self {
        ClientHello {
            min,
            max,
            options: String::new(),
        }
    }

    /// Append the bytes the client sends.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(API_PREFIX);
        let mut text = format!("v{}..{}", self.min, self.max);
        if !self.options.is_empty() {
            text.push(' ');
            text.push_str(&self.options);
        }
        write_raw_frame(out, text.as_bytes());
    }

    /// Parse the hello at the start of `buf`: `Ok(None)` until all of it arrived, else the
    /// hello and how many bytes it used (the frames that follow start there).
    pub fn parse(buf: &[u8]) -> Result<Option<(ClientHello, usize)>, HandshakeError> {
        let n = buf.len().min(4);
        if buf[..n] != API_PREFIX[..n] {
            return Err(HandshakeError::BadPrefix);
        }
        if buf.len() < 4 {
            return Ok(None);
        }
        let Some((payload, used)) = split_frame(&buf[4..], 1)? else {
            return Ok(None);
        };
        let bad = || HandshakeError::BadVersionRange(String::from_utf8_lossy(payload).into_owned());
        let text = std::str::from_utf8(payload).map_err(|_| bad())?;
        let (range, options) = match text.split_once(' ') {
            Some((r, o)) => (r, o),
            None => (text, ""),
        };
        let (lo, hi) = range
            .strip_prefix('v')
            .and_then(|r| r.split_once(".."))
            .ok_or_else(bad)?;
        let num = |s: &str| parse_i64(s.as_bytes()).and_then(|v| u32::try_from(v).ok());
        let (min, max) = (num(lo).ok_or_else(bad)?, num(hi).ok_or_else(bad)?);
        Ok(Some((
            ClientHello {
                min,
                max,
                options: options.to_owned(),
            },
            4 + used,
        )))
    }
}

/// The server's answer: the negotiated version and its connection time
/// (`yyyymmdd hh:mm:ss <TZ>`; use `EST` or `UTC`, rust-ibapi rejects unknown zones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAck {
    /// Negotiated server version.
    pub version: u32,
    /// Connection time text.
    pub time: String,
}

impl ServerAck {
    /// Append the framed two-field answer.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut payload = Vec::with_capacity(32);
        FieldWriter::new(&mut payload)
            .int(i64::from(self.version))
            .str(&self.time);
        write_raw_frame(out, &payload);
    }

    /// Parse the answer at the start of `buf`: `Ok(None)` until complete, else the answer
    /// and the bytes it used. The answer must have exactly two fields.
    pub fn parse(buf: &[u8]) -> Result<Option<(ServerAck, usize)>, HandshakeError> {
        let Some((payload, used)) = split_frame(buf, 2)? else {
            return Ok(None);
        };
        Ok(Some((Self::from_payload(payload)?, used)))
    }

    /// The answer from one frame's payload, e.g. the first
    /// [`FrameReader::next_payload`](super::frame::FrameReader::next_payload) of a client
    /// that reads everything through one `FrameReader`.
    pub fn from_payload(payload: &[u8]) -> Result<ServerAck, HandshakeError> {
        let body = payload.strip_suffix(b"\0").unwrap_or(payload);
        let mut it = body.split(|&b| b == 0);
        let (Some(v), Some(t), None) = (it.next(), it.next(), it.next()) else {
            return Err(HandshakeError::BadServerAck);
        };
        let version = parse_i64(v)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or(HandshakeError::BadServerAck)?;
        let time = std::str::from_utf8(t)
            .map_err(|_| HandshakeError::BadServerAck)?
            .to_owned();
        Ok(ServerAck { version, time })
    }
}

/// Smallest length of the server's answer frame (`"1\0"`-like).
pub const MIN_ACK_LEN: u32 = 2;

/// A client's start of a session, sans-IO: the hello, the server's answer, then `startApi`.
/// The caller owns the socket and reads the answer as the first payload of its frame
/// reader ([`MIN_ACK_LEN`]); the session is up at the server's `nextValidId`. The one client
/// handshake of the crate (the engine, load generators and tests use it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHandshake {
    /// What is offered.
    pub hello: ClientHello,
    /// The client id `startApi` carries.
    pub client_id: i32,
    /// The negotiated version, once the server answered.
    pub version: Option<u32>,
}

/// Why the handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientHandshakeError {
    /// The server's answer is malformed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The server chose a version outside the range offered.
    #[error("server chose version {version}, outside the offered {min}..{max}")]
    VersionOutOfRange {
        /// The server's version.
        version: u32,
        /// Oldest offered.
        min: u32,
        /// Newest offered.
        max: u32,
    },
    /// `startApi` cannot be encoded at the chosen version.
    #[error("startApi: {0}")]
    StartApi(#[from] EncodeError),
}

impl ClientHandshake {
    /// A client speaking every supported version, with `options` (e.g. `+PACEAPI`, or empty).
    pub fn new(client_id: i32, options: &str) -> Self {
        Self::offering(client_id, MIN_SUPPORTED, MAX_SUPPORTED, options)
    }

    /// A client offering `min..=max` (load generators and tests of version negotiation).
    pub fn offering(client_id: i32, min: u32, max: u32, options: &str) -> Self {
        let mut hello = ClientHello::new(min, max);
        hello.options = options.to_owned();
        ClientHandshake {
            hello,
            client_id,
            version: None,
        }
    }

    /// Appends the hello (`API\0` and the version range).
    pub fn start(&self, out: &mut Vec<u8>) {
        self.hello.encode(out);
    }

    /// The server's answer (one frame's payload): checks it, remembers the version and
    /// appends `startApi`.
    pub fn on_ack(
        &mut self,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<ServerAck, ClientHandshakeError> {
        let ack = ServerAck::from_payload(payload)?;
        let (min, max) = (self.hello.min, self.hello.max);
        if !(min..=max).contains(&ack.version) {
            return Err(ClientHandshakeError::VersionOutOfRange {
                version: ack.version,
                min,
                max,
            });
        }
        ClientMsg::StartApi {
            client_id: self.client_id,
            optional_capabilities: String::new(),
        }
        .encode(ack.version, out)?;
        self.version = Some(ack.version);
        Ok(ack)
    }

    /// The server's answer as the first frame of `reader` (which holds everything read so
    /// far): `Ok(None)` until it is whole, then [`Self::on_ack`]. The frames after it stay
    /// in `reader`.
    pub fn poll_ack(
        &mut self,
        reader: &mut FrameReader,
        out: &mut Vec<u8>,
    ) -> Result<Option<ServerAck>, ClientHandshakeError> {
        match reader.next_payload_min(MIN_ACK_LEN) {
            Ok(None) => Ok(None),
            Ok(Some(payload)) => self.on_ack(payload, out).map(Some),
            Err(e) => Err(HandshakeError::from(e).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_bytes_match_the_real_clients() {
        let mut out = Vec::new();
        ClientHello::new(100, 226).encode(&mut out);
        assert_eq!(out, b"API\0\0\0\0\x09v100..226");
        let mut out = Vec::new();
        ClientHello {
            min: 100,
            max: 226,
            options: "+PACEAPI".into(),
        }
        .encode(&mut out);
        assert_eq!(out, b"API\0\0\0\0\x12v100..226 +PACEAPI");
        // Rust ibapi 5.5.0, observed.
        let wire = [
            0x41, 0x50, 0x49, 0x00, 0, 0, 0, 9, 0x76, 0x32, 0x31, 0x33, 0x2e, 0x2e, 0x32, 0x32,
            0x36,
        ];
        let (h, used) = ClientHello::parse(&wire).unwrap().unwrap();
        assert_eq!(
            (h.min, h.max, h.options.as_str(), used),
            (213, 226, "", wire.len())
        );
        let (h, _) = ClientHello::parse(b"API\0\0\0\0\x12v100..226 +PACEAPI")
            .unwrap()
            .unwrap();
        assert_eq!(h.options, "+PACEAPI");
    }

    #[test]
    fn hello_waits_for_all_bytes_and_rejects_garbage() {
        let wire = b"API\0\0\0\0\x09v157..178";
        for n in 0..wire.len() {
            assert_eq!(ClientHello::parse(&wire[..n]), Ok(None), "{n}");
        }
        assert_eq!(
            ClientHello::parse(b"GET / HTTP/1.1"),
            Err(HandshakeError::BadPrefix)
        );
        assert_eq!(ClientHello::parse(b"AP!"), Err(HandshakeError::BadPrefix));
        assert!(matches!(
            ClientHello::parse(b"API\0\0\0\0\x03abc"),
            Err(HandshakeError::BadVersionRange(_))
        ));
        assert!(matches!(
            ClientHello::parse(b"API\0\x7f\0\0\0"),
            Err(HandshakeError::Frame(_))
        ));
    }

    #[test]
    fn the_client_handshake_offers_checks_and_starts_the_api() {
        let mut hs = ClientHandshake::new(7, "+PACEAPI");
        let mut out = Vec::new();
        hs.start(&mut out);
        let (hello, used) = ClientHello::parse(&out).unwrap().unwrap();
        assert_eq!((hello.options.as_str(), used), ("+PACEAPI", out.len()));
        let mut ack = Vec::new();
        ServerAck {
            version: MAX_SUPPORTED,
            time: "20260101 10:00:00 UTC".into(),
        }
        .encode(&mut ack);
        let mut out = Vec::new();
        let (payload, _) = split_frame(&ack, MIN_ACK_LEN).unwrap().unwrap();
        assert_eq!(hs.on_ack(payload, &mut out).unwrap().version, MAX_SUPPORTED);
        assert_eq!(hs.version, Some(MAX_SUPPORTED));
        let mut r = crate::tws::FrameReader::new();
        r.feed(&out);
        let f = r.next_frame(MAX_SUPPORTED).unwrap().unwrap();
        assert_eq!(
            ClientMsg::decode(&f, MAX_SUPPORTED).unwrap(),
            ClientMsg::StartApi {
                client_id: 7,
                optional_capabilities: String::new()
            }
        );
        // A version we did not offer ends the handshake.
        let mut old = Vec::new();
        FieldWriter::new(&mut old)
            .int(i64::from(MIN_SUPPORTED - 1))
            .str("t");
        let mut hs = ClientHandshake::new(7, "");
        assert!(matches!(
            hs.on_ack(&old, &mut Vec::new()),
            Err(ClientHandshakeError::VersionOutOfRange { .. })
        ));
    }

    #[test]
    fn poll_ack_waits_for_the_whole_answer_and_leaves_what_follows() {
        let mut wire = Vec::new();
        ServerAck {
            version: 176,
            time: "20260101 10:00:00 UTC".into(),
        }
        .encode(&mut wire);
        let ack_len = wire.len();
        write_raw_frame(&mut wire, b"15\x001\x00DU1\x00");
        let mut hs = ClientHandshake::offering(3, 100, 176, "");
        let mut r = FrameReader::new();
        let mut out = Vec::new();
        for b in &wire[..ack_len - 1] {
            r.feed(&[*b]);
            assert_eq!(hs.poll_ack(&mut r, &mut out), Ok(None));
        }
        assert!(out.is_empty());
        r.feed(&wire[ack_len - 1..]);
        let ack = hs.poll_ack(&mut r, &mut out).unwrap().unwrap();
        assert_eq!((ack.version, hs.version), (176, Some(176)));
        assert_eq!(r.next_frame(176).unwrap().unwrap().msg_id, 15);
        let mut r = FrameReader::new();
        r.feed(&out);
        let f = r.next_frame(176).unwrap().unwrap();
        assert!(matches!(
            ClientMsg::decode(&f, 176).unwrap(),
            ClientMsg::StartApi { client_id: 3, .. }
        ));
        // A length the protocol does not allow ends the handshake.
        let mut r = FrameReader::new();
        r.feed(&[0x7f, 0, 0, 0]);
        assert!(matches!(
            ClientHandshake::new(1, "").poll_ack(&mut r, &mut Vec::new()),
            Err(ClientHandshakeError::Handshake(HandshakeError::Frame(_)))
        ));
    }

    #[test]
    fn ack_bytes_match_the_observed_capture() {
        let ack = ServerAck {
            version: 222,
            time: "20260101 09:30:00 EST".into(),
        };
        let mut out = Vec::new();
        ack.encode(&mut out);
        let mut want = vec![0, 0, 0, 0x1a];
        want.extend_from_slice(b"222\x0020260101 09:30:00 EST\x00");
        assert_eq!(out, want);
        assert_eq!(ServerAck::parse(&out), Ok(Some((ack, out.len()))));
        assert_eq!(ServerAck::parse(&out[..10]), Ok(None));
        // Through a FrameReader, as a client reading one socket does.
        let mut r = crate::tws::FrameReader::new();
        r.feed(&out);
        let p = r.next_payload(0).unwrap().unwrap();
        assert_eq!(ServerAck::from_payload(p).unwrap().version, 222);
        let mut three = Vec::new();
        write_raw_frame(&mut three, b"1\x002\x003\x00");
        assert_eq!(ServerAck::parse(&three), Err(HandshakeError::BadServerAck));
    }
}
