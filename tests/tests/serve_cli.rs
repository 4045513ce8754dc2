//! Claim: `tandem serve` behaves as a storage admin meets it. The output of
//! `tandem config example` runs as printed and serves I/O; a bad config
//! (unknown field, bad size, duplicate nsid, missing file, a transport this
//! build does not serve) exits non-zero with a message that names the
//! culprit field; SIGTERM with connections open exits 0 promptly; a port
//! already in use is a clear error.

use std::net::TcpListener;
use std::time::Duration;

use tandem_nvmf::host::{ConnectOptions, HostController};
use tandem_target::config::Config;
use tandem_tests::raw::RawConn;
use tandem_tests::{
    free_port, loopback, run_tandem, run_tandem_timeout, start_test_node, test_config, NodeProcess, PortSpec,
    Scratch, TEST_SUBNQN,
};

/// Writes `config` and runs `tandem serve` on it, expecting it to fail at
/// start-up; returns (exit code, stderr).
fn serve_fails(dir: &Scratch, name: &str, config: &str) -> (i32, String) {
    let path = dir.path.join(format!("{name}.toml"));
    std::fs::write(&path, config).expect("write config");
    let path = path.to_string_lossy().into_owned();
    let (code, _out, err) = run_tandem_timeout(&["serve", "--config", &path], Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{name}: tandem serve kept running on a bad config"));
    assert_ne!(code, 0, "{name}: exit code; stderr:\n{err}");
    (code, err)
}

#[test]
fn example_config_runs_as_printed() {
    let (code, example, err) = run_tandem(&["config", "example"]);
    assert_eq!(code, 0, "tandem config example: {err}");
    assert!(example.contains("127.0.0.1:4420"), "the example listens on 4420");
    assert!(example.contains("name = \"a\""), "the example's node is \"a\"");
    // Two substitutions, and only these: a free port instead of 4420 (which
    // other tests or a real target may hold) and a node name of our own,
    // because the example's shm staging rings live in
    // /dev/shm/tandem-<name>-<hash of the data_dir>, a machine-wide name that
    // must not collide with another run. The example
    // runs with the scratch directory as its working directory, where its
    // relative data_dir (the namespace image) then lives.
    let addr = loopback(free_port());
    let node_name = format!("example-test-{}", std::process::id());
    let config = example.replace("127.0.0.1:4420", &addr.to_string()).replacen(
        "name = \"a\"",
        &format!("name = \"{node_name}\""),
        1,
    );
    let parsed = Config::parse(&config).expect("the example parses");
    let subsystem = &parsed.subsystems[0];
    let ns = &subsystem.namespaces[0];
    let dir = Scratch::new("example");
    let data_dir = dir.path.join(parsed.node.data_dir.as_deref().expect("the example has a data_dir"));
    let shm_ring = tandem_target::config::default_shm_staging_dir(&node_name, Some(&data_dir))
        .expect("the default ring dir");
    assert_eq!(parsed.staging.as_ref().map(|s| s.dir.starts_with("/dev/shm")), Some(true));
    let mut node = NodeProcess::start_in(&dir.path, "example", &config, &[addr]);
    let opts = ConnectOptions::new(&addr.to_string(), &subsystem.nqn);
    let mut ctrl = HostController::connect(&opts).expect("connect to the example's subsystem");
    let info = ctrl.namespace(ns.nsid).expect("the example's namespace");
    let size = ns.size_bytes.expect("the example gives a size");
    assert_eq!(
        (info.block_size, info.num_blocks),
        (ns.block_size, size / u64::from(ns.block_size)),
        "namespace geometry as configured"
    );
    let mut q = ctrl.take_io_queues().pop().expect("an I/O queue");
    let data: Vec<u8> = (0..16 * 4096).map(|i| (i * 7 % 251) as u8).collect();
    q.write(ns.nsid, 100, &data).expect("write");
    let mut back = vec![0u8; data.len()];
    q.read(ns.nsid, 100, &mut back).expect("read");
    assert!(back == data, "read-back equals the write");
    assert_eq!(node.terminate(Duration::from_secs(10)), Some(0), "clean exit; log:\n{}", node.log());
    assert!(shm_ring.is_dir(), "the example's rings are at {}", shm_ring.display());
    std::fs::remove_dir_all(&shm_ring).expect("remove the example's ring directory");
}

#[test]
fn bad_configs_exit_nonzero_naming_the_field() {
    let dir = Scratch::new("badcfg");
    let good = test_config(&[PortSpec::fresh(1)], &[], None);
    // The good config passes `tandem config check`, so each failure below is
    // the one change made to it.
    let good_path = dir.path.join("good.toml");
    std::fs::write(&good_path, &good).expect("write");
    let (code, _, err) = run_tandem(&["config", "check", "--config", &good_path.to_string_lossy()]);
    assert_eq!(code, 0, "the base config is valid: {err}");

    let unknown = good.replacen("poll = \"adaptive\"", "poll = \"adaptive\"\nbogus_knob = 3", 1);
    let (_, err) = serve_fails(&dir, "unknown-field", &unknown);
    assert!(err.contains("bogus_knob") && err.contains("node"), "names node.bogus_knob:\n{err}");

    let bad_size = good.replacen("size = 16777216", "size = \"lots\"", 1);
    assert_ne!(bad_size, good);
    let (_, err) = serve_fails(&dir, "bad-size", &bad_size);
    assert!(err.contains("subsystems[0].namespaces[0].size"), "names the size field:\n{err}");

    let dup = good.replacen(
        "\n[limits]",
        "\n[[subsystems.namespaces]]\nnsid = 1\nana_group = 1\nbackend = \"ram\"\nsize = \"1MiB\"\n\
         block_size = 4096\n\n[limits]",
        1,
    );
    let (_, err) = serve_fails(&dir, "dup-nsid", &dup);
    assert!(err.contains("subsystems[0].namespaces[1].nsid"), "names the duplicate nsid:\n{err}");

    let missing = dir.path.join("no-such-config.toml");
    let (code, _, err) =
        run_tandem_timeout(&["serve", "--config", &missing.to_string_lossy()], Duration::from_secs(30))
            .expect("tandem serve exits on a missing config");
    assert_ne!(code, 0, "missing config file: {err}");
    assert!(err.contains("no-such-config.toml"), "names the missing file:\n{err}");

    // A port that asks for RDMA, which this build does not serve: refused by
    // `config check` and by `serve`, naming the field, rather than served
    // as NVMe/TCP to a host that was told RDMA.
    let rdma = good.replacen("transport = \"tcp\"", "transport = \"rdma\"", 1);
    assert_ne!(rdma, good);
    let rdma_path = dir.path.join("rdma.toml");
    std::fs::write(&rdma_path, &rdma).expect("write");
    let (code, _, err) = run_tandem(&["config", "check", "--config", &rdma_path.to_string_lossy()]);
    assert_ne!(code, 0, "config check accepts transport = \"rdma\": {err}");
    assert!(err.contains("ports[0].transport") && err.contains("rdma"), "names the transport field:\n{err}");
    let (_, err) = serve_fails(&dir, "rdma", &rdma);
    assert!(err.contains("ports[0].transport"), "serve names the transport field:\n{err}");

    // A file namespace whose image cannot be created.
    let file_ns =
        good.replacen("backend = \"ram\"", "backend = \"file\"\npath = \"/proc/no-such-dir/ns1.img\"", 1);
    let (_, err) = serve_fails(&dir, "missing-image", &file_ns);
    assert!(err.contains("subsystems[0].namespaces[0].path"), "names the image path field:\n{err}");
}

#[test]
fn sigterm_exits_zero_promptly_with_connections_open() {
    let port = PortSpec::fresh(1);
    let (_dir, mut node) = start_test_node("sigterm", &[port], &[], false);
    let mut opts = ConnectOptions::new(&port.addr.to_string(), TEST_SUBNQN);
    opts.io_queues = 2;
    let mut ctrl = HostController::connect(&opts).expect("connect");
    let mut queues = ctrl.take_io_queues();
    queues[0].write(1, 0, &[0x5A; 4096]).expect("write before SIGTERM");
    // One more connection that never finished its ICReq.
    let _half_open = RawConn::open(port.addr);
    assert_eq!(
        node.terminate(Duration::from_secs(5)),
        Some(0),
        "exit status after SIGTERM; log:\n{}",
        node.log()
    );
    let mut buf = [0u8; 4096];
    assert!(queues[1].read(1, 0, &mut buf).is_err(), "the target is gone after SIGTERM");
}

#[test]
fn port_in_use_is_a_clear_error() {
    let holder = TcpListener::bind(loopback(0)).expect("bind");
    let addr = holder.local_addr().expect("addr");
    let dir = Scratch::new("port-in-use");
    let config = test_config(&[PortSpec { id: 1, addr, group1: "optimized" }], &[], None);
    let (_, err) = serve_fails(&dir, "port-in-use", &config);
    assert!(err.contains("ports[0].addr") && err.contains(&addr.to_string()), "names the port:\n{err}");
    assert!(err.to_lowercase().contains("in use"), "says the address is in use:\n{err}");
    drop(holder);
}
