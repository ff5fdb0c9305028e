"""Usage records (one per proxied request) and the sinks they go to."""

from meterkit.usage.records import Outcome, Provenance, UsageRecord
from meterkit.usage.sinks import (
    LogSink,
    MemorySink,
    NullSink,
    PostgresSink,
    SqliteSink,
    UsageSink,
    make_sink,
)

__all__ = [
    "LogSink",
    "MemorySink",
    "NullSink",
    "Outcome",
    "PostgresSink",
    "Provenance",
    "SqliteSink",
    "UsageRecord",
    "UsageSink",
    "make_sink",
]
