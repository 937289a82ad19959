//! What goes back to a client: each worker owns an [`Outbox`], one ordered queue of the bytes it
//! sends (a greeting, echoed bytes, messages the operator typed), so they reach the client whole
//! and in order, and only the worker writes to its connection. [`Bell`] wakes the workers when
//! typed messages are queued, without a file descriptor per client.
//!
//! Bounds: typed messages wait in a client's outbox up to [`CLIENT_QUEUE`] bytes, and all of them
//! together hold at most [`TOTAL_QUEUED`] bytes of memory (a message sent to many clients is
//! stored once). A message over either bound is dropped for that client, never blocking whoever
//! queues it. Echoed bytes are never dropped: the worker stops reading while too many wait
//! ([`ECHO_HOLD`]), so a client that does not read its echo is slowed, as by any echo server.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Most bytes of typed messages waiting for one client. One more message is dropped.
pub const CLIENT_QUEUE: usize = 1024 * 1024;

/// Most bytes of typed messages held for all clients at once, each message counted once however
/// many clients it goes to.
pub const TOTAL_QUEUED: usize = 64 * 1024 * 1024;

/// Echoed bytes waiting for a client above which its worker stops reading until the client reads.
pub const ECHO_HOLD: usize = 256 * 1024;

/// A typed message, shared by every outbox it is queued in. Its bytes count against
/// [`TOTAL_QUEUED`] until the last outbox lets go of it.
#[derive(Debug)]
pub struct Message {
    bytes: Box<[u8]>,
    budget: Budget,
}

impl Message {
    /// `bytes` as a message, if the budget has room for them.
    pub fn new(bytes: Vec<u8>, budget: &Budget) -> Option<Arc<Message>> {
        budget.take(bytes.len())?;
        Some(Arc::new(Message {
            bytes: bytes.into_boxed_slice(),
            budget: budget.clone(),
        }))
    }

    /// The greeting (`--greet`): one message for every client, outside the typed messages'
    /// budget.
    pub fn greeting(bytes: Vec<u8>) -> Arc<Message> {
        let budget = Budget::default();
        budget.0.store(bytes.len(), Ordering::Relaxed);
        Arc::new(Message {
            bytes: bytes.into_boxed_slice(),
            budget,
        })
    }

    /// The bytes sent.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        self.budget.give(self.bytes.len());
    }
}

/// The memory typed messages may hold, shared by everything that makes them: [`TOTAL_QUEUED`].
#[derive(Debug, Clone, Default)]
pub struct Budget(Arc<AtomicUsize>);

impl Budget {
    fn take(&self, bytes: usize) -> Option<()> {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|&n| n <= TOTAL_QUEUED)
            })
            .ok()
            .map(|_| ())
    }

    fn give(&self, bytes: usize) {
        self.0.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a queued piece of outgoing bytes is, for the record of what was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `--greet`, sent as the client is accepted.
    Greeting,
    /// The client's own bytes, sent back (`--echo`).
    Echo,
    /// A message the operator typed.
    Typed,
}

/// One piece of outgoing bytes.
#[derive(Debug)]
pub enum Chunk {
    /// A greeting or a typed message, shared with other clients' outboxes.
    Shared(Kind, Arc<Message>),
    /// Echoed bytes.
    Echo(Vec<u8>),
}

impl Chunk {
    /// The bytes to send.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Shared(_, message) => message.bytes(),
            Chunk::Echo(bytes) => bytes,
        }
    }

    /// What the bytes are.
    pub fn kind(&self) -> Kind {
        match self {
            Chunk::Shared(kind, _) => *kind,
            Chunk::Echo(_) => Kind::Echo,
        }
    }
}

/// What became of a typed message queued for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// It waits for the worker to send it.
    Yes,
    /// The client's queue is full: dropped. `first` on the client's first drop.
    Dropped { first: bool },
    /// The client's worker has ended.
    Gone,
}

/// One client's outgoing bytes, in order: filled by the client's worker (greeting, echo) and by
/// the operator's input (typed messages), emptied only by the worker.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: Mutex<Queue>,
    /// Whether anything is queued, read without the lock on every wake of the worker.
    ready: AtomicBool,
}

#[derive(Debug, Default)]
struct Queue {
    chunks: VecDeque<Chunk>,
    /// Bytes of typed messages queued (the chunk being sent included).
    typed: usize,
    /// Bytes of echo queued.
    echo: usize,
    /// Set when the worker ends: nothing more is queued.
    closed: bool,
    /// Typed bytes and messages dropped because the queue was full.
    dropped_bytes: u64,
    dropped_messages: u64,
}

/// Counts of what an outbox could not send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub bytes: u64,
    pub messages: u64,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves the queue consistent (every change is one
        // push or pop): go on with it.
        crate::sync::lock(&self.queue)
    }

    /// Queues a typed message, unless the client's queue has no room for it.
    pub fn push_typed(&self, message: &Arc<Message>) -> Queued {
        let mut queue = self.lock();
        if queue.closed {
            return Queued::Gone;
        }
        let len = message.bytes().len();
        if queue.typed + len > CLIENT_QUEUE {
            let first = queue.dropped_messages == 0;
            queue.dropped_bytes += len as u64;
            queue.dropped_messages += 1;
            return Queued::Dropped { first };
        }
        queue.typed += len;
        queue
            .chunks
            .push_back(Chunk::Shared(Kind::Typed, Arc::clone(message)));
        self.ready.store(true, Ordering::Release);
        Queued::Yes
    }

    /// Queues the greeting (always: it is the first thing sent).
    pub fn push_greeting(&self, greeting: &Arc<Message>) {
        let mut queue = self.lock();
        queue
            .chunks
            .push_back(Chunk::Shared(Kind::Greeting, Arc::clone(greeting)));
        self.ready.store(true, Ordering::Release);
    }

    /// Queues echoed bytes (never dropped; see [`ECHO_HOLD`]).
    pub fn push_echo(&self, bytes: &[u8]) {
        let mut queue = self.lock();
        queue.echo += bytes.len();
        queue.chunks.push_back(Chunk::Echo(bytes.to_vec()));
        self.ready.store(true, Ordering::Release);
    }

    /// Whether anything waits to be sent.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Whether so much echo waits that the worker should stop reading for now.
    pub fn echo_held(&self) -> bool {
        self.is_ready() && self.lock().echo > ECHO_HOLD
    }

    /// The next chunk to send. It still counts as queued until [`Outbox::sent`].
    pub fn next(&self) -> Option<Chunk> {
        let mut queue = self.lock();
        let chunk = queue.chunks.pop_front();
        if chunk.is_none() {
            self.ready.store(false, Ordering::Release);
        }
        chunk
    }

    /// Gives back a chunk [`Outbox::next`] took but that could not be sent whole yet, to be sent
    /// first next time.
    pub fn put_back(&self, chunk: Chunk) {
        let mut queue = self.lock();
        queue.chunks.push_front(chunk);
        self.ready.store(true, Ordering::Release);
    }

    /// Counts a chunk as gone from the queue (sent, or given up on).
    pub fn sent(&self, chunk: &Chunk) {
        let mut queue = self.lock();
        let len = chunk.bytes().len();
        match chunk.kind() {
            Kind::Typed => queue.typed -= len,
            Kind::Echo => queue.echo -= len,
            Kind::Greeting => {}
        }
    }

    /// Closes the outbox when its worker ends: later messages are refused and what is queued
    /// is let go. Returns what was dropped, the queued bytes given up on included.
    pub fn close(&self) -> Dropped {
        let mut queue = self.lock();
        queue.closed = true;
        let unsent: Vec<Chunk> = queue.chunks.drain(..).collect();
        for chunk in &unsent {
            if chunk.kind() == Kind::Typed {
                queue.dropped_bytes += chunk.bytes().len() as u64;
                queue.dropped_messages += 1;
            }
        }
        queue.typed = 0;
        queue.echo = 0;
        self.ready.store(false, Ordering::Release);
        Dropped {
            bytes: queue.dropped_bytes,
            messages: queue.dropped_messages,
        }
    }
}

/// Wakes the workers of every client when typed messages are queued, with no file descriptor per
/// client: every worker polls the read end of the current pipe beside its socket; a ring writes
/// that pipe (it stays readable, so every poll on it returns) and puts a fresh pipe in its place
/// for the next ring. A woken worker sends what its outbox holds and polls the new pipe.
///
/// No ring is lost: a worker takes the current pipe before it looks at its outbox, and messages
/// are queued before the ring, so either the worker sees them or the pipe it polls is written.
#[derive(Debug)]
pub struct Bell {
    current: Mutex<Arc<Pipe>>,
}

/// One pipe of a [`Bell`]: written once, when it rings.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = crate::platform::nonblocking_pipe()?;
        Ok(Pipe { read, write })
    }

    /// The end to poll.
    pub fn waker(&self) -> &OwnedFd {
        &self.read
    }
}

impl Bell {
    /// A bell and its first pipe.
    ///
    /// # Errors
    /// When the process is out of file descriptors.
    pub fn new() -> io::Result<Bell> {
        Ok(Bell {
            current: Mutex::new(Arc::new(Pipe::new()?)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Arc<Pipe>> {
        crate::sync::lock(&self.current)
    }

    /// The pipe to poll; take it before looking at the outbox.
    pub fn current(&self) -> Arc<Pipe> {
        Arc::clone(&self.lock())
    }

    /// Wakes every worker polling the current pipe.
    ///
    /// # Errors
    /// When no new pipe can be made (out of file descriptors): then nobody is woken, and the
    /// workers find their messages at their next poll interval.
    pub fn ring(&self) -> io::Result<()> {
        let fresh = Arc::new(Pipe::new()?);
        let rung = std::mem::replace(&mut *self.lock(), fresh);
        match rustix::io::write(&rung.write, b"!") {
            Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poll::{self, Fd, Flags};
    use std::time::Duration;

    fn message(bytes: &[u8], budget: &Budget) -> Arc<Message> {
        Message::new(bytes.to_vec(), budget).expect("room")
    }

    #[test]
    fn the_bounds_are_those_the_readme_gives() {
        // README, Delivery: a client's queue of typed messages holds 1 MiB, all queues 64 MiB,
        // and a worker stops reading a client that leaves 256 KiB of echo unread.
        assert_eq!(CLIENT_QUEUE, 1 << 20);
        assert_eq!(TOTAL_QUEUED, 64 << 20);
        assert_eq!(ECHO_HOLD, 256 << 10);
    }

    #[test]
    fn chunks_come_out_in_order_and_counts_follow_them() {
        let budget = Budget::default();
        let outbox = Outbox::default();
        assert!(!outbox.is_ready());
        outbox.push_greeting(&message(b"hi\r\n", &budget));
        outbox.push_echo(b"abc");
        assert_eq!(
            outbox.push_typed(&message(b"typed\n", &budget)),
            Queued::Yes
        );
        let kinds: Vec<(Kind, Vec<u8>)> = std::iter::from_fn(|| {
            let chunk = outbox.next()?;
            outbox.sent(&chunk);
            Some((chunk.kind(), chunk.bytes().to_vec()))
        })
        .collect();
        assert_eq!(
            kinds,
            [
                (Kind::Greeting, b"hi\r\n".to_vec()),
                (Kind::Echo, b"abc".to_vec()),
                (Kind::Typed, b"typed\n".to_vec()),
            ]
        );
        assert!(!outbox.is_ready());
        assert_eq!(outbox.lock().typed, 0);
        assert_eq!(outbox.lock().echo, 0);
    }

    #[test]
    fn a_full_queue_drops_whole_messages_and_says_so_once() {
        let budget = Budget::default();
        let outbox = Outbox::default();
        let big = message(&vec![b'x'; CLIENT_QUEUE / 2], &budget);
        assert_eq!(outbox.push_typed(&big), Queued::Yes);
        assert_eq!(outbox.push_typed(&big), Queued::Yes);
        assert_eq!(
            outbox.push_typed(&message(b"1", &budget)),
            Queued::Dropped { first: true }
        );
        assert_eq!(
            outbox.push_typed(&message(b"22", &budget)),
            Queued::Dropped { first: false }
        );
        // Sending one makes room again.
        let chunk = outbox.next().expect("queued");
        outbox.sent(&chunk);
        assert_eq!(outbox.push_typed(&message(b"3", &budget)), Queued::Yes);
        // Closing gives up on the rest (one big message and the "3"), counted with the drops.
        assert_eq!(
            outbox.close(),
            Dropped {
                bytes: (1 + 2 + 1 + CLIENT_QUEUE / 2) as u64,
                messages: 4
            }
        );
        assert_eq!(outbox.push_typed(&big), Queued::Gone);
    }

    #[test]
    fn a_put_back_chunk_is_sent_first() {
        let budget = Budget::default();
        let outbox = Outbox::default();
        outbox.push_typed(&message(b"one", &budget));
        outbox.push_typed(&message(b"two", &budget));
        let first = outbox.next().expect("queued");
        outbox.put_back(first);
        assert_eq!(outbox.next().expect("queued").bytes(), b"one");
    }

    #[test]
    fn messages_hold_the_shared_budget_until_the_last_copy_goes() {
        let budget = Budget::default();
        let a = Outbox::default();
        let b = Outbox::default();
        let shared = message(&[0; 1000], &budget);
        a.push_typed(&shared);
        b.push_typed(&shared);
        drop(shared);
        assert_eq!(budget.held(), 1000, "stored once for both clients");
        a.close();
        assert_eq!(budget.held(), 1000);
        b.close();
        assert_eq!(budget.held(), 0);
        assert!(Message::new(vec![0; TOTAL_QUEUED + 1], &budget).is_none());
        let all = Message::new(vec![0; TOTAL_QUEUED], &budget).expect("exactly the budget");
        assert!(Message::new(vec![0; 1], &budget).is_none(), "over budget");
        drop(all);
        assert!(Message::new(vec![0; 1], &budget).is_some());
    }

    #[test]
    fn echo_over_the_hold_asks_the_worker_to_stop_reading() {
        let outbox = Outbox::default();
        outbox.push_echo(&vec![0; ECHO_HOLD]);
        assert!(!outbox.echo_held(), "at the hold, not over it");
        outbox.push_echo(b"x");
        assert!(outbox.echo_held());
        let chunk = outbox.next().expect("queued");
        outbox.sent(&chunk);
        assert!(!outbox.echo_held());
    }

    #[test]
    fn a_ring_wakes_whoever_polls_the_pipe_taken_before_it_and_no_later_one() {
        let bell = Bell::new().expect("pipe");
        let before = bell.current();
        let mut fds = [Fd::new(before.waker(), Flags::IN)];
        assert_eq!(poll::wait(&mut fds, Duration::ZERO).expect("poll"), 0);
        bell.ring().expect("ring");
        let mut fds = [Fd::new(before.waker(), Flags::IN)];
        assert_eq!(poll::wait(&mut fds, Duration::ZERO).expect("poll"), 1);
        // Stays readable for every later poll of the old pipe.
        let mut fds = [Fd::new(before.waker(), Flags::IN)];
        assert_eq!(poll::wait(&mut fds, Duration::ZERO).expect("poll"), 1);
        let after = bell.current();
        let mut fds = [Fd::new(after.waker(), Flags::IN)];
        assert_eq!(poll::wait(&mut fds, Duration::ZERO).expect("poll"), 0);
    }
}
