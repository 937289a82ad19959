//! Talking back: the operator's input (standard input), one message a line, addressed with `@N`
//! to some clients or to all of them, queued in the outboxes of the addressed clients' workers.
//! The reader thread never writes to a connection: each worker sends what its outbox holds
//! (see [`crate::outbox`]), so sending never blocks the input or another client.
//!
//! | line typed         | goes to                                 |
//! |--------------------|-----------------------------------------|
//! | `hello`            | every connected client                  |
//! | `@* hello`         | every connected client                  |
//! | `@3 hello`         | client 3                                |
//! | `@1,3,7 hello`     | clients 1, 3 and 7                      |
//! | `@@hello`          | every connected client, as `@hello`     |

use std::collections::BTreeMap;
use std::io;
use std::io::IsTerminal;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::error::{Error, describe};
use crate::format::{counted, plural};
use crate::outbox::{Bell, Budget, CLIENT_QUEUE, Message, Outbox, Queued, TOTAL_QUEUED};
use crate::output::unescape;
use crate::poll::{self, Fd, Flags};
use crate::shutdown::Shutdown;
use crate::worker::ClientId;

/// Bytes read from the input at a time.
const READ_SIZE: usize = 64 * 1024;

/// Longest unfinished typed line kept while its line end has not come: as much as one client's
/// queue holds. A longer one is dropped whole, as is a finished message over that size.
const MAX_TYPED: usize = CLIENT_QUEUE;

/// How long the reader waits before trying again when the input cannot be read for now (a
/// terminal read from the background).
const RETRY: Duration = Duration::from_secs(1);

/// Reads done at the stop for what the input already holds.
const READS_AT_STOP: usize = 64;

/// Connected clients shown in a warning about an address, before the rest are counted.
const SHOWN: usize = 8;

/// How typed lines become bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TalkSettings {
    /// Send typed text as it is, instead of reading `\\`, `\xNN`, `\r`, `\n` and `\t` escapes.
    pub raw: bool,
    /// End each message with `\r\n` instead of `\n`.
    pub crlf: bool,
}

/// Who a typed line goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    All,
    Some(Vec<u64>),
}

/// A typed line, parsed: who it goes to and its text (escapes not yet read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Typed<'a> {
    pub targets: Targets,
    pub text: &'a [u8],
}

/// How an address is written, for the warning about a malformed one.
pub const ADDRESS_SYNTAX: &str =
    "@N TEXT, @N,M,… TEXT, @* TEXT, or @@TEXT for a line that starts with @";

/// Reads one line's address: see the module's table. `None` for a malformed address.
pub fn parse_line(line: &[u8]) -> Option<Typed<'_>> {
    let Some(rest) = line.strip_prefix(b"@") else {
        return Some(Typed {
            targets: Targets::All,
            text: line,
        });
    };
    if rest.starts_with(b"@") {
        return Some(Typed {
            targets: Targets::All,
            text: rest,
        });
    }
    let space = rest.iter().position(|&b| b == b' ')?;
    let (address, text) = (&rest[..space], &rest[space + 1..]);
    if address == b"*" {
        return Some(Typed {
            targets: Targets::All,
            text,
        });
    }
    let mut numbers = Vec::new();
    for part in address.split(|&b| b == b',') {
        let number = std::str::from_utf8(part)
            .ok()
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u64>().ok())?;
        if !numbers.contains(&number) {
            numbers.push(number);
        }
    }
    Some(Typed {
        targets: Targets::Some(numbers),
        text,
    })
}

/// The outboxes of the connected clients, by number: the listener adds a client's as it starts
/// its worker and removes it once it has joined the worker, and a UDP receiver does the same
/// for its sources; the input reads it to address messages.
#[derive(Debug, Clone, Default)]
pub struct Clients(Arc<Mutex<BTreeMap<u64, Arc<Outbox>>>>);

impl Clients {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Outbox>>> {
        crate::sync::lock(&self.0)
    }

    /// Adds the outbox of a client whose worker starts.
    pub fn insert(&self, id: ClientId, outbox: Arc<Outbox>) {
        self.lock().insert(id.number(), outbox);
    }

    /// Removes the outbox of a client whose worker has ended.
    pub fn remove(&self, id: ClientId) {
        self.lock().remove(&id.number());
    }
}

/// The operator's input: read on its own thread until it ends or the run stops.
pub struct Talk {
    clients: Clients,
    bell: Arc<Bell>,
    budget: Budget,
    settings: TalkSettings,
    /// Set when the input is over (end of input, or read to the end at the stop); workers that
    /// stop wait for it before sending their last queued bytes.
    finished: Arc<AtomicBool>,
    /// Whether the warning about the memory bound was given.
    warned_full: bool,
}

/// What the workers see of the input: the bell that wakes them, and whether it is over.
#[derive(Debug, Clone)]
pub struct Listening {
    pub bell: Arc<Bell>,
    finished: Arc<AtomicBool>,
}

impl Listening {
    /// Whether no more messages will be typed.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// At a stop, before a worker sends its last queued bytes: waits until the input is read to
    /// its end (so a line typed just before the stop is queued), or until `deadline`.
    pub fn wait_finished(&self, deadline: Instant) {
        loop {
            // Taken before the look at the flag: the ring that follows setting it wakes this.
            let pipe = self.bell.current();
            let left = deadline.saturating_duration_since(Instant::now());
            if self.is_finished() || left.is_zero() {
                return;
            }
            let mut fds = [Fd::new(pipe.waker(), Flags::IN)];
            if poll::wait(&mut fds, left).is_err() {
                return;
            }
        }
    }
}

impl Talk {
    /// The input for `clients`, and the workers' side of it.
    ///
    /// # Errors
    /// When the bell's pipe cannot be made.
    pub fn new(clients: Clients, settings: TalkSettings) -> io::Result<(Talk, Listening)> {
        let bell = Arc::new(Bell::new()?);
        let finished = Arc::new(AtomicBool::new(false));
        let talk = Talk {
            clients,
            bell: Arc::clone(&bell),
            budget: Budget::default(),
            settings,
            finished: Arc::clone(&finished),
            warned_full: false,
        };
        Ok((talk, Listening { bell, finished }))
    }

    /// Starts reading standard input on its own thread (`input`), until it ends or the run
    /// stops; the listener joins it after the workers.
    ///
    /// # Errors
    /// [`Error::Setup`] when the thread cannot be started.
    pub fn spawn(self, shutdown: &Shutdown) -> Result<std::thread::JoinHandle<()>, Error> {
        let shutdown = shutdown.clone();
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            crate::platform::ignore_background_read_signal();
        }
        std::thread::Builder::new()
            .name(String::from("input"))
            .spawn(move || self.run(stdin.as_fd(), &shutdown))
            .map_err(|source| Error::Setup {
                what: "start the thread that reads typed messages",
                source,
            })
    }

    /// Reads `input` until it ends or the run stops, sending each line as it comes. At the stop,
    /// what the input already holds is read and sent too (a line typed just before the stop still
    /// reaches its clients: their workers wait for this before they close).
    pub fn run(mut self, input: BorrowedFd<'_>, shutdown: &Shutdown) {
        let mut buf = vec![0; READ_SIZE];
        let mut line: Vec<u8> = Vec::new();
        let mut too_long = false;
        loop {
            let stopping = {
                let mut fds = [
                    Fd::new(&input, Flags::IN),
                    Fd::new(shutdown.waker(), Flags::IN),
                ];
                match poll::wait(&mut fds, Duration::MAX) {
                    Ok(_) => !fds[1].revents().is_empty(),
                    Err(err) => {
                        warn!(
                            "cannot wait for input: {}; typed lines are not sent",
                            describe(&err)
                        );
                        break;
                    }
                }
            };
            let reads = if stopping { READS_AT_STOP } else { 1 };
            let mut ended = false;
            for _ in 0..reads {
                if stopping && !readable_now(input) {
                    break;
                }
                match rustix::io::read(input, &mut buf) {
                    Ok(0) => {
                        ended = true;
                        break;
                    }
                    Ok(n) => self.take(&buf[..n], &mut line, &mut too_long),
                    Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                    // A terminal read from the background (with SIGTTIN ignored): try later.
                    Err(rustix::io::Errno::IO) if !stopping => {
                        debug!("cannot read the terminal from the background; waiting");
                        let mut fds = [Fd::new(shutdown.waker(), Flags::IN)];
                        let _ = poll::wait(&mut fds, RETRY);
                    }
                    Err(err) => {
                        warn!(
                            "cannot read input: {}; typed lines are no longer sent",
                            describe(&err.into())
                        );
                        ended = true;
                        break;
                    }
                }
            }
            if ended {
                if !line.is_empty() && !too_long {
                    let last = std::mem::take(&mut line);
                    self.send(&last);
                    self.ring();
                }
                debug!("end of input: nothing more will be sent to clients");
                break;
            }
            if stopping {
                if !line.is_empty() {
                    warn!(
                        "a typed line without its line end was not sent ({} at the stop)",
                        counted(line.len() as u64, "byte")
                    );
                }
                break;
            }
        }
        self.finished.store(true, Ordering::Release);
        self.ring();
    }

    /// Takes a read's bytes: sends every complete line, keeps the rest in `line`.
    fn take(&mut self, bytes: &[u8], line: &mut Vec<u8>, too_long: &mut bool) {
        let mut rest = bytes;
        let mut sent = false;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            let (head, tail) = (&rest[..end], &rest[end + 1..]);
            rest = tail;
            if std::mem::take(too_long) {
                line.clear();
                continue;
            }
            line.extend_from_slice(head);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let whole = std::mem::take(line);
            self.send(&whole);
            sent = true;
        }
        if !*too_long {
            line.extend_from_slice(rest);
            if line.len() > MAX_TYPED {
                warn!(
                    "a typed line longer than {} was not sent",
                    counted(MAX_TYPED as u64, "byte")
                );
                line.clear();
                *too_long = true;
            }
        }
        if sent {
            self.ring();
        }
    }

    /// Wakes the workers, whose outboxes have new messages.
    fn ring(&self) {
        if let Err(err) = self.bell.ring() {
            warn!(
                "cannot wake the workers: {}; messages wait for their next poll",
                describe(&err)
            );
        }
    }

    /// Sends one typed line (its line end taken off) to the clients it names.
    fn send(&mut self, line: &[u8]) {
        let typed = match parse_line(line) {
            Some(typed) => typed,
            None => {
                warn!(
                    "not sent: '{}' is not addressed right; write {ADDRESS_SYNTAX}",
                    String::from_utf8_lossy(line)
                );
                return;
            }
        };
        let mut bytes = if self.settings.raw {
            typed.text.to_vec()
        } else {
            match unescape(typed.text) {
                Ok(bytes) => bytes,
                Err(at) => {
                    warn!(
                        "not sent: a backslash at byte {} of '{}' starts no escape; write \\\\, \
                         \\xNN, \\r, \\n or \\t",
                        at + 1,
                        String::from_utf8_lossy(typed.text)
                    );
                    return;
                }
            }
        };
        bytes.extend_from_slice(if self.settings.crlf { b"\r\n" } else { b"\n" });
        if bytes.len() > CLIENT_QUEUE {
            warn!(
                "not sent: a typed message of {} is longer than a client's queue holds ({})",
                counted(bytes.len() as u64, "byte"),
                crate::format::size(CLIENT_QUEUE as u64)
            );
            return;
        }
        // The outboxes are taken and the lock let go before anything is queued or logged: a
        // slow stderr must not hold the listener, which adds and removes clients under it.
        let addressed = {
            let clients = self.clients.lock();
            match &typed.targets {
                Targets::All => Ok(clients
                    .iter()
                    .map(|(n, o)| (*n, Arc::clone(o)))
                    .collect::<Vec<_>>()),
                Targets::Some(numbers) => {
                    let absent: Vec<u64> = numbers
                        .iter()
                        .copied()
                        .filter(|n| !clients.contains_key(n))
                        .collect();
                    if absent.is_empty() {
                        Ok(numbers
                            .iter()
                            .map(|n| (*n, Arc::clone(&clients[n])))
                            .collect())
                    } else {
                        Err(format!(
                            "not sent: {} not connected; {}",
                            name_clients(&absent),
                            connected(&clients)
                        ))
                    }
                }
            }
        };
        let outboxes = match addressed {
            Ok(outboxes) if outboxes.is_empty() => {
                warn!("not sent: no client is connected");
                return;
            }
            Ok(outboxes) => outboxes,
            Err(why) => {
                warn!("{why}");
                return;
            }
        };
        let len = bytes.len();
        let Some(message) = Message::new(bytes, &self.budget) else {
            if !std::mem::replace(&mut self.warned_full, true) {
                warn!(
                    "not sent: the messages waiting for clients that do not read fill the {} \
                     they may hold; messages are dropped until they read",
                    crate::format::size(TOTAL_QUEUED as u64)
                );
            }
            return;
        };
        self.warned_full = false;
        for (number, outbox) in outboxes {
            match outbox.push_typed(&message) {
                Queued::Yes => {}
                // It ended after it was addressed, before the listener reaped it.
                Queued::Gone => warn!("not sent to client {number}: it has disconnected"),
                Queued::Dropped { first: true } => warn!(
                    "client {number} is not reading: dropped a {len}-byte message, its queue of \
                     {} to send being full; later drops are counted when it disconnects",
                    crate::format::size(CLIENT_QUEUE as u64)
                ),
                Queued::Dropped { first: false } => {}
            }
        }
    }
}

/// Whether `input` can be read without blocking.
fn readable_now(input: BorrowedFd<'_>) -> bool {
    let mut fds = [Fd::new(&input, Flags::IN)];
    poll::wait(&mut fds, Duration::ZERO).is_ok_and(|n| n > 0)
}

/// `client 9` or `clients 9 and 12` / `clients 9, 12 and 14`.
fn name_clients(numbers: &[u64]) -> String {
    let list: Vec<String> = numbers.iter().map(u64::to_string).collect();
    let joined = match list.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    };
    format!(
        "{} {joined} {}",
        plural(numbers.len() as u64, "client"),
        if numbers.len() == 1 { "is" } else { "are" }
    )
}

/// Which clients are connected, the first few by number: `connected: 1, 2, 5 (3 clients)`.
fn connected(clients: &BTreeMap<u64, Arc<Outbox>>) -> String {
    if clients.is_empty() {
        return String::from("no client is connected");
    }
    let mut shown: Vec<String> = clients.keys().take(SHOWN).map(u64::to_string).collect();
    if clients.len() > SHOWN {
        shown.push(String::from("…"));
    }
    format!(
        "connected: {} ({})",
        shown.join(", "),
        counted(clients.len() as u64, "client")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Pipe;
    use crate::shutdown::StopReason;

    fn parsed(line: &str) -> Option<(Targets, String)> {
        parse_line(line.as_bytes()).map(|t| {
            (
                t.targets,
                String::from_utf8(t.text.to_vec()).expect("utf-8"),
            )
        })
    }

    #[test]
    fn addresses_read_as_the_table_says() {
        let all = |text: &str| Some((Targets::All, text.to_owned()));
        let some = |n: &[u64], text: &str| Some((Targets::Some(n.to_vec()), text.to_owned()));
        assert_eq!(parsed("hello"), all("hello"));
        assert_eq!(parsed(""), all(""));
        assert_eq!(parsed("@* hello"), all("hello"));
        assert_eq!(parsed("@3 hello"), some(&[3], "hello"));
        assert_eq!(parsed("@3  two spaces"), some(&[3], " two spaces"));
        assert_eq!(parsed("@3 "), some(&[3], ""));
        assert_eq!(parsed("@1,3,12 hi"), some(&[1, 3, 12], "hi"));
        assert_eq!(parsed("@3,3 once"), some(&[3], "once"));
        assert_eq!(parsed("@@3 not an address"), all("@3 not an address"));
        assert_eq!(parsed("@@"), all("@"));
        assert_eq!(parsed("a @3 in the middle"), all("a @3 in the middle"));
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for line in [
            "@3",
            "@x hi",
            "@ hi",
            "@3, hi",
            "@,3 hi",
            "@-1 hi",
            "@+1 hi",
            "@3;4 hi",
            "@99999999999999999999999 hi",
            "@*",
            "@*3 hi",
        ] {
            assert_eq!(parsed(line), None, "{line}");
        }
    }

    #[test]
    fn warnings_name_clients_in_words() {
        assert_eq!(name_clients(&[9]), "client 9 is");
        assert_eq!(name_clients(&[9, 12]), "clients 9 and 12 are");
        assert_eq!(name_clients(&[9, 12, 14]), "clients 9, 12 and 14 are");
        let mut clients = BTreeMap::new();
        assert_eq!(connected(&clients), "no client is connected");
        for n in 1..=8 {
            clients.insert(n, Arc::new(Outbox::default()));
        }
        assert_eq!(
            connected(&clients),
            "connected: 1, 2, 3, 4, 5, 6, 7, 8 (8 clients)",
            "all shown"
        );
        for n in 9..=10 {
            clients.insert(n, Arc::new(Outbox::default()));
        }
        assert_eq!(
            connected(&clients),
            "connected: 1, 2, 3, 4, 5, 6, 7, 8, … (10 clients)"
        );
    }

    const PLAIN: TalkSettings = TalkSettings {
        raw: false,
        crlf: false,
    };

    /// A talk to clients 1, 2 and 3, and their outboxes.
    fn talk_to_three(settings: TalkSettings) -> (Talk, Listening, Vec<Arc<Outbox>>) {
        let clients = Clients::default();
        let outboxes: Vec<Arc<Outbox>> = (0..3).map(|_| Arc::new(Outbox::default())).collect();
        for (number, outbox) in (1..).zip(&outboxes) {
            clients.insert(ClientId::new(number), Arc::clone(outbox));
        }
        let (talk, listening) = Talk::new(clients, settings).expect("bell");
        (talk, listening, outboxes)
    }

    /// What an outbox holds, taken out of it.
    fn sent_to(outbox: &Outbox) -> Vec<String> {
        std::iter::from_fn(|| {
            let chunk = outbox.next()?;
            outbox.sent(&chunk);
            Some(String::from_utf8_lossy(chunk.bytes()).into_owned())
        })
        .collect()
    }

    /// What each of the outboxes holds, taken out of them.
    fn sent_to_each(outboxes: &[Arc<Outbox>]) -> Vec<Vec<String>> {
        outboxes.iter().map(|outbox| sent_to(outbox)).collect()
    }

    fn rung(pipe: &Pipe) -> bool {
        let mut fds = [Fd::new(pipe.waker(), Flags::IN)];
        poll::wait(&mut fds, Duration::ZERO).expect("poll") == 1
    }

    /// Takes `reads` as the reader thread does, and returns the unfinished line kept.
    fn take_all(talk: &mut Talk, reads: &[&[u8]]) -> (Vec<u8>, bool) {
        let (mut line, mut too_long) = (Vec::new(), false);
        for read in reads {
            talk.take(read, &mut line, &mut too_long);
        }
        (line, too_long)
    }

    #[test]
    fn typed_lines_reach_the_clients_they_name_in_order_and_ring_the_bell() {
        let (mut talk, listening, outboxes) = talk_to_three(PLAIN);
        let before = listening.bell.current();
        let (line, too_long) = take_all(&mut talk, &[b"hello\r\n@2 two\\tx\n@1,3 odd\npart"]);
        assert_eq!((line.as_slice(), too_long), (&b"part"[..], false));
        assert!(rung(&before), "a line was sent: the workers are woken");
        assert_eq!(
            sent_to_each(&outboxes),
            [
                vec!["hello\n", "odd\n"],
                vec!["hello\n", "two\tx\n"],
                vec!["hello\n", "odd\n"]
            ]
        );
        let before = listening.bell.current();
        let (mut line, mut too_long) = (line, too_long);
        talk.take(b"ial", &mut line, &mut too_long);
        assert!(!rung(&before), "no line end, nothing sent, nobody woken");
        talk.take(b" line\n", &mut line, &mut too_long);
        assert!(rung(&before));
        assert!(line.is_empty());
        assert_eq!(sent_to_each(&outboxes), [["partial line\n"; 1]; 3]);
    }

    #[test]
    fn raw_text_is_sent_as_typed_and_crlf_ends_each_message() {
        let (mut talk, _listening, outboxes) = talk_to_three(TalkSettings {
            raw: true,
            crlf: true,
        });
        take_all(&mut talk, &[b"@3 a\\tb\\q\n"]);
        assert_eq!(
            sent_to_each(&outboxes),
            [vec![], vec![], vec!["a\\tb\\q\r\n"]]
        );
    }

    #[test]
    fn lines_that_cannot_be_sent_reach_no_client() {
        let (mut talk, _listening, outboxes) = talk_to_three(PLAIN);
        // Malformed address, a backslash that starts no escape, a client that is not
        // connected (even beside one that is).
        take_all(&mut talk, &[b"@x hi\nbad \\q\n@4 hi\n@2,4 hi\n"]);
        assert_eq!(sent_to_each(&outboxes), [[""; 0]; 3]);
        // With nobody connected, nothing is queued anywhere.
        let (mut alone, _listening) = Talk::new(Clients::default(), PLAIN).expect("bell");
        take_all(&mut alone, &[b"hello\n"]);
        assert_eq!(alone.budget.held(), 0);
    }

    #[test]
    fn a_removed_client_is_no_longer_addressed() {
        let (mut talk, _listening, outboxes) = talk_to_three(PLAIN);
        talk.clients.remove(ClientId::new(2));
        take_all(&mut talk, &[b"all\n@2 two\n"]);
        assert_eq!(
            sent_to_each(&outboxes),
            [vec!["all\n"], vec![], vec!["all\n"]]
        );
    }

    #[test]
    fn a_message_as_long_as_a_client_queue_is_sent_and_a_longer_one_is_not() {
        let (mut talk, _listening, outboxes) = talk_to_three(PLAIN);
        // With its `\n`, exactly a client's queue.
        let mut fits = vec![b'a'; CLIENT_QUEUE - 1];
        fits.push(b'\n');
        take_all(&mut talk, &[&fits]);
        assert_eq!(
            outboxes
                .iter()
                .map(|o| sent_to(o)[0].len())
                .collect::<Vec<_>>(),
            [CLIENT_QUEUE; 3]
        );
        let mut over = vec![b'b'; CLIENT_QUEUE];
        over.push(b'\n');
        take_all(&mut talk, &[&over]);
        assert_eq!(sent_to_each(&outboxes), [[""; 0]; 3]);
    }

    #[test]
    fn an_unfinished_line_is_kept_up_to_the_limit_and_dropped_whole_past_it() {
        let (mut talk, _listening, outboxes) = talk_to_three(PLAIN);
        let (line, too_long) = take_all(&mut talk, &[&vec![b'a'; MAX_TYPED]]);
        assert_eq!((line.len(), too_long), (MAX_TYPED, false));
        let (mut line, mut too_long) = take_all(&mut talk, &[&vec![b'a'; MAX_TYPED], b"a"]);
        assert_eq!((line.len(), too_long), (0, true));
        // Its end is dropped with it, up to its line end; the next line is sent.
        talk.take(b"more", &mut line, &mut too_long);
        assert_eq!((line.len(), too_long), (0, true));
        talk.take(b"tail\nnext\n", &mut line, &mut too_long);
        assert_eq!((line.len(), too_long), (0, false));
        assert_eq!(sent_to_each(&outboxes), [["next\n"; 1]; 3]);
    }

    #[test]
    fn the_input_is_read_to_its_end_and_its_last_unended_line_sent() {
        let (talk, listening, outboxes) = talk_to_three(PLAIN);
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        rustix::io::write(&write, b"one\n@2 two\nlast").expect("write");
        drop(write);
        let before = listening.bell.current();
        assert!(!listening.is_finished());
        talk.run(read.as_fd(), &Shutdown::new().expect("shutdown"));
        assert!(listening.is_finished());
        assert!(rung(&before));
        assert_eq!(
            sent_to_each(&outboxes),
            [
                vec!["one\n", "last\n"],
                vec!["one\n", "two\n", "last\n"],
                vec!["one\n", "last\n"]
            ]
        );
    }

    #[test]
    fn an_input_that_ends_with_a_line_end_sends_no_empty_message() {
        let (talk, listening, outboxes) = talk_to_three(PLAIN);
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        rustix::io::write(&write, b"one\n").expect("write");
        drop(write);
        talk.run(read.as_fd(), &Shutdown::new().expect("shutdown"));
        assert!(listening.is_finished());
        assert_eq!(sent_to_each(&outboxes), [["one\n"; 1]; 3]);
    }

    #[test]
    fn at_the_stop_what_the_input_holds_is_read_and_an_unended_line_is_not_sent() {
        let (talk, listening, outboxes) = talk_to_three(PLAIN);
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        rustix::io::write(&write, b"one\ntwo\nunended").expect("write");
        let shutdown = Shutdown::new().expect("shutdown");
        shutdown.request(StopReason::Requested);
        // The input stays open: the reader stops when it holds nothing more.
        talk.run(read.as_fd(), &shutdown);
        assert!(listening.is_finished());
        assert_eq!(sent_to_each(&outboxes), [["one\n", "two\n"]; 3]);
        drop(write);
    }

    #[test]
    fn waiting_for_the_input_ends_at_once_when_it_is_over_else_at_the_deadline() {
        let (over, listening, _outboxes) = talk_to_three(PLAIN);
        over.finished.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(10);
        listening.wait_finished(deadline);
        assert!(Instant::now() < deadline, "the input is over: no wait");
        let (_talk, listening, _outboxes) = talk_to_three(PLAIN);
        let deadline = Instant::now() + Duration::from_millis(50);
        listening.wait_finished(deadline);
        assert!(
            Instant::now() >= deadline,
            "waited for the input until the deadline"
        );
    }

    #[test]
    fn an_input_is_readable_now_only_when_it_holds_bytes() {
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        assert!(!readable_now(read.as_fd()));
        rustix::io::write(&write, b"x").expect("write");
        assert!(readable_now(read.as_fd()));
    }
}
