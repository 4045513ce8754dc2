//! A receive buffer in front of a nonblocking socket.
//!
//! The PDU receiver asks for bytes in small pieces (an 8-byte common header,
//! then the rest of the header); a syscall per piece would cost more than
//! the command. `BufferedSocket` reads the socket in large chunks into a
//! buffer allocated once per connection and serves the receiver from it.
//! Large data reads that find the buffer empty go straight from the socket
//! into the caller's buffer, so a payload is copied at most once.

use std::io::{self, Read};

/// Reads of at least this many bytes bypass the buffer when it is empty.
const DIRECT_READ_MIN_BYTES: usize = 16 * 1024;

pub struct RecvBuffer {
    bytes: Box<[u8]>,
    start: usize,
    end: usize,
}

impl RecvBuffer {
    pub fn new(capacity_bytes: usize) -> RecvBuffer {
        RecvBuffer { bytes: vec![0u8; capacity_bytes].into_boxed_slice(), start: 0, end: 0 }
    }

    /// Bytes received but not yet consumed.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// A reader over `socket` that serves from this buffer first.
    pub fn reader<'a, S: Read>(&'a mut self, socket: &'a mut S) -> BufferedSocket<'a, S> {
        BufferedSocket { buf: self, socket }
    }
}

pub struct BufferedSocket<'a, S: Read> {
    buf: &'a mut RecvBuffer,
    socket: &'a mut S,
}

impl<S: Read> Read for BufferedSocket<'_, S> {
    fn read(&mut self, dest: &mut [u8]) -> io::Result<usize> {
        let b = &mut *self.buf;
        if b.start == b.end {
            b.start = 0;
            b.end = 0;
            if dest.len() >= DIRECT_READ_MIN_BYTES {
                return self.socket.read(dest);
            }
            let n = self.socket.read(&mut b.bytes)?;
            if n == 0 {
                return Ok(0);
            }
            b.end = n;
        }
        let n = dest.len().min(b.end - b.start);
        dest[..n].copy_from_slice(&b.bytes[b.start..b.start + n]);
        b.start += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that counts its reads.
    struct Counting {
        data: Vec<u8>,
        pos: usize,
        reads: usize,
    }

    impl Read for Counting {
        fn read(&mut self, dest: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            if self.pos == self.data.len() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = dest.len().min(self.data.len() - self.pos);
            dest[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn small_reads_share_one_syscall_and_bytes_stay_in_order() {
        let data: Vec<u8> = (0..200u8).collect();
        let mut sock = Counting { data: data.clone(), pos: 0, reads: 0 };
        let mut rb = RecvBuffer::new(4096);
        let mut out = Vec::new();
        {
            let mut r = rb.reader(&mut sock);
            let mut piece = [0u8; 8];
            for _ in 0..25 {
                let n = r.read(&mut piece).expect("read");
                out.extend_from_slice(&piece[..n]);
            }
            assert_eq!(r.read(&mut piece).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        }
        assert_eq!(out, data);
        assert_eq!(sock.reads, 2, "one read filled the buffer, one found the socket empty");
    }

    #[test]
    fn large_reads_bypass_an_empty_buffer() {
        let data = vec![7u8; 64 * 1024];
        let mut sock = Counting { data, pos: 0, reads: 0 };
        let mut rb = RecvBuffer::new(4096);
        let mut big = vec![0u8; 32 * 1024];
        let n = rb.reader(&mut sock).read(&mut big).expect("read");
        assert_eq!(n, 32 * 1024);
        assert_eq!(rb.buffered(), 0);
    }
}
