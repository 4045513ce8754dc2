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
    /// Call a method on a running node's control socket (JSON-RPC 2.0) and print its result.
    ///
    /// Params are given as `--name value` pairs (a value that parses as JSON
    /// is taken as JSON, anything else as a string; `--listen-address` is
    /// the param `listen_address`) or whole as `-p '{"name": ...}'`.
    /// `rpc_get_methods` lists the methods. Shorthands: `status` for
    /// `tandem_get_status`, `ana-set --port P --group G --state S` for
    /// `tandem_set_ana_state`.
    #[command(after_help = "Examples:\n  tandem rpc -s /run/tandem-a.sock nvmf_get_subsystems\n  \
                      tandem rpc -s /run/tandem-a.sock ana-set --port 1 --group 1 --state inaccessible\n  \
                      tandem rpc -s /run/tandem-a.sock tandem_fault_inject -p '{\"nsid\":1,\"action\":\"heal\"}'")]
    Rpc {
        /// The node's control socket (`node.rpc_socket` in its config).
        #[arg(short = 's', long)]
        socket: PathBuf,
        /// The method to call.
        method: String,
        /// Its params: `--name value ...` or `-p JSON`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        params: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a commented config that `tandem serve` runs as printed: a single
    /// node, or with `--node a` / `--node b` the two nodes of a loopback pair.
    Example {
        /// Print node a's or node b's config of the example pair.
        #[arg(long)]
        node: Option<char>,
    },
    /// Parse and validate a config file; print the first error, naming its field.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
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
        Command::Config { command: ConfigCommand::Example { node: None } } => {
            print!("{}", config::EXAMPLE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { command: ConfigCommand::Example { node: Some(node) } } => {
            match config::pair_example(node) {
                Some(text) => {
                    print!("{text}");
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("--node: {node:?} is not a or b (the example pair's nodes)");
                    Ok(ExitCode::from(2))
                }
            }
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
        Command::Rpc { socket, method, params } => {
            let method = match method.as_str() {
                "status" => "tandem_get_status".to_string(),
                "ana-set" => "tandem_set_ana_state".to_string(),
                _ => method,
            };
            let params = rpc_params(&params)?;
            let result = rpc::call(&socket, &method, params)?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The params of `tandem rpc`: `-p JSON` (or `--params JSON`), or
/// `--name value` pairs; a name's hyphens become underscores, a value that
/// parses as JSON is JSON (numbers, true, objects...), others are strings,
/// and a name with no value is `true`.
fn rpc_params(args: &[String]) -> anyhow::Result<serde_json::Value> {
    let mut params = serde_json::Map::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg == "-p" || arg == "--params" {
            let text = args.get(i + 1).with_context(|| format!("{arg}: expected a JSON object after it"))?;
            let v: serde_json::Value =
                serde_json::from_str(text).with_context(|| format!("{arg}: expected a JSON object"))?;
            let serde_json::Value::Object(obj) = v else { anyhow::bail!("{arg}: expected a JSON object") };
            params.extend(obj);
            i += 2;
            continue;
        }
        let Some(name) = arg.strip_prefix("--").filter(|n| !n.is_empty()) else {
            anyhow::bail!("{arg:?}: expected --name value or -p JSON");
        };
        let (name, value) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => match args.get(i + 1) {
                Some(v) if !v.starts_with("--") => {
                    i += 1;
                    (name, Some(v.clone()))
                }
                _ => (name, None),
            },
        };
        let value = match value {
            None => json!(true),
            Some(text) => serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        };
        params.insert(name.replace('-', "_"), value);
        i += 1;
    }
    Ok(if params.is_empty() { serde_json::Value::Null } else { serde_json::Value::Object(params) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rpc_params_take_pairs_json_and_flags() {
        let p =
            rpc_params(&args(&["--port", "1", "--group", "2", "--state", "non_optimized"])).expect("pairs");
        assert_eq!(p, json!({"port": 1, "group": 2, "state": "non_optimized"}));
        let p = rpc_params(&args(&["--listen-address", r#"{"traddr":"127.0.0.1"}"#, "--nqn=nqn.x"]))
            .expect("json value");
        assert_eq!(p, json!({"listen_address": {"traddr": "127.0.0.1"}, "nqn": "nqn.x"}));
        let p = rpc_params(&args(&["-p", r#"{"nsid":1}"#, "--verbose"])).expect("-p and a flag");
        assert_eq!(p, json!({"nsid": 1, "verbose": true}));
        assert_eq!(rpc_params(&[]).expect("none"), serde_json::Value::Null);
        assert!(rpc_params(&args(&["-p", "[1]"])).is_err(), "positional params are refused");
        assert!(rpc_params(&args(&["stray"])).is_err());
    }
}
