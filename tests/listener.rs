//! End-to-end tests of the `overhear` binary: numbering and attribution, stopping (timer,
//! signals, output closed) without losing bytes, formatting of awkward bytes, error exits, real
//! netcat clients, and threads that end with their clients.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::{
    LONG_TIMEOUT, Netcat, Signal, Spawned, TIMEOUT, assert_no_panic, connect, expect_eof,
    run_to_end, send, thread_names, unacknowledged, wait_threads,
};

#[test]
fn three_clients_are_numbered_and_attributed() {
    let mut server = Spawned::start(&[]);
    let mut clients: Vec<TcpStream> = (1..=3).map(|n| server.connect_numbered(n)).collect();
    // Interleave the clients, so attribution cannot follow from order alone.
    for round in ["first", "second"] {
        for (i, client) in clients.iter_mut().enumerate().rev() {
            send(
                client,
                format!("{round} line of client {}\n", i + 1).as_bytes(),
            );
        }
    }
    let lines = server.wait_stdout_lines(6, TIMEOUT);
    for n in 1..=3 {
        assert_eq!(
            lines_of(&lines, n),
            [
                &format!("[{n}] first line of client {n}"),
                &format!("[{n}] second line of client {n}")
            ],
            "lines of client {n} in {lines:#?}"
        );
    }
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    assert_eq!(finished.stdout.lines().count(), 6, "{finished}");
    finished.assert_stderr_has("served 3 clients: 6 messages, ");
    // Every client was accepted before the stop: none is said to be queued at it.
    assert!(
        !finished.stderr.contains("queued at the stop"),
        "{finished}"
    );
}

#[test]
fn one_client_leaving_ends_only_its_worker() {
    let mut server = Spawned::start(&[]);
    let mut first = server.connect_numbered(1);
    let mut second = server.connect_numbered(2);
    send(&mut first, b"goodbye\n");
    drop(first);
    server.wait_stderr("client 1 disconnected (closed by client)", TIMEOUT);
    send(&mut second, b"still here\n");
    server.wait_stdout("[2] still here", TIMEOUT);
    let stderr = server.stderr_text();
    assert!(
        !stderr.contains("client 2 disconnected"),
        "client 2 was dropped with client 1:\n{stderr}"
    );
    assert_eq!(server.stdout_lines(), ["[1] goodbye", "[2] still here"]);
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    finished.assert_stderr_has("client 2 disconnected (server stopping)");
    expect_eof(&mut second, TIMEOUT);
}

#[test]
fn timer_stops_server_and_clients_see_eof() {
    // Long enough to connect two clients on a slow machine; the test waits for the exit anyway.
    let mut server = Spawned::start(&["--duration", "2s"]);
    let mut clients: Vec<TcpStream> = (1..=2).map(|n| server.connect_numbered(n)).collect();
    let finished = server.wait_exit(TIMEOUT);
    finished.assert_success();
    for client in &mut clients {
        expect_eof(client, TIMEOUT);
    }
    finished.assert_stderr_has("time is up");
    finished.assert_stderr_has("client 1 disconnected (server stopping)");
    finished.assert_stderr_has("client 2 disconnected (server stopping)");
    finished.assert_stderr_has("served 2 clients: 0 messages, 0 bytes");
}

#[test]
fn sigterm_and_sigint_stop_gracefully() {
    for (signal, name) in [(Signal::TERM, "SIGTERM"), (Signal::INT, "SIGINT")] {
        // With an hour between polls, only the stop pipe can wake the workers and the listener.
        let mut server = Spawned::start(&["--poll-interval", "1h"]);
        let mut talker = server.connect_numbered(1);
        let mut idle = server.connect_numbered(2);
        send(&mut talker, b"whole line\n");
        server.wait_stdout("[1] whole line", TIMEOUT);
        // An unfinished last line is printed when the server stops.
        send(&mut talker, b"no newline yet");
        let finished = server.stop(signal);
        assert!(
            finished.status.success(),
            "{name}: overhear failed\n{finished}"
        );
        expect_eof(&mut talker, TIMEOUT);
        expect_eof(&mut idle, TIMEOUT);
        assert_eq!(
            finished.stdout, "[1] whole line\n[1] no newline yet\n",
            "{name}\n{finished}"
        );
        finished.assert_stderr_has("signal received");
        finished.assert_stderr_has("client 2 disconnected (server stopping)");
        finished.assert_stderr_has("served 2 clients: 2 messages, 25 bytes");
    }
}

#[test]
fn a_stop_logs_each_disconnected_client_once_in_client_order() {
    const CLIENTS: usize = 12;
    let mut server = Spawned::start(&["--poll-interval", "1h"]);
    let mut clients: Vec<TcpStream> = (1..=CLIENTS).map(|n| server.connect_numbered(n)).collect();
    // The last client leaves by itself first: its worker logs that line, not the listener.
    drop(clients.pop());
    server.wait_stderr(
        &format!("client {CLIENTS} disconnected (closed by client)"),
        TIMEOUT,
    );
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    let stopped: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|line| line.contains(" disconnected ("))
        .map(|line| {
            let at = line.find("client ").expect("the client's number");
            &line[at..line.find(" after ").unwrap_or(line.len())]
        })
        .collect();
    let mut expected: Vec<String> =
        vec![format!("client {CLIENTS} disconnected (closed by client)")];
    expected.extend((1..CLIENTS).map(|n| format!("client {n} disconnected (server stopping)")));
    assert_eq!(stopped, expected, "\n{finished}");
    for client in &mut clients {
        expect_eof(client, TIMEOUT);
    }
}

// The stop must still be under way when the second signal comes, whatever the machine's speed:
// nobody reads the server's stdout, and the client has had more bytes acknowledged by the
// server's kernel than the pipe holds. A stop prints every such byte before it ends, so it
// blocks on the full pipe until the second signal ends the process.
#[test]
fn second_signal_during_shutdown_exits_130_at_once() {
    let mut server = Spawned::start_with_own_stdout(&[]);
    // Kept open and never read until the server has exited.
    let unread = server.take_stdout();
    let room = rustix::pipe::fcntl_getpipe_size(&unread).expect("the size of the stdout pipe");
    let mut client = server.connect_numbered(1);
    let line = "x".repeat(1023) + "\n";
    let mut written = 0;
    let deadline = Instant::now() + TIMEOUT;
    // A send could only block for good once the worker is stuck on the full pipe and the
    // server's receive buffer is full as well; by then the server's kernel has acknowledged
    // about a pipe's worth plus that buffer (tens of KB), so the loop has ended before.
    while written - unacknowledged(&client) <= room {
        assert!(
            written <= 64 * room && Instant::now() < deadline,
            "{written} bytes sent, only {} acknowledged",
            written - unacknowledged(&client)
        );
        send(&mut client, line.as_bytes());
        written += line.len();
    }
    server.signal(Signal::TERM);
    // Logged once the stop is requested; the stop then waits for the output.
    server.wait_stderr("signal received, stopping", TIMEOUT);
    server.signal(Signal::TERM);
    let finished = server.wait_exit(TIMEOUT);
    drop(unread);
    assert_eq!(finished.status.code(), Some(130), "{finished}");
    finished.assert_stderr_has("second signal received, exiting at once");
    assert!(
        !finished.stderr.contains("served "),
        "the summary means the second signal waited for the shutdown\n{finished}"
    );
    drop(client);
}

const WRITERS: usize = 8;
const LINES_PER_WRITER: usize = 20_000;

/// Padding that makes the mid-send test's lines longer: as many bytes in fewer lines keeps the
/// test's memory small.
const PAD: &str = " ...............................................................";

/// Message `j` of writer `i`: `c{i}-{j}` then `pad`.
fn message(i: usize, j: usize, pad: &str) -> String {
    format!("c{i}-{j}{pad}")
}

/// `count` lines of writer `i`, from message `first` on.
fn numbered_lines(i: usize, first: usize, count: usize, pad: &str) -> String {
    let mut text = String::new();
    for j in first..first + count {
        writeln!(text, "{}", message(i, j, pad)).expect("writing to a String cannot fail");
    }
    text
}

/// The lines of `lines` that client `n` sent, in order, with their `[n] ` prefix.
fn lines_of(lines: &[String], n: usize) -> Vec<&String> {
    let prefix = format!("[{n}] ");
    lines.iter().filter(|l| l.starts_with(&prefix)).collect()
}

/// Splits each stdout line `[N] message` by client number N (1 to [`WRITERS`]) and returns
/// each client's messages in order. Whether they belong to that client is for the caller: it
/// knows which messages client N sent (`c{N-1}-...`).
fn by_client(stdout: &str) -> Vec<Vec<&str>> {
    let mut clients = vec![Vec::new(); WRITERS];
    for line in stdout.lines() {
        let parsed = line
            .strip_prefix('[')
            .and_then(|rest| rest.split_once("] "))
            .and_then(|(n, message)| Some((n.parse::<usize>().ok()?, message)));
        let Some((n, message)) = parsed.filter(|(n, _)| (1..=WRITERS).contains(n)) else {
            panic!("malformed line {line:?}");
        };
        clients[n - 1].push(message);
    }
    clients
}

// Every write has returned, but some of the bytes may still sit in the client's kernel,
// waiting for a window update from the server. This caught a drain that closed too early
// (about 1 run in 8 lost the tail of one client's data): the drain now sends its pending ACK at
// once (TCP_QUICKACK) and gives a client that was streaming a grace period.
#[test]
fn nothing_is_lost_when_stopping_after_the_writes_returned() {
    // With an hour between polls, only the stop pipe wakes the workers to drain.
    let mut server = Spawned::start(&["--poll-interval", "1h"]);
    let clients: Vec<TcpStream> = (1..=WRITERS).map(|n| server.connect_numbered(n)).collect();
    let writers: Vec<JoinHandle<TcpStream>> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            thread::spawn(move || {
                // Big writes: much of them is still in kernel buffers when the signal comes.
                for first in (0..LINES_PER_WRITER).step_by(1_000) {
                    send(&mut client, numbered_lines(i, first, 1_000, "").as_bytes());
                }
                client
            })
        })
        .collect();
    // Every write returned; the sockets stay open, so only the stop can end the workers.
    let mut clients: Vec<TcpStream> = writers
        .into_iter()
        .map(|w| w.join().expect("a writer failed"))
        .collect();
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    for (i, messages) in by_client(&finished.stdout).iter().enumerate() {
        let expected = numbered_lines(i, 0, LINES_PER_WRITER, "");
        if !messages.iter().copied().eq(expected.lines()) {
            let printed: HashSet<&str> = messages.iter().copied().collect();
            let missing = expected.lines().find(|l| !printed.contains(l));
            panic!(
                "client {}: printed {} of {LINES_PER_WRITER} lines (first missing: {missing:?})\n\
                 --- stderr ---\n{}",
                i + 1,
                messages.len(),
                finished.stderr
            );
        }
    }
    finished.assert_stderr_has(&format!(
        "served {WRITERS} clients: {} messages",
        WRITERS * LINES_PER_WRITER
    ));
    for client in &mut clients {
        expect_eof(client, TIMEOUT);
    }
}

/// Checks a stream of `[N] c{N-1}-{j}{PAD}` lines as it is read: per client, messages 0..k in
/// order, no hole, no repeat, nothing else; only the last message of a client may be cut short
/// (the unfinished line the server held when it stopped, printed as far as it got, marked
/// `[N!]` when the drain limit cut it off).
#[derive(Debug, Default)]
struct StreamCheck {
    /// Per client: the next message number expected.
    next: [usize; WRITERS],
    /// Per client: whether a cut-short message was printed (then nothing may follow).
    cut: [bool; WRITERS],
    lines: usize,
}

impl StreamCheck {
    fn line(&mut self, line: &str) -> Result<(), String> {
        self.lines += 1;
        // `[N!] ` marks a message the drain limit cut off while the client was sending it.
        let parsed = line
            .strip_prefix('[')
            .and_then(|rest| rest.split_once("] "))
            .and_then(|(n, message)| {
                let (n, marked) = n.strip_suffix('!').map_or((n, false), |n| (n, true));
                Some((n.parse::<usize>().ok()?, marked, message))
            });
        let Some((n, marked, printed)) = parsed.filter(|(n, _, _)| (1..=WRITERS).contains(n))
        else {
            return Err(format!("malformed line {line:?}"));
        };
        let i = n - 1;
        let sent = message(i, self.next[i], PAD);
        if self.cut[i] {
            Err(format!("client {n}: {printed:?} after a cut-short message"))
        } else if marked && !sent.starts_with(printed) {
            // A cut message may hold every byte but its line end.
            Err(format!(
                "client {n}: {printed:?} marked cut, expected part of {sent:?}"
            ))
        } else if printed == sent {
            self.next[i] += 1;
            Ok(())
        } else if sent.starts_with(printed) && !printed.is_empty() {
            self.cut[i] = true;
            Ok(())
        } else {
            Err(format!(
                "client {n}: printed {printed:?}, expected {sent:?}"
            ))
        }
    }

    /// Messages printed for client `i` (0-based), counting a cut-short one.
    fn printed(&self, i: usize) -> usize {
        self.next[i] + usize::from(self.cut[i])
    }
}

#[test]
fn lines_stay_whole_when_stopping_mid_send() {
    const CHUNK: usize = 64;
    const SIGNAL_AFTER: usize = WRITERS * 100;
    let mut server = Spawned::start_with_own_stdout(&["--poll-interval", "1h"]);
    // The server prints more than 100 MB here: check the lines as they come instead of keeping
    // them. The checker tells when SIGNAL_AFTER lines were seen, and ends at EOF.
    let stdout = server.take_stdout();
    let (progress, started) = mpsc::channel();
    let checker = thread::spawn(move || {
        let mut check = StreamCheck::default();
        let mut first_error = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Err(err) = check.line(&line) {
                first_error.get_or_insert(err);
            }
            if check.lines == SIGNAL_AFTER {
                let _ = progress.send(());
            }
        }
        (check, first_error)
    });
    let clients: Vec<TcpStream> = (1..=WRITERS).map(|n| server.connect_numbered(n)).collect();
    let writers: Vec<JoinHandle<usize>> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            thread::spawn(move || {
                // Writes until the server closes the connection (a write fails), and returns
                // how many lines were in writes that returned.
                let mut written = 0;
                let deadline = Instant::now() + LONG_TIMEOUT;
                while Instant::now() < deadline {
                    let chunk = numbered_lines(i, written, CHUNK, PAD);
                    if client.write_all(chunk.as_bytes()).is_err() {
                        return written;
                    }
                    written += CHUNK;
                }
                panic!("client {} could still write {LONG_TIMEOUT:?} later", i + 1);
            })
        })
        .collect();
    // The clients are sending, and keep sending through the stop.
    started
        .recv_timeout(LONG_TIMEOUT)
        .unwrap_or_else(|_| panic!("{SIGNAL_AFTER} lines did not come in time"));
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    // The server exited, so its stdout is closed and the checker ends.
    let (check, first_error) = checker.join().expect("the checker thread");
    let written: Vec<usize> = writers
        .into_iter()
        .map(|w| w.join().expect("a writer failed"))
        .collect();
    if let Some(err) = first_error {
        panic!("{err}\n{finished}");
    }
    for (i, &written) in written.iter().enumerate() {
        // A complete line was sent whole, so its write returned; only a cut-short last line
        // may come from the write that failed.
        assert!(
            check.printed(i) <= written + 1,
            "client {} printed {} lines but wrote {written}",
            i + 1,
            check.printed(i)
        );
    }
    finished.assert_stderr_has(&format!("served {WRITERS} clients: "));
}

#[test]
fn partial_last_line_and_crlf() {
    let mut server = Spawned::start(&[]);
    let mut client = server.connect_numbered(1);
    send(&mut client, b"a\r\nb\rc\nlast");
    drop(client);
    server.wait_stderr("client 1 disconnected (closed by client)", TIMEOUT);
    let lines = server.wait_stdout_lines(3, TIMEOUT);
    assert_eq!(lines, ["[1] a", r"[1] b\x0dc", "[1] last"]);
    server.stop(Signal::TERM).assert_success();
}

/// A message full of bytes a terminal would act on, and some that must pass through.
const AWKWARD: &[u8] =
    b"esc \x1b[31mred\x1b[0m back\\slash bad \xff tab\there gr\xc3\xbc\xc3\x9fe\n";

#[test]
fn control_bytes_escaped_and_raw_flag() {
    let mut server = Spawned::start(&[]);
    let mut client = server.connect_numbered(1);
    send(&mut client, AWKWARD);
    let lines = server.wait_stdout_lines(1, TIMEOUT);
    assert_eq!(
        lines,
        [r"[1] esc \x1b[31mred\x1b[0m back\\slash bad \xff tab	here grüße"]
    );
    server.stop(Signal::TERM).assert_success();

    let mut raw = Spawned::start(&["--raw"]);
    let mut client = raw.connect_numbered(1);
    send(&mut client, AWKWARD);
    raw.wait_stdout_lines(1, TIMEOUT);
    assert_eq!(raw.stdout_raw(), [b"[1] ", AWKWARD].concat());
    raw.stop(Signal::TERM).assert_success();
}

#[test]
fn long_lines_come_in_pieces() {
    let mut server = Spawned::start(&["--max-line", "8"]);
    let mut client = server.connect_numbered(1);
    send(&mut client, b"abcdefghijkl\nshort\n");
    drop(client);
    let lines = server.wait_stdout_lines(3, TIMEOUT);
    assert_eq!(lines, ["[1] abcdefgh", "[1+] ijkl", "[1] short"]);
    // A message cut into pieces counts once.
    server.wait_stderr("client 1 disconnected (closed by client) after ", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    finished.assert_stderr_has(": 2 messages, 19 bytes");
}

#[test]
fn port_in_use() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = held.local_addr().expect("bound address").port().to_string();
    let output = run_to_end(&["--host", "127.0.0.1", "--port", &port, "--duration", "1s"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    assert_eq!(
        stderr,
        format!("error: cannot listen on 127.0.0.1:{port}: address already in use\n")
    );
    assert!(output.stdout.is_empty(), "stdout: {:?}", output.stdout);
}

#[test]
fn bad_arguments_exit_2() {
    let cases: [&[&str]; 7] = [
        &["--port", "70000"],
        &["--duration", "soon"],
        &["--bogus"],
        &["--poll-interval", "0"],
        &["--max-line", "0"],
        &["--max-line", "12parsecs"],
        &["-v", "-q"],
    ];
    for args in cases {
        let output = run_to_end(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: stderr:\n{stderr}");
        assert!(stderr.starts_with("error:"), "{args:?}: stderr:\n{stderr}");
        assert_no_panic("stderr", &stderr);
        assert!(output.stdout.is_empty(), "{args:?} wrote to stdout");
    }

    let help = run_to_end(&["--help"]);
    let stdout = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "--help: {stdout}");
    assert!(
        stdout.contains("Examples:"),
        "--help lacks examples:\n{stdout}"
    );

    let version = run_to_end(&["--version"]);
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        format!("overhear {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn ipv6_loopback() {
    if let Err(err) = std::net::TcpListener::bind("[::1]:0") {
        eprintln!("skipping ipv6_loopback: cannot bind [::1] here: {err}");
        return;
    }
    let mut server = Spawned::start(&["--host", "::1"]);
    assert_eq!(server.addr().ip().to_string(), "::1");
    server.wait_stderr(
        &format!("; connect with: nc ::1 {}", server.addr().port()),
        TIMEOUT,
    );
    let mut client = connect(server.addr());
    let connected = server.wait_stderr("client 1 connected from ", TIMEOUT);
    // With one listener, the line does not name it.
    let from = client.local_addr().expect("the client's address");
    assert!(
        connected.trim_end().ends_with(&format!("from {from}")),
        "{connected}"
    );
    send(&mut client, b"hello over v6\n");
    server.wait_stdout("[1] hello over v6", TIMEOUT);
    server.stop(Signal::TERM).assert_success();
    expect_eof(&mut client, TIMEOUT);
}

/// OpenBSD netcat (1.219, Debian) with its stdin still open does not notice that the server
/// closed the connection: no flag changes that except `-d` (never read stdin), which also means
/// it cannot send. `-N` and `-q SECS` act on EOF of stdin, not of the socket. Measured:
/// - stdin open: nc keeps running after the server closes, until stdin gives EOF or data;
/// - stdin closed, no `-N`: nc does not half-close, stays connected, and exits as soon as the
///   server closes (the `printf 'hi\n' | nc HOST PORT` case);
/// - a line typed after the server closed: nc exits on that write;
/// - `-d`: nc exits as soon as the server closes, stdin open or not.
#[test]
fn netcat_clients_like_the_tutorial() {
    if !crate::common::netcat_available() {
        return;
    }
    let mut server = Spawned::start(&[]);
    let host = server.addr().ip().to_string();
    let port = server.addr().port().to_string();
    let mut talkers: Vec<Netcat> = Vec::new();
    for n in 1..=3 {
        talkers.push(Netcat::start(&[&host, &port]));
        server.wait_stderr(&format!("client {n} connected from "), TIMEOUT);
    }
    let mut listener_only = Netcat::start(&["-d", &host, &port]);
    server.wait_stderr("client 4 connected from ", TIMEOUT);
    for (i, nc) in talkers.iter_mut().enumerate().rev() {
        let n = i + 1;
        assert!(
            nc.type_text(&format!("hello from nc {n}\n")),
            "nc {n} stdin"
        );
    }
    for (i, nc) in talkers.iter_mut().enumerate() {
        let n = i + 1;
        assert!(nc.type_text(&format!("bye from nc {n}\n")), "nc {n} stdin");
    }
    let lines = server.wait_stdout_lines(6, TIMEOUT);
    for n in 1..=3 {
        assert_eq!(
            lines_of(&lines, n),
            [
                &format!("[{n}] hello from nc {n}"),
                &format!("[{n}] bye from nc {n}")
            ],
            "lines of nc {n} in {lines:#?}"
        );
    }
    // Like `printf ... | nc`: done typing, still connected (no -N, so no half-close).
    talkers[2].close_stdin();

    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    for n in 1..=4 {
        finished.assert_stderr_has(&format!("client {n} disconnected (server stopping)"));
    }
    finished.assert_stderr_has("served 4 clients: 6 messages, ");

    // These two exit by themselves when the server closes.
    let status = talkers[2].wait_exit("the server stopped (stdin closed)", TIMEOUT);
    assert!(status.success(), "nc 3: {status}");
    let status = listener_only.wait_exit("the server stopped (nc -d)", TIMEOUT);
    assert!(status.success(), "nc -d: {status}");
    // With stdin open, nc notices at its next stdin event: EOF...
    talkers[0].close_stdin();
    let status = talkers[0].wait_exit("the server stopped and stdin closed", TIMEOUT);
    assert!(status.success(), "nc 1: {status}");
    // ... or a line typed into a dead connection (one is enough in practice; keep typing).
    let deadline = Instant::now() + TIMEOUT;
    while talkers[1].try_status().is_none() {
        assert!(
            Instant::now() < deadline,
            "nc 2 kept running while typing into a closed connection"
        );
        talkers[1].type_text("anyone there?\n");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn short_connections_leave_no_threads() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 750;
    const TOTAL: usize = THREADS * PER_THREAD;
    let mut server = Spawned::start(&["--poll-interval", "50ms"]);
    let pid = server.pid();
    // Whatever the server's own threads are (main, the signal handler's, any helper), none is
    // a client's yet: that is the count to come back to.
    let baseline = thread_names(pid).len();
    let addr = server.addr();
    let clients: Vec<JoinHandle<()>> = (0..THREADS)
        .map(|t| {
            thread::spawn(move || {
                for k in 0..PER_THREAD {
                    let mut client = connect(addr);
                    send(&mut client, format!("t{t}-{k}\n").as_bytes());
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client thread failed");
    }
    let lines = server.wait_stdout_lines(TOTAL, LONG_TIMEOUT);
    assert_eq!(lines.len(), TOTAL);
    let parsed: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            l.split_once("] ")
                .unwrap_or_else(|| panic!("malformed line {l:?}"))
        })
        .collect();
    // Every client got its own number, 1 to TOTAL, and every message was printed once.
    let numbers: HashSet<&str> = parsed.iter().map(|&(n, _)| n).collect();
    let expected: HashSet<String> = (1..=TOTAL).map(|n| format!("[{n}")).collect();
    assert!(
        numbers.iter().all(|n| expected.contains(*n)) && numbers.len() == TOTAL,
        "client numbers are not 1 to {TOTAL}, each once"
    );
    let messages: HashSet<&str> = parsed.iter().map(|&(_, m)| m).collect();
    assert_eq!(messages.len(), TOTAL, "messages repeat");
    server.wait_stderr(&format!("client {TOTAL} disconnected"), TIMEOUT);
    wait_threads(
        pid,
        &format!("the thread count to return to {baseline}"),
        TIMEOUT,
        |names| names.len() == baseline,
    );
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    finished.assert_stderr_has(&format!("served {TOTAL} clients: {TOTAL} messages"));
}

#[test]
fn stdout_closed_early() {
    let mut server = Spawned::start_with_own_stdout(&[]);
    let stdout = server.take_stdout();
    // Read on a thread, so a silent server fails the test instead of hanging it.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = reader.read_line(&mut line).map(|_| line);
        // The reader goes away here, like `overhear | head -1`.
        drop(reader);
        let _ = tx.send(read);
    });
    let mut client = server.connect_numbered(1);
    send(&mut client, b"first\n");
    let first = rx
        .recv_timeout(TIMEOUT)
        .expect("a line on stdout in time")
        .expect("stdout readable");
    assert_eq!(first, "[1] first\n");
    // The next write to stdout fails with EPIPE, which stops the server gracefully.
    send(&mut client, b"second\n");
    let finished = server.wait_exit(TIMEOUT);
    finished.assert_success();
    finished.assert_stderr_has("output closed by its reader");
    expect_eof(&mut client, TIMEOUT);
}

/// The listen queue `ss` reports for the socket listening on `port` (its Send-Q column).
fn listen_queue(port: u16) -> u32 {
    let output = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    // State, Recv-Q, Send-Q (the backlog for a listening socket), local, peer.
    assert_eq!(fields.first(), Some(&"LISTEN"), "ss said {text:?}");
    fields[2].parse().expect("a number in Send-Q")
}

#[test]
fn listen_backlog_is_deep_by_default_and_settable() {
    let server = Spawned::start(&[]);
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(4096);
    assert_eq!(listen_queue(server.addr().port()), somaxconn.min(4096));
    drop(server);
    let server = Spawned::start(&["--backlog", "77"]);
    assert_eq!(listen_queue(server.addr().port()), 77);
}

/// The summary table follows the summary line when there were clients, and not when there were
/// none.
#[test]
fn the_summary_table_comes_with_clients_only() {
    let mut server = Spawned::start(&[]);
    let finished = server.stop(Signal::TERM);
    finished.assert_stderr_has("served 0 clients");
    assert!(
        !finished.stderr.contains("client  peer"),
        "a table without clients\n{finished}"
    );
    let mut server = Spawned::start(&[]);
    let mut client = server.connect_numbered(1);
    send(&mut client, b"hi\n");
    server.wait_stdout("[1] hi", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    finished.assert_stderr_has("client  peer");
    finished.assert_stderr_has(" total  1 client");
}
