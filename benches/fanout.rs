//! Fan-out benchmark of `ib-stream serve`: ticks published into a real shared-memory ring and
//! delivered to many SSE and WebSocket clients over loopback TCP, compared with a Python peer
//! built like the original IB-Stream's fan-out (`benches/fanout_py_peer.py`).
//!
//! `cargo bench --bench fanout [-- --clients 100 --ticks 10000 --rate 1000 --paced-secs 2
//! --no-py --no-burst --no-remote]`
//!
//! Layout, as a deployment has it: the server is its own process (this binary run with
//! `--role server`): `serve::app()` behind `serve::listen::serve`, the accept loop of
//! `ib-stream serve` (header timeout, connection cap, TCP_NODELAY), on a multi-threaded runtime
//! built as `ib-stream serve` builds it, with the ring tailer thread; its CPU is its own
//! `getrusage(RUSAGE_SELF)`, asked over its stdin. The clients run in this process on their
//! own runtime; the publisher on its own OS thread (the engine is another process). All of it
//! shares the machine's cores, so client CPU is counted against the server's latency.
//!
//! Remote clients (`p99_us_remote_clients`): the bench makes a network namespace with a veth
//! pair (`ip netns`, removed on drop, panics included), the server listens on the host end,
//! is pinned to core 0 (`taskset -a`), and the clients run as another process
//! (`--role clients`) inside the namespace pinned to core 1: they reach the server through a
//! network device, not loopback, and never take its core.
//!
//! Phases: (1) SSE burst: every client must receive every tick; messages per second =
//! clients x ticks / time from the first publish to the last delivery. (2) WebSocket burst,
//! the same. (3) SSE paced at `--rate` ticks/s for `--paced-secs`: publish-to-client latency
//! (the tick's `st`, stamped when the record is built just before it is published, against
//! the client's clock when it has read the event), with the CPU the server's threads and the
//! clients' threads spent per delivered message; then the same at two lighter loads (100
//! clients x 100 ticks/s, 10 clients x 1000 ticks/s). (4) The Python peer, burst, read by the
//! same SSE clients. Queues are sized so that no tick is conflated: this measures delivery,
//! not the slow-client policy.
//!
//! The last line is the summary: the issue's keys first (`p99_us` is the `--clients` x
//! `--rate` point), then `p99_us_100x100`, `p99_us_10x1k`, `cpu_ms_per_100k` (server CPU per
//! 100k deliveries, paced), `cpu_ms_per_100k_burst`, `cpu_us_per_paced_delivery` (the same
//! paced figure per delivery) and `p99_us_remote_clients` (`--clients` x `--rate`, clients in
//! the namespace; `n/a` when namespaces cannot be made).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ib_stream::config::TrackedContract;
use ib_stream::serve::{AppState, ServeConfig, WsLimits, app, hub::SlowPolicy};
use ib_stream_ipc::ring::RING_FILE_NAME;
use ib_stream_ipc::{PRICE_SCALE, Quote, Record, RecordKind, RingWriter, SIZE_SCALE, ShmOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CON: u32 = 711_280_073;

/// The ring tailer (it polls the ring: part of its CPU is spent whether ticks come or not).
const TAILER_THREAD: [&str; 1] = ["ib-stream-taile"];
const CLIENT_THREADS: [&str; 1] = ["bench-client"];
/// The veth addresses: the server's end (root namespace) and the clients' end.
const HOST_ADDR: &str = "10.213.0.1";
const NS_ADDR: &str = "10.213.0.2";

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn quote(i: i64) -> Record {
    let mut r = Record::quote(
        CON,
        now_us() * 1000,
        Quote {
            bid_price: (21_000 + i % 50) * PRICE_SCALE,
            ask_price: (21_001 + i % 50) * PRICE_SCALE,
            bid_size: 3 * SIZE_SCALE,
            ask_size: 4 * SIZE_SCALE,
        },
    );
    r.ts_recv = now_us() * 1000;
    r
}

/// CPU time (ns, from `/proc/<pid>/task/*/schedstat`) of the threads of process `pid`
/// (`self` for this one) whose names start with one of `names`.
fn cpu_ns_of(pid: &str, names: &[&str]) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut total = 0;
    for t in dir.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !names.iter().any(|n| comm.starts_with(n)) {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

fn cpu_ns(names: &[&str]) -> u64 {
    cpu_ns_of("self", names)
}

/// User plus system CPU of process `pid`, ns: what `getrusage(RUSAGE_SELF)` returns inside
/// it (the kernel's `utime` and `stime`, fields 14 and 15 of `/proc/<pid>/stat`, in USER_HZ
/// = 100 ticks a second).
fn rusage_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // `rest` starts at field 3: utime is field 14, stime 15.
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) * 10_000_000
}

/// The server process (`--role server`): asked over its stdin.
struct ServerProc {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
    addr: SocketAddr,
}

impl ServerProc {
    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").expect("server stdin");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("server stdout");
        line.trim().to_string()
    }

    fn sinks(&mut self) -> u64 {
        self.ask("sinks").parse().expect("sinks count")
    }

    fn cpu_ns(&self) -> u64 {
        rusage_ns(self.child.id())
    }

    fn tailer_ns(&self) -> u64 {
        cpu_ns_of(&self.child.id().to_string(), &TAILER_THREAD)
    }

    /// Pins every thread of the server to `cpus` (a `taskset` list).
    fn pin(&self, cpus: &str) -> bool {
        Command::new("taskset")
            .args(["-a", "-cp", cpus, &self.child.id().to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A network namespace with a veth pair to the root namespace; deleted on drop (the veth
/// pair goes with it).
struct Netns {
    name: String,
}

impl Netns {
    fn ip(args: &[&str]) -> bool {
        Command::new("ip")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `None` when namespaces cannot be made here (not root, no `ip`).
    fn create() -> Option<Netns> {
        // Namespaces of earlier runs that were killed (no unwinding): their process is gone.
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or("");
                if let Some(pid) = name.strip_prefix("ibsb")
                    && pid.parse::<u32>().is_ok()
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                {
                    Netns::ip(&["netns", "del", name]);
                }
            }
        }
        let id = std::process::id();
        let ns = Netns {
            name: format!("ibsb{id}"),
        };
        let (host, peer) = (format!("ibsbh{id}"), format!("ibsbc{id}"));
        if !Netns::ip(&["netns", "add", &ns.name]) {
            return None;
        }
        // From here `ns` is dropped (and the namespace deleted) on any failure.
        let ok = Netns::ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer])
            && Netns::ip(&["link", "set", &peer, "netns", &ns.name])
            && Netns::ip(&["addr", "add", &format!("{HOST_ADDR}/30"), "dev", &host])
            && Netns::ip(&["link", "set", &host, "up"])
            && ns.exec_ip(&["addr", "add", &format!("{NS_ADDR}/30"), "dev", &peer])
            && ns.exec_ip(&["link", "set", &peer, "up"])
            && ns.exec_ip(&["link", "set", "lo", "up"]);
        if !ok {
            // The host end may exist without the namespace having taken its peer.
            Netns::ip(&["link", "del", &host]);
            return None;
        }
        Some(ns)
    }

    fn exec_ip(&self, args: &[&str]) -> bool {
        let mut a = vec!["netns", "exec", &self.name, "ip"];
        a.extend_from_slice(args);
        Netns::ip(&a)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        Netns::ip(&["netns", "del", &self.name]);
    }
}

struct Args {
    clients: usize,
    ticks: usize,
    rate: u64,
    paced_secs: u64,
    py: bool,
    burst: bool,
    remote: bool,
}

fn args() -> Args {
    let mut a = Args {
        clients: 100,
        ticks: 10_000,
        rate: 1000,
        paced_secs: 2,
        py: true,
        burst: true,
        remote: true,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        let val = |what: &str| -> u64 {
            v.get(i + 1)
                .and_then(|x| x.parse().ok())
                .unwrap_or_else(|| panic!("{what} N"))
        };
        match v[i].as_str() {
            "--clients" => {
                a.clients = val("--clients") as usize;
                i += 1;
            }
            "--ticks" => {
                a.ticks = val("--ticks") as usize;
                i += 1;
            }
            "--rate" => {
                a.rate = val("--rate").max(1);
                i += 1;
            }
            "--paced-secs" => {
                a.paced_secs = val("--paced-secs").max(1);
                i += 1;
            }
            "--no-py" => a.py = false,
            "--no-burst" => a.burst = false,
            "--no-remote" => a.remote = false,
            _ => {} // cargo bench passes `--bench`
        }
        i += 1;
    }
    a
}

/// Reads an SSE response until `ticks` tick events (or a `complete`); returns the latencies
/// (µs) of the ticks.
async fn sse_client(addr: SocketAddr, path: String, ticks: usize) -> Vec<u32> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::with_capacity(1 << 16);
    let mut chunk = vec![0u8; 1 << 16];
    let mut lat = Vec::with_capacity(ticks);
    let mut start = 0;
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        if n == 0 {
            return lat;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(p) = buf[start..].windows(2).position(|w| w == b"\n\n") {
            let ev = &buf[start..start + p];
            start += p + 2;
            if ev.windows(11).any(|w| w == b"event: tick") {
                if let Some(q) = ev.windows(5).position(|w| w == b"\"st\":") {
                    let st = ev[q + 5..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .fold(0i64, |a, b| a * 10 + i64::from(b - b'0'));
                    lat.push((now_us() - st).clamp(0, u32::MAX as i64) as u32);
                }
                if lat.len() == ticks {
                    return lat;
                }
            } else if ev.windows(15).any(|w| w == b"event: complete") {
                return lat;
            }
        }
        if start > 1 << 15 {
            buf.drain(..start);
            start = 0;
        }
    }
}

async fn ws_client(addr: SocketAddr, ticks: usize) -> usize {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v3/ws"))
        .await
        .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
        r#"{{"type":"subscribe","id":1,"contract_id":{CON},"tick_types":["bid_ask"]}}"#
    )))
    .await
    .unwrap();
    let mut n = 0;
    while let Some(Ok(m)) = ws.next().await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m
            && t.as_str().contains("\"tt\":\"bid_ask\"")
        {
            n += 1;
            if n == ticks {
                break;
            }
        }
    }
    n
}

fn publish_burst(writer: &mut RingWriter, ticks: usize) {
    let batch: Vec<Record> = (0..64).map(quote).collect();
    let mut left = ticks;
    while left > 0 {
        let n = left.min(batch.len());
        let mut b = batch[..n].to_vec();
        let now = now_us() * 1000;
        for r in &mut b {
            r.ts_recv = now;
        }
        writer.publish_batch(&b);
        left -= n;
    }
}

async fn wait_sinks(srv: &mut ServerProc, n: u64) {
    while srv.sinks() != n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn quantile(v: &[u32], q: f64) -> u32 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

/// What a paced phase measured.
struct Paced {
    /// Publish-to-client latencies, µs, sorted.
    lat: Vec<u32>,
    /// CPU of the server's threads per delivered message, µs.
    server_cpu_us: f64,
    /// CPU of the clients' threads per delivered message, µs.
    client_cpu_us: f64,
    /// CPU of the ring tailer thread (included in `server_cpu_us`), ms per second.
    tailer_ms_per_s: f64,
}

impl Paced {
    fn line(&self, clients: usize, rate: u64) -> String {
        format!(
            "paced {clients} clients x {rate} ticks/s over {} deliveries: p50_us={} p90_us={} \
             p99_us={} max_us={} server_cpu_us_per_msg={:.2} client_cpu_us_per_msg={:.2} \
             tailer_cpu_ms_per_s={:.1}",
            self.lat.len(),
            quantile(&self.lat, 0.5),
            quantile(&self.lat, 0.9),
            quantile(&self.lat, 0.99),
            self.lat.last().copied().unwrap_or(0),
            self.server_cpu_us,
            self.client_cpu_us,
            self.tailer_ms_per_s,
        )
    }
}

/// SSE clients at `rate` ticks/s for `secs`, the publisher on its own thread (it sleeps to
/// each tick's due time; a late wake-up delays the publish, not the measured latency, as
/// `st` is stamped when the record is built).
/// Publishes `n` quotes at `rate` a second on its own thread; gives the writer back.
fn publish_paced(
    mut writer: RingWriter,
    rate: u64,
    n: usize,
) -> std::thread::JoinHandle<RingWriter> {
    std::thread::Builder::new()
        .name("bench-publish".into())
        .spawn(move || {
            let period = Duration::from_nanos(1_000_000_000 / rate);
            let t0 = Instant::now();
            for i in 0..n {
                let due = t0 + period * i as u32;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                writer.publish(&quote(i as i64));
            }
            writer
        })
        .expect("publisher thread")
}

async fn paced(
    srv: &mut ServerProc,
    writer: RingWriter,
    clients: usize,
    rate: u64,
    secs: u64,
) -> (RingWriter, Paced) {
    let path = format!("/v3/stream/{CON}?tick_types=bid_ask");
    let n = (rate * secs) as usize;
    let addr = srv.addr;
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(sse_client(addr, path.clone(), n)))
        .collect();
    wait_sinks(srv, clients as u64).await;
    let (srv0, cli0, tl0) = (srv.cpu_ns(), cpu_ns(&CLIENT_THREADS), srv.tailer_ns());
    let t0 = Instant::now();
    let publisher = publish_paced(writer, rate, n);
    let mut lat = Vec::with_capacity(clients * n);
    for c in tasks {
        lat.extend(c.await.unwrap());
    }
    let (srv1, cli1, tl1) = (srv.cpu_ns(), cpu_ns(&CLIENT_THREADS), srv.tailer_ns());
    let secs = t0.elapsed().as_secs_f64();
    let writer = publisher.join().expect("publisher");
    lat.sort_unstable();
    let per_msg = |ns: u64| ns as f64 / 1000.0 / lat.len().max(1) as f64;
    let p = Paced {
        server_cpu_us: per_msg(srv1 - srv0),
        client_cpu_us: per_msg(cli1 - cli0),
        tailer_ms_per_s: (tl1 - tl0) as f64 / 1e6 / secs,
        lat,
    };
    wait_sinks(srv, 0).await;
    (writer, p)
}

/// The paced point with the clients in `ns` (another process, pinned to core 1) and the
/// server pinned to core 0.
async fn paced_remote(
    srv: &mut ServerProc,
    ns: &Netns,
    writer: RingWriter,
    clients: usize,
    rate: u64,
    secs: u64,
) -> (RingWriter, Option<Paced>) {
    let n = (rate * secs) as usize;
    if !srv.pin("0") {
        return (writer, None);
    }
    let exe = std::env::current_exe().expect("own path");
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "taskset", "-c", "1"])
        .arg(exe)
        .args(["--role", "clients", "--addr", &srv.addr.to_string()])
        .args(["--clients", &clients.to_string(), "--ticks", &n.to_string()])
        .stdout(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        srv.pin("0-1");
        return (writer, None);
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while srv.sinks() != clients as u64 {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            srv.pin("0-1");
            return (writer, None);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (srv0, tl0) = (srv.cpu_ns(), srv.tailer_ns());
    let t0 = Instant::now();
    let publisher = publish_paced(writer, rate, n);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("clients process");
    let (srv1, tl1) = (srv.cpu_ns(), srv.tailer_ns());
    let secs = t0.elapsed().as_secs_f64();
    let writer = publisher.join().expect("publisher");
    srv.pin("0-1");
    wait_sinks(srv, 0).await;
    // `lat` then `cpu_ns` lines.
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lat: Vec<u32> = Vec::new();
    let mut cli_ns = 0u64;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("lat ") {
            lat = v.split(',').filter_map(|x| x.parse().ok()).collect();
        } else if let Some(v) = line.strip_prefix("cpu_ns ") {
            cli_ns = v.trim().parse().unwrap_or(0);
        }
    }
    if lat.is_empty() {
        return (writer, None);
    }
    lat.sort_unstable();
    let per_msg = |ns: u64| ns as f64 / 1000.0 / lat.len().max(1) as f64;
    let p = Paced {
        server_cpu_us: per_msg(srv1 - srv0),
        client_cpu_us: per_msg(cli_ns),
        tailer_ms_per_s: (tl1 - tl0) as f64 / 1e6 / secs,
        lat,
    };
    (writer, Some(p))
}

/// Starts the server process (`--role server`) serving the ring in `dir` on `bind`.
fn start_server(a: &Args, dir: &std::path::Path, bind: &str) -> ServerProc {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .args(["--role", "server", "--bind", bind])
        .arg("--dir")
        .arg(dir)
        .args(["--clients", &a.clients.to_string()])
        .args([
            "--queue",
            &(a.ticks.max((a.rate * a.paced_secs) as usize) + 16).to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("server process");
    let stdin = child.stdin.take().expect("stdin");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("server address");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("addr ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("server said {line:?}"));
    ServerProc {
        child,
        stdin,
        out,
        addr,
    }
}

/// `--role server`: the server as `ib-stream serve` runs it (`serve::listen::serve` with
/// `app()`, one runtime worker per core, the ring tailer thread), answering `sinks` on stdin;
/// exits when stdin closes.
fn server_role(v: &[String]) {
    let get = |k: &str| {
        v.iter()
            .position(|x| x == k)
            .and_then(|i| v.get(i + 1))
            .unwrap_or_else(|| panic!("{k}"))
            .clone()
    };
    let dir = std::path::PathBuf::from(get("--dir"));
    let clients: usize = get("--clients").parse().expect("--clients");
    let queue: usize = get("--queue").parse().expect("--queue");
    let bind: std::net::IpAddr = get("--bind").parse().expect("--bind");
    let cfg = ServeConfig {
        shm_dir: dir.clone(),
        control_socket: dir.join("control.sock"),
        token: None,
        // Room for the lighter paced points (100 clients) whatever `--clients` is.
        max_streams: clients.max(100) * 2,
        tracked: vec![TrackedContract {
            con_id: CON,
            symbol: "MNQ".into(),
            kinds: vec![RecordKind::TbtBidAsk],
            buffer_hours: 1,
        }],
        queue_capacity: queue,
        heartbeat: Duration::from_secs(60),
        default_slow: SlowPolicy::Conflate,
        ws: WsLimits::default(),
        // Every bench client comes from one address: no cap per address.
        per_ip: ib_stream::serve::limits::PerIpLimits {
            sse_streams: 0,
            ws_connections: 0,
        },
        contract_cache_dir: dir.join("cache"),
        contract_cache_ttl: Duration::from_secs(60),
        control_timeout: Duration::from_secs(1),
        stale_after: Duration::from_secs(5),
        identity: "bench".into(),
        client_ids: ib_stream::clientid::IdSettings::of(&ib_stream::config::Settings::defaults(
            ib_stream::config::Environment::Development,
        )),
    };
    // The runtime `ib-stream serve` builds (`serve::run_blocking`).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("serve-worker")
        .build()
        .expect("server runtime");
    rt.block_on(async {
        let state = AppState::new(cfg, None);
        let listener = tokio::net::TcpListener::bind((bind, 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let limits = ib_stream::serve::listen::ConnLimits {
            max_connections: clients.max(100) * 2 + 64,
            header_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let stats = std::sync::Arc::clone(&state.connections);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(ib_stream::serve::listen::serve(
            listener,
            app(state.clone()),
            limits,
            stats,
            async move {
                let _ = stop_rx.await;
            },
        ));
        while !state
            .hub
            .stats()
            .ring_open
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!("addr {addr}");
        let st = state.clone();
        let commands = tokio::task::spawn_blocking(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match line.trim() {
                    "sinks" => println!(
                        "{}",
                        st.hub
                            .stats()
                            .sinks
                            .load(std::sync::atomic::Ordering::Relaxed)
                    ),
                    _ => break,
                }
            }
        });
        let _ = commands.await;
        let _ = stop_tx.send(());
        state.hub.shutdown();
    });
    std::process::exit(0);
}

/// `--role clients`: `--clients` SSE clients of `--addr` reading `--ticks` ticks each; prints
/// `lat ` and every latency (µs, comma-separated), then `cpu_ns ` and this process's CPU.
fn clients_role(v: &[String]) {
    let get = |k: &str| {
        v.iter()
            .position(|x| x == k)
            .and_then(|i| v.get(i + 1))
            .unwrap_or_else(|| panic!("{k}"))
            .clone()
    };
    let addr: SocketAddr = get("--addr").parse().expect("--addr");
    let clients: usize = get("--clients").parse().expect("--clients");
    let ticks: usize = get("--ticks").parse().expect("--ticks");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-client")
        .build()
        .expect("client runtime");
    let path = format!("/v3/stream/{CON}?tick_types=bid_ask");
    let lat: Vec<u32> = rt.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|_| tokio::spawn(sse_client(addr, path.clone(), ticks)))
            .collect();
        let mut lat = Vec::with_capacity(clients * ticks);
        for t in tasks {
            lat.extend(t.await.expect("client"));
        }
        lat
    });
    let text: Vec<String> = lat.iter().map(u32::to_string).collect();
    println!("lat {}", text.join(","));
    println!("cpu_ns {}", rusage_ns(std::process::id()));
}

async fn run(a: &Args, srv: &mut ServerProc, ns: Option<&Netns>, mut writer: RingWriter) -> String {
    let addr = srv.addr;
    let path = format!("/v3/stream/{CON}?tick_types=bid_ask");
    let (mut sse_mps, mut ws_mps, mut burst_cpu) = (f64::NAN, f64::NAN, f64::NAN);
    if a.burst {
        // (1) SSE burst.
        let clients: Vec<_> = (0..a.clients)
            .map(|_| tokio::spawn(sse_client(addr, path.clone(), a.ticks)))
            .collect();
        wait_sinks(srv, a.clients as u64).await;
        let srv0 = srv.cpu_ns();
        let t0 = Instant::now();
        publish_burst(&mut writer, a.ticks);
        for c in clients {
            assert_eq!(
                c.await.unwrap().len(),
                a.ticks,
                "an SSE client missed ticks"
            );
        }
        sse_mps = (a.clients * a.ticks) as f64 / t0.elapsed().as_secs_f64();
        burst_cpu = (srv.cpu_ns() - srv0) as f64 / 1e6 / (a.clients * a.ticks) as f64 * 100_000.0;
        wait_sinks(srv, 0).await;

        // (2) WebSocket burst.
        let clients: Vec<_> = (0..a.clients)
            .map(|_| tokio::spawn(ws_client(addr, a.ticks)))
            .collect();
        wait_sinks(srv, a.clients as u64).await;
        let t0 = Instant::now();
        publish_burst(&mut writer, a.ticks);
        for c in clients {
            assert_eq!(c.await.unwrap(), a.ticks, "a WebSocket client missed ticks");
        }
        ws_mps = (a.clients * a.ticks) as f64 / t0.elapsed().as_secs_f64();
        wait_sinks(srv, 0).await;
    }

    // (3) Latency, paced: the goal's point, then two lighter ones.
    let (writer, main) = paced(srv, writer, a.clients, a.rate, a.paced_secs).await;
    println!("{}", main.line(a.clients, a.rate));
    let (writer, light_rate) = paced(srv, writer, 100, 100, a.paced_secs).await;
    println!("{}", light_rate.line(100, 100));
    let (writer, few) = paced(srv, writer, 10, 1000, a.paced_secs).await;
    println!("{}", few.line(10, 1000));
    // (3b) The goal's point with the clients remote (another namespace, the other core).
    let remote = match ns {
        Some(ns) if a.remote => {
            let (_writer, r) = paced_remote(srv, ns, writer, a.clients, a.rate, a.paced_secs).await;
            if let Some(r) = &r {
                println!("remote {}", r.line(a.clients, a.rate));
            }
            r
        }
        _ => None,
    };
    let remote_p99 = remote
        .as_ref()
        .map_or_else(|| "n/a".to_string(), |r| quantile(&r.lat, 0.99).to_string());

    // (4) The Python peer.
    let py_mps = if a.py && a.burst {
        py_peer(a).await
    } else {
        None
    };
    let (py, vs) = match py_mps {
        Some(p) => (format!("{p:.0}"), format!("{:.2}", sse_mps / p)),
        None => ("n/a".into(), "n/a".into()),
    };
    format!(
        "bench=fanout clients={} sse_mps={sse_mps:.0} ws_mps={ws_mps:.0} py_peer_mps={py} vs_py={vs} p99_us={} \
         p99_us_100x100={} p99_us_10x1k={} cpu_ms_per_100k={:.0} cpu_ms_per_100k_burst={burst_cpu:.0} \
         cpu_us_per_paced_delivery={:.2} p99_us_remote_clients={remote_p99}",
        a.clients,
        quantile(&main.lat, 0.99),
        quantile(&light_rate.lat, 0.99),
        quantile(&few.lat, 0.99),
        main.server_cpu_us * 100_000.0 / 1000.0,
        main.server_cpu_us,
    )
}

async fn py_peer(a: &Args) -> Option<f64> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
        l.local_addr().ok()?.port()
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/fanout_py_peer.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--port", &port.to_string()])
        .args(["--clients", &a.clients.to_string()])
        .args(["--ticks", &a.ticks.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let mut out = child.stdout.take()?;
    let mut ready = [0u8; 6];
    out.read_exact(&mut ready).await.ok()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let t0 = Instant::now();
    let clients: Vec<_> = (0..a.clients)
        .map(|_| tokio::spawn(sse_client(addr, "/".into(), a.ticks)))
        .collect();
    for c in clients {
        if c.await.ok()?.len() != a.ticks {
            return None;
        }
    }
    let mps = (a.clients * a.ticks) as f64 / t0.elapsed().as_secs_f64();
    let _ = child.wait().await;
    Some(mps)
}

fn main() {
    let v: Vec<String> = std::env::args().collect();
    match v
        .iter()
        .position(|x| x == "--role")
        .and_then(|i| v.get(i + 1))
    {
        Some(r) if r == "server" => return server_role(&v),
        Some(r) if r == "clients" => return clients_role(&v),
        _ => {}
    }
    let a = args();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-client")
        .build()
        .expect("client runtime");
    let dir = tempfile::tempdir().unwrap();
    let opts = ShmOptions {
        prefault: false,
        ..ShmOptions::default()
    };
    let writer = RingWriter::create(&dir.path().join(RING_FILE_NAME), 1 << 20, &opts).unwrap();
    writer.heartbeat(now_us() as u64 * 1000);
    // The namespace first: the server then listens on its host end (reached over loopback by
    // the local clients, over the veth pair by the remote ones).
    let ns = if a.remote { Netns::create() } else { None };
    if a.remote && ns.is_none() {
        println!("remote clients: cannot make a network namespace here (needs root and `ip`)");
    }
    let bind = if ns.is_some() { HOST_ADDR } else { "127.0.0.1" };
    let mut srv = start_server(&a, dir.path(), bind);
    let line = client_rt.block_on(run(&a, &mut srv, ns.as_ref(), writer));
    drop(srv);
    drop(ns);
    // The result must be the last line.
    println!("{line}");
}
