"""A metered route's request body in its content coding (`Content-Encoding`): decoded here,
bounded by `gateway.max_request_body` after decoding (a small gzip body can expand a
thousandfold), and forwarded uncompressed with honest headers. aiohttp's own request
decompression is off (`proxy.lifecycle.start`): it decoded gzip bodies and forwarded them
still labelled gzip, and turned a `br` body into a misleading "not valid HTTP". A
pass-through route's body streams to the upstream as it came, coding and header alike."""

from __future__ import annotations

import zlib

from meterkit.pipeline import problems as gateway
from meterkit.problems import ProxyError

# gzip and zlib-wrapped deflate, told apart by their own headers (zlib's wbits 32 + 15).
_AUTO = 47
_DEFLATE_RAW = -15


def coding_of(header: str | None) -> str | None:
    """The body's coding, lowercased; None for none (or `identity`)."""
    if header is None:
        return None
    coding = header.strip().lower()
    return None if coding in ("", "identity") else coding


def check(header: str | None) -> str | None:
    """The coding, if the gateway can decode it: a 415 problem for one that is not gzip or
    deflate (several codings in a row included)."""
    coding = coding_of(header)
    if coding is not None and coding not in ("gzip", "x-gzip", "deflate"):
        raise gateway.unsupported_body_encoding(coding)
    return coding


def decode(body: bytes, header: str | None, limit: int) -> bytes:
    """`body` without its content coding (see `check`). Raises 400 for a body that does not
    decode, 413 when the decoded body is larger than `limit`."""
    coding = check(header)
    if coding is None:
        return body
    attempts = (_AUTO, _DEFLATE_RAW) if coding == "deflate" else (_AUTO,)
    for wbits in attempts:
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit:
            raise gateway.body_too_large(limit)
        if not d.eof:
            raise _undecodable(coding, "the compressed body is cut short")
        return out
    raise _undecodable(coding, "the body is not valid " + coding)


def _undecodable(coding: str, why: str) -> ProxyError:
    return ProxyError(
        400,
        "invalid-content-encoding",
        "Request body does not decode",
        f"{why} (Content-Encoding: {coding})",
        encoding=coding,
    )
