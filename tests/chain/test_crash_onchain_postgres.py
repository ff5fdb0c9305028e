"""`kill -9` mid-burst with on-chain settlement on a PostgreSQL ledger (issue 19 #1): each
payer the chain charged gets exactly one answer — resending its credential after the
restart is served once the dead process's lease ran out (a settlement whose outcome the
crash lost is asked of the chain, not left `unknown`) — and nobody is charged twice.
Real processes: `meterkit serve`, `meterkit mock-llm`, anvil, PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from support.chain import UNIT, LocalChain, credential
from support.http import post_paid
from support.payments import priced_now_route
from support.processes import Process, running

PRICE = 10_000


def test_kill_9_with_onchain_settlement_on_postgres_serves_each_charged_payer_once(
    chain: LocalChain, mock_llm: Process, postgres_url: str, tmp_path: Path
) -> None:
    tree: dict[str, Any] = chain.paid(
        priced_now_route(mock_llm.url),
        "unused",
    )
    schema = f"s_{uuid.uuid4().hex[:12]}"
    tree["ledger"] = {"type": "postgres", "url": postgres_url, "schema": schema, "lease": "2s"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tree))
    args = ["serve", "--config", str(tmp_path / "c.yaml"), "--port", "0"]
    n = 8
    payers = [chain.payer(1 * UNIT) for _ in range(n)]
    with running(args, cwd=tmp_path) as proxy:
        auths = [credential(proxy.url, "/now", k, chain.asset)[0] for k, _ in payers]
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            # Settled on chain before the upstream answers (after 3 s): kill in between.
            futures = [pool.submit(post_paid, proxy.url, a, 10, 3) for a in auths]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                charged = sum(chain.balance(a) < UNIT for _, a in payers)
                if charged >= n // 2:
                    break
                time.sleep(0.05)
            proxy.proc.send_signal(signal.SIGKILL)
            first = [f.result() for f in futures]
    assert first.count(200) < n
    with running(args, cwd=tmp_path) as proxy:
        again = [post_paid(proxy.url, a, 30) for a in auths]
    for (_, address), a, b in zip(payers, again, first, strict=True):
        paid = UNIT - chain.balance(address)
        assert paid in (0, PRICE), "nobody is charged twice"
        served = [a, b].count(200)
        if paid:
            assert served == 1, (address, a, b)
        else:
            assert served == 0, (address, a, b)
