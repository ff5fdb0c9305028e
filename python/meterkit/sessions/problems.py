"""Session problems (`https://paymentauth.org/problems/session/…`): what a voucher or a
session request can be refused for, with the statuses the session specs give them."""

from __future__ import annotations

from meterkit.payments.problems import PaymentProblem

SESSION_BASE = "https://paymentauth.org/problems/session/"


class SessionProblem(PaymentProblem):
    type_base = SESSION_BASE
    # A session client answers these with a new voucher or a new channel, not a new payment.
    fresh_challenge = False


class InvalidSignature(SessionProblem):
    status, code, title = 402, "invalid-signature", "Invalid Voucher Signature"


class SignerMismatch(SessionProblem):
    status, code, title = 402, "signer-mismatch", "Voucher Signer Mismatch"


class AmountExceedsDeposit(SessionProblem):
    status, code, title = 402, "amount-exceeds-deposit", "Amount Exceeds Deposit"


class DeltaTooSmall(SessionProblem):
    status, code, title = 402, "delta-too-small", "Voucher Delta Too Small"


class InsufficientBalance(SessionProblem):
    status, code, title = 402, "insufficient-balance", "Insufficient Balance"
    fresh_challenge = True


class ChannelNotFound(SessionProblem):
    status, code, title = 410, "channel-not-found", "Channel Not Found"


class ChannelFinalized(SessionProblem):
    status, code, title = 410, "channel-finalized", "Channel Finalized"


class ChannelClosing(SessionProblem):
    status, code, title = 410, "channel-finalized", "Channel Closing"


class TooManyVouchers(SessionProblem):
    status, code, title, retry_after = 429, "rate-limited", "Too Many Vouchers", 1


class TransactionReverted(SessionProblem):
    status, code, title = 409, "transaction-reverted", "Transaction Reverted"
