"""The pipeline's promises, in process (proxy app + mock LLM on loopback, one event loop):
every request that reaches the gateway yields exactly one usage record and one request
metric whoever answers it; every stage that entered hears how it ended, so reservations and
claims never outlive their request; internal state is keyed by the gateway's own id."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from meterkit.budgets import MemoryBackend
from meterkit.pipeline import RequestContext, Stage
from support.inproc import chat, gateway, llm_config
from support.payments import challenges, credential, key, paid

CHAT = "/v1/chat/completions"


def budgeted(upstream: str = "{mock}", **policy: Any) -> dict[str, Any]:
    tree = llm_config(upstream)
    tree["budgets"] = {
        "b": {
            "key": {"header": "X-User"},
            "tokens_per_day": 10_000,
            "max_completion_tokens": 3000,
            **policy,
        }
    }
    tree["routes"] = {f"POST {CHAT}": {"upstream": "mock", "budget": "b"}}
    return tree


def day_used(backend: MemoryBackend) -> int:
    return sum(d.used for d in backend.days.values())


# ---- 1. a shared client X-Request-Id is carried, never a key --------------------------


def test_a_shared_client_request_id_neither_evades_the_budget_nor_erases_records() -> None:
    async def go() -> None:
        backend = MemoryBackend()
        async with gateway(budgeted(), budget_backend=backend) as g:
            h = {"X-User": "alice", "X-Request-Id": "same-id", "x-mock-length": "20"}
            answers = await asyncio.gather(*(g.post(CHAT, chat(), h) for _ in range(5)))
            assert [s for s, _, _ in answers] == [200] * 5
            assert all(hd["X-Request-Id"] == "same-id" for _, hd, _ in answers)
            records = await g.records(5)
            assert len(records) == 5
            assert len({r.request_id for r in records}) == 5
            assert {r.client_request_id for r in records} == {"same-id"}
            assert not backend.reservations
            # Every stream is charged: prompt + the 20 delivered tokens, five times.
            assert day_used(backend) == sum(
                (r.prompt_tokens or 0) + (r.completion_tokens or 0) for r in records
            )
            assert all(r.completion_tokens == 20 for r in records)

    asyncio.run(go())


# ---- 2. reservations come back when no response does -----------------------------------


def test_reservations_return_when_the_upstream_is_unreachable() -> None:
    async def go() -> None:
        backend = MemoryBackend()
        async with gateway(budgeted("http://127.0.0.1:9"), budget_backend=backend) as g:
            for _ in range(4):
                status, _, body = await g.post(CHAT, chat(stream=False), {"X-User": "bob"})
                assert status == 502, body
            records = await g.records(4)
            assert [r.outcome for r in records] == ["upstream_error"] * 4
            assert day_used(backend) == 0 and not backend.reservations

    asyncio.run(go())


def test_reservations_return_when_the_client_leaves_before_the_headers() -> None:
    async def go() -> None:
        backend = MemoryBackend()
        async with gateway(budgeted(), budget_backend=backend) as g:
            h = {"X-User": "carol", "x-mock-delay-headers": "1"}
            for _ in range(3):
                with pytest.raises(asyncio.TimeoutError):
                    await g.post(
                        CHAT, chat(stream=False), h, timeout=aiohttp.ClientTimeout(total=0.2)
                    )
            records = await g.records(3)
            assert [r.outcome for r in records] == ["client_cancelled"] * 3
            assert day_used(backend) == 0 and not backend.reservations
            status, _, _ = await g.post(CHAT, chat(stream=False), {"X-User": "carol"})
            assert status == 200

    asyncio.run(go())


# ---- 3. answers the gateway gives itself are recorded ----------------------------------


class Boom(Stage):
    name = "boom"

    async def on_request(self, ctx: RequestContext) -> None:
        if ctx.request.headers.get("x-boom"):
            raise RuntimeError("a bug in a stage")


def test_every_answer_the_gateway_gives_itself_has_one_record_and_one_metric(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        tree = budgeted(tokens_per_day=50, max_completion_tokens=100)
        tree["gateway"]["max_request_body"] = "1KiB"
        tree["routes"] = {
            f"POST {CHAT}": {"upstream": "mock", "budget": "b"},
            "POST /plain": {"upstream": "mock", "path": CHAT},
            "POST /paid": {"upstream": "mock", "path": CHAT, "price": "$0.01"},
            "POST /down": {"upstream": "down", "path": CHAT},
            "POST /slow": {"upstream": "slow", "path": CHAT},
        }
        tree["upstreams"]["down"] = {"url": "http://127.0.0.1:9"}
        tree["upstreams"]["slow"] = {"url": "{mock}", "timeout": {"first_byte": 0.3}}
        tree = paid(tree, str(tmp_path / "ledger.sqlite3"))
        async with gateway(tree, budget_backend=MemoryBackend(), stages=[Boom()]) as g:
            u = {"X-User": "dave"}
            cases: list[tuple[str, Any, dict[str, str], int, str, str]] = [
                (CHAT, b"{not json", u, 400, "rejected", "invalid-json"),
                (CHAT, chat(), {}, 401, "rejected", "budget-key-missing"),
                ("/paid", chat(), {}, 402, "rejected", "no_credential"),
                ("/nowhere", chat(), u, 404, "rejected", "no-route"),
                (CHAT, b"x" * 2048, u, 413, "rejected", "request-too-large"),
                (CHAT, chat(max_tokens=1000), u, 429, "rejected", "tpd_exceeded"),
                ("/plain", chat(), {"x-boom": "1"}, 500, "failed", "internal-error"),
                ("/down", chat(), u, 502, "upstream_error", "upstream-unreachable"),
                (
                    "/slow",
                    chat(),
                    {"x-mock-delay-headers": "1"},
                    504,
                    "upstream_error",
                    "upstream-timeout",
                ),
            ]
            for i, (path, body, headers, status, _, _) in enumerate(cases):
                data = body if isinstance(body, bytes) else orjson.dumps(body)
                got, _, _ = await g.post(
                    path, data=data, headers={**headers, "X-Request-Id": f"c{i}"}
                )
                assert got == status, (path, got)
            records = await g.records(len(cases))
            assert len(records) == len(cases)
            by_client = {r.client_request_id: r for r in records}
            for i, (_, _, _, status, outcome, reason) in enumerate(cases):
                r = by_client[f"c{i}"]
                assert (r.status, r.outcome, r.reason) == (status, outcome, reason)
                assert (
                    g.metric(
                        "meterkit_requests_total",
                        route=r.route,
                        status=str(status),
                        outcome=outcome,
                    )
                    >= 1
                )
            assert g.metric_total("meterkit_requests_total") == len(cases)

    asyncio.run(go())


# ---- 4. a later refusal never strands a payment claim ----------------------------------


def test_a_budget_refusal_on_a_paid_route_leaves_no_claim(tmp_path: Path) -> None:
    async def go() -> None:
        tree = budgeted(tokens_per_day=50, max_completion_tokens=100)
        tree["routes"] = {
            "POST /paid": {"upstream": "mock", "path": CHAT, "price": "$0.01", "budget": "b"}
        }
        ledger_path = tmp_path / "ledger.sqlite3"
        async with gateway(paid(tree, str(ledger_path)), budget_backend=MemoryBackend()) as g:
            body = chat(stream=False, max_tokens=1000)
            status, headers, _ = await g.post("/paid", body, {"X-User": "erin"})
            assert status == 402
            (ch,) = challenges(headers.getall("WWW-Authenticate"))
            token = credential(ch, key())
            auth = {"X-User": "erin", "Authorization": f"Payment {token}"}
            for _ in range(2):
                status, _, problem = await g.post("/paid", body, auth)
                # Refused by the budget both times, at once: no claim was left pending.
                assert status == 429, problem
            with sqlite3.connect(ledger_path) as db:
                assert db.execute("SELECT status FROM payment_claims").fetchall() == []

    asyncio.run(go())


# ---- 6. malformed client fields are a 400 with a record --------------------------------


@pytest.mark.parametrize(
    "field",
    [{"messages": "hi"}, {"messages": [1]}, {"max_tokens": -5}, {"model": 5}, {"stream": "yes"}],
)
def test_malformed_fields_are_a_400_problem_with_a_record(field: dict[str, Any]) -> None:
    async def go() -> None:
        async with gateway() as g:
            status, headers, body = await g.post(CHAT, {**chat(), **field})
            assert status == 400
            assert headers["Content-Type"].startswith("application/problem+json")
            problem = orjson.loads(body)
            assert problem["type"].endswith("/invalid-request")
            assert problem["field"].split("[")[0] in field
            (r,) = await g.records(1)
            assert (r.outcome, r.reason, r.status) == ("rejected", "invalid-request", 400)

    asyncio.run(go())


# ---- 7. honest numbers -------------------------------------------------------------------


def test_time_to_first_token_is_the_first_billed_delta_not_the_first_byte() -> None:
    async def go() -> None:
        async with gateway() as g:
            status, _, _ = await g.post(CHAT, chat(), {"x-mock-ttft": "0.4", "x-mock-length": "3"})
            assert status == 200
            (r,) = await g.records(1)
            assert r.ttfb_ms is not None and r.ttft_ms is not None
            assert r.ttfb_ms < 300 <= 400 <= r.ttft_ms

    asyncio.run(go())


def test_a_stream_cut_by_the_shared_budget_counts_one_truncation() -> None:
    async def go() -> None:
        backend = MemoryBackend()
        # Two streams on one key are admitted (each takes its prompt and a first lease of 5),
        # then lease 5 tokens at a time from 70 a day: together they outrun it.
        tree = budgeted(
            tokens_per_day=70,
            max_completion_tokens=40,
            streaming={"enforce_mid_stream": True, "buffer_tokens": 5},
        )
        async with gateway(tree, budget_backend=backend) as g:
            h = {"X-User": "fred", "x-mock-length": "40", "x-mock-tps": "400"}
            answers = await asyncio.gather(g.post(CHAT, chat(), h), g.post(CHAT, chat(), h))
            assert [s for s, _, _ in answers] == [200, 200]
            records = await g.records(2)
            cut = [r for r in records if r.outcome == "truncated"]
            assert cut and all(r.truncation == "budget" for r in cut)
            assert g.metric("meterkit_budget_truncations_total", budget="b", cause="budget") == len(
                cut
            )
            assert g.metric("meterkit_budget_truncations_total", budget="b", cause="limit") == 0
            assert g.metric(
                "meterkit_truncations_total", route=cut[0].route, cause="budget"
            ) == len(cut)

    asyncio.run(go())


def test_one_access_log_line_per_request_rejections_included() -> None:
    import logging

    from meterkit.observability.logs import JsonFormatter

    lines: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(orjson.loads(JsonFormatter().format(record)))

    logger = logging.getLogger("meterkit.access")
    handler = Collect()
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:

        async def go() -> None:
            async with gateway() as g:
                assert (await g.post(CHAT, chat(), {"X-Request-Id": "mine"}))[0] == 200
                assert (await g.post("/nope", chat()))[0] == 404
                assert (await g.post(CHAT, {"messages": "hi"}))[0] == 400
                await g.records(3)

        asyncio.run(go())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    assert [(x["status"], x["outcome"]) for x in lines] == [
        (200, "completed"),
        (404, "rejected"),
        (400, "rejected"),
    ]
    assert lines[0]["client_request_id"] == "mine" and lines[0]["request_id"] != "mine"
    assert lines[0]["completion_tokens"] == 64 and lines[2]["reason"] == "invalid-request"
    assert all(x["msg"] == "request" and x["duration_ms"] >= 0 for x in lines)
