//! End-to-end tests of how `overhear` shows what it hears: JSON Lines, timestamps, colors (on a
//! pipe and on a real terminal), the hex dump, echo, `--output FILE`, the summary table,
//! progress lines, and the completion scripts and manual page.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::net::{Shutdown, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::process::{Pid, kill_process};
use serde_json::{Value, json};

use crate::common::{
    Signal, Spawned, TIMEOUT, assert_no_panic, bin, connect, expect_eof, run_to_end, send,
};

/// How often a polling loop (a process exit, a listening socket) looks again.
const POLL_STEP: Duration = Duration::from_millis(10);

/// How far a timestamp may be from the test's own clock readings around it: clocks can be
/// stepped, but a time zone offset or a garbled field is off by far more.
const CLOCK_SLACK_MS: i64 = 60_000;

/// Milliseconds since the Unix epoch of an RFC 3339 UTC time with milliseconds, exactly in the
/// shape `YYYY-MM-DDTHH:MM:SS.mmmZ`; `None` for anything else.
fn utc_millis(ts: &str) -> Option<i64> {
    let bytes = ts.as_bytes();
    let shaped = bytes.len() == 24
        && bytes.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        });
    if !shaped {
        return None;
    }
    let field = |from: usize, to: usize| ts[from..to].parse::<i64>().ok();
    let (year, month, day) = (field(0, 4)?, field(5, 7)?, field(8, 10)?);
    let (hour, minute, second, millis) = (
        field(11, 13)?,
        field(14, 16)?,
        field(17, 19)?,
        field(20, 23)?,
    );
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from 1970-01-01 to the date (the proleptic Gregorian "days from civil" algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// Now, in milliseconds since the Unix epoch.
fn now_millis() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_millis()).expect("milliseconds fit in i64")
}

/// Panics unless `ts` is a UTC millisecond timestamp between `before` and `after` (with
/// [`CLOCK_SLACK_MS`]), the test's clock readings around the event.
fn assert_timestamp(ts: &str, before: i64, after: i64, context: &str) {
    let Some(at) = utc_millis(ts) else {
        panic!("{ts:?} is not a YYYY-MM-DDTHH:MM:SS.mmmZ timestamp in {context}");
    };
    assert!(
        (before - CLOCK_SLACK_MS..=after + CLOCK_SLACK_MS).contains(&at),
        "{ts:?} is not between the test's clock readings {before} and {after} ms in {context}"
    );
}

#[test]
fn timestamp_shape_check_is_strict() {
    assert_eq!(utc_millis("1970-01-01T00:00:00.000Z"), Some(0));
    assert_eq!(
        utc_millis("2026-11-25T09:25:01.570Z"),
        Some(1_795_598_701_570)
    );
    for bad in [
        "2026-11-25T09:25:01.57Z",
        "2026-11-25T09:25:01.570",
        "2026-11-25 09:25:01.570Z",
        "2026-11-25T09:25:01.570+00:00",
        "2026-13-25T09:25:01.570Z",
        "2026-11-25T09:25:01Z",
    ] {
        assert_eq!(utc_millis(bad), None, "{bad}");
    }
}

/// Parses every stdout line as JSON; panics naming the first line that is not.
fn parse_json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("stdout line {line:?} is not JSON: {err}\n{stdout}"))
        })
        .collect()
}

#[test]
fn json_events_parse_and_carry_every_byte() {
    let before = now_millis();
    let mut server = Spawned::start(&["--format", "json", "--max-conns", "1"]);
    let mut client = server.connect_numbered(1);
    let peer = client.local_addr().expect("client address").to_string();
    send(&mut client, b"hi\r\n");
    send(&mut client, b"\xff\x01\n");
    send(&mut client, "é\u{9b}\n".as_bytes());
    // connect and three messages: the client is served before the second one knocks.
    server.wait_stdout_lines(4, TIMEOUT);
    let mut second = connect(server.addr());
    let second_peer = second.local_addr().expect("client address").to_string();
    server.wait_stderr(&format!("refused {second_peer}: "), TIMEOUT);
    expect_eof(&mut second, TIMEOUT);
    // Waiting for the event itself (not just the log line) fixes its place among the lines.
    server.wait_stdout(r#""event":"refused""#, TIMEOUT);
    send(&mut client, b"tail");
    client
        .shutdown(Shutdown::Write)
        .expect("close the sending side");
    server.wait_stderr("client 1 disconnected (closed by client)", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    let after = now_millis();
    let raw = server.stdout_raw();

    let events = parse_json_lines(&finished.stdout);
    for event in &events {
        let ts = event["ts"]
            .as_str()
            .unwrap_or_else(|| panic!("no ts string in {event}"));
        assert_timestamp(ts, before, after, &event.to_string());
        assert!(event["event"].is_string(), "no event name in {event}");
    }
    // Times are checked above; the rest of each event is compared whole, so no field is extra.
    let mut bare: Vec<Value> = events.clone();
    for event in &mut bare {
        event.as_object_mut().expect("an object").remove("ts");
    }
    let connected_ms = |event: &mut Value| {
        let ms = event
            .as_object_mut()
            .and_then(|fields| fields.remove("connected_ms"));
        assert!(
            ms.as_ref().is_some_and(Value::is_u64),
            "connected_ms is not a count of milliseconds in {event}"
        );
    };
    assert_eq!(bare.len(), 8, "{finished}");
    connected_ms(&mut bare[6]);
    connected_ms(&mut bare[7]["per_client"][0]);
    let reason = bare[4]
        .as_object_mut()
        .and_then(|fields| fields.remove("reason"));
    assert!(
        reason
            .as_ref()
            .and_then(Value::as_str)
            .is_some_and(|r| r.contains("--max-conns")),
        "the refusal does not name --max-conns: {reason:?}"
    );
    let bytes = 4 + 3 + "é\u{9b}\n".len() + 4;
    // Each message says how it ended: joined with its `eol`, the data is every byte sent. The
    // last one, ended by the close, has none.
    let expected = [
        json!({"event": "connect", "client": 1, "peer": peer,
               "listener": format!("tcp://{}", server.addr())}),
        json!({"event": "message", "client": 1, "peer": peer, "data": "hi", "eol": "\r\n"}),
        json!({"event": "message", "client": 1, "peer": peer, "data_b64": "/wE=", "eol": "\n"}),
        json!({"event": "message", "client": 1, "peer": peer, "data": "é\u{9b}", "eol": "\n"}),
        json!({"event": "refused", "peer": second_peer}),
        json!({"event": "message", "client": 1, "peer": peer, "data": "tail"}),
        json!({"event": "disconnect", "client": 1, "peer": peer, "reason": "closed by client",
               "messages": 4, "bytes": bytes, "sent": 0}),
        json!({"event": "summary", "clients": 1, "messages": 4, "bytes": bytes, "sent": 0,
               "refused": 1, "tls_failed": 0, "rows_omitted": 0,
               "per_client": [{"client": 1, "peer": peer, "messages": 4, "bytes": bytes,
                               "sent": 0}]}),
    ];
    for (i, (got, want)) in bare.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "event {i}\n{finished}");
    }

    // U+009B (CSI) must not reach a terminal raw, even inside a JSON string.
    let stdout = finished.stdout.as_bytes();
    assert_eq!(raw, stdout, "stdout is not UTF-8\n{finished}");
    assert!(
        !stdout.windows(2).any(|pair| pair == [0xc2, 0x9b]),
        "a raw U+009B is on stdout\n{finished}"
    );
    assert!(
        finished.stdout.contains(r#""data":"é\u009b""#),
        "U+009B is not written as \\u009b\n{finished}"
    );
}

#[test]
fn timestamps_prefix_text_lines() {
    let before = now_millis();
    let mut server = Spawned::start(&["--timestamps"]);
    let mut client = server.connect_numbered(1);
    send(&mut client, b"hello\n");
    let line = server.wait_stdout("hello", TIMEOUT);
    let after = now_millis();
    let (ts, rest) = line
        .split_once(' ')
        .unwrap_or_else(|| panic!("no space after the time in {line:?}"));
    assert_eq!(rest, "[1] hello", "line {line:?}");
    assert_timestamp(ts, before, after, &line);
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    assert_eq!(finished.stdout, format!("{line}\n"), "{finished}");
}

/// A text line `ESC[<code>m[N]ESC[0m message`, split into its color code, N and the message.
fn colored(line: &str) -> Option<(&str, u64, &str)> {
    let rest = line.strip_prefix("\x1b[")?;
    let (code, rest) = rest.split_once('m')?;
    if code.is_empty() || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest = rest.strip_prefix('[')?;
    let (number, rest) = rest.split_once("]\x1b[0m ")?;
    Some((code, number.parse().ok()?, rest))
}

/// Sends two lines from each of two clients (client 1's second one asks for red itself) and
/// returns the four stdout lines, once the server has printed them.
fn two_colorful_clients(addr: SocketAddr, stdout: impl Fn(usize) -> Vec<String>) -> Vec<String> {
    let mut first = connect(addr);
    send(&mut first, b"one\n");
    stdout(1);
    let mut second = connect(addr);
    send(&mut second, b"two\n");
    stdout(2);
    send(&mut first, b"\x1b[31mred\n");
    send(&mut second, b"again\n");
    stdout(4)
}

/// Checks the colored lines of [`two_colorful_clients`]: every number colored, each client in
/// one color of its own, and client 1's own color escape shown as text.
fn assert_client_colors(lines: &[String], raw: &[u8]) {
    let parsed: Vec<(&str, u64, &str)> = lines
        .iter()
        .map(|line| colored(line).unwrap_or_else(|| panic!("{line:?} has no colored [N]")))
        .collect();
    let color_of = |n: u64| -> HashSet<&str> {
        parsed
            .iter()
            .filter(|(_, number, _)| *number == n)
            .map(|(code, _, _)| *code)
            .collect()
    };
    let (one, two) = (color_of(1), color_of(2));
    assert_eq!(one.len(), 1, "client 1 changes color: {lines:?}");
    assert_eq!(two.len(), 1, "client 2 changes color: {lines:?}");
    assert_ne!(one, two, "clients 1 and 2 share a color: {lines:?}");
    let messages: Vec<(u64, &str)> = parsed.iter().map(|&(_, n, m)| (n, m)).collect();
    for want in [(1, "one"), (2, "two"), (1, "\\x1b[31mred"), (2, "again")] {
        assert!(messages.contains(&want), "{want:?} missing from {lines:?}");
    }
    // The only escape bytes are the server's own: two per line, around the number.
    let escapes = raw.iter().filter(|&&b| b == 0x1b).count();
    assert_eq!(escapes, 2 * lines.len(), "raw ESC bytes in {lines:?}");
}

#[test]
fn color_always_marks_each_client_and_escapes_client_colors() {
    let mut server = Spawned::start(&["--color", "always"]);
    let lines = two_colorful_clients(server.addr(), |n| server.wait_stdout_lines(n, TIMEOUT));
    assert_client_colors(&lines, &server.stdout_raw());
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
}

#[test]
fn color_always_wins_over_no_color() {
    let mut server = Process::start(
        bin(),
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--duration",
            "0",
            "--color",
            "always",
        ],
        &[("NO_COLOR", "1")],
    );
    let addr = server.listening_addr_from(&server.stderr);
    let lines = two_colorful_clients(addr, |n| server.stdout.wait_lines(n, TIMEOUT));
    assert_client_colors(&lines, &server.stdout.bytes());
    server.signal(Signal::TERM);
    assert!(server.wait_exit(TIMEOUT).success(), "{}", server.report());
}

#[test]
fn no_color_bytes_on_a_pipe_or_with_never() {
    for args in [&[][..], &["--color", "auto"], &["--color", "never"]] {
        let mut server = Spawned::start(args);
        let lines = two_colorful_clients(server.addr(), |n| server.wait_stdout_lines(n, TIMEOUT));
        let finished = server.stop(Signal::TERM);
        finished.assert_success();
        assert!(
            !finished.stdout.contains('\x1b'),
            "an ESC byte on stdout with {args:?}\n{finished}"
        );
        for want in ["[1] one", "[2] two", "[1] \\x1b[31mred", "[2] again"] {
            assert!(
                lines.iter().any(|l| l == want),
                "{want:?} missing with {args:?}\n{finished}"
            );
        }
    }
}

/// Whether util-linux `script`, which gives a command a terminal, is installed.
fn script_available() -> bool {
    Command::new("script")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs overhear with `args` on a pseudo-terminal (under `script`), with `env` set, sends one
/// line, and returns how the server printed it (terminal line ending removed).
fn line_on_a_terminal(args: &str, env: &[(&str, &str)]) -> String {
    let command = format!(
        "exec \"$OVERHEAR\" --host 127.0.0.1 --port 0 --duration 0 --poll-interval 1h {args}"
    );
    let mut vars = vec![("OVERHEAR", bin()), ("SHELL", "/bin/sh")];
    vars.extend_from_slice(env);
    let mut server = Process::start("script", &["-qfec", &command, "/dev/null"], &vars);
    // stdout and stderr of overhear both go to the terminal, which script copies to its stdout.
    let addr = server.listening_addr_from(&server.stdout);
    let mut client = connect(addr);
    send(&mut client, b"hello\n");
    let line = server
        .stdout
        .wait_for("the client's line", TIMEOUT, |text| {
            String::from_utf8_lossy(text)
                .split('\n')
                .find(|line| line.contains("hello") && line.ends_with('\r'))
                .map(|line| line.trim_end_matches('\r').to_owned())
        });
    // Stop overhear itself (script would wait seconds before it kills a child it signalled);
    // script then ends with overhear's status.
    let overhear = server.only_child();
    kill_process(overhear, Signal::TERM)
        .unwrap_or_else(|err| panic!("cannot signal overhear under script: {err}"));
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "{}", server.report());
    line
}

#[test]
fn color_auto_on_a_terminal_follows_no_color() {
    if !script_available() {
        eprintln!("skipped: util-linux `script` is not installed, so no terminal to test on");
        return;
    }
    let line = line_on_a_terminal("", &[]);
    let (_, number, message) =
        colored(&line).unwrap_or_else(|| panic!("no color on a terminal: {line:?}"));
    assert_eq!((number, message), (1, "hello"), "{line:?}");
    assert_eq!(line_on_a_terminal("", &[("NO_COLOR", "1")]), "[1] hello");
    assert_eq!(line_on_a_terminal("--color never", &[]), "[1] hello");
}

/// The bytes of the hex test, sent in one write.
const HEX_BYTES: &[u8] = b"Hello, world!\n\x00\xffmore";

/// Checks hex rows that a split read laid out differently from the usual two rows: each row's
/// offset continues the last, its printable column matches its bytes, the columns line up,
/// and the rows together hold exactly [`HEX_BYTES`].
fn assert_hex_rows_hold_the_bytes(rows: &[&str], ascii_column: usize) {
    let mut seen = Vec::new();
    for row in rows {
        let parsed = row
            .strip_prefix("[1] ")
            .and_then(|rest| rest.split_once("  "))
            .and_then(|(offset, rest)| Some((offset, rest.split_once("  |")?)));
        let Some((offset, (hex, printable))) = parsed else {
            panic!("malformed hex row {row:?} in {rows:#?}");
        };
        assert_eq!(
            usize::from_str_radix(offset, 16).ok(),
            Some(seen.len()),
            "offset of {row:?} in {rows:#?}"
        );
        assert_eq!(row.find('|'), Some(ascii_column), "columns of {row:?}");
        let bytes: Vec<u8> = hex
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("{b:?} in {row:?}")))
            .collect();
        assert!(
            (1..=16).contains(&bytes.len()),
            "{} bytes in {row:?}",
            bytes.len()
        );
        let shown: String = bytes
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    char::from(b)
                } else {
                    '.'
                }
            })
            .collect();
        assert_eq!(
            printable,
            format!("{shown}|"),
            "printable column of {row:?}"
        );
        seen.extend(bytes);
    }
    assert_eq!(seen, HEX_BYTES, "the rows hold other bytes: {rows:#?}");
}

#[test]
fn hex_layout() {
    let mut server = Spawned::start(&["--hex"]);
    let mut client = server.connect_numbered(1);
    send(&mut client, HEX_BYTES);
    drop(client);
    server.wait_stderr("client 1 disconnected (closed by client)", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    let expected = [
        "[1] 00000000  48 65 6c 6c 6f 2c 20 77  6f 72 6c 64 21 0a 00 ff  |Hello, world!...|",
        "[1] 00000010  6d 6f 72 65                                       |more|",
    ];
    let rows: Vec<&str> = finished.stdout.lines().collect();
    if rows != expected {
        // One write nearly always arrives in one read; if the kernel split it, rows split too.
        let ascii_column = expected[0].find('|').expect("a printable column");
        assert_hex_rows_hold_the_bytes(&rows, ascii_column);
    }
    finished.assert_stderr_has("client 1 disconnected (closed by client) after ");
    // Hex output still frames lines, so the counts mean what they mean in text.
    finished.assert_stderr_has(&format!("2 messages, {} bytes", HEX_BYTES.len()));
}

#[test]
fn echo_round_trip() {
    let mut server = Spawned::start(&["--echo"]);
    let mut client = server.connect_numbered(1);
    send(&mut client, b"ping\n");
    let mut reply = [0; 5];
    client
        .read_exact(&mut reply)
        .unwrap_or_else(|err| panic!("no echo of ping: {err}"));
    assert_eq!(&reply, b"ping\n");
    server.wait_stdout("[1] ping", TIMEOUT);
    // Nothing more comes back: the server closes after our end of stream, without extra bytes.
    client
        .shutdown(Shutdown::Write)
        .expect("close sending side");
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .unwrap_or_else(|err| panic!("reading after the echo failed: {err}"));
    assert_eq!(rest, b"", "bytes after the echo");
    server.wait_stderr("client 1 disconnected (closed by client)", TIMEOUT);
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    assert_eq!(finished.stdout, "[1] ping\n", "{finished}");
}

/// A directory of its own under the system temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path =
            std::env::temp_dir().join(format!("overhear-{name}-{}-{nanos}", std::process::id()));
        fs::create_dir(&path).unwrap_or_else(|err| panic!("cannot create {path:?}: {err}"));
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn output_file_appends() {
    let dir = TempDir::new("output");
    let path = dir.0.join("messages.log");
    fs::write(&path, "old\n").expect("write the old line");
    let path_text = path.to_str().expect("a UTF-8 temp path");
    let mut server = Spawned::start(&["-o", path_text]);
    let mut client = server.connect_numbered(1);
    send(&mut client, b"new");
    // The unfinished line is written when the server stops, to the file.
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    assert_eq!(finished.stdout, "", "{finished}");
    let written = fs::read_to_string(&path).expect("read the output file");
    assert_eq!(written, "old\n[1] new\n", "{finished}");
}

/// A regular file is written by every worker at once (no writer role): the kernel must still
/// keep each worker's lines whole, and every line must arrive once.
#[test]
fn busy_clients_writing_to_a_file_keep_lines_whole() {
    const CLIENTS: usize = 8;
    const LINES: usize = 5_000;
    let dir = TempDir::new("busy");
    let path = dir.0.join("busy.log");
    let path_text = path.to_str().expect("a UTF-8 temp path");
    let mut server = Spawned::start(&["-o", path_text]);
    let clients: Vec<_> = (1..=CLIENTS).map(|n| server.connect_numbered(n)).collect();
    let writers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut stream)| {
            std::thread::spawn(move || {
                let text: String = (0..LINES)
                    .map(|j| format!("c{i}-{j:05} {}\n", "=".repeat(60)))
                    .collect();
                send(&mut stream, text.as_bytes());
                stream
            })
        })
        .collect();
    let streams: Vec<_> = writers
        .into_iter()
        .map(|w| w.join().expect("a writer"))
        .collect();
    drop(streams);
    for n in 1..=CLIENTS {
        server.wait_stderr(
            &format!("client {n} disconnected (closed by client)"),
            TIMEOUT,
        );
    }
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    let written = fs::read_to_string(&path).expect("read the output file");
    let mut seen = vec![vec![false; LINES]; CLIENTS];
    let mut owner = std::collections::HashMap::new();
    for line in written.lines() {
        let parsed = line.split_once("] ").and_then(|(n, rest)| {
            let (tag, pad) = rest.split_once(' ')?;
            let (c, j) = tag.strip_prefix('c')?.split_once('-')?;
            (pad == "=".repeat(60)).then_some(())?;
            Some((
                n.to_string(),
                c.parse::<usize>().ok()?,
                j.parse::<usize>().ok()?,
            ))
        });
        let Some((n, c, j)) = parsed.filter(|&(_, c, j)| c < CLIENTS && j < LINES) else {
            panic!("a torn or foreign line {line:?}");
        };
        assert_eq!(*owner.entry(n).or_insert(c), c, "attribution of {line:?}");
        assert!(!seen[c][j], "{line:?} twice");
        seen[c][j] = true;
    }
    assert!(seen.iter().flatten().all(|&s| s), "every line arrived");
}

#[test]
fn output_file_in_a_missing_directory() {
    let output = run_to_end(&[
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--duration",
        "0",
        "-o",
        "/nonexistent-dir/x",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    assert_eq!(
        stderr, "error: cannot open /nonexistent-dir/x: no such file or directory\n",
        "stderr"
    );
    assert_eq!(output.stdout, b"", "stdout");
}

#[test]
fn summary_table_on_stderr() {
    let mut server = Spawned::start(&[]);
    let mut peers = Vec::new();
    let mut sizes = Vec::new();
    let mut clients = Vec::new();
    for n in 1..=3 {
        let mut client = server.connect_numbered(n);
        peers.push(client.local_addr().expect("client address").to_string());
        let text: String = (1..=n).map(|i| format!("line {i} of {n}\n")).collect();
        send(&mut client, text.as_bytes());
        sizes.push(text.len());
        clients.push(client);
    }
    server.wait_stdout_lines(6, TIMEOUT);
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    finished.assert_stderr_has(&format!(
        "served 3 clients: 6 messages, {} bytes; refused 0 connections",
        sizes.iter().sum::<usize>()
    ));
    let lines: Vec<&str> = finished.stderr.lines().collect();
    let table = &lines[lines.len().saturating_sub(5)..];
    let [header, rows @ .., total] = table else {
        panic!("no table at the end of stderr\n{finished}");
    };
    let columns = [
        "client",
        "peer",
        "connected for",
        "messages",
        "bytes",
        "sent",
    ];
    let mut from = 0;
    for column in columns {
        let at = header[from..]
            .find(column)
            .unwrap_or_else(|| panic!("header {header:?} lacks {column:?} after column {from}"));
        from += at + column.len();
    }
    // Numbers are right-aligned under their headings.
    let ends = |line: &str, word: &str| line.find(word).map(|at| at + word.len());
    let messages_end = ends(header, "messages").expect("messages heading");
    let bytes_end = ends(header, "  bytes").expect("bytes heading");
    let sent_end = header.len();
    let check_row = |row: &str, first: &str, second: &str, messages: usize, bytes: usize| {
        let words: Vec<&str> = row.split_whitespace().collect();
        assert!(words.len() >= 4, "short row {row:?}\n{finished}");
        assert_eq!(words[0], first, "row {row:?}\n{finished}");
        assert!(
            row.contains(second),
            "row {row:?} lacks {second:?}\n{finished}"
        );
        let tail = &words[words.len() - 3..];
        // Nothing was sent to the clients.
        assert_eq!(
            tail,
            [messages.to_string(), bytes.to_string(), 0.to_string()],
            "row {row:?}\n{finished}"
        );
        assert_eq!(row.len(), sent_end, "sent column of {row:?}\n{finished}");
        let bytes_at = row[..row.len() - tail[2].len()].trim_end().len();
        assert_eq!(bytes_at, bytes_end, "bytes column of {row:?}\n{finished}");
        let messages_at = row[..bytes_at - tail[1].len()].trim_end().len();
        assert_eq!(
            messages_at, messages_end,
            "messages column of {row:?}\n{finished}"
        );
    };
    assert_eq!(rows.len(), 3, "{finished}");
    for (i, row) in rows.iter().enumerate() {
        let n = i + 1;
        check_row(row, &n.to_string(), &peers[i], n, sizes[i]);
        assert_eq!(
            row.split_whitespace().nth(1),
            Some(peers[i].as_str()),
            "peer of {row:?}\n{finished}"
        );
    }
    check_row(total, "total", "3 clients", 6, sizes.iter().sum());
    drop(clients);
}

#[test]
fn quiet_leaves_out_the_summary_table() {
    let mut server = Process::start(
        bin(),
        &[
            "-q",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--duration",
            "0",
        ],
        &[],
    );
    // Found among the process's own sockets, as for runs whose log says nothing (-qq).
    let addr = server.listening_addr_from_proc();
    let mut client = connect(addr);
    send(&mut client, b"quiet\n");
    server
        .stdout
        .wait_for("[1] quiet on stdout", TIMEOUT, |text| {
            text.starts_with(b"[1] quiet\n").then_some(())
        });
    server.signal(Signal::TERM);
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "{}", server.report());
    let stderr = server.stderr.text();
    for word in ["connected for", "total", "served", "connected from"] {
        assert!(
            !stderr.contains(word),
            "-q still logs {word:?}\n{}",
            server.report()
        );
    }
    assert_no_panic("stderr", &stderr);
    assert_eq!(server.stdout.text(), "[1] quiet\n", "{}", server.report());
}

#[test]
fn progress_shows_time_left() {
    let mut server = Spawned::start(&["--duration", "1h", "--progress", "200ms"]);
    let idle = server.wait_stderr("0 clients connected, 0 served so far; ", TIMEOUT);
    assert!(
        idle.contains("; stopping in 59m "),
        "no time left in {idle:?}"
    );
    let _client = server.connect_numbered(1);
    let busy = server.wait_stderr("1 client connected, 1 served so far; ", TIMEOUT);
    assert!(
        busy.contains("; stopping in 59m "),
        "no time left in {busy:?}"
    );
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
}

/// `-v` says how many bytes each wake read from a client.
#[test]
fn verbose_logs_the_bytes_each_read_took() {
    let mut server = Spawned::start(&["-v"]);
    let mut client = server.connect_numbered(1);
    send(&mut client, b"hello\n");
    server.wait_stdout("[1] hello", TIMEOUT);
    server.wait_stderr("client 1: read 6 bytes", TIMEOUT);
    server.stop(Signal::TERM).assert_success();
}

/// `--progress 1s` over a run of 2.5 s: a line after each second and none at the start, so
/// exactly two, counting down.
#[test]
fn progress_lines_come_once_an_interval_and_not_at_the_start() {
    let output = run_to_end(&[
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--duration",
        "2500ms",
        "--progress",
        "1s",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let left: Vec<&str> = stderr
        .lines()
        .filter_map(|line| line.split_once("0 clients connected, 0 served so far; stopping in "))
        .map(|(_, left)| left)
        .collect();
    assert_eq!(left.len(), 2, "{stderr}");
    assert_ne!(left[0], left[1], "the time left did not change: {stderr}");
}

#[test]
fn completions_and_man() {
    let text = |args: &[&str]| {
        let output = run_to_end(args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{args:?} failed:\n{stderr}");
        assert_eq!(stderr, "", "{args:?} wrote to stderr");
        String::from_utf8(output.stdout).expect("UTF-8 output")
    };
    let bash = text(&["--completions", "bash"]);
    assert!(bash.contains("_overhear()"), "bash script:\n{bash}");
    assert!(bash.contains("--max-conns"), "bash script:\n{bash}");
    let zsh = text(&["--completions", "zsh"]);
    assert!(zsh.starts_with("#compdef overhear\n"), "zsh script:\n{zsh}");
    let man = text(&["--man"]);
    assert!(
        man.lines().any(|line| line.starts_with(".TH overhear 1 ")),
        "manual page:\n{man}"
    );
    assert!(man.contains(".SH OPTIONS"), "manual page:\n{man}");
    assert!(man.contains(r"\-\-max\-conns"), "manual page:\n{man}");

    let output = run_to_end(&["--man", "--port", "1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("cannot be used with"), "stderr:\n{stderr}");
    assert_eq!(output.stdout, b"", "stdout");
}

/// What a reader thread has read from one pipe so far.
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    /// EOF (or a read error): nothing more will come.
    closed: bool,
}

/// One pipe of a [`Process`], read on its own thread; the condvar signals every change.
struct Pipe {
    shared: Arc<(Mutex<Captured>, Condvar)>,
}

impl Pipe {
    fn start(mut source: impl Read + Send + 'static) -> Pipe {
        let pipe = Pipe {
            shared: Arc::new((Mutex::new(Captured::default()), Condvar::new())),
        };
        let shared = Arc::clone(&pipe.shared);
        thread::Builder::new()
            .name(String::from("pipe-reader"))
            .spawn(move || {
                let mut buf = [0; 4096];
                loop {
                    let read = source.read(&mut buf);
                    let (text, changed) = &*shared;
                    let mut text = text.lock().unwrap_or_else(PoisonError::into_inner);
                    match read {
                        Ok(n) if n > 0 => text.bytes.extend_from_slice(&buf[..n]),
                        _ => text.closed = true,
                    }
                    let closed = text.closed;
                    drop(text);
                    changed.notify_all();
                    if closed {
                        break;
                    }
                }
            })
            .expect("the test process can start a thread");
        pipe
    }

    /// Waits until `found` returns something for the bytes read so far; panics after `timeout`
    /// or when the pipe closes first.
    fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut found: impl FnMut(&[u8]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let (text, changed) = &*self.shared;
        let mut text = text.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(value) = found(&text.bytes) {
                return value;
            }
            let now = Instant::now();
            if text.closed || now >= deadline {
                let shown = String::from_utf8_lossy(&text.bytes).into_owned();
                drop(text);
                panic!("no {what} within {timeout:?}; read so far:\n{shown}");
            }
            text = changed
                .wait_timeout(text, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits for `count` whole lines and returns all whole lines so far.
    fn wait_lines(&self, count: usize, timeout: Duration) -> Vec<String> {
        self.wait_for(&format!("{count} lines"), timeout, |text| {
            let whole: Vec<String> = String::from_utf8_lossy(text)
                .split_inclusive('\n')
                .filter_map(|line| line.strip_suffix('\n'))
                .map(String::from)
                .collect();
            (whole.len() >= count).then_some(whole)
        })
    }

    /// Waits for EOF on the pipe: the process and everything it started have closed it.
    fn wait_closed(&self, timeout: Duration) {
        let (text, changed) = &*self.shared;
        let text = text.lock().unwrap_or_else(PoisonError::into_inner);
        let (text, _) = changed
            .wait_timeout_while(text, timeout, |text| !text.closed)
            .unwrap_or_else(PoisonError::into_inner);
        assert!(
            text.closed,
            "a pipe is still open {timeout:?} after the process exited"
        );
    }

    fn bytes(&self) -> Vec<u8> {
        let (text, _) = &*self.shared;
        text.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
            .clone()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

/// A child process for what [`Spawned`] cannot do: another program (`script`), an environment
/// variable, or no listening line (`-q`). Dropping it stops (SIGTERM, then SIGKILL) and reaps it.
struct Process {
    child: Child,
    command: String,
    stdout: Pipe,
    stderr: Pipe,
}

impl Process {
    fn start(program: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
        let command = format!("{program} {}", args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {command}: {err}"));
        let stdout = Pipe::start(child.stdout.take().expect("piped stdout"));
        let stderr = Pipe::start(child.stderr.take().expect("piped stderr"));
        Process {
            child,
            command,
            stdout,
            stderr,
        }
    }

    /// The address in the `listening on ADDR;` line that `pipe` carries.
    fn listening_addr_from(&self, pipe: &Pipe) -> SocketAddr {
        pipe.wait_for("listening line", TIMEOUT, |text| {
            let text = String::from_utf8_lossy(text);
            let (_, rest) = text.split_once("listening on ")?;
            rest.split_once(';')?.0.parse().ok()
        })
    }

    /// The loopback address of the TCP socket the process listens on, found in `/proc`: the
    /// listening sockets of its network namespace, matched to the sockets among its descriptors.
    fn listening_addr_from_proc(&mut self) -> SocketAddr {
        let pid = self.child.id();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(port) = crate::common::listening_port(pid) {
                return SocketAddr::from(([127, 0, 0, 1], port));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before listening", self.command);
            }
            assert!(
                Instant::now() < deadline,
                "{} not listening after {TIMEOUT:?}",
                self.command
            );
            thread::sleep(POLL_STEP);
        }
    }

    /// The one child of this process (overhear, run by `script` with `exec`), found in `/proc`.
    fn only_child(&self) -> Pid {
        let pid = self.child.id();
        let children: Vec<u32> = fs::read_dir("/proc")
            .expect("list /proc")
            .filter_map(|entry| {
                let child: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
                let stat = fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
                // pid (comm) state ppid ...: comm may hold spaces and parentheses.
                let (_, rest) = stat.rsplit_once(") ")?;
                let parent: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
                (parent == pid).then_some(child)
            })
            .collect();
        let [child] = children[..] else {
            panic!(
                "{} has children {children:?}, not exactly one",
                self.command
            );
        };
        Pid::from_raw(i32::try_from(child).expect("a pid fits in i32")).expect("a pid is positive")
    }

    fn signal(&self, signal: Signal) {
        kill_process(Pid::from_child(&self.child), signal)
            .unwrap_or_else(|err| panic!("cannot signal {}: {err}", self.command));
    }

    /// Waits for the process to exit, and for its pipes to close.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.stdout.wait_closed(TIMEOUT);
                    self.stderr.wait_closed(TIMEOUT);
                    return status;
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(POLL_STEP),
                Ok(None) => panic!("{} still running after {timeout:?}", self.command),
                Err(err) => panic!("cannot wait for {}: {err}", self.command),
            }
        }
    }

    /// The command and what it wrote, for a failure message.
    fn report(&self) -> String {
        format!(
            "command: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.stdout.text(),
            self.stderr.text()
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill_process(Pid::from_child(&self.child), Signal::TERM);
            let deadline = Instant::now() + TIMEOUT;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(POLL_STEP);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("{}", self.report());
        }
    }
}

/// Counts read naturally (`1 message`, `served 1 client`, `stopped 1 worker`), and an IPv4
/// client of a dual-stack listener is shown by its IPv4 address in logs, JSON and the summary.
#[test]
fn counts_are_plural_only_when_needed_and_mapped_peers_look_like_ipv4() {
    let mut server = Spawned::start(&["--host", "::", "--format", "json"]);
    let v4 = SocketAddr::from(([127, 0, 0, 1], server.addr().port()));
    let mut client = connect(v4);
    let peer = client.local_addr().expect("client address").to_string();
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    send(&mut client, b"one\n");
    server.wait_stdout(r#""data":"one""#, TIMEOUT);
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    finished.assert_stderr_has(&format!("client 1 connected from {peer}"));
    finished.assert_stderr_has("client 1 disconnected (server stopping) after ");
    finished.assert_stderr_has(": 1 message, 4 bytes");
    finished.assert_stderr_has("stopped 1 worker in ");
    finished.assert_stderr_has("served 1 client: 1 message, 4 bytes; refused 0 connections");
    finished.assert_stderr_has(&format!("     1  {peer} "));
    finished.assert_stderr_has(" total  1 client ");
    assert!(!finished.stderr.contains("::ffff:"), "{finished}");
    for event in parse_json_lines(&finished.stdout) {
        if let Some(shown) = event["peer"].as_str() {
            assert_eq!(shown, peer, "{event}");
        }
    }
}

/// At a stop with many clients, the first 20 disconnect lines are logged and the rest counted
/// in one line; the summary table has the details.
#[test]
fn disconnect_lines_at_a_stop_are_capped() {
    const CLIENTS: usize = 30;
    let mut server = Spawned::start(&[]);
    let clients: Vec<_> = (1..=CLIENTS).map(|n| server.connect_numbered(n)).collect();
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    assert_eq!(
        finished
            .stderr
            .matches("disconnected (server stopping) after")
            .count(),
        20,
        "{finished}"
    );
    for n in 1..=20 {
        finished.assert_stderr_has(&format!("client {n} disconnected (server stopping)"));
    }
    finished.assert_stderr_has("… and 10 more clients disconnected (server stopping)");
    finished.assert_stderr_has(&format!("stopped {CLIENTS} workers in "));
    drop(clients);
}
