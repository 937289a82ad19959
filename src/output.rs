//! Output: the escaping that keeps client bytes from driving a terminal, and the shared, locked
//! sink every worker writes its formatted lines to.

use crate::sync::lock;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crate::error::Error;
use crate::platform;
use crate::poll;
use crate::shutdown::{Shutdown, StopReason};

/// Whether `byte` passes through escaping as itself: printable ASCII other than `\`, and tab.
fn is_plain(byte: u8) -> bool {
    (byte.wrapping_sub(0x20) < 0x5f) & (byte != b'\\') | (byte == b'\t')
}

/// Whether every byte of `bytes` is plain. Checks in fixed blocks without early exit inside a
/// block, which the compiler turns into SIMD: this runs on every byte of every message.
fn all_plain(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(32);
    let blocks_plain = blocks
        .by_ref()
        .all(|block| block.iter().fold(true, |ok, &b| ok & is_plain(b)));
    blocks_plain && blocks.remainder().iter().all(|&b| is_plain(b))
}

/// Whether every byte of `bytes` is plain or a `\n`: whole lines that print as they are. Checked
/// in blocks like [`all_plain`], over a whole read's lines at once.
pub fn all_plain_lines(bytes: &[u8]) -> bool {
    let plain = |b: u8| is_plain(b) | (b == b'\n');
    let mut blocks = bytes.chunks_exact(32);
    let blocks_plain = blocks
        .by_ref()
        .all(|block| block.iter().fold(true, |ok, &b| ok & plain(b)));
    blocks_plain && blocks.remainder().iter().all(|&b| plain(b))
}

/// Whether `c` can hide or reorder text on a terminal although it is printable: the
/// bidirectional controls (U+202A–U+202E, U+2066–U+2069, and the marks U+200E, U+200F, U+061C:
/// text that displays reversed, the "Trojan Source" trick), zero-width characters (U+200B–U+200D,
/// U+2060, U+FEFF) and the line and paragraph separators U+2028 and U+2029, at which some
/// terminals break lines.
pub fn hides_text(c: char) -> bool {
    matches!(c,
        '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}'
        | '\u{200e}' | '\u{200f}' | '\u{061c}'
        | '\u{200b}'..='\u{200d}' | '\u{2060}' | '\u{feff}'
        | '\u{2028}' | '\u{2029}')
}

/// Appends `bytes` to `out` so that no control byte reaches a terminal and nothing can hide or
/// reorder what is shown, losslessly: `\` becomes `\\`; C0 controls (but tab), DEL, the UTF-8
/// encodings of the C1 controls U+0080–U+009F and of the characters [`hides_text`] names, and
/// every byte of invalid UTF-8 become `\xNN`; everything else (printable UTF-8) passes through.
pub fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    if all_plain(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            let mut utf8 = [0; 4];
            let encoded = ch.encode_utf8(&mut utf8).as_bytes();
            match ch {
                '\\' => out.extend_from_slice(b"\\\\"),
                '\t' => out.push(b'\t'),
                c if c.is_control() || hides_text(c) => {
                    encoded.iter().for_each(|&b| push_hex(out, b));
                }
                _ => out.extend_from_slice(encoded),
            }
        }
        chunk.invalid().iter().for_each(|&b| push_hex(out, b));
    }
}

fn push_hex(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(&[
        b'\\',
        b'x',
        HEX[usize::from(byte >> 4)],
        HEX[usize::from(byte & 0xf)],
    ]);
}

/// Reverses [`escape_into`]: the bytes behind escaped text, so anything overhear prints can be
/// pasted back (typed messages are read this way). `\\` is a backslash and `\xNN` the byte
/// NN; `\r`, `\n` and `\t` are read too, for typing. `Err` gives the offset of a backslash that
/// starts none of these.
pub fn unescape(text: &[u8]) -> Result<Vec<u8>, usize> {
    let mut out = Vec::with_capacity(text.len());
    let mut at = 0;
    while let Some(&first) = text.get(at) {
        if first != b'\\' {
            out.push(first);
            at += 1;
            continue;
        }
        let (byte, len) = match &text[at + 1..] {
            [b'\\', ..] => (b'\\', 2),
            [b'r', ..] => (b'\r', 2),
            [b'n', ..] => (b'\n', 2),
            [b't', ..] => (b'\t', 2),
            [b'x', hi, lo, ..] => match (hex_digit(*hi), hex_digit(*lo)) {
                (Some(hi), Some(lo)) => (hi << 4 | lo, 4),
                _ => return Err(at),
            },
            _ => return Err(at),
        };
        out.push(byte);
        at += len;
    }
    Ok(out)
}

fn hex_digit(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Where the output goes.
pub enum Sink {
    /// A file, or standard output as a file. A regular file on a local file system is written by
    /// every worker at once (see [`Output`]); anything else (a pipe, a terminal, a network file
    /// system) goes through the writer role.
    File(File),
    /// Any other writer, written through the writer role. It should be unbuffered.
    Writer(Box<dyn Write + Send>),
}

/// Most bytes of lines waiting for the current writer before other workers wait too.
const PENDING_LIMIT: usize = 1024 * 1024;

/// Where formatted lines go, shared by every worker; lines are written whole, a batch at a time,
/// so they never interleave.
///
/// There is no writer thread: the worker that finds nobody writing becomes the writer and
/// writes its lines itself; a worker that finds someone writing appends its lines to a pending
/// buffer and goes back to its socket, and the writer writes that buffer before it leaves (flat
/// combining). So the copying is spread over the workers, one `write(2)` carries the lines of
/// many, and nobody sleeps on a lock while there is room. A lone writer thread would get a 1/17
/// share of 2 cores among 8 busy workers and 8 clients under fair scheduling, and be the
/// bottleneck.
///
/// When the sink is slow, the pending buffer fills to [`PENDING_LIMIT`], workers wait for room,
/// stop reading their sockets, and TCP pushes back on the clients: nothing is dropped, and memory
/// stays bounded by that limit plus one buffer per sending client. A pipe left non-blocking by
/// the parent is waited on until it takes more, as a blocking one would be.
///
/// A regular file on a local file system that keeps every `write(2)` whole (ext4, xfs, btrfs,
/// tmpfs, …; see [`platform::keeps_writes_whole`]) needs no writer role: every worker writes its
/// own lines with one `write(2)` at a time, all at once. Linux holds the file's lock for the
/// whole of each buffered write and moves a shared file offset atomically, so writes never
/// interleave or overlap; such a file only takes part of a write when it fails (disk full), and
/// a short write there fails the run rather than risk a torn line. This keeps the kernel's copy
/// into the page cache going from every worker, where one writer at a time stalled the whole
/// pipeline whenever that thread was descheduled. Every other file goes through the writer role.
/// A regular file is synced at the end ([`Output::finish`]): a network file system may report a
/// failed write only then.
#[derive(Clone)]
pub struct Output {
    shared: Arc<Shared>,
}

struct Shared {
    target: Target,
    /// Whether workers write straight to the file, each with one `write(2)` at a time.
    direct: bool,
    /// Whether the output is a regular file, to be synced at the end.
    regular: bool,
    /// Whether the output is a pipe, whose reader the listener watches.
    fifo: bool,
    state: Mutex<Pending>,
    /// Signalled when the writer takes the pending lines (or gives up): there is room again.
    room: Condvar,
    /// Set once a write failed: later lines are discarded without trying.
    broken: AtomicBool,
    /// Messages whose lines were discarded because a write failed.
    unwritten: AtomicU64,
    /// The first write error other than the reader leaving; it makes the run fail.
    failure: Mutex<Option<io::Error>>,
    shutdown: Shutdown,
}

/// What the lines are written to.
enum Target {
    /// A file (or standard output as one): written directly, or by the writer of the moment,
    /// who alone writes, so it needs no lock of its own.
    File(File),
    /// Any other writer; locked only by the writer of the moment, so never contended.
    Writer(Mutex<Box<dyn Write + Send>>),
}

/// Lines waiting for the current writer.
#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// How many messages `lines` holds, counted as unwritten if they are discarded.
    messages: u64,
    /// Whether a worker is writing; it writes `lines` before it stops being the writer, or
    /// hands them on to a waiting worker, which writes them first.
    writing: bool,
    /// Workers waiting for room.
    waiting: usize,
    /// The writer's second buffer, kept between writers.
    spare: Vec<u8>,
}

/// Batches a writer writes before it hands the role to a waiting worker.
const WRITER_ROUNDS: usize = 8;

impl Output {
    /// Output to `sink`. A failed write requests a stop through `shutdown` (a reader that went
    /// away is a normal stop).
    pub fn new(sink: Sink, shutdown: Shutdown) -> Output {
        let kind = match &sink {
            Sink::File(file) => file.metadata().ok().map(|m| m.file_type()),
            Sink::Writer(_) => None,
        };
        let regular = kind.is_some_and(|k| k.is_file());
        let fifo = kind.is_some_and(|k| k.is_fifo());
        let target = match sink {
            Sink::File(file) => Target::File(file),
            Sink::Writer(writer) => Target::Writer(Mutex::new(writer)),
        };
        let direct =
            regular && matches!(&target, Target::File(f) if platform::keeps_writes_whole(f));
        Output {
            shared: Arc::new(Shared {
                target,
                direct,
                regular,
                fifo,
                state: Mutex::new(Pending::default()),
                room: Condvar::new(),
                broken: AtomicBool::new(false),
                unwritten: AtomicU64::new(0),
                failure: Mutex::new(None),
                shutdown,
            }),
        }
    }

    /// The output, if it is a pipe, whose reader the listener watches: a pipe reports an error
    /// to its writer's `poll(2)` once nobody can read it, so the run stops at once instead of at
    /// the next write.
    pub fn watched_pipe(&self) -> Option<BorrowedFd<'_>> {
        match &self.shared.target {
            Target::File(file) if self.shared.fifo => Some(file.as_fd()),
            _ => None,
        }
    }

    /// Messages received but not written, because a write failed (or the reader left).
    pub fn unwritten(&self) -> u64 {
        self.shared.unwritten.load(Ordering::Relaxed)
    }

    /// Writes whole lines holding `messages` messages: straight to a regular file, otherwise
    /// itself or by leaving them to the worker that is writing, waiting only while the lines
    /// waiting are over [`PENDING_LIMIT`]. After a failed write, discards them and counts their
    /// messages as unwritten.
    ///
    /// Nothing here logs: log records themselves may come through here ([`LogRoute`]), with the
    /// logger's lock held.
    pub fn write(&self, lines: &[u8], messages: u64) {
        let shared = &*self.shared;
        if shared.broken.load(Ordering::Relaxed) {
            shared.unwritten.fetch_add(messages, Ordering::Relaxed);
            return;
        }
        if lines.is_empty() {
            return;
        }
        if shared.direct {
            if let Target::File(file) = &shared.target {
                if let Err(err) = write_once(file, lines) {
                    shared.unwritten.fetch_add(messages, Ordering::Relaxed);
                    self.fail(err);
                }
                return;
            }
        }
        let mut pending = lock(&shared.state);
        while pending.writing && pending.lines.len() >= PENDING_LIMIT {
            pending.waiting += 1;
            pending = shared
                .room
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
            pending.waiting -= 1;
        }
        if shared.broken.load(Ordering::Relaxed) {
            shared.unwritten.fetch_add(messages, Ordering::Relaxed);
            return;
        }
        if pending.writing {
            pending.lines.extend_from_slice(lines);
            pending.messages += messages;
            return;
        }
        pending.writing = true;
        // The two buffers, pending and spare, live as long as the output and keep their
        // capacity: no megabyte-sized allocation (an mmap and its page faults) per batch.
        let mut batch = std::mem::take(&mut pending.spare);
        // Lines an earlier writer handed on go first: some may be this worker's own.
        let direct = pending.lines.is_empty();
        let mut batch_messages = messages + std::mem::take(&mut pending.messages);
        if !direct {
            pending.lines.extend_from_slice(lines);
            std::mem::swap(&mut batch, &mut pending.lines);
        }
        drop(pending);
        let mut written = self.write_as_writer(if direct { lines } else { &batch });
        for round in 1.. {
            let mut pending = lock(&shared.state);
            batch.clear();
            // After a few batches, hand the role to a worker waiting for room, so no worker
            // writes for everyone else while its own client waits.
            let hand_on = round >= WRITER_ROUNDS && pending.waiting > 0;
            if written.is_err() || pending.lines.is_empty() || hand_on {
                pending.writing = false;
                pending.spare = batch;
                if written.is_err() {
                    shared.broken.store(true, Ordering::Relaxed);
                    batch_messages += std::mem::take(&mut pending.messages);
                    pending.lines.clear();
                }
                shared.room.notify_all();
                break;
            }
            std::mem::swap(&mut batch, &mut pending.lines);
            batch_messages = std::mem::take(&mut pending.messages);
            shared.room.notify_all();
            drop(pending);
            written = self.write_as_writer(&batch);
        }
        if let Err(err) = written {
            shared
                .unwritten
                .fetch_add(batch_messages, Ordering::Relaxed);
            self.fail(err);
        }
    }

    /// Writes all of `bytes` as the writer of the moment.
    fn write_as_writer(&self, bytes: &[u8]) -> io::Result<()> {
        match &self.shared.target {
            Target::File(file) => write_file(file, bytes),
            Target::Writer(writer) => {
                let mut writer = lock(writer);
                writer.write_all(bytes).and_then(|()| writer.flush())
            }
        }
    }

    /// Marks the output broken and stops the run: quietly when the reader went away, else with
    /// the error the run ends with (said once, by whoever reports the run's outcome).
    fn fail(&self, err: io::Error) {
        self.shared.broken.store(true, Ordering::Relaxed);
        if err.kind() == io::ErrorKind::BrokenPipe {
            self.shared.shutdown.request(StopReason::OutputClosed);
        } else {
            lock(&self.shared.failure).get_or_insert(err);
            self.shared.shutdown.request(StopReason::OutputFailed);
        }
    }

    /// The run's output outcome, once every worker is joined: a regular file is synced first,
    /// since a network file system may report a failed write only then.
    ///
    /// # Errors
    /// [`Error::Output`] when a write or the sync failed for another reason than the reader
    /// going away.
    pub fn finish(&self) -> Result<(), Error> {
        let shared = &*self.shared;
        if shared.regular && !shared.broken.load(Ordering::Relaxed) {
            if let Target::File(file) = &shared.target {
                if let Err(err) = file.sync_data() {
                    self.fail(err);
                }
            }
        }
        let failure = lock(&shared.failure).take();
        failure.map_or(Ok(()), |err| Err(Error::Output(err)))
    }
}

/// One `write(2)` of all of `lines` to a file that keeps writes whole, as every worker writes
/// at once. Such a file takes part of a write only when the rest fails (a full disk, the size
/// limit): the rest is tried once more for the error to report. Should it go through instead,
/// another worker's lines may have landed in between, and the run fails rather than say
/// nothing of a torn line.
fn write_once(mut file: &File, lines: &[u8]) -> io::Result<()> {
    let written = loop {
        match file.write(lines) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            other => break other?,
        }
    };
    if written == lines.len() {
        return Ok(());
    }
    write_file(file, &lines[written..])?;
    Err(io::Error::other(format!(
        "the output file took {written} of {} bytes in one write, and lines may be torn there",
        lines.len()
    )))
}

/// Log records on their way to stderr, sent through the output's writer once it is attached, so
/// that when stderr and the output are one pipe or terminal (`2>&1`) every line on it is whole:
/// a log line never lands inside a batch of data lines. Before [`LogRoute::attach`] (and for
/// whoever embeds the library without one) records go straight to stderr.
#[derive(Clone, Default)]
pub struct LogRoute(Arc<OnceLock<Output>>);

impl LogRoute {
    /// From now on, log records go through `output`.
    pub fn attach(&self, output: &Output) {
        let _ = self.0.set(output.clone());
    }
}

impl Write for LogRoute {
    fn write(&mut self, record: &[u8]) -> io::Result<usize> {
        match self.0.get() {
            // A record that cannot be written is dropped, as a failed write to stderr would be.
            Some(output) => {
                output.write(record, 0);
                Ok(record.len())
            }
            None => io::stderr().write(record),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.0.get() {
            Some(_) => Ok(()),
            None => io::stderr().flush(),
        }
    }
}

/// Writes all of `bytes` to `file` with as many `write(2)`s as it takes, waiting for room when
/// the file (a pipe its parent made non-blocking) says it would block.
fn write_file(mut file: &File, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match file.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [poll::Fd::new(file, poll::Flags::OUT)];
                poll::wait(&mut fds, Duration::MAX)?;
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(bytes: &[u8]) -> String {
        let mut out = Vec::new();
        escape_into(&mut out, bytes);
        String::from_utf8(out).expect("escaping yields UTF-8")
    }

    #[test]
    fn printable_text_passes_through() {
        assert_eq!(escaped(b"hello, world\ttab"), "hello, world\ttab");
        assert_eq!(escaped("grüße, 日本".as_bytes()), "grüße, 日本");
    }

    #[test]
    fn control_bytes_become_visible() {
        assert_eq!(escaped(b"\x1b[2J\x07"), "\\x1b[2J\\x07");
        assert_eq!(escaped(b"a\rb\x08\x00\x7f"), "a\\x0db\\x08\\x00\\x7f");
        assert_eq!(escaped("\u{9b}31m".as_bytes()), "\\xc2\\x9b31m");
        // A tab passes through raw beside escaped bytes too, not only in a plain message.
        assert_eq!(escaped(b"a\tb\x07"), "a\tb\\x07");
    }

    #[test]
    fn del_and_backslash_alone_in_plain_text_are_escaped() {
        // The fast path for plain messages must not let these through.
        assert_eq!(escaped(b"ab\x7f"), "ab\\x7f");
        assert_eq!(escaped(b"\x7f"), "\\x7f");
        assert_eq!(escaped(b"\x1f"), "\\x1f");
        assert_eq!(escaped(b"a\\b"), "a\\\\b");
        assert_eq!(escaped(b"\\"), "\\\\");
        assert_eq!(escaped(b"~ \t!"), "~ \t!");
        for byte in 0..=u8::MAX {
            let plain = (0x20..0x7f).contains(&byte) && byte != b'\\' || byte == b'\t';
            assert_eq!(is_plain(byte), plain, "{byte:#04x}");
        }
    }

    #[test]
    fn invalid_utf8_and_backslash_are_escaped() {
        assert_eq!(escaped(b"\xff\xfeok"), "\\xff\\xfeok");
        assert_eq!(escaped(b"a\\x41"), "a\\\\x41");
    }

    #[test]
    fn characters_that_hide_or_reorder_text_are_escaped() {
        assert_eq!(escaped("a\u{202e}b".as_bytes()), "a\\xe2\\x80\\xaeb");
        for c in [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{061c}', '\u{200b}', '\u{200c}',
            '\u{200d}', '\u{2060}', '\u{feff}', '\u{2028}', '\u{2029}',
        ] {
            let text = escaped(c.to_string().as_bytes());
            assert!(
                text.starts_with("\\x") && !text.contains(c),
                "{c:?}: {text}"
            );
            assert_eq!(
                unescape(text.as_bytes()).as_deref(),
                Ok(c.to_string().as_bytes())
            );
        }
        // Their neighbours are ordinary text.
        assert_eq!(
            escaped("\u{2027}\u{202f}\u{2065}".as_bytes()),
            "\u{2027}\u{202f}\u{2065}"
        );
    }

    #[test]
    fn typing_escapes_are_read_and_a_bad_one_is_placed() {
        assert_eq!(
            unescape(b"tab\\tcr\\rnl\\n\\\\\\x41").as_deref(),
            Ok(&b"tab\tcr\rnl\n\\A"[..])
        );
        assert_eq!(unescape(b"ab\\q"), Err(2));
        assert_eq!(unescape(b"\\x4"), Err(0));
        assert_eq!(unescape(b"x\\"), Err(1));
    }

    #[test]
    fn escaping_round_trips() {
        let samples: [&[u8]; 5] = [
            b"plain",
            b"\\x1b literally",
            b"\x1b]0;title\x07",
            b"\xc3\x28\xa0\xa1 half \xe2\x82",
            "é\u{85}\u{200b}".as_bytes(),
        ];
        for sample in samples {
            let mut out = Vec::new();
            escape_into(&mut out, sample);
            assert!(out.iter().all(|&b| b >= 0x20 || b == b'\t'));
            assert_eq!(unescape(&out).as_deref(), Ok(sample));
        }
    }

    /// A sink writer that blocks while its gate is shut, and records what it was given.
    #[derive(Clone, Default)]
    struct Gated {
        open: Arc<(Mutex<bool>, Condvar)>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Gated {
        fn open(&self) {
            *lock(&self.open.0) = true;
            self.open.1.notify_all();
        }
    }

    impl Write for Gated {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let mut open = lock(&self.open.0);
            while !*open {
                open = self
                    .open
                    .1
                    .wait(open)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            // Short writes, as a pipe makes.
            let n = bytes.len().min(5000);
            lock(&self.written).extend_from_slice(&bytes[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Waits up to 10 s for `done`, failing with `what`.
    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::yield_now();
        }
    }

    /// `count` lines of writer `tag`, each numbered.
    fn numbered(tag: usize, from: usize, count: usize) -> Vec<u8> {
        (from..from + count)
            .flat_map(|k| format!("w{tag} {k:06} {}\n", "z".repeat(k % 200)).into_bytes())
            .collect()
    }

    /// `count` threads, each writing `batches` batches of `lines` numbered lines to `output`.
    fn writers(
        output: &Output,
        count: usize,
        batches: usize,
        lines: usize,
    ) -> Vec<std::thread::JoinHandle<()>> {
        (0..count)
            .map(|w| {
                let output = output.clone();
                std::thread::spawn(move || {
                    for batch in 0..batches {
                        output.write(&numbered(w, batch * lines, lines), lines as u64);
                    }
                })
            })
            .collect()
    }

    #[test]
    fn a_stalled_sink_holds_at_most_the_pending_limit_and_the_others_wait() {
        const WORKERS: usize = 6;
        let gated = Gated::default();
        let output = Output::new(
            Sink::Writer(Box::new(gated.clone())),
            Shutdown::new().expect("pipe"),
        );
        let threads = writers(&output, WORKERS, 200, 100);
        // One worker is the writer, stuck in the sink; every other one ends up waiting for room
        // once the pending lines reach the limit, and the lines waiting stay bounded.
        wait_until("the other workers never waited for room", || {
            lock(&output.shared.state).waiting == WORKERS - 1
        });
        let held = lock(&output.shared.state).lines.len();
        assert!(held >= PENDING_LIMIT, "waiting with room left: {held}");
        // Room for a megabyte of lines before anyone waits: a pipe reader's pause of a few
        // milliseconds must not stall the workers.
        assert!(held >= 1 << 20, "workers waited at {held} bytes pending");
        assert!(held < PENDING_LIMIT + 100 * 300, "{held} bytes pending");
        gated.open();
        for thread in threads {
            thread.join().expect("a worker");
        }
        let state = lock(&output.shared.state);
        assert_eq!(state.waiting, 0);
        assert!(!state.writing);
        assert!(state.lines.is_empty());
        drop(state);
        check_whole_and_ordered(&lock(&gated.written), WORKERS, 200 * 100);
        assert_eq!(output.unwritten(), 0);
    }

    #[test]
    fn an_attached_log_route_writes_each_record_once_through_the_output() {
        let gated = Gated::default();
        gated.open();
        let output = Output::new(
            Sink::Writer(Box::new(gated.clone())),
            Shutdown::new().expect("pipe"),
        );
        let route = LogRoute::default();
        route.attach(&output);
        let mut writer = route.clone();
        let record = b"2026-01-01T00:00:00Z INFO  a log record\n";
        writer.write_all(record).expect("a record taken whole");
        writer.flush().expect("flushed");
        output.write(b"[1] data\n", 1);
        assert_eq!(
            lock(&gated.written).as_slice(),
            [&record[..], b"[1] data\n"].concat()
        );
        // A log record is no client's message.
        assert_eq!(output.unwritten(), 0);
    }

    #[test]
    fn lines_stay_whole_and_ordered_through_many_hand_offs() {
        const WORKERS: usize = 8;
        let gated = Gated::default();
        gated.open();
        let output = Output::new(
            Sink::Writer(Box::new(gated.clone())),
            Shutdown::new().expect("pipe"),
        );
        let threads = writers(&output, WORKERS, 400, 50);
        for thread in threads {
            thread.join().expect("a worker");
        }
        check_whole_and_ordered(&lock(&gated.written), WORKERS, 400 * 50);
    }

    /// Every line of every writer is there once, whole, and in its writer's order.
    fn check_whole_and_ordered(written: &[u8], writers: usize, lines: usize) {
        let mut next = vec![0; writers];
        for line in written.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let line = std::str::from_utf8(line).expect("UTF-8");
            let mut fields = line.split(' ');
            let tag: usize = fields.next().and_then(|t| t[1..].parse().ok()).expect(line);
            let k: usize = fields.next().and_then(|k| k.parse().ok()).expect(line);
            assert_eq!(k, next[tag], "writer {tag} out of order: {line:?}");
            assert_eq!(fields.next().map(str::len), Some(k % 200), "torn: {line:?}");
            next[tag] += 1;
        }
        assert!(next.iter().all(|&n| n == lines), "{next:?}");
    }

    /// A sink whose every write fails as a full disk does.
    struct Failing;

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::StorageFull.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn after_a_failed_write_lines_are_discarded_and_said_so() {
        let shutdown = Shutdown::new().expect("pipe");
        let output = Output::new(Sink::Writer(Box::new(Failing)), shutdown.clone());
        output.write(b"lost\n", 1);
        output.write(b"also lost\nand this\n", 2);
        assert_eq!(output.unwritten(), 3);
        assert_eq!(shutdown.reason(), Some(StopReason::OutputFailed));
        let err = output.finish().expect_err("the run fails");
        assert_eq!(
            err.to_string(),
            "cannot write output: no space left on device"
        );
    }

    #[test]
    fn lines_pending_when_the_writer_fails_are_counted_as_unwritten() {
        /// Blocks until opened, then fails.
        struct FailsLater(Gated);
        impl Write for FailsLater {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                self.0.write(bytes)?;
                Err(io::ErrorKind::StorageFull.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let gated = Gated::default();
        let output = Output::new(
            Sink::Writer(Box::new(FailsLater(gated.clone()))),
            Shutdown::new().expect("pipe"),
        );
        let writer = {
            let output = output.clone();
            std::thread::spawn(move || output.write(b"first\n", 1))
        };
        wait_until("the first write never became the writer", || {
            lock(&output.shared.state).writing
        });
        // Left to the stuck writer: pending, with their count.
        output.write(b"a\nb\nc\n", 3);
        output.write(b"d\n", 1);
        gated.open();
        writer.join().expect("the writer");
        assert_eq!(output.unwritten(), 5);
        output.write(b"after\n", 1);
        assert_eq!(output.unwritten(), 6);
    }

    /// A writer with lines pending after each batch and nobody waiting for room writes them all
    /// itself: handing the role on with nobody to take it would strand them.
    #[test]
    fn a_writer_keeps_the_role_while_nobody_waits() {
        const ROUNDS: usize = 3 * WRITER_ROUNDS;
        /// Records what it is given; each write brings one more line, as a busy worker would.
        struct Feeding {
            output: Arc<OnceLock<Output>>,
            written: Arc<Mutex<Vec<u8>>>,
            fed: usize,
        }
        impl Write for Feeding {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                lock(&self.written).extend_from_slice(bytes);
                if self.fed < ROUNDS {
                    self.fed += 1;
                    let line = format!("line {}\n", self.fed);
                    self.output.get().expect("set").write(line.as_bytes(), 1);
                }
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let slot = Arc::new(OnceLock::new());
        let written = Arc::new(Mutex::new(Vec::new()));
        let output = Output::new(
            Sink::Writer(Box::new(Feeding {
                output: Arc::clone(&slot),
                written: Arc::clone(&written),
                fed: 0,
            })),
            Shutdown::new().expect("pipe"),
        );
        assert!(slot.set(output.clone()).is_ok());
        output.write(b"line 0\n", 1);
        let expected: String = (0..=ROUNDS).map(|k| format!("line {k}\n")).collect();
        assert_eq!(String::from_utf8_lossy(&lock(&written)), expected);
        let state = lock(&output.shared.state);
        assert!(state.lines.is_empty() && !state.writing);
    }

    #[test]
    fn lines_handed_on_count_with_the_new_writers_own_when_its_write_fails() {
        let output = Output::new(
            Sink::Writer(Box::new(Failing)),
            Shutdown::new().expect("pipe"),
        );
        // As a writer leaves them when it hands the role on: lines pending, nobody writing.
        {
            let mut state = lock(&output.shared.state);
            state.lines.extend_from_slice(b"a\nb\n");
            state.messages = 2;
        }
        output.write(b"own\n", 1);
        assert_eq!(output.unwritten(), 3);
        assert!(lock(&output.shared.state).lines.is_empty());
    }

    #[test]
    fn a_write_that_fails_is_reported_not_retried() {
        // Open for reading only: every write fails at once (EBADF), neither interrupted nor
        // waiting for room.
        let file = File::open(std::env::current_exe().expect("the test binary")).expect("open");
        let err = write_once(&file, b"line\n").expect_err("a write to a read-only file");
        assert_ne!(err.kind(), io::ErrorKind::Interrupted);
        write_file(&file, b"line\n").expect_err("a write to a read-only file");
    }

    #[test]
    fn regular_files_on_local_file_systems_are_written_directly() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("overhear-direct-{}", std::process::id()));
        let file = File::create(&path).expect("a temporary file");
        let output = Output::new(Sink::File(file), Shutdown::new().expect("pipe"));
        let Target::File(file) = &output.shared.target else {
            panic!("a file is a file target");
        };
        // Linux names the local file systems; elsewhere none is assumed to keep writes whole.
        assert_eq!(output.shared.direct, platform::keeps_writes_whole(file));
        #[cfg(target_os = "linux")]
        assert!(
            output.shared.direct,
            "the temporary directory is not on a local file system"
        );
        output.write(b"one\n", 1);
        assert_eq!(output.unwritten(), 0);
        // A regular file is never watched as a pipe.
        assert!(output.watched_pipe().is_none());
        output.finish().expect("synced");
        assert_eq!(std::fs::read(&path).expect("read"), b"one\n");
        std::fs::remove_file(&path).ok();
        // A pipe is not a regular file: the writer role, and watched for its reader.
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        let output = Output::new(
            Sink::File(File::from(write)),
            Shutdown::new().expect("pipe"),
        );
        assert!(!output.shared.direct);
        assert!(output.watched_pipe().is_some());
        drop(read);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn escaping_round_trips_and_shows_no_control_bytes(
                bytes in proptest::collection::vec(any::<u8>(), 0..200),
            ) {
                let mut out = Vec::new();
                escape_into(&mut out, &bytes);
                let text = std::str::from_utf8(&out);
                prop_assert!(text.is_ok(), "escaped output is UTF-8");
                let text = text.unwrap_or_default();
                prop_assert!(!text.chars().any(|c| (c.is_control() && c != '\t') || hides_text(c)));
                let tabs = |b: &[u8]| b.iter().filter(|&&b| b == b'\t').count();
                prop_assert_eq!(tabs(&out), tabs(&bytes), "tabs pass through raw");
                prop_assert_eq!(unescape(&out), Ok(bytes));
            }
        }
    }
}
