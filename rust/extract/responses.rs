//! OpenAI Responses API events (`event: response.*` + `data: {"type": ..., ...}`).
//! Billed text arrives in typed `*.delta` events; usage only in the terminal
//! `response.completed` / `response.incomplete` / `response.failed` event.

use super::{Channel, EventKind, Extracted, RawError, RawUsage, StreamError, StreamInfo, Text};
use serde::Deserialize;

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow, rename = "type")]
    kind: Text<'a>,
    #[serde(default)]
    sequence_number: Option<u64>,
    #[serde(default)]
    output_index: Option<u32>,
    #[serde(default)]
    content_index: Option<u32>,
    #[serde(default)]
    summary_index: Option<u32>,
    #[serde(borrow, default)]
    delta: Option<Text<'a>>,
    #[serde(borrow, default)]
    response: Option<Response<'a>>,
    // Top-level fields of the `error` event.
    #[serde(borrow, default)]
    code: Option<Text<'a>>,
    #[serde(borrow, default)]
    message: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow, default)]
    id: Option<Text<'a>>,
    #[serde(borrow, default)]
    model: Option<Text<'a>>,
    #[serde(default)]
    created_at: Option<i64>,
    #[serde(borrow, default)]
    status: Option<Text<'a>>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(borrow, default)]
    incomplete_details: Option<Incomplete<'a>>,
    #[serde(borrow, default)]
    error: Option<RawError<'a>>,
}

#[derive(Deserialize)]
struct Incomplete<'a> {
    #[serde(borrow, default)]
    reason: Option<Text<'a>>,
}

fn channel_of(kind: &str) -> Option<Channel> {
    Some(match kind {
        "response.output_text.delta" => Channel::Content,
        "response.refusal.delta" => Channel::Refusal,
        "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
            Channel::Reasoning
        }
        "response.function_call_arguments.delta"
        | "response.custom_tool_call_input.delta"
        | "response.mcp_call_arguments.delta"
        | "response.code_interpreter_call_code.delta" => Channel::ToolArguments,
        _ => return None,
    })
}

pub fn extract<'a>(event_type: &[u8], data: &'a [u8]) -> Result<Extracted<'a>, String> {
    let ev: Event<'a> = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let kind = ev.kind.0.as_ref();
    if !event_type.is_empty() && event_type != kind.as_bytes() && event_type != b"message" {
        return Err(format!(
            "event type {:?} disagrees with data type {kind:?}",
            String::from_utf8_lossy(event_type)
        ));
    }
    let mut out = Extracted::new(EventKind::Data);
    out.sequence_number = ev.sequence_number;
    if let Some(channel) = channel_of(kind) {
        let part = ev.content_index.or(ev.summary_index).unwrap_or(0);
        if let Some(delta) = ev.delta {
            out.delta(ev.output_index.unwrap_or(0), part, channel, delta.0);
        }
        return Ok(out);
    }
    match kind {
        "response.created" | "response.in_progress" | "response.queued" => {
            if let Some(r) = ev.response {
                out.info = Some(StreamInfo {
                    id: r.id.map(Text::into_string),
                    model: r.model.map(Text::into_string),
                    created: r.created_at,
                    system_fingerprint: None,
                });
            }
        }
        "response.completed" | "response.incomplete" | "response.failed" => {
            out.kind = EventKind::Done;
            if let Some(r) = ev.response {
                out.usage = r.usage.map(Into::into);
                let reason = r
                    .incomplete_details
                    .and_then(|d| d.reason)
                    .or(r.status)
                    .map(Text::into_string)
                    .unwrap_or_else(|| kind.trim_start_matches("response.").to_string());
                out.finishes.push((0, reason));
                if let Some(err) = r.error {
                    out.error = Some(err.into());
                }
            }
        }
        "error" => {
            out.kind = EventKind::Error;
            out.error = Some(StreamError {
                kind: "error".into(),
                message: ev.message.map(Text::into_string).unwrap_or_default(),
                code: ev.code.map(Text::into_string),
            });
        }
        _ => out.kind = EventKind::Other,
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_of_each_kind() {
        let e = extract(b"response.output_text.delta", br#"{"type":"response.output_text.delta","item_id":"msg_1","output_index":1,"content_index":0,"delta":"Hi","sequence_number":4}"#).unwrap();
        assert_eq!((e.deltas[0].choice, e.deltas[0].channel, e.deltas[0].text.as_ref()), (1, Channel::Content, "Hi"));
        assert_eq!(e.sequence_number, Some(4));
        let e = extract(b"response.function_call_arguments.delta", br#"{"type":"response.function_call_arguments.delta","output_index":2,"delta":"{\"q\""}"#).unwrap();
        assert_eq!(e.deltas[0].channel, Channel::ToolArguments);
        let e = extract(b"response.reasoning_summary_text.delta", br#"{"type":"response.reasoning_summary_text.delta","output_index":0,"summary_index":1,"delta":"so"}"#).unwrap();
        assert_eq!((e.deltas[0].channel, e.deltas[0].part), (Channel::Reasoning, 1));
    }

    #[test]
    fn lifecycle_and_usage() {
        let e = extract(b"response.created", br#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","created_at":1700000000,"model":"gpt-4o","status":"in_progress","usage":null}}"#).unwrap();
        let info = e.info.unwrap();
        assert_eq!((info.id.as_deref(), info.created), (Some("resp_1"), Some(1700000000)));
        let e = extract(b"response.completed", br#"{"type":"response.completed","response":{"id":"resp_1","status":"completed","usage":{"input_tokens":5,"output_tokens":9,"total_tokens":14,"input_tokens_details":{"cached_tokens":0},"output_tokens_details":{"reasoning_tokens":3}}}}"#).unwrap();
        assert_eq!(e.kind, EventKind::Done);
        let u = e.usage.unwrap();
        assert_eq!((u.output_tokens, u.reasoning_tokens), (Some(9), Some(3)));
        assert_eq!(e.finishes[0].1, "completed");
        let e = extract(b"response.incomplete", br#"{"type":"response.incomplete","response":{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"}}}"#).unwrap();
        assert_eq!(e.finishes[0].1, "max_output_tokens");
        let e = extract(b"error", br#"{"type":"error","code":"server_error","message":"boom","param":null}"#).unwrap();
        assert_eq!(e.kind, EventKind::Error);
        assert_eq!(e.error.unwrap().code.as_deref(), Some("server_error"));
        assert_eq!(extract(b"response.output_item.added", br#"{"type":"response.output_item.added","output_index":0,"item":{}}"#).unwrap().kind, EventKind::Other);
    }
}
