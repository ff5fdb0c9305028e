"""Loading the `tiktoken` reference offline from OpenAI's rank files.

`tiktoken` caches each rank file under the SHA-1 of its download URL; copying the files into
a cache directory under those names makes `tiktoken.get_encoding` work without network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

RANK_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}


def find_reference_dir() -> Path | None:
    """$METERKIT_TIKTOKEN_REFERENCE, else a `shared/reference/tiktoken` folder beside the
    checkout (how this project's CI lays things out)."""
    here = Path(__file__).resolve()
    candidates = [os.environ.get("METERKIT_TIKTOKEN_REFERENCE")]
    candidates += [
        str(p / "shared" / "reference" / "tiktoken") for p in (Path.cwd().parent, *here.parents)
    ]
    for c in candidates:
        if c and (Path(c) / "o200k_base.tiktoken").is_file():
            return Path(c)
    return None


def load_tiktoken(cache_dir: Path | None = None) -> dict[str, Any] | None:
    """The two encodings from the reference files, or None when the files are not found."""
    ref = find_reference_dir()
    if ref is None:
        return None
    cache = cache_dir or Path(tempfile.mkdtemp(prefix="meterkit-tiktoken-"))
    for name, url in RANK_URLS.items():
        shutil.copyfile(ref / f"{name}.tiktoken", cache / hashlib.sha1(url.encode()).hexdigest())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    import tiktoken

    return {name: tiktoken.get_encoding(name) for name in RANK_URLS}
