"""An aiohttp service selling its own SSE stream per delivered token, without the proxy: the
README's "Per-token payments in your own app", runnable.

    python examples/session_server.py              # serve on 127.0.0.1:8080, print how to pay
    python examples/session_server.py --self-test  # serve, pay a stream with SessionClient, check

The "model" here streams a sample text as OpenAI chat chunks; in a service it is your model
server's stream or your own code calling an LLM (anything that yields SSE bytes). Payments
go over MPP session channels: this demo credits a prepaid channel for a demo payer in a
SQLite store (what `meterkit channel credit` does for the proxy), and the payer's vouchers
are checked, made durable and spent per token exactly as through the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

from aiohttp import web

import meterkit
from meterkit import _core, synth
from meterkit.integrations.aiohttp import Completion, cleanup_ctx, paid_stream
from meterkit.sessions.meter import SessionMeter
from meterkit.sessions.store import SessionStore

PATH = "/v1/chat/completions"
PRICE = "$0.00001"  # per completion token: 10 base units of USDC (6 decimals)
PAY_TO = "0x" + "22" * 20  # the operator's address: where settled channels pay
TEXT = synth.SAMPLE_TEXT * 3  # about 270 tokens: a few pauses for a voucher at 100 a voucher
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def model(pace: float) -> AsyncIterator[bytes]:
    """Stand-in for a model's streamed answer (one event per read, `pace` s apart)."""
    for event in synth.chat_events(synth.split_deltas(TEXT), model="gpt-4o"):
        await asyncio.sleep(pace)
        yield event


def make_app(meter: SessionMeter, pace: float) -> web.Application:
    # The whole integration: answer 402s, vouchers and refusals, and meter the stream.
    @paid_stream(meter)
    async def complete(request: web.Request) -> Completion:
        body = await request.json()
        return Completion(
            model(pace),
            format="openai-chat",
            model="gpt-4o",
            # Charged at the meter's prompt_price (zero here) before the first byte.
            prompt_tokens=meterkit.count_chat_prompt(body["messages"], "gpt-4o"),
        )

    app = web.Application()
    app.cleanup_ctx.append(cleanup_ctx(meter))  # opens and closes the session store
    app.router.add_post(PATH, complete)
    return app


def make_meter(data: Path) -> SessionMeter:
    return SessionMeter.build(
        SessionStore(data / "sessions.sqlite3"),
        price=PRICE,
        pay_to=PAY_TO,
        # Binds the 402's challenges (an HMAC key): keep it secret and stable in a service.
        secret=os.environ.get("SESSION_SECRET") or os.urandom(32).hex(),
        voucher_timeout=30.0,
    )


async def demo_channel(meter: SessionMeter, data: Path) -> tuple[bytes, str]:
    """A demo payer (its key in `data`/payer.hex) with a prepaid channel of $1."""
    key_file = data / "payer.hex"
    if not key_file.exists():
        key_file.write_text("0x" + os.urandom(32).hex() + "\n")
        key_file.chmod(0o600)
    key = bytes.fromhex(key_file.read_text().strip().removeprefix("0x"))
    channel = await meter.credit(_core.address_of(key), "$1")
    return key, channel.channel_id


async def serve(host: str, port: int, data: Path) -> None:
    meter = make_meter(data)
    runner = web.AppRunner(make_app(meter, pace=0.01), handler_cancellation=True)
    await runner.setup()  # opens the store (the app's cleanup_ctx)
    await web.TCPSite(runner, host, port).start()
    try:
        _, cid = await demo_channel(meter, data)
        url = f"http://{host}:{port}{PATH}"
        print(f"selling {url} at {PRICE} a completion token (MPP sessions)")
        print(f"a demo payer's prepaid channel: {cid}")
        print("pay for a stream per token (the vouchers it signs are on stderr):")
        print(
            f"  meterkit pay {url} --session {cid} --key-file {data / 'payer.hex'} "
            f'--max-amount 0.01 --data \'{{"model": "gpt-4o", "messages": '
            f'[{{"role": "user", "content": "hi"}}], "stream": true}}\''
        )
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def self_test() -> int:
    """Serve on a free loopback port, pay one stream with meterkit's SessionClient (30
    tokens a voucher), and check the receipt against the tokens delivered."""
    from meterkit import SseDecoder, parse_event
    from meterkit.client.session import SessionClient

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        meter = make_meter(data)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        runner = web.AppRunner(make_app(meter, pace=0), handler_cancellation=True)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        try:
            key, cid = await demo_channel(meter, data)
            price = meter.offers[0].price
            url = f"http://127.0.0.1:{sock.getsockname()[1]}{PATH}"
            async with SessionClient(
                key, cid, max_total=Decimal("0.01"), initial=30 * price
            ) as client:
                result = await client.stream("POST", url, json=BODY)
            # The completion's text: what the client got, control events aside.
            text = ""
            for ev in SseDecoder().feed(result.body):
                with contextlib.suppress(ValueError):
                    text += "".join(d[3] for d in parse_event("openai-chat", ev.data).deltas)
            delivered = meterkit.count_tokens(text, "gpt-4o")
            channel = await meter.store.get(cid)
        finally:
            await runner.cleanup()
    assert result.receipt is not None and channel is not None
    print(f"HTTP {result.status}: need-voucher → voucher → resume {len(result.needs)} times")
    print(
        f"delivered {delivered} tokens; receipt: units {result.receipt['units']}, "
        f"spent {result.receipt['spent']}"
    )
    print(f"channel: spent {channel.spent}, units {channel.units}")
    ok = (
        result.status == 200
        and len(result.needs) > 0
        and result.receipt["units"] == delivered == channel.units
        and channel.spent == delivered * price
    )
    print("ok" if ok else "MISMATCH")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--data-dir", default="meterkit-data/session-example")
    p.add_argument("--self-test", action="store_true", help="pay one stream and check it")
    args = p.parse_args()
    if args.self_test:
        return asyncio.run(self_test())
    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.host, args.port, data))
    except OSError as e:  # a busy port, an address not of this machine: one line, not a trace
        print(
            f"session_server: cannot listen on {args.host}:{args.port}: "
            f"{os.strerror(e.errno) if e.errno else e}",
            file=sys.stderr,
        )
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
