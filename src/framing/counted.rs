//! Messages whose length is known from the stream itself: RFC 6587 syslog (octet counting, or a
//! line when a record does not start with a count), binary length prefixes, and `none` (each
//! read is a message). Counts and prefixes are taken off; the bytes counted are the message,
//! handed out in pieces of at most `max_line` bytes.

use std::fmt;

use memchr::memchr;

use super::{FramingError, LineEnd, LineFramer, Piece};

/// Largest length a prefix may give: a prefix over it is a framing error that ends the client,
/// not an allocation (a message is handed out in pieces however long it is, so nothing of this
/// size is ever held; the limit catches streams that are not length-prefixed at all).
pub const LENGTH_LIMIT: u64 = 64 * 1024 * 1024;

/// Most digits of an octet count: RFC 6587 counts fit in 9 digits with room to spare.
const COUNT_DIGITS: usize = 10;

/// The counted bytes of a message, handed out in pieces of at most `max_line` bytes: a piece
/// is handed out as soon as more than `max_line` bytes are known, so pieces depend only on the
/// message, not on how it arrived.
#[derive(Debug)]
pub struct Body {
    pending: Vec<u8>,
    continued: bool,
    max_line: usize,
}

impl Body {
    pub fn new(max_line: usize) -> Body {
        assert!(max_line > 0, "max_line must be at least 1");
        Body {
            pending: Vec::new(),
            continued: false,
            max_line,
        }
    }

    /// Adds the next bytes of the message; `last` when they end it (then it is handed out, even
    /// empty).
    pub fn add(&mut self, mut data: &[u8], last: bool, emit: &mut impl FnMut(Piece<'_>)) {
        // The common case, a whole message in one read: handed out where it lies, uncopied.
        if last && self.pending.is_empty() && data.len() <= self.max_line {
            emit(Piece {
                bytes: data,
                continued: self.continued,
                end: LineEnd::None,
                cut: false,
            });
            self.continued = false;
            return;
        }
        loop {
            let room = self.max_line - self.pending.len();
            if data.len() <= room {
                break;
            }
            let piece = if self.pending.is_empty() {
                &data[..room]
            } else {
                self.pending.extend_from_slice(&data[..room]);
                &self.pending[..]
            };
            emit(Piece {
                bytes: piece,
                continued: self.continued,
                end: LineEnd::None,
                cut: false,
            });
            self.pending.clear();
            self.continued = true;
            data = &data[room..];
        }
        self.pending.extend_from_slice(data);
        if last {
            self.flush(false, emit);
        }
    }

    /// Hands out what is held as the message's last piece.
    fn flush(&mut self, cut: bool, emit: &mut impl FnMut(Piece<'_>)) {
        emit(Piece {
            bytes: &self.pending,
            continued: self.continued,
            end: LineEnd::None,
            cut,
        });
        self.pending.clear();
        self.continued = false;
    }

    /// Ends the stream in the middle of a message: what is held comes out (if anything).
    pub fn finish(&mut self, cut: bool, emit: &mut impl FnMut(Piece<'_>)) {
        if !self.pending.is_empty() {
            self.flush(cut, emit);
        }
        self.continued = false;
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub fn shrink(&mut self) {
        if self.pending.is_empty() {
            self.pending = Vec::new();
        }
    }
}

/// A count at the start of `data` and the space after it, all there: (count, bytes they take).
fn whole_count(data: &[u8]) -> Option<(u64, usize)> {
    let digits = data
        .iter()
        .take(COUNT_DIGITS + 1)
        .position(|b| !b.is_ascii_digit())?;
    let complete = (1..=COUNT_DIGITS).contains(&digits) && data[0] != b'0' && data[digits] == b' ';
    complete.then(|| (parse_count(&data[..digits]), digits + 1))
}

/// The value of a count's digits (at most [`COUNT_DIGITS`], the first not 0): never 0.
fn parse_count(digits: &[u8]) -> u64 {
    digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))
        .max(1)
}

/// RFC 6587 syslog over a stream: a record that starts with a count and a space (`93 <13>1 …`) is
/// octet-counted, exactly that many bytes whatever they hold, newlines included; any other
/// record is a line (non-transparent framing). Both are seen on one port.
#[derive(Debug)]
pub struct Syslog {
    state: State,
    /// The start of a record while it may still be a count: digits only, at most
    /// [`COUNT_DIGITS`].
    head: Vec<u8>,
    body: Body,
    line: LineFramer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a record: reading what may be a count.
    Start,
    /// In an octet-counted record, with this many bytes left.
    Counted(u64),
    /// In a record that is a line.
    Line,
}

impl Syslog {
    pub fn new(max_line: usize) -> Syslog {
        Syslog {
            state: State::Start,
            head: Vec::new(),
            body: Body::new(max_line),
            line: LineFramer::new(max_line),
        }
    }

    pub fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(Piece<'_>)) {
        while !data.is_empty() {
            match self.state {
                // The common case: a whole count and its space at hand, read in one pass.
                State::Start if self.head.is_empty() => match whole_count(data) {
                    Some((count, len)) => {
                        self.state = State::Counted(count);
                        data = &data[len..];
                    }
                    None => data = self.start_byte(data, emit),
                },
                State::Start => data = self.start_byte(data, emit),
                State::Counted(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    let last = take as u64 == left;
                    self.body.add(&data[..take], last, emit);
                    data = &data[take..];
                    self.state = if last {
                        State::Start
                    } else {
                        State::Counted(left - take as u64)
                    };
                }
                State::Line => {
                    let taken = self.line_push(data, emit);
                    data = &data[taken..];
                }
            }
        }
    }

    /// At the start of a record, takes its next byte (one more digit of what may be a count, or
    /// the space that ends a count), or finds that the record is a line; returns what is left.
    fn start_byte<'a>(&mut self, data: &'a [u8], emit: &mut impl FnMut(Piece<'_>)) -> &'a [u8] {
        let byte = data[0];
        // A count starts with a digit from 1 to 9 (MSG-LEN = NONZERO-DIGIT *DIGIT).
        let first_zero = self.head.is_empty() && byte == b'0';
        if byte.is_ascii_digit() && self.head.len() < COUNT_DIGITS && !first_zero {
            self.head.push(byte);
            return &data[1..];
        }
        if byte == b' ' && !self.head.is_empty() {
            let count = parse_count(&self.head);
            self.head.clear();
            self.state = State::Counted(count);
            return &data[1..];
        }
        // Not a count: the record is a line, starting with what was read so far.
        self.state = State::Line;
        let head = std::mem::take(&mut self.head);
        self.line_push(&head, emit);
        data
    }

    /// Feeds line bytes up to and including the first `\n`; returns how many it took. At the
    /// `\n` the line is over and the next record starts.
    fn line_push(&mut self, data: &[u8], emit: &mut impl FnMut(Piece<'_>)) -> usize {
        match memchr(b'\n', data) {
            Some(end) => {
                self.line.push(&data[..=end], &mut *emit);
                self.state = State::Start;
                end + 1
            }
            None => {
                self.line.push(data, &mut *emit);
                data.len()
            }
        }
    }

    pub fn finish(&mut self, cut: bool, emit: &mut impl FnMut(Piece<'_>)) {
        match self.state {
            State::Start if !self.head.is_empty() => {
                let head = std::mem::take(&mut self.head);
                self.line.push(&head, &mut *emit);
                self.line.finish(cut, &mut *emit);
            }
            State::Start => {}
            State::Counted(_) => self.body.finish(cut, emit),
            State::Line => self.line.finish(cut, &mut *emit),
        }
        self.state = State::Start;
    }

    pub fn pending_len(&self) -> usize {
        self.head.len() + self.body.pending_len() + self.line.pending_len()
    }

    pub fn shrink(&mut self) {
        self.body.shrink();
        self.line.shrink();
    }
}

/// The binary length prefix of `--framing length:…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    U8,
    U16Be,
    U16Le,
    U32Be,
    U32Le,
}

impl Width {
    /// `u8`, `u16be`, `u16le`, `u32be`, `u32le`.
    pub fn parse(text: &str) -> Option<Width> {
        Some(match text {
            "u8" => Width::U8,
            "u16be" => Width::U16Be,
            "u16le" => Width::U16Le,
            "u32be" => Width::U32Be,
            "u32le" => Width::U32Le,
            _ => return None,
        })
    }

    /// Bytes of the prefix.
    pub fn bytes(self) -> usize {
        match self {
            Width::U8 => 1,
            Width::U16Be | Width::U16Le => 2,
            Width::U32Be | Width::U32Le => 4,
        }
    }

    /// The length a complete prefix gives.
    fn read(self, prefix: &[u8]) -> u64 {
        let mut bytes = [0; 4];
        let n = prefix.len();
        match self {
            Width::U8 | Width::U16Be | Width::U32Be => bytes[4 - n..].copy_from_slice(prefix),
            Width::U16Le | Width::U32Le => {
                bytes[4 - n..].copy_from_slice(prefix);
                bytes[4 - n..].reverse();
            }
        }
        u64::from(u32::from_be_bytes(bytes))
    }

    /// The prefix for a message of `len` bytes (for tests and clients).
    pub fn encode(self, len: u32) -> Vec<u8> {
        match self {
            Width::U8 => vec![len as u8],
            Width::U16Be => (len as u16).to_be_bytes().to_vec(),
            Width::U16Le => (len as u16).to_le_bytes().to_vec(),
            Width::U32Be => len.to_be_bytes().to_vec(),
            Width::U32Le => len.to_le_bytes().to_vec(),
        }
    }
}

impl fmt::Display for Width {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Width::U8 => "u8",
            Width::U16Be => "u16be",
            Width::U16Le => "u16le",
            Width::U32Be => "u32be",
            Width::U32Le => "u32le",
        })
    }
}

/// Length-prefixed messages: a prefix of [`Width`], then that many bytes.
#[derive(Debug)]
pub struct Length {
    width: Width,
    /// The prefix read so far (fewer bytes than the width), or the bytes left of the message.
    prefix: Vec<u8>,
    left: Option<u64>,
    body: Body,
}

impl Length {
    pub fn new(width: Width, max_line: usize) -> Length {
        Length {
            width,
            prefix: Vec::with_capacity(4),
            left: None,
            body: Body::new(max_line),
        }
    }

    pub fn push(
        &mut self,
        mut data: &[u8],
        emit: &mut impl FnMut(Piece<'_>),
    ) -> Result<(), FramingError> {
        while !data.is_empty() {
            match self.left {
                None => {
                    let take = (self.width.bytes() - self.prefix.len()).min(data.len());
                    self.prefix.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.prefix.len() < self.width.bytes() {
                        continue;
                    }
                    let len = self.width.read(&self.prefix);
                    self.prefix.clear();
                    if len > LENGTH_LIMIT {
                        return Err(FramingError(format!(
                            "a length prefix of {len} bytes is over the limit of {} \
                             (--framing length:{})",
                            crate::format::size(LENGTH_LIMIT),
                            self.width
                        )));
                    }
                    if len == 0 {
                        self.body.add(&[], true, emit);
                    } else {
                        self.left = Some(len);
                    }
                }
                Some(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    let last = take as u64 == left;
                    self.body.add(&data[..take], last, emit);
                    data = &data[take..];
                    self.left = (!last).then_some(left - take as u64);
                }
            }
        }
        Ok(())
    }

    /// Ends the stream: an unfinished message comes out; so do the bytes of an unfinished
    /// prefix, as a message of their own (they were sent, and nothing else shows them).
    pub fn finish(&mut self, cut: bool, emit: &mut impl FnMut(Piece<'_>)) {
        if self.left.take().is_some() {
            self.body.finish(cut, emit);
        } else if !self.prefix.is_empty() {
            let prefix = std::mem::take(&mut self.prefix);
            self.body.add(&prefix, false, emit);
            self.body.finish(cut, emit);
        }
    }

    pub fn pending_len(&self) -> usize {
        self.prefix.len() + self.body.pending_len()
    }

    pub fn shrink(&mut self) {
        self.body.shrink();
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Framer, Framing};
    use super::*;

    /// Frames `chunks` with `framing` and returns each message, its pieces joined, with whether
    /// it was cut into pieces, then what finish hands out.
    fn messages(framing: Framing, max: usize, chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut framer = framing.framer(max);
        let mut out: Vec<(Vec<u8>, bool)> = Vec::new();
        let mut take = |p: Piece<'_>| {
            assert!(p.bytes.len() <= max, "a piece over the maximum");
            if p.continued {
                let last = out.last_mut().expect("a continued piece follows one");
                last.0.extend_from_slice(p.bytes);
                last.1 = true;
            } else {
                out.push((p.bytes.to_vec(), false));
            }
        };
        for chunk in chunks {
            framer.push(chunk, &mut take).expect("frames");
            assert!(framer.pending_len() <= max + COUNT_DIGITS + 4);
        }
        framer.finish(false, &mut take);
        out
    }

    fn texts(framing: Framing, max: usize, chunks: &[&[u8]]) -> Vec<String> {
        messages(framing, max, chunks)
            .into_iter()
            .map(|(m, _)| String::from_utf8_lossy(&m).into_owned())
            .collect()
    }

    #[test]
    fn syslog_takes_counted_records_whole_and_lines_as_lines() {
        let stream = b"12 first\nrecord4 two\n\n<13>plain line\n3 abc0 12 x";
        assert_eq!(
            texts(Framing::Syslog, 100, &[stream]),
            [
                "first\nrecord",
                "two\n",
                "",
                "<13>plain line",
                "abc",
                "0 12 x"
            ]
        );
    }

    #[test]
    fn syslog_digits_without_a_space_are_a_line() {
        assert_eq!(
            texts(Framing::Syslog, 100, &[b"12345\n", b"07 zero-led\n"]),
            ["12345", "07 zero-led"]
        );
        // More digits than a count has.
        assert_eq!(
            texts(Framing::Syslog, 100, &[b"123456789012 long\n"]),
            ["123456789012 long"]
        );
        assert_eq!(
            texts(Framing::Syslog, 100, &[b"12345678901 long\n"]),
            ["12345678901 long"]
        );
        // Digits the stream ends on.
        assert_eq!(texts(Framing::Syslog, 100, &[b"1", b"2"]), ["12"]);
    }

    #[test]
    fn length_prefixes_of_every_width() {
        for width in [
            Width::U8,
            Width::U16Be,
            Width::U16Le,
            Width::U32Be,
            Width::U32Le,
        ] {
            let mut stream = Vec::new();
            for body in [&b""[..], b"a", b"hello world", &[0xff; 200]] {
                stream.extend(width.encode(body.len() as u32));
                stream.extend_from_slice(body);
            }
            let got: Vec<Vec<u8>> = messages(Framing::Length(width), 64, &[&stream])
                .into_iter()
                .map(|(m, _)| m)
                .collect();
            assert_eq!(
                got,
                [
                    b"".to_vec(),
                    b"a".to_vec(),
                    b"hello world".to_vec(),
                    vec![0xff; 200]
                ],
                "{width}"
            );
        }
    }

    #[test]
    fn a_length_over_the_limit_is_an_error() {
        let mut framer = Framing::Length(Width::U32Be).framer(64);
        let err = framer
            .push(&[0xff, 0xff, 0xff, 0xff, b'x'], |_| panic!("no message"))
            .expect_err("4 GiB");
        assert!(
            err.0
                .contains("4294967295 bytes is over the limit of 64 MiB"),
            "{err}"
        );
    }

    #[test]
    fn a_length_at_the_limit_is_taken_and_one_past_it_is_not() {
        let mut framer = Framing::Length(Width::U32Be).framer(64);
        let limit = u32::try_from(LENGTH_LIMIT).expect("fits");
        framer
            .push(&Width::U32Be.encode(limit), |_| panic!("no message yet"))
            .expect("at the limit");
        let mut framer = Framing::Length(Width::U32Be).framer(64);
        framer
            .push(&Width::U32Be.encode(limit + 1), |_| panic!("no message"))
            .expect_err("past the limit");
    }

    #[test]
    fn none_hands_out_each_read() {
        let mut framer = Framing::None.framer(4);
        let mut out = Vec::new();
        for read in [&b"ab\ncd"[..], b"efghij"] {
            framer
                .push(read, |p| out.push((p.bytes.to_vec(), p.continued)))
                .expect("frames");
        }
        assert_eq!(
            out,
            [
                (b"ab\nc".to_vec(), false),
                (b"d".to_vec(), true),
                (b"efgh".to_vec(), false),
                (b"ij".to_vec(), true)
            ]
        );
    }

    /// Each piece `emit` is given: its bytes, whether it continues a message, whether it was cut.
    type Pieces = Vec<(Vec<u8>, bool, bool)>;

    fn collect(pieces: &mut Pieces) -> impl FnMut(Piece<'_>) + '_ {
        |p| pieces.push((p.bytes.to_vec(), p.continued, p.cut))
    }

    #[test]
    fn a_stream_cut_in_a_message_hands_out_what_came_of_it() {
        let mut pieces = Pieces::new();
        let mut length = Length::new(Width::U8, 64);
        length
            .push(&[5, b'a', b'b'], &mut collect(&mut pieces))
            .expect("frames");
        assert!(pieces.is_empty());
        length.finish(true, &mut collect(&mut pieces));
        assert_eq!(pieces, [(b"ab".to_vec(), false, true)]);
        // Half a prefix: its bytes, as a message of their own.
        let mut pieces = Pieces::new();
        let mut length = Length::new(Width::U32Be, 64);
        length
            .push(&[0, 7], &mut collect(&mut pieces))
            .expect("frames");
        length.finish(false, &mut collect(&mut pieces));
        assert_eq!(pieces, [(vec![0, 7], false, false)]);

        let mut pieces = Pieces::new();
        let mut syslog = Syslog::new(64);
        syslog.push(b"5 ab", &mut collect(&mut pieces));
        syslog.finish(true, &mut collect(&mut pieces));
        assert_eq!(pieces, [(b"ab".to_vec(), false, true)]);
        // A count with none of its bytes yet: nothing came of the message.
        let mut pieces = Pieces::new();
        let mut syslog = Syslog::new(64);
        syslog.push(b"3 abc5 ", &mut collect(&mut pieces));
        syslog.finish(true, &mut collect(&mut pieces));
        assert_eq!(pieces, [(b"abc".to_vec(), false, false)]);
    }

    #[test]
    fn pending_len_is_the_bytes_held_for_an_unfinished_message() {
        let mut length = Length::new(Width::U16Be, 64);
        let mut none = |_: Piece<'_>| {};
        length.push(&[0, 5, b'a', b'b'], &mut none).expect("frames");
        assert_eq!(length.pending_len(), 2);
        length.push(b"cde", &mut none).expect("frames");
        assert_eq!(length.pending_len(), 0);
        length.push(&[0], &mut none).expect("frames");
        assert_eq!(length.pending_len(), 1, "half a prefix");

        let mut syslog = Syslog::new(64);
        syslog.push(b"12", &mut none);
        assert_eq!(syslog.pending_len(), 2, "what may be a count");
        syslog.push(b" abc", &mut none);
        assert_eq!(syslog.pending_len(), 3, "counted bytes");
        syslog.push(b"defghijkl", &mut none);
        assert_eq!(syslog.pending_len(), 0);
        syslog.push(b"<1> line", &mut none);
        assert_eq!(syslog.pending_len(), 8, "a line");
    }

    #[test]
    fn shrinking_lets_go_of_an_empty_buffer_and_keeps_held_bytes() {
        let mut none = |_: Piece<'_>| {};
        let mut length = Length::new(Width::U8, 100);
        length.push(&[50], &mut none).expect("frames");
        length.push(&[b'x'; 30], &mut none).expect("frames");
        length.shrink();
        assert_eq!(length.pending_len(), 30, "held bytes are kept");
        length.push(&[b'x'; 20], &mut none).expect("frames");
        assert_eq!(length.pending_len(), 0);
        assert!(length.body.pending.capacity() >= 50);
        length.shrink();
        assert_eq!(length.body.pending.capacity(), 0);

        let mut syslog = Syslog::new(100);
        syslog.push(b"50 ", &mut none);
        syslog.push(&[b'x'; 30], &mut none);
        syslog.push(&[b'x'; 20], &mut none);
        syslog.push(b"30 ", &mut none);
        assert_eq!(syslog.pending_len(), 0);
        assert!(syslog.body.pending.capacity() > 0);
        syslog.shrink();
        assert_eq!(syslog.body.pending.capacity(), 0);
    }

    mod properties {
        use super::super::super::chunked;
        use super::*;
        use proptest::prelude::*;

        fn framings() -> impl Strategy<Value = Framing> {
            prop_oneof![
                Just(Framing::Lines),
                any::<u8>().prop_map(Framing::Delimiter),
                Just(Framing::Syslog),
                Just(Framing::Length(Width::U8)),
                Just(Framing::Length(Width::U16Be)),
                Just(Framing::Length(Width::U16Le)),
                Just(Framing::Length(Width::U32Be)),
                Just(Framing::Length(Width::U32Le)),
            ]
        }

        /// A syslog stream of counted records and lines, and the messages it holds.
        fn syslog_stream() -> impl Strategy<Value = (Vec<u8>, Vec<Vec<u8>>)> {
            proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40)),
                0..12,
            )
            .prop_map(|records| {
                let mut stream = Vec::new();
                let mut messages = Vec::new();
                for (counted, mut body) in records {
                    // A count is never 0 (RFC 6587: NONZERO-DIGIT first).
                    if counted && !body.is_empty() {
                        stream.extend(format!("{} ", body.len()).bytes());
                        stream.extend_from_slice(&body);
                    } else {
                        // A line record: no \n inside, and not starting like a count.
                        body.retain(|&b| b != b'\n');
                        if body.first().is_some_and(u8::is_ascii_digit) {
                            body.insert(0, b'<');
                        }
                        if body.last() == Some(&b'\r') {
                            body.push(b'>');
                        }
                        stream.extend_from_slice(&body);
                        stream.push(b'\n');
                    }
                    messages.push(body);
                }
                (stream, messages)
            })
        }

        proptest! {
            #[test]
            fn any_chunking_gives_the_same_messages(
                framing in framings(),
                bytes in proptest::collection::vec(any::<u8>(), 0..300),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
                max in 1usize..40,
            ) {
                // A stream that is not length-prefixed may hold a length over the limit: then
                // the whole and the chunked stream must fail alike.
                let whole = std::panic::catch_unwind(|| messages(framing, max, &[&bytes]));
                let parts = std::panic::catch_unwind(|| {
                    messages(framing, max, &chunked(&bytes, &cuts))
                });
                prop_assert_eq!(whole.ok(), parts.ok());
            }

            #[test]
            fn syslog_messages_are_the_records_sent(
                (stream, records) in syslog_stream(),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
            ) {
                let got: Vec<Vec<u8>> = messages(Framing::Syslog, 1000, &chunked(&stream, &cuts))
                    .into_iter()
                    .map(|(m, _)| m)
                    .collect();
                prop_assert_eq!(got, records);
            }

            #[test]
            fn length_messages_rebuild_the_stream(
                width in prop_oneof![
                    Just(Width::U8), Just(Width::U16Be), Just(Width::U16Le),
                    Just(Width::U32Be), Just(Width::U32Le)
                ],
                bodies in proptest::collection::vec(
                    proptest::collection::vec(any::<u8>(), 0..255), 0..10),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
                max in 1usize..60,
            ) {
                let mut stream = Vec::new();
                for body in &bodies {
                    stream.extend(width.encode(body.len() as u32));
                    stream.extend_from_slice(body);
                }
                let got = messages(Framing::Length(width), max, &chunked(&stream, &cuts));
                let mut rebuilt = Vec::new();
                for (body, pieces) in &got {
                    prop_assert_eq!(*pieces, body.len() > max);
                    rebuilt.extend(width.encode(body.len() as u32));
                    rebuilt.extend_from_slice(body);
                }
                prop_assert_eq!(rebuilt, stream);
            }
        }
    }

    #[test]
    fn framer_enum_reaches_each_kind() {
        assert!(matches!(Framing::Syslog.framer(8), Framer::Syslog(_)));
        assert!(matches!(Framing::None.framer(8), Framer::Reads(_)));
    }
}
