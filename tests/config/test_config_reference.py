"""docs/config.md names every key the config parser accepts: the keys are read from the
parser's own `unknown_keys` calls, so a new key without documentation fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG_SRC = ROOT / "python" / "meterkit" / "config"


def _strings(node: ast.AST, names: dict[str, ast.AST]) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List):
        return [s for e in node.elts for s in _strings(e, names)]
    if isinstance(node, ast.Starred):
        return _strings(node.value, names)
    if isinstance(node, ast.Name) and node.id in names:
        return _strings(names[node.id], names)
    raise AssertionError(f"cannot read the known keys of {ast.unparse(node)}")


def accepted_keys() -> set[str]:
    trees = [ast.parse(p.read_text()) for p in sorted(CONFIG_SRC.glob("*.py"))]
    names: dict[str, ast.AST] = {}
    for tree in trees:
        for n in ast.walk(tree):
            if isinstance(n, ast.Assign) and len(n.targets) == 1:
                target = n.targets[0]
                if isinstance(target, ast.Name):
                    names[target.id] = n.value
    keys: set[str] = set()
    calls = 0
    for tree in trees:
        for n in ast.walk(tree):
            if (
                isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute)
                and n.func.attr == "unknown_keys"
            ):
                calls += 1
                keys.update(_strings(n.args[2], names))
    assert calls >= 20, "the parser's unknown_keys calls were not found"
    return keys


def test_every_accepted_key_is_in_the_reference() -> None:
    doc = (ROOT / "docs" / "config.md").read_text()
    documented = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_.<>]*)", doc))
    words = {part for d in documented for part in re.split(r"[.]", d)}
    missing = sorted(k for k in accepted_keys() if k not in words)
    assert not missing, f"keys the parser accepts but docs/config.md does not name: {missing}"


def test_the_reference_knows_the_new_operator_keys() -> None:
    keys = accepted_keys()
    assert {"admin", "prices", "key_label", "token"} <= keys
