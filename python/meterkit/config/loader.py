"""Reading a config file: YAML with duplicate keys refused, then `${ENV}` interpolation.

`${NAME}` and `${NAME:-default}` are replaced in every string at load time; an unset variable
without a default is an error naming the variable and the key path. `${params.x}` and
`${query.x}` are left for request time, and `$${` writes a literal `${`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from meterkit.config.problems import KeyPath, Problems

_ENV = re.compile(r"\$(\$?)\{([^}]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
REQUEST_TIME_PREFIXES = ("params.", "query.")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last one."""


def _construct_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; syntax errors become a ValueError with line and column."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e)
        raise ValueError(f"{where}: invalid YAML: {problem}") from None


def interpolate(
    value: Any, path: KeyPath, problems: Problems, env: Mapping[str, str] | None = None
) -> Any:
    """Replace `${ENV}` in every string of a parsed YAML tree."""
    env = os.environ if env is None else env
    if isinstance(value, str):
        return _interpolate_str(value, path, problems, env)
    if isinstance(value, dict):
        return {k: interpolate(v, path / k, problems, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, path / i, problems, env) for i, v in enumerate(value)]
    return value


def _interpolate_str(s: str, path: KeyPath, problems: Problems, env: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        escaped, body = m.group(1), m.group(2)
        if escaped:
            return "${" + body + "}"
        if body.startswith(REQUEST_TIME_PREFIXES):
            return m.group(0)
        name, sep, default = body.partition(":-")
        if not _NAME.match(name):
            problems.add(path, f"invalid variable reference ${{{body}}}")
            return m.group(0)
        if name in env:
            return env[name]
        if sep:
            return default
        problems.add(path, f"environment variable {name} is not set")
        return m.group(0)

    return _ENV.sub(sub, s)
