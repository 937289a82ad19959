//! Fuzzes every framing plus escaping: the first byte picks the framing (and a delimiter), the
//! second the maximum line length and the next two a place to cut the stream; the framer must
//! give the same pieces (or the same error) for the whole stream and the cut one, never hold
//! much more than the maximum, and every piece must escape to control-free text that unescapes to
//! the piece.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overhear::framing::{Framing, Width};
use overhear::output::{escape_into, unescape};

type Pieces = Vec<(Vec<u8>, bool)>;

fn pieces(framing: Framing, max: usize, chunks: &[&[u8]]) -> Result<Pieces, String> {
    let mut framer = framing.framer(max);
    let mut out = Vec::new();
    for chunk in chunks {
        framer
            .push(chunk, |p| out.push((p.bytes.to_vec(), p.continued)))
            .map_err(|err| err.0)?;
        // A count or a prefix waits beside an unfinished message.
        assert!(framer.pending_len() <= max + 14);
    }
    framer.finish(false, |p| out.push((p.bytes.to_vec(), p.continued)));
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let [kind, max, cut_hi, cut_lo, stream @ ..] = data else {
        return;
    };
    let framing = match kind % 8 {
        0 => Framing::Lines,
        1 => Framing::Delimiter(kind / 8),
        2 => Framing::Syslog,
        3 => Framing::Length(Width::U8),
        4 => Framing::Length(Width::U16Be),
        5 => Framing::Length(Width::U16Le),
        6 => Framing::Length(Width::U32Be),
        _ => Framing::Length(Width::U32Le),
    };
    let max = usize::from(*max).max(1);
    let cut = (usize::from(*cut_hi) << 8 | usize::from(*cut_lo)) % (stream.len() + 1);
    let whole = pieces(framing, max, &[stream]);
    let (a, b) = stream.split_at(cut);
    assert_eq!(whole, pieces(framing, max, &[a, b]));
    for (piece, _) in whole.iter().flatten() {
        assert!(piece.len() <= max);
        let mut escaped = Vec::new();
        escape_into(&mut escaped, piece);
        let text = std::str::from_utf8(&escaped).expect("escaped text is UTF-8");
        assert!(!text.chars().any(|c| c.is_control() && c != '\t'));
        assert_eq!(unescape(&escaped).as_deref(), Ok(piece.as_slice()));
    }
});
