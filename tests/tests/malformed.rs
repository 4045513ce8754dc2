//! Claim: malformed input on one connection gets the exact answer the
//! NVMe/TCP and NVMe specs call for — a C2HTermReq with the right FES and
//! FEI (and PDO and the other reserved fields 0) and a closed connection for
//! a broken PDU, a CapsuleResp with Transient Transport Error for data whose
//! digest is wrong, or a CapsuleResp with the right status for a bad command
//! — and nothing else is disturbed: a healthy host-library
//! connection to the same `tandem serve` keeps doing verified I/O before and
//! after every case, and the process is still alive at the end.

use std::net::SocketAddr;

use tandem_nvmf::host::{ConnectOptions, HostController, IoQueue};
use tandem_nvmf::spec::sqe::SGL_ID_TRANSPORT_DATA_BLOCK;
use tandem_nvmf::spec::{NvmeStatus, SglDescriptor, Sqe};
use tandem_nvmf::tcp::{fes, H2CData, PduHeader};
use tandem_tests::digest;
use tandem_tests::raw::{
    self, admin_queue, assert_status, io_queue, opc, pdu_bytes, rw_sqe, Incoming, RawConn,
};
use tandem_tests::{start_test_node, PortSpec, TEST_BLOCK_BYTES, TEST_NS_BYTES, TEST_SUBNQN};

const BLOCKS: u64 = TEST_NS_BYTES / TEST_BLOCK_BYTES as u64;
const BS: usize = TEST_BLOCK_BYTES as usize;

/// Writes a pattern unique to `round` and reads it back on the healthy queue.
fn verified_io(q: &mut IoQueue, round: u64) {
    let slba = 1000 + (round % 64) * 8;
    let data: Vec<u8> = (0..8 * BS).map(|i| (i as u64 ^ round.wrapping_mul(0x9e37)) as u8).collect();
    q.write(1, slba, &data).unwrap_or_else(|e| panic!("healthy write, round {round}: {e}"));
    let mut back = vec![0u8; data.len()];
    q.read(1, slba, &mut back).unwrap_or_else(|e| panic!("healthy read, round {round}: {e}"));
    assert!(back == data, "healthy read-back differs, round {round}");
}

/// An Identify Controller SQE (admin, 4096 bytes back).
fn identify_sqe() -> Sqe {
    let mut sqe = Sqe::default();
    sqe.set_opcode(opc::IDENTIFY);
    sqe.set_cdw10(1);
    sqe
}

/// The bytes of a CapsuleCmd PDU carrying `sqe` (CID 9) with `data` in capsule.
fn capsule_bytes(c: &RawConn, mut sqe: Sqe, data: &[u8]) -> Vec<u8> {
    sqe.set_cid(9);
    sqe.set_psdt(1);
    pdu_bytes(&c.framing, &PduHeader::CapsuleCmd { sqe }, data)
}

struct Case {
    name: &'static str,
    run: fn(SocketAddr),
}

fn unknown_pdu_type(addr: SocketAddr) {
    let mut c = RawConn::open_ic(addr, false, false);
    c.send_raw(&[0x0A, 0, 8, 0, 8, 0, 0, 0]);
    assert_eq!(c.expect_term_req(fes::INVALID_HEADER_FIELD), 0, "FEI names PDU-Type");
}

fn hlen_inconsistent(addr: SocketAddr) {
    let mut c = RawConn::open_ic(addr, false, false);
    let mut b = capsule_bytes(&c, identify_sqe(), &[]);
    b[2] = 70;
    c.send_raw(&b);
    assert_eq!(c.expect_term_req(fes::INVALID_HEADER_FIELD), 2, "FEI names HLEN");
}

fn pdo_inconsistent(addr: SocketAddr) {
    let mut c = RawConn::open_ic(addr, false, false);
    let (sqe, data) = raw::connect_command(TEST_SUBNQN, 0, 32, 0, 0xFFFF);
    let mut b = capsule_bytes(&c, sqe, &data);
    b[3] = 8; // PDO inside the 72-byte header
    c.send_raw(&b);
    assert_eq!(c.expect_term_req(fes::INVALID_HEADER_FIELD), 3, "FEI names PDO");
}

fn plen_shorter_than_header(addr: SocketAddr) {
    let mut c = RawConn::open_ic(addr, false, false);
    let mut b = capsule_bytes(&c, identify_sqe(), &[]);
    b[4..8].copy_from_slice(&20u32.to_le_bytes());
    c.send_raw(&b);
    assert_eq!(c.expect_term_req(fes::INVALID_HEADER_FIELD), 4, "FEI names PLEN");
}

fn plen_over_limit(addr: SocketAddr) {
    let mut c = RawConn::open_ic(addr, false, false);
    let mut b = capsule_bytes(&c, identify_sqe(), &[]);
    b[4..8].copy_from_slice(&(64u32 << 20).to_le_bytes());
    c.send_raw(&b);
    assert_eq!(c.expect_term_req(fes::INVALID_HEADER_FIELD), 4, "FEI names PLEN");
}

fn wrong_header_digest(addr: SocketAddr) {
    let mut c = RawConn::open_ic(addr, true, false);
    let (sqe, data) = raw::connect_command(TEST_SUBNQN, 0, 32, 0, 0xFFFF);
    let mut b = capsule_bytes(&c, sqe, &data);
    assert_eq!(b[1] & 1, 1, "HDGSTF set on the capsule");
    b[72] ^= 0xFF; // the header digest follows the 72-byte header
    let sent = u32::from_le_bytes([b[72], b[73], b[74], b[75]]);
    c.send_raw(&b);
    assert_eq!(c.expect_term_req(fes::HEADER_DIGEST_ERROR), sent, "FEI carries the header digest received");
}

fn wrong_data_digest(addr: SocketAddr) {
    // Not fatal: the stream is still at a PDU boundary. The command fails
    // with Transient Transport Error (22h), its data is not written, and the
    // queue keeps working; in capsule and over H2CData (see `digest`).
    digest::data_digest_errors_are_transient(addr, TEST_SUBNQN, 1, 7);
}

fn command_before_icreq(addr: SocketAddr) {
    let mut c = RawConn::open(addr);
    let b = capsule_bytes(&c, identify_sqe(), &[]);
    c.send_raw(&b);
    c.expect_term_req(fes::PDU_SEQUENCE_ERROR);
}

fn command_before_connect(addr: SocketAddr) {
    let mut c = RawConn::open_ic(addr, false, false);
    let (cqe, data) = c.admin(identify_sqe(), 4096);
    assert_status(&cqe, NvmeStatus::COMMAND_SEQUENCE_ERROR, "Identify before Connect");
    assert!(data.is_empty(), "no data for a failed command");
    // Connect still works on the same connection afterwards.
    let cqe = c.connect(TEST_SUBNQN, 0, 0, 0xFFFF);
    assert_status(&cqe, NvmeStatus::SUCCESS, "Connect after the refused command");
}

fn io_opcode_on_admin_queue(addr: SocketAddr) {
    let (mut a, _) = admin_queue(addr, TEST_SUBNQN, (false, false), 0);
    // Write (01h) is Create I/O Submission Queue on the admin queue, which a
    // fabrics controller does not implement; Flush (00h) is Delete I/O SQ.
    let (cqe, _) = a.command(rw_sqe(opc::WRITE, 1, 0, 0), &vec![0u8; BS], 0, true);
    assert_status(&cqe, NvmeStatus::INVALID_OPCODE, "Write opcode on the admin queue");
    let (cqe, _) = a.command(rw_sqe(opc::FLUSH, 1, 0, 0), &[], 0, true);
    assert_status(&cqe, NvmeStatus::INVALID_OPCODE, "Flush opcode on the admin queue");
    let (cqe, _) = a.admin(identify_sqe(), 4096);
    assert_status(&cqe, NvmeStatus::SUCCESS, "Identify afterwards");
}

fn unknown_opcode(addr: SocketAddr) {
    let (mut a, cntlid) = admin_queue(addr, TEST_SUBNQN, (false, false), 0);
    let mut sqe = Sqe::default();
    sqe.set_opcode(0xC5);
    let (cqe, _) = a.admin(sqe, 0);
    assert_status(&cqe, NvmeStatus::INVALID_OPCODE, "admin opcode C5h");
    let mut q = io_queue(addr, TEST_SUBNQN, cntlid, 1, (false, false));
    let mut sqe = rw_sqe(0x55, 1, 0, 0);
    sqe.set_cdw12(0);
    let (cqe, _) = q.command(sqe, &[], 0, true);
    assert_status(&cqe, NvmeStatus::INVALID_OPCODE, "I/O opcode 55h");
}

fn io_checks(addr: SocketAddr) {
    let (_a, cntlid) = admin_queue(addr, TEST_SUBNQN, (false, false), 0);
    let mut q = io_queue(addr, TEST_SUBNQN, cntlid, 1, (false, false));
    let cases: [(&str, Sqe, usize, NvmeStatus); 7] = [
        ("read of nsid 7", rw_sqe(opc::READ, 7, 0, 0), BS, NvmeStatus::INVALID_NAMESPACE),
        ("read of nsid FFFFFFFFh", rw_sqe(opc::READ, 0xFFFF_FFFF, 0, 0), BS, NvmeStatus::INVALID_NAMESPACE),
        ("read of nsid 0", rw_sqe(opc::READ, 0, 0, 0), BS, NvmeStatus::INVALID_NAMESPACE),
        (
            "read at the first LBA past the end",
            rw_sqe(opc::READ, 1, BLOCKS, 0),
            BS,
            NvmeStatus::LBA_OUT_OF_RANGE,
        ),
        (
            "read of 2 blocks over the end",
            rw_sqe(opc::READ, 1, BLOCKS - 1, 1),
            2 * BS,
            NvmeStatus::LBA_OUT_OF_RANGE,
        ),
        (
            "read whose SLBA + NLB wraps u64",
            rw_sqe(opc::READ, 1, u64::MAX - 1, 3),
            4 * BS,
            NvmeStatus::LBA_OUT_OF_RANGE,
        ),
        // 33 blocks of 4 KiB = 132 KiB, over the 128 KiB MDTS.
        ("read over MDTS", rw_sqe(opc::READ, 1, 0, 32), 33 * BS, NvmeStatus::INVALID_FIELD),
    ];
    for (what, sqe, len, want) in cases {
        let (cqe, data) = q.command(sqe, &[], len, true);
        assert_status(&cqe, want, what);
        assert!(data.is_empty(), "{what}: no data for a failed command");
    }
    // NLB FFFFh (65536 blocks): as a read it is over MDTS first.
    let (cqe, _) = q.command(rw_sqe(opc::READ, 1, BLOCKS - 1, 0xFFFF), &[], 0, true);
    assert_status(&cqe, NvmeStatus::INVALID_FIELD, "read of NLB FFFFh (256 MiB, over MDTS)");
    // Write Zeroes moves no data, so NLB FFFFh reaches the range check.
    let (cqe, _) = q.command(rw_sqe(0x08, 1, BLOCKS - 1, 0xFFFF), &[], 0, true);
    assert_status(&cqe, NvmeStatus::LBA_OUT_OF_RANGE, "Write Zeroes of NLB FFFFh past the end");
    // A write over MDTS announced with a transport SGL (data would follow by R2T).
    let mut sqe = rw_sqe(opc::WRITE, 1, 0, 32);
    sqe.set_cid(44);
    sqe.set_psdt(1);
    sqe.set_sgl(tandem_nvmf::spec::SglDescriptor::new(0, 33 * BS as u32, 0x5A));
    let (cqe, _) = q.command_as_is(sqe, &[]);
    assert_status(&cqe, NvmeStatus::INVALID_FIELD, "write over MDTS");
    // The queue still works.
    let (cqe, _) = q.command(rw_sqe(opc::READ, 1, BLOCKS - 1, 0), &[], BS, true);
    assert_status(&cqe, NvmeStatus::SUCCESS, "read of the last block");
}

/// A write of `blocks` blocks by R2T on a fresh I/O queue; returns the admin
/// queue (kept open so the association lives), the I/O queue, the write's
/// CID and the R2T's transfer tag.
fn write_awaiting_h2cdata(addr: SocketAddr, blocks: u16) -> (RawConn, RawConn, u16, u16) {
    let (a, cntlid) = admin_queue(addr, TEST_SUBNQN, (false, false), 0);
    let mut q = io_queue(addr, TEST_SUBNQN, cntlid, 1, (false, false));
    let cid = q.cid();
    let mut sqe = rw_sqe(opc::WRITE, 1, 40, blocks - 1);
    sqe.set_cid(cid);
    sqe.set_psdt(1);
    sqe.set_sgl(SglDescriptor::new(0, u32::from(blocks) * BS as u32, SGL_ID_TRANSPORT_DATA_BLOCK));
    q.send(&PduHeader::CapsuleCmd { sqe }, &[]);
    let ttag = match q.recv(raw::WAIT) {
        Incoming::Pdu { header: PduHeader::R2T(r), .. } => r.ttag,
        other => panic!("expected an R2T, got {other:?}"),
    };
    (a, q, cid, ttag)
}

/// Only the 24-byte header of an H2CData PDU: the target judges the header
/// before any data, so none is sent (no unread data, no reset).
fn send_h2cdata_header(q: &mut RawConn, h: H2CData) {
    let b = pdu_bytes(&q.framing, &PduHeader::H2CData(h), &vec![0u8; h.datal as usize]);
    q.send_raw(&b[..24]);
}

fn h2cdata_out_of_order(addr: SocketAddr) {
    let (_a, mut q, cid, ttag) = write_awaiting_h2cdata(addr, 4);
    let h = H2CData { cccid: cid, ttag, datao: BS as u32, datal: BS as u32, last: false };
    send_h2cdata_header(&mut q, h);
    assert_eq!(q.expect_term_req(fes::DATA_OUT_OF_RANGE), 0, "FEI reserved for FES 04h");
}

fn h2cdata_beyond_the_transfer(addr: SocketAddr) {
    let (_a, mut q, cid, ttag) = write_awaiting_h2cdata(addr, 1);
    let h = H2CData { cccid: cid, ttag, datao: 0, datal: 2 * BS as u32, last: true };
    send_h2cdata_header(&mut q, h);
    assert_eq!(q.expect_term_req(fes::DATA_OUT_OF_RANGE), 0, "FEI reserved for FES 04h");
}

fn h2cdata_wrong_cccid(addr: SocketAddr) {
    let (_a, mut q, cid, ttag) = write_awaiting_h2cdata(addr, 1);
    let h = H2CData { cccid: cid.wrapping_add(1), ttag, datao: 0, datal: BS as u32, last: true };
    send_h2cdata_header(&mut q, h);
    assert_eq!(q.expect_term_req(fes::INVALID_HEADER_FIELD), 8, "FEI names CCCID");
}

fn h2cdata_over_maxh2cdata(addr: SocketAddr) {
    let mut c = RawConn::open(addr);
    let resp = c.icreq(false, false);
    let h = H2CData { cccid: 1, ttag: 0, datao: 0, datal: resp.maxh2cdata + 4, last: true };
    send_h2cdata_header(&mut c, h);
    assert_eq!(c.expect_term_req(fes::LIMIT_EXCEEDED), 0, "FEI reserved for FES 05h");
}

fn h2cdata_unknown_tag(addr: SocketAddr) {
    let (_a, cntlid) = admin_queue(addr, TEST_SUBNQN, (false, false), 0);
    let mut q = io_queue(addr, TEST_SUBNQN, cntlid, 1, (false, false));
    let h = H2CData { cccid: 5, ttag: 77, datao: 0, datal: BS as u32, last: true };
    q.send(&PduHeader::H2CData(h), &vec![0u8; BS]);
    assert_eq!(q.expect_term_req(fes::INVALID_HEADER_FIELD), 10, "FEI names TTAG");
}

#[test]
fn malformed_input_gets_exact_answers_and_harms_no_one_else() {
    let port = PortSpec::fresh(1);
    let (_dir, mut node) = start_test_node("malformed", &[port], &[], false);
    let mut opts = ConnectOptions::new(&port.addr.to_string(), TEST_SUBNQN);
    opts.queue_depth = 8;
    let mut healthy = HostController::connect(&opts).expect("healthy host connects");
    let mut q = healthy.take_io_queues().pop().expect("one I/O queue");
    let cases = [
        Case { name: "unknown PDU type", run: unknown_pdu_type },
        Case { name: "HLEN inconsistent", run: hlen_inconsistent },
        Case { name: "PDO inconsistent", run: pdo_inconsistent },
        Case { name: "PLEN shorter than the header", run: plen_shorter_than_header },
        Case { name: "PLEN over the limit", run: plen_over_limit },
        Case { name: "wrong header digest", run: wrong_header_digest },
        Case { name: "wrong data digest", run: wrong_data_digest },
        Case { name: "command before ICReq", run: command_before_icreq },
        Case { name: "command before Connect", run: command_before_connect },
        Case { name: "I/O opcode on the admin queue", run: io_opcode_on_admin_queue },
        Case { name: "unknown opcode", run: unknown_opcode },
        Case { name: "bad nsid, LBA range, NLB overflow, MDTS", run: io_checks },
        Case { name: "H2CData with a tag never issued", run: h2cdata_unknown_tag },
        Case { name: "H2CData out of order", run: h2cdata_out_of_order },
        Case { name: "H2CData beyond the transfer", run: h2cdata_beyond_the_transfer },
        Case { name: "H2CData for another command", run: h2cdata_wrong_cccid },
        Case { name: "H2CData over MAXH2CDATA", run: h2cdata_over_maxh2cdata },
    ];
    let mut round = 0;
    for case in &cases {
        verified_io(&mut q, round);
        round += 1;
        eprintln!("case: {}", case.name);
        if std::panic::catch_unwind(|| (case.run)(port.addr)).is_err() {
            panic!("case {:?} failed (see the message above); node log:\n{}", case.name, node.log());
        }
        verified_io(&mut q, round);
        round += 1;
        assert!(node.is_running(), "tandem serve died on case {:?}; log:\n{}", case.name, node.log());
    }
    healthy.keep_alive().expect("healthy admin queue still answers");
    assert!(node.is_running(), "tandem serve is alive at the end");
}
