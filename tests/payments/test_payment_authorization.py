"""Issue 9 #8 (server-side helpers): a challenge naming `header="Payment-Authorization"` binds
that header into its id exactly as `pympp` does, and a request's credential is read from
`Authorization` or `Payment-Authorization`."""

from __future__ import annotations

import orjson
import pytest

from meterkit.payments import mpp
from meterkit.payments.problems import MalformedCredential

REQUEST = {"amount": "1000000", "currency": "0x" + "11" * 20, "recipient": "0x" + "22" * 20}


@pytest.mark.parametrize("header", [None, "Authorization", "Payment-Authorization"])
def test_challenge_id_matches_pympp(header: str | None) -> None:
    from mpp import Challenge as PymppChallenge

    ours = mpp.make_challenge(
        b"secret-0123456789abcdef",
        realm="api.example.com",
        method="evm",
        intent="charge",
        request=REQUEST,
        expires="2030-01-01T00:00:00Z",
        digest="sha-256=abc",
        opaque={"n": "1"},
        header=header,
    )
    theirs = PymppChallenge.create(
        secret_key="secret-0123456789abcdef",
        realm="api.example.com",
        method="evm",
        intent="charge",
        request=REQUEST,
        expires="2030-01-01T00:00:00Z",
        digest="sha-256=abc",
        meta={"n": "1"},
        header=header,
    )
    assert ours.id == theirs.id and ours.bound(b"secret-0123456789abcdef")
    expected = None if header in (None, "Authorization") else header
    assert ours.header_field == expected
    # It travels: WWW-Authenticate → parse → echo → decode keeps the binding.
    (parsed,) = mpp.parse_challenges([ours.header()])
    assert parsed == ours
    token = mpp.credential_token(parsed, {"type": "authorization"})
    assert mpp.decode_credential(token).challenge.bound(b"secret-0123456789abcdef")
    # pympp reads our challenge and computes the same binding.
    assert PymppChallenge.from_www_authenticate(ours.header()).verify(
        "secret-0123456789abcdef", "api.example.com"
    )


def test_the_header_cannot_be_swapped() -> None:
    ch = mpp.make_challenge(
        b"secret-0123456789abcdef",
        realm="r",
        method="evm",
        intent="charge",
        request=REQUEST,
        expires="2030-01-01T00:00:00Z",
        header="Payment-Authorization",
    )
    echo = {**ch.echo()}
    del echo["header"]
    stripped = mpp.decode_credential(mpp.b64url(orjson.dumps({"challenge": echo, "payload": {}})))
    assert not stripped.challenge.bound(b"secret-0123456789abcdef")


@pytest.mark.parametrize(
    ("headers", "found"),
    [
        ({}, None),
        ({"Authorization": "Bearer k"}, None),
        ({"Authorization": "Payment abc"}, ("Authorization", "abc")),
        (
            {"Authorization": "Bearer k", "Payment-Authorization": "Payment abc"},
            ("Payment-Authorization", "abc"),
        ),
        ({"Authorization": "Bearer k, Payment abc"}, ("Authorization", "abc")),
    ],
)
def test_request_credential(headers: dict[str, str], found: tuple[str, str] | None) -> None:
    assert mpp.request_credential(headers) == found


def test_a_credential_in_both_headers_is_malformed() -> None:
    with pytest.raises(MalformedCredential):
        mpp.request_credential({"Authorization": "Payment a", "Payment-Authorization": "Payment b"})


@pytest.mark.parametrize("bad", ["Payment Authorization", "a:b", "é"])
def test_an_invalid_advertised_header_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        mpp.advertised_header(bad)
