"""`python -m vspc.vspctui.sim`: the vspc-sim console script (docs/vspc-sim.md)."""

import sys

from vspc.vspctui.sim.cli import main

sys.exit(main())
