"""Token budgets end to end: `meterkit serve` with budgets in front of `meterkit mock-llm`,
both real processes; the in-memory store and a real Redis shared by two proxy instances."""

from __future__ import annotations

import concurrent.futures
import json
import time
import uuid
from typing import Any

import orjson
import pytest

import meterkit
from meterkit import SseDecoder, parse_event
from support.http import FORMATS, body_for, mock_stats, request, texts
from support.processes import Process
from support.usage_db import record

# ---- end to end --------------------------------------------------------------------------


def budget_config(
    mock_url: str,
    budgets: dict[str, Any],
    store: dict[str, Any] | None = None,
    route_budget: str = "b",
) -> dict[str, Any]:
    llm = {"upstream": "mock", "budget": route_budget}
    tree: dict[str, Any] = {
        "upstreams": {
            "mock": {"url": mock_url, "timeout": {"connect": 2, "first_byte": 5, "idle": 5}}
        },
        "routes": {f"POST {p}": llm for p in FORMATS.values()},
        "budgets": budgets,
        "logging": {"level": "warning"},
    }
    if store:
        tree["budget_store"] = store
    return tree


def policy(**kw: Any) -> dict[str, Any]:
    return {"key": "api_key", **kw}


def key() -> dict[str, str]:
    return {"Authorization": f"Bearer sk-{uuid.uuid4().hex}"}


def stream(proxy: Process, fmt: str, headers: dict[str, str], **body: Any) -> tuple[str, bytes]:
    rid = uuid.uuid4().hex
    status, _h, data = request(
        proxy.url,
        "POST",
        FORMATS[fmt],
        body_for(fmt, True, **body),
        {**headers, "X-Request-Id": rid},
    )
    assert status == 200, data
    return rid, data


@pytest.fixture(scope="module")
def limited(mock_llm: Process, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A proxy whose budget caps completions at 10 tokens per request."""
    import yaml

    from support.processes import running

    d = tmp_path_factory.mktemp("budget")
    tree = budget_config(
        mock_llm.url,
        {
            "b": policy(
                tokens_per_minute=100_000, max_completion_tokens=10, streaming={"buffer_tokens": 4}
            )
        },
    )
    tree["usage"] = {"sink": "sqlite", "path": str(d / "u.sqlite3")}
    (d / "c.yaml").write_text(yaml.safe_dump(tree))
    with running(["serve", "--config", str(d / "c.yaml"), "--port", "0"], cwd=d) as p:
        p.db = d / "u.sqlite3"
        yield p


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_truncates_exactly_at_the_limit_and_aborts_the_upstream(
    limited: Process, mock_llm: Process, fmt: str
) -> None:
    # The mock ignores the limit written into the request, so the meter must cut the stream.
    rid, data = stream(
        limited,
        fmt,
        {**key(), "x-mock-ignore-max": "1", "x-mock-length": "400", "x-mock-tps": "400"},
    )
    assert meterkit.count_tokens(texts(fmt, data)) == 10
    events = SseDecoder().feed(data)
    parsed = [parse_event(fmt, e.data, e.event) for e in events]
    finishes = [r for p in parsed for _, r in p.finish_reasons]
    assert (
        finishes[-1]
        == {
            "openai-chat": "length",
            "openai-completions": "length",
            "anthropic": "max_tokens",
            "openai-responses": "max_output_tokens",
        }[fmt]
    )
    rec = record(limited.db, rid)
    assert rec["outcome"] == "truncated"
    assert rec["completion_tokens"] == 10 and rec["completion_provenance"] in (
        "counted",
        "estimated",
    )
    assert rec["budget"]["limit"] == 10
    stats = mock_stats(mock_llm, rid)
    deadline = time.monotonic() + 3
    while stats["client_open"] and time.monotonic() < deadline:
        time.sleep(0.02)
        stats = mock_stats(mock_llm, rid)
    assert not stats["client_open"], "the upstream request was not aborted at truncation"
    assert stats["tokens_generated"] < 40


def test_missing_limit_is_written_into_the_upstream_request(
    limited: Process, mock_llm: Process
) -> None:
    rid, data = stream(limited, "openai-chat", key())
    fields = mock_stats(mock_llm, rid)["body_fields"]
    assert fields["max_completion_tokens"] == 10
    # The proxy asked for usage the client did not ask for, and hid it from the client.
    assert fields["stream_options"] == {"include_usage": True}
    assert b"usage" not in data
    rec = record(limited.db, rid)
    assert rec["completion_provenance"] == "provider" and rec["completion_tokens"] == 10
    # A client that asked for usage gets it.
    rid, data = stream(limited, "openai-chat", key(), stream_options={"include_usage": True})
    assert b'"usage":{"prompt_tokens"' in data


def test_sdks_see_a_normal_end_when_cut(limited: Process) -> None:
    import anthropic
    import openai

    client = openai.OpenAI(
        base_url=limited.url + "/v1",
        api_key="sk-sdk",
        max_retries=0,
        default_headers={"x-mock-ignore-max": "1", "x-mock-length": "300"},
    )
    text, finish = "", None
    for chunk in client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
    ):
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert finish == "length" and meterkit.count_tokens(text) == 10
    aclient = anthropic.Anthropic(
        base_url=limited.url,
        api_key="sk-sdk",
        max_retries=0,
        default_headers={"x-mock-ignore-max": "1", "x-mock-length": "300"},
    )
    with aclient.messages.stream(
        model="claude-sonnet-4-6", max_tokens=500, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        final = s.get_final_message()
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 10


def test_missing_identity_is_401(limited: Process) -> None:
    status, _, body = request(
        limited.url, "POST", FORMATS["openai-chat"], body_for("openai-chat", True)
    )
    assert status == 401 and orjson.loads(body)["type"].endswith("/budget-key-missing")


def test_admission_429_before_any_upstream_call(start_proxy: Any, mock_llm: Process) -> None:
    p = start_proxy(
        budget_config(
            mock_llm.url, {"b": policy(tokens_per_minute=1000, max_completion_tokens=600)}
        )
    )
    k = key()
    # Too big for the bucket at all: no Retry-After.
    status, h, body = request(
        p.url,
        "POST",
        FORMATS["openai-chat"],
        body_for(
            "openai-chat",
            False,
            max_tokens=600,
            messages=[{"role": "user", "content": "word " * 500}],
        ),
        k,
    )
    assert status == 429 and "Retry-After" not in h
    assert orjson.loads(body)["limit"] == "tpm_exceeded"
    # A non-streamed answer of 600 tokens spends the bucket; the next request waits.
    rid = uuid.uuid4().hex
    status, _, _ = request(
        p.url,
        "POST",
        FORMATS["openai-chat"],
        body_for("openai-chat", False),
        {**k, "X-Request-Id": rid, "x-mock-length": "600"},
    )
    assert status == 200
    rid2 = uuid.uuid4().hex
    status, h, body = request(
        p.url,
        "POST",
        FORMATS["openai-chat"],
        body_for("openai-chat", True),
        {**k, "X-Request-Id": rid2},
    )
    problem = orjson.loads(body)
    assert status == 429 and problem["limit"] == "tpm_exceeded", problem
    assert int(h["Retry-After"]) >= 1 and problem["retry_after"] == int(h["Retry-After"])
    _, _, stats = request(mock_llm.url, "GET", f"/_mock/stats?request_id={rid2}")
    assert orjson.loads(stats)["requests"] == [], "the upstream was called despite the 429"
    # Another identity has its own budget.
    status, _, _ = request(
        p.url, "POST", FORMATS["openai-chat"], body_for("openai-chat", True), key()
    )
    assert status == 200


def test_refund_and_overage_are_reconciled_once(start_proxy: Any, mock_llm: Process) -> None:
    p = start_proxy(
        budget_config(
            mock_llm.url, {"b": policy(tokens_per_minute=100_000, max_completion_tokens=400)}
        )
    )
    k = key()
    rid, _ = stream(p, "openai-chat", k, max_tokens=50)
    b = record(p.db, rid)["budget"]
    # Unused lease refunded: taken (prompt + leases) minus the provider-reported actual.
    assert b["refund"] == b["taken"] - b["actual"] > 0
    # More than was leased, reported by a provider whose tokenizer is not public (the
    # count on the wire is an estimate) and within the request's limit: believed, and the
    # overage charged. (A figure beyond what the request could produce is bounded: see
    # tests/proxy/test_usage_trust.py.)
    rid, _ = stream(p, "anthropic", {**k, "x-mock-extra-usage": "300"}, max_tokens=400)
    rec = record(p.db, rid)
    assert rec["completion_tokens"] == 24 + 300 and rec["completion_provenance"] == "provider"
    assert rec["usage_discrepancy"] is None
    assert (
        rec["budget"]["refund"] == rec["budget"]["taken"] - rec["budget"]["actual"] < 0
    )  # overage charged


def test_shadow_mode_never_cuts_but_reports(start_proxy: Any, mock_llm: Process) -> None:
    p = start_proxy(
        budget_config(
            mock_llm.url,
            {"b": policy(tokens_per_minute=100_000, max_completion_tokens=5, mode="shadow")},
        )
    )
    rid, data = stream(p, "anthropic", {**key(), "x-mock-ignore-max": "1"})
    assert meterkit.count_tokens(texts("anthropic", data)) == 24
    rec = record(p.db, rid)
    assert rec["outcome"] == "completed" and rec["would_truncate_at"] <= 5
    _, _, metrics = request(p.url, "GET", "/metrics")
    assert 'meterkit_budget_would_truncate_total{budget="b"} 1.0' in metrics.decode()


def test_partial_usage_rides_on_every_event(start_proxy: Any, mock_llm: Process) -> None:
    p = start_proxy(
        budget_config(
            mock_llm.url,
            {"b": policy(tokens_per_minute=100_000, streaming={"include_partial_usage": True})},
        )
    )
    rid, data = stream(p, "openai-chat", key())
    so_far = ""
    for ev in SseDecoder().feed(data):
        if ev.data == "[DONE]":
            continue
        chunk = json.loads(ev.data)
        for c in chunk["choices"]:
            so_far += c["delta"].get("content") or ""
        assert chunk["usage"]["completion_tokens"] == meterkit.count_tokens(so_far)
    assert record(p.db, rid)["completion_tokens"] == 24


def test_live_budget_is_shared_by_concurrent_streams(start_proxy: Any, mock_llm: Process) -> None:
    """Ten streams on one key that together want far more than the bucket holds: they are
    all admitted, lease as they go, and together never deliver more than it gave out."""
    capacity = 800
    p = start_proxy(
        budget_config(
            mock_llm.url,
            {
                "b": policy(
                    tokens_per_minute=60,
                    burst_tokens=capacity,
                    max_completion_tokens=130,
                    streaming={"buffer_tokens": 10},
                )
            },
        )
    )
    k = key()

    def one(_: int) -> tuple[int, int] | None:
        rid = uuid.uuid4().hex
        status, _, data = request(
            p.url,
            "POST",
            FORMATS["openai-chat"],
            body_for("openai-chat", True),
            {
                **k,
                "X-Request-Id": rid,
                "x-mock-ignore-max": "1",
                "x-mock-length": "2000",
                "x-mock-tps": "200",
            },
        )
        if status == 429:  # a late arrival may find the bucket already leased out
            return None
        assert status == 200
        return meterkit.count_tokens(texts("openai-chat", data)), record(p.db, rid)["prompt_tokens"]

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = [r for r in pool.map(one, range(10)) if r is not None]
    assert len(results) >= 5
    delivered = sum(r[0] for r in results)
    prompts = sum(r[1] for r in results)
    refill = 60  # at most a minute of refill (1 token/s) over the test
    assert delivered + prompts <= capacity + refill, (results, delivered)
    assert any(r[0] < 130 for r in results), "no stream was cut by the shared budget"


def test_two_instances_share_one_redis_budget(
    start_proxy: Any, mock_llm: Process, redis_url: str
) -> None:
    store = {"type": "redis", "url": redis_url, "prefix": f"mktest:{uuid.uuid4().hex[:8]}:"}
    tree = budget_config(
        mock_llm.url,
        {"b": policy(tokens_per_minute=60, burst_tokens=400, max_completion_tokens=24)},
        store,
    )
    a, b = start_proxy(tree), start_proxy(tree)
    k = key()
    admitted = 0
    for i in range(40):
        target = (a, b)[i % 2]
        status, _, _ = request(
            target.url, "POST", FORMATS["openai-chat"], body_for("openai-chat", False), k
        )
        if status == 429:
            break
        assert status == 200
        admitted += 1
    # Each request uses about 9 prompt + 24 completion tokens: one budget of 400 for both.
    assert 8 <= admitted <= 13, admitted
    # The other instance refuses too: the state is shared.
    assert (
        request(
            b.url if admitted % 2 == 0 else a.url,
            "POST",
            FORMATS["openai-chat"],
            body_for("openai-chat", False),
            k,
        )[0]
        == 429
    )


@pytest.mark.parametrize("decision,expected", [("open", 200), ("closed", 503)])
def test_redis_down_fails_open_or_closed(
    start_proxy: Any, mock_llm: Process, decision: str, expected: int
) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    tree = budget_config(
        mock_llm.url,
        {"b": policy(tokens_per_minute=1000, on_backend_failure=decision)},
        {"type": "redis", "url": f"redis://127.0.0.1:{port}/0", "timeout": 0.2},
    )
    p = start_proxy(tree)
    status, _, body = request(
        p.url, "POST", FORMATS["openai-chat"], body_for("openai-chat", True), key()
    )
    assert status == expected, body
    _, _, metrics = request(p.url, "GET", "/metrics")
    assert (
        f'meterkit_budget_backend_failures_total{{budget="b",decision="{decision}"}} 1.0'
        in metrics.decode()
    )
