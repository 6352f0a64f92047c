//! The connection handshake: the client's `API\0` + framed `v<min>..<max>[ options]`, and
//! the server's framed two-field answer `<version>\0<connectionTime>\0`.

use super::error::{FrameError, HandshakeError};
use super::frame::{MAX_FRAME_LEN, write_raw_frame};
use super::text::{FieldWriter, parse_i64};

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

/// Read one length-prefixed payload at the start of `buf`: `Ok(None)` until complete.
fn framed(buf: &[u8], min: u32) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(lb) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([lb[0], lb[1], lb[2], lb[3]]);
    if !(min..=MAX_FRAME_LEN).contains(&len) {
        return Err(FrameError::BadLength {
            len,
            min,
            max: MAX_FRAME_LEN,
        });
    }
    let end = 4 + len as usize;
    Ok(buf.get(4..end).map(|p| (p, end)))
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
        let Some((payload, used)) = framed(&buf[4..], 1)? else {
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
        let Some((payload, used)) = framed(buf, 2)? else {
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
