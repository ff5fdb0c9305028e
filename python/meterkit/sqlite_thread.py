"""One SQLite connection owned by one thread, for the async code that keeps money state in
a SQLite file (the payment ledger, the session store).

sqlite3 objects stay on their thread, and writes are serialised without blocking the event
loop: each call runs `fn(connection)` on that thread. WAL and `synchronous=FULL` (a commit
survives power loss) are set when the file is opened.

A call whose caller gave up (a timeout cancelled it: the request already answered 503) must
not take effect later: a ledger locked by another process once let the thread insert a
claim 20 s after its request had gone, and the payer's retry was refused for 10 minutes as
"being settled by another request". So the wait for another process's lock is ours, not
SQLite's: a short busy timeout per attempt, attempts repeated up to `LOCK_WAIT`, and before
each attempt the call checks that its caller still waits; an abandoned call is never run."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# How long a call waits, in all, for another process's write lock (SQLite's busy timeout
# used to be this, in one wait the caller could not stop), and each attempt's own wait.
LOCK_WAIT = 30.0
ATTEMPT_MS = 100


class Abandoned(Exception):
    """The caller stopped waiting before the call ran: it was not run."""


def _locked(e: sqlite3.OperationalError) -> bool:
    return "locked" in str(e) or "busy" in str(e)


class SqliteThread:
    def __init__(self, path: str | Path, name: str) -> None:
        self.path = Path(path)
        self.name = name
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"meterkit-{name}")
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on the connection's thread. `fn` is one unit: a statement, or a
        transaction it begins and ends; on "database is locked" it is rolled back and run
        again, unless its caller has given up meanwhile (then it never takes effect)."""
        abandoned = threading.Event()

        def call() -> T:
            conn = self._conn
            assert conn is not None, f"{self.name} is not open"
            deadline = time.monotonic() + LOCK_WAIT
            with self._lock:
                while True:
                    if abandoned.is_set():
                        raise Abandoned(f"{self.name}: the caller gave up")
                    try:
                        return fn(conn)
                    except sqlite3.OperationalError as e:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        if not _locked(e) or time.monotonic() >= deadline:
                            raise

        future = asyncio.get_running_loop().run_in_executor(self._pool, call)
        try:
            return await future
        except asyncio.CancelledError:
            abandoned.set()
            raise

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only `fn` (no transaction, no write) on the caller's thread when the
        connection is free, else on the connection's thread as `run` does.

        A hop to the thread and back costs ~85 µs of CPU on this 2-core VM (a futex wake, the
        loop's self-pipe, the GIL changing hands) — for a one-row SELECT that takes ~10 µs.
        Reads may stay on the event loop: in WAL mode a reader does not wait for writers
        (other processes' included). Writes never do: they can wait for another process's
        write lock or for the disk."""
        if self._lock.acquire(blocking=False):
            try:
                assert self._conn is not None, f"{self.name} is not open"
                return fn(self._conn)
            finally:
                self._lock.release()
        return await self.run(fn)

    async def open(self, setup: Callable[[sqlite3.Connection], None]) -> None:
        """Connect (creating the folder) and run `setup` (schema, migrations) first."""

        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=LOCK_WAIT, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            # Setup (migrations) waits in one go; calls afterwards wait in short attempts.
            setup(conn)
            conn.execute(f"PRAGMA busy_timeout={ATTEMPT_MS}")
            self._conn = conn

        await asyncio.get_running_loop().run_in_executor(self._pool, connect)

    async def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._pool, shut)
        self._pool.shutdown(wait=True)
