//! The `overhear` binary: parses the command line, sets up logging on stderr, runs the server
//! with stdout as its output, and turns the outcome into an exit status.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use overhear::cli::Args;
use overhear::{Error, Server};

fn main() -> ExitCode {
    // clap prints its own message and exits with status 2 on bad arguments.
    let args = Args::parse();
    init_logging(args.log_level());
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_status())
        }
    }
}

fn run(args: Args) -> Result<(), Error> {
    if let Some(limit) = overhear::server::raise_fd_limit() {
        log::debug!("open-file limit: {limit}");
    }
    let server = Server::bind(args.into_config())?;
    server.shutdown().install_signal_handler()?;
    server.run(Box::new(stdout()?))?;
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
