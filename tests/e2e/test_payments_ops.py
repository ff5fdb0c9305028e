"""Operator features of paid routes: deferred settlement and `meterkit ledger export`, a
settlement callable, hooks referenced from YAML, metrics, and the `meterkit pay` / `keygen`
commands as a newcomer runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from support.http import request
from support.payments import CHAT, PAY_TO, SECRET, pay
from support.processes import Process, running

HOOKS = """
from aiohttp import web
from decimal import Decimal

SEEN = []

def require_team(ctx):
    if ctx.request.headers.get("X-Team") == "crash":
        raise RuntimeError("operator bug")
    if ctx.request.headers.get("X-Team") != "blue":
        return web.json_response({"error": "blue team only"}, status=401)

def discount(ctx, quote):
    if ctx.request.headers.get("X-Coupon") == "HALF":
        return quote.price / 2

def settle(authorization):
    open(authorization["claim_key"].replace(":", "_")[:60] + ".settled", "w").write(authorization["payer"])
    return "0xfeed" + authorization["authorization"]["nonce"][6:]
"""


@pytest.fixture(scope="module")
def deferred(mock_llm: Process, tmp_path_factory: pytest.TempPathFactory) -> Any:
    d = tmp_path_factory.mktemp("deferred")
    (d / "hooks").mkdir()
    (d / "hooks" / "policy.py").write_text(HOOKS)
    tree = {
        "wallets": {"base-sepolia": PAY_TO},
        "accepts": [{"asset": "USDC", "network": "base-sepolia"}],
        "payments": {"secret": SECRET, "settlement": {"type": "deferred"}},
        "ledger": {"type": "sqlite", "path": str(d / "ledger.sqlite3")},
        "upstreams": {"mock": {"url": mock_llm.url}},
        "routes": {
            "POST /v1/chat/completions": {
                "upstream": "mock",
                "price": "$0.10",
                "hooks": {
                    "onRequest": "hooks/policy.py:require_team",
                    "onPriceResolved": "hooks/policy.py:discount",
                },
            },
        },
        "logging": {"level": "warning"},
    }
    (d / "c.yaml").write_text(yaml.safe_dump(tree))
    with running(["serve", "--config", str(d / "c.yaml"), "--port", "0"], cwd=d) as p:
        p.db = d / "c.yaml"
        yield p


def test_hooks_decide_and_reprice(deferred: Process) -> None:
    status, _, body = request(deferred.url, "POST", "/v1/chat/completions", CHAT)
    assert status == 401 and orjson.loads(body)["error"] == "blue team only"
    status, headers, body = request(
        deferred.url, "POST", "/v1/chat/completions", CHAT, {"X-Team": "crash"}
    )
    assert status == 500 and headers["Content-Type"] == "application/problem+json"
    assert orjson.loads(body)["type"].endswith("/hook-failed")
    full = pay(deferred.url, "/v1/chat/completions", headers={"X-Team": "blue"}, dry_run=True)
    half = pay(
        deferred.url,
        "/v1/chat/completions",
        headers={"X-Team": "blue", "X-Coupon": "HALF"},
        dry_run=True,
    )
    assert (full.offers[0].amount, half.offers[0].amount) == (100_000, 50_000)


def test_deferred_settlement_queues_for_batch_export(deferred: Process) -> None:
    result = pay(deferred.url, "/v1/chat/completions", headers={"X-Team": "blue"})
    assert result.status == 200
    assert result.receipt["settlement"] == "queued" and result.receipt["reference"].startswith(
        "deferred:"
    )
    cfg = str(deferred.db)
    out = subprocess.run(
        [sys.executable, "-m", "meterkit", "ledger", "export", "--config", cfg, "--mark"],
        capture_output=True,
        text=True,
        cwd=Path(cfg).parent,
        check=True,
    )
    rows = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["status"] == "queued" and rows[0]["amount"] == "100000"
    assert rows[0]["authorization"]["authorization"]["to"].lower() == PAY_TO
    again = subprocess.run(
        [sys.executable, "-m", "meterkit", "ledger", "export", "--config", cfg],
        capture_output=True,
        text=True,
        cwd=Path(cfg).parent,
        check=True,
    )
    assert again.stdout == ""  # marked: a batch is exported once


def test_metrics_count_payments(deferred: Process) -> None:
    text = request(deferred.url, "GET", "/metrics")[2].decode()
    assert 'meterkit_payment_required_total{route="POST /v1/chat/completions"}' in text
    assert 'meterkit_settlements_total{outcome="queued",route="POST /v1/chat/completions"}' in text


def test_callable_settlement(mock_llm: Process, tmp_path: Path) -> None:
    (tmp_path / "policy.py").write_text(HOOKS)
    tree = {
        "wallets": {"base-sepolia": PAY_TO},
        "accepts": [{"asset": "USDC", "network": "base-sepolia"}],
        "payments": {
            "secret": SECRET,
            "settlement": {"type": "callable", "callable": "policy.py:settle"},
        },
        "ledger": {"type": "sqlite", "path": str(tmp_path / "l.sqlite3")},
        "upstreams": {"mock": {"url": mock_llm.url}},
        "routes": {"POST /v1/chat/completions": {"upstream": "mock", "price": "$0.01"}},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tree))
    with running(["serve", "--config", str(tmp_path / "c.yaml"), "--port", "0"], cwd=tmp_path) as p:
        result = pay(p.url, "/v1/chat/completions")
    assert result.status == 200 and result.receipt["reference"].startswith("0xfeed")
    assert len(list(tmp_path.glob("*.settled"))) == 1


def test_keygen_and_pay_commands(deferred: Process, tmp_path: Path) -> None:
    key_file = tmp_path / "key.hex"
    out = subprocess.run(
        [sys.executable, "-m", "meterkit", "keygen", "--out", str(key_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    address = out.stdout.split()[1]
    base = [
        sys.executable,
        "-m",
        "meterkit",
        "pay",
        deferred.url + "/v1/chat/completions",
        "--key-file",
        str(key_file),
        "--data",
        orjson.dumps(CHAT).decode(),
        "-H",
        "X-Team: blue",
    ]
    dry = subprocess.run([*base, "--dry-run"], capture_output=True, text=True)
    assert dry.returncode == 0 and "offer: 0.1 USDC on base-sepolia" in dry.stderr
    capped = subprocess.run([*base, "--max-amount", "0.05"], capture_output=True, text=True)
    assert capped.returncode == 3 and "per-request cap" in capped.stderr
    paid = subprocess.run([*base, "--max-amount", "$0.10"], capture_output=True, text=True)
    assert paid.returncode == 0, paid.stderr
    assert f"from {address}" in paid.stderr and "receipt:" in paid.stderr
    assert orjson.loads(paid.stdout)["object"] == "chat.completion"


def test_openapi_export(deferred: Process) -> None:
    cfg = str(deferred.db)
    out = subprocess.run(
        [sys.executable, "-m", "meterkit", "openapi", "--config", cfg, "--base-url", "https://gw"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(cfg).parent,
    )
    spec = orjson.loads(out.stdout)
    op = spec["paths"]["/v1/chat/completions"]["post"]
    assert op["x-payment"]["price"] == "$0.10" and "402" in op["responses"]
    assert spec["servers"] == [{"url": "https://gw"}]
