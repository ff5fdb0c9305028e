"""`python -m meterkit` is the `meterkit` command."""

import sys

from meterkit.cli import main

sys.exit(main())
