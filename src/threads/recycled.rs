//! Linux: worker threads on recycled stacks. [`Stacks`] starts threads on stacks it takes back
//! when they are joined, and [`Thread`] is a started thread's handle.
//!
//! Why not `std::thread`: each of its threads maps and unmaps a signal stack, and glibc unmaps or
//! `madvise`s the thread's own stack when it ends (its cache holds 40 MiB, about 300 worker
//! stacks). Those calls take the process's memory-map lock and, where pages were touched, make
//! the kernel interrupt the other cores running the process to flush their TLBs; at a stop
//! thousands of threads end at once: on a 2-core VM, waking and joining
//! 1,000 idle `std` threads took 58–64 ms, and on these stacks 11–15 ms (10,000: 551–607 ms
//! against 123–148 ms; the benchmark suite's floor table).
//! Here a thread's stack is mapped once, reused by later threads, and unmapped only when
//! [`Stacks`] trims its spares or is dropped, after every thread on them was joined.
//!
//! The threads are plain POSIX threads: the standard library works on them as on its own
//! (thread-locals, panics, `thread::current`), except that it does not know their names (a
//! panic message says `thread '<unnamed>'`; `ps` and debuggers show the name). A panic in the
//! body comes back from [`Thread::join`] as `Err`, as with `std`. Each stack has a 64 KiB guard region below it: an
//! overflow ends the process with SIGSEGV instead of corrupting memory, and no message says so
//! (the standard library's overflow message needs a signal stack per thread, the cost this
//! module avoids).

use crate::sync::lock;
use std::ffi::{CString, c_void};
use std::io;
use std::mem::MaybeUninit;
use std::panic::{self, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};

use super::Outcome;

/// The longest thread name Linux keeps, without its terminating NUL.
const NAME_MAX: usize = 15;

/// Stacks of ended threads, ready for the next ones, and the size each new one gets.
#[derive(Debug)]
pub struct Stacks {
    size: usize,
    spare: Vec<Stack>,
}

impl Stacks {
    /// A pool of stacks with `size` usable bytes each (at least `PTHREAD_STACK_MIN`, rounded up
    /// to whole pages).
    pub fn new(size: usize) -> Stacks {
        let page = rustix::param::page_size();
        Stacks {
            size: size.max(libc::PTHREAD_STACK_MIN).div_ceil(page) * page,
            spare: Vec::new(),
        }
    }

    /// How many stacks wait for a thread.
    pub fn spare(&self) -> usize {
        self.spare.len()
    }

    /// Makes room to keep `more` stacks without growing the pool's list one join at a time: at a
    /// stop, joining 10,000 threads while the list grew spent a tenth of the main thread's time
    /// in the allocator (reallocations, each consolidating its free lists).
    pub fn reserve(&mut self, more: usize) {
        self.spare.reserve(more);
    }

    /// Unmaps spare stacks until at most `keep` remain, the least recently used first.
    pub fn trim(&mut self, keep: usize) {
        let extra = self.spare.len().saturating_sub(keep);
        self.spare.drain(..extra);
    }

    /// Starts `body` on a new thread named `name` (Linux keeps its first 15 bytes), on a spare
    /// stack if there is one.
    ///
    /// # Errors
    /// When no stack can be mapped or the system refuses another thread (the thread limit,
    /// `RLIMIT_NPROC`, or memory).
    pub fn spawn<F, T>(&mut self, name: &str, body: F) -> io::Result<Thread<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let stack = match self.spare.pop() {
            Some(stack) => stack,
            None => Stack::map(self.size)?,
        };
        let packet = Arc::new(Packet {
            outcome: Mutex::new(None),
            finished: AtomicBool::new(false),
        });
        let start = Box::into_raw(Box::new(Start {
            name: thread_name(name),
            body,
            packet: Arc::clone(&packet),
        }));
        match create(&stack, run::<F, T>, start.cast()) {
            Ok(id) => Ok(Thread {
                id,
                stack: Some(stack),
                packet,
            }),
            Err(err) => {
                // SAFETY: no thread was created, so `start` is still only ours.
                drop(unsafe { Box::from_raw(start) });
                self.spare.push(stack);
                Err(err)
            }
        }
    }
}

/// A running (or ended, not yet joined) thread started by [`Stacks::spawn`].
///
/// Join it to get its result and give its stack back. A handle dropped without a join detaches
/// the thread and leaves its stack mapped, since the thread may still be running on it.
#[derive(Debug)]
pub struct Thread<T> {
    id: libc::pthread_t,
    /// `None` once joined.
    stack: Option<Stack>,
    packet: Arc<Packet<T>>,
}

/// Where a thread leaves the outcome of its body for [`Thread::join`].
#[derive(Debug)]
struct Packet<T> {
    outcome: Mutex<Option<Outcome<T>>>,
    /// Set once the outcome is in.
    finished: AtomicBool,
}

impl<T> Thread<T> {
    /// Whether the body has returned (or panicked): then `join` waits at most for the thread's
    /// own teardown (its thread-local destructors and exit).
    pub fn is_finished(&self) -> bool {
        self.packet.finished.load(Ordering::Acquire)
    }

    /// Waits for the thread to end, gives its stack back to `stacks`, and returns what the body
    /// returned, or `Err` with the panic's payload.
    pub fn join(mut self, stacks: &mut Stacks) -> Outcome<T> {
        // SAFETY: `id` is a thread this handle alone owns, neither joined nor detached yet: both
        // happen once, here or in `drop`.
        let status = unsafe { libc::pthread_join(self.id, ptr::null_mut()) };
        assert_eq!(status, 0, "joining a thread this handle owns cannot fail");
        // The thread has ended: nothing runs on its stack any more.
        stacks.spare.extend(self.stack.take());
        lock(&self.packet.outcome)
            .take()
            .expect("a thread leaves its outcome before it ends")
    }
}

impl<T> Drop for Thread<T> {
    fn drop(&mut self) {
        if let Some(stack) = self.stack.take() {
            // Not joined: the thread may still run on its stack, which stays mapped for good.
            std::mem::forget(stack);
            // SAFETY: the thread was neither joined (that takes the stack) nor detached.
            unsafe { libc::pthread_detach(self.id) };
        }
    }
}

/// What a new thread starts with: its name, its body, and where to leave the outcome.
struct Start<F, T> {
    name: Option<CString>,
    body: F,
    packet: Arc<Packet<T>>,
}

/// The new thread's entry point: runs the body, catching a panic so it does not unwind into C,
/// and leaves the outcome in the packet for [`Thread::join`].
extern "C" fn run<F, T>(start: *mut c_void) -> *mut c_void
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    // SAFETY: `spawn` leaked this box for this thread alone and gave up its ownership when the
    // thread was created.
    let Start { name, body, packet } = *unsafe { Box::from_raw(start.cast::<Start<F, T>>()) };
    // Named from inside: for itself glibc uses prctl, while naming another thread writes
    // /proc/self/task/TID/comm, whose dentries then slow down every thread's exit.
    if let Some(name) = name {
        // SAFETY: names this very thread, with a string that fits Linux's limit.
        unsafe { libc::pthread_setname_np(libc::pthread_self(), name.as_ptr()) };
    }
    let outcome: Outcome<T> = panic::catch_unwind(AssertUnwindSafe(body));
    *lock(&packet.outcome) = Some(outcome);
    // Release: a handle that sees the flag also sees everything the body did.
    packet.finished.store(true, Ordering::Release);
    ptr::null_mut()
}

/// Creates a joinable thread on `stack` running `entry(arg)`.
fn create(
    stack: &Stack,
    entry: extern "C" fn(*mut c_void) -> *mut c_void,
    arg: *mut c_void,
) -> io::Result<libc::pthread_t> {
    let check = |status: libc::c_int| match status {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    };
    let mut attr = MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: `attr` is initialised by `pthread_attr_init` before any other use and destroyed
    // once; the stack stays mapped for the thread's whole life (see `Thread`).
    unsafe {
        check(libc::pthread_attr_init(attr.as_mut_ptr()))?;
        let mut id = MaybeUninit::<libc::pthread_t>::uninit();
        let created = check(libc::pthread_attr_setstack(
            attr.as_mut_ptr(),
            stack.usable.as_ptr(),
            stack.size,
        ))
        .and_then(|()| {
            check(libc::pthread_create(
                id.as_mut_ptr(),
                attr.as_ptr(),
                entry,
                arg,
            ))
        });
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        created.map(|()| id.assume_init())
    }
}

/// `name` cut to what Linux keeps for `ps`, `top` and debuggers; `None` if it holds a NUL.
fn thread_name(name: &str) -> Option<CString> {
    let mut end = name.len().min(NAME_MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    CString::new(&name[..end]).ok()
}

/// The inaccessible region below each stack: 64 KiB, so that a frame larger than a page (a big
/// local array) cannot step over it into the stack below. Address space only: it is never
/// touched, so it costs no memory.
const GUARD: usize = 64 * 1024;

/// The guard region rounded up to whole pages.
fn guard_size() -> usize {
    let page = rustix::param::page_size();
    GUARD.div_ceil(page) * page
}

/// One mapped stack: a guard region (no access, [`GUARD`]) and `size` usable bytes above it.
#[derive(Debug)]
struct Stack {
    /// The start of the mapping, at the guard region.
    mapping: NonNull<c_void>,
    /// The lowest usable byte, just above the guard region.
    usable: NonNull<c_void>,
    size: usize,
}

// SAFETY: a `Stack` is only an address range; whoever holds it owns the range.
unsafe impl Send for Stack {}

impl Stack {
    fn map(size: usize) -> io::Result<Stack> {
        let guard = guard_size();
        // SAFETY: a fresh anonymous mapping aliases nothing; the guard region is inside it.
        unsafe {
            let mapping = rustix::mm::mmap_anonymous(
                ptr::null_mut(),
                guard + size,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::STACK | MapFlags::NORESERVE,
            )?;
            let stack = Stack {
                mapping: NonNull::new(mapping).expect("mmap never returns null on success"),
                usable: NonNull::new(mapping.byte_add(guard)).expect("above a non-null base"),
                size,
            };
            // On failure `stack` is dropped, unmapping it.
            rustix::mm::mprotect(mapping, guard, MprotectFlags::empty())?;
            Ok(stack)
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let guard = guard_size();
        // SAFETY: the mapping is ours and no thread runs on it: a `Stack` is dropped only from
        // `Stacks` (after a join) or when mapping it failed.
        let _ = unsafe { rustix::mm::munmap(self.mapping.as_ptr(), guard + self.size) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    const SIZE: usize = 128 * 1024;

    #[test]
    fn a_thread_returns_its_result_through_join() {
        let mut stacks = Stacks::new(SIZE);
        let thread = stacks.spawn("adder", || 40 + 2).expect("spawn");
        assert_eq!(thread.join(&mut stacks).expect("no panic"), 42);
        assert_eq!(stacks.spare(), 1, "the stack came back");
    }

    #[test]
    fn stacks_are_reused_by_later_threads() {
        let mut stacks = Stacks::new(SIZE);
        let mut seen = Vec::new();
        for round in 0..5 {
            let thread = stacks
                .spawn("reuser", move || {
                    let local = round;
                    std::hint::black_box(&local) as *const i32 as usize
                })
                .expect("spawn");
            seen.push(thread.join(&mut stacks).expect("no panic"));
            assert_eq!(stacks.spare(), 1);
        }
        // Same stack, same frame: every round's local lived at the same address.
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    }

    #[test]
    fn a_panic_comes_back_as_err_and_keeps_the_stack() {
        let mut stacks = Stacks::new(SIZE);
        let thread = stacks
            // resume_unwind unwinds as a panic does, without the panic hook's message on stderr.
            .spawn("panicker", || -> u8 {
                panic::resume_unwind(Box::new("on purpose"))
            })
            .expect("spawn");
        let payload = thread.join(&mut stacks).expect_err("a panic");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"on purpose"));
        assert_eq!(stacks.spare(), 1);
    }

    shared_tests!();

    #[test]
    fn threads_carry_their_name_and_the_stack_they_were_given() {
        let mut stacks = Stacks::new(SIZE);
        let thread = stacks
            .spawn("client-123456789012", || {
                let comm = std::fs::read_to_string("/proc/thread-self/comm").expect("comm");
                // A local near the top of the stack, and one deep below it, both usable.
                let deep = [7u8; 64 * 1024];
                (comm, std::hint::black_box(&deep)[64 * 1024 - 1])
            })
            .expect("spawn");
        let (comm, deep) = thread.join(&mut stacks).expect("no panic");
        assert_eq!(
            comm.trim_end(),
            "client-12345678",
            "cut to Linux's 15 bytes"
        );
        assert_eq!(deep, 7);
    }

    #[test]
    fn thread_names_are_cut_at_a_character_boundary() {
        // 14 ASCII bytes, then a 2-byte character across Linux's 15-byte limit.
        let name = thread_name("client-1234567é-more").expect("no NUL");
        assert_eq!(name.to_str(), Ok("client-1234567"));
        // A 3-byte character ending exactly at the limit stays.
        let name = thread_name("client-12345€x").expect("no NUL");
        assert_eq!(name.to_str(), Ok("client-12345€"));
        assert_eq!(thread_name("short").expect("no NUL").to_str(), Ok("short"));
        assert!(thread_name("nul\0inside").is_none());
    }

    /// The address ranges `/proc/self/maps` lists, with their permissions.
    fn mappings() -> Vec<(usize, usize, String)> {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        maps.lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let (start, end) = fields.next()?.split_once('-')?;
                let start = usize::from_str_radix(start, 16).ok()?;
                let end = usize::from_str_radix(end, 16).ok()?;
                Some((start, end, fields.next()?.to_string()))
            })
            .collect()
    }

    /// A dropped stack is unmapped, its guard region too. Its size is one no other test maps,
    /// so a mapping another test makes meanwhile (perhaps where this one was) cannot have the
    /// same bounds.
    #[test]
    fn a_dropped_stack_is_unmapped() {
        let size = SIZE + 7 * 4096;
        let stack = Stack::map(size).expect("map");
        let start = stack.mapping.as_ptr() as usize;
        let usable = stack.usable.as_ptr() as usize;
        let regions = [(start, usable), (usable, usable + size)];
        let before = mappings();
        for (lo, hi) in regions {
            assert!(
                before.iter().any(|(a, b, _)| *a <= lo && hi <= *b),
                "{lo:x}-{hi:x} is not mapped"
            );
        }
        drop(stack);
        let after = mappings();
        for (lo, hi) in regions {
            assert!(
                !after.iter().any(|(a, b, _)| (*a, *b) == (lo, hi)),
                "{lo:x}-{hi:x} is still mapped"
            );
        }
    }

    /// A stack is mapped without reserving memory for all of it (`MAP_NORESERVE`, the `nr`
    /// flag in `/proc/self/smaps`): 10,000 idle clients' stacks, mostly untouched, do not count
    /// their whole size against the commit limit. (Under `vm.overcommit_memory = 2` the kernel
    /// reserves regardless.)
    #[test]
    fn stacks_reserve_no_memory_ahead() {
        if std::fs::read_to_string("/proc/sys/vm/overcommit_memory").is_ok_and(|m| m.trim() == "2")
        {
            return;
        }
        let stack = Stack::map(SIZE).expect("map");
        let usable = stack.usable.as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut inside = false;
        let mut flags = None;
        for line in smaps.lines() {
            if let Some((start, end)) = line
                .split_whitespace()
                .next()
                .and_then(|range| range.split_once('-'))
                .and_then(|(a, b)| {
                    Some((
                        usize::from_str_radix(a, 16).ok()?,
                        usize::from_str_radix(b, 16).ok()?,
                    ))
                })
            {
                inside = (start..end).contains(&usable);
            } else if let Some(found) = line.strip_prefix("VmFlags:") {
                if inside {
                    flags = Some(
                        found
                            .split_whitespace()
                            .map(str::to_owned)
                            .collect::<Vec<_>>(),
                    );
                    break;
                }
            }
        }
        let flags = flags.expect("the stack's flags in smaps");
        assert!(flags.iter().any(|f| f == "nr"), "{flags:?}");
    }

    #[test]
    fn each_stack_has_a_guard_region_of_64_kib_below_it() {
        let mut stacks = Stacks::new(SIZE);
        let thread = stacks
            .spawn("guarded", || {
                let local = 1u8;
                std::hint::black_box(&local) as *const u8 as usize
            })
            .expect("spawn");
        let at = thread.join(&mut stacks).expect("no panic");
        let ranges = mappings();
        let stack = ranges
            .iter()
            .find(|(start, end, _)| (*start..*end).contains(&at))
            .expect("the stack is mapped");
        let guard = ranges
            .iter()
            .find(|(_, end, _)| *end == stack.0)
            .expect("a mapping right below the stack");
        assert_eq!(guard.2, "---p", "no access below the stack");
        // 64 KiB as promised, whatever the constant says.
        assert!(
            guard.1 - guard.0 >= 64 * 1024,
            "{:x}-{:x}",
            guard.0,
            guard.1
        );
    }

    #[test]
    fn trim_keeps_the_most_recent_spares() {
        let mut stacks = Stacks::new(SIZE);
        let threads: Vec<_> = (0..4)
            .map(|i| stacks.spawn("many", move || i).expect("spawn"))
            .collect();
        let mut sum = 0;
        for thread in threads {
            sum += thread.join(&mut stacks).expect("no panic");
        }
        assert_eq!(sum, 6);
        assert_eq!(stacks.spare(), 4);
        stacks.trim(1);
        assert_eq!(stacks.spare(), 1);
        stacks.trim(5);
        assert_eq!(stacks.spare(), 1);
    }

    #[test]
    fn a_dropped_handle_detaches_a_running_thread() {
        let mut stacks = Stacks::new(SIZE);
        let (done, finished) = mpsc::channel();
        let thread = stacks
            .spawn("detached", move || done.send(()).is_ok())
            .expect("spawn");
        drop(thread);
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("the detached thread still ran");
        assert_eq!(stacks.spare(), 0, "its stack is not reused");
    }
}
