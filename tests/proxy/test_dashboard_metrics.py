"""docs/grafana-dashboard.json queries only series the proxy exports: every metric name in
its expressions is one the metrics registry (with the process collector) can produce."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.metrics_core import Metric

from meterkit.observability.metrics import ProxyMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "info": ("_info",),
}
_FUNCTIONS = {"rate", "increase", "sum", "by", "le", "topk", "histogram_quantile"}


def exported() -> set[str]:
    names: set[str] = set()
    family: Metric
    for family in ProxyMetrics(process=True).registry.collect():
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
        names.update(s.name for s in family.samples)
    return names


def queried() -> set[str]:
    dash = json.loads(DASHBOARD.read_text())
    out: set[str] = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", target["expr"])
            out.update(
                w
                for w in re.findall(r"[a-z_][a-z0-9_]*", expr)
                if w.startswith(("meterkit_", "process_"))
            )
    return out


def test_every_dashboard_metric_is_exported() -> None:
    names = queried()
    assert len(names) >= 15, names
    missing = sorted(names - exported())
    assert not missing, f"the dashboard queries series nobody exports: {missing}"


def test_no_created_series() -> None:
    m = ProxyMetrics()
    m.requests.labels("r", "200", "completed").inc()
    m.ttft.labels("r").observe(0.1)
    assert b"_created" not in m.exposition()
