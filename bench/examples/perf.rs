//! `tandem perf` without the `tandem` binary: the same flags and output, for
//! running the load generator on its own (`cargo run -p tandem-perf --example perf -- --help`).

use clap::Parser;

#[derive(Parser)]
#[command(about = "The Tandem load generator")]
struct Cli {
    #[command(flatten)]
    perf: tandem_perf::PerfArgs,
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    let report = tandem_perf::run_perf(&cli.perf)?;
    Ok(if report.is_clean() { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(1) })
}
