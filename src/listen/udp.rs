//! UDP: one receiver thread per socket serves every source that sends to it. A client is a
//! source address: its first datagram gives it the next client number, its datagrams are framed
//! like a stream except that a datagram's end also ends a message, and it ends after a silence
//! (the idle timeout) or at the stop. No thread per source: per-source state is the framer's
//! unfinished message (at most `--max-line` bytes), the counts, and its outbox (bounded as
//! every client's is).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use socket2::{Domain, Protocol, Socket, Type};

use super::{Peer, Spec};
use crate::access::AccessRules;
use crate::error::describe;
use crate::format::{ClientFormat, ClientTotals, Format, counted};
use crate::framing::Framer;
use crate::outbox::{Chunk, Kind, Outbox};
use crate::poll::{self, Fd, Flags};
use crate::talk::Clients;
use crate::worker::{ClientId, ClientReport, DRAIN_LIMIT, End, Shared, WorkerSettings, record};

/// Largest datagram: the most a UDP payload can hold over IPv4 or IPv6.
const DATAGRAM_MAX: usize = 64 * 1024;

/// Receive buffer asked for: a burst waits here while the receiver prints. The kernel caps it
/// at `net.core.rmem_max` (Linux; 208 KiB by default, so raise it for heavy bursts).
const RECEIVE_BUFFER: usize = 8 * 1024 * 1024;

/// Datagrams read before the receiver hands their lines over and looks at the stop again.
const READS_PER_WAKE: usize = 256;

/// Silence after which a UDP client ends when no `--idle-timeout` is given: datagrams have no
/// close, so a source is over when it stops sending.
pub const DEFAULT_SILENCE: Duration = Duration::from_secs(60);

/// Warnings about refused sources per second, so that a flood from spoofed addresses cannot
/// flood stderr; the others are counted.
const REFUSAL_WARNINGS_PER_SECOND: u32 = 5;

/// Refused sources remembered so each is warned about once; forgotten all at once when full.
const REFUSED_REMEMBERED: usize = 4096;

/// Binds a UDP socket on `addr`, non-blocking, with a large receive buffer.
///
/// # Errors
/// When the address cannot be bound.
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(err) = socket.set_recv_buffer_size(RECEIVE_BUFFER) {
        debug!(
            "cannot enlarge the receive buffer of {addr}: {}",
            describe(&err)
        );
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    if let Ok(size) = socket.recv_buffer_size() {
        // The port chosen for port 0, not the 0 asked for.
        let bound = socket.local_addr().ok().and_then(|a| a.as_socket());
        debug!(
            "receive buffer of udp://{}: {size} bytes",
            bound.unwrap_or(addr)
        );
    }
    Ok(socket.into())
}

/// What a receiver needs besides its socket.
pub struct ReceiverSettings {
    pub worker: WorkerSettings,
    pub access: AccessRules,
    /// Most sources at once (`--max-conns`).
    pub max_sources: usize,
    /// Silence that ends a source.
    pub silence: Duration,
    /// Whether connect lines name this listener (when there are several).
    pub named: bool,
}

/// What a receiver reports when it ends at the stop.
#[derive(Debug, Default)]
pub struct ReceiverReport {
    /// The sources still live at the stop.
    pub stopped: Vec<ClientReport>,
    /// Sources refused (access rules, `--max-conns`).
    pub refused: u64,
    /// Datagrams the kernel dropped for want of room in the receive buffer, where known.
    pub dropped: Option<u64>,
}

/// One UDP listener's receiver, run on its own thread.
pub struct Receiver {
    socket: UdpSocket,
    spec: Spec,
    shared: Shared,
    settings: ReceiverSettings,
    /// The numbering shared with the stream listeners.
    numbers: Arc<AtomicU64>,
    /// Where typed messages are addressed; `None` when stdin is not read.
    clients: Option<Clients>,
    /// Reports of sources that went silent, for the listener's summary.
    ended: Arc<Mutex<Vec<ClientReport>>>,
    sources: HashMap<SocketAddr, Source>,
    refused: HashSet<SocketAddr>,
    refusals: u64,
    warnings: (Instant, u32),
    /// Formatted lines of every source, handed over once per wake.
    lines: Vec<u8>,
    unhanded: u64,
    datagrams: u64,
}

/// One source's state.
struct Source {
    id: ClientId,
    peer: Peer,
    /// Where its replies go: its address as the socket reported it.
    reply_to: SocketAddr,
    framer: Framer,
    format: ClientFormat,
    outbox: Arc<Outbox>,
    messages: u64,
    bytes: u64,
    sent: u64,
    started: Instant,
    heard: Instant,
    /// Whether a framing error was reported for this source (once is enough).
    misframed: bool,
}

impl Receiver {
    /// A receiver for `socket`, bound to `spec`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        socket: UdpSocket,
        spec: Spec,
        shared: Shared,
        settings: ReceiverSettings,
        numbers: Arc<AtomicU64>,
        clients: Option<Clients>,
        ended: Arc<Mutex<Vec<ClientReport>>>,
    ) -> Receiver {
        Receiver {
            socket,
            spec,
            shared,
            settings,
            numbers,
            clients,
            ended,
            sources: HashMap::new(),
            refused: HashSet::new(),
            refusals: 0,
            warnings: (Instant::now(), 0),
            lines: Vec::new(),
            unhanded: 0,
            datagrams: 0,
        }
    }

    /// Receives until the stop; then reads what the socket still holds, sends what is queued,
    /// and ends every source.
    pub fn run(mut self) -> ReceiverReport {
        let mut buf = vec![0; DATAGRAM_MAX];
        loop {
            let bell = self.shared.listening.as_ref().map(|l| l.bell.current());
            // Replies the socket had no room for: wait for room too.
            let blocked = self.send_queued();
            let wait = self.next_silence().min(self.settings.worker.poll_interval);
            let (readable, stopping) = {
                let interest = if blocked {
                    Flags::IN | Flags::OUT
                } else {
                    Flags::IN
                };
                let mut fds = [
                    Fd::new(&self.socket, interest),
                    Fd::new(self.shared.shutdown.waker(), Flags::IN),
                    match &bell {
                        Some(pipe) => Fd::new(pipe.waker(), Flags::IN),
                        None => Fd::new(self.shared.shutdown.waker(), Flags::IN),
                    },
                ];
                let fds = &mut fds[..if bell.is_some() { 3 } else { 2 }];
                match poll::wait(fds, wait) {
                    Ok(_) => (
                        fds[0].revents().intersects(Flags::IN | Flags::ERR),
                        !fds[1].revents().is_empty(),
                    ),
                    Err(err) => {
                        warn!(
                            "cannot wait for datagrams on {}: {}",
                            self.spec,
                            describe(&err)
                        );
                        (false, self.shared.shutdown.is_requested())
                    }
                }
            };
            if stopping {
                break;
            }
            if readable {
                self.receive(&mut buf, READS_PER_WAKE);
            }
            self.end_silent();
            self.hand_over();
        }
        // What the socket held at the stop was sent in good faith: read it all (bounded by the
        // drain limit, as a stream client's bytes are).
        let began = Instant::now();
        loop {
            let full = self.receive(&mut buf, READS_PER_WAKE) == READS_PER_WAKE;
            // Handed over batch by batch: a sender flooding through the drain costs no memory.
            self.hand_over();
            if !full || began.elapsed() >= DRAIN_LIMIT {
                break;
            }
        }
        self.finish_sending(began);
        let stopped = std::mem::take(&mut self.sources)
            .into_values()
            .map(|source| self.end(source, End::Stopped))
            .collect::<Vec<_>>();
        self.hand_over();
        let dropped = crate::platform::udp_drops(&self.socket);
        match dropped {
            Some(n) if n > 0 => warn!(
                "{}: the kernel dropped {} (its receive buffer was full; raise net.core.rmem_max)",
                self.spec,
                counted(n, "datagram")
            ),
            _ => debug!(
                "{}: received {}",
                self.spec,
                counted(self.datagrams, "datagram")
            ),
        }
        ReceiverReport {
            stopped,
            refused: self.refusals,
            dropped,
        }
    }

    /// Reads up to `limit` datagrams that are waiting; returns how many it read.
    fn receive(&mut self, buf: &mut [u8], limit: usize) -> usize {
        for read in 0..limit {
            match self.socket.recv_from(buf) {
                Ok((n, from)) => {
                    self.datagrams += 1;
                    self.datagram(from, &buf[..n]);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return read,
                // An ICMP error for an earlier datagram sent back (echo, replies): not a reason to
                // stop receiving. (A read that cannot block is never interrupted.)
                Err(err) => debug!("{}: {}", self.spec, describe(&err)),
            }
        }
        limit
    }

    /// Takes one datagram from `sender` (the address as the socket gave it, which replies go
    /// to; the client is known by it with an IPv4-mapped address turned back into IPv4).
    fn datagram(&mut self, sender: SocketAddr, data: &[u8]) {
        let Peer::Ip(from) = Peer::ip(sender) else {
            return;
        };
        if let Err(denial) = self.settings.access.check(from.ip()) {
            self.refuse(from, &denial.to_string());
            return;
        }
        if !self.sources.contains_key(&from) {
            if self.sources.len() >= self.settings.max_sources {
                let why = format!(
                    "the limit of {} is reached (--max-conns)",
                    counted(self.settings.max_sources as u64, "live source")
                );
                self.refuse(from, &why);
                return;
            }
            self.start(from, sender);
        }
        let Receiver {
            sources,
            lines,
            unhanded,
            settings,
            ..
        } = self;
        let source = sources.get_mut(&from).expect("just started");
        source.heard = Instant::now();
        source.format.stamp();
        let show = settings.worker.output.format != Format::Hex;
        if !show {
            source.format.hex(lines, source.bytes, data);
        }
        let Source {
            framer,
            format,
            messages,
            ..
        } = source;
        let format = show.then_some(&*format);
        let framed = framer.push(data, |piece| {
            record(piece, messages, unhanded, format, lines)
        });
        // The datagram's end ends its last message.
        framer.finish(false, |piece| {
            record(piece, messages, unhanded, format, lines)
        });
        framer.shrink();
        if let Err(err) = framed {
            // The rest of this datagram is dropped; the next one starts afresh.
            if !std::mem::replace(&mut source.misframed, true) {
                warn!("{}: {err}; the rest of its datagram is dropped", source.id);
            }
        }
        source.bytes += data.len() as u64;
        if settings.worker.echo {
            // Queued behind what waits (the greeting first), sent after this batch.
            source.outbox.push_echo(data);
        }
    }

    /// Gives a new source the next client number; replies go to `reply_to`.
    fn start(&mut self, from: SocketAddr, reply_to: SocketAddr) {
        let id = ClientId::new(self.numbers.fetch_add(1, Ordering::Relaxed));
        let peer = Peer::Ip(from);
        let on = if self.settings.named {
            format!(" on {}", self.spec)
        } else {
            String::new()
        };
        let mut format = ClientFormat::new(
            id,
            peer.clone(),
            self.spec.clone(),
            self.settings.worker.output,
        )
        .with_framing(self.settings.worker.framing);
        format.stamp();
        format.connect(&mut self.lines);
        let outbox = Arc::new(Outbox::default());
        if let Some(greeting) = &self.settings.worker.greeting {
            outbox.push_greeting(greeting);
        }
        // Addressable before its connect line shows.
        if let Some(clients) = &self.clients {
            clients.insert(id, Arc::clone(&outbox));
        }
        info!("{id} connected from {peer} (udp){on}");
        let now = Instant::now();
        self.sources.insert(
            from,
            Source {
                id,
                peer,
                reply_to,
                framer: self
                    .settings
                    .worker
                    .framing
                    .framer(self.settings.worker.max_line),
                format,
                outbox,
                messages: 0,
                bytes: 0,
                sent: 0,
                started: now,
                heard: now,
                misframed: false,
            },
        );
    }

    /// Refuses a source, warning once per source and at most a few times a second.
    fn refuse(&mut self, from: SocketAddr, why: &str) {
        if self.refused.len() >= REFUSED_REMEMBERED {
            self.refused.clear();
        }
        if !self.refused.insert(from) {
            return;
        }
        self.refusals += 1;
        let (since, count) = &mut self.warnings;
        if since.elapsed() >= Duration::from_secs(1) {
            *since = Instant::now();
            *count = 0;
        }
        *count += 1;
        if *count <= REFUSAL_WARNINGS_PER_SECOND {
            warn!("refused udp datagrams from {from}: {why}");
        } else {
            debug!("refused udp datagrams from {from}: {why}");
        }
    }

    /// Sends each source's queued greeting, echo and typed messages, one datagram each, while the
    /// socket has room; returns whether some wait because it had none.
    fn send_queued(&mut self) -> bool {
        let json = self.settings.worker.output.format == Format::Json;
        for source in self.sources.values_mut() {
            if !source.outbox.is_ready() {
                continue;
            }
            while let Some(chunk) = source.outbox.next() {
                match self.socket.send_to(chunk.bytes(), source.reply_to) {
                    Ok(n) => {
                        source.sent += n as u64;
                        source.outbox.sent(&chunk);
                        record_sent(source, &chunk, json, &mut self.lines);
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        source.outbox.put_back(chunk);
                        return true;
                    }
                    Err(err) => {
                        // Too long for a datagram (over 65,507 bytes), typically: the source
                        // gets nothing of it.
                        warn!(
                            "not sent to {}: {} ({})",
                            source.id,
                            describe(&err),
                            counted(chunk.bytes().len() as u64, "byte")
                        );
                        source.outbox.sent(&chunk);
                    }
                }
            }
        }
        false
    }

    /// At the stop: lets the operator's input finish, then sends what is queued, within the
    /// drain limit.
    fn finish_sending(&mut self, began: Instant) {
        if let Some(listening) = &self.shared.listening {
            listening.wait_finished(began + DRAIN_LIMIT);
        }
        while began.elapsed() < DRAIN_LIMIT {
            if !self.send_queued() {
                break;
            }
            let mut fds = [Fd::new(&self.socket, Flags::OUT)];
            if poll::wait(&mut fds, Duration::from_millis(50)).is_err() {
                break;
            }
        }
    }

    /// How long until the next source goes silent for good.
    fn next_silence(&self) -> Duration {
        self.sources
            .values()
            .map(|s| self.settings.silence.saturating_sub(s.heard.elapsed()))
            .min()
            .unwrap_or(Duration::MAX)
    }

    /// Ends the sources silent for the idle timeout; their reports go to the listener.
    fn end_silent(&mut self) {
        let silence = self.settings.silence;
        let silent: Vec<SocketAddr> = self
            .sources
            .iter()
            .filter(|(_, s)| s.heard.elapsed() >= silence)
            .map(|(from, _)| *from)
            .collect();
        for from in silent {
            let source = self.sources.remove(&from).expect("listed");
            let report = self.end(source, End::Silent(silence));
            report.log();
            crate::sync::lock(&self.ended).push(report);
        }
    }

    /// Ends a source: its disconnect event, its outbox closed, its report.
    fn end(&mut self, mut source: Source, end: End) -> ClientReport {
        if let Some(clients) = &self.clients {
            clients.remove(source.id);
        }
        let dropped = source.outbox.close();
        let totals = ClientTotals {
            messages: source.messages,
            bytes: source.bytes,
            sent: source.sent,
            connected_for: source.started.elapsed(),
        };
        source.format.stamp();
        source
            .format
            .disconnect(&mut self.lines, &totals, &end.to_string());
        ClientReport {
            id: source.id,
            peer: source.peer,
            totals,
            dropped,
            end,
        }
    }

    /// Writes the formatted lines of every source.
    fn hand_over(&mut self) {
        if self.lines.is_empty() && self.unhanded == 0 {
            return;
        }
        self.shared.output.write(&self.lines, self.unhanded);
        self.lines.clear();
        self.unhanded = 0;
        if self.lines.capacity() > DATAGRAM_MAX * 4 {
            self.lines = Vec::new();
        }
    }
}

/// Records a greeting or typed message sent to a source: the debug line and the JSON event.
fn record_sent(source: &mut Source, chunk: &Chunk, json: bool, lines: &mut Vec<u8>) {
    if chunk.kind() == Kind::Echo {
        return;
    }
    let bytes = chunk.bytes();
    debug!(
        "sent {} to {}",
        counted(bytes.len() as u64, "byte"),
        source.id
    );
    if json {
        source.format.stamp();
        source.format.sent(lines, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::OutputOptions;
    use crate::framing::Framing;
    use crate::output::{Output, Sink};
    use crate::shutdown::Shutdown;
    use crate::worker::LargeReads;

    /// A receiver whose lines go nowhere, for one source at `from`.
    fn receiver() -> Receiver {
        let shutdown = Shutdown::new().expect("a stop pipe");
        let shared = Shared {
            shutdown: shutdown.clone(),
            output: Output::new(Sink::Writer(Box::new(io::sink())), shutdown),
            large_reads: LargeReads::default(),
            listening: None,
        };
        let settings = ReceiverSettings {
            worker: WorkerSettings {
                poll_interval: Duration::from_secs(3600),
                idle_timeout: None,
                max_line: DATAGRAM_MAX,
                output: OutputOptions::default(),
                echo: false,
                framing: Framing::Lines,
                telnet: false,
                greeting: None,
            },
            access: AccessRules::new(Vec::new(), Vec::new()),
            max_sources: 10,
            silence: Duration::from_secs(3600),
            named: false,
        };
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let spec = Spec::Udp(socket.local_addr().expect("address"));
        Receiver::new(
            socket,
            spec,
            shared,
            settings,
            Arc::new(AtomicU64::new(1)),
            None,
            Arc::new(Mutex::new(Vec::new())),
        )
    }

    /// The batch of formatted lines keeps its memory between batches, up to four datagrams'
    /// worth; a larger one (a burst of large datagrams) is given back once handed over.
    #[test]
    fn a_large_batch_gives_its_memory_back() {
        let mut receiver = receiver();
        let from: SocketAddr = "127.0.0.1:9".parse().expect("an address");
        let datagram = [b'a'; 50_000];
        for _ in 0..2 {
            receiver.datagram(from, &datagram);
        }
        receiver.hand_over();
        assert!(receiver.lines.is_empty());
        assert!(
            receiver.lines.capacity() >= 100_000,
            "{} kept after 100 KB",
            receiver.lines.capacity()
        );
        for _ in 0..6 {
            receiver.datagram(from, &datagram);
        }
        receiver.hand_over();
        assert_eq!(receiver.lines.capacity(), 0, "kept after 300 KB");
    }
}
