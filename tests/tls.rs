//! TLS: clients that speak TLS get everything plain TCP clients get. Met with `openssl
//! s_client`, `ncat --ssl` and `curl -k`; certificates made with the openssl CLI; a rustls
//! client where the test counts bytes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::common::{LONG_TIMEOUT, Signal, Spawned, TIMEOUT, TempDir, have, run_to_end};

/// A directory of certificates made for one test, removed with it.
struct Certs(TempDir);

impl Certs {
    fn new(tag: &str) -> Certs {
        Certs(TempDir::new(&format!("tls-{tag}")))
    }

    fn path(&self, name: &str) -> String {
        self.0.path(name)
    }

    /// Runs `openssl ARGS` in the directory; panics if it fails.
    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.0.dir())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A self-signed server certificate for localhost and 127.0.0.1 with a key of `kind`
    /// (`rsa:2048`, `ec`, `ed25519`): (cert, key).
    fn server(&self, name: &str, kind: &str) -> (String, String) {
        let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
        let mut args = vec!["req", "-x509", "-newkey", kind];
        if kind == "ec" {
            args.extend(["-pkeyopt", "ec_paramgen_curve:P-256"]);
        }
        args.extend([
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            // An end-entity certificate, as a server's is (rustls refuses a CA there).
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ]);
        self.openssl(&args);
        (self.path(&cert), self.path(&key))
    }

    /// A CA, and a client certificate it signed for `subject`: (ca, client cert, client key).
    fn client_ca(&self, subject: &str) -> (String, String, String) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
        ]);
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            subject,
        ]);
        std::fs::write(
            self.0.dir().join("client.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
        )
        .expect("write extensions");
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.pem",
            "-days",
            "1",
            "-extfile",
            "client.ext",
        ]);
        (
            self.path("ca.pem"),
            self.path("client.pem"),
            self.path("client.key"),
        )
    }
}

/// A client program with its stdin piped and its output discarded; killed and reaped when
/// dropped.
struct Client(Child);

impl Client {
    fn start(program: &str, args: &[&str]) -> Client {
        Client(
            Command::new(program)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|err| panic!("cannot run {program}: {err}")),
        )
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.0.stdin.as_mut().expect("piped");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("type into the client");
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `openssl s_client` (with SNI), `ncat --ssl` and `curl -k` (offered h2 and http/1.1 by the
/// server) at once: each numbered and attributed, curl's request lines printed, and the connect
/// lines say the version, cipher, SNI and ALPN.
#[test]
fn openssl_ncat_and_curl_clients_are_heard() {
    if !have(&["openssl", "ncat", "curl"]) {
        return;
    }
    let mut server = Spawned::start(&["--tls", "--tls-alpn", "http/1.1"]);
    let port = server.addr().port().to_string();
    let target = format!("127.0.0.1:{port}");
    let line = server.wait_stderr("listening on ", TIMEOUT);
    assert!(
        line.contains(&format!("listening on {target}; TLS, certificate SHA-256 ")),
        "{line}"
    );
    assert!(line.contains(" (made at start); connect with: "), "{line}");
    let mut openssl = Client::start(
        "openssl",
        &[
            "s_client",
            "-quiet",
            "-connect",
            &target,
            "-servername",
            "api.example.test",
        ],
    );
    let first = server.wait_stderr("client 1 connected from 127.0.0.1:", TIMEOUT);
    assert!(first.contains("(TLS 1.3, TLS13_"), "{first}");
    assert!(first.contains(", SNI api.example.test)"), "{first}");
    let mut ncat = Client::start("ncat", &["--ssl", "127.0.0.1", &port]);
    server.wait_stderr("client 2 connected from", TIMEOUT);
    openssl.type_line("from openssl");
    ncat.type_line("from ncat");
    server.wait_stdout("[1] from openssl", TIMEOUT);
    server.wait_stdout("[2] from ncat", TIMEOUT);
    let curl = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "3",
            &format!("https://{target}/some/path"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run curl");
    let mut curl = Client(curl);
    let third = server.wait_stderr("client 3 connected from", TIMEOUT);
    assert!(third.contains(", ALPN http/1.1)"), "{third}");
    server.wait_stdout("[3] GET /some/path HTTP/1.1", TIMEOUT);
    server.wait_stdout("[3] User-Agent: curl/", TIMEOUT);
    let _ = curl.0.kill();
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
}

/// Your own certificate and key (RSA, ECDSA, Ed25519): a client that trusts it is served; a key
/// that does not match, a missing file and a file without PEM are one clear line and exit 1,
/// before anything listens.
#[test]
fn own_certificates_and_their_errors() {
    if !have(&["openssl"]) {
        return;
    }
    let certs = Certs::new("own");
    for kind in ["rsa:2048", "ec", "ed25519"] {
        let name = kind.replace(':', "");
        let (cert, key) = certs.server(&name, kind);
        let mut server = Spawned::start(&["--tls", "--tls-cert", &cert, "--tls-key", &key]);
        let line = server.wait_stderr("listening on ", TIMEOUT);
        assert!(
            line.contains("; TLS, certificate SHA-256 ") && !line.contains("made at start"),
            "{line}"
        );
        // The fingerprint is the one openssl gives (`SHA256 Fingerprint=AB:…`).
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in", &cert])
            .output()
            .expect("run openssl");
        let openssl = String::from_utf8_lossy(&out.stdout);
        let (_, expected) = openssl.trim().split_once('=').expect("a fingerprint");
        assert!(
            line.contains(&format!("certificate SHA-256 {expected};")),
            "{line}\nopenssl: {openssl}"
        );
        let mut stream = tls_client(server.addr().port(), Path::new(&cert));
        stream.write_all(b"trusted\n").expect("send");
        stream.flush().expect("flush");
        server.wait_stdout("[1] trusted", TIMEOUT);
        server.stop(Signal::TERM).assert_success();
    }
    let (cert, _) = certs.server("one", "ec");
    let (_, other_key) = certs.server("two", "ec");
    let not_pem = certs.path("not.pem");
    std::fs::write(&not_pem, "just text\n").expect("write");
    let missing = certs.path("missing.pem");
    for (args, says) in [
        (
            vec!["--tls-cert", &cert, "--tls-key", &other_key],
            format!(
                "error: cannot use {cert} with {other_key}: the private key does not match the certificate"
            ),
        ),
        (
            vec!["--tls-cert", &missing, "--tls-key", &other_key],
            format!("error: cannot read the certificate {missing}: no such file or directory"),
        ),
        (
            vec!["--tls-cert", &not_pem, "--tls-key", &other_key],
            format!("error: cannot read the certificate {not_pem}: no PEM certificate in it"),
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &not_pem],
            format!("error: cannot read the private key {not_pem}: no PEM private key in it"),
        ),
    ] {
        let mut full = vec!["--tls", "--port", "0", "-d", "1s"];
        full.extend(args.iter().copied());
        let out = run_to_end(&full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{full:?}: {stderr}");
        assert_eq!(stderr.trim_end(), says, "{full:?}");
        assert!(!stderr.contains("listening on"), "{stderr}");
    }
    let out = run_to_end(&["--tls-cert", &cert, "--port", "0"]);
    assert_eq!(out.status.code(), Some(2), "--tls-cert without --tls-key");
}

/// `--tls-client-ca`: a client with a certificate the CA signed is served and its subject shown;
/// one without a certificate is refused, and the warning says why.
#[test]
fn client_certificates_are_required_and_shown() {
    if !have(&["openssl"]) {
        return;
    }
    let certs = Certs::new("mutual");
    let (ca, client_cert, client_key) = certs.client_ca("/CN=device-7/O=Example");
    let out = certs.path("server.pem");
    let mut server = Spawned::start(&[
        "--tls",
        "--tls-client-ca",
        &ca,
        "--tls-cert-out",
        &out,
        "--format",
        "json",
    ]);
    let target = format!("127.0.0.1:{}", server.addr().port());
    let mut with_cert = Client::start(
        "openssl",
        &[
            "s_client",
            "-quiet",
            "-connect",
            &target,
            "-cert",
            &client_cert,
            "-key",
            &client_key,
        ],
    );
    let line = server.wait_stderr("client 1 connected from", TIMEOUT);
    assert!(line.contains("client CN=device-7, O=Example)"), "{line}");
    with_cert.type_line("signed");
    server.wait_stdout("signed", TIMEOUT);
    let mut without = Client::start("openssl", &["s_client", "-quiet", "-connect", &target]);
    let warning = server.wait_stderr("client 2: TLS handshake failed: ", TIMEOUT);
    assert!(
        warning.contains("certificate"),
        "the reason names the missing certificate: {warning}"
    );
    let _ = without.0.kill();
    let finished = server.stop(Signal::TERM);
    let connect = finished
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
        .find(|e| e["event"] == "connect" && e["client"] == 1)
        .expect("connect event");
    assert_eq!(
        connect["tls"]["client_subject"], "CN=device-7, O=Example",
        "{connect}"
    );
    assert_eq!(connect["tls"]["version"], "TLS 1.3", "{connect}");
    finished.assert_stderr_has("1 TLS handshake failed");
}

/// Plain text to a TLS port is told apart; a client that sends nothing is dropped after the
/// handshake timeout; 200 stalled handshakes do not keep another client from being served.
#[test]
fn failed_and_stalled_handshakes_are_the_clients_own() {
    let dir = Certs::new("stalled");
    let cert = dir.path("generated.pem");
    let mut server = Spawned::start(&[
        "--tls",
        "--tls-handshake-timeout",
        "1500ms",
        "--tls-cert-out",
        &cert,
    ]);
    let addr = server.addr();
    let mut plain = crate::common::connect(addr);
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("send");
    server.wait_stderr(
        "client 1: TLS handshake failed: sent plain text, not a TLS handshake (it began \"GET / HTTP/1.0\\x0d\\x0a",
        TIMEOUT,
    );
    // Accepted in the order they connect: the stalled ones are clients 2 to 201 (their connect
    // lines would come after their handshakes, which never come).
    let stalled: Vec<TcpStream> = (0..200).map(|_| crate::common::connect(addr)).collect();
    let mut stream = tls_client(addr.port(), Path::new(&cert));
    stream.write_all(b"served anyway\n").expect("send");
    stream.flush().expect("flush");
    server.wait_stdout("[202] served anyway", LONG_TIMEOUT);
    server.wait_stderr(
        "client 2: TLS handshake failed: no handshake within 1s 500ms (--tls-handshake-timeout)",
        TIMEOUT,
    );
    // Every stalled one, whatever the order their timeouts are logged in under load.
    server.wait_stderr_nth("TLS handshake failed: no handshake within", 200, TIMEOUT);
    drop(stalled);
    let finished = server.stop(Signal::TERM);
    finished.assert_stderr_has("201 TLS handshakes failed");
}

/// A client that cuts its connection (a reset) halfway through its handshake is said to have
/// closed it, at once: not a socket error, and not left to the handshake timeout (an hour here).
/// One that sends bytes that are not TLS, and not text either, gets rustls's reason.
#[test]
fn a_reset_halfway_through_the_handshake_is_the_clients_close() {
    let mut server = Spawned::start(&["--tls", "--tls-handshake-timeout", "1h"]);
    let mut sock = crate::common::connect(server.addr());
    // A handshake record's header and the first byte of a ClientHello: TLS, not all of it yet.
    sock.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80, 0x01])
        .expect("send");
    // The worker read them, and waits for the rest in the handshake.
    crate::common::wait_read_by_server(&sock);
    rustix::net::sockopt::set_socket_linger(&sock, Some(std::time::Duration::ZERO))
        .expect("SO_LINGER");
    drop(sock);
    server.wait_stderr(
        "client 1: TLS handshake failed: the client closed the connection",
        TIMEOUT,
    );
    // Bytes that are neither a TLS record nor text are not called plain text: rustls refuses
    // them, in its own words.
    let mut binary = crate::common::connect(server.addr());
    binary
        .write_all(&[0x80, 0x00, 0x01, 0x02, 0x03, 0x04])
        .expect("send");
    let line = server.wait_stderr("client 2: TLS handshake failed: ", TIMEOUT);
    assert!(
        line.ends_with("TLS handshake failed: received corrupt message of type InvalidContentType"),
        "{line}"
    );
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    finished.assert_stderr_has("2 TLS handshakes failed");
}

/// A stop while 50 TLS clients stream. Half of them keep streaming through the stop: what is
/// printed of each is, in order, every line it wrote up to some point, none cut or split. The
/// other half wrote 2,000 lines each, every byte acknowledged by the server's kernel before the
/// stop but most of them not read yet: every one of those lines is printed (decrypted from what
/// the socket and the TLS session held). Every client then sees close_notify or the end of the
/// stream.
#[test]
fn a_stop_while_50_tls_clients_stream_loses_nothing() {
    const SETTLED_LINES: usize = 2000;
    let dir = TempDir::new("tls-stop");
    let cert = dir.path("generated.pem");
    let mut server = Spawned::start(&["--tls", "--tls-cert-out", &cert, "--max-line", "1KiB"]);
    let port = server.addr().port();
    let stop = Arc::new(AtomicBool::new(false));
    // How many settled clients have every line acknowledged; streaming starts after them.
    let settled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let line = |c: usize, k: usize| format!("c{c:02}-{k:06}-{}", "x".repeat(k % 90));
    let clients: Vec<thread::JoinHandle<(usize, String)>> = (0..50)
        .map(|c| {
            let stop = Arc::clone(&stop);
            let settled = Arc::clone(&settled);
            let cert = PathBuf::from(&cert);
            thread::spawn(move || {
                let mut stream = tls_client(port, &cert);
                let mut written = 0;
                let deadline = Instant::now() + LONG_TIMEOUT;
                let streaming = c % 2 == 0;
                while streaming && settled.load(Ordering::Relaxed) < 25 {
                    assert!(
                        Instant::now() < deadline,
                        "the settled clients never settled"
                    );
                    thread::sleep(std::time::Duration::from_millis(5));
                }
                while Instant::now() < deadline {
                    let done = if streaming {
                        stop.load(Ordering::Relaxed)
                    } else {
                        written == SETTLED_LINES
                    };
                    if done {
                        break;
                    }
                    let sent = stream.write_all(format!("{}\n", line(c, written)).as_bytes());
                    match sent {
                        Ok(()) => written += 1,
                        // A streaming client the stop found quiet for its grace period (a busy
                        // machine) is closed while it still writes: its writes then fail.
                        Err(_) if streaming => break,
                        Err(err) => panic!("client {c} cannot send: {err}"),
                    }
                }
                let flushed = stream.flush();
                assert!(streaming || flushed.is_ok(), "client {c}: {flushed:?}");
                if !streaming {
                    while crate::common::unacknowledged(&stream.sock) > 0 {
                        assert!(Instant::now() < deadline, "never acknowledged");
                        thread::sleep(std::time::Duration::from_millis(5));
                    }
                    settled.fetch_add(1, Ordering::Relaxed);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
                // Done: say so, then read what the server says until it ends.
                stream.conn.send_close_notify();
                let _ = stream.flush();
                let mut rest = Vec::new();
                let end = match stream.read_to_end(&mut rest) {
                    Ok(_) => String::from("close_notify"),
                    Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                        String::from("EOF")
                    }
                    Err(err) => format!("{err}"),
                };
                (written, end)
            })
        })
        .collect();
    server.wait_stderr("client 50 connected from", TIMEOUT);
    // Streaming starts once every settled client's lines are in the server's kernel (or read).
    server.wait_stdout("c48-000100", LONG_TIMEOUT);
    server.signal(Signal::TERM);
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(usize, String)> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    let finished = server.wait_exit(LONG_TIMEOUT);
    let mut printed: Vec<Vec<&str>> = vec![Vec::new(); 50];
    for output in finished.stdout.lines() {
        let (prefix, text) = output.split_once(' ').expect("prefixed line");
        assert!(
            !prefix.contains('!') && !prefix.contains('+'),
            "a cut or split line: {output}"
        );
        let c: usize = text[1..3].parse().expect("client tag");
        printed[c].push(text);
    }
    for (c, (written, end)) in results.iter().enumerate() {
        // A streaming client closed while it wrote may see the close as a reset.
        assert!(
            end == "close_notify" || end == "EOF" || c % 2 == 0,
            "client {c} ended with {end}"
        );
        if c % 2 == 1 {
            assert_eq!(printed[c].len(), *written, "client {c}: every settled line");
        } else {
            assert!(
                printed[c].len() <= *written,
                "client {c}: more printed than written"
            );
        }
        for (k, text) in printed[c].iter().enumerate() {
            assert_eq!(*text, line(c, k), "client {c} line {k}");
        }
    }
}

/// A rustls client to 127.0.0.1:`port` that trusts the certificate in `cert` (as `localhost`).
fn tls_client(port: u16, cert: &Path) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tls_over(sock, cert)
}

/// A rustls session over `sock`, already connected (its handshake not begun), trusting the
/// certificate in `cert` as `localhost`; reads and writes time out after [`TIMEOUT`].
fn tls_over(
    sock: TcpStream,
    cert: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(cert).expect("read the certificate") {
        roots.add(der.expect("PEM")).expect("a trusted certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("a name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("a session");
    sock.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    sock.set_write_timeout(Some(TIMEOUT)).expect("timeout");
    rustls::StreamOwned::new(conn, sock)
}

/// `--listen tls://…` beside a plain listener: one numbering, the connect line names the TLS
/// listener, and a client that checks certificates (curl `--cacert`) trusts the one made at
/// start once `--tls-cert-out` wrote it.
#[test]
fn tls_among_several_listeners_trusted_through_the_written_certificate() {
    if !have(&["curl"]) {
        return;
    }
    let dir = TempDir::new("tls-listen");
    let cert = dir.path("made.pem");
    let mut server = Spawned::start(&[
        "--listen",
        "tls://127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert-out",
        &cert,
    ]);
    let endpoints = server.endpoints();
    assert_eq!(endpoints.len(), 2, "{endpoints:?}");
    let status = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "3",
            "--cacert",
            &cert,
            &format!("https://{}/checked", endpoints[0]),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run curl");
    // curl gives up waiting for an HTTP answer (28, a timeout) but only after a verified
    // handshake: a certificate it could not check would be 60.
    assert_ne!(
        status.code(),
        Some(60),
        "curl could not verify the certificate"
    );
    let line = server.wait_stderr("client 1 connected from", TIMEOUT);
    assert!(
        line.ends_with(&format!("on tls://{}", endpoints[0])),
        "{line}"
    );
    server.wait_stdout("[1] GET /checked HTTP/1.1", TIMEOUT);
    let addr: std::net::SocketAddr = endpoints[1].parse().expect("a bare TCP address");
    let mut plain = crate::common::connect(addr);
    plain.write_all(b"plain beside\n").expect("send");
    server.wait_stdout("[2] plain beside", TIMEOUT);
    server.stop(Signal::TERM).assert_success();
}

/// A TLS client that sends a lot with `--echo` and reads nothing: its worker waits in `poll`
/// for room (it does not spin past the stop pipe), so a stop still ends the run promptly, with
/// `--poll-interval 1h` so only the stop's wake can end it. Then `--greet` with typed
/// messages: the greeting is the first thing a TLS client gets, even when a line addressed to
/// it was typed during its handshake.
#[test]
fn a_tls_client_that_reads_nothing_neither_spins_nor_holds_the_stop() {
    if !have(&["python3"]) {
        return;
    }
    let dir = TempDir::new("tls-deaf");
    let cert = dir.path("made.pem");
    let mut server = Spawned::start(&[
        "--tls",
        "--echo",
        "--poll-interval",
        "1h",
        "--tls-cert-out",
        &cert,
    ]);
    // Python's ssl module: sends until its writes time out, then holds the connection, reading
    // nothing, until it is killed (when this test ends).
    let program = format!(
        "import socket, ssl, sys, time\n\
         ctx = ssl.create_default_context(); ctx.check_hostname = False\n\
         ctx.verify_mode = ssl.CERT_NONE\n\
         t = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {})))\n\
         t.settimeout(0.5)\n\
         try:\n\
         \x20   while True: t.sendall(b'e' * 65536)\n\
         except Exception: pass\n\
         print('full', flush=True)\n\
         time.sleep(60)\n",
        server.addr().port()
    );
    let mut deaf = Command::new("python3")
        .args(["-c", &program])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run python3");
    let mut said = [0; 4];
    deaf.stdout
        .as_mut()
        .expect("piped")
        .read_exact(&mut said)
        .expect("the client's windows fill");
    // A worker spinning on its queue never looked at the stop: this stop would not end.
    let finished = server.stop(Signal::TERM);
    let _ = deaf.kill();
    let _ = deaf.wait();
    finished.assert_success();

    let mut server = Spawned::start_typing(&[
        "--tls",
        "--greet",
        "HELLO\\n",
        "--stdin",
        "always",
        "--tls-cert-out",
        &cert,
    ]);
    // Connected, its handshake not begun: it is client 1 already.
    let sock = TcpStream::connect(server.addr()).expect("connect");
    server.wait_addressable(1);
    server.type_bytes(b"@1 typed during the handshake\n@9 sync\n");
    server.wait_stderr("client 9 is not connected", TIMEOUT);
    let mut stream = tls_over(sock, Path::new(&cert));
    let want = b"HELLO\ntyped during the handshake\n";
    let mut got = Vec::new();
    let mut buf = [0; 256];
    while got.len() < want.len() {
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    server.stop(Signal::TERM).assert_success();
}

/// Every session ends with close_notify, so that a client can tell the server's close from a
/// cut connection (rustls reports a bare end of stream as an error): a session the client ends
/// gets the server's close_notify in answer to its own, and one the stop ends gets it too.
#[test]
fn every_tls_session_ends_with_close_notify() {
    let dir = TempDir::new("tls-close");
    let cert = dir.path("made.pem");
    let mut server = Spawned::start(&["--tls", "--tls-cert-out", &cert]);
    let port = server.addr().port();
    let mut leaving = tls_client(port, Path::new(&cert));
    let mut staying = tls_client(port, Path::new(&cert));
    for (stream, line) in [(&mut leaving, "leaving"), (&mut staying, "staying")] {
        stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("send");
        stream.flush().expect("send");
        server.wait_stdout(&format!("] {line}"), TIMEOUT);
    }
    leaving.conn.send_close_notify();
    leaving.flush().expect("send close_notify");
    let mut rest = Vec::new();
    let ended = leaving.read_to_end(&mut rest);
    assert!(ended.is_ok(), "the client's own close: {ended:?}");
    server.wait_stderr("disconnected (closed by client)", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    let ended = staying.read_to_end(&mut rest);
    assert!(ended.is_ok(), "the stop: {ended:?}\n{finished}");
    assert!(rest.is_empty(), "nothing but the close was sent");
    finished.assert_success();
}

/// A client that sends its last line and its close_notify at once, then waits for the server's
/// close with its socket open, is answered at once: rustls has read the close with the line,
/// the socket has nothing more to say, and the worker must not wait on it (here, for an hour).
#[test]
fn a_close_notify_sent_with_the_last_line_is_answered_at_once() {
    let dir = TempDir::new("tls-close-with-line");
    let cert = dir.path("made.pem");
    let mut server = Spawned::start(&["--tls", "--tls-cert-out", &cert, "--poll-interval", "1h"]);
    let mut client = tls_client(server.addr().port(), Path::new(&cert));
    // The handshake first, so the line and the close go in one write after it.
    while client.conn.is_handshaking() {
        client
            .conn
            .complete_io(&mut client.sock)
            .expect("handshake");
    }
    client.conn.writer().write_all(b"last\n").expect("send");
    client.conn.send_close_notify();
    client.flush().expect("send the line and close_notify");
    let mut rest = Vec::new();
    let ended = client.read_to_end(&mut rest);
    assert!(
        ended.is_ok(),
        "the server's close_notify in answer: {ended:?}"
    );
    server.wait_stderr("disconnected (closed by client)", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    assert!(finished.stdout.ends_with("] last\n"), "{finished}");
    finished.assert_success();
}

/// Echo over TLS to a client that sends 5 MB through a 4 KiB receive window before it reads
/// any (more than the sockets hold): every byte comes back, in order, as over plain TCP.
#[test]
fn tls_echo_to_a_late_reader_comes_back_whole() {
    const LINES: usize = 50_000;
    let dir = TempDir::new("tls-echo");
    let cert = dir.path("made.pem");
    let mut server = Spawned::start(&["--tls", "--echo", "--tls-cert-out", &cert]);
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&server.addr().into()).expect("connect");
    let mut client = tls_over(TcpStream::from(socket), Path::new(&cert));
    let sent: String = (0..LINES)
        .map(|k| format!("echo-{k:06}-{}\n", "z".repeat(88)))
        .collect();
    client.write_all(sent.as_bytes()).expect("send");
    client.flush().expect("send");
    let mut back = vec![0; sent.len()];
    client.read_exact(&mut back).expect("every echoed byte");
    assert!(
        back == sent.as_bytes(),
        "the echo differs from what was sent"
    );
    server.wait_stdout(&format!("] echo-{:06}-", LINES - 1), TIMEOUT);
    server.stop(Signal::TERM).assert_success();
}
