"""`python -m vspc.vspctui.sim`: the vspc-sim console script (issue #12)."""

import sys

from vspc.vspctui.sim.cli import main

sys.exit(main())
