"""The CLI's commands, one module per group; what they share lives here."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meterkit.config import Config


def load_config_or_report(path: str) -> Config | None:
    """The config at `path`, or None after printing every problem with its key path, so that
    all commands report an invalid config the same way."""
    from meterkit.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as e:
        print(f"meterkit: invalid configuration {e.source}:", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        return None
