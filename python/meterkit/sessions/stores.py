"""Which session store a deployment uses: the one beside its ledger (`make_store`)."""

from __future__ import annotations

from meterkit.config.payments import LedgerConfig
from meterkit.sessions.postgres import PostgresSessionStore
from meterkit.sessions.store import ChannelStore, SessionStore


def make_store(ledger: LedgerConfig) -> ChannelStore:
    """The session store beside the configured ledger: its SQLite file, or its PostgreSQL
    database (and schema)."""
    if ledger.type == "postgres":
        assert ledger.url is not None
        return PostgresSessionStore(ledger.url, ledger.schema, ledger.timeout)
    return SessionStore(ledger.path)
