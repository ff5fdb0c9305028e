"""meterkit: Rust-accelerated streaming metering for paid and budgeted LLM APIs.

The library face: SSE framing, stream-format extraction, exact token counting and the
per-stream meter, each usable alone. See README.md for the proxy and the benchmarks.
"""

from meterkit._core import (
    DEFAULT_MAX_EVENT_SIZE,
    ENCODINGS,
    FALLBACK_ENCODING,
    FORMATS,
    Anomaly,
    FeedResult,
    ParsedEvent,
    SseDecoder,
    SseError,
    SseEvent,
    StreamMeter,
    TokenCounter,
    Usage,
    __version__,
    detect_format,
    encode_comment,
    encode_event,
    parse_event,
)
from meterkit.tokens import (
    ModelEncoding,
    UnknownModelError,
    count_chat_prompt,
    count_request_prompt,
    count_tokens,
    encoding_for_model,
    resolve_model,
)

__all__ = [
    "DEFAULT_MAX_EVENT_SIZE",
    "ENCODINGS",
    "FALLBACK_ENCODING",
    "FORMATS",
    "Anomaly",
    "FeedResult",
    "ModelEncoding",
    "ParsedEvent",
    "SseDecoder",
    "SseError",
    "SseEvent",
    "StreamMeter",
    "TokenCounter",
    "UnknownModelError",
    "Usage",
    "__version__",
    "count_chat_prompt",
    "count_request_prompt",
    "count_tokens",
    "detect_format",
    "encode_comment",
    "encode_event",
    "encoding_for_model",
    "parse_event",
    "resolve_model",
]
