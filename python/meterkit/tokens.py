"""Token counting: model resolution, one-shot counts and prompt estimates.

The counting itself is in the Rust core (exact BPE with embedded vocabularies); this module
normalises arguments and holds the rules for walking request bodies.

Unknown models: counting needs an explicit ``allow_estimate=True``. The fallback encoding is
``o200k_base`` and everything counted with it carries the provenance ``"estimated"`` (this is
also the case for Anthropic models, whose tokenizer is not public).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple

import orjson

from meterkit import _core

__all__ = [
    "ModelEncoding",
    "UnknownModelError",
    "count_chat_prompt",
    "count_request_prompt",
    "count_tokens",
    "encoding_for_model",
    "resolve_model",
]

UnknownModelError = _core.UnknownModelError
Provenance = Literal["counted", "estimated"]


class ModelEncoding(NamedTuple):
    encoding: str
    provenance: Provenance


def encoding_for_model(model: str) -> str:
    """The encoding a model uses (``o200k_base`` or ``cl100k_base``).

    Raises ``UnknownModelError`` (a ``KeyError``) for a model whose tokenizer is not known,
    like ``tiktoken.encoding_name_for_model``; see ``resolve_model`` for the fallback.
    """
    name = _core.encoding_name_for_model(model)
    if name is None:
        raise UnknownModelError(
            f"no known tokenizer for model {model!r}; resolve_model() gives the fallback "
            f"{_core.FALLBACK_ENCODING} with provenance 'estimated'"
        )
    return name


def resolve_model(model: str) -> ModelEncoding:
    """Encoding and provenance for any model: exact where known, else the stated fallback."""
    encoding, provenance = _core.resolve_model(model)
    return ModelEncoding(encoding, provenance)  # type: ignore[arg-type]


def _encoding(model: str | None, encoding: str | None, allow_estimate: bool) -> str:
    if encoding is not None:
        if encoding not in _core.ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; embedded: {_core.ENCODINGS}")
        return encoding
    if model is None:
        raise ValueError("pass a model or an encoding")
    if model in _core.ENCODINGS:
        return model
    if allow_estimate:
        return resolve_model(model).encoding
    return encoding_for_model(model)


def count_tokens(
    text: str,
    model: str = "gpt-4o",
    *,
    encoding: str | None = None,
    allow_estimate: bool = False,
) -> int:
    """Exact token count of ``text`` for ``model`` (or an explicit ``encoding``).

    Special-token text such as ``<|endoftext|>`` is counted as ordinary text, like
    ``tiktoken``'s ``encode_ordinary``. Long inputs are counted with the GIL released.
    """
    return _core.count_tokens(text, _encoding(model, encoding, allow_estimate))


def _message_values(message: Mapping[str, Any]) -> list[str]:
    """The string values OpenAI's rule counts for one message.

    Text parts of list content and tool-call names/arguments count; other non-text parts
    (images, audio) do not, so the result is an estimate for multimodal messages.
    """
    values: list[str] = []
    for key, value in message.items():
        if isinstance(value, str):
            values.append(value)
        elif key == "content" and isinstance(value, list):
            for part in value:
                if isinstance(part, Mapping):
                    for field in ("text", "input_text", "thinking"):
                        text = part.get(field)
                        if isinstance(text, str):
                            values.append(text)
                    if part.get("type") == "tool_use" and "input" in part:
                        values.append(orjson.dumps(part["input"]).decode())
                    if part.get("type") == "tool_result":
                        values.extend(_message_values({"content": part.get("content")}))
        elif key in ("tool_calls", "function_call"):
            calls = value if isinstance(value, list) else [{"function": value}]
            for call in calls:
                fn = call.get("function") if isinstance(call, Mapping) else None
                if isinstance(fn, Mapping):
                    values.extend(
                        v for v in (fn.get("name"), fn.get("arguments")) if isinstance(v, str)
                    )
    return values


def count_chat_prompt(
    messages: Iterable[Mapping[str, Any]],
    model: str = "gpt-4o",
    *,
    encoding: str | None = None,
    allow_estimate: bool = False,
) -> int:
    """Prompt tokens of a chat request by OpenAI's published rule.

    Per message 3 tokens plus the tokens of each field value (plus 1 when it has a ``name``),
    plus 3 for the reply priming. Exact for text-only OpenAI chat requests in practice; an
    admission estimate otherwise.
    """
    enc = _encoding(model, encoding, allow_estimate)
    texts: list[str] = []
    overhead = 3
    for message in messages:
        if not isinstance(message, Mapping):
            raise TypeError(f"each message must be a mapping, not {type(message).__name__}")
        overhead += 3 + (1 if "name" in message else 0)
        texts.extend(_message_values(message))
    return overhead + _core.count_tokens_total(texts, enc)


def count_request_prompt(
    body: Mapping[str, Any],
    fmt: str,
    model: str | None = None,
    *,
    allow_estimate: bool = True,
) -> int:
    """Prompt tokens of an LLM request body in any supported format (admission estimate).

    ``fmt`` is a stream format name (``openai-chat``, ``openai-responses``,
    ``openai-completions``, ``anthropic``). The model defaults to the body's ``model``.
    """
    model = model or str(body.get("model") or "")
    enc = _encoding(model or None, None if model else _core.FALLBACK_ENCODING, allow_estimate)
    if fmt == "openai-chat":
        return count_chat_prompt(body.get("messages") or [], encoding=enc)
    if fmt == "anthropic":
        messages = list(body.get("messages") or [])
        system = body.get("system")
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        return count_chat_prompt(messages, encoding=enc)
    if fmt == "openai-responses":
        items = body.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        messages = [i for i in (items or []) if isinstance(i, Mapping)]
        if isinstance(body.get("instructions"), str):
            messages.insert(0, {"role": "system", "content": body["instructions"]})
        return count_chat_prompt(messages, encoding=enc)
    if fmt == "openai-completions":
        prompt = body.get("prompt")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        return _core.count_tokens_total([p for p in prompts if isinstance(p, str)], enc)
    raise ValueError(f"unknown format {fmt!r}")
