//! What the binaries say when they cannot run, as real processes: one line per failure, each
//! cause once, the exit code `up` relies on, and settings that are refused before anything runs.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ib_stream::up::http;

const EXE: &str = env!("CARGO_BIN_EXE_ib-stream");
const SIM: &str = env!("CARGO_BIN_EXE_tws-sim");

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ib-stream-cli-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `ib-stream ARGS` with no `IB_STREAM_*` variable from the test's own environment.
fn ib(args: &[&str]) -> Command {
    let mut c = Command::new(EXE);
    c.args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("IB_STREAM_") {
            c.env_remove(k);
        }
    }
    c
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn shm_set(d: &Path, name: &str) -> String {
    format!("IB_STREAM_SHM_DIR={}", d.join(name).display())
}

#[test]
fn tws_sim_on_a_port_in_use_says_so_in_one_line_and_exits_78() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(SIM)
        .args(["--port", &port])
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line, no backtrace: {err}"
    );
    assert!(
        err.starts_with(&format!(
            "tws-sim: error: cannot listen on 127.0.0.1:{port}: Address already in use"
        )),
        "{err}"
    );
}

#[test]
fn serve_on_a_port_in_use_says_the_cause_once() {
    let d = dir("serveport");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = ib(&[
        "serve",
        "--set",
        &shm_set(&d, "shm"),
        "--set",
        &format!("IB_STREAM_STORAGE_PATH={}", d.join("storage").display()),
        "--set",
        &format!("IB_STREAM_SERVE_PORT={port}"),
    ])
    .output()
    .unwrap();
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(78), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("ib-stream: error: "))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(
        line.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{line}"
    );
    assert_eq!(line.matches("Address already in use").count(), 1, "{line}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn tail_of_an_environment_that_is_not_running_fails_at_once_saying_so_once() {
    let d = dir("tail");
    let t0 = Instant::now();
    let out = ib(&["tail", "--set", &shm_set(&d, "shm")])
        .output()
        .unwrap();
    let took = t0.elapsed();
    let (stdout, err) = text(&out);
    assert!(!out.status.success());
    assert!(stdout.is_empty(), "{stdout}");
    // Today's default wait was 10 s of silence; anything near it means it waited.
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("ib-stream: error: "), "{err}");
    assert_eq!(
        err.matches("no such shared-memory file").count(),
        1,
        "{err}"
    );
    assert_eq!(err.matches("ticks.ring").count(), 1, "{err}");

    // Asked to wait: it says what for, then the one error.
    let out = ib(&["tail", "--set", &shm_set(&d, "shm"), "--wait", "0.3"])
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(
        err.starts_with("tail: waiting up to 0.3 s for the engine's ring "),
        "{err}"
    );
    assert_eq!(err.matches("ib-stream: error: ").count(), 1, "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_log_level_that_would_log_nothing_is_refused_by_every_subcommand() {
    let d = dir("loglevel");
    for sub in [
        &["config", "check"][..],
        &["serve"],
        &["engine"],
        &["record"],
    ] {
        let out = ib(sub)
            .args(["--set", &shm_set(&d, "shm")])
            .env("IB_STREAM_LOG_LEVEL", "warnn")
            .output()
            .unwrap();
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(78), "{sub:?}: {err}");
        assert!(
            err.contains("IB_STREAM_LOG_LEVEL = `warnn` (from env IB_STREAM_LOG_LEVEL)")
                && err.contains("off, error, warn, info, debug, trace"),
            "{sub:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_mistyped_variable_gets_a_did_you_mean_warning() {
    let d = dir("typo");
    let out = ib(&["config", "check", "--set", &shm_set(&d, "shm")])
        .env("IB_STREAM_LOG_LEVLE", "debug")
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(
        err.contains(
            "ib-stream: warning: environment variable IB_STREAM_LOG_LEVLE is not an ib-stream setting and is ignored; did you mean IB_STREAM_LOG_LEVEL?"
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn config_check_reports_unwritable_storage_and_ports_in_use() {
    let d = dir("check");
    std::fs::write(d.join("file"), b"x").unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = ib(&[
        "config",
        "check",
        "--set",
        &shm_set(&d, "shm"),
        "--set",
        &format!(
            "IB_STREAM_STORAGE_PATH={}",
            d.join("file").join("storage").display()
        ),
        "--set",
        &format!("IB_STREAM_SERVE_PORT={port}"),
        "--set",
        "IB_STREAM_HOST=127.0.0.1",
    ])
    .output()
    .unwrap();
    let (stdout, err) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("/file/storage: FAILED: cannot create it: Not a directory"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "check web port 127.0.0.1:{port}: FAILED: cannot listen: Address already in use"
        )),
        "{stdout}"
    );
    assert!(err.contains("2 check(s) failed"), "{err}");

    // Fine storage (created) and a free port pass.
    drop(taken);
    let out = ib(&[
        "config",
        "check",
        "--set",
        &shm_set(&d, "shm"),
        "--set",
        &format!("IB_STREAM_STORAGE_PATH={}", d.join("st").display()),
        "--set",
        &format!("IB_STREAM_SERVE_PORT={port}"),
        "--set",
        "IB_STREAM_HOST=127.0.0.1",
    ])
    .output()
    .unwrap();
    let (stdout, err) = text(&out);
    assert!(out.status.success(), "{stdout}{err}");
    assert!(stdout.contains(": writable"), "{stdout}");
    assert!(d.join("st").is_dir());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn status_names_another_environments_web_server_on_its_port() {
    let d = dir("foreign");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port_set = format!("IB_STREAM_SERVE_PORT={port}");
    // Staging's web server (no engine: /health answers 503, naming its shm dir).
    let staging_shm = shm_set(&d, "staging");
    let mut serve = ib(&[
        "serve",
        "--env",
        "staging",
        "--set",
        &staging_shm,
        "--set",
        &format!("IB_STREAM_STORAGE_PATH={}", d.join("st-staging").display()),
        "--set",
        &port_set,
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while http::get("127.0.0.1", port, "/health", None, Duration::from_secs(1)).is_err() {
        assert!(Instant::now() < until, "serve never answered");
        assert!(serve.try_wait().unwrap().is_none(), "serve exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = |env: &str, shm: &str| {
        let o = ib(&[
            "status",
            "--env",
            env,
            "--set",
            shm,
            "--set",
            &format!(
                "IB_STREAM_STORAGE_PATH={}",
                d.join(format!("st-{env}")).display()
            ),
            "--set",
            &port_set,
        ])
        .output()
        .unwrap();
        let (out, err) = text(&o);
        (o.status.success(), out, err)
    };
    let (ok, out, err) = status("development", &shm_set(&d, "development"));
    let (_, own, _) = status("staging", &staging_shm);
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(!ok);
    let theirs = std::path::absolute(d.join("staging")).unwrap();
    assert!(
        out.contains(&format!(
            "answers for ANOTHER environment (shm {}",
            theirs.display()
        )),
        "{out}"
    );
    assert!(
        err.contains(&format!("port {port} is another environment's web server")),
        "{err}"
    );
    // Its own environment's status sees its own server.
    assert!(
        !own.contains("ANOTHER") && own.contains("/health 503"),
        "{own}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn tail_waits_for_the_ring_only_while_an_up_is_starting_it_and_says_so() {
    let d = dir("tailup");
    let shm = d.join("shm");
    std::fs::create_dir_all(&shm).unwrap();
    // A live `up` of the environment: its lock file names a running process (this test).
    let lock = ib_stream::ipc::WriterLock::lock_path(&ib_stream::up::lock_target(&shm));
    std::fs::write(&lock, format!("{}\n", std::process::id())).unwrap();
    let mut tail = ib(&["tail", "--set", &shm_set(&d, "shm")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(tail.stderr.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let still_waiting = tail.try_wait().unwrap().is_none();
    let _ = tail.kill();
    let _ = tail.wait();
    assert!(
        first.starts_with("tail: waiting up to 10 s for the engine's ring ")
            && first.contains(&format!(
                "(`ib-stream up`, pid {}, is starting it)",
                std::process::id()
            )),
        "{first}"
    );
    assert!(still_waiting);
    let _ = std::fs::remove_dir_all(&d);
}

/// `ib-stream config keys | head -1`: the reader closes the pipe before (here: long before) the
/// command writes. The command stops quietly with success; it used to panic in `println!`.
#[test]
fn printing_into_a_closed_pipe_stops_quietly_instead_of_panicking() {
    let d = dir("closedpipe");
    for args in [&["config", "keys"][..], &["config", "check"][..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = ib(args)
            .arg("--set")
            .arg(shm_set(&d, "shm"))
            .arg("--set")
            .arg(format!(
                "IB_STREAM_STORAGE_PATH={}",
                d.join("storage").display()
            ))
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let (_, err) = text(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);
        assert!(err.is_empty(), "{args:?}: nothing to say on stderr: {err}");
    }
    let _ = std::fs::remove_dir_all(&d);
}
