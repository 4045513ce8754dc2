//! Claim: keep-alive works as NVMe-oF defines it (NVMe Base 2.0, 3.9). A
//! host that connects with KATO 1000 ms and goes silent loses its
//! association: the target closes the admin queue and its I/O queue within
//! a few KATO, and never before one KATO has passed. A host that keeps
//! sending Keep Alive commands keeps its association for many KATOs.

use std::time::{Duration, Instant};

use tandem_nvmf::spec::{NvmeStatus, Sqe};
use tandem_tests::raw::{admin_queue, assert_status, io_queue, opc};
use tandem_tests::{start_test_node, PortSpec, TEST_SUBNQN};

const KATO_MS: u32 = 1000;

fn keep_alive_sqe() -> Sqe {
    let mut sqe = Sqe::default();
    sqe.set_opcode(opc::KEEP_ALIVE);
    sqe
}

#[test]
fn silent_host_loses_its_association_and_a_chatty_one_keeps_it() {
    let port = PortSpec::fresh(1);
    let (_dir, mut node) = start_test_node("keep-alive", &[port], &[], false);

    // The chatty host runs alongside the silent one.
    let (mut chatty, chatty_cntlid) = admin_queue(port.addr, TEST_SUBNQN, (false, false), KATO_MS);
    let (mut silent, cntlid) = admin_queue(port.addr, TEST_SUBNQN, (false, false), KATO_MS);
    assert_ne!(chatty_cntlid, cntlid, "two associations, two controllers");
    let mut silent_io = io_queue(port.addr, TEST_SUBNQN, cntlid, 1, (false, false));
    let silent_since = Instant::now();

    // 3.5 KATOs of keep-alives every quarter KATO on the chatty association.
    let chatty_until = Instant::now() + Duration::from_millis(u64::from(KATO_MS) * 7 / 2);
    while Instant::now() < chatty_until {
        let (cqe, _) = chatty.admin(keep_alive_sqe(), 0);
        assert_status(&cqe, NvmeStatus::SUCCESS, "Keep Alive");
        std::thread::sleep(Duration::from_millis(u64::from(KATO_MS) / 4));
    }
    let (cqe, _) = chatty.admin(keep_alive_sqe(), 0);
    assert_status(&cqe, NvmeStatus::SUCCESS, "Keep Alive after 3.5 KATO: the association is still up");

    // The silent association is torn down: both of its queues close.
    assert!(
        silent.closed_within(Duration::from_millis(u64::from(KATO_MS) * 10)),
        "the silent host's admin queue is still open after 10 KATO; log:\n{}",
        node.log()
    );
    let waited = silent_since.elapsed();
    assert!(waited >= Duration::from_millis(u64::from(KATO_MS)), "closed before one KATO ({waited:?})");
    assert!(
        silent_io.closed_within(Duration::from_millis(u64::from(KATO_MS) * 2)),
        "the silent host's I/O queue stays open after its association ended"
    );
    let (cqe, _) = chatty.admin(keep_alive_sqe(), 0);
    assert_status(&cqe, NvmeStatus::SUCCESS, "the chatty association survived the teardown of the other");
    assert!(node.is_running(), "tandem serve is alive");
}
