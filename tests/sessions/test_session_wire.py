"""Session vouchers in the `evm` and Tempo v1 dialects, checked against `eth-account`'s
EIP-712 encoder (an independent implementation), and the voucher acceptance rule."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given
from hypothesis import strategies as st

from meterkit import _core
from meterkit.payments.problems import MalformedCredential
from meterkit.sessions import Channel, accept, parse_payload, recover_signer, sign_voucher
from meterkit.sessions.problems import (
    AmountExceedsDeposit,
    ChannelFinalized,
    ChannelNotFound,
    DeltaTooSmall,
    InvalidSignature,
    SignerMismatch,
)

KEY = bytes(31) + b"\x09"
ESCROW = "0x" + "4d" * 20
CHANNEL = "0x" + "ab" * 32
DOMAINS = {"evm": "EVM Payment Channel", "tempo": "Tempo Stream Channel"}


def reference_digest(name: str, chain_id: int, amount: int) -> bytes:
    msg = encode_typed_data(
        full_message={
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "Voucher": [
                    {"name": "channelId", "type": "bytes32"},
                    {"name": "cumulativeAmount", "type": "uint128"},
                ],
            },
            "primaryType": "Voucher",
            "domain": {
                "name": name,
                "version": "1",
                "chainId": chain_id,
                "verifyingContract": ESCROW,
            },
            "message": {"channelId": bytes.fromhex(CHANNEL[2:]), "cumulativeAmount": amount},
        }
    )
    from eth_utils import keccak

    return bytes(keccak(b"\x19\x01" + msg.header + msg.body))


@pytest.mark.parametrize("method", ["evm", "tempo"])
@given(amount=st.integers(0, 2**128 - 1), chain_id=st.integers(1, 2**40))
def test_voucher_digest_matches_eth_account(method: str, amount: int, chain_id: int) -> None:
    profile = "evm" if method == "evm" else "tempo-v1"
    ours = _core.voucher_digest(
        chain_id=chain_id,
        escrow=ESCROW,
        channel_id=CHANNEL,
        cumulative_amount=str(amount),
        profile=profile,
    )
    assert ours == reference_digest(DOMAINS[method], chain_id, amount)


@pytest.mark.parametrize("method", ["evm", "tempo"])
def test_a_voucher_signed_here_recovers_to_the_signer_and_eth_account_agrees(method: str) -> None:
    sig = sign_voucher(KEY, method, 84532, ESCROW, CHANNEL, 1234)
    assert recover_signer(method, 84532, ESCROW, CHANNEL, 1234, sig) == _core.address_of(KEY)
    digest = reference_digest(DOMAINS[method], 84532, 1234)
    assert Account._recover_hash(digest, signature=bytes.fromhex(sig[2:])) == _core.address_of(KEY)
    # Another amount, another dialect: another signer.
    assert recover_signer(method, 84532, ESCROW, CHANNEL, 1235, sig) != _core.address_of(KEY)
    other = "tempo" if method == "evm" else "evm"
    assert recover_signer(other, 84532, ESCROW, CHANNEL, 1234, sig) != _core.address_of(KEY)


def test_the_evm_channel_id_is_abi_encode_of_its_seven_fields() -> None:
    from eth_abi import encode
    from eth_utils import keccak

    args = dict(
        payer="0x" + "11" * 20,
        payee="0x" + "22" * 20,
        token="0x" + "44" * 20,
        salt="0x" + "00" * 31 + "01",
        authorized_signer="0x" + "55" * 20,
        escrow=ESCROW,
        chain_id=42431,
    )
    expected = keccak(
        encode(
            ["address", "address", "address", "bytes32", "address", "address", "uint256"],
            [
                args["payer"],
                args["payee"],
                args["token"],
                bytes.fromhex(args["salt"][2:]),
                args["authorized_signer"],
                ESCROW,
                42431,
            ],
        )
    )
    assert _core.evm_channel_id(**args) == "0x" + expected.hex()


def channel(**over: object) -> Channel:
    base = dict(
        channel_id=CHANNEL,
        payer=_core.address_of(KEY),
        payee="0x" + "22" * 20,
        token="0x" + "44" * 20,
        authorized_signer="0x" + "00" * 20,
        chain_id=84532,
        escrow=ESCROW,
        deposit=1000,
        accepted=100,
    )
    return Channel(**{**base, **over})  # type: ignore[arg-type]


def test_voucher_acceptance_follows_the_spec_order() -> None:
    me = _core.address_of(KEY)
    assert accept(channel(), 200, me, 10) is True
    assert accept(channel(), 100, me, 10) is False  # the same amount: idempotent, nothing new
    assert accept(channel(), 50, me, 10) is False
    cases = [
        (None, 200, me, ChannelNotFound),
        (channel(finalized=True), 200, me, ChannelFinalized),
        (channel(), 200, None, InvalidSignature),
        (channel(), 200, "0x" + "99" * 20, SignerMismatch),
        (channel(), 105, me, DeltaTooSmall),
        (channel(), 1001, me, AmountExceedsDeposit),
        # The signature is checked before the amount: a stranger learns nothing.
        (channel(), 5000, "0x" + "99" * 20, SignerMismatch),
    ]
    for ch, amount, signer, problem in cases:
        with pytest.raises(problem):
            accept(ch, amount, signer, 10)
    assert accept(channel(authorized_signer="0x" + "55" * 20), 200, "0x" + "55" * 20, 0)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"action": "pay"},
        {"action": "voucher", "channelId": "0x12"},
        {"action": "voucher", "channelId": CHANNEL, "cumulativeAmount": 5, "signature": "0x"},
        {"action": "voucher", "channelId": CHANNEL, "cumulativeAmount": "-1", "signature": "0x"},
        {
            "action": "voucher",
            "channelId": CHANNEL,
            "cumulativeAmount": str(2**128),
            "signature": "0x" + "1" * 130,
        },
        {"action": "voucher", "channelId": CHANNEL, "cumulativeAmount": "1", "signature": "0x1"},
        {"action": "topUp", "channelId": CHANNEL},
    ],
)
def test_malformed_session_payloads(payload: dict[str, object]) -> None:
    with pytest.raises(MalformedCredential):
        parse_payload(payload)
