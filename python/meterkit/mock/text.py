"""Deterministic model output made of words that are one token each in both `o200k_base`
and `cl100k_base`, so the mock's true usage is simply the number of words it sent, and a
metering proxy's exact count must agree with it."""

from __future__ import annotations

import random
from functools import cache

from meterkit import count_tokens

_CANDIDATES = (
    "the of and to in is it that for on with as was at by be this from or an are not but "
    "have had they you were their one all we can her has there been if more when will would "
    "who so no out up into do than its them some time could these two may first then did "
    "only new very people also other over just like any after most made well where should "
    "through because each those such world life back same still here long good down way "
    "even system data model token stream proxy meter budget price value number part work "
    "place case point group report rate level order water light power money market code "
    "question answer result method test answer reason space state line plan"
).split()


@cache
def vocabulary() -> tuple[str, ...]:
    words = []
    for w in dict.fromkeys(_CANDIDATES):
        piece = " " + w
        if all(count_tokens(piece, encoding=e) == 1 for e in ("o200k_base", "cl100k_base")):
            words.append(piece)
    return tuple(words)


def words(n: int, seed: int) -> list[str]:
    """`n` one-token words; the first has no leading space (like a real answer's start)."""
    rng = random.Random(seed)
    vocab = vocabulary()
    out = [rng.choice(vocab) for _ in range(n)]
    if out:
        out[0] = out[0].lstrip()
        # Without its space the first word must still be one token and must not merge.
        if (
            count_tokens(out[0], encoding="o200k_base") != 1
            or count_tokens(out[0], encoding="cl100k_base") != 1
        ):
            out[0] = "The"
    return out
