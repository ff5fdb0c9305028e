//! Anthropic Messages events (`event: <type>` + `data: {"type": <type>, ...}`).
//! Usage: `message_start.message.usage` (input and cache fields, a first output figure),
//! then `message_delta.usage.output_tokens`, which is cumulative.

use super::{Channel, EventKind, Extracted, RawError, RawUsage, StreamInfo, Text};
use serde::Deserialize;

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow, rename = "type")]
    kind: Text<'a>,
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    content_block: Option<Block<'a>>,
    #[serde(borrow, default)]
    message: Option<Message<'a>>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(borrow, default)]
    error: Option<RawError<'a>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Text<'a>>,
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
    #[serde(borrow, default)]
    partial_json: Option<Text<'a>>,
    #[serde(borrow, default)]
    thinking: Option<Text<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
    #[serde(borrow, default)]
    thinking: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    id: Option<Text<'a>>,
    #[serde(borrow, default)]
    model: Option<Text<'a>>,
    #[serde(default)]
    usage: Option<RawUsage>,
}

pub fn extract<'a>(event_type: &[u8], data: &'a [u8]) -> Result<Extracted<'a>, String> {
    let ev: Event<'a> = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    // The `type` in the data is authoritative; the `event:` line normally repeats it.
    let kind = ev.kind.0.as_ref();
    if !event_type.is_empty() && event_type != kind.as_bytes() && event_type != b"message" {
        return Err(format!(
            "event type {:?} disagrees with data type {kind:?}",
            String::from_utf8_lossy(event_type)
        ));
    }
    let index = ev.index.unwrap_or(0);
    let mut out = Extracted::new(EventKind::Data);
    match kind {
        "message_start" => {
            if let Some(msg) = ev.message {
                out.info = Some(StreamInfo {
                    id: msg.id.map(Text::into_string),
                    model: msg.model.map(Text::into_string),
                    ..StreamInfo::default()
                });
                out.usage = msg.usage.map(Into::into);
            }
        }
        "content_block_start" => {
            out.block_opened = Some(index);
            if let Some(block) = ev.content_block {
                // A block may start with text already in it.
                if let Some(t) = block.text {
                    out.delta(0, index, Channel::Content, t.0);
                }
                if let Some(t) = block.thinking {
                    out.delta(0, index, Channel::Reasoning, t.0);
                }
            }
        }
        "content_block_delta" => {
            if let Some(d) = ev.delta {
                match d.kind.as_ref().map(|k| k.0.as_ref()) {
                    Some("text_delta") => {
                        if let Some(t) = d.text {
                            out.delta(0, index, Channel::Content, t.0);
                        }
                    }
                    Some("input_json_delta") => {
                        if let Some(t) = d.partial_json {
                            out.delta(0, index, Channel::ToolArguments, t.0);
                        }
                    }
                    Some("thinking_delta") => {
                        if let Some(t) = d.thinking {
                            out.delta(0, index, Channel::Reasoning, t.0);
                        }
                    }
                    // signature_delta and future kinds carry no billed text.
                    _ => out.kind = EventKind::Other,
                }
            }
        }
        "content_block_stop" => out.block_closed = Some(index),
        "message_delta" => {
            if let Some(reason) = ev.delta.and_then(|d| d.stop_reason) {
                out.finishes.push((0, reason.into_string()));
            }
            out.usage = ev.usage.map(Into::into);
        }
        "message_stop" => out.kind = EventKind::Done,
        "ping" => out.kind = EventKind::Ping,
        "error" => {
            out.kind = EventKind::Error;
            out.error = Some(ev.error.map(Into::into).unwrap_or_else(|| super::StreamError {
                kind: "error".into(),
                message: String::new(),
                code: None,
            }));
        }
        _ => out.kind = EventKind::Other,
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_stream_shapes() {
        let e = extract(b"message_start", br#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"usage":{"input_tokens":25,"cache_read_input_tokens":3,"output_tokens":1}}}"#).unwrap();
        let u = e.usage.unwrap();
        assert_eq!((u.input_tokens, u.output_tokens, u.cached_input_tokens), (Some(25), Some(1), Some(3)));
        assert_eq!(e.info.unwrap().id.as_deref(), Some("msg_1"));

        let e = extract(b"content_block_start", br#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#).unwrap();
        assert_eq!(e.block_opened, Some(1));
        assert!(e.deltas.is_empty());

        let e = extract(b"content_block_delta", br#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hello"}}"#).unwrap();
        assert_eq!((e.deltas[0].part, e.deltas[0].text.as_ref()), (1, "Hello"));

        let e = extract(b"content_block_delta", br#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"x\": 1"}}"#).unwrap();
        assert_eq!((e.deltas[0].channel, e.deltas[0].text.as_ref()), (Channel::ToolArguments, "{\"x\": 1"));

        let e = extract(b"content_block_delta", br#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#).unwrap();
        assert_eq!(e.deltas[0].channel, Channel::Reasoning);

        let e = extract(b"content_block_delta", br#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"abc"}}"#).unwrap();
        assert!(e.deltas.is_empty());

        let e = extract(b"message_delta", br#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#).unwrap();
        assert_eq!(e.finishes[0].1, "end_turn");
        assert_eq!(e.usage.unwrap().output_tokens, Some(15));

        assert_eq!(extract(b"message_stop", br#"{"type":"message_stop"}"#).unwrap().kind, EventKind::Done);
        assert_eq!(extract(b"ping", br#"{"type": "ping"}"#).unwrap().kind, EventKind::Ping);

        let e = extract(b"error", br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#).unwrap();
        assert_eq!(e.kind, EventKind::Error);
        assert_eq!(e.error.unwrap().kind, "overloaded_error");
    }

    #[test]
    fn mismatched_or_malformed() {
        assert!(extract(b"ping", br#"{"type":"message_stop"}"#).is_err());
        assert!(extract(b"ping", br#"{"no_type":1}"#).is_err());
        assert!(extract(b"ping", b"{").is_err());
    }
}
