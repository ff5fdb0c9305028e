//! Anthropic Messages events (`event: <type>` + `data: {"type": <type>, ...}`).
//! Usage: `message_start.message.usage` (input and cache fields, a first output figure),
//! then `message_delta.usage.output_tokens`, which is cumulative.

use super::json::{each_key, Cursor, Result, Walk};
use super::scan::Scan;
use super::{
    parse_error, parse_usage, typed_event, Channel, EventKind, Extracted, StreamError, StreamInfo,
    Usage,
};
use std::borrow::Cow;

const TOP: &[&str] = &[
    "type",
    "index",
    "delta",
    "content_block",
    "message",
    "usage",
    "error",
];
const DELTA: &[&str] = &["type", "text", "partial_json", "thinking", "stop_reason"];
const BLOCK: &[&str] = &["text", "thinking"];
const MESSAGE: &[&str] = &["id", "model", "usage"];

#[derive(Default)]
struct Fields<'j> {
    kind: Option<Cow<'j, str>>,
    index: Option<u64>,
    delta_type: Option<Cow<'j, str>>,
    delta_text: Option<(Channel, Cow<'j, str>)>,
    stop_reason: Option<String>,
    block_texts: smallvec::SmallVec<[(Channel, Cow<'j, str>); 1]>,
    info: Option<StreamInfo<'j>>,
    message_usage: Option<Usage>,
    usage: Option<Usage>,
    error: Option<StreamError>,
    unusable: bool,
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
            1 => f.index = w.loose_u64()?,
            2 => {
                each_key(w, DELTA, |w, k| {
                    match k {
                        0 => f.delta_type = w.loose_str()?,
                        1 => {
                            f.delta_text = w
                                .billed_str(&mut f.unusable)?
                                .map(|t| (Channel::Content, t))
                        }
                        2 => {
                            f.delta_text = w
                                .billed_str(&mut f.unusable)?
                                .map(|t| (Channel::ToolArguments, t))
                        }
                        3 => {
                            f.delta_text = w
                                .billed_str(&mut f.unusable)?
                                .map(|t| (Channel::Reasoning, t))
                        }
                        _ => f.stop_reason = w.loose_string()?,
                    }
                    Ok(())
                })?;
            }
            3 => {
                each_key(w, BLOCK, |w, k| {
                    let channel = if k == 0 {
                        Channel::Content
                    } else {
                        Channel::Reasoning
                    };
                    if let Some(t) = w.billed_str(&mut f.unusable)? {
                        f.block_texts.push((channel, t));
                    }
                    Ok(())
                })?;
            }
            4 => {
                let mut info = StreamInfo::default();
                each_key(w, MESSAGE, |w, k| {
                    match k {
                        0 => info.id = w.loose_str()?,
                        1 => info.model = w.loose_str()?,
                        _ => f.message_usage = parse_usage(w, &mut f.unusable)?,
                    }
                    Ok(())
                })?;
                f.info = Some(info);
            }
            5 => f.usage = parse_usage(w, &mut f.unusable)?,
            _ => f.error = parse_error(w)?,
        }
        Ok(())
    })?;
    w.finish()?;
    let kind = typed_event(is_object, f.kind, event_type)?;
    let kind = kind.as_ref();
    let index = f.index.unwrap_or(0) as u32;
    let mut out = Extracted::new(EventKind::Data);
    out.unusable = f.unusable;
    match kind {
        "message_start" => {
            out.info = f.info;
            out.usage = f.message_usage;
        }
        "content_block_start" => {
            out.block_opened = Some(index);
            // A block may start with text already in it.
            for (channel, t) in f.block_texts {
                out.delta(0, index, channel, t);
            }
        }
        "content_block_delta" => {
            let expected = match f.delta_type.as_deref() {
                Some("text_delta") => Some(Channel::Content),
                Some("input_json_delta") => Some(Channel::ToolArguments),
                Some("thinking_delta") => Some(Channel::Reasoning),
                // signature_delta and future kinds carry no billed text.
                _ => None,
            };
            match (expected, f.delta_text) {
                (Some(c), Some((found, t))) if c == found => out.delta(0, index, c, t),
                _ => out.kind = EventKind::Other,
            }
        }
        "content_block_stop" => out.block_closed = Some(index),
        "message_delta" => {
            if let Some(reason) = f.stop_reason {
                out.finishes.push((0, reason));
            }
            out.usage = f.usage;
        }
        "message_stop" => out.kind = EventKind::Done,
        "ping" => out.kind = EventKind::Ping,
        "error" => {
            out.kind = EventKind::Error;
            out.error = Some(f.error.unwrap_or_else(|| StreamError {
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
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cached_input_tokens),
            (Some(25), Some(1), Some(3))
        );
        assert_eq!(e.info.unwrap().id.as_deref(), Some("msg_1"));

        let e = extract(b"content_block_start", br#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#).unwrap();
        assert_eq!(e.block_opened, Some(1));
        assert!(e.deltas.is_empty());

        let e = extract(b"content_block_delta", br#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hello"}}"#).unwrap();
        assert_eq!((e.deltas[0].part, e.deltas[0].text.as_ref()), (1, "Hello"));

        let e = extract(b"content_block_delta", br#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"x\": 1"}}"#).unwrap();
        assert_eq!(
            (e.deltas[0].channel, e.deltas[0].text.as_ref()),
            (Channel::ToolArguments, "{\"x\": 1")
        );

        let e = extract(b"content_block_delta", br#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#).unwrap();
        assert_eq!(e.deltas[0].channel, Channel::Reasoning);

        let e = extract(b"content_block_delta", br#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"abc"}}"#).unwrap();
        assert!(e.deltas.is_empty());

        let e = extract(b"message_delta", br#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#).unwrap();
        assert_eq!(e.finishes[0].1, "end_turn");
        assert_eq!(e.usage.unwrap().output_tokens, Some(15));

        assert_eq!(
            extract(b"message_stop", br#"{"type":"message_stop"}"#)
                .unwrap()
                .kind,
            EventKind::Done
        );
        assert_eq!(
            extract(b"ping", br#"{"type": "ping"}"#).unwrap().kind,
            EventKind::Ping
        );

        let e = extract(
            b"error",
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )
        .unwrap();
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
