"""SSE framing: every rule of the WHATWG algorithm, chunking independence, limits, encoder.

The oracle is a direct transcription of the spec's "event stream interpretation" over the
whole byte string at once; meterkit's incremental decoder must agree with it for any input
and any split into chunks.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meterkit
from meterkit import SseDecoder, SseError, encode_comment, encode_event

BOM = b"\xef\xbb\xbf"


def oracle(stream: bytes) -> list[tuple[str, str, str | None, int | None, int, int]]:
    """The spec's algorithm, run on the whole stream: (event, data, id, retry, start, end)."""
    pos = 0
    if stream.startswith(BOM):
        pos = 3
    events = []
    data: list[str] = []
    has_data = False
    event = ""
    # None until an `id` field sets it; an empty field sets it to "" (issue 12 #11).
    last_id: str | None = None
    retry = None
    block_start = pos
    for m in re.finditer(rb"([^\r\n]*)(\r\n|\r|\n)", stream[pos:]):
        line = m.group(1)
        end = pos + m.end()
        if line == b"":
            if has_data:
                events.append(
                    (event or "message", "\n".join(data), last_id, retry, block_start, end)
                )
            data, has_data, event, retry = [], False, "", None
            block_start = end
            continue
        if line.startswith(b":"):
            continue
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        text = value.decode("utf-8", "replace")
        if name == b"data":
            data.append(text)
            has_data = True
        elif name == b"event":
            event = text
        elif name == b"id":
            if b"\0" not in value:
                last_id = text
        elif name == b"retry":
            if value and value.isdigit():
                retry = int(value)
    return events


def as_tuples(
    events: list[meterkit.SseEvent],
) -> list[tuple[str, str, str | None, int | None, int, int]]:
    return [(e.event, e.data, e.id, e.retry, e.start, e.end) for e in events]


def decode(chunks: list[bytes], **kw: int) -> list[meterkit.SseEvent]:
    d = SseDecoder(**kw)
    out = []
    for c in chunks:
        out.extend(d.feed(c))
    out.extend(d.close())
    return out


# ---- hand-picked rules -------------------------------------------------------------------


def test_line_endings_and_split_crlf() -> None:
    assert [e.data for e in decode([b"data: a\r\n\r\ndata: b\n\ndata: c\r\r"])] == ["a", "b", "c"]
    ev = decode([b"data: x\r", b"\n\r", b"\n"])
    assert [(e.data, e.span) for e in ev] == [("x", (0, 11))]


def test_bom_only_at_start() -> None:
    assert [e.data for e in decode([BOM[:1], BOM[1:] + b"data: a\n\n"])] == ["a"]
    assert [e.data for e in decode([b"data: a\n\n" + BOM + b"data: b\n\n"])] == ["a"]


def test_comments_fields_spaces() -> None:
    ev = decode([b": hello\ndata\n\ndata:x\ndata:  y\nfoo: bar\n\n"])
    assert [e.data for e in ev] == ["", "x\n y"]


def test_empty_id_field_resets_last_event_id_to_empty_string() -> None:
    # WHATWG: an `id` field sets the last event id buffer to its value, "" included; only a
    # stream that never had an id field reports None.
    ev = decode([b"data: a\n\nid: 1\ndata: b\n\nid:\ndata: c\n\ndata: d\n\n"])
    assert [e.id for e in ev] == [None, "1", "", ""]


def test_id_retry_event_rules() -> None:
    ev = decode([b"event: e1\nid: 1\nretry: 250\ndata: a\n\nid: x\0y\nretry: 1s\ndata: b\n\n"])
    assert [(e.event, e.id, e.retry) for e in ev] == [("e1", "1", 250), ("message", "1", None)]


def test_unfinished_event_discarded() -> None:
    d = SseDecoder()
    assert [e.data for e in d.feed(b"data: a\n\ndata: b")] == ["a"]
    assert d.pending_bytes == 7
    assert d.close() == []


def test_max_event_size_is_a_clear_error() -> None:
    d = SseDecoder(max_event_size=32)
    d.feed(b"data: short\n\n")
    with pytest.raises(SseError, match=r"exceeds the maximum event size of 32 bytes"):
        d.feed(b"data: " + b"x" * 40)
    with pytest.raises(SseError):
        d.feed(b"\n\n")
    with pytest.raises(ValueError):
        SseDecoder(max_event_size=0)


def test_default_max_event_size_is_exported() -> None:
    assert SseDecoder().max_event_size == meterkit.DEFAULT_MAX_EVENT_SIZE >= 1 << 20


def test_non_bytes_input_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        SseDecoder().feed("data: x\n\n")  # type: ignore[arg-type]


# ---- properties --------------------------------------------------------------------------

_values = st.sampled_from(
    ["", " ", "x", " lead", "a:b", "ü", "東京", "🙂", "1500", "12a", "\x00", "[DONE]", '{"k": 1}']
)
_names = st.sampled_from(["data", "event", "id", "retry", "dat", "DATA", "", "x"])
_ends = st.sampled_from([b"\n", b"\r", b"\r\n"])


@st.composite
def sse_streams(draw: st.DrawFn) -> bytes:
    parts = [BOM] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.integers(0, 9))
        end = draw(_ends)
        if kind == 0:
            parts.append(end)  # blank line: dispatch
        elif kind == 1:
            parts.append(b":" + draw(_values).encode() + end)
        elif kind == 2:
            parts.append(draw(_names).encode() + end)  # field without colon
        else:
            sep = draw(st.sampled_from([b":", b": ", b":  "]))
            parts.append(draw(_names).encode() + sep + draw(_values).encode() + end)
    if draw(st.booleans()):
        parts.append(b"data: tail-without-end")
    return b"".join(parts)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


@settings(max_examples=600, deadline=None)
@given(sse_streams(), st.lists(st.integers(0, 10_000), max_size=12))
def test_any_chunking_matches_the_spec_oracle(stream: bytes, cuts: list[int]) -> None:
    expected = oracle(stream)
    assert as_tuples(decode([stream])) == expected
    assert as_tuples(decode(split(stream, cuts))) == expected


@settings(max_examples=200, deadline=None)
@given(sse_streams())
def test_byte_at_a_time_matches(stream: bytes) -> None:
    assert as_tuples(decode([bytes([b]) for b in stream])) == oracle(stream)


@settings(max_examples=300, deadline=None)
@given(
    st.text(),
    st.one_of(st.none(), st.text().filter(lambda s: not any(c in s for c in "\r\n"))),
    st.one_of(st.none(), st.text().filter(lambda s: not any(c in s for c in "\r\n\0"))),
    st.one_of(st.none(), st.integers(0, 2**40)),
)
def test_encoder_round_trips(
    data: str, event: str | None, id_: str | None, retry: int | None
) -> None:
    wire = encode_event(data, event=event, id=id_, retry=retry) + encode_comment("k\nx")
    (ev,) = decode([wire])
    assert ev.data == data.replace("\r\n", "\n").replace("\r", "\n")
    assert ev.event == (event or "message")
    assert ev.id == id_
    assert ev.retry == retry


@pytest.mark.parametrize("bad", [{"event": "a\nb"}, {"id": "1\r"}, {"id": "a\0"}])
def test_encoder_refuses_injection(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        encode_event("x", **bad)


def test_long_line_in_many_chunks_is_one_event() -> None:
    body = b"x" * 200_000
    stream = b"data: " + body + b"\n\n"
    chunks = [stream[i : i + 97] for i in range(0, len(stream), 97)]
    (ev,) = decode(chunks)
    assert len(ev.data) == len(body)
