//! The PDU receive state machine: turns a byte stream (a nonblocking socket,
//! or any `std::io::Read`) into typed headers, and moves each PDU's data
//! straight into the caller's buffer.
//!
//! States follow the wire order of a PDU: `CommonHeader` -> `Header` ->
//! (`Padding` -> `Data` -> `DataDigest`) -> `CommonHeader`. Headers are
//! buffered in a fixed array inside the receiver; data never is: after a
//! [`RecvEvent::Header`] with a non-zero data length the caller drains the
//! data with [`PduReceiver::read_data`] (into its own buffer, chunk by chunk)
//! or [`PduReceiver::skip_data`], then calls [`PduReceiver::poll`] again,
//! which checks the data digest and yields [`RecvEvent::DataDone`].
//!
//! Invariants: a `WouldBlock` (or short read) leaves the state exactly where
//! the bytes stopped, so the next call resumes; no call allocates; after an
//! error the receiver is `Failed` and refuses further input, because the byte
//! stream can no longer be trusted to be at a PDU boundary.

use std::io::{ErrorKind, Read};

use super::pdu::{
    decode, validate_common, CommonHeader, PduHeader, PduLayout, ReceiveLimits, TcpError, COMMON_HEADER_LEN,
    DIGEST_LEN, HEADER_BUF_LEN,
};

/// Where the receiver is within the current PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvState {
    /// Reading the 8-byte common header.
    CommonHeader,
    /// Reading the rest of the header and its digest.
    Header,
    /// Discarding the padding between the header and PDO.
    Padding,
    /// Data is pending: the caller must read or skip it.
    Data,
    /// Reading (and then checking) the data digest.
    DataDigest,
    /// A fatal error happened; the connection must be terminated.
    Failed,
}

/// What [`PduReceiver::poll`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvEvent {
    /// A complete, validated header. When `data_len > 0` the data follows and
    /// must be consumed with `read_data` / `skip_data` before the next poll.
    Header { header: PduHeader, data_len: usize },
    /// All data of the current PDU was consumed and its digest (if any) is
    /// correct.
    DataDone,
}

/// The receive side of one NVMe/TCP connection.
pub struct PduReceiver {
    limits: ReceiveLimits,
    state: RecvState,
    header: [u8; HEADER_BUF_LEN],
    header_filled: usize,
    layout: PduLayout,
    padding_left: usize,
    data_left: usize,
    data_crc: u32,
    digest: [u8; DIGEST_LEN],
    digest_filled: usize,
}

/// One read from the stream: `Ok(Some(n))` read n > 0 bytes, `Ok(None)` would
/// block, end of stream is `Closed`.
fn read_some<R: Read>(r: &mut R, buf: &mut [u8], mid_pdu: bool) -> Result<Option<usize>, TcpError> {
    loop {
        match r.read(buf) {
            Ok(0) => return Err(TcpError::Closed { mid_pdu }),
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(TcpError::Io(e)),
        }
    }
}

const EMPTY_LAYOUT: PduLayout =
    PduLayout { header_len: 0, header_digest: false, padding_len: 0, data_len: 0, data_digest: false };

impl PduReceiver {
    pub fn new(limits: ReceiveLimits) -> Self {
        PduReceiver {
            limits,
            state: RecvState::CommonHeader,
            header: [0; HEADER_BUF_LEN],
            header_filled: 0,
            layout: EMPTY_LAYOUT,
            padding_left: 0,
            data_left: 0,
            data_crc: 0,
            digest: [0; DIGEST_LEN],
            digest_filled: 0,
        }
    }

    pub fn state(&self) -> RecvState {
        self.state
    }

    pub fn limits(&self) -> &ReceiveLimits {
        &self.limits
    }

    /// Replaces the limits, typically once ICReq/ICResp negotiated digests and
    /// alignment (`ic_done = true`). Only allowed between PDUs.
    pub fn set_limits(&mut self, limits: ReceiveLimits) -> Result<(), TcpError> {
        if self.state != RecvState::CommonHeader || self.header_filled != 0 {
            return Err(TcpError::Misuse("limits changed in the middle of a PDU"));
        }
        self.limits = limits;
        Ok(())
    }

    /// The header bytes of the current (or last) PDU, as received: what a
    /// TermReq copies into its data.
    pub fn raw_header(&self) -> &[u8] {
        &self.header[..self.header_filled]
    }

    /// Data bytes of the current PDU not yet consumed (padding excluded).
    pub fn data_remaining(&self) -> usize {
        match self.state {
            RecvState::Padding | RecvState::Data => self.data_left,
            _ => 0,
        }
    }

    fn fail(&mut self, e: TcpError) -> TcpError {
        self.state = RecvState::Failed;
        e
    }

    /// Makes progress on headers and data digests. Returns `Ok(None)` when the
    /// stream has no more bytes for now.
    pub fn poll<R: Read>(&mut self, r: &mut R) -> Result<Option<RecvEvent>, TcpError> {
        match self.poll_inner(r) {
            // A data digest error leaves the stream at a PDU boundary.
            Err(e @ TcpError::DataDigest { .. }) => Err(e),
            Err(e) => Err(self.fail(e)),
            ok => ok,
        }
    }

    fn poll_inner<R: Read>(&mut self, r: &mut R) -> Result<Option<RecvEvent>, TcpError> {
        loop {
            match self.state {
                RecvState::Failed => return Err(TcpError::Misuse("receiver failed earlier")),
                RecvState::Padding | RecvState::Data => {
                    return Err(TcpError::Misuse("poll while PDU data is pending"))
                }
                RecvState::CommonHeader => {
                    let mid = self.header_filled > 0;
                    let Some(n) = read_some(r, &mut self.header[self.header_filled..COMMON_HEADER_LEN], mid)?
                    else {
                        return Ok(None);
                    };
                    self.header_filled += n;
                    if self.header_filled < COMMON_HEADER_LEN {
                        continue;
                    }
                    let mut ch = [0u8; COMMON_HEADER_LEN];
                    ch.copy_from_slice(&self.header[..COMMON_HEADER_LEN]);
                    self.layout = validate_common(&CommonHeader::parse(&ch), &self.limits)?;
                    self.state = RecvState::Header;
                }
                RecvState::Header => {
                    let need = self.layout.header_len;
                    if self.header_filled < need {
                        let Some(n) = read_some(r, &mut self.header[self.header_filled..need], true)? else {
                            return Ok(None);
                        };
                        self.header_filled += n;
                        if self.header_filled < need {
                            continue;
                        }
                    }
                    let header = decode(&self.header[..need], &self.layout, &self.limits)?;
                    let data_len = self.layout.data_len;
                    if data_len == 0 {
                        self.header_filled = 0;
                        self.state = RecvState::CommonHeader;
                    } else {
                        // Keep `header_filled` so raw_header() still shows
                        // this PDU's header while its data is read.
                        self.padding_left = self.layout.padding_len;
                        self.data_left = data_len;
                        self.data_crc = 0;
                        self.digest_filled = 0;
                        self.state = RecvState::Padding;
                    }
                    return Ok(Some(RecvEvent::Header { header, data_len }));
                }
                RecvState::DataDigest => {
                    if self.layout.data_digest {
                        while self.digest_filled < DIGEST_LEN {
                            let Some(n) = read_some(r, &mut self.digest[self.digest_filled..], true)? else {
                                return Ok(None);
                            };
                            self.digest_filled += n;
                        }
                    }
                    self.header_filled = 0;
                    self.state = RecvState::CommonHeader;
                    if self.layout.data_digest {
                        let received = u32::from_le_bytes(self.digest);
                        if received != self.data_crc {
                            // Not fatal: the stream is still at a PDU
                            // boundary, so the receiver stays usable.
                            return Err(TcpError::DataDigest { received, computed: self.data_crc });
                        }
                    }
                    return Ok(Some(RecvEvent::DataDone));
                }
            }
        }
    }

    /// Discards the padding before the data; returns false if it would block.
    fn consume_padding<R: Read>(&mut self, r: &mut R) -> Result<bool, TcpError> {
        let mut scratch = [0u8; HEADER_BUF_LEN];
        while self.padding_left > 0 {
            let want = self.padding_left.min(scratch.len());
            let Some(n) = read_some(r, &mut scratch[..want], true)? else {
                return Ok(false);
            };
            self.padding_left -= n;
        }
        self.state = RecvState::Data;
        Ok(true)
    }

    /// Reads data of the current PDU into `dest` (at most `dest.len()` and at
    /// most the data remaining). Returns the number of bytes placed; 0 means
    /// the stream would block (or `dest` is empty). When the last data byte
    /// is read the receiver moves on to the data digest: call `poll` next.
    pub fn read_data<R: Read>(&mut self, r: &mut R, dest: &mut [u8]) -> Result<usize, TcpError> {
        let res = self.read_data_inner(r, dest);
        res.map_err(|e| self.fail(e))
    }

    fn read_data_inner<R: Read>(&mut self, r: &mut R, dest: &mut [u8]) -> Result<usize, TcpError> {
        match self.state {
            RecvState::Padding => {
                if !self.consume_padding(r)? {
                    return Ok(0);
                }
            }
            RecvState::Data => {}
            _ => return Err(TcpError::Misuse("read_data without pending data")),
        }
        let want = dest.len().min(self.data_left);
        if want == 0 {
            return Ok(0);
        }
        let mut done = 0;
        while done < want {
            let Some(n) = read_some(r, &mut dest[done..want], true)? else {
                break;
            };
            if self.layout.data_digest {
                self.data_crc = crc32c::crc32c_append(self.data_crc, &dest[done..done + n]);
            }
            done += n;
        }
        self.data_left -= done;
        if self.data_left == 0 {
            self.state = RecvState::DataDigest;
        }
        Ok(done)
    }

    /// Reads and discards the data of the current PDU (still checking its
    /// digest). Returns true when all of it is consumed.
    pub fn skip_data<R: Read>(&mut self, r: &mut R) -> Result<bool, TcpError> {
        let mut scratch = [0u8; 512];
        while self.data_remaining() > 0 {
            if self.read_data(r, &mut scratch)? == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
