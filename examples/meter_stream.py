"""The README's library example, runnable: meter an OpenAI chat stream read by read, cut it
at a completion limit with a format-correct ending, and print what it cost.

    python examples/meter_stream.py

The upstream here is meterkit's synthetic sample stream split into network-sized reads; in
a service it is the upstream response's body (`async for chunk in resp.content.iter_any()`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import meterkit
from meterkit import synth


async def upstream_reads(size: int = 64) -> AsyncIterator[bytes]:
    """A stand-in for `upstream_response.content.iter_any()`: the sample stream in reads."""
    body = synth.stream_bytes(synth.chat_events(synth.split_deltas(synth.SAMPLE_TEXT)))
    for i in range(0, len(body), size):
        await asyncio.sleep(0)
        yield body[i : i + size]


async def main() -> int:
    print(meterkit.count_tokens("Hello, world!", "gpt-4o"))  # 4, exactly what tiktoken says
    print(meterkit.count_chat_prompt([{"role": "user", "content": "hi"}], "gpt-4o"))

    meter = meterkit.StreamMeter(path="/v1/chat/completions", model="gpt-4o", limit=20)
    sent = bytearray()
    async for chunk in upstream_reads():  # one call per network read
        result = meter.feed(chunk)
        if result.forward:
            sent += result.forward  # original bytes, or the ending
        if result.truncated:  # limit reached: ending sent
            break  # ... abort the upstream now
    tail = meter.close()  # the end of the stream: anything still held back
    sent += tail.forward or b""
    print(meter.completion_tokens, meter.provenance, meter.usage, meter.finish_reasons)
    print(f"forwarded {len(sent)} bytes; ends with [DONE]: {sent.rstrip().endswith(b'[DONE]')}")
    return meter.completion_tokens


if __name__ == "__main__":
    asyncio.run(main())
