//! Test helpers: [`Spawned`] runs the real `overhear` binary on a port the kernel picks and
//! captures its stdout and stderr on threads; [`Netcat`] runs a real `nc` client; the client
//! helpers connect over loopback with timeouts, so a misbehaving server fails a test instead of
//! hanging it. Every wait has a deadline and panics with what was captured.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::process::{Pid, kill_process};

pub use rustix::process::Signal;

/// How long a test waits for anything that should happen at once: a log line, a message, EOF,
/// an exit after a stop. Generous, because a loaded CI machine is slow; a test that passes
/// never waits this long.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The deadline for bulk work (thousands of connections, a few MB of lines) in a debug build.
pub const LONG_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a polling loop (exit status, thread count) looks again.
const POLL_STEP: Duration = Duration::from_millis(10);

/// Lines of stdout shown when a test fails; stress tests print hundreds of thousands.
const STDOUT_TAIL: usize = 40;

/// The binary under test, built by Cargo for this test run.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_overhear")
}

/// `overhear ARGS` with stdin null and stdout and stderr piped. The tests read info lines, so a
/// `RUST_LOG` from the caller is removed.
pub fn overhear(args: &[&str]) -> Command {
    overhear_under(&[], args)
}

/// [`overhear`] run by `wrapper`, a program and its arguments (none: overhear itself).
fn overhear_under(wrapper: &[&str], args: &[&str]) -> Command {
    let mut command = match wrapper {
        [] => Command::new(bin()),
        [program, rest @ ..] => {
            let mut command = Command::new(program);
            command.args(rest).arg(bin());
            command
        }
    };
    command
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test may poison a lock; the captured text is still worth showing.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a reader thread has read from one pipe so far.
#[derive(Debug, Default)]
struct Text {
    raw: Vec<u8>,
    /// Where each line of `raw` starts; the stress tests read millions of lines, so lines are
    /// decoded when asked for rather than stored twice.
    starts: Vec<usize>,
    /// The pipe reached EOF (or failed): nothing more will come.
    closed: bool,
}

impl Text {
    fn line_count(&self) -> usize {
        self.starts.len()
    }

    /// Line `index` without its `\n`, decoded lossily.
    fn line(&self, index: usize) -> String {
        let start = self.starts[index];
        let end = self
            .starts
            .get(index + 1)
            .map_or(self.raw.len(), |&next| next);
        let line = &self.raw[start..end];
        String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(line)).into_owned()
    }

    fn lines(&self) -> Vec<String> {
        (0..self.line_count()).map(|i| self.line(i)).collect()
    }

    /// The last `count` lines, saying how many were left out.
    fn tail(&self, count: usize) -> String {
        let skip = self.line_count().saturating_sub(count);
        let mut shown = String::new();
        if skip > 0 {
            shown.push_str(&format!("[... {skip} earlier lines ...]\n"));
        }
        for index in skip..self.line_count() {
            shown.push_str(&self.line(index));
            shown.push('\n');
        }
        shown
    }
}

/// One pipe of the child, read line by line on its own thread.
#[derive(Debug)]
pub struct Capture {
    name: &'static str,
    text: Mutex<Text>,
    changed: Condvar,
}

impl Capture {
    fn start(
        name: &'static str,
        source: impl Read + Send + 'static,
    ) -> (Arc<Capture>, JoinHandle<()>) {
        let capture = Arc::new(Capture {
            name,
            text: Mutex::new(Text::default()),
            changed: Condvar::new(),
        });
        let shared = Arc::clone(&capture);
        let reader = thread::Builder::new()
            .name(format!("capture-{name}"))
            .spawn(move || shared.read_all(source))
            .expect("the test process can start a thread");
        (capture, reader)
    }

    fn read_all(&self, source: impl Read) {
        let mut reader = BufReader::with_capacity(64 * 1024, source);
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let mut text = lock(&self.text);
                    let start = text.raw.len();
                    text.starts.push(start);
                    text.raw.extend_from_slice(&line);
                    drop(text);
                    self.changed.notify_all();
                }
            }
        }
        lock(&self.text).closed = true;
        self.changed.notify_all();
    }

    /// Waits until `found` returns something, the pipe closes, or `timeout` passes; panics
    /// (with `what` and the captured text) in the last two cases.
    fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut found: impl FnMut(&Text) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut text = lock(&self.text);
        loop {
            if let Some(value) = found(&text) {
                return value;
            }
            let now = Instant::now();
            let problem = if text.closed {
                format!("{} closed before {what}", self.name)
            } else if now >= deadline {
                format!(
                    "timed out after {timeout:?} waiting for {what} on {}",
                    self.name
                )
            } else {
                text = self
                    .changed
                    .wait_timeout(text, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            };
            let shown = text.tail(STDOUT_TAIL);
            drop(text);
            panic!("{problem}; {} so far:\n{shown}", self.name);
        }
    }

    /// Waits for a line containing `needle` and returns the first such line.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        let mut scanned = 0;
        self.wait_for(&format!("a line containing {needle:?}"), timeout, |text| {
            let hit = (scanned..text.line_count())
                .map(|i| text.line(i))
                .find(|line| line.contains(needle));
            scanned = text.line_count();
            hit
        })
    }

    /// Waits for the `nth` line (counting from 1) containing `needle` and returns it.
    pub fn wait_nth_line(&self, needle: &str, nth: usize, timeout: Duration) -> String {
        self.wait_for(
            &format!("line {nth} containing {needle:?}"),
            timeout,
            |text| {
                (0..text.line_count())
                    .map(|i| text.line(i))
                    .filter(|line| line.contains(needle))
                    .nth(nth - 1)
            },
        )
    }

    /// Waits until at least `count` lines were read and returns all lines read so far.
    pub fn wait_lines(&self, count: usize, timeout: Duration) -> Vec<String> {
        self.wait_for(&format!("{count} lines"), timeout, |text| {
            (text.line_count() >= count).then(|| text.lines())
        })
    }

    /// Waits for EOF on the pipe.
    fn wait_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut text = lock(&self.text);
        while !text.closed {
            let now = Instant::now();
            if now >= deadline {
                drop(text);
                panic!(
                    "{} still open {timeout:?} after the process exited",
                    self.name
                );
            }
            text = self
                .changed
                .wait_timeout(text, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    pub fn lines(&self) -> Vec<String> {
        lock(&self.text).lines()
    }

    pub fn raw(&self) -> Vec<u8> {
        lock(&self.text).raw.clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.text).raw).into_owned()
    }

    fn tail(&self, count: usize) -> String {
        lock(&self.text).tail(count)
    }
}

/// How a finished run ended, with everything it wrote.
pub struct Finished {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<&str> = self.stdout.lines().collect();
        let skip = lines.len().saturating_sub(STDOUT_TAIL);
        write!(
            f,
            "command: {}\nstatus: {}\n--- stderr ---\n{}--- stdout ({skip} lines left out) ---\n",
            self.command, self.status, self.stderr,
        )?;
        lines[skip..]
            .iter()
            .try_for_each(|line| writeln!(f, "{line}"))
    }
}

impl Finished {
    /// Panics unless the run exited with status 0.
    pub fn assert_success(&self) {
        assert!(self.status.success(), "overhear failed\n{self}");
    }

    /// Panics unless stderr has a line containing `needle`.
    pub fn assert_stderr_has(&self, needle: &str) {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n{self}"
        );
    }
}

/// Panics if `text` shows a panic or the hint std prints with one.
pub fn assert_no_panic(what: &str, text: &str) {
    for word in ["panicked", "RUST_BACKTRACE"] {
        assert!(!text.contains(word), "{what} mentions {word:?}:\n{text}");
    }
}

/// A running `overhear`, listening on a port the kernel chose. Dropping it kills and reaps the
/// process, and prints what it wrote if the test is failing.
pub struct Spawned {
    child: Child,
    command: String,
    addr: SocketAddr,
    stderr: Arc<Capture>,
    /// `None` when the test reads stdout itself ([`Spawned::start_with_own_stdout`]).
    stdout: Option<Arc<Capture>>,
    own_stdout: Option<ChildStdout>,
    /// The server's stdin, when the test types into it ([`Spawned::start_typing`]).
    input: Option<ChildStdin>,
}

impl Spawned {
    /// Starts `overhear --host 127.0.0.1 --port 0 --duration 0 ARGS` (each default left out if
    /// `args` gives that flag) and waits for its `listening on` line.
    pub fn start(args: &[&str]) -> Spawned {
        Spawned::launch(&[], args, true, false)
    }

    /// Like [`Spawned::start`], run by `wrapper` (a program and its arguments, which runs the
    /// command after them: `unshare --pid --fork --kill-child`). Signals reach the wrapper.
    pub fn start_under(wrapper: &[&str], args: &[&str]) -> Spawned {
        Spawned::launch(wrapper, args, true, false)
    }

    /// Like [`Spawned::start`], but stdout is left for the test: see [`Spawned::take_stdout`].
    pub fn start_with_own_stdout(args: &[&str]) -> Spawned {
        Spawned::launch(&[], args, false, false)
    }

    /// Like [`Spawned::start`], with the server's stdin a pipe the test types into
    /// ([`Spawned::type_bytes`]).
    pub fn start_typing(args: &[&str]) -> Spawned {
        Spawned::launch(&[], args, true, true)
    }

    fn launch(wrapper: &[&str], args: &[&str], capture_stdout: bool, typing: bool) -> Spawned {
        let mut full: Vec<&str> = Vec::new();
        // --host and --port go with a TCP or UDP listener only.
        let other_listener = args
            .iter()
            .any(|a| ["-U", "--unix", "--listen"].contains(a));
        for (flag, value) in [
            ("--host", "127.0.0.1"),
            ("--port", "0"),
            ("--duration", "0"),
        ] {
            let implied = flag == "--duration" || !other_listener;
            if implied && !args.contains(&flag) {
                full.extend([flag, value]);
            }
        }
        full.extend_from_slice(args);
        let command = format!("overhear {}", full.join(" "));
        let mut command_line = overhear_under(wrapper, &full);
        if typing {
            command_line.stdin(Stdio::piped());
        }
        let mut child = command_line
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {command}: {err}"));
        let input = child.stdin.take();
        let (stderr, _) = Capture::start("stderr", child.stderr.take().expect("piped stderr"));
        let piped_stdout = child.stdout.take().expect("piped stdout");
        let (stdout, own_stdout) = if capture_stdout {
            (Some(Capture::start("stdout", piped_stdout).0), None)
        } else {
            (None, Some(piped_stdout))
        };
        // Built before the first wait, so that a failing wait still kills the child in `Drop`.
        let mut spawned = Spawned {
            child,
            command,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
            stdout,
            own_stdout,
            input,
        };
        let line = spawned.wait_stderr("listening on ", TIMEOUT);
        if let Some(addr) = listening_addr(&line) {
            spawned.addr = addr;
        }
        spawned
    }

    /// What every listener listens on, as its `listening on X;` lines say (`127.0.0.1:PORT`,
    /// `udp://127.0.0.1:PORT`, `unix:PATH`), in order.
    pub fn endpoints(&self) -> Vec<String> {
        // Logged after every listening line.
        self.wait_stderr("Ctrl-C/SIGTERM", TIMEOUT);
        self.stderr
            .lines()
            .iter()
            .filter_map(|line| line.split_once("listening on ")?.1.split_once(';'))
            .map(|(endpoint, _)| endpoint.to_owned())
            .collect()
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's stdout pipe, for a test that reads it itself.
    ///
    /// # Panics
    /// Unless the server was started with [`Spawned::start_with_own_stdout`], or if taken twice.
    pub fn take_stdout(&mut self) -> ChildStdout {
        self.own_stdout
            .take()
            .expect("started with start_with_own_stdout, taken once")
    }

    fn stdout_capture(&self) -> &Capture {
        self.stdout
            .as_deref()
            .expect("stdout is captured (the test did not take it)")
    }

    /// Waits for a stderr line containing `needle` and returns it.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> String {
        self.stderr.wait_line(needle, timeout)
    }

    /// Waits for the `nth` stderr line containing `needle` (counting from 1) and returns it.
    pub fn wait_stderr_nth(&self, needle: &str, nth: usize, timeout: Duration) -> String {
        self.stderr.wait_nth_line(needle, nth, timeout)
    }

    /// Waits for a stdout line containing `needle` and returns it.
    pub fn wait_stdout(&self, needle: &str, timeout: Duration) -> String {
        self.stdout_capture().wait_line(needle, timeout)
    }

    /// Waits until stdout has at least `count` lines and returns them all.
    pub fn wait_stdout_lines(&self, count: usize, timeout: Duration) -> Vec<String> {
        self.stdout_capture().wait_lines(count, timeout)
    }

    /// Stdout lines read so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_capture().lines()
    }

    /// Stdout bytes read so far, exactly as written.
    pub fn stdout_raw(&self) -> Vec<u8> {
        self.stdout_capture().raw()
    }

    /// Stderr read so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    /// Connects a client and waits until the server has numbered it `number`. Connecting one
    /// client at a time this way makes the numbers deterministic.
    pub fn connect_numbered(&self, number: usize) -> TcpStream {
        let stream = connect(self.addr);
        self.wait_stderr(&format!("client {number} connected from "), TIMEOUT);
        stream
    }

    /// Writes `bytes` to the server's stdin (started with [`Spawned::start_typing`]).
    pub fn type_bytes(&mut self, bytes: &[u8]) {
        let input = self
            .input
            .as_mut()
            .expect("started with start_typing, input open");
        input
            .write_all(bytes)
            .and_then(|()| input.flush())
            .unwrap_or_else(|err| panic!("cannot type into {}: {err}", self.command));
    }

    /// Waits until the server has taken `count` clients' connections (their numbers given, a
    /// TLS handshake perhaps not begun), asking with a line typed to a client that is never
    /// connected: the warning lists who is. Connecting returns before the server accepts, so a
    /// line typed for a client just after its connect may find it absent.
    pub fn wait_addressable(&mut self, count: usize) {
        const ABSENT: &str = "client 999999 is not connected";
        let want = format!("({count} client");
        let deadline = Instant::now() + TIMEOUT;
        for asked in 1.. {
            self.type_bytes(b"@999999 who is connected?\n");
            let said = self.stderr.wait_nth_line(ABSENT, asked, TIMEOUT);
            if said.contains(&want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{count} clients not connected after {TIMEOUT:?}: {said}"
            );
        }
    }

    /// Closes the server's stdin: the end of its input.
    pub fn end_input(&mut self) {
        self.input = None;
    }

    /// Sends `signal` (SIGTERM, SIGINT) to the server.
    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_child(&self.child);
        kill_process(pid, signal)
            .unwrap_or_else(|err| panic!("cannot signal {}: {err}", self.command));
    }

    /// Waits for the server to exit by itself (after a stop) and returns how it ended.
    ///
    /// # Panics
    /// If it is still running after `timeout`, or if its output mentions a panic.
    pub fn wait_exit(&mut self, timeout: Duration) -> Finished {
        let status = wait_child(&mut self.child, timeout)
            .unwrap_or_else(|| panic!("{} still running {timeout:?} later", self.command));
        self.stderr.wait_closed(TIMEOUT);
        let stdout = match &self.stdout {
            Some(capture) => {
                capture.wait_closed(TIMEOUT);
                capture.text()
            }
            None => String::new(),
        };
        let finished = Finished {
            command: self.command.clone(),
            status,
            stdout,
            stderr: self.stderr.text(),
        };
        assert_no_panic("stderr", &finished.stderr);
        assert_no_panic("stdout", &finished.stdout);
        finished
    }

    /// Sends `signal` and waits for the exit, which must be prompt.
    pub fn stop(&mut self, signal: Signal) -> Finished {
        self.signal(signal);
        self.wait_exit(TIMEOUT)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- {} ---\n--- stderr ---\n{}--- stdout (tail) ---\n{}",
                self.command,
                self.stderr.tail(usize::MAX),
                self.stdout.as_ref().map_or_else(
                    || String::from("(read by the test)\n"),
                    |c| c.tail(STDOUT_TAIL)
                )
            );
        }
    }
}

/// The address in a `listening on ADDR; connect with: ...` line, if it is a TCP address (UDP
/// and Unix listeners are named `udp://…` and `unix:…`).
fn listening_addr(line: &str) -> Option<SocketAddr> {
    line.split_once("listening on ")
        .and_then(|(_, rest)| rest.split_once(';'))
        .and_then(|(addr, _)| addr.parse().ok())
}

/// Polls `child` until it exits or `timeout` passes.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL_STEP),
            Ok(None) => return None,
            Err(err) => panic!("cannot wait for a child process: {err}"),
        }
    }
}

/// Runs `overhear ARGS` (exactly these arguments) to its end and returns its output.
///
/// # Panics
/// If it is still running after [`TIMEOUT`] (it is killed first).
pub fn run_to_end(args: &[&str]) -> Output {
    run_to_end_under(&[], args)
}

/// Asserts that a run ended in an error of exit status 1 whose stderr holds `needle`.
pub fn assert_fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(needle), "{stderr}");
}

/// [`run_to_end`] with overhear run by `wrapper`, a program and its arguments.
pub fn run_to_end_under(wrapper: &[&str], args: &[&str]) -> Output {
    let command = format!("{} overhear {}", wrapper.join(" "), args.join(" "));
    let mut child = overhear_under(wrapper, args)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {command}: {err}"));
    let (stdout, _) = Capture::start("stdout", child.stdout.take().expect("piped stdout"));
    let (stderr, _) = Capture::start("stderr", child.stderr.take().expect("piped stderr"));
    let Some(status) = wait_child(&mut child, TIMEOUT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{command} still running after {TIMEOUT:?}\n--- stderr ---\n{}",
            stderr.text()
        );
    };
    stdout.wait_closed(TIMEOUT);
    stderr.wait_closed(TIMEOUT);
    Output {
        status,
        stdout: stdout.raw(),
        stderr: stderr.raw(),
    }
}

/// Connects to `addr` with read and write timeouts, so no test can hang on the socket.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .unwrap_or_else(|err| panic!("cannot connect to {addr}: {err}"));
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("set a read timeout");
    stream
        .set_write_timeout(Some(TIMEOUT))
        .expect("set a write timeout");
    stream
}

/// Sends `bytes` to the server.
pub fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream
        .write_all(bytes)
        .unwrap_or_else(|err| panic!("cannot send {bytes:?} to the server: {err}"));
}

/// Waits until the server closes `stream`: a read returns 0 bytes (or the connection was reset,
/// which also means closed). The server never sends anything, so data is an error too.
pub fn expect_eof(stream: &mut TcpStream, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut buf = [0; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the server did not close the connection within {timeout:?}"
        );
        stream
            .set_read_timeout(Some(left))
            .expect("set a read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => panic!("the server sent {:?}; it should only read", &buf[..n]),
            Err(err) => match err.kind() {
                io::ErrorKind::ConnectionReset => return,
                io::ErrorKind::Interrupted
                | io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut => {}
                _ => panic!("reading from the server failed: {err}"),
            },
        }
    }
}

/// The names of the threads of process `pid` (`overhear`, `output`, `ctrl-c`, `client-N`).
pub fn thread_names(pid: u32) -> Vec<String> {
    let dir = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|err| panic!("cannot list {dir}: {err}"));
    entries
        .filter_map(|entry| {
            // A thread that ends while we look loses its entry: skip it.
            let comm = entry.ok()?.path().join("comm");
            let name = std::fs::read_to_string(comm).ok()?;
            Some(name.trim_end().to_owned())
        })
        .collect()
}

/// Polls `pid`'s threads until `done` says yes, or panics after `timeout` listing them.
pub fn wait_threads(pid: u32, what: &str, timeout: Duration, done: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let names = thread_names(pid);
        if done(&names) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; {} threads: {names:?}",
            names.len()
        );
        thread::sleep(POLL_STEP);
    }
}

/// The largest resident set the process has had (VmHWM), in bytes.
pub fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmHWM in /proc/PID/status")
}

/// Whether the programs a test drives are on the PATH; without them the test is skipped with a
/// note, but in CI (`CI` set) a missing one fails: `.ci/run` installs them.
pub fn have(programs: &[&str]) -> bool {
    for program in programs {
        if !installed(program) {
            assert!(
                std::env::var_os("CI").is_none(),
                "{program} is missing: .ci/run installs it"
            );
            eprintln!("skipped: {program} is not installed");
            return false;
        }
    }
    true
}

/// Runs `program ARGS` with `input` on its stdin, to its end; panics if it fails.
pub fn run_program(program: &str, args: &[&str], input: &[u8]) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input)
        .unwrap_or_else(|err| panic!("cannot write to {program}: {err}"));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|err| panic!("cannot wait for {program}: {err}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory of its own for one test (socket files, certificates), removed with it.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("overhear-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|err| panic!("cannot make {}: {err}", dir.display()));
        TempDir(dir)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// `name` in the directory, as a string for a command line.
    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("UTF-8 path").to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Decodes standard base64 (JSON `data_b64`).
pub fn decode_base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut bits, mut count) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let value = ALPHABET
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("not base64: {text}")) as u32;
        bits = bits << 6 | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

/// Whether `program` is on the PATH.
pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The netcat-openbsd binary the CI installs (`nc.openbsd`, which `/usr/bin/nc` points to), or
/// `None` when there is none.
fn netcat_path() -> Option<&'static str> {
    [
        "/usr/bin/nc.openbsd",
        "/bin/nc.openbsd",
        "/usr/bin/nc",
        "/bin/nc",
    ]
    .into_iter()
    .find(|path| Path::new(path).exists())
}

/// Whether the netcat tests can run. Without netcat they are skipped with a note, so `cargo
/// test` works on a machine that has only Rust; in CI (`CI` set) a missing netcat fails.
pub fn netcat_available() -> bool {
    if netcat_path().is_some() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "netcat is missing: install netcat-openbsd (apt-get install netcat-openbsd)"
    );
    eprintln!("skipped: netcat is missing; install netcat-openbsd to run this test");
    false
}

/// A running `nc` client with its stdin piped. Dropping it kills and reaps the process.
pub struct Netcat {
    child: Child,
    command: String,
    stdin: Option<ChildStdin>,
    stderr: Arc<Capture>,
    /// What nc printed: the bytes it received from the server.
    stdout: Arc<Capture>,
}

impl Netcat {
    /// Starts `nc ARGS`; panics unless it is OpenBSD netcat (whose behaviour the test relies on).
    pub fn start(args: &[&str]) -> Netcat {
        let path = netcat_path().expect("netcat_available() was checked first");
        let help = Command::new(path)
            .arg("-h")
            .output()
            .unwrap_or_else(|err| panic!("cannot run {path}: {err}"));
        let about = String::from_utf8_lossy(&help.stderr) + String::from_utf8_lossy(&help.stdout);
        assert!(
            about.contains("OpenBSD netcat"),
            "{path} is not OpenBSD netcat: install netcat-openbsd\n{about}"
        );
        let command = format!("{path} {}", args.join(" "));
        let mut child = Command::new(path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {command}: {err}"));
        let stdin = child.stdin.take();
        let (stderr, _) = Capture::start("nc stderr", child.stderr.take().expect("piped"));
        let (stdout, _) = Capture::start("nc stdout", child.stdout.take().expect("piped"));
        Netcat {
            child,
            command,
            stdin,
            stderr,
            stdout,
        }
    }

    /// Waits until nc has printed a line containing `needle` (a line the server sent it).
    pub fn wait_received(&self, needle: &str, timeout: Duration) -> String {
        self.stdout.wait_line(needle, timeout)
    }

    /// Every byte nc has printed so far.
    pub fn received(&self) -> Vec<u8> {
        self.stdout.raw()
    }

    /// Types `text` into nc's stdin. Returns false if nc is no longer reading it.
    pub fn type_text(&mut self, text: &str) -> bool {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(text.as_bytes())
            .and_then(|()| stdin.flush())
            .is_ok()
    }

    /// Closes nc's stdin, as at the end of `printf 'hi\n' | nc HOST PORT`.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Whether nc has exited (and then how).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|err| panic!("cannot wait for {}: {err}", self.command))
    }

    /// Waits for nc to exit by itself.
    pub fn wait_exit(&mut self, why: &str, timeout: Duration) -> ExitStatus {
        wait_child(&mut self.child, timeout).unwrap_or_else(|| {
            panic!(
                "{} still running {timeout:?} after {why}; its stderr:\n{}",
                self.command,
                self.stderr.text()
            )
        })
    }
}

impl Drop for Netcat {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The port process `pid` listens on (IPv4 TCP), if it listens yet: a listening socket among
/// its descriptors, found in `/proc/PID/net/tcp`. For runs whose log does not say it (`-qq`).
pub fn listening_port(pid: u32) -> Option<u16> {
    let sockets: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|entry| {
            let link = std::fs::read_link(entry.ok()?.path()).ok()?;
            let inode = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    table.lines().skip(1).find_map(|line| {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
        if *state != "0A" || !sockets.contains(*inode) {
            return None;
        }
        u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
    })
}

/// The bytes in `stream`'s send queue that the peer has not acknowledged (`SIOCOUTQ`): what was
/// written minus this is what the server's kernel has, and the client believes delivered.
pub fn unacknowledged(stream: &TcpStream) -> usize {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ for a socket) writes one c_int through the pointer, which points
    // to a live local; the descriptor is borrowed from `stream`, open for the whole call.
    let status = unsafe {
        libc::ioctl(
            stream.as_raw_fd(),
            libc::TIOCOUTQ,
            &mut queued as *mut libc::c_int,
        )
    };
    assert_eq!(
        status,
        0,
        "ioctl(TIOCOUTQ) failed: {}",
        io::Error::last_os_error()
    );
    usize::try_from(queued).expect("a queue length is not negative")
}

/// Waits until the server's kernel has acknowledged every byte `stream` sent.
pub fn wait_acknowledged(stream: &TcpStream) {
    let deadline = Instant::now() + TIMEOUT;
    while unacknowledged(stream) > 0 {
        assert!(
            Instant::now() < deadline,
            "the server's kernel never acknowledged"
        );
        thread::sleep(POLL_STEP);
    }
}

/// Waits until the server has read every byte `stream` (IPv4) sent: its kernel acknowledged
/// them, and the receive queue of its end of the connection, as `/proc/net/tcp` shows it, is
/// empty.
pub fn wait_read_by_server(stream: &TcpStream) {
    wait_acknowledged(stream);
    let end = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => panic!("an IPv4 connection"),
    };
    let server = end(stream.peer_addr().expect("peer address"));
    let client = end(stream.local_addr().expect("local address"));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        let queued = table
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|fields| fields.len() > 4 && fields[1] == server && fields[2] == client)
            .map(|fields| {
                let (_, rx) = fields[4].split_once(':').expect("tx_queue:rx_queue");
                u64::from_str_radix(rx, 16).expect("hex")
            })
            .unwrap_or_else(|| panic!("no {server} {client} in /proc/net/tcp"));
        if queued == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server never read {queued} bytes"
        );
        thread::sleep(POLL_STEP);
    }
}

/// A seed that differs from run to run (print it, so a failure can be replayed).
pub fn fresh_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Rng(nanos ^ u64::from(std::process::id()) << 32).next()
}

/// SplitMix64: small and seedable; plenty for picking plans and bytes.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    pub fn size(&mut self, low: usize, high: usize) -> usize {
        self.range(low as u64, high as u64) as usize
    }

    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.range(low, high))
    }

    pub fn percent(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.next() as usize % items.len()]
    }
}
