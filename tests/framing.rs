//! Messages as the protocol cuts them: `--framing syslog` with util-linux `logger`, `--telnet`
//! with a real `telnet` through a pty, length-prefixed frames from a Python client, and
//! NUL-delimited records from `find -print0 | nc`.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::{
    LONG_TIMEOUT, Signal, Spawned, TIMEOUT, decode_base64, have, netcat_available, run_program,
    send,
};

/// `logger --tcp --octet-count` (two records on one connection, and a record holding a
/// newline) and `logger --tcp` (non-transparent framing) to one `--framing syslog` port: each
/// record is one message, whole; a count is not part of it.
#[test]
fn logger_records_are_messages_with_syslog_framing() {
    if !have(&["logger"]) {
        return;
    }
    let mut server = Spawned::start(&["--framing", "syslog", "--format", "json"]);
    let port = server.addr().port().to_string();
    let to = ["-n", "127.0.0.1", "-P", &port];
    let mut args = vec!["--tcp", "--octet-count"];
    args.extend(to);
    run_program("logger", &args, b"first record\nsecond record\n");
    server.wait_stderr("client 1 disconnected", TIMEOUT);
    let mut args = vec!["--tcp", "--octet-count"];
    args.extend(to);
    args.push("two\nlines");
    run_program("logger", &args, b"");
    server.wait_stderr("client 2 disconnected", TIMEOUT);
    let mut args = vec!["--tcp"];
    args.extend(to);
    args.push("non-transparent");
    run_program("logger", &args, b"");
    server.wait_stderr("client 3 disconnected", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    let events: Vec<serde_json::Value> = finished
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let messages = |client: u64| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["event"] == "message" && e["client"] == client)
            .map(|e| e["data"].as_str().expect("text").to_owned())
            .collect()
    };
    let ends = |got: &[String], tails: &[&str]| {
        got.len() == tails.len()
            && got
                .iter()
                .zip(tails)
                .all(|(m, t)| m.starts_with("<13>") && m.ends_with(t))
    };
    assert!(
        ends(&messages(1), &["first record", "second record"]),
        "{finished}"
    );
    assert!(ends(&messages(2), &["two\nlines"]), "{finished}");
    assert!(ends(&messages(3), &["non-transparent"]), "{finished}");
    let connect = events
        .iter()
        .find(|e| e["event"] == "connect")
        .expect("connect");
    assert_eq!(connect["framing"], "syslog");
    finished.assert_stderr_has("served 3 clients: 4 messages");
}

/// A real `telnet` through a pty, switched to line mode (it then negotiates LINEMODE): with
/// `--telnet` its lines are clean; without, the negotiation shows as escaped bytes, unchanged.
#[test]
fn telnet_negotiation_is_refused_and_taken_out() {
    if !have(&["telnet", "script"]) {
        return;
    }
    for (flags, first) in [
        (&["--telnet"][..], "[1] after negotiation"),
        (&[][..], "[1] \\xff\\xfb\"after negotiation"),
    ] {
        let mut server = Spawned::start(flags);
        let command = format!("telnet 127.0.0.1 {}", server.addr().port());
        let mut script = Command::new("script")
            .args(["-qfec", &command, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run script");
        let mut typing = script.stdin.take().expect("piped");
        server.wait_stderr("client 1 connected", TIMEOUT);
        // Ctrl-] then "mode line": telnet negotiates LINEMODE with the server.
        typing.write_all(b"\x1d").expect("type");
        typing.write_all(b"mode line\n").expect("type");
        typing.write_all(b"after negotiation\n").expect("type");
        server.wait_stdout("after negotiation", TIMEOUT);
        let finished = server.stop(Signal::TERM);
        let _ = script.kill();
        let _ = script.wait();
        let lines: Vec<&str> = finished.stdout.lines().collect();
        assert_eq!(lines, [first], "{flags:?}\n{finished}");
    }
}

/// Length-prefixed frames from a Python client (u16be and u32le, of 0, 1, 65,535 and 1,000,000
/// bytes) come out as exactly those messages; a lying prefix (4 GiB) ends only its client, with
/// a clear warning.
#[test]
fn length_prefixed_frames_from_python() {
    if !have(&["python3"]) {
        return;
    }
    for (width, pack) in [("u16be", ">H"), ("u32le", "<I")] {
        let mut server = Spawned::start(&[
            "--framing",
            &format!("length:{width}"),
            "--format",
            "json",
            "--max-line",
            "2MiB",
        ]);
        let port = server.addr().port().to_string();
        let sizes = if width == "u16be" {
            "[0, 1, 65535]"
        } else {
            "[0, 1, 65535, 1000000]"
        };
        let program = format!(
            "import socket, struct\n\
             s = socket.create_connection(('127.0.0.1', {port}))\n\
             for n in {sizes}:\n\
             \x20   s.sendall(struct.pack('{pack}', n) + bytes((i * 7) % 256 for i in range(n)))\n\
             s.close()\n"
        );
        run_program("python3", &["-c", &program], b"");
        server.wait_stderr("client 1 disconnected (closed by client)", LONG_TIMEOUT);
        let finished = server.stop(Signal::TERM);
        let sizes: Vec<usize> = finished
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
            .filter(|e| e["event"] == "message")
            .map(|e| {
                let bytes = match (e["data"].as_str(), e["data_b64"].as_str()) {
                    (Some(text), _) => text.as_bytes().to_vec(),
                    (None, Some(b64)) => decode_base64(b64),
                    _ => panic!("no data: {e}"),
                };
                assert!(
                    bytes
                        .iter()
                        .enumerate()
                        .all(|(i, &b)| b == ((i * 7) % 256) as u8),
                    "a frame's bytes changed"
                );
                assert!(e["eol"].is_null());
                bytes.len()
            })
            .collect();
        let want: Vec<usize> = if width == "u16be" {
            vec![0, 1, 65535]
        } else {
            vec![0, 1, 65535, 1_000_000]
        };
        assert_eq!(sizes, want, "{width}");
    }

    // A lying prefix: only that client ends.
    let mut server = Spawned::start(&["--framing", "length:u32be"]);
    let mut liar = server.connect_numbered(1);
    let mut honest = server.connect_numbered(2);
    send(&mut liar, &[0xff, 0xff, 0xff, 0xff, b'x', b'y']);
    let line = server.wait_stderr(
        "WARN  client 1 disconnected (a length prefix of 4294967295 bytes is over the limit of \
         64 MiB (--framing length:u32be))",
        TIMEOUT,
    );
    send(&mut honest, &[0, 0, 0, 2, b'o', b'k']);
    server.wait_stdout("[2] ok", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    assert_eq!(
        finished.stderr.matches("4294967295").count(),
        1,
        "said once: {line}\n{finished}"
    );
}

/// `find -print0 | nc -N` to `--framing delimiter:\x00`: one message per path, newlines and all.
#[test]
fn nul_delimited_records_from_find() {
    if !netcat_available() || !have(&["find", "sh"]) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("overhear-find-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for name in ["plain", "with space", "with\nnewline"] {
        std::fs::write(dir.join(name), "").expect("touch");
    }
    let mut server = Spawned::start(&["--framing", "delimiter:\\x00"]);
    let pipeline = format!(
        "find '{}' -type f -print0 | LC_ALL=C sort -z | nc -N 127.0.0.1 {}",
        dir.display(),
        server.addr().port()
    );
    run_program("sh", &["-c", &pipeline], b"");
    server.wait_stderr("client 1 disconnected", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    let base = dir.display().to_string();
    assert_eq!(
        finished.stdout.lines().collect::<Vec<_>>(),
        [
            format!("[1] {base}/plain"),
            format!("[1] {base}/with\\x0anewline"),
            format!("[1] {base}/with space"),
        ],
        "{finished}"
    );
    finished.assert_stderr_has("served 1 client: 3 messages");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that floods telnet negotiation (`IAC DO x`, each answered with `IAC WONT x`) and
/// reads none of the answers costs a bounded queue: the worker stops reading it, as for echo,
/// instead of holding every answer.
#[test]
fn unread_telnet_answers_cost_bounded_memory() {
    let mut server = Spawned::start(&["--telnet"]);
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&server.addr().into()).expect("connect");
    let mut flooder = std::net::TcpStream::from(socket);
    flooder
        .set_write_timeout(Some(std::time::Duration::from_millis(500)))
        .expect("timeout");
    server.wait_stderr("client 1 connected", TIMEOUT);
    let chunk: Vec<u8> = [0xff, 0xfd, 0x01].repeat(20_000);
    let mut sent = 0;
    // Until the server stops reading (or 50 MB went): its answers queue up unread.
    while sent < 50_000_000 && flooder.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    let peak = crate::common::peak_memory(server.pid());
    assert!(
        peak < 40 * 1024 * 1024,
        "peak resident memory {peak} bytes after {sent} bytes of negotiation"
    );
    server.stop(Signal::TERM).assert_success();
}
