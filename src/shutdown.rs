//! `Shutdown` is the stop request shared by the signal handler, the listener, the workers and the
//! output writer: one flag saying why the run stops, and one pipe whose read end every blocking
//! thread polls beside its socket, so a single write wakes them all at once.
//!
//! The pipe is written once and never read: it stays readable, so every `poll` that includes it
//! returns at once from then on, however many threads wait and whenever they start waiting.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::error::{EXIT_INTERRUPTED, Error};

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StopReason {
    /// The `--duration` timer ran out.
    Timer = 1,
    /// SIGINT or SIGTERM arrived.
    Signal = 2,
    /// The reader of the output went away (EPIPE); a normal end, as for `overhear | head`.
    OutputClosed = 3,
    /// Writing the output failed.
    OutputFailed = 4,
    /// The embedding program asked (through [`Shutdown::request`]).
    Requested = 5,
}

impl StopReason {
    fn from_code(code: u8) -> Option<StopReason> {
        use StopReason::*;
        [Timer, Signal, OutputClosed, OutputFailed, Requested]
            .into_iter()
            .find(|r| *r as u8 == code)
    }
}

/// A cloneable handle on the run's stop request.
#[derive(Clone, Debug)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// 0 while running, else the `StopReason as u8` of the first request. Set by whoever stops the
    /// run first; read by the listener loop. It publishes nothing else, so `Relaxed` would do;
    /// `AcqRel` keeps the first-writer-wins swap easy to reason about.
    reason: AtomicU8,
    /// When the stop was first requested; workers bound their drain from it.
    at: OnceLock<Instant>,
    /// How many SIGINT/SIGTERM arrived; the second one exits at once.
    signals: AtomicUsize,
    /// Polled by every thread that blocks; becomes readable when `wake` is written.
    wake_read: OwnedFd,
    wake_write: OwnedFd,
}

impl Shutdown {
    /// Creates the stop request and its wake pipe.
    ///
    /// # Errors
    /// When the process cannot create a pipe (out of file descriptors).
    pub fn new() -> Result<Shutdown, Error> {
        let (wake_read, wake_write) =
            crate::platform::nonblocking_pipe().map_err(|source| Error::Setup {
                what: "create the stop pipe",
                source,
            })?;
        Ok(Shutdown {
            inner: Arc::new(Inner {
                reason: AtomicU8::new(0),
                at: OnceLock::new(),
                signals: AtomicUsize::new(0),
                wake_read,
                wake_write,
            }),
        })
    }

    /// Asks the run to stop and wakes every thread polling the stop pipe. Only the first request
    /// counts; later ones are ignored. Safe to call from any thread.
    pub fn request(&self, reason: StopReason) {
        if self
            .inner
            .reason
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let _ = self.inner.at.set(Instant::now());
            // The pipe is non-blocking and empty, so this one byte always fits; if the write
            // failed anyway, pollers still see the flag at their next poll interval. Nothing is
            // logged here: a request may come from a signal handler's thread or from inside a
            // write of the output, neither of which may wait on stderr.
            let _ = rustix::io::write(&self.inner.wake_write, &[1]);
        }
    }

    /// Why the run is stopping, or `None` while it runs.
    pub fn reason(&self) -> Option<StopReason> {
        StopReason::from_code(self.inner.reason.load(Ordering::Acquire))
    }

    /// When the stop was requested, or `None` while the run goes on.
    pub fn requested_at(&self) -> Option<Instant> {
        self.inner.at.get().copied()
    }

    /// Whether a stop was requested.
    pub fn is_requested(&self) -> bool {
        self.reason().is_some()
    }

    /// The read end of the stop pipe, to poll beside a socket: readable once a stop is requested.
    pub fn waker(&self) -> &OwnedFd {
        &self.inner.wake_read
    }

    /// Installs the SIGINT/SIGTERM handler: the first signal requests a graceful stop, a second
    /// one exits the process at once with status 130.
    ///
    /// # Errors
    /// When a handler is already installed in this process or the OS refuses it.
    pub fn install_signal_handler(&self) -> Result<(), Error> {
        let shutdown = self.clone();
        ctrlc::set_handler(move || shutdown.on_signal()).map_err(Error::Signal)
    }

    /// Never waits on stderr: with `overhear 2>&1 | less` and the pager paused, a blocked log
    /// line here would keep both signals from ever being acted on. The first signal only
    /// requests the stop (the listener says so); the second says so only if stderr takes the
    /// line at once, then exits.
    fn on_signal(&self) {
        if self.inner.signals.fetch_add(1, Ordering::Relaxed) == 0 {
            self.request(StopReason::Signal);
        } else {
            say_if_stderr_is_free(b"error: second signal received, exiting at once\n");
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
    }
}

/// Writes `line` to stderr if that takes no more than a moment: from a thread of its own, which
/// is left behind (and ends with the process) if stderr is blocked. Goes around the logger, whose
/// lock a blocked writer may hold.
fn say_if_stderr_is_free(line: &'static [u8]) {
    let (done, written) = std::sync::mpsc::channel();
    let writer = std::thread::Builder::new().spawn(move || {
        let _ = rustix::io::write(std::io::stderr(), line);
        let _ = done.send(());
    });
    if writer.is_ok() {
        let _ = written.recv_timeout(std::time::Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::{PollFd, PollFlags, Timespec, poll};

    fn readable(shutdown: &Shutdown) -> bool {
        let mut fds = [PollFd::new(&shutdown.inner.wake_read, PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        poll(&mut fds, Some(&zero)).expect("poll on a pipe") == 1
    }

    #[test]
    fn first_request_wins_and_wakes() {
        let shutdown = Shutdown::new().expect("pipe");
        assert_eq!(shutdown.reason(), None);
        assert!(!readable(&shutdown));
        shutdown.request(StopReason::Timer);
        shutdown.clone().request(StopReason::Signal);
        assert_eq!(shutdown.reason(), Some(StopReason::Timer));
        assert!(readable(&shutdown));
        // Level-triggered: it stays readable for every later poller.
        assert!(readable(&shutdown));
    }
}
