//! Claim: a staging ring belongs to one medium (DESIGN "Stores and records";
//! issue 7 item 1). Staged, acknowledged writes are replayed only into the
//! medium they were staged for, so they cannot be released into another
//! node's image and lost to their own.
//!
//! - `a_ring_is_replayed_only_into_its_own_medium`: the case found by an
//!   independent crash checker. Node A stages 300 acknowledged writes while
//!   its medium fails and is killed with SIGKILL. The same config pointed at a
//!   fresh image in another directory, sharing A's ring directory, refuses to
//!   start: it names both media, exits non-zero, and leaves the ring byte for
//!   byte as it was and its own image untouched. A, restarted, replays all 300
//!   writes into its own image (showing progress as it goes), and a host
//!   reads every one back.
//! - `the_default_ring_dir_is_per_data_directory`: the example's layout (a
//!   relative `data_dir`, no `staging.dir`) run from two working directories
//!   gives two ring directories: B starts with its own empty ring while A's
//!   staged writes wait, and A then recovers all of them. A ring with staged
//!   writes at the default location of older builds stops B with a message
//!   that says where it is and how to recover it.

mod staging_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use staging_support::{first_difference, pattern, wait_until, Domain, NsSpec, StagedNode, BLOCK_BYTES};
use tandem_nvmf::host::{ConnectOptions, HostController};
use tandem_tests::{free_port, loopback, tandem_bin, NodeProcess, Scratch, TEST_SUBNQN};

const WRITES: u64 = 300;

/// Runs `tandem serve --config CONFIG` in `cwd` and waits (up to 60 s) for
/// it to exit, as it must by refusing to start; returns (exit code, output).
/// A node that starts instead is killed and the test fails.
fn serve_expecting_refusal(config: &Path, cwd: &Path) -> (i32, String) {
    let log_path = cwd.join("refused.log");
    let log = fs::File::create(&log_path).expect("create the log");
    let mut child = Command::new(tandem_bin())
        .current_dir(cwd)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().expect("dup the log"))
        .stderr(log)
        .spawn()
        .expect("run tandem serve");
    let mut status = None;
    wait_until(Duration::from_secs(60), "tandem serve to refuse and exit", || {
        status = child.try_wait().ok().flatten();
        if status.is_none() && fs::read_to_string(&log_path).is_ok_and(|l| l.contains("listening")) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tandem serve started instead of refusing:\n{}",
                fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        status.is_some()
    });
    let code = status.and_then(|s| s.code()).unwrap_or(-1);
    (code, fs::read_to_string(&log_path).unwrap_or_default())
}

/// Writes `WRITES` one-block writes at LBAs 0.. (generation 1), each acknowledged.
fn write_all(addr: &str) {
    let mut options = ConnectOptions::new(addr, TEST_SUBNQN);
    options.io_queues = 1;
    options.queue_depth = 32;
    options.timeout = Duration::from_secs(30);
    let mut controller = HostController::connect(&options).expect("connect");
    let mut queues = controller.take_io_queues();
    for lba in 0..WRITES {
        queues[0].write(1, lba, &pattern(lba, 1, 1)).expect("staged write acknowledged");
    }
}

/// Reads LBAs 0..WRITES back through a host and compares each with what was acknowledged.
fn verify_all(addr: &str) {
    let mut options = ConnectOptions::new(addr, TEST_SUBNQN);
    options.io_queues = 1;
    options.timeout = Duration::from_secs(30);
    let mut controller = HostController::connect(&options).expect("connect");
    let mut queues = controller.take_io_queues();
    let mut got = vec![0u8; BLOCK_BYTES];
    for lba in 0..WRITES {
        queues[0].read(1, lba, &mut got).expect("read");
        if let Some(d) = first_difference(lba, &got, &pattern(lba, 1, 1)) {
            panic!("acknowledged write lost: {d}");
        }
    }
}

fn staged_records(socket: &Path) -> u64 {
    let status = tandem_target::rpc::call(socket, "tandem_get_status", json!({})).expect("status rpc");
    status["staging"][0]["staged_records"].as_u64().unwrap_or_else(|| panic!("no staged_records in {status}"))
}

#[test]
fn a_ring_is_replayed_only_into_its_own_medium() {
    let mut a = StagedNode::start("medium-a", Domain::Shm, "16MiB", &[NsSpec::staged(1, 4096).with_faults()]);
    a.fail_all_medium_writes(1);
    write_all(&a.addr.to_string());
    assert_eq!(staged_records(&a.rpc_socket), WRITES, "the failing medium keeps every write staged");
    a.node.kill9();
    let ring = a.ring_file(1);
    let ring_before = fs::read(&ring).expect("read the ring");

    // B: the same config, the same ring directory, a fresh image elsewhere.
    let b_dir = Scratch::new("medium-b");
    let b_medium = b_dir.path.join("medium-ns1.img");
    let a_config = fs::read_to_string(&a.node.config_path).expect("A's config");
    let a_medium = a.medium_path(1);
    let b_config = a_config
        .replace(&a_medium.display().to_string(), &b_medium.display().to_string())
        .replace(&a.rpc_socket.display().to_string(), &b_dir.path.join("rpc.sock").display().to_string())
        .replace(&a.addr.to_string(), &loopback(free_port()).to_string());
    assert_ne!(a_config, b_config);
    let b_config_path = b_dir.path.join("b.toml");
    fs::write(&b_config_path, &b_config).expect("write B's config");
    let (code, output) = serve_expecting_refusal(&b_config_path, &b_dir.path);
    assert_ne!(code, 0, "B started on A's ring:\n{output}");
    let a_shown = fs::canonicalize(&a_medium).expect("A's medium").display().to_string();
    let b_shown = fs::canonicalize(&b_medium).expect("B's medium").display().to_string();
    for needle in [&a_shown, &b_shown, &ring.display().to_string(), &format!("{WRITES} staged writes")] {
        assert!(output.contains(needle.as_str()), "the refusal does not name {needle}:\n{output}");
    }
    assert!(output.contains("--adopt-staging"), "the refusal says how to proceed:\n{output}");
    assert!(fs::read(&ring).expect("read the ring") == ring_before, "B changed A's ring");
    let b_image = fs::read(&b_medium).expect("B's image");
    assert!(b_image[..WRITES as usize * BLOCK_BYTES].iter().all(|&b| b == 0), "A's writes reached B's image");

    // A, restarted (the fault injection is gone with the process), gets them all.
    a.restart();
    let replayed: u64 = a.recoveries().iter().map(|r| r.replayed_records).sum();
    assert_eq!(replayed, WRITES, "A's restart replays every staged write; log:\n{}", a.node.log());
    // Long work shows progress: the replay is announced, and its end logged with the counts.
    let log = staging_support::strip_ansi(&a.node.log());
    let progress = format!("ns 1: replaying staged writes: {WRITES}/{WRITES} records (100%)");
    assert!(log.contains("ns 1: replaying staged writes: 0/"), "no progress at the start:\n{log}");
    assert!(log.contains(&progress), "no final progress line:\n{log}");
    verify_all(&a.addr.to_string());
    for lba in [0, WRITES / 2, WRITES - 1] {
        assert_eq!(a.read_medium(1, lba, 1), pattern(lba, 1, 1), "LBA {lba} on A's own medium");
    }
}

/// The example-like config of these tests: a relative `data_dir`, no
/// `staging.dir`, so the ring directory is the default.
fn default_dir_config(name: &str, addr: &str, rpc: &Path) -> String {
    format!(
        "[node]\nname = \"{name}\"\ncntlid_min = 1\ncntlid_max = 0x7fff\ncores = [0]\npoll = \"adaptive\"\n\
         data_dir = \"data\"\nrpc_socket = \"{}\"\n\n\
         [[ports]]\nid = 1\ntransport = \"tcp\"\naddr = \"{addr}\"\n\n\
         [[subsystems]]\nnqn = \"{TEST_SUBNQN}\"\nserial = \"S1\"\nmodel = \"M\"\nallow_any_host = true\n\n\
         [[subsystems.namespaces]]\nnsid = 1\nana_group = 1\nbackend = \"file\"\npath = \"ns1.img\"\n\
         size = \"16MiB\"\nblock_size = 4096\nfault_injection = true\n\n\
         [staging]\ndomain = \"shm\"\nring_size = \"16MiB\"\n",
        rpc.display()
    )
}

/// Removes every `/dev/shm/tandem-<name>*` directory when dropped: the test's
/// rings live at the real default location.
struct DefaultRingDirs {
    name: String,
}

impl DefaultRingDirs {
    fn list(&self) -> Vec<PathBuf> {
        let prefix = format!("tandem-{}", self.name);
        let mut out: Vec<PathBuf> = fs::read_dir("/dev/shm")
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

impl Drop for DefaultRingDirs {
    fn drop(&mut self) {
        for dir in self.list() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn the_default_ring_dir_is_per_data_directory() {
    let name = format!("mt{}", std::process::id());
    let rings = DefaultRingDirs { name: name.clone() };
    let (a_dir, b_dir) = (Scratch::new("default-a"), Scratch::new("default-b"));
    let (a_addr, b_addr) = (loopback(free_port()), loopback(free_port()));
    let a_rpc = a_dir.path.join("rpc.sock");
    let mut a = NodeProcess::start_in(
        &a_dir.path,
        "a",
        &default_dir_config(&name, &a_addr.to_string(), &a_rpc),
        &[a_addr],
    );
    wait_until(Duration::from_secs(30), "A's control socket", || {
        tandem_target::rpc::call(&a_rpc, "tandem_get_status", json!({})).is_ok()
    });
    tandem_target::rpc::call(
        &a_rpc,
        "tandem_fault_inject",
        json!({"nsid": 1, "action": "fail_writes_after", "count": 0}),
    )
    .expect("fault rpc");
    write_all(&a_addr.to_string());
    assert_eq!(staged_records(&a_rpc), WRITES);
    a.kill9();
    let a_rings = rings.list();
    assert_eq!(a_rings.len(), 1, "A's ring directory: {a_rings:?}");
    let a_ring_dir = a_rings[0].clone();
    assert!(a_ring_dir.to_string_lossy().starts_with(&format!("/dev/shm/tandem-{name}-")), "{a_ring_dir:?}");

    // A ring with staged writes at the default location of older builds
    // (/dev/shm/tandem-<name>) is reported, never silently ignored.
    let legacy = PathBuf::from(format!("/dev/shm/tandem-{name}"));
    fs::create_dir_all(&legacy).expect("legacy dir");
    let a_ring_file =
        fs::read_dir(&a_ring_dir).expect("A's rings").flatten().next().expect("one ring").path();
    let file_name = a_ring_file.file_name().expect("ring file name");
    fs::copy(&a_ring_file, legacy.join(file_name)).expect("copy the ring to the legacy location");
    let b_rpc = b_dir.path.join("rpc.sock");
    let b_config = default_dir_config(&name, &b_addr.to_string(), &b_rpc);
    let b_config_path = b_dir.path.join("b.toml");
    fs::write(&b_config_path, &b_config).expect("write B's config");
    let (code, output) = serve_expecting_refusal(&b_config_path, &b_dir.path);
    assert_ne!(code, 0, "B ignored staged writes at the old default location:\n{output}");
    let expected = format!("set staging.dir = \"{}\"", legacy.display());
    assert!(output.contains(&expected) && output.contains(&format!("{WRITES} staged writes")), "{output}");
    fs::remove_dir_all(&legacy).expect("remove the legacy copy");

    // B from its own directory: its own, empty ring; A's is not touched.
    let a_ring_before = fs::read(&a_ring_file).expect("A's ring");
    let mut b = NodeProcess::start_in(&b_dir.path, "b", &b_config, &[b_addr]);
    wait_until(Duration::from_secs(30), "B's control socket", || {
        tandem_target::rpc::call(&b_rpc, "tandem_get_status", json!({})).is_ok()
    });
    assert_eq!(staged_records(&b_rpc), 0, "B sees none of A's staged writes");
    assert_eq!(rings.list().len(), 2, "two data directories, two ring directories: {:?}", rings.list());
    assert_eq!(b.terminate(Duration::from_secs(30)), Some(0));
    assert!(fs::read(&a_ring_file).expect("A's ring") == a_ring_before, "B changed A's ring");

    a.restart();
    wait_until(Duration::from_secs(30), "A's control socket", || {
        tandem_target::rpc::call(&a_rpc, "tandem_get_status", json!({})).is_ok()
    });
    let replayed: u64 = staging_support::recoveries(&a.log()).iter().map(|r| r.replayed_records).sum();
    assert_eq!(replayed, WRITES, "A's log:\n{}", a.log());
    verify_all(&a_addr.to_string());
}
