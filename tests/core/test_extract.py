"""Stream-format extraction, cross-checked against the official `openai` and `anthropic` SDKs
parsing the same bytes over a real loopback HTTP connection."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import meterkit
from meterkit import StreamMeter, detect_format, parse_event, synth

DELTAS = synth.split_deltas(synth.SAMPLE_TEXT)
TEXT = "".join(DELTAS)


def test_detect_format_from_path_and_first_event() -> None:
    assert detect_format("/v1/chat/completions") == "openai-chat"
    assert detect_format("/v1/messages?beta=true") == "anthropic"
    assert detect_format("/v1/responses") == "openai-responses"
    assert detect_format("/v1/completions") == "openai-completions"
    assert detect_format("/v1/embeddings") is None
    assert detect_format(event="message_start", data="{}") == "anthropic"
    assert detect_format(data='{"object":"chat.completion.chunk"}') == "openai-chat"
    assert detect_format(data="[DONE]") is None


def test_parse_event_every_kind() -> None:
    ev = parse_event(
        "openai-chat",
        '{"choices":[{"index":1,"delta":{"content":"a","reasoning_content":"r","tool_calls":[{"index":0,"function":{"arguments":"{}"}}]},"finish_reason":"tool_calls"}]}',
    )
    assert ev.deltas == [
        (1, 0, "content", "a"),
        (1, 0, "reasoning", "r"),
        (1, 0, "tool_arguments", "{}"),
    ]
    assert ev.finish_reasons == [(1, "tool_calls")]
    usage = parse_event(
        "openai-chat",
        '{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11,'
        '"prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":3}}}',
    ).usage
    assert usage is not None
    assert usage.as_dict() == {
        "input_tokens": 5,
        "output_tokens": 6,
        "total_tokens": 11,
        "cached_input_tokens": 2,
        "reasoning_tokens": 3,
    }
    assert parse_event("openai-chat", "[DONE]").kind == "done"
    err = parse_event(
        "anthropic",
        '{"type":"error","error":{"type":"overloaded_error","message":"busy"}}',
        event="error",
    )
    assert err.kind == "error" and err.error == ("overloaded_error", "busy", None)
    think = parse_event(
        "anthropic",
        '{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}',
    )
    assert think.deltas == [(0, 0, "reasoning", "hm")]
    tool = parse_event(
        "anthropic",
        '{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\\"a\\""}}',
    )
    assert tool.deltas == [(0, 2, "tool_arguments", '{"a"')]
    fn = parse_event(
        "openai-responses",
        '{"type":"response.function_call_arguments.delta","output_index":3,"delta":"{}"}',
    )
    assert fn.deltas == [(3, 0, "tool_arguments", "{}")]
    with pytest.raises(ValueError, match="malformed openai-chat event"):
        parse_event("openai-chat", "{nope")
    with pytest.raises(ValueError, match="unknown stream format"):
        parse_event("gemini", "{}")


def meter_all(data: bytes, fmt: str = "auto", **kw: Any) -> tuple[StreamMeter, bytes]:
    m = StreamMeter(fmt, **kw)
    out = bytearray()
    for i in range(0, len(data), 61):
        out += m.feed(data[i : i + 61]).forward
    out += m.close().forward
    return m, bytes(out)


def openai_client(url: str) -> Any:
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)


def anthropic_client(url: str) -> Any:
    import anthropic

    return anthropic.Anthropic(base_url=url, api_key="sk-test", max_retries=0)


def test_chat_extraction_matches_openai_sdk(replay: Any) -> None:
    usage = {"prompt_tokens": 12, "completion_tokens": 91, "total_tokens": 103}
    replay.body = synth.stream_bytes(synth.chat_events(DELTAS, include_usage=True, usage=usage))
    text, finish, sdk_usage = "", None, None
    for chunk in openai_client(replay.url).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
    ):
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
        sdk_usage = chunk.usage or sdk_usage
    m, out = meter_all(replay.body)
    assert out == replay.body
    assert text == TEXT
    assert m.completion_tokens == meterkit.count_tokens(text, "gpt-4o")
    assert m.finish_reasons == [(0, finish)]
    assert m.usage is not None and sdk_usage is not None
    assert m.usage.output_tokens == sdk_usage.completion_tokens
    assert m.usage.input_tokens == sdk_usage.prompt_tokens


def test_completions_extraction_matches_openai_sdk(replay: Any) -> None:
    replay.body = synth.stream_bytes(synth.completions_events(DELTAS))
    chunks = list(
        openai_client(replay.url).completions.create(
            model="gpt-3.5-turbo-instruct", prompt="x", stream=True
        )
    )
    sdk_text = "".join(c.choices[0].text for c in chunks if c.choices)
    m, _ = meter_all(replay.body, model="gpt-3.5-turbo-instruct")
    assert m.format == "openai-completions"
    assert sdk_text == TEXT
    assert m.completion_tokens == meterkit.count_tokens(TEXT, "gpt-3.5-turbo")


def test_responses_extraction_matches_openai_sdk(replay: Any) -> None:
    usage = {
        "input_tokens": 7,
        "output_tokens": 91,
        "total_tokens": 98,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    replay.body = synth.stream_bytes(synth.responses_events(DELTAS, usage=usage))
    events = list(
        openai_client(replay.url).responses.create(model="gpt-4o", input="hi", stream=True)
    )
    sdk_text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    m, _ = meter_all(replay.body)
    assert m.format == "openai-responses"
    assert sdk_text == TEXT
    assert m.completion_tokens == meterkit.count_tokens(TEXT, "gpt-4o")
    assert m.usage is not None and m.usage.output_tokens == events[-1].response.usage.output_tokens
    assert m.finish_reasons == [(0, "completed")]


def test_anthropic_extraction_matches_anthropic_sdk(replay: Any) -> None:
    replay.body = synth.stream_bytes(
        synth.anthropic_events(DELTAS, input_tokens=31, output_tokens=88)
    )
    with anthropic_client(replay.url).messages.stream(
        model="claude-sonnet-4-6", max_tokens=1000, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        final = stream.get_final_message()
    m, out = meter_all(replay.body)
    assert out == replay.body
    assert final.content[0].text == TEXT
    assert m.usage is not None
    assert (m.usage.input_tokens, m.usage.output_tokens) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )
    assert m.finish_reasons == [(0, final.stop_reason)]
    assert m.provenance == "estimated"


def test_malformed_event_is_forwarded_and_reported() -> None:
    good = synth.stream_bytes(synth.chat_events(["a", "b"]))
    bad = good.replace(b'"content":"b"', b'"content":"b"}}}', 1)
    m, out = meter_all(bad)
    assert out == bad
    assert [a.kind for a in m.anomalies] == ["malformed_json"]
    assert m.completion_tokens == meterkit.count_tokens("a", "gpt-4o")


def test_tool_calls_and_several_choices_are_all_billed() -> None:
    def ev(obj: object) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    chunks = [
        {
            "object": "chat.completion.chunk",
            "model": "gpt-4o",
            "choices": [
                {"index": 0, "delta": {"content": "Hello there"}},
                {
                    "index": 1,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "lookup", "arguments": '{"city": '},
                            }
                        ]
                    },
                },
            ],
        },
        {
            "object": "chat.completion.chunk",
            "model": "gpt-4o",
            "choices": [
                {
                    "index": 1,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
                },
                {"index": 0, "delta": {"content": ", friend"}, "finish_reason": "stop"},
            ],
        },
    ]
    data = b"".join(ev(c) for c in chunks) + b"data: [DONE]\n\n"
    m, _ = meter_all(data)
    expected = meterkit.count_tokens("Hello there, friend") + meterkit.count_tokens(
        '{"city": "Paris"}'
    )
    assert m.completion_tokens == expected
    assert dict(m.tokens_by_channel)["tool_arguments"] == meterkit.count_tokens('{"city": "Paris"}')
