"""The session wire: MPP `intent="session"` challenges for the `evm` method and the Tempo v1
profile (`method="tempo"`), and the payloads a session credential carries. Pure functions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from meterkit import _core
from meterkit.payments.problems import MalformedCredential, MethodUnsupported
from meterkit.sessions.channels import UINT128_MAX

# MPP method name → the voucher dialect its signatures use (`_core.voucher_digest` profile).
PROFILES: dict[str, Literal["evm", "tempo-v1"]] = {"evm": "evm", "tempo": "tempo-v1"}
ACTIONS = ("open", "topUp", "voucher", "close")

# Matched whole (`fullmatch`): `$` would let a trailing newline through to the Rust core.
_HEX32 = re.compile(r"0x[0-9a-fA-F]{64}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_SIG = re.compile(r"0x(?:[0-9a-fA-F]{128}|[0-9a-fA-F]{130})")
_UINT = re.compile(r"[0-9]{1,39}")


@dataclass(frozen=True)
class SessionPayload:
    """One session credential's payload: what the client asks for, with a voucher."""

    action: str
    channel_id: str
    # The voucher: the payer owes this much on the channel in total (None for `topUp`).
    cumulative_amount: int | None
    signature: str | None
    # `open`: how the channel was funded ("hash", "authorization", "permit2", "prepaid").
    open_type: str | None = None
    salt: str | None = None
    authorized_signer: str | None = None
    additional_deposit: int | None = None
    # `open` / `topUp` of `type: "hash"`: the transaction the payer broadcast itself.
    tx_hash: str | None = None


def _uint(p: dict[str, Any], key: str) -> int:
    v = p.get(key)
    if not isinstance(v, str) or not _UINT.fullmatch(v) or int(v) > UINT128_MAX:
        raise MalformedCredential(f"payload.{key} must be a decimal uint128 string", reason=key)
    return int(v)


def _match(p: dict[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str:
    v = p.get(key)
    if not isinstance(v, str) or not pattern.fullmatch(v):
        raise MalformedCredential(f"payload.{key} must be {what}", reason=key)
    return v


def parse_payload(p: dict[str, Any]) -> SessionPayload:
    """Check a session payload's shape (any JSON object in; a `MalformedCredential` out)."""
    action = p.get("action")
    if action not in ACTIONS:
        raise MalformedCredential(
            f"payload.action must be one of {', '.join(ACTIONS)}", reason="action"
        )
    channel = _match(p, "channelId", _HEX32, "a 0x-prefixed 32-byte hex string").lower()
    if action == "topUp":
        kind = p.get("type", "hash")
        if not isinstance(kind, str):
            raise MalformedCredential("payload.type must be a string", reason="type")
        return SessionPayload(
            action,
            channel,
            None,
            None,
            open_type=kind,
            additional_deposit=_uint(p, "additionalDeposit"),
            tx_hash=_match(p, "hash", _HEX32, "the top-up transaction's 0x-prefixed hash")
            if kind == "hash"
            else None,
        )
    amount = _uint(p, "cumulativeAmount")
    sig = _match(p, "signature", _SIG, "a 64- or 65-byte hex signature")
    if action != "open":
        return SessionPayload(action, channel, amount, sig)
    kind = p.get("type", "hash")
    if not isinstance(kind, str):
        raise MalformedCredential("payload.type must be a string", reason="type")
    signer = p.get("authorizedSigner")
    if signer is not None:
        signer = _match(p, "authorizedSigner", _ADDRESS, "an address")
    salt = p.get("salt")
    if salt is not None:
        salt = _match(p, "salt", _HEX32, "a 0x-prefixed 32-byte hex string")
    return SessionPayload(action, channel, amount, sig, kind, salt, signer)


def voucher_digest(method: str, chain_id: int, escrow: str, channel_id: str, amount: int) -> bytes:
    profile = PROFILES.get(method)
    if profile is None:
        raise MethodUnsupported(f"session method {method!r} is not accepted", reason="method")
    return _core.voucher_digest(
        chain_id=chain_id,
        escrow=escrow,
        channel_id=channel_id,
        cumulative_amount=str(amount),
        profile=profile,
    )


def sign_voucher(
    secret_key: bytes, method: str, chain_id: int, escrow: str, channel_id: str, amount: int
) -> str:
    """A voucher signature (r‖s‖v, v 27/28), what a paying client sends."""
    digest = voucher_digest(method, chain_id, escrow, channel_id, amount)
    return "0x" + _core.sign_digest(secret_key, digest).hex()


def recover_signer(
    method: str, chain_id: int, escrow: str, channel_id: str, amount: int, signature: str
) -> str | None:
    """The address a voucher signature recovers to, or None when it does not recover (bad
    signature, high s)."""
    digest = voucher_digest(method, chain_id, escrow, channel_id, amount)
    try:
        return _core.recover_address(digest, bytes.fromhex(signature[2:]))
    except ValueError:
        return None


def need_voucher_event(
    channel_id: str, required: int, accepted: int, deposit: int, openai: bool
) -> bytes:
    """ONE `payment-need-voucher` SSE event. For OpenAI formats the data also carries
    `"choices": []` (as the usage-only chunk does), so an SDK reading the stream sees an
    empty chunk rather than a malformed one."""
    import orjson

    data: dict[str, Any] = {
        "channelId": channel_id,
        "requiredCumulative": str(required),
        "acceptedCumulative": str(accepted),
        "deposit": str(deposit),
    }
    if openai:
        data["choices"] = []
    return b"event: payment-need-voucher\ndata: " + orjson.dumps(data) + b"\n\n"


def receipt_event(receipt: dict[str, Any]) -> bytes:
    import orjson

    return b"event: payment-receipt\ndata: " + orjson.dumps(receipt) + b"\n\n"
