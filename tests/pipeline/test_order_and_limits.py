"""The declared stage order (pipeline/order.py) with fake stages, and the caps and gates that
combine (pipeline/limits.py) without sockets."""

from __future__ import annotations

import asyncio

import pytest

from meterkit.pipeline import ORDER, Stage, ordered
from meterkit.pipeline.limits import Caps, Gates


class Fake(Stage):
    def __init__(self, name: str) -> None:
        self.name = name


def test_configured_stages_take_their_declared_places_and_added_ones_follow() -> None:
    stages = [Fake(n) for n in ("payment", "budget", "keys", "session", "hooks")]
    mine = [Fake("mine"), Fake("also-mine")]
    got = [s.name for s in ordered(stages, mine)]
    assert got == [*ORDER, "mine", "also-mine"]
    assert list(ORDER) == ["keys", "hooks", "budget", "session", "payment"]


def test_a_stage_without_a_declared_place_or_twice_is_a_bug() -> None:
    with pytest.raises(ValueError, match="no place"):
        ordered([Fake("keys"), Fake("surprise")])
    with pytest.raises(ValueError, match="twice"):
        ordered([Fake("keys"), Fake("keys")])


def test_enforced_caps_cut_at_the_smallest_and_shadow_caps_only_watch() -> None:
    caps = Caps()
    assert (caps.limit, caps.shadow_limit, caps.effective(None)) == (None, None, None)
    caps.add("budget", 50, shadow=True)
    assert (caps.limit, caps.shadow_limit) == (None, 50)
    assert caps.effective(150) == 150  # a shadow cap prices nothing away
    caps.add("payment", 120)
    caps.add("other", 80)
    assert caps.limit == 80 and caps.effective(150) == 80 and caps.effective(60) == 60
    caps.add("other", 200)  # an owner replaces only its own
    assert caps.limit == 120


def test_gates_pause_at_the_smallest_and_ask_only_the_gate_that_holds_the_stream() -> None:
    asked: list[tuple[str, int]] = []

    def more(name: str, grants: list[int | None]):  # type: ignore[no-untyped-def]
        async def give(delivered: int, emit) -> int | None:  # type: ignore[no-untyped-def]
            asked.append((name, delivered))
            return grants.pop(0)

        return give

    async def go() -> None:
        async def emit(_: bytes) -> None:
            pass

        gates = Gates()
        assert not gates and gates.credit is None
        gates.add("budget", 100, more("budget", [100, 0]))
        gates.add("payment", 30, more("payment", [50, 50]))
        assert gates.credit == 30
        # The session's credit holds the stream: only it is asked.
        assert await gates.refill(30, emit) is None
        assert asked == [("payment", 30)] and gates.credit == 80
        assert await gates.refill(80, emit) is None
        assert asked[-1] == ("payment", 80) and gates.credit == 100
        # Now the budget holds it: the budget is asked, and it has more.
        assert await gates.refill(100, emit) is None
        assert asked[-1] == ("budget", 100) and gates.credit == 130
        # Both at 130 would ask both; here the payment's next grant is the smaller.
        asked.clear()
        gates2 = Gates()
        gates2.add("budget", 10, more("budget", [0]))
        gates2.add("payment", 10, more("payment", [5]))
        # The first gate (in the order added) with nothing more ends the stream and names it.
        assert await gates2.refill(10, emit) == "budget"
        assert asked == [("budget", 10)]
        # A gate that stops gating (a budget store failing open) leaves.
        gates3 = Gates()
        gates3.add("budget", 10, more("budget", [None]))
        assert await gates3.refill(10, emit) is None and gates3.credit is None

    asyncio.run(go())
