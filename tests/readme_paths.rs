//! The paths the README sends a new user to are the ones the code uses, and what `up`
//! writes into the working tree is ignored by git.

use ib_stream::config::{Environment, Settings};
use ib_stream::up::child::log_path;
use ib_stream::up::plan::{ChildKind, default_log_dir};

const README: &str = include_str!("../README.md");
const GITIGNORE: &str = include_str!("../.gitignore");

#[test]
fn the_readme_names_where_history_and_logs_really_go() {
    let dev = Settings::defaults(Environment::Development);
    let logs = default_log_dir(&dev);
    for kind in [
        ChildKind::Engine,
        ChildKind::Recorder,
        ChildKind::Serve,
        ChildKind::Sim,
    ] {
        let file = log_path(&logs, kind.name());
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            README.contains(&format!("`{name}`")),
            "the README does not name {name}"
        );
    }
    let engine_log = log_path(&logs, ChildKind::Engine.name());
    assert!(
        README.contains(&format!("`{}`", engine_log.display())),
        "the README must name {}",
        engine_log.display()
    );
    assert!(
        README.contains(&format!("`{}/`", logs.display())),
        "the README must name {}/",
        logs.display()
    );
    assert!(
        README.contains(&format!("`{}/`", dev.storage_path.display())),
        "the README must name {}/",
        dev.storage_path.display()
    );
    // Every path to an engine.log in the README is the real one.
    for (i, _) in README.match_indices("engine.log`") {
        let start = README[..i].rfind('`').unwrap() + 1;
        let named = &README[start..i + "engine.log".len()];
        if named.contains('/') {
            assert_eq!(named, engine_log.display().to_string());
        }
    }
}

#[test]
fn what_up_writes_into_the_tree_is_ignored() {
    let dev = Settings::defaults(Environment::Development);
    let top = dev.storage_path.iter().next().unwrap().to_string_lossy();
    assert_eq!(top, "storage");
    assert!(
        GITIGNORE
            .lines()
            .any(|l| l.trim() == "/storage/" || l.trim() == "storage/"),
        ".gitignore must ignore storage/"
    );
    assert!(
        default_log_dir(&dev).starts_with("storage"),
        "logs go under storage/"
    );
}

#[test]
fn the_readme_explains_why_trades_start_later() {
    assert!(
        README.contains("15 s after `bid_ask`") && README.contains("10190"),
        "the README must say that `last` starts about 15 s after `bid_ask`, and why"
    );
}
