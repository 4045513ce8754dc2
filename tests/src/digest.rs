//! The data digest cases of the NVMe/TCP conformance checks, shared by the
//! malformed-input test (a RAM namespace, writes straight to the medium)
//! and the staging tests (writes received into ring records).
//!
//! NVMe/TCP 1.0: a data digest error on H2C data (the in-capsule data of a
//! command capsule, or an H2CData PDU) is not a fatal transport error; the
//! controller completes the command with Transient Transport Error (SCT 0h,
//! SC 22h) and the connection stays usable. The failed write must leave no
//! trace: a read afterwards returns what was there before it.

use std::net::SocketAddr;

use tandem_nvmf::spec::sqe::SGL_ID_TRANSPORT_DATA_BLOCK;
use tandem_nvmf::spec::{NvmeStatus, SglDescriptor};
use tandem_nvmf::tcp::{H2CData, PduHeader};

use crate::raw::{admin_queue, assert_status, io_queue, opc, pdu_bytes, rw_sqe, Incoming, RawConn, WAIT};

const BLOCK_BYTES: usize = 4096;

/// `blocks` blocks of a pattern unique to `seed`.
fn pattern(blocks: usize, seed: u8) -> Vec<u8> {
    (0..blocks * BLOCK_BYTES).map(|i| (i as u8).wrapping_mul(13) ^ seed.wrapping_mul(0x5b)).collect()
}

fn write_ok(q: &mut RawConn, nsid: u32, lba: u64, data: &[u8], in_capsule: bool, what: &str) {
    let nlb0 = (data.len() / BLOCK_BYTES - 1) as u16;
    let (cqe, _) = q.command(rw_sqe(opc::WRITE, nsid, lba, nlb0), data, 0, in_capsule);
    assert_status(&cqe, NvmeStatus::SUCCESS, what);
}

fn read_back(q: &mut RawConn, nsid: u32, lba: u64, blocks: usize, what: &str) -> Vec<u8> {
    let (cqe, data) =
        q.command(rw_sqe(opc::READ, nsid, lba, (blocks - 1) as u16), &[], blocks * BLOCK_BYTES, true);
    assert_status(&cqe, NvmeStatus::SUCCESS, what);
    data
}

/// Runs both cases on a fresh association with header and data digests:
/// an in-capsule write of one block at `lba`, and an R2T write of four
/// blocks at `lba + 8` sent as four H2CData PDUs of which the second has a
/// wrong data digest. Each fails with 22h, exactly once (the next
/// completion on the queue is the next command's), leaves the old data in
/// place, and the queue then writes and reads correctly.
pub fn data_digest_errors_are_transient(addr: SocketAddr, subnqn: &str, nsid: u32, lba: u64) {
    let (_admin, cntlid) = admin_queue(addr, subnqn, (true, true), 0);
    let mut q = io_queue(addr, subnqn, cntlid, 1, (true, true));

    // In-capsule data with a wrong digest.
    let old = pattern(1, 1);
    let new = pattern(1, 2);
    write_ok(&mut q, nsid, lba, &old, true, "in-capsule: the write before");
    let mut sqe = rw_sqe(opc::WRITE, nsid, lba, 0);
    sqe.set_cid(q.cid());
    sqe.set_psdt(1);
    sqe.set_sgl(SglDescriptor::new(0, BLOCK_BYTES as u32, 0x01));
    let mut b = pdu_bytes(&q.framing, &PduHeader::CapsuleCmd { sqe }, &new);
    let n = b.len();
    b[n - 1] ^= 0xFF; // the data digest is the last 4 bytes
    q.send_raw(&b);
    let (cqe, _) = q.finish(sqe.cid(), &[]);
    assert_status(&cqe, NvmeStatus::TRANSIENT_TRANSPORT_ERROR, "in-capsule write with a wrong data digest");
    assert!(read_back(&mut q, nsid, lba, 1, "in-capsule: read after") == old, "in-capsule: old data kept");
    write_ok(&mut q, nsid, lba, &new, true, "in-capsule: the write after");
    assert!(read_back(&mut q, nsid, lba, 1, "in-capsule: read of the new") == new, "in-capsule: new data");

    // H2CData: four PDUs, the second with a wrong digest.
    let lba = lba + 8;
    let old = pattern(4, 3);
    let new = pattern(4, 4);
    write_ok(&mut q, nsid, lba, &old, false, "H2CData: the write before");
    let cid = q.cid();
    let mut sqe = rw_sqe(opc::WRITE, nsid, lba, 3);
    sqe.set_cid(cid);
    sqe.set_psdt(1);
    sqe.set_sgl(SglDescriptor::new(0, new.len() as u32, SGL_ID_TRANSPORT_DATA_BLOCK));
    q.send(&PduHeader::CapsuleCmd { sqe }, &[]);
    let r2t = match q.recv(WAIT) {
        Incoming::Pdu { header: PduHeader::R2T(r), .. } => r,
        other => panic!("H2CData: expected an R2T, got {other:?}"),
    };
    assert_eq!((r2t.cccid, r2t.r2to, r2t.r2tl as usize), (cid, 0, new.len()), "one R2T for the whole write");
    for (i, chunk) in new.chunks(BLOCK_BYTES).enumerate() {
        let h = H2CData {
            cccid: cid,
            ttag: r2t.ttag,
            datao: (i * BLOCK_BYTES) as u32,
            datal: BLOCK_BYTES as u32,
            last: i == 3,
        };
        let mut b = pdu_bytes(&q.framing, &PduHeader::H2CData(h), chunk);
        if i == 1 {
            let n = b.len();
            b[n - 1] ^= 0xFF;
        }
        q.send_raw(&b);
    }
    let (cqe, _) = q.finish(cid, &[]);
    assert_status(&cqe, NvmeStatus::TRANSIENT_TRANSPORT_ERROR, "H2CData with a wrong data digest");
    // `finish` asserts each completion's CID: a second completion of the
    // failed write would fail this read.
    assert!(read_back(&mut q, nsid, lba, 4, "H2CData: read after") == old, "H2CData: old data kept");
    write_ok(&mut q, nsid, lba, &new, false, "H2CData: the write after");
    assert!(read_back(&mut q, nsid, lba, 4, "H2CData: read of the new") == new, "H2CData: new data");
}
