//! `tandem perf`: the command-line face of the load generator.
//!
//! [`PerfArgs`] are the flags (fio's names where fio has one), [`run_perf`]
//! connects to the target, runs the workload and, with `--baseline`, the same
//! workload over plain TCP against an in-process echo peer, prints a progress
//! line each second and the result, and returns a [`PerfReport`] (also printed
//! as JSON with `--json`). Sizes take k/m/g suffixes (powers of 1024).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use crate::baseline::{run_baseline, BaselineSpec, EchoPeer};
use crate::stats::{Figures, Progress, QueueStats};
use crate::workload::Pattern;

/// The flags of `tandem perf`.
#[derive(Args, Clone, Debug)]
pub struct PerfArgs {
    /// Target NVMe/TCP address, host:port.
    #[arg(long, short = 'a', required_unless_present = "baseline_only")]
    pub addr: Option<String>,
    /// Subsystem NQN to connect to.
    #[arg(long, required_unless_present = "baseline_only")]
    pub subnqn: Option<String>,
    /// Host NQN to present (default: the host library's).
    #[arg(long)]
    pub hostnqn: Option<String>,
    /// Access pattern.
    #[arg(long, value_enum, default_value = "randread")]
    pub rw: Pattern,
    /// Percentage of reads for --rw randrw.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rwmixread: u8,
    /// Bytes per I/O (k, m suffixes).
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    pub bs: u64,
    /// Commands in flight per queue.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub qd: u16,
    /// I/O queues (one connection and one thread each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub queues: u16,
    /// Namespace ID.
    #[arg(long, default_value_t = 1)]
    pub nsid: u32,
    /// Run time in seconds (default 10 when --ios is not given).
    #[arg(long)]
    pub time: Option<u64>,
    /// Total I/Os over all queues; the run ends at this or at --time.
    #[arg(long)]
    pub ios: Option<u64>,
    /// Start of the region, in bytes from the start of the namespace.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub offset: u64,
    /// Size of the region in bytes (default: to the end of the namespace).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Ask for NVMe/TCP header digests.
    #[arg(long)]
    pub header_digest: bool,
    /// Ask for NVMe/TCP data digests.
    #[arg(long)]
    pub data_digest: bool,
    /// Stamp written blocks and check every read against the last write.
    #[arg(long)]
    pub verify: bool,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also run the same sizes over plain TCP against an echo peer, for a ratio.
    #[arg(long)]
    pub baseline: bool,
    /// Run only the plain-TCP baseline (no target needed).
    #[arg(long)]
    pub baseline_only: bool,
    /// No progress line and no human-readable result (the report is still returned).
    #[arg(long)]
    pub quiet: bool,
}

impl PerfArgs {
    /// The run time to use: --time, or 10 s when neither --time nor --ios.
    pub fn duration(&self) -> Option<Duration> {
        match (self.time, self.ios) {
            (Some(seconds), _) => Some(Duration::from_secs(seconds)),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(10)),
        }
    }
}

/// What was run, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct PerfConfig {
    pub rw: Pattern,
    pub rwmixread: u8,
    pub bs: u64,
    pub qd: u16,
    pub queues: u16,
    pub nsid: u32,
    pub offset_bytes: u64,
    pub size_bytes: Option<u64>,
    pub verify: bool,
    pub header_digest: bool,
    pub data_digest: bool,
    pub seed: u64,
}

/// The result of `tandem perf`.
#[derive(Clone, Debug, Serialize)]
pub struct PerfReport {
    pub config: PerfConfig,
    /// The NVMe/TCP run (absent with --baseline-only).
    pub nvme_tcp: Option<Figures>,
    /// The plain-TCP run (with --baseline or --baseline-only).
    pub baseline: Option<Figures>,
    /// NVMe/TCP IOPS over plain-TCP IOPS (also the MB/s ratio).
    pub iops_ratio: Option<f64>,
    /// Failed commands plus verify mismatches over both runs: 0 for a clean run.
    pub errors: u64,
}

impl PerfReport {
    /// True when the run saw no error status, lost command or verify mismatch.
    pub fn is_clean(&self) -> bool {
        self.errors == 0
    }
}

impl std::fmt::Display for PerfReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "{} bs={} qd={} queues={}{}",
            c.rw.name(),
            c.bs,
            c.qd,
            c.queues,
            if c.verify { " verify" } else { "" }
        )?;
        if let Some(figures) = &self.nvme_tcp {
            writeln!(f, "nvme/tcp: {figures}")?;
            for error in &figures.first_errors {
                writeln!(f, "  error: {error}")?;
            }
        }
        if let Some(figures) = &self.baseline {
            writeln!(f, "plain tcp: {figures}")?;
        }
        if let Some(ratio) = self.iops_ratio {
            writeln!(
                f,
                "nvme/tcp reaches {:.0}% of plain-TCP IOPS at the same sizes and depth",
                ratio * 100.0
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SizeError {
    #[error("size {text:?}: expected a number with an optional k, m or g suffix")]
    Malformed { text: String },
    #[error("size {text:?} does not fit in 64 bits")]
    Overflow { text: String },
}

/// Parses "4096", "4k", "1M", "2g", "64KiB" (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let malformed = || SizeError::Malformed { text: text.to_string() };
    let trimmed = text.trim();
    let digits_end = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(digits_end);
    let number: u64 = digits.parse().map_err(|_| malformed())?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(malformed()),
    };
    number.checked_mul(1u64 << shift).ok_or(SizeError::Overflow { text: text.to_string() })
}

/// Prints a progress line about once a second: an indicatif spinner on a
/// terminal, a plain line on stderr otherwise (logs, CI).
pub(crate) struct ProgressLine {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    started: Instant,
    last: (Instant, u64, u64),
    label: &'static str,
}

impl ProgressLine {
    pub(crate) fn new(label: &'static str, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar
        });
        let now = Instant::now();
        ProgressLine { bar, quiet, started: now, last: (now, 0, 0), label }
    }

    pub(crate) fn tick(&mut self, progress: &Progress) {
        if self.quiet {
            return;
        }
        let (ios, bytes, errors) = progress.snapshot();
        let now = Instant::now();
        let seconds = now.duration_since(self.last.0).as_secs_f64().max(1e-6);
        let iops = (ios - self.last.1) as f64 / seconds;
        let mb_per_s = (bytes - self.last.2) as f64 / seconds / 1e6;
        self.last = (now, ios, bytes);
        let line = format!(
            "{} [{:>4}s] {:>9.0} IOPS {:>9.1} MB/s  {} I/Os  {} errors",
            self.label,
            now.duration_since(self.started).as_secs(),
            iops,
            mb_per_s,
            ios,
            errors
        );
        match &self.bar {
            Some(bar) => {
                bar.set_message(line);
                bar.tick();
            }
            None => eprintln!("{line}"),
        }
    }

    pub(crate) fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

fn baseline_figures(args: &PerfArgs) -> anyhow::Result<Figures> {
    let peer = EchoPeer::start().context("starting the echo peer on 127.0.0.1")?;
    let spec = BaselineSpec {
        pattern: args.rw,
        read_percent: args.rwmixread,
        io_bytes: usize::try_from(args.bs).context("--bs")?,
        queue_depth: usize::from(args.qd),
        connections: usize::from(args.queues),
        ios_total: args.ios,
        duration: args.duration(),
        seed: args.seed,
    };
    let progress = Progress::default();
    let mut line = ProgressLine::new("plain tcp", args.quiet);
    let (stats, elapsed): (QueueStats, Duration) =
        run_baseline(peer.addr(), &spec, &progress, &mut || line.tick(&progress))?;
    line.finish();
    Ok(stats.figures(elapsed))
}

/// Runs `tandem perf`: the NVMe/TCP workload against `--addr` (unless
/// `--baseline-only`), then the plain-TCP baseline if asked; prints the
/// progress and the result (JSON with `--json`); returns the report. A run
/// that completes with I/O errors or verify mismatches still returns Ok (see
/// [`PerfReport::is_clean`]); failing to connect or losing a queue is an Err.
pub fn run_perf(args: &PerfArgs) -> anyhow::Result<PerfReport> {
    if args.bs == 0 {
        bail!("--bs must be at least one block");
    }
    let nvme_tcp = if args.baseline_only {
        None
    } else {
        let (Some(addr), Some(subnqn)) = (&args.addr, &args.subnqn) else {
            bail!("--addr and --subnqn are needed unless --baseline-only");
        };
        Some(crate::host::run_target(args, addr, subnqn)?)
    };
    let baseline = if args.baseline || args.baseline_only { Some(baseline_figures(args)?) } else { None };
    let iops_ratio = match (&nvme_tcp, &baseline) {
        (Some(target), Some(base)) if base.iops > 0.0 => Some(target.iops / base.iops),
        _ => None,
    };
    let report = PerfReport {
        config: PerfConfig {
            rw: args.rw,
            rwmixread: args.rw.read_percent(args.rwmixread),
            bs: args.bs,
            qd: args.qd,
            queues: args.queues,
            nsid: args.nsid,
            offset_bytes: args.offset,
            size_bytes: args.size,
            verify: args.verify,
            header_digest: args.header_digest,
            data_digest: args.data_digest,
            seed: args.seed,
        },
        errors: [&nvme_tcp, &baseline].into_iter().flatten().map(|f| f.errors + f.verify_errors).sum(),
        nvme_tcp,
        baseline,
        iops_ratio,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !args.quiet {
        print!("{report}");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        perf: PerfArgs,
    }

    fn parse(args: &[&str]) -> Result<PerfArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("perf").chain(args.iter().copied())).map(|cli| cli.perf)
    }

    #[test]
    fn sizes_parse_with_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("128K").unwrap(), 128 << 10);
        assert_eq!(parse_size("1m").unwrap(), 1 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert!(matches!(parse_size("4x"), Err(SizeError::Malformed { .. })));
        assert!(matches!(parse_size("k"), Err(SizeError::Malformed { .. })));
        assert!(matches!(parse_size(""), Err(SizeError::Malformed { .. })));
        assert!(matches!(parse_size("-1"), Err(SizeError::Malformed { .. })));
        assert!(matches!(parse_size("99999999999t"), Err(SizeError::Overflow { .. })));
    }

    #[test]
    fn perf_args_parse_like_fio() {
        let args = parse(&[
            "--addr",
            "127.0.0.1:4420",
            "--subnqn",
            "nqn.2024-01.dev.tandem:pair",
            "--rw",
            "randrw",
            "--rwmixread",
            "70",
            "--bs",
            "16k",
            "--qd",
            "64",
            "--queues",
            "2",
            "--time",
            "5",
            "--offset",
            "1m",
            "--size",
            "64m",
            "--verify",
            "--header-digest",
            "--json",
            "--baseline",
        ])
        .unwrap();
        assert_eq!(args.rw, Pattern::Randrw);
        assert_eq!((args.rwmixread, args.bs, args.qd, args.queues), (70, 16384, 64, 2));
        assert_eq!((args.offset, args.size), (1 << 20, Some(64 << 20)));
        assert!(args.verify && args.header_digest && !args.data_digest && args.json && args.baseline);
        assert_eq!(args.duration(), Some(Duration::from_secs(5)));

        let defaults = parse(&["-a", "h:1", "--subnqn", "n"]).unwrap();
        assert_eq!(
            (defaults.rw, defaults.bs, defaults.qd, defaults.queues),
            (Pattern::Randread, 4096, 32, 1)
        );
        assert_eq!(defaults.duration(), Some(Duration::from_secs(10)));
        let counted = parse(&["-a", "h:1", "--subnqn", "n", "--ios", "1000"]).unwrap();
        assert_eq!((counted.ios, counted.duration()), (Some(1000), None));

        assert!(parse(&["--baseline-only"]).is_ok(), "no target needed for the baseline alone");
        assert!(parse(&["--rw", "randread"]).is_err(), "a target is needed");
        assert!(parse(&["--baseline-only", "--rw", "sideways"]).is_err());
        assert!(parse(&["--baseline-only", "--rwmixread", "101"]).is_err());
        assert!(parse(&["--baseline-only", "--qd", "0"]).is_err());
        assert!(parse(&["--baseline-only", "--bs", "4q"]).is_err());
    }

    #[test]
    fn baseline_only_runs_and_reports_json() {
        let args = parse(&["--baseline-only", "--ios", "2000", "--qd", "4", "--rw", "randwrite", "--quiet"])
            .unwrap();
        let report = run_perf(&args).unwrap();
        assert!(report.nvme_tcp.is_none() && report.iops_ratio.is_none());
        let base = report.baseline.as_ref().expect("baseline figures");
        assert_eq!((base.ios, base.writes, base.errors), (2000, 2000, 0));
        assert!(report.is_clean());
        assert_eq!(report.errors, 0);
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["config"]["rw"], "randwrite");
        assert_eq!(json["baseline"]["ios"], 2000);
        assert!(json["baseline"]["latency_us"]["p99_9"].as_f64().is_some());
    }
}
