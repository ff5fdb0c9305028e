"""Realistic streams in each wire format, built from text deltas.

Used by `meterkit meter` (its sample), the benchmarks and the tests; the mock upstream
builds its responses from the same functions, so what the tests and benchmarks parse is what
a real OpenAI- or Anthropic-compatible server sends (field order and sizes included).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import orjson

__all__ = [
    "SAMPLE_TEXT",
    "anthropic_events",
    "chat_events",
    "completions_events",
    "responses_events",
    "split_deltas",
    "stream_bytes",
]

SAMPLE_TEXT = (
    "Streaming responses are asymmetric: closing the downstream connection does not cancel "
    "the upstream model call. A metering proxy has to notice the client leaving and abort "
    "the upstream request, or the tokens are billed anyway.\n\n"
    "```python\nasync for chunk in stream:\n    if await request.is_disconnected():\n"
    '        break\n```\n\nÜbersicht: 東京は晴れ。 Emoji 🙂👍🏽 and JSON {"a": [1, 2, 3]}.'
)


def split_deltas(text: str, sizes: Sequence[int] = (3, 5, 2, 7, 4, 1, 6)) -> list[str]:
    """Split text into deltas of cycling character counts (LLM deltas are a few chars)."""
    out: list[str] = []
    i = 0
    k = 0
    while i < len(text):
        n = sizes[k % len(sizes)]
        out.append(text[i : i + n])
        i += n
        k += 1
    return out


def _sse(data: bytes, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + data + b"\n\n"


def _dumps(obj: object) -> bytes:
    return orjson.dumps(obj)


def chat_events(
    deltas: Iterable[str],
    *,
    model: str = "gpt-4o-2024-08-06",
    stream_id: str = "chatcmpl-meterkit0000000000000000001",
    created: int = 1_731_000_000,
    finish_reason: str = "stop",
    usage: dict[str, object] | None = None,
    include_usage: bool = False,
    choice: int = 0,
) -> Iterator[bytes]:
    """OpenAI chat completion chunks, role first, then content, finish, usage, [DONE]."""
    base = {
        "id": stream_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_meterkit",
    }
    extra: dict[str, object] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
        body = {
            **base,
            "choices": [
                {"index": choice, "delta": delta, "logprobs": None, "finish_reason": finish}
            ],
            **extra,
        }
        return _sse(_dumps(body))

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for d in deltas:
        yield chunk({"content": d})
    yield chunk({}, finish_reason)
    if include_usage:
        yield _sse(_dumps({**base, "choices": [], "usage": usage}))
    yield b"data: [DONE]\n\n"


def completions_events(
    deltas: Iterable[str],
    *,
    model: str = "gpt-3.5-turbo-instruct",
    stream_id: str = "cmpl-meterkit0001",
    created: int = 1_731_000_000,
    finish_reason: str = "stop",
    usage: dict[str, object] | None = None,
) -> Iterator[bytes]:
    """Legacy completions chunks (`choices[i].text`)."""
    base = {"id": stream_id, "object": "text_completion", "created": created, "model": model}
    for d in deltas:
        body = {
            **base,
            "choices": [{"text": d, "index": 0, "logprobs": None, "finish_reason": None}],
        }
        yield _sse(_dumps(body))
    last: dict[str, object] = {
        **base,
        "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        last["usage"] = usage
    yield _sse(_dumps(last))
    yield b"data: [DONE]\n\n"


def anthropic_events(
    deltas: Iterable[str],
    *,
    model: str = "claude-sonnet-4-6",
    message_id: str = "msg_meterkit0001",
    input_tokens: int = 25,
    output_tokens: int | None = None,
    stop_reason: str = "end_turn",
) -> Iterator[bytes]:
    """Anthropic Messages events: message_start, one text block, message_delta, message_stop."""
    start = {
        "type": "message_start",
        "message": {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        },
    }
    yield _sse(_dumps(start), "message_start")
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    yield _sse(_dumps(block), "content_block_start")
    yield _sse(b'{"type": "ping"}', "ping")
    n = 0
    for d in deltas:
        n += 1
        ev = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": d}}
        yield _sse(_dumps(ev), "content_block_delta")
    yield _sse(_dumps({"type": "content_block_stop", "index": 0}), "content_block_stop")
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": n if output_tokens is None else output_tokens},
    }
    yield _sse(_dumps(delta), "message_delta")
    yield _sse(_dumps({"type": "message_stop"}), "message_stop")


def responses_events(
    deltas: Iterable[str],
    *,
    model: str = "gpt-4o-2024-08-06",
    response_id: str = "resp_meterkit0001",
    created: int = 1_731_000_000,
    usage: dict[str, object] | None = None,
    status: str = "completed",
) -> Iterator[bytes]:
    """OpenAI Responses events for one message item with one output_text part.

    `status` "completed" ends with `response.completed`; any other value is the reason of a
    `response.incomplete` end (e.g. "max_output_tokens").
    """
    seq = 0

    def ev(kind: str, body: dict[str, object]) -> bytes:
        nonlocal seq
        payload = {"type": kind, "sequence_number": seq, **body}
        seq += 1
        return _sse(_dumps(payload), kind)

    response: dict[str, object] = {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "model": model,
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": None,
    }
    yield ev("response.created", {"response": response})
    yield ev("response.in_progress", {"response": response})
    item = {
        "id": "msg_0001",
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    yield ev("response.output_item.added", {"output_index": 0, "item": item})
    part = {"type": "output_text", "text": "", "annotations": []}
    yield ev(
        "response.content_part.added",
        {"item_id": "msg_0001", "output_index": 0, "content_index": 0, "part": part},
    )
    text: list[str] = []
    for d in deltas:
        if len(text) < 100_000:  # the final echo of the text is capped for endless mock streams
            text.append(d)
        yield ev(
            "response.output_text.delta",
            {
                "item_id": "msg_0001",
                "output_index": 0,
                "content_index": 0,
                "delta": d,
                "logprobs": [],
            },
        )
    full = "".join(text)
    yield ev(
        "response.output_text.done",
        {
            "item_id": "msg_0001",
            "output_index": 0,
            "content_index": 0,
            "text": full,
            "logprobs": [],
        },
    )
    done_part = {"type": "output_text", "text": full, "annotations": []}
    yield ev(
        "response.content_part.done",
        {"item_id": "msg_0001", "output_index": 0, "content_index": 0, "part": done_part},
    )
    done_item = {**item, "status": "completed", "content": [done_part]}
    yield ev("response.output_item.done", {"output_index": 0, "item": done_item})
    if status == "completed":
        final = {**response, "status": "completed", "output": [done_item], "usage": usage}
        yield ev("response.completed", {"response": final})
    else:
        final = {
            **response,
            "status": "incomplete",
            "incomplete_details": {"reason": status},
            "output": [done_item],
            "usage": usage,
        }
        yield ev("response.incomplete", {"response": final})


def stream_bytes(events: Iterable[bytes]) -> bytes:
    return b"".join(events)
