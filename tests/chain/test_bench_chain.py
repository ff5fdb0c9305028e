"""`meterkit bench payments` section 3 as a smoke test: every path settles on the local chain
and reports its figures."""

from __future__ import annotations

from typing import Any


def test_chain_bench_quick_reports_every_path(anvil_node: Any, capsys: Any) -> None:
    from meterkit.bench.chain import main

    results = main(quick=True)

    assert results is not None
    for path in ("deferred", "onchain", "facilitator"):
        figures = results[f"settle_{path}"]
        assert 0 < figures["p50_ms"] <= figures["p99_ms"]
    assert results["round_trip_onchain"]["paid_p50_ms"] > 0
    out = capsys.readouterr().out
    assert "onchain" in out and "facilitator" in out
