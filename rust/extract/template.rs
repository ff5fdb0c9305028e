//! Repeated-shape extraction: most events of a stream are the same bytes around a different
//! delta string (and, in Responses, a different `sequence_number`). A [`Template`] learned
//! from one fully extracted event reads the next ones by comparing their bytes with the
//! learned ones and validating only what differs.
//!
//! Why the result is the one [`extract`](super::extract) gives: the learned event was valid
//! JSON and the walk read it as one delta at a known string. A new event that has the same
//! bytes before that string (the prefix, up to and including its opening quote) brings every
//! parser to the same state at the same key; its string is checked as the walk checks it (no
//! raw control character or quote, valid escapes, decoded by serde_json, UTF-8); the same
//! bytes after it (the suffix, from the closing quote) then parse the same way to the end.
//! So the walk would read the same keys and values, differing only in the delta text (and the
//! sequence number, itself validated as the scanner validates integers). Anything else, an
//! empty delta included, is left to the full extraction.
//!
//! The one field a template does not fill is `info` (the stream's id and model): the meter
//! uses a template only once it holds the stream's identity, after which it ignores `info`.
//!
//! Performance notes: see `rust/meter/mod.rs` (the figures of the whole pipeline).

use super::json::Cursor;
use super::scan::Scan;
use super::{Channel, EventKind, Extracted};
use smallvec::SmallVec;
use std::borrow::Cow;

#[derive(Debug, Clone)]
pub struct Template {
    event: Vec<u8>,
    prefix: Vec<u8>,
    suffix: Vec<u8>,
    /// Where the `sequence_number` digits sit in `prefix`, when the event has one.
    seq: Option<(usize, usize)>,
    choice: u32,
    part: u32,
    channel: Channel,
    choices_seen: SmallVec<[u32; 1]>,
    /// The learned event carried stream identity, which `apply` does not return.
    has_info: bool,
    /// A `"usage": null` member (OpenAI chunks when usage was asked for): its span, counted
    /// from the start when it lies in the prefix, from the end when in the suffix.
    usage_member: Option<UsageSpan>,
    valid: bool,
}

impl Default for Template {
    fn default() -> Self {
        Template {
            event: Vec::new(),
            prefix: Vec::new(),
            suffix: Vec::new(),
            seq: None,
            choice: 0,
            part: 0,
            channel: Channel::Content,
            choices_seen: SmallVec::new(),
            has_info: false,
            usage_member: None,
            valid: false,
        }
    }
}

impl Template {
    /// Learn the shape of `data` from its full extraction `ex`, when it is a plain delta
    /// event with an unescaped delta; otherwise keep the shape learned before (a ping or a
    /// finish chunk between deltas does not end it). Buffers are reused.
    pub fn learn(&mut self, event: &[u8], data: &[u8], ex: &Extracted<'_>) {
        let plain = ex.kind == EventKind::Data
            && ex.deltas.len() == 1
            && ex.finishes.is_empty()
            && ex.usage.is_none()
            && ex.error.is_none()
            && ex.block_opened.is_none()
            && ex.block_closed.is_none()
            && !ex.usage_only
            && !ex.unusable;
        if !plain {
            return;
        }
        let d = &ex.deltas[0];
        // Only a borrowed delta is a slice of `data`, between its two quotes.
        let Cow::Borrowed(text) = &d.text else {
            return;
        };
        let start = (text.as_ptr() as usize).wrapping_sub(data.as_ptr() as usize);
        let end = start + text.len();
        if start == 0 || end >= data.len() || data[start - 1] != b'"' || data[end] != b'"' {
            return;
        }
        let usage_member = match ex.usage_member {
            None => None,
            Some((s, e)) if e <= start && ex.sequence_number.is_none() => {
                Some(UsageSpan::FromStart(s, e))
            }
            Some((s, e)) if s >= end => Some(UsageSpan::FromEnd(data.len() - s, data.len() - e)),
            Some(_) => return,
        };
        let seq = match ex.sequence_number {
            None => None,
            Some(n) => match sequence_span(data) {
                Some((s, e)) if e < start => {
                    if parse_int(&data[s..e]) != Some(n) {
                        return;
                    }
                    Some((s, e))
                }
                _ => return,
            },
        };
        self.event.clear();
        self.event.extend_from_slice(event);
        self.prefix.clear();
        self.prefix.extend_from_slice(&data[..start]);
        self.suffix.clear();
        self.suffix.extend_from_slice(&data[end..]);
        self.seq = seq;
        self.choice = d.choice;
        self.part = d.part;
        self.channel = d.channel;
        self.choices_seen = ex.choices_seen.clone();
        self.has_info = ex.info.is_some();
        self.usage_member = usage_member;
        self.valid = true;
    }

    /// Whether the full extraction of a matching event would also carry `info`.
    pub fn drops_info(&self) -> bool {
        self.has_info
    }

    /// The extraction of `data` when it has the learned shape (`info` left empty), else
    /// `None`.
    pub fn apply<'a>(&self, event: &[u8], data: &'a [u8]) -> Option<Extracted<'a>> {
        let d = self.read(event, data)?;
        let mut out = Extracted::new(EventKind::Data);
        out.choices_seen = self.choices_seen.clone();
        out.sequence_number = d.sequence_number;
        out.usage_member = self.usage_member.map(|u| match u {
            UsageSpan::FromStart(s, e) => (s, e),
            UsageSpan::FromEnd(s, e) => (data.len() - s, data.len() - e),
        });
        out.delta(d.choice, d.part, d.channel, d.text);
        Some(out)
    }

    /// What [`apply`](Self::apply) would return, without building an [`Extracted`]: the
    /// event is a plain delta event whose only other readings are [`Self::choices_seen`].
    #[inline]
    pub fn read<'a>(&self, event: &[u8], data: &'a [u8]) -> Option<TemplatedDelta<'a>> {
        if !self.valid
            || !same(event, &self.event)
            || data.len() < self.suffix.len()
            || !same(&data[data.len() - self.suffix.len()..], &self.suffix)
        {
            return None;
        }
        let mut sequence_number = None;
        let body_start = match self.seq {
            None => {
                if data.len() < self.prefix.len() || !same(&data[..self.prefix.len()], &self.prefix)
                {
                    return None;
                }
                self.prefix.len()
            }
            Some((s, e)) => {
                // Prefix before the digits, a valid integer, the rest of the prefix.
                if data.len() < s || !same(&data[..s], &self.prefix[..s]) {
                    return None;
                }
                let digits = data[s..].iter().take_while(|b| b.is_ascii_digit()).count();
                let n = parse_int(&data[s..s + digits])?;
                let rest = &self.prefix[e..];
                let after = s + digits;
                if data.len() < after + rest.len() || !same(&data[after..after + rest.len()], rest)
                {
                    return None;
                }
                sequence_number = Some(n);
                after + rest.len()
            }
        };
        let body_end = data.len() - self.suffix.len();
        if body_end <= body_start {
            return None;
        }
        let content = &data[body_start..body_end];
        let text = string_content(content, &data[body_start - 1..body_end + 1])?;
        Some(TemplatedDelta {
            choice: self.choice,
            part: self.part,
            channel: self.channel,
            text,
            sequence_number,
        })
    }

    /// Choice indexes the learned event named (OpenAI chat: its one choice).
    pub fn choices_seen(&self) -> &[u32] {
        &self.choices_seen
    }
}

#[derive(Debug, Clone, Copy)]
enum UsageSpan {
    FromStart(usize, usize),
    FromEnd(usize, usize),
}

/// One templated event's reading: a non-empty delta and the sequence number.
#[derive(Debug)]
pub struct TemplatedDelta<'a> {
    pub choice: u32,
    pub part: u32,
    pub channel: Channel,
    pub text: Cow<'a, str>,
    pub sequence_number: Option<u64>,
}

/// Byte equality without a call to libc's `memcmp`: an OR of XORs over eight-byte words,
/// which the compiler vectorises. Measured: `memcmp` of the ~240 prefix and suffix bytes of an
/// OpenAI chunk was 14-16% of a metered event (python.rs → on_event, perf), far more than
/// the comparison itself needs; this loop has no early exit, which the usual case (equal)
/// never takes anyway.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut acc = 0u64;
    let (wa, wb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in wa.remainder().iter().zip(wb.remainder()) {
        acc |= u64::from(x ^ y);
    }
    for (x, y) in wa.zip(wb) {
        let x = u64::from_le_bytes(x.try_into().expect("eight bytes"));
        let y = u64::from_le_bytes(y.try_into().expect("eight bytes"));
        acc |= x ^ y;
    }
    acc == 0
}

/// The delta string's value, validated as the walk validates it; `None` when it is not a
/// plain JSON string content (a raw quote would end the string early) or is empty.
fn string_content<'a>(content: &'a [u8], quoted: &'a [u8]) -> Option<Cow<'a, str>> {
    if memchr::memchr(b'\\', content).is_none() {
        // No escapes: any quote would be a raw one, ending the string early.
        if content.iter().any(|&b| b < 0x20 || b == b'"') {
            return None;
        }
        return std::str::from_utf8(content).ok().map(Cow::Borrowed);
    }
    // serde_json decodes as the walk does and refuses what it refuses; it also requires
    // `quoted` to be exactly one string, so a raw quote inside, or an escaped last quote,
    // is refused too.
    let s: String = serde_json::from_slice(quoted).ok()?;
    Some(Cow::Owned(s))
}

/// A JSON integer as the scanner accepts it: no sign, no leading zero, at most 18 digits.
fn parse_int(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')),
    )
}

/// Byte range of the top-level `sequence_number` value (exactly one such member, an
/// integer), found with the scanner.
fn sequence_span(data: &[u8]) -> Option<(usize, usize)> {
    let mut w = Scan::new(data);
    let mut found = None;
    let mut count = 0;
    super::json::each_key(&mut w, &["sequence_number"], |w, _| {
        count += 1;
        let s = w.value_start()?;
        w.opt_u64()?;
        found = Some((s, w.index()));
        Ok(())
    })
    .ok()?;
    (count == 1).then_some(found).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::{extract, Format};

    fn without_info(mut ex: Extracted<'_>) -> String {
        ex.info = None;
        format!("{ex:?}")
    }

    /// Every event of a stream is read by the template, when it applies, exactly as the
    /// full extraction reads it.
    fn agree(format: Format, events: &[(&str, String)]) -> usize {
        let mut t = Template::default();
        let mut used = 0;
        for (event, data) in events {
            let (event, data) = (event.as_bytes(), data.as_bytes());
            let full = extract(format, event, data);
            if let Some(ex) = t.apply(event, data) {
                used += 1;
                let full = full
                    .clone()
                    .expect("the template read an event the walk refuses");
                assert_eq!(
                    without_info(ex),
                    without_info(full),
                    "{}",
                    String::from_utf8_lossy(data)
                );
            }
            if let Ok(ex) = &full {
                t.learn(event, data, ex);
            }
        }
        used
    }

    const TEXTS: &[&str] = &[
        "Hello",
        " world",
        "",
        "\n",
        "say \"hi\"",
        "back\\slash",
        "東京",
        "🙂",
        "\u{1}",
        "tab\t",
        "\u{2028}",
        "a/b",
        "x",
        "end",
    ];

    #[test]
    fn openai_chunks() {
        let base = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"#;
        let mut ev: Vec<(&str, String)> = TEXTS
            .iter()
            .map(|t| {
                let j = serde_json::to_string(t).unwrap();
                ("", format!("{base}{j}}},\"finish_reason\":null}}]}}"))
            })
            .collect();
        // Shapes a template must not take: another key, a broken suffix, a raw quote, bad
        // UTF-8, an unknown escape, a lone surrogate, a finish reason.
        ev.push(("", format!("{base}\"a\"}},\"finish_reason\":\"stop\"}}]}}")));
        ev.push(("", format!("{base}\"a\"}},\"finish_reason\":null}}]")));
        ev.push(("", format!("{base}\"a\"b\"}},\"finish_reason\":null}}]}}")));
        ev.push(("", format!("{base}\"a\\q\"}},\"finish_reason\":null}}]}}")));
        ev.push((
            "",
            format!("{base}\"\\ud800\"}},\"finish_reason\":null}}]}}"),
        ));
        ev.push(("", format!("{base}\"ok\"}},\"finish_reason\":null}}]}}")));
        ev.push(("", format!("{base}\"a\\\"}},\"finish_reason\":null}}]}}")));
        ev.push(("", format!("{base}\"after\"}},\"finish_reason\":null}}]}}")));
        assert!(agree(Format::OpenAiChat, &ev) >= 10);
        // With `"usage": null` (usage asked for), after the choices and before them.
        let with_usage: Vec<(&str, String)> = TEXTS
            .iter()
            .map(|t| {
                let j = serde_json::to_string(t).unwrap();
                (
                    "",
                    format!("{base}{j}}},\"finish_reason\":null}}],\"usage\":null}}"),
                )
            })
            .collect();
        assert!(agree(Format::OpenAiChat, &with_usage) >= 10);
        let first = r#"{"usage":null,"id":"c","choices":[{"index":0,"delta":{"content":"#;
        let usage_first: Vec<(&str, String)> = TEXTS
            .iter()
            .map(|t| {
                let j = serde_json::to_string(t).unwrap();
                ("", format!("{first}{j}}}}}]}}"))
            })
            .collect();
        assert!(agree(Format::OpenAiChat, &usage_first) >= 10);
        // Invalid UTF-8 cannot be built from `&str` events: check it directly.
        let mut t = Template::default();
        let good = format!("{base}\"a\"}},\"finish_reason\":null}}]}}");
        t.learn(
            b"",
            good.as_bytes(),
            &extract(Format::OpenAiChat, b"", good.as_bytes()).unwrap(),
        );
        let mut bad = format!("{base}\"").into_bytes();
        bad.push(0xff);
        bad.extend_from_slice(b"\"},\"finish_reason\":null}]}");
        assert!(t.apply(b"", &bad).is_none());
        assert!(extract(Format::OpenAiChat, b"", &bad).is_err());
    }

    #[test]
    fn anthropic_and_responses_events() {
        let ev: Vec<(&str, String)> = TEXTS
            .iter()
            .map(|t| {
                let j = serde_json::to_string(t).unwrap();
                ("content_block_delta", format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{j}}}}}"#))
            })
            .chain(std::iter::once(("ping", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}"#.to_string())))
            .collect();
        let n = agree(Format::Anthropic, &ev);
        assert!(n >= 10, "{n}");
        let mut ev: Vec<(&str, String)> = Vec::new();
        for (i, t) in TEXTS.iter().enumerate() {
            let j = serde_json::to_string(t).unwrap();
            let seq = if i == 5 {
                "05".to_string()
            } else {
                (i * 97).to_string()
            };
            ev.push(("response.output_text.delta", format!(r#"{{"type":"response.output_text.delta","sequence_number":{seq},"item_id":"msg_1","output_index":0,"content_index":0,"delta":{j},"logprobs":[]}}"#)));
        }
        assert!(agree(Format::OpenAiResponses, &ev) >= 8);
    }
}
