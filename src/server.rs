//! `Server`: binds the listening socket, accepts clients and gives each a numbered worker, keeps
//! the live workers (`Workers`), and on stop joins every one of them before it returns.
//!
//! The accept loop blocks in `poll(2)` on the listening socket and the shared stop pipe, waking at
//! least every poll interval to reap finished workers, and at the `--duration` deadline.
//!
//! Shutdown order, written once in [`Server::run`]: stop accepting, set every worker's stop flag,
//! wake them all (one write to the stop pipe), join every worker (each drains its socket and
//! writes every byte it received before it ends), then report.

use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{Level, debug, error, info, log, warn};

use crate::access::Denial;
use crate::config::Config;
use crate::error::{Error, describe};
use crate::format::{Format, counted, plural};
use crate::listen::tls::Tls;
use crate::listen::{Connection, Peer, Spec, StreamListener, UnixPath, udp};
use crate::output::{LogRoute, Output, Sink};
use crate::poll::{self, Fd, Flags};
use crate::shutdown::{Shutdown, StopReason};
use crate::summary::Summary;
use crate::talk::{Clients, Talk};
use crate::threads::Stacks;
use crate::worker::{
    ClientId, ClientReport, End, LargeReads, Shared, WORKER_STACK, Worker, WorkerHandle,
};

/// How long the listener waits before accepting again after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Stacks of ended workers kept for the next clients (33 MiB of address space; only the pages
/// workers touched are resident). Beyond that they are unmapped as workers are reaped.
const SPARE_STACKS: usize = 256;

/// Why a connection got no worker.
#[derive(Debug)]
pub enum Refusal {
    /// The access rules turned the peer away.
    Access(Denial),
    /// `--max-conns` clients were already connected.
    TooMany(usize),
    /// No thread could be started for it.
    NoThread(io::Error),
    /// Its socket could not be set up.
    Socket(io::Error),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Access(denial) => denial.fmt(f),
            Refusal::TooMany(limit) => write!(
                f,
                "the limit of {} is reached (--max-conns)",
                counted(*limit as u64, "connected client")
            ),
            // pthread_create says EAGAIN for every limit on threads, and mapping a stack
            // ENOMEM when the process has as many mappings as it may.
            Refusal::NoThread(err) if err.kind() == io::ErrorKind::WouldBlock => f.write_str(
                "cannot start a thread: a limit on threads is reached \
                 (ulimit -u, the cgroup's pids.max, kernel.threads-max or kernel.pid_max)",
            ),
            Refusal::NoThread(err) if err.kind() == io::ErrorKind::OutOfMemory => f.write_str(
                "cannot start a thread: out of memory or of mappings (vm.max_map_count)",
            ),
            Refusal::NoThread(err) => write!(f, "cannot start a thread: {}", describe(err)),
            Refusal::Socket(err) => write!(f, "cannot set up its socket: {}", describe(err)),
        }
    }
}

/// The live workers: started on accept, reaped when they end, stopped and joined at shutdown;
/// and the stacks they run on.
#[derive(Debug)]
struct Workers {
    live: Vec<WorkerHandle>,
    stacks: Stacks,
    /// Clients the stop disconnected, joined so far.
    stop_lines: u64,
    /// The outboxes typed messages are addressed through, when the operator's input is read:
    /// a client's is added as its worker starts and removed as it is joined.
    clients: Option<Clients>,
}

/// Disconnect lines logged at a stop before the rest are only counted: the summary table has
/// the details, and 10,000 lines to a file took half the stop's time.
pub const STOP_LINES: u64 = 20;

impl Default for Workers {
    fn default() -> Workers {
        Workers {
            live: Vec::new(),
            stacks: Stacks::new(WORKER_STACK),
            stop_lines: 0,
            clients: None,
        }
    }
}

impl Workers {
    /// Starts `worker` on its own thread and keeps it.
    ///
    /// # Errors
    /// When no thread can be started for it.
    pub fn start(&mut self, worker: Worker) -> io::Result<()> {
        // Addressable before the worker logs that its client connected: a line typed as soon
        // as the connect line shows must reach it.
        let id = worker.id();
        if let Some(clients) = &self.clients {
            clients.insert(id, worker.outbox());
        }
        match WorkerHandle::spawn(worker, &mut self.stacks) {
            Ok(handle) => {
                self.live.push(handle);
                Ok(())
            }
            Err(err) => {
                if let Some(clients) = &self.clients {
                    clients.remove(id);
                }
                Err(err)
            }
        }
    }

    /// How many workers are running.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Joins and drops every worker that has ended, adding its report to `summary`.
    pub fn reap(&mut self, summary: &mut Summary) {
        let finished: Vec<WorkerHandle> = self.live.extract_if(.., |h| h.is_finished()).collect();
        for handle in finished {
            self.join_one(handle, summary);
        }
        self.stacks.trim(SPARE_STACKS);
    }

    /// Sets every worker's stop flag; they notice at once when the stop pipe is written.
    pub fn stop_all(&self) {
        self.live.iter().for_each(WorkerHandle::stop);
    }

    /// Waits for every worker to end, adding each report to `summary`. The stacks are kept
    /// until the end of the run: unmapping one while other threads still run would interrupt
    /// every core to flush its TLB.
    ///
    /// Returns how many of them the stop ended (rather than their clients, before it). Their
    /// disconnect lines are logged for the first [`STOP_LINES`] only, then counted in one line.
    pub fn join_all(&mut self, summary: &mut Summary) -> u64 {
        let mut stopped = 0;
        self.stacks.reserve(self.live.len());
        summary.reserve(self.live.len());
        for handle in std::mem::take(&mut self.live) {
            stopped += u64::from(self.join_one(handle, summary));
        }
        let hidden = self.stop_lines.saturating_sub(STOP_LINES);
        if hidden > 0 {
            info!(
                "… and {hidden} more {} disconnected (server stopping)",
                plural(hidden, "client")
            );
        }
        stopped
    }

    /// Adds the reports of clients a UDP receiver ended at the stop, logged as the stopped
    /// workers are; returns how many there were.
    pub fn add_stopped(&mut self, reports: Vec<ClientReport>, summary: &mut Summary) -> u64 {
        let mut stopped = 0;
        for report in reports {
            stopped += u64::from(self.add(&report, summary));
        }
        stopped
    }

    /// Adds a report to `summary`; returns whether the stop ended its client. A client the stop
    /// disconnected is logged here (its worker leaves that to whoever joins it), up to
    /// [`STOP_LINES`] of them.
    fn add(&mut self, report: &ClientReport, summary: &mut Summary) -> bool {
        let stopped = matches!(report.end, End::Stopped);
        if stopped {
            self.stop_lines += 1;
            if self.stop_lines <= STOP_LINES {
                report.log();
            }
        }
        summary.add(report);
        stopped
    }

    /// Joins one worker and adds its report to `summary`; returns whether the stop ended it.
    fn join_one(&mut self, handle: WorkerHandle, summary: &mut Summary) -> bool {
        let id = handle.id();
        let joined = handle.join(&mut self.stacks);
        // Only once it has ended: until then a line typed before the stop may still be queued
        // for it (its worker waits for the input to finish before it closes its outbox).
        if let Some(clients) = &self.clients {
            clients.remove(id);
        }
        match joined {
            Ok(report) => self.add(&report, summary),
            Err(id) => {
                summary.clients += 1;
                count_panic(&format!("the worker of {id}"), summary);
                false
            }
        }
    }
}

/// The bound listeners, ready to [`run`](Server::run).
pub struct Server {
    /// TCP and Unix listeners, whose clients get a worker each.
    streams: Vec<StreamListener>,
    /// UDP sockets, each served by one receiver thread.
    datagrams: Vec<UdpSocket>,
    /// What each listener is bound to, in the order given (ports chosen for port 0 filled in).
    endpoints: Vec<Spec>,
    /// The TLS setup of the TLS listeners, if there are any.
    tls: Option<Arc<Tls>>,
    config: Config,
    shutdown: Shutdown,
    /// Where log records go once the output exists, if they share it.
    log_route: Option<LogRoute>,
    /// Whether the process ends when `run` returns (see [`Server::exit_after_run`]).
    exit_after_run: bool,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("endpoints", &self.endpoints)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds every listener of `config.listen`, without accepting yet.
    ///
    /// # Errors
    /// [`Error::Bind`] when an address is in use, not on this machine, or needs privileges, or
    /// a socket path is taken; [`Error::Setup`] when the stop pipe cannot be created.
    pub fn bind(config: Config) -> Result<Server, Error> {
        let shutdown = Shutdown::new()?;
        // TLS is set up once, before anything listens, for every TLS listener.
        let tls_hosts: Vec<std::net::IpAddr> = config
            .listen
            .iter()
            .filter_map(|spec| match spec {
                Spec::Tls(addr) => Some(addr.ip()),
                _ => None,
            })
            .collect();
        let tls = if tls_hosts.is_empty() {
            None
        } else {
            let options = config.tls.clone().unwrap_or_default();
            Some(Arc::new(Tls::build(&options, &tls_hosts)?))
        };
        let mut streams = Vec::new();
        let mut datagrams = Vec::new();
        let mut endpoints = Vec::new();
        for spec in &config.listen {
            let bind_error = |source| Error::Bind {
                listener: spec.clone(),
                source,
            };
            let bound = match spec {
                Spec::Udp(addr) => {
                    let socket = udp::bind(*addr).map_err(bind_error)?;
                    let bound = socket.local_addr().map_err(bind_error)?;
                    datagrams.push(socket);
                    Spec::Udp(bound)
                }
                _ => {
                    let listener =
                        StreamListener::bind(spec, config.backlog, config.unix_mode, tls.as_ref())
                            .map_err(bind_error)?;
                    let bound = listener.bound().map_err(bind_error)?;
                    streams.push(listener);
                    bound
                }
            };
            endpoints.push(bound);
        }
        Ok(Server {
            streams,
            datagrams,
            endpoints,
            tls,
            config,
            shutdown,
            log_route: None,
            exit_after_run: false,
        })
    }

    /// Says that the process ends as soon as [`run`](Server::run) returns: the workers' stacks
    /// are then left for the kernel to free with the process, all at once, instead of being
    /// unmapped one by one after the last join (for 10,000 stacks that took 60 to 130 ms of the
    /// stop, each unmapping a TLB flush). A program that goes on after `run` leaves this unset.
    pub fn exit_after_run(&mut self) {
        self.exit_after_run = true;
    }

    /// Sends log records through the run's output once it starts (see [`LogRoute`]): for when
    /// stderr and the output are the same pipe or terminal.
    pub fn route_logs(&mut self, route: LogRoute) {
        self.log_route = Some(route);
    }

    /// The address of the first TCP (or TLS) listener (with the real port when the config
    /// asked for port 0), if there is one.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoints.iter().find_map(|spec| match spec {
            Spec::Tcp(addr) | Spec::Tls(addr) => Some(*addr),
            _ => None,
        })
    }

    /// What every listener is bound to, in the order of `config.listen`.
    pub fn endpoints(&self) -> &[Spec] {
        &self.endpoints
    }

    /// A handle to stop the server from another thread or a signal handler.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Accepts clients and prints their messages to `sink` until the duration runs out or a
    /// stop is requested; then stops and joins every worker and returns the totals.
    ///
    /// # Errors
    /// [`Error::Output`] when writing to `sink` failed (a closed pipe is a normal stop).
    pub fn run(self, sink: Sink) -> Result<Summary, Error> {
        let Server {
            streams,
            datagrams,
            endpoints,
            tls,
            config,
            shutdown,
            log_route,
            exit_after_run,
        } = self;
        // Timed from before the listening line: a client that saw it may rely on the deadline.
        let deadline = config.duration.map(|d| Instant::now() + d);
        for endpoint in &endpoints {
            announce(endpoint, tls.as_deref());
        }
        warn_if_open(&endpoints, &config);
        match config.duration {
            Some(d) => info!(
                "stopping in {} (or on Ctrl-C/SIGTERM)",
                humantime::format_duration(d)
            ),
            None => info!("running until Ctrl-C/SIGTERM"),
        }
        let output = Output::new(sink, shutdown.clone());
        if let Some(route) = log_route {
            route.attach(&output);
        }
        let mut workers = Workers::default();
        let mut summary = Summary::default();
        let clients = config.input.map(|_| Clients::default());
        workers.clients.clone_from(&clients);
        let (input, listening) = match (config.input, &clients) {
            (Some(settings), Some(clients)) => {
                let (talk, listening) =
                    Talk::new(clients.clone(), settings).map_err(|source| Error::Setup {
                        what: "create the pipe that wakes workers for typed messages",
                        source,
                    })?;
                debug!("reading stdin: typed lines go to clients");
                (Some(talk.spawn(&shutdown)?), Some(listening))
            }
            _ => {
                debug!(
                    "not reading stdin (--stdin never, or auto without a terminal in the foreground)"
                );
                (None, None)
            }
        };
        let shared = Shared {
            shutdown: shutdown.clone(),
            output: output.clone(),
            large_reads: LargeReads::default(),
            listening,
        };
        let numbers = Arc::new(AtomicU64::new(1));
        let named = endpoints.len() > 1;
        let silent = Arc::new(Mutex::new(Vec::new()));
        let mut receivers = Vec::new();
        let udp_endpoints = endpoints.iter().filter(|e| matches!(e, Spec::Udp(_)));
        for (socket, spec) in datagrams.into_iter().zip(udp_endpoints) {
            let receiver = udp::Receiver::new(
                socket,
                spec.clone(),
                shared.clone(),
                udp::ReceiverSettings {
                    worker: config.worker.clone(),
                    access: config.access.clone(),
                    max_sources: config.max_conns,
                    silence: config.worker.idle_timeout.unwrap_or(udp::DEFAULT_SILENCE),
                    named,
                },
                Arc::clone(&numbers),
                clients.clone(),
                Arc::clone(&silent),
            );
            let thread = std::thread::Builder::new()
                .name(format!("udp-{}", receivers.len() + 1))
                .spawn(move || receiver.run())
                .map_err(|source| Error::Setup {
                    what: "start the thread that receives datagrams",
                    source,
                })?;
            receivers.push(thread);
        }
        let stream_endpoints: Vec<Spec> = endpoints
            .iter()
            .filter(|e| !matches!(e, Spec::Udp(_)))
            .cloned()
            .collect();
        let mut accept = Acceptor {
            listeners: &streams,
            endpoints: &stream_endpoints,
            config: &config,
            numbers: &numbers,
            named,
            starved: false,
            deadline,
            shared,
        };
        let mut next_progress = config.progress.map(|every| Instant::now() + every);
        loop {
            // Checked before reaping: at a stop every worker is joined below anyway, and a reap
            // would unmap spare stacks while the other workers still run.
            if shutdown.is_requested() {
                break;
            }
            workers.reap(&mut summary);
            take_silent(&silent, &mut summary);
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                shutdown.request(StopReason::Timer);
                break;
            }
            if let (Some(due), Some(every)) = (next_progress, config.progress) {
                if now >= due {
                    report_progress(&workers, numbers.load(Ordering::Relaxed) - 1, deadline);
                    next_progress = Some(now + every);
                }
            }
            let wait = [deadline, next_progress]
                .into_iter()
                .flatten()
                .map(|d| d.saturating_duration_since(now))
                .fold(config.worker.poll_interval, Duration::min);
            let backoff = accept.wait_and_accept(wait, &mut workers, &mut summary);
            if !backoff.is_zero() {
                sleep_unless_stopped(&shutdown, backoff);
            }
        }
        // The stop is requested (and every worker woken) before anything is logged: a stop never
        // waits on stderr.
        let reason = shutdown.reason();
        log_stop(reason);
        // Clients the kernel queued before the stop sent their bytes in good faith: accept and
        // drain them like the others, unless the output is gone anyway.
        if !matches!(
            reason,
            Some(StopReason::OutputClosed | StopReason::OutputFailed)
        ) {
            accept.accept_queued(&mut workers, &mut summary);
        }
        // Stop accepting: a connection that comes after this is refused (and a socket file is
        // removed).
        drop(accept);
        drop(streams);
        workers.stop_all();
        // The stop request already wrote the stop pipe: every worker is awake and draining. The
        // stop is timed from that request, not from here: with thousands of workers woken at
        // once, this thread itself may get the CPU a few hundred milliseconds later.
        let stopping = shutdown.requested_at().unwrap_or_else(Instant::now);
        let mut stopped = 0;
        for receiver in receivers {
            match receiver.join() {
                Ok(report) => {
                    summary.refused += report.refused;
                    if let Some(dropped) = report.dropped {
                        *summary.datagrams_dropped.get_or_insert(0) += dropped;
                    }
                    stopped += workers.add_stopped(report.stopped, &mut summary);
                }
                Err(_) => count_panic("a UDP receiver", &mut summary),
            }
        }
        take_silent(&silent, &mut summary);
        stopped += workers.join_all(&mut summary);
        if input.is_some_and(|input| input.join().is_err()) {
            error!("the input thread panicked (a bug: please report it)");
        }
        info!(
            "stopped {} in {}",
            counted(stopped, "worker"),
            crate::format::rounded(stopping.elapsed())
        );
        if config.worker.output.format == Format::Json {
            let mut event = Vec::new();
            summary.json(&mut event);
            output.write(&event, 0);
        }
        let written = output.finish();
        let unwritten = match (output.unwritten(), reason) {
            (0, _) => String::new(),
            (n, Some(StopReason::OutputClosed)) => format!(
                "; {} not written (the reader of the output left)",
                counted(n, "message")
            ),
            (n, _) => format!(
                "; {} not written (the output failed)",
                counted(n, "message")
            ),
        };
        info!("{}", summary.served_line(&unwritten));
        if exit_after_run {
            std::mem::forget(workers);
        }
        written.map(|()| summary)
    }
}

/// Logs that `whose` thread panicked and counts it in the summary's last line.
fn count_panic(whose: &str, summary: &mut Summary) {
    error!("{whose} panicked; its messages may be incomplete");
    summary.panicked += 1;
}

/// Adds the reports of UDP sources that ended by their silence to the summary.
fn take_silent(silent: &Mutex<Vec<ClientReport>>, summary: &mut Summary) {
    let reports = std::mem::take(&mut *crate::sync::lock(silent));
    for report in &reports {
        summary.add(report);
    }
}

/// The accepting side of the run loop: every stream listener, polled at once.
struct Acceptor<'a> {
    listeners: &'a [StreamListener],
    /// What each of `listeners` is bound to.
    endpoints: &'a [Spec],
    config: &'a Config,
    /// The number the next client gets, shared with the UDP receivers; never reused.
    numbers: &'a AtomicU64,
    /// Whether connect lines name the listener (there are several).
    named: bool,
    /// Whether the last accept failed (out of descriptors): later failures are not logged again.
    starved: bool,
    /// When `--duration` ends the run, if it does.
    deadline: Option<Instant>,
    /// What every worker gets: the stop, the output, the large read buffers, the input's bell.
    shared: Shared,
}

impl Acceptor<'_> {
    /// Waits up to `wait` for clients or a stop, and starts a worker for every client that is
    /// waiting. Returns how long to back off before accepting again (zero: no need).
    fn wait_and_accept(
        &mut self,
        wait: Duration,
        workers: &mut Workers,
        summary: &mut Summary,
    ) -> Duration {
        // A pipe as output is polled for nothing: poll still reports an error on it once its
        // reader is gone (`overhear | head -1`), and the run stops at once, not at the next write.
        let pipe = self.shared.output.watched_pipe();
        let mut fds: Vec<Fd<'_>> = self
            .listeners
            .iter()
            .map(|listener| Fd::new(listener, Flags::IN))
            .collect();
        fds.push(Fd::new(self.shared.shutdown.waker(), Flags::IN));
        if let Some(pipe) = &pipe {
            fds.push(Fd::new(pipe, Flags::empty()));
        }
        match poll::wait(&mut fds, wait) {
            Ok(0) => return Duration::ZERO,
            Ok(_) => {}
            Err(err) => {
                error!("cannot wait for clients: {}", describe(&err));
                return ACCEPT_BACKOFF;
            }
        }
        let count = self.listeners.len();
        if pipe.is_some() && !fds[count + 1].revents().is_empty() {
            self.shared.shutdown.request(StopReason::OutputClosed);
        }
        let ready: Vec<usize> = (0..count)
            .filter(|&i| !fds[i].revents().is_empty())
            .collect();
        drop(fds);
        for i in ready {
            let backoff = self.accept_all(i, workers, summary);
            if !backoff.is_zero() {
                return backoff;
            }
        }
        Duration::ZERO
    }

    /// Accepts every connection waiting on listener `i`.
    fn accept_all(&mut self, i: usize, workers: &mut Workers, summary: &mut Summary) -> Duration {
        // A flood of connections must not hide a stop, or delay the one `--duration` sets: check
        // both between accepts. (Connections still queued at the stop are accepted then.)
        while !self.shared.shutdown.is_requested()
            && self.deadline.is_none_or(|d| Instant::now() < d)
        {
            match self.listeners[i].accept() {
                Ok((conn, peer)) => {
                    if std::mem::take(&mut self.starved) {
                        info!("accepting clients again");
                    }
                    self.take(i, conn, peer, workers, summary);
                }
                Err(err) => match err.kind() {
                    io::ErrorKind::WouldBlock => return Duration::ZERO,
                    // The client gave up while queued (the BSDs say so): nothing to do. (The
                    // listener does not block, so no signal interrupts an accept.)
                    io::ErrorKind::ConnectionAborted => {}
                    _ => {
                        // Out of descriptors, typically: say so once, not every back-off.
                        let level = if self.starved {
                            Level::Debug
                        } else {
                            Level::Error
                        };
                        log!(
                            level,
                            "cannot accept a client: {}; retrying every {} until it works",
                            describe(&err),
                            humantime::format_duration(ACCEPT_BACKOFF)
                        );
                        self.starved = true;
                        return ACCEPT_BACKOFF;
                    }
                },
            }
        }
        Duration::ZERO
    }

    /// At the stop: accepts the connections the kernel queued before it and starts their workers,
    /// which find the stop at once and drain what their clients sent. Bounded by the backlog of
    /// each listener, since that is all the kernel can have queued (more may arrive meanwhile:
    /// those are refused when the listener closes).
    fn accept_queued(&mut self, workers: &mut Workers, summary: &mut Summary) {
        let mut queued: u64 = 0;
        for i in 0..self.listeners.len() {
            for _ in 0..self.config.backlog.max(1) {
                match self.listeners[i].accept() {
                    Ok((conn, peer)) => {
                        queued += 1;
                        self.take(i, conn, peer, workers, summary);
                    }
                    Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => {}
                    Err(_) => break,
                }
            }
        }
        if queued > 0 {
            info!(
                "accepted {} queued at the stop; draining them too",
                counted(queued, "connection")
            );
        }
    }

    /// Gives a connection accepted on listener `i` a worker, or refuses it.
    fn take(
        &mut self,
        i: usize,
        conn: Connection,
        peer: Peer,
        workers: &mut Workers,
        summary: &mut Summary,
    ) {
        let started = self
            .admit(&peer, workers, summary)
            .and_then(|()| self.start_worker(i, conn, peer.clone(), workers));
        if let Err(refusal) = started {
            self.refuse(&peer, &refusal, summary);
        }
    }

    /// Whether `peer` may have a worker: allowed by the access rules (an IP peer), and under
    /// `--max-conns` once finished workers are reaped. A refused connection is closed when it
    /// drops.
    fn admit(
        &self,
        peer: &Peer,
        workers: &mut Workers,
        summary: &mut Summary,
    ) -> Result<(), Refusal> {
        if let Some(ip) = peer.ip_addr() {
            self.config.access.check(ip).map_err(Refusal::Access)?;
        }
        if workers.len() >= self.config.max_conns {
            workers.reap(summary);
        }
        if workers.len() >= self.config.max_conns {
            return Err(Refusal::TooMany(self.config.max_conns));
        }
        Ok(())
    }

    /// Starts a worker for `conn`, numbering it.
    fn start_worker(
        &mut self,
        i: usize,
        conn: Connection,
        peer: Peer,
        workers: &mut Workers,
    ) -> Result<(), Refusal> {
        // Taken now, not after the spawn: a UDP receiver numbers its sources from the same
        // count at any moment. A spawn that fails leaves a gap in the numbers.
        let id = ClientId::new(self.numbers.fetch_add(1, Ordering::Relaxed));
        let worker = Worker::new(
            id,
            peer,
            conn,
            (self.endpoints[i].clone(), self.named),
            self.config.worker.clone(),
            self.shared.clone(),
            Arc::default(),
        );
        workers.start(worker).map_err(Refusal::NoThread)?;
        Ok(())
    }

    /// Counts and reports a connection that gets no worker; it is already closed.
    fn refuse(&self, peer: &Peer, refusal: &Refusal, summary: &mut Summary) {
        summary.refused += 1;
        warn!("refused {peer}: {refusal}");
        if self.config.worker.output.format == Format::Json {
            let mut event = Vec::new();
            crate::format::refused(&mut event, peer, &refusal.to_string());
            self.shared.output.write(&event, 0);
        }
    }
}

/// Logs where a listener listens and how to reach it, in the form scripts parse: `listening on
/// ADDR` (the bare address for TCP and TLS, `udp://…` and `unix:…` for the others).
fn announce(endpoint: &Spec, tls: Option<&Tls>) {
    let loopback = |addr: &SocketAddr| match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "::1".to_string(),
        ip => ip.to_string(),
    };
    let how = match endpoint {
        Spec::Tcp(addr) => format!("connect with: nc {} {}", loopback(addr), addr.port()),
        Spec::Tls(addr) => {
            let host = loopback(addr);
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            let (fingerprint, trust) = match tls {
                Some(tls) if tls.generated => (tls.fingerprint.as_str(), " (made at start)"),
                Some(tls) => (tls.fingerprint.as_str(), ""),
                None => ("", ""),
            };
            format!(
                "TLS, certificate SHA-256 {fingerprint}{trust}; connect with: \
                 openssl s_client -connect {host}:{port}, curl -k https://{host}:{port}/ or \
                 ncat --ssl {} {port}",
                loopback(addr),
                port = addr.port()
            )
        }
        Spec::Udp(addr) => format!("send with: nc -u {} {}", loopback(addr), addr.port()),
        Spec::Unix(UnixPath::File(path)) => format!("connect with: nc -U {}", path.display()),
        Spec::Unix(UnixPath::Abstract(name)) => {
            format!("connect with: socat - ABSTRACT-CONNECT:{name}")
        }
    };
    info!("listening on {}; {how}", endpoint.address());
}

/// Warns about each listener reachable from the network, since none has authentication.
fn warn_if_open(endpoints: &[Spec], config: &Config) {
    for endpoint in endpoints {
        let (Spec::Tcp(addr) | Spec::Tls(addr) | Spec::Udp(addr)) = endpoint else {
            continue;
        };
        if !addr.ip().is_loopback() {
            warn!(
                "{} is reachable from the network and has no authentication{}",
                endpoint.address(),
                if config.access.is_open() {
                    "; restrict it with --allow"
                } else {
                    ""
                }
            );
        }
    }
}

/// Says why the run stops, once the stop is requested.
fn log_stop(reason: Option<StopReason>) {
    match reason {
        Some(StopReason::Timer) => info!("time is up, stopping"),
        Some(StopReason::Signal) => {
            info!("signal received, stopping (send it again to exit at once)")
        }
        Some(StopReason::OutputClosed) => info!("output closed by its reader, stopping"),
        // The run ends with that error, said once by whoever reports it.
        Some(StopReason::OutputFailed) => {}
        Some(StopReason::Requested) | None => info!("stopping"),
    }
}

/// Logs how the run is going: clients now and so far, and the time left before the timed stop.
fn report_progress(workers: &Workers, served: u64, deadline: Option<Instant>) {
    let left = match deadline {
        Some(d) => format!(
            "stopping in {}",
            crate::format::rounded(d.saturating_duration_since(Instant::now()))
        ),
        None => String::from("no timed stop"),
    };
    info!(
        "{} connected, {served} served so far; {left}",
        counted(workers.len() as u64, "client")
    );
}

/// Sleeps for `duration`, or less if a stop is requested meanwhile.
fn sleep_unless_stopped(shutdown: &Shutdown, duration: Duration) {
    let mut fds = [Fd::new(shutdown.waker(), Flags::IN)];
    // An error only shortens the back-off.
    let _ = poll::wait(&mut fds, duration);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::UnixPath;
    use std::io::Write;
    use std::sync::Mutex;

    /// An output the test reads while the server writes it.
    #[derive(Clone, Default)]
    struct Printed(Arc<Mutex<Vec<u8>>>);

    impl Write for Printed {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            crate::sync::lock(&self.0).extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Printed {
        fn wait_for(&self, text: &str) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !String::from_utf8_lossy(&crate::sync::lock(&self.0)).contains(text) {
                assert!(Instant::now() < deadline, "never printed: {text:?}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Each reason a thread could not start is told in its own words.
    #[test]
    fn refusals_name_the_limit_that_was_reached() {
        let no_thread = |kind: io::ErrorKind| Refusal::NoThread(io::Error::from(kind)).to_string();
        assert!(no_thread(io::ErrorKind::WouldBlock).ends_with(
            "a limit on threads is reached \
                 (ulimit -u, the cgroup's pids.max, kernel.threads-max or kernel.pid_max)"
        ));
        assert_eq!(
            no_thread(io::ErrorKind::OutOfMemory),
            "cannot start a thread: out of memory or of mappings (vm.max_map_count)"
        );
        assert_eq!(
            no_thread(io::ErrorKind::PermissionDenied),
            "cannot start a thread: permission denied"
        );
    }

    /// A worker that panicked (a bug) still counts as a client, and as a panic, which the
    /// run's last line reports.
    #[test]
    fn a_worker_that_panicked_is_counted() {
        let mut workers = Workers::default();
        let handle = crate::worker::testing::panicking_handle(7, &mut workers.stacks);
        workers.live.push(handle);
        let mut summary = Summary::default();
        assert_eq!(workers.join_all(&mut summary), 0, "the stop ended none");
        assert_eq!((summary.clients, summary.panicked), (1, 1));
        assert!(
            summary
                .served_line("")
                .ends_with("; 1 worker panicked (a bug: please report it)"),
            "{}",
            summary.served_line("")
        );
    }

    /// As the library's example runs it: the endpoints in the order asked, with the port chosen
    /// for port 0; every line of a client that left and of one still connected at the stop
    /// printed; the summary counts both once the stop ends the run.
    #[test]
    fn a_server_runs_in_process_and_names_its_endpoints() {
        let name = format!("overhear-server-test-{}", std::process::id());
        let config = Config {
            listen: vec![
                Spec::Unix(UnixPath::Abstract(name.clone())),
                Spec::Tcp("127.0.0.1:0".parse().expect("literal")),
            ],
            ..Config::default()
        };
        let server = Server::bind(config).expect("bind");
        let addr = server.local_addr().expect("a TCP listener");
        assert_ne!(addr.port(), 0, "the port chosen is not named");
        match server.endpoints() {
            [Spec::Unix(UnixPath::Abstract(unix)), Spec::Tcp(tcp)] => {
                assert_eq!((unix, *tcp), (&name, addr));
            }
            other => panic!("endpoints: {other:?}"),
        }
        assert!(
            format!("{server:?}").contains(&format!(
                "endpoints: [Unix(Abstract({name:?})), Tcp({addr})]"
            )),
            "{server:?}"
        );
        let stop = server.shutdown();
        let printed = Printed::default();
        let sink = printed.clone();
        let run = std::thread::spawn(move || server.run(Sink::Writer(Box::new(sink))));
        let mut left = std::net::TcpStream::connect(addr).expect("connect");
        left.write_all(b"one\ntwo\n").expect("send");
        printed.wait_for("[1] two\n");
        drop(left);
        let mut stays = std::net::TcpStream::connect(addr).expect("connect");
        stays.write_all(b"three\n").expect("send");
        printed.wait_for("[2] three\n");
        stop.request(StopReason::Requested);
        let summary = run.join().expect("no panic").expect("the run");
        assert_eq!(
            (summary.clients, summary.messages, summary.bytes),
            (2, 3, 14)
        );
        assert_eq!(
            String::from_utf8_lossy(&crate::sync::lock(&printed.0)),
            "[1] one\n[1] two\n[2] three\n"
        );
    }
}
