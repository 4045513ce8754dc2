//! Sans-I/O tests of the controller layer: Connect, every admin command and
//! its error statuses, the I/O checks, ANA changes with asynchronous
//! events, keep-alive expiry and the discovery log.

use std::sync::Arc;

use tandem_nvmf::spec::fabrics::{
    connect_data_offset, connect_sqe_offset, property, Cap, Cc, ConnectCommand, ConnectData, Csts,
    InvalidParameter, PropertyGet, PropertySet, DISCOVERY_NQN,
};
use tandem_nvmf::spec::features::{aec, fid, AsyncEvent, QueueCounts};
use tandem_nvmf::spec::identify::{self, cns, IdentifyController, IdentifyNamespace, NsIdDescriptor};
use tandem_nvmf::spec::log::{self, lid, subtype, AnaState, GetLogPage};
use tandem_nvmf::spec::nvm::DsmRange;
use tandem_nvmf::spec::opcode::{admin, fctype, nvm};
use tandem_nvmf::spec::sqe::{
    SGL_ID_DATA_BLOCK_OFFSET, SGL_ID_KEYED_DATA_BLOCK, SGL_ID_TRANSPORT_DATA_BLOCK,
};
use tandem_nvmf::spec::{Cqe, NvmeStatus, SglDescriptor, Sqe};

use super::*;
use crate::config::Config;

const SUBNQN: &str = "nqn.2026-11.io.tandem:demo";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:host-1";
const HOSTID: [u8; 16] = [0x11; 16];

fn config_text(cntlid_min: u32, cntlid_max: u32, extra_ns: &str, hosts: &str) -> String {
    format!(
        r#"
[node]
name = "a"
cntlid_min = {cntlid_min}
cntlid_max = {cntlid_max}
cores = [0]
[[ports]]
id = 1
transport = "tcp"
addr = "127.0.0.1:4420"
ana = {{ 2 = "inaccessible" }}
[[ports]]
id = 3
transport = "tcp"
addr = "127.0.0.1:4430"
[[remote_ports]]
id = 2
transport = "tcp"
addr = "127.0.0.2:4420"
[[subsystems]]
nqn = "{SUBNQN}"
serial = "TANDEM0001"
model = "Tandem"
{hosts}
[[subsystems.namespaces]]
nsid = 1
ana_group = 1
backend = "ram"
size = "1MiB"
block_size = 4096
[[subsystems.namespaces]]
nsid = 3
ana_group = 2
backend = "ram"
size = "1MiB"
block_size = 512
{extra_ns}
[limits]
io_queues_max = 4
"#
    )
}

/// Parses a test config and makes port 3 an RDMA port: the config refuses
/// "rdma" until the RDMA transport exists, but the controller's RDMA rules
/// (keyed SGLs, discovery entries) are tested already.
fn parse_config(text: &str) -> Config {
    let mut config = Config::parse(text).unwrap();
    for p in config.ports.iter_mut().filter(|p| p.id == 3) {
        p.transport = crate::config::TransportKind::Rdma;
    }
    config
}

fn target_with(text: &str) -> Arc<TargetState> {
    let config = parse_config(text);
    TargetState::new(&config, |_, nsid| {
        let bs = if nsid == 1 { 4096 } else { 512 };
        Some(NamespaceGeometry { block_size_bytes: bs, block_count: (1 << 20) / u64::from(bs) })
    })
    .unwrap()
}

fn target() -> Arc<TargetState> {
    target_with(&config_text(1, 100, "", "allow_any_host = true"))
}

fn connect_sqe(qid: u16, sqsize0: u16, kato_ms: u32) -> Sqe {
    let mut s = Sqe::default();
    s.set_opcode(admin::FABRICS);
    s.set_fctype(fctype::CONNECT);
    s.set_cid(9);
    ConnectCommand { recfmt: 0, qid, sqsize0, cattr: 0, kato_ms }.write(&mut s);
    s
}

fn connect_data(subnqn: &str, cntlid: u16) -> Vec<u8> {
    let mut d = ConnectData::default();
    d.set_hostid(HOSTID).set_cntlid(cntlid).set_subnqn(subnqn).set_hostnqn(HOSTNQN);
    d.0.to_vec()
}

fn connect_err(t: &Arc<TargetState>, port: u16, sqe: &Sqe, data: &[u8]) -> Cqe {
    t.connect(port, sqe, data, 0).unwrap_err()
}

fn admin_sqe(opc: u8, cid: u16) -> Sqe {
    let mut s = Sqe::default();
    s.set_opcode(opc);
    s.set_cid(cid);
    s.set_psdt(1);
    s.set_sgl(SglDescriptor::new(0, 4096, SGL_ID_TRANSPORT_DATA_BLOCK));
    s
}

fn prop_set_cc(c: &Controller, cc: Cc) -> Cqe {
    let mut s = Sqe::default();
    s.set_opcode(admin::FABRICS);
    s.set_fctype(fctype::PROPERTY_SET);
    PropertySet { eight_bytes: false, offset: property::CC, value: u64::from(cc.0) }.write(&mut s);
    complete(c.exec_admin(&s, &[], &mut Vec::new()))
}

fn prop_get(c: &Controller, offset: u32, eight_bytes: bool) -> Cqe {
    let mut s = Sqe::default();
    s.set_opcode(admin::FABRICS);
    s.set_fctype(fctype::PROPERTY_GET);
    PropertyGet { eight_bytes, offset }.write(&mut s);
    complete(c.exec_admin(&s, &[], &mut Vec::new()))
}

fn complete(o: AdminOutcome) -> Cqe {
    match o {
        AdminOutcome::Complete(c) => c,
        AdminOutcome::AsyncEventParked => panic!("unexpectedly parked"),
    }
}

/// An enabled I/O controller on `port`.
fn enabled(t: &Arc<TargetState>, port: u16) -> Arc<Controller> {
    let q = t.connect(port, &connect_sqe(0, 31, 10_000), &connect_data(SUBNQN, 0xFFFF), 0).unwrap();
    assert!(prop_set_cc(&q.controller, Cc::ENABLE_DEFAULT).status().is_success());
    q.controller
}

fn admin_cmd(c: &Controller, sqe: &Sqe) -> (Cqe, Vec<u8>) {
    let mut out = Vec::new();
    let cqe = complete(c.exec_admin(sqe, &[], &mut out));
    (cqe, out)
}

fn identify(c: &Controller, cns_value: u8, nsid: u32) -> (Cqe, Vec<u8>) {
    let mut s = admin_sqe(admin::IDENTIFY, 1);
    s.set_nsid(nsid);
    s.set_cdw10(u32::from(cns_value));
    admin_cmd(c, &s)
}

fn get_log(c: &Controller, g: GetLogPage) -> (Cqe, Vec<u8>) {
    let mut s = admin_sqe(admin::GET_LOG_PAGE, 2);
    let d = g.to_dwords();
    s.set_cdw10(d[0]);
    s.set_cdw11(d[1]);
    s.set_cdw12(d[2]);
    s.set_cdw13(d[3]);
    s.set_cdw14(d[4]);
    s.set_sgl(SglDescriptor::new(0, g.dword_count * 4, SGL_ID_TRANSPORT_DATA_BLOCK));
    admin_cmd(c, &s)
}

fn set_feature(c: &Controller, f: u8, cdw11: u32) -> Cqe {
    let mut s = admin_sqe(admin::SET_FEATURES, 3);
    s.set_cdw10(u32::from(f));
    s.set_cdw11(cdw11);
    admin_cmd(c, &s).0
}

fn get_feature(c: &Controller, f: u8, sel: u8) -> Cqe {
    let mut s = admin_sqe(admin::GET_FEATURES, 4);
    s.set_cdw10(u32::from(f) | (u32::from(sel) << 8));
    admin_cmd(c, &s).0
}

// ---- Connect ----

#[test]
fn admin_connect_creates_a_controller_with_a_fresh_cntlid() {
    let t = target();
    let q = t.connect(1, &connect_sqe(0, 31, 5000), &connect_data(SUBNQN, 0xFFFF), 7).unwrap();
    assert_eq!(q.qid, 0);
    assert_eq!(q.sq_entries, 32);
    assert_eq!(q.response.status(), NvmeStatus::SUCCESS);
    assert_eq!(q.response.cid(), 9);
    assert_eq!(q.response.dw0(), u32::from(q.controller.cntlid()));
    assert_eq!(q.controller.kato_ms(), 5000);
    assert_eq!(q.controller.hostnqn(), HOSTNQN);
    assert!(!q.controller.is_ready(), "not ready before CC.EN");
}

#[test]
fn cntlids_are_unique_and_not_reused_at_once() {
    let t = target_with(&config_text(10, 12, "", "allow_any_host = true"));
    let a: Vec<_> = (0..3)
        .map(|_| t.connect(1, &connect_sqe(0, 31, 0), &connect_data(SUBNQN, 0xFFFF), 0).unwrap().controller)
        .collect();
    let ids: Vec<u16> = a.iter().map(|c| c.cntlid()).collect();
    assert_eq!(ids, vec![10, 11, 12]);
    let full = connect_err(&t, 1, &connect_sqe(0, 31, 0), &connect_data(SUBNQN, 0xFFFF));
    assert_eq!(full.status(), NvmeStatus::CONNECT_CONTROLLER_BUSY, "range exhausted");
    t.disconnect(&a[1], 0);
    let b = t.connect(1, &connect_sqe(0, 31, 0), &connect_data(SUBNQN, 0xFFFF), 0).unwrap().controller;
    assert_eq!(b.cntlid(), 11, "the only free id");
    assert!(t.controller(11).is_some());
    assert_eq!(t.live_controllers().len(), 3);
}

#[test]
fn two_nodes_with_disjoint_ranges_never_share_a_cntlid() {
    let a = target_with(&config_text(1, 0x7fff, "", "allow_any_host = true"));
    let b = target_with(&config_text(0x8000, 0xffef, "", "allow_any_host = true"));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        for t in [&a, &b] {
            let c =
                t.connect(1, &connect_sqe(0, 31, 0), &connect_data(SUBNQN, 0xFFFF), 0).unwrap().controller;
            assert!(seen.insert(c.cntlid()), "cntlid {} given twice", c.cntlid());
            std::mem::forget(c); // keep it live without holding a Vec
        }
    }
    assert!(a.live_controllers().iter().all(|c| c.cntlid() < 0x8000));
    assert!(b.live_controllers().iter().all(|c| (0x8000..=0xffef).contains(&c.cntlid())));
}

#[test]
fn connect_errors_carry_their_status_and_parameter() {
    let t = target();
    let data = connect_data(SUBNQN, 0xFFFF);
    let mut s = connect_sqe(0, 31, 0);
    ConnectCommand { recfmt: 1, qid: 0, sqsize0: 31, cattr: 0, kato_ms: 0 }.write(&mut s);
    let e = connect_err(&t, 1, &s, &data);
    assert_eq!(e.status(), NvmeStatus::CONNECT_INCOMPATIBLE_FORMAT);

    let e = connect_err(&t, 1, &connect_sqe(0, 0, 0), &data);
    assert_eq!(e.status(), NvmeStatus::CONNECT_INVALID_PARAMETERS);
    assert_eq!(
        InvalidParameter::from_dw0(e.dw0()),
        InvalidParameter::Command { offset: connect_sqe_offset::SQSIZE }
    );
    let e = connect_err(&t, 1, &connect_sqe(0, 128, 0), &data);
    assert_eq!(
        InvalidParameter::from_dw0(e.dw0()),
        InvalidParameter::Command { offset: connect_sqe_offset::SQSIZE },
        "above MQES"
    );

    let e = connect_err(&t, 1, &connect_sqe(0, 31, 0), &connect_data("nqn.2026-11.io.tandem:nope", 0xFFFF));
    assert_eq!(e.status(), NvmeStatus::CONNECT_INVALID_PARAMETERS);
    assert_eq!(
        InvalidParameter::from_dw0(e.dw0()),
        InvalidParameter::Data { offset: connect_data_offset::SUBNQN }
    );

    let e = connect_err(&t, 1, &connect_sqe(0, 31, 0), &connect_data(SUBNQN, 5));
    assert_eq!(
        InvalidParameter::from_dw0(e.dw0()),
        InvalidParameter::Data { offset: connect_data_offset::CNTLID }
    );

    let mut d = ConnectData::from_bytes(&data).unwrap();
    d.set_hostid([0; 16]);
    let e = connect_err(&t, 1, &connect_sqe(0, 31, 0), &d.0);
    assert_eq!(
        InvalidParameter::from_dw0(e.dw0()),
        InvalidParameter::Data { offset: connect_data_offset::HOSTID }
    );

    let mut d = ConnectData::from_bytes(&data).unwrap();
    d.0[512..768].fill(b'x');
    let e = connect_err(&t, 1, &connect_sqe(0, 31, 0), &d.0);
    assert_eq!(
        InvalidParameter::from_dw0(e.dw0()),
        InvalidParameter::Data { offset: connect_data_offset::HOSTNQN }
    );

    assert_eq!(
        connect_err(&t, 1, &connect_sqe(0, 31, 0), &data[..100]).status(),
        NvmeStatus::DATA_SGL_LENGTH_INVALID
    );
    let mut not_connect = connect_sqe(0, 31, 0);
    not_connect.set_fctype(fctype::PROPERTY_GET);
    assert_eq!(connect_err(&t, 1, &not_connect, &data).status(), NvmeStatus::COMMAND_SEQUENCE_ERROR);
    assert_eq!(
        connect_err(&t, 99, &connect_sqe(0, 31, 0), &data).status(),
        NvmeStatus::INTERNAL_ERROR,
        "unknown port"
    );
}

#[test]
fn host_allow_list_gives_invalid_host_with_the_hostnqn_offset() {
    let t = target_with(&config_text(1, 10, "", "hosts = [\"nqn.2014-08.org.nvmexpress:uuid:other\"]"));
    let e = connect_err(&t, 1, &connect_sqe(0, 31, 0), &connect_data(SUBNQN, 0xFFFF));
    assert_eq!(e.status(), NvmeStatus::CONNECT_INVALID_HOST);
    assert_eq!(e.dw0(), 0x0001_0200, "IATTR = data, IPO = 512");
    // The discovery subsystem accepts any host.
    assert!(t.connect(1, &connect_sqe(0, 31, 0), &connect_data(DISCOVERY_NQN, 0xFFFF), 0).is_ok());
    let t = target_with(&config_text(1, 10, "", &format!("hosts = [\"{HOSTNQN}\"]")));
    assert!(t.connect(1, &connect_sqe(0, 31, 0), &connect_data(SUBNQN, 0xFFFF), 0).is_ok());
}

/// Connect data like `connect_data` with an empty Host NQN, as SPDK's host
/// sends unless given one.
fn connect_data_no_hostnqn(subnqn: &str, cntlid: u16) -> Vec<u8> {
    let mut d = ConnectData::default();
    d.set_hostid(HOSTID).set_cntlid(cntlid).set_subnqn(subnqn);
    d.0.to_vec()
}

#[test]
fn empty_hostnqn_is_accepted_with_allow_any_host_and_refused_by_an_allow_list() {
    let t = target();
    let sub = t.subsystem(SUBNQN).unwrap();
    assert!(!sub.empty_hostnqn_logged.load(Ordering::Relaxed));
    let q = t.connect(1, &connect_sqe(0, 31, 0), &connect_data_no_hostnqn(SUBNQN, 0xFFFF), 0).unwrap();
    assert_eq!(q.response.status(), NvmeStatus::SUCCESS);
    assert_eq!(q.controller.hostnqn(), "");
    assert!(sub.empty_hostnqn_logged.load(Ordering::Relaxed), "the first one is logged");
    // Its I/O queues join the same association, with the same empty NQN.
    prop_set_cc(&q.controller, Cc::ENABLE_DEFAULT);
    let io = t.connect(1, &connect_sqe(1, 31, 0), &connect_data_no_hostnqn(SUBNQN, q.controller.cntlid()), 0);
    assert_eq!(io.map(|q| q.qid).ok(), Some(1), "I/O queue of an empty-NQN host");
    // ...but a named host cannot join an empty-NQN host's controller.
    let e = connect_err(&t, 1, &connect_sqe(2, 31, 0), &connect_data(SUBNQN, q.controller.cntlid()));
    assert_eq!(e.status(), NvmeStatus::CONNECT_INVALID_PARAMETERS);
    // Discovery accepts it too.
    let d = t.connect(1, &connect_sqe(0, 31, 0), &connect_data_no_hostnqn(DISCOVERY_NQN, 0xFFFF), 0);
    assert!(d.is_ok(), "discovery with an empty Host NQN");

    let t = target_with(&config_text(1, 10, "", &format!("hosts = [\"{HOSTNQN}\"]")));
    let e = connect_err(&t, 1, &connect_sqe(0, 31, 0), &connect_data_no_hostnqn(SUBNQN, 0xFFFF));
    assert_eq!(e.status(), NvmeStatus::CONNECT_INVALID_HOST, "an allow-list cannot admit an unnamed host");
    assert_eq!(
        InvalidParameter::from_dw0(e.dw0()),
        InvalidParameter::Data { offset: connect_data_offset::HOSTNQN }
    );
    let d = t.connect(1, &connect_sqe(0, 31, 0), &connect_data_no_hostnqn(DISCOVERY_NQN, 0xFFFF), 0);
    let d = d.expect("discovery with an empty Host NQN, allow-list subsystem");
    // The discovery log it reads does not list the subsystem it may not use.
    let mut page = Vec::new();
    t.build_discovery_log(d.controller.hostnqn(), &mut page);
    let (_, entries) = log::parse_discovery_log(&page).unwrap();
    assert!(entries.iter().all(|e| e.subnqn() != Some(SUBNQN)), "allow-list subsystem not listed");
}

#[test]
fn io_queue_connect_attaches_and_checks_qid_and_identity() {
    let t = target();
    let c = t.connect(1, &connect_sqe(0, 31, 0), &connect_data(SUBNQN, 0xFFFF), 0).unwrap().controller;
    let data = connect_data(SUBNQN, c.cntlid());
    // Before CC.EN: sequence error.
    assert_eq!(
        connect_err(&t, 1, &connect_sqe(1, 127, 0), &data).status(),
        NvmeStatus::COMMAND_SEQUENCE_ERROR
    );
    prop_set_cc(&c, Cc::ENABLE_DEFAULT);
    assert_eq!(set_feature(&c, fid::NUMBER_OF_QUEUES, 0x0001_0001).dw0(), 0x0001_0001, "2 queues granted");
    let q = t.connect(1, &connect_sqe(1, 127, 0), &data, 0).unwrap();
    assert_eq!((q.qid, q.sq_entries), (1, 128));
    assert!(Arc::ptr_eq(&q.controller, &c));
    assert_eq!(q.response.dw0(), u32::from(c.cntlid()));
    assert_eq!(
        connect_err(&t, 1, &connect_sqe(1, 127, 0), &data).status(),
        NvmeStatus::COMMAND_SEQUENCE_ERROR,
        "QID in use"
    );
    t.disconnect(&c, 1);
    assert!(t.connect(1, &connect_sqe(1, 127, 0), &data, 0).is_ok(), "QID free again");
    let e = connect_err(&t, 1, &connect_sqe(3, 127, 0), &data);
    assert_eq!(e.status(), NvmeStatus::CONNECT_INVALID_PARAMETERS);
    assert_eq!(
        InvalidParameter::from_dw0(e.dw0()),
        InvalidParameter::Command { offset: connect_sqe_offset::QID }
    );
    assert_eq!(
        set_feature(&c, fid::NUMBER_OF_QUEUES, 0).status(),
        NvmeStatus::COMMAND_SEQUENCE_ERROR,
        "fixed while queues exist"
    );
    // Unknown cntlid, other port, other host.
    let e = connect_err(&t, 1, &connect_sqe(2, 127, 0), &connect_data(SUBNQN, 99));
    assert_eq!(
        InvalidParameter::from_dw0(e.dw0()),
        InvalidParameter::Data { offset: connect_data_offset::CNTLID }
    );
    assert_eq!(
        connect_err(&t, 3, &connect_sqe(2, 127, 0), &data).status(),
        NvmeStatus::CONNECT_INVALID_PARAMETERS
    );
    let mut other = ConnectData::from_bytes(&data).unwrap();
    other.set_hostnqn("nqn.2014-08.org.nvmexpress:uuid:host-2");
    assert_eq!(
        connect_err(&t, 1, &connect_sqe(2, 127, 0), &other.0).status(),
        NvmeStatus::CONNECT_INVALID_PARAMETERS
    );
    // After the admin queue goes, its I/O queues cannot join.
    t.disconnect(&c, 0);
    assert_eq!(
        connect_err(&t, 1, &connect_sqe(2, 127, 0), &data).status(),
        NvmeStatus::CONNECT_INVALID_PARAMETERS
    );
    assert!(!c.is_ready());
}

// ---- properties ----

#[test]
fn properties_enable_and_shut_down() {
    let t = target();
    let c = t.connect(1, &connect_sqe(0, 31, 0), &connect_data(SUBNQN, 0xFFFF), 0).unwrap().controller;
    let cap = prop_get(&c, property::CAP, true);
    let cap = Cap(u64::from(cap.dw0()) | (u64::from(cap.dw1()) << 32));
    assert_eq!(cap.mqes0(), 127);
    assert!(cap.cqr());
    assert_eq!(cap.css(), 1);
    assert_eq!(cap.mpsmin(), 0);
    assert!(cap.timeout_500ms() > 0);
    assert_eq!(prop_get(&c, property::VS, false).dw0(), 0x0001_0400);
    assert_eq!(prop_get(&c, property::CSTS, false).dw0(), 0);
    // Admin commands other than properties wait for CC.EN.
    assert_eq!(identify(&c, cns::CONTROLLER, 0).0.status(), NvmeStatus::COMMAND_SEQUENCE_ERROR);
    prop_set_cc(&c, Cc::ENABLE_DEFAULT);
    assert_eq!(prop_get(&c, property::CC, false).dw0(), Cc::ENABLE_DEFAULT.0);
    assert!(Csts(prop_get(&c, property::CSTS, false).dw0()).rdy());
    assert!(c.is_ready());
    prop_set_cc(&c, Cc(Cc::ENABLE_DEFAULT.0 | (1 << 14)));
    let st = Csts(prop_get(&c, property::CSTS, false).dw0());
    assert_eq!(st.shst(), 2, "shutdown complete");
    prop_set_cc(&c, Cc(0));
    assert!(!Csts(prop_get(&c, property::CSTS, false).dw0()).rdy());
    assert!(!c.is_ready());
    // A bad CC (wrong IOSQES) sets CFS instead of RDY.
    prop_set_cc(&c, Cc(1 | (7 << 16) | (4 << 20)));
    let st = Csts(prop_get(&c, property::CSTS, false).dw0());
    assert!(st.cfs() && !st.rdy());
    // Errors: wrong size, unknown offset, read-only property, bad ATTRIB.
    assert_eq!(prop_get(&c, property::CAP, false).status(), NvmeStatus::INVALID_FIELD);
    assert_eq!(prop_get(&c, property::NSSR, false).status(), NvmeStatus::INVALID_FIELD);
    let mut s = Sqe::default();
    s.set_opcode(admin::FABRICS);
    s.set_fctype(fctype::PROPERTY_SET);
    PropertySet { eight_bytes: false, offset: property::CSTS, value: 1 }.write(&mut s);
    assert_eq!(admin_cmd(&c, &s).0.status(), NvmeStatus::INVALID_FIELD);
    s.set_fctype(fctype::PROPERTY_GET);
    s.set_cdw10(2);
    assert_eq!(admin_cmd(&c, &s).0.status(), NvmeStatus::INVALID_FIELD);
    s.set_fctype(fctype::CONNECT);
    assert_eq!(admin_cmd(&c, &s).0.status(), NvmeStatus::COMMAND_SEQUENCE_ERROR);
    s.set_fctype(fctype::AUTHENTICATION_SEND);
    assert_eq!(admin_cmd(&c, &s).0.status(), NvmeStatus::INVALID_OPCODE);
}

// ---- Identify ----

#[test]
fn identify_controller_reports_what_linux_reads() {
    let t = target();
    let c = enabled(&t, 1);
    let (cqe, data) = identify(&c, cns::CONTROLLER, 0);
    assert!(cqe.status().is_success());
    let mut id = IdentifyController::default();
    id.0.copy_from_slice(&data);
    assert_eq!(id.cntlid(), c.cntlid());
    assert_eq!(id.sn(), Some("TANDEM0001"));
    assert_eq!(id.mn(), Some("Tandem"));
    assert_eq!(id.subnqn(), Some(SUBNQN));
    assert_eq!(id.cntrltype(), 1);
    assert_eq!(id.cmic() & 0x0b, 0x0b, "multi-port, multi-controller, ANA");
    assert_eq!(id.oaes() & 0x900, 0x900, "ANA change and NS attribute notices");
    assert_eq!(id.mdts(), 5, "128 KiB = 2^5 * 4 KiB");
    assert_eq!(id.ver(), 0x0001_0400);
    assert_eq!(id.nn(), 3);
    assert_eq!(id.mnan(), 3, "Linux requires 0 < MNAN <= NN");
    assert_eq!(id.oncs(), 0x1c, "Write Zeroes, Dataset Management, Save and Select");
    assert_eq!((id.sqes(), id.cqes(), id.maxcmd()), (0x66, 0x44, 128));
    assert_eq!((id.anagrpmax(), id.nanagrpid(), id.anatt()), (32, 32, 10));
    assert_eq!(id.anacap() & 0x1d, 0x1d);
    assert_eq!(id.ioccsz(), (64 + 8192) / 16);
    assert_eq!((id.iorcsz(), id.icdoff(), id.msdbd()), (1, 0, 1));
    assert_eq!(id.sgls(), 0x10_0001, "SGLs with offsets, no keyed SGLs on TCP");
    assert_eq!(id.aerl(), 3);
    assert_eq!(id.vwc() & 1, 0, "no volatile write cache");
    let rdma = enabled(&t, 3);
    assert_eq!(rdma.identify_controller().sgls() & (1 << 2), 1 << 2, "keyed SGLs on RDMA");
}

#[test]
fn identify_namespace_lists_and_descriptors() {
    let t = target();
    let c = enabled(&t, 1);
    let (cqe, data) = identify(&c, cns::NAMESPACE, 1);
    assert!(cqe.status().is_success());
    let mut ns = IdentifyNamespace::default();
    ns.0.copy_from_slice(&data);
    assert_eq!((ns.nsze(), ns.ncap(), ns.nuse()), (256, 256, 256));
    assert_eq!(ns.lbaf0_block_bytes(), Some(4096));
    assert_eq!((ns.nlbaf(), ns.flbas(), ns.nmic(), ns.anagrpid()), (0, 0, 1, 1));
    assert_eq!(ns.nguid(), c.subsystem().namespaces[0].nguid);
    let (_, data) = identify(&c, cns::NAMESPACE, 3);
    ns.0.copy_from_slice(&data);
    assert_eq!((ns.nsze(), ns.lbaf0_lbads(), ns.anagrpid()), (2048, 9, 2));
    // NSID 2 is valid (<= NN) but inactive: zeros. 0 and > NN are invalid.
    let (cqe, data) = identify(&c, cns::NAMESPACE, 2);
    assert!(cqe.status().is_success() && data.iter().all(|&b| b == 0) && data.len() == 4096);
    assert_eq!(identify(&c, cns::NAMESPACE, 0).0.status(), NvmeStatus::INVALID_NAMESPACE);
    assert_eq!(identify(&c, cns::NAMESPACE, 4).0.status(), NvmeStatus::INVALID_NAMESPACE);
    assert_eq!(identify(&c, cns::NAMESPACE, 0xFFFF_FFFF).0.status(), NvmeStatus::INVALID_NAMESPACE);

    let (cqe, data) = identify(&c, cns::ACTIVE_NAMESPACE_LIST, 0);
    assert!(cqe.status().is_success());
    assert_eq!(identify::parse_active_namespace_list(&data), vec![1, 3]);
    assert_eq!(
        identify::parse_active_namespace_list(&identify(&c, cns::ACTIVE_NAMESPACE_LIST, 1).1),
        vec![3]
    );
    assert_eq!(
        identify(&c, cns::ACTIVE_NAMESPACE_LIST, 0xFFFF_FFFF).0.status(),
        NvmeStatus::INVALID_NAMESPACE
    );

    let (cqe, data) = identify(&c, cns::NAMESPACE_ID_DESCRIPTORS, 3);
    assert!(cqe.status().is_success());
    let n = &c.subsystem().namespaces[1];
    assert_eq!(
        identify::parse_ns_id_descriptor_list(&data).unwrap(),
        vec![NsIdDescriptor::Nguid(n.nguid), NsIdDescriptor::Uuid(n.uuid), NsIdDescriptor::Csi(0)]
    );
    assert_eq!(identify(&c, cns::NAMESPACE_ID_DESCRIPTORS, 2).0.status(), NvmeStatus::INVALID_NAMESPACE);

    let (cqe, data) = identify(&c, cns::CSI_CONTROLLER, 0);
    assert!(cqe.status().is_success() && data.len() == 4096);
    assert!(identify(&c, cns::CSI_NAMESPACE, 1).0.status().is_success());
    assert_eq!(identify(&c, 0x10, 0).0.status(), NvmeStatus::INVALID_FIELD, "unknown CNS");
    let mut s = admin_sqe(admin::IDENTIFY, 1);
    s.set_cdw10(u32::from(cns::CSI_CONTROLLER));
    s.set_cdw11(2 << 24);
    assert_eq!(admin_cmd(&c, &s).0.status(), NvmeStatus::INVALID_FIELD, "unknown CSI");
    s.set_cdw10(u32::from(cns::CONTROLLER));
    s.set_sgl(SglDescriptor::new(0, 1024, SGL_ID_TRANSPORT_DATA_BLOCK));
    let (cqe, data) = admin_cmd(&c, &s);
    assert_eq!(cqe.status(), NvmeStatus::DATA_SGL_LENGTH_INVALID);
    assert!(data.is_empty());
}

// ---- log pages ----

fn log_req(lid_value: u8, bytes: u32) -> GetLogPage {
    GetLogPage { lid: lid_value, dword_count: bytes / 4, ..Default::default() }
}

#[test]
fn log_pages_error_smart_changed_and_ana() {
    let t = target();
    let c = enabled(&t, 1);
    let (cqe, data) = get_log(&c, log_req(lid::ERROR_INFORMATION, 64));
    assert!(cqe.status().is_success());
    assert!(data.iter().all(|&b| b == 0) && data.len() == 64);
    let (cqe, data) = get_log(&c, log_req(lid::SMART_HEALTH, 512));
    assert!(cqe.status().is_success());
    assert_eq!((data[0], data[3], data.len()), (0, 100, 512));
    let (cqe, data) = get_log(&c, log_req(lid::CHANGED_NAMESPACE_LIST, 4096));
    assert!(cqe.status().is_success() && data.iter().all(|&b| b == 0));

    let (cqe, data) = get_log(&c, log_req(lid::ANA, 4096));
    assert!(cqe.status().is_success());
    assert_eq!(data.len(), 4096);
    let (count, groups) = log::parse_ana_log(&data).unwrap();
    assert_eq!(count, t.ana_change_count());
    assert_eq!(groups.len(), 2);
    assert_eq!(
        (groups[0].anagrpid, groups[0].state, groups[0].nsids.clone()),
        (1, AnaState::Optimized, vec![1])
    );
    assert_eq!(
        (groups[1].anagrpid, groups[1].state, groups[1].nsids.clone()),
        (2, AnaState::Inaccessible, vec![3])
    );
    // Return Groups Only.
    let (_, data) = get_log(&c, GetLogPage { lsp: 1, ..log_req(lid::ANA, 4096) });
    let (_, groups) = log::parse_ana_log(&data).unwrap();
    assert!(groups.iter().all(|g| g.nsids.is_empty()));
    // Offset honoured: the second descriptor starts at 16 + 32 + 4.
    let (cqe, tail) = get_log(&c, GetLogPage { offset_bytes: 52, ..log_req(lid::ANA, 8) });
    assert!(cqe.status().is_success());
    assert_eq!(&tail[0..4], &[2, 0, 0, 0]);
    assert_eq!(
        get_log(&c, GetLogPage { offset_bytes: 2, ..log_req(lid::ANA, 8) }).0.status(),
        NvmeStatus::INVALID_FIELD
    );
    assert_eq!(
        get_log(&c, GetLogPage { offset_bytes: 8192, ..log_req(lid::ANA, 8) }).0.status(),
        NvmeStatus::INVALID_FIELD
    );
    assert_eq!(
        get_log(&c, log_req(lid::DISCOVERY, 1024)).0.status(),
        NvmeStatus::INVALID_LOG_PAGE,
        "I/O controller"
    );
    assert_eq!(get_log(&c, log_req(0x05, 64)).0.status(), NvmeStatus::INVALID_LOG_PAGE);
    assert_eq!(
        get_log(&c, log_req(lid::ANA, 256 * 1024)).0.status(),
        NvmeStatus::INVALID_FIELD,
        "above MDTS"
    );
}

#[test]
fn firmware_slot_log_matches_identify() {
    let t = target();
    let c = enabled(&t, 1);
    let id = IdentifyController(identify(&c, cns::CONTROLLER, 0).1.try_into().unwrap());
    assert_eq!(id.frmw(), 0x3, "one slot, slot 1 read-only");
    let (cqe, page) = get_log(&c, log_req(lid::FIRMWARE_SLOT, 512));
    assert_eq!(cqe.status(), NvmeStatus::SUCCESS, "log 03h is mandatory for an I/O controller");
    assert_eq!(page.len(), 512);
    assert_eq!(page[0] & 0x7, 1, "AFI: slot 1 active");
    assert_eq!((page[0] >> 4) & 0x7, 0, "AFI: no slot chosen for the next reset");
    assert_eq!(&page[8..16], &id.0[64..72], "FRS1 equals Identify FR");
    assert!(page[16..].iter().all(|&b| b == 0), "FRS2..FRS7: no such slots");
    // Offset and length honoured like other log pages.
    let (cqe, part) = get_log(&c, GetLogPage { offset_bytes: 8, ..log_req(lid::FIRMWARE_SLOT, 8) });
    assert_eq!(cqe.status(), NvmeStatus::SUCCESS);
    assert_eq!(part, page[8..16], "window at offset 8");
    let d = t.connect(1, &connect_sqe(0, 31, 0), &connect_data(DISCOVERY_NQN, 0xFFFF), 0).unwrap().controller;
    prop_set_cc(&d, Cc::ENABLE_DEFAULT);
    assert_eq!(get_log(&d, log_req(lid::FIRMWARE_SLOT, 512)).0.status(), NvmeStatus::INVALID_LOG_PAGE);
}

#[test]
fn identify_reports_a_nonzero_vendor_id() {
    let t = target();
    let c = enabled(&t, 1);
    let id = IdentifyController(identify(&c, cns::CONTROLLER, 0).1.try_into().unwrap());
    assert_eq!((id.vid(), id.ssvid()), (PCI_VENDOR_ID_FOR_TESTS, PCI_VENDOR_ID_FOR_TESTS));
    assert_ne!(id.vid(), 0);
    assert_ne!(id.oncs() & identify::oncs::SAVE_AND_SELECT, 0, "SEL is honoured, so ONCS says so");
}

const PCI_VENDOR_ID_FOR_TESTS: u16 = controller::PCI_VENDOR_ID;

#[test]
fn mandatory_features_arbitration_power_and_temperature() {
    use tandem_nvmf::spec::features::TemperatureThreshold;
    let t = target();
    let c = enabled(&t, 1);
    for f in [fid::ARBITRATION, fid::POWER_MANAGEMENT, fid::TEMPERATURE_THRESHOLD] {
        let g = get_feature(&c, f, 0);
        assert_eq!(g.status(), NvmeStatus::SUCCESS, "Get Features {f:#x}");
        assert_eq!(get_feature(&c, f, 3).dw0(), 1 << 2, "FID {f:#x}: changeable, not saveable");
    }
    assert_eq!(get_feature(&c, fid::ARBITRATION, 0).dw0(), 0x7, "arbitration burst: no limit");
    assert_eq!(get_feature(&c, fid::POWER_MANAGEMENT, 0).dw0(), 0, "power state 0");
    // Temperature Threshold takes TMPSEL/THSEL in CDW11.
    let temp = |c: &Controller, sel: u8, tmpsel: u8, thsel: u8| {
        let mut s = admin_sqe(admin::GET_FEATURES, 4);
        s.set_cdw10(u32::from(fid::TEMPERATURE_THRESHOLD) | (u32::from(sel) << 8));
        s.set_cdw11(TemperatureThreshold { kelvin: 0, tmpsel, thsel }.cdw11());
        admin_cmd(c, &s).0
    };
    assert_eq!(temp(&c, 0, 0, 0).dw0(), 343, "over-temperature default 343 K");
    assert_eq!(temp(&c, 0, 0, 1).dw0(), 0, "under-temperature default");
    assert_eq!(temp(&c, 0, 0, 2).status(), NvmeStatus::INVALID_FIELD, "THSEL 10b reserved");
    assert_eq!(temp(&c, 0, 3, 0).status(), NvmeStatus::INVALID_FIELD, "no sensor 3");
    let set = TemperatureThreshold { kelvin: 350, tmpsel: 0, thsel: 0 }.cdw11();
    assert_eq!(set_feature(&c, fid::TEMPERATURE_THRESHOLD, set).status(), NvmeStatus::SUCCESS);
    assert_eq!(temp(&c, 0, 0, 0).dw0(), 350, "current after Set");
    assert_eq!(temp(&c, 1, 0, 0).dw0(), 343, "default unchanged");
    let bad = TemperatureThreshold { kelvin: 350, tmpsel: 2, thsel: 0 }.cdw11();
    assert_eq!(set_feature(&c, fid::TEMPERATURE_THRESHOLD, bad).status(), NvmeStatus::INVALID_FIELD);
    // Power Management: only power state 0 exists (NPSS = 0).
    assert_eq!(set_feature(&c, fid::POWER_MANAGEMENT, 1).status(), NvmeStatus::INVALID_FIELD);
    assert_eq!(set_feature(&c, fid::POWER_MANAGEMENT, 1 << 5).status(), NvmeStatus::SUCCESS);
    assert_eq!(get_feature(&c, fid::POWER_MANAGEMENT, 0).dw0(), 1 << 5, "workload hint kept");
    assert_eq!(set_feature(&c, fid::ARBITRATION, 0x0302_0103).status(), NvmeStatus::SUCCESS);
    assert_eq!(get_feature(&c, fid::ARBITRATION, 0).dw0(), 0x0302_0103);
    assert_eq!(get_feature(&c, fid::ARBITRATION, 1).dw0(), 0x7, "default");
    // Not on a discovery controller.
    let d = t.connect(1, &connect_sqe(0, 31, 0), &connect_data(DISCOVERY_NQN, 0xFFFF), 0).unwrap().controller;
    prop_set_cc(&d, Cc::ENABLE_DEFAULT);
    assert_eq!(get_feature(&d, fid::ARBITRATION, 0).status(), NvmeStatus::INVALID_FIELD);
}

// ---- features, keep-alive, abort, opcodes ----

#[test]
fn features_get_and_set() {
    let t = target();
    let c = enabled(&t, 1);
    assert_eq!(
        QueueCounts::decode(get_feature(&c, fid::NUMBER_OF_QUEUES, 0).dw0()).submission,
        4,
        "default: the max"
    );
    let granted = set_feature(&c, fid::NUMBER_OF_QUEUES, 0x003F_003F);
    assert_eq!(
        QueueCounts::decode(granted.dw0()),
        QueueCounts { submission: 4, completion: 4 },
        "capped at io_queues_max"
    );
    assert_eq!(set_feature(&c, fid::NUMBER_OF_QUEUES, 0xFFFF).status(), NvmeStatus::INVALID_FIELD);
    assert_eq!(set_feature(&c, fid::NUMBER_OF_QUEUES, 0x0000_0001).dw0(), 0, "1 of each (min of the two)");
    assert_eq!(get_feature(&c, fid::NUMBER_OF_QUEUES, 0).dw0(), 0);

    assert!(set_feature(&c, fid::ASYNC_EVENT_CONFIGURATION, aec::ANA_CHANGE_NOTICES).status().is_success());
    assert_eq!(get_feature(&c, fid::ASYNC_EVENT_CONFIGURATION, 0).dw0(), aec::ANA_CHANGE_NOTICES);
    assert_eq!(
        set_feature(&c, fid::ASYNC_EVENT_CONFIGURATION, aec::DISCOVERY_LOG_CHANGE_NOTICES).status(),
        NvmeStatus::INVALID_FIELD
    );

    assert!(set_feature(&c, fid::KEEP_ALIVE_TIMER, 3000).status().is_success());
    assert_eq!(get_feature(&c, fid::KEEP_ALIVE_TIMER, 0).dw0(), 3000);
    assert_eq!(c.kato_ms(), 3000);

    // No volatile write cache configured: feature 06h is invalid.
    assert_eq!(set_feature(&c, fid::VOLATILE_WRITE_CACHE, 1).status(), NvmeStatus::INVALID_FIELD);
    assert_eq!(get_feature(&c, fid::VOLATILE_WRITE_CACHE, 0).status(), NvmeStatus::INVALID_FIELD);
    assert_eq!(get_feature(&c, 0x05, 0).status(), NvmeStatus::INVALID_FIELD, "Error Recovery: not offered");
    assert_eq!(get_feature(&c, fid::KEEP_ALIVE_TIMER, 3).dw0(), 1 << 2, "changeable");
    assert_eq!(get_feature(&c, fid::KEEP_ALIVE_TIMER, 5).status(), NvmeStatus::INVALID_FIELD);
    let mut s = admin_sqe(admin::SET_FEATURES, 3);
    s.set_cdw10(u32::from(fid::KEEP_ALIVE_TIMER) | (1 << 31));
    assert_eq!(admin_cmd(&c, &s).0.status(), NvmeStatus::FEATURE_NOT_SAVEABLE);

    let vwc = target_with(&config_text(1, 10, "", "allow_any_host = true\nvolatile_write_cache = true"));
    let v = enabled(&vwc, 1);
    assert_eq!(v.identify_controller().vwc() & 1, 1);
    assert_eq!(get_feature(&v, fid::VOLATILE_WRITE_CACHE, 0).dw0(), 0);
    assert!(set_feature(&v, fid::VOLATILE_WRITE_CACHE, 1).status().is_success());
    assert_eq!(get_feature(&v, fid::VOLATILE_WRITE_CACHE, 0).dw0(), 1);
}

#[test]
fn keep_alive_abort_and_unknown_opcodes() {
    let t = target();
    let c = enabled(&t, 1);
    assert!(admin_cmd(&c, &admin_sqe(admin::KEEP_ALIVE, 5)).0.status().is_success());
    assert_eq!(admin_cmd(&c, &admin_sqe(admin::ABORT, 6)).0.dw0() & 1, 1, "not aborted");
    assert_eq!(admin_cmd(&c, &admin_sqe(0x80, 7)).0.status(), NvmeStatus::INVALID_OPCODE);
    // I/O opcodes that are not also admin opcodes we implement (02h is Get
    // Log Page on the admin queue): Flush 00h / Write 01h are Delete and
    // Create I/O SQ there, which Fabrics does not have.
    assert_eq!(admin_cmd(&c, &admin_sqe(nvm::FLUSH, 8)).0.status(), NvmeStatus::INVALID_OPCODE);
    assert_eq!(admin_cmd(&c, &admin_sqe(nvm::WRITE, 8)).0.status(), NvmeStatus::INVALID_OPCODE);
}

#[test]
fn keep_alive_expiry() {
    let t = target();
    let c =
        t.connect(1, &connect_sqe(0, 31, 1000), &connect_data(SUBNQN, 0xFFFF), 10_000).unwrap().controller;
    assert!(!c.is_expired(10_500));
    assert!(!c.is_expired(11_000), "exactly KATO is not yet expired");
    assert!(c.is_expired(11_001));
    c.keep_alive_touch(11_000);
    assert!(!c.is_expired(11_900));
    c.keep_alive_touch(5); // a stale stamp never moves the timer back
    assert!(!c.is_expired(11_900));
    assert!(c.is_expired(12_001));
    // KATO 0 disables it for an I/O controller; discovery gets the default.
    let off = t.connect(1, &connect_sqe(0, 31, 0), &connect_data(SUBNQN, 0xFFFF), 0).unwrap().controller;
    assert!(!off.is_expired(u64::MAX));
    let d = t.connect(1, &connect_sqe(0, 31, 0), &connect_data(DISCOVERY_NQN, 0xFFFF), 0).unwrap().controller;
    assert_eq!(d.kato_ms(), 120_000);
    assert!(d.is_expired(120_001));
}

// ---- asynchronous events and ANA changes ----

#[test]
fn ana_change_completes_a_parked_aer() {
    let t = target();
    let c = enabled(&t, 1);
    set_feature(&c, fid::ASYNC_EVENT_CONFIGURATION, aec::ANA_CHANGE_NOTICES);
    let aer = admin_sqe(admin::ASYNC_EVENT_REQUEST, 40);
    assert_eq!(c.exec_admin(&aer, &[], &mut Vec::new()), AdminOutcome::AsyncEventParked);
    assert!(!c.async_event_ready());
    assert_eq!(c.take_async_event(), None);
    let before = t.ana_change_count();
    assert!(t.set_ana_state(Some(1), 2, AnaState::Optimized));
    assert_eq!(t.ana_change_count(), before + 1);
    assert!(c.async_event_ready());
    let done = c.take_async_event().unwrap();
    assert_eq!(done.cid(), 40);
    assert!(done.status().is_success());
    assert_eq!(done.dw0(), 0x000C_0302, "notice / ANA change / log 0Ch");
    assert_eq!(AsyncEvent::from_dw0(done.dw0()), AsyncEvent::ANA_CHANGE);
    assert!(!c.async_event_ready());
    // The I/O path sees the new state at once.
    let (_, data) = get_log(&c, GetLogPage { rae: true, ..log_req(lid::ANA, 4096) });
    assert_eq!(log::parse_ana_log(&data).unwrap().1[1].state, AnaState::Optimized);

    // Masked until the log is read with RAE clear: another change is not
    // reported yet.
    assert_eq!(
        c.exec_admin(&admin_sqe(admin::ASYNC_EVENT_REQUEST, 41), &[], &mut Vec::new()),
        AdminOutcome::AsyncEventParked
    );
    t.set_ana_state(Some(1), 2, AnaState::Change);
    assert_eq!(c.take_async_event(), None, "masked: RAE was set");
    get_log(&c, log_req(lid::ANA, 4096));
    t.set_ana_state(None, 2, AnaState::Inaccessible);
    assert_eq!(c.take_async_event().map(|q| (q.cid(), q.dw0())), Some((41, 0x000C_0302)));
}

#[test]
fn ana_events_respect_aec_port_and_group() {
    let t = target();
    let off = enabled(&t, 1); // AEC not set
    let other_port = enabled(&t, 3);
    set_feature(&other_port, fid::ASYNC_EVENT_CONFIGURATION, aec::ANA_CHANGE_NOTICES);
    for c in [&off, &other_port] {
        assert_eq!(
            c.exec_admin(&admin_sqe(admin::ASYNC_EVENT_REQUEST, 1), &[], &mut Vec::new()),
            AdminOutcome::AsyncEventParked
        );
    }
    t.set_ana_state(Some(1), 1, AnaState::Change);
    assert_eq!(off.take_async_event(), None, "AEC disables ANA notices");
    assert_eq!(other_port.take_async_event(), None, "another port");
    assert!(!t.set_ana_state(Some(9), 1, AnaState::Change), "unknown port");
    assert!(!t.set_ana_state(Some(1), 0, AnaState::Change), "group 0");
    assert!(!t.set_ana_state(None, 33, AnaState::Change), "above ANAGRPMAX");
    // A pending event completes the next AER at once.
    t.set_ana_state(None, 1, AnaState::Optimized);
    let c = enabled(&t, 1);
    set_feature(&c, fid::ASYNC_EVENT_CONFIGURATION, aec::ANA_CHANGE_NOTICES);
    t.set_ana_state(Some(1), 2, AnaState::Optimized);
    let done = complete(c.exec_admin(&admin_sqe(admin::ASYNC_EVENT_REQUEST, 77), &[], &mut Vec::new()));
    assert_eq!((done.cid(), done.dw0()), (77, 0x000C_0302));
}

#[test]
fn aer_limit_and_teardown() {
    let t = target();
    let c = enabled(&t, 1);
    for cid in 0..4 {
        assert_eq!(
            c.exec_admin(&admin_sqe(admin::ASYNC_EVENT_REQUEST, cid), &[], &mut Vec::new()),
            AdminOutcome::AsyncEventParked
        );
    }
    let over = complete(c.exec_admin(&admin_sqe(admin::ASYNC_EVENT_REQUEST, 4), &[], &mut Vec::new()));
    assert_eq!(over.status(), NvmeStatus::ASYNC_EVENT_LIMIT_EXCEEDED);
    let drained = c.drain_parked_async_events();
    assert_eq!(drained.iter().map(Cqe::cid).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert!(drained.iter().all(|q| q.status() == NvmeStatus::ABORTED_SQ_DELETION));
    assert!(c.drain_parked_async_events().is_empty());
}

// ---- I/O checks ----

fn io(opc: u8, nsid: u32, slba: u64, nlb0: u16, sgl: SglDescriptor) -> Sqe {
    let mut s = Sqe::default();
    s.set_opcode(opc);
    s.set_cid(0x77);
    s.set_nsid(nsid);
    s.set_slba(slba);
    s.set_cdw12(u32::from(nlb0));
    s.set_psdt(1);
    s.set_sgl(sgl);
    s
}

fn tcp_sgl(len: u32) -> SglDescriptor {
    SglDescriptor::new(0, len, SGL_ID_TRANSPORT_DATA_BLOCK)
}

#[test]
fn io_reads_and_writes_are_checked() {
    let t = target();
    let c = enabled(&t, 1);
    let r = c.check_io(&io(nvm::READ, 1, 10, 1, tcp_sgl(8192))).unwrap();
    assert_eq!(
        r,
        IoCommand {
            kind: IoKind::Read,
            cid: 0x77,
            nsid: 1,
            ns_index: 0,
            slba: 10,
            block_count: 2,
            fua: false,
            data_bytes: 8192,
            data: DataLocation::Transport
        }
    );
    let mut w = io(nvm::WRITE, 1, 0, 0, SglDescriptor::new(0, 4096, SGL_ID_DATA_BLOCK_OFFSET));
    w.set_cdw12(1 << 30);
    let w = c.check_io(&w).unwrap();
    assert_eq!((w.kind, w.data, w.fua, w.data_bytes), (IoKind::Write, DataLocation::InCapsule, true, 4096));
    // Last block is fine; one past is out of range; overflow is caught.
    assert!(c.check_io(&io(nvm::READ, 1, 255, 0, tcp_sgl(4096))).is_ok());
    assert_eq!(c.check_io(&io(nvm::READ, 1, 256, 0, tcp_sgl(4096))), Err(NvmeStatus::LBA_OUT_OF_RANGE));
    assert_eq!(c.check_io(&io(nvm::READ, 1, u64::MAX, 0, tcp_sgl(4096))), Err(NvmeStatus::LBA_OUT_OF_RANGE));
    // NLB 0xFFFF is 65,536 blocks: 256 MiB, over MDTS.
    assert_eq!(c.check_io(&io(nvm::READ, 1, 0, 0xFFFF, tcp_sgl(0))), Err(NvmeStatus::INVALID_FIELD));
    assert_eq!(
        c.check_io(&io(nvm::READ, 1, 0, 32, tcp_sgl(33 * 4096))),
        Err(NvmeStatus::INVALID_FIELD),
        "33 blocks > 128 KiB"
    );
    assert!(c.check_io(&io(nvm::READ, 1, 0, 31, tcp_sgl(32 * 4096))).is_ok(), "exactly MDTS");
    // Namespace checks.
    assert_eq!(c.check_io(&io(nvm::READ, 2, 0, 0, tcp_sgl(4096))), Err(NvmeStatus::INVALID_NAMESPACE));
    assert_eq!(c.check_io(&io(nvm::READ, 0, 0, 0, tcp_sgl(4096))), Err(NvmeStatus::INVALID_NAMESPACE));
    assert_eq!(
        c.check_io(&io(nvm::READ, 0xFFFF_FFFF, 0, 0, tcp_sgl(4096))),
        Err(NvmeStatus::INVALID_NAMESPACE)
    );
    // Opcodes.
    assert_eq!(c.check_io(&io(0x05, 1, 0, 0, tcp_sgl(0))), Err(NvmeStatus::INVALID_OPCODE));
    assert_eq!(c.check_io(&io(admin::IDENTIFY, 1, 0, 0, tcp_sgl(0))), Err(NvmeStatus::INVALID_OPCODE));
    let mut fused = io(nvm::READ, 1, 0, 0, tcp_sgl(4096));
    fused.0[1] |= 1;
    assert_eq!(c.check_io(&fused), Err(NvmeStatus::INVALID_FIELD));
}

#[test]
fn io_sgl_checks() {
    let t = target();
    let c = enabled(&t, 1);
    assert_eq!(c.check_io(&io(nvm::READ, 1, 0, 0, tcp_sgl(512))), Err(NvmeStatus::DATA_SGL_LENGTH_INVALID));
    assert_eq!(
        c.check_io(&io(nvm::READ, 1, 0, 0, SglDescriptor::new(0, 4096, SGL_ID_DATA_BLOCK_OFFSET))),
        Err(NvmeStatus::SGL_DESCRIPTOR_TYPE_INVALID),
        "reads cannot use in-capsule data"
    );
    assert_eq!(
        c.check_io(&io(nvm::WRITE, 1, 0, 0, SglDescriptor::new(16, 4096, SGL_ID_DATA_BLOCK_OFFSET))),
        Err(NvmeStatus::SGL_OFFSET_INVALID)
    );
    assert_eq!(
        c.check_io(&io(nvm::WRITE, 1, 0, 2, SglDescriptor::new(0, 3 * 4096, SGL_ID_DATA_BLOCK_OFFSET))),
        Err(NvmeStatus::DATA_SGL_LENGTH_INVALID),
        "in-capsule data above 8 KiB"
    );
    assert_eq!(
        c.check_io(&io(nvm::WRITE, 1, 0, 0, SglDescriptor::new(0, 4096, SGL_ID_KEYED_DATA_BLOCK))),
        Err(NvmeStatus::SGL_DESCRIPTOR_TYPE_INVALID),
        "keyed SGL on a TCP port"
    );
    let mut prp = io(nvm::READ, 1, 0, 0, tcp_sgl(4096));
    prp.set_psdt(0);
    assert_eq!(c.check_io(&prp), Err(NvmeStatus::INVALID_FIELD));
    // RDMA: keyed descriptors with a 3-byte length and a key.
    let r = enabled(&t, 3);
    let mut keyed = SglDescriptor::new(0x1000, 4096, SGL_ID_KEYED_DATA_BLOCK | 0xA);
    keyed.0[11..15].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
    let cmd = r.check_io(&io(nvm::READ, 1, 0, 0, keyed)).unwrap();
    assert_eq!(cmd.data, DataLocation::Keyed { address: 0x1000, key: 0xDEAD_BEEF });
    let short = SglDescriptor::new(0x1000, 512, SGL_ID_KEYED_DATA_BLOCK);
    assert_eq!(r.check_io(&io(nvm::READ, 1, 0, 0, short)), Err(NvmeStatus::DATA_SGL_LENGTH_INVALID));
    assert_eq!(
        r.check_io(&io(nvm::READ, 1, 0, 0, tcp_sgl(4096))),
        Err(NvmeStatus::SGL_DESCRIPTOR_TYPE_INVALID)
    );
}

#[test]
fn io_flush_write_zeroes_and_dsm() {
    let t = target();
    let c = enabled(&t, 1);
    let f = c.check_io(&io(nvm::FLUSH, 1, 0, 0, tcp_sgl(0))).unwrap();
    assert_eq!((f.kind, f.data, f.data_bytes), (IoKind::Flush, DataLocation::None, 0));
    assert_eq!(c.check_io(&io(nvm::FLUSH, 1, 0, 0, tcp_sgl(8))), Err(NvmeStatus::DATA_SGL_LENGTH_INVALID));
    let mut wz = io(nvm::WRITE_ZEROES, 1, 0, 0xFFFF, tcp_sgl(0));
    assert_eq!(c.check_io(&wz), Err(NvmeStatus::LBA_OUT_OF_RANGE), "65,536 blocks > 256");
    wz.set_cdw12(255 | (1 << 25));
    let z = c.check_io(&wz).unwrap();
    assert_eq!((z.kind, z.block_count), (IoKind::WriteZeroes { deallocate: true }, 256));
    // Namespace 3 is in group 2, inaccessible on port 1 until changed.
    t.set_ana_state(Some(1), 2, AnaState::Optimized);
    let mut dsm = io(nvm::DATASET_MANAGEMENT, 3, 0, 0, tcp_sgl(32));
    dsm.set_cdw10(1);
    dsm.set_cdw11(1 << 2);
    let d = c.check_io(&dsm).unwrap();
    assert_eq!((d.kind, d.data_bytes), (IoKind::DatasetManagement { ranges: 2, deallocate: true }, 32));
    assert_eq!(c.check_dsm_range(d.ns_index, &DsmRange::new(2040, 8)), Ok(()));
    assert_eq!(c.check_dsm_range(d.ns_index, &DsmRange::new(2041, 8)), Err(NvmeStatus::LBA_OUT_OF_RANGE));
    assert_eq!(c.check_dsm_range(d.ns_index, &DsmRange::new(u64::MAX, 8)), Err(NvmeStatus::LBA_OUT_OF_RANGE));
}

#[test]
fn io_follows_the_ana_state_of_the_port() {
    let t = target();
    let c = enabled(&t, 1);
    let read3 = io(nvm::READ, 3, 0, 0, tcp_sgl(512));
    assert_eq!(c.check_io(&read3), Err(NvmeStatus::ANA_INACCESSIBLE), "group 2 is inaccessible on port 1");
    let rdma = enabled(&t, 3);
    let mut keyed = SglDescriptor::new(0, 512, SGL_ID_KEYED_DATA_BLOCK);
    keyed.0[15] = SGL_ID_KEYED_DATA_BLOCK;
    assert!(rdma.check_io(&io(nvm::READ, 3, 0, 0, keyed)).is_ok(), "optimized on port 3");
    t.set_ana_state(Some(1), 2, AnaState::Change);
    assert_eq!(c.check_io(&read3), Err(NvmeStatus::ANA_TRANSITION));
    t.set_ana_state(Some(1), 2, AnaState::PersistentLoss);
    assert_eq!(c.check_io(&read3), Err(NvmeStatus::ANA_PERSISTENT_LOSS));
    t.set_ana_state(Some(1), 2, AnaState::NonOptimized);
    assert!(c.check_io(&read3).is_ok());
    // A controller that is reset or disconnected refuses I/O.
    prop_set_cc(&c, Cc(0));
    assert_eq!(c.check_io(&read3), Err(NvmeStatus::COMMAND_SEQUENCE_ERROR));
    t.disconnect(&rdma, 0);
    assert_eq!(rdma.check_io(&io(nvm::READ, 3, 0, 0, keyed)), Err(NvmeStatus::COMMAND_SEQUENCE_ERROR));
}

// ---- discovery ----

#[test]
fn discovery_controller_lists_local_and_remote_ports() {
    let t = target();
    let q = t.connect(1, &connect_sqe(0, 31, 0), &connect_data(DISCOVERY_NQN, 0xFFFF), 0).unwrap();
    let d = q.controller;
    prop_set_cc(&d, Cc::ENABLE_DEFAULT);
    let (cqe, data) = identify(&d, cns::CONTROLLER, 0);
    assert!(cqe.status().is_success());
    let mut id = IdentifyController::default();
    id.0.copy_from_slice(&data);
    assert_eq!(id.cntrltype(), 2);
    assert_eq!(id.subnqn(), Some(DISCOVERY_NQN));
    assert_eq!(id.cmic(), 0);
    assert_eq!(identify(&d, cns::NAMESPACE, 1).0.status(), NvmeStatus::INVALID_FIELD);
    assert_eq!(get_feature(&d, fid::NUMBER_OF_QUEUES, 0).status(), NvmeStatus::INVALID_FIELD);
    assert!(set_feature(&d, fid::ASYNC_EVENT_CONFIGURATION, aec::DISCOVERY_LOG_CHANGE_NOTICES)
        .status()
        .is_success());
    assert_eq!(get_log(&d, log_req(lid::ANA, 64)).0.status(), NvmeStatus::INVALID_LOG_PAGE);
    assert_eq!(d.check_io(&io(nvm::READ, 1, 0, 0, tcp_sgl(4096))), Err(NvmeStatus::COMMAND_SEQUENCE_ERROR));
    let io_connect = connect_err(&t, 1, &connect_sqe(1, 31, 0), &connect_data(DISCOVERY_NQN, d.cntlid()));
    assert_eq!(io_connect.status(), NvmeStatus::CONNECT_INVALID_PARAMETERS, "no I/O queues on discovery");

    // The host first reads the header, then the whole page.
    let (cqe, head) = get_log(&d, log_req(lid::DISCOVERY, 1024));
    assert!(cqe.status().is_success());
    let records = u64::from_le_bytes(head[8..16].try_into().unwrap());
    // One subsystem on 2 local + 1 remote port, plus 2 current-discovery records.
    assert_eq!(records, 5);
    let (_, page) = get_log(&d, log_req(lid::DISCOVERY, 1024 * (1 + records as u32)));
    let (generation, entries) = log::parse_discovery_log(&page).unwrap();
    assert_eq!(generation, 1);
    let nvm_entries: Vec<_> = entries.iter().filter(|e| e.subtype() == subtype::NVM).collect();
    assert_eq!(nvm_entries.len(), 3);
    assert_eq!(nvm_entries.iter().map(|e| e.portid()).collect::<Vec<_>>(), vec![1, 3, 2]);
    let remote = nvm_entries[2];
    assert_eq!(
        (remote.traddr(), remote.trsvcid(), remote.subnqn()),
        (Some("127.0.0.2"), Some("4420"), Some(SUBNQN))
    );
    assert_eq!((remote.trtype(), remote.adrfam(), remote.cntlid(), remote.asqsz()), (3, 1, 0xFFFF, 128));
    let rdma = nvm_entries[1];
    assert_eq!((rdma.trtype(), &rdma.tsas()[0..3]), (1, &[1u8, 1, 1][..]));
    let current: Vec<_> = entries.iter().filter(|e| e.subtype() == subtype::CURRENT_DISCOVERY).collect();
    assert_eq!(current.len(), 2);
    assert!(current.iter().all(|e| e.subnqn() == Some(DISCOVERY_NQN)));
}

#[test]
fn discovery_hides_subsystems_the_host_may_not_use() {
    let t = target_with(&config_text(1, 10, "", "hosts = [\"nqn.2014-08.org.nvmexpress:uuid:other\"]"));
    let d = t.connect(1, &connect_sqe(0, 31, 0), &connect_data(DISCOVERY_NQN, 0xFFFF), 0).unwrap().controller;
    prop_set_cc(&d, Cc::ENABLE_DEFAULT);
    let (_, page) = get_log(&d, log_req(lid::DISCOVERY, 8192));
    let (_, entries) = log::parse_discovery_log(&page).unwrap();
    assert!(entries.iter().all(|e| e.subtype() == subtype::CURRENT_DISCOVERY));
}

#[test]
fn missing_geometry_is_an_error() {
    let config = parse_config(&config_text(1, 10, "", "allow_any_host = true"));
    let e = TargetState::new(&config, |_, _| None).unwrap_err();
    assert_eq!(e, CtrlError::MissingGeometry { nqn: SUBNQN.into(), nsid: 1 });
    let e =
        TargetState::new(&config, |_, _| Some(NamespaceGeometry { block_size_bytes: 1000, block_count: 1 }))
            .unwrap_err();
    assert!(matches!(e, CtrlError::BadBlockSize { .. }));
    let e =
        TargetState::new(&config, |_, _| Some(NamespaceGeometry { block_size_bytes: 512, block_count: 0 }))
            .unwrap_err();
    assert!(matches!(e, CtrlError::EmptyNamespace { .. }));
}
