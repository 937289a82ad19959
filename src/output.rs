//! Output: how a message becomes bytes on stdout (the `[N] ` prefix and the escaping of client
//! bytes), and the one writer thread that owns stdout.
//!
//! Workers format whole lines into their own buffers, in parallel, and hand each buffer to the
//! writer through a bounded channel; the writer writes buffers whole, so lines never interleave,
//! and flushes only when the channel runs dry. When the output is slower than the clients, the
//! channel fills, workers block in `send`, stop reading their sockets, and TCP pushes back on the
//! clients: memory stays bounded and nothing is dropped.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::{self, JoinHandle};

use log::{error, info};

use crate::error::{Error, describe};
use crate::framing::Piece;
use crate::shutdown::{Shutdown, StopReason};
use crate::worker::ClientId;

/// Buffers queued for the writer before workers block; with buffers of at most a few times
/// [`crate::worker::READ_CHUNK`], this bounds the memory between the sockets and stdout.
const CHANNEL_CAPACITY: usize = 64;

/// The writer's buffer in front of stdout; several worker buffers fit in one `write(2)`.
const WRITER_BUFFER: usize = 256 * 1024;

/// How client bytes are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Style {
    /// Control bytes, `\` and invalid UTF-8 shown as visible escapes (the default).
    #[default]
    Escaped,
    /// Message bytes unchanged after the prefix.
    Raw,
}

/// Formats one client's messages as output lines: `[N] message` or, for a piece continuing a
/// message longer than the maximum line, `[N+] rest`.
#[derive(Debug, Clone)]
pub struct LineFormat {
    style: Style,
    prefix: Vec<u8>,
    continued_prefix: Vec<u8>,
}

impl LineFormat {
    /// The format for client `id`.
    pub fn new(id: ClientId, style: Style) -> LineFormat {
        LineFormat {
            style,
            prefix: format!("[{}] ", id.number()).into_bytes(),
            continued_prefix: format!("[{}+] ", id.number()).into_bytes(),
        }
    }

    /// Appends the output line for `piece`, newline included, to `out`.
    pub fn append(&self, out: &mut Vec<u8>, piece: Piece<'_>) {
        out.extend_from_slice(if piece.continued {
            &self.continued_prefix
        } else {
            &self.prefix
        });
        match self.style {
            Style::Escaped => escape_into(out, piece.bytes),
            Style::Raw => out.extend_from_slice(piece.bytes),
        }
        out.push(b'\n');
    }
}

/// Whether `byte` passes through escaping as itself: printable ASCII other than `\`, and tab.
fn is_plain(byte: u8) -> bool {
    (0x20..0x7f).contains(&byte) && byte != b'\\' || byte == b'\t'
}

/// Appends `bytes` to `out` so that no control byte reaches a terminal, losslessly: `\` becomes
/// `\\`; C0 controls (but tab), DEL, the UTF-8 encodings of the C1 controls U+0080–U+009F, and
/// every byte of invalid UTF-8 become `\xNN`; everything else (printable UTF-8) passes through.
pub fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.iter().all(|&b| is_plain(b)) {
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
                c if c.is_control() => encoded.iter().for_each(|&b| push_hex(out, b)),
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

/// Reverses [`escape_into`]: the bytes the client sent. `None` if `text` is not escaper output.
pub fn unescape(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some((&first, tail)) = rest.split_first() {
        if first != b'\\' {
            out.push(first);
            rest = tail;
            continue;
        }
        match tail {
            [b'\\', tail @ ..] => {
                out.push(b'\\');
                rest = tail;
            }
            [b'x', hi, lo, tail @ ..] => {
                let hex = std::str::from_utf8(&[*hi, *lo]).ok()?.to_owned();
                out.push(u8::from_str_radix(&hex, 16).ok()?);
                rest = tail;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// A worker's side of the channel to the writer. Cloned into every worker; the writer ends when
/// the last clone is dropped.
#[derive(Debug, Clone)]
pub struct OutputSender {
    tx: SyncSender<Vec<u8>>,
}

impl OutputSender {
    /// Hands formatted lines to the writer, blocking while its queue is full. Empty buffers are
    /// not sent. Returns `false` if the writer is gone (it only goes when every sender is dropped,
    /// so this means it panicked).
    pub fn send(&self, lines: Vec<u8>) -> bool {
        lines.is_empty() || self.tx.send(lines).is_ok()
    }
}

/// The writer thread; join it after dropping every [`OutputSender`].
#[derive(Debug)]
pub struct Writer {
    thread: JoinHandle<Result<(), io::Error>>,
}

impl Writer {
    /// Starts the writer thread on `sink`. A failed write requests a stop through `shutdown`
    /// (a reader that went away is a normal stop); the writer then keeps draining the channel,
    /// discarding, so no worker blocks on it.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn spawn(
        sink: Box<dyn Write + Send>,
        shutdown: Shutdown,
    ) -> Result<(OutputSender, Writer), Error> {
        let (tx, rx) = sync_channel(CHANNEL_CAPACITY);
        let thread = thread::Builder::new()
            .name(String::from("output"))
            .spawn(move || write_all_chunks(rx, sink, &shutdown))
            .map_err(|source| Error::Setup {
                what: "start the output thread",
                source,
            })?;
        Ok((OutputSender { tx }, Writer { thread }))
    }

    /// Waits for the writer to write everything it was sent.
    ///
    /// # Errors
    /// [`Error::Output`] when writing failed for another reason than the reader going away.
    pub fn join(self) -> Result<(), Error> {
        match self.thread.join() {
            Ok(result) => result.map_err(Error::Output),
            Err(_) => Err(Error::Output(io::Error::other(
                "the output thread panicked",
            ))),
        }
    }
}

fn write_all_chunks(
    rx: Receiver<Vec<u8>>,
    sink: Box<dyn Write + Send>,
    shutdown: &Shutdown,
) -> Result<(), io::Error> {
    let mut out = io::BufWriter::with_capacity(WRITER_BUFFER, sink);
    let mut failure = None;
    while let Ok(first) = rx.recv() {
        let written = write_available(&mut out, &rx, first);
        if let Err(err) = written {
            // Nothing more can be written; discard what stays queued until the workers are gone.
            if err.kind() == io::ErrorKind::BrokenPipe {
                info!("output closed by its reader, stopping");
                shutdown.request(StopReason::OutputClosed);
            } else {
                error!("cannot write output: {}; stopping", describe(&err));
                shutdown.request(StopReason::OutputFailed);
                failure = Some(err);
            }
            for _ in rx.iter() {}
            // The buffered bytes cannot be written either; dropping must not retry the write.
            let (_, _) = out.into_parts();
            return failure.map_or(Ok(()), Err);
        }
    }
    match out.flush() {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => Err(err),
        _ => Ok(()),
    }
}

/// Writes `first` and everything else already queued, then flushes: one flush per burst.
fn write_available(
    out: &mut io::BufWriter<Box<dyn Write + Send>>,
    rx: &Receiver<Vec<u8>>,
    first: Vec<u8>,
) -> io::Result<()> {
    out.write_all(&first)?;
    while let Ok(more) = rx.try_recv() {
        out.write_all(&more)?;
    }
    out.flush()
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
    }

    #[test]
    fn invalid_utf8_and_backslash_are_escaped() {
        assert_eq!(escaped(b"\xff\xfeok"), "\\xff\\xfeok");
        assert_eq!(escaped(b"a\\x41"), "a\\\\x41");
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
            assert_eq!(unescape(&out).as_deref(), Some(sample));
        }
    }

    #[test]
    fn lines_carry_the_client_number() {
        let format = LineFormat::new(ClientId::new(7), Style::Escaped);
        let mut out = Vec::new();
        format.append(
            &mut out,
            Piece {
                bytes: b"hi\x1b",
                continued: false,
            },
        );
        format.append(
            &mut out,
            Piece {
                bytes: b"more",
                continued: true,
            },
        );
        assert_eq!(out, b"[7] hi\\x1b\n[7+] more\n");
        let raw = LineFormat::new(ClientId::new(7), Style::Raw);
        let mut out = Vec::new();
        raw.append(
            &mut out,
            Piece {
                bytes: b"\x1b",
                continued: false,
            },
        );
        assert_eq!(out, b"[7] \x1b\n");
    }
}
