"""Who an admin peer is, and its level on each console (docs/admin-protocol.md
"Access control", docs/security.md "Who may do what").

Boundary: the socket side of access control.  The peer is identified once, when it
connects, from its own credentials only: SO_PEERCRED gives uid and primary gid,
SO_PEERGROUPS the supplementary groups the process actually holds (never the group
database: a process that dropped a group with `setpriv --groups` must not get it back).
If either cannot be read the peer is `Source.UNKNOWN` and gets `none` everywhere (fail
closed).  TCP peers are anonymous (`Source.TCP`).  The rules themselves and their
judgement are sans-IO, in vspcd/faces/admin/policy.py; `Gate` binds them to the
daemon (its own uid, the `--readonly-group` gid) and to hub consoles.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import logging
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from typing import cast

from vspc.common.admin import Access, Level
from vspc.common.vmware import canonical_uuid
from vspc.vspcd.faces.admin.policy import (
    DEFAULT_POLICY,
    AccessPolicy,
    ConsoleRef,
    Decision,
    Identity,
    Source,
)
from vspc.vspcd.hub.console import Console, ConsoleKey
from vspc.vspcd.net.links import peer_name
from vspc.vspcd.net.listeners import peer_credentials

log = logging.getLogger(__package__)  # one logger for the admin server

__all__ = [
    "Gate",
    "Identity",
    "Source",
    "console_ref",
    "group_names",
    "identify",
    "peer_groups",
    "peer_key",
    "row_ref",
]

# Linux's SO_PEERGROUPS (asm-generic/socket.h), for Pythons whose socket module lacks it.
SO_PEERGROUPS: int = getattr(socket, "SO_PEERGROUPS", 59)
_GID = struct.Struct("=I")  # gid_t
_NGROUPS_MAX = 65536


def peer_groups(sock: socket.socket) -> frozenset[int]:
    """The supplementary gids of the process at the other end of a Unix socket
    (SO_PEERGROUPS, Linux 4.13+), as it held them when it connected.

    Raises:
        OSError: the kernel cannot say (not Linux, not a Unix socket, ...).
    """
    size = 64
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size * _GID.size)
        except OSError as exc:
            if exc.errno == errno.ERANGE and size < _NGROUPS_MAX:
                size *= 16  # more groups than the buffer holds
                continue
            raise
        count = len(raw) // _GID.size
        return frozenset(gid for (gid,) in _GID.iter_unpack(raw[: count * _GID.size]))


def identify(transport: asyncio.Transport, *, unix: bool) -> Identity:
    """The identity of the peer of a new connection (fail closed on the Unix socket)."""
    if not unix:
        return Identity(peer_name(transport), source=Source.TCP)
    sock = transport.get_extra_info("socket")
    try:
        creds = peer_credentials(cast(socket.socket, sock))
        groups = peer_groups(cast(socket.socket, sock))
    except (OSError, AttributeError, struct.error) as exc:
        # Without its own credentials the peer could pass for anyone: it gets none.
        log.warning("admin peer: cannot read its credentials (%s); it gets no access", exc)
        return Identity("unix", source=Source.UNKNOWN)
    return Identity("unix", creds.uid, creds.gid, _user_name(creds.uid), groups, Source.UNIX)


def peer_key(identity: Identity, transport: asyncio.Transport, *, unix: bool) -> object:
    """What per-peer connection limits count: uids on the Unix socket, hosts on TCP."""
    if unix:
        return ("uid", identity.uid)
    addr = transport.get_extra_info("peername")
    return ("host", addr[0] if isinstance(addr, tuple) and addr else "?")


def console_ref(console: Console) -> ConsoleRef:
    """What access rules match a hub console on."""
    return ConsoleRef(console.display_name, console.name, console.key.uuid, console.key.label)


def event_ref(key: ConsoleKey, name: str, console: Console | None) -> ConsoleRef:
    """An event's console: the live one if the hub still has it, else its last name."""
    if console is not None:
        return console_ref(console)
    return ConsoleRef(name, name, key.uuid, key.label)


def row_ref(row: dict[str, object]) -> ConsoleRef:
    """A `list` row's console (cluster mode: rows from other nodes)."""
    name, vm_name = row.get("name"), row.get("vm_name")
    uuid, label = row.get("uuid"), row.get("label")
    try:
        canonical = canonical_uuid(uuid) if isinstance(uuid, str) else ""
    except ValueError:
        canonical = ""
    return ConsoleRef(
        name if isinstance(name, str) else "",
        vm_name if isinstance(vm_name, str) else "",
        canonical,
        label if isinstance(label, str) else "",
    )


def group_names(identity: Identity) -> tuple[str, ...]:
    """The peer's groups by name (a gid without one as its number), primary first."""
    ordered = ([] if identity.gid is None else [identity.gid]) + sorted(
        identity.groups - {identity.gid}
    )
    names = []
    for gid in ordered:
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            names.append(str(gid))
    return tuple(names)


@dataclass(frozen=True, slots=True)
class Gate:
    """The policy bound to this daemon: its own uid and the `--readonly-group` gid.

    `generation` changes whenever the gate is rebuilt (a reload), so per-connection
    caches of levels know to start over.
    """

    policy: AccessPolicy = DEFAULT_POLICY
    own_uid: int = 0
    readonly_gid: int | None = None
    generation: int = 0

    @classmethod
    def build(
        cls,
        policy: AccessPolicy,
        readonly_group: str | None,
        own_uid: int | None = None,
        generation: int = 0,
    ) -> Gate:
        readonly_gid = None
        if readonly_group is not None:
            try:
                readonly_gid = grp.getgrnam(readonly_group).gr_gid
            except KeyError:
                if readonly_group.isdigit():
                    readonly_gid = int(readonly_group)
                else:
                    log.warning("--readonly-group %s: no such group", readonly_group)
        return cls(policy, os.geteuid() if own_uid is None else own_uid, readonly_gid, generation)

    def decide(self, identity: Identity, console: ConsoleRef | None) -> Decision:
        return self.policy.decide(
            identity, console, own_uid=self.own_uid, readonly_gid=self.readonly_gid
        )

    def level(self, identity: Identity, console: ConsoleRef | None) -> Level:
        return self.decide(identity, console).level

    def hides_nothing_from(self, identity: Identity) -> bool:
        """No rules, and `identity` may watch every console: lookups need no filter."""
        return not self.policy.rules and self.level(identity, None) is not Level.NONE

    def access(self, identity: Identity) -> Access:
        """The `hello` reply's old two-valued `access`: readonly for a peer capped at
        watch (or below) on a console no rule names."""
        level = self.level(identity, None)
        return Access.FULL if level.rank >= Level.WRITE.rank else Access.READONLY


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
