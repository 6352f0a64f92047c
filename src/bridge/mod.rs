//! `ib-stream bridge`: the engine host's ring, republished on a NATS JetStream stream.
//!
//! A [`RingFollower`] reads the ring; every record goes to the stream as one message on
//! `ib.<env>.<conId>.<kind>` carrying the run (ring epoch) and sequence ([`wire`]). A lap
//! becomes a hole message with the exact range, a writer restart a run message, new
//! strings and status snapshots travel on their own subjects. Publishes are pipelined
//! (up to `inflight` unacknowledged) and each one names the stream sequence it must follow
//! (`Nats-Expected-Last-Sequence`), so the stream can never hold a message after one that
//! was lost: the first failed publish fails every later one, and the bridge then reads the
//! stream's last message and starts again right after it (the same path as a restart).
//! `Nats-Msg-Id` (run and sequence) makes a republished record a duplicate the server drops.
//! The server checks the message id before the expected sequence, so an acknowledgement (a
//! duplicate's too) must name exactly the sequence the publish was meant to take
//! ([`check_ack`]), and a resync waits for a leader whose stream end reaches what was
//! acknowledged ([`Floor`]): a new leader can answer before it has applied its log.

pub mod audit;
pub mod wire;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage};
use ib_stream_ipc::{
    FollowConfig, FollowEvent, Record, RingFollower, STATUS_FILE_NAME, STRINGS_FILE_NAME, StartAt,
    StatusReader, StatusSnapshot, StringTableReader,
};
use wire::{Body, Msg};
use zerocopy::IntoBytes;

use crate::config::Settings;

/// `ib-stream bridge` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BridgeArgs {
    /// NATS server(s), comma separated.
    #[arg(
        long,
        env = "IB_STREAM_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Replicas of the stream when the bridge creates it (1, or 3 on a cluster).
    #[arg(long, env = "IB_STREAM_NATS_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// Retention: oldest message kept, seconds (0 = no limit).
    #[arg(long, env = "IB_STREAM_NATS_MAX_AGE_SECS", default_value_t = 86_400)]
    pub max_age_secs: u64,
    /// Retention: the stream's size limit in bytes, oldest dropped first (-1 = no limit).
    #[arg(long, env = "IB_STREAM_NATS_MAX_BYTES", default_value_t = 8 << 30)]
    pub max_bytes: i64,
    /// Publishes in flight (sent, not yet acknowledged) at most.
    #[arg(long, env = "IB_STREAM_NATS_INFLIGHT", default_value_t = 4096)]
    pub inflight: usize,
    /// Stream subjects' environment token (default: the environment's name).
    #[arg(long, env = "IB_STREAM_NATS_ENV")]
    pub stream_env: Option<String>,
    /// Records per message: 1 publishes each record on its instrument's subject
    /// (`ib.<env>.<conId>.<kind>`); more batches consecutive records, what the ring holds
    /// when the bridge reads it, on `ib.<env>.batch` (many times the throughput; consumers
    /// can no longer pick an instrument by subject).
    #[arg(long, env = "IB_STREAM_NATS_BATCH", default_value_t = 1)]
    pub batch: usize,
}

/// Everything the bridge needs, resolved.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// NATS servers.
    pub urls: Vec<String>,
    /// Subject token and stream name part.
    pub env: String,
    /// The ring's directory (ticks.ring, strings, status).
    pub shm_dir: PathBuf,
    /// Stream replicas when creating it.
    pub replicas: usize,
    /// Stream max age (zero: none).
    pub max_age: Duration,
    /// Stream max bytes (-1: none).
    pub max_bytes: i64,
    /// Publishes in flight at most.
    pub inflight: usize,
    /// Records per message (1: one message per record on its instrument's subject).
    pub batch: usize,
}

impl BridgeConfig {
    /// From the command line and the environment's settings.
    pub fn from_args(settings: &Settings, a: &BridgeArgs) -> anyhow::Result<BridgeConfig> {
        let env = a
            .stream_env
            .clone()
            .unwrap_or_else(|| settings.environment.name().to_owned());
        anyhow::ensure!(
            wire::valid_env(&env),
            "stream environment `{env}` must be letters, digits, `_` or `-` (it is a subject token)"
        );
        anyhow::ensure!(a.inflight >= 1, "--inflight must be at least 1");
        anyhow::ensure!(
            (1..=wire::MAX_BATCH).contains(&a.batch),
            "--batch must be 1 to {}",
            wire::MAX_BATCH
        );
        anyhow::ensure!(
            (1..=5).contains(&a.replicas),
            "--replicas must be 1 to 5 (JetStream's limit)"
        );
        Ok(BridgeConfig {
            urls: split_urls(&a.nats_url),
            env,
            shm_dir: settings.shm_dir.clone(),
            replicas: a.replicas,
            max_age: Duration::from_secs(a.max_age_secs),
            max_bytes: a.max_bytes,
            inflight: a.inflight,
            batch: a.batch,
        })
    }
}

/// Logs to stderr at the configured level (`IB_STREAM_LOG_LEVEL`), for `bridge` and `mirror`.
pub fn init_logging(settings: &Settings) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&settings.log_level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// `a,b , c` → `["a", "b", "c"]`.
pub fn split_urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Connects with retries forever (the bridge and mirror outlive NATS outages).
pub async fn connect(urls: &[String], name: &str) -> anyhow::Result<async_nats::Client> {
    let opts = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|n| Duration::from_millis((50 * n as u64).min(1000)));
    opts.connect(urls)
        .await
        .with_context(|| format!("connecting to NATS at {}", urls.join(",")))
}

/// Runs the bridge until the process is stopped.
pub fn run(cfg: &BridgeConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stop = stop_flag()?;
    rt.block_on(async {
        let client = connect(&cfg.urls, "ib-stream bridge").await?;
        let mut retry = Retry::new(std::process::id().into());
        let mut floor = Floor::default();
        loop {
            let began = Instant::now();
            // A context per session: the acknowledgements the last one left unread keep
            // their permits in the context's acker for its ack timeout, and a new session
            // on the same context would wait for them without a word (seen: 30 s stalls
            // that let the ring lap the bridge after a leader change).
            //
            // Room for our own window of acknowledgements (the default 5 000 would block a
            // larger --inflight forever: nobody polls the futures we hold), and a publish
            // whose acknowledgement is lost fails after 3 s instead of 30, so a resync
            // comes soon.
            let js = jetstream::context::ContextBuilder::new()
                .max_ack_inflight(cfg.inflight + 64)
                .timeout(REQUEST_TIMEOUT)
                .ack_timeout(REQUEST_TIMEOUT)
                .build(client.clone());
            match session(cfg, &js, &mut floor, &stop).await {
                Ok(()) => return Ok(()),
                Err(e) if stop.load(Ordering::Relaxed) => {
                    tracing::info!(error = %format!("{e:#}"), "bridge: stopped");
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "bridge: resynchronising with the stream");
                    tokio::time::sleep(retry.delay_after(began.elapsed())).await;
                }
            }
        }
    })
}

/// Set by SIGINT or SIGTERM: the bridge then settles what it published and exits, the
/// mirror saves its place and acknowledges what it applied.
pub fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    Ok(stop)
}

/// The wait before a bridge or mirror session starts again: exponential with jitter up to
/// 2 s, and back to the first step after a session that ran [`Retry::STABLE`] (a fault
/// hours after the last one must not wait as long as the tenth retry of an outage).
#[derive(Debug, Clone)]
pub struct Retry {
    backoff: crate::engine::Backoff,
}

impl Retry {
    /// A session that lasted this long was healthy.
    pub const STABLE: Duration = Duration::from_secs(10);

    /// Jittered by `seed` (the process id: two bridges do not retry in step).
    pub fn new(seed: u64) -> Retry {
        Retry {
            backoff: crate::engine::Backoff::new(100_000_000, 2_000_000_000, seed),
        }
    }

    /// How long to wait after a session that ended in an error having run `lasted`.
    pub fn delay_after(&mut self, lasted: Duration) -> Duration {
        if lasted >= Self::STABLE {
            self.backoff.reset();
        }
        Duration::from_nanos(self.backoff.next_delay())
    }
}

/// Creates the stream or brings its retention to the configured one.
pub async fn ensure_stream(
    js: &jetstream::Context,
    cfg: &BridgeConfig,
) -> anyhow::Result<jetstream::stream::Stream> {
    let config = jetstream::stream::Config {
        name: wire::stream_name(&cfg.env),
        subjects: vec![wire::all_subjects(&cfg.env)],
        max_age: cfg.max_age,
        max_bytes: cfg.max_bytes,
        storage: jetstream::stream::StorageType::File,
        num_replicas: cfg.replicas,
        discard: jetstream::stream::DiscardPolicy::Old,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    match js.get_stream(&config.name).await {
        Ok(mut s) => {
            let info = s.info().await?.clone();
            if info.config.max_age != config.max_age || info.config.max_bytes != config.max_bytes {
                let mut c = info.config.clone();
                c.max_age = config.max_age;
                c.max_bytes = config.max_bytes;
                js.update_stream(c)
                    .await
                    .context("updating the stream's retention")?;
            }
            Ok(s)
        }
        Err(_) => js
            .create_stream(config.clone())
            .await
            .with_context(|| format!("creating stream {}", config.name)),
    }
}

/// Every request and acknowledgement is bounded: a leader lost mid-request must not hang us.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a resync waits for the stream's leader to report at least what it acknowledged.
const STALE_WAIT: Duration = Duration::from_secs(8);

/// An acknowledgement that does not put the message where the bridge expected it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// Stored (or found already stored) under another stream sequence than the one this
    /// publish expected: the bridge's idea of the stream's end is wrong.
    #[error(
        "acknowledged at stream sequence {got} (duplicate: {duplicate}), expected {expected}: the stream is not where the bridge thought"
    )]
    Misplaced {
        /// The sequence this publish was meant to take.
        expected: u64,
        /// The sequence the stream reported.
        got: u64,
        /// The stream dropped it as a duplicate of a message it holds.
        duplicate: bool,
    },
}

/// Checks that the publish meant to be stream sequence `expected` is there. A duplicate is
/// fine only at that very sequence: the stream de-duplicates by message id *before* it checks
/// `Nats-Expected-Last-Sequence`, so after a resync from a stale stream end every republished
/// record is acknowledged as a duplicate (of where it really is) while the bridge counts on,
/// and the first new message then lands wherever the stream ends; checking the exact
/// sequence turns that into a resync at once.
pub fn check_ack(expected: u64, got: u64, duplicate: bool) -> Result<(), AckError> {
    if got == expected {
        Ok(())
    } else {
        Err(AckError::Misplaced {
            expected,
            got,
            duplicate,
        })
    }
}

/// The least the bridge knows the stream holds: sequences it saw acknowledged, and the last
/// sequence a `wrong last sequence` error reported. A resync that reads less from the stream
/// read a leader that has not applied everything yet (seen: a new leader answered a stream
/// info 342 messages short twice, 2 s apart), and waits for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Floor {
    last: u64,
}

impl Floor {
    /// The stream is known to hold sequence `seq`.
    pub fn saw(&mut self, seq: u64) {
        self.last = self.last.max(seq);
    }

    /// A stream end of `last` is behind what the stream is known to hold.
    pub fn is_stale(&self, last: u64) -> bool {
        last < self.last
    }

    /// The known least last sequence.
    pub fn get(&self) -> u64 {
        self.last
    }

    /// Accepts `last` as the stream's end (waited long enough: the cluster really lost the
    /// messages after it, e.g. a stale replica was elected leader).
    pub fn reset(&mut self, last: u64) {
        self.last = last;
    }
}

/// The stream's last sequence in a `wrong last sequence: N` error (the server's own words).
pub fn wrong_last_sequence(err: &str) -> Option<u64> {
    // The client repeats the phrase around the server's; the number follows one of them.
    err.split("wrong last sequence: ").skip(1).find_map(|rest| {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// Where the stream says the bridge left off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resume {
    /// Last stream sequence (every publish expects it, then increments it).
    stream_last: u64,
    /// Run and ring position of the last message, if there is one.
    ring: Option<(u64, u64)>,
    /// Next string id to send for that run.
    next_string: u32,
}

/// Reads the stream's end from its leader (stream info and a raw get: both answered by the
/// leader, never by a replica), waiting a while for a leader that reports less than `floor`.
async fn resume_point(
    stream: &mut jetstream::stream::Stream,
    env: &str,
    floor: &mut Floor,
) -> anyhow::Result<Resume> {
    let since = Instant::now();
    let info = loop {
        let info = bounded("reading the stream's state", stream.info())
            .await?
            .clone();
        let last = info.state.last_sequence;
        if !floor.is_stale(last) {
            break info;
        }
        if since.elapsed() >= STALE_WAIT {
            tracing::warn!(
                last,
                known = floor.get(),
                "bridge: the stream ends before messages it acknowledged; the cluster lost them, republishing from its end"
            );
            floor.reset(last);
            break info;
        }
        tracing::info!(
            last,
            known = floor.get(),
            "bridge: the stream's leader reports less than it acknowledged, waiting for it"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let last = info.state.last_sequence;
    let mut ring = None;
    if info.state.messages > 0 {
        let m = bounded(
            "reading the stream's last message",
            stream.get_raw_message(last),
        )
        .await?;
        let msg = wire::decode(&m.payload).context("the stream's last message")?;
        ring = Some((msg.epoch, msg.pos));
    }
    let mut next_string = 1;
    if let (Some((epoch, _)), Ok(Ok(m))) = (
        ring,
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            stream.get_last_raw_message_by_subject(&wire::strings_subject(env)),
        )
        .await,
    ) && let Ok(Msg {
        epoch: e,
        body: Body::Strings { first_id, strings },
        ..
    }) = wire::decode(&m.payload)
        && e == epoch
    {
        next_string = first_id + strings.len() as u32;
    }
    Ok(Resume {
        stream_last: last,
        ring,
        next_string,
    })
}

/// `f`, or an error after [`REQUEST_TIMEOUT`].
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

/// A publish's acknowledgement, pollable in place (so a bounded wait on it loses nothing).
type AckFuture = <jetstream::context::PublishAckFuture as std::future::IntoFuture>::IntoFuture;

/// How often an idle bridge looks at the ring (the web server's tailer polls as often).
const IDLE_POLL: Duration = Duration::from_micros(100);

/// A pipelined publisher whose every message must land right after the previous one.
struct Publisher<'a> {
    js: &'a jetstream::Context,
    env: &'a str,
    expect: u64,
    /// Each publish's acknowledgement and the stream sequence it must report.
    acks: VecDeque<(u64, AckFuture)>,
    max_inflight: usize,
    published: u64,
    floor: &'a mut Floor,
}

impl Publisher<'_> {
    async fn send(&mut self, subject: String, id: String, payload: Vec<u8>) -> anyhow::Result<()> {
        while self.acks.len() >= self.max_inflight {
            self.ack_one().await?;
        }
        let m = PublishMessage::build()
            .payload(payload.into())
            .message_id(id)
            .expected_last_sequence(self.expect);
        // Bounded as a whole: waiting for an acknowledgement permit has no timeout of its own.
        let ack = bounded("publishing", self.js.send_publish(subject, m)).await?;
        self.expect += 1;
        self.published += 1;
        self.acks.push_back((self.expect, ack.into_future()));
        Ok(())
    }

    async fn ack_one(&mut self) -> anyhow::Result<()> {
        if let Some((expected, a)) = self.acks.pop_front() {
            match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), a).await {
                Ok(res) => self.settle(expected, res)?,
                Err(_) => anyhow::bail!("publish not acknowledged: no answer"),
            }
        }
        Ok(())
    }

    /// Checks one acknowledgement: the stream must have put the message at `expected`.
    fn settle(
        &mut self,
        expected: u64,
        res: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    ) -> anyhow::Result<()> {
        let ack = match res {
            Ok(ack) => ack,
            Err(e) => {
                if let Some(last) = wrong_last_sequence(&format!("{e:#}")) {
                    self.floor.saw(last);
                }
                return Err(anyhow::Error::new(e).context("publish not acknowledged"));
            }
        };
        if ack.duplicate {
            tracing::debug!(seq = ack.sequence, "duplicate dropped by the stream");
        }
        self.floor.saw(ack.sequence);
        check_ack(expected, ack.sequence, ack.duplicate)?;
        Ok(())
    }

    /// The ring had nothing: settle every acknowledgement (an error surfaces now, not at
    /// the next tick), then look at the ring again after [`IDLE_POLL`].
    ///
    /// All acknowledged first, as before: a version that settled only the oldest and
    /// published on saw more unexpected gaps after faults in tests/nats_hosts.rs (not
    /// proven to be the cause), so this keeps the old order.
    /// Then nothing is in flight and nothing waits on this runtime, so the thread sleeps
    /// `IDLE_POLL` itself: tokio's timer cannot wake it sooner than a millisecond, which
    /// was most of a tick's A-ring-to-C-ring latency (bench `bridge`).
    async fn idle(&mut self) -> anyhow::Result<()> {
        self.settle_all().await?;
        tokio::task::yield_now().await;
        std::thread::sleep(IDLE_POLL);
        Ok(())
    }

    /// Waits for every outstanding acknowledgement and checks each.
    async fn settle_all(&mut self) -> anyhow::Result<()> {
        while !self.acks.is_empty() {
            self.ack_one().await?;
        }
        Ok(())
    }

    async fn msg(&mut self, subject: String, id: String, m: &Msg) -> anyhow::Result<()> {
        self.send(subject, id, wire::encode(m)).await
    }

    fn env(&self) -> &str {
        self.env
    }
}

/// Per-run side files: strings and status.
struct SideFiles {
    dir: PathBuf,
    epoch: u64,
    strings: Option<StringTableReader>,
    next_string: u32,
    status: Option<StatusReader>,
    status_gen: u64,
    status_sent: Option<Instant>,
    snap: Box<StatusSnapshot>,
}

impl SideFiles {
    fn new(dir: &Path, epoch: u64, next_string: u32) -> SideFiles {
        SideFiles {
            dir: dir.to_path_buf(),
            epoch,
            strings: None,
            next_string,
            status: None,
            status_gen: 0,
            status_sent: None,
            snap: StatusSnapshot::new_boxed(),
        }
    }

    /// New strings of this run, ids `next_string..`, read before the records that use them.
    fn new_strings(&mut self) -> Option<(u32, Vec<Vec<u8>>)> {
        let fresh = self
            .strings
            .as_ref()
            .is_none_or(|s| !s.belongs_to(self.epoch) || s.replaced());
        if fresh {
            self.strings = StringTableReader::open(&self.dir.join(STRINGS_FILE_NAME))
                .ok()
                .filter(|s| s.belongs_to(self.epoch));
        }
        let t = self.strings.as_ref()?;
        let count = t.len();
        if count <= self.next_string {
            return None;
        }
        let first = self.next_string;
        let strings: Vec<Vec<u8>> = (first..count)
            .take(4096)
            .map(|id| t.get(id).unwrap_or_default().to_vec())
            .collect();
        self.next_string = first + strings.len() as u32;
        Some((first, strings))
    }

    /// The status snapshot when it changed and a second has passed since the last one sent.
    fn status_due(&mut self, now: Instant) -> Option<(u64, Vec<u8>)> {
        if self
            .status_sent
            .is_some_and(|t| now - t < Duration::from_secs(1))
        {
            return None;
        }
        if self.status.as_ref().is_none_or(|s| s.epoch() != self.epoch) {
            self.status = StatusReader::open(&self.dir.join(STATUS_FILE_NAME))
                .ok()
                .filter(|s| s.epoch() == self.epoch);
        }
        let g = self.status.as_ref()?.read(&mut self.snap).ok()?;
        if g == self.status_gen {
            return None;
        }
        self.status_gen = g;
        self.status_sent = Some(now);
        Some((g, self.snap.as_bytes().to_vec()))
    }
}

/// One connection's worth of bridging: from the stream's last message to the first error.
async fn session(
    cfg: &BridgeConfig,
    js: &jetstream::Context,
    floor: &mut Floor,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut stream = ensure_stream(js, cfg).await?;
    let resume = resume_point(&mut stream, &cfg.env, floor).await?;
    let ring_path = cfg.shm_dir.join(ib_stream_ipc::RING_FILE_NAME);
    let follow = FollowConfig {
        check_every: Duration::from_millis(50),
        stale_after: Duration::from_secs(5),
    };
    let mut f = loop {
        match RingFollower::open(&ring_path, StartAt::Oldest, follow) {
            Ok(f) => break f,
            Err(e) if e.is_missing() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => return Err(anyhow::Error::new(e).context("opening the ring")),
        }
    };
    let mut epoch = f.info().epoch;
    let mut p = Publisher {
        js,
        env: &cfg.env,
        expect: resume.stream_last,
        acks: VecDeque::new(),
        max_inflight: cfg.inflight,
        published: 0,
        floor,
    };
    let mut next_string = 1;
    match resume.ring {
        Some((e, pos)) if e == epoch => {
            f = RingFollower::open(&ring_path, StartAt::Seq(pos + 1), follow)?;
            next_string = resume.next_string;
            tracing::info!(epoch = %format!("{epoch:016x}"), from = pos + 1, "bridge: resuming the run the stream holds");
        }
        Some((old, pos)) => {
            // The engine restarted while no bridge ran: whatever the old run wrote after
            // `pos` is unknown.
            let m = Msg {
                epoch,
                pos: 0,
                body: Body::Run {
                    old_epoch: old,
                    old_last_seq: pos,
                    clean: false,
                },
            };
            p.msg(wire::run_subject(p.env()), format!("{epoch:016x}.r"), &m)
                .await?;
            tracing::info!(old = %format!("{old:016x}"), new = %format!("{epoch:016x}"), "bridge: a new run since the stream's last message");
        }
        None => {
            tracing::info!(epoch = %format!("{epoch:016x}"), "bridge: empty stream, starting at the ring's oldest record")
        }
    }
    let mut side = SideFiles::new(&cfg.shm_dir, epoch, next_string);
    let mut pos = match resume.ring {
        Some((e, pos)) if e == epoch => pos,
        _ => 0,
    };
    let mut last_ts: i64 = 0;
    let mut buf = vec![Record::ZERO; 1024];
    loop {
        if stop.load(Ordering::Relaxed) {
            // Everything published is acknowledged (or the error says what is not): a
            // restarted bridge resumes from the stream's end with nothing in doubt.
            p.settle_all().await?;
            tracing::info!(published = p.published, last_pos = pos, "bridge: stopped");
            return Ok(());
        }
        let batch = f.read_batch(&mut buf);
        if batch.records > 0
            && let Some((first_id, strings)) = side.new_strings()
        {
            let id = format!("{epoch:016x}.s{first_id}");
            let m = Msg {
                epoch,
                pos,
                body: Body::Strings { first_id, strings },
            };
            p.msg(wire::strings_subject(p.env()), id, &m).await?;
        }
        if cfg.batch > 1 {
            for b in wire::batches(&buf[..batch.records], cfg.batch) {
                let (first, last) = (&b[0], &b[b.len() - 1]);
                pos = last.seq;
                last_ts = last.ts_recv;
                p.send(
                    wire::batch_subject(p.env()),
                    wire::batch_id(epoch, first.seq, last.seq),
                    wire::encode_records(epoch, pos, b),
                )
                .await?;
            }
        } else {
            for rec in &buf[..batch.records] {
                pos = rec.seq;
                last_ts = rec.ts_recv;
                let m = Msg {
                    epoch,
                    pos,
                    body: Body::Record(*rec),
                };
                p.msg(
                    wire::record_subject(p.env(), rec),
                    wire::msg_id(epoch, rec.seq),
                    &m,
                )
                .await?;
            }
        }
        match batch.event {
            Some(FollowEvent::Lost {
                first_seq,
                last_seq,
                count,
            }) => {
                tracing::warn!(
                    first_seq,
                    last_seq,
                    count,
                    "bridge lapped by the ring: publishing the hole"
                );
                pos = last_seq;
                let m = Msg {
                    epoch,
                    pos,
                    body: Body::Hole {
                        first: first_seq,
                        last: last_seq,
                        t0_ns: last_ts,
                        t1_ns: ib_stream_ipc::shm::unix_time_ns() as i64,
                    },
                };
                p.msg(
                    wire::hole_subject(p.env()),
                    wire::msg_id(epoch, first_seq),
                    &m,
                )
                .await?;
            }
            Some(FollowEvent::WriterRestart(r)) => {
                tracing::info!(old = %format!("{:016x}", r.old_epoch), new = %format!("{:016x}", r.new_epoch), clean = r.clean, "bridge: the engine restarted");
                epoch = r.new_epoch;
                pos = 0;
                let m = Msg {
                    epoch,
                    pos,
                    body: Body::Run {
                        old_epoch: r.old_epoch,
                        old_last_seq: r.old_last_seq,
                        clean: r.clean,
                    },
                };
                p.msg(wire::run_subject(p.env()), format!("{epoch:016x}.r"), &m)
                    .await?;
                side = SideFiles::new(&cfg.shm_dir, epoch, 1);
            }
            Some(FollowEvent::WriterState(s)) => {
                tracing::info!(state = ?s, "bridge: engine state");
            }
            None => {}
        }
        if batch.records == 0 && batch.event.is_none() {
            if let Some((g, bytes)) = side.status_due(Instant::now()) {
                let m = Msg {
                    epoch,
                    pos,
                    body: Body::Status(bytes),
                };
                p.msg(
                    wire::status_subject(p.env()),
                    format!("{epoch:016x}.t{g}"),
                    &m,
                )
                .await?;
            }
            p.idle().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_start_over_after_a_stable_session() {
        let mut r = Retry::new(7);
        let quick = Duration::from_millis(50);
        let first = r.delay_after(quick);
        assert!(first <= Duration::from_millis(100), "{first:?}");
        let mut last = first;
        for _ in 0..8 {
            last = r.delay_after(quick);
        }
        assert!(last >= Duration::from_secs(1), "grew to the cap: {last:?}");
        assert!(last <= Duration::from_secs(2), "{last:?}");
        let after_stable = r.delay_after(Retry::STABLE);
        assert!(
            after_stable <= Duration::from_millis(100),
            "{after_stable:?}"
        );
    }

    #[test]
    fn an_ack_must_put_the_message_at_the_expected_sequence_duplicate_or_not() {
        assert_eq!(check_ack(7, 7, false), Ok(()));
        // A republished record the stream already holds exactly there: consistent.
        assert_eq!(check_ack(7, 7, true), Ok(()));
        // Resumed from a stale end: the republished record is a duplicate of an earlier
        // message, and counting on from here would misplace the next new one.
        assert_eq!(
            check_ack(7, 5, true),
            Err(AckError::Misplaced {
                expected: 7,
                got: 5,
                duplicate: true
            })
        );
        assert!(check_ack(7, 9, false).is_err());
    }

    #[test]
    fn the_floor_is_the_most_the_stream_was_seen_holding() {
        let mut f = Floor::default();
        assert!(!f.is_stale(0));
        f.saw(10);
        f.saw(4);
        assert_eq!(f.get(), 10);
        assert!(f.is_stale(9));
        assert!(!f.is_stale(10));
        assert!(!f.is_stale(11));
        f.reset(3);
        assert!(!f.is_stale(3));
    }

    #[test]
    fn the_servers_last_sequence_is_read_from_a_wrong_last_sequence_error() {
        let e = "publish not acknowledged: wrong last sequence: wrong last sequence: 102096 \
                 (code 400, error code 10071): wrong last sequence: 102096 (code 400, error code 10071)";
        assert_eq!(wrong_last_sequence(e), Some(102096));
        assert_eq!(
            wrong_last_sequence("timed out: didn't receive ack in time"),
            None
        );
    }
}
