//! tws-sim: a simulated IB Gateway that speaks the real TWS API protocol (the `tws-sim` crate,
//! `tools/tws-sim/`). Built beside `ib-stream`, which runs it for `ib-stream up`.

/// A failure ends tws-sim with one line (each cause once, no backtrace even under
/// RUST_BACKTRACE) and, for a cause a restart cannot cure such as a port in use, the exit code
/// that tells `ib-stream up` not to retry.
fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match tws_sim::cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "tws-sim: error: {}",
                ib_stream::report::one_line(e.as_ref())
            );
            if ib_stream::report::is_permanent(e.as_ref()) {
                std::process::ExitCode::from(ib_stream::report::EXIT_PERMANENT)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
