"""Per-wire-format rules for request and response *bodies*, in one place: which field caps
the completion, how to ask a stream for its usage, what a body must look like before the
gateway reads it, and what a non-streamed response says it used.

Streams are the Rust core's job (`meterkit.StreamMeter`); this module only reads and edits
parsed JSON bodies, web-free.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson

from meterkit import count_request_prompt, count_tokens, resolve_model

# Prompts bigger than this are counted in a worker thread (the core releases the GIL).
THREAD_PROMPT_BYTES = 32 * 1024

_CAP_FIELDS: dict[str, tuple[str, ...]] = {
    "openai-chat": ("max_completion_tokens", "max_tokens"),
    "openai-completions": ("max_tokens",),
    "openai-responses": ("max_output_tokens",),
    "anthropic": ("max_tokens",),
}


class InvalidBody(ValueError):
    """A field of a request body has a shape the format does not allow."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


def requested_max(body: Mapping[str, Any], fmt: str | None) -> tuple[int | None, str]:
    """The completion limit a request asks for, and the field that carries it for `fmt`."""
    keys = _CAP_FIELDS.get(fmt or "", ())
    found = [
        (body[k], k)
        for k in keys
        if isinstance(body.get(k), int) and not isinstance(body.get(k), bool)
    ]
    if not found:
        return None, keys[0] if keys else "max_tokens"
    value, key = min(found)
    return int(value), key


def set_completion_cap(body: dict[str, Any], fmt: str | None, cap: int) -> bool:
    """Make the body ask for at most `cap` completion tokens; True when it changed."""
    requested, key = requested_max(body, fmt)
    if requested is not None and requested <= cap:
        return False
    body[key] = cap
    return True


def ask_for_usage(body: dict[str, Any], fmt: str | None, stream: bool) -> bool:
    """OpenAI streams report usage only when asked: ask. True when the body changed (the
    client did not ask, so the meter must strip the usage it did not expect)."""
    if not stream or fmt not in ("openai-chat", "openai-completions"):
        return False
    opts = body.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage") is True:
        return False
    body["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    return True


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _messages(value: Any, field: str) -> None:
    if not isinstance(value, list):
        raise InvalidBody(field, "must be an array of message objects")
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise InvalidBody(f"{field}[{i}]", "must be an object")
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidBody(f"{field}[{i}].content", "must be a string or an array")
        if isinstance(content, list) and not all(isinstance(p, dict | str) for p in content):
            raise InvalidBody(f"{field}[{i}].content", "parts must be objects")
        role = m.get("role")
        if role is not None and not isinstance(role, str):
            raise InvalidBody(f"{field}[{i}].role", "must be a string")


def validate_body(body: dict[str, Any], fmt: str | None) -> None:
    """Refuse the shapes the gateway would otherwise trip over (and the upstream refuse
    anyway): every field meterkit reads must have its documented type. Raises InvalidBody."""
    if fmt is None:
        return
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidBody("model", "must be a string")
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise InvalidBody("stream", "must be true or false")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise InvalidBody("stream_options", "must be an object")
    for key in _CAP_FIELDS.get(fmt, ()):
        if key in body and body[key] is not None:
            v = body[key]
            if not _is_int(v) or v < 1:
                raise InvalidBody(key, "must be a positive integer")
    if fmt == "openai-chat":
        if "messages" in body:
            _messages(body["messages"], "messages")
    elif fmt == "anthropic":
        if "messages" in body:
            _messages(body["messages"], "messages")
        system = body.get("system")
        if system is not None and not isinstance(system, str | list):
            raise InvalidBody("system", "must be a string or an array of blocks")
    elif fmt == "openai-responses":
        items = body.get("input")
        if items is not None and not isinstance(items, str | list):
            raise InvalidBody("input", "must be a string or an array of items")
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise InvalidBody("instructions", "must be a string")
    elif fmt == "openai-completions":
        prompt = body.get("prompt")
        if prompt is None or isinstance(prompt, str):
            return
        if not isinstance(prompt, list) or not all(
            isinstance(p, str) or _is_int(p) or (isinstance(p, list) and all(map(_is_int, p)))
            for p in prompt
        ):
            raise InvalidBody("prompt", "must be a string, strings, or token arrays")


async def prompt_count(
    body: Mapping[str, Any], fmt: str, model: str | None, size: int
) -> tuple[int, str]:
    """Prompt tokens of a request body and their provenance (`counted` with the model's own
    tokenizer, else `estimated`); `size` is the body's byte length (big ones go to a thread)."""
    if size > THREAD_PROMPT_BYTES:
        n = await asyncio.to_thread(count_request_prompt, body, fmt)
    else:
        n = count_request_prompt(body, fmt)
    return n, _prompt_provenance(fmt, model)


def prompt_count_now(body: Mapping[str, Any], fmt: str, model: str | None) -> tuple[int, str]:
    """`prompt_count` on the calling thread, for a body of at most `THREAD_PROMPT_BYTES`
    (the proxy's usage record skips a task when nothing else needs to wait)."""
    return count_request_prompt(body, fmt), _prompt_provenance(fmt, model)


# Provenance by (format, model): a pure function of the two, asked once per request (~0.4 µs
# through the core's model table); bounded in entries and key size against clients.
_PROVENANCE: dict[tuple[str, str | None], str] = {}


def _prompt_provenance(fmt: str, model: str | None) -> str:
    key = (fmt, model)
    hit = _PROVENANCE.get(key)
    if hit is None:
        exact = (
            fmt in ("openai-chat", "openai-completions")
            and resolve_model(model or "").provenance == "counted"
        )
        hit = "counted" if exact else "estimated"
        if model is None or len(model) <= 256:
            if len(_PROVENANCE) >= 1024:
                _PROVENANCE.clear()
            _PROVENANCE[key] = hit
    return hit


def response_usage(fmt: str | None, body: Any) -> dict[str, Any] | None:
    """Usage and billed text of a non-streamed response body, normalised like the meter's
    `Usage` (input_tokens, output_tokens, cached_input_tokens, reasoning_tokens) plus `text`."""
    if fmt is None or not isinstance(body, dict):
        return None
    raw_usage = body.get("usage")
    u: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    out: dict[str, Any] = {}
    for name, keys in (
        ("input_tokens", ("prompt_tokens", "input_tokens")),
        ("output_tokens", ("completion_tokens", "output_tokens")),
        ("total_tokens", ("total_tokens",)),
        ("cache_creation_input_tokens", ("cache_creation_input_tokens",)),
    ):
        for k in keys:
            if _is_int(u.get(k)):
                out[name] = u[k]
                break
    details_in = u.get("prompt_tokens_details") or u.get("input_tokens_details") or {}
    if isinstance(details_in, dict) and _is_int(details_in.get("cached_tokens")):
        out["cached_input_tokens"] = details_in["cached_tokens"]
    elif _is_int(u.get("cache_read_input_tokens")):
        out["cached_input_tokens"] = u["cache_read_input_tokens"]
    details_out = u.get("completion_tokens_details") or u.get("output_tokens_details") or {}
    if isinstance(details_out, dict) and _is_int(details_out.get("reasoning_tokens")):
        out["reasoning_tokens"] = details_out["reasoning_tokens"]
    out["text"] = _response_texts(fmt, body)
    return out


def _objects(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _response_texts(fmt: str, body: dict[str, Any]) -> list[str]:
    texts: list[str] = []
    if fmt == "openai-chat":
        for choice in _objects(body.get("choices")):
            msg = choice.get("message")
            if not isinstance(msg, dict):
                continue
            for k in ("content", "refusal", "reasoning_content"):
                if isinstance(msg.get(k), str):
                    texts.append(msg[k])
            for call in _objects(msg.get("tool_calls")):
                fn = call.get("function")
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    texts.append(fn["arguments"])
    elif fmt == "openai-completions":
        texts += [
            c["text"] for c in _objects(body.get("choices")) if isinstance(c.get("text"), str)
        ]
    elif fmt == "openai-responses":
        for item in _objects(body.get("output")):
            if isinstance(item.get("arguments"), str):
                texts.append(item["arguments"])
            for part in _objects(item.get("content") or item.get("summary")):
                if isinstance(part.get("text"), str):
                    texts.append(part["text"])
    elif fmt == "anthropic":
        for block in _objects(body.get("content")):
            for k in ("text", "thinking"):
                if isinstance(block.get(k), str):
                    texts.append(block[k])
            if block.get("type") == "tool_use" and "input" in block:
                texts.append(orjson.dumps(block["input"]).decode())
    return texts


def completion_count(texts: list[str], model: str | None) -> tuple[int, str]:
    """Completion tokens of a non-streamed response's billed texts, with provenance."""
    m = model or ""
    return sum(count_tokens(t, m, allow_estimate=True) for t in texts), resolve_model(m).provenance
