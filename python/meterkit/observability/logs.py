"""Structured logs: one JSON object per line, with the request id of the request being served
(a context variable, so every log line inside a request handler carries it)."""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "meterkit_request_id", default=None
)

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid is not None:
            out["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        rid = request_id_var.get()
        extra = {
            k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")
        }
        tail = " ".join(f"{k}={v}" for k, v in extra.items())
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        return f"{stamp} {record.levelname:<7} {record.name} {'[' + rid + '] ' if rid else ''}{record.getMessage()} {tail}".rstrip()


class OncePerOutage(logging.Filter):
    """A driver's retry loop logs the same warning with a traceback at every attempt while a
    database is down (asyncpg: "Failed to restore the pool connection floor; retrying", two
    tracebacks per freeze): one line per message and outage, no traceback. A message seen
    again after `quiet` seconds of silence is a new outage and is logged again."""

    def __init__(self, quiet: float = 60.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.quiet = quiet
        self.clock = clock
        self.last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        now = self.clock()
        seen = self.last.get(msg)
        self.last[msg] = now
        if seen is not None and now - seen < self.quiet:
            return False
        if record.exc_info and record.exc_info[1] is not None:
            # The error's own words, not its stack.
            e = record.exc_info[1]
            record.cause = f"{type(e).__name__}: {e}"
        record.exc_info, record.exc_text = None, None
        return True


def configure_logging(level: str = "info", fmt: str = "json", stream: Any = None) -> None:
    """Configure the `meterkit` logger tree (not the root logger: a host application's own
    logging stays untouched when meterkit is used as a library), and the PostgreSQL driver's
    logger, through the same handler, once per outage."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger = logging.getLogger("meterkit")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    driver = logging.getLogger("asyncpg")
    quiet = logging.StreamHandler(stream or sys.stderr)
    quiet.setFormatter(handler.formatter)
    quiet.addFilter(OncePerOutage())
    driver.handlers[:] = [quiet]
    driver.propagate = False
