//! Talking back: lines typed on the server's stdin reach the clients they address, whole and in
//! order, with escapes read, a greeting first, a bounded queue for a client that does not read,
//! and everything queued sent before the stop closes the connection. Clients are `nc` where the
//! test is about what a user sees, plain sockets where it is about exact bytes.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::{
    LONG_TIMEOUT, Netcat, Rng, Signal, Spawned, TIMEOUT, TempDir, bin, connect, decode_base64,
    fresh_seed, installed, netcat_available, send,
};

/// The bytes received so far and whether EOF came, with the condition that signals a change.
type Shared = Arc<(Mutex<(Vec<u8>, bool)>, Condvar)>;

/// What a client socket has received, read on its own thread until EOF.
struct Received {
    state: Shared,
    reader: Option<JoinHandle<()>>,
}

impl Received {
    /// Starts reading everything `stream` receives.
    fn start(stream: &TcpStream) -> Received {
        let stream = stream.try_clone().expect("clone the socket");
        stream.set_read_timeout(None).expect("no read timeout");
        Received::from_reader(stream)
    }

    /// Reads everything `source` (a socket or a pipe) delivers until EOF, on its own thread.
    fn from_reader(mut source: impl Read + Send + 'static) -> Received {
        let state: Shared = Arc::new((Mutex::new((Vec::new(), false)), Condvar::new()));
        let shared = Arc::clone(&state);
        let reader = thread::spawn(move || {
            let mut buf = [0; 64 * 1024];
            loop {
                let n = match source.read(&mut buf) {
                    Ok(n) => n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => 0,
                };
                let (lock, changed) = &*shared;
                let mut got = lock.lock().expect("received");
                if n == 0 {
                    got.1 = true;
                } else {
                    got.0.extend_from_slice(&buf[..n]);
                }
                changed.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
        Received {
            state,
            reader: Some(reader),
        }
    }

    /// Waits until `done` holds for (bytes so far, closed), or panics after `timeout`.
    fn wait(&self, what: &str, timeout: Duration, done: impl Fn(&[u8], bool) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let (lock, changed) = &*self.state;
        let mut got = lock.lock().expect("received");
        loop {
            if done(&got.0, got.1) {
                return got.0.clone();
            }
            let now = Instant::now();
            assert!(
                now < deadline && !got.1,
                "{} waiting for {what}; received {:?}{}",
                if got.1 { "closed" } else { "timed out" },
                String::from_utf8_lossy(&got.0),
                if got.1 { " then EOF" } else { "" }
            );
            got = changed.wait_timeout(got, deadline - now).expect("lock").0;
        }
    }

    /// Waits until the bytes received end with `tail`.
    fn wait_for(&self, tail: &[u8]) -> Vec<u8> {
        let what = format!("{:?}", String::from_utf8_lossy(tail));
        self.wait(&what, TIMEOUT, |bytes, _| bytes.ends_with(tail))
    }

    /// Waits for EOF and returns everything received.
    fn until_eof(mut self) -> Vec<u8> {
        let deadline = Instant::now() + TIMEOUT;
        let (lock, changed) = &*self.state;
        let mut got = lock.lock().expect("received");
        while !got.1 {
            let now = Instant::now();
            assert!(
                now < deadline,
                "no EOF within {TIMEOUT:?}; received {:?}",
                String::from_utf8_lossy(&got.0)
            );
            got = changed.wait_timeout(got, deadline - now).expect("lock").0;
        }
        let bytes = got.0.clone();
        drop(got);
        if let Some(reader) = self.reader.take() {
            reader.join().expect("reader thread");
        }
        bytes
    }
}

/// Connects a client as number `n` and starts reading what it receives.
fn client(server: &Spawned, n: usize) -> (TcpStream, Received) {
    let stream = server.connect_numbered(n);
    let received = Received::start(&stream);
    (stream, received)
}

/// Three `nc` clients and a pipe as the server's stdin (`--stdin always`): broadcast, one
/// client, a list, `@*`, `@@`, an absent client and a malformed address, each reaching exactly
/// the clients it names, in the order typed.
#[test]
fn nc_clients_get_what_is_addressed_to_them() {
    if !netcat_available() {
        return;
    }
    let mut server = Spawned::start_typing(&["--stdin", "always"]);
    let port = server.addr().port().to_string();
    server.type_bytes(b"before anyone\n");
    server.wait_stderr("not sent: no client is connected", TIMEOUT);
    let clients: Vec<Netcat> = (1..=3)
        .map(|n| {
            let nc = Netcat::start(&["127.0.0.1", &port]);
            server.wait_stderr(&format!("client {n} connected from "), TIMEOUT);
            nc
        })
        .collect();
    server.type_bytes(b"hello all\n@2 to two\n@1,3 to one and three\n@* star\n@@at sign\n");
    server.type_bytes(b"@9 to nobody\n@2,9 to two and nobody\n@x malformed\n@3\n");
    server.wait_stderr("'@3' is not addressed right", TIMEOUT);
    server.type_bytes(b"end\n");
    for nc in &clients {
        nc.wait_received("end", TIMEOUT);
    }
    let expected: [&[u8]; 3] = [
        b"hello all\nto one and three\nstar\n@at sign\nend\n",
        b"hello all\nto two\nstar\n@at sign\nend\n",
        b"hello all\nto one and three\nstar\n@at sign\nend\n",
    ];
    for (n, (nc, want)) in clients.iter().zip(expected).enumerate() {
        assert_eq!(
            String::from_utf8_lossy(&nc.received()),
            String::from_utf8_lossy(want),
            "client {}",
            n + 1
        );
    }
    let finished = server.stop(Signal::TERM);
    finished
        .assert_stderr_has("not sent: client 9 is not connected; connected: 1, 2, 3 (3 clients)");
    finished.assert_stderr_has("not sent: client 9 is not connected; connected: 1, 2, 3");
    finished.assert_stderr_has("not sent: '@x malformed' is not addressed right; write @N TEXT");
    assert_eq!(
        finished.stderr.matches("client 9 is not connected").count(),
        2,
        "one warning per line naming client 9\n{finished}"
    );
    // stdout stays client data only: the clients sent nothing.
    assert_eq!(finished.stdout, "", "{finished}");
}

/// `auto` reads stdin when it is a terminal (here a pty made by `script`, as a user's shell has
/// one), and a line typed there reaches the client; with a pipe as stdin, `auto` reads nothing.
#[test]
fn auto_reads_a_terminal_and_not_a_pipe() {
    if !installed("script") {
        assert!(
            std::env::var_os("CI").is_none(),
            "script (util-linux) is missing"
        );
        eprintln!("skipped: script is not installed");
        return;
    }
    let command = format!(
        "{} --host 127.0.0.1 --port 0 --duration 0 --color never",
        bin()
    );
    let (mut typing, screen, guard) = in_a_terminal(&command);
    let shown = screen.wait("the listening line", TIMEOUT, |bytes, _| {
        String::from_utf8_lossy(bytes).contains("connect with:")
    });
    let addr = listening_addr(&String::from_utf8_lossy(&shown));
    let stream = connect(addr);
    let received = Received::start(&stream);
    screen.wait("client 1 connected", TIMEOUT, |bytes, _| {
        String::from_utf8_lossy(bytes).contains("client 1 connected")
    });
    typing.write_all(b"typed at a terminal\n").expect("type");
    received.wait_for(b"typed at a terminal\n");
    // Ctrl-C at the terminal stops the run, as for a user.
    typing.write_all(b"\x03").expect("type Ctrl-C");
    let got = received.until_eof();
    assert_eq!(got, b"typed at a terminal\n");
    drop(guard);

    // The same line through a pipe, with the default: not read, not sent.
    let mut server = Spawned::start_typing(&[]);
    let (_stream, received) = client(&server, 1);
    server.type_bytes(b"typed into a pipe\n");
    let finished = server.stop(Signal::TERM);
    assert_eq!(received.until_eof(), b"", "{finished}");
}

/// Runs `command` in a terminal of its own (a pty made by `script`): the keyboard, what the
/// terminal shows, and the guard that reaps it.
fn in_a_terminal(command: &str) -> (std::process::ChildStdin, Received, Reaped) {
    let mut script = Command::new("script")
        .args(["-qfec", command, "/dev/null"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run script");
    let typing = script.stdin.take().expect("piped");
    let screen = Received::from_reader(script.stdout.take().expect("piped"));
    (typing, screen, Reaped(script))
}

/// The address in the `listening on ADDR;` line that `shown` holds.
fn listening_addr(shown: &str) -> std::net::SocketAddr {
    shown
        .split_once("listening on ")
        .and_then(|(_, rest)| rest.split_once(';'))
        .and_then(|(addr, _)| addr.parse().ok())
        .unwrap_or_else(|| panic!("no listening line in {shown:?}"))
}

/// overhear started with `&` in a terminal (a pty made by `script`, in bash with job control):
/// the server, what the terminal shows, the keyboard, and where it listens. The shell brings it
/// to the foreground (`fg`) once something is written to the FIFO `go`.
struct InTheBackground {
    screen: Received,
    typing: std::process::ChildStdin,
    pid: rustix::process::Pid,
    addr: std::net::SocketAddr,
    go: String,
    _script: Reaped,
    _dir: TempDir,
}

impl InTheBackground {
    /// `None` (the test skipped) where script, bash or mkfifo is missing, outside CI.
    fn start(stdin: &str) -> Option<InTheBackground> {
        if !installed("script") || !installed("bash") || !installed("mkfifo") {
            assert!(
                std::env::var_os("CI").is_none(),
                "script, bash or mkfifo is missing"
            );
            eprintln!("skipped: script, bash or mkfifo is not installed");
            return None;
        }
        let dir = TempDir::new(&format!("background-{stdin}"));
        let go = dir.path("go");
        let made = Command::new("mkfifo")
            .arg(&go)
            .status()
            .expect("run mkfifo");
        assert!(made.success(), "mkfifo {go}: {made}");
        // The shell waits on the FIFO, not on the terminal, so that nothing but overhear reads
        // what is typed until `fg`. The duration bounds the run if the test fails before its
        // SIGTERM.
        let command = format!(
            "bash -c 'set -m; {} --port 0 --stdin {stdin} --duration 30s -v & \
             echo \"pid=$!\"; read line < {go}; fg > /dev/null'",
            bin()
        );
        let (typing, screen, script) = in_a_terminal(&command);
        let shown = screen.wait("the listening line and the pid", TIMEOUT, |bytes, _| {
            let text = String::from_utf8_lossy(bytes);
            text.contains("connect with:") && text.contains("pid=")
        });
        let shown = String::from_utf8_lossy(&shown).into_owned();
        let pid = shown
            .split_once("pid=")
            .and_then(|(_, rest)| rest.lines().next())
            .and_then(|pid| pid.trim().parse().ok())
            .and_then(rustix::process::Pid::from_raw)
            .unwrap_or_else(|| panic!("no pid in {shown:?}"));
        let addr = listening_addr(&shown);
        Some(InTheBackground {
            screen,
            typing,
            pid,
            addr,
            go,
            _script: script,
            _dir: dir,
        })
    }

    /// Waits until the terminal shows `text`.
    fn shows(&self, text: &str) -> String {
        let shown = self.screen.wait(text, TIMEOUT, |bytes, _| {
            String::from_utf8_lossy(bytes).contains(text)
        });
        String::from_utf8_lossy(&shown).into_owned()
    }

    /// Brings overhear to the foreground.
    fn fg(&self) {
        std::fs::write(&self.go, b"fg\n").expect("let the shell run fg");
    }

    /// Stops overhear with SIGTERM; returns what the terminal showed until the shell ended.
    fn stop(&self) -> String {
        rustix::process::kill_process(self.pid, rustix::process::Signal::TERM).expect("SIGTERM");
        let shown = self
            .screen
            .wait("the end of the run", TIMEOUT, |_, closed| closed);
        String::from_utf8_lossy(&shown).into_owned()
    }
}

impl Drop for InTheBackground {
    /// Whatever happened, the server does not outlive the test (the shell is reaped after).
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(self.pid, rustix::process::Signal::KILL);
    }
}

/// `overhear --stdin always &` in a terminal cannot read it while in the background: a read
/// fails (EIO, since overhear ignores SIGTTIN rather than being stopped by it) and is tried again
/// a second later, rather than ending the input. Brought to the foreground (`fg`), it reads the
/// line typed meanwhile and sends it.
#[test]
fn a_terminal_read_from_the_background_is_tried_again_after_fg() {
    let Some(mut background) = InTheBackground::start("always") else {
        return;
    };
    let stream = connect(background.addr);
    let received = Received::start(&stream);
    background.shows("client 1 connected");
    background
        .typing
        .write_all(b"typed in the background\n")
        .expect("type");
    background.shows("cannot read the terminal from the background");
    background.fg();
    received.wait_for(b"typed in the background\n");
    let screen = background.stop();
    assert_eq!(received.until_eof(), b"typed in the background\n");
    assert!(
        !screen.contains("cannot read input"),
        "the input was given up:\n{screen}"
    );
}

/// `overhear &` (the default, `--stdin auto`) in a terminal does not read it: the terminal stays
/// the shell's, and overhear is not stopped for reading it.
#[test]
fn auto_does_not_read_a_terminal_it_is_in_the_background_of() {
    let Some(background) = InTheBackground::start("auto") else {
        return;
    };
    let said = background.shows("reading stdin");
    assert!(said.contains("not reading stdin"), "{said}");
    background.fg();
    let screen = background.stop();
    assert!(!screen.contains("cannot read"), "{screen}");
}

/// Escapes read as overhear writes them (`\x00\xff\\` is three bytes), `--raw` sends the text as
/// typed, `-C` ends lines with `\r\n`; a bad escape is a warning and sends nothing.
#[test]
fn escapes_raw_and_crlf() {
    for (flags, typed, want) in [
        (&[][..], &b"\\x00\\xff\\\\\n"[..], &b"\x00\xff\\\n"[..]),
        (&[][..], b"tab\\tcr\\rnl\\n\n", b"tab\tcr\rnl\n\n"),
        (&["--raw"][..], b"\\x00\\xff\\\\\n", b"\\x00\\xff\\\\\n"),
        (&["-C"][..], b"one\ntwo\n", b"one\r\ntwo\r\n"),
        (&["--crlf"][..], b"a\\r\n", b"a\r\r\n"),
        (&[][..], b"bad \\q escape\nafter\n", b"after\n"),
    ] {
        let mut args = vec!["--stdin", "always"];
        args.extend_from_slice(flags);
        let mut server = Spawned::start_typing(&args);
        let (_stream, received) = client(&server, 1);
        server.type_bytes(typed);
        received.wait_for(want);
        let finished = server.stop(Signal::TERM);
        assert_eq!(
            received.until_eof(),
            want,
            "{args:?} typing {:?}\n{finished}",
            String::from_utf8_lossy(typed)
        );
        if typed.starts_with(b"bad") {
            finished
                .assert_stderr_has("a backslash at byte 5 of 'bad \\q escape' starts no escape");
        }
    }
}

/// `--greet` reaches a client that only reads, before anything; it is sent as each client is
/// accepted (stdin not read at all), recorded as a JSON `sent` event, and counted as sent.
#[test]
fn the_greeting_comes_first() {
    let mut server = Spawned::start(&["--greet", "220 overhear ESMTP\\r\\n", "--format", "json"]);
    let (_quiet, quiet) = client(&server, 1);
    assert_eq!(quiet.wait_for(b"\r\n"), b"220 overhear ESMTP\r\n");
    let (mut talker, talking) = client(&server, 2);
    send(&mut talker, b"HELO test\r\n");
    talker.shutdown(Shutdown::Write).expect("half-close");
    server.wait_stdout("HELO test", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    assert_eq!(talking.until_eof(), b"220 overhear ESMTP\r\n");
    assert_eq!(quiet.until_eof(), b"220 overhear ESMTP\r\n");
    let sent: Vec<serde_json::Value> = finished
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .filter(|event: &serde_json::Value| event["event"] == "sent")
        .collect();
    assert_eq!(sent.len(), 2, "{finished}");
    for event in &sent {
        assert_eq!(event["data"], "220 overhear ESMTP\r\n", "{finished}");
    }
    let summary = finished.stdout.lines().last().expect("summary");
    let summary: serde_json::Value = serde_json::from_str(summary).expect("JSON");
    assert_eq!(summary["sent"], 2 * 20, "{finished}");

    // A greeting whose escapes do not read is a usage error.
    let out = crate::common::run_to_end(&["--greet", "bad\\"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("starts no escape"), "{stderr}");
}

/// A client of `server` with a 4 KiB receive buffer, set before it connects so the window it
/// offers is small from the start.
fn small_window_client(server: &Spawned) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&server.addr().into()).expect("connect");
    TcpStream::from(socket)
}

/// Typed messages to a client that reads slowly through a small window, some of them 50–150
/// KiB: every byte arrives, in order (random lines, seeded). (On loopback the server's socket
/// buffer grows to hold them; the worker's unit tests make a socket take chunks in pieces.)
#[test]
fn typed_messages_reach_a_slow_reader_whole_and_in_order() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    // An hour between polls: no timer wake-up hides a message left unsent.
    let mut server = Spawned::start_typing(&["--stdin", "always", "--poll-interval", "1h"]);
    let mut slow = small_window_client(&server);
    server.wait_stderr("client 1 connected from ", TIMEOUT);
    // Under the client's queue bound (1 MiB), so nothing may be dropped.
    let mut typed = Vec::new();
    let mut expected = Vec::new();
    while expected.len() < 600 * 1024 {
        // Mostly short lines, now and then a long one.
        let len = if rng.next().is_multiple_of(8) {
            rng.size(50_000, 150_000)
        } else {
            rng.size(1, 8000)
        };
        let text: Vec<u8> = (0..len).map(|_| b'a' + (rng.next() % 26) as u8).collect();
        typed.extend_from_slice(b"@1 ");
        typed.extend_from_slice(&text);
        typed.push(b'\n');
        expected.extend_from_slice(&text);
        expected.push(b'\n');
    }
    server.type_bytes(&typed);
    slow.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    let mut received = Vec::with_capacity(expected.len());
    let mut piece = [0; 4096];
    while received.len() < expected.len() {
        match slow.read(&mut piece) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&piece[..n]),
            Err(err) => panic!(
                "seed {seed}: {} of {} bytes received, then {err}",
                received.len(),
                expected.len()
            ),
        }
        thread::sleep(Duration::from_micros(100));
    }
    assert!(
        received == expected,
        "seed {seed}: the client received other bytes than were typed"
    );
    let finished = server.stop(Signal::TERM);
    assert!(!finished.stderr.contains("dropped"), "{finished}");
}

/// A client that reads nothing while 50 MB are addressed to it: the other client gets its
/// message, the silent one's own lines are still printed, the server's memory stays far below
/// the 50 MB, its warning is given once, and the drops are counted when it leaves.
#[test]
fn a_client_that_does_not_read_has_a_bounded_queue() {
    let mut server = Spawned::start_typing(&["--stdin", "always"]);
    let deaf = small_window_client(&server);
    server.wait_stderr("client 1 connected from ", TIMEOUT);
    let (_reader, reads) = client(&server, 2);
    let line = format!("@1 {}\n", "x".repeat(1000));
    let flood: Vec<u8> = line.repeat(50_000).into_bytes();
    let pid = server.pid();
    server.type_bytes(&flood);
    server.type_bytes(b"@2 done\n");
    reads.wait_for(b"done\n");
    let mut deaf_writer = deaf.try_clone().expect("clone");
    send(&mut deaf_writer, b"still here\n");
    server.wait_stdout("[1] still here", TIMEOUT);
    let peak = crate::common::peak_memory(pid);
    assert!(
        peak < 40 * 1024 * 1024,
        "peak resident memory {peak} bytes while 50 MB were addressed to a client that reads nothing"
    );
    let finished = server.stop(Signal::TERM);
    assert_eq!(
        finished.stderr.matches("client 1 is not reading").count(),
        1,
        "{finished}"
    );
    finished.assert_stderr_has("client 1 is not reading: dropped a 1001-byte message");
    // Most of the 50,000 were dropped (the rest went into the socket buffers before they filled).
    let dropped: u64 = finished
        .stderr
        .split_once("client 1 disconnected")
        .and_then(|(_, line)| line.split_once(" typed messages it did not read"))
        .and_then(|(head, _)| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of dropped messages\n{finished}"));
    assert!(
        (40_000..=50_000).contains(&dropped),
        "{dropped} dropped\n{finished}"
    );
    drop(deaf);
}

/// A line typed just before the stop reaches its client before the connection closes.
#[test]
fn a_line_typed_just_before_the_stop_arrives_before_eof() {
    for round in 0..5 {
        let mut server = Spawned::start_typing(&["--stdin", "always"]);
        let (_one, one) = client(&server, 1);
        let (_two, two) = client(&server, 2);
        // The last line has no line end yet at the stop: it is not sent, and that is said.
        server.type_bytes(format!("@1 last words {round}\nto all {round}\nunended").as_bytes());
        let finished = server.stop(Signal::TERM);
        finished.assert_stderr_has(
            "a typed line without its line end was not sent (7 bytes at the stop)",
        );
        assert_eq!(
            String::from_utf8_lossy(&one.until_eof()),
            format!("last words {round}\nto all {round}\n"),
            "{finished}"
        );
        assert_eq!(
            String::from_utf8_lossy(&two.until_eof()),
            format!("to all {round}\n"),
            "{finished}"
        );
    }
}

/// Random bytes typed as escapes: every client receives exactly them, and the JSON `sent`
/// events decode to exactly what was delivered.
#[test]
fn json_sent_events_are_the_bytes_delivered() {
    let seed = std::env::var("OVERHEAR_TALK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
        });
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut server = Spawned::start_typing(&["--stdin", "always", "--format", "json"]);
    let (_a, a) = client(&server, 1);
    let (_b, b) = client(&server, 2);
    let mut expected = Vec::new();
    for _ in 0..50 {
        let len = (next() % 200) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let mut typed = String::new();
        for &byte in &bytes {
            typed.push_str(&format!("\\x{byte:02x}"));
        }
        typed.push('\n');
        server.type_bytes(typed.as_bytes());
        expected.extend_from_slice(&bytes);
        expected.push(b'\n');
    }
    server.type_bytes(b"end\n");
    expected.extend_from_slice(b"end\n");
    a.wait_for(b"end\n");
    b.wait_for(b"end\n");
    let finished = server.stop(Signal::TERM);
    let got = [a.until_eof(), b.until_eof()];
    for (i, bytes) in got.iter().enumerate() {
        assert!(
            bytes == &expected,
            "client {} got other bytes (seed {seed})",
            i + 1
        );
        let mut recorded = Vec::new();
        for line in finished.stdout.lines() {
            let event: serde_json::Value = serde_json::from_str(line).expect("JSON");
            if event["event"] != "sent" || event["client"] != i as u64 + 1 {
                continue;
            }
            match (event["data"].as_str(), event["data_b64"].as_str()) {
                (Some(text), None) => recorded.extend_from_slice(text.as_bytes()),
                (None, Some(b64)) => recorded.extend(decode_base64(b64)),
                _ => panic!("sent event without data: {event}"),
            }
        }
        assert!(
            recorded == expected,
            "client {}: the sent events do not add up to what it received (seed {seed})",
            i + 1
        );
    }
}

/// With `--echo`, typed messages and echoed bytes share one ordered stream: a typed message is
/// never cut by echo, and taking the typed messages out leaves exactly what the client sent.
#[test]
fn echo_and_typed_messages_never_cut_each_other() {
    let mut server = Spawned::start_typing(&["--stdin", "always", "--echo"]);
    let (talker, received) = client(&server, 1);
    let mut sent = Vec::new();
    let typed_line = |k: usize| format!("TYPED-{k:04}-{}\n", "T".repeat(3000));
    let writer = {
        let mut talker = talker.try_clone().expect("clone");
        thread::spawn(move || {
            let mut sent = Vec::new();
            for k in 0..2000 {
                let line = format!("echo-{k:05}-{}\n", "e".repeat(k % 300));
                talker.write_all(line.as_bytes()).expect("send");
                sent.extend_from_slice(line.as_bytes());
            }
            sent
        })
    };
    for k in 0..200 {
        server.type_bytes(typed_line(k).as_bytes());
    }
    sent.extend(writer.join().expect("writer"));
    let total = sent.len() + (0..200).map(|k| typed_line(k).len()).sum::<usize>();
    received.wait("every byte back", LONG_TIMEOUT, |bytes, _| {
        bytes.len() >= total
    });
    // Closed only once everything came back: a client that closes first is not sent the rest.
    talker.shutdown(Shutdown::Write).expect("half-close");
    let got = received.until_eof();
    let finished = server.stop(Signal::TERM);
    let mut rest = Vec::new();
    let mut typed_seen = 0;
    let mut at = 0;
    while at < got.len() {
        if got[at..].starts_with(b"TYPED-") {
            let want = typed_line(typed_seen);
            assert!(
                got[at..].starts_with(want.as_bytes()),
                "typed message {typed_seen} is cut or out of order at byte {at}\n{finished}"
            );
            at += want.len();
            typed_seen += 1;
        } else {
            rest.push(got[at]);
            at += 1;
        }
    }
    assert_eq!(typed_seen, 200, "{finished}");
    assert!(
        rest == sent,
        "the echo, typed messages taken out, is not what was sent"
    );
}

/// The end of stdin ends the input only: the server keeps serving until it is stopped.
#[test]
fn end_of_input_does_not_stop_the_server() {
    let mut server = Spawned::start_typing(&["--stdin", "always", "-v"]);
    let (_one, one) = client(&server, 1);
    server.type_bytes(b"before the end");
    server.end_input();
    server.wait_stderr("end of input", TIMEOUT);
    // An unfinished last line is sent at the end of the input, as typed.
    one.wait_for(b"before the end\n");
    let (mut two, _) = client(&server, 2);
    send(&mut two, b"still served\n");
    server.wait_stdout("[2] still served", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
}

/// A child process killed and reaped when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
