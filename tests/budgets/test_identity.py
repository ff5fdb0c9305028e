"""Who a budget belongs to: identities from headers and addresses, pure functions."""

from __future__ import annotations

from meterkit.budgets.identity import client_ip, identity_of, networks
from meterkit.config.budgets import KeySpec
from meterkit.formats import requested_max


def test_identities_are_hashed_and_verified() -> None:
    h = {"Authorization": "Bearer sk-secret"}
    key = identity_of(KeySpec("api_key"), h, "1.2.3.4", [], None)
    assert key is not None and key.startswith("ak_") and "sk-secret" not in key
    assert identity_of(KeySpec("api_key"), {"x-api-key": "sk-secret"}, None, [], None) == key
    assert identity_of(KeySpec("api_key"), {}, "1.2.3.4", [], None) is None
    assert identity_of(KeySpec("header", "X-User"), {"X-User": "alice"}, None, [], None).startswith(
        "h_"
    )  # type: ignore[union-attr]
    assert identity_of(KeySpec("payer"), {}, None, [], None) is None
    assert identity_of(KeySpec("payer"), {}, None, [], "0xABC") == "payer_0xabc"


def test_client_ip_believes_forwarded_for_only_from_trusted_proxies() -> None:
    trusted = networks(["10.0.0.0/8"])
    assert client_ip("203.0.113.9", "1.1.1.1", trusted) == "203.0.113.9"
    assert client_ip("10.0.0.2", "198.51.100.7, 10.0.0.5", trusted) == "198.51.100.7"
    assert client_ip("10.0.0.2", "garbage", trusted) == "10.0.0.2"
    assert client_ip("::1", None, []) == "::1"


def test_requested_max_per_format() -> None:
    assert requested_max({"max_tokens": 50, "max_completion_tokens": 20}, "openai-chat") == (
        20,
        "max_completion_tokens",
    )
    assert requested_max({}, "openai-chat") == (None, "max_completion_tokens")
    assert requested_max({"max_output_tokens": 7}, "openai-responses") == (7, "max_output_tokens")
    assert requested_max({"max_tokens": True}, "anthropic") == (None, "max_tokens")
