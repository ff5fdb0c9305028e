"""Config loading: every problem reported with its key path, env interpolation, units."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from meterkit.cli import main
from meterkit.config import (
    ConfigError,
    config_from_text,
    load_config,
    parse_duration,
    parse_money,
    parse_size,
)

GOOD = """
gateway: {host: 0.0.0.0, port: 3000, max_request_body: 2MiB}
upstreams:
  openai:
    url: "https://api.openai.com/"
    headers: {authorization: "Bearer ${OPENAI_API_KEY}"}
    timeout: 900
  anthropic:
    url: https://api.anthropic.com
    timeout: {connect: 5, first_byte: 30s, idle: 2m}
routes:
  "POST /v1/chat/completions": {upstream: openai}
  "GET /session/:id/events":
    upstream: openai
    path: "/session/${params.id}/events?from=${query.from}"
    format: none
"""


def problems_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_text(text, env=env or {})
    return [str(p) for p in info.value.problems]


def test_good_config() -> None:
    c = config_from_text(GOOD, env={"OPENAI_API_KEY": "sk-1"})
    assert c.gateway.max_request_body == 2 * 1024 * 1024
    up = c.upstreams["openai"]
    assert up.url == "https://api.openai.com"
    assert dict(up.headers) == {"authorization": "Bearer sk-1"}
    assert (up.timeouts.connect, up.timeouts.first_byte, up.timeouts.idle) == (900, 900, 900)
    a = c.upstreams["anthropic"].timeouts
    assert (a.connect, a.first_byte, a.idle) == (5, 30, 120)
    route = c.routes[1]
    assert route.path == "/session/${params.id}/events?from=${query.from}"
    assert route.params == ("id",)


def test_unset_env_names_variable_and_key_path() -> None:
    (p,) = problems_of(GOOD)
    assert (
        p
        == "upstreams.openai.headers.authorization: environment variable OPENAI_API_KEY is not set"
    )


def test_env_default_and_escape() -> None:
    text = GOOD.replace("${OPENAI_API_KEY}", "${OPENAI_API_KEY:-none}$${literal}")
    c = config_from_text(text, env={})
    assert dict(c.upstreams["openai"].headers)["authorization"] == "Bearer none${literal}"


def test_every_problem_is_listed_with_suggestions() -> None:
    text = """
gateway: {prot: 3000, port: 70000}
upstreams:
  openai: {url: "ftp://x", timout: 5, timeout: {idle: -1}}
routes:
  "POST /v1/chat": {upstream: opnai, formt: auto}
  "FETCH /x": {upstream: openai}
  "GET /a/:id": {upstream: openai, path: "/b/${params.name}"}
  "POST /v1/chat/": {upstream: openai}
extra: 1
"""
    got = problems_of(text)
    expected = [
        "gateway.prot: unknown key; did you mean 'port'?",
        "gateway.port: expected a port number 0-65535, got 70000",
        "upstreams.openai.timout: unknown key; did you mean 'timeout'?",
        "upstreams.openai.url: expected an http(s) URL with a host, got 'ftp://x'",
        "upstreams.openai.timeout.idle: duration must not be negative, got -1",
        "routes.\"POST /v1/chat\".formt: unknown key; did you mean 'format'?",
        "routes.\"POST /v1/chat\".upstream: unknown upstream 'opnai' (known: openai)",
        "routes.\"FETCH /x\": unknown method 'FETCH'; expected one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS, *",
        "routes.\"GET /a/:id\".path: ${params.name} is not a parameter of 'GET /a/:id'",
        "routes.\"POST /v1/chat/\": same method and path as 'POST /v1/chat'",
        "extra: unknown key; known keys: gateway, upstreams, routes, usage, logging, metrics, budgets, budget_store, wallets, accepts, payments, ledger, keys, sessions, admin, prices",
    ]
    for e in expected:
        assert e in got, (e, got)


def test_yaml_errors_are_located() -> None:
    (p,) = problems_of("routes: {a: 1\n  b")
    assert "invalid YAML" in p and "config:" in p
    (p,) = problems_of("routes: {}\nroutes: {}\n")
    assert "duplicate key 'routes'" in p


def test_units_are_unambiguous() -> None:
    assert parse_money("$1") == Decimal(1)
    assert parse_money("$0.25") == Decimal("0.25")
    with pytest.raises(ValueError):
        parse_money(0.25)
    with pytest.raises(ValueError):
        parse_money("1")
    assert parse_duration(900) == 900
    assert parse_duration("250ms") == 0.25
    assert parse_duration("5m") == 300
    with pytest.raises(ValueError):
        parse_duration("5 minutes")
    assert parse_size("4MiB") == 4 * 2**20
    with pytest.raises(ValueError):
        parse_size("4 megs")


def test_validate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD.replace("${OPENAI_API_KEY}", "x"))
    assert main(["validate", "--config", str(good)]) == 0
    assert "ok (2 upstream(s), 2 route(s))" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("openai}", "opanai}"))
    assert main(["validate", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "routes.\"POST /v1/chat/completions\".upstream: unknown upstream 'opanai'" in err
    # A file that cannot be read: 5, the README's table (issue 20 #7).
    assert main(["validate", "--config", str(tmp_path / "missing.yaml")]) == 5
    assert "cannot read" in capsys.readouterr().err


def test_load_config_reads_files(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(GOOD, encoding="utf-8")
    c = load_config(p, env={"OPENAI_API_KEY": "k"})
    assert c.source == str(p)


def test_gateway_body_timeout_is_a_positive_duration_defaulting_to_60_s() -> None:
    env = {"OPENAI_API_KEY": "sk-1"}
    assert config_from_text(GOOD, env=env).gateway.body_timeout == 60.0
    text = GOOD.replace("max_request_body: 2MiB}", "max_request_body: 2MiB, body_timeout: 250ms}")
    assert config_from_text(text, env=env).gateway.body_timeout == 0.25
    for bad in ("0", "-1", "soon"):
        text = GOOD.replace(
            "max_request_body: 2MiB}", f"max_request_body: 2MiB, body_timeout: {bad}}}"
        )
        (p,) = problems_of(text, env)
        assert p.startswith("gateway.body_timeout: ")
