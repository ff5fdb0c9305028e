"""A stalled SQLite ledger (issue 19 #2): another process holds its write lock longer than
`ledger.timeout`. The request answers 503 — and its claim must not be written afterwards,
when the lock frees: before, the ledger thread inserted it anyway and the payer's retry
waited 15 s to be refused as "being settled by another request" for 10 minutes."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from meterkit.payments.ledger import SqliteLedger
from support.claims import claim_row
from support.inproc import chat, gateway, llm_config
from support.payments import challenges, credential, key, paid

CHAT = "/v1/chat/completions"


def hold_write_lock(path: Path, seconds: float) -> threading.Thread:
    """Another process's writer: BEGIN IMMEDIATE, then nothing for `seconds`."""
    ready = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        ready.set()
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        conn.close()

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    ready.wait(5)
    return t


def test_a_call_its_caller_gave_up_on_never_takes_effect(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"

    async def go() -> None:
        ledger = SqliteLedger(path)
        await ledger.open()
        try:
            holder = hold_write_lock(path, 1.5)
            row = claim_row(1, "pending")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await ledger.claim(row)
            await asyncio.to_thread(holder.join, 5)
            await asyncio.sleep(0.3)
            assert await ledger.get_claim("k1") is None
            # The ledger still works, and a call nobody abandoned waits for the lock.
            holder = hold_write_lock(path, 0.4)
            assert (await ledger.claim(row))[0] is True
            await asyncio.to_thread(holder.join, 5)
        finally:
            await ledger.close()

    asyncio.run(go())


def test_the_retry_of_a_503_during_a_stall_is_served(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        t = llm_config("{mock}")
        t["routes"] = {f"POST {CHAT}": {"upstream": "mock", "price": "$0.001"}}
        t = paid(t, str(db))
        t["ledger"]["timeout"] = "0.5s"
        async with gateway(t) as g:
            body = chat(stream=False)
            status, headers, _ = await g.post(CHAT, body)
            assert status == 402
            (ch,) = challenges(headers.getall("WWW-Authenticate"))
            token = credential(ch, key())
            holder = hold_write_lock(db, 2.0)
            status, _, problem = await g.post(CHAT, body, {"Authorization": f"Payment {token}"})
            assert status == 503, problem
            await asyncio.to_thread(holder.join, 5)
            await asyncio.sleep(0.3)
            # Before: 403 "being settled by another request" (a claim nobody held).
            status, _, out = await g.post(CHAT, body, {"Authorization": f"Payment {token}"})
            assert status == 200, out

    asyncio.run(go())
