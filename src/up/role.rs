//! What an environment is for (`IB_STREAM_ROLE`, or `up --role`): which processes `up` runs and
//! which directories they read and write. One place, so a new role is one variant here plus
//! its row in [`Role::children`].
//!
//! | role | IB session | recorder | web server | ring read | history read | writes |
//! |---|---|---|---|---|---|---|
//! | recording | own engine | own | own | own | own | own storage |
//! | isolated | own engine | own | own | own | own | own storage, refusing an upstream path |
//! | passthrough | none | none | own | upstream's, read-only | upstream's, read-only | nothing upstream |
//! | migration | none | own, from upstream's ring | own | upstream's, read-only | upstream's, read-only | own storage |
//! | mirror | none (the ring is rebuilt from NATS JetStream by `ib-stream mirror`) | own | own | own | own | own ring and storage |
//!
//! "Upstream" is production unless `IB_STREAM_UPSTREAM_SHM_DIR` / `IB_STREAM_UPSTREAM_STORAGE_PATH`
//! say otherwise.

use std::fmt;
use std::str::FromStr;

use super::plan::ChildKind;

/// What an environment runs; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Role {
    /// Own engine, own recorder, own storage (the default).
    #[default]
    Recording,
    /// A web server (and tools) on the upstream environment's ring and storage, read-only.
    Passthrough,
    /// Like recording, but guaranteed to share no directory with the upstream environment.
    Isolated,
    /// A new version reading the upstream ring and storage read-only and recording into its
    /// own storage.
    Migration,
    /// Another host's ring rebuilt here from NATS JetStream (`ib-stream mirror`), with its own
    /// recorder and web server; no IB on this host.
    Mirror,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Recording,
        Role::Passthrough,
        Role::Isolated,
        Role::Migration,
        Role::Mirror,
    ];

    /// The name used in settings and flags.
    pub fn name(self) -> &'static str {
        match self {
            Role::Recording => "recording",
            Role::Passthrough => "passthrough",
            Role::Isolated => "isolated",
            Role::Migration => "migration",
            Role::Mirror => "mirror",
        }
    }

    /// Parses a role name (`--role`, `IB_STREAM_ROLE`).
    pub fn parse(s: &str) -> Result<Role, String> {
        let t = s.trim().to_ascii_lowercase();
        Role::ALL
            .into_iter()
            .find(|r| r.name() == t)
            .ok_or_else(|| {
                format!(
                    "`{}` is not a role ({})",
                    s.trim(),
                    Role::ALL.map(Role::name).join(", ")
                )
            })
    }

    /// Whether this role has an IB session of its own (and so a simulator when simulating).
    pub fn runs_engine(self) -> bool {
        matches!(self, Role::Recording | Role::Isolated)
    }

    /// Whether the environment reads another environment's ring (and never writes into it).
    pub fn reads_upstream_ring(self) -> bool {
        matches!(self, Role::Passthrough | Role::Migration)
    }

    /// The children `up` starts, in start order (the simulator is added by the plan when the
    /// role runs an engine). `enable_storage` is `IB_STREAM_ENABLE_STORAGE`.
    pub fn children(self, enable_storage: bool) -> Vec<ChildKind> {
        match self {
            Role::Recording | Role::Isolated if enable_storage => {
                vec![ChildKind::Engine, ChildKind::Recorder, ChildKind::Serve]
            }
            Role::Recording | Role::Isolated => vec![ChildKind::Engine, ChildKind::Serve],
            Role::Passthrough => vec![ChildKind::Serve],
            Role::Migration => vec![ChildKind::Recorder, ChildKind::Serve],
            Role::Mirror if enable_storage => {
                vec![ChildKind::Mirror, ChildKind::Recorder, ChildKind::Serve]
            }
            Role::Mirror => vec![ChildKind::Mirror, ChildKind::Serve],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_parses_back_and_a_wrong_one_lists_them() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.name()), Ok(r));
            assert_eq!(
                Role::parse(&format!(" {} ", r.name().to_uppercase())),
                Ok(r)
            );
        }
        let err = Role::parse("mirrror").unwrap_err();
        assert!(
            err.contains("recording, passthrough, isolated, migration, mirror"),
            "{err}"
        );
    }

    #[test]
    fn only_roles_with_an_ib_session_run_an_engine() {
        for r in Role::ALL {
            assert_eq!(
                r.children(true).contains(&ChildKind::Engine),
                r.runs_engine(),
                "{r}"
            );
            assert!(r.children(true).contains(&ChildKind::Serve), "{r}");
        }
        assert_eq!(Role::Passthrough.children(true), vec![ChildKind::Serve]);
        assert!(
            !Role::Recording
                .children(false)
                .contains(&ChildKind::Recorder)
        );
        assert_eq!(
            Role::Migration.children(false),
            vec![ChildKind::Recorder, ChildKind::Serve],
            "migration always writes its own storage (config refuses storage off)"
        );
        assert_eq!(
            Role::Mirror.children(true),
            vec![ChildKind::Mirror, ChildKind::Recorder, ChildKind::Serve],
            "a mirror writes its own ring in place of an engine"
        );
    }
}
