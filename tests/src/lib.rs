//! Helpers for the multi-process tests: find (or build) the `tandem` binary,
//! pick free loopback ports, write a node's config into a scratch directory,
//! start `tandem serve` as a real process, wait for its ports, stop it by its
//! own PID (SIGTERM or SIGKILL), and keep its log for the failure message.
//!
//! Every process a test starts is a `NodeProcess`, killed on drop, so a
//! failing test never leaves a target behind.
#![forbid(unsafe_code)]

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
/// beside this test executable, built on first use if it is missing.
pub fn tandem_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANDEM_BIN") {
        return PathBuf::from(p);
    }
    // The test executable lives in build/<profile>/deps/; the binary in build/<profile>/.
    if let Ok(exe) = std::env::current_exe() {
        if let Some(profile_dir) = exe.parent().and_then(|d| d.parent()) {
            let candidate = profile_dir.join("tandem");
            if candidate.exists() {
                return candidate;
            }
        }
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--bin", "tandem"])
        .current_dir(workspace_root())
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build --bin tandem failed");
    workspace_root().join("build/debug/tandem")
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
}

impl NodeProcess {
    /// Writes `config` to `dir/name.toml`, starts `tandem serve` on it and
    /// waits (up to 60 s) until every address in `ports` accepts a connection.
    pub fn start(dir: &Path, name: &str, config: &str, ports: &[SocketAddr]) -> NodeProcess {
        let config_path = dir.join(format!("{name}.toml"));
        let log_path = dir.join(format!("{name}.log"));
        fs::write(&config_path, config).expect("write config");
        let mut node = NodeProcess { child: None, config_path, log_path, ports: ports.to_vec() };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("open log");
        let child = Command::new(tandem_bin())
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
