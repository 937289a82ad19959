//! Lines (`--framing lines`, the default) and delimiters (`--framing delimiter:X`): a message
//! ends at `\n` (or at the byte X). For lines, a `\r` right before the `\n` is taken out of the
//! message and reported as part of its line end ([`LineEnd`]), so the pieces and their line ends
//! give back the stream byte for byte. A message longer than the framer's maximum is handed out
//! in pieces of exactly that many bytes; every piece after the first is marked
//! [`Piece::continued`], which keeps a client's memory bounded however long its lines are.

use memchr::memchr;

use super::{LineEnd, Piece};

/// Splits a byte stream into messages at `\n` (or another delimiter), holding at most `max_line`
/// bytes of an unfinished one.
#[derive(Debug)]
pub struct LineFramer {
    /// Bytes of the current message not yet handed out; never longer than `max_line`.
    pending: Vec<u8>,
    /// Whether pieces of the current message were already handed out.
    continued: bool,
    max_line: usize,
    /// The byte that ends a message.
    delimiter: u8,
    /// Whether a `\r` before the `\n` belongs to the line end (lines, not a delimiter).
    crlf: bool,
}

impl LineFramer {
    /// A framer that hands out messages longer than `max_line` bytes in pieces.
    ///
    /// # Panics
    /// If `max_line` is zero: a piece must hold at least one byte.
    pub fn new(max_line: usize) -> LineFramer {
        assert!(max_line > 0, "max_line must be at least 1");
        LineFramer {
            pending: Vec::new(),
            continued: false,
            max_line,
            delimiter: b'\n',
            crlf: true,
        }
    }

    /// A framer that ends messages at `delimiter`, which is not part of them (a `\r` before it
    /// is, even when the delimiter is `\n`).
    ///
    /// # Panics
    /// If `max_line` is zero.
    pub fn with_delimiter(max_line: usize, delimiter: u8) -> LineFramer {
        LineFramer {
            delimiter,
            crlf: false,
            ..LineFramer::new(max_line)
        }
    }

    /// Feeds the next bytes of the stream, calling `emit` for each message or piece they complete.
    pub fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(Piece<'_>)) {
        while let Some(end) = memchr(self.delimiter, data) {
            self.feed(&data[..end], true, &mut emit);
            data = &data[end + 1..];
        }
        if !data.is_empty() {
            self.feed(data, false, &mut emit);
        }
    }

    /// Ends the stream: hands out an unfinished last message (kept as sent, `\r` included),
    /// marked [`Piece::cut`] if `cut` says the server stopped reading while it was being sent.
    pub fn finish(&mut self, cut: bool, mut emit: impl FnMut(Piece<'_>)) {
        if !self.pending.is_empty() {
            emit(Piece {
                bytes: &self.pending,
                continued: self.continued,
                end: LineEnd::None,
                cut,
            });
        }
        self.pending.clear();
        self.continued = false;
    }

    /// The longest message it hands out whole, when it holds nothing of an unfinished one (a
    /// message handed out in pieces always leaves its last bytes held until its end): then a
    /// delimited line of printable text no longer than that is one message, exactly as sent (no
    /// `\r` to drop), whatever came before.
    pub fn whole_lines_up_to(&self) -> Option<usize> {
        self.pending.is_empty().then_some(self.max_line)
    }

    /// Whether messages end at `\n`.
    pub fn ends_at_newline(&self) -> bool {
        self.delimiter == b'\n'
    }

    /// Bytes held for an unfinished message.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Releases the memory held for unfinished messages when there is none; an idle client then
    /// costs nothing here.
    pub fn shrink(&mut self) {
        if self.pending.is_empty() {
            self.pending = Vec::new();
        }
    }

    /// Adds `rest` to the current message; `end` says whether a `\n` followed it.
    ///
    /// Pieces are cut whenever more than `max_line` bytes of the message are known, which depends
    /// only on the message's position in the stream, never on how the stream was chunked.
    fn feed(&mut self, mut rest: &[u8], end: bool, emit: &mut impl FnMut(Piece<'_>)) {
        let max = self.max_line;
        if self.pending.len() + rest.len() > max {
            let take = max - self.pending.len();
            if self.pending.is_empty() {
                emit(Piece {
                    bytes: &rest[..max],
                    continued: self.continued,
                    end: LineEnd::None,
                    cut: false,
                });
            } else {
                self.pending.extend_from_slice(&rest[..take]);
                emit(Piece {
                    bytes: &self.pending,
                    continued: self.continued,
                    end: LineEnd::None,
                    cut: false,
                });
                self.pending.clear();
            }
            rest = &rest[take..];
            self.continued = true;
            while rest.len() > max {
                emit(Piece {
                    bytes: &rest[..max],
                    continued: true,
                    end: LineEnd::None,
                    cut: false,
                });
                rest = &rest[max..];
            }
        }
        if !end {
            self.pending.extend_from_slice(rest);
            return;
        }
        let whole: &[u8] = if self.pending.is_empty() {
            rest
        } else {
            self.pending.extend_from_slice(rest);
            &self.pending
        };
        let (tail, line_end) = match whole.strip_suffix(b"\r") {
            Some(tail) if self.crlf => (tail, LineEnd::CrLf),
            _ if self.delimiter == b'\n' => (whole, LineEnd::Lf),
            _ => (whole, LineEnd::Delimiter(self.delimiter)),
        };
        emit(Piece {
            bytes: tail,
            continued: self.continued,
            end: line_end,
            cut: false,
        });
        self.pending.clear();
        self.continued = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames `chunks` in order and returns each piece as (bytes, continued), then the finish.
    fn frame(max: usize, chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut framer = LineFramer::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk, |p| out.push((p.bytes.to_vec(), p.continued)));
        }
        framer.finish(false, |p| out.push((p.bytes.to_vec(), p.continued)));
        out
    }

    /// A delimiter other than `\n` ends messages with itself: a `\r` before it is part of the
    /// message, and each piece says which byte ended it.
    #[test]
    fn a_delimiter_keeps_a_cr_and_names_itself() {
        let mut framer = LineFramer::with_delimiter(64, b';');
        let mut out = Vec::new();
        framer.push(b"a\r;b;", |p| out.push((p.bytes.to_vec(), p.end)));
        assert_eq!(
            out,
            [
                (b"a\r".to_vec(), LineEnd::Delimiter(b';')),
                (b"b".to_vec(), LineEnd::Delimiter(b';')),
            ]
        );
    }

    /// Frames `chunks` and joins every piece's bytes and line end: the stream itself.
    fn rebuilt(max: usize, chunks: &[&[u8]]) -> Vec<u8> {
        let mut framer = LineFramer::new(max);
        let mut out = Vec::new();
        let mut join = |p: Piece<'_>| {
            out.extend_from_slice(p.bytes);
            out.extend_from_slice(p.end.bytes());
        };
        for chunk in chunks {
            framer.push(chunk, &mut join);
        }
        framer.finish(false, &mut join);
        out
    }

    fn whole(items: &[&str]) -> Vec<(Vec<u8>, bool)> {
        items
            .iter()
            .map(|s| (s.as_bytes().to_vec(), false))
            .collect()
    }

    #[test]
    fn splits_at_newlines() {
        assert_eq!(frame(64, &[b"one\ntwo\n"]), whole(&["one", "two"]));
    }

    #[test]
    fn joins_a_message_split_across_reads() {
        assert_eq!(
            frame(64, &[b"he", b"llo\nwor", b"ld\n"]),
            whole(&["hello", "world"])
        );
    }

    #[test]
    fn drops_the_cr_of_crlf_only() {
        assert_eq!(
            frame(64, &[b"dos\r\n", b"mid\rdle\n", b"\r\n"]),
            whole(&["dos", "mid\rdle", ""])
        );
    }

    #[test]
    fn crlf_split_between_reads() {
        assert_eq!(frame(64, &[b"dos\r", b"\n"]), whole(&["dos"]));
    }

    #[test]
    fn keeps_empty_messages() {
        assert_eq!(frame(64, &[b"\n\n"]), whole(&["", ""]));
    }

    #[test]
    fn last_message_without_newline_comes_at_finish() {
        assert_eq!(frame(64, &[b"a\nbye"]), whole(&["a", "bye"]));
        assert_eq!(frame(64, &[b"a\n"]), whole(&["a"]));
        assert_eq!(frame(64, &[b"cr\r"]), whole(&["cr\r"]));
    }

    #[test]
    fn long_messages_come_in_marked_pieces() {
        let expected = vec![
            (b"abcd".to_vec(), false),
            (b"efgh".to_vec(), true),
            (b"ij".to_vec(), true),
            (b"x".to_vec(), false),
        ];
        assert_eq!(frame(4, &[b"abcdefghij\nx\n"]), expected);
        assert_eq!(frame(4, &[b"ab", b"cdefg", b"hij\nx", b"\n"]), expected);
    }

    #[test]
    fn a_message_of_exactly_the_maximum_is_one_piece() {
        assert_eq!(frame(4, &[b"abcd\n"]), whole(&["abcd"]));
        assert_eq!(frame(4, &[b"abc\r\n"]), whole(&["abc"]));
    }

    #[test]
    fn a_crlf_just_past_the_maximum_comes_as_an_empty_piece() {
        let expected = vec![(b"abcd".to_vec(), false), (Vec::new(), true)];
        assert_eq!(frame(4, &[b"abcd\r\n"]), expected);
        assert_eq!(frame(4, &[b"ab", b"cd", b"\r", b"\n"]), expected);
        assert_eq!(rebuilt(4, &[b"abcd\r\n"]), b"abcd\r\n");
    }

    #[test]
    fn line_ends_are_reported() {
        let mut ends = Vec::new();
        let mut framer = LineFramer::new(4);
        framer.push(b"a\nb\r\nlong-one\nc\r", |p| ends.push((p.end, p.cut)));
        framer.finish(true, |p| ends.push((p.end, p.cut)));
        use LineEnd::*;
        assert_eq!(
            ends,
            [
                (Lf, false),
                (CrLf, false),
                (None, false),
                (Lf, false),
                (None, true)
            ]
        );
        assert_eq!(CrLf.bytes(), b"\r\n");
        assert_eq!(Lf.bytes(), b"\n");
        assert!(None.bytes().is_empty());
    }

    #[test]
    fn an_unfinished_long_message_keeps_at_most_the_maximum() {
        let mut framer = LineFramer::new(8);
        let mut pieces = 0;
        for _ in 0..1000 {
            framer.push(b"0123456789", |_| pieces += 1);
            assert!(framer.pending_len() <= 8);
        }
        assert_eq!(pieces, 10_000 / 8 - 1);
    }

    #[test]
    fn every_chunking_gives_the_same_messages() {
        let stream: &[u8] = b"alpha\r\nbeta\n\ngamma-is-long\r\r\ndelta\rx\nomega";
        for max in [1, 2, 3, 5, 8, 64] {
            let expected = frame(max, &[stream]);
            for cut in 0..=stream.len() {
                let (a, b) = stream.split_at(cut);
                assert_eq!(frame(max, &[a, b]), expected, "max {max}, cut at {cut}");
            }
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(frame(max, &bytes), expected, "max {max}, byte by byte");
        }
    }

    mod properties {
        use super::super::super::chunked;
        use super::*;
        use proptest::prelude::*;

        /// Streams rich in line ends and CRs, so boundaries fall everywhere.
        fn stream() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a'), any::<u8>()],
                0..300,
            )
        }

        proptest! {
            #[test]
            fn any_chunking_gives_the_messages_of_the_whole_stream(
                bytes in stream(),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
                max in 1usize..40,
            ) {
                let chunks = chunked(&bytes, &cuts);
                prop_assert_eq!(frame(max, &chunks), frame(max, &[&bytes]));
            }

            #[test]
            fn pieces_rebuild_the_stream(bytes in stream(), max in 1usize..40) {
                // Joining pieces of a message and ending each message with \n gives back the
                // stream, but for the CR dropped before each \n and the final \n if it had none.
                let mut rebuilt = Vec::new();
                let mut pieces = frame(max, &[&bytes]).into_iter().peekable();
                while let Some((piece, _)) = pieces.next() {
                    prop_assert!(piece.len() <= max);
                    rebuilt.extend_from_slice(&piece);
                    if pieces.peek().is_none_or(|(_, continued)| !continued) {
                        rebuilt.push(b'\n');
                    }
                }
                let mut expected: Vec<u8> = Vec::new();
                for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
                    let ended = i < bytes.iter().filter(|&&b| b == b'\n').count();
                    if !ended && line.is_empty() {
                        continue;
                    }
                    let line = if ended { line.strip_suffix(b"\r").unwrap_or(line) } else { line };
                    expected.extend_from_slice(line);
                    expected.push(b'\n');
                }
                prop_assert_eq!(rebuilt, expected);
            }

            #[test]
            fn pieces_and_line_ends_rebuild_the_stream_exactly(
                bytes in stream(),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
                max in 1usize..40,
            ) {
                let chunks = chunked(&bytes, &cuts);
                prop_assert_eq!(rebuilt(max, &chunks), bytes);
            }
        }
    }
}
