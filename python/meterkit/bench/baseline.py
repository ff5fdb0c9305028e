"""The pure-Python pipeline meterkit is compared with: what a Python service would write by
hand with the best pure-Python parts available (bytes scanning, orjson, tiktoken).

It is deliberately favourable to the baseline: it handles only LF line ends, and counts
tokens once at the end (one tiktoken call on the joined text) instead of keeping an exact
running count after every read as the meter does.
"""

from __future__ import annotations

from typing import Any

import orjson


class PythonPipeline:
    def __init__(self, fmt: str, encoding: Any) -> None:
        self.fmt = fmt
        self.encoding = encoding
        self.buf = b""
        self.parts: list[str] = []
        self.events = 0

    def feed(self, chunk: bytes) -> None:
        buf = self.buf + chunk if self.buf else chunk
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            self._event(buf[start:end])
            start = end + 2
        self.buf = buf[start:]

    def _event(self, block: bytes) -> None:
        data = []
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                v = line[5:]
                data.append(v[1:] if v.startswith(b" ") else v)
        if not data:
            return
        self.events += 1
        payload = b"\n".join(data)
        if payload == b"[DONE]":
            return
        obj = orjson.loads(payload)
        if self.fmt == "openai-chat":
            for choice in obj.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    self.parts.append(text)
        elif self.fmt == "anthropic":
            if obj.get("type") == "content_block_delta":
                text = obj["delta"].get("text")
                if text:
                    self.parts.append(text)

    def finish(self) -> int:
        return len(self.encoding.encode_ordinary("".join(self.parts)))


def frame_and_extract(data: bytes, fmt: str) -> int:
    """Framing + extraction only (no counting), the baseline of `_core.frame_and_extract`."""
    p = PythonPipeline(fmt, None)
    p.feed(data)
    return len(p.parts)
