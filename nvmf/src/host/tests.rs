//! Host library tests against the in-test fake target over 127.0.0.1.

use std::time::Duration;

use super::fake_target::{FakeConfig, FakeTarget, CNTLID, SUBNQN};
use super::*;

fn options(t: &FakeTarget) -> ConnectOptions {
    let mut o = ConnectOptions::new(&t.addr, SUBNQN);
    o.timeout = Duration::from_secs(10);
    o
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// A completion's tag, status and data.
type Outcome = (u64, NvmeStatus, Vec<u8>);

/// Submits and polls until every tag completed; returns the completion
/// order and each completion's status and data.
fn run_all(q: &mut IoQueue, cmds: &[(IoCommand<'_>, u64)]) -> (Vec<u64>, Vec<Outcome>) {
    let mut order = Vec::new();
    let mut results = Vec::new();
    let mut next = 0;
    let mut guard = 0;
    while results.len() < cmds.len() {
        while next < cmds.len() {
            match q.submit(cmds[next].0, cmds[next].1) {
                Ok(()) => next += 1,
                Err(HostError::QueueFull) => break,
                Err(e) => panic!("submit: {e}"),
            }
        }
        guard += 1;
        assert!(guard < 100_000, "no progress");
        q.poll(Some(Duration::from_millis(50)), &mut |c| {
            order.push(c.tag);
            results.push((c.tag, c.status, c.data.to_vec()));
        })
        .expect("poll");
    }
    (order, results)
}

#[test]
fn connect_identify_and_synchronous_io() {
    let t = FakeTarget::start(FakeConfig::default());
    let mut ctrl = HostController::connect(&options(&t)).expect("connect");
    assert_eq!(ctrl.cntlid(), CNTLID);
    // MDTS 5 with 4 KiB pages.
    assert_eq!(ctrl.max_transfer_bytes(), 128 * 1024);
    assert_eq!(ctrl.active_namespaces().unwrap(), vec![1]);
    let ns = ctrl.namespace(1).unwrap();
    assert_eq!((ns.block_size, ns.num_blocks, ns.anagrpid, ns.nguid), (512, 4096, 1, [0xAB; 16]));
    assert!(matches!(ctrl.namespace(2), Err(HostError::UnknownNamespace { nsid: 2 })));
    let id = ctrl.identify_controller().unwrap();
    assert_eq!(id.len(), 4096);
    assert_eq!(u16::from_le_bytes([id[78], id[79]]), CNTLID);
    let log = ctrl.get_log_page(0x0C, 0, 4096 + 8).unwrap();
    assert_eq!((log.len(), log[0]), (4104, 0x0C));
    ctrl.keep_alive().unwrap();
    let mut bad = Sqe::default();
    bad.set_opcode(0xC1);
    assert!(matches!(
        ctrl.admin_command(bad, &[], 0),
        Err(HostError::Status { status: NvmeStatus::INVALID_OPCODE, .. })
    ));

    let mut queues = ctrl.take_io_queues();
    assert_eq!(queues.len(), 1);
    assert!(ctrl.take_io_queues().is_empty());
    let q = &mut queues[0];
    assert_eq!((q.qid(), q.queue_depth(), q.in_flight()), (1, 32, 0));

    // In-capsule (4 KiB <= 8 KiB), R2T (64 KiB) and a split transfer (300 KiB).
    for (slba, len, seed) in [(0u64, 4096usize, 1u8), (100, 65536, 2), (1000, 300 * 1024, 3)] {
        let data = pattern(len, seed);
        q.write(1, slba, &data).unwrap();
        let mut back = vec![0u8; len];
        q.read(1, slba, &mut back).unwrap();
        assert_eq!(back, data, "slba {slba} len {len}");
        let media = t.media.lock().unwrap();
        assert_eq!(&media[slba as usize * 512..slba as usize * 512 + len], &data[..]);
    }
    q.write_zeroes(1, 100, 8).unwrap();
    let mut back = vec![1u8; 4096];
    q.read(1, 100, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    q.flush(1).unwrap();

    let mut back = vec![0u8; 1024];
    match q.read(1, 4095, &mut back) {
        Err(HostError::Status { status, .. }) => assert_eq!(status, NvmeStatus::LBA_OUT_OF_RANGE),
        other => panic!("expected LBA out of range, got {other:?}"),
    }
    assert!(matches!(q.write(1, 0, &[0u8; 100]), Err(HostError::InvalidArgument { .. })));
    assert!(matches!(q.read(9, 0, &mut [0u8; 512]), Err(HostError::UnknownNamespace { nsid: 9 })));
    ctrl.disconnect().unwrap();
}

#[test]
fn digests_alignment_split_r2t_and_c2h_success() {
    let config = FakeConfig {
        cpda: 7,
        maxh2cdata: 4096,
        r2t_bytes_max: 16 * 1024,
        c2h_bytes_max: 3000,
        c2h_success: true,
        in_capsule_bytes: 1024,
        ..FakeConfig::default()
    };
    let t = FakeTarget::start(config);
    let mut o = options(&t);
    o.header_digest = true;
    o.data_digest = true;
    o.io_queues = 2;
    let mut ctrl = HostController::connect(&o).expect("connect");
    let mut queues = ctrl.take_io_queues();
    assert_eq!(queues.len(), 2);
    for (i, q) in queues.iter_mut().enumerate() {
        let data = pattern(40 * 1024, i as u8);
        let slba = 200 * i as u64;
        q.write(1, slba, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        q.read(1, slba, &mut back).unwrap();
        assert_eq!(back, data);
        let small = pattern(512, 9);
        q.write(1, slba + 100, &small).unwrap();
        let mut back = vec![0u8; 512];
        q.read(1, slba + 100, &mut back).unwrap();
        assert_eq!(back, small);
    }
}

#[test]
fn many_commands_in_flight_complete_out_of_order() {
    let t =
        FakeTarget::start(FakeConfig { reorder_batch: 8, in_capsule_bytes: 4096, ..FakeConfig::default() });
    let mut o = options(&t);
    o.queue_depth = 16;
    let mut ctrl = HostController::connect(&o).expect("connect");
    let mut q = ctrl.take_io_queues().pop().expect("queue");
    assert_eq!(q.queue_depth(), 16);

    // 48 writes of mixed sizes: in-capsule (1-8 blocks) and R2T (9-40 blocks).
    let datas: Vec<Vec<u8>> = (0..48).map(|i| pattern(512 * (1 + (i * 7) % 40), i as u8)).collect();
    let cmds: Vec<(IoCommand<'_>, u64)> = datas
        .iter()
        .enumerate()
        .map(|(i, d)| (IoCommand::Write { nsid: 1, slba: 64 * i as u64, data: d, fua: i % 2 == 0 }, i as u64))
        .collect();
    let (order, results) = run_all(&mut q, &cmds);
    assert!(results.iter().all(|r| r.1 == NvmeStatus::SUCCESS));
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..48).collect::<Vec<u64>>(), "every tag exactly once");
    assert_ne!(order, sorted, "the fake target reorders completions");

    // Fill the queue, then one more is QueueFull.
    for i in 0..16 {
        q.submit(IoCommand::Flush { nsid: 1 }, 1000 + i).unwrap();
    }
    assert_eq!(q.in_flight(), 16);
    assert!(matches!(q.submit(IoCommand::Flush { nsid: 1 }, 2000), Err(HostError::QueueFull)));
    assert!(matches!(q.flush(1), Err(HostError::Busy { in_flight: 16 })));
    let mut done = 0;
    while done < 16 {
        done += q.poll(Some(Duration::from_millis(100)), &mut |c| assert!(c.status.is_success())).unwrap();
    }

    let reads: Vec<(IoCommand<'_>, u64)> = datas
        .iter()
        .enumerate()
        .map(|(i, d)| {
            (IoCommand::Read { nsid: 1, slba: 64 * i as u64, nlb: (d.len() / 512) as u32 }, i as u64)
        })
        .collect();
    let (_, results) = run_all(&mut q, &reads);
    for (tag, status, data) in results {
        assert!(status.is_success());
        assert_eq!(data, datas[tag as usize], "tag {tag}");
    }

    // Deallocate and Write Zeroes through submit.
    let ranges = [(0u64, 4u32), (64, 1)];
    let cmds = [
        (IoCommand::Deallocate { nsid: 1, ranges: &ranges }, 1),
        (IoCommand::WriteZeroes { nsid: 1, slba: 128, nlb: 2 }, 2),
    ];
    let (_, results) = run_all(&mut q, &cmds);
    assert!(results.iter().all(|r| r.1.is_success()));
    let media = t.media.lock().unwrap();
    assert!(media[..4 * 512].iter().all(|&b| b == 0));
    assert!(media[64 * 512..65 * 512].iter().all(|&b| b == 0));
    assert!(media[128 * 512..130 * 512].iter().all(|&b| b == 0));
    assert_eq!(&media[65 * 512..66 * 512], &datas[1][512..1024], "only the ranges are deallocated");
}

#[test]
fn wrong_subsystem_is_a_connect_status() {
    let t = FakeTarget::start(FakeConfig::default());
    let mut o = options(&t);
    o.subnqn = "nqn.2024-01.io.tandem:other".into();
    match HostController::connect(&o) {
        Err(HostError::Status { status, .. }) => assert_eq!(status, NvmeStatus::CONNECT_INVALID_PARAMETERS),
        other => panic!("expected a Connect status, got {:?}", other.map(|c| c.cntlid())),
    }
}

#[test]
fn garbage_instead_of_icresp_is_a_clean_error() {
    let t = FakeTarget::start(FakeConfig { garbage_icresp: true, ..FakeConfig::default() });
    match HostController::connect(&options(&t)) {
        Err(HostError::Tcp(TcpError::Fatal { fes, .. })) => {
            assert_eq!(fes, crate::tcp::fes::INVALID_HEADER_FIELD)
        }
        other => panic!("expected a fatal codec error, got {:?}", other.map(|c| c.cntlid())),
    }
}

#[test]
fn garbage_during_io_kills_only_that_queue() {
    let t = FakeTarget::start(FakeConfig { garbage_on_read: true, ..FakeConfig::default() });
    let mut ctrl = HostController::connect(&options(&t)).expect("connect");
    let mut q = ctrl.take_io_queues().pop().expect("queue");
    q.write(1, 0, &pattern(512, 1)).unwrap();
    let err = q.read(1, 0, &mut [0u8; 512]).unwrap_err();
    assert!(matches!(err, HostError::Tcp(TcpError::Fatal { .. })), "{err:?}");
    assert!(matches!(q.read(1, 0, &mut [0u8; 512]), Err(HostError::Dead)));
    ctrl.keep_alive().expect("admin queue unaffected");
}

#[test]
fn c2h_term_req_is_reported() {
    let t = FakeTarget::start(FakeConfig { term_req_on_read: true, ..FakeConfig::default() });
    let mut ctrl = HostController::connect(&options(&t)).expect("connect");
    let mut q = ctrl.take_io_queues().pop().expect("queue");
    let err = q.read(1, 0, &mut [0u8; 512]).unwrap_err();
    assert!(matches!(err, HostError::TermReq { fes: 2, fei: 0 }), "{err:?}");
}

#[test]
fn corrupted_read_data_digest_fails_only_that_command() {
    let t = FakeTarget::start(FakeConfig { corrupt_read_digest: true, ..FakeConfig::default() });
    let mut o = options(&t);
    o.data_digest = true;
    let mut ctrl = HostController::connect(&o).expect("connect");
    let mut q = ctrl.take_io_queues().pop().expect("queue");
    q.write(1, 0, &pattern(1024, 4)).unwrap();
    let mut back = vec![0u8; 1024];
    match q.read(1, 0, &mut back) {
        Err(HostError::Status { status, .. }) => assert_eq!(status, TRANSIENT_TRANSPORT_ERROR),
        other => panic!("expected a transient transport error, got {other:?}"),
    }
    q.read(1, 0, &mut back).expect("the connection survives a data digest error");
    assert_eq!(back, pattern(1024, 4));
}

#[test]
fn options_defaults_are_stable() {
    let a = ConnectOptions::new("127.0.0.1:4420", "nqn.x");
    let b = ConnectOptions::new("127.0.0.1:4420", "nqn.x");
    assert_eq!(a.hostnqn, b.hostnqn);
    assert_eq!(a.hostnqn, "nqn.2014-08.org.nvmexpress:uuid:7a6e646d-0000-4000-8000-74616e64656d");
    assert_eq!((a.io_queues, a.queue_depth, a.kato_ms), (1, 32, 0));
}
