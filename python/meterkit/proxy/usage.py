"""Turning what a response said into a usage record: upstream-reported usage wins, then the
meter's exact count, then an estimate; each figure keeps its provenance."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from meterkit import StreamMeter, count_request_prompt, count_tokens, resolve_model
from meterkit.proxy.context import RequestContext
from meterkit.usage import Outcome, UsageRecord

# Prompts bigger than this are counted in a worker thread (the core releases the GIL).
_THREAD_PROMPT_BYTES = 32 * 1024


def usage_from_json(fmt: str | None, body: Any) -> dict[str, Any] | None:
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
            if isinstance(u.get(k), int):
                out[name] = u[k]
                break
    details_in = u.get("prompt_tokens_details") or u.get("input_tokens_details") or {}
    if isinstance(details_in, dict) and isinstance(details_in.get("cached_tokens"), int):
        out["cached_input_tokens"] = details_in["cached_tokens"]
    elif isinstance(u.get("cache_read_input_tokens"), int):
        out["cached_input_tokens"] = u["cache_read_input_tokens"]
    details_out = u.get("completion_tokens_details") or u.get("output_tokens_details") or {}
    if isinstance(details_out, dict) and isinstance(details_out.get("reasoning_tokens"), int):
        out["reasoning_tokens"] = details_out["reasoning_tokens"]
    texts: list[str] = []
    if fmt == "openai-chat":
        for choice in body.get("choices") or []:
            msg = choice.get("message") or {} if isinstance(choice, dict) else {}
            for k in ("content", "refusal", "reasoning_content"):
                if isinstance(msg.get(k), str):
                    texts.append(msg[k])
            for call in msg.get("tool_calls") or []:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    texts.append(fn["arguments"])
    elif fmt == "openai-completions":
        texts += [
            c["text"]
            for c in body.get("choices") or []
            if isinstance(c, dict) and isinstance(c.get("text"), str)
        ]
    elif fmt == "openai-responses":
        for item in body.get("output") or []:
            if not isinstance(item, dict):
                continue
            if isinstance(item.get("arguments"), str):
                texts.append(item["arguments"])
            for part in item.get("content") or item.get("summary") or []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    elif fmt == "anthropic":
        import orjson

        for block in body.get("content") or []:
            if not isinstance(block, dict):
                continue
            for k in ("text", "thinking"):
                if isinstance(block.get(k), str):
                    texts.append(block[k])
            if block.get("type") == "tool_use" and "input" in block:
                texts.append(orjson.dumps(block["input"]).decode())
    out["text"] = texts
    return out


async def _prompt_tokens(ctx: RequestContext) -> tuple[int | None, str | None]:
    if ctx.prompt_tokens is not None:
        return ctx.prompt_tokens, ctx.prompt_provenance
    if ctx.json is None or ctx.format is None:
        return None, None
    model = ctx.model or ""
    exact = (
        ctx.format in ("openai-chat", "openai-completions")
        and resolve_model(model).provenance == "counted"
    )
    if ctx.body is not None and len(ctx.body) > _THREAD_PROMPT_BYTES:
        n = await asyncio.to_thread(count_request_prompt, ctx.json, ctx.format)
    else:
        n = count_request_prompt(ctx.json, ctx.format)
    return n, "counted" if exact else "estimated"


async def finish_record(
    ctx: RequestContext,
    *,
    status: int,
    outcome: str,
    error: str | None,
    ttft: float | None,
    duration: float,
    response_bytes: int,
    meter: StreamMeter | None,
    json_usage: dict[str, Any] | None,
) -> UsageRecord:
    record = UsageRecord(
        request_id=ctx.request_id,
        route=ctx.route.key,
        upstream=ctx.upstream.name,
        method=ctx.request.method,
        path=ctx.request.path,
        started_at=ctx.started_at,
        model=ctx.model,
        format=ctx.format,
        stream=meter is not None,
        status=status,
        ttft_ms=None if ttft is None else round(ttft * 1000, 3),
        duration_ms=round(duration * 1000, 3),
        request_bytes=len(ctx.body) if ctx.body is not None else (ctx.request.content_length or 0),
        response_bytes=response_bytes,
        outcome=cast(Outcome, outcome),
        error=error,
    )
    reported: dict[str, int] = {}
    counted: int | None = None
    counted_prov: str | None = None
    if meter is not None:
        record.format = meter.format or ctx.format
        record.model = ctx.model or meter.stream_model
        usage = meter.usage
        if usage is not None:
            reported = usage.as_dict()
        if meter.format is not None:
            counted, counted_prov = meter.completion_tokens, meter.provenance
        record.upstream_bytes = meter.bytes_in
        record.anomalies = [a.kind for a in meter.anomalies]
        record.would_truncate_at = meter.would_truncate_at
    elif json_usage is not None:
        reported = {k: v for k, v in json_usage.items() if k != "text"}
        model = ctx.model or ""
        enc = resolve_model(model)
        counted = sum(count_tokens(t, model, allow_estimate=True) for t in json_usage["text"])
        counted_prov = enc.provenance
    record.upstream_usage = reported or None
    record.counted_completion_tokens = counted
    if "output_tokens" in reported and outcome == "completed":
        # What the provider bills. Only a finished response carries the final figure: a cut,
        # cancelled or broken stream has at most a preliminary one (Anthropic's message_start).
        record.completion_tokens, record.completion_provenance = (
            reported["output_tokens"],
            "provider",
        )
    elif counted is not None:
        record.completion_tokens, record.completion_provenance = counted, counted_prov  # type: ignore[assignment]
    if "input_tokens" in reported:
        record.prompt_tokens, record.prompt_provenance = reported["input_tokens"], "provider"
    else:
        n, prov = await _prompt_tokens(ctx)
        record.prompt_tokens, record.prompt_provenance = n, prov  # type: ignore[assignment]
    record.reasoning_tokens = reported.get("reasoning_tokens")
    record.cached_prompt_tokens = reported.get("cached_input_tokens")
    return record
