//! Helpers shared by the staging-log tests (`staging_*.rs`): a node config
//! with a `[staging]` section in front of file media, a `/dev/shm` ring
//! directory private to one test, host connections, the fault-injection RPC,
//! direct reads of a medium file (to see what really reached the disk, not what
//! the target answers), the ring file's record headers (to damage one on
//! purpose), and the parsing of the recovery log line.
//!
//! Every path a test uses lives in its own `Scratch` directory or its own
//! `/dev/shm/tandem-test-<pid>-<n>` directory, and every port comes from
//! `free_port`, so the tests run in parallel. A `StagedNode` drops its process
//! before its directories, so a ring is never removed under a running node.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tandem_nvmf::host::{ConnectOptions, HostController, IoQueue};
use tandem_perf::prng::{mix64, Rng};
use tandem_tests::{free_port, loopback, NodeProcess, Scratch, TEST_MODEL, TEST_SERIAL, TEST_SUBNQN};

/// Every namespace of these tests has 4 KiB blocks.
pub const BLOCK_BYTES: usize = 4096;

static SHM_SEQ: AtomicU32 = AtomicU32::new(0);

/// A ring directory in /dev/shm private to one test, removed when dropped
/// (even when the test fails: /dev/shm is memory and must not leak).
pub struct ShmDir {
    pub path: PathBuf,
}

impl ShmDir {
    pub fn new() -> ShmDir {
        let n = SHM_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/dev/shm/tandem-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        ShmDir { path }
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The persistence domain of the staging rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    Shm,
    File,
}

/// One file-backed namespace of the test node.
#[derive(Clone, Copy, Debug)]
pub struct NsSpec {
    pub nsid: u32,
    pub block_count: u64,
    pub write_through: bool,
    pub fault_injection: bool,
}

impl NsSpec {
    pub fn staged(nsid: u32, block_count: u64) -> NsSpec {
        NsSpec { nsid, block_count, write_through: false, fault_injection: false }
    }

    pub fn with_faults(self) -> NsSpec {
        NsSpec { fault_injection: true, ..self }
    }

    pub fn write_through(self) -> NsSpec {
        NsSpec { write_through: true, ..self }
    }
}

/// A running `tandem serve` with staging, and where its files are.
/// Field order matters: the process is dropped (killed) before the directories.
pub struct StagedNode {
    pub node: NodeProcess,
    pub addr: SocketAddr,
    pub rpc_socket: PathBuf,
    /// Where the ring files live.
    pub ring_dir: PathBuf,
    pub namespaces: Vec<NsSpec>,
    shm: Option<ShmDir>,
    pub scratch: Scratch,
}

impl StagedNode {
    /// Starts a node named `name` with `domain` staging of `ring_size` (a
    /// config size string such as "16MiB") in front of one file medium per
    /// namespace, on a fresh port, with a control socket.
    pub fn start(name: &str, domain: Domain, ring_size: &str, namespaces: &[NsSpec]) -> StagedNode {
        let scratch = Scratch::new(name);
        let shm = (domain == Domain::Shm).then(ShmDir::new);
        let ring_dir = match &shm {
            Some(d) => d.path.clone(),
            None => scratch.path.join("rings"),
        };
        let addr = loopback(free_port());
        let rpc_socket = scratch.path.join("rpc.sock");
        let mut config = format!(
            "[node]\nname = \"{name}\"\ncntlid_min = 1\ncntlid_max = 0x7fff\ncores = [0]\n\
             poll = \"adaptive\"\nrpc_socket = \"{}\"\n\n\
             [[ports]]\nid = 1\ntransport = \"tcp\"\naddr = \"{addr}\"\n\n\
             [[subsystems]]\nnqn = \"{TEST_SUBNQN}\"\nserial = \"{TEST_SERIAL}\"\nmodel = \"{TEST_MODEL}\"\n\
             allow_any_host = true\n",
            rpc_socket.display()
        );
        for ns in namespaces {
            config.push_str(&format!(
                "\n[[subsystems.namespaces]]\nnsid = {}\nana_group = 1\nbackend = \"file\"\npath = \"{}\"\n\
                 size = {}\nblock_size = {BLOCK_BYTES}\nwrite_through = {}\nfault_injection = {}\n",
                ns.nsid,
                medium_path_in(&scratch.path, ns.nsid).display(),
                ns.block_count * BLOCK_BYTES as u64,
                ns.write_through,
                ns.fault_injection
            ));
        }
        let domain_name = match domain {
            Domain::Shm => "shm",
            Domain::File => "file",
        };
        config.push_str(&format!(
            "\n[staging]\ndomain = \"{domain_name}\"\ndir = \"{}\"\nring_size = \"{ring_size}\"\n\n\
             [limits]\nmdts_bytes = 131072\nin_capsule_data_bytes = 8192\nqueue_depth_max = 128\n\
             io_queues_max = 8\n",
            ring_dir.display()
        ));
        let node = NodeProcess::start(&scratch.path, name, &config, &[addr]);
        let n =
            StagedNode { node, addr, rpc_socket, ring_dir, namespaces: namespaces.to_vec(), shm, scratch };
        n.wait_rpc();
        n
    }

    /// Starts the same config again after a kill or a stop, and waits for
    /// the port and the control socket.
    pub fn restart(&mut self) {
        self.node.restart();
        self.wait_rpc();
    }

    /// The control socket opens after the ports: wait until it answers (a
    /// socket file left by a killed process does not count).
    fn wait_rpc(&self) {
        wait_until(Duration::from_secs(30), "the control socket", || {
            tandem_target::rpc::call(&self.rpc_socket, "tandem_get_status", json!({})).is_ok()
        });
    }

    /// Connects a host with `io_queues` queues of `queue_depth` entries.
    pub fn connect(&self, io_queues: u16, queue_depth: u16) -> (HostController, Vec<IoQueue>) {
        let mut options = ConnectOptions::new(&self.addr.to_string(), TEST_SUBNQN);
        options.io_queues = io_queues;
        options.queue_depth = queue_depth;
        options.timeout = Duration::from_secs(30);
        let mut controller = HostController::connect(&options)
            .unwrap_or_else(|e| panic!("connect to {}: {e}; log:\n{}", self.addr, self.node.log()));
        let queues = controller.take_io_queues();
        assert_eq!(queues.len(), usize::from(io_queues), "I/O queues granted");
        (controller, queues)
    }

    /// Calls an RPC method on the node's control socket.
    pub fn rpc(&self, method: &str, params: Value) -> Value {
        tandem_target::rpc::call(&self.rpc_socket, method, params)
            .unwrap_or_else(|e| panic!("rpc {method}: {e}; log:\n{}", self.node.log()))
    }

    /// Counter `field` of namespace `nsid`'s entry in `tandem_get_status`'s
    /// `staging` list (`staged_records`, `records_committed`, `medium_failures`...).
    pub fn staging_counter(&self, nsid: u32, field: &str) -> u64 {
        let status = self.rpc("tandem_get_status", json!({}));
        let entries = status["staging"].as_array().cloned().unwrap_or_default();
        let entry = entries
            .iter()
            .find(|e| e["nsid"].as_u64() == Some(u64::from(nsid)))
            .unwrap_or_else(|| panic!("no staging entry for nsid {nsid} in {status}"));
        entry[field].as_u64().unwrap_or_else(|| panic!("no {field} for nsid {nsid} in {status}"))
    }

    /// `tandem_fault_inject` with `action` on namespace `nsid` (extra params merged in).
    pub fn fault(&self, nsid: u32, action: &str, extra: Value) -> Value {
        let mut params = json!({ "nsid": nsid, "action": action });
        if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                p.insert(k.clone(), v.clone());
            }
        }
        self.rpc("tandem_fault_inject", params)
    }

    /// Makes every medium write of `nsid` fail from now on.
    pub fn fail_all_medium_writes(&self, nsid: u32) {
        self.fault(nsid, "fail_writes_after", json!({ "count": 0 }));
    }

    pub fn heal(&self, nsid: u32) {
        self.fault(nsid, "heal", json!({}));
    }

    pub fn medium_path(&self, nsid: u32) -> PathBuf {
        medium_path_in(&self.scratch.path, nsid)
    }

    /// Reads `block_count` blocks at `lba` of the medium file itself.
    pub fn read_medium(&self, nsid: u32, lba: u64, block_count: usize) -> Vec<u8> {
        let path = self.medium_path(nsid);
        let mut f = fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let mut buf = vec![0u8; block_count * BLOCK_BYTES];
        f.seek(SeekFrom::Start(lba * BLOCK_BYTES as u64)).expect("seek in the medium file");
        f.read_exact(&mut buf).expect("read the medium file");
        buf
    }

    /// The ring files in the staging directory, sorted.
    pub fn ring_files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> =
            fs::read_dir(&self.ring_dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        out.sort();
        out
    }

    /// The one ring file of namespace `nsid`.
    pub fn ring_file(&self, nsid: u32) -> PathBuf {
        let suffix = format!("-ns{nsid}.ring");
        let found: Vec<PathBuf> =
            self.ring_files().into_iter().filter(|p| p.to_string_lossy().ends_with(&suffix)).collect();
        assert_eq!(found.len(), 1, "ring files of ns {nsid} in {}: {found:?}", self.ring_dir.display());
        found[0].clone()
    }

    /// The recovery reports in the node's log so far, oldest first.
    pub fn recoveries(&self) -> Vec<Recovery> {
        recoveries(&self.node.log())
    }

    /// Waits (up to `limit`) until the node's log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) {
        wait_until(limit, &format!("{needle:?} in the node log"), || self.node.log().contains(needle));
    }
}

fn medium_path_in(dir: &Path, nsid: u32) -> PathBuf {
    dir.join(format!("medium-ns{nsid}.img"))
}

/// Polls `done` every 20 ms until it holds; panics naming `what` after `limit`.
/// A bound on waiting for an event, not a statement about speed.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "gave up after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One "staging ring recovered" log line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub nsid: u64,
    pub replayed_records: u64,
    pub torn_tail: bool,
}

/// Removes ANSI colour sequences (the log may be coloured).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters, ended by a letter.
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=");
    let at = line.find(&key)? + key.len();
    let rest = &line[at..];
    Some(rest.split(|c: char| c.is_whitespace()).next().unwrap_or(""))
}

/// Parses every "staging ring recovered ... replayed_records=N" line.
pub fn recoveries(log: &str) -> Vec<Recovery> {
    strip_ansi(log)
        .lines()
        .filter(|l| l.contains("staging ring recovered"))
        .map(|l| Recovery {
            nsid: field(l, "nsid").and_then(|v| v.parse().ok()).unwrap_or(0),
            replayed_records: field(l, "replayed_records")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no replayed_records= in {l:?}")),
            torn_tail: field(l, "torn_tail") == Some("true"),
        })
        .collect()
}

/// Deterministic content for `block_count` blocks at `lba`, generation `generation`:
/// each block starts with its LBA and generation, the rest is seeded noise, so
/// a block in the wrong place or of the wrong generation never compares equal.
pub fn pattern(lba: u64, block_count: usize, generation: u64) -> Vec<u8> {
    let mut out = vec![0u8; block_count * BLOCK_BYTES];
    for (i, block) in out.chunks_exact_mut(BLOCK_BYTES).enumerate() {
        let this = lba + i as u64;
        Rng::new(mix64(this ^ mix64(generation))).fill(block);
        block[0..8].copy_from_slice(&this.to_le_bytes());
        block[8..16].copy_from_slice(&generation.to_le_bytes());
    }
    out
}

/// Describes the first differing block of two equal-length buffers of blocks
/// starting at `lba`, or None when they are equal.
pub fn first_difference(lba: u64, got: &[u8], want: &[u8]) -> Option<String> {
    assert_eq!(got.len(), want.len(), "compared buffers differ in length");
    let (index, (got_block, want_block)) =
        got.chunks(BLOCK_BYTES).zip(want.chunks(BLOCK_BYTES)).enumerate().find(|(_, (g, w))| g != w)?;
    let stamp = |b: &[u8]| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&b[0..8]);
        let at = u64::from_le_bytes(word);
        word.copy_from_slice(&b[8..16]);
        (at, u64::from_le_bytes(word))
    };
    Some(format!(
        "LBA {}: got block stamped (lba, generation) = {:?}, want {:?}",
        lba + index as u64,
        stamp(got_block),
        stamp(want_block)
    ))
}

/// A record header found in a ring file (see `target/src/ha/ring.rs`: the
/// 64-byte header sits at the end of the record's first 4 KiB block).
#[derive(Clone, Copy, Debug)]
pub struct RingRecord {
    pub header_offset: usize,
    pub flags: u16,
    pub epoch: u64,
    pub seq: u64,
    pub slba: u64,
    pub data_len: u32,
}

/// The first byte of the record area (superblock 4 KiB, control block 4 KiB).
pub const RING_AREA_OFFSET: usize = 8192;
const RING_ALIGN_BYTES: usize = 4096;
const RECORD_HEADER_BYTES: usize = 64;
const RECORD_MAGIC: &[u8; 4] = b"TREC";

/// Every record header (magic and version match) in a ring image, by offset.
/// Stale headers of released records are included; callers pick by sequence.
pub fn ring_records(image: &[u8]) -> Vec<RingRecord> {
    let u64_at = |b: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let u32_at = |b: &[u8], at: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&b[at..at + 4]);
        u32::from_le_bytes(w)
    };
    let mut out = Vec::new();
    let mut p = RING_AREA_OFFSET;
    while p + RING_ALIGN_BYTES <= image.len() {
        let h = p + RING_ALIGN_BYTES - RECORD_HEADER_BYTES;
        let b = &image[h..h + RECORD_HEADER_BYTES];
        if &b[0..4] == RECORD_MAGIC && u16::from_le_bytes([b[4], b[5]]) == 1 {
            out.push(RingRecord {
                header_offset: h,
                flags: u16::from_le_bytes([b[6], b[7]]),
                epoch: u64_at(b, 16),
                seq: u64_at(b, 24),
                slba: u64_at(b, 32),
                data_len: u32_at(b, 48),
            });
        }
        p += RING_ALIGN_BYTES;
    }
    out
}
