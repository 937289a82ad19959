//! overhear's benchmark suite: starts the release binary and its peers (ncat, socat, a Python
//! ThreadingTCPServer, a copy sink and a discard sink) on loopback, drives each with a Rust load
//! client, verifies what they printed, and prints markdown tables with ratios measured in the
//! same run.
//!
//! Every server runs as a user runs it: stdout to a file (the latency scenario reads a pipe) and
//! stderr to a file beside it, so logging costs what it costs a user; the opening lines say so.
//! The two sinks are this binary, a `std::thread` per connection that a stop kills, never joins:
//! the discard sink reads and throws away (the most a listener can do here at all); the copy sink
//! appends each 256 KiB read raw, with one `write_all`, to the same output file, opened once with
//! O_APPEND (the most a listener that stores every byte can do here). Its output has no framing
//! and no client numbers, so only its bytes are counted, not its lines. The join sink is a thread
//! per connection on overhear's recycled stacks that throws its reads away and, at SIGTERM,
//! wakes every thread, closes its socket and joins it: the least a listener that joins its
//! threads does at a stop.
//!
//! Beside the usual "overhear vs this" ratio, the throughput table gives each server's MB/s as a
//! percentage of the copy sink's, each server's CPU time per GB received, and a line under it
//! overhear's against socat and the copy sink.
//! The floor table (bare threads on overhear's recycled stacks, woken by one pipe write and
//! joined) is measured first, so the concurrent table can give each server's exit after SIGTERM
//! as a multiple of the floor for the same N, and of the discard sink's exit (a process whose
//! threads are simply killed) and the join sink's when they are among the peers. The latency
//! scenario pools 5 rounds (the servers in turn within each), gives each round's p99 and
//! overhear's p99 against the best peer's.
//!
//! Two more scenarios: `udp` (8 senders of 100-byte datagrams as fast as they can for 5 s, to
//! overhear `-u`, `socat -u UDP-RECV` and `ncat -u -l`: sent, received, loss, received/s, the
//! kernel's drops, and overhear's summary beside them) and `unix` (the throughput run through
//! overhear's Unix socket `-U` beside the same through TCP, in the same rounds: unix ÷ tcp).
//!
//! `tls`: the throughput run over TLS to overhear `--tls`, `socat -u OPENSSL-LISTEN` and
//! `ncat --ssl`, all with one P-256 certificate and key the openssl CLI makes once per run, beside
//! overhear over plain TCP in the same rounds (each server's MB/s ÷ that); then a churn of
//! TLS connections (connect, a full handshake, one line, close_notify) against each: handshakes/s
//! and failures. The clients are rustls (ring), trusting that certificate, with resumption off.
//! `framing`: the throughput run to overhear with `--framing lines`, `syslog` (octet counting:
//! `99 ` then 99 bytes) and `length:u32be` (a 4-byte big-endian length, then 99 bytes), in the
//! same rounds: every message is a line's 99 bytes without its newline, so each prints as the
//! same line whatever the framing and is checked line by line; MB/s counts the bytes on the
//! wire, and overhear's summary (messages, bytes) is checked against what was sent.
//!
//! Run: `cargo bench --bench suite` (all scenarios), or name some:
//! `cargo bench --bench suite -- throughput churn concurrent latency udp unix tls framing`.
//! Options: `--peers overhear,copy,socat` limits the servers (and sets their order; the sinks are
//! `copy`, `discard` and `join`); `--clients 1000,5000,10000` sets the concurrent sizes; `--mib 64` the
//! throughput volume per client (also in `unix`, `tls` and `framing`); `--rounds 3` how many
//! throughput runs each figure is the median of (also in `unix`, `tls` and `framing`), and how
//! many latency rounds are pooled (5 unless given); `--dir DIR`
//! where the servers' output and log files go (default: the temporary directory).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use overhear::threads::Stacks;
use rustix::process::{Pid, Resource, Rlimit, Signal, getrlimit, kill_process, setrlimit};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use socket2::{SockAddr, Socket, Type};

const LINE_LEN: usize = 100;
const THROUGHPUT_CLIENTS: usize = 8;
const CHURN_CYCLES: usize = 20_000;
const CHURN_THREADS: usize = 8;
const LATENCY_PERIOD: Duration = Duration::from_millis(1);
const LATENCY_RUN: Duration = Duration::from_secs(5);
const UDP_SENDERS: usize = 8;
/// How long the UDP senders send.
const UDP_RUN: Duration = Duration::from_secs(5);
/// Longest any one wait in a scenario may take before the scenario is declared failed.
const SCENARIO_LIMIT: Duration = Duration::from_secs(180);
/// TLS connections in the handshake churn (from `CHURN_THREADS` threads).
const TLS_HANDSHAKES: usize = 2_000;
/// Longest one TLS connection of the handshake churn may take in any one step (connect,
/// handshake, send, close) before it counts as failed.
const TLS_STEP_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Overhear,
    /// overhear with std's usual listen backlog, to show what the deep one buys.
    OverhearBacklog128,
    /// overhear with `--framing`, its clients framing their messages so.
    OverhearFraming(Framing),
    Ncat,
    Socat,
    Python,
    /// The most a listener that stores every byte can do here: reads appended raw to the output.
    Copy,
    /// The most a listener can do here at all: reads thrown away.
    Discard,
    /// The least a listener that joins its threads does at a stop: reads thrown away, and at
    /// SIGTERM every thread woken, its socket closed, joined.
    Join,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Overhear,
        Kind::Ncat,
        Kind::Socat,
        Kind::Python,
        Kind::Copy,
        Kind::Discard,
        Kind::Join,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Overhear => "overhear",
            Kind::OverhearBacklog128 => "overhear --backlog 128",
            Kind::OverhearFraming(framing) => framing.name(),
            Kind::Ncat => "ncat",
            Kind::Socat => "socat",
            Kind::Python => "python",
            Kind::Copy => "copy sink",
            Kind::Discard => "discard sink",
            Kind::Join => "join sink",
        }
    }

    /// Finds a server by its name, or a sink by its first word (`--peers overhear,copy,discard`).
    fn named(name: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == name || k.name() == format!("{name} sink"))
    }

    /// Whether it is overhear (with any options): it numbers its clients and ends with a summary.
    fn is_overhear(self) -> bool {
        matches!(
            self,
            Kind::Overhear | Kind::OverhearBacklog128 | Kind::OverhearFraming(_)
        )
    }

    /// Whether it is one of the suite's own sinks rather than a peer people use.
    fn is_sink(self) -> bool {
        matches!(self, Kind::Copy | Kind::Discard | Kind::Join)
    }

    /// Whether it prints `[N] ` before each line (and so numbers its clients).
    fn numbers_clients(self) -> bool {
        self.is_overhear() || self == Kind::Python
    }

    /// Whether it prints what it receives at all.
    fn prints(self) -> bool {
        !matches!(self, Kind::Discard | Kind::Join)
    }

    /// Whether its output can be checked line by line. The copy sink's reads end anywhere in a
    /// line and carry no client number, so only its bytes are counted.
    fn lines_checked(self) -> bool {
        self.prints() && self != Kind::Copy
    }

    /// Whether it can listen for UDP datagrams (the udp scenario's servers).
    fn listens_udp(self) -> bool {
        matches!(self, Kind::Overhear | Kind::Ncat | Kind::Socat)
    }

    /// Whether it can speak TLS on a TCP listener (the tls scenario's servers).
    fn speaks_tls(self) -> bool {
        matches!(self, Kind::Overhear | Kind::Ncat | Kind::Socat)
    }

    /// How its clients frame their messages.
    fn framing(self) -> Framing {
        match self {
            Kind::OverhearFraming(framing) => framing,
            _ => Framing::Lines,
        }
    }

    /// How to start it listening on `listen` (`port` for TCP and UDP); `None` when its program is
    /// not installed or it cannot listen there.
    fn command(self, listen: &Listen, port: u16) -> Option<Command> {
        let have = |tool: &str| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let mut cmd = match self {
            Kind::Overhear | Kind::OverhearBacklog128 | Kind::OverhearFraming(_) => {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_overhear"));
                if self == Kind::OverhearBacklog128 {
                    cmd.args(["--backlog", "128"]);
                }
                if let Kind::OverhearFraming(framing) = self {
                    cmd.args(["--framing", framing.flag()]);
                }
                match listen {
                    Listen::Tcp => {
                        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()]);
                    }
                    Listen::Tls(tls) => {
                        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string(), "--tls"]);
                        cmd.arg("--tls-cert").arg(&tls.cert);
                        cmd.arg("--tls-key").arg(&tls.key);
                    }
                    Listen::Unix(path) => {
                        cmd.arg("-U").arg(path);
                    }
                    Listen::Udp => {
                        cmd.args(["-u", "--host", "127.0.0.1", "--port", &port.to_string()]);
                    }
                }
                cmd.args(["--duration", "0", "--max-conns", "100000"]);
                cmd
            }
            // Not `-k`: ncat 7.93 refuses it in UDP mode ("except with --exec"). Without it,
            // ncat connects its socket to the first source and hears no other.
            Kind::Ncat if matches!(listen, Listen::Udp) && have("ncat") => {
                let mut cmd = Command::new("ncat");
                cmd.args(["-u", "-l", "127.0.0.1", &port.to_string()]);
                cmd
            }
            Kind::Socat if matches!(listen, Listen::Udp) && have("socat") => {
                let mut cmd = Command::new("socat");
                cmd.args(["-u", &format!("UDP-RECV:{port}"), "STDOUT"]);
                cmd
            }
            Kind::Ncat if matches!(listen, Listen::Tls(_)) && have("ncat") => {
                let Listen::Tls(tls) = listen else {
                    unreachable!("matched as TLS")
                };
                let mut cmd = Command::new("ncat");
                cmd.arg("--ssl");
                cmd.arg("--ssl-cert").arg(&tls.cert);
                cmd.arg("--ssl-key").arg(&tls.key);
                cmd.args(["-l", "-k", "--max-conns", "20000", "127.0.0.1"]);
                cmd.arg(port.to_string());
                cmd
            }
            // `-u` as over TCP: both ways, socat would read its stdout, a file opened only for
            // writing, fail (EBADF) and drop the connection.
            Kind::Socat if matches!(listen, Listen::Tls(_)) && have("socat") => {
                let Listen::Tls(tls) = listen else {
                    unreachable!("matched as TLS")
                };
                let mut cmd = Command::new("socat");
                cmd.args(["-u"]);
                cmd.arg(format!(
                    "OPENSSL-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=4096,cert={},\
                     key={},verify=0",
                    tls.cert.display(),
                    tls.key.display()
                ));
                cmd.arg("STDOUT");
                cmd
            }
            _ if !matches!(listen, Listen::Tcp) => return None,
            Kind::Ncat if have("ncat") => {
                let mut cmd = Command::new("ncat");
                cmd.args(["-l", "-k", "--max-conns", "20000", "127.0.0.1"]);
                cmd.arg(port.to_string());
                cmd
            }
            Kind::Socat if have("socat") => {
                let mut cmd = Command::new("socat");
                cmd.args(["-u"]);
                cmd.arg(format!(
                    "TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=4096"
                ));
                cmd.arg("STDOUT");
                cmd
            }
            Kind::Python if have("python3") => {
                let mut cmd = Command::new("python3");
                cmd.arg(
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/threading_server.py"),
                );
                cmd.args(["127.0.0.1", &port.to_string()]);
                cmd
            }
            Kind::Copy | Kind::Discard | Kind::Join => {
                let mut cmd = Command::new(std::env::current_exe().ok()?);
                let flag = match self {
                    Kind::Copy => "--copy-sink",
                    Kind::Discard => "--discard-sink",
                    _ => "--join-sink",
                };
                cmd.args([flag, &port.to_string()]);
                cmd
            }
            _ => return None,
        };
        cmd.stdin(Stdio::null());
        Some(cmd)
    }
}

/// Where a server under test listens.
#[derive(Debug, Clone)]
enum Listen {
    /// TCP on a free loopback port.
    Tcp,
    /// A Unix stream socket at this path (overhear only).
    Unix(PathBuf),
    /// UDP on loopback: overhear takes a free port itself (`--port 0`) and logs it, the peers a
    /// port the suite found free.
    Udp,
    /// TLS on a free loopback TCP port, with the suite's certificate and key.
    Tls(Arc<Tls>),
}

/// The tls scenario's certificate and key, made once per run with the openssl CLI (every server
/// gets the same files, so all sign with the same key type), and a rustls client configuration
/// that trusts that certificate, with resumption off so every handshake is a full one.
#[derive(Debug)]
struct Tls {
    cert: PathBuf,
    key: PathBuf,
    client: Arc<rustls::ClientConfig>,
}

impl Tls {
    /// Makes a self-signed P-256 certificate for `localhost` and 127.0.0.1 in `dir`; says why not.
    fn make(dir: &Path) -> Result<Tls, String> {
        let (cert, key) = (dir.join("tls-cert.pem"), dir.join("tls-key.pem"));
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-days", "1", "-subj", "/CN=localhost"])
            // A certificate that is not a CA's: webpki refuses a CA certificate as a server's.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match made {
            Err(err) if err.kind() == ErrorKind::NotFound => {
                return Err("openssl, which makes its certificate, is not installed".into());
            }
            Err(err) => return Err(format!("cannot run openssl: {err}")),
            Ok(status) if !status.success() => {
                return Err(format!("openssl could not make a certificate ({status})"));
            }
            Ok(_) => {}
        }
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_file_iter(&cert).map_err(|err| err.to_string())? {
            roots
                .add(der.map_err(|err| err.to_string())?)
                .map_err(|err| err.to_string())?;
        }
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        client.resumption = rustls::client::Resumption::disabled();
        Ok(Tls {
            cert,
            key,
            client: Arc::new(client),
        })
    }
}

/// A server under test, in its own process group; killed with the group when dropped.
struct Running {
    kind: Kind,
    child: Child,
    /// The loopback address of a TCP or UDP server (for UDP, port 0 until overhear logs its own).
    addr: SocketAddr,
    listen: Listen,
    output: Option<PathBuf>,
    log: PathBuf,
}

impl Running {
    /// Starts `kind` with stdout to the file `output` (a pipe when `None`) and stderr to the file
    /// `log`, as a user who keeps the log has it: writing the log costs what it costs them.
    fn start(kind: Kind, output: Option<&Path>, log: &Path) -> Option<Running> {
        Running::start_on(kind, Listen::Tcp, output, log)
    }

    /// [`Running::start`], listening on `listen`.
    fn start_on(kind: Kind, listen: Listen, output: Option<&Path>, log: &Path) -> Option<Running> {
        let port = match (&listen, kind) {
            (Listen::Tcp | Listen::Tls(_), _) => free_port(),
            (Listen::Unix(_), _) | (Listen::Udp, Kind::Overhear) => 0,
            (Listen::Udp, _) => free_udp_port(),
        };
        let mut cmd = kind.command(&listen, port)?;
        match output {
            Some(path) => cmd.stdout(File::create(path).ok()?),
            None => cmd.stdout(Stdio::piped()),
        };
        cmd.stderr(File::create(log).ok()?).process_group(0);
        let child = cmd.spawn().ok()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut running = Running {
            kind,
            child,
            addr,
            listen,
            output: output.map(Path::to_path_buf),
            log: log.to_path_buf(),
        };
        running.wait_ready();
        Some(running)
    }

    /// Waits until the server accepts a connection. The probe connects and closes, so numbering
    /// servers give it number 1: the scenario's clients are 2, 3, …. A UDP server is ready once
    /// its socket is bound (no probe: its clients are 1, 2, …); overhear's port is read from its
    /// `listening on udp://…` line. A TLS probe runs a handshake and closes with close_notify,
    /// as the clients do, so no server logs a failed handshake for it.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let ready = match &self.listen {
                Listen::Tcp => TcpStream::connect(self.addr).is_ok(),
                Listen::Tls(_) => Client::connect(&self.listen, &self.addr.into(), TLS_STEP_LIMIT)
                    .map(|mut probe| {
                        let _ = probe
                            .finish()
                            .and_then(|()| probe.wait_close(TLS_STEP_LIMIT));
                    })
                    .is_ok(),
                Listen::Unix(path) => UnixStream::connect(path).is_ok(),
                Listen::Udp if self.addr.port() == 0 => {
                    if let Some(addr) = logged_udp_addr(&self.log) {
                        self.addr = addr;
                    }
                    self.addr.port() != 0
                }
                Listen::Udp => udp_socket_drops(self.addr.port()).is_some(),
            };
            if ready {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{} did not start listening on {:?} ({})",
            self.kind.name(),
            self.listen,
            self.addr
        );
    }

    /// Where the suite's stream clients connect: the Unix socket's path, or the TCP address.
    fn endpoint(&self) -> SockAddr {
        match &self.listen {
            Listen::Unix(path) => SockAddr::unix(path).expect("a Unix socket path that fits"),
            Listen::Tcp | Listen::Udp | Listen::Tls(_) => self.addr.into(),
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32).expect("child pids are positive")
    }

    /// Resident memory of the server and all its descendants, in KiB.
    fn rss_kib(&self) -> u64 {
        tree_pids(self.child.id())
            .into_iter()
            .map(|pid| status_field(pid, "VmRSS:").unwrap_or(0))
            .sum()
    }

    /// CPU time (user and system) the server and its descendants have used, in seconds;
    /// children that already ended count once the server has reaped them.
    fn cpu_seconds(&self) -> f64 {
        let ticks: u64 = tree_pids(self.child.id())
            .into_iter()
            .enumerate()
            .map(|(i, pid)| stat_ticks(pid, i == 0).unwrap_or(0))
            .sum();
        ticks as f64 / rustix::param::clock_ticks_per_second() as f64
    }

    fn output_len(&self) -> u64 {
        self.output
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    }

    /// Waits until the output file holds `bytes` bytes; returns false on timeout.
    fn wait_output(&self, bytes: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.output_len() >= bytes {
                return true;
            }
            thread::sleep(Duration::from_micros(500));
        }
        false
    }

    /// Waits until the output file has not grown for `quiet` (at most `limit` in all); returns
    /// when it last grew.
    fn wait_quiet(&self, quiet: Duration, limit: Duration) -> Instant {
        let start = Instant::now();
        let (mut len, mut grew) = (self.output_len(), start);
        while start.elapsed() < limit && grew.elapsed() < quiet {
            thread::sleep(Duration::from_millis(5));
            let now = self.output_len();
            if now != len {
                (len, grew) = (now, Instant::now());
            }
        }
        grew
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit; returns the time taken.
    fn terminate(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        kill_process(self.pid(), Signal::TERM).ok()?;
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(start.elapsed());
            }
            thread::sleep(Duration::from_micros(200));
        }
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let group = Pid::from_raw(self.child.id() as i32).expect("positive pid");
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where `kind` writes in `scenario`: its output and its log (stderr), in the suite's directory.
fn run_files(dir: &Path, scenario: &str, kind: Kind) -> (PathBuf, PathBuf) {
    let stem = format!("{scenario}-{}", kind.name().replace(' ', "-"));
    (
        dir.join(format!("{stem}.out")),
        dir.join(format!("{stem}.err")),
    )
}

/// What a server that is not checked line by line wrote: its byte count against the expected.
fn bytes_cell(written: u64, expected: u64) -> String {
    format!("{written}/{expected} bytes")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A UDP port free on loopback when asked: bound and closed at once, so another process may take
/// it before the server does (a race a benchmark can live with).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free loopback UDP port")
}

/// The address in overhear's `listening on udp://ADDR; …` log line, once it is there.
fn logged_udp_addr(log: &Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(log).ok()?;
    let (_, rest) = text.split_once("listening on udp://")?;
    rest.split(';').next()?.parse().ok()
}

/// The receive-buffer drops the kernel counts for the IPv4 UDP socket bound to `port` (the
/// `drops` column of /proc/net/udp); `None` when no socket is bound to it.
fn udp_socket_drops(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    table.lines().skip(1).find_map(|line| {
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (_, local_port) = fields.get(1)?.rsplit_once(':')?;
        (u16::from_str_radix(local_port, 16).ok()? == port).then(|| fields.get(12)?.parse().ok())?
    })
}

/// Opens a stream socket to `endpoint` (TCP or Unix), blocking, as the load clients use it.
fn connect_stream(endpoint: &SockAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(endpoint.domain(), Type::STREAM, None)?;
    socket.connect(endpoint)?;
    Ok(socket)
}

/// A load client's stream: plain (TCP or Unix), or TLS over TCP once its handshake is done.
enum Client {
    Plain(Socket),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, Socket>>),
}

impl Client {
    /// Connects to `endpoint`; when `listen` is TLS, runs a full handshake with server name
    /// `localhost`. Every read and write on the socket then waits at most `limit`.
    fn connect(listen: &Listen, endpoint: &SockAddr, limit: Duration) -> std::io::Result<Client> {
        let mut socket = connect_stream(endpoint)?;
        socket.set_read_timeout(Some(limit))?;
        socket.set_write_timeout(Some(limit))?;
        let Listen::Tls(tls) = listen else {
            return Ok(Client::Plain(socket));
        };
        let name = ServerName::try_from("localhost").expect("a valid server name");
        let mut session = rustls::ClientConnection::new(Arc::clone(&tls.client), name)
            .map_err(std::io::Error::other)?;
        let start = Instant::now();
        while session.is_handshaking() {
            if start.elapsed() > limit {
                return Err(ErrorKind::TimedOut.into());
            }
            session.complete_io(&mut socket)?;
        }
        Ok(Client::Tls(Box::new(rustls::StreamOwned::new(
            session, socket,
        ))))
    }

    fn socket(&self) -> &Socket {
        match self {
            Client::Plain(socket) => socket,
            Client::Tls(tls) => &tls.sock,
        }
    }

    /// What the handshake agreed (`None` for a plain client): version, cipher suite, group.
    fn negotiated(&self) -> Option<String> {
        let Client::Tls(tls) = self else { return None };
        let name = |s: Option<String>| s.unwrap_or_else(|| String::from("?"));
        Some(format!(
            "{}, {}, {}",
            name(tls.conn.protocol_version().map(|v| format!("{v:?}"))),
            name(
                tls.conn
                    .negotiated_cipher_suite()
                    .map(|s| format!("{:?}", s.suite()))
            ),
            name(
                tls.conn
                    .negotiated_key_exchange_group()
                    .map(|g| format!("{:?}", g.name()))
            ),
        ))
    }

    /// Ends what the client sends: for TLS a close_notify first, then a TCP half-close.
    fn finish(&mut self) -> std::io::Result<()> {
        if let Client::Tls(tls) = self {
            tls.conn.send_close_notify();
            tls.flush()?;
        }
        self.socket().shutdown(Shutdown::Write)
    }

    /// For TLS, reads what the server still sends (its session tickets, then its close_notify)
    /// until it closes, for at most `limit`, so closing never resets what the client left
    /// unread. `Ok` at a close_notify; an error at a close without one (`UnexpectedEof`), a
    /// reset or the limit. A plain client has nothing to wait for: its socket is kept until
    /// the output is complete.
    fn wait_close(&mut self, limit: Duration) -> std::io::Result<()> {
        let Client::Tls(tls) = self else {
            return Ok(());
        };
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            let left = limit
                .checked_sub(start.elapsed())
                .ok_or(ErrorKind::TimedOut)?;
            tls.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            match tls.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }
}

impl Write for Client {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Client::Plain(socket) => socket.write(buf),
            Client::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Client::Plain(socket) => socket.flush(),
            Client::Tls(tls) => tls.flush(),
        }
    }
}

fn tree_pids(root: u32) -> Vec<u32> {
    let mut parents: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = status_field(pid, "PPid:") {
                parents.entry(ppid as u32).or_default().push(pid);
            }
        }
    }
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        if let Some(children) = parents.get(&all[i]) {
            all.extend(children);
        }
        i += 1;
    }
    all
}

/// Clock ticks `pid` has run (all its threads), plus those of its reaped children if asked.
fn stat_ticks(pid: u32, with_reaped_children: bool) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name: state, ppid, …; utime is the 14th field of the line.
    let fields: Vec<u64> = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let own = fields.first()? + fields.get(1)?;
    let reaped = fields.get(2)? + fields.get(3)?;
    Some(if with_reaped_children {
        own + reaped
    } else {
        own
    })
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// The 100-byte line (newline included) client `client` sends as its `seq`-th:
/// `c{client}-{seq:010} ` then filler.
fn line(client: usize, seq: usize, out: &mut Vec<u8>) {
    LineMaker::new(client).append(seq, out);
}

/// Makes one client's lines by patching the sequence digits into a template, so the load client
/// spends its time sending rather than formatting.
struct LineMaker {
    template: Vec<u8>,
    digits: usize,
}

impl LineMaker {
    fn new(client: usize) -> LineMaker {
        const FILLER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut template = format!("c{client}-").into_bytes();
        let digits = template.len();
        template.extend_from_slice(b"0000000000 ");
        while template.len() < LINE_LEN - 1 {
            template.push(FILLER[template.len() % FILLER.len()]);
        }
        template.push(b'\n');
        LineMaker { template, digits }
    }

    fn append(&self, seq: usize, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.template);
        let mut n = seq;
        for digit in out[start + self.digits..start + self.digits + 10]
            .iter_mut()
            .rev()
        {
            *digit = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
}

/// How the framing scenario's clients frame their messages. Each message is the 99 bytes of a
/// [`LineMaker`] line without its newline (with it, for lines), so overhear prints the same
/// line whatever the framing, and [`verify_lines`] checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Lines ending in `\n` (overhear's default).
    Lines,
    /// RFC 6587 octet counting: `99 ` then the 99 bytes.
    Syslog,
    /// A 4-byte big-endian length (99), then the 99 bytes.
    LengthU32Be,
}

impl Framing {
    const ALL: [Framing; 3] = [Framing::Lines, Framing::Syslog, Framing::LengthU32Be];

    /// What overhear's `--framing` is given.
    fn flag(self) -> &'static str {
        match self {
            Framing::Lines => "lines",
            Framing::Syslog => "syslog",
            Framing::LengthU32Be => "length:u32be",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Framing::Lines => "overhear --framing lines",
            Framing::Syslog => "overhear --framing syslog",
            Framing::LengthU32Be => "overhear --framing length:u32be",
        }
    }

    /// What goes on the wire before each message's body.
    fn header(self) -> Vec<u8> {
        let body = LINE_LEN - 1;
        match self {
            Framing::Lines => Vec::new(),
            Framing::Syslog => format!("{body} ").into_bytes(),
            Framing::LengthU32Be => (body as u32).to_be_bytes().to_vec(),
        }
    }

    /// Bytes on the wire per message.
    fn record_len(self) -> usize {
        match self {
            Framing::Lines => LINE_LEN,
            Framing::Syslog | Framing::LengthU32Be => self.header().len() + LINE_LEN - 1,
        }
    }
}

/// Makes one client's messages in a framing: its [`LineMaker`] lines, each behind the framing's
/// header and, unless the framing is lines, without its newline.
struct FrameMaker {
    lines: LineMaker,
    header: Vec<u8>,
    newline: bool,
}

impl FrameMaker {
    fn new(framing: Framing, client: usize) -> FrameMaker {
        FrameMaker {
            lines: LineMaker::new(client),
            header: framing.header(),
            newline: framing == Framing::Lines,
        }
    }

    fn append(&self, seq: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header);
        self.lines.append(seq, out);
        if !self.newline {
            out.pop();
        }
    }
}

/// Length of the `[N] ` prefix for client number `n`.
fn prefix_len(n: usize) -> u64 {
    n.to_string().len() as u64 + 3
}

struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(title: &str, header: &[&str]) -> Table {
        Table {
            title: title.to_string(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn print(&self) {
        println!("\n### {}\n", self.title);
        println!("| {} |", self.header.join(" | "));
        println!("|{}", "---|".repeat(self.header.len()));
        for row in &self.rows {
            println!("| {} |", row.join(" | "));
        }
        let _ = std::io::stdout().flush();
    }
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 && ours > 0.0 {
        format!("{:.2}×", ours / theirs)
    } else {
        String::from("—")
    }
}

// ---------------------------------------------------------------- throughput

struct Verdict {
    lost: u64,
    duplicated: u64,
    spliced: u64,
    misattributed: u64,
}

/// Reads the output file and checks every expected line arrived once, whole and attributed.
fn verify_lines(path: &Path, kind: Kind, clients: usize, lines: usize) -> Verdict {
    let mut seen = vec![vec![0u8; lines]; clients];
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut verdict = Verdict {
        lost: 0,
        duplicated: 0,
        spliced: 0,
        misattributed: 0,
    };
    let mut expected = Vec::with_capacity(LINE_LEN);
    let makers: Vec<LineMaker> = (0..clients).map(LineMaker::new).collect();
    let reader = BufReader::with_capacity(1 << 20, File::open(path).expect("output file"));
    for text in reader.split(b'\n') {
        let Ok(mut text) = text else { break };
        text.push(b'\n');
        let (prefix, body) = if kind.numbers_clients() {
            match text.iter().position(|&b| b == b' ') {
                Some(i) if text.first() == Some(&b'[') => (
                    String::from_utf8_lossy(&text[..i]).into_owned(),
                    &text[i + 1..],
                ),
                _ => {
                    verdict.spliced += 1;
                    continue;
                }
            }
        } else {
            (String::new(), &text[..])
        };
        let parsed = std::str::from_utf8(body).ok().and_then(|s| {
            let (c, rest) = s.strip_prefix('c')?.split_once('-')?;
            Some((
                c.parse::<usize>().ok()?,
                rest.get(..10)?.parse::<usize>().ok()?,
            ))
        });
        let Some((c, seq)) = parsed.filter(|&(c, seq)| c < clients && seq < lines) else {
            verdict.spliced += 1;
            continue;
        };
        expected.clear();
        makers[c].append(seq, &mut expected);
        if body != expected.as_slice() {
            verdict.spliced += 1;
            continue;
        }
        if kind.numbers_clients() && *owner.entry(prefix).or_insert(c) != c {
            verdict.misattributed += 1;
        }
        seen[c][seq] = seen[c][seq].saturating_add(1);
    }
    for count in seen.iter().flatten() {
        match count {
            0 => verdict.lost += 1,
            1 => {}
            n => verdict.duplicated += u64::from(*n) - 1,
        }
    }
    verdict
}

/// One throughput run: MB/s, lines/s, and what the output held.
struct Throughput {
    mb_s: f64,
    lines_s: f64,
    verdict: Option<Verdict>,
    /// Bytes in the output when the run ended, against the bytes the clients sent.
    written: u64,
    sent: u64,
    complete: bool,
    /// overhear's summary after its stop (`None` for other servers, or when it logged none).
    summary: Option<Summary>,
    /// CPU time (user and system) the server used for the run, in seconds.
    cpu: f64,
}

/// One run of `kind` listening on `listen` (TCP, TLS, or overhear on a Unix socket), its
/// clients framing their messages as `kind` reads them (lines but for overhear's `--framing`).
/// MB/s counts the bytes the clients send. overhear gets a SIGTERM at the end, for its summary.
fn throughput_run(kind: Kind, listen: &Listen, lines: usize, dir: &Path) -> Option<Throughput> {
    let scenario = match listen {
        Listen::Unix(_) => "throughput-unix",
        Listen::Tls(_) => "throughput-tls",
        Listen::Tcp | Listen::Udp => "throughput",
    };
    let (path, log) = run_files(dir, scenario, kind);
    let mut server = Running::start_on(kind, listen.clone(), Some(&path), &log)?;
    let framing = kind.framing();
    let raw = (THROUGHPUT_CLIENTS * lines * framing.record_len()) as u64;
    // Every message prints as its line, whatever the framing.
    let printed = (THROUGHPUT_CLIENTS * lines * LINE_LEN) as u64;
    let expected = if kind.numbers_clients() {
        printed + (2..THROUGHPUT_CLIENTS + 2).map(prefix_len).sum::<u64>() * lines as u64
    } else {
        printed
    };
    let cpu_before = server.cpu_seconds();
    let start = Instant::now();
    let senders: Vec<_> = (0..THROUGHPUT_CLIENTS)
        .map(|c| {
            let endpoint = server.endpoint();
            let listen = listen.clone();
            thread::spawn(move || {
                let mut stream =
                    Client::connect(&listen, &endpoint, SCENARIO_LIMIT).expect("connect");
                let mut block = Vec::with_capacity(1 << 20);
                let maker = FrameMaker::new(framing, c);
                for seq in 0..lines {
                    maker.append(seq, &mut block);
                    if block.len() >= (1 << 20) - framing.record_len() {
                        stream.write_all(&block).expect("send");
                        block.clear();
                    }
                }
                stream.write_all(&block).expect("send");
                let _ = stream.finish();
                // Keep the socket until the server has read it all (EOF from the server would
                // come only at its stop), so closing never resets unread data.
                stream
            })
        })
        .collect();
    let mut streams: Vec<Client> = senders
        .into_iter()
        .map(|h| h.join().expect("sender"))
        .collect();
    let complete = !kind.prints() || server.wait_output(expected, SCENARIO_LIMIT);
    let elapsed = start.elapsed().as_secs_f64();
    for stream in &mut streams {
        let _ = stream.wait_close(TLS_STEP_LIMIT);
    }
    let cpu = server.cpu_seconds() - cpu_before;
    drop(streams);
    let summary = if kind.is_overhear() {
        server.terminate(Duration::from_secs(10));
        summary_counts(&log)
    } else {
        None
    };
    drop(server);
    if let Listen::Unix(socket) = listen {
        let _ = std::fs::remove_file(socket);
    }
    let written = std::fs::metadata(&path).map_or(0, |m| m.len());
    let verdict = kind
        .lines_checked()
        .then(|| verify_lines(&path, kind, THROUGHPUT_CLIENTS, lines));
    let _ = std::fs::remove_file(&path);
    // Let the file system finish with this run's output (writeback, journal, discards) before
    // the next run starts, so no run pays for the one before it.
    let _ = Command::new("sync").status();
    Some(Throughput {
        mb_s: raw as f64 / 1e6 / elapsed,
        lines_s: (THROUGHPUT_CLIENTS * lines) as f64 / elapsed,
        verdict,
        written,
        sent: raw,
        complete,
        summary,
        cpu,
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// One server on one listener among throughput runs compared in one table (unix, tls, framing).
struct Compared {
    label: String,
    kind: Kind,
    listen: Listen,
    results: Vec<Throughput>,
}

impl Compared {
    fn new(label: impl Into<String>, kind: Kind, listen: Listen) -> Compared {
        Compared {
            label: label.into(),
            kind,
            listen,
            results: Vec::new(),
        }
    }

    /// The median MB/s of the rounds.
    fn mb_s(&self) -> f64 {
        median(&mut self.results.iter().map(|r| r.mb_s).collect::<Vec<_>>())
    }

    /// MB/s and lines/s (medians of the rounds), then lost, duplicated, spliced and
    /// misattributed lines (the worst round's; runs that timed out are said beside lost).
    fn checked_cells(&self) -> Vec<String> {
        let worst = |f: fn(&Verdict) -> u64| {
            self.results
                .iter()
                .filter_map(|r| r.verdict.as_ref().map(f))
                .max()
                .map_or("n/a".to_string(), |n| n.to_string())
        };
        let incomplete = self.results.iter().filter(|r| !r.complete).count();
        vec![
            format!("{:.0}", self.mb_s()),
            format!(
                "{:.0}",
                median(&mut self.results.iter().map(|r| r.lines_s).collect::<Vec<_>>())
            ),
            if incomplete > 0 {
                format!("{} ({incomplete} runs timed out)", worst(|v| v.lost))
            } else {
                worst(|v| v.lost)
            },
            worst(|v| v.duplicated),
            worst(|v| v.spliced),
            if self.kind.numbers_clients() {
                worst(|v| v.misattributed)
            } else {
                "n/a".into()
            },
        ]
    }

    /// Each round's MB/s.
    fn rounds_cell(&self) -> String {
        self.results
            .iter()
            .map(|r| format!("{:.0}", r.mb_s))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Measures each of `runs` once a round, one after the other, after an unmeasured warm-up run
/// of the first (the page cache, as in the throughput scenario).
fn measure_rounds(runs: &mut [Compared], lines: usize, rounds: usize, dir: &Path) {
    if let Some(first) = runs.first() {
        let _ = throughput_run(first.kind, &first.listen, lines / 4, dir);
    }
    for _ in 0..rounds {
        for run in runs.iter_mut() {
            run.results
                .extend(throughput_run(run.kind, &run.listen, lines, dir));
        }
    }
}

fn throughput(kinds: &[Kind], mib: usize, rounds: usize, dir: &Path) {
    let lines = mib * 1024 * 1024 / LINE_LEN;
    let mut table = Table::new(
        &format!(
            "throughput: {THROUGHPUT_CLIENTS} clients × {mib} MiB of {LINE_LEN}-byte lines, \
             stdout to a file (median of {rounds} rounds)"
        ),
        &[
            "server",
            "MB/s",
            "lines/s",
            "lost",
            "duplicated",
            "spliced",
            "misattributed",
            "overhear vs this",
            "this as % of copy sink",
            "server CPU s per GB",
            "each round MB/s",
        ],
    );
    // The first writes of a run into fresh page cache are slower on a VM; warm it up, unmeasured,
    // so the first server measured is not penalised.
    if let Some(&first) = kinds.first() {
        let _ = throughput_run(first, &Listen::Tcp, lines / 4, dir);
    }
    let mut runs: Vec<(Kind, Vec<Throughput>)> = kinds.iter().map(|&k| (k, Vec::new())).collect();
    for _ in 0..rounds {
        for (kind, results) in &mut runs {
            results.extend(throughput_run(*kind, &Listen::Tcp, lines, dir));
        }
    }
    let mb_s =
        |results: &[Throughput]| median(&mut results.iter().map(|r| r.mb_s).collect::<Vec<_>>());
    let median_of = |kind: Kind| {
        runs.iter()
            .find(|(k, _)| *k == kind)
            .map_or(0.0, |(_, r)| mb_s(r))
    };
    let ours = median_of(Kind::Overhear);
    let copy = median_of(Kind::Copy);
    for (kind, results) in &runs {
        if results.is_empty() {
            table
                .rows
                .push(vec![kind.name().into(), "not installed".into()]);
            continue;
        }
        let worst = |f: fn(&Verdict) -> u64| {
            results
                .iter()
                .filter_map(|r| r.verdict.as_ref().map(f))
                .max()
                .map_or("n/a".to_string(), |n| n.to_string())
        };
        // The copy sink is counted in bytes: short of what was sent, or beyond it.
        let worst_bytes = |f: fn(&Throughput) -> u64| {
            let n = results.iter().map(f).max().unwrap_or(0);
            format!("{n} bytes")
        };
        let (lost, duplicated) = if kind.lines_checked() {
            (worst(|v| v.lost), worst(|v| v.duplicated))
        } else if kind.prints() {
            (
                worst_bytes(|r| r.sent.saturating_sub(r.written)),
                worst_bytes(|r| r.written.saturating_sub(r.sent)),
            )
        } else {
            ("n/a".into(), "n/a".into())
        };
        let incomplete = results.iter().filter(|r| !r.complete).count();
        let percent = if copy > 0.0 {
            format!("{:.0} %", mb_s(results) / copy * 100.0)
        } else {
            String::from("—")
        };
        table.rows.push(vec![
            kind.name().into(),
            format!("{:.0}", mb_s(results)),
            format!(
                "{:.0}",
                median(&mut results.iter().map(|r| r.lines_s).collect::<Vec<_>>())
            ),
            if incomplete > 0 {
                format!("{lost} ({incomplete} runs timed out)")
            } else {
                lost
            },
            duplicated,
            worst(|v| v.spliced),
            if kind.numbers_clients() {
                worst(|v| v.misattributed)
            } else {
                "n/a".into()
            },
            ratio(ours, mb_s(results)),
            percent,
            format!(
                "{:.2}",
                median(
                    &mut results
                        .iter()
                        .map(|r| r.cpu / (r.sent as f64 / 1e9))
                        .collect::<Vec<_>>()
                )
            ),
            results
                .iter()
                .map(|r| format!("{:.0}", r.mb_s))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    table.print();
    if ours > 0.0 {
        let mut against = Vec::new();
        let socat = median_of(Kind::Socat);
        if socat > 0.0 {
            against.push(format!("{} socat's", ratio(ours, socat)));
        }
        if copy > 0.0 {
            against.push(format!(
                "{:.0} % of the copy sink's (the most a listener that stores every byte \
                 does here)",
                ours / copy * 100.0
            ));
        }
        if !against.is_empty() {
            println!("\noverhear's median MB/s: {}.", against.join(", "));
        }
    }
}

// ---------------------------------------------------------------- unix

/// overhear's stream throughput through a Unix socket beside the same through TCP: the
/// throughput run with a Unix connector, both measured in each round, one after the other.
fn unix(kinds: &[Kind], mib: usize, rounds: usize, dir: &Path) {
    if !kinds.contains(&Kind::Overhear) {
        println!("\nunix: not run (overhear is not among --peers).");
        return;
    }
    let lines = mib * 1024 * 1024 / LINE_LEN;
    let mut table = Table::new(
        &format!(
            "unix: overhear, {THROUGHPUT_CLIENTS} clients × {mib} MiB of {LINE_LEN}-byte lines \
             through a Unix socket and through TCP, stdout to a file (median of {rounds} rounds)"
        ),
        &[
            "listener",
            "MB/s",
            "lines/s",
            "lost",
            "duplicated",
            "spliced",
            "misattributed",
            "unix ÷ tcp",
            "each round MB/s",
        ],
    );
    let socket = dir.join("overhear.sock");
    let mut runs = [
        Compared::new("tcp 127.0.0.1", Kind::Overhear, Listen::Tcp),
        Compared::new(
            format!("unix {}", socket.display()),
            Kind::Overhear,
            Listen::Unix(socket),
        ),
    ];
    measure_rounds(&mut runs, lines, rounds, dir);
    let tcp = runs[0].mb_s();
    let over_unix = runs[1].mb_s();
    for run in &runs {
        let mut row = vec![run.label.clone()];
        row.extend(run.checked_cells());
        row.push(match run.listen {
            Listen::Unix(_) => ratio(over_unix, tcp),
            Listen::Tcp | Listen::Udp | Listen::Tls(_) => String::from("—"),
        });
        row.push(run.rounds_cell());
        table.rows.push(row);
    }
    table.print();
}

// ---------------------------------------------------------------- tls

/// How the tls tables name a server listening for TLS.
fn tls_name(kind: Kind) -> String {
    match kind {
        Kind::Overhear => "overhear --tls".into(),
        Kind::Socat => "socat -u OPENSSL-LISTEN".into(),
        Kind::Ncat => "ncat --ssl".into(),
        other => other.name().into(),
    }
}

/// TLS: the throughput run over TLS to each server of `kinds` that speaks it, beside overhear
/// over plain TCP in the same rounds (the reference), then the handshake churn.
fn tls(kinds: &[Kind], mib: usize, rounds: usize, dir: &Path) {
    let tls = match Tls::make(dir) {
        Ok(tls) => Arc::new(tls),
        Err(why) => {
            println!("\ntls: not run ({why}).");
            return;
        }
    };
    let lines = mib * 1024 * 1024 / LINE_LEN;
    let mut table = Table::new(
        &format!(
            "tls: {THROUGHPUT_CLIENTS} clients × {mib} MiB of {LINE_LEN}-byte lines over TLS \
             (rustls clients, one P-256 certificate for all), stdout to a file (median of \
             {rounds} rounds)"
        ),
        &[
            "server",
            "MB/s",
            "lines/s",
            "lost",
            "duplicated",
            "spliced",
            "misattributed",
            "÷ overhear over plain TCP",
            "overhear --tls vs this",
            "each round MB/s",
        ],
    );
    let mut runs = vec![Compared::new(
        "overhear, plain TCP (reference)",
        Kind::Overhear,
        Listen::Tcp,
    )];
    runs.extend(
        kinds
            .iter()
            .filter(|k| k.speaks_tls())
            .map(|&kind| Compared::new(tls_name(kind), kind, Listen::Tls(Arc::clone(&tls)))),
    );
    measure_rounds(&mut runs, lines, rounds, dir);
    let plain = runs[0].mb_s();
    let ours = runs
        .iter()
        .find(|r| r.kind == Kind::Overhear && matches!(r.listen, Listen::Tls(_)))
        .map_or(0.0, Compared::mb_s);
    for run in &runs {
        let mut row = vec![run.label.clone()];
        if run.results.is_empty() {
            row.push("not installed".into());
            table.rows.push(row);
            continue;
        }
        row.extend(run.checked_cells());
        if matches!(run.listen, Listen::Tls(_)) {
            row.push(ratio(run.mb_s(), plain));
            row.push(ratio(ours, run.mb_s()));
        } else {
            row.extend(["—".into(), "—".into()]);
        }
        row.push(run.rounds_cell());
        table.rows.push(row);
    }
    table.print();
    tls_handshakes(kinds, &tls, dir);
}

/// How one thread's TLS connections of the handshake churn went.
#[derive(Default)]
struct Handshakes {
    /// Connections that failed before their close_notify was sent (connect, handshake, send).
    failed: usize,
    /// Connections the server closed without a close_notify of its own.
    no_close_notify: usize,
    /// Connections the server reset, or did not close within [`TLS_STEP_LIMIT`].
    not_closed: usize,
    /// What the first handshake agreed.
    negotiated: Option<String>,
}

/// A churn of TLS connections from `CHURN_THREADS` threads against each server of `kinds` that
/// speaks TLS: each connects, runs a full handshake (the clients resume no session), sends one
/// line, sends close_notify and reads until the server closes. The rate counts the connections
/// that sent their line and close_notify, over the time until the last connection ended.
fn tls_handshakes(kinds: &[Kind], tls: &Arc<Tls>, dir: &Path) {
    let mut table = Table::new(
        &format!(
            "tls handshakes: {TLS_HANDSHAKES} TLS connections from {CHURN_THREADS} threads, \
             each connect, full handshake, one line, close_notify, wait for the server's close"
        ),
        &[
            "server",
            "handshakes/s",
            "failures",
            "lines printed",
            "server's close",
            "server CPU per connection",
            "overhear vs this",
            "negotiated",
        ],
    );
    let listen = Listen::Tls(Arc::clone(tls));
    let per_thread = TLS_HANDSHAKES / CHURN_THREADS;
    let total = per_thread * CHURN_THREADS;
    let mut rates: Vec<(Kind, f64)> = Vec::new();
    for &kind in kinds.iter().filter(|k| k.speaks_tls()) {
        let (path, log) = run_files(dir, "tls-handshakes", kind);
        let Some(server) = Running::start_on(kind, listen.clone(), Some(&path), &log) else {
            table
                .rows
                .push(vec![tls_name(kind), "not installed".into()]);
            continue;
        };
        let raw = (total * LINE_LEN) as u64;
        let expected = if kind.numbers_clients() {
            raw + (2..total + 2).map(prefix_len).sum::<u64>()
        } else {
            raw
        };
        let cpu_before = server.cpu_seconds();
        let start = Instant::now();
        let workers: Vec<_> = (0..CHURN_THREADS)
            .map(|t| {
                let endpoint = server.endpoint();
                let listen = listen.clone();
                thread::spawn(move || {
                    let mut buf = Vec::with_capacity(LINE_LEN);
                    let mut went = Handshakes::default();
                    for i in 0..per_thread {
                        buf.clear();
                        line(t, i, &mut buf);
                        let sent = Client::connect(&listen, &endpoint, TLS_STEP_LIMIT).and_then(
                            |mut client| {
                                client.write_all(&buf)?;
                                client.finish()?;
                                Ok(client)
                            },
                        );
                        let mut client = match sent {
                            Ok(client) => client,
                            Err(_) => {
                                went.failed += 1;
                                continue;
                            }
                        };
                        if went.negotiated.is_none() {
                            went.negotiated = client.negotiated();
                        }
                        match client.wait_close(TLS_STEP_LIMIT) {
                            Ok(()) => {}
                            Err(err) if err.kind() == ErrorKind::UnexpectedEof => {
                                went.no_close_notify += 1;
                            }
                            Err(_) => went.not_closed += 1,
                        }
                    }
                    went
                })
            })
            .collect();
        let mut went = Handshakes::default();
        for worker in workers {
            let one = worker.join().expect("handshake thread");
            went.failed += one.failed;
            went.no_close_notify += one.no_close_notify;
            went.not_closed += one.not_closed;
            went.negotiated = went.negotiated.or(one.negotiated);
        }
        let elapsed = start.elapsed().as_secs_f64();
        let rate = (total - went.failed) as f64 / elapsed;
        let complete = server.wait_output(expected, Duration::from_secs(60));
        // Let socat reap its last children, so their time counts too.
        thread::sleep(Duration::from_millis(500));
        let cpu = (server.cpu_seconds() - cpu_before) / total as f64;
        drop(server);
        let v = verify_lines(&path, kind, CHURN_THREADS, per_thread);
        let closed = total - went.failed;
        let close = if went.no_close_notify + went.not_closed == 0 {
            format!("close_notify: all {closed}")
        } else {
            format!(
                "close_notify: {} of {closed}; without: {}; reset or none in {} s: {}",
                closed - went.no_close_notify - went.not_closed,
                went.no_close_notify,
                TLS_STEP_LIMIT.as_secs(),
                went.not_closed
            )
        };
        rates.push((kind, rate));
        table.rows.push(vec![
            tls_name(kind),
            format!("{rate:.0}"),
            went.failed.to_string(),
            format!(
                "{}/{total}{}",
                total as u64 - v.lost,
                if complete { "" } else { " (timed out)" }
            ),
            close,
            format!("{:.0} µs", cpu * 1e6),
            String::new(),
            went.negotiated.unwrap_or_else(|| "—".into()),
        ]);
        let _ = std::fs::remove_file(&path);
    }
    let ours = rates
        .iter()
        .find(|(k, _)| *k == Kind::Overhear)
        .map_or(0.0, |r| r.1);
    for row in &mut table.rows {
        let theirs = rates
            .iter()
            .find(|(k, _)| tls_name(*k) == row[0])
            .map_or(0.0, |r| r.1);
        if row.len() > 6 {
            row[6] = ratio(ours, theirs);
        }
    }
    table.print();
}

// ---------------------------------------------------------------- framing

/// What overhear's summaries counted, against what was sent: once when every round's counts
/// are the sent ones, else each round's.
fn summary_cell(results: &[Throughput], messages: u64, bytes: u64) -> String {
    let counts: Vec<Option<(u64, u64)>> = results
        .iter()
        .map(|r| r.summary.as_ref().map(|s| (s.messages, s.bytes)))
        .collect();
    if !counts.is_empty() && counts.iter().all(|c| *c == Some((messages, bytes))) {
        format!("{messages} messages, {bytes} bytes: as sent")
    } else {
        counts
            .iter()
            .map(|c| {
                c.map_or("no summary".into(), |(m, b)| {
                    format!("{m}/{messages} messages, {b}/{bytes} bytes")
                })
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// overhear's throughput with each framing, in the same rounds: the same messages (a line's 99
/// bytes) as lines, as octet-counted syslog records and behind u32be length prefixes.
fn framing(kinds: &[Kind], mib: usize, rounds: usize, dir: &Path) {
    if !kinds.contains(&Kind::Overhear) {
        println!("\nframing: not run (overhear is not among --peers).");
        return;
    }
    let lines = mib * 1024 * 1024 / LINE_LEN;
    let messages = (THROUGHPUT_CLIENTS * lines) as u64;
    let mut table = Table::new(
        &format!(
            "framing: overhear, {THROUGHPUT_CLIENTS} clients × {lines} messages ({mib} MiB as \
             {LINE_LEN}-byte lines) framed by each --framing, stdout to a file (median of \
             {rounds} rounds)"
        ),
        &[
            "--framing",
            "bytes per message on the wire",
            "MB/s on the wire",
            "messages/s",
            "lost",
            "duplicated",
            "spliced",
            "misattributed",
            "overhear's summary",
            "÷ lines",
            "each round MB/s",
        ],
    );
    let mut runs: Vec<Compared> = Framing::ALL
        .iter()
        .map(|&f| Compared::new(f.flag(), Kind::OverhearFraming(f), Listen::Tcp))
        .collect();
    measure_rounds(&mut runs, lines, rounds, dir);
    let by_lines = runs[0].mb_s();
    for run in &runs {
        let framing = run.kind.framing();
        let wire = messages * framing.record_len() as u64;
        let mut row = vec![run.label.clone(), framing.record_len().to_string()];
        row.extend(run.checked_cells());
        row.push(summary_cell(&run.results, messages, wire));
        row.push(if framing == Framing::Lines {
            String::from("—")
        } else {
            ratio(run.mb_s(), by_lines)
        });
        row.push(run.rounds_cell());
        table.rows.push(row);
    }
    table.print();
}

// ---------------------------------------------------------------- churn

fn churn(kinds: &[Kind], dir: &Path) {
    let mut table = Table::new(
        &format!(
            "churn: {CHURN_CYCLES} connect-send-one-line-close cycles from {CHURN_THREADS} threads"
        ),
        &[
            "server",
            "connections/s",
            "lines printed",
            "server CPU per connection",
            "overhear vs this",
        ],
    );
    let mut results: Vec<(Kind, f64)> = Vec::new();
    for &kind in kinds {
        let (path, log) = run_files(dir, "churn", kind);
        let Some(server) = Running::start(kind, Some(&path), &log) else {
            table
                .rows
                .push(vec![kind.name().into(), "not installed".into()]);
            continue;
        };
        let per_thread = CHURN_CYCLES / CHURN_THREADS;
        let raw = (CHURN_CYCLES * LINE_LEN) as u64;
        let expected = if kind.numbers_clients() {
            raw + (2..CHURN_CYCLES + 2).map(prefix_len).sum::<u64>()
        } else {
            raw
        };
        let cpu_before = server.cpu_seconds();
        let start = Instant::now();
        let workers: Vec<_> = (0..CHURN_THREADS)
            .map(|t| {
                let addr = server.addr;
                thread::spawn(move || {
                    let mut buf = Vec::with_capacity(LINE_LEN);
                    let mut failures = 0;
                    for i in 0..per_thread {
                        buf.clear();
                        line(t, i, &mut buf);
                        match TcpStream::connect(addr).and_then(|mut s| s.write_all(&buf)) {
                            Ok(()) => {}
                            Err(_) => failures += 1,
                        }
                    }
                    failures
                })
            })
            .collect();
        let failures: usize = workers
            .into_iter()
            .map(|h| h.join().expect("churn thread"))
            .sum();
        let complete = !kind.prints() || server.wait_output(expected, Duration::from_secs(60));
        let elapsed = start.elapsed().as_secs_f64();
        let rate = CHURN_CYCLES as f64 / elapsed;
        // A discard sink's threads may still be ending: let them, so their time counts too.
        thread::sleep(Duration::from_millis(500));
        let cpu = (server.cpu_seconds() - cpu_before) / CHURN_CYCLES as f64;
        let printed = if kind.prints() {
            let count = if kind.lines_checked() {
                let v = verify_lines(&path, kind, CHURN_THREADS, per_thread);
                format!("{}/{CHURN_CYCLES}", CHURN_CYCLES as u64 - v.lost)
            } else {
                bytes_cell(server.output_len(), expected)
            };
            format!(
                "{count}{}{}",
                if failures > 0 {
                    format!(" ({failures} connects failed)")
                } else {
                    String::new()
                },
                if complete { "" } else { " (timed out)" }
            )
        } else {
            String::from("n/a")
        };
        results.push((kind, rate));
        table.rows.push(vec![
            kind.name().into(),
            format!("{rate:.0}"),
            printed,
            format!("{:.0} µs", cpu * 1e6),
        ]);
        drop(server);
        let _ = std::fs::remove_file(&path);
    }
    let ours = results
        .iter()
        .find(|(k, _)| *k == Kind::Overhear)
        .map_or(0.0, |r| r.1);
    for row in &mut table.rows {
        let theirs = results
            .iter()
            .find(|(k, _)| k.name() == row[0])
            .map_or(0.0, |r| r.1);
        if row.len() > 3 {
            row.push(ratio(ours, theirs));
        }
    }
    table.print();
}

// ---------------------------------------------------------------- concurrent

/// Connects `n` clients from 8 threads at once, spread over 127.0.x.1 source addresses so
/// 50,000 fit in the ephemeral port range. Returns the connections and the slowest connect: a
/// burst that overflows the server's listen backlog costs the unlucky clients a SYN retry (1 s).
fn connect_many(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, Duration) {
    const THREADS: usize = 8;
    let per_thread = n.div_ceil(THREADS);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            thread::spawn(move || {
                let mut streams = Vec::with_capacity(per_thread);
                let mut slowest = Duration::ZERO;
                for i in (t * per_thread..((t + 1) * per_thread).min(n)).rev() {
                    let source =
                        SocketAddr::from((Ipv4Addr::new(127, 0, 1 + (i / 20_000) as u8, 1), 0));
                    let Ok(socket) =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    else {
                        break;
                    };
                    if socket.bind(&source.into()).is_err() {
                        break;
                    }
                    let start = Instant::now();
                    match socket.connect_timeout(&addr.into(), Duration::from_secs(10)) {
                        Ok(()) => streams.push((i, socket.into())),
                        Err(_) => break,
                    }
                    slowest = slowest.max(start.elapsed());
                }
                (streams, slowest)
            })
        })
        .collect();
    let mut all: Vec<(usize, TcpStream)> = Vec::with_capacity(n);
    let mut slowest = Duration::ZERO;
    for handle in threads {
        let (streams, slow) = handle.join().expect("connect thread");
        all.extend(streams);
        slowest = slowest.max(slow);
    }
    all.sort_by_key(|(i, _)| *i);
    (all.into_iter().map(|(_, s)| s).collect(), slowest)
}

/// What one concurrent run measured, kept until the row for every server of its `N` is known.
struct ConcurrentRow {
    kind: Kind,
    cells: Vec<String>,
    exit: Option<Duration>,
    eof: Option<Duration>,
}

/// `floors` holds the floor table's time for each `N` (threads on recycled stacks): each exit is
/// also shown as a multiple of it, and of the discard and join sinks' exits if they ran.
fn concurrent(kinds: &[Kind], sizes: &[usize], floors: &[(usize, Duration)], dir: &Path) {
    let mut table = Table::new(
        "concurrent: N clients connected at once, one line each, then SIGTERM",
        &[
            "server",
            "N",
            "connected",
            "lines printed",
            "slowest connect",
            "RSS per client",
            "exit after SIGTERM",
            "exit ÷ floor",
            "exit ÷ discard sink's",
            "exit ÷ join sink's",
            "all clients EOF",
        ],
    );
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    for &n in sizes {
        let mut rows: Vec<ConcurrentRow> = Vec::new();
        for &kind in kinds {
            let (path, log) = run_files(dir, "concurrent", kind);
            let Some(mut server) = Running::start(kind, Some(&path), &log) else {
                rows.push(ConcurrentRow {
                    kind,
                    cells: vec![n.to_string(), "not installed".into()],
                    exit: None,
                    eof: None,
                });
                continue;
            };
            // Let the readiness probe's worker end before the baseline is read.
            thread::sleep(Duration::from_millis(300));
            let rss_before = server.rss_kib();
            let (mut streams, slowest) = connect_many(server.addr, n);
            let connected = streams.len();
            let mut buf = Vec::new();
            for (i, s) in streams.iter_mut().enumerate() {
                buf.clear();
                line(0, i, &mut buf);
                let _ = s.write_all(&buf);
            }
            let raw = (connected * LINE_LEN) as u64;
            let expected = if kind.numbers_clients() {
                raw + (2..connected + 2).map(prefix_len).sum::<u64>()
            } else {
                raw
            };
            let printed = if kind.prints() {
                let all = server.wait_output(expected, Duration::from_secs(30));
                let count = if kind.lines_checked() {
                    let v = verify_lines(&path, kind, 1, connected.max(1));
                    (connected as u64 - v.lost).to_string()
                } else {
                    bytes_cell(server.output_len(), expected)
                };
                format!("{count}{}", if all { "" } else { " (timed out)" })
            } else {
                String::from("n/a")
            };
            thread::sleep(Duration::from_millis(200));
            let rss_after = server.rss_kib();
            let per_client = rss_after.saturating_sub(rss_before) as f64 / connected.max(1) as f64;
            let start = Instant::now();
            let exit = server.terminate(Duration::from_secs(10));
            let eof = all_eof(&mut streams, start, Duration::from_secs(5));
            rows.push(ConcurrentRow {
                kind,
                cells: vec![
                    n.to_string(),
                    connected.to_string(),
                    printed,
                    format!("{:.0} ms", slowest.as_secs_f64() * 1e3),
                    format!("{per_client:.1} KiB"),
                ],
                exit,
                eof,
            });
            drop(streams);
            drop(server);
            let _ = std::fs::remove_file(&path);
        }
        let floor = floors
            .iter()
            .find(|(size, _)| *size == n)
            .map_or(0.0, |(_, d)| d.as_secs_f64());
        let exit_of = |kind: Kind| {
            rows.iter()
                .find(|r| r.kind == kind)
                .and_then(|r| r.exit)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        let (discard, join) = (exit_of(Kind::Discard), exit_of(Kind::Join));
        for row in rows {
            let mut cells = vec![row.kind.name().to_string()];
            cells.extend(row.cells);
            if cells.len() > 3 {
                let exit = row.exit.map_or(0.0, |d| d.as_secs_f64());
                cells.extend([
                    row.exit.map_or("no exit in 10 s".into(), ms),
                    ratio(exit, floor),
                    ratio(exit, discard),
                    ratio(exit, join),
                    row.eof.map_or("not all in 5 s".into(), ms),
                ]);
            }
            table.rows.push(cells);
        }
    }
    table.print();
}

/// The floor under a thread-per-connection shutdown on this machine: `n` threads with
/// overhear's stack size, blocked in `poll(2)` on a pipe, woken by one write and joined; once as
/// `std::thread`s and once on the recycled stacks overhear's workers run on. No sockets, no
/// output: only waking, ending and joining threads. Returns each `n` with the time on recycled
/// stacks, the floor the concurrent table measures each server's exit against.
fn thread_floor(sizes: &[usize]) -> Vec<(usize, Duration)> {
    let mut table = Table::new(
        "floor: N idle threads (128 KiB stacks) woken by one pipe write and joined",
        &["N", "std::thread", "recycled stacks (overhear)", "speed-up"],
    );
    let mut floors = Vec::new();
    // A std::thread holds about four mappings (stack, guard, signal stack and its guard), and
    // std aborts the process when it cannot map a signal stack: stay clear of the limit.
    let max_map_count: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65_530);
    for &n in sizes {
        let mut stacks = Stacks::new(overhear::worker::WORKER_STACK);
        let (threads, wake) = idle_threads(n, |body| stacks.spawn("idle", body).ok());
        let spawned = threads.len();
        let ours = wake_and_join(threads, &wake, |thread| {
            let _ = thread.join(&mut stacks);
        });
        floors.push((n, ours));
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
        let (std_cell, speed_up) = if 4 * n + 2_000 > max_map_count {
            (
                format!("not run: over vm.max_map_count ({max_map_count})"),
                String::from("—"),
            )
        } else {
            let (threads, wake) = idle_threads(n, |body| {
                thread::Builder::new()
                    .stack_size(overhear::worker::WORKER_STACK)
                    .spawn(body)
                    .ok()
            });
            let std_took = wake_and_join(threads, &wake, |handle| {
                let _ = handle.join();
            });
            (
                ms(std_took),
                ratio(std_took.as_secs_f64(), ours.as_secs_f64()),
            )
        };
        table
            .rows
            .push(vec![spawned.to_string(), std_cell, ms(ours), speed_up]);
    }
    table.print();
    floors
}

/// Starts up to `n` threads with `spawn`, each blocked in `poll(2)` until a pipe is written;
/// returns those that started and the pipe's write end.
fn idle_threads<H>(
    n: usize,
    mut spawn: impl FnMut(Box<dyn FnOnce() + Send>) -> Option<H>,
) -> (Vec<H>, OwnedFd) {
    let (read, write) = rustix::pipe::pipe().expect("a pipe");
    let read = Arc::new(read);
    let threads = (0..n)
        .map_while(|_| {
            let read = Arc::clone(&read);
            spawn(Box::new(move || {
                let mut fds = [rustix::event::PollFd::new(
                    &*read,
                    rustix::event::PollFlags::IN,
                )];
                let _ = rustix::event::poll(&mut fds, None);
            }))
        })
        .collect();
    (threads, write)
}

/// Wakes the threads of [`idle_threads`] with one write and joins each; returns the time taken.
fn wake_and_join<H>(threads: Vec<H>, wake: &OwnedFd, mut join: impl FnMut(H)) -> Duration {
    // Let every thread reach its poll; the measurement starts at the wake.
    thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    rustix::io::write(wake, &[1]).expect("wake");
    threads.into_iter().for_each(&mut join);
    start.elapsed()
}

/// Waits until every stream reads EOF (or a reset); returns the time since `start`.
fn all_eof(streams: &mut [TcpStream], start: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 256];
    for s in streams.iter_mut() {
        loop {
            let left = limit.checked_sub(start.elapsed())?;
            s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                    return None;
                }
                Err(_) => break,
            }
        }
    }
    Some(start.elapsed())
}

// ---------------------------------------------------------------- latency

/// Runs the latency scenario `rounds` times, the servers in turn within each round (so a slow
/// stretch of the machine falls on all of them), and reports each server's percentiles over all
/// its lines, the range of its per-round p99, and overhear's p99 against the best peer's.
fn latency(kinds: &[Kind], rounds: usize, dir: &Path) {
    let servers: Vec<Kind> = kinds.iter().copied().filter(|k| k.prints()).collect();
    let mut delays: Vec<Vec<Duration>> = vec![Vec::new(); servers.len()];
    let mut p99s: Vec<Vec<u128>> = vec![Vec::new(); servers.len()];
    let mut failures: Vec<Option<String>> = vec![None; servers.len()];
    for round in 1..=rounds {
        for (i, &kind) in servers.iter().enumerate() {
            if failures[i].is_some() {
                continue;
            }
            match latency_round(kind, dir) {
                Ok(mut round_delays) => {
                    round_delays.sort();
                    p99s[i].push(percentile(&round_delays, 0.99).as_micros());
                    delays[i].extend(round_delays);
                }
                Err(why) => failures[i] = Some(format!("{why} (round {round})")),
            }
        }
    }
    let mut table = Table::new(
        &format!(
            "latency: one line every 1 ms for 5 s, send to line on the server's stdout pipe; \
             {rounds} rounds, the servers in turn"
        ),
        &[
            "server",
            "lines",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "p99 of each round µs",
        ],
    );
    let mut overhear_p99 = None;
    let mut best_peer: Option<(u128, Kind)> = None;
    for (i, &kind) in servers.iter().enumerate() {
        if let Some(why) = &failures[i] {
            table.rows.push(vec![kind.name().into(), why.clone()]);
            continue;
        }
        let all = &mut delays[i];
        all.sort();
        let us = |p: f64| percentile(all, p).as_micros();
        let p99 = us(0.99);
        if kind == Kind::Overhear {
            overhear_p99 = Some(p99);
        } else if !kind.is_sink() && best_peer.is_none_or(|(best, _)| p99 < best) {
            best_peer = Some((p99, kind));
        }
        table.rows.push(vec![
            kind.name().into(),
            all.len().to_string(),
            us(0.5).to_string(),
            p99.to_string(),
            us(0.999).to_string(),
            all.last().map_or(0, |d| d.as_micros()).to_string(),
            p99s[i]
                .iter()
                .map(u128::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    table.print();
    if let (Some(ours), Some((theirs, peer))) = (overhear_p99, best_peer) {
        println!(
            "\noverhear's p99 against the best peer's ({}): {ours} µs vs {theirs} µs, {}",
            peer.name(),
            ratio(ours as f64, theirs as f64)
        );
    }
}

/// The `p`-quantile of sorted `delays` (zero when there are none).
fn percentile(delays: &[Duration], p: f64) -> Duration {
    let i = ((delays.len() as f64 * p) as usize).min(delays.len().saturating_sub(1));
    delays.get(i).copied().unwrap_or_default()
}

/// One latency round against a fresh `kind`: a line every [`LATENCY_PERIOD`] for
/// [`LATENCY_RUN`], each timed from just before its send to its arrival on the server's stdout.
fn latency_round(kind: Kind, dir: &Path) -> Result<Vec<Duration>, String> {
    let (_, log) = run_files(dir, "latency", kind);
    let Some(mut server) = Running::start(kind, None, &log) else {
        return Err("not installed".into());
    };
    let stdout = server.child.stdout.take().expect("piped stdout");
    let total = (LATENCY_RUN.as_micros() / LATENCY_PERIOD.as_micros()) as usize;
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; total]));
    let reader = {
        let sent = Arc::clone(&sent);
        thread::spawn(move || {
            let mut delays = Vec::with_capacity(total);
            let mut reader = BufReader::new(stdout);
            let mut text = Vec::new();
            while delays.len() < total {
                text.clear();
                match reader.read_until(b'\n', &mut text) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let now = Instant::now();
                let body = match text.iter().position(|&b| b == b'c') {
                    Some(i) => &text[i..],
                    None => continue,
                };
                let seq = std::str::from_utf8(body)
                    .ok()
                    .and_then(|s| s.split_once('-'))
                    .and_then(|(_, rest)| rest.get(..10)?.parse::<usize>().ok());
                if let Some(at) = seq.and_then(|i| sent.lock().ok()?.get(i).copied().flatten()) {
                    delays.push(now - at);
                }
            }
            delays
        })
    };
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let start = Instant::now();
    let mut buf = Vec::with_capacity(LINE_LEN);
    for i in 0..total {
        let due = start + LATENCY_PERIOD * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        buf.clear();
        line(0, i, &mut buf);
        sent.lock().expect("sent times")[i] = Some(Instant::now());
        stream.write_all(&buf).expect("send");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    drop(stream);
    if !reader.is_finished() {
        drop(server);
        return Err("lines missing after 10 s".into());
    }
    let delays = reader.join().expect("latency reader");
    drop(server);
    Ok(delays)
}

// ---------------------------------------------------------------- udp

/// One UDP sender: client `client`'s lines as datagrams, one line each, from a socket of its own
/// (one source: one client number) to `to`, as fast as it can for `run`. Returns the datagrams
/// sent and the sends that failed (ECONNREFUSED after an ICMP port unreachable, ENOBUFS).
fn udp_sender(client: usize, to: SocketAddr, run: Duration) -> (usize, u64) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("a UDP socket");
    socket.connect(to).expect("a UDP destination");
    let maker = LineMaker::new(client);
    let mut datagram = Vec::with_capacity(LINE_LEN);
    let (mut sent, mut failed) = (0, 0);
    let start = Instant::now();
    while start.elapsed() < run {
        // A clock read per 64 sends: the sends are what is measured.
        for _ in 0..64 {
            datagram.clear();
            maker.append(sent, &mut datagram);
            match socket.send(&datagram) {
                Ok(_) => sent += 1,
                Err(_) => failed += 1,
            }
        }
    }
    (sent, failed)
}

/// What overhear's summary line counts.
struct Summary {
    messages: u64,
    bytes: u64,
    /// The kernel's datagram drops; `None` when not given (no UDP).
    dropped: Option<u64>,
}

/// The counts in overhear's summary line (`served N clients: M messages, B bytes; …; the kernel
/// dropped D datagrams …`).
fn summary_counts(log: &Path) -> Option<Summary> {
    let text = std::fs::read_to_string(log).ok()?;
    let summary = text.lines().rev().find(|l| l.contains(" served "))?;
    let (_, counts) = summary.split_once(" served ")?.1.split_once(": ")?;
    let messages = counts.split_whitespace().next()?.parse().ok()?;
    let bytes = counts
        .split_once(", ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let dropped = if summary.contains("the kernel dropped no datagram") {
        Some(0)
    } else {
        summary
            .split_once("the kernel dropped ")
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
    };
    Some(Summary {
        messages,
        bytes,
        dropped,
    })
}

/// UDP: each server receives what `UDP_SENDERS` senders send as fast as they can for `UDP_RUN`,
/// then, once its output has been still for a moment, a SIGTERM. Received is what its output
/// holds, line by line; the rate is over the time from the first send to the output's last
/// growth. The kernel's drops are read from /proc/net/udp before the stop.
fn udp(kinds: &[Kind], dir: &Path) {
    let mut table = Table::new(
        &format!(
            "udp: {UDP_SENDERS} senders of {LINE_LEN}-byte datagrams (one line each) as fast as \
             they can for {} s, stdout to a file",
            UDP_RUN.as_secs_f64()
        ),
        &[
            "server",
            "sent",
            "received",
            "loss",
            "received/s",
            "÷ best peer's",
            "kernel drops",
            "duplicated",
            "spliced",
            "misattributed",
        ],
    );
    let mut rows: Vec<(Kind, f64, Vec<String>)> = Vec::new();
    let mut notes = Vec::new();
    for &kind in kinds.iter().filter(|k| k.listens_udp()) {
        let (path, log) = run_files(dir, "udp", kind);
        let Some(mut server) = Running::start_on(kind, Listen::Udp, Some(&path), &log) else {
            rows.push((kind, 0.0, vec!["not installed".into()]));
            continue;
        };
        let start = Instant::now();
        let senders: Vec<_> = (0..UDP_SENDERS)
            .map(|c| {
                let to = server.addr;
                thread::spawn(move || udp_sender(c, to, UDP_RUN))
            })
            .collect();
        let counts: Vec<(usize, u64)> = senders
            .into_iter()
            .map(|h| h.join().expect("udp sender"))
            .collect();
        let last = server.wait_quiet(Duration::from_millis(500), Duration::from_secs(10));
        let busy = last.saturating_duration_since(start).as_secs_f64();
        let drops = udp_socket_drops(server.addr.port());
        let exited = server.terminate(Duration::from_secs(10)).is_some();
        drop(server);
        let sent: usize = counts.iter().map(|c| c.0).sum();
        let failed: u64 = counts.iter().map(|c| c.1).sum();
        let most = counts.iter().map(|c| c.0).max().unwrap_or(0);
        let v = verify_lines(&path, kind, UDP_SENDERS, most);
        let received = (UDP_SENDERS * most) as u64 - v.lost;
        let rate = if busy > 0.0 {
            received as f64 / busy
        } else {
            0.0
        };
        let mut dropped = drops.map_or("unknown".to_string(), |d| d.to_string());
        if kind == Kind::Overhear {
            match summary_counts(&log) {
                Some(summary) => {
                    let own = summary
                        .dropped
                        .map_or("none".to_string(), |d| d.to_string());
                    dropped = format!("{dropped} (its summary: {own})");
                    notes.push(format!(
                        "overhear's summary: {} messages (its output: {received} lines) \
                         and {own} kernel drops, against {sent} datagrams sent.",
                        summary.messages
                    ));
                }
                None => notes.push(format!(
                    "overhear: no summary line in {}{}.",
                    log.display(),
                    if exited { "" } else { " (no exit in 10 s)" }
                )),
            }
        }
        if kind == Kind::Ncat {
            notes.push(
                "ncat: run without -k (7.93 refuses it in UDP mode), it hears only the first \
                 source and the others' sends fail at the port unreachable it causes."
                    .into(),
            );
        }
        rows.push((
            kind,
            rate,
            vec![
                if failed > 0 {
                    format!("{sent} ({failed} sends failed)")
                } else {
                    sent.to_string()
                },
                received.to_string(),
                format!(
                    "{:.2} %",
                    sent.saturating_sub(received as usize) as f64 / sent.max(1) as f64 * 100.0
                ),
                format!("{rate:.0}"),
                String::new(),
                dropped,
                v.duplicated.to_string(),
                v.spliced.to_string(),
                if kind.numbers_clients() {
                    v.misattributed.to_string()
                } else {
                    "n/a".into()
                },
            ],
        ));
        let _ = std::fs::remove_file(&path);
    }
    let best = rows
        .iter()
        .filter(|(k, ..)| *k != Kind::Overhear)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .filter(|(_, rate, _)| *rate > 0.0)
        .map(|(k, rate, _)| (*k, *rate));
    for (kind, rate, cells) in rows {
        let mut row = vec![kind.name().to_string()];
        if cells.len() > 4 {
            row.extend(cells[..4].iter().cloned());
            row.push(best.map_or("—".into(), |(_, b)| ratio(rate, b)));
            row.extend(cells[5..].iter().cloned());
        } else {
            row.extend(cells);
        }
        table.rows.push(row);
    }
    table.print();
    if let Some((kind, _)) = best {
        notes.insert(0, format!("Best peer: {}.", kind.name()));
    }
    for note in notes {
        println!("\n{note}");
    }
}

// ---------------------------------------------------------------- sinks

/// The listening socket of a sink: loopback, `port`, a backlog as deep as overhear's.
fn sink_listener(port: u16) -> TcpListener {
    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .and_then(|s| {
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())?;
            s.listen(4096)?;
            Ok(TcpListener::from(s))
        })
        .expect("sink listens")
}

/// The ceiling of this machine: a thread per connection that reads and throws bytes away.
fn discard_sink(port: u16) -> ! {
    let listener = sink_listener(port);
    loop {
        if let Ok((mut stream, _)) = listener.accept() {
            let spawned = thread::Builder::new().stack_size(64 * 1024).spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            });
            drop(spawned);
        }
    }
}

/// The most any listener that stores every byte can do here: a thread per connection that reads
/// up to 256 KiB at a time (as overhear's busiest workers do) and appends each read, raw, to the
/// output with one `write_all`: no framing, no prefix, no lock of its own. The output is its
/// stdout (the file the other servers write to), reopened once with O_APPEND and shared by
/// every connection. Like the discard sink, its threads are never joined: a stop kills them.
fn copy_sink(port: u16) -> ! {
    const READ: usize = 256 * 1024;
    let output = Arc::new(
        std::fs::OpenOptions::new()
            .append(true)
            .open("/proc/self/fd/1")
            .expect("copy sink reopens its stdout"),
    );
    let listener = sink_listener(port);
    loop {
        if let Ok((stream, _)) = listener.accept() {
            let output = Arc::clone(&output);
            let spawned = thread::Builder::new().stack_size(64 * 1024).spawn(move || {
                // Read into uninitialised memory: zeroing 256 KiB per connection would be work
                // a listener does not need.
                let mut buf = Box::new_uninit_slice(READ);
                while let Ok((read @ [_, ..], _)) = rustix::io::read(&stream, &mut buf[..]) {
                    if (&*output).write_all(read).is_err() {
                        break;
                    }
                }
            });
            drop(spawned);
        }
    }
}

/// The floor of a stop for a listener that joins its threads: a thread per connection on
/// overhear's recycled stacks, each polling its socket and a stop pipe and throwing what it reads
/// away; at SIGTERM (overhear's own handler, which writes the pipe) each thread closes its
/// socket and ends, and every one is joined before the process exits. Nothing is printed or
/// logged, no client is numbered, no byte left in a socket is read: what is left is waking,
/// closing and joining, the work no thread-per-connection listener can skip.
fn join_sink(port: u16) -> ! {
    use rustix::event::{PollFd, PollFlags, poll};
    let shutdown = Arc::new(overhear::Shutdown::new().expect("a stop pipe"));
    shutdown
        .install_signal_handler()
        .expect("a SIGTERM handler");
    let listener = sink_listener(port);
    let mut stacks = Stacks::new(overhear::worker::WORKER_STACK);
    let mut live = Vec::new();
    loop {
        let mut fds = [
            PollFd::new(&listener, PollFlags::IN),
            PollFd::new(shutdown.waker(), PollFlags::IN),
        ];
        // A signal interrupts the poll before its handler's thread requests the stop: accept
        // only what the poll found.
        let _ = poll(&mut fds, None);
        if shutdown.is_requested() {
            break;
        }
        if fds[0].revents().is_empty() {
            continue;
        }
        if let Ok((stream, _)) = listener.accept() {
            let shutdown = Arc::clone(&shutdown);
            let spawned = stacks.spawn("join sink", move || {
                let mut buf = vec![0u8; 4 * 1024];
                loop {
                    let mut fds = [
                        PollFd::new(&stream, PollFlags::IN),
                        PollFd::new(shutdown.waker(), PollFlags::IN),
                    ];
                    let _ = poll(&mut fds, None);
                    if !fds[1].revents().is_empty()
                        || !matches!((&stream).read(&mut buf), Ok(n) if n > 0)
                    {
                        break;
                    }
                }
            });
            live.extend(spawned);
            // Threads whose clients left are joined as they go, as a listener would.
            for thread in
                live.extract_if(.., |t: &mut overhear::threads::Thread<()>| t.is_finished())
            {
                let _ = thread.join(&mut stacks);
            }
        }
    }
    for thread in live {
        let _ = thread.join(&mut stacks);
    }
    std::process::exit(0)
}

fn raise_fd_limit() {
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--discard-sink") {
        let port = args
            .get(i + 1)
            .and_then(|p| p.parse().ok())
            .expect("--discard-sink PORT");
        discard_sink(port);
    }
    if let Some(i) = args.iter().position(|a| a == "--join-sink") {
        let port = args
            .get(i + 1)
            .and_then(|p| p.parse().ok())
            .expect("--join-sink PORT");
        join_sink(port);
    }
    if let Some(i) = args.iter().position(|a| a == "--copy-sink") {
        let port = args
            .get(i + 1)
            .and_then(|p| p.parse().ok())
            .expect("--copy-sink PORT");
        copy_sink(port);
    }
    raise_fd_limit();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    // In the order given, so a run can check that the order does not matter.
    let kinds: Vec<Kind> = match value("--peers") {
        Some(list) => list.split(',').filter_map(Kind::named).collect(),
        None => Kind::ALL.to_vec(),
    };
    let sizes: Vec<usize> = value("--clients")
        .map(|l| l.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 5_000, 10_000]);
    let mib: usize = value("--mib").and_then(|m| m.parse().ok()).unwrap_or(64);
    let rounds_given: Option<usize> = value("--rounds").and_then(|m| m.parse().ok());
    let rounds = rounds_given.unwrap_or(3).max(1);
    let known = [
        "throughput",
        "churn",
        "concurrent",
        "latency",
        "udp",
        "unix",
        "tls",
        "framing",
    ];
    let mut chosen: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| known.contains(a))
        .collect();
    if chosen.is_empty() {
        chosen = known.to_vec();
    }
    let dir = value("--dir")
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join(format!("overhear-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    println!(
        "overhear benchmark suite — {} cores, {}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string())
            )
            .unwrap_or_default()
    );
    println!(
        "Each server runs as a user runs it: stdout to a file (in latency, a pipe the suite reads) \
         and stderr to a file (its log at the default level), both in {}.",
        dir.display()
    );
    for scenario in chosen {
        match scenario {
            "throughput" => throughput(&kinds, mib, rounds, &dir),
            "churn" => churn(&kinds, &dir),
            "concurrent" => {
                // Beside overhear, the same with std's usual backlog, to show what depth buys.
                let mut with_small = kinds.clone();
                if let Some(i) = kinds.iter().position(|k| *k == Kind::Overhear) {
                    with_small.insert(i + 1, Kind::OverhearBacklog128);
                }
                // The floor first: each server's exit is shown as a multiple of it.
                let floors = thread_floor(&sizes);
                concurrent(&with_small, &sizes, &floors, &dir);
            }
            "latency" => latency(&kinds, rounds_given.unwrap_or(5).max(1), &dir),
            "udp" => udp(&kinds, &dir),
            "unix" => unix(&kinds, mib, rounds, &dir),
            "tls" => tls(&kinds, mib, rounds, &dir),
            "framing" => framing(&kinds, mib, rounds, &dir),
            _ => unreachable!("filtered to known scenarios"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
