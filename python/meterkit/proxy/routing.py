"""Route matching and path rewriting: pure functions of the configured routes and a request
line, tested without sockets."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

import aiohttp

from meterkit.config import Config, Route, Upstream

_TEMPLATE = re.compile(r"\$\{(params|query)\.([^}]*)\}")


@dataclass(frozen=True)
class Match:
    route: Route
    params: Mapping[str, str]


def _specificity(route: Route) -> tuple[int, int, int]:
    """More literal segments first; a trailing `*` last; then more segments first."""
    literal = sum(1 for s in route.segments if not s.startswith(":") and s != "*")
    wildcard = 1 if route.segments and route.segments[-1] == "*" else 0
    return (-literal, wildcard, -len(route.segments))


# Request lines whose match is remembered: an API is called on a handful of paths; one
# with ids in its path (or a scan) fills it and it starts over, so memory stays bounded.
_MEMO_SIZE = 1024
_MEMO_PATH = 512


class Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        # sorted() is stable: equally specific routes keep their config order.
        self.routes = sorted(routes, key=_specificity)
        self._memo: dict[tuple[str, str], tuple[Match | None, bool]] = {}

    def match(self, method: str, raw_path: str) -> tuple[Match | None, bool]:
        """(match, path_known). `path_known` is true when some route has this path but not
        this method, which is a 405 rather than a 404."""
        # Routing is a pure function of the request line: split, unquote and walk the
        # routes once per line, not per request (2.0 -> 0.1 µs, issue 14 item 2). A Match is frozen
        # and its params are copied by whoever keeps them.
        key = (method, raw_path)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._match(method, raw_path)
            if len(raw_path) <= _MEMO_PATH:
                if len(self._memo) >= _MEMO_SIZE:
                    self._memo.clear()
                self._memo[key] = hit
        return hit

    def _match(self, method: str, raw_path: str) -> tuple[Match | None, bool]:
        segments = [unquote(s) for s in raw_path.split("?", 1)[0].split("/") if s]
        path_known = False
        for route in self.routes:
            params = _match_segments(route.segments, segments)
            if params is None:
                continue
            if route.method in ("*", method) or (route.method == "GET" and method == "HEAD"):
                return Match(route, params), True
            path_known = True
        return None, path_known


def _match_segments(pattern: Sequence[str], segments: Sequence[str]) -> dict[str, str] | None:
    params: dict[str, str] = {}
    for i, p in enumerate(pattern):
        if p == "*":
            params["*"] = "/".join(segments[i:])
            return params
        if i >= len(segments):
            return None
        if p.startswith(":"):
            params[p[1:]] = segments[i]
        elif p != segments[i]:
            return None
    return params if len(segments) == len(pattern) else None


def upstream_path(
    route: Route, params: Mapping[str, str], raw_path: str, query: Mapping[str, str], raw_query: str
) -> str:
    """The path (with query string) to request from the upstream.

    Without a rewrite the client's raw path and query pass unchanged. A rewrite template gets
    `${params.x}` / `${query.x}` substituted (percent-encoded); a template without its own
    query string gets the client's query string, one with a query string replaces it.
    """
    if route.path is None:
        return raw_path + (f"?{raw_query}" if raw_query else "")

    def sub(m: re.Match[str]) -> str:
        source = params if m.group(1) == "params" else query
        return quote(source.get(m.group(2), ""), safe="")

    path = _TEMPLATE.sub(sub, route.path)
    if raw_query and "?" not in path:
        path += "?" + raw_query
    return path


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """What every request of a route shares, worked out once from the config instead of
    per request (issue 14 item 2)."""

    route: Route
    upstream: Upstream
    # The route's fixed stream format; None for a plain HTTP route or when `detect`.
    format: str | None
    # `format: auto`: the format is told from the upstream (or the client's) path.
    detect: bool
    # The aiohttp timeouts of its upstream requests (see `proxy.upstream.client_timeout`).
    timeout: aiohttp.ClientTimeout


def route_plans(config: Config) -> dict[str, RoutePlan]:
    """The plan of every route, by route key."""
    out: dict[str, RoutePlan] = {}
    for route in config.routes:
        up = config.upstreams[route.upstream]
        out[route.key] = RoutePlan(
            route=route,
            upstream=up,
            format=None if route.format in ("none", "auto") else route.format,
            detect=route.format == "auto",
            timeout=client_timeout(up),
        )
    return out


def client_timeout(up: Upstream) -> aiohttp.ClientTimeout:
    """The aiohttp timeouts of an upstream's requests: connecting only. The wait for the
    response headers (`first_byte`) and for each body read (`idle`) are the proxy's idle
    watchdog's, and there is deliberately no total."""
    return aiohttp.ClientTimeout(
        total=None, connect=up.timeouts.connect, sock_connect=up.timeouts.connect
    )
