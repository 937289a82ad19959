//! How events become output bytes: text lines (`[N] message`, optionally timestamped and
//! colored), JSON Lines, or a hex dump. Workers format their own client's events; the listener
//! formats refusals and the summary. Writing the bytes is [`crate::output::Output`]'s job.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use base64::Engine;
use serde::Serialize;

use crate::framing::{Framing, LineEnd, Piece};
use crate::listen::tls::TlsInfo;
use crate::listen::{Peer, Spec};
use crate::output::escape_into;
use crate::worker::ClientId;

/// The output format (`--format`, `--hex`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `[N] message` lines.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
    /// A hex dump of the bytes each client sends, with offsets and a printable column.
    Hex,
}

/// How client bytes are written in text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Style {
    /// Control bytes, `\` and invalid UTF-8 shown as visible escapes (the default).
    #[default]
    Escaped,
    /// Message bytes unchanged after the prefix.
    Raw,
}

/// Everything that decides how output looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutputOptions {
    pub format: Format,
    pub style: Style,
    /// Start each text or hex line with an RFC 3339 UTC time with milliseconds.
    pub timestamps: bool,
    /// Color each client's number (only ever set when writing to a terminal, or when forced).
    pub color: bool,
}

/// Foreground colors for client numbers: the six ANSI colors, then their bright forms.
const PALETTE: [u8; 12] = [32, 33, 34, 35, 36, 31, 92, 93, 94, 95, 96, 91];

/// The color escape for client `id`: the same number always gets the same color.
fn color_of(id: ClientId) -> String {
    let index = (id.number().saturating_sub(1) % PALETTE.len() as u64) as usize;
    format!("\x1b[{}m", PALETTE[index])
}

const RESET: &str = "\x1b[0m";

/// An RFC 3339 UTC time with milliseconds: `2026-11-25T09:25:01.570Z`.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// `count` and `noun`, in the plural unless the count is one: `1 message`, `2 messages`.
pub fn counted(count: impl Into<u64>, noun: &str) -> String {
    let count = count.into();
    format!("{count} {}", plural(count, noun))
}

/// `noun` as it goes with `count`: `client` for one, `clients` otherwise.
pub fn plural(count: u64, noun: &str) -> String {
    if count == 1 {
        noun.to_owned()
    } else {
        format!("{noun}s")
    }
}

/// A duration rounded down to whole milliseconds, for log lines (`1s 250ms`, not nanoseconds).
pub fn rounded(duration: Duration) -> humantime::FormattedDuration {
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    humantime::format_duration(Duration::from_millis(millis))
}

/// A byte count in the largest binary unit that divides it: `1 MiB`, `256 KiB`, `100 bytes`.
pub fn size(bytes: u64) -> String {
    match bytes {
        0 => String::from("0 bytes"),
        b if b % (1024 * 1024) == 0 => format!("{} MiB", b / (1024 * 1024)),
        b if b % 1024 == 0 => format!("{} KiB", b / 1024),
        b => counted(b, "byte"),
    }
}

/// Formats one client's events.
#[derive(Debug, Clone)]
pub struct ClientFormat {
    id: ClientId,
    peer: Peer,
    /// The listener the client came through, named in its `connect` event.
    listener: Spec,
    /// What its TLS handshake agreed, if it speaks TLS.
    tls: Option<TlsInfo>,
    /// How its stream is cut into messages, named in its `connect` event unless `lines`.
    framing: Framing,
    options: OutputOptions,
    /// `[N] ` (colored if asked), and `[N+] ` for continued pieces.
    prefix: Vec<u8>,
    continued_prefix: Vec<u8>,
    /// The time stamped on what is formatted next; set once per read by [`ClientFormat::stamp`].
    now: String,
}

impl ClientFormat {
    /// The format for client `id` connected from `peer` through `listener`.
    pub fn new(id: ClientId, peer: Peer, listener: Spec, options: OutputOptions) -> ClientFormat {
        let (on, off) = if options.color {
            (color_of(id), RESET)
        } else {
            (String::new(), "")
        };
        let n = id.number();
        ClientFormat {
            id,
            peer,
            listener,
            tls: None,
            framing: Framing::Lines,
            options,
            prefix: format!("{on}[{n}]{off} ").into_bytes(),
            continued_prefix: format!("{on}[{n}+]{off} ").into_bytes(),
            now: String::new(),
        }
    }

    /// The same format for a client whose stream is cut into messages by `framing`.
    pub fn with_framing(self, framing: Framing) -> ClientFormat {
        ClientFormat { framing, ..self }
    }

    /// Records what the client's TLS handshake agreed, for its `connect` event.
    pub fn set_tls(&mut self, info: TlsInfo) {
        self.tls = Some(info);
    }

    /// Takes the current time for what is formatted next, if the format shows times. Called once
    /// per read, not per message: messages from one read share their arrival time.
    pub fn stamp(&mut self) {
        if self.options.timestamps || self.options.format == Format::Json {
            self.now = timestamp(SystemTime::now());
        }
    }

    /// Appends the output for one message (or piece of one) to `out`.
    ///
    /// JSON keeps every byte: `data` (or `data_b64`) and `eol` of one client's events, joined,
    /// are the bytes it sent. Text drops the line end (a `\r` before `\n` included) and prints
    /// nothing for an empty continued piece, which only carries a line end; a message the stop
    /// cut off is marked `[N!]`.
    pub fn message(&self, out: &mut Vec<u8>, piece: Piece<'_>) {
        if self.options.format == Format::Json {
            let (data, data_b64) = match std::str::from_utf8(piece.bytes) {
                Ok(text) => (Some(text), None),
                Err(_) => (None, Some(base64_of(piece.bytes))),
            };
            let eol = match piece.end {
                LineEnd::None => None,
                end => std::str::from_utf8(end.bytes()).ok(),
            };
            write_json(
                out,
                &Event {
                    event: "message",
                    data,
                    data_b64,
                    eol,
                    continued: piece.continued.then_some(true),
                    cut: piece.cut.then_some(true),
                    ..self.event()
                },
            );
            return;
        }
        if piece.continued && piece.bytes.is_empty() {
            return;
        }
        self.line_start(out);
        if piece.cut {
            out.extend_from_slice(&self.cut_prefix(piece.continued));
        } else if piece.continued {
            out.extend_from_slice(&self.continued_prefix);
        } else {
            out.extend_from_slice(&self.prefix);
        }
        match self.options.style {
            Style::Escaped => escape_into(out, piece.bytes),
            Style::Raw => out.extend_from_slice(piece.bytes),
        }
        out.push(b'\n');
    }

    /// Whether [`ClientFormat::plain_line`] formats a whole line of plain text as
    /// [`ClientFormat::message`] does: in text output (escaped or raw, plain text is the same).
    pub fn formats_plain_lines(&self) -> bool {
        self.options.format == Format::Text
    }

    /// Appends a whole message of plain text (no byte to escape, not a piece) as a line: what
    /// [`ClientFormat::message`] appends for it, without looking at it again.
    pub fn plain_line(&self, out: &mut Vec<u8>, line: &[u8]) {
        self.line_start(out);
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(line);
        out.push(b'\n');
    }

    /// Appends hex dump rows for `bytes`, which start at byte `offset` of this client's stream:
    /// `[N] 00000010  48 65 6c 6c 6f 0a …  |Hello.|`, 16 bytes a row.
    pub fn hex(&self, out: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
        for (row, chunk) in bytes.chunks(16).enumerate() {
            self.line_start(out);
            out.extend_from_slice(&self.prefix);
            let at = offset + 16 * row as u64;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{at:08x} ");
            for (i, byte) in chunk.iter().enumerate() {
                let gap = if i == 8 { "  " } else { " " };
                let _ = write!(out, "{gap}{byte:02x}");
            }
            let missing = 16 - chunk.len();
            let pad = 3 * missing + usize::from(chunk.len() <= 8);
            out.extend(std::iter::repeat_n(b' ', pad));
            out.extend_from_slice(b"  |");
            out.extend(chunk.iter().map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b
                } else {
                    b'.'
                }
            }));
            out.extend_from_slice(b"|\n");
        }
    }

    /// Appends the `connect` event (JSON only: in text the log says it).
    pub fn connect(&self, out: &mut Vec<u8>) {
        if self.options.format == Format::Json {
            write_json(
                out,
                &Event {
                    event: "connect",
                    listener: Some(&self.listener),
                    tls: self.tls.as_ref(),
                    framing: (self.framing != Framing::Lines).then(|| self.framing.to_string()),
                    pid: self.peer.credentials().and_then(|c| c.pid),
                    uid: self.peer.credentials().map(|c| c.uid),
                    gid: self.peer.credentials().map(|c| c.gid),
                    ..self.event()
                },
            );
        }
    }

    /// Appends the `sent` event for bytes sent to the client whole (a greeting or a typed
    /// message; JSON only).
    pub fn sent(&self, out: &mut Vec<u8>, bytes: &[u8]) {
        if self.options.format == Format::Json {
            let (data, data_b64) = match std::str::from_utf8(bytes) {
                Ok(text) => (Some(text), None),
                Err(_) => (None, Some(base64_of(bytes))),
            };
            write_json(
                out,
                &Event {
                    event: "sent",
                    data,
                    data_b64,
                    ..self.event()
                },
            );
        }
    }

    /// Appends the `disconnect` event (JSON only).
    pub fn disconnect(&self, out: &mut Vec<u8>, totals: &ClientTotals, reason: &str) {
        if self.options.format == Format::Json {
            write_json(
                out,
                &Event {
                    event: "disconnect",
                    reason: Some(reason),
                    messages: Some(totals.messages),
                    bytes: Some(totals.bytes),
                    sent: Some(totals.sent),
                    connected_ms: Some(millis(totals.connected_for)),
                    ..self.event()
                },
            );
        }
    }

    /// `[N!] `, or `[N+!] ` for a continued piece: the prefix of a message the stop cut off.
    /// Rare (at most once per client), so built when needed.
    fn cut_prefix(&self, continued: bool) -> Vec<u8> {
        let (on, off) = if self.options.color {
            (color_of(self.id), RESET)
        } else {
            (String::new(), "")
        };
        let plus = if continued { "+" } else { "" };
        format!("{on}[{}{plus}!]{off} ", self.id.number()).into_bytes()
    }

    fn event(&self) -> Event<'_> {
        Event {
            ts: &self.now,
            client: Some(self.id.number()),
            peer: Some(&self.peer),
            ..Event::default()
        }
    }

    fn line_start(&self, out: &mut Vec<u8>) {
        if self.options.timestamps {
            out.extend_from_slice(self.now.as_bytes());
            out.push(b' ');
        }
    }
}

/// A client's counts, as its `disconnect` event and the summary report them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTotals {
    pub messages: u64,
    pub bytes: u64,
    /// Bytes sent to the client: greeting, echo and typed messages.
    pub sent: u64,
    pub connected_for: Duration,
}

/// One JSON Lines event. Fields that do not apply to an event are left out.
#[derive(Debug, Default, Serialize)]
pub struct Event<'a> {
    pub ts: &'a str,
    pub event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<&'a Peer>,
    /// The listener a client came through (`connect`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener: Option<&'a Spec>,
    /// The credentials of a process on a Unix socket (`connect`), where known.
    /// How the client's stream is cut into messages (`connect`), unless `lines`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub framing: Option<String>,
    /// What a TLS client's handshake agreed (`connect`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<&'a TlsInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
    /// The line end that followed the message (`"\n"` or `"\r\n"`); absent for a message
    /// ended by the close, the stop, or a cut at `--max-line`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eol: Option<&'a str>,
    /// Present (true) on a piece continuing a message longer than `--max-line`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continued: Option<bool>,
    /// Present (true) on a message the stop cut off while the client was still sending it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Bytes sent to the client (`disconnect`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_ms: Option<u64>,
}

/// Appends `value` as one JSON line, with C1 controls escaped as well as C0 ones.
pub fn write_json(out: &mut Vec<u8>, value: &impl Serialize) {
    let mut serializer = serde_json::Serializer::with_formatter(&mut *out, EscapeC1);
    // Serializing these plain structs into a Vec cannot fail.
    let _ = value.serialize(&mut serializer);
    out.push(b'\n');
}

/// The `refused` event for a connection turned away (it has no client number).
pub fn refused(out: &mut Vec<u8>, peer: &Peer, reason: &str) {
    write_json(
        out,
        &Event {
            ts: &timestamp(SystemTime::now()),
            event: "refused",
            peer: Some(peer),
            reason: Some(reason),
            ..Event::default()
        },
    );
}

fn base64_of(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Whole milliseconds of `duration`, saturating.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// serde_json's compact output, but with the C1 controls U+0080–U+009F written as `\u0080`…
/// `\u009f`, and the characters that hide or reorder text ([`crate::output::hides_text`]) as
/// `\u202e` and so on: serde_json escapes only C0 controls, and a raw C1 (such as U+009B, CSI)
/// can drive a terminal that shows the JSON.
struct EscapeC1;

impl serde_json::ser::Formatter for EscapeC1 {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if ('\u{80}'..='\u{9f}').contains(&c) || crate::output::hides_text(c) {
                writer.write_all(&fragment.as_bytes()[start..i])?;
                write!(writer, "\\u{:04x}", u32::from(c))?;
                start = i + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    /// Sizes are said in the largest binary unit that divides them exactly.
    #[test]
    fn sizes_take_the_largest_unit_that_divides_them() {
        for (bytes, said) in [
            (0, "0 bytes"),
            (1, "1 byte"),
            (100, "100 bytes"),
            (1024, "1 KiB"),
            (1536, "1536 bytes"),
            (256 * 1024, "256 KiB"),
            (1024 * 1024, "1 MiB"),
            (1024 * 1024 + 1024, "1025 KiB"),
            (3 * 1024 * 1024, "3 MiB"),
            (5 * 1024 * 1024 * 1024, "5120 MiB"),
        ] {
            assert_eq!(size(bytes), said, "{bytes}");
        }
    }

    fn client(options: OutputOptions) -> ClientFormat {
        let addr: SocketAddr = "127.0.0.1:5000".parse().expect("literal");
        let mut format = ClientFormat::new(
            ClientId::new(7),
            Peer::Ip(addr),
            Spec::Tcp("127.0.0.1:7878".parse().expect("literal")),
            options,
        );
        format.stamp();
        format
    }

    fn piece(bytes: &[u8], continued: bool) -> Piece<'_> {
        Piece {
            bytes,
            continued,
            end: LineEnd::Lf,
            cut: false,
        }
    }

    #[test]
    fn counts_take_the_plural_unless_one() {
        assert_eq!(counted(0u64, "message"), "0 messages");
        assert_eq!(counted(1u64, "client"), "1 client");
        assert_eq!(counted(2u64, "byte"), "2 bytes");
    }

    #[test]
    fn log_durations_are_whole_milliseconds() {
        let d = Duration::new(1, 250_123_456);
        assert_eq!(rounded(d).to_string(), "1s 250ms");
    }

    #[test]
    fn text_lines_carry_the_client_number() {
        let format = client(OutputOptions::default());
        let mut out = Vec::new();
        format.message(&mut out, piece(b"hi\x1b", false));
        format.message(&mut out, piece(b"more", true));
        assert_eq!(out, b"[7] hi\\x1b\n[7+] more\n");
        let raw = client(OutputOptions {
            style: Style::Raw,
            ..OutputOptions::default()
        });
        let mut out = Vec::new();
        raw.message(&mut out, piece(b"\x1b", false));
        assert_eq!(out, b"[7] \x1b\n");
    }

    #[test]
    fn colors_wrap_only_the_number_and_are_stable() {
        let format = client(OutputOptions {
            color: true,
            ..OutputOptions::default()
        });
        let mut out = Vec::new();
        format.message(&mut out, piece(b"\x1b[31m", false));
        assert_eq!(out, b"\x1b[92m[7]\x1b[0m \\x1b[31m\n");
        assert_eq!(color_of(ClientId::new(7)), color_of(ClientId::new(19)));
        assert_ne!(color_of(ClientId::new(1)), color_of(ClientId::new(2)));
    }

    #[test]
    fn timestamps_lead_the_line() {
        let format = client(OutputOptions {
            timestamps: true,
            ..OutputOptions::default()
        });
        let mut out = Vec::new();
        format.message(&mut out, piece(b"x", false));
        let text = String::from_utf8(out).expect("utf-8");
        let (ts, rest) = text.split_once(' ').expect("a space after the time");
        assert_eq!(rest, "[7] x\n");
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
        assert_eq!(ts.len(), "2026-11-25T09:25:01.570Z".len());
    }

    #[test]
    fn json_messages_keep_every_byte() {
        let format = client(OutputOptions {
            format: Format::Json,
            ..OutputOptions::default()
        });
        let mut out = Vec::new();
        format.message(&mut out, piece("é\u{9b}\x1b\u{202e}".as_bytes(), false));
        format.message(&mut out, piece(b"\xff\x00", true));
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].contains(
                r#""event":"message","client":7,"peer":"127.0.0.1:5000","data":"é\u009b\u001b\u202e""#
            ),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains(r#""data_b64":"/wA=","eol":"\n","continued":true"#),
            "{}",
            lines[1]
        );
        assert!(!text.contains('\u{9b}'));
    }

    #[test]
    fn a_cut_message_is_marked_and_an_empty_continued_piece_is_not_printed() {
        let cut = |continued| Piece {
            bytes: b"half a li",
            continued,
            end: LineEnd::None,
            cut: true,
        };
        let text = client(OutputOptions::default());
        let mut out = Vec::new();
        text.message(&mut out, cut(false));
        text.message(&mut out, cut(true));
        text.message(&mut out, piece(b"", true));
        text.message(&mut out, piece(b"", false));
        assert_eq!(out, b"[7!] half a li\n[7+!] half a li\n[7] \n");
        let json = client(OutputOptions {
            format: Format::Json,
            ..OutputOptions::default()
        });
        let mut out = Vec::new();
        json.message(&mut out, cut(false));
        json.message(&mut out, piece(b"", true));
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].ends_with(r#""data":"half a li","cut":true}"#),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with(r#""data":"","eol":"\n","continued":true}"#),
            "{}",
            lines[1]
        );
    }

    mod properties {
        use super::*;
        use crate::framing::LineFramer;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn json_events_rebuild_the_stream_byte_for_byte(
                bytes in proptest::collection::vec(
                    prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a'), Just(0xc3), Just(0xa9), any::<u8>()],
                    0..400,
                ),
                sizes in proptest::collection::vec(1usize..60, 1..20),
                max in 1usize..50,
            ) {
                let format = client(OutputOptions {
                    format: Format::Json,
                    ..OutputOptions::default()
                });
                let mut framer = LineFramer::new(max);
                let mut out = Vec::new();
                let mut rest = &bytes[..];
                for size in sizes.iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (chunk, tail) = rest.split_at((*size).min(rest.len()));
                    framer.push(chunk, |p| format.message(&mut out, p));
                    rest = tail;
                }
                framer.finish(false, |p| format.message(&mut out, p));
                let mut rebuilt = Vec::new();
                for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    let event: serde_json::Value = serde_json::from_slice(line).expect("JSON");
                    match (&event["data"], &event["data_b64"]) {
                        (serde_json::Value::String(text), _) => rebuilt.extend_from_slice(text.as_bytes()),
                        (_, serde_json::Value::String(b64)) => rebuilt.extend(
                            base64::engine::general_purpose::STANDARD.decode(b64).expect("base64"),
                        ),
                        _ => prop_assert!(false, "no data in {event}"),
                    }
                    if let serde_json::Value::String(eol) = &event["eol"] {
                        rebuilt.extend_from_slice(eol.as_bytes());
                    }
                }
                prop_assert_eq!(rebuilt, bytes);
            }
        }
    }

    #[test]
    fn hex_rows_look_like_hexdump() {
        let format = client(OutputOptions {
            format: Format::Hex,
            ..OutputOptions::default()
        });
        let mut out = Vec::new();
        format.hex(&mut out, 16, b"Hello, world!\n\x00\xffmore");
        let text = String::from_utf8(out).expect("utf-8");
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(
            rows[0],
            "[7] 00000010  48 65 6c 6c 6f 2c 20 77  6f 72 6c 64 21 0a 00 ff  |Hello, world!...|"
        );
        assert_eq!(
            rows[1],
            "[7] 00000020  6d 6f 72 65                                       |more|"
        );
    }
}
