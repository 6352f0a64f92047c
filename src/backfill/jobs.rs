//! Which fills are to be made: the gap records in storage and the (contract, kind) streams
//! each one interrupted.
//!
//! A gap record of epoch E (the engine's or the recorder's, conId 0 for all contracts or one
//! conId) interrupted every tick-by-tick stream of E (its conId's) recorded in storage. For
//! each such stream without a fill state yet, one [`Job`] over the gap's **whole seconds**:
//! from the second after the one of `t0` (the receive time of the last record before the gap)
//! to the second of `t1` (the first record after it), exclusive. IB stamps history to the
//! second, so the ticks of those two edge seconds cannot be told from the ones received live;
//! they are left to the live record. A gap within one second has no whole second to fill and
//! is marked unavailable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ib_stream_ipc::{Record, RecordKind, UNDEF_I64};
use ib_stream_tws::Contract;

use super::convert::SEC_NS;
use super::core::Job;
use crate::storage::backfill::{FillKey, FillState, FillStates, is_backfill_epoch, subtract};
use crate::storage::layout::{HOUR_NS, Stream, list_segments};
use crate::storage::query::{Query, QueryError, QueryIter, default_format};

/// A gap record found in storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FoundGap {
    /// Its epoch and sequence.
    pub epoch: u64,
    /// Its sequence.
    pub seq: u64,
    /// The gap record.
    pub rec: Record,
}

/// The gaps and the streams they interrupted, from storage under `root` since `since_ns`:
/// `(gap, conId, kind)` for each tick-by-tick stream of the gap's epoch (and conId when
/// the gap names one), in time order.
pub fn interrupted(
    root: &Path,
    since_ns: i64,
    now_ns: i64,
) -> Result<Vec<(FoundGap, u32, RecordKind)>, QueryError> {
    let format = default_format(root);
    let hour = |ns: i64| ns.div_euclid(HOUR_NS).saturating_mul(HOUR_NS);
    // (conId, epoch) -> kinds recorded.
    let mut streams: BTreeMap<(u32, u64), BTreeSet<u8>> = BTreeMap::new();
    for seg in list_segments(root, format, hour(since_ns), hour(now_ns))? {
        if let Stream::Kind(k) = seg.key.stream
            && super::convert::what_to_show(k).is_some()
            && !is_backfill_epoch(seg.key.epoch)
        {
            streams
                .entry((seg.key.instrument_id, seg.key.epoch))
                .or_default()
                .insert(k as u8);
        }
    }
    let con_ids: BTreeSet<u32> = streams.keys().map(|(c, _)| *c).collect();
    let mut out = Vec::new();
    for con_id in con_ids {
        let mut q = Query::new(con_id, since_ns, now_ns);
        q.kinds = vec![RecordKind::Gap];
        q.format = Some(format);
        let mut it = QueryIter::new(root, &q)?;
        loop {
            let rec = match it.next_record() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                // A damaged system block: its gaps are not seen (validate reports it).
                Err(QueryError::Damaged(d)) => {
                    tracing::warn!("backfill: {d}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(epoch) = it.cursor().map(|c| c.epoch) else {
                continue;
            };
            let gap = FoundGap {
                epoch,
                seq: rec.seq,
                rec,
            };
            for kind in streams.get(&(con_id, epoch)).into_iter().flatten() {
                if let Some(k) = RecordKind::from_u8(*kind) {
                    out.push((gap, con_id, k));
                }
            }
        }
    }
    out.sort_by_key(|(g, c, k)| (g.rec.ts_recv, g.epoch, g.seq, *c, *k as u8));
    Ok(out)
}

/// The whole seconds `[from, to)` of a gap record's interval, `None` when its times are not
/// known (a gap still open).
pub fn whole_seconds(gap: &Record) -> Option<(i64, i64)> {
    let (t0, t1) = (gap.body[2], gap.body[3]);
    if t0 <= 0 || t1 <= 0 || t0 == UNDEF_I64 || t1 == UNDEF_I64 {
        return None;
    }
    Some((t0.div_euclid(SEC_NS) + 1, t1.div_euclid(SEC_NS)))
}

/// A stream whose gap is not asked for: its key, the gap's times and its state
/// (unavailable with the reason, or filled with no tick of its own when other fills hold
/// every second of it).
pub type Unasked = (FillKey, i64, i64, FillState);

/// The jobs for the interrupted streams that have no fill state yet, with the contract to
/// ask for each (`contract_of`); `running`: the jobs still being filled. Gaps overlap (the session's and each subscription's): a
/// job asks only the seconds no other fill or job of its conId and kind holds (from the
/// start of the first such second to the end of the last; `store_fill` keeps out any held in
/// between). A stream whose seconds a job still being filled will hold gets nothing now (a
/// later scan decides). Streams whose gap has no whole second, no known end, or whose
/// seconds stored fills hold come back apart, to be stored as they are.
pub fn plan(
    found: &[(FoundGap, u32, RecordKind)],
    states: &FillStates,
    running: &[Job],
    contract_of: &dyn Fn(u32) -> Contract,
) -> (Vec<Job>, Vec<Unasked>) {
    let mut jobs: Vec<Job> = Vec::new();
    let mut unasked = Vec::new();
    for (gap, con_id, kind) in found {
        let key = FillKey {
            gap_epoch: gap.epoch,
            gap_seq: gap.seq,
            con_id: *con_id,
            kind: *kind,
        };
        if states.get(&key).is_some() || running.iter().any(|j| j.key == key) {
            continue;
        }
        let (t0, t1) = (gap.rec.body[2], gap.rec.body[3]);
        let Some((from_s, to_s)) = whole_seconds(&gap.rec) else {
            let why = "the gap's end time is not known".to_string();
            unasked.push((key, t0.max(0), t0.max(0), FillState::Unavailable { why }));
            continue;
        };
        if from_s >= to_s {
            let why = "within one second: IB's history (stamped to the second) cannot tell \
                       the lost ticks from those received"
                .to_string();
            unasked.push((key, t0, t1, FillState::Unavailable { why }));
            continue;
        }
        let gap_ns = [from_s * SEC_NS, to_s * SEC_NS];
        let stored = subtract(gap_ns, &states.covered(*con_id, *kind, &key));
        if stored.is_empty() {
            unasked.push((key, gap_ns[0], gap_ns[1], FillState::Filled));
            continue;
        }
        let asked: Vec<[i64; 2]> = jobs
            .iter()
            .chain(running)
            .filter(|j| j.key.con_id == *con_id && j.key.kind == *kind)
            .map(|j| [j.from_s * SEC_NS, j.to_s * SEC_NS])
            .collect();
        let left = subtract(gap_ns, &asked)
            .into_iter()
            .flat_map(|r| subtract(r, &states.covered(*con_id, *kind, &key)))
            .collect::<Vec<_>>();
        // Only seconds a job still being filled will hold: decided at a later scan, once
        // that job is stored.
        let (Some(first), Some(last)) = (left.first(), left.last()) else {
            continue;
        };
        jobs.push(Job {
            key,
            from_s: first[0].div_euclid(SEC_NS),
            to_s: (last[1] + SEC_NS - 1).div_euclid(SEC_NS),
            contract: contract_of(*con_id),
        });
    }
    (jobs, unasked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Format;
    use crate::storage::backfill::{FillRecord, store_fill};
    use crate::tickjson::NoStrings;
    use ib_stream_ipc::GapReason;

    fn gap(t0: i64, t1: i64) -> Record {
        let mut r = Record::new(RecordKind::Gap);
        r.tick_type = GapReason::Disconnected as u8;
        r.body = [10, 20, t0, t1];
        r
    }

    #[test]
    fn only_whole_seconds_inside_the_gap_are_asked() {
        // Last live tick at 100.2 s, first after the gap at 105.7 s: 101..105.
        assert_eq!(
            whole_seconds(&gap(100 * SEC_NS + 200_000_000, 105 * SEC_NS + 700_000_000)),
            Some((101, 105))
        );
        // Exactly on a second: that second's ticks may have been received live.
        assert_eq!(
            whole_seconds(&gap(100 * SEC_NS, 102 * SEC_NS)),
            Some((101, 102))
        );
        assert_eq!(whole_seconds(&gap(100 * SEC_NS, UNDEF_I64)), None);
        assert_eq!(whole_seconds(&gap(0, 5)), None);
    }

    #[test]
    fn planned_jobs_skip_streams_with_a_state_and_short_gaps_are_unavailable() {
        let mk = |seq, t0, t1| FoundGap {
            epoch: 7,
            seq,
            rec: gap(t0, t1),
        };
        let found = vec![
            (mk(1, 10 * SEC_NS, 20 * SEC_NS), 5, RecordKind::TbtLast),
            (mk(1, 10 * SEC_NS, 20 * SEC_NS), 5, RecordKind::TbtBidAsk),
            (
                mk(2, 30 * SEC_NS + 1, 30 * SEC_NS + 9),
                5,
                RecordKind::TbtLast,
            ),
        ];
        let contract = |c: u32| Contract {
            con_id: c as i32,
            ..Contract::default()
        };
        let (jobs, short) = plan(&found, &FillStates::default(), &[], &contract);
        assert_eq!(jobs.len(), 2);
        assert!(matches!(short[0].3, FillState::Unavailable { .. }));
        assert_eq!((jobs[0].from_s, jobs[0].to_s), (11, 20));
        assert_eq!(jobs[1].contract.con_id, 5);
        assert_eq!(short.len(), 1);
        assert_eq!(short[0].0.gap_seq, 2);
        // A second gap over the same time (a subscription's): nothing left to ask; one
        // reaching further: only the further part.
        let found = vec![
            (mk(1, 10 * SEC_NS, 20 * SEC_NS), 5, RecordKind::TbtLast),
            (mk(3, 10 * SEC_NS, 20 * SEC_NS), 5, RecordKind::TbtLast),
            (mk(4, 10 * SEC_NS, 25 * SEC_NS), 5, RecordKind::TbtLast),
        ];
        let (jobs, rest) = plan(&found, &FillStates::default(), &[], &contract);
        assert_eq!(jobs.len(), 2);
        assert_eq!(
            (jobs[1].key.gap_seq, jobs[1].from_s, jobs[1].to_s),
            (4, 20, 25)
        );
        assert!(rest.is_empty(), "gap 3 waits for gap 1's fill: {rest:?}");
        // Once gap 1's fill is stored, gap 3 has nothing left: filled by it.
        let dir = tempfile::tempdir().unwrap();
        let mut r = Record::mid_point(5, 12 * SEC_NS, 1);
        r.kind = RecordKind::TbtLast as u8;
        r.ts_recv = r.ts_event;
        let f = FillRecord::new(jobs[0].key, 11 * SEC_NS, 20 * SEC_NS, FillState::Filled);
        store_fill(dir.path(), &[Format::Binary], f, &[r], &NoStrings, 1).unwrap();
        let states = FillStates::load(dir.path()).unwrap();
        let (jobs, rest) = plan(&found, &states, &[], &contract);
        assert_eq!(jobs.len(), 1, "gap 4's further part: {jobs:?}");
        assert_eq!((rest[0].0.gap_seq, &rest[0].3), (3, &FillState::Filled));
    }
}
