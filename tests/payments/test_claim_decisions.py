"""The claim decisions (payments/claims.py) as pure functions of a claim and `now`."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from meterkit.payments.claims import (
    STALE_CLAIM,
    in_flight,
    orphaned,
    redeliverable,
    replay_detail,
    stale,
    take,
)
from meterkit.payments.ledger import Claim, SqliteLedger

NOW = 1_800_000_000.0


def claim(**over: object) -> Claim:
    base = Claim(
        claim_key="k",
        status="pending",
        protocol="mpp",
        network="eip155:84532",
        asset="0x" + "11" * 20,
        payer="0x" + "22" * 20,
        pay_to="0x" + "33" * 20,
        amount="1000",
        nonce="0x" + "44" * 32,
        valid_before=int(NOW) + 300,
        route="POST /v1/chat/completions",
        request_id="r1",
        challenge_id=None,
        authorization_json="{}",
        updated_at=NOW,
    )
    return dataclasses.replace(base, **over)  # type: ignore[arg-type]


def test_a_claim_is_stale_only_after_nobody_touched_it_for_the_stale_age() -> None:
    fresh = claim(updated_at=NOW - STALE_CLAIM + 1)
    old = claim(updated_at=NOW - STALE_CLAIM - 1)
    assert not stale(fresh, NOW) and stale(old, NOW)
    assert in_flight(old) and orphaned(old, NOW) and not orphaned(fresh, NOW)
    # Paid with no delivery outcome and stale: its request died mid-response.
    assert orphaned(dataclasses.replace(old, status="settled"), NOW)
    # Paid and delivered: finished, never orphaned however old.
    done = dataclasses.replace(old, status="settled", delivery="delivered")
    assert not orphaned(done, NOW) and not in_flight(done)


def test_only_a_paid_undelivered_claim_is_served_again() -> None:
    assert redeliverable(claim(status="queued", delivery="undelivered"))
    assert not redeliverable(claim(status="settled", delivery="delivered"))
    assert not redeliverable(claim(status="unknown", delivery="undelivered"))
    assert not redeliverable(claim(status="pending"))


def test_every_replay_is_told_why_truly() -> None:
    said = {
        replay_detail(claim(status="settled", delivery="delivered"), NOW),
        replay_detail(claim(status="settled", delivery="undelivered"), NOW),
        replay_detail(claim(status="settled"), NOW),
        replay_detail(claim(status="unknown"), NOW),
        replay_detail(claim(status="expired"), NOW),
        replay_detail(claim(status="settling"), NOW),
    }
    assert len(said) == 6
    # A paid, undelivered request is served again however old its authorization is.
    assert "served again" in replay_detail(
        claim(status="queued", delivery="undelivered", valid_before=1), NOW
    )


def test_an_unknown_outcome_is_reconciled_and_the_paid_request_served_again(
    tmp_path: Path,
) -> None:
    """`claims.take` with a `reconcile` (on-chain settlement): a claim the crash left
    `unknown` is checked, found settled, and — its holder dead — served once more."""

    async def go() -> None:
        ledger = SqliteLedger(tmp_path / "l.sqlite3")
        await ledger.open()
        try:
            await ledger.claim(claim(status="unknown", holder="dead-process"))
            checked: list[str] = []

            async def reconcile(c: Claim) -> None:
                checked.append(c.claim_key)
                await ledger.transition(c.claim_key, ("unknown",), "settled", "0xtx", None, "t")

            async def call(aw: Any) -> Any:
                return await aw

            async def recover(older_than: float) -> None:
                await ledger.recover(older_than, local=False)

            taken = await take(
                ledger,
                claim(request_id="r2", holder="alive"),
                call=call,
                recover=recover,
                reconcile=reconcile,
            )
            assert checked == ["k"]
            assert taken.redelivery is not None and taken.redelivery.status == "settled"
            row = await ledger.get_claim("k")
            assert row is not None and (row.delivery, row.holder) == (None, "alive")
        finally:
            await ledger.close()

    asyncio.run(go())
