"""Loading operator code referenced from YAML: `package.module:function` or
`path/to/file.py:function` (relative to the config file's folder)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def load_callable(ref: str, base: Path | None = None) -> Callable[..., Any]:
    target, _, name = ref.rpartition(":")
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.suffix:
            path = path.with_suffix(".py")
        if not path.is_file():
            raise ValueError(f"{ref}: no file {path}")
        mod_name = f"meterkit_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"{ref}: cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"{ref}: {name!r} is not a callable in {target}")
    return fn  # type: ignore[no-any-return]


async def call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call sync or async operator code."""
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result
