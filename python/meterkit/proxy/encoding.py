"""Compressed upstream bodies on metered routes.

The proxy asks metered upstreams for `Accept-Encoding: identity`, but an upstream may
compress anyway. A compressed event stream must never be forwarded unmetered (the meter
would see no events) nor have a plaintext ending glued after its compressed bytes. gzip and
deflate are decompressed as they arrive and the client gets identity bytes (it may have
asked for nothing else: the proxy chose the encoding); any other coding is refused with a
502 before the first byte reaches the client.

Decompression is bounded per step (`_STEP` bytes out per call), so a small body that
expands to gigabytes is metered and forwarded in pieces, never held whole.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

_STEP = 1 << 20
# 32 + MAX_WBITS: zlib detects a gzip or a zlib header by itself.
_AUTO = 32 + zlib.MAX_WBITS
SUPPORTED = frozenset({"gzip", "x-gzip", "deflate"})


class UnsupportedEncoding(ValueError):
    pass


class CorruptBody(ValueError):
    pass


class Decoder:
    """Incremental gzip/deflate decoder yielding bounded pieces."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._d = zlib.decompressobj(_AUTO)
        self._raw = False
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            if not self._started and data:
                self._started = True
                if self.coding == "deflate" and data[0] & 0x0F != 8:
                    # "deflate" without its zlib header (seen in the wild): raw deflate.
                    self._d = zlib.decompressobj(-zlib.MAX_WBITS)
                    self._raw = True
            while data:
                out = self._d.decompress(data, _STEP)
                data = self._d.unconsumed_tail
                if out:
                    yield out
        except zlib.error as e:
            raise CorruptBody(f"corrupt {self.coding} body: {e}") from None

    def finish(self) -> Iterator[bytes]:
        """The rest, at the end of the body; CorruptBody when it was cut short."""
        try:
            out = self._d.flush()
        except zlib.error as e:
            raise CorruptBody(f"corrupt {self.coding} body: {e}") from None
        if out:
            yield out
        if self._started and not self._d.eof:
            raise CorruptBody(f"the {self.coding} body ended before its end")


def decoder_for(content_encoding: str | None) -> Decoder | None:
    """A decoder for a response's `Content-Encoding`, None for identity; raises
    `UnsupportedEncoding` for anything this proxy cannot meter."""
    if not content_encoding:
        return None
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in SUPPORTED:
        return Decoder(codings[0])
    raise UnsupportedEncoding(", ".join(codings))
