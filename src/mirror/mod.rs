//! `ib-stream mirror`: another host's copy of the engine's ring, rebuilt from JetStream.
//!
//! A durable pull consumer reads the environment's stream in order; [`apply::Applier`]
//! writes each record into a local ring with the engine's epoch and sequences (holes become
//! gap records), strings into a local string table with the same ids and status snapshots
//! into a local status region. Every process that reads a ring runs on top unchanged.
//!
//! Resuming: the mirror keeps `mirror.state` beside its ring (the run and the last stream
//! sequence applied, rewritten after every acknowledged batch and at once when a new run
//! starts) and acknowledges the consumer (ack-all) after the records are in the ring. On
//! start it adopts its ring (same file, readers go on) and recreates its durable consumer at
//! the sequence after the larger of the two; anything replayed that the ring already holds
//! is skipped by sequence.
//!
//! In order or not at all: the bridge makes the stream's sequences contiguous
//! (`Nats-Expected-Last-Sequence`), so a message whose stream sequence is past the next one
//! means the consumer skipped some (a pull batch lost when a NATS node died, redelivered only
//! after the ack wait, while ack-all would acknowledge it with the later ones). The mirror
//! then writes nothing, recreates its consumer at the next sequence and reads again. Only a
//! jump that the new consumer repeats (the messages are no longer in the stream: retention)
//! is applied, and becomes a gap record.
//!
//! Same sequences, other messages: a cluster that elects a replica missing the tail loses that
//! tail, and the bridge republishes it under other stream sequences. A record past the ring's
//! next sequence, or strings past the table's next id, are then looked for in the stream
//! ([`apply::Locate`], [`apply::LocateStrings`]) and read again from there; only what the
//! stream no longer holds becomes a gap.

pub mod apply;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use ib_stream_ipc::ShmOptions;

use crate::bridge::{self, wire};
use crate::config::Settings;
use apply::{Applied, Applier};

/// The file beside the mirror's ring recording how far it applied the stream.
pub const STATE_FILE_NAME: &str = "mirror.state";

/// `ib-stream mirror` options.
#[derive(Debug, Clone, clap::Args)]
pub struct MirrorArgs {
    /// NATS server(s), comma separated.
    #[arg(
        long,
        env = "IB_STREAM_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// The durable consumer's name (one per mirror host).
    #[arg(long, env = "IB_STREAM_MIRROR_NAME", default_value = "mirror")]
    pub name: String,
    /// Stream subjects' environment token (default: the environment's name).
    #[arg(long, env = "IB_STREAM_NATS_ENV")]
    pub stream_env: Option<String>,
}

/// Everything the mirror needs, resolved.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// NATS servers.
    pub urls: Vec<String>,
    /// Subject token.
    pub env: String,
    /// Durable consumer name.
    pub name: String,
    /// The local ring's directory.
    pub shm_dir: PathBuf,
    /// Local ring capacity (slots).
    pub capacity: u64,
}

impl MirrorConfig {
    /// From the command line and the environment's settings.
    pub fn from_args(settings: &Settings, a: &MirrorArgs) -> anyhow::Result<MirrorConfig> {
        let env = a
            .stream_env
            .clone()
            .unwrap_or_else(|| settings.environment.name().to_owned());
        anyhow::ensure!(
            wire::valid_env(&env),
            "stream environment `{env}` must be letters, digits, `_` or `-`"
        );
        anyhow::ensure!(
            wire::valid_env(&a.name),
            "mirror name `{}` must be letters, digits, `_` or `-`",
            a.name
        );
        Ok(MirrorConfig {
            urls: bridge::split_urls(&a.nats_url),
            env,
            name: a.name.clone(),
            shm_dir: settings.shm_dir.clone(),
            capacity: settings.ring_capacity as u64,
        })
    }
}

/// `mirror.state`: `<epoch hex> <stream seq>`.
fn read_state(dir: &Path) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(dir.join(STATE_FILE_NAME)).ok()?;
    let mut it = s.split_whitespace();
    let epoch = u64::from_str_radix(it.next()?, 16).ok()?;
    let seq = it.next()?.parse().ok()?;
    Some((epoch, seq))
}

fn write_state(dir: &Path, epoch: u64, stream_seq: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{STATE_FILE_NAME}.tmp"));
    std::fs::write(&tmp, format!("{epoch:016x} {stream_seq}\n"))?;
    std::fs::rename(tmp, dir.join(STATE_FILE_NAME))
}

/// Runs the mirror until the process is stopped.
pub fn run(cfg: &MirrorConfig) -> anyhow::Result<()> {
    let mut applier = Applier::open(&cfg.shm_dir, cfg.capacity, &ShmOptions::default())
        .context("opening the mirror's ring")?;
    let mut applied = read_state(&cfg.shm_dir)
        .filter(|(e, _)| Some(*e) == applier.epoch())
        .map_or(0, |(_, s)| s);
    tracing::info!(dir = %cfg.shm_dir.display(), epoch = ?applier.epoch().map(|e| format!("{e:016x}")), last_seq = applier.last_seq(), stream_seq = applied, "mirror started");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stop = bridge::stop_flag()?;
    rt.block_on(async {
        let client = bridge::connect(&cfg.urls, "ib-stream mirror").await?;
        let js = jetstream::new(client);
        let mut retry = bridge::Retry::new(std::process::id().into());
        let mut st = Resync::default();
        loop {
            let began = Instant::now();
            match session(cfg, &js, &mut applier, &mut applied, &mut st, &stop).await {
                Ok(()) => return Ok(()),
                Err(e) if stop.load(Ordering::Relaxed) => {
                    tracing::info!(error = %format!("{e:#}"), applied, "mirror: stopped");
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), applied, "mirror: consumer lost, recreating it");
                    applier.heartbeat(ib_stream_ipc::shm::unix_time_ns());
                    tokio::time::sleep(retry.delay_after(began.elapsed())).await;
                }
            }
        }
    })
}

/// What the mirror remembers across consumers to read the stream again, not skip it.
#[derive(Debug, Default)]
struct Resync {
    /// A stream-sequence jump already refused once (a repeated one is retention).
    jump_seen: Option<u64>,
    /// The stream sequence whose ring-sequence hole was already looked for in the stream.
    hole_seen: Option<u64>,
    /// The next consumer starts here (earlier than `applied`: records to read again).
    rewind: Option<u64>,
    /// The last rewind: where to, and the ring's last sequence and string count then.
    last_rewind: Option<(u64, u64, u32)>,
}

impl Resync {
    /// Whether to read the stream again from `from` for a hole found at `seq`, the local
    /// ring ending at `last_seq` with `have_strings` strings. Not when a rewind to the same
    /// place from the same state was already made: reading again then found nothing new
    /// (seen: two holes in strings the cluster lost, each sending the mirror back to the
    /// same sequence in turn, forever), so the hole is what the stream holds.
    fn rewind_to(&mut self, from: u64, seq: u64, last_seq: u64, have_strings: u32) -> bool {
        if from >= seq {
            return false;
        }
        let key = (from, last_seq, have_strings);
        if self.last_rewind == Some(key) {
            return false;
        }
        self.last_rewind = Some(key);
        self.rewind = Some(from);
        true
    }
}

/// Without a message for this long, the mirror checks that the stream has nothing new.
const QUIET_CHECK: Duration = Duration::from_secs(5);

/// Every request to the cluster is bounded: a leader lost mid-request must not hang the mirror.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

async fn bounded<T, E>(
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r.with_context(|| what),
        Err(_) => anyhow::bail!("{what}: no answer within {REQUEST_TIMEOUT:?}"),
    }
}

/// The first stream sequence holding the run `epoch` from ring sequence `need` on, at or
/// before `hi` (see [`apply::Locate`]); read from the stream leader.
async fn locate(
    stream: &jetstream::stream::Stream,
    env: &str,
    epoch: u64,
    need: u64,
    have_strings: u32,
    hi: u64,
) -> anyhow::Result<u64> {
    let mut l = apply::Locate::new(epoch, need, 1, hi);
    while let Some(seq) = l.probe() {
        let m = read_raw(stream.get_raw_message(seq), seq).await?;
        l.feed(seq, m.as_ref());
    }
    let mut s = apply::LocateStrings::new(epoch, have_strings, 1, hi);
    let subject = wire::strings_subject(env);
    while let Some(seq) = s.probe() {
        let m = read_raw(
            stream.get_first_raw_message_by_subject(subject.as_str(), seq),
            seq,
        )
        .await?;
        s.feed(seq, m.as_ref());
    }
    Ok(l.found().min(s.found()))
}

/// A message read from the stream leader: `None` when the stream does not hold it.
async fn read_raw(
    f: impl std::future::Future<
        Output = Result<jetstream::message::StreamMessage, jetstream::stream::RawMessageError>,
    >,
    seq: u64,
) -> anyhow::Result<Option<wire::Msg>> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Err(_) => anyhow::bail!("reading the stream at {seq}: no answer"),
        Ok(Ok(m)) => Ok(wire::decode(&m.payload).ok()),
        Ok(Err(e)) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
            Ok(None)
        }
        Ok(Err(e)) => Err(e).with_context(|| format!("reading the stream at {seq}")),
    }
}

async fn session(
    cfg: &MirrorConfig,
    js: &jetstream::Context,
    applier: &mut Applier,
    applied: &mut u64,
    st: &mut Resync,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut stream = bounded(
        "the environment's stream (is a bridge running?)",
        js.get_stream(wire::stream_name(&cfg.env)),
    )
    .await?;
    // The consumer's acknowledgements only matter without a state file of this run: the
    // state is written before every acknowledgement, so it is never behind them, and a
    // rewind (below) must not be overruled by them.
    let start = match st.rewind {
        Some(r) => r,
        None if *applied > 0 => *applied + 1,
        None => {
            tokio::time::timeout(REQUEST_TIMEOUT, stream.consumer_info(&cfg.name))
                .await
                .ok()
                .and_then(Result::ok)
                .map_or(0, |i| i.ack_floor.stream_sequence)
                + 1
        }
    };
    // Recreated at exactly the next sequence: a durable left with messages pending would
    // only redeliver them after its ack wait.
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, stream.delete_consumer(&cfg.name)).await;
    let created = stream.create_consumer(consumer::pull::Config {
        durable_name: Some(cfg.name.clone()),
        filter_subject: wire::all_subjects(&cfg.env),
        deliver_policy: consumer::DeliverPolicy::ByStartSequence {
            start_sequence: start,
        },
        ack_policy: consumer::AckPolicy::All,
        max_ack_pending: 1_000_000,
        ..Default::default()
    });
    let c: consumer::PullConsumer = bounded("creating the durable consumer", created).await?;
    if let Some(r) = st.rewind.take() {
        *applied = r - 1;
    }
    tracing::info!(start, name = %cfg.name, "mirror: consuming");
    let mut msgs = bounded(
        "starting to pull",
        c.stream()
            .max_messages_per_batch(2000)
            .heartbeat(Duration::from_secs(1))
            .expires(Duration::from_secs(5))
            .messages(),
    )
    .await?;
    let mut pending: Option<jetstream::Message> = None;
    let mut since_ack = 0u32;
    let mut last_ack = Instant::now();
    // A consumer can go quiet without an error (its leader moved while a pull was pending):
    // after a while without messages the stream's end says whether there is anything to read.
    let mut quiet_since = Instant::now();
    loop {
        let next = tokio::time::timeout(Duration::from_millis(20), msgs.next()).await;
        let now_ns = ib_stream_ipc::shm::unix_time_ns();
        match next {
            Ok(Some(Ok(m))) => {
                quiet_since = Instant::now();
                let seq = m
                    .info()
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .stream_sequence;
                if *applied > 0 && seq > *applied + 1 {
                    if st.jump_seen != Some(seq) {
                        st.jump_seen = Some(seq);
                        anyhow::bail!(
                            "stream sequence {seq} follows {applied}: the consumer skipped \
                             {}..={}; reading them again",
                            *applied + 1,
                            seq - 1
                        );
                    }
                    tracing::warn!(
                        from = *applied + 1,
                        to = seq - 1,
                        "mirror: the stream no longer holds these messages (retention)"
                    );
                }
                if seq > *applied {
                    st.jump_seen = None;
                    match wire::decode(&m.payload) {
                        Ok(msg) => {
                            let records = applier.missing(&msg);
                            let strings = applier.strings_missing(&msg);
                            if (records.is_some() || strings.is_some())
                                && let Some(epoch) = applier.epoch()
                                && st.hole_seen != Some(seq)
                            {
                                let from = locate(
                                    &stream,
                                    &cfg.env,
                                    epoch,
                                    applier.last_seq(),
                                    applier.strings_len(),
                                    seq,
                                )
                                .await?;
                                // Only a search that ended counts: a failed one searches again.
                                st.hole_seen = Some(seq);
                                if st.rewind_to(
                                    from,
                                    seq,
                                    applier.last_seq(),
                                    applier.strings_len(),
                                ) {
                                    anyhow::bail!(
                                        "stream sequence {seq} skips ring sequences {records:?} \
                                         / string ids {strings:?}, which the stream holds from \
                                         sequence {from} on (its tail was rewritten); reading \
                                         it again"
                                    );
                                }
                                tracing::warn!(
                                    ?records,
                                    ?strings,
                                    "mirror: the stream does not hold these either"
                                );
                            }
                            if applier.apply(&msg, now_ns as i64)? == Applied::NewRun {
                                *applied = seq;
                                write_state(&cfg.shm_dir, msg.epoch, seq)?;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(seq, error = %e, "mirror: undecodable message skipped")
                        }
                    }
                    *applied = seq;
                }
                pending = Some(m);
                since_ack += 1;
            }
            Ok(Some(Err(e))) => return Err(anyhow::anyhow!("consumer: {e}")),
            Ok(None) => return Err(anyhow::anyhow!("consumer ended")),
            Err(_) if quiet_since.elapsed() >= QUIET_CHECK => {
                quiet_since = Instant::now();
                let last = bounded("reading the stream's state", stream.info())
                    .await?
                    .state
                    .last_sequence;
                if last > *applied {
                    anyhow::bail!(
                        "the consumer delivered nothing for {QUIET_CHECK:?} while the stream \
                         holds up to {last} (applied {applied})"
                    );
                }
            }
            Err(_) => {}
        }
        let stopping = stop.load(Ordering::Relaxed);
        if stopping
            || since_ack >= 1024
            || (pending.is_some() && last_ack.elapsed() >= Duration::from_millis(20))
        {
            if let Some(epoch) = applier.epoch() {
                write_state(&cfg.shm_dir, epoch, *applied)?;
            }
            if let Some(m) = pending.take() {
                match tokio::time::timeout(REQUEST_TIMEOUT, m.ack()).await {
                    Ok(r) => r.map_err(|e| anyhow::anyhow!("ack: {e}"))?,
                    Err(_) => anyhow::bail!("ack: not sent within {REQUEST_TIMEOUT:?}"),
                }
            }
            since_ack = 0;
            last_ack = Instant::now();
            applier.heartbeat(now_ns);
            if stopping {
                tracing::info!(applied, "mirror: stopped");
                return Ok(());
            }
        } else if pending.is_none() {
            applier.heartbeat(now_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewind_that_found_nothing_new_is_not_made_again() {
        let mut st = Resync::default();
        // Two holes in turn send the mirror back to 48645 with the same local state.
        assert!(st.rewind_to(48_645, 49_905, 50_000, 164));
        assert_eq!(st.rewind, Some(48_645));
        st.rewind = None;
        assert!(
            !st.rewind_to(48_645, 50_928, 50_000, 164),
            "no progress: apply the hole"
        );
        assert!(!st.rewind_to(48_645, 49_905, 50_000, 164));
        assert_eq!(st.rewind, None);
        // Progress since (a string arrived), or another place: reading again may help.
        assert!(st.rewind_to(48_645, 50_928, 50_000, 165));
        assert!(st.rewind_to(48_000, 50_928, 50_000, 165));
        // Nothing earlier to read.
        assert!(!st.rewind_to(50_928, 50_928, 50_000, 165));
    }
}
