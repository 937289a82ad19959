//! Randomized stops: clients send numbered lines at random rates, the server is stopped at a
//! random moment (its `--duration` timer, SIGTERM or SIGINT) while its output goes to a file, a
//! pipe read at once or a pipe read slowly, and every line the server's kernel had acknowledged
//! before the stop must be printed: whole, once, in order, under its one client's number.
//!
//! "Acknowledged" is measured on each client's socket: bytes written minus the bytes still
//! unacknowledged in its send queue (`SIOCOUTQ`), a lower bound of what the server's kernel holds
//! for overhear. The sample is taken right before the signal; for the timer, before the earliest
//! moment the server's deadline can come (the test's spawn plus the duration), since a later
//! sample could not be proven to precede the stop.
//!
//! `OVERHEAR_STOP_SEED=N` replays a run's plans (not its timing); `OVERHEAR_STOP_ROUNDS=N` sets
//! the length of the ignored soak version, whose rounds `--nocapture` shows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ChildStdout;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::event::{PollFd, PollFlags, Timespec, poll};

use crate::common::{
    Finished, LONG_TIMEOUT, Rng, Signal, Spawned, TIMEOUT, fresh_seed, unacknowledged,
};

const SEED_VAR: &str = "OVERHEAR_STOP_SEED";
const ROUNDS_VAR: &str = "OVERHEAR_STOP_ROUNDS";

/// Longer than any line the test sends, so every message is printed whole (no `[N+]` pieces).
const MAX_LINE: &str = "1MiB";

/// The longest random filler of one line.
const MAX_FILLER: usize = 300_000;

/// The most lines one client plans to send in a round.
const MAX_LINES: usize = 4_000;

/// The random printable text fillers are cut from; larger than [`MAX_FILLER`].
const POOL: usize = 512 * 1024;

/// The longest a client thread sleeps or waits for room before looking at the round's flags.
const SLICE: Duration = Duration::from_millis(10);

/// Stderr lines shown with a failure.
const STDERR_TAIL: usize = 40;

/// How big and how long the rounds of one test are.
struct Scale {
    rounds: usize,
    clients: (u64, u64),
    /// `--duration` of a timed round, in ms.
    timer_ms: (u64, u64),
    /// When a signalled round sends its signal, in ms after the server was started.
    signal_ms: (u64, u64),
    /// Percent of signalled rounds stopped within 50 ms of the start, while clients connect.
    early_percent: u64,
    /// Bytes all clients of a round plan to send, about. Behind a slow pipe most of them wait in
    /// the clients' kernels; what the server's side holds at the stop it must still print.
    budget: usize,
    /// How much a slow pipe's reader reads at a time (then it pauses 1 ms): 1 KiB is about
    /// 1 MB/s, so the server's backlog at the stop takes seconds to print.
    slow_chunks: &'static [usize],
    /// Percent of signalled rounds where a crowd of clients (a quarter to half of them) connects
    /// and sends within half a millisecond before the signal: some are still in the accept queue
    /// when the stop comes.
    crowd_percent: u64,
    /// Percent of clients with one of `keep_sending_paces` that keep sending after the stop (the
    /// others send no new line once the test knows the stop happened). The server cuts off a
    /// client that never pauses 2 s after the stop, so the short test lets only clients that
    /// pause long between lines keep sending.
    keep_sending_percent: u64,
    keep_sending_paces: &'static [Pace],
    /// Whether the rounds take turns through the outputs and stops, so that a short run covers
    /// each (otherwise each round picks at random).
    take_turns: bool,
}

const SHORT: Scale = Scale {
    rounds: 4,
    clients: (5, 20),
    timer_ms: (400, 900),
    signal_ms: (150, 900),
    early_percent: 0,
    budget: 8 << 20,
    slow_chunks: &[4096],
    crowd_percent: 100,
    keep_sending_percent: 30,
    keep_sending_paces: &[Pace::Sparse],
    take_turns: true,
};

const SOAK: Scale = Scale {
    rounds: 60,
    clients: (5, 40),
    timer_ms: (700, 2000),
    signal_ms: (100, 2000),
    early_percent: 5,
    budget: 24 << 20,
    slow_chunks: &[1024, 2048, 4096, 8192],
    crowd_percent: 50,
    keep_sending_percent: 40,
    keep_sending_paces: &[Pace::Flood, Pace::Bursts, Pace::Trickle, Pace::Sparse],
    take_turns: false,
};

#[test]
fn random_stops_lose_nothing() {
    run(&SHORT, SHORT.rounds);
}

#[test]
#[ignore = "soak: OVERHEAR_STOP_ROUNDS rounds (default 60), a few minutes"]
fn random_stops_lose_nothing_long() {
    let rounds = match std::env::var(ROUNDS_VAR) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{ROUNDS_VAR}={text:?} is not a number of rounds")),
        Err(_) => SOAK.rounds,
    };
    let started = Instant::now();
    let tally = run(&SOAK, rounds);
    println!(
        "seed {}: checked {rounds} rounds in {:.1?}: {} clients ({} with lines printed), {} \
         lines printed ({} required by the acknowledged bytes, {} cut by the stop), {} bytes \
         printed, {} bytes acknowledged before the stops",
        tally.seed,
        started.elapsed(),
        tally.clients,
        tally.clients_printed,
        tally.lines,
        tally.required_lines,
        tally.cut_lines,
        tally.bytes,
        tally.acked_bytes,
    );
}

/// Runs `rounds` rounds; panics with the seed and the round at the first loss.
fn run(scale: &Scale, rounds: usize) -> Tally {
    let seed = match std::env::var(SEED_VAR) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VAR}={text:?} is not a number")),
        Err(_) => fresh_seed(),
    };
    let mut tally = Tally {
        seed,
        ..Tally::default()
    };
    for index in 0..rounds {
        let round = Round::plan(scale, seed, index);
        // Shown if anything in the round panics (a wait that timed out, a failed start).
        let label = Label(format!(
            "seed {seed} ({SEED_VAR}={seed} replays the plans), round {} of {rounds}: {}",
            index + 1,
            round.describe()
        ));
        let outcome = round.run();
        match check(&round, &outcome) {
            Ok(counted) => {
                // Shown with --nocapture.
                let warnings: Vec<&str> = outcome
                    .finished
                    .stderr
                    .lines()
                    .filter(|line| line.contains(" WARN "))
                    .collect();
                println!(
                    "round {} of {rounds}: {}; {}; exit {:?} after the sample; {} lines printed, \
                     {} required, {} cut; {} warnings{}",
                    index + 1,
                    round.describe(),
                    outcome.sample.note,
                    outcome.exit_after,
                    counted.lines,
                    counted.required_lines,
                    counted.cut_lines,
                    warnings.len(),
                    warnings
                        .first()
                        .map_or(String::new(), |w| format!(", first: {w}")),
                );
                tally.add(&counted);
            }
            Err(failure) => {
                // The report says it all, round included.
                drop(label);
                panic!("{}", failure.report(&round, &outcome, seed, rounds));
            }
        }
    }
    tally
}

/// Prints its text if dropped while the test panics.
struct Label(String);

impl Drop for Label {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- random stop test: {} ---", self.0);
        }
    }
}

/// Printable ASCII but `\` (which the server would escape): tokens show up unchanged.
fn filler_pool(rng: &mut Rng) -> Vec<u8> {
    let mut pool = Vec::with_capacity(POOL);
    while pool.len() < POOL {
        let mut bits = rng.next();
        for _ in 0..8 {
            let byte = b' ' + (bits & 0xff) as u8 % 94;
            pool.push(if byte >= b'\\' { byte + 1 } else { byte });
            bits >>= 8;
        }
    }
    pool
}

/// Mostly short: 60 % up to 60 bytes, a quarter up to 2 KB, the rest up to [`MAX_FILLER`].
fn filler_len(rng: &mut Rng) -> usize {
    match rng.next() % 100 {
        0..=59 => rng.size(0, 60),
        60..=84 => rng.size(61, 2000),
        85..=95 => rng.size(2001, 64 * 1024),
        _ => rng.size(64 * 1024, MAX_FILLER),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// `-o FILE` in a directory of the test's own.
    File,
    /// stdout, read as fast as it comes.
    FastPipe,
    /// stdout, read `chunk` bytes at a time with `pause` after each read, so that the server's
    /// output blocks.
    SlowPipe { chunk: usize, pause: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopBy {
    Timer,
    Term,
    Int,
}

/// How a client spaces its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// No pauses.
    Flood,
    /// Runs of up to 100 lines without pause, then 10–150 ms.
    Bursts,
    /// 1–20 ms after each line.
    Trickle,
    /// 50–400 ms after each line.
    Sparse,
}

/// What one client will do in a round.
struct Plan {
    /// The `c` of its tokens; also its index in the round.
    tag: usize,
    /// When it connects, after the server was started.
    connect_at: Duration,
    /// Whether it belongs to the crowd that connects right before the signal, which the test
    /// waits for (it has connected and written) before it signals.
    in_crowd: bool,
    pace: Pace,
    /// Whether its fillers are all short (up to 200 bytes).
    short: bool,
    /// Whether it sends no new line once the test knows the stop happened.
    quits_at_stop: bool,
    /// Whether it half-closes (FIN) after its last line; otherwise it stays connected.
    closes: bool,
    /// Every byte it will send: line k is `c{tag}-{k}-FILLER\n`.
    stream: Vec<u8>,
    /// Where each line ends in `stream`, just after its `\n`.
    ends: Vec<usize>,
    /// The pause after each line.
    pauses: Vec<Duration>,
}

impl Plan {
    fn new(
        rng: &mut Rng,
        tag: usize,
        crowd_at: Option<Duration>,
        stop_at: Duration,
        budget: usize,
        scale: &Scale,
        pool: &[u8],
    ) -> Plan {
        let stop_ms = stop_at.as_millis() as u64;
        let chosen = match rng.next() % 100 {
            0..=59 => rng.millis(0, 30),
            60..=79 => rng.millis(0, stop_ms),
            // Just before the stop: still in the accept queue when it comes, some of them.
            80..=94 => stop_at.saturating_sub(rng.millis(0, 30)),
            _ => stop_at + rng.millis(0, 20),
        };
        let connect_at = crowd_at.unwrap_or(chosen);
        let pace = rng.pick(&[Pace::Flood, Pace::Bursts, Pace::Trickle, Pace::Sparse]);
        let short = rng.percent(40);
        let keeps =
            scale.keep_sending_paces.contains(&pace) && rng.percent(scale.keep_sending_percent);
        let closes = rng.percent(25);
        let budget = rng.size(1024, budget.max(1024));
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        let mut pauses = Vec::new();
        let mut run_left = 0;
        while stream.len() < budget && ends.len() < MAX_LINES {
            stream.extend_from_slice(format!("c{tag}-{}-", ends.len()).as_bytes());
            let len = if short {
                rng.size(0, 200)
            } else {
                filler_len(rng)
            };
            let at = rng.size(0, pool.len() - len);
            stream.extend_from_slice(&pool[at..at + len]);
            stream.push(b'\n');
            ends.push(stream.len());
            pauses.push(match pace {
                Pace::Flood => Duration::ZERO,
                Pace::Bursts if run_left > 0 => {
                    run_left -= 1;
                    Duration::ZERO
                }
                Pace::Bursts => {
                    run_left = rng.range(1, 100);
                    rng.millis(10, 150)
                }
                Pace::Trickle => rng.millis(1, 20),
                Pace::Sparse => rng.millis(50, 400),
            });
        }
        Plan {
            tag,
            in_crowd: crowd_at.is_some(),
            connect_at,
            pace,
            short,
            quits_at_stop: !keeps,
            closes,
            stream,
            ends,
            pauses,
        }
    }

    fn start(&self, line: usize) -> usize {
        if line == 0 { 0 } else { self.ends[line - 1] }
    }

    /// Line `line` as the server prints it: without its `\n`.
    fn token(&self, line: usize) -> &[u8] {
        &self.stream[self.start(line)..self.ends[line] - 1]
    }

    /// How many whole lines (`\n` included) lie within the first `bytes` bytes.
    fn whole_lines_in(&self, bytes: usize) -> usize {
        self.ends.partition_point(|&end| end <= bytes)
    }

    fn describe(&self) -> String {
        format!(
            "connects at {} ms, plans {} lines / {} bytes ({:?}, {} fillers), {} at the stop, {} \
             after its last line",
            self.connect_at.as_millis(),
            self.ends.len(),
            self.stream.len(),
            self.pace,
            if self.short { "short" } else { "mixed" },
            if self.quits_at_stop {
                "quits"
            } else {
                "keeps sending"
            },
            if self.closes {
                "half-closes"
            } else {
                "stays connected"
            },
        )
    }
}

/// One server run: how it outputs, how and when it stops, and its clients.
struct Round {
    index: usize,
    sink: Sink,
    stop_by: StopBy,
    /// The `--duration`, or when the signal is sent, after the server was started.
    stop_at: Duration,
    /// How many of the clients (the last ones) connect within 0.5 ms before the signal; the
    /// test signals once each has sent something.
    crowd: usize,
    plans: Vec<Plan>,
}

impl Round {
    fn plan(scale: &Scale, seed: u64, index: usize) -> Round {
        let mut rng = Rng(seed ^ (index as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f));
        rng.next();
        let slow = Sink::SlowPipe {
            chunk: rng.pick(scale.slow_chunks),
            pause: Duration::from_millis(1),
        };
        let sink = if scale.take_turns {
            [Sink::File, Sink::FastPipe, slow][index % 3]
        } else {
            rng.pick(&[Sink::File, Sink::FastPipe, slow])
        };
        let stop_by = if scale.take_turns {
            [StopBy::Timer, StopBy::Term, StopBy::Timer, StopBy::Int][index % 4]
        } else {
            rng.pick(&[StopBy::Timer, StopBy::Timer, StopBy::Term, StopBy::Int])
        };
        let stop_at = match stop_by {
            StopBy::Timer => rng.millis(scale.timer_ms.0, scale.timer_ms.1),
            _ if rng.percent(scale.early_percent) => rng.millis(0, 50),
            _ => rng.millis(scale.signal_ms.0, scale.signal_ms.1),
        };
        let count = rng.range(scale.clients.0, scale.clients.1) as usize;
        let crowd = if stop_by != StopBy::Timer && rng.percent(scale.crowd_percent) {
            rng.size(count / 4, count / 2).max(2)
        } else {
            0
        };
        let pool = filler_pool(&mut rng);
        let plans = (0..count)
            .map(|tag| {
                let connect_at = if tag >= count - crowd {
                    let early = Duration::from_micros(rng.range(0, 500));
                    Some(stop_at.saturating_sub(early))
                } else {
                    None
                };
                let budget = 2 * scale.budget / count;
                Plan::new(&mut rng, tag, connect_at, stop_at, budget, scale, &pool)
            })
            .collect();
        Round {
            index,
            sink,
            stop_by,
            stop_at,
            crowd,
            plans,
        }
    }

    fn describe(&self) -> String {
        let stop = match self.stop_by {
            StopBy::Timer => format!("--duration {}ms", self.stop_at.as_millis()),
            StopBy::Term => format!("SIGTERM at {} ms", self.stop_at.as_millis()),
            StopBy::Int => format!("SIGINT at {} ms", self.stop_at.as_millis()),
        };
        let lines: usize = self.plans.iter().map(|p| p.ends.len()).sum();
        let bytes: usize = self.plans.iter().map(|p| p.stream.len()).sum();
        let crowd = match self.crowd {
            0 => String::new(),
            n => format!(" ({n} of them just before the signal)"),
        };
        format!(
            "output to {:?}, stop by {stop}, {} clients{crowd} planning {lines} lines / {bytes} \
             bytes",
            self.sink,
            self.plans.len(),
        )
    }

    /// Starts the server and the clients, stops the server, and collects what it printed.
    fn run(&self) -> Outcome {
        let dir = ScratchDir::new(self.index);
        let path = dir.0.join("out.txt");
        let path_text = path.to_str().expect("a UTF-8 temporary path").to_owned();
        let duration = format!("{}ms", self.stop_at.as_millis());
        let mut args = vec!["--max-line", MAX_LINE];
        if self.stop_by == StopBy::Timer {
            args.extend(["--duration", duration.as_str()]);
        }
        if self.sink == Sink::File {
            args.extend(["-o", path_text.as_str()]);
        }
        let conns: Vec<Conn> = self.plans.iter().map(|_| Conn::default()).collect();
        // Every client thread ends by this time even if nobody tells it to.
        let base = Instant::now();
        let control = Control {
            quit: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            arrived: Mutex::new(0),
            arrival: Condvar::new(),
            deadline: base + self.stop_at + 4 * LONG_TIMEOUT,
        };
        let outcome = thread::scope(|scope| {
            // Declared first, dropped last: a panic below kills the server first (its `Drop`),
            // then this ends the client threads, which the scope then joins.
            let _quit = QuitOnDrop(&control);
            let mut server = match self.sink {
                Sink::SlowPipe { .. } => Spawned::start_with_own_stdout(&args),
                _ => Spawned::start(&args),
            };
            let addr = server.addr();
            let slow_reader = match self.sink {
                Sink::SlowPipe { chunk, pause } => {
                    let stdout = server.take_stdout();
                    let deadline = control.deadline;
                    Some(scope.spawn(move || read_slowly(stdout, chunk, pause, deadline)))
                }
                _ => None,
            };
            for (plan, conn) in self.plans.iter().zip(&conns) {
                let control = &control;
                scope.spawn(move || send_plan(plan, conn, addr, base, control));
            }
            let sample = match self.stop_by {
                StopBy::Timer => {
                    // The server's deadline is its own start plus the duration, later than
                    // `base` plus the duration: a sample finished before that is before the stop.
                    // Sampled every millisecond or so near the end (a sleep may overshoot by
                    // milliseconds on a busy machine), then without pause for the last two.
                    let cutoff = base + self.stop_at;
                    control.sleep_until(cutoff - Duration::from_millis(100).min(self.stop_at));
                    let mut last = None;
                    loop {
                        let acked = sample(&conns);
                        let now = Instant::now();
                        if now >= cutoff {
                            break;
                        }
                        last = Some((acked, now));
                        if cutoff - now > Duration::from_millis(2) {
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                    server.wait_stderr("time is up", TIMEOUT);
                    control.stopped.store(true, Ordering::Relaxed);
                    match last {
                        Some((acked, at)) => Sample {
                            acked,
                            at,
                            note: format!(
                                "sampled {:?} before the earliest moment the timer could fire; \
                                 'time is up' read {:?} after the sample",
                                cutoff - at,
                                at.elapsed()
                            ),
                        },
                        None => Sample {
                            acked: vec![(0, 0); conns.len()],
                            at: Instant::now(),
                            note: String::from("the server started too late for a sample"),
                        },
                    }
                }
                by => {
                    control.sleep_until(base + self.stop_at);
                    let arrived = control.wait_for_crowd(self.crowd, TIMEOUT);
                    let acked = sample(&conns);
                    let sampled = Instant::now();
                    server.signal(if by == StopBy::Term {
                        Signal::TERM
                    } else {
                        Signal::INT
                    });
                    control.stopped.store(true, Ordering::Relaxed);
                    Sample {
                        acked,
                        at: sampled,
                        note: format!(
                            "sampled {:?} after the server was started ({arrived} of the crowd \
                             of {} had sent), {:?} before the signal",
                            sampled - base,
                            self.crowd,
                            sampled.elapsed()
                        ),
                    }
                }
            };
            // Behind a slow pipe the server prints what it holds before it exits: seconds.
            let finished = server.wait_exit(match self.sink {
                Sink::SlowPipe { .. } => 2 * LONG_TIMEOUT,
                _ => LONG_TIMEOUT,
            });
            let exit_after = sample.at.elapsed();
            control.quit.store(true, Ordering::Relaxed);
            let output = match slow_reader {
                Some(reader) => reader.join().expect("the slow reader does not panic"),
                None if self.sink == Sink::File => {
                    fs::read(&path).unwrap_or_else(|err| panic!("cannot read {path:?}: {err}"))
                }
                None => finished.stdout.clone().into_bytes(),
            };
            Outcome {
                finished,
                output,
                sample,
                exit_after,
                ends: Vec::new(),
            }
        });
        // The client threads have ended: what they saw is final.
        Outcome {
            ends: conns.iter().map(Conn::describe).collect(),
            ..outcome
        }
    }
}

/// A directory of the test's own, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(round: usize) -> ScratchDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "overhear-stop-{}-{round}-{nanos}",
            std::process::id()
        ));
        fs::create_dir(&path).unwrap_or_else(|err| panic!("cannot create {path:?}: {err}"));
        ScratchDir(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What the round's threads share with the test.
struct Control {
    /// Set when the round is over (or failing): every client thread ends.
    quit: AtomicBool,
    /// Set once the test knows the stop happened: clients that quit at the stop send no new line.
    stopped: AtomicBool,
    /// How many clients of the crowd have connected and sent something (or given up).
    arrived: Mutex<usize>,
    arrival: Condvar,
    deadline: Instant,
}

impl Control {
    fn over(&self) -> bool {
        self.quit.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }

    /// Waits until `count` clients of the crowd have arrived, or `timeout` passed; returns how
    /// many arrived.
    fn wait_for_crowd(&self, count: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut arrived = self.arrived.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let now = Instant::now();
            if *arrived >= count || now >= deadline {
                return *arrived;
            }
            arrived = self
                .arrival
                .wait_timeout(arrived, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Sleeps until `when` in short slices; false if the round ended first.
    fn sleep_until(&self, when: Instant) -> bool {
        loop {
            if self.over() {
                return false;
            }
            let now = Instant::now();
            if now >= when {
                return true;
            }
            thread::sleep(SLICE.min(when - now));
        }
    }
}

/// Counts a client of the crowd as arrived when dropped: after its first write, or whenever it
/// gives up before that.
struct Arrival<'a>(&'a Control);

impl Drop for Arrival<'_> {
    fn drop(&mut self) {
        *self
            .0
            .arrived
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        self.0.arrival.notify_all();
    }
}

struct QuitOnDrop<'a>(&'a Control);

impl Drop for QuitOnDrop<'_> {
    fn drop(&mut self) {
        self.0.quit.store(true, Ordering::Relaxed);
    }
}

/// One client's connection as the test sees it.
#[derive(Default)]
struct Conn {
    /// Set once connected (nonblocking); kept open until the round ends, so that the test can
    /// ask the kernel about it at any time.
    stream: OnceLock<TcpStream>,
    /// Bytes of the plan's stream the kernel took (raised after each write returns).
    written: AtomicUsize,
    /// How the client thread ended.
    end: Mutex<String>,
}

impl Conn {
    fn finish(&self, how: String) {
        *self.end.lock().unwrap_or_else(PoisonError::into_inner) = how;
    }

    fn describe(&self) -> String {
        let end = self.end.lock().unwrap_or_else(PoisonError::into_inner);
        format!(
            "wrote {} bytes; {}",
            self.written.load(Ordering::Acquire),
            if end.is_empty() { "(no end)" } else { &end }
        )
    }
}

/// The client thread: connects at its time and sends its lines with its pauses, on a
/// nonblocking socket, so that a full window never hides a stop or the round's end.
fn send_plan(plan: &Plan, conn: &Conn, addr: SocketAddr, base: Instant, control: &Control) {
    let mut arrival = plan.in_crowd.then_some(Arrival(control));
    if !control.sleep_until(base + plan.connect_at) {
        return conn.finish(String::from("the round ended before its time to connect"));
    }
    let stream = match TcpStream::connect_timeout(&addr, TIMEOUT) {
        Ok(stream) => stream,
        Err(err) => return conn.finish(format!("could not connect: {err}")),
    };
    stream
        .set_nonblocking(true)
        .expect("a socket can be made nonblocking");
    let mut stream: &TcpStream = conn.stream.get_or_init(|| stream);
    let mut sent = 0;
    for (line, (&end, &pause)) in plan.ends.iter().zip(&plan.pauses).enumerate() {
        if control.over() {
            return conn.finish(format!("stopped by the test before line {line}"));
        }
        if plan.quits_at_stop && control.stopped.load(Ordering::Relaxed) {
            return conn.finish(format!("quit at the stop before line {line}"));
        }
        while sent < end {
            match stream.write(&plan.stream[sent..end]) {
                Ok(0) => return conn.finish(format!("the socket took nothing in line {line}")),
                Ok(n) => {
                    sent += n;
                    conn.written.store(sent, Ordering::Release);
                    drop(arrival.take());
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if control.over() {
                        return conn.finish(format!("stopped by the test in line {line}"));
                    }
                    let mut fds = [PollFd::new(stream, PollFlags::OUT)];
                    let slice = Timespec {
                        tv_sec: 0,
                        tv_nsec: SLICE.as_nanos() as _,
                    };
                    // An error (EINTR) only means looking again.
                    let _ = poll(&mut fds, Some(&slice));
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return conn.finish(format!("write failed in line {line}: {err}")),
            }
        }
        if !control.sleep_until(Instant::now() + pause) {
            return conn.finish(format!("stopped by the test after line {line}"));
        }
    }
    if plan.closes {
        let _ = stream.shutdown(Shutdown::Write);
        conn.finish(String::from("sent every line and half-closed"));
    } else {
        conn.finish(String::from("sent every line, stayed connected"));
    }
}

/// For each client: the bytes its kernel has seen acknowledged, and the bytes written. The
/// write count is read before the queue, and a write in progress is not counted yet, so the
/// difference never exceeds what the server's kernel acknowledged: a lower bound.
fn sample(conns: &[Conn]) -> Vec<(usize, usize)> {
    conns
        .iter()
        .map(|conn| {
            let Some(stream) = conn.stream.get() else {
                // Not connected yet: nothing written.
                return (0, 0);
            };
            let written = conn.written.load(Ordering::Acquire);
            (written.saturating_sub(unacknowledged(stream)), written)
        })
        .collect()
}

/// Reads the server's stdout `chunk` bytes at a time with `pause` after each read, until EOF.
fn read_slowly(
    mut stdout: ChildStdout,
    chunk: usize,
    pause: Duration,
    deadline: Instant,
) -> Vec<u8> {
    let mut output = Vec::new();
    let mut buf = vec![0; chunk];
    while Instant::now() < deadline {
        match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                output.extend_from_slice(&buf[..n]);
                thread::sleep(pause);
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    output
}

/// What one round left behind.
struct Outcome {
    finished: Finished,
    /// Everything the server printed (stdout, or the file).
    output: Vec<u8>,
    sample: Sample,
    /// From the sample to the exit (seen within 10 ms).
    exit_after: Duration,
    /// How each client thread ended.
    ends: Vec<String>,
}

/// Taken just before the stop.
struct Sample {
    /// Per client: bytes acknowledged by the server's kernel, bytes written.
    acked: Vec<(usize, usize)>,
    at: Instant,
    note: String,
}

/// What the checks covered.
#[derive(Debug, Default)]
struct Tally {
    /// The run's seed (only in the run's total).
    seed: u64,
    clients: usize,
    clients_printed: usize,
    lines: usize,
    required_lines: usize,
    cut_lines: usize,
    bytes: usize,
    acked_bytes: usize,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.clients += other.clients;
        self.clients_printed += other.clients_printed;
        self.lines += other.lines;
        self.required_lines += other.required_lines;
        self.cut_lines += other.cut_lines;
        self.bytes += other.bytes;
        self.acked_bytes += other.acked_bytes;
    }
}

/// One printed message.
#[derive(Debug, Clone, Copy)]
struct Printed<'a> {
    /// Its line number in the output, from 1.
    line: usize,
    number: u64,
    /// Marked `[N!]`: cut off by the stop.
    cut: bool,
    message: &'a [u8],
}

/// Why a round failed, and which client shows it.
struct Failure {
    client: Option<usize>,
    number: Option<u64>,
    problem: String,
}

impl Failure {
    fn output(problem: String) -> Failure {
        Failure {
            client: None,
            number: None,
            problem,
        }
    }

    fn report(&self, round: &Round, outcome: &Outcome, seed: u64, rounds: usize) -> String {
        let mut text = format!(
            "random stop test: {}\nseed {seed} ({SEED_VAR}={seed} replays the plans, not the \
             timing), round {} of {rounds}: {}\nstop: {}\nexit: {} after {:?}\n",
            self.problem,
            round.index + 1,
            round.describe(),
            outcome.sample.note,
            outcome.finished.status,
            outcome.exit_after,
        );
        if let Some(client) = self.client {
            let plan = &round.plans[client];
            let (acked, written) = outcome.sample.acked[client];
            let _ = writeln!(
                text,
                "client c{client}{}: {}\n  at the sample: {written} bytes written, {acked} \
                 acknowledged = {} whole lines; the client thread {}",
                self.number.map_or_else(
                    || String::from(" (printed under no number)"),
                    |n| format!(" (printed as [{n}])")
                ),
                plan.describe(),
                plan.whole_lines_in(acked),
                outcome.ends[client],
            );
        }
        let stderr: Vec<&str> = outcome.finished.stderr.lines().collect();
        let skip = stderr.len().saturating_sub(STDERR_TAIL);
        let _ = writeln!(
            text,
            "--- {} ---\n--- server stderr ({skip} earlier lines left out) ---\n{}",
            outcome.finished.command,
            stderr[skip..].join("\n")
        );
        text
    }
}

/// The whole output against the plans and the sample. Every line must be `[N] token` (or
/// `[N!] ` + a prefix of a token, as a client's last line); each N must be one client; each
/// client's lines must be its tokens 0, 1, 2, … whole, with only the last one possibly cut; and
/// everything acknowledged before the stop must be printed.
fn check(round: &Round, outcome: &Outcome) -> Result<Tally, Failure> {
    if !outcome.finished.status.success() {
        return Err(Failure::output(format!(
            "the server exited with {}",
            outcome.finished.status
        )));
    }
    if round.sink == Sink::File && !outcome.finished.stdout.is_empty() {
        return Err(Failure::output(format!(
            "with -o FILE, stdout has {} bytes",
            outcome.finished.stdout.len()
        )));
    }
    let output = &outcome.output[..];
    if !output.is_empty() && !output.ends_with(b"\n") {
        let tail = &output[output.len().saturating_sub(80)..];
        return Err(Failure::output(format!(
            "the output ends without a newline: ...{}",
            String::from_utf8_lossy(tail)
        )));
    }
    let mut by_number: BTreeMap<u64, Vec<Printed<'_>>> = BTreeMap::new();
    let lines = output
        .strip_suffix(b"\n")
        .map(|body| body.split(|&b| b == b'\n'));
    for (index, line) in lines.into_iter().flatten().enumerate() {
        let printed = parse_line(index + 1, line).ok_or_else(|| {
            Failure::output(format!(
                "output line {} is not `[N] message`: {}",
                index + 1,
                excerpt(line)
            ))
        })?;
        // Numbers are given in accept order, one per connection: never more than the clients.
        if printed.number == 0 || printed.number > round.plans.len() as u64 {
            return Err(Failure::output(format!(
                "output line {} has client number {}, but only {} clients connected: {}",
                index + 1,
                printed.number,
                round.plans.len(),
                excerpt(line)
            )));
        }
        by_number.entry(printed.number).or_default().push(printed);
    }
    // Which client each number is, from the `c{tag}-{k}-` its first message starts with.
    let mut number_of: Vec<Option<u64>> = vec![None; round.plans.len()];
    let mut headless = Vec::new();
    for (&number, printed) in &by_number {
        let Some((tag, _)) = header(printed[0].message) else {
            headless.push(number);
            continue;
        };
        if tag >= round.plans.len() {
            return Err(Failure::output(format!(
                "[{number}] (output line {}) prints a token of client c{tag}, which does not \
                 exist: {}",
                printed[0].line,
                excerpt(printed[0].message)
            )));
        }
        if let Some(other) = number_of[tag] {
            return Err(Failure {
                client: Some(tag),
                number: Some(number),
                problem: format!(
                    "client c{tag} is printed under two numbers, [{other}] and [{number}] (output \
                     line {}: {})",
                    printed[0].line,
                    excerpt(printed[0].message)
                ),
            });
        }
        number_of[tag] = Some(number);
    }
    // A number whose only message was cut inside its `c{tag}-0-`: any client not printed
    // otherwise whose first token starts so (one that must have printed more fails below).
    for number in headless {
        let printed = &by_number[&number];
        let first = printed[0];
        let candidates: Vec<usize> = (0..round.plans.len())
            .filter(|&tag| number_of[tag].is_none())
            .filter(|&tag| {
                let plan = &round.plans[tag];
                !plan.ends.is_empty() && plan.token(0).starts_with(first.message)
            })
            .collect();
        if printed.len() > 1 || candidates.is_empty() {
            return Err(Failure::output(format!(
                "[{number}] (output line {}) starts with a message that is no client's first \
                 token: {}",
                first.line,
                excerpt(first.message)
            )));
        }
        let fits = candidates
            .iter()
            .copied()
            .find(|&tag| outcome.sample.acked[tag].0 <= first.message.len());
        let tag = fits.unwrap_or(candidates[0]);
        number_of[tag] = Some(number);
    }
    let mut tally = Tally {
        clients: round.plans.len(),
        bytes: output.len(),
        ..Tally::default()
    };
    for (tag, plan) in round.plans.iter().enumerate() {
        let number = number_of[tag];
        let printed = number.map_or(&[][..], |n| &by_number[&n][..]);
        let acked = outcome.sample.acked[tag].0;
        tally.clients_printed += usize::from(!printed.is_empty());
        tally.lines += printed.len();
        tally.cut_lines += printed.iter().filter(|p| p.cut).count();
        tally.required_lines += plan.whole_lines_in(acked);
        tally.acked_bytes += acked;
        check_client(plan, printed, acked).map_err(|problem| Failure {
            client: Some(tag),
            number,
            problem,
        })?;
    }
    Ok(tally)
}

/// One client's printed messages against its plan and the bytes acknowledged before the stop.
fn check_client(plan: &Plan, printed: &[Printed<'_>], acked: usize) -> Result<(), String> {
    let tag = plan.tag;
    for (k, p) in printed.iter().enumerate() {
        let last = k + 1 == printed.len();
        if k >= plan.ends.len() {
            return Err(format!(
                "client c{tag} sent {} lines but [{}] prints more: output line {}: {}",
                plan.ends.len(),
                p.number,
                p.line,
                excerpt(p.message)
            ));
        }
        let token = plan.token(k);
        let fits = if last {
            token.starts_with(p.message)
        } else {
            !p.cut && p.message == token
        };
        if !fits {
            let what = match header(p.message) {
                Some((t, j)) if (t, j) != (tag, k) => format!(
                    "printed c{t}-{j} where c{tag}-{k} was due (a gap, a repeat, a reorder or \
                     another client's line)"
                ),
                _ if p.cut => String::from("printed as cut ([N!]) but it is not the last line"),
                _ if last => String::from("printed a message that is not a prefix of the token"),
                _ => String::from("printed a message that is not the whole token"),
            };
            return Err(format!(
                "client c{tag}, line {k}: {what}\n  expected: {}\n  printed (output line {}{}): \
                 {}\n  first difference at byte {}",
                excerpt(token),
                p.line,
                if p.cut { ", [N!]" } else { "" },
                excerpt(p.message),
                first_difference(token, p.message)
            ));
        }
    }
    // A last message printed whole may still have lacked its `\n` (a close or stop right
    // before it): count it as whole, which errs towards passing.
    let whole = match printed.last() {
        None => 0,
        Some(last) if !last.cut && last.message.len() == plan.token(printed.len() - 1).len() => {
            printed.len()
        }
        Some(_) => printed.len() - 1,
    };
    let required = plan.whole_lines_in(acked);
    if whole < required {
        let shown = printed.last().map_or_else(
            || String::from("nothing"),
            |p| {
                format!(
                    "{} lines, the last (output line {}{}): {}",
                    printed.len(),
                    p.line,
                    if p.cut { ", [N!]" } else { "" },
                    excerpt(p.message)
                )
            },
        );
        return Err(format!(
            "LOST: client c{tag}'s kernel saw {acked} bytes acknowledged before the stop, \
             {required} whole lines, but only {whole} were printed whole\n  first missing: line \
             {whole}: {}\n  printed: {shown}",
            excerpt(plan.token(whole))
        ));
    }
    let through = match printed.last() {
        None => 0,
        Some(last) => {
            let k = printed.len() - 1;
            plan.start(k) + last.message.len() + usize::from(k < whole)
        }
    };
    if through < acked {
        let k = printed.len().saturating_sub(1).max(whole);
        return Err(format!(
            "LOST: client c{tag}'s kernel saw {acked} bytes acknowledged before the stop, {} \
             bytes into line {k}, but the output has only {} bytes of that line\n  line {k}: {}",
            acked - plan.start(k),
            through.saturating_sub(plan.start(k)),
            excerpt(plan.token(k))
        ));
    }
    Ok(())
}

/// `[N] message` or `[N!] message`; `[N+]` pieces do not occur: no line is longer than
/// `--max-line`.
fn parse_line(line: usize, text: &[u8]) -> Option<Printed<'_>> {
    let rest = text.strip_prefix(b"[")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let number = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = &rest[digits..];
    let (cut, message) = match rest.strip_prefix(b"!] ") {
        Some(message) => (true, message),
        None => (false, rest.strip_prefix(b"] ")?),
    };
    Some(Printed {
        line,
        number,
        cut,
        message,
    })
}

/// The tag and line number a token starts with (`c{tag}-{k}-`), if the message has them whole.
fn header(message: &[u8]) -> Option<(usize, usize)> {
    let text = message.strip_prefix(b"c")?;
    let (tag, rest) = number_then_dash(text)?;
    let (line, _) = number_then_dash(rest)?;
    Some((tag, line))
}

fn number_then_dash(text: &[u8]) -> Option<(usize, &[u8])> {
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    let rest = text[digits..].strip_prefix(b"-")?;
    let number = std::str::from_utf8(&text[..digits]).ok()?.parse().ok()?;
    Some((number, rest))
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// A message short enough to show: its start and end, with its length.
fn excerpt(bytes: &[u8]) -> String {
    let shown = if bytes.len() <= 100 {
        String::from_utf8_lossy(bytes).into_owned()
    } else {
        format!(
            "{}...{}",
            String::from_utf8_lossy(&bytes[..60]),
            String::from_utf8_lossy(&bytes[bytes.len() - 20..])
        )
    };
    format!("{shown:?} ({} bytes)", bytes.len())
}
