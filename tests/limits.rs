//! The protections of the README's "Security and limits" section, each against the real binary:
//! `--max-conns`, `--max-line` (bounded memory), `--idle-timeout`, `--allow`/`--deny`, the warning
//! for a non-loopback address, escaping of control bytes, and faults (a reset, a half-close, a
//! client that never reads its echo, a failing stdout, a stop during a connection flood, the timer
//! firing mid-send). A soak test, ignored by default, runs 100,000 connections.
//!
//! Clients that need another source address (127.0.0.2) or an abortive close (`SO_LINGER` 0) use
//! `socket2`, one of overhear's own dependencies (which the integration tests may use), rather
//! than a child process.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustix::process::{Pid, kill_process};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::common::{
    LONG_TIMEOUT, Rng, Signal, Spawned, TIMEOUT, assert_no_panic, connect, expect_eof, fresh_seed,
    send, thread_names, wait_threads,
};

const MIB: u64 = 1024 * 1024;

/// How often a sampling loop (resident memory, the soak's progress) looks again.
const SAMPLE_STEP: Duration = Duration::from_millis(20);

/// The resident memory of process `pid` in bytes (`VmRSS` in `/proc/PID/status`).
fn rss(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("cannot read {path}: {err}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix(" kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no VmRSS line in {path}:\n{status}"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// Connects to `addr` from the loopback address `source` (std cannot bind before connecting),
/// with the same timeouts as [`connect`].
fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .unwrap_or_else(|err| panic!("cannot create a socket: {err}"));
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .unwrap_or_else(|err| panic!("cannot bind a client socket to {source}: {err}"));
    socket
        .connect_timeout(&addr.into(), TIMEOUT)
        .unwrap_or_else(|err| panic!("cannot connect to {addr} from {source}: {err}"));
    let stream = TcpStream::from(socket);
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("set a read timeout");
    stream
        .set_write_timeout(Some(TIMEOUT))
        .expect("set a write timeout");
    stream
}

/// The local port of a client socket, as the server's log names the peer.
fn local_port(stream: &TcpStream) -> u16 {
    stream.local_addr().expect("a connected socket").port()
}

/// Closes `stream` abortively: `SO_LINGER` 0 makes the close send a RST instead of a FIN.
fn reset(stream: TcpStream) {
    SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("set SO_LINGER to 0");
    drop(stream);
}

/// Lines of `text` containing `needle`.
fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|line| line.contains(needle)).count()
}

/// How many clients `stderr` says were disconnected: one for each `client N disconnected (`
/// line, and N for the line `… and N more clients disconnected (server stopping)` with which a
/// stop of many clients ends its list.
fn disconnects(stderr: &str) -> usize {
    stderr
        .lines()
        .map(|line| match line.split_once("… and ") {
            Some((_, rest)) if line.contains(" disconnected (") => rest
                .split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no count in {line:?}")),
            _ => usize::from(line.contains(" disconnected (")),
        })
        .sum()
}

/// Samples `pid`'s resident memory until told to stop, and returns the largest value seen.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + 2 * LONG_TIMEOUT;
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                peak = peak.max(rss(pid));
                thread::sleep(SAMPLE_STEP);
            }
            peak
        });
        RssSampler { stop, thread }
    }

    fn peak(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the memory sampler")
    }
}

#[test]
fn max_conns_refuses_one_more_without_a_number() {
    let mut server = Spawned::start(&["--max-conns", "2"]);
    let pid = server.pid();
    let mut first = server.connect_numbered(1);
    let mut second = server.connect_numbered(2);

    let mut extra = connect(server.addr());
    let port = local_port(&extra);
    // Closed by the server straight away, without a worker: EOF, or a reset.
    expect_eof(&mut extra, TIMEOUT);
    server.wait_stderr(
        &format!(
            "refused 127.0.0.1:{port}: the limit of 2 connected clients is reached (--max-conns)"
        ),
        TIMEOUT,
    );

    // The connected clients were not disturbed.
    send(&mut first, b"one still here\n");
    send(&mut second, b"two still here\n");
    server.wait_stdout("[1] one still here", TIMEOUT);
    server.wait_stdout("[2] two still here", TIMEOUT);

    // Capacity returns when a client leaves. The worker logs its end just before its thread
    // ends, and only an ended thread is reaped: wait for the thread, not just the line.
    drop(first);
    server.wait_stderr("client 1 disconnected (closed by client)", TIMEOUT);
    wait_threads(pid, "client-1's thread to end", TIMEOUT, |names| {
        !names.iter().any(|name| name == "client-1")
    });
    // The refused connection got no number: the next client is client 3.
    let mut third = server.connect_numbered(3);
    send(&mut third, b"three\n");
    server.wait_stdout("[3] three", TIMEOUT);

    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    let mut lines: Vec<&str> = finished.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        ["[1] one still here", "[2] two still here", "[3] three"],
        "{finished}"
    );
    assert_eq!(
        count_lines(&finished.stderr, " refused 127.0.0.1:"),
        1,
        "{finished}"
    );
    finished.assert_stderr_has("served 3 clients: 3 messages, ");
    finished.assert_stderr_has("; refused 1 connection");
    expect_eof(&mut second, TIMEOUT);
}

/// What the stdout checker of [`max_line_bounds_memory_of_an_endless_line`] saw.
#[derive(Debug, Default)]
struct PieceCheck {
    /// Lines `[1] xxx…` and `[1+] xxx…`, each checked to hold exactly `MAX_LINE` bytes of `x`.
    pieces: usize,
    /// Pieces already printed when the other client's line came.
    pieces_before_other: Option<usize>,
    first_error: Option<String>,
}

#[test]
fn max_line_bounds_memory_of_an_endless_line() {
    const MAX_LINE: usize = 64 * 1024;
    const CHUNK: usize = 1024 * 1024;
    /// 100 MiB, no newline: 1,600 pieces of exactly `MAX_LINE` bytes.
    const CHUNKS: usize = 100;
    const OTHER: &str = "[2] another client is served";
    // The server prints the 100 MiB: stdout is checked as it is read instead of kept.
    let mut server = Spawned::start_with_own_stdout(&["--max-line", "64KiB"]);
    let pid = server.pid();
    let start_rss = rss(pid);
    let sampler = RssSampler::start(pid);
    let stdout = server.take_stdout();
    let (other_seen, other_printed) = mpsc::channel();
    let checker = thread::spawn(move || {
        let mut check = PieceCheck::default();
        let mut reader = BufReader::with_capacity(256 * 1024, stdout);
        let mut line = Vec::with_capacity(MAX_LINE + 16);
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let expected_prefix: &[u8] = if check.pieces == 0 { b"[1] " } else { b"[1+] " };
            let problem = if text == OTHER.as_bytes() {
                check.pieces_before_other = Some(check.pieces);
                let _ = other_seen.send(());
                None
            } else if let Some(payload) = text.strip_prefix(expected_prefix) {
                check.pieces += 1;
                (payload.len() != MAX_LINE || payload.iter().any(|&b| b != b'x')).then(|| {
                    format!(
                        "piece {} has {} bytes (not {MAX_LINE} of 'x')",
                        check.pieces,
                        payload.len()
                    )
                })
            } else {
                Some(format!(
                    "after {} pieces, unexpected line {:?}",
                    check.pieces,
                    String::from_utf8_lossy(&text[..text.len().min(40)])
                ))
            };
            if let Some(problem) = problem {
                check.first_error.get_or_insert(problem);
            }
        }
        check
    });

    let mut flooder = server.connect_numbered(1);
    let (half_sent, halfway) = mpsc::channel();
    let (go_on, resume) = mpsc::channel::<()>();
    let flood = thread::spawn(move || {
        let chunk = vec![b'x'; CHUNK];
        for sent in 0..CHUNKS {
            if sent == CHUNKS / 2 {
                // Half way through the endless line: let the other client talk first.
                let _ = half_sent.send(());
                resume
                    .recv_timeout(LONG_TIMEOUT)
                    .expect("the test lets the flood go on");
            }
            send(&mut flooder, &chunk);
        }
        // Closing ends the message: its last piece is printed then.
        drop(flooder);
    });
    halfway
        .recv_timeout(LONG_TIMEOUT)
        .expect("half of the flood sent in time");
    let mut other = server.connect_numbered(2);
    send(&mut other, b"another client is served\n");
    other_printed
        .recv_timeout(TIMEOUT)
        .expect("the other client's line printed while client 1's line is unfinished");
    go_on.send(()).expect("the flood thread waits");
    flood.join().expect("the flood thread failed");
    server.wait_stderr("client 1 disconnected (closed by client)", LONG_TIMEOUT);
    let peak = sampler.peak();
    let end_rss = rss(pid);

    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    let check = checker.join().expect("the stdout checker");
    if let Some(err) = &check.first_error {
        panic!("{err}\n{finished}");
    }
    let total = CHUNKS * CHUNK;
    assert_eq!(check.pieces, total / MAX_LINE, "pieces of client 1's line");
    assert!(
        check.pieces_before_other.is_some_and(|n| n > 0),
        "client 1's pieces should be printed before the other line came: {check:?}"
    );
    eprintln!(
        "a {} MiB line: resident memory {} at the start, peak {}, {} at the end",
        total as u64 / MIB,
        mib(start_rss),
        mib(peak),
        mib(end_rss)
    );
    let bound = start_rss + 16 * MIB;
    assert!(
        peak < bound && end_rss < bound,
        "resident memory went from {} to a peak of {} ({} at the end) for a {} MiB line",
        mib(start_rss),
        mib(peak),
        mib(end_rss),
        total as u64 / MIB
    );
    finished.assert_stderr_has("client 1 disconnected (closed by client) after ");
    finished.assert_stderr_has(&format!(": 1 message, {total} bytes"));
}

// The talker sends a line, waits to see it printed, then sends the next: the server reads each
// line before the next one leaves, so client 2 is never silent for long, and the talker keeps
// on until the silent client is gone and three timeouts have passed (the server must restart
// client 2's idle clock at every line, not only at its first). A test thread held up on a loaded
// machine can still leave a gap the server rightly ends client 2 for, so the gap is checked
// right after each send, before the wait that would then fail: the server's clock restarts when
// it reads a line, which is after that line's send began, and the next line is on its way when
// `send` returns. A gap of half the timeout already excuses client 2, leaving the other half to
// loopback delivery and scheduling.
#[test]
fn idle_timeout_ends_silent_clients_only() {
    const IDLE: Duration = Duration::from_millis(300);
    /// Lines the talker sends at most, however fast they are printed: more than a release build
    /// gets through in the test's time bound (20,000 took 883 ms there, short of 3 timeouts).
    const MAX_LINES: usize = 1_000_000;
    let mut server = Spawned::start_with_own_stdout(&["--idle-timeout", "300ms"]);
    let stdout = server.take_stdout();
    // Each line is read as it comes (the server exits before the test ends, closing the pipe).
    let (line_read, printed) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_read.send(line).is_err() {
                break;
            }
        }
    });
    let mut silent = server.connect_numbered(1);
    // The server starts client 2's idle clock when it accepts it, after this instant.
    let mut previous_send = Instant::now();
    let mut talker = server.connect_numbered(2);
    let talking = Instant::now();
    let mut held_up = None;
    let mut sent = 0;
    let mut done = false;
    while !done {
        assert!(
            sent < MAX_LINES && talking.elapsed() < TIMEOUT,
            "client 1 was not disconnected while client 2 sent {sent} lines in {:?}\n{}",
            talking.elapsed(),
            server.stderr_text()
        );
        done =
            talking.elapsed() >= 3 * IDLE && server.stderr_text().contains("client 1 disconnected");
        // The last line is sent after the silent client is gone.
        let message = if done {
            String::from("still connected")
        } else {
            format!("tick {sent}")
        };
        let began = Instant::now();
        send(&mut talker, format!("{message}\n").as_bytes());
        let gap = previous_send.elapsed();
        previous_send = began;
        if gap >= IDLE / 2 {
            held_up = Some(gap);
            break;
        }
        let line = printed
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("{message:?} was not printed within {TIMEOUT:?}"));
        assert_eq!(line, format!("[2] {message}"), "line {sent} on stdout");
        sent += 1;
    }
    expect_eof(&mut silent, TIMEOUT);
    server.wait_stderr("client 1 disconnected (idle for 300ms)", TIMEOUT);
    if let Some(gap) = held_up {
        eprintln!("the test was held up for {gap:?} between two lines: not judging client 2");
    } else {
        let stderr = server.stderr_text();
        assert!(
            !stderr.contains("client 2 disconnected"),
            "client 2 was disconnected although its lines came at most {:?} apart:\n{stderr}",
            IDLE / 2
        );
    }

    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    reader.join().expect("the stdout reader");
    if held_up.is_none() {
        finished.assert_stderr_has("client 2 disconnected (server stopping)");
        expect_eof(&mut talker, TIMEOUT);
        let extra: Vec<String> = printed.try_iter().collect();
        assert!(extra.is_empty(), "unexpected lines on stdout: {extra:?}");
    }
}

#[test]
fn allow_and_deny_networks() {
    let other_host = Ipv4Addr::new(127, 0, 0, 2);
    let cases = [
        (&["--allow", "127.0.0.2"][..], "not in any --allow network"),
        (
            &["--allow", "127.0.0.0/8", "--deny", "127.0.0.1"][..],
            "denied by --deny 127.0.0.1/32",
        ),
    ];
    for (args, reason) in cases {
        let mut server = Spawned::start(args);
        let mut refused = connect_from(Ipv4Addr::LOCALHOST, server.addr());
        let port = local_port(&refused);
        expect_eof(&mut refused, TIMEOUT);
        server.wait_stderr(&format!("refused 127.0.0.1:{port}: {reason}"), TIMEOUT);

        // No number was used up by the refused peer.
        let mut allowed = connect_from(other_host, server.addr());
        let port = local_port(&allowed);
        server.wait_stderr(
            &format!("client 1 connected from 127.0.0.2:{port}"),
            TIMEOUT,
        );
        send(&mut allowed, b"let in\n");
        server.wait_stdout("[1] let in", TIMEOUT);

        let finished = server.stop(Signal::TERM);
        assert!(finished.status.success(), "{args:?}\n{finished}");
        assert!(
            !finished.stderr.contains("connected from 127.0.0.1:"),
            "{args:?}: 127.0.0.1 got a worker\n{finished}"
        );
        assert_eq!(finished.stdout, "[1] let in\n", "{args:?}\n{finished}");
        finished.assert_stderr_has("served 1 client: 1 message, 7 bytes; refused 1 connection");
        expect_eof(&mut allowed, TIMEOUT);
    }
}

#[test]
fn non_loopback_address_is_warned_about() {
    const WARNING: &str = "is reachable from the network and has no authentication";
    let mut open = Spawned::start(&["--host", "0.0.0.0"]);
    let port = open.addr().port();
    // The way in it suggests is through loopback.
    open.wait_stderr(
        &format!("listening on 0.0.0.0:{port}; connect with: nc 127.0.0.1 {port}"),
        TIMEOUT,
    );
    open.wait_stderr(
        &format!("0.0.0.0:{port} {WARNING}; restrict it with --allow"),
        TIMEOUT,
    );
    open.stop(Signal::TERM).assert_success();

    // With a rule given, the warning stays and the hint goes.
    let mut restricted = Spawned::start(&["--host", "0.0.0.0", "--allow", "127.0.0.0/8"]);
    let port = restricted.addr().port();
    restricted.wait_stderr(&format!("0.0.0.0:{port} {WARNING}"), TIMEOUT);
    let finished = restricted.stop(Signal::TERM);
    finished.assert_success();
    assert!(
        !finished.stderr.contains("restrict it with --allow"),
        "--allow was suggested although it was given\n{finished}"
    );

    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let mut open = Spawned::start(&["--host", "::"]);
        let port = open.addr().port();
        open.wait_stderr(
            &format!("listening on [::]:{port}; connect with: nc ::1 {port}"),
            TIMEOUT,
        );
        open.stop(Signal::TERM).assert_success();
    } else {
        eprintln!("skipped the IPv6 case: cannot bind [::1] here");
    }

    // The warning comes between the listening line and this one.
    let mut loopback = Spawned::start(&[]);
    let port = loopback.addr().port();
    loopback.wait_stderr(
        &format!("listening on 127.0.0.1:{port}; connect with: nc 127.0.0.1 {port}"),
        TIMEOUT,
    );
    loopback.wait_stderr("running until Ctrl-C/SIGTERM", TIMEOUT);
    let finished = loopback.stop(Signal::TERM);
    finished.assert_success();
    assert!(
        !finished.stderr.contains(WARNING),
        "a loopback listener was warned about\n{finished}"
    );
}

#[test]
fn control_bytes_never_reach_the_terminal() {
    let mut server = Spawned::start(&[]);
    let mut client = server.connect_numbered(1);
    // A title change, a bell, clear screen, backspace, NUL, a lone C1 CSI byte (invalid UTF-8),
    // the U+009B CSI code point; then DEL and a lone CR.
    send(
        &mut client,
        b"\x1b]0;pwned\x07\x1b[2J\x08\x00 \x9b ok\xc2\x9b\ndel\x7f cr\r end\n",
    );
    server.wait_stdout_lines(2, TIMEOUT);
    let raw = server.stdout_raw();
    let text = String::from_utf8(raw.clone()).expect("escaped output is UTF-8");
    for (i, &byte) in raw.iter().enumerate() {
        assert!(
            (byte >= 0x20 && byte != 0x7f) || byte == b'\n',
            "byte {byte:#04x} at {i} in {text:?}"
        );
    }
    assert!(
        !text.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)),
        "a C1 control in {text:?}"
    );
    assert_eq!(
        server.stdout_lines(),
        [
            r"[1] \x1b]0;pwned\x07\x1b[2J\x08\x00 \x9b ok\xc2\x9b",
            r"[1] del\x7f cr\x0d end",
        ]
    );
    server.stop(Signal::TERM).assert_success();
}

#[test]
fn reset_mid_message_ends_only_that_client() {
    let mut server = Spawned::start(&[]);
    let mut client = server.connect_numbered(1);
    send(&mut client, b"complete\npartial");
    server.wait_stdout("[1] complete", TIMEOUT);
    reset(client);
    let ended = server.wait_stderr("client 1 disconnected (", TIMEOUT);
    assert!(
        ended.contains("client 1 disconnected (connection reset by peer)"),
        "{ended}"
    );

    let mut next = server.connect_numbered(2);
    send(&mut next, b"after the reset\n");
    // Printed after anything of client 1's, so stdout is complete up to here.
    server.wait_stdout("[2] after the reset", TIMEOUT);
    let lines = server.stdout_lines();
    // The unfinished "partial" may be printed when the worker ends, or lost with the reset.
    assert!(
        lines == ["[1] complete", "[2] after the reset"]
            || lines == ["[1] complete", "[1] partial", "[2] after the reset"],
        "{lines:#?}"
    );
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    finished.assert_stderr_has("served 2 clients: ");
}

#[test]
fn half_close_prints_everything_then_closes() {
    let mut server = Spawned::start(&[]);
    let mut client = server.connect_numbered(1);
    send(&mut client, b"a\nb");
    client
        .shutdown(Shutdown::Write)
        .expect("half-close the client");
    // The client keeps reading: the worker ends at EOF, and closes its side.
    expect_eof(&mut client, TIMEOUT);
    server.wait_stderr("client 1 disconnected (closed by client)", TIMEOUT);
    assert_eq!(
        server.wait_stdout_lines(2, TIMEOUT),
        ["[1] a", "[1] b"],
        "the line left unfinished by the half-close is printed"
    );
    server.stop(Signal::TERM).assert_success();
}

/// `--echo` to a client that reads slowly, 4 KiB at a time: every byte comes back in order, with
/// an hour between polls. (On loopback the server's socket buffer grows to hold what the client
/// has not read yet, so the echo rarely waits for room here; the worker's unit tests make a
/// socket take chunks in pieces.)
#[test]
fn echo_to_a_slow_reader_returns_every_byte() {
    // More than the server's socket buffer can hold (4 MiB at most, by default).
    const TOTAL: usize = 8 << 20;
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    // Lines of random printable bytes and lengths, the last one unfinished.
    let data: Vec<u8> = (0..TOTAL)
        .map(|_| match rng.next() % 64 {
            0 => b'\n',
            r => b' ' + (r as u8 + (rng.next() % 32) as u8),
        })
        .collect();
    let mut server = Spawned::start(&["--echo", "--poll-interval", "1h"]);
    let mut client = server.connect_numbered(1);
    client
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    // A small window on the client's side.
    SockRef::from(&client)
        .set_recv_buffer_size(16 * 1024)
        .expect("receive buffer");
    let mut writer = client.try_clone().expect("a second handle");
    let sent = data.clone();
    // No half-close: the client's end would wake the worker too. Only room can.
    let sender = thread::spawn(move || writer.write_all(&sent).expect("send"));
    let mut echoed = Vec::with_capacity(TOTAL);
    let mut piece = [0; 4096];
    while echoed.len() < TOTAL {
        match client.read(&mut piece) {
            Ok(0) => break,
            Ok(n) => echoed.extend_from_slice(&piece[..n]),
            Err(err) => panic!(
                "seed {seed}: {} of {TOTAL} bytes echoed, then {err}",
                echoed.len()
            ),
        }
        // A slow reader: the server's sends meet a full socket again and again.
        thread::sleep(Duration::from_micros(200));
    }
    sender.join().expect("the sender");
    assert!(
        echoed == data,
        "seed {seed}: the echo differs from what was sent"
    );
    server.stop(Signal::TERM).assert_success();
}

#[test]
fn client_that_never_reads_its_echo_blocks_no_one() {
    const CHUNK: usize = 64 * 1024;
    /// 50 MiB, far more than the socket buffers of both sides hold.
    const CHUNKS: usize = 800;
    /// Write timeouts (of 200 ms) in a row that mean the server stopped reading.
    const STALLED_AFTER: usize = 3;
    // With an hour between polls, only the stop pipe can wake the worker stuck echoing.
    let mut server = Spawned::start(&["--echo", "--poll-interval", "1h"]);
    let mut deaf = server.connect_numbered(1);
    // Short write timeouts tell when the server stopped reading from this client.
    deaf.set_write_timeout(Some(Duration::from_millis(200)))
        .expect("set a write timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let (stalled, stall) = mpsc::channel();
    let flood = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut line = vec![b'e'; 63];
            line.push(b'\n');
            let chunk = line.repeat(CHUNK / line.len());
            let mut sent = 0;
            // Write timeouts in a row: a slow server still takes some bytes now and then, a
            // worker stuck echoing takes none.
            let mut timeouts = 0;
            let deadline = Instant::now() + LONG_TIMEOUT;
            while sent < CHUNKS * CHUNK && !stop.load(Ordering::Relaxed) {
                assert!(Instant::now() < deadline, "the flood is still going");
                let at = sent % CHUNK;
                match deaf.write(&chunk[at..]) {
                    Ok(n) => {
                        sent += n;
                        timeouts = 0;
                    }
                    Err(err)
                        if matches!(
                            err.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        timeouts += 1;
                        if timeouts == STALLED_AFTER {
                            let _ = stalled.send(sent);
                        }
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    // The server closed the connection.
                    Err(_) => break,
                }
            }
            sent
        })
    };
    // The client's writes block: the worker no longer reads, because it cannot echo.
    let stalled_at = stall
        .recv_timeout(LONG_TIMEOUT)
        .expect("the echo fills the buffers and the client's writes block");
    assert!(
        stalled_at < CHUNKS * CHUNK,
        "the server took all {stalled_at} bytes"
    );
    let mut other = server.connect_numbered(2);
    send(&mut other, b"not blocked\n");
    server.wait_stdout("[2] not blocked", TIMEOUT);
    let mut echoed = [0; 12];
    other
        .read_exact(&mut echoed)
        .expect("the other client gets its echo");
    assert_eq!(&echoed, b"not blocked\n");

    let finished = server.stop(Signal::TERM);
    stop.store(true, Ordering::Relaxed);
    let sent = flood.join().expect("the flood thread failed");
    finished.assert_success();
    // The worker drains what the client sent before the stop; the client may finish meanwhile.
    finished.assert_stderr_has("client 1 disconnected (");
    finished.assert_stderr_has("client 2 disconnected (server stopping)");
    eprintln!("the deaf client stalled after {stalled_at} bytes and sent {sent} in all");
    expect_eof(&mut other, TIMEOUT);
}

#[test]
fn failing_output_exits_1_with_one_error_line() {
    // Appending to /dev/full fails with ENOSPC.
    let mut server = Spawned::start(&["-o", "/dev/full"]);
    let mut client = server.connect_numbered(1);
    send(&mut client, b"nowhere to go\n");
    let finished = server.wait_exit(TIMEOUT);
    assert_eq!(finished.status.code(), Some(1), "{finished}");
    let errors: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|line| line.starts_with("error: "))
        .collect();
    assert_eq!(
        errors,
        ["error: cannot write output: no space left on device"],
        "{finished}"
    );
    expect_eof(&mut client, TIMEOUT);
}

#[test]
fn sigterm_during_a_connection_flood() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 2_000;
    // With an hour between polls, only the stop pipe (or a connection) wakes the listener.
    let mut server = Spawned::start(&["--poll-interval", "1h"]);
    let addr = server.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let flooders: Vec<JoinHandle<usize>> = (0..THREADS)
        .map(|t| {
            let stop = Arc::clone(&stop);
            let made = Arc::clone(&made);
            thread::spawn(move || {
                // Connects until the server stops listening; returns how many connected.
                for k in 0..PER_THREAD {
                    if stop.load(Ordering::Relaxed) {
                        return k;
                    }
                    let Ok(mut client) = TcpStream::connect_timeout(&addr, TIMEOUT) else {
                        return k;
                    };
                    made.fetch_add(1, Ordering::Relaxed);
                    // A write may fail if the server stopped meanwhile.
                    let _ = client.write_all(format!("f{t}-{k}\n").as_bytes());
                }
                PER_THREAD
            })
        })
        .collect();
    server.wait_stderr("client 200 connected from ", LONG_TIMEOUT);
    // The flood is still going when the signal comes.
    let before = made.load(Ordering::Relaxed);
    assert!(
        before < THREADS * PER_THREAD,
        "the flood ended before the stop"
    );
    let finished = server.stop(Signal::TERM);
    stop.store(true, Ordering::Relaxed);
    let connected: Vec<usize> = flooders
        .into_iter()
        .map(|f| f.join().expect("a flood thread failed"))
        .collect();
    finished.assert_success();
    finished.assert_stderr_has("signal received");
    eprintln!("{before} connections made before the stop, {connected:?} per thread in all");
    // Every client that got a worker was joined, and its one line printed: those still queued
    // at the stop too.
    let numbered = count_lines(&finished.stderr, " connected from ");
    assert!(numbered >= 200, "{finished}");
    assert_eq!(disconnects(&finished.stderr), numbered, "{finished}");
    finished.assert_stderr_has(&format!("served {numbered} clients: "));
    assert_eq!(finished.stdout.lines().count(), numbered, "{finished}");
}

/// Whether process `pid` is stopped (state `T` in `/proc/PID/stat`).
fn is_stopped(pid: u32) -> bool {
    let path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("cannot read {path}: {err}"));
    // The state follows the command name, which is in parentheses.
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('T'))
}

// The flood above rarely keeps the listener busy for long: the accept loop catches up and
// notices the stop when `accept` would block. Here the backlog is full when the server resumes,
// so the loop has thousands of connections to accept when the signal comes. The loop notices
// the stop between accepts, and then the stop itself accepts what is still queued: every one of
// them gets a number and a worker, is drained and closed.
#[test]
fn connections_queued_when_the_stop_comes_are_all_served() {
    /// Connections queued while the server is stopped: well under the backlog (4096).
    const QUEUED: usize = 2_000;
    let mut server = Spawned::start(&["--poll-interval", "1h"]);
    let pid = server.pid();
    server.signal(Signal::STOP);
    let deadline = Instant::now() + TIMEOUT;
    while !is_stopped(pid) {
        assert!(Instant::now() < deadline, "SIGSTOP did not stop the server");
        thread::sleep(SAMPLE_STEP);
    }
    // The kernel completes the handshakes and queues them until the server accepts.
    let mut clients: Vec<TcpStream> = (0..QUEUED).map(|_| connect(server.addr())).collect();
    server.signal(Signal::CONT);
    server.wait_stderr("client 1 connected from ", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    let numbered = count_lines(&finished.stderr, " connected from ");
    assert_eq!(numbered, QUEUED, "{finished}");
    assert_eq!(disconnects(&finished.stderr), numbered, "{finished}");
    finished.assert_stderr_has(&format!("served {QUEUED} clients: "));
    finished.assert_stderr_has("refused 0 connections");
    for client in &mut clients {
        expect_eof(client, TIMEOUT);
    }
}

/// Padding after each message of [`timer_fires_while_500_clients_send`]: longer lines mean fewer
/// of them for the same bytes, which keeps the test's own line checking from slowing the server.
const PAD: &str =
    " ...............................................................................";

/// Message `j` of writer `i`.
fn padded_message(i: usize, j: usize) -> String {
    format!("c{i}-{j}{PAD}")
}

/// Splits `[N] message` into N, false and the message; `[N!] message` (a message the stop cut
/// off, as the server marks it) into N, true and the message.
fn split_client(line: &[u8]) -> Option<(usize, bool, &[u8])> {
    let rest = line.strip_prefix(b"[")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let n = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = &rest[digits..];
    match rest.strip_prefix(b"!] ") {
        Some(message) => Some((n, true, message)),
        None => Some((n, false, rest.strip_prefix(b"] ")?)),
    }
}

/// The writer and number of a whole `c{i}-{j}{PAD}` message.
fn parse_padded(message: &[u8]) -> Option<(usize, usize)> {
    let text = std::str::from_utf8(message).ok()?;
    let (i, j) = text.strip_prefix('c')?.strip_suffix(PAD)?.split_once('-')?;
    Some((i.parse().ok()?, j.parse().ok()?))
}

/// One client's progress in a [`SequenceCheck`].
#[derive(Debug, Clone, Copy)]
struct Sequence {
    /// The writer this client is (`None` when its only message was cut short).
    writer: Option<usize>,
    /// The next message number expected.
    next: usize,
    /// A cut-short message was printed: nothing may follow it.
    cut: bool,
}

/// Checks the stream of `[N] c{i}-{j}{PAD}` lines of [`timer_fires_while_500_clients_send`] as
/// it is read: client N always sends as the same writer `i`, its messages are j = 0, 1, 2, …
/// with no hole and no repeat, and only its last message may be cut short (the unfinished line
/// the server held when it stopped, marked `[N!]` or, by servers that do not mark it, `[N]`).
#[derive(Debug)]
struct SequenceCheck {
    /// Indexed by client number - 1.
    clients: Vec<Option<Sequence>>,
    /// Indexed by writer: the client number it was printed as.
    writers: Vec<Option<usize>>,
    lines: usize,
    first_error: Option<String>,
}

impl SequenceCheck {
    fn new(count: usize) -> SequenceCheck {
        SequenceCheck {
            clients: vec![None; count],
            writers: vec![None; count],
            lines: 0,
            first_error: None,
        }
    }

    /// Checks one line; for a whole message, returns its writer and how many of that writer's
    /// messages are now printed.
    fn line(&mut self, line: &[u8]) -> Option<(usize, usize)> {
        self.lines += 1;
        self.check(line).unwrap_or_else(|err| {
            self.first_error.get_or_insert(err);
            None
        })
    }

    fn check(&mut self, line: &[u8]) -> Result<Option<(usize, usize)>, String> {
        let count = self.clients.len();
        let shown = || String::from_utf8_lossy(line).into_owned();
        let Some((n, marked, printed)) =
            split_client(line).filter(|(n, _, _)| (1..=count).contains(n))
        else {
            return Err(format!("malformed line {:?}", shown()));
        };
        // A marked message is cut even if it has all the characters of a whole one.
        let whole = if marked { None } else { parse_padded(printed) };
        match (&mut self.clients[n - 1], whole) {
            (Some(seq), _) if seq.cut => Err(format!(
                "client {n}: {:?} after a cut-short message",
                shown()
            )),
            (Some(seq), Some((i, j))) if seq.writer == Some(i) && seq.next == j => {
                seq.next += 1;
                Ok(Some((i, seq.next)))
            }
            (Some(seq), _) => {
                let expected = padded_message(seq.writer.unwrap_or(usize::MAX), seq.next);
                if !printed.is_empty() && expected.as_bytes().starts_with(printed) {
                    seq.cut = true;
                    Ok(None)
                } else {
                    Err(format!("client {n}: {:?}, expected {expected:?}", shown()))
                }
            }
            // The first message of client N says which writer it is.
            (slot @ None, Some((i, 0))) if i < count => {
                if let Some(other) = self.writers[i].replace(n) {
                    return Err(format!("writer {i} printed as client {other} and {n}"));
                }
                *slot = Some(Sequence {
                    writer: Some(i),
                    next: 1,
                    cut: false,
                });
                Ok(Some((i, 1)))
            }
            // A first message cut short.
            (slot @ None, None)
                if !printed.is_empty()
                    && (0..count).any(|i| padded_message(i, 0).as_bytes().starts_with(printed)) =>
            {
                *slot = Some(Sequence {
                    writer: None,
                    next: 0,
                    cut: true,
                });
                Ok(None)
            }
            (None, _) => Err(format!("client {n}: first message {:?}", shown())),
        }
    }
}

/// What the stdout checker of [`timer_fires_while_500_clients_send`] has seen, for the writers:
/// how many whole messages of each writer are printed, and whether stdout has closed.
struct Progress {
    /// Indexed by writer. Written by the checker before it bumps `round`, read by writers after
    /// they read `round`: the mutex orders them, so `Relaxed` is enough here.
    printed: Vec<AtomicUsize>,
    closed: AtomicBool,
    /// Bumped each time the checker has caught up with what it read, and at EOF.
    round: Mutex<u64>,
    changed: Condvar,
}

impl Progress {
    fn new(writers: usize) -> Progress {
        Progress {
            printed: (0..writers).map(|_| AtomicUsize::new(0)).collect(),
            closed: AtomicBool::new(false),
            round: Mutex::new(0),
            changed: Condvar::new(),
        }
    }

    fn round(&self) -> u64 {
        *self.round.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn printed(&self, writer: usize) -> usize {
        self.printed[writer].load(Ordering::Relaxed)
    }

    fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Wakes the writers waiting for more to be printed.
    fn publish(&self) {
        *self.round.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.changed.notify_all();
    }

    /// Waits until a round after `seen` is published, or until `deadline`.
    fn wait(&self, seen: u64, deadline: Instant) {
        let round = self.round.lock().unwrap_or_else(PoisonError::into_inner);
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = self
            .changed
            .wait_timeout_while(round, left, |round| *round == seen)
            .unwrap_or_else(PoisonError::into_inner);
    }
}

// 500 clients keep sending through a timed stop. Each may have at most `WINDOW` messages sent
// but not yet seen printed, so what the server can owe its output at the stop is bounded by the
// test (500 × 64 lines of about 90 bytes: 2.9 MB), not by the kernel's socket buffers: while the
// output is slow those grow to megabytes per connection, and a stop that prints every byte
// received (hundreds of MB from a debug build) once took longer than any deadline here. The
// 500 windows together still hold more than the server's 1 MiB of pending output, so workers
// wait for the output as before.
#[test]
fn timer_fires_while_500_clients_send() {
    const CLIENTS: usize = 500;
    const THREADS: usize = 10;
    const LINES_PER_WRITE: usize = 16;
    const WINDOW: usize = 4 * LINES_PER_WRITE;
    let mut server = Spawned::start_with_own_stdout(&["--duration", "2s"]);
    let stdout = server.take_stdout();
    let progress = Arc::new(Progress::new(CLIENTS));
    // Checked as it is read rather than kept: the server prints tens of MB here.
    let checker = {
        let progress = Arc::clone(&progress);
        thread::spawn(move || {
            let mut check = SequenceCheck::new(CLIENTS);
            let mut reader = BufReader::with_capacity(1024 * 1024, stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let message = line.strip_suffix(b"\n").unwrap_or(&line);
                        if let Some((writer, printed)) = check.line(message) {
                            progress.printed[writer].store(printed, Ordering::Relaxed);
                        }
                        // Before a read that may block, tell the writers what was seen.
                        if !reader.buffer().contains(&b'\n') {
                            progress.publish();
                        }
                    }
                }
            }
            progress.closed.store(true, Ordering::Relaxed);
            progress.publish();
            check
        })
    };
    let clients: Vec<TcpStream> = (0..CLIENTS).map(|_| connect(server.addr())).collect();
    let mut groups: Vec<Vec<(usize, TcpStream)>> = (0..THREADS).map(|_| Vec::new()).collect();
    for (i, client) in clients.into_iter().enumerate() {
        groups[i % THREADS].push((i, client));
    }
    let writers: Vec<JoinHandle<()>> = groups
        .into_iter()
        .map(|group| {
            let progress = Arc::clone(&progress);
            thread::spawn(move || {
                // Round robin over this thread's clients, each writing whenever its window has
                // room, until stdout closes: the server has exited. A failed write means the
                // server closed that client.
                let mut live: Vec<(usize, TcpStream, usize)> =
                    group.into_iter().map(|(i, c)| (i, c, 0)).collect();
                let deadline = Instant::now() + LONG_TIMEOUT;
                while !live.is_empty() && !progress.closed() {
                    assert!(
                        Instant::now() < deadline,
                        "stdout still open {LONG_TIMEOUT:?} later"
                    );
                    let round = progress.round();
                    let mut wrote = false;
                    live.retain_mut(|(i, client, sent)| {
                        if *sent + LINES_PER_WRITE > progress.printed(*i) + WINDOW {
                            return true;
                        }
                        wrote = true;
                        let mut chunk = String::new();
                        for j in *sent..*sent + LINES_PER_WRITE {
                            writeln!(chunk, "{}", padded_message(*i, j))
                                .expect("writing to a String");
                        }
                        *sent += LINES_PER_WRITE;
                        client.write_all(chunk.as_bytes()).is_ok()
                    });
                    if !wrote {
                        progress.wait(round, deadline);
                    }
                }
                // The server has exited, so every connection is closed.
                for (_, mut client, _) in live {
                    expect_eof(&mut client, TIMEOUT);
                }
            })
        })
        .collect();
    // Every client has a worker before the timer fires (or this fails with the log).
    server.wait_stderr(&format!("client {CLIENTS} connected from "), TIMEOUT);
    // The stop comes 2 s after the start; workers keep reading clients that keep sending for 2 s
    // more (the drain limit), then owe the output at most a window of lines per client. The
    // deadline leaves room for a slow machine.
    let finished = server.wait_exit(LONG_TIMEOUT);
    for writer in writers {
        writer.join().expect("a writer thread failed");
    }
    let check = checker.join().expect("the stdout checker");
    finished.assert_success();
    finished.assert_stderr_has("time is up");
    if let Some(err) = &check.first_error {
        panic!("{err}\n{finished}");
    }
    let silent = check.clients.iter().filter(|seq| seq.is_none()).count();
    assert_eq!(silent, 0, "clients with nothing printed\n{finished}");
    finished.assert_stderr_has(&format!("served {CLIENTS} clients: "));
    assert_eq!(disconnects(&finished.stderr), CLIENTS, "{finished}");
}

/// What the soak test's stdout checker saw: every line `[N] t{thread}-{k}`.
#[derive(Debug, Default)]
struct SoakCheck {
    messages: HashSet<(usize, usize)>,
    numbers: HashSet<u64>,
    repeated: usize,
    first_malformed: Option<String>,
}

impl SoakCheck {
    fn line(&mut self, line: &str) {
        let parsed = line
            .strip_prefix('[')
            .and_then(|rest| rest.split_once("] t"))
            .and_then(|(n, message)| {
                let (t, k) = message.split_once('-')?;
                Some((n.parse().ok()?, t.parse().ok()?, k.parse().ok()?))
            });
        match parsed {
            Some((n, t, k)) => {
                let fresh = self.messages.insert((t, k));
                let fresh_number = self.numbers.insert(n);
                if !fresh || !fresh_number {
                    self.repeated += 1;
                }
            }
            None => {
                self.first_malformed.get_or_insert_with(|| line.to_owned());
            }
        }
    }
}

/// `overhear -q` on a port the kernel picks. Quiet logs have no `listening on` line, so the port
/// is found in `/proc`; stdout is checked line by line on a thread instead of kept. Dropping it
/// kills and reaps the process, and prints its stderr if the test is failing.
struct QuietServer {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
    /// Stdout lines read so far, counted by `checker`.
    lines: Arc<AtomicUsize>,
    checker: Option<JoinHandle<SoakCheck>>,
}

impl QuietServer {
    fn start() -> QuietServer {
        let args = [
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--duration",
            "0",
            "-q",
        ];
        let mut child = crate::common::overhear(&args)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run overhear -q: {err}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("piped stderr");
        let text = Arc::clone(&stderr);
        // Kept line by line, so that a failing test can show what came so far.
        let stderr_reader = Some(thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut text = text.lock().unwrap_or_else(PoisonError::into_inner);
                text.push_str(&line);
                text.push('\n');
            }
        }));
        let lines = Arc::new(AtomicUsize::new(0));
        let checker = Some(Self::check_stdout(
            child.stdout.take().expect("piped stdout"),
            Arc::clone(&lines),
        ));
        let mut server = QuietServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
            stderr_reader,
            lines,
            checker,
        };
        let port = server.wait_listening();
        server.addr.set_port(port);
        server
    }

    fn check_stdout(stdout: ChildStdout, lines: Arc<AtomicUsize>) -> JoinHandle<SoakCheck> {
        thread::spawn(move || {
            let mut check = SoakCheck::default();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                check.line(&line);
                lines.fetch_add(1, Ordering::Relaxed);
            }
            check
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `/proc` until the process has a listening TCP socket, and returns its port.
    fn wait_listening(&mut self) -> u16 {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(port) = crate::common::listening_port(self.pid()) {
                return port;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("overhear -q exited with {status} before listening");
            }
            assert!(Instant::now() < deadline, "overhear -q is not listening");
            thread::sleep(SAMPLE_STEP);
        }
    }

    /// Waits until `count` stdout lines were read.
    fn wait_lines(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.lines.load(Ordering::Relaxed) < count {
            assert!(
                Instant::now() < deadline,
                "{} of {count} lines after {timeout:?}",
                self.lines.load(Ordering::Relaxed)
            );
            thread::sleep(SAMPLE_STEP);
        }
    }

    /// Sends SIGTERM, waits for the exit and returns the status, stderr and stdout check.
    fn stop(mut self) -> (ExitStatus, String, SoakCheck) {
        kill_process(Pid::from_child(&self.child), Signal::TERM).expect("signal overhear -q");
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(SAMPLE_STEP),
                Ok(None) => panic!("overhear -q still running {TIMEOUT:?} after SIGTERM"),
                Err(err) => panic!("cannot wait for overhear -q: {err}"),
            }
        };
        // The process is gone, so both pipes reach EOF and their readers end.
        let check = self
            .checker
            .take()
            .expect("stopped once")
            .join()
            .expect("the stdout checker");
        self.stderr_reader
            .take()
            .expect("stopped once")
            .join()
            .expect("the stderr reader");
        let stderr = self
            .stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        (status, stderr, check)
    }
}

impl Drop for QuietServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            let stderr = self.stderr.lock().unwrap_or_else(PoisonError::into_inner);
            eprintln!("--- overhear -q stderr ---\n{stderr}");
        }
    }
}

#[test]
#[ignore = "soak: 100,000 connections, run with cargo test --release --test tests -- --ignored soak"]
fn soak_100k_connections() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 12_500;
    const TOTAL: usize = THREADS * PER_THREAD;
    let server = QuietServer::start();
    let pid = server.pid();
    // The signal handler's thread starts after the socket is bound; then the count is settled.
    wait_threads(pid, "the signal handler's thread", TIMEOUT, |names| {
        names.iter().any(|name| name == "ctrl-c")
    });
    let start_threads = thread_names(pid).len();
    let start_rss = rss(pid);
    let started = Instant::now();
    let addr = server.addr;
    let failures = Arc::new(AtomicU64::new(0));
    let clients: Vec<JoinHandle<()>> = (0..THREADS)
        .map(|t| {
            let failures = Arc::clone(&failures);
            thread::spawn(move || {
                for k in 0..PER_THREAD {
                    match TcpStream::connect_timeout(&addr, TIMEOUT) {
                        Ok(mut client) => {
                            if client.write_all(format!("t{t}-{k}\n").as_bytes()).is_err() {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client thread failed");
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "connects or sends failed"
    );
    server.wait_lines(TOTAL, 10 * LONG_TIMEOUT);
    let elapsed = started.elapsed();
    wait_threads(
        pid,
        &format!("the thread count to return to {start_threads}"),
        LONG_TIMEOUT,
        |names| names.len() == start_threads,
    );
    let end_rss = rss(pid);
    eprintln!(
        "soak: {TOTAL} connections from {THREADS} threads in {elapsed:.1?}; \
         threads {start_threads} -> {}; VmRSS {} -> {}",
        thread_names(pid).len(),
        mib(start_rss),
        mib(end_rss)
    );
    let (status, stderr, check) = server.stop();
    assert!(
        status.success(),
        "overhear -q exited with {status}\n{stderr}"
    );
    assert_no_panic("stderr", &stderr);
    assert_eq!(check.first_malformed, None, "malformed line");
    assert_eq!(check.repeated, 0, "lines or client numbers printed twice");
    assert_eq!(check.messages.len(), TOTAL, "distinct messages");
    assert!(
        (0..THREADS).all(|t| (0..PER_THREAD).all(|k| check.messages.contains(&(t, k)))),
        "a message is missing"
    );
    assert!(
        (1..=TOTAL as u64).all(|n| check.numbers.contains(&n)),
        "client numbers are not 1 to {TOTAL}"
    );
    // Measured: 4.8 MiB -> 12.5 MiB. Almost all of the growth is glibc's cache of freed thread
    // stacks (about 310 stacks of 128 KiB, 16 KiB of each resident: hundreds of workers were
    // alive at once at the peak), which glibc caps at 40 MiB of stacks; the rest is its per-thread
    // malloc arenas. Neither grows with the number of connections.
    assert!(
        end_rss < start_rss + 8 * MIB,
        "resident memory grew from {} to {}",
        mib(start_rss),
        mib(end_rss)
    );
}
