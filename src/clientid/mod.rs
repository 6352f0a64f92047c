//! The client-id registry: IB client ids by purpose (streaming, backfill, lookup, tools) in
//! configured ranges, one registry per environment kept in a small file, so processes of
//! one environment never compete for an id. A holder that is gone gives its id back by
//! itself (reclaimed at the next allocation); an id IB refuses with 326 ("client id is
//! already in use") is skipped for a while and the next id of the range is probed.
//!
//! [`ranges`] parses and checks the ranges, [`registry`] holds the rules without IO and
//! [`store`] keeps the file. [`ClientIds`] puts them together for a process.

pub mod ranges;
pub mod registry;
pub mod store;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

pub use ranges::{IdRanges, Purpose};
pub use registry::{Claimant, Lease, Process, REFUSED_TTL_NS, Registry, RegistryError};
pub use store::StoreError;

use crate::config::{Environment, Settings};

/// The settings the registry's views need (the web server keeps these, not [`Settings`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdSettings {
    /// The environment.
    pub environment: Environment,
    /// Whether the registry is on ([`Settings::client_id_registry`]).
    pub registry: bool,
    /// The directory of its file.
    pub dir: PathBuf,
    /// Its ranges.
    pub ranges: IdRanges,
    /// The engine's fixed id and how many after it it tries (registry off).
    pub fixed: (i32, u32),
}

impl IdSettings {
    /// Those of `s`.
    pub fn of(s: &Settings) -> IdSettings {
        IdSettings {
            environment: s.environment,
            registry: s.client_id_registry,
            dir: s.client_id_registry_dir(),
            ranges: s.client_id_ranges.clone(),
            fixed: (s.client_id, s.client_id_range),
        }
    }

    fn fixed_last(&self) -> i32 {
        self.fixed.0.saturating_add(self.fixed.1 as i32)
    }
}

/// Why a process got no id.
#[derive(Debug, thiserror::Error)]
pub enum ClientIdError {
    /// The range is used up.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The registry's file could not be used.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One process's access to its environment's registry.
#[derive(Debug, Clone)]
pub struct ClientIds {
    path: PathBuf,
    ranges: IdRanges,
    me: Process,
}

impl ClientIds {
    /// The registry of the settings' environment, when it is enabled.
    pub fn from_settings(s: &Settings) -> Option<ClientIds> {
        s.client_id_registry.then(|| {
            ClientIds::new(
                &s.client_id_registry_dir(),
                s.environment.name(),
                s.client_id_ranges.clone(),
            )
        })
    }

    /// The registry of environment `env` kept in `dir`.
    pub fn new(dir: &Path, env: &str, ranges: IdRanges) -> ClientIds {
        ClientIds {
            path: store::file_path(dir, env),
            ranges,
            me: store::this_process(),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ranges.
    pub fn ranges(&self) -> &IdRanges {
        &self.ranges
    }

    /// An id for `holder`'s session of `purpose`, held until [`ClientIds::release`] or
    /// this process ends.
    pub fn acquire(&self, purpose: Purpose, holder: &str) -> Result<i32, ClientIdError> {
        let who = self.claimant(purpose, holder);
        let ranges = &self.ranges;
        let now = now_ns();
        Ok(store::update(&self.path, |r| {
            store::log_reclaimed(&r.reclaim(now, &store::is_alive));
            r.acquire(ranges, &who, now, &store::is_alive)
        })??)
    }

    /// IB answered 326 for `id`: the next id of the range to try (now held instead).
    pub fn refused(&self, purpose: Purpose, holder: &str, id: i32) -> Result<i32, ClientIdError> {
        let who = self.claimant(purpose, holder);
        let ranges = &self.ranges;
        let now = now_ns();
        Ok(store::update(&self.path, |r| {
            r.refused(ranges, &who, id, now, &store::is_alive)
        })??)
    }

    /// Gives `id` back.
    pub fn release(&self, id: i32) -> Result<(), ClientIdError> {
        let me = self.me;
        Ok(store::update(&self.path, |r| r.release(id, &me))?)
    }

    fn claimant<'a>(&self, purpose: Purpose, holder: &'a str) -> Claimant<'a> {
        Claimant {
            purpose,
            holder,
            process: self.me,
        }
    }
}

fn now_ns() -> i64 {
    crate::ipc::shm::unix_time_ns() as i64
}

/// Every id in use as JSON (`GET /v3/client-ids`): the registry's leases and refusals when
/// it is enabled, each lease with whether its process still runs; always the id the engine
/// says it is connected with (`engine_client_id`, from its status region; None when unknown).
pub fn view(s: &IdSettings, engine_client_id: Option<i32>) -> Value {
    let ranges: serde_json::Map<String, Value> = Purpose::ALL
        .into_iter()
        .map(|p| {
            let r = s.ranges.of(p);
            (p.name().to_string(), json!([r.start(), r.end()]))
        })
        .collect();
    let mut out = json!({
        "environment": s.environment.name(),
        "registry": s.registry,
        "engine_client_id": engine_client_id,
    });
    if !s.registry {
        out["fixed"] = json!({
            "client_id": s.fixed.0,
            "range": [s.fixed.0, s.fixed_last()],
        });
        return out;
    }
    let path = store::file_path(&s.dir, s.environment.name());
    out["ranges"] = Value::Object(ranges);
    out["file"] = json!(path.display().to_string());
    match store::load(&path) {
        Ok(reg) => {
            let now = now_ns();
            out["in_use"] = reg
                .leases
                .iter()
                .map(|l| {
                    json!({
                        "id": l.id,
                        "purpose": l.purpose,
                        "holder": l.holder,
                        "pid": l.process.pid,
                        "alive": store::is_alive(&l.process),
                        "since_ns": l.since_ns,
                    })
                })
                .collect();
            out["refused"] = reg
                .refused
                .iter()
                .filter(|r| now.saturating_sub(r.at_ns) < REFUSED_TTL_NS)
                .map(|r| json!({"id": r.id, "at_ns": r.at_ns}))
                .collect();
        }
        Err(e) => {
            out["in_use"] = json!([]);
            out["refused"] = json!([]);
            out["error"] = json!(e.to_string());
        }
    }
    out
}

/// The lines of `ib-stream status` for the ids in use.
pub fn status_lines(s: &IdSettings, engine_client_id: Option<i32>) -> Vec<String> {
    let v = view(s, engine_client_id);
    let mut lines = Vec::new();
    let engine = engine_client_id.map_or("unknown".to_string(), |id| id.to_string());
    if !s.registry {
        lines.push(format!(
            "client ids: fixed {}-{} (registry off); engine uses {engine}",
            s.fixed.0,
            s.fixed_last()
        ));
        return lines;
    }
    lines.push(format!(
        "client ids: registry {} ({}); engine uses {engine}",
        v["file"].as_str().unwrap_or(""),
        s.ranges
    ));
    if let Some(e) = v["error"].as_str() {
        lines.push(format!("  error: {e}"));
    }
    for l in v["in_use"].as_array().into_iter().flatten() {
        lines.push(format!(
            "  {} {} {} pid {}{}",
            l["id"],
            l["purpose"].as_str().unwrap_or(""),
            l["holder"].as_str().unwrap_or(""),
            l["pid"],
            if l["alive"] == true {
                ""
            } else {
                " (gone: reclaimed at the next allocation)"
            }
        ));
    }
    for r in v["refused"].as_array().into_iter().flatten() {
        lines.push(format!(
            "  {} refused by IB (326), skipped for now",
            r["id"]
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lists_each_holder_marks_the_gone_and_the_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings::defaults(Environment::Development);
        s.client_id_registry = true;
        s.client_id_registry_dir = Some(dir.path().to_path_buf());
        let path = store::file_path(dir.path(), "development");
        let gone = Process {
            pid: u32::MAX - 1,
            start: 1,
        };
        store::save(
            &path,
            &Registry {
                leases: vec![
                    Lease {
                        id: 15,
                        purpose: "backfill".into(),
                        holder: "backfill".into(),
                        process: gone,
                        since_ns: 1,
                    },
                    Lease {
                        id: 21,
                        purpose: "streaming".into(),
                        holder: "engine".into(),
                        process: store::this_process(),
                        since_ns: 2,
                    },
                ],
                refused: vec![registry::Refused {
                    id: 20,
                    at_ns: now_ns(),
                }],
            },
        )
        .unwrap();
        let lines = status_lines(&IdSettings::of(&s), Some(21));
        assert!(lines[0].starts_with("client ids: registry "), "{lines:?}");
        assert!(lines[0].ends_with("engine uses 21"), "{lines:?}");
        let pid = std::process::id();
        assert_eq!(
            lines[1..],
            [
                format!(
                    "  15 backfill backfill pid {} (gone: reclaimed at the next allocation)",
                    u32::MAX - 1
                ),
                format!("  21 streaming engine pid {pid}"),
                "  20 refused by IB (326), skipped for now".to_string(),
            ]
        );
        s.client_id_registry = false;
        assert_eq!(
            status_lines(&IdSettings::of(&s), None),
            vec!["client ids: fixed 20-25 (registry off); engine uses unknown".to_string()]
        );
    }
}
