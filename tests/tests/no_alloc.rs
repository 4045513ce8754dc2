//! Claim: the NVMe/TCP data path allocates nothing per command once warm
//! (STYLE.md, "Memory and bounds"). A `PollGroup` runs in-process on its own
//! reactor thread over a `RamBackend`; host-library queues on other threads
//! drive reads and writes of both data paths (in-capsule writes, R2T +
//! H2CData writes, C2HData reads); a counting global allocator counts the
//! allocations of each thread separately, and the reactor thread's count must
//! not grow over 20,000 commands after warm-up.
//!
//! This file holds the one `unsafe` of the test suite: a `GlobalAlloc` must
//! be an `unsafe impl`. It only counts and forwards to the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tandem_env::BufferPool;
use tandem_nvmf::host::{ConnectOptions, HostController, IoCommand, IoQueue};
use tandem_target::backend::RamBackend;
use tandem_target::config::Config;
use tandem_target::ctrl::{NamespaceGeometry, TargetState};
use tandem_target::transport::media::NsMedia;
use tandem_target::transport::tcp::{PollGroup, TransportLimits};
use tandem_tests::{test_config, PortSpec, TEST_BLOCK_BYTES, TEST_NS_BYTES, TEST_SUBNQN};

thread_local! {
    /// Allocations made by this thread (a const-initialised Cell has no
    /// destructor and no lazy registration, so touching it never allocates).
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

fn allocations_here() -> u64 {
    ALLOCATIONS.try_with(|c| c.get()).unwrap_or(0)
}

struct CountingAllocator;

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees are ours; counting touches only a
// thread-local Cell and never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded as received (see the impl's comment).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
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
    polls: AtomicU64,
    stop: AtomicBool,
}

fn run_reactor(listener: TcpListener, config: Config, report: Arc<ReactorReport>) {
    let blocks = TEST_NS_BYTES / u64::from(TEST_BLOCK_BYTES);
    let target = TargetState::new(&config, |_, _| {
        Some(NamespaceGeometry { block_size_bytes: TEST_BLOCK_BYTES, block_count: blocks })
    })
    .expect("target state");
    let ram = RamBackend::new(TEST_BLOCK_BYTES, blocks).expect("ram backend");
    let limits = TransportLimits {
        mdts_bytes: config.limits.mdts_bytes as usize,
        in_capsule_bytes: config.limits.in_capsule_data_bytes as usize,
        queue_depth_max: config.limits.queue_depth_max as usize,
        maxh2cdata_bytes: config.limits.mdts_bytes,
        recv_buffer_bytes: 64 * 1024,
    };
    let pool = BufferPool::new("no-alloc", config.limits.mdts_bytes as usize, 256).expect("buffer pool");
    let media = vec![vec![NsMedia::direct(Box::new(ram))]];
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
        report.allocations.store(allocations_here(), Ordering::Release);
        report.polls.fetch_add(1, Ordering::AcqRel);
        if !busy {
            thread::sleep(Duration::from_micros(100));
        }
    }
}

/// Runs `commands` commands on `q` at queue depth `QUEUE_DEPTH`, cycling
/// through 4 KiB in-capsule writes, 4 KiB reads, 32 KiB R2T writes and
/// 32 KiB reads; every command must succeed.
fn drive(q: &mut IoQueue, commands: u64, seed: u64) {
    let small = vec![seed as u8; BS];
    let large = vec![!(seed as u8); 8 * BS];
    let (mut submitted, mut completed) = (0u64, 0u64);
    while completed < commands {
        while submitted < commands && q.in_flight() < QUEUE_DEPTH {
            let slba = (seed * 512 + (submitted % 64) * 8) % 4000;
            let cmd = match submitted % 4 {
                0 => IoCommand::Write { nsid: 1, slba, data: &small, fua: false },
                1 => IoCommand::Read { nsid: 1, slba, nlb: 1 },
                2 => IoCommand::Write { nsid: 1, slba, data: &large, fua: false },
                _ => IoCommand::Read { nsid: 1, slba, nlb: 8 },
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

/// The reactor's allocation count once it has polled a few more times
/// after the hosts went idle (responses sent, requests freed).
fn settled_allocations(report: &ReactorReport) -> u64 {
    let polls = report.polls.load(Ordering::Acquire);
    while report.polls.load(Ordering::Acquire) < polls + 5 {
        thread::sleep(Duration::from_millis(1));
    }
    report.allocations.load(Ordering::Acquire)
}

#[test]
fn reactor_thread_does_not_allocate_per_command() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = Config::parse(&test_config(&[PortSpec { id: 1, addr, group1: "optimized" }], &[], None))
        .expect("test config parses");
    let report = Arc::new(ReactorReport::default());
    let reactor = {
        let report = report.clone();
        thread::spawn(move || run_reactor(listener, config, report))
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
                s.spawn(move || drive(q, per_queue, i as u64 + 1));
            }
        });
    };
    phase(&mut queues, 2_000); // warm-up: every slot, buffer and send queue used
    let before = settled_allocations(&report);
    // The counter does see the reactor thread: setting up the connections
    // (request tables, receive buffers) allocated there.
    assert!(before > 0, "no allocation counted on the reactor thread at all");
    phase(&mut queues, 10_000); // 20,000 commands over the two queues
    let after = settled_allocations(&report);

    report.stop.store(true, Ordering::Release);
    drop(queues);
    drop(ctrl);
    reactor.join().expect("reactor thread");
    assert_eq!(
        after - before,
        0,
        "the reactor thread allocated {} times during 20,000 commands after warm-up",
        after - before
    );
}
