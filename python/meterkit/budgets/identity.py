"""Who a budget belongs to, from a request: pure functions of headers and addresses.

Only identities that cannot be forged cheaply key a budget: an API key (hashed: it is a
secret and is never logged raw), a named header set by a trusted front (hashed), the client
address (X-Forwarded-For believed only when the peer is a configured trusted proxy), or a
payer whose payment signature was verified. An unverified payment header never is.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping

from meterkit.config.budgets import KeySpec

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def unregistered_key(raw: str) -> str:
    """The budget key of an API key that is not (or not known to be) registered: its hash,
    never the secret itself."""
    return f"ak_{_digest(raw)}"


def api_key(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = headers.get("x-api-key") or headers.get("api-key")
    return key.strip() if key and key.strip() else None


def _addr(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    v = value.strip().strip('"')
    if v.startswith("[") and "]" in v:
        v = v[1 : v.index("]")]
    try:
        return ipaddress.ip_address(v)
    except ValueError:
        return None


def client_ip(
    peer: str | None, forwarded_for: str | None, trusted: Iterable[Network]
) -> str | None:
    """The client address: the peer, unless the peer is a trusted proxy, in which case the
    rightmost X-Forwarded-For entry that is not itself a trusted proxy."""
    nets = list(trusted)
    addr = _addr(peer) if peer else None
    if addr is None:
        return None

    def is_trusted(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(a in n for n in nets)

    if not is_trusted(addr) or not forwarded_for:
        return str(addr)
    for hop in reversed(forwarded_for.split(",")):
        a = _addr(hop)
        if a is None:
            break
        if not is_trusted(a):
            return str(a)
        addr = a
    return str(addr)


def identity_of(
    spec: KeySpec,
    headers: Mapping[str, str],
    peer: str | None,
    trusted: Iterable[Network],
    payer: str | None,
) -> str | None:
    """The budget key for a request, or None when the request does not carry one."""
    if spec.kind == "api_key":
        key = api_key(headers)
        return unregistered_key(key) if key else None
    if spec.kind == "header":
        assert spec.header is not None
        value = headers.get(spec.header)
        return f"h_{_digest(value)}" if value else None
    if spec.kind == "ip":
        ip = client_ip(peer, headers.get("X-Forwarded-For"), trusted)
        return f"ip_{ip}" if ip else None
    if spec.kind == "payer":
        return f"payer_{payer.lower()}" if payer else None
    raise ValueError(f"unknown key kind {spec.kind!r}")


def networks(values: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(v, strict=False) for v in values]
