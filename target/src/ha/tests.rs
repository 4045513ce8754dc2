//! Sans-I/O tests of the staging log as a whole: ring, index, flusher and
//! recovery together, with a simulated persistence domain that can die at any
//! persist call and a simulated medium with a volatile write cache.

use super::*;
use crate::backend::{Backend, BackendCompletion, BackendError, BackendOp, FaultBackend, RamBackend, EIO};
use tandem_env::persist::{DomainKind, MemRegion, PersistentRegion};

const BLOCK: u32 = 512;

fn ring_config() -> RingConfig {
    RingConfig {
        owner_node_id: 7,
        created_epoch: 1,
        format_nonce: 0x5eed,
        record_align_bytes: 4096,
        medium: layout::test_medium(7),
    }
}

/// The medium the tests' rings are formatted for.
fn binding() -> Binding {
    Binding::new(layout::test_medium(7))
}

fn flusher_config() -> FlusherConfig {
    FlusherConfig { batch_bytes_max: 16 * 1024, batches_max: 4, ..FlusherConfig::default() }
}

/// The workspace's one seeded generator, with a bounded draw.
struct Rng(tandem_env::prng::SplitMix64);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(tandem_env::prng::SplitMix64::new(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A MemRegion that dies at its `budget`-th persist call: that persist does
/// not happen, and the bytes are frozen as they were at that instant (a dead
/// process stores nothing more); `crash` then tears what was not persisted.
struct DyingRegion {
    inner: MemRegion,
    persists_left: Option<u64>,
    frozen: Option<Vec<u8>>,
}

impl DyingRegion {
    fn new(len: usize, budget: Option<u64>) -> DyingRegion {
        DyingRegion { inner: MemRegion::new(len), persists_left: budget, frozen: None }
    }
    fn dead(&self) -> bool {
        self.frozen.is_some()
    }
    /// Power loss: keep what was persisted, plus a seeded subset of the
    /// unpersisted words written before death. The region is alive again.
    fn crash(mut self, torn_seed: u64, next_budget: Option<u64>) -> DyingRegion {
        if let Some(frozen) = self.frozen.take() {
            self.inner.bytes_mut().copy_from_slice(&frozen);
        }
        self.inner.crash(Some(torn_seed));
        DyingRegion { inner: self.inner, persists_left: next_budget, frozen: None }
    }
}

impl PersistentRegion for DyingRegion {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn bytes(&self) -> &[u8] {
        self.inner.bytes()
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.inner.bytes_mut()
    }
    fn persist(&mut self, offset: usize, len: usize) {
        if self.dead() {
            return;
        }
        match self.persists_left {
            Some(0) => self.frozen = Some(self.inner.bytes().to_vec()),
            Some(ref mut left) => {
                *left -= 1;
                self.inner.persist(offset, len);
            }
            None => self.inner.persist(offset, len),
        }
    }
    fn kind(&self) -> DomainKind {
        DomainKind::Memory
    }
}

/// A medium with a volatile write cache: writes land in the cache when they
/// complete, a Flush makes durable what was in the cache when it was
/// submitted, and `crash` loses the rest. Completions come back in a seeded
/// random order, a random subset per poll. It panics if two overlapping
/// writes are ever in flight: the flusher promises never to do that.
struct CacheBackend {
    num_blocks: u64,
    durable: Vec<u8>,
    cache: Vec<u8>,
    in_flight: Vec<(u64, BackendOp, Option<Vec<u8>>)>,
    rng: Rng,
    queue_depth_max: usize,
}

impl CacheBackend {
    fn new(num_blocks: u64, seed: u64) -> CacheBackend {
        let bytes = num_blocks as usize * BLOCK as usize;
        CacheBackend {
            num_blocks,
            durable: vec![0; bytes],
            cache: vec![0; bytes],
            in_flight: Vec::new(),
            rng: Rng::new(seed),
            queue_depth_max: 8,
        }
    }
    fn crash(&mut self) {
        self.cache.copy_from_slice(&self.durable);
        self.in_flight.clear();
    }
    /// What a read returns now: the cache (completed writes, flushed or not).
    fn read_now(&self, slba: u64, nlb: u32) -> Vec<u8> {
        let at = slba as usize * BLOCK as usize;
        self.cache[at..at + nlb as usize * BLOCK as usize].to_vec()
    }
    fn durable_block(&self, lba: u64) -> &[u8] {
        let at = lba as usize * BLOCK as usize;
        &self.durable[at..at + BLOCK as usize]
    }
}

impl Backend for CacheBackend {
    fn block_size(&self) -> u32 {
        BLOCK
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    fn submit(&mut self, tag: u64, op: BackendOp) -> Result<(), (BackendError, BackendOp)> {
        if self.in_flight.len() >= self.queue_depth_max {
            return Err((BackendError::QueueFull { queue_depth_max: self.queue_depth_max }, op));
        }
        let writes = |op: &BackendOp| match *op {
            BackendOp::Write { slba, nlb, .. }
            | BackendOp::WriteZeroes { slba, nlb }
            | BackendOp::Deallocate { slba, nlb } => Some((slba, nlb)),
            _ => None,
        };
        if let Some((slba, nlb)) = writes(&op) {
            assert!(slba + nlb as u64 <= self.num_blocks, "write beyond the medium");
            for (_, other, _) in &self.in_flight {
                if let Some((s, n)) = writes(other) {
                    assert!(
                        slba + nlb as u64 <= s || s + n as u64 <= slba,
                        "overlapping writes in flight: {slba}+{nlb} and {s}+{n}"
                    );
                }
            }
        }
        let snapshot = matches!(op, BackendOp::Flush).then(|| self.cache.clone());
        self.in_flight.push((tag, op, snapshot));
        Ok(())
    }
    fn kick(&mut self) {}
    fn poll_completions(&mut self, out: &mut Vec<BackendCompletion>) -> usize {
        let count = self.rng.below(self.in_flight.len() as u64 + 1) as usize;
        for _ in 0..count {
            let pick = self.rng.below(self.in_flight.len() as u64) as usize;
            let (tag, op, snapshot) = self.in_flight.swap_remove(pick);
            match op {
                BackendOp::Write { slba, nlb, buf, .. } => {
                    let at = slba as usize * BLOCK as usize;
                    let len = nlb as usize * BLOCK as usize;
                    self.cache[at..at + len].copy_from_slice(&buf[..len]);
                    out.push(BackendCompletion { tag, result: Ok(()), buf: Some(buf) });
                }
                BackendOp::WriteZeroes { slba, nlb } | BackendOp::Deallocate { slba, nlb } => {
                    // Deallocated blocks read as zeroes, as the target reports (DLFEAT).
                    let at = slba as usize * BLOCK as usize;
                    self.cache[at..at + nlb as usize * BLOCK as usize].fill(0);
                    out.push(BackendCompletion { tag, result: Ok(()), buf: None });
                }
                BackendOp::Flush => {
                    // Only what was in the cache at submission is now durable;
                    // blocks written since keep their newer cached value.
                    let snapshot = snapshot.expect("flush snapshot");
                    self.durable.copy_from_slice(&snapshot);
                    out.push(BackendCompletion { tag, result: Ok(()), buf: None });
                }
                other => panic!("unexpected op {}", other.name()),
            }
        }
        count
    }
    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
    fn queue_depth_max(&self) -> usize {
        self.queue_depth_max
    }
    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    fn writes_are_durable(&self) -> bool {
        false
    }
}

/// A block that says who wrote it: (lifetime, seq, lba) repeated.
fn block_pattern(lifetime: u64, seq: u64, lba: u64) -> [u8; BLOCK as usize] {
    let mut block = [0u8; BLOCK as usize];
    for chunk in block.chunks_exact_mut(24) {
        chunk[..8].copy_from_slice(&lifetime.to_le_bytes());
        chunk[8..16].copy_from_slice(&seq.to_le_bytes());
        chunk[16..24].copy_from_slice(&lba.to_le_bytes());
    }
    block
}

fn parse_block(block: &[u8]) -> (u64, u64, u64) {
    let word = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().expect("8 bytes"));
    (word(0), word(8), word(16))
}

/// Drives completions and flusher until everything staged is released.
fn pump<R: PersistentRegion, B: Backend>(log: &mut StagingLog<R>, backend: &mut B, now_ms: &mut u64) {
    let mut foreign = Vec::new();
    let clock = std::cell::Cell::new(*now_ms);
    let wait = DrainWait {
        now_ms: || {
            clock.set(clock.get() + 1);
            clock.get()
        },
        idle: || {},
        deadline_ms: *now_ms + 1_000_000,
    };
    log.drain_all(backend, wait, &mut foreign).expect("drain");
    *now_ms = clock.get();
    assert!(foreign.is_empty());
}

fn write_data(lifetime: u64, seq: u64, slba: u64, nlb: u32) -> Vec<u8> {
    (0..nlb as u64).flat_map(|i| block_pattern(lifetime, seq, slba + i)).collect()
}

#[test]
fn wrap_around_many_times_and_medium_gets_newest_data() {
    let mut log =
        StagingLog::format(MemRegion::new(128 * 1024), &ring_config(), flusher_config()).expect("format");
    let mut backend = CacheBackend::new(64, 1);
    let mut rng = Rng::new(42);
    let mut newest = vec![(0u64, 0u64); 64];
    let mut now_ms = 0;
    for _ in 0..400 {
        let nlb = 1 + rng.below(8) as u32;
        let slba = rng.below(64 - nlb as u64);
        let seq = log.ring().next_seq();
        let data = write_data(1, seq, slba, nlb);
        let outcome = loop {
            match log.stage(1, slba, nlb, &data) {
                Ok(outcome) => break outcome,
                Err(ReserveError::RingFull { .. }) => pump(&mut log, &mut backend, &mut now_ms),
                Err(other) => panic!("{other}"),
            }
        };
        assert_eq!(outcome.newly_durable, seq..=seq);
        for lba in slba..slba + nlb as u64 {
            newest[lba as usize] = (1, seq);
        }
        now_ms += 1;
        log.poll_flusher(&mut backend, now_ms);
        let mut completions = Vec::new();
        backend.poll_completions(&mut completions);
        for completion in completions {
            assert!(log.on_backend_completion(&backend, completion, now_ms).is_none());
        }
        // Read-your-writes: medium bytes overlaid with staged ones give the
        // newest write of every block, whatever the flusher has done so far.
        let read_nlb = 1 + rng.below(16) as u32;
        let read_slba = rng.below(64 - read_nlb as u64);
        let mut out = backend.read_now(read_slba, read_nlb);
        log.read_overlay(1, read_slba, read_nlb, BLOCK, &mut out).expect("overlay");
        for (i, block) in out.chunks(BLOCK as usize).enumerate() {
            let lba = read_slba + i as u64;
            let (lifetime, seq) = newest[lba as usize];
            let expect = if seq == 0 { (0, 0, 0) } else { (lifetime, seq, lba) };
            assert_eq!(parse_block(block), expect, "read of lba {lba}");
        }
    }
    pump(&mut log, &mut backend, &mut now_ms);
    assert!(log.stats().ring_full > 0, "the ring filled up at least once");
    assert_eq!(log.released_seq(), log.durable_seq());
    for (lba, &(lifetime, seq)) in newest.iter().enumerate() {
        if seq > 0 {
            assert_eq!(
                parse_block(backend.durable_block(lba as u64)),
                (lifetime, seq, lba as u64),
                "lba {lba}"
            );
        }
    }
}

#[test]
fn ring_full_is_back_pressure_until_the_flusher_frees_space() {
    let mut log =
        StagingLog::format(MemRegion::new(64 * 1024), &ring_config(), flusher_config()).expect("format");
    let mut backend = RamBackend::new(BLOCK, 256).expect("ram");
    let mut staged = 0;
    while log.stage(1, staged * 8, 8, &[0xab; 4096]).is_ok() {
        staged += 1;
    }
    assert!(matches!(log.reserve(4096), Err(ReserveError::RingFull { .. })));
    assert_eq!(log.stats().ring_full, 2);
    let mut now_ms = 0;
    pump(&mut log, &mut backend, &mut now_ms);
    assert_eq!(log.released_seq(), staged);
    assert_eq!(log.stats().staged_bytes, 0);
    log.stage(1, 0, 8, &[0xcd; 4096]).expect("space after the flusher released");
}

#[test]
fn read_your_writes_with_partial_overlaps() {
    let mut log =
        StagingLog::format(MemRegion::new(256 * 1024), &ring_config(), flusher_config()).expect("format");
    log.stage(1, 0, 8, &[b'A'; 8 * 512]).expect("stage");
    log.stage(1, 4, 2, &[b'B'; 2 * 512]).expect("stage");
    log.stage(1, 7, 2, &[b'C'; 2 * 512]).expect("stage");
    log.stage(2, 0, 10, &[b'Z'; 10 * 512]).expect("other namespace");
    // The medium returned '.' everywhere for LBAs 2..12.
    let mut out = vec![b'.'; 10 * 512];
    let blocks = log.read_overlay(1, 2, 10, BLOCK, &mut out).expect("overlay");
    assert_eq!(blocks, 7);
    let per_block: Vec<u8> = out.chunks(512).map(|b| b[0]).collect();
    assert_eq!(per_block, b"AABBACC...".to_vec());
    assert!(out.chunks(512).all(|b| b.iter().all(|&x| x == b[0])), "whole blocks replaced");
    // After the flusher released everything, reads come from the medium.
    let mut backend = RamBackend::new(BLOCK, 64).expect("ram");
    let mut now_ms = 0;
    pump(&mut log, &mut backend, &mut now_ms);
    assert_eq!(log.staged_overlaps(1, 0, 64).count(), 0);
    // Nothing is overlaid any more: the medium's bytes come back untouched.
    let mut out = vec![b'.'; 10 * 512];
    assert_eq!(log.read_overlay(1, 2, 10, BLOCK, &mut out).expect("overlay"), 0);
    assert!(out.iter().all(|&b| b == b'.'), "namespace 1 overlaid after the release");
    let mut small = vec![b'.'; 512];
    assert_eq!(log.read_overlay(2, 0, 1, BLOCK, &mut small).expect("overlay"), 0);
    assert!(small.iter().all(|&b| b == b'.'), "namespace 2 overlaid after the release");
}

#[test]
fn overlay_rejects_a_short_buffer() {
    let mut log =
        StagingLog::format(MemRegion::new(256 * 1024), &ring_config(), flusher_config()).expect("format");
    log.stage(1, 0, 8, &[1; 8 * 512]).expect("stage");
    let mut out = vec![0u8; 512];
    assert!(matches!(
        log.read_overlay(1, 0, 8, BLOCK, &mut out),
        Err(StagingError::ReadBufferTooSmall { .. })
    ));
}

#[test]
fn repeated_writes_to_the_same_lbas_reach_the_medium_in_order() {
    let mut log =
        StagingLog::format(MemRegion::new(512 * 1024), &ring_config(), flusher_config()).expect("format");
    let mut backend = CacheBackend::new(16, 9);
    let mut now_ms = 0;
    let mut last = 0;
    for round in 0..40u64 {
        // Alternate whole-range and partial writes over LBAs 0..8.
        let (slba, nlb) = if round % 3 == 0 { (0, 8) } else { (round % 6, 2) };
        let seq = log.ring().next_seq();
        log.stage(1, slba, nlb, &write_data(1, seq, slba, nlb)).expect("stage");
        last = seq;
        // The CacheBackend panics if two overlapping writes are ever in flight.
        now_ms += 1;
        log.poll_flusher(&mut backend, now_ms);
        let mut completions = Vec::new();
        backend.poll_completions(&mut completions);
        for completion in completions {
            log.on_backend_completion(&backend, completion, now_ms);
        }
    }
    pump(&mut log, &mut backend, &mut now_ms);
    assert_eq!(log.released_seq(), last);
    // Model: the newest write per LBA.
    let mut expect = [0u64; 8];
    for round in 0..40u64 {
        let (slba, nlb) = if round % 3 == 0 { (0, 8) } else { (round % 6, 2) };
        for lba in slba..slba + nlb {
            expect[lba as usize] = round + 1;
        }
    }
    for (lba, &seq) in expect.iter().enumerate() {
        assert_eq!(parse_block(backend.durable_block(lba as u64)), (1, seq, lba as u64));
    }
    assert!(log.stats().flusher.overlap_stalls > 0, "the test exercised overlap stalls");
}

#[test]
fn adjacent_records_are_merged_into_one_write() {
    let mut log =
        StagingLog::format(MemRegion::new(512 * 1024), &ring_config(), flusher_config()).expect("format");
    for i in 0..4 {
        log.stage(1, i * 4, 4, &[i as u8; 4 * 512]).expect("stage");
    }
    let mut backend = RamBackend::new(BLOCK, 64).expect("ram");
    let mut now_ms = 0;
    pump(&mut log, &mut backend, &mut now_ms);
    let stats = log.stats().flusher;
    assert_eq!(stats.writes_submitted, 1);
    assert_eq!(stats.records_durable, 4);
    assert_eq!(stats.flushes_submitted, 0, "RamBackend writes are durable: no Flush needed");
}

#[test]
fn eio_keeps_records_staged_and_retries_with_backoff() {
    let mut log =
        StagingLog::format(MemRegion::new(256 * 1024), &ring_config(), flusher_config()).expect("format");
    let mut backend = FaultBackend::new(RamBackend::new(BLOCK, 64).expect("ram"));
    let faults = backend.control();
    faults.fail_writes_in(16, 8);
    log.stage(1, 0, 8, &[1; 4096]).expect("stage");
    log.stage(1, 16, 8, &[2; 4096]).expect("stage to the failing range");
    log.stage(1, 32, 8, &[3; 4096]).expect("stage");
    let mut completions = Vec::new();
    for now_ms in 0..50 {
        log.poll_flusher(&mut backend, now_ms);
        completions.clear();
        backend.poll_completions(&mut completions);
        for completion in completions.drain(..) {
            log.on_backend_completion(&backend, completion, now_ms);
        }
    }
    // Record 1 is released; 2 failed and is staged; 3 is durable on the
    // medium but cannot be released past 2 (release is contiguous).
    assert_eq!(log.released_seq(), 1);
    assert!(log.ring().record(2).is_some() && log.ring().record(3).is_some());
    let mut failures = Vec::new();
    while let Some(event) = log.take_event() {
        if let FlusherEvent::WriteFailed { first_seq, last_seq, attempt, error, .. } = event {
            assert!(matches!(error, BackendError::Io { errno: EIO, .. }));
            failures.push((first_seq, last_seq, attempt));
        }
    }
    assert!(failures.len() >= 3, "retried: {failures:?}");
    assert!(failures.iter().all(|&(first, last, _)| first == 2 && last == 2));
    // Back-off: attempts spaced 1, 2, 4, 8, ... ms apart, so far fewer than 50.
    assert!(failures.len() < 10, "{failures:?}");
    // The staged data stays readable.
    let mut out = vec![0u8; 4096];
    log.read_overlay(1, 16, 8, BLOCK, &mut out).expect("overlay");
    assert!(out.iter().all(|&b| b == 2));
    faults.heal();
    let mut now_ms = 1000;
    pump(&mut log, &mut backend, &mut now_ms);
    assert_eq!(log.released_seq(), 3);
}

#[test]
fn eio_forever_never_releases_and_drain_reports_the_deadline() {
    let mut log =
        StagingLog::format(MemRegion::new(256 * 1024), &ring_config(), flusher_config()).expect("format");
    let mut backend = FaultBackend::new(RamBackend::new(BLOCK, 64).expect("ram"));
    backend.control().fail_writes_after(0);
    log.stage(1, 0, 8, &[1; 4096]).expect("stage");
    let mut clock = 0;
    let wait = DrainWait {
        now_ms: || {
            clock += 1;
            clock
        },
        idle: || {},
        deadline_ms: 5000,
    };
    let result = log.drain_all(&mut backend, wait, &mut Vec::new());
    assert!(matches!(
        result,
        Err(StagingError::DrainDeadline { released_seq: 0, target_seq: 1, failures_pending: true, .. })
    ));
    assert!(log.ring().record(1).is_some());
}

#[test]
fn flush_failure_rewrites_and_never_releases_early() {
    let mut log =
        StagingLog::format(MemRegion::new(256 * 1024), &ring_config(), flusher_config()).expect("format");
    let inner = CacheBackend::new(64, 3);
    let mut backend = FaultBackend::new(inner);
    backend.control().fail_flush(true);
    log.stage(1, 0, 8, &[5; 4096]).expect("stage");
    let mut completions = Vec::new();
    for now_ms in 0..30 {
        log.poll_flusher(&mut backend, now_ms);
        completions.clear();
        backend.poll_completions(&mut completions);
        for completion in completions.drain(..) {
            log.on_backend_completion(&backend, completion, now_ms);
        }
    }
    assert_eq!(log.released_seq(), 0);
    let mut saw_flush_failure = false;
    while let Some(event) = log.take_event() {
        saw_flush_failure |= matches!(event, FlusherEvent::FlushFailed { first_seq: 1, last_seq: 1, .. });
    }
    assert!(saw_flush_failure);
    backend.control().heal();
    let mut now_ms = 100;
    pump(&mut log, &mut backend, &mut now_ms);
    assert_eq!(log.released_seq(), 1);
    assert!(backend.inner().durable_block(0).iter().all(|&b| b == 5));
}

fn drain_wait(clock: &mut u64) -> DrainWait<impl FnMut() -> u64 + '_, impl FnMut()> {
    DrainWait {
        now_ms: move || {
            *clock += 1;
            *clock
        },
        idle: || {},
        deadline_ms: u64::MAX,
    }
}

#[test]
fn torn_tail_is_dropped_on_recovery() {
    // The region dies at the 5th persist after formatting: records 1..3 are
    // durable (persists 2..4; persist 1 is the format), record 4 is torn.
    for seed in 0..20 {
        let region = DyingRegion::new(256 * 1024, Some(4));
        let mut log = StagingLog::format(region, &ring_config(), flusher_config()).expect("format");
        for seq in 1..=4u64 {
            log.stage(1, seq * 8, 8, &write_data(1, seq, seq * 8, 8)).expect("stage");
        }
        let region = log.into_region();
        assert!(region.dead());
        let region = region.crash(seed, None);
        let mut backend = CacheBackend::new(64, seed);
        let mut clock = 0;
        let (log, report) = StagingLog::recover(
            region,
            0,
            &binding(),
            flusher_config(),
            &mut backend,
            drain_wait(&mut clock),
            &mut Vec::new(),
        )
        .expect("recover");
        assert_eq!(report.scan.records_found, 3, "seed {seed}");
        assert_eq!(report.replayed_records, 3);
        assert_eq!(report.replayed_bytes, 3 * 4096);
        assert_eq!(log.released_seq(), 3);
        for seq in 1..=3u64 {
            assert_eq!(parse_block(backend.durable_block(seq * 8)), (1, seq, seq * 8));
        }
        assert_eq!(backend.durable_block(32), &[0u8; 512][..], "the torn record never reached the medium");
        // The next record reuses sequence 4 over the torn space.
        assert_eq!(log.ring().next_seq(), 4);
    }
}

#[test]
fn corrupt_middle_is_refused_with_a_clear_error() {
    let mut log =
        StagingLog::format(MemRegion::new(256 * 1024), &ring_config(), flusher_config()).expect("format");
    for seq in 1..=5u64 {
        log.stage(1, seq * 8, 8, &[seq as u8; 4096]).expect("stage");
    }
    let info = log.ring().record(2).expect("staged");
    let mut region = log.into_region();
    region.bytes_mut()[info.data_offset + 100] ^= 0x40;
    region.persist(info.data_offset + 100, 1);
    let result = StagingLog::open(region, 0, &binding(), flusher_config());
    let Err(StagingError::Recovery(error)) = result else { panic!("corrupt middle accepted") };
    assert!(
        matches!(
            error,
            RecoveryError::CorruptRecord { seq: 2, reason: StopReason::BadCrc, later_seq: 3, .. }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("staging record 2") && message.contains("refusing to recover"), "{message}");
}

#[test]
fn bad_superblock_is_refused() {
    let mut region = MemRegion::new(256 * 1024);
    assert!(matches!(
        StagingLog::open(region.clone(), 0, &binding(), flusher_config()),
        Err(StagingError::Recovery(RecoveryError::Superblock(layout::SuperblockError::BadMagic { .. })))
    ));
    let log = StagingLog::format(region, &ring_config(), flusher_config()).expect("format");
    region = log.into_region();
    region.bytes_mut()[30] ^= 1;
    assert!(matches!(
        StagingLog::open(region, 0, &binding(), flusher_config()),
        Err(StagingError::Recovery(RecoveryError::Superblock(layout::SuperblockError::BadCrc { .. })))
    ));
}

#[test]
fn epoch_change_makes_old_records_a_stale_tail() {
    let mut log =
        StagingLog::format(MemRegion::new(256 * 1024), &ring_config(), flusher_config()).expect("format");
    for seq in 1..=3u64 {
        log.stage(1, seq * 8, 8, &[seq as u8; 4096]).expect("stage");
    }
    // The partner drained these records and moved to epoch 2: on return,
    // this node opens its ring at epoch 2 and must not replay them.
    let region = log.into_region();
    let (mut log, scan) = StagingLog::open(region, 2, &binding(), flusher_config()).expect("open");
    assert!(scan.stale_tail);
    assert_eq!(scan.records_found, 0);
    assert_eq!(log.epoch(), 2);
    assert_eq!(log.staged_overlaps(1, 0, 64).count(), 0);
    // New writes in epoch 2 reuse the space; a crash and reopen finds them,
    // and the stale epoch-1 records beyond them are not mistaken for data.
    log.stage(1, 40, 8, &[9; 4096]).expect("stage");
    let region = log.into_region();
    let mut backend = RamBackend::new(BLOCK, 64).expect("ram");
    let mut clock = 0;
    let (log, report) = StagingLog::recover(
        region,
        0,
        &binding(),
        flusher_config(),
        &mut backend,
        drain_wait(&mut clock),
        &mut Vec::new(),
    )
    .expect("recover");
    assert_eq!(report.scan.records_found, 1);
    assert_eq!(report.scan.epoch, 2);
    assert!(report.stale_tail, "stopped at the old epoch-1 record 2");
    assert_eq!(log.released_seq(), 1);
    let mut pool_block = vec![0u8; 512];
    let mut read_back = |lba: u64| {
        let pool = tandem_env::BufferPool::new("t", 4096, 1).expect("pool");
        let mut buf = pool.get().expect("buf");
        buf.set_len(512);
        backend.submit(1, BackendOp::Read { slba: lba, nlb: 1, buf }).expect("read");
        let mut done = Vec::new();
        backend.poll_completions(&mut done);
        pool_block.copy_from_slice(&done.pop().and_then(|c| c.buf).expect("buf")[..512]);
        pool_block[0]
    };
    assert_eq!(read_back(40), 9);
    assert_eq!(read_back(8), 0, "the drained epoch-1 record was not replayed");
}

#[test]
fn begin_epoch_after_drain_only() {
    let mut log =
        StagingLog::format(MemRegion::new(256 * 1024), &ring_config(), flusher_config()).expect("format");
    log.stage(1, 0, 8, &[1; 4096]).expect("stage");
    assert!(matches!(log.begin_epoch(2), Err(StagingError::Ring(RingError::NotDrained { .. }))));
    let mut backend = RamBackend::new(BLOCK, 64).expect("ram");
    let mut now_ms = 0;
    pump(&mut log, &mut backend, &mut now_ms);
    log.begin_epoch(2).expect("drained");
    log.stage(1, 0, 8, &[2; 4096]).expect("stage");
    let (_, scan) = StagingLog::open(log.into_region(), 0, &binding(), flusher_config()).expect("open");
    assert_eq!((scan.epoch, scan.records_found, scan.released_seq), (2, 1, 1));
}

/// The acknowledged-write model of one LBA: the newest acknowledged write.
#[derive(Clone, Copy, Default)]
struct Acked {
    lifetime: u64,
    seq: u64,
}

/// Random workload, power loss at a random persist, torn unpersisted words,
/// a medium that loses its unflushed cache; then recovery. Every write
/// acknowledged before the crash (or a later write) must be on the medium.
#[test]
fn crash_at_random_points_loses_no_acknowledged_write() {
    const LBAS: u64 = 48;
    // Coverage of the interesting cases across all iterations.
    let (mut torn_tails, mut replayed_records, mut wrapped) = (0u64, 0u64, 0u64);
    let mut crashes_in_recovery = 0u64;
    for iteration in 0..300u64 {
        let mut rng = Rng::new(iteration.wrapping_mul(0x1234_5678_9abc_def1) ^ 0x77);
        let use_cache = iteration % 2 == 0;
        let mut cache_backend = CacheBackend::new(LBAS, rng.next());
        let mut fault_backend = FaultBackend::new(RamBackend::new(BLOCK, LBAS).expect("ram"));
        let faults = fault_backend.control();
        let mut acked = vec![Acked::default(); LBAS as usize];
        // Small region: 40 KiB of area, so records wrap often.
        let budget = 2 + rng.below(60);
        let region = DyingRegion::new(48 * 1024, Some(budget));
        let mut log = StagingLog::format(region, &ring_config(), flusher_config()).expect("format");
        let mut now_ms = 0;
        for lifetime in 1..=3u64 {
            // Run until the region dies (or a step limit).
            let mut pending: Option<(Reservation, u64, u32)> = None;
            for _step in 0..200 {
                if log.ring().region().dead() {
                    break;
                }
                now_ms += 1;
                match rng.below(6) {
                    0 | 1 => {
                        let nlb = 1 + rng.below(8) as u32;
                        let slba = rng.below(LBAS - nlb as u64);
                        let seq = log.ring().next_seq();
                        if let Ok(res) = log.reserve(nlb as usize * BLOCK as usize) {
                            log.data_mut(&res).copy_from_slice(&write_data(lifetime, seq, slba, nlb));
                            // Sometimes hold it to commit out of order.
                            if pending.is_none() && rng.below(3) == 0 {
                                pending = Some((res, slba, nlb));
                                continue;
                            }
                            let outcome = log.commit(res, 1, slba, nlb);
                            record_acks(&log, &outcome, lifetime, &mut acked);
                        }
                    }
                    2 => {
                        if let Some((res, slba, nlb)) = pending.take() {
                            let outcome = if rng.below(5) == 0 {
                                log.cancel(res)
                            } else {
                                log.commit(res, 1, slba, nlb)
                            };
                            record_acks(&log, &outcome, lifetime, &mut acked);
                        }
                    }
                    3 => {
                        if !use_cache && rng.below(4) == 0 {
                            let slba = rng.below(LBAS);
                            faults.fail_writes_in(slba, 1 + rng.below(4));
                        } else if !use_cache {
                            faults.heal();
                        }
                        if use_cache {
                            log.poll_flusher(&mut cache_backend, now_ms);
                        } else {
                            log.poll_flusher(&mut fault_backend, now_ms);
                        }
                    }
                    _ => {
                        let mut completions = Vec::new();
                        if use_cache {
                            cache_backend.poll_completions(&mut completions);
                            for c in completions {
                                log.on_backend_completion(&cache_backend, c, now_ms);
                            }
                        } else {
                            fault_backend.poll_completions(&mut completions);
                            for c in completions {
                                log.on_backend_completion(&fault_backend, c, now_ms);
                            }
                        }
                    }
                }
            }
            // Power loss: the staging domain tears, the medium cache is lost.
            // An uncommitted reservation dies with the process.
            let _ = pending;
            let next_budget = 2 + rng.below(60);
            // Sometimes the power fails again during recovery (a few persists
            // in); the second recovery must replay again, idempotently.
            let recovery_budget = if rng.below(3) == 0 { Some(rng.below(4)) } else { None };
            let mut region = log.into_region().crash(rng.next(), recovery_budget);
            let (recovered, report) = loop {
                faults.heal();
                cache_backend.crash();
                // The dead process's operations die with it.
                fault_backend.poll_completions(&mut Vec::new());
                let mut clock = now_ms;
                let recovered = if use_cache {
                    StagingLog::recover(
                        region,
                        0,
                        &binding(),
                        flusher_config(),
                        &mut cache_backend,
                        drain_wait(&mut clock),
                        &mut Vec::new(),
                    )
                } else {
                    StagingLog::recover(
                        region,
                        0,
                        &binding(),
                        flusher_config(),
                        &mut fault_backend,
                        drain_wait(&mut clock),
                        &mut Vec::new(),
                    )
                };
                now_ms = clock;
                let (recovered, report) = match recovered {
                    Ok(done) => done,
                    Err(error) => panic!("iteration {iteration} lifetime {lifetime}: {error}"),
                };
                if !recovered.ring().region().dead() {
                    break (recovered, report);
                }
                crashes_in_recovery += 1;
                region = recovered.into_region().crash(rng.next(), None);
            };
            torn_tails += u64::from(report.torn_tail);
            replayed_records += report.replayed_records;
            // 40 KiB of area holds at most 5 records of 8 KiB: beyond that, it wrapped.
            wrapped += u64::from(recovered.ring().next_seq() > 6);
            for lba in 0..LBAS {
                let want = acked[lba as usize];
                let found = if use_cache {
                    parse_block(cache_backend.durable_block(lba))
                } else {
                    read_fault_block(&mut fault_backend, lba)
                };
                let (lifetime_found, seq_found, lba_found) = found;
                if want.seq == 0 {
                    continue;
                }
                assert_eq!(lba_found, lba, "iteration {iteration}: lba {lba} holds another block");
                assert!(
                    (lifetime_found, seq_found) >= (want.lifetime, want.seq),
                    "iteration {iteration} lifetime {lifetime}: lba {lba} has write ({lifetime_found}, \
                     {seq_found}), older than acknowledged ({}, {})",
                    want.lifetime,
                    want.seq
                );
            }
            // Whatever is on the medium now is the baseline for the next lifetime.
            for lba in 0..LBAS {
                let (l, s, _) = if use_cache {
                    parse_block(cache_backend.durable_block(lba))
                } else {
                    read_fault_block(&mut fault_backend, lba)
                };
                if s != 0 {
                    acked[lba as usize] = Acked { lifetime: l, seq: s };
                }
            }
            // The next lifetime dies at a fresh random persist.
            let mut region = recovered.into_region();
            region.persists_left = Some(next_budget);
            log = StagingLog::open(region, 0, &binding(), flusher_config()).expect("reopen after recovery").0;
            assert_eq!(log.released_seq(), log.durable_seq());
        }
    }
    assert!(
        torn_tails > 10 && replayed_records > 100 && wrapped > 100 && crashes_in_recovery > 0,
        "{torn_tails} {replayed_records} {wrapped} {crashes_in_recovery}"
    );
}

fn record_acks(log: &StagingLog<DyingRegion>, outcome: &CommitOutcome, lifetime: u64, acked: &mut [Acked]) {
    // A write is acknowledged only if the domain was alive after its persist.
    if log.ring().region().dead() {
        return;
    }
    for seq in outcome.newly_durable.clone() {
        let info = log.ring().record(seq).expect("durable record is staged");
        if info.cancelled {
            continue;
        }
        for lba in info.slba..info.slba + info.nlb as u64 {
            acked[lba as usize] = Acked { lifetime, seq };
        }
    }
}

fn read_fault_block(backend: &mut FaultBackend<RamBackend>, lba: u64) -> (u64, u64, u64) {
    let pool = tandem_env::BufferPool::new("check", 4096, 1).expect("pool");
    let mut buf = pool.get().expect("buf");
    buf.set_len(BLOCK as usize);
    backend.submit(7, BackendOp::Read { slba: lba, nlb: 1, buf }).expect("read");
    let mut done = Vec::new();
    backend.poll_completions(&mut done);
    let completion = done.pop().expect("read completion");
    parse_block(&completion.buf.expect("buf")[..BLOCK as usize])
}

/// A ring with three staged writes for `layout::test_medium(7)`.
fn ring_with_three_staged() -> MemRegion {
    let mut log =
        StagingLog::format(MemRegion::new(256 * 1024), &ring_config(), flusher_config()).expect("format");
    for seq in 1..=3u64 {
        log.stage(1, seq * 8, 8, &[seq as u8; 4096]).expect("stage");
    }
    log.into_region()
}

#[test]
fn staged_writes_are_not_replayed_into_another_medium_and_the_ring_is_untouched() {
    let region = ring_with_three_staged();
    let before = region.bytes().to_vec();
    let other = layout::test_medium(7);
    let other = layout::MediumIdentity { ino: other.ino + 1, path: "/b/medium.img".into(), ..other };
    let mut backend = CacheBackend::new(64, 1);
    let mut clock = 0;
    let result = StagingLog::recover(
        region.clone(),
        0,
        &Binding::new(other.clone()),
        flusher_config(),
        &mut backend,
        drain_wait(&mut clock),
        &mut Vec::new(),
    );
    let Err(StagingError::Recovery(error)) = result else { panic!("replayed into another medium") };
    let RecoveryError::MediumMismatch { records, bytes, recorded, configured } = &error else {
        panic!("{error:?}")
    };
    assert_eq!((*records, *bytes), (3, 3 * 4096));
    assert!(recorded.same_medium(&layout::test_medium(7)) && configured.same_medium(&other));
    let message = error.to_string();
    assert!(message.contains("/test/medium-7.img") && message.contains("/b/medium.img"), "{message}");
    assert!(message.contains("--adopt-staging"), "{message}");
    assert_eq!(region.bytes(), &before[..], "the refused ring is left byte for byte as it was");
    assert!((8..32).all(|lba| backend.durable_block(lba) == &[0u8; 512][..]), "nothing reached the medium");

    // The right medium still recovers all three.
    let (log, report) = StagingLog::recover(
        region,
        0,
        &binding(),
        flusher_config(),
        &mut backend,
        drain_wait(&mut clock),
        &mut Vec::new(),
    )
    .expect("recover into its own medium");
    assert_eq!(report.replayed_records, 3);
    assert!(!report.scan.medium_rebound);
    assert_eq!(log.released_seq(), 3);
}

#[test]
fn an_empty_ring_is_rebound_and_a_foreign_one_only_when_adopted() {
    let other = layout::test_medium(9);
    // Drained: nothing staged, so the ring simply follows the configured medium.
    let mut log =
        StagingLog::format(MemRegion::new(256 * 1024), &ring_config(), flusher_config()).expect("format");
    let mut backend = RamBackend::new(BLOCK, 64).expect("ram");
    let mut clock = 0;
    log.stage(1, 8, 8, &[1; 4096]).expect("stage");
    log.drain_all(&mut backend, drain_wait(&mut clock), &mut Vec::new()).expect("drain");
    let (log, scan) =
        StagingLog::open(log.into_region(), 0, &Binding::new(other.clone()), flusher_config()).expect("open");
    assert!(scan.medium_rebound);
    assert_eq!(log.ring().medium(), Some(&other));
    let (_, scan) = StagingLog::open(log.into_region(), 0, &Binding::new(other.clone()), flusher_config())
        .expect("reopen");
    assert!(!scan.medium_rebound, "the re-bound superblock persisted");

    // Staged writes for medium 7 are replayed into medium 9 only when adopted.
    let binding = Binding { medium: other.clone(), adopt_foreign: true };
    let (log, report) = StagingLog::recover(
        ring_with_three_staged(),
        0,
        &binding,
        flusher_config(),
        &mut backend,
        drain_wait(&mut clock),
        &mut Vec::new(),
    )
    .expect("adopted");
    assert!(report.scan.medium_rebound);
    assert_eq!(report.replayed_records, 3);
    assert_eq!(log.ring().medium(), Some(&other));
}

#[test]
fn a_version_1_ring_with_staged_writes_is_refused_until_adopted() {
    // What a build before the medium identity left behind.
    let mut region = ring_with_three_staged();
    let geometry = layout::Superblock::decode(&region.bytes()[..layout::SUPERBLOCK_BYTES], region.len())
        .expect("superblock")
        .geometry;
    layout::encode_superblock_v1(&geometry, &mut region.bytes_mut()[..layout::SUPERBLOCK_BYTES]);
    region.persist(0, layout::SUPERBLOCK_BYTES);
    let contents = inspect(region.bytes()).expect("inspect");
    assert_eq!((contents.medium, contents.staged_records, contents.staged_bytes), (None, 3, 3 * 4096));
    let before = region.bytes().to_vec();
    let Err(StagingError::Recovery(error)) =
        StagingLog::open(region.clone(), 0, &binding(), flusher_config())
    else {
        panic!("an unbound ring was replayed")
    };
    assert!(matches!(error, RecoveryError::MediumUnknown { records: 3, .. }), "{error:?}");
    assert!(error.to_string().contains("layout version 1"), "{error}");
    assert_eq!(region.bytes(), &before[..]);
    let adopt = Binding { adopt_foreign: true, ..binding() };
    let (log, scan) = StagingLog::open(region, 0, &adopt, flusher_config()).expect("adopt");
    assert_eq!((scan.records_found, scan.medium_rebound), (3, true));
    assert!(log.ring().medium().is_some_and(|m| m.same_medium(&layout::test_medium(7))));
}

/// Polls the flusher and the backend `passes` times (a counter clock).
fn pump_passes(log: &mut StagingLog<MemRegion>, backend: &mut FaultBackend<RamBackend>, passes: u64) {
    let mut completions = Vec::new();
    for now in 0..passes {
        log.poll_flusher(backend, now * 10);
        completions.clear();
        backend.poll_completions(&mut completions);
        for c in completions.drain(..) {
            assert!(log.on_backend_completion(backend, c, now * 10).is_none());
        }
    }
}

#[test]
fn records_the_partner_wrote_after_a_medium_failure_are_released() {
    let mut log =
        StagingLog::format(MemRegion::new(256 * 1024), &ring_config(), flusher_config()).expect("format");
    let mut backend = FaultBackend::new(RamBackend::new(BLOCK, 64).expect("ram"));
    backend.control().fail_writes_after(0);
    for i in 0..3u64 {
        log.stage(1, i * 8, 8, &[i as u8 + 1; 4096]).expect("stage");
    }
    pump_passes(&mut log, &mut backend, 5);
    assert!(log.has_medium_failures());
    assert_eq!(log.released_seq(), 0, "nothing is on the medium");
    let mut events = 0;
    while let Some(event) = log.take_event() {
        assert!(matches!(event, FlusherEvent::WriteFailed { .. }), "{event:?}");
        events += 1;
    }
    assert!(events > 0);
    // The partner wrote records 1..=3 from its second store.
    assert_eq!(log.durable_elsewhere(1, 3), 3);
    assert_eq!(log.released_seq(), 3);
    assert_eq!(log.medium_through(), 3);
    assert!(!log.has_medium_failures());
    // Nothing is retried afterwards, and a report for other records marks nothing.
    assert_eq!(log.durable_elsewhere(4, 9), 0);
    pump_passes(&mut log, &mut backend, 5);
    assert_eq!(log.take_event(), None);
}

#[test]
fn the_release_limit_holds_records_back_until_raised() {
    let mut log =
        StagingLog::format(MemRegion::new(256 * 1024), &ring_config(), flusher_config()).expect("format");
    let mut backend = FaultBackend::new(RamBackend::new(BLOCK, 64).expect("ram"));
    log.set_release_limit(2);
    for i in 0..4u64 {
        log.stage(1, i * 8, 8, &[i as u8 + 1; 4096]).expect("stage");
    }
    pump_passes(&mut log, &mut backend, 5);
    assert_eq!(log.medium_through(), 4, "the medium has all four");
    assert_eq!(log.released_seq(), 2, "only two may be released");
    assert!(log.ring().record(3).is_some(), "record 3 stays in the ring");
    log.set_release_limit(u64::MAX);
    assert_eq!(log.released_seq(), 4);
}

/// Write Zeroes and Deallocate are records of their own, ordered with the
/// writes around them: reads through the overlay, the medium after a drain,
/// and the medium after a crash and replay of what was staged all show the
/// newest of write / zeroes / deallocate for every block (a replay never
/// brings older data back over zeroes).
#[test]
fn zeroes_and_deallocate_are_ordered_records_through_overlay_drain_and_replay() {
    for seed in 1..=6u64 {
        let mut rng = Rng::new(seed);
        let mut log =
            StagingLog::format(MemRegion::new(128 * 1024), &ring_config(), flusher_config()).expect("format");
        let mut backend = CacheBackend::new(64, seed);
        // (lifetime, seq) of each block's newest write; (0, 0) = zeroes.
        let mut newest = vec![(0u64, 0u64); 64];
        let mut now_ms = 0;
        let mut ops = 0;
        for step in 0..300 {
            let nlb = 1 + rng.below(8) as u32;
            let slba = rng.below(64 - nlb as u64);
            let seq = log.ring().next_seq();
            let kind = match rng.below(5) {
                0 => RecordKind::Zeroes,
                1 => RecordKind::Deallocate,
                _ => RecordKind::Data,
            };
            let data = write_data(1, seq, slba, nlb);
            loop {
                let result = match kind {
                    RecordKind::Data => log.stage(1, slba, nlb, &data),
                    op => log.stage_op(op, 1, slba, nlb),
                };
                match result {
                    Ok(outcome) => {
                        assert_eq!(outcome.newly_durable, seq..=seq);
                        break;
                    }
                    Err(ReserveError::RingFull { .. }) => pump(&mut log, &mut backend, &mut now_ms),
                    Err(other) => panic!("{other}"),
                }
            }
            if kind.is_op() {
                ops += 1;
            }
            for lba in slba..slba + nlb as u64 {
                newest[lba as usize] = if kind.is_op() { (0, 0) } else { (1, seq) };
            }
            // Let the flusher work a little, so some records are on the medium.
            if step % 3 == 0 {
                now_ms += 1;
                log.poll_flusher(&mut backend, now_ms);
                let mut completions = Vec::new();
                backend.poll_completions(&mut completions);
                for completion in completions {
                    assert!(log.on_backend_completion(&backend, completion, now_ms).is_none());
                }
            }
            let read_nlb = 1 + rng.below(16) as u32;
            let read_slba = rng.below(64 - read_nlb as u64);
            let mut out = backend.read_now(read_slba, read_nlb);
            log.read_overlay(1, read_slba, read_nlb, BLOCK, &mut out).expect("overlay");
            for (i, block) in out.chunks(BLOCK as usize).enumerate() {
                let lba = read_slba + i as u64;
                let (lifetime, seq) = newest[lba as usize];
                let expect = if seq == 0 { (0, 0, 0) } else { (lifetime, seq, lba) };
                assert_eq!(parse_block(block), expect, "seed {seed} step {step}: read of lba {lba}");
            }
        }
        assert!(ops > 20, "seed {seed}: the run staged Write Zeroes and Deallocate records");
        let check = |backend: &CacheBackend, when: &str| {
            for (lba, &(lifetime, seq)) in newest.iter().enumerate() {
                let expect = if seq == 0 { (0, 0, 0) } else { (lifetime, seq, lba as u64) };
                assert_eq!(
                    parse_block(backend.durable_block(lba as u64)),
                    expect,
                    "seed {seed} {when}: lba {lba}"
                );
            }
        };
        if seed % 2 == 0 {
            pump(&mut log, &mut backend, &mut now_ms);
            check(&backend, "after a drain");
        } else {
            // A crash: the medium loses what was not flushed; the ring is replayed.
            backend.crash();
            let region = log.into_region();
            let mut clock = 0;
            let wait = DrainWait {
                now_ms: || {
                    clock += 1;
                    clock
                },
                idle: || {},
                deadline_ms: 1_000_000,
            };
            let (log, report) = StagingLog::recover(
                region,
                0,
                &binding(),
                flusher_config(),
                &mut backend,
                wait,
                &mut Vec::new(),
            )
            .expect("recover");
            assert_eq!(log.released_seq(), log.durable_seq());
            assert!(report.replayed_records > 0, "seed {seed}: the replay had records");
            check(&backend, "after a crash and replay");
        }
    }
}

/// A batch the partner was asked to write (its write failed here) fences its
/// blocks: a newer write to them does not reach the medium, and nothing is
/// released, until the partner answers; else the partner's write of the
/// older data could land over the newer one (found by the pair simulation).
#[test]
fn a_batch_reported_to_the_partner_fences_its_blocks_until_it_answers() {
    let mut log =
        StagingLog::format(MemRegion::new(256 * 1024), &ring_config(), flusher_config()).expect("format");
    let mut backend = FaultBackend::new(RamBackend::new(BLOCK, 64).expect("ram"));
    backend.control().fail_writes_after(0);
    log.stage(1, 0, 8, &[1; 4096]).expect("stage");
    pump_passes(&mut log, &mut backend, 3);
    assert!(log.has_medium_failures());
    assert_eq!(log.fence(1, 1), 1, "record 1's batch is fenced");
    backend.control().heal();
    log.stage(1, 0, 8, &[2; 4096]).expect("a newer write to the same blocks");
    log.stage(1, 32, 8, &[3; 4096]).expect("a write elsewhere");
    pump_passes(&mut log, &mut backend, 20);
    // (Record 1's own retry may have landed: that is its data, not the newer write's.)
    assert_ne!(
        read_fault_block(&mut backend, 0).0,
        u64::from_le_bytes([2; 8]),
        "the newer write passed the fence"
    );
    assert_eq!(log.released_seq(), 0, "nothing is released past the fence");
    // The partner answers: it wrote record 1.
    log.unfence(Some((1, 1)));
    let _ = log.durable_elsewhere(1, 1);
    pump_passes(&mut log, &mut backend, 20);
    assert_eq!(log.released_seq(), 3);
    let block = read_fault_block(&mut backend, 0);
    assert_eq!(block.0, u64::from_le_bytes([2; 8]), "the newest write is on the medium");
}

/// Deferred persist: commit writes the header (the record can be sent to the
/// partner) but it is durable, acknowledgeable, indexed and flushable only
/// after `persist`.
#[test]
fn deferred_persist_writes_headers_at_commit_and_makes_records_durable_later() {
    let mut log =
        StagingLog::format(MemRegion::new(256 * 1024), &ring_config(), flusher_config()).expect("format");
    log.set_deferred_persist(true);
    let outcome = log.stage(1, 0, 8, &[7; 4096]).expect("stage");
    assert!(outcome.newly_durable.is_empty(), "nothing durable at commit");
    assert_eq!((log.ring().written_seq(), log.durable_seq()), (1, 0));
    assert!(log.ring().mirror_image(1).is_some(), "a written record can be mirrored");
    assert_eq!(log.staged_overlaps(1, 0, 8).count(), 0, "not read before it is durable");
    let mut backend = FaultBackend::new(RamBackend::new(BLOCK, 64).expect("ram"));
    pump_passes(&mut log, &mut backend, 5);
    assert_eq!(log.released_seq(), 0, "not flushed before it is durable");
    assert_eq!(log.persist(), 1);
    assert_eq!((log.ring().written_seq(), log.durable_seq()), (1, 1));
    assert_eq!(log.staged_overlaps(1, 0, 8).count(), 1);
    assert_eq!(log.persist(), 0, "nothing more to persist");
    pump_passes(&mut log, &mut backend, 5);
    assert_eq!(log.released_seq(), 1);
}

fn ns_node() -> super::node::NsNode<MemRegion, super::node::NoMirror> {
    let log =
        StagingLog::format(MemRegion::new(256 * 1024), &ring_config(), flusher_config()).expect("format");
    super::node::NsNode::new(log, super::node::NoMirror, true, 1, BLOCK)
}

/// The write path hands every waiting command back exactly once, with its
/// must-complete token: a write when durable, a Flush on a volatile domain
/// when the medium has everything before it.
#[test]
fn the_write_path_hands_each_command_back_once_with_its_token() {
    use super::node::Ready;
    let mut node = ns_node();
    let slot = node.begin_write(8 * BLOCK as usize, 0x11).expect("room");
    node.write_buffer(&slot).fill(3);
    assert!(node.flush(0x10), "a Flush with nothing completed staged is done at once");
    let mut ready = Vec::new();
    node.collect_ready(&mut ready);
    assert!(ready.is_empty(), "nothing is ready before the commit");
    node.commit_write(slot, 0, 8);
    assert!(!node.flush(0x12), "a Flush with a write staged on a volatile domain waits");
    node.collect_ready(&mut ready);
    let tags: Vec<u64> = ready
        .drain(..)
        .map(|r| match r {
            Ready::Durable { token, seq } => {
                assert_eq!(seq, 1);
                token.complete()
            }
            Ready::Released { token } => panic!("released early: {:#x}", token.complete()),
        })
        .collect();
    assert_eq!(tags, vec![0x11]);
    let mut backend = FaultBackend::new(RamBackend::new(BLOCK, 64).expect("ram"));
    let (mut scratch, mut out) = (Vec::new(), Vec::new());
    for now in 0..10 {
        scratch.clear();
        backend.poll_completions(&mut scratch);
        node.poll(&mut backend, now, &mut scratch, &mut out, &mut |_, _| {});
    }
    node.collect_ready(&mut ready);
    assert!(matches!(ready.as_slice(), [Ready::Released { .. }]), "{ready:?}");
    for r in ready.drain(..) {
        if let Ready::Released { token } = r {
            assert_eq!(token.complete(), 0x12);
        }
    }
    node.collect_ready(&mut ready);
    assert!(ready.is_empty(), "each command comes back once");
}

#[test]
#[should_panic(expected = "dropped without a completion")]
fn a_write_path_dropped_with_a_waiting_command_panics_in_tests() {
    let mut node = ns_node();
    let slot = node.begin_write(BLOCK as usize, 0x21).expect("room");
    node.commit_write(slot, 0, 1);
    drop(node);
}

#[test]
fn abandoning_the_waiters_at_shutdown_completes_them() {
    let mut node = ns_node();
    let slot = node.begin_write(BLOCK as usize, 0x31).expect("room");
    node.commit_write(slot, 0, 1);
    assert_eq!(node.abandon_waiters(), 1);
    drop(node);
}

/// A mirror whose group has stopped taking writes (its medium failed too long).
struct StoppedMirror;

impl<R: PersistentRegion> super::node::Mirror<R> for StoppedMirror {
    fn ack_through(&mut self, log: &StagingLog<R>) -> u64 {
        log.durable_seq()
    }
    fn poll(&mut self, _log: &mut StagingLog<R>) -> bool {
        false
    }
    fn send(&mut self, _log: &mut StagingLog<R>) -> bool {
        false
    }
    fn on_flusher_event(&mut self, _event: &FlusherEvent) {}
    fn refuses_writes(&self) -> bool {
        true
    }
    fn defers_persist(&self) -> bool {
        false
    }
}

/// A stopped group stages nothing: writes, Write Zeroes and Deallocate are
/// refused as `GroupStopped` (the transport answers them with the ANA
/// status), also when they had waited for ring space.
#[test]
fn a_stopped_group_stages_no_write_zeroes_or_deallocate() {
    use super::node::{NsNode, StageError};
    let log =
        StagingLog::format(MemRegion::new(256 * 1024), &ring_config(), flusher_config()).expect("format");
    let mut node = NsNode::new(log, StoppedMirror, true, 1, BLOCK);
    assert_eq!(node.begin_write(BLOCK as usize, 1).err(), Some(StageError::GroupStopped));
    assert_eq!(node.stage_zeroes(2, 0, 8), Err(StageError::GroupStopped));
    assert_eq!(node.stage_deallocate(3, &[(0, 8), (16, 8)]), Err(StageError::GroupStopped));
    let mut ready = Vec::new();
    node.collect_ready(&mut ready);
    assert!(ready.is_empty(), "nothing was staged, nothing waits");
}
