//! Claim: with `[node] metrics` set, `GET /metrics` serves Prometheus
//! metrics whose values follow the node: per-namespace write and read
//! counts, bytes and latency histogram move by exactly the I/O done;
//! connected controllers count the live host; the staging ring's flushed
//! records reach the writes staged; the ANA gauge follows an RPC change;
//! a malformed PDU counts as a protocol error of its kind. Other paths and
//! methods get 404 / 405, garbage gets 400.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use tandem_nvmf::host::{ConnectOptions, HostController};
use tandem_tests::{free_port, loopback, test_config, NodeProcess, PortSpec, Scratch, TEST_SUBNQN};

/// One sample of the exposition: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn http(addr: SocketAddr, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (head.to_string(), body.to_string())
}

fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let (head, body) = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Content-Type: application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF");
    body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(parse_sample).collect()
}

fn parse_sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample line {line:?}"));
    let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line:?}"));
    let (name, labels) = match series.split_once('{') {
        None => (series.to_string(), BTreeMap::new()),
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("labels of {line:?}"));
            let labels = inner
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once("=\"").unwrap_or_else(|| panic!("label {kv:?} in {line:?}"));
                    (k.to_string(), v.trim_end_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels)
        }
    };
    (name, labels, value)
}

/// The value of the one sample named `name` with (at least) `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "exactly one {name} {labels:?}: {found:?}");
    found[0].2
}

fn io(op: &'static str) -> [(&'static str, &'static str); 3] {
    [("subsystem", TEST_SUBNQN), ("nsid", "1"), ("op", op)]
}

fn wait_for(addr: SocketAddr, what: &str, ok: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = scrape(addr);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} never showed in the metrics");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn metrics_follow_io_ana_and_protocol_errors() {
    const WRITES: u64 = 24;
    const READS: u64 = 10;
    let dir = Scratch::new("metrics");
    let port = PortSpec::fresh(1);
    let metrics = loopback(free_port());
    let socket = dir.path.join("rpc.sock");
    let config = test_config(&[port], &[], Some(&socket)).replacen(
        "poll = \"adaptive\"\n",
        &format!("poll = \"adaptive\"\nmetrics = \"{metrics}\"\n"),
        1,
    ) + &format!(
        "\n[staging]\ndomain = \"file\"\ndir = \"{}\"\nring_size = \"4MiB\"\n",
        dir.path.display()
    );
    let node = NodeProcess::start(&dir.path, "metrics", &config, &[port.addr, metrics]);

    let before = scrape(metrics);
    assert_eq!(value(&before, "tandem_namespace_io_completed_total", &io("write")), 0.0);
    assert_eq!(value(&before, "tandem_controllers_connected", &[("subsystem", TEST_SUBNQN)]), 0.0);
    assert_eq!(
        value(&before, "tandem_ana_state", &[("port", "1"), ("group", "1"), ("state", "optimized")]),
        1.0
    );

    let mut host = HostController::connect(&ConnectOptions::new(&port.addr.to_string(), TEST_SUBNQN))
        .unwrap_or_else(|e| panic!("connect: {e}; log:\n{}", node.log()));
    let mut queues = host.take_io_queues();
    let q = &mut queues[0];
    let block = vec![0xA5u8; 4096];
    for lba in 0..WRITES {
        q.write(1, lba, &block).expect("write");
    }
    let mut buf = vec![0u8; 4096];
    for lba in 0..READS {
        q.read(1, lba, &mut buf).expect("read");
    }
    // A completion is counted just after its response has left the socket,
    // so the host may see the last one a moment before it is counted (a
    // reactor preempted between its write and its count): wait for the
    // counts to reach what was done, then check them all.
    let done = |m: &[Sample]| {
        value(m, "tandem_namespace_io_completed_total", &io("write"))
            - value(&before, "tandem_namespace_io_completed_total", &io("write"))
            >= WRITES as f64
            && value(m, "tandem_namespace_io_completed_total", &io("read"))
                - value(&before, "tandem_namespace_io_completed_total", &io("read"))
                >= READS as f64
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = scrape(metrics);
    while !done(&after) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        after = scrape(metrics);
    }
    let delta = |name: &str, op| value(&after, name, &io(op)) - value(&before, name, &io(op));
    assert_eq!(delta("tandem_namespace_io_completed_total", "write"), WRITES as f64);
    assert_eq!(delta("tandem_namespace_io_bytes_total", "write"), (WRITES * 4096) as f64);
    assert_eq!(delta("tandem_namespace_io_latency_seconds_count", "write"), WRITES as f64);
    assert_eq!(delta("tandem_namespace_io_completed_total", "read"), READS as f64);
    assert_eq!(delta("tandem_namespace_io_bytes_total", "read"), (READS * 4096) as f64);
    assert_eq!(delta("tandem_namespace_io_latency_seconds_count", "read"), READS as f64);
    assert_eq!(delta("tandem_namespace_io_errors_total", "write"), 0.0);
    let mut inf = io("write").to_vec();
    inf.push(("le", "+Inf"));
    assert_eq!(value(&after, "tandem_namespace_io_latency_seconds_bucket", &inf), WRITES as f64);
    assert!(delta("tandem_namespace_io_latency_seconds_sum", "write") > 0.0);
    assert_eq!(value(&after, "tandem_controllers_connected", &[("subsystem", TEST_SUBNQN)]), 1.0);

    // The flusher writes every staged record to the medium.
    let ns = [("subsystem", TEST_SUBNQN), ("nsid", "1")];
    let flushed = wait_for(metrics, "all writes flushed", |s| {
        value(s, "tandem_staging_flushed_records_total", &ns) == WRITES as f64
    });
    assert_eq!(value(&flushed, "tandem_staging_flushed_bytes_total", &ns), (WRITES * 4096) as f64);
    assert_eq!(value(&flushed, "tandem_staging_records_staged", &ns), 0.0);
    assert!(value(&flushed, "tandem_staging_ring_capacity_bytes", &ns) > 0.0);

    // ANA follows the control socket.
    tandem_target::rpc::call(
        &socket,
        "tandem_set_ana_state",
        json!({"port": 1, "group": 1, "state": "inaccessible"}),
    )
    .expect("ANA change");
    let s = scrape(metrics);
    let ana = |state| value(&s, "tandem_ana_state", &[("port", "1"), ("group", "1"), ("state", state)]);
    assert_eq!((ana("optimized"), ana("inaccessible")), (0.0, 1.0));

    // A PDU of unknown type: a C2HTermReq with FES 01h, counted by kind.
    let kind = [("kind", "invalid_header_field")];
    let errors_before = value(&s, "tandem_protocol_errors_total", &kind);
    let mut bad = TcpStream::connect(port.addr).expect("connect");
    bad.write_all(&[0x7f, 0, 8, 0, 8, 0, 0, 0]).expect("send a bad PDU");
    wait_for(metrics, "the protocol error", |s| {
        value(s, "tandem_protocol_errors_total", &kind) == errors_before + 1.0
    });

    // Not a scrape.
    assert!(http(metrics, "GET /other HTTP/1.1\r\n\r\n").0.starts_with("HTTP/1.1 404"));
    assert!(http(metrics, "POST /metrics HTTP/1.1\r\n\r\n").0.starts_with("HTTP/1.1 405"));
    assert!(http(metrics, "hello\r\n\r\n").0.starts_with("HTTP/1.1 400"));
    drop(queues);
    drop(host);
    drop(node);
}
