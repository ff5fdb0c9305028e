"""Config problems with the key path they concern, collected so that every problem is
reported at once (`meterkit validate` lists them all)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class KeyPath:
    """A key path like `routes."POST /v1/chat".upstream` (keys with spaces are quoted)."""

    parts: tuple[str | int, ...] = ()

    def __truediv__(self, key: str | int) -> KeyPath:
        return KeyPath((*self.parts, key))

    def __str__(self) -> str:
        out = ""
        for p in self.parts:
            if isinstance(p, int):
                out += f"[{p}]"
            elif _PLAIN.match(p):
                out += ("." if out else "") + p
            else:
                out += ("." if out else "") + '"' + p.replace('"', '\\"') + '"'
        return out or "(top level)"


@dataclass(frozen=True)
class ConfigProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class Problems:
    def __init__(self) -> None:
        self.items: list[ConfigProblem] = []

    def add(self, path: KeyPath, message: str) -> None:
        self.items.append(ConfigProblem(str(path), message))

    def unknown_keys(self, path: KeyPath, given: Iterable[object], known: Iterable[str]) -> None:
        known = list(known)
        for key in given:
            if key in known:
                continue
            hint = difflib.get_close_matches(str(key), known, n=1)
            suggestion = (
                f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(known)}"
            )
            self.add(path / str(key), f"unknown key{suggestion}")

    def parsed(
        self,
        path: KeyPath,
        value: Mapping[str, Any],
        keys: Iterable[str],
        parse: Callable[[Any], T],
    ) -> tuple[dict[str, T], bool]:
        """`parse` each of `keys` present in `value` (a duration, a size, an amount): what
        parsed, and whether everything did; a value it refuses (ValueError) is a problem at
        its key path, with the parser's message."""
        out: dict[str, T] = {}
        ok = True
        for k in keys:
            if k in value:
                try:
                    out[k] = parse(value[k])
                except ValueError as e:
                    self.add(path / k, str(e))
                    ok = False
        return out, ok

    def __bool__(self) -> bool:
        return bool(self.items)


class ConfigError(ValueError):
    """Invalid configuration: every problem, each with its key path."""

    def __init__(
        self, problems: list[ConfigProblem], source: str = "config", unreadable: bool = False
    ) -> None:
        self.problems = problems
        self.source = source
        # The file itself could not be read (missing, a folder, no permission): the CLI's
        # exit code 5, not an invalid config's 1.
        self.unreadable = unreadable
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")
