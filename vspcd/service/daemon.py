"""Classic Unix daemon plumbing for `--daemon` and `--pidfile`.

Boundary: process-level helpers used only by `__main__`; no asyncio (detaching
must happen before any event loop exists).  Under systemd none of this is needed:
run in the foreground (docs/development.md "Logging"; docs/operations.md).  It exists for
vSPC.py-era init scripts, but fixes the predecessor's faults (docs/development.md Part 3, #15):

* the pidfile is checked before starting, so a second daemon refuses to run while a
  live process is named there, and a stale pidfile (dead pid, garbage, or our own
  pid after a container restart) is simply replaced;
* the pidfile is removed at exit, but only if it still names us;
* the launching process exits only once the detached daemon reports it is serving
  (or has failed), so `vspcd --daemon && next-step` is not racy and a startup error
  gives a non-zero status.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_READY = b"R"


class PidfileError(Exception):
    """The pidfile names a live process, or cannot be written."""


def read_pidfile(path: Path) -> int | None:
    """The pid stored in `path`, or None if it is missing, empty or not a pid."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    try:
        pid = int(text, 10)
    except ValueError:
        return None
    return pid if pid > 0 else None


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True


def check_pidfile(path: Path) -> None:
    """Refuse to start if `path` names a live process other than this one.

    Raises:
        PidfileError: another process with that pid is running.
    """
    pid = read_pidfile(path)
    if pid is None or pid == os.getpid() or not pid_alive(pid):
        if path.exists():
            log.info("pidfile %s is stale (pid %s); replacing it", path, pid)
        return
    raise PidfileError(f"pidfile {path} names running process {pid}; is vspcd already running?")


def write_pidfile(path: Path, pid: int | None = None) -> None:
    """Write `pid` (default: ours) to `path`, replacing it atomically.

    Raises:
        PidfileError: the file cannot be written.
    """
    pid = os.getpid() if pid is None else pid
    temp = path.with_name(f".{path.name}.{pid}.tmp")
    try:
        temp.write_text(f"{pid}\n", encoding="ascii")
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise PidfileError(f"cannot write pidfile {path}: {exc}") from exc


def remove_pidfile(path: Path, pid: int | None = None) -> None:
    """Remove `path` if it still names `pid` (default: ours); never raises."""
    pid = os.getpid() if pid is None else pid
    if read_pidfile(path) != pid:
        return  # somebody else's now; leave it alone
    try:
        path.unlink()
    except OSError as exc:
        log.warning("cannot remove pidfile %s: %s", path, exc)


class ReadyPipe:
    """The detached daemon's line back to the process that launched it."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def ready(self) -> None:
        """Tell the launcher we are serving; it exits 0.  Idempotent."""
        if self._fd is None:
            return
        try:
            os.write(self._fd, _READY)
        except OSError as exc:  # the launcher was killed; nothing to tell
            log.debug("launcher gone: %s", exc)
        self.close()

    def close(self) -> None:
        """Hang up without reporting ready; the launcher exits 1.  Idempotent."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _launcher(read_fd: int, child: int) -> int:
    # Wait for the grandchild to report, then reap the intermediate child.
    chunks = []
    while chunk := os.read(read_fd, 16):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(child, 0)
    return 0 if _READY in b"".join(chunks) else 1


def daemonize() -> ReadyPipe:
    """Detach: fork, setsid, fork again; the original process exits when told.

    Returns in the detached grandchild only: working directory "/", umask 022,
    stdin/stdout/stderr on /dev/null.  The original process waits until the
    grandchild calls `ReadyPipe.ready()` (exit 0) or exits/`close()`s without it
    (exit 1, with a hint on stderr).  Call before creating any event loop or thread.
    """
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child > 0:
        os.close(write_fd)
        status = _launcher(read_fd, child)
        if status != 0:
            os.write(2, b"vspcd: daemon failed to start; see syslog\n")
        os._exit(status)
    os.close(read_fd)
    os.setsid()  # new session: no controlling terminal, immune to the shell's SIGHUP
    if os.fork() > 0:
        os._exit(0)  # the session leader goes, so we can never reacquire a terminal
    os.chdir("/")
    os.umask(0o022)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    return ReadyPipe(write_fd)
