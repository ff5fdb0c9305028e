"""Payment errors and their RFC 9457 problem details (`https://paymentauth.org/problems/…`).

Whether an error answers with a fresh challenge matters: a 402 invites an automatic client to
pay (again). Anything after which the money may already have moved (a replayed authorization,
an unknown settlement outcome) must not.
"""

from __future__ import annotations

from typing import Any

from meterkit.problems import Problem

PROBLEM_BASE = "https://paymentauth.org/problems/"


class PaymentProblem(Exception):
    status = 402
    code = "verification-failed"
    title = "Verification Failed"
    # Answer with a fresh challenge (402) so the client can pay again.
    fresh_challenge = True
    type_base = PROBLEM_BASE
    # Seconds for a `Retry-After` header (a transient refusal: the same credential may be
    # sent again then); None for none.
    retry_after: int | None = None

    def __init__(self, detail: str, *, reason: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        # A short machine-readable reason for metrics and logs.
        self.reason = reason or self.code
        self.extra = extra

    def problem(
        self, headers: list[tuple[str, str]], extra: dict[str, Any] | None = None
    ) -> Problem:
        """As the web-free `Problem` the renderer sends: `headers` (the fresh challenges of
        a 402, say) and then `Retry-After` when the refusal is transient; `extra` members
        (default: this error's own)."""
        if self.retry_after is not None:
            headers = [*headers, ("Retry-After", str(self.retry_after))]
        return Problem(
            self.status,
            self.code,
            self.title,
            self.detail,
            type_base=self.type_base,
            extra=dict(self.extra) if extra is None else extra,
            headers=tuple(headers),
            reason=self.reason,
        )

    def body(
        self, request_id: str | None = None, challenge_id: str | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": PROBLEM_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }
        if challenge_id:
            out["challengeId"] = challenge_id
        if request_id:
            out["request_id"] = request_id
        return out


class PaymentRequired(PaymentProblem):
    code, title = "payment-required", "Payment Required"


class MalformedCredential(PaymentProblem):
    code, title = "malformed-credential", "Malformed Credential"


class MalformedPayment(MalformedCredential):
    """A malformed x402 payment header (`PAYMENT-SIGNATURE` / `X-PAYMENT`). The x402 HTTP
    transport answers "Invalid Payment: malformed payment payload or requirements" with 400,
    not 402: resending the same bytes cannot succeed, so no fresh offer is attached. A
    subclass of `MalformedCredential`, so code catching that keeps catching this."""

    status, fresh_challenge = 400, False


class InvalidChallenge(PaymentProblem):
    code, title = "invalid-challenge", "Invalid Challenge"


class VerificationFailed(PaymentProblem):
    code, title = "verification-failed", "Verification Failed"


class PaymentExpired(PaymentProblem):
    code, title = "payment-expired", "Payment Expired"


class PaymentInsufficient(PaymentProblem):
    code, title = "payment-insufficient", "Payment Insufficient"


class MethodUnsupported(PaymentProblem):
    status, code, title, fresh_challenge = 400, "method-unsupported", "Method Unsupported", False


class Replayed(PaymentProblem):
    """The authorization already paid (or is paying) for another request."""

    status, code, title, fresh_challenge = 403, "verification-failed", "Verification Failed", False


class SettlementFailed(VerificationFailed):
    """Nothing was settled (e.g. the facilitator said `success: false`, the transfer's
    simulation reverted). `error_reason` is the facilitator's `errorReason` when it gave one
    (for an x402 `PAYMENT-RESPONSE` with `success: false`)."""

    error_reason: str | None = None


class SettlementUnavailable(SettlementFailed):
    """Whoever settles (a facilitator, the chain's RPC node) could not be reached before
    anything was sent, so nothing was settled. Not a 402: paying again cannot help while it
    is down. The claim is released (a `SettlementFailed`) and the same credential can be
    sent again after `Retry-After`."""

    status, code, title, fresh_challenge = (
        503,
        "settlement-unavailable",
        "Settlement Unavailable",
        False,
    )
    retry_after = 5


class ChainUnavailable(SettlementUnavailable):
    """On-chain settlement: the RPC node is unreachable, too slow, on another chain, or gas
    costs more than `max_fee_per_gas`, and no transaction was broadcast."""

    code, title = "chain-unavailable", "Settlement Chain Unavailable"


class SettlementUnknown(PaymentProblem):
    """Settlement may have happened: never invite the client to pay again."""

    status, code, title, fresh_challenge = (
        500,
        "internal-payment-error",
        "Internal Payment Error",
        False,
    )


class PaidButForbidden(PaymentProblem):
    status, code, title, fresh_challenge = 403, "forbidden", "Forbidden", False


class LedgerUnavailable(PaymentProblem):
    """The ledger did not answer in time (or is down): nothing was charged that the ledger
    does not know of; the same credential can be retried."""

    status, code, title, fresh_challenge, retry_after = (
        503,
        "ledger-unavailable",
        "Payment Ledger Unavailable",
        False,
        2,
    )
