"""The in-process stage tier: the proxy app (`build_app`) and the mock LLM app in one event
loop on loopback ports, with the usage sink, budget backend and ledger the test hands in.

Faster than the subprocess tier and able to look inside (the sink's records, the backend's
reservations, the app's metrics), while still going through real sockets and aiohttp.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from meterkit.config import config_from_dict
from meterkit.mock.server import start_mock
from meterkit.proxy.app import build_app
from meterkit.proxy.appkeys import METRICS
from meterkit.proxy.lifecycle import start
from meterkit.usage import MemorySink, UsageRecord


def llm_config(upstream_url: str, **routes: Any) -> dict[str, Any]:
    """A config with one mock upstream and the given routes (default: chat, unbudgeted)."""
    return {
        "gateway": {"host": "127.0.0.1"},
        "upstreams": {
            "mock": {
                "url": upstream_url,
                "timeout": {"connect": 2, "first_byte": 2, "idle": 2},
            }
        },
        "routes": routes or {"POST /v1/chat/completions": {"upstream": "mock"}},
        "logging": {"level": "warning"},
    }


def chat(stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Hello there"}],
        "stream": stream,
        **extra,
    }


@dataclass
class Gateway:
    url: str
    mock_url: str
    app: web.Application
    sink: MemorySink
    session: aiohttp.ClientSession

    async def post(
        self, path: str, body: Any = None, headers: dict[str, str] | None = None, **kw: Any
    ) -> tuple[int, CIMultiDict[str], bytes]:
        data = kw.pop("data", None)
        if data is None and body is not None:
            data = orjson.dumps(body)
        async with self.session.post(
            self.url + path,
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
            **kw,
        ) as r:
            return r.status, CIMultiDict(r.headers), await r.read()

    async def records(self, count: int, timeout: float = 10) -> list[UsageRecord]:
        """Wait until the sink holds at least `count` records (they are written by tasks)."""
        import asyncio

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.sink.records) < count and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return list(self.sink.records)

    def metric_total(self, name: str) -> float:
        """The sum of a sample over all its label sets."""
        return sum(
            s.value
            for m in self.app[METRICS].registry.collect()
            for s in m.samples
            if s.name == name
        )

    def metric(self, name: str, **labels: str) -> float:
        value = self.app[METRICS].registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def gateway(
    tree: dict[str, Any] | None = None, *, upstream_url: str | None = None, **build: Any
) -> AsyncIterator[Gateway]:
    """Start the mock LLM and a proxy over `tree` (a config dict; `{mock}` in an upstream URL
    is replaced by the mock's URL)."""
    mock_runner, mock_port = await start_mock("127.0.0.1", 0)
    mock_url = f"http://127.0.0.1:{mock_port}"
    tree = tree or llm_config(upstream_url or mock_url)
    for up in tree.get("upstreams", {}).values():
        up["url"] = up["url"].replace("{mock}", mock_url)
    config = config_from_dict(tree)
    sink = build.pop("sink", None) or MemorySink()
    app = build_app(config, sink=sink, **build)
    runner, port = await start(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            yield Gateway(f"http://127.0.0.1:{port}", mock_url, app, sink, session)
    finally:
        await runner.cleanup()
        await mock_runner.cleanup()
