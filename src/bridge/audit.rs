//! `ib-stream stream-audit`: reads an environment's whole JetStream stream and says whether
//! it tells the ring's story once: every record of a run once and in order, a hole only where
//! the bridge published one. Operators run it after an incident; tests/nats_hosts.rs runs it
//! after every fault to prove a restarted bridge published nothing twice.
//!
//! [`Audit`] is the sans-IO tally (messages in, a [`Report`] out); [`run`] feeds it from an
//! ephemeral consumer over the stream as it was when the audit started.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;

use super::wire::{self, Body, Msg};

/// `ib-stream stream-audit` options.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// NATS server(s), comma separated.
    #[arg(
        long,
        env = "IB_STREAM_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Stream subjects' environment token (default: the environment's name).
    #[arg(long, env = "IB_STREAM_NATS_ENV")]
    pub stream_env: Option<String>,
}

/// One run's records as the stream holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunTally {
    /// Ring sequence of the first record.
    pub first: u64,
    /// Ring sequence of the last record (or hole end).
    pub last: u64,
    /// Records held.
    pub records: u64,
    /// Records whose sequence the stream already held earlier (published twice).
    pub duplicates: u64,
    /// Ring sequences the bridge declared lost (hole messages), counted.
    pub declared_lost: u64,
    /// Ring-sequence ranges missing with no hole message covering them.
    pub undeclared: Vec<(u64, u64)>,
}

impl RunTally {
    fn record(&mut self, seq: u64) {
        if self.records == 0 && self.last == 0 {
            self.first = seq;
        } else if seq <= self.last {
            self.duplicates += 1;
            return;
        } else if seq > self.last + 1 {
            self.undeclared.push((self.last + 1, seq - 1));
        }
        self.records += 1;
        self.last = seq;
    }
}

/// What the stream holds, summed up.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Stream name.
    pub stream: String,
    /// Messages read.
    pub messages: u64,
    /// Messages that did not decode.
    pub undecodable: u64,
    /// Stream sequences missing inside what was read (retention, or a lost message).
    pub stream_seq_missing: u64,
    /// Per run (epoch in hex), in the order the runs appear.
    pub runs: BTreeMap<String, RunTally>,
    /// Strings messages whose ids the run already had.
    pub string_duplicates: u64,
}

impl Report {
    /// The stream tells each run's story once: nothing twice, nothing missing undeclared.
    pub fn is_clean(&self) -> bool {
        self.undecodable == 0
            && self.string_duplicates == 0
            && self
                .runs
                .values()
                .all(|r| r.duplicates == 0 && r.undeclared.is_empty())
    }
}

/// The sans-IO tally: feed messages in stream order.
#[derive(Debug, Default)]
pub struct Audit {
    report: Report,
    last_stream_seq: u64,
    /// Per run: the next string id expected.
    next_string: BTreeMap<u64, u32>,
}

impl Audit {
    /// An audit of stream `name`.
    pub fn new(name: &str) -> Audit {
        Audit {
            report: Report {
                stream: name.to_owned(),
                ..Report::default()
            },
            ..Audit::default()
        }
    }

    /// The message at `stream_seq` (`None`: it did not decode).
    pub fn feed(&mut self, stream_seq: u64, msg: Option<&Msg>) {
        let r = &mut self.report;
        r.messages += 1;
        if self.last_stream_seq > 0 && stream_seq > self.last_stream_seq + 1 {
            r.stream_seq_missing += stream_seq - self.last_stream_seq - 1;
        }
        self.last_stream_seq = self.last_stream_seq.max(stream_seq);
        let Some(msg) = msg else {
            r.undecodable += 1;
            return;
        };
        let key = format!("{:016x}", msg.epoch);
        match &msg.body {
            Body::Record(rec) => r.runs.entry(key).or_default().record(rec.seq),
            Body::Records(rs) => {
                let t = r.runs.entry(key).or_default();
                for rec in rs {
                    t.record(rec.seq);
                }
            }
            Body::Hole { first, last, .. } => {
                let t = r.runs.entry(key).or_default();
                if t.records == 0 && t.last == 0 {
                    t.first = *first;
                } else if *first > t.last + 1 {
                    t.undeclared.push((t.last + 1, first - 1));
                }
                t.declared_lost += last.saturating_sub(*first) + 1;
                t.last = t.last.max(*last);
            }
            Body::Strings { first_id, strings } => {
                let next = self.next_string.entry(msg.epoch).or_insert(1);
                if *first_id < *next {
                    r.string_duplicates += 1;
                }
                *next = (*next).max(first_id + strings.len() as u32);
            }
            Body::Status(_) | Body::Run { .. } => {}
        }
    }

    /// The summary.
    pub fn report(&self) -> &Report {
        &self.report
    }
}

/// Reads the stream from its first message to the last one it held when the audit began,
/// prints the report as one JSON line, and fails when the stream is not clean.
pub fn run(urls: &[String], env: &str) -> anyhow::Result<Report> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = super::connect(urls, "ib-stream stream-audit").await?;
        let js = jetstream::new(client);
        let name = wire::stream_name(env);
        let mut stream = tokio::time::timeout(TIMEOUT, js.get_stream(&name))
            .await
            .context("no answer from NATS")?
            .with_context(|| format!("stream {name}"))?;
        let info = tokio::time::timeout(TIMEOUT, stream.info())
            .await
            .context("no answer from NATS")??
            .clone();
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut audit = Audit::new(&name);
        if info.state.messages == 0 {
            return Ok(audit.report().clone());
        }
        let c: consumer::PullConsumer = tokio::time::timeout(
            TIMEOUT,
            stream.create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: first,
                },
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            }),
        )
        .await
        .context("no answer from NATS")??;
        let mut msgs = c
            .stream()
            .max_messages_per_batch(5000)
            .expires(Duration::from_secs(2))
            .messages()
            .await?;
        loop {
            let m = tokio::time::timeout(TIMEOUT, msgs.next())
                .await
                .with_context(|| {
                    format!("no message for {TIMEOUT:?} before stream sequence {last}")
                })?
                .context("the consumer ended")?
                .map_err(|e| anyhow::anyhow!("consumer: {e}"))?;
            let seq = m
                .info()
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .stream_sequence;
            if seq > last {
                break;
            }
            let msg = wire::decode(&m.payload).ok();
            audit.feed(seq, msg.as_ref());
            if seq == last {
                break;
            }
        }
        Ok(audit.report().clone())
    })
}

/// Any single request or message wait.
const TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use ib_stream_ipc::Record;

    fn rec(epoch: u64, seq: u64) -> Msg {
        let mut r = Record::ZERO;
        r.seq = seq;
        Msg {
            epoch,
            pos: seq,
            body: Body::Record(r),
        }
    }

    fn hole(epoch: u64, first: u64, last: u64) -> Msg {
        Msg {
            epoch,
            pos: last,
            body: Body::Hole {
                first,
                last,
                t0_ns: 0,
                t1_ns: 0,
            },
        }
    }

    #[test]
    fn a_story_told_once_is_clean() {
        let mut a = Audit::new("IB_T");
        let mut s = 0;
        let mut feed = |a: &mut Audit, m: Msg| {
            s += 1;
            a.feed(s, Some(&m));
        };
        for q in 1..=5 {
            feed(&mut a, rec(7, q));
        }
        feed(&mut a, hole(7, 6, 9));
        feed(&mut a, rec(7, 10));
        let batch: Vec<Record> = (11..=13)
            .map(|q| match rec(7, q).body {
                Body::Record(r) => r,
                _ => unreachable!(),
            })
            .collect();
        feed(
            &mut a,
            Msg {
                epoch: 7,
                pos: 13,
                body: Body::Records(batch),
            },
        );
        feed(&mut a, rec(8, 1));
        let r = a.report();
        assert!(r.is_clean(), "{r:?}");
        assert_eq!(r.messages, 9);
        let t = &r.runs[&format!("{:016x}", 7)];
        assert_eq!((t.first, t.last, t.records, t.declared_lost), (1, 13, 9, 4));
        assert_eq!(r.runs.len(), 2);
    }

    #[test]
    fn a_record_twice_and_an_undeclared_hole_are_reported() {
        let mut a = Audit::new("IB_T");
        a.feed(1, Some(&rec(7, 1)));
        a.feed(2, Some(&rec(7, 2)));
        a.feed(3, Some(&rec(7, 2)));
        a.feed(4, Some(&rec(7, 5)));
        a.feed(6, None);
        let r = a.report();
        assert!(!r.is_clean());
        let t = &r.runs[&format!("{:016x}", 7)];
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.undeclared, vec![(3, 4)]);
        assert_eq!(r.undecodable, 1);
        assert_eq!(r.stream_seq_missing, 1);
    }

    #[test]
    fn strings_sent_twice_are_reported() {
        let mut a = Audit::new("IB_T");
        let s = |first_id, n: usize| Msg {
            epoch: 7,
            pos: 0,
            body: Body::Strings {
                first_id,
                strings: vec![b"x".to_vec(); n],
            },
        };
        a.feed(1, Some(&s(1, 3)));
        a.feed(2, Some(&s(4, 1)));
        assert!(a.report().is_clean());
        a.feed(3, Some(&s(4, 1)));
        assert_eq!(a.report().string_duplicates, 1);
    }
}
