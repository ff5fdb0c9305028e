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
//!
//! Layout: `core.rs` decides per event (count, fit against the limit and the credit, rewrite
//! usage members); this file is the stream around it (SSE framing, holding and stashing bytes,
//! endings, grants); `tests.rs` has the tests.

mod core;
#[cfg(test)]
mod tests;

use self::core::{splice, Core, Verdict};
use crate::budget::{Account, Budget};
use crate::endings::{ending, EndingParams, EndingStyle, StreamSnapshot};
use crate::extract::template::Template;
use crate::extract::{Anomaly, AnomalyKind, Channel, Format, StreamError, StreamInfo, Usage};
use crate::sse::{Flow, SseDecoder, DEFAULT_MAX_EVENT_SIZE, KEEP_CAPACITY};
use crate::tokens::{Encoding, Provenance};

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
                unusable_reported: false,
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
