"""Prometheus metrics of the proxy, in a registry owned by one app instance.

prometheus_client is used rather than a hand-written exposition: it is the reference client,
well kept, and gets the text format, escaping and histogram buckets right.

No `_created` series: prometheus_client would add one per counter and histogram child (the
time it was first used), doubling the series count for nothing a dashboard reads. It is a
process-wide switch of the library, thrown when this module is imported."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase

disable_created_metrics()  # type: ignore[no-untyped-call]

__all__ = ["CONTENT_TYPE_LATEST", "Children", "ProxyMetrics"]

M = TypeVar("M", bound=MetricWrapperBase)

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Whole requests: from a few milliseconds (a 429) to long streams.
_DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Seconds per output token: 1 ms (a fast small model) to 1 s (a stalled one).
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1)


class Children(dict[tuple[Any, ...], M]):
    """The children of a labelled metric by their label values: `c[route, "200", outcome]`
    is `metric.labels(route, "200", outcome)`, looked up once and kept.

    `labels()` converts every value with `str()`, builds a tuple and takes the metric's lock
    on each call: 1.0 µs warm in a loop (py-spy put it near 5 µs under load), and the proxy
    called it ~10 times per request (issue 14 item 2). A hit here is 0.07 µs. The children
    are the metric's own (prometheus_client keeps them until `remove()`/`clear()`, which
    meterkit never calls), so nothing is duplicated and the exposition is unchanged. Keys
    are the values as passed: pass strings, as for `labels()`. Filled from the event loop
    only; a thread (the SQLite sink's) uses `labels()`.

    Measured and not done: each `observe()` of a histogram child is still ~8.3 k
    instructions and each counter `inc()` ~4.4 k (callgrind), half of it the lock of
    prometheus_client's value objects; swapping them for lock-free ones would save ~30 k
    instructions per request (~3% of its CPU) but rewrites private attributes of
    prometheus_client, so it is left alone.
    """

    __slots__ = ("metric",)

    def __init__(self, metric: M) -> None:
        super().__init__()
        self.metric: M = metric

    def __missing__(self, key: tuple[Any, ...]) -> M:
        child: M = self.metric.labels(*key)
        self[key] = child
        return child


@dataclass
class ProxyMetrics:
    """Every series the proxy exports, in one registry per app. `key_label` (off, hashed,
    alias) turns on the per-key series; `process` adds the process and platform collectors
    (CPU, memory, descriptors, Python version): off in tests that build many apps."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    key_label: str = "off"
    process: bool = False

    def __post_init__(self) -> None:
        from meterkit import __version__

        r = self.registry
        if self.process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        # Set only by the workers of `serve --workers N`: which worker answered a scrape.
        self.worker_info = Gauge(
            "meterkit_worker_info",
            "Always 1: the worker of `serve --workers` whose series these are, and its pid",
            ["worker", "pid"],
            registry=r,
        )
        self.build_info = Gauge(
            "meterkit_build_info",
            "Always 1: the meterkit version and the Python it runs on, as labels",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.request_duration = Histogram(
            "meterkit_request_duration_seconds",
            "Time from the request to the end of its response, by route and outcome",
            ["route", "outcome"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.upstream_headers = Histogram(
            "meterkit_upstream_time_to_headers_seconds",
            "Time from sending the upstream request to its response headers",
            ["route", "upstream"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            "meterkit_time_per_output_token_seconds",
            "Streams: (duration - time to first token) / (completion tokens - 1)",
            ["route"],
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self.key_tokens = Counter(
            "meterkit_key_tokens",
            "Tokens per budget key (metrics.key_label: hashed or alias) and kind",
            ["key", "kind"],
            registry=r,
        )
        self.key_spend = Counter(
            "meterkit_key_spend_dollars",
            "Spend per budget key: settled payments, else tokens at the prices table",
            ["key"],
            registry=r,
        )
        self.spend = Counter(
            "meterkit_spend_dollars",
            "Spend by route and model: settled payments, else tokens at the prices table",
            ["route", "model"],
            registry=r,
        )
        self.revenue = Counter(
            "meterkit_revenue",
            "Amounts of settled (or queued) payments, in currency units, by asset",
            ["asset"],
            registry=r,
        )
        self.requests = Counter(
            "meterkit_requests",
            "Requests by route, status and outcome",
            ["route", "status", "outcome"],
            registry=r,
        )
        self.active_streams = Gauge(
            "meterkit_active_streams", "Responses being streamed now", ["route"], registry=r
        )
        self.tokens = Counter(
            "meterkit_tokens",
            "Tokens by route, model, kind (prompt/completion) and provenance",
            ["route", "model", "kind", "provenance"],
            registry=r,
        )
        self.ttft = Histogram(
            "meterkit_time_to_first_token_seconds",
            "Time from request to the first billed token (content, tool arguments, reasoning)",
            ["route"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "meterkit_time_to_first_byte_seconds",
            "Time from request to the first byte of the response body",
            ["route"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.truncations = Counter(
            "meterkit_truncations",
            "Streams cut short on purpose, once each, by cause (limit, budget, payment)",
            ["route", "cause"],
            registry=r,
        )
        self.rejections = Counter(
            "meterkit_rejections",
            "Requests the gateway or a stage answered instead of the upstream, by reason",
            ["route", "reason"],
            registry=r,
        )
        self.usage_pending = Gauge(
            "meterkit_usage_pending_records",
            "Usage records waiting for the usage store",
            registry=r,
        )
        self.usage_write_retries = Counter(
            "meterkit_usage_write_retries",
            "Usage record batches the store refused for now (busy, locked, unreachable)",
            ["sink"],
            registry=r,
        )
        self.usage_write_failures = Counter(
            "meterkit_usage_write_failures",
            "Usage records the store refused for good (logged in full instead)",
            ["sink"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "meterkit_upstream_errors",
            "Upstream failures by route and kind",
            ["route", "kind"],
            registry=r,
        )
        self.cancellations = Counter(
            "meterkit_client_cancellations",
            "Streams the client left before the end (upstream aborted)",
            ["route"],
            registry=r,
        )
        self.anomalies = Counter(
            "meterkit_stream_anomalies", "Stream anomalies by kind", ["route", "kind"], registry=r
        )
        self.usage_discrepancies = Counter(
            "meterkit_usage_discrepancies",
            "Responses whose reported completion usage was outside what was counted on the "
            "wire (kind: below_counted, above_plausible, above_limit, unusable)",
            ["route", "kind"],
            registry=r,
        )
        # The per-request series, by label values (see `Children`): what the request path
        # and the usage record use instead of `labels()`.
        self.by_requests = Children(self.requests)
        self.by_request_duration = Children(self.request_duration)
        self.by_upstream_headers = Children(self.upstream_headers)
        self.by_time_per_output_token = Children(self.time_per_output_token)
        self.by_active_streams = Children(self.active_streams)
        self.by_tokens = Children(self.tokens)
        self.by_ttft = Children(self.ttft)
        self.by_ttfb = Children(self.ttfb)
        self.by_spend = Children(self.spend)
        self.by_cancellations = Children(self.cancellations)

        self.budget_decisions = Counter(
            "meterkit_budget_decisions",
            "Admission decisions (allowed, rejected, would_reject)",
            ["budget", "decision"],
            registry=r,
        )
        self.budget_truncations = Counter(
            "meterkit_budget_truncations",
            "Streams cut, once each, by cause (limit: the per-request cap; budget: the shared budget)",
            # `cause`, as meterkit_truncations_total names it (it was `kind`).
            ["budget", "cause"],
            registry=r,
        )
        self.budget_would_truncate = Counter(
            "meterkit_budget_would_truncate",
            "Shadow mode: streams that would have been cut",
            ["budget"],
            registry=r,
        )
        self.budget_backend_failures = Counter(
            "meterkit_budget_backend_failures",
            "Budget store failures and what the policy did (open, closed)",
            ["budget", "decision"],
            registry=r,
        )
        self.budget_admission = Histogram(
            "meterkit_budget_admission_seconds",
            "Budget admission decision latency",
            ["backend"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
            registry=r,
        )

        self.payment_required = Counter(
            "meterkit_payment_required", "402 answers with a fresh challenge", ["route"], registry=r
        )
        self.payments = Counter(
            "meterkit_payments",
            "Payments verified or rejected (reason, or protocol)",
            ["route", "result", "reason"],
            registry=r,
        )
        self.settlements = Counter(
            "meterkit_settlements",
            "Settlement outcomes (settled, queued, failed, unknown)",
            ["route", "outcome"],
            registry=r,
        )
        self.settlements_skipped = Counter(
            "meterkit_settlements_skipped",
            "After-response settlements not made (upstream failed)",
            ["route", "reason"],
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
