//! Claim: a write acknowledged by a node with a staging log survives the death
//! of the node's process (claims 5, 13, 19, 27, 30 on one node: the ack comes
//! only when the record is durable in the first store, and recovery replays
//! the record to the medium before the node serves again).
//!
//! - `crash_loop_shm` / `crash_loop_file`: `tandem serve` with staging in
//!   front of a file medium runs the crash checker's load on two queues and is
//!   killed with SIGKILL at a seeded random moment, restarted on the same
//!   config and verified, round after round; the checker keeps its state, so
//!   an acknowledged write lost or reordered in any round fails the test.
//!   `TANDEM_CRASH_ROUNDS=N` sets the rounds of the shm loop (default 20),
//!   `TANDEM_CRASH_SEED=S` the seed.
//! - `sigterm_with_staged_writes_exits_cleanly_and_keeps_them`: a node whose
//!   medium fails every write (so the writes stay staged) exits 0 on SIGTERM,
//!   and after a restart the writes are on the medium and readable.

mod staging_support;

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use staging_support::{first_difference, pattern, Domain, NsSpec, StagedNode, BLOCK_BYTES};
use tandem_perf::crashcheck::RunEnd;
use tandem_perf::prng::Rng;
use tandem_perf::{CrashChecker, Region};

/// Blocks of the medium; the checker writes all of them at random.
const MEDIUM_BLOCKS: u64 = 4096;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Runs `rounds` rounds of write / kill -9 / restart / verify; returns the
/// records replayed by all recoveries.
fn crash_loop(name: &str, domain: Domain, rounds: u64, seed: u64) -> u64 {
    let mut n = StagedNode::start(name, domain, "16MiB", &[NsSpec::staged(1, MEDIUM_BLOCKS)]);
    let region = Region { nsid: 1, slba: 0, block_count: MEDIUM_BLOCKS, block_size: BLOCK_BYTES };
    let mut checker = CrashChecker::new(region, 7, seed).expect("checker").with_queue_depth(16);
    let mut rng = Rng::new(seed ^ 0x6b69_6c6c);
    let (mut acked, mut abandoned) = (0u64, 0u64);
    for round in 0..rounds {
        let (controller, mut queues) = n.connect(2, 16);
        // Long enough for a few hundred writes, short enough for many rounds.
        let kill_after = Duration::from_millis(20 + rng.below(480));
        let stop = AtomicBool::new(false);
        let node = &n.node;
        let summary = std::thread::scope(|s| {
            s.spawn(move || {
                std::thread::sleep(kill_after);
                node.signal("KILL");
            });
            // The deadline only bounds a hung run: the kill ends it.
            checker.run(&mut queues, &stop, Some(Instant::now() + Duration::from_secs(60)))
        });
        drop(queues);
        drop(controller);
        n.node.kill9(); // reap the killed process
        assert_eq!(
            summary.ended,
            RunEnd::QueuesFailed,
            "round {round}: the run should end with the node's death: {summary:?}"
        );
        assert_eq!(summary.writes_failed, 0, "round {round}: a write failed with a status: {summary:?}");
        acked += summary.writes_acked;
        abandoned += summary.writes_abandoned;

        n.restart();
        let (_controller, mut queues) = n.connect(1, 32);
        match checker.verify(&mut queues[0]) {
            Ok(report) => {
                assert!(report.lbas_checked > 0 || acked == 0, "round {round}: nothing checked");
            }
            Err(e) => panic!(
                "round {round} (seed {seed}, killed after {kill_after:?}): {e}\nnode log:\n{}",
                n.node.log()
            ),
        }
    }
    let recoveries = n.recoveries();
    assert_eq!(recoveries.len() as u64, rounds, "one recovery line per restart: {recoveries:?}");
    let replayed: u64 = recoveries.iter().map(|r| r.replayed_records).sum();
    println!(
        "{name}: {rounds} rounds, seed {seed}: {acked} writes acknowledged, {abandoned} in flight at a kill, \
         {replayed} staged records replayed by recovery, every acknowledged write verified"
    );
    replayed
}

#[test]
fn crash_loop_shm() {
    let rounds = env_u64("TANDEM_CRASH_ROUNDS", 20);
    let seed = env_u64("TANDEM_CRASH_SEED", 0x5eed_0001);
    crash_loop("crash-shm", Domain::Shm, rounds, seed);
}

#[test]
fn crash_loop_file() {
    let rounds = env_u64("TANDEM_CRASH_ROUNDS", 20).min(5);
    let seed = env_u64("TANDEM_CRASH_SEED", 0x5eed_0002);
    crash_loop("crash-file", Domain::File, rounds, seed);
}

#[test]
fn sigterm_with_staged_writes_exits_cleanly_and_keeps_them() {
    let mut n = StagedNode::start("sigterm", Domain::Shm, "4MiB", &[NsSpec::staged(1, 1024).with_faults()]);
    n.fail_all_medium_writes(1);
    let (controller, mut queues) = n.connect(1, 32);
    let q = &mut queues[0];
    // Eight writes of one to eight blocks: eight records held in the ring.
    let writes: Vec<(u64, usize)> = (0..8u64).map(|i| (i * 16, i as usize + 1)).collect();
    for &(lba, blocks) in &writes {
        q.write(1, lba, &pattern(lba, blocks, 1)).expect("staged write acknowledged");
    }
    n.wait_for_log("medium write failed", Duration::from_secs(10));
    for &(lba, blocks) in &writes {
        assert_ne!(
            n.read_medium(1, lba, blocks),
            pattern(lba, blocks, 1),
            "LBA {lba} reached a failing medium"
        );
    }
    drop(queues);
    drop(controller);

    let code = n.node.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "exit status after SIGTERM; log:\n{}", n.node.log());

    n.restart();
    let recoveries = n.recoveries();
    assert_eq!(recoveries.len(), 1, "{recoveries:?}");
    assert_eq!(
        recoveries[0].replayed_records,
        writes.len() as u64,
        "every staged write replayed after the restart; log:\n{}",
        n.node.log()
    );
    // Replay happens before the port opens: the medium holds the data already.
    for &(lba, blocks) in &writes {
        let want = pattern(lba, blocks, 1);
        if let Some(d) = first_difference(lba, &n.read_medium(1, lba, blocks), &want) {
            panic!("medium after restart: {d}");
        }
    }
    let (_controller, mut queues) = n.connect(1, 32);
    for &(lba, blocks) in &writes {
        let mut got = vec![0u8; blocks * BLOCK_BYTES];
        queues[0].read(1, lba, &mut got).expect("read after restart");
        if let Some(d) = first_difference(lba, &got, &pattern(lba, blocks, 1)) {
            panic!("read after restart: {d}");
        }
    }
}
