//! OpenAI Responses API events (`event: response.*` + `data: {"type": ..., ...}`).
//! Billed text arrives in typed `*.delta` events; usage only in the terminal
//! `response.completed` / `response.incomplete` / `response.failed` event.

use super::json::{each_key, Cursor, Result, Walk};
use super::scan::Scan;
use super::{
    parse_error, parse_usage, typed_event, Channel, EventKind, Extracted, StreamError, StreamInfo,
};
use std::borrow::Cow;

const TOP: &[&str] = &[
    "type",
    "sequence_number",
    "output_index",
    "content_index",
    "summary_index",
    "delta",
    "response",
    "code",
    "message",
];
const RESPONSE: &[&str] = &[
    "id",
    "model",
    "created_at",
    "status",
    "usage",
    "incomplete_details",
    "error",
];
const INCOMPLETE: &[&str] = &["reason"];

#[derive(Default)]
struct Fields<'j> {
    kind: Option<Cow<'j, str>>,
    seq: Option<u64>,
    output_index: Option<u64>,
    part: Option<u64>,
    delta: Option<Cow<'j, str>>,
    response: Option<Response<'j>>,
    code: Option<String>,
    message: Option<String>,
}

#[derive(Default)]
struct Response<'j> {
    info: StreamInfo<'j>,
    status: Option<String>,
    usage: Option<super::Usage>,
    incomplete_reason: Option<String>,
    error: Option<StreamError>,
    unusable: bool,
}

fn response<'j, W: Cursor<'j>>(w: &mut W) -> Result<Option<Response<'j>>> {
    let mut r = Response::default();
    let present = each_key(w, RESPONSE, |w, k| {
        match k {
            0 => r.info.id = w.loose_str()?,
            1 => r.info.model = w.loose_str()?,
            2 => r.info.created = w.loose_i64()?,
            3 => r.status = w.loose_string()?,
            4 => r.usage = parse_usage(w, &mut r.unusable)?,
            5 => {
                each_key(w, INCOMPLETE, |w, _| {
                    r.incomplete_reason = w.loose_string()?;
                    Ok(())
                })?;
            }
            _ => r.error = parse_error(w)?,
        }
        Ok(())
    })?;
    Ok(present.then_some(r))
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

pub fn extract<'a>(event_type: &[u8], data: &'a [u8]) -> Result<Extracted<'a>> {
    // The scanner first; anything it does not take is read (or refused) by the jiter walk.
    match extract_with(Scan::new(data), event_type, data) {
        Ok(ex) => Ok(ex),
        Err(_) => extract_with(Walk::new(data)?, event_type, data),
    }
}

/// The jiter walk alone: the reference the scanner is tested and measured against.
pub fn extract_walk<'a>(event_type: &[u8], data: &'a [u8]) -> Result<Extracted<'a>> {
    extract_with(Walk::new(data)?, event_type, data)
}

fn extract_with<'a, W: Cursor<'a>>(
    mut w: W,
    event_type: &[u8],
    _data: &'a [u8],
) -> Result<Extracted<'a>> {
    let mut f = Fields::default();
    let is_object = each_key(&mut w, TOP, |w, k| {
        match k {
            0 => f.kind = w.opt_str()?,
            1 => f.seq = w.loose_u64()?,
            2 => f.output_index = w.loose_u64()?,
            3 | 4 => f.part = w.loose_u64()?,
            5 => {
                // `delta` is a string in text events; other event kinds may use objects.
                if w.is_string()? {
                    f.delta = w.opt_str()?;
                } else {
                    w.skip()?;
                }
            }
            6 => f.response = response(w)?,
            7 => f.code = w.opt_code()?,
            _ => {
                if w.is_string()? {
                    f.message = w.opt_string()?;
                } else {
                    w.skip()?;
                }
            }
        }
        Ok(())
    })?;
    w.finish()?;
    let kind = typed_event(is_object, f.kind, event_type)?;
    let kind = kind.as_ref();
    let mut out = Extracted::new(EventKind::Data);
    out.unusable = f.response.as_ref().is_some_and(|r| r.unusable);
    out.sequence_number = f.seq;
    if let Some(channel) = channel_of(kind) {
        if let Some(delta) = f.delta {
            let choice = f.output_index.unwrap_or(0) as u32;
            out.delta(choice, f.part.unwrap_or(0) as u32, channel, delta);
        }
        return Ok(out);
    }
    match kind {
        "response.created" | "response.in_progress" | "response.queued" => {
            if let Some(r) = f.response {
                out.info = Some(r.info);
            }
        }
        "response.completed" | "response.incomplete" | "response.failed" => {
            out.kind = EventKind::Done;
            if let Some(r) = f.response {
                out.usage = r.usage;
                let reason = r
                    .incomplete_reason
                    .or(r.status)
                    .unwrap_or_else(|| kind.trim_start_matches("response.").to_string());
                out.finishes.push((0, reason));
                out.error = r.error;
            }
        }
        "error" => {
            out.kind = EventKind::Error;
            out.error = Some(StreamError {
                kind: "error".into(),
                message: f.message.unwrap_or_default(),
                code: f.code,
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
        assert_eq!(
            (
                e.deltas[0].choice,
                e.deltas[0].channel,
                e.deltas[0].text.as_ref()
            ),
            (1, Channel::Content, "Hi")
        );
        assert_eq!(e.sequence_number, Some(4));
        let e = extract(b"response.function_call_arguments.delta", br#"{"type":"response.function_call_arguments.delta","output_index":2,"delta":"{\"q\""}"#).unwrap();
        assert_eq!(e.deltas[0].channel, Channel::ToolArguments);
        let e = extract(b"response.reasoning_summary_text.delta", br#"{"type":"response.reasoning_summary_text.delta","output_index":0,"summary_index":1,"delta":"so"}"#).unwrap();
        assert_eq!(
            (e.deltas[0].channel, e.deltas[0].part),
            (Channel::Reasoning, 1)
        );
    }

    #[test]
    fn lifecycle_and_usage() {
        let e = extract(b"response.created", br#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","created_at":1700000000,"model":"gpt-4o","status":"in_progress","usage":null}}"#).unwrap();
        let info = e.info.unwrap();
        assert_eq!(
            (info.id.as_deref(), info.created),
            (Some("resp_1"), Some(1700000000))
        );
        let e = extract(b"response.completed", br#"{"type":"response.completed","response":{"id":"resp_1","status":"completed","usage":{"input_tokens":5,"output_tokens":9,"total_tokens":14,"input_tokens_details":{"cached_tokens":0},"output_tokens_details":{"reasoning_tokens":3}}}}"#).unwrap();
        assert_eq!(e.kind, EventKind::Done);
        let u = e.usage.unwrap();
        assert_eq!((u.output_tokens, u.reasoning_tokens), (Some(9), Some(3)));
        assert_eq!(e.finishes[0].1, "completed");
        let e = extract(b"response.incomplete", br#"{"type":"response.incomplete","response":{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"}}}"#).unwrap();
        assert_eq!(e.finishes[0].1, "max_output_tokens");
        let e = extract(
            b"error",
            br#"{"type":"error","code":"server_error","message":"boom","param":null}"#,
        )
        .unwrap();
        assert_eq!(e.kind, EventKind::Error);
        assert_eq!(e.error.unwrap().code.as_deref(), Some("server_error"));
        assert_eq!(
            extract(
                b"response.output_item.added",
                br#"{"type":"response.output_item.added","output_index":0,"item":{}}"#
            )
            .unwrap()
            .kind,
            EventKind::Other
        );
    }
}
