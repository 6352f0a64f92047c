//! Cutting the byte stream into frames, and writing frames.
//!
//! Every message after the handshake is `u32 BE length` + payload. Below version 201 the
//! payload is text fields, the first being the message id. From 201 the payload starts
//! with a 4-byte big-endian message id; ids above 200 carry a protobuf message for id
//! `wire - 200`, the others text fields.

use super::error::FrameError;
use super::proto;
use super::text::{FieldWriter, Fields, parse_i64};
use super::version::{PROTOBUF_MSG_ID, binary_msg_id};

/// Largest payload accepted (IB's `MAX_MSG_LEN`, rust-ibapi's `MAX_FRAME_LENGTH`).
pub const MAX_FRAME_LEN: u32 = 0x00FF_FFFF;
/// Smallest payload accepted with binary message ids (the id alone is 4 bytes).
pub const MIN_FRAME_LEN: u32 = 4;
/// Smallest payload accepted in the text framing (`"9\0"`-like; the shortest real
/// message, completedOrdersEnd `"102\0"`, is 4).
pub const MIN_TEXT_FRAME_LEN: u32 = 2;

/// What a frame carries after its message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    /// NUL-terminated text fields (after the id field or the binary id).
    Text(&'a [u8]),
    /// A protobuf message.
    Proto(&'a [u8]),
}

/// One message frame, borrowed from the reader's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The message id (for protobuf frames without the +200: tickPrice is 1 either way).
    pub msg_id: u32,
    /// The payload after the id.
    pub body: Body<'a>,
}

impl<'a> Frame<'a> {
    /// Split one frame payload (without its length prefix) at `version`.
    pub fn parse(payload: &'a [u8], version: u32) -> Result<Frame<'a>, FrameError> {
        if binary_msg_id(version) {
            let id = payload.get(..4).ok_or(FrameError::BadMsgId)?;
            let id = i32::from_be_bytes([id[0], id[1], id[2], id[3]]);
            let id = u32::try_from(id).map_err(|_| FrameError::BadMsgId)?;
            let rest = &payload[4..];
            Ok(if id > PROTOBUF_MSG_ID {
                Frame {
                    msg_id: id - PROTOBUF_MSG_ID,
                    body: Body::Proto(rest),
                }
            } else {
                Frame {
                    msg_id: id,
                    body: Body::Text(rest),
                }
            })
        } else {
            let end = payload
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(payload.len());
            let id = parse_i64(&payload[..end])
                .and_then(|v| u32::try_from(v).ok())
                .ok_or(FrameError::BadMsgId)?;
            // Without a NUL the id is the whole payload: the body is empty (still inside it).
            let rest = if end < payload.len() {
                &payload[end + 1..]
            } else {
                &payload[end..]
            };
            Ok(Frame {
                msg_id: id,
                body: Body::Text(rest),
            })
        }
    }

    /// True for a protobuf payload.
    pub fn is_proto(&self) -> bool {
        matches!(self.body, Body::Proto(_))
    }

    /// The text fields (empty for a protobuf frame).
    pub fn fields(&self) -> Fields<'a> {
        match self.body {
            Body::Text(b) => Fields::new(self.msg_id, b),
            Body::Proto(_) => Fields::new(self.msg_id, &[]),
        }
    }

    /// The protobuf payload, if this is a protobuf frame.
    pub fn proto(&self) -> Option<&'a [u8]> {
        match self.body {
            Body::Proto(b) => Some(b),
            Body::Text(_) => None,
        }
    }
}

/// Buffers bytes read from a socket and yields whole frames. A partial frame stays
/// buffered until the rest arrives. The caller owns the socket: it either copies bytes in
/// with [`FrameReader::feed`] or reads straight into [`FrameReader::spare`] and then
/// calls [`FrameReader::commit`].
#[derive(Debug, Default)]
pub struct FrameReader {
    /// `buf[start..end]` is unread data; `buf[end..]` is spare space for [`Self::spare`].
    buf: Vec<u8>,
    start: usize,
    end: usize,
    frames: u64,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::with_capacity(64 * 1024)
    }

    /// An empty reader with `cap` bytes reserved.
    pub fn with_capacity(cap: usize) -> Self {
        FrameReader {
            buf: Vec::with_capacity(cap),
            start: 0,
            end: 0,
            frames: 0,
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Append bytes read from the connection.
    pub fn feed(&mut self, data: &[u8]) {
        self.compact();
        self.buf.truncate(self.end);
        self.buf.extend_from_slice(data);
        self.end = self.buf.len();
    }

    /// At least `min` writable bytes at the end of the buffer, to read a socket into;
    /// follow with [`FrameReader::commit`] of the count actually read.
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        self.compact();
        if self.buf.len() < self.end + min {
            self.buf.resize(self.end + min, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Keep `n` of the bytes last handed out by [`FrameReader::spare`].
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Frames returned so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The next whole payload (without its length prefix), or `None` until more bytes arrive.
    /// `min` is the smallest length accepted. The per-tick path: the same rule as
    /// [`frame_end`], written out as before issue 12 because the version through `frame_end`
    /// made the decode bench 20 % slower in time with the same instructions (docs/BENCHMARKS.md,
    /// "Session split (issue 12): old vs new in the same run").
    pub fn next_payload_min(&mut self, min: u32) -> Result<Option<&[u8]>, FrameError> {
        let avail = &self.buf[self.start..self.end];
        let Some(lb) = avail.get(..4) else {
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
        if avail.len() < end {
            return Ok(None);
        }
        let s = self.start + 4;
        self.start += end;
        self.frames += 1;
        Ok(Some(&self.buf[s..s + len as usize]))
    }

    /// The next whole payload at `version` (length bounds of that version's framing).
    pub fn next_payload(&mut self, version: u32) -> Result<Option<&[u8]>, FrameError> {
        let min = if binary_msg_id(version) {
            MIN_FRAME_LEN
        } else {
            MIN_TEXT_FRAME_LEN
        };
        self.next_payload_min(min)
    }

    /// The next whole frame at `version`, or `None` until more bytes arrive. A bad length
    /// is fatal for the connection ([`FrameError::is_fatal`]); a bad message id consumes
    /// the frame and the stream continues.
    pub fn next_frame(&mut self, version: u32) -> Result<Option<Frame<'_>>, FrameError> {
        match self.next_payload(version)? {
            Some(p) => Frame::parse(p, version).map(Some),
            None => Ok(None),
        }
    }
}

/// The one length-prefix parser: how many bytes the frame at the start of `buf` takes with
/// its 4-byte prefix, `Ok(None)` until all of it arrived. A length outside `min..=`
/// [`MAX_FRAME_LEN`] is an error (fatal for the connection). On the per-tick path.
#[inline(always)]
pub fn frame_end(buf: &[u8], min: u32) -> Result<Option<usize>, FrameError> {
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
    Ok(if buf.len() < end { None } else { Some(end) })
}

/// The payload of the frame at the start of `buf` and the bytes the frame takes
/// ([`frame_end`]).
#[inline]
pub fn split_frame(buf: &[u8], min: u32) -> Result<Option<(&[u8], usize)>, FrameError> {
    Ok(frame_end(buf, min)?.map(|end| (&buf[4..end], end)))
}

/// Start a frame: reserve the length prefix; returns where the payload starts.
#[inline]
pub fn begin_frame(out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.len()
}

/// Finish a frame started at `start` by writing its length prefix.
#[inline]
pub fn end_frame(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u32;
    out[start - 4..start].copy_from_slice(&len.to_be_bytes());
}

/// Write one whole frame with the raw `payload` (handshake messages).
pub fn write_raw_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let s = begin_frame(out);
    out.extend_from_slice(payload);
    end_frame(out, s);
}

/// Write one text message frame at `version`: the id (as a text field below 201, as a
/// 4-byte binary int from 201) followed by the fields `f` writes.
#[inline]
pub fn write_text_frame(
    out: &mut Vec<u8>,
    version: u32,
    msg_id: u32,
    f: impl FnOnce(&mut FieldWriter<'_>),
) {
    let s = begin_frame(out);
    if binary_msg_id(version) {
        out.extend_from_slice(&msg_id.to_be_bytes());
        f(&mut FieldWriter::new(out));
    } else {
        let mut w = FieldWriter::new(out);
        w.int(i64::from(msg_id));
        f(&mut w);
    }
    end_frame(out, s);
}

/// Write one protobuf message frame (binary id `msg_id + 200`, versions >= 201 only).
#[inline]
pub fn write_proto_frame(out: &mut Vec<u8>, msg_id: u32, f: impl FnOnce(&mut proto::Writer<'_>)) {
    let s = begin_frame(out);
    out.extend_from_slice(&(msg_id + PROTOBUF_MSG_ID).to_be_bytes());
    f(&mut proto::Writer::new(out));
    end_frame(out, s);
}

/// Write `frame` back out as one whole frame at `version` (proxies, fault injection, tests).
/// A protobuf frame always gets a binary id: it exists only from version 201.
pub fn write_frame(out: &mut Vec<u8>, version: u32, frame: &Frame<'_>) {
    match frame.body {
        Body::Text(b) => write_text_frame(out, version, frame.msg_id, |w| {
            w.raw(b);
        }),
        Body::Proto(b) => write_proto_frame(out, frame.msg_id, |w| {
            w.raw(b);
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_frames_survive_across_reads() {
        let mut wire = Vec::new();
        write_text_frame(&mut wire, 176, 9, |w| {
            w.int(1).int(117);
        });
        write_text_frame(&mut wire, 176, 15, |w| {
            w.int(1).str("DU1234567");
        });
        let first_end = 4 + 8 - 1; // "9\01\0117\0" is 8 bytes
        let mut r = FrameReader::new();
        for (i, b) in wire.iter().enumerate() {
            r.feed(&[*b]);
            let got = r.next_frame(176).unwrap().map(|f| f.msg_id);
            match i {
                _ if i == first_end => assert_eq!(got, Some(9)),
                _ if i == wire.len() - 1 => assert_eq!(got, Some(15)),
                _ => assert_eq!(got, None, "byte {i}"),
            }
        }
        assert_eq!(r.buffered(), 0);
        assert_eq!(r.frames(), 2);
    }

    #[test]
    fn lengths_are_validated() {
        let mut r = FrameReader::new();
        r.feed(&[0, 0, 0, 0]);
        assert_eq!(
            r.next_frame(176),
            Err(FrameError::BadLength {
                len: 0,
                min: 2,
                max: MAX_FRAME_LEN
            })
        );
        let mut r = FrameReader::new();
        r.feed(&[0, 0, 0, 3, 0, 0, 0]);
        assert!(matches!(r.next_frame(201), Err(e) if e.is_fatal()));
        let mut r = FrameReader::new();
        r.feed(&[1, 0, 0, 0]);
        assert!(matches!(
            r.next_frame(226),
            Err(FrameError::BadLength {
                len: 0x0100_0000,
                ..
            })
        ));
    }

    #[test]
    fn bad_ids_consume_the_frame() {
        let mut r = FrameReader::new();
        r.feed(b"\0\0\0\x02x\0\0\0\0\x0249\0");
        assert_eq!(r.next_frame(150), Err(FrameError::BadMsgId));
        assert_eq!(r.next_frame(150).unwrap().map(|f| f.msg_id), Some(49));
        let mut r = FrameReader::new();
        r.feed(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.next_frame(201), Err(FrameError::BadMsgId));
    }

    #[test]
    fn binary_ids_split_text_and_protobuf() {
        let mut out = Vec::new();
        write_text_frame(&mut out, 226, 4, |w| {
            w.int(-1);
        });
        write_proto_frame(&mut out, 9, |w| {
            w.i32(1, 117);
        });
        assert_eq!(
            out,
            [
                0, 0, 0, 7, 0, 0, 0, 4, b'-', b'1', 0, 0, 0, 0, 6, 0, 0, 0, 209, 8, 117
            ]
        );
        let mut r = FrameReader::new();
        r.feed(&out);
        let f = r.next_frame(226).unwrap().unwrap();
        assert_eq!((f.msg_id, f.is_proto()), (4, false));
        assert_eq!(f.fields().next(), Some(&b"-1"[..]));
        let f = r.next_frame(226).unwrap().unwrap();
        assert_eq!((f.msg_id, f.proto()), (9, Some(&[8u8, 117][..])));
    }

    #[test]
    fn frames_write_back_unchanged() {
        let mut wire = Vec::new();
        write_text_frame(&mut wire, 178, 9, |w| {
            w.int(1).int(117);
        });
        write_text_frame(&mut wire, 226, 4, |w| {
            w.int(-1).int(2104);
        });
        write_proto_frame(&mut wire, 9, |w| {
            w.i32(1, 117);
        });
        let (a, rest) = wire.split_at(12);
        let mut out = Vec::new();
        write_frame(&mut out, 178, &Frame::parse(&a[4..], 178).unwrap());
        let mut r = FrameReader::new();
        r.feed(rest);
        while let Some(f) = r.next_frame(226).unwrap() {
            write_frame(&mut out, 226, &f);
        }
        assert_eq!(out, wire);
    }

    #[test]
    fn spare_and_commit_read_in_place() {
        let mut wire = Vec::new();
        write_text_frame(&mut wire, 150, 49, |w| {
            w.int(1).int(1_767_277_800);
        });
        let mut r = FrameReader::new();
        let s = r.spare(4096);
        s[..wire.len()].copy_from_slice(&wire);
        r.commit(wire.len());
        assert_eq!(r.buffered(), wire.len());
        let f = r.next_frame(150).unwrap().unwrap();
        assert_eq!(f.fields().i64().unwrap(), 1);
    }
}
