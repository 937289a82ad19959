//! TLS on a TCP listener, with rustls (ring as its crypto provider): the server's identity (a
//! certificate made at start with rcgen, or the user's own), client certificates, the handshake
//! each worker runs before it serves its client, and the session a worker reads and writes
//! through. Everything here is plain, blocking-free state: the worker polls the socket.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use serde::Serialize;

use crate::error::Error;
use crate::poll::{self, Fd, Flags};

/// Default longest wait for a client to finish its handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Plaintext a session holds before it pushes back: what one worker keeps for a slow client.
const SESSION_BUFFER: usize = 256 * 1024;

/// Where the server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Made at start, self-signed, for `localhost`, `127.0.0.1`, `::1` and the listening
    /// addresses; written as PEM to `cert_out` if given.
    Generated { cert_out: Option<PathBuf> },
    /// The user's own: a PEM certificate chain and its PEM private key.
    Files { cert: PathBuf, key: PathBuf },
}

/// What `--tls` and the `--tls-*` flags ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub identity: Identity,
    /// Require client certificates signed by one of these CAs (PEM).
    pub client_ca: Option<PathBuf>,
    /// Protocols offered through ALPN, in order of preference.
    pub alpn: Vec<String>,
    pub handshake_timeout: Duration,
}

/// A built TLS setup, shared by every TLS listener of a run.
#[derive(Debug)]
pub struct Tls {
    config: Arc<ServerConfig>,
    /// SHA-256 of the server's certificate, as `AB:CD:…`.
    pub fingerprint: String,
    pub handshake_timeout: Duration,
    /// Whether the certificate was made at start (so clients must be told to skip checking it,
    /// or to trust it).
    pub generated: bool,
}

impl Default for TlsOptions {
    /// A certificate made at start, no client certificates, no ALPN.
    fn default() -> TlsOptions {
        TlsOptions {
            identity: Identity::Generated { cert_out: None },
            client_ca: None,
            alpn: Vec::new(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl Tls {
    /// Builds the server's TLS setup; `hosts` are the addresses it listens on, named in a
    /// generated certificate.
    ///
    /// # Errors
    /// [`Error::Tls`] when a file is missing, unreadable or has no PEM in it, when the key does
    /// not match the certificate, or when the certificate cannot be written.
    pub fn build(options: &TlsOptions, hosts: &[IpAddr]) -> Result<Tls, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|err| Error::Tls(format!("cannot set up TLS: {err}")))?;
        let builder = match &options.client_ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(path, "client CA")? {
                    roots.add(cert).map_err(|err| {
                        Error::Tls(format!(
                            "cannot use the client CA {}: {err}",
                            path.display()
                        ))
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|err| {
                            Error::Tls(format!(
                                "cannot use the client CA {}: {err}",
                                path.display()
                            ))
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let (chain, key, generated) = match &options.identity {
            Identity::Generated { cert_out } => {
                let (chain, key, pem) = generate(hosts)?;
                if let Some(path) = cert_out {
                    std::fs::write(path, pem).map_err(|err| {
                        Error::Tls(format!(
                            "cannot write the certificate to {}: {}",
                            path.display(),
                            crate::error::describe(&err)
                        ))
                    })?;
                }
                (chain, key, true)
            }
            Identity::Files { cert, key } => {
                let chain = read_certs(cert, "certificate")?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|err| pem_error(key, "private key", "private key", &err))?;
                (chain, key, false)
            }
        };
        let fingerprint = fingerprint(&chain[0]);
        let mut config = builder.with_single_cert(chain, key).map_err(|err| {
            let why = match err {
                rustls::Error::InconsistentKeys(_) => {
                    String::from("the private key does not match the certificate")
                }
                other => other.to_string(),
            };
            match &options.identity {
                Identity::Files { cert, key } => Error::Tls(format!(
                    "cannot use {} with {}: {why}",
                    cert.display(),
                    key.display()
                )),
                Identity::Generated { .. } => {
                    Error::Tls(format!("cannot use the certificate: {why}"))
                }
            }
        })?;
        config.alpn_protocols = options.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(Tls {
            config: Arc::new(config),
            fingerprint,
            handshake_timeout: options.handshake_timeout,
            generated,
        })
    }

    /// A session for a client just accepted on `sock` (non-blocking); nothing is read or sent
    /// until its worker runs the handshake.
    ///
    /// # Errors
    /// When rustls cannot start a session (it always can with a config it accepted).
    pub fn accept(&self, sock: TcpStream) -> io::Result<TlsStream> {
        let mut session =
            ServerConnection::new(Arc::clone(&self.config)).map_err(io::Error::other)?;
        session.set_buffer_limit(Some(SESSION_BUFFER));
        Ok(TlsStream {
            sock,
            session,
            handshake_timeout: self.handshake_timeout,
            failed: None,
        })
    }
}

/// A self-signed certificate for `localhost`, `127.0.0.1`, `::1` and `hosts`: the chain, the
/// key and the certificate as PEM.
fn generate(
    hosts: &[IpAddr],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String), Error> {
    let mut names = vec![
        String::from("localhost"),
        String::from("127.0.0.1"),
        String::from("::1"),
    ];
    for host in hosts {
        let name = host.to_string();
        if !host.is_unspecified() && !names.contains(&name) {
            names.push(name);
        }
    }
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|err| Error::Tls(format!("cannot make a certificate: {err}")))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    Ok((vec![made.cert.der().clone()], key, made.cert.pem()))
}

/// Every certificate in the PEM file at `path` (the `what`); at least one.
fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|err| pem_error(path, what, "certificate", &err))?
        .collect::<Result<_, _>>()
        .map_err(|err| pem_error(path, what, "certificate", &err))?;
    if certs.is_empty() {
        return Err(pem_error(
            path,
            what,
            "certificate",
            &rustls::pki_types::pem::Error::NoItemsFound,
        ));
    }
    Ok(certs)
}

/// Why the `what` file at `path`, which holds `item`s, cannot be read: one line.
fn pem_error(path: &Path, what: &str, item: &str, err: &rustls::pki_types::pem::Error) -> Error {
    use rustls::pki_types::pem::Error as Pem;
    let why = match err {
        Pem::Io(io) => crate::error::describe(io),
        Pem::NoItemsFound => format!("no PEM {item} in it"),
        other => format!("not valid PEM ({other})"),
    };
    Error::Tls(format!("cannot read the {what} {}: {why}", path.display()))
}

/// SHA-256 of a certificate, as colon-separated hex pairs (how `openssl x509 -fingerprint
/// -sha256` shows it).
fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What a finished handshake agreed, for the connect line and the JSON `connect` event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpn: Option<String>,
    /// The subject of the client's certificate, when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_subject: Option<String>,
}

impl fmt::Display for TlsInfo {
    /// `TLS 1.3, TLS13_AES_256_GCM_SHA384, SNI api.example.test, ALPN h2, client CN=device-7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, {}", self.version, self.cipher)?;
        if let Some(sni) = &self.sni {
            write!(f, ", SNI {sni}")?;
        }
        if let Some(alpn) = &self.alpn {
            write!(f, ", ALPN {alpn}")?;
        }
        if let Some(subject) = &self.client_subject {
            write!(f, ", client {subject}")?;
        }
        Ok(())
    }
}

/// Why a handshake failed: the client's doing, reported in a warning.
#[derive(Debug)]
pub enum HandshakeFailure {
    /// The first bytes were not a TLS record: someone spoke plain text to a TLS port.
    PlainText(String),
    /// It did not finish within the handshake timeout.
    Timeout(Duration),
    /// The client closed the connection first.
    Closed,
    /// The server stopped first.
    Stopped,
    /// rustls refused what the client sent.
    Tls(rustls::Error),
    /// The socket failed.
    Io(io::Error),
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeFailure::PlainText(start) => {
                write!(
                    f,
                    "sent plain text, not a TLS handshake (it began \"{start}\")"
                )
            }
            HandshakeFailure::Timeout(after) => write!(
                f,
                "no handshake within {} (--tls-handshake-timeout)",
                humantime::format_duration(*after)
            ),
            HandshakeFailure::Closed => f.write_str("the client closed the connection"),
            HandshakeFailure::Stopped => f.write_str("the server stopped first"),
            HandshakeFailure::Tls(err) => write!(f, "{err}"),
            HandshakeFailure::Io(err) => f.write_str(&crate::error::describe(err)),
        }
    }
}

/// One client's TLS session over its socket (non-blocking: no call on it waits, so none is
/// interrupted by a signal).
pub struct TlsStream {
    sock: TcpStream,
    session: ServerConnection,
    handshake_timeout: Duration,
    /// An error the session found outside a read, for the next read to report.
    failed: Option<rustls::Error>,
}

impl TlsStream {
    /// The socket under the session.
    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// Runs the handshake to its end, waiting in `poll(2)` on the socket and `stop` (the stop
    /// pipe), for at most the handshake timeout. Returns what was agreed.
    ///
    /// # Errors
    /// Why the handshake failed.
    pub fn handshake(
        &mut self,
        stop: &impl std::os::fd::AsFd,
    ) -> Result<TlsInfo, HandshakeFailure> {
        let began = Instant::now();
        let mut first = true;
        while self.session.is_handshaking() || self.session.wants_write() {
            let mut blocked = Flags::empty();
            if self.session.wants_write() {
                match self.session.write_tls(&mut self.sock) {
                    Ok(_) => continue,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => blocked |= Flags::OUT,
                    // A client that resets while the server's flight is on its way.
                    Err(err) if err.kind() == io::ErrorKind::ConnectionReset => {
                        return Err(HandshakeFailure::Closed);
                    }
                    Err(err) => return Err(HandshakeFailure::Io(err)),
                }
            }
            if self.session.is_handshaking() && self.session.wants_read() {
                if first {
                    if let Some(start) = self.plain_text() {
                        return Err(HandshakeFailure::PlainText(start));
                    }
                }
                match self.session.read_tls(&mut self.sock) {
                    Ok(0) => return Err(HandshakeFailure::Closed),
                    Ok(_) => {
                        first = false;
                        if let Err(err) = self.session.process_new_packets() {
                            // Tell the client why (an alert), as far as the socket takes it.
                            let _ = self.session.write_tls(&mut self.sock);
                            return Err(HandshakeFailure::Tls(err));
                        }
                        continue;
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => blocked |= Flags::IN,
                    Err(err) if err.kind() == io::ErrorKind::ConnectionReset => {
                        return Err(HandshakeFailure::Closed);
                    }
                    Err(err) => return Err(HandshakeFailure::Io(err)),
                }
            }
            if blocked.is_empty() {
                continue;
            }
            let left = self
                .handshake_timeout
                .checked_sub(began.elapsed())
                .ok_or(HandshakeFailure::Timeout(self.handshake_timeout))?;
            let mut fds = [Fd::new(&self.sock, blocked), Fd::new(stop, Flags::IN)];
            poll::wait(&mut fds, left).map_err(HandshakeFailure::Io)?;
            if !fds[1].revents().is_empty() {
                return Err(HandshakeFailure::Stopped);
            }
        }
        Ok(self.info())
    }

    /// The first bytes, escaped, if the client's first bytes are not a TLS handshake record but
    /// text (a handshake record starts with 0x16).
    fn plain_text(&self) -> Option<String> {
        let mut start = [0; 24];
        let n = match rustix::net::recv(&self.sock, &mut start, rustix::net::RecvFlags::PEEK) {
            Ok((n, _)) => n,
            Err(_) => return None,
        };
        let start = &start[..n];
        let text = |b: &u8| b.is_ascii_graphic() || b.is_ascii_whitespace();
        if start.first().is_some_and(|&b| b != 0x16 && text(&b)) {
            let mut shown = Vec::new();
            crate::output::escape_into(&mut shown, start);
            let shown = String::from_utf8_lossy(&shown).replace('"', "\\\"");
            return Some(shown);
        }
        None
    }

    /// What the finished handshake agreed.
    fn info(&self) -> TlsInfo {
        let version = match self.session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => String::from("TLS 1.3"),
            Some(rustls::ProtocolVersion::TLSv1_2) => String::from("TLS 1.2"),
            Some(other) => format!("{other:?}"),
            None => String::from("TLS"),
        };
        let cipher = self
            .session
            .negotiated_cipher_suite()
            .map(|suite| format!("{:?}", suite.suite()))
            .unwrap_or_default();
        TlsInfo {
            version,
            cipher,
            sni: self.session.server_name().map(str::to_owned),
            alpn: self
                .session
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            client_subject: self
                .session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| subject_of(cert)),
        }
    }

    /// Whether the session holds what a read would return without the socket: decrypted bytes
    /// not read yet, or the client's close. `poll(2)` cannot see these: a worker that waited on
    /// the socket would leave them there.
    pub fn has_buffered(&mut self) -> bool {
        match self.session.process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
            Err(err) => {
                // Kept for the read, which the worker makes at once and which reports it.
                self.failed = Some(err);
                true
            }
        }
    }

    /// Whether encrypted bytes wait to be written to the socket.
    pub fn wants_write(&self) -> bool {
        self.session.wants_write()
    }

    /// Writes the encrypted bytes that wait, as far as the socket takes them: `WouldBlock` when
    /// some are left.
    fn flush_tls(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            self.session.write_tls(&mut self.sock)?;
        }
        Ok(())
    }

    /// Says goodbye properly (close_notify), as far as the socket takes it at once.
    pub fn close(&mut self) {
        self.session.send_close_notify();
        let _ = self.flush_tls();
    }
}

impl Read for TlsStream {
    /// Plaintext the session has, reading and decrypting more from the socket when it has none.
    /// `Ok(0)` at the client's close (with or without close_notify); `WouldBlock` when nothing
    /// more has come.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(err) = self.failed.take() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, err));
        }
        loop {
            match self.session.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
            match self.session.read_tls(&mut self.sock) {
                // The socket's end, with close_notify or without: an end like any other for a
                // listener. (Only after this would rustls call a bare end `UnexpectedEof`.)
                Ok(0) => return Ok(0),
                Ok(_) => {
                    if let Err(err) = self.session.process_new_packets() {
                        let _ = self.session.write_tls(&mut self.sock);
                        return Err(io::Error::new(io::ErrorKind::InvalidData, err));
                    }
                    // Key updates and the like.
                    let _ = self.flush_tls();
                }
                Err(err) => return Err(err),
            }
        }
    }
}

impl Write for TlsStream {
    /// Takes plaintext into the session once what it already encrypted is written; the caller
    /// polls for room while [`TlsStream::wants_write`].
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flush_tls()?;
        let n = self.session.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match self.flush_tls() {
            Err(err) if err.kind() != io::ErrorKind::WouldBlock => Err(err),
            _ => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls()
    }
}

/// The subject of a certificate, as `CN=device-7, O=Example`.
fn subject_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.subject().to_string())
}

/// A TLS connection over loopback for unit tests, with little room in its sockets.
#[cfg(test)]
pub(crate) mod testing {
    use std::io;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread::JoinHandle;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConnection, RootCertStore, StreamOwned};

    use super::{Identity, Tls, TlsOptions, TlsStream};

    /// Both ends of one connection, neither handshake begun.
    pub struct Pair {
        /// The server's end: non-blocking, 4 KiB to send.
        pub server: TlsStream,
        /// The address the client connected to, and the client's own.
        pub addr: SocketAddr,
        pub peer: SocketAddr,
        /// The client's end: blocking (reads time out after 10 s), 4 KiB to receive, trusting
        /// the server's certificate.
        pub client: Client,
    }

    /// The client's end of a [`Pair`].
    pub type Client = StreamOwned<ClientConnection, TcpStream>;

    /// Runs the client on a thread of its own: its handshake (the server's must run meanwhile),
    /// then `then`.
    pub fn client_thread<T: Send + 'static>(
        mut client: Client,
        then: impl FnOnce(Client) -> io::Result<T> + Send + 'static,
    ) -> JoinHandle<io::Result<T>> {
        std::thread::spawn(move || {
            while client.conn.is_handshaking() {
                client.conn.complete_io(&mut client.sock)?;
            }
            then(client)
        })
    }

    /// A pair whose server uses a certificate made at start.
    pub fn pair() -> Pair {
        let cert = temp_path("cert");
        let options = TlsOptions {
            identity: Identity::Generated {
                cert_out: Some(cert.clone()),
            },
            ..TlsOptions::default()
        };
        let tls = Tls::build(&options, &[]).expect("TLS");
        let mut roots = RootCertStore::empty();
        for der in CertificateDer::pem_file_iter(&cert).expect("the certificate") {
            roots.add(der.expect("PEM")).expect("trusted");
        }
        let _ = std::fs::remove_file(&cert);
        connect(&tls, roots)
    }

    /// A pair whose server sends, after its own certificate, `fillers` unrelated ones (about
    /// 400 bytes each): a first flight as large as a user's long chain, which a socket with
    /// little room cannot take at once.
    pub fn padded_pair(fillers: usize) -> Pair {
        let made = rcgen::generate_simple_self_signed(vec![String::from("localhost")])
            .expect("a certificate");
        let mut chain = made.cert.pem();
        for i in 0..fillers {
            let filler = rcgen::generate_simple_self_signed(vec![format!("filler-{i}.invalid")])
                .expect("a filler");
            chain.push_str(&filler.cert.pem());
        }
        let (cert, key) = (temp_path("chain"), temp_path("key"));
        std::fs::write(&cert, chain).expect("write the chain");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("write the key");
        let options = TlsOptions {
            identity: Identity::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            ..TlsOptions::default()
        };
        let tls = Tls::build(&options, &[]);
        let _ = std::fs::remove_file(&cert);
        let _ = std::fs::remove_file(&key);
        let mut roots = RootCertStore::empty();
        roots.add(made.cert.der().clone()).expect("trusted");
        connect(&tls.expect("TLS"), roots)
    }

    fn temp_path(what: &str) -> PathBuf {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        std::env::temp_dir().join(format!(
            "overhear-unit-tls-{}-{}-{what}.pem",
            std::process::id(),
            MADE.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Connects a client trusting `roots` to a session of `tls`.
    fn connect(tls: &Tls, roots: RootCertStore) -> Pair {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket.connect(&addr.into()).expect("connect");
        let client = TcpStream::from(socket);
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let (sock, peer) = listener.accept().expect("accept");
        sock.set_nonblocking(true).expect("non-blocking");
        socket2::SockRef::from(&sock)
            .set_send_buffer_size(4096)
            .expect("SO_SNDBUF");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").expect("a name");
        let session = ClientConnection::new(Arc::new(config), name).expect("a session");
        Pair {
            server: tls.accept(sock).expect("a session"),
            addr,
            peer,
            client: StreamOwned::new(session, client),
        }
    }
}

#[cfg(test)]
mod tests {
    use x509_parser::extensions::GeneralName;

    use super::*;

    /// The certificate made at start names `localhost`, `127.0.0.1` and `::1`, then each other
    /// address listened on, once; an unspecified address (`0.0.0.0`, `::`) names no host.
    #[test]
    fn a_made_certificate_names_loopback_and_each_address_listened_on() {
        let hosts: Vec<IpAddr> = [
            "0.0.0.0",
            "::",
            "127.0.0.1",
            "10.1.2.3",
            "10.1.2.3",
            "fd00::7",
        ]
        .iter()
        .map(|h| h.parse().expect("an address"))
        .collect();
        let (chain, _, pem) = generate(&hosts).expect("a certificate");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        let (_, cert) = x509_parser::parse_x509_certificate(chain[0].as_ref()).expect("X.509");
        let names = cert
            .subject_alternative_name()
            .expect("one SAN extension")
            .expect("a SAN extension");
        let names: Vec<String> = names
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => (*dns).to_owned(),
                GeneralName::IPAddress(bytes) => match <[u8; 4]>::try_from(*bytes) {
                    Ok(v4) => IpAddr::from(v4).to_string(),
                    Err(_) => {
                        IpAddr::from(<[u8; 16]>::try_from(*bytes).expect("16 bytes")).to_string()
                    }
                },
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            ["localhost", "127.0.0.1", "::1", "10.1.2.3", "fd00::7"]
        );
    }

    /// Plaintext written through a socket without room: every byte `write` says it took arrives
    /// once, in order. The socket (4 KiB to send, 4 KiB for the client to receive) fills at the
    /// first write: the session keeps what the socket did not take, and the next writes wait
    /// until the client reads.
    #[test]
    fn what_write_takes_arrives_once_through_a_full_socket() {
        use std::sync::mpsc;

        let testing::Pair {
            mut server, client, ..
        } = testing::pair();
        let (go, read_now) = mpsc::channel::<()>();
        let client = testing::client_thread(client, move |mut client| {
            // Nothing read until the server's socket is full.
            read_now.recv().map_err(io::Error::other)?;
            let mut back = Vec::new();
            client.read_to_end(&mut back).map(|_| back)
        });
        // A stop pipe nobody writes to.
        let (stop, _stop_writer) = rustix::pipe::pipe().expect("pipe");
        server.handshake(&stop).expect("the handshake");
        assert!(!server.wants_write(), "the handshake left bytes to write");
        // Nothing to write is written at once, as `Write` says.
        assert_eq!(server.write(&[]).expect("an empty write"), 0);
        let wait_for_room = |server: &TlsStream| {
            let mut fds = [Fd::new(server.socket(), Flags::OUT)];
            poll::wait(&mut fds, Duration::from_secs(10)).expect("poll");
        };
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut taken, mut blocked) = (0, 0);
        for _ in 0..1_000_000 {
            if taken == data.len() {
                break;
            }
            match server.write(&data[taken..(taken + 65_536).min(data.len())]) {
                Ok(n) => {
                    // A session holds up to 256 KiB: the first 64 KiB go in at once, though the
                    // socket takes a few KiB of them.
                    assert!(taken > 0 || n == 65_536, "the first write took {n}");
                    taken += n;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if blocked == 0 {
                        // Nothing read yet: a flush has no room either, and says so.
                        let flushed = server.flush().map_err(|err| err.kind());
                        assert_eq!(flushed, Err(io::ErrorKind::WouldBlock));
                        assert!(server.wants_write());
                        go.send(()).expect("the client waits");
                    }
                    blocked += 1;
                    wait_for_room(&server);
                }
                Err(err) => panic!("write: {err}"),
            }
        }
        assert_eq!(taken, data.len(), "not everything was taken");
        server.close();
        for _ in 0..1_000_000 {
            match server.flush() {
                Ok(()) => break,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => wait_for_room(&server),
                Err(err) => panic!("flush: {err}"),
            }
        }
        drop(server);
        let back = client.join().expect("client").expect("read to the end");
        assert!(blocked > 0, "the socket never filled");
        assert_eq!(back.len(), data.len());
        assert!(back == data, "the bytes differ");
    }

    /// What a read would return without the socket is "buffered": decrypted bytes a short read
    /// left, and the client's close_notify read with its last bytes. Nothing else is.
    #[test]
    fn buffered_is_what_a_read_returns_without_the_socket() {
        let testing::Pair {
            mut server, client, ..
        } = testing::pair();
        let client = testing::client_thread(client, |mut client| {
            // One record of 4,000 bytes, then one of 1 byte with the close_notify after it.
            client.write_all(&[b'a'; 4000])?;
            client.flush()?;
            client.write_all(b"b")?;
            client.conn.send_close_notify();
            client.flush()?;
            // Kept open: a close with the server's session tickets unread would be a reset.
            Ok(client)
        });
        let (stop, _stop_writer) = rustix::pipe::pipe().expect("pipe");
        server.handshake(&stop).expect("the handshake");
        assert!(!server.has_buffered(), "buffered before anything came");
        let _client = client
            .join()
            .expect("client")
            .expect("the client's sending");
        // All of it is in the server's socket now: reads of 1,000 bytes take the first record
        // in four.
        let mut buf = [0; 1000];
        let mut read = |server: &mut TlsStream| {
            for _ in 0..1000 {
                match server.read(&mut buf) {
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        let mut fds = [Fd::new(server.socket(), Flags::IN)];
                        poll::wait(&mut fds, Duration::from_secs(10)).expect("poll");
                    }
                    other => return other.expect("a read"),
                }
            }
            panic!("nothing came");
        };
        for left in [3, 2, 1, 0] {
            assert_eq!(read(&mut server), 1000);
            if left > 0 {
                assert!(
                    server.has_buffered(),
                    "{left} reads of the record left, not buffered"
                );
            }
        }
        // The second record and the close: the close is buffered once its byte is read.
        assert_eq!(read(&mut server), 1);
        assert!(
            server.has_buffered(),
            "the close_notify read is not buffered"
        );
        assert_eq!(read(&mut server), 0);
    }

    /// A write to a client that has reset fails at once, though the session took the bytes:
    /// the worker learns the client is gone from that write, not from the next.
    #[test]
    fn a_write_to_a_reset_client_fails() {
        let testing::Pair {
            mut server, client, ..
        } = testing::pair();
        let client = testing::client_thread(client, Ok);
        let (stop, _stop_writer) = rustix::pipe::pipe().expect("pipe");
        server.handshake(&stop).expect("the handshake");
        let client = client
            .join()
            .expect("client")
            .expect("the client's handshake");
        socket2::SockRef::from(&client.sock)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER");
        drop(client);
        // The reset has come when the socket says so.
        let mut fds = [Fd::new(server.socket(), Flags::IN)];
        poll::wait(&mut fds, Duration::from_secs(10)).expect("poll");
        let err = server
            .write(b"hello\n")
            .expect_err("a write after the reset");
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{err}"
        );
    }

    /// A server whose first flight (100 extra certificates, about 40 KB) the socket could not
    /// take, stopped while it waited for room: the session still holds the rest of the flight.
    /// The client has sent its hello and read nothing.
    fn stopped_mid_flight() -> testing::Pair {
        let mut pair = testing::padded_pair(100);
        let client = &mut pair.client;
        client.conn.write_tls(&mut client.sock).expect("the hello");
        let (stop, stop_writer) = rustix::pipe::pipe().expect("pipe");
        rustix::io::write(&stop_writer, b"x").expect("the stop");
        match pair.server.handshake(&stop) {
            Err(HandshakeFailure::Stopped) => {}
            other => panic!("a stopped handshake gave {other:?}"),
        }
        assert!(
            pair.server.wants_write(),
            "the socket took the whole flight"
        );
        pair
    }

    /// A handshake waiting for the client's hello waits in `poll`, where the stop finds it.
    #[test]
    fn a_handshake_waiting_for_the_hello_ends_at_the_stop() {
        let testing::Pair {
            mut server,
            client: _client,
            ..
        } = testing::pair();
        let (stop, stop_writer) = rustix::pipe::pipe().expect("pipe");
        rustix::io::write(&stop_writer, b"x").expect("the stop");
        match server.handshake(&stop) {
            Err(HandshakeFailure::Stopped) => {}
            other => panic!("a handshake at the stop gave {other:?}"),
        }
    }

    /// A first flight larger than the socket takes waits for room, and the handshake ends once
    /// the client reads it.
    #[test]
    fn a_first_flight_the_socket_cannot_take_waits_for_room() {
        let testing::Pair {
            mut server, client, ..
        } = stopped_mid_flight();
        let client = testing::client_thread(client, |client| Ok(client.conn.protocol_version()));
        // A stop pipe nobody writes to.
        let (stop, _stop_writer) = rustix::pipe::pipe().expect("pipe");
        let info = server.handshake(&stop).expect("the handshake");
        assert_eq!(info.version, "TLS 1.3");
        let version = client
            .join()
            .expect("client")
            .expect("the client's handshake");
        assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
    }

    /// A client that resets while the server's flight waits for room closed the connection: said
    /// at once, as a reset read is, not as a socket error.
    #[test]
    fn a_reset_during_the_first_flight_is_a_close() {
        let testing::Pair {
            mut server, client, ..
        } = stopped_mid_flight();
        socket2::SockRef::from(&client.sock)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER");
        drop(client);
        let (stop, _stop_writer) = rustix::pipe::pipe().expect("pipe");
        match server.handshake(&stop) {
            Err(HandshakeFailure::Closed) => {}
            other => panic!("a reset during the flight gave {other:?}"),
        }
    }

    /// A fingerprint is SHA-256 as `openssl x509 -fingerprint -sha256` shows it: 32 pairs of
    /// upper-case hex digits, colon-separated.
    #[test]
    fn fingerprints_are_sha256_in_openssl_form() {
        let cert = CertificateDer::from(b"abc".to_vec());
        assert_eq!(
            fingerprint(&cert),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:\
             B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }
}
