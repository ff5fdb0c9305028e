//! The pre-tokenizer of `cl100k_base` and `o200k_base` for ASCII text, written out by hand,
//! with the regex (`bpe-openai`'s, the same patterns as tiktoken's) for everything else.
//!
//! [`split`] walks the text piece by piece. At each position the hand-written rules decide the
//! piece when every character they look at is ASCII; when one is not (a Unicode letter, mark,
//! digit, space or `ſ`, which `(?i)s` also matches, could change the answer) the regex takes
//! that one piece, anchored at the same position (the patterns are anchored and never look
//! behind, so the piece at a position depends only on the text from there). The result is
//! the regex's split exactly; `tests::agrees_with_the_regex` checks it on random text built
//! from the characters the rules treat specially.
//!
//! The rules are the patterns under leftmost-first (backtracking) semantics, with the
//! look-ahead emulation of `bpe-openai` (`\s+\s` minus its last character, standing for
//! `\s+(?!\S)`), over ASCII classes: letters `[A-Za-z]` (upper `[A-Z]`, lower `[a-z]`),
//! digits `[0-9]`, whitespace `[\t\n\x0B\x0C\r ]`.
//!
//! Performance notes: with the piece memo of `tokens`, the regex was ~45% of incremental
//! counting (an anchored meta-regex search per piece); figures in `rust/tokens.rs`.

use crate::tokens::Encoding;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Upper,
    Lower,
    Digit,
    CrLf,
    /// Whitespace other than CR and LF.
    Space,
    /// Anything else in ASCII (punctuation, symbols, control characters).
    Other,
    /// A byte of a non-ASCII character: the rules give up.
    NonAscii,
}

const fn classify(b: u8) -> Class {
    match b {
        b'A'..=b'Z' => Class::Upper,
        b'a'..=b'z' => Class::Lower,
        b'0'..=b'9' => Class::Digit,
        b'\r' | b'\n' => Class::CrLf,
        b' ' | b'\t' | 0x0B | 0x0C => Class::Space,
        0x80..=0xFF => Class::NonAscii,
        _ => Class::Other,
    }
}

static CLASSES: [Class; 256] = {
    let mut t = [Class::Other; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = classify(i as u8);
        i += 1;
    }
    t
};

#[inline]
fn class(b: u8) -> Class {
    CLASSES[b as usize]
}

/// Class of `t[i]`, `None` past the end.
#[inline]
fn at(t: &[u8], i: usize) -> Option<Class> {
    t.get(i).map(|&b| class(b))
}

fn is_letter(c: Option<Class>) -> bool {
    matches!(c, Some(Class::Upper | Class::Lower))
}

fn is_space(c: Option<Class>) -> bool {
    matches!(c, Some(Class::Space | Class::CrLf))
}

/// End of the run starting at `i` of bytes whose class satisfies `f`; `None` if the run is
/// ended by a non-ASCII byte (which might have continued it).
#[inline]
fn run(t: &[u8], mut i: usize, f: impl Fn(Class) -> bool) -> Option<usize> {
    while let Some(c) = at(t, i) {
        if f(c) {
            i += 1;
        } else if c == Class::NonAscii {
            return None;
        } else {
            break;
        }
    }
    Some(i)
}

/// Length of a contraction (`'s 't 're 've 'm 'll 'd`, any case) at `i`, 0 if none; `None`
/// when a non-ASCII character could be part of one.
#[inline]
fn contraction(t: &[u8], i: usize) -> Option<usize> {
    if t.get(i) != Some(&b'\'') {
        return Some(0);
    }
    let a = t.get(i + 1).map(u8::to_ascii_lowercase);
    let b = t.get(i + 2).map(u8::to_ascii_lowercase);
    if a.is_some_and(|a| a >= 0x80) {
        return None;
    }
    Some(match (a, b) {
        (Some(b's' | b't' | b'm' | b'd'), _) => 2,
        (Some(b'r' | b'v'), Some(b'e')) | (Some(b'l'), Some(b'l')) => 3,
        (Some(b'r' | b'v' | b'l'), Some(x)) if x >= 0x80 => return None,
        _ => 0,
    })
}

/// The piece starting at `i` by the ASCII rules: its end, or `None` to ask the regex.
fn piece(t: &[u8], i: usize, enc: Encoding) -> Option<usize> {
    let o200k = enc == Encoding::O200kBase;
    let c = at(t, i)?;
    if c == Class::NonAscii {
        return None;
    }
    // cl100k tries the contractions first, on their own.
    if !o200k {
        let n = contraction(t, i)?;
        if n > 0 {
            return Some(i + n);
        }
    }
    // Letters, with at most one leading character that is not CR, LF, letter or digit.
    let prefix = matches!(c, Class::Space | Class::Other);
    let start = if prefix { i + 1 } else { i };
    if prefix && at(t, start) == Some(Class::NonAscii) {
        return None;
    }
    if is_letter(at(t, start)) {
        if o200k {
            // [A-Z]*[a-z]+ or else [A-Z]+[a-z]* (both never empty here), then a contraction.
            let upper_end = run(t, start, |c| c == Class::Upper)?;
            let end = run(t, upper_end, |c| c == Class::Lower)?;
            return Some(end + contraction(t, end)?);
        }
        return run(t, start, |c| matches!(c, Class::Upper | Class::Lower));
    }
    if c == Class::Digit {
        let mut end = i;
        while end < i + 3 && at(t, end) == Some(Class::Digit) {
            end += 1;
        }
        if end < i + 3 && at(t, end) == Some(Class::NonAscii) {
            return None;
        }
        return Some(end);
    }
    // ` ?[^\s\p{L}\p{N}]+` then `[\r\n]*` (o200k: `[\r\n/]*`).
    let punct_start = if t[i] == b' ' { i + 1 } else { i };
    if at(t, punct_start) == Some(Class::NonAscii) {
        return None;
    }
    if at(t, punct_start) == Some(Class::Other) {
        let end = run(t, punct_start, |c| c == Class::Other)?;
        let trail = |c: Class, b: u8| c == Class::CrLf || (o200k && b == b'/');
        let mut e = end;
        while let Some(&b) = t.get(e) {
            if trail(class(b), b) {
                e += 1;
            } else {
                break;
            }
        }
        return Some(e);
    }
    // Whitespace: W is the whole run from here.
    let w_end = run(t, i, |c| matches!(c, Class::Space | Class::CrLf))?;
    debug_assert!(is_space(at(t, i)));
    // `\s*[\r\n]+`: through the last CR or LF of W.
    if let Some(last) = t[i..w_end].iter().rposition(|&b| b == b'\r' || b == b'\n') {
        return Some(i + last + 1);
    }
    // `\s+$`.
    if w_end == t.len() {
        return Some(w_end);
    }
    // `\s+(?!\S)`, emulated as `\s+\s` minus the last character; else `\s+`.
    if w_end - i >= 2 {
        Some(w_end - 1)
    } else {
        Some(w_end)
    }
}

/// The pieces of `text`, as byte lengths, in order: exactly the regex's split.
pub fn split(enc: Encoding, text: &str) -> Pieces<'_> {
    Pieces { enc, text, i: 0 }
}

pub struct Pieces<'t> {
    enc: Encoding,
    text: &'t str,
    i: usize,
}

impl Iterator for Pieces<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        let t = self.text.as_bytes();
        let i = self.i;
        if i >= t.len() {
            return None;
        }
        let end = match piece(t, i, self.enc) {
            Some(end) => end,
            None => {
                let rest = &self.text[i..];
                i + self
                    .enc
                    .tokenizer()
                    .split(rest)
                    .next()
                    .map_or(rest.len(), str::len)
            }
        };
        debug_assert!(end > i);
        self.i = end;
        Some(end - i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALPHABET: &[&str] = &[
        " ", " ", "  ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "a", "b", "s", "t", "Z", "HE",
        "llo", "World", "'", "'s", "'S", "'t", "'re", "'RE", "'ve", "'m", "'ll", "'Ll", "'d", "'x",
        "1", "23", "4567", ".", "!", "?", "/", "//", "{", "}", "\"", "-", "_", "\x01", "~", "\x1c",
        "\x7f", "é", "日本", "\u{a0}", "\u{85}", "ſ", "'ſ", "\u{301}", "٣", "😀", "\u{2028}",
    ];

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    #[test]
    fn agrees_with_the_regex() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for enc in Encoding::ALL {
            let tok = enc.tokenizer();
            for round in 0..20_000 {
                // Mostly ASCII, so that the hand-written rules do most of the work.
                let ascii_only = round % 3 != 0;
                let n = 1 + rng.below(12);
                let text: String = (0..n)
                    .map(|_| loop {
                        let s = ALPHABET[rng.below(ALPHABET.len())];
                        if !ascii_only || s.is_ascii() {
                            break s;
                        }
                    })
                    .collect();
                let expected: Vec<usize> = tok.split(&text).map(str::len).collect();
                let got: Vec<usize> = split(enc, &text).collect();
                assert_eq!(got, expected, "{enc:?} {text:?}");
            }
        }
    }
}
