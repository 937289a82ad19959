//! Everywhere but Linux: worker threads are `std::thread`s, named and sized as on Linux, behind
//! the same interface as the recycled stacks (`Stacks` keeps no stacks here: std maps and
//! unmaps each thread's own).

use std::io;
use std::thread::{Builder, JoinHandle};

use super::Outcome;

/// Starts threads with `size` bytes of stack; keeps no spare stacks.
#[derive(Debug)]
pub struct Stacks {
    size: usize,
}

impl Stacks {
    /// Threads started from here get `size` bytes of stack.
    pub fn new(size: usize) -> Stacks {
        Stacks { size }
    }

    /// How many stacks wait for a thread: none, std keeps its own.
    pub fn spare(&self) -> usize {
        0
    }

    /// Nothing to make room for: no stack comes back.
    pub fn reserve(&mut self, _more: usize) {}

    /// Nothing to trim: std unmaps each thread's stack when it ends.
    pub fn trim(&mut self, _keep: usize) {}

    /// Starts `body` on a new thread named `name`.
    ///
    /// # Errors
    /// When the system refuses another thread (the thread limit or memory).
    pub fn spawn<F, T>(&mut self, name: &str, body: F) -> io::Result<Thread<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let handle = Builder::new()
            .name(name.to_owned())
            .stack_size(self.size)
            .spawn(body)?;
        Ok(Thread { handle })
    }
}

/// A running (or ended, not yet joined) thread started by [`Stacks::spawn`].
#[derive(Debug)]
pub struct Thread<T> {
    handle: JoinHandle<T>,
}

impl<T> Thread<T> {
    /// Whether the body has returned (or panicked).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the thread to end and returns what the body returned, or `Err` with the
    /// panic's payload.
    pub fn join(self, _stacks: &mut Stacks) -> Outcome<T> {
        self.handle.join()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    shared_tests!();

    #[test]
    fn a_thread_returns_its_result_and_a_panic_comes_back_as_err() {
        let mut stacks = Stacks::new(128 * 1024);
        let thread = stacks.spawn("adder", || 40 + 2).expect("spawn");
        assert_eq!(thread.join(&mut stacks).expect("no panic"), 42);
        let thread = stacks
            .spawn("panicker", || -> u8 {
                std::panic::resume_unwind(Box::new("on purpose"))
            })
            .expect("spawn");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !thread.is_finished() {
            assert!(std::time::Instant::now() < deadline, "never finished");
            std::thread::yield_now();
        }
        stacks.reserve(1);
        assert!(thread.join(&mut stacks).is_err());
        stacks.trim(0);
        assert_eq!(stacks.spare(), 0);
    }

    #[test]
    fn threads_carry_their_name() {
        let mut stacks = Stacks::new(128 * 1024);
        let thread = stacks
            .spawn("client-7", || {
                std::thread::current().name().map(str::to_owned)
            })
            .expect("spawn");
        assert_eq!(
            thread.join(&mut stacks).expect("no panic").as_deref(),
            Some("client-7")
        );
    }
}
