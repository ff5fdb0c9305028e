"""The per-stream meter: byte-exact pass-through, exact counts, truncation endings that the
official SDKs accept, pause/resume on credit, error endings and anomalies."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meterkit
from meterkit import SseDecoder, StreamMeter, parse_event, synth

WORDS = synth.split_deltas(synth.SAMPLE_TEXT)
TEXT = "".join(WORDS)


def stream_for(fmt: str, deltas: list[str]) -> bytes:
    gen = {
        "openai-chat": synth.chat_events,
        "openai-completions": synth.completions_events,
        "openai-responses": synth.responses_events,
        "anthropic": synth.anthropic_events,
    }[fmt]
    return synth.stream_bytes(gen(deltas))


def run(m: StreamMeter, data: bytes, cuts: list[int] | None = None, size: int = 0) -> bytes:
    if cuts is not None:
        points = sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]
    else:
        points = list(range(size, len(data), size)) + [len(data)] if size else [len(data)]
    out = bytearray()
    prev = 0
    for p in points:
        out += m.feed(data[prev:p]).forward
        prev = p
    out += m.close().forward
    return bytes(out)


def delivered_text(fmt: str, data: bytes) -> str:
    text = ""
    for ev in SseDecoder().feed(data):
        try:
            parsed = parse_event(fmt, ev.data, ev.event)
        except ValueError:
            continue
        text += "".join(d[3] for d in parsed.deltas)
    return text


@settings(max_examples=150, deadline=None)
@given(
    fmt=st.sampled_from(meterkit.FORMATS),
    deltas=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=30),
    cuts=st.lists(st.integers(0, 100_000), max_size=20),
)
def test_pass_through_is_byte_exact_and_count_exact(
    fmt: str, deltas: list[str], cuts: list[int], tiktoken_encodings: dict[str, Any]
) -> None:
    data = stream_for(fmt, deltas)
    m = StreamMeter(fmt, "gpt-4o")
    assert run(m, data, cuts) == data
    assert m.completion_tokens == len(
        tiktoken_encodings["o200k_base"].encode_ordinary("".join(deltas))
    )
    assert m.state == "finished"
    assert m.anomalies == []


def test_whole_events_are_forwarded_without_a_copy() -> None:
    data = stream_for("openai-chat", WORDS)
    m = StreamMeter()
    r = m.feed(data)
    assert r.forward is data
    assert r.events == len(WORDS) + 3
    assert r.spans[0] == (0, data.index(b"\n\n") + 2)


def test_partial_event_is_held_until_complete() -> None:
    data = stream_for("openai-chat", WORDS)
    cut = data.index(b"\n\n") + 10
    m = StreamMeter()
    first = m.feed(data[:cut]).forward
    assert first == data[: data.index(b"\n\n") + 2]
    assert m.pending_bytes == 8
    assert first + m.feed(data[cut:]).forward == data


@pytest.mark.parametrize("fmt", meterkit.FORMATS)
@pytest.mark.parametrize("limit", [0, 1, 7, 40])
def test_truncation_never_exceeds_the_limit(fmt: str, limit: int) -> None:
    data = stream_for(fmt, WORDS)
    for size in (1, 17, 4096):
        m = StreamMeter(fmt, "gpt-4o", limit=limit, prompt_tokens=11)
        out = run(m, data, size=size)
        text = delivered_text(fmt, out)
        assert meterkit.count_tokens(text) <= limit
        assert m.completion_tokens == meterkit.count_tokens(text)
        assert m.state == "truncated"
        # Longest prefix: one more delta would have crossed the limit.
        assert TEXT.startswith(text)
        k = len(text)
        nxt = next(w for i, w in enumerate(WORDS) if len("".join(WORDS[: i + 1])) > k)
        assert meterkit.count_tokens(text + nxt) > limit


def test_shadow_mode_reports_but_forwards_everything() -> None:
    data = stream_for("anthropic", WORDS)
    m = StreamMeter(limit=10, shadow=True)
    assert run(m, data, size=100) == data
    assert m.would_truncate_at is not None and m.would_truncate_at <= 10
    assert m.state == "finished"


def test_credit_pause_and_grant_resume_the_exact_stream() -> None:
    data = stream_for("openai-chat", WORDS)
    m = StreamMeter(credit=5)
    out = bytearray()
    pauses = 0
    for i in range(0, len(data), 300):
        r = m.feed(data[i : i + 300])
        out += r.forward
        while m.state == "paused":
            pauses += 1
            assert m.completion_tokens <= (m.credit or 0)
            out += m.grant(5).forward
    out += m.close().forward
    assert bytes(out) == data
    assert pauses >= meterkit.count_tokens(TEXT) // 5 - 1


def test_incomplete_final_event_is_reported_and_dropped() -> None:
    # Issue 12 #6: the unfinished block is not forwarded (a client discards it at EOF anyway,
    # and an error ending written after it would be glued onto it).
    data = stream_for("openai-chat", WORDS)[:-5]
    m = StreamMeter()
    assert run(m, data, size=64) == data[: data.rindex(b"\n\n") + 2]
    assert [a.kind for a in m.anomalies] == ["incomplete_event"]
    assert m.state == "streaming"


def test_unknown_format_is_an_anomaly_not_an_error() -> None:
    m = StreamMeter()
    data = b"data: hello\n\ndata: world\n\n"
    assert run(m, data) == data
    assert [a.kind for a in m.anomalies] == ["unknown_format"]
    assert m.completion_tokens == 0


def test_oversized_event_fails_cleanly() -> None:
    m = StreamMeter(max_event_size=100)
    r = m.feed(b"data: " + b"x" * 200 + b"\n\n")
    # Issue 12 #5: nothing of the event, but the format's error ending (not a silent end).
    assert r.forward.startswith(b'data: {"error"')
    assert r.forward.endswith(b"data: [DONE]\n\n")
    assert b"xxx" not in r.forward
    assert m.state == "failed"
    assert r.anomalies[0].kind == "event_too_large"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown stream format"):
        StreamMeter("gemini")
    with pytest.raises(ValueError, match="unknown ending"):
        StreamMeter(ending="abrupt")
    with pytest.raises(ValueError):
        StreamMeter(encoding="p50k_base")


# ---- what real SDKs make of meterkit's endings --------------------------------------------


def truncated(fmt: str, limit: int, **kw: Any) -> tuple[StreamMeter, bytes]:
    m = StreamMeter(fmt, "gpt-4o", limit=limit, prompt_tokens=9, **kw)
    return m, run(m, stream_for(fmt, WORDS), size=50)


def test_openai_sdk_sees_length_finish(replay: Any) -> None:
    import openai

    m, replay.body = truncated("openai-chat", 12)
    client = openai.OpenAI(base_url=replay.url + "/v1", api_key="x", max_retries=0)
    text, finish, usage = "", None, None
    for chunk in client.chat.completions.create(model="gpt-4o", messages=[], stream=True):
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
        usage = chunk.usage or usage
    assert finish == "length"
    assert meterkit.count_tokens(text) == m.completion_tokens <= 12
    assert usage is not None and usage.completion_tokens == m.completion_tokens
    assert usage.prompt_tokens == 9


def test_openai_sdk_raises_on_error_chunk(replay: Any) -> None:
    import openai

    _, replay.body = truncated("openai-chat", 12, ending="error_chunk")
    client = openai.OpenAI(base_url=replay.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError, match="limit"):
        for _ in client.chat.completions.create(model="gpt-4o", messages=[], stream=True):
            pass


def test_openai_sdk_completions_length(replay: Any) -> None:
    import openai

    _, replay.body = truncated("openai-completions", 12)
    client = openai.OpenAI(base_url=replay.url + "/v1", api_key="x", max_retries=0)
    chunks = list(client.completions.create(model="gpt-4o", prompt="x", stream=True))
    assert chunks[-1].choices[0].finish_reason == "length"


def test_openai_sdk_responses_incomplete(replay: Any) -> None:
    import openai

    m, replay.body = truncated("openai-responses", 12)
    client = openai.OpenAI(base_url=replay.url + "/v1", api_key="x", max_retries=0)
    events = list(client.responses.create(model="gpt-4o", input="x", stream=True))
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.usage.output_tokens == m.completion_tokens
    assert last.sequence_number == events[-2].sequence_number + 1


def test_anthropic_sdk_sees_max_tokens(replay: Any) -> None:
    import anthropic

    m, replay.body = truncated("anthropic", 12)
    client = anthropic.Anthropic(base_url=replay.url, api_key="x", max_retries=0)
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=99, messages=[]) as s:
        final = s.get_final_message()
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == m.completion_tokens
    assert meterkit.count_tokens(final.content[0].text) == m.completion_tokens


def test_anthropic_sdk_raises_on_error_event(replay: Any) -> None:
    import anthropic

    m = StreamMeter("anthropic")
    data = stream_for("anthropic", WORDS)
    replay.body = m.feed(data[: len(data) // 2]).forward + m.fail("upstream connection reset")
    client = anthropic.Anthropic(base_url=replay.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.APIError, match="upstream connection reset"):
        with client.messages.stream(model="claude-sonnet-4-6", max_tokens=99, messages=[]) as s:
            s.get_final_message()
    assert m.state == "failed"


def test_an_unfinished_event_is_held_once() -> None:
    """Issue 12 #9: a stream holding one unfinished event near `max_event_size` holds it
    once, as the bytes it will forward (the SSE decoder reads its values from them), so what
    the process-wide budget counts for it stays near 1x the event, not 2x."""
    from meterkit._core import pending_bytes_total

    cap = 4 << 20
    read = b"x" * (64 << 10)
    before = pending_bytes_total()
    m = StreamMeter("openai-chat", max_event_size=cap)
    m.feed(b'data: {"choices":[{"index":0,"delta":{"content":"')
    for _ in range(cap // len(read) - 1):
        assert m.feed(read).forward == b""
    held = pending_bytes_total() - before
    assert m.state == "streaming" and m.pending_bytes > cap - 2 * len(read)
    assert m.pending_bytes <= held <= cap + len(read), held
    out = m.feed(b'"}}]}\n\n').forward
    assert out.endswith(b'"}}]}\n\n') and m.completion_tokens > 0
    assert pending_bytes_total() - before < 1 << 20
