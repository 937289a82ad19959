//! A newcomer's first hour, against the real binary: `--help` at the terminal's width with one
//! value name per kind of value, hints for the usual mistakes, `-q` keeping the listening line,
//! `--raw --format text`, what the completion scripts complete, and the manual page's sections
//! (rendered by `man` when it is installed).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{
    Signal, Spawned, TIMEOUT, assert_no_panic, connect, overhear, run_to_end, send,
};

/// How often a polling loop looks at a child process again.
const POLL_STEP: Duration = Duration::from_millis(10);

/// Runs `command` to its end with `input` on its stdin (if any) and returns its output.
///
/// # Panics
/// If it cannot start, or is still running after [`TIMEOUT`] (it is killed and reaped first).
fn finish(command: Command, input: Option<&[u8]>) -> Output {
    let shown = format!("{command:?}");
    try_finish(command, input).unwrap_or_else(|err| panic!("cannot run {shown}: {err}"))
}

/// Like [`finish`], but a program that cannot start is an `Err` (`NotFound` when it is not
/// installed).
fn try_finish(mut command: Command, input: Option<&[u8]>) -> io::Result<Output> {
    let shown = format!("{command:?}");
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn()?;
    let feeder = child.stdin.take().map(|mut stdin| {
        let input = input.unwrap_or_default().to_vec();
        // A child that exits without reading all of it closes the pipe: not this test's concern.
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        })
    });
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL_STEP),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{shown} still running after {TIMEOUT:?}");
            }
            Err(err) => panic!("cannot wait for {shown}: {err}"),
        }
    };
    // The child is gone; a grandchild holding a pipe open would hang these joins, and none of
    // the programs run here leaves one behind.
    if let Some(feeder) = feeder {
        feeder.join().expect("the stdin feeder");
    }
    Ok(Output {
        status,
        stdout: stdout.join().expect("the stdout reader"),
        stderr: stderr.join().expect("the stderr reader"),
    })
}

/// `overhear ARGS` run to its end with the extra environment `vars`.
fn run_with(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = overhear(args);
    command.envs(vars.iter().copied());
    finish(command, None)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The stdout of a run that must succeed without a word on stderr.
fn stdout_of(args: &[&str], vars: &[(&str, &str)]) -> String {
    let output = run_with(args, vars);
    let stderr = text(&output.stderr);
    assert!(
        output.status.success(),
        "{args:?}: {}\n{stderr}",
        output.status
    );
    assert_eq!(stderr, "", "{args:?} wrote to stderr");
    text(&output.stdout)
}

/// The lines of the help's `heading:` block, up to the blank line that ends it.
fn help_block<'a>(help: &'a str, heading: &str) -> Vec<&'a str> {
    help.lines()
        .skip_while(|line| *line != heading)
        .skip(1)
        .take_while(|line| !line.is_empty())
        .collect()
}

#[test]
fn help_wraps_to_80_columns_with_aligned_examples() {
    for flag in ["--help", "-h"] {
        let help = stdout_of(&[flag], &[("COLUMNS", "80")]);
        for line in help.lines() {
            assert!(
                line.chars().count() <= 80,
                "{flag}: a line of {} columns at COLUMNS=80: {line:?}\n{help}",
                line.chars().count()
            );
        }
        let examples = help_block(&help, "Examples:");
        assert!(examples.len() >= 5, "{flag}: examples:\n{help}");
        // Each example is "  COMMAND  WHAT": every WHAT starts in the same column.
        let columns: Vec<usize> = examples
            .iter()
            .map(|line| {
                let gap = line[2..].find("  ").expect("a gap after the command") + 2;
                gap + line[gap..].len() - line[gap..].trim_start().len()
            })
            .collect();
        assert!(
            columns.iter().all(|&c| c == columns[0]),
            "{flag}: examples not aligned ({columns:?}):\n{}",
            examples.join("\n")
        );
    }
}

#[test]
fn help_uses_a_wider_terminal() {
    let help = stdout_of(&["--help"], &[("COLUMNS", "120")]);
    let widest = help.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    assert!(
        (81..=120).contains(&widest),
        "widest line {widest} columns at COLUMNS=120:\n{help}"
    );
}

#[test]
fn help_names_each_kind_of_value_once() {
    let help = stdout_of(&["--help"], &[("COLUMNS", "100")]);
    for usage in [
        "--host <HOST>",
        "-p, --port <PORT>",
        "-d, --duration <DURATION>",
        "--poll-interval <DURATION>",
        "--idle-timeout <DURATION>",
        "--progress [<DURATION>]",
        "--backlog <N>",
        "--max-conns <N>",
        "--allow <CIDR>",
        "--deny <CIDR>",
        "--max-line <BYTES>",
        "-o, --output <FILE>",
        "--completions <SHELL>",
    ] {
        assert!(help.contains(usage), "--help lacks {usage:?}:\n{help}");
    }
    for old in [
        "<POLL_INTERVAL>",
        "<INTERVAL>",
        "<IDLE_TIMEOUT>",
        "<MAX_LINE>",
    ] {
        assert!(!help.contains(old), "--help still shows {old}:\n{help}");
    }
    assert!(help.contains("-qqq"), "-q does not mention -qqq:\n{help}");
    let install = help_block(&help, "Install the bash completions and the manual page:");
    assert_eq!(
        install.first().map(|line| line.trim()),
        Some("mkdir -p ~/.local/share/bash-completion/completions"),
        "{help}"
    );
    assert!(
        install
            .iter()
            .any(|line| line.trim() == "> ~/.local/share/bash-completion/completions/overhear"),
        "{help}"
    );
    let statuses: Vec<&str> = help_block(&help, "Exit status:")
        .iter()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(statuses, ["0", "1", "2", "130"], "{help}");
}

#[test]
fn mistakes_get_a_hint_and_status_2() {
    let cases: [(&[&str], &str); 6] = [
        (
            &["--host", "127.0.0.1:8080"],
            "error: invalid value '127.0.0.1:8080' for '--host <HOST>': \
             give the port with --port (--host 127.0.0.1 --port 8080)",
        ),
        (
            &["--host", "[::1]:8080"],
            "error: invalid value '[::1]:8080' for '--host <HOST>': \
             give the port with --port (--host ::1 --port 8080)",
        ),
        (
            &["--duration", "abc"],
            "error: invalid value 'abc' for '--duration <DURATION>': \
             write a duration like 500ms, 90s, 2m or 1h30m, or 0 to run until Ctrl-C/SIGTERM",
        ),
        (
            &["-p", "-1"],
            "error: invalid value '-1' for '--port <PORT>': \
             a port is a number from 0 to 65535 (0 takes a free port)",
        ),
        (
            &["-p", "70000"],
            "error: invalid value '70000' for '--port <PORT>': \
             a port is a number from 0 to 65535 (0 takes a free port)",
        ),
        (
            &["--raw", "--format", "json"],
            "error: the argument '--raw' cannot be used with '--format json'",
        ),
    ];
    for (args, first_line) in cases {
        let output = run_to_end(args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: stderr:\n{stderr}");
        assert_eq!(stderr.lines().next(), Some(first_line), "{args:?}");
        assert!(
            stderr.contains("For more information, try '--help'."),
            "{args:?}: {stderr}"
        );
        assert_no_panic("stderr", &stderr);
        assert!(output.stdout.is_empty(), "{args:?} wrote to stdout");
    }
}

#[test]
fn quiet_keeps_only_the_listening_line() {
    // `start` waits for the listening line: with -q it must still come.
    let mut server = Spawned::start(&["-q"]);
    let mut client = connect(server.addr());
    send(&mut client, b"hello\n");
    server.wait_stdout("[1] hello", TIMEOUT);
    drop(client);
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    let lines: Vec<&str> = finished.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "-q logs more than one line\n{finished}");
    assert!(
        lines[0].contains(" INFO  listening on 127.0.0.1:"),
        "{finished}"
    );
    assert_eq!(finished.stdout, "[1] hello\n", "{finished}");
}

#[test]
fn quieter_and_rust_log_hide_the_listening_line() {
    let run = ["--host", "127.0.0.1", "--port", "0", "--duration", "50ms"];
    let cases: [(&str, &[(&str, &str)]); 3] =
        [("-qq", &[]), ("-qqq", &[]), ("-q", &[("RUST_LOG", "warn")])];
    for (flag, vars) in cases {
        let args: Vec<&str> = run.iter().copied().chain([flag]).collect();
        let output = run_with(&args, vars);
        let stderr = text(&output.stderr);
        assert!(output.status.success(), "{args:?} {vars:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?} {vars:?} logged");
    }
}

#[test]
fn raw_with_text_format_runs() {
    let mut server = Spawned::start(&["--raw", "--format", "text"]);
    let mut client = connect(server.addr());
    send(&mut client, b"bell\x07\n");
    server.wait_stdout("[1] bell", TIMEOUT);
    drop(client);
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    assert_eq!(finished.stdout, "[1] bell\x07\n", "{finished}");
}

/// The lines of the bash script's `case` branch for `label` (`--host)`), up to its `;;`.
fn bash_branch<'a>(script: &'a str, label: &str) -> Vec<&'a str> {
    let branch: Vec<&str> = script
        .lines()
        .skip_while(|line| line.trim() != label)
        .take_while(|line| line.trim() != ";;")
        .collect();
    assert!(!branch.is_empty(), "no branch {label} in\n{script}");
    branch
}

#[test]
fn bash_completes_host_names_and_files_and_nothing_else() {
    let script = stdout_of(&["--completions", "bash"], &[]);
    let host = bash_branch(&script, "--host)").join("\n");
    assert!(host.contains("compgen -A hostname"), "--host:\n{host}");
    assert!(!host.contains("compgen -f"), "--host:\n{host}");
    for label in ["-o)", "--output)"] {
        let output = bash_branch(&script, label).join("\n");
        assert!(output.contains("compgen -f"), "{label}\n{output}");
        assert!(output.contains("compopt -o filenames"), "{label}\n{output}");
    }
    for label in [
        "-p)",
        "--port)",
        "-d)",
        "--duration)",
        "--poll-interval)",
        "--idle-timeout)",
        "--progress)",
        "--backlog)",
        "--max-conns)",
        "--max-line)",
        "--allow)",
        "--deny)",
    ] {
        let branch = bash_branch(&script, label).join("\n");
        assert!(!branch.contains("compgen"), "{label} completes:\n{branch}");
    }
    completes_in_bash(&script);
}

/// Sources `script` in a real bash, if there is one, and asks it to complete `--host` (from a
/// hosts file of the test's own), `-o` (in a directory of the test's own) and `--port`.
fn completes_in_bash(script: &str) {
    let dir = TempDir::new("bash");
    std::fs::write(dir.path().join("hosts"), "127.0.0.1 overhear-test-host\n").expect("hosts");
    std::fs::write(dir.path().join("capture.log"), "").expect("a file");
    let mut input = String::from(script);
    input.push_str(
        r#"
HOSTFILE=./hosts
complete_words() {
    COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=()
    _overhear overhear "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}" 2>/dev/null
    echo "$1 $2 ${COMP_WORDS[COMP_CWORD]}: ${COMPREPLY[*]}"
}
complete_words overhear --host overhear-t
complete_words overhear -o capt
complete_words overhear --port 80
"#,
    );
    let mut bash = Command::new("bash");
    bash.args(["--norc", "--noprofile", "-s"])
        .current_dir(dir.path());
    let output = match try_finish(bash, Some(input.as_bytes())) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            eprintln!("skipped the bash run: bash is missing");
            return;
        }
        Err(err) => panic!("cannot run bash: {err}"),
        Ok(output) => output,
    };
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "bash: {}\n{stderr}", output.status);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "overhear --host overhear-t: overhear-test-host",
            "overhear -o capt: capture.log",
            "overhear --port 80: 80",
        ],
        "bash completions; stderr:\n{stderr}"
    );
}

#[test]
fn zsh_completes_host_names_and_files_and_nothing_else() {
    let script = stdout_of(&["--completions", "zsh"], &[]);
    // A spec line: '--flag=[help]:VALUE:action', after the flags it conflicts with, if any:
    // '(-U --unix --listen)--host=[…'.
    let spec = |flag: &str| {
        script
            .lines()
            .find(|line| {
                let line = line.strip_prefix('\'').unwrap_or(line);
                let line = match line.strip_prefix('(') {
                    Some(rest) => rest.split_once(')').map_or(rest, |(_, after)| after),
                    None => line,
                };
                line.starts_with(&format!("{flag}=["))
            })
            .unwrap_or_else(|| panic!("no {flag} in\n{script}"))
    };
    assert!(
        spec("--host").ends_with(":HOST:_hosts' \\"),
        "{}",
        spec("--host")
    );
    assert!(
        spec("--output").ends_with(":FILE:_files' \\"),
        "{}",
        spec("--output")
    );
    assert!(spec("--port").ends_with(":PORT:' \\"), "{}", spec("--port"));
    assert!(
        spec("--duration").ends_with(":DURATION:' \\"),
        "{}",
        spec("--duration")
    );
    assert!(
        !script.contains("_default"),
        "a value completes files by default:\n{script}"
    );
}

/// The manual page's section `heading` (a `.SH` line), up to the next one.
fn man_section<'a>(page: &'a str, heading: &str) -> Vec<&'a str> {
    let section: Vec<&str> = page
        .lines()
        .skip_while(|line| *line != heading)
        .skip(1)
        .take_while(|line| !line.starts_with(".SH "))
        .collect();
    assert!(!section.is_empty(), "no {heading} in\n{page}");
    section
}

#[test]
fn manual_has_synopsis_output_format_exit_status_environment_and_examples() {
    let page = stdout_of(&["--man"], &[]);
    let synopsis = man_section(&page, ".SH SYNOPSIS").join("\n");
    for value in [
        "HOST", "PORT", "DURATION", "BYTES", "CIDR", "FILE", "N", "SHELL",
    ] {
        assert!(
            synopsis.contains(&format!(r"\fI{value}\fR")),
            "SYNOPSIS lacks {value}:\n{synopsis}"
        );
    }
    assert!(
        synopsis.contains(r"\fB\-\-poll\-interval\fR\ \fIDURATION\fR"),
        "{synopsis}"
    );
    let output = man_section(&page, r#".SH "OUTPUT FORMAT""#).join("\n");
    assert!(output.contains("[N+]"), "{output}");
    let statuses = man_section(&page, r#".SH "EXIT STATUS""#).join("\n");
    for status in ["0", "1", "2", "130"] {
        assert!(
            statuses.contains(&format!(".TP\n\\fB{status}\\fR\n")),
            "EXIT STATUS lacks {status}:\n{statuses}"
        );
    }
    let environment = man_section(&page, ".SH ENVIRONMENT").join("\n");
    for name in ["RUST_LOG", "NO_COLOR"] {
        assert!(environment.contains(name), "ENVIRONMENT lacks {name}");
    }
    let examples = man_section(&page, ".SH EXAMPLES").join("\n");
    assert!(
        examples.contains(r"mkdir \-p ~/.local/share/bash\-completion/completions"),
        "{examples}"
    );
    assert!(!page.contains(".SH EXTRA"), "{page}");
}

#[test]
fn man_renders_the_manual_without_warnings() {
    let page = stdout_of(&["--man"], &[]);
    let mut man = Command::new("man");
    man.args(["--warnings=all", "-l", "-"])
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("LC_ALL", "C.UTF-8");
    let output = match try_finish(man, Some(page.as_bytes())) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            eprintln!("skipped: man is not installed");
            return;
        }
        Err(err) => panic!("cannot run man: {err}"),
        Ok(output) => output,
    };
    let rendered = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "man: {}\n{stderr}", output.status);
    assert_eq!(stderr, "", "man warns; the page:\n{rendered}");
    for heading in [
        "SYNOPSIS",
        "OUTPUT FORMAT",
        "EXIT STATUS",
        "ENVIRONMENT",
        "EXAMPLES",
    ] {
        assert!(
            rendered.lines().any(|line| line == heading),
            "no {heading} in\n{rendered}"
        );
    }
    assert!(
        rendered.contains("[--poll-interval DURATION]"),
        "{rendered}"
    );
    for line in rendered.lines() {
        assert!(line.chars().count() <= 80, "over 80 columns: {line:?}");
    }
}

/// A directory of the test's own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("overhear-first-hour-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Characters that reorder or hide text (bidirectional controls, zero-width characters, line
/// and paragraph separators) reach stdout as escapes of their UTF-8 bytes, which unescape to
/// exactly what was sent; in JSON they are `\u` escapes.
#[test]
fn text_hiding_characters_are_escaped_and_round_trip() {
    const HIDING: [char; 19] = [
        '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}',
        '\u{2068}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{061c}', '\u{200b}', '\u{200c}',
        '\u{200d}', '\u{2060}', '\u{feff}', '\u{2028}', '\u{2029}',
    ];
    let mut server = Spawned::start(&[]);
    let mut client = connect(server.addr());
    for c in HIDING {
        send(&mut client, format!("a{c}b\n").as_bytes());
    }
    server.wait_stdout_lines(HIDING.len(), TIMEOUT);
    let finished = server.stop(Signal::TERM);
    finished.assert_success();
    for (line, c) in finished.stdout.lines().zip(HIDING) {
        let shown = line.strip_prefix("[1] ").expect("a message line");
        assert!(!shown.contains(c), "{c:?} reached stdout: {line:?}");
        let escapes: String = c
            .to_string()
            .bytes()
            .map(|b| format!("\\x{b:02x}"))
            .collect();
        assert_eq!(shown, format!("a{escapes}b"), "{c:?}");
        let unescaped = overhear::output::unescape(shown.as_bytes()).expect("escaper output");
        assert_eq!(unescaped, format!("a{c}b").into_bytes());
    }

    let mut server = Spawned::start(&["--format", "json"]);
    let mut client = connect(server.addr());
    send(&mut client, "x\u{202e}y\n".as_bytes());
    let line = server.wait_stdout("\"event\":\"message\"", TIMEOUT);
    assert!(line.contains(r#""data":"x\u202ey""#), "{line}");
    let event: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(event["data"], "x\u{202e}y");
    server.stop(Signal::TERM).assert_success();
}

/// `overhear --man | head -0`: a reader gone before the manual is written ends the run quietly,
/// with status 0, as for any filter.
#[test]
fn a_reader_gone_before_the_manual_is_no_error() {
    let (read, write) = rustix::pipe::pipe().expect("pipe");
    drop(read);
    let child = Command::new(crate::common::bin())
        .arg("--man")
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .spawn()
        .expect("run overhear");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}
