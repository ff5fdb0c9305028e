//! Incremental Server-Sent Events framing, WHATWG HTML "event stream interpretation".
//!
//! The decoder is fed network reads of any size and calls back once per dispatched event.
//! Two properties matter to the proxy above it:
//! - chunking independence: any split of a byte stream yields the same events and spans;
//! - linear cost: each input byte is scanned for a line end once. A pending partial line is
//!   carried over and appended to, never rescanned (a parser that re-splits its whole buffer
//!   on every read goes quadratic on long lines).
//!
//! Field parsing works on bytes: every delimiter (CR, LF, `:`, space) is ASCII and never part
//! of a multi-byte UTF-8 sequence, so splitting bytes first and decoding fields afterwards gives
//! the same fields as decoding the stream first.
//!
//! One copy of an unfinished event (issue 12 #9): the decoder keeps no data of its own for
//! the block it is reading. It keeps the block's raw bytes, in one contiguous buffer that
//! every read is appended to, and reads field values out of it: the `event` value and the
//! first `data` value as offsets, the data of a block with several `data` lines joined at
//! dispatch. The stream meter keeps those raw bytes anyway (it forwards the upstream's
//! original bytes once the block ends), so it lends its buffer to the decoder
//! ([`SseDecoder::feed_held`]) and an unfinished event is held once; it used to be held
//! twice, as raw bytes in the meter and as the data value in the decoder.

use memchr::memchr2;
use std::fmt;

/// Default cap on one event block (its lines and terminators). Large enough for a Responses
/// `response.completed` event that repeats a long answer in full, small enough that a broken
/// upstream cannot make the proxy buffer without bound.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 16 * 1024 * 1024;

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// A reused buffer whose capacity grew past this is released after its event (a stream that
/// once carried a 16 MiB event does not keep 16 MiB for the rest of its life).
pub const KEEP_CAPACITY: usize = 256 * 1024;

/// Append `bytes` to `v`, growing it by doubling as `Vec` does but never past `cap` (when the
/// result fits in it): a buffer bounded by the event size limit is never allocated at twice
/// the limit (issue 12 #9).
pub fn push_capped(v: &mut Vec<u8>, bytes: &[u8], cap: usize) {
    let need = v.len() + bytes.len();
    if need > v.capacity() {
        let want = need.max(v.capacity().saturating_mul(2).min(cap)).max(64);
        v.reserve_exact(want - v.len());
    }
    v.extend_from_slice(bytes);
}

/// A field line split into its name and the offset of its value in the line (after the colon
/// and one optional space); `None` for a comment. A colon-less line names a field by all of
/// it, with an empty value.
fn split_field(line: &[u8]) -> Option<(&[u8], usize)> {
    match memchr::memchr(b':', line) {
        Some(0) => None,
        Some(c) => {
            let v = c + 1;
            Some((&line[..c], v + usize::from(line.get(v) == Some(&b' '))))
        }
        None => Some((line, line.len())),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// One event block grew past the configured maximum. `offset` is the stream offset of the
    /// block's first byte.
    EventTooLarge { limit: usize, offset: u64 },
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::EventTooLarge { limit, offset } => write!(
                f,
                "SSE event starting at byte {offset} exceeds the maximum event size of {limit} bytes"
            ),
        }
    }
}

impl std::error::Error for SseError {}

/// A dispatched event. Slices borrow the read or the held bytes of the block (the data of a
/// block with several `data` lines: a reused buffer), so dispatching allocates nothing in the
/// steady state.
#[derive(Debug, Clone, Copy)]
pub struct RawEvent<'a> {
    /// The `event` field; empty when absent (the spec's default type is `message`).
    pub event: &'a [u8],
    /// Data lines joined with `\n`, without the final trailing newline.
    pub data: &'a [u8],
    /// The last-event-id buffer at dispatch (it persists across events, per the spec); `None`
    /// until an `id` field set it. An empty `id:` field sets it to `Some("")`: WHATWG resets
    /// the last event id to the empty string, which is not the same as never having had one
    /// (a proxy relaying `Last-Event-ID` must be able to tell a reset from silence).
    pub id: Option<&'a [u8]>,
    /// A valid `retry` field seen in this event's block.
    pub retry: Option<u64>,
    /// Stream offset of the block's first byte (right after the previous block's blank line).
    pub start: u64,
    /// Stream offset just past the blank line that dispatched the event.
    pub end: u64,
}

impl RawEvent<'_> {
    pub fn event_type(&self) -> &[u8] {
        if self.event.is_empty() {
            b"message"
        } else {
            self.event
        }
    }
}

/// What the event callback wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop right after this event; the rest of the chunk stays unconsumed.
    Stop,
}

#[derive(Debug, Clone)]
pub struct SseDecoder {
    max_event_size: usize,
    /// The raw bytes `[block_start, position)` of an unfinished block, when the decoder is fed
    /// with [`SseDecoder::feed`]. A caller that keeps those bytes itself lends them through
    /// [`SseDecoder::feed_held`] and this stays empty.
    raw: Vec<u8>,
    /// Scratch for the data of a block with several `data` lines, joined at dispatch.
    joined: Vec<u8>,
    /// Offsets of the last `event` value in the current block.
    event: Option<(u64, u64)>,
    /// `data` lines seen in the current block, and the offsets of the first one's value (the
    /// event's data, without a copy, when it is the only one: what upstreams send).
    data_lines: usize,
    first_data: (u64, u64),
    last_id: Vec<u8>,
    /// An `id` field has set `last_id` (possibly to the empty string).
    id_set: bool,
    retry: Option<u64>,
    /// Absolute number of bytes consumed.
    pos: u64,
    /// Offset where the current block began.
    block_start: u64,
    /// Offset where the current line began; the line is processed when it ends, from the
    /// block's bytes, so its start is only remembered, never copied.
    line_start: u64,
    /// The previous chunk ended in CR: an LF first in the next chunk belongs to that line end.
    skip_lf: bool,
    /// A blank line ended in CR at the very end of a chunk, at this offset. Its event is
    /// dispatched when the next byte shows whether an LF completes the line end, so that the
    /// event's span (and so everything a caller sees) is the same however the stream was split.
    dispatch_pending: Option<u64>,
    /// How many BOM bytes matched at the stream start; `None` once the check is over.
    bom_matched: Option<usize>,
    failed: Option<SseError>,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_SIZE)
    }
}

impl SseDecoder {
    pub fn new(max_event_size: usize) -> Self {
        Self {
            max_event_size: max_event_size.max(1),
            raw: Vec::new(),
            joined: Vec::new(),
            event: None,
            data_lines: 0,
            first_data: (0, 0),
            last_id: Vec::new(),
            id_set: false,
            retry: None,
            pos: 0,
            block_start: 0,
            line_start: 0,
            dispatch_pending: None,
            skip_lf: false,
            bom_matched: Some(0),
            failed: None,
        }
    }

    pub fn max_event_size(&self) -> usize {
        self.max_event_size
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Offset of the first byte of the block being read: every byte before it belongs to a
    /// finished block and is safe to forward.
    pub fn block_start(&self) -> u64 {
        self.block_start
    }

    /// Bytes of an unfinished event block (what `close` would discard).
    pub fn pending_bytes(&self) -> u64 {
        self.pos - self.block_start
    }

    pub fn last_event_id(&self) -> &[u8] {
        &self.last_id
    }

    /// Bytes the decoder itself holds (allocated capacity), for memory accounting: the raw
    /// bytes of an unfinished block when it keeps them itself, the join scratch and the last
    /// event id. Bytes lent through `feed_held` are the lender's to count.
    pub fn buffered_bytes(&self) -> usize {
        self.raw.capacity() + self.joined.capacity() + self.last_id.capacity()
    }

    /// Give the buffers' memory back (the caller will not feed this decoder again, or only
    /// after `close`): what a failed or abandoned stream should not keep.
    pub fn release(&mut self) {
        self.raw = Vec::new();
        self.joined = Vec::new();
    }

    pub fn error(&self) -> Option<&SseError> {
        self.failed.as_ref()
    }

    /// Feed one network read. Calls `on_event` for each dispatched event and returns how many
    /// bytes of `chunk` were consumed: all of them, unless the callback returned
    /// [`Flow::Stop`]. After an error the decoder stays failed.
    pub fn feed<F>(&mut self, chunk: &[u8], on_event: F) -> Result<usize, SseError>
    where
        F: FnMut(RawEvent<'_>) -> Flow,
    {
        let mut raw = std::mem::take(&mut self.raw);
        let consumed = self.feed_held(&mut raw, chunk, on_event)?;
        // Keep the unfinished block only; a buffer a large event grew is not kept for the
        // small ones after it.
        let front = raw.len() - self.pending_bytes() as usize;
        if raw.capacity() > KEEP_CAPACITY && raw.len() - front <= KEEP_CAPACITY / 2 {
            raw = raw[front..].to_vec();
        } else {
            raw.drain(..front);
        }
        self.raw = raw;
        Ok(consumed)
    }

    /// [`SseDecoder::feed`] for a caller that keeps the stream's raw bytes itself, so the
    /// unfinished block is held once (the stream meter forwards those bytes when the block
    /// ends). `held` holds the bytes just before [`SseDecoder::position`], at least the
    /// unfinished block (`pending_bytes`), and is the caller's between calls.
    ///
    /// When `held` is empty, `chunk` is framed where it is and the bytes of a block it leaves
    /// unfinished are copied to `held`. Otherwise `chunk` is appended to `held` (within the
    /// event size limit: the decoder fails first) and framed there; `held` keeps its front.
    /// Either way `held` ends at the new position: bytes after a [`Flow::Stop`] are not in it.
    pub fn feed_held<F>(
        &mut self,
        held: &mut Vec<u8>,
        chunk: &[u8],
        mut on_event: F,
    ) -> Result<usize, SseError>
    where
        F: FnMut(RawEvent<'_>) -> Flow,
    {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        debug_assert!(held.len() as u64 >= self.pending_bytes());
        let start = self.pos;
        let result = if held.is_empty() {
            let base = self.pos;
            let result = self.frame(chunk, base, &mut on_event);
            if result.is_ok() && self.block_start < self.pos {
                let from = (self.block_start - base) as usize;
                let to = (self.pos - base) as usize;
                push_capped(held, &chunk[from..to], self.max_event_size);
            }
            result
        } else {
            let base = self.pos - held.len() as u64;
            push_capped(held, chunk, self.max_event_size);
            let result = self.frame(held, base, &mut on_event);
            held.truncate((self.pos - base) as usize);
            result
        };
        match result {
            Ok(()) => Ok((self.pos.saturating_sub(start)) as usize),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Frame `buf`, whose first byte is at stream offset `base` and which holds the current
    /// block from its start, from the current position on.
    fn frame<F>(&mut self, buf: &[u8], base: u64, on_event: &mut F) -> Result<(), SseError>
    where
        F: FnMut(RawEvent<'_>) -> Flow,
    {
        if let Some(matched) = self.bom_matched {
            let mut m = matched;
            let mut i = (self.pos - base) as usize;
            while m < 3 && i < buf.len() && buf[i] == BOM[m] {
                m += 1;
                i += 1;
                self.pos += 1;
            }
            if m == 3 {
                self.bom_matched = None;
                self.block_start = self.pos;
                self.line_start = self.pos;
            } else if i == buf.len() {
                self.bom_matched = Some(m);
                return Ok(());
            } else {
                // Not a BOM after all: the bytes that looked like one are content, still in
                // `buf` (the block started at them).
                self.bom_matched = None;
                self.pos -= m as u64;
            }
        }
        self.scan(buf, base, on_event)
    }

    /// Rewind to the start of a block that was dispatched by the last `feed` (which stopped
    /// right after it), so the block's bytes can be fed again later. Used by the meter to
    /// pause before an event and replay it on resume.
    pub fn rewind_to_block(&mut self, start: u64) {
        debug_assert!(self.pos == self.block_start && start <= self.pos);
        self.raw.clear();
        self.pos = start;
        self.block_start = start;
        self.line_start = start;
        self.skip_lf = false;
        self.dispatch_pending = None;
        self.clear_block_fields();
    }

    fn clear_block_fields(&mut self) {
        self.retry = None;
        self.event = None;
        self.data_lines = 0;
    }

    /// End of stream. An event whose blank line ended the stream is dispatched; an unfinished
    /// event is discarded, as the spec says. Returns the number of discarded bytes so the
    /// caller can report a stream that ended mid-event.
    pub fn close<F>(&mut self, on_event: F) -> u64
    where
        F: FnMut(RawEvent<'_>) -> Flow,
    {
        let raw = std::mem::take(&mut self.raw);
        let discarded = self.close_held(&raw, on_event);
        if raw.capacity() <= KEEP_CAPACITY {
            self.raw = raw;
            self.raw.clear();
        }
        discarded
    }

    /// [`SseDecoder::close`] with the raw bytes lent as in [`SseDecoder::feed_held`].
    pub fn close_held<F>(&mut self, held: &[u8], mut on_event: F) -> u64
    where
        F: FnMut(RawEvent<'_>) -> Flow,
    {
        if let Some(content_end) = self.dispatch_pending.take() {
            if self.failed.is_none() {
                let base = self.pos - held.len() as u64;
                self.dispatch(held, base, content_end, &mut on_event);
            }
        }
        let discarded = self.pending_bytes();
        self.clear_block_fields();
        self.block_start = self.pos;
        self.line_start = self.pos;
        self.skip_lf = false;
        self.bom_matched = None;
        discarded
    }

    fn check_size(&self, block_len: u64) -> Result<(), SseError> {
        if block_len > self.max_event_size as u64 {
            Err(SseError::EventTooLarge {
                limit: self.max_event_size,
                offset: self.block_start,
            })
        } else {
            Ok(())
        }
    }

    fn scan<F>(&mut self, buf: &[u8], base: u64, on_event: &mut F) -> Result<(), SseError>
    where
        F: FnMut(RawEvent<'_>) -> Flow,
    {
        let mut i = (self.pos - base) as usize;
        if i == buf.len() {
            return Ok(());
        }
        if self.skip_lf {
            self.skip_lf = false;
            if buf[i] == b'\n' {
                i += 1;
                self.pos += 1;
                self.line_start = self.pos;
            }
        }
        if let Some(content_end) = self.dispatch_pending.take() {
            if self.dispatch(buf, base, content_end, on_event) == Flow::Stop {
                return Ok(());
            }
        }
        while i < buf.len() {
            // The common block, whole in what is left of the read: dispatched without
            // field-by-field work.
            if self.block_start == self.pos {
                if let Some((event, data, len)) = simple_block(&buf[i..]) {
                    if len as u64 <= self.max_event_size as u64 {
                        let start = self.pos;
                        self.pos += len as u64;
                        self.block_start = self.pos;
                        self.line_start = self.pos;
                        let flow = on_event(RawEvent {
                            event,
                            data,
                            id: self.id_set.then_some(&self.last_id[..]),
                            retry: None,
                            start,
                            end: self.pos,
                        });
                        i += len;
                        if flow == Flow::Stop {
                            return Ok(());
                        }
                        continue;
                    }
                }
            }
            let rest = &buf[i..];
            let Some(off) = memchr2(b'\n', b'\r', rest) else {
                self.check_size(self.pos + rest.len() as u64 - self.block_start)?;
                self.pos += rest.len() as u64;
                return Ok(());
            };
            let end = i + off;
            let term_len = if buf[end] == b'\r' {
                match buf.get(end + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    None => {
                        self.skip_lf = true;
                        1
                    }
                }
            } else {
                1
            };
            let next = end + term_len;
            self.check_size(base + next as u64 - self.block_start)?;
            let line_at = self.line_start;
            self.pos = base + next as u64;
            self.line_start = self.pos;
            i = next;
            let line = &buf[(line_at - base) as usize..end];
            if !line.is_empty() {
                self.field(line, line_at);
                continue;
            }
            let content_end = base + end as u64;
            if next == buf.len() && self.skip_lf {
                // A blank line ended by CR at the chunk end: wait for the next byte.
                self.dispatch_pending = Some(content_end);
                return Ok(());
            }
            if self.dispatch(buf, base, content_end, on_event) == Flow::Stop {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Process a field line that ended, starting at stream offset `at`. Values stay where
    /// they are; only the `id` (which outlives its block) is copied.
    fn field(&mut self, line: &[u8], at: u64) {
        let Some((name, v)) = split_field(line) else {
            return;
        };
        let value = &line[v..];
        let span = (at + v as u64, at + line.len() as u64);
        match name {
            b"data" => {
                if self.data_lines == 0 {
                    self.first_data = span;
                }
                self.data_lines += 1;
            }
            b"event" => self.event = Some(span),
            b"id" if !value.contains(&0) => {
                if self.last_id.capacity() > KEEP_CAPACITY {
                    self.last_id = Vec::new();
                }
                self.last_id.clear();
                self.last_id.extend_from_slice(value);
                self.id_set = true;
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // Saturate instead of overflowing on absurd values.
                let ms = value.iter().fold(0u64, |acc, d| {
                    acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                });
                self.retry = Some(ms);
            }
            _ => {}
        }
    }

    /// Dispatch the block `[block_start, content_end)` (its lines, without the blank line that
    /// ended it at the current position), reading its values from `buf`.
    fn dispatch<F>(&mut self, buf: &[u8], base: u64, content_end: u64, on_event: &mut F) -> Flow
    where
        F: FnMut(RawEvent<'_>) -> Flow,
    {
        let start = self.block_start;
        self.block_start = self.pos;
        let retry = self.retry.take();
        let event = self.event.take();
        let lines = std::mem::take(&mut self.data_lines);
        if lines == 0 {
            return Flow::Continue;
        }
        let at = |(s, e): (u64, u64)| &buf[(s - base) as usize..(e - base) as usize];
        let mut joined = std::mem::take(&mut self.joined);
        let data = if lines == 1 {
            at(self.first_data)
        } else {
            // Several data lines: joined with LF, the one copy made (and released again when
            // large), at dispatch only.
            joined.clear();
            let block = at((start, content_end));
            let mut j = 0;
            while j < block.len() {
                let e = memchr2(b'\n', b'\r', &block[j..]).map_or(block.len(), |o| j + o);
                let line = &block[j..e];
                if let Some((b"data", v)) = split_field(line) {
                    joined.extend_from_slice(&line[v..]);
                    joined.push(b'\n');
                }
                // Every line of a dispatched block ended (the blank line came after them).
                let Some(&term) = block.get(e) else { break };
                j = e + 1 + usize::from(term == b'\r' && block.get(e + 1) == Some(&b'\n'));
            }
            &joined[..joined.len() - 1]
        };
        let flow = on_event(RawEvent {
            event: event.map_or(&b""[..], at),
            data,
            id: self.id_set.then_some(&self.last_id[..]),
            retry,
            start,
            end: self.pos,
        });
        if joined.capacity() <= KEEP_CAPACITY {
            self.joined = joined;
        }
        flow
    }
}

/// A block of the shape upstreams send, `[event: E LF] data: D LF LF`, at the start of `b`:
/// `(E, D, block length)`. It dispatches exactly what the line-by-line path would (one data
/// line, the optional space after each colon removed, LF line ends only); anything else,
/// including a block that does not end in `b`, is `None`.
///
/// Performance notes: the line-by-line path copies every data line into the decoder's buffer
/// and runs the field machinery per line; this shortcut dispatches from the read itself.
#[inline]
fn simple_block(b: &[u8]) -> Option<(&[u8], &[u8], usize)> {
    fn line(b: &[u8], from: usize) -> Option<usize> {
        let e = from + memchr2(b'\n', b'\r', &b[from..])?;
        (b[e] == b'\n').then_some(e)
    }
    let mut p = 0;
    let mut event: &[u8] = &[];
    if b.starts_with(b"event:") {
        let e = line(b, 6)?;
        let v = &b[6..e];
        event = v.strip_prefix(b" ").unwrap_or(v);
        p = e + 1;
    }
    if !b[p..].starts_with(b"data:") {
        return None;
    }
    let e = line(b, p + 5)?;
    let v = &b[p + 5..e];
    let data = v.strip_prefix(b" ").unwrap_or(v);
    (b.get(e + 1) == Some(&b'\n')).then_some((event, data, e + 2))
}

/// An owned event, for callers that keep events beyond the callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedEvent {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
    pub retry: Option<u64>,
    pub start: u64,
    pub end: u64,
}

impl From<RawEvent<'_>> for OwnedEvent {
    fn from(e: RawEvent<'_>) -> Self {
        OwnedEvent {
            event: String::from_utf8_lossy(e.event_type()).into_owned(),
            data: String::from_utf8_lossy(e.data).into_owned(),
            id: e.id.map(|v| String::from_utf8_lossy(v).into_owned()),
            retry: e.retry,
            start: e.start,
            end: e.end,
        }
    }
}

impl SseDecoder {
    /// Feed and collect owned events (convenience for tests and the Python binding).
    pub fn feed_owned(&mut self, chunk: &[u8]) -> Result<Vec<OwnedEvent>, SseError> {
        let mut out = Vec::new();
        self.feed(chunk, |e| {
            out.push(e.into());
            Flow::Continue
        })?;
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// `event` or `id` holds a line break, which would split the field and inject lines.
    LineBreakInField(&'static str),
    /// `id` holds NUL, which every receiver ignores.
    NulInId,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::LineBreakInField(field) => {
                write!(f, "SSE field {field:?} must not contain CR or LF")
            }
            EncodeError::NulInId => write!(f, "SSE field \"id\" must not contain NUL"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Append one event in wire form. `data` may hold any line breaks: each line becomes its own
/// `data:` line, so a receiver reassembles exactly `data` (with CRLF and CR normalised to LF,
/// as the receiver's line splitting does).
pub fn encode_event(
    out: &mut Vec<u8>,
    event: Option<&str>,
    data: &str,
    id: Option<&str>,
    retry: Option<u64>,
) -> Result<(), EncodeError> {
    if let Some(ev) = event {
        if ev.contains(['\r', '\n']) {
            return Err(EncodeError::LineBreakInField("event"));
        }
    }
    if let Some(id) = id {
        if id.contains(['\r', '\n']) {
            return Err(EncodeError::LineBreakInField("id"));
        }
        if id.contains('\0') {
            return Err(EncodeError::NulInId);
        }
    }
    if let Some(ev) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(ev.as_bytes());
        out.push(b'\n');
    }
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    if let Some(r) = retry {
        out.extend_from_slice(b"retry: ");
        out.extend_from_slice(r.to_string().as_bytes());
        out.push(b'\n');
    }
    let bytes = data.as_bytes();
    let mut start = 0;
    loop {
        out.extend_from_slice(b"data: ");
        match memchr2(b'\n', b'\r', &bytes[start..]) {
            Some(off) => {
                let end = start + off;
                out.extend_from_slice(&bytes[start..end]);
                out.push(b'\n');
                start = if bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n') {
                    end + 2
                } else {
                    end + 1
                };
            }
            None => {
                out.extend_from_slice(&bytes[start..]);
                out.push(b'\n');
                break;
            }
        }
    }
    out.push(b'\n');
    Ok(())
}

/// Append a comment line (`: text`), e.g. a keep-alive. Line breaks in `text` start new
/// comment lines so nothing can be injected.
pub fn encode_comment(out: &mut Vec<u8>, text: &str) {
    for line in text.split(['\r', '\n']) {
        out.extend_from_slice(b": ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_chunks(chunks: &[&[u8]]) -> Vec<OwnedEvent> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(d.feed_owned(c).unwrap());
        }
        d.close(|e| {
            out.push(e.into());
            Flow::Continue
        });
        out
    }

    fn decode(s: &[u8]) -> Vec<OwnedEvent> {
        decode_chunks(&[s])
    }

    fn data(events: &[OwnedEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    #[test]
    fn line_endings_all_three() {
        let ev = decode(b"data: a\r\n\r\ndata: b\n\ndata: c\r\rdata: d\n\r\n");
        assert_eq!(data(&ev), ["a", "b", "c", "d"]);
    }

    #[test]
    fn blank_line_cr_at_chunk_end_waits_for_next_byte_or_close() {
        let mut d = SseDecoder::default();
        assert!(d.feed_owned(b"data: a\r\r").unwrap().is_empty());
        let ev = d.feed_owned(b"\ndata: b\r\r").unwrap();
        assert_eq!((ev[0].data.as_str(), ev[0].end), ("a", 10));
        let mut last = Vec::new();
        d.close(|e| {
            last.push(OwnedEvent::from(e));
            Flow::Continue
        });
        assert_eq!(last[0].data, "b");
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        // If the LF were a second line end, "data: x\r" + "\n" would dispatch early and the
        // second data line would become a separate event.
        let ev = decode_chunks(&[b"data: x\r", b"\ndata: y\r", b"\n\r", b"\n"]);
        assert_eq!(data(&ev), ["x\ny"]);
        assert_eq!((ev[0].start, ev[0].end), (0, 20));
    }

    #[test]
    fn bom_dropped_only_at_start_even_when_split() {
        let ev = decode_chunks(&[b"\xEF", b"\xBB", b"\xBFdata: a\n\n"]);
        assert_eq!(data(&ev), ["a"]);
        assert_eq!(ev[0].start, 3);
        // A BOM later is content; here it makes the field name unknown.
        let ev = decode(b"data: a\n\n\xEF\xBB\xBFdata: b\n\n");
        assert_eq!(data(&ev), ["a"]);
    }

    #[test]
    fn partial_bom_is_content() {
        let ev = decode_chunks(&[b"\xEF", b"data: a\n\ndata: b\n\n"]);
        // "\xEFdata" is an unknown field: the first event has no data.
        assert_eq!(data(&ev), ["b"]);
    }

    #[test]
    fn comments_colonless_fields_and_space_rule() {
        let ev = decode(b": comment\ndata\n\ndata:no-space\ndata:  two\n\n");
        assert_eq!(data(&ev), ["", "no-space\n two"]);
    }

    #[test]
    fn event_type_id_and_retry() {
        let ev = decode(b"event: ping\nid: 7\nretry: 1500\ndata: x\n\ndata: y\n\n");
        assert_eq!(ev[0].event, "ping");
        assert_eq!(ev[0].id.as_deref(), Some("7"));
        assert_eq!(ev[0].retry, Some(1500));
        // id persists (last-event-id buffer), type and retry do not.
        assert_eq!(ev[1].event, "message");
        assert_eq!(ev[1].id.as_deref(), Some("7"));
        assert_eq!(ev[1].retry, None);
    }

    #[test]
    fn id_with_nul_ignored_and_bad_retry_ignored() {
        let ev = decode(b"id: 1\n\nid: a\0b\nretry: 12x\nretry: \ndata: x\n\n");
        assert_eq!(ev[0].id.as_deref(), Some("1"));
        assert_eq!(ev[0].retry, None);
    }

    #[test]
    fn empty_id_field_resets_the_last_event_id_to_empty() {
        // Issue 12 #11: WHATWG sets the last event id buffer to the field value, "" included.
        let ev = decode(b"data: a\n\nid: 7\ndata: b\n\nid\ndata: c\n\nid:\ndata: d\n\ndata: e\n\n");
        let ids: Vec<Option<&str>> = ev.iter().map(|e| e.id.as_deref()).collect();
        assert_eq!(ids, [None, Some("7"), Some(""), Some(""), Some("")]);
        // Through the whole-block fast path too (an `id:` block, then simple blocks).
        let mut d = SseDecoder::default();
        let ev = d.feed_owned(b"id: \ndata: x\n\ndata: y\n\n").unwrap();
        assert_eq!(ev[0].id.as_deref(), Some(""));
        assert_eq!(ev[1].id.as_deref(), Some(""));
        assert_eq!(d.last_event_id(), b"");
    }

    /// Property: the id reported with every event is the value of the last `id` field (NUL-free)
    /// before it, `None` when there was none, for random field sequences and random splits.
    #[test]
    fn reported_id_is_the_last_id_field_property() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..400 {
            let mut s = Vec::new();
            let mut expect = Vec::new();
            let mut last: Option<String> = None;
            for _ in 0..(next() % 8) {
                match next() % 5 {
                    0 => {
                        s.extend_from_slice(b"id\n");
                        last = Some(String::new());
                    }
                    1 => {
                        s.extend_from_slice(b"id:\n");
                        last = Some(String::new());
                    }
                    2 => {
                        let v = (next() % 3).to_string();
                        s.extend_from_slice(format!("id: {v}\n").as_bytes());
                        last = Some(v);
                    }
                    3 => s.extend_from_slice(b"id: x\0y\n"),
                    _ => {}
                }
                s.extend_from_slice(b"data: d\n\n");
                expect.push(last.clone());
            }
            let cut = (next() as usize) % (s.len() + 1);
            let ev = decode_chunks(&[&s[..cut], &s[cut..]]);
            let got: Vec<Option<String>> = ev.into_iter().map(|e| e.id).collect();
            assert_eq!(got, expect, "{:?}", String::from_utf8_lossy(&s));
        }
    }

    #[test]
    fn empty_data_buffer_does_not_dispatch_but_resets_type() {
        let ev = decode(b"event: a\n\ndata: x\n\n");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].event, "message");
    }

    #[test]
    fn unknown_fields_ignored() {
        let ev = decode(b"foo: bar\ndata: x\nDATA: y\n\n");
        assert_eq!(data(&ev), ["x"]);
    }

    #[test]
    fn unfinished_event_discarded_at_close() {
        let mut d = SseDecoder::default();
        assert!(d.feed_owned(b"data: a\n\ndata: b\n").unwrap().len() == 1);
        assert_eq!(d.close(|_| panic!("nothing to dispatch")), 8);
    }

    #[test]
    fn spans_cover_blocks_and_comments_between() {
        let s = b": hi\n\ndata: a\n\nevent: e\ndata: b\n\n";
        let ev = decode(s);
        assert_eq!((ev[0].start, ev[0].end), (6, 15));
        assert_eq!(
            &s[ev[1].start as usize..ev[1].end as usize],
            b"event: e\ndata: b\n\n"
        );
    }

    #[test]
    fn every_two_way_split_gives_same_events() {
        let s: &[u8] = b"\xEF\xBB\xBF: c\r\nevent: x\r\ndata: 1\r\ndata:2\r\r\ndata: \xE2\x82\xAC\n\nid: 9\rdata: z\r\r";
        let whole = decode(s);
        assert_eq!(whole.len(), 3);
        for i in 0..=s.len() {
            for j in i..=s.len() {
                let parts = decode_chunks(&[&s[..i], &s[i..j], &s[j..]]);
                assert_eq!(parts, whole, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn stop_leaves_rest_unconsumed() {
        let s = b"data: a\n\ndata: b\n\n";
        let mut d = SseDecoder::default();
        let mut seen = 0;
        let n = d
            .feed(s, |_| {
                seen += 1;
                Flow::Stop
            })
            .unwrap();
        assert_eq!((seen, n), (1, 9));
        let rest = d.feed_owned(&s[n..]).unwrap();
        assert_eq!(data(&rest), ["b"]);
        assert_eq!(rest[0].start, 9);
    }

    #[test]
    fn oversized_event_is_an_error_and_sticks() {
        let mut d = SseDecoder::new(16);
        assert!(d.feed_owned(b"data: 0123456789").is_ok());
        let err = d.feed_owned(b"abcdef").unwrap_err();
        assert_eq!(
            err,
            SseError::EventTooLarge {
                limit: 16,
                offset: 0
            }
        );
        assert!(d.feed_owned(b"\n\n").is_err());
        // A line end inside the chunk is checked too.
        let mut d = SseDecoder::new(16);
        assert!(d.feed_owned(b"data: 0123456789abc\n\n").is_err());
        // Exactly at the limit is fine.
        let mut d = SseDecoder::new(10);
        assert_eq!(d.feed_owned(b"data: ab\n\n").unwrap().len(), 1);
    }

    /// Partial data lines go straight to the data buffer and partial comments or ignored
    /// fields are not kept; every split still gives the events of the whole stream.
    #[test]
    fn partial_lines_of_every_kind_split_anywhere() {
        let s: &[u8] = b": a long comment\ndata: x\nfoo: ignored\ndataX\ndata:  two\ndata:\ndata\nevent: e\nid: 5\nretry: 9\nunknownfieldname\n\ndata:y\r\n\r\n";
        let whole = decode(s);
        assert_eq!(data(&whole), ["x\n two\n\n", "y"]);
        for i in 0..=s.len() {
            for j in i..=s.len() {
                assert_eq!(
                    decode_chunks(&[&s[..i], &s[i..j], &s[j..]]),
                    whole,
                    "{i},{j}"
                );
            }
        }
        let bytewise: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(decode_chunks(&bytewise), whole);
    }

    /// Issue 12 #9: a long unfinished data line is held once (not as a line and again as
    /// data), in buffers never allocated past the event size limit.
    #[test]
    fn an_unfinished_event_is_held_once_within_the_limit() {
        let cap = 1 << 20;
        let mut d = SseDecoder::new(cap);
        d.feed_owned(b"data: ").unwrap();
        for _ in 0..255 {
            d.feed_owned(&[b'x'; 4096]).unwrap();
        }
        assert!(d.buffered_bytes() <= cap + 1024, "{}", d.buffered_bytes());
        assert!(d.buffered_bytes() >= 255 * 4096);
        let ev = d.feed_owned(b"\n\n").unwrap();
        assert_eq!(ev[0].data.len(), 255 * 4096);
        assert!(
            d.buffered_bytes() <= KEEP_CAPACITY,
            "released after the event"
        );
        // Whatever the block holds (here a comment, then many short data lines), what is
        // kept is its raw bytes, once.
        let mut d = SseDecoder::new(cap);
        d.feed_owned(b": ").unwrap();
        for _ in 0..100 {
            d.feed_owned(&[b'c'; 4096]).unwrap();
        }
        d.feed_owned(b"\n").unwrap();
        for _ in 0..100 {
            d.feed_owned(&b"data: y\n".repeat(512)).unwrap();
        }
        assert!(d.pending_bytes() > 800 << 10);
        assert!(d.buffered_bytes() <= cap + 1024, "{}", d.buffered_bytes());
        let ev = d.feed_owned(b"\n").unwrap();
        assert_eq!(ev[0].data.len(), 100 * 512 * 2 - 1);
        assert!(d.buffered_bytes() <= KEEP_CAPACITY);
    }

    /// The meter's way of feeding: the caller keeps the raw bytes and lends them; the
    /// decoder keeps none of the unfinished block, and the events are the same as `feed`'s.
    #[test]
    fn lent_bytes_are_the_only_copy_and_give_the_same_events() {
        let cap = 1 << 20;
        let mut d = SseDecoder::new(cap);
        let mut held = Vec::new();
        d.feed_held(&mut held, b"event: big\ndata: ", |_| Flow::Continue)
            .unwrap();
        for _ in 0..200 {
            d.feed_held(&mut held, &[b'x'; 4096], |_| Flow::Continue)
                .unwrap();
        }
        assert_eq!(held.len() as u64, d.pending_bytes());
        assert!(d.buffered_bytes() < 1024, "{}", d.buffered_bytes());
        let mut got = Vec::new();
        d.feed_held(&mut held, b"\ndata: z\n\ndata: next", |e| {
            got.push(OwnedEvent::from(e));
            Flow::Continue
        })
        .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].event, "big");
        assert_eq!(got[0].data.len(), 200 * 4096 + 2);
        assert!(got[0].data.ends_with("xx\nz"));

        // Random streams and splits: `feed_held` with the caller dropping what the decoder is
        // done with (as the meter forwards it) gives exactly the events of `feed`.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let parts: [&[u8]; 12] = [
            b"data: a\n",
            b"data:b\r\n",
            b"data\r",
            b"event: e\n",
            b"id: 3\n",
            b"retry: 7\n",
            b": c\n",
            b"\n",
            b"\r\n",
            b"\r",
            b"data: {\"x\":1}\n\n",
            b"\xEF\xBB\xBF",
        ];
        for _ in 0..500 {
            let mut s = Vec::new();
            for _ in 0..(next() % 14) {
                s.extend_from_slice(parts[(next() % 12) as usize]);
            }
            let whole = decode(&s);
            let mut d = SseDecoder::default();
            let mut held = Vec::new();
            let mut out = Vec::new();
            let mut rest = &s[..];
            while !rest.is_empty() {
                let n = 1 + (next() as usize) % rest.len().min(7);
                d.feed_held(&mut held, &rest[..n], |e| {
                    out.push(OwnedEvent::from(e));
                    Flow::Continue
                })
                .unwrap();
                let held_start = d.position() - held.len() as u64;
                held.drain(..(d.block_start().max(held_start) - held_start) as usize);
                rest = &rest[n..];
            }
            d.close_held(&held, |e| {
                out.push(OwnedEvent::from(e));
                Flow::Continue
            });
            assert_eq!(out, whole, "{:?}", String::from_utf8_lossy(&s));
        }
    }

    #[test]
    fn long_line_fed_bytewise_is_one_event() {
        let mut s = b"data: ".to_vec();
        s.extend(std::iter::repeat_n(b'x', 10_000));
        s.extend_from_slice(b"\n\n");
        let mut d = SseDecoder::default();
        let mut ev = Vec::new();
        for b in s.chunks(1) {
            ev.extend(d.feed_owned(b).unwrap());
        }
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data.len(), 10_000);
    }

    #[test]
    fn encoder_round_trips_and_rejects_injection() {
        let mut out = Vec::new();
        encode_event(
            &mut out,
            Some("message_delta"),
            "a\nb\r\nc\rd",
            Some("5"),
            Some(10),
        )
        .unwrap();
        encode_event(&mut out, None, "", None, None).unwrap();
        encode_comment(&mut out, "keep\nalive");
        let ev = decode(&out);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].event, "message_delta");
        assert_eq!(ev[0].data, "a\nb\nc\nd");
        assert_eq!(ev[0].retry, Some(10));
        assert_eq!(ev[1].data, "");
        let mut out = Vec::new();
        assert!(encode_event(&mut out, Some("a\nb"), "x", None, None).is_err());
        assert!(encode_event(&mut out, None, "x", Some("1\r"), None).is_err());
        assert!(encode_event(&mut out, None, "x", Some("1\0"), None).is_err());
        assert!(out.is_empty());
    }
}
