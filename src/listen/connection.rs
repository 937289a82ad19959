//! `Connection`: one client's stream, whatever the kind of listener it came through. The worker
//! reads, writes and polls it through this one type, so framing, output, draining and talking
//! back are written once.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use super::tls::{HandshakeFailure, TlsInfo, TlsStream};

/// A client's connection, non-blocking: no call on it waits, so none is interrupted by a signal
/// (no caller needs a case for `Interrupted`).
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
            // The socket does not block, so the peek is never interrupted.
            Err(err) => err != rustix::io::Errno::AGAIN,
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
    /// encrypted records): then poll for room and [`Write::flush`].
    pub fn wants_write(&self) -> bool {
        match self {
            Connection::Tls(tls) => tls.wants_write(),
            Connection::Tcp(_) | Connection::Unix(_) => false,
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

    /// Writes what [`Connection::wants_write`] says waits, as far as the socket takes it:
    /// `WouldBlock` when some is left.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Connection::Tls(tls) => tls.flush(),
            Connection::Tcp(_) | Connection::Unix(_) => Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poll::{self, Fd, Flags};
    use std::net::TcpListener;
    use std::time::Duration;

    /// A server side over TCP (non-blocking, as accepted) and its client.
    fn tcp() -> (Connection, Box<dyn ReadWrite>) {
        let (conn, client) = tcp_pair();
        (conn, Box::new(client))
    }

    fn tcp_pair() -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("non-blocking");
        (Connection::Tcp(server), client)
    }

    /// The same over a Unix socket pair.
    fn unix() -> (Connection, Box<dyn ReadWrite>) {
        let (server, client) = UnixStream::pair().expect("socket pair");
        server.set_nonblocking(true).expect("non-blocking");
        (Connection::Unix(server), Box::new(client))
    }

    trait ReadWrite: Read + Write {}
    impl<T: Read + Write> ReadWrite for T {}

    /// Waits until `conn` is readable (bytes, or the peer's close), at most 10 s.
    fn readable(conn: &Connection) {
        let mut fds = [Fd::new(conn, Flags::IN)];
        let ready = poll::wait(&mut fds, Duration::from_secs(10)).expect("poll");
        assert_eq!(ready, 1, "not readable within 10 s");
    }

    /// What the worker asks of a plain connection, over TCP and over a Unix socket: bytes
    /// queued are counted, read and answered; a peer's close is told from a quiet peer and
    /// from bytes still to read; and the TLS-only steps are no-ops.
    #[test]
    fn a_plain_connection_counts_reads_writes_and_sees_the_close() {
        for (kind, (mut conn, mut peer)) in [("tcp", tcp()), ("unix", unix())] {
            assert!(
                !conn.is_closed_by_peer(),
                "{kind}: a quiet peer is not gone"
            );
            assert_eq!(conn.queued().expect("FIONREAD"), 0, "{kind}");
            peer.write_all(b"hello").expect("send");
            readable(&conn);
            assert_eq!(conn.queued().expect("FIONREAD"), 5, "{kind}");
            assert!(!conn.is_closed_by_peer(), "{kind}: bytes wait");
            assert!(!conn.has_buffered() && !conn.wants_write(), "{kind}");
            assert!(conn.handshake(&stop_pipe()).is_none(), "{kind}");
            #[cfg(target_os = "linux")]
            if let Connection::Tcp(stream) = &conn {
                rustix::net::sockopt::set_tcp_quickack(stream, false).expect("delayed ACKs");
            }
            conn.ack_now().expect("ack");
            #[cfg(target_os = "linux")]
            if let Connection::Tcp(stream) = &conn {
                assert!(rustix::net::sockopt::tcp_quickack(stream).expect("TCP_QUICKACK"));
            }
            let mut buf = [0; 16];
            assert_eq!(conn.read(&mut buf).expect("read"), 5, "{kind}");
            assert_eq!(&buf[..5], b"hello", "{kind}");
            conn.write_all(b"back").expect("answer");
            conn.flush().expect("nothing to flush");
            let mut back = [0; 4];
            peer.read_exact(&mut back).expect("receive");
            assert_eq!(&back, b"back", "{kind}");
            // The peer leaves with a byte unread by the server: not gone until it is read.
            peer.write_all(b"!").expect("send");
            drop(peer);
            readable(&conn);
            assert!(!conn.is_closed_by_peer(), "{kind}: a byte waits");
            assert_eq!(conn.read(&mut buf).expect("read"), 1, "{kind}");
            readable(&conn);
            assert!(conn.is_closed_by_peer(), "{kind}: the peer is gone");
            conn.close();
            assert_eq!(conn.read(&mut buf).expect("end of file"), 0, "{kind}");
        }
    }

    /// A peer that resets (a close with `SO_LINGER` 0) is gone: the next read is an error.
    #[test]
    fn a_reset_peer_is_gone() {
        let (conn, peer) = tcp_pair();
        socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER");
        drop(peer);
        readable(&conn);
        assert!(conn.is_closed_by_peer(), "a reset peer is not gone");
    }

    /// What the worker asks of a TLS connection: the session's plaintext a short read left is
    /// buffered; what the socket cannot take waits, and a flush says so; a close says goodbye
    /// (close_notify) before the socket closes.
    #[test]
    fn a_tls_connection_buffers_waits_and_says_goodbye() {
        let crate::listen::tls::testing::Pair { server, client, .. } =
            crate::listen::tls::testing::pair();
        let mut conn = Connection::Tls(Box::new(server));
        let (go, read_now) = std::sync::mpsc::channel::<()>();
        let client = crate::listen::tls::testing::client_thread(client, move |mut client| {
            client.write_all(&[b'a'; 4000])?;
            client.flush()?;
            // Nothing read until the server's socket is full.
            read_now.recv().map_err(io::Error::other)?;
            let mut back = Vec::new();
            // Ends at the close_notify: with none, a read would fail, or wait for the socket.
            client.read_to_end(&mut back)?;
            Ok(back.len())
        });
        // A stop pipe nobody writes to.
        let (stop, _stop_writer) = rustix::pipe::pipe().expect("pipe");
        conn.handshake(&stop).expect("TLS").expect("the handshake");
        let mut buf = [0; 1000];
        let mut read = 0;
        for _ in 0..100 {
            readable(&conn);
            match conn.read(&mut buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                other => {
                    read = other.expect("a read");
                    break;
                }
            }
        }
        assert_eq!(read, 1000);
        assert!(conn.has_buffered(), "3,000 bytes left in the session");
        // 64 KiB taken whole; the socket holds a few of them.
        assert_eq!(conn.write(&[b'b'; 65_536]).expect("taken"), 65_536);
        assert!(conn.wants_write());
        let flushed = conn.flush().map_err(|err| err.kind());
        assert_eq!(flushed, Err(io::ErrorKind::WouldBlock));
        go.send(()).expect("the client waits");
        for _ in 0..1000 {
            match conn.flush() {
                Ok(()) => break,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    let mut fds = [Fd::new(&conn, Flags::OUT)];
                    poll::wait(&mut fds, Duration::from_secs(10)).expect("poll");
                }
                Err(err) => panic!("flush: {err}"),
            }
        }
        assert!(!conn.wants_write());
        // Room for the close_notify: `close` does not wait for it, and a client slow to read
        // (a loaded machine) would otherwise leave it unsent, and wait for it.
        let room = poll::wait(&mut [Fd::new(&conn, Flags::OUT)], Duration::from_secs(10));
        assert_eq!(room.expect("poll"), 1, "no room for the close_notify");
        conn.close();
        let back = client
            .join()
            .expect("client")
            .expect("the client's reading");
        assert_eq!(back, 65_536);
        drop(conn);
    }

    /// A descriptor to hand `handshake` as its stop pipe.
    fn stop_pipe() -> std::os::fd::OwnedFd {
        rustix::pipe::pipe().expect("pipe").0
    }
}
