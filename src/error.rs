//! The errors that end a run, their one-line descriptions and the exit-status table; anything
//! a single client causes is a log line in its worker, never one of these.

use std::fmt;
use std::io;

use crate::listen::Spec;

/// Exit status of a run that ended as asked: by its timer, a signal, or stdout closing.
pub const EXIT_OK: u8 = 0;
/// Exit status of a run that failed: the address could not be bound, or output failed.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status of a usage error (bad flag or value); clap uses it for its own messages.
pub const EXIT_USAGE: u8 = 2;
/// Exit status when a second SIGINT/SIGTERM arrives while shutting down.
pub const EXIT_INTERRUPTED: u8 = 130;

/// What ended a run badly. `main` prints it as `error: {self}` and exits with [`Error::exit_status`].
#[derive(Debug)]
pub enum Error {
    /// A listening socket could not be created, bound or put into listening state.
    Bind { listener: Spec, source: io::Error },
    /// Writing client messages to the output failed (other than the reader leaving).
    Output(io::Error),
    /// The `--output` file could not be opened.
    OutputOpen {
        path: std::path::PathBuf,
        source: io::Error,
    },
    /// The process could not set up what it needs to run (the stop pipe, a thread).
    Setup {
        what: &'static str,
        source: io::Error,
    },
    /// The SIGINT/SIGTERM handler could not be installed.
    Signal(ctrlc::Error),
    /// Standard output was closed at start and no `--output` file was given.
    StdoutClosed,
    /// TLS could not be set up: a certificate or key file missing, unreadable, not PEM, or not
    /// matching. The message names the file.
    Tls(String),
}

impl Error {
    /// The process exit status for this error, from the table documented in README.md.
    pub fn exit_status(&self) -> u8 {
        match self {
            Error::Bind { .. }
            | Error::Output(_)
            | Error::OutputOpen { .. }
            | Error::Setup { .. }
            | Error::Signal(_)
            | Error::StdoutClosed
            | Error::Tls(_) => EXIT_FAILURE,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bind { listener, source } => {
                write!(
                    f,
                    "cannot listen on {}: {}",
                    listener.address(),
                    describe(source)
                )
            }
            Error::Output(source) => write!(f, "cannot write output: {}", describe(source)),
            Error::OutputOpen { path, source } => {
                write!(f, "cannot open {}: {}", path.display(), describe(source))
            }
            Error::Setup { what, source } => write!(f, "cannot {what}: {}", describe(source)),
            Error::Signal(source) => write!(f, "cannot install the signal handler: {source}"),
            Error::StdoutClosed => f.write_str(
                "standard output is closed: give --output FILE to write the messages to a file",
            ),
            Error::Tls(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. }
            | Error::Output(source)
            | Error::OutputOpen { source, .. }
            | Error::Setup { source, .. } => Some(source),
            Error::Signal(source) => Some(source),
            Error::StdoutClosed | Error::Tls(_) => None,
        }
    }
}

/// Describes an I/O error in words, without the `(os error N)` suffix std adds. A few kinds get
/// words of their own, the same whatever made the error (the system says "Address already in
/// use", std "address in use" for the kind alone); the rest are the system's words, lowercased.
pub fn describe(err: &io::Error) -> String {
    use io::ErrorKind::*;
    let words = match err.kind() {
        AddrInUse => "address already in use",
        AddrNotAvailable => "address not available on this machine",
        NotFound => "no such file or directory",
        BrokenPipe => "the reader went away",
        ConnectionReset => "connection reset by peer",
        StorageFull => "no space left on device",
        _ => {
            let text = err.to_string();
            let text = text.split(" (os error").next().unwrap_or_default();
            let mut chars = text.chars();
            return match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => String::from("unknown error"),
            };
        }
    };
    String::from(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_error_is_one_plain_line() {
        let err = Error::Bind {
            listener: Spec::Tcp("127.0.0.1:7878".parse().expect("literal address")),
            source: io::Error::from_raw_os_error(98),
        };
        assert_eq!(
            err.to_string(),
            "cannot listen on 127.0.0.1:7878: address already in use"
        );
        assert_eq!(err.exit_status(), EXIT_FAILURE);
    }

    /// A library user walking the error chain finds the system's error under each one that
    /// has one.
    #[test]
    fn the_underlying_error_is_the_source() {
        use std::error::Error as _;
        let err = Error::Setup {
            what: "create the stop pipe",
            source: io::Error::from_raw_os_error(24),
        };
        let source = err.source().expect("a source");
        assert_eq!(
            source.to_string(),
            io::Error::from_raw_os_error(24).to_string()
        );
        assert!(Error::StdoutClosed.source().is_none());
    }

    /// The words are the same whether the system or a library made the error (a library's
    /// error of a kind alone would read "entity not found", "address in use").
    #[test]
    fn known_kinds_have_the_same_words_from_any_source() {
        use io::ErrorKind::*;
        for (kind, os, words) in [
            (AddrInUse, 98, "address already in use"),
            (
                AddrNotAvailable,
                99,
                "address not available on this machine",
            ),
            (PermissionDenied, 13, "permission denied"),
            (NotFound, 2, "no such file or directory"),
            (BrokenPipe, 32, "the reader went away"),
            (ConnectionReset, 104, "connection reset by peer"),
            (StorageFull, 28, "no space left on device"),
        ] {
            assert_eq!(describe(&io::Error::from(kind)), words, "{kind:?}");
            if cfg!(target_os = "linux") {
                assert_eq!(describe(&io::Error::from_raw_os_error(os)), words, "{os}");
            }
        }
    }

    #[test]
    fn unknown_os_errors_lose_their_number_and_capital() {
        let text = describe(&io::Error::from_raw_os_error(24));
        assert_eq!(text, "too many open files");
    }

    #[test]
    fn statuses_are_distinct() {
        let all = [EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED];
        for (i, a) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|b| a != b));
        }
    }
}
