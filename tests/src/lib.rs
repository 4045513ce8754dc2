//! Helpers for the multi-process tests: find (or build) the `tandem` binary,
//! pick free loopback ports, write a node's config into a scratch directory,
//! start `tandem serve` as a real process, wait for its ports, stop it by its
//! own PID (SIGTERM or SIGKILL), and keep its log for the failure message.
//!
//! Every process a test starts is a `NodeProcess`, killed on drop, so a
//! failing test never leaves a target behind.
#![forbid(unsafe_code)]

pub mod digest;
pub mod raw;

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The workspace root (the parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The `tandem` binary: `$TANDEM_BIN`, else `build/{debug,release}/tandem`
/// beside this test executable. It is (re)built first when it is missing or
/// older than a source file of a crate it is made of, so a test never runs a
/// stale target (`cargo nextest` builds test binaries, not other packages'
/// binaries).
pub fn tandem_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANDEM_BIN") {
        return PathBuf::from(p);
    }
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        // The test executable lives in build/<profile>/deps/; the binary in build/<profile>/.
        let profile_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().and_then(|d| d.parent()).map(Path::to_path_buf))
            .unwrap_or_else(|| workspace_root().join("build/debug"));
        let candidate = profile_dir.join("tandem");
        if is_fresh(&candidate) {
            return candidate;
        }
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--bin", "tandem"]).current_dir(workspace_root());
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "cargo build --bin tandem failed");
        candidate
    })
    .clone()
}

/// Whether `bin` exists and is newer than every source file it is built from.
fn is_fresh(bin: &Path) -> bool {
    let Ok(built) = fs::metadata(bin).and_then(|m| m.modified()) else { return false };
    fn newest(dir: &Path, newest_seen: &mut std::time::SystemTime) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                newest(&path, newest_seen);
            } else if let Ok(t) = entry.metadata().and_then(|m| m.modified()) {
                *newest_seen = (*newest_seen).max(t);
            }
        }
    }
    let mut newest_source = std::time::SystemTime::UNIX_EPOCH;
    for krate in ["env/src", "nvmf/src", "target/src", "bench/src"] {
        newest(&workspace_root().join(krate), &mut newest_source);
    }
    newest_source <= built
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

static SCRATCH_SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh scratch directory under the build directory (not /tmp: tmpfs has
/// no O_DIRECT), removed when dropped.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let n = SCRATCH_SEQ.fetch_add(1, Ordering::Relaxed);
        let path =
            workspace_root().join("build/test-scratch").join(format!("{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create scratch dir");
        Scratch { path }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A running `tandem serve`.
pub struct NodeProcess {
    child: Option<Child>,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub ports: Vec<SocketAddr>,
    /// The working directory of the process (relative paths in its config
    /// resolve here); the test's own when None.
    workdir: Option<PathBuf>,
}

impl NodeProcess {
    /// Writes `config` to `dir/name.toml`, starts `tandem serve` on it and
    /// waits (up to 60 s) until every address in `ports` accepts a connection.
    pub fn start(dir: &Path, name: &str, config: &str, ports: &[SocketAddr]) -> NodeProcess {
        let config_path = dir.join(format!("{name}.toml"));
        let log_path = dir.join(format!("{name}.log"));
        fs::write(&config_path, config).expect("write config");
        let mut node =
            NodeProcess { child: None, config_path, log_path, ports: ports.to_vec(), workdir: None };
        node.spawn();
        node
    }

    /// As `start`, with `dir` also the process's working directory, so a
    /// config with relative paths (like `tandem config example`) keeps its
    /// files inside the scratch directory.
    pub fn start_in(dir: &Path, name: &str, config: &str, ports: &[SocketAddr]) -> NodeProcess {
        let config_path = dir.join(format!("{name}.toml"));
        let log_path = dir.join(format!("{name}.log"));
        fs::write(&config_path, config).expect("write config");
        let mut node = NodeProcess {
            child: None,
            config_path,
            log_path,
            ports: ports.to_vec(),
            workdir: Some(dir.to_path_buf()),
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("open log");
        let mut command = Command::new(tandem_bin());
        if let Some(dir) = &self.workdir {
            command.current_dir(dir);
        }
        let child = command
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn tandem serve");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60));
    }

    fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for addr in self.ports.clone() {
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                if let Some(child) = self.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("tandem serve exited early ({status}); log:\n{}", self.log());
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "tandem serve not listening on {addr}; log:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("node is running")
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// SIGKILL and reap: a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal by name ("TERM", "STOP", "CONT") to this node's PID.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// SIGTERM, then wait up to `limit` for a clean exit; returns its status code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        self.signal("TERM");
        let deadline = Instant::now() + limit;
        let mut child = self.child.take()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tandem serve did not exit within {limit:?} of SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the same config again (after a crash or a stop).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running node");
        self.spawn();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `tandem ARGS...` to completion and returns (exit code, stdout, stderr).
pub fn run_tandem(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(tandem_bin()).args(args).output().expect("run tandem");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `tandem ARGS...`, waiting at most `limit`; a process still running
/// then is killed and reported as `None`. Returns (exit code, stdout, stderr).
pub fn run_tandem_timeout(args: &[&str], limit: Duration) -> Option<(i32, String, String)> {
    let mut child = Command::new(tandem_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tandem");
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            let out = child.wait_with_output().expect("collect output");
            return Some((
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The subsystem every test config serves.
pub const TEST_SUBNQN: &str = "nqn.2026-11.io.tandem:test";
/// Its serial and model number.
pub const TEST_SERIAL: &str = "TANDEMTEST01";
pub const TEST_MODEL: &str = "Tandem test";
/// Namespace 1: 16 MiB of RAM in 4096-byte blocks, ANA group 1.
pub const TEST_NS_BYTES: u64 = 16 << 20;
pub const TEST_BLOCK_BYTES: u32 = 4096;
pub const TEST_NGUID: [u8; 16] =
    [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10];
pub const TEST_UUID: [u8; 16] =
    [0x5a, 0x1d, 0xe7, 0x00, 0x11, 0x22, 0x43, 0x33, 0x84, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa];
/// MDTS and in-capsule size of the test config.
pub const TEST_MDTS_BYTES: u32 = 131_072;
pub const TEST_IN_CAPSULE_BYTES: u32 = 8192;

/// A port of a test config: id, address, and the ANA state of group 1 through it.
#[derive(Clone, Copy, Debug)]
pub struct PortSpec {
    pub id: u16,
    pub addr: SocketAddr,
    pub group1: &'static str,
}

impl PortSpec {
    /// An optimized port on a fresh loopback port number.
    pub fn fresh(id: u16) -> PortSpec {
        PortSpec { id, addr: loopback(free_port()), group1: "optimized" }
    }
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn uuid_text(u: &[u8; 16]) -> String {
    let h = hex(u);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// A node config with one subsystem (`TEST_SUBNQN`, any host) and one RAM
/// namespace in ANA group 1, served on `ports`, listing `remote_ports` in
/// discovery, with a control socket when `rpc_socket` is given.
pub fn test_config(ports: &[PortSpec], remote_ports: &[PortSpec], rpc_socket: Option<&Path>) -> String {
    let mut s = String::from("[node]\nname = \"t\"\ncntlid_min = 1\ncntlid_max = 0x7fff\ncores = [0]\n");
    s.push_str("poll = \"adaptive\"\n");
    if let Some(p) = rpc_socket {
        s.push_str(&format!("rpc_socket = \"{}\"\n", p.display()));
    }
    for p in ports {
        s.push_str(&format!(
            "\n[[ports]]\nid = {}\ntransport = \"tcp\"\naddr = \"{}\"\nana = {{ 1 = \"{}\" }}\n",
            p.id, p.addr, p.group1
        ));
    }
    for p in remote_ports {
        s.push_str(&format!(
            "\n[[remote_ports]]\nid = {}\ntransport = \"tcp\"\naddr = \"{}\"\n",
            p.id, p.addr
        ));
    }
    s.push_str(&format!(
        "\n[[subsystems]]\nnqn = \"{TEST_SUBNQN}\"\nserial = \"{TEST_SERIAL}\"\nmodel = \"{TEST_MODEL}\"\n\
         allow_any_host = true\n\n[[subsystems.namespaces]]\nnsid = 1\nana_group = 1\nbackend = \"ram\"\n\
         size = {TEST_NS_BYTES}\nblock_size = {TEST_BLOCK_BYTES}\nnguid = \"{}\"\nuuid = \"{}\"\n",
        hex(&TEST_NGUID),
        uuid_text(&TEST_UUID)
    ));
    s.push_str(&format!(
        "\n[limits]\nmdts_bytes = {TEST_MDTS_BYTES}\nin_capsule_data_bytes = {TEST_IN_CAPSULE_BYTES}\n\
         queue_depth_max = 128\nio_queues_max = 8\nkato_default_ms = 120000\nanatt_s = 10\n"
    ));
    s
}

/// Starts `tandem serve` with `test_config` in a fresh scratch directory.
pub fn start_test_node(
    name: &str,
    ports: &[PortSpec],
    remote_ports: &[PortSpec],
    rpc: bool,
) -> (Scratch, NodeProcess) {
    let dir = Scratch::new(name);
    let rpc_path = dir.path.join("rpc.sock");
    let config = test_config(ports, remote_ports, rpc.then_some(rpc_path.as_path()));
    let addrs: Vec<SocketAddr> = ports.iter().map(|p| p.addr).collect();
    let node = NodeProcess::start(&dir.path, name, &config, &addrs);
    (dir, node)
}
