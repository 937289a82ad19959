//! More ways in: Unix stream sockets (`-U`, with the peer's credentials), UDP sources (`-u`),
//! and several listeners in one run (`--listen`), met by the clients people point at them:
//! `nc -U`, `nc -u`, `logger`, `socat`.

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::common::{
    Finished, Netcat, Signal, Spawned, TIMEOUT, TempDir, assert_fails_with, connect, have,
    installed, netcat_available, run_program, run_to_end, run_to_end_under, send,
};

/// The address of a UDP listener from its `listening on udp://ADDR;` line.
fn udp_addr(server: &Spawned) -> SocketAddr {
    let endpoints = server.endpoints();
    endpoints
        .iter()
        .find_map(|e| e.strip_prefix("udp://")?.parse().ok())
        .unwrap_or_else(|| panic!("no UDP listener in {endpoints:?}"))
}

/// A UDP socket on loopback whose reads of replies time out after [`TIMEOUT`].
fn udp_source() -> UdpSocket {
    let source = UdpSocket::bind("127.0.0.1:0").expect("bind");
    source
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    source
}

/// Three `nc -U` clients and `logger -u`: numbered, attributed to their process (pid, uid and
/// command), each message whole; the socket file has the mode asked for and is gone after the
/// run.
#[test]
fn unix_clients_are_numbered_and_named_by_their_process() {
    if !netcat_available() {
        return;
    }
    let dir = TempDir::new("unix");
    let path = dir.path("o.sock");
    let mut server = Spawned::start(&["-U", &path, "--unix-mode", "600", "--format", "json"]);
    assert_eq!(server.endpoints(), [format!("unix:{path}")]);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&path).expect("socket file").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let mut clients = Vec::new();
    for n in 1..=3 {
        let mut nc = Netcat::start(&["-U", &path]);
        let line = server.wait_stderr(&format!("client {n} connected from pid "), TIMEOUT);
        assert!(line.contains(", nc"), "{line}");
        assert!(nc.type_text(&format!("from nc {n}\n")));
        clients.push(nc);
    }
    server.wait_stdout("from nc 3", TIMEOUT);
    if installed("logger") {
        run_program("logger", &["-u", &path, "one record"], b"");
        let line = server.wait_stderr("client 4 connected from pid ", TIMEOUT);
        // logger sends and exits at once: under load it can be gone before overhear reads its
        // name, which is then left out (seen once in 6 suite runs under stress-ng).
        assert!(line.contains(", logger)") || !line.contains(", "), "{line}");
        server.wait_stdout("one record", TIMEOUT);
    }
    let finished = server.stop(Signal::TERM);
    let events: Vec<serde_json::Value> = finished
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    for n in 1..=3u64 {
        let connect = events
            .iter()
            .find(|e| e["event"] == "connect" && e["client"] == n)
            .unwrap_or_else(|| panic!("no connect event for {n}\n{finished}"));
        assert!(connect["pid"].as_u64().is_some_and(|p| p > 0), "{connect}");
        assert_eq!(
            connect["uid"],
            rustix::process::getuid().as_raw(),
            "{connect}"
        );
        assert_eq!(
            connect["gid"],
            rustix::process::getegid().as_raw(),
            "{connect}"
        );
        assert_eq!(connect["listener"], format!("unix:{path}"), "{connect}");
        let message = events
            .iter()
            .find(|e| e["event"] == "message" && e["client"] == n)
            .unwrap_or_else(|| panic!("no message from {n}\n{finished}"));
        assert_eq!(message["data"], format!("from nc {n}"), "{finished}");
    }
    if installed("logger") {
        let logged: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["event"] == "message" && e["client"] == 4)
            .collect();
        assert_eq!(
            logged.len(),
            1,
            "logger's record is one message\n{finished}"
        );
        assert!(
            logged[0]["data"]
                .as_str()
                .is_some_and(|d| d.ends_with("one record")),
            "{finished}"
        );
    }
    assert!(!Path::new(&path).exists(), "the socket file is left behind");
}

/// A stale socket file (nobody accepts on it) is replaced; a live one (even one whose backlog is
/// full), and a file that is not a socket, are errors naming the path (exit 1), and are left
/// alone.
#[test]
fn socket_files_are_replaced_only_when_stale() {
    let dir = TempDir::new("stale");
    let stale = dir.path("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    assert!(
        Path::new(&stale).exists(),
        "a closed listener leaves its file"
    );
    let mut server = Spawned::start(&["-U", &stale]);
    server.wait_stderr("replacing the stale socket file", TIMEOUT);
    let mut client = UnixStream::connect(&stale).expect("connect to the new socket");
    std::io::Write::write_all(&mut client, b"after the stale one\n").expect("send");
    server.wait_stdout("[1] after the stale one", TIMEOUT);

    // Now it is live: a second run must not take it.
    let out = run_to_end(&["-U", &stale, "-d", "1s"]);
    assert_fails_with(
        &out,
        &format!("error: cannot listen on unix:{stale}: another process listens on it"),
    );
    server.stop(Signal::TERM);

    // A live listener that accepts nothing, its backlog full: told at once, not waited on.
    let busy = dir.path("busy.sock");
    let listener = std::os::unix::net::UnixListener::bind(&busy).expect("bind");
    let mut queued = Vec::new();
    for _ in 0..10_000 {
        let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_nonblocking(true).expect("non-blocking");
        match socket.connect(&socket2::SockAddr::unix(&busy).expect("address")) {
            Ok(()) => queued.push(socket),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(err) => panic!("connect: {err}"),
        }
    }
    assert!(queued.len() < 10_000, "the backlog never filled");
    let out = run_to_end(&["-U", &busy, "-d", "1s"]);
    assert_fails_with(
        &out,
        &format!(
            "error: cannot listen on unix:{busy}: another process listens on it (and accepts no \
         more connections now)"
        ),
    );
    assert!(
        Path::new(&busy).exists(),
        "the live socket file is left alone"
    );
    drop((queued, listener));

    let plain = dir.path("plain.txt");
    std::fs::write(&plain, "keep me").expect("write a file");
    let out = run_to_end(&["-U", &plain, "-d", "1s"]);
    assert_fails_with(
        &out,
        &format!("cannot listen on unix:{plain}: a file that is not a socket"),
    );
    assert_eq!(
        std::fs::read_to_string(&plain).expect("still there"),
        "keep me"
    );
}

/// A live socket overhear may not connect to (root's, mode 600, while overhear runs as another
/// user) is not taken for a stale one, though its directory would let overhear remove it: the
/// error says why, and the file stays.
#[test]
fn a_socket_overhear_may_not_connect_to_is_left_alone() {
    use std::os::unix::fs::PermissionsExt;
    if !have(&["setpriv"]) {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: running overhear as another user needs root");
        return;
    }
    let dir = TempDir::new("forbidden");
    std::fs::set_permissions(dir.dir(), std::fs::Permissions::from_mode(0o777))
        .expect("a directory anyone may write to");
    let path = dir.path("root.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // A user id no one else uses.
    let id = format!("{}", 4_100_000 + std::process::id());
    let (uid, gid) = (format!("--reuid={id}"), format!("--regid={id}"));
    let out = run_to_end_under(
        &["setpriv", &uid, &gid, "--clear-groups"],
        &["-U", &path, "-d", "1s"],
    );
    assert_fails_with(
        &out,
        &format!("error: cannot listen on unix:{path}: permission denied"),
    );
    assert!(
        Path::new(&path).exists(),
        "the live socket file was removed"
    );
    drop(listener);
}

/// `@name` listens in Linux's abstract namespace: no file, and socat connects by name.
#[test]
fn abstract_names_need_no_file() {
    if !installed("socat") {
        assert!(std::env::var_os("CI").is_none(), "socat is missing");
        return;
    }
    let name = format!("overhear-test-{}", std::process::id());
    let mut server = Spawned::start(&["-U", &format!("@{name}")]);
    assert_eq!(server.endpoints(), [format!("unix:@{name}")]);
    run_program(
        "socat",
        &["-", &format!("ABSTRACT-CONNECT:{name}")],
        b"by name\n",
    );
    server.wait_stdout("[1] by name", TIMEOUT);
    server.stop(Signal::TERM).assert_success();
}

/// Two `nc -u` senders and `logger --udp`: each source a client; a datagram without a line end
/// is a message of its own; the summary counts every source.
#[test]
fn udp_sources_are_clients() {
    if !netcat_available() {
        return;
    }
    let mut server = Spawned::start(&["-u"]);
    let addr = udp_addr(&server);
    let port = addr.port().to_string();
    run_program("nc", &["-u", "-q0", "127.0.0.1", &port], b"one\ntwo");
    server.wait_stderr("client 1 connected from 127.0.0.1:", TIMEOUT);
    run_program("nc", &["-u", "-q0", "127.0.0.1", &port], b"second sender\n");
    server.wait_stderr("client 2 connected from 127.0.0.1:", TIMEOUT);
    if installed("logger") {
        run_program(
            "logger",
            &["--udp", "-n", "127.0.0.1", "-P", &port, "via logger"],
            b"",
        );
        server.wait_stdout("via logger", TIMEOUT);
    }
    server.wait_stdout("[2] second sender", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    let stdout: Vec<&str> = finished.stdout.lines().collect();
    assert_eq!(
        stdout[..3],
        ["[1] one", "[1] two", "[2] second sender"],
        "{finished}"
    );
    let sources = if installed("logger") {
        assert!(stdout[3].starts_with("[3] <13>") && stdout[3].ends_with("via logger"));
        finished.assert_stderr_has("served 3 clients: 4 messages");
        3
    } else {
        2
    };
    // Every source was live at the stop, and the stop ended each. With nothing waiting in the
    // socket, the receiver does not read on until the drain limit (2 s).
    assert_stopped_within_drain_limit(&finished, sources);
    finished.assert_stderr_has("(udp)");
    finished.assert_stderr_has("the kernel dropped no datagram");
    assert!(
        !finished.stderr.contains("its receive buffer was full"),
        "a drop warning with nothing dropped\n{finished}"
    );
}

/// A UDP client ends after its silence (`--idle-timeout`), with the usual disconnect line; the
/// next datagram from the same address is a new client.
#[test]
fn a_silent_udp_source_ends_and_comes_back_as_a_new_client() {
    let mut server = Spawned::start(&["-u", "--idle-timeout", "300ms"]);
    let addr = udp_addr(&server);
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sender.send_to(b"first\n", addr).expect("send");
    server.wait_stderr("client 1 disconnected (no datagram for 300ms)", TIMEOUT);
    sender.send_to(b"again\n", addr).expect("send");
    server.wait_stderr("client 2 connected from", TIMEOUT);
    server.wait_stdout("[2] again", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    finished.assert_stderr_has("served 2 clients: 2 messages");
}

/// `--max-conns 2`: a third source is refused, with one warning however many datagrams it
/// sends, and counted as refused.
#[test]
fn max_conns_caps_live_udp_sources() {
    let mut server = Spawned::start(&["-u", "--max-conns", "2"]);
    let addr = udp_addr(&server);
    let senders: Vec<UdpSocket> = (0..3)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    for (i, sender) in senders.iter().enumerate().take(2) {
        sender
            .send_to(format!("s{i}\n").as_bytes(), addr)
            .expect("send");
        server.wait_stdout(&format!("s{i}"), TIMEOUT);
    }
    for k in 0..20 {
        senders[2]
            .send_to(format!("x{k}\n").as_bytes(), addr)
            .expect("send");
    }
    // A datagram from an admitted source after the refused ones: when it is printed, every
    // refused one was seen.
    senders[0].send_to(b"last\n", addr).expect("send");
    server.wait_stdout("[1] last", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    let third = senders[2].local_addr().expect("addr").to_string();
    assert_eq!(
        finished
            .stderr
            .matches(&format!("refused udp datagrams from {third}"))
            .count(),
        1,
        "{finished}"
    );
    finished.assert_stderr_has("the limit of 2 live sources is reached (--max-conns)");
    finished.assert_stderr_has("served 2 clients: 3 messages, 11 bytes; refused 1 connection");
    assert!(!finished.stdout.contains("x0"), "{finished}");
}

/// 40,000 datagrams from 4 senders at once: every one is either printed or counted as dropped
/// by the kernel (its receive buffer is bounded); nothing disappears unaccounted. The server is
/// stopped (SIGSTOP) during the burst, so the kernel surely drops some (at 8 MiB, the most
/// overhear asks for, the buffer holds about 10,000 of them).
#[test]
fn a_burst_of_datagrams_is_printed_or_counted_as_dropped() {
    const PER_SENDER: u64 = 10_000;
    let mut server = Spawned::start(&["-u", "--format", "json"]);
    let addr = udp_addr(&server);
    server.signal(Signal::STOP);
    let senders: Vec<std::thread::JoinHandle<()>> = (0..4)
        .map(|s| {
            std::thread::spawn(move || {
                let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
                for k in 0..PER_SENDER {
                    let datagram = format!("sender {s} datagram {k:05} {}\n", "d".repeat(60));
                    socket.send_to(datagram.as_bytes(), addr).expect("send");
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().expect("sender");
    }
    server.signal(Signal::CONT);
    // The last datagrams may still wait in the socket: the stop reads them.
    let finished = server.stop(Signal::TERM);
    let summary: serde_json::Value = finished
        .stdout
        .lines()
        .last()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .expect("a summary");
    let printed = finished
        .stdout
        .lines()
        .filter(|line| line.contains(r#""event":"message""#))
        .count() as u64;
    let dropped = summary["datagrams_dropped"]
        .as_u64()
        .unwrap_or_else(|| panic!("no drop count in {summary}"));
    assert!(
        dropped > 0,
        "the kernel dropped nothing while the server was stopped"
    );
    assert_eq!(summary["messages"], printed, "{summary}");
    assert_eq!(
        printed + dropped,
        4 * PER_SENDER,
        "{printed} printed and {dropped} dropped of {}",
        4 * PER_SENDER
    );
    assert_eq!(summary["clients"], 4, "{summary}");
    finished.assert_stderr_has(&format!(
        "{addr}: the kernel dropped {dropped} datagrams (its receive buffer was full"
    ));
}

/// A source first heard at the stop still gets its greeting: its datagram is read while the stop
/// drains the socket, and what is queued for it is sent before the end. With nothing left to
/// send, that does not hold the stop.
///
/// To have the late datagram read only at the stop, the server is stopped (SIGSTOP) while
/// another source sends a full batch of 256 datagrams and then the late one arrives; it gets
/// SIGTERM before it resumes; and its stdout is not read until it says it is stopping. Either
/// the stop is seen first, or the first batch's 78 KB of lines fill the stdout pipe (64 KiB)
/// and hold the receiver until then: the late datagram is the 257th, in the next batch.
#[test]
fn a_source_first_heard_at_the_stop_gets_its_greeting() {
    const EARLY: usize = 256;
    let mut server = Spawned::start_with_own_stdout(&["-u", "--greet", "hello\\n"]);
    let addr = udp_addr(&server);
    let early = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let late = UdpSocket::bind("127.0.0.1:0").expect("bind");
    late.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    server.signal(Signal::STOP);
    // 257 datagrams of 300 bytes fit a receive buffer of the default size (208 KiB, doubled).
    for k in 0..EARLY {
        let datagram = format!("early {k:03} {}\n", "e".repeat(289));
        early.send_to(datagram.as_bytes(), addr).expect("send");
    }
    late.send_to(b"late\n", addr).expect("send");
    server.signal(Signal::TERM);
    server.signal(Signal::CONT);
    server.wait_stderr("signal received, stopping", TIMEOUT);
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut server.take_stdout(), &mut stdout).expect("stdout");
    let finished = server.wait_exit(TIMEOUT);
    finished.assert_success();
    let mut buf = [0; 64];
    let (n, from) = late.recv_from(&mut buf).expect("the greeting");
    assert_eq!((&buf[..n], from), (&b"hello\n"[..], addr), "{finished}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), EARLY + 1, "{stdout}");
    assert_eq!(lines[EARLY], "[2] late", "{stdout}");
    assert_stopped_within_drain_limit(&finished, 2);
}

/// One run on TCP, UDP and a Unix socket at once: one numbering, each connect line naming its
/// listener, one summary; the stop ends all of them with nothing lost.
#[test]
fn tcp_udp_and_unix_in_one_run() {
    let dir = TempDir::new("mixed");
    let path = dir.path("m.sock");
    let mut server = Spawned::start(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "udp://127.0.0.1:0",
        "--listen",
        &format!("unix:{path}"),
    ]);
    let endpoints = server.endpoints();
    assert_eq!(endpoints.len(), 3, "{endpoints:?}");
    let tcp: SocketAddr = endpoints[0].parse().expect("a TCP address first, bare");
    let udp = udp_addr(&server);
    assert_eq!(endpoints[2], format!("unix:{path}"));

    let mut stream = connect(tcp);
    server.wait_stderr("client 1 connected from 127.0.0.1:", TIMEOUT);
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sender.send_to(b"by udp\n", udp).expect("send");
    let line = server.wait_stderr("client 2 connected from", TIMEOUT);
    assert!(line.ends_with(&format!("(udp) on udp://{udp}")), "{line}");
    let mut local = UnixStream::connect(&path).expect("connect");
    let line = server.wait_stderr("client 3 connected from pid", TIMEOUT);
    assert!(line.ends_with(&format!("on unix:{path}")), "{line}");
    let lines = 2000;
    let mut tcp_text = String::new();
    let mut unix_text = String::new();
    for k in 0..lines {
        tcp_text.push_str(&format!("tcp {k}\n"));
        unix_text.push_str(&format!("unix {k}\n"));
    }
    send(&mut stream, tcp_text.as_bytes());
    std::io::Write::write_all(&mut local, unix_text.as_bytes()).expect("send");
    crate::common::wait_acknowledged(&stream);
    let finished = server.stop(Signal::TERM);
    let count = |prefix: &str| {
        finished
            .stdout
            .lines()
            .filter(|l| l.starts_with(prefix))
            .count()
    };
    assert_eq!(count("[1] tcp "), lines, "{finished}");
    assert_eq!(count("[2] by udp"), 1, "{finished}");
    assert_eq!(count("[3] unix "), lines, "{finished}");
    finished.assert_stderr_has(&format!("served 3 clients: {} messages", 2 * lines + 1));
    assert!(!Path::new(&path).exists());
}

/// overhear in a PID namespace of its own (as in a container) cannot see the processes of Unix
/// clients outside it: such a client is "a local process" with its uid, not "pid 0".
#[test]
fn a_client_whose_process_overhear_cannot_see_is_a_local_process() {
    // Making a PID namespace takes privilege (root here); without it there is nothing to test.
    let allowed = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !allowed {
        eprintln!("skipped: cannot make a PID namespace with unshare");
        return;
    }
    let dir = TempDir::new("pid-namespace");
    let path = dir.path("n.sock");
    // unshare does not pass SIGTERM on: the end of the test kills it, and overhear with it.
    let server = Spawned::start_under(
        &["unshare", "--pid", "--fork", "--kill-child"],
        &["-U", &path],
    );
    let mut local = UnixStream::connect(&path).expect("connect");
    std::io::Write::write_all(&mut local, b"from outside\n").expect("send");
    let line = server.wait_stderr("client 1 connected from", TIMEOUT);
    let uid = rustix::process::getuid().as_raw();
    assert!(
        line.ends_with(&format!(
            "client 1 connected from a local process (uid {uid})"
        )),
        "{line}"
    );
    server.wait_stdout("[1] from outside", TIMEOUT);
}

/// Bad ways in are one line and exit 2 (usage) before anything listens.
#[test]
fn bad_ways_in_are_usage_errors() {
    let long = format!("/tmp/{}", "x".repeat(120));
    for (args, says) in [
        (
            &["--listen", "ftp://127.0.0.1:21"][..],
            "unknown kind 'ftp'",
        ),
        (&["--listen", "127.0.0.1"], "HOST:PORT"),
        (&["-U", &long], "too long for a Unix socket"),
        (
            &["-U", "/tmp/x.sock", "--unix-mode", "rw-"],
            "not an octal mode",
        ),
        (&["-u", "-U", "/tmp/x.sock"], "cannot be used with"),
        (
            &["--listen", "127.0.0.1:0", "--port", "1"],
            "cannot be used with",
        ),
    ] {
        let out = run_to_end(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Moves the calling thread, and the programs it starts from now on, into a network namespace
/// of its own whose loopback is slowed to 10 Mbit/s (`tc`'s token bucket, with room to queue
/// 4 MB rather than drop): there a UDP socket's replies outrun the link, and its send buffer
/// fills, as on a real network. Root only, with `ip` and `tc` (iproute2); the reason when it
/// cannot.
fn enter_slow_loopback() -> Result<(), String> {
    if !have(&["ip", "tc"]) {
        return Err(String::from("iproute2 is not installed"));
    }
    if !rustix::process::geteuid().is_root() {
        return Err(String::from("a network namespace needs root"));
    }
    // SAFETY: only the network namespace is unshared; the descriptor table stays shared.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
        .map_err(|err| format!("cannot make a network namespace: {err}"))?;
    let steps: [&[&str]; 2] = [
        &["ip", "link", "set", "lo", "up"],
        &[
            "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "10mbit", "burst", "16kb",
            "limit", "4mb",
        ],
    ];
    for step in steps {
        let status = std::process::Command::new(step[0])
            .args(&step[1..])
            .status()
            .map_err(|err| format!("cannot run {}: {err}", step[0]))?;
        if !status.success() {
            return Err(format!("{} failed: {status}", step.join(" ")));
        }
    }
    Ok(())
}

/// Echoes a UDP socket has no room for wait for room, and go out as soon as there is (not at
/// the next datagram, nor at the poll interval, an hour here): on a slowed loopback, 400
/// datagrams of 1,000 bytes all come back, whole and in order, before the stop. The source
/// queues all 400 on the link at once (an 8 MiB send buffer), so overhear's echoes queue behind
/// them and fill its socket's send buffer.
#[test]
fn udp_echoes_wait_for_room_in_a_full_socket() {
    const COUNT: usize = 400;
    if let Err(why) = enter_slow_loopback() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut server = Spawned::start(&["-u", "--echo", "--poll-interval", "1h"]);
    let addr = udp_addr(&server);
    let source = udp_source();
    rustix::net::sockopt::set_socket_send_buffer_size_force(&source, 8 << 20)
        .expect("SO_SNDBUFFORCE");
    let datagram = |i: usize| {
        let mut bytes = format!("{i:04} ").into_bytes();
        bytes.resize(999, b'a' + (i % 26) as u8);
        bytes.push(b'\n');
        bytes
    };
    let receiver = source.try_clone().expect("clone");
    let echoes = std::thread::spawn(move || {
        let mut buf = [0; 2048];
        (0..COUNT)
            .map(|_| receiver.recv(&mut buf).map(|n| buf[..n].to_vec()))
            .collect::<Result<Vec<_>, _>>()
    });
    for i in 0..COUNT {
        source.send_to(&datagram(i), addr).expect("send");
    }
    let echoes = echoes.join().expect("receiver").expect("every echo");
    for (i, echo) in echoes.iter().enumerate() {
        assert!(*echo == datagram(i), "echo {i} differs");
    }
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    assert!(!finished.stderr.contains("not sent"), "{finished}");
    assert_eq!(finished.stdout.lines().count(), COUNT, "{finished}");
}

/// A reply too long for a datagram (over 65,507 bytes) is not sent, with a warning naming its
/// size, and the replies after it still are.
#[test]
fn a_reply_too_long_for_a_datagram_is_skipped_with_a_warning() {
    let long = "a".repeat(70_000);
    let mut server = Spawned::start(&["-u", "--echo", "--greet", &long]);
    let addr = udp_addr(&server);
    let source = udp_source();
    source.send_to(b"ping\n", addr).expect("send");
    let mut buf = [0; 1024];
    let (n, _) = source.recv_from(&mut buf).expect("the echo");
    assert_eq!(&buf[..n], b"ping\n");
    let warning = server.wait_stderr("not sent to client 1: ", TIMEOUT);
    assert!(
        warning.contains("message too long (70000 bytes)"),
        "{warning}"
    );
    server.stop(Signal::TERM).assert_success();
}

/// A UDP source gets replies as datagrams, in the order they were queued: the greeting, its
/// echo (`--echo`), and a line typed for it; a Unix client gets a typed line as a TCP client
/// does.
#[test]
fn udp_and_unix_clients_are_answered() {
    let mut server = Spawned::start_typing(&[
        "-u", "--echo", "--stdin", "always", "--greet", "hello\\n", "--format", "json",
    ]);
    let addr = udp_addr(&server);
    let source = udp_source();
    source.send_to(b"ping\n", addr).expect("send");
    let mut buf = [0; 1024];
    let mut got = Vec::new();
    for _ in 0..2 {
        let (n, from) = source.recv_from(&mut buf).expect("a datagram back");
        assert_eq!(from, addr);
        got.push(buf[..n].to_vec());
    }
    assert_eq!(
        got,
        [b"hello\n".to_vec(), b"ping\n".to_vec()],
        "the greeting, then the echo"
    );
    server.type_bytes(b"@1 pong\n");
    let (n, _) = source.recv_from(&mut buf).expect("the typed reply");
    assert_eq!(&buf[..n], b"pong\n");
    // A line typed just before the stop is still sent.
    server.type_bytes(b"@1 last\n");
    let finished = server.stop(Signal::TERM);
    let (n, _) = source
        .recv_from(&mut buf)
        .expect("the line typed at the stop");
    assert_eq!(&buf[..n], b"last\n");
    finished.assert_stderr_has("sent 21 bytes");
    // Each greeting and typed message sent is a JSON `sent` event (the echo is not).
    let sent: Vec<String> = finished
        .stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("JSON"))
        .filter(|event| event["event"] == "sent")
        .map(|event| event["data"].as_str().expect("text").to_owned())
        .collect();
    assert_eq!(sent, ["hello\n", "pong\n", "last\n"], "{finished}");
    // The stop ends the source with its disconnect event, its counts in it.
    let disconnect = line_with(&finished.stdout, r#""event":"disconnect""#);
    let disconnect: serde_json::Value = serde_json::from_str(&disconnect).expect("JSON");
    assert_eq!(disconnect["sent"], 21, "{disconnect}");
    assert_eq!(disconnect["messages"], 1, "{disconnect}");

    let dir = TempDir::new("answered");
    let path = dir.path("a.sock");
    let mut server = Spawned::start_typing(&["-U", &path, "--stdin", "always"]);
    let mut local = UnixStream::connect(&path).expect("connect");
    local.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    server.wait_stderr("client 1 connected from pid", TIMEOUT);
    server.type_bytes(b"to the local process\n");
    let mut reply = [0; 64];
    let n = std::io::Read::read(&mut local, &mut reply).expect("read the reply");
    assert_eq!(&reply[..n], b"to the local process\n");
    server.stop(Signal::TERM).assert_success();
}

/// TCP clients and UDP sources arriving at once never share a number: the accept loop and the
/// UDP receiver number from one count.
#[test]
fn tcp_clients_and_udp_sources_arriving_together_get_distinct_numbers() {
    let mut server = Spawned::start(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "udp://127.0.0.1:0",
        "--format",
        "json",
        "--max-conns",
        "5000",
    ]);
    let endpoints = server.endpoints();
    let tcp: SocketAddr = endpoints[0].parse().expect("a TCP address");
    let udp = udp_addr(&server);
    const TCP: usize = 400;
    const UDP: usize = 800;
    let connecting = std::thread::spawn(move || {
        (0..TCP)
            .map(|_| connect(tcp))
            .collect::<Vec<std::net::TcpStream>>()
    });
    // Every sender kept open until the end: a port freed and bound again would be the same
    // source.
    let sending = std::thread::spawn(move || {
        (0..UDP)
            .map(|_| {
                let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
                sender.send_to(b"x\n", udp).expect("send");
                sender
            })
            .collect::<Vec<UdpSocket>>()
    });
    let streams = connecting.join().expect("connecting");
    let senders = sending.join().expect("sending");
    // The stop accepts the connections still queued and reads the datagrams still waiting.
    let finished = server.stop(Signal::TERM);
    drop((streams, senders));
    let events: Vec<serde_json::Value> = finished
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let summary = events.last().expect("a summary");
    // The kernel may drop datagrams of such a burst (its receive buffer is bounded): every
    // source it did not drop is a client.
    let dropped = summary["datagrams_dropped"].as_u64().expect("a drop count") as usize;
    let total = TCP + UDP - dropped;
    let mut numbers: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "connect")
        .map(|e| e["client"].as_u64().expect("a number"))
        .collect();
    assert_eq!(
        numbers.len(),
        total,
        "connect events ({dropped} datagrams dropped)"
    );
    assert_eq!(summary["clients"], total as u64, "{summary}");
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), total, "client numbers given twice");
    assert_eq!(
        numbers.last(),
        Some(&(total as u64)),
        "a gap in the numbers"
    );
}

/// A datagram as large as UDP over IPv4 allows (65,507 bytes) is one message, printed whole.
#[test]
fn the_largest_datagram_is_one_whole_message() {
    const LARGEST: usize = 65_507;
    let mut server = Spawned::start(&["-u"]);
    let addr = udp_addr(&server);
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let datagram: Vec<u8> = (0..LARGEST).map(|i| b'a' + (i % 26) as u8).collect();
    sender.send_to(&datagram, addr).expect("send");
    sender.send_to(b"after\n", addr).expect("send");
    server.wait_stdout("[1] after", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    let expected = format!("[1] {}", String::from_utf8_lossy(&datagram));
    assert_eq!(
        finished.stdout.lines().next(),
        Some(expected.as_str()),
        "the large datagram is not printed whole"
    );
    finished.assert_stderr_has(&format!(
        "served 1 client: 2 messages, {} bytes",
        LARGEST + 6
    ));
}

/// A flood of refused sources (here 12, against `--allow 127.0.0.2`) is warned about five times
/// a second at most, the rest said at `-v`; each source is said and counted once, however many
/// datagrams it sends.
#[test]
fn refused_udp_sources_are_warned_about_a_few_times_a_second() {
    const SOURCES: usize = 12;
    let mut server = Spawned::start(&["-u", "--allow", "127.0.0.2", "-v"]);
    let addr = udp_addr(&server);
    let senders: Vec<UdpSocket> = (0..SOURCES)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    // Every source sends twice but the last, which sends once (and is waited for).
    for round in 0..2 {
        for sender in &senders[..SOURCES - round] {
            sender
                .send_to(format!("refused {round}\n").as_bytes(), addr)
                .expect("send");
        }
    }
    let last = senders[SOURCES - 1].local_addr().expect("addr").to_string();
    server.wait_stderr(&format!("refused udp datagrams from {last}"), TIMEOUT);
    let finished = server.stop(Signal::TERM);
    let refusals: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|line| line.contains("refused udp datagrams from"))
        .collect();
    assert_eq!(refusals.len(), SOURCES, "each source said once\n{finished}");
    for sender in &senders {
        let from = sender.local_addr().expect("addr").to_string();
        assert_eq!(
            refusals.iter().filter(|l| l.contains(&from)).count(),
            1,
            "{from} said once"
        );
    }
    let warned = refusals.iter().filter(|l| l.contains(" WARN ")).count();
    // The limit counts in windows of a second, the first from the start, a new one at the first
    // refusal a second or more after the last began: exactly five only if every refusal falls
    // in one window, which the log's times tell (a slow machine may spread them).
    let millis = |line: &str| -> i64 {
        let time = line.split(['T', 'Z']).nth(1).expect("a timestamp");
        let parts: Vec<f64> = time.split(':').map(|p| p.parse().expect("time")).collect();
        ((parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]) * 1000.0) as i64
    };
    let start = millis(&line_with(&finished.stderr, "listening on"));
    let (first, last) = (millis(refusals[0]), millis(refusals[SOURCES - 1]));
    let one_window = last - start < 990 || (first - start > 1010 && last - first < 990);
    if one_window {
        assert_eq!(warned, 5, "{finished}");
    } else {
        assert!(
            (5..SOURCES).contains(&warned),
            "{warned} warnings\n{finished}"
        );
    }
    finished.assert_stderr_has(&format!("refused {SOURCES} connections"));
    assert!(!finished.stdout.contains("refused"), "{finished}");
    // Every datagram was read, refused or not (the stop reads what waits).
    finished.assert_stderr_has(&format!(
        "udp://{addr}: received {} datagrams",
        2 * SOURCES - 1
    ));
    // 8 MiB asked for: Linux caps the request at net.core.rmem_max and doubles it.
    let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .expect("rmem_max")
        .trim()
        .parse()
        .expect("a number");
    let size = 2 * rmem_max.min(8 * 1024 * 1024);
    finished.assert_stderr_has(&format!("receive buffer of udp://{addr}: {size} bytes"));
}

/// The stop of `workers` took less than the drain limit (2 s), as its `stopped N workers in T`
/// line says: nothing kept it reading or sending until the limit.
fn assert_stopped_within_drain_limit(finished: &Finished, workers: usize) {
    let took = finished
        .stderr
        .split_once(&format!("stopped {workers} workers in "))
        .and_then(|(_, rest)| rest.lines().next())
        .unwrap_or_else(|| panic!("no stop line\n{finished}"));
    let took = humantime::parse_duration(took).expect("a duration");
    assert!(
        took < std::time::Duration::from_secs(2),
        "the stop took {took:?}"
    );
}

/// The first line of `text` that contains `needle`.
fn line_with(text: &str, needle: &str) -> String {
    text.lines()
        .find(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in\n{text}"))
        .to_owned()
}

/// With a length framing, a UDP datagram whose length is over the limit loses the rest of that
/// datagram only: the source stays, is warned about once however many such datagrams it sends,
/// and its next good datagram is a message.
#[test]
fn a_misframed_datagram_drops_only_itself() {
    let mut server = Spawned::start(&["-u", "--framing", "length:u32be"]);
    let addr = udp_addr(&server);
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for _ in 0..3 {
        sender
            .send_to(b"\xff\xff\xff\xffnot framed", addr)
            .expect("send");
    }
    sender.send_to(b"\x00\x00\x00\x02ok", addr).expect("send");
    server.wait_stdout("[1] ok", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    assert_eq!(
        finished
            .stderr
            .matches("over the limit of 64 MiB (--framing length:u32be); the rest of its datagram is dropped")
            .count(),
        1,
        "{finished}"
    );
    assert_eq!(finished.stdout, "[1] ok\n", "{finished}");
}
