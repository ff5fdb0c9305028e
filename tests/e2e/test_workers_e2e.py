"""`meterkit serve --workers 2` end to end: two processes answer on one port (SO_REUSEPORT),
both write the one SQLite usage file, SIGTERM to the parent drains and stops them all, and a
worker that dies takes the proxy down with a non-zero exit."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import yaml

from meterkit.commands import EXIT_FAILED
from support.http import FORMATS, body_for, request
from support.processes import Process, running

_WORKER = re.compile(r'meterkit_worker_info\{pid="(\d+)",worker="(\d+)"\} 1\.0')


def _config(tmp: Path, mock_url: str) -> Path:
    tree: dict[str, Any] = {
        "gateway": {"host": "127.0.0.1", "workers": 2},
        "upstreams": {"mock": {"url": mock_url}},
        "routes": {"POST /v1/chat/completions": {"upstream": "mock"}},
        "usage": {"sink": "sqlite", "path": str(tmp / "usage.sqlite3")},
        "logging": {"level": "warning"},
    }
    p = tmp / "config.yaml"
    p.write_text(yaml.safe_dump(tree))
    return p


def _workers_seen(proxy: Process, attempts: int = 400) -> dict[int, int]:
    """worker index -> pid, from /metrics over fresh connections (each one a new source
    port, which the kernel's SO_REUSEPORT hash spreads over the workers)."""
    seen: dict[int, int] = {}
    for _ in range(attempts):
        status, _h, body = request(proxy.url, "GET", "/metrics")
        assert status == 200
        m = _WORKER.search(body.decode())
        assert m, "a worker's /metrics names it"
        seen[int(m.group(2))] = int(m.group(1))
        if len(seen) == 2:
            break
    return seen


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_two_workers_share_the_port_and_stop_together(mock_llm: Process, tmp_path: Path) -> None:
    config = _config(tmp_path, mock_llm.url)
    with running(["serve", "--config", str(config), "--port", "0"], cwd=tmp_path) as proxy:
        assert any("(2 workers)" in line for line in proxy.output)
        seen = _workers_seen(proxy)
        assert set(seen) == {0, 1}
        assert seen[0] != seen[1] and proxy.pid not in seen.values()
        ids = []
        for _ in range(12):
            rid = uuid.uuid4().hex
            ids.append(rid)
            status, _h, data = request(
                proxy.url,
                "POST",
                FORMATS["openai-chat"],
                body_for("openai-chat", True),
                {"X-Request-Id": rid},
            )
            assert status == 200 and b"[DONE]" in data
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(60) == 0
    assert all(_gone(pid) for pid in seen.values())
    # Both workers wrote the one file; every record was flushed before they exited.
    with sqlite3.connect(tmp_path / "usage.sqlite3") as conn:
        got = {r[0] for r in conn.execute("SELECT client_request_id FROM usage_records")}
    assert set(ids) <= got


def test_a_dead_worker_stops_the_proxy(mock_llm: Process, tmp_path: Path) -> None:
    config = _config(tmp_path, mock_llm.url)
    with running(["serve", "--config", str(config), "--port", "0"], cwd=tmp_path) as proxy:
        seen = _workers_seen(proxy)
        assert set(seen) == {0, 1}
        os.kill(seen[1], signal.SIGKILL)
        assert proxy.proc.wait(60) == EXIT_FAILED
        assert _gone(seen[0])
        proxy._drainer.join(10)
        assert any("worker 1" in line and "SIGKILL" in line for line in proxy.output)
