//! The `ib-stream` command.

use clap::Parser;

/// ib-stream: low-latency Interactive Brokers market data.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
