//! `Connection`: one client's stream, whatever the kind of listener it came through. The worker
//! reads, writes and polls it through this one type, so framing, output, draining and talking
//! back are written once.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use super::tls::{HandshakeFailure, TlsInfo, TlsStream};

/// A client's connection, non-blocking.
#[derive(Debug)]
pub enum Connection {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// A TLS session over TCP; boxed, as a session is large next to a socket.
    Tls(Box<TlsStream>),
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
            Connection::Tls(tls) => crate::platform::ack_now(tls.socket()),
            Connection::Unix(_) => Ok(()),
        }
    }

    /// Runs a TLS handshake, waking on `stop`: what it agreed, or why it failed. `None` for a
    /// connection without TLS.
    pub fn handshake(&mut self, stop: &impl AsFd) -> Option<Result<TlsInfo, HandshakeFailure>> {
        match self {
            Connection::Tls(tls) => Some(tls.handshake(stop)),
            Connection::Tcp(_) | Connection::Unix(_) => None,
        }
    }

    /// Whether a read would return something the socket's readiness does not show (a TLS
    /// session's decrypted bytes, or its close): then read before polling.
    pub fn has_buffered(&mut self) -> bool {
        match self {
            Connection::Tls(tls) => tls.has_buffered(),
            Connection::Tcp(_) | Connection::Unix(_) => false,
        }
    }

    /// Whether bytes the connection took wait to be written to the socket (a TLS session's
    /// encrypted records): then poll for room and call [`Connection::flush_pending`].
    pub fn wants_write(&self) -> bool {
        match self {
            Connection::Tls(tls) => tls.wants_write(),
            Connection::Tcp(_) | Connection::Unix(_) => false,
        }
    }

    /// Writes what [`Connection::wants_write`] says waits, as far as the socket takes it.
    ///
    /// # Errors
    /// `WouldBlock` when some is left; others as the socket says.
    pub fn flush_pending(&mut self) -> io::Result<()> {
        match self {
            Connection::Tls(tls) => tls.flush_tls(),
            Connection::Tcp(_) | Connection::Unix(_) => Ok(()),
        }
    }

    /// Ends the connection politely where the kind has a way to (TLS close_notify), as far
    /// as the socket takes it at once; the socket closes when the connection drops.
    pub fn close(&mut self) {
        if let Connection::Tls(tls) = self {
            tls.close();
        }
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Connection::Tcp(stream) => stream.read(buf),
            Connection::Unix(stream) => stream.read(buf),
            Connection::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Connection::Tcp(stream) => stream.write(buf),
            Connection::Unix(stream) => stream.write(buf),
            Connection::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_pending()
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Connection::Tcp(stream) => stream.as_fd(),
            Connection::Unix(stream) => stream.as_fd(),
            Connection::Tls(tls) => tls.socket().as_fd(),
        }
    }
}
