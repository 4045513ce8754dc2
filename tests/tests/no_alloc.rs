//! Claim: the NVMe/TCP data path allocates nothing per command once warm
//! (STYLE.md, "Memory and bounds"). A `PollGroup` runs in-process on its own
//! reactor thread over a `RamBackend`; host-library queues on other threads
//! drive reads and writes of both data paths (in-capsule writes, R2T +
//! H2CData writes, C2HData reads); a counting global allocator counts the
//! allocations of each thread separately, and the reactor thread's count must
//! not grow over 20,000 commands after warm-up.
//!
//! - `reactor_thread_does_not_allocate_per_command`: the direct path (the
//!   namespace has no staging log).
//! - `staged_path_allocates_only_index_nodes`: the namespace has a staging
//!   log on a `/dev/shm` ring in front of the medium, as a `[staging]` node
//!   has: writes are received into ring records and acknowledged when
//!   durable, reads overlay staged data, Flush waits for the flusher, and the
//!   flusher (on the same reactor thread) writes the records to the medium.
//!   The staging index is a `BTreeMap` that allocates a node when one splits
//!   (documented in `target/src/ha/index.rs` as the one non-preallocated
//!   structure on the write path), so the test counts allocations of exactly
//!   its node sizes apart: every other allocation must be zero, and the node
//!   allocations must stay well below one per staged write. When the index
//!   is preallocated, the exception goes and the test asserts zero outright.
//!
//! This file holds the one `unsafe` of the test suite: a `GlobalAlloc` must
//! be an `unsafe impl`. It only counts and forwards to the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use std::path::{Path, PathBuf};

use tandem_env::persist::{open_region, DomainKind};
use tandem_env::BufferPool;
use tandem_nvmf::host::{ConnectOptions, HostController, IoCommand, IoQueue};
use tandem_target::backend::RamBackend;
use tandem_target::config::Config;
use tandem_target::ctrl::{NamespaceGeometry, TargetState};
use tandem_target::ha::layout::MediumKind;
use tandem_target::ha::{FlusherConfig, MediumIdentity, RingConfig, StagingLog};
use tandem_target::transport::media::{NsMedia, Staged};
use tandem_target::transport::tcp::{PollGroup, TransportLimits};
use tandem_tests::{test_config, PortSpec, TEST_BLOCK_BYTES, TEST_NGUID, TEST_NS_BYTES, TEST_SUBNQN};

thread_local! {
    /// Allocations made by this thread (a const-initialised Cell has no
    /// destructor and no lazy registration, so touching it never allocates).
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    /// Of those, allocations of exactly a staging-index B-tree node's size.
    static INDEX_NODE_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    /// This thread is measuring the B-tree node sizes (see `index_node_sizes`).
    static CALIBRATING: Cell<bool> = const { Cell::new(false) };
}

/// Allocation sizes seen while calibrating (0: free slot).
static NODE_SIZES: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];

fn count_one(layout: Layout) {
    let size = layout.size();
    if CALIBRATING.try_with(Cell::get).unwrap_or(false) {
        for slot in &NODE_SIZES {
            match slot.compare_exchange(0, size, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(seen) if seen == size => break,
                Err(_) => {}
            }
        }
    }
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    if NODE_SIZES.iter().any(|s| s.load(Ordering::Relaxed) == size) {
        let _ = INDEX_NODE_ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    }
}

fn allocations_here() -> u64 {
    ALLOCATIONS.try_with(|c| c.get()).unwrap_or(0)
}

fn index_node_allocations_here() -> u64 {
    INDEX_NODE_ALLOCATIONS.try_with(|c| c.get()).unwrap_or(0)
}

/// The staging index (`target/src/ha/index.rs`) is a
/// `BTreeMap<(u32, u64), Extent>`, which allocates a node when one splits:
/// the one allocation its module documents on the staged write path. Learns
/// the sizes of its leaf and internal nodes from a map of the same key and
/// value layout (`Extent` is four 8-byte-aligned words), on a thread of its
/// own. If `Extent` changes size, the staged test counts its nodes as other
/// allocations and fails: it never starts passing by accident.
fn index_node_sizes() -> Vec<usize> {
    thread::spawn(|| {
        CALIBRATING.with(|c| c.set(true));
        let mut map: std::collections::BTreeMap<(u32, u64), [u64; 4]> = std::collections::BTreeMap::new();
        for i in 0..200u64 {
            map.insert((1, i), [i; 4]);
        }
        CALIBRATING.with(|c| c.set(false));
        drop(map);
    })
    .join()
    .expect("calibration thread");
    let sizes: Vec<usize> =
        NODE_SIZES.iter().map(|s| s.load(Ordering::Relaxed)).filter(|&s| s != 0).collect();
    assert_eq!(
        sizes.len(),
        2,
        "a B-tree of 200 entries allocates a leaf and an internal node size: {sizes:?}"
    );
    sizes
}

struct CountingAllocator;

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees are ours; counting touches only
// thread-local Cells and static atomics and never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one(layout);
        // SAFETY: forwarded as received (see the impl's comment).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one(layout);
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one(Layout::from_size_align(new_size, layout.align()).unwrap_or(layout));
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const QUEUE_DEPTH: usize = 16;
const BS: usize = TEST_BLOCK_BYTES as usize;

/// What the reactor thread publishes after every poll.
#[derive(Default)]
struct ReactorReport {
    allocations: AtomicU64,
    /// Of those, of a staging-index B-tree node's size.
    index_node_allocations: AtomicU64,
    polls: AtomicU64,
    stop: AtomicBool,
}

/// Staging ring size of the staged test: small enough that the warm-up wraps
/// it several times, so every record slot has been used before counting.
const RING_BYTES: usize = 4 << 20;

/// The namespace's media: the RAM medium alone, or behind a staging log
/// formatted in a fresh ring file at `ring`, set up as `tandem serve` sets up
/// a staged namespace (shm domain, so Flush waits for the medium).
fn namespace_media(ring: Option<&Path>, mdts_bytes: usize) -> NsMedia {
    let blocks = TEST_NS_BYTES / u64::from(TEST_BLOCK_BYTES);
    let ram = RamBackend::new(TEST_BLOCK_BYTES, blocks).expect("ram backend");
    let Some(path) = ring else { return NsMedia::direct(Box::new(ram)) };
    let region = open_region(DomainKind::Shm, path, RING_BYTES).expect("ring region");
    let ring_config = RingConfig {
        owner_node_id: 1,
        created_epoch: 1,
        format_nonce: 0x0a11_0c00,
        record_align_bytes: 4096,
        medium: MediumIdentity {
            kind: MediumKind::Ram,
            nguid: TEST_NGUID,
            block_bytes: TEST_BLOCK_BYTES,
            dev: 0,
            ino: 0,
            path: String::new(),
        },
    };
    let flusher = FlusherConfig {
        batch_bytes_max: mdts_bytes.max(256 << 10),
        batches_max: 128,
        ..FlusherConfig::default()
    };
    let log = StagingLog::format(region, &ring_config, flusher).expect("format the ring");
    let staged = Staged::new(log, None, !DomainKind::Shm.survives_power_loss(), 1, TEST_BLOCK_BYTES);
    NsMedia { backend: Box::new(ram), staged: Some(staged), partner_owned: false }
}

fn run_reactor(listener: TcpListener, config: Config, report: Arc<ReactorReport>, ring: Option<PathBuf>) {
    let blocks = TEST_NS_BYTES / u64::from(TEST_BLOCK_BYTES);
    let target = TargetState::new(&config, |_, _| {
        Some(NamespaceGeometry { block_size_bytes: TEST_BLOCK_BYTES, block_count: blocks })
    })
    .expect("target state");
    let limits = TransportLimits {
        mdts_bytes: config.limits.mdts_bytes as usize,
        in_capsule_bytes: config.limits.in_capsule_data_bytes as usize,
        queue_depth_max: config.limits.queue_depth_max as usize,
        maxh2cdata_bytes: config.limits.mdts_bytes,
        recv_buffer_bytes: 64 * 1024,
    };
    let pool = BufferPool::new("no-alloc", config.limits.mdts_bytes as usize, 256).expect("buffer pool");
    let media = vec![vec![namespace_media(ring.as_deref(), config.limits.mdts_bytes as usize)]];
    let mut group = PollGroup::new(target, limits, media, pool, 16);
    listener.set_nonblocking(true).expect("nonblocking listener");
    let mut last_tick = Instant::now();
    let mut slots = Vec::new();
    while !report.stop.load(Ordering::Acquire) {
        let mut busy = false;
        while let Ok((stream, _)) = listener.accept() {
            let (slot, _fd) = group.add_connection(stream, 1).expect("connection slot");
            slots.push(slot);
            busy = true;
        }
        // No epoll here: treat every socket as ready, as a busy reactor would
        // after its readiness check.
        for &slot in &slots {
            group.mark_ready(slot);
        }
        busy |= group.poll();
        if last_tick.elapsed() >= Duration::from_millis(20) {
            group.tick();
            last_tick = Instant::now();
        }
        report.index_node_allocations.store(index_node_allocations_here(), Ordering::Release);
        report.allocations.store(allocations_here(), Ordering::Release);
        report.polls.fetch_add(1, Ordering::AcqRel);
        if !busy {
            thread::sleep(Duration::from_micros(100));
        }
    }
}

/// Runs `commands` commands on `q` at queue depth `QUEUE_DEPTH`, cycling
/// through 4 KiB in-capsule writes, 4 KiB reads, 32 KiB R2T writes and
/// 32 KiB reads (and, with `flushes`, a Flush after each cycle); every
/// command must succeed.
fn drive(q: &mut IoQueue, commands: u64, seed: u64, flushes: bool) {
    let cycle = if flushes { 5 } else { 4 };
    let small = vec![seed as u8; BS];
    let large = vec![!(seed as u8); 8 * BS];
    let (mut submitted, mut completed) = (0u64, 0u64);
    while completed < commands {
        while submitted < commands && q.in_flight() < QUEUE_DEPTH {
            let slba = (seed * 512 + (submitted % 64) * 8) % 4000;
            let cmd = match submitted % cycle {
                0 => IoCommand::Write { nsid: 1, slba, data: &small, fua: false },
                1 => IoCommand::Read { nsid: 1, slba, nlb: 1 },
                2 => IoCommand::Write { nsid: 1, slba, data: &large, fua: false },
                3 => IoCommand::Read { nsid: 1, slba, nlb: 8 },
                _ => IoCommand::Flush { nsid: 1 },
            };
            q.submit(cmd, submitted).expect("submit");
            submitted += 1;
        }
        completed += q
            .poll(Some(Duration::from_secs(10)), &mut |c| {
                assert!(c.status.is_success(), "command {} failed: {}", c.tag, c.status)
            })
            .expect("poll") as u64;
    }
}

/// The reactor's allocation counts (all, and of index-node size) once it
/// has polled a few more times after the hosts went idle (responses sent,
/// requests freed).
fn settled_allocations(report: &ReactorReport) -> Allocations {
    let polls = report.polls.load(Ordering::Acquire);
    while report.polls.load(Ordering::Acquire) < polls + 5 {
        thread::sleep(Duration::from_millis(1));
    }
    Allocations {
        all: report.allocations.load(Ordering::Acquire),
        index_nodes: report.index_node_allocations.load(Ordering::Acquire),
    }
}

/// Allocations counted on the reactor thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Allocations {
    all: u64,
    /// Of `all`, those of a staging-index B-tree node's size.
    index_nodes: u64,
}

/// Runs the reactor (staged when `ring` is given), warms it up with 4,000
/// commands, and returns the reactor thread's allocations during the next
/// 20,000 commands.
fn allocations_during_commands(ring: Option<PathBuf>) -> Allocations {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = Config::parse(&test_config(&[PortSpec { id: 1, addr, group1: "optimized" }], &[], None))
        .expect("test config parses");
    let report = Arc::new(ReactorReport::default());
    let flushes = ring.is_some();
    let reactor = {
        let report = report.clone();
        thread::spawn(move || run_reactor(listener, config, report, ring))
    };

    let mut opts = ConnectOptions::new(&addr.to_string(), TEST_SUBNQN);
    opts.io_queues = 2;
    opts.queue_depth = QUEUE_DEPTH as u16 + 1;
    let mut ctrl = HostController::connect(&opts).expect("connect");
    let mut queues = ctrl.take_io_queues();
    assert_eq!(queues.len(), 2, "two I/O queues");

    let phase = |queues: &mut Vec<IoQueue>, per_queue: u64| {
        thread::scope(|s| {
            for (i, q) in queues.iter_mut().enumerate() {
                s.spawn(move || drive(q, per_queue, i as u64 + 1, flushes));
            }
        });
    };
    phase(&mut queues, 2_000); // warm-up: every slot, buffer and send queue used
    let before = settled_allocations(&report);
    // The counter does see the reactor thread: setting up the connections
    // (request tables, receive buffers) allocated there.
    assert!(before.all > 0, "no allocation counted on the reactor thread at all");
    phase(&mut queues, 10_000); // 20,000 commands over the two queues
    let after = settled_allocations(&report);

    report.stop.store(true, Ordering::Release);
    drop(queues);
    drop(ctrl);
    reactor.join().expect("reactor thread");
    Allocations { all: after.all - before.all, index_nodes: after.index_nodes - before.index_nodes }
}

#[test]
fn reactor_thread_does_not_allocate_per_command() {
    let allocations = allocations_during_commands(None);
    assert_eq!(
        allocations.all, 0,
        "the reactor thread allocated {} times during 20,000 commands after warm-up",
        allocations.all
    );
}

/// A ring file in /dev/shm private to this test process, removed when dropped.
struct RingFile(PathBuf);

impl Drop for RingFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Staged writes among the 20,000 measured commands (two in each cycle of five).
const STAGED_WRITES: u64 = 20_000 / 5 * 2;

#[test]
fn staged_path_allocates_only_index_nodes() {
    let node_sizes = index_node_sizes();
    let ring = RingFile(PathBuf::from(format!("/dev/shm/tandem-test-no-alloc-{}.ring", std::process::id())));
    let _ = std::fs::remove_file(&ring.0);
    let allocations = allocations_during_commands(Some(ring.0.clone()));
    println!(
        "staged path: {} allocations on the reactor thread during 20,000 commands ({STAGED_WRITES} staged \
         writes), {} of them staging-index B-tree nodes (sizes {node_sizes:?} bytes)",
        allocations.all, allocations.index_nodes
    );
    assert_eq!(
        allocations.all - allocations.index_nodes,
        0,
        "the reactor thread allocated {} times during 20,000 staged commands after warm-up, \
         besides {} staging-index nodes",
        allocations.all - allocations.index_nodes,
        allocations.index_nodes
    );
    // The index's node splits are amortised over several inserts (index.rs):
    // one per staged write or more would be an allocation per command.
    assert!(
        allocations.index_nodes < STAGED_WRITES / 2,
        "{} index-node-sized allocations for {STAGED_WRITES} staged writes",
        allocations.index_nodes
    );
}
