//! Claim: with the staging log in the write path the namespace still behaves
//! as one disk to the host, and the medium gets every byte.
//!
//! - `reads_see_staged_writes_across_partial_overlaps`: read-your-writes while
//!   the data is ONLY in the ring (the medium fails every write, checked on
//!   the medium file itself): a 64 KiB write, then 4 KiB and 8 KiB writes
//!   inside it and across its edges, each followed by reads across every
//!   boundary; after the medium heals and a Flush, the medium file equals the
//!   same model.
//! - `flush_drains_shm_staging_to_the_medium`: with a volatile (shm) domain,
//!   once NVMe Flush completes the medium file read with std::fs holds the
//!   data; Identify Controller reports a volatile write cache (VWC bit 0 = 1).
//! - `file_domain_reports_no_volatile_write_cache`: VWC bit 0 = 0 with the
//!   power-safe file domain.
//! - `tiny_ring_back_pressure_completes_every_write`: a 1 MiB ring under
//!   128 KiB writes at queue depth 32 on two queues: every command succeeds
//!   (a full ring parks writes, it never fails them) and the data verifies.
//! - `data_digest_error_leaves_nothing_in_the_ring`: a staged write whose
//!   data fails its digest (in capsule, or one of several H2CData PDUs)
//!   completes with Transient Transport Error and its record is cancelled.
//! - `write_through_namespace_next_to_staged_one`: a `write_through = true`
//!   namespace beside a staged one: no ring for it, its data is on its medium
//!   as soon as the write completes, and both verify, also after kill -9.

mod staging_support;

use std::time::{Duration, Instant};

use staging_support::{first_difference, pattern, Domain, NsSpec, StagedNode, BLOCK_BYTES};
use tandem_nvmf::host::{IoCommand, IoQueue};
use tandem_nvmf::spec::NvmeStatus;

/// Byte 525 of Identify Controller: VWC (NVMe Base 2.0, Figure 275).
const IDENTIFY_VWC_BYTE: usize = 525;

fn read(q: &mut IoQueue, nsid: u32, lba: u64, blocks: usize) -> Vec<u8> {
    let mut buf = vec![0u8; blocks * BLOCK_BYTES];
    q.read(nsid, lba, &mut buf).unwrap_or_else(|e| panic!("read ns {nsid} LBA {lba} x{blocks}: {e}"));
    buf
}

/// Reads `blocks` at `lba` and compares them with the model (which starts at LBA 0).
fn check_read(q: &mut IoQueue, lba: u64, blocks: usize, model: &[u8], when: &str) {
    let got = read(q, 1, lba, blocks);
    let at = lba as usize * BLOCK_BYTES;
    if let Some(d) = first_difference(lba, &got, &model[at..at + blocks * BLOCK_BYTES]) {
        panic!("{when}: read of {blocks} blocks at LBA {lba}: {d}");
    }
}

#[test]
fn reads_see_staged_writes_across_partial_overlaps() {
    const BLOCKS: usize = 64;
    let n = StagedNode::start("ryw", Domain::Shm, "4MiB", &[NsSpec::staged(1, 1024).with_faults()]);
    let (_controller, mut queues) = n.connect(1, 32);
    let q = &mut queues[0];

    // A known background on the medium itself, drained there by a Flush.
    let mut model = pattern(0, BLOCKS, 0);
    q.write(1, 0, &model).expect("background write");
    q.flush(1).expect("flush of the background");
    assert_eq!(n.read_medium(1, 0, BLOCKS), model, "background on the medium after Flush");

    n.fail_all_medium_writes(1);
    // (lba, blocks): a 64 KiB write, then writes at its first, a middle and its
    // last block, across both edges, and over an earlier overwrite.
    let writes: [(u64, usize); 7] = [(16, 16), (16, 1), (23, 1), (31, 1), (31, 2), (15, 2), (23, 1)];
    // Reads that start or end at every edge of the writes above.
    let reads: [(u64, usize); 9] =
        [(0, BLOCKS), (12, 24), (15, 2), (16, 1), (22, 3), (30, 2), (31, 1), (32, 1), (14, 20)];
    for (generation, &(lba, blocks)) in writes.iter().enumerate() {
        let data = pattern(lba, blocks, generation as u64 + 1);
        q.write(1, lba, &data).unwrap_or_else(|e| panic!("write {generation} at LBA {lba}: {e}"));
        let at = lba as usize * BLOCK_BYTES;
        model[at..at + data.len()].copy_from_slice(&data);
        for &(rl, rb) in &reads {
            check_read(
                q,
                rl,
                rb,
                &model,
                &format!("after write {generation} ({blocks} blocks at LBA {lba})"),
            );
        }
    }
    // The reads above were answered from the ring: the medium still holds the background.
    n.wait_for_log("medium write failed", Duration::from_secs(10));
    assert_eq!(n.read_medium(1, 0, BLOCKS), pattern(0, BLOCKS, 0), "a failing medium was written");

    n.heal(1);
    q.flush(1).expect("flush after heal");
    if let Some(d) = first_difference(0, &n.read_medium(1, 0, BLOCKS), &model) {
        panic!("medium after heal and Flush: {d}");
    }
    check_read(q, 0, BLOCKS, &model, "after heal and Flush");
}

fn identify_vwc(n: &StagedNode) -> u8 {
    let (mut controller, _queues) = n.connect(1, 8);
    let data = controller.identify_controller().expect("identify controller");
    data[IDENTIFY_VWC_BYTE]
}

#[test]
fn flush_drains_shm_staging_to_the_medium() {
    let n = StagedNode::start("flush-shm", Domain::Shm, "16MiB", &[NsSpec::staged(1, 1024)]);
    assert_eq!(identify_vwc(&n) & 1, 1, "VWC present with a volatile (shm) staging domain");
    let (_controller, mut queues) = n.connect(1, 32);
    let q = &mut queues[0];
    for round in 0..4u64 {
        // 45 blocks in writes of 1, 2, ... 9 blocks, a new generation each round.
        let mut lba = 100;
        for blocks in 1..=9usize {
            q.write(1, lba, &pattern(lba, blocks, round)).expect("write");
            lba += blocks as u64;
        }
        q.flush(1).expect("flush");
        let want: Vec<u8> = pattern(100, 45, round);
        if let Some(d) = first_difference(100, &n.read_medium(1, 100, 45), &want) {
            panic!("round {round}: medium file right after Flush completed: {d}");
        }
    }
}

#[test]
fn file_domain_reports_no_volatile_write_cache() {
    let n = StagedNode::start("vwc-file", Domain::File, "4MiB", &[NsSpec::staged(1, 256)]);
    assert_eq!(identify_vwc(&n) & 1, 0, "no volatile write cache with a power-safe (file) domain");
    let (_controller, mut queues) = n.connect(1, 8);
    queues[0].write(1, 3, &pattern(3, 2, 1)).expect("write");
    queues[0].flush(1).expect("flush");
    assert_eq!(read(&mut queues[0], 1, 3, 2), pattern(3, 2, 1));
}

#[test]
fn tiny_ring_back_pressure_completes_every_write() {
    const WRITE_BLOCKS: usize = 32; // 128 KiB, the MDTS
    const WRITES_PER_QUEUE: usize = 96;
    const QUEUE_DEPTH: usize = 32;
    let n = StagedNode::start("backpressure", Domain::Shm, "1MiB", &[NsSpec::staged(1, 8192)]);
    let (_controller, queues) = n.connect(2, QUEUE_DEPTH as u16);
    let lba_of = |q: usize, i: usize| ((q * WRITES_PER_QUEUE + i) * WRITE_BLOCKS) as u64;
    let results: Vec<(usize, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(qi, mut q)| {
                s.spawn(move || {
                    let data: Vec<Vec<u8>> =
                        (0..WRITES_PER_QUEUE).map(|i| pattern(lba_of(qi, i), WRITE_BLOCKS, 1)).collect();
                    let (mut next, mut done, mut in_flight) = (0usize, 0usize, 0usize);
                    let mut errors = Vec::new();
                    let limit = Instant::now() + Duration::from_secs(60);
                    while done < WRITES_PER_QUEUE {
                        while in_flight < QUEUE_DEPTH && next < WRITES_PER_QUEUE {
                            let cmd = IoCommand::Write {
                                nsid: 1,
                                slba: lba_of(qi, next),
                                data: &data[next],
                                fua: false,
                            };
                            q.submit(cmd, next as u64).unwrap_or_else(|e| panic!("queue {qi}: submit: {e}"));
                            next += 1;
                            in_flight += 1;
                        }
                        q.poll(Some(Duration::from_millis(10)), &mut |c| {
                            done += 1;
                            in_flight -= 1;
                            if c.status != NvmeStatus::SUCCESS {
                                errors.push(format!("write {} failed: {}", c.tag, c.status));
                            }
                        })
                        .unwrap_or_else(|e| panic!("queue {qi}: poll: {e}"));
                        assert!(
                            Instant::now() < limit,
                            "queue {qi}: {done} of {WRITES_PER_QUEUE} done in 60 s"
                        );
                    }
                    (done, errors)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("writer thread")).collect()
    });
    for (qi, (done, errors)) in results.iter().enumerate() {
        assert_eq!(*done, WRITES_PER_QUEUE, "queue {qi}");
        assert!(errors.is_empty(), "queue {qi}: {errors:?}");
    }
    let (_controller, mut queues) = n.connect(1, 8);
    for qi in 0..2 {
        for i in 0..WRITES_PER_QUEUE {
            let lba = lba_of(qi, i);
            let want = pattern(lba, WRITE_BLOCKS, 1);
            if let Some(d) = first_difference(lba, &read(&mut queues[0], 1, lba, WRITE_BLOCKS), &want) {
                panic!("read back: {d}");
            }
        }
    }
    queues[0].flush(1).expect("flush");
    let total = 2 * WRITES_PER_QUEUE * WRITE_BLOCKS;
    let want: Vec<u8> = pattern(0, total, 1);
    // pattern() is per block, so one call over the whole range equals the writes.
    if let Some(d) = first_difference(0, &n.read_medium(1, 0, total), &want) {
        panic!("medium after Flush: {d}");
    }
}

#[test]
fn write_through_namespace_next_to_staged_one() {
    let mut n = StagedNode::start(
        "write-through",
        Domain::Shm,
        "4MiB",
        &[NsSpec::staged(1, 512), NsSpec::staged(2, 512).write_through()],
    );
    let rings = n.ring_files();
    assert_eq!(rings.len(), 1, "only the staged namespace has a ring: {rings:?}");
    assert!(rings[0].to_string_lossy().ends_with("-ns1.ring"), "{rings:?}");

    let writes: [(u64, usize); 4] = [(0, 1), (7, 16), (40, 3), (100, 32)];
    {
        let (_controller, mut queues) = n.connect(1, 32);
        let q = &mut queues[0];
        for (i, &(lba, blocks)) in writes.iter().enumerate() {
            for nsid in [1u32, 2] {
                let data = pattern(lba, blocks, u64::from(nsid) * 100 + i as u64);
                q.write(nsid, lba, &data).unwrap_or_else(|e| panic!("ns {nsid} write at {lba}: {e}"));
                assert_eq!(read(q, nsid, lba, blocks), data, "ns {nsid} read back at LBA {lba}");
                if nsid == 2 {
                    // Write-through: the medium has it when the write completes.
                    let on_medium = n.read_medium(2, lba, blocks);
                    if let Some(d) = first_difference(lba, &on_medium, &data) {
                        panic!("write-through ns 2 medium right after the write: {d}");
                    }
                }
            }
        }
    }
    n.node.kill9();
    n.restart();
    let (_controller, mut queues) = n.connect(1, 32);
    for (i, &(lba, blocks)) in writes.iter().enumerate() {
        for nsid in [1u32, 2] {
            let want = pattern(lba, blocks, u64::from(nsid) * 100 + i as u64);
            if let Some(d) = first_difference(lba, &read(&mut queues[0], nsid, lba, blocks), &want) {
                panic!("ns {nsid} after kill -9 and restart: {d}");
            }
            if let Some(d) = first_difference(lba, &n.read_medium(nsid, lba, blocks), &want) {
                panic!("ns {nsid} medium after restart: {d}");
            }
        }
    }
}

/// A data digest error on a staged write (in capsule, and in the second of
/// four H2CData PDUs) completes with Transient Transport Error, once, and
/// nothing of it lands: the read right after returns the old data (the
/// read overlays what the ring holds on the medium), its ring record is
/// cancelled (never flushed nor replayed), and after a Flush the medium
/// holds exactly what the successful writes wrote.
#[test]
fn data_digest_error_leaves_nothing_in_the_ring() {
    let n = StagedNode::start("digest", Domain::Shm, "4MiB", &[NsSpec::staged(1, 256)]);
    tandem_tests::digest::data_digest_errors_are_transient(n.addr, tandem_tests::TEST_SUBNQN, 1, 16);
    let ring = std::fs::read(n.ring_file(1)).expect("read the ring file");
    // FLAG_CANCELLED of a record header (target/src/ha/ring.rs).
    const CANCELLED: u16 = 1 << 1;
    let cancelled = staging_support::ring_records(&ring).iter().filter(|r| r.flags & CANCELLED != 0).count();
    assert_eq!(cancelled, 2, "one cancelled record per failed write");
    let (_controller, mut queues) = n.connect(1, 8);
    queues[0].flush(1).expect("flush");
    // The digest helper's final writes: one block at 16, four at 24.
    let mut after = read(&mut queues[0], 1, 16, 1);
    after.extend(read(&mut queues[0], 1, 24, 4));
    let mut medium = n.read_medium(1, 16, 1);
    medium.extend(n.read_medium(1, 24, 4));
    assert!(medium == after, "the medium after Flush equals what the host reads");
    assert!(n.node.log().contains("data digest error"), "the node logs the digest error");
}
