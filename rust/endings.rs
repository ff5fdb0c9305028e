//! Synthetic events that end a stream early in a format-correct way: a client
//! SDK sees the same end it would see if the model itself had stopped at its limit, or a
//! well-formed error event when the policy wants the client to know.

use crate::extract::{Format, StreamInfo};
use crate::sse::encode_event;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndingStyle {
    /// `finish_reason: "length"` / `stop_reason: "max_tokens"` / `response.incomplete`.
    Graceful,
    /// An error chunk / `event: error`.
    Error,
}

impl EndingStyle {
    pub fn from_name(name: &str) -> Option<EndingStyle> {
        match name {
            "graceful" | "graceful_close" => Some(EndingStyle::Graceful),
            "error" | "error_chunk" => Some(EndingStyle::Error),
            _ => None,
        }
    }
}

/// What the stream looked like when it was cut.
#[derive(Debug, Clone, Default)]
pub struct StreamSnapshot<'a> {
    pub info: Option<&'a StreamInfo<'a>>,
    /// Model to name when the stream never said (the configured model).
    pub fallback_model: Option<&'a str>,
    /// Choices that have produced output but no finish reason yet.
    pub open_choices: &'a [u32],
    /// Anthropic content block still open.
    pub open_block: Option<u32>,
    /// Whether Anthropic's `message_start` went out (an SDK needs it before `message_delta`).
    pub message_started: bool,
    /// The `response` object of the Responses `response.created` event, as JSON.
    pub response_template: Option<&'a str>,
    pub last_sequence_number: Option<u64>,
    /// Unix seconds, for `created` when the stream never said.
    pub now_unix: i64,
}

#[derive(Debug, Clone)]
pub struct EndingParams<'a> {
    pub style: EndingStyle,
    /// Error type for the error style, e.g. `rate_limit_error`, `api_error`.
    pub error_type: &'a str,
    /// Machine-readable code, e.g. `completion_tokens_exceeded`.
    pub code: &'a str,
    pub message: &'a str,
    /// (prompt tokens, completion tokens) to report, when known.
    pub usage: Option<(Option<u64>, u64)>,
}

fn usage_openai(prompt: Option<u64>, completion: u64) -> Value {
    let mut m = Map::new();
    if let Some(p) = prompt {
        m.insert("prompt_tokens".into(), p.into());
    }
    m.insert("completion_tokens".into(), completion.into());
    if let Some(p) = prompt {
        m.insert("total_tokens".into(), (p + completion).into());
    }
    Value::Object(m)
}

fn push_data(out: &mut Vec<u8>, event: Option<&str>, v: &Value) {
    // Serialising a Value cannot fail and our event names hold no line breaks.
    let data = serde_json::to_string(v).expect("JSON value serialises");
    encode_event(out, event, &data, None, None).expect("synthetic event fields are valid");
}

/// Bytes that end the stream. The caller forwards them after the last event it let through
/// and sends nothing from the upstream afterwards.
pub fn ending(format: Format, snap: &StreamSnapshot<'_>, p: &EndingParams<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let info = snap.info.cloned().unwrap_or_default();
    let model: String = info
        .model
        .as_deref()
        .or(snap.fallback_model)
        .unwrap_or("unknown")
        .to_owned();
    let id = |default: &str| info.id.as_deref().unwrap_or(default).to_owned();
    let created = info.created.unwrap_or(snap.now_unix);
    match format {
        Format::OpenAiChat | Format::OpenAiCompletions => {
            let chat = format == Format::OpenAiChat;
            match p.style {
                EndingStyle::Graceful => {
                    let choices: Vec<u32> = if snap.open_choices.is_empty() {
                        vec![0]
                    } else {
                        snap.open_choices.to_vec()
                    };
                    let choices: Vec<Value> = choices
                        .into_iter()
                        .map(|i| {
                            if chat {
                                json!({"index": i, "delta": {}, "logprobs": null, "finish_reason": "length"})
                            } else {
                                json!({"text": "", "index": i, "logprobs": null, "finish_reason": "length"})
                            }
                        })
                        .collect();
                    let mut chunk = Map::new();
                    let default_id = if chat {
                        "chatcmpl-meterkit"
                    } else {
                        "cmpl-meterkit"
                    };
                    chunk.insert("id".into(), id(default_id).into());
                    chunk.insert(
                        "object".into(),
                        (if chat {
                            "chat.completion.chunk"
                        } else {
                            "text_completion"
                        })
                        .into(),
                    );
                    chunk.insert("created".into(), created.into());
                    chunk.insert("model".into(), model.into());
                    if let Some(fp) = &info.system_fingerprint {
                        chunk.insert("system_fingerprint".into(), fp.to_string().into());
                    }
                    chunk.insert("choices".into(), Value::Array(choices));
                    if let Some((prompt, completion)) = p.usage {
                        chunk.insert("usage".into(), usage_openai(prompt, completion));
                    }
                    push_data(&mut out, None, &Value::Object(chunk));
                }
                EndingStyle::Error => {
                    let mut v = json!({"error": {"message": p.message, "type": p.error_type, "code": p.code}});
                    if let Some((prompt, completion)) = p.usage {
                        v["usage"] = usage_openai(prompt, completion);
                    }
                    push_data(&mut out, None, &v);
                }
            }
            encode_event(&mut out, None, "[DONE]", None, None).expect("valid");
        }
        Format::Anthropic => match p.style {
            EndingStyle::Graceful => {
                if let Some(i) = snap.open_block {
                    push_data(
                        &mut out,
                        Some("content_block_stop"),
                        &json!({"type": "content_block_stop", "index": i}),
                    );
                }
                let output = p.usage.map(|(_, c)| c).unwrap_or(0);
                push_data(
                    &mut out,
                    Some("message_delta"),
                    &json!({"type": "message_delta",
                            "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
                            "usage": {"output_tokens": output}}),
                );
                push_data(
                    &mut out,
                    Some("message_stop"),
                    &json!({"type": "message_stop"}),
                );
            }
            EndingStyle::Error => push_data(
                &mut out,
                Some("error"),
                &json!({"type": "error", "error": {"type": p.error_type, "message": p.message}}),
            ),
        },
        Format::OpenAiResponses => {
            let seq = snap.last_sequence_number.map(|n| n + 1);
            match p.style {
                EndingStyle::Graceful => {
                    let mut resp = snap
                        .response_template
                        .and_then(|t| serde_json::from_str::<Value>(t).ok())
                        .filter(Value::is_object)
                        .unwrap_or_else(|| {
                            json!({"id": id("resp_meterkit"),
                                   "object": "response", "created_at": created, "model": model,
                                   "output": []})
                        });
                    resp["status"] = "incomplete".into();
                    resp["incomplete_details"] = json!({"reason": "max_output_tokens"});
                    if let Some((prompt, completion)) = p.usage {
                        let mut u = Map::new();
                        if let Some(pt) = prompt {
                            u.insert("input_tokens".into(), pt.into());
                        }
                        u.insert("output_tokens".into(), completion.into());
                        if let Some(pt) = prompt {
                            u.insert("total_tokens".into(), (pt + completion).into());
                        }
                        resp["usage"] = Value::Object(u);
                    }
                    let mut ev = json!({"type": "response.incomplete", "response": resp});
                    if let Some(s) = seq {
                        ev["sequence_number"] = s.into();
                    }
                    push_data(&mut out, Some("response.incomplete"), &ev);
                }
                EndingStyle::Error => {
                    let mut ev = json!({"type": "error", "code": p.code, "message": p.message, "param": null});
                    if let Some(s) = seq {
                        ev["sequence_number"] = s.into();
                    }
                    push_data(&mut out, Some("error"), &ev);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::{extract, EventKind};
    use crate::sse::SseDecoder;

    fn params(style: EndingStyle) -> EndingParams<'static> {
        EndingParams {
            style,
            error_type: "rate_limit_error",
            code: "completion_tokens_exceeded",
            message: "limit reached",
            usage: Some((Some(5), 7)),
        }
    }

    /// Every ending parses back with our own extractor into the expected end.
    #[test]
    fn endings_parse_back() {
        let info = StreamInfo {
            id: Some("chatcmpl-9".into()),
            model: Some("gpt-4o".into()),
            created: Some(11),
            system_fingerprint: Some("fp".into()),
        };
        for format in Format::ALL {
            for style in [EndingStyle::Graceful, EndingStyle::Error] {
                let snap = StreamSnapshot {
                    info: Some(&info),
                    open_choices: &[0, 1],
                    open_block: Some(2),
                    message_started: true,
                    last_sequence_number: Some(41),
                    ..StreamSnapshot::default()
                };
                let bytes = ending(format, &snap, &params(style));
                let events = SseDecoder::default().feed_owned(&bytes).unwrap();
                let parsed: Vec<_> = events
                    .iter()
                    .map(|e| {
                        let et = if e.event == "message" {
                            ""
                        } else {
                            e.event.as_str()
                        };
                        extract(format, et.as_bytes(), e.data.as_bytes()).unwrap()
                    })
                    .collect();
                let last = parsed.last().unwrap();
                match (format, style) {
                    (Format::OpenAiChat | Format::OpenAiCompletions, EndingStyle::Graceful) => {
                        assert_eq!(parsed[0].finishes.len(), 2);
                        assert_eq!(parsed[0].finishes[1], (1, "length".into()));
                        assert_eq!(parsed[0].usage.unwrap().output_tokens, Some(7));
                        assert_eq!(
                            parsed[0].info.as_ref().unwrap().id.as_deref(),
                            Some("chatcmpl-9")
                        );
                        assert_eq!(last.kind, EventKind::Done);
                    }
                    (Format::OpenAiChat | Format::OpenAiCompletions, EndingStyle::Error) => {
                        assert_eq!(parsed[0].kind, EventKind::Error);
                        assert_eq!(
                            parsed[0].error.as_ref().unwrap().code.as_deref(),
                            Some("completion_tokens_exceeded")
                        );
                        assert_eq!(last.kind, EventKind::Done);
                    }
                    (Format::Anthropic, EndingStyle::Graceful) => {
                        assert_eq!(parsed[0].block_closed, Some(2));
                        assert_eq!(parsed[1].finishes[0].1, "max_tokens");
                        assert_eq!(parsed[1].usage.unwrap().output_tokens, Some(7));
                        assert_eq!(last.kind, EventKind::Done);
                    }
                    (Format::Anthropic, EndingStyle::Error) => {
                        assert_eq!(last.kind, EventKind::Error);
                        assert_eq!(last.error.as_ref().unwrap().kind, "rate_limit_error");
                    }
                    (Format::OpenAiResponses, EndingStyle::Graceful) => {
                        assert_eq!(last.kind, EventKind::Done);
                        assert_eq!(last.finishes[0].1, "max_output_tokens");
                        assert_eq!(last.sequence_number, Some(42));
                    }
                    (Format::OpenAiResponses, EndingStyle::Error) => {
                        assert_eq!(last.kind, EventKind::Error);
                        assert_eq!(last.sequence_number, Some(42));
                    }
                }
            }
        }
    }

    #[test]
    fn responses_ending_reuses_created_template() {
        let tmpl = r#"{"id":"resp_7","object":"response","created_at":5,"model":"gpt-4o","status":"in_progress","output":[],"tools":[],"usage":null}"#;
        let snap = StreamSnapshot {
            response_template: Some(tmpl),
            ..StreamSnapshot::default()
        };
        let bytes = ending(
            Format::OpenAiResponses,
            &snap,
            &params(EndingStyle::Graceful),
        );
        let ev = SseDecoder::default().feed_owned(&bytes).unwrap();
        let v: Value = serde_json::from_str(&ev[0].data).unwrap();
        assert_eq!(v["response"]["id"], "resp_7");
        assert_eq!(v["response"]["tools"], json!([]));
        assert_eq!(v["response"]["status"], "incomplete");
        assert_eq!(v["response"]["usage"]["total_tokens"], 12);
    }
}
