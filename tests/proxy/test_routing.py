"""Routing and header rules: pure functions, no sockets."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from meterkit.config import config_from_dict
from meterkit.proxy.headers import client_response_headers, upstream_request_headers
from meterkit.proxy.routing import Router, upstream_path


def router() -> Router:
    config = config_from_dict(
        {
            "upstreams": {"u": {"url": "http://x"}},
            "routes": {
                "GET /session/:id/events": {
                    "upstream": "u",
                    "path": "/s/${params.id}/ev?since=${query.since}",
                },
                "GET /session/live/events": {"upstream": "u"},
                "* /files/*": {"upstream": "u"},
                "POST /v1/chat/completions": {"upstream": "u"},
            },
        }
    )
    return Router(config.routes)


def test_specific_routes_win_and_params_are_decoded() -> None:
    r = router()
    m, _ = r.match("GET", "/session/live/events")
    assert m is not None and m.route.key == "GET /session/live/events"
    m, _ = r.match("GET", "/session/a%20b/events")
    assert m is not None and m.params == {"id": "a b"}
    m, _ = r.match("PUT", "/files/a/b/c")
    assert m is not None and m.params == {"*": "a/b/c"}


def test_unknown_path_and_wrong_method() -> None:
    r = router()
    assert r.match("GET", "/nope") == (None, False)
    assert r.match("GET", "/v1/chat/completions") == (None, True)
    m, _ = r.match("HEAD", "/session/x/events")
    assert m is not None


def test_rewrite_encodes_values_and_keeps_the_query() -> None:
    r = router()
    m, _ = r.match("GET", "/session/a%2Fb/events")
    assert m is not None
    path = upstream_path(
        m.route, m.params, "/session/a%2Fb/events", {"since": "5 min"}, "since=5%20min&x=1"
    )
    assert path == "/s/a%2Fb/ev?since=5%20min"
    m, _ = r.match("POST", "/v1/chat/completions")
    assert m is not None
    assert (
        upstream_path(m.route, m.params, "/v1/chat/completions", {}, "a=1")
        == "/v1/chat/completions?a=1"
    )


def test_request_headers_filter_hop_by_hop_and_add_forwarding() -> None:
    incoming = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Host", "proxy"),
                ("Connection", "keep-alive, X-Secret"),
                ("X-Secret", "1"),
                ("Keep-Alive", "5"),
                ("Authorization", "Bearer client"),
                ("X-Forwarded-For", "10.0.0.1"),
                ("Content-Length", "5"),
                ("TE", "trailers"),
                ("Accept-Encoding", "gzip"),
            ]
        )
    )
    out = upstream_request_headers(
        incoming,
        [("Authorization", "Bearer upstream")],
        client_ip="127.0.0.1",
        scheme="http",
        host="proxy:8080",
        request_id="rid",
        metered=True,
    )
    assert (
        "X-Secret" not in out and "Keep-Alive" not in out and "TE" not in out and "Host" not in out
    )
    assert out["Authorization"] == "Bearer upstream"
    assert out["X-Forwarded-For"] == "10.0.0.1, 127.0.0.1"
    assert out["Forwarded"] == "for=127.0.0.1;proto=http;host=proxy:8080"
    assert out["Accept-Encoding"] == "identity"
    assert out["X-Request-Id"] == "rid"
    v6 = upstream_request_headers(
        CIMultiDictProxy(CIMultiDict()),
        [],
        client_ip="::1",
        scheme="https",
        host=None,
        request_id="r",
        metered=False,
    )
    assert v6["Forwarded"] == 'for="[::1]";proto=https'


def test_response_headers_for_event_streams() -> None:
    up = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Content-Type", "text/event-stream"),
                ("Transfer-Encoding", "chunked"),
                ("Content-Length", "10"),
                ("X-Upstream", "y"),
            ]
        )
    )
    out = client_response_headers(up, event_stream=True, request_id="r")
    assert "Transfer-Encoding" not in out and "Content-Length" not in out
    assert out["X-Accel-Buffering"] == "no" and out["Cache-Control"] == "no-cache"
    assert out["X-Upstream"] == "y" and out["X-Request-Id"] == "r"
