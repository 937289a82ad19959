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
    wait_acknowledged,
};

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

/// Whether the thread named `name` of `pid` sleeps in a kernel function containing `wchan`.
fn thread_sleeps_in(pid: u32, name: Option<&str>, wchan: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).any(|task| {
        let named = name.is_none_or(|n| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim_end() == n)
        });
        named && std::fs::read_to_string(task.path().join("wchan")).is_ok_and(|w| w.contains(wchan))
    })
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// The review's case: a client whose bytes were all acknowledged before the stop, while stdout
/// is a pipe nobody reads for longer than the drain limit.
///
/// Client 3 connects while the output is stalled and more than the pending limit waits, so its
/// worker sits in the hand-over of its JSON `connect` event, before it ever reads. Its bytes are
/// acknowledged before the stop; the reader comes back only after the drain limit. Every one
/// of them must be printed, and nobody is "still sending".
#[test]
fn a_client_that_waited_for_room_at_the_stop_loses_no_acknowledged_byte() {
    let mut server = Spawned::start_with_own_stdout(&["--format", "json", "--poll-interval", "1h"]);
    let mut stdout = server.take_stdout();
    let pid = server.pid();
    // 1: fills the pipe; its worker blocks in write(2), holding the writer role.
    let mut first = server.connect_numbered(1);
    send(&mut first, lines_of("c1", 1_000, 93).as_bytes());
    wait_until("a worker blocked in the pipe", || {
        thread_sleeps_in(pid, None, "pipe_write")
    });
    wait_acknowledged(&first);
    // 2: over 1 MiB of JSON lines pile up behind the writer, until its worker waits for room.
    let mut second = server.connect_numbered(2);
    send(&mut second, lines_of("c2", 8_000, 93).as_bytes());
    wait_acknowledged(&second);
    wait_until("client 2 waiting for room", || {
        thread_sleeps_in(pid, Some("client-2"), "futex")
    });
    // 3: its connect event waits for room, so its worker has not read a byte at the stop.
    let mut third = server.connect_numbered(3);
    wait_until("client 3 waiting for room", || {
        thread_sleeps_in(pid, Some("client-3"), "futex")
    });
    const LINES: usize = 600; // 55.8 KB: more than one 32 KiB read
    send(&mut third, lines_of("c3", LINES, 93).as_bytes());
    wait_acknowledged(&third);
    server.signal(Signal::TERM);
    server.wait_stderr("signal received", TIMEOUT);
    thread::sleep(Duration::from_secs(3));
    let reader = thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stdout.read_to_end(&mut all);
        all
    });
    let finished = server.wait_exit(LONG_TIMEOUT);
    let printed = String::from_utf8_lossy(&reader.join().expect("reader")).into_owned();
    let got: Vec<String> = printed
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "message" && e["client"] == 3)
        .map(|e| e["data"].as_str().unwrap_or_default().to_owned())
        .collect();
    let expected: Vec<String> = lines_of("c3", LINES, 93)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        !finished.stderr.contains("still sending"),
        "a client named as still sending\n{}",
        finished.stderr
    );
    assert_eq!(got.len(), LINES, "client 3's messages\n{}", finished.stderr);
    assert!(got == expected, "client 3's lines differ");
    finished.assert_success();
    drop((first, second, third));
}

/// The drain limit leaves out the time the stop spends waiting for the output: a client whose
/// worker was waiting for room when the stop came, with bytes in its socket, still has what
/// it sends next read once the stalled output comes back (past the drain limit), and is not
/// named as still sending.
///
/// Clients 1 and 2 stall the output (1 blocked in the pipe, 2 waiting for room). Client 3's
/// first line makes its worker wait for room too; the next lines wait in its socket at the
/// stop, and more come after it. The reader comes back only after the drain limit.
#[test]
fn output_waits_at_the_stop_do_not_count_against_the_drain_limit() {
    let mut server = Spawned::start_with_own_stdout(&["--poll-interval", "1h"]);
    let stdout = server.take_stdout();
    let pid = server.pid();
    let mut first = server.connect_numbered(1);
    send(&mut first, lines_of("c1", 1_000, 93).as_bytes());
    wait_until("a worker blocked in the pipe", || {
        thread_sleeps_in(pid, None, "pipe_write")
    });
    let second = server.connect_numbered(2);
    let mut second_writer = second.try_clone().expect("clone");
    let filler = thread::spawn(move || {
        let _ = second_writer.write_all(lines_of("c2", 14_000, 93).as_bytes());
    });
    wait_until("client 2 waiting for room", || {
        thread_sleeps_in(pid, Some("client-2"), "futex")
    });
    let mut third = server.connect_numbered(3);
    send(&mut third, b"first\n");
    wait_until("client 3 waiting for room", || {
        thread_sleeps_in(pid, Some("client-3"), "futex")
    });
    const OWED: usize = 600; // 55.8 KB, read in several pieces
    send(&mut third, lines_of("owed", OWED, 93).as_bytes());
    wait_acknowledged(&third);
    server.signal(Signal::TERM);
    server.wait_stderr("signal received", TIMEOUT);
    // 279 KB: more than the socket holds while nobody reads, so some comes in after the drain
    // began, once the worker reads again.
    const LATE: usize = 3_000;
    let mut late_writer = third.try_clone().expect("clone");
    let sender = thread::spawn(move || {
        late_writer
            .set_write_timeout(Some(LONG_TIMEOUT))
            .expect("timeout");
        late_writer.write_all(lines_of("late", LATE, 93).as_bytes())
    });
    // The output stalls for longer than the drain limit (2 s).
    thread::sleep(Duration::from_secs(3));
    let reader = read_all_on_thread(stdout);
    let finished = server.wait_exit(LONG_TIMEOUT);
    let printed = text(&reader.join().expect("reader"));
    sender
        .join()
        .expect("the sender")
        .expect("the late lines were all sent");
    filler.join().expect("the filler");
    assert!(
        !finished.stderr.contains("still sending"),
        "a client named as still sending\n{}",
        finished.stderr
    );
    let third_lines: Vec<&str> = printed
        .lines()
        .filter_map(|l| l.strip_prefix("[3] "))
        .collect();
    let expected =
        String::from("first\n") + &lines_of("owed", OWED, 93) + &lines_of("late", LATE, 93);
    assert_eq!(
        third_lines.len(),
        1 + OWED + LATE,
        "client 3's messages\n{}",
        finished.stderr
    );
    assert!(
        third_lines
            .iter()
            .zip(expected.lines())
            .all(|(a, b)| a == &b),
        "client 3's lines differ"
    );
    finished.assert_success();
    drop((first, second, third));
}

/// Clients that connected and sent before the stop but were never accepted (the server was
/// stopped with SIGSTOP until its `--duration` ran out) are accepted at the stop, drained and
/// counted. The stop comes before any accept, so every one of them was queued at the stop.
#[test]
fn clients_still_queued_at_the_stop_are_served() {
    const QUEUED: usize = 300;
    let mut server = Spawned::start(&["--duration", "1s", "--poll-interval", "1h"]);
    // The deadline was set before the listening line, which `start` has read.
    let deadline_passed = Instant::now() + Duration::from_secs(1);
    server.signal(Signal::STOP);
    let mut clients: Vec<TcpStream> = (0..QUEUED)
        .map(|i| {
            let mut client = connect(server.addr());
            send(&mut client, format!("queued-{i}\n").as_bytes());
            client
        })
        .collect();
    clients.iter().for_each(wait_acknowledged);
    // The one wait on the clock: the timer's deadline must pass while the server is stopped.
    thread::sleep(deadline_passed.saturating_duration_since(Instant::now()));
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
    finished.assert_stderr_has("time is up, stopping");
    finished.assert_stderr_has(&format!(
        "accepted {QUEUED} connections queued at the stop; draining them too"
    ));
    finished.assert_stderr_has(&format!("served {QUEUED} clients: {QUEUED} messages"));
    finished.assert_stderr_has("refused 0 connections");
    finished.assert_stderr_has(&format!("stopped {QUEUED} workers in"));
    for client in &mut clients {
        expect_eof(client, TIMEOUT);
    }
}

/// A message still being sent when the drain limit ends the drain is printed marked as cut,
/// and the client is named as still sending. The client's kernel holds megabytes of one
/// endless line that it sends as the worker reads (no scheduling of the client needed), and
/// stdout is read at a slow pace, so the drain runs into its limit.
#[test]
fn a_message_cut_by_the_drain_limit_is_marked() {
    for format in ["text", "json"] {
        let mut server =
            Spawned::start_with_own_stdout(&["--format", format, "--poll-interval", "1h"]);
        let mut stdout = server.take_stdout();
        let mut client = server.connect_numbered(1);
        client
            .set_write_timeout(Some(LONG_TIMEOUT))
            .expect("timeout");
        let sender = thread::spawn(move || {
            // 32 MB of one line that never ends: more than the slow reader below takes in the
            // drain limit. The write fails once the server closes the connection.
            let _ = client.write_all(b"part");
            let _ = client.write_all(&vec![b'y'; 32 << 20]);
        });
        let pid = server.pid();
        wait_until("the output full", || {
            thread_sleeps_in(pid, None, "pipe_write")
        });
        server.signal(Signal::TERM);
        server.wait_stderr("signal received", TIMEOUT);
        let reader = thread::spawn(move || {
            // At most 6.4 MB/s: the pace is what makes the drain long, not an ordering.
            let mut all = Vec::new();
            let mut buf = vec![0; 64 * 1024];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
                thread::sleep(Duration::from_millis(10));
            }
            all
        });
        let finished = server.wait_exit(LONG_TIMEOUT);
        finished.assert_success();
        sender.join().expect("the sender");
        let printed = text(&reader.join().expect("the reader"));
        finished.assert_stderr_has("client 1 still sending after the stop; closing");
        if format == "text" {
            let last = printed.lines().last().expect("output");
            assert!(
                last.starts_with("[1+!] yyyy"),
                "{}",
                &last[..last.len().min(40)]
            );
            assert_eq!(printed.matches("!]").count(), 1);
        } else {
            let events: Vec<serde_json::Value> = printed
                .lines()
                .map(|l| serde_json::from_str(l).expect("JSON"))
                .collect();
            let cut: Vec<&serde_json::Value> = events.iter().filter(|e| e["cut"] == true).collect();
            assert_eq!(cut.len(), 1, "one cut message");
            assert_eq!(cut[0]["continued"], true);
            assert!(cut[0].get("eol").is_none());
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

/// The timer's stop does not wait for stderr either. (The duration leaves room for a slow
/// start: under three suites at once on two cores, 3 s were over before the test connected.)
#[test]
fn a_blocked_stderr_does_not_delay_the_timer() {
    let (stderr_read, stderr_write) = blocked_pipe();
    let server = Launched::start(
        &["--duration", "6s", "-v", "--poll-interval", "1h"],
        Stdio::null(),
        Stdio::from(stderr_write),
    );
    let mut first = connect(server.addr);
    fill_until_blocked(&server, &stderr_read);
    expect_eof(&mut first, TIMEOUT);
}

/// A pipe holding one page, which the test never reads.
fn blocked_pipe() -> (OwnedFd, OwnedFd) {
    // std's pipe is closed on exec, so no other test's child holds an end.
    let (read, write) = std::io::pipe().expect("a pipe");
    let (read, write) = (OwnedFd::from(read), OwnedFd::from(write));
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
        if thread_sleeps_in(server.child.id(), None, "pipe_write") {
            return;
        }
        assert!(Instant::now() < deadline, "stderr never blocked");
        // Each read logs a line; a write that fails means the worker is gone, also fine.
        let _ = talker.write_all(format!("fill {round}\n").as_bytes());
        thread::sleep(Duration::from_millis(2));
    }
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
    // std's pipe is closed on exec: a child of another test that held the write end would keep
    // this reader from ever seeing the end.
    let (read, write) = std::io::pipe().expect("a pipe");
    let write2 = write.try_clone().expect("dup");
    let mut server = Launched::start(
        &["--duration", "0", "-v", "--poll-interval", "1h"],
        Stdio::from(write),
        Stdio::from(write2),
    );
    let stream = read_all_on_thread(std::fs::File::from(OwnedFd::from(read)));
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

/// Output and log in one file (`>file 2>&1`) under a file-size limit that a log line crosses:
/// the run still ends with status 1, not in a hang (a log record is written through the output,
/// which must not log while it does).
#[test]
fn a_file_size_limit_crossed_by_a_log_line_in_the_same_file_ends_the_run() {
    let dir = tempdir();
    let file = dir.join("both.log");
    let mut command = Command::new("sh");
    command
        .args([
            "-c",
            "exec prlimit --fsize=200 -- \"$0\" --host 127.0.0.1 --port 0 --duration 0 >\"$1\" 2>&1",
        ])
        .arg(bin())
        .arg(&file)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    let mut server = Launched::from_command(command);
    let mut client = connect(server.addr);
    let _ = client.write_all(b"hello\n");
    let status = server.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(1), "{status}");
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
