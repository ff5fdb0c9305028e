"""The configuration model: frozen dataclasses built from the YAML tree, with every problem
reported under its key path. Configure, then freeze: the proxy never mutates these."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from meterkit import FORMATS
from meterkit.config.budgets import BudgetPolicy, BudgetStore, parse_policy, parse_store
from meterkit.config.keys import Keys, parse_keys
from meterkit.config.ops import Admin, parse_admin, parse_key_label, parse_prices
from meterkit.config.payments import (
    ROUTE_PAYMENT_KEYS,
    Accept,
    LedgerConfig,
    Payments,
    RoutePayment,
    TokenRates,
    parse_accepts,
    parse_ledger,
    parse_payments,
    parse_route_payment,
    parse_wallets,
)
from meterkit.config.problems import KeyPath, Problems
from meterkit.config.sessions import Sessions, check_payee, parse_sessions
from meterkit.config.units import as_number, parse_duration, parse_size

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "*")
ROUTE_FORMATS = ("auto", "none", *FORMATS)
# The values of a route's `keys:` (see Route.keys).
ROUTE_KEYS = ("required", "optional")
_PARAM = re.compile(r"^:([A-Za-z_][A-Za-z0-9_]*)$")
_TEMPLATE = re.compile(r"\$\{(params|query)\.([^}]*)\}")


@dataclass(frozen=True)
class Timeouts:
    """Seconds. There is deliberately no total cap: a long stream that keeps sending is fine."""

    connect: float = 10.0
    first_byte: float = 120.0
    idle: float = 300.0


USAGE_SOURCES = ("max", "counted", "provider")


@dataclass(frozen=True)
class Upstream:
    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    # Which completion figure bills: "max" (the provider's, never below what was counted on
    # the wire nor above what the request could have produced), "counted" (the wire's count
    # for models counted exactly) or "provider" (the provider's, only made non-negative).
    # See `meterkit.usage.trust`.
    usage_source: str = "max"


@dataclass(frozen=True)
class Route:
    """`"METHOD /path/:param"` → upstream, with an optional path rewrite."""

    key: str
    method: str
    segments: tuple[str, ...]
    upstream: str
    path: str | None = None
    format: str = "auto"
    budget: str | None = None
    payment: RoutePayment = field(default_factory=RoutePayment)
    # Whether the route needs a key from the registry (`keys:`): "required" (401 without
    # one, whatever the budget), "optional" (served without one), or None: required exactly
    # when a registry exists and the route's budget is keyed by `api_key`.
    keys: str | None = None

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(s[1:] for s in self.segments if s.startswith(":"))

    @property
    def pattern(self) -> str:
        """The path pattern of the route (`/tenant/:id/chat`)."""
        return self.key.partition(" ")[2]


@dataclass(frozen=True)
class Gateway:
    host: str = "127.0.0.1"
    port: int = 3000
    max_request_body: int = 4 * 1024 * 1024
    # Addresses whose X-Forwarded-For is believed when deciding the client IP.
    trusted_proxies: tuple[str, ...] = ()
    # Seconds a request head may take from its first byte (nginx: client_header_timeout).
    header_timeout: float = 60.0
    # Seconds a connection may wait for its next request (nginx: keepalive_timeout).
    keepalive_timeout: float = 60.0
    # Seconds between two successive reads of a request body before it is given up with a
    # 408 (nginx: client_body_timeout): silence, not a deadline for the whole body.
    body_timeout: float = 60.0
    # Open client connections; None: what the descriptor limit allows (see proxy/server.py).
    max_connections: int | None = None
    # Bytes of unfinished upstream events held across all streams of the process; over it,
    # the stream holding the most ends with its format's error ending (0: no bound).
    max_pending_bytes: int = 256 * 1024 * 1024
    # Processes serving the port (SO_REUSEPORT), each with its own event loop; `serve
    # --workers` overrides it. Over 1, shared state must live in Redis/PostgreSQL
    # (`meterkit.proxy.workers.problems`).
    workers: int = 1


@dataclass(frozen=True)
class UsageSinkConfig:
    sink: str = "log"
    path: str = "meterkit-data/usage.sqlite3"
    # PostgreSQL sink: the URL and an optional schema for the usage_records table.
    url: str | None = None
    schema: str | None = None
    # Records waiting for the store beyond which new requests get 503 (backpressure).
    max_pending: int = 100_000


# The name the settings class had before the usage sinks (`meterkit.usage.UsageSink`) took it.
UsageSink = UsageSinkConfig


@dataclass(frozen=True)
class Logging:
    level: str = "info"
    format: str = "json"


@dataclass(frozen=True)
class Metrics:
    enabled: bool = True
    path: str = "/metrics"
    # Per-key series (tokens, spend): off, hashed or alias (see config.ops.KEY_LABELS).
    key_label: str = "off"


@dataclass(frozen=True)
class Config:
    gateway: Gateway
    upstreams: Mapping[str, Upstream]
    routes: tuple[Route, ...]
    usage: UsageSinkConfig = field(default_factory=UsageSinkConfig)
    logging: Logging = field(default_factory=Logging)
    metrics: Metrics = field(default_factory=Metrics)
    budgets: Mapping[str, BudgetPolicy] = field(default_factory=dict)
    budget_store: BudgetStore = field(default_factory=BudgetStore)
    wallets: Mapping[str, str] = field(default_factory=dict)
    accepts: tuple[Accept, ...] = ()
    payments: Payments = field(default_factory=Payments)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    # Where session routes find their payment channels (prepaid, or an escrow on chain).
    sessions: Sessions = field(default_factory=Sessions)
    # The API key registry; None: `key: api_key` budgets hash whatever key arrives.
    keys: Keys | None = None
    source: str = "config"
    # The admin listener (budgets, metrics, readiness), off unless configured.
    admin: Admin | None = None
    # Token prices of routes that take no payment, per model: for reports and spend metrics.
    prices: Mapping[str, TokenRates] = field(default_factory=dict)


# ---- parsing -----------------------------------------------------------------------------


def _mapping(value: Any, path: KeyPath, problems: Problems) -> dict[str, Any] | None:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping, got {type(value).__name__}")
        return None
    return value


def _str(value: Any, path: KeyPath, problems: Problems) -> str | None:
    if isinstance(value, str):
        return value
    problems.add(path, f"expected a string, got {type(value).__name__}")
    return None


def _port(value: Any, path: KeyPath, problems: Problems) -> int | None:
    value = as_number(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        problems.add(path, f"expected a port number 0-65535, got {value!r}")
        return None
    return value


def _timeouts(value: Any, path: KeyPath, problems: Problems) -> Timeouts:
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        # One number sets every timeout, in seconds (never milliseconds).
        try:
            s = parse_duration(value)
        except ValueError as e:
            problems.add(path, str(e))
            return Timeouts()
        if s <= 0:
            problems.add(path, "timeout must be positive")
        return Timeouts(connect=s, first_byte=s, idle=s)
    m = _mapping(value, path, problems)
    if m is None:
        return Timeouts()
    problems.unknown_keys(path, m, ("connect", "first_byte", "idle"))
    out: dict[str, float] = {}
    for key in ("connect", "first_byte", "idle"):
        if key in m:
            try:
                out[key] = parse_duration(m[key])
                if out[key] <= 0:
                    problems.add(path / key, "timeout must be positive")
            except ValueError as e:
                problems.add(path / key, str(e))
    return Timeouts(**out)


def _upstream(name: str, value: Any, path: KeyPath, problems: Problems) -> Upstream | None:
    m = _mapping(value, path, problems)
    if m is None:
        return None
    problems.unknown_keys(path, m, ("url", "headers", "timeout", "usage_source"))
    usage_source = _choice(m, "usage_source", USAGE_SOURCES, path, problems) or "max"
    url = _str(m.get("url"), path / "url", problems) if "url" in m else None
    if "url" not in m:
        problems.add(path / "url", "required")
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.add(path / "url", f"expected an http(s) URL with a host, got {url!r}")
        elif parts.query or parts.fragment:
            problems.add(path / "url", "must not have a query string or fragment")
    headers: list[tuple[str, str]] = []
    hm = _mapping(m.get("headers"), path / "headers", problems) or {}
    for k, v in hm.items():
        if not isinstance(v, str | int) or isinstance(v, bool):
            problems.add(path / "headers" / str(k), "header values must be strings")
            continue
        if any(c in str(k) + str(v) for c in "\r\n"):
            problems.add(
                path / "headers" / str(k), "header names and values must not contain line breaks"
            )
            continue
        headers.append((str(k), str(v)))
    timeouts = _timeouts(m["timeout"], path / "timeout", problems) if "timeout" in m else Timeouts()
    if url is None:
        return None
    return Upstream(
        name=name,
        url=url.rstrip("/"),
        headers=tuple(headers),
        timeouts=timeouts,
        usage_source=usage_source,
    )


def parse_route_key(key: str) -> tuple[str, tuple[str, ...]]:
    """`"POST /v1/chat/:id"` → ("POST", ("v1", "chat", ":id")). Raises ValueError."""
    method, sep, path = key.strip().partition(" ")
    path = path.strip()
    if not sep or not path:
        raise ValueError('route keys look like "METHOD /path", e.g. "POST /v1/chat/completions"')
    method = method.upper()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")
    segments = tuple(s for s in path.split("/") if s)
    names = []
    for i, s in enumerate(segments):
        if s == "*" and i != len(segments) - 1:
            raise ValueError("'*' may only be the last path segment")
        if s.startswith(":"):
            m = _PARAM.match(s)
            if not m:
                raise ValueError(f"invalid parameter {s!r}")
            if m.group(1) in names:
                raise ValueError(f"parameter {s!r} appears twice")
            names.append(m.group(1))
    return method, segments


def _route(
    key: str,
    value: Any,
    path: KeyPath,
    problems: Problems,
    upstreams: Mapping[str, Any],
    budgets: Mapping[str, Any],
) -> Route | None:
    try:
        method, segments = parse_route_key(key)
    except ValueError as e:
        problems.add(path, str(e))
        return None
    m = _mapping(value, path, problems)
    if m is None:
        return None
    problems.unknown_keys(
        path, m, ("upstream", "path", "format", "budget", "keys", *ROUTE_PAYMENT_KEYS)
    )
    payment = parse_route_payment(m, path, problems)
    budget = m.get("budget")
    if budget is not None and (not isinstance(budget, str) or budget not in budgets):
        known = ", ".join(budgets) or "none defined"
        problems.add(path / "budget", f"unknown budget {budget!r} (known: {known})")
    upstream = m.get("upstream")
    if upstream is None:
        problems.add(path / "upstream", "required")
    elif not isinstance(upstream, str) or upstream not in upstreams:
        known = ", ".join(upstreams) or "none defined"
        problems.add(path / "upstream", f"unknown upstream {upstream!r} (known: {known})")
    rewrite = None
    if "path" in m:
        rewrite = _str(m["path"], path / "path", problems)
        if rewrite is not None:
            if not rewrite.startswith("/"):
                problems.add(path / "path", "must start with '/'")
            params = {s[1:] for s in segments if s.startswith(":")}
            for kind, name in _TEMPLATE.findall(rewrite):
                if kind == "params" and name not in params:
                    problems.add(path / "path", f"${{params.{name}}} is not a parameter of {key!r}")
    fmt = m.get("format", "auto")
    if fmt not in ROUTE_FORMATS:
        problems.add(
            path / "format", f"unknown format {fmt!r}; expected one of {', '.join(ROUTE_FORMATS)}"
        )
        fmt = "auto"
    keys = _choice(m, "keys", ROUTE_KEYS, path, problems)
    if upstream is None or not isinstance(upstream, str):
        return None
    if budget is not None and fmt == "none":
        problems.add(path / "budget", "a budget needs an LLM stream format (format is none)")
    if fmt == "none":
        # Nothing is counted on such a route: a per-token price could never be charged.
        if payment.session is not None:
            problems.add(
                path / "session", "per-token payment needs an LLM stream format (format is none)"
            )
        if payment.type == "token-based":
            problems.add(
                path / "type", "a token-based price needs an LLM request format (format is none)"
            )
    return Route(
        key=key,
        method=method,
        segments=segments,
        upstream=upstream,
        path=rewrite,
        format=fmt,
        budget=budget if isinstance(budget, str) else None,
        payment=payment,
        keys=keys,
    )


def _gateway(value: Any, path: KeyPath, problems: Problems) -> Gateway:
    m = _mapping(value, path, problems)
    if m is None:
        return Gateway()
    problems.unknown_keys(
        path,
        m,
        (
            "host",
            "port",
            "max_request_body",
            "trusted_proxies",
            "header_timeout",
            "keepalive_timeout",
            "body_timeout",
            "max_connections",
            "max_pending_bytes",
            "workers",
        ),
    )
    kw: dict[str, Any] = {}
    if "host" in m and (h := _str(m["host"], path / "host", problems)) is not None:
        kw["host"] = h
    if "port" in m and (p := _port(m["port"], path / "port", problems)) is not None:
        kw["port"] = p
    kw.update(problems.parsed(path, m, ("max_request_body", "max_pending_bytes"), parse_size)[0])
    if "trusted_proxies" in m:
        tp = m["trusted_proxies"]
        if not isinstance(tp, list) or not all(isinstance(x, str) for x in tp):
            problems.add(path / "trusted_proxies", "expected a list of addresses or networks")
        else:
            import ipaddress

            for i, x in enumerate(tp):
                try:
                    ipaddress.ip_network(x, strict=False)
                except ValueError:
                    problems.add(path / "trusted_proxies" / i, f"not an address or network: {x!r}")
            kw["trusted_proxies"] = tuple(tp)
    for key in ("header_timeout", "keepalive_timeout", "body_timeout"):
        if key in m:
            try:
                kw[key] = parse_duration(m[key])
                if kw[key] <= 0:
                    problems.add(path / key, "must be positive")
            except ValueError as e:
                problems.add(path / key, str(e))
    if "max_connections" in m and m["max_connections"] is not None:
        mc = as_number(m["max_connections"])
        if isinstance(mc, bool) or not isinstance(mc, int) or mc < 1:
            problems.add(path / "max_connections", f"expected a positive integer, got {mc!r}")
        else:
            kw["max_connections"] = mc
    if "workers" in m:
        w = as_number(m["workers"])
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            problems.add(path / "workers", f"expected a positive integer, got {w!r}")
        else:
            kw["workers"] = w
    return Gateway(**kw)


def _choice(
    m: dict[str, Any], key: str, choices: tuple[str, ...], path: KeyPath, problems: Problems
) -> str | None:
    if key not in m:
        return None
    v = m[key]
    if v not in choices:
        problems.add(path / key, f"expected one of {', '.join(choices)}, got {v!r}")
        return None
    return str(v)


def _usage(value: Any, path: KeyPath, problems: Problems) -> UsageSinkConfig:
    d = UsageSinkConfig()
    m = _mapping(value, path, problems) or {}
    problems.unknown_keys(path, m, ("sink", "path", "url", "schema", "max_pending"))
    sink = _choice(m, "sink", ("log", "sqlite", "postgres", "none"), path, problems) or d.sink
    upath = _str(m["path"], path / "path", problems) if "path" in m else d.path
    url = m.get("url")
    if sink == "postgres" and (
        not isinstance(url, str) or not url.startswith(("postgres://", "postgresql://"))
    ):
        problems.add(path / "url", "a postgres usage sink needs a postgresql:// URL")
    schema = m.get("schema")
    if schema is not None and (
        not isinstance(schema, str) or not re.match(r"^[a-z_][a-z0-9_]*$", schema)
    ):
        problems.add(path / "schema", "expected a lowercase SQL identifier")
        schema = None
    max_pending = as_number(m.get("max_pending", d.max_pending))
    if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
        problems.add(path / "max_pending", f"expected a positive integer, got {max_pending!r}")
        max_pending = d.max_pending
    return UsageSinkConfig(
        sink=sink,
        path=upath or d.path,
        url=url if isinstance(url, str) else None,
        schema=schema,
        max_pending=max_pending,
    )


def build_config(tree: Any, problems: Problems, source: str = "config") -> Config | None:
    root = KeyPath()
    top = _mapping(tree, root, problems)
    if top is None:
        return None
    problems.unknown_keys(
        root,
        top,
        (
            "gateway",
            "upstreams",
            "routes",
            "usage",
            "logging",
            "metrics",
            "budgets",
            "budget_store",
            "wallets",
            "accepts",
            "payments",
            "ledger",
            "keys",
            "sessions",
            "admin",
            "prices",
        ),
    )
    admin = parse_admin(top.get("admin"), root / "admin", problems)
    prices = parse_prices(top.get("prices"), root / "prices", problems)
    wallets = parse_wallets(top.get("wallets"), root / "wallets", problems)
    accepts = parse_accepts(top.get("accepts"), wallets, root / "accepts", problems)
    payments = parse_payments(top.get("payments"), root / "payments", problems)
    ledger = parse_ledger(top.get("ledger"), root / "ledger", problems)
    sessions = parse_sessions(top.get("sessions"), root / "sessions", problems)
    budgets: dict[str, BudgetPolicy] = {}
    bm = _mapping(top.get("budgets"), root / "budgets", problems) or {}
    for name, value in bm.items():
        pol = parse_policy(str(name), value, root / "budgets" / str(name), problems)
        if pol is not None:
            budgets[str(name)] = pol
    store = parse_store(top.get("budget_store"), root / "budget_store", problems)
    keys = parse_keys(top.get("keys"), root / "keys", problems)
    gateway = _gateway(top.get("gateway"), root / "gateway", problems)

    upstreams: dict[str, Upstream] = {}
    um = _mapping(top.get("upstreams"), root / "upstreams", problems) or {}
    for name, value in um.items():
        u = _upstream(str(name), value, root / "upstreams" / str(name), problems)
        if u is not None:
            upstreams[str(name)] = u

    routes: list[Route] = []
    rm = _mapping(top.get("routes"), root / "routes", problems) or {}
    if not rm:
        problems.add(root / "routes", "at least one route is required")
    seen: dict[tuple[str, tuple[str, ...]], str] = {}
    for key, value in rm.items():
        r = _route(str(key), value, root / "routes" / str(key), problems, um, bm)
        if r is None:
            continue
        norm = (r.method, tuple(":" if s.startswith(":") else s for s in r.segments))
        if norm in seen:
            problems.add(root / "routes" / str(key), f"same method and path as {seen[norm]!r}")
        seen[norm] = r.key
        routes.append(r)

    usage = _usage(top["usage"], root / "usage", problems) if "usage" in top else UsageSinkConfig()

    logging_ = Logging()
    if "logging" in top:
        m = _mapping(top["logging"], root / "logging", problems) or {}
        problems.unknown_keys(root / "logging", m, ("level", "format"))
        level = _choice(
            m, "level", ("debug", "info", "warning", "error"), root / "logging", problems
        )
        fmt = _choice(m, "format", ("json", "text"), root / "logging", problems)
        logging_ = Logging(level=level or logging_.level, format=fmt or logging_.format)

    metrics = Metrics()
    if "metrics" in top:
        m = _mapping(top["metrics"], root / "metrics", problems) or {}
        problems.unknown_keys(root / "metrics", m, ("enabled", "path", "key_label"))
        enabled = m.get("enabled", True)
        if not isinstance(enabled, bool):
            problems.add(root / "metrics" / "enabled", "expected true or false")
            enabled = True
        mpath = m.get("path", "/metrics")
        if not isinstance(mpath, str) or not mpath.startswith("/"):
            problems.add(root / "metrics" / "path", "expected a path starting with '/'")
            mpath = "/metrics"
        key_label = parse_key_label(
            m.get("key_label", "off"), root / "metrics" / "key_label", problems
        )
        metrics = Metrics(enabled=enabled, path=mpath, key_label=key_label)

    priced = [r for r in routes if r.payment.priced]
    metered = [r for r in routes if r.payment.session is not None]
    if metered:
        check_payee(sessions, accepts, root / "sessions", problems)
    # A price's and a session's challenges alike are bound by the secret and name what to pay
    # in: without them every 402 would carry no challenge at all.
    paying = priced or metered
    if paying:
        first = paying[0]
        why = "has a price" if first.payment.priced else "is paid per token (session:)"
        if payments.secret is None:
            problems.add(
                root / "payments" / "secret",
                f"required: route {first.key!r} {why} (the secret binds challenge ids)",
            )
        if not accepts:
            problems.add(
                root / "accepts",
                f"required: route {first.key!r} {why}; say what to accept",
            )
    for r in routes:
        # A combination that cannot be honoured is refused here, not with a 401 per request.
        policy = budgets.get(r.budget) if r.budget is not None else None
        if (
            policy is not None
            and policy.key.kind == "payer"
            and not (r.payment.priced or r.payment.session is not None)
        ):
            problems.add(
                root / "routes" / r.key / "budget",
                f"budget {policy.name!r} is keyed by the payer, and nothing pays on this route "
                "(add a price or session:, or key the budget by api_key, ip or a header)",
            )
    if keys is None:
        for r in routes:
            if r.keys == "required":
                # Refused rather than served open: the operator asked for verified keys.
                problems.add(
                    root / "routes" / r.key / "keys",
                    "`required` needs a key registry: add a `keys:` section",
                )
    needs_access = [r for r in routes if r.payment.require_access or r.payment.mint_access_ttl]
    if needs_access and payments.secret is None and payments.access_secret is None:
        problems.add(
            root / "payments" / "access_secret",
            f"required: route {needs_access[0].key!r} uses access tokens",
        )
    if problems:
        return None
    return Config(
        gateway=gateway,
        upstreams=MappingProxyType(upstreams),
        routes=tuple(routes),
        usage=usage,
        logging=logging_,
        metrics=metrics,
        budgets=MappingProxyType(budgets),
        budget_store=store,
        wallets=MappingProxyType(wallets),
        accepts=tuple(accepts),
        payments=payments,
        ledger=ledger,
        sessions=sessions,
        keys=keys,
        source=source,
        admin=admin,
        prices=MappingProxyType(dict(prices)),
    )
