"""The limits on one stream, as the stages that own them declared them: caps that cut and
gates that pause. No stage replaces another's: each adds its own, and the meter stops at
the smallest.

- A **cap** is a most-completion-tokens figure: the budget's per-request cap, the completion
  a token-based payment paid for. Enforced caps are written into the upstream request (the
  smallest, when it is below what the client asked) and cut the stream at the smallest; a
  shadow cap is only observed (`would_truncate_at`) and changes nothing on the wire.
- A **gate** is credit granted as the stream goes: the budget's mid-stream lease, the
  session's vouchers. The meter's credit is the smallest gate's allowance; when the meter
  pauses, the gates at that minimum are asked for more, and the first that has none ends
  the stream — and names the cause (`budget`, `payment`) in the record.

Pure bookkeeping, no I/O of its own: what a gate does to get more is its `more` callable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

# What cut a stream short: a cap (the request's, the budget's, what was paid for), the shared
# budget's lease, or the payer's credit.
TruncationCause = Literal["limit", "budget", "payment"]
Emit = Callable[[bytes], Awaitable[None]]
# Asked for more credit with the completion tokens delivered so far and a way to write bytes
# between two events (a `payment-need-voucher`): the tokens added (0: none, end the stream),
# or None to stop gating (a budget store down that fails open).
More = Callable[[int, Emit], Awaitable[int | None]]


@dataclass
class Caps:
    """Completion caps by owner (`budget`, `payment`, …): enforced ones cut, shadow ones are
    observed. One entry per owner: an owner that declares again replaces only its own."""

    enforced: dict[str, int] = field(default_factory=dict)
    observed: dict[str, int] = field(default_factory=dict)

    def add(self, owner: str, cap: int, *, shadow: bool = False) -> None:
        (self.observed if shadow else self.enforced)[owner] = max(0, cap)

    @property
    def limit(self) -> int | None:
        """The smallest enforced cap: the stream is cut there."""
        return min(self.enforced.values()) if self.enforced else None

    @property
    def shadow_limit(self) -> int | None:
        """The smallest observed cap: where a shadow policy would have cut."""
        return min(self.observed.values()) if self.observed else None

    def effective(self, requested: int | None) -> int | None:
        """The most completion tokens this request can get: the smallest of the client's own
        request (`requested`) and the enforced caps (what a quote must price)."""
        caps = [c for c in (requested, self.limit) if c is not None]
        return min(caps) if caps else None


@dataclass
class Gate:
    cause: TruncationCause
    # Completion tokens this gate lets the stream reach so far (cumulative).
    allowed: int
    more: More


class Gates:
    """The credit gates of one stream."""

    def __init__(self) -> None:
        self._gates: list[Gate] = []
        # A gate's owner ended the stream outright (a session's channel is closing): the
        # relay ends it with the format's ending at its next read, naming this cause.
        self.stopped: TruncationCause | None = None

    def stop(self, cause: TruncationCause) -> None:
        self.stopped = cause

    def __bool__(self) -> bool:
        return bool(self._gates)

    def add(self, cause: TruncationCause, first: int, more: More) -> None:
        """A gate that allows `first` completion tokens now and `more` later."""
        self._gates.append(Gate(cause, max(0, first), more))

    @property
    def credit(self) -> int | None:
        """The meter's credit: the smallest allowance (None: no gate)."""
        return min(g.allowed for g in self._gates) if self._gates else None

    async def refill(self, delivered: int, emit: Emit) -> TruncationCause | None:
        """The meter paused at `delivered` tokens: ask the gates at the smallest allowance
        (in the order they were added) for more, until the smallest allowance has risen or
        no gate is left. The cause of the first gate with nothing more to give (the stream
        ends), else None (`credit` says what the meter may now reach)."""
        floor = self.credit
        if floor is None:
            return None
        for gate in [g for g in self._gates if g.allowed == floor]:
            granted = await gate.more(delivered, emit)
            if granted is None:
                self._gates.remove(gate)
            elif granted <= 0:
                return gate.cause
            else:
                gate.allowed += granted
        return None
