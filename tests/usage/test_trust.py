"""Which completion figure bills (usage/trust.py), as a pure decision."""

from __future__ import annotations

import pytest

from meterkit.usage.trust import ABSURD, completion, usable


@pytest.mark.parametrize("value", [-1, -3, 1.5, "5", True, None, [1], {"a": 1}, ABSURD, 10**30])
def test_only_non_negative_integers_of_a_sane_size_are_usable(value: object) -> None:
    assert usable(value) is None


def test_usable_figures_pass() -> None:
    assert [usable(v) for v in (0, 5, ABSURD - 1)] == [0, 5, ABSURD - 1]


def bill(reported, counted=5, prov="counted", reasoning=None, limit=None, source="max"):  # type: ignore[no-untyped-def]
    return completion(
        reported=reported,
        counted=counted,
        counted_provenance=prov,
        reasoning=reasoning,
        limit=limit,
        source=source,
    )


def test_a_plausible_report_is_believed_and_no_discrepancy_is_recorded() -> None:
    b = bill(5)
    assert (b.tokens, b.provenance, b.discrepancy) == (5, "provider", None)
    # Reasoning the wire never showed, within the request's limit.
    b = bill(300, reasoning=295, limit=400)
    assert (b.tokens, b.discrepancy) == (300, None)


def test_a_report_below_the_wire_is_raised_to_the_count() -> None:
    b = bill(0)
    assert (b.tokens, b.provenance) == (5, "counted")
    assert b.discrepancy == {"kind": "below_counted", "reported": 0, "counted": 5, "billed": 5}


def test_an_absurd_report_is_brought_down_to_what_the_request_could_produce() -> None:
    b = bill(10**11, limit=50)
    assert b.tokens == 5 and b.discrepancy is not None
    assert b.discrepancy["kind"] == "above_plausible"
    # Claimed reasoning is bounded by the limit too.
    b = bill(10**11, reasoning=10**11, limit=50)
    assert b.tokens == 50


def test_the_policy_decides_out_of_range_reports() -> None:
    assert bill(0, source="provider").tokens == 0
    assert bill(0, source="provider").discrepancy is not None
    assert bill(900, source="counted").tokens == 5
    assert bill(900, reasoning=100, source="counted").tokens == 105
    assert bill(900, reasoning=100, source="max").tokens == 105


def test_an_estimated_count_is_no_floor_but_the_limit_still_bounds() -> None:
    assert bill(2, counted=10, prov="estimated").tokens == 2
    b = bill(10**6, counted=10, prov="estimated", limit=100)
    assert b.tokens == 100 and b.discrepancy is not None
    assert b.discrepancy["kind"] == "above_limit"


def test_no_report_bills_the_count_and_nothing_bills_nothing() -> None:
    assert bill(None).tokens == 5
    assert (
        completion(
            reported=None,
            counted=None,
            counted_provenance=None,
            reasoning=None,
            limit=None,
            source="max",
        )
        is None
    )
