"""Route matching and path rewriting: pure functions of the configured routes and a request
line, tested without sockets."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

from meterkit.config import Route

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


class Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        # sorted() is stable: equally specific routes keep their config order.
        self.routes = sorted(routes, key=_specificity)

    def match(self, method: str, raw_path: str) -> tuple[Match | None, bool]:
        """(match, path_known). `path_known` is true when some route has this path but not
        this method, which is a 405 rather than a 404."""
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
