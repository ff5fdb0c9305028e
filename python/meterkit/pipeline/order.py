"""The order of the stages, in one place, with the reason for each position.

Before any stage: the gateway's own refusals (404/405 route, 413/408/400 body, 503 usage
backlog). Then, in `on_request` (admission: nothing is taken, nothing moves money) and again
in `before_upstream` (commit), the stages in this order:

| stage   | on_request                                  | before_upstream                     |
|---------|---------------------------------------------|-------------------------------------|
| keys    | 401 missing / unknown key; the key's alias  | —                                   |
| hooks   | the operator's `onRequest` (may answer)     | —                                   |
| budget  | its cap declared (priced by the payment)    | reservation: 429 / 503, or a lease gate |
| session | voucher checked (durable), payer; a bodiless voucher / close answered 204 | prompt charged, credit gate |
| payment | access token 401; quote at the smallest cap; credential verified (402), payer | claim, then settle (or at the response) |

Why this order:
- **keys first**: a 401 costs nothing and no operator code or store sees an unknown caller.
  Channel management (a voucher POST) passes: a voucher is authenticated by its signature
  and channel (see `stages/keys.py`).
- **hooks next**: `onRequest` sees every request that has an identity, before any money or
  budget state is touched.
- **budget before session and payment in `on_request`**: it declares its per-request cap, so
  a token-based quote never prices completion the budget would cut (`caps`).
- **budget before session and payment in `before_upstream`**: its reservation may still
  refuse (429); the session's prompt charge and the payment's claim come after every
  refusal that could still happen, so nobody is charged for a request another feature
  refused. It reserves there, not in `on_request`, because a payer-keyed budget needs the
  payer that the session and payment stages verify in `on_request`.
- So the refusals a client meets, in order: 400 (body) → 401 (key) → the operator's answer
  → 401 (access token) / 402 (payment) → 401 (budget identity) / 429 (budget) → 402 (the
  session's prompt not covered) → 402/409 (settlement). A 402 comes before a 429: paying is
  free until the claim, and the claim follows the budget's answer.
- Stages a library user adds (`build_app(stages=…)`) come after these, in the order given:
  they see identity, caps and the quote; their `before_upstream` runs after the payment
  settled (a refusal there marks a paid request undelivered, to be served again).

Which checks move money: only the session's `before_upstream` (the prompt charge from a
channel, given back in `on_abort`) and the payment's (the claim and settlement). Every
stage that entered hears `on_abort` or `on_complete`, in reverse order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meterkit.pipeline.stage import Stage

ORDER: tuple[str, ...] = ("keys", "hooks", "budget", "session", "payment")


def ordered(configured: Sequence[Stage], added: Sequence[Stage] = ()) -> tuple[Stage, ...]:
    """The configured stages in `ORDER` (by name), then the `added` ones as given. A
    configured stage whose name is not in `ORDER` is a bug: it has no declared place."""
    rank = {name: i for i, name in enumerate(ORDER)}
    unknown = [s.name for s in configured if s.name not in rank]
    if unknown:
        raise ValueError(f"stages with no place in pipeline.order.ORDER: {unknown}")
    names = [s.name for s in configured]
    if len(set(names)) != len(names):
        raise ValueError(f"a stage appears twice: {names}")
    return (*sorted(configured, key=lambda s: rank[s.name]), *added)
