"""Configuration: YAML in, a frozen `Config` out, or a `ConfigError` listing every problem
with its key path.

    config = load_config("meterkit.yaml")
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meterkit.config.loader import interpolate, parse_yaml
from meterkit.config.problems import ConfigError, ConfigProblem, KeyPath, Problems
from meterkit.config.schema import (
    Config,
    Gateway,
    Logging,
    Metrics,
    Route,
    Timeouts,
    Upstream,
    UsageSink,
    UsageSinkConfig,
    build_config,
    parse_route_key,
)
from meterkit.config.units import parse_duration, parse_money, parse_size

__all__ = [
    "Config",
    "ConfigError",
    "ConfigProblem",
    "Gateway",
    "Logging",
    "Metrics",
    "Route",
    "Timeouts",
    "Upstream",
    "UsageSink",
    "UsageSinkConfig",
    "config_from_dict",
    "config_from_text",
    "load_config",
    "parse_duration",
    "parse_money",
    "parse_route_key",
    "parse_size",
    "resolve_paths",
]


def config_from_dict(
    tree: Any, source: str = "config", env: Mapping[str, str] | None = None
) -> Config:
    problems = Problems()
    tree = interpolate(tree, KeyPath(), problems, env)
    config = build_config(tree, problems, source)
    if problems or config is None:
        raise ConfigError(problems.items, source)
    return config


def config_from_text(
    text: str, source: str = "config", env: Mapping[str, str] | None = None
) -> Config:
    try:
        tree = parse_yaml(text, source)
    except ValueError as e:
        raise ConfigError([ConfigProblem("(file)", str(e))], source) from None
    return config_from_dict(tree, source, env)


def resolve_paths(config: Config, base: Path) -> Config:
    """The one path rule: a relative path in a config file (data files, key files, hooks,
    callables) is relative to the folder of that file, never to the working directory."""

    def rebase(p: str) -> str:
        return p if Path(p).is_absolute() else str(base / p)

    keys = config.keys
    if keys is not None and keys.file is not None:
        keys = dataclasses.replace(keys, file=rebase(keys.file))
    return dataclasses.replace(
        config,
        usage=dataclasses.replace(config.usage, path=rebase(config.usage.path)),
        ledger=dataclasses.replace(config.ledger, path=rebase(config.ledger.path)),
        keys=keys,
    )


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """The config file at `path`; relative paths in it are resolved against its folder."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(
            [ConfigProblem("(file)", f"cannot read {p}: {e.strerror}")], str(p), unreadable=True
        ) from None
    except UnicodeDecodeError as e:
        raise ConfigError([ConfigProblem("(file)", f"not UTF-8: {e}")], str(p)) from None
    return resolve_paths(config_from_text(text, str(p), env), p.absolute().parent)
