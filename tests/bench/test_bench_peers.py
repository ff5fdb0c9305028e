"""`meterkit bench peers`: the suite runs end to end in a tiny quick mode and reports a peer
that is not installed as skipped, never as a traceback (a smoke test: figures are not
asserted). nginx and LiteLLM are forced absent in the suite run, so it is the same test on a
machine that has them and on CI, which has neither; the peers' own start-up is tested only
where they are installed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from meterkit.bench import peers, plots
from meterkit.cli import main


def test_bench_peers_quick_skips_absent_peers(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "peers.json"
    directory = tmp_path / "plots"
    args = ["bench", "peers", "--quick", "--quiet", "--json", str(out)]
    args += ["--nginx", str(tmp_path / "no-nginx"), "--litellm", str(tmp_path / "no-litellm")]
    args += ["--plots", str(directory)] if plots.available() else ["--no-plots"]
    assert main(args) == 0

    results = orjson.loads(out.read_bytes())
    assert {
        "environment",
        "sizes",
        "setup",
        "peers",
        "ttft",
        "cpu_per_event_us",
        "throughput",
        "ratios",
    } <= results.keys()
    assert results["peers"]["meterkit"]["status"] == "measured"
    for key in ("nginx", "litellm"):
        assert results["peers"][key]["status"] == "skipped"
        assert results["peers"][key]["note"].endswith("is not an executable file")
    # the absent peers leave no rows; direct and meterkit have every figure
    assert [r["streams"] for r in results["ttft"]] == list(peers.QUICK.ttft_levels)
    for row in results["ttft"]:
        assert set(row["targets"]) == {"direct", "meterkit"}
        assert {"p50_ms", "p99_ms", "added_p50_ms", "added_p99_ms"} <= row["targets"][
            "meterkit"
        ].keys()
    assert set(results["cpu_per_event_us"]) == {"meterkit"}
    assert [r["streams"] for r in results["throughput"]] == list(peers.QUICK.throughput_levels)
    for row in results["throughput"]:
        assert set(row["targets"]) == {"direct", "meterkit"}
        assert row["targets"]["meterkit"]["streams"] > 0
        assert row["targets"]["meterkit"]["events_per_s"] > 0
    assert results["ratios"] == {}

    captured = capsys.readouterr()
    notes = [line for line in captured.out.splitlines() if ": skipped: " in line]
    assert notes == [
        f"nginx: skipped: --nginx {tmp_path / 'no-nginx'} is not an executable file",
        f"LiteLLM: skipped: --litellm {tmp_path / 'no-litellm'} is not an executable file",
    ]
    assert "Traceback" not in captured.out + captured.err
    assert "--quick" in captured.err  # the smoke-run warning every suite gives
    if plots.available():
        assert sorted(p.name for p in directory.glob("*.png")) == [
            "peers-cpu-per-event.png",
            "peers-throughput.png",
            *(f"peers-ttft-cdf-{n}.png" for n in peers.QUICK.ttft_levels),
        ]


def test_peers_options_belong_to_the_peers_suite(capsys: Any) -> None:
    assert main(["bench", "core", "--quick", "--nginx", "/usr/sbin/nginx"]) == 2
    assert "--nginx is an option of the peers suite" in capsys.readouterr().err


def test_default_discovery_says_how_to_install(tmp_path: Path) -> None:
    litellm = peers.find_litellm(cwd=tmp_path)  # not a checkout: no .peers/ there
    assert litellm.path is None and litellm.status == "skipped"
    assert "`make peers` installs it" in litellm.note
    nginx = peers.find_nginx()
    if nginx.path is None:
        assert "apt-get install nginx-light" in nginx.note


def test_ratios_are_against_meterkit_and_only_when_meaningful() -> None:
    results = {
        "cpu_per_event_us": {"meterkit": 4.0, "nginx": 1.0},
        "ttft": [
            {
                "streams": 1,
                "targets": {
                    "direct": {},
                    "meterkit": {"added_p50_ms": 1.0, "added_p99_ms": 2.0},
                    "nginx": {"added_p50_ms": 0.5, "added_p99_ms": -0.1},  # within the noise
                },
            }
        ],
        "throughput": [
            {
                "streams": 10,
                "targets": {"meterkit": {"events_per_s": 100.0}, "nginx": {"events_per_s": 300.0}},
            }
        ],
    }
    assert peers.ratios(results) == {
        "nginx": {
            "cpu_per_event": 0.25,
            "added_ttft_p50": {"1": 0.5},
            "added_ttft_p99": {"1": None},
            "events_per_s": {"10": 3.0},
        }
    }


NGINX = peers.find_nginx()
LITELLM = peers.find_litellm()


@pytest.mark.skipif(NGINX.path is None, reason="nginx is not installed")
def test_nginx_peer_streams_from_the_mock(tmp_path: Path, mock_llm: Any) -> None:
    assert NGINX.path is not None
    with peers.start_nginx(NGINX.path, mock_llm.url, tmp_path) as proc:
        asyncio.run(peers._smoke(proc.url))
        assert (tmp_path / "nginx" / "nginx.pid").is_file()  # nothing outside its directory


@pytest.mark.skipif(LITELLM.path is None, reason="LiteLLM is not installed (`make peers`)")
def test_litellm_peer_streams_from_the_mock(tmp_path: Path, mock_llm: Any) -> None:
    assert LITELLM.path is not None
    with peers.start_litellm(LITELLM.path, mock_llm.url, tmp_path) as proc:
        asyncio.run(peers._smoke(proc.url))
