"""`meterkit mock-facilitator`: an x402 facilitator for demos and tests.

It verifies authorizations with meterkit's own EIP-712 and secp256k1 code (cross-checked
against eth-account in the tests). By default it is a *simulator*: it "settles" on a
simulated chain (a used nonce can never settle again, every settlement gets a made-up
transaction hash, no money moves). With `--rpc-url` (and the relayer key in
`$METERKIT_RELAYER_KEY`) it is a real facilitator on that chain: `/verify` simulates the
transfer, `/settle` submits it with meterkit's on-chain settler and answers the real
transaction hash (the tests run the `x402` package's own facilitator against it too).

`POST /verify`, `POST /settle`, `GET /supported` (the x402 facilitator API), plus
`GET /_facilitator/settlements` and `POST /_facilitator/mode` ({"settle": "ok" | "fail" |
"pending" | "timeout" | "http500" | "slow"}) for failure injection ("slow": settled, answered
2 s later).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from meterkit import _core
from meterkit.config.payments import KNOWN_ASSETS, Asset
from meterkit.payments import evm
from meterkit.payments.problems import PaymentProblem
from meterkit.runtime import serve_app

if TYPE_CHECKING:
    from meterkit.payments.onchain import OnchainSettler

STATE = web.AppKey("facilitator_state", dict)
# The on-chain settler of a real facilitator (`--rpc-url`), None for the simulator.
CHAIN: web.AppKey[OnchainSettler | None] = web.AppKey("facilitator_chain")


def _asset(req: dict[str, Any]) -> Asset:
    network = str(req.get("network", ""))
    address = str(req.get("asset", "")).lower()
    for a in KNOWN_ASSETS.values():
        if address == a.address.lower() and network in (a.network, a.caip2):
            return a
    extra = req.get("extra") or {}
    chain = int(network.split(":")[1]) if network.startswith("eip155:") else 0
    return Asset(
        "?",
        network,
        chain,
        str(req.get("asset")),
        6,
        str(extra.get("name", "")),
        str(extra.get("version", "")),
    )


def _check(body: dict[str, Any]) -> tuple[evm.Authorization, Asset, str, dict[str, Any]]:
    req = body.get("paymentRequirements") or {}
    payload = (body.get("paymentPayload") or {}).get("payload") or {}
    asset = _asset(req)
    auth = evm.parse_authorization(payload.get("authorization"), payload.get("signature"))
    amount = int(req.get("amount") or req.get("maxAmountRequired") or 0)
    payer = evm.verify(
        auth,
        evm.Terms(asset, amount, str(req.get("payTo", ""))),
        now=time.time(),
        max_valid_before=time.time() + 86400,
    )
    return auth, asset, payer, req


async def _verify(request: web.Request) -> web.Response:
    body = await request.json()
    try:
        auth, asset, payer, _ = _check(body)
    except PaymentProblem as e:
        return web.json_response(
            {"isValid": False, "invalidReason": e.reason, "invalidMessage": e.detail}
        )
    settler = request.app[CHAIN]
    if settler is not None:
        try:
            await settler.simulate(asset, auth)
        except PaymentProblem as e:
            return web.json_response({"isValid": False, "invalidReason": e.reason, "payer": payer})
        return web.json_response({"isValid": True, "payer": payer})
    if evm.claim_key(auth, asset) in request.app[STATE]["used"]:
        return web.json_response({"isValid": False, "invalidReason": "nonce_used", "payer": payer})
    return web.json_response({"isValid": True, "payer": payer})


def _settle_failure(reason: str, payer: str | None, network: str) -> web.Response:
    """An x402 SettleResponse for a settlement that did not happen (HTTP 200, as facilitators
    answer)."""
    return web.json_response(
        {
            "success": False,
            "errorReason": reason,
            "payer": payer,
            "transaction": "",
            "network": network,
        }
    )


async def _settle(request: web.Request) -> web.Response:
    state = request.app[STATE]
    mode = state["mode"]
    if mode == "timeout":
        # Never answer, but let a shutdown end the wait (else the runner's cleanup waits
        # its full shutdown timeout for this handler).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state["closing"].wait(), 3600)
    if mode == "http500":
        return web.json_response({"error": "injected"}, status=500)
    body = await request.json()
    try:
        auth, asset, payer, req = _check(body)
    except PaymentProblem as e:
        return _settle_failure(e.reason, None, "")
    if mode == "fail":
        return _settle_failure("insufficient_funds", payer, asset.caip2)
    if mode == "pending":
        return _settle_failure("settlement_pending", payer, asset.caip2)
    key = evm.claim_key(auth, asset)
    settler = request.app[CHAIN]
    if settler is not None:
        try:
            tx = await settler.submit(asset, auth, key)
        except PaymentProblem as e:
            return _settle_failure(e.reason, payer, asset.caip2)
        return web.json_response(
            {"success": True, "payer": payer, "transaction": tx, "network": asset.caip2}
        )
    if key in state["used"]:
        return _settle_failure("nonce_used", payer, asset.caip2)
    state["used"].add(key)
    tx = "0x" + _core.keccak256(orjson.dumps([key, auth.signature])).hex()
    state["settlements"].append(
        {
            "transaction": tx,
            "payer": payer,
            "amount": str(auth.value),
            "to": auth.to,
            "asset": asset.address,
            "network": asset.caip2,
            "nonce": auth.nonce,
            "at": time.time(),
        }
    )
    if mode == "slow":
        # Settled, and the answer takes 2 s: a gateway that dies meanwhile never hears it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state["closing"].wait(), 2.0)
    return web.json_response(
        {"success": True, "payer": payer, "transaction": tx, "network": req.get("network")}
    )


async def _supported(request: web.Request) -> web.Response:
    settler = request.app[CHAIN]
    if settler is not None:
        chain_id = request.app[STATE]["chain_id"]
        return web.json_response(
            {"kinds": [{"x402Version": 2, "scheme": "exact", "network": f"eip155:{chain_id}"}]}
        )
    kinds = []
    for a in KNOWN_ASSETS.values():
        kinds.append({"x402Version": 2, "scheme": "exact", "network": a.caip2})
        kinds.append({"x402Version": 1, "scheme": "exact", "network": a.network})
    return web.json_response({"kinds": kinds})


async def _settlements(request: web.Request) -> web.Response:
    return web.json_response({"settlements": request.app[STATE]["settlements"]})


async def _mode(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[STATE]["mode"] = body.get("settle", "ok")
    return web.json_response({"mode": request.app[STATE]["mode"]})


def build_facilitator_app(
    settler: OnchainSettler | None = None, chain_id: int = 0
) -> web.Application:
    """The simulator, or with `settler` (an `OnchainSettler`) a real facilitator on its chain."""
    app = web.Application()
    app[STATE] = {
        "used": set(),
        "settlements": [],
        "mode": "ok",
        "closing": asyncio.Event(),
        "chain_id": chain_id,
    }
    app[CHAIN] = settler

    async def closing(app: web.Application) -> None:
        app[STATE]["closing"].set()

    app.on_shutdown.append(closing)
    app.router.add_post("/verify", _verify)
    app.router.add_post("/settle", _settle)
    app.router.add_get("/supported", _supported)
    app.router.add_get("/_facilitator/settlements", _settlements)
    app.router.add_post("/_facilitator/mode", _mode)
    return app


async def start_facilitator(
    host: str, port: int, settler: OnchainSettler | None = None, chain_id: int = 0
) -> tuple[web.AppRunner, int]:
    return await serve_app(build_facilitator_app(settler, chain_id), host, port, access_log=None)


def run_facilitator(host: str, port: int, rpc_url: str | None = None, key: str = "") -> None:
    from meterkit.runtime import run_forever

    async def main() -> None:
        settler = None
        chain_id = 0
        if rpc_url is not None:
            from meterkit.chain.rpc import Rpc
            from meterkit.config.payments import Chain
            from meterkit.payments.onchain import OnchainSettler

            probe = Rpc(rpc_url, 10.0)
            try:
                chain_id = int(await probe.call("eth_chainId"), 16)
            finally:
                await probe.close()
            # Polls for the receipt every 10 ms: a local node mines at once.
            chain = Chain(rpc_url=rpc_url, relayer_key=key, poll_interval=0.01)
            settler = OnchainSettler(chain, 10.0)
        runner, bound = await start_facilitator(host, port, settler, chain_id)
        kind = (
            f"on chain {chain_id} via {rpc_url}" if settler else "simulated chain: no money moves"
        )
        # The listening URL first: scripts take the first URL printed.
        print(f"meterkit mock-facilitator listening on http://{host}:{bound} ({kind})", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
            if settler is not None:
                await settler.close()

    run_forever(main())
