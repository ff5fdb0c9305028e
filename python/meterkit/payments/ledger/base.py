"""What every ledger backend shares: the schema and its migrations, the `Claim` row, the
`Ledger` interface the payment stage and `meterkit ledger` use, and the row helpers."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE payment_claims (
            claim_key TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            protocol TEXT NOT NULL,
            network TEXT NOT NULL,
            asset TEXT NOT NULL,
            payer TEXT NOT NULL,
            pay_to TEXT NOT NULL,
            amount TEXT NOT NULL,
            nonce TEXT NOT NULL,
            valid_before BIGINT NOT NULL,
            route TEXT NOT NULL,
            request_id TEXT NOT NULL,
            challenge_id TEXT,
            reference TEXT,
            error TEXT,
            authorization_json TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            exported_at DOUBLE PRECISION
        )""",
            "CREATE INDEX payment_claims_status ON payment_claims (status, created_at)",
            """CREATE TABLE settlements (
            claim_key TEXT NOT NULL,
            settler TEXT NOT NULL,
            outcome TEXT NOT NULL,
            reference TEXT,
            error TEXT,
            at DOUBLE PRECISION NOT NULL
        )""",
            "CREATE INDEX settlements_claim ON settlements (claim_key)",
            """CREATE TABLE receipts (
            request_id TEXT PRIMARY KEY,
            claim_key TEXT NOT NULL,
            receipt_json TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        )""",
            """CREATE TABLE usage_records (
            request_id TEXT PRIMARY KEY,
            started_at DOUBLE PRECISION NOT NULL,
            route TEXT NOT NULL,
            outcome TEXT NOT NULL,
            record_json TEXT NOT NULL
        )""",
        ],
    ),
    (
        2,
        [
            # NULL while the paying request runs; delivered | undelivered once it ended.
            "ALTER TABLE payment_claims ADD COLUMN delivery TEXT",
        ],
    ),
    (
        3,
        [
            # The gateway process whose request holds the claim, and each process's lease:
            # a claim whose holder's lease ran out belongs to a dead process and is resolved
            # at once, instead of after a fixed age (issue 19 #1).
            "ALTER TABLE payment_claims ADD COLUMN holder TEXT",
            """CREATE TABLE ledger_holders (
            holder TEXT PRIMARY KEY,
            lease_until DOUBLE PRECISION NOT NULL
        )""",
        ],
    ),
]


@dataclass
class Claim:
    claim_key: str
    # pending | settled | queued | unknown | expired (queued, never settled in time) | failed
    # (`ledger settle`: the chain refused it, or reconciliation found it never settled)
    status: str
    protocol: str
    network: str
    asset: str
    payer: str
    pay_to: str
    amount: str
    nonce: str
    valid_before: int
    route: str
    request_id: str
    challenge_id: str | None
    authorization_json: str
    reference: str | None = None
    error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    exported_at: float | None = None
    delivery: str | None = None
    # The gateway process whose request holds the claim (None: rows from before holders).
    holder: str | None = None


CLAIM_COLUMNS = [f for f in Claim.__dataclass_fields__]
# Which in-flight claims belong to a dead process, given (cutoff, now): a holder without a
# live lease, or no holder and untouched since the cutoff. `?` placeholders (SQLite).
ORPHANED = (
    "((holder IS NULL AND updated_at < ?) OR (holder IS NOT NULL AND holder NOT IN "
    "(SELECT holder FROM ledger_holders WHERE lease_until >= ?)))"
)
EXPIRED = "the authorization expired before it was exported for settlement"
LOST = "the gateway stopped while settling: reconcile against the chain"


def valid_after(now: float | None) -> int:
    """The `valid_before` bound of settleable rows (-1: every row)."""
    return -1 if now is None else int(now)


# Column order of the receipts and usage_records tables, shared by both ledgers.
def receipt_row(request_id: str, key: str, receipt: dict[str, Any]) -> tuple[Any, ...]:
    return (request_id, key, orjson.dumps(receipt).decode(), time.time())


def usage_row(record: dict[str, Any]) -> tuple[Any, ...]:
    return (
        record["request_id"],
        record["started_at"],
        record["route"],
        record["outcome"],
        orjson.dumps(record, default=str).decode(),
    )


class Ledger(Protocol):
    name: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def claim(self, claim: Claim) -> tuple[bool, Claim | None]:
        """Insert the claim if its key is new: (True, None); else (False, the existing row)."""

    async def get_claim(self, key: str) -> Claim | None: ...
    async def finish_claim(
        self,
        key: str,
        status: str,
        reference: str | None,
        error: str | None,
        settler: str | None = None,
    ) -> None:
        """Set a claim's status. With `settler`, the `settlements` audit row of this outcome
        is written in the same transaction: a crash between two writes once lost it."""

    async def release_claim(self, key: str, error: str) -> None:
        """Delete a claim whose settlement certainly did not happen, so the payer can retry."""

    async def record_settlement(
        self, key: str, settler: str, outcome: str, reference: str | None, error: str | None
    ) -> None: ...
    async def save_receipt(self, request_id: str, key: str, receipt: dict[str, Any]) -> None: ...
    async def save_usage(self, record: dict[str, Any]) -> None: ...
    async def export_queued(self, mark: bool, now: float | None = None) -> list[dict[str, Any]]:
        """Queued (deferred) claims not yet exported, oldest first; with `now`, only those
        still valid then (`valid_before > now`: settleable). `mark` records the export."""

    async def expire_queued(self, now: float, mark: bool) -> list[dict[str, Any]]:
        """Queued claims whose authorization expired by `now` (never settleable any more);
        `mark` moves them to status `expired`, out of the queue."""

    async def queued(self, now: float) -> list[Claim]:
        """Queued (deferred) claims still settleable at `now` (`valid_before > now`), exported
        or not, oldest first: what `meterkit ledger settle` submits."""

    async def unsettled(self, statuses: tuple[str, ...], before: float) -> list[Claim]:
        """Claims in one of `statuses` last updated at or before `before`, oldest first:
        what `ledger settle` reconciles against the chain (a live proxy may still be settling
        newer ones)."""

    async def transition(
        self,
        key: str,
        from_statuses: tuple[str, ...],
        status: str,
        reference: str | None,
        error: str | None,
        settler: str | None = None,
    ) -> bool:
        """Move a claim to `status` only if it is in one of `from_statuses` (True if it
        moved): two settlers racing on one row cannot both record an outcome. With
        `settler`, the audit row is written in the same transaction, only if it moved."""

    async def sent_transactions(self, key: str) -> list[str]:
        """Hashes of the transactions journaled for a claim (`settlements` rows with outcome
        `sent`, written before each broadcast), oldest first."""

    async def receipts(self) -> list[dict[str, Any]]: ...
    async def schema_version(self) -> int: ...

    async def set_delivery(self, key: str, request_id: str, delivery: str) -> None:
        """Whether the paid response of `request_id` reached its client (`delivered`) or
        not (`undelivered`, so a retry may be served without a second charge)."""

    async def take_redelivery(self, key: str, request_id: str, holder: str | None = None) -> bool:
        """Take over an undelivered paid claim for `request_id` (held by `holder`), once.
        True when this request won it. The authorization's own validity does not matter:
        the settled claim is the proof of payment (issue 19 #1)."""

    async def renew(self, holder: str, until: float) -> None:
        """`holder`'s lease: its claims are its own until `until` (renewed while it lives)."""

    async def drop_holder(self, holder: str) -> None:
        """A process stopping: its lease ends now."""

    async def holder_alive(self, holder: str, now: float) -> bool:
        """Whether `holder`'s lease still runs at `now`."""

    async def recover(self, older_than: float | None, local: bool) -> dict[str, int]:
        """Resolve claims whose request died with its process: those whose holder's lease
        has run out, and those without a holder last touched before `older_than` (None:
        all of them; only safe with one process on the ledger):
        pending ones are released, settling ones released when settlement is `local` (it
        never left this machine) or marked `unknown`, paid ones without a delivery outcome
        marked `undelivered`. Returns the counts by what was done."""


def journal(ledger: Ledger, settler: str = "onchain") -> Callable[[str, str], Awaitable[None]]:
    """The on-chain settler's journal: a `sent` settlements row per transaction, committed
    before the transaction is broadcast."""

    async def write(key: str, tx_hash: str) -> None:
        await ledger.record_settlement(key, settler, "sent", tx_hash, None)

    return write
