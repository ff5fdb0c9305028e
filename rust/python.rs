//! The one PyO3 binding file: thin wrappers that convert at the seam and nothing else.
//! Classes are frozen; mutable state sits behind a Mutex (uncontended: one stream is driven
//! by one task), which keeps the classes safe on free-threaded Python too.

use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList};

use crate::crypto;
use crate::endings::EndingStyle;
use crate::extract::{self, Anomaly, Format, Usage};
use crate::meter::{self, FeedOutcome, Forward, MeterConfig, MeterState};
use crate::sse::{self, Flow, OwnedEvent};
use crate::tokens::{self, Encoding, IncrementalCounter, Provenance};

pyo3::create_exception!(
    _core,
    SseError,
    PyValueError,
    "An SSE stream broke a hard limit (an event larger than the maximum event size)."
);
pyo3::create_exception!(
    _core,
    UnknownModelError,
    PyKeyError,
    "The model's tokenizer is not known; pass allow_estimate=True to count with the stated fallback."
);

/// Inputs longer than this are counted with the interpreter lock released.
const DETACH_BYTES: usize = 8 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic inside a call already surfaced as a Python exception; keep the state usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn parse_encoding(name: &str) -> PyResult<Encoding> {
    Encoding::from_name(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown encoding {name:?}; embedded encodings are cl100k_base and o200k_base"
        ))
    })
}

/// Encoding for an encoding name or a model name.
fn resolve_name(name: &str, allow_estimate: bool) -> PyResult<(Encoding, Provenance)> {
    if let Some(enc) = Encoding::from_name(name) {
        return Ok((enc, Provenance::Counted));
    }
    match tokens::encoding_for_model(name) {
        Some(enc) => Ok((enc, Provenance::Counted)),
        None if allow_estimate => Ok(tokens::resolve_model(name)),
        None => Err(UnknownModelError::new_err(format!(
            "no known tokenizer for model {name:?}; pass allow_estimate=True to count with \
             {} (provenance 'estimated')",
            tokens::FALLBACK_ENCODING.name()
        ))),
    }
}

fn parse_format(name: &str) -> PyResult<Option<Format>> {
    if name == "auto" {
        return Ok(None);
    }
    Format::from_name(name).map(Some).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown stream format {name:?}; expected auto, openai-chat, openai-responses, \
             openai-completions or anthropic"
        ))
    })
}

// ---------------------------------------------------------------- SSE

/// One server-sent event as the WHATWG parser dispatches it: `event` (the type, "message"
/// when the stream named none), `data` (its data lines joined by "\n"), `id` (the last event
/// id, None when never set) and `retry` (milliseconds, when the event set it).
#[pyclass(frozen, module = "meterkit._core", name = "SseEvent")]
pub struct PySseEvent {
    #[pyo3(get)]
    event: String,
    #[pyo3(get)]
    data: String,
    #[pyo3(get)]
    id: Option<String>,
    #[pyo3(get)]
    retry: Option<u64>,
    #[pyo3(get)]
    start: u64,
    #[pyo3(get)]
    end: u64,
}

impl From<OwnedEvent> for PySseEvent {
    fn from(e: OwnedEvent) -> Self {
        PySseEvent {
            event: e.event,
            data: e.data,
            id: e.id,
            retry: e.retry,
            start: e.start,
            end: e.end,
        }
    }
}

#[pymethods]
impl PySseEvent {
    #[getter]
    fn span(&self) -> (u64, u64) {
        (self.start, self.end)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        match other.cast::<PySseEvent>() {
            Ok(o) => {
                let o = o.get();
                (
                    &self.event,
                    &self.data,
                    &self.id,
                    self.retry,
                    self.start,
                    self.end,
                ) == (&o.event, &o.data, &o.id, o.retry, o.start, o.end)
            }
            Err(_) => false,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "SseEvent(event={:?}, data={:?}, id={:?}, retry={:?}, span=({}, {}))",
            self.event, self.data, self.id, self.retry, self.start, self.end
        )
    }
}

/// An incremental `text/event-stream` decoder, exact to the WHATWG rules: feed it bytes as
/// they arrive, split anywhere (CRLF and a BOM split across reads included), and it returns
/// the events completed so far. An event larger than `max_event_size` bytes raises
/// `SseError` rather than growing without bound.
#[pyclass(frozen, module = "meterkit._core", name = "SseDecoder")]
pub struct PySseDecoder {
    inner: Mutex<sse::SseDecoder>,
}

fn sse_err(e: sse::SseError) -> PyErr {
    SseError::new_err(e.to_string())
}

#[pymethods]
impl PySseDecoder {
    #[new]
    #[pyo3(signature = (*, max_event_size = sse::DEFAULT_MAX_EVENT_SIZE))]
    fn new(max_event_size: usize) -> PyResult<Self> {
        if max_event_size == 0 {
            return Err(PyValueError::new_err("max_event_size must be positive"));
        }
        Ok(PySseDecoder {
            inner: Mutex::new(sse::SseDecoder::new(max_event_size)),
        })
    }

    /// Feed bytes; returns the events completed by them.
    fn feed(&self, data: &[u8]) -> PyResult<Vec<PySseEvent>> {
        let events = lock(&self.inner).feed_owned(data).map_err(sse_err)?;
        Ok(events.into_iter().map(Into::into).collect())
    }

    /// End of stream: dispatches an event completed by the final line end, discards an
    /// unfinished one (see `pending_bytes` before calling to know whether there was one).
    fn close(&self) -> Vec<PySseEvent> {
        let mut out = Vec::new();
        lock(&self.inner).close(|e| {
            out.push(OwnedEvent::from(e).into());
            Flow::Continue
        });
        out
    }

    #[getter]
    fn position(&self) -> u64 {
        lock(&self.inner).position()
    }

    #[getter]
    fn pending_bytes(&self) -> u64 {
        lock(&self.inner).pending_bytes()
    }

    #[getter]
    fn last_event_id(&self) -> String {
        String::from_utf8_lossy(lock(&self.inner).last_event_id()).into_owned()
    }

    #[getter]
    fn max_event_size(&self) -> usize {
        lock(&self.inner).max_event_size()
    }
}

/// One SSE event as bytes: `data` split into `data:` lines (CR, LF and CRLF all split),
/// with optional `event`, `id` and `retry`, ended by a blank line.
#[pyfunction]
#[pyo3(signature = (data, *, event = None, id = None, retry = None))]
fn encode_event<'py>(
    py: Python<'py>,
    data: &str,
    event: Option<&str>,
    id: Option<&str>,
    retry: Option<u64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut out = Vec::with_capacity(data.len() + 16);
    sse::encode_event(&mut out, event, data, id, retry)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(PyBytes::new(py, &out))
}

/// An SSE comment line (`: text`), e.g. a keep-alive; clients ignore it.
#[pyfunction]
fn encode_comment<'py>(py: Python<'py>, text: &str) -> Bound<'py, PyBytes> {
    let mut out = Vec::new();
    sse::encode_comment(&mut out, text);
    PyBytes::new(py, &out)
}

// ---------------------------------------------------------------- tokens

/// The exact number of tokens of `text` in `encoding` (cl100k_base, o200k_base…), the
/// count `tiktoken`'s `encode_ordinary` would give, without building the token list.
#[pyfunction]
#[pyo3(signature = (text, encoding))]
fn count_tokens(py: Python<'_>, text: &str, encoding: &str) -> PyResult<usize> {
    let enc = parse_encoding(encoding)?;
    Ok(if text.len() > DETACH_BYTES {
        py.detach(|| enc.count(text))
    } else {
        enc.count(text)
    })
}

/// Sum of the counts of several texts (one call for a whole prompt).
#[pyfunction]
#[pyo3(signature = (texts, encoding))]
fn count_tokens_total(py: Python<'_>, texts: Vec<String>, encoding: &str) -> PyResult<u64> {
    let enc = parse_encoding(encoding)?;
    let total_len: usize = texts.iter().map(String::len).sum();
    let run = || texts.iter().map(|t| enc.count(t) as u64).sum::<u64>();
    Ok(if total_len > DETACH_BYTES {
        py.detach(run)
    } else {
        run()
    })
}

/// Exact count of the concatenation of `deltas`, pushed one by one through the incremental
/// counter (what the meter does per event; also the benchmark of that path without Python
/// call overhead per delta).
#[pyfunction]
#[pyo3(signature = (deltas, encoding))]
fn count_deltas(py: Python<'_>, deltas: Vec<String>, encoding: &str) -> PyResult<u64> {
    let enc = parse_encoding(encoding)?;
    Ok(py.detach(|| {
        let mut c = IncrementalCounter::new(enc);
        for d in &deltas {
            c.push(d);
        }
        c.count()
    }))
}

/// Frame and extract a whole buffer in Rust: (events, billed deltas, billed bytes). Used by
/// the benchmark to measure framing + extraction alone, without counting.
#[pyfunction]
fn frame_and_extract(data: &[u8], format: &str) -> PyResult<(u64, u64, u64)> {
    let format = parse_format(format)?
        .ok_or_else(|| PyValueError::new_err("frame_and_extract needs an explicit format"))?;
    let (mut events, mut deltas, mut bytes) = (0u64, 0u64, 0u64);
    let mut d = sse::SseDecoder::default();
    d.feed(data, |ev| {
        events += 1;
        if let Ok(ex) = extract::extract(format, ev.event, ev.data) {
            deltas += ex.deltas.len() as u64;
            bytes += ex.deltas.iter().map(|x| x.text.len() as u64).sum::<u64>();
        }
        Flow::Continue
    })
    .map_err(sse_err)?;
    Ok((events, deltas, bytes))
}

/// The encoding a model uses, or None when it is not known.
#[pyfunction]
fn encoding_name_for_model(model: &str) -> Option<&'static str> {
    tokens::encoding_for_model(model).map(Encoding::name)
}

/// (encoding, provenance) for any model: unknown models get the fallback, "estimated".
#[pyfunction]
fn resolve_model(model: &str) -> (&'static str, &'static str) {
    let (enc, prov) = tokens::resolve_model(model);
    (enc.name(), prov.name())
}

/// An incremental token count for one growing text: `push(delta)` as the pieces arrive,
/// `total` is always exactly the one-shot count of the joined text (BPE merges across delta
/// boundaries are re-counted, not summed). Built for an encoding name or a model name;
/// unknown models raise unless `allow_estimate=True` (then counted with o200k_base and
/// `provenance == "estimated"`).
#[pyclass(frozen, module = "meterkit._core", name = "TokenCounter")]
pub struct PyTokenCounter {
    inner: Mutex<IncrementalCounter>,
    provenance: Provenance,
}

#[pymethods]
impl PyTokenCounter {
    #[new]
    #[pyo3(signature = (encoding_or_model = "o200k_base", *, allow_estimate = false))]
    fn new(encoding_or_model: &str, allow_estimate: bool) -> PyResult<Self> {
        let (enc, provenance) = resolve_name(encoding_or_model, allow_estimate)?;
        Ok(PyTokenCounter {
            inner: Mutex::new(IncrementalCounter::new(enc)),
            provenance,
        })
    }

    fn push(&self, py: Python<'_>, text: &str) {
        if text.len() > DETACH_BYTES {
            py.detach(|| lock(&self.inner).push(text));
        } else {
            lock(&self.inner).push(text);
        }
    }

    /// Exact count of everything pushed so far.
    #[getter]
    fn count(&self) -> u64 {
        lock(&self.inner).count()
    }

    /// Final count; equals the one-shot count of the concatenated text.
    fn finish(&self) -> u64 {
        lock(&self.inner).count()
    }

    #[getter]
    fn encoding(&self) -> &'static str {
        lock(&self.inner).encoding().name()
    }

    #[getter]
    fn provenance(&self) -> &'static str {
        self.provenance.name()
    }

    #[getter]
    fn pushed_bytes(&self) -> u64 {
        lock(&self.inner).pushed_bytes()
    }

    fn __repr__(&self) -> String {
        let mut c = lock(&self.inner);
        format!(
            "TokenCounter(encoding={:?}, provenance={:?}, count={})",
            c.encoding().name(),
            self.provenance.name(),
            c.count()
        )
    }
}

// ---------------------------------------------------------------- extraction

/// The usage an upstream reported in its stream, normalised across formats:
/// `input_tokens`, `output_tokens`, `cached_input_tokens`, `reasoning_tokens`,
/// `cache_creation_input_tokens`, `total_tokens` (None where the upstream said nothing).
#[pyclass(frozen, module = "meterkit._core", name = "Usage")]
#[derive(Clone)]
pub struct PyUsage {
    #[pyo3(get)]
    input_tokens: Option<u64>,
    #[pyo3(get)]
    output_tokens: Option<u64>,
    #[pyo3(get)]
    total_tokens: Option<u64>,
    #[pyo3(get)]
    cached_input_tokens: Option<u64>,
    #[pyo3(get)]
    cache_creation_input_tokens: Option<u64>,
    #[pyo3(get)]
    reasoning_tokens: Option<u64>,
}

impl From<Usage> for PyUsage {
    fn from(u: Usage) -> Self {
        PyUsage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            total_tokens: u.total_tokens,
            cached_input_tokens: u.cached_input_tokens,
            cache_creation_input_tokens: u.cache_creation_input_tokens,
            reasoning_tokens: u.reasoning_tokens,
        }
    }
}

impl PyUsage {
    fn fields(&self) -> [(&'static str, Option<u64>); 6] {
        [
            ("input_tokens", self.input_tokens),
            ("output_tokens", self.output_tokens),
            ("total_tokens", self.total_tokens),
            ("cached_input_tokens", self.cached_input_tokens),
            (
                "cache_creation_input_tokens",
                self.cache_creation_input_tokens,
            ),
            ("reasoning_tokens", self.reasoning_tokens),
        ]
    }
}

#[pymethods]
impl PyUsage {
    /// The dimensions the upstream reported (absent ones omitted).
    fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.fields() {
            if let Some(v) = v {
                d.set_item(k, v)?;
            }
        }
        Ok(d)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        match other.cast::<PyUsage>() {
            Ok(o) => self.fields() == o.get().fields(),
            Err(_) => false,
        }
    }

    fn __repr__(&self) -> String {
        let parts: Vec<String> = self
            .fields()
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
            .collect();
        format!("Usage({})", parts.join(", "))
    }
}

/// Something in a stream that was not what its format promises (malformed JSON, an event
/// after the end, a usage that went down…): `kind`, `detail`, and the `event` index. The
/// bytes still pass; anomalies are reported, never fatal.
#[pyclass(frozen, module = "meterkit._core", name = "Anomaly")]
pub struct PyAnomaly {
    #[pyo3(get)]
    kind: &'static str,
    #[pyo3(get)]
    message: String,
    #[pyo3(get)]
    offset: u64,
}

impl From<&Anomaly> for PyAnomaly {
    fn from(a: &Anomaly) -> Self {
        PyAnomaly {
            kind: a.kind.name(),
            message: a.message.clone(),
            offset: a.offset,
        }
    }
}

#[pymethods]
impl PyAnomaly {
    fn __repr__(&self) -> String {
        format!(
            "Anomaly(kind={:?}, offset={}, message={:?})",
            self.kind, self.offset, self.message
        )
    }
}

/// What one event of a wire format carries: its `kind`, the billed text `deltas`
/// (choice, part, channel, text), `finish_reasons`, `usage` and an upstream `error`.
#[pyclass(frozen, module = "meterkit._core", name = "ParsedEvent")]
pub struct PyParsedEvent {
    /// data / done / ping / error / other
    #[pyo3(get)]
    kind: &'static str,
    /// (choice, part, channel, text) per billed delta.
    #[pyo3(get)]
    deltas: Vec<(u32, u32, &'static str, String)>,
    #[pyo3(get)]
    finish_reasons: Vec<(u32, String)>,
    #[pyo3(get)]
    usage: Option<PyUsage>,
    /// (type, message, code) when the event is an error.
    #[pyo3(get)]
    error: Option<(String, String, Option<String>)>,
}

#[pymethods]
impl PyParsedEvent {
    fn __repr__(&self) -> String {
        format!(
            "ParsedEvent(kind={:?}, deltas={:?}, finish_reasons={:?}, error={:?})",
            self.kind, self.deltas, self.finish_reasons, self.error
        )
    }
}

fn kind_name(k: extract::EventKind) -> &'static str {
    match k {
        extract::EventKind::Data => "data",
        extract::EventKind::Done => "done",
        extract::EventKind::Ping => "ping",
        extract::EventKind::Error => "error",
        extract::EventKind::Other => "other",
    }
}

/// Extract one event's billed text, finish reasons, usage and errors.
#[pyfunction]
#[pyo3(signature = (format, data, event = None))]
fn parse_event(format: &str, data: &str, event: Option<&str>) -> PyResult<PyParsedEvent> {
    let format = parse_format(format)?.ok_or_else(|| {
        PyValueError::new_err("parse_event needs an explicit format (use detect_format first)")
    })?;
    let event = event.filter(|e| *e != "message").unwrap_or("");
    let ex = extract::extract(format, event.as_bytes(), data.as_bytes())
        .map_err(|m| PyValueError::new_err(format!("malformed {} event: {m}", format.name())))?;
    Ok(PyParsedEvent {
        kind: kind_name(ex.kind),
        deltas: ex
            .deltas
            .into_iter()
            .map(|d| (d.choice, d.part, d.channel.name(), d.text.into_owned()))
            .collect(),
        finish_reasons: ex.finishes.into_vec(),
        usage: ex.usage.map(Into::into),
        error: ex.error.map(|e| (e.kind, e.message, e.code)),
    })
}

/// The stream format, from a request path and/or a first event. None when neither says.
#[pyfunction]
#[pyo3(signature = (path = None, *, event = None, data = None))]
fn detect_format(
    path: Option<&str>,
    event: Option<&str>,
    data: Option<&str>,
) -> Option<&'static str> {
    if let Some(f) = path.and_then(Format::from_path) {
        return Some(f.name());
    }
    let event = event.filter(|e| *e != "message").unwrap_or("");
    data.and_then(|d| Format::detect(event.as_bytes(), d.as_bytes()))
        .map(Format::name)
}

// ---------------------------------------------------------------- meter

/// What one `StreamMeter` call released: `forward` (the bytes to write to the client now —
/// the input itself when every event in it passes whole), `events` and their byte `spans`,
/// the running `completion_tokens` and `usage`, the meter's `state`, whether this call
/// `truncated` the stream or left it `paused` for credit, and the new `anomalies`.
#[pyclass(frozen, module = "meterkit._core", name = "FeedResult")]
pub struct PyFeedResult {
    /// Bytes to write to the client now (the input object itself when it passes whole).
    #[pyo3(get)]
    forward: Py<PyBytes>,
    #[pyo3(get)]
    events: u32,
    spans: Vec<(u64, u64)>,
    #[pyo3(get)]
    completion_tokens: u64,
    usage: Option<Usage>,
    #[pyo3(get)]
    state: &'static str,
    #[pyo3(get)]
    truncated: bool,
    #[pyo3(get)]
    paused: bool,
    anomalies: Vec<Anomaly>,
}

#[pymethods]
impl PyFeedResult {
    /// Absolute stream spans of the events this call dispatched.
    #[getter]
    fn spans(&self) -> Vec<(u64, u64)> {
        self.spans.clone()
    }

    #[getter]
    fn anomalies(&self) -> Vec<PyAnomaly> {
        self.anomalies.iter().map(Into::into).collect()
    }

    /// Usage the upstream has reported so far (merged across events), if any.
    #[getter]
    fn usage(&self) -> Option<PyUsage> {
        self.usage.map(Into::into)
    }

    /// The upstream's end-of-stream marker has gone through.
    #[getter]
    fn finished(&self) -> bool {
        self.state == MeterState::Finished.name()
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "FeedResult(forward={} bytes, events={}, completion_tokens={}, state={:?}, truncated={}, paused={}, anomalies={})",
            self.forward.bind(py).as_bytes().len(),
            self.events,
            self.completion_tokens,
            self.state,
            self.truncated,
            self.paused,
            self.anomalies.len()
        )
    }
}

/// The per-stream meter: one `feed(chunk)` per network read frames the SSE events, extracts
/// the billed text of the wire format (`format`: openai-chat, openai-completions,
/// openai-responses, anthropic, or "auto" from `path`/the first event), counts it exactly
/// with the model's BPE (`model`, or `encoding`), and decides per event:
///
/// - `limit`: at most this many completion tokens reach the client; the event that would go
///   over is replaced by the format's ending (`ending="graceful"`: finish_reason "length" /
///   stop_reason "max_tokens" / response.incomplete, then the end marker; `"error_chunk"`: the
///   format's error event). With `shadow=True` nothing is cut: `would_truncate_at` records
///   where it would have been. `shadow_limit`: a cap only observed beside an enforced
///   `limit` (the smaller of the two observed caps counts when both are given with `shadow`).
/// - `credit`: tokens the stream may deliver before it must be granted more. The meter pauses
///   *before* the event that would overrun it (`state == "paused"`, nothing of that event
///   released); `grant(n)` resumes at exactly that event, `clear_credit()` removes the gate.
/// - `strip_usage`: drop the usage the upstream sends when the client did not ask for it
///   (OpenAI's usage-only chunk and null `usage` members), while still reading it.
/// - `partial_usage`: add the running usage (prompt and completion so far) to every
///   forwarded event.
/// - `prompt_tokens`: the prompt's count, for partial usage and endings.
/// - `max_event_size`: an upstream event larger than this fails the stream with a clear
///   error instead of being held.
///
/// `close()` at the end of the upstream body; `truncate()` and `fail()` end it early with
/// the right bytes. Readings: `completion_tokens`, `tokens_by_channel`, `usage`,
/// `provenance` ("counted" or "estimated"), `finish_reasons`, `anomalies`, `stream_error`.
#[pyclass(frozen, module = "meterkit._core", name = "StreamMeter")]
pub struct PyStreamMeter {
    inner: Mutex<meter::StreamMeter>,
}

impl PyStreamMeter {
    fn result(
        &self,
        py: Python<'_>,
        m: &mut meter::StreamMeter,
        out: FeedOutcome,
        input: Option<&Bound<'_, PyBytes>>,
    ) -> PyFeedResult {
        let forward = match (&out.forward, input) {
            (Forward::Input, Some(b)) => b.clone().unbind(),
            (Forward::Input, None) => PyBytes::new(py, b"").unbind(),
            (Forward::Bytes(v), _) => PyBytes::new(py, v).unbind(),
        };
        PyFeedResult {
            forward,
            events: out.events,
            spans: out.spans,
            completion_tokens: m.completion_tokens(),
            usage: m.usage(),
            state: m.state().name(),
            truncated: out.truncated,
            paused: out.paused,
            anomalies: out.anomalies,
        }
    }
}

#[pymethods]
impl PyStreamMeter {
    #[new]
    #[pyo3(signature = (
        format = "auto", model = None, *, path = None, encoding = None, limit = None,
        shadow = false, shadow_limit = None, ending = "graceful", credit = None,
        prompt_tokens = None, max_event_size = sse::DEFAULT_MAX_EVENT_SIZE, strip_usage = false, partial_usage = false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        format: &str,
        model: Option<String>,
        path: Option<&str>,
        encoding: Option<&str>,
        limit: Option<u64>,
        shadow: bool,
        shadow_limit: Option<u64>,
        ending: &str,
        credit: Option<u64>,
        prompt_tokens: Option<u64>,
        max_event_size: usize,
        strip_usage: bool,
        partial_usage: bool,
    ) -> PyResult<Self> {
        let format = parse_format(format)?.or_else(|| path.and_then(Format::from_path));
        let encoding = encoding.map(parse_encoding).transpose()?;
        let ending = EndingStyle::from_name(ending).ok_or_else(|| {
            PyValueError::new_err(format!(
                "unknown ending {ending:?}; expected graceful_close or error_chunk"
            ))
        })?;
        if max_event_size == 0 {
            return Err(PyValueError::new_err("max_event_size must be positive"));
        }
        Ok(PyStreamMeter {
            inner: Mutex::new(meter::StreamMeter::new(MeterConfig {
                format,
                model,
                encoding,
                max_event_size,
                limit,
                shadow,
                shadow_limit,
                ending,
                prompt_tokens,
                credit,
                strip_usage,
                partial_usage,
                budget: &crate::budget::GLOBAL,
            })),
        })
    }

    /// One network read in: what to forward, and the meter's readings after it.
    fn feed(&self, py: Python<'_>, chunk: &Bound<'_, PyBytes>) -> PyFeedResult {
        let mut m = lock(&self.inner);
        let out = m.feed(chunk.as_bytes());
        self.result(py, &mut m, out, Some(chunk))
    }

    /// Add headroom (tokens); a paused stream resumes at the event that paused it.
    fn grant(&self, py: Python<'_>, tokens: u64) -> PyFeedResult {
        let mut m = lock(&self.inner);
        let out = m.grant(tokens);
        self.result(py, &mut m, out, None)
    }

    /// Remove the credit gate entirely; a paused stream resumes.
    fn clear_credit(&self, py: Python<'_>) -> PyFeedResult {
        let mut m = lock(&self.inner);
        let out = m.clear_credit();
        self.result(py, &mut m, out, None)
    }

    /// End the stream now with the configured ending; returns the bytes to send.
    #[pyo3(signature = (message = "the completion token limit was reached"))]
    fn truncate<'py>(&self, py: Python<'py>, message: &str) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &lock(&self.inner).truncate(message))
    }

    /// End the stream with the format's error event (upstream failure); returns the bytes.
    #[pyo3(signature = (message, *, error_type = "api_error", code = "upstream_error"))]
    fn fail<'py>(
        &self,
        py: Python<'py>,
        message: &str,
        error_type: &str,
        code: &str,
    ) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &lock(&self.inner).fail(error_type, code, message))
    }

    /// Upstream end of stream.
    fn close(&self, py: Python<'_>) -> PyFeedResult {
        let mut m = lock(&self.inner);
        let out = m.close();
        self.result(py, &mut m, out, None)
    }

    #[getter]
    fn format(&self) -> Option<&'static str> {
        lock(&self.inner).format().map(Format::name)
    }

    #[getter]
    fn state(&self) -> &'static str {
        lock(&self.inner).state().name()
    }

    #[getter]
    fn completion_tokens(&self) -> u64 {
        lock(&self.inner).completion_tokens()
    }

    #[getter]
    fn tokens_by_channel(&self) -> Vec<(&'static str, u64)> {
        lock(&self.inner)
            .tokens_by_channel()
            .iter()
            .map(|(c, n)| (c.name(), *n))
            .collect()
    }

    #[getter]
    fn usage(&self) -> Option<PyUsage> {
        lock(&self.inner).usage().map(Into::into)
    }

    #[getter]
    fn encoding(&self) -> &'static str {
        lock(&self.inner).encoding().0.name()
    }

    #[getter]
    fn provenance(&self) -> &'static str {
        lock(&self.inner).encoding().1.name()
    }

    #[getter]
    fn finish_reasons(&self) -> Vec<(u32, String)> {
        lock(&self.inner).finish_reasons().to_vec()
    }

    #[getter]
    fn anomalies(&self) -> Vec<PyAnomaly> {
        lock(&self.inner)
            .anomalies()
            .iter()
            .map(Into::into)
            .collect()
    }

    /// (type, message, code) of an error the upstream reported in the stream.
    #[getter]
    fn stream_error(&self) -> Option<(String, String, Option<String>)> {
        lock(&self.inner)
            .stream_error()
            .map(|e| (e.kind.clone(), e.message.clone(), e.code.clone()))
    }

    /// (id, model) the stream named.
    #[getter]
    fn stream_id(&self) -> Option<String> {
        lock(&self.inner)
            .info()
            .and_then(|i| i.id.as_deref().map(str::to_owned))
    }

    #[getter]
    fn stream_model(&self) -> Option<String> {
        lock(&self.inner)
            .info()
            .and_then(|i| i.model.as_deref().map(str::to_owned))
    }

    #[getter]
    fn events(&self) -> u64 {
        lock(&self.inner).events()
    }

    #[getter]
    fn bytes_in(&self) -> u64 {
        lock(&self.inner).bytes_in()
    }

    #[getter]
    fn bytes_out(&self) -> u64 {
        lock(&self.inner).bytes_out()
    }

    #[getter]
    fn credit(&self) -> Option<u64> {
        lock(&self.inner).credit()
    }

    #[getter]
    fn limit(&self) -> Option<u64> {
        lock(&self.inner).limit()
    }

    #[getter]
    fn would_truncate_at(&self) -> Option<u64> {
        lock(&self.inner).would_truncate_at()
    }

    #[getter]
    fn pending_bytes(&self) -> usize {
        lock(&self.inner).pending_bytes()
    }

    fn __repr__(&self) -> String {
        let mut m = lock(&self.inner);
        format!(
            "StreamMeter(format={:?}, state={:?}, completion_tokens={}, events={})",
            m.format().map(Format::name),
            m.state().name(),
            m.completion_tokens(),
            m.events()
        )
    }
}

// ---------------------------------------------------------------- crypto (payment layer)

fn value_err(message: String) -> PyErr {
    PyValueError::new_err(message)
}

fn bytes32(data: &[u8], what: &str) -> PyResult<[u8; 32]> {
    data.try_into().map_err(|_| {
        PyValueError::new_err(format!("{what} must be 32 bytes, got {} bytes", data.len()))
    })
}

/// An int argument as u64, with a ValueError (not OverflowError) when it does not fit.
fn chain_id_u64(chain_id: &Bound<'_, PyInt>) -> PyResult<u64> {
    chain_id.extract::<u64>().map_err(|_| {
        PyValueError::new_err(format!(
            "chain_id must be an integer in [0, 2**64), got {}",
            chain_id
        ))
    })
}

/// Set the process-wide budget for bytes that streams hold for unfinished events; `None`
/// removes it. Over it, the stream holding the most ends with its format's error ending.
#[pyfunction]
#[pyo3(signature = (limit))]
fn set_pending_budget(limit: Option<u64>) -> PyResult<()> {
    if limit == Some(0) {
        return Err(PyValueError::new_err(
            "the pending budget must be positive (None: no budget)",
        ));
    }
    crate::budget::GLOBAL.set_limit(limit);
    Ok(())
}

/// The process-wide budget for held bytes, `None` when unbounded.
#[pyfunction]
fn pending_budget() -> Option<u64> {
    crate::budget::GLOBAL.limit()
}

/// Bytes all live meters hold for unfinished events, as last reported.
#[pyfunction]
fn pending_bytes_total() -> u64 {
    crate::budget::GLOBAL.total()
}

/// MPP challenge id (draft-httpauth-payment): base64url-nopad HMAC-SHA256 of the seven
/// parameters joined with "|". `request` is the base64url wire form of the request JSON.
#[pyfunction]
#[pyo3(signature = (secret, realm, method, intent, request, expires = "", digest = "", opaque = ""))]
#[allow(clippy::too_many_arguments)]
fn challenge_id(
    secret: &[u8],
    realm: &str,
    method: &str,
    intent: &str,
    request: &str,
    expires: &str,
    digest: &str,
    opaque: &str,
) -> String {
    crypto::challenge_id(
        secret, realm, method, intent, request, expires, digest, opaque,
    )
}

/// Whether `id` is the challenge id of these parameters (constant-time comparison).
#[pyfunction]
#[pyo3(signature = (
    secret, id, realm, method, intent, request, expires = "", digest = "", opaque = ""
))]
#[allow(clippy::too_many_arguments)]
fn verify_challenge_id(
    secret: &[u8],
    id: &str,
    realm: &str,
    method: &str,
    intent: &str,
    request: &str,
    expires: &str,
    digest: &str,
    opaque: &str,
) -> bool {
    crypto::verify_challenge_id(
        secret, id, realm, method, intent, request, expires, digest, opaque,
    )
}

/// Keccak-256 of `data` (Ethereum's hash, not NIST SHA3-256).
#[pyfunction]
fn keccak256<'py>(py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &crypto::keccak256(data))
}

/// EIP-55 checksummed form of a "0x" + 40 hex digit address.
#[pyfunction]
fn checksum_address(address: &str) -> PyResult<String> {
    let a = crypto::parse_address(address, "address").map_err(value_err)?;
    Ok(crypto::checksum_address(&a))
}

/// EIP-712 digest of an EIP-3009 TransferWithAuthorization (uint256 values as decimal strings).
#[pyfunction]
#[pyo3(signature = (
    *, name, version, chain_id, verifying_contract, from_address, to, value, valid_after,
    valid_before, nonce
))]
#[allow(clippy::too_many_arguments)]
fn eip3009_digest<'py>(
    py: Python<'py>,
    name: &str,
    version: &str,
    chain_id: &Bound<'_, PyInt>,
    verifying_contract: &str,
    from_address: &str,
    to: &str,
    value: &str,
    valid_after: &str,
    valid_before: &str,
    nonce: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let d = crypto::eip3009_digest(
        name,
        version,
        chain_id_u64(chain_id)?,
        verifying_contract,
        from_address,
        to,
        value,
        valid_after,
        valid_before,
        nonce,
    )
    .map_err(value_err)?;
    Ok(PyBytes::new(py, &d))
}

/// EIP-712 digest of a payment-channel voucher, `Voucher(bytes32 channelId, uintN
/// cumulativeAmount)` in the dialect of `profile`: "tip20" (uint96, domain "TIP20 Channel
/// Reserve"), "evm" (uint128, "EVM Payment Channel") or "tempo-v1" (uint128, "Tempo Stream
/// Channel"); domain version "1", verifying contract the escrow.
#[pyfunction]
#[pyo3(signature = (*, chain_id, escrow, channel_id, cumulative_amount, profile = "tip20"))]
fn voucher_digest<'py>(
    py: Python<'py>,
    chain_id: &Bound<'_, PyInt>,
    escrow: &str,
    channel_id: &str,
    cumulative_amount: &str,
    profile: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let d = crypto::profile_voucher_digest(
        crypto::ChannelProfile::parse(profile).map_err(value_err)?,
        chain_id_u64(chain_id)?,
        escrow,
        channel_id,
        cumulative_amount,
    )
    .map_err(value_err)?;
    Ok(PyBytes::new(py, &d))
}

/// An `evm` session channel's id ("0x" + 64 hex digits): keccak256(abi.encode(payer, payee,
/// token, salt, authorizedSigner, escrow, chainId)).
#[pyfunction]
#[pyo3(signature = (*, payer, payee, token, salt, authorized_signer, escrow, chain_id))]
fn evm_channel_id(
    payer: &str,
    payee: &str,
    token: &str,
    salt: &str,
    authorized_signer: &str,
    escrow: &str,
    chain_id: &Bound<'_, PyInt>,
) -> PyResult<String> {
    let id = crypto::evm_channel_id(
        payer,
        payee,
        token,
        salt,
        authorized_signer,
        escrow,
        chain_id_u64(chain_id)?,
    )
    .map_err(value_err)?;
    Ok(crypto::to_hex_prefixed(&id))
}

/// A payment channel's id ("0x" + 64 hex digits), as the escrow contract computes it.
#[pyfunction]
#[pyo3(signature = (
    *, payer, payee, operator, token, salt, authorized_signer, expiring_nonce_hash, escrow,
    chain_id
))]
#[allow(clippy::too_many_arguments)]
fn channel_id(
    payer: &str,
    payee: &str,
    operator: &str,
    token: &str,
    salt: &str,
    authorized_signer: &str,
    expiring_nonce_hash: &str,
    escrow: &str,
    chain_id: &Bound<'_, PyInt>,
) -> PyResult<String> {
    let id = crypto::channel_id(
        payer,
        payee,
        operator,
        token,
        salt,
        authorized_signer,
        expiring_nonce_hash,
        escrow,
        chain_id_u64(chain_id)?,
    )
    .map_err(value_err)?;
    Ok(crypto::to_hex_prefixed(&id))
}

/// The checksummed address that signed a 32-byte digest (65-byte r‖s‖v or 64-byte EIP-2098
/// signature; high-s refused).
#[pyfunction]
fn recover_address(digest: &[u8], signature: &[u8]) -> PyResult<String> {
    let digest = bytes32(digest, "digest")?;
    let a = crypto::recover_signer(&digest, signature).map_err(|e| value_err(e.to_string()))?;
    Ok(crypto::checksum_address(&a))
}

/// Sign a 32-byte digest: 65 bytes r‖s‖v, RFC 6979, low s, v 27/28.
#[pyfunction]
fn sign_digest<'py>(
    py: Python<'py>,
    secret_key: &[u8],
    digest: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let key = bytes32(secret_key, "secret_key")?;
    let digest = bytes32(digest, "digest")?;
    let sig = crypto::sign_digest(&key, &digest).map_err(|e| value_err(e.to_string()))?;
    Ok(PyBytes::new(py, &sig))
}

/// The checksummed address of a 32-byte secret key.
#[pyfunction]
fn address_of(secret_key: &[u8]) -> PyResult<String> {
    let key = bytes32(secret_key, "secret_key")?;
    let a = crypto::address_of(&key).map_err(|e| value_err(e.to_string()))?;
    Ok(crypto::checksum_address(&a))
}

#[pymodule]
#[pyo3(name = "_core")]
fn meterkit_core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Benchmarks refuse to report figures from a debug build.
    m.add(
        "BUILD_PROFILE",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    m.add("DEFAULT_MAX_EVENT_SIZE", sse::DEFAULT_MAX_EVENT_SIZE)?;
    m.add("FALLBACK_ENCODING", tokens::FALLBACK_ENCODING.name())?;
    m.add(
        "ENCODINGS",
        PyList::new(py, Encoding::ALL.iter().map(|e| e.name()))?,
    )?;
    m.add(
        "FORMATS",
        PyList::new(py, Format::ALL.iter().map(|f| f.name()))?,
    )?;
    m.add("SseError", py.get_type::<SseError>())?;
    m.add("UnknownModelError", py.get_type::<UnknownModelError>())?;
    m.add_class::<PySseEvent>()?;
    m.add_class::<PySseDecoder>()?;
    m.add_class::<PyTokenCounter>()?;
    m.add_class::<PyUsage>()?;
    m.add_class::<PyAnomaly>()?;
    m.add_class::<PyParsedEvent>()?;
    m.add_class::<PyFeedResult>()?;
    m.add_class::<PyStreamMeter>()?;
    m.add_function(wrap_pyfunction!(encode_event, m)?)?;
    m.add_function(wrap_pyfunction!(encode_comment, m)?)?;
    m.add_function(wrap_pyfunction!(count_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(count_tokens_total, m)?)?;
    m.add_function(wrap_pyfunction!(count_deltas, m)?)?;
    m.add_function(wrap_pyfunction!(frame_and_extract, m)?)?;
    m.add_function(wrap_pyfunction!(encoding_name_for_model, m)?)?;
    m.add_function(wrap_pyfunction!(resolve_model, m)?)?;
    m.add_function(wrap_pyfunction!(parse_event, m)?)?;
    m.add_function(wrap_pyfunction!(detect_format, m)?)?;
    m.add_function(wrap_pyfunction!(set_pending_budget, m)?)?;
    m.add_function(wrap_pyfunction!(pending_budget, m)?)?;
    m.add_function(wrap_pyfunction!(pending_bytes_total, m)?)?;
    m.add_function(wrap_pyfunction!(challenge_id, m)?)?;
    m.add_function(wrap_pyfunction!(verify_challenge_id, m)?)?;
    m.add_function(wrap_pyfunction!(keccak256, m)?)?;
    m.add_function(wrap_pyfunction!(checksum_address, m)?)?;
    m.add_function(wrap_pyfunction!(eip3009_digest, m)?)?;
    m.add_function(wrap_pyfunction!(voucher_digest, m)?)?;
    m.add_function(wrap_pyfunction!(channel_id, m)?)?;
    m.add_function(wrap_pyfunction!(evm_channel_id, m)?)?;
    m.add_function(wrap_pyfunction!(recover_address, m)?)?;
    m.add_function(wrap_pyfunction!(sign_digest, m)?)?;
    m.add_function(wrap_pyfunction!(address_of, m)?)?;
    Ok(())
}
