//! Which process writes this host's ring under `up`: the engine (IB on this host, the
//! default) or a mirror of another host's ring through NATS JetStream (no IB here). The one
//! place that knows how a role changes the plan.

use super::plan::{ChildKind, ChildSpec, Plan};

/// `up --role` / `IB_STREAM_ROLE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// tws-sim (when simulating), engine, recorder and web server.
    #[default]
    Engine,
    /// mirror (the ring rebuilt from JetStream), recorder and web server; no IB.
    Mirror,
}

/// Rewrites an engine plan for `role`: a mirror replaces the simulator and the engine as
/// the ring's writer, with the same configuration flags.
pub fn apply(plan: &mut Plan, role: Role) {
    if role == Role::Engine {
        return;
    }
    let Some(engine) = plan.children.iter().find(|c| c.kind == ChildKind::Engine) else {
        return;
    };
    let mut args = engine.args.clone();
    args[0] = "mirror".into();
    let mirror = ChildSpec {
        kind: ChildKind::Mirror,
        program: engine.program.clone(),
        args,
    };
    plan.children
        .retain(|c| !matches!(c.kind, ChildKind::Sim | ChildKind::Engine));
    plan.children.insert(0, mirror);
    plan.simulate = false;
    plan.sim_port = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn spec(kind: ChildKind, args: &[&str]) -> ChildSpec {
        ChildSpec {
            kind,
            program: PathBuf::from("/bin/ib-stream"),
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn mirror_replaces_sim_and_engine_and_keeps_the_flags() {
        let children = vec![
            spec(ChildKind::Sim, &["--port", "1"]),
            spec(ChildKind::Engine, &["engine", "--env", "development"]),
            spec(ChildKind::Recorder, &["record", "--env", "development"]),
            spec(ChildKind::Serve, &["serve", "--env", "development"]),
        ];
        let mut plan = Plan {
            environment: crate::config::Environment::Development,
            simulate: true,
            sim_port: Some(1),
            children: children.clone(),
            settings: crate::config::Settings::defaults(crate::config::Environment::Development),
            log_dir: PathBuf::from("/tmp"),
        };
        let mut same = plan.clone();
        apply(&mut same, Role::Engine);
        assert_eq!(same.children, children);
        apply(&mut plan, Role::Mirror);
        let kinds: Vec<ChildKind> = plan.children.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            vec![ChildKind::Mirror, ChildKind::Recorder, ChildKind::Serve]
        );
        assert_eq!(
            plan.children[0].args,
            vec!["mirror", "--env", "development"]
        );
        assert!(!plan.simulate && plan.sim_port.is_none());
    }
}
