//! Passthrough: the ticks and gaps the studies receive, one row each (what every input
//! delivers, for checking an input or feeding another tool).

use super::output::{Cell, Row};
use super::{Gap, Study, Tick, TickKind};
use crate::ipc::UNDEF_I64;

/// A row: a tick or a gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassRow {
    /// A tick.
    Tick(Tick),
    /// A gap.
    Gap(Gap),
}

/// The passthrough study.
#[derive(Debug, Default)]
pub struct Passthrough;

impl Study for Passthrough {
    type Out = PassRow;
    fn on_tick(&mut self, t: &Tick, out: &mut Vec<PassRow>) {
        out.push(PassRow::Tick(*t));
    }
    fn on_gap(&mut self, g: &Gap, out: &mut Vec<PassRow>) {
        out.push(PassRow::Gap(*g));
    }
}

const COLUMNS: &[&str] = &[
    "time", "seq", "type", "price", "size", "bid", "ask", "bid_size", "ask_size", "gap_to",
];

impl Row for PassRow {
    fn columns(&self) -> &'static [&'static str] {
        COLUMNS
    }

    fn cells(&self, out: &mut Vec<Cell>) {
        let p = |v: i64| {
            if v == UNDEF_I64 {
                Cell::Empty
            } else {
                Cell::Price(v)
            }
        };
        let s = |v: i64| {
            if v == UNDEF_I64 {
                Cell::Empty
            } else {
                Cell::Size(v)
            }
        };
        match self {
            PassRow::Tick(t) => {
                out.push(Cell::Time(t.t_us));
                out.push(Cell::Int(t.seq as i64));
                match t.kind {
                    TickKind::Trade { price, size } => out.extend([
                        Cell::Text("trade"),
                        p(price),
                        s(size),
                        Cell::Empty,
                        Cell::Empty,
                        Cell::Empty,
                        Cell::Empty,
                    ]),
                    TickKind::Quote {
                        bid,
                        ask,
                        bid_size,
                        ask_size,
                    } => out.extend([
                        Cell::Text("quote"),
                        Cell::Empty,
                        Cell::Empty,
                        p(bid),
                        p(ask),
                        s(bid_size),
                        s(ask_size),
                    ]),
                }
                out.push(Cell::Empty);
            }
            PassRow::Gap(g) => {
                out.push(Cell::Time(g.from_us));
                out.push(g.first_seq.map_or(Cell::Empty, |s| Cell::Int(s as i64)));
                out.push(Cell::Text("gap"));
                out.extend(std::iter::repeat_n(Cell::Empty, 6));
                out.push(g.to_us.map_or(Cell::Empty, Cell::Time));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{Event, Gap};
    use super::*;

    #[test]
    fn every_tick_and_gap_in_order_with_a_cell_per_column() {
        let g = Gap {
            from_us: 5,
            to_us: None,
            first_seq: Some(2),
            last_seq: Some(2),
        };
        let rows = run(
            &mut Passthrough,
            &[
                Event::Tick(trade(1, 1, 10_000, 1)),
                Event::Gap(g),
                Event::Tick(quote(3, 9, 1, 2)),
            ],
        );
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1], PassRow::Gap(g));
        for r in &rows {
            let mut c = Vec::new();
            r.cells(&mut c);
            assert_eq!(c.len(), COLUMNS.len());
        }
    }
}
