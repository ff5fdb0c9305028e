"""The PostgreSQL driver's retry warnings (issue 19 #10): one line per message and outage,
no traceback, through meterkit's own log format."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from meterkit.observability.logs import OncePerOutage, configure_logging


@pytest.fixture
def restored_logging() -> Iterator[None]:
    saved = [
        (lg, lg.handlers[:], lg.propagate, lg.level)
        for lg in (logging.getLogger("meterkit"), logging.getLogger("asyncpg"))
    ]
    yield
    for lg, handlers, propagate, level in saved:
        lg.handlers[:], lg.propagate = handlers, propagate
        lg.setLevel(level)


def test_a_retry_loop_logs_one_line_per_outage_without_a_traceback(
    restored_logging: None,
) -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    log = logging.getLogger("asyncpg.pool")
    now = [0.0]
    (handler,) = logging.getLogger("asyncpg").handlers
    (flt,) = handler.filters
    assert isinstance(flt, OncePerOutage)
    flt.clock = lambda: now[0]
    for t in (0.0, 1.0, 3.0, 7.0):  # one freeze: the driver retries with backoff
        now[0] = t
        try:
            raise ConnectionRefusedError(111, "Connect call failed")
        except OSError:
            log.warning("Failed to restore the pool connection floor; retrying", exc_info=True)
    now[0] = 200.0  # a later outage
    log.warning("Failed to restore the pool connection floor; retrying")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    assert all("exc" not in line and "Traceback" not in str(line) for line in lines)
    assert lines[0]["cause"].startswith("ConnectionRefusedError")
    assert lines[0]["logger"] == "asyncpg.pool"
