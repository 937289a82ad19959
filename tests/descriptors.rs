//! Running out of what the system lends: the server, started with a hard limit of a few file
//! descriptors, logs the failed accept once, backs off instead of spinning, and serves the
//! waiting clients once descriptors are free again; started with a limit of a few threads, it
//! refuses the clients it cannot start a worker for and goes on serving the others.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{TIMEOUT, bin, connect, send, wait_threads};

/// The server under a resource limit, with its stderr lines arriving on a channel.
struct Limited {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Limited {
    /// Starts overhear through `sh -c "{setup} overhear ..."`: `setup` sets the limit and ends
    /// in the `exec` (or the command that execs) that runs overhear.
    fn start(setup: &str) -> Limited {
        let script = format!(
            "{setup} \"$0\" --host 127.0.0.1 --port 0 --duration 0 --poll-interval 50ms -v"
        );
        let mut child = Command::new("sh")
            .args(["-c", &script, bin()])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh runs overhear");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Limited {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for the `listening on ADDR` line and returns the address.
    fn addr(&mut self) -> SocketAddr {
        let line = self.wait("listening on ");
        line.split_once("listening on ")
            .and_then(|(_, rest)| rest.split_once(';'))
            .and_then(|(addr, _)| addr.parse().ok())
            .expect("an address in the listening line")
    }

    /// Waits for a stderr line containing `needle` and returns it.
    fn wait(&mut self, needle: &str) -> String {
        self.wait_any(&[needle])
    }

    /// Waits for a stderr line containing any of `needles` and returns it.
    fn wait_any(&mut self, needles: &[&str]) -> String {
        let deadline = Instant::now() + TIMEOUT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if needles.iter().any(|needle| line.contains(needle)) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no stderr line with any of {needles:?}; stderr so far:\n{}",
            self.seen.join("\n")
        );
    }

    /// Takes every line that arrived by now.
    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            self.drain();
            eprintln!("--- overhear stderr ---\n{}", self.seen.join("\n"));
        }
    }
}

/// The end of the log line that says `client` got a worker: log lines name each client by its
/// address, which is how these tests tell their clients apart.
fn connected(client: &TcpStream) -> String {
    let local = client.local_addr().expect("client address");
    format!("connected from {local}")
}

#[test]
fn running_out_of_descriptors_backs_off_and_recovers() {
    // `ulimit -n` sets the hard limit too, so overhear cannot raise its soft limit past it.
    let mut server = Limited::start("ulimit -n 16 && exec");
    let addr = server.addr();
    // Connect one client at a time until overhear runs out of descriptors.
    const OUT_OF_FDS: &str = "cannot accept a client: too many open files";
    let mut served: Vec<TcpStream> = Vec::new();
    loop {
        assert!(served.len() < 32, "a limit of 16 descriptors never ran out");
        let client = connect(addr);
        let line = server.wait_any(&[&connected(&client), OUT_OF_FDS]);
        served.push(client);
        if line.contains(OUT_OF_FDS) {
            break;
        }
    }
    let starved = Instant::now();
    // These wait in the backlog until descriptors are free.
    let queued: Vec<TcpStream> = (0..3).map(|_| connect(addr)).collect();
    // Backing off, not spinning: while it cannot accept, it tries again every 100 ms (each try
    // is a debug line), and it says so once at the error level, not on every try.
    server.wait("retrying every 100ms");
    thread::sleep(Duration::from_millis(500));
    server.drain();
    let waited = starved.elapsed();
    let tries = |level: &str| {
        server
            .seen
            .iter()
            .filter(|l| l.contains(level) && l.contains("cannot accept"))
            .count()
    };
    assert_eq!(
        tries("ERROR"),
        1,
        "the failure is logged once, not on every retry"
    );
    // One try at the error, then one each 100 ms at most, with one for the time before
    // `starved` (a busy loop makes thousands).
    let most = 2 + waited.as_millis() / 100;
    let retries = tries("DEBUG");
    assert!(
        (1..=most as usize).contains(&retries),
        "{retries} retries in {waited:?}"
    );
    // Closing the served clients ends their workers, which frees their descriptors.
    served.clear();
    server.wait("accepting clients again");
    let mut late = queued;
    for client in &late {
        if !server.seen.iter().any(|l| l.contains(&connected(client))) {
            server.wait(&connected(client));
        }
    }
    // A client that waited in the backlog is served end to end.
    send(&mut late[0], b"still here\n");
    late[0]
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    server.wait("1 message, 11 bytes");
}

/// A soft limit on open files below what the clients need, under a hard limit that allows it:
/// overhear raises its soft limit at start, so all the clients are served.
#[test]
fn a_low_soft_limit_on_open_files_is_raised_to_the_hard_one() {
    const CLIENTS: usize = 100;
    // Only the soft limit: the hard one stays as it was (far above 64 here and on CI).
    let mut server = Limited::start("ulimit -S -n 64 && exec");
    let addr = server.addr();
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let client = connect(addr);
        let line = server.wait_any(&[&connected(&client), "cannot accept"]);
        assert!(
            !line.contains("cannot accept"),
            "client {} of {CLIENTS} refused: {line}",
            clients.len() + 1
        );
        clients.push(client);
    }
    // Each client is served end to end, the last one too.
    let last = clients.last_mut().expect("clients");
    send(last, b"the last one\n");
    last.shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    server.wait("1 message, 13 bytes");
}

#[test]
fn running_out_of_threads_refuses_only_the_clients_without_one() {
    // The thread limit (RLIMIT_NPROC) does not bind root, so overhear runs as a user id no one
    // else uses (the limit counts all of that user's threads, so another test run at the same
    // time takes another one), with 5 threads in all: its main thread, the signal thread, and
    // room for 3 workers.
    let id = 4_000_000 + std::process::id();
    let mut server = Limited::start(&format!(
        "exec prlimit --nproc=5 setpriv --reuid={id} --regid={id} --clear-groups"
    ));
    let addr = server.addr();
    const NO_THREAD: &str = "cannot start a thread: a limit on threads is reached";
    let mut served: Vec<TcpStream> = Vec::new();
    let mut refused = loop {
        assert!(served.len() < 16, "a limit of 5 threads never ran out");
        let client = connect(addr);
        let line = server.wait_any(&[&connected(&client), NO_THREAD]);
        if line.contains(NO_THREAD) {
            let local = client.local_addr().expect("client address");
            assert!(line.contains(&format!("refused {local}: ")), "{line}");
            break client;
        }
        served.push(client);
    };
    assert!(!served.is_empty(), "no worker started at all");
    // The refused client's connection is closed, not left hanging.
    refused
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    let mut byte = [0u8; 1];
    match refused.read(&mut byte) {
        Ok(0) => {}
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the refused client was not closed: {other:?}"),
    }
    // The clients that have a worker are still served.
    send(&mut served[0], b"still served\n");
    served[0]
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    server.wait("1 message, 13 bytes");
    // Once its thread has ended (it logs that line just before), the next client gets one.
    wait_threads(server.child.id(), "client-1 to end", TIMEOUT, |names| {
        !names.iter().any(|name| name == "client-1")
    });
    let late = connect(addr);
    server.wait_any(&[&connected(&late)]);
}
