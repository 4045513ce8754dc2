//! Claim: ANA (NVMe Base 2.0, 8.20) works as the Linux native multipath
//! host needs. With namespace 1 in group 1, optimized through port 1 and
//! inaccessible through port 2: I/O via port 2 completes with ANA
//! Inaccessible (SCT 3h, SC 02h); an Asynchronous Event Request parked on
//! port 1's admin queue completes with the ANA change notice (type 2h notice,
//! info 03h, log page 0Ch) when SPDK's RPC
//! `nvmf_subsystem_listener_set_ana_state` changes port 1's state (port 2
//! changes through the `tandem rpc ana-set` shorthand); the ANA log (0Ch)
//! then shows the new states on both ports; and I/O via port 2 succeeds
//! once port 2 is optimized.

use std::time::Duration;

use tandem_nvmf::host::{ConnectOptions, HostController, HostError};
use tandem_nvmf::spec::{NvmeStatus, Sqe};
use tandem_nvmf::tcp::PduHeader;
use tandem_tests::raw::{admin_queue, assert_status, opc, Incoming, RawConn};
use tandem_tests::{run_tandem, start_test_node, PortSpec, TEST_SUBNQN};

const LID_ANA: u8 = 0x0C;
const FID_ASYNC_EVENT_CONFIG: u32 = 0x0B;
const AEC_ANA_CHANGE_NOTICES: u32 = 1 << 11;
const ANA_OPTIMIZED: u8 = 0x01;
const ANA_INACCESSIBLE: u8 = 0x03;

/// (change count, [(group, state, nsids)]) of an ANA log page read raw.
fn ana_log(c: &mut RawConn) -> (u64, Vec<(u32, u8, Vec<u32>)>) {
    let (cqe, p) = c.get_log_page(LID_ANA, 4096);
    assert_status(&cqe, NvmeStatus::SUCCESS, "Get Log Page 0Ch");
    let le32 = |at: usize| u32::from_le_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]);
    let chgcnt = u64::from(le32(0)) | (u64::from(le32(4)) << 32);
    let ngrps = u16::from_le_bytes([p[8], p[9]]) as usize;
    let mut at = 16;
    let mut groups = Vec::new();
    for _ in 0..ngrps {
        let nnsid = le32(at + 4) as usize;
        let nsids = (0..nnsid).map(|i| le32(at + 32 + 4 * i)).collect();
        groups.push((le32(at), p[at + 16] & 0x0F, nsids));
        at += 32 + 4 * nnsid;
    }
    (chgcnt, groups)
}

/// `tandem rpc ana-set` (the shorthand the guest suite uses).
fn rpc_ana_set(socket: &str, port: u16, state: &str) {
    let port = port.to_string();
    let (code, out, err) = run_tandem(&[
        "rpc", "--socket", socket, "ana-set", "--port", &port, "--group", "1", "--state", state,
    ]);
    assert_eq!(code, 0, "tandem rpc ana-set: {out}{err}");
}

/// SPDK's `nvmf_subsystem_listener_set_ana_state`, as SPDK's rpc.py sends it.
fn rpc_listener_set_ana_state(socket: &str, addr: std::net::SocketAddr, state: &str) {
    let params = serde_json::json!({
        "nqn": TEST_SUBNQN,
        "listen_address": {
            "trtype": "tcp", "adrfam": "ipv4",
            "traddr": addr.ip().to_string(), "trsvcid": addr.port().to_string(),
        },
        "ana_state": state,
        "anagrpid": 1,
    });
    let (code, out, err) = run_tandem(&[
        "rpc",
        "-s",
        socket,
        "nvmf_subsystem_listener_set_ana_state",
        "-p",
        &params.to_string(),
    ]);
    assert_eq!(code, 0, "tandem rpc nvmf_subsystem_listener_set_ana_state: {out}{err}");
    assert_eq!(out.trim(), "true", "SPDK's answer to a state change");
}

#[test]
fn ana_states_events_and_log() {
    let p1 = PortSpec::fresh(1);
    let p2 = PortSpec { group1: "inaccessible", ..PortSpec::fresh(2) };
    let (dir, node) = start_test_node("ana", &[p1, p2], &[], true);
    let socket = dir.path.join("rpc.sock").to_string_lossy().into_owned();

    // I/O through port 2 is refused with ANA Inaccessible.
    let mut via2 = HostController::connect(&ConnectOptions::new(&p2.addr.to_string(), TEST_SUBNQN))
        .expect("connect through port 2");
    let mut q2 = via2.take_io_queues().pop().expect("an I/O queue on port 2");
    let mut buf = vec![0u8; 4096];
    match q2.read(1, 0, &mut buf) {
        Err(HostError::Status { status, .. }) => {
            assert_eq!((status.sct, status.sc), (3, 0x02), "ANA Inaccessible, got {status}")
        }
        other => panic!("read via the inaccessible port: expected ANA Inaccessible, got {other:?}"),
    }

    // Port 1: the ANA log says optimized; enable ANA change notices and park an AER.
    let (mut a1, _) = admin_queue(p1.addr, TEST_SUBNQN, (false, false), 0);
    let (count_before, groups) = ana_log(&mut a1);
    assert_eq!(groups, vec![(1, ANA_OPTIMIZED, vec![1])], "port 1's ANA log before");
    let mut sqe = Sqe::default();
    sqe.set_opcode(opc::SET_FEATURES);
    sqe.set_cdw10(FID_ASYNC_EVENT_CONFIG);
    sqe.set_cdw11(AEC_ANA_CHANGE_NOTICES);
    let (cqe, _) = a1.admin(sqe, 0);
    assert_status(&cqe, NvmeStatus::SUCCESS, "Set Features Asynchronous Event Configuration");
    let aer_cid = a1.cid();
    let mut aer = Sqe::default();
    aer.set_opcode(opc::ASYNC_EVENT_REQUEST);
    aer.set_cid(aer_cid);
    aer.set_psdt(1);
    a1.send(&PduHeader::CapsuleCmd { sqe: aer }, &[]);
    match a1.recv(Duration::from_millis(300)) {
        Incoming::Timeout => {}
        other => panic!("the AER completed with no event: {other:?}"),
    }

    // Flip: port 1 inaccessible, then port 2 optimized.
    rpc_listener_set_ana_state(&socket, p1.addr, "inaccessible");
    let cqe = match a1.recv(Duration::from_secs(10)) {
        Incoming::Pdu { header: PduHeader::CapsuleResp { cqe }, .. } => cqe,
        other => panic!("expected the AER's completion; got {other:?}; log:\n{}", node.log()),
    };
    assert_eq!(cqe.cid(), aer_cid, "the parked AER completes");
    assert_status(&cqe, NvmeStatus::SUCCESS, "AER completion");
    let dw0 = cqe.dw0();
    assert_eq!(dw0 & 0x7, 0x2, "asynchronous event type: notice (dw0 {dw0:#x})");
    assert_eq!((dw0 >> 8) & 0xff, 0x03, "event information: ANA change (dw0 {dw0:#x})");
    assert_eq!((dw0 >> 16) & 0xff, u32::from(LID_ANA), "log page: ANA (dw0 {dw0:#x})");
    rpc_ana_set(&socket, 2, "optimized");

    let (count_after, groups) = ana_log(&mut a1);
    assert_eq!(groups, vec![(1, ANA_INACCESSIBLE, vec![1])], "port 1's ANA log after");
    assert!(count_after > count_before, "change count grows: {count_before} -> {count_after}");
    let d = via2.get_log_page(LID_ANA, 0xFFFF_FFFF, 4096).expect("port 2's ANA log");
    assert_eq!(d[16 + 16] & 0x0F, ANA_OPTIMIZED, "port 2's ANA log shows group 1 optimized");

    // I/O via port 2 now succeeds (on the same queue that was refused).
    let data = vec![0x3Cu8; 4096];
    q2.write(1, 5, &data).expect("write via port 2 after the flip");
    q2.read(1, 5, &mut buf).expect("read via port 2 after the flip");
    assert!(buf == data, "read-back via port 2");
    drop(node);
}
