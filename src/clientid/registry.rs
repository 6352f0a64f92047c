//! The registry's state and rules, without IO: who holds which id, which ids IB refused,
//! and the choice of the next id. [`super::store`] keeps it in a file.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use super::ranges::{IdRanges, Purpose};

/// How long an id IB refused with 326 is skipped: the session that held it may have been a
/// stale one IB had not dropped yet, so after this the id is tried again.
pub const REFUSED_TTL_NS: i64 = 10 * 60 * 1_000_000_000;

/// A process of this machine, as the registry recognises it again: its pid and the start
/// time the kernel gave it, so a reused pid is not mistaken for the holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// The process id.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22; 0: unknown).
    pub start: u64,
}

/// One id held by one process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The IB client id.
    pub id: i32,
    /// What it is for.
    pub purpose: String,
    /// Who holds it (`engine`, `backfill`, a tool's name).
    pub holder: String,
    /// The holding process.
    pub process: Process,
    /// When it was taken, Unix ns.
    pub since_ns: i64,
}

/// An id IB answered 326 for ("client id is already in use") without our registry knowing
/// its holder: another program, or a session of ours IB had not dropped yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// The IB client id.
    pub id: i32,
    /// When IB refused it, Unix ns.
    pub at_ns: i64,
}

/// Every id of one environment in use, as persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// Ids held by processes of ours.
    pub leases: Vec<Lease>,
    /// Ids IB refused lately.
    pub refused: Vec<Refused>,
}

/// Why no id could be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Every id of the purpose's range is held or was refused by IB lately.
    #[error(
        "no free {purpose} client id in {first}-{last}: {detail}; widen the range \
         (IB_STREAM_CLIENT_ID_RANGES) or stop a holder"
    )]
    Exhausted {
        /// The purpose.
        purpose: Purpose,
        /// The range's first id.
        first: i32,
        /// The range's last id.
        last: i32,
        /// Who holds each id.
        detail: String,
    },
}

/// What a process of ours needs to say about itself to the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant<'a> {
    /// The purpose of the session.
    pub purpose: Purpose,
    /// Its name in status (`engine`, `backfill`, ...).
    pub holder: &'a str,
    /// The process.
    pub process: Process,
}

impl Registry {
    /// Forgets leases whose process is gone (`alive` says which are not) and refusals older
    /// than [`REFUSED_TTL_NS`]. Returns the leases dropped, for the log.
    pub fn reclaim(&mut self, now_ns: i64, alive: &dyn Fn(&Process) -> bool) -> Vec<Lease> {
        let (keep, gone): (Vec<Lease>, Vec<Lease>) = std::mem::take(&mut self.leases)
            .into_iter()
            .partition(|l| alive(&l.process));
        self.leases = keep;
        self.refused
            .retain(|r| now_ns.saturating_sub(r.at_ns) < REFUSED_TTL_NS);
        gone
    }

    /// An id for `who` from its purpose's range: the lowest one neither held by a live
    /// process nor refused lately. A lease `who` already has for its purpose and holder is
    /// given back (a restart of the same process keeps its id).
    pub fn acquire(
        &mut self,
        ranges: &IdRanges,
        who: &Claimant<'_>,
        now_ns: i64,
        alive: &dyn Fn(&Process) -> bool,
    ) -> Result<i32, RegistryError> {
        self.reclaim(now_ns, alive);
        let range = ranges.of(who.purpose);
        if let Some(l) = self.leases.iter().find(|l| {
            l.process == who.process
                && l.holder == who.holder
                && l.purpose == who.purpose.name()
                && range.contains(&l.id)
        }) {
            return Ok(l.id);
        }
        let start = *range.start();
        self.take_from(range, start, who, now_ns)
    }

    /// IB refused `id` with 326: remember it, drop `who`'s lease on it and take the next
    /// free id of the range after it (wrapping), so the caller probes the next one.
    pub fn refused(
        &mut self,
        ranges: &IdRanges,
        who: &Claimant<'_>,
        id: i32,
        now_ns: i64,
        alive: &dyn Fn(&Process) -> bool,
    ) -> Result<i32, RegistryError> {
        self.reclaim(now_ns, alive);
        self.release(id, &who.process);
        self.refused.retain(|r| r.id != id);
        self.refused.push(Refused { id, at_ns: now_ns });
        let range = ranges.of(who.purpose);
        let from = if id >= *range.end() {
            *range.start()
        } else {
            id.saturating_add(1).max(*range.start())
        };
        self.take_from(range, from, who, now_ns)
    }

    /// Gives `id` back (a clean stop). Only the holding process releases it.
    pub fn release(&mut self, id: i32, process: &Process) {
        self.leases
            .retain(|l| !(l.id == id && l.process == *process));
    }

    /// The first free id of `range` from `from` on, wrapping to the range's start.
    fn take_from(
        &mut self,
        range: &RangeInclusive<i32>,
        from: i32,
        who: &Claimant<'_>,
        now_ns: i64,
    ) -> Result<i32, RegistryError> {
        let upper = (from..=*range.end()).chain(*range.start()..from);
        let free = upper.into_iter().find(|id| {
            !self.leases.iter().any(|l| l.id == *id) && !self.refused.iter().any(|r| r.id == *id)
        });
        match free {
            Some(id) => {
                self.leases.push(Lease {
                    id,
                    purpose: who.purpose.name().to_string(),
                    holder: who.holder.to_string(),
                    process: who.process,
                    since_ns: now_ns,
                });
                self.leases.sort_by_key(|l| l.id);
                Ok(id)
            }
            None => Err(RegistryError::Exhausted {
                purpose: who.purpose,
                first: *range.start(),
                last: *range.end(),
                detail: self.describe(range),
            }),
        }
    }

    /// Who holds each id of `range`, for the exhaustion error.
    fn describe(&self, range: &RangeInclusive<i32>) -> String {
        range
            .clone()
            .take(16)
            .map(|id| {
                if let Some(l) = self.leases.iter().find(|l| l.id == id) {
                    format!("{id} held by {} (pid {})", l.holder, l.process.pid)
                } else {
                    format!("{id} refused by IB (326) lately")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Environment;

    const NOW: i64 = 1_780_000_000_000_000_000;

    fn who(purpose: Purpose, holder: &str, pid: u32) -> Claimant<'_> {
        Claimant {
            purpose,
            holder,
            process: Process { pid, start: 7 },
        }
    }

    fn all_alive(_: &Process) -> bool {
        true
    }

    #[test]
    fn two_holders_of_one_purpose_get_different_ids_from_its_range() {
        let ranges = IdRanges::defaults(Environment::Development);
        let mut r = Registry::default();
        let a = r
            .acquire(
                &ranges,
                &who(Purpose::Streaming, "engine", 1),
                NOW,
                &all_alive,
            )
            .unwrap();
        let b = r
            .acquire(
                &ranges,
                &who(Purpose::Streaming, "engine", 2),
                NOW,
                &all_alive,
            )
            .unwrap();
        assert_eq!((a, b), (20, 21));
        let t = r
            .acquire(
                &ranges,
                &who(Purpose::Tools, "lookup-cli", 3),
                NOW,
                &all_alive,
            )
            .unwrap();
        assert!(ranges.of(Purpose::Tools).contains(&t));
        // The same process asking again keeps its id.
        let again = r
            .acquire(
                &ranges,
                &who(Purpose::Streaming, "engine", 1),
                NOW,
                &all_alive,
            )
            .unwrap();
        assert_eq!(again, 20);
        assert_eq!(r.leases.len(), 3);
    }

    #[test]
    fn a_range_used_up_is_a_clear_error_naming_the_holders() {
        let ranges = IdRanges::defaults(Environment::Production);
        let mut r = Registry::default();
        for pid in 1..=2 {
            r.acquire(
                &ranges,
                &who(Purpose::Streaming, "engine", pid),
                NOW,
                &all_alive,
            )
            .unwrap();
        }
        let e = r
            .acquire(
                &ranges,
                &who(Purpose::Streaming, "engine", 3),
                NOW,
                &all_alive,
            )
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("no free streaming client id in 10-11"),
            "{msg}"
        );
        assert!(msg.contains("10 held by engine (pid 1)"), "{msg}");
        assert!(msg.contains("IB_STREAM_CLIENT_ID_RANGES"), "{msg}");
    }

    #[test]
    fn the_id_of_a_dead_process_is_reclaimed() {
        let ranges = IdRanges::defaults(Environment::Production);
        let mut r = Registry::default();
        for pid in 1..=2 {
            r.acquire(
                &ranges,
                &who(Purpose::Streaming, "engine", pid),
                NOW,
                &all_alive,
            )
            .unwrap();
        }
        // pid 1 died; pid 2 is alive.
        let alive = |p: &Process| p.pid != 1;
        let id = r
            .acquire(&ranges, &who(Purpose::Streaming, "engine", 3), NOW, &alive)
            .unwrap();
        assert_eq!(id, 10);
        assert!(r.leases.iter().all(|l| l.process.pid != 1));
    }

    #[test]
    fn refused_ids_are_probed_in_turn_then_retried_after_their_ttl() {
        let ranges = IdRanges::parse_over(
            &IdRanges::defaults(Environment::Production),
            "backfill=100-102",
        )
        .unwrap();
        let me = who(Purpose::Backfill, "backfill", 9);
        let mut r = Registry::default();
        let first = r.acquire(&ranges, &me, NOW, &all_alive).unwrap();
        assert_eq!(first, 100);
        // 326 on 100: the next is 101, and the lease moved.
        let next = r.refused(&ranges, &me, 100, NOW, &all_alive).unwrap();
        assert_eq!(next, 101);
        assert_eq!(r.leases.iter().map(|l| l.id).collect::<Vec<_>>(), vec![101]);
        assert_eq!(r.refused(&ranges, &me, 101, NOW, &all_alive), Ok(102));
        // The whole range refused: a clear error, not a loop.
        let e = r.refused(&ranges, &me, 102, NOW, &all_alive).unwrap_err();
        assert!(
            e.to_string().contains("100 refused by IB (326) lately"),
            "{e}"
        );
        // Later than the TTL, the refusals are forgotten and the range is free again.
        let later = NOW + REFUSED_TTL_NS;
        assert_eq!(r.acquire(&ranges, &me, later, &all_alive), Ok(100));
    }

    #[test]
    fn probing_wraps_from_the_end_of_the_range_and_skips_held_ids() {
        let ranges = IdRanges::parse_over(
            &IdRanges::defaults(Environment::Production),
            "backfill=100-103",
        )
        .unwrap();
        let mut r = Registry::default();
        let other = who(Purpose::Backfill, "backfill", 1);
        let me = who(Purpose::Backfill, "backfill", 2);
        assert_eq!(r.acquire(&ranges, &other, NOW, &all_alive), Ok(100));
        assert_eq!(r.acquire(&ranges, &me, NOW, &all_alive), Ok(101));
        r.release(101, &me.process);
        r.leases.push(Lease {
            id: 103,
            purpose: "backfill".into(),
            holder: "backfill".into(),
            process: me.process,
            since_ns: NOW,
        });
        // 326 on 103 (the end): wrap to the start, skip 100 (held), take 101.
        assert_eq!(r.refused(&ranges, &me, 103, NOW, &all_alive), Ok(101));
    }
}
