"""`meterkit serve --demo` (what `make run` starts) works as printed: a streamed chat
completion through the proxy, and a paid request recorded in the demo ledger."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from support.http import request
from support.payments import CHAT, pay
from support.processes import running


def test_demo_streams_and_sells(tmp_path: Path) -> None:
    with running(
        ["serve", "--demo", "--port", "0", "--data-dir", str(tmp_path)], cwd=tmp_path
    ) as p:
        status, headers, data = request(
            p.url, "POST", "/v1/chat/completions", {**CHAT, "stream": True}
        )
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
        assert data.endswith(b"data: [DONE]\n\n")
        result = pay(p.url, "/paid/v1/chat/completions")
        assert result.status == 200 and result.receipt["settlement"] == "queued"
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as c:
        assert c.execute("SELECT status, amount FROM payment_claims").fetchall() == [
            ("queued", "10000")
        ]
    with sqlite3.connect(tmp_path / "usage.sqlite3") as c:
        outcomes = [r[0] for r in c.execute("SELECT outcome FROM usage_records")]
    assert outcomes.count("completed") >= 2
