"""Numbers from `${ENV}` and the one path rule (issue 12 #14)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterkit.config import ConfigError, config_from_text, load_config

BASE = """
gateway: {port: "${PORT}", max_connections: "${CONNS:-500}", header_timeout: "${HEAD:-30}"}
upstreams: {m: {url: "http://127.0.0.1:9"}}
routes: {"POST /v1/chat/completions": {upstream: m, budget: b}}
budgets: {b: {key: ip, tokens_per_minute: "${TPM}"}}
usage: {sink: sqlite, path: data/usage.sqlite3, max_pending: "${PENDING:-10}"}
"""


def test_numbers_can_come_from_the_environment() -> None:
    c = config_from_text(BASE, env={"PORT": "8081", "TPM": "1000"})
    assert c.gateway.port == 8081
    assert c.gateway.max_connections == 500
    assert c.gateway.header_timeout == 30.0
    assert c.budgets["b"].tokens_per_minute == 1000
    assert c.usage.max_pending == 10


@pytest.mark.parametrize(
    ("env", "where"),
    [
        ({"PORT": "http", "TPM": "1"}, "gateway.port"),
        ({"PORT": "70000", "TPM": "1"}, "gateway.port"),
        ({"PORT": "1", "TPM": "-3"}, "tokens_per_minute"),
    ],
)
def test_a_bad_number_from_the_environment_names_its_key(env: dict[str, str], where: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_text(BASE, env=env)
    assert any(where in str(p) for p in e.value.problems)


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    cfg = tmp_path / "conf" / "meterkit.yaml"
    cfg.write_text(BASE)
    monkeypatch.chdir(tmp_path)
    c = load_config(Path("conf/meterkit.yaml"), env={"PORT": "1", "TPM": "1"})
    assert c.usage.path == str((tmp_path / "conf" / "data" / "usage.sqlite3").absolute())
    assert c.ledger.path == str((tmp_path / "conf" / "meterkit-data" / "ledger.sqlite3").absolute())
