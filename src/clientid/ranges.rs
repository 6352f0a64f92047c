//! Client-id ranges by purpose: parsing, validation and each environment's defaults.
//!
//! The defaults keep the original IB-Stream's table (production 2/10, development 12/20,
//! staging 22/30: its contract service and lookups started at the first id, background
//! streaming at the second) and fit every purpose into the environment's own block of ten
//! (2-11, 12-21, 22-31), so no two environments' ranges overlap.

use std::fmt;
use std::ops::RangeInclusive;

use crate::config::Environment;

/// What an IB session is for: each purpose takes its ids from its own range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Purpose {
    /// The engine's market-data session.
    Streaming,
    /// The backfill process's historical-data session.
    Backfill,
    /// Contract lookups (the original's contract service).
    Lookup,
    /// Command-line tools that talk to IB themselves.
    Tools,
}

impl Purpose {
    /// Every purpose, in the order status lists them.
    pub const ALL: [Purpose; 4] = [
        Purpose::Streaming,
        Purpose::Backfill,
        Purpose::Lookup,
        Purpose::Tools,
    ];

    /// The name in settings, files and endpoints.
    pub fn name(self) -> &'static str {
        match self {
            Purpose::Streaming => "streaming",
            Purpose::Backfill => "backfill",
            Purpose::Lookup => "lookup",
            Purpose::Tools => "tools",
        }
    }

    /// The purpose of a name.
    pub fn parse(s: &str) -> Option<Purpose> {
        Purpose::ALL.into_iter().find(|p| p.name() == s.trim())
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The ids of every purpose (inclusive ranges, pairwise disjoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdRanges {
    ranges: [RangeInclusive<i32>; 4],
}

impl IdRanges {
    /// An environment's defaults: in its block of ten starting at 2, 12 or 22, lookup takes
    /// the block's first three ids, backfill the next three, tools two, streaming the last
    /// two (10-11, 20-21, 30-31: the engine's fixed default id first).
    pub fn defaults(env: Environment) -> IdRanges {
        let base = match env {
            Environment::Production => 0,
            Environment::Development => 10,
            Environment::Staging => 20,
        };
        IdRanges {
            ranges: [
                base + 10..=base + 11,
                base + 5..=base + 7,
                base + 2..=base + 4,
                base + 8..=base + 9,
            ],
        }
    }

    /// The range of a purpose.
    pub fn of(&self, p: Purpose) -> &RangeInclusive<i32> {
        &self.ranges[p as usize]
    }

    /// Parses `purpose=first-last` pairs separated by commas over `base`: the purposes named
    /// replace theirs, the others keep `base`'s. The result must still be disjoint.
    pub fn parse_over(base: &IdRanges, v: &str) -> Result<IdRanges, String> {
        let mut out = base.clone();
        let mut named = Vec::new();
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, range) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not purpose=first-last"))?;
            let p = Purpose::parse(name).ok_or_else(|| {
                format!("`{name}` is not a purpose (streaming, backfill, lookup, tools)")
            })?;
            if named.contains(&p) {
                return Err(format!("{p} is given twice"));
            }
            named.push(p);
            let (a, b) = match range.split_once('-') {
                Some((a, b)) => (a, b),
                None => (range, range),
            };
            let first: i32 = a
                .trim()
                .parse()
                .map_err(|_| format!("`{a}` in `{part}` is not a client id"))?;
            let last: i32 = b
                .trim()
                .parse()
                .map_err(|_| format!("`{b}` in `{part}` is not a client id"))?;
            if first < 1 {
                // TWS binds its manual orders to client id 0: never hand it out.
                return Err(format!(
                    "{p}: client id {first} is reserved (ids start at 1)"
                ));
            }
            if last < first {
                return Err(format!("{p}: {first}-{last} is empty (last before first)"));
            }
            out.ranges[p as usize] = first..=last;
        }
        out.check()?;
        Ok(out)
    }

    /// The ranges must not share an id: two purposes would compete for it.
    fn check(&self) -> Result<(), String> {
        for a in Purpose::ALL {
            for b in Purpose::ALL {
                let (ra, rb) = (self.of(a), self.of(b));
                if a < b && ra.start() <= rb.end() && rb.start() <= ra.end() {
                    return Err(format!(
                        "the {a} ids {}-{} overlap the {b} ids {}-{}",
                        ra.start(),
                        ra.end(),
                        rb.start(),
                        rb.end()
                    ));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for IdRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in Purpose::ALL.into_iter().enumerate() {
            let r = self.of(p);
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{p}={}-{}", r.start(), r.end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_keep_the_original_table_and_never_overlap_between_environments() {
        let first = |e| {
            let r = IdRanges::defaults(e);
            (
                *r.of(Purpose::Lookup).start(),
                *r.of(Purpose::Streaming).start(),
            )
        };
        assert_eq!(first(Environment::Production), (2, 10));
        assert_eq!(first(Environment::Development), (12, 20));
        assert_eq!(first(Environment::Staging), (22, 30));
        let mut all: Vec<i32> = Environment::ALL
            .into_iter()
            .flat_map(|e| {
                let r = IdRanges::defaults(e);
                Purpose::ALL
                    .into_iter()
                    .flat_map(move |p| r.of(p).clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "an id in two ranges");
        for e in Environment::ALL {
            IdRanges::defaults(e)
                .check()
                .expect("defaults are disjoint");
        }
    }

    #[test]
    fn parsing_replaces_the_named_purposes_and_round_trips() {
        let base = IdRanges::defaults(Environment::Production);
        let r = IdRanges::parse_over(&base, "backfill=2000-2999, tools=1000-1999").unwrap();
        assert_eq!(r.of(Purpose::Backfill), &(2000..=2999));
        assert_eq!(r.of(Purpose::Tools), &(1000..=1999));
        assert_eq!(r.of(Purpose::Streaming), base.of(Purpose::Streaming));
        assert_eq!(IdRanges::parse_over(&base, &r.to_string()).unwrap(), r);
        let one = IdRanges::parse_over(&base, "streaming=77").unwrap();
        assert_eq!(one.of(Purpose::Streaming), &(77..=77));
    }

    #[test]
    fn bad_ranges_are_refused_with_the_reason() {
        let base = IdRanges::defaults(Environment::Production);
        let err = |v: &str| IdRanges::parse_over(&base, v).unwrap_err();
        assert!(err("streaming=3-4").contains("the streaming ids 3-4 overlap the lookup ids 2-4"));
        assert!(err("orders=1-2").contains("not a purpose"));
        assert!(err("tools=9-8").contains("empty"));
        assert!(err("tools=0-3").contains("reserved"));
        assert!(err("tools=x-3").contains("not a client id"));
        assert!(err("tools").contains("purpose=first-last"));
        assert!(err("tools=50,tools=60").contains("twice"));
    }
}
