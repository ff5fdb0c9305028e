"""The CLI's commands, one module per group; what they share lives here: the exit codes and
the error every command raises for an ordinary mistake (the boundary in `cli.main` prints it
as one line, never a traceback)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meterkit.config import Config

# Exit codes (documented in the README). 3 is `meterkit pay` declining to pay.
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and said no: an invalid config, an HTTP error for `pay`
EXIT_USAGE = 2  # bad arguments (argparse's own code)
EXIT_DECLINED = 3
EXIT_LISTEN = 4  # cannot listen: the port is taken, the host is not an address of this machine
EXIT_FILE = 5  # a file or folder cannot be read or created (config, key, hook, data path)
EXIT_UNREACHABLE = 6  # a service cannot be reached (PostgreSQL, Redis, facilitator, a URL)
EXIT_BUG = 70  # an internal error (EX_SOFTWARE): the traceback is printed, please report it
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """An ordinary mistake or an unavailable resource: `message` is printed as one line
    (`meterkit: message`) and the process exits with `code`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def describe(e: BaseException) -> str:
    """One line for an exception from the outside world."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def classify(e: BaseException) -> int:
    """The exit code for a startup failure: a path, or a service that cannot be reached."""
    import errno
    import sqlite3

    if isinstance(e, OSError) and e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
        return EXIT_LISTEN
    if isinstance(e, (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)):
        return EXIT_FILE
    if isinstance(e, sqlite3.Error):
        return EXIT_FILE
    if isinstance(e, OSError) and e.filename:
        return EXIT_FILE
    return EXIT_UNREACHABLE


def load_config_or_report(path: str) -> Config | None:
    """The config at `path`, or None after printing every problem with its key path, so that
    all commands report an invalid config the same way."""
    from meterkit.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as e:
        if e.unreadable:
            raise CommandError(EXIT_FILE, str(e.problems[0].message)) from None
        print(f"meterkit: invalid configuration {e.source}:", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        return None
