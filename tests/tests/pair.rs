//! Claims: every write is mirrored into the partner's second store before it
//! completes, in both directions at once (claims 4, 5, 6, 9, 13, 16, 19, 24,
//! 27, 30); the partner frees its copies once the owner's medium has the
//! writes (claims 1, 11, 31); a node killed while its partner lives loses
//! nothing and resyncs; the interconnect refuses strangers and bad frames
//! while the pair keeps serving. Issue 8, "Tests: multi-process".
//!
//! - `the_second_store_holds_exactly_the_owners_unreleased_records`: each
//!   node's medium fails every write, so what the hosts write stays staged;
//!   after N writes through a (ns 1) and M through b (ns 2), a reports N
//!   records staged and b's second store for ns 1 holds N, and the other way
//!   round M; the partner's group refuses I/O through each node's port (ANA
//!   inaccessible); once the media heal both drop to zero, and the data
//!   reads back through the owners and from the medium files.
//! - `a_node_killed_while_its_partner_lives_loses_nothing`: the crash
//!   checker's load on both namespaces, each through its owner; b is killed
//!   with SIGKILL mid-run: a's load goes on without an error (a reports its
//!   mirror degraded and counts writes acknowledged with one copy); b
//!   restarts, recovers its own ring and the pair resyncs. Then a is killed
//!   with records staged (its medium failing) and restarts: recovery replays
//!   them, and both checkers read back every acknowledged write.
//! - `the_partner_writes_what_the_owners_medium_failed`: a's medium fails
//!   every write; the writes through a still complete, b writes them to the
//!   medium from its second store and a releases them: a's staging empties
//!   while its medium still fails, the medium file holds every write and no
//!   host command failed (claims 2, 7, 14, 25, 31).
//! - `an_owner_whose_medium_stays_failed_stops_taking_writes`: with b away,
//!   a's medium failing past `pair.medium_failed_limit_ms` makes a report its
//!   group inaccessible (writes refused with the ANA status, nothing lost);
//!   once the medium works, a drains its staging and takes writes again.
//! - `write_zeroes_and_deallocate_are_mirrored_records`: with a's medium
//!   failing, a write, then Write Zeroes and Deallocate over parts of it, and
//!   a write inside the zeroed range: each is a record in a's ring and in b's
//!   second store (b holds exactly a's staged count), reads through a show
//!   zeroes where they belong; a is killed and restarted, recovery replays
//!   the records in order and the medium file ends with zeroes, not the
//!   older data.
//! - `the_example_pair_runs_as_printed`: `tandem config example --node a`
//!   and `--node b`, with only their four ports replaced by free ones, run
//!   from one working directory: both nodes come up in sync, a write through
//!   each owner is mirrored into the other (status) and reads back.
//! - `a_node_does_not_serve_its_partners_group`: making the partner's group
//!   optimized on a node is refused by both RPCs (naming the partner), and
//!   I/O to the partner's namespace through the node's port is answered
//!   with the ANA status, so two nodes never write one namespace.
//! - `strangers_and_bad_frames_on_the_interconnect_are_refused`: garbage,
//!   a handshake with the wrong key and, from a peer that knows the key, a
//!   corrupted frame, all at a's interconnect port while a host writes
//!   through b: each is refused and counted, b's mirror reconnects after the
//!   corrupted frame, and no write fails or completes degraded.

mod pair_support;
mod staging_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pair_support::{field, medium_path, Pair, NS_BLOCKS, PAIR_KEY};
use serde_json::json;
use staging_support::{first_difference, pattern, wait_until, BLOCK_BYTES};
use tandem_nvmf::host::HostError;
use tandem_nvmf::spec::NvmeStatus;
use tandem_perf::crashcheck::RunEnd;
use tandem_perf::{CrashChecker, Region};

fn read_file_blocks(path: &std::path::Path, lba: u64, blocks: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; blocks * BLOCK_BYTES];
    f.read_exact_at(&mut buf, lba * BLOCK_BYTES as u64).expect("read the medium file");
    buf
}

#[test]
fn the_second_store_holds_exactly_the_owners_unreleased_records() {
    // The media fail for the whole test: the owners must not give up on them.
    let pair = Pair::start_with("pair-exact", 600_000);
    let writes = [(1u32, 200u64), (2u32, 120u64)];
    for (nsid, _) in writes {
        pair.a.fault(nsid, "fail_writes_after", json!({ "count": 0 }));
        pair.b.fault(nsid, "fail_writes_after", json!({ "count": 0 }));
    }
    let (_ca, mut qa) = pair.a.connect(1, 32);
    let (_cb, mut qb) = pair.b.connect(1, 32);
    for lba in 0..writes[0].1 {
        qa[0].write(1, lba, &pattern(lba, 1, 1)).expect("a write through a, mirrored to b");
    }
    for lba in 0..writes[1].1 {
        qb[0].write(2, lba, &pattern(lba, 1, 2)).expect("a write through b, mirrored to a");
    }
    // The owner's group through the partner's port: inaccessible.
    match qa[0].write(2, 0, &pattern(0, 1, 9)) {
        Err(HostError::Status { status, .. }) => assert_eq!(status, NvmeStatus::ANA_INACCESSIBLE),
        other => panic!("a write to b's group through a's port: {other:?}"),
    }
    match qb[0].write(1, 0, &pattern(0, 1, 9)) {
        Err(HostError::Status { status, .. }) => assert_eq!(status, NvmeStatus::ANA_INACCESSIBLE),
        other => panic!("a write to a's group through b's port: {other:?}"),
    }
    for (owner, partner, (group, n)) in [(&pair.a, &pair.b, writes[0]), (&pair.b, &pair.a, writes[1])] {
        let mirror = owner.mirror(group);
        assert_eq!(field(&mirror, "records_staged"), n, "node {} staged: {mirror}", owner.name);
        assert_eq!(field(&mirror, "records_mirrored"), n, "node {} mirrored: {mirror}", owner.name);
        assert_eq!(field(&mirror, "degraded_acks"), 0, "node {}: {mirror}", owner.name);
        assert_eq!(mirror["state"], "in-sync", "node {}: {mirror}", owner.name);
        let store = partner.second_store(group);
        assert_eq!(field(&store, "records_held"), n, "node {}'s second store: {store}", partner.name);
        assert_eq!(store["connected"], true, "{store}");
        let group_entry = owner.group(group);
        assert_eq!(group_entry["owner"], owner.name);
        assert_eq!(group_entry["ana"][0]["state"], "optimized", "{group_entry}");
        assert_eq!(partner.group(group)["ana"][0]["state"], "inaccessible");
    }
    for nsid in [1, 2] {
        pair.a.fault(nsid, "heal", json!({}));
        pair.b.fault(nsid, "heal", json!({}));
    }
    for (owner, partner, (group, n)) in [(&pair.a, &pair.b, writes[0]), (&pair.b, &pair.a, writes[1])] {
        wait_until(Duration::from_secs(30), "the owner's medium to take every staged write", || {
            field(&owner.mirror(group), "records_staged") == 0
        });
        wait_until(Duration::from_secs(30), "the partner to free its copies", || {
            field(&partner.second_store(group), "records_held") == 0
        });
        let store = partner.second_store(group);
        assert!(field(&store, "released_seq") >= n, "the partner saw the release: {store}");
    }
    let mut buf = vec![0u8; BLOCK_BYTES];
    for (queue, nsid, n, generation) in
        [(&mut qa[0], 1u32, writes[0].1, 1u64), (&mut qb[0], 2, writes[1].1, 2)]
    {
        for lba in 0..n {
            queue.read(nsid, lba, &mut buf).expect("read through the owner");
            let want = pattern(lba, 1, generation);
            if let Some(d) = first_difference(lba, &buf, &want) {
                panic!("ns {nsid}: {d}");
            }
            let on_medium = read_file_blocks(&medium_path(&pair.scratch, nsid), lba, 1);
            if let Some(d) = first_difference(lba, &on_medium, &want) {
                panic!("ns {nsid} medium file: {d}");
            }
        }
    }
}

/// Runs a crash checker's load until `stop` is set or its node dies.
fn run_load(
    checker: &mut CrashChecker,
    queues: &mut [tandem_nvmf::host::IoQueue],
    stop: &AtomicBool,
) -> tandem_perf::crashcheck::RunSummary {
    checker.run(queues, stop, Some(Instant::now() + Duration::from_secs(60)))
}

#[test]
fn a_node_killed_while_its_partner_lives_loses_nothing() {
    let mut pair = Pair::start("pair-kill");
    let region = |nsid| Region { nsid, slba: 0, block_count: NS_BLOCKS, block_size: BLOCK_BYTES };
    let mut check_a = CrashChecker::new(region(1), 11, 0xa).expect("checker").with_queue_depth(16);
    let mut check_b = CrashChecker::new(region(2), 12, 0xb).expect("checker").with_queue_depth(16);

    // Round 1: load on both, b dies mid-run; a's load must not notice.
    {
        let (ca, mut qa) = pair.a.connect(1, 16);
        let (cb, mut qb) = pair.b.connect(1, 16);
        let stop_a = AtomicBool::new(false);
        let stop_b = AtomicBool::new(false);
        let b_pid = pair.b.node.pid();
        let a_node = &pair.a;
        let (sum_a, sum_b) = std::thread::scope(|s| {
            let ta = s.spawn(|| run_load(&mut check_a, &mut qa, &stop_a));
            let tb = s.spawn(|| run_load(&mut check_b, &mut qb, &stop_b));
            std::thread::sleep(Duration::from_millis(700));
            let _ = std::process::Command::new("kill").args(["-KILL", &b_pid.to_string()]).status();
            wait_until(Duration::from_secs(30), "a to count b away", || {
                a_node.mirror(1)["state"] == "degraded"
            });
            // a keeps acknowledging, now with one copy.
            let before = field(&a_node.mirror(1), "degraded_acks");
            wait_until(Duration::from_secs(30), "writes acknowledged degraded", || {
                field(&a_node.mirror(1), "degraded_acks") > before + 50
            });
            stop_a.store(true, Ordering::Relaxed);
            (ta.join().expect("load a"), tb.join().expect("load b"))
        });
        drop((ca, qa, cb, qb));
        assert_eq!(sum_a.ended, RunEnd::Stopped, "a's load ran to its stop: {sum_a:?}");
        assert_eq!(sum_a.writes_failed, 0, "{sum_a:?}");
        assert!(sum_a.writes_acked > 100, "{sum_a:?}");
        assert_eq!(sum_b.ended, RunEnd::QueuesFailed, "b's load ended with b: {sum_b:?}");
        assert!(sum_b.writes_acked > 0, "{sum_b:?}");
    }
    pair.b.node.kill9();
    pair.b.restart();
    pair.wait_in_sync();
    assert!(field(&pair.a.mirror(1), "store_formats") >= 1);

    // Round 2: a dies with records staged (its medium failing), b lives.
    {
        let (ca, mut qa) = pair.a.connect(1, 16);
        let stop = AtomicBool::new(false);
        let a_pid = pair.a.node.pid();
        let a_node = &pair.a;
        let b_node = &pair.b;
        let sum = std::thread::scope(|s| {
            let t = s.spawn(|| run_load(&mut check_a, &mut qa, &stop));
            std::thread::sleep(Duration::from_millis(300));
            a_node.fault(1, "fail_writes_after", json!({ "count": 0 }));
            wait_until(Duration::from_secs(30), "records staged on a and held by b", || {
                field(&b_node.second_store(1), "records_held") > 20
            });
            let _ = std::process::Command::new("kill").args(["-KILL", &a_pid.to_string()]).status();
            t.join().expect("load a")
        });
        drop((ca, qa));
        assert_eq!(sum.ended, RunEnd::QueuesFailed, "{sum:?}");
        assert_eq!(sum.writes_failed, 0, "{sum:?}");
    }
    // Writes the medium took just before the fault may still have been
    // released (and freed on b) before the kill; those after it stay.
    let held = field(&pair.b.second_store(1), "records_held");
    assert!(held > 0, "b holds a's staged records while a is down: {held}");
    pair.a.node.kill9();
    pair.a.restart();
    assert!(pair.a.node.log().contains("staging ring recovered"), "a recovered its ring");
    pair.wait_in_sync();
    wait_until(Duration::from_secs(30), "b to free a's replayed records", || {
        field(&pair.b.second_store(1), "records_held") == 0
    });

    for (node, checker) in [(&pair.a, &mut check_a), (&pair.b, &mut check_b)] {
        let (_c, mut q) = node.connect(1, 32);
        let report = checker
            .verify(&mut q[0])
            .unwrap_or_else(|e| panic!("node {}: {e}\nlog:\n{}", node.name, node.node.log()));
        let acked = checker.touched_lbas().filter(|&lba| checker.acked_seq(lba) != 0).count() as u64;
        assert!(acked > 0, "node {}: no acknowledged write to check", node.name);
        assert_eq!(report.acked + report.newer_unresolved, acked, "node {}: {report:?}", node.name);
    }
}

#[test]
fn strangers_and_bad_frames_on_the_interconnect_are_refused() {
    use tandem_target::ha::link::auth::{HandshakeConfig, LinkKey};
    use tandem_target::ha::link::frame::{encode_record_prefix, Frame, LinkRole};
    use tandem_target::pair::{store_id, BlockingLink};

    let pair = Pair::start("pair-refuse");
    let refused = |n: &pair_support::PairNode| field(&n.link()["incoming"], "refused");
    let (_cb, mut qb) = pair.b.connect(1, 16);
    let mut lba = 0u64;
    let mut write_some = |qb: &mut tandem_nvmf::host::IoQueue| {
        for _ in 0..50 {
            qb.write(2, lba % NS_BLOCKS, &pattern(lba % NS_BLOCKS, 1, 3)).expect("b's writes go on");
            lba += 1;
        }
    };

    // Garbage: the connection is closed, the pair goes on.
    let mut s = TcpStream::connect(pair.a.link).expect("connect to a's interconnect");
    s.write_all(&[0x5a; 256]).expect("send garbage");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut sink = [0u8; 4096];
    loop {
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    wait_until(Duration::from_secs(10), "garbage to be counted as refused", || refused(&pair.a) >= 1);
    write_some(&mut qb[0]);

    // The wrong key: the handshake fails on both sides.
    let config = |key: &str| HandshakeConfig {
        key: LinkKey::from_hex(key, "test").expect("key"),
        role: LinkRole::Initiator,
        node_id: 2,
        name: "b".into(),
        expected_peer_id: Some(1),
    };
    let wrong = "ff".repeat(32);
    let stream = TcpStream::connect(pair.a.link).expect("connect");
    let mut link = BlockingLink::new(stream, 4096, Duration::from_millis(50)).expect("link");
    assert!(link.handshake(config(&wrong)).is_err(), "a accepted the wrong key");
    wait_until(Duration::from_secs(10), "the wrong key to be counted", || refused(&pair.a) >= 2);
    write_some(&mut qb[0]);

    // A peer with the key attaches to b's ring and sends a corrupted record:
    // refused; b's own mirror (displaced by the attach) reconnects.
    let connects_before = field(&pair.b.link()["outgoing"], "connects");
    let stream = TcpStream::connect(pair.a.link).expect("connect");
    let mut link = BlockingLink::new(stream, 4096, Duration::from_millis(50)).expect("link");
    link.handshake(config(PAIR_KEY)).expect("the right key is accepted");
    // Attach and the bad record in one write: the record is judged before
    // b's own mirror, displaced, can take the store back.
    let attach = Frame::Attach { store_id: store_id(pair_support::PAIR_SUBNQN, 2) };
    let mut bytes = vec![0u8; attach.encoded_bytes() + 44 + 64];
    let at = tandem_target::ha::link::frame::encode(&attach, &mut bytes).expect("attach");
    encode_record_prefix(0, 1, 1, &[0u8; 64], &mut bytes[at..]).expect("prefix");
    bytes[at + 44..].fill(0xee);
    link.stream.write_all(&bytes).expect("send an Attach and a record with a garbage header");
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused(&pair.a) < 3 {
        assert!(Instant::now() < deadline, "the bad record was not refused; a's log:\n{}", pair.a.node.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    write_some(&mut qb[0]);
    wait_until(Duration::from_secs(30), "b's mirror to reconnect", || {
        field(&pair.b.link()["outgoing"], "connects") > connects_before
    });
    pair.wait_in_sync();
    write_some(&mut qb[0]);
    let mirror = pair.b.mirror(2);
    assert_eq!(field(&mirror, "degraded_acks"), 0, "no write completed with one copy: {mirror}");
    let log = pair.a.node.log();
    assert!(log.contains("partner connection refused"), "a logs each refusal");
}

#[test]
fn the_partner_writes_what_the_owners_medium_failed() {
    // a's medium fails for the whole test: a must not give up on it.
    let pair = Pair::start_with("pair-eio", 600_000);
    pair.a.fault(1, "fail_writes_after", json!({ "count": 0 }));
    let (_c, mut q) = pair.a.connect(1, 32);
    let writes = 150u64;
    for lba in 0..writes {
        q[0].write(1, lba, &pattern(lba, 1, 5)).expect("the host sees no error");
    }
    wait_until(Duration::from_secs(30), "b to write a's failed records and a to release them", || {
        field(&pair.a.mirror(1), "records_staged") == 0
    });
    let mirror = pair.a.mirror(1);
    assert!(field(&mirror, "partner_writes") >= writes, "{mirror}");
    assert!(field(&pair.b.second_store(1), "medium_writes") >= writes);
    let injected = pair.a.fault(1, "fail_writes_after", json!({ "count": 0 }));
    assert!(injected["injected"].as_u64().unwrap_or(0) > 0, "a's medium really failed: {injected}");
    for lba in 0..writes {
        let on_medium = read_file_blocks(&medium_path(&pair.scratch, 1), lba, 1);
        if let Some(d) = first_difference(lba, &on_medium, &pattern(lba, 1, 5)) {
            panic!("medium file: {d}");
        }
    }
    let mut buf = vec![0u8; BLOCK_BYTES];
    for lba in 0..writes {
        q[0].read(1, lba, &mut buf).expect("read through a");
        assert!(first_difference(lba, &buf, &pattern(lba, 1, 5)).is_none());
    }
    assert!(!pair.a.mirror(1)["medium_stopped"].as_bool().unwrap_or(true));
}

#[test]
fn an_owner_whose_medium_stays_failed_stops_taking_writes() {
    let mut pair = Pair::start("pair-stop");
    pair.b.node.kill9();
    wait_until(Duration::from_secs(30), "a to count b away", || pair.a.mirror(1)["state"] == "degraded");
    pair.a.fault(1, "fail_writes_after", json!({ "count": 0 }));
    let (_c, mut q) = pair.a.connect(1, 32);
    let mut acked = 0u64;
    let refused = loop {
        match q[0].write(1, acked % NS_BLOCKS, &pattern(acked % NS_BLOCKS, 1, 6)) {
            Ok(()) => acked += 1,
            Err(HostError::Status { status, .. }) => break status,
            Err(e) => panic!("write {acked}: {e}; a's log:\n{}", pair.a.node.log()),
        }
        assert!(acked < 1_000_000, "a never stopped taking writes");
    };
    assert_eq!(refused, NvmeStatus::ANA_INACCESSIBLE);
    assert!(acked > 0, "writes were taken before the limit");
    let mirror = pair.a.mirror(1);
    assert_eq!(mirror["medium_stopped"], true, "{mirror}");
    assert_eq!(pair.a.group(1)["ana"][0]["state"], "inaccessible");
    assert!(acked < NS_BLOCKS, "the ring fills before the namespace does");
    assert_eq!(field(&mirror, "records_staged"), acked, "every acknowledged write is staged: {mirror}");
    pair.a.fault(1, "heal", json!({}));
    wait_until(Duration::from_secs(30), "a to take writes again", || {
        pair.a.group(1)["ana"][0]["state"] == "optimized"
    });
    // It takes writes again at the first medium write that works; the rest
    // of the ring drains after.
    wait_until(Duration::from_secs(30), "a's ring to drain", || {
        field(&pair.a.mirror(1), "records_staged") == 0
    });
    q[0].write(1, 0, &pattern(0, 1, 7)).expect("writes are taken again");
    let mut buf = vec![0u8; BLOCK_BYTES];
    for lba in 1..acked {
        q[0].read(1, lba, &mut buf).expect("read");
        assert!(first_difference(lba, &buf, &pattern(lba, 1, 6)).is_none(), "lba {lba}");
    }
    pair.b.restart();
    pair.wait_in_sync();
}

fn deallocate(q: &mut tandem_nvmf::host::IoQueue, nsid: u32, ranges: &[(u64, u32)]) {
    q.submit(tandem_nvmf::host::IoCommand::Deallocate { nsid, ranges }, 77).expect("submit a Deallocate");
    let mut status = None;
    while status.is_none() {
        q.poll(Some(Duration::from_secs(30)), &mut |c| status = Some(c.status)).expect("poll");
    }
    assert_eq!(status, Some(NvmeStatus::SUCCESS), "Deallocate");
}

#[test]
fn write_zeroes_and_deallocate_are_mirrored_records() {
    let mut pair = Pair::start_with("pair-zeroes", 600_000);
    pair.a.fault(1, "fail_writes_after", json!({ "count": 0 }));
    // b must not write a's failed records for it: its path fails too.
    pair.b.fault(1, "fail_writes_after", json!({ "count": 0 }));
    let (c, mut q) = pair.a.connect(1, 32);
    // The model of the 32 blocks from LBA 0, generation per block (0 = zeroes).
    let mut model = [0u64; 32];
    q[0].write(1, 0, &pattern(0, 32, 1)).expect("a 128 KiB write");
    model.fill(1);
    q[0].write_zeroes(1, 4, 8).expect("Write Zeroes of 4..12");
    model[4..12].fill(0);
    deallocate(&mut q[0], 1, &[(16, 4), (24, 2)]);
    model[16..20].fill(0);
    model[24..26].fill(0);
    q[0].write(1, 6, &pattern(6, 2, 2)).expect("a write inside the zeroed range");
    model[6..8].fill(2);
    let staged = 1 + 1 + 2 + 1;
    let mirror = pair.a.mirror(1);
    assert_eq!(field(&mirror, "records_staged"), staged, "each is a record of its own: {mirror}");
    assert_eq!(field(&pair.b.second_store(1), "records_held"), staged, "b holds every one");
    let expect = |lba: usize| {
        if model[lba] == 0 {
            vec![0u8; BLOCK_BYTES]
        } else {
            pattern(lba as u64, 1, model[lba])
        }
    };
    let mut buf = vec![0u8; 32 * BLOCK_BYTES];
    q[0].read(1, 0, &mut buf).expect("read through a");
    for lba in 0..32 {
        let got = &buf[lba * BLOCK_BYTES..(lba + 1) * BLOCK_BYTES];
        assert!(first_difference(lba as u64, got, &expect(lba)).is_none(), "read of lba {lba}: {model:?}");
    }
    drop((c, q));
    // a dies with all five records staged; b still holds them too.
    pair.a.node.kill9();
    pair.a.restart();
    assert!(pair.a.node.log().contains("staging ring recovered"));
    let on_medium = read_file_blocks(&medium_path(&pair.scratch, 1), 0, 32);
    for lba in 0..32 {
        let got = &on_medium[lba * BLOCK_BYTES..(lba + 1) * BLOCK_BYTES];
        assert!(first_difference(lba as u64, got, &expect(lba)).is_none(), "medium lba {lba} after replay");
    }
    pair.wait_in_sync();
    wait_until(Duration::from_secs(30), "b to free the replayed records", || {
        field(&pair.b.second_store(1), "records_held") == 0
    });
}

#[test]
fn the_example_pair_runs_as_printed() {
    use tandem_nvmf::host::{ConnectOptions, HostController};
    use tandem_tests::{free_port, loopback, run_tandem, NodeProcess, Scratch};
    let dir = Scratch::new("example-pair");
    // Only the ports change (the printed ones may be in use here); the rings
    // go to /dev/shm/tandem-<name>-<hash of the data_dir>, unique to this scratch dir.
    let ports: Vec<(String, String)> = ["4420", "4421", "4430", "4431"]
        .iter()
        .map(|p| (format!("127.0.0.1:{p}"), loopback(free_port()).to_string()))
        .collect();
    let mut nodes = Vec::new();
    let mut rings = Vec::new();
    for (i, name) in ["a", "b"].iter().enumerate() {
        let (code, mut text, err) = run_tandem(&["config", "example", "--node", name]);
        assert_eq!(code, 0, "tandem config example --node {name}: {err}");
        for (from, to) in &ports {
            assert!(text.contains(from.as_str()), "the example names {from}");
            text = text.replace(from.as_str(), to);
        }
        let parsed = tandem_target::config::Config::parse(&text).expect("the example parses");
        let data_dir = dir.path.join(parsed.node.data_dir.as_deref().expect("a data_dir"));
        rings.push(tandem_target::config::default_shm_staging_dir(name, Some(&data_dir)).expect("ring dir"));
        let host: std::net::SocketAddr = ports[i].1.parse().expect("addr");
        nodes.push(NodeProcess::start_in(&dir.path, name, &text, &[host]));
    }
    let socket = |name: &str| dir.path.join(format!("tandem-pair/{name}.sock"));
    let status = |name: &str| {
        tandem_target::rpc::call(&socket(name), "tandem_get_status", json!({}))
            .unwrap_or(serde_json::Value::Null)
    };
    let mirror_state = |name: &str, group: u64| {
        status(name)["pair"]["groups"]
            .as_array()
            .and_then(|g| g.iter().find(|e| e["group"].as_u64() == Some(group)).cloned())
            .map(|g| g["mirror"].clone())
            .unwrap_or_default()
    };
    for (name, group) in [("a", 1), ("b", 2)] {
        wait_until(Duration::from_secs(30), "the example pair to be in sync", || {
            mirror_state(name, group)["state"] == "in-sync"
        });
    }
    for (i, (name, group)) in [("a", 1u64), ("b", 2u64)].into_iter().enumerate() {
        let opts = ConnectOptions::new(&ports[i].1, "nqn.2026-11.io.tandem:pair");
        let mut ctrl = HostController::connect(&opts).expect("connect to the example pair");
        let mut q = ctrl.take_io_queues().pop().expect("an I/O queue");
        let data = pattern(7, 4, 9);
        q.write(group as u32, 7, &data).expect("a write through the owner");
        let mut back = vec![0u8; data.len()];
        q.read(group as u32, 7, &mut back).expect("read");
        assert!(back == data, "node {name}: read-back equals the write");
        let mirror = mirror_state(name, group);
        assert!(field(&mirror, "acked_through") >= 1 && field(&mirror, "mirrored_through") >= 1, "{mirror}");
        assert_eq!(field(&mirror, "degraded_acks"), 0, "{mirror}");
    }
    for node in nodes.iter_mut() {
        assert_eq!(node.terminate(Duration::from_secs(20)), Some(0), "clean exit; log:\n{}", node.log());
    }
    for ring in rings {
        let _ = std::fs::remove_dir_all(ring);
    }
}

#[test]
fn a_node_does_not_serve_its_partners_group() {
    let pair = Pair::start("pair-guard");
    for (params, method) in [
        (json!({ "group": 2, "state": "optimized" }), "tandem_set_ana_state"),
        (
            json!({
                "nqn": pair_support::PAIR_SUBNQN,
                "listen_address": { "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": pair.a.addr.port().to_string() },
                "ana_state": "non_optimized",
                "anagrpid": 2,
            }),
            "nvmf_subsystem_listener_set_ana_state",
        ),
    ] {
        let err = tandem_target::rpc::call(&pair.a.rpc_socket, method, params)
            .expect_err("making the partner's group accessible is refused");
        let text = err.to_string();
        assert!(text.contains("belongs to the partner (b)"), "{method}: {text}");
    }
    assert_eq!(pair.a.group(2)["ana"][0]["state"], "inaccessible", "nothing changed");
    // Making it inaccessible (what it is) is fine.
    pair.a.rpc("tandem_set_ana_state", json!({ "group": 2, "state": "inaccessible" }));
    let (_c, mut q) = pair.a.connect(1, 8);
    let mut buf = vec![0u8; BLOCK_BYTES];
    for result in [q[0].write(2, 0, &pattern(0, 1, 1)), q[0].read(2, 0, &mut buf)] {
        match result {
            Err(HostError::Status { status, .. }) => assert_eq!(status, NvmeStatus::ANA_INACCESSIBLE),
            other => panic!("I/O to the partner's namespace through a: {other:?}"),
        }
    }
}
