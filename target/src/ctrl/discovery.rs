//! The discovery log page (70h) of this node's discovery controller
//! (NVMe-oF 1.1, 5.3). It lists every NVM subsystem the host may use on
//! every local port and every port of the partner (from `remote_ports`), so
//! a host that discovers through either node learns both paths; plus one
//! "current discovery subsystem" record per local port, as Linux's nvmet
//! reports, which lets hosts keep a persistent discovery connection.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tandem_nvmf::spec::fabrics::{CNTLID_DYNAMIC, DISCOVERY_NQN};
use tandem_nvmf::spec::log::{self, adrfam, subtype, trtype, DiscoveryEntry, TREQ_NOT_SPECIFIED};

use super::TargetState;
use crate::config::TransportKind;

/// TSAS of an RDMA entry: reliable connected QP, no provider type, RDMA_CM.
const RDMA_QPTYPE_CONNECTED: u8 = 1;
const RDMA_PRTYPE_NOT_SPECIFIED: u8 = 1;
const RDMA_CMS_RDMA_CM: u8 = 1;

fn entry(
    id: u16,
    transport: TransportKind,
    addr: SocketAddr,
    nqn: &str,
    kind: u8,
    asqsz: u16,
) -> DiscoveryEntry {
    let mut e = DiscoveryEntry::default();
    let tr = match transport {
        TransportKind::Tcp => trtype::TCP,
        TransportKind::Rdma => trtype::RDMA,
    };
    let fam = if addr.is_ipv4() { adrfam::IPV4 } else { adrfam::IPV6 };
    e.set_trtype(tr).set_adrfam(fam).set_subtype(kind).set_treq(TREQ_NOT_SPECIFIED);
    e.set_portid(id).set_cntlid(CNTLID_DYNAMIC).set_asqsz(asqsz);
    e.set_trsvcid(&addr.port().to_string()).set_traddr(&addr.ip().to_string()).set_subnqn(nqn);
    if transport == TransportKind::Rdma {
        let t = e.tsas_mut();
        t[0] = RDMA_QPTYPE_CONNECTED;
        t[1] = RDMA_PRTYPE_NOT_SPECIFIED;
        t[2] = RDMA_CMS_RDMA_CM;
    }
    // TCP: TSAS byte 0 (SECTYPE) stays 0, no transport security.
    e
}

impl TargetState {
    /// Appends the whole discovery log page for `hostnqn` to `page`.
    pub fn build_discovery_log(&self, hostnqn: &str, page: &mut Vec<u8>) {
        let asqsz = self.limits.queue_depth_max.min(0xFFFF) as u16;
        let mut entries = Vec::new();
        let local = self.ports.iter().map(|p| (p.id, p.transport, p.addr));
        let remote = self.remote_ports.iter().map(|p| (p.id, p.transport, p.addr));
        let all: Vec<_> = local.clone().chain(remote).collect();
        for s in self.nvm_subsystems().iter().filter(|s| s.host_allowed(hostnqn)) {
            for &(id, tr, addr) in &all {
                entries.push(entry(id, tr, addr, &s.nqn, subtype::NVM, asqsz));
            }
        }
        for (id, tr, addr) in local {
            entries.push(entry(id, tr, addr, DISCOVERY_NQN, subtype::CURRENT_DISCOVERY, asqsz));
        }
        let generation = self.discovery_generation.load(Ordering::Acquire);
        log::build_discovery_header(generation, entries.len() as u64, page);
        for e in &entries {
            page.extend_from_slice(&e.0);
        }
    }
}
