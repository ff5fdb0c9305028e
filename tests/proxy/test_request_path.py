"""What the request path caches or skips keeps the results it replaced (issue 14 item 2):
request ids, metric children, the route memo, and the watchdog that times the response
headers. No sockets, no timed assertions."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from meterkit.config import config_from_dict
from meterkit.observability.metrics import ProxyMetrics
from meterkit.proxy import ids
from meterkit.proxy.routing import Router, route_plans
from meterkit.proxy.upstream import IdleWatchdog

CONFIG = config_from_dict(
    {
        "upstreams": {"u": {"url": "http://127.0.0.1:9", "timeout": {"connect": 3}}},
        "routes": {
            "POST /v1/chat/completions": {"upstream": "u"},
            "POST /tenant/:id/chat": {"upstream": "u", "format": "openai-chat"},
            "GET /v1/models": {"upstream": "u", "format": "none"},
        },
    }
)


def test_request_ids_are_random_version_4_uuids_like_uuid4_hex() -> None:
    made = [ids.new_request_id() for _ in range(3 * ids._BATCH + 7)]
    assert len(set(made)) == len(made)
    for rid in made:
        u = uuid.UUID(rid)
        assert u.hex == rid and u.version == 4 and u.variant == uuid.RFC_4122


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_repeats_its_parents_buffered_ids() -> None:
    ids.new_request_id()  # the parent holds a buffer now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(w, "".join(ids.new_request_id() for _ in range(ids._BATCH)).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    child = {data[i : i + 32].decode() for i in range(0, len(data), 32)}
    parent = {ids.new_request_id() for _ in range(ids._BATCH)}
    assert len(child) == ids._BATCH and not child & parent


def test_cached_metric_children_are_the_metrics_own() -> None:
    m = ProxyMetrics()
    child = m.by_requests["r", "200", "completed"]
    assert child is m.requests.labels("r", "200", "completed")
    assert m.by_requests["r", "200", "completed"] is child
    child.inc()
    m.by_ttft[("r",)].observe(0.01)
    text = m.exposition().decode()
    assert 'meterkit_requests_total{outcome="completed",route="r",status="200"} 1.0' in text
    assert 'meterkit_time_to_first_token_seconds_count{route="r"} 1.0' in text


def test_the_route_memo_answers_what_matching_answers() -> None:
    router = Router(CONFIG.routes)
    lines = [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/chat/completions?x=1"),
        ("GET", "/v1/chat/completions"),
        ("POST", "/tenant/a%20b/chat"),
        ("POST", "/nowhere"),
    ]
    for _ in range(2):  # the second round is served from the memo
        for method, path in lines:
            assert router.match(method, path) == router._match(method, path)
    match, _ = router.match("POST", "/tenant/a%20b/chat")
    assert match is not None and match.params == {"id": "a b"}


def test_the_route_memo_stays_bounded() -> None:
    router = Router(CONFIG.routes)
    for i in range(3000):
        router.match("POST", f"/tenant/{i}/chat")
    assert len(router._memo) <= 1024
    router.match("POST", "/" + "x" * 1000)
    assert ("POST", "/" + "x" * 1000) not in router._memo


def test_route_plans_hold_what_the_handler_worked_out_per_request() -> None:
    plans = route_plans(CONFIG)
    chat = plans["POST /v1/chat/completions"]
    assert chat.upstream is CONFIG.upstreams["u"] and chat.detect and chat.format is None
    tenant = plans["POST /tenant/:id/chat"]
    assert tenant.format == "openai-chat" and not tenant.detect
    models = plans["GET /v1/models"]
    assert models.format is None and not models.detect
    assert chat.timeout.total is None and chat.timeout.connect == 3


def test_the_watchdog_times_the_headers_then_the_body_reads() -> None:
    async def go() -> None:
        # Waiting for headers from the start: it fires, and the cancellation is its own.
        task = asyncio.current_task()
        assert task is not None
        dog = IdleWatchdog(0.01, waiting=True)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.sleep(5)
        assert dog.fired and dog.ours() and task.cancelling() == 0
        dog.stop()

        # Headers came: a shorter idle timeout moves the timer earlier; a read that waits
        # past it fires it.
        dog = IdleWatchdog(60, waiting=True)
        dog.received()
        dog.rearm(0.01)
        dog.reading()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.sleep(5)
        assert dog.fired and dog.ours()
        dog.stop()

        # Not waiting on the upstream (writing to the client, say): it never fires.
        dog = IdleWatchdog(0.01)
        await asyncio.sleep(0.05)
        assert not dog.fired
        dog.stop()

    asyncio.run(go())


def test_a_cancellation_that_is_not_the_watchdogs_stays_a_cancellation() -> None:
    async def go() -> None:
        dog = IdleWatchdog(60, waiting=True)
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().call_soon(task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.sleep(5)
        assert not dog.ours()
        dog.stop()

    asyncio.run(go())
