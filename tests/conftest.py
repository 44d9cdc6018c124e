"""Suite-wide set-up.

CI runs as root, and vspcd refuses to run as root without --user unless told.  The
daemons the tests start are throwaway loopback instances, so they are told through
the environment, which their subprocesses inherit; the tests of the refusal itself
remove the variable again (tests/vspcd/service/test_privileges.py).

The event loop: `VSPC_TEST_LOOP=asyncio` (the default) or `VSPC_TEST_LOOP=uvloop`.
The daemons the suite spawns follow it through `VSPCD_EVENT_LOOP` (their
`--event-loop auto` then picks that loop, vspcd/service/eventloop.py), and so do the
in-process ones: with uvloop the event-loop policy is uvloop's, so every
`asyncio.run` and `asyncio.new_event_loop` in the tests makes a uvloop loop.  The
default run pins the stdlib loop even where uvloop is installed (`auto` would pick
it): that is the path every test must cover; .ci/run repeats the end-to-end tests
with `VSPC_TEST_LOOP=uvloop`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("VSPCD_ALLOW_ROOT", "1")

TEST_LOOP = os.environ.get("VSPC_TEST_LOOP", "asyncio").strip().lower() or "asyncio"
if TEST_LOOP not in ("asyncio", "uvloop"):
    raise RuntimeError(f"VSPC_TEST_LOOP={TEST_LOOP!r}: expected asyncio or uvloop")

if TEST_LOOP == "uvloop":
    import uvloop  # a test extra; without it this run cannot mean anything

    os.environ["VSPCD_EVENT_LOOP"] = "uvloop"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
else:
    os.environ.setdefault("VSPCD_EVENT_LOOP", "asyncio")

# `user_runtime`: vspc and vspcd that other users can run (tests/userruntime.py).
from tests.userruntime import user_runtime  # noqa: E402, F401


@pytest.fixture(scope="session")
def cert_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate and key for localhost and 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make a throwaway certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        + ["-nodes", "-days", "1", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key
