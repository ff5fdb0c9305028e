"""Clients that misbehave on purpose: connections that never send a request, heads that never
end or trickle in, more connections than the process has descriptors, oversized and
malformed heads, and bodies over the limit on pass-through routes. The gateway must close
what stalls, keep serving everyone else, and answer bad heads with a problem, not a
traceback (issue 12 #1–#3)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import yaml

from support.hostile_upstream import hostile_upstream
from support.inproc import chat, gateway, llm_config
from support.processes import running
from support.rawclient import body_of, closed_by_peer, connect, exchange, status_of

CHAT = "/v1/chat/completions"
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"


def tight(**gw: Any) -> dict[str, Any]:
    tree = llm_config("{mock}")
    tree["gateway"].update({"header_timeout": 0.3, "keepalive_timeout": 0.3, **gw})
    return tree


# ---- #1 stalled connections --------------------------------------------------------------


def test_an_idle_connection_is_closed_after_the_keepalive_timeout() -> None:
    async def go() -> None:
        async with gateway(tight()) as g:
            reader, writer = await connect(g.url)
            assert await closed_by_peer(reader, within=5)
            writer.close()

    asyncio.run(go())


def test_a_head_that_never_ends_is_closed_after_the_header_timeout() -> None:
    async def go() -> None:
        async with gateway(tight(keepalive_timeout=30)) as g:
            reader, writer = await connect(g.url)
            writer.write(HEAD)
            await writer.drain()
            assert await closed_by_peer(reader, within=5)
            writer.close()

    asyncio.run(go())


def test_a_head_trickled_byte_by_byte_is_closed_despite_the_activity() -> None:
    async def go() -> None:
        async with gateway(tight(keepalive_timeout=30)) as g:
            reader, writer = await connect(g.url)
            closed = False
            for i in range(100):  # 100 × 0.05 s, far past the 0.3 s head timeout
                try:
                    writer.write(b"X-Slow-%d: y\r\n" % i)
                    await writer.drain()
                except ConnectionError:
                    closed = True
                    break
                if await closed_by_peer(reader, within=0.05):
                    closed = True
                    break
            assert closed
            writer.close()

    asyncio.run(go())


def test_a_keep_alive_connection_serves_requests_then_closes_when_idle() -> None:
    async def go() -> None:
        async with gateway(tight()) as g:
            reader, writer = await connect(g.url)
            body = orjson.dumps(chat(stream=False))
            for _ in range(2):
                writer.write(
                    HEAD
                    + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body)
                )
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 200")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                )
                await asyncio.wait_for(reader.readexactly(length), 10)
            assert await closed_by_peer(reader, within=5)
            writer.close()

    asyncio.run(go())


def test_at_the_connection_cap_idle_connections_make_room_for_new_ones() -> None:
    async def go() -> None:
        async with gateway(tight(header_timeout=30, keepalive_timeout=30, max_connections=8)) as g:
            idle = [await connect(g.url) for _ in range(20)]
            half = []
            for _ in range(10):
                r, w = await connect(g.url)
                w.write(HEAD)
                half.append((r, w))
            for _ in range(3):
                status, _, _ = await g.post(CHAT, chat(stream=False))
                assert status == 200
            # The oldest waiting connections were closed to stay at the cap.
            closed = [await closed_by_peer(r, within=0.5) for r, _ in idle[:10]]
            assert all(closed)
            for _, w in idle + half:
                w.close()

    asyncio.run(go())


def test_out_of_descriptors_the_proxy_keeps_serving_without_a_log_flood(
    mock_llm: Any, tmp_path: Any
) -> None:
    """1,100 stalled connections against a proxy allowed 256 descriptors: normal requests
    are still served, and nothing is logged per connection."""
    tree = {
        "gateway": {"host": "127.0.0.1", "header_timeout": 30, "keepalive_timeout": 30},
        "upstreams": {"mock": {"url": mock_llm.url}},
        "routes": {f"POST {CHAT}": {"upstream": "mock"}},
        "usage": {"sink": "none"},
        "logging": {"level": "info", "format": "json"},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tree))
    env = {"METERKIT_TEST_NOFILE": "256"}
    with running(
        ["serve", "--config", str(tmp_path / "c.yaml"), "--port", "0"],
        env=env,
        module="support.limited",
    ) as proxy:
        port = int(proxy.url.rsplit(":", 1)[1])
        socks = []
        for i in range(1100):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            if i % 2:
                with contextlib.suppress(OSError):
                    s.send(HEAD)
            socks.append(s)
        try:
            served = 0
            for _ in range(5):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                try:
                    conn.request(
                        "POST",
                        CHAT,
                        body=orjson.dumps(chat(stream=False)),
                        headers={"Content-Type": "application/json"},
                    )
                    resp = conn.getresponse()
                    resp.read()
                    served += resp.status == 200
                except OSError:
                    pass
                finally:
                    conn.close()
            assert served == 5
        finally:
            for s in socks:
                s.close()
        output = "".join(proxy.output)
        assert "Traceback" not in output
        assert output.count("\n") < 50, output[-3000:]


# ---- #2 malformed heads ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
        (
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(300))
            + b"\r\n",
            431,
        ),
        (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
        (b"GET /\x01 HTTP/1.1\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400),
    ],
    ids=["long-header", "too-many-headers", "bad-header", "bad-target", "tls-hello"],
)
def test_a_malformed_head_gets_a_problem_and_no_traceback(
    raw: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        async with gateway(tight(header_timeout=30, keepalive_timeout=30)) as g:
            with caplog.at_level(logging.DEBUG):
                for _ in range(50):
                    answer = await exchange(g.url, raw)
                    assert status_of(answer) == status
                    problem = orjson.loads(body_of(answer))
                    assert problem["status"] == status
                    assert b"application/problem+json" in answer
                # Still serving.
                assert (await g.post(CHAT, chat(stream=False)))[0] == 200

    asyncio.run(go())
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert noisy == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) <= 1


# ---- #3 bodies on pass-through routes ----------------------------------------------------


def passthrough_tree(url: str) -> dict[str, Any]:
    tree = tight(max_request_body=1024, header_timeout=30, keepalive_timeout=30)
    tree["upstreams"]["raw"] = {"url": url}
    tree["routes"] = {"POST /upload": {"upstream": "raw", "path": "/sink", "format": "none"}}
    return tree


def test_a_pass_through_body_over_the_limit_is_refused_before_the_upstream() -> None:
    async def go() -> None:
        async with hostile_upstream() as up, gateway(passthrough_tree(up.url)) as g:
            status, headers, body = await g.post("/upload", data=b"x" * 5000)
            assert status == 413
            assert orjson.loads(body)["type"].endswith("/request-too-large")
            assert headers["Content-Type"] == "application/problem+json"
            (record,) = await g.records(1)
            assert (record.status, record.outcome) == (413, "rejected")
            assert up.received == []
            # Under the limit it passes.
            status, _, body = await g.post("/upload", data=b"x" * 1000)
            assert (status, orjson.loads(body)) == (200, {"received": 1000})

    asyncio.run(go())


def test_a_chunked_pass_through_body_is_cut_off_past_the_limit() -> None:
    async def go() -> None:
        async with hostile_upstream() as up, gateway(passthrough_tree(up.url)) as g:

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(200):  # 100 KiB offered against a 1 KiB limit
                    yield b"y" * 512
                    await asyncio.sleep(0)

            status, _, _ = await g.post("/upload", data=chunks())
            assert status == 413
            (record,) = await g.records(1)
            assert record.status == 413
            # The upstream got at most the limit, never the rest.
            assert all(n <= 1024 for n in up.received)

    asyncio.run(go())


# ---- slow request bodies -----------------------------------------------------------------


def slow_body_tree(url: str, body_timeout: float) -> dict[str, Any]:
    tree = passthrough_tree(url)
    tree["gateway"].update({"body_timeout": body_timeout, "max_request_body": 1 << 20})
    tree["routes"][f"POST {CHAT}"] = {"upstream": "mock"}
    return tree


@pytest.mark.parametrize(
    ("path", "framing", "sent"),
    [
        (CHAT, b"Content-Length: 1000\r\n", b'{"model": "gpt-4o", "mess'),
        (CHAT, b"Content-Length: 1000\r\n", b""),
        ("/upload", b"Content-Length: 1000\r\n", b"x" * 100),
        ("/upload", b"Transfer-Encoding: chunked\r\n", b"64\r\n" + b"x" * 100 + b"\r\n10\r\nxx"),
    ],
    ids=["metered-mid-body", "metered-no-body", "pass-through-mid-body", "pass-through-chunked"],
)
def test_a_body_that_stalls_gets_408_and_the_connection_is_closed(
    path: str, framing: bytes, sent: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that sends a head and then stops sending its body (before the first byte or
    mid-way) gets a 408 problem once no body byte came for `gateway.body_timeout`, and the
    connection is closed: it does not hold a connection or a handler for ever."""

    async def go() -> None:
        async with hostile_upstream() as up, gateway(slow_body_tree(up.url, 0.3)) as g:
            reader, writer = await connect(g.url)
            writer.write(
                b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s\r\n%s"
                % (path.encode(), framing, sent)
            )
            await writer.drain()
            answer = b""
            async with asyncio.timeout(10):  # a generous bound, far above the 0.3 s timeout
                while chunk := await reader.read(65536):
                    answer += chunk
            writer.close()
            assert status_of(answer) == 408, answer[:200]
            head = answer.split(b"\r\n\r\n", 1)[0].lower()
            assert b"content-type: application/problem+json" in head
            assert b"connection: close" in head
            problem = orjson.loads(body_of(answer))
            assert problem["status"] == 408
            assert problem["type"].endswith("/request-body-timeout")
            (record,) = await g.records(1)
            assert (record.status, record.outcome) == (408, "rejected")
            # Everyone else is still served.
            assert (await g.post(CHAT, chat(stream=False)))[0] == 200

    with caplog.at_level(logging.DEBUG):
        asyncio.run(go())
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


def test_a_body_that_keeps_arriving_is_not_timed_out_as_a_whole() -> None:
    """The timeout is the silence between two reads of the body (nginx's
    client_body_timeout), not a deadline for the whole body: a body sent in pieces for
    longer than the timeout, each well within it, is forwarded whole."""

    async def go() -> None:
        async with hostile_upstream() as up, gateway(slow_body_tree(up.url, 1.0)) as g:

            async def pieces() -> AsyncIterator[bytes]:
                for _ in range(25):  # ~2.5 s in all, 0.1 s apart against a 1 s timeout
                    yield b"z" * 10
                    await asyncio.sleep(0.1)

            status, _, body = await g.post("/upload", data=pieces())
            assert (status, orjson.loads(body)) == (200, {"received": 250})

    asyncio.run(go())
