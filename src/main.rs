//! The `overhear` binary: parses the command line, sets up logging on stderr, runs the server
//! with stdout (or `--output FILE`) as its output, prints the summary table, and turns the
//! outcome into an exit status.

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use overhear::cli::{Args, Extra};
use overhear::output::Sink;
use overhear::{Error, Server};

fn main() -> ExitCode {
    // clap prints its own message and exits with status 2 on bad arguments.
    let args = Args::parse();
    if let Some(extra) = args.extra() {
        return print_extra(extra);
    }
    init_logging(args.log_level());
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
    if let Some(limit) = overhear::server::raise_fd_limit() {
        log::debug!("open-file limit: {limit}");
    }
    let sink = match args.output_path() {
        Some(path) => open_append(path)?,
        None => stdout()?,
    };
    let server = Server::bind(args.into_config())?;
    server.shutdown().install_signal_handler()?;
    let summary = server.run(Sink::File(sink))?;
    if log::log_enabled!(log::Level::Info) && summary.clients > 0 {
        let _ = write!(std::io::stderr(), "{}", summary.table());
    }
    Ok(())
}

/// Standard output as a plain file: each burst of lines goes out in one `write(2)`, without
/// std's line buffering in front of it.
fn stdout() -> Result<std::fs::File, Error> {
    use std::os::fd::AsFd;
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| Error::Setup {
            what: "use standard output",
            source,
        })?;
    Ok(std::fs::File::from(fd))
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
fn print_extra(extra: Extra) -> ExitCode {
    let mut command = Args::command();
    let mut out = std::io::stdout().lock();
    let written = match extra {
        Extra::Completions(shell) => {
            clap_complete::generate(shell, &mut command, "overhear", &mut out);
            Ok(())
        }
        Extra::Man => clap_mangen::Man::new(command).render(&mut out),
    };
    match written.and_then(|()| out.flush()) {
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

/// Logs to stderr at `level`, unless `RUST_LOG` says otherwise: `time LEVEL message`.
fn init_logging(level: log::LevelFilter) {
    env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .format(|buf, record| {
            let style = buf.default_level_style(record.level());
            writeln!(
                buf,
                "{} {style}{:<5}{style:#} {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            )
        })
        .init();
}
