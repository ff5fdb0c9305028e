"""Budget administration, web-free: which budgets a key names, and `show`, `grant` and
`reset` on them. The admin listener (`meterkit.proxy.admin`) and the `meterkit budget`
command both go through here, so they answer alike.

A KEY is a registered key's alias (with a `keys:` registry), or a budget key as usage
records and `show` print it: `key_alice`, `ak_<hash>` (an unregistered API key), `h_<hash>`
(a header), `ip_<address>`, `payer_<address>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meterkit.budgets.admission import limits_of
from meterkit.budgets.backends import BudgetBackend, Identity
from meterkit.budgets.policy import Limits, Standing
from meterkit.budgets.registry import KeyRegistry, with_overrides
from meterkit.config import Config

ACTIONS = ("show", "grant", "reset")
# Budget keys that are not API-key aliases: an unregistered API key's hash, a header's, an
# address, a payer.
OTHER_KEYS = ("ak_", "h_", "ip_", "payer_")


class AdminError(Exception):
    """A request the budget administration cannot carry out: `status` is its HTTP status
    (404: no such budget or key; 400: a bad request, such as a grant to a budget without a
    daily limit)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Target:
    """One budget of one key: the policy, the identity it is stored under, its limits."""

    budget: str
    who: Identity
    limits: Limits
    alias: str | None = None


async def targets(
    config: Config, registry: KeyRegistry | None, key: str, budget: str | None = None
) -> list[Target]:
    """The budgets `key` has under `budget` (every policy when None)."""
    if budget is not None and budget not in config.budgets:
        known = ", ".join(config.budgets) or "none defined"
        raise AdminError(404, "unknown-budget", f"no budget {budget!r} (known: {known})")
    if not config.budgets:
        raise AdminError(404, "unknown-budget", "the config defines no budgets")
    if not key or len(key) > 256 or any(c.isspace() for c in key):
        raise AdminError(400, "invalid-key", "a key is an alias or a budget key, without spaces")
    entry = None
    names = [budget] if budget is not None else list(config.budgets)
    if registry is not None:
        alias = key[len("key_") :] if key.startswith("key_") else key
        entry = await registry.by_alias(alias)
        keyed = any(config.budgets[n].key.kind == "api_key" for n in names)
        if entry is None and keyed and not key.startswith(OTHER_KEYS):
            # With a registry, an API-key budget belongs to a registered alias: a typo
            # must not create (or show) a budget nobody will ever use (issue 20 #3).
            raise AdminError(
                404,
                "unknown-key",
                f"no registered key {alias!r} (a budget key of another kind starts with "
                f"{', '.join(OTHER_KEYS)})",
            )
        if entry is not None and budget is None:
            # An alias names its API-key budgets, not an address's or a header's.
            names = [n for n in names if config.budgets[n].key.kind == "api_key"]
    out = []
    for name in names:
        policy = config.budgets[name]
        if entry is not None and policy.key.kind == "api_key":
            policy = with_overrides(policy, entry)
            out.append(
                Target(name, Identity(name, f"key_{entry.alias}"), limits_of(policy), entry.alias)
            )
        else:
            out.append(Target(name, Identity(name, key), limits_of(policy)))
    return out


def _view(t: Target, s: Standing) -> dict[str, Any]:
    return {"budget": t.budget, "key": t.who.key, "alias": t.alias, **s.as_dict()}


async def run(
    action: str,
    backend: BudgetBackend,
    config: Config,
    registry: KeyRegistry | None,
    key: str,
    budget: str | None = None,
    tokens: int | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Carry out `action` on every budget of `key`: `{"key": …, "budgets": [view, …]}`.
    Raises AdminError; BackendUnavailable when the store does not answer."""
    if action not in ACTIONS:
        raise AdminError(400, "invalid-action", f"expected one of {', '.join(ACTIONS)}")
    chosen = await targets(config, registry, key, budget)
    if action == "grant":
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0:
            raise AdminError(400, "invalid-grant", "tokens: a positive integer is required")
        daily = [t for t in chosen if t.limits.tokens_per_day is not None]
        if not daily:
            raise AdminError(
                400,
                "invalid-grant",
                "no budget of this key has tokens_per_day: a grant adds to today's "
                "allowance (reset refills a per-minute bucket)",
            )
        chosen = daily
    views = []
    for t in chosen:
        if action == "show":
            s = await backend.standing(t.who, t.limits, now)
        elif action == "grant":
            assert tokens is not None
            s = await backend.grant(t.who, t.limits, tokens, now)
        else:
            s = await backend.reset(t.who, t.limits, now)
        views.append(_view(t, s))
    return {"key": key, "action": action, "backend": backend.name, "budgets": views}
