"""Who is on the other end of the admin Unix socket: SO_PEERCRED and group membership.

The admin channel's authorisation (docs/security.md) is by the connecting process's
uid and groups, which Linux reports for a Unix socket as they were at connect()
time (unix(7), SO_PEERCRED).  No asyncio here: the admin face asks with the
accepted socket (`transport.get_extra_info("socket")`, on every loop).
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from typing import Protocol

__all__ = ["PeerCredentials", "peer_credentials", "resolve_group", "uid_in_group"]


class _SockOpts(Protocol):
    # `socket.socket`, asyncio's `TransportSocket` and uvloop's pseudo-socket alike.
    def getsockopt(self, level: int, option: int, buflen: int, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """SO_PEERCRED of a Unix-socket peer: the process at connect() time."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket | _SockOpts) -> PeerCredentials:
    """The connecting process's pid/uid/gid (Linux SO_PEERCRED).

    Raises:
        OSError: not a connected Unix socket.
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCredentials(pid, uid, gid)


def resolve_group(group: str) -> int:
    """Group name (or numeric id) -> gid.

    Raises:
        KeyError: no such group.
    """
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return grp.getgrgid(int(group)).gr_gid
        raise


def uid_in_group(uid: int, gid: int, group: str) -> bool:
    """True if a peer (uid, primary gid) belongs to `group`, supplementary included."""
    try:
        wanted = resolve_group(group)
    except KeyError:
        return False
    if gid == wanted:
        return True
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    return wanted in os.getgrouplist(user.pw_name, user.pw_gid)
