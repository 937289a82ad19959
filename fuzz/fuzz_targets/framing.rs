//! Fuzzes framing plus escaping: the first byte picks the maximum line length and the next two
//! a place to cut the stream; the framer must give the same pieces for the whole stream and the
//! cut one, never hold more than the maximum, and every piece must escape to control-free text
//! that unescapes to the piece.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overhear::framing::LineFramer;
use overhear::output::{escape_into, unescape};

fn pieces(max: usize, chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
    let mut framer = LineFramer::new(max);
    let mut out = Vec::new();
    for chunk in chunks {
        framer.push(chunk, |p| out.push((p.bytes.to_vec(), p.continued)));
        assert!(framer.pending_len() <= max);
    }
    framer.finish(false, |p| out.push((p.bytes.to_vec(), p.continued)));
    out
}

fuzz_target!(|data: &[u8]| {
    let [max, cut_hi, cut_lo, stream @ ..] = data else {
        return;
    };
    let max = usize::from(*max).max(1);
    let cut = (usize::from(*cut_hi) << 8 | usize::from(*cut_lo)) % (stream.len() + 1);
    let whole = pieces(max, &[stream]);
    let (a, b) = stream.split_at(cut);
    assert_eq!(whole, pieces(max, &[a, b]));
    for (piece, _) in &whole {
        assert!(piece.len() <= max);
        let mut escaped = Vec::new();
        escape_into(&mut escaped, piece);
        let text = std::str::from_utf8(&escaped).expect("escaped text is UTF-8");
        assert!(!text.chars().any(|c| c.is_control() && c != '\t'));
        assert_eq!(unescape(&escaped).as_deref(), Ok(piece.as_slice()));
    }
});
