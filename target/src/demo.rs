//! `tandem demo`: everything on one machine with nothing to configure.
//!
//! What it runs today: one node (`tandem serve` as a child process, on a
//! free loopback port, a RAM namespace), a verified mixed workload from the
//! load generator over several queues, and a clean shutdown by SIGTERM; the
//! verdict is PASS only if every I/O succeeded, every read matched what was
//! written, and the node exited cleanly. The pair, the mirror and the
//! failover join the demo with the issues that build them.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

/// Flags of `tandem demo`.
#[derive(clap::Args, Clone, Debug)]
pub struct DemoArgs {
    /// Seconds of workload.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Working directory for configs and logs (default: a fresh one under the temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the working directory afterwards.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Parser)]
struct PerfCli {
    #[command(flatten)]
    perf: tandem_perf::PerfArgs,
}

/// A child `tandem serve`, killed if the demo fails half-way.
struct Node {
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    fn start(dir: &std::path::Path, name: &str, config: &str, addr: SocketAddr) -> anyhow::Result<Node> {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config)?;
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log)?;
        let exe = std::env::current_exe().context("cannot find the tandem binary")?;
        let child = Command::new(exe)
            .args(["serve", "--config"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("cannot start tandem serve")?;
        let mut node = Node { child: Some(child), log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(c) = node.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("node {name} exited at start ({status}); see {}", node.log.display());
                }
            }
            if Instant::now() > deadline {
                bail!("node {name} did not listen on {addr} within 30 s; see {}", node.log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(node)
    }

    /// SIGTERM and wait; true if it exited 0.
    fn stop(&mut self) -> anyhow::Result<bool> {
        let Some(mut child) = self.child.take() else { return Ok(false) };
        let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

const SUBNQN: &str = "nqn.2026-11.io.tandem:demo";

fn node_config(port: u16) -> String {
    format!(
        r#"[node]
name = "a"
cntlid_min = 1
cntlid_max = 0x7fff
cores = [0]
poll = "adaptive"

[[ports]]
id = 1
transport = "tcp"
addr = "127.0.0.1:{port}"

[[subsystems]]
nqn = "{SUBNQN}"
serial = "TANDEMDEMO01"
model = "Tandem demo"
allow_any_host = true

[[subsystems.namespaces]]
nsid = 1
ana_group = 1
backend = "ram"
size = "256MiB"
block_size = 4096
"#
    )
}

/// Runs the demo; returns whether the verdict is PASS.
pub fn run(args: &DemoArgs) -> anyhow::Result<bool> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("tandem-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    println!("tandem demo: working in {}", dir.display());
    println!("[1/3] starting node a on {addr} (RAM namespace, 256 MiB)");
    let mut node = Node::start(&dir, "a", &node_config(port), addr)?;

    println!("[2/3] {} s of verified 4 KiB random read/write, 2 queues x QD 16", args.seconds);
    let secs = args.seconds.to_string();
    let cli = PerfCli::try_parse_from([
        "perf",
        "--addr",
        &addr.to_string(),
        "--subnqn",
        SUBNQN,
        "--rw",
        "randrw",
        "--rwmixread",
        "50",
        "--bs",
        "4k",
        "--qd",
        "16",
        "--queues",
        "2",
        "--time",
        &secs,
        "--verify",
        "--size",
        "64MiB",
    ])
    .context("demo perf arguments")?;
    let report = tandem_perf::run_perf(&cli.perf);

    println!("[3/3] stopping node a (SIGTERM)");
    let clean_exit = node.stop()?;
    let report = report?;
    let figures = report.nvme_tcp.as_ref();
    let ios = figures.map_or(0, |f| f.ios);
    let pass = report.is_clean() && clean_exit && ios > 0;
    println!(
        "verdict: {} — {} verified I/Os, {} errors, node {} (log: {})",
        if pass { "PASS" } else { "FAIL" },
        ios,
        report.errors,
        if clean_exit { "shut down cleanly" } else { "did NOT shut down cleanly" },
        node.log.display()
    );
    if pass && !args.keep && args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(pass)
}
