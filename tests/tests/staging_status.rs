//! `tandem rpc status` (`tandem_get_status`) shows what a staged namespace's log holds: records
//! pile up while the medium fails, the failures are counted, and the ring
//! empties once the medium heals.

mod staging_support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use staging_support::{Domain, NsSpec, StagedNode};

fn staging_entry(node: &StagedNode) -> Value {
    let status = node.rpc("tandem_get_status", json!({}));
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

/// In-capsule writes (4 KiB, carried in the command capsule) that find the
/// ring full wait in the socket — they are neither failed nor dropped — and
/// complete once the medium comes back and the flusher frees the ring.
#[test]
fn in_capsule_writes_wait_for_ring_space_while_the_medium_is_down() {
    use staging_support::pattern;
    use tandem_nvmf::host::IoCommand;
    use tandem_nvmf::spec::NvmeStatus;

    // 1 MiB ring: a 4 KiB write takes 8 KiB of ring, so about 120 fit.
    const WRITES: usize = 400;
    let ns = NsSpec { nsid: 1, block_count: 4096, write_through: false, fault_injection: true };
    let node = StagedNode::start("incapsule-full", Domain::Shm, "1MiB", &[ns]);
    node.fail_all_medium_writes(1);
    let (_controller, mut queues) = node.connect(1, 32);
    let q = &mut queues[0];
    let data: Vec<Vec<u8>> = (0..WRITES).map(|i| pattern(i as u64, 1, 7)).collect();
    let (mut next, mut done) = (0usize, 0usize);
    let mut failed = Vec::new();
    let mut healed_at = None;
    let limit = Instant::now() + Duration::from_secs(60);
    while done < WRITES {
        while next < WRITES && q.in_flight() < q.queue_depth() {
            let cmd = IoCommand::Write { nsid: 1, slba: next as u64, data: &data[next], fua: false };
            q.submit(cmd, next as u64).expect("submit");
            next += 1;
        }
        q.poll(Some(Duration::from_millis(10)), &mut |c| {
            done += 1;
            if c.status != NvmeStatus::SUCCESS {
                failed.push((c.tag, c.status));
            }
        })
        .expect("poll");
        if healed_at.is_none() {
            let staged = staging_entry(&node)["staged_records"].as_u64().unwrap_or(0);
            eprintln!("staged at SIGTERM: {staged}");
            // The ring is full and the writes beyond it are held, not failed.
            if staged > 100 && done < WRITES && q.in_flight() > 0 {
                std::thread::sleep(Duration::from_millis(300));
                assert!(done < WRITES, "every write completed with the medium down and the ring full");
                node.heal(1);
                healed_at = Some(done);
            }
        }
        assert!(Instant::now() < limit, "{done} of {WRITES} writes done in 60 s");
    }
    assert!(failed.is_empty(), "writes failed instead of waiting: {failed:?}");
    assert!(
        healed_at.is_some_and(|d| d < WRITES),
        "the ring never filled: the test did not test back-pressure"
    );
    let mut buf = vec![0u8; 4096];
    for (lba, want) in data.iter().enumerate() {
        q.read(1, lba as u64, &mut buf).expect("read back");
        assert!(buf == *want, "lba {lba} reads back wrong data");
    }
}

/// A clean stop (SIGTERM) drains the staging log: the medium alone holds
/// every acknowledged write when the process exits, so a reboot that clears
/// /dev/shm after a clean stop loses nothing, and the next start has nothing
/// to replay.
#[test]
fn sigterm_drains_staged_writes_to_the_medium() {
    use staging_support::{first_difference, pattern};

    let ns = NsSpec { nsid: 1, block_count: 1024, write_through: false, fault_injection: true };
    let mut node = StagedNode::start("drain-on-stop", Domain::Shm, "4MiB", &[ns]);
    node.fail_all_medium_writes(1);
    let writes: Vec<(u64, usize)> = (0..8u64).map(|i| (i * 16, i as usize + 1)).collect();
    {
        let (_controller, mut queues) = node.connect(1, 8);
        for &(lba, blocks) in &writes {
            queues[0].write(1, lba, &pattern(lba, blocks, 3)).expect("staged write acknowledged");
        }
    }
    node.wait_for_log("medium write failed", Duration::from_secs(10));
    // The flusher retries a failed write with a back-off that grows to a
    // second: after a few seconds of failures, a heal followed at once by
    // SIGTERM almost always finds the records still staged, and the shutdown
    // has to write them (the log line says how many it drained).
    std::thread::sleep(Duration::from_millis(2500));
    node.heal(1);
    let code = node.node.terminate(Duration::from_secs(60));
    assert_eq!(code, Some(0), "exit status after SIGTERM; log:\n{}", node.node.log());
    let log = node.node.log();
    let drained = log.lines().find(|l| l.contains("staged writes drained to the medium"));
    assert!(drained.is_some(), "{log}");
    eprintln!("{}", drained.unwrap_or_default());
    // A drain that had work shows its progress, ending with every record.
    let clean = staging_support::strip_ansi(&log);
    let records = clean
        .lines()
        .find(|l| l.contains("staged writes drained to the medium"))
        .and_then(|l| l.split(" records=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no records= in the drain line:\n{clean}"));
    if records > 0 {
        let last = format!("ns 1: draining staged writes to the medium: {records}/{records} records (100%)");
        assert!(clean.contains(&last), "no final progress line {last:?}:\n{clean}");
    }
    for &(lba, blocks) in &writes {
        if let Some(d) = first_difference(lba, &node.read_medium(1, lba, blocks), &pattern(lba, blocks, 3)) {
            panic!("medium after a clean stop: {d}");
        }
    }
    node.restart();
    let recoveries = node.recoveries();
    assert!(recoveries.iter().all(|r| r.replayed_records == 0), "nothing left to replay: {recoveries:?}");
}
