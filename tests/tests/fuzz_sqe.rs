//! Claim: no submission queue entry, however malformed, panics the
//! controller layer, and every one gets an answer. Random SQEs (opcodes
//! biased towards the implemented ones, NSIDs around the edges, random CDW10
//! to CDW15, PSDT and SGL bytes) are fed to `Controller::check_io` and
//! `Controller::exec_admin` of controllers built in-process (an I/O
//! controller and a discovery controller); each returns a checked command or
//! a non-success status, and what a successful one returns respects the
//! namespace size, MDTS and the SGL length.

use std::sync::Arc;

use proptest::prelude::*;
use tandem_nvmf::spec::{Cqe, Sqe};
use tandem_target::config::Config;
use tandem_target::ctrl::{AdminOutcome, Controller, IoKind, NamespaceGeometry, TargetState};
use tandem_tests::raw::{connect_command, opc};
use tandem_tests::{
    loopback, test_config, PortSpec, TEST_BLOCK_BYTES, TEST_MDTS_BYTES, TEST_NS_BYTES, TEST_SUBNQN,
};

const BLOCKS: u64 = TEST_NS_BYTES / TEST_BLOCK_BYTES as u64;
const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

fn controllers() -> (Arc<TargetState>, Arc<Controller>, Arc<Controller>) {
    let config = Config::parse(&test_config(
        &[PortSpec { id: 1, addr: loopback(4420), group1: "optimized" }],
        &[PortSpec { id: 2, addr: loopback(4421), group1: "optimized" }],
        None,
    ))
    .expect("test config parses");
    let target = TargetState::new(&config, |_, _| {
        Some(NamespaceGeometry { block_size_bytes: TEST_BLOCK_BYTES, block_count: BLOCKS })
    })
    .expect("target state");
    let connect = |nqn: &str| {
        let (mut sqe, data) = connect_command(nqn, 0, 32, 0, 0xFFFF);
        sqe.set_cid(1);
        target.connect(1, &sqe, &data, 0).expect("admin Connect").controller
    };
    let io = connect(TEST_SUBNQN);
    let discovery = connect(DISCOVERY_NQN);
    (target, io, discovery)
}

/// Property Set CC: 0 (reset) then EN with the standard entry sizes, so each
/// case starts from an enabled controller whatever the previous one did.
fn reset_and_enable(c: &Controller) {
    for value in [0u32, (6 << 16) | (4 << 20) | 1] {
        let mut sqe = Sqe::default();
        sqe.set_opcode(opc::FABRICS);
        sqe.set_fctype(opc::FCTYPE_PROPERTY_SET);
        sqe.set_cdw11(0x14);
        sqe.set_cdw12(value);
        let mut out = Vec::new();
        match c.exec_admin(&sqe, &[], &mut out) {
            AdminOutcome::Complete(cqe) => {
                assert!(cqe.status().is_success(), "Property Set CC: {}", cqe.status())
            }
            AdminOutcome::AsyncEventParked => panic!("Property Set parked"),
        }
    }
}

fn arb_sqe() -> impl Strategy<Value = Sqe> {
    let opcode = prop_oneof![
        4 => prop::sample::select(vec![0x00u8, 0x01, 0x02, 0x06, 0x08, 0x09, 0x0A, 0x0C, 0x18, 0x7F, 0x08]),
        1 => any::<u8>(),
    ];
    let nsid = prop_oneof![prop::sample::select(vec![0u32, 1, 2, 0xFFFF_FFFE, 0xFFFF_FFFF]), any::<u32>(),];
    let slba = prop_oneof![
        prop::sample::select(vec![0u64, BLOCKS - 1, BLOCKS, u64::MAX, u64::MAX - 1]),
        0..BLOCKS * 2,
        any::<u64>(),
    ];
    (any::<[u8; 64]>(), opcode, nsid, slba, prop::sample::select(vec![0u8, 1, 2, 3]), any::<bool>()).prop_map(
        |(bytes, opcode, nsid, slba, psdt, keep_dwords)| {
            let mut sqe = Sqe::from_bytes(&bytes);
            sqe.set_opcode(opcode);
            sqe.set_nsid(nsid);
            sqe.set_psdt(psdt);
            if keep_dwords {
                sqe.set_slba(slba);
            }
            sqe
        },
    )
}

fn check_admin(c: &Controller, sqe: &Sqe, data: &[u8]) {
    let mut out = Vec::new();
    match c.exec_admin(sqe, data, &mut out) {
        AdminOutcome::Complete(cqe) => check_cqe(sqe, &cqe, &out),
        AdminOutcome::AsyncEventParked => {
            assert_eq!(sqe.opcode(), opc::ASYNC_EVENT_REQUEST, "only an AER may be parked");
        }
    }
}

fn check_cqe(sqe: &Sqe, cqe: &Cqe, out: &[u8]) {
    assert_eq!(cqe.cid(), sqe.cid(), "the completion names the command");
    if cqe.status().is_success() {
        assert!(out.len() <= sqe.sgl().length() as usize, "data within the SGL length");
        assert!(out.len() <= TEST_MDTS_BYTES as usize, "data within MDTS");
    } else {
        assert!(out.is_empty(), "no data with an error status");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_sqes_never_panic_and_always_get_a_status(
        sqe in arb_sqe(),
        data in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let (_target, io, discovery) = controllers();
        reset_and_enable(&io);
        reset_and_enable(&discovery);

        match io.check_io(&sqe) {
            Ok(cmd) => {
                prop_assert_eq!(cmd.cid, sqe.cid());
                prop_assert_eq!(cmd.nsid, 1, "only namespace 1 exists");
                prop_assert!(cmd.slba.checked_add(u64::from(cmd.block_count)).is_some_and(|e| e <= BLOCKS));
                if matches!(cmd.kind, IoKind::Read | IoKind::Write) {
                    prop_assert!(cmd.block_count >= 1);
                    prop_assert!(cmd.data_bytes <= TEST_MDTS_BYTES);
                    prop_assert_eq!(cmd.data_bytes, cmd.block_count * TEST_BLOCK_BYTES);
                    prop_assert_eq!(sqe.sgl().length(), cmd.data_bytes);
                }
            }
            Err(status) => prop_assert!(!status.is_success(), "an error carries a non-success status"),
        }
        check_admin(&io, &sqe, &data);
        check_admin(&discovery, &sqe, &data);
        // The discovery controller runs no I/O.
        prop_assert!(discovery.check_io(&sqe).is_err());
    }
}
