//! The `tandem` binary: serve a node, print an example config, generate load,
//! run the demo, and talk to a running node's control socket.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;

use tandem_target::{config, demo, rpc, serve};

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Tandem: an NVMe over Fabrics target that runs as a high-availability pair"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node from its config file until SIGTERM or SIGINT.
    Serve {
        /// The node's TOML config (see `tandem config example`).
        #[arg(long)]
        config: PathBuf,
        /// Override the config's polling mode: busy (spin) or adaptive (spin, then sleep when idle).
        #[arg(long)]
        poll: Option<String>,
        /// Replay a staging ring bound to another medium (or, written by an
        /// older build, to none) into this node's medium and re-bind it. Only
        /// for a medium that was moved or copied: the ring's writes belong to it.
        #[arg(long)]
        adopt_staging: bool,
    },
    /// Config helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Generate load against a target and report IOPS, bandwidth and latency.
    Perf(tandem_perf::PerfArgs),
    /// Run a whole pair on loopback with a workload and a failover, and print a verdict.
    Demo(demo::DemoArgs),
    /// Talk to a running node's control socket.
    Rpc {
        /// The node's control socket (`node.rpc_socket` in its config).
        #[arg(long)]
        socket: PathBuf,
        #[command(subcommand)]
        command: RpcCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a commented config that `tandem serve` runs as printed.
    Example,
    /// Parse and validate a config file; print the first error, naming its field.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum RpcCommand {
    /// The node's state: ports, ANA groups, controllers, counters.
    Status,
    /// Set the ANA state of a group as seen through a port (all ports if --port is omitted).
    AnaSet {
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        group: u32,
        /// optimized | non-optimized | inaccessible | persistent-loss | change
        #[arg(long)]
        state: String,
    },
    /// Any method with JSON params.
    Call { method: String, params: Option<String> },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tandem: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: logs written to files stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, poll, adopt_staging } => {
            init_logging();
            let cfg = match config::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("tandem: {}: {e}", config.display());
                    return Ok(ExitCode::from(2));
                }
            };
            serve::run(cfg, poll.as_deref(), adopt_staging)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { command: ConfigCommand::Example } => {
            print!("{}", config::EXAMPLE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { command: ConfigCommand::Check { config } } => match config::Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("tandem: {}: {e}", config.display());
                Ok(ExitCode::from(2))
            }
        },
        Command::Perf(args) => {
            init_logging();
            let report = tandem_perf::run_perf(&args)?;
            Ok(if report.errors == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Demo(args) => {
            init_logging();
            let ok = demo::run(&args)?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Rpc { socket, command } => {
            let (method, params) = match command {
                RpcCommand::Status => ("status".to_string(), json!({})),
                RpcCommand::AnaSet { port, group, state } => {
                    ("ana_set".to_string(), json!({ "port": port, "group": group, "state": state }))
                }
                RpcCommand::Call { method, params } => {
                    let p = match params {
                        Some(text) => serde_json::from_str(&text).context("params: expected JSON")?,
                        None => json!({}),
                    };
                    (method, p)
                }
            };
            let result = rpc::call(&socket, &method, params)?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
