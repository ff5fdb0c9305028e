//! What each LLM wire format says in one SSE event: billed text deltas, finish reasons,
//! usage, end of stream and errors. One module per format; this one holds the shared types,
//! format detection and the dispatcher.
//!
//! Parsing uses serde with borrowed strings: a delta without JSON escapes is a slice of the
//! event data, so extraction allocates only for escaped text.

use serde::de::{Deserialize, Deserializer, Visitor};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::fmt;

pub mod anthropic;
pub mod openai;
pub mod responses;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    OpenAiChat,
    OpenAiResponses,
    OpenAiCompletions,
    Anthropic,
}

impl Format {
    pub const ALL: [Format; 4] = [
        Format::OpenAiChat,
        Format::OpenAiResponses,
        Format::OpenAiCompletions,
        Format::Anthropic,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::OpenAiChat => "openai-chat",
            Format::OpenAiResponses => "openai-responses",
            Format::OpenAiCompletions => "openai-completions",
            Format::Anthropic => "anthropic",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The format an endpoint speaks, from its request path (query string ignored, any prefix
    /// before `/v1/` allowed so that `/openai/v1/chat/completions` works).
    pub fn from_path(path: &str) -> Option<Format> {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Some(Format::OpenAiChat)
        } else if path.ends_with("/responses") {
            Some(Format::OpenAiResponses)
        } else if path.ends_with("/completions") {
            Some(Format::OpenAiCompletions)
        } else if path.ends_with("/messages") {
            Some(Format::Anthropic)
        } else {
            None
        }
    }

    /// The format of a stream, from its first event with data.
    pub fn detect(event_type: &[u8], data: &[u8]) -> Option<Format> {
        match event_type {
            b"message_start" | b"content_block_start" | b"content_block_delta"
            | b"content_block_stop" | b"message_delta" | b"message_stop" | b"ping" => {
                return Some(Format::Anthropic)
            }
            t if t.starts_with(b"response.") => return Some(Format::OpenAiResponses),
            _ => {}
        }
        #[derive(serde::Deserialize)]
        struct Probe<'a> {
            #[serde(borrow, default)]
            object: Option<Text<'a>>,
            #[serde(borrow, default, rename = "type")]
            kind: Option<Text<'a>>,
        }
        let probe: Probe<'_> = serde_json::from_slice(data).ok()?;
        if let Some(obj) = probe.object {
            match obj.0.as_ref() {
                "chat.completion.chunk" | "chat.completion" => return Some(Format::OpenAiChat),
                "text_completion" => return Some(Format::OpenAiCompletions),
                _ => {}
            }
        }
        match probe.kind.as_ref().map(|t| t.0.as_ref()) {
            Some(t) if t.starts_with("response.") => Some(Format::OpenAiResponses),
            Some("message_start" | "content_block_delta" | "message_delta" | "message_stop") => {
                Some(Format::Anthropic)
            }
            _ => None,
        }
    }
}

/// Which billed stream a delta belongs to. Each (choice, part, channel) is counted as its own
/// text: token boundaries never cross from one to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Content,
    Reasoning,
    ToolArguments,
    Refusal,
}

impl Channel {
    pub fn name(self) -> &'static str {
        match self {
            Channel::Content => "content",
            Channel::Reasoning => "reasoning",
            Channel::ToolArguments => "tool_arguments",
            Channel::Refusal => "refusal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextDelta<'a> {
    /// Choice index (OpenAI chat/completions), output index (Responses), 0 for Anthropic.
    pub choice: u32,
    /// Tool-call index, content block index or content part index; 0 where there is none.
    pub part: u32,
    pub channel: Channel,
    pub text: Cow<'a, str>,
}

/// Usage as the upstream reported it, normalised across formats. Absent dimensions stay
/// `None`; merging keeps the newest value per dimension (Anthropic reports cumulative output
/// in `message_delta` after `message_start`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    pub cached_input_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    pub fn merge(&mut self, newer: &Usage) {
        fn m(a: &mut Option<u64>, b: Option<u64>) {
            if b.is_some() {
                *a = b;
            }
        }
        m(&mut self.input_tokens, newer.input_tokens);
        m(&mut self.output_tokens, newer.output_tokens);
        m(&mut self.total_tokens, newer.total_tokens);
        m(&mut self.cached_input_tokens, newer.cached_input_tokens);
        m(&mut self.cache_creation_input_tokens, newer.cache_creation_input_tokens);
        m(&mut self.reasoning_tokens, newer.reasoning_tokens);
    }

    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }
}

/// Raw usage object; field aliases cover OpenAI chat/completions, Responses and Anthropic.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct RawUsage {
    #[serde(alias = "prompt_tokens", default)]
    input_tokens: Option<u64>,
    #[serde(alias = "completion_tokens", default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(alias = "prompt_tokens_details", default)]
    input_tokens_details: Option<InputDetails>,
    #[serde(alias = "completion_tokens_details", default)]
    output_tokens_details: Option<OutputDetails>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct InputDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct OutputDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl From<RawUsage> for Usage {
    fn from(r: RawUsage) -> Usage {
        Usage {
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            total_tokens: r.total_tokens,
            cached_input_tokens: r
                .input_tokens_details
                .and_then(|d| d.cached_tokens)
                .or(r.cache_read_input_tokens),
            cache_creation_input_tokens: r.cache_creation_input_tokens,
            reasoning_tokens: r.output_tokens_details.and_then(|d| d.reasoning_tokens),
        }
    }
}

/// An error the upstream reported inside the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub kind: String,
    pub message: String,
    pub code: Option<String>,
}

/// Identity of the stream, captured from its first events so a synthetic ending can carry the
/// stream's own `id`, `model` and `created`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamInfo {
    pub id: Option<String>,
    pub model: Option<String>,
    pub created: Option<i64>,
    pub system_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// An ordinary event of the format (deltas, usage, lifecycle).
    Data,
    /// The end-of-stream marker: `[DONE]`, `message_stop`, or a Responses terminal event.
    Done,
    /// Keep-alive with no content (`ping`).
    Ping,
    /// An error event or error chunk.
    Error,
    /// Valid JSON of a type this format does not bill (forwarded untouched).
    Other,
}

/// Everything one event says. Deltas borrow from the event data.
#[derive(Debug, Clone)]
pub struct Extracted<'a> {
    pub kind: EventKind,
    pub deltas: SmallVec<[TextDelta<'a>; 1]>,
    /// (choice, reason) pairs.
    pub finishes: SmallVec<[(u32, String); 1]>,
    /// Choice indexes present in the event (OpenAI chat/completions), so a synthetic ending
    /// can close every choice that started, even one that has sent only its role.
    pub choices_seen: SmallVec<[u32; 1]>,
    pub usage: Option<Usage>,
    pub error: Option<StreamError>,
    pub info: Option<StreamInfo>,
    /// Anthropic content block opened / closed by this event.
    pub block_opened: Option<u32>,
    pub block_closed: Option<u32>,
    /// Responses events carry a sequence number that synthetic events continue.
    pub sequence_number: Option<u64>,
}

impl<'a> Extracted<'a> {
    pub fn new(kind: EventKind) -> Self {
        Extracted {
            kind,
            deltas: SmallVec::new(),
            finishes: SmallVec::new(),
            choices_seen: SmallVec::new(),
            usage: None,
            error: None,
            info: None,
            block_opened: None,
            block_closed: None,
            sequence_number: None,
        }
    }

    pub(crate) fn delta(&mut self, choice: u32, part: u32, channel: Channel, text: Cow<'a, str>) {
        if !text.is_empty() {
            self.deltas.push(TextDelta {
                choice,
                part,
                channel,
                text,
            });
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnomalyKind {
    /// Event data that is not valid JSON (or not the JSON shape of the format).
    MalformedJson,
    /// A stream whose format could not be recognised from its path or first event.
    UnknownFormat,
    /// The upstream stream ended in the middle of an event.
    IncompleteEvent,
    /// Events after the end-of-stream marker.
    EventAfterDone,
    /// An event larger than the configured maximum; the stream cannot be metered further.
    EventTooLarge,
}

impl AnomalyKind {
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::MalformedJson => "malformed_json",
            AnomalyKind::UnknownFormat => "unknown_format",
            AnomalyKind::IncompleteEvent => "incomplete_event",
            AnomalyKind::EventAfterDone => "event_after_done",
            AnomalyKind::EventTooLarge => "event_too_large",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub message: String,
    /// Stream offset of the event the anomaly concerns.
    pub offset: u64,
}

/// Extract one event of a known format. `Err` carries the parser's message for a malformed
/// event; the caller turns it into an anomaly and still forwards the bytes.
pub fn extract<'a>(format: Format, event_type: &[u8], data: &'a [u8]) -> Result<Extracted<'a>, String> {
    match format {
        Format::OpenAiChat | Format::OpenAiCompletions => openai::extract(data),
        Format::OpenAiResponses => responses::extract(event_type, data),
        Format::Anthropic => anthropic::extract(event_type, data),
    }
}

/// A JSON string that borrows from the input when it has no escapes. (serde's `Cow<str>`
/// always allocates inside `Option`, which would cost an allocation per delta.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(V).map(Text)
    }
}

impl Text<'_> {
    pub fn into_string(self) -> String {
        self.0.into_owned()
    }
}

/// Error objects come as `{"type","message","code"}` in every format (the code may be a
/// string or a number).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct RawError<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Text<'a>>,
    #[serde(borrow, default)]
    message: Option<Text<'a>>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

impl From<RawError<'_>> for StreamError {
    fn from(e: RawError<'_>) -> StreamError {
        StreamError {
            kind: e.kind.map(Text::into_string).unwrap_or_else(|| "error".into()),
            message: e.message.map(Text::into_string).unwrap_or_default(),
            code: match e.code {
                Some(serde_json::Value::String(s)) => Some(s),
                Some(serde_json::Value::Null) | None => None,
                Some(other) => Some(other.to_string()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_path() {
        assert_eq!(Format::from_path("/v1/chat/completions"), Some(Format::OpenAiChat));
        assert_eq!(Format::from_path("/openai/v1/chat/completions?x=1"), Some(Format::OpenAiChat));
        assert_eq!(Format::from_path("/v1/completions"), Some(Format::OpenAiCompletions));
        assert_eq!(Format::from_path("/v1/responses/"), Some(Format::OpenAiResponses));
        assert_eq!(Format::from_path("/v1/messages"), Some(Format::Anthropic));
        assert_eq!(Format::from_path("/v1/embeddings"), None);
    }

    #[test]
    fn format_detection_from_first_event() {
        assert_eq!(Format::detect(b"message_start", b"{}"), Some(Format::Anthropic));
        assert_eq!(Format::detect(b"response.created", b"{}"), Some(Format::OpenAiResponses));
        assert_eq!(
            Format::detect(b"", br#"{"object":"chat.completion.chunk","choices":[]}"#),
            Some(Format::OpenAiChat)
        );
        assert_eq!(
            Format::detect(b"", br#"{"object":"text_completion"}"#),
            Some(Format::OpenAiCompletions)
        );
        assert_eq!(Format::detect(b"", br#"{"type":"message_start"}"#), Some(Format::Anthropic));
        assert_eq!(Format::detect(b"", b"[DONE]"), None);
        assert_eq!(Format::detect(b"", b"{broken"), None);
    }

    #[test]
    fn text_borrows_without_escapes() {
        let t: Text<'_> = serde_json::from_str(r#""plain""#).unwrap();
        assert!(matches!(t.0, Cow::Borrowed("plain")));
        let t: Text<'_> = serde_json::from_str(r#""a\nb""#).unwrap();
        assert!(matches!(t.0, Cow::Owned(ref s) if s == "a\nb"));
    }

    #[test]
    fn usage_normalises_all_formats() {
        let chat: RawUsage = serde_json::from_str(
            r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,
                "prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}"#,
        )
        .unwrap();
        let u = Usage::from(chat);
        assert_eq!(
            u,
            Usage {
                input_tokens: Some(10),
                output_tokens: Some(5),
                total_tokens: Some(15),
                cached_input_tokens: Some(4),
                cache_creation_input_tokens: None,
                reasoning_tokens: Some(2)
            }
        );
        let anth: RawUsage = serde_json::from_str(
            r#"{"input_tokens":3,"output_tokens":1,"cache_read_input_tokens":7,"cache_creation_input_tokens":9}"#,
        )
        .unwrap();
        let mut u = Usage::from(anth);
        assert_eq!(u.cached_input_tokens, Some(7));
        assert_eq!(u.cache_creation_input_tokens, Some(9));
        u.merge(&Usage {
            output_tokens: Some(40),
            ..Usage::default()
        });
        assert_eq!((u.input_tokens, u.output_tokens), (Some(3), Some(40)));
    }
}
