//! The `overhear` binary: parses the command line, sets up logging on stderr, runs the server
//! with stdout (or `--output FILE`) as its output, prints the summary table, and turns the
//! outcome into an exit status.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use overhear::cli::{Args, Extra};
use overhear::output::{LogRoute, Sink};
use overhear::{Error, Server};

fn main() -> ExitCode {
    // clap prints its own message and exits with status 2 on bad arguments.
    let args = Args::parse();
    if let Some(extra) = args.extra() {
        return print_extra(extra);
    }
    overhear::ignore_file_size_signal();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Nothing more can be said if stderr is gone, so a failed write is ignored (where
            // eprintln! would panic).
            let _ = writeln!(std::io::stderr(), "error: {err}");
            ExitCode::from(err.exit_status())
        }
    }
}

fn run(args: Args) -> Result<(), Error> {
    let sink = match args.output_path() {
        Some(path) => open_append(path)?,
        None => stdout()?,
    };
    // With stderr and the output one pipe or terminal (`2>&1`), log records go through the
    // output's writer, so no log line lands inside a data line.
    let route = same_file(&sink, &std::io::stderr()).then(LogRoute::default);
    init_logging(args.log_level(), route.clone());
    if let Some(limit) = overhear::raise_fd_limit() {
        log::debug!("open-file limit: {limit}");
    }
    let mut server = Server::bind(args.into_config())?;
    if let Some(route) = route {
        server.route_logs(route);
    }
    server.shutdown().install_signal_handler()?;
    server.exit_after_run();
    let summary = server.run(Sink::File(sink))?;
    if log::log_enabled!(log::Level::Info) && summary.clients > 0 {
        let _ = write!(std::io::stderr(), "{}", summary.table());
    }
    Ok(())
}

/// Standard output as a plain file: each burst of lines goes out in one `write(2)`, without
/// std's line buffering in front of it.
///
/// # Errors
/// [`Error::StdoutClosed`] when overhear was started with standard output closed: the standard
/// library then puts `/dev/null` there, and every message would be lost without a word.
fn stdout() -> Result<std::fs::File, Error> {
    use std::os::fd::AsFd;
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| Error::Setup {
            what: "use standard output",
            source,
        })?;
    let file = std::fs::File::from(fd);
    if was_closed(&file) {
        return Err(Error::StdoutClosed);
    }
    Ok(file)
}

/// Whether `file` is the `/dev/null` the standard library opens (read-write) in place of a
/// standard descriptor that was closed at start; a shell's `>/dev/null` opens it write-only.
fn was_closed(file: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    let null = std::fs::metadata("/dev/null").map(|m| m.rdev());
    let read_write = rustix::fs::fcntl_getfl(file)
        .is_ok_and(|flags| flags & rustix::fs::OFlags::RWMODE == rustix::fs::OFlags::RDWR);
    read_write
        && file
            .metadata()
            .is_ok_and(|m| null.is_ok_and(|null| m.rdev() == null))
}

/// Whether `a` and `b` are the same open file (device and inode), as after `2>&1`.
fn same_file(a: &impl std::os::fd::AsFd, b: &impl std::os::fd::AsFd) -> bool {
    match (rustix::fs::fstat(a), rustix::fs::fstat(b)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

fn open_append(path: &std::path::Path) -> Result<std::fs::File, Error> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|source| Error::OutputOpen {
            path: path.to_path_buf(),
            source,
        })
}

/// Prints a completion script or the manual page, generated from the command-line definition.
/// Both are rendered in memory first: clap_complete panics on a failed write.
fn print_extra(extra: Extra) -> ExitCode {
    let text = match extra {
        Extra::Completions(shell) => overhear::cli::completion_script(shell),
        Extra::Man => overhear::cli::manual_page(),
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(&text).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot write: {}",
                overhear::error::describe(&err)
            );
            ExitCode::from(overhear::error::EXIT_FAILURE)
        }
    }
}

/// Logs to stderr at `level`, unless `RUST_LOG` says otherwise: `time LEVEL message`; through
/// `route` when stderr is also the output. At `-q` (warnings) the `listening on` line still
/// shows: with `--port 0` it is the only way to learn the port.
fn init_logging(level: log::LevelFilter, route: Option<LogRoute>) {
    use std::io::IsTerminal;
    let mut builder = env_logger::Builder::new();
    if let Some(route) = route {
        // env_logger colors only what it writes to a terminal itself; the route is a terminal
        // when stderr is one.
        let color = std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        builder
            .target(env_logger::Target::Pipe(Box::new(route)))
            .write_style(if color {
                env_logger::WriteStyle::Always
            } else {
                env_logger::WriteStyle::Never
            });
    }
    builder.format(|buf, record| {
        let style = buf.default_level_style(record.level());
        writeln!(
            buf,
            "{} {style}{:<5}{style:#} {}",
            buf.timestamp_millis(),
            record.level(),
            record.args()
        )
    });
    let quiet = level == log::LevelFilter::Warn && std::env::var_os("RUST_LOG").is_none();
    if !quiet {
        builder.filter_level(level).parse_default_env().init();
        return;
    }
    // env_logger lets info through; `Quiet` passes on warnings, errors and the listening line.
    let logger = builder.filter_level(log::LevelFilter::Info).build();
    log::set_max_level(logger.filter());
    // Only fails if a logger is already set, and none is: this runs once, before any thread.
    let _ = log::set_logger(Box::leak(Box::new(Quiet(logger))));
}

/// The logger of `-q`: env_logger's, set to info, passing on warnings, errors and the
/// `listening on` line (logged at info by the server).
struct Quiet(env_logger::Logger);

impl Quiet {
    const LISTENING: &str = "listening on ";
}

impl log::Log for Quiet {
    /// Info is not enabled (so `log_enabled!(Info)` stays false and the summary table stays
    /// out); the listening record reaches `log` anyway, since `info!` asks only the max level.
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn && self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        let listening = record.level() == log::Level::Info
            && record.target().starts_with("overhear")
            && starts_with(record.args(), Quiet::LISTENING);
        if record.level() <= log::Level::Warn || listening {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Whether `args` formats to text that starts with `prefix`; formatting stops as soon as that
/// is known, so a long record costs no more than a short one.
fn starts_with(args: &std::fmt::Arguments<'_>, prefix: &str) -> bool {
    /// The part of the prefix not yet matched.
    struct Rest<'a>(&'a [u8]);
    impl std::fmt::Write for Rest<'_> {
        fn write_str(&mut self, text: &str) -> std::fmt::Result {
            let n = text.len().min(self.0.len());
            if text.as_bytes()[..n] != self.0[..n] {
                return Err(std::fmt::Error);
            }
            self.0 = &self.0[n..];
            // An error ends the formatting: matched, nothing more to read.
            if self.0.is_empty() {
                Err(std::fmt::Error)
            } else {
                Ok(())
            }
        }
    }
    let mut rest = Rest(prefix.as_bytes());
    let _ = std::fmt::write(&mut rest, *args);
    rest.0.is_empty()
}

#[cfg(test)]
mod tests {
    use super::starts_with;

    #[test]
    fn prefix_is_found_across_formatting_pieces() {
        // Not literals, so each is a piece of its own when formatted.
        let (addr, list, ening) = ("127.0.0.1:7878", "list", "ening");
        assert!(starts_with(
            &format_args!("listening on {addr}; connect"),
            "listening on "
        ));
        assert!(starts_with(
            &format_args!("{list}{ening} on x"),
            "listening on "
        ));
        assert!(!starts_with(
            &format_args!("client {} connected", 1),
            "listening on "
        ));
        assert!(!starts_with(&format_args!("listening"), "listening on "));
        assert!(starts_with(&format_args!("anything"), ""));
    }
}
