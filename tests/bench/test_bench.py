"""The benchmark harness runs end to end (a smoke test: figures are not asserted)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from meterkit.cli import main


def test_bench_core_quick_writes_every_section(
    tmp_path: Path, tiktoken_encodings: Any, capsys: Any
) -> None:
    out = tmp_path / "core.json"
    # no plots: by default they would land in the repository's benches/results/plots/
    assert main(["bench", "core", "--quick", "--json", str(out), "--no-plots"]) == 0
    results = orjson.loads(out.read_bytes())
    assert {
        "environment",
        "pipeline",
        "framing_extraction",
        "counting",
        "linearity",
    } <= results.keys()
    assert len(results["pipeline"]) == 4
    assert len(results["pipeline_responses"]) == 2
    assert all(r["speedup"] > 0 for r in results["pipeline"])
    assert results["quick"] is True  # the JSON says it was a smoke run (issue 20 #9)
    assert "speedup" in capsys.readouterr().out


def test_meter_command_prints_usage(capsys: Any) -> None:
    assert main(["meter"]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["format"] == "openai-chat"
    assert summary["completion_tokens"] > 0
    assert summary["state"] == "finished"


def test_meter_command_truncates_to_a_file(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "out.sse"
    assert main(["meter", "--sample", "anthropic", "--limit", "5", "--output", str(out)]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["state"] == "truncated"
    assert summary["completion_tokens"] <= 5
    assert out.read_bytes().endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


def test_meter_command_reports_bad_input(tmp_path: Path, capsys: Any) -> None:
    assert main(["meter", str(tmp_path / "missing")]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert main(["meter", "--format", "gemini"]) == 2


def test_bench_workers_quick_measures_both_proxies(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "workers.json"
    assert main(["bench", "workers", "--quick", "--json", str(out), "--no-plots"]) == 0
    results = orjson.loads(out.read_bytes())
    assert set(results["proxy"]) == {"1 worker", "2 workers"}
    assert all(r["streams"] > 0 for r in results["proxy"].values())
    assert "2 workers / 1 worker" in capsys.readouterr().out


def test_bench_sessions_quick_measures_every_section(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "sessions.json"
    assert main(["bench", "sessions", "--quick", "--json", str(out), "--no-plots"]) == 0
    results = orjson.loads(out.read_bytes())
    resume = results["resume"]
    # Streams paid 20 tokens at a time pause and resume: each pause is one measurement.
    assert resume["pauses"] > 0
    assert resume["voucher_204_p50_ms"] > 0 and resume["p50_ms"] > 0
    assert set(results["cpu_per_event_us"]) >= {"unpaid", "session"}
    assert set(results["cpu_split"]) == {
        f"{mode}_{part}_us" for mode in ("unpaid", "session") for part in ("request", "event")
    }
    assert results["paused_memory"]["streams"] == 50
    assert "of which: voucher answered 204" in capsys.readouterr().out
