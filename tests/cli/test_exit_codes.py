"""The README's exit-code table, row by row, through the real CLI (issue 20 #7): each case
runs `python -m meterkit …` as a user would and checks the code and that the failure is one
line on stderr. 70 (a bug) is the one row no real command can be made to exit with on
purpose: the error boundary's own tests cover it (tests/cli/test_cli_errors.py)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from meterkit.cli import main  # noqa: F401  (the module the processes run)
from support.processes import running

ROOT = Path(__file__).resolve().parents[2]


def table() -> dict[int, str]:
    """The codes the README documents (`| code | meaning |` rows)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m[1]): m[2] for m in re.finditer(r"^\| (\d+) \| (.+) \|$", section, re.M)}


def meterkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterkit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "METERKIT_PRIVATE_KEY": ""},
    )


def config(tmp: Path, **over: object) -> Path:
    tree = {
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "routes": {"POST /v1/chat/completions": {"upstream": "u"}},
        "usage": {"sink": "sqlite", "path": str(tmp / "usage.sqlite3")},
        **over,
    }
    p = tmp / "c.yaml"
    p.write_text(yaml.safe_dump(tree))
    return p


def one_line(r: subprocess.CompletedProcess[str]) -> None:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr


def cases(tmp: Path) -> list[tuple[int, list[str]]]:
    good = config(tmp)
    (tmp / "bad").mkdir()
    bad = config(tmp / "bad", routes={"POST /x": {"upstream": "nope"}})
    (tmp / "usage.sqlite3").touch()
    return [
        (0, ["validate", "--config", str(good)]),
        (1, ["validate", "--config", str(bad)]),
        (2, ["serve", "--port", "70000"]),
        (2, ["serve", "--port", "-5"]),
        (2, ["pay", "localhost:8080/v1"]),
        (2, ["pay", "ftp://example.com/x"]),
        (2, ["pay", "http://127.0.0.1:9/v1", "--max-amount", "lots"]),
        (2, ["channel", "credit", "--demo", "--payer", "0x1234", "--amount", "1"]),
        (2, ["channel", "credit", "--demo", "--payer", "0x" + "11" * 20, "--amount", "five"]),
        (2, ["usage", "report", "--config", str(good), "--since", "today", "--until", "7d"]),
        (2, ["no-such-command"]),
        (5, ["validate", "--config", str(tmp / "missing.yaml")]),
        (5, ["validate", "--config", str(tmp / "bad")]),
        (5, ["serve", "--config", str(tmp / "missing.yaml")]),
        (5, ["usage", "report", "--config", str(tmp / "missing.yaml")]),
        (5, ["channel", "list", "--config", str(tmp / "bad")]),
        (6, ["pay", "http://127.0.0.1:9/v1", "--no-cap", "--key-file", str(key_file(tmp))]),
    ]


def key_file(tmp: Path) -> Path:
    p = tmp / "k.hex"
    if not p.exists():
        p.write_text("0x" + "11" * 32 + "\n")
    return p


def test_every_documented_code_is_one_a_command_can_exit_with() -> None:
    assert set(table()) == {0, 1, 2, 3, 4, 5, 6, 70, 130}


def test_the_table_rows_through_the_real_cli(tmp_path: Path) -> None:
    for code, args in cases(tmp_path):
        r = meterkit(*args, cwd=tmp_path)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        if code and code != 1:  # 1 lists an invalid config's problems, one per line
            one_line(r)


def test_declined_busy_port_and_interrupt(tmp_path: Path) -> None:
    """3: `pay` declines to pay over its cap; 4: a busy port; 130: interrupted."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        r = meterkit("serve", "--demo", "--port", str(busy), "--data-dir", str(tmp_path / "d"))
        assert r.returncode == 4, r.stderr
        one_line(r)
    with running(["serve", "--demo", "--port", "0", "--data-dir", str(tmp_path / "d")]) as demo:
        r = meterkit(
            "pay",
            demo.url + "/paid/v1/chat/completions",
            "--key-file",
            str(key_file(tmp_path)),
            "--max-amount",
            "0.000001",
            "--data",
            '{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}',
        )
        assert r.returncode == 3, r.stderr
    # 130: a command interrupted while it waits (`pay` on a server that never answers).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meterkit",
                "pay",
                url,
                "--no-cap",
                "--key-file",
                str(key_file(tmp_path)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
