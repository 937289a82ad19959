//! Framing: how one client's byte stream becomes messages. Pure bytes in, messages out, no I/O,
//! no clock, no threads. One file per kind, behind one enum the rest of the code sees
//! ([`Framer`]):
//!
//! | kind (`--framing`) | a message is | file |
//! |---|---|---|
//! | `lines` (default) | bytes up to `\n`, a `\r` before it dropped | `lines.rs` |
//! | `delimiter:X` | bytes up to the byte X | `lines.rs` |
//! | `syslog` | RFC 6587: `LEN ` then LEN bytes (octet counting), or else a line | `counted.rs` |
//! | `length:u8` … `length:u32le` | a binary length, then that many bytes | `counted.rs` |
//! | `none` | what one `read(2)` returned | `counted.rs` |
//!
//! Every kind hands out a message longer than `--max-line` in pieces of exactly that many bytes,
//! and, but for `none`, gives the same messages however the stream is chunked. Counts and length
//! prefixes are not part of a message's bytes. A message ends with a [`LineEnd`] saying what
//! followed it in the stream (for the kinds without one, nothing).

mod counted;
mod lines;
pub mod telnet;

use std::fmt;

pub use counted::{LENGTH_LIMIT, Width};
pub use lines::LineFramer;

/// How a piece ended: the bytes that followed it in the stream and are not part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LineEnd {
    /// Nothing: the piece was cut at the maximum length, the stream ended (the client closed,
    /// the server stopped) before a line end came, or the kind has no line ends.
    #[default]
    None,
    /// `\n`.
    Lf,
    /// `\r\n`.
    CrLf,
    /// The delimiter byte of `--framing delimiter:X`.
    Delimiter(u8),
}

/// Every byte, for [`LineEnd::bytes`] of a delimiter.
static BYTES: [u8; 256] = {
    let mut bytes = [0; 256];
    let mut i = 0;
    while i < 256 {
        bytes[i] = i as u8;
        i += 1;
    }
    bytes
};

impl LineEnd {
    /// The bytes of this line end.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            LineEnd::None => b"",
            LineEnd::Lf => b"\n",
            LineEnd::CrLf => b"\r\n",
            LineEnd::Delimiter(byte) => &BYTES[usize::from(byte)..=usize::from(byte)],
        }
    }
}

/// One message, or one piece of a message longer than the maximum line length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece<'a> {
    /// The message bytes, without what ended them (a line end, a delimiter) or counted them.
    pub bytes: &'a [u8],
    /// True when this piece continues a message whose earlier bytes were already handed out.
    pub continued: bool,
    /// What ended this piece. A message whose `\r\n` falls just past a cut at the maximum ends
    /// in an empty continued piece that carries only its line end.
    pub end: LineEnd,
    /// True when the stream was cut off in the middle of this message: the server stopped
    /// reading while the client was still sending it (see [`Framer::finish`]).
    pub cut: bool,
}

/// A kind of framing, as `--framing` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    #[default]
    Lines,
    Delimiter(u8),
    Syslog,
    Length(Width),
    None,
}

impl Framing {
    /// Reads a `--framing` value: `lines`, `delimiter:X` (X one byte, written as the output
    /// writes bytes: `;`, `\x00`, `\t`), `syslog`, `length:u8`, `length:u16be`, `length:u16le`,
    /// `length:u32be`, `length:u32le`, `none`.
    ///
    /// # Errors
    /// A message with the forms.
    pub fn parse(text: &str) -> Result<Framing, String> {
        const FORMS: &str = "lines, delimiter:X (such as delimiter:; or delimiter:\\x00), \
                             syslog, length:u8, length:u16be, length:u16le, length:u32be, \
                             length:u32le or none";
        match text {
            "lines" => return Ok(Framing::Lines),
            "syslog" => return Ok(Framing::Syslog),
            "none" => return Ok(Framing::None),
            _ => {}
        }
        if let Some(byte) = text.strip_prefix("delimiter:") {
            return match crate::output::unescape(byte.as_bytes()).as_deref() {
                Ok([byte]) => Ok(Framing::Delimiter(*byte)),
                _ => Err(format!(
                    "'{text}': a delimiter is one byte, such as delimiter:; or delimiter:\\x00"
                )),
            };
        }
        if let Some(width) = text.strip_prefix("length:") {
            return Width::parse(width)
                .map(Framing::Length)
                .ok_or_else(|| format!("'{text}': use {FORMS}"));
        }
        Err(format!("'{text}' is not a framing: use {FORMS}"))
    }

    /// A framer of this kind for one client.
    pub fn framer(self, max_line: usize) -> Framer {
        match self {
            Framing::Lines => Framer::Lines(LineFramer::new(max_line)),
            Framing::Delimiter(byte) => Framer::Lines(LineFramer::with_delimiter(max_line, byte)),
            Framing::Syslog => Framer::Syslog(counted::Syslog::new(max_line)),
            Framing::Length(width) => Framer::Length(counted::Length::new(width, max_line)),
            Framing::None => Framer::Reads(counted::Body::new(max_line)),
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Framing::Lines => f.write_str("lines"),
            Framing::Delimiter(byte) => {
                let mut shown = Vec::new();
                crate::output::escape_into(&mut shown, &[*byte]);
                write!(f, "delimiter:{}", String::from_utf8_lossy(&shown))
            }
            Framing::Syslog => f.write_str("syslog"),
            Framing::Length(width) => write!(f, "length:{width}"),
            Framing::None => f.write_str("none"),
        }
    }
}

/// A stream the framing cannot go on with: a length prefix over [`LENGTH_LIMIT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramingError(pub String);

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One client's framer, of the kind `--framing` chose.
#[derive(Debug)]
pub enum Framer {
    Lines(LineFramer),
    Syslog(counted::Syslog),
    Length(counted::Length),
    /// `none`: each push is one message.
    Reads(counted::Body),
}

impl Framer {
    /// See [`LineFramer::whole_lines_up_to`]; `None` for the other framings.
    pub fn whole_lines_up_to(&self) -> Option<usize> {
        match self {
            Framer::Lines(framer) => framer.whole_lines_up_to(),
            _ => None,
        }
    }

    /// Whether it frames lines ended by `\n`: then the stream may be pushed in any pieces.
    pub fn ends_at_newline(&self) -> bool {
        matches!(self, Framer::Lines(framer) if framer.ends_at_newline())
    }

    /// Feeds the next bytes of the stream (for `none`: one read), calling `emit` for each message
    /// or piece they complete.
    ///
    /// # Errors
    /// When the stream cannot be framed any further (a length over [`LENGTH_LIMIT`]); the
    /// client should be disconnected.
    pub fn push(
        &mut self,
        data: &[u8],
        mut emit: impl FnMut(Piece<'_>),
    ) -> Result<(), FramingError> {
        match self {
            Framer::Lines(framer) => {
                framer.push(data, emit);
                Ok(())
            }
            Framer::Syslog(framer) => {
                framer.push(data, &mut emit);
                Ok(())
            }
            Framer::Length(framer) => framer.push(data, &mut emit),
            Framer::Reads(body) => {
                body.add(data, true, &mut emit);
                Ok(())
            }
        }
    }

    /// Ends the stream: hands out an unfinished last message, marked [`Piece::cut`] if `cut`
    /// says the server stopped reading while it was being sent.
    pub fn finish(&mut self, cut: bool, mut emit: impl FnMut(Piece<'_>)) {
        match self {
            Framer::Lines(framer) => framer.finish(cut, emit),
            Framer::Syslog(framer) => framer.finish(cut, &mut emit),
            Framer::Length(framer) => framer.finish(cut, &mut emit),
            Framer::Reads(body) => body.finish(cut, &mut emit),
        }
    }

    /// Bytes held for an unfinished message.
    pub fn pending_len(&self) -> usize {
        match self {
            Framer::Lines(framer) => framer.pending_len(),
            Framer::Syslog(framer) => framer.pending_len(),
            Framer::Length(framer) => framer.pending_len(),
            Framer::Reads(body) => body.pending_len(),
        }
    }

    /// Releases the memory held for unfinished messages when there is none.
    pub fn shrink(&mut self) {
        match self {
            Framer::Lines(framer) => framer.shrink(),
            Framer::Syslog(framer) => framer.shrink(),
            Framer::Length(framer) => framer.shrink(),
            Framer::Reads(body) => body.shrink(),
        }
    }
}

/// `bytes` cut at the points `cuts` pick: any chunking of a stream, for the property tests of
/// every kind.
#[cfg(test)]
pub(crate) fn chunked<'a>(bytes: &'a [u8], cuts: &[proptest::sample::Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut from = 0;
    for to in points {
        chunks.push(&bytes[from..to]);
        from = to;
    }
    chunks.push(&bytes[from..]);
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the kind, the framer says how many bytes it holds for an unfinished message
    /// (what bounds a client's memory, and what the fuzz target checks).
    #[test]
    fn every_kind_tells_what_it_holds() {
        for (text, data, held) in [
            ("lines", &b"done\nabc"[..], 3),
            ("delimiter:;", b"done;abcd", 4),
            ("syslog", b"12 abcde", 5),
            ("length:u16be", b"\x00\x09abcdef", 6),
            ("none", b"abcdefg", 0),
        ] {
            let mut framer = Framing::parse(text).expect("a framing").framer(64);
            framer.push(data, |_| {}).expect("frames");
            assert_eq!(framer.pending_len(), held, "{text}");
        }
    }

    #[test]
    fn framings_read_and_print_the_same() {
        for text in [
            "lines",
            "delimiter:;",
            "delimiter:\\x00",
            "delimiter:\\t",
            "syslog",
            "length:u8",
            "length:u16be",
            "length:u16le",
            "length:u32be",
            "length:u32le",
            "none",
        ] {
            let framing = Framing::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let shown = framing.to_string();
            assert_eq!(
                Framing::parse(&shown),
                Ok(framing),
                "{text} shown as {shown}"
            );
        }
        assert_eq!(Framing::parse("delimiter:\\x00"), Ok(Framing::Delimiter(0)));
        assert_eq!(
            Framing::parse("delimiter:\\t"),
            Ok(Framing::Delimiter(b'\t'))
        );
        for bad in [
            "line",
            "delimiter:",
            "delimiter:ab",
            "length:u64",
            "length:",
            "json",
        ] {
            assert!(Framing::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_byte_is_a_line_end() {
        for byte in 0..=255u8 {
            assert_eq!(LineEnd::Delimiter(byte).bytes(), [byte]);
        }
    }
}
