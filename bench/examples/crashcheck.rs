//! The crash checker against a live target: write for a while (or until the
//! connection dies), then verify; or, with `--verify-only`, rebuild the state
//! from a `--log` written by an earlier (perhaps killed) run and verify.
//! `cargo run -p tandem-perf --example crashcheck -- --help`

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use tandem_nvmf::host::{ConnectOptions, HostController};
use tandem_perf::{CrashChecker, Region};

#[derive(Parser)]
#[command(about = "Write self-describing blocks, then check that every acknowledged write survived")]
struct Cli {
    #[arg(long, short = 'a')]
    addr: String,
    #[arg(long)]
    subnqn: String,
    #[arg(long, default_value_t = 1)]
    nsid: u32,
    /// First LBA of the region.
    #[arg(long, default_value_t = 0)]
    slba: u64,
    /// Blocks in the region.
    #[arg(long, default_value_t = 4096)]
    blocks: u64,
    #[arg(long, default_value_t = 1)]
    writer_id: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 1)]
    queues: u16,
    #[arg(long, default_value_t = 16)]
    qd: u16,
    /// Seconds of writing.
    #[arg(long, default_value_t = 5)]
    time: u64,
    /// Append every write and outcome to this file.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Do not write: rebuild from --log and verify.
    #[arg(long)]
    verify_only: bool,
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let mut options = ConnectOptions::new(&cli.addr, &cli.subnqn);
    options.io_queues = cli.queues;
    options.queue_depth = cli.qd.max(2);
    let mut controller = HostController::connect(&options).context("connecting")?;
    let namespace = controller.namespace(cli.nsid)?;
    let region = Region {
        nsid: cli.nsid,
        slba: cli.slba,
        block_count: cli.blocks,
        block_size: namespace.block_size as usize,
    };
    let mut queues = controller.take_io_queues();
    let checker = if cli.verify_only {
        let Some(log) = &cli.log else { bail!("--verify-only needs --log") };
        CrashChecker::from_log(region, cli.writer_id, log)?
    } else {
        let mut checker = CrashChecker::new(region, cli.writer_id, cli.seed)?;
        if let Some(log) = &cli.log {
            checker = checker.with_log(log)?;
        }
        let deadline = Instant::now() + Duration::from_secs(cli.time);
        let summary = checker.run(&mut queues, &AtomicBool::new(false), Some(deadline));
        println!("{summary:?}");
        checker
    };
    let Some(queue) = queues.iter_mut().next() else { bail!("no I/O queue") };
    match checker.verify(queue) {
        Ok(report) => {
            println!("verify ok: {report:?}");
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            println!("verify FAILED: {error}");
            Ok(ExitCode::from(1))
        }
    }
}
