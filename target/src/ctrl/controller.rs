//! One controller: its admin command set (Identify, Get Log Page, features,
//! asynchronous events, keep-alive, properties) and the checks that every
//! I/O command passes before the data path sees it.
//!
//! Admin commands run under the controller's mutex (control path). The I/O
//! check reads only immutable and atomic state: readiness, the namespace
//! table and the port's ANA state. Asynchronous events follow the spec's
//! masking rule: once an event type is reported it is not reported again
//! until the host reads the matching log page with RAE clear.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tandem_nvmf::spec::fabrics::{property, version, Cap, Cc, Csts, PropertyGet, PropertySet, CAP_CSS_NVM};
use tandem_nvmf::spec::features::{self, aec, fid, AsyncEvent, GetFeatures, QueueCounts, SetFeatures};
use tandem_nvmf::spec::identify::{
    self, cmic, cns, cntrltype, oaes, oncs, sgls, IdentifyCommand, IdentifyController, IdentifyNamespace,
    NsIdDescriptor, CSI_NVM, NMIC_SHARED,
};
use tandem_nvmf::spec::log::{self, lid, ErrorInfoEntry, GetLogPage, SmartLog, ANA_LSP_RGO};
use tandem_nvmf::spec::nvm::{self, DSM_RANGE_BYTES};
use tandem_nvmf::spec::opcode::{admin, fctype, nvm as nvm_opc};
use tandem_nvmf::spec::sqe::{
    SGL_ID_DATA_BLOCK_OFFSET, SGL_ID_KEYED_DATA_BLOCK, SGL_ID_TRANSPORT_DATA_BLOCK,
};
use tandem_nvmf::spec::{Cqe, NvmeStatus, Sqe};

use super::{lock, AnaState, Port, Subsystem, TargetState};
use crate::config::{TransportKind, ANA_GROUP_ID_MAX};

/// NVMe version reported in VS and Identify VER: 1.4, the first with ANA.
pub const NVME_VERSION: u32 = version(1, 4, 0);
/// Outstanding Asynchronous Event Requests allowed (AERL + 1).
pub const ASYNC_EVENT_REQUESTS_MAX: usize = 4;
/// CAP.TO: how long a host waits for CSTS.RDY, in 500 ms units (5 s). We
/// become ready at once; this only bounds a host's patience.
const CAP_TIMEOUT_500MS: u8 = 10;
/// CTRATT bit 0: 128-bit host identifier; bit 6: traffic-based keep-alive
/// (the transport calls `keep_alive_touch` for every command received).
const CTRATT_HOSTID_128: u32 = 1 << 0;
const CTRATT_TRAFFIC_BASED_KEEP_ALIVE: u32 = 1 << 6;
/// ANACAP: optimized, non-optimized, inaccessible, persistent loss and
/// change states reported (bits 4:0); ANAGRPID never changes (bit 6).
const ANACAP: u8 = 0x1F | (1 << 6);

// Event kinds, as bits of the pending and masked sets.
const EVENT_ANA: u8 = 1 << 0;
const EVENT_NS_ATTR: u8 = 1 << 1;
const EVENT_DISCOVERY: u8 = 1 << 2;
/// The largest Dataset Management buffer accepted: one page, as hosts send.
const DSM_BUFFER_BYTES_MAX: u32 = 4096;

/// What an admin command produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminOutcome {
    /// Send this completion (after `data_to_host`, if any).
    Complete(Cqe),
    /// An Asynchronous Event Request is held until an event; the transport
    /// polls `take_async_event` (cheaply gated by `async_event_ready`).
    AsyncEventParked,
}

/// The I/O commands the data path implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
    Flush,
    WriteZeroes {
        deallocate: bool,
    },
    /// Dataset Management: `ranges` 16-byte ranges arrive as data; check
    /// each with `Controller::check_dsm_range`.
    DatasetManagement {
        ranges: u32,
        deallocate: bool,
    },
}

/// Where a command's data is, as the SGL descriptor says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLocation {
    None,
    /// In the command capsule (writes only).
    InCapsule,
    /// Moved by the transport (NVMe/TCP R2T/H2CData or C2HData).
    Transport,
    /// Host memory for RDMA READ/WRITE.
    Keyed {
        address: u64,
        key: u32,
    },
}

/// A checked I/O command, ready for the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoCommand {
    pub kind: IoKind,
    pub cid: u16,
    pub nsid: u32,
    /// Index of the namespace in `Subsystem::namespaces`.
    pub ns_index: usize,
    pub slba: u64,
    /// Real block count (NLB + 1); 0 for Flush and DSM.
    pub block_count: u32,
    pub fua: bool,
    /// Bytes moved between host and target.
    pub data_bytes: u32,
    pub data: DataLocation,
}

/// Identify Controller FR and FRS1 of the Firmware Slot log: the release.
const FIRMWARE_REVISION: &str = env!("CARGO_PKG_VERSION");

/// Identify Controller VID and SSVID. No PCI vendor ID is Tandem's (the
/// PCI-SIG assigns them to its members); 5444h ("TD") is self-assigned, chosen
/// because the public PCI ID list assigns it to no one, so hosts see a
/// nonzero ID that misnames no company. See "Identity" in the README.
pub const PCI_VENDOR_ID: u16 = 0x5444;

/// Admin state, changed only under the controller's mutex.
#[derive(Debug)]
struct AdminState {
    cc: Cc,
    csts: Csts,
    aec: u32,
    /// Granted I/O queue count once the host asked (Set Features 07h).
    granted_queues: Option<u32>,
    vwc_enabled: bool,
    /// Arbitration (01h) as last set: only the burst and the weights are kept.
    arbitration: u32,
    /// Power Management (02h): power state 0 (the only one) and a workload hint.
    power_management: u32,
    /// Temperature Threshold (04h) of the Composite Temperature, kelvin:
    /// over- and under-temperature.
    temperature_over_k: u16,
    temperature_under_k: u16,
    /// CIDs of parked Asynchronous Event Requests, oldest first.
    parked_aers: VecDeque<u16>,
    /// Events raised and not yet reported.
    pending: u8,
    /// Events reported whose log page the host has not read yet.
    masked: u8,
    /// `io_queues[qid - 1]`: whether that I/O queue is connected.
    io_queues: Vec<bool>,
}

/// A controller: one host association with one subsystem through one port.
pub struct Controller {
    cntlid: u16,
    target: Arc<TargetState>,
    subsystem: Arc<Subsystem>,
    port: Arc<Port>,
    hostnqn: String,
    hostid: [u8; 16],
    kato_ms: AtomicU32,
    last_keep_alive_ms: AtomicU64,
    /// CSTS.RDY mirrored for the lock-free I/O check.
    ready: AtomicBool,
    /// A parked AER and a pending event both exist.
    event_ready: AtomicBool,
    state: Mutex<AdminState>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("cntlid", &self.cntlid)
            .field("subnqn", &self.subsystem.nqn)
            .field("hostnqn", &self.hostnqn)
            .field("port", &self.port.id)
            .finish()
    }
}

fn ok(cid: u16, dw0: u32) -> AdminOutcome {
    AdminOutcome::Complete(Cqe::new(cid, NvmeStatus::SUCCESS, dw0))
}

fn fail(cid: u16, status: NvmeStatus) -> AdminOutcome {
    AdminOutcome::Complete(Cqe::new(cid, status, 0))
}

impl Controller {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        cntlid: u16,
        target: Arc<TargetState>,
        subsystem: Arc<Subsystem>,
        port: Arc<Port>,
        hostnqn: String,
        hostid: [u8; 16],
        kato_ms: u32,
        now_ms: u64,
    ) -> Controller {
        let io_queues = vec![false; target.limits.io_queues_max as usize];
        Controller {
            cntlid,
            target,
            subsystem,
            port,
            hostnqn,
            hostid,
            kato_ms: AtomicU32::new(kato_ms),
            last_keep_alive_ms: AtomicU64::new(now_ms),
            ready: AtomicBool::new(false),
            event_ready: AtomicBool::new(false),
            state: Mutex::new(AdminState {
                cc: Cc(0),
                csts: Csts(0),
                aec: 0,
                granted_queues: None,
                vwc_enabled: false,
                arbitration: features::ARBITRATION_BURST_NO_LIMIT,
                power_management: 0,
                temperature_over_k: features::OVER_TEMPERATURE_DEFAULT_K,
                temperature_under_k: 0,
                parked_aers: VecDeque::new(),
                pending: 0,
                masked: 0,
                io_queues,
            }),
        }
    }

    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }
    pub fn subsystem(&self) -> &Arc<Subsystem> {
        &self.subsystem
    }
    pub fn port(&self) -> &Arc<Port> {
        &self.port
    }
    pub fn hostnqn(&self) -> &str {
        &self.hostnqn
    }
    pub fn hostid(&self) -> [u8; 16] {
        self.hostid
    }
    pub fn is_discovery(&self) -> bool {
        self.subsystem.is_discovery
    }
    /// CSTS.RDY: the host enabled the controller and has not reset it.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    // ---- keep-alive ----

    /// Records traffic at `now_ms`; the transport calls this for every
    /// command it receives on any queue of the association (Keep Alive
    /// included), which is the traffic-based keep-alive CTRATT advertises.
    pub fn keep_alive_touch(&self, now_ms: u64) {
        self.last_keep_alive_ms.fetch_max(now_ms, Ordering::AcqRel);
    }
    /// The keep-alive timeout in ms; 0 means disabled.
    pub fn kato_ms(&self) -> u32 {
        self.kato_ms.load(Ordering::Acquire)
    }
    /// Whether the host has been silent for longer than KATO at `now_ms`;
    /// the transport then tears the association down.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        let kato = u64::from(self.kato_ms());
        kato != 0 && now_ms.saturating_sub(self.last_keep_alive_ms.load(Ordering::Acquire)) > kato
    }

    // ---- queues ----

    pub(super) fn attach_io_queue(&self, qid: u16) -> Result<(), NvmeStatus> {
        let mut s = lock(&self.state);
        if !s.csts.rdy() {
            return Err(NvmeStatus::COMMAND_SEQUENCE_ERROR);
        }
        let allowed = s.granted_queues.unwrap_or(self.target.limits.io_queues_max);
        if qid == 0 || u32::from(qid) > allowed {
            return Err(NvmeStatus::CONNECT_INVALID_PARAMETERS);
        }
        let slot = &mut s.io_queues[usize::from(qid) - 1];
        if *slot {
            return Err(NvmeStatus::COMMAND_SEQUENCE_ERROR);
        }
        *slot = true;
        Ok(())
    }

    /// How many I/O queues are connected (the control socket shows it).
    pub fn io_queues_connected(&self) -> usize {
        lock(&self.state).io_queues.iter().filter(|&&q| q).count()
    }

    pub(super) fn release_queue(&self, qid: u16) {
        let mut s = lock(&self.state);
        if let Some(slot) = s.io_queues.get_mut(usize::from(qid).wrapping_sub(1)) {
            *slot = false;
        }
    }

    pub(super) fn shut_down(&self) {
        let mut s = lock(&self.state);
        s.csts = Csts(0);
        s.cc = Cc(0);
        s.parked_aers.clear();
        self.ready.store(false, Ordering::Release);
        self.event_ready.store(false, Ordering::Release);
    }

    // ---- asynchronous events ----

    pub(super) fn raise_ana_change(&self) {
        self.raise(EVENT_ANA, aec::ANA_CHANGE_NOTICES);
    }

    /// Raises a discovery log change notice (discovery controllers).
    pub fn raise_discovery_change(&self) {
        self.raise(EVENT_DISCOVERY, aec::DISCOVERY_LOG_CHANGE_NOTICES);
    }

    fn raise(&self, event: u8, enable_bit: u32) {
        let mut s = lock(&self.state);
        if s.aec & enable_bit != 0 && s.masked & event == 0 {
            s.pending |= event;
            self.update_event_ready(&s);
        }
    }

    fn update_event_ready(&self, s: &AdminState) {
        self.event_ready.store(s.pending != 0 && !s.parked_aers.is_empty(), Ordering::Release);
    }

    /// Cheap check whether `take_async_event` has something.
    pub fn async_event_ready(&self) -> bool {
        self.event_ready.load(Ordering::Acquire)
    }

    /// The completion of a parked Asynchronous Event Request for a pending
    /// event, if both exist; the event is then masked until its log is read.
    pub fn take_async_event(&self) -> Option<Cqe> {
        let mut s = lock(&self.state);
        let c = Self::pop_event(&mut s);
        self.update_event_ready(&s);
        c
    }

    fn pop_event(s: &mut AdminState) -> Option<Cqe> {
        if s.pending == 0 {
            return None;
        }
        let cid = s.parked_aers.pop_front()?;
        let (bit, event) = if s.pending & EVENT_ANA != 0 {
            (EVENT_ANA, AsyncEvent::ANA_CHANGE)
        } else if s.pending & EVENT_NS_ATTR != 0 {
            (EVENT_NS_ATTR, AsyncEvent::NAMESPACE_ATTRIBUTE_CHANGED)
        } else {
            (EVENT_DISCOVERY, AsyncEvent::DISCOVERY_LOG_CHANGE)
        };
        s.pending &= !bit;
        s.masked |= bit;
        Some(Cqe::new(cid, NvmeStatus::SUCCESS, event.to_dw0()))
    }

    // ---- admin commands ----

    /// Executes one admin command (including Fabrics Property Get/Set; the
    /// transport handles Connect itself through `TargetState::connect`).
    /// `data_to_host` is cleared and filled with the data to return, never
    /// longer than the command's SGL length.
    pub fn exec_admin(&self, sqe: &Sqe, data_from_host: &[u8], data_to_host: &mut Vec<u8>) -> AdminOutcome {
        // No supported admin command carries data from the host.
        let _ = data_from_host;
        data_to_host.clear();
        let cid = sqe.cid();
        let opc = sqe.opcode();
        if opc == admin::FABRICS {
            return self.exec_fabrics(sqe);
        }
        // Before CC.EN only Fabrics commands (properties) are allowed.
        if !self.is_ready() {
            return fail(cid, NvmeStatus::COMMAND_SEQUENCE_ERROR);
        }
        let outcome = match opc {
            admin::IDENTIFY => self.identify(sqe, data_to_host),
            admin::GET_LOG_PAGE => self.get_log_page(sqe, data_to_host),
            admin::GET_FEATURES => self.get_features(sqe),
            admin::SET_FEATURES => self.set_features(sqe),
            admin::KEEP_ALIVE => ok(cid, 0),
            admin::ASYNC_EVENT_REQUEST => self.async_event_request(cid),
            // Commands are not queued long enough to abort: answer "not
            // aborted" (dw0 bit 0 set), as the spec allows.
            admin::ABORT => ok(cid, 1),
            _ => fail(cid, NvmeStatus::INVALID_OPCODE),
        };
        if let AdminOutcome::Complete(c) = outcome {
            if !c.status().is_success() {
                data_to_host.clear();
            } else if data_to_host.len() > sqe.sgl().length() as usize {
                data_to_host.clear();
                return fail(cid, NvmeStatus::DATA_SGL_LENGTH_INVALID);
            }
        }
        outcome
    }

    fn cap(&self) -> Cap {
        Cap::new(self.target.limits.queue_depth_max, true, CAP_TIMEOUT_500MS, CAP_CSS_NVM, 0, 0)
    }

    fn exec_fabrics(&self, sqe: &Sqe) -> AdminOutcome {
        let cid = sqe.cid();
        match sqe.fctype() {
            fctype::PROPERTY_GET => {
                if PropertyGet::size_code(sqe) > 1 {
                    return fail(cid, NvmeStatus::INVALID_FIELD);
                }
                let g = PropertyGet::parse(sqe);
                let s = lock(&self.state);
                let value: u64 = match (g.offset, g.eight_bytes) {
                    (property::CAP, true) => self.cap().0,
                    (property::VS, false) => u64::from(NVME_VERSION),
                    (property::CC, false) => u64::from(s.cc.0),
                    (property::CSTS, false) => u64::from(s.csts.0),
                    _ => return fail(cid, NvmeStatus::INVALID_FIELD),
                };
                let mut c = Cqe::new(cid, NvmeStatus::SUCCESS, value as u32);
                c.set_dw1((value >> 32) as u32);
                AdminOutcome::Complete(c)
            }
            fctype::PROPERTY_SET => {
                let p = PropertySet::parse(sqe);
                if p.offset != property::CC || p.eight_bytes {
                    return fail(cid, NvmeStatus::INVALID_FIELD);
                }
                self.set_cc(Cc(p.value as u32));
                ok(cid, 0)
            }
            // A second Connect on a live queue, or Disconnect/Authentication
            // we do not offer.
            fctype::CONNECT => fail(cid, NvmeStatus::COMMAND_SEQUENCE_ERROR),
            _ => fail(cid, NvmeStatus::INVALID_OPCODE),
        }
    }

    /// CC write: enable sets CSTS.RDY after checking the queue entry sizes,
    /// page size, arbitration and command set (a bad combination sets
    /// CSTS.CFS, as Linux's nvmet does); clearing EN resets the controller;
    /// a shutdown notification completes at once because nothing is cached.
    fn set_cc(&self, cc: Cc) {
        let mut s = lock(&self.state);
        let old = s.cc;
        s.cc = cc;
        if cc.en() && !old.en() {
            let sane =
                cc.mps() == 0 && cc.ams() == 0 && cc.css() == 0 && cc.iosqes() == 6 && cc.iocqes() == 4;
            s.csts = Csts(if sane { Csts::RDY } else { Csts::CFS });
        } else if !cc.en() && old.en() {
            s.csts = Csts(0);
            s.parked_aers.clear();
            s.pending = 0;
            s.masked = 0;
        }
        if cc.shn() != 0 {
            s.csts = Csts(s.csts.0 | Csts::SHST_COMPLETE);
        }
        self.ready.store(s.csts.rdy(), Ordering::Release);
        self.update_event_ready(&s);
    }

    fn identify(&self, sqe: &Sqe, out: &mut Vec<u8>) -> AdminOutcome {
        let cid = sqe.cid();
        let cmd = IdentifyCommand::parse(sqe.cdw10(), sqe.cdw11());
        if self.is_discovery() && cmd.cns != cns::CONTROLLER {
            return fail(cid, NvmeStatus::INVALID_FIELD);
        }
        match cmd.cns {
            cns::CONTROLLER => out.extend_from_slice(&self.identify_controller().0),
            cns::NAMESPACE => match self.namespace_for_identify(sqe.nsid()) {
                Err(st) => return fail(cid, st),
                Ok(None) => out.resize(identify::IDENTIFY_DATA_BYTES, 0),
                Ok(Some(i)) => out.extend_from_slice(&self.identify_namespace(i).0),
            },
            cns::ACTIVE_NAMESPACE_LIST => {
                if sqe.nsid() >= 0xFFFF_FFFE {
                    return fail(cid, NvmeStatus::INVALID_NAMESPACE);
                }
                let ids = self.subsystem.namespaces.iter().map(|n| n.nsid);
                out.extend_from_slice(&identify::active_namespace_list(ids, sqe.nsid()));
            }
            cns::NAMESPACE_ID_DESCRIPTORS => match self.namespace_for_identify(sqe.nsid()) {
                Err(st) => return fail(cid, st),
                Ok(None) => return fail(cid, NvmeStatus::INVALID_NAMESPACE),
                Ok(Some(i)) => {
                    let n = &self.subsystem.namespaces[i];
                    let d = [
                        NsIdDescriptor::Nguid(n.nguid),
                        NsIdDescriptor::Uuid(n.uuid),
                        NsIdDescriptor::Csi(CSI_NVM),
                    ];
                    out.extend_from_slice(&identify::ns_id_descriptor_list(&d));
                }
            },
            // The NVM command set's own structures: all fields zero means
            // "no limits" for the controller and no extended formats for a
            // namespace; Linux asks for both.
            cns::CSI_CONTROLLER if cmd.csi == CSI_NVM => out.resize(identify::IDENTIFY_DATA_BYTES, 0),
            cns::CSI_NAMESPACE if cmd.csi == CSI_NVM => match self.namespace_for_identify(sqe.nsid()) {
                Err(st) => return fail(cid, st),
                Ok(_) => out.resize(identify::IDENTIFY_DATA_BYTES, 0),
            },
            _ => return fail(cid, NvmeStatus::INVALID_FIELD),
        }
        ok(cid, 0)
    }

    /// Ok(Some(index)) for an active NSID, Ok(None) for a valid but inactive
    /// one (1..=NN), Invalid Namespace otherwise.
    fn namespace_for_identify(&self, nsid: u32) -> Result<Option<usize>, NvmeStatus> {
        if nsid == 0 || nsid > self.subsystem.nn() {
            return Err(NvmeStatus::INVALID_NAMESPACE);
        }
        Ok(self.subsystem.namespace_index(nsid))
    }

    /// The Identify Controller data this controller reports.
    pub fn identify_controller(&self) -> IdentifyController {
        let l = &self.target.limits;
        let mut c = IdentifyController::default();
        let mdts = (l.mdts_bytes / 4096).trailing_zeros() as u8;
        c.set_sn(&self.subsystem.serial).set_mn(&self.subsystem.model).set_fr(FIRMWARE_REVISION);
        c.set_vid(PCI_VENDOR_ID).set_ssvid(PCI_VENDOR_ID);
        c.set_rab(6).set_mdts(mdts).set_cntlid(self.cntlid).set_ver(NVME_VERSION);
        c.set_ctratt(CTRATT_HOSTID_128 | CTRATT_TRAFFIC_BASED_KEEP_ALIVE);
        c.set_acl(3).set_aerl((ASYNC_EVENT_REQUESTS_MAX - 1) as u8).set_frmw(0x3);
        // Extended data for Get Log Page: NUMDU and 64-bit offsets honoured.
        c.set_lpa(1 << 2).set_elpe(0).set_npss(0).set_kas(1);
        c.set_sqes(0x66).set_cqes(0x44).set_maxcmd(l.queue_depth_max.min(0xFFFF) as u16);
        c.set_subnqn(&self.subsystem.nqn);
        c.set_ioccsz((64 + l.in_capsule_data_bytes) / 16)
            .set_iorcsz(1)
            .set_icdoff(0)
            .set_fcatt(0)
            .set_msdbd(1);
        let mut sgl = sgls::SUPPORTED | sgls::OFFSET;
        if self.port.transport == TransportKind::Rdma {
            sgl |= sgls::KEYED;
        }
        c.set_sgls(sgl);
        if self.is_discovery() {
            c.set_cntrltype(cntrltype::DISCOVERY).set_oaes(oaes::DISCOVERY_LOG_CHANGE_NOTICES);
            return c;
        }
        let nn = self.subsystem.nn();
        c.set_cntrltype(cntrltype::IO);
        c.set_cmic(cmic::MULTI_PORT | cmic::MULTI_CONTROLLER | cmic::ANA_REPORTING);
        c.set_oaes(oaes::ANA_CHANGE_NOTICES | oaes::NAMESPACE_ATTRIBUTE_NOTICES);
        // SAVE_AND_SELECT: Get Features honours SEL (current, default,
        // saved, supported capabilities); Set Features with SV set gets
        // Feature Identifier Not Saveable, since nothing is saveable.
        c.set_nn(nn)
            .set_mnan(nn)
            .set_oncs(oncs::WRITE_ZEROES | oncs::DATASET_MANAGEMENT | oncs::SAVE_AND_SELECT);
        // VWC bits 2:1 = 10b: Flush with the broadcast NSID is not supported.
        c.set_vwc(if self.subsystem.volatile_write_cache { 0b101 } else { 0b100 });
        c.set_anatt(l.anatt_s)
            .set_anacap(ANACAP)
            .set_anagrpmax(ANA_GROUP_ID_MAX)
            .set_nanagrpid(ANA_GROUP_ID_MAX);
        c
    }

    /// The Identify Namespace data of namespace `index`.
    pub fn identify_namespace(&self, index: usize) -> IdentifyNamespace {
        let n = &self.subsystem.namespaces[index];
        let mut d = IdentifyNamespace::default();
        d.set_nsze(n.block_count).set_ncap(n.block_count).set_nuse(n.block_count);
        d.set_nlbaf(0).set_flbas(0).set_lbaf0_ms(0).set_lbaf0_lbads(n.block_shift);
        // Both nodes report the namespace: it is shared (multi-path).
        d.set_nmic(NMIC_SHARED).set_anagrpid(n.ana_group).set_nguid(n.nguid);
        // Deallocated blocks read as zeros (DLFEAT bits 2:0 = 001b).
        d.set_dlfeat(0x1);
        d
    }

    fn get_log_page(&self, sqe: &Sqe, out: &mut Vec<u8>) -> AdminOutcome {
        let cid = sqe.cid();
        let g = GetLogPage::parse(sqe.cdw10(), sqe.cdw11(), sqe.cdw12(), sqe.cdw13(), sqe.cdw14());
        if g.length_bytes() > u64::from(self.target.limits.mdts_bytes) {
            return fail(cid, NvmeStatus::INVALID_FIELD);
        }
        let mut page = Vec::new();
        let event = match (self.is_discovery(), g.lid) {
            (true, lid::DISCOVERY) => {
                self.target.build_discovery_log(&self.hostnqn, &mut page);
                EVENT_DISCOVERY
            }
            (false, lid::ERROR_INFORMATION) => {
                // ELPE = 0: one entry. No errors are recorded, so it is
                // empty (error count 0).
                page.extend_from_slice(&ErrorInfoEntry::default().0);
                0
            }
            (false, lid::SMART_HEALTH) => {
                // Media wear and temperature are the backend's; this target
                // reports full spare and no warnings. Counters are not kept.
                let mut s = SmartLog::default();
                s.set_available_spare_pct(100).set_available_spare_threshold_pct(10);
                page.extend_from_slice(&s.0);
                0
            }
            (false, lid::FIRMWARE_SLOT) => {
                // Mandatory for I/O controllers; consistent with FRMW (one
                // read-only slot) and FR.
                page.extend_from_slice(&log::firmware_slot_log(FIRMWARE_REVISION));
                0
            }
            (false, lid::CHANGED_NAMESPACE_LIST) => {
                // Namespaces are fixed at start-up: the list is always empty.
                page.extend_from_slice(&log::changed_namespace_list(&[]));
                EVENT_NS_ATTR
            }
            (false, lid::ANA) => {
                let groups = self
                    .subsystem
                    .ana_groups
                    .iter()
                    .map(|(g, nsids)| (*g, self.port.ana_state(*g), nsids.as_slice()));
                log::build_ana_log(
                    self.target.ana_change_count(),
                    groups,
                    g.lsp & ANA_LSP_RGO != 0,
                    &mut page,
                );
                EVENT_ANA
            }
            _ => return fail(cid, NvmeStatus::INVALID_LOG_PAGE),
        };
        if let Err(st) = g.window(&page, out) {
            return fail(cid, st);
        }
        if !g.rae && event != 0 {
            // Reading the log unmasks its event. An event raised but not yet
            // reported stays pending: the host may read the log because an
            // I/O got an ANA status first, and must still get the notice
            // (as the Linux target does), or it never learns from the event.
            let mut s = lock(&self.state);
            s.masked &= !event;
            self.update_event_ready(&s);
        }
        ok(cid, 0)
    }

    fn get_features(&self, sqe: &Sqe) -> AdminOutcome {
        let cid = sqe.cid();
        let g = GetFeatures::parse(sqe.cdw10());
        let s = lock(&self.state);
        if g.sel == features::SEL_SUPPORTED_CAPABILITIES {
            // Every feature we support is changeable, none saveable.
            return match g.fid {
                fid::ASYNC_EVENT_CONFIGURATION | fid::KEEP_ALIVE_TIMER => ok(cid, 1 << 2),
                fid::NUMBER_OF_QUEUES
                | fid::VOLATILE_WRITE_CACHE
                | fid::ARBITRATION
                | fid::POWER_MANAGEMENT
                | fid::TEMPERATURE_THRESHOLD
                    if !self.is_discovery() =>
                {
                    ok(cid, 1 << 2)
                }
                _ => fail(cid, NvmeStatus::INVALID_FIELD),
            };
        }
        if g.sel > 3 {
            return fail(cid, NvmeStatus::INVALID_FIELD);
        }
        let current = g.sel == 0;
        match g.fid {
            fid::ASYNC_EVENT_CONFIGURATION => ok(cid, if current { s.aec } else { 0 }),
            fid::KEEP_ALIVE_TIMER => ok(cid, if current { self.kato_ms() } else { 0 }),
            fid::NUMBER_OF_QUEUES if !self.is_discovery() => {
                let n = s.granted_queues.unwrap_or(self.target.limits.io_queues_max);
                ok(cid, QueueCounts { submission: n, completion: n }.encode())
            }
            fid::VOLATILE_WRITE_CACHE if self.subsystem.volatile_write_cache => {
                ok(cid, u32::from(current && s.vwc_enabled))
            }
            // Default and saved (nothing is saveable) are the power-on values.
            fid::ARBITRATION if !self.is_discovery() => {
                ok(cid, if current { s.arbitration } else { features::ARBITRATION_BURST_NO_LIMIT })
            }
            fid::POWER_MANAGEMENT if !self.is_discovery() => {
                ok(cid, if current { s.power_management } else { 0 })
            }
            fid::TEMPERATURE_THRESHOLD if !self.is_discovery() => {
                // Only the Composite Temperature has thresholds: there are no
                // other sensors.
                let t = features::TemperatureThreshold::parse(sqe.cdw11());
                if t.tmpsel != features::TMPSEL_COMPOSITE {
                    return fail(cid, NvmeStatus::INVALID_FIELD);
                }
                let (over, under) = if current {
                    (s.temperature_over_k, s.temperature_under_k)
                } else {
                    (features::OVER_TEMPERATURE_DEFAULT_K, 0)
                };
                match t.thsel {
                    features::THSEL_OVER => ok(cid, u32::from(over)),
                    features::THSEL_UNDER => ok(cid, u32::from(under)),
                    _ => fail(cid, NvmeStatus::INVALID_FIELD),
                }
            }
            _ => fail(cid, NvmeStatus::INVALID_FIELD),
        }
    }

    fn set_features(&self, sqe: &Sqe) -> AdminOutcome {
        let cid = sqe.cid();
        let f = SetFeatures::parse(sqe.cdw10());
        if f.save {
            return fail(cid, NvmeStatus::FEATURE_NOT_SAVEABLE);
        }
        let mut s = lock(&self.state);
        let cdw11 = sqe.cdw11();
        match f.fid {
            fid::ASYNC_EVENT_CONFIGURATION => {
                let supported = if self.is_discovery() {
                    aec::DISCOVERY_LOG_CHANGE_NOTICES
                } else {
                    aec::SMART_WARNINGS | aec::ANA_CHANGE_NOTICES | aec::NAMESPACE_ATTRIBUTE_NOTICES
                };
                if cdw11 & !supported != 0 {
                    return fail(cid, NvmeStatus::INVALID_FIELD);
                }
                s.aec = cdw11;
                ok(cid, 0)
            }
            fid::KEEP_ALIVE_TIMER => {
                self.kato_ms.store(features::keep_alive_timeout_ms(cdw11), Ordering::Release);
                ok(cid, 0)
            }
            fid::NUMBER_OF_QUEUES if !self.is_discovery() => {
                let req = QueueCounts::decode(cdw11);
                // FFFFh (0's-based) is invalid for either count.
                if req.submission > 0xFFFF || req.completion > 0xFFFF {
                    return fail(cid, NvmeStatus::INVALID_FIELD);
                }
                // The count is fixed once I/O queues exist (spec: only
                // after a reset may it change).
                if s.io_queues.iter().any(|&q| q) {
                    return fail(cid, NvmeStatus::COMMAND_SEQUENCE_ERROR);
                }
                let n = req.submission.min(req.completion).min(self.target.limits.io_queues_max);
                s.granted_queues = Some(n);
                ok(cid, QueueCounts { submission: n, completion: n }.encode())
            }
            fid::VOLATILE_WRITE_CACHE if self.subsystem.volatile_write_cache => {
                s.vwc_enabled = features::volatile_write_cache_enabled(cdw11);
                ok(cid, 0)
            }
            fid::ARBITRATION if !self.is_discovery() => {
                // Bits 7:3 are reserved; the weights matter only with
                // weighted round robin (CAP.AMS), which is not offered.
                s.arbitration = cdw11 & !0xf8;
                ok(cid, 0)
            }
            fid::POWER_MANAGEMENT if !self.is_discovery() => {
                // NPSS = 0: power state 0 only; workload hints 0-2 are defined.
                let (ps, wh) = features::power_state(cdw11);
                if ps != 0 || wh > 2 {
                    return fail(cid, NvmeStatus::INVALID_FIELD);
                }
                s.power_management = cdw11 & 0xff;
                ok(cid, 0)
            }
            fid::TEMPERATURE_THRESHOLD if !self.is_discovery() => {
                let t = features::TemperatureThreshold::parse(cdw11);
                let composite = t.tmpsel == features::TMPSEL_COMPOSITE || t.tmpsel == features::TMPSEL_ALL;
                match t.thsel {
                    features::THSEL_OVER if composite => s.temperature_over_k = t.kelvin,
                    features::THSEL_UNDER if composite => s.temperature_under_k = t.kelvin,
                    _ => return fail(cid, NvmeStatus::INVALID_FIELD),
                }
                ok(cid, 0)
            }
            _ => fail(cid, NvmeStatus::INVALID_FIELD),
        }
    }

    fn async_event_request(&self, cid: u16) -> AdminOutcome {
        let mut s = lock(&self.state);
        if s.parked_aers.len() >= ASYNC_EVENT_REQUESTS_MAX {
            return fail(cid, NvmeStatus::ASYNC_EVENT_LIMIT_EXCEEDED);
        }
        s.parked_aers.push_back(cid);
        // An event already pending completes this request at once.
        let outcome = match Self::pop_event(&mut s) {
            Some(c) => AdminOutcome::Complete(c),
            None => AdminOutcome::AsyncEventParked,
        };
        self.update_event_ready(&s);
        outcome
    }

    /// The completions owed for parked Asynchronous Event Requests when the
    /// association ends (Aborted - SQ Deletion), for the transport to send or
    /// drop; the list is empty after this call.
    pub fn drain_parked_async_events(&self) -> Vec<Cqe> {
        let mut s = lock(&self.state);
        let out =
            s.parked_aers.drain(..).map(|cid| Cqe::new(cid, NvmeStatus::ABORTED_SQ_DELETION, 0)).collect();
        self.update_event_ready(&s);
        out
    }

    // ---- I/O ----

    /// Checks an I/O command against this controller's namespaces, the ANA
    /// state of the namespace's group on this port, the LBA range, MDTS and
    /// the SGL. Takes no lock and allocates nothing.
    pub fn check_io(&self, sqe: &Sqe) -> Result<IoCommand, NvmeStatus> {
        if !self.is_ready() || self.is_discovery() {
            return Err(NvmeStatus::COMMAND_SEQUENCE_ERROR);
        }
        let opc = sqe.opcode();
        if !matches!(
            opc,
            nvm_opc::READ
                | nvm_opc::WRITE
                | nvm_opc::FLUSH
                | nvm_opc::WRITE_ZEROES
                | nvm_opc::DATASET_MANAGEMENT
        ) {
            return Err(NvmeStatus::INVALID_OPCODE);
        }
        if sqe.fuse() != 0 {
            return Err(NvmeStatus::INVALID_FIELD);
        }
        let nsid = sqe.nsid();
        let ns_index = self.subsystem.namespace_index(nsid).ok_or(NvmeStatus::INVALID_NAMESPACE)?;
        let ns = &self.subsystem.namespaces[ns_index];
        match self.port.ana_state(ns.ana_group) {
            AnaState::Optimized | AnaState::NonOptimized => {}
            AnaState::Inaccessible => return Err(NvmeStatus::ANA_INACCESSIBLE),
            AnaState::PersistentLoss => return Err(NvmeStatus::ANA_PERSISTENT_LOSS),
            AnaState::Change => return Err(NvmeStatus::ANA_TRANSITION),
        }
        let (kind, slba, block_count, data_bytes) = match opc {
            nvm_opc::READ | nvm_opc::WRITE => {
                let n = sqe.block_count();
                let bytes = u64::from(n) << ns.block_shift;
                if bytes > u64::from(self.target.limits.mdts_bytes) {
                    return Err(NvmeStatus::INVALID_FIELD);
                }
                let kind = if opc == nvm_opc::READ { IoKind::Read } else { IoKind::Write };
                (kind, sqe.slba(), n, bytes as u32)
            }
            nvm_opc::WRITE_ZEROES => {
                let kind = IoKind::WriteZeroes { deallocate: nvm::write_zeroes_deallocate(sqe.cdw12()) };
                (kind, sqe.slba(), sqe.block_count(), 0)
            }
            nvm_opc::DATASET_MANAGEMENT => {
                let ranges = nvm::dsm_range_count(sqe.cdw10());
                let kind = IoKind::DatasetManagement { ranges, deallocate: nvm::dsm_deallocate(sqe.cdw11()) };
                // The ranges come first; a host may send a larger buffer (Linux
                // sends a whole 4 KiB page for a discard), as nvmet accepts.
                let needed = ranges * DSM_RANGE_BYTES as u32;
                let sent = sqe.sgl().length();
                if sent < needed || sent > needed.max(DSM_BUFFER_BYTES_MAX) {
                    return Err(NvmeStatus::DATA_SGL_LENGTH_INVALID);
                }
                (kind, 0, 0, sent)
            }
            _ => (IoKind::Flush, 0, 0, 0),
        };
        if block_count != 0 {
            let end = slba.checked_add(u64::from(block_count)).ok_or(NvmeStatus::LBA_OUT_OF_RANGE)?;
            if end > ns.block_count {
                return Err(NvmeStatus::LBA_OUT_OF_RANGE);
            }
        }
        let data = self.check_sgl(sqe, kind, data_bytes)?;
        Ok(IoCommand {
            kind,
            cid: sqe.cid(),
            nsid,
            ns_index,
            slba,
            block_count,
            fua: matches!(kind, IoKind::Read | IoKind::Write | IoKind::WriteZeroes { .. }) && sqe.fua(),
            data_bytes,
            data,
        })
    }

    /// Matches the SGL descriptor to the transfer: its type must suit the
    /// port's transport and the direction, and its length must equal the
    /// command's data length.
    fn check_sgl(&self, sqe: &Sqe, kind: IoKind, data_bytes: u32) -> Result<DataLocation, NvmeStatus> {
        if sqe.psdt() == 0 {
            // Fabrics carries SGLs only.
            return Err(NvmeStatus::INVALID_FIELD);
        }
        let sgl = sqe.sgl();
        if data_bytes == 0 {
            return if sgl.length() == 0 {
                Ok(DataLocation::None)
            } else {
                Err(NvmeStatus::DATA_SGL_LENGTH_INVALID)
            };
        }
        let to_target = !matches!(kind, IoKind::Read);
        let location = match (sgl.identifier(), self.port.transport) {
            (SGL_ID_DATA_BLOCK_OFFSET, _) if to_target => {
                if sgl.address() != 0 {
                    return Err(NvmeStatus::SGL_OFFSET_INVALID);
                }
                if data_bytes > self.target.limits.in_capsule_data_bytes {
                    return Err(NvmeStatus::DATA_SGL_LENGTH_INVALID);
                }
                DataLocation::InCapsule
            }
            (SGL_ID_TRANSPORT_DATA_BLOCK, TransportKind::Tcp) => DataLocation::Transport,
            (id, TransportKind::Rdma)
                if id == SGL_ID_KEYED_DATA_BLOCK || id == SGL_ID_KEYED_DATA_BLOCK | 0xA =>
            {
                // Keyed descriptors: 3-byte length at bytes 10:8, key at 15:11.
                let b = &sqe.sgl().0;
                let len = u32::from_le_bytes([b[8], b[9], b[10], 0]);
                if len != data_bytes {
                    return Err(NvmeStatus::DATA_SGL_LENGTH_INVALID);
                }
                let key = u32::from_le_bytes([b[11], b[12], b[13], b[14]]);
                return Ok(DataLocation::Keyed { address: sgl.address(), key });
            }
            _ => return Err(NvmeStatus::SGL_DESCRIPTOR_TYPE_INVALID),
        };
        if sgl.length() != data_bytes {
            return Err(NvmeStatus::DATA_SGL_LENGTH_INVALID);
        }
        Ok(location)
    }

    /// Checks one Dataset Management range of namespace `ns_index`.
    pub fn check_dsm_range(&self, ns_index: usize, range: &nvm::DsmRange) -> Result<(), NvmeStatus> {
        let ns = self.subsystem.namespaces.get(ns_index).ok_or(NvmeStatus::INVALID_NAMESPACE)?;
        let end =
            range.slba().checked_add(u64::from(range.block_count())).ok_or(NvmeStatus::LBA_OUT_OF_RANGE)?;
        if end > ns.block_count {
            return Err(NvmeStatus::LBA_OUT_OF_RANGE);
        }
        Ok(())
    }
}
