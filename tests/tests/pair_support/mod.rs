//! A pair of `tandem serve` processes on loopback, as the pair tests use it:
//! two file media in one shared scratch directory (nsid 1 in group 1 homed
//! on a, nsid 2 in group 2 homed on b), each node its own `/dev/shm` ring
//! directory, fresh host and interconnect ports, a control socket each, and
//! the fault injector on every medium. The status helpers read what
//! `tandem rpc status` reports per group.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tandem_nvmf::host::{ConnectOptions, HostController, IoQueue};
use tandem_tests::{free_port, loopback, NodeProcess, Scratch};

use crate::staging_support::{wait_until, ShmDir, BLOCK_BYTES};

pub const PAIR_SUBNQN: &str = "nqn.2026-11.io.tandem:pair-test";
/// The key both nodes share (64 hex digits).
pub const PAIR_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
/// Blocks of each namespace.
pub const NS_BLOCKS: u64 = 4096;
/// How long without a frame before a node counts its partner as away.
pub const PARTNER_TIMEOUT_MS: u64 = 500;
/// How long the medium may fail writes before its owner stops taking them.
pub const MEDIUM_FAILED_LIMIT_MS: u64 = 1500;

/// One node of the pair. Field order: the process goes before its ring dir.
pub struct PairNode {
    pub node: NodeProcess,
    pub name: &'static str,
    pub addr: SocketAddr,
    pub link: SocketAddr,
    pub rpc_socket: PathBuf,
    pub shm: ShmDir,
}

pub struct Pair {
    pub a: PairNode,
    pub b: PairNode,
    pub scratch: Scratch,
}

struct Side {
    name: &'static str,
    node_id: u64,
    port_id: u16,
    cntlid: (&'static str, &'static str),
    home_group: u32,
}

const SIDES: [Side; 2] = [
    Side { name: "a", node_id: 1, port_id: 1, cntlid: ("1", "0x7fff"), home_group: 1 },
    Side { name: "b", node_id: 2, port_id: 2, cntlid: ("0x8000", "0xffef"), home_group: 2 },
];

#[allow(clippy::too_many_arguments)] // one config per side: every field differs
fn config(
    me: &Side,
    other: &Side,
    addrs: (SocketAddr, SocketAddr),
    links: (SocketAddr, SocketAddr),
    scratch: &Scratch,
    rpc: &std::path::Path,
    shm: &ShmDir,
    medium_failed_limit_ms: u64,
) -> String {
    let mut c = format!(
        "[node]\nname = \"{}\"\ncntlid_min = {}\ncntlid_max = {}\ncores = [0]\npoll = \"adaptive\"\n\
         rpc_socket = \"{}\"\n\n\
         [[ports]]\nid = {}\ntransport = \"tcp\"\naddr = \"{}\"\n\n\
         [[remote_ports]]\nid = {}\ntransport = \"tcp\"\naddr = \"{}\"\n\n\
         [[subsystems]]\nnqn = \"{PAIR_SUBNQN}\"\nserial = \"TANDEMPAIRT1\"\nmodel = \"Tandem pair test\"\n\
         allow_any_host = true\n",
        me.name,
        me.cntlid.0,
        me.cntlid.1,
        rpc.display(),
        me.port_id,
        addrs.0,
        other.port_id,
        addrs.1
    );
    for nsid in 1..=2u32 {
        c.push_str(&format!(
            "\n[[subsystems.namespaces]]\nnsid = {nsid}\nana_group = {nsid}\nbackend = \"file\"\npath = \"{}\"\n\
             size = {}\nblock_size = {BLOCK_BYTES}\nfault_injection = true\n",
            medium_path(scratch, nsid).display(),
            NS_BLOCKS * BLOCK_BYTES as u64,
        ));
    }
    c.push_str(&format!(
        "\n[staging]\ndomain = \"shm\"\ndir = \"{}\"\nring_size = \"16MiB\"\n\n\
         [pair]\nnode_id = {}\npartner = \"{}\"\npartner_id = {}\nlisten = \"{}\"\npartner_addr = \"{}\"\n\
         key = \"{PAIR_KEY}\"\nhome_groups = [{}]\npartner_away = \"write-back\"\n\
         partner_timeout_ms = {PARTNER_TIMEOUT_MS}\nmedium_failed_limit_ms = {medium_failed_limit_ms}\n",
        shm.path.display(),
        me.node_id,
        other.name,
        other.node_id,
        links.0,
        links.1,
        me.home_group,
    ));
    c
}

pub fn medium_path(scratch: &Scratch, nsid: u32) -> PathBuf {
    scratch.path.join(format!("shared-ns{nsid}.img"))
}

impl Pair {
    /// Starts both nodes and waits until each mirrors its group into the other.
    pub fn start(name: &str) -> Pair {
        Pair::start_with(name, MEDIUM_FAILED_LIMIT_MS)
    }

    /// `start`, with the medium allowed to fail for `medium_failed_limit_ms`.
    pub fn start_with(name: &str, medium_failed_limit_ms: u64) -> Pair {
        let scratch = Scratch::new(name);
        let addrs = [loopback(free_port()), loopback(free_port())];
        let links = [loopback(free_port()), loopback(free_port())];
        let mut nodes = Vec::new();
        for (i, me) in SIDES.iter().enumerate() {
            let other = &SIDES[1 - i];
            let shm = ShmDir::new();
            let rpc_socket = scratch.path.join(format!("{}.sock", me.name));
            let text = config(
                me,
                other,
                (addrs[i], addrs[1 - i]),
                (links[i], links[1 - i]),
                &scratch,
                &rpc_socket,
                &shm,
                medium_failed_limit_ms,
            );
            let node = NodeProcess::start(&scratch.path, me.name, &text, &[addrs[i]]);
            nodes.push(PairNode { node, name: me.name, addr: addrs[i], link: links[i], rpc_socket, shm });
        }
        let b = nodes.pop().expect("b");
        let a = nodes.pop().expect("a");
        let pair = Pair { a, b, scratch };
        pair.a.wait_rpc();
        pair.b.wait_rpc();
        pair.wait_in_sync();
        pair
    }

    /// Waits until both owners report their mirror in sync.
    pub fn wait_in_sync(&self) {
        for n in [&self.a, &self.b] {
            let group = n.home_group();
            wait_until(Duration::from_secs(30), &format!("node {}'s mirror to be in sync", n.name), || {
                n.mirror(group)["state"] == "in-sync"
            });
        }
    }
}

impl PairNode {
    pub fn home_group(&self) -> u32 {
        if self.name == "a" {
            1
        } else {
            2
        }
    }

    pub fn wait_rpc(&self) {
        wait_until(Duration::from_secs(30), "the control socket", || {
            tandem_target::rpc::call(&self.rpc_socket, "tandem_get_status", json!({})).is_ok()
        });
    }

    pub fn rpc(&self, method: &str, params: Value) -> Value {
        tandem_target::rpc::call(&self.rpc_socket, method, params)
            .unwrap_or_else(|e| panic!("node {}: rpc {method}: {e}; log:\n{}", self.name, self.node.log()))
    }

    pub fn status(&self) -> Value {
        self.rpc("tandem_get_status", json!({}))
    }

    /// The status entry of ANA group `group` (the same number as its nsid here).
    pub fn group(&self, group: u32) -> Value {
        let status = self.status();
        status["pair"]["groups"]
            .as_array()
            .and_then(|g| g.iter().find(|e| e["group"].as_u64() == Some(u64::from(group))).cloned())
            .unwrap_or_else(|| panic!("node {}: no group {group} in {status}", self.name))
    }

    /// The mirror of an owned group.
    pub fn mirror(&self, group: u32) -> Value {
        self.group(group)["mirror"].clone()
    }

    /// The second store of a partner's group.
    pub fn second_store(&self, group: u32) -> Value {
        self.group(group)["second_store"].clone()
    }

    pub fn link(&self) -> Value {
        self.status()["pair"]["link"].clone()
    }

    pub fn fault(&self, nsid: u32, action: &str, extra: Value) -> Value {
        let mut params = json!({ "nsid": nsid, "action": action });
        if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                p.insert(k.clone(), v.clone());
            }
        }
        self.rpc("tandem_fault_inject", params)
    }

    pub fn connect(&self, io_queues: u16, queue_depth: u16) -> (HostController, Vec<IoQueue>) {
        let mut options = ConnectOptions::new(&self.addr.to_string(), PAIR_SUBNQN);
        options.io_queues = io_queues;
        options.queue_depth = queue_depth;
        options.timeout = Duration::from_secs(30);
        let mut controller = HostController::connect(&options)
            .unwrap_or_else(|e| panic!("connect to node {}: {e}; log:\n{}", self.name, self.node.log()));
        let queues = controller.take_io_queues();
        (controller, queues)
    }

    /// Restarts the node's process (after a kill) and waits for its control socket.
    pub fn restart(&mut self) {
        self.node.restart();
        self.wait_rpc();
    }
}

/// A u64 field of a status object, or a panic naming it.
pub fn field(v: &Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or_else(|| panic!("no {name} in {v}"))
}
