"""The key stage: with a key registry (`keys:`), a request to a route whose budget is keyed
by `api_key` must carry a registered key, or it gets a 401 problem before anything else
runs. The budget stage then keys the budget by the key's alias and applies its overrides."""

from __future__ import annotations

from meterkit.budgets.identity import api_key
from meterkit.budgets.keys import KeyRegistry, key_sha256
from meterkit.config import Config
from meterkit.pipeline import Answer, RequestContext, Stage
from meterkit.problems import Problem

STATE = "api_key"
_CHALLENGE = (("WWW-Authenticate", 'Bearer realm="meterkit"'),)


def _unauthorized(code: str, title: str, detail: str) -> Problem:
    return Problem(401, code, title, detail, headers=_CHALLENGE)


class KeyStage(Stage):
    name = "keys"

    def __init__(self, config: Config, registry: KeyRegistry) -> None:
        self.registry = registry
        self.guarded = frozenset(
            r.key
            for r in config.routes
            if r.budget is not None and config.budgets[r.budget].key.kind == "api_key"
        )

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        if ctx.route.key not in self.guarded:
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
            return _unauthorized(
                "api-key-unknown", "Unknown API key", "the API key is not registered"
            )
        ctx.state[STATE] = entry
        return None
