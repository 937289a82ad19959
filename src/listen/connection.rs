//! `Connection`: one client's stream, whatever the kind of listener it came through. The worker
//! reads, writes and polls it through this one type, so framing, output, draining and talking
//! back are written once.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

/// A client's connection, non-blocking.
#[derive(Debug)]
pub enum Connection {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Connection {
    /// Bytes received and not read yet (`FIONREAD`).
    ///
    /// # Errors
    /// When the system cannot say.
    pub fn queued(&self) -> io::Result<u64> {
        Ok(rustix::io::ioctl_fionread(self)?)
    }

    /// Whether the peer is gone with nothing left to read: the next read would return end of file
    /// or an error (a reset), rather than bytes. Only meaningful when the socket is readable.
    pub fn is_closed_by_peer(&self) -> bool {
        let mut byte = [0; 1];
        match rustix::net::recv(self, &mut byte, rustix::net::RecvFlags::PEEK) {
            Ok((0, _)) => true,
            Ok(_) => false,
            Err(err) => err != rustix::io::Errno::AGAIN && err != rustix::io::Errno::INTR,
        }
    }

    /// Sends a pending (delayed) ACK now, where the kind and the system allow it (TCP on Linux).
    ///
    /// # Errors
    /// When the socket option cannot be set.
    pub fn ack_now(&self) -> io::Result<()> {
        match self {
            Connection::Tcp(stream) => crate::platform::ack_now(stream),
            Connection::Unix(_) => Ok(()),
        }
    }
}

impl Read for &Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Connection::Tcp(stream) => (&*stream).read(buf),
            Connection::Unix(stream) => (&*stream).read(buf),
        }
    }
}

impl Write for &Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Connection::Tcp(stream) => (&*stream).write(buf),
            Connection::Unix(stream) => (&*stream).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Connection::Tcp(stream) => stream.as_fd(),
            Connection::Unix(stream) => stream.as_fd(),
        }
    }
}
