"""Exactly one usage record, one request metric and one access-log line per request, whoever
answered it: upstream-reported usage wins, then the meter's exact count, then an estimate;
each figure keeps its provenance.

The record is finished in a task of its own: it may need to count the prompt (CPU, off the
loop for big prompts) and it must complete even while the handler is being cancelled.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from meterkit import formats
from meterkit.observability import spend
from meterkit.pipeline import RequestContext
from meterkit.proxy.appkeys import CONFIG, METRICS, PIPELINE, SINK, TASKS
from meterkit.usage import Outcome, UsageRecord, trust

log = logging.getLogger("meterkit.proxy")
access_log = logging.getLogger("meterkit.access")

# The route label of requests no route matched.
UNROUTED = "-"


async def build(ctx: RequestContext, duration: float) -> UsageRecord:
    record, reported = _draft(ctx, duration)
    if "input_tokens" not in reported and _reached_upstream(ctx):
        record.prompt_tokens, record.prompt_provenance = await _prompt(ctx)  # type: ignore[assignment]
    return record


def _reached_upstream(ctx: RequestContext) -> bool:
    """A request the gateway answered itself (a 401, 402, 429…) never reached the upstream:
    it counts no tokens and costs nothing (issue 20 #2: a 402 and its paid retry counted
    the prompt twice)."""
    return ctx.result.upstream_called


def _draft(ctx: RequestContext, duration: float) -> tuple[UsageRecord, dict[str, int]]:
    """The record but for a prompt that still needs counting (no `input_tokens` in the
    upstream's usage, returned as well): everything that needs no waiting."""
    r = ctx.result
    request = ctx.request
    record = UsageRecord(
        request_id=ctx.request_id,
        client_request_id=ctx.client_request_id,
        route=ctx.route.key,
        upstream=ctx.upstream.name,
        method=request.method,
        path=request.path,
        started_at=ctx.started_at,
        model=ctx.model,
        format=ctx.format,
        stream=r.meter is not None,
        status=r.status,
        ttft_ms=_ms(r.ttft),
        ttfb_ms=_ms(r.ttfb),
        duration_ms=round(duration * 1000, 3),
        request_bytes=len(ctx.body) if ctx.body is not None else (request.content_length or 0),
        response_bytes=r.sent,
        outcome=r.outcome,
        reason=r.reason,
        error=r.error,
        truncation=r.truncation if r.outcome == "truncated" else None,
    )
    reported: dict[str, int] = {}
    counted: int | None = None
    counted_prov: str | None = None
    meter = r.meter
    json_usage = formats.response_usage(ctx.format, r.json_body) if r.json_body else None
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
        counted, counted_prov = formats.completion_count(json_usage["text"], ctx.model)
    # What the provider said, as it said it; only usable figures (non-negative integers of a
    # sane size) are read below: nothing an upstream sends can break a record or a metric.
    record.upstream_usage = reported or None
    usable = {k: v for k, v in reported.items() if trust.usable(v) is not None}
    if len(usable) < len(reported):
        record.anomalies.append("unusable_usage")
    reported = usable
    record.counted_completion_tokens = counted
    # Only a finished response carries the provider's final figure: a cut, cancelled or
    # broken stream has at most a preliminary one (Anthropic's message_start), so its count
    # is billed.
    final = reported.get("output_tokens") if r.outcome == "completed" else None
    billed = trust.completion(
        reported=final,
        counted=counted,
        counted_provenance=counted_prov,
        reasoning=reported.get("reasoning_tokens"),
        limit=_limit(ctx),
        source=ctx.upstream.usage_source,
    )
    if billed is not None:
        record.completion_tokens, record.completion_provenance = billed.tokens, billed.provenance  # type: ignore[assignment]
        if billed.discrepancy is not None:
            record.usage_discrepancy = billed.discrepancy
            log.warning(
                "upstream usage disagrees with the count on the wire",
                extra={"request_id": ctx.request_id, "route": ctx.route.key, **billed.discrepancy},
            )
    if "input_tokens" in reported:
        record.prompt_tokens, record.prompt_provenance = reported["input_tokens"], "provider"
    record.reasoning_tokens = reported.get("reasoning_tokens")
    record.cached_prompt_tokens = reported.get("cached_input_tokens")
    record.identity = ctx.identity.label()
    return record, reported


def _limit(ctx: RequestContext) -> int | None:
    """The most completion tokens the request could have produced: the smallest of its own
    limit and the caps the stages enforced."""
    requested = formats.requested_max(ctx.json, ctx.format)[0] if ctx.json is not None else None
    return ctx.caps.effective(requested)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


async def _prompt(ctx: RequestContext) -> tuple[int | None, str | None]:
    if ctx.prompt_tokens is not None:
        return ctx.prompt_tokens, ctx.prompt_provenance
    if ctx.json is None or ctx.format is None:
        return None, None
    try:
        return await formats.prompt_count(ctx.json, ctx.format, ctx.model, len(ctx.body or b""))
    except Exception:
        # The body was validated; a shape the counter still trips on costs the estimate,
        # never the record.
        log.warning("could not count the prompt", exc_info=True)
        return None, None


def _prompt_now(ctx: RequestContext) -> tuple[int | None, str | None]:
    """`_prompt` without waiting; only for a body `formats.prompt_count` counts in place."""
    if ctx.prompt_tokens is not None:
        return ctx.prompt_tokens, ctx.prompt_provenance
    if ctx.json is None or ctx.format is None:
        return None, None
    try:
        return formats.prompt_count_now(ctx.json, ctx.format, ctx.model)
    except Exception:
        log.warning("could not count the prompt", exc_info=True)
        return None, None


def finish(ctx: RequestContext) -> None:
    """Write the request's record once its stages heard how it ended."""
    app = ctx.request.app
    duration = time.monotonic() - ctx.started
    if not ctx.entered and len(ctx.body or b"") <= formats.THREAD_PROMPT_BYTES:
        # No stage to tell and no prompt to count off the loop: nothing to wait for, so the
        # record is written now rather than by a task of its own (a task costs ~6 µs per
        # request, issue 14 item 2). Synchronous code completes even in a handler being
        # cancelled, as the task did.
        try:
            record, reported = _draft(ctx, duration)
            if "input_tokens" not in reported and _reached_upstream(ctx):
                record.prompt_tokens, record.prompt_provenance = _prompt_now(ctx)  # type: ignore[assignment]
            _submit(app, record)
        except Exception:
            # What the task's failure did (asyncio logged it); never the client's problem.
            log.exception("could not write the usage record")
        return

    async def run() -> None:
        record = await build(ctx, duration)
        await app[PIPELINE].finish(ctx, record)
        _submit(app, record)

    app[TASKS].spawn(run())


def finish_unrouted(
    request: web.Request,
    request_id: str,
    client_request_id: str | None,
    started: tuple[float, float],
    status: int,
    outcome: Outcome,
    reason: str | None,
) -> None:
    """The record of a request that never got a context (no route, or refused before)."""
    started_at, t0 = started
    record = UsageRecord(
        request_id=request_id,
        client_request_id=client_request_id,
        route=UNROUTED,
        upstream="",
        method=request.method,
        path=request.path,
        started_at=started_at,
        status=status,
        duration_ms=round((time.monotonic() - t0) * 1000, 3),
        request_bytes=request.content_length or 0,
        outcome=outcome,
        reason=reason,
    )
    _submit(request.app, record)


def _submit(app: web.Application, record: UsageRecord) -> None:
    # The record first: a metric or a log line that fails must not cost it.
    app[SINK].submit(record)
    try:
        observe(app, record)
        _access(record)
    except Exception:
        log.exception("could not observe the usage record", extra={"request_id": record.request_id})


def observe(app: web.Application, record: UsageRecord) -> None:
    m = app[METRICS]
    route = record.route
    # The cached children (`metrics.Children`), not `labels()` (~1 µs a call, 8 a request).
    m.by_requests[route, str(record.status), record.outcome].inc()
    if record.ttft_ms is not None:
        m.by_ttft[(route,)].observe(record.ttft_ms / 1000)
    if record.ttfb_ms is not None:
        m.by_ttfb[(route,)].observe(record.ttfb_ms / 1000)
    if record.truncation is not None:
        m.truncations.labels(route, record.truncation).inc()
    if record.outcome == "rejected":
        m.rejections.labels(route, record.reason or "unknown").inc()
    model = record.model or "unknown"
    if record.prompt_tokens is not None:
        m.by_tokens[route, model, "prompt", record.prompt_provenance or "estimated"].inc(
            record.prompt_tokens
        )
    if record.completion_tokens is not None:
        m.by_tokens[route, model, "completion", record.completion_provenance or "estimated"].inc(
            record.completion_tokens
        )
    for kind in record.anomalies:
        m.anomalies.labels(route, kind).inc()
    if record.usage_discrepancy is not None:
        m.usage_discrepancies.labels(route, record.usage_discrepancy["kind"]).inc()
    # Duration, time per output token, spend, revenue and the per-key series.
    spend.observe(m, record, app[CONFIG])


def _access(record: UsageRecord) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "request_id": record.request_id,
        "client_request_id": record.client_request_id,
        "method": record.method,
        "path": record.path,
        "route": record.route,
        "status": record.status,
        "outcome": record.outcome,
        "reason": record.reason,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "duration_ms": record.duration_ms,
    }
    access_log.info("request", extra=fields)
