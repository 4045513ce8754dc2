//! Claim: the discovery controller (nqn.2014-08.org.nvmexpress.discovery)
//! lists the subsystem on every local port AND on every configured
//! `remote_ports` entry (the partner's), each with the right TRTYPE, ADRFAM,
//! TRADDR, TRSVCID, PORTID and SUBNQN (NVMe-oF 1.1, Figure 38), so a host that
//! discovers through either node learns both paths. Parsed here from the raw
//! bytes by the spec's offsets, independent of the target's own encoder.

use std::collections::BTreeSet;

use tandem_nvmf::spec::NvmeStatus;
use tandem_tests::raw::{admin_queue, assert_status};
use tandem_tests::{start_test_node, PortSpec, TEST_SUBNQN};

const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
const LID_DISCOVERY: u8 = 0x70;
const TRTYPE_TCP: u8 = 3;
const ADRFAM_IPV4: u8 = 1;
const SUBTYPE_NVM: u8 = 2;
const SUBTYPE_CURRENT_DISCOVERY: u8 = 3;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end_matches(['\0', ' ']).to_string()
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// (subtype, portid, traddr, trsvcid, subnqn) of one 1024-byte entry, after
/// checking the fields every entry of ours must have.
fn entry(e: &[u8]) -> (u8, u16, String, String, String) {
    assert_eq!(e[0], TRTYPE_TCP, "TRTYPE");
    assert_eq!(e[1], ADRFAM_IPV4, "ADRFAM");
    assert_eq!(u16::from_le_bytes([e[6], e[7]]), 0xFFFF, "CNTLID: dynamic");
    assert_eq!(e[768], 0, "TSAS SECTYPE: no security");
    // TRSVCID 63:32, SUBNQN 511:256, TRADDR 767:512.
    (e[2], u16::from_le_bytes([e[4], e[5]]), text(&e[512..768]), text(&e[32..64]), text(&e[256..512]))
}

#[test]
fn discovery_log_lists_local_and_remote_ports() {
    let p1 = PortSpec::fresh(1);
    let p2 = PortSpec::fresh(2);
    let remote = PortSpec::fresh(7); // the partner's port: nothing listens there
    let (_dir, node) = start_test_node("discovery", &[p1, p2], &[remote], false);

    for via in [p1, p2] {
        let (mut c, _) = admin_queue(via.addr, DISCOVERY_NQN, (false, false), 0);
        let (cqe, head) = c.get_log_page(LID_DISCOVERY, 1024);
        assert_status(&cqe, NvmeStatus::SUCCESS, "Get Log Page 70h header");
        let numrec = le64(&head, 8) as usize;
        assert_eq!(numrec, 5, "3 subsystem entries (2 local + 1 remote port) + 2 current-discovery entries");
        let (cqe, page) = c.get_log_page(LID_DISCOVERY, 1024 * (numrec + 1));
        assert_status(&cqe, NvmeStatus::SUCCESS, "Get Log Page 70h whole");
        assert_eq!(le64(&page, 0), le64(&head, 0), "GENCTR stable between the two reads");
        assert_eq!(u16::from_le_bytes([page[16], page[17]]), 0, "RECFMT 0");
        let entries: Vec<_> = (0..numrec).map(|i| entry(&page[1024 * (i + 1)..1024 * (i + 2)])).collect();

        let nvm: BTreeSet<(u16, String, String, String)> = entries
            .iter()
            .filter(|e| e.0 == SUBTYPE_NVM)
            .map(|e| (e.1, e.2.clone(), e.3.clone(), e.4.clone()))
            .collect();
        let want: BTreeSet<(u16, String, String, String)> = [p1, p2, remote]
            .iter()
            .map(|p| (p.id, p.addr.ip().to_string(), p.addr.port().to_string(), TEST_SUBNQN.to_string()))
            .collect();
        assert_eq!(nvm, want, "subsystem entries, discovered via port {}", via.id);

        let current: BTreeSet<(u16, String, String, String)> = entries
            .iter()
            .filter(|e| e.0 == SUBTYPE_CURRENT_DISCOVERY)
            .map(|e| (e.1, e.2.clone(), e.3.clone(), e.4.clone()))
            .collect();
        let want: BTreeSet<(u16, String, String, String)> = [p1, p2]
            .iter()
            .map(|p| (p.id, p.addr.ip().to_string(), p.addr.port().to_string(), DISCOVERY_NQN.to_string()))
            .collect();
        assert_eq!(current, want, "current discovery subsystem entries (local ports only)");
    }
    drop(node);
}
