//! A hand-written JSON scanner for the event shapes LLM streams actually send: the fast
//! [`Cursor`] every extractor tries first.
//!
//! It accepts a strict subset of what the jiter [`Walk`](super::json::Walk) accepts and reads
//! the same values from it; on anything outside that subset (a malformed document, an escape
//! in a key, a number it does not parse itself, deep nesting, invalid UTF-8 in a string the
//! meter reads) it gives up with an empty error and the caller runs the jiter walk over the
//! event again, which produces the result, or the exact error message, as before. So the
//! scanner changes speed only, never what an event means or which events are malformed.
//!
//! The subset, and why it is inside jiter's: structure, literals and whitespace exactly as in
//! RFC 8259; strings without control characters whose escapes are the simple ones or `\uXXXX`
//! outside the surrogate range (jiter accepts those, and also surrogate pairs, which this
//! scanner leaves to it); numbers of the JSON grammar with at most 100 integer digits (jiter:
//! 4,300); nesting in skipped values at most 64 deep (jiter: 200); keys are ASCII without
//! escapes. Strings the meter reads are UTF-8 checked as in the walk; escaped ones are decoded
//! by serde_json as in the walk.
//!
//! Performance notes (`benches/work.rs`, framing + extraction of a 20,000-event stream, scanner
//! and walk interleaved in one run, best of 5-7; absolute figures move with the load on this
//! shared 2-core machine, the ratios much less):
//! - Kept, marginal: this scanner over the jiter walk measured 9-14% faster per event in
//!   three interleaved runs while it was being tuned (e.g. 0.51 vs 0.56 us per OpenAI event,
//!   0.33 vs 0.35 Anthropic, framing included) and 0-5% in the last one (0.595 vs 0.594
//!   OpenAI, 0.343 vs 0.361 Anthropic, 0.427 vs 0.419 Responses): the walk is already lean
//!   and what remains is spread thin (key lookup, per-string validation, building the
//!   `Extracted`). The large win is the template (`template.rs`), which this scanner backs: it
//!   reads every event the template does not, and finds the sequence number's bytes for it.
//!   Worth revisiting: if a quieter machine confirms ~0%, the walk alone is simpler.
//! - Tried for string scanning: an eight-byte SWAR pre-scan, a table-driven byte loop, and
//!   memchr2 for the end plus vectorised checks of the run (kept: best on the 36-byte ids and
//!   short keys of real events, and the SWAR variant only broke even); key lookup by length
//!   and bytes instead of `==` on `str` (which called libc memcmp per candidate).

use super::json::{Cursor, Key, Result, UNKNOWN};
use std::borrow::Cow;

/// Give up: the caller reruns the event through the jiter walk (no allocation: an empty
/// `String` is free).
#[inline]
fn give_up<T>() -> Result<T> {
    Err(String::new())
}

const MAX_SKIP_DEPTH: u32 = 64;
const MAX_INT_DIGITS: usize = 100;

// Byte classes inside a string.
const PLAIN: u8 = 0;
const QUOTE: u8 = 1;
const BACKSLASH: u8 = 2;
const CONTROL: u8 = 3;
const HIGH: u8 = 4;

static STRING_CLASS: [u8; 256] = {
    let mut t = [PLAIN; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if i < 0x20 {
            CONTROL
        } else if i == b'"' as usize {
            QUOTE
        } else if i == b'\\' as usize {
            BACKSLASH
        } else if i >= 0x80 {
            HIGH
        } else {
            PLAIN
        };
        i += 1;
    }
    t
};

/// What a scanned string contained.
#[derive(Clone, Copy)]
struct StrInfo {
    /// Offset of the opening quote.
    start: usize,
    escaped: bool,
    high: bool,
}

pub struct Scan<'j> {
    d: &'j [u8],
    i: usize,
}

impl<'j> Scan<'j> {
    pub fn new(data: &'j [u8]) -> Self {
        Scan { d: data, i: 0 }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&b) = self.d.get(self.i) {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    /// The next non-whitespace byte, not consumed.
    #[inline]
    fn peek(&mut self) -> Result<u8> {
        self.ws();
        match self.d.get(self.i) {
            Some(&b) => Ok(b),
            None => give_up(),
        }
    }

    #[inline]
    fn literal(&mut self, word: &[u8]) -> Result<()> {
        if self.d[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            give_up()
        }
    }

    /// A string starting at the current offset (its opening quote); leaves the offset past
    /// the closing quote.
    #[inline]
    fn string(&mut self) -> Result<StrInfo> {
        let start = self.i;
        let d = self.d;
        let mut j = start + 1;
        let mut escaped = false;
        let mut high = false;
        loop {
            // The end or an escape, found with memchr's vector search; the bytes before it are
            // then checked for control characters and non-ASCII in one vectorised pass each.
            // Measured against a table-driven byte loop and an eight-byte SWAR pre-scan: see
            // the module notes.
            let Some(off) = memchr::memchr2(b'"', b'\\', &d[j..]) else {
                return give_up();
            };
            let run = &d[j..j + off];
            if run.iter().any(|&b| b < 0x20) {
                return give_up();
            }
            high |= !run.is_ascii();
            j += off;
            if d[j] == b'"' {
                break;
            }
            escaped = true;
            j = escape_end(d, j)?;
        }
        self.i = j + 1;
        Ok(StrInfo {
            start,
            escaped,
            high,
        })
    }

    /// A key and its colon, looked up in `names` as the walk does. Keys are ASCII without
    /// escapes here; any other key gives up.
    #[inline]
    fn key(&mut self, names: &[&str]) -> Result<Key> {
        let d = self.d;
        if d.get(self.i) != Some(&b'"') {
            return give_up();
        }
        let s = self.i + 1;
        let Some(len) = d[s..]
            .iter()
            .position(|&b| STRING_CLASS[b as usize] != PLAIN)
        else {
            return give_up();
        };
        if d[s + len] != b'"' {
            return give_up();
        }
        let k = &d[s..s + len];
        self.i = s + len + 1;
        if self.peek()? != b':' {
            return give_up();
        }
        self.i += 1;
        Ok(Some(
            names
                .iter()
                .position(|n| n.len() == k.len() && n.bytes().zip(k).all(|(a, b)| a == *b))
                .unwrap_or(UNKNOWN),
        ))
    }

    fn number(&mut self) -> Result<()> {
        let d = self.d;
        let mut j = self.i;
        if d.get(j) == Some(&b'-') {
            j += 1;
        }
        match d.get(j) {
            Some(b'0') => j += 1,
            Some(b'1'..=b'9') => {
                let s = j;
                while d.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
                if j - s > MAX_INT_DIGITS {
                    return give_up();
                }
            }
            _ => return give_up(),
        }
        if d.get(j) == Some(&b'.') {
            j += 1;
            let s = j;
            while d.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            }
            if j == s {
                return give_up();
            }
        }
        if matches!(d.get(j), Some(b'e' | b'E')) {
            j += 1;
            if matches!(d.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            let s = j;
            while d.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            }
            if j == s {
                return give_up();
            }
        }
        // A digit right after the number (`01`) is malformed: leave it to the walk.
        if d.get(j).is_some_and(u8::is_ascii_digit) {
            return give_up();
        }
        self.i = j;
        Ok(())
    }

    fn skip_depth(&mut self, depth: u32) -> Result<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => {
                if depth >= MAX_SKIP_DEPTH {
                    return give_up();
                }
                self.i += 1;
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.key(&[])?;
                    self.skip_depth(depth + 1)?;
                    match self.peek()? {
                        b',' => {
                            self.i += 1;
                            self.ws();
                        }
                        b'}' => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return give_up(),
                    }
                }
            }
            b'[' => {
                if depth >= MAX_SKIP_DEPTH {
                    return give_up();
                }
                self.i += 1;
                if self.peek()? == b']' {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.skip_depth(depth + 1)?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return give_up(),
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    /// A plain integer (no fraction or exponent, at most 18 digits), else give up.
    fn int(&mut self) -> Result<i64> {
        let d = self.d;
        let mut j = self.i;
        let neg = d.get(j) == Some(&b'-');
        if neg {
            j += 1;
        }
        let s = j;
        let mut v: i64 = 0;
        while let Some(&b) = d.get(j) {
            if !b.is_ascii_digit() {
                break;
            }
            // Checked before the digit is taken: a 19th digit could overflow i64 (a panic
            // in a debug build, a wrapped figure in a release one).
            if j - s == 18 {
                return give_up();
            }
            v = v * 10 + i64::from(b - b'0');
            j += 1;
        }
        let n = j - s;
        if n == 0
            || (n > 1 && d[s] == b'0')
            || matches!(d.get(j), Some(b'.' | b'e' | b'E'))
            || (neg && v == 0)
        {
            return give_up();
        }
        self.i = j;
        Ok(if neg { -v } else { v })
    }
}

/// The offset just past the escape starting at `d[j] == '\\'`: simple escapes and `\uXXXX`
/// outside the surrogate range; anything else gives up.
#[inline]
fn escape_end(d: &[u8], j: usize) -> Result<usize> {
    match d.get(j + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(j + 2),
        Some(b'u') => {
            let Some(hex) = d.get(j + 2..j + 6) else {
                return give_up();
            };
            let mut n = 0u32;
            for &h in hex {
                let digit = match h {
                    b'0'..=b'9' => h - b'0',
                    b'a'..=b'f' => h - b'a' + 10,
                    b'A'..=b'F' => h - b'A' + 10,
                    _ => return give_up(),
                };
                n = n * 16 + u32::from(digit);
            }
            if (0xD800..=0xDFFF).contains(&n) {
                return give_up();
            }
            Ok(j + 6)
        }
        _ => give_up(),
    }
}

impl<'j> Cursor<'j> for Scan<'j> {
    fn finish(mut self) -> Result<()> {
        self.ws();
        if self.i == self.d.len() {
            Ok(())
        } else {
            give_up()
        }
    }

    fn value_start(&mut self) -> Result<usize> {
        self.peek()?;
        Ok(self.i)
    }

    fn is_string(&mut self) -> Result<bool> {
        Ok(self.peek()? == b'"')
    }

    fn is_null(&mut self) -> Result<bool> {
        Ok(self.peek()? == b'n')
    }

    fn is_object(&mut self) -> Result<bool> {
        Ok(self.peek()? == b'{')
    }

    fn usage_count(&mut self, _unusable: &mut bool) -> Result<Option<u64>> {
        // Plain digits or null; anything else is left to the walk, which reads it exactly.
        self.opt_u64()
    }

    fn skip(&mut self) -> Result<()> {
        self.skip_depth(0)
    }

    fn object(&mut self, names: &[&str]) -> Result<Option<Key>> {
        match self.peek()? {
            b'n' => self.literal(b"null").map(|()| None),
            b'{' => {
                self.i += 1;
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Ok(Some(None));
                }
                self.key(names).map(Some)
            }
            _ => give_up(),
        }
    }

    fn next_key(&mut self, names: &[&str]) -> Result<Key> {
        match self.peek()? {
            b',' => {
                self.i += 1;
                self.ws();
                self.key(names)
            }
            b'}' => {
                self.i += 1;
                Ok(None)
            }
            _ => give_up(),
        }
    }

    fn array(&mut self) -> Result<bool> {
        match self.peek()? {
            b'n' => self.literal(b"null").map(|()| false),
            b'[' => {
                self.i += 1;
                if self.peek()? == b']' {
                    self.i += 1;
                    return Ok(false);
                }
                Ok(true)
            }
            _ => give_up(),
        }
    }

    fn array_step(&mut self) -> Result<bool> {
        match self.peek()? {
            b',' => {
                self.i += 1;
                Ok(true)
            }
            b']' => {
                self.i += 1;
                Ok(false)
            }
            _ => give_up(),
        }
    }

    fn opt_str(&mut self) -> Result<Option<Cow<'j, str>>> {
        match self.peek()? {
            b'n' => self.literal(b"null").map(|()| None),
            b'"' => {
                let s = self.string()?;
                let d: &'j [u8] = self.d;
                if s.escaped {
                    // Decoded exactly as the walk decodes it.
                    let quoted = &d[s.start..self.i];
                    match serde_json::from_slice::<String>(quoted) {
                        Ok(v) => Ok(Some(Cow::Owned(v))),
                        Err(_) => give_up(),
                    }
                } else {
                    let content = &d[s.start + 1..self.i - 1];
                    match std::str::from_utf8(content) {
                        Ok(v) => Ok(Some(Cow::Borrowed(v))),
                        Err(_) if s.high => give_up(),
                        Err(_) => give_up(),
                    }
                }
            }
            _ => give_up(),
        }
    }

    fn opt_u64(&mut self) -> Result<Option<u64>> {
        match self.peek()? {
            b'n' => self.literal(b"null").map(|()| None),
            b'0'..=b'9' => Ok(Some(self.int()? as u64)),
            _ => give_up(),
        }
    }

    fn opt_i64(&mut self) -> Result<Option<i64>> {
        match self.peek()? {
            b'n' => self.literal(b"null").map(|()| None),
            b'0'..=b'9' | b'-' => self.int().map(Some),
            _ => give_up(),
        }
    }

    fn loose_i64(&mut self) -> Result<Option<i64>> {
        match self.peek()? {
            // A plain integer; a fraction or exponent gives up (the walk truncates it).
            b'0'..=b'9' | b'-' => self.int().map(Some),
            _ => {
                self.skip()?;
                Ok(None)
            }
        }
    }

    fn opt_code(&mut self) -> Result<Option<String>> {
        match self.peek()? {
            b'n' | b'"' => self.opt_string(),
            _ => give_up(),
        }
    }

    fn index(&self) -> usize {
        self.i
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::json::{each_key, Walk};

    /// Everything the scanner reads, rendered, or `None` when it gives up.
    fn read<'j, W: Cursor<'j>>(mut w: W) -> Result<String> {
        let mut out = String::new();
        each_key(&mut w, &["s", "u", "i", "o"], |w, k| {
            match k {
                0 => out.push_str(&format!("{:?};", w.opt_str()?)),
                1 => out.push_str(&format!("{:?};", w.opt_u64()?)),
                2 => out.push_str(&format!("{:?};", w.opt_i64()?)),
                _ => {
                    each_key(w, &["x"], |w, _| {
                        out.push_str(&format!("x{:?};", w.opt_str()?));
                        Ok(())
                    })?;
                }
            }
            Ok(())
        })?;
        w.finish()?;
        Ok(out)
    }

    #[test]
    fn scan_agrees_with_the_walk_or_gives_up() {
        let cases: &[&[u8]] = &[
            br#"{"s":"plain","u":12,"i":-3,"o":{"x":"y","z":[1,2.5,-0.5e-3,true,false,null,{"a":[]}]}}"#,
            br#" { "s" : "esc\n\"\u00e9\/" , "zz" : "\ud83d\ude00" } "#,
            b"{\"s\":\"\xe6\x9d\xb1\xe4\xba\xac\"}",
            b"{\"s\":\"\xff\"}",
            b"{\"s\":\"a\x01\"}",
            br#"{"u":-1}"#,
            br#"{"u":1.0}"#,
            br#"{"u":01}"#,
            br#"{"i":-0}"#,
            br#"{"u":12345678901234567890123}"#,
            br#"{"z":01}"#,
            br#"{"z":1.}"#,
            br#"{"z":1e}"#,
            br#"{"z":-}"#,
            br#"{"z":[1,2}"#,
            br#"{"z":tru}"#,
            br#"{"z":"\q"}"#,
            br#"{"z":"\u12"}"#,
            br#"{"a" 1}"#,
            br#"{"a":1,}"#,
            br#"{"a":1} x"#,
            br#"{"\u0073":"via escape"}"#,
            br#"{"s":null,"o":null,"u":null}"#,
            br#"{}"#,
            br#"null"#,
            b"",
            b"{\"s\":\"unterminated",
            br#"{"z":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#,
            br#"{"s":"long string well past eight bytes, with \t escapes and more text after it"}"#,
        ];
        let mut scanned = 0;
        for data in cases {
            let walk = Walk::new(data).and_then(read);
            match read(Scan::new(data)) {
                Ok(v) => {
                    scanned += 1;
                    assert_eq!(Ok(v), walk, "{:?}", String::from_utf8_lossy(data));
                }
                Err(e) => assert!(e.is_empty(), "the scanner only gives up: {e}"),
            }
        }
        assert!(scanned >= 5, "the common shapes are scanned, not given up");
    }
}
