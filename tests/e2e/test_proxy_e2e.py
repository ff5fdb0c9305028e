"""The proxy end to end: `meterkit serve` and `meterkit mock-llm` as separate processes over
loopback, driven by plain HTTP clients and by the official SDKs."""

from __future__ import annotations

import http.client
import json
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

import meterkit
from meterkit import SseDecoder, parse_event
from support.http import FIXED, FORMATS, body_for, mock_stats, request, texts
from support.processes import Process, running
from support.usage_db import record


def config(mock_url: str, **gateway: Any) -> dict[str, Any]:
    llm = {"upstream": "mock"}
    return {
        "gateway": {"host": "127.0.0.1", **gateway},
        "upstreams": {
            "mock": {
                "url": mock_url,
                "headers": {"authorization": "Bearer sk-upstream"},
                "timeout": {"connect": 2, "first_byte": 2, "idle": 1},
            }
        },
        "routes": {
            **{f"POST {p}": llm for p in FORMATS.values()},
            "POST /openai/:ver/chat": {
                "upstream": "mock",
                "path": "/v1/chat/completions?ver=${params.ver}&q=${query.q}",
            },
            "GET /v1/models": {"upstream": "mock", "format": "none"},
        },
        "logging": {"format": "json", "level": "warning"},
    }


@pytest.fixture(scope="module")
def proxy(mock_llm: Process, tmp_path_factory: pytest.TempPathFactory) -> Any:
    import yaml

    d = tmp_path_factory.mktemp("proxy-e2e")
    tree = {
        **config(mock_llm.url, max_request_body="64KiB"),
        "usage": {"sink": "sqlite", "path": str(d / "u.sqlite3")},
    }
    (d / "c.yaml").write_text(yaml.safe_dump(tree))
    with running(["serve", "--config", str(d / "c.yaml"), "--port", "0"], cwd=d) as p:
        p.db = d / "u.sqlite3"
        yield p


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("stream", [True, False])
def test_pass_through_is_byte_exact(
    proxy: Process, mock_llm: Process, fmt: str, stream: bool
) -> None:
    body = body_for(fmt, stream)
    s1, _h1, direct = request(mock_llm.url, "POST", FORMATS[fmt], body, FIXED)
    rid = uuid.uuid4().hex
    s2, h2, proxied = request(proxy.url, "POST", FORMATS[fmt], body, {**FIXED, "X-Request-Id": rid})
    assert (s1, s2) == (200, 200)
    assert proxied == direct
    assert h2["X-Request-Id"] == rid
    if stream:
        assert h2["Content-Type"].startswith("text/event-stream")
        assert h2["X-Accel-Buffering"] == "no"
        assert h2["Cache-Control"] == "no-cache"
        assert "Content-Encoding" not in h2
    rec = record(proxy.db, rid)
    stats = mock_stats(mock_llm, rid)
    assert rec["outcome"] == "completed"
    assert rec["completion_tokens"] == stats["completion_tokens"] == 24
    assert rec["prompt_tokens"] == stats["prompt_tokens"]
    if stream:
        # The meter's own exact count agrees with the upstream's true usage.
        assert rec["counted_completion_tokens"] == 24
    assert rec["completion_provenance"] in ("provider", "counted")
    assert rec["response_bytes"] == len(proxied)


def test_stream_without_upstream_usage_is_counted(proxy: Process) -> None:
    rid = uuid.uuid4().hex
    status, _, data = request(
        proxy.url,
        "POST",
        FORMATS["openai-chat"],
        body_for("openai-chat", True),
        {"X-Request-Id": rid},
    )
    assert status == 200
    rec = record(proxy.db, rid)
    assert rec["upstream_usage"] is None
    assert (rec["completion_tokens"], rec["completion_provenance"]) == (24, "counted")
    assert rec["completion_tokens"] == meterkit.count_tokens(texts("openai-chat", data))
    assert rec["prompt_provenance"] == "counted"


def test_path_rewrite_and_headers(proxy: Process, mock_llm: Process) -> None:
    rid = uuid.uuid4().hex
    status, _, _ = request(
        proxy.url,
        "POST",
        "/openai/v2/chat?q=hi%20there",
        body_for("openai-chat", False),
        {
            "X-Request-Id": rid,
            "Connection": "keep-alive, X-Secret",
            "X-Secret": "s",
            "Authorization": "Bearer client-key",
            "Accept-Encoding": "gzip",
        },
    )
    assert status == 200
    stats = mock_stats(mock_llm, rid)
    assert stats["path"] == "/v1/chat/completions"
    assert stats["query"] == "ver=v2&q=hi%20there"
    h = stats["headers"]
    assert "x-secret" not in h
    assert h["authorization"] == "Bearer sk-upstream"
    assert h["x-forwarded-for"] == "127.0.0.1"
    assert h["forwarded"].startswith("for=127.0.0.1;proto=http")
    assert h["accept-encoding"] == "identity"


def test_plain_route_and_service_endpoints(proxy: Process, mock_llm: Process) -> None:
    status, _, body = request(proxy.url, "GET", "/v1/models")
    assert status == 200 and orjson.loads(body)["object"] == "list"
    assert request(proxy.url, "GET", "/healthz")[0] == 200
    status, _headers, body = request(proxy.url, "GET", "/metrics")
    assert status == 200
    text = body.decode()
    assert (
        'meterkit_requests_total{outcome="completed",route="POST /v1/chat/completions",status="200"}'
        in text
    )
    assert "meterkit_time_to_first_token_seconds_bucket" in text
    assert 'meterkit_tokens_total{kind="completion",model="gpt-4o"' in text


def test_proxy_errors_are_problem_details(proxy: Process) -> None:
    status, headers, body = request(proxy.url, "GET", "/nowhere")
    assert status == 404 and headers["Content-Type"] == "application/problem+json"
    assert orjson.loads(body)["type"].endswith("/no-route")
    assert request(proxy.url, "GET", "/v1/chat/completions")[0] == 405
    status, _, body = request(proxy.url, "POST", "/v1/chat/completions", raw=b"{not json")
    assert status == 400 and orjson.loads(body)["title"] == "Invalid JSON body"
    status, _, body = request(
        proxy.url, "POST", "/v1/chat/completions", raw=b'{"x": "' + b"a" * 70_000 + b'"}'
    )
    assert status == 413 and orjson.loads(body)["limit"] == 64 * 1024


def _open_stream(
    base: str, fmt: str, headers: dict[str, str]
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
    conn.request(
        "POST",
        FORMATS[fmt],
        body=orjson.dumps(body_for(fmt, True)),
        headers={"Content-Type": "application/json", **headers},
    )
    return conn, conn.getresponse()


@pytest.mark.parametrize("fmt", ["openai-chat", "anthropic"])
def test_client_disconnect_cancels_the_upstream(
    proxy: Process, mock_llm: Process, fmt: str
) -> None:
    rid = uuid.uuid4().hex
    conn, resp = _open_stream(
        proxy.url, fmt, {"X-Request-Id": rid, "x-mock-tps": "50", "x-mock-length": "5000"}
    )
    received = b""
    while texts(fmt, received).count(" ") < 10:
        received += resp.read1(65536)
    got = meterkit.count_tokens(texts(fmt, received))
    left_at = time.time()
    conn.sock.close()  # type: ignore[union-attr]
    conn.close()
    deadline = time.monotonic() + 5
    while (stats := mock_stats(mock_llm, rid))["client_open"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not stats["client_open"], stats
    assert stats["closed_at"] - left_at < 0.1, (
        "the upstream connection closed more than 100 ms after the client left"
    )
    assert stats["tokens_generated"] - got <= 8, stats
    rec = record(proxy.db, rid)
    assert rec["outcome"] == "client_cancelled"
    assert got <= rec["counted_completion_tokens"] <= stats["tokens_generated"]
    assert rec["completion_provenance"] in ("counted", "estimated")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_upstream_reset_mid_stream_ends_the_stream_cleanly(proxy: Process, fmt: str) -> None:
    rid = uuid.uuid4().hex
    status, _, data = request(
        proxy.url,
        "POST",
        FORMATS[fmt],
        body_for(fmt, True),
        {"X-Request-Id": rid, "x-mock-reset-after": "5"},
    )
    assert status == 200
    events = SseDecoder().feed(data)
    assert meterkit.count_tokens(texts(fmt, data)) == 5
    kinds = [parse_event(fmt, e.data, e.event).kind for e in events]
    if fmt in ("openai-chat", "openai-completions"):
        assert kinds[-2:] == ["error", "done"]
        assert json.loads(events[-2].data)["error"]["code"] == "upstream_error"
    else:
        assert kinds[-1] == "error"
    rec = record(proxy.db, rid)
    assert rec["outcome"] == "upstream_error"
    assert rec["counted_completion_tokens"] == 5


def test_idle_upstream_gets_an_error_ending_and_is_closed(
    proxy: Process, mock_llm: Process
) -> None:
    rid = uuid.uuid4().hex
    t0 = time.monotonic()
    status, _, data = request(
        proxy.url,
        "POST",
        FORMATS["anthropic"],
        body_for("anthropic", True),
        {"X-Request-Id": rid, "x-mock-stall-after": "3"},
    )
    assert status == 200
    assert 0.9 < time.monotonic() - t0 < 5
    assert data.endswith(b"\n\n") and b"event: error" in data and b"idle" in data
    rec = record(proxy.db, rid)
    assert rec["outcome"] == "upstream_error" and "idle" in rec["error"]
    deadline = time.monotonic() + 3
    while mock_stats(mock_llm, rid)["client_open"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not mock_stats(mock_llm, rid)["client_open"]


def test_upstream_timeouts_and_errors(proxy: Process) -> None:
    status, headers, body = request(
        proxy.url,
        "POST",
        FORMATS["openai-chat"],
        body_for("openai-chat", True),
        {"x-mock-delay-headers": "3"},
    )
    assert status == 504 and headers["Content-Type"] == "application/problem+json"
    assert "within 2 s" in orjson.loads(body)["detail"]
    status, _, body = request(
        proxy.url,
        "POST",
        FORMATS["openai-chat"],
        body_for("openai-chat", True),
        {"x-mock-status": "503"},
    )
    assert status == 503 and orjson.loads(body)["error"]["message"] == "injected failure 503"


def test_unreachable_upstream_is_502(start_proxy: Any) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = start_proxy(config(f"http://127.0.0.1:{port}"))
    status, _headers, body = request(
        p.url, "POST", FORMATS["openai-chat"], body_for("openai-chat", True)
    )
    assert status == 502
    problem = orjson.loads(body)
    assert problem["type"].endswith("/upstream-unreachable") and problem["upstream"] == "mock"


# ---- the official SDKs through the proxy ------------------------------------------------


def test_openai_sdk_streams_through_the_proxy(proxy: Process) -> None:
    import openai

    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-client", max_retries=0)
    text, finish, usage = "", None, None
    for chunk in client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    ):
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
        usage = chunk.usage or usage
    assert finish == "stop" and usage is not None
    assert usage.completion_tokens == meterkit.count_tokens(text) == 24
    events = list(client.responses.create(model="gpt-4o", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    completion = list(
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", stream=True)
    )
    assert completion[-1].choices[0].finish_reason == "stop"


def test_anthropic_sdk_streams_through_the_proxy(proxy: Process) -> None:
    import anthropic

    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-client", max_retries=0)
    with client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        final = s.get_final_message()
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 10
    assert meterkit.count_tokens(final.content[0].text) == 10
