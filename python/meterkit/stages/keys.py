"""The key stage: with a key registry (`keys:`), a request to a route that requires a key
must carry a registered one, or it gets a 401 problem before anything else runs. The budget
stage then keys the budget by the key's alias and applies its overrides.

Which routes require a key: a route's `keys: required` or `keys: optional` says it; without
either, a route requires one exactly when its budget is keyed by `api_key` (a budget keyed by
a token nobody verified is one a client resets by changing its token). An optional route
still recognises a registered key, so its alias and limits apply there too; any other key
is budgeted as without a registry.

A voucher is not a request for the model: on a route paid per token, a request that only
manages its channel (a session credential and no body: a new voucher, a top-up, a close) is
authenticated by its signature and channel, not by an API key, and passes this stage (the
session stage checks it next). The key belongs to the stream request, which still needs
it; a client that keeps `Authorization: Bearer KEY` there sends its voucher in the header
the route's `credential_header: Payment-Authorization` names, or its key as `x-api-key`."""

from __future__ import annotations

from meterkit.budgets.identity import api_key, unregistered_key
from meterkit.budgets.registry import KeyRegistry, key_sha256
from meterkit.config import Config, Route
from meterkit.payments import mpp
from meterkit.payments.problems import PaymentProblem
from meterkit.pipeline import Answer, RequestContext, Stage
from meterkit.problems import Problem

_CHALLENGE = (("WWW-Authenticate", 'Bearer realm="meterkit"'),)


def _unauthorized(code: str, title: str, detail: str) -> Problem:
    return Problem(401, code, title, detail, headers=_CHALLENGE)


class KeyStage(Stage):
    name = "keys"

    def __init__(self, config: Config, registry: KeyRegistry) -> None:
        self.registry = registry

        def keyed_budget(r: Route) -> bool:
            return r.budget is not None and config.budgets[r.budget].key.kind == "api_key"

        self.required = frozenset(
            r.key
            for r in config.routes
            if r.keys == "required" or (r.keys is None and keyed_budget(r))
        )
        # Optional routes whose budget uses a registered key's alias and limits: the only
        # place an entry matters, so other open routes cost no registry lookup.
        self.recognised = frozenset(
            r.key for r in config.routes if r.keys == "optional" and keyed_budget(r)
        )

    def applies_to(self, route: Route) -> bool:
        # Any other route: on_request returns at once and there is no other hook.
        return route.key in self.required or route.key in self.recognised

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        route = ctx.route.key
        if route in self.recognised:
            raw = api_key(ctx.request.headers)
            entry = await self.registry.lookup(key_sha256(raw)) if raw is not None else None
            if entry is not None:
                ctx.identity.key = entry
            return None
        if route not in self.required or _channel_management(ctx):
            return None
        raw = api_key(ctx.request.headers)
        if raw is None:
            return _unauthorized(
                "api-key-missing",
                "API key missing",
                "send a registered API key (Authorization: Bearer KEY or x-api-key)",
            )
        entry = await self.registry.lookup(key_sha256(raw))
        if entry is None:
            ctx.identity.refused_key = unregistered_key(raw)
            return _unauthorized(
                "api-key-unknown", "Unknown API key", "the API key is not registered"
            )
        ctx.identity.key = entry
        return None


def _channel_management(ctx: RequestContext) -> bool:
    """A bodiless request on a route paid per token that carries a session credential: a
    voucher, a top-up or a close, which the session stage authenticates by its signature."""
    if ctx.route.payment.session is None or ctx.body:
        return False
    try:
        found = mpp.request_credential(ctx.request.headers)
        return found is not None and mpp.decode_credential(found[1]).challenge.intent == "session"
    except PaymentProblem:
        return False
