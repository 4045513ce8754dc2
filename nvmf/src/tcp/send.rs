//! The PDU send helper: one PDU at a time, header built into a fixed buffer,
//! header + data + data digest written with one `writev` (`write_vectored`),
//! resuming exactly after partial writes on a nonblocking socket.
//!
//! The sender does not own the data: the caller keeps the data slice alive
//! and passes the same slice to every [`PduSender::flush`] until it returns
//! true, so data goes from the caller's buffer to the socket without a copy.
//! Invariant: `sent <= prefix_len + data_len + digest_len`, and a new PDU can
//! only be started once the previous one is completely written.

use std::io::{ErrorKind, IoSlice, Write};

use super::pdu::{Framing, PduHeader, TcpError, DIGEST_LEN, HEADER_BUF_LEN};

/// The send side of one NVMe/TCP connection.
pub struct PduSender {
    framing: Framing,
    header: [u8; HEADER_BUF_LEN],
    prefix_len: usize,
    data_len: usize,
    digest: [u8; DIGEST_LEN],
    digest_len: usize,
    sent: usize,
    busy: bool,
}

impl PduSender {
    pub fn new(framing: Framing) -> Self {
        PduSender {
            framing,
            header: [0; HEADER_BUF_LEN],
            prefix_len: 0,
            data_len: 0,
            digest: [0; DIGEST_LEN],
            digest_len: 0,
            sent: 0,
            busy: false,
        }
    }

    pub fn framing(&self) -> &Framing {
        &self.framing
    }

    /// Changes digests/alignment (after ICReq/ICResp); only between PDUs.
    pub fn set_framing(&mut self, framing: Framing) -> Result<(), TcpError> {
        if self.busy {
            return Err(TcpError::Misuse("framing changed in the middle of a PDU"));
        }
        self.framing = framing;
        Ok(())
    }

    /// True when no PDU is partly written.
    pub fn is_idle(&self) -> bool {
        !self.busy
    }

    /// Starts a PDU with `data` as its data (empty for none). Computes the
    /// header digest and data digest now; nothing is written until `flush`.
    pub fn start(&mut self, header: &PduHeader, data: &[u8]) -> Result<(), TcpError> {
        if self.busy {
            return Err(TcpError::Misuse("a PDU is still being sent"));
        }
        let layout = header.encode(&self.framing, data.len(), &mut self.header)?;
        self.prefix_len = layout.prefix_len;
        self.data_len = data.len();
        self.digest_len = 0;
        if layout.data_digest {
            self.digest = crc32c::crc32c(data).to_le_bytes();
            self.digest_len = DIGEST_LEN;
        }
        self.sent = 0;
        self.busy = true;
        Ok(())
    }

    /// Writes as much of the current PDU as the socket takes. `data` must be
    /// the slice given to `start`. Returns true when the PDU is completely
    /// written, false when the socket would block (call again later).
    pub fn flush<W: Write>(&mut self, w: &mut W, data: &[u8]) -> Result<bool, TcpError> {
        if !self.busy {
            return Ok(true);
        }
        if data.len() != self.data_len {
            return Err(TcpError::Misuse("flush with a different data slice than start"));
        }
        let total = self.prefix_len + self.data_len + self.digest_len;
        while self.sent < total {
            let s = self.sent;
            let p = self.prefix_len;
            let d = p + self.data_len;
            let slices = [
                IoSlice::new(&self.header[s.min(p)..p]),
                IoSlice::new(&data[s.clamp(p, d) - p..]),
                IoSlice::new(&self.digest[s.max(d) - d..self.digest_len]),
            ];
            match w.write_vectored(&slices) {
                Ok(0) => return Err(TcpError::Closed { mid_pdu: true }),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(TcpError::Io(e)),
            }
        }
        self.busy = false;
        Ok(true)
    }
}
