"""Admission of a request whose completion was paid for up front (budgets/admission.py,
pure): granted whole at admission, never leased mid-stream."""

from __future__ import annotations

from meterkit.budgets import admission
from meterkit.config import config_from_dict


def policy(**over: object):  # type: ignore[no-untyped-def]
    tree = {
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "budgets": {"b": {"key": "ip", "tokens_per_day": 10_000, **over}},
        "routes": {"POST /v1/chat/completions": {"upstream": "u", "budget": "b"}},
    }
    return config_from_dict(tree).budgets["b"]


def test_a_streamed_request_leases_its_completion_as_it_goes() -> None:
    p = admission.plan(policy(max_completion_tokens=300), 500, 9, stream=True)
    assert (p.cap, p.first, p.need, p.take, p.mid_stream, p.prompt) == (300, 100, 309, 109, True, 9)


def test_paid_completion_is_reserved_whole_and_never_leased() -> None:
    p = admission.plan(policy(max_completion_tokens=300), 500, 9, stream=True)
    paid = admission.prepaid(p, 250)
    assert (paid.cap, paid.first, paid.need, paid.take, paid.mid_stream) == (
        250,
        250,
        259,
        259,
        False,
    )
    # Paid for more than the budget allows a request (a quote made without its cap): the
    # budget's cap still holds.
    assert admission.prepaid(p, 1000).cap == 300
    # Shadow stays shadow.
    shadow = admission.plan(policy(mode="shadow"), None, 9, stream=True)
    assert admission.prepaid(shadow, 10).shadow
