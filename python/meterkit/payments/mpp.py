"""The `Payment` HTTP authentication scheme (IETF draft-httpauth-payment; see docs/protocols.md): wire
encoding of challenges, credentials and receipts. Pure functions; the HMAC that binds a
challenge id is computed in the Rust core."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import rfc8785

from meterkit import _core
from meterkit.payments import wirejson
from meterkit.payments.problems import InvalidChallenge, MalformedCredential

# A credential echoes its challenge, whose request alone may be large.
MAX_CREDENTIAL = 64 * 1024
_METHOD = re.compile(r"^[a-z][a-z0-9:_-]*$")
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_CHALLENGE_FIELDS = ("id", "realm", "method", "intent", "request")
_OPTIONAL_FIELDS = ("expires", "digest", "opaque", "description", "header")
# The `header` parameter is the `header_field` attribute (`Challenge.header()` renders it).
_ATTR = {"header": "header_field"}
# RFC 9110 `token`: what an advertised credential header name may be.
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

AUTHORIZATION = "Authorization"
# The field a client sends its Payment credential in when the challenge says
# `header="Payment-Authorization"` (a route whose clients keep `Authorization` for their own
# bearer key; the `pympp` server's `requires_auth=True`).
PAYMENT_AUTHORIZATION = "Payment-Authorization"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64url_decode(text: str) -> bytes:
    # fullmatch: `$` would let a trailing newline through.
    if not _B64URL.fullmatch(text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jcs(obj: Any) -> bytes:
    """RFC 8785 canonical JSON (the bytes a challenge's `request` encodes)."""
    return bytes(rfc8785.dumps(obj))


def encode_request(request: dict[str, Any]) -> str:
    return b64url(jcs(request))


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float | None:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        # Year 1 with a positive offset (or 9999 with a negative one) overflows here.
        return dt.timestamp() if dt.tzinfo is not None else None
    except (ValueError, OverflowError, OSError):
        return None


def body_digest(body: bytes) -> str:
    """`sha-256=<base64>` of a request body (emitted without RFC 9530 colons)."""
    return "sha-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()


def same_digest(a: str | None, b: str | None) -> bool:
    """Digests compare equal with or without the RFC 9530 `:…:` wrapping."""

    def norm(d: str | None) -> str | None:
        if d is None:
            return None
        name, _, value = d.partition("=")
        return f"{name.strip().lower()}={value.strip().strip(':')}"

    return norm(a) == norm(b)


def _quote(value: str) -> str:
    if any(c in value for c in "\r\n"):
        raise ValueError("header values must not contain line breaks")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def advertised_header(name: str | None) -> str | None:
    """The credential header a challenge advertises: None for the implicit `Authorization`
    (never written on the wire, as `pympp` does, so ids of ordinary challenges keep their
    binding), else the field name. A name that is no HTTP field name is a `ValueError`."""
    if not name or name.lower() == AUTHORIZATION.lower():
        return None
    if not _FIELD_NAME.fullmatch(name):
        raise ValueError(f"not an HTTP header name: {name!r}")
    return name


def _digest_slot(digest: str | None, header: str | None) -> str:
    """The HMAC input of an advertised header. `pympp` binds it between `digest` and `opaque`
    (realm|method|intent|request|expires|digest|header|opaque) and only when advertised; the
    core's seven slots produce exactly that when the digest slot carries `digest|header`."""
    return f"{digest or ''}|{header}" if header else digest or ""


@dataclass(frozen=True)
class Challenge:
    id: str
    realm: str
    method: str
    intent: str
    request: str  # base64url-nopad JCS, exactly as on the wire
    expires: str | None = None
    digest: str | None = None
    opaque: str | None = None
    description: str | None = None
    # The `header` parameter: the field the credential must be sent in (None: `Authorization`).
    header_field: str | None = None

    @classmethod
    def from_wire(cls, params: Mapping[str, str | None]) -> Challenge:
        """From the parameter names of the wire (`header` included); the required ones must
        be strings."""
        required = [params.get(k) for k in _CHALLENGE_FIELDS]
        if not all(isinstance(v, str) for v in required):
            raise ValueError("a challenge needs id, realm, method, intent and request")
        optional = {_ATTR.get(k, k): params.get(k) for k in _OPTIONAL_FIELDS}
        return cls(*required, **optional)  # type: ignore[arg-type]

    def wire(self, name: str) -> str | None:
        """A parameter by its wire name."""
        value: str | None = getattr(self, _ATTR.get(name, name))
        return value

    @property
    def credential_header(self) -> str:
        return self.header_field or AUTHORIZATION

    @property
    def request_json(self) -> dict[str, Any]:
        obj = orjson.loads(b64url_decode(self.request))
        if not isinstance(obj, dict):
            raise ValueError("request is not a JSON object")
        return obj

    def header(self) -> str:
        """The `WWW-Authenticate` value."""
        parts = [
            f"id={_quote(self.id)}",
            f"realm={_quote(self.realm)}",
            f"method={_quote(self.method)}",
            f"intent={_quote(self.intent)}",
            f"request={_quote(self.request)}",
        ]
        for name in _OPTIONAL_FIELDS:
            value = self.wire(name)
            if value is not None:
                parts.append(f"{name}={_quote(value)}")
        return "Payment " + ", ".join(parts)

    def echo(self) -> dict[str, str]:
        out = {k: getattr(self, k) for k in _CHALLENGE_FIELDS}
        out.update({k: v for k in _OPTIONAL_FIELDS if (v := self.wire(k)) is not None})
        return out

    def bound(self, secret: bytes) -> bool:
        """Does the id bind exactly these terms (constant-time, in the Rust core)?"""
        return _core.verify_challenge_id(
            secret,
            self.id,
            self.realm,
            self.method,
            self.intent,
            self.request,
            self.expires or "",
            _digest_slot(self.digest, self.header_field),
            self.opaque or "",
        )


def make_challenge(
    secret: bytes,
    *,
    realm: str,
    method: str,
    intent: str,
    request: dict[str, Any],
    expires: str,
    digest: str | None = None,
    opaque: dict[str, str] | None = None,
    description: str | None = None,
    header: str | None = None,
) -> Challenge:
    """A challenge whose id binds its terms. `header="Payment-Authorization"` asks the client
    to send the credential there (bound into the id, as `pympp` does)."""
    if not _METHOD.fullmatch(method):
        raise ValueError(f"invalid payment method id {method!r}")
    header = advertised_header(header)
    wire = encode_request(request)
    opaque_wire = encode_request(opaque) if opaque else None
    cid = _core.challenge_id(
        secret,
        realm,
        method,
        intent,
        wire,
        expires,
        _digest_slot(digest, header),
        opaque_wire or "",
    )
    return Challenge(
        cid, realm, method, intent, wire, expires, digest, opaque_wire, description, header
    )


@dataclass(frozen=True)
class Credential:
    challenge: Challenge
    payload: dict[str, Any]
    source: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


def request_credential(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """The Payment credential of a request and the field it came in: `(field, token)` from
    `Authorization` or `Payment-Authorization`, or None when neither carries one.

    `Payment-Authorization` holds the same `Payment <token>` as `Authorization` would; a
    client uses it when the challenge said `header="Payment-Authorization"`, keeping its own
    `Authorization: Bearer …` for the upstream. A Payment credential in both is ambiguous and
    a `MalformedCredential`. The caller may compare the field with the echoed challenge's
    `credential_header` (the id binds which one the server asked for)."""
    found = [
        (name, token)
        for name in (AUTHORIZATION, PAYMENT_AUTHORIZATION)
        if (token := payment_token(headers.get(name))) is not None
    ]
    if len(found) > 1:
        raise MalformedCredential(
            "a Payment credential in both Authorization and Payment-Authorization",
            reason="duplicate",
        )
    return found[0] if found else None


def payment_token(authorization: str | None) -> str | None:
    """The `Payment` credential of an `Authorization` header (which may carry several
    comma-separated schemes)."""
    if not authorization:
        return None
    found = None
    for part in authorization.split(","):
        scheme, _, rest = part.strip().partition(" ")
        if scheme.lower() == "payment":
            if found is not None:
                raise MalformedCredential("more than one Payment credential", reason="duplicate")
            found = rest.strip()
    return found


def decode_credential(token: str) -> Credential:
    """Decode `Authorization: Payment <token>`. Every defect is a `MalformedCredential`, or an
    `InvalidChallenge` when only the echoed `request` does not decode; nothing else escapes,
    whatever the bytes (see `payments.wirejson`)."""
    if not token:
        raise MalformedCredential("empty Payment credential", reason="empty")
    if len(token) > MAX_CREDENTIAL:
        raise MalformedCredential(
            "the Payment credential is larger than 64 KiB", reason="too_large"
        )
    try:
        raw = b64url_decode(token)
    except (ValueError, binascii.Error):
        raise MalformedCredential("the credential is not base64url", reason="base64") from None
    try:
        obj = wirejson.loads(raw)
    except ValueError as e:
        raise MalformedCredential(f"the credential is not valid JSON: {e}", reason="json") from None
    if not isinstance(obj, dict):
        raise MalformedCredential("the credential must be a JSON object", reason="shape")
    ch = obj.get("challenge")
    payload = obj.get("payload")
    source = obj.get("source")
    if not isinstance(ch, dict) or not isinstance(payload, dict):
        raise MalformedCredential(
            "the credential needs a challenge object and a payload object", reason="shape"
        )
    if source is not None and not isinstance(source, str):
        raise MalformedCredential("source must be a string", reason="shape")
    values: dict[str, str | None] = {}
    for k in _CHALLENGE_FIELDS:
        v = ch.get(k)
        if not isinstance(v, str) or not v:
            raise MalformedCredential(f"challenge.{k} must be a non-empty string", reason="shape")
        values[k] = v
    for k in _OPTIONAL_FIELDS:
        v = ch.get(k)
        if v is not None and not isinstance(v, str):
            raise MalformedCredential(f"challenge.{k} must be a string", reason="shape")
        values[k] = v
    if not _METHOD.fullmatch(values["method"] or ""):
        raise MalformedCredential("challenge.method is not a payment method id", reason="shape")
    try:
        values["header"] = advertised_header(values["header"])
    except ValueError:
        raise MalformedCredential("challenge.header is not a header name", reason="shape") from None
    challenge = Challenge.from_wire(values)
    try:
        challenge.request_json  # noqa: B018 - validates the echoed request encoding
    except ValueError:
        raise InvalidChallenge(
            "challenge.request is not base64url JSON", reason="request"
        ) from None
    return Credential(challenge, payload, source, obj)


def receipt_header(receipt: dict[str, Any]) -> str:
    return b64url(orjson.dumps(receipt))


def decode_receipt(value: str) -> dict[str, Any]:
    obj = orjson.loads(b64url_decode(value))
    if not isinstance(obj, dict):
        raise ValueError("receipt is not a JSON object")
    return obj


# ---- client side ---------------------------------------------------------------------------

_PARAM = re.compile(r'\s*([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))\s*,?')


def parse_challenges(values: list[str]) -> list[Challenge]:
    """Challenges from `WWW-Authenticate` header values (other schemes are skipped)."""
    out = []
    for value in values:
        for part in re.split(r"(?:^|,)\s*(?=Payment\s)", value, flags=re.IGNORECASE):
            part = part.strip()
            if not part.lower().startswith("payment "):
                continue
            params: dict[str, str | None] = {}
            for m in _PARAM.finditer(part[8:]):
                key = m.group(1).lower()
                if key in params:
                    raise ValueError(f"duplicate parameter {key}")
                params[key] = (
                    re.sub(r"\\(.)", r"\1", m.group(2)) if m.group(2) is not None else m.group(3)
                )
            if all(k in params for k in _CHALLENGE_FIELDS):
                params["header"] = advertised_header(params.get("header"))
                out.append(Challenge.from_wire(params))
    return out


def credential_token(
    challenge: Challenge, payload: dict[str, Any], source: str | None = None
) -> str:
    obj: dict[str, Any] = {"challenge": challenge.echo(), "payload": payload}
    if source:
        obj["source"] = source
    return b64url(orjson.dumps(obj))
