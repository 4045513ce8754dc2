//! The send queue of one NVMe/TCP connection.
//!
//! Responses, R2Ts and read data are queued as PDUs and written with as few
//! `writev` calls as the socket allows: many small CapsuleResps share one
//! syscall at queue depth. A PDU's data is not copied: it names the request
//! whose buffer holds it, and the buffer is resolved at write time. When the
//! last byte of a PDU marked `completes` is written, its request is handed
//! back to the caller to be freed (its buffer returns to the pool).
//!
//! Invariant: `front_sent` is less than the total length of the front entry;
//! entries are written strictly in order.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use tandem_nvmf::tcp::pdu::{DIGEST_LEN, HEADER_BUF_LEN};
use tandem_nvmf::tcp::{Framing, PduHeader, TcpError};

/// Where a PDU's data is.
#[derive(Debug)]
pub enum OutData {
    None,
    /// `len` bytes at `offset` in the buffer of request `req`.
    Request {
        req: u16,
        offset: usize,
        len: usize,
    },
    /// Bytes owned by the PDU (admin responses, TermReq data): control path only.
    Owned(Vec<u8>),
}

pub struct OutPdu {
    prefix: [u8; HEADER_BUF_LEN],
    prefix_len: usize,
    data: OutData,
    digest: [u8; DIGEST_LEN],
    digest_len: usize,
    /// The request to free once this PDU is completely written.
    completes: Option<u16>,
}

impl OutPdu {
    fn data_len(&self) -> usize {
        match &self.data {
            OutData::None => 0,
            OutData::Request { len, .. } => *len,
            OutData::Owned(v) => v.len(),
        }
    }

    fn total_len(&self) -> usize {
        self.prefix_len + self.data_len() + self.digest_len
    }
}

/// Resolves a request's buffer when its data is written.
pub trait RequestData {
    fn request_bytes(&self, req: u16) -> &[u8];
}

pub struct SendQueue {
    entries: VecDeque<OutPdu>,
    front_sent: usize,
    /// How many `writev` calls were made, and how many PDUs they carried.
    pub writev_calls: u64,
    pub pdus_sent: u64,
}

/// The most iovecs one `writev` takes from the queue.
const IOVECS_PER_WRITE_MAX: usize = 64;

impl SendQueue {
    pub fn with_capacity(pdus_max: usize) -> SendQueue {
        SendQueue { entries: VecDeque::with_capacity(pdus_max), front_sent: 0, writev_calls: 0, pdus_sent: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues a PDU. `data_bytes` must be the bytes `data` names (used for the
    /// data digest now; they must not change until the PDU is written).
    pub fn push(
        &mut self,
        framing: &Framing,
        header: &PduHeader,
        data: OutData,
        data_bytes: &[u8],
        completes: Option<u16>,
    ) -> Result<(), TcpError> {
        let mut prefix = [0u8; HEADER_BUF_LEN];
        let layout = header.encode(framing, data_bytes.len(), &mut prefix)?;
        let (digest, digest_len) = if layout.data_digest && !data_bytes.is_empty() {
            (crc32c::crc32c(data_bytes).to_le_bytes(), DIGEST_LEN)
        } else {
            ([0; DIGEST_LEN], 0)
        };
        self.entries.push_back(OutPdu {
            prefix,
            prefix_len: layout.prefix_len,
            data,
            digest,
            digest_len,
            completes,
        });
        Ok(())
    }

    /// Queues a PDU whose data it owns (admin responses, TermReq data: the
    /// control path).
    pub fn push_owned(
        &mut self,
        framing: &Framing,
        header: &PduHeader,
        data: Vec<u8>,
        completes: Option<u16>,
    ) -> Result<(), TcpError> {
        self.push(framing, header, OutData::None, &data, completes)?;
        if let Some(last) = self.entries.back_mut() {
            last.data = OutData::Owned(data);
        }
        Ok(())
    }

    /// Writes as much as the socket takes. Requests whose last PDU went out
    /// are appended to `completed`. Returns Ok(true) when the queue is empty.
    pub fn flush<W: Write, D: RequestData>(
        &mut self,
        w: &mut W,
        reqs: &D,
        completed: &mut Vec<u16>,
    ) -> io::Result<bool> {
        while !self.entries.is_empty() {
            let mut slices: [IoSlice<'_>; IOVECS_PER_WRITE_MAX] = [IoSlice::new(&[]); IOVECS_PER_WRITE_MAX];
            let mut n = 0;
            let mut skip = self.front_sent;
            'fill: for e in self.entries.iter() {
                let parts: [&[u8]; 3] = [
                    &e.prefix[..e.prefix_len],
                    match &e.data {
                        OutData::None => &[],
                        OutData::Request { req, offset, len } => {
                            &reqs.request_bytes(*req)[*offset..*offset + *len]
                        }
                        OutData::Owned(v) => v,
                    },
                    &e.digest[..e.digest_len],
                ];
                for p in parts {
                    if p.is_empty() {
                        continue;
                    }
                    if skip >= p.len() {
                        skip -= p.len();
                        continue;
                    }
                    if n == IOVECS_PER_WRITE_MAX {
                        break 'fill;
                    }
                    slices[n] = IoSlice::new(&p[skip..]);
                    skip = 0;
                    n += 1;
                }
            }
            let written = match w.write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.writev_calls += 1;
            let mut left = written + self.front_sent;
            self.front_sent = 0;
            while let Some(front) = self.entries.front() {
                let total = front.total_len();
                if left >= total {
                    left -= total;
                    if let Some(req) = front.completes {
                        completed.push(req);
                    }
                    self.entries.pop_front();
                    self.pdus_sent += 1;
                } else {
                    self.front_sent = left;
                    break;
                }
            }
        }
        Ok(true)
    }

    /// Drops everything queued (the connection is closing); returns the
    /// requests that were waiting on a PDU.
    pub fn clear(&mut self, completed: &mut Vec<u16>) {
        for e in self.entries.drain(..) {
            if let Some(r) = e.completes {
                completed.push(r);
            }
        }
        self.front_sent = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_nvmf::spec::{Cqe, NvmeStatus};
    use tandem_nvmf::tcp::C2HData;

    struct Bufs(Vec<Vec<u8>>);
    impl RequestData for Bufs {
        fn request_bytes(&self, req: u16) -> &[u8] {
            &self.0[req as usize]
        }
    }

    /// Takes at most `chunk` bytes per call.
    struct Slow {
        out: Vec<u8>,
        chunk: usize,
        calls: usize,
    }
    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.chunk - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.chunk {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn expected(framing: &Framing, pdus: &[(PduHeader, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (h, d) in pdus {
            let mut tx = tandem_nvmf::tcp::PduSender::new(*framing);
            tx.start(h, d).unwrap();
            assert!(tx.flush(&mut out, d).unwrap());
        }
        out
    }

    #[test]
    fn batches_resume_after_partial_writes_and_report_completed_requests() {
        let framing = Framing { header_digest: true, data_digest: true, data_alignment: 4 };
        let bufs = Bufs(vec![(0..100u8).collect(), (100..200u8).collect()]);
        let mut q = SendQueue::with_capacity(8);
        let c2h = PduHeader::C2HData(C2HData { cccid: 1, datao: 0, datal: 50, last: true, success: false });
        let resp0 = PduHeader::CapsuleResp { cqe: Cqe::new(1, NvmeStatus::SUCCESS, 0) };
        let resp1 = PduHeader::CapsuleResp { cqe: Cqe::new(2, NvmeStatus::LBA_OUT_OF_RANGE, 0) };
        q.push(&framing, &c2h, OutData::Request { req: 0, offset: 10, len: 50 }, &bufs.0[0][10..60], None)
            .unwrap();
        q.push(&framing, &resp0, OutData::None, &[], Some(0)).unwrap();
        q.push(&framing, &resp1, OutData::None, &[], Some(1)).unwrap();
        let mut w = Slow { out: Vec::new(), chunk: 7, calls: 0 };
        let mut done = Vec::new();
        let mut rounds = 0;
        while !q.flush(&mut w, &bufs, &mut done).unwrap() {
            rounds += 1;
            assert!(rounds < 1000);
        }
        let want = expected(&framing, &[(c2h, bufs.0[0][10..60].to_vec()), (resp0, vec![]), (resp1, vec![])]);
        assert_eq!(w.out, want);
        assert_eq!(done, vec![0, 1]);
        assert!(q.is_empty());
    }

    #[test]
    fn one_writev_carries_many_responses() {
        let framing = Framing::default();
        let bufs = Bufs(vec![]);
        let mut q = SendQueue::with_capacity(64);
        for cid in 0..32u16 {
            let h = PduHeader::CapsuleResp { cqe: Cqe::new(cid, NvmeStatus::SUCCESS, 0) };
            q.push(&framing, &h, OutData::None, &[], Some(cid)).unwrap();
        }
        let mut out = Vec::new();
        let mut done = Vec::new();
        assert!(q.flush(&mut out, &bufs, &mut done).unwrap());
        assert_eq!(q.writev_calls, 1);
        assert_eq!(done.len(), 32);
        assert_eq!(out.len(), 32 * 24);
    }
}
