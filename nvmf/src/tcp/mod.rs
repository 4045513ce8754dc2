//! The NVMe/TCP PDU codec (NVMe/TCP Transport Specification 1.0).
//!
//! `pdu` defines the typed headers, their encoding and their validation;
//! `recv` is the receive state machine that reads PDUs from a nonblocking
//! stream and hands data straight to the caller's buffers; `send` writes one
//! PDU at a time with `writev`, resuming after partial writes. The codec is
//! used by both ends: the target transport (target/) and the host library
//! (`crate::host`). It holds no policy: what to do with a PDU (and whether to
//! answer an error with a TermReq) is the caller's choice, guided by the FES
//! and FEI that every fatal [`TcpError`] carries.
//!
//! A connection's life: both sides start with [`ReceiveLimits::new`] and
//! [`Framing::default`] (no digests); the host sends ICReq, the target answers
//! ICResp; then both call `set_limits` / `set_framing` with the negotiated
//! digests and alignments and `ic_done = true`.

pub mod pdu;
pub mod recv;
pub mod send;

pub use pdu::{
    fes, flags, pdu_type, C2HData, Framing, H2CData, IcReq, IcResp, PduHeader, ReceiveLimits, Role, TcpError,
    TermReq, R2T,
};
pub use recv::{PduReceiver, RecvEvent, RecvState};
pub use send::PduSender;

#[cfg(test)]
mod tests {
    use super::pdu::*;
    use super::*;
    use crate::spec::{Cqe, NvmeStatus, Sqe};
    use std::io::{self, Read, Write};

    /// A reader over a byte vector that hands out at most `chunk` bytes per
    /// call and reports WouldBlock on every other call, like a slow socket.
    struct Trickle {
        bytes: Vec<u8>,
        pos: usize,
        chunk: usize,
        block_next: bool,
    }

    impl Trickle {
        fn new(bytes: Vec<u8>, chunk: usize) -> Self {
            Trickle { bytes, pos: 0, chunk, block_next: true }
        }
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.block_next = !self.block_next;
            if self.block_next {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            if self.pos == self.bytes.len() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.chunk).min(self.bytes.len() - self.pos);
            buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    /// A writer that takes at most 3 bytes per call and blocks every other call.
    struct SlowWriter {
        out: Vec<u8>,
        block_next: bool,
    }

    impl Write for SlowWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.block_next = !self.block_next;
            if self.block_next {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(3);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn encode_pdu(framing: Framing, header: &PduHeader, data: &[u8]) -> Vec<u8> {
        let mut tx = PduSender::new(framing);
        tx.start(header, data).expect("start");
        let mut out = Vec::new();
        assert!(tx.flush(&mut out, data).expect("flush"));
        out
    }

    fn limits_for(role: Role, framing: &Framing, ic_done: bool) -> ReceiveLimits {
        ReceiveLimits {
            header_digest: framing.header_digest,
            data_digest: framing.data_digest,
            data_alignment: framing.data_alignment,
            ic_done,
            ..ReceiveLimits::new(role, 1 << 20)
        }
    }

    /// Drives a receiver over `r` until one whole PDU is decoded, returning
    /// its header and data.
    fn receive_one<R: Read>(rx: &mut PduReceiver, r: &mut R) -> Result<(PduHeader, Vec<u8>), TcpError> {
        let mut guard = 0;
        loop {
            guard += 1;
            assert!(guard < 100_000, "receiver made no progress");
            if let Some(RecvEvent::Header { header, data_len }) = rx.poll(r)? {
                let mut data = vec![0u8; data_len];
                if data_len == 0 {
                    return Ok((header, data));
                }
                let mut filled = 0;
                while filled < data_len {
                    guard += 1;
                    assert!(guard < 100_000, "receiver made no progress");
                    // Odd chunk sizes exercise resumption inside the data.
                    let end = (filled + 7).min(data_len);
                    filled += rx.read_data(r, &mut data[filled..end])?;
                }
                loop {
                    guard += 1;
                    assert!(guard < 100_000, "receiver made no progress");
                    match rx.poll(r)? {
                        Some(RecvEvent::DataDone) => return Ok((header, data)),
                        Some(other) => panic!("unexpected {other:?}"),
                        None => {}
                    }
                }
            }
        }
    }

    fn sample_sqe() -> Sqe {
        let mut s = Sqe::default();
        s.set_opcode(0x01);
        s.set_cid(77);
        s.set_nsid(1);
        s.set_slba(1234);
        s
    }

    /// Every PDU type, with the side that receives it and its data.
    fn all_pdus() -> Vec<(Role, PduHeader, Vec<u8>)> {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        vec![
            (
                Role::Target,
                PduHeader::IcReq(IcReq {
                    pfv: 0,
                    hpda: 2,
                    header_digest: true,
                    data_digest: false,
                    maxr2t: 3,
                }),
                vec![],
            ),
            (
                Role::Host,
                PduHeader::IcResp(IcResp {
                    pfv: 0,
                    cpda: 1,
                    header_digest: true,
                    data_digest: true,
                    maxh2cdata: 131072,
                }),
                vec![],
            ),
            (Role::Target, PduHeader::H2CTermReq(TermReq { fes: 1, fei: 3 }), data[..72].to_vec()),
            (Role::Host, PduHeader::C2HTermReq(TermReq { fes: 3, fei: 0 }), data[..128].to_vec()),
            (Role::Target, PduHeader::CapsuleCmd { sqe: sample_sqe() }, data.clone()),
            (Role::Target, PduHeader::CapsuleCmd { sqe: sample_sqe() }, vec![]),
            (
                Role::Host,
                PduHeader::CapsuleResp { cqe: Cqe::new(77, NvmeStatus::LBA_OUT_OF_RANGE, 9) },
                vec![],
            ),
            (
                Role::Target,
                PduHeader::H2CData(H2CData { cccid: 5, ttag: 6, datao: 4096, datal: 300, last: true }),
                data.clone(),
            ),
            (
                Role::Host,
                PduHeader::C2HData(C2HData { cccid: 5, datao: 512, datal: 300, last: true, success: true }),
                data.clone(),
            ),
            (
                Role::Host,
                PduHeader::C2HData(C2HData { cccid: 5, datao: 0, datal: 300, last: false, success: false }),
                data.clone(),
            ),
            (Role::Host, PduHeader::R2T(R2T { cccid: 9, ttag: 1, r2to: 8192, r2tl: 65536 }), vec![]),
        ]
    }

    fn framings() -> Vec<Framing> {
        vec![
            Framing::default(),
            Framing { header_digest: true, data_digest: true, data_alignment: 4 },
            Framing { header_digest: true, data_digest: false, data_alignment: 32 },
            Framing { header_digest: false, data_digest: true, data_alignment: 128 },
        ]
    }

    #[test]
    fn every_pdu_round_trips_with_every_framing() {
        for framing in framings() {
            for (role, header, data) in all_pdus() {
                let is_ic = matches!(header, PduHeader::IcReq(_) | PduHeader::IcResp(_));
                let bytes = encode_pdu(framing, &header, &data);
                let mut rx = PduReceiver::new(limits_for(role, &framing, !is_ic));
                let mut r = io::Cursor::new(bytes.clone());
                let (got, got_data) = receive_one(&mut rx, &mut r).expect("decode");
                assert_eq!(got, header, "{framing:?}");
                assert_eq!(got_data, data, "{framing:?} {header:?}");
                assert_eq!(r.position() as usize, bytes.len(), "whole PDU consumed");

                // The same bytes one at a time, blocking in between.
                let mut rx = PduReceiver::new(limits_for(role, &framing, !is_ic));
                let mut r = Trickle::new(bytes, 1);
                let (got, got_data) = receive_one(&mut rx, &mut r).expect("decode byte by byte");
                assert_eq!((got, got_data), (header, data));
                assert_eq!(rx.state(), RecvState::CommonHeader);
            }
        }
    }

    #[test]
    fn padding_lies_between_header_and_data() {
        let framing = Framing { header_digest: true, data_digest: true, data_alignment: 64 };
        let h = PduHeader::C2HData(C2HData { cccid: 1, datao: 0, datal: 3, last: true, success: false });
        let bytes = encode_pdu(framing, &h, &[1, 2, 3]);
        assert_eq!(bytes[3], 64);
        assert_eq!(&bytes[64..67], &[1, 2, 3]);
        assert_eq!(bytes.len(), 64 + 3 + 4);
        assert_eq!(
            u32::from_le_bytes([bytes[67], bytes[68], bytes[69], bytes[70]]),
            crc32c::crc32c(&[1, 2, 3])
        );
    }

    #[test]
    fn partial_writes_resume_and_produce_the_same_bytes() {
        let framing = Framing { header_digest: true, data_digest: true, data_alignment: 8 };
        for (_, header, data) in all_pdus() {
            let whole = encode_pdu(framing, &header, &data);
            let mut tx = PduSender::new(framing);
            tx.start(&header, &data).unwrap();
            let mut w = SlowWriter { out: Vec::new(), block_next: false };
            let mut calls = 0;
            while !tx.flush(&mut w, &data).unwrap() {
                calls += 1;
                assert!(calls < 10_000);
                assert!(!tx.is_idle());
            }
            assert!(tx.is_idle());
            assert_eq!(w.out, whole);
        }
    }

    #[test]
    fn sender_refuses_a_second_pdu_and_a_different_slice() {
        let mut tx = PduSender::new(Framing::default());
        let h = PduHeader::CapsuleCmd { sqe: sample_sqe() };
        tx.start(&h, &[1, 2, 3]).unwrap();
        assert!(matches!(tx.start(&h, &[]), Err(TcpError::Misuse(_))));
        let mut out = Vec::new();
        assert!(matches!(tx.flush(&mut out, &[1, 2]), Err(TcpError::Misuse(_))));
        assert!(tx.flush(&mut out, &[1, 2, 3]).unwrap());
    }

    #[test]
    fn data_digest_error_is_reported_and_the_stream_continues() {
        let framing = Framing { header_digest: false, data_digest: true, data_alignment: 4 };
        let h = PduHeader::C2HData(C2HData { cccid: 1, datao: 0, datal: 4, last: true, success: false });
        let mut bytes = encode_pdu(framing, &h, &[9, 9, 9, 9]);
        let n = bytes.len();
        bytes[n - 5] ^= 0xff; // last data byte
        let resp = PduHeader::CapsuleResp { cqe: Cqe::new(1, NvmeStatus::SUCCESS, 0) };
        bytes.extend(encode_pdu(framing, &resp, &[]));
        let mut rx = PduReceiver::new(limits_for(Role::Host, &framing, true));
        let mut r = io::Cursor::new(bytes);
        assert!(matches!(receive_one(&mut rx, &mut r), Err(TcpError::DataDigest { .. })));
        let (next, _) = receive_one(&mut rx, &mut r).expect("next PDU after a data digest error");
        assert_eq!(next, resp);
    }

    #[test]
    fn header_digest_error_is_fatal_with_fes_3() {
        let framing = Framing { header_digest: true, data_digest: false, data_alignment: 4 };
        let h = PduHeader::R2T(R2T { cccid: 1, ttag: 2, r2to: 0, r2tl: 10 });
        let mut bytes = encode_pdu(framing, &h, &[]);
        bytes[12] ^= 1;
        let received = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
        let mut rx = PduReceiver::new(limits_for(Role::Host, &framing, true));
        let err = receive_one(&mut rx, &mut io::Cursor::new(bytes)).unwrap_err();
        // FEI of a Header Digest Error: the HDGST as received.
        assert_eq!(err.term_req(), Some(TermReq { fes: fes::HEADER_DIGEST_ERROR, fei: received }));
        assert_eq!(rx.state(), RecvState::Failed);
        assert_eq!(rx.raw_header().len(), 28, "the offending header is kept for the TermReq");
    }

    #[test]
    fn receiver_rejects_pdus_for_the_other_side_and_reports_eof() {
        let framing = Framing::default();
        let bytes = encode_pdu(framing, &PduHeader::CapsuleCmd { sqe: sample_sqe() }, &[]);
        let mut rx = PduReceiver::new(limits_for(Role::Host, &framing, true));
        let err = receive_one(&mut rx, &mut io::Cursor::new(bytes.clone())).unwrap_err();
        assert_eq!(err.term_req(), Some(TermReq { fes: 1, fei: 0 }));
        let mut rx = PduReceiver::new(limits_for(Role::Target, &framing, true));
        let err = receive_one(&mut rx, &mut io::Cursor::new(bytes[..40].to_vec())).unwrap_err();
        assert!(matches!(err, TcpError::Closed { mid_pdu: true }));
        let mut rx = PduReceiver::new(limits_for(Role::Target, &framing, true));
        let err = receive_one(&mut rx, &mut io::Cursor::new(Vec::new())).unwrap_err();
        assert!(matches!(err, TcpError::Closed { mid_pdu: false }));
    }

    #[test]
    fn skip_data_discards_and_checks_the_digest() {
        let framing = Framing { header_digest: true, data_digest: true, data_alignment: 16 };
        let h = PduHeader::H2CData(H2CData { cccid: 3, ttag: 1, datao: 0, datal: 1000, last: true });
        let mut bytes = encode_pdu(framing, &h, &[5u8; 1000]);
        let resp = PduHeader::CapsuleCmd { sqe: sample_sqe() };
        bytes.extend(encode_pdu(framing, &resp, &[]));
        let mut rx = PduReceiver::new(limits_for(Role::Target, &framing, true));
        let mut r = Trickle::new(bytes, 13);
        let mut events = Vec::new();
        for _ in 0..10_000 {
            match rx.state() {
                RecvState::Padding | RecvState::Data => {
                    rx.skip_data(&mut r).unwrap();
                }
                _ => {
                    if let Some(e) = rx.poll(&mut r).unwrap() {
                        events.push(e);
                    }
                }
            }
            if events.len() == 3 {
                break;
            }
        }
        assert_eq!(
            events,
            vec![
                RecvEvent::Header { header: h, data_len: 1000 },
                RecvEvent::DataDone,
                RecvEvent::Header { header: resp, data_len: 0 }
            ]
        );
    }

    #[test]
    fn poll_while_data_pending_is_misuse_not_panic() {
        let framing = Framing::default();
        let h = PduHeader::CapsuleCmd { sqe: sample_sqe() };
        let bytes = encode_pdu(framing, &h, &[1; 10]);
        let mut rx = PduReceiver::new(limits_for(Role::Target, &framing, true));
        let mut r = io::Cursor::new(bytes);
        assert!(matches!(rx.poll(&mut r), Ok(Some(RecvEvent::Header { data_len: 10, .. }))));
        assert!(matches!(rx.poll(&mut r), Err(TcpError::Misuse(_))));
    }

    /// Feeds arbitrary bytes to a receiver; it must only ever return events or
    /// errors, never panic or loop.
    fn feed(role: Role, framing: Framing, ic_done: bool, bytes: Vec<u8>, chunk: usize) {
        let mut rx = PduReceiver::new(limits_for(role, &framing, ic_done));
        let mut r = Trickle::new(bytes, chunk.max(1));
        let mut scratch = [0u8; 97];
        for _ in 0..20_000 {
            let step = match rx.state() {
                RecvState::Padding | RecvState::Data => rx.read_data(&mut r, &mut scratch).map(|_| ()),
                _ => rx.poll(&mut r).map(|_| ()),
            };
            match step {
                Ok(()) => {}
                Err(TcpError::DataDigest { .. }) => {}
                Err(_) => return,
            }
            if r.pos == r.bytes.len() && !r.block_next {
                // Everything consumed: one more call must not panic either.
                let _ = rx.poll(&mut r);
                return;
            }
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                        chunk in 1usize..64, host in any::<bool>(), hd in any::<bool>(),
                                        dd in any::<bool>(), ic_done in any::<bool>()) {
                let role = if host { Role::Host } else { Role::Target };
                let framing = Framing { header_digest: hd, data_digest: dd, data_alignment: 4 };
                feed(role, framing, ic_done, bytes, chunk);
            }

            #[test]
            fn mutated_valid_pdus_never_panic(which in 0usize..11, framing_ix in 0usize..4,
                mutations in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
                chunk in 1usize..40) {
                let framing = framings()[framing_ix];
                let pdus = all_pdus();
                let (role, header, data) = &pdus[which % pdus.len()];
                let is_ic = matches!(header, PduHeader::IcReq(_) | PduHeader::IcResp(_));
                let mut bytes = encode_pdu(framing, header, data);
                bytes.extend(encode_pdu(framing, header, data));
                for (pos, val) in mutations {
                    let n = bytes.len();
                    bytes[pos % n] = val;
                }
                feed(*role, framing, !is_ic, bytes, chunk);
            }
        }
    }
}
