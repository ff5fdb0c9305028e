"""`kill -9` of the proxy in the middle of a burst of paid requests, then a restart: every
client that retries with its credential is served, and no authorization is charged twice.
Real processes: `meterkit serve` with a SQLite ledger, `meterkit mock-llm`."""

from __future__ import annotations

import concurrent.futures
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import yaml

from support.http import post_paid
from support.payments import (
    challenge_for,
    claim_key,
    credential,
    key,
    paid,
    priced_now_route,
)
from support.processes import Process, running


def test_kill_9_during_a_burst_then_every_retry_is_served_and_charged_once(
    mock_llm: Process, tmp_path: Path
) -> None:
    db = tmp_path / "ledger.sqlite3"
    tree: dict[str, Any] = paid(
        priced_now_route(mock_llm.url),
        str(db),
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tree))
    args = ["serve", "--config", str(tmp_path / "c.yaml"), "--port", "0"]
    n = 24
    with running(args, cwd=tmp_path) as proxy:
        tokens = []
        for _ in range(n):
            tokens.append(credential(challenge_for(proxy, "/now"), key()))
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            # The upstream answers after 2 s: the burst is in flight, most claims settled.
            futures = [pool.submit(post_paid, proxy.url, f"Payment {t}", 10, 2) for t in tokens]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with sqlite3.connect(db) as c:
                    settled = c.execute(
                        "SELECT count(*) FROM payment_claims WHERE status = 'queued'"
                    ).fetchone()[0]
                if settled >= n // 2:
                    break
                time.sleep(0.02)
            proxy.proc.send_signal(signal.SIGKILL)
            first = [f.result() for f in futures]
    assert first.count(200) < n  # the kill landed mid-burst
    with sqlite3.connect(db) as c:
        charged_before = {r[0] for r in c.execute("SELECT claim_key FROM payment_claims")}
    assert charged_before, "nothing was claimed before the kill"
    with running(args, cwd=tmp_path) as proxy:
        again = [post_paid(proxy.url, f"Payment {t}", 10) for t in tokens]
    # Every client is served by retrying its own credential: undelivered paid requests are
    # served again for free, unsettled claims were released and settle now.
    assert again == [200] * n or all(
        a == 200 or (b == 200 and a == 403) for a, b in zip(again, first, strict=True)
    )
    with sqlite3.connect(db) as c:
        claims = c.execute("SELECT claim_key, status, delivery FROM payment_claims").fetchall()
        charges = c.execute(
            "SELECT claim_key, count(*) FROM settlements WHERE outcome = 'queued' GROUP BY claim_key"
        ).fetchall()
    # One claim per credential, paid once (the claim row is the charge) and delivered.
    assert sorted(claims) == sorted((claim_key(t), "queued", "delivered") for t in tokens)
    assert all(count == 1 for _, count in charges)  # never charged twice
