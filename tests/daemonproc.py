"""One way for the suite to start a real vspcd process and wait until it serves.

Every listener the test does not need at a fixed number is asked for port 0 (`-p 0`,
`-a 0`, `--http 0`), and the port the kernel picked is read back from vspcd's own log:

    listening for ESXi on 127.0.0.1:PORT (...)
    HTTP listener on 127.0.0.1 port PORT
    admin TCP port 127.0.0.1:PORT is open: ...

So no test picks "a port that was free a moment ago" for vspcd to bind later, which
another process on a busy machine may take in between.  A test that must choose a
number itself (a restart on the same port) passes `argv` as a function: when vspcd
reports EADDRINUSE, in any spelling, the whole start is retried with a fresh argv.

The log goes to a file (never an unread pipe, which would stall the daemon once
full); the test reads it with `VspcdProcess.log()`.  Waits poll that file against a
deadline generous enough for a loaded two-core machine; nothing sleeps for a guess.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# A Python start with the daemon's imports can take seconds when every core is busy.
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
ATTEMPTS = 5

VSPCD = (sys.executable, "-m", "vspc.vspcd")

_PROXY = re.compile(r"listening for ESXi on (\S+):(\d+) ")
_HTTP = re.compile(r"HTTP listener on \S+ port (\d+)")
_ADMIN = re.compile(r"admin TCP port (\S+):(\d+) is open")
_IN_USE = re.compile(r"address already in use|eaddrinuse|errno 98\b", re.IGNORECASE)


def free_port() -> int:
    """A port that was free a moment ago: only for vspcd's `-r` (the PortBinder skips
    used ports) or for a test that retries through `start_vspcd(argv=function)`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class VspcdNotReady(AssertionError):
    """vspcd exited or stayed silent before saying it was ready."""


class VspcdProcess:
    """A spawned vspcd: the process, its log file and the ports it reported."""

    def __init__(self, proc: subprocess.Popen[Any], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self.proxy_port: int | None = None
        self.http_port: int | None = None
        self.admin_port: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """Everything vspcd has logged so far."""
        try:
            return self.log_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, wanted: str | Callable[[str], bool], timeout: float = READY_TIMEOUT) -> str:
        """Wait until the log contains `wanted` (or satisfies it); return the log."""
        test = wanted if callable(wanted) else (lambda text: wanted in text)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if test(text):
                return text
            if self.proc.poll() is not None:
                text = self.log()  # the last lines may have landed meanwhile
                if test(text):
                    return text
                status = self.proc.returncode
                raise VspcdNotReady(f"vspcd exited ({status}) before {wanted!r}:\n{text}")
            if time.monotonic() > deadline:
                raise VspcdNotReady(f"vspcd: no {wanted!r} within {timeout} s:\n{text}")
            time.sleep(0.02)

    def _read_ports(self, text: str) -> None:
        if found := _PROXY.search(text):
            self.proxy_port = int(found.group(2))
        if found := _HTTP.search(text):
            self.http_port = int(found.group(1))
        if found := _ADMIN.search(text):
            self.admin_port = int(found.group(2))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal vspcd (if still running) and wait for it; return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
            raise

    def close(self) -> None:
        """Stop it if needed and release the pipes the caller asked for."""
        if self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def start_vspcd(
    argv: Sequence[str] | Callable[[], Sequence[str]],
    log_path: Path,
    *,
    command: Sequence[str] = VSPCD,
    env: Mapping[str, str] | None = None,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    log_to_stdout: bool = False,
    ready: str = " ready",
    timeout: float = READY_TIMEOUT,
    attempts: int = ATTEMPTS,
    **popen: Any,
) -> VspcdProcess:
    """Start `command argv` with its log in `log_path`; return once it logged `ready`.

    `argv` as a function is called again for each attempt, so ports it picks are fresh
    when vspcd could not bind one.  With `log_to_stdout` the log is read from stdout
    (for `--stdout`); otherwise from stderr.  On failure the process is reaped and
    VspcdNotReady names the log.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        args = list(argv() if callable(argv) else argv)
        with log_path.open("wb") as sink:
            if log_to_stdout:
                outputs: dict[str, Any] = {"stdout": sink, "stderr": subprocess.STDOUT}
            else:
                outputs = {"stdout": stdout, "stderr": sink}
            proc: subprocess.Popen[Any] = subprocess.Popen(
                [*command, *args],
                env=None if env is None else dict(env),
                stdin=popen.pop("stdin", subprocess.DEVNULL),
                **outputs,
                **popen,
            )
        daemon = VspcdProcess(proc, log_path)
        try:
            text = daemon.wait_log(ready, timeout)
        except VspcdNotReady:
            daemon.close()
            if _IN_USE.search(daemon.log()) and callable(argv) and attempt + 1 < attempts:
                continue  # someone took a port we picked: pick again
            raise
        daemon._read_ports(text)
        return daemon
    raise AssertionError("unreachable")


@contextmanager
def vspcd_running(
    argv: Sequence[str] | Callable[[], Sequence[str]], log_path: Path, **kwargs: Any
) -> Iterator[VspcdProcess]:
    """`start_vspcd`, stopped (SIGTERM, then reaped) when the block ends."""
    daemon = start_vspcd(argv, log_path, **kwargs)
    try:
        yield daemon
    finally:
        daemon.close()
