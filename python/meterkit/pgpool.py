"""A PostgreSQL connection pool for the async code that keeps money state there (the payment
ledger, the session store): in its own schema when one is configured (created if missing),
with every statement and every wait for a connection bounded by `timeout`, so a frozen
server costs a request that long, not forever."""

from __future__ import annotations

from typing import Any


async def open_pool(url: str, schema: str | None, timeout: float, max_size: int = 10) -> Any:
    import asyncpg

    if schema:
        conn = await asyncpg.connect(url, timeout=timeout)
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        finally:
            await conn.close()
    return await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=max_size,
        server_settings={"search_path": schema} if schema else None,
        timeout=timeout,
        command_timeout=timeout,
    )
