"""A realistic OpenAI- and Anthropic-compatible upstream for demos, tests and benchmarks
(`meterkit mock-llm`). See `server.py` for the endpoints and the failure-injection headers."""

from meterkit.mock.server import MockOptions, build_mock_app

__all__ = ["MockOptions", "build_mock_app"]
