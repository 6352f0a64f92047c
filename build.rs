//! Embeds the chart page's library when `scripts/install-web.sh` has installed it
//! (`web/node_modules`, pinned by `web/package-lock.json`): the binary then serves it at
//! `/page/lightweight-charts.js`. Without it (a machine without Node) the build still
//! succeeds and `/chart` says how to get the chart; the live page needs nothing from npm.

const LIB: &str =
    "web/node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.js";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(chart_lib)");
    // Not the missing file (cargo would rerun this script, and rebuild the crate, on every
    // build): the lock file, which scripts/install-web.sh touches after installing (npm gives
    // the files it unpacks old times).
    println!("cargo::rerun-if-changed=web/package-lock.json");
    if std::path::Path::new(LIB).is_file() {
        // Present: watched, so that removing it rebuilds without it.
        println!("cargo::rerun-if-changed={LIB}");
        println!("cargo::rustc-cfg=chart_lib");
    }
}
