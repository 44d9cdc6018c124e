"""The admin protocol's closed vocabularies other than error codes.

Boundary: part of the sans-IO admin codec (`vspc.common.admin`, which re-exports it).
Spec: docs/admin-protocol.md ("Lock modes", "Access control", "Events", "Consoles and
clients").  Values are wire strings and never change meaning; add members, never
rename them.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Access", "ClientKind", "EventName", "Level", "LockMode", "VMotionPhase"]


class LockMode(StrEnum):
    """Attach modes, with vSPC.py's names (docs/admin-protocol.md, "Lock modes").

    EXCLUSIVE: only this client may be attached; refused if anyone is attached.
    WRITE: this client is the only writer; others stay or join read-only.
    FREE_FOR_ALL: read-write, no lock; refused while anyone holds a lock.
    FREE_FOR_ALL_OR_READONLY: as FREE_FOR_ALL, but joins read-only under a write lock.
    """

    EXCLUSIVE = "exclusive"
    WRITE = "write"
    FREE_FOR_ALL = "free_for_all"
    FREE_FOR_ALL_OR_READONLY = "free_for_all_or_readonly"


class Access(StrEnum):
    """What a peer may do: everything, or watch only (`--readonly-group`)."""

    FULL = "full"
    READONLY = "readonly"


class Level(StrEnum):
    """What an operator may do on one console (docs/admin-protocol.md, "Access control").

    Ordered: each level includes the ones before it.  NONE: the console does not exist
    for this operator.  WATCH: list, show, events, tail, attach read-only.  WRITE: type,
    take a write lock.  CONTROL: exclusive lock, clear, kick.
    """

    NONE = "none"
    WATCH = "watch"
    WRITE = "write"
    CONTROL = "control"

    @property
    def rank(self) -> int:
        """0 for NONE up to 3 for CONTROL: compare levels by rank, never as strings."""
        return _LEVEL_ORDER.index(self)

    def allows(self, needed: Level) -> bool:
        """This level includes `needed`."""
        return self.rank >= needed.rank


_LEVEL_ORDER = (Level.NONE, Level.WATCH, Level.WRITE, Level.CONTROL)


class VMotionPhase(StrEnum):
    """A console's vMotion phase (docs/protocol.md §4.5)."""

    NORMAL = "normal"
    PENDING = "pending"  # GOAHEAD sent, no destination yet
    PEERED = "peered"  # destination bound, waiting for COMPLETE


class ClientKind(StrEnum):
    """How an operator is connected to a console."""

    TELNET = "telnet"  # the console's own telnet port
    ATTACH = "attach"  # the admin protocol's attach channel


class EventName(StrEnum):
    """Every `event` vspcd pushes (docs/admin-protocol.md, "Events")."""

    VM_CONNECTED = "vm_connected"
    VM_DISCONNECTED = "vm_disconnected"
    VM_EXPIRED = "vm_expired"
    VM_RENAMED = "vm_renamed"  # VM-NAME arrived or changed; `name` is the new display name
    VMOTION_BEGIN = "vmotion_begin"
    VMOTION_PEER = "vmotion_peer"
    VMOTION_COMPLETE = "vmotion_complete"
    VMOTION_ABORT = "vmotion_abort"
    VMOTION_NOTNOW = "vmotion_notnow"
    CLIENT_ATTACHED = "client_attached"
    CLIENT_DETACHED = "client_detached"
    LOCK_CHANGED = "lock_changed"
    OUTPUT = "output"  # tail --follow data
    TAIL_END = "tail_end"  # a followed console went away
    AUDIT = "audit"  # an audit-trail record (docs/security.md "Audit trail")
    CONSOLE_ALERT = "console_alert"  # a console printed a line an alert rule matches
