"""The budget stage: admission (429 before any upstream call), the meter settings that enforce
the budget inside the stream, leases as the stream goes, and reconciliation at the end —
or the whole reservation given back when the request ends without a response."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from meterkit import formats
from meterkit.budgets import admission
from meterkit.budgets.backends import BackendUnavailable, BudgetBackend, Identity
from meterkit.budgets.identity import identity_of, networks
from meterkit.budgets.policy import Limits
from meterkit.budgets.registry import with_overrides
from meterkit.config import Config, Route
from meterkit.config.budgets import BudgetPolicy
from meterkit.observability.metrics import ProxyMetrics
from meterkit.pipeline import Answer, RequestContext, Stage
from meterkit.usage import UsageRecord

log = logging.getLogger("meterkit.budgets")


@dataclass(frozen=True)
class _Planned:
    """A request admitted by nothing yet: the policy that applies and its plan."""

    policy: BudgetPolicy
    plan: admission.Plan


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


class BudgetStage(Stage):
    name = "budget"

    def __init__(self, config: Config, backend: BudgetBackend, metrics: ProxyMetrics) -> None:
        self.config = config
        self.backend = backend
        self.metrics = metrics
        self.trusted = networks(config.gateway.trusted_proxies)
        self.lease_ttl = config.budget_store.lease_ttl

    def applies_to(self, route: Route) -> bool:
        # A route without a budget: on_request returns at once, nothing else acts.
        return route.budget is not None

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        """Declare the budget's cap (nothing taken yet): the payment stage after this one
        prices no completion the budget would not allow."""
        if ctx.route.budget is None or ctx.json is None or ctx.format is None:
            return None
        policy = self.config.budgets[ctx.route.budget]
        entry = ctx.identity.key
        if entry is not None and policy.key.kind == "api_key":
            # A registered key (the key stage verified it): its own limits apply.
            policy = with_overrides(policy, entry)
        prompt = await self._prompt(ctx)
        requested, _ = formats.requested_max(ctx.json, ctx.format)
        p = admission.plan(policy, requested, prompt, ctx.stream)
        # Shadow observes: its cap is watched, and nothing of the request changes.
        ctx.caps.add("budget", p.cap, shadow=p.shadow)
        if not p.shadow and formats.ask_for_usage(ctx.json, ctx.format, ctx.stream):
            # Reconciliation needs the provider's figures; the client did not ask for them.
            ctx.body_changed = True
            ctx.meter.strip_usage = True
        ctx.meter.ending = policy.streaming.on_limit_exceeded
        ctx.meter.partial_usage = policy.streaming.include_partial_usage
        ctx.state["budget"] = _Planned(policy, p)
        return None

    async def before_upstream(self, ctx: RequestContext) -> Answer | None:
        """Take the reservation, once every stage admitted the request and before anything
        moves money (the budget stage comes before the session and payment stages): a 429
        here costs the client nothing. Keyed by the verified payer when the budget says so
        (known only now: the payment and session stages verify it in `on_request`)."""
        planned = ctx.state.get("budget")
        if not isinstance(planned, _Planned):
            return None
        policy, p = planned.policy, planned.plan
        entry = ctx.identity.key
        if entry is not None and policy.key.kind == "api_key":
            # Its alias keys the budget, so a rotated key keeps it.
            key: str | None = f"key_{entry.alias}"
        else:
            key = identity_of(
                policy.key,
                ctx.request.headers,
                ctx.request.remote,
                self.trusted,
                ctx.identity.payer,
            )
        if key is None:
            del ctx.state["budget"]
            return admission.key_missing(policy)
        prepaid = ctx.payment.prepaid_completion
        if prepaid is not None:
            # Completion paid up front is granted up front: all of it reserved now, or a 429
            # before the payment is claimed; never a paid stream cut by the budget.
            p = admission.prepaid(p, prepaid)
        who = Identity(policy.name, key)
        limits = admission.limits_of(policy)
        state = BudgetState(who, policy, limits, p.cap, p.prompt, p.take, p.first)
        ctx.state["budget"] = state
        t0 = time.perf_counter()
        try:
            decision = await self.backend.admit(
                who, limits, p.need, p.take, ctx.request_id, self.lease_ttl
            )
        except BackendUnavailable as e:
            return self._backend_down(state, e)
        finally:
            self.metrics.budget_admission.labels(self.backend.name).observe(
                time.perf_counter() - t0
            )
        if not decision.allowed:
            self.metrics.budget_decisions.labels(
                policy.name, "would_reject" if p.shadow else "rejected"
            ).inc()
            if not p.shadow:
                # Nothing was taken: there is nothing for on_abort to give back.
                state.reserved = False
                reason = decision.reason or "tpm_exceeded"
                remaining = (
                    decision.tpm_remaining if reason == "tpm_exceeded" else decision.tpd_remaining
                )
                # A 429 says what is left too, in the same headers.
                now_left = admission.ratelimit_headers(
                    decision.tpm_remaining, decision.tpd_remaining, limits, time.time()
                )
                return admission.rejection(
                    policy, reason, p.need, decision.retry_after, remaining, now_left
                )
            log.info(
                "budget would reject",
                extra={"budget": policy.name, "reason": decision.reason, "need": p.need},
            )
            state.reserved = False
        else:
            self.metrics.budget_decisions.labels(policy.name, "allowed").inc()
            # What is left after this request's reservation, in the headers clients read.
            ctx.response_headers.update(
                admission.ratelimit_headers(
                    decision.tpm_remaining,
                    decision.tpd_remaining,
                    limits,
                    time.time(),
                    pending=p.need - p.take,
                )
            )
        if p.mid_stream and state.reserved and not p.shadow:
            # The budget's own gate, beside any other (a session's credit): the stream
            # pauses at the smaller and leases more from the budget only when it is the
            # budget that holds it back.
            ctx.gates.add("budget", p.first, lambda _delivered, _emit: self._lease(ctx, state))
        return None

    async def _prompt(self, ctx: RequestContext) -> int:
        assert ctx.json is not None and ctx.format is not None
        n, prov = await formats.prompt_count(ctx.json, ctx.format, ctx.model, len(ctx.body or b""))
        ctx.prompt_tokens, ctx.prompt_provenance = n, prov
        return n

    def _backend_down(self, state: BudgetState, e: Exception) -> Answer | None:
        policy = state.policy
        decision = policy.on_backend_failure
        self.metrics.budget_backend_failures.labels(policy.name, decision).inc()
        log.warning(
            "budget backend unavailable: failing %s",
            decision,
            extra={"budget": policy.name, "backend": self.backend.name, "error": str(e)},
        )
        # Nothing reserved either way; failing open keeps the budget's cap on the stream.
        state.reserved = False
        if decision == "open":
            return None
        return admission.backend_down(policy)

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
        return granted

    async def on_abort(self, ctx: RequestContext, record: UsageRecord) -> None:
        """Nothing reached the client: give back everything taken."""
        state = ctx.state.pop("budget", None)
        if not isinstance(state, BudgetState):
            return
        info = self._info(state, actual=0)
        if state.reserved:
            try:
                info["refund"] = await self.backend.reconcile(
                    state.who, state.limits, ctx.request_id, 0
                )
            except BackendUnavailable as e:
                # The reservation is a lease: it expires after lease_ttl.
                log.warning(
                    "budget release failed", extra={"budget": state.policy.name, "error": str(e)}
                )
                info["reconcile_error"] = str(e)
        record.budget = info

    async def on_complete(self, ctx: RequestContext, record: UsageRecord) -> None:
        state = ctx.state.get("budget")
        if not isinstance(state, BudgetState):
            return
        actual = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
        info = self._info(state, actual)
        if state.reserved:
            try:
                info["refund"] = await self.backend.reconcile(
                    state.who, state.limits, ctx.request_id, actual
                )
            except BackendUnavailable as e:
                # The reservation is a lease: it expires; the tokens it took stay taken.
                log.warning(
                    "budget reconciliation failed",
                    extra={"budget": state.policy.name, "error": str(e)},
                )
                info["refund"] = None
                info["reconcile_error"] = str(e)
        if record.would_truncate_at is not None:
            self.metrics.budget_would_truncate.labels(state.policy.name).inc()
            log.info(
                "budget would truncate",
                extra={"budget": state.policy.name, "tokens": record.would_truncate_at},
            )
        if record.outcome == "truncated":
            # Once per stream, by cause: the per-request limit or the shared budget.
            cause = ctx.result.truncation or "limit"
            self.metrics.budget_truncations.labels(state.policy.name, cause).inc()
        record.budget = info

    @staticmethod
    def _info(state: BudgetState, actual: int) -> dict[str, Any]:
        return {
            "budget": state.policy.name,
            "key": state.who.key,
            "reserved": state.reserved,
            "taken": state.taken,
            "actual": actual,
            "limit": state.cap,
        }
