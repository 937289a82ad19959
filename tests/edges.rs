//! The output and the stop at their edges: a slow or vanished reader, a blocked stderr, clients
//! still queued at the stop, unusual stdouts (non-blocking, closed, shared with stderr, full).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{
    LONG_TIMEOUT, Signal, Spawned, TIMEOUT, bin, connect, expect_eof, listening_port, send,
};

/// The bytes of `stream`'s own sends the server's kernel has not acknowledged yet (SIOCOUTQ).
fn unacknowledged(stream: &TcpStream) -> usize {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int through the pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    assert_eq!(rc, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
    usize::try_from(queued).expect("a count")
}

/// Waits until the server's kernel has acknowledged every byte `stream` sent: from then on the
/// client believes its bytes delivered, and overhear must print them.
fn wait_acknowledged(stream: &TcpStream) {
    let deadline = Instant::now() + TIMEOUT;
    while unacknowledged(stream) > 0 {
        assert!(
            Instant::now() < deadline,
            "the server's kernel never acknowledged"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// `count` lines of client `tag`, numbered, each `width` bytes with its `\n`.
fn lines_of(tag: &str, count: usize, width: usize) -> String {
    let mut text = String::new();
    for k in 0..count {
        let head = format!("{tag}-{k:06}-");
        text.push_str(&head);
        text.push_str(&"x".repeat(width - head.len() - 1));
        text.push('\n');
    }
    text
}

/// An `overhear` started with stdio of the test's choosing, found by its listening socket in
/// /proc rather than by its log (which these tests block, close or merge). Killed and reaped
/// when dropped.
struct Launched {
    child: Child,
    addr: SocketAddr,
}

impl Launched {
    fn start(args: &[&str], stdout: Stdio, stderr: Stdio) -> Launched {
        let mut command = Command::new(bin());
        command
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        Launched::from_command(command)
    }

    fn from_command(mut command: Command) -> Launched {
        let mut child = command.spawn().expect("overhear starts");
        let deadline = Instant::now() + TIMEOUT;
        let port = loop {
            if let Some(port) = listening_port(child.id()) {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("overhear exited before listening: {status}");
            }
            assert!(Instant::now() < deadline, "overhear never listened");
            thread::sleep(Duration::from_millis(5));
        };
        Launched {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn signal(&self, signal: Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal).expect("signal overhear");
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for overhear") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "overhear still running {timeout:?} later"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads `reader` to its end on a thread.
fn read_all_on_thread(mut reader: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut all = Vec::new();
        let _ = reader.read_to_end(&mut all);
        all
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The review's case: clients whose bytes were all acknowledged, then silent, while stdout is a
/// pipe nobody reads for longer than the drain limit. Every byte must still be printed, with
/// no "still sending" warning and no line marked cut.
#[test]
fn a_slow_stdout_loses_no_acknowledged_byte() {
    const CLIENTS: usize = 5;
    const LINES: usize = 1_000;
    let mut server = Spawned::start_with_own_stdout(&["--poll-interval", "1h"]);
    let stdout = server.take_stdout();
    let clients: Vec<TcpStream> = (1..=CLIENTS)
        .map(|n| {
            let mut client = server.connect_numbered(n);
            // 93 KB each, more than the pipe holds: workers block on the output.
            send(
                &mut client,
                lines_of(&format!("c{n}"), LINES, 93).as_bytes(),
            );
            client
        })
        .collect();
    clients.iter().for_each(wait_acknowledged);
    server.signal(Signal::TERM);
    server.wait_stderr("signal received", TIMEOUT);
    // The condition under test is a reader slower than the drain limit (2 s): nothing else
    // would show it, so here a pause is the point, not a way to order events.
    thread::sleep(Duration::from_secs(3));
    let printed = read_all_on_thread(stdout);
    let finished = server.wait_exit(LONG_TIMEOUT);
    finished.assert_success();
    let printed = text(&printed.join().expect("the reader"));
    for n in 1..=CLIENTS {
        let expected: Vec<String> = lines_of(&format!("c{n}"), LINES, 93)
            .lines()
            .map(|line| format!("[{n}] {line}"))
            .collect();
        let got: Vec<&str> = printed
            .lines()
            .filter(|line| line.starts_with(&format!("[{n}]")))
            .collect();
        assert_eq!(got.len(), LINES, "client {n}\n{finished}");
        assert!(got == expected, "client {n}'s lines differ\n{finished}");
    }
    assert!(!finished.stderr.contains("still sending"), "{finished}");
    assert!(!printed.contains("!]"), "a line marked cut\n{finished}");
    drop(clients);
}

/// Clients that connected and sent before the stop but were never accepted (the server was
/// stopped with SIGSTOP meanwhile) are accepted at the stop, drained and counted.
#[test]
fn clients_still_queued_at_the_stop_are_served() {
    const QUEUED: usize = 300;
    let mut server = Spawned::start(&["--poll-interval", "1h"]);
    server.signal(Signal::STOP);
    let mut clients: Vec<TcpStream> = (0..QUEUED)
        .map(|i| {
            let mut client = connect(server.addr());
            send(&mut client, format!("queued-{i}\n").as_bytes());
            client
        })
        .collect();
    clients.iter().for_each(wait_acknowledged);
    // The stop comes first, and only then can the server run again.
    server.signal(Signal::TERM);
    server.signal(Signal::CONT);
    let finished = server.wait_exit(LONG_TIMEOUT);
    finished.assert_success();
    for i in 0..QUEUED {
        let token = format!("] queued-{i}");
        assert_eq!(
            finished
                .stdout
                .lines()
                .filter(|l| l.ends_with(&token))
                .count(),
            1,
            "line {i} printed once\n{finished}"
        );
    }
    finished.assert_stderr_has(&format!("served {QUEUED} clients: {QUEUED} messages"));
    finished.assert_stderr_has("refused 0 connections");
    for client in &mut clients {
        expect_eof(client, TIMEOUT);
    }
}

/// A message still being sent when the drain limit ends the drain is printed marked as cut,
/// and the client is named as still sending.
#[test]
fn a_message_cut_by_the_drain_limit_is_marked() {
    for format in ["text", "json"] {
        let mut server = Spawned::start(&[
            "--format",
            format,
            "--max-line",
            "1MiB",
            "--poll-interval",
            "1h",
        ]);
        let mut client = server.connect_numbered(1);
        // Streaming (40 KB in a burst) and in the middle of a message when the stop comes.
        send(&mut client, b"whole\npart");
        send(&mut client, &[b'y'; 40_000]);
        // Each byte goes out at once, not held back until the last one is acknowledged.
        client.set_nodelay(true).expect("TCP_NODELAY");
        server.wait_stdout("whole", TIMEOUT);
        let trickler = thread::spawn(move || {
            // A byte every 2 ms, never a line end, until the server closes the connection.
            let deadline = Instant::now() + LONG_TIMEOUT;
            while Instant::now() < deadline {
                if client.write_all(b"y").is_err() {
                    return true;
                }
                thread::sleep(Duration::from_millis(2));
            }
            false
        });
        let finished = server.stop(Signal::TERM);
        finished.assert_success();
        assert!(trickler.join().expect("the trickler"), "never closed");
        finished.assert_stderr_has("client 1 still sending after the stop; closing");
        let last = finished.stdout.lines().last().expect("output").to_owned();
        if format == "text" {
            assert!(last.starts_with("[1!] partyy"), "{finished}");
        } else {
            let event: serde_json::Value = finished
                .stdout
                .lines()
                .find(|l| l.contains("partyy"))
                .map(|l| serde_json::from_str(l).expect("JSON"))
                .expect("the cut message");
            assert_eq!(event["cut"], true, "{finished}");
            assert!(event.get("eol").is_none(), "{finished}");
        }
    }
}

/// With stderr a pipe nobody reads (a paused pager), the first signal still stops the run (the
/// clients see their connections close) and the second still exits at once with 130.
#[test]
fn a_blocked_stderr_delays_neither_signal() {
    let (stderr_read, stderr_write) = blocked_pipe();
    let mut server = Launched::start(
        &["--duration", "0", "-v", "--poll-interval", "1h"],
        Stdio::null(),
        Stdio::from(stderr_write),
    );
    let mut first = connect(server.addr);
    fill_until_blocked(&server, &stderr_read);
    server.signal(Signal::TERM);
    expect_eof(&mut first, TIMEOUT);
    server.signal(Signal::TERM);
    let status = server.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(130), "{status}");
}

/// The timer's stop does not wait for stderr either.
#[test]
fn a_blocked_stderr_does_not_delay_the_timer() {
    let (stderr_read, stderr_write) = blocked_pipe();
    let server = Launched::start(
        &["--duration", "3s", "-v", "--poll-interval", "1h"],
        Stdio::null(),
        Stdio::from(stderr_write),
    );
    let mut first = connect(server.addr);
    fill_until_blocked(&server, &stderr_read);
    expect_eof(&mut first, TIMEOUT);
}

/// A pipe holding one page, which the test never reads.
fn blocked_pipe() -> (OwnedFd, OwnedFd) {
    let (read, write) = rustix::pipe::pipe().expect("a pipe");
    // SAFETY: F_SETPIPE_SZ takes an int and touches no memory.
    let rc = unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(rc > 0, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
    (read, write)
}

/// Makes the server log (debug lines for every read of a client) until one of its threads is
/// blocked writing to the stderr pipe.
fn fill_until_blocked(server: &Launched, _pipe: &OwnedFd) {
    let mut talker = connect(server.addr);
    let deadline = Instant::now() + TIMEOUT;
    for round in 0.. {
        if blocked_in_pipe_write(server.child.id()) {
            return;
        }
        assert!(Instant::now() < deadline, "stderr never blocked");
        // Each read logs a line; a write that fails means the worker is gone, also fine.
        let _ = talker.write_all(format!("fill {round}\n").as_bytes());
        thread::sleep(Duration::from_millis(2));
    }
}

/// Whether a thread of `pid` sleeps in the kernel's pipe write.
fn blocked_in_pipe_write(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).any(|task| {
        std::fs::read_to_string(task.path().join("wchan")).is_ok_and(|w| w.contains("pipe_write"))
    })
}

/// A parent that leaves stdout's pipe non-blocking: every line still arrives, exit 0.
#[test]
fn a_non_blocking_stdout_pipe_is_waited_on() {
    const LINES: usize = 20_000;
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK).expect("a pipe");
    let mut server = Launched::start(
        &["--duration", "0", "-q", "--poll-interval", "1h"],
        Stdio::from(write),
        Stdio::null(),
    );
    let addr = server.addr;
    let sender = thread::spawn(move || {
        let mut client = connect(addr);
        client
            .set_write_timeout(Some(LONG_TIMEOUT))
            .expect("timeout");
        send(&mut client, lines_of("nb", LINES, 40).as_bytes());
    });
    // Read blocking, from our own end (the flag was set on the write end only).
    let read = std::fs::File::from(read);
    rustix::fs::fcntl_setfl(&read, rustix::fs::OFlags::empty()).expect("blocking read end");
    let mut reader = std::io::BufReader::new(read);
    let mut seen = 0;
    let mut line = String::new();
    while seen < LINES {
        line.clear();
        let n = std::io::BufRead::read_line(&mut reader, &mut line).expect("read stdout");
        assert!(n > 0, "stdout ended after {seen} lines");
        assert_eq!(
            line.trim_end(),
            format!("[1] nb-{seen:06}-{}", "x".repeat(29))
        );
        seen += 1;
    }
    sender.join().expect("the sender");
    server.signal(Signal::TERM);
    assert!(server.wait_exit(TIMEOUT).success());
}

/// `overhear | head -1`: the run ends as soon as head has its line and leaves, not at the next
/// write, and that is a normal end (exit 0).
#[test]
fn the_run_ends_when_the_reader_of_stdout_leaves() {
    let mut head = Command::new("head")
        .arg("-1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("head runs");
    let to_head = head.stdin.take().expect("piped stdin");
    let mut server = Launched::start(
        &["--duration", "0", "--poll-interval", "1h"],
        Stdio::from(to_head),
        Stdio::piped(),
    );
    let stderr = read_all_on_thread(server.child.stderr.take().expect("piped stderr"));
    let mut client = connect(server.addr);
    send(&mut client, b"first\nsecond\n");
    let mut printed = String::new();
    head.stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut printed)
        .expect("head's output");
    assert_eq!(printed, "[1] first\n");
    assert!(head.wait().expect("head exits").success());
    // No further client data comes: only the vanished reader can end the run now.
    let status = server.wait_exit(TIMEOUT);
    let stderr = text(&stderr.join().expect("stderr"));
    assert!(status.success(), "{status}\n{stderr}");
    assert!(
        stderr.contains("output closed by its reader, stopping"),
        "{stderr}"
    );
    expect_eof(&mut client, TIMEOUT);
}

/// `overhear 2>&1 | …`: log lines and data lines share one pipe, and every line on it is
/// whole: a log line or a data line, never a mix.
#[test]
fn stderr_and_stdout_in_one_pipe_keep_every_line_whole() {
    const CLIENTS: usize = 8;
    const LINES: usize = 3_000;
    let (read, write) = rustix::pipe::pipe().expect("a pipe");
    let write2 = write.try_clone().expect("dup");
    let mut server = Launched::start(
        &["--duration", "0", "-v", "--poll-interval", "1h"],
        Stdio::from(write),
        Stdio::from(write2),
    );
    let stream = read_all_on_thread(std::fs::File::from(read));
    let addr = server.addr;
    let senders: Vec<_> = (0..CLIENTS)
        .map(|c| {
            thread::spawn(move || {
                let mut client = connect(addr);
                // In pieces, so that the workers log a debug line for many reads.
                for chunk in lines_of(&format!("m{c}"), LINES, 700)
                    .as_bytes()
                    .chunks(5_000)
                {
                    send(&mut client, chunk);
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().expect("a sender");
    }
    server.signal(Signal::TERM);
    assert!(server.wait_exit(LONG_TIMEOUT).success());
    let all = text(&stream.join().expect("the stream"));
    let mut data = 0;
    let mut logs = 0;
    // The summary table comes last, after every worker is joined.
    for line in all
        .lines()
        .take_while(|line| !line.starts_with("client  peer"))
    {
        if line.starts_with('[') {
            let (_, token) = line.split_once("] ").unwrap_or_else(|| panic!("{line:?}"));
            assert!(
                token.len() == 699 && token.starts_with('m') && token.ends_with('x'),
                "a data line mixed with something: {line:?}"
            );
            data += 1;
        } else {
            let level = line.split_whitespace().nth(1).unwrap_or_default();
            assert!(
                humantime::parse_rfc3339(line.split_whitespace().next().unwrap_or_default())
                    .is_ok()
                    && ["DEBUG", "INFO", "WARN"].contains(&level)
                    && !line.contains("xxxxxxxxxx"),
                "a log line mixed with something: {line:?}"
            );
            logs += 1;
        }
    }
    assert_eq!(data, CLIENTS * LINES);
    assert!(logs > CLIENTS, "only {logs} log lines");
}

/// The file-size limit (`ulimit -f`) ends the run with one clear line and status 1, not a
/// silent SIGXFSZ.
#[test]
fn a_file_size_limit_is_an_output_error() {
    let dir = tempdir();
    let file = dir.join("capped.log");
    let mut command = Command::new("prlimit");
    command
        .args(["--fsize=100000", "--"])
        .arg(bin())
        .args(["--host", "127.0.0.1", "--port", "0", "--duration", "0"])
        .arg("-o")
        .arg(&file)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut server = Launched::from_command(command);
    let stderr = read_all_on_thread(server.child.stderr.take().expect("piped stderr"));
    let mut client = connect(server.addr);
    // The client may be cut off when the run ends: its write errors are expected.
    let _ = client.write_all(lines_of("big", 4_000, 100).as_bytes());
    let status = server.wait_exit(TIMEOUT);
    let stderr = text(&stderr.join().expect("stderr"));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.matches("cannot write output").count(),
        1,
        "said once: {stderr}"
    );
    assert!(
        stderr.contains("error: cannot write output: file too large"),
        "{stderr}"
    );
    assert!(
        stderr.contains("messages not written (the output failed)"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A full device: one line naming the failure, status 1, and a summary that does not count
/// the lost messages as written.
#[test]
fn a_full_output_is_reported_once_with_honest_counts() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let mut server = Launched::start(
        &["--duration", "0", "--poll-interval", "1h"],
        Stdio::from(full),
        Stdio::piped(),
    );
    let stderr = read_all_on_thread(server.child.stderr.take().expect("piped stderr"));
    let mut client = connect(server.addr);
    let _ = client.write_all(b"one\ntwo\nthree\n");
    let status = server.wait_exit(TIMEOUT);
    let stderr = text(&stderr.join().expect("stderr"));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("cannot write output").count(), 1, "{stderr}");
    assert!(
        stderr.contains("error: cannot write output: no space left on device"),
        "{stderr}"
    );
    assert!(
        stderr.contains("not written (the output failed)"),
        "{stderr}"
    );
}

/// Started with stdout closed (`overhear >&-`), overhear refuses to run rather than print every
/// message into nothing; with `-o FILE` it runs, and a closed stderr never reaches a client.
#[test]
fn a_closed_stdout_is_refused_unless_there_is_an_output_file() {
    let output = Command::new("sh")
        .args(["-c", "exec \"$0\" --port 0 --duration 1s >&-", bin()])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("sh runs");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "error: standard output is closed: give --output FILE to write the messages to a file\n"
    );
    // `>/dev/null` is a choice, not a closed stdout.
    let output = Command::new("sh")
        .args([
            "-c",
            "exec \"$0\" --port 0 --duration 100ms >/dev/null",
            bin(),
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("sh runs");
    assert!(output.status.success(), "{}", text(&output.stderr));

    let dir = tempdir();
    let file = dir.join("out.log");
    let mut command = Command::new("sh");
    command
        .args([
            "-c",
            "exec \"$0\" --host 127.0.0.1 --port 0 --duration 0 -o \"$1\" >&- 2>&-",
        ])
        .arg(bin())
        .arg(&file)
        .stdin(Stdio::null());
    let mut server = Launched::from_command(command);
    let mut client = connect(server.addr);
    send(&mut client, b"into the file\n");
    let deadline = Instant::now() + TIMEOUT;
    while !std::fs::read_to_string(&file).is_ok_and(|t| t.contains("into the file")) {
        assert!(
            Instant::now() < deadline,
            "the message never reached the file"
        );
        thread::sleep(Duration::from_millis(5));
    }
    server.signal(Signal::TERM);
    assert!(server.wait_exit(TIMEOUT).success());
    // Nothing overhear logged went to the client's socket.
    expect_eof(&mut client, TIMEOUT);
    assert_eq!(
        std::fs::read_to_string(&file).expect("file"),
        "[1] into the file\n"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Completions and the manual page to a full device: one line, status 1, no panic.
#[test]
fn completions_and_manual_to_a_full_device_fail_plainly() {
    for args in [&["--completions", "bash"][..], &["--man"]] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let output = Command::new(bin())
            .args(args)
            .stdout(full)
            .stderr(Stdio::piped())
            .output()
            .expect("overhear runs");
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(
            stderr, "error: cannot write: no space left on device\n",
            "{args:?}"
        );
    }
}

/// A fresh directory under the system's temporary directory.
fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "overhear-edges-{}-{:?}",
        std::process::id(),
        thread::current().id()
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}
