"""`gateway.max_pending_bytes` sets the core's process-wide bound on held event bytes (its
behaviour is tested in the core: the largest holder ends with an error ending)."""

from __future__ import annotations

from meterkit import _core
from meterkit.config import config_from_dict
from meterkit.proxy.app import build_app


def tree(size: object) -> dict[str, object]:
    return {
        "gateway": {"max_pending_bytes": size},
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "routes": {"POST /v1/chat/completions": {"upstream": "u"}},
    }


def test_the_configured_bound_reaches_the_core() -> None:
    before = _core.pending_budget()
    try:
        build_app(config_from_dict(tree("1MiB")))
        assert _core.pending_budget() == 1024 * 1024
        build_app(config_from_dict(tree(0)))
        assert _core.pending_budget() is None
    finally:
        _core.set_pending_budget(before)
    assert (
        config_from_dict(
            {k: v for k, v in tree(1).items() if k != "gateway"}
        ).gateway.max_pending_bytes
        == 256 * 1024 * 1024
    )
