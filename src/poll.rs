//! Waiting with `poll(2)`: the one place that turns a `Duration` into a poll timeout and retries
//! after a signal interrupts the wait. Used by the listener and every worker to wait on their
//! socket and the stop pipe at once.

use std::io;
use std::time::Duration;

use rustix::event::{PollFd, Timespec};

pub use rustix::event::{PollFd as Fd, PollFlags as Flags};

/// Waits until one of `fds` is ready or `timeout` passes; returns how many are ready (0 on
/// timeout). Interrupted waits are retried with the whole timeout, which only lengthens a wait
/// that a signal cut short.
pub fn wait(fds: &mut [PollFd<'_>], timeout: Duration) -> io::Result<usize> {
    let timeout = Timespec {
        // Saturates: a poll interval of years is a poll without timeout in practice.
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    loop {
        match rustix::event::poll(fds, Some(&timeout)) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// A duration rounded down to whole milliseconds, for log lines (`1s 250ms`, not nanoseconds).
pub fn rounded(duration: Duration) -> humantime::FormattedDuration {
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    humantime::format_duration(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_timeouts_do_not_overflow() {
        let (read, _write) = rustix::pipe::pipe().expect("pipe");
        let mut fds = [Fd::new(&read, Flags::IN)];
        // Nothing is ready, but a zero wait returns at once; a saturated one must be accepted.
        assert_eq!(wait(&mut fds, Duration::ZERO).expect("poll"), 0);
        let spec_secs = i64::try_from(Duration::MAX.as_secs()).unwrap_or(i64::MAX);
        assert_eq!(spec_secs, i64::MAX);
    }

    #[test]
    fn log_durations_are_whole_milliseconds() {
        let d = Duration::new(1, 250_123_456);
        assert_eq!(rounded(d).to_string(), "1s 250ms");
    }
}
