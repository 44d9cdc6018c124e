"""Who an admin peer is and what it may do (docs/admin-protocol.md "Access control").

Boundary: everything the admin server decides from the peer's identity lives here,
so a finer policy changes this module only.  The peer is identified once, when it
connects: SO_PEERCRED on the Unix socket gives uid and gid, and members of
`--readonly-group` get read-only access; TCP peers are unauthenticated and get full
access (docs/security.md).  `authorize` is the one check between a validated request
and its handler; `attach_readonly` the one downgrade of an attach.
"""

from __future__ import annotations

import asyncio
import logging
import pwd
import socket
from dataclasses import dataclass
from typing import cast

from vspc.common.admin import Access, AdminError, ErrorCode, Request, required_access
from vspc.vspcd.net.links import peer_name
from vspc.vspcd.net.listeners import peer_credentials, uid_in_group

log = logging.getLogger(__package__)  # one logger for the admin server

__all__ = ["Identity", "access_level", "attach_readonly", "authorize", "identify", "peer_key"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is at the other end of an admin connection, and what they may do.

    `address` is "unix" for the admin socket and host:port for TCP; uid/gid come from
    SO_PEERCRED and are None for TCP peers.
    """

    address: str
    uid: int | None = None
    gid: int | None = None
    user: str | None = None
    access: Access = Access.FULL

    @property
    def who(self) -> str:
        """The name shown to disconnected clients: user, else uid, else address."""
        if self.user:
            return self.user
        if self.uid is not None:
            return f"uid {self.uid}"
        return self.address

    def privileged(self, own_uid: int) -> bool:
        """Root or the daemon's own uid (known on the Unix socket only): may use the
        reserved connection slots, and is never read-only."""
        return self.uid is not None and self.uid in (0, own_uid)

    def __str__(self) -> str:
        if self.uid is not None:
            return f"uid={self.uid} gid={self.gid} user={self.user or '?'}"
        if self.address == "unix":
            return "unix peer (credentials unknown)"
        return f"{self.address} (TCP, unauthenticated)"


def access_level(uid: int, gid: int, readonly_group: str | None, own_uid: int) -> Access:
    """The access level of an admin-socket peer (docs: "Access control").

    Members of `readonly_group` (primary or supplementary) are read-only, except root
    and the daemon's own user, who could bypass the daemon anyway.
    """
    if readonly_group is None or uid in (0, own_uid):
        return Access.FULL
    return Access.READONLY if uid_in_group(uid, gid, readonly_group) else Access.FULL


def identify(
    transport: asyncio.Transport, *, unix: bool, readonly_group: str | None, own_uid: int
) -> Identity:
    """The identity of the peer of a new connection."""
    if not unix:
        return Identity(peer_name(transport))
    sock = transport.get_extra_info("socket")
    try:
        creds = peer_credentials(cast(socket.socket, sock))
    except (OSError, AttributeError) as exc:
        # Without credentials a --readonly-group member could pass for anyone.
        log.warning("admin peer: SO_PEERCRED failed (%s)", exc)
        return Identity("unix", access=Access.READONLY if readonly_group else Access.FULL)
    return Identity(
        "unix",
        creds.uid,
        creds.gid,
        _user_name(creds.uid),
        access_level(creds.uid, creds.gid, readonly_group, own_uid),
    )


def peer_key(identity: Identity, transport: asyncio.Transport, *, unix: bool) -> object:
    """What per-peer connection limits count: uids on the Unix socket, hosts on TCP."""
    if unix:
        return ("uid", identity.uid)
    addr = transport.get_extra_info("peername")
    return ("host", addr[0] if isinstance(addr, tuple) and addr else "?")


def authorize(identity: Identity, request: Request) -> None:
    """Raise AdminError(PERMISSION_DENIED) unless `identity` may send `request`."""
    if required_access(request) is Access.FULL and identity.access is not Access.FULL:
        if request.cmd == "attach":
            text = "read-only access: attach with readonly or free_for_all_or_readonly"
        else:
            text = f"read-only access: {request.cmd} needs full access"
        raise AdminError(ErrorCode.PERMISSION_DENIED, text, request.id)


def attach_readonly(identity: Identity, requested: bool) -> bool:
    """Whether an authorized attach joins read-only.

    `authorize` let a read-only peer attach only with free_for_all_or_readonly or
    readonly: the default mode is downgraded so `vspc VM` just works.
    """
    return requested or identity.access is not Access.FULL


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
