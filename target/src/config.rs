//! The node's TOML configuration: what a storage admin writes in
//! `node-a.toml` and `tandem serve --config` reads.
//!
//! Parsing is two steps. serde (with `deny_unknown_fields`) checks the shape;
//! then `validate` turns the raw strings into typed values (sizes, socket
//! addresses, ANA states, NGUIDs) and checks the relations between fields
//! (unique NSIDs and port ids, the controller ID range, ANA group ids, block
//! sizes, NQN syntax). Every error names the field by its path, for example
//! `subsystems[0].namespaces[1].size: expected a size like "1GiB"`, so an
//! admin can fix a file without reading code. A `Config` that exists is valid.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tandem_nvmf::spec::fabrics::{DISCOVERY_NQN, NQN_BYTES_MAX};
use tandem_nvmf::spec::log::AnaState;

/// Largest ANA group id (ANAGRPMAX in Identify Controller); group ids in
/// the config lie in 1..=ANA_GROUP_ID_MAX.
pub const ANA_GROUP_ID_MAX: u32 = 32;
/// Largest namespace id a subsystem may use (NN is the largest configured).
/// Small so that the I/O path can index namespaces by NSID in a table.
pub const NSID_MAX: u32 = 1024;
/// Highest controller id usable by the dynamic model (FFF0h..FFFFh are reserved).
pub const CNTLID_LIMIT: u16 = 0xFFEF;

/// A configuration that cannot be used, with the path of the culprit field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {problem}")]
    Field { path: String, problem: String },
    #[error("line {line}, column {column} ({path}): {message}")]
    Toml { line: usize, column: usize, path: String, message: String },
    #[error("cannot read config {}: {source}", file.display())]
    Read { file: PathBuf, source: std::io::Error },
}

fn field_error(path: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Field { path: path.into(), problem: problem.into() }
}

/// A fully validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub node: NodeConfig,
    /// This node's listening ports.
    pub ports: Vec<PortConfig>,
    /// The partner's ports, listed by our discovery controller.
    pub remote_ports: Vec<PortConfig>,
    pub subsystems: Vec<SubsystemConfig>,
    pub limits: Limits,
    /// The persistent staging log (first store); None: every namespace is
    /// write-through.
    pub staging: Option<StagingConfig>,
    /// This node's half of an HA pair; None: a single node.
    pub pair: Option<PairConfig>,
}

/// This node's half of an HA pair (`[pair]`): the interconnect to the
/// partner, which groups this node owns, and what writes do while the
/// partner is away.
#[derive(Clone, Debug, PartialEq)]
pub struct PairConfig {
    /// This node's id on the interconnect (the partner's must differ).
    pub node_id: u64,
    /// The partner's node name (logs and status).
    pub partner: String,
    pub partner_id: u64,
    /// Where this node accepts the partner's mirror connections.
    pub listen: SocketAddr,
    /// Where the partner accepts this node's.
    pub partner_addr: SocketAddr,
    pub key: crate::ha::link::auth::LinkKey,
    /// ANA groups this node owns: it stages and writes their namespaces, and
    /// keeps a second store for each namespace of the partner's groups.
    pub home_groups: Vec<u32>,
    /// Bytes of each second store (a copy of one of the partner's rings: the
    /// partner's `staging.ring_size`).
    pub second_store_bytes: u64,
    pub partner_away: PartnerAway,
    /// No frame from the partner for this long: it is away.
    pub partner_timeout_ms: u64,
    /// The medium failing writes for this long: stop taking writes for the
    /// groups this node owns (until it works again).
    pub medium_failed_limit_ms: u64,
}

impl PairConfig {
    pub fn owns_group(&self, group: u32) -> bool {
        self.home_groups.contains(&group)
    }
}

/// What a write does while the partner cannot hold its copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartnerAway {
    /// Complete with the one persistent copy, and say so loudly (status
    /// "degraded"); the mirror is resynced when the partner returns.
    WriteBack,
    /// Complete once the write is on the medium.
    WriteThrough,
    /// Wait until the partner is back (the host's timeout applies).
    Stall,
}

/// Where staged writes are kept before they reach the medium.
#[derive(Clone, Debug, PartialEq)]
pub struct StagingConfig {
    pub domain: StagingDomain,
    /// Directory of the ring files, one per staged namespace.
    pub dir: PathBuf,
    /// Bytes of each namespace's ring.
    pub ring_bytes: u64,
    /// When `dir` is the shm default: the default of builds before the ring
    /// was bound to its medium (`/dev/shm/tandem-<name>`), which a node checks
    /// for staged writes left behind, so they are never silently ignored.
    pub legacy_dir: Option<PathBuf>,
}

/// The default ring directory of an shm staging log:
/// `/dev/shm/tandem-<name>-<8 hex digits>`, the digits a CRC32C of the
/// absolute data directory (or, without one, of the working directory, where
/// relative medium paths then live). Two nodes of the same name run from two
/// directories so never share rings. The path is made absolute lexically (no
/// symlinks resolved), so it is the same at every start of the same config.
pub fn default_shm_staging_dir(node_name: &str, data_dir: Option<&Path>) -> Result<PathBuf, String> {
    let base = std::path::absolute(data_dir.unwrap_or(Path::new(".")))
        .map_err(|e| format!("cannot make the data directory absolute: {e}"))?;
    let hash = crc32c::crc32c(base.as_os_str().as_encoded_bytes());
    Ok(PathBuf::from(format!("/dev/shm/tandem-{node_name}-{hash:08x}")))
}

/// The persistence domain of the staging rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StagingDomain {
    /// A file in /dev/shm: survives a crash of the process, not a power loss.
    Shm,
    /// A regular file persisted with msync: survives power loss, slowly.
    File,
    /// A DAX file on persistent memory mapped with MAP_SYNC: survives power loss.
    Pmem,
}

impl StagingDomain {
    /// What a write staged in this domain survives.
    pub fn survives_power_loss(&self) -> bool {
        !matches!(self, StagingDomain::Shm)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    pub name: String,
    pub cntlid_min: u16,
    pub cntlid_max: u16,
    pub cores: Vec<usize>,
    pub poll: PollMode,
    pub data_dir: Option<PathBuf>,
    /// The control socket `tandem rpc` talks to; none if not configured.
    pub rpc_socket: Option<PathBuf>,
    /// Where `GET /metrics` (Prometheus) is served; none if not configured.
    pub metrics: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PollMode {
    /// Spin, then sleep when idle (SPDK's interrupt mode as the model).
    Adaptive,
    /// Never sleep.
    Busy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Tcp,
    Rdma,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PortConfig {
    /// NVMe-oF port id (PORTID), unique across the pair.
    pub id: u16,
    pub transport: TransportKind,
    pub addr: SocketAddr,
    /// ANA state per group id as seen through this port; groups not listed
    /// are optimized.
    pub ana: BTreeMap<u32, AnaState>,
}

impl PortConfig {
    /// The configured initial ANA state of `group` on this port.
    pub fn ana_state(&self, group: u32) -> AnaState {
        self.ana.get(&group).copied().unwrap_or(AnaState::Optimized)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SubsystemConfig {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    /// Whether to report a volatile write cache (hosts then send Flush).
    pub volatile_write_cache: bool,
    pub namespaces: Vec<NamespaceConfig>,
}

impl SubsystemConfig {
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.allow_any_host || self.hosts.iter().any(|h| h == hostnqn)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Ram,
    File,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NamespaceConfig {
    pub nsid: u32,
    pub ana_group: u32,
    pub backend: BackendKind,
    /// RAM size, or the size a new file is created with.
    pub size_bytes: Option<u64>,
    pub path: Option<PathBuf>,
    pub block_size: u32,
    pub nguid: [u8; 16],
    pub uuid: [u8; 16],
    /// Writes go straight to the medium, not through the staging log.
    pub write_through: bool,
    /// Wrap the medium in a fault injector driven by `tandem rpc` (tests).
    pub fault_injection: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub mdts_bytes: u32,
    pub in_capsule_data_bytes: u32,
    pub queue_depth_max: u32,
    pub io_queues_max: u32,
    pub kato_default_ms: u32,
    pub anatt_s: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            mdts_bytes: 131_072,
            in_capsule_data_bytes: 8192,
            queue_depth_max: 128,
            io_queues_max: 8,
            kato_default_ms: 120_000,
            anatt_s: 10,
        }
    }
}

/// A commented example; `Config::parse(EXAMPLE)` succeeds (tested).
pub const EXAMPLE: &str = r#"# Tandem node configuration. Every field is listed; optional ones say so.

[node]
name = "a"                      # node name, used in logs
cntlid_min = 1                  # dynamic controller IDs come from [cntlid_min, cntlid_max];
cntlid_max = 0x7fff             #   the two nodes of a pair must not overlap (max 0xffef)
cores = [0]                     # one reactor per listed core
poll = "adaptive"               # "adaptive" (spin, then sleep when idle) or "busy"
data_dir = "tandem-data/a"      # optional: created at start; relative namespace paths live here
                                #   (a relative data_dir is relative to the working directory)
# rpc_socket = "/run/tandem-a.sock" # optional: control socket for `tandem rpc` (JSON-RPC 2.0)
# metrics = "127.0.0.1:9420"    # optional: serve Prometheus metrics at http://ADDR/metrics

[[ports]]
id = 1                          # NVMe-oF port id (PORTID in discovery), unique across the pair
transport = "tcp"               # "tcp" (NVMe/RDMA is not built yet: "rdma" is refused)
addr = "127.0.0.1:4420"         # listen address (IP literal and port)
ana = { 1 = "optimized" }       # ANA state of each group through this port: "optimized",
                                #   "non-optimized", "inaccessible", "persistent-loss" or
                                #   "change"; groups not listed are optimized

[[remote_ports]]                # the partner's ports, listed by our discovery controller
id = 2
transport = "tcp"
addr = "127.0.0.1:4421"

[[subsystems]]
nqn = "nqn.2026-11.io.tandem:demo"  # "nqn." prefix, at most 223 bytes
serial = "TANDEM0001"           # serial number, at most 20 ASCII characters
model = "Tandem"                # model number, at most 40 ASCII characters
allow_any_host = true           # optional, default false: then only `hosts` may connect
hosts = []                      # host NQNs allowed to connect
volatile_write_cache = false    # optional: report a volatile write cache (hosts send Flush);
                                #   set automatically when staging is in shm or a file
                                #   namespace is written through

[[subsystems.namespaces]]
nsid = 1                        # namespace id, 1..=1024, unique in the subsystem
ana_group = 1                   # ANA group id, 1..=32
backend = "file"                # "ram" (memory, lost at exit) or "file" (a file or block device)
path = "ns1.img"                # file backend: the image file (created if missing)
size = "1GiB"                   # the size a new file is created with, or the ram size
                                #   (bytes as an integer, or a string with KiB/MiB/GiB/TiB)
block_size = 4096               # 512 or 4096
# write_through = true          # optional: bypass the staging log for this namespace
# nguid = "0123456789abcdef0123456789abcdef"      # optional: 32 hex digits
# uuid = "01234567-89ab-cdef-0123-456789abcdef"   # optional
#   stable defaults for both are derived from the subsystem NQN and the nsid,
#   so the two nodes of a pair report the same identifiers

[staging]                       # optional: the persistent staging log in front of the media.
                                #   Without it every write goes straight to the medium.
domain = "shm"                  # "shm": /dev/shm, survives a crash of the process but NOT a power
                                #   loss (hosts are told the write cache is volatile and send Flush);
                                #   "file": msync, survives power loss; "pmem": DAX + MAP_SYNC
# dir = "/dev/shm/tandem-a"     # optional: where the rings live; shm default:
                                #   /dev/shm/tandem-<name>-<hash of the absolute data_dir>, so the
                                #   same config run from two directories never shares rings.
                                #   Each ring records the medium it stages for and is replayed
                                #   only into that medium.
ring_size = "64MiB"             # optional: each staged namespace's ring

[limits]                        # optional section; the defaults are shown
mdts_bytes = 131072             # largest data transfer of one command (power of two >= 4096)
in_capsule_data_bytes = 8192    # largest write data carried in the command capsule
queue_depth_max = 128           # largest queue size a host may connect with (CAP.MQES + 1)
io_queues_max = 8               # I/O queues granted per controller
kato_default_ms = 120000        # keep-alive timeout of discovery controllers connected with KATO 0
anatt_s = 10                    # ANA transition time reported to hosts (ANATT), 1..=255
"#;

/// The example pair: `tandem config example --node a` and `--node b` print
/// the two configs of a pair on loopback that run as printed from one
/// working directory (tested): one shared medium directory, each node its own
/// shm domain, nsid 1 in ANA group 1 homed on a, nsid 2 in group 2 on b.
pub fn pair_example(node: char) -> Option<String> {
    let (me, other, id, partner_id, cntlid, port, remote, listen, partner_addr, home, ana) = match node {
        'a' => (
            "a",
            "b",
            1,
            2,
            ("1", "0x7fff"),
            (1, 4420),
            (2, 4421),
            4430,
            4431,
            1,
            ("optimized", "inaccessible"),
        ),
        'b' => (
            "b",
            "a",
            2,
            1,
            ("0x8000", "0xffef"),
            (2, 4421),
            (1, 4420),
            4431,
            4430,
            2,
            ("inaccessible", "optimized"),
        ),
        _ => return None,
    };
    Some(
        PAIR_EXAMPLE
            .replace("{me}", me)
            .replace("{other}", other)
            .replace("{id}", &id.to_string())
            .replace("{partner_id}", &partner_id.to_string())
            .replace("{cntlid_min}", cntlid.0)
            .replace("{cntlid_max}", cntlid.1)
            .replace("{port_id}", &port.0.to_string())
            .replace("{port}", &port.1.to_string())
            .replace("{remote_id}", &remote.0.to_string())
            .replace("{remote}", &remote.1.to_string())
            .replace("{listen}", &listen.to_string())
            .replace("{partner_addr}", &partner_addr.to_string())
            .replace("{home}", &home.to_string())
            .replace("{ana1}", ana.0)
            .replace("{ana2}", ana.1),
    )
}

const PAIR_EXAMPLE: &str = r#"# Tandem pair, node {me}. Its partner: `tandem config example --node {other}`.
# Both run from the same working directory; the medium files in tandem-pair/shared
# are opened by both nodes, and each node writes only the namespaces of its own groups.

[node]
name = "{me}"
cntlid_min = {cntlid_min}                 # the two nodes' controller ID ranges are disjoint
cntlid_max = {cntlid_max}
cores = [0]
poll = "adaptive"
data_dir = "tandem-pair/{me}"
rpc_socket = "tandem-pair/{me}.sock" # `tandem rpc --socket tandem-pair/{me}.sock status`

[[ports]]
id = {port_id}
transport = "tcp"
addr = "127.0.0.1:{port}"
ana = { 1 = "{ana1}", 2 = "{ana2}" }   # the owner's groups optimized, the partner's inaccessible

[[remote_ports]]                # the partner's port, listed by this node's discovery controller
id = {remote_id}
transport = "tcp"
addr = "127.0.0.1:{remote}"

[[subsystems]]                  # the same subsystem, serial and namespace ids on both nodes
nqn = "nqn.2026-11.io.tandem:pair"
serial = "TANDEMPAIR1"
model = "Tandem"
allow_any_host = true

[[subsystems.namespaces]]
nsid = 1
ana_group = 1                   # homed on node a
backend = "file"
path = "../shared/ns1.img"      # relative to data_dir: tandem-pair/shared/ns1.img
size = "1GiB"
block_size = 4096

[[subsystems.namespaces]]
nsid = 2
ana_group = 2                   # homed on node b
backend = "file"
path = "../shared/ns2.img"
size = "1GiB"
block_size = 4096

[staging]
domain = "shm"                  # each node its own shm domain (see `tandem config example`)
ring_size = "64MiB"

[pair]
node_id = {id}                     # this node's id on the interconnect
partner = "{other}"
partner_id = {partner_id}
listen = "127.0.0.1:{listen}"      # the interconnect: the partner mirrors into this node here
partner_addr = "127.0.0.1:{partner_addr}"
# The shared key (64 to 512 hex digits), the same on both nodes. This one is
# an example: make your own (`head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'`)
# and prefer key_file = "PATH" (first line, hex; not readable by all users).
key = "54616e64656d206578616d706c65206b65792c207265706c6163652069742121"
home_groups = [{home}]            # the ANA groups this node owns
# second_store_size = "64MiB"   # optional, default staging.ring_size: each copy of a partner ring
partner_away = "write-back"     # while the partner is away: "write-back" (one persistent copy,
                                #   status degraded), "write-through" (complete when on the
                                #   medium) or "stall" (wait for the partner)
# partner_timeout_ms = 1000     # optional: no frame from the partner this long = away
# medium_failed_limit_ms = 30000 # optional: the medium failing writes this long = stop taking
                                #   writes for this node's groups (meanwhile the partner writes
                                #   the failed records from its copy)
"#;

// ---- raw shapes, as serde reads them ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    #[serde(default)]
    ports: Vec<RawPort>,
    #[serde(default)]
    remote_ports: Vec<RawPort>,
    #[serde(default)]
    subsystems: Vec<RawSubsystem>,
    #[serde(default)]
    limits: RawLimits,
    staging: Option<RawStaging>,
    pair: Option<RawPair>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    node_id: u64,
    partner: String,
    partner_id: u64,
    listen: String,
    partner_addr: String,
    key: Option<String>,
    key_file: Option<PathBuf>,
    home_groups: Vec<u32>,
    second_store_size: Option<toml::Value>,
    partner_away: PartnerAway,
    partner_timeout_ms: Option<u64>,
    medium_failed_limit_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStaging {
    domain: StagingDomain,
    dir: Option<PathBuf>,
    ring_size: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    cntlid_min: u32,
    cntlid_max: u32,
    cores: Vec<usize>,
    #[serde(default = "default_poll")]
    poll: PollMode,
    data_dir: Option<PathBuf>,
    rpc_socket: Option<PathBuf>,
    metrics: Option<String>,
}

fn default_poll() -> PollMode {
    PollMode::Adaptive
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    id: u32,
    transport: TransportKind,
    addr: String,
    #[serde(default)]
    ana: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubsystem {
    nqn: String,
    serial: String,
    model: String,
    #[serde(default)]
    allow_any_host: bool,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    volatile_write_cache: bool,
    #[serde(default)]
    namespaces: Vec<RawNamespace>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamespace {
    nsid: u32,
    ana_group: u32,
    backend: BackendKind,
    size: Option<toml::Value>,
    path: Option<PathBuf>,
    block_size: u32,
    nguid: Option<String>,
    uuid: Option<String>,
    #[serde(default)]
    write_through: bool,
    #[serde(default)]
    fault_injection: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    mdts_bytes: u32,
    in_capsule_data_bytes: u32,
    queue_depth_max: u32,
    io_queues_max: u32,
    kato_default_ms: u32,
    anatt_s: u32,
}

impl Default for RawLimits {
    fn default() -> Self {
        let l = Limits::default();
        RawLimits {
            mdts_bytes: l.mdts_bytes,
            in_capsule_data_bytes: l.in_capsule_data_bytes,
            queue_depth_max: l.queue_depth_max,
            io_queues_max: l.io_queues_max,
            kato_default_ms: l.kato_default_ms,
            anatt_s: u32::from(l.anatt_s),
        }
    }
}

impl Config {
    /// Parses and validates a configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        validate(raw)
    }

    /// Reads and parses a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|source| ConfigError::Read { file: file.to_path_buf(), source })?;
        Config::parse(&text)
    }
}

/// Turns a serde/TOML error into one naming the table path and key at the
/// error's position: serde reports the offending key, but not the array
/// indices, so they are recovered from the table headers before the error.
fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let offset = e.span().map_or(0, |s| s.start).min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = offset - before.rfind('\n').map_or(0, |p| p + 1) + 1;
    ConfigError::Toml { line, column, path: path_at(text, offset), message: e.message().trim().to_string() }
}

/// The dotted path (with array indices) of the key at byte `offset`.
fn path_at(text: &str, offset: usize) -> String {
    let mut table = String::new();
    // Counts of array-of-tables headers, per full header name, reset when a
    // parent array element starts.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut key = None;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let start = at;
        at += line.len();
        let t = line.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            if start <= offset && offset < at {
                table = render(&name, &counts, true);
                break;
            }
            *counts.entry(name.clone()).or_insert(0) += 1;
            let child = format!("{name}.");
            counts.retain(|k, _| !k.starts_with(&child));
            table = render(&name, &counts, false);
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
        } else if start <= offset && offset < at {
            key = t
                .split('=')
                .next()
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty() && !k.starts_with('#'));
            break;
        }
        if at > offset {
            break;
        }
    }
    match key {
        Some(k) if table.is_empty() => k,
        Some(k) => format!("{table}.{k}"),
        None if table.is_empty() => "(top level)".to_string(),
        None => table,
    }
}

/// Renders `a.b` as `a[i].b[j]` from header counts; `pending` means the
/// header of the element itself (the next index) is being pointed at.
fn render(name: &str, counts: &BTreeMap<String, usize>, pending: bool) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    let mut out = String::new();
    for i in 0..parts.len() {
        let full = parts[..=i].join(".");
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(parts[i]);
        if let Some(&n) = counts.get(&full) {
            let idx = if pending && i == parts.len() - 1 { n } else { n.saturating_sub(1) };
            out.push_str(&format!("[{idx}]"));
        } else if pending && i == parts.len() - 1 {
            out.push_str("[0]");
        }
    }
    out
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let n = raw.node;
    if n.name.trim().is_empty() {
        return Err(field_error("node.name", "must not be empty"));
    }
    if n.cntlid_min < 1 || n.cntlid_min > u32::from(CNTLID_LIMIT) {
        return Err(field_error("node.cntlid_min", format!("must lie in 1..=0x{CNTLID_LIMIT:x}")));
    }
    if n.cntlid_max < 1 || n.cntlid_max > u32::from(CNTLID_LIMIT) {
        return Err(field_error("node.cntlid_max", format!("must lie in 1..=0x{CNTLID_LIMIT:x}")));
    }
    if n.cntlid_max < n.cntlid_min {
        return Err(field_error(
            "node.cntlid_max",
            "the controller id range [cntlid_min, cntlid_max] is empty",
        ));
    }
    if n.cores.is_empty() {
        return Err(field_error("node.cores", "list at least one core"));
    }
    let mut seen_cores = HashSet::new();
    for (i, c) in n.cores.iter().enumerate() {
        if !seen_cores.insert(*c) {
            return Err(field_error(format!("node.cores[{i}]"), format!("core {c} is listed twice")));
        }
    }
    if let Some(d) = &n.data_dir {
        check_path(d, "node.data_dir")?;
    }
    if let Some(p) = &n.rpc_socket {
        check_path(p, "node.rpc_socket")?;
    }
    let metrics = match &n.metrics {
        None => None,
        Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
            field_error(
                "node.metrics",
                format!("expected an IP address and port like \"127.0.0.1:9420\", got {text:?}"),
            )
        })?),
    };
    let node = NodeConfig {
        name: n.name,
        cntlid_min: n.cntlid_min as u16,
        cntlid_max: n.cntlid_max as u16,
        cores: n.cores,
        poll: n.poll,
        data_dir: n.data_dir,
        rpc_socket: n.rpc_socket,
        metrics,
    };

    let l = raw.limits;
    if !l.mdts_bytes.is_power_of_two() || l.mdts_bytes < 4096 || l.mdts_bytes > (1 << 24) {
        return Err(field_error("limits.mdts_bytes", "must be a power of two in 4096..=16777216"));
    }
    if l.in_capsule_data_bytes > l.mdts_bytes || !l.in_capsule_data_bytes.is_multiple_of(16) {
        return Err(field_error(
            "limits.in_capsule_data_bytes",
            "must be a multiple of 16, at most mdts_bytes",
        ));
    }
    if !(2..=65_536).contains(&l.queue_depth_max) {
        return Err(field_error("limits.queue_depth_max", "must lie in 2..=65536"));
    }
    if !(1..=65_535).contains(&l.io_queues_max) {
        return Err(field_error("limits.io_queues_max", "must lie in 1..=65535"));
    }
    if !(1..=255).contains(&l.anatt_s) {
        return Err(field_error("limits.anatt_s", "must lie in 1..=255"));
    }
    let limits = Limits {
        mdts_bytes: l.mdts_bytes,
        in_capsule_data_bytes: l.in_capsule_data_bytes,
        queue_depth_max: l.queue_depth_max,
        io_queues_max: l.io_queues_max,
        kato_default_ms: l.kato_default_ms,
        anatt_s: l.anatt_s as u8,
    };

    if raw.ports.is_empty() {
        return Err(field_error("ports", "list at least one port"));
    }
    let mut port_ids = HashSet::new();
    let mut addrs = HashSet::new();
    let ports = convert_ports(raw.ports, "ports", &mut port_ids, &mut addrs)?;
    let remote_ports = convert_ports(raw.remote_ports, "remote_ports", &mut port_ids, &mut addrs)?;

    let mut nqns = HashSet::new();
    let mut subsystems = Vec::with_capacity(raw.subsystems.len());
    for (si, s) in raw.subsystems.into_iter().enumerate() {
        let p = format!("subsystems[{si}]");
        check_nqn(&s.nqn, &format!("{p}.nqn"))?;
        if s.nqn == DISCOVERY_NQN {
            return Err(field_error(format!("{p}.nqn"), "the discovery NQN is reserved"));
        }
        if !nqns.insert(s.nqn.clone()) {
            return Err(field_error(format!("{p}.nqn"), format!("subsystem {} is listed twice", s.nqn)));
        }
        check_ascii(&s.serial, 20, &format!("{p}.serial"))?;
        check_ascii(&s.model, 40, &format!("{p}.model"))?;
        for (hi, h) in s.hosts.iter().enumerate() {
            check_nqn(h, &format!("{p}.hosts[{hi}]"))?;
        }
        if s.namespaces.is_empty() {
            return Err(field_error(format!("{p}.namespaces"), "list at least one namespace"));
        }
        let mut nsids = HashSet::new();
        let mut namespaces = Vec::with_capacity(s.namespaces.len());
        for (ni, ns) in s.namespaces.into_iter().enumerate() {
            let np = format!("{p}.namespaces[{ni}]");
            namespaces.push(convert_namespace(ns, &np, &s.nqn, &mut nsids)?);
        }
        namespaces.sort_by_key(|n| n.nsid);
        subsystems.push(SubsystemConfig {
            nqn: s.nqn,
            serial: s.serial,
            model: s.model,
            allow_any_host: s.allow_any_host,
            hosts: s.hosts,
            volatile_write_cache: s.volatile_write_cache,
            namespaces,
        });
    }
    let staging = match raw.staging {
        None => None,
        Some(st) => {
            let dir_explicit = st.dir.is_some();
            let dir = match (st.dir, st.domain) {
                (Some(d), _) => {
                    check_path(&d, "staging.dir")?;
                    d
                }
                (None, StagingDomain::Shm) => default_shm_staging_dir(&node.name, node.data_dir.as_deref())
                    .map_err(|e| field_error("staging.dir", e))?,
                (None, StagingDomain::File) => match &node.data_dir {
                    Some(d) => d.join("staging"),
                    None => return Err(field_error("staging.dir", "needed when node.data_dir is not set")),
                },
                (None, StagingDomain::Pmem) => {
                    return Err(field_error(
                        "staging.dir",
                        "a pmem domain needs the directory of a DAX mount",
                    ))
                }
            };
            let ring_bytes = match &st.ring_size {
                None => 64 << 20,
                Some(v) => parse_size(v).filter(|b| *b >= 1 << 20 && b % 4096 == 0).ok_or_else(|| {
                    field_error(
                        "staging.ring_size",
                        "expected a size of at least \"1MiB\", a multiple of 4KiB",
                    )
                })?,
            };
            if node.cores.len() > 1 {
                return Err(field_error(
                    "node.cores",
                    "staging runs on one reactor: list one core (several reactors with staging are not supported yet)",
                ));
            }
            let legacy_dir = (st.domain == StagingDomain::Shm && !dir_explicit)
                .then(|| PathBuf::from(format!("/dev/shm/tandem-{}", node.name)));
            Some(StagingConfig { domain: st.domain, dir, ring_bytes, legacy_dir })
        }
    };
    // Say "volatile write cache" (VWC) wherever a completed write may still
    // be lost to a power cut, so that hosts send Flush: writes staged in a
    // volatile domain (Flush drains the staging log), and writes that go
    // straight to a file medium (the page cache or the disk's cache may hold
    // them; Flush is fdatasync). A staged write in a persistent domain is
    // durable when it completes; a RAM namespace is lost at exit anyway.
    let persistent_staging = staging.as_ref().is_some_and(|st| st.domain.survives_power_loss());
    let volatile_staging = staging.is_some() && !persistent_staging;
    for s in subsystems.iter_mut() {
        let volatile = s.namespaces.iter().any(|n| {
            let staged = staging.is_some() && !n.write_through;
            (staged && volatile_staging) || (!staged && n.backend == BackendKind::File)
        });
        if volatile {
            s.volatile_write_cache = true;
        }
    }
    // Relative namespace paths live in the data directory.
    if let Some(data_dir) = &node.data_dir {
        for ns in subsystems.iter_mut().flat_map(|s| s.namespaces.iter_mut()) {
            if let Some(p) = &ns.path {
                if p.is_relative() {
                    ns.path = Some(data_dir.join(p));
                }
            }
        }
    }
    let pair = match raw.pair {
        None => None,
        Some(p) => Some(convert_pair(p, &node, staging.as_ref(), &subsystems)?),
    };
    let mut ports = ports;
    if let Some(pair) = &pair {
        // Through this node's ports a group it owns is optimized and one of
        // the partner's inaccessible, unless the port says otherwise.
        let groups: Vec<u32> =
            subsystems.iter().flat_map(|s| s.namespaces.iter().map(|n| n.ana_group)).collect();
        for port in ports.iter_mut() {
            for &g in &groups {
                let default = if pair.owns_group(g) { AnaState::Optimized } else { AnaState::Inaccessible };
                port.ana.entry(g).or_insert(default);
            }
        }
    }
    Ok(Config { node, ports, remote_ports, subsystems, limits, staging, pair })
}

fn convert_pair(
    p: RawPair,
    node: &NodeConfig,
    staging: Option<&StagingConfig>,
    subsystems: &[SubsystemConfig],
) -> Result<PairConfig, ConfigError> {
    use crate::ha::link::auth::LinkKey;
    let Some(staging) = staging else {
        return Err(field_error("pair", "a pair mirrors the staging log: add a [staging] section"));
    };
    if p.node_id == 0 {
        return Err(field_error("pair.node_id", "must be at least 1"));
    }
    if p.partner_id == 0 || p.partner_id == p.node_id {
        return Err(field_error("pair.partner_id", "must be at least 1 and differ from pair.node_id"));
    }
    if p.partner.trim().is_empty() || p.partner == node.name {
        return Err(field_error("pair.partner", "name the partner node (not empty, not node.name)"));
    }
    let listen: SocketAddr = p
        .listen
        .parse()
        .map_err(|_| field_error("pair.listen", format!("{:?} is not an IP:port address", p.listen)))?;
    let partner_addr: SocketAddr = p.partner_addr.parse().map_err(|_| {
        field_error("pair.partner_addr", format!("{:?} is not an IP:port address", p.partner_addr))
    })?;
    if partner_addr == listen {
        return Err(field_error("pair.partner_addr", "is this node's own pair.listen"));
    }
    let key = match (p.key, p.key_file) {
        (Some(hex), None) => {
            LinkKey::from_hex(&hex, "pair.key").map_err(|e| field_error("pair.key", strip(&e)))?
        }
        (None, Some(file)) => {
            LinkKey::from_file(&file).map_err(|e| field_error("pair.key_file", strip(&e)))?
        }
        _ => return Err(field_error("pair.key", "give exactly one of pair.key and pair.key_file")),
    };
    if p.home_groups.is_empty() {
        return Err(field_error("pair.home_groups", "list the ANA groups this node owns"));
    }
    for (i, &g) in p.home_groups.iter().enumerate() {
        check_group(g, &format!("pair.home_groups[{i}]"))?;
    }
    let namespaces = || subsystems.iter().flat_map(|s| s.namespaces.iter());
    if let Some(ns) = namespaces().find(|n| n.write_through) {
        return Err(field_error(
            "pair",
            format!(
                "namespace {} is write_through: every namespace of a pair is staged and mirrored",
                ns.nsid
            ),
        ));
    }
    let second_store_bytes = match &p.second_store_size {
        None => staging.ring_bytes,
        Some(v) => parse_size(v).filter(|b| *b >= 1 << 20 && b % 4096 == 0).ok_or_else(|| {
            field_error("pair.second_store_size", "expected a size of at least \"1MiB\", a multiple of 4KiB")
        })?,
    };
    let partner_timeout_ms = p.partner_timeout_ms.unwrap_or(1000);
    if !(50..=60_000).contains(&partner_timeout_ms) {
        return Err(field_error("pair.partner_timeout_ms", "must lie in 50..=60000"));
    }
    let medium_failed_limit_ms = p.medium_failed_limit_ms.unwrap_or(30_000);
    if !(100..=3_600_000).contains(&medium_failed_limit_ms) {
        return Err(field_error("pair.medium_failed_limit_ms", "must lie in 100..=3600000"));
    }
    Ok(PairConfig {
        medium_failed_limit_ms,
        node_id: p.node_id,
        partner: p.partner,
        partner_id: p.partner_id,
        listen,
        partner_addr,
        key,
        home_groups: p.home_groups,
        second_store_bytes,
        partner_away: p.partner_away,
        partner_timeout_ms,
    })
}

/// A key error's text without its own field prefix (the config error adds it).
fn strip(e: &crate::ha::link::auth::KeyError) -> String {
    let text = e.to_string();
    match text.split_once(": ") {
        Some((_, rest)) => rest.to_string(),
        None => text,
    }
}

fn convert_ports(
    raw: Vec<RawPort>,
    what: &str,
    ids: &mut HashSet<u16>,
    addrs: &mut HashSet<SocketAddr>,
) -> Result<Vec<PortConfig>, ConfigError> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let path = format!("{what}[{i}]");
        let id =
            u16::try_from(p.id).map_err(|_| field_error(format!("{path}.id"), "must lie in 0..=65535"))?;
        if !ids.insert(id) {
            return Err(field_error(format!("{path}.id"), format!("port id {id} is used twice")));
        }
        // Until the RDMA transport exists a port that says "rdma" would be
        // served as NVMe/TCP, and a host told to use RDMA would get resets.
        if p.transport == TransportKind::Rdma {
            return Err(field_error(
                format!("{path}.transport"),
                "\"rdma\" is not supported yet: this build serves NVMe/TCP only",
            ));
        }
        let addr: SocketAddr = p.addr.parse().map_err(|_| {
            field_error(
                format!("{path}.addr"),
                format!("expected an IP address and port like \"127.0.0.1:4420\", got {:?}", p.addr),
            )
        })?;
        if !addrs.insert(addr) {
            return Err(field_error(format!("{path}.addr"), format!("address {addr} is used twice")));
        }
        let mut ana = BTreeMap::new();
        for (g, s) in p.ana {
            let gp = format!("{path}.ana.{g}");
            let group: u32 = g.parse().map_err(|_| field_error(&gp, "ANA group ids are integers"))?;
            check_group(group, &gp)?;
            let state = match s.as_str() {
                "optimized" => AnaState::Optimized,
                "non-optimized" => AnaState::NonOptimized,
                "inaccessible" => AnaState::Inaccessible,
                "persistent-loss" => AnaState::PersistentLoss,
                "change" => AnaState::Change,
                _ => {
                    return Err(field_error(
                        gp,
                        format!(
                            "expected optimized, non-optimized, inaccessible, persistent-loss or change, \
                             got {s:?}"
                        ),
                    ))
                }
            };
            ana.insert(group, state);
        }
        out.push(PortConfig { id, transport: p.transport, addr, ana });
    }
    Ok(out)
}

fn convert_namespace(
    ns: RawNamespace,
    np: &str,
    subnqn: &str,
    nsids: &mut HashSet<u32>,
) -> Result<NamespaceConfig, ConfigError> {
    if ns.nsid == 0 || ns.nsid > NSID_MAX {
        return Err(field_error(format!("{np}.nsid"), format!("must lie in 1..={NSID_MAX}")));
    }
    if !nsids.insert(ns.nsid) {
        return Err(field_error(
            format!("{np}.nsid"),
            format!("nsid {} is used twice in this subsystem", ns.nsid),
        ));
    }
    check_group(ns.ana_group, &format!("{np}.ana_group"))?;
    if ns.block_size != 512 && ns.block_size != 4096 {
        return Err(field_error(format!("{np}.block_size"), "must be 512 or 4096"));
    }
    let size_bytes = match &ns.size {
        None => None,
        Some(v) => {
            let b = parse_size(v)
                .ok_or_else(|| field_error(format!("{np}.size"), "expected a size like \"1GiB\""))?;
            if b == 0 || b % u64::from(ns.block_size) != 0 {
                return Err(field_error(format!("{np}.size"), "must be a non-zero multiple of block_size"));
            }
            Some(b)
        }
    };
    match ns.backend {
        BackendKind::Ram if size_bytes.is_none() => {
            return Err(field_error(format!("{np}.size"), "a ram namespace needs a size"))
        }
        BackendKind::Ram if ns.path.is_some() => {
            return Err(field_error(format!("{np}.path"), "a ram namespace has no path"))
        }
        BackendKind::File => match &ns.path {
            None => return Err(field_error(format!("{np}.path"), "a file namespace needs a path")),
            Some(p) => check_path(p, &format!("{np}.path"))?,
        },
        _ => {}
    }
    let nguid = match &ns.nguid {
        Some(s) => {
            parse_hex16(s).ok_or_else(|| field_error(format!("{np}.nguid"), "expected 32 hex digits"))?
        }
        None => derive_id(subnqn, ns.nsid, 0x4e47_5549),
    };
    let uuid = match &ns.uuid {
        Some(s) if s.len() == 36 && [8, 13, 18, 23].iter().all(|&i| s.as_bytes()[i] == b'-') => {
            parse_hex16(s).ok_or_else(|| {
                field_error(format!("{np}.uuid"), "expected a UUID like 01234567-89ab-cdef-0123-456789abcdef")
            })?
        }
        Some(_) => {
            return Err(field_error(
                format!("{np}.uuid"),
                "expected a UUID like 01234567-89ab-cdef-0123-456789abcdef",
            ))
        }
        None => {
            let mut u = derive_id(subnqn, ns.nsid, 0x5555_4944);
            // RFC 9562 version 8 (vendor-specific) and the RFC variant bits.
            u[6] = (u[6] & 0x0f) | 0x80;
            u[8] = (u[8] & 0x3f) | 0x80;
            u
        }
    };
    Ok(NamespaceConfig {
        nsid: ns.nsid,
        ana_group: ns.ana_group,
        backend: ns.backend,
        size_bytes,
        path: ns.path,
        block_size: ns.block_size,
        nguid,
        uuid,
        write_through: ns.write_through,
        fault_injection: ns.fault_injection,
    })
}

fn check_group(group: u32, path: &str) -> Result<(), ConfigError> {
    if group == 0 || group > ANA_GROUP_ID_MAX {
        return Err(field_error(path, format!("ANA group ids lie in 1..={ANA_GROUP_ID_MAX}")));
    }
    Ok(())
}

fn check_path(p: &Path, path: &str) -> Result<(), ConfigError> {
    if p.as_os_str().is_empty() {
        return Err(field_error(path, "must not be empty"));
    }
    Ok(())
}

fn check_ascii(s: &str, max: usize, path: &str) -> Result<(), ConfigError> {
    if s.is_empty() || s.len() > max || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(field_error(path, format!("expected 1..={max} printable ASCII characters")));
    }
    Ok(())
}

/// NQN syntax (NVMe Base 2.0, 4.5): "nqn." then a yyyy-mm date, a dot, and
/// the naming authority; at most 223 bytes of UTF-8.
pub fn check_nqn(s: &str, path: &str) -> Result<(), ConfigError> {
    let b = s.as_bytes();
    let dated = b.len() > 12
        && b.starts_with(b"nqn.")
        && b[4..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..11].iter().all(u8::is_ascii_digit)
        && b[11] == b'.';
    if !dated {
        return Err(field_error(
            path,
            format!("expected an NQN like \"nqn.2026-11.io.example:name\", got {s:?}"),
        ));
    }
    if b.len() > NQN_BYTES_MAX || b.contains(&0) {
        return Err(field_error(path, format!("an NQN has at most {NQN_BYTES_MAX} bytes")));
    }
    Ok(())
}

/// Parses a size: an integer number of bytes, or a string of digits with an
/// optional KiB/MiB/GiB/TiB (or B) suffix.
fn parse_size(v: &toml::Value) -> Option<u64> {
    match v {
        toml::Value::Integer(i) => u64::try_from(*i).ok(),
        toml::Value::String(s) => {
            let s = s.trim();
            let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (num, unit) = s.split_at(digits_end);
            let n: u64 = num.parse().ok()?;
            let mult: u64 = match unit.trim() {
                "" | "B" => 1,
                "KiB" => 1 << 10,
                "MiB" => 1 << 20,
                "GiB" => 1 << 30,
                "TiB" => 1 << 40,
                _ => return None,
            };
            n.checked_mul(mult)
        }
        _ => None,
    }
}

fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

/// A stable 16-byte identifier from the subsystem NQN and nsid, the same on
/// both nodes of a pair (so multipath sees one namespace): four CRC32C
/// values over the NQN and nsid with different seeds.
fn derive_id(subnqn: &str, nsid: u32, salt: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_exact_mut(4).enumerate() {
        let seed = salt.wrapping_add(i as u32).wrapping_mul(0x9E37_79B9);
        let c = crc32c::crc32c_append(seed, subnqn.as_bytes());
        let c = crc32c::crc32c_append(c, &nsid.to_le_bytes());
        chunk.copy_from_slice(&c.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_text(text: &str) -> String {
        match Config::parse(text) {
            Ok(_) => panic!("config unexpectedly valid"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn default_shm_ring_dir_depends_on_the_data_dir() {
        let a = default_shm_staging_dir("a", Some(Path::new("/srv/one/data"))).expect("a");
        let b = default_shm_staging_dir("a", Some(Path::new("/srv/two/data"))).expect("b");
        assert_ne!(a, b, "two data directories, two ring directories");
        assert!(a.to_string_lossy().starts_with("/dev/shm/tandem-a-"), "{}", a.display());
        // The same directory named relatively or absolutely is the same ring.
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(
            default_shm_staging_dir("a", Some(Path::new("d"))).expect("rel"),
            default_shm_staging_dir("a", Some(&cwd.join("d"))).expect("abs")
        );
        // Without a data_dir the working directory decides.
        assert_eq!(
            default_shm_staging_dir("a", None).expect("none"),
            default_shm_staging_dir("a", Some(&cwd)).expect("cwd")
        );
        // An explicit dir wins and has no legacy location to check.
        let c = Config::parse(&EXAMPLE.replace("# dir = \"/dev/shm/tandem-a\"", "dir = \"/dev/shm/x\""))
            .expect("explicit dir");
        let st = c.staging.expect("staging");
        assert_eq!((st.dir, st.legacy_dir), (PathBuf::from("/dev/shm/x"), None));
    }

    #[test]
    fn example_parses() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.node.name, "a");
        assert_eq!((c.node.cntlid_min, c.node.cntlid_max), (1, 0x7fff));
        assert_eq!(c.node.poll, PollMode::Adaptive);
        assert_eq!(c.ports[0].addr, "127.0.0.1:4420".parse().unwrap());
        assert_eq!(c.ports[0].ana_state(1), AnaState::Optimized);
        assert_eq!(c.remote_ports[0].id, 2);
        let ns = &c.subsystems[0].namespaces[0];
        assert_eq!((ns.nsid, ns.size_bytes, ns.block_size), (1, Some(1 << 30), 4096));
        assert_eq!(ns.backend, BackendKind::File);
        assert_eq!(ns.path.as_deref(), Some(Path::new("tandem-data/a/ns1.img")), "relative to data_dir");
        assert!(!ns.write_through);
        let st = c.staging.as_ref().expect("the example stages writes");
        assert_eq!(st.domain, StagingDomain::Shm);
        let here = std::env::current_dir().expect("cwd").join("tandem-data/a");
        let hash = crc32c::crc32c(here.as_os_str().as_encoded_bytes());
        assert_eq!(st.dir, PathBuf::from(format!("/dev/shm/tandem-a-{hash:08x}")));
        assert_eq!(st.legacy_dir, Some(PathBuf::from("/dev/shm/tandem-a")));
        assert_eq!(st.ring_bytes, 64 << 20);
        assert_eq!(c.limits, Limits::default());
        assert!(c.subsystems[0].host_allowed("nqn.2014-08.org.nvmexpress:uuid:x"));
    }

    fn example_with(from: &str, to: &str) -> String {
        assert!(EXAMPLE.contains(from), "{from}");
        EXAMPLE.replacen(from, to, 1)
    }

    #[test]
    fn metrics_address_is_optional_and_checked() {
        assert_eq!(Config::parse(EXAMPLE).map(|c| c.node.metrics).ok(), Some(None), "off by default");
        let on = example_with("# metrics = \"127.0.0.1:9420\"", "metrics = \"127.0.0.1:9420\"");
        let c = Config::parse(&on).expect("metrics address");
        assert_eq!(c.node.metrics, Some("127.0.0.1:9420".parse().expect("addr")));
        let bad = example_with("# metrics = \"127.0.0.1:9420\"", "metrics = \"localhost\"");
        assert_eq!(
            err_text(&bad),
            "node.metrics: expected an IP address and port like \"127.0.0.1:9420\", got \"localhost\""
        );
    }

    const SECOND_NS: &str = "\n[[subsystems.namespaces]]\nnsid = 2\nana_group = 2\nbackend = \"ram\"\n\
                             size = \"1GiB\"\nblock_size = 512\n";

    #[test]
    fn bad_size_names_the_field_path() {
        let text = format!("{EXAMPLE}{}", SECOND_NS.replace("\"1GiB\"", "\"lots\""));
        assert_eq!(err_text(&text), "subsystems[0].namespaces[1].size: expected a size like \"1GiB\"");
        let text = format!("{EXAMPLE}{}", SECOND_NS.replace("\"1GiB\"", "\"1000\""));
        assert_eq!(
            err_text(&text),
            "subsystems[0].namespaces[1].size: must be a non-zero multiple of block_size"
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let text = format!("{EXAMPLE}{}colour = \"red\"\n", SECOND_NS);
        let e = err_text(&text);
        assert!(e.contains("subsystems[0].namespaces[1].colour"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
        let e = err_text(&example_with("poll = \"adaptive\"", "poll = \"lazy\""));
        assert!(e.contains("node.poll"), "{e}");
    }

    #[test]
    fn relations_are_validated() {
        let e = err_text(&format!("{EXAMPLE}{}", SECOND_NS.replace("nsid = 2", "nsid = 1")));
        assert_eq!(e, "subsystems[0].namespaces[1].nsid: nsid 1 is used twice in this subsystem");
        let e = err_text(&example_with("id = 2", "id = 1"));
        assert_eq!(e, "remote_ports[0].id: port id 1 is used twice");
        let e = err_text(&example_with("cntlid_max = 0x7fff", "cntlid_max = 0xfff0"));
        assert!(e.starts_with("node.cntlid_max: must lie in 1..=0xffef"), "{e}");
        let e = err_text(&example_with("cntlid_min = 1", "cntlid_min = 0"));
        assert!(e.starts_with("node.cntlid_min"), "{e}");
        let e = err_text(&example_with("cntlid_max = 0x7fff", "cntlid_max = 0"));
        assert!(e.starts_with("node.cntlid_max"), "{e}");
        let mut t = example_with("cntlid_min = 1", "cntlid_min = 100");
        t = t.replacen("cntlid_max = 0x7fff", "cntlid_max = 99", 1);
        assert_eq!(
            err_text(&t),
            "node.cntlid_max: the controller id range [cntlid_min, cntlid_max] is empty"
        );
        let e = err_text(&example_with("ana_group = 1 ", "ana_group = 33 "));
        assert_eq!(e, "subsystems[0].namespaces[0].ana_group: ANA group ids lie in 1..=32");
        let e = err_text(&example_with("ana = { 1 = \"optimized\" }", "ana = { 0 = \"optimized\" }"));
        assert_eq!(e, "ports[0].ana.0: ANA group ids lie in 1..=32");
        let e = err_text(&example_with("ana = { 1 = \"optimized\" }", "ana = { 1 = \"great\" }"));
        assert!(e.starts_with("ports[0].ana.1: expected optimized"), "{e}");
        let e = err_text(&example_with("block_size = 4096", "block_size = 1024"));
        assert_eq!(e, "subsystems[0].namespaces[0].block_size: must be 512 or 4096");
        let e = err_text(&example_with("nqn = \"nqn.2026-11.io.tandem:demo\"", "nqn = \"iqn.bad\""));
        assert!(e.starts_with("subsystems[0].nqn: expected an NQN"), "{e}");
        let long = format!("nqn = \"nqn.2026-11.io.tandem:{}\"", "x".repeat(220));
        let e = err_text(&example_with("nqn = \"nqn.2026-11.io.tandem:demo\"", &long));
        assert!(e.starts_with("subsystems[0].nqn: an NQN has at most 223 bytes"), "{e}");
        let e = err_text(&example_with("hosts = []", "hosts = [\"host\"]"));
        assert!(e.starts_with("subsystems[0].hosts[0]: expected an NQN"), "{e}");
        let e = err_text(&example_with("addr = \"127.0.0.1:4421\"", "addr = \"127.0.0.1:4420\""));
        assert_eq!(e, "remote_ports[0].addr: address 127.0.0.1:4420 is used twice");
        let e = err_text(&example_with("addr = \"127.0.0.1:4420\"", "addr = \"localhost\""));
        assert!(e.starts_with("ports[0].addr: expected an IP address"), "{e}");
        let e = err_text(&example_with("path = \"ns1.img\"", ""));
        assert_eq!(e, "subsystems[0].namespaces[0].path: a file namespace needs a path");
        let e = err_text(&example_with("backend = \"file\"", "backend = \"ram\""));
        assert_eq!(e, "subsystems[0].namespaces[0].path: a ram namespace has no path");
        let e = err_text(&example_with("ring_size = \"64MiB\"", "ring_size = \"12KiB\""));
        assert!(e.starts_with("staging.ring_size"), "{e}");
        let e = err_text(&example_with("domain = \"shm\"", "domain = \"dram\""));
        assert!(e.contains("staging.domain"), "{e}");
        let e = err_text(&example_with("cores = [0]", "cores = [0, 1]"));
        assert!(e.starts_with("node.cores: staging runs on one reactor"), "{e}");
        let e = err_text(&example_with("mdts_bytes = 131072", "mdts_bytes = 100000"));
        assert!(e.starts_with("limits.mdts_bytes"), "{e}");
        let e = err_text(&example_with("queue_depth_max = 128", "queue_depth_max = 1"));
        assert!(e.starts_with("limits.queue_depth_max"), "{e}");
        let e = err_text(&example_with("serial = \"TANDEM0001\"", "serial = \"TANDEM0001TANDEM0001X\""));
        assert!(e.starts_with("subsystems[0].serial"), "{e}");
        let e = err_text(&example_with("cores = [0]", "cores = []"));
        assert!(e.starts_with("node.cores"), "{e}");
        let e = err_text(&example_with("# nguid = \"0123456789abcdef0123456789abcdef\"", "nguid = \"xyz\""));
        assert_eq!(e, "subsystems[0].namespaces[0].nguid: expected 32 hex digits");
    }

    #[test]
    fn volatile_write_cache_follows_what_a_completed_write_survives() {
        let vwc = |text: &str| Config::parse(text).unwrap().subsystems[0].volatile_write_cache;
        assert!(vwc(EXAMPLE), "shm staging is a volatile cache");
        assert!(!vwc(&example_with("domain = \"shm\"", "domain = \"file\"")), "file staging is durable");
        let through = example_with("# write_through = true", "write_through = true");
        assert!(
            vwc(&through.replace("domain = \"shm\"", "domain = \"file\"")),
            "file medium written through"
        );
        let no_staging = &EXAMPLE[..EXAMPLE.find("[staging]").unwrap()];
        assert!(vwc(no_staging), "a file medium without staging");
        let ram =
            no_staging.replace("backend = \"file\"", "backend = \"ram\"").replace("path = \"ns1.img\"", "");
        assert!(!vwc(&ram), "RAM");
    }

    #[test]
    fn identifiers_are_stable_and_parse() {
        let a = Config::parse(EXAMPLE).unwrap();
        let b = Config::parse(EXAMPLE).unwrap();
        assert_eq!(a.subsystems[0].namespaces[0].nguid, b.subsystems[0].namespaces[0].nguid);
        assert_ne!(a.subsystems[0].namespaces[0].nguid, [0; 16]);
        assert_eq!(a.subsystems[0].namespaces[0].uuid[6] >> 4, 8, "UUID version 8");
        let t = example_with(
            "# uuid = \"01234567-89ab-cdef-0123-456789abcdef\"",
            "uuid = \"01234567-89ab-cdef-0123-456789abcdef\"",
        );
        let c = Config::parse(&t).unwrap();
        assert_eq!(c.subsystems[0].namespaces[0].uuid[..4], [0x01, 0x23, 0x45, 0x67]);
        assert_eq!(parse_size(&toml::Value::Integer(4096)), Some(4096));
        assert_eq!(parse_size(&toml::Value::String("2TiB".into())), Some(2 << 40));
        assert_eq!(parse_size(&toml::Value::String("2GB".into())), None);
        assert_eq!(parse_size(&toml::Value::Integer(-1)), None);
    }

    #[test]
    fn rdma_transport_is_refused_naming_the_field() {
        let e = err_text(&EXAMPLE.replacen("transport = \"tcp\"", "transport = \"rdma\"", 1));
        assert_eq!(e, "ports[0].transport: \"rdma\" is not supported yet: this build serves NVMe/TCP only");
        let remote = EXAMPLE.replace(
            "[[remote_ports]]                # the partner's ports, listed by our discovery controller\nid = 2\n\
             transport = \"tcp\"",
            "[[remote_ports]]\nid = 2\ntransport = \"rdma\"",
        );
        assert_ne!(remote, EXAMPLE, "the remote port's transport was replaced");
        let e = err_text(&remote);
        assert!(e.starts_with("remote_ports[0].transport: \"rdma\" is not supported yet"), "{e}");
    }

    #[test]
    fn load_reports_a_missing_file() {
        let e = Config::load(Path::new("/nonexistent/tandem.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
    }

    #[test]
    fn the_example_pair_parses_and_mirrors_each_node_into_the_other() {
        let a = Config::parse(&pair_example('a').unwrap()).unwrap();
        let b = Config::parse(&pair_example('b').unwrap()).unwrap();
        assert!(pair_example('c').is_none());
        let (pa, pb) = (a.pair.clone().unwrap(), b.pair.clone().unwrap());
        assert_eq!((pa.node_id, pa.partner_id), (pb.partner_id, pb.node_id));
        assert_eq!((pa.listen, pa.partner_addr), (pb.partner_addr, pb.listen));
        assert_eq!(pa.key, pb.key, "one shared key");
        assert_eq!((pa.home_groups.clone(), pb.home_groups.clone()), (vec![1], vec![2]));
        assert_eq!(pa.partner_away, PartnerAway::WriteBack);
        assert_eq!(pa.second_store_bytes, a.staging.as_ref().unwrap().ring_bytes);
        // Same subsystem and namespace identity, disjoint controller ids, each
        // other's ports in discovery, and the same medium files.
        assert_eq!(a.subsystems[0].nqn, b.subsystems[0].nqn);
        assert_eq!(a.subsystems[0].serial, b.subsystems[0].serial);
        for (na, nb) in a.subsystems[0].namespaces.iter().zip(&b.subsystems[0].namespaces) {
            assert_eq!((na.nguid, na.uuid), (nb.nguid, nb.uuid));
            let resolve = |p: &Path| {
                p.components().fold(PathBuf::new(), |mut acc, c| {
                    match c {
                        std::path::Component::ParentDir => {
                            acc.pop();
                        }
                        other => acc.push(other),
                    }
                    acc
                })
            };
            assert_eq!(resolve(na.path.as_ref().unwrap()), resolve(nb.path.as_ref().unwrap()));
        }
        assert!(a.node.cntlid_max < b.node.cntlid_min);
        assert_eq!(a.remote_ports[0].addr, b.ports[0].addr);
        assert_eq!(b.remote_ports[0].addr, a.ports[0].addr);
        assert_eq!(a.ports[0].ana_state(1), AnaState::Optimized);
        assert_eq!(a.ports[0].ana_state(2), AnaState::Inaccessible);
        assert_eq!(b.ports[0].ana_state(1), AnaState::Inaccessible);
        assert_eq!(b.ports[0].ana_state(2), AnaState::Optimized);
    }

    #[test]
    fn pair_errors_name_their_field() {
        let a = pair_example('a').unwrap();
        let with = |from: &str, to: &str| {
            assert!(a.contains(from), "{from}");
            err_text(&a.replacen(from, to, 1))
        };
        assert_eq!(
            with("partner_id = 2", "partner_id = 1"),
            "pair.partner_id: must be at least 1 and differ from pair.node_id"
        );
        assert!(with("key = \"", "key = \"zz").starts_with("pair.key: character 0 is not a hex digit"));
        assert!(with("key = \"", "key_file = \"/x\"\nkey = \"").starts_with("pair.key: give exactly one"));
        assert!(with("key = \"54", "key = \"").starts_with("pair.key: "), "an odd or short key is refused");
        assert!(with("listen = \"127.0.0.1:4430\"", "listen = \"here\"").starts_with("pair.listen: "));
        assert_eq!(
            with("partner_addr = \"127.0.0.1:4431\"", "partner_addr = \"127.0.0.1:4430\""),
            "pair.partner_addr: is this node's own pair.listen"
        );
        assert!(with("home_groups = [1]", "home_groups = [33]").starts_with("pair.home_groups[0]: "));
        assert!(with("home_groups = [1]", "home_groups = []").starts_with("pair.home_groups: "));
        assert!(
            with("partner_away = \"write-back\"", "partner_away = \"maybe\"").contains("pair.partner_away")
        );
        assert!(with("# partner_timeout_ms = 1000", "partner_timeout_ms = 5")
            .starts_with("pair.partner_timeout_ms"));
        assert!(
            with("block_size = 4096\n", "block_size = 4096\nwrite_through = true\n").starts_with("pair: ")
        );
        let no_staging = a
            .replace("[staging]", "[unused]")
            .replace("domain = \"shm\"", "")
            .replace("ring_size = \"64MiB\"", "");
        let e = err_text(&no_staging.replace("[unused]", ""));
        assert!(e.starts_with("pair: a pair mirrors the staging log"), "{e}");
    }
}
