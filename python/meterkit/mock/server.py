"""`meterkit mock-llm`: an OpenAI- and Anthropic-compatible upstream that behaves like a real
one where it matters to a metering proxy.

Endpoints: `POST /v1/chat/completions`, `/v1/completions`, `/v1/responses`, `/v1/messages`,
streamed (`"stream": true`) or not; `GET /v1/models`; `GET /_mock/stats`; `POST /_mock/reset`;
`GET /healthz`.

Behaviour: text is made of one-token words, so the usage it reports is the true count; it
honours `max_tokens` / `max_completion_tokens` / `max_output_tokens` (ending with `length` /
`max_tokens` when they cut), `n`, and `stream_options.include_usage`.

Per-request knobs, as request headers (a proxy forwards them):
- `x-mock-length: N` tokens per choice; `x-mock-tps: R` tokens per second (0: unpaced);
  `x-mock-ttft: S` seconds before the first token; `x-mock-delay-headers: S` seconds before
  the response headers;
- `x-mock-seed: S` fixes the text and ids and `x-mock-created: T` the timestamps, so two
  requests with the same headers get byte-identical answers;
- `x-mock-ignore-max: 1` ignore the request's token limit (a non-compliant upstream, so a
  proxy's own truncation can be tested); `x-mock-extra-usage: N` report N more completion
  tokens than were sent (like hidden reasoning tokens);
- `x-mock-status: 500` answer with that error status; `x-mock-reset-after: N` abort the TCP
  connection after N tokens; `x-mock-stall-after: N` stop sending after N tokens but keep the
  connection open; `x-mock-malformed-after: N` send one malformed event after N tokens.

`GET /_mock/stats[?request_id=…]` says, per request, how many tokens were generated and
whether the client connection is still open (and when it closed), which is how the tests
prove that a proxy cancels its upstream when its own client leaves.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from aiohttp import web

from meterkit import count_request_prompt, synth
from meterkit.mock.text import Words, words
from meterkit.runtime import serve_app

__all__ = ["MockOptions", "RequestStats", "build_mock_app", "run_mock"]

FORMAT_BY_PATH = {
    "/v1/chat/completions": "openai-chat",
    "/v1/completions": "openai-completions",
    "/v1/responses": "openai-responses",
    "/v1/messages": "anthropic",
}


@dataclass(frozen=True)
class MockOptions:
    tokens_per_second: float = 50.0
    ttft: float = 0.05
    length: int = 64
    seed: int = 0


@dataclass
class RequestStats:
    id: int
    request_id: str | None
    path: str
    format: str
    model: str
    stream: bool
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    # The request's limit and usage options, as received (to check what a proxy rewrote).
    body_fields: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    tokens_generated: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    client_open: bool = True
    outcome: str = "in_progress"
    started_at: float = field(default_factory=time.time)
    first_token_at: float | None = None
    ended_at: float | None = None
    closed_at: float | None = None


STATS: web.AppKey[dict[int, RequestStats]] = web.AppKey("mock_stats", dict)
OPTIONS: web.AppKey[MockOptions] = web.AppKey("mock_options", MockOptions)


class _Ids:
    def __init__(self) -> None:
        self._next = itertools.count(1)

    def next(self) -> int:
        return next(self._next)


COUNTER = web.AppKey("mock_counter", _Ids)


def _error(
    status: int, message: str, fmt: str = "openai-chat", kind: str = "invalid_request_error"
) -> web.Response:
    if fmt == "anthropic":
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _header_num(request: web.Request, name: str, default: float) -> float:
    raw = request.headers.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a number") from None


def _sse(obj: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


# ---- per-format event plans: (bytes, tokens carried) ----------------------------------------


def _chat_plan(
    body: dict[str, Any],
    texts: list[Words],
    fmt: str,
    finish: str,
    usage: dict[str, Any],
    include_usage: bool,
    created: int,
    rid: str,
) -> Iterator[tuple[bytes, int]]:
    chat = fmt == "openai-chat"
    base = {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": body.get("model", "gpt-4o"),
    }
    if chat:
        base["system_fingerprint"] = "fp_mock"
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    if chat:
        for c in range(len(texts)):
            choice = {
                "index": c,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            yield _sse({**base, "choices": [choice], **extra}), 0
    for i in range(max(map(len, texts), default=0)):
        for c, words_ in enumerate(texts):
            if i >= len(words_):
                continue
            if chat:
                choice = {
                    "index": c,
                    "delta": {"content": words_[i]},
                    "logprobs": None,
                    "finish_reason": None,
                }
            else:
                choice = {"text": words_[i], "index": c, "logprobs": None, "finish_reason": None}
            yield _sse({**base, "choices": [choice], **extra}), 1
    for c in range(len(texts)):
        if chat:
            choice = {"index": c, "delta": {}, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"text": "", "index": c, "logprobs": None, "finish_reason": finish}
        yield _sse({**base, "choices": [choice], **extra}), 0
    if include_usage:
        yield _sse({**base, "choices": [], "usage": usage}), 0
    yield b"data: [DONE]\n\n", 0


def _plan(
    fmt: str,
    body: dict[str, Any],
    texts: list[Words],
    finish: str,
    prompt: int,
    include_usage: bool,
    rid: str,
    created: int,
    extra: int = 0,
) -> Iterator[tuple[bytes, int]]:
    completion = sum(map(len, texts)) + extra
    if fmt in ("openai-chat", "openai-completions"):
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
        yield from _chat_plan(body, texts, fmt, finish, usage, include_usage, created, rid)
    elif fmt == "openai-responses":
        usage = {
            "input_tokens": prompt,
            "output_tokens": completion,
            "total_tokens": prompt + completion,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        for ev in synth.responses_events(
            texts[0],
            model=body.get("model", "gpt-4o"),
            response_id=rid,
            created=created,
            usage=usage,
            status=finish,
        ):
            yield ev, int(ev.startswith(b"event: response.output_text.delta\n"))
    else:
        for ev in synth.anthropic_events(
            texts[0],
            model=body.get("model", "claude-sonnet-4-6"),
            message_id=rid,
            input_tokens=prompt,
            output_tokens=completion,
            stop_reason=finish,
        ):
            yield ev, int(ev.startswith(b"event: content_block_delta\n"))


def _full_body(
    fmt: str,
    body: dict[str, Any],
    texts: list[Words],
    finish: str,
    prompt: int,
    rid: str,
    created: int,
    extra: int = 0,
) -> dict[str, Any]:
    completion = sum(map(len, texts)) + extra
    model = body.get("model", "gpt-4o")
    if fmt == "openai-chat":
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": c,
                    "message": {"role": "assistant", "content": "".join(t), "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for c, t in enumerate(texts)
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
    if fmt == "openai-completions":
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {"text": "".join(t), "index": c, "logprobs": None, "finish_reason": finish}
                for c, t in enumerate(texts)
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
    if fmt == "openai-responses":
        text = "".join(texts[0])
        status = "completed" if finish == "completed" else "incomplete"
        return {
            "id": rid,
            "object": "response",
            "created_at": created,
            "model": model,
            "status": status,
            "incomplete_details": None
            if status == "completed"
            else {"reason": "max_output_tokens"},
            "output": [
                {
                    "id": "msg_mock",
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "usage": {
                "input_tokens": prompt,
                "output_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
    return {
        "id": rid,
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "claude-sonnet-4-6"),
        "content": [{"type": "text", "text": "".join(texts[0])}],
        "stop_reason": finish,
        "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": completion},
    }


def _limit(fmt: str, body: dict[str, Any]) -> int | None:
    keys = {
        "openai-chat": ("max_completion_tokens", "max_tokens"),
        "openai-completions": ("max_tokens",),
        "openai-responses": ("max_output_tokens",),
        "anthropic": ("max_tokens",),
    }[fmt]
    for k in keys:
        v = body.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


async def _generate(request: web.Request) -> web.StreamResponse:
    fmt = FORMAT_BY_PATH[request.path]
    opts = request.app[OPTIONS]
    try:
        body = orjson.loads(await request.read())
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
    except ValueError as e:
        return _error(400, f"invalid JSON body: {e}", fmt)
    stats = RequestStats(
        id=request.app[COUNTER].next(),
        request_id=request.headers.get("X-Request-Id"),
        path=request.path,
        format=fmt,
        model=str(body.get("model", "")),
        stream=bool(body.get("stream")),
        query=request.raw_path.partition("?")[2],
        headers={k.lower(): v for k, v in request.headers.items()},
        body_fields={
            k: body[k]
            for k in ("stream_options", "max_tokens", "max_completion_tokens", "max_output_tokens")
            if k in body
        },
    )
    request.app[STATS][stats.id] = stats
    try:
        return await _respond(request, fmt, body, opts, stats)
    except asyncio.CancelledError:
        # The client went away (aiohttp cancels the handler when the connection is lost).
        stats.client_open = False
        stats.closed_at = time.time()
        if stats.outcome == "in_progress":
            stats.outcome = "client_closed"
        raise
    finally:
        stats.ended_at = stats.ended_at or time.time()


async def _respond(
    request: web.Request, fmt: str, body: dict[str, Any], opts: MockOptions, stats: RequestStats
) -> web.StreamResponse:
    await asyncio.sleep(_header_num(request, "x-mock-delay-headers", 0))
    forced = request.headers.get("x-mock-status")
    if forced:
        stats.status = int(forced)
        stats.outcome = "error"
        return _error(
            stats.status,
            f"injected failure {forced}",
            fmt,
            "server_error" if stats.status >= 500 else "rate_limit_error",
        )
    if fmt == "anthropic" and _limit(fmt, body) is None:
        stats.status = 400
        stats.outcome = "error"
        return _error(400, "max_tokens: field required", fmt)
    length = int(_header_num(request, "x-mock-length", opts.length))
    limit = None if request.headers.get("x-mock-ignore-max") else _limit(fmt, body)
    extra = int(_header_num(request, "x-mock-extra-usage", 0))
    n = body.get("n", 1) if fmt in ("openai-chat", "openai-completions") else 1
    n = n if isinstance(n, int) and 1 <= n <= 16 else 1
    out_len = min(length, limit) if limit is not None else length
    cut = limit is not None and limit < length
    finish = {
        "openai-chat": ("stop", "length"),
        "openai-completions": ("stop", "length"),
        "openai-responses": ("completed", "max_output_tokens"),
        "anthropic": ("end_turn", "max_tokens"),
    }[fmt][cut]
    fixed = request.headers.get("x-mock-seed")
    seed = int(fixed) if fixed is not None else opts.seed * 1_000_003 + stats.id
    texts = [words(out_len, seed + c) for c in range(n)]
    prompt = count_request_prompt(body, fmt, allow_estimate=True)
    stats.prompt_tokens = prompt
    stats.completion_tokens = sum(map(len, texts)) + extra
    rid = {
        "openai-chat": "chatcmpl-",
        "openai-completions": "cmpl-",
        "openai-responses": "resp_",
        "anthropic": "msg_",
    }[fmt] + f"mock{seed if fixed is not None else stats.id:08d}"
    created = int(_header_num(request, "x-mock-created", time.time()))

    if not stats.stream:
        await asyncio.sleep(_header_num(request, "x-mock-ttft", opts.ttft))
        stats.tokens_generated = stats.completion_tokens
        stats.outcome = "completed"
        return web.Response(
            body=orjson.dumps(_full_body(fmt, body, texts, finish, prompt, rid, created, extra)),
            content_type="application/json",
        )

    stream_opts = body.get("stream_options")
    include_usage = isinstance(stream_opts, dict) and stream_opts.get("include_usage") is True
    tps = _header_num(request, "x-mock-tps", opts.tokens_per_second)
    ttft = _header_num(request, "x-mock-ttft", opts.ttft)
    reset_after = request.headers.get("x-mock-reset-after")
    stall_after = request.headers.get("x-mock-stall-after")
    malformed_after = request.headers.get("x-mock-malformed-after")
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    start = time.monotonic() + ttft
    interval = 1.0 / tps if tps > 0 else 0.0
    sent = 0
    for event, tokens in _plan(
        fmt, body, texts, finish, prompt, include_usage, rid, created, extra
    ):
        if tokens:
            if reset_after is not None and sent >= int(reset_after):
                stats.outcome = "reset"
                assert request.transport is not None
                request.transport.abort()
                return resp
            if stall_after is not None and sent >= int(stall_after):
                stats.outcome = "stalled"
                await asyncio.sleep(3600)
            if malformed_after is not None and sent == int(malformed_after):
                await resp.write(b'data: {"choices": [oops\n\n')
            delay = start + sent * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if stats.first_token_at is None:
                stats.first_token_at = time.time()
            stats.tokens_generated += tokens
            sent += tokens
        elif sent == 0 and ttft > 0 and event.startswith((b"data: [DONE]", b"event: message_stop")):
            await asyncio.sleep(max(0.0, start - time.monotonic()))
        await resp.write(event)
    stats.outcome = "completed"
    await resp.write_eof()
    return resp


async def _stats(request: web.Request) -> web.Response:
    rid = request.query.get("request_id")
    items = [asdict(s) for s in request.app[STATS].values() if rid is None or s.request_id == rid]
    return web.Response(body=orjson.dumps({"requests": items}), content_type="application/json")


async def _reset(request: web.Request) -> web.Response:
    request.app[STATS].clear()
    return web.Response(status=204)


async def _models(request: web.Request) -> web.Response:
    data = [
        {"id": m, "object": "model", "created": 0, "owned_by": "meterkit-mock"}
        for m in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "claude-sonnet-4-6")
    ]
    return web.Response(
        body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
    )


async def _health(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def _not_found(request: web.Request) -> web.Response:
    return _error(404, f"no mock endpoint {request.method} {request.path}")


def build_mock_app(options: MockOptions | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[OPTIONS] = options or MockOptions()
    app[STATS] = {}
    app[COUNTER] = _Ids()
    for path in FORMAT_BY_PATH:
        app.router.add_post(path, _generate)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/_mock/stats", _stats)
    app.router.add_post("/_mock/reset", _reset)
    app.router.add_get("/healthz", _health)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app


async def start_mock(
    host: str, port: int, options: MockOptions | None = None
) -> tuple[web.AppRunner, int]:
    """Start the mock on the running loop; returns the runner and the bound port."""
    # Cancelling the handler when the client disconnects is what lets the mock record the
    # moment its connection closed.
    return await serve_app(
        build_mock_app(options),
        host,
        port,
        backlog=4096,
        handler_cancellation=True,
        access_log=None,
    )


def run_mock(host: str, port: int, options: MockOptions) -> None:
    from meterkit.runtime import run_forever

    async def main() -> None:
        runner, bound = await start_mock(host, port, options)
        print(f"meterkit mock-llm listening on http://{host}:{bound}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    run_forever(main())
