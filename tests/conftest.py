"""Shared fixtures: the offline `tiktoken` oracle and a loopback server for SDK cross-checks."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

# tiktoken caches each rank file under the SHA-1 of its download URL.
_RANK_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}


def reference_dir() -> Path | None:
    """The folder with OpenAI's rank files: $METERKIT_TIKTOKEN_REFERENCE, or the shared one
    next to the checkout (where CI clones it)."""
    candidates = [
        os.environ.get("METERKIT_TIKTOKEN_REFERENCE"),
        str(REPO.parent / "shared" / "reference" / "tiktoken"),
    ]
    for c in candidates:
        if c and (Path(c) / "o200k_base.tiktoken").is_file():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def tiktoken_encodings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`tiktoken` encodings loaded offline from the reference rank files."""
    ref = reference_dir()
    if ref is None:
        pytest.skip(
            "tiktoken reference rank files not found: set METERKIT_TIKTOKEN_REFERENCE to a "
            "folder holding cl100k_base.tiktoken and o200k_base.tiktoken"
        )
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name, url in _RANK_URLS.items():
        shutil.copyfile(ref / f"{name}.tiktoken", cache / hashlib.sha1(url.encode()).hexdigest())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    import tiktoken

    return {name: tiktoken.get_encoding(name) for name in _RANK_URLS}
