//! OpenAI Chat Completions and legacy Completions chunks (`data: {json}` / `data: [DONE]`).
//! Both share one chunk shape: chat text is in `choices[i].delta`, legacy text in
//! `choices[i].text`.

use super::json::{each_item, each_key, each_member, Cursor, Result, Walk};
use super::scan::Scan;
use super::{parse_error, parse_usage, Channel, EventKind, Extracted, StreamInfo};

const TOP: &[&str] = &[
    "id",
    "model",
    "created",
    "system_fingerprint",
    "choices",
    "usage",
    "error",
];
const CHOICE: &[&str] = &["index", "delta", "text", "finish_reason"];
const DELTA: &[&str] = &[
    "content",
    "refusal",
    // Reasoning text as some compatible servers stream it (DeepSeek, vLLM, OpenRouter).
    "reasoning_content",
    "reasoning",
    "tool_calls",
    // The pre-tools `function_call` delta of older models.
    "function_call",
];
const TOOL_CALL: &[&str] = &["index", "function"];
const FUNCTION: &[&str] = &["arguments"];

pub fn extract(data: &[u8]) -> Result<Extracted<'_>> {
    if data.trim_ascii() == b"[DONE]" {
        return Ok(Extracted::new(EventKind::Data).with_kind(EventKind::Done));
    }
    // The scanner first; anything it does not take is read (or refused) by the jiter walk.
    match extract_with(Scan::new(data), data) {
        Ok(ex) => Ok(ex),
        Err(_) => extract_with(Walk::new(data)?, data),
    }
}

/// The jiter walk alone: the reference the scanner is tested and measured against.
pub fn extract_walk(data: &[u8]) -> Result<Extracted<'_>> {
    if data.trim_ascii() == b"[DONE]" {
        return Ok(Extracted::new(EventKind::Data).with_kind(EventKind::Done));
    }
    extract_with(Walk::new(data)?, data)
}

fn extract_with<'a, W: Cursor<'a>>(mut w: W, data: &'a [u8]) -> Result<Extracted<'a>> {
    let mut out = Extracted::new(EventKind::Data);
    let mut info = StreamInfo::default();
    let mut has_info = false;
    let mut choices = 0usize;
    let is_object = each_member(&mut w, TOP, |w, k, start| {
        match k {
            0 => {
                info.id = w.loose_str()?;
                has_info = true;
            }
            1 => {
                info.model = w.loose_str()?;
                has_info = true;
            }
            2 => info.created = w.loose_i64()?,
            3 => info.system_fingerprint = w.loose_str()?,
            4 => each_item(w, |w| {
                choices += 1;
                choice(w, &mut out)
            })?,
            5 => {
                out.usage = parse_usage(w, &mut out.unusable)?;
                out.usage_member = Some((start, w.index()));
            }
            _ => {
                if let Some(e) = parse_error(w)? {
                    out.kind = EventKind::Error;
                    out.error = Some(e);
                }
            }
        }
        Ok(())
    })?;
    if !is_object {
        return Err("expected a JSON object, found null".into());
    }
    w.finish()?;
    if has_info {
        out.info = Some(info);
    }
    out.usage_only = choices == 0 && out.usage.is_some();
    if let Some((start, end)) = out.usage_member {
        out.usage_member = Some(member_span(data, start, end));
    }
    Ok(out)
}

/// Widen `[start, end)` (a member's value end and where it began) to a range whose removal
/// leaves valid JSON: with its leading comma, or for a first member its trailing comma.
fn member_span(data: &[u8], start: usize, end: usize) -> (usize, usize) {
    let lead = data[start..]
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map(|i| start + i);
    if lead.is_some_and(|i| data[i] == b',') {
        return (start, end);
    }
    // First member: take the comma after it, if any.
    let mut e = end;
    while e < data.len() && data[e].is_ascii_whitespace() {
        e += 1;
    }
    if e < data.len() && data[e] == b',' {
        (start, e + 1)
    } else {
        (start, end)
    }
}

fn choice<'j, W: Cursor<'j>>(w: &mut W, out: &mut Extracted<'j>) -> Result<()> {
    let mut index = 0u32;
    let mut texts: smallvec::SmallVec<[(u32, Channel, std::borrow::Cow<'j, str>); 2]> =
        smallvec::SmallVec::new();
    let mut finish = None;
    let mut unusable = false;
    each_key(w, CHOICE, |w, k| {
        match k {
            0 => index = w.loose_u64()?.unwrap_or(0) as u32,
            1 => {
                each_key(w, DELTA, |w, k| {
                    match k {
                        0..=3 => {
                            let channel = match k {
                                0 => Channel::Content,
                                1 => Channel::Refusal,
                                _ => Channel::Reasoning,
                            };
                            if let Some(t) = w.billed_str(&mut unusable)? {
                                texts.push((0, channel, t));
                            }
                        }
                        4 => each_item(w, |w| {
                            let mut call = 0u32;
                            let mut args = None;
                            each_key(w, TOOL_CALL, |w, k| {
                                match k {
                                    0 => call = w.loose_u64()?.unwrap_or(0) as u32,
                                    _ => {
                                        each_key(w, FUNCTION, |w, _| {
                                            args = w.billed_str(&mut unusable)?;
                                            Ok(())
                                        })?;
                                    }
                                }
                                Ok(())
                            })?;
                            if let Some(a) = args {
                                texts.push((call, Channel::ToolArguments, a));
                            }
                            Ok(())
                        })?,
                        _ => {
                            each_key(w, FUNCTION, |w, _| {
                                if let Some(a) = w.billed_str(&mut unusable)? {
                                    texts.push((0, Channel::ToolArguments, a));
                                }
                                Ok(())
                            })?;
                        }
                    }
                    Ok(())
                })?;
            }
            2 => {
                if let Some(t) = w.billed_str(&mut unusable)? {
                    texts.push((0, Channel::Content, t));
                }
            }
            _ => finish = w.loose_string()?,
        }
        Ok(())
    })?;
    // `index` may come after the delta in the object, so deltas are attributed at the end.
    out.unusable |= unusable;
    out.choices_seen.push(index);
    for (part, channel, text) in texts {
        out.delta(index, part, channel, text);
    }
    if let Some(reason) = finish {
        out.finishes.push((index, reason));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::Usage;

    #[test]
    fn content_role_and_finish() {
        let e = extract(
            br#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}],"usage":null}"#,
        )
        .unwrap();
        assert_eq!(e.kind, EventKind::Data);
        assert_eq!(e.deltas.len(), 1);
        assert_eq!(e.deltas[0].text, "Hi");
        assert!(e.usage.is_none() && e.finishes.is_empty());
        let info = e.info.unwrap();
        assert_eq!(
            (info.id.as_deref(), info.created),
            (Some("chatcmpl-1"), Some(7))
        );
    }

    #[test]
    fn tool_calls_reasoning_and_several_choices() {
        let e = extract(
            br#"{"choices":[{"index":1,"delta":{"tool_calls":[{"index":2,"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\":"}}]}},{"index":0,"delta":{"reasoning_content":"think"},"finish_reason":"stop"}]}"#,
        )
        .unwrap();
        let d: Vec<_> = e
            .deltas
            .iter()
            .map(|d| (d.choice, d.part, d.channel, d.text.as_ref()))
            .collect();
        assert_eq!(
            d,
            [
                (1, 2, Channel::ToolArguments, "{\"a\":"),
                (0, 0, Channel::Reasoning, "think")
            ]
        );
        assert_eq!(e.finishes.as_slice(), [(0, "stop".to_string())]);
    }

    #[test]
    fn usage_chunk_done_and_error() {
        let e = extract(
            br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
        )
        .unwrap();
        assert_eq!(e.usage.unwrap().output_tokens, Some(4));
        assert_eq!(extract(b"[DONE]").unwrap().kind, EventKind::Done);
        let e =
            extract(br#"{"error":{"message":"boom","type":"server_error","code":500}}"#).unwrap();
        assert_eq!(e.kind, EventKind::Error);
        let err = e.error.unwrap();
        assert_eq!(
            (err.kind.as_str(), err.message.as_str(), err.code.as_deref()),
            ("server_error", "boom", Some("500"))
        );
        assert_eq!(Usage::default(), Usage::default());
    }

    #[test]
    fn legacy_completions_text() {
        let e = extract(br#"{"object":"text_completion","choices":[{"text":" world","index":0,"logprobs":null,"finish_reason":"length"}]}"#).unwrap();
        assert_eq!(e.deltas[0].text, " world");
        assert_eq!(e.finishes[0].1, "length");
    }

    /// Issue 19 #5: a usage or refusal of the wrong type once made the whole chunk
    /// malformed, so its content was forwarded and never counted.
    #[test]
    fn an_unusable_billed_field_is_ignored_and_the_content_still_read() {
        let bad_usage = [
            "[1]",
            "true",
            "-1",
            "\"x\"",
            r#"{"completion_tokens":1.5}"#,
            r#"{"completion_tokens":-1}"#,
            r#"{"completion_tokens":"3"}"#,
            r#"{"completion_tokens":99999999999999999999999}"#,
            r#"{"completion_tokens_details":[1]}"#,
            r#"{"prompt_tokens_details":{"cached_tokens":-2}}"#,
        ];
        for usage in bad_usage {
            let data = format!(
                r#"{{"choices":[{{"index":0,"delta":{{"content":"Hello"}}}}],"usage":{usage}}}"#
            );
            for e in [extract(data.as_bytes()), extract_walk(data.as_bytes())] {
                let e = e.unwrap_or_else(|m| panic!("{usage}: {m}"));
                assert_eq!(e.deltas.len(), 1, "{usage}");
                assert_eq!(e.deltas[0].text, "Hello");
                assert!(e.unusable, "{usage}");
                assert!(e.usage.is_none_or(|u| u.output_tokens.is_none()), "{usage}");
            }
        }
        for refusal in ["1", "true", "[\"no\"]", r#"{"a":1}"#] {
            let data = format!(
                r#"{{"choices":[{{"index":0,"delta":{{"content":"Hi","refusal":{refusal}}}}}]}}"#
            );
            let e = extract(data.as_bytes()).unwrap();
            assert_eq!(e.deltas.len(), 1, "{refusal}");
            assert!(e.unusable);
        }
        // A usable usage beside a usable delta is neither.
        let e = extract(
            br#"{"choices":[{"index":0,"delta":{"content":"Hi","refusal":null}}],"usage":{"completion_tokens":3}}"#,
        )
        .unwrap();
        assert!(!e.unusable && e.usage.unwrap().output_tokens == Some(3));
    }

    #[test]
    fn malformed_is_an_error_not_a_panic() {
        // A mistyped billed field is ignored and reported (issue 19 #5); a mistyped unbilled
        // one (`index`, issue 12 #7) is read as absent; broken JSON is an error.
        let e = extract(b"{\"choices\":[{\"delta\":{\"content\":5}}]}").unwrap();
        assert!(e.unusable && e.deltas.is_empty());
        let e =
            extract(b"{\"choices\":[{\"index\":\"x\",\"delta\":{\"content\":\"a\"}}]}").unwrap();
        assert_eq!((e.deltas[0].choice, &*e.deltas[0].text), (0, "a"));
        assert!(extract(b"{not json").is_err());
        assert!(extract(b"").is_err());
    }
}

#[cfg(test)]
mod usage_member_tests {
    use super::*;

    fn cut(data: &str) -> String {
        let e = extract(data.as_bytes()).unwrap();
        let (s, t) = e.usage_member.unwrap();
        format!("{}{}", &data[..s], &data[t..])
    }

    #[test]
    fn usage_member_is_cut_cleanly_wherever_it_sits() {
        assert_eq!(
            cut(r#"{"id":"a","choices":[],"usage":null}"#),
            r#"{"id":"a","choices":[]}"#
        );
        assert_eq!(cut(r#"{"usage":null,"id":"a"}"#), r#"{"id":"a"}"#);
        assert_eq!(
            cut(r#"{ "id" : "a" , "usage" : { "prompt_tokens" : 1 } }"#),
            r#"{ "id" : "a" }"#
        );
        assert_eq!(cut(r#"{"usage":null}"#), r#"{}"#);
        let e = extract(br#"{"choices":[],"usage":{"completion_tokens":3}}"#).unwrap();
        assert!(e.usage_only);
        let e = extract(br#"{"choices":[{"index":0,"delta":{}}],"usage":null}"#).unwrap();
        assert!(!e.usage_only);
    }
}
