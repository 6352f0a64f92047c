//! What `ib-stream up` starts: the children of one environment, their arguments and how each
//! one shows it is ready. Pure (settings in, a plan out) so it is tested without processes.

use std::path::{Path, PathBuf};

use crate::config::{Environment, Loaded, Settings};

/// The tracked contract a simulation records when nothing else is configured: MNQ (the
/// instrument the original IB-Stream tracked), bid/ask and last, so the page shows ticks at once.
pub const SIM_DEFAULT_TRACKED: &str = "711280073:MNQ:bid_ask;last:24";

/// The kinds of child, in start order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChildKind {
    /// The simulated gateway.
    Sim,
    /// The engine (IB session to the ring).
    Engine,
    /// The recorder (ring to storage).
    Recorder,
    /// The web server.
    Serve,
    /// The mirror (the ring rebuilt from NATS JetStream; `up --role mirror`).
    Mirror,
    /// The backfill (recorded gaps filled from IB's history; `IB_STREAM_BACKFILL`).
    Backfill,
}

impl ChildKind {
    /// The name used in logs and messages.
    pub fn name(self) -> &'static str {
        match self {
            ChildKind::Sim => "tws-sim",
            ChildKind::Engine => "engine",
            ChildKind::Recorder => "recorder",
            ChildKind::Serve => "serve",
            ChildKind::Mirror => "mirror",
            ChildKind::Backfill => "backfill",
        }
    }
}

/// The configuration flags every `ib-stream` child gets, exactly as `up` got them, so every
/// child loads one configuration.
#[derive(Clone, Debug, Default)]
pub struct GlobalFlags {
    /// `--env`.
    pub env: Option<Environment>,
    /// `--env-file` (made absolute).
    pub env_file: Option<PathBuf>,
    /// `--set KEY=VALUE`, in order.
    pub sets: Vec<String>,
}

/// One child to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildSpec {
    /// What it is.
    pub kind: ChildKind,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// Everything `up` runs for one environment.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The environment.
    pub environment: Environment,
    /// Whether tws-sim is part of it.
    pub simulate: bool,
    /// The simulator's port (when simulating).
    pub sim_port: Option<u16>,
    /// Children in start order.
    pub children: Vec<ChildSpec>,
    /// The settings every child sees (after the `up` additions).
    pub settings: Settings,
    /// Where the child logs go.
    pub log_dir: PathBuf,
}

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The tws-sim binary is not beside `ib-stream`.
    #[error(
        "simulation needs the tws-sim binary at {0}; build it with `cargo build --bins` (or `cargo build --release --bins`)"
    )]
    NoSimBinary(PathBuf),
    /// The settings with the `up` additions do not load.
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// `--sim-arg` given while no simulator runs (a real gateway is configured).
    #[error(
        "--sim-arg {0}: no simulator runs in this environment (a gateway is configured); add --simulate or drop --sim-arg"
    )]
    SimArgsWithoutSimulation(String),
    /// `--sim-arg` tried to set what `up` itself decides.
    #[error("--sim-arg {0}: the simulator's port is set by `up` (IB_STREAM_PORTS); leave it out")]
    SimArgOwnedByUp(String),
}

impl Plan {
    /// Appends `extra` (from `up --sim-arg`, e.g. `--rate=500`, `--control-port=0`,
    /// `--send-log=FILE`) to the simulator's arguments, so tests and demonstrations can shape
    /// the simulated feed without a second way of starting it. The port stays `up`'s.
    pub fn add_sim_args(&mut self, extra: &[String]) -> Result<(), PlanError> {
        let Some(first) = extra.first() else {
            return Ok(());
        };
        if let Some(bad) = extra
            .iter()
            .find(|a| *a == "--port" || a.starts_with("--port="))
        {
            return Err(PlanError::SimArgOwnedByUp(bad.clone()));
        }
        let sim = self
            .children
            .iter_mut()
            .find(|c| c.kind == ChildKind::Sim)
            .ok_or_else(|| PlanError::SimArgsWithoutSimulation(first.clone()))?;
        sim.args.extend(extra.iter().cloned());
        Ok(())
    }
}

/// Whether to simulate: asked for (flag or `IB_STREAM_SIMULATE`), or no gateway configured at
/// all (neither a host nor ports set anywhere), so a fresh clone runs without IB.
pub fn wants_simulation(loaded: &Loaded, flag: bool) -> bool {
    // A role without an IB session of its own has nothing to point at a simulator.
    if !loaded.settings.role.runs_engine() {
        return false;
    }
    flag || loaded.settings.simulate
        || (!loaded.sources.contains_key("IB_STREAM_HOST")
            && !loaded.sources.contains_key("IB_STREAM_PORTS"))
}

/// The log directory: `<storage>/../logs/<env>` (beside the storage roots, never inside one,
/// so retention and validation never see log files).
pub fn default_log_dir(settings: &Settings) -> PathBuf {
    let parent = settings
        .storage_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.join("logs").join(settings.environment.name())
}

/// The `--set` flags `up` adds for a simulation: the engine talks to the sim on localhost,
/// and MNQ is tracked unless the user tracks something already.
pub fn simulation_sets(loaded: &Loaded, sim_port: u16) -> Vec<String> {
    let mut sets = vec![
        "IB_STREAM_SIMULATE=true".to_string(),
        "IB_STREAM_HOST=127.0.0.1".to_string(),
        format!("IB_STREAM_PORTS={sim_port}"),
    ];
    if loaded.settings.tracked_contracts.is_empty() {
        sets.push(format!("IB_STREAM_TRACKED_CONTRACTS={SIM_DEFAULT_TRACKED}"));
    }
    sets
}

/// The simulator's port: the first configured port when ports were set explicitly (tests and
/// custom setups), else the environment's own sim port.
pub fn sim_port(loaded: &Loaded) -> u16 {
    if loaded.sources.contains_key("IB_STREAM_PORTS")
        && let Some(p) = loaded.settings.ib_ports.first()
    {
        return *p;
    }
    loaded.settings.environment.sim_port()
}

/// The global flags as arguments for a child `ib-stream`.
pub fn global_args(g: &GlobalFlags, environment: Environment) -> Vec<String> {
    let mut a = vec!["--env".to_string(), environment.name().to_string()];
    if let Some(f) = &g.env_file {
        a.push("--env-file".into());
        a.push(f.display().to_string());
    }
    for s in &g.sets {
        a.push("--set".into());
        a.push(s.clone());
    }
    a
}

/// Builds the plan. `exe` is the running `ib-stream`; tws-sim is looked up beside it.
pub fn make_plan(
    loaded: &Loaded,
    flags: &GlobalFlags,
    simulate_flag: bool,
    exe: &Path,
    log_dir: Option<PathBuf>,
    load: impl Fn(&GlobalFlags) -> Result<Loaded, crate::config::ConfigError>,
) -> Result<Plan, PlanError> {
    let environment = loaded.settings.environment;
    let simulate = wants_simulation(loaded, simulate_flag);
    let mut child_flags = flags.clone();
    child_flags.env = Some(environment);
    let mut children = Vec::new();
    let mut port = None;
    if simulate {
        let sim = exe.with_file_name(format!("tws-sim{}", std::env::consts::EXE_SUFFIX));
        if !sim.is_file() {
            return Err(PlanError::NoSimBinary(sim));
        }
        let p = sim_port(loaded);
        port = Some(p);
        child_flags.sets.extend(simulation_sets(loaded, p));
        children.push(ChildSpec {
            kind: ChildKind::Sim,
            program: sim,
            args: vec!["--port".into(), p.to_string()],
        });
    }
    // The children load exactly these flags; load them here too so `up` knows what they see.
    let settings = load(&child_flags)?.settings;
    let common = global_args(&child_flags, environment);
    let args_for = |name: &str| {
        let mut a = vec![name.to_string()];
        a.extend(common.iter().cloned());
        a
    };
    let mut kinds = settings.role.children(settings.enable_storage);
    if settings.backfill {
        kinds.push(ChildKind::Backfill);
    }
    for kind in kinds {
        let name = match kind {
            ChildKind::Engine => "engine",
            ChildKind::Recorder => "record",
            ChildKind::Serve => "serve",
            ChildKind::Mirror => "mirror",
            ChildKind::Backfill => "backfill",
            // The simulator is not an `ib-stream` subcommand; it was added above.
            ChildKind::Sim => continue,
        };
        children.push(ChildSpec {
            kind,
            program: exe.to_path_buf(),
            args: args_for(name),
        });
    }
    let log_dir = log_dir.unwrap_or_else(|| default_log_dir(&settings));
    Ok(Plan {
        environment,
        simulate,
        sim_port: port,
        children,
        settings,
        log_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigSources, load};

    fn loaded(env: Environment, sets: &[&str]) -> Loaded {
        load(&sources(&GlobalFlags {
            env: Some(env),
            env_file: None,
            sets: sets.iter().map(|s| s.to_string()).collect(),
        }))
        .unwrap()
    }

    fn sources(g: &GlobalFlags) -> ConfigSources {
        ConfigSources {
            environment: g.env,
            env_file: g.env_file.clone(),
            env_vars: Vec::new(),
            flags: g
                .sets
                .iter()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    ("--set".into(), k.into(), v.into())
                })
                .collect(),
        }
    }

    fn fake_exe(dir: &Path, with_sim: bool) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let exe = dir.join("ib-stream");
        std::fs::write(&exe, b"").unwrap();
        if with_sim {
            std::fs::write(dir.join("tws-sim"), b"").unwrap();
        }
        exe
    }

    fn plan(env: Environment, sets: &[&str], flag: bool, dir: &Path) -> Result<Plan, PlanError> {
        let l = loaded(env, sets);
        let flags = GlobalFlags {
            env: Some(env),
            env_file: None,
            sets: sets.iter().map(|s| s.to_string()).collect(),
        };
        make_plan(&l, &flags, flag, &fake_exe(dir, true), None, |g| {
            load(&sources(g))
        })
    }

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ib-stream-plan-{}-{name}", std::process::id()))
    }

    #[test]
    fn backfill_on_adds_its_child_last_and_needs_the_recorder() {
        let p = plan(
            Environment::Development,
            &["IB_STREAM_BACKFILL=true"],
            false,
            &tmp("bf"),
        )
        .unwrap();
        let kinds: Vec<_> = p.children.iter().map(|c| c.kind).collect();
        assert_eq!(kinds.last(), Some(&ChildKind::Backfill));
        let bf = p.children.last().unwrap();
        assert_eq!(bf.args[0], "backfill");
        let off = plan(Environment::Development, &[], false, &tmp("bf-off")).unwrap();
        assert!(!off.children.iter().any(|c| c.kind == ChildKind::Backfill));
        let l = load(&sources(&GlobalFlags {
            env: Some(Environment::Development),
            env_file: None,
            sets: vec![
                "IB_STREAM_BACKFILL=true".into(),
                "IB_STREAM_ENABLE_STORAGE=false".into(),
            ],
        }));
        let e = l.unwrap_err().to_string();
        assert!(
            e.contains("IB_STREAM_BACKFILL=true") && e.contains("IB_STREAM_ENABLE_STORAGE=false"),
            "{e}"
        );
    }

    #[test]
    fn no_gateway_configured_means_simulation_with_mnq_tracked() {
        let p = plan(Environment::Development, &[], false, &tmp("a")).unwrap();
        assert!(p.simulate);
        assert_eq!(p.sim_port, Some(14101));
        assert_eq!(p.settings.ib_ports, vec![14101]);
        assert!(p.settings.simulate);
        let t = &p.settings.tracked_contracts;
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].con_id, 711280073);
        let kinds: Vec<_> = p.children.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            vec![
                ChildKind::Sim,
                ChildKind::Engine,
                ChildKind::Recorder,
                ChildKind::Serve
            ]
        );
        assert_eq!(p.children[0].args, vec!["--port", "14101"]);
        let engine = &p.children[1].args;
        assert_eq!(engine[0], "engine");
        assert!(engine.windows(2).any(|w| w == ["--env", "development"]));
        assert!(
            engine
                .windows(2)
                .any(|w| w == ["--set", "IB_STREAM_PORTS=14101"])
        );
    }

    #[test]
    fn a_configured_gateway_is_not_simulated_and_keeps_the_users_tracking() {
        let d = tmp("b");
        let p = plan(
            Environment::Production,
            &[
                "IB_STREAM_PORTS=4001",
                "IB_STREAM_TRACKED_CONTRACTS=265598:AAPL",
            ],
            false,
            &d,
        )
        .unwrap();
        assert!(!p.simulate);
        assert_eq!(p.children[0].kind, ChildKind::Engine);
        assert_eq!(p.settings.ib_ports, vec![4001]);
        assert_eq!(p.settings.tracked_contracts[0].con_id, 265598);
        // --simulate with explicit ports runs the sim on the first of them.
        let p = plan(
            Environment::Staging,
            &[
                "IB_STREAM_PORTS=15555",
                "IB_STREAM_TRACKED_CONTRACTS=265598:AAPL",
            ],
            true,
            &d,
        )
        .unwrap();
        assert_eq!(p.sim_port, Some(15555));
        assert_eq!(p.settings.tracked_contracts[0].con_id, 265598);
    }

    #[test]
    fn storage_off_means_no_recorder_and_logs_sit_beside_storage() {
        let p = plan(
            Environment::Staging,
            &["IB_STREAM_ENABLE_STORAGE=false"],
            false,
            &tmp("c"),
        )
        .unwrap();
        assert!(!p.children.iter().any(|c| c.kind == ChildKind::Recorder));
        assert_eq!(p.log_dir, PathBuf::from("storage/logs/staging"));
        // The original's meaning: record nothing, serve production's history read-only.
        assert_eq!(p.settings.history_root(), Path::new("storage/production"));
        assert!(p.settings.history_read_only());
        assert!(p.children.iter().any(|c| c.kind == ChildKind::Engine));
    }

    #[test]
    fn each_role_runs_its_own_children_and_only_an_engine_role_simulates() {
        let d = tmp("roles");
        let kinds = |p: &Plan| p.children.iter().map(|c| c.kind).collect::<Vec<_>>();
        let p = plan(
            Environment::Development,
            &["IB_STREAM_ROLE=passthrough"],
            false,
            &d,
        )
        .unwrap();
        assert_eq!(
            kinds(&p),
            vec![ChildKind::Serve],
            "no sim, engine or recorder"
        );
        assert!(!p.simulate && p.sim_port.is_none());
        assert_eq!(
            p.settings.ring_dir(),
            Path::new("/dev/shm/ib-stream/production"),
            "production's ring by default"
        );
        assert!(p.settings.ring_read_only() && !p.settings.may_subscribe());
        // --simulate is moot without an engine.
        let p = plan(
            Environment::Development,
            &["IB_STREAM_ROLE=migration"],
            true,
            &d,
        )
        .unwrap();
        assert_eq!(kinds(&p), vec![ChildKind::Recorder, ChildKind::Serve]);
        assert!(!p.simulate);
        let rec = &p.children[0].args;
        assert!(
            rec.windows(2)
                .any(|w| w == ["--set", "IB_STREAM_ROLE=migration"])
        );
        let p = plan(
            Environment::Development,
            &[
                "IB_STREAM_ROLE=isolated",
                "IB_STREAM_STORAGE_PATH=storage/feature-x",
            ],
            false,
            &d,
        )
        .unwrap();
        assert_eq!(
            kinds(&p),
            vec![
                ChildKind::Sim,
                ChildKind::Engine,
                ChildKind::Recorder,
                ChildKind::Serve
            ]
        );
        assert_eq!(p.settings.history_root(), Path::new("storage/feature-x"));
    }

    #[test]
    fn sim_args_reach_the_simulator_only_and_never_its_port() {
        let d = tmp("f");
        let mut p = plan(Environment::Development, &[], false, &d).unwrap();
        let extra = vec![
            "--rate=500".to_string(),
            "--control-port".into(),
            "0".into(),
        ];
        p.add_sim_args(&extra).unwrap();
        assert_eq!(
            p.children[0].args,
            vec!["--port", "14101", "--rate=500", "--control-port", "0"]
        );
        assert!(p.children[1..].iter().all(|c| !c.args.contains(&extra[0])));
        let err = p.add_sim_args(&["--port=1".to_string()]).unwrap_err();
        assert!(matches!(err, PlanError::SimArgOwnedByUp(_)), "{err}");
        let mut real = plan(
            Environment::Production,
            &["IB_STREAM_PORTS=4001"],
            false,
            &d,
        )
        .unwrap();
        real.add_sim_args(&[]).unwrap();
        let err = real.add_sim_args(&extra).unwrap_err();
        assert!(err.to_string().contains("--simulate"), "{err}");
    }

    #[test]
    fn missing_sim_binary_says_how_to_build_it() {
        let d = tmp("d");
        let l = loaded(Environment::Development, &[]);
        let err = make_plan(
            &l,
            &GlobalFlags::default(),
            true,
            &fake_exe(&d.join("nosim"), false),
            None,
            |g| load(&sources(g)),
        )
        .unwrap_err();
        assert!(err.to_string().contains("cargo build --bins"), "{err}");
    }

    #[test]
    fn environments_never_share_ports_ids_or_paths() {
        let d = tmp("e");
        let plans: Vec<Plan> = Environment::ALL
            .iter()
            .map(|e| plan(*e, &[], false, &d).unwrap())
            .collect();
        for (i, a) in plans.iter().enumerate() {
            for b in &plans[i + 1..] {
                assert_ne!(a.sim_port, b.sim_port);
                assert_ne!(a.settings.serve_port, b.settings.serve_port);
                assert_ne!(a.settings.client_id, b.settings.client_id);
                assert_ne!(a.settings.shm_dir, b.settings.shm_dir);
                assert_ne!(a.settings.storage_path, b.settings.storage_path);
                assert_ne!(a.log_dir, b.log_dir);
            }
        }
    }
}
