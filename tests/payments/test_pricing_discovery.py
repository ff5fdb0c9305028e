"""Issue 9 #10, silent mispricing: glob model keys (exact beats the most specific glob beats
`default`), validated when the config loads; discovery lists what a token-based route accepts,
renders rates canonically, and names operations with identifiers."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest

from meterkit.config import ConfigError, config_from_dict
from meterkit.payments.discovery import decimal_text, openapi, well_known
from meterkit.payments.pricing import Unpriceable, quote

PAY_TO = "0x" + "22" * 20
CHAT = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 10}


def config(routes: dict[str, Any]) -> Any:
    return config_from_dict(
        {
            "wallets": {"base-sepolia": PAY_TO},
            "accepts": [{"asset": "USDC", "network": "base-sepolia"}],
            "payments": {"secret": "payment-secret-for-tests-0123456789"},
            "upstreams": {"api": {"url": "http://127.0.0.1:9"}},
            "routes": routes,
        }
    )


def priced(price: Any) -> Any:
    return config({"POST /v1/chat/completions": {"upstream": "api", "price": price}}).routes[0]


PRICES = {
    "gpt-4o": "$0.02",
    "gpt-4o-*": "$0.01",
    "claude-*": "$0.05",
    "claude-3-5-*": "$0.04",
    "*-mini": "$0.003",
    "default": "$0.10",
}


@pytest.mark.parametrize(
    ("model", "price"),
    [
        ("gpt-4o", "0.02"),  # exact
        ("gpt-4o-2024-08-06", "0.02"),  # a dated version of an exact key
        ("gpt-4o-mini", "0.01"),  # `gpt-4o-*` has more literal characters than `*-mini`
        ("o4-mini", "0.003"),
        ("claude-3-opus-20240229", "0.05"),  # regression: was the default
        ("claude-3-5-sonnet-latest", "0.04"),  # the more specific glob
        ("llama-3", "0.10"),
        (None, "0.10"),
    ],
)
def test_model_price_keys(model: str | None, price: str) -> None:
    route = priced(PRICES)
    assert quote(route.payment, None, None, model).price == Decimal(price)


def test_glob_rates_for_token_based_routes() -> None:
    route = config(
        {
            "POST /v1/messages": {
                "upstream": "api",
                "type": "token-based",
                "rates": {"claude-*": {"input": "$3", "output": "$15"}},
            }
        }
    ).routes[0]
    q = quote(
        route.payment,
        {"model": "claude-3-5-sonnet", **CHAT},
        "anthropic",
        "claude-3-5-sonnet",
    )
    assert q.basis == "token-based" and q.price > 0
    with pytest.raises(Unpriceable):
        quote(route.payment, {"model": "gpt-4o", **CHAT}, "openai-chat", "gpt-4o")


def test_no_implicit_family_for_a_different_model() -> None:
    """`gpt-4o` no longer prices `gpt-4o-mini` (a prefix is not a family; dates are)."""
    route = priced({"gpt-4o": "$0.02", "default": "$0.10"})
    assert quote(route.payment, None, None, "gpt-4o-mini").price == Decimal("0.10")
    assert quote(route.payment, None, None, "gpt-4o-20240806").price == Decimal("0.02")


@pytest.mark.parametrize("key", ["claude [x]", "", "gpt 4o", "**", "claude-[0-9]", "é"])
def test_bad_model_keys_are_config_errors(key: str) -> None:
    with pytest.raises(ConfigError, match="model"):
        priced({key: "$0.01", "default": "$0.10"})
    with pytest.raises(ConfigError, match="model"):
        config(
            {
                "POST /v1/messages": {
                    "upstream": "api",
                    "type": "token-based",
                    "rates": {key: {"input": "$3", "output": "$15"}},
                }
            }
        )


# ---- discovery --------------------------------------------------------------------------------


ROUTES = {
    "POST /v1/chat/completions": {
        "upstream": "api",
        "type": "token-based",
        "rates": {"gpt-4o": {"input": "$2.50", "output": "$10.00"}},
    },
    "POST /fixed": {"upstream": "api", "price": "$0.25"},
    "POST /per-model": {"upstream": "api", "price": {"gpt-4o": "$0.02", "claude-*": "$0.05"}},
    "GET /session/:id/events": {"upstream": "api", "price": "$0.01"},
    "* /any/*": {"upstream": "api", "price": "$1"},
}


def test_well_known_lists_accepts_of_every_priced_route() -> None:
    doc = well_known(config(ROUTES), "https://gw")
    by_path = {r["path"]: r for r in doc["resources"]}
    token = by_path["/v1/chat/completions"]
    assert token["accepts"], "a token-based route listed no accepts"
    (acc,) = token["accepts"]
    assert "amount" not in acc and acc["extra"]["pricing"] == "token-based"
    assert (acc["network"], acc["payTo"]) == ("eip155:84532", PAY_TO)
    assert [a["amount"] for a in by_path["/fixed"]["accepts"]] == ["250000"]
    per_model = by_path["/per-model"]["accepts"]
    assert sorted((a["extra"]["model"], a["amount"]) for a in per_model) == [
        ("claude-*", "50000"),
        ("gpt-4o", "20000"),
    ]


def test_rates_render_canonically() -> None:
    doc = well_known(config(ROUTES), "https://gw")
    rates = next(r for r in doc["resources"] if r["path"] == "/v1/chat/completions")["pricing"]
    assert rates["rates_per_million_tokens"] == {"gpt-4o": {"input": "2.5", "output": "10"}}
    assert {r["path"]: r["pricing"].get("price") for r in doc["resources"]}["/fixed"] == "$0.25"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("2.5000000", "2.5"),
        ("10.000", "10"),
        ("1E+1", "10"),
        ("0.0000025", "0.0000025"),
        ("0", "0"),
    ],
)
def test_decimal_text(value: str, text: str) -> None:
    assert decimal_text(Decimal(value)) == text


def test_openapi_operation_ids_are_unique_identifiers() -> None:
    doc = openapi(config(ROUTES), "https://gw")
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", i) for i in ids), ids
    assert len(ids) == len(set(ids))
    assert doc["paths"]["/v1/chat/completions"]["post"]["operationId"] == "post_v1_chat_completions"
    assert doc["paths"]["/session/{id}/events"]["get"]["operationId"] == "get_session_by_id_events"
