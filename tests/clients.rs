//! README's walk-through with the clients people use, as they use them: `nc -N`
//! (netcat-openbsd), `ncat`, `socat -` and `telnet` (through a pty), each typing lines, closing
//! with Ctrl-D (end of stdin), and meeting the server's stop. What README's client table says
//! is what these tests check.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{Signal, Spawned, TIMEOUT, installed};

/// A client program with its stdin piped (what the user types) and its output kept. Killed and
/// reaped when dropped.
struct Client {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Client {
    /// Starts `program ARGS`, or returns `None` (outside CI) when the program is not installed.
    fn start(program: &str, args: &[String]) -> Option<Client> {
        if !installed(program) {
            assert!(
                std::env::var_os("CI").is_none(),
                "{program} is missing: .ci/run installs it"
            );
            eprintln!("skipped: {program} is not installed");
            return None;
        }
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
        let output = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let output = Arc::clone(&output);
            thread::spawn(move || {
                let mut pipe = pipe;
                let mut buf = [0; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output.lock().expect("output").extend_from_slice(&buf[..n]);
                }
            });
        }
        Some(Client {
            name: format!("{program} {}", args.join(" ")),
            stdin: child.stdin.take(),
            child,
            output,
        })
    }

    /// Types a line, as a user does: returns false if the client no longer reads its input.
    fn type_line(&mut self, line: &str) -> bool {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .is_ok()
    }

    /// Ctrl-D: the end of what the user types.
    fn end_input(&mut self) {
        self.stdin = None;
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn wait_exit(&mut self, why: &str) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for a client") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running {TIMEOUT:?} after {why}; it printed:\n{}",
                self.name,
                self.printed()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn printed(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().expect("output")).into_owned()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// `nc -N`, `ncat` and `socat -` each type a line, then the server stops: socat exits at once,
/// nc and ncat only when the next line is typed (they notice the close when they write).
#[test]
fn each_client_meets_the_stop_as_readme_says() {
    let mut server = Spawned::start(&[]);
    let (host, port) = ("127.0.0.1".to_string(), server.addr().port().to_string());
    let Some(mut nc) = Client::start("nc", &args(&["-N", &host, &port])) else {
        return;
    };
    server.wait_stderr("client 1 connected", TIMEOUT);
    let Some(mut ncat) = Client::start("ncat", &args(&[&host, &port])) else {
        return;
    };
    server.wait_stderr("client 2 connected", TIMEOUT);
    let target = format!("TCP:{host}:{port}");
    let Some(mut socat) = Client::start("socat", &args(&["-", &target])) else {
        return;
    };
    server.wait_stderr("client 3 connected", TIMEOUT);
    for (client, line) in [
        (&mut nc, "hello from nc"),
        (&mut ncat, "hello from ncat"),
        (&mut socat, "hello from socat"),
    ] {
        assert!(client.type_line(line));
    }
    server.wait_stdout("[1] hello from nc", TIMEOUT);
    server.wait_stdout("[2] hello from ncat", TIMEOUT);
    server.wait_stdout("[3] hello from socat", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    assert!(socat.wait_exit("the server stopped").success());
    // socat has seen the close; nc and ncat have had it too, and still wait for input.
    assert!(nc.running(), "nc exited without a line typed");
    assert!(ncat.running(), "ncat exited without a line typed");
    for client in [&mut nc, &mut ncat] {
        // The write that notices the close may itself succeed (the kernel sends it, then
        // learns of the reset): a second line makes sure.
        for _ in 0..2 {
            if !client.type_line("anyone there?") {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        client.wait_exit("lines were typed after the stop");
    }
}

/// Ctrl-D closes `nc -N`, `ncat` and `socat -`: each ends only its own worker.
#[test]
fn ctrl_d_closes_nc_with_dash_n_ncat_and_socat() {
    let mut server = Spawned::start(&[]);
    let (host, port) = ("127.0.0.1".to_string(), server.addr().port().to_string());
    let target = format!("TCP:{host}:{port}");
    let commands = [
        ("nc", args(&["-N", &host, &port])),
        ("ncat", args(&[&host, &port])),
        ("socat", args(&["-", &target])),
    ];
    for (n, (program, arguments)) in commands.iter().enumerate() {
        let n = n + 1;
        let Some(mut client) = Client::start(program, arguments) else {
            return;
        };
        server.wait_stderr(&format!("client {n} connected"), TIMEOUT);
        assert!(client.type_line(&format!("bye from {program}")));
        client.end_input();
        server.wait_stderr(
            &format!("client {n} disconnected (closed by client)"),
            TIMEOUT,
        );
        assert!(client.wait_exit("Ctrl-D").success(), "{}", client.printed());
    }
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    assert_eq!(
        finished.stdout,
        "[1] bye from nc\n[2] bye from ncat\n[3] bye from socat\n"
    );
}

/// `telnet` in a terminal (a pty made by `script`) prints what it always prints when the server
/// closes, and exits at once.
#[test]
fn telnet_exits_when_the_server_stops() {
    let mut server = Spawned::start(&[]);
    let command = format!("telnet 127.0.0.1 {}", server.addr().port());
    if !installed("telnet") {
        assert!(std::env::var_os("CI").is_none(), "telnet is missing");
        eprintln!("skipped: telnet is not installed");
        return;
    }
    let Some(mut telnet) = Client::start("script", &args(&["-qfec", &command, "/dev/null"])) else {
        return;
    };
    server.wait_stderr("client 1 connected", TIMEOUT);
    // A terminal sends what is typed when Enter is pressed: the pty turns \n into \r\n, and
    // overhear drops the \r.
    assert!(telnet.type_line("hello from telnet"));
    server.wait_stdout("[1] hello from telnet", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    telnet.wait_exit("the server stopped");
    assert!(
        telnet
            .printed()
            .contains("Connection closed by foreign host."),
        "{}",
        telnet.printed()
    );
}
