"""Payment wire formats and checks, without sockets: the published HMAC vectors, EIP-3009
hashing and recovery cross-checked with eth-account, and header parsers that turn every
malformed input into a payment problem (a 4xx), never an exception of another kind."""

from __future__ import annotations

import base64
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterkit import _core
from meterkit.config.payments import KNOWN_ASSETS
from meterkit.payments import evm, mpp, x402
from meterkit.payments.problems import PaymentProblem

SECRET = b"test-vector-secret"
ASSET = KNOWN_ASSETS[("USDC", "base-sepolia")]
KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
PAYER = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"
RECIPIENT = "0x" + "22" * 20


def test_published_challenge_id_vectors() -> None:
    cases = [
        ({"amount": "1000000"}, "", "X6v1eo7fJ76gAxqY0xN9Jd__4lUyDDYmriryOM-5FO4"),
        (
            {"amount": "1000000"},
            "2025-01-06T12:00:00Z",
            "ChPX33RkKSZoSUyZcu8ai4hhkvjZJFkZVnvWs5s0iXI",
        ),
        ({}, "", "yLN7yChAejW9WNmb54HpJIWpdb1WWXeA3_aCx4dxmkU"),
    ]
    for request, expires, expected in cases:
        ch = mpp.make_challenge(
            SECRET,
            realm="api.example.com",
            method="tempo",
            intent="charge",
            request=request,
            expires=expires,
        )
        assert ch.id == expected
        assert ch.bound(SECRET)
        assert not mpp.Challenge(**{**ch.__dict__, "realm": "evil.example.com"}).bound(SECRET)
        assert not ch.bound(b"another-secret")


def test_jcs_request_and_digests() -> None:
    assert (
        mpp.jcs({"b": 1, "a": {"d": "é", "c": True}}) == '{"a":{"c":true,"d":"é"},"b":1}'.encode()
    )
    d = mpp.body_digest(b"hello")
    assert d == "sha-256=LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="
    assert mpp.same_digest(d, "sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:")
    assert not mpp.same_digest(d, mpp.body_digest(b"hellO"))
    assert mpp.same_digest(None, None) and not mpp.same_digest(d, None)


def _authorization(**over: object) -> tuple[evm.Authorization, dict[str, str], str]:
    fields, sig = evm.sign(
        KEY,
        ASSET,
        to=RECIPIENT,
        value=10_000,
        valid_before=int(time.time()) + 300,
        nonce="0x" + "ab" * 32,
    )
    fields = {**fields, **{k: str(v) for k, v in over.items()}}
    return evm.parse_authorization(fields, sig), fields, sig


def test_eip3009_digest_and_signature_match_eth_account() -> None:
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    auth, fields, sig = _authorization()
    typed = encode_typed_data(
        domain_data=evm.eip712_domain(ASSET),
        message_types=evm.TRANSFER_WITH_AUTHORIZATION,
        message_data={
            "from": fields["from"],
            "to": fields["to"],
            "value": int(fields["value"]),
            "validAfter": 0,
            "validBefore": int(fields["validBefore"]),
            "nonce": bytes.fromhex("ab" * 32),
        },
    )
    assert Account.recover_message(typed, signature=sig) == PAYER
    signed = Account.from_key(KEY).sign_message(typed)
    assert _core.recover_address(evm.digest(auth, ASSET), bytes(signed.signature)) == PAYER
    assert fields["from"] == PAYER


def test_authorization_checks() -> None:
    now = time.time()
    terms = evm.Terms(ASSET, 10_000, RECIPIENT)
    auth, fields, sig = _authorization()
    assert evm.verify(auth, terms, now=now, max_valid_before=now + 3600) == PAYER
    with pytest.raises(PaymentProblem, match="another recipient"):
        evm.verify(
            auth, evm.Terms(ASSET, 10_000, "0x" + "33" * 20), now=now, max_valid_before=now + 3600
        )
    with pytest.raises(PaymentProblem) as e:
        evm.verify(auth, evm.Terms(ASSET, 20_000, RECIPIENT), now=now, max_valid_before=now + 3600)
    assert e.value.reason == "underpaid"
    with pytest.raises(PaymentProblem, match="expired"):
        evm.verify(auth, terms, now=now + 1000, max_valid_before=now + 3600)
    with pytest.raises(PaymentProblem, match="too long"):
        evm.verify(auth, terms, now=now, max_valid_before=now + 10)
    with pytest.raises(PaymentProblem, match="not bound"):
        evm.verify(auth, terms, now=now, max_valid_before=now + 3600, nonce="0x" + "cd" * 32)
    # A field changed after signing: the signature recovers someone else.
    forged = evm.parse_authorization({**fields, "value": "10000", "from": "0x" + "44" * 20}, sig)
    with pytest.raises(PaymentProblem) as e:
        evm.verify(forged, terms, now=now, max_valid_before=now + 3600)
    assert e.value.reason == "forged_signature"
    # The malleable twin of a valid signature (s -> n - s) is refused.
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    raw = bytes.fromhex(sig[2:])
    s = int.from_bytes(raw[32:64], "big")
    twin = raw[:32] + (n - s).to_bytes(32, "big") + bytes([55 - raw[64]])
    with pytest.raises(PaymentProblem) as e:
        evm.verify(
            evm.parse_authorization(fields, "0x" + twin.hex()),
            terms,
            now=now,
            max_valid_before=now + 3600,
        )
    assert e.value.reason == "bad_signature"


def test_challenge_header_round_trip_and_nonce_binding() -> None:
    ch = mpp.make_challenge(
        SECRET,
        realm='we"ird\\realm',
        method="evm",
        intent="charge",
        request={"amount": "1"},
        expires="2030-01-01T00:00:00Z",
        description='say "hi"',
    )
    (back,) = mpp.parse_challenges([ch.header()])
    assert back == ch and back.bound(SECRET)
    # The nonce rule of the pympp package (keccak256 of the JSON array [id, realm]).
    from mpp.methods.evm._eip3009 import challenge_hash

    assert evm.challenge_nonce(ch.id, ch.realm) == challenge_hash(ch.id, ch.realm)


# ---- parsers under fuzz --------------------------------------------------------------------

junk = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda b: base64.urlsafe_b64encode(b).decode()),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
        lambda c: st.one_of(
            st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)
        ),
        max_leaves=12,
    ).map(lambda o: base64.urlsafe_b64encode(json.dumps(o).encode()).decode().rstrip("=")),
)


@settings(max_examples=500, deadline=None)
@given(junk)
def test_credential_parser_only_raises_payment_problems(token: str) -> None:
    try:
        mpp.decode_credential(token)
    except PaymentProblem as e:
        assert 400 <= e.status < 500


@settings(max_examples=500, deadline=None)
@given(junk, st.sampled_from(["X-PAYMENT", "PAYMENT-SIGNATURE"]))
def test_x402_parser_only_raises_payment_problems(value: str, header: str) -> None:
    try:
        x402.decode_payment(value, header)
    except PaymentProblem as e:
        assert 400 <= e.status < 500


@pytest.mark.parametrize(
    "token",
    [
        "",
        "!!!",
        "e30",
        base64.urlsafe_b64encode(b'{"challenge":{},"payload":{}}').decode(),
        base64.urlsafe_b64encode(b'{"challenge":1,"payload":{},"challenge":2}').decode(),
        base64.urlsafe_b64encode(b'{"a":"\\ud800"}').decode(),
        "A" * (64 * 1024 + 1),
        base64.urlsafe_b64encode(
            b'{"challenge":{"id":"x","realm":"r","method":"BAD METHOD","intent":"i","request":"e30"},'
            b'"payload":{}}'
        ).decode(),
    ],
)
def test_malformed_credentials(token: str) -> None:
    with pytest.raises(PaymentProblem):
        mpp.decode_credential(token)


def test_payment_token_picks_the_payment_scheme() -> None:
    assert mpp.payment_token("Bearer abc, Payment xyz") == "xyz"
    assert mpp.payment_token("Bearer abc") is None
    with pytest.raises(PaymentProblem):
        mpp.payment_token("Payment a, Payment b")
