"""A real x402 facilitator for the tests: the facilitator logic of the `x402` PyPI package
(`x402FacilitatorSync` + its `exact` EVM scheme, settling with web3 through
`FacilitatorWeb3Signer`) behind a small aiohttp server — the package ships no HTTP server.

    python -m support.x402_facilitator --rpc-url URL --key 0x… --network eip155:31337

`POST /verify`, `POST /settle` ({x402Version, paymentPayload, paymentRequirements}) and
`GET /supported`, as the x402 facilitator HTTP API has them. The signer's web3 calls block,
so each request runs on a worker thread, never on the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from aiohttp import web

from meterkit.runtime import bound_port

FACILITATOR = web.AppKey("facilitator", object)


def build(rpc_url: str, key: str, network: str) -> web.Application:
    from x402 import x402FacilitatorSync
    from x402.mechanisms.evm.exact import register_exact_evm_facilitator
    from x402.mechanisms.evm.signers import FacilitatorWeb3Signer

    fac = x402FacilitatorSync()
    # Simulate before broadcasting, so that a replay is refused rather than mined reverted.
    register_exact_evm_facilitator(
        fac,
        FacilitatorWeb3Signer(private_key=key, rpc_url=rpc_url),
        network,
        simulate_in_settle=True,
    )
    app = web.Application()
    app[FACILITATOR] = fac

    def parse(body: dict[str, Any]) -> tuple[Any, Any]:
        from x402.schemas import PaymentPayload, PaymentRequirements

        return (
            PaymentPayload.model_validate(body["paymentPayload"]),
            PaymentRequirements.model_validate(body["paymentRequirements"]),
        )

    async def run(request: web.Request, what: str) -> web.Response:
        body = await request.json()
        payload, requirements = parse(body)
        method = getattr(fac, what)
        result = await asyncio.get_running_loop().run_in_executor(
            None, method, payload, requirements
        )
        return web.json_response(result.model_dump(by_alias=True, exclude_none=True))

    async def verify(request: web.Request) -> web.Response:
        return await run(request, "verify")

    async def settle(request: web.Request) -> web.Response:
        return await run(request, "settle")

    async def supported(request: web.Request) -> web.Response:
        return web.json_response(fac.get_supported().model_dump(by_alias=True, exclude_none=True))

    app.router.add_post("/verify", verify)
    app.router.add_post("/settle", settle)
    app.router.add_get("/supported", supported)
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rpc-url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--network", default="eip155:31337")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()

    async def serve() -> None:
        runner = web.AppRunner(build(args.rpc_url, args.key, args.network), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", args.port)
        await site.start()
        port = bound_port(site)
        print(f"x402 facilitator listening on http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
