"""Shared fixtures: the offline `tiktoken` oracle and a loopback server for SDK cross-checks."""

from __future__ import annotations

import os
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiktoken_encodings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`tiktoken` encodings loaded offline from the reference rank files."""
    from meterkit.bench.reference import load_tiktoken

    encodings = load_tiktoken(tmp_path_factory.mktemp("tiktoken-cache"))
    if encodings is None:
        if os.environ.get("METERKIT_REQUIRE_REFERENCE"):
            pytest.fail("METERKIT_REQUIRE_REFERENCE is set but the tiktoken rank files are missing")
        pytest.skip(
            "tiktoken reference rank files not found: set METERKIT_TIKTOKEN_REFERENCE to a "
            "folder holding cl100k_base.tiktoken and o200k_base.tiktoken"
        )
    return encodings


@pytest.fixture(scope="session")
def replay() -> Any:
    """A loopback server answering every request with `replay.body` (see support/replay.py)."""
    from support.replay import replay_server

    with replay_server() as server:
        yield server
