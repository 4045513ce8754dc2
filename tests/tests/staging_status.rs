//! `tandem rpc status` shows what a staged namespace's log holds: records
//! pile up while the medium fails, the failures are counted, and the ring
//! empties once the medium heals.

mod staging_support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use staging_support::{Domain, NsSpec, StagedNode};

fn staging_entry(node: &StagedNode) -> Value {
    let status = node.rpc("status", json!({}));
    let list = status["staging"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "one staged namespace: {status}");
    list[0].clone()
}

#[test]
fn status_reports_staged_records_and_medium_failures() {
    let ns = NsSpec { nsid: 1, block_count: 4096, write_through: false, fault_injection: true };
    let node = StagedNode::start("status", Domain::Shm, "8MiB", &[ns]);
    let entry = staging_entry(&node);
    assert_eq!(entry["domain"], "shm");
    assert_eq!(entry["survives_power_loss"], false);
    assert_eq!(entry["staged_records"], 0);

    node.fail_all_medium_writes(1);
    let (_controller, mut queues) = node.connect(1, 8);
    let q = &mut queues[0];
    let block = vec![0x5au8; 4096];
    for lba in 0..16u64 {
        q.write(1, lba * 3, &block).expect("staged write acknowledged while the medium fails");
    }
    // The status is published by the reactor on its next pass.
    let deadline = Instant::now() + Duration::from_secs(10);
    let entry = loop {
        let e = staging_entry(&node);
        if e["staged_records"].as_u64() == Some(16) && e["medium_failures"].as_u64().unwrap_or(0) > 0 {
            break e;
        }
        assert!(Instant::now() < deadline, "status never showed 16 staged records and failures: {e}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(entry["staged_bytes"].as_u64().unwrap_or(0) >= 16 * 4096, "{entry}");

    node.heal(1);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let e = staging_entry(&node);
        if e["staged_records"].as_u64() == Some(0) {
            assert!(e["released_seq"].as_u64().unwrap_or(0) >= 16, "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "the ring never emptied after the heal: {e}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
