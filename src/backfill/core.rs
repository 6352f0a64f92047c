//! The backfill's sans-IO core: fill jobs in, historical requests and finished fills out.
//! The caller owns the socket and the clock (a [`Duration`] since any origin).
//!
//! Each job pages its whole seconds `[from, to)` with a [`Pager`] (one request of a job open
//! at a time: the next page starts where the last one ended). Every request goes through one
//! [`PacedQueue`] for the session, so none breaks IB's pacing rules; an error is classified
//! ([`classify`]) and retried only when its kind says asking again can help (pacing
//! violations and gateway cancels back off; "no data", permissions and invalid requests
//! end the job's remaining range as missing, with the reason). A lost connection puts the
//! open pages back in the queue: they are asked again from the same second.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ib_stream_ipc::Record;
use ib_stream_tws::history::time::format_utc;
use ib_stream_tws::history::{
    HistErrorKind, HistKey, PacedQueue, PacingRules, Pager, Retry, Wake, classify,
};
use ib_stream_tws::{Contract, HistReply, HistRequest, HistTicks, HistoricalTicksRequest};

use super::convert::{SEC_NS, append_records, what_to_show};
use crate::storage::backfill::{FillKey, FillRecord, FillState};
use crate::tickjson::LocalStrings;

/// One fill to make: a gap's whole seconds `[from_s, to_s)` for one conId and kind.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// What it fills.
    pub key: FillKey,
    /// First second (Unix seconds).
    pub from_s: i64,
    /// End second (exclusive).
    pub to_s: i64,
    /// The contract to ask for.
    pub contract: Contract,
}

/// A job done: what to store.
#[derive(Debug)]
pub struct Finished {
    /// The fill state (counts set when stored).
    pub fill: FillRecord,
    /// The ticks, in IB's order.
    pub records: Vec<Record>,
    /// What their string ids mean.
    pub strings: LocalStrings,
}

/// What the caller must do.
#[derive(Debug)]
pub enum Action {
    /// Send this request.
    Send(Box<HistRequest>),
    /// Store this fill (`storage::backfill::store_fill`).
    Store(Box<Finished>),
}

/// The pacing and progress figures (for the status file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Jobs not finished.
    pub jobs_open: usize,
    /// Jobs finished.
    pub jobs_done: u64,
    /// Requests waiting in the paced queue (retries waiting their backoff included).
    pub queue_depth: usize,
    /// Requests sent.
    pub requests: u64,
    /// Pacing violations (162) received.
    pub violations: u64,
    /// Weight used in the current 10-minute window and its limit.
    pub budget_used: u32,
    /// The 10-minute limit.
    pub budget_max: u32,
    /// Requests open.
    pub open: u32,
    /// Requests still to send, estimated: per job, its remaining seconds at the seconds per
    /// page it has had so far (one page when it has had none), BID_ASK counting twice.
    pub remaining_weight: u64,
    /// Estimated seconds until the last of them is sent under the sliding 10-minute budget
    /// (what it has free goes at once, the rest as earlier requests leave the window).
    pub eta_s: u64,
}

#[derive(Debug)]
struct JobState {
    job: Job,
    what: &'static str,
    pager: Pager,
    records: Vec<Record>,
    strings: LocalStrings,
    /// Consecutive failures of the current page.
    attempts: u32,
    missing: Vec<[i64; 2]>,
    why: Option<String>,
    /// Ticks of the open page received so far (an answer may come in several messages).
    partial: Option<HistTicks>,
}

/// The backfill's state; see the module documentation.
#[derive(Debug)]
pub struct Backfill {
    rules: PacingRules,
    queue: PacedQueue<u64>,
    jobs: BTreeMap<u64, JobState>,
    keys: std::collections::HashSet<FillKey>,
    open: HashMap<i32, u64>,
    retries: Vec<(Duration, u64)>,
    next_job: u64,
    next_req_id: i32,
    per_page: i32,
    requests: u64,
    violations: u64,
    jobs_done: u64,
    /// Send times within the budget window, one entry per unit of weight (for the ETA).
    sent: std::collections::VecDeque<Duration>,
}

impl Backfill {
    /// A backfill under `rules`, numbering requests from `first_req_id`, pages of
    /// `per_page` ticks (IB's 1000 in production).
    pub fn new(rules: PacingRules, first_req_id: i32, per_page: i32) -> Backfill {
        Backfill {
            rules,
            queue: PacedQueue::new(rules),
            jobs: BTreeMap::new(),
            keys: Default::default(),
            open: HashMap::new(),
            retries: Vec::new(),
            next_job: 0,
            next_req_id: first_req_id.max(1),
            per_page: per_page.max(1),
            requests: 0,
            violations: 0,
            jobs_done: 0,
            sent: Default::default(),
        }
    }

    /// Adds a job; false when a job of the same key was added before (it is not asked twice
    /// in one run). A job of a kind without tick history, or with nothing to ask, finishes at
    /// once (as `unavailable`, or `filled` with no ticks).
    pub fn add(&mut self, job: Job, out: &mut Vec<Action>) -> bool {
        if !self.keys.insert(job.key) {
            return false;
        }
        let Some(what) = what_to_show(job.key.kind) else {
            let why = format!("{} has no tick history at IB", job.key.kind.name());
            self.finish_now(&job, FillState::Unavailable { why }, out);
            return true;
        };
        let id = self.next_job;
        self.next_job += 1;
        let state = JobState {
            pager: Pager::with_page_size(job.from_s, job.to_s, self.per_page),
            job,
            what,
            records: Vec::new(),
            strings: LocalStrings::default(),
            attempts: 0,
            missing: Vec::new(),
            why: None,
            partial: None,
        };
        self.jobs.insert(id, state);
        self.enqueue(id, out);
        true
    }

    fn finish_now(&mut self, job: &Job, state: FillState, out: &mut Vec<Action>) {
        self.jobs_done += 1;
        out.push(Action::Store(Box::new(Finished {
            fill: FillRecord::new(job.key, job.from_s * SEC_NS, job.to_s * SEC_NS, state),
            records: Vec::new(),
            strings: LocalStrings::default(),
        })));
    }

    /// Queues job `id`'s next page, or finishes it when its range is done.
    fn enqueue(&mut self, id: u64, out: &mut Vec<Action>) {
        let Some(j) = self.jobs.get(&id) else {
            return;
        };
        match j.pager.next_request() {
            Some(p) => {
                let key = HistKey::new(
                    j.job.key.con_id.to_string(),
                    j.job.contract.exchange.clone(),
                    j.what,
                    format!("{} {}", p.start, p.number_of_ticks),
                );
                self.queue.push(key, id);
            }
            None => self.finish(id, out),
        }
    }

    fn finish(&mut self, id: u64, out: &mut Vec<Action>) {
        let Some(j) = self.jobs.remove(&id) else {
            return;
        };
        self.jobs_done += 1;
        let (t0, t1) = (j.job.from_s * SEC_NS, j.job.to_s * SEC_NS);
        let why = j.why.unwrap_or_default();
        let state = if j.missing.is_empty() {
            FillState::Filled
        } else if j.records.is_empty() && j.missing == [[t0, t1]] {
            FillState::Unavailable { why }
        } else {
            FillState::Partial {
                missing: j.missing,
                why,
            }
        };
        out.push(Action::Store(Box::new(Finished {
            fill: FillRecord::new(j.job.key, t0, t1, state),
            records: j.records,
            strings: j.strings,
        })));
    }

    /// Sends what the rules allow at `now` (retries whose backoff is over first go back to
    /// the queue).
    pub fn poll(&mut self, now: Duration, out: &mut Vec<Action>) {
        let (due, later): (Vec<_>, Vec<_>) = self.retries.drain(..).partition(|(t, _)| *t <= now);
        self.retries = later;
        for (_, id) in due {
            self.enqueue(id, out);
        }
        let window = self.rules.budget_window;
        while self
            .sent
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= window)
        {
            self.sent.pop_front();
        }
        while let Some((key, id)) = self.queue.pop_ready(now) {
            for _ in 0..key.weight() {
                self.sent.push_back(now);
            }
            let Some(j) = self.jobs.get(&id) else {
                self.queue.complete();
                continue;
            };
            let Some(p) = j.pager.next_request() else {
                self.queue.complete();
                continue;
            };
            let req_id = self.next_req_id;
            self.next_req_id = self.next_req_id.checked_add(1).unwrap_or(1);
            self.open.insert(req_id, id);
            self.requests += 1;
            tracing::debug!(
                req_id,
                start = p.start,
                n = p.number_of_ticks,
                what = j.what,
                "historical request"
            );
            out.push(Action::Send(Box::new(HistRequest::Ticks(
                HistoricalTicksRequest {
                    req_id,
                    contract: j.job.contract.clone(),
                    start: format_utc(p.start),
                    end: String::new(),
                    number_of_ticks: p.number_of_ticks,
                    what_to_show: j.what.to_string(),
                    use_rth: false,
                    ignore_size: false,
                },
            ))));
        }
    }

    /// When to call [`Backfill::poll`] again: `None` when only an answer can move things.
    pub fn next_wake(&self, now: Duration) -> Option<Duration> {
        let retry = self.retries.iter().map(|(t, _)| *t).min();
        let queued = match self.queue.next_wake(now) {
            Some(Wake::Now) => Some(now),
            Some(Wake::At(t, _)) => Some(t),
            Some(Wake::OnCompletion) | None => None,
        };
        match (retry, queued) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// An answer (or part of one) from the gateway. Answers to requests this core did not
    /// send are ignored (false).
    pub fn on_reply(&mut self, now: Duration, reply: HistReply, out: &mut Vec<Action>) -> bool {
        let HistReply::Ticks {
            req_id,
            ticks,
            done,
        } = reply
        else {
            return false;
        };
        let Some(&id) = self.open.get(&req_id) else {
            return false;
        };
        let Some(j) = self.jobs.get_mut(&id) else {
            return false;
        };
        let ticks = match j.partial.take() {
            None => ticks,
            Some(mut acc) => {
                extend(&mut acc, ticks);
                acc
            }
        };
        if !done {
            j.partial = Some(ticks);
            return true;
        }
        self.open.remove(&req_id);
        self.queue.complete();
        let times: Vec<i64> = (0..ticks.len()).filter_map(|i| ticks.time(i)).collect();
        match j.pager.on_page(&times) {
            Ok(keep) => {
                j.attempts = 0;
                append_records(
                    &ticks,
                    keep,
                    j.job.key.con_id,
                    j.job.key.kind,
                    &mut j.strings,
                    &mut j.records,
                );
                self.enqueue(id, out);
            }
            Err(e) => {
                let why = format!("bad answer: {e}");
                self.give_up(id, why, out);
            }
        }
        self.poll(now, out);
        true
    }

    /// An error for `req_id` (162, 366, 10187, ...). Errors of requests this core did not
    /// send are ignored (false).
    pub fn on_error(
        &mut self,
        now: Duration,
        req_id: i32,
        code: i32,
        text: &str,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(id) = self.open.remove(&req_id) else {
            return false;
        };
        self.queue.complete();
        let kind = classify(code, text);
        if kind == HistErrorKind::PacingViolation {
            self.violations += 1;
        }
        let Some(j) = self.jobs.get_mut(&id) else {
            return true;
        };
        j.partial = None;
        j.attempts += 1;
        match kind.retry(j.attempts) {
            Retry::After(d) => {
                tracing::info!(code, text, "historical request {req_id}: retrying in {d:?}");
                self.retries.push((now + d, id));
            }
            Retry::Never => {
                tracing::info!(
                    code,
                    text,
                    "historical request {req_id}: giving up the rest"
                );
                self.give_up(id, format!("{}: {code} {text}", kind.name()), out);
            }
        }
        self.poll(now, out);
        true
    }

    /// The rest of job `id` cannot be filled: it is missing, and the job finishes.
    fn give_up(&mut self, id: u64, why: String, out: &mut Vec<Action>) {
        if let Some(j) = self.jobs.get_mut(&id) {
            let from = j.pager.cursor().max(j.job.from_s);
            if from < j.job.to_s {
                j.missing.push([from * SEC_NS, j.job.to_s * SEC_NS]);
            }
            j.why.get_or_insert(why);
        }
        self.finish(id, out);
    }

    /// The connection was lost: open pages go back to the queue (asked again from the
    /// same second; nothing of them was kept).
    pub fn on_disconnect(&mut self, out: &mut Vec<Action>) {
        let open: Vec<u64> = self.open.drain().map(|(_, id)| id).collect();
        for id in open {
            self.queue.complete();
            if let Some(j) = self.jobs.get_mut(&id) {
                j.partial = None;
            }
            self.enqueue(id, out);
        }
    }

    /// The jobs not finished.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values().map(|j| &j.job)
    }

    /// True when nothing is left to do.
    pub fn is_idle(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The figures at `now`.
    pub fn progress(&self, now: Duration) -> Progress {
        let (stats, depth) = self.queue.stats(now);
        // Seconds per page over every job that has had one: the estimate for all of them.
        let (covered, pages) = self.jobs.values().fold((0i64, 0u64), |(c, p), j| {
            (
                c + (j.pager.cursor() - j.job.from_s).max(0),
                p + u64::from(j.pager.pages()),
            )
        });
        let secs_per_page = if pages == 0 || covered == 0 {
            1.0
        } else {
            covered as f64 / pages as f64
        };
        let remaining_weight: u64 = self
            .jobs
            .values()
            .map(|j| {
                let left = (j.job.to_s - j.pager.cursor()).max(0) as f64;
                let pages = ((left / secs_per_page).ceil() as u64).max(1);
                pages * if j.what == "BID_ASK" { 2 } else { 1 }
            })
            .sum();
        Progress {
            jobs_open: self.jobs.len(),
            jobs_done: self.jobs_done,
            queue_depth: depth + self.retries.len(),
            requests: self.requests,
            violations: self.violations,
            budget_used: stats.budget_used,
            budget_max: stats.budget_max,
            open: stats.open,
            remaining_weight,
            eta_s: self.budget_eta(now, remaining_weight).as_secs(),
        }
    }

    /// When the last of `weight` more units of requests can go under the sliding budget:
    /// unit `j` goes when the unit sent `budget` units before it leaves the window.
    fn budget_eta(&self, now: Duration, weight: u64) -> Duration {
        let window = self.rules.budget_window;
        let budget = self.rules.budget_max.max(1) as usize;
        let mut times: Vec<Duration> = self
            .sent
            .iter()
            .copied()
            .filter(|t| now.saturating_sub(*t) < window)
            .collect();
        let already = times.len();
        for _ in 0..weight {
            let n = times.len();
            let t = if n < budget {
                now
            } else {
                (times[n - budget] + window).max(now)
            };
            times.push(t);
        }
        times
            .get(already..)
            .and_then(|f| f.last())
            .map_or(Duration::ZERO, |t| t.saturating_sub(now))
    }
}

fn extend(acc: &mut HistTicks, more: HistTicks) {
    match (acc, more) {
        (HistTicks::MidPoint(a), HistTicks::MidPoint(b)) => a.extend(b),
        (HistTicks::BidAsk(a), HistTicks::BidAsk(b)) => a.extend(b),
        (HistTicks::Last(a), HistTicks::Last(b)) => a.extend(b),
        // A different kind in one answer: keep what came first.
        _ => {}
    }
}
