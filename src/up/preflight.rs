//! What `ib-stream config check` verifies beyond parsing: that the processes `up` would start
//! can run here. The storage directory must be writable (it is created when absent) and the
//! ports the environment listens on must be free: the web server's, the contract service's when
//! configured, and the simulator's when it simulates.
//!
//! When the environment is already running (its `up` lock is held by a live process) its own
//! ports are naturally taken: that is reported as a note, not a failure, so `config check` of a
//! running environment still passes.

use std::net::{TcpListener, ToSocketAddrs};
use std::path::Path;

use crate::config::Loaded;

use super::plan;

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It holds.
    Ok(String),
    /// It does not matter now (e.g. the running environment holds its own port).
    Note(String),
    /// It fails: what `up` would fail on.
    Failed(String),
}

/// One check: what was checked and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What, e.g. `web port 127.0.0.1:8101`.
    pub what: String,
    /// The outcome.
    pub outcome: Outcome,
}

/// Runs every check for `loaded`. `running_up` is the pid of the environment's live `up`, if
/// any ([`super::running_up`]).
pub fn run(loaded: &Loaded, running_up: Option<u32>) -> Vec<Check> {
    let s = &loaded.settings;
    let mut out = Vec::new();
    if s.enable_storage {
        out.push(Check {
            what: format!("storage {}", s.storage_path.display()),
            outcome: writable(&s.storage_path),
        });
    }
    let mut ports = vec![("web port", s.serve_host.clone(), s.serve_port)];
    if plan::wants_simulation(loaded, false) {
        ports.push(("simulator port", "127.0.0.1".into(), plan::sim_port(loaded)));
    }
    if let Some(port) = s.contract_port {
        ports.push(("contract port", s.serve_host.clone(), port));
    }
    for (what, host, port) in ports {
        out.push(Check {
            what: format!("{what} {host}:{port}"),
            outcome: port_free(&host, port, running_up),
        });
    }
    out
}

/// Whether `dir` can be written: created when absent, then a probe file written and removed.
fn writable(dir: &Path) -> Outcome {
    if let Err(e) = crate::storage::private_fs::create_private_dir_all(dir) {
        return Outcome::Failed(format!("cannot create it: {e}"));
    }
    let probe = dir.join(format!(".ib-stream-write-check-{}", std::process::id()));
    match std::fs::write(&probe, b"ib-stream config check\n") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            Outcome::Ok("writable".into())
        }
        Err(e) => Outcome::Failed(format!("not writable: {e}")),
    }
}

/// Whether `host:port` can be listened on now.
fn port_free(host: &str, port: u16, running_up: Option<u32>) -> Outcome {
    let addr = match (host, port).to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        Ok(None) => return Outcome::Failed("the host has no address".into()),
        Err(e) => return Outcome::Failed(format!("the host does not resolve: {e}")),
    };
    match TcpListener::bind(addr) {
        Ok(_) => Outcome::Ok("free".into()),
        Err(e) => match running_up {
            Some(pid) if e.kind() == std::io::ErrorKind::AddrInUse => Outcome::Note(format!(
                "in use, as expected: this environment is running (`ib-stream up`, pid {pid})"
            )),
            _ => Outcome::Failed(format!("cannot listen: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigSources, load};

    fn loaded(sets: &[(&str, String)]) -> Loaded {
        load(&ConfigSources {
            flags: sets
                .iter()
                .map(|(k, v)| ("--set".into(), k.to_string(), v.clone()))
                .collect(),
            ..Default::default()
        })
        .unwrap()
    }

    fn outcome<'a>(checks: &'a [Check], what: &str) -> &'a Outcome {
        &checks
            .iter()
            .find(|c| c.what.starts_with(what))
            .unwrap_or_else(|| panic!("no {what} in {checks:?}"))
            .outcome
    }

    #[test]
    fn storage_under_a_file_and_ports_in_use_fail_unless_the_environment_runs() {
        let dir = tempfile_dir("preflight");
        std::fs::write(dir.join("file"), b"x").unwrap();
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let sim = TcpListener::bind("127.0.0.1:0").unwrap();
        let contract = TcpListener::bind("127.0.0.1:0").unwrap();
        let l = loaded(&[
            (
                "IB_STREAM_STORAGE_PATH",
                dir.join("file/storage").display().to_string(),
            ),
            ("IB_STREAM_SERVE_PORT", port.to_string()),
            (
                "IB_STREAM_CONTRACT_PORT",
                contract.local_addr().unwrap().port().to_string(),
            ),
            (
                "IB_STREAM_PORTS",
                sim.local_addr().unwrap().port().to_string(),
            ),
            ("IB_STREAM_SIMULATE", "true".into()),
        ]);
        let checks = run(&l, None);
        assert!(
            matches!(outcome(&checks, "storage"), Outcome::Failed(m) if m.contains("cannot create it")),
            "{checks:?}"
        );
        assert!(
            matches!(outcome(&checks, "web port"), Outcome::Failed(m) if m.contains("cannot listen")),
            "{checks:?}"
        );
        assert!(
            matches!(outcome(&checks, "simulator port"), Outcome::Failed(_)),
            "{checks:?}"
        );
        assert!(
            matches!(outcome(&checks, "contract port"), Outcome::Failed(m) if m.contains("cannot listen")),
            "{checks:?}"
        );
        // The environment's own `up` holds them: a note.
        let checks = run(&l, Some(4242));
        assert!(
            matches!(outcome(&checks, "web port"), Outcome::Note(m) if m.contains("pid 4242")),
            "{checks:?}"
        );

        // Absent storage is created; free ports pass.
        drop(taken);
        drop(sim);
        drop(contract);
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let l = loaded(&[
            (
                "IB_STREAM_STORAGE_PATH",
                dir.join("new/storage").display().to_string(),
            ),
            ("IB_STREAM_SERVE_PORT", free.to_string()),
            ("IB_STREAM_HOST", "127.0.0.1".into()),
        ]);
        let checks = run(&l, None);
        assert_eq!(checks.len(), 2, "no simulator with a gateway: {checks:?}");
        assert_eq!(outcome(&checks, "storage"), &Outcome::Ok("writable".into()));
        assert!(dir.join("new/storage").is_dir());
        assert_eq!(outcome(&checks, "web port"), &Outcome::Ok("free".into()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ibs-{tag}-{}-{:x}",
            std::process::id(),
            crate::ipc::shm::random_u64()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
