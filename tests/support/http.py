"""Talking to a proxy or the mock over loopback from a test: plain HTTP requests, the
mock's per-request stats, request bodies per format and the text a stream carried."""

from __future__ import annotations

import contextlib
import http.client
from typing import Any
from urllib.parse import urlsplit

import orjson

from meterkit import SseDecoder, parse_event
from meterkit.bench.processes import Process

FORMATS = {
    "openai-chat": "/v1/chat/completions",
    "openai-responses": "/v1/responses",
    "openai-completions": "/v1/completions",
    "anthropic": "/v1/messages",
}


def body_for(fmt: str, stream: bool, **extra: Any) -> dict[str, Any]:
    if fmt == "openai-chat":
        b: dict[str, Any] = {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "Hello there"}],
        }
    elif fmt == "openai-responses":
        b = {"model": "gpt-4o", "input": "Hello there"}
    elif fmt == "openai-completions":
        b = {"model": "gpt-3.5-turbo-instruct", "prompt": "Hello there"}
    else:
        b = {
            "model": "claude-sonnet-4-6",
            "max_tokens": 1000,
            "messages": [{"role": "user", "content": "Hello there"}],
        }
    return {**b, "stream": stream, **extra}


def request(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    h = {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=data, headers=h)
    resp = conn.getresponse()
    out = resp.read()
    conn.close()
    return resp.status, resp.headers, out


def mock_stats(mock: Process, request_id: str) -> dict[str, Any]:
    _, _, body = request(mock.url, "GET", f"/_mock/stats?request_id={request_id}")
    (item,) = orjson.loads(body)["requests"]
    return dict(item)


def texts(fmt: str, data: bytes) -> str:
    out = ""
    for ev in SseDecoder().feed(data):
        with contextlib.suppress(ValueError):
            out += "".join(d[3] for d in parse_event(fmt, ev.data, ev.event).deltas)
    return out


FIXED = {"x-mock-seed": "42", "x-mock-created": "1700000000"}


def post_paid(
    url: str, authorization: str, timeout: float, delay: float = 0, path: str = "/now"
) -> int | None:
    """POST a chat request carrying `authorization` (a `Payment …` credential) to `path`;
    the status, or None when the proxy died under it (the crash tests kill it mid-burst).
    `delay`: seconds the mock upstream waits before its headers."""
    from support.payments import CHAT

    u = urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        c.request(
            "POST",
            path,
            orjson.dumps(CHAT),
            {
                "Content-Type": "application/json",
                "Authorization": authorization,
                "x-mock-delay-headers": str(delay),
            },
        )
        return c.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        c.close()
