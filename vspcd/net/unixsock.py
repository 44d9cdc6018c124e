"""The admin Unix socket: created with its mode and group set before anyone can connect.

The admin protocol (docs/admin-protocol.md) is served on a Unix socket whose
permissions are the access control (docs/security.md): the parent directory must
be ours and not world-writable, a stale socket left by a dead daemon is removed,
a live daemon's is not, and the file is born 0600 and widened only once its group
and mode are right.  Accepting is the same `Listener` as every other port
(vspcd/net/accept.py); who connected is vspcd/net/peercred.py's business.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from pathlib import Path

from vspc.vspcd.net.accept import Listener, ProtocolFactory
from vspc.vspcd.net.peercred import resolve_group

__all__ = ["AdminSocket", "AdminSocketError", "start_admin_socket"]

log = logging.getLogger(__name__)


class AdminSocketError(OSError):
    """The admin socket cannot be created safely (message says why)."""


def _prepare_socket_dir(directory: Path) -> None:
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise AdminSocketError(f"{directory} is not a directory")
    # Someone else's directory (e.g. a pre-created /tmp/vspcd-UID) could swap our
    # socket for theirs; refuse rather than serve the admin channel from it.
    if info.st_uid not in (os.geteuid(), 0):
        raise AdminSocketError(f"{directory} is owned by uid {info.st_uid}, not by us")
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise AdminSocketError(f"{directory} is world-writable")


def _remove_stale_socket(path: Path) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise AdminSocketError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale admin socket %s", path)
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise AdminSocketError(f"{path}: another daemon is listening there")


class AdminSocket:
    """The admin Unix socket's listener; `close()` also removes the socket file."""

    def __init__(self, listener: Listener, path: Path, inode: int) -> None:
        self.listener = listener
        self.path = path
        self._inode = inode

    def close(self) -> None:
        """Stop accepting and unlink the socket file if it is still ours (idempotent)."""
        self.listener.close()
        try:
            if self.path.lstat().st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass

    async def wait_closed(self) -> None:
        await self.listener.wait_closed()


async def start_admin_socket(
    path: Path,
    protocol_factory: ProtocolFactory,
    *,
    mode: int = 0o660,
    group: str | None = None,
    backoff: float = 0.5,
) -> AdminSocket:
    """Serve the admin protocol on a Unix socket at `path`.

    Creates the parent directory if needed, removes a stale socket left by a dead
    daemon, and applies `mode` and `group` before listening, so there is no moment
    when the socket is reachable with looser permissions.  Accepting uses the same
    `Listener` as the proxy port, so running out of descriptors backs off with one
    log line instead of asyncio's log line per attempt.

    Raises:
        AdminSocketError: unsafe directory, non-socket in the way, or a live daemon.
        KeyError: `group` does not exist.
        OSError: anything else the filesystem says.
    """
    gid = resolve_group(group) if group is not None else -1
    sock, inode = _bind_unix(path, mode, gid)
    try:
        listener = Listener(
            sock,
            protocol_factory,
            asyncio.get_running_loop(),
            backoff=backoff,
            keepalive=False,  # not a TCP socket
        )
        listener.start()
    except BaseException:
        sock.close()
        path.unlink(missing_ok=True)  # noqa: ASYNC240  (startup, error path)
        raise
    log.info("admin socket %s (mode %04o%s)", path, mode, f", group {group}" if group else "")
    return AdminSocket(listener, path, inode)


def _bind_unix(path: Path, mode: int, gid: int) -> tuple[socket.socket, int]:
    _prepare_socket_dir(path.parent)
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        old_umask = os.umask(0o177)  # the socket file is born 0600 ...
        try:
            sock.bind(str(path))
            bound = True
        finally:
            os.umask(old_umask)
        if gid != -1:
            os.chown(path, -1, gid)
        os.chmod(path, mode)  # ... and only widened once group and mode are right
        inode = path.lstat().st_ino
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        if bound:
            path.unlink(missing_ok=True)
        raise
    return sock, inode
