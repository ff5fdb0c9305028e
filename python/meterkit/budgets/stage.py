"""The budget stage of the request pipeline: admission (429 before any upstream call), the
meter settings that enforce the budget inside the stream, leases as the stream goes, and
reconciliation at the end."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from meterkit import count_request_prompt, resolve_model
from meterkit.budgets.backends import BackendUnavailable, BudgetBackend, Identity
from meterkit.budgets.identity import identity_of, networks, requested_max
from meterkit.budgets.policy import Limits
from meterkit.config import Config
from meterkit.config.budgets import BudgetPolicy
from meterkit.observability.metrics import ProxyMetrics
from meterkit.proxy.context import RequestContext
from meterkit.proxy.problems import ProxyError, problem_response
from meterkit.usage import UsageRecord

log = logging.getLogger("meterkit.budgets")

_THREAD_PROMPT_BYTES = 32 * 1024


@dataclass
class BudgetState:
    """What one request holds against its budget."""

    who: Identity
    policy: BudgetPolicy
    limits: Limits
    cap: int
    prompt: int
    taken: int
    leased_completion: int
    # False when nothing was reserved (shadow rejection, backend down with fail-open).
    reserved: bool = True


def limits_of(policy: BudgetPolicy) -> Limits:
    return Limits(policy.tokens_per_minute, policy.tokens_per_day, policy.burst_tokens)


class BudgetStage:
    name = "budget"

    def __init__(self, config: Config, backend: BudgetBackend, metrics: ProxyMetrics) -> None:
        self.config = config
        self.backend = backend
        self.metrics = metrics
        self.trusted = networks(config.gateway.trusted_proxies)
        self.lease_ttl = config.budget_store.lease_ttl

    async def on_request(self, ctx: RequestContext) -> web.StreamResponse | None:
        if ctx.route.budget is None or ctx.json is None:
            return None
        policy = self.config.budgets[ctx.route.budget]
        payer = ctx.state.get("payer")
        key = identity_of(policy.key, ctx.request.headers, ctx.request.remote, self.trusted, payer)
        if key is None:
            what = {
                "api_key": "an API key (Authorization: Bearer or x-api-key)",
                "ip": "a client address",
                "payer": "a verified payment",
                "header": f"the {policy.key.header} header",
            }[policy.key.kind]
            raise ProxyError(
                401,
                "budget-key-missing",
                "Budget identity missing",
                f"budget {policy.name!r} is keyed by {what}, which this request does not carry",
                budget=policy.name,
            )
        who = Identity(policy.name, key)
        prompt = await self._prompt(ctx)
        requested, field = requested_max(ctx.json, ctx.format)
        cap = (
            policy.max_completion_tokens
            if requested is None
            else min(requested, policy.max_completion_tokens)
        )
        if requested is None or requested > cap:
            # The upstream must not be able to outrun what was reserved.
            ctx.json[field] = cap
            ctx.body_changed = True
        self._ask_for_usage(ctx)
        mid_stream = ctx.stream and policy.streaming.enforce_mid_stream
        first = min(cap, policy.streaming.buffer_tokens) if mid_stream else cap
        need, take = prompt + cap, prompt + first
        limits = limits_of(policy)
        shadow = policy.mode == "shadow"
        state = BudgetState(who, policy, limits, cap, prompt, take, first)
        t0 = time.perf_counter()
        try:
            decision = await self.backend.admit(
                who, limits, need, take, ctx.request_id, self.lease_ttl
            )
        except BackendUnavailable as e:
            return self._backend_down(ctx, state, e)
        finally:
            self.metrics.budget_admission.labels(self.backend.name).observe(
                time.perf_counter() - t0
            )
        ctx.meter.limit = cap
        ctx.meter.shadow = shadow
        ctx.meter.ending = policy.streaming.on_limit_exceeded
        ctx.meter.partial_usage = policy.streaming.include_partial_usage
        if not decision.allowed:
            self.metrics.budget_decisions.labels(
                policy.name, "would_reject" if shadow else "rejected"
            ).inc()
            if not shadow:
                return self._rejection(
                    ctx,
                    policy,
                    decision.reason or "tpm_exceeded",
                    need,
                    decision.retry_after,
                    decision.tpm_remaining
                    if decision.reason == "tpm_exceeded"
                    else decision.tpd_remaining,
                )
            log.info(
                "budget would reject",
                extra={"budget": policy.name, "reason": decision.reason, "need": need},
            )
            state.reserved = False
        else:
            self.metrics.budget_decisions.labels(policy.name, "allowed").inc()
        ctx.state["budget"] = state
        if mid_stream and state.reserved and not shadow:
            ctx.meter.credit = first
            ctx.credit_source = lambda: self._lease(ctx, state)
        return None

    async def _prompt(self, ctx: RequestContext) -> int:
        assert ctx.json is not None and ctx.format is not None
        if ctx.body is not None and len(ctx.body) > _THREAD_PROMPT_BYTES:
            n = await asyncio.to_thread(count_request_prompt, ctx.json, ctx.format)
        else:
            n = count_request_prompt(ctx.json, ctx.format)
        exact = (
            ctx.format in ("openai-chat", "openai-completions")
            and resolve_model(ctx.model or "").provenance == "counted"
        )
        ctx.prompt_tokens, ctx.prompt_provenance = n, "counted" if exact else "estimated"
        return n

    @staticmethod
    def _ask_for_usage(ctx: RequestContext) -> None:
        """OpenAI streams report usage only when asked: ask, and hide it from a client that
        did not ask (the meter strips it), so reconciliation has the provider's figures."""
        if (
            not ctx.stream
            or ctx.format not in ("openai-chat", "openai-completions")
            or ctx.json is None
        ):
            return
        opts = ctx.json.get("stream_options")
        if isinstance(opts, dict) and opts.get("include_usage") is True:
            return
        ctx.json["stream_options"] = {
            **(opts if isinstance(opts, dict) else {}),
            "include_usage": True,
        }
        ctx.body_changed = True
        ctx.meter.strip_usage = True

    def _rejection(
        self,
        ctx: RequestContext,
        policy: BudgetPolicy,
        reason: str,
        need: int,
        retry_after: float | None,
        remaining: float | None,
    ) -> web.Response:
        window = "minute" if reason == "tpm_exceeded" else "day"
        if retry_after is None:
            detail = (
                f"the request needs {need} tokens (prompt + completion limit), more than budget "
                f"{policy.name!r} allows per {window} at all"
            )
        else:
            detail = (
                f"the request needs {need} tokens (prompt + completion limit) and budget {policy.name!r} "
                f"has {max(0, math.floor(remaining or 0))} left this {window}; retry in {math.ceil(retry_after)} s"
            )
        err = ProxyError(
            429,
            reason,
            "Token budget exceeded",
            detail,
            budget=policy.name,
            limit=reason,
            need=need,
            **({"retry_after": math.ceil(retry_after)} if retry_after is not None else {}),
        )
        headers = {"Retry-After": str(math.ceil(retry_after))} if retry_after is not None else {}
        return problem_response(err, ctx.request_id, headers)

    def _backend_down(
        self, ctx: RequestContext, state: BudgetState, e: Exception
    ) -> web.Response | None:
        policy = state.policy
        decision = policy.on_backend_failure
        self.metrics.budget_backend_failures.labels(policy.name, decision).inc()
        log.warning(
            "budget backend unavailable: failing %s",
            decision,
            extra={"budget": policy.name, "backend": self.backend.name, "error": str(e)},
        )
        if decision == "open":
            ctx.meter.limit = state.cap
            state.reserved = False
            ctx.state["budget"] = state
            return None
        err = ProxyError(
            503,
            "budget-backend-unavailable",
            "Budget store unavailable",
            f"budget {policy.name!r} cannot be checked right now and fails closed",
            budget=policy.name,
        )
        return problem_response(err, ctx.request_id, {"Retry-After": "1"})

    async def _lease(self, ctx: RequestContext, state: BudgetState) -> int | None:
        """More completion tokens for a paused stream: the grant (0 = budget exhausted), or
        None to stop gating (backend down, failing open)."""
        want = min(state.policy.streaming.buffer_tokens, state.cap - state.leased_completion)
        if want <= 0:
            return 0
        try:
            granted = await self.backend.lease(
                state.who, state.limits, want, ctx.request_id, self.lease_ttl
            )
        except BackendUnavailable as e:
            decision = state.policy.on_backend_failure
            self.metrics.budget_backend_failures.labels(state.policy.name, decision).inc()
            log.warning(
                "budget backend unavailable mid-stream: failing %s",
                decision,
                extra={"budget": state.policy.name, "error": str(e)},
            )
            return None if decision == "open" else 0
        state.leased_completion += granted
        state.taken += granted
        if granted < want:
            self.metrics.budget_truncations.labels(state.policy.name, "budget").inc()
        return granted

    async def on_abort(self, ctx: RequestContext) -> None:
        """A later stage answered instead of the upstream: give back everything taken."""
        state: BudgetState | None = ctx.state.pop("budget", None)
        if state is not None and state.reserved:
            try:
                await self.backend.reconcile(state.who, state.limits, ctx.request_id, 0)
            except BackendUnavailable as e:
                log.warning(
                    "budget refund on abort failed",
                    extra={"budget": state.policy.name, "error": str(e)},
                )

    async def on_complete(self, ctx: RequestContext, record: UsageRecord) -> None:
        state: BudgetState | None = ctx.state.get("budget")
        if state is None:
            return
        actual = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
        info: dict[str, Any] = {
            "budget": state.policy.name,
            "key": state.who.key,
            "reserved": state.reserved,
            "taken": state.taken,
            "actual": actual,
            "limit": state.cap,
        }
        if state.reserved:
            try:
                refund = await self.backend.reconcile(
                    state.who, state.limits, ctx.request_id, actual
                )
            except BackendUnavailable as e:
                # The reservation is a lease: it expires; the tokens it took stay taken.
                log.warning(
                    "budget reconciliation failed",
                    extra={"budget": state.policy.name, "error": str(e)},
                )
                refund = None
                info["reconcile_error"] = str(e)
            info["refund"] = refund
        if record.would_truncate_at is not None:
            self.metrics.budget_would_truncate.labels(state.policy.name).inc()
            log.info(
                "budget would truncate",
                extra={"budget": state.policy.name, "tokens": record.would_truncate_at},
            )
        if record.outcome == "truncated":
            self.metrics.budget_truncations.labels(state.policy.name, "limit").inc()
        record.budget = info
