//! One NVMe/TCP connection of the host: the TCP stream (nonblocking), the
//! PDU receiver and sender, and the ICReq/ICResp exchange that starts it.
//!
//! Every queue (admin or I/O) owns one `Connection`. Waiting is done by
//! briefly switching the socket to blocking mode with a read timeout and
//! peeking one byte, so that no `unsafe` poll(2) is needed in this crate.

use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use super::HostError;
use crate::tcp::{
    Framing, IcReq, IcResp, PduHeader, PduReceiver, PduSender, ReceiveLimits, RecvEvent, Role, TcpError,
    TermReq,
};

/// The largest PDU the host accepts: C2HData up to this size (the target
/// splits reads into PDUs of its choosing; Linux and SPDK send at most
/// 128 KiB-ish), plus header, padding and digests.
pub const HOST_PDU_LEN_MAX: u32 = 8 << 20;

/// What ICResp granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub header_digest: bool,
    pub data_digest: bool,
    pub maxh2cdata: u32,
    /// Alignment of H2C data we send: (CPDA + 1) * 4 bytes.
    pub cpda_bytes: usize,
}

pub struct Connection {
    pub stream: TcpStream,
    pub rx: PduReceiver,
    pub tx: PduSender,
    pub negotiated: Negotiated,
}

/// Waits until `stream` has something to read (or the peer closed), at most
/// `timeout`.
pub fn wait_readable(stream: &TcpStream, timeout: Duration) -> Result<(), HostError> {
    let timeout = timeout.max(Duration::from_micros(100));
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut one = [0u8; 1];
    let r = stream.peek(&mut one);
    stream.set_nonblocking(true)?;
    match r {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) =>
        {
            Ok(())
        }
        Err(e) => Err(HostError::Io(e)),
    }
}

impl Connection {
    /// Opens a TCP connection and performs ICReq/ICResp.
    pub fn open(
        addr: &str,
        header_digest: bool,
        data_digest: bool,
        timeout: Duration,
    ) -> Result<Self, HostError> {
        let deadline = Instant::now() + timeout;
        let sockaddr = addr
            .to_socket_addrs()?
            .next()
            .ok_or(HostError::Protocol { reason: "address resolves to nothing" })?;
        let stream = TcpStream::connect_timeout(&sockaddr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        let mut conn = Connection {
            stream,
            rx: PduReceiver::new(ReceiveLimits::new(Role::Host, HOST_PDU_LEN_MAX)),
            tx: PduSender::new(Framing::default()),
            negotiated: Negotiated {
                header_digest: false,
                data_digest: false,
                maxh2cdata: 4096,
                cpda_bytes: 4,
            },
        };
        let icreq = IcReq { pfv: 0, hpda: 0, header_digest, data_digest, maxr2t: 0 };
        conn.send_blocking(&PduHeader::IcReq(icreq), &[], deadline)?;
        let resp = loop {
            match conn.rx.poll(&mut conn.stream) {
                Ok(Some(RecvEvent::Header { header: PduHeader::IcResp(r), .. })) => break r,
                Ok(Some(RecvEvent::Header { header: PduHeader::C2HTermReq(t), .. })) => {
                    return Err(HostError::TermReq { fes: t.fes, fei: t.fei })
                }
                Ok(Some(_)) => return Err(HostError::Protocol { reason: "expected ICResp" }),
                Ok(None) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(HostError::Timeout {
                            what: "ICResp",
                            waited_ms: timeout.as_millis() as u64,
                        });
                    }
                    wait_readable(&conn.stream, deadline - now)?;
                }
                Err(e) => return Err(conn.fail(e)),
            }
        };
        conn.apply_icresp(&resp, header_digest, data_digest)?;
        Ok(conn)
    }

    fn apply_icresp(&mut self, resp: &IcResp, want_hd: bool, want_dd: bool) -> Result<(), HostError> {
        // The controller may only turn off digests we asked for, never turn on
        // ones we did not (ICResp DGST reports what is enabled, a subset of
        // what ICReq asked for).
        if (resp.header_digest && !want_hd) || (resp.data_digest && !want_dd) {
            return Err(HostError::Protocol { reason: "ICResp enabled a digest the host did not request" });
        }
        self.negotiated = Negotiated {
            header_digest: resp.header_digest,
            data_digest: resp.data_digest,
            maxh2cdata: resp.maxh2cdata,
            cpda_bytes: (usize::from(resp.cpda) + 1) * 4,
        };
        self.tx.set_framing(Framing {
            header_digest: resp.header_digest,
            data_digest: resp.data_digest,
            data_alignment: self.negotiated.cpda_bytes,
        })?;
        self.rx.set_limits(ReceiveLimits {
            header_digest: resp.header_digest,
            data_digest: resp.data_digest,
            // We sent HPDA 0: C2H data is dword aligned.
            data_alignment: 4,
            ic_done: true,
            ..ReceiveLimits::new(Role::Host, HOST_PDU_LEN_MAX)
        })?;
        Ok(())
    }

    /// Sends one PDU completely, backing off while the socket is full.
    pub fn send_blocking(
        &mut self,
        header: &PduHeader,
        data: &[u8],
        deadline: Instant,
    ) -> Result<(), HostError> {
        self.tx.start(header, data)?;
        while !self.tx.flush(&mut self.stream, data)? {
            if Instant::now() >= deadline {
                return Err(HostError::Timeout { what: "send", waited_ms: 0 });
            }
            thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    /// Turns a receive error into a HostError; for a fatal protocol error,
    /// first tells the target with an H2CTermReq (best effort, the connection
    /// is being abandoned anyway).
    pub fn fail(&mut self, e: TcpError) -> HostError {
        if let Some(t) = e.term_req() {
            let mut copy = [0u8; 128];
            let raw = self.rx.raw_header();
            let n = raw.len().min(copy.len());
            copy[..n].copy_from_slice(&raw[..n]);
            if self.tx.is_idle() {
                let hdr = PduHeader::H2CTermReq(TermReq { fes: t.fes, fei: t.fei });
                if self.tx.start(&hdr, &copy[..n]).is_ok() {
                    let _ = self.tx.flush(&mut self.stream, &copy[..n]);
                }
            }
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
        HostError::from(e)
    }
}
