//! The one settings type, filled from defaults < env file < `IB_STREAM_*` variables < flags,
//! remembering where every value came from (`ib-stream config check` prints it).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::env_file::{EnvFileError, read_env_file};
use super::tracked::{TrackedContract, TrackedError, format_tracked, parse_tracked};
use crate::clientid::IdRanges;
use crate::up::role::Role;

/// One of the side-by-side deployments. They differ in ports, IB client ids, storage path and
/// shared-memory namespace, so all three can run on one machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Environment {
    /// Live trading data.
    Production,
    /// A developer's instance (the default).
    Development,
    /// A pre-production instance.
    Staging,
}

impl Environment {
    /// Every environment.
    pub const ALL: [Environment; 3] = [
        Environment::Production,
        Environment::Development,
        Environment::Staging,
    ];

    /// The name used in paths and flags.
    pub fn name(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Development => "development",
            Environment::Staging => "staging",
        }
    }

    /// The web server's default port.
    pub fn serve_port(self) -> u16 {
        match self {
            Environment::Production => 8001,
            Environment::Development => 8101,
            Environment::Staging => 8201,
        }
    }

    /// The engine's default IB client id (the next ids up to the range are tried on 326).
    pub fn client_id(self) -> i32 {
        match self {
            Environment::Production => 10,
            Environment::Development => 20,
            Environment::Staging => 30,
        }
    }

    /// IB ports tried in order: production talks to a live gateway/TWS, the others to paper.
    pub fn ib_ports(self) -> Vec<u16> {
        match self {
            Environment::Production => vec![4001, 7496],
            Environment::Development | Environment::Staging => vec![4002, 7497],
        }
    }

    /// The port the simulated gateway listens on for this environment, distinct per
    /// environment so simulations run side by side.
    pub fn sim_port(self) -> u16 {
        match self {
            Environment::Production => 14001,
            Environment::Development => 14101,
            Environment::Staging => 14201,
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Environment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "production" | "prod" => Ok(Environment::Production),
            "development" | "dev" => Ok(Environment::Development),
            "staging" | "stage" => Ok(Environment::Staging),
            other => Err(format!(
                "`{other}` is not an environment (production, development, staging)"
            )),
        }
    }
}

/// Which storage formats the recorder writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageFormats {
    /// Compact JSON Lines.
    pub jsonl: bool,
    /// 64-byte binary records.
    pub binary: bool,
}

/// When the recorder calls fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every flushed batch.
    EachBatch,
    /// At most every so often.
    Every(Duration),
    /// Never (the OS decides).
    Never,
}

/// Every setting of every ib-stream process.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Which deployment this is.
    pub environment: Environment,
    /// IB Gateway / TWS host.
    pub ib_host: String,
    /// IB ports, tried in order.
    pub ib_ports: Vec<u16>,
    /// IB client id of the engine.
    pub client_id: i32,
    /// How many further ids to try when IB says the id is in use (326).
    pub client_id_range: u32,
    /// Take IB client ids from the environment's registry (by purpose, persisted) instead
    /// of [`Settings::client_id`] and [`Settings::client_id_range`].
    pub client_id_registry: bool,
    /// Where the registry's file is kept (None: [`Settings::shm_dir`]).
    pub client_id_registry_dir: Option<PathBuf>,
    /// The registry's id ranges by purpose.
    pub client_id_ranges: IdRanges,
    /// TCP connect plus handshake timeout.
    pub connect_timeout: Duration,
    /// Run against the simulated gateway instead of a real one.
    pub simulate: bool,
    /// Fall back to delayed data when live data is refused (354/10089/10167), marking records.
    pub allow_delayed: bool,
    /// Ask IB to pace our requests (`+PACEAPI`) instead of rejecting them.
    pub pace_api: bool,
    /// Our outbound message budget per second (IB's limit is 50).
    pub max_msgs_per_sec: u32,
    /// The core the engine pins itself to (none: not pinned).
    pub engine_core: Option<usize>,
    /// Busy-poll the socket (lowest latency, one core at 100%) instead of blocking.
    pub busy_poll: bool,
    /// Directory of the ring, string table, status region and control socket.
    pub shm_dir: PathBuf,
    /// Ring capacity in records (a power of two).
    pub ring_capacity: usize,
    /// What the environment runs and which directories it reads and writes.
    pub role: Role,
    /// The shm directory of the environment this one reads in passthrough and migration
    /// (production's by default), opened read-only.
    pub upstream_shm_dir: PathBuf,
    /// The storage root of that environment, read-only: history in passthrough and migration,
    /// and whenever storage is off.
    pub upstream_storage_path: PathBuf,
    /// Whether a passthrough or migration web server may ask the upstream engine for
    /// subscriptions (else streams of what it does not already stream are refused).
    pub upstream_subscribe: bool,
    /// Whether the recorder runs. Off: nothing is recorded and history is read from
    /// [`Settings::upstream_storage_path`] (the original IB-Stream's meaning).
    pub enable_storage: bool,
    /// Whether `up` runs `ib-stream backfill` (fills recorded gaps from IB's history).
    pub backfill: bool,
    /// Root of recorded history.
    pub storage_path: PathBuf,
    /// Formats the recorder writes.
    pub storage_formats: StorageFormats,
    /// How often the recorder flushes.
    pub flush_interval: Duration,
    /// When the recorder calls fsync.
    pub fsync: FsyncPolicy,
    /// Days of JSON Lines history to keep (0: forever).
    pub jsonl_retention_days: u32,
    /// Days of binary history to keep (0: forever).
    pub binary_retention_days: u32,
    /// Web server bind address.
    pub serve_host: String,
    /// Web server port.
    pub serve_port: u16,
    /// A second port serving the original contract service's routes (`/lookup`, ...).
    pub contract_port: Option<u16>,
    /// Bearer token required when binding beyond loopback.
    pub token: Option<String>,
    /// Most concurrent client streams the web server accepts.
    pub max_streams: u32,
    /// Most open HTTP connections of the web server (lowered to fit RLIMIT_NOFILE).
    pub http_max_connections: u32,
    /// Time an HTTP client has to send a complete request header.
    pub http_header_timeout: Duration,
    /// `SO_SNDBUF` of each accepted web-server socket (0: the kernel's autotuning).
    pub http_send_buffer_bytes: u32,
    /// Contracts recorded all the time.
    pub tracked_contracts: Vec<TrackedContract>,
    /// Log filter (`tracing` env-filter syntax).
    pub log_level: String,
}

impl Settings {
    /// The defaults of one environment.
    pub fn defaults(env: Environment) -> Settings {
        Settings {
            environment: env,
            ib_host: "127.0.0.1".into(),
            ib_ports: env.ib_ports(),
            client_id: env.client_id(),
            client_id_range: 5,
            client_id_registry: false,
            client_id_registry_dir: None,
            client_id_ranges: IdRanges::defaults(env),
            connect_timeout: Duration::from_secs(5),
            simulate: false,
            allow_delayed: true,
            pace_api: false,
            max_msgs_per_sec: 45,
            engine_core: None,
            busy_poll: false,
            shm_dir: PathBuf::from("/dev/shm/ib-stream").join(env.name()),
            ring_capacity: 1 << 20,
            role: Role::Recording,
            upstream_shm_dir: PathBuf::from("/dev/shm/ib-stream")
                .join(Environment::Production.name()),
            upstream_storage_path: PathBuf::from("storage").join(Environment::Production.name()),
            upstream_subscribe: false,
            enable_storage: true,
            backfill: false,
            storage_path: PathBuf::from("storage").join(env.name()),
            storage_formats: StorageFormats {
                jsonl: true,
                binary: true,
            },
            flush_interval: Duration::from_millis(100),
            fsync: FsyncPolicy::Every(Duration::from_secs(1)),
            jsonl_retention_days: 7,
            binary_retention_days: 365,
            serve_host: "127.0.0.1".into(),
            serve_port: env.serve_port(),
            contract_port: None,
            token: None,
            max_streams: 50,
            http_max_connections: 1024,
            http_header_timeout: Duration::from_secs(10),
            http_send_buffer_bytes: 256 * 1024,
            tracked_contracts: Vec::new(),
            log_level: "info".into(),
        }
    }

    /// The engine's client id as messages name it: the fixed id, or the registry's
    /// streaming range when the id comes from the registry.
    pub fn engine_client_id_text(&self) -> String {
        if self.client_id_registry {
            let r = self
                .client_id_ranges
                .of(crate::clientid::Purpose::Streaming);
            format!("from the registry ({}-{})", r.start(), r.end())
        } else {
            self.client_id.to_string()
        }
    }

    /// The directory of the client-id registry's file.
    pub fn client_id_registry_dir(&self) -> PathBuf {
        self.client_id_registry_dir
            .clone()
            .unwrap_or_else(|| self.shm_dir.clone())
    }

    /// The engine's control socket (the upstream engine's when this role reads its ring).
    pub fn control_socket(&self) -> PathBuf {
        self.ring_dir().join("control.sock")
    }

    /// The directory of the ring, string table and status region this environment reads:
    /// the upstream's in passthrough and migration, else its own.
    pub fn ring_dir(&self) -> &Path {
        if self.role.reads_upstream_ring() {
            &self.upstream_shm_dir
        } else {
            &self.shm_dir
        }
    }

    /// Whether the ring and shm files read are another environment's, so nothing may be
    /// written there (no reader registration; every file opened read-only).
    pub fn ring_read_only(&self) -> bool {
        self.role.reads_upstream_ring()
    }

    /// The storage root history is served from: the own root while recording into it, else
    /// the upstream's (read-only).
    pub fn history_root(&self) -> &Path {
        if self.role.reads_upstream_ring() || !self.enable_storage {
            &self.upstream_storage_path
        } else {
            &self.storage_path
        }
    }

    /// Whether the history served is another environment's (opened read-only).
    pub fn history_read_only(&self) -> bool {
        self.history_root() != self.storage_path
    }

    /// Whether the web server may ask the engine it reads for subscriptions: its own engine,
    /// an upstream one only when allowed, never a mirror's (the engine is on another host,
    /// beyond NATS: the server streams what that engine carries, as its mirrored status says).
    pub fn may_subscribe(&self) -> bool {
        if self.role.reads_upstream_ring() {
            self.upstream_subscribe
        } else {
            self.role.runs_engine()
        }
    }
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The environment's default.
    Default,
    /// A line of an env file.
    EnvFile {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
    },
    /// A process environment variable.
    EnvVar(String),
    /// A command-line flag.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::EnvFile { path, line } => write!(f, "{}:{line}", path.display()),
            Source::EnvVar(v) => write!(f, "env {v}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The env file could not be read or parsed.
    #[error(transparent)]
    EnvFile(#[from] EnvFileError),
    /// A value is not valid for its key.
    #[error("{key} = `{value}` (from {origin}): {reason}")]
    Invalid {
        /// The canonical key.
        key: &'static str,
        /// The value as given.
        value: String,
        /// Where it came from.
        origin: Source,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A key in an env file or a `--set` flag that ib-stream does not know.
    #[error("unknown setting {key} (from {origin}){hint}")]
    UnknownKey {
        /// The key as given.
        key: String,
        /// Where it came from.
        origin: Source,
        /// A suggestion, if a known key is close.
        hint: String,
    },
    /// Values that are valid one by one but not together.
    #[error("inconsistent settings: {0}")]
    Inconsistent(String),
}

type Setter = fn(&mut Settings, &str) -> Result<(), String>;
type Getter = fn(&Settings) -> String;

/// One setting: its canonical variable, the original IB-Stream names it also answers to,
/// and how to parse and print it.
struct KeyDef {
    key: &'static str,
    aliases: &'static [&'static str],
    help: &'static str,
    set: Setter,
    get: Getter,
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!(
            "`{other}` is not a boolean (true/false, 1/0, yes/no)"
        )),
    }
}

fn parse_num<T: FromStr>(v: &str, what: &str) -> Result<T, String> {
    v.trim().parse().map_err(|_| format!("`{v}` is not {what}"))
}

fn parse_secs(v: &str) -> Result<Duration, String> {
    let secs: f64 = parse_num(v, "a number of seconds")?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
        return Err(format!("{secs} s is outside 0 < seconds <= 3600"));
    }
    Ok(Duration::from_secs_f64(secs))
}

const KEYS: &[KeyDef] = &[
    KeyDef {
        key: "IB_STREAM_ENV",
        aliases: &["IB_ENVIRONMENT"],
        help: "environment: production, development or staging",
        set: |s, v| {
            s.environment = v.parse()?;
            Ok(())
        },
        get: |s| s.environment.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_HOST",
        aliases: &["IB_HOST"],
        help: "IB Gateway / TWS host",
        set: |s, v| {
            if v.trim().is_empty() {
                return Err("the host is empty".into());
            }
            s.ib_host = v.trim().to_string();
            Ok(())
        },
        get: |s| s.ib_host.clone(),
    },
    KeyDef {
        key: "IB_STREAM_PORTS",
        aliases: &["IB_PORTS"],
        help: "IB ports tried in order (paper gateway 4002, live 4001, TWS 7497/7496)",
        set: |s, v| {
            let ports = v
                .split(',')
                .map(|p| parse_num::<u16>(p, "a port number").and_then(nonzero_port))
                .collect::<Result<Vec<_>, _>>()?;
            if ports.is_empty() {
                return Err("no port given".into());
            }
            s.ib_ports = ports;
            Ok(())
        },
        get: |s| {
            s.ib_ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        },
    },
    KeyDef {
        key: "IB_STREAM_CLIENT_ID",
        aliases: &["IB_CLIENT_ID"],
        help: "IB client id of the engine",
        set: |s, v| {
            s.client_id = parse_num(v, "an integer client id")?;
            Ok(())
        },
        get: |s| s.client_id.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_CLIENT_ID_RANGE",
        aliases: &[],
        help: "further client ids tried after IB error 326 (id in use)",
        set: |s, v| {
            s.client_id_range = parse_num(v, "a count")?;
            Ok(())
        },
        get: |s| s.client_id_range.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_CLIENT_ID_REGISTRY",
        aliases: &[],
        help: "take client ids from the environment's registry by purpose (else the fixed id)",
        set: |s, v| {
            s.client_id_registry = parse_bool(v)?;
            Ok(())
        },
        get: |s| s.client_id_registry.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_CLIENT_ID_REGISTRY_DIR",
        aliases: &[],
        help: "directory of the client-id registry's file (default: the shm dir)",
        set: |s, v| {
            s.client_id_registry_dir = if v.trim().is_empty() {
                None
            } else {
                Some(nonempty_path(v)?)
            };
            Ok(())
        },
        get: |s| s.client_id_registry_dir().display().to_string(),
    },
    KeyDef {
        key: "IB_STREAM_CLIENT_ID_RANGES",
        aliases: &[],
        help: "registry ranges, e.g. streaming=10-11,backfill=5-7,lookup=2-4,tools=8-9 \
               (purposes not named keep the environment's default)",
        set: |s, v| {
            s.client_id_ranges = IdRanges::parse_over(&IdRanges::defaults(s.environment), v)?;
            Ok(())
        },
        get: |s| s.client_id_ranges.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_CONNECTION_TIMEOUT",
        aliases: &[],
        help: "connect + handshake timeout, seconds",
        set: |s, v| {
            s.connect_timeout = parse_secs(v)?;
            Ok(())
        },
        get: |s| format!("{}", s.connect_timeout.as_secs_f64()),
    },
    KeyDef {
        key: "IB_STREAM_SIMULATE",
        aliases: &[],
        help: "use the simulated gateway (tws-sim)",
        set: |s, v| {
            s.simulate = parse_bool(v)?;
            Ok(())
        },
        get: |s| s.simulate.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_ALLOW_DELAYED",
        aliases: &[],
        help: "fall back to delayed data (marked) when live data is refused",
        set: |s, v| {
            s.allow_delayed = parse_bool(v)?;
            Ok(())
        },
        get: |s| s.allow_delayed.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_PACE_API",
        aliases: &[],
        help: "connect with +PACEAPI so IB paces requests instead of rejecting them",
        set: |s, v| {
            s.pace_api = parse_bool(v)?;
            Ok(())
        },
        get: |s| s.pace_api.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_MAX_MSG_RATE",
        aliases: &[],
        help: "outbound messages per second (IB allows 50)",
        set: |s, v| {
            let n: u32 = parse_num(v, "a rate")?;
            if n == 0 || n > 50 {
                return Err(format!("{n} is outside 1..=50 (IB disconnects above 50/s)"));
            }
            s.max_msgs_per_sec = n;
            Ok(())
        },
        get: |s| s.max_msgs_per_sec.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_ENGINE_CORE",
        aliases: &[],
        help: "CPU core the engine pins itself to (`none` to not pin)",
        set: |s, v| {
            s.engine_core = match v.trim() {
                "" | "none" => None,
                n => Some(parse_num(n, "a core number or `none`")?),
            };
            Ok(())
        },
        get: |s| s.engine_core.map_or("none".into(), |c| c.to_string()),
    },
    KeyDef {
        key: "IB_STREAM_BUSY_POLL",
        aliases: &[],
        help: "busy-poll the IB socket (lowest latency, burns the core)",
        set: |s, v| {
            s.busy_poll = parse_bool(v)?;
            Ok(())
        },
        get: |s| s.busy_poll.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_SHM_DIR",
        aliases: &[],
        help: "directory of the ring, status region and control socket",
        set: |s, v| {
            s.shm_dir = nonempty_path(v)?;
            Ok(())
        },
        get: |s| s.shm_dir.display().to_string(),
    },
    KeyDef {
        key: "IB_STREAM_RING_CAPACITY",
        aliases: &[],
        help: "ring capacity in records (power of two, 1024 ..= 2^26)",
        set: |s, v| {
            let n: usize = parse_num(v, "a record count")?;
            if !n.is_power_of_two() || !(1024..=1 << 26).contains(&n) {
                return Err(format!("{n} is not a power of two from 1024 to 67108864"));
            }
            s.ring_capacity = n;
            Ok(())
        },
        get: |s| s.ring_capacity.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_ROLE",
        aliases: &[],
        help: "what the environment runs: recording (own engine, recorder, storage), \
               passthrough (a web server on the upstream's ring and storage, read-only), \
               isolated (recording, sharing no directory with the upstream), migration \
               (records the upstream's ring into its own storage; serves the upstream's)",
        set: |s, v| {
            s.role = Role::parse(v)?;
            Ok(())
        },
        get: |s| s.role.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_UPSTREAM_SHM_DIR",
        aliases: &[],
        help: "shm directory of the environment passthrough and migration read (read-only; \
               default production's)",
        set: |s, v| {
            s.upstream_shm_dir = nonempty_path(v)?;
            Ok(())
        },
        get: |s| s.upstream_shm_dir.display().to_string(),
    },
    KeyDef {
        key: "IB_STREAM_UPSTREAM_STORAGE_PATH",
        aliases: &[],
        help: "storage root read (read-only) for history in passthrough and migration and \
               when storage is off (default production's)",
        set: |s, v| {
            s.upstream_storage_path = nonempty_path(v)?;
            Ok(())
        },
        get: |s| s.upstream_storage_path.display().to_string(),
    },
    KeyDef {
        key: "IB_STREAM_UPSTREAM_SUBSCRIBE",
        aliases: &[],
        help: "passthrough/migration: let clients' streams subscribe at the upstream engine \
               (false: streams of what it does not stream already are refused)",
        set: |s, v| {
            s.upstream_subscribe = parse_bool(v)?;
            Ok(())
        },
        get: |s| s.upstream_subscribe.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_ENABLE_STORAGE",
        aliases: &[],
        help: "run the recorder; false (as in the original): record nothing and serve the \
               history of IB_STREAM_UPSTREAM_STORAGE_PATH, read-only",
        set: |s, v| {
            s.enable_storage = parse_bool(v)?;
            Ok(())
        },
        get: |s| s.enable_storage.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_BACKFILL",
        aliases: &[],
        help: "up also runs `ib-stream backfill`: fills the recorded gaps from IB's history \
               (its own IB session and client id; needs the recorder and an IB gateway)",
        set: |s, v| {
            s.backfill = parse_bool(v)?;
            Ok(())
        },
        get: |s| s.backfill.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_STORAGE_PATH",
        aliases: &[],
        help: "root directory of recorded history",
        set: |s, v| {
            s.storage_path = nonempty_path(v)?;
            Ok(())
        },
        get: |s| s.storage_path.display().to_string(),
    },
    KeyDef {
        key: "IB_STREAM_STORAGE_FORMATS",
        aliases: &[],
        help: "formats the recorder writes: jsonl, binary or both (comma-separated)",
        set: |s, v| {
            let mut f = StorageFormats {
                jsonl: false,
                binary: false,
            };
            for name in v.split(',').map(str::trim) {
                match name {
                    "jsonl" | "json" => f.jsonl = true,
                    "binary" | "bin" => f.binary = true,
                    other => return Err(format!("`{other}` is not a format (jsonl, binary)")),
                }
            }
            s.storage_formats = f;
            Ok(())
        },
        get: |s| {
            let mut v = Vec::new();
            if s.storage_formats.jsonl {
                v.push("jsonl");
            }
            if s.storage_formats.binary {
                v.push("binary");
            }
            v.join(",")
        },
    },
    KeyDef {
        key: "IB_STREAM_FLUSH_MS",
        aliases: &[],
        help: "recorder flush interval, milliseconds",
        set: |s, v| {
            let ms: u64 = parse_num(v, "milliseconds")?;
            if ms == 0 || ms > 60_000 {
                return Err(format!("{ms} ms is outside 1..=60000"));
            }
            s.flush_interval = Duration::from_millis(ms);
            Ok(())
        },
        get: |s| s.flush_interval.as_millis().to_string(),
    },
    KeyDef {
        key: "IB_STREAM_FSYNC",
        aliases: &[],
        help: "fsync policy: batch, never, or a period in milliseconds",
        set: |s, v| {
            s.fsync = match v.trim() {
                "batch" | "each" => FsyncPolicy::EachBatch,
                "never" | "off" => FsyncPolicy::Never,
                ms => {
                    let ms: u64 = parse_num(ms, "batch, never or milliseconds")?;
                    if ms == 0 {
                        return Err("0 ms: use `batch`".into());
                    }
                    FsyncPolicy::Every(Duration::from_millis(ms))
                }
            };
            Ok(())
        },
        get: |s| match s.fsync {
            FsyncPolicy::EachBatch => "batch".into(),
            FsyncPolicy::Never => "never".into(),
            FsyncPolicy::Every(d) => d.as_millis().to_string(),
        },
    },
    KeyDef {
        key: "IB_STREAM_JSON_RETENTION",
        aliases: &[],
        help: "days of JSON Lines history to keep (0: forever)",
        set: |s, v| {
            s.jsonl_retention_days = parse_num(v, "a number of days")?;
            Ok(())
        },
        get: |s| s.jsonl_retention_days.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_BINARY_RETENTION",
        aliases: &["IB_STREAM_PROTOBUF_RETENTION"],
        help: "days of binary history to keep (0: forever)",
        set: |s, v| {
            s.binary_retention_days = parse_num(v, "a number of days")?;
            Ok(())
        },
        get: |s| s.binary_retention_days.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_SERVE_HOST",
        aliases: &[],
        help: "web server bind address (beyond loopback requires IB_STREAM_TOKEN)",
        set: |s, v| {
            let v = v.trim();
            if v.parse::<std::net::IpAddr>().is_err() && v != "localhost" {
                return Err(format!("`{v}` is not an IP address"));
            }
            s.serve_host = v.to_string();
            Ok(())
        },
        get: |s| s.serve_host.clone(),
    },
    KeyDef {
        key: "IB_STREAM_SERVE_PORT",
        aliases: &[],
        help: "web server port",
        set: |s, v| {
            s.serve_port = parse_num::<u16>(v, "a port number").and_then(nonzero_port)?;
            Ok(())
        },
        get: |s| s.serve_port.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_CONTRACT_PORT",
        aliases: &["IB_CONTRACTS_PORT"],
        help: "also serve the original contract service's routes (/lookup, /contracts, \
               /cache/status) on this port; empty: not",
        set: |s, v| {
            s.contract_port = match v.trim() {
                "" => None,
                p => Some(parse_num::<u16>(p, "a port number").and_then(nonzero_port)?),
            };
            Ok(())
        },
        get: |s| s.contract_port.map_or(String::new(), |p| p.to_string()),
    },
    KeyDef {
        key: "IB_STREAM_TOKEN",
        aliases: &[],
        help: "bearer token for the web API (required beyond loopback)",
        set: |s, v| {
            let v = v.trim();
            if !v.is_empty() && v.len() < 16 {
                return Err("a token needs at least 16 characters".into());
            }
            s.token = (!v.is_empty()).then(|| v.to_string());
            Ok(())
        },
        // Never print a secret.
        get: |s| s.token.as_ref().map_or("(none)".into(), |_| "(set)".into()),
    },
    KeyDef {
        key: "IB_STREAM_MAX_STREAMS",
        aliases: &[],
        help: "most concurrent client streams",
        set: |s, v| {
            s.max_streams = parse_num(v, "a count")?;
            Ok(())
        },
        get: |s| s.max_streams.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_HTTP_MAX_CONNECTIONS",
        aliases: &[],
        help: "most open web-server connections (lowered to fit RLIMIT_NOFILE minus 64)",
        set: |s, v| {
            let n: u32 = parse_num(v, "a count")?;
            if n == 0 {
                return Err("0 connections would serve nobody".into());
            }
            s.http_max_connections = n;
            Ok(())
        },
        get: |s| s.http_max_connections.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_HTTP_HEADER_TIMEOUT",
        aliases: &[],
        help: "seconds a web client has to send a complete request header (idle connections close)",
        set: |s, v| {
            s.http_header_timeout = parse_secs(v)?;
            Ok(())
        },
        get: |s| format!("{}", s.http_header_timeout.as_secs_f64()),
    },
    KeyDef {
        key: "IB_STREAM_HTTP_SEND_BUFFER_BYTES",
        aliases: &[],
        help: "kernel send buffer of each web-server connection in bytes (0: autotuned); \
               bounds the ticks a stalled client has queued before the slow-client policy acts",
        set: |s, v| {
            let n: u32 = parse_num(v, "a byte count")?;
            if n != 0 && n < 4096 {
                return Err("a send buffer below 4096 bytes would not hold one message".into());
            }
            s.http_send_buffer_bytes = n;
            Ok(())
        },
        get: |s| s.http_send_buffer_bytes.to_string(),
    },
    KeyDef {
        key: "IB_STREAM_TRACKED_CONTRACTS",
        aliases: &[],
        help: "contracts recorded all the time: conId:SYMBOL:tick;types:hours,...",
        set: |s, v| {
            s.tracked_contracts = parse_tracked(v).map_err(|e: TrackedError| e.to_string())?;
            Ok(())
        },
        get: |s| format_tracked(&s.tracked_contracts),
    },
    KeyDef {
        key: "IB_STREAM_LOG_LEVEL",
        aliases: &[],
        help: "log filter: off, error, warn, info, debug or trace, or comma-separated target=level directives",
        set: |s, v| {
            s.log_level = check_log_filter(v)?;
            Ok(())
        },
        get: |s| s.log_level.clone(),
    },
];

const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A log filter every process accepts as meant. `tracing` reads a bare word that is not a level
/// (`warnn`) as a target name and then logs nothing at all, so each directive must be a level
/// or `target=level`.
fn check_log_filter(v: &str) -> Result<String, String> {
    let v = v.trim();
    let allowed = || {
        format!(
            "a level ({}) or comma-separated target=level directives, e.g. `info,ib_stream::engine=debug`",
            LOG_LEVELS.join(", ")
        )
    };
    if v.is_empty() {
        return Err(format!("the log level is empty; expected {}", allowed()));
    }
    let is_level = |l: &str| LOG_LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    for d in v.split(',').map(str::trim) {
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l);
        if !is_level(level) {
            return Err(format!("`{d}` is not {}", allowed()));
        }
    }
    tracing_subscriber::EnvFilter::try_new(v)
        .map_err(|e| format!("{e}; expected {}", allowed()))?;
    Ok(v.to_string())
}

fn nonzero_port(p: u16) -> Result<u16, String> {
    if p == 0 {
        Err("port 0 is not a port".into())
    } else {
        Ok(p)
    }
}

fn nonempty_path(v: &str) -> Result<PathBuf, String> {
    let v = v.trim();
    if v.is_empty() {
        Err("the path is empty".into())
    } else {
        Ok(PathBuf::from(v))
    }
}

fn find_key(name: &str) -> Option<&'static KeyDef> {
    KEYS.iter()
        .find(|k| k.key == name || k.aliases.contains(&name))
}

fn hint_for(name: &str) -> String {
    let best = KEYS
        .iter()
        .map(|k| (edit_distance(name, k.key), k.key))
        .min()
        .filter(|(d, _)| *d <= 4);
    best.map_or(String::new(), |(_, k)| format!("; did you mean {k}?"))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Where to read settings from (the command line fills this).
#[derive(Clone, Debug, Default)]
pub struct ConfigSources {
    /// `--env`: the environment, which picks the defaults.
    pub environment: Option<Environment>,
    /// `--env-file`.
    pub env_file: Option<PathBuf>,
    /// The process environment (`std::env::vars()` in the binary; a fixed list in tests).
    pub env_vars: Vec<(String, String)>,
    /// Flags as `(flag name, canonical key, value)`, applied last.
    pub flags: Vec<(String, String, String)>,
}

/// `IB_STREAM_*` variables that are not settings but a subcommand's own options, read by its
/// command line (`env = ...`): known, so never reported as ignored.
const COMMAND_ENV_VARS: &[&str] = &[
    "IB_STREAM_ROLE",
    "IB_STREAM_NATS_URL",
    "IB_STREAM_NATS_ENV",
    "IB_STREAM_NATS_REPLICAS",
    "IB_STREAM_NATS_MAX_AGE_SECS",
    "IB_STREAM_NATS_MAX_BYTES",
    "IB_STREAM_NATS_INFLIGHT",
    "IB_STREAM_MIRROR_NAME",
];

/// Settings with the source of every value, and the variables that were ignored.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The effective settings.
    pub settings: Settings,
    /// The source of each key (canonical names).
    pub sources: BTreeMap<&'static str, Source>,
    /// `IB_STREAM_*` environment variables that ib-stream does not know (kept out, reported).
    pub ignored_env: Vec<String>,
}

impl Loaded {
    /// What to tell the user about the loading (printed by every subcommand): each ignored
    /// `IB_STREAM_*` variable, with the known key it is probably a typo of.
    pub fn warnings(&self) -> Vec<String> {
        self.ignored_env
            .iter()
            .map(|name| {
                format!(
                    "environment variable {name} is not an ib-stream setting and is ignored{}",
                    hint_for(name)
                )
            })
            .collect()
    }

    /// Every setting as `(key, value, source, help)`, for `config check`.
    pub fn table(&self) -> Vec<(&'static str, String, String, &'static str)> {
        KEYS.iter()
            .map(|k| {
                let src = self.sources.get(k.key).cloned().unwrap_or(Source::Default);
                (k.key, (k.get)(&self.settings), src.to_string(), k.help)
            })
            .collect()
    }
}

/// Loads settings: defaults of the environment < env file < environment variables < flags.
pub fn load(src: &ConfigSources) -> Result<Loaded, ConfigError> {
    let file_lines = match &src.env_file {
        Some(p) => read_env_file(p)?,
        None => Vec::new(),
    };
    let file_path = src.env_file.clone().unwrap_or_default();

    // Each layer as (key def, value, source), in increasing priority.
    let mut layered: Vec<(&'static KeyDef, String, Source)> = Vec::new();
    for l in &file_lines {
        let source = Source::EnvFile {
            path: file_path.clone(),
            line: l.line,
        };
        match find_key(&l.key) {
            Some(k) => layered.push((k, l.value.clone(), source)),
            None => {
                return Err(ConfigError::UnknownKey {
                    hint: hint_for(&l.key),
                    key: l.key.clone(),
                    origin: source,
                });
            }
        }
    }
    let mut ignored_env = Vec::new();
    // Canonical names win over aliases when both are set, whatever the order of the env.
    let mut env_layer: Vec<(&'static KeyDef, String, Source, bool)> = Vec::new();
    for (name, value) in &src.env_vars {
        match find_key(name) {
            Some(k) => env_layer.push((
                k,
                value.clone(),
                Source::EnvVar(name.clone()),
                k.key == name,
            )),
            None if name.starts_with("IB_STREAM_")
                && !COMMAND_ENV_VARS.contains(&name.as_str()) =>
            {
                ignored_env.push(name.clone())
            }
            None => {}
        }
    }
    env_layer.sort_by_key(|(_, _, _, canonical)| *canonical);
    layered.extend(env_layer.into_iter().map(|(k, v, s, _)| (k, v, s)));
    for (flag, key, value) in &src.flags {
        let Some(k) = find_key(key) else {
            return Err(ConfigError::UnknownKey {
                hint: hint_for(key),
                key: key.clone(),
                origin: Source::Flag(flag.clone()),
            });
        };
        layered.push((k, value.clone(), Source::Flag(flag.clone())));
    }

    // The environment picks the defaults, so settle it first (highest layer that sets it).
    let mut environment = Environment::Development;
    let mut env_source = Source::Default;
    for (k, v, s) in &layered {
        if k.key == "IB_STREAM_ENV" {
            environment = v.parse().map_err(|reason| ConfigError::Invalid {
                key: k.key,
                value: v.clone(),
                origin: s.clone(),
                reason,
            })?;
            env_source = s.clone();
        }
    }
    if let Some(e) = src.environment {
        environment = e;
        env_source = Source::Flag("--env".into());
    }

    let mut settings = Settings::defaults(environment);
    let mut sources = BTreeMap::new();
    for (k, v, s) in layered {
        if k.key == "IB_STREAM_ENV" {
            continue;
        }
        (k.set)(&mut settings, &v).map_err(|reason| ConfigError::Invalid {
            key: k.key,
            value: v.clone(),
            origin: s.clone(),
            reason,
        })?;
        sources.insert(k.key, s);
    }
    sources.insert("IB_STREAM_ENV", env_source);

    check_consistency(&settings)?;
    Ok(Loaded {
        settings,
        sources,
        ignored_env,
    })
}

fn check_consistency(s: &Settings) -> Result<(), ConfigError> {
    let loopback = s.serve_host == "localhost"
        || s.serve_host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback && s.token.is_none() {
        return Err(ConfigError::Inconsistent(format!(
            "IB_STREAM_SERVE_HOST={} is beyond loopback: set IB_STREAM_TOKEN too",
            s.serve_host
        )));
    }
    if s.contract_port == Some(s.serve_port) {
        return Err(ConfigError::Inconsistent(format!(
            "IB_STREAM_CONTRACT_PORT and IB_STREAM_SERVE_PORT are both {}: the contract \
             routes need a port of their own (or leave IB_STREAM_CONTRACT_PORT empty)",
            s.serve_port
        )));
    }
    check_role(s)?;
    if s.enable_storage && !s.storage_formats.jsonl && !s.storage_formats.binary {
        return Err(ConfigError::Inconsistent(
            "storage is enabled with no format".into(),
        ));
    }
    Ok(())
}

/// A path made comparable: symlinks resolved when it exists (a `storage-active` link names
/// the root it points to), else made absolute.
fn same_dir(a: &Path, b: &Path) -> bool {
    let norm = |p: &Path| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    norm(a) == norm(b)
}

/// What each role may not share with the upstream environment.
fn check_role(s: &Settings) -> Result<(), ConfigError> {
    let role = s.role;
    let bad = |what: String| Err(ConfigError::Inconsistent(what));
    // The backfill fills the recorder's storage through its own IB session.
    if s.backfill && !(matches!(role, Role::Recording | Role::Isolated) && s.enable_storage) {
        return bad(format!(
            "IB_STREAM_BACKFILL=true fills the gaps of this environment's own recording from \
             IB, so it needs a role that runs the engine and the recorder \
             (IB_STREAM_ROLE=recording or isolated, with IB_STREAM_ENABLE_STORAGE=true); \
             here IB_STREAM_ROLE={role}, IB_STREAM_ENABLE_STORAGE={}",
            s.enable_storage
        ));
    }
    // A mirror's upstream is on another host; its directories here are its own.
    if matches!(role, Role::Recording | Role::Mirror) {
        return Ok(());
    }
    if same_dir(&s.storage_path, &s.upstream_storage_path) {
        return bad(format!(
            "IB_STREAM_ROLE={role}: IB_STREAM_STORAGE_PATH ({}) is the upstream's storage \
             (IB_STREAM_UPSTREAM_STORAGE_PATH): give this environment a root of its own{}",
            s.storage_path.display(),
            if role == Role::Passthrough {
                " (it writes only its contract-lookup cache there)"
            } else {
                ""
            }
        ));
    }
    if same_dir(&s.shm_dir, &s.upstream_shm_dir) {
        return bad(format!(
            "IB_STREAM_ROLE={role}: IB_STREAM_SHM_DIR ({}) is the upstream's \
             (IB_STREAM_UPSTREAM_SHM_DIR): give this environment a directory of its own \
             (--env development, or another IB_STREAM_SHM_DIR)",
            s.shm_dir.display()
        ));
    }
    if !s.enable_storage && matches!(role, Role::Isolated | Role::Migration) {
        return bad(format!(
            "IB_STREAM_ROLE={role} records into its own storage, but \
             IB_STREAM_ENABLE_STORAGE=false; to record nothing and read the upstream's \
             history use IB_STREAM_ROLE=passthrough"
        ));
    }
    Ok(())
}

/// The canonical key names, for `--set` completion and docs.
pub fn known_keys() -> impl Iterator<Item = (&'static str, &'static [&'static str], &'static str)> {
    KEYS.iter().map(|k| (k.key, k.aliases, k.help))
}

/// Resolves a relative path in settings against a base directory (the working directory of
/// `ib-stream up`), so every child process sees the same absolute paths.
pub fn absolutize(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn environments_never_collide() {
        for a in Environment::ALL {
            for b in Environment::ALL {
                if a == b {
                    continue;
                }
                let (sa, sb) = (Settings::defaults(a), Settings::defaults(b));
                assert_ne!(sa.serve_port, sb.serve_port);
                assert_ne!(sa.client_id, sb.client_id);
                assert_ne!(sa.shm_dir, sb.shm_dir);
                assert_ne!(sa.storage_path, sb.storage_path);
                assert_ne!(a.sim_port(), b.sim_port());
                // Client-id ranges must not overlap either.
                let ra = sa.client_id..=sa.client_id + sa.client_id_range as i32;
                assert!(!ra.contains(&sb.client_id));
            }
        }
    }

    #[test]
    fn layers_apply_in_order_and_remember_sources() {
        let dir = std::env::temp_dir().join(format!("ibs-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("staging.env");
        let mut f = std::fs::File::create(&file).unwrap();
        writeln!(
            f,
            "IB_STREAM_ENV=staging\nIB_STREAM_HOST=10.1.1.1\nIB_STREAM_CLIENT_ID=77"
        )
        .unwrap();
        drop(f);
        let loaded = load(&ConfigSources {
            environment: None,
            env_file: Some(file.clone()),
            env_vars: vars(&[("IB_STREAM_CLIENT_ID", "88"), ("PATH", "/bin")]),
            flags: vec![(
                "--client-id".into(),
                "IB_STREAM_CLIENT_ID".into(),
                "99".into(),
            )],
        })
        .unwrap();
        let s = &loaded.settings;
        assert_eq!(s.environment, Environment::Staging);
        assert_eq!(s.serve_port, 8201, "staging default");
        assert_eq!(s.ib_host, "10.1.1.1");
        assert_eq!(s.client_id, 99);
        assert_eq!(
            loaded.sources["IB_STREAM_CLIENT_ID"],
            Source::Flag("--client-id".into())
        );
        assert_eq!(
            loaded.sources["IB_STREAM_HOST"],
            Source::EnvFile {
                path: file,
                line: 2
            }
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn original_names_work_and_canonical_names_win() {
        let loaded = load(&ConfigSources {
            env_vars: vars(&[
                ("IB_STREAM_HOST", "h-canonical"),
                ("IB_HOST", "h-alias"),
                ("IB_PORTS", "7497,7496"),
                ("IB_STREAM_ENABLE_V3_JSON", "true"),
            ]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(loaded.settings.ib_host, "h-canonical");
        assert_eq!(loaded.settings.ib_ports, vec![7497, 7496]);
        assert_eq!(
            loaded.ignored_env,
            vec!["IB_STREAM_ENABLE_V3_JSON".to_string()]
        );
    }

    #[test]
    fn bad_values_say_key_source_and_reason() {
        let err = load(&ConfigSources {
            env_vars: vars(&[("IB_STREAM_PORTS", "4002,abc")]),
            ..Default::default()
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("IB_STREAM_PORTS") && msg.contains("env IB_STREAM_PORTS"),
            "{msg}"
        );
        assert!(msg.contains("`abc` is not a port number"), "{msg}");

        let err = load(&ConfigSources {
            env_vars: vars(&[("IB_STREAM_TRACKED_CONTRACTS", "711280073:MNQ:bidask")]),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("tracked contract #1"), "{err}");

        let err = load(&ConfigSources {
            flags: vec![("--set".into(), "IB_STREAM_CLIENTID".into(), "1".into())],
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("did you mean IB_STREAM_CLIENT_ID"),
            "{err}"
        );
    }

    #[test]
    fn the_client_id_registry_settings_default_per_environment_and_validate() {
        let load_env = |pairs: &[(&str, &str)]| {
            load(&ConfigSources {
                env_vars: vars(pairs),
                ..Default::default()
            })
        };
        let s = load_env(&[("IB_STREAM_ENV", "staging")]).unwrap().settings;
        assert!(!s.client_id_registry, "off unless configured");
        assert_eq!(s.engine_client_id_text(), "30", "the fixed id");
        assert_eq!(s.client_id_ranges, IdRanges::defaults(Environment::Staging));
        assert_eq!(s.client_id_registry_dir(), s.shm_dir);
        let s = load_env(&[
            ("IB_STREAM_ENV", "staging"),
            ("IB_STREAM_CLIENT_ID_REGISTRY", "on"),
            ("IB_STREAM_CLIENT_ID_REGISTRY_DIR", "/var/lib/ib-stream"),
            ("IB_STREAM_CLIENT_ID_RANGES", "backfill=300-309"),
        ])
        .unwrap()
        .settings;
        assert!(s.client_id_registry);
        assert_eq!(s.client_id_registry_dir(), Path::new("/var/lib/ib-stream"));
        let backfill = s.client_id_ranges.of(crate::clientid::Purpose::Backfill);
        assert_eq!(backfill, &(300..=309));
        let streaming = s.client_id_ranges.of(crate::clientid::Purpose::Streaming);
        assert_eq!(streaming, &(30..=31), "staging's default kept");
        assert_eq!(s.engine_client_id_text(), "from the registry (30-31)");
        let err = load_env(&[("IB_STREAM_CLIENT_ID_RANGES", "streaming=12-13")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("IB_STREAM_CLIENT_ID_RANGES")
                && err.contains("the streaming ids 12-13 overlap the lookup ids 12-14"),
            "{err}"
        );
    }

    #[test]
    fn a_log_level_that_would_silence_every_log_is_refused() {
        for bad in ["warnn", "info,ib_stream=loud", "ib_stream", "", "info,"] {
            let err = load(&ConfigSources {
                env_vars: vars(&[("IB_STREAM_LOG_LEVEL", bad)]),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("IB_STREAM_LOG_LEVEL")
                    && err.contains("env IB_STREAM_LOG_LEVEL")
                    && err.contains("off, error, warn, info, debug, trace"),
                "{bad}: {err}"
            );
        }
        for good in [
            "warn",
            "INFO",
            "info,ib_stream::engine=debug",
            "off",
            "tower=error,trace",
        ] {
            let l = load(&ConfigSources {
                env_vars: vars(&[("IB_STREAM_LOG_LEVEL", good)]),
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(l.settings.log_level, good);
        }
    }

    #[test]
    fn a_subcommands_own_variables_are_not_reported_as_ignored() {
        let loaded = load(&ConfigSources {
            env_vars: vars(&[
                ("IB_STREAM_NATS_URL", "nats://n1:4222"),
                ("IB_STREAM_ROLE", "mirror"),
                ("IB_STREAM_MIRROR_NAME", "web1"),
            ]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(loaded.warnings(), Vec::<String>::new());
    }

    #[test]
    fn an_unknown_variable_is_warned_about_with_the_key_it_resembles() {
        let loaded = load(&ConfigSources {
            env_vars: vars(&[
                ("IB_STREAM_LOG_LEVLE", "debug"),
                ("IB_STREAM_ZZZZZZZZZZZZZZZZZ", "1"),
            ]),
            ..Default::default()
        })
        .unwrap();
        let w = loaded.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("IB_STREAM_LOG_LEVLE is not an ib-stream setting")
                && w[0].contains("did you mean IB_STREAM_LOG_LEVEL?"),
            "{w:?}"
        );
        assert!(!w[1].contains("did you mean"), "{w:?}");
    }

    #[test]
    fn roles_that_read_upstream_refuse_to_share_its_directories() {
        let dir = std::env::temp_dir().join(format!("ibs-role-{}", std::process::id()));
        let v1 = dir.join("storage-v1");
        std::fs::create_dir_all(&v1).unwrap();
        let active = dir.join("storage-active");
        let _ = std::fs::remove_file(&active);
        std::os::unix::fs::symlink(&v1, &active).unwrap();
        let load_with = |extra: &[(&str, &str)]| {
            load(&ConfigSources {
                env_vars: vars(extra),
                ..Default::default()
            })
        };
        for role in ["passthrough", "migration", "isolated"] {
            // The upstream's storage through a symlink is still the upstream's.
            let err = load_with(&[
                ("IB_STREAM_ROLE", role),
                ("IB_STREAM_STORAGE_PATH", v1.to_str().unwrap()),
                ("IB_STREAM_UPSTREAM_STORAGE_PATH", active.to_str().unwrap()),
            ])
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("IB_STREAM_STORAGE_PATH") && err.contains("upstream"),
                "{role}: {err}"
            );
            let err = load_with(&[
                ("IB_STREAM_ROLE", role),
                ("IB_STREAM_SHM_DIR", "/dev/shm/ib-stream/production"),
            ])
            .unwrap_err()
            .to_string();
            assert!(err.contains("IB_STREAM_SHM_DIR"), "{role}: {err}");
            // The development defaults share nothing with production's.
            let ok = load_with(&[("IB_STREAM_ROLE", role)]).unwrap().settings;
            assert_eq!(ok.role.name(), role);
        }
        for role in ["migration", "isolated"] {
            let err = load_with(&[
                ("IB_STREAM_ROLE", role),
                ("IB_STREAM_ENABLE_STORAGE", "false"),
            ])
            .unwrap_err()
            .to_string();
            assert!(err.contains("IB_STREAM_ROLE=passthrough"), "{role}: {err}");
        }
        let err = load_with(&[("IB_STREAM_ROLE", "mirrror")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a role"), "{err}");
        // Recording may be production itself, reading and writing its own storage.
        let own = load_with(&[("IB_STREAM_ENV", "production")])
            .unwrap()
            .settings;
        assert_eq!(own.history_root(), own.storage_path);
        assert!(!own.history_read_only() && own.may_subscribe());
        // A mirror host has no engine to ask: its server streams what the mirrored status
        // says the engine host carries, even with IB_STREAM_UPSTREAM_SUBSCRIBE set.
        let mirror = load_with(&[
            ("IB_STREAM_ROLE", "mirror"),
            ("IB_STREAM_UPSTREAM_SUBSCRIBE", "true"),
        ])
        .unwrap()
        .settings;
        assert!(!mirror.may_subscribe());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn storage_off_means_recording_nothing_and_reading_production_history() {
        let s = load(&ConfigSources {
            env_vars: vars(&[("IB_STREAM_ENABLE_STORAGE", "false")]),
            ..Default::default()
        })
        .unwrap()
        .settings;
        assert_eq!(s.history_root(), Path::new("storage/production"));
        assert!(s.history_read_only());
        assert_eq!(s.ring_dir(), s.shm_dir, "its own engine's ring");
    }

    #[test]
    fn wide_bind_requires_a_token() {
        let err = load(&ConfigSources {
            env_vars: vars(&[("IB_STREAM_SERVE_HOST", "0.0.0.0")]),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::Inconsistent(_)), "{err}");
        let ok = load(&ConfigSources {
            env_vars: vars(&[
                ("IB_STREAM_SERVE_HOST", "0.0.0.0"),
                ("IB_STREAM_TOKEN", "0123456789abcdef"),
            ]),
            ..Default::default()
        })
        .unwrap();
        let table = ok.table();
        let token_row = table.iter().find(|r| r.0 == "IB_STREAM_TOKEN").unwrap();
        assert_eq!(token_row.1, "(set)", "a secret is never printed");
    }

    #[test]
    fn every_key_prints_a_value_it_parses_back() {
        let s = Settings::defaults(Environment::Production);
        for k in KEYS {
            if k.key == "IB_STREAM_TOKEN" || k.key == "IB_STREAM_TRACKED_CONTRACTS" {
                continue;
            }
            let mut t = Settings::defaults(Environment::Development);
            (k.set)(&mut t, &(k.get)(&s)).unwrap_or_else(|e| panic!("{}: {e}", k.key));
            assert_eq!((k.get)(&t), (k.get)(&s), "{}", k.key);
        }
    }

    #[test]
    fn the_contract_port_is_optional_and_never_the_web_port() {
        let s = load(&ConfigSources::default()).unwrap().settings;
        assert_eq!(s.contract_port, None, "off unless configured");
        let s = load(&ConfigSources {
            env_vars: vars(&[("IB_CONTRACTS_PORT", "8100")]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.settings.contract_port, Some(8100), "the original's name");
        let row = s
            .table()
            .into_iter()
            .find(|r| r.0 == "IB_STREAM_CONTRACT_PORT");
        assert_eq!(
            row.map(|r| r.1),
            Some("8100".to_string()),
            "config check shows it"
        );
        let err = load(&ConfigSources {
            env_vars: vars(&[
                ("IB_STREAM_SERVE_PORT", "8101"),
                ("IB_STREAM_CONTRACT_PORT", "8101"),
            ]),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::Inconsistent(_)), "{err}");
        assert!(err.to_string().contains("IB_STREAM_CONTRACT_PORT"), "{err}");
        for bad in ["0", "x", "70000"] {
            assert!(
                load(&ConfigSources {
                    env_vars: vars(&[("IB_STREAM_CONTRACT_PORT", bad)]),
                    ..Default::default()
                })
                .is_err(),
                "{bad}"
            );
        }
    }
}
