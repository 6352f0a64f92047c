//! Rows as a readable table, JSON lines or CSV. Every study's row is a list of [`Cell`]s under
//! fixed column names; the writer formats them, so the three formats say the same thing.
//! Prices and sizes are printed as the exact decimals of their fixed point, times as RFC 3339
//! in the clock's zone.

use std::io::Write;

use super::clock::Clock;
use crate::ipc::{PRICE_SCALE, SIZE_SCALE};

/// One value of a row.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    /// No value (an empty bar's OHLC, a band before enough trades).
    Empty,
    /// A count or sequence.
    Int(i64),
    /// A price ([`PRICE_SCALE`] fixed point).
    Price(i64),
    /// A size or volume ([`SIZE_SCALE`] fixed point).
    Size(i64),
    /// A time, µs since the Unix epoch.
    Time(i64),
    /// A word.
    Text(&'static str),
    /// A flag.
    Bool(bool),
}

/// A study's output row.
pub trait Row {
    /// Column names, in order.
    fn columns(&self) -> &'static [&'static str];
    /// The values, one per column.
    fn cells(&self, out: &mut Vec<Cell>);
}

/// The output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header.
    #[default]
    Table,
    /// One JSON object per line.
    Jsonl,
    /// CSV with a header line.
    Csv,
}

/// Writes rows in one format.
#[derive(Debug)]
pub struct RowWriter {
    format: Format,
    clock: Clock,
    header_done: bool,
    cells: Vec<Cell>,
    buf: Vec<u8>,
    text: String,
}

const TABLE_WIDTH: usize = 12;

impl RowWriter {
    /// A writer of `format` with times in `clock`'s zone.
    pub fn new(format: Format, clock: Clock) -> RowWriter {
        RowWriter {
            format,
            clock,
            header_done: false,
            cells: Vec::with_capacity(16),
            buf: Vec::with_capacity(64 * 1024),
            text: String::new(),
        }
    }

    fn width(&self, col: &str, c: &Cell) -> usize {
        let w = match c {
            Cell::Time(_) => 32,
            Cell::Bool(_) | Cell::Text(_) => 7,
            _ => TABLE_WIDTH,
        };
        w.max(col.len())
    }

    /// Appends `row` (to the buffer; [`RowWriter::flush`] writes it out).
    pub fn row(&mut self, row: &dyn Row) {
        self.cells.clear();
        row.cells(&mut self.cells);
        let cols = row.columns();
        let cells = std::mem::take(&mut self.cells);
        if !self.header_done {
            self.header_done = true;
            match self.format {
                Format::Table => {
                    for (i, (c, v)) in cols.iter().zip(&cells).enumerate() {
                        if i > 0 {
                            self.buf.push(b' ');
                        }
                        let w = self.width(c, v);
                        let _ = write!(self.buf, "{c:>w$}");
                    }
                    self.buf.push(b'\n');
                }
                Format::Csv => {
                    self.buf.extend_from_slice(cols.join(",").as_bytes());
                    self.buf.push(b'\n');
                }
                Format::Jsonl => {}
            }
        }
        if self.format == Format::Jsonl {
            self.buf.push(b'{');
        }
        for (i, (c, v)) in cols.iter().zip(&cells).enumerate() {
            self.text.clear();
            let quoted = self.value(v);
            match self.format {
                Format::Table => {
                    if i > 0 {
                        self.buf.push(b' ');
                    }
                    let w = self.width(c, v);
                    let _ = write!(self.buf, "{:>w$}", self.text);
                }
                Format::Csv => {
                    if i > 0 {
                        self.buf.push(b',');
                    }
                    self.buf.extend_from_slice(self.text.as_bytes());
                }
                Format::Jsonl => {
                    if i > 0 {
                        self.buf.push(b',');
                    }
                    let _ = write!(self.buf, "\"{c}\":");
                    if matches!(v, Cell::Empty) {
                        self.buf.extend_from_slice(b"null");
                    } else if quoted {
                        let _ = write!(self.buf, "\"{}\"", self.text);
                    } else {
                        self.buf.extend_from_slice(self.text.as_bytes());
                    }
                }
            }
        }
        if self.format == Format::Jsonl {
            self.buf.push(b'}');
        }
        self.buf.push(b'\n');
        self.cells = cells;
    }

    /// Formats `v` into `self.text`; true when JSON must quote it.
    fn value(&mut self, v: &Cell) -> bool {
        use std::fmt::Write as _;
        match v {
            Cell::Empty => false,
            Cell::Int(i) => {
                let _ = write!(self.text, "{i}");
                false
            }
            Cell::Price(p) => {
                push_fixed(&mut self.text, *p, PRICE_SCALE);
                false
            }
            Cell::Size(s) => {
                push_fixed(&mut self.text, *s, SIZE_SCALE);
                false
            }
            Cell::Time(t) => {
                self.clock.format(*t, &mut self.text);
                true
            }
            Cell::Text(s) => {
                self.text.push_str(s);
                true
            }
            Cell::Bool(b) => {
                self.text.push_str(if *b { "true" } else { "false" });
                false
            }
        }
    }

    /// Bytes buffered.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Writes the buffer to `w`.
    pub fn flush(&mut self, w: &mut dyn Write) -> std::io::Result<()> {
        let r = w.write_all(&self.buf).and_then(|()| w.flush());
        self.buf.clear();
        r
    }
}

fn push_fixed(s: &mut String, v: i64, scale: i64) {
    let mut b = Vec::with_capacity(24);
    crate::tickjson::write_fixed(&mut b, v, scale);
    s.push_str(&String::from_utf8_lossy(&b));
}

#[cfg(test)]
mod tests {
    use super::*;

    struct R;
    impl Row for R {
        fn columns(&self) -> &'static [&'static str] {
            &["time", "price", "size", "n", "side", "gap", "vwap"]
        }
        fn cells(&self, out: &mut Vec<Cell>) {
            out.extend([
                Cell::Time(1_767_623_400_000_000),
                Cell::Price(21_000_250_000_000),
                Cell::Size(3 * SIZE_SCALE),
                Cell::Int(4),
                Cell::Text("buy"),
                Cell::Bool(false),
                Cell::Empty,
            ]);
        }
    }

    fn render(f: Format) -> String {
        let mut w = RowWriter::new(f, Clock::utc());
        w.row(&R);
        w.row(&R);
        let mut out = Vec::new();
        w.flush(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_three_formats_say_the_same() {
        assert_eq!(
            render(Format::Jsonl),
            "{\"time\":\"2026-01-05T14:30:00Z\",\"price\":21000.25,\"size\":3,\"n\":4,\"side\":\"buy\",\"gap\":false,\"vwap\":null}\n".repeat(2)
        );
        assert_eq!(
            render(Format::Csv),
            format!(
                "time,price,size,n,side,gap,vwap\n{}",
                "2026-01-05T14:30:00Z,21000.25,3,4,buy,false,\n".repeat(2)
            )
        );
        let t = render(Format::Table);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].trim_start().starts_with("time"));
        assert!(lines[1].contains("2026-01-05T14:30:00Z") && lines[1].contains("21000.25"));
        assert_eq!(lines[0].len(), lines[1].len(), "{t}");
    }
}
