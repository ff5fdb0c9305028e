//! What each LLM wire format says in one SSE event: billed text deltas, finish reasons,
//! usage, end of stream and errors. One module per format; this one holds the shared types,
//! format detection and the dispatcher.
//!
//! Parsing uses serde with borrowed strings: a delta without JSON escapes is a slice of the
//! event data, so extraction allocates only for escaped text.

use smallvec::SmallVec;
use std::borrow::Cow;

pub mod anthropic;
pub mod json;
pub mod openai;
pub mod responses;
pub mod scan;
pub mod template;

use json::{each_key, Cursor, Walk};

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
            b"message_start"
            | b"content_block_start"
            | b"content_block_delta"
            | b"content_block_stop"
            | b"message_delta"
            | b"message_stop"
            | b"ping" => return Some(Format::Anthropic),
            t if t.starts_with(b"response.") => return Some(Format::OpenAiResponses),
            _ => {}
        }
        // Look at the top-level `object` and `type` only.
        let mut object = None;
        let mut kind = None;
        let mut w = Walk::new(data).ok()?;
        each_key(&mut w, &["object", "type"], |w, k| {
            let v = if w.peek()? == jiter::Peek::String {
                w.opt_string()?
            } else {
                w.skip()?;
                None
            };
            if k == 0 {
                object = v
            } else {
                kind = v
            }
            Ok(())
        })
        .ok()?;
        match object.as_deref() {
            Some("chat.completion.chunk" | "chat.completion") => return Some(Format::OpenAiChat),
            Some("text_completion") => return Some(Format::OpenAiCompletions),
            _ => {}
        }
        match kind.as_deref() {
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
        m(
            &mut self.cache_creation_input_tokens,
            newer.cache_creation_input_tokens,
        );
        m(&mut self.reasoning_tokens, newer.reasoning_tokens);
    }

    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }
}

const USAGE: &[&str] = &[
    "prompt_tokens",
    "input_tokens",
    "completion_tokens",
    "output_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "input_tokens_details",
    "completion_tokens_details",
    "output_tokens_details",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
];

/// A usage object in any format: OpenAI chat/completions names, Responses names and
/// Anthropic names all map onto [`Usage`]. `None` for `null`. A usage that is not an object,
/// and each figure that is not a non-negative integer, is ignored and sets `unusable`: the
/// event's billed text is still read and counted (issue 19 #5).
pub(crate) fn parse_usage<'j, W: Cursor<'j>>(
    w: &mut W,
    unusable: &mut bool,
) -> json::Result<Option<Usage>> {
    if !w.is_object()? && !w.is_null()? {
        w.skip()?;
        *unusable = true;
        return Ok(None);
    }
    let mut u = Usage::default();
    let mut cache_read = None;
    let present = each_key(w, USAGE, |w, k| {
        match k {
            0 | 1 => u.input_tokens = w.usage_count(unusable)?,
            2 | 3 => u.output_tokens = w.usage_count(unusable)?,
            4 => u.total_tokens = w.usage_count(unusable)?,
            5 | 6 => u.cached_input_tokens = detail(w, "cached_tokens", unusable)?,
            7 | 8 => u.reasoning_tokens = detail(w, "reasoning_tokens", unusable)?,
            9 => cache_read = w.usage_count(unusable)?,
            _ => u.cache_creation_input_tokens = w.usage_count(unusable)?,
        }
        Ok(())
    })?;
    if u.cached_input_tokens.is_none() {
        u.cached_input_tokens = cache_read;
    }
    Ok(present.then_some(u))
}

/// One figure of a usage details object (`completion_tokens_details.reasoning_tokens`).
fn detail<'j, W: Cursor<'j>>(
    w: &mut W,
    name: &str,
    unusable: &mut bool,
) -> json::Result<Option<u64>> {
    if !w.is_object()? && !w.is_null()? {
        w.skip()?;
        *unusable = true;
        return Ok(None);
    }
    let mut out = None;
    each_key(w, &[name], |w, _| {
        out = w.usage_count(unusable)?;
        Ok(())
    })?;
    Ok(out)
}

/// An error the upstream reported inside the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub kind: String,
    pub message: String,
    pub code: Option<String>,
}

/// Identity of the stream, captured from its first events so a synthetic ending can carry the
/// stream's own `id`, `model` and `created`. Borrowed while extracting (no allocation per
/// event); the meter keeps an owned copy of the first one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamInfo<'a> {
    pub id: Option<Cow<'a, str>>,
    pub model: Option<Cow<'a, str>>,
    pub created: Option<i64>,
    pub system_fingerprint: Option<Cow<'a, str>>,
}

impl StreamInfo<'_> {
    pub fn into_owned(self) -> StreamInfo<'static> {
        StreamInfo {
            id: self.id.map(|c| Cow::Owned(c.into_owned())),
            model: self.model.map(|c| Cow::Owned(c.into_owned())),
            created: self.created,
            system_fingerprint: self.system_fingerprint.map(|c| Cow::Owned(c.into_owned())),
        }
    }
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
    pub info: Option<StreamInfo<'a>>,
    /// Anthropic content block opened / closed by this event.
    pub block_opened: Option<u32>,
    pub block_closed: Option<u32>,
    /// Responses events carry a sequence number that synthetic events continue.
    pub sequence_number: Option<u64>,
    /// OpenAI chat/completions: byte range of the top-level `usage` member within the data
    /// (with one separating comma), so the meter can cut it out; and whether the chunk is the
    /// usage-only chunk (`"choices": []` with a usage object).
    pub usage_member: Option<(usize, usize)>,
    pub usage_only: bool,
    /// A billed field (text or a usage figure) had a value that cannot be counted: it was
    /// ignored, the rest of the event was read (the meter reports an `unusable_field`).
    pub unusable: bool,
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
            usage_member: None,
            usage_only: false,
            unusable: false,
        }
    }

    pub(crate) fn with_kind(mut self, kind: EventKind) -> Self {
        self.kind = kind;
        self
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
    /// The process-wide budget for unfinished events ran out and this stream held the most.
    PendingBudgetExceeded,
    /// A billed field of an event (text, a usage figure) had a value that cannot be counted;
    /// it was ignored and the rest of the event was counted.
    UnusableField,
}

impl AnomalyKind {
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::MalformedJson => "malformed_json",
            AnomalyKind::UnknownFormat => "unknown_format",
            AnomalyKind::IncompleteEvent => "incomplete_event",
            AnomalyKind::EventAfterDone => "event_after_done",
            AnomalyKind::EventTooLarge => "event_too_large",
            AnomalyKind::PendingBudgetExceeded => "pending_budget_exceeded",
            AnomalyKind::UnusableField => "unusable_field",
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
pub fn extract<'a>(
    format: Format,
    event_type: &[u8],
    data: &'a [u8],
) -> Result<Extracted<'a>, String> {
    match format {
        Format::OpenAiChat | Format::OpenAiCompletions => openai::extract(data),
        Format::OpenAiResponses => responses::extract(event_type, data),
        Format::Anthropic => anthropic::extract(event_type, data),
    }
}

/// [`extract`] with the jiter walk only (no scanner): the reference for the scanner's
/// differential tests and benches.
#[doc(hidden)]
pub fn extract_walk<'a>(
    format: Format,
    event_type: &[u8],
    data: &'a [u8],
) -> Result<Extracted<'a>, String> {
    match format {
        Format::OpenAiChat | Format::OpenAiCompletions => openai::extract_walk(data),
        Format::OpenAiResponses => responses::extract_walk(event_type, data),
        Format::Anthropic => anthropic::extract_walk(event_type, data),
    }
}

/// A typed event (Anthropic, Responses) must be a JSON object with a `type`; the `event:`
/// line, when present, must agree with it (the data's `type` is authoritative; a bare
/// `message` event type is the SSE default and says nothing).
pub(crate) fn typed_event<'j>(
    is_object: bool,
    kind: Option<Cow<'j, str>>,
    event_type: &[u8],
) -> Result<Cow<'j, str>, String> {
    if !is_object {
        return Err("expected a JSON object, found null".into());
    }
    let Some(kind) = kind else {
        return Err("missing field `type`".into());
    };
    if !event_type.is_empty() && event_type != kind.as_bytes() && event_type != b"message" {
        return Err(format!(
            "event type {:?} disagrees with data type {kind:?}",
            String::from_utf8_lossy(event_type)
        ));
    }
    Ok(kind)
}

/// Error objects come as `{"type","message","code"}` in every format (the code may be a
/// string or a number). `None` for `null`.
pub(crate) fn parse_error<'j, W: Cursor<'j>>(w: &mut W) -> json::Result<Option<StreamError>> {
    let mut e = StreamError {
        kind: "error".into(),
        message: String::new(),
        code: None,
    };
    let present = each_key(w, &["type", "message", "code"], |w, k| {
        match k {
            0 => {
                if let Some(t) = w.opt_string()? {
                    e.kind = t;
                }
            }
            1 => e.message = w.opt_string()?.unwrap_or_default(),
            _ => e.code = w.opt_code()?,
        }
        Ok(())
    })?;
    Ok(present.then_some(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_path() {
        assert_eq!(
            Format::from_path("/v1/chat/completions"),
            Some(Format::OpenAiChat)
        );
        assert_eq!(
            Format::from_path("/openai/v1/chat/completions?x=1"),
            Some(Format::OpenAiChat)
        );
        assert_eq!(
            Format::from_path("/v1/completions"),
            Some(Format::OpenAiCompletions)
        );
        assert_eq!(
            Format::from_path("/v1/responses/"),
            Some(Format::OpenAiResponses)
        );
        assert_eq!(Format::from_path("/v1/messages"), Some(Format::Anthropic));
        assert_eq!(Format::from_path("/v1/embeddings"), None);
    }

    #[test]
    fn format_detection_from_first_event() {
        assert_eq!(
            Format::detect(b"message_start", b"{}"),
            Some(Format::Anthropic)
        );
        assert_eq!(
            Format::detect(b"response.created", b"{}"),
            Some(Format::OpenAiResponses)
        );
        assert_eq!(
            Format::detect(b"", br#"{"object":"chat.completion.chunk","choices":[]}"#),
            Some(Format::OpenAiChat)
        );
        assert_eq!(
            Format::detect(b"", br#"{"object":"text_completion"}"#),
            Some(Format::OpenAiCompletions)
        );
        assert_eq!(
            Format::detect(b"", br#"{"type":"message_start"}"#),
            Some(Format::Anthropic)
        );
        assert_eq!(Format::detect(b"", b"[DONE]"), None);
        assert_eq!(Format::detect(b"", b"{broken"), None);
    }

    fn usage_of(json: &str) -> Usage {
        let mut w = Walk::new(json.as_bytes()).unwrap();
        parse_usage(&mut w, &mut false).unwrap().unwrap()
    }

    #[test]
    fn usage_normalises_all_formats() {
        let u = usage_of(
            r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,
                "prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}"#,
        );
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
        let mut u = usage_of(
            r#"{"input_tokens":3,"output_tokens":1,"cache_read_input_tokens":7,"cache_creation_input_tokens":9}"#,
        );
        assert_eq!(u.cached_input_tokens, Some(7));
        assert_eq!(u.cache_creation_input_tokens, Some(9));
        u.merge(&Usage {
            output_tokens: Some(40),
            ..Usage::default()
        });
        assert_eq!((u.input_tokens, u.output_tokens), (Some(3), Some(40)));
    }
}
