//! The controller layer, sans-I/O: subsystems, namespaces, ports, the
//! controller ID allocator, ANA state, and the Connect command. The
//! transport owns sockets and threads; it calls these plain methods and
//! sends back what they return, so every path here is unit-testable.
//!
//! Sharing and locking: one `TargetState` (in an `Arc`) is shared by every
//! reactor. What the I/O path reads is immutable after start-up
//! (subsystems, namespaces, the NSID index) or atomic (ANA state per port
//! and group, controller readiness, keep-alive stamps), so `check_io`
//! takes no lock and allocates nothing. The control path (Connect, admin
//! commands, ANA changes) uses a `Mutex` per controller and one for the
//! registry of live controllers.
//!
//! Invariants: every live controller's cntlid lies in the node's
//! `[cntlid_min, cntlid_max]` and is unique among live controllers; a
//! controller is in the registry from its admin Connect until
//! `disconnect` of queue 0.

mod controller;
mod discovery;
#[cfg(test)]
mod tests;

pub use controller::{AdminOutcome, Controller, DataLocation, IoCommand, IoKind};
pub use tandem_nvmf::spec::log::AnaState;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tandem_nvmf::spec::fabrics::{
    connect_data_offset, connect_response_dw0, connect_sqe_offset, ConnectCommand, ConnectData,
    InvalidParameter, CNTLID_ANY_STATIC, CNTLID_DYNAMIC, DISCOVERY_NQN,
};
use tandem_nvmf::spec::opcode::{admin, fctype};
use tandem_nvmf::spec::{Cqe, NvmeStatus, Sqe};

use tracing::{info, warn};

use crate::config::{Config, Limits, PortConfig, TransportKind, ANA_GROUP_ID_MAX};

/// An error building the target state from a configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CtrlError {
    #[error("no geometry for namespace {nsid} of {nqn}: its backend was not opened")]
    MissingGeometry { nqn: String, nsid: u32 },
    #[error("namespace {nsid} of {nqn}: backend block size {block_size} bytes is not 512 or 4096")]
    BadBlockSize { nqn: String, nsid: u32, block_size: u32 },
    #[error("namespace {nsid} of {nqn}: backend has no blocks")]
    EmptyNamespace { nqn: String, nsid: u32 },
}

/// The size of a namespace as the transport found it when opening its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespaceGeometry {
    pub block_size_bytes: u32,
    pub block_count: u64,
}

/// A namespace as controllers report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub nsid: u32,
    pub ana_group: u32,
    pub block_size_bytes: u32,
    /// log2 of the block size (LBADS).
    pub block_shift: u8,
    pub block_count: u64,
    pub nguid: [u8; 16],
    pub uuid: [u8; 16],
}

/// A subsystem: the discovery subsystem or an NVM subsystem from the config.
#[derive(Debug)]
pub struct Subsystem {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    pub volatile_write_cache: bool,
    pub is_discovery: bool,
    /// Ascending by NSID.
    pub namespaces: Vec<Namespace>,
    /// `nsid_index[nsid]` is the namespace's index in `namespaces`, or
    /// `NO_NAMESPACE`; its length is NN + 1.
    nsid_index: Vec<u16>,
    /// ANA groups with their NSIDs, ascending by group id.
    pub ana_groups: Vec<(u32, Vec<u32>)>,
    /// Whether a Connect with an empty Host NQN was accepted and logged
    /// already: logged once per subsystem, not once per connection.
    empty_hostnqn_logged: AtomicBool,
}

const NO_NAMESPACE: u16 = u16::MAX;

impl Subsystem {
    /// NN: the largest NSID of this subsystem.
    pub fn nn(&self) -> u32 {
        self.nsid_index.len().saturating_sub(1) as u32
    }

    /// The index of an active namespace, without locking or allocating.
    pub fn namespace_index(&self, nsid: u32) -> Option<usize> {
        match self.nsid_index.get(nsid as usize) {
            Some(&i) if i != NO_NAMESPACE => Some(usize::from(i)),
            _ => None,
        }
    }

    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.is_discovery || self.allow_any_host || self.hosts.iter().any(|h| h == hostnqn)
    }

    fn has_group(&self, group: u32) -> bool {
        self.ana_groups.iter().any(|(g, _)| *g == group)
    }
}

/// A local port with its run-time ANA state per group.
#[derive(Debug)]
pub struct Port {
    pub id: u16,
    pub transport: TransportKind,
    pub addr: SocketAddr,
    /// Indexed by ANA group id (index 0 unused); values are `AnaState as u8`.
    ana: Vec<AtomicU8>,
}

impl Port {
    /// The current ANA state of `group` through this port.
    pub fn ana_state(&self, group: u32) -> AnaState {
        self.ana
            .get(group as usize)
            .and_then(|a| AnaState::from_u8(a.load(Ordering::Acquire)))
            // Group ids are validated at start-up, so this is unreachable for
            // configured namespaces; inaccessible is the safe answer anyway.
            .unwrap_or(AnaState::Inaccessible)
    }
}

/// Live controllers and the next cntlid to try.
struct Registry {
    next_cntlid: u16,
    live: BTreeMap<u16, Weak<Controller>>,
}

/// Everything the controllers of one node share.
pub struct TargetState {
    pub node_name: String,
    /// Index 0 is the discovery subsystem.
    subsystems: Vec<Arc<Subsystem>>,
    ports: Vec<Arc<Port>>,
    remote_ports: Vec<PortConfig>,
    pub limits: Limits,
    cntlid_min: u16,
    cntlid_max: u16,
    registry: Mutex<Registry>,
    ana_change_count: AtomicU64,
    discovery_generation: AtomicU64,
}

impl std::fmt::Debug for TargetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetState")
            .field("node", &self.node_name)
            .field("ports", &self.ports.len())
            .finish()
    }
}

/// A queue accepted by Connect.
#[derive(Debug)]
pub struct ConnectedQueue {
    pub controller: Arc<Controller>,
    pub qid: u16,
    /// Submission queue entries (SQSIZE + 1).
    pub sq_entries: u32,
    /// The successful Connect response (CNTLID in dw0).
    pub response: Cqe,
}

/// A failed Connect: the completion to send (the transport then closes the
/// connection).
fn connect_error(cid: u16, status: NvmeStatus, at: Option<InvalidParameter>) -> Cqe {
    Cqe::new(cid, status, at.map_or(0, |p| p.to_dw0()))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data (no half-done
    // invariants across fields that later code relies on), so recover.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TargetState {
    /// Builds the shared state from a validated config and the geometry of
    /// each namespace's opened backend, looked up by (subsystem NQN, NSID).
    pub fn new(
        config: &Config,
        geometry: impl Fn(&str, u32) -> Option<NamespaceGeometry>,
    ) -> Result<Arc<TargetState>, CtrlError> {
        let mut subsystems = vec![Arc::new(Subsystem {
            nqn: DISCOVERY_NQN.to_string(),
            serial: config.node.name.chars().filter(char::is_ascii_graphic).take(20).collect(),
            model: "Tandem discovery".to_string(),
            allow_any_host: true,
            hosts: Vec::new(),
            volatile_write_cache: false,
            is_discovery: true,
            namespaces: Vec::new(),
            nsid_index: vec![NO_NAMESPACE],
            ana_groups: Vec::new(),
            empty_hostnqn_logged: AtomicBool::new(false),
        })];
        for s in &config.subsystems {
            let mut namespaces = Vec::with_capacity(s.namespaces.len());
            for n in &s.namespaces {
                let g = geometry(&s.nqn, n.nsid)
                    .ok_or_else(|| CtrlError::MissingGeometry { nqn: s.nqn.clone(), nsid: n.nsid })?;
                if g.block_size_bytes != 512 && g.block_size_bytes != 4096 {
                    return Err(CtrlError::BadBlockSize {
                        nqn: s.nqn.clone(),
                        nsid: n.nsid,
                        block_size: g.block_size_bytes,
                    });
                }
                if g.block_count == 0 {
                    return Err(CtrlError::EmptyNamespace { nqn: s.nqn.clone(), nsid: n.nsid });
                }
                namespaces.push(Namespace {
                    nsid: n.nsid,
                    ana_group: n.ana_group,
                    block_size_bytes: g.block_size_bytes,
                    block_shift: g.block_size_bytes.trailing_zeros() as u8,
                    block_count: g.block_count,
                    nguid: n.nguid,
                    uuid: n.uuid,
                });
            }
            namespaces.sort_by_key(|n| n.nsid);
            let nn = namespaces.last().map_or(0, |n| n.nsid);
            let mut nsid_index = vec![NO_NAMESPACE; nn as usize + 1];
            let mut groups: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
            for (i, n) in namespaces.iter().enumerate() {
                // At most NSID_MAX (1024) namespaces, so the index fits u16.
                nsid_index[n.nsid as usize] = i as u16;
                groups.entry(n.ana_group).or_default().push(n.nsid);
            }
            subsystems.push(Arc::new(Subsystem {
                nqn: s.nqn.clone(),
                serial: s.serial.clone(),
                model: s.model.clone(),
                allow_any_host: s.allow_any_host,
                hosts: s.hosts.clone(),
                volatile_write_cache: s.volatile_write_cache,
                is_discovery: false,
                namespaces,
                nsid_index,
                ana_groups: groups.into_iter().collect(),
                empty_hostnqn_logged: AtomicBool::new(false),
            }));
        }
        let ports = config
            .ports
            .iter()
            .map(|p| {
                let ana = (0..=ANA_GROUP_ID_MAX).map(|g| AtomicU8::new(p.ana_state(g) as u8)).collect();
                Arc::new(Port { id: p.id, transport: p.transport, addr: p.addr, ana })
            })
            .collect();
        Ok(Arc::new(TargetState {
            node_name: config.node.name.clone(),
            subsystems,
            ports,
            remote_ports: config.remote_ports.clone(),
            limits: config.limits.clone(),
            cntlid_min: config.node.cntlid_min,
            cntlid_max: config.node.cntlid_max,
            registry: Mutex::new(Registry { next_cntlid: config.node.cntlid_min, live: BTreeMap::new() }),
            ana_change_count: AtomicU64::new(1),
            discovery_generation: AtomicU64::new(1),
        }))
    }

    pub fn port(&self, port_id: u16) -> Option<&Arc<Port>> {
        self.ports.iter().find(|p| p.id == port_id)
    }

    pub fn ports(&self) -> &[Arc<Port>] {
        &self.ports
    }

    /// The NVM subsystems (without the discovery subsystem).
    pub fn nvm_subsystems(&self) -> &[Arc<Subsystem>] {
        &self.subsystems[1..]
    }

    pub fn subsystem(&self, nqn: &str) -> Option<&Arc<Subsystem>> {
        self.subsystems.iter().find(|s| s.nqn == nqn)
    }

    /// The ANA change count reported in the ANA log page.
    pub fn ana_change_count(&self) -> u64 {
        self.ana_change_count.load(Ordering::Acquire)
    }

    /// Changes the ANA state of `group` on port `port_id` (or on every local
    /// port when `port_id` is `None`), bumps the ANA change count, and
    /// raises an ANA change notice on every live controller of an affected
    /// port whose subsystem has a namespace in the group. Returns false if
    /// the port or group does not exist.
    pub fn set_ana_state(&self, port_id: Option<u16>, group: u32, state: AnaState) -> bool {
        if group == 0 || group > ANA_GROUP_ID_MAX {
            return false;
        }
        let ports: Vec<&Arc<Port>> =
            self.ports.iter().filter(|p| port_id.is_none_or(|id| p.id == id)).collect();
        if ports.is_empty() {
            return false;
        }
        for p in &ports {
            p.ana[group as usize].store(state as u8, Ordering::Release);
        }
        self.ana_change_count.fetch_add(1, Ordering::AcqRel);
        for c in self.live_controllers() {
            if ports.iter().any(|p| p.id == c.port().id) && c.subsystem().has_group(group) {
                c.raise_ana_change();
            }
        }
        true
    }

    /// The live controllers, in cntlid order.
    pub fn live_controllers(&self) -> Vec<Arc<Controller>> {
        lock(&self.registry).live.values().filter_map(Weak::upgrade).collect()
    }

    pub fn controller(&self, cntlid: u16) -> Option<Arc<Controller>> {
        lock(&self.registry).live.get(&cntlid).and_then(Weak::upgrade)
    }

    /// Ends a queue of `controller`: queue 0 ends the association (the
    /// controller leaves the registry, its cntlid becomes free and its I/O
    /// queues stop accepting commands); other queues free their QID.
    pub fn disconnect(&self, controller: &Controller, qid: u16) {
        if qid == 0 {
            controller.shut_down();
            lock(&self.registry).live.remove(&controller.cntlid());
        } else {
            controller.release_queue(qid);
        }
    }

    /// Takes the next free cntlid after the last one given out, wrapping in
    /// the node's range, so a recently freed id is not reused at once.
    fn allocate_cntlid(&self, make: impl FnOnce(u16) -> Arc<Controller>) -> Option<Arc<Controller>> {
        let mut r = lock(&self.registry);
        r.live.retain(|_, w| w.strong_count() > 0);
        let span = u32::from(self.cntlid_max - self.cntlid_min) + 1;
        for step in 0..span {
            let offset = (u32::from(r.next_cntlid - self.cntlid_min) + step) % span;
            let id = self.cntlid_min + offset as u16;
            if let std::collections::btree_map::Entry::Vacant(slot) = r.live.entry(id) {
                let c = make(id);
                slot.insert(Arc::downgrade(&c));
                let next = (offset + 1) % span;
                r.next_cntlid = self.cntlid_min + next as u16;
                return Some(c);
            }
        }
        None
    }

    /// Handles a Fabrics Connect command arriving on a new queue of port
    /// `port_id`, with its 1024 bytes of Connect data. `now_ms` is the
    /// caller's monotonic clock, which starts the keep-alive timer.
    ///
    /// QID 0 creates a controller with a fresh cntlid; QID > 0 attaches to
    /// the controller named by the data's CNTLID. On error the returned
    /// completion carries the status (and, for Invalid Parameters or
    /// Invalid Host, which field was wrong in dw0).
    pub fn connect(
        self: &Arc<Self>,
        port_id: u16,
        sqe: &Sqe,
        connect_data: &[u8],
        now_ms: u64,
    ) -> Result<ConnectedQueue, Cqe> {
        let cid = sqe.cid();
        if sqe.opcode() != admin::FABRICS || sqe.fctype() != fctype::CONNECT {
            return Err(connect_error(cid, NvmeStatus::COMMAND_SEQUENCE_ERROR, None));
        }
        let cmd = ConnectCommand::parse(sqe);
        let invalid = NvmeStatus::CONNECT_INVALID_PARAMETERS;
        let data_err = |offset| Some(InvalidParameter::Data { offset });
        let sqe_err = |offset| Some(InvalidParameter::Command { offset });
        if cmd.recfmt != 0 {
            return Err(connect_error(
                cid,
                NvmeStatus::CONNECT_INCOMPATIBLE_FORMAT,
                sqe_err(connect_sqe_offset::RECFMT),
            ));
        }
        let data = ConnectData::from_bytes(connect_data)
            .map_err(|_| connect_error(cid, NvmeStatus::DATA_SGL_LENGTH_INVALID, None))?;
        let port = self.port(port_id).ok_or_else(|| connect_error(cid, NvmeStatus::INTERNAL_ERROR, None))?;
        let subnqn =
            data.subnqn().map_err(|_| connect_error(cid, invalid, data_err(connect_data_offset::SUBNQN)))?;
        let hostnqn = data
            .hostnqn()
            .map_err(|_| connect_error(cid, invalid, data_err(connect_data_offset::HOSTNQN)))?;
        if data.hostid() == [0; 16] {
            return Err(connect_error(cid, invalid, data_err(connect_data_offset::HOSTID)));
        }
        // SQSIZE is 0's-based; a one-entry queue cannot hold a command
        // (head == tail means empty), so 0 is invalid.
        let mqes0 = self.limits.queue_depth_max - 1;
        if cmd.sqsize0 == 0 || u32::from(cmd.sqsize0) > mqes0 {
            return Err(connect_error(cid, invalid, sqe_err(connect_sqe_offset::SQSIZE)));
        }
        let subsystem = self
            .subsystem(subnqn)
            .ok_or_else(|| connect_error(cid, invalid, data_err(connect_data_offset::SUBNQN)))?;
        if hostnqn.is_empty() {
            // SPDK's host (spdk_nvme_perf and friends) sends an empty Host
            // NQN unless told one; SPDK's and the Linux target accept it. A
            // subsystem open to any host (and discovery) does too; one with
            // an allow-list cannot know who it is, so it refuses, saying why.
            if !(subsystem.is_discovery || subsystem.allow_any_host) {
                warn!(
                    subnqn,
                    port = port_id,
                    "Connect refused (Invalid Host): the Host NQN is empty and this subsystem admits \
                     only the host NQNs of its allow-list"
                );
                return Err(connect_error(
                    cid,
                    NvmeStatus::CONNECT_INVALID_HOST,
                    data_err(connect_data_offset::HOSTNQN),
                ));
            }
            if !subsystem.empty_hostnqn_logged.swap(true, Ordering::Relaxed) {
                info!(
                    subnqn,
                    port = port_id,
                    "accepted a Connect with an empty Host NQN (allow_any_host; logged once per subsystem)"
                );
            }
        }
        if !subsystem.host_allowed(hostnqn) {
            return Err(connect_error(
                cid,
                NvmeStatus::CONNECT_INVALID_HOST,
                data_err(connect_data_offset::HOSTNQN),
            ));
        }

        if cmd.qid == 0 {
            if data.cntlid() != CNTLID_DYNAMIC && data.cntlid() != CNTLID_ANY_STATIC {
                return Err(connect_error(cid, invalid, data_err(connect_data_offset::CNTLID)));
            }
            // KATO 0 disables keep-alive for an I/O controller; a discovery
            // controller gets the default so abandoned ones are reaped.
            let kato_ms = if cmd.kato_ms == 0 && subsystem.is_discovery {
                self.limits.kato_default_ms
            } else {
                cmd.kato_ms
            };
            let controller = self
                .allocate_cntlid(|cntlid| {
                    Arc::new(Controller::new(
                        cntlid,
                        Arc::clone(self),
                        Arc::clone(subsystem),
                        Arc::clone(port),
                        hostnqn.to_string(),
                        data.hostid(),
                        kato_ms,
                        now_ms,
                    ))
                })
                .ok_or_else(|| connect_error(cid, NvmeStatus::CONNECT_CONTROLLER_BUSY, None))?;
            let response = Cqe::new(cid, NvmeStatus::SUCCESS, connect_response_dw0(controller.cntlid()));
            return Ok(ConnectedQueue { controller, qid: 0, sq_entries: cmd.sq_entries(), response });
        }

        // An I/O queue joins an existing association: same subsystem, host
        // and port as its admin queue.
        let controller = self
            .controller(data.cntlid())
            .filter(|c| {
                Arc::ptr_eq(c.subsystem(), subsystem)
                    && c.port().id == port_id
                    && c.hostnqn() == hostnqn
                    && c.hostid() == data.hostid()
            })
            .ok_or_else(|| connect_error(cid, invalid, data_err(connect_data_offset::CNTLID)))?;
        if subsystem.is_discovery {
            return Err(connect_error(cid, invalid, sqe_err(connect_sqe_offset::QID)));
        }
        controller.attach_io_queue(cmd.qid).map_err(|status| {
            let at =
                (status == invalid).then_some(InvalidParameter::Command { offset: connect_sqe_offset::QID });
            connect_error(cid, status, at)
        })?;
        let response = Cqe::new(cid, NvmeStatus::SUCCESS, connect_response_dw0(controller.cntlid()));
        Ok(ConnectedQueue { controller, qid: cmd.qid, sq_entries: cmd.sq_entries(), response })
    }
}
