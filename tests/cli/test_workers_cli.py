"""`serve --workers N` refuses what per-process state would break, with the key path and the
CLI's exit codes, before any worker starts; `validate` reports the same for gateway.workers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from meterkit import _core
from meterkit.commands import EXIT_FAILED, EXIT_LISTEN, EXIT_OK, EXIT_USAGE


def meterkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterkit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=dict(os.environ),
    )


def write(d: Path, **extra: Any) -> Path:
    tree: dict[str, Any] = {
        "gateway": {"host": "127.0.0.1"},
        "upstreams": {"mock": {"url": "http://127.0.0.1:9"}},
        "routes": {"POST /v1/chat/completions": {"upstream": "mock"}},
        "usage": {"sink": "none"},
        **extra,
    }
    p = d / "meterkit.yaml"
    p.write_text(yaml.safe_dump(tree))
    return p


BUDGETED = {
    "routes": {"POST /v1/chat/completions": {"upstream": "mock", "budget": "b"}},
    "budgets": {"b": {"key": "api_key", "tokens_per_day": 1000}},
}
PAID = {
    "routes": {"POST /v1/chat/completions": {"upstream": "mock", "price": "$0.01"}},
    "wallets": {"base-sepolia": "0x000000000000000000000000000000000000dEaD"},
    "accepts": [{"asset": "USDC", "network": "base-sepolia"}],
    "payments": {"secret": "s" * 48, "settlement": {"type": "deferred"}},
}
SESSION = {
    **PAID,
    "routes": {
        "POST /s": {
            "upstream": "mock",
            "path": "/v1/chat/completions",
            "session": {"price": "$0.00001", "suggested_deposit": "$0.0002"},
        }
    },
    "ledger": {"type": "postgres", "url": "postgresql://x@127.0.0.1:1/x"},
}
OPERATOR_KEY = "0x" + "11" * 32
SESSION_ONCHAIN = {
    **SESSION,
    "wallets": {"base-sepolia": _core.address_of(bytes.fromhex(OPERATOR_KEY[2:]))},
    "sessions": {
        "channels": {
            "type": "onchain",
            "rpc_url": "http://127.0.0.1:9",
            "escrow": "0x" + "ab" * 20,
            "operator_key": OPERATOR_KEY,
        }
    },
}


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        (BUDGETED, "budget_store.type"),
        (PAID, "ledger.type"),
        (SESSION_ONCHAIN, "sessions.channels"),
    ],
    ids=["memory-budgets", "sqlite-ledger", "onchain-session-channels"],
)
def test_per_process_state_is_refused(extra: dict[str, Any], where: str, tmp_path: Path) -> None:
    config = write(tmp_path, **extra)
    r = meterkit("serve", "--config", str(config), "--port", "0", "--workers", "2")
    assert r.returncode == EXIT_FAILED, r.stderr
    assert "Traceback" not in r.stderr
    assert f"  {where}: with 2 workers" in r.stderr, r.stderr
    # The same from the config key, and from validate.
    tree = yaml.safe_load(config.read_text())
    tree["gateway"]["workers"] = 2
    config.write_text(yaml.safe_dump(tree))
    v = meterkit("validate", "--config", str(config))
    assert v.returncode == EXIT_FAILED and f"  {where}: with 2 workers" in v.stderr, v.stderr


def test_shared_stores_pass_validation(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        gateway={"host": "127.0.0.1", "workers": 4},
        budget_store={"type": "redis", "url": "redis://127.0.0.1:1/0"},
        **BUDGETED,
    )
    r = meterkit("validate", "--config", str(config))
    assert r.returncode == EXIT_OK, r.stderr


def test_session_routes_run_on_several_workers(tmp_path: Path) -> None:
    """Channels, holds and vouchers are in the ledger's PostgreSQL, which wakes a paused
    stream on whichever worker holds it (tests/sessions/test_session_instances.py)."""
    config = write(tmp_path, gateway={"host": "127.0.0.1", "workers": 2}, **SESSION)
    r = meterkit("validate", "--config", str(config))
    assert r.returncode == EXIT_OK, r.stderr


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_workers_must_be_a_positive_number(value: str, tmp_path: Path) -> None:
    r = meterkit("serve", "--config", str(write(tmp_path)), f"--workers={value}")
    assert r.returncode == EXIT_USAGE and "--workers" in r.stderr


def test_gateway_workers_is_checked(tmp_path: Path) -> None:
    r = meterkit("validate", "--config", str(write(tmp_path, gateway={"workers": 0})))
    assert r.returncode == EXIT_FAILED and "gateway.workers" in r.stderr


def test_demo_runs_one_process(tmp_path: Path) -> None:
    r = meterkit("serve", "--demo", "--workers", "2", "--port", "0", cwd=tmp_path)
    assert r.returncode == EXIT_USAGE and "--workers" in r.stderr


def test_a_taken_port_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = meterkit(
            "serve", "--config", str(write(tmp_path)), "--port", str(port), "--workers", "2"
        )
    assert r.returncode == EXIT_LISTEN, r.stderr
    assert "Traceback" not in r.stderr and "Address already in use" in r.stderr
