//! The kinds of listener: how clients come in (TCP, Unix stream sockets, UDP), how each is
//! written on the command line ([`Spec`]), who is on the other end ([`Peer`]), and the
//! [`Connection`] a worker reads from and writes to whatever the kind. TCP and Unix clients get
//! a worker each from the listener's accept loop ([`StreamListener`]); UDP sources are served by
//! one receiver thread per socket ([`udp`]).

mod connection;
mod tcp;
pub mod tls;
pub mod udp;
mod unix;

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use serde::Serialize;

use crate::platform::{ABSTRACT_SOCKETS, UNIX_PATH_MAX};

pub use connection::Connection;
pub use unix::{UnixListener, UnixMode};

/// One way in, as given on the command line: `tcp://HOST:PORT` (or `HOST:PORT`),
/// `udp://HOST:PORT`, `unix:PATH` (`unix:@NAME` for Linux's abstract namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    Tcp(SocketAddr),
    /// TLS over TCP (`tls://HOST:PORT`, or `--tls`).
    Tls(SocketAddr),
    Udp(SocketAddr),
    Unix(UnixPath),
}

/// Where a Unix socket lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixPath {
    /// A socket file.
    File(PathBuf),
    /// A name in Linux's abstract namespace (`@name`): no file, gone with the last socket.
    Abstract(String),
}

impl fmt::Display for UnixPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixPath::File(path) => write!(f, "{}", path.display()),
            UnixPath::Abstract(name) => write!(f, "@{name}"),
        }
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Spec::Tcp(addr) => write!(f, "tcp://{addr}"),
            Spec::Tls(addr) => write!(f, "tls://{addr}"),
            Spec::Udp(addr) => write!(f, "udp://{addr}"),
            Spec::Unix(path) => write!(f, "unix:{path}"),
        }
    }
}

impl Serialize for Spec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Spec {
    /// Reads a `--listen` value.
    ///
    /// # Errors
    /// A message saying what the forms are, or what is wrong with the address or path.
    pub fn parse(text: &str) -> Result<Spec, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            return UnixPath::parse(path).map(Spec::Unix);
        }
        let (scheme, rest) = match text.split_once("://") {
            Some((scheme, rest)) => (scheme, rest),
            None => ("tcp", text),
        };
        let addr = parse_host_port(rest).map_err(|why| format!("'{text}': {why}"))?;
        match scheme {
            "tcp" => Ok(Spec::Tcp(addr)),
            "tls" => Ok(Spec::Tls(addr)),
            "udp" => Ok(Spec::Udp(addr)),
            _ => Err(format!(
                "'{text}': unknown kind '{scheme}'; write tcp://HOST:PORT (or HOST:PORT), \
                 tls://HOST:PORT, udp://HOST:PORT or unix:PATH"
            )),
        }
    }

    /// How a listener is named in messages: a TCP or TLS listener by its bare address
    /// (`127.0.0.1:7878`, the form scripts parse after `listening on `), others in full.
    pub fn address(&self) -> String {
        match self {
            Spec::Tcp(addr) | Spec::Tls(addr) => addr.to_string(),
            other => other.to_string(),
        }
    }
}

impl UnixPath {
    /// A socket path, or `@name` for the abstract namespace (Linux only).
    ///
    /// # Errors
    /// An empty path, one too long for a Unix socket, or `@name` where there is no abstract
    /// namespace.
    pub fn parse(text: &str) -> Result<UnixPath, String> {
        if text.is_empty() {
            return Err(String::from(
                "a Unix socket needs a path: unix:/tmp/overhear.sock",
            ));
        }
        if text.len() > UNIX_PATH_MAX {
            return Err(format!(
                "'{text}' is {} bytes, too long for a Unix socket (at most {UNIX_PATH_MAX}); \
                 use a shorter path",
                text.len()
            ));
        }
        match text.strip_prefix('@') {
            Some(name) if ABSTRACT_SOCKETS => Ok(UnixPath::Abstract(name.to_owned())),
            Some(_) => Err(format!(
                "'{text}': the abstract namespace (@name) exists on Linux only"
            )),
            None => Ok(UnixPath::File(PathBuf::from(text))),
        }
    }
}

/// `HOST:PORT` or `[IPV6]:PORT`, the host an address or a name resolved to its first address.
fn parse_host_port(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| String::from("give an address and a port, HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| String::from("a port is a number from 0 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve '{host}': {}", crate::error::describe(&err)))?
        .next()
        .ok_or_else(|| format!("'{host}' has no address"))
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A TCP or UDP peer. An IPv4 client of a dual-stack socket is known by its IPv4 address.
    Ip(SocketAddr),
    /// A process connected to a Unix socket, by its credentials where the system gives them.
    Local(Option<Credentials>),
}

/// The process at the other end of a Unix socket (`SO_PEERCRED` on Linux, `getpeereid` and the
/// like elsewhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub pid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    /// Its command name (`/proc/PID/comm`), where it can be read.
    pub command: Option<String>,
}

impl Peer {
    /// The peer of an IP socket, an IPv4-mapped IPv6 address turned back into IPv4.
    pub fn ip(addr: SocketAddr) -> Peer {
        match addr {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => Peer::Ip(SocketAddr::from((v4, v6.port()))),
                None => Peer::Ip(addr),
            },
            SocketAddr::V4(_) => Peer::Ip(addr),
        }
    }

    /// The IP address the access rules judge; `None` for a local process.
    pub fn ip_addr(&self) -> Option<IpAddr> {
        match self {
            Peer::Ip(addr) => Some(addr.ip()),
            Peer::Local(_) => None,
        }
    }

    /// The credentials of a local process.
    pub fn credentials(&self) -> Option<&Credentials> {
        match self {
            Peer::Local(credentials) => credentials.as_ref(),
            Peer::Ip(_) => None,
        }
    }
}

impl fmt::Display for Peer {
    /// `127.0.0.1:5000`, or `pid 4121 (uid 1000, nc)` for a local process.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Ip(addr) => addr.fmt(f),
            Peer::Local(None) => f.write_str("a local process"),
            Peer::Local(Some(who)) => {
                match who.pid {
                    Some(pid) => write!(f, "pid {pid} (uid {}", who.uid)?,
                    None => write!(f, "a local process (uid {}", who.uid)?,
                }
                if let Some(command) = &who.command {
                    write!(f, ", {command}")?;
                }
                f.write_str(")")
            }
        }
    }
}

impl Serialize for Peer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A bound listener of a stream kind: TCP, TLS or Unix.
#[derive(Debug)]
pub enum StreamListener {
    Tcp(std::net::TcpListener),
    Tls(std::net::TcpListener, std::sync::Arc<tls::Tls>),
    Unix(UnixListener),
}

impl StreamListener {
    /// Binds and listens on `spec` (not UDP), non-blocking, with `backlog` queued connections;
    /// a TLS listener serves `tls`, a Unix socket file gets `mode`.
    ///
    /// # Errors
    /// When the address cannot be bound or the socket path is taken.
    pub fn bind(
        spec: &Spec,
        backlog: u32,
        mode: Option<UnixMode>,
        tls: Option<&std::sync::Arc<tls::Tls>>,
    ) -> io::Result<StreamListener> {
        match spec {
            Spec::Tcp(addr) => tcp::listen(*addr, backlog).map(StreamListener::Tcp),
            Spec::Tls(addr) => {
                let tls = tls.ok_or_else(|| io::Error::other("TLS is not set up"))?;
                let listener = tcp::listen(*addr, backlog)?;
                Ok(StreamListener::Tls(listener, std::sync::Arc::clone(tls)))
            }
            Spec::Unix(path) => UnixListener::bind(path, backlog, mode).map(StreamListener::Unix),
            Spec::Udp(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a UDP socket is not a stream listener",
            )),
        }
    }

    /// What it is bound to: for TCP, with the port the system chose for port 0.
    ///
    /// # Errors
    /// When the system cannot say (it always can for a bound socket).
    pub fn bound(&self) -> io::Result<Spec> {
        match self {
            StreamListener::Tcp(listener) => listener.local_addr().map(Spec::Tcp),
            StreamListener::Tls(listener, _) => listener.local_addr().map(Spec::Tls),
            StreamListener::Unix(listener) => Ok(Spec::Unix(listener.path().clone())),
        }
    }

    /// Accepts one waiting connection, non-blocking, with its peer.
    ///
    /// # Errors
    /// `WouldBlock` when none is waiting; others as `accept(2)` says.
    pub fn accept(&self) -> io::Result<(Connection, Peer)> {
        match self {
            StreamListener::Tcp(listener) => {
                let (stream, addr) = listener.accept()?;
                stream.set_nonblocking(true)?;
                Ok((Connection::Tcp(stream), Peer::ip(addr)))
            }
            StreamListener::Tls(listener, tls) => {
                let (stream, addr) = listener.accept()?;
                stream.set_nonblocking(true)?;
                let session = tls.accept(stream)?;
                Ok((Connection::Tls(Box::new(session)), Peer::ip(addr)))
            }
            StreamListener::Unix(listener) => {
                let (stream, credentials) = listener.accept()?;
                Ok((Connection::Unix(stream), Peer::Local(credentials)))
            }
        }
    }
}

impl std::os::fd::AsFd for StreamListener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            StreamListener::Tcp(listener) | StreamListener::Tls(listener, _) => listener.as_fd(),
            StreamListener::Unix(listener) => listener.as_fd(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_read_and_print_the_same() {
        for (text, shown) in [
            ("127.0.0.1:7878", "tcp://127.0.0.1:7878"),
            ("tcp://127.0.0.1:0", "tcp://127.0.0.1:0"),
            ("tls://127.0.0.1:7878", "tls://127.0.0.1:7878"),
            ("udp://127.0.0.1:5514", "udp://127.0.0.1:5514"),
            ("tcp://[::1]:80", "tcp://[::1]:80"),
            ("unix:/tmp/x.sock", "unix:/tmp/x.sock"),
        ] {
            let spec = Spec::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(spec.to_string(), shown);
            assert_eq!(Spec::parse(shown).as_ref(), Ok(&spec));
        }
        assert_eq!(
            Spec::parse("localhost:9").map(|s| matches!(s, Spec::Tcp(a) if a.port() == 9)),
            Ok(true)
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = |text: &str| Spec::parse(text).expect_err(text);
        assert!(err("http://127.0.0.1:80").contains("unknown kind 'http'"));
        assert!(err("127.0.0.1").contains("HOST:PORT"));
        assert!(err("udp://127.0.0.1:99999").contains("0 to 65535"));
        assert!(err("unix:").contains("needs a path"));
        let long = format!("unix:/tmp/{}", "x".repeat(120));
        assert!(
            err(&long).contains("too long for a Unix socket"),
            "{}",
            err(&long)
        );
    }

    #[test]
    fn peers_read_naturally() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().expect("literal");
        assert_eq!(Peer::ip(mapped).to_string(), "127.0.0.1:5000");
        let local = Peer::Local(Some(Credentials {
            pid: Some(4121),
            uid: 1000,
            gid: 1000,
            command: Some(String::from("nc")),
        }));
        assert_eq!(local.to_string(), "pid 4121 (uid 1000, nc)");
        assert_eq!(local.ip_addr(), None);
        assert_eq!(Peer::Local(None).to_string(), "a local process");
    }
}
