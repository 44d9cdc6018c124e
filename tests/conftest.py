"""Suite-wide set-up.

CI runs as root, and vspcd refuses to run as root without --user unless told
(issue #10 item 4).  The daemons the tests start are throwaway loopback instances, so
they are told through the environment, which their subprocesses inherit; the tests of
the refusal itself remove the variable again (tests/vspcd/service/test_privileges.py).

The suite runs vspcd on the stdlib event loop even where the optional uvloop is
installed (`--event-loop auto` would pick it): the stdlib path is the one every test
must cover; tests/vspcd/service/test_eventloop.py runs the daemon under uvloop explicitly.
"""

from __future__ import annotations

import os

os.environ.setdefault("VSPCD_ALLOW_ROOT", "1")
os.environ.setdefault("VSPCD_EVENT_LOOP", "asyncio")
