"""The one upstream session serves every client: an upstream's Set-Cookie goes to the client
that got it and is never replayed with other clients' requests."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from support.inproc import gateway


def test_an_upstream_cookie_is_never_sent_with_another_clients_request() -> None:
    seen: list[str | None] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        return web.json_response({"ok": True}, headers={"Set-Cookie": "session=alice; Path=/"})

    async def go() -> None:
        up = web.Application()
        up.router.add_route("*", "/{tail:.*}", upstream)
        runner = web.AppRunner(up)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        # A host name, not an IP: aiohttp's default cookie jar keeps cookies of host names.
        tree = {
            "gateway": {"host": "127.0.0.1"},
            "upstreams": {"u": {"url": f"http://localhost:{port}"}},
            "routes": {"GET /x": {"upstream": "u", "format": "none"}},
        }
        try:
            async with gateway(tree) as g:
                async with aiohttp.ClientSession() as alice:
                    async with alice.get(g.url + "/x") as r:
                        assert r.headers.get("Set-Cookie") == "session=alice; Path=/"
                async with aiohttp.ClientSession() as bob:
                    async with bob.get(g.url + "/x") as r:
                        assert r.status == 200
                    async with bob.get(g.url + "/x", headers={"Cookie": "own=bob"}) as r:
                        assert r.status == 200
        finally:
            await runner.cleanup()
        assert seen == [None, None, "own=bob"]

    asyncio.run(go())
