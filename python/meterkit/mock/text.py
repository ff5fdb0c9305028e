"""Deterministic model output made of words that are one token each in both `o200k_base`
and `cl100k_base`, so the mock's true usage is simply the number of words it sent, and a
metering proxy's exact count must agree with it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cache
from typing import overload

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


class Words(Sequence[str]):
    """`n` one-token words, computed on demand (a mock stream may be millions of tokens long
    and must not materialise them). The first word has no leading space, like a real answer.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed & 0xFFFFFFFFFFFFFFFF
        self.vocab = vocabulary()

    def __len__(self) -> int:
        return self.n

    def _word(self, i: int) -> str:
        # splitmix64 of (seed, i): deterministic, independent of the access order.
        z = (self.seed + 0x9E3779B97F4A7C15 * (i + 1)) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        w = self.vocab[(z ^ (z >> 31)) % len(self.vocab)]
        return "The" if i == 0 else w

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self._word(j) for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self._word(i % self.n)

    def __iter__(self) -> Iterator[str]:
        return (self._word(i) for i in range(self.n))


def words(n: int, seed: int) -> Words:
    return Words(n, seed)
