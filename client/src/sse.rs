//! A Server-Sent Events parser (the `text/event-stream` format), sans IO: bytes in as they
//! arrive, whole events out. Fields `id`, `event`, `data` (several lines joined with `\n`)
//! and `retry` (ignored: the client's own backoff decides), comments, lines ended by CRLF,
//! LF or CR, a line split across reads, and a bound on a line and on an event's data so a
//! server that never ends a line cannot make the client grow without limit.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (empty when the event had none: `message` in a browser).
    pub event: String,
    /// The `id:` field of this event, if it had one.
    pub id: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: Vec<u8>,
}

/// What the parser found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A complete event.
    Event(SseEvent),
    /// A comment line (`: ...`): a keep-alive, it proves the server alive.
    Comment,
    /// A line or an event's data longer than the bound; it was dropped (and the event it
    /// belonged to with it), `len` bytes at least.
    Oversized {
        /// Bytes seen of it when it was dropped.
        len: usize,
    },
}

/// The parser's state between reads.
#[derive(Debug)]
pub struct SseParser {
    max: usize,
    line: Vec<u8>,
    /// The previous read ended in CR: an LF starting this one belongs to that line end.
    after_cr: bool,
    /// Dropping the rest of an oversized line.
    skipping: bool,
    /// The current event was spoiled by an oversized line: drop it at its blank line.
    spoiled: bool,
    /// The stream's first bytes may be a UTF-8 BOM.
    at_start: bool,
    event: String,
    id: Option<String>,
    data: Vec<u8>,
    has_data: bool,
}

impl SseParser {
    /// A parser that accepts lines and event data of at most `max` bytes.
    pub fn new(max: usize) -> SseParser {
        SseParser {
            max: max.max(16),
            line: Vec::new(),
            after_cr: false,
            skipping: false,
            spoiled: false,
            at_start: true,
            event: String::new(),
            id: None,
            data: Vec::new(),
            has_data: false,
        }
    }

    /// Feeds the next bytes of the stream; complete items are appended to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<SseItem>) {
        if self.after_cr && !bytes.is_empty() {
            self.after_cr = false;
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
        }
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    self.take(&bytes[..i], out);
                    self.end_line(out);
                    let cr = bytes[i] == b'\r';
                    bytes = &bytes[i + 1..];
                    if cr {
                        match bytes.first() {
                            Some(b'\n') => bytes = &bytes[1..],
                            Some(_) => {}
                            None => self.after_cr = true,
                        }
                    }
                }
                None => {
                    self.take(bytes, out);
                    bytes = &[];
                }
            }
        }
    }

    /// Appends part of a line, dropping it once it passes the bound.
    fn take(&mut self, part: &[u8], out: &mut Vec<SseItem>) {
        if self.skipping {
            return;
        }
        if self.line.len() + part.len() > self.max {
            out.push(SseItem::Oversized {
                len: self.line.len() + part.len(),
            });
            self.line.clear();
            self.skipping = true;
            self.spoiled = true;
            return;
        }
        self.line.extend_from_slice(part);
    }

    fn end_line(&mut self, out: &mut Vec<SseItem>) {
        if std::mem::take(&mut self.skipping) {
            return;
        }
        let mut line = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.at_start) && line.starts_with("\u{feff}".as_bytes()) {
            line.drain(..3);
        }
        self.line_done(&line, out);
        // Keep the allocation for the next line.
        line.clear();
        self.line = line;
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<SseItem>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            out.push(SseItem::Comment);
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                if self.spoiled {
                    return;
                }
                if self.data.len() + value.len() + 1 > self.max {
                    out.push(SseItem::Oversized {
                        len: self.data.len() + value.len() + 1,
                    });
                    self.spoiled = true;
                    self.data.clear();
                    return;
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            // An id with NUL is ignored (the spec says so: it could not be sent back).
            b"id" if !value.contains(&0) => {
                self.id = Some(String::from_utf8_lossy(value).into_owned());
            }
            // `retry` and unknown fields: nothing to do.
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseItem>) {
        let spoiled = std::mem::take(&mut self.spoiled);
        let event = std::mem::take(&mut self.event);
        let id = self.id.take();
        let has_data = std::mem::take(&mut self.has_data);
        let data = std::mem::take(&mut self.data);
        // An event without data is not dispatched (as in browsers).
        if !spoiled && has_data {
            out.push(SseItem::Event(SseEvent { event, id, data }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in(chunks: &[&[u8]], max: usize) -> Vec<SseItem> {
        let mut p = SseParser::new(max);
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out);
        }
        out
    }

    fn ev(event: &str, id: Option<&str>, data: &str) -> SseItem {
        SseItem::Event(SseEvent {
            event: event.into(),
            id: id.map(Into::into),
            data: data.as_bytes().to_vec(),
        })
    }

    #[test]
    fn fields_id_event_and_data_make_an_event_at_the_blank_line() {
        let got = parse_in(
            &[b"event: tick\nid: 00000000000000aa-7\ndata: {\"seq\":7}\n\nevent: heartbeat\ndata: {}\n\n"],
            1024,
        );
        assert_eq!(
            got,
            vec![
                ev("tick", Some("00000000000000aa-7"), "{\"seq\":7}"),
                ev("heartbeat", None, "{}"),
            ]
        );
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines_and_the_space_after_the_colon_is_optional() {
        let got = parse_in(&[b"data:{\"a\":\ndata:  1}\ndata\n\n"], 1024);
        assert_eq!(got, vec![ev("", None, "{\"a\":\n 1}\n")]);
    }

    #[test]
    fn comments_are_reported_and_do_not_end_an_event() {
        let got = parse_in(&[b": keep-alive\n\ndata: x\n: in the middle\n\n"], 1024);
        assert_eq!(
            got,
            vec![SseItem::Comment, SseItem::Comment, ev("", None, "x")]
        );
    }

    #[test]
    fn crlf_lf_and_cr_line_ends_all_work_even_split_across_reads() {
        let whole = b"event: a\r\ndata: 1\r\n\r\nevent: b\rdata: 2\r\rdata: 3\n\n";
        let want = vec![ev("a", None, "1"), ev("b", None, "2"), ev("", None, "3")];
        assert_eq!(parse_in(&[whole], 1024), want);
        // Every split point, the CR/LF pairs included.
        for i in 0..whole.len() {
            assert_eq!(
                parse_in(&[&whole[..i], &whole[i..]], 1024),
                want,
                "split at {i}"
            );
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(parse_in(&bytes, 1024), want);
    }

    #[test]
    fn a_partial_event_waits_for_the_next_read() {
        let mut p = SseParser::new(1024);
        let mut out = Vec::new();
        p.feed(b"event: tick\nid: e-1\ndata: {\"se", &mut out);
        assert!(out.is_empty());
        p.feed(b"q\":1}\n", &mut out);
        assert!(out.is_empty(), "no blank line yet");
        p.feed(b"\n", &mut out);
        assert_eq!(out, vec![ev("tick", Some("e-1"), "{\"seq\":1}")]);
    }

    #[test]
    fn an_oversized_line_is_dropped_with_its_event_and_the_stream_goes_on() {
        let mut p = SseParser::new(32);
        let mut out = Vec::new();
        p.feed(b"event: tick\ndata: ", &mut out);
        // Much more than the bound, in pieces, never ending the line for a while.
        for _ in 0..100 {
            p.feed(&[b'x'; 50], &mut out);
        }
        assert_eq!(out.len(), 1, "reported once: {out:?}");
        assert!(matches!(out[0], SseItem::Oversized { len } if len > 32));
        p.feed(b"\n\nevent: tick\ndata: ok\n\n", &mut out);
        assert_eq!(out[1..], [ev("tick", None, "ok")]);
    }

    #[test]
    fn data_lines_that_together_pass_the_bound_are_dropped() {
        let got = parse_in(
            &[b"data: 0123456789\ndata: 0123456789\ndata: 0123456789\ndata: 0123456789\n\ndata: y\n\n"],
            32,
        );
        assert!(matches!(got[0], SseItem::Oversized { .. }), "{got:?}");
        assert_eq!(got[1..], [ev("", None, "y")]);
    }

    #[test]
    fn an_event_without_data_is_not_dispatched_and_fields_do_not_leak_into_the_next() {
        let got = parse_in(&[b"event: x\nid: 9\n\ndata: d\n\n"], 1024);
        assert_eq!(got, vec![ev("", None, "d")]);
    }

    #[test]
    fn a_bom_at_the_start_is_skipped_and_unknown_fields_and_retry_are_ignored() {
        let got = parse_in(
            &["\u{feff}retry: 10\nfoo: bar\ndata: a\n\n".as_bytes()],
            1024,
        );
        assert_eq!(got, vec![ev("", None, "a")]);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..200 {
            let mut p = SseParser::new(64);
            let mut out = Vec::new();
            for _ in 0..20 {
                let mut chunk = Vec::new();
                for _ in 0..(seed % 40) {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let table = b"data: :id\r\n\x00\xff{}";
                    chunk.push(table[(seed as usize) % table.len()]);
                }
                p.feed(&chunk, &mut out);
            }
            for i in &out {
                if let SseItem::Event(e) = i {
                    assert!(e.data.len() <= 64);
                }
            }
        }
    }
}
