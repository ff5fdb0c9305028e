"""`meterkit serve --demo` (what `make run` starts) works as printed: a streamed chat
completion through the proxy, and a paid request recorded in the demo ledger."""

from __future__ import annotations

import sqlite3
import time
from decimal import Decimal
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


def test_demo_streams_a_completion_paid_per_token_as_printed(tmp_path: Path) -> None:
    """The three commands the demo prints: a key, a prepaid channel, a stream paid per token
    that pauses for vouchers and ends with the receipt."""
    import json
    import subprocess
    import sys

    def meterkit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meterkit", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )

    with running(
        ["serve", "--demo", "--port", "0", "--data-dir", str(tmp_path)], cwd=tmp_path
    ) as p:
        printed = "".join(p.output)
        # Runs as pasted (issue 20 #8: it said CHANNEL_ID_FROM_ABOVE): the keygen and the
        # per-token block, in a shell, from a folder where `.venv` is the project's.
        (tmp_path / "pasted").mkdir()
        (tmp_path / "pasted" / ".venv").symlink_to(Path(sys.executable).parents[1])
        commands = []
        for line in printed.split("Or pay per token", 1)[1].splitlines()[1:]:
            if line.startswith("  "):
                commands.append(line.strip())
            elif commands:
                break
        script = "\n".join([".venv/bin/meterkit keygen --out demo-key.hex", *commands])
        pasted = subprocess.run(
            ["bash", "-ec", script],
            capture_output=True,
            text=True,
            cwd=tmp_path / "pasted",
            timeout=120,
        )
        assert pasted.returncode == 0, (script, pasted.stderr)
        assert "receipt:" in pasted.stderr and "data: [DONE]" in pasted.stdout
        pasted_receipt = json.loads(pasted.stderr.split("receipt: ", 1)[1].splitlines()[0])
        assert meterkit("keygen", "--out", "k.hex").returncode == 0
        credited = meterkit(
            "channel",
            "credit",
            "--demo",
            "--data-dir",
            str(tmp_path),
            "--key-file",
            "k.hex",
            "--amount",
            "$1",
            "--json",
        )
        assert credited.returncode == 0, credited.stderr
        channel = json.loads(credited.stdout)["channel_id"]
        body = json.dumps({**CHAT, "stream": True})
        paid = meterkit(
            "pay",
            p.url + "/session/v1/chat/completions",
            "--key-file",
            "k.hex",
            "--max-amount",
            "0.01",
            "--session",
            channel,
            "--data",
            body,
        )
        assert paid.returncode == 0, paid.stderr
        assert "need-voucher" in paid.stderr and "receipt:" in paid.stderr
        assert "event: payment-receipt" in paid.stdout and "data: [DONE]" in paid.stdout
        receipt = json.loads(paid.stderr.split("receipt: ", 1)[1].splitlines()[0])
        assert receipt["units"] > 20 and receipt["spent"] == str(receipt["units"] * 10)
        # The demo's records, reported without writing a config (issue 20 #8): the stream
        # paid per token is revenue on its route.
        time.sleep(0.5)  # the record is written by the usage thread
        report = meterkit(
            "usage", "report", "--demo", "--data-dir", str(tmp_path), "--by", "route", "--json"
        )
        assert report.returncode == 0, report.stderr
        rows = {r["route"]: r for r in json.loads(report.stdout)["rows"]}
        session = rows["POST /session/v1/chat/completions"]
        spent = int(receipt["spent"]) + int(pasted_receipt["spent"])  # both streams
        assert Decimal(session["paid"]) == Decimal(spent) / 10**6
