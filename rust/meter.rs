//! The per-stream meter: SSE framing → delta extraction → exact token count → forward /
//! truncate / pause decision, in one pass over each network read.
//!
//! Forwarding works on whole event blocks. Bytes of a block that has not ended yet are held
//! back until it ends (usually the next read), which costs no latency in practice (upstreams
//! write whole events) and buys two guarantees: a cut or an error ending never lands in the
//! middle of a half-sent line, and a limit is checked before any byte of the event that would
//! cross it leaves. Everything that is forwarded is the upstream's original bytes.
//!
//! Two allowances gate billed text:
//! - `limit`: a hard cap on delivered completion tokens. The first event whose text would take
//!   the count past it is not forwarded; the format's synthetic ending is, and the stream is
//!   over (`Truncated`). With `shadow` the cap is only observed (`would_truncate_at`).
//! - `shadow_limit`: a cap that is only observed, beside an enforced `limit` (a shadow budget
//!   on a route whose paid quote is enforced): both apply, each in its own way.
//! - `credit`: prepaid or leased headroom. When an event would overrun it the meter stops
//!   before that event (`Paused`) and keeps the rest; `grant` adds headroom and resumes from
//!   exactly that event. `truncate` ends a paused stream instead.
//!
//! Performance notes (issue 14: at least 3x / 10x the pure-Python pipeline with 1 / 64 events
//! per read; `benches/work.rs` for the pure-Rust figures below, microseconds per event with 64
//! events per read, o200k; `meterkit bench core` for the ratios, in benches/RESULTS.md):
//! - Start: 0.78 (OpenAI chat) / 0.57 (Anthropic). Framing was 0.05 of it, the jiter
//!   walk ~0.45 / 0.28, incremental counting ~0.19, the rest per-event bookkeeping.
//! - Kept: a general scanner before the walk (`extract/scan.rs`): 0-14% of extraction
//!   across runs, i.e. marginal (see its notes).
//! - Kept, the main lever: a template per stream (`extract/template.rs`). Delta events repeat
//!   the same bytes around the delta, so after one full extraction the next events are read by
//!   comparing prefix and suffix and validating only the delta (and a Responses sequence
//!   number): meter-openai-64 0.78 -> 0.55 with it, then 0.47 once its comparisons stopped
//!   calling libc memcmp (14-16% of an event under perf, far above the work it does).
//! - Kept: counting (`tokens.rs`): piece memo and ASCII pre-tokenizer, 0.19 -> 0.07 per delta.
//! - Kept: when nothing but counting is asked (no limit, credit or rewriting), a templated
//!   event updates the meter directly instead of building and moving an `Extracted`
//!   (differential test `template_path_tests`); and the SSE decoder dispatches the common
//!   whole block from the read without copying it (`sse::simple_block`). Together with the
//!   memo's thread-local taken once per split: 0.47 -> 0.24 (OpenAI), 0.23 (Anthropic),
//!   0.25 (Responses).
//! - Not done: the per-read costs of the binding (a `FeedResult` object, the exact count after
//!   every read), which dominate with one event per read; they are the API's contract.

use crate::budget::{Account, Budget};
use crate::endings::{ending, EndingParams, EndingStyle, StreamSnapshot};
use crate::extract::template::Template;
use crate::extract::{
    extract, Anomaly, AnomalyKind, Channel, EventKind, Extracted, Format, StreamError, StreamInfo,
    Usage,
};
use crate::sse::{Flow, RawEvent, SseDecoder, DEFAULT_MAX_EVENT_SIZE, KEEP_CAPACITY};
use crate::tokens::{resolve_model, Encoding, IncrementalCounter, Provenance};

#[derive(Debug, Clone)]
pub struct MeterConfig {
    /// `None`: detect from the first event.
    pub format: Option<Format>,
    /// Model whose tokenizer counts; `None`: the model the stream names.
    pub model: Option<String>,
    /// Explicit encoding, overriding the model table.
    pub encoding: Option<Encoding>,
    pub max_event_size: usize,
    pub limit: Option<u64>,
    pub shadow: bool,
    /// Observed only, whatever `shadow` says: where it would cut goes to `would_truncate_at`.
    pub shadow_limit: Option<u64>,
    pub ending: EndingStyle,
    /// Prompt tokens counted at admission, reported in synthetic usage.
    pub prompt_tokens: Option<u64>,
    pub credit: Option<u64>,
    /// OpenAI chat/completions: remove the `usage` member from every chunk and drop the
    /// usage-only chunk (the proxy asked the upstream for usage the client did not ask for).
    pub strip_usage: bool,
    /// Add the running usage to every forwarded event (`include_partial_usage`).
    pub partial_usage: bool,
    /// The budget for bytes held across streams this meter reports to (`budget::GLOBAL`).
    pub budget: &'static Budget,
}

impl Default for MeterConfig {
    fn default() -> Self {
        MeterConfig {
            format: None,
            model: None,
            encoding: None,
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
            limit: None,
            shadow: false,
            shadow_limit: None,
            ending: EndingStyle::Graceful,
            prompt_tokens: None,
            credit: None,
            strip_usage: false,
            partial_usage: false,
            budget: &crate::budget::GLOBAL,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeterState {
    /// Forwarding; the upstream has not signalled its end.
    Streaming,
    /// Waiting for credit; the rest of the stream is kept.
    Paused,
    /// The end-of-stream marker went through (`[DONE]`, `message_stop`, terminal response).
    Finished,
    /// Cut at the limit (or by `truncate`), ending sent.
    Truncated,
    /// Framing failed or the stream was ended with an error ending.
    Failed,
}

impl MeterState {
    pub fn name(self) -> &'static str {
        match self {
            MeterState::Streaming => "streaming",
            MeterState::Paused => "paused",
            MeterState::Finished => "finished",
            MeterState::Truncated => "truncated",
            MeterState::Failed => "failed",
        }
    }
}

/// Bytes to send to the client for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// Exactly the input chunk (the common case; lets the binding skip a copy).
    Input,
    Bytes(Vec<u8>),
}

impl Forward {
    pub fn to_vec(&self, input: &[u8]) -> Vec<u8> {
        match self {
            Forward::Input => input.to_vec(),
            Forward::Bytes(b) => b.clone(),
        }
    }

    pub fn len(&self, input: &[u8]) -> usize {
        match self {
            Forward::Input => input.len(),
            Forward::Bytes(b) => b.len(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FeedOutcome {
    pub forward: Forward,
    /// Events dispatched by this call (including one held back by a pause or cut).
    pub events: u32,
    /// Absolute stream spans of those events.
    pub spans: Vec<(u64, u64)>,
    /// Anomalies raised by this call.
    pub anomalies: Vec<Anomaly>,
    /// This call cut the stream.
    pub truncated: bool,
    /// This call paused the stream.
    pub paused: bool,
}

impl FeedOutcome {
    fn empty() -> Self {
        FeedOutcome {
            forward: Forward::Bytes(Vec::new()),
            events: 0,
            spans: Vec::new(),
            anomalies: Vec::new(),
            truncated: false,
            paused: false,
        }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    choice: u32,
    part: u32,
    channel: Channel,
    counter: IncrementalCounter,
    /// Exact count, valid while `!dirty`.
    exact: u64,
    dirty: bool,
}

impl Slot {
    fn exact(&mut self) -> u64 {
        if self.dirty {
            self.exact = self.counter.count();
            self.dirty = false;
        }
        self.exact
    }

    fn upper_bound(&self) -> u64 {
        if self.dirty {
            self.counter.upper_bound()
        } else {
            self.exact
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Forward,
    Cut,
    Pause,
}

/// Everything but the framing buffers, so the decoder callback can borrow it.
#[derive(Debug, Clone)]
struct Core {
    format: Option<Format>,
    model: Option<String>,
    encoding: Option<(Encoding, Provenance)>,
    cfg_encoding: Option<Encoding>,
    slots: Vec<Slot>,
    usage: Usage,
    usage_seen: bool,
    finishes: Vec<(u32, String)>,
    choices: Vec<u32>,
    info: Option<StreamInfo<'static>>,
    open_block: Option<u32>,
    message_started: bool,
    response_template: Option<String>,
    last_seq: Option<u64>,
    state: MeterState,
    anomalies: Vec<Anomaly>,
    unknown_reported: bool,
    after_done_reported: bool,
    events: u64,
    /// The enforced cap (cuts).
    limit: Option<u64>,
    /// The observed cap (`would_truncate_at` only): `shadow_limit`, and `limit` with `shadow`.
    observed: Option<u64>,
    credit: Option<u64>,
    would_truncate_at: Option<u64>,
    stream_error: Option<StreamError>,
    strip_usage: bool,
    partial_usage: bool,
    prompt_tokens: Option<u64>,
    /// Events of this read forwarded with rewritten bytes: (start, end, replacement).
    edits: Vec<(u64, u64, Vec<u8>)>,
    /// The repeated shape of this stream's delta events (see `extract::template`).
    template: Template,
}

impl Core {
    fn anomaly(&mut self, kind: AnomalyKind, message: String, offset: u64) {
        self.anomalies.push(Anomaly {
            kind,
            message,
            offset,
        });
    }

    fn encoding(&mut self) -> Encoding {
        if let Some((enc, _)) = self.encoding {
            return enc;
        }
        let resolved = match (self.cfg_encoding, &self.model) {
            (Some(enc), _) => (enc, Provenance::Counted),
            (None, Some(m)) => resolve_model(m),
            (None, None) => match self.info.as_ref().and_then(|i| i.model.as_deref()) {
                Some(m) => resolve_model(m),
                None => resolve_model(""),
            },
        };
        self.encoding = Some(resolved);
        resolved.0
    }

    fn see_choice(&mut self, choice: u32) {
        if !self.choices.contains(&choice) {
            self.choices.push(choice);
        }
    }

    /// A delivered delta: its choice is seen, its text counted in its slot.
    fn push_delta(&mut self, choice: u32, part: u32, channel: Channel, text: &str) {
        self.see_choice(choice);
        let i = self.slot_index(choice, part, channel);
        let slot = &mut self.slots[i];
        slot.counter.push(text);
        slot.dirty = true;
    }

    fn upper_bound_total(&self) -> u64 {
        self.slots.iter().map(Slot::upper_bound).sum()
    }

    fn total(&mut self) -> u64 {
        self.slots.iter_mut().map(Slot::exact).sum()
    }

    fn slot_index(&mut self, choice: u32, part: u32, channel: Channel) -> usize {
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| s.choice == choice && s.part == part && s.channel == channel)
        {
            return i;
        }
        let enc = self.encoding();
        self.slots.push(Slot {
            choice,
            part,
            channel,
            counter: IncrementalCounter::new(enc),
            exact: 0,
            dirty: false,
        });
        self.slots.len() - 1
    }

    /// Exact delivered total if this event's deltas were accepted.
    fn total_with(&mut self, ex: &Extracted<'_>) -> u64 {
        let mut touched: Vec<(usize, String)> = Vec::new();
        for d in &ex.deltas {
            let i = self.slot_index(d.choice, d.part, d.channel);
            match touched.iter_mut().find(|(j, _)| *j == i) {
                Some((_, text)) => text.push_str(&d.text),
                None => touched.push((i, d.text.to_string())),
            }
        }
        let mut total = 0;
        for i in 0..self.slots.len() {
            total += match touched.iter().find(|(j, _)| *j == i) {
                Some((_, text)) => self.slots[i].counter.count_with(text),
                None => self.slots[i].exact(),
            };
        }
        total
    }

    /// Would delivering this event keep the total within `cap`? Cheap bound first: every
    /// token covers at least one byte, so counting is needed only close to the cap.
    fn fits(&mut self, ex: &Extracted<'_>, cap: u64) -> bool {
        let extra: u64 = ex.deltas.iter().map(|d| d.text.len() as u64).sum();
        if self.upper_bound_total() + extra <= cap {
            return true;
        }
        self.total_with(ex) <= cap
    }

    /// No limit or rewriting: every event is forwarded as it came, unless a credit stops it.
    fn plain_forwarding(&self) -> bool {
        self.limit.is_none() && self.observed.is_none() && !self.strip_usage && !self.partial_usage
    }

    /// The templated fast path may take an event whose delta adds `bytes`: always without
    /// a credit; under one, only when the cheap bound (every token covers at least a byte)
    /// says it fits — close to the credit the general path decides, and pauses. A stream
    /// paid per token (session credit) then costs what a counted one does per event: with
    /// the general path for every credited event, `meterkit bench sessions` measured ~1 µs
    /// more CPU per event (8.11 against 7.14 µs on the same run's unpaid streams).
    fn fast_path_fits(&self, bytes: usize) -> bool {
        match self.credit {
            None => true,
            Some(cap) => self.upper_bound_total() + bytes as u64 <= cap,
        }
    }

    fn on_event(&mut self, ev: RawEvent<'_>) -> Verdict {
        self.events += 1;
        if self.state == MeterState::Finished && !self.after_done_reported {
            self.after_done_reported = true;
            self.anomaly(
                AnomalyKind::EventAfterDone,
                "event after the end-of-stream marker".into(),
                ev.start,
            );
        }
        let format = match self.format {
            Some(f) => f,
            None => match Format::detect(ev.event, ev.data) {
                Some(f) => {
                    self.format = Some(f);
                    f
                }
                None => {
                    if !self.unknown_reported {
                        self.unknown_reported = true;
                        self.anomaly(
                            AnomalyKind::UnknownFormat,
                            "stream format not recognised from its first event; forwarding unmetered until it is".into(),
                            ev.start,
                        );
                    }
                    return Verdict::Forward;
                }
            },
        };
        // The template leaves out `info`, which matters only until the stream's identity is
        // known: from then on it is used whenever an event has the learned shape.
        let use_template = self.info.is_some() || !self.template.drops_info();
        if use_template && self.plain_forwarding() {
            if let Some(d) = self
                .template
                .read(ev.event, ev.data)
                .filter(|d| self.fast_path_fits(d.text.len()))
            {
                // What the general path below does with a plain delta event when no limit,
                // credit or rewriting applies: `apply` of the template's `Extracted`, without
                // building and moving one per event.
                if d.sequence_number.is_some() {
                    self.last_seq = d.sequence_number;
                }
                for k in 0..self.template.choices_seen().len() {
                    let c = self.template.choices_seen()[k];
                    self.see_choice(c);
                }
                self.push_delta(d.choice, d.part, d.channel, &d.text);
                return Verdict::Forward;
            }
        }
        let templated = if use_template {
            self.template.apply(ev.event, ev.data)
        } else {
            None
        };
        let ex = match templated {
            Some(ex) => ex,
            None => match extract(format, ev.event, ev.data) {
                Ok(ex) => {
                    self.template.learn(ev.event, ev.data, &ex);
                    ex
                }
                Err(msg) => {
                    self.anomaly(AnomalyKind::MalformedJson, msg, ev.start);
                    return Verdict::Forward;
                }
            },
        };
        // The stream's identity is kept even from an event that is held back, so an ending
        // sent instead of it still names the stream's own id and model.
        if let Some(info) = &ex.info {
            if self.info.is_none() {
                if format == Format::OpenAiResponses && ev.event == b"response.created" {
                    self.response_template = response_object(ev.data);
                }
                if format == Format::Anthropic {
                    self.message_started = true;
                }
                self.info = Some(info.clone().into_owned());
            }
        }
        if !ex.deltas.is_empty() {
            let cap_credit = self.credit;
            if let Some(cap) = self.observed {
                if self.would_truncate_at.is_none() && !self.fits(&ex, cap) {
                    self.would_truncate_at = Some(self.total());
                }
            }
            if let Some(cap) = self.limit {
                if !self.fits(&ex, cap) {
                    return Verdict::Cut;
                }
            }
            if let Some(cap) = cap_credit {
                if !self.fits(&ex, cap) {
                    return Verdict::Pause;
                }
            }
        }
        let usage_member = ex.usage_member;
        let usage_only = ex.usage_only;
        let usage_null = ex.usage.is_none();
        let kind = ex.kind;
        self.apply(ex);
        if (self.strip_usage || self.partial_usage)
            && !matches!(kind, EventKind::Done | EventKind::Ping)
        {
            self.rewrite(format, &ev, usage_member, usage_only, usage_null);
        }
        Verdict::Forward
    }

    /// Rewrite a forwarded event: cut the upstream's usage (strip_usage) and/or add the
    /// running usage (partial_usage). Only JSON objects are touched; an event that carries the
    /// upstream's real usage keeps it.
    fn rewrite(
        &mut self,
        format: Format,
        ev: &RawEvent<'_>,
        usage_member: Option<(usize, usize)>,
        usage_only: bool,
        usage_null: bool,
    ) {
        let openai = matches!(format, Format::OpenAiChat | Format::OpenAiCompletions);
        let strip = self.strip_usage && openai;
        if strip && usage_only {
            self.edits.push((ev.start, ev.end, Vec::new()));
            return;
        }
        if self.partial_usage && openai && !strip && usage_member.is_some() && !usage_null {
            return;
        }
        // The upstream's `usage` member goes when stripping, and when ours replaces its null.
        let cut = usage_member.filter(|_| strip || (self.partial_usage && openai));
        let data = match cut {
            Some((s, e)) => [&ev.data[..s], &ev.data[e..]].concat(),
            None => ev.data.to_vec(),
        };
        let is_object = data.iter().rev().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
        if self.partial_usage && is_object {
            self.push_partial(ev, data, format);
        } else if cut.is_some() {
            self.push_event(ev, &data);
        }
    }

    fn push_partial(&mut self, ev: &RawEvent<'_>, mut data: Vec<u8>, format: Format) {
        let completion = self.total();
        let usage = match (format, self.prompt_tokens) {
            (Format::OpenAiChat | Format::OpenAiCompletions, Some(p)) => format!(
                "{{\"prompt_tokens\":{p},\"completion_tokens\":{completion},\"total_tokens\":{}}}",
                p + completion
            ),
            (Format::OpenAiChat | Format::OpenAiCompletions, None) => {
                format!("{{\"completion_tokens\":{completion}}}")
            }
            (_, Some(p)) => format!(
                "{{\"input_tokens\":{p},\"output_tokens\":{completion},\"total_tokens\":{}}}",
                p + completion
            ),
            (_, None) => format!("{{\"output_tokens\":{completion}}}"),
        };
        let close = data
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .expect("checked: ends with '}'");
        let before = data[..close]
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map(|i| data[i]);
        let sep = if before == Some(b'{') { "" } else { "," };
        let member = format!("{sep}\"usage\":{usage}");
        data.splice(close..close, member.into_bytes());
        self.push_event(ev, &data);
    }

    fn push_event(&mut self, ev: &RawEvent<'_>, data: &[u8]) {
        let mut out = Vec::with_capacity(data.len() + 32);
        let event = (!ev.event.is_empty()).then(|| String::from_utf8_lossy(ev.event));
        let text = String::from_utf8_lossy(data);
        // Field values come from a dispatched event: they hold no line breaks.
        let _ = crate::sse::encode_event(&mut out, event.as_deref(), &text, None, None);
        self.edits.push((ev.start, ev.end, out));
    }

    fn apply(&mut self, ex: Extracted<'_>) {
        if ex.sequence_number.is_some() {
            self.last_seq = ex.sequence_number;
        }
        if let Some(b) = ex.block_opened {
            self.open_block = Some(b);
        }
        if ex.block_closed.is_some() && ex.block_closed == self.open_block {
            self.open_block = None;
        }
        for c in ex.choices_seen.iter().copied() {
            self.see_choice(c);
        }
        for d in ex.deltas {
            self.push_delta(d.choice, d.part, d.channel, &d.text);
        }
        for (choice, reason) in ex.finishes {
            match self.finishes.iter_mut().find(|(c, _)| *c == choice) {
                Some(f) => f.1 = reason,
                None => self.finishes.push((choice, reason)),
            }
        }
        if let Some(u) = ex.usage {
            self.usage.merge(&u);
            self.usage_seen = true;
        }
        if let Some(err) = ex.error {
            self.stream_error = Some(err);
        }
        if ex.kind == EventKind::Done && self.state == MeterState::Streaming {
            self.state = MeterState::Finished;
        }
    }

    fn open_choices(&self) -> Vec<u32> {
        let mut open: Vec<u32> = self
            .choices
            .iter()
            .copied()
            .filter(|c| !self.finishes.iter().any(|(f, _)| f == c))
            .collect();
        open.sort_unstable();
        open
    }
}

/// Apply `edits` (absolute spans, in order) to `raw`, which starts at stream offset `base`.
fn splice(raw: &[u8], base: u64, edits: &[(u64, u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut pos = 0usize;
    for (s, e, rep) in edits {
        let (s, e) = ((s - base) as usize, (e - base) as usize);
        debug_assert!(
            pos <= s && e <= raw.len(),
            "edits lie inside the forwarded bytes"
        );
        out.extend_from_slice(&raw[pos..s]);
        out.extend_from_slice(rep);
        pos = e;
    }
    out.extend_from_slice(&raw[pos..]);
    out
}

fn response_object(data: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    v.get("response").map(|r| r.to_string())
}

#[derive(Debug, Clone)]
pub struct StreamMeter {
    decoder: SseDecoder,
    core: Core,
    ending_style: EndingStyle,
    prompt_tokens: Option<u64>,
    /// Bytes of the unfinished block, from `decoder.position() - held.len()`. The decoder
    /// frames and reads values from these same bytes (`SseDecoder::feed_held`), so an
    /// unfinished event is held once, here (issue 12 #9).
    held: Vec<u8>,
    /// Bytes received while paused (or not yet processed when the pause happened).
    stash: Vec<u8>,
    upstream_closed: bool,
    bytes_in: u64,
    bytes_out: u64,
    /// This stream's share of the process-wide budget for held bytes.
    account: Account,
}

impl StreamMeter {
    pub fn new(cfg: MeterConfig) -> Self {
        StreamMeter {
            decoder: SseDecoder::new(cfg.max_event_size),
            core: Core {
                format: cfg.format,
                model: cfg.model,
                encoding: None,
                cfg_encoding: cfg.encoding,
                slots: Vec::new(),
                usage: Usage::default(),
                usage_seen: false,
                finishes: Vec::new(),
                choices: Vec::new(),
                info: None,
                open_block: None,
                message_started: false,
                response_template: None,
                last_seq: None,
                state: MeterState::Streaming,
                anomalies: Vec::new(),
                unknown_reported: false,
                after_done_reported: false,
                events: 0,
                limit: if cfg.shadow { None } else { cfg.limit },
                observed: match (if cfg.shadow { cfg.limit } else { None }, cfg.shadow_limit) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
                credit: cfg.credit,
                would_truncate_at: None,
                stream_error: None,
                strip_usage: cfg.strip_usage,
                partial_usage: cfg.partial_usage,
                prompt_tokens: cfg.prompt_tokens,
                edits: Vec::new(),
                template: Template::default(),
            },
            ending_style: cfg.ending,
            prompt_tokens: cfg.prompt_tokens,
            held: Vec::new(),
            stash: Vec::new(),
            upstream_closed: false,
            bytes_in: 0,
            bytes_out: 0,
            account: Account::new(cfg.budget),
        }
    }

    /// Bytes this meter holds for unfinished or stashed events (allocated capacity).
    pub fn held_bytes(&self) -> u64 {
        (self.held.capacity() + self.stash.capacity() + self.decoder.buffered_bytes()) as u64
    }

    /// Report what this meter holds to the budget; when the budget picked this stream, end it
    /// with the format's error ending, appended to `out`.
    fn settle_budget(&mut self, out: &mut FeedOutcome, chunk: &[u8]) {
        if !self.account.report(self.held_bytes())
            || matches!(self.core.state, MeterState::Truncated | MeterState::Failed)
        {
            return;
        }
        self.held = Vec::new();
        self.stash = Vec::new();
        self.decoder.release();
        let before = self.core.anomalies.len();
        self.core.anomaly(
            AnomalyKind::PendingBudgetExceeded,
            "the budget for unfinished events across streams ran out; this stream held the most"
                .into(),
            self.decoder.block_start(),
        );
        let tail = self.end_with(
            EndingStyle::Error,
            "api_error",
            "pending_budget_exceeded",
            "the gateway is holding too many unfinished upstream events",
        );
        self.core.state = MeterState::Failed;
        self.append(&mut out.forward, chunk, tail);
        out.anomalies
            .extend_from_slice(&self.core.anomalies[before..]);
        self.account.report(self.held_bytes());
    }

    /// One network read in, the bytes to send out.
    pub fn feed(&mut self, chunk: &[u8]) -> FeedOutcome {
        self.bytes_in += chunk.len() as u64;
        let mut out = match self.core.state {
            MeterState::Truncated | MeterState::Failed => FeedOutcome::empty(),
            MeterState::Paused => {
                self.stash.extend_from_slice(chunk);
                FeedOutcome::empty()
            }
            MeterState::Streaming | MeterState::Finished => self.process(chunk),
        };
        self.settle_budget(&mut out, chunk);
        out
    }

    fn process(&mut self, chunk: &[u8]) -> FeedOutcome {
        let chunk_start = self.decoder.position();
        let held_start = chunk_start - self.held.len() as u64;
        // With bytes held, the read is appended to them and framed there; otherwise it is
        // framed in place and only the unfinished block it leaves is copied to `held`.
        let appended = !self.held.is_empty();
        let anomalies_before = self.core.anomalies.len();
        let mut spans = Vec::new();
        let mut stop: Option<(Verdict, u64)> = None;
        let core = &mut self.core;
        let result = self.decoder.feed_held(&mut self.held, chunk, |ev| {
            spans.push((ev.start, ev.end));
            match core.on_event(ev) {
                Verdict::Forward => Flow::Continue,
                v => {
                    stop = Some((v, ev.start));
                    Flow::Stop
                }
            }
        });
        if let Err(e) = &result {
            self.core.state = MeterState::Failed;
            self.core.anomaly(
                AnomalyKind::EventTooLarge,
                e.to_string(),
                self.decoder.block_start(),
            );
        }
        let fwd_end = match stop {
            Some((_, start)) => start,
            None => self.decoder.block_start(),
        };
        let mut out = FeedOutcome {
            forward: self.assemble(chunk, held_start, chunk_start, fwd_end, appended),
            events: spans.len() as u32,
            spans,
            anomalies: self.core.anomalies[anomalies_before..].to_vec(),
            truncated: false,
            paused: false,
        };
        if result.is_err() {
            // The oversized block will never be forwarded; do not keep it. The client's stream
            // ends here with the format's error ending, right after the last whole event
            // (issue 12 #5: it used to end silently, or as an empty 200 when no event had
            // completed).
            self.held = Vec::new();
            self.decoder.release();
            let tail = self.end_with(
                EndingStyle::Error,
                "api_error",
                "event_too_large",
                "an upstream event exceeded the maximum event size",
            );
            self.append(&mut out.forward, chunk, tail);
        }
        match stop {
            Some((Verdict::Cut, _)) => {
                self.held.clear();
                let tail = self.end_with(
                    self.ending_style,
                    "rate_limit_error",
                    "completion_tokens_exceeded",
                    "the completion token limit was reached",
                );
                self.append(&mut out.forward, chunk, tail);
                out.truncated = true;
            }
            Some((Verdict::Pause, start)) => {
                // What resumes is [start, end of the read): the held event (when the read was
                // appended, `take_forward` left it in `held`) and the unconsumed rest.
                debug_assert!(self.stash.is_empty());
                let consumed = result.as_ref().map_or(chunk.len(), |n| *n);
                self.stash = if appended {
                    let mut stash = std::mem::take(&mut self.held);
                    stash.extend_from_slice(&chunk[consumed..]);
                    stash
                } else {
                    chunk[(start - chunk_start) as usize..].to_vec()
                };
                self.decoder.rewind_to_block(start);
                self.core.state = MeterState::Paused;
                out.paused = true;
            }
            _ => {}
        }
        self.bytes_out += out.forward.len(chunk) as u64;
        if self.upstream_closed && !out.paused && self.core.state != MeterState::Paused {
            // Upstream ended while paused and the grant drained the stash: finish now.
            let tail = self.finalize_close();
            if let Some(t) = tail {
                self.append(&mut out.forward, chunk, t);
            }
        }
        out
    }

    /// Forward `[held_start, fwd_end)`. `held` keeps what follows up to the decoder's
    /// position (the unfinished block, or the event a stop held back).
    fn take_forward(
        &mut self,
        chunk: &[u8],
        held_start: u64,
        chunk_start: u64,
        fwd_end: u64,
        appended: bool,
    ) -> Forward {
        if !appended {
            // Framed in place: the decoder copied only the unfinished tail to `held`.
            let n = (fwd_end - chunk_start) as usize;
            return if n == chunk.len() {
                Forward::Input
            } else {
                Forward::Bytes(chunk[..n].to_vec())
            };
        }
        let n = (fwd_end - held_start) as usize;
        if n == 0 {
            return Forward::Bytes(Vec::new());
        }
        // The front goes out; what stays is at most this read's bytes (the block that was
        // held ended in it). A large buffer is handed over as the output instead of copied,
        // a small one keeps its capacity for the next reads.
        if self.held.capacity() > KEEP_CAPACITY {
            let rest = self.held.split_off(n);
            Forward::Bytes(std::mem::replace(&mut self.held, rest))
        } else {
            let out = self.held[..n].to_vec();
            self.held.drain(..n);
            Forward::Bytes(out)
        }
    }

    /// `take_forward`, then the rewritten events of this read spliced in.
    fn assemble(
        &mut self,
        chunk: &[u8],
        held_start: u64,
        chunk_start: u64,
        fwd_end: u64,
        appended: bool,
    ) -> Forward {
        let edits = std::mem::take(&mut self.core.edits);
        let fwd = self.take_forward(chunk, held_start, chunk_start, fwd_end, appended);
        if edits.is_empty() {
            return fwd;
        }
        let raw = match fwd {
            Forward::Input => chunk.to_vec(),
            Forward::Bytes(v) => v,
        };
        Forward::Bytes(splice(&raw, held_start, &edits))
    }

    fn append(&mut self, fwd: &mut Forward, chunk: &[u8], tail: Vec<u8>) {
        self.bytes_out += tail.len() as u64;
        match fwd {
            Forward::Input => {
                let mut v = chunk.to_vec();
                v.extend_from_slice(&tail);
                *fwd = Forward::Bytes(v);
            }
            Forward::Bytes(v) => v.extend_from_slice(&tail),
        }
    }

    fn end_with(
        &mut self,
        style: EndingStyle,
        error_type: &str,
        code: &str,
        message: &str,
    ) -> Vec<u8> {
        let completion = self.completion_tokens();
        let format = self.core.format.unwrap_or(Format::OpenAiChat);
        let open = self.core.open_choices();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let snap = StreamSnapshot {
            info: self.core.info.as_ref(),
            fallback_model: self.core.model.as_deref(),
            open_choices: &open,
            open_block: self.core.open_block,
            message_started: self.core.message_started,
            response_template: self.core.response_template.as_deref(),
            last_sequence_number: self.core.last_seq,
            now_unix: now,
        };
        let bytes = ending(
            format,
            &snap,
            &EndingParams {
                style,
                error_type,
                code,
                message,
                usage: Some((self.prompt_tokens, completion)),
            },
        );
        self.core.state = match style {
            EndingStyle::Graceful => MeterState::Truncated,
            EndingStyle::Error if code == "completion_tokens_exceeded" => MeterState::Truncated,
            EndingStyle::Error => MeterState::Failed,
        };
        bytes
    }

    /// Add headroom. A paused stream resumes at the event that paused it; the outcome carries
    /// whatever can now be forwarded.
    pub fn grant(&mut self, tokens: u64) -> FeedOutcome {
        self.core.credit = Some(self.core.credit.unwrap_or(0).saturating_add(tokens));
        if self.core.state != MeterState::Paused {
            return FeedOutcome::empty();
        }
        let mut out = self.resume();
        self.settle_budget(&mut out, &[]);
        out
    }

    fn resume(&mut self) -> FeedOutcome {
        self.core.state = MeterState::Streaming;
        let stash = std::mem::take(&mut self.stash);
        let mut out = self.process(&stash);
        // `Input` would name the stash, which the caller never saw.
        if out.forward == Forward::Input {
            out.forward = Forward::Bytes(stash);
        }
        out
    }

    /// Remove the credit gate (e.g. the session closed its books): everything flows.
    pub fn clear_credit(&mut self) -> FeedOutcome {
        self.core.credit = None;
        if self.core.state != MeterState::Paused {
            return FeedOutcome::empty();
        }
        let mut out = self.resume();
        self.settle_budget(&mut out, &[]);
        out
    }

    /// End the stream now with the configured ending (used when a paused stream gets no more
    /// credit, or a policy decides to stop). Held and stashed bytes are dropped.
    pub fn truncate(&mut self, message: &str) -> Vec<u8> {
        if matches!(self.core.state, MeterState::Truncated | MeterState::Failed) {
            return Vec::new();
        }
        self.held = Vec::new();
        self.stash = Vec::new();
        self.decoder.release();
        let bytes = self.end_with(
            self.ending_style,
            "rate_limit_error",
            "completion_tokens_exceeded",
            message,
        );
        self.core.state = MeterState::Truncated;
        self.bytes_out += bytes.len() as u64;
        bytes
    }

    /// End the stream with an error event (upstream failure mid-stream). Any held partial
    /// event is dropped so the error lands on a clean event boundary.
    pub fn fail(&mut self, error_type: &str, code: &str, message: &str) -> Vec<u8> {
        if matches!(self.core.state, MeterState::Truncated | MeterState::Failed) {
            return Vec::new();
        }
        self.held = Vec::new();
        self.stash = Vec::new();
        self.decoder.release();
        let bytes = self.end_with(EndingStyle::Error, error_type, code, message);
        self.core.state = MeterState::Failed;
        self.bytes_out += bytes.len() as u64;
        bytes
    }

    /// Upstream end of stream. Returns the remaining held bytes of whole events; an unfinished
    /// event is dropped (a client's parser would discard it at EOF anyway) and reported as an
    /// anomaly. While paused, the stash stays until `grant` or `truncate`.
    pub fn close(&mut self) -> FeedOutcome {
        self.upstream_closed = true;
        let mut out = FeedOutcome::empty();
        if self.core.state == MeterState::Paused {
            return out;
        }
        let before = self.core.anomalies.len();
        if let Some(tail) = self.finalize_close() {
            self.bytes_out += tail.len() as u64;
            out.forward = Forward::Bytes(tail);
        }
        out.anomalies = self.core.anomalies[before..].to_vec();
        self.account.report(self.held_bytes());
        out
    }

    /// Upstream EOF: dispatch an event whose blank line ended the stream, report and drop an
    /// unfinished one, and release the rest of the held bytes.
    ///
    /// The unfinished block is never forwarded (issue 12 #6): the caller usually follows a
    /// stream that ended mid-event with `fail`, and an error ending written after half a block
    /// would become part of that block (its lines join the unfinished event's data, and an
    /// SDK raises a JSON error instead of seeing the ending). Dropped, the block is discarded
    /// exactly as the client's parser would discard it at EOF.
    fn finalize_close(&mut self) -> Option<Vec<u8>> {
        let offset = self.decoder.block_start();
        let held_start = self.decoder.position() - self.held.len() as u64;
        let core = &mut self.core;
        let mut held_back: Option<(Verdict, u64)> = None;
        let discarded = self.decoder.close_held(&self.held, |ev| {
            match core.on_event(ev) {
                Verdict::Forward => {}
                v => held_back = Some((v, ev.start)),
            }
            Flow::Continue
        });
        match held_back {
            Some((Verdict::Pause, start)) => {
                // Out of credit on the very last event: keep it for `grant`, as mid-stream.
                self.stash = std::mem::take(&mut self.held);
                self.decoder.rewind_to_block(start);
                self.core.state = MeterState::Paused;
                return None;
            }
            Some(_) => {
                self.held.clear();
                let style = self.ending_style;
                return Some(self.end_with(
                    style,
                    "rate_limit_error",
                    "completion_tokens_exceeded",
                    "the completion token limit was reached",
                ));
            }
            None => {}
        }
        if discarded > 0 && !matches!(self.core.state, MeterState::Truncated | MeterState::Failed) {
            self.core.anomaly(
                AnomalyKind::IncompleteEvent,
                format!("stream ended inside an event ({discarded} bytes discarded)"),
                offset,
            );
        }
        let mut held = std::mem::take(&mut self.held);
        held.truncate(held.len().saturating_sub(discarded as usize));
        let edits = std::mem::take(&mut self.core.edits);
        let held = if edits.is_empty() {
            held
        } else {
            splice(&held, held_start, &edits)
        };
        (!held.is_empty()).then_some(held)
    }

    // ---- readings ----

    pub fn completion_tokens(&mut self) -> u64 {
        self.core.total()
    }

    /// Delivered tokens per channel: (content, reasoning, tool arguments, refusal).
    pub fn tokens_by_channel(&mut self) -> [(Channel, u64); 4] {
        let mut out = [
            (Channel::Content, 0),
            (Channel::Reasoning, 0),
            (Channel::ToolArguments, 0),
            (Channel::Refusal, 0),
        ];
        for s in &mut self.core.slots {
            let n = s.exact();
            if let Some(e) = out.iter_mut().find(|(c, _)| *c == s.channel) {
                e.1 += n;
            }
        }
        out
    }

    pub fn usage(&self) -> Option<Usage> {
        self.core.usage_seen.then_some(self.core.usage)
    }

    pub fn state(&self) -> MeterState {
        self.core.state
    }

    pub fn format(&self) -> Option<Format> {
        self.core.format
    }

    /// Encoding and provenance in use (resolved at the first billed delta).
    pub fn encoding(&mut self) -> (Encoding, Provenance) {
        self.core.encoding();
        self.core.encoding.expect("resolved above")
    }

    pub fn finish_reasons(&self) -> &[(u32, String)] {
        &self.core.finishes
    }

    pub fn anomalies(&self) -> &[Anomaly] {
        &self.core.anomalies
    }

    pub fn stream_error(&self) -> Option<&StreamError> {
        self.core.stream_error.as_ref()
    }

    pub fn info(&self) -> Option<&StreamInfo<'static>> {
        self.core.info.as_ref()
    }

    pub fn events(&self) -> u64 {
        self.core.events
    }

    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    pub fn credit(&self) -> Option<u64> {
        self.core.credit
    }

    /// The cap as configured: the enforced one, else the observed one.
    pub fn limit(&self) -> Option<u64> {
        self.core.limit.or(self.core.observed)
    }

    pub fn would_truncate_at(&self) -> Option<u64> {
        self.core.would_truncate_at
    }

    pub fn upstream_closed(&self) -> bool {
        self.upstream_closed
    }

    /// Bytes kept back: an unfinished event plus anything stashed during a pause.
    pub fn pending_bytes(&self) -> usize {
        self.held.len() + self.stash.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::Encoding;

    fn chat_chunk(text: &str) -> String {
        format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}]}}\n\n",
            serde_json::to_string(text).unwrap()
        )
    }

    fn chat_stream(words: &[&str]) -> Vec<u8> {
        let mut s = String::new();
        for w in words {
            s.push_str(&chat_chunk(w));
        }
        s.push_str("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
        s.push_str("data: [DONE]\n\n");
        s.into_bytes()
    }

    const WORDS: &[&str] = &[
        "Hello", ",", " world", "!", " How", " are", " you", " today", "?", " 🙂",
    ];

    fn run(meter: &mut StreamMeter, bytes: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in bytes.chunks(chunk) {
            let r = meter.feed(c);
            out.extend(r.forward.to_vec(c));
        }
        if let Forward::Bytes(b) = meter.close().forward {
            out.extend(b);
        }
        out
    }

    #[test]
    fn passes_bytes_through_exactly_and_counts_exactly() {
        let bytes = chat_stream(WORDS);
        let text: String = WORDS.concat();
        for chunk in [1, 2, 3, 7, 64, bytes.len()] {
            let mut m = StreamMeter::new(MeterConfig {
                model: Some("gpt-4o".into()),
                ..Default::default()
            });
            let out = run(&mut m, &bytes, chunk);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&bytes),
                "chunk size {chunk}"
            );
            assert_eq!(
                m.completion_tokens(),
                Encoding::O200kBase.count(&text) as u64
            );
            assert_eq!(m.state(), MeterState::Finished);
            assert_eq!(m.format(), Some(Format::OpenAiChat));
            assert_eq!(m.finish_reasons(), [(0, "stop".to_string())]);
            assert!(m.anomalies().is_empty());
        }
    }

    #[test]
    fn whole_chunk_forwarded_without_copy() {
        let bytes = chat_stream(WORDS);
        let mut m = StreamMeter::new(MeterConfig::default());
        assert_eq!(m.feed(&bytes).forward, Forward::Input);
    }

    #[test]
    fn limit_cuts_before_the_crossing_event_with_graceful_ending() {
        let bytes = chat_stream(WORDS);
        for limit in 0..12u64 {
            for chunk in [1, 5, bytes.len()] {
                let mut m = StreamMeter::new(MeterConfig {
                    model: Some("gpt-4o".into()),
                    limit: Some(limit),
                    prompt_tokens: Some(3),
                    ..Default::default()
                });
                let out = run(&mut m, &bytes, chunk);
                let events = SseDecoder::default().feed_owned(&out).unwrap();
                // Delivered text never exceeds the limit, and is the longest prefix that fits.
                let mut delivered = String::new();
                for e in &events {
                    if let Ok(ex) = extract(Format::OpenAiChat, b"", e.data.as_bytes()) {
                        for d in ex.deltas {
                            delivered.push_str(&d.text);
                        }
                    }
                }
                let n = Encoding::O200kBase.count(&delivered) as u64;
                assert!(n <= limit, "limit {limit}: delivered {n}");
                assert_eq!(m.completion_tokens(), n);
                let full: String = WORDS.concat();
                if Encoding::O200kBase.count(&full) as u64 > limit {
                    assert_eq!(m.state(), MeterState::Truncated);
                    let k = delivered.len();
                    let next_word = WORDS
                        .iter()
                        .scan(0, |acc, w| {
                            *acc += w.len();
                            Some(*acc)
                        })
                        .position(|e| e > k)
                        .unwrap();
                    let mut with_next = delivered.clone();
                    with_next.push_str(WORDS[next_word]);
                    assert!(
                        Encoding::O200kBase.count(&with_next) as u64 > limit,
                        "cut too early at limit {limit}"
                    );
                    let last = events.last().unwrap();
                    assert_eq!(last.data, "[DONE]");
                    let fin = &events[events.len() - 2];
                    assert!(
                        fin.data.contains("\"finish_reason\":\"length\""),
                        "{}",
                        fin.data
                    );
                    assert!(fin.data.contains(&format!("\"completion_tokens\":{n}")));
                    assert!(fin.data.contains("\"id\":\"c1\""));
                } else {
                    assert_eq!(
                        String::from_utf8_lossy(&out),
                        String::from_utf8_lossy(&bytes)
                    );
                }
            }
        }
    }

    #[test]
    fn shadow_never_cuts_but_reports() {
        let bytes = chat_stream(WORDS);
        let mut m = StreamMeter::new(MeterConfig {
            limit: Some(3),
            shadow: true,
            ..Default::default()
        });
        let out = run(&mut m, &bytes, 9);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(m.would_truncate_at(), Some(3));
        assert_eq!(m.state(), MeterState::Finished);
    }

    #[test]
    fn an_observed_cap_beside_an_enforced_one_reports_and_the_enforced_one_cuts() {
        let bytes = chat_stream(WORDS);
        let cut_alone = {
            let mut m = StreamMeter::new(MeterConfig {
                limit: Some(5),
                ..Default::default()
            });
            run(&mut m, &bytes, 9)
        };
        let mut m = StreamMeter::new(MeterConfig {
            limit: Some(5),
            shadow_limit: Some(3),
            ..Default::default()
        });
        let out = run(&mut m, &bytes, 9);
        // The observed cap changes nothing on the wire: the same bytes as the limit alone.
        assert_eq!(out, cut_alone);
        assert_eq!(m.would_truncate_at(), Some(3));
        assert_eq!(m.state(), MeterState::Truncated);
        assert_eq!(m.completion_tokens(), 5);
        // An observed cap above the enforced one is never reached.
        let mut m = StreamMeter::new(MeterConfig {
            limit: Some(3),
            shadow_limit: Some(5),
            ..Default::default()
        });
        run(&mut m, &bytes, 9);
        assert_eq!(m.would_truncate_at(), None);
        assert_eq!(m.completion_tokens(), 3);
    }

    #[test]
    fn credit_pauses_and_grant_resumes_exactly() {
        let bytes = chat_stream(WORDS);
        let mut m = StreamMeter::new(MeterConfig {
            credit: Some(2),
            ..Default::default()
        });
        let mut out = Vec::new();
        let mut pauses = 0;
        for c in bytes.chunks(13) {
            let r = m.feed(c);
            out.extend(r.forward.to_vec(c));
            let mut paused = r.paused;
            while paused || m.state() == MeterState::Paused {
                pauses += 1;
                assert!(m.completion_tokens() <= m.credit().unwrap());
                let r = m.grant(1);
                out.extend(r.forward.to_vec(&[]));
                paused = r.paused;
            }
        }
        out.extend(m.close().forward.to_vec(&[]));
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&bytes)
        );
        assert!(pauses > 3);
        assert_eq!(m.state(), MeterState::Finished);
    }

    #[test]
    fn close_while_paused_then_grant_flushes() {
        let bytes = chat_stream(WORDS);
        let mut m = StreamMeter::new(MeterConfig {
            credit: Some(1),
            ..Default::default()
        });
        let mut out = m.feed(&bytes).forward.to_vec(&bytes);
        assert_eq!(m.state(), MeterState::Paused);
        assert!(matches!(m.close().forward, Forward::Bytes(ref b) if b.is_empty()));
        out.extend(m.grant(1000).forward.to_vec(&[]));
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&bytes)
        );
    }

    #[test]
    fn truncate_while_paused_sends_ending() {
        let bytes = chat_stream(WORDS);
        let mut m = StreamMeter::new(MeterConfig {
            credit: Some(1),
            ..Default::default()
        });
        let mut out = m.feed(&bytes).forward.to_vec(&bytes);
        out.extend(m.truncate("budget exhausted"));
        let s = String::from_utf8(out).unwrap();
        assert!(s.ends_with("data: [DONE]\n\n"));
        assert!(s.contains("\"finish_reason\":\"length\""));
        assert_eq!(m.state(), MeterState::Truncated);
        assert!(m.feed(b"data: x\n\n").forward.to_vec(&[]).is_empty());
    }

    #[test]
    fn malformed_event_is_forwarded_and_reported() {
        let bytes = b"data: {\"object\":\"chat.completion.chunk\",\"choices\":[]}\n\ndata: {oops\n\ndata: [DONE]\n\n";
        let mut m = StreamMeter::new(MeterConfig::default());
        let r = m.feed(bytes);
        assert_eq!(r.forward, Forward::Input);
        assert_eq!(r.anomalies.len(), 1);
        assert_eq!(r.anomalies[0].kind, AnomalyKind::MalformedJson);
        assert_eq!(r.anomalies[0].offset, 55);
        assert_eq!(m.state(), MeterState::Finished);
    }

    #[test]
    fn upstream_reset_mid_event_gets_clean_error_ending() {
        let bytes = chat_stream(WORDS);
        let mut m = StreamMeter::new(MeterConfig::default());
        let cut = bytes.len() / 2;
        let mut out = m.feed(&bytes[..cut]).forward.to_vec(&bytes[..cut]);
        out.extend(m.fail("api_error", "upstream_error", "upstream connection reset"));
        let events = SseDecoder::default().feed_owned(&out).unwrap();
        // Only whole events went out, then the error chunk and [DONE].
        assert!(events[events.len() - 2].data.starts_with("{\"error\""));
        assert_eq!(events.last().unwrap().data, "[DONE]");
        let s = String::from_utf8(out).unwrap();
        assert!(!s.contains("\n\n\n"));
        assert_eq!(m.state(), MeterState::Failed);
    }

    #[test]
    fn anthropic_stream_counts_blocks_and_truncates_with_block_stop() {
        let mut s = String::new();
        s.push_str("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n");
        s.push_str("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
        for w in WORDS {
            s.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{}}}}}\n\n", serde_json::to_string(w).unwrap()));
        }
        s.push_str(
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        );
        s.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":12}}\n\n");
        s.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        let bytes = s.into_bytes();
        let mut m = StreamMeter::new(MeterConfig::default());
        assert_eq!(run(&mut m, &bytes, 11), bytes);
        assert_eq!(m.format(), Some(Format::Anthropic));
        assert_eq!(m.usage().unwrap().output_tokens, Some(12));
        assert_eq!(m.usage().unwrap().input_tokens, Some(9));
        assert_eq!(m.encoding(), (Encoding::O200kBase, Provenance::Estimated));

        let mut m = StreamMeter::new(MeterConfig {
            limit: Some(3),
            ..Default::default()
        });
        let out = String::from_utf8(run(&mut m, &bytes, 11)).unwrap();
        assert!(
            out.contains(
                "event: content_block_stop\ndata: {\"index\":0,\"type\":\"content_block_stop\"}"
            ) || out.contains("\"type\":\"content_block_stop\"")
        );
        assert!(out.contains("\"stop_reason\":\"max_tokens\""));
        assert!(out.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        assert_eq!(m.state(), MeterState::Truncated);
    }

    fn with_include_usage(words: &[&str]) -> Vec<u8> {
        let mut s = String::new();
        for w in words {
            s.push_str(&format!(
                "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}],\"usage\":null}}\n\n",
                serde_json::to_string(w).unwrap()
            ));
        }
        s.push_str("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":9,\"total_tokens\":12}}\n\n");
        s.push_str("data: [DONE]\n\n");
        s.into_bytes()
    }

    #[test]
    fn strip_usage_removes_nulls_and_the_usage_chunk_but_keeps_the_reading() {
        let bytes = with_include_usage(WORDS);
        for chunk in [1, 7, bytes.len()] {
            let mut m = StreamMeter::new(MeterConfig {
                strip_usage: true,
                ..Default::default()
            });
            let out = String::from_utf8(run(&mut m, &bytes, chunk)).unwrap();
            assert!(!out.contains("usage"), "{out}");
            assert_eq!(out.matches("data: ").count(), WORDS.len() + 1);
            assert!(out.ends_with("data: [DONE]\n\n"));
            assert_eq!(m.usage().unwrap().output_tokens, Some(9));
            for ev in SseDecoder::default().feed_owned(out.as_bytes()).unwrap() {
                if ev.data != "[DONE]" {
                    let _: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
                }
            }
        }
    }

    #[test]
    fn partial_usage_is_added_to_every_event() {
        let bytes = chat_stream(WORDS);
        let mut m = StreamMeter::new(MeterConfig {
            partial_usage: true,
            prompt_tokens: Some(5),
            ..Default::default()
        });
        let out = run(&mut m, &bytes, 13);
        let mut so_far = String::new();
        for ev in SseDecoder::default().feed_owned(&out).unwrap() {
            if ev.data == "[DONE]" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
            if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                so_far.push_str(t);
            }
            let n = Encoding::O200kBase.count(&so_far) as u64;
            assert_eq!(v["usage"]["completion_tokens"], n);
            assert_eq!(v["usage"]["total_tokens"], n + 5);
        }
        // The upstream's own final usage is never replaced.
        let bytes = with_include_usage(WORDS);
        let mut m = StreamMeter::new(MeterConfig {
            partial_usage: true,
            ..Default::default()
        });
        let out = String::from_utf8(run(&mut m, &bytes, 64)).unwrap();
        assert!(out.contains(
            "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":9,\"total_tokens\":12}"
        ));
        assert!(!out.contains("\"usage\":null"));
    }

    #[test]
    fn oversized_event_fails_the_stream() {
        let mut m = StreamMeter::new(MeterConfig {
            max_event_size: 64,
            ..Default::default()
        });
        let big = format!("data: {}\n\n", "x".repeat(100));
        let r = m.feed(big.as_bytes());
        assert_eq!(m.state(), MeterState::Failed);
        assert_eq!(r.anomalies[0].kind, AnomalyKind::EventTooLarge);
        // Nothing of the oversized event goes out, only the error ending.
        let out = String::from_utf8(r.forward.to_vec(&[])).unwrap();
        assert!(!out.contains("xxx"));
        assert!(out.starts_with("data: {\"error\""), "{out}");
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert!(m.fail("api_error", "x", "y").is_empty(), "one ending only");
    }

    /// Issue 12 #5: every format ends with its error ending, after the whole events that came
    /// before the oversized one, whether or not the oversized event ever ends, however the
    /// stream is split.
    #[test]
    fn oversized_event_ends_with_the_formats_error_ending() {
        let head: [(Format, &str); 3] = [
            (Format::OpenAiChat, &chat_chunk("Hi")),
            (
                Format::Anthropic,
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n",
            ),
            (
                Format::OpenAiResponses,
                "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"r\",\"status\":\"in_progress\"}}\n\n",
            ),
        ];
        for (format, first) in head {
            for blank in [true, false] {
                for events_before in [0, 2] {
                    for split in [7, 1000, usize::MAX] {
                        let mut s = first.repeat(events_before).into_bytes();
                        let kept = s.len();
                        s.extend_from_slice(b"data: ");
                        s.extend(std::iter::repeat_n(b'x', 5000));
                        if blank {
                            s.extend_from_slice(b"\n\n");
                        }
                        let mut m = StreamMeter::new(MeterConfig {
                            format: Some(format),
                            max_event_size: 4096,
                            ..Default::default()
                        });
                        let mut out = Vec::new();
                        for c in s.chunks(split.min(s.len())) {
                            out.extend(m.feed(c).forward.to_vec(c));
                        }
                        out.extend(m.close().forward.to_vec(b""));
                        out.extend(m.fail("api_error", "upstream_error", "closed"));
                        assert_eq!(m.state(), MeterState::Failed);
                        assert_eq!(&out[..kept], &s[..kept], "{format:?}");
                        let events = SseDecoder::default().feed_owned(&out[kept..]).unwrap();
                        let last = events
                            .iter()
                            .rfind(|e| e.data != "[DONE]")
                            .expect("an error event");
                        let ex = crate::extract::extract(
                            format,
                            if last.event == "message" {
                                b""
                            } else {
                                last.event.as_bytes()
                            },
                            last.data.as_bytes(),
                        )
                        .unwrap();
                        assert_eq!(ex.kind, EventKind::Error, "{format:?} {blank} {split}");
                        assert!(!String::from_utf8_lossy(&out).contains("xxx"));
                    }
                }
            }
        }
    }

    /// Issue 12 #6: an upstream that closes inside an event (here 1 MiB of `data:` lines, and
    /// a half line) gets its error ending on a clean block boundary: the partial block is
    /// dropped, so a client parses exactly the whole events, then the error ending.
    #[test]
    fn error_ending_after_an_unfinished_event_is_not_glued_to_it() {
        for partial in [
            "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"".to_string(),
            "data: x\n".repeat(1 << 17),
            "data: x\r\ndata: y\r".to_string(),
            ": comment without line end".to_string(),
        ] {
            let whole = chat_stream(&["Hello", " world"]);
            let whole = &whole[..whole.len() - "data: [DONE]\n\n".len()];
            let mut s = whole.to_vec();
            s.extend_from_slice(partial.as_bytes());
            let mut m = StreamMeter::new(MeterConfig::default());
            let out = run(&mut m, &s, 4096);
            assert_eq!(out, whole, "the unfinished block is not forwarded");
            assert_eq!(m.anomalies()[0].kind, AnomalyKind::IncompleteEvent);
            let mut out = out;
            out.extend(m.fail("api_error", "upstream_error", "closed mid-event"));
            let events = SseDecoder::default().feed_owned(&out).unwrap();
            let n = events.len();
            assert_eq!(events[n - 1].data, "[DONE]");
            let err: serde_json::Value = serde_json::from_str(&events[n - 2].data).unwrap();
            assert_eq!(err["error"]["code"], "upstream_error");
            for e in &events[..n - 2] {
                serde_json::from_str::<serde_json::Value>(&e.data).unwrap();
            }
        }
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    /// Issue 12 #9: over the shared budget, the stream holding the most ends with its
    /// format's error ending at its next read; the others go on.
    #[test]
    fn over_the_budget_the_largest_stream_ends_with_an_error() {
        let budget: &'static Budget = Box::leak(Box::new(Budget::new(1 << 20)));
        let new = || {
            StreamMeter::new(MeterConfig {
                format: Some(Format::OpenAiChat),
                budget,
                ..Default::default()
            })
        };
        let (mut big, mut small) = (new(), new());
        let mut partial = b"data: {\"choices\":[{\"delta\":{\"content\":\"".to_vec();
        partial.extend(std::iter::repeat_n(b'x', 700 << 10));
        assert!(big.feed(&partial).forward.to_vec(&partial).is_empty());
        assert_eq!(big.state(), MeterState::Streaming);
        // Held once: the raw bytes to forward, which the decoder reads its values from.
        assert!(
            big.held_bytes() < (700 << 10) + (1 << 10),
            "{}",
            big.held_bytes()
        );
        let r = small.feed(&partial[..350 << 10]);
        assert!(r.forward.to_vec(&[]).is_empty());
        assert_eq!(
            small.state(),
            MeterState::Streaming,
            "the reporter is not the largest"
        );
        // The largest stream ends at its next read, with an error ending and nothing of the
        // unfinished event.
        let r = big.feed(b"xx");
        let out = String::from_utf8(r.forward.to_vec(b"xx")).unwrap();
        assert!(out.starts_with("data: {\"error\""), "{out}");
        assert!(out.contains("pending_budget_exceeded"));
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert_eq!(big.state(), MeterState::Failed);
        assert_eq!(r.anomalies[0].kind, AnomalyKind::PendingBudgetExceeded);
        assert!(big.held_bytes() < 1024);
        assert!(budget.total() < 1 << 20);
        // The other stream finishes normally.
        let mut rest = partial[350 << 10..].to_vec();
        rest.extend_from_slice(b"\"}}]}\n\ndata: [DONE]\n\n");
        small.feed(&rest);
        assert_eq!(small.state(), MeterState::Finished);
        assert!(small.held_bytes() <= 2 * KEEP_CAPACITY as u64);
        drop((big, small));
        assert_eq!(budget.total(), 0);
    }
    /// Issue 12 #9: a stream holding one unfinished event near the size limit holds it once
    /// (the raw bytes it will forward, which the decoder reads its values from), not once as
    /// raw bytes and again as the decoder's data: what it reports to the budget stays near 1x
    /// the limit, for one long data line as for many short ones, and the event still goes out
    /// whole and metered when it ends.
    #[test]
    fn an_unfinished_event_near_the_limit_is_held_once() {
        let cap = 4 << 20;
        let read = 64 << 10;
        let budget: &'static Budget = Box::leak(Box::new(Budget::new(0)));
        let head = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"";
        let long = format!("{head}{}\"}}}}]}}\n", "x".repeat(cap - 200));
        // The same JSON spread over many data lines (joined with LF, which JSON allows
        // between its tokens).
        let line = format!("data: {}\n", "1,".repeat(500));
        let many = format!(
            "{head}hi\"}}}}],\"pad\":[\n{}data: 1]}}\n",
            line.repeat((cap - 200) / line.len())
        );
        for body in [long, many] {
            let mut m = StreamMeter::new(MeterConfig {
                format: Some(Format::OpenAiChat),
                max_event_size: cap,
                budget,
                ..Default::default()
            });
            let mut out = Vec::new();
            for c in body.as_bytes().chunks(read) {
                out.extend(m.feed(c).forward.to_vec(c));
            }
            assert!(out.is_empty());
            assert_eq!(m.state(), MeterState::Streaming);
            assert_eq!(m.pending_bytes(), body.len());
            let held = budget.total();
            assert_eq!(held, m.held_bytes());
            assert!(
                held <= (cap + read) as u64 && (held as f64) < 1.05 * body.len() as f64,
                "{held} bytes held for an unfinished event of {}",
                body.len()
            );
            let r = m.feed(b"\n");
            out.extend(r.forward.to_vec(b"\n"));
            assert_eq!(out.len(), body.len() + 1, "the event goes out whole");
            assert!(m.completion_tokens() > 0);
            assert!(m.held_bytes() <= KEEP_CAPACITY as u64);
        }
    }
}

#[cfg(test)]
mod schema_deviation_tests {
    //! Issue 12 #7: unbilled fields of another type than the schema's (a float `created`, a
    //! numeric `id`, extra members, objects where strings were expected) must not make events
    //! "malformed": the billed text and usage are read whatever those fields look like.
    use super::*;

    fn ev(event: &str, data: &str) -> String {
        let head = if event.is_empty() {
            String::new()
        } else {
            format!("event: {event}\n")
        };
        format!("{head}data: {data}\n\n")
    }

    const TEXTS: &[&str] = &[" one", " two", " three", " four", " five", " six", " seven"];

    /// A stream of `format` carrying `TEXTS`, its unbilled fields clean or deviant.
    fn stream(format: Format, deviant: bool) -> String {
        let j = |t: &str| serde_json::to_string(t).unwrap();
        let mut s = String::new();
        match format {
            Format::OpenAiChat | Format::OpenAiCompletions => {
                let head = if deviant {
                    r#""id":12345,"object":{"x":1},"created":1700000000.25,"model":["gpt-4o"],"system_fingerprint":7,"extra":{"deep":[1,2,{"a":null}]},"#
                } else {
                    r#""id":"c1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o","#
                };
                let (idx, fin) = if deviant {
                    (
                        r#""index":0.0"#,
                        r#""finish_reason":false,"logprobs":"none""#,
                    )
                } else {
                    (r#""index":0"#, r#""finish_reason":null"#)
                };
                for t in TEXTS {
                    let body = if format == Format::OpenAiChat {
                        format!(r#""delta":{{"content":{}}}"#, j(t))
                    } else {
                        format!(r#""text":{}"#, j(t))
                    };
                    s += &ev(
                        "",
                        &format!("{{{head}\"choices\":[{{{idx},{body},{fin}}}]}}"),
                    );
                }
                let usage =
                    r#""usage":{"prompt_tokens":3,"completion_tokens":7,"total_tokens":10}"#;
                s += &ev("", &format!("{{{head}\"choices\":[],{usage}}}"));
                s += &ev("", "[DONE]");
            }
            Format::Anthropic => {
                let (id, model, extra) = if deviant {
                    (
                        "42",
                        "{\"name\":\"claude\"}",
                        ",\"created\":1.5,\"extra\":[true]",
                    )
                } else {
                    ("\"msg_1\"", "\"claude-x\"", "")
                };
                s += &ev(
                    "message_start",
                    &format!(
                        r#"{{"type":"message_start","message":{{"id":{id},"model":{model},"usage":{{"input_tokens":3,"output_tokens":1}}{extra}}}{extra}}}"#
                    ),
                );
                let index = if deviant { "\"0\"" } else { "0" };
                for t in TEXTS {
                    s += &ev(
                        "content_block_delta",
                        &format!(
                            r#"{{"type":"content_block_delta","index":{index},"delta":{{"type":"text_delta","text":{}{extra}}}{extra}}}"#,
                            j(t)
                        ),
                    );
                }
                let stop = if deviant { "{\"r\":1}" } else { "\"end_turn\"" };
                s += &ev(
                    "message_delta",
                    &format!(
                        r#"{{"type":"message_delta","delta":{{"stop_reason":{stop}}},"usage":{{"output_tokens":7}}{extra}}}"#
                    ),
                );
                s += &ev("message_stop", r#"{"type":"message_stop"}"#);
            }
            Format::OpenAiResponses => {
                let (id, created, seq_of, extra) = if deviant {
                    ("7", "1.7e9", "\"seq\"", ",\"extra\":{\"a\":[1.5]}")
                } else {
                    ("\"resp_1\"", "1700000000", "", "")
                };
                let seq = |n: usize| {
                    if seq_of.is_empty() {
                        n.to_string()
                    } else {
                        seq_of.to_string()
                    }
                };
                s += &ev(
                    "response.created",
                    &format!(
                        r#"{{"type":"response.created","sequence_number":{},"response":{{"id":{id},"model":"gpt-4o","created_at":{created},"status":"in_progress","usage":null{extra}}}{extra}}}"#,
                        seq(0)
                    ),
                );
                let out_index = if deviant { "\"0\"" } else { "0" };
                for (i, t) in TEXTS.iter().enumerate() {
                    s += &ev(
                        "response.output_text.delta",
                        &format!(
                            r#"{{"type":"response.output_text.delta","sequence_number":{},"item_id":5,"output_index":{out_index},"content_index":0,"delta":{}{extra}}}"#,
                            seq(i + 1),
                            j(t)
                        ),
                    );
                }
                s += &ev(
                    "response.completed",
                    &format!(
                        r#"{{"type":"response.completed","sequence_number":{},"response":{{"id":{id},"created_at":{created},"status":"completed","usage":{{"input_tokens":3,"output_tokens":7,"total_tokens":10}}{extra}}}}}"#,
                        seq(9)
                    ),
                );
            }
        }
        s
    }

    fn meter(format: Format, limit: Option<u64>) -> StreamMeter {
        StreamMeter::new(MeterConfig {
            format: Some(format),
            model: Some("gpt-4o".into()),
            limit,
            ..Default::default()
        })
    }

    #[test]
    fn deviant_unbilled_fields_are_metered_like_a_clean_stream() {
        for format in Format::ALL {
            let clean = stream(format, false);
            let deviant = stream(format, true);
            assert_ne!(clean, deviant);
            for split in [1, 13, usize::MAX] {
                let mut readings = Vec::new();
                for s in [&clean, &deviant] {
                    let mut m = meter(format, None);
                    for c in s.as_bytes().chunks(split.min(s.len())) {
                        m.feed(c);
                    }
                    m.close();
                    assert!(m.anomalies().is_empty(), "{format:?}: {:?}", m.anomalies());
                    readings.push((
                        m.completion_tokens(),
                        m.usage().map(|u| (u.input_tokens, u.output_tokens)),
                        m.state(),
                    ));
                }
                assert_eq!(readings[0], readings[1], "{format:?} split {split}");
                assert_eq!(readings[0].0, 7, "{format:?}");
            }
        }
    }

    #[test]
    fn deviant_unbilled_fields_do_not_lift_the_limit() {
        for format in Format::ALL {
            for deviant in [false, true] {
                let s = stream(format, deviant);
                let mut m = meter(format, Some(5));
                let mut out = Vec::new();
                for c in s.as_bytes().chunks(17) {
                    out.extend(m.feed(c).forward.to_vec(c));
                }
                assert_eq!(m.state(), MeterState::Truncated, "{format:?} {deviant}");
                assert_eq!(m.completion_tokens(), 5, "{format:?} {deviant}");
                // What went out parses, and carries exactly five words.
                let text = String::from_utf8(out).unwrap();
                let words = TEXTS.iter().filter(|t| text.contains(&j_esc(t))).count();
                assert_eq!(words, 5, "{format:?} {deviant}");
            }
        }
    }

    fn j_esc(t: &str) -> String {
        serde_json::to_string(t).unwrap()
    }
}

#[cfg(test)]
mod template_path_tests {
    use super::*;

    fn meter(format: Format, limit: Option<u64>, credit: Option<u64>) -> StreamMeter {
        StreamMeter::new(MeterConfig {
            format: Some(format),
            model: Some("gpt-4o".into()),
            limit,
            credit,
            ..Default::default()
        })
    }

    fn ev(event: &str, data: &str) -> String {
        let head = if event.is_empty() {
            String::new()
        } else {
            format!("event: {event}\n")
        };
        format!("{head}data: {data}\n\n")
    }

    /// The meter reads repeated-shape events through its template only when nothing but
    /// counting is asked of it; a limit that is never reached forces the general path. Both
    /// must agree on everything the meter reports, and on every synthetic ending.
    #[test]
    fn template_fast_path_agrees_with_the_general_path() {
        let texts = [
            "Hi", " there", "\n", "\"q\"", "東京", "🙂", "", "a\\b", " x", "y", "'s", "end",
        ];
        let j = |t: &str| serde_json::to_string(t).unwrap();
        let mut streams = Vec::new();
        let base = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"gpt-4o","choices":[{"index":0,"delta":"#;
        let mut s = ev(
            "",
            &format!(
                "{base}{{\"role\":\"assistant\",\"content\":\"\"}},\"finish_reason\":null}}]}}"
            ),
        );
        for t in texts {
            s += &ev(
                "",
                &format!("{base}{{\"content\":{}}},\"finish_reason\":null}}]}}", j(t)),
            );
            s += &ev(
                "",
                &format!(
                    "{base}{{\"reasoning_content\":{}}},\"finish_reason\":null}}]}}",
                    j(t)
                ),
            );
        }
        s += &ev("", &format!("{base}{{}},\"finish_reason\":\"stop\"}}]}}"));
        s += &ev("", "[DONE]");
        streams.push((Format::OpenAiChat, s));
        // Usage asked for: `"usage":null` in every chunk, then the usage chunk.
        let mut s = String::new();
        for t in texts {
            s += &ev(
                "",
                &format!(
                    "{base}{{\"content\":{}}},\"finish_reason\":null}}],\"usage\":null}}",
                    j(t)
                ),
            );
        }
        s += &ev(
            "",
            r#"{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":9,"total_tokens":11}}"#,
        );
        s += &ev("", "[DONE]");
        streams.push((Format::OpenAiChat, s));
        let mut s = ev(
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-x","usage":{"input_tokens":3,"output_tokens":1}}}"#,
        );
        for (i, t) in texts.iter().enumerate() {
            s += &ev(
                "content_block_delta",
                &format!(
                    r#"{{"type":"content_block_delta","index":{},"delta":{{"type":"text_delta","text":{}}}}}"#,
                    i % 2,
                    j(t)
                ),
            );
            s += &ev("ping", r#"{"type": "ping"}"#);
        }
        s += &ev("message_stop", r#"{"type":"message_stop"}"#);
        streams.push((Format::Anthropic, s));
        let mut s = ev(
            "response.created",
            r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","model":"gpt-4o","created_at":1,"status":"in_progress","usage":null}}"#,
        );
        for (i, t) in texts.iter().enumerate() {
            s += &ev(
                "response.output_text.delta",
                &format!(
                    r#"{{"type":"response.output_text.delta","sequence_number":{},"item_id":"m","output_index":{},"content_index":0,"delta":{}}}"#,
                    i + 1,
                    i % 3,
                    j(t)
                ),
            );
        }
        streams.push((Format::OpenAiResponses, s));
        for (format, stream) in streams {
            for split in [1, 7, 64, stream.len()] {
                let run = |limit: Option<u64>, credit: Option<u64>| {
                    let mut m = meter(format, limit, credit);
                    let mut out = Vec::new();
                    for c in stream.as_bytes().chunks(split) {
                        let o = m.feed(c);
                        out.extend(o.forward.to_vec(c));
                        out.extend(format!("|{}|", m.completion_tokens()).bytes());
                    }
                    out.extend(m.close().forward.to_vec(b""));
                    let report = format!(
                        "{:?} {:?} {:?} {:?} {:?} {:?}",
                        m.tokens_by_channel(),
                        m.state(),
                        m.core.choices,
                        m.core.last_seq,
                        m.core.open_block,
                        m.core.anomalies
                    );
                    // The ending a cut would send now names the choices and sequence seen.
                    let ending = m.fail("api_error", "x", "y");
                    (out, report, String::from_utf8_lossy(&ending).into_owned())
                };
                let fast = run(None, None);
                let general = run(Some(u64::MAX), None);
                assert_eq!(fast, general, "{format:?} split {split}");
                // Under a credit the fast path takes what certainly fits; near the credit the
                // general path decides. A credit never reached agrees with the general path.
                let credited = run(None, Some(u64::MAX / 2));
                assert_eq!(credited, general, "{format:?} split {split} (credit)");
                // A credit that runs out pauses before the very event a limit of the same
                // size cuts at (the cut adds its ending after the same bytes).
                for cap in [1u64, 2, 3, 5, 8, 13] {
                    let stop = |limit: Option<u64>, credit: Option<u64>| {
                        let mut m = meter(format, limit, credit);
                        let mut out = Vec::new();
                        for c in stream.as_bytes().chunks(split) {
                            let o = m.feed(c);
                            out.extend(o.forward.to_vec(c));
                            if o.paused || o.truncated {
                                break;
                            }
                        }
                        (out, m.completion_tokens())
                    };
                    let (paused, paused_tokens) = stop(None, Some(cap));
                    let (cut, cut_tokens) = stop(Some(cap), None);
                    assert_eq!(
                        paused_tokens, cut_tokens,
                        "{format:?} split {split} cap {cap}"
                    );
                    assert!(
                        cut.starts_with(&paused),
                        "{format:?} split {split} cap {cap}"
                    );
                }
            }
        }
    }
}
