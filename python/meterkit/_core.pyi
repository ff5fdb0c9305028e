"""Type stub for the Rust extension (hand-written; checked by `mypy.stubtest` in `make lint`)."""

from typing import Final, Literal, final

__all__ = [
    "BUILD_PROFILE",
    "DEFAULT_MAX_EVENT_SIZE",
    "ENCODINGS",
    "FALLBACK_ENCODING",
    "FORMATS",
    "Anomaly",
    "FeedResult",
    "ParsedEvent",
    "SseDecoder",
    "SseError",
    "SseEvent",
    "StreamMeter",
    "TokenCounter",
    "UnknownModelError",
    "Usage",
    "__version__",
    "address_of",
    "challenge_id",
    "channel_id",
    "checksum_address",
    "count_deltas",
    "count_tokens",
    "count_tokens_total",
    "detect_format",
    "eip3009_digest",
    "encode_comment",
    "encode_event",
    "encoding_name_for_model",
    "evm_channel_id",
    "frame_and_extract",
    "keccak256",
    "parse_event",
    "pending_budget",
    "pending_bytes_total",
    "recover_address",
    "resolve_model",
    "set_pending_budget",
    "sign_digest",
    "verify_challenge_id",
    "voucher_digest",
]

__version__: Final[str]
BUILD_PROFILE: Final[str]
DEFAULT_MAX_EVENT_SIZE: Final[int]
FALLBACK_ENCODING: Final[str]
ENCODINGS: Final[list[str]]
FORMATS: Final[list[str]]

class SseError(ValueError):
    """An SSE stream broke a hard limit (an event larger than the maximum event size)."""

class UnknownModelError(KeyError):
    """The model's tokenizer is not known."""

@final
class SseEvent:
    @property
    def event(self) -> str: ...
    @property
    def data(self) -> str: ...
    @property
    def id(self) -> str | None: ...
    @property
    def retry(self) -> int | None: ...
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def span(self) -> tuple[int, int]: ...

@final
class SseDecoder:
    def __new__(cls, *, max_event_size: int = ...) -> SseDecoder: ...
    def feed(self, data: bytes) -> list[SseEvent]: ...
    def close(self) -> list[SseEvent]: ...
    @property
    def position(self) -> int: ...
    @property
    def pending_bytes(self) -> int: ...
    @property
    def last_event_id(self) -> str: ...
    @property
    def max_event_size(self) -> int: ...

def encode_event(
    data: str, *, event: str | None = None, id: str | None = None, retry: int | None = None
) -> bytes: ...
def encode_comment(text: str) -> bytes: ...
def set_pending_budget(limit: int | None) -> None: ...
def pending_budget() -> int | None: ...
def pending_bytes_total() -> int: ...
def count_tokens(text: str, encoding: str) -> int: ...
def count_tokens_total(texts: list[str], encoding: str) -> int: ...
def count_deltas(deltas: list[str], encoding: str) -> int: ...
def frame_and_extract(data: bytes, format: str) -> tuple[int, int, int]: ...
def encoding_name_for_model(model: str) -> str | None: ...
def resolve_model(model: str) -> tuple[str, str]: ...

@final
class TokenCounter:
    def __new__(
        cls, encoding_or_model: str = "o200k_base", *, allow_estimate: bool = False
    ) -> TokenCounter: ...
    def push(self, text: str) -> None: ...
    @property
    def count(self) -> int: ...
    def finish(self) -> int: ...
    @property
    def encoding(self) -> str: ...
    @property
    def provenance(self) -> str: ...
    @property
    def pushed_bytes(self) -> int: ...

@final
class Usage:
    @property
    def input_tokens(self) -> int | None: ...
    @property
    def output_tokens(self) -> int | None: ...
    @property
    def total_tokens(self) -> int | None: ...
    @property
    def cached_input_tokens(self) -> int | None: ...
    @property
    def cache_creation_input_tokens(self) -> int | None: ...
    @property
    def reasoning_tokens(self) -> int | None: ...
    def as_dict(self) -> dict[str, int]: ...

@final
class Anomaly:
    @property
    def kind(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def offset(self) -> int: ...

@final
class ParsedEvent:
    @property
    def kind(self) -> str: ...
    @property
    def deltas(self) -> list[tuple[int, int, str, str]]: ...
    @property
    def finish_reasons(self) -> list[tuple[int, str]]: ...
    @property
    def usage(self) -> Usage | None: ...
    @property
    def error(self) -> tuple[str, str, str | None] | None: ...

def parse_event(format: str, data: str, event: str | None = None) -> ParsedEvent: ...
def detect_format(
    path: str | None = None, *, event: str | None = None, data: str | None = None
) -> str | None: ...

@final
class FeedResult:
    @property
    def forward(self) -> bytes: ...
    @property
    def events(self) -> int: ...
    @property
    def spans(self) -> list[tuple[int, int]]: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def usage(self) -> Usage | None: ...
    @property
    def state(self) -> str: ...
    @property
    def truncated(self) -> bool: ...
    @property
    def paused(self) -> bool: ...
    @property
    def anomalies(self) -> list[Anomaly]: ...
    @property
    def finished(self) -> bool: ...

@final
class StreamMeter:
    def __new__(
        cls,
        format: str = "auto",
        model: str | None = None,
        *,
        path: str | None = None,
        encoding: str | None = None,
        limit: int | None = None,
        shadow: bool = False,
        shadow_limit: int | None = None,
        ending: str = "graceful",
        credit: int | None = None,
        prompt_tokens: int | None = None,
        max_event_size: int = ...,
        strip_usage: bool = False,
        partial_usage: bool = False,
    ) -> StreamMeter: ...
    def feed(self, chunk: bytes) -> FeedResult: ...
    def grant(self, tokens: int) -> FeedResult: ...
    def clear_credit(self) -> FeedResult: ...
    def truncate(self, message: str = ...) -> bytes: ...
    def fail(
        self, message: str, *, error_type: str = "api_error", code: str = "upstream_error"
    ) -> bytes: ...
    def close(self) -> FeedResult: ...
    @property
    def format(self) -> str | None: ...
    @property
    def state(self) -> str: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def tokens_by_channel(self) -> list[tuple[str, int]]: ...
    @property
    def usage(self) -> Usage | None: ...
    @property
    def encoding(self) -> str: ...
    @property
    def provenance(self) -> str: ...
    @property
    def finish_reasons(self) -> list[tuple[int, str]]: ...
    @property
    def anomalies(self) -> list[Anomaly]: ...
    @property
    def stream_error(self) -> tuple[str, str, str | None] | None: ...
    @property
    def stream_id(self) -> str | None: ...
    @property
    def stream_model(self) -> str | None: ...
    @property
    def events(self) -> int: ...
    @property
    def bytes_in(self) -> int: ...
    @property
    def bytes_out(self) -> int: ...
    @property
    def credit(self) -> int | None: ...
    @property
    def limit(self) -> int | None: ...
    @property
    def would_truncate_at(self) -> int | None: ...
    @property
    def pending_bytes(self) -> int: ...

# Payment-layer cryptography (rust/crypto/). Addresses are "0x" + 40 hex digits, bytes32
# values "0x" + 64 hex digits, uint256 amounts decimal strings; bad input raises ValueError.

def challenge_id(
    secret: bytes,
    realm: str,
    method: str,
    intent: str,
    request: str,
    expires: str = "",
    digest: str = "",
    opaque: str = "",
) -> str: ...
def verify_challenge_id(
    secret: bytes,
    id: str,
    realm: str,
    method: str,
    intent: str,
    request: str,
    expires: str = "",
    digest: str = "",
    opaque: str = "",
) -> bool: ...
def keccak256(data: bytes) -> bytes: ...
def checksum_address(address: str) -> str: ...
def eip3009_digest(
    *,
    name: str,
    version: str,
    chain_id: int,
    verifying_contract: str,
    from_address: str,
    to: str,
    value: str,
    valid_after: str,
    valid_before: str,
    nonce: str,
) -> bytes: ...
def voucher_digest(
    *,
    chain_id: int,
    escrow: str,
    channel_id: str,
    cumulative_amount: str,
    profile: Literal["tip20", "evm", "tempo-v1"] = "tip20",
) -> bytes: ...
def evm_channel_id(
    *,
    payer: str,
    payee: str,
    token: str,
    salt: str,
    authorized_signer: str,
    escrow: str,
    chain_id: int,
) -> str: ...
def channel_id(
    *,
    payer: str,
    payee: str,
    operator: str,
    token: str,
    salt: str,
    authorized_signer: str,
    expiring_nonce_hash: str,
    escrow: str,
    chain_id: int,
) -> str: ...
def recover_address(digest: bytes, signature: bytes) -> str: ...
def sign_digest(secret_key: bytes, digest: bytes) -> bytes: ...
def address_of(secret_key: bytes) -> str: ...
