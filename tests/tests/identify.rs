//! Claim: Identify reports what the Linux host needs to bind a namespace to
//! native multipath, and it matches the config: CMIC with the ANA bit,
//! MDTS, IOCCSZ, SGLS, NN, ANAGRPMAX, the subsystem NQN, serial and model;
//! Identify Namespace's NMIC, ANAGRPID and NGUID; and the NGUID and UUID in
//! the Namespace Identification Descriptor list. Fields are read from the
//! raw 4096-byte structures by the offsets of NVMe Base 2.0 (Figures 275,
//! 280) and NVM Command Set 1.0 (Figure 97), not through the target's types.

use tandem_nvmf::host::{ConnectOptions, HostController};
use tandem_nvmf::spec::Sqe;
use tandem_tests::{
    start_test_node, PortSpec, TEST_BLOCK_BYTES, TEST_IN_CAPSULE_BYTES, TEST_MDTS_BYTES, TEST_MODEL,
    TEST_NGUID, TEST_NS_BYTES, TEST_SERIAL, TEST_SUBNQN, TEST_UUID,
};

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn padded(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end_matches([' ', '\0']).to_string()
}

fn identify(ctrl: &mut HostController, cns: u32, nsid: u32) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(0x06);
    sqe.set_nsid(nsid);
    sqe.set_cdw10(cns);
    let (_, d) = ctrl.admin_command(sqe, &[], 4096).unwrap_or_else(|e| panic!("Identify CNS {cns}: {e}"));
    assert_eq!(d.len(), 4096, "Identify CNS {cns} returns 4096 bytes");
    d
}

#[test]
fn identify_fields_match_the_config() {
    let port = PortSpec::fresh(1);
    let (_dir, node) = start_test_node("identify", &[port], &[], false);
    let mut ctrl =
        HostController::connect(&ConnectOptions::new(&port.addr.to_string(), TEST_SUBNQN)).expect("connect");
    let cap = ctrl.cap();
    let mpsmin_bytes = 1u32 << (12 + ((cap >> 48) & 0xf));

    let c = identify(&mut ctrl, 1, 0);
    assert_eq!(padded(&c[4..24]), TEST_SERIAL, "SN");
    assert_eq!(padded(&c[24..64]), TEST_MODEL, "MN");
    let cmic = c[76];
    assert!(cmic & (1 << 3) != 0, "CMIC bit 3: ANA reporting (CMIC {cmic:#x})");
    assert!(cmic & (1 << 1) != 0, "CMIC bit 1: more than one controller (CMIC {cmic:#x})");
    assert_eq!(mpsmin_bytes << c[77], TEST_MDTS_BYTES, "MDTS (2^{} x {mpsmin_bytes} bytes)", c[77]);
    assert_eq!(le16(&c, 78), ctrl.cntlid(), "CNTLID equals the one Connect returned");
    assert!(le32(&c, 80) >= 0x0001_0400, "VER at least 1.4: {:#x}", le32(&c, 80));
    assert!(le32(&c, 92) & (1 << 11) != 0, "OAES bit 11: ANA change notices");
    assert_eq!(c[111], 1, "CNTRLTYPE: I/O controller");
    assert!(le16(&c, 320) > 0, "KAS: keep-alive supported");
    assert!(c[342] > 0, "ANATT");
    assert!(c[343] & 0x1 != 0 && c[343] & 0x4 != 0, "ANACAP: optimized and inaccessible reported");
    let anagrpmax = le32(&c, 344);
    assert!(anagrpmax >= 1, "ANAGRPMAX covers group 1: {anagrpmax}");
    let nanagrpid = le32(&c, 348);
    assert!((1..=anagrpmax).contains(&nanagrpid), "NANAGRPID in 1..=ANAGRPMAX: {nanagrpid}");
    assert_eq!((c[512], c[513]), (0x66, 0x44), "SQES, CQES");
    assert_eq!(le32(&c, 516), 1, "NN: the largest NSID");
    let sgls = le32(&c, 536);
    assert_eq!(sgls & 0x3, 0x1, "SGLS bits 1:0: SGLs supported (SGLS {sgls:#x})");
    assert!(sgls & (1 << 20) != 0, "SGLS bit 20: offsets in data block descriptors (in-capsule data)");
    assert_eq!(sgls & (1 << 2), 0, "SGLS bit 2: no keyed SGLs on TCP");
    assert_eq!(padded(&c[768..1024]), TEST_SUBNQN, "SUBNQN");
    assert_eq!(le32(&c, 1792), (64 + TEST_IN_CAPSULE_BYTES) / 16, "IOCCSZ in 16-byte units");
    assert_eq!(le32(&c, 1796), 1, "IORCSZ: 16-byte responses");
    assert_eq!(le16(&c, 1800), 0, "ICDOFF 0");
    assert_eq!(c[1802] & 1, 0, "FCATT: dynamic controller model");
    assert!(c[1803] >= 1, "MSDBD at least 1");

    let n = identify(&mut ctrl, 0, 1);
    let nsze = u64::from(le32(&n, 0)) | (u64::from(le32(&n, 4)) << 32);
    assert_eq!(nsze, TEST_NS_BYTES / u64::from(TEST_BLOCK_BYTES), "NSZE in blocks");
    let lbads = n[128 + usize::from(n[26] & 0xf) * 4 + 2];
    assert_eq!(1u32 << lbads, TEST_BLOCK_BYTES, "LBADS of the format in use");
    assert_eq!(n[30] & 1, 1, "NMIC bit 0: the namespace may be shared (multipath)");
    assert_eq!(le32(&n, 92), 1, "ANAGRPID");
    assert_eq!(&n[104..120], &TEST_NGUID, "NGUID");

    let list = identify(&mut ctrl, 3, 1);
    let mut found = Vec::new();
    let mut at = 0;
    while at + 4 <= list.len() && list[at] != 0 {
        let (nidt, nidl) = (list[at], usize::from(list[at + 1]));
        found.push((nidt, list[at + 4..at + 4 + nidl].to_vec()));
        at += 4 + nidl;
    }
    assert!(found.contains(&(0x2, TEST_NGUID.to_vec())), "NGUID descriptor: {found:?}");
    assert!(found.contains(&(0x3, TEST_UUID.to_vec())), "UUID descriptor: {found:?}");
    assert!(found.contains(&(0x4, vec![0])), "CSI descriptor: NVM: {found:?}");
    drop(node);
}
