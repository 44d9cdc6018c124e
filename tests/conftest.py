"""Suite-wide set-up.

CI runs as root, and vspcd refuses to run as root without --user unless told
(issue #10 item 4).  The daemons the tests start are throwaway loopback instances, so
they are told through the environment, which their subprocesses inherit; the tests of
the refusal itself remove the variable again (tests/vspcd/test_privileges.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("VSPCD_ALLOW_ROOT", "1")
