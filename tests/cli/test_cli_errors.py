"""The CLI's error boundary: ordinary mistakes are one line on stderr and a documented exit
code, never a traceback (issue 12 #12, #13); SIGHUP does not kill the proxy (#15)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from meterkit import __version__
from meterkit.commands import (
    EXIT_FAILED,
    EXIT_FILE,
    EXIT_LISTEN,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from support.http import request
from support.processes import running


def meterkit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterkit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def one_line_error(r: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("meterkit")]
    assert lines, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(d: Path, **extra: Any) -> Path:
    tree: dict[str, Any] = {
        "gateway": {"host": "127.0.0.1"},
        "upstreams": {"mock": {"url": "http://127.0.0.1:9"}},
        "routes": {"POST /v1/chat/completions": {"upstream": "mock"}},
        "usage": {"sink": "none"},
        **extra,
    }
    p = d / "meterkit.yaml"
    p.write_text(yaml.safe_dump(tree))
    return p


def test_version() -> None:
    r = meterkit("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"meterkit {__version__}"


@pytest.mark.parametrize("port", ["70000", "-5", "http"])
def test_a_port_out_of_range_is_a_usage_error(port: str, tmp_path: Path) -> None:
    r = meterkit("serve", "--config", str(write_config(tmp_path)), f"--port={port}")
    assert r.returncode == EXIT_USAGE
    assert "Traceback" not in r.stderr
    assert "--port" in r.stderr


def test_a_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = meterkit("serve", "--config", str(write_config(tmp_path)), "--port", str(port))
        one_line_error(r, EXIT_LISTEN, f"127.0.0.1:{port}")
        # `make run` is `serve --demo`: the same answer when its port is taken.
        r = meterkit("serve", "--demo", "--port", str(port), "--data-dir", str(tmp_path / "d"))
        one_line_error(r, EXIT_LISTEN, f"127.0.0.1:{port}")


@pytest.mark.parametrize("host", ["256.1.1.1", "no-such-host.invalid", "203.0.113.7"])
def test_a_bad_host_is_one_line(host: str, tmp_path: Path) -> None:
    r = meterkit("serve", "--config", str(write_config(tmp_path)), "--host", host, "--port", "0")
    one_line_error(r, EXIT_LISTEN, host)


def test_a_missing_config_is_one_line(tmp_path: Path) -> None:
    # A file that cannot be read: 5, as the README's table says (it was 1, issue 20 #7).
    r = meterkit("serve", "--config", str(tmp_path / "nope.yaml"))
    one_line_error(r, EXIT_FILE, "nope.yaml")


def test_an_unwritable_data_path_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    cfg = write_config(tmp_path, usage={"sink": "sqlite", "path": "afile/usage.sqlite3"})
    r = meterkit("serve", "--config", str(cfg), "--port", "0")
    one_line_error(r, EXIT_FILE, "afile")
    r = meterkit("validate", "--config", str(cfg))
    one_line_error(r, EXIT_FAILED, "usage.path")


def test_an_unreachable_postgres_at_start_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    cfg = write_config(tmp_path, usage={"sink": "postgres", "url": url})
    r = meterkit("serve", "--config", str(cfg), "--port", "0")
    one_line_error(r, EXIT_UNREACHABLE, "cannot start")


def paid_with_hook(tmp_path: Path, hook: str) -> Path:
    return write_config(
        tmp_path,
        routes={"POST /v1/chat/completions": {"upstream": "mock", "hooks": {"onRequest": hook}}},
        ledger={"type": "sqlite", "path": "ledger.sqlite3"},
    )


def test_a_hook_that_does_not_import_fails_validate_as_it_fails_serve(tmp_path: Path) -> None:
    cfg = paid_with_hook(tmp_path, "hooks/missing.py:check")
    r = meterkit("validate", "--config", str(cfg))
    one_line_error(r, EXIT_FAILED, "hooks.onRequest", "missing.py")
    r = meterkit("serve", "--config", str(cfg), "--port", "0")
    one_line_error(r, EXIT_FAILED, "missing.py")
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "broken.py").write_text("import no_such_module_xyz\n")
    r = meterkit("validate", "--config", str(paid_with_hook(tmp_path, "hooks/broken.py:check")))
    one_line_error(r, EXIT_FAILED, "no_such_module_xyz")
    # Relative to the config's folder, whatever the working directory.
    (tmp_path / "hooks" / "good.py").write_text("def check(ctx):\n    return None\n")
    r = meterkit("validate", "--config", str(paid_with_hook(tmp_path, "hooks/good.py:check")))
    assert r.returncode == 0, r.stderr


def test_validate_connect_reports_an_unreachable_redis(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        budget_store={"type": "redis", "url": f"redis://127.0.0.1:{free_port()}/0"},
    )
    r = meterkit("validate", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    r = meterkit("validate", "--config", str(cfg), "--connect")
    assert r.returncode == EXIT_UNREACHABLE
    assert "budget_store (Redis): unreachable" in r.stdout
    assert "Traceback" not in r.stderr


def test_pay_mistakes_are_one_line(tmp_path: Path) -> None:
    key = tmp_path / "k.hex"
    assert meterkit("keygen", "--out", str(key)).returncode == 0
    r = meterkit("pay", f"http://127.0.0.1:{free_port()}/x", "--key-file", str(key), "--no-cap")
    one_line_error(r, EXIT_UNREACHABLE)
    r = meterkit("pay", "not a url", "--key-file", str(key), "--no-cap")
    one_line_error(r, EXIT_USAGE)
    r = meterkit("pay", "http://127.0.0.1:1/x", "--key-file", str(tmp_path / "nope.hex"))
    one_line_error(r, EXIT_FILE, "nope.hex")


def test_a_port_from_the_environment(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path)
    tree = yaml.safe_load(cfg.read_text())
    tree["gateway"]["port"] = "${PORT}"
    cfg.write_text(yaml.safe_dump(tree))
    with running(["serve", "--config", str(cfg)], env={"PORT": str(port)}) as p:
        assert p.url == f"http://127.0.0.1:{port}"


def test_sighup_keeps_the_proxy_serving(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, logging={"format": "json"})

    def said(n: int) -> None:
        for _ in range(200):  # bounded: the log line arrives within a few reads
            if sum("SIGHUP" in line for line in p.output) >= n:
                return
            time.sleep(0.05)

    with running(["serve", "--config", str(cfg), "--port", "0"]) as p:
        os.kill(p.pid, signal.SIGHUP)
        said(1)
        tree = yaml.safe_load(cfg.read_text())
        tree["gateway"]["max_request_body"] = "1MiB"
        cfg.write_text(yaml.safe_dump(tree))
        os.kill(p.pid, signal.SIGHUP)
        said(2)
        cfg.write_text("routes: [not, valid")
        os.kill(p.pid, signal.SIGHUP)
        said(3)
        assert p.proc.poll() is None
        assert request(p.url, "GET", "/healthz")[0] == 200
        lines = [line for line in p.output if "SIGHUP" in line]
        # Nothing changed: it says so, not "restart to apply" (issue 20 #8).
        assert "unchanged" in lines[0]
        assert "restart to apply" in lines[1]
        assert "invalid" in lines[2]
        p.proc.send_signal(signal.SIGTERM)
        p.proc.wait(30)
        time.sleep(0.2)
        # Stopping is said once, where an operator looks.
        assert any("SIGTERM: stopping" in line for line in p.output)


def test_hash_key_takes_the_key_as_an_argument_or_on_stdin() -> None:
    from meterkit.budgets.registry import key_sha256

    r = meterkit("hash-key", "sk-alice")
    assert (r.returncode, r.stdout.strip()) == (0, key_sha256("sk-alice"))
    r = subprocess.run(
        [sys.executable, "-m", "meterkit", "hash-key"],
        input="sk-alice\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (r.returncode, r.stdout.strip()) == (0, key_sha256("sk-alice"))


def test_pay_without_a_cap_says_which_option_to_give(tmp_path: Path) -> None:
    (tmp_path / "k.hex").write_text("0x" + "11" * 32)
    r = meterkit("pay", "http://127.0.0.1:9/v1", "--key-file", str(tmp_path / "k.hex"))
    one_line_error(r, 3, "--max-amount", "--no-cap")
    assert "max_per_request" not in r.stderr


def test_config_durations_take_days() -> None:
    from meterkit.config.units import parse_duration

    assert parse_duration("1d") == 86_400.0 and parse_duration("7d") == 7 * 86_400.0
