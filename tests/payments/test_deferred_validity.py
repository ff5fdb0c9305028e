"""Issue 9 #6 (domain part): deferred settlement hands out authorizations valid long enough
for a batch (`payments.settlement.max_validity`, default 24 h), and `meterkit ledger export`
flags rows close to expiry and never exports expired ones as settleable."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from meterkit import cli
from meterkit.config import ConfigError, config_from_dict
from meterkit.payments.ledger import Claim, Ledger, PostgresLedger, SqliteLedger

PAY_TO = "0x" + "22" * 20


def tree(settlement: dict[str, Any] | None = None, **payments: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"secret": "payment-secret-for-tests-0123456789", **payments}
    if settlement is not None:
        p["settlement"] = settlement
    return {
        "wallets": {"base-sepolia": PAY_TO},
        "accepts": [{"asset": "USDC", "network": "base-sepolia"}],
        "payments": p,
        "upstreams": {"api": {"url": "http://127.0.0.1:9"}},
        "routes": {"POST /v1/chat/completions": {"upstream": "api", "price": "$0.01"}},
    }


def test_deferred_challenges_and_authorizations_last_the_batch_window() -> None:
    """Regression: deferred (the default) issued 300 s challenges, so queued authorizations
    expired five minutes after the payer held a success receipt."""
    pay = config_from_dict(tree()).payments
    assert pay.settlement.type == "deferred"
    assert (pay.settlement.max_validity, pay.expires, pay.max_validity) == (86400, 86400, 86400)
    pay = config_from_dict(tree({"type": "deferred", "max_validity": "2h"})).payments
    assert (pay.expires, pay.max_validity, pay.settlement.expiry_margin) == (7200, 7200, 3600)


def test_other_settlements_keep_short_challenges() -> None:
    pay = config_from_dict(tree({"type": "facilitator", "url": "http://127.0.0.1:9"})).payments
    assert (pay.expires, pay.max_validity) == (300, 3600)


@pytest.mark.parametrize(
    ("settlement", "payments", "where"),
    [
        (None, {"expires": "5m"}, "expires"),
        ({"type": "deferred", "max_validity": "2h"}, {"max_validity": "1h"}, "max_validity"),
        ({"type": "deferred", "max_validity": "30m"}, {}, "expiry_margin"),
        ({"type": "facilitator", "url": "http://x", "max_validity": "2h"}, {}, "deferred only"),
    ],
)
def test_windows_that_cannot_work_are_config_errors(
    settlement: dict[str, Any] | None, payments: dict[str, Any], where: str
) -> None:
    with pytest.raises(ConfigError, match=where):
        config_from_dict(tree(settlement, **payments))


# ---- the ledger and `meterkit ledger export` ----------------------------------------------------


def claim(n: int, valid_before: int, status: str = "queued") -> Claim:
    return Claim(
        claim_key=f"eip3009:84532:0xtoken:0xpayer:{n:064x}",
        status=status,
        protocol="mpp",
        network="eip155:84532",
        asset="0xtoken",
        payer="0xpayer",
        pay_to=PAY_TO,
        amount="10000",
        nonce=f"0x{n:064x}",
        valid_before=valid_before,
        route="POST /v1/chat/completions",
        request_id=f"r{n}",
        challenge_id=None,
        authorization_json=orjson.dumps({"authorization": {"n": n}}).decode(),
    )


NOW = int(time.time())
ROWS = {
    1: NOW - 10,  # expired
    2: NOW + 600,  # expiring (margin 1 h)
    3: NOW + 86_000,
}


async def fill(ledger: Ledger) -> None:
    await ledger.open()
    try:
        for n, vb in ROWS.items():
            await ledger.claim(claim(n, vb))
        await ledger.claim(claim(4, NOW - 10, status="settled"))  # not queued: untouched
    finally:
        await ledger.close()


async def ledger_views(ledger: Ledger) -> tuple[list[int], list[int], list[int]]:
    await ledger.open()
    try:
        expired = await ledger.expire_queued(NOW, mark=True)
        again = await ledger.expire_queued(NOW, mark=False)
        settleable = await ledger.export_queued(mark=False, now=NOW)
        return (
            [int(r["nonce"], 16) for r in expired],
            [int(r["nonce"], 16) for r in again],
            [int(r["nonce"], 16) for r in settleable],
        )
    finally:
        await ledger.close()


def test_sqlite_ledger_separates_expired_from_settleable(tmp_path: Path) -> None:
    asyncio.run(fill(SqliteLedger(tmp_path / "l.sqlite3")))
    expired, again, settleable = asyncio.run(ledger_views(SqliteLedger(tmp_path / "l.sqlite3")))
    assert (expired, again, settleable) == ([1], [], [2, 3])


def test_postgres_ledger_separates_expired_from_settleable(postgres_url: str) -> None:
    schema = f"mk_{uuid.uuid4().hex[:10]}"
    asyncio.run(fill(PostgresLedger(postgres_url, schema)))
    expired, again, settleable = asyncio.run(ledger_views(PostgresLedger(postgres_url, schema)))
    assert (expired, again, settleable) == ([1], [], [2, 3])


def export(cfg: Path, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["ledger", "export", "--config", str(cfg), *args])
    return code, [orjson.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def test_ledger_export_flags_expiring_and_never_exports_expired(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"
    asyncio.run(fill(SqliteLedger(db)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**tree(), "ledger": {"type": "sqlite", "path": str(db)}}))

    code, rows, err = export(cfg)
    assert code == 0
    assert [(int(r["nonce"], 16), r["expiring"], r["settleable"]) for r in rows] == [
        (2, True, True),
        (3, False, True),
    ]
    assert rows[0]["authorization"] == {"authorization": {"n": 2}}
    assert 0 < rows[0]["expires_in"] <= 600
    assert "1 expiring" in err and "1 queued authorization(s) expired" in err

    code, rows, err = export(cfg, "--mark")
    assert code == 0 and len(rows) == 2 and "marked expired" in err
    code, rows, err = export(cfg)
    assert rows == [] and "expired" not in err  # marked: exported once, expired moved out

    async def status() -> str | None:
        ledger = SqliteLedger(db)
        await ledger.open()
        try:
            c = await ledger.get_claim(claim(1, 0).claim_key)
            return c.status if c else None
        finally:
            await ledger.close()

    assert asyncio.run(status()) == "expired"
