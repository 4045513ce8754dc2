//! Claim: `tandem serve` survives sustained random verified I/O: 100,000
//! random 4 KiB reads and writes over 4 queues at queue depth 32, every read
//! checked against the last write to its block, finish with zero errors; and
//! the R2T path (writes larger than the in-capsule size) with header and data
//! digests on is just as clean.

use serde_json::Value;
use tandem_tests::{run_tandem_timeout, start_test_node, PortSpec, TEST_SUBNQN};

use std::time::Duration;

/// Runs `tandem perf` with `extra` flags and returns its JSON report.
fn perf(addr: &str, extra: &[&str]) -> Value {
    let mut args = vec!["perf", "--addr", addr, "--subnqn", TEST_SUBNQN, "--verify", "--json", "--quiet"];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) =
        run_tandem_timeout(&args, Duration::from_secs(120)).expect("tandem perf finished within 120 s");
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("perf printed no JSON report ({e}); exit {code}; stderr:\n{stderr}"));
    assert_eq!(code, 0, "tandem perf exit code; report:\n{stdout}\nstderr:\n{stderr}");
    report
}

fn check_clean(report: &Value, ios_min: u64) {
    let f = &report["nvme_tcp"];
    assert_eq!(report["errors"], 0, "errors in {report:#}");
    assert_eq!(f["errors"], 0, "command errors in {report:#}");
    assert_eq!(f["verify_errors"], 0, "verify mismatches in {report:#}");
    let ios = f["ios"].as_u64().expect("ios is a number");
    assert!(ios >= ios_min, "only {ios} I/Os ran, expected {ios_min}: {report:#}");
    assert!(
        f["reads"].as_u64().unwrap_or(0) > 0 && f["writes"].as_u64().unwrap_or(0) > 0,
        "a mix: {report:#}"
    );
    assert!(f["verified_blocks"].as_u64().unwrap_or(0) > 0, "reads were verified: {report:#}");
}

#[test]
fn hundred_thousand_random_verified_ios_have_zero_errors() {
    let port = PortSpec::fresh(1);
    let (_dir, mut node) = start_test_node("verified-io", &[port], &[], false);
    let addr = port.addr.to_string();
    // A 4 MiB region (1024 blocks) so that most reads hit a block written earlier.
    let report = perf(
        &addr,
        &["--rw", "randrw", "--bs", "4k", "--qd", "32", "--queues", "4", "--ios", "100000", "--size", "4m"],
    );
    check_clean(&report, 100_000);

    // 16 KiB writes go by R2T + H2CData (in-capsule data is 8 KiB at most).
    let report = perf(
        &addr,
        &[
            "--rw",
            "randrw",
            "--bs",
            "16k",
            "--qd",
            "16",
            "--queues",
            "2",
            "--ios",
            "10000",
            "--size",
            "2m",
            "--header-digest",
            "--data-digest",
            "--seed",
            "7",
        ],
    );
    check_clean(&report, 10_000);
    assert!(node.is_running(), "tandem serve is alive; log:\n{}", node.log());
}
