//! `tandem demo`: everything on one machine with nothing to configure.
//!
//! What it runs today, on one node (`tandem serve` as a child process on a
//! free loopback port; its writes staged in a shared-memory ring in front of
//! a file medium):
//! 1. a verified mixed workload from the load generator over two queues;
//! 2. the crash checker writing self-describing blocks while the node is
//!    killed with SIGKILL in the middle;
//! 3. a restart, in which the node replays its staged writes to the medium
//!    before it opens its port;
//! 4. a check that every acknowledged write is there (never older, never
//!    garbage), and a clean SIGTERM shutdown.
//!
//! The verdict is PASS only if all of that held. The pair, the mirror and
//! the failover join the demo with the issues that build them.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use tandem_nvmf::host::{ConnectOptions, HostController};
use tandem_perf::{CrashChecker, Region};

/// Flags of `tandem demo`.
#[derive(clap::Args, Clone, Debug)]
pub struct DemoArgs {
    /// Seconds of each workload phase.
    #[arg(long, default_value_t = 4)]
    pub seconds: u64,
    /// Working directory for configs, logs and the medium (default: a fresh one under the temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the working directory and the staging ring afterwards.
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
    config_path: PathBuf,
    name: String,
    addr: SocketAddr,
}

impl Node {
    fn start(dir: &Path, name: &str, config: &str, addr: SocketAddr) -> anyhow::Result<Node> {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config)?;
        let log = dir.join(format!("{name}.log"));
        let mut node = Node { child: None, log, config_path, name: name.to_string(), addr };
        node.spawn()?;
        Ok(node)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let exe = std::env::current_exe().context("cannot find the tandem binary")?;
        let child = Command::new(exe)
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("cannot start tandem serve")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("node {} exited at start ({status}); see {}", self.name, self.log.display());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} did not listen on {} within 60 s; see {}",
                    self.name,
                    self.addr,
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// SIGKILL: the process dies with whatever it had in flight.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What the node's log says its last recovery replayed.
    fn replayed_records(&self) -> Option<u64> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        let line = text.lines().rev().find(|l| l.contains("staging ring recovered"))?;
        let at = line.find("replayed_records=")? + "replayed_records=".len();
        let digits: String = line[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
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
        self.kill9();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

const SUBNQN: &str = "nqn.2026-11.io.tandem:demo";

fn node_config(port: u16, dir: &Path, shm_dir: &Path) -> String {
    let data = dir.join("data");
    format!(
        r#"[node]
name = "a"
cntlid_min = 1
cntlid_max = 0x7fff
cores = [0]
poll = "adaptive"
data_dir = "{data}"

[staging]
domain = "shm"
dir = "{shm}"
ring_size = "32MiB"

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
backend = "file"
path = "ns1.img"
size = "256MiB"
block_size = 4096
"#,
        data = data.display(),
        shm = shm_dir.display(),
    )
}

fn connect(addr: SocketAddr, queues: u16) -> anyhow::Result<HostController> {
    let mut options = ConnectOptions::new(&addr.to_string(), SUBNQN);
    options.io_queues = queues;
    options.queue_depth = 32;
    HostController::connect(&options).context("connecting to node a")
}

/// Runs the demo; returns whether the verdict is PASS.
pub fn run(args: &DemoArgs) -> anyhow::Result<bool> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("tandem-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let shm_dir = PathBuf::from(format!("/dev/shm/tandem-demo-{}", std::process::id()));
    let result = run_in(args, &dir, &shm_dir);
    if matches!(result, Ok(true)) && !args.keep {
        let _ = std::fs::remove_dir_all(&shm_dir);
        if args.dir.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    result
}

fn run_in(args: &DemoArgs, dir: &Path, shm_dir: &Path) -> anyhow::Result<bool> {
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    println!("tandem demo: working in {}", dir.display());
    println!(
        "[1/5] starting node a on {addr}: writes staged in shared memory ({}), medium a file",
        shm_dir.display()
    );
    let mut node = Node::start(dir, "a", &node_config(port, dir, shm_dir), addr)?;

    println!("[2/5] {} s of verified 4 KiB random read/write, 2 queues x QD 16", args.seconds);
    let secs = args.seconds.to_string();
    let addr_text = addr.to_string();
    let cli = PerfCli::try_parse_from([
        "perf",
        "--addr",
        &addr_text,
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
        "--quiet",
    ])
    .context("demo perf arguments")?;
    let report = tandem_perf::run_perf(&cli.perf)?;
    let figures = report.nvme_tcp.clone();
    match &figures {
        Some(f) => println!("      {f}"),
        None => println!("      no figures"),
    }

    println!("[3/5] the crash checker writes; node a is killed with SIGKILL after {} s", args.seconds);
    let mut controller = connect(addr, 2)?;
    let namespace = controller.namespace(1)?;
    // A region past the perf workload's, so the two do not overlap.
    let region =
        Region { nsid: 1, slba: 32_768, block_count: 16_384, block_size: namespace.block_size as usize };
    let mut queues = controller.take_io_queues();
    let mut checker = CrashChecker::new(region, 7, 2026)?;
    let writer = std::thread::spawn(move || {
        let deadline = Some(Instant::now() + Duration::from_secs(600));
        let summary = checker.run(&mut queues, &AtomicBool::new(false), deadline);
        (checker, summary)
    });
    std::thread::sleep(Duration::from_secs(args.seconds));
    node.kill9();
    let (checker, summary) = writer.join().map_err(|_| anyhow::anyhow!("the crash checker panicked"))?;
    drop(controller);
    println!(
        "      {} writes acknowledged before the kill, {} in flight when it hit",
        summary.writes_acked, summary.writes_abandoned
    );

    println!("[4/5] restarting node a: staged writes are replayed to the medium before its port opens");
    node.spawn()?;
    match node.replayed_records() {
        Some(n) => println!("      recovery replayed {n} staged records"),
        None => println!("      recovery: no report found in the log"),
    }
    let mut controller = connect(addr, 1)?;
    let mut queues = controller.take_io_queues();
    let Some(queue) = queues.first_mut() else { bail!("no I/O queue after the restart") };
    let verified = match checker.verify(queue) {
        Ok(report) => {
            println!("      every acknowledged write is there: {} LBAs checked", report.lbas_checked);
            true
        }
        Err(e) => {
            println!("      LOST OR DAMAGED WRITES: {e}");
            false
        }
    };
    drop(queues);
    let _ = controller.disconnect();

    println!("[5/5] stopping node a (SIGTERM)");
    let clean_exit = node.stop()?;
    let ios = figures.as_ref().map_or(0, |f| f.ios);
    let pass = report.is_clean() && ios > 0 && summary.writes_acked > 0 && verified && clean_exit;
    println!(
        "verdict: {} — {} verified I/Os, {} errors; {} acknowledged writes checked after a SIGKILL ({}); \
         node {} (log: {})",
        if pass { "PASS" } else { "FAIL" },
        ios,
        report.errors,
        summary.writes_acked,
        if verified { "none lost" } else { "CHECK FAILED" },
        if clean_exit { "shut down cleanly" } else { "did NOT shut down cleanly" },
        node.log.display()
    );
    Ok(pass)
}
