//! `tandem serve`: builds a node from its config and runs it until SIGTERM.
//!
//! Start-up order: open every namespace's backend (their sizes feed the
//! controller layer), build the shared `TargetState`, bind every port (a port
//! in use is an error naming the port), start one reactor per configured
//! core, then the control socket. Reactor 0 accepts connections and hands
//! them round-robin to the reactors; each reactor owns a `PollGroup` with its
//! own handles on the backends. SIGTERM or SIGINT stops the reactors, which
//! close their connections, and the process exits 0.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Map, Value};
use tandem_env::reactor::{
    self, PollMode as ReactorPollMode, PollStatus, ReactorApp, ReactorConfig, ReactorContext,
};
use tandem_env::{BufferPool, ReactorHandle};
use tracing::{info, warn};

use crate::backend::{Backend, FaultBackend, FaultControl, FileBackend, RamBackend};
use crate::config::{BackendKind, Config, NamespaceConfig, PollMode, StagingConfig, StagingDomain};
use crate::ctrl::{NamespaceGeometry, TargetState};
use crate::ha::layout::{MediumKind, CONTROL_OFFSET};
use crate::ha::{Binding, DrainProgress, DrainWait, FlusherConfig, MediumIdentity, RingConfig, StagingLog};
use crate::metrics::{GroupMetrics, MetricsServer, NodeCollector, StagingSource};
use crate::nvmf_rpc;
use crate::pair::owner::{MirrorLink, MirrorState, MirrorStatus};
use crate::pair::partner::SecondStore;
use crate::pair::{dialer, LinkCounters};
use crate::progress::Progress;
use crate::rpc::{self, RpcFault, RpcHandler, RpcServer};
use crate::transport::media::{NsMedia, Staged, StagingStatus};
use crate::transport::tcp::{PollGroup, TransportLimits};
use tandem_env::persist::PersistentRegion;
use tandem_env::{open_region, DomainKind, MappedRegion};

/// Connections one reactor serves at most.
const CONNECTIONS_PER_REACTOR_MAX: usize = 256;
/// Receive buffer per connection.
const RECV_BUFFER_BYTES: usize = 64 * 1024;
/// How often each reactor checks keep-alive and asynchronous events.
const TICK_INTERVAL_MS: u64 = 20;

const TOKEN_LISTENER: u64 = 1 << 40;
const TOKEN_BACKEND: u64 = 1 << 41;
/// A mirror link's socket: watched only to wake the reactor.
const TOKEN_MIRROR: u64 = 1 << 42;

/// Messages between reactors.
pub enum NodeMessage {
    /// A connection accepted by reactor 0 for this reactor.
    Connection { stream: TcpStream, port_id: u16 },
    /// A mirror connection the dialer made for one of this reactor's rings.
    MirrorAttached(Box<crate::pair::dialer::Attached>),
}

/// One opened namespace medium, from which each reactor takes its handle.
enum Medium {
    Ram(RamBackend),
    File { config: NamespaceConfig, queue_depth_max: usize },
}

impl Medium {
    fn open(
        ns: &NamespaceConfig,
        queue_depth_max: usize,
        field: &str,
    ) -> anyhow::Result<(Medium, NamespaceGeometry)> {
        match ns.backend {
            BackendKind::Ram => {
                let size =
                    ns.size_bytes.ok_or_else(|| anyhow!("{field}.size: a ram namespace needs a size"))?;
                let blocks = size / u64::from(ns.block_size);
                let ram = RamBackend::new(ns.block_size, blocks).map_err(|e| anyhow!("{field}: {e}"))?;
                let geometry = NamespaceGeometry { block_size_bytes: ns.block_size, block_count: blocks };
                Ok((Medium::Ram(ram), geometry))
            }
            BackendKind::File => {
                let path =
                    ns.path.as_ref().ok_or_else(|| anyhow!("{field}.path: a file namespace needs a path"))?;
                if let Some(dir) = path.parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir)
                            .with_context(|| format!("{field}.path: cannot create {}", dir.display()))?;
                    }
                }
                let probe = FileBackend::open(path, ns.block_size, ns.size_bytes, queue_depth_max)
                    .map_err(|e| anyhow!("{field}.path: {e}"))?;
                let geometry = NamespaceGeometry {
                    block_size_bytes: probe.block_size(),
                    block_count: probe.num_blocks(),
                };
                Ok((Medium::File { config: ns.clone(), queue_depth_max }, geometry))
            }
        }
    }

    /// A handle for one reactor.
    fn handle(&self) -> anyhow::Result<Box<dyn Backend>> {
        match self {
            Medium::Ram(r) => Ok(Box::new(r.clone())),
            Medium::File { config, queue_depth_max } => {
                let path = config.path.as_deref().ok_or_else(|| anyhow!("file namespace without a path"))?;
                let f = FileBackend::open(path, config.block_size, config.size_bytes, *queue_depth_max)
                    .map_err(|e| anyhow!("{}: {e}", path.display()))?;
                Ok(Box::new(f))
            }
        }
    }
}

/// The application each reactor runs.
struct NodeApp {
    group: PollGroup,
    /// Reactor 0 only: listening sockets and the other reactors' mailboxes.
    listeners: Vec<(TcpListener, u16)>,
    peers: Vec<ReactorHandle<NodeMessage>>,
    next_peer: usize,
    scratch: Vec<(usize, std::os::fd::RawFd, bool)>,
    /// Fds the kernel says are ready (one epoll_wait per poll).
    ready: Vec<(u64, reactor::Readiness)>,
    /// A listener was reported ready: accept on the next poll.
    accept_pending: bool,
}

impl NodeApp {
    fn note_ready(&mut self, token: u64, _ready: reactor::Readiness) {
        if token & TOKEN_LISTENER != 0 {
            self.accept_pending = true;
        } else if token & (TOKEN_BACKEND | TOKEN_MIRROR) == 0 {
            self.group.mark_ready(token as usize);
        }
    }

    fn adopt(&mut self, stream: TcpStream, port_id: u16, ctx: &mut ReactorContext) {
        if let Some((slot, fd)) = self.group.add_connection(stream, port_id) {
            if let Err(e) = ctx.register_fd(fd, reactor::Readiness::READABLE, slot as u64) {
                warn!(error = %e, "cannot watch a connection's socket");
            }
        }
    }

    fn accept(&mut self, ctx: &mut ReactorContext) -> bool {
        let mut busy = false;
        for i in 0..self.listeners.len() {
            loop {
                let (listener, port_id) = &self.listeners[i];
                let port_id = *port_id;
                match listener.accept() {
                    Ok((stream, _)) => {
                        busy = true;
                        // Round-robin over this reactor and its peers.
                        let n = self.peers.len() + 1;
                        let target = self.next_peer % n;
                        self.next_peer = self.next_peer.wrapping_add(1);
                        if target == 0 {
                            self.adopt(stream, port_id, ctx);
                        } else if let Err(NodeMessage::Connection { stream, port_id }) =
                            self.peers[target - 1].try_send(NodeMessage::Connection { stream, port_id })
                        {
                            self.adopt(stream, port_id, ctx);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        break;
                    }
                }
            }
        }
        busy
    }
}

impl ReactorApp for NodeApp {
    type Message = NodeMessage;

    fn on_start(&mut self, ctx: &mut ReactorContext) {
        for (i, (l, _)) in self.listeners.iter().enumerate() {
            if let Err(e) =
                ctx.register_fd(l.as_raw_fd(), reactor::Readiness::READABLE, TOKEN_LISTENER | i as u64)
            {
                warn!(error = %e, "cannot watch a listening socket");
            }
        }
        for (i, fd) in self.group.backend_wake_fds().into_iter().enumerate() {
            if let Err(e) = ctx.register_fd(fd, reactor::Readiness::READABLE, TOKEN_BACKEND | i as u64) {
                warn!(error = %e, "cannot watch a backend's completion fd");
            }
        }
        if let Err(e) = ctx
            .add_timer(Duration::from_millis(TICK_INTERVAL_MS), Some(Duration::from_millis(TICK_INTERVAL_MS)))
        {
            warn!(error = %e, "cannot start the keep-alive timer");
        }
    }

    fn poll(&mut self, ctx: &mut ReactorContext) -> PollStatus {
        // Ask the kernel once which sockets have something, rather than
        // trying an accept and a receive on each of them every pass.
        let mut ready = std::mem::take(&mut self.ready);
        if let Err(e) = ctx.ready_now(&mut ready) {
            warn!(error = %e, "epoll_wait failed");
        }
        for &(token, r) in &ready {
            self.note_ready(token, r);
        }
        self.ready = ready;
        let mut busy = false;
        if self.accept_pending {
            self.accept_pending = false;
            busy |= self.accept(ctx);
        }
        busy |= self.group.poll();
        self.scratch.clear();
        self.group.write_interest_changes(&mut self.scratch);
        for &(slot, fd, want_write) in &self.scratch {
            let interest = if want_write { reactor::Readiness::BOTH } else { reactor::Readiness::READABLE };
            let _ = ctx.modify_fd(fd, interest, slot as u64);
        }
        if busy || self.group.has_unwakeable_work() {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    fn on_message(&mut self, message: NodeMessage, ctx: &mut ReactorContext) {
        match message {
            NodeMessage::Connection { stream, port_id } => self.adopt(stream, port_id, ctx),
            NodeMessage::MirrorAttached(attached) => {
                if let Some(fd) = self.group.attach_mirror(*attached) {
                    if let Err(e) = ctx.register_fd(fd, reactor::Readiness::READABLE, TOKEN_MIRROR) {
                        warn!(error = %e, "cannot watch the mirror link's socket");
                    }
                }
            }
        }
    }

    fn on_timer(&mut self, _id: reactor::TimerId, _ctx: &mut ReactorContext) {
        self.group.tick();
    }

    fn on_ready(&mut self, token: u64, ready: reactor::Readiness, _ctx: &mut ReactorContext) {
        self.note_ready(token, ready);
    }
}

impl Drop for NodeApp {
    fn drop(&mut self) {
        self.group.close_all();
        self.group.drain_staging(Duration::from_secs(60));
        info!(counters = ?self.group.stats, "transport counters at shutdown");
    }
}

/// Answers `tandem rpc` for a running node.
struct NodeRpc {
    target: Arc<TargetState>,
    config: Config,
    /// Fault injectors of namespaces with `fault_injection = true`.
    faults: Vec<(String, u32, FaultControl)>,
    /// What each staged namespace's log holds: (subnqn, nsid, ring path, status).
    staging: Vec<(String, u32, std::path::PathBuf, Arc<StagingStatus>)>,
    /// In a pair: the mirror of each owned ring, the second stores of the
    /// partner's, and the link's counters.
    pair: Option<PairStatus>,
}

struct PairStatus {
    mirrors: Vec<(String, u32, Arc<MirrorStatus>)>,
    second_stores: Arc<Vec<SecondStore>>,
    owner_link: Arc<LinkCounters>,
    partner_link: Arc<LinkCounters>,
}

/// The methods `NodeRpc` answers: SPDK's names where one maps, `tandem_`
/// for Tandem's own.
const NODE_METHODS: &[&str] = &[
    "nvmf_get_subsystems",
    "nvmf_subsystem_get_listeners",
    "nvmf_subsystem_get_controllers",
    "nvmf_subsystem_listener_set_ana_state",
    "tandem_get_version",
    "tandem_get_status",
    "tandem_set_ana_state",
    "tandem_fault_inject",
];

impl RpcHandler for NodeRpc {
    fn methods(&self) -> Vec<&'static str> {
        NODE_METHODS.to_vec()
    }

    fn handle(&self, method: &str, params: &Map<String, Value>) -> Result<Value, RpcFault> {
        match method {
            "nvmf_get_subsystems" => nvmf_rpc::get_subsystems(&self.target, &self.config, params),
            "nvmf_subsystem_get_listeners" => nvmf_rpc::get_listeners(&self.target, params),
            "nvmf_subsystem_get_controllers" => nvmf_rpc::get_controllers(&self.target, params),
            "nvmf_subsystem_listener_set_ana_state" => {
                nvmf_rpc::listener_set_ana_state(&self.target, params, &|g, s| self.check_partner_group(g, s))
            }
            "tandem_get_version" => {
                rpc::check_params(params, &[])?;
                let v = env!("CARGO_PKG_VERSION");
                let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
                let (major, minor, patch) =
                    (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
                Ok(json!({
                    "version": format!("Tandem v{v}"),
                    "fields": { "major": major, "minor": minor, "patch": patch, "suffix": "" },
                }))
            }
            // The whole ANA state of a group through one port (or every
            // port), for every subsystem with a namespace in the group.
            "tandem_set_ana_state" => {
                rpc::check_params(params, &["port", "group", "state"])?;
                let group = rpc::param_u64(params, "group")?;
                let group = u32::try_from(group)
                    .map_err(|_| RpcFault::invalid_params("params.group: out of range"))?;
                let state = nvmf_rpc::parse_ana_state(rpc::param_str(params, "state")?, "state")?;
                self.check_partner_group(group, state)?;
                let port = match rpc::param_u64_opt(params, "port")? {
                    None => None,
                    Some(p) => Some(
                        u16::try_from(p)
                            .map_err(|_| RpcFault::invalid_params("params.port: expected a port id"))?,
                    ),
                };
                if let Some(p) = port {
                    if self.target.port(p).is_none() {
                        return Err(RpcFault::invalid_params(format!("params.port: no local port {p}")));
                    }
                }
                if !self.target.set_ana_state(port, group, state) {
                    return Err(RpcFault::invalid_params(format!(
                        "params.group: no ANA group {group} on this node"
                    )));
                }
                info!(?port, group, ?state, "ANA state changed by rpc");
                Ok(json!({ "port": port, "group": group, "state": nvmf_rpc::ana_state_name(state) }))
            }
            "tandem_get_status" => {
                rpc::check_params(params, &[])?;
                let ports: Vec<Value> = self
                    .target
                    .ports()
                    .iter()
                    .map(|p| {
                        let groups: Vec<Value> = (1..=crate::config::ANA_GROUP_ID_MAX)
                            .filter(|g| {
                                self.config
                                    .subsystems
                                    .iter()
                                    .flat_map(|s| &s.namespaces)
                                    .any(|n| n.ana_group == *g)
                            })
                            .map(|g| json!({ "group": g, "state": nvmf_rpc::ana_state_name(p.ana_state(g)) }))
                            .collect();
                        json!({ "id": p.id, "addr": p.addr.to_string(), "ana": groups })
                    })
                    .collect();
                let controllers: Vec<Value> = self
                    .target
                    .live_controllers()
                    .iter()
                    .map(|c| json!({ "cntlid": c.cntlid(), "hostnqn": c.hostnqn(), "subnqn": c.subsystem().nqn }))
                    .collect();
                let staging: Vec<Value> = self
                    .staging
                    .iter()
                    .map(|(nqn, nsid, ring, s)| {
                        let domain = self.config.staging.as_ref().map(|st| st.domain);
                        json!({
                            "subnqn": nqn,
                            "nsid": nsid,
                            "domain": domain.map(|d| format!("{d:?}").to_lowercase()),
                            "survives_power_loss": domain.is_some_and(|d| d.survives_power_loss()),
                            "ring": ring.display().to_string(),
                            "staged_records": s.staged_records.load(Ordering::Relaxed),
                            "staged_bytes": s.staged_bytes.load(Ordering::Relaxed),
                            "free_bytes": s.free_bytes.load(Ordering::Relaxed),
                            "records_committed": s.records_committed.load(Ordering::Relaxed),
                            "released_seq": s.released_seq.load(Ordering::Relaxed),
                            "medium_failures": s.medium_failures.load(Ordering::Relaxed),
                        })
                    })
                    .collect();
                Ok(json!({
                    "node": self.target.node_name,
                    "ports": ports,
                    "controllers": controllers,
                    "ana_changes": self.target.ana_change_count(),
                    "staging": staging,
                    "pair": self.pair_status(),
                }))
            }
            "tandem_fault_inject" => {
                rpc::check_params(params, &["nsid", "subnqn", "action", "count", "slba", "nlb"])?;
                let nsid = rpc::param_u64(params, "nsid")?;
                let subnqn = rpc::param_str_opt(params, "subnqn")?;
                let control = self
                    .faults
                    .iter()
                    .find(|(nqn, id, _)| u64::from(*id) == nsid && subnqn.is_none_or(|s| s == nqn))
                    .map(|(_, _, c)| c)
                    .ok_or_else(|| {
                        RpcFault::invalid_params(format!(
                            "params.nsid: namespace {nsid} has no fault injector (fault_injection = true)"
                        ))
                    })?;
                match rpc::param_str(params, "action")? {
                    "fail_writes_after" => control.fail_writes_after(rpc::param_u64(params, "count")?),
                    "fail_writes_in" => control
                        .fail_writes_in(rpc::param_u64(params, "slba")?, rpc::param_u64(params, "nlb")?),
                    "fail_flush" => control.fail_flush(true),
                    "fail_reads" => control.fail_reads(true),
                    "heal" => control.heal(),
                    other => {
                        return Err(RpcFault::invalid_params(format!(
                            "params.action: {other:?} is not fail_writes_after, fail_writes_in, \
                             fail_flush, fail_reads or heal"
                        )))
                    }
                }
                Ok(json!({ "nsid": nsid, "injected": control.injected() }))
            }
            other => Err(rpc::method_not_found(other, NODE_METHODS)),
        }
    }
}

impl NodeRpc {
    /// In a pair, a group the partner owns cannot be made accessible here:
    /// this node would write the partner's namespace beside its owner.
    fn check_partner_group(&self, group: u32, state: crate::ctrl::AnaState) -> Result<(), RpcFault> {
        use crate::ctrl::AnaState;
        let Some(pair) = &self.config.pair else { return Ok(()) };
        let accessible = matches!(state, AnaState::Optimized | AnaState::NonOptimized);
        if accessible && !pair.owns_group(group) {
            return Err(RpcFault::invalid_params(format!(
                "params.group: group {group} belongs to the partner ({}); this node does not serve it \
                 (taking a group over is not built yet)",
                pair.partner
            )));
        }
        Ok(())
    }

    /// Per group: who owns it, its ANA state through each local port, and the
    /// mirror (owned groups) or the second store (the partner's groups).
    fn pair_status(&self) -> Value {
        let (Some(pair), Some(status)) = (&self.config.pair, &self.pair) else { return Value::Null };
        let mut groups = Vec::new();
        for sub in &self.config.subsystems {
            for ns in &sub.namespaces {
                let ana: Vec<Value> = self
                    .target
                    .ports()
                    .iter()
                    .map(|p| json!({ "port": p.id, "state": nvmf_rpc::ana_state_name(p.ana_state(ns.ana_group)) }))
                    .collect();
                let owned = pair.owns_group(ns.ana_group);
                let mut entry = json!({
                    "group": ns.ana_group,
                    "subnqn": sub.nqn,
                    "nsid": ns.nsid,
                    "owner": if owned { self.target.node_name.as_str() } else { pair.partner.as_str() },
                    "ana": ana,
                });
                if owned {
                    let staged = self.staging.iter().find(|(n, id, _, _)| *n == sub.nqn && *id == ns.nsid);
                    let mirror = status.mirrors.iter().find(|(n, id, _)| *n == sub.nqn && *id == ns.nsid);
                    if let (Some((_, _, _, st)), Some((_, _, m))) = (staged, mirror) {
                        let released = st.released_seq.load(Ordering::Relaxed);
                        let staged_records = st.staged_records.load(Ordering::Relaxed);
                        let held = m.held_through.load(Ordering::Relaxed);
                        entry["mirror"] = json!({
                            "state": MirrorState::from_u8(m.state.load(Ordering::Relaxed)).name(),
                            "policy_while_away": format!("{:?}", pair.partner_away),
                            "records_staged": staged_records,
                            // Unreleased records the partner holds.
                            "records_mirrored": held.saturating_sub(released).min(staged_records),
                            "released_seq": released,
                            "mirrored_through": held,
                            "sent_through": m.sent_through.load(Ordering::Relaxed),
                            "acked_through": m.acked_through.load(Ordering::Relaxed),
                            "store_formats": m.formats.load(Ordering::Relaxed),
                            "degraded_acks": m.degraded_acks.load(Ordering::Relaxed),
                            "partner_writes": m.partner_writes.load(Ordering::Relaxed),
                            "medium_stopped": m.medium_stopped.load(Ordering::Relaxed),
                        });
                    }
                } else if let Some(store) =
                    status.second_stores.iter().find(|s| s.subnqn == sub.nqn && s.nsid == ns.nsid)
                {
                    let s = &store.status;
                    let held = s.held_through.load(Ordering::Relaxed);
                    let released = s.released_seq.load(Ordering::Relaxed);
                    entry["second_store"] = json!({
                        "path": store.path.display().to_string(),
                        "connected": s.connected.load(Ordering::Relaxed),
                        "formatted": s.formatted.load(Ordering::Relaxed),
                        "held_through": held,
                        "released_seq": released,
                        "records_held": held.saturating_sub(released),
                        "formats": s.formats.load(Ordering::Relaxed),
                        "medium_writes": s.medium_writes.load(Ordering::Relaxed),
                    });
                }
                groups.push(entry);
            }
        }
        let link = |c: &LinkCounters| {
            json!({
                "connects": c.connects.load(Ordering::Relaxed),
                "refused": c.refused.load(Ordering::Relaxed),
            })
        };
        let rtt_us = status.owner_link.rtt_us.load(Ordering::Relaxed);
        let up = status.mirrors.iter().any(|(_, _, m)| m.link_up.load(Ordering::Relaxed))
            || status.second_stores.iter().any(|s| s.status.connected.load(Ordering::Relaxed));
        json!({
            "partner": pair.partner,
            "link": {
                "state": if up { "up" } else { "down" },
                "listen": pair.listen.to_string(),
                "partner_addr": pair.partner_addr.to_string(),
                "rtt_us": if rtt_us == 0 { Value::Null } else { json!(rtt_us) },
                "outgoing": link(&status.owner_link),
                "incoming": link(&status.partner_link),
            },
            "groups": groups,
        })
    }
}

/// The ring file of one namespace: named by a hash of the subsystem NQN and
/// the nsid, so that names stay short and stable.
fn ring_path(st: &StagingConfig, subnqn: &str, nsid: u32) -> std::path::PathBuf {
    st.dir.join(format!("{:08x}-ns{nsid}.ring", crc32c::crc32c(subnqn.as_bytes())))
}

/// The identity of a namespace's medium, recorded in its ring's superblock
/// (see `ha::layout::MediumIdentity`). The medium is open already, so a file
/// medium exists.
pub fn medium_identity(ns: &NamespaceConfig) -> anyhow::Result<MediumIdentity> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let ram = MediumIdentity {
        kind: MediumKind::Ram,
        nguid: ns.nguid,
        block_bytes: ns.block_size,
        dev: 0,
        ino: 0,
        path: String::new(),
    };
    let path = match (ns.backend, &ns.path) {
        (BackendKind::Ram, _) => return Ok(ram),
        (BackendKind::File, Some(path)) => path,
        (BackendKind::File, None) => bail!("namespace {}: a file medium without a path", ns.nsid),
    };
    let meta = std::fs::metadata(path).with_context(|| format!("medium {}: stat", path.display()))?;
    let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()).display().to_string();
    Ok(if meta.file_type().is_block_device() {
        MediumIdentity { kind: MediumKind::BlockDevice, dev: meta.rdev(), path: shown, ..ram }
    } else {
        MediumIdentity { kind: MediumKind::File, dev: meta.dev(), ino: meta.ino(), path: shown, ..ram }
    })
}

/// Opens (or creates) a namespace's staging ring and replays whatever a
/// crash left in it to the medium, before any port opens. A ring that cannot
/// be read back whole, or that holds staged writes for another medium, stops
/// the node: data is never skipped or written to the wrong medium silently.
/// `adopt_staging` replays a ring bound to another medium into this one.
fn open_staging(
    st: &StagingConfig,
    node_name: &str,
    subnqn: &str,
    ns: &NamespaceConfig,
    mdts_bytes: usize,
    backend: &mut Box<dyn Backend>,
    adopt_staging: bool,
) -> anyhow::Result<StagingLog<MappedRegion>> {
    let medium = medium_identity(ns)?;
    let kind = match st.domain {
        StagingDomain::Shm => DomainKind::Shm,
        StagingDomain::File => DomainKind::File,
        StagingDomain::Pmem => DomainKind::Pmem,
    };
    std::fs::create_dir_all(&st.dir)
        .with_context(|| format!("staging.dir: cannot create {}", st.dir.display()))?;
    let path = ring_path(st, subnqn, ns.nsid);
    if !path.exists() {
        if let Some(legacy_dir) = &st.legacy_dir {
            check_legacy_ring(legacy_dir, &path, &medium)?;
        }
    }
    let region = open_region(kind, &path, st.ring_bytes as usize)
        .map_err(|e| anyhow!("staging ring {}: {e}", path.display()))?;
    // A ring file whose superblock and control block are all zero was never
    // formatted (new, or a crash before `format` persisted): no record can
    // exist in it without them.
    let existed = region.bytes()[..CONTROL_OFFSET + 4096].iter().any(|&b| b != 0);
    // Many small batches in flight: random writes do not merge, and each
    // medium Flush (fdatasync) then covers more of them.
    let flusher = FlusherConfig {
        batch_bytes_max: mdts_bytes.max(256 << 10),
        batches_max: 128,
        ..FlusherConfig::default()
    };
    if !existed {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let ring = RingConfig {
            owner_node_id: u64::from(crc32c::crc32c(node_name.as_bytes())),
            created_epoch: 1,
            format_nonce: nonce,
            record_align_bytes: 4096,
            medium: medium.clone(),
        };
        let log = StagingLog::format(region, &ring, flusher)
            .map_err(|e| anyhow!("staging ring {}: cannot format: {e}", path.display()))?;
        info!(nsid = ns.nsid, ring = %path.display(), bytes = st.ring_bytes, %medium, "staging ring created");
        return Ok(log);
    }
    let start = std::time::Instant::now();
    let mut foreign = Vec::new();
    let wait = DrainWait {
        now_ms: || start.elapsed().as_millis() as u64,
        idle: || std::thread::sleep(Duration::from_micros(200)),
        deadline_ms: 120_000,
    };
    let binding = Binding { medium, adopt_foreign: adopt_staging };
    let mut progress: Option<Progress> = None;
    let mut last = None;
    let mut observe = |p: DrainProgress| {
        last = Some(p);
        if p.records_total > 0 {
            progress
                .get_or_insert_with(|| {
                    Progress::new("replaying staged writes", ns.nsid, p.records_total, p.bytes_total)
                })
                .update(p.records_done, p.bytes_done);
        }
    };
    let recovered =
        StagingLog::recover_observed(region, 0, &binding, flusher, backend, wait, &mut foreign, &mut observe);
    if let (Some(progress), Some(last)) = (progress.as_mut(), last) {
        progress.finish(last.records_done, last.bytes_done);
    }
    let (log, report) = recovered.map_err(|e| {
        anyhow!("staging ring {}: recovery failed: {e}; the node does not start", path.display())
    })?;
    info!(
        nsid = ns.nsid,
        ring = %path.display(),
        replayed_records = report.replayed_records,
        replayed_bytes = report.replayed_bytes,
        torn_tail = report.torn_tail,
        "staging ring recovered: staged writes replayed to the medium"
    );
    Ok(log)
}

/// Before a new ring is created at the default location: a ring of the same
/// name at the default location of older builds (`/dev/shm/tandem-<name>`)
/// may hold acknowledged writes. It is never opened or changed here; if it
/// holds staged writes (or cannot be read) the node does not start and says
/// how to recover them.
fn check_legacy_ring(legacy_dir: &Path, path: &Path, medium: &MediumIdentity) -> anyhow::Result<()> {
    let Some(name) = path.file_name() else { return Ok(()) };
    let legacy = legacy_dir.join(name);
    if !legacy.exists() {
        return Ok(());
    }
    let how = format!(
        "to replay them, set staging.dir = \"{}\" and start once with --adopt-staging if they belong to \
         {medium}; otherwise start the node they belong to, or remove the file",
        legacy_dir.display()
    );
    let bytes = std::fs::read(&legacy).with_context(|| format!("staging ring {}: read", legacy.display()))?;
    match crate::ha::inspect(&bytes) {
        Ok(contents) if contents.staged_records == 0 => {
            info!(
                ring = %legacy.display(),
                "an empty staging ring at the default location of an older build is not used; it may be removed"
            );
            Ok(())
        }
        Ok(contents) => bail!(
            "staging ring {} (the default location of an older build) holds {} staged writes ({} bytes) \
             that this node would not see at its ring location {}; {how}",
            legacy.display(),
            contents.staged_records,
            contents.staged_bytes,
            path.display()
        ),
        Err(e) => bail!(
            "staging ring {} (the default location of an older build) cannot be read ({e}) and may hold \
             acknowledged writes; {how}",
            legacy.display()
        ),
    }
}

/// Runs the node described by `config` until SIGTERM or SIGINT.
/// `adopt_staging`: see `open_staging` (the `--adopt-staging` flag).
/// A pair node's interconnect, set up before the reactors and started after.
struct PairLink {
    dial: dialer::DialRequests,
    dial_rx: std::sync::mpsc::Receiver<u64>,
    listener: TcpListener,
    handshake: crate::ha::link::auth::HandshakeConfig,
    partner_addr: std::net::SocketAddr,
    partner_timeout: Duration,
    second_stores: Arc<Vec<SecondStore>>,
    owner_counters: Arc<LinkCounters>,
    partner_counters: Arc<LinkCounters>,
}

impl PairLink {
    fn open(
        config: &Config,
        pair: &crate::config::PairConfig,
        st: &StagingConfig,
    ) -> anyhow::Result<PairLink> {
        let mut stores = Vec::new();
        for sub in &config.subsystems {
            for ns in sub.namespaces.iter().filter(|n| !pair.owns_group(n.ana_group)) {
                stores.push(open_second_store(st, pair, &sub.nqn, ns)?);
            }
        }
        let listener = TcpListener::bind(pair.listen)
            .with_context(|| format!("pair.listen: cannot listen on {}", pair.listen))?;
        info!(addr = %pair.listen, partner = %pair.partner, "listening (interconnect)");
        let (dial, dial_rx) = dialer::channel();
        Ok(PairLink {
            dial,
            dial_rx,
            listener,
            handshake: crate::ha::link::auth::HandshakeConfig {
                key: pair.key.clone(),
                role: crate::ha::link::frame::LinkRole::Initiator,
                node_id: pair.node_id,
                name: config.node.name.clone(),
                expected_peer_id: Some(pair.partner_id),
            },
            partner_addr: pair.partner_addr,
            partner_timeout: Duration::from_millis(pair.partner_timeout_ms),
            second_stores: Arc::new(stores),
            owner_counters: Arc::new(LinkCounters::default()),
            partner_counters: Arc::new(LinkCounters::default()),
        })
    }

    /// Starts the listener for the partner's mirror and the dialer for ours.
    fn start(self, reactor0: ReactorHandle<NodeMessage>) -> anyhow::Result<()> {
        let identity = crate::pair::partner::PartnerIdentity {
            handshake: self.handshake.clone(),
            partner_timeout: self.partner_timeout,
        };
        crate::pair::partner::start(self.listener, identity, self.second_stores, self.partner_counters)
            .context("cannot start the interconnect listener")?;
        let deliver = move |attached: crate::pair::dialer::Attached| {
            let mut message = NodeMessage::MirrorAttached(Box::new(attached));
            // The mailbox may be full for a moment; the reactor is gone only at shutdown.
            for _ in 0..500 {
                match reactor0.try_send(message) {
                    Ok(()) => return true,
                    Err(back) => message = back,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        };
        dialer::start(self.dial_rx, self.partner_addr, self.handshake, self.owner_counters, deliver)
            .context("cannot start the interconnect dialer")?;
        Ok(())
    }
}

/// Opens this node's copy of one of the partner's rings: what it held at
/// the last stop, or an empty region the partner formats.
fn open_second_store(
    st: &StagingConfig,
    pair: &crate::config::PairConfig,
    subnqn: &str,
    ns: &NamespaceConfig,
) -> anyhow::Result<SecondStore> {
    let nsid = ns.nsid;
    let kind = match st.domain {
        StagingDomain::Shm => DomainKind::Shm,
        StagingDomain::File => DomainKind::File,
        StagingDomain::Pmem => DomainKind::Pmem,
    };
    std::fs::create_dir_all(&st.dir)
        .with_context(|| format!("staging.dir: cannot create {}", st.dir.display()))?;
    let id = crate::pair::store_id(subnqn, nsid);
    let path = crate::pair::second_store_path(&st.dir, id);
    let region = open_region(kind, &path, pair.second_store_bytes as usize)
        .map_err(|e| anyhow!("second store {}: {e}", path.display()))?;
    let formatted = region.bytes()[..CONTROL_OFFSET + 4096].iter().any(|&b| b != 0);
    let receiver = if formatted {
        let (ring, scan) = crate::ha::open_second_store(region).map_err(|e| {
            anyhow!(
                "second store {} (the partner's namespace {nsid}): cannot be read: {e}; it may hold the \
                 only other copy of the partner's writes, so the node does not start (move it away once \
                 the partner's medium is known to be current)",
                path.display()
            )
        })?;
        info!(nsid, store = %path.display(), records = scan.records_found, released_seq = scan.released_seq,
              "second store opened");
        crate::ha::mirror::MirrorReceiver::new(ring)
    } else {
        info!(nsid, store = %path.display(), bytes = pair.second_store_bytes, "second store created (empty)");
        crate::ha::mirror::MirrorReceiver::unformatted(region)
    };
    let medium = match ns.backend {
        BackendKind::File => ns.path.clone(),
        BackendKind::Ram => None,
    };
    Ok(SecondStore::new(id, subnqn.to_string(), nsid, path, receiver, medium, ns.block_size))
}

pub fn run(config: Config, poll_override: Option<&str>, adopt_staging: bool) -> anyhow::Result<()> {
    let mode = match poll_override {
        None => config.node.poll,
        Some("busy") => PollMode::Busy,
        Some("adaptive") => PollMode::Adaptive,
        Some(other) => bail!("--poll: {other:?} is not busy or adaptive"),
    };
    let limits = config.limits.clone();
    let queue_depth_max = limits.queue_depth_max as usize;
    if let Some(dir) = &config.node.data_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("node.data_dir: cannot create {}", dir.display()))?;
    }
    match &config.staging {
        Some(st) => info!(
            domain = ?st.domain,
            dir = %st.dir.display(),
            "staging log: acknowledged writes {}",
            if st.domain.survives_power_loss() {
                "survive power loss"
            } else {
                "survive a process crash only, NOT a power loss (hosts see a volatile write cache)"
            }
        ),
        None => info!("no staging log: writes go straight to the media"),
    }

    // Media first: the controller layer needs their sizes.
    let mut media: Vec<Vec<Medium>> = Vec::new();
    let mut geometries = Vec::new();
    for (si, s) in config.subsystems.iter().enumerate() {
        let mut list = Vec::new();
        for (ni, ns) in s.namespaces.iter().enumerate() {
            let field = format!("subsystems[{si}].namespaces[{ni}]");
            let (m, g) = Medium::open(ns, queue_depth_max * 2, &field)?;
            let (blocks, block_size) = (g.block_count, g.block_size_bytes);
            info!(subsystem = %s.nqn, nsid = ns.nsid, blocks, block_size, backend = ?ns.backend, "namespace ready");
            geometries.push((s.nqn.clone(), ns.nsid, g));
            list.push(m);
        }
        media.push(list);
    }
    let target = TargetState::new(&config, |nqn, nsid| {
        geometries.iter().find(|(n, id, _)| n == nqn && *id == nsid).map(|(_, _, g)| *g)
    })
    .map_err(|e| anyhow!("{e}"))?;
    // The transport indexes backends by the controller layer's subsystem order.
    let order: Vec<usize> = target
        .nvm_subsystems()
        .iter()
        .map(|s| {
            config.subsystems.iter().position(|c| c.nqn == s.nqn).ok_or_else(|| anyhow!("subsystem order"))
        })
        .collect::<anyhow::Result<_>>()?;

    let transport_limits = TransportLimits {
        mdts_bytes: limits.mdts_bytes as usize,
        in_capsule_bytes: limits.in_capsule_data_bytes as usize,
        queue_depth_max,
        maxh2cdata_bytes: limits.mdts_bytes.max(4096),
        recv_buffer_bytes: RECV_BUFFER_BYTES,
    };
    let chunk_bytes = (limits.mdts_bytes as usize).max(8192);
    let reactors = config.node.cores.len();
    let mut handles = Vec::new();
    let mut joins = Vec::new();
    let mut faults: Vec<(String, u32, FaultControl)> = Vec::new();
    let mut staging_status = Vec::new();
    // In a pair: the second stores of the partner's rings, and the link's
    // two ends (the dialer for this node's rings, the listener for the partner's).
    let pair_link = match (&config.pair, &config.staging) {
        (Some(pair), Some(st)) => Some(PairLink::open(&config, pair, st)?),
        _ => None,
    };
    let mut mirrors = Vec::new();
    // Every reactor's media first: staging rings are recovered (their writes
    // replayed to the media) before any port is bound, so no host can reach
    // the node while the media are behind.
    let mut per_reactor = Vec::new();
    for i in 0..config.node.cores.len() {
        let mut backends = Vec::new();
        for &si in &order {
            let sub = &config.subsystems[si];
            let mut list = Vec::new();
            for (ni, m) in media[si].iter().enumerate() {
                let ns = &sub.namespaces[ni];
                let mut backend = m.handle()?;
                if ns.fault_injection {
                    let f = FaultBackend::new(backend);
                    faults.push((sub.nqn.clone(), ns.nsid, f.control()));
                    backend = Box::new(f);
                }
                // Staging runs on reactor 0, the only reactor a staged node
                // has; in a pair, only for the groups this node owns.
                let owned = config.pair.as_ref().is_none_or(|p| p.owns_group(ns.ana_group));
                let staged = match (&config.staging, ns.write_through, i) {
                    (Some(st), false, 0) if owned => {
                        let log = open_staging(
                            st,
                            &config.node.name,
                            &sub.nqn,
                            ns,
                            limits.mdts_bytes as usize,
                            &mut backend,
                            adopt_staging,
                        )?;
                        let mut log = log;
                        let mirror = match (&config.pair, &pair_link) {
                            (Some(pair), Some(link)) => {
                                let id = crate::pair::store_id(&sub.nqn, ns.nsid);
                                let mirror = MirrorLink::new(
                                    id,
                                    ns.nsid,
                                    &mut log,
                                    pair,
                                    link.dial.clone(),
                                    link.owner_counters.clone(),
                                    Some((target.clone(), ns.ana_group)),
                                );
                                mirrors.push((sub.nqn.clone(), ns.nsid, mirror.status.clone()));
                                Some(mirror)
                            }
                            _ => None,
                        };
                        let staged = Staged::new(
                            log,
                            mirror,
                            !st.domain.survives_power_loss(),
                            ns.nsid,
                            ns.block_size,
                        );
                        let ring = ring_path(st, &sub.nqn, ns.nsid);
                        staging_status.push((sub.nqn.clone(), ns.nsid, ring, staged.status.clone()));
                        Some(staged)
                    }
                    _ => None,
                };
                list.push(NsMedia { backend, staged, partner_owned: !owned });
            }
            backends.push(list);
        }
        per_reactor.push(backends);
    }
    if let Some(link) = &pair_link {
        for (nqn, nsid, control) in &faults {
            if let Some(store) = link.second_stores.iter().find(|s| s.subnqn == *nqn && s.nsid == *nsid) {
                let _ = store.faults.set(control.clone());
            }
        }
    }
    // One metrics block per reactor (each is written by its reactor only).
    let group_metrics: Vec<Arc<GroupMetrics>> = match config.node.metrics {
        Some(_) => (0..reactors).map(|_| Arc::new(GroupMetrics::new(&target))).collect(),
        None => Vec::new(),
    };
    let _metrics = match config.node.metrics {
        Some(addr) => {
            let sources = staging_status
                .iter()
                .map(|(nqn, nsid, _, status)| StagingSource {
                    subnqn: nqn.clone(),
                    nsid: *nsid,
                    status: status.clone(),
                })
                .collect();
            let collector = NodeCollector::new(target.clone(), group_metrics.clone(), sources);
            Some(
                MetricsServer::start(addr, collector.into_registry(&config.node.name))
                    .with_context(|| format!("node.metrics: cannot listen on {addr}"))?,
            )
        }
        None => None,
    };
    // The control socket answers before the ports open, so a caller that
    // sees a port accept can use it at once.
    let _rpc = match &config.node.rpc_socket {
        Some(path) => Some(
            RpcServer::start(
                path,
                Arc::new(NodeRpc {
                    target: target.clone(),
                    config: config.clone(),
                    faults,
                    staging: staging_status,
                    pair: pair_link.as_ref().map(|l| PairStatus {
                        mirrors: mirrors.clone(),
                        second_stores: l.second_stores.clone(),
                        owner_link: l.owner_counters.clone(),
                        partner_link: l.partner_counters.clone(),
                    }),
                }),
            )
            .with_context(|| format!("node.rpc_socket: cannot listen on {}", path.display()))?,
        ),
        None => None,
    };
    let mut listeners = Vec::new();
    for (i, p) in config.ports.iter().enumerate() {
        let l = TcpListener::bind(p.addr)
            .with_context(|| format!("ports[{i}].addr: cannot listen on {}", p.addr))?;
        l.set_nonblocking(true)?;
        info!(port = p.id, addr = %p.addr, "listening (nvme/tcp)");
        listeners.push((l, p.id));
    }

    // Reactors 1.. first, so reactor 0 can be given their mailboxes.
    for (i, &core) in config.node.cores.iter().enumerate().rev() {
        let backends = per_reactor.pop().ok_or_else(|| anyhow!("reactor {i}: no media"))?;
        let pool = BufferPool::new(&format!("reactor{i}"), chunk_bytes, queue_depth_max * 16)
            .map_err(|e| anyhow!("buffer pool: {e}"))?;
        let mut group =
            PollGroup::new(target.clone(), transport_limits, backends, pool, CONNECTIONS_PER_REACTOR_MAX);
        if let Some(m) = group_metrics.get(i) {
            group.set_metrics(m.clone());
        }
        let my_listeners = if i == 0 { std::mem::take(&mut listeners) } else { Vec::new() };
        let peers = if i == 0 { handles.clone() } else { Vec::new() };
        let cfg = ReactorConfig {
            name: format!("reactor{i}"),
            core: Some(core),
            mode: match mode {
                PollMode::Busy => ReactorPollMode::Busy,
                PollMode::Adaptive => ReactorPollMode::Adaptive,
            },
            ..ReactorConfig::default()
        };
        let (handle, join) = reactor::spawn(cfg, move || NodeApp {
            group,
            listeners: my_listeners,
            peers,
            next_peer: 0,
            scratch: Vec::with_capacity(64),
            ready: Vec::with_capacity(64),
            accept_pending: i == 0,
        })
        .map_err(|e| anyhow!("reactor {i}: {e}"))?;
        handles.push(handle);
        joins.push(join);
    }
    if let Some(link) = pair_link {
        // Reactor 0 (spawned last) owns the staged rings.
        let reactor0 = handles.last().cloned().ok_or_else(|| anyhow!("no reactor"))?;
        link.start(reactor0)?;
    }
    info!(node = %config.node.name, reactors, poll = ?mode, "node serving");

    let mut signals =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
            .context("cannot install signal handlers")?;
    // Wait for a signal or for a reactor to end on its own (an error).
    loop {
        if let Some(sig) = signals.pending().next() {
            info!(signal = sig, "shutting down");
            break;
        }
        if joins.iter().any(|j| j.is_finished()) {
            warn!("a reactor stopped; shutting down");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for h in &handles {
        h.request_stop();
    }
    let mut failed = None;
    for j in joins {
        match j.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(anyhow!("reactor failed: {e}")),
            Err(_) => failed = Some(anyhow!("a reactor panicked")),
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    info!("stopped");
    Ok(())
}
