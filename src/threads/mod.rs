//! Worker threads: [`Stacks`] starts named threads of a fixed stack size and [`Thread`] is a
//! started thread's handle, to check and join. The same small interface on every system: on
//! Linux the threads run on recycled stacks (`recycled.rs`, measured 3–4× faster to end than
//! `std::thread` at a stop of thousands of clients); elsewhere they are `std::thread`s with the
//! same name and stack size (`portable.rs`).

use std::any::Any;

/// What a thread's body returned, or the payload of its panic.
pub type Outcome<T> = Result<T, Box<dyn Any + Send + 'static>>;

/// Tests each implementation runs, written once: `use super::*` brings in its `Stacks`.
#[cfg(test)]
macro_rules! shared_tests {
    () => {
        #[test]
        fn is_finished_tells_when_the_body_has_returned() {
            let mut stacks = Stacks::new(128 * 1024);
            let (go, wait) = std::sync::mpsc::channel::<()>();
            let thread = stacks
                .spawn("waiter", move || wait.recv().is_ok())
                .expect("spawn");
            assert!(!thread.is_finished());
            go.send(()).expect("the thread waits");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !thread.is_finished() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the thread never finished"
                );
                std::thread::yield_now();
            }
            assert!(thread.join(&mut stacks).expect("no panic"));
        }
    };
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod recycled;
#[cfg(target_os = "linux")]
pub use recycled::{Stacks, Thread};

// Built on Linux too for its tests, so CI runs them.
#[cfg(any(not(target_os = "linux"), test))]
mod portable;
#[cfg(not(target_os = "linux"))]
pub use portable::{Stacks, Thread};
