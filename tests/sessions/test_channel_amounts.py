"""Channel amounts are uint128 (issue 19 #9): a credit past it is refused at the edge with
a one-line error, a deposit can never be pushed past it in either store, and amounts above
64 bits (valid uint128) are stored and listed exactly."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from meterkit.sessions.channels import UINT128_MAX, prepaid_channel
from meterkit.sessions.postgres import PostgresSessionStore
from meterkit.sessions.store import SessionStore
from support.payments import ASSET, PAY_TO

PAYER = "0x" + "11" * 20


def meterkit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterkit", "channel", *args, "--demo", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_credit_past_uint128_is_one_line_and_breaks_no_listing(tmp_path: Path) -> None:
    ok = meterkit(tmp_path, "credit", "--payer", PAYER, "--amount", "$1")
    assert ok.returncode == 0, ok.stderr
    r = meterkit(
        tmp_path,
        "credit",
        "--payer",
        PAYER,
        "--amount",
        "$99999999999999999999999999999999999999999",
    )
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("meterkit: ") and len(r.stderr.strip().splitlines()) == 1
    assert "2^128" in r.stderr and "Traceback" not in r.stderr
    listed = meterkit(tmp_path, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (channel,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert channel["deposit"] == 1_000_000


def test_amounts_above_64_bits_are_credited_and_listed_exactly(tmp_path: Path) -> None:
    # $10^14 of a 6-decimal token: 10^20 base units, past 2^64, well within uint128.
    r = meterkit(tmp_path, "credit", "--payer", PAYER, "--amount", "$100000000000000", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["deposit"] == 10**20
    listed = meterkit(tmp_path, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["deposit"] == 10**20


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        return SessionStore(tmp_path / "s.sqlite3")
    url = request.getfixturevalue("postgres_url")
    return PostgresSessionStore(url, f"s_{uuid.uuid4().hex[:12]}")


def test_no_store_takes_a_deposit_past_uint128(store: Any) -> None:
    async def go() -> None:
        await store.open()
        try:
            ch = prepaid_channel(PAYER, PAY_TO, ASSET.address, ASSET.chain_id, "0x" + "01" * 32)
            await store.credit(ch, UINT128_MAX - 5)
            with pytest.raises(ValueError, match="2\\^128"):
                await store.credit(ch, 6)
            with pytest.raises(ValueError, match="positive"):
                await store.credit(ch, 0)
            assert (await store.credit(ch, 5)).deposit == UINT128_MAX
            (listed,) = await store.list()
            assert listed.deposit == UINT128_MAX
        finally:
            await store.close()

    asyncio.run(go())


def test_channel_output_is_for_people_by_default_and_json_on_request(tmp_path: Path) -> None:
    """Issue 20 #8: `channel credit` printed 18 JSON fields; amounts now come with their
    asset, and scripts ask for `--json` (or `--id`)."""
    r = meterkit(tmp_path, "credit", "--payer", PAYER, "--amount", "$0.0048")
    assert r.returncode == 0, r.stderr
    assert "deposit   $0.0048 (4800 USDC base units)" in r.stdout
    assert r.stdout.startswith("channel 0x") and "(prepaid, open)" in r.stdout
    listed = meterkit(tmp_path, "list")
    assert "$0.0048 (4800 USDC base units)" in listed.stdout
    cid = meterkit(tmp_path, "credit", "--payer", PAYER, "--amount", "$1", "--id").stdout.strip()
    assert cid.startswith("0x") and len(cid) == 66
