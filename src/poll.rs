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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_saturated_timeouts_work() {
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        let mut fds = [Fd::new(&read, Flags::IN)];
        // Nothing is ready: a zero wait returns at once with nothing.
        assert_eq!(wait(&mut fds, Duration::ZERO).expect("poll"), 0);
        // A timeout of centuries is accepted (not EINVAL) and returns when the pipe is ready.
        rustix::io::write(&write, b"x").expect("write");
        assert_eq!(wait(&mut fds, Duration::MAX).expect("poll"), 1);
    }
}
