"""Issue 9 #2: a malformed payment header is a payment problem, never a 5xx.

At the decode level: every value a client can put in `Authorization: Payment …`,
`Payment-Authorization`, `PAYMENT-SIGNATURE` or `X-PAYMENT` either decodes or raises the
documented problem — `MalformedCredential` / `InvalidChallenge` for MPP (402), `MalformedPayment`
for x402 (400, the x402 HTTP transport's "Invalid Payment"). Before the fix, `[` × 1100 raised
`RecursionError` out of `json.loads`, and a trailing newline slipped through `re.match(…$)`.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterkit.payments import evm, mpp, x402
from meterkit.payments.problems import (
    InvalidChallenge,
    MalformedCredential,
    MalformedPayment,
    PaymentProblem,
)
from support.payment_values import (
    DEEP,
    WRONG_VALUES,
    b64,
    b64url,
    corpus,
    mpp_credential_obj,
    paths,
    replace,
    x402_obj,
)

MPP_PROBLEMS = (MalformedCredential, InvalidChallenge)


def read_mpp(headers: dict[str, str]) -> None:
    """What the stage does with an MPP credential before any I/O (the parts of it that live
    in the domain modules)."""
    found = mpp.request_credential(headers)
    if found is None:
        return
    cred = mpp.decode_credential(found[1])
    ch = cred.challenge
    ch.request_json  # noqa: B018
    ch.bound(b"some-secret-0123456789")
    mpp.parse_rfc3339(ch.expires or "")
    mpp.same_digest(ch.digest, "sha-256=abc")
    evm.parse_authorization(cred.payload, cred.payload.get("signature"))


def read_x402(header: str, value: str) -> None:
    pay = x402.decode_payment(value, header)
    if pay.scheme == "exact":
        evm.parse_authorization(pay.authorization, pay.signature, problem=MalformedPayment)


def check_all(value: str) -> None:
    """The value in each payment header: only the documented problems may come out."""
    for headers in (
        {"Authorization": value},
        {"Authorization": "Payment " + value},
        {"Payment-Authorization": "Payment " + value},
        {"Authorization": "Bearer k, Payment " + value},
    ):
        with contextlib.suppress(MPP_PROBLEMS):
            read_mpp(headers)
    for name in ("PAYMENT-SIGNATURE", "X-PAYMENT"):
        try:
            read_x402(name, value)
        except MalformedPayment as e:
            assert e.status == 400


# ---- fixed corpus: the values that got 500 --------------------------------------------------


@pytest.mark.parametrize("raw", DEEP, ids=lambda r: f"{len(r)}B")
@pytest.mark.parametrize("encode", [b64url, b64])
def test_deep_nesting_is_malformed_not_recursion_error(raw: bytes, encode: Any) -> None:
    value = encode(raw)
    with pytest.raises(MalformedCredential):
        mpp.decode_credential(value)
    for name in ("PAYMENT-SIGNATURE", "X-PAYMENT"):
        with pytest.raises(MalformedPayment):
            x402.decode_payment(value, name)
    check_all(value)


CORPUS = corpus()


def test_the_corpus_is_large() -> None:
    assert len(CORPUS) >= 300


def test_wrong_types_anywhere_are_documented_problems() -> None:
    for _, raw in CORPUS:
        for encode in (b64url, b64):
            check_all(encode(raw))


@pytest.mark.parametrize(
    "raw",
    [
        b"null",
        b"[]",
        b'"a string"',
        b"42",
        b"NaN",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b"\xff\xfe",
        b'{"a": "\\ud800"}',
        b'{"challenge": {}, "challenge": {}}',
        b'{"x402Version": 1, "x402Version": 2}',
        b"1" * 5000,
        b"",
        b"{",
    ],
)
def test_non_objects_and_bad_json(raw: bytes) -> None:
    for encode in (b64url, b64):
        with pytest.raises(MalformedCredential):
            mpp.decode_credential(encode(raw))
        with pytest.raises(MalformedPayment):
            x402.decode_payment(encode(raw), "PAYMENT-SIGNATURE")


@pytest.mark.parametrize(
    "value",
    ["", "!!!", "abc\n", "a", "é" * 10, "\x00", "a b", "=" * 5, "A" * 70_000, "Zm9v\ud800"],
)
def test_bad_base64(value: str) -> None:
    with pytest.raises(MalformedCredential):
        mpp.decode_credential(value)
    with pytest.raises(MalformedPayment):
        x402.decode_payment(value, "X-PAYMENT")
    check_all(value)


def test_x402_version_must_be_an_integer() -> None:
    obj = x402_obj(1)
    obj["x402Version"] = 1.0
    with pytest.raises(MalformedPayment):
        x402.decode_payment(b64(obj), "X-PAYMENT")


def test_x402_malformed_authorization_is_400_at_decode() -> None:
    obj = x402_obj(2)
    obj["payload"]["authorization"]["value"] = 10000  # a number, not a decimal string
    with pytest.raises(MalformedPayment) as e:
        x402.decode_payment(b64(obj), "PAYMENT-SIGNATURE")
    assert (e.value.status, e.value.fresh_challenge, e.value.code) == (
        400,
        False,
        "malformed-credential",
    )


def test_valid_values_still_decode() -> None:
    cred = mpp.decode_credential(b64url(mpp_credential_obj()))
    evm.parse_authorization(cred.payload, cred.payload["signature"])
    for v in (1, 2):
        pay = x402.decode_payment(b64(x402_obj(v)), "X-PAYMENT" if v == 1 else "PAYMENT-SIGNATURE")
        assert pay.version == v and pay.scheme == "exact"


# ---- parse_authorization on bad field types ------------------------------------------------


@pytest.mark.parametrize("key", ["from", "to", "nonce", "value", "validAfter", "validBefore"])
@pytest.mark.parametrize("bad", WRONG_VALUES, ids=lambda v: repr(v)[:12])
def test_parse_authorization_bad_fields(key: str, bad: Any) -> None:
    payload = mpp_credential_obj()["payload"]
    with pytest.raises(MalformedCredential):
        evm.parse_authorization({**payload, key: bad}, payload["signature"])
    with pytest.raises(MalformedPayment):
        evm.parse_authorization(
            {**payload, key: bad}, payload["signature"], problem=MalformedPayment
        )


@pytest.mark.parametrize(
    "bad", [*WRONG_VALUES, "0x" + "ab" * 65 + "\n"], ids=lambda v: repr(v)[:12]
)
def test_parse_authorization_bad_signature(bad: Any) -> None:
    payload = mpp_credential_obj()["payload"]
    with pytest.raises(MalformedCredential):
        evm.parse_authorization(payload, bad)


@pytest.mark.parametrize("fields", [None, [], "x", 1, True])
def test_parse_authorization_not_an_object(fields: Any) -> None:
    with pytest.raises(MalformedCredential):
        evm.parse_authorization(fields, "0x" + "ab" * 65)


# ---- property: random mutations -----------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**300), max_value=2**300)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def malformed_values(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["mutate", "bytes", "text", "nested", "json"]))
    if kind == "bytes":
        raw = draw(st.binary(max_size=300))
    elif kind == "text":
        return draw(st.text(max_size=200))
    elif kind == "nested":
        depth = draw(st.integers(min_value=20, max_value=4000))
        opener = draw(st.sampled_from(["[", '{"a":', '{"challenge":', '{"payload":']))
        raw = (opener * depth).encode() + draw(st.sampled_from([b"", b"1", b"[]"]))
    elif kind == "json":
        raw = json.dumps(draw(json_values)).encode()
    else:
        base = draw(st.sampled_from([mpp_credential_obj(), x402_obj(1), x402_obj(2)]))
        path = draw(st.sampled_from(paths(base)[1:]))
        raw = json.dumps(replace(base, path, draw(json_values))).encode()
    return draw(st.sampled_from([b64url, b64]))(raw)


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(malformed_values())
def test_fuzzed_header_values_raise_only_documented_problems(value: str) -> None:
    try:
        check_all(value)
    except PaymentProblem as e:  # pragma: no cover - check_all swallows the documented ones
        pytest.fail(f"undocumented problem {type(e).__name__}: {e}")
