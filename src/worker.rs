//! One client's thread: `Worker` is its read loop (poll, read, frame, format, write), and
//! `WorkerHandle` is what the listener keeps to stop and join it.
//!
//! A worker blocks in `poll(2)` on two things: its socket and the shared stop pipe. When the stop
//! pipe becomes readable (or its own stop flag is set) it drains: it reads every byte its socket
//! held when the drain began, then what still arrives until the client goes quiet (or
//! [`DRAIN_LIMIT`] of the client's time has passed), prints it all, and closes. Time spent waiting
//! for a slow output does not count against that limit: a byte the server's kernel acknowledged
//! is never dropped because stdout was slow. It never shuts its socket down before that drain,
//! because a `shutdown(SHUT_RD)` discards bytes the client's kernel still holds back.
//!
//! A worker is also the only one that writes to its client: what its [`Outbox`] holds (the
//! greeting, echoed bytes, typed messages) is written without blocking whenever the socket has
//! room, so sending never keeps the worker from reading. When the operator's input is read, the
//! worker polls the input's [`Bell`](crate::outbox::Bell) too. Before it closes, it sends what is
//! still queued, within the drain limit.

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use log::{Level, debug, info, log, warn};

use crate::error::describe;
use crate::format::{ClientFormat, ClientTotals, Format, OutputOptions, counted};
use crate::framing::telnet::Telnet;
use crate::framing::{Framer, Framing, FramingError, Piece};
use crate::listen::tls::HandshakeFailure;
use crate::listen::{Connection, Peer, Spec};
use crate::outbox::{Chunk, Dropped, Kind, Message, Outbox};
use crate::output::Output;
use crate::poll::{self, Fd, Flags};
use crate::shutdown::Shutdown;
use crate::talk::Listening;
use crate::threads::{Stacks, Thread};

/// The read buffer a client keeps once it has sent something, and the first `read(2)`'s size
/// when it starts sending again: a lone line is read without allocating, zeroing and freeing a
/// buffer on its path. A client that has never sent holds none.
pub const QUIET_CHUNK: usize = 1024;

/// The read buffer of a client that fills its [`QUIET_CHUNK`]: the largest it may have on its
/// own; larger ones take a share of [`LARGE_READERS`].
pub const READ_CHUNK: usize = 32 * 1024;

/// The read buffer of a client that keeps filling it doubles up to this size: fewer, larger
/// reads and writes (8 streaming clients to a file: 1,358 MB/s with 32 KiB reads, 1,745 with
/// 256 KiB), while a client that sends a line now and then costs only the small buffer.
pub const READ_CHUNK_MAX: usize = 256 * 1024;

/// How many clients at once may read in pieces larger than [`READ_CHUNK`]: a crowd of senders
/// costs at most this many large buffers (about 9 MiB with their formatted lines for text;
/// escaped bytes and hex take up to four times as much), the others read in small pieces.
pub const LARGE_READERS: usize = 16;

/// Stack of each worker thread. The read buffer and formatted lines live on the heap, so the
/// stack only carries the read loop and the logger (36 KiB at most, seen with `-vv`, JSON, hex,
/// echo and colors).
pub const WORKER_STACK: usize = 128 * 1024;

/// Reads done before the worker hands its lines over and polls again, so one flooding client
/// cannot keep its worker from noticing a stop.
const READS_PER_WAKE: usize = 16;

/// After a stop, how long a worker that is still receiving waits for the next bytes before it
/// closes.
const DRAIN_GRACE: Duration = Duration::from_millis(50);

/// A client heard from this recently may still have bytes on the way at a stop; one silent for
/// longer is idle and ends at once.
const RECENTLY: Duration = Duration::from_secs(1);

/// After a stop, the longest workers keep reading from clients that keep sending, counted from
/// the stop, without the time the worker spent waiting for the output.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// A client's number: 1, 2, 3, … in accept order, never reused in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(u64);

impl ClientId {
    /// The client numbered `number`.
    pub fn new(number: u64) -> ClientId {
        ClientId(number)
    }

    /// The number itself.
    pub fn number(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {}", self.0)
    }
}

/// What a worker needs to know from the configuration.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Longest wait in `poll(2)` before the worker checks its stop flag again.
    pub poll_interval: Duration,
    /// Disconnect a client silent for this long; `None` never does.
    pub idle_timeout: Option<Duration>,
    /// Longest message handed out whole; longer ones come in pieces.
    pub max_line: usize,
    /// How output looks.
    pub output: OutputOptions,
    /// Send every byte received back to its client.
    pub echo: bool,
    /// How each client's bytes are cut into messages.
    pub framing: Framing,
    /// Refuse telnet negotiation and take telnet commands out of the stream.
    pub telnet: bool,
    /// Sent to each client as it is accepted, before anything it sends is read.
    pub greeting: Option<Arc<Message>>,
}

/// What every worker shares with the others and the listener.
#[derive(Clone)]
pub struct Shared {
    pub shutdown: Shutdown,
    pub output: Output,
    pub large_reads: LargeReads,
    /// The operator's input, when it is read: its bell wakes the worker for typed messages.
    pub listening: Option<Listening>,
}

/// Why a client's connection ended.
#[derive(Debug)]
pub enum End {
    /// The client closed its side (EOF).
    Closed,
    /// The server stopped; the client's pending bytes were read first.
    Stopped,
    /// The client sent nothing for the idle timeout.
    Idle(Duration),
    /// A UDP source sent nothing for the idle timeout: how a UDP client ends.
    Silent(Duration),
    /// Reading failed, for example a reset by the client.
    Failed(io::Error),
    /// The drain limit passed while the client was still sending: its last message is cut.
    /// Reported as [`End::Stopped`] once the cut message is printed.
    Cut,
    /// The TLS handshake failed (the reason); the warning said so when it happened.
    Handshake(String),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Closed => f.write_str("closed by client"),
            End::Stopped | End::Cut => f.write_str("server stopping"),
            End::Idle(timeout) => write!(f, "idle for {}", humantime::format_duration(*timeout)),
            End::Silent(timeout) => write!(
                f,
                "no datagram for {}",
                humantime::format_duration(*timeout)
            ),
            End::Failed(err) => f.write_str(&describe(err)),
            End::Handshake(why) => write!(f, "TLS handshake failed: {why}"),
        }
    }
}

/// What a worker reports when its client is gone.
#[derive(Debug)]
pub struct ClientReport {
    pub id: ClientId,
    pub peer: Peer,
    /// Messages and bytes received and sent, and for how long.
    pub totals: ClientTotals,
    /// Typed messages the client did not get: its queue was full, or it left first.
    pub dropped: Dropped,
    pub end: End,
}

impl ClientReport {
    /// Logs that the client is gone, why, and what it sent: a warning if it failed or idled.
    pub fn log(&self) {
        let level = match self.end {
            End::Failed(_) | End::Idle(_) => Level::Warn,
            _ => Level::Info,
        };
        let sent = match self.totals.sent {
            0 => String::new(),
            n => format!("; sent {}", counted(n, "byte")),
        };
        let dropped = match self.dropped.messages {
            0 => String::new(),
            n => format!(
                "; dropped {} of {} it did not read",
                counted(self.dropped.bytes, "byte"),
                counted(n, "typed message")
            ),
        };
        log!(
            level,
            "{} disconnected ({}) after {}: {}, {}{sent}{dropped}",
            self.id,
            self.end,
            crate::format::rounded(self.totals.connected_for),
            counted(self.totals.messages, "message"),
            counted(self.totals.bytes, "byte")
        );
    }
}

/// One client's read loop; consumed by [`WorkerHandle::spawn`].
pub struct Worker {
    id: ClientId,
    peer: Peer,
    /// The listener it came through, named in the connect line when there are several.
    listener: Option<Spec>,
    conn: Connection,
    /// Set by the listener's [`WorkerHandle::stop`]; read between polls.
    stop: Arc<AtomicBool>,
    shutdown: Shutdown,
    settings: WorkerSettings,
    output: Output,
    /// What goes to the client; shared with the operator's input, which queues typed messages.
    outbox: Arc<Outbox>,
    listening: Option<Listening>,
    /// The chunk being sent and how much of it is written, while the socket has no room for
    /// the rest.
    sending: Option<(Chunk, usize)>,
    /// Set when a write to the client failed: nothing more is sent.
    cannot_send: bool,
    /// Bytes written to the client.
    sent: u64,
    framer: Framer,
    /// The telnet filter (`--telnet`).
    telnet: Option<Telnet>,
    format: ClientFormat,
    /// Read buffer; allocated when the client first sends, cut back to [`QUIET_CHUNK`] when it
    /// goes quiet.
    buf: Vec<u8>,
    /// Formatted lines not yet written; allocated while the client sends.
    lines: Vec<u8>,
    messages: u64,
    bytes: u64,
    /// When the client last sent something (or connected).
    heard: Instant,
    /// Bytes received since the client last paused for longer than [`RECENTLY`].
    burst: usize,
    /// The shared allowance of large read buffers, and this worker's share of it while its
    /// buffer is larger than [`READ_CHUNK`].
    large_reads: LargeReads,
    large: Option<LargeRead>,
    /// Whether the drain has begun, and how many bytes the socket held then that are not read
    /// yet.
    draining: bool,
    owed: u64,
    /// Time spent after the stop waiting for the output, before the drain began or while bytes
    /// were owed; the drain limit leaves it out.
    output_wait: Duration,
    /// Messages formatted into `lines` since the last hand-over.
    unhanded: u64,
}

/// The allowance of large read buffers shared by all workers: [`LARGE_READERS`] at once.
#[derive(Debug, Clone, Default)]
pub struct LargeReads(Arc<AtomicUsize>);

impl LargeReads {
    /// One large buffer's share, if fewer than [`LARGE_READERS`] are taken.
    fn take(&self) -> Option<LargeRead> {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |taken| {
                (taken < LARGE_READERS).then_some(taken + 1)
            })
            .ok()
            .map(|_| LargeRead(Arc::clone(&self.0)))
    }

    /// How many shares are taken now.
    pub fn taken(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One worker's share of [`LargeReads`], given back when dropped.
#[derive(Debug)]
struct LargeRead(Arc<AtomicUsize>);

impl Drop for LargeRead {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a worker's poll saw.
enum Wake {
    Readable,
    /// Room to send, or messages to send.
    Outgoing,
    /// The stop; `quiet` when the same poll also looked at the socket for bytes and saw none.
    Stop {
        quiet: bool,
    },
    Timeout,
}

impl Worker {
    /// A worker for the client `id` connected from `peer` through `listener` on `conn`.
    /// `named` says whether the connect line names the listener (when there are several).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: ClientId,
        peer: Peer,
        conn: Connection,
        (listener, named): (Spec, bool),
        settings: WorkerSettings,
        shared: Shared,
        outbox: Arc<Outbox>,
    ) -> Worker {
        let Shared {
            shutdown,
            output,
            large_reads,
            listening,
        } = shared;
        // Queued before the outbox can be reached by typed messages: the greeting goes first
        // (sent once the connection is set up, after a TLS handshake).
        if let Some(greeting) = &settings.greeting {
            outbox.push_greeting(greeting);
        }
        Worker {
            id,
            format: ClientFormat::new(id, peer.clone(), listener.clone(), settings.output)
                .with_framing(settings.framing),
            peer,
            listener: named.then_some(listener),
            conn,
            stop: Arc::new(AtomicBool::new(false)),
            shutdown,
            framer: settings.framing.framer(settings.max_line),
            telnet: settings.telnet.then(Telnet::default),
            settings,
            output,
            outbox,
            listening,
            sending: None,
            cannot_send: false,
            sent: 0,
            buf: Vec::new(),
            lines: Vec::new(),
            messages: 0,
            bytes: 0,
            heard: Instant::now(),
            burst: 0,
            large_reads,
            large: None,
            draining: false,
            owed: 0,
            output_wait: Duration::ZERO,
            unhanded: 0,
        }
    }

    /// The client's number.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The client's outbox, for the listener to address typed messages through.
    pub fn outbox(&self) -> Arc<Outbox> {
        Arc::clone(&self.outbox)
    }

    fn run(mut self) -> ClientReport {
        let started = Instant::now();
        // A TLS client first completes its handshake (within its timeout, or until the stop):
        // the connect line then says what was agreed.
        let handshake = self.conn.handshake(self.shutdown.waker());
        let agreed = match &handshake {
            Some(Ok(info)) => format!(" ({info})"),
            _ => String::new(),
        };
        let on = match &self.listener {
            Some(listener) => format!(" on {listener}"),
            None => String::new(),
        };
        let (end, cut) = match handshake {
            Some(Err(HandshakeFailure::Stopped)) => (End::Stopped, false),
            Some(Err(failure)) => {
                warn!("{}: TLS handshake failed: {failure}", self.id);
                (End::Handshake(failure.to_string()), false)
            }
            Some(Ok(info)) => {
                self.format.set_tls(info);
                self.serve_connected(&agreed, &on)
            }
            None => self.serve_connected(&agreed, &on),
        };
        if !matches!(end, End::Failed(_) | End::Handshake(_)) {
            self.send_rest(matches!(end, End::Stopped));
            self.conn.close();
        }
        if let Some((chunk, _)) = self.sending.take() {
            self.outbox.put_back(chunk);
        }
        let dropped = self.outbox.close();
        let Worker {
            framer,
            format,
            lines,
            messages,
            unhanded,
            settings,
            ..
        } = &mut self;
        format.stamp();
        let show = settings.output.format != Format::Hex;
        framer.finish(cut, |piece| {
            record(piece, messages, unhanded, show.then_some(&*format), lines)
        });
        self.hand_over();
        let totals = ClientTotals {
            messages: self.messages,
            bytes: self.bytes,
            sent: self.sent,
            connected_for: started.elapsed(),
        };
        self.format
            .disconnect(&mut self.lines, &totals, &end.to_string());
        self.hand_over();
        let report = ClientReport {
            id: self.id,
            peer: self.peer.clone(),
            totals,
            dropped,
            end,
        };
        // At a stop thousands of workers end at once, and as many threads contending for stderr
        // took longer than ending them (150 ms of 370 for 10,000 clients): the listener logs
        // those as it joins them, in client order.
        if !matches!(report.end, End::Stopped | End::Handshake(_)) {
            report.log();
        }
        report
    }

    /// Logs the connect line (with what TLS agreed, and the listener when there are several),
    /// sends the greeting and serves the client; returns how it ended and whether its last
    /// message was cut.
    fn serve_connected(&mut self, agreed: &str, on: &str) -> (End, bool) {
        info!("{} connected from {}{agreed}{on}", self.id, self.peer);
        self.format.stamp();
        self.format.connect(&mut self.lines);
        self.hand_over();
        match self.serve() {
            End::Cut => (End::Stopped, true),
            end => (end, false),
        }
    }

    fn serve(&mut self) -> End {
        loop {
            let mut wait = self.settings.poll_interval;
            if let Some(idle) = self.settings.idle_timeout {
                match idle.checked_sub(self.heard.elapsed()) {
                    Some(left) if !left.is_zero() => wait = wait.min(left),
                    _ => return End::Idle(idle),
                }
            }
            self.send();
            let wake = match self.wait(wait) {
                Ok(wake) => wake,
                Err(err) => return End::Failed(err),
            };
            match wake {
                Wake::Stop { quiet } => return self.drain(quiet),
                Wake::Timeout | Wake::Outgoing => {}
                Wake::Readable => match self.read_available() {
                    Ok(Some(end)) => return end,
                    Ok(None) => {}
                    Err(err) => return End::Failed(err),
                },
            }
        }
    }

    /// Polls the socket, the stop pipe and (when the operator's input is read) its bell for at
    /// most `timeout`. The socket is polled for room while a chunk waits to be sent, and not for
    /// bytes while too much echo waits.
    fn wait(&mut self, timeout: Duration) -> io::Result<Wake> {
        // Taken before the outbox is looked at, so a message queued after the look rings it.
        let bell = self.listening.as_ref().map(|l| l.bell.current());
        if self.conn.has_buffered() && !self.shutdown.is_requested() {
            return Ok(Wake::Readable);
        }
        // Something to send and room to send it: no need to wait. (With encrypted bytes still
        // waiting for the socket, wait for room below, the stop included.)
        let pending = self.sending.is_some() || self.conn.wants_write();
        if !pending && self.outbox.is_ready() && !self.cannot_send {
            return Ok(Wake::Outgoing);
        }
        let mut interest = Flags::IN;
        if self.echo_held() {
            interest = Flags::empty();
        }
        if self.sending.is_some() || self.conn.wants_write() {
            interest |= Flags::OUT;
        }
        let mut fds = [
            Fd::new(&self.conn, interest),
            Fd::new(self.shutdown.waker(), Flags::IN),
            match &bell {
                Some(pipe) => Fd::new(pipe.waker(), Flags::IN),
                None => Fd::new(self.shutdown.waker(), Flags::IN),
            },
        ];
        let fds = &mut fds[..if bell.is_some() { 3 } else { 2 }];
        let ready = poll::wait(fds, timeout)?;
        let socket = fds[0].revents();
        if !fds[1].revents().is_empty() || self.stop.load(Ordering::Relaxed) {
            let quiet = interest.contains(Flags::IN)
                && !socket.intersects(Flags::IN | Flags::HUP | Flags::ERR);
            Ok(Wake::Stop { quiet })
        } else if ready == 0 {
            Ok(Wake::Timeout)
        } else if socket.intersects(Flags::IN | Flags::HUP | Flags::ERR) {
            // IN, HUP or ERR: the read says which.
            Ok(Wake::Readable)
        } else {
            Ok(Wake::Outgoing)
        }
    }

    /// Whether reading waits until the client reads what the worker itself sends back and the
    /// client has not read yet (its echo, or telnet refusals).
    fn echo_held(&self) -> bool {
        !self.cannot_send && self.outbox.echo_held()
    }

    /// Writes what the outbox holds until it is empty or the socket has no room; records each
    /// greeting and typed message sent whole. A failed write ends sending (the read that follows
    /// says why the client is gone).
    fn send(&mut self) {
        if self.cannot_send {
            return;
        }
        match self.conn.flush() {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
            Err(err) => {
                debug!("{}: cannot send: {}", self.id, describe(&err));
                self.cannot_send = true;
                return;
            }
        }
        loop {
            let (chunk, offset) = match self.sending.take() {
                Some(sending) => sending,
                None => match self.outbox.next() {
                    Some(chunk) => (chunk, 0),
                    None => return,
                },
            };
            match self.conn.write(&chunk.bytes()[offset..]) {
                Ok(written) if offset + written == chunk.bytes().len() => self.sent_whole(&chunk),
                Ok(written) => self.sending = Some((chunk, offset + written)),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.sending = Some((chunk, offset));
                    return;
                }
                Err(err) => {
                    debug!("{}: cannot send: {}", self.id, describe(&err));
                    self.outbox.put_back(chunk);
                    self.cannot_send = true;
                    return;
                }
            }
        }
    }

    /// Counts a chunk sent whole, logs it and, in JSON, records it as a `sent` event.
    fn sent_whole(&mut self, chunk: &Chunk) {
        let bytes = chunk.bytes();
        self.sent += bytes.len() as u64;
        self.outbox.sent(chunk);
        if chunk.kind() != Kind::Echo {
            debug!(
                "sent {} to {}",
                counted(bytes.len() as u64, "byte"),
                self.id
            );
            if self.settings.output.format == Format::Json {
                self.format.stamp();
                self.format.sent(&mut self.lines, bytes);
                self.hand_over();
            }
        }
    }

    /// Before the connection closes: sends what is still queued. At a stop, first lets the
    /// operator's input finish (a line typed just before the stop is queued then); both within
    /// the drain limit. Otherwise (the client closed or idled) it gets the same limit from now.
    fn send_rest(&mut self, stopping: bool) {
        let start = Instant::now();
        let past = |worker: &Worker| {
            if stopping {
                worker.past_drain_limit()
            } else {
                start.elapsed() >= DRAIN_LIMIT
            }
        };
        if let (true, Some(listening)) = (stopping, &self.listening) {
            let stop = self.shutdown.requested_at().unwrap_or(start);
            listening.wait_finished(stop + DRAIN_LIMIT + self.output_wait);
        }
        loop {
            self.send();
            let pending = self.sending.is_some() || self.conn.wants_write();
            if !pending || self.cannot_send || past(self) {
                return;
            }
            let mut fds = [Fd::new(&self.conn, Flags::OUT)];
            if poll::wait(&mut fds, DRAIN_GRACE).is_err() {
                return;
            }
        }
    }

    /// Reads until the socket has nothing more, the per-wake budget is spent, a stop comes (while
    /// serving), or every owed byte is read and the drain limit has passed (while draining),
    /// writing the formatted lines of each read. Returns how the connection ended, if it did.
    fn read_available(&mut self) -> io::Result<Option<End>> {
        let mut total = 0;
        let mut end = None;
        for _ in 0..READS_PER_WAKE {
            // A stop ends the batch: what is left is the drain's to read, under its rules.
            if !self.draining && self.shutdown.is_requested() {
                break;
            }
            if self.buf.is_empty() {
                self.buf = vec![0; QUIET_CHUNK];
            }
            let asked = self.buf.len();
            match self.conn.read(&mut self.buf) {
                Ok(0) => {
                    end = Some(End::Closed);
                    break;
                }
                Ok(n) => {
                    total += n;
                    if self.heard.elapsed() > RECENTLY {
                        self.burst = 0;
                    }
                    self.burst += n;
                    self.heard = Instant::now();
                    if let Err(err) = self.consume(n) {
                        // Said once, in the disconnect line (a warning).
                        self.hand_over();
                        return Ok(Some(End::Failed(io::Error::new(
                            io::ErrorKind::InvalidData,
                            err.0,
                        ))));
                    }
                    self.hand_over();
                    // After the hand-over, so the output wait of the last owed bytes is left out
                    // of the drain limit too.
                    self.owed = self.owed.saturating_sub(n as u64);
                    if n == asked && n < READ_CHUNK_MAX {
                        // More is waiting, most likely: read it in larger pieces, at once
                        // READ_CHUNK, past it only with a share of the large buffers.
                        let larger = (2 * n).clamp(READ_CHUNK, READ_CHUNK_MAX);
                        if larger > READ_CHUNK && self.large.is_none() {
                            self.large = self.large_reads.take();
                        }
                        if larger <= READ_CHUNK || self.large.is_some() {
                            self.buf = vec![0; larger];
                        }
                    }
                    if self.draining && self.owed == 0 && self.past_drain_limit() {
                        break;
                    }
                    // Too much echo waits for the client to read: wait for room before reading on
                    // (at a stop the owed bytes are read all the same).
                    if !self.draining && self.echo_held() {
                        break;
                    }
                    if self.read_all_there_was(n, asked) {
                        self.quiet();
                        break;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    // Nothing more is owed, whatever FIONREAD said: a drain that still counted
                    // on it would spin here.
                    self.owed = 0;
                    self.quiet();
                    break;
                }
                Err(err) => {
                    self.hand_over();
                    return Err(err);
                }
            }
        }
        debug!("{}: read {total} bytes", self.id);
        self.hand_over();
        Ok(end)
    }

    /// Whether a read of `n` bytes into a buffer of `asked` found all the socket had, so that
    /// another read would only say so: one that left a quiet client's small buffer unfilled did
    /// (a lone line costs one system call less); the poll tells when more comes. (A TLS session
    /// may have read only part of what the socket holds, or hold more plaintext: the poll sees
    /// the former, and `wait` asks the session for the latter before it polls.) Within a burst,
    /// where another read often finds more, and in the drain, which counts what is owed, the
    /// next read decides.
    fn read_all_there_was(&self, n: usize, asked: usize) -> bool {
        n < asked && asked == QUIET_CHUNK && !self.draining
    }

    /// The client is quiet for now: hands its lines over and gives the memory back until it
    /// sends again, all but the small buffer its next line is read into.
    fn quiet(&mut self) {
        self.hand_over();
        if self.buf.len() > QUIET_CHUNK {
            self.buf.truncate(QUIET_CHUNK);
            self.buf.shrink_to_fit();
        }
        self.lines = Vec::new();
        self.large = None;
        self.framer.shrink();
    }

    /// Frames and formats the first `n` bytes of the read buffer (and echoes them if asked); with
    /// `--telnet`, after taking the telnet commands out and queueing the answers.
    ///
    /// # Errors
    /// When the framing cannot go on (a length prefix over its limit).
    fn consume(&mut self, n: usize) -> Result<(), FramingError> {
        let mut len = n;
        if let Some(telnet) = &mut self.telnet {
            let mut plain = Vec::with_capacity(n);
            let mut replies = Vec::new();
            telnet.filter(&self.buf[..n], &mut plain, &mut replies);
            if !replies.is_empty() && !self.cannot_send {
                self.outbox.push_echo(&replies);
            }
            len = plain.len();
            self.buf[..len].copy_from_slice(&plain);
        }
        let Worker {
            framer,
            format,
            lines,
            buf,
            messages,
            unhanded,
            bytes,
            settings,
            ..
        } = self;
        // Room for the data and its prefixes, in one allocation for most reads.
        lines.reserve(len + len / 4);
        format.stamp();
        let data = &buf[..len];
        let framed = if settings.output.format == Format::Hex {
            format.hex(lines, *bytes, data);
            // Still framed, so the counts of messages mean the same in every format.
            framer.push(data, |piece| record(piece, messages, unhanded, None, lines))
        } else {
            frame_text(framer, format, data, messages, unhanded, lines)
        };
        *bytes += n as u64;
        if self.settings.echo {
            self.echo(len);
        }
        framed
    }

    /// Sends the first `n` bytes of the read buffer back to the client: at once if nothing else
    /// waits and the socket has room, else queued behind what waits (the read loop stops while
    /// too much echo waits, so the client that does not read it is slowed, not dropped).
    fn echo(&mut self, n: usize) {
        if self.cannot_send {
            return;
        }
        let mut rest = &self.buf[..n];
        if self.sending.is_none() && !self.outbox.is_ready() {
            while !rest.is_empty() {
                match self.conn.write(rest) {
                    Ok(written) => {
                        rest = &rest[written..];
                        self.sent += written as u64;
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) => {
                        debug!("{}: cannot echo: {}", self.id, describe(&err));
                        self.cannot_send = true;
                        return;
                    }
                }
            }
        }
        if !rest.is_empty() {
            self.outbox.push_echo(rest);
        }
    }

    /// Writes the formatted lines out (blocking while the output is slow). The time this takes
    /// after the stop, while bytes are owed (or before the drain has begun, when every byte in
    /// the socket will be), is left out of the drain limit.
    fn hand_over(&mut self) {
        if self.lines.is_empty() && self.unhanded == 0 {
            return;
        }
        let began = (!self.draining || self.owed > 0).then(Instant::now);
        self.output.write(&self.lines, self.unhanded);
        self.lines.clear();
        self.unhanded = 0;
        if let (Some(began), Some(stop)) = (began, self.shutdown.requested_at()) {
            // A wait the stop came in the middle of counts from the stop.
            self.output_wait += began.max(stop).elapsed();
        }
    }

    /// Whether the client was streaming when last heard: it sent at least [`READ_CHUNK`] in
    /// reads no more than [`RECENTLY`] apart, the last of them less than [`RECENTLY`] ago.
    fn streaming(&self) -> bool {
        self.heard.elapsed() < RECENTLY && self.burst >= READ_CHUNK
    }

    /// Whether [`DRAIN_LIMIT`] of the client's time has passed since the stop.
    fn past_drain_limit(&self) -> bool {
        let stop = self.shutdown.requested_at().unwrap_or_else(Instant::now);
        stop.elapsed() >= DRAIN_LIMIT + self.output_wait
    }

    /// After a stop: reads every byte the socket holds now (acknowledged, so the client believes
    /// it delivered), however long the output takes to print them; then what the client still
    /// sends, until the socket stays quiet for [`DRAIN_GRACE`] (an idle client: not at all) or
    /// [`DRAIN_LIMIT`] has passed since the stop, not counting the time spent waiting for the
    /// output to take the owed bytes. A client that keeps sending is cut off then; one that
    /// stopped sending before the stop never is.
    ///
    /// `quiet`: the poll that saw the stop saw no byte in the socket, after the stop, so nothing
    /// acknowledged before it is unread.
    fn drain(&mut self, quiet: bool) -> End {
        self.draining = true;
        // A client that was streaming may have bytes held back in its kernel, waiting for a window
        // update that Linux sends with a delayed ACK (40 ms or more later) or that crosses the
        // network. Only such a client gets a grace period on the first look; one that was idle,
        // or sent a line or two, ends at once.
        let streaming = self.streaming();
        if quiet && !streaming && !self.conn.has_buffered() {
            // Nothing owed and no grace: no need to ask the socket again (at a stop of 10,000
            // idle clients, the three system calls that would ask took a tenth of the stop).
            return End::Stopped;
        }
        self.owed = match self.conn.queued() {
            Ok(queued) => queued,
            Err(err) => {
                debug!("{}: cannot ask what the socket holds: {err}", self.id);
                0
            }
        };
        let mut grace = if streaming {
            DRAIN_GRACE
        } else {
            Duration::ZERO
        };
        loop {
            if self.owed == 0 && !self.conn.has_buffered() {
                self.ack_now();
                let mut fds = [Fd::new(&self.conn, Flags::IN)];
                match poll::wait(&mut fds, grace) {
                    Ok(0) => return End::Stopped,
                    Ok(_) => {}
                    Err(err) => return End::Failed(err),
                }
                // Readable with nothing owed: bytes (or the close) that came after the drain
                // began. Past the limit, only a close is still taken.
                if self.past_drain_limit() && !self.conn.is_closed_by_peer() {
                    warn!("{} still sending after the stop; closing", self.id);
                    return End::Cut;
                }
            }
            match self.read_available() {
                Ok(Some(end)) => return end,
                Ok(None) => {}
                Err(err) => return End::Failed(err),
            }
            grace = DRAIN_GRACE;
        }
    }

    /// Sends a pending (delayed) ACK now, where the system allows it, so a client held back by
    /// a full window learns at once that there is room and sends the rest.
    fn ack_now(&self) {
        if let Err(err) = self.conn.ack_now() {
            debug!("{}: cannot ask for a quick ACK: {err}", self.id);
        }
    }
}

/// Counts `piece` (a message cut into pieces counts once) and formats it into `lines`, unless
/// the output shows bytes rather than messages (`format` is `None`).
pub(crate) fn record(
    piece: Piece<'_>,
    messages: &mut u64,
    unhanded: &mut u64,
    format: Option<&ClientFormat>,
    lines: &mut Vec<u8>,
) {
    if !piece.continued {
        *messages += 1;
        *unhanded += 1;
    }
    if let Some(format) = format {
        format.message(lines, piece);
    }
}

/// Frames `data` and formats its messages as text into `lines`, counting them as [`record`]
/// does. The usual case, a read of whole lines of printable text, takes a fast path: checked for
/// bytes to escape all at once, each line formatted with no further look (8 clients streaming
/// 100-byte lines: about a third less user time than line by line). The line the last
/// read left unfinished is completed through the framer first; whatever the fast path does not
/// take (the unfinished last line, a line over the maximum, anything to escape or a `\r`) goes
/// through it after, when it holds nothing.
///
/// # Errors
/// As [`Framer::push`].
pub(crate) fn frame_text(
    framer: &mut Framer,
    format: &ClientFormat,
    data: &[u8],
    messages: &mut u64,
    unhanded: &mut u64,
    lines: &mut Vec<u8>,
) -> Result<(), FramingError> {
    let mut rest = data;
    if framer.ends_at_newline() && format.formats_plain_lines() {
        if framer.whole_lines_up_to().is_none() {
            if let Some(first) = memchr::memchr(b'\n', rest) {
                framer.push(&rest[..=first], |piece| {
                    record(piece, messages, unhanded, Some(format), lines)
                })?;
                rest = &rest[first + 1..];
            }
        }
        if let (Some(max), Some(last)) = (framer.whole_lines_up_to(), memchr::memrchr(b'\n', rest))
        {
            let whole = &rest[..=last];
            if crate::output::all_plain_lines(whole) {
                let mut start = 0;
                for end in memchr::memchr_iter(b'\n', whole) {
                    let line = &whole[start..end];
                    if line.len() > max {
                        break;
                    }
                    format.plain_line(lines, line);
                    *messages += 1;
                    *unhanded += 1;
                    start = end + 1;
                }
                rest = &rest[start..];
            }
        }
    }
    framer.push(rest, |piece| {
        record(piece, messages, unhanded, Some(format), lines)
    })
}

/// What the listener keeps for a live worker: its thread, its stop flag and its number.
#[derive(Debug)]
pub struct WorkerHandle {
    id: ClientId,
    /// Shared with the worker; set by [`WorkerHandle::stop`], read by the worker between polls.
    stop: Arc<AtomicBool>,
    thread: Thread<ClientReport>,
}

impl WorkerHandle {
    /// Starts `worker` on its own named thread (`client-N`) on one of `stacks`.
    ///
    /// # Errors
    /// When the thread cannot be created (out of memory or over the thread limit); the caller
    /// refuses that one client.
    pub fn spawn(worker: Worker, stacks: &mut Stacks) -> io::Result<WorkerHandle> {
        let id = worker.id;
        let stop = Arc::clone(&worker.stop);
        let thread = stacks.spawn(&format!("client-{}", id.number()), move || worker.run())?;
        Ok(WorkerHandle { id, stop, thread })
    }

    /// This worker's client.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// Asks the worker to drain and end at its next wake; pair with a write to the stop pipe.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether the worker's thread has ended (then `join` does not block).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the worker to end, gives its stack back to `stacks`, and returns its report.
    ///
    /// # Errors
    /// The client's number, when the worker panicked.
    pub fn join(self, stacks: &mut Stacks) -> Result<ClientReport, ClientId> {
        self.thread.join(stacks).map_err(|_| self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod text_fast_path {
        use super::*;
        use crate::format::Style;
        use crate::framing::chunked;
        use proptest::prelude::*;

        fn format(format: Format, style: Style, timestamps: bool) -> ClientFormat {
            let mut format = ClientFormat::new(
                ClientId::new(3),
                Peer::Ip("127.0.0.1:5000".parse().expect("literal")),
                Spec::Tcp("127.0.0.1:7878".parse().expect("literal")),
                OutputOptions {
                    format,
                    style,
                    timestamps,
                    ..OutputOptions::default()
                },
            );
            format.stamp();
            format
        }

        /// What the chunks become, with the framer's end: the formatted text and the count of
        /// messages, through `frame_text` or through the framer alone.
        fn formatted(
            framing: Framing,
            max: usize,
            format: &ClientFormat,
            chunks: &[&[u8]],
            fast: bool,
        ) -> (Vec<u8>, u64, u64) {
            let mut framer = framing.framer(max);
            let (mut lines, mut messages, mut unhanded) = (Vec::new(), 0, 0);
            for chunk in chunks {
                let framed = if fast {
                    frame_text(
                        &mut framer,
                        format,
                        chunk,
                        &mut messages,
                        &mut unhanded,
                        &mut lines,
                    )
                } else {
                    framer.push(chunk, |piece| {
                        record(
                            piece,
                            &mut messages,
                            &mut unhanded,
                            Some(format),
                            &mut lines,
                        )
                    })
                };
                framed.expect("no length prefix to fail");
            }
            framer.finish(false, |piece| {
                record(
                    piece,
                    &mut messages,
                    &mut unhanded,
                    Some(format),
                    &mut lines,
                )
            });
            (lines, messages, unhanded)
        }

        /// What `frame_text` makes of `chunks`, read one after the other: the formatted text, the
        /// messages and the messages not handed over; `framer` keeps what is held.
        fn framed_text(
            framer: &mut Framer,
            format: &ClientFormat,
            chunks: &[&[u8]],
        ) -> (Vec<u8>, u64, u64) {
            let (mut lines, mut messages, mut unhanded) = (Vec::new(), 0, 0);
            for chunk in chunks {
                frame_text(
                    framer,
                    format,
                    chunk,
                    &mut messages,
                    &mut unhanded,
                    &mut lines,
                )
                .expect("lines");
            }
            (lines, messages, unhanded)
        }

        /// Mostly printable lines, with CRs, other bytes and long lines now and then; in half
        /// the cases printable lines only, which the fast path takes whole.
        fn stream() -> impl Strategy<Value = Vec<u8>> {
            let bytes = proptest::collection::vec(
                prop_oneof![
                    12 => b'a'..=b'z',
                    4 => Just(b'\n'),
                    1 => Just(b'\r'),
                    1 => Just(b'\\'),
                    1 => any::<u8>(),
                ],
                0..400,
            );
            (bytes, any::<bool>()).prop_map(|(mut bytes, printable)| {
                if printable {
                    for b in &mut bytes {
                        if *b != b'\n' && !b.is_ascii_lowercase() {
                            *b = b'x';
                        }
                    }
                }
                bytes
            })
        }

        proptest! {
            #[test]
            fn formats_exactly_what_the_framer_alone_does(
                bytes in stream(),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
                max in 1usize..60,
                framing in prop_oneof![
                    Just(Framing::Lines),
                    Just(Framing::Delimiter(b'a')),
                    Just(Framing::None),
                ],
                raw in any::<bool>(),
                json in any::<bool>(),
                timestamps in any::<bool>(),
            ) {
                let style = if raw { Style::Raw } else { Style::Escaped };
                let kind = if json { Format::Json } else { Format::Text };
                let format = format(kind, style, timestamps);
                let chunks = chunked(&bytes, &cuts);
                prop_assert_eq!(
                    formatted(framing, max, &format, &chunks, true),
                    formatted(framing, max, &format, &chunks, false)
                );
            }
        }

        #[test]
        fn takes_whole_plain_lines_and_leaves_the_rest_to_the_framer() {
            let format = format(Format::Text, Style::Escaped, false);
            let mut framer = Framing::Lines.framer(10);
            let (lines, messages, unhanded) = framed_text(
                &mut framer,
                &format,
                &[b"one\ntwo\nthr", b"ee\nfour\n\x01\nlong line here\nend"],
            );
            assert_eq!(
                String::from_utf8_lossy(&lines),
                "[3] one\n[3] two\n[3] three\n[3] four\n[3] \\x01\n[3] long line \n[3+] here\n"
            );
            assert_eq!((messages, unhanded), (6, 6));
            assert_eq!(framer.whole_lines_up_to(), None, "\"end\" is held");
        }

        #[test]
        fn a_line_cut_at_the_end_of_a_read_goes_on_in_the_next() {
            let format = format(Format::Text, Style::Escaped, false);
            let mut framer = Framing::Lines.framer(5);
            // Two whole pieces, nothing held: the next read's first line still continues it.
            let (lines, messages, _) =
                framed_text(&mut framer, &format, &[b"abcdefghij", b"xy\nzz\n"]);
            assert_eq!(
                String::from_utf8_lossy(&lines),
                "[3] abcde\n[3+] fghij\n[3+] xy\n[3] zz\n"
            );
            assert_eq!(messages, 2);
        }
    }

    #[test]
    fn large_reads_are_shared_out_up_to_the_limit_and_given_back() {
        let reads = LargeReads::default();
        let shares: Vec<LargeRead> = (0..LARGE_READERS)
            .map(|_| reads.take().expect("under the limit"))
            .collect();
        assert!(reads.take().is_none(), "one more than the limit");
        assert_eq!(reads.taken(), LARGE_READERS);
        drop(shares);
        assert_eq!(reads.taken(), 0);
        assert!(reads.take().is_some());
    }

    /// A worker for client 1 on the accepted `stream`, printing to nowhere.
    fn worker_on(
        stream: std::net::TcpStream,
        peer: std::net::SocketAddr,
        addr: std::net::SocketAddr,
        shutdown: &Shutdown,
        poll_interval: Duration,
    ) -> Worker {
        worker_for(
            Connection::Tcp(stream),
            Peer::ip(peer),
            Spec::Tcp(addr),
            shutdown,
            poll_interval,
        )
    }

    /// A worker for client 1 on `conn`, printing to nowhere.
    fn worker_for(
        conn: Connection,
        peer: Peer,
        spec: Spec,
        shutdown: &Shutdown,
        poll_interval: Duration,
    ) -> Worker {
        let settings = WorkerSettings {
            poll_interval,
            idle_timeout: None,
            max_line: 1024,
            output: OutputOptions::default(),
            echo: false,
            framing: Framing::Lines,
            telnet: false,
            greeting: None,
        };
        let output = Output::new(
            crate::output::Sink::Writer(Box::new(io::sink())),
            shutdown.clone(),
        );
        let shared = Shared {
            shutdown: shutdown.clone(),
            output,
            large_reads: LargeReads::default(),
            listening: None,
        };
        Worker::new(
            ClientId::new(1),
            peer,
            conn,
            (spec, false),
            settings,
            shared,
            Arc::default(),
        )
    }

    /// A worker for client 1 on one end of a Unix socket pair, the client's end returned with
    /// it: what one end writes is readable at the other when the write returns. `send_buffer`
    /// makes the worker's end small, so the socket takes big chunks in pieces.
    fn paired_worker(
        send_buffer: Option<usize>,
        shutdown: &Shutdown,
    ) -> (std::os::unix::net::UnixStream, Worker) {
        let (client, server) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
        server.set_nonblocking(true).expect("non-blocking");
        if let Some(size) = send_buffer {
            socket2::SockRef::from(&server)
                .set_send_buffer_size(size)
                .expect("send buffer");
        }
        let worker = worker_for(
            Connection::Unix(server),
            Peer::Local(None),
            Spec::Unix(crate::listen::UnixPath::Abstract("test".into())),
            shutdown,
            Duration::from_secs(3600),
        );
        (client, worker)
    }

    /// A client that fills its small buffer is read in larger pieces: at once in
    /// [`READ_CHUNK`], then in twice the last full read, but only with one of the
    /// [`LARGE_READERS`] shares; once it goes quiet, the worker keeps the small buffer alone.
    #[test]
    fn read_buffers_grow_with_a_sender_and_shrink_when_it_goes_quiet() {
        // A Unix socket pair: what one end writes is readable at the other when the write
        // returns, and so is its shutdown, so every read below sees all that was sent.
        // `last` bytes are sent before the end; then the buffer and the shares taken are seen.
        let run = |shares_left: bool, last: usize| {
            let shutdown = Shutdown::new().expect("pipe");
            let (mut client, mut worker) = paired_worker(None, &shutdown);
            // Room for the largest burst at once (the default is 8 KiB on some systems).
            socket2::SockRef::from(&client)
                .set_send_buffer_size(1 << 20)
                .expect("send buffer");
            let others: Vec<_> = if shares_left {
                Vec::new()
            } else {
                (0..LARGE_READERS)
                    .map(|_| worker.large_reads.take().expect("a share"))
                    .collect()
            };
            let taken = |worker: &Worker| worker.large_reads.taken() - others.len();
            assert!(
                worker.buf.is_empty(),
                "a client that never sent holds no buffer"
            );

            client.write_all(b"one line\n").expect("send");
            assert!(worker.read_available().expect("read").is_none());
            assert_eq!(worker.buf.len(), QUIET_CHUNK);

            // Fills the small buffer, then one of READ_CHUNK; the next read finds none left.
            let burst = vec![b'x'; QUIET_CHUNK + 3 * READ_CHUNK];
            client
                .write_all(&burst[..QUIET_CHUNK + READ_CHUNK])
                .expect("send");
            assert!(worker.read_available().expect("read").is_none());
            assert_eq!(
                worker.buf.len(),
                QUIET_CHUNK,
                "quiet again: the small buffer"
            );
            assert_eq!(
                worker.lines.capacity(),
                0,
                "formatted lines kept while quiet"
            );
            assert_eq!(taken(&worker), 0, "a share kept while quiet");

            // Then the end: the last read finds it, not a quiet socket, so the buffer the reads
            // grew to is still there to see.
            client.write_all(&burst[..last]).expect("send");
            client
                .shutdown(std::net::Shutdown::Write)
                .expect("shutdown");
            let end = worker.read_available().expect("read");
            assert!(matches!(end, Some(End::Closed)), "{end:?}");
            assert_eq!(worker.bytes, (9 + QUIET_CHUNK + READ_CHUNK + last) as u64);
            (worker.buf.len(), taken(&worker))
        };
        // A small buffer filled: READ_CHUNK at once, no share needed.
        assert_eq!(run(true, QUIET_CHUNK + 100), (READ_CHUNK, 0));
        // READ_CHUNK filled: twice that, with a share.
        assert_eq!(run(true, QUIET_CHUNK + READ_CHUNK), (2 * READ_CHUNK, 1));
        // A read that does not fill the buffer grows nothing.
        assert_eq!(
            run(true, QUIET_CHUNK + READ_CHUNK + READ_CHUNK * 3 / 2),
            (2 * READ_CHUNK, 1)
        );
        // No share left: it stays at READ_CHUNK.
        assert_eq!(run(false, QUIET_CHUNK + READ_CHUNK), (READ_CHUNK, 0));
    }

    #[test]
    fn bytes_in_the_socket_when_the_stop_comes_are_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        let (stream, peer) = listener.accept().expect("accept");
        stream.set_nonblocking(true).expect("non-blocking");
        client.write_all(b"late line\n").expect("send");
        let mut fds = [Fd::new(&stream, Flags::IN)];
        assert_eq!(
            poll::wait(&mut fds, Duration::from_secs(10)).expect("poll"),
            1,
            "the line never arrived"
        );
        // The stop is requested before the worker first polls: that poll sees the stop and the
        // bytes together, and the bytes are still read.
        let shutdown = Shutdown::new().expect("pipe");
        shutdown.request(crate::shutdown::StopReason::Signal);
        let worker = worker_on(stream, peer, addr, &shutdown, Duration::from_secs(60));
        let mut stacks = Stacks::new(WORKER_STACK);
        let handle = WorkerHandle::spawn(worker, &mut stacks).expect("spawn");
        let report = handle.join(&mut stacks).expect("no panic");
        assert!(matches!(report.end, End::Stopped), "{:?}", report.end);
        assert_eq!((report.totals.messages, report.totals.bytes), (1, 10));
        drop(client);
    }

    /// A chunk the socket takes in pieces is sent to its end, from where each piece stopped:
    /// none counted whole early, none sent twice (random sizes, a small send buffer).
    #[test]
    fn chunks_taken_in_pieces_are_sent_whole_and_in_order() {
        let shutdown = Shutdown::new().expect("pipe");
        let (mut client, mut worker) = paired_worker(Some(4096), &shutdown);
        let mut expected = Vec::new();
        let mut x: u32 = 0x2545_f491;
        for _ in 0..20 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let chunk: Vec<u8> = (0..(x % 50_000) as usize + 1)
                .map(|i| b'a' + ((i as u32 ^ x) % 26) as u8)
                .collect();
            worker.outbox.push_echo(&chunk);
            expected.extend_from_slice(&chunk);
        }
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut received = Vec::new();
        let mut piece = vec![0; 8192];
        let mut partial = false;
        while received.len() < expected.len() {
            worker.send();
            partial |= worker
                .sending
                .as_ref()
                .is_some_and(|(_, offset)| *offset > 0);
            let n = client.read(&mut piece).expect("the rest never came");
            received.extend_from_slice(&piece[..n]);
        }
        worker.send();
        assert!(
            partial,
            "no chunk was taken in pieces: the test shows nothing"
        );
        assert!(received == expected, "other bytes than were queued");
        assert_eq!(worker.sent, expected.len() as u64);
        assert!(worker.sending.is_none() && !worker.outbox.is_ready());
        // A client gone: the write fails, and sending ends rather than waiting for room.
        drop(client);
        worker.outbox.push_echo(b"to nobody\n");
        worker.send();
        assert!(
            worker.cannot_send,
            "a failed write was taken for a full socket"
        );
    }

    /// A chunk the socket took only part of wakes its worker when room comes, with nothing
    /// else to wake it (no bytes from the client, an hour between polls).
    #[test]
    fn a_pending_chunk_wakes_its_worker_when_room_comes() {
        let shutdown = Shutdown::new().expect("pipe");
        let (mut client, mut worker) = paired_worker(Some(4096), &shutdown);
        worker.outbox.push_echo(&[b'x'; 200_000]);
        worker.send();
        assert!(worker.sending.is_some(), "the socket took all of it");
        // Room: the client reads what the socket holds.
        client.set_nonblocking(true).expect("non-blocking");
        let mut piece = vec![0; 1 << 20];
        let mut read = 0;
        while let Ok(n) = client.read(&mut piece) {
            read += n;
        }
        assert!(read > 0, "nothing was sent");
        let wake = worker.wait(Duration::from_secs(10)).expect("poll");
        assert!(
            matches!(wake, Wake::Outgoing),
            "room did not wake the worker"
        );
    }

    /// A queued message wakes its worker at once; once sending has failed, nothing queued
    /// does (the worker would spin on it).
    #[test]
    fn queued_messages_wake_at_once_unless_sending_has_failed() {
        let shutdown = Shutdown::new().expect("pipe");
        let (_client, mut worker) = paired_worker(None, &shutdown);
        worker.outbox.push_echo(b"queued\n");
        let wake = worker.wait(Duration::from_secs(10)).expect("poll");
        assert!(matches!(wake, Wake::Outgoing), "a queued message waited");
        worker.cannot_send = true;
        let wake = worker.wait(Duration::from_millis(50)).expect("poll");
        assert!(
            matches!(wake, Wake::Timeout),
            "woken for what cannot be sent"
        );
    }

    /// An echo waits behind what is already queued for the client, though the socket has room
    /// for it.
    #[test]
    fn an_echo_waits_behind_what_is_already_on_its_way() {
        let shutdown = Shutdown::new().expect("pipe");
        let (mut client, mut worker) = paired_worker(None, &shutdown);
        // Queued, not sent yet (a typed message, say), while the socket has room.
        worker.outbox.push_echo(&[b'a'; 100_000]);
        let mut received = Vec::new();
        let mut piece = vec![0; 1 << 20];
        worker.buf = b"b\n".to_vec();
        worker.echo(2);
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        while received.len() < 100_002 {
            worker.send();
            let n = client.read(&mut piece).expect("the rest never came");
            received.extend_from_slice(&piece[..n]);
        }
        let mut expected = vec![b'a'; 100_000];
        expected.extend_from_slice(b"b\n");
        assert!(
            received == expected,
            "the echo overtook what was on its way"
        );
    }

    /// Sends `n` bytes from the client and runs one wake's reads: how many bytes it read.
    fn one_wake(client: &mut std::os::unix::net::UnixStream, worker: &mut Worker, n: usize) -> u64 {
        let before = worker.bytes;
        client.write_all(&vec![b'a'; n]).expect("send");
        worker.read_available().expect("read");
        worker.bytes - before
    }

    /// A client counts as streaming (and gets the drain's grace at a stop) after a burst of
    /// at least [`READ_CHUNK`], however it was cut into reads; after a silence longer than
    /// [`RECENTLY`] it does not, and its next burst counts from nothing.
    #[test]
    fn a_client_streams_after_a_recent_burst_only() {
        let shutdown = Shutdown::new().expect("pipe");
        let (mut client, mut worker) = paired_worker(None, &shutdown);
        // Read as QUIET_CHUNK, READ_CHUNK and the last 10 bytes: the last read alone is small.
        let burst = QUIET_CHUNK + READ_CHUNK + 10;
        assert_eq!(one_wake(&mut client, &mut worker, burst), burst as u64);
        assert!(worker.streaming(), "not streaming after {burst} bytes");
        worker.heard = Instant::now() - 2 * RECENTLY;
        assert!(!worker.streaming(), "streaming after a silence");
        one_wake(&mut client, &mut worker, 2);
        assert_eq!(worker.burst, 2, "the burst before the silence was counted");
        assert!(!worker.streaming(), "streaming after one line");
    }

    /// A burst is read whole in one wake; while too much echo waits for the client to read,
    /// only one piece is, so a client that does not read its echo is slowed.
    #[test]
    fn while_too_much_echo_waits_one_piece_is_read_per_wake() {
        let shutdown = Shutdown::new().expect("pipe");
        let (mut client, mut worker) = paired_worker(None, &shutdown);
        let read = one_wake(&mut client, &mut worker, 20_000);
        assert_eq!(read, 20_000, "a burst was read in several wakes");
        worker
            .outbox
            .push_echo(&vec![b'e'; crate::outbox::ECHO_HOLD + 1]);
        assert!(worker.echo_held());
        let read = one_wake(&mut client, &mut worker, 20_000);
        assert_eq!(read, QUIET_CHUNK as u64, "read on while the echo was held");
    }

    /// The time a hand-over waits for a slow output is left out of the drain limit from the
    /// stop on, while the drain has not begun or bytes are owed; not before the stop, and not
    /// once the owed bytes are handed over.
    #[test]
    fn output_waits_are_left_out_of_the_drain_limit_while_bytes_are_owed() {
        const PAUSE: Duration = Duration::from_millis(20);
        struct Slow;
        impl Write for Slow {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                std::thread::sleep(PAUSE);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let shutdown = Shutdown::new().expect("pipe");
        let (_client, mut worker) = paired_worker(None, &shutdown);
        worker.output = Output::new(
            crate::output::Sink::Writer(Box::new(Slow)),
            shutdown.clone(),
        );
        let hand_over = |worker: &mut Worker| {
            worker.lines.extend_from_slice(b"[1] x\n");
            worker.unhanded = 1;
            worker.hand_over();
            worker.output_wait
        };
        assert_eq!(hand_over(&mut worker), Duration::ZERO, "before the stop");
        shutdown.request(crate::shutdown::StopReason::Signal);
        let stopped = hand_over(&mut worker);
        assert!(stopped >= PAUSE, "after the stop, before the drain");
        worker.draining = true;
        worker.owed = 10;
        let owed = hand_over(&mut worker);
        assert!(owed >= stopped + PAUSE, "while bytes are owed");
        worker.owed = 0;
        assert_eq!(hand_over(&mut worker), owed, "with nothing owed");
    }

    /// Past the drain limit, what is owed is still read whole; once nothing is owed, a read
    /// ends the wake, so the drain looks at the limit again (and cuts the client off).
    #[test]
    fn past_the_drain_limit_only_owed_bytes_are_read_on() {
        let shutdown = Shutdown::new().expect("pipe");
        let (mut client, mut worker) = paired_worker(None, &shutdown);
        shutdown.request(crate::shutdown::StopReason::Signal);
        std::thread::sleep(DRAIN_LIMIT);
        worker.draining = true;
        assert!(worker.past_drain_limit());
        worker.owed = 20_000;
        let read = one_wake(&mut client, &mut worker, 20_000);
        assert_eq!(read, 20_000, "owed bytes left unread");
        worker.buf = vec![0; QUIET_CHUNK];
        let read = one_wake(&mut client, &mut worker, 20_000);
        assert_eq!(
            read, QUIET_CHUNK as u64,
            "read on past the limit with nothing owed"
        );
    }

    /// A TLS session whose encrypted bytes wait for room, when the client is gone: the flush
    /// fails, and sending ends rather than waiting for room that never comes.
    #[test]
    fn a_failed_tls_flush_ends_sending() {
        let shutdown = Shutdown::new().expect("pipe");
        let crate::listen::tls::testing::Pair {
            server,
            addr,
            peer,
            client,
        } = crate::listen::tls::testing::pair();
        let conn = Connection::Tls(Box::new(server));
        let mut worker = worker_for(
            conn,
            Peer::ip(peer),
            Spec::Tcp(addr),
            &shutdown,
            Duration::from_secs(3600),
        );
        let handshake = crate::listen::tls::testing::client_thread(client, Ok);
        worker
            .conn
            .handshake(shutdown.waker())
            .expect("a TLS connection")
            .expect("the server's handshake");
        let client = handshake
            .join()
            .expect("the client")
            .expect("the client's handshake");
        worker.outbox.push_echo(&vec![b'x'; 1 << 20]);
        worker.send();
        assert!(
            worker.conn.wants_write() && !worker.cannot_send,
            "no encrypted bytes wait for room"
        );
        // Closed with bytes unread: the client's kernel resets the connection.
        drop(client);
        worker.send();
        assert!(
            worker.cannot_send,
            "a failed flush was taken for a full socket"
        );
    }

    /// An echo the socket takes at once is counted as sent, byte for byte.
    #[test]
    fn an_echo_sent_at_once_is_counted() {
        let shutdown = Shutdown::new().expect("pipe");
        let (mut client, mut worker) = paired_worker(None, &shutdown);
        worker.buf = b"echo me\nand me\n".to_vec();
        worker.echo(8);
        assert!(!worker.outbox.is_ready(), "the echo was queued, not sent");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut got = [0; 8];
        client.read_exact(&mut got).expect("the echo");
        assert_eq!(&got, b"echo me\n");
        assert_eq!(worker.sent, 8);
    }

    /// With `--telnet`, a client's negotiation is refused (`DO` is answered `WONT`) and taken
    /// out of its message; once sending has failed, no answer is queued.
    #[test]
    fn telnet_negotiation_is_answered_unless_sending_has_failed() {
        const IAC: u8 = 255;
        const DO: u8 = 253;
        const WONT: u8 = 252;
        let shutdown = Shutdown::new().expect("pipe");
        let (mut client, mut worker) = paired_worker(None, &shutdown);
        worker.telnet = Some(Telnet::default());
        let sent = [IAC, DO, 1, b'h', b'i', b'\n'];
        worker.buf = sent.to_vec();
        worker.consume(sent.len()).expect("framed");
        assert_eq!((worker.messages, &worker.lines[..]), (1, &b"[1] hi\n"[..]));
        worker.send();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut answer = [0; 3];
        client.read_exact(&mut answer).expect("the answer");
        assert_eq!(answer, [IAC, WONT, 1]);
        worker.cannot_send = true;
        worker.buf = sent.to_vec();
        worker.consume(sent.len()).expect("framed");
        assert!(
            !worker.outbox.is_ready(),
            "an answer was queued for a client that cannot be sent to"
        );
    }

    /// What is still queued when a client closes its side is sent before the connection
    /// closes, though the socket takes it in many pieces.
    #[test]
    fn what_is_queued_at_the_end_is_sent_before_the_close() {
        let shutdown = Shutdown::new().expect("pipe");
        let (mut client, mut worker) = paired_worker(Some(4096), &shutdown);
        let queued: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 23) as u8).collect();
        worker.outbox.push_echo(&queued);
        let reader = std::thread::spawn(move || {
            client
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("read timeout");
            let mut received = Vec::new();
            // To the end of the connection (or a timeout, which the comparison then shows).
            let _ = client.read_to_end(&mut received);
            received
        });
        worker.send_rest(false);
        drop(worker);
        let received = reader.join().expect("the reader");
        assert_eq!(received.len(), queued.len());
        assert!(received == queued, "other bytes than were queued");
    }

    /// The per-worker stop flag works on its own: with no write to the stop pipe, a worker whose
    /// flag is set ends within one poll interval (the listener sets it beside the pipe write, so
    /// a lost wake-up still ends the worker).
    #[test]
    fn a_worker_whose_stop_flag_is_set_ends_within_a_poll_interval() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(addr).expect("connect");
        let (stream, peer) = listener.accept().expect("accept");
        stream.set_nonblocking(true).expect("non-blocking");
        let shutdown = Shutdown::new().expect("pipe");
        let worker = worker_on(stream, peer, addr, &shutdown, Duration::from_millis(50));
        let mut stacks = Stacks::new(WORKER_STACK);
        let handle = WorkerHandle::spawn(worker, &mut stacks).expect("spawn");
        handle.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !handle.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the worker ignored its stop flag"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!shutdown.is_requested(), "the stop pipe was never written");
        let report = handle.join(&mut stacks).expect("no panic");
        assert!(matches!(report.end, End::Stopped), "{:?}", report.end);
        drop(client);
    }

    #[test]
    fn client_ids_read_naturally() {
        assert_eq!(ClientId::new(3).to_string(), "client 3");
        assert!(ClientId::new(2) < ClientId::new(10));
    }
}

/// Handles for tests of the code that joins workers.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A handle whose thread panics at once, as a worker with a bug would.
    pub(crate) fn panicking_handle(number: u64, stacks: &mut Stacks) -> WorkerHandle {
        let thread = stacks
            .spawn("client-panics", || -> ClientReport {
                panic!("a worker with a bug (on purpose, in a test)")
            })
            .expect("a thread");
        WorkerHandle {
            id: ClientId::new(number),
            stop: Arc::new(AtomicBool::new(false)),
            thread,
        }
    }
}
