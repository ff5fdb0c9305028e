"""The payment ledger: claimed authorizations (never settle one twice), settlement attempts,
receipts and usage records of paid requests. SQLite (WAL, synchronous=FULL) on one machine,
PostgreSQL for several instances; every write is committed before the caller goes on, so a
success response never leaves ahead of the money state behind it.

A claim is the durable, atomic "this authorization is mine to settle": a unique key
(chain, token, payer, nonce) inserted before settlement. Whoever inserts it settles; anyone
else sees the row and its outcome. Claims are kept (a restart never forgets a used nonce).

A claim's life: `pending` (claimed, nothing sent to the settler) → `settling` (sent; the
outcome is not known yet) → `settled` / `queued` (paid), `unknown` (the settler's answer
was lost) or released (deleted: nothing was settled). A paid claim also says whether its
response reached the client (`delivery`: NULL while the request runs, `delivered`, or
`undelivered`); an undelivered one may be taken over once by a retry with the same
credential, which is served without a second charge. `recover` resolves claims whose
request died with its process.
"""

from meterkit.payments.ledger.base import Claim, Ledger, journal
from meterkit.payments.ledger.postgres import PostgresLedger
from meterkit.payments.ledger.sqlite import SqliteLedger

__all__ = ["Claim", "Ledger", "PostgresLedger", "SqliteLedger", "journal", "make_ledger"]


def make_ledger(
    kind: str, path: str, url: str | None, schema: str | None = None, timeout: float = 5.0
) -> Ledger:
    if kind == "postgres":
        assert url is not None
        return PostgresLedger(url, schema, timeout)
    return SqliteLedger(path)
