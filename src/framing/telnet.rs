//! `--telnet`: the telnet protocol's commands taken out of a client's stream before framing, and
//! every option the client offers or asks for refused (`DONT` to its `WILL`, `WONT` to its `DO`),
//! as `ncat -t` does, so `telnet HOST PORT` gives clean lines. An escaped `IAC IAC` stays one
//! `0xff` byte; `CR NUL` (telnet's bare carriage return) becomes `CR`. Pure: bytes in, bytes and
//! replies out.

/// Interpret As Command.
const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
/// Subnegotiation begins (ends at `IAC SE`).
const SB: u8 = 250;
const SE: u8 = 240;

/// Where the filter is in the telnet protocol; kept between reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Data,
    /// After `IAC`.
    Command,
    /// After `IAC WILL`/`WONT`/`DO`/`DONT`: the option byte comes next.
    Option(u8),
    /// Inside a subnegotiation.
    Sub,
    /// After `IAC` inside a subnegotiation.
    SubCommand,
    /// After a `CR` in the data: a `NUL` next is dropped.
    CarriageReturn,
}

/// One client's telnet filter.
#[derive(Debug, Default)]
pub struct Telnet {
    state: State,
}

impl Telnet {
    /// Takes telnet commands out of `data`: the client's own bytes go to `out`, the answers to
    /// its negotiation to `replies`.
    pub fn filter(&mut self, data: &[u8], out: &mut Vec<u8>, replies: &mut Vec<u8>) {
        for &byte in data {
            self.state = match (self.state, byte) {
                (State::Data | State::CarriageReturn, IAC) => State::Command,
                (State::CarriageReturn, 0) => State::Data,
                (State::Data | State::CarriageReturn, b'\r') => {
                    out.push(byte);
                    State::CarriageReturn
                }
                (State::Data | State::CarriageReturn, _) => {
                    out.push(byte);
                    State::Data
                }
                (State::Command, IAC) => {
                    out.push(IAC);
                    State::Data
                }
                (State::Command, WILL | WONT | DO | DONT) => State::Option(byte),
                (State::Command, SB) => State::Sub,
                // NOP, GA, AYT and the other two-byte commands carry no data.
                (State::Command, _) => State::Data,
                (State::Option(verb), option) => {
                    match verb {
                        WILL => replies.extend_from_slice(&[IAC, DONT, option]),
                        DO => replies.extend_from_slice(&[IAC, WONT, option]),
                        // WONT and DONT: already so; an answer would start a loop.
                        _ => {}
                    }
                    State::Data
                }
                (State::Sub, IAC) => State::SubCommand,
                (State::Sub, _) => State::Sub,
                (State::SubCommand, SE) => State::Data,
                (State::SubCommand, _) => State::Sub,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filtered(chunks: &[&[u8]]) -> (Vec<u8>, Vec<u8>) {
        let mut telnet = Telnet::default();
        let (mut out, mut replies) = (Vec::new(), Vec::new());
        for chunk in chunks {
            telnet.filter(chunk, &mut out, &mut replies);
        }
        (out, replies)
    }

    #[test]
    fn negotiation_is_refused_and_taken_out() {
        // What GNU inetutils telnet sends first: DO SUPPRESS-GO-AHEAD, WILL TERMINAL-TYPE, …
        let opening = [IAC, DO, 3, IAC, WILL, 24, IAC, WILL, 31, IAC, WONT, 1];
        let (out, replies) = filtered(&[&opening, b"hello\r\n"]);
        assert_eq!(out, b"hello\r\n");
        assert_eq!(replies, [IAC, WONT, 3, IAC, DONT, 24, IAC, DONT, 31]);
    }

    #[test]
    fn escaped_iac_subnegotiation_and_cr_nul() {
        let stream = [
            b'a', IAC, IAC, b'b', IAC, SB, 24, 0, b'x', IAC, IAC, b'y', IAC, SE, b'c', b'\r', 0,
            b'd', IAC, 241, b'e',
        ];
        let whole = filtered(&[&stream]);
        assert_eq!(whole.0, [b'a', 0xff, b'b', b'c', b'\r', b'd', b'e']);
        assert!(whole.1.is_empty());
        // Split anywhere, the same.
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(filtered(&[a, b]), whole, "cut at {cut}");
        }
    }
}
