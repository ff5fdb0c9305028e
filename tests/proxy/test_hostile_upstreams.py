"""Upstreams that misbehave: compressed bodies despite `Accept-Encoding: identity`, codings
the meter cannot read, responses that are not HTTP or break mid-stream with internal details
in their bytes, a client too slow to keep up with a fast upstream, events over the size limit,
streams that end inside an event, and unbilled fields that deviate from the schema (issue 12
#5, #6, #7, #8, #10)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import orjson
import pytest

from meterkit import SseDecoder, count_tokens
from support.hostile_upstream import SECRET, WORDS, hostile_upstream
from support.http import texts
from support.inproc import chat, gateway, llm_config
from support.rawclient import body_of

FORMAT_PATHS = {"openai-chat": "/v1/chat/completions", "anthropic": "/v1/messages"}


def tree_for(url: str, routes: dict[str, str], idle: float = 2) -> dict[str, Any]:
    """Routes `POST /<name>` to `url` + the given upstream path, in the given format."""
    tree = llm_config("{mock}")
    tree["upstreams"]["bad"] = {
        "url": url,
        "timeout": {"connect": 2, "first_byte": 2, "idle": idle},
    }
    tree["routes"] = {
        f"POST /{name}": {"upstream": "bad", "path": path, "format": fmt}
        for name, (path, fmt) in ((n, p.split("|")) for n, p in routes.items())
    }
    return tree


def body(fmt: str) -> dict[str, Any]:
    if fmt == "anthropic":
        return {
            "model": "claude-sonnet-4-6",
            "max_tokens": 500,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
    return chat(stream=True)


# ---- #8 compressed upstream bodies -------------------------------------------------------


@pytest.mark.parametrize("fmt", ["openai-chat", "anthropic"])
def test_a_gzip_event_stream_is_decompressed_metered_and_forwarded_as_identity(fmt: str) -> None:
    async def go() -> None:
        async with hostile_upstream() as up:
            async with gateway(tree_for(up.url, {"s": f"/gzip/{fmt}|{fmt}"})) as g:
                status, headers, data = await g.post("/s", body(fmt))
                assert status == 200
                assert "Content-Encoding" not in headers
                assert texts(fmt, data) == "".join(WORDS)
                (record,) = await g.records(1)
                assert record.outcome == "completed"
                assert record.completion_tokens == count_tokens(
                    "".join(WORDS), "gpt-4o", allow_estimate=True
                )
                assert up.accept_encodings == ["identity"]

    asyncio.run(go())


def test_a_gzip_stream_is_cut_at_the_limit_like_a_plain_one() -> None:
    async def go() -> None:
        async with hostile_upstream() as up:
            tree = tree_for(up.url, {"s": "/gzip/openai-chat|openai-chat"})
            tree["budgets"] = {"b": {"key": "ip", "max_completion_tokens": 5}}
            tree["routes"]["POST /s"]["budget"] = "b"
            async with gateway(tree) as g:
                status, _, data = await g.post("/s", chat(stream=True, max_tokens=5))
                assert status == 200
                assert data.endswith(b"data: [DONE]\n\n")
                (record,) = await g.records(1)
                assert (record.outcome, record.completion_tokens) == ("truncated", 5)

    asyncio.run(go())


def test_a_gzip_json_answer_is_decompressed_and_its_usage_read() -> None:
    async def go() -> None:
        async with hostile_upstream() as up:
            async with gateway(tree_for(up.url, {"j": "/gzip-json|openai-chat"})) as g:
                status, headers, data = await g.post("/j", chat(stream=False))
                assert status == 200
                assert "Content-Encoding" not in headers
                assert orjson.loads(data)["usage"]["completion_tokens"] == 1
                (record,) = await g.records(1)
                assert (record.prompt_tokens, record.completion_tokens) == (5, 1)

    asyncio.run(go())


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip, br"])
def test_a_coding_the_meter_cannot_read_is_refused_before_the_first_byte(coding: str) -> None:
    async def go() -> None:
        async with hostile_upstream() as up:
            tree = tree_for(up.url, {"c": f"/coded/{coding}|openai-chat"})
            async with gateway(tree) as g:
                status, headers, data = await g.post("/c", chat(stream=True))
                assert status == 502
                assert headers["Content-Type"] == "application/problem+json"
                assert orjson.loads(data)["type"].endswith("/upstream-unsupported-encoding")
                (record,) = await g.records(1)
                assert record.outcome == "upstream_error"
                assert record.completion_tokens in (0, None)

    asyncio.run(go())


# ---- #10 internal details stay in the logs -----------------------------------------------


def test_a_non_http_upstream_answer_is_a_502_without_its_bytes() -> None:
    async def go() -> None:
        async with hostile_upstream() as up:
            async with gateway(tree_for(up.url, {"g": "/garbage|openai-chat"})) as g:
                status, _, data = await g.post("/g", chat(stream=True))
                assert status == 502
                text = data.decode()
                assert SECRET not in text
                assert "10.1.2.3" not in text
                assert up.url.split("//")[1] not in text
                (record,) = await g.records(1)
                assert SECRET in (record.error or "")

    asyncio.run(go())


def test_an_unreachable_upstream_is_a_502_without_its_address() -> None:
    async def go() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        async with gateway(tree_for(url, {"d": "/v1/chat/completions|openai-chat"})) as g:
            status, _, data = await g.post("/d", chat(stream=True))
            assert status == 502
            assert f"127.0.0.1:{port}" not in data.decode()
            (record,) = await g.records(1)
            assert str(port) in (record.error or "")

    asyncio.run(go())


def test_a_stream_broken_mid_way_ends_with_an_error_event_without_upstream_bytes() -> None:
    async def go() -> None:
        async with hostile_upstream() as up:
            async with gateway(tree_for(up.url, {"b": "/broken-chunk|openai-chat"})) as g:
                status, _, data = await g.post("/b", chat(stream=True))
                assert status == 200
                assert SECRET not in data.decode()
                assert data.endswith(b"data: [DONE]\n\n")
                (record,) = await g.records(1)
                assert record.outcome == "upstream_error"

    asyncio.run(go())


# ---- #10 a slow client is not an idle upstream --------------------------------------------


@pytest.mark.parametrize("fmt", ["openai-chat", "anthropic"])
def test_a_slow_client_is_not_recorded_as_an_idle_upstream(fmt: str) -> None:
    async def go() -> None:
        async with hostile_upstream() as up:
            up.flood_events = 8000
            tree = tree_for(up.url, {"f": f"/flood/{fmt}|{fmt}"}, idle=0.3)
            async with gateway(tree) as g:
                # A small receive window, set before connecting, so the proxy's writes
                # block soon (the kernel's send buffer still takes a few MiB).
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
                sock.setblocking(False)
                port = int(g.url.rsplit(":", 1)[1])
                await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
                reader, writer = await asyncio.open_connection(sock=sock)
                payload = orjson.dumps(body(fmt))
                writer.write(
                    f"POST /f HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
                # Read nothing for several idle timeouts while the upstream has more to send:
                # the proxy's writes block on this client, not on the upstream.
                await asyncio.sleep(1.2)
                data = b""
                async with asyncio.timeout(60):
                    while chunk := await reader.read(1 << 16):
                        data += chunk
                writer.close()
                (record,) = await g.records(1)
                assert record.outcome == "completed", record.error
                assert up.flood_done.is_set()
                if fmt == "openai-chat":
                    assert b"data: [DONE]" in body_of(data)

    asyncio.run(go())


# ---- #5 #6 events too large, streams ending inside an event ------------------------------


def assert_ends_with_error(fmt: str, data: bytes) -> list[str]:
    """Every event the client got parses as JSON (or is `[DONE]`), and the stream ends with
    the format's error ending. Returns the events' data."""
    events = SseDecoder().feed(data)
    assert events, data[:200]
    datas = [e.data for e in events]
    parsed = [orjson.loads(d) for d in datas if d != "[DONE]"]
    if fmt == "openai-chat":
        assert datas[-1] == "[DONE]"
        assert "error" in parsed[-1]
    else:
        assert events[-1].event == "error"
        assert parsed[-1]["type"] == "error"
    return datas


@pytest.mark.parametrize("fmt", ["openai-chat", "anthropic"])
@pytest.mark.parametrize("blank", ["blank", "noblank"])
def test_an_event_over_the_size_limit_ends_with_the_formats_error_ending(
    fmt: str, blank: str
) -> None:
    async def go() -> None:
        async with hostile_upstream() as up:
            tree = tree_for(up.url, {"o": f"/oversized/{fmt}/{blank}|{fmt}"})
            async with gateway(tree) as g:
                status, _, data = await g.post("/o", body(fmt))
                assert status == 200
                assert b"xxxx" not in data
                datas = assert_ends_with_error(fmt, data)
                # The whole events before the oversized one were delivered.
                before = 2 if blank == "blank" else 0
                ending = 2 if fmt == "openai-chat" else 1  # the error chunk and [DONE]
                assert len(datas) == before + ending
                (record,) = await g.records(1)
                assert record.outcome == "upstream_error"

    asyncio.run(go())


@pytest.mark.parametrize("fmt", ["openai-chat", "anthropic"])
def test_an_error_ending_is_not_glued_onto_an_unfinished_event(fmt: str) -> None:
    async def go() -> None:
        async with hostile_upstream() as up:
            async with gateway(tree_for(up.url, {"m": f"/mid-event/{fmt}|{fmt}"})) as g:
                status, _, data = await g.post("/m", body(fmt))
                assert status == 200
                assert b"data: x\n" not in data
                assert_ends_with_error(fmt, data)
                assert texts(fmt, data) == "".join(WORDS[:3])
                (record,) = await g.records(1)
                assert record.outcome == "upstream_error"

    asyncio.run(go())


# ---- #7 schema deviations in unbilled fields ---------------------------------------------


@pytest.mark.parametrize("fmt", ["openai-chat", "anthropic"])
def test_deviant_unbilled_fields_are_metered_and_capped(fmt: str) -> None:
    async def go() -> None:
        async with hostile_upstream() as up:
            tree = tree_for(up.url, {"d": f"/deviant/{fmt}|{fmt}", "c": f"/gzip/{fmt}|{fmt}"})
            async with gateway(tree) as g:
                # Uncapped: counted like the clean (here gzip-compressed) stream.
                status, _, data = await g.post("/d", body(fmt))
                assert status == 200
                assert texts(fmt, data) == "".join(WORDS)
                (deviant,) = await g.records(1)
                await g.post("/c", body(fmt))
                clean = (await g.records(2))[1]
                assert deviant.completion_tokens == clean.completion_tokens
                assert (clean.completion_tokens or 0) > 5
                assert deviant.outcome == "completed"
            tree["budgets"] = {"b": {"key": "ip", "max_completion_tokens": 5}}
            tree["routes"]["POST /d"]["budget"] = "b"
            async with gateway(tree) as g:
                request = {**body(fmt), "max_tokens": 5}
                status, _, data = await g.post("/d", request)
                assert status == 200
                (record,) = await g.records(1)
                assert (record.outcome, record.completion_tokens) == ("truncated", 5)

    asyncio.run(go())
