//! OpenAI Chat Completions and legacy Completions chunks (`data: {json}` / `data: [DONE]`).
//! Both share one chunk shape: chat text is in `choices[i].delta`, legacy text in
//! `choices[i].text`.

use super::{Channel, EventKind, Extracted, RawError, RawUsage, StreamInfo, Text};
use serde::Deserialize;

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    id: Option<Text<'a>>,
    #[serde(borrow, default)]
    model: Option<Text<'a>>,
    #[serde(default)]
    created: Option<i64>,
    #[serde(borrow, default)]
    system_fingerprint: Option<Text<'a>>,
    #[serde(borrow, default)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(borrow, default)]
    error: Option<RawError<'a>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: u32,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    /// Legacy completions text.
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<Text<'a>>,
    #[serde(borrow, default)]
    refusal: Option<Text<'a>>,
    /// Reasoning text as some compatible servers stream it (DeepSeek, vLLM, OpenRouter).
    #[serde(borrow, default)]
    reasoning_content: Option<Text<'a>>,
    #[serde(borrow, default)]
    reasoning: Option<Text<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
    /// The pre-tools `function_call` delta of older models.
    #[serde(borrow, default)]
    function_call: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(default)]
    index: u32,
    #[serde(borrow, default)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(borrow, default)]
    arguments: Option<Text<'a>>,
}

pub fn extract(data: &[u8]) -> Result<Extracted<'_>, String> {
    if data.trim_ascii() == b"[DONE]" {
        return Ok(Extracted::new(EventKind::Done));
    }
    let chunk: Chunk<'_> = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let mut out = Extracted::new(EventKind::Data);
    if let Some(err) = chunk.error {
        out.kind = EventKind::Error;
        out.error = Some(err.into());
    }
    if chunk.id.is_some() || chunk.model.is_some() {
        out.info = Some(StreamInfo {
            id: chunk.id.map(Text::into_string),
            model: chunk.model.map(Text::into_string),
            created: chunk.created,
            system_fingerprint: chunk.system_fingerprint.map(Text::into_string),
        });
    }
    for choice in chunk.choices.into_iter().flatten() {
        let i = choice.index;
        out.choices_seen.push(i);
        if let Some(text) = choice.text {
            out.delta(i, 0, Channel::Content, text.0);
        }
        if let Some(d) = choice.delta {
            if let Some(t) = d.content {
                out.delta(i, 0, Channel::Content, t.0);
            }
            if let Some(t) = d.refusal {
                out.delta(i, 0, Channel::Refusal, t.0);
            }
            if let Some(t) = d.reasoning_content.or(d.reasoning) {
                out.delta(i, 0, Channel::Reasoning, t.0);
            }
            for call in d.tool_calls.into_iter().flatten() {
                if let Some(args) = call.function.and_then(|f| f.arguments) {
                    out.delta(i, call.index, Channel::ToolArguments, args.0);
                }
            }
            if let Some(args) = d.function_call.and_then(|f| f.arguments) {
                out.delta(i, 0, Channel::ToolArguments, args.0);
            }
        }
        if let Some(reason) = choice.finish_reason {
            out.finishes.push((i, reason.into_string()));
        }
    }
    if let Some(u) = chunk.usage {
        out.usage = Some(u.into());
    }
    Ok(out)
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
        assert_eq!((info.id.as_deref(), info.created), (Some("chatcmpl-1"), Some(7)));
    }

    #[test]
    fn tool_calls_reasoning_and_several_choices() {
        let e = extract(
            br#"{"choices":[{"index":1,"delta":{"tool_calls":[{"index":2,"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\":"}}]}},{"index":0,"delta":{"reasoning_content":"think"},"finish_reason":"stop"}]}"#,
        )
        .unwrap();
        let d: Vec<_> = e.deltas.iter().map(|d| (d.choice, d.part, d.channel, d.text.as_ref())).collect();
        assert_eq!(
            d,
            [(1, 2, Channel::ToolArguments, "{\"a\":"), (0, 0, Channel::Reasoning, "think")]
        );
        assert_eq!(e.finishes.as_slice(), [(0, "stop".to_string())]);
    }

    #[test]
    fn usage_chunk_done_and_error() {
        let e = extract(br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#).unwrap();
        assert_eq!(e.usage.unwrap().output_tokens, Some(4));
        assert_eq!(extract(b"[DONE]").unwrap().kind, EventKind::Done);
        let e = extract(br#"{"error":{"message":"boom","type":"server_error","code":500}}"#).unwrap();
        assert_eq!(e.kind, EventKind::Error);
        let err = e.error.unwrap();
        assert_eq!((err.kind.as_str(), err.message.as_str(), err.code.as_deref()), ("server_error", "boom", Some("500")));
        assert_eq!(Usage::default(), Usage::default());
    }

    #[test]
    fn legacy_completions_text() {
        let e = extract(br#"{"object":"text_completion","choices":[{"text":" world","index":0,"logprobs":null,"finish_reason":"length"}]}"#).unwrap();
        assert_eq!(e.deltas[0].text, " world");
        assert_eq!(e.finishes[0].1, "length");
    }

    #[test]
    fn malformed_is_an_error_not_a_panic() {
        assert!(extract(b"{\"choices\":[{\"index\":\"x\"}]}").is_err());
        assert!(extract(b"{not json").is_err());
        assert!(extract(b"").is_err());
    }
}
