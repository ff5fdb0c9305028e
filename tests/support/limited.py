"""`python -m support.limited ARGS`: the meterkit CLI with its soft descriptor limit lowered
to $METERKIT_TEST_NOFILE first (a proxy that runs out of descriptors, without touching the
test process's own limit)."""

from __future__ import annotations

import os
import resource
import sys

from meterkit.cli import main

if __name__ == "__main__":
    soft = int(os.environ["METERKIT_TEST_NOFILE"])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    sys.exit(main(sys.argv[1:]))
