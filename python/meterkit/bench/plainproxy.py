"""The baseline for the proxy benchmark: a plain aiohttp pass-through proxy with no metering.

Same stack as meterkit's proxy (aiohttp, uvloop, one pooled ClientSession, the same header
rules, handler cancellation) minus everything meterkit adds: no body parsing, no routing
table, no meter, no usage record. `python -m meterkit.bench.plainproxy --upstream URL`.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from meterkit.proxy.headers import client_response_headers, upstream_request_headers
from meterkit.runtime import run_forever, serve_app

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def _session(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(
        connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
    ) as s:
        app[SESSION] = s
        yield


async def _handle(request: web.Request) -> web.StreamResponse:
    headers = upstream_request_headers(
        request.headers,
        (),
        client_ip=request.remote,
        scheme="http",
        host=request.host,
        request_id="-",
        metered=False,
    )
    body = await request.read()
    async with request.app[SESSION].request(
        request.method,
        request.app[UPSTREAM] + request.raw_path,
        headers=headers,
        data=body,
        allow_redirects=False,
    ) as resp:
        sse = resp.headers.get("Content-Type", "").startswith("text/event-stream")
        out = web.StreamResponse(
            status=resp.status,
            headers=client_response_headers(resp.headers, event_stream=sse, request_id="-"),
        )
        await out.prepare(request)
        async for chunk in resp.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
        return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--upstream", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()

    async def run() -> None:
        app = web.Application()
        app[UPSTREAM] = args.upstream.rstrip("/")
        app.cleanup_ctx.append(_session)
        app.router.add_route("*", "/{tail:.*}", _handle)
        runner, port = await serve_app(
            app, args.host, args.port, backlog=4096, handler_cancellation=True, access_log=None
        )
        print(f"plain proxy listening on http://{args.host}:{port}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    run_forever(run())


if __name__ == "__main__":
    main()
