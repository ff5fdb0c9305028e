"""The Rust extension explains itself: every public class and function has a docstring, and
`help(meterkit.StreamMeter)` names every setting of the meter."""

from __future__ import annotations

import pydoc

import meterkit
from meterkit import _core


def test_every_public_name_of_the_extension_has_a_docstring() -> None:
    missing = [
        name
        for name in _core.__all__
        if callable(getattr(_core, name)) and not (getattr(_core, name).__doc__ or "").strip()
    ]
    assert missing == []


def test_help_of_the_stream_meter_explains_its_settings() -> None:
    text = pydoc.render_doc(meterkit.StreamMeter, renderer=pydoc.plaintext)
    for setting in ("limit", "credit", "ending", "strip_usage", "partial_usage", "shadow"):
        assert f"`{setting}" in text or f"{setting}=" in text, setting
    assert "grant" in text and "paused" in text
