//! CPU cost of the mirror path per record, in process, no network: a 4 KiB
//! record staged in the first store (reserve, data, commit, release) against
//! the same with the mirror (Record frame encoded, decoded, checked and
//! written into the second store, RecordAck back through the ack gate,
//! release on both sides). Both stores are `MemRegion`s, whose persist copies
//! the range into a "persisted image" (a real shm persist does nothing, a
//! pmem one flushes cache lines), so this bounds the CPU the mirror adds on
//! top of staging, not a link's latency.
//! Repetitions alternate the two so machine noise hits both; the ratio is
//! the figure. `cargo run --release -p tandem-perf --example mirror_cost`

use std::time::Instant;

use tandem_env::persist::MemRegion;
use tandem_target::ha::layout::{MediumIdentity, MediumKind};
use tandem_target::ha::link::frame::{encode, Frame, FrameDecoder, RECORD_FIXED_BYTES};
use tandem_target::ha::mirror::{MirrorReceiver, MirrorSender, Reply};
use tandem_target::ha::{Ring, RingConfig};

const REGION_BYTES: usize = 16 << 20;
const RECORD_BYTES: usize = 4096;
const RECORDS: u64 = 200_000;
const REPETITIONS: usize = 5;

fn ring() -> Ring<MemRegion> {
    let medium = MediumIdentity {
        kind: MediumKind::Ram,
        nguid: [1; 16],
        block_bytes: 4096,
        dev: 0,
        ino: 0,
        path: String::new(),
    };
    let config =
        RingConfig { owner_node_id: 1, created_epoch: 1, format_nonce: 9, record_align_bytes: 4096, medium };
    Ring::format(MemRegion::new(REGION_BYTES), &config).expect("format")
}

fn stage(ring: &mut Ring<MemRegion>, i: u64) -> u64 {
    let res = ring.reserve(RECORD_BYTES).expect("space: released as it goes");
    ring.data_mut(&res).fill(i as u8);
    ring.commit(res, 1, i % 1024, 1).seq
}

/// Nanoseconds per record, staging alone.
fn local() -> f64 {
    let mut ring = ring();
    let start = Instant::now();
    for i in 0..RECORDS {
        let seq = stage(&mut ring, i);
        ring.release_through(seq);
    }
    start.elapsed().as_nanos() as f64 / RECORDS as f64
}

/// Nanoseconds per record, staging plus the mirror round.
fn mirrored() -> f64 {
    let mut owner = ring();
    let second =
        Ring::format_mirror(MemRegion::new(REGION_BYTES), owner.superblock_bytes(), owner.control_state())
            .expect("second store");
    let mut receiver = MirrorReceiver::new(second);
    let mut sender = MirrorSender::new(&owner);
    let Frame::StoreState { format_nonce, epoch, held_through, released_seq } = receiver.state_frame() else {
        unreachable!("state_frame is a StoreState")
    };
    sender.on_store_state(&owner, format_nonce, epoch, held_through, released_seq).expect("resume");
    let payload_max = RECORD_FIXED_BYTES + 2 * RECORD_BYTES;
    let mut rx_buf = vec![0u8; 4 * payload_max];
    let mut decoder = FrameDecoder::new(&mut rx_buf, payload_max).expect("decoder");
    let mut wire = vec![0u8; 64 * 1024];
    let mut ack_buf = [0u8; 64];
    let mut ack_rx = vec![0u8; 2 * payload_max];
    let mut ack_decoder = FrameDecoder::new(&mut ack_rx, payload_max).expect("decoder");
    let start = Instant::now();
    for i in 0..RECORDS {
        let seq = stage(&mut owner, i);
        let acked = sender.local_durable(seq);
        assert!(acked.is_empty(), "no ack before the mirror");
        let n = sender.fill(&owner, &mut wire).expect("fill");
        let mut through = None;
        let mut at = 0;
        while at < n {
            at += decoder.feed(&wire[at..n]);
            while let Some(frame) = decoder.next_frame().expect("frame") {
                if let Reply::Ack(t) = receiver.on_frame(&frame).expect("accepted") {
                    through = Some(t);
                }
            }
        }
        let through = through.expect("an ack");
        let len = encode(&Frame::RecordAck { through_seq: through }, &mut ack_buf).expect("encode");
        ack_decoder.feed(&ack_buf[..len]);
        let frame = ack_decoder.next_frame().expect("frame").expect("whole");
        let acked = sender.on_frame(&frame).expect("ack");
        assert_eq!(acked, seq..=seq);
        let release = sender.releasable_through(seq);
        owner.release_through(release);
    }
    start.elapsed().as_nanos() as f64 / RECORDS as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let (mut l, mut m) = (Vec::new(), Vec::new());
    for _ in 0..REPETITIONS {
        l.push(local());
        m.push(mirrored());
    }
    let (l, m) = (median(l), median(m));
    println!("4 KiB records, {RECORDS} per run, median of {REPETITIONS} alternating runs:");
    println!("  staging alone      {l:8.0} ns/record");
    println!("  staging + mirror   {m:8.0} ns/record  (both stores in this process)");
    println!("  mirror / alone     {:8.2}", m / l);
}
