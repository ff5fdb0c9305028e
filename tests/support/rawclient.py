"""Misbehaving clients over raw loopback sockets: connections that stay idle, heads that never
end, heads that are too large or not HTTP. Every wait is bounded, so a test that expects a
close fails (rather than hangs) when the gateway keeps the connection."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    u = urlsplit(url)
    assert u.hostname is not None and u.port is not None
    return await asyncio.open_connection(u.hostname, u.port)


async def closed_by_peer(reader: asyncio.StreamReader, within: float) -> bool:
    """True when the peer closes the connection within `within` seconds (any bytes it sends
    first are read and dropped); False when it is still open then."""
    try:
        async with asyncio.timeout(within):
            while True:
                try:
                    chunk = await reader.read(65536)
                except ConnectionError:
                    return True
                if not chunk:
                    return True
    except TimeoutError:
        return False


async def exchange(url: str, raw: bytes, within: float = 10) -> bytes:
    """Send `raw`, return everything the peer sends until it closes (bounded)."""
    reader, writer = await connect(url)
    try:
        writer.write(raw)
        await writer.drain()
        out = b""
        async with asyncio.timeout(within):
            while chunk := await reader.read(65536):
                out += chunk
        return out
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    line = response.split(b"\r\n", 1)[0]
    return int(line.split(b" ")[1])


def body_of(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1]
