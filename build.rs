//! Embeds the chart page's library when `scripts/install-web.sh` has installed it
//! (`web/node_modules`, pinned by `web/package-lock.json`): the binary then serves it at
//! `/page/lightweight-charts.js`. Without it (a machine without Node) the build still
//! succeeds and `/chart` says how to get the chart; the live page needs nothing from npm.

const LIB: &str =
    "web/node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.js";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(chart_lib)");
    // The directory, not the file: a missing file would rerun this script on every build.
    println!("cargo::rerun-if-changed=web");
    if std::path::Path::new(LIB).is_file() {
        println!("cargo::rustc-cfg=chart_lib");
    }
}
