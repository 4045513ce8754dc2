//! Claim: a host that sends an empty Host NQN in Connect, as SPDK's
//! `spdk_nvme_perf` does with its defaults, is served by a subsystem with
//! `allow_any_host` (admin and I/O queues, verified I/O) and by discovery,
//! and the node logs that once, not once per connection; a subsystem with
//! an allow-list refuses it with Connect Invalid Host (SCT 1h, SC 84h) and a
//! log line that says why, and discovery does not list that subsystem to it.

use tandem_nvmf::host::{ConnectOptions, HostController, HostError};
use tandem_nvmf::spec::NvmeStatus;
use tandem_tests::raw::{assert_status, RawConn};
use tandem_tests::{test_config, NodeProcess, PortSpec, Scratch, TEST_SUBNQN};

const LISTED_SUBNQN: &str = "nqn.2026-11.io.tandem:listed";
const LISTED_HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-4333-8444-555555555555";
const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
const LID_DISCOVERY: u8 = 0x70;
const ACCEPTED_LOG: &str = "accepted a Connect with an empty Host NQN";
const REFUSED_LOG: &str =
    "the Host NQN is empty and this subsystem admits only the host NQNs of its allow-list";

fn no_hostnqn(addr: &str, subnqn: &str) -> ConnectOptions {
    let mut opts = ConnectOptions::new(addr, subnqn);
    opts.hostnqn = String::new();
    opts
}

/// The SUBNQN of each entry of a discovery log page.
fn listed_subnqns(page: &[u8]) -> Vec<String> {
    let numrec = u64::from_le_bytes(page[8..16].try_into().expect("8 bytes")) as usize;
    (0..numrec)
        .map(|i| {
            let e = &page[1024 * (i + 1)..1024 * (i + 2)];
            String::from_utf8_lossy(&e[256..512]).trim_end_matches(['\0', ' ']).to_string()
        })
        .collect()
}

#[test]
fn empty_hostnqn_is_served_with_allow_any_host_and_refused_by_an_allow_list() {
    let port = PortSpec::fresh(1);
    let listed = format!(
        "\n[[subsystems]]\nnqn = \"{LISTED_SUBNQN}\"\nserial = \"TANDEMTEST02\"\nmodel = \"Tandem test\"\n\
         hosts = [\"{LISTED_HOSTNQN}\"]\n\n[[subsystems.namespaces]]\nnsid = 1\nana_group = 1\n\
         backend = \"ram\"\nsize = 1048576\nblock_size = 4096\n\n[limits]"
    );
    let config = test_config(&[port], &[], None).replacen("\n[limits]", &listed, 1);
    let dir = Scratch::new("empty-hostnqn");
    let mut node = NodeProcess::start(&dir.path, "empty-hostnqn", &config, &[port.addr]);
    let addr = port.addr.to_string();

    // allow_any_host: admin and I/O queues, and I/O that verifies. Twice,
    // so the log shows whether it is logged once.
    for round in 0..2u8 {
        let mut ctrl = HostController::connect(&no_hostnqn(&addr, TEST_SUBNQN))
            .unwrap_or_else(|e| panic!("round {round}: connect with an empty Host NQN: {e}\n{}", node.log()));
        let mut q = ctrl.take_io_queues().pop().expect("an I/O queue");
        let data: Vec<u8> = (0..8 * 4096).map(|i| (i as u8).wrapping_mul(31).wrapping_add(round)).collect();
        q.write(1, 64, &data).expect("write from an empty-NQN host");
        let mut back = vec![0u8; data.len()];
        q.read(1, 64, &mut back).expect("read from an empty-NQN host");
        assert!(back == data, "round {round}: read-back equals the write");
    }

    // An allow-list: Connect Invalid Host.
    match HostController::connect(&no_hostnqn(&addr, LISTED_SUBNQN)) {
        Err(HostError::Status { status, .. }) => assert_eq!(
            (status.sct, status.sc),
            (NvmeStatus::CONNECT_INVALID_HOST.sct, NvmeStatus::CONNECT_INVALID_HOST.sc),
            "allow-list subsystem: {status}"
        ),
        Err(e) => panic!("allow-list subsystem: expected Connect Invalid Host, got {e}"),
        Ok(_) => panic!("an allow-list subsystem admitted a host with an empty Host NQN"),
    }
    // The named host is still admitted there.
    let mut named = ConnectOptions::new(&addr, LISTED_SUBNQN);
    named.hostnqn = LISTED_HOSTNQN.to_string();
    HostController::connect(&named).expect("the listed host connects");

    // Discovery with an empty Host NQN: served, and lists only what it may use.
    let mut d = RawConn::open_ic(port.addr, false, false);
    let cqe = d.connect_as("", DISCOVERY_NQN, 0, 0xFFFF);
    assert_status(&cqe, NvmeStatus::SUCCESS, "discovery Connect with an empty Host NQN");
    d.enable();
    let (cqe, head) = d.get_log_page(LID_DISCOVERY, 1024);
    assert_status(&cqe, NvmeStatus::SUCCESS, "discovery log header");
    let numrec = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes")) as usize;
    let (cqe, page) = d.get_log_page(LID_DISCOVERY, 1024 * (numrec + 1));
    assert_status(&cqe, NvmeStatus::SUCCESS, "discovery log");
    let subnqns = listed_subnqns(&page);
    assert!(subnqns.iter().any(|s| s == TEST_SUBNQN), "the open subsystem is listed: {subnqns:?}");
    assert!(!subnqns.iter().any(|s| s == LISTED_SUBNQN), "the allow-list subsystem is not: {subnqns:?}");

    let log = node.log();
    // One line for the open subsystem, one for discovery: each logs once.
    let accepted: Vec<&str> = log.lines().filter(|l| l.contains(ACCEPTED_LOG)).collect();
    assert_eq!(accepted.len(), 2, "logged once per subsystem:\n{log}");
    assert!(accepted.iter().any(|l| l.contains(TEST_SUBNQN)), "names the subsystem:\n{log}");
    assert!(accepted.iter().any(|l| l.contains(DISCOVERY_NQN)), "names discovery:\n{log}");
    let refused: Vec<&str> = log.lines().filter(|l| l.contains(REFUSED_LOG)).collect();
    assert_eq!(refused.len(), 1, "the refusal says why:\n{log}");
    assert!(refused[0].contains(LISTED_SUBNQN), "names the subsystem:\n{log}");
    assert!(node.is_running(), "node alive at the end");
}
