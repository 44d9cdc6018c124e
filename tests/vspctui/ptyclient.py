"""`vspc ARGS` on a fresh pty, for tests that need a real terminal.

The client runs as a subprocess whose stdin/stdout/stderr are the slave side of a
pty; the test types into the master and waits on what the client prints.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time

TIMEOUT = 10.0
EXIT_TIMEOUT = 60.0  # a hung client fails the test after this; a slow one just passes


def client_env() -> dict[str, str]:
    """The environment for a `vspc` under test: a plain terminal, no socket override."""
    env = dict(os.environ, TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1")
    env.pop("VSPC_SOCKET", None)
    return env


class PtyClient:
    """`vspc ARGS` on a fresh pty; `expect()` reads its output up to a pattern."""

    def __init__(self, socket: str, *args: str) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.before = termios.tcgetattr(self.slave)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vspc.vspctui.shell.cli", "--socket", socket, *args],
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            start_new_session=True,
            env=client_env(),
        )
        self.output = b""

    def _read(self, deadline: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return False
        try:
            self.output += os.read(self.master, 65536)
        except OSError:  # EIO: every slave fd closed
            return False
        return True

    def expect(self, pattern: bytes, start: int = 0) -> None:
        """Read until `pattern` is in the output at or after offset `start`."""
        deadline = time.monotonic() + TIMEOUT
        while self.output.find(pattern, start) < 0:
            if not self._read(deadline):
                raise AssertionError(f"{pattern!r} never came; got {self.output!r}")

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait(self) -> int:
        """The client's exit status, once it has exited; its output read meanwhile.

        Woken by the exit itself (a pidfd becomes readable) or by output, never by a
        clock: a busy machine only makes this slower.  The deadline (EXIT_TIMEOUT) is
        there to fail a hung client, not to budget a healthy one.
        """
        deadline = time.monotonic() + EXIT_TIMEOUT
        exited = os.pidfd_open(self.proc.pid)
        try:
            while self.proc.poll() is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"still running; got {self.output!r}")
                ready, _, _ = select.select([self.master, exited], [], [], left)
                if self.master in ready:
                    self._read(time.monotonic())  # keep the pty drained
        finally:
            os.close(exited)
        status = self.proc.wait()
        while self._read(time.monotonic()):
            pass
        return status

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)

    def restored(self) -> bool:
        return termios.tcgetattr(self.slave) == self.before
