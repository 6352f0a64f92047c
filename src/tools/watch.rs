//! `ib-stream watch`: ticks from a web server through the streaming client
//! (`ib-stream-client`), one JSON line each on stdout; gaps, state changes and the other
//! control messages as `watch: ...` lines on stderr. It reconnects and resumes by itself.

use std::io::Write;
use std::time::Duration;

use ib_stream_client::{
    Client, ClientConfig, ClientError, ConnState, Event, Info, ServerSlowPolicy, Subscription,
    Transport,
};

/// Options of `ib-stream watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// The web server, e.g. `http://127.0.0.1:8101` (default: this environment's
    /// IB_STREAM_SERVE_HOST and IB_STREAM_SERVE_PORT).
    #[arg(long)]
    pub url: Option<String>,
    /// Contracts to watch (repeatable).
    #[arg(long = "con-id", required = true)]
    pub con_ids: Vec<u32>,
    /// Tick types, comma-separated: bid_ask, last, all_last, mid_point, mktdata.
    #[arg(long, default_value = "bid_ask,last", value_delimiter = ',')]
    pub tick_types: Vec<String>,
    /// History then live from this time (`5m`, `2h`, RFC 3339, unix seconds).
    #[arg(long)]
    pub since: Option<String>,
    /// Stop after this many ticks (all contracts together).
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Ask the server to end a slow stream (then resume it) instead of conflating it.
    #[arg(long)]
    pub no_conflate: bool,
    /// Give up after this many failed connection attempts in a row (default: never).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Bearer token (default: IB_STREAM_TOKEN).
    #[arg(long)]
    pub token: Option<String>,
    /// Transport: `auto` (WebSocket, falling back to SSE when the server or a proxy refuses
    /// the upgrade with 404/405/426/501 or answers without upgrading), `ws` (WebSocket only)
    /// or `sse` (Server-Sent Events only: one HTTP stream per contract). Plain http only.
    #[arg(long, value_enum, default_value_t = WatchTransport::Auto)]
    pub transport: WatchTransport,
}

/// `--transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WatchTransport {
    /// WebSocket, SSE as the fallback.
    Auto,
    /// WebSocket only.
    Ws,
    /// SSE only.
    Sse,
}

/// Why `watch` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The client could not start.
    #[error("watch {url}")]
    Start {
        /// The server.
        url: String,
        /// Why.
        #[source]
        source: ClientError,
    },
    /// The client gave up (a permanent refusal or too many failed attempts).
    #[error("watch {url}: {reason}")]
    Failed {
        /// The server.
        url: String,
        /// The last transition's reason.
        reason: String,
    },
    /// The server refused a subscription.
    #[error("watch {url}: conId {con_id} refused: {code}: {message}")]
    Refused {
        /// The server.
        url: String,
        /// The contract.
        con_id: u32,
        /// The server's code.
        code: String,
        /// The server's text.
        message: String,
    },
    /// stdout is gone.
    #[error("writing ticks")]
    Output(#[source] std::io::Error),
    /// No tokio runtime could be built.
    #[error("starting the runtime")]
    Runtime(#[source] std::io::Error),
}

/// Runs `watch` until the count, the time or the streams end; `default_url` and
/// `default_token` come from the configuration.
pub fn run(
    args: &WatchArgs,
    default_url: &str,
    default_token: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), WatchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WatchError::Runtime)?;
    rt.block_on(watch(args, default_url, default_token, out))
}

async fn watch(
    args: &WatchArgs,
    default_url: &str,
    default_token: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), WatchError> {
    let url = args.url.clone().unwrap_or_else(|| default_url.to_owned());
    let mut cfg = ClientConfig::new(url.clone());
    cfg.token = args.token.clone().or(default_token.map(str::to_owned));
    cfg.session.backoff.max_attempts = args.max_attempts;
    cfg.transport = match args.transport {
        WatchTransport::Auto => Transport::Auto,
        WatchTransport::Ws => Transport::WebSocket,
        WatchTransport::Sse => Transport::Sse,
    };
    let start_err = |source| WatchError::Start {
        url: url.clone(),
        source,
    };
    let (client, mut events) = Client::start(cfg).map_err(start_err)?;
    let types: Vec<&str> = args.tick_types.iter().map(String::as_str).collect();
    let mut subs = Vec::new();
    for &cid in &args.con_ids {
        let mut s = Subscription::new(cid, &types);
        s.since.clone_from(&args.since);
        if args.no_conflate {
            s = s.slow(ServerSlowPolicy::Disconnect);
        }
        subs.push((client.subscribe(s).map_err(start_err)?, cid));
    }
    let con_of = |sub: u64| subs.iter().find(|(s, _)| *s == sub).map_or(0, |(_, c)| *c);
    let deadline = args
        .seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut open = subs.len();
    let mut ticks = 0u64;
    let mut line = Vec::with_capacity(256);
    let result = loop {
        let ev = match deadline {
            Some(d) => match tokio::time::timeout_at(d, events.next()).await {
                Ok(ev) => ev,
                Err(_) => break Ok(()),
            },
            None => events.next().await,
        };
        let Some(ev) = ev else { break Ok(()) };
        match ev {
            Event::Tick { tick, .. } => {
                line.clear();
                // A Tick always serializes (plain fields).
                let _ = serde_json::to_writer(&mut line, &tick);
                line.push(b'\n');
                if let Err(e) = out.write_all(&line) {
                    break Err(WatchError::Output(e));
                }
                ticks += 1;
                if args.count.is_some_and(|c| ticks >= c) {
                    break Ok(());
                }
            }
            Event::State(t) => {
                eprintln!("watch: {:?} -> {:?}: {}", t.from, t.to, t.reason);
                if t.to == ConnState::Failed {
                    break Err(WatchError::Failed {
                        url: url.clone(),
                        reason: t.reason,
                    });
                }
            }
            Event::Gap { sub, gap } => eprintln!(
                "watch: gap conId {} {:?}: seq {:?}..={:?} ({:?} records){}",
                sub.map_or(0, con_of),
                gap.reason,
                gap.first_seq,
                gap.last_seq,
                gap.count,
                gap.new_epoch
                    .as_deref()
                    .map(|e| format!(", engine restarted: new run {e}"))
                    .unwrap_or_default()
            ),
            Event::SubscribeFailed { sub, error, .. } => {
                break Err(WatchError::Refused {
                    url: url.clone(),
                    con_id: con_of(sub),
                    code: error.code,
                    message: error.message,
                });
            }
            Event::Complete {
                sub,
                complete,
                resuming,
            } => {
                eprintln!(
                    "watch: conId {} complete: {}{}",
                    con_of(sub),
                    complete.reason,
                    if resuming { " (resuming)" } else { "" }
                );
                if !resuming {
                    open -= 1;
                    if open == 0 {
                        break Ok(());
                    }
                }
            }
            Event::Info {
                info: Info::Other { .. } | Info::StreamStart { .. },
                ..
            } => {}
            Event::Info { sub, info } => {
                eprintln!("watch: conId {}: {info:?}", sub.map_or(0, con_of));
            }
            Event::ServerError { error, .. } => {
                eprintln!("watch: server error {}: {}", error.code, error.message);
            }
            Event::Malformed(e) => eprintln!("watch: malformed frame: {e}"),
            Event::Subscribed { .. } => {}
        }
    };
    let _ = out.flush();
    let m = client.metrics();
    eprintln!(
        "watch: {} ticks, {} gaps, {} reconnects, {} malformed frames",
        m.ticks, m.gaps, m.reconnects, m.malformed
    );
    client.close().await;
    result
}
