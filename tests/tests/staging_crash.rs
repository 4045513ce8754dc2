//! Claim: a write acknowledged by a node with a staging log survives the death
//! of the node's process (claims 5, 13, 19, 27, 30 on one node: the ack comes
//! only when the record is durable in the first store, and recovery replays
//! the record to the medium before the node serves again).
//!
//! - `crash_loop_shm` / `crash_loop_file`: `tandem serve` with staging in
//!   front of a file medium runs the crash checker's load on two queues and is
//!   killed with SIGKILL at a seeded random moment (once more than a host's
//!   worth of writes is committed, so every round has acknowledged writes),
//!   restarted on the same config and verified, round after round; the
//!   checker keeps its state, so an acknowledged write lost or reordered in
//!   any round fails the test. In even rounds the medium starts failing
//!   writes (fault RPC) just before the kill and the kill waits for the first
//!   failure, so records are staged when the node dies and that round fails
//!   unless recovery replays some; a run with no replay at all fails too.
//!   `TANDEM_CRASH_ROUNDS=N` sets the rounds of the shm loop (default 20),
//!   `TANDEM_CRASH_SEED=S` the seed.
//! - `sigterm_with_staged_writes_exits_cleanly_and_keeps_them`: a node whose
//!   medium fails every write (so the writes stay staged) exits 0 on SIGTERM,
//!   and after a restart the writes are on the medium and readable.

mod staging_support;

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde_json::json;
use staging_support::{first_difference, pattern, wait_until, Domain, NsSpec, StagedNode, BLOCK_BYTES};
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

/// Records the node must have committed in a round before it is killed: more
/// than the host holds in flight (two queues of 16 single-block writes), so
/// the host has received at least one acknowledgement whatever the scheduling.
const COMMITTED_BEFORE_KILL: u64 = 64;

/// Kills the node when dropped, so a killer that gives up (panics) still ends
/// the checker's run instead of leaving it to its one-minute deadline.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").arg("-KILL").arg(self.0.to_string()).status();
    }
}

/// How a round's kill is placed.
#[derive(Clone, Copy, Debug)]
enum KillPlan {
    /// At a seeded random moment of the load (the flusher may have drained
    /// the ring or not).
    Anywhere { after: Duration },
    /// At a seeded random moment, then the medium starts failing writes
    /// after `medium_writes` more, and the kill waits for the first failure:
    /// the records of the failed write can never leave the ring, so the kill
    /// lands with records staged and recovery must replay them.
    WithRecordsStaged { after: Duration, medium_writes: u64 },
}

/// Waits for the round's load to be under way, places the kill as `plan`
/// says, and kills the node (also when a wait gives up).
fn kill_node(n: &StagedNode, plan: KillPlan) {
    let _kill = KillOnDrop(n.node.pid());
    wait_until(Duration::from_secs(60), "the round's first writes to be committed", || {
        n.staging_counter(1, "records_committed") >= COMMITTED_BEFORE_KILL
    });
    match plan {
        KillPlan::Anywhere { after } => std::thread::sleep(after),
        KillPlan::WithRecordsStaged { after, medium_writes } => {
            std::thread::sleep(after);
            n.fault(1, "fail_writes_after", json!({ "count": medium_writes }));
            wait_until(Duration::from_secs(60), "a medium write to fail", || {
                n.staging_counter(1, "medium_failures") > 0
            });
        }
    }
}

/// What a crash loop saw.
#[derive(Clone, Copy, Debug)]
struct CrashLoopOutcome {
    /// Rounds whose recovery replayed at least one record.
    rounds_replayed: u64,
    /// Records replayed by all recoveries.
    records_replayed: u64,
}

/// Runs `rounds` rounds of write / kill -9 / restart / verify. Even rounds
/// kill with records staged (and fail unless recovery replays some), odd
/// rounds kill anywhere.
fn crash_loop(name: &str, domain: Domain, rounds: u64, seed: u64) -> CrashLoopOutcome {
    let mut n = StagedNode::start(name, domain, "16MiB", &[NsSpec::staged(1, MEDIUM_BLOCKS).with_faults()]);
    let region = Region { nsid: 1, slba: 0, block_count: MEDIUM_BLOCKS, block_size: BLOCK_BYTES };
    let mut checker = CrashChecker::new(region, 7, seed).expect("checker").with_queue_depth(16);
    let mut rng = Rng::new(seed ^ 0x6b69_6c6c);
    let (mut acked, mut abandoned) = (0u64, 0u64);
    let mut outcome = CrashLoopOutcome { rounds_replayed: 0, records_replayed: 0 };
    for round in 0..rounds {
        let (controller, mut queues) = n.connect(2, 16);
        let after = Duration::from_millis(rng.below(300));
        let plan = if round % 2 == 0 {
            KillPlan::WithRecordsStaged { after, medium_writes: rng.below(64) }
        } else {
            KillPlan::Anywhere { after }
        };
        let stop = AtomicBool::new(false);
        let node = &n;
        let summary = std::thread::scope(|s| {
            let killer = s.spawn(move || kill_node(node, plan));
            // The deadline only bounds a hung run: the kill ends it.
            let summary = checker.run(&mut queues, &stop, Some(Instant::now() + Duration::from_secs(60)));
            if let Err(panic) = killer.join() {
                std::panic::resume_unwind(panic);
            }
            summary
        });
        drop(queues);
        drop(controller);
        n.node.kill9(); // reap the killed process
        assert_eq!(
            summary.ended,
            RunEnd::QueuesFailed,
            "{name} round {round}: the run should end with the node's death: {summary:?}"
        );
        assert_eq!(
            summary.writes_failed, 0,
            "{name} round {round}: a write failed with a status: {summary:?}"
        );
        assert!(
            summary.writes_acked > 0,
            "{name} round {round}: no write acknowledged before the kill ({plan:?}): {summary:?}"
        );
        acked += summary.writes_acked;
        abandoned += summary.writes_abandoned;

        n.restart();
        let recoveries = n.recoveries();
        assert_eq!(
            recoveries.len() as u64,
            round + 1,
            "{name}: one recovery line per restart: {recoveries:?}"
        );
        let replayed = recoveries[round as usize].replayed_records;
        if let KillPlan::WithRecordsStaged { .. } = plan {
            assert!(
                replayed > 0,
                "{name} round {round} (seed {seed}): killed with a failed medium write staged ({plan:?}), \
                 but recovery replayed no record; log:\n{}",
                n.node.log()
            );
        }
        if replayed > 0 {
            outcome.rounds_replayed += 1;
        }
        outcome.records_replayed += replayed;

        let (_controller, mut queues) = n.connect(1, 32);
        let report = checker.verify(&mut queues[0]).unwrap_or_else(|e| {
            panic!("{name} round {round} (seed {seed}, {plan:?}): {e}\nnode log:\n{}", n.node.log())
        });
        // Every LBA ever written was read back, and every one with an
        // acknowledged write holds that write (or a newer one still in flight).
        let touched = checker.touched_lbas().count() as u64;
        let acked_lbas = checker.touched_lbas().filter(|&lba| checker.acked_seq(lba) != 0).count() as u64;
        assert!(acked_lbas > 0, "{name} round {round}: no LBA has an acknowledged write");
        assert_eq!(report.lbas_checked, touched, "{name} round {round}: LBAs read back: {report:?}");
        assert_eq!(
            report.acked + report.newer_unresolved,
            acked_lbas,
            "{name} round {round}: LBAs holding their acknowledged write: {report:?}"
        );
    }
    println!(
        "{name}: {rounds} rounds, seed {seed}: {acked} writes acknowledged, {abandoned} in flight at a kill, \
         {} staged records replayed by recovery in {} rounds, every acknowledged write verified",
        outcome.records_replayed, outcome.rounds_replayed
    );
    outcome
}

/// Fails naming the run unless some round of it replayed staged records.
fn assert_replayed(name: &str, outcome: CrashLoopOutcome) {
    assert!(
        outcome.rounds_replayed > 0 && outcome.records_replayed > 0,
        "{name}: no round's recovery replayed a staged record, so the run tested no recovery: {outcome:?}"
    );
}

#[test]
fn crash_loop_shm() {
    let rounds = env_u64("TANDEM_CRASH_ROUNDS", 20);
    let seed = env_u64("TANDEM_CRASH_SEED", 0x5eed_0001);
    let outcome = crash_loop("crash-shm", Domain::Shm, rounds, seed);
    assert_replayed("crash-shm", outcome);
}

#[test]
fn crash_loop_file() {
    let rounds = env_u64("TANDEM_CRASH_ROUNDS", 20).min(5);
    let seed = env_u64("TANDEM_CRASH_SEED", 0x5eed_0002);
    let outcome = crash_loop("crash-file", Domain::File, rounds, seed);
    assert_replayed("crash-file", outcome);
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
