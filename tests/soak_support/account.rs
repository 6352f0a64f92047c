//! The accounting: every tick the simulator sent (its send log) against storage (read with
//! the storage query library), `tws-sim expected` for the exact values, and the gap records
//! for what storage does not hold. Also the clients' resume check.
//!
//! Rules (docs/RELIABILITY.md says them in prose):
//! - A subscription instance is one (client id, request id) run of the send log starting at
//!   tick k = 0; its contract and kind come from the simulator's `stats` (polled during the
//!   run), else from the engine's stored subscription records with that request id.
//! - A stored tick of (conId, kind) belongs to the latest instance of that stream that had
//!   started sending by the tick's receive time. An instance's stored ticks are cut into runs
//!   with no possible loss inside (same epoch, no gap record between their sequences); a run
//!   is placed at the first k (from the instance's next unmatched one) where every tick equals
//!   what was sent and was received after it was sent. A run that fits nowhere starts with a
//!   duplicate (equal to the last matched tick) or an unexplained tick.
//! - A sent tick not stored is "in a gap" when a gap record of the same format (any reason;
//!   system-wide, or its own contract's) has `t0 - slack <= send time <= t1`, where slack is the largest
//!   send-to-receive latency of the run's stored ticks (the send log is stamped just before
//!   the write, so a tick may sit in the simulator or the kernel that long before the engine
//!   sees it). Otherwise it is lost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Command;

use ib_stream::storage::Format;
use ib_stream::storage::query::{Query, QueryIter};
use ib_stream::tickjson::{StringLookup, parse_fixed};
use ib_stream_ipc::{GapReason, PRICE_SCALE, Record, RecordKind, SIZE_SCALE};

use super::clients::{ClientLog, Seen};
use super::system::{SIM, SubsSeen};

/// The largest send-to-receive latency the run may show (it is the gap rule's slack).
pub const MATCH_WINDOW_NS: i64 = 5_000_000_000;

/// One send-log line.
#[derive(Clone, Copy, Debug)]
pub struct SendLine {
    pub client: i32,
    pub req: i32,
    pub first_k: u64,
    pub count: u64,
    pub ns: i64,
}

pub fn read_send_log(path: &Path) -> Vec<SendLine> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 5 {
                return None;
            }
            Some(SendLine {
                client: f[0].parse().ok()?,
                req: f[1].parse().ok()?,
                first_k: f[2].parse().ok()?,
                count: f[3].parse().ok()?,
                ns: f[4].parse().ok()?,
            })
        })
        .collect()
}

/// One subscription instance at the simulator.
#[derive(Clone, Debug)]
pub struct Instance {
    pub client: i32,
    pub req: i32,
    pub start_ns: i64,
    /// Send time of tick k.
    pub send_ns: Vec<i64>,
    pub stream: Option<(u32, RecordKind)>,
}

/// Cuts the send log into instances; `anomalies` counts lines that skip or repeat ks.
pub fn instances(lines: &[SendLine], anomalies: &mut u64) -> Vec<Instance> {
    let mut out: Vec<Instance> = Vec::new();
    let mut open: HashMap<(i32, i32), usize> = HashMap::new();
    for l in lines {
        let key = (l.client, l.req);
        let idx = match open.get(&key) {
            Some(&i) if l.first_k != 0 => i,
            _ => {
                out.push(Instance {
                    client: l.client,
                    req: l.req,
                    start_ns: l.ns,
                    send_ns: Vec::new(),
                    stream: None,
                });
                open.insert(key, out.len() - 1);
                out.len() - 1
            }
        };
        let inst = &mut out[idx];
        if l.first_k != inst.send_ns.len() as u64 {
            *anomalies += 1;
            continue;
        }
        inst.send_ns
            .extend(std::iter::repeat_n(l.ns, l.count as usize));
    }
    out
}

pub fn sim_kind(name: &str) -> Option<RecordKind> {
    match name {
        "BidAsk" => Some(RecordKind::TbtBidAsk),
        "Last" => Some(RecordKind::TbtLast),
        "AllLast" => Some(RecordKind::TbtAllLast),
        "MidPoint" => Some(RecordKind::TbtMidPoint),
        _ => None,
    }
}

fn sim_kind_name(k: RecordKind) -> &'static str {
    match k {
        RecordKind::TbtBidAsk => "BidAsk",
        RecordKind::TbtLast => "Last",
        RecordKind::TbtAllLast => "AllLast",
        _ => "MidPoint",
    }
}

/// A subscription record the engine stored: (ts_recv, conId, kind, request id).
pub type SubRecord = (i64, u32, RecordKind, i32);

/// Names each instance's stream; returns how many instances stayed unnamed.
pub fn attribute(insts: &mut [Instance], seen: &SubsSeen, subs: &[SubRecord]) -> u64 {
    let mut unnamed = 0;
    for inst in insts.iter_mut() {
        // The first poll after the instance started, while it still ran (its last send plus
        // a poll period): a later poll may see a later instance under the same ids.
        let end_ns = inst.send_ns.last().copied().unwrap_or(inst.start_ns) + 200_000_000;
        let from_stats = seen.get(&(inst.client, inst.req)).and_then(|list| {
            let s = list
                .iter()
                .find(|s| s.at_ns >= inst.start_ns && s.at_ns <= end_ns)?;
            Some((s.con_id, sim_kind(&s.kind)?))
        });
        let from_storage = || {
            subs.iter()
                .filter(|s| s.3 == inst.req && s.0 <= inst.start_ns)
                .max_by_key(|s| s.0)
                .map(|s| (s.1, s.2))
        };
        inst.stream = from_stats.or_else(from_storage);
        if inst.stream.is_none() {
            unnamed += 1;
        }
    }
    unnamed
}

/// The values a tick carries, as the accounting compares them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vals {
    pub nums: [i64; 4],
    pub attrs: u16,
    pub exchange: String,
    pub conditions: String,
}

fn fixed(v: &serde_json::Value, scale: i64) -> i64 {
    v.as_str()
        .and_then(|s| parse_fixed(s, scale))
        .unwrap_or(i64::MIN)
}

/// `tws-sim expected` for one stream.
pub fn expected(con_id: u32, kind: RecordKind, count: usize) -> Vec<Vals> {
    if count == 0 {
        return Vec::new();
    }
    let out = Command::new(SIM)
        .args(["expected", "--con-id", &con_id.to_string()])
        .args(["--tick-type", sim_kind_name(kind)])
        .args(["--count", &count.to_string()])
        .output()
        .expect("tws-sim expected");
    assert!(out.status.success(), "tws-sim expected failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let b = |k: &str| v[k].as_bool().unwrap_or(false);
            match kind {
                RecordKind::TbtBidAsk => Vals {
                    nums: [
                        fixed(&v["bid_price"], PRICE_SCALE),
                        fixed(&v["ask_price"], PRICE_SCALE),
                        fixed(&v["bid_size"], SIZE_SCALE),
                        fixed(&v["ask_size"], SIZE_SCALE),
                    ],
                    attrs: u16::from(b("bid_past_low")) << 8 | u16::from(b("ask_past_high")) << 9,
                    exchange: String::new(),
                    conditions: String::new(),
                },
                RecordKind::TbtMidPoint => Vals {
                    nums: [fixed(&v["mid_point"], PRICE_SCALE), 0, 0, 0],
                    attrs: 0,
                    exchange: String::new(),
                    conditions: String::new(),
                },
                _ => Vals {
                    nums: [
                        fixed(&v["price"], PRICE_SCALE),
                        fixed(&v["size"], SIZE_SCALE),
                        0,
                        0,
                    ],
                    attrs: u16::from(b("past_limit")) << 8 | u16::from(b("unreported")) << 9,
                    exchange: v["exchange"].as_str().unwrap_or("").to_string(),
                    conditions: v["conditions"].as_str().unwrap_or("").to_string(),
                },
            }
        })
        .collect()
}

fn stored_vals(r: &Record, strings: &dyn StringLookup) -> Vals {
    let text = |id: u32| {
        if id == 0 {
            return String::new();
        }
        strings
            .lookup(id)
            .map(|b| String::from_utf8_lossy(b).to_string())
            .unwrap_or_else(|| format!("<unknown string {id}>"))
    };
    let attrs = r.flags & 0x0300;
    match r.kind() {
        Some(RecordKind::TbtLast | RecordKind::TbtAllLast) => Vals {
            nums: [r.body[0], r.body[1], 0, 0],
            attrs,
            exchange: text(r.body[2] as u32),
            conditions: text((r.body[2] >> 32) as u32),
        },
        Some(RecordKind::TbtMidPoint) => Vals {
            nums: [r.body[0], 0, 0, 0],
            attrs: 0,
            exchange: String::new(),
            conditions: String::new(),
        },
        _ => Vals {
            nums: r.body,
            attrs,
            exchange: String::new(),
            conditions: String::new(),
        },
    }
}

/// One stored tick.
#[derive(Clone, Debug)]
pub struct Stored {
    pub epoch: u64,
    pub seq: u64,
    pub ts_recv: i64,
    pub con_id: u32,
    pub kind: RecordKind,
    pub vals: Vals,
}

/// One stored gap record.
#[derive(Clone, Debug)]
pub struct GapRec {
    pub epoch: u64,
    /// The instrument it covers, or 0 for a system-wide gap (the engine's session gaps, the
    /// recorder's); a subscription's own gap after a reconnect names its conId.
    pub instrument: u32,
    /// The gap record's own sequence (the engine's gaps are ring records; the recorder's
    /// carry their first lost sequence).
    pub seq: u64,
    pub reason: String,
    pub first: u64,
    pub last: i64,
    pub t0: i64,
    pub t1: i64,
}

/// Everything one format holds about the soak's streams.
#[derive(Debug, Default)]
pub struct Storage {
    pub ticks: Vec<Stored>,
    pub gaps: Vec<GapRec>,
    pub subs: Vec<SubRecord>,
}

pub fn read_storage(root: &Path, format: Format, streams: &[(u32, RecordKind)]) -> Storage {
    let mut st = Storage::default();
    let mut cons: Vec<u32> = streams.iter().map(|s| s.0).collect();
    cons.dedup();
    let mut gap_keys = HashSet::new();
    for con in &cons {
        let mut kinds: Vec<RecordKind> = streams
            .iter()
            .filter(|s| s.0 == *con)
            .map(|s| s.1)
            .collect();
        kinds.push(RecordKind::Subscription);
        // Every contract's query: system-wide gaps come with each (deduplicated below) and
        // a subscription's own gaps only with its contract's.
        kinds.push(RecordKind::Gap);
        let q = Query {
            kinds,
            format: Some(format),
            ..Query::new(*con, 0, i64::MAX)
        };
        let mut it = QueryIter::new(root, &q).expect("query");
        while let Some(r) = it.next_record().expect("query read") {
            let epoch = it.cursor().expect("cursor after a record").epoch;
            match r.kind() {
                Some(RecordKind::Gap) if gap_keys.insert((epoch, r.seq, r.ts_recv)) => {
                    st.gaps.push(GapRec {
                        epoch,
                        instrument: r.instrument_id,
                        seq: r.seq,
                        reason: GapReason::from_u8(r.tick_type)
                            .map_or("?".into(), |g| format!("{g:?}")),
                        first: r.body[0] as u64,
                        last: r.body[1],
                        t0: r.body[2],
                        t1: r.body[3],
                    });
                }
                Some(RecordKind::Subscription) => {
                    if let Some(k) = RecordKind::from_u8(r.body[0] as u8) {
                        st.subs
                            .push((r.ts_recv, r.instrument_id, k, r.body[2] as i32));
                    }
                }
                Some(k) if k.is_market_data() => st.ticks.push(Stored {
                    epoch,
                    seq: r.seq,
                    ts_recv: r.ts_recv,
                    con_id: r.instrument_id,
                    kind: k,
                    vals: stored_vals(&r, it.strings()),
                }),
                _ => {}
            }
        }
    }
    st
}

/// The verdict for one format.
#[derive(Debug, Default)]
pub struct Account {
    pub format: &'static str,
    pub instances: usize,
    pub unnamed_instances: u64,
    pub send_log_anomalies: u64,
    pub ticks_sent: u64,
    pub stored: u64,
    pub in_gaps: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub seq_duplicates: u64,
    pub unexplained: u64,
    pub covered_by: BTreeMap<String, u64>,
    pub slack_ns: i64,
    pub latency_p50_ns: i64,
    pub gaps: usize,
    pub examples: Vec<String>,
}

impl Account {
    pub fn is_ok(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.seq_duplicates == 0
            && self.unexplained == 0
            && self.unnamed_instances == 0
            && self.send_log_anomalies == 0
    }
}

/// Whether `check_gaps` is off: only for proving by hand that the accounting can fail
/// (`IB_STREAM_SOAK_IGNORE_GAPS=1` must make a run with faults fail).
pub fn gaps_ignored() -> bool {
    std::env::var("IB_STREAM_SOAK_IGNORE_GAPS").is_ok_and(|v| v == "1")
}

pub fn account(
    format: &'static str,
    insts: &[Instance],
    storage: &Storage,
    expected: &HashMap<(u32, RecordKind), Vec<Vals>>,
) -> Account {
    let mut a = Account {
        format,
        instances: insts.len(),
        gaps: storage.gaps.len(),
        ..Account::default()
    };
    // Per (epoch, seq) uniqueness.
    let mut seqs = HashSet::new();
    for t in &storage.ticks {
        if !seqs.insert((t.epoch, t.seq)) {
            a.seq_duplicates += 1;
            if a.examples.len() < 10 {
                a.examples
                    .push(format!("duplicate seq {} in epoch {:016x}", t.seq, t.epoch));
            }
        }
    }
    // Instances by stream, in start order.
    let mut by_stream: HashMap<(u32, RecordKind), Vec<usize>> = HashMap::new();
    for (i, inst) in insts.iter().enumerate() {
        a.ticks_sent += inst.send_ns.len() as u64;
        if let Some(s) = inst.stream {
            by_stream.entry(s).or_default().push(i);
        }
    }
    let mut matched: Vec<Vec<bool>> = insts.iter().map(|i| vec![false; i.send_ns.len()]).collect();
    let mut next_k: Vec<usize> = vec![0; insts.len()];
    let mut last_match: Vec<Option<usize>> = vec![None; insts.len()];
    let mut latencies: Vec<i64> = Vec::new();
    let mut ticks: Vec<&Stored> = storage.ticks.iter().collect();
    ticks.sort_by_key(|t| (t.con_id, t.kind as u8, t.ts_recv, t.epoch, t.seq));
    let mut seen_seq = HashSet::new();
    ticks.retain(|t| seen_seq.insert((t.epoch, t.seq))); // repeats counted above
    // Runs: consecutive stored ticks of one stream and instance with no possible loss
    // between them (same epoch, no gap record between their sequences).
    let mut gaps_by_epoch: HashMap<u64, Vec<&GapRec>> = HashMap::new();
    for g in &storage.gaps {
        gaps_by_epoch.entry(g.epoch).or_default().push(g);
    }
    let loss_between = |a: &Stored, b: &Stored| {
        a.epoch != b.epoch
            || gaps_by_epoch.get(&a.epoch).is_some_and(|gs| {
                gs.iter().any(|g| {
                    (a.seq < g.seq && g.seq <= b.seq)
                        || (g.first > 0 && g.first <= b.seq && g.last >= a.seq as i64)
                })
            })
    };
    let instance_of = |t: &Stored| {
        let list = by_stream
            .get(&(t.con_id, t.kind))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let pos = list.partition_point(|&i| insts[i].start_ns <= t.ts_recv);
        pos.checked_sub(1).and_then(|p| list.get(p)).copied()
    };
    let mut i = 0;
    while i < ticks.len() {
        let t = ticks[i];
        let stream = (t.con_id, t.kind);
        let Some(j) = instance_of(t) else {
            a.unexplained += 1;
            if a.examples.len() < 10 {
                a.examples.push(format!(
                    "stored tick before any instance of {stream:?}: seq {} ts {}",
                    t.seq, t.ts_recv
                ));
            }
            i += 1;
            continue;
        };
        let mut end = i + 1;
        while end < ticks.len()
            && (ticks[end].con_id, ticks[end].kind) == stream
            && instance_of(ticks[end]) == Some(j)
            && !loss_between(ticks[end - 1], ticks[end])
        {
            end += 1;
        }
        let run = &ticks[i..end];
        let exp = &expected[&stream];
        let inst = &insts[j];
        let n = inst.send_ns.len();
        // The first k at which the whole run lines up with what was sent, values exact and
        // each tick received after it was sent.
        let fits = |k0: usize| {
            k0 + run.len() <= n
                && run
                    .iter()
                    .enumerate()
                    .all(|(o, r)| exp[k0 + o] == r.vals && inst.send_ns[k0 + o] <= r.ts_recv)
        };
        let start = next_k[j];
        match (start..n)
            .take_while(|&k| inst.send_ns[k] <= t.ts_recv)
            .find(|&k| fits(k))
        {
            Some(k0) => {
                for (o, r) in run.iter().enumerate() {
                    matched[j][k0 + o] = true;
                    latencies.push(r.ts_recv - inst.send_ns[k0 + o]);
                }
                a.stored += run.len() as u64;
                next_k[j] = k0 + run.len();
                last_match[j] = Some(next_k[j] - 1);
            }
            None => {
                // No alignment: say which tick breaks it (a repeat of the last matched
                // tick is a duplicate, anything else unexplained) and go on after it.
                let dup = last_match[j].is_some_and(|k| exp[k] == t.vals);
                if dup {
                    a.duplicates += 1;
                } else {
                    a.unexplained += 1;
                }
                if a.examples.len() < 10 {
                    a.examples.push(format!(
                        "{} {stream:?} seq {} epoch {:016x} ts {} (run of {}) in instance (client {}, req {}) from k {}: {:?}",
                        if dup { "duplicate" } else { "unexplained" },
                        t.seq, t.epoch, t.ts_recv, run.len(), inst.client, inst.req, start, t.vals
                    ));
                }
                i += 1;
                continue;
            }
        }
        i = end;
    }
    latencies.sort_unstable();
    a.slack_ns = latencies.last().copied().unwrap_or(0);
    a.latency_p50_ns = latencies.get(latencies.len() / 2).copied().unwrap_or(0);
    let ignore = gaps_ignored();
    for (j, inst) in insts.iter().enumerate() {
        for (k, &ns) in inst.send_ns.iter().enumerate() {
            if matched[j][k] {
                continue;
            }
            let cover = if ignore {
                None
            } else {
                storage.gaps.iter().find(|g| {
                    let ours = g.instrument == 0
                        || inst.stream.is_some_and(|(con, _)| con == g.instrument);
                    ours && g.t0 - a.slack_ns <= ns && ns <= g.t1
                })
            };
            match cover {
                Some(g) => {
                    a.in_gaps += 1;
                    *a.covered_by.entry(g.reason.clone()).or_default() += 1;
                }
                None => {
                    a.lost += 1;
                    if a.lost == 1 {
                        // The gaps near the first loss, to say what was expected to cover it.
                        for g in storage
                            .gaps
                            .iter()
                            .filter(|g| (g.t0 - ns).abs() < 30_000_000_000)
                        {
                            a.examples.push(format!(
                                "gap near the first loss: {} epoch {:016x} seqs {}..={} t0 {} t1 {}",
                                g.reason, g.epoch, g.first, g.last, g.t0, g.t1
                            ));
                        }
                    }
                    if a.examples.len() < 20 {
                        a.examples.push(format!(
                            "lost: {:?} (client {}, req {}) k {k} sent at {ns}, in no gap",
                            inst.stream, inst.client, inst.req
                        ));
                    }
                }
            }
        }
    }
    a
}

/// The verdict on one resuming client.
#[derive(Debug, Default)]
pub struct ClientAccount {
    pub name: String,
    pub ticks: u64,
    pub connects: u64,
    pub resumed: u64,
    pub segments: u64,
    pub owed: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub unannounced_epoch_changes: u64,
    pub examples: Vec<String>,
}

impl ClientAccount {
    pub fn is_ok(&self) -> bool {
        self.missing == 0 && self.duplicates == 0 && self.unannounced_epoch_changes == 0
    }
}

#[derive(Default)]
struct Segment {
    epoch: Option<u64>,
    seqs: Vec<u64>,
    gaps: Vec<(u64, u64)>,
}

/// Checks a client against storage: within each stretch of one ring epoch, every stored tick
/// of its contract and kinds between the first and the last sequence it saw was delivered
/// once, or inside a gap message it got.
pub fn check_client(log: &ClientLog, storage: &Storage) -> ClientAccount {
    let mut c = ClientAccount {
        name: log.name.clone(),
        resumed: log.resumed,
        ..ClientAccount::default()
    };
    let name_of = |k: RecordKind| k.name().to_string();
    let mut index: HashMap<(u64, String, i64), u64> = HashMap::new();
    let mut per_epoch: HashMap<u64, Vec<u64>> = HashMap::new();
    for t in &storage.ticks {
        if t.con_id != log.con_id || !log.kinds.contains(&name_of(t.kind)) {
            continue;
        }
        index.insert((t.seq, name_of(t.kind), t.ts_recv / 1000), t.epoch);
        per_epoch.entry(t.epoch).or_default().push(t.seq);
    }
    for v in per_epoch.values_mut() {
        v.sort_unstable();
        v.dedup();
    }
    let mut seg = Segment::default();
    let mut marked = false;
    let close = |seg: &mut Segment, c: &mut ClientAccount| {
        let s = std::mem::take(seg);
        let Some(e) = s.epoch else { return };
        c.segments += 1;
        let got: HashSet<u64> = s.seqs.iter().copied().collect();
        c.duplicates += (s.seqs.len() - got.len()) as u64;
        let (lo, hi) = (
            *s.seqs.iter().min().unwrap_or(&0),
            *s.seqs.iter().max().unwrap_or(&0),
        );
        for &seq in per_epoch.get(&e).map(Vec::as_slice).unwrap_or(&[]) {
            if seq < lo || seq > hi {
                continue;
            }
            c.owed += 1;
            if got.contains(&seq) || s.gaps.iter().any(|&(f, l)| f <= seq && seq <= l) {
                continue;
            }
            c.missing += 1;
            if c.examples.len() < 10 {
                c.examples
                    .push(format!("owed seq {seq} of epoch {e:016x} never delivered"));
            }
        }
    };
    for s in &log.seen {
        match s {
            Seen::Connect { .. } => c.connects += 1,
            Seen::EpochMark(_) => {
                close(&mut seg, &mut c);
                marked = true;
            }
            Seen::Gap { first, last, .. } => seg.gaps.push((*first, *last)),
            Seen::Tick {
                seq,
                st_us,
                cid,
                tt,
            } => {
                c.ticks += 1;
                if *cid != log.con_id {
                    continue;
                }
                let epoch = index.get(&(*seq, tt.clone(), *st_us)).copied();
                if let (Some(e), Some(cur)) = (epoch, seg.epoch)
                    && e != cur
                {
                    close(&mut seg, &mut c);
                    if !marked {
                        c.unannounced_epoch_changes += 1;
                        if c.examples.len() < 10 {
                            c.examples.push(format!(
                                "epoch {cur:016x} -> {e:016x} at seq {seq} with no writer_restart / resume_unavailable"
                            ));
                        }
                    }
                }
                if epoch.is_some() {
                    marked = false;
                    if seg.epoch.is_none() {
                        seg.epoch = epoch;
                    }
                }
                seg.seqs.push(*seq);
            }
        }
    }
    close(&mut seg, &mut c);
    c
}
